//! Snapshot tests: `--help` texts and the main error messages are pinned in
//! `tests/snapshots/`. After an intended change: `ROGATORY_UPDATE_SNAPSHOTS=1 cargo test --test
//! cli_snapshots`, then review the diff.

mod common;

use std::path::Path;

use common::*;

/// `code`, stdout and stderr of a run, with the temporary directory replaced by `<tmp>`.
fn show(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    let norm = |b: &[u8]| {
        fingerprints(&String::from_utf8_lossy(b).replace(&dir.display().to_string(), "<tmp>"))
    };
    format!(
        "$ rogatory {}\nexit {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        code(&o),
        norm(&o.stdout),
        norm(&o.stderr)
    )
}

/// Replaces fingerprints (eight groups of seven base32 characters) by `<fingerprint>`: keys are
/// fresh in every run.
fn fingerprints(s: &str) -> String {
    let is_fp = |w: &str| {
        let groups: Vec<&str> = w.split('-').collect();
        groups.len() == 8
            && groups.iter().all(|g| {
                g.len() == 7
                    && g.bytes()
                        .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c))
            })
    };
    s.split_inclusive([' ', '\n', ','])
        .map(|tok| {
            let core = tok.trim_end_matches([' ', '\n', ',']);
            if is_fp(core) {
                tok.replacen(core, "<fingerprint>", 1)
            } else {
                tok.to_owned()
            }
        })
        .collect()
}

#[test]
fn help_texts() {
    let dir = tempfile::tempdir().expect("tmp");
    for (name, args) in [
        ("help", vec!["--help"]),
        ("help-send", vec!["send", "--help"]),
        ("help-fetch", vec!["fetch", "--help"]),
        ("help-relay-serve", vec!["relay", "serve", "--help"]),
        ("help-agency-init", vec!["agency", "init", "--help"]),
        ("help-trust-add", vec!["trust", "add", "--help"]),
        ("help-audit", vec!["audit", "--help"]),
    ] {
        check_snapshot(name, &show(dir.path(), &args));
    }
}

#[test]
fn main_error_messages() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_agencies(d);
    std::fs::write(d.join("x.txt"), b"x").expect("w");
    let mut out = String::new();
    for args in [
        // No home / keys.
        vec![
            "--home",
            "nowhere",
            "send",
            "--relay",
            "127.0.0.1:9",
            "--to",
            "agency-b",
            "x.txt",
        ],
        // Untrusted recipient.
        vec![
            "--home",
            "A",
            "send",
            "--relay",
            "127.0.0.1:9",
            "--to",
            "agency-q",
            "x.txt",
        ],
        // Not an agency id.
        vec![
            "--home",
            "A",
            "send",
            "--relay",
            "127.0.0.1:9",
            "--to",
            "Agency B!",
            "x.txt",
        ],
        // Missing source.
        vec![
            "--home",
            "A",
            "send",
            "--relay",
            "127.0.0.1:9",
            "--to",
            "agency-b",
            "missing.txt",
        ],
        // Wrong fingerprint.
        vec![
            "--home",
            "A",
            "trust",
            "add",
            "B/card.note",
            "--fingerprint",
            "AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA",
        ],
        // A second agency in one home.
        vec![
            "--home",
            "A",
            "agency",
            "init",
            "--id",
            "agency-x",
            "--name",
            "X",
            "--jurisdiction",
            "XX",
        ],
        // Bad jurisdiction.
        vec![
            "--home",
            "N",
            "agency",
            "init",
            "--id",
            "agency-n",
            "--name",
            "N",
            "--jurisdiction",
            "france",
        ],
        // Fetch without transfers.
        vec![
            "--home",
            "B",
            "fetch",
            "--relay",
            "127.0.0.1:9",
            "-o",
            "out",
        ],
        // Bad transfer id.
        vec![
            "--home",
            "A",
            "status",
            "--relay",
            "127.0.0.1:9",
            "not-a-transfer",
        ],
        // Relay-only home cannot fetch.
        vec![
            "--home",
            "B",
            "fetch",
            "--relay",
            "127.0.0.1:9",
            "--all",
            "-o",
            "out",
        ],
        // An agency home runs no relay: it has no audit log to verify.
        vec!["--home", "A", "audit", "verify"],
        // A log file that is not there.
        vec!["--home", "A", "audit", "verify", "--log", "no-such.log"],
    ] {
        out.push_str(&show(d, &args));
        out.push('\n');
    }
    check_snapshot("errors", &out);
}
