//! Fuzz target: the witness frames' payload parsers (ADD_CHECKPOINT, COSIGNATURE, WITNESS_SIZE;
//! `protocol.md` §6.7) and cosignature verification of an arbitrary checkpoint note
//! (`custody.md` §7.3). Never panics; any payload that decodes re-encodes byte-identically, and
//! a proof longer than the limit never decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rogatory_custody::{AgencyIdentity, Cosigner, verify_cosignatures};
use rogatory_transport::frame::{Frame, FrameType, MAX_CHECKPOINT_PROOF, decode_payload};

fuzz_target!(|data: &[u8]| {
    for ty in [
        FrameType::AddCheckpoint,
        FrameType::Cosignature,
        FrameType::WitnessSize,
    ] {
        if let Ok(f) = decode_payload(ty, data) {
            if let Frame::AddCheckpoint(c) = &f {
                assert!(c.proof.len() <= MAX_CHECKPOINT_PROOF);
            }
            let mut again = f.to_vec();
            again.drain(..again.len() - data.len());
            assert_eq!(again, data);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let id = "xx-witness".parse().expect("a valid agency id");
        let w = Cosigner::new(&AgencyIdentity::from_seeds(id, &[3; 32], [4; 32]));
        let _ = verify_cosignatures(text, &[w.key()]);
    }
});
