//! End to end with the real binary (CLI issue, partly): two agencies, a relay on 127.0.0.1,
//! `send` of a folder (nested directories, an empty file, a 64 MiB file, names with spaces and
//! non-ASCII), `inbox`, `fetch`, byte-exact comparison, the delivery receipt visible in
//! `status`; refusals with their exit codes; `--json` parsed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn relay(dir: &Path, home: &str, _policy: Option<&str>) -> RelayProcess {
    start_relay(dir, home)
}

fn send(
    dir: &Path,
    home: &str,
    addr: &str,
    extra: &[&str],
    paths: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "--home",
        home,
        "--json",
        "send",
        "--relay",
        addr,
        "--to",
        "agency-b",
        "--case",
        "XX-2026-0042",
    ];
    args.extend_from_slice(&["--purpose", "investigation", "--retain-until", "2030-12-31"]);
    args.extend_from_slice(extra);
    args.extend_from_slice(paths);
    run(dir, &args)
}

/// `B` fetches everything waiting for it at `relay` into `out/`.
fn fetch_all_into_out(d: &Path, relay: &str) {
    ok(run(
        d,
        &[
            "--home", "B", "fetch", "--relay", relay, "--all", "-o", "out",
        ],
    ));
}

fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir") {
            let p = e.expect("e").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(root).expect("prefix").display().to_string(),
                    std::fs::read(&p).expect("read"),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn send_fetch_verify_audit_a_folder_with_a_64_mib_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    agencies_and_relay_home(d);
    let r = relay(d, "B-relay", None);

    let case = d.join("case 42");
    std::fs::create_dir_all(case.join("sub dir/deeper")).expect("mkdir");
    let big: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(case.join("big.bin"), &big).expect("big");
    std::fs::write(case.join("empty"), b"").expect("empty");
    std::fs::write(
        case.join("sub dir/r\u{e9}sum\u{e9} \u{4e2d}\u{6587}.txt"),
        "preuve n\u{b0} 1\n",
    )
    .expect("txt");
    std::fs::write(case.join("sub dir/deeper/exact"), vec![7u8; 65_536]).expect("exact");

    let o = send(
        d,
        "A",
        &r.1,
        &["--legal-basis", "MLAT art. 18"],
        &["case 42"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let ev = json_lines(&o);
    let kinds: Vec<&str> = ev
        .iter()
        .map(|v| v["type"].as_str().expect("type"))
        .collect();
    // The relay first (its WELCOME publishes the policy checked before any work), then the
    // transfer.
    assert_eq!(kinds.first(), Some(&"connected"));
    assert_eq!(kinds.get(1), Some(&"start"));
    assert!(
        kinds.contains(&"progress") && kinds.contains(&"file_done") && kinds.contains(&"receipt")
    );
    // The key exchange the live connection negotiated: hybrid post-quantum between our ends.
    let connected = ev
        .iter()
        .find(|v| v["type"] == "connected")
        .expect("connected event");
    assert_eq!(connected["relay_agency"], "agency-b");
    assert_eq!(connected["tls_key_exchange"], "X25519MLKEM768");
    let summary = ev.last().expect("summary");
    assert_eq!(summary["type"], "sent");
    assert_eq!(summary["files"], 4);
    assert_eq!(
        summary["bytes_sent"].as_u64(),
        summary["bytes_total"].as_u64()
    );
    assert_eq!(summary["bytes_skipped"], 0);
    let transfer = summary["transfer_id"].as_str().expect("id").to_owned();
    let receipt = ev.iter().find(|v| v["type"] == "receipt").expect("receipt")["path"]
        .as_str()
        .expect("path")
        .to_owned();
    assert!(d.join(&receipt).exists());

    // The same command again: nothing re-sent, same receipt.
    let o = send(
        d,
        "A",
        &r.1,
        &["--legal-basis", "MLAT art. 18"],
        &["case 42"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let again = json_lines(&o).pop().expect("summary");
    assert_eq!(again["transfer_id"], transfer.as_str());
    assert_eq!(again["bytes_sent"], 0);

    // `send --resume ID` finds the transfer without the paths (receipted: nothing to send).
    let o = run(
        d,
        &[
            "--home", "A", "--json", "send", "--relay", &r.1, "--resume", &transfer,
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let resumed = json_lines(&o).pop().expect("summary");
    assert_eq!(resumed["transfer_id"], transfer.as_str());
    assert_eq!(resumed["bytes_sent"], 0);
    let o = run(
        d,
        &[
            "--home",
            "A",
            "send",
            "--relay",
            &r.1,
            "--resume",
            "0123456789abcdef0123456789abcdef",
        ],
    );
    assert_eq!(code(&o), 2, "unknown transfer: {}", stderr(&o));

    // The relay's home holds no age identity: it cannot fetch and decrypt (exit 4).
    let o = run(
        d,
        &[
            "--home", "B-relay", "fetch", "--relay", &r.1, "--all", "-o", "out",
        ],
    );
    assert_eq!(
        code(&o),
        4,
        "a relay-only home cannot decrypt: {}",
        stderr(&o)
    );

    // The recipient fetches: byte-exact.
    ok(run(
        d,
        &[
            "--home", "B", "--json", "fetch", "--relay", &r.1, &transfer, "-o", "out",
        ],
    ));
    assert_eq!(
        tree(&transfer_dir(&d.join("out")).join("case 42")),
        tree(&case)
    );
    // Every receipt verifies against the trust store; the relay's log verifies, and stops
    // verifying after one byte of it changes.
    let mut args = vec!["--home", "A", "verify"];
    let receipts: Vec<String> = ["A", "B"]
        .iter()
        .flat_map(|h| {
            std::fs::read_dir(d.join(h).join("receipts"))
                .expect("receipts")
                .map(|e| e.expect("e").path().display().to_string())
        })
        .collect();
    args.extend(receipts.iter().map(String::as_str));
    let o = ok(run(d, &args));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).matches(": ok: ").count(),
        receipts.len()
    );
    ok(run(d, &["--home", "B-relay", "audit", "verify"]));
    // test-plan.md 39: a byte flipped in the relay's store is an integrity failure at the receiver
    // (exit 3), never a successful decrypt.
    flip_pack_byte(&d.join("B-relay"), |len| len / 2);
    let o = run(
        d,
        &[
            "--home", "B", "fetch", "--relay", &r.1, &transfer, "-o", "out2",
        ],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let out2 = transfer_dir(&d.join("out2")).join("case 42");
    assert!(
        !out2.join("big.bin").exists(),
        "the corrupted file never appears"
    );
    assert!(
        partials(&out2).is_empty(),
        "nothing of a file that failed to authenticate is kept"
    );
    drop(r);
    let p = d.join("B-relay/relay/audit.log");
    let mut b = std::fs::read(&p).expect("log");
    let n = b.len() / 2;
    b[n] ^= 0x01;
    std::fs::write(&p, b).expect("write");
    assert_eq!(code(&run(d, &["--home", "B-relay", "audit", "verify"])), 3);
}

#[test]
fn recipient_fetches_byte_exact_and_refusals_have_their_codes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    // Full identities: B's analysts fetch; C is another trusted agency; Z is unknown to B.
    for (home, id) in [
        ("A", "agency-a"),
        ("B", "agency-b"),
        ("C", "agency-c"),
        ("Z", "agency-z"),
    ] {
        agency(d, home, id, false);
    }
    for (home, other) in [("A", "B"), ("B", "A"), ("B", "C"), ("C", "B"), ("Z", "B")] {
        trust(d, home, other);
    }
    // agency-b's relay runs from an exported home that holds no age identity.
    ok(run(
        d,
        &["--home", "B", "agency", "export-relay", "B-relay"],
    ));
    assert!(
        !std::fs::read_to_string(d.join("B-relay/identity.txt"))
            .expect("id")
            .contains("AGE-SECRET-KEY")
    );
    let r = relay(d, "B-relay", None);
    let case = d.join("case-7");
    std::fs::create_dir_all(case.join("a/b")).expect("mkdir");
    std::fs::write(case.join("a/b/photo 1.jpg"), vec![0xd8u8; 300_000]).expect("w");
    std::fs::write(case.join("\u{fc}ber.txt"), b"x\n").expect("w");
    let o = ok(send(d, "A", &r.1, &["--legal-basis", "MLAT"], &["case-7"]));
    let transfer = transfer_id(&o);

    // Another trusted agency sees nothing and cannot fetch (exit 6).
    let o = run(d, &["--home", "C", "inbox", "--relay", &r.1]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).trim().is_empty());
    let o = run(
        d,
        &[
            "--home", "C", "fetch", "--relay", &r.1, &transfer, "-o", "c-out",
        ],
    );
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    // An agency the relay does not trust cannot even connect (exit 6).
    let o = run(d, &["--home", "Z", "inbox", "--relay", &r.1]);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
    // A transfer missing a field the policy requires (legal basis) is refused before any work,
    // from the policy the relay published in WELCOME (exit 2): no send state is left.
    // The home does not grow (only the relay's log checkpoint, `checkpoints/`, which every
    // contact keeps, may change: custody.md §7.2).
    std::fs::write(d.join("other.txt"), b"y").expect("w");
    let home_files = || -> Vec<(String, Vec<u8>)> {
        tree(&d.join("A"))
            .into_iter()
            .filter(|(p, _)| !p.starts_with("checkpoints"))
            .collect()
    };
    let home_before = home_files();
    let o = send(d, "A", &r.1, &[], &["other.txt"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("legal_basis") && stderr(&o).contains("--legal-basis"),
        "{}",
        stderr(&o)
    );
    assert_eq!(home_files(), home_before);
    // A retention date in the past is refused before anything, even a connection.
    let o = run(
        d,
        &[
            "--home",
            "A",
            "send",
            "--relay",
            "127.0.0.1:9",
            "--to",
            "agency-b",
            "--case",
            "XX-2026-0042",
            "--legal-basis",
            "MLAT",
            "--purpose",
            "investigation",
            "--retain-until",
            "2020-01-01",
            "other.txt",
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--retain-until 2020-01-01: that date has passed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(home_files(), home_before);

    // test-plan.md 58: a symbolic link in the output directory, named like an incoming file or
    // standing for a parent directory, is never followed (exit 8, nothing written outside).
    // The traps sit in the transfer's own folder (named by the state file of an "interrupted"
    // fetch, with the package it had written); a transfer folder name that is a link is never
    // used.
    let outside = d.join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let folder = format!("agency-a_XX-2026-0042_{}", &transfer[..8]);
    let interrupted = |out: &str| {
        let f = d.join(out).join(&folder);
        std::fs::create_dir_all(f.join(".rogatory")).expect("mkdir");
        std::fs::write(
            f.join(".rogatory/package.json"),
            serde_json::json!({"transfer": transfer, "sender": "agency-a", "recipient": "agency-b",
                "manifest_sha256": "", "retain_until": null, "fetched_at": null, "purged_at": null})
            .to_string(),
        )
        .expect("w");
        std::fs::create_dir_all(d.join(out).join(".rogatory-fetch")).expect("mkdir");
        std::fs::write(
            d.join(out).join(".rogatory-fetch").join(&transfer),
            format!("{folder}\n"),
        )
        .expect("w");
        f
    };
    let f = interrupted("trap1");
    std::fs::create_dir_all(f.join("case-7")).expect("mkdir");
    std::os::unix::fs::symlink(outside.join("x"), f.join("case-7/\u{fc}ber.txt")).expect("symlink");
    let o = run(
        d,
        &[
            "--home", "B", "fetch", "--relay", &r.1, &transfer, "-o", "trap1",
        ],
    );
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    let f = interrupted("trap2");
    std::os::unix::fs::symlink(&outside, f.join("case-7")).expect("symlink");
    let o = run(
        d,
        &[
            "--home", "B", "fetch", "--relay", &r.1, &transfer, "-o", "trap2",
        ],
    );
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    std::fs::create_dir_all(d.join("trap3")).expect("mkdir");
    std::os::unix::fs::symlink(&outside, d.join("trap3").join(&folder)).expect("symlink");
    ok(run(
        d,
        &[
            "--home", "B", "fetch", "--relay", &r.1, &transfer, "-o", "trap3",
        ],
    ));
    assert!(d.join("trap3").join(format!("{folder}-2/case-7")).is_dir());
    assert!(
        std::fs::read_dir(&outside)
            .expect("outside")
            .next()
            .is_none(),
        "nothing written outside"
    );

    // A temporary file left by a killed earlier fetch is swept (test-plan.md 29): in the
    // transfer's folder, which an interrupted fetch names in its state file.
    std::fs::create_dir_all(interrupted("out").join("case-7")).expect("mkdir");
    std::fs::write(
        d.join("out")
            .join(&folder)
            .join("case-7/.rogatory-partial-Xy12ab"),
        b"stale",
    )
    .expect("w");

    // The recipient lists and fetches: byte-exact, then the delivery receipt is visible.
    let o = ok(run(d, &["--home", "B", "inbox", "--relay", &r.1]));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&transfer));
    ok(run(
        d,
        &[
            "--home", "B", "fetch", "--relay", &r.1, &transfer, "-o", "out",
        ],
    ));
    assert_eq!(
        tree(&d.join("out").join(&folder).join("case-7")),
        tree(&case),
        "byte-exact, and no stale partial left"
    );
    assert!(
        !d.join("out/.rogatory-fetch").exists(),
        "no work files left"
    );
    // Fetching the same transfer again goes into a new folder, never over the first.
    ok(run(
        d,
        &[
            "--home", "B", "fetch", "--relay", &r.1, &transfer, "-o", "out",
        ],
    ));
    assert_eq!(
        tree(&d.join("out").join(format!("{folder}-2")).join("case-7")),
        tree(&case)
    );
    let o = ok(run(
        d,
        &["--home", "A", "status", "--relay", &r.1, &transfer],
    ));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("state delivered") && s.contains("receipt delivery by agency-b"),
        "{s}"
    );
    // Every receipt verifies offline against the trust store; the relay's log verifies, and
    // stops verifying after one byte of it changes (exit 3).
    let receipts: Vec<String> = ["A", "B"]
        .iter()
        .flat_map(|h| {
            std::fs::read_dir(d.join(h).join("receipts"))
                .expect("receipts")
                .map(|e| e.expect("e").path().display().to_string())
        })
        .collect();
    assert_eq!(
        receipts.len(),
        4,
        "custody (A and B), delivery (B, and at A from status)"
    );
    let mut args = vec!["--home", "A", "verify"];
    args.extend(receipts.iter().map(String::as_str));
    let o = ok(run(d, &args));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).matches(": ok: ").count(),
        4
    );
    ok(run(d, &["--home", "B-relay", "audit", "verify"]));
    ok(run(
        d,
        &[
            "--home",
            "A",
            "audit",
            "--agency",
            "agency-b",
            "--log",
            "B-relay/relay/audit.log",
            "verify",
        ],
    ));
    // Each refusal at the relay left an audit entry: agency-z's certificate refused in the TLS
    // handshake, and agency-c's fetch.
    let log =
        rogatory_relay::logfile::read_records(&d.join("B-relay/relay/audit.log")).expect("log");
    let rejections = log
        .records
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.entry).contains("rejection"))
        .count();
    assert_eq!(
        rejections, 2,
        "agency-z's TLS refusal and agency-c's fetch (the missing field was refused by the sender)"
    );
    drop(r);
    let p = d.join("B-relay/relay/audit.log");
    let mut b = std::fs::read(&p).expect("log");
    let n = b.len() / 3;
    b[n] ^= 0x20;
    std::fs::write(&p, b).expect("write");
    let o = run(d, &["--home", "B-relay", "audit", "verify"]);
    assert_eq!(code(&o), 3, "a changed byte is tampering: {}", stderr(&o));
}

