//! Armor decoder and format detection: never panics, and whatever decodes re-armors to
//! something that decodes to the same bytes.
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;
use rogatory_envelope::{ArmoredReader, ArmoredWriter, Decryptor};

fuzz_target!(|data: &[u8]| {
    let mut decoded = Vec::new();
    if ArmoredReader::new(data).read_to_end(&mut decoded).is_ok() {
        let mut w = ArmoredWriter::new(Vec::new());
        w.write_all(&decoded).expect("vec write");
        let again = w.finish().expect("vec write");
        let mut back = Vec::new();
        ArmoredReader::new(&again[..])
            .read_to_end(&mut back)
            .expect("own armor decodes");
        assert_eq!(back, decoded);
    }
    let _ = Decryptor::new_detect(data);
});
