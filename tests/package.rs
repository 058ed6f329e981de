//! The chain of custody at the ends (issue 11, `docs/cli.md` "Fetched output", "Verifying a
//! fetched folder", "Retention at the ends"), with the real binary and a relay on 127.0.0.1:
//! A sends one folder to B and C through B's relay; each recipient's transfer lands in its own
//! folder with its evidence package; `verify OUT` passes and fails (exit 3, naming the file)
//! after one byte flipped, a file deleted or a file added; a second `fetch --all` fetches
//! nothing; A's `status` saves every receipt and `verify` accepts each; two senders'
//! same-named files never mix; `purge` at both ends.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Agencies A (sender), B (recipient; its relay runs from a relay-only export) and C (another
/// recipient), all trusting each other; returns the relay.
fn three_agencies(d: &Path, extra_senders: &[(&str, &str)]) -> RelayProcess {
    agency(d, "A", "agency-a", false);
    agency(d, "B", "agency-b", false);
    agency(d, "C", "agency-c", false);
    for (home, id) in extra_senders {
        agency(d, home, id, false);
    }
    let mut homes = vec!["A", "B", "C"];
    homes.extend(extra_senders.iter().map(|(h, _)| *h));
    for a in &homes {
        for b in &homes {
            if a != b {
                trust(d, a, b);
            }
        }
    }
    ok(run(
        d,
        &["--home", "B", "agency", "export-relay", "B-relay"],
    ));
    // Our crates at `debug`: a test can check what the relay's log learns (test-plan.md 36).
    start_relay_logging_to(
        d,
        "B-relay",
        "debug,quinn=info,quinn_proto=info,rustls=info",
        &d.join("relay.log"),
    )
}

fn send(d: &Path, home: &str, relay: &str, to: &[&str], extra: &[&str], paths: &[&str]) -> String {
    let mut args = vec!["--home", home, "--json", "send", "--relay", relay];
    for t in to {
        args.extend_from_slice(&["--to", t]);
    }
    args.extend_from_slice(&[
        "--case",
        "XX/2026 0042",
        "--legal-basis",
        "MLAT art. 18",
        "--purpose",
        "investigation",
        "--retain-until",
        "2030-12-31",
        "--classification",
        "restricted",
    ]);
    args.extend_from_slice(extra);
    args.extend_from_slice(paths);
    let o = ok(run(d, &args));
    transfer_id(&o)
}

fn fetch_all(d: &Path, home: &str, relay: &str, out: &str) -> Vec<serde_json::Value> {
    json_lines(&ok(run(
        d,
        &[
            "--home", home, "--json", "fetch", "--relay", relay, "--all", "-o", out,
        ],
    )))
}

