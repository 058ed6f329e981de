//! Cross-agency witnesses (test-plan.md 90 to 92; `custody.md` §7.3, `protocol.md` §6.7,
//! `relay.md` §12): agency C's relay witnesses agency B's log; B's relay submits each new
//! checkpoint to it and attaches C's cosignature to the receipts it issues. A home requiring one
//! cosignature from C accepts them; with C down it refuses (exit 3) while a home without the
//! requirement does not care; and once B's operator forges its log (entry 0 dropped, every
//! checkpoint re-signed with B's key) C refuses to cosign, so a sender that never saw B's
//! honest log, requiring C's cosignature, exits 3.

mod common;

use std::path::Path;

use common::*;
use rogatory_custody::{AgencyIdentity, AuditLog, MemoryLogStore};

fn send(dir: &Path, home: &str, addr: &str, file: &str) -> std::process::Output {
    std::fs::write(dir.join(file), format!("evidence {file}\n")).expect("write");
    send_with_legal(dir, home, true, addr, "agency-b", &[file])
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// B's relay submits to the witness at `addr`, waiting at most `wait_ms` per receipt.
fn submit_to(dir: &Path, addr: &str, wait_ms: u64) {
    write(
        &dir.join("B/relay/witness.toml"),
        &format!("wait_ms = {wait_ms}\n\n[[witness]]\nid = \"agency-c\"\naddress = \"{addr}\"\n"),
    );
}

fn require_c(dir: &Path, home: &str) {
    write(
        &dir.join(format!("{home}/witnesses.toml")),
        "require = 1\nwitnesses = [\"agency-c\"]\n",
    );
}

/// The attack of tests/log_fork.rs: entry 0 of B's audit log dropped, every checkpoint signed
/// again with B's log key, the checkpoint B's index keeps removed.
fn forge(dir: &Path) {
    let log_path = dir.join("B/relay/audit.log");
    let records = rogatory_relay::logfile::read_records(&log_path)
        .expect("log")
        .records;
    assert!(records.len() >= 2, "two entries at least");
    let identity = AgencyIdentity::parse(
        &std::fs::read_to_string(dir.join("B/identity.txt")).expect("identity"),
    )
    .expect("identity parses");
    let mut log = AuditLog::open(MemoryLogStore::default(), identity.log_signer()).expect("open");
    for r in &records[1..] {
        log.append(&r.entry).expect("append");
    }
    std::fs::write(&log_path, &log.store().bytes).expect("write forged log");
    let db = rusqlite::Connection::open(dir.join("B/relay/relay.db")).expect("db");
    db.execute("DELETE FROM log_checkpoint", [])
        .expect("delete the kept checkpoint");
}

fn refusals(dir: &Path) -> Vec<(String, String)> {
    let db = rusqlite::Connection::open(dir.join("C/relay/relay.db")).expect("db");
    db.prepare("SELECT origin, why FROM witness_refusals")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn witnesses_cosign_an_honest_log_and_refuse_a_forged_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    agency(d, "A", "agency-a", false);
    agency(d, "B", "agency-b", true);
    agency(d, "C", "agency-c", true);
    agency(d, "D", "agency-d", false);
    for (home, other) in [
        ("A", "B"),
        ("A", "C"),
        ("B", "A"),
        ("B", "C"),
        ("B", "D"),
        ("C", "B"),
        ("D", "B"),
        ("D", "C"),
    ] {
        trust(d, home, other);
    }
    // test-plan.md 90: C witnesses B's log; B submits to C; A requires C's cosignature.
    write(&d.join("C/relay/witness.toml"), "cosign = [\"agency-b\"]\n");
    let witness = start_relay(d, "C");
    submit_to(d, &witness.1, 10_000);
    let relay = start_relay(d, "B");
    require_c(d, "A");
    let o = send(d, "A", &relay.1, "one.txt");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let t = transfer_id(&o);
    let receipt = format!("A/receipts/{t}.custody-receipt");
    let text = std::fs::read_to_string(d.join(&receipt)).expect("receipt");
    assert!(text.contains("\u{2014} agency-c/witness "), "{text}");
    let o = run(d, &["--home", "A", "verify", &receipt]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("cosigned by agency-c"), "{out}");
    // The CHECKPOINT answer carries the cosignature too: the newest checkpoint the home kept
    // from it (`protocol.md` §6.6) has C's line.
    let held = std::fs::read_to_string(d.join("A/checkpoints/agency-b.checkpoint")).expect("held");
    assert!(held.contains("\u{2014} agency-c/witness "), "{held}");
    let o = run(d, &["--home", "A", "status", "--relay", &relay.1, &t]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(refusals(d).is_empty());

    // test-plan.md 91: the witness is down. B waits 1.5 s, then issues receipts uncosigned.
    let gone = witness.1.clone();
    drop(witness);
    submit_to(d, &gone, 1500);
    std::thread::sleep(std::time::Duration::from_millis(600));
    let o = send(d, "A", &relay.1, "two.txt");
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("relay agency-b")
            && e.contains("carries 0 valid cosignatures")
            && e.contains("(agency-c)")
            && e.contains("it requires 1"),
        "{e}"
    );
    std::fs::remove_file(d.join("A/witnesses.toml")).expect("rm");
    let o = send(d, "A", &relay.1, "three.txt");
    assert_eq!(code(&o), 0, "without a requirement: {}", stderr(&o));
    let t3 = transfer_id(&o);
    // test-plan.md 94: the witness back, the receipt issued without it gets its cosignature
    // later: the relay serves stored receipts against the best cosigned checkpoint, so A's
    // `status` with the requirement saves a cosigned custody receipt.
    let witness = start_relay(d, "C");
    submit_to(d, &witness.1, 3000);
    require_c(d, "A");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let o = run(d, &["--home", "A", "status", "--relay", &relay.1, &t3]);
        if code(&o) == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never cosigned: {}",
            stderr(&o)
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let text = std::fs::read_to_string(d.join(format!("A/receipts/{t3}.custody-receipt")))
        .expect("receipt");
    assert!(text.contains("\u{2014} agency-c/witness "), "{text}");
    std::fs::remove_file(d.join("A/witnesses.toml")).expect("rm");
    drop(witness);
    drop(relay);

    // test-plan.md 92: B's operator forges its log. C, restarted with what it cosigned, refuses.
    let witness = start_relay(d, "C");
    forge(d);
    submit_to(d, &witness.1, 3000);
    let relay = start_relay(d, "B");
    require_c(d, "D");
    let o = send(d, "D", &relay.1, "four.txt");
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("relay agency-b")
            && e.contains("carries 0 valid cosignatures")
            && e.contains("it requires 1"),
        "{e}"
    );
    let refused = refusals(d);
    assert!(!refused.is_empty(), "the witness refused and kept evidence");
    assert!(
        refused
            .iter()
            .all(|(origin, why)| origin == "agency-b/audit" && why.contains("does not extend")),
        "{refused:?}"
    );
    // Without the requirement, the same home (which never saw B's honest log) accepts it:
    // the witness is what caught the forgery.
    std::fs::remove_file(d.join("D/witnesses.toml")).expect("rm");
    let o = send(d, "D", &relay.1, "five.txt");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// test-plan.md 90, the recipient's side: a recipient requiring C's cosignature fetches (custody
/// and delivery receipts both cosigned), and `verify` of the fetched folder passes; with C down
/// its next fetch exits 3.
#[test]
fn a_recipient_requiring_a_cosignature_fetches() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_full_agencies(d);
    agency(d, "C", "agency-c", true);
    for (home, other) in [("A", "C"), ("B", "C"), ("C", "B")] {
        trust(d, home, other);
    }
    ok(run(
        d,
        &["--home", "B", "agency", "export-relay", "B-relay"],
    ));
    write(&d.join("C/relay/witness.toml"), "cosign = [\"agency-b\"]\n");
    let witness = start_relay(d, "C");
    write(
        &d.join("B-relay/relay/witness.toml"),
        &format!(
            "wait_ms = 10000\n\n[[witness]]\nid = \"agency-c\"\naddress = \"{}\"\n",
            witness.1
        ),
    );
    let relay = start_relay(d, "B-relay");
    require_c(d, "B");
    let o = send(d, "A", &relay.1, "one.txt");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let t = transfer_id(&o);
    let o = run(
        d,
        &["--home", "B", "fetch", "--relay", &relay.1, &t, "-o", "out"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let folder = transfer_dir(&d.join("out"));
    for name in ["custody.receipt", "delivery.receipt"] {
        let text = std::fs::read_to_string(folder.join(".rogatory").join(name)).expect("receipt");
        assert!(
            text.contains("\u{2014} agency-c/witness "),
            "{name}: {text}"
        );
    }
    let o = run(d, &["--home", "B", "verify", "out"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));

    // The witness down: the next transfer's receipts are not cosigned; the recipient refuses.
    let gone = witness.1.clone();
    drop(witness);
    write(
        &d.join("B-relay/relay/witness.toml"),
        &format!("wait_ms = 1000\n\n[[witness]]\nid = \"agency-c\"\naddress = \"{gone}\"\n"),
    );
    std::thread::sleep(std::time::Duration::from_millis(600));
    let o = send(d, "A", &relay.1, "two.txt");
    assert_eq!(code(&o), 0, "the sender requires nothing: {}", stderr(&o));
    let t = transfer_id(&o);
    let o = run(
        d,
        &[
            "--home", "B", "fetch", "--relay", &relay.1, &t, "-o", "out2",
        ],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("carries 0 valid cosignatures"),
        "{}",
        stderr(&o)
    );
}
