//! Fuzz target: signed notes: parse never panics; verification with an arbitrary key never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = rogatory_custody::Note::parse(data) {
        let key: rogatory_custody::NoteVerifier =
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
                .parse()
                .expect("key");
        let _ = n.verify(&[key]);
    }
});
