//! Damage is visible and repairable, with the real binary on 127.0.0.1 (issue 11, `relay.md` §10,
//! test-plan.md 39a): ciphertext deleted, cut or flipped at the relay, or the relay's piece table
//! edited in SQLite, is found by `relay scrub` (exit 3), shown as `damaged` by `status`, refused
//! to `fetch` with exit 3 (not the retryable 5), and repaired by the sender's next `send` of the
//! same files, which re-sends only what was lost; the fetch after the repair is byte-exact.

mod common;

use std::path::Path;

use common::*;

const CASE: &str = "case 11";

fn make_case(d: &Path) -> Vec<Vec<u8>> {
    let case = d.join(CASE);
    std::fs::create_dir_all(case.join("sub")).expect("mkdir");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a.txt", b"statement of witness 1\n".to_vec()),
        (
            "big.bin",
            (0..1_500_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
                .collect(),
        ),
        ("sub/photo.raw", vec![0x5a; 200_000]),
    ];
    for (p, b) in &files {
        std::fs::write(case.join(p), b).expect("write");
    }
    files.into_iter().map(|(_, b)| b).collect()
}

fn send(d: &Path, addr: &str) -> serde_json::Value {
    let o = send_output(d, addr);
    assert_eq!(code(&o), 0, "send: {}", stderr(&o));
    let last = String::from_utf8_lossy(&o.stdout)
        .lines()
        .last()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .expect("summary");
    assert_eq!(last["type"], "sent");
    last
}

fn send_output(d: &Path, addr: &str) -> std::process::Output {
    run(
        d,
        &[
            "--home",
            "A",
            "--json",
            "send",
            "--relay",
            addr,
            "--to",
            "agency-b",
            "--case",
            "XX-2026-0011",
            "--legal-basis",
            "MLAT art. 18",
            "--purpose",
            "investigation",
            "--retain-until",
            "2030-12-31",
            CASE,
        ],
    )
}

fn status(d: &Path, addr: &str, t: &str) -> String {
    let o = ok(run(d, &["--home", "A", "status", "--relay", addr, t]));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("state ").map(str::to_owned))
        .expect("state line")
}

/// Every file under `root`, contents sorted (independent of the output layout).
fn contents(root: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(std::fs::read(&p).expect("read"));
            }
        }
    }
    out.sort();
    out
}

fn fetched_exactly(d: &Path, addr: &str, t: &str, out: &str, sources: &[Vec<u8>]) {
    ok(run(
        d,
        &["--home", "B", "fetch", "--relay", addr, t, "-o", out],
    ));
    let got = contents(&d.join(out));
    for (i, s) in sources.iter().enumerate() {
        assert!(got.contains(s), "source {i} fetched byte-exact");
    }
}

fn pack(d: &Path) -> std::path::PathBuf {
    std::fs::read_dir(d.join("B/relay/inbox"))
        .expect("inbox")
        .next()
        .expect("pack")
        .expect("entry")
        .path()
}

fn damage_reports(d: &Path) -> usize {
    rogatory_relay::logfile::read_records(&d.join("B/relay/audit.log"))
        .expect("log")
        .records
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.entry).contains("damage-report"))
        .count()
}

