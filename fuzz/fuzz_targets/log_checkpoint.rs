//! Fuzz target: the CHECKPOINT_REQUEST and CHECKPOINT payload parsers (`protocol.md` §6.6) and
//! the consistency check a client runs on what it got (`custody.md` §7.2). Never panics; any
//! payload that decodes re-encodes byte-identically, and a proof longer than the limit never
//! decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rogatory_custody::{Checkpoint, check_consistency};
use rogatory_transport::frame::{Frame, FrameType, MAX_CHECKPOINT_PROOF, decode_payload};

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = decode_payload(FrameType::CheckpointRequest, data) {
        let mut again = f.to_vec();
        again.drain(..again.len() - data.len());
        assert_eq!(again, data);
    }
    if let Ok(Frame::Checkpoint(c)) = decode_payload(FrameType::Checkpoint, data) {
        assert!(c.proof.len() <= MAX_CHECKPOINT_PROOF);
        let text = c.checkpoint.split("\n\n").next().unwrap_or_default();
        if let Ok(presented) = Checkpoint::parse(&format!("{text}\n")) {
            let held = Checkpoint {
                origin: presented.origin.clone(),
                size: 5,
                root: [7; 32],
            };
            let _ = check_consistency(Some(&held), &presented, &c.proof);
        }
    }
});
