//! Fuzz target: agency cards: parse and self-signature check never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(card) = rogatory_custody::AgencyCard::open(data) {
        let _ = card.fingerprint().to_string();
    }
});
