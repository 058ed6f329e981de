//! A relay operator rewrites history (test-plan.md 88; `custody.md` §7.2, `protocol.md` §6.6):
//! entry 0 of the relay's audit log dropped and every checkpoint re-signed with the relay's own
//! key, so that the forged log passes `audit verify` at the relay. The sender's home holds the
//! checkpoints it verified on every contact: its next `status` and its next `send` to that relay
//! exit 3 naming the relay and both sizes, with both checkpoints saved as evidence and the held
//! one kept; and `verify` of a receipt whose checkpoint forks from a held one exits 3.

mod common;

use std::path::Path;

use common::*;
use rogatory_custody::{
    AgencyIdentity, AuditLog, Checkpoint, MemoryLogStore, ReceiptBundle, Record, Statement,
    merkle::{Tree, leaf_hash},
};

fn send(dir: &Path, addr: &str, file: &str) -> std::process::Output {
    std::fs::write(dir.join(file), format!("evidence {file}\n")).expect("write");
    send_with_legal(dir, "A", true, addr, "agency-b", &[file])
}

/// The attack: drops entry 0 of `B/relay/audit.log` and rewrites the rest, batch by batch, with
/// every checkpoint signed again by the relay's log key (from its home), then removes any
/// checkpoint the relay keeps in its index; then appends `grow` copies of the last entry (so
/// that the forged log can be as long as the honest one, or longer). Returns the forged log's
/// entries.
fn forge(dir: &Path, grow: usize) -> Vec<Vec<u8>> {
    let log_path = dir.join("B/relay/audit.log");
    let records = rogatory_relay::logfile::read_records(&log_path)
        .expect("log")
        .records;
    assert!(records.len() >= 2, "two custody receipts at least");
    let identity = AgencyIdentity::parse(
        &std::fs::read_to_string(dir.join("B/identity.txt")).expect("identity"),
    )
    .expect("identity parses");
    let mut log = AuditLog::open(MemoryLogStore::default(), identity.log_signer()).expect("open");
    let mut batch: Vec<Vec<u8>> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            batch.push(r.entry.clone());
        }
        if r.checkpoint.is_some() && !batch.is_empty() {
            log.append_batch(&batch).expect("append");
            batch.clear();
        }
    }
    let last = records.last().expect("an entry").entry.clone();
    for _ in 0..grow {
        log.append(&last).expect("append");
    }
    std::fs::write(&log_path, &log.store().bytes).expect("write forged log");
    // A dishonest operator also rewrites whatever the relay remembers of its own checkpoints.
    let db = rusqlite::Connection::open(dir.join("B/relay/relay.db")).expect("db");
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%checkpoint%'")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("names");
    for t in tables {
        db.execute(&format!("DELETE FROM \"{t}\""), [])
            .expect("delete stored checkpoint");
    }
    let mut entries: Vec<Vec<u8>> = records[1..]
        .iter()
        .map(|r: &Record| r.entry.clone())
        .collect();
    entries.extend(std::iter::repeat_n(last, grow));
    entries
}

fn checkpoint_size(note: &str) -> u64 {
    Checkpoint::parse(&format!("{}\n", note.split("\n\n").next().expect("text")))
        .expect("checkpoint")
        .size
}