fn verify_fails_naming(d: &Path, home: &str, out: &Path, file: &Path) {
    let o = run(d, &["--home", home, "verify", &out.display().to_string()]);
    assert_eq!(code(&o), 3, "{}{}", stdout(&o), stderr(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        all.contains(&file.display().to_string()),
        "names {}: {all}",
        file.display()
    );
}

#[test]
fn three_agencies_package_verify_refetch_and_every_receipt_at_the_sender() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let r = three_agencies(d, &[]);
    std::fs::create_dir_all(d.join("case-42/sub")).expect("mkdir");
    std::fs::write(d.join("case-42/exhibit1.txt"), b"exhibit one\n").expect("w");
    std::fs::write(d.join("case-42/sub/photo.bin"), vec![9u8; 200_000]).expect("w");
    std::fs::write(
        d.join("meta.toml"),
        "requesting_authority = \"Public Prosecutor, Lyon\"\nexecuting_authority = \"BKA\"\n\
         onward_transfer = \"forbidden\"\nnotes = \"seized 2026-03-01\"\n",
    )
    .expect("meta");
    let t = send(
        d,
        "A",
        &r.1,
        &["agency-b", "agency-c"],
        &["--meta", "meta.toml"],
        &["case-42"],
    );

    for (home, out) in [("B", "outB"), ("C", "outC")] {
        let ev = fetch_all(d, home, &r.1, out);
        let summary = ev.iter().find(|v| v["type"] == "fetched").expect("fetched");
        assert_eq!(summary["transfer_id"], t.as_str());
        // Layout: OUT/<sender>_<case>_<short id>/ with the files and the package.
        let folder = transfer_dir(&d.join(out));
        assert_eq!(
            folder.file_name().expect("name").to_string_lossy(),
            format!("agency-a_XX-2026-0042_{}", &t[..8])
        );
        assert_eq!(
            summary["output"],
            folder
                .display()
                .to_string()
                .replace(&format!("{}/", d.display()), "")
        );
        assert_eq!(
            std::fs::read(folder.join("case-42/exhibit1.txt")).expect("f"),
            b"exhibit one\n"
        );
        assert_eq!(
            listing(&folder.join(".rogatory")),
            [
                "contents.json",
                "custody.receipt",
                "delivery.receipt",
                "manifest.json",
                "package.json",
                "seal.note"
            ]
        );
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(folder.join(".rogatory/package.json")).expect("record"),
        )
        .expect("json");
        assert_eq!(record["retain_until"], "2030-12-31");
        assert_eq!(record["transfer"], t.as_str());

        // verify OUT, and one transfer folder: ok, with the legal metadata.
        let o = ok(run(d, &["--home", home, "verify", out]));
        let s = stdout(&o);
        for want in [
            ": ok: ",
            "MLAT art. 18",
            "XX/2026 0042",
            "Public Prosecutor, Lyon",
            "BKA",
            "investigation",
            "2030-12-31",
            "restricted",
            "forbidden",
        ] {
            assert!(s.contains(want), "{want}: {s}");
        }
        let o = ok(run(
            d,
            &[
                "--home",
                home,
                "--json",
                "verify",
                &folder.display().to_string(),
            ],
        ));
        let v = &json_lines(&o)[0];
        assert_eq!(v["type"], "package_verified");
        assert_eq!(v["transfer_id"], t.as_str());
        assert_eq!(v["files"], 2);
        assert_eq!(v["legal"]["legal_basis"], "MLAT art. 18");
        assert_eq!(v["legal"]["onward_transfer"], "forbidden");
        assert_eq!(v["delivered_by"], format!("agency-{}", home.to_lowercase()));

        // A second `fetch --all` fetches nothing, exit 0.
        let ev = fetch_all(d, home, &r.1, out);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0]["type"], "nothing_to_fetch");
        let o = ok(run(
            d,
            &["--home", home, "fetch", "--relay", &r.1, "--all", "-o", out],
        ));
        assert!(stderr(&o).contains("nothing to fetch"), "{}", stderr(&o));
        assert_eq!(transfer_dirs(&d.join(out)).len(), 1);
    }

    // Tampering at B: each makes verify exit 3 naming the file; undone, it passes again.
    let out = d.join("outB");
    let folder = transfer_dir(&out);
    let f = folder.join("case-42/sub/photo.bin");
    let good = std::fs::read(&f).expect("r");
    let mut bad = good.clone();
    bad[100_000] ^= 1;
    std::fs::write(&f, &bad).expect("w");
    verify_fails_naming(d, "B", &out, &f);
    let o = run(d, &["--home", "B", "--json", "verify", "outB"]);
    assert_eq!(code(&o), 3);
    let ev = json_lines(&o);
    assert_eq!(ev[0]["type"], "package_failed", "{ev:?}");
    assert!(
        ev[0]["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("photo.bin") && p.contains("SHA-256")),
        "{ev:?}"
    );
    assert_eq!(ev.last().expect("last")["exit_code"], 3);
    std::fs::remove_file(&f).expect("rm");
    verify_fails_naming(d, "B", &out, &f);
    std::fs::write(&f, &good).expect("w");
    ok(run(d, &["--home", "B", "verify", "outB"]));
    let added = folder.join("case-42/extra.txt");
    std::fs::write(&added, b"planted").expect("w");
    verify_fails_naming(d, "B", &out, &added);
    std::fs::remove_file(&added).expect("rm");
    let seal = folder.join(".rogatory/custody.receipt");
    let text = std::fs::read(&seal).expect("r");
    let mut bad = text.clone();
    let n = bad.len() / 3;
    bad[n] = if bad[n] == b'A' { b'B' } else { b'A' };
    std::fs::write(&seal, &bad).expect("w");
    verify_fails_naming(d, "B", &out, &seal);
    std::fs::write(&seal, &text).expect("w");
    ok(run(d, &["--home", "B", "verify", "outB"]));

    // Fetching the transfer again by id: a new folder; with --force, the same one.
    ok(run(
        d,
        &["--home", "B", "fetch", "--relay", &r.1, &t, "-o", "outB"],
    ));
    let dirs = transfer_dirs(&out);
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    assert!(
        dirs[1]
            .to_string_lossy()
            .ends_with(&format!("{}-2", &t[..8]))
    );
    std::fs::write(folder.join("case-42/exhibit1.txt"), b"changed").expect("w");
    ok(run(
        d,
        &[
            "--home", "B", "fetch", "--relay", &r.1, &t, "-o", "outB", "--force",
        ],
    ));
    assert_eq!(transfer_dirs(&out).len(), 2);
    assert_eq!(
        std::fs::read(folder.join("case-42/exhibit1.txt")).expect("f"),
        b"exhibit one\n"
    );
    ok(run(d, &["--home", "B", "verify", "outB"]));

    // A's status saves the custody receipt and both delivery receipts; verify accepts each.
    let o = ok(run(
        d,
        &["--home", "A", "--json", "status", "--relay", &r.1, &t],
    ));
    let ev = json_lines(&o);
    let saved: Vec<(String, PathBuf)> = ev
        .iter()
        .filter(|v| v["type"] == "receipt")
        .map(|v| {
            (
                v["kind"].as_str().expect("kind").to_owned(),
                PathBuf::from(v["path"].as_str().expect("path")),
            )
        })
        .collect();
    let kinds: Vec<&str> = saved.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["custody", "delivery", "delivery"], "{ev:?}");
    let names: Vec<String> = saved
        .iter()
        .map(|(_, p)| p.file_name().expect("n").to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&format!("{t}.custody-receipt")), "{names:?}");
    assert!(
        names.contains(&format!("{t}.delivery-agency-b.receipt")),
        "{names:?}"
    );
    assert!(
        names.contains(&format!("{t}.delivery-agency-c.receipt")),
        "{names:?}"
    );
    for (_, p) in &saved {
        let o = ok(run(d, &["--home", "A", "verify", &p.display().to_string()]));
        assert!(stdout(&o).contains(": ok: "), "{}", stdout(&o));
    }
    let c_receipt = saved
        .iter()
        .find(|(_, p)| p.to_string_lossy().ends_with("delivery-agency-c.receipt"))
        .expect("c");
    let o = ok(run(
        d,
        &["--home", "A", "verify", &c_receipt.1.display().to_string()],
    ));
    assert!(
        stdout(&o).contains("delivery receipt: agency-c received"),
        "{}",
        stdout(&o)
    );
    drop(r);

    // Least knowledge (custody.md §5.4, test-plan.md 36): no file name, no notes and no
    // plaintext anywhere under the relay's home, SQLite (with its WAL) included, nor in its log
    // at `debug`; the relay's data private to its user.
    let log = std::fs::read_to_string(d.join("relay.log")).expect("relay log");
    assert!(
        log.contains("transfer accepted") && log.contains("connection ended"),
        "the log is written at debug: {log}"
    );
    let mut stack = vec![d.join("B-relay")];
    let mut files = vec![d.join("relay.log")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("dir") {
            let p = e.expect("entry").path();
            if std::fs::symlink_metadata(&p).expect("md").is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    for p in files {
        let md = std::fs::symlink_metadata(&p).expect("md");
        let bytes = std::fs::read(&p).expect("read");
        for secret in [
            "exhibit1.txt",
            "photo.bin",
            "seized 2026-03-01",
            "Public Prosecutor, Lyon",
            "exhibit one",
        ] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds {secret:?}",
                p.display()
            );
        }
        if p.starts_with(d.join("B-relay/relay")) {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                md.permissions().mode() & 0o077,
                0,
                "{} is readable by others",
                p.display()
            );
        }
    }
}

