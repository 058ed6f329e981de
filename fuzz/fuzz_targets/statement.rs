//! Fuzz target: statements: whatever parses re-encodes byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(st) = rogatory_custody::Statement::parse(s)
    {
        assert_eq!(st.encode(), s);
    }
});
