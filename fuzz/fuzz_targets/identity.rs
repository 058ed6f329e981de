//! Fuzz target: identity files: parse never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = rogatory_custody::AgencyIdentity::parse(s);
    }
});