#[test]
fn a_forged_relay_log_is_refused_on_the_next_contact() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_agencies(d);
    let relay = start_relay(d, "B");
    let first = send(d, &relay.1, "one.txt");
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    // The first contact found the log empty; the first receipt's checkpoint is the first held.
    let first_held = std::fs::read_to_string(d.join("A/checkpoints/agency-b.checkpoint"))
        .expect("the first receipt's checkpoint is held");
    assert_eq!(checkpoint_size(&first_held), 1);
    let second = send(d, &relay.1, "two.txt");
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    let t2 = transfer_id(&second);
    // The send kept the checkpoint covering its receipt: verify compares it, offline.
    let o = run(
        d,
        &[
            "--home",
            "A",
            "verify",
            &format!("A/receipts/{t2}.custody-receipt"),
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("the same as this home verified"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // An honest relay: status is fine, and keeps the newest checkpoint it verified.
    let o = run(d, &["--home", "A", "status", "--relay", &relay.1, &t2]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let held_path = d.join("A/checkpoints/agency-b.checkpoint");
    let held = std::fs::read_to_string(&held_path).expect("a held checkpoint");
    let held_size = checkpoint_size(&held);
    // The receipts the home has verify, and match a checkpoint it verified or say why not.
    let genuine = d.join(format!("A/receipts/{t2}.custody-receipt"));
    let o = run(
        d,
        &["--home", "A", "verify", genuine.to_str().expect("utf-8")],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    drop(relay);

    let forged = forge(d, 0);
    let o = run(
        d,
        &[
            "--home",
            "B",
            "audit",
            "--agency",
            "agency-b",
            "--log",
            "B/relay/audit.log",
            "verify",
        ],
    );
    assert_eq!(
        code(&o),
        0,
        "the forged log passes audit verify: {}",
        stderr(&o)
    );

    let relay = start_relay(d, "B");
    let o = run(d, &["--home", "A", "status", "--relay", &relay.1, &t2]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("relay agency-b presented a log inconsistent"),
        "{e}"
    );
    assert!(
        e.contains(&format!("held {held_size} entries"))
            && e.contains(&format!("relay shows {} entries", forged.len())),
        "{e}"
    );
    let evidence: Vec<_> = std::fs::read_dir(d.join("A/checkpoints"))
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("agency-b.fork-"))
        .collect();
    assert_eq!(evidence.len(), 1, "{evidence:?}");
    assert_eq!(
        std::fs::read_to_string(evidence[0].join("held.checkpoint")).expect("held evidence"),
        held
    );
    let presented =
        std::fs::read_to_string(evidence[0].join("presented.checkpoint")).expect("presented");
    assert_eq!(checkpoint_size(&presented), forged.len() as u64);
    let name = evidence[0].file_name().expect("name").to_string_lossy();
    assert!(e.contains(&format!("A/checkpoints/{name}")), "{e}");
    // --json: an error event with exit code 3.
    let o = run(
        d,
        &["--home", "A", "--json", "status", "--relay", &relay.1, &t2],
    );
    assert_eq!(code(&o), 3);
    let last = json_lines(&o).pop().expect("an event");
    assert_eq!(last["type"], "error");
    assert_eq!(last["exit_code"], 3);

    let o = send(d, &relay.1, "three.txt");
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("relay agency-b presented a log inconsistent"));
    // The held checkpoint is the one verified before the forgery.
    assert_eq!(std::fs::read_to_string(&held_path).expect("held"), held);
    drop(relay);

    // A receipt from the forged log, against a checkpoint of the size the home holds: the
    // statement signed and the checkpoint re-signed with the relay's keys, the proof good.
    let identity = AgencyIdentity::parse(
        &std::fs::read_to_string(d.join("B/identity.txt")).expect("identity"),
    )
    .expect("identity parses");
    let tree = Tree::from_leaves(forged.iter().map(|e| leaf_hash(e)));
    let statement_note = |i: usize| {
        identity
            .signer()
            .sign(std::str::from_utf8(&forged[i]).expect("utf-8"))
            .expect("sign")
    };
    let index = (0..forged.len())
        .find(|&i| {
            Statement::open(statement_note(i).as_bytes(), &identity.signer().verifier()).is_ok()
        })
        .expect("a statement in the forged log") as u64;
    // A size this home verified that the forged log covers.
    let size = std::fs::read_dir(d.join("A/checkpoints/agency-b.seen"))
        .expect("seen")
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".checkpoint"))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .filter(|&n| n > index && n <= forged.len() as u64)
        .max()
        .expect("a held size the forged log covers");
    let cp = Checkpoint {
        origin: "agency-b/audit".into(),
        size,
        root: tree.root_at(size).expect("root"),
    };
    let bundle = ReceiptBundle {
        statement_note: statement_note(index as usize),
        index,
        proof: tree.inclusion_proof(index, size).expect("proof"),
        checkpoint_note: cp.sign(&identity.log_signer()).expect("sign checkpoint"),
    };
    std::fs::write(d.join("forged.receipt"), bundle.encode()).expect("write");
    let o = run(d, &["--home", "A", "verify", "forged.receipt"]);
    assert_eq!(code(&o), 3, "{}", String::from_utf8_lossy(&o.stdout));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("relay agency-b presented a log inconsistent")
            && out.contains(&format!("held {size} entries")),
        "{out}"
    );
}

/// The same attack, with the forged log grown past the held checkpoint: the relay's consistency
/// proof cannot verify, and the sender's `status` says the log forked (test-plan.md 88).
#[test]
fn a_forged_log_grown_back_is_a_fork() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_agencies(d);
    let relay = start_relay(d, "B");
    let o = send(d, &relay.1, "one.txt");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = send(d, &relay.1, "two.txt");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let t = transfer_id(&o);
    let o = run(d, &["--home", "A", "status", "--relay", &relay.1, &t]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let held = std::fs::read_to_string(d.join("A/checkpoints/agency-b.checkpoint")).expect("held");
    let held_size = checkpoint_size(&held);
    drop(relay);
    let forged = forge(d, 2);
    assert_eq!(forged.len() as u64, held_size + 1);
    let relay = start_relay(d, "B");
    let o = run(d, &["--home", "A", "status", "--relay", &relay.1, &t]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(
            "relay agency-b presented a log inconsistent with the one this home saw (forked)"
        ) && e.contains(&format!("held {held_size} entries"))
            && e.contains(&format!("relay shows {} entries", held_size + 1)),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("A/checkpoints/agency-b.checkpoint")).expect("held"),
        held
    );
}

/// test-plan.md 112: the receipts `status` collects are proven consistent online before they are
/// saved, so `verify` compares them offline: A sends two transfers and B fetches both (each
/// delivery receipt is logged by B's relay); A's `status` of the first saves its delivery receipt,
/// whose checkpoint A never saw, and `verify` of it says the checkpoint is the same as one A's
/// home verified.
#[test]
fn receipts_collected_by_status_are_compared_offline() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_full_agencies(d);
    let relay = start_relay(d, "B");
    let o = send(d, &relay.1, "one.txt");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let t = transfer_id(&o);
    let o = send(d, &relay.1, "two.txt");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let t2 = transfer_id(&o);
    // B fetches both (each delivery receipt is logged by its own relay); A's home never saw the
    // checkpoint of the first delivery receipt, the log has grown past it since.
    for (t, out) in [(&t, "out1"), (&t2, "out2")] {
        ok(run(
            d,
            &["--home", "B", "fetch", "--relay", &relay.1, t, "-o", out],
        ));
    }
    ok(run(d, &["--home", "A", "status", "--relay", &relay.1, &t]));
    let receipt = d.join(format!("A/receipts/{t}.delivery-agency-b.receipt"));
    let o = run(
        d,
        &["--home", "A", "verify", receipt.to_str().expect("utf-8")],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("the same as this home verified"), "{out}");
}