/// One round: with the relay stopped, `damage` harms its store; `relay scrub` finds and marks
/// it; the restarted relay shows and refuses it; the sender's `send` repairs it, re-sending at
/// most `resent_at_most` bytes; the fetch after it is byte-exact. Returns the relay.
fn round(
    d: &Path,
    relay: RelayProcess,
    t: &str,
    sources: &[Vec<u8>],
    name: &str,
    damage: impl FnOnce(&Path),
    resent_at_most: u64,
) -> RelayProcess {
    drop(relay);
    damage(d);
    let reports = damage_reports(d);
    let o = run(d, &["--home", "B", "relay", "scrub"]);
    assert_eq!(code(&o), 3, "{name}: scrub finds it: {}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(t),
        "{name}: scrub names the transfer"
    );
    assert_eq!(damage_reports(d), reports + 1, "{name}: one damage-report");
    // Scrubbing again reports it and logs nothing new.
    assert_eq!(code(&run(d, &["--home", "B", "relay", "scrub"])), 3);
    assert_eq!(damage_reports(d), reports + 1, "{name}: still one");

    let relay = start_relay(d, "B");
    assert_eq!(status(d, &relay.1, t), "damaged", "{name}");
    let o = run(
        d,
        &[
            "--home",
            "B",
            "fetch",
            "--relay",
            &relay.1,
            t,
            "-o",
            &format!("refused-{name}"),
        ],
    );
    assert_eq!(
        code(&o),
        3,
        "{name}: a damaged transfer is not retryable: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("DAMAGED") && stderr(&o).contains("same send again"),
        "{name}: {}",
        stderr(&o)
    );
    // `fetch --all` fetches whatever else awaits and names the damaged transfer (exit 3).
    let o = run(
        d,
        &[
            "--home",
            "B",
            "fetch",
            "--relay",
            &relay.1,
            "--all",
            "-o",
            &format!("all-{name}"),
        ],
    );
    assert_eq!(code(&o), 3, "{name}: {}", stderr(&o));
    assert!(
        stderr(&o).contains("damaged at the relay") && stderr(&o).contains(t),
        "{name}: {}",
        stderr(&o)
    );

    let summary = send(d, &relay.1);
    assert_eq!(summary["transfer_id"], t);
    let sent = summary["bytes_sent"].as_u64().expect("sent");
    assert!(
        sent > 0 && sent <= resent_at_most,
        "{name}: the repair re-sent {sent} bytes"
    );
    let state = status(d, &relay.1, t);
    assert!(
        state == "complete" || state == "delivered",
        "{name}: {state}"
    );
    fetched_exactly(d, &relay.1, t, &format!("out-{name}"), sources);
    relay
}

#[test]
fn lost_or_damaged_ciphertext_is_found_shown_refused_and_repaired() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    two_full_agencies(d);
    let sources = make_case(d);
    let relay = start_relay(d, "B");
    let first = send(d, &relay.1);
    let t = first["transfer_id"].as_str().expect("id").to_owned();
    let total = first["bytes_total"].as_u64().expect("total");
    // Intact: the same command again sends nothing.
    assert_eq!(send(d, &relay.1)["bytes_sent"], 0);
    let receipt =
        std::fs::read(d.join(format!("A/receipts/{t}.custody-receipt"))).expect("receipt");

    // (a) The pack deleted: everything is re-sent.
    let relay = round(
        d,
        relay,
        &t,
        &sources,
        "deleted",
        |d| std::fs::remove_file(pack(d)).expect("rm"),
        total,
    );
    // (b) The piece table edited in SQLite (one file's durable count): that file is re-sent.
    let relay = round(
        d,
        relay,
        &t,
        &sources,
        "table",
        |d| {
            let db = rusqlite::Connection::open(d.join("B/relay/relay.db")).expect("db");
            let n = db
                .execute(
                    "UPDATE files SET durable = durable - 1 WHERE idx = (SELECT MAX(idx) FROM files)",
                    [],
                )
                .expect("edit");
            assert_eq!(n, 1);
        },
        total - 1_000_000,
    );
    // (c) A byte flipped in the middle of the pack (inside big.bin): that file is re-sent.
    let relay = round(
        d,
        relay,
        &t,
        &sources,
        "flipped",
        |d| {
            let p = pack(d);
            let mut b = std::fs::read(&p).expect("pack");
            let n = b.len() / 2;
            b[n] ^= 0x01;
            std::fs::write(&p, b).expect("write");
        },
        1_600_000,
    );
    // The original custody receipt still stands: nothing new was signed for the repairs.
    assert_eq!(
        std::fs::read(d.join(format!("A/receipts/{t}.custody-receipt"))).expect("receipt"),
        receipt
    );
    ok(run(d, &["--home", "B", "audit", "verify"]));
    drop(relay);
    ok(run(d, &["--home", "B", "relay", "scrub"]));
}

