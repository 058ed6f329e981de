//! Fuzz target: the frame decoder (`protocol.md` §4). Never panics, never allocates past the
//! type's limit, and any frame that decodes re-encodes byte-identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rogatory_transport::frame::{Decoded, FrameLimits, decode};

fuzz_target!(|data: &[u8]| {
    let limits = FrameLimits::default();
    let mut rest = data;
    while let Ok(Decoded::Frame(f, n)) = decode(rest, &limits) {
        assert_eq!(f.to_vec(), &rest[..n]);
        rest = &rest[n..];
    }
});
