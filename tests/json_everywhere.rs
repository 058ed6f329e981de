//! Every command a script runs honours `--json`: each stdout line is one JSON object with a
//! `type` (issue 12, `docs/cli.md` "JSON events").

mod common;

use std::path::Path;

use common::*;

/// Runs `args` with `--json` after the home; checks every stdout line and returns the types.
fn types(d: &Path, home: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--home", home, "--json"];
    all.extend_from_slice(args);
    let o = run(d, &all);
    assert_eq!(code(&o), 0, "{all:?}: {}", stderr(&o));
    json_lines(&o)
        .iter()
        .map(|v| {
            v["type"]
                .as_str()
                .unwrap_or_else(|| panic!("{all:?}: a line without a type: {v}"))
                .to_owned()
        })
        .collect()
}

#[test]
fn every_command_prints_json_lines_with_a_type() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    assert_eq!(
        types(
            d,
            "A",
            &[
                "agency",
                "init",
                "--id",
                "agency-a",
                "--name",
                "A",
                "--jurisdiction",
                "DE"
            ]
        ),
        ["agency_created"]
    );
    agency(d, "B", "agency-b", false);
    assert_eq!(types(d, "A", &["agency", "fingerprint"]), ["fingerprint"]);
    assert_eq!(types(d, "A", &["agency", "card"]), ["card"]);
    let fp = fingerprint(d, "B");
    assert_eq!(
        types(
            d,
            "A",
            &["trust", "add", "B/card.note", "--fingerprint", &fp]
        ),
        ["trusted"]
    );
    trust(d, "B", "A");
    assert_eq!(types(d, "A", &["trust", "list"]), ["trusted"]);

    std::fs::create_dir_all(d.join("case")).expect("mkdir");
    std::fs::write(d.join("case/x.txt"), b"x\n").expect("w");
    let r = start_relay(d, "B");
    let legal = [
        "--case",
        "XX-1",
        "--legal-basis",
        "MLAT",
        "--purpose",
        "inquiry",
        "--retain-until",
        "2031-01-01",
    ];
    let mut send = vec!["send", "--relay", &r.1, "--to", "agency-b"];
    send.extend_from_slice(&legal);
    send.push("case");
    let mut dry = send.clone();
    dry.push("--dry-run");
    assert!(types(d, "A", &dry).contains(&"plan".to_owned()));
    let sent = run(d, &[&["--home", "A", "--json"][..], &send].concat());
    let t = json_lines(&sent)
        .iter()
        .find_map(|v| v["transfer_id"].as_str().map(str::to_owned))
        .expect("transfer");
    assert!(types(d, "B", &["inbox", "--relay", &r.1]).contains(&"inbox".to_owned()));
    assert!(
        types(d, "B", &["fetch", "--relay", &r.1, "--all", "-o", "out"])
            .contains(&"summary".to_owned())
    );
    assert!(types(d, "A", &["status", "--relay", &r.1, &t]).contains(&"receipt".to_owned()));
    assert!(types(d, "B", &["verify", "out"]).contains(&"verified".to_owned()));
    // Nothing past retention: no line, exit 0.
    assert!(
        types(d, "A", &["purge", "--dry-run"])
            .iter()
            .all(|t| t == "purged" || t == "summary")
    );
    drop(r);
    assert_eq!(types(d, "B", &["audit", "verify"]), ["audit_verified"]);
    assert!(
        types(d, "B", &["audit", "show"])
            .iter()
            .all(|t| t == "audit_entry")
    );
    assert!(!types(d, "B", &["audit", "show"]).is_empty());
    assert_eq!(types(d, "B", &["relay", "scrub"]), ["scrub_ok"]);
    assert!(types(d, "B", &["relay", "gc"]).is_empty());
    assert!(types(d, "B", &["relay", "purge", "--dry-run"]).is_empty());
    assert_eq!(
        types(d, "A", &["trust", "remove", "agency-b"]),
        ["untrusted"]
    );
}
