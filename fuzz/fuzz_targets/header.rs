//! Header parser: never panics, and any header that parses re-encodes byte for byte
//! (non-malleability, test-plan.md case 3). Also drives unwrapping with fixed X25519 and hybrid
//! identities, so the X25519 and `mlkem768x25519` stanza checks and the low-order aborts are
//! exercised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rogatory_envelope::{AnyIdentity, Decryptor, Header};

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    if let Ok(header) = Header::read(&mut input) {
        let consumed = data.len() - input.len();
        assert_eq!(
            header.encode(),
            &data[..consumed],
            "header must re-encode exactly"
        );
    }
    if let Ok(d) = Decryptor::new(data) {
        // The CCTV vectors' test keys, so that mutated vectors reach the stanza checks.
        let ids: [AnyIdentity; 2] = [
            "AGE-SECRET-KEY-1EGTZVFFV20835NWYV6270LXYVK2VKNX2MMDKWYKLMGR48UAWX40Q2P2LM0"
                .parse()
                .expect("fixed identity"),
            "AGE-SECRET-KEY-PQ-1HZLGZUPT4ETPKDEV8HSGFDCYZ4E522W0A7PU2LHT8EH9W6YLNC3SW78XKG"
                .parse()
                .expect("fixed hybrid identity"),
        ];
        let _ = d.unwrap_file_key(&ids);
    }
});