#[test]
fn bulk_send_and_fetch_of_5000_small_files_with_one_receipt() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    two_full_agencies(d);
    let bulk = d.join("bulk");
    for i in 0..5000u32 {
        let dir = bulk.join(format!("d{:02}", i % 50));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join(format!("f{i:05}.txt")),
            format!("exhibit {i}\n").repeat(1 + (i as usize % 40)),
        )
        .expect("w");
    }
    let r = relay(d, "B", None);
    let t0 = std::time::Instant::now();
    let o = ok(send(d, "A", &r.1, &["--legal-basis", "MLAT"], &["bulk"]));
    let send_secs = t0.elapsed().as_secs_f64();
    let summary = json_lines(&o).pop().expect("summary");
    assert_eq!(summary["files"], 5000);
    let transfer = summary["transfer_id"].as_str().expect("id").to_owned();
    // One custody receipt covers all of them.
    let log = rogatory_relay::logfile::read_records(&d.join("B/relay/audit.log")).expect("log");
    assert_eq!(
        log.records
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.entry).contains("custody-receipt"))
            .count(),
        1
    );
    let t0 = std::time::Instant::now();
    ok(run(
        d,
        &[
            "--home", "B", "fetch", "--relay", &r.1, &transfer, "-o", "out",
        ],
    ));
    let fetch_secs = t0.elapsed().as_secs_f64();
    assert_eq!(
        tree(&transfer_dir(&d.join("out")).join("bulk")),
        tree(&bulk)
    );
    // test-plan.md 130: small files are opened a few at a time on one thread; with the last
    // file's last tag changed at the relay, the fetch exits 3 (integrity) naming that file, and
    // nothing of it is left, under its name or as a partial file. The relay's inbox holds this
    // transfer's pack only.
    flip_pack_byte(&d.join("B"), |len| len - 1);
    let o = run(
        d,
        &[
            "--home", "B", "fetch", "--relay", &r.1, &transfer, "-o", "out2",
        ],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("bulk/d49/f04999.txt"), "{}", stderr(&o));
    let out2 = transfer_dir(&d.join("out2"));
    assert!(!out2.join("bulk/d49/f04999.txt").exists());
    assert!(partials(&out2.join("bulk/d49")).is_empty());
    eprintln!(
        "bulk 5000 files (debug build): send {:.0} files/s, fetch {:.0} files/s",
        5000.0 / send_secs,
        5000.0 / fetch_secs
    );
}