#[test]
fn two_senders_same_named_files_never_mix() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let r = three_agencies(d, &[("D", "agency-d")]);
    std::fs::create_dir_all(d.join("a/case-42")).expect("mkdir");
    std::fs::create_dir_all(d.join("dd/case-42")).expect("mkdir");
    std::fs::write(d.join("a/case-42/exhibit1.txt"), b"from A").expect("w");
    std::fs::write(d.join("dd/case-42/exhibit1.txt"), b"from D").expect("w");
    let ta = send(d, "A", &r.1, &["agency-b"], &[], &["a/case-42"]);
    let td = send(d, "D", &r.1, &["agency-b"], &[], &["dd/case-42"]);
    let ev = fetch_all(d, "B", &r.1, "out");
    assert_eq!(ev.iter().filter(|v| v["type"] == "fetched").count(), 2);
    let dirs = transfer_dirs(&d.join("out"));
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    let a = d.join(format!("out/agency-a_XX-2026-0042_{}", &ta[..8]));
    let dd = d.join(format!("out/agency-d_XX-2026-0042_{}", &td[..8]));
    assert_eq!(
        std::fs::read(a.join("case-42/exhibit1.txt")).expect("a"),
        b"from A"
    );
    assert_eq!(
        std::fs::read(dd.join("case-42/exhibit1.txt")).expect("d"),
        b"from D"
    );
    // --force re-fetches A's transfer into A's folder only.
    ok(run(
        d,
        &[
            "--home", "B", "fetch", "--relay", &r.1, &ta, "-o", "out", "--force",
        ],
    ));
    assert_eq!(
        std::fs::read(dd.join("case-42/exhibit1.txt")).expect("d"),
        b"from D"
    );
    assert_eq!(transfer_dirs(&d.join("out")).len(), 2);
    let o = ok(run(d, &["--home", "B", "--json", "verify", "out"]));
    let ev = json_lines(&o);
    assert_eq!(ev.len(), 2);
    assert!(ev.iter().all(|v| v["type"] == "package_verified"), "{ev:?}");
}

