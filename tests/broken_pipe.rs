//! A reader that goes away never breaks a command (issue 12): with stdout closed before the
//! first line, `send`, `inbox`, `fetch` and `audit show` still do their whole job and exit 0,
//! without Rust's panic text.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// Runs the binary with stdout a pipe whose reading end is already closed.
fn closed_stdout(d: &Path, args: &[&str]) -> (i32, String) {
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("wait");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_output_quietly_and_the_work_is_done() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_full_agencies(d);
    std::fs::create_dir_all(d.join("case")).expect("mkdir");
    for i in 0..50 {
        std::fs::write(d.join(format!("case/f{i}.txt")), format!("file {i}\n")).expect("w");
    }
    let r = start_relay(d, "B");
    let (code, err) = closed_stdout(
        d,
        &[
            "--home",
            "A",
            "--json",
            "send",
            "--relay",
            &r.1,
            "--to",
            "agency-b",
            "--case",
            "XX-1",
            "--legal-basis",
            "MLAT",
            "--purpose",
            "investigation",
            "--retain-until",
            "2031-01-01",
            "case",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, err) = closed_stdout(d, &["--home", "B", "inbox", "--relay", &r.1]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = closed_stdout(
        d,
        &[
            "--home", "B", "--json", "fetch", "--relay", &r.1, "--all", "-o", "out",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Every file arrived although nobody read a line.
    let mut n = 0;
    let mut stack = vec![d.join("out")];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).expect("dir") {
            let p = e.expect("e").path();
            if p.file_name().is_some_and(|n| n == ".rogatory") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                n += 1;
            }
        }
    }
    assert_eq!(n, 50);
    drop(r);
    let (code, err) = closed_stdout(
        d,
        &[
            "--home",
            "A",
            "audit",
            "--agency",
            "agency-b",
            "--log",
            "B/relay/audit.log",
            "show",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