/// `docs/cli.md` "Receiving" (test-plan.md 134): a write that fails in the middle of a group of
/// small files (here the file-size limit, `ulimit -f`, which one 40 KB file among 4 KiB ones
/// exceeds: `EFBIG`) ends the fetch with exit 7 and one line naming that file; every file under a
/// final name is whole and exact, the failed file is under no name and no partial file is left;
/// the same fetch run again completes byte-exact.
#[test]
fn a_write_failure_in_a_group_of_small_files_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    two_full_agencies(d);
    let src = d.join("case");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    for i in 0..60u32 {
        let body: Vec<u8> = (0..4096u32).map(|k| (k * 31 + i * 7) as u8).collect();
        std::fs::write(src.join(format!("sub/f{i:02}")), body).expect("w");
    }
    std::fs::write(src.join("sub/f30x"), vec![0x5a; 40_000]).expect("w");
    let r = relay(d, "B", None);
    let o = ok(send(d, "A", &r.1, &["--legal-basis", "MLAT"], &["case"]));
    let transfer = transfer_id(&o);
    let args = [
        "--home", "B", "fetch", "--relay", &r.1, &transfer, "-o", "out",
    ];
    // 16 KiB per file at most; SIGXFSZ ignored, so the write fails instead of killing.
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 16; trap '' XFSZ; exec \"$0\" \"$@\"")
        .arg(bin())
        .args(args)
        .current_dir(d)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn sh");
    assert_eq!(code(&o), 7, "{}", stderr(&o));
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.starts_with("rogatory: error:"))
        .expect("an error line");
    assert!(
        line.contains("case/sub/f30x:") && line.contains("(os error 27)"),
        "{err}"
    );
    let out = transfer_dir(&d.join("out"));
    let got = tree(&out.join("case"));
    assert!(
        got.len() < 61,
        "the fetch stopped part way: {} files",
        got.len()
    );
    for (name, bytes) in &got {
        assert_eq!(
            &std::fs::read(src.join(name)).expect("source"),
            bytes,
            "{name} is whole and exact"
        );
    }
    assert!(!out.join("case/sub/f30x").exists());
    assert!(partials(&out.join("case/sub")).is_empty());
    ok(run(d, &args));
    assert_eq!(tree(&out.join("case")), tree(&src));
}

