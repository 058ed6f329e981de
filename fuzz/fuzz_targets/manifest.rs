//! Fuzz target: manifests, contents, offers and piece-root frontiers: whatever parses re-encodes
//! byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = rogatory_custody::Manifest::parse(data) {
        assert_eq!(m.to_json(), data);
        assert_eq!(
            rogatory_custody::TransferOffer::parse(&m.offer().to_json()).ok(),
            Some(m.offer())
        );
    }
    if let Ok(c) = rogatory_custody::Contents::parse(data) {
        assert_eq!(c.to_json(), data);
    }
    if let Ok(o) = rogatory_custody::TransferOffer::parse(data) {
        assert_eq!(o.to_json(), data);
    }
    if let Some(f) = rogatory_custody::merkle::Frontier::from_bytes(data) {
        assert_eq!(f.to_bytes(), data);
        let _ = f.root();
    }
});
