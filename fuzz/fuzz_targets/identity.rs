//! Fuzz target: identity and key files: agency identity files (X25519 and hybrid
//! post-quantum age keys, recipient comments) and age identity/recipient files never panic,
//! and an agency identity that parses round-trips through its text form.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = rogatory_custody::AgencyIdentity::parse(s) {
            let again = rogatory_custody::AgencyIdentity::parse(&id.to_secret_text("t"))
                .expect("an identity re-parses from its own text");
            assert_eq!(again.age_recipient(), id.age_recipient());
            assert_eq!(again.age_recipient_pq(), id.age_recipient_pq());
        }
        let _ = rogatory_envelope::parse_identities(s);
        let _ = rogatory_envelope::parse_recipients(s);
    }
});
