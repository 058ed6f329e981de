//! Fuzz target: manifests: whatever parses re-encodes byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = rogatory_custody::Manifest::parse(data) {
        assert_eq!(m.to_json(), data);
    }
});
