//! Fuzz target: audit log framing: decoding never panics; decoded records re-encode to the valid prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = rogatory_custody::decode_records(data) {
        let again: Vec<u8> = d
            .records
            .iter()
            .flat_map(rogatory_custody::Record::encode)
            .collect();
        assert_eq!(&again[..], &data[..d.valid_len]);
    }
});
