//! Fuzz target: relative paths (the filename sanitizer): accepted paths are never absolute or traversing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(p) = s.parse::<rogatory_custody::RelativePath>()
    {
        assert!(!p.as_str().starts_with('/'));
        assert!(
            p.components()
                .all(|c| !c.is_empty() && c != "." && c != "..")
        );
        assert!(!p.as_str().contains('\\') && !p.as_str().contains('\0'));
    }
});