#[test]
fn a_bulk_send_lists_every_file_it_cannot_send_and_sends_nothing() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    two_agencies(d);
    let r = relay(d, "B", None);
    let case = d.join("case");
    std::fs::create_dir_all(case.join("sub")).expect("mkdir");
    std::fs::write(case.join("good.txt"), b"ok").expect("w");
    std::os::unix::fs::symlink("/etc/hostname", case.join("link")).expect("symlink");
    std::os::unix::fs::symlink("/etc", case.join("sub/dirlink")).expect("symlink");
    std::fs::write(
        case.join(std::ffi::OsStr::from_bytes(b"bad-\xff.txt")),
        b"x",
    )
    .expect("w");
    // A name with an invisible character looks like another at the recipient: unsafe.
    std::fs::write(case.join("good\u{200b}.txt"), b"x").expect("w");
    let o = send(d, "A", &r.1, &["--legal-basis", "MLAT"], &["case"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(
        lines.last().expect("error")["type"],
        "error",
        "an error event ends the stream"
    );
    let summary = lines
        .iter()
        .find(|v| v["type"] == "unsendable")
        .expect("unsendable");
    let failed: Vec<String> = summary["failed"]
        .as_array()
        .expect("failed")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_owned())
        .collect();
    assert_eq!(failed.len(), 4, "{failed:?}");
    assert!(failed.iter().any(|p| p.contains('\u{200b}')), "{failed:?}");
    assert!(
        failed.iter().any(|p| p.ends_with("link")) && failed.iter().any(|p| p.ends_with("dirlink"))
    );
    assert!(!d.join("A/receipts").exists(), "nothing was sent");
}