/// Two agencies; A sends the case through B's relay, then the relay's pack is removed (a scrub
/// finds it: exit 3) and the relay started again. The relay, the transfer id and the sources.
fn sent_then_lost(d: &Path) -> (RelayProcess, String, Vec<Vec<u8>>) {
    two_full_agencies(d);
    let sources = make_case(d);
    let relay = start_relay(d, "B");
    let t = send(d, &relay.1)["transfer_id"]
        .as_str()
        .expect("id")
        .to_owned();
    drop(relay);
    std::fs::remove_file(pack(d)).expect("rm");
    assert_eq!(code(&run(d, &["--home", "B", "relay", "scrub"])), 3);
    (start_relay(d, "B"), t, sources)
}

/// Puts `good` back in `kept` (under `sent/<transfer>/`) and in the copy of the same file a
/// failed repair put back in `outbox/`.
fn put_back(d: &Path, kept: &Path, good: &[u8]) {
    std::fs::write(kept, good).expect("put back");
    let name = kept.file_name().expect("a file");
    for e in std::fs::read_dir(d.join("A/outbox"))
        .expect("outbox")
        .flatten()
    {
        if e.path().is_dir() {
            std::fs::write(e.path().join(name), good).expect("put back");
        }
    }
}

/// A repair re-encrypts with the file keys the sender kept in `sent/<transfer>/keys.age`
/// (`custody.md` §8.2): a damaged `keys.age` is refused (exit 3, naming it) before a byte is
/// sent, so is a missing one, and with it put back the repair goes through.
#[test]
fn a_repair_needs_the_senders_keys_age() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let (relay, t, sources) = sent_then_lost(d);
    let kept = d.join(format!("A/sent/{t}/keys.age"));
    let good = std::fs::read(&kept).expect("keys.age is kept after the receipt");
    // Every copy of keys.age (the kept one, and the one a failed repair put back in outbox/).
    let copies = |d: &Path| {
        let mut v = vec![kept.clone()];
        if let Ok(rd) = std::fs::read_dir(d.join("A/outbox")) {
            for e in rd.flatten() {
                let p = e.path().join("keys.age");
                if p.exists() {
                    v.push(p);
                }
            }
        }
        v
    };

    let mut bad = good.clone();
    let n = bad.len() - 20;
    bad[n] ^= 0x01;
    std::fs::write(&kept, &bad).expect("tamper");
    let o = send_output(d, &relay.1);
    assert_eq!(code(&o), 3, "a damaged keys.age: {}", stderr(&o));
    assert!(stderr(&o).contains("keys.age"), "{}", stderr(&o));

    for p in copies(d) {
        std::fs::remove_file(p).expect("rm keys.age");
    }
    let o = send_output(d, &relay.1);
    assert_eq!(code(&o), 3, "no keys.age: {}", stderr(&o));
    assert!(
        stderr(&o).contains("no keys.age") && stderr(&o).contains("--restart"),
        "{}",
        stderr(&o)
    );

    put_back(d, &kept, &good);
    let o = send_output(d, &relay.1);
    assert_eq!(code(&o), 0, "repaired: {}", stderr(&o));
    fetched_exactly(d, &relay.1, &t, "out", &sources);
}

/// A repair re-sends under the headers kept in `sent/<transfer>/heads.bin`: every file was sent
/// and sealed with them, so one that no longer opens with its key is refused (exit 3) before a
/// byte is sent, never made again (`protocol.md` §6.1 "Headers"); put back, the repair goes
/// through.
#[test]
fn a_repair_refuses_a_kept_header_that_does_not_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let (relay, t, sources) = sent_then_lost(d);
    let kept = d.join(format!("A/sent/{t}/heads.bin"));
    let good = std::fs::read(&kept).expect("heads.bin is kept after the receipt");
    // The last file's header: a byte of its MAC line (before the 16-byte nonce).
    let mut bad = good.clone();
    let n = bad.len() - 16 - 10;
    bad[n] ^= 0x01;
    std::fs::write(&kept, &bad).expect("tamper");
    let o = send_output(d, &relay.1);
    assert_eq!(code(&o), 3, "a damaged header: {}", stderr(&o));
    assert!(stderr(&o).contains("sealed"), "{}", stderr(&o));

    put_back(d, &kept, &good);
    let o = send_output(d, &relay.1);
    assert_eq!(code(&o), 0, "repaired: {}", stderr(&o));
    fetched_exactly(d, &relay.1, &t, "out", &sources);
}
