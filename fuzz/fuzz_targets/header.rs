//! Header parser: never panics, and any header that parses re-encodes byte for byte
//! (non-malleability, TESTS.md case 3). Also drives unwrapping with a fixed identity, so the
//! X25519 stanza checks and the low-order abort are exercised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rogatory_envelope::{Decryptor, Header, Identity};

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    if let Ok(header) = Header::read(&mut input) {
        let consumed = data.len() - input.len();
        assert_eq!(header.encode(), &data[..consumed], "header must re-encode exactly");
    }
    if let Ok(d) = Decryptor::new(data) {
        let id: Identity = "AGE-SECRET-KEY-1EGTZVFFV20835NWYV6270LXYVK2VKNX2MMDKWYKLMGR48UAWX40Q2P2LM0"
            .parse()
            .expect("fixed identity");
        let _ = d.unwrap_file_key(&[id]);
    }
});