/// The `.rogatory-partial-*` files in `dir`, with their sizes.
/// Flips one bit of the byte at `at(len)` of the first pack in the inbox of the relay whose
/// home is `relay_home` (the tests that call it have one transfer there).
fn flip_pack_byte(relay_home: &Path, at: impl FnOnce(usize) -> usize) {
    let pack = std::fs::read_dir(relay_home.join("relay/inbox"))
        .expect("inbox")
        .next()
        .expect("pack")
        .expect("entry")
        .path();
    let mut b = std::fs::read(&pack).expect("pack");
    let n = at(b.len());
    b[n] ^= 0x01;
    std::fs::write(&pack, b).expect("write");
}

fn partials(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".rogatory-partial-")
                })
                .map(|e| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// `docs/cli.md` "Receiving": `kill -9` of `fetch` in the middle of a 64 MiB file leaves only a
/// partial of whole authenticated chunks (nothing under the final name); the re-run resumes
/// from it (it does not download from 0), ends byte-exact and leaves no state behind. Progress
/// events grow strictly while the file downloads.
#[test]
fn fetch_resumes_after_kill_9_in_the_middle_of_a_large_file() {
    use std::io::Read as _;
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    two_full_agencies(d);
    let r = relay(d, "B", None);
    let case = d.join("case");
    std::fs::create_dir_all(&case).expect("mkdir");
    let big: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(case.join("big.bin"), &big).expect("big");
    std::fs::write(case.join("small.txt"), b"exhibit 2\n").expect("small");
    let o = ok(send(d, "A", &r.1, &["--legal-basis", "MLAT"], &["case"]));
    let transfer = transfer_id(&o);

    // First run: killed (SIGKILL) once the partial of big.bin holds at least 8 MiB.
    let mut child = std::process::Command::new(bin())
        .args([
            "--home", "B", "--json", "fetch", "--relay", &r.1, &transfer, "-o", "out",
        ])
        .current_dir(d)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fetch");
    let out_dir = d
        .join("out")
        .join(format!("agency-a_XX-2026-0042_{}", &transfer[..8]))
        .join("case");
    let t0 = std::time::Instant::now();
    let held = loop {
        if let Some((_, n)) = partials(&out_dir).into_iter().find(|(_, n)| *n >= 8 << 20) {
            break n;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "fetch ended before it could be killed mid-file"
        );
        assert!(t0.elapsed().as_secs() < 120, "no partial appeared");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    let mut first = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut first)
        .expect("stdout");
    assert!(held >= 8 << 20);
    assert!(
        !out_dir.join("big.bin").exists(),
        "nothing under the final name"
    );
    let left = partials(&out_dir);
    assert_eq!(left.len(), 1, "one resumable partial: {left:?}");
    // The small file went in parallel and was published by the killed run: the re-run must
    // accept it (its state file says a fetch was under way), not refuse it as existing.
    assert!(out_dir.join("small.txt").exists());
    assert!(d.join("out/.rogatory-fetch").exists());
    // Progress events of the killed run grew strictly.
    let done: Vec<u64> = first
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "progress")
        .map(|v| v["bytes_done"].as_u64().expect("bytes_done"))
        .collect();
    assert!(done.windows(2).all(|w| w[0] < w[1]), "{done:?}");

    // Second run: resumes, byte-exact, nothing left behind.
    let o = ok(run(
        d,
        &[
            "--home", "B", "--json", "fetch", "--relay", &r.1, &transfer, "-o", "out",
        ],
    ));
    let ev = json_lines(&o);
    let summary = ev.last().expect("summary");
    assert_eq!(summary["type"], "fetched");
    let total = summary["bytes_total"].as_u64().expect("total");
    let downloaded = summary["bytes_downloaded"].as_u64().expect("downloaded");
    let resumed = summary["bytes_resumed"].as_u64().expect("resumed");
    assert!(
        resumed >= (8 << 20) - 65_536 && downloaded + resumed >= total && downloaded < total,
        "resumed {resumed}, downloaded {downloaded} of {total}"
    );
    assert_eq!(std::fs::read(out_dir.join("big.bin")).expect("big"), big);
    assert_eq!(tree(&out_dir), tree(&case));
    assert!(partials(&out_dir).is_empty());
    assert!(
        !d.join("out/.rogatory-fetch").exists(),
        "completed fetch state removed"
    );
    let done: Vec<u64> = ev
        .iter()
        .filter(|v| v["type"] == "progress")
        .map(|v| v["bytes_done"].as_u64().expect("bytes_done"))
        .collect();
    assert!(done.windows(2).all(|w| w[0] < w[1]), "{done:?}");
    assert_eq!(done.last(), Some(&total));
}

