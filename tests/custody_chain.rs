//! The chain of custody end to end with three agencies (issue 11, test-plan.md 79): A sends one
//! folder to B and C through B's relay, with notes in `--meta`. B and C fetch it byte-exact, and
//! the relay learns only what its policy needs: no file name and no notes text anywhere under
//! its home (SQLite included), its files private to its user.

mod common;

use std::path::Path;

use common::*;

/// Names and notes that must never reach the relay in the clear.
const SECRET_NAMES: &[&str] = &["suspect-jane-roe", "informant_ledger", "Zeugenaussage"];
const NOTES: &str = "Seized at Kaiserstrasse 17 under warrant 4711";

/// Three agencies: A (sender), B (recipient, runs the relay from an exported relay-only home
/// `B-relay`) and C (second recipient); each trusts the others by fingerprint.
fn three_agencies(d: &Path) {
    agency(d, "A", "agency-a", false);
    agency(d, "B", "agency-b", false);
    agency(d, "C", "agency-c", false);
    for (home, others) in [("A", ["B", "C"]), ("B", ["A", "C"]), ("C", ["A", "B"])] {
        for o in others {
            trust(d, home, o);
        }
    }
    ok(run(
        d,
        &["--home", "B", "agency", "export-relay", "B-relay"],
    ));
}

/// Every regular file under `root`, recursively.
fn files_under(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("dir") {
            let p = e.expect("entry").path();
            let md = std::fs::symlink_metadata(&p).expect("metadata");
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = files_under(root)
        .into_iter()
        .filter(|p| {
            !p.strip_prefix(root)
                .expect("prefix")
                .components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with(".rogatory"))
        })
        .map(|p| {
            (
                p.strip_prefix(root).expect("prefix").display().to_string(),
                std::fs::read(&p).expect("read"),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_relay_learns_no_name_and_no_note_and_both_recipients_get_every_byte() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    three_agencies(d);
    // The evidence: names that would tell the relay about the case.
    let case = d.join("case-42");
    std::fs::create_dir_all(case.join(SECRET_NAMES[0])).expect("mkdir");
    std::fs::write(
        case.join(SECRET_NAMES[0]).join("statement.txt"),
        b"I saw it.\n",
    )
    .expect("w");
    std::fs::write(
        case.join(format!("{}.csv", SECRET_NAMES[1])),
        (0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .expect("w");
    std::fs::write(
        case.join(format!("{}.pdf", SECRET_NAMES[2])),
        b"%PDF-1.7 ...",
    )
    .expect("w");
    std::fs::write(
        d.join("meta.toml"),
        format!(
            "requesting_authority = \"Public Prosecutor, Yyville\"\nclassification = \"RESTRICTED\"\nonward_transfer = \"with-consent\"\nnotes = \"{NOTES}\"\n"
        ),
    )
    .expect("meta");

    let r = start_relay(d, "B-relay");
    let args = [
        "--home",
        "A",
        "--json",
        "send",
        "--relay",
        &r.1,
        "--to",
        "agency-b",
        "--to",
        "agency-c",
        "--case",
        "XX-2026-0042",
        "--legal-basis",
        "MLAT art. 18",
        "--purpose",
        "criminal investigation",
        "--retain-until",
        "2030-12-31",
        "--meta",
        "meta.toml",
        "case-42",
    ];
    // --dry-run first: what would go, and who would see what; nothing is sent or kept.
    let human: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--json")
        .chain(["--dry-run"])
        .collect();
    let o = ok(run(d, &human));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (relay_part, recipients_part) = text
        .split_once("only the recipients see")
        .expect("both parts");
    assert!(
        relay_part.contains("XX-2026-0042") && relay_part.contains("MLAT art. 18"),
        "{text}"
    );
    assert!(
        !relay_part.contains(NOTES) && !relay_part.contains("RESTRICTED"),
        "{text}"
    );
    assert!(
        recipients_part.contains(NOTES) && recipients_part.contains("RESTRICTED"),
        "{text}"
    );
    assert!(text.contains(&format!("{}.pdf", SECRET_NAMES[2])), "{text}");
    let dry: Vec<&str> = args.iter().copied().chain(["--dry-run"]).collect();
    let o = ok(run(d, &dry));
    let plan: serde_json::Value = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "plan")
        .expect("plan event");
    assert_eq!(plan["files"].as_array().expect("files").len(), 3);
    assert_eq!(plan["relay_sees"]["notes"], serde_json::Value::Null);
    assert_eq!(plan["legal"]["notes"], NOTES);
    assert!(!d.join("A/outbox").exists() || listing(&d.join("A/outbox")).is_empty());
    assert!(files_under(&d.join("B-relay/relay/spool")).is_empty());
    let sent = ok(run(d, &args));
    let transfer = String::from_utf8_lossy(&sent.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["transfer_id"].as_str().map(str::to_owned))
        .expect("transfer id");

    // B and C see the legal metadata in their inbox, notes included; then fetch byte-exact.
    for home in ["B", "C"] {
        let inbox = ok(run(d, &["--home", home, "inbox", "--relay", &r.1]));
        let text = String::from_utf8_lossy(&inbox.stdout).into_owned();
        assert!(text.contains(&transfer), "{home}: {text}");
        for want in [
            "MLAT art. 18",
            "Public Prosecutor, Yyville",
            "RESTRICTED",
            NOTES,
        ] {
            assert!(text.contains(want), "{home}'s inbox shows {want:?}: {text}");
        }
        ok(run(
            d,
            &[
                "--home",
                home,
                "fetch",
                "--relay",
                &r.1,
                &transfer,
                "-o",
                &format!("{home}-out"),
            ],
        ));
        let fetched = files_under(&d.join(format!("{home}-out")));
        let root = fetched
            .iter()
            .find(|p| p.ends_with(format!("{}.pdf", SECRET_NAMES[2])))
            .and_then(|p| p.parent())
            .expect("fetched folder")
            .to_owned();
        assert_eq!(tree(&root), tree(&case), "{home} fetched every byte");
    }

    // Nothing under the relay's home names a file or quotes the notes: not the index (WAL and
    // all), not the log, not the packs.
    drop(r);
    let relay_home = d.join("B-relay");
    for p in files_under(&relay_home) {
        let bytes = std::fs::read(&p).expect("read");
        for secret in SECRET_NAMES
            .iter()
            .copied()
            .chain([NOTES, "statement.txt", "RESTRICTED"])
        {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "{} holds {secret:?}",
                p.display()
            );
        }
    }
    // The relay's data is private to its user.
    let data = relay_home.join("relay");
    assert_eq!(
        std::fs::metadata(&data).expect("data").permissions().mode() & 0o777,
        0o700
    );
    for p in files_under(&data) {
        let mode = std::fs::metadata(&p).expect("md").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is readable by others", p.display());
    }
}
