//! Fuzz target: card chains (`custody.md` §8.5): splitting, parsing and link checks never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rogatory_custody::split_notes(data);
    if let Ok(chain) = rogatory_custody::CardChain::parse(data) {
        let _ = chain.newest().fingerprint().to_string();
        let _ = chain.keys();
        let _ = chain.open_statement(data);
        let _ = chain.open_checkpoint(data);
    }
});