/// `--json` `progress` events move per chunk while one large file downloads: several, with
/// strictly growing `bytes_done`, before the file is done.
#[test]
fn fetch_progress_grows_while_a_large_file_downloads() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    two_full_agencies(d);
    let r = relay(d, "B", None);
    std::fs::create_dir_all(d.join("case")).expect("mkdir");
    let big: Vec<u8> = (0..192u32 << 20)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 7) as u8)
        .collect();
    std::fs::write(d.join("case/big.bin"), &big).expect("big");
    let o = ok(send(d, "A", &r.1, &["--legal-basis", "MLAT"], &["case"]));
    let transfer = transfer_id(&o);
    let o = ok(run(
        d,
        &[
            "--home", "B", "--json", "fetch", "--relay", &r.1, &transfer, "-o", "out",
        ],
    ));
    let ev = json_lines(&o);
    let total = ev.last().expect("summary")["bytes_total"]
        .as_u64()
        .expect("total");
    let before_done: Vec<u64> = ev
        .iter()
        .take_while(|v| v["type"] != "file_done")
        .filter(|v| v["type"] == "progress")
        .map(|v| v["bytes_done"].as_u64().expect("bytes_done"))
        .collect();
    assert!(
        before_done.windows(2).all(|w| w[0] < w[1]),
        "{before_done:?}"
    );
    let between = before_done.iter().filter(|&&b| b > 0 && b < total).count();
    assert!(
        between >= 3,
        "progress while the file downloads: {before_done:?}"
    );
    assert_eq!(
        std::fs::read(transfer_dir(&d.join("out")).join("case/big.bin")).expect("big"),
        big
    );
}