#[test]
fn purge_at_both_ends_after_retention() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let r = three_agencies(d, &[]);
    std::fs::create_dir_all(d.join("case-42")).expect("mkdir");
    std::fs::write(d.join("case-42/exhibit1.txt"), b"exhibit one\n").expect("w");
    let t = send(d, "A", &r.1, &["agency-b"], &[], &["case-42"]);
    fetch_all(d, "B", &r.1, "out");
    let folder = transfer_dir(&d.join("out"));

    // The relay purges once every recipient delivered (policy); the sender's status then saves
    // the purge receipt with the others, and verify accepts it.
    drop(r);
    std::fs::write(d.join("policy.toml"), "retain_after_delivery_days = 0\n").expect("policy");
    ok(run(
        d,
        &[
            "--home",
            "B-relay",
            "relay",
            "purge",
            "--policy",
            "policy.toml",
        ],
    ));
    let r = start_relay(d, "B-relay");
    let o = ok(run(
        d,
        &["--home", "A", "--json", "status", "--relay", &r.1, &t],
    ));
    let ev = json_lines(&o);
    assert_eq!(ev[0]["state"], "purged", "{ev:?}");
    let saved: Vec<(&str, &str)> = ev
        .iter()
        .filter(|v| v["type"] == "receipt")
        .map(|v| {
            (
                v["kind"].as_str().expect("k"),
                v["path"].as_str().expect("p"),
            )
        })
        .collect();
    assert_eq!(
        saved.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        ["custody", "delivery", "purge"]
    );
    let purge_receipt = d.join("A/receipts").join(format!("{t}.purge-receipt"));
    assert_eq!(d.join(saved[2].1), purge_receipt);
    let o = ok(run(
        d,
        &[
            "--home",
            "A",
            "verify",
            &purge_receipt.display().to_string(),
        ],
    ));
    assert!(
        stdout(&o).contains("purge receipt: agency-b deleted"),
        "{}",
        stdout(&o)
    );

    // Within retention: nothing to purge (retain_until is the last day kept).
    let o = ok(run(
        d,
        &[
            "--home",
            "B",
            "--json",
            "purge",
            "out",
            "--as-of",
            "2030-12-31",
        ],
    ));
    assert_eq!(
        json_lines(&o),
        [serde_json::json!({"type": "purge_done", "purged": 0, "dry_run": false})]
    );

    // Recipient: a dry run changes nothing; the purge removes the files and the manifest,
    // keeps seal, receipts and record, and logs it.
    let o = ok(run(
        d,
        &[
            "--home",
            "B",
            "--json",
            "purge",
            "out",
            "--dry-run",
            "--as-of",
            "2031-01-01",
        ],
    ));
    assert_eq!(json_lines(&o)[0]["dry_run"], true);
    assert!(folder.join("case-42/exhibit1.txt").exists());
    assert!(!d.join("B/purged.log").exists());
    let o = ok(run(
        d,
        &[
            "--home",
            "B",
            "--json",
            "purge",
            "out",
            "--as-of",
            "2031-01-01",
        ],
    ));
    let ev = json_lines(&o);
    assert_eq!(ev[0]["type"], "purged");
    assert_eq!(ev[0]["transfer_id"], t.as_str());
    assert_eq!(ev[0]["files_removed"], 1);
    assert_eq!(listing(&folder), [".rogatory"]);
    assert_eq!(
        listing(&folder.join(".rogatory")),
        [
            "custody.receipt",
            "delivery.receipt",
            "package.json",
            "seal.note"
        ]
    );
    let log = std::fs::read_to_string(d.join("B/purged.log")).expect("log");
    assert_eq!(log.lines().count(), 1);
    let line: serde_json::Value = serde_json::from_str(log.trim()).expect("json");
    assert_eq!(line["transfer"], t.as_str());
    assert_eq!(line["side"], "fetched");
    // What is left still proves the delivery; a second purge does nothing.
    let o = ok(run(d, &["--home", "B", "verify", "out"]));
    assert!(stdout(&o).contains("purged"), "{}", stdout(&o));
    let o = ok(run(
        d,
        &[
            "--home",
            "B",
            "--json",
            "purge",
            "out",
            "--as-of",
            "2031-01-01",
        ],
    ));
    assert_eq!(json_lines(&o)[0]["purged"], 0);

    // Sender: sent/<transfer>/ loses its manifest (file names), keeps the seal and a record;
    // receipts stay and still verify.
    let sent = d.join("A/sent").join(&t);
    let o = ok(run(
        d,
        &["--home", "A", "purge", "--dry-run", "--as-of", "2031-01-01"],
    ));
    assert!(
        stdout(&o).contains(&format!("would purge {t}")),
        "{}",
        stdout(&o)
    );
    assert!(sent.join("manifest.json").exists());
    // The marker that makes a re-run of the same send find its receipt names the transfer
    // until the purge, which removes it with the rest of the send's record.
    let markers = || -> Vec<String> {
        std::fs::read_dir(d.join("A/outbox"))
            .expect("outbox")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "sent"))
            .map(|e| std::fs::read_to_string(e.path()).expect("marker"))
            .collect()
    };
    let before = markers();
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(before[0].starts_with(&format!("{t} ")), "{before:?}");
    let o = ok(run(
        d,
        &["--home", "A", "--json", "purge", "--as-of", "2031-01-01"],
    ));
    assert!(markers().is_empty(), "{:?}", markers());
    let ev = json_lines(&o);
    assert_eq!(ev[0]["side"], "sent");
    assert_eq!(listing(&sent), ["purged.json", "seal.note"]);
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sent.join("purged.json")).expect("r")).expect("j");
    assert_eq!(rec["retain_until"], "2030-12-31");
    assert_eq!(rec["manifest_sha256"].as_str().map(str::len), Some(64));
    let log = std::fs::read_to_string(d.join("A/purged.log")).expect("log");
    assert!(log.contains("\"side\":\"sent\""), "{log}");
    let receipt = d.join("A/receipts").join(format!("{t}.custody-receipt"));
    ok(run(
        d,
        &["--home", "A", "verify", &receipt.display().to_string()],
    ));
    drop(r);
}
