//! Fuzz target: key revocations (`custody.md` §8.3): opening a note never panics, and a
//! statement that parses as a revocation re-encodes byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rogatory_custody::{AgencyId, Revocation, Statement, TrustStore};

fuzz_target!(|data: &[u8]| {
    let home: AgencyId = "agency-b".parse().expect("id");
    let _ = Revocation::open(data, &TrustStore::new(), &home);
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(st) = Statement::parse(s)
        && let Some(r) = Revocation::from_statement(&st)
    {
        assert_eq!(r.statement().encode(), s);
    }
});