/// Every command that connects closes its connection before it exits, so the relay learns it at
/// once instead of holding it until its idle timeout (`Node::close`, `protocol.md` §8).
#[test]
fn every_command_closes_its_connection() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    agencies_and_relay_home(d);
    let (mut child, addr) = spawn_relay_log(d, "B-relay", "warn,rogatory_transport::net=debug");
    std::fs::write(d.join("f.txt"), b"evidence").expect("file");
    let sent = ok(send(d, "A", &addr, &["--legal-basis", "MLAT"], &["f.txt"]));
    let id = transfer_id(&sent);
    ok(run(d, &["--home", "B", "inbox", "--relay", &addr]));
    fetch_all_into_out(d, &addr);
    ok(run(d, &["--home", "A", "status", "--relay", &addr, &id]));
    // The last close is a datagram over loopback: it has arrived long before this.
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let o = child.wait_with_output().expect("relay output");
    let log = stderr(&o);
    let closed = log
        .lines()
        .filter(|l| l.contains("connection ended") && l.contains("closed by peer: done"))
        .count();
    assert_eq!(
        closed, 4,
        "one close per command (send, inbox, fetch, status):\n{log}"
    );
}

/// A send of many small files holds a bounded number of them open (`Streamer::read_ahead`, and
/// each closed once read): 300 files go through with 64 file descriptors. Before, every file
/// stayed open until the relay had it durably, and running out of descriptors was reported as
/// a changed source (exit 8).
#[test]
fn many_small_files_are_sent_with_few_file_descriptors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    agencies_and_relay_home(d);
    let r = start_relay(d, "B-relay");
    let src = d.join("many");
    std::fs::create_dir(&src).expect("mkdir");
    for i in 0..300u32 {
        std::fs::write(src.join(format!("f{i:03}")), i.to_le_bytes().repeat(250)).expect("file");
    }
    let o = std::process::Command::new("sh")
        .args(["-c", "ulimit -n 64 && exec \"$@\"", "sh"])
        .arg(bin())
        .args(["--home", "A", "send", "--relay", &r.1, "--to", "agency-b"])
        .args(["--case", "C-1", "--legal-basis", "MLAT", "--purpose", "p"])
        .args(["--retain-until", "2030-12-31", "many"])
        .current_dir(d)
        .output()
        .expect("sh");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    fetch_all_into_out(d, &r.1);
    let got = transfer_dir(&d.join("out")).join("many");
    assert_eq!(std::fs::read_dir(&got).expect("fetched").count(), 300);
    for i in [0u32, 150, 299] {
        let f = std::fs::read(got.join(format!("f{i:03}"))).expect("fetched file");
        assert_eq!(f, i.to_le_bytes().repeat(250));
    }
}

/// `relay serve --workers N` (`docs/cli.md` "Running the relay"): one worker thread serves a send
/// and a fetch; 0 and 1025 are usage errors.
#[test]
fn a_relay_on_one_worker_thread_serves() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    agencies_and_relay_home(d);
    for n in ["0", "1025"] {
        let o = serve_refused_with(d, "B-relay", &["--workers", n]);
        assert_eq!(code(&o), 2, "{}", stderr(&o));
    }
    let r = start_relay_with(d, "B-relay", &["--workers", "1"]);
    std::fs::write(d.join("f.bin"), vec![7u8; 300_000]).expect("file");
    ok(send(d, "A", &r.1, &["--legal-basis", "MLAT"], &["f.bin"]));
    fetch_all_into_out(d, &r.1);
    let got = std::fs::read(transfer_dir(&d.join("out")).join("f.bin")).expect("fetched");
    assert_eq!(got, vec![7u8; 300_000]);
}
