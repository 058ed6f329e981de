//! A relay never rolls back by itself (`relay.md` §5.1, issue 13): the index keeps the newest
//! checkpoint the relay handed out, and `relay serve` refuses (exit 3) an audit log that is
//! missing, shorter or different; only a never-acknowledged torn tail is cut, loudly.

mod common;

use std::path::Path;

use common::*;

/// A relay `B` that issued a custody receipt for a send from `A`, then stopped.
fn relay_with_receipts(d: &Path) {
    two_agencies(d);
    std::fs::write(d.join("evidence.txt"), b"evidence\n").expect("write");
    let relay = start_relay(d, "B");
    let o = send_with_legal(d, "A", false, &relay.1, "agency-b", &["evidence.txt"]);
    assert_eq!(code(&o), 0, "send: {}", stderr(&o));
    drop(relay);
    assert!(
        d.join("B/relay/audit.log").metadata().expect("log").len() > 0,
        "the relay logged the custody receipt"
    );
}

#[test]
fn a_deleted_audit_log_stops_the_relay() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    relay_with_receipts(d);
    // A healthy restart: the log extends the checkpoint the index keeps.
    serve_started(d, "B");
    let log = d.join("B/relay/audit.log");
    std::fs::remove_file(&log).expect("rm");
    let o = serve_refused(d, "B", "127.0.0.1:0");
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("audit.log: the audit log is missing (0 entries)"),
        "{err}"
    );
    assert!(err.contains("refuses to sign a different history"), "{err}");
    assert!(err.contains("rogatory: hint: restore"), "{err}");
    assert!(!log.exists(), "no fresh log is started");
}

#[test]
fn a_flipped_byte_in_the_last_acknowledged_record_stops_the_relay() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    relay_with_receipts(d);
    let log = d.join("B/relay/audit.log");
    let mut bytes = std::fs::read(&log).expect("read");
    let n = bytes.len();
    // Inside the last record's checkpoint note, before its 8-byte tag.
    bytes[n - 12] ^= 0x01;
    std::fs::write(&log, &bytes).expect("write");
    let o = serve_refused(d, "B", "127.0.0.1:0");
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("audit.log: the audit log is shorter"), "{err}");
    assert!(err.contains("refuses to sign a different history"), "{err}");
    assert_eq!(std::fs::read(&log).expect("read"), bytes, "nothing cut");
    assert!(
        !d.join("B/relay/audit.quarantine").exists(),
        "nothing moved to quarantine"
    );
}

#[test]
fn a_torn_unacknowledged_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    relay_with_receipts(d);
    let log = d.join("B/relay/audit.log");
    let good = std::fs::read(&log).expect("read");
    let mut bytes = good.clone();
    bytes.extend_from_slice(&[0xff; 13]);
    std::fs::write(&log, &bytes).expect("write");
    let err = serve_started(d, "B");
    assert!(
        err.contains(&format!(
            "cut a torn, never acknowledged tail of 13 bytes at offset {}",
            good.len()
        )),
        "{err}"
    );
    assert!(err.contains("audit.quarantine"), "{err}");
    assert_eq!(std::fs::read(&log).expect("read"), good);
    assert_eq!(
        std::fs::read(d.join("B/relay/audit.quarantine")).expect("quarantine"),
        vec![0xff; 13]
    );
    // And the next start has nothing to cut.
    let err = serve_started(d, "B");
    assert!(!err.contains("torn"), "{err}");
}

/// `audit verify` next to a relay checks the log against the checkpoint the relay's index keeps
/// (`relay.md` §5.1): a log cut back to a shorter one that verifies on its own is caught.
#[test]
fn audit_verify_checks_the_log_against_the_kept_checkpoint() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    relay_with_receipts(d);
    std::fs::write(d.join("more.txt"), b"more evidence\n").expect("write");
    let relay = start_relay(d, "B");
    let o = send_with_legal(d, "A", false, &relay.1, "agency-b", &["more.txt"]);
    assert_eq!(code(&o), 0, "send: {}", stderr(&o));
    drop(relay);
    let o = run(d, &["--home", "B", "audit", "verify"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("2 entries") && out.contains("extends the checkpoint for 2 entries"),
        "{out}"
    );
    // Cut the log back to its first record: it verifies on its own, one entry.
    let log = d.join("B/relay/audit.log");
    let bytes = std::fs::read(&log).expect("read");
    let body = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    std::fs::write(&log, &bytes[..4 + body + 8]).expect("write");
    let o = run(d, &["--home", "B", "--json", "audit", "verify"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "the audit log (1 entries) does not extend the checkpoint for 2 entries its relay handed out"
        ),
        "{}",
        stderr(&o)
    );
    let o = serve_refused(d, "B", "127.0.0.1:0");
    assert_eq!(code(&o), 3, "{}", stderr(&o));
}
