//! Local storage failing under a command (test-plan.md 33, 34), end to end with the real
//! binary: a file-size limit (`ulimit -f`, with SIGXFSZ ignored so that the write fails with
//! EFBIG instead of killing the process) makes every write past it fail, as a full disk makes
//! them fail with ENOSPC, without root or a small file system. The command ends with one clear
//! line and its exit code, nothing appears under a final name, and the same command run again
//! without the limit resumes from what was durably written and ends byte-exact.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

/// `rogatory ARGS` in `dir`, every file it writes limited to `kib` KiB.
fn limited(dir: &Path, kib: u64, args: &[&str]) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(format!(
            r#"trap "" XFSZ; ulimit -f {kib} && exec "$0" "$@""#
        ))
        .arg(bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null());
    c
}

fn write_random(path: &Path, len: usize, seed: u8) {
    let mut state = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(path, data).expect("write");
}

/// Files under `out` named like a source file (partial files are dot-files).
fn published(out: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![out.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".bin"))
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

fn fetched_event(o: &Output) -> serde_json::Value {
    json_lines(o)
        .into_iter()
        .find(|v| v["type"] == "fetched")
        .expect("a fetched event")
}

#[test]
fn a_fetch_whose_writes_fail_stops_cleanly_and_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    agencies_and_relay_home(d);
    let relay = start_relay(d, "B-relay");
    // A file written through the page cache (below 8 MiB) and one written with direct I/O on
    // the writing thread (8 MiB or more), each in its own transfer and its own run.
    for (case, size, limit_kib) in [("small", 3_000_000, 2048), ("large", 24 << 20, 4096)] {
        let src = d.join(case);
        std::fs::create_dir(&src).expect("mkdir");
        write_random(&src.join("evidence.bin"), size, size as u8);
        let o = send_with_legal(d, "A", false, &relay.1, "agency-b", &[case]);
        assert_eq!(code(&o), 0, "send: {}", stderr(&o));

        let out = format!("out-{case}");
        let o = limited(
            d,
            limit_kib,
            &[
                "--home", "B", "fetch", "--relay", &relay.1, "--all", "-o", &out,
            ],
        )
        .output()
        .expect("fetch");
        let err = stderr(&o);
        assert_eq!(code(&o), 7, "{case}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("rogatory: error: writing ")
                && last.contains(&format!("{case}/evidence.bin"))
                && last.contains("File too large"),
            "{case}: {err}"
        );
        assert!(
            published(&d.join(&out)).is_empty(),
            "{case}: {:?}",
            published(&d.join(&out))
        );

        let o = run(
            d,
            &[
                "--home", "B", "--json", "fetch", "--relay", &relay.1, "--all", "-o", &out,
            ],
        );
        assert_eq!(code(&o), 0, "{case}: {}", stderr(&o));
        let ev = fetched_event(&o);
        assert!(
            ev["bytes_resumed"].as_u64().unwrap_or(0) >= 1 << 20,
            "{case}: the second run did not resume: {ev}"
        );
        let got = transfer_dir(&d.join(&out)).join(case).join("evidence.bin");
        assert_eq!(
            std::fs::read(&got).expect("fetched"),
            std::fs::read(src.join("evidence.bin")).expect("source"),
            "{case}"
        );
    }
    ok(run(d, &["--home", "B", "verify", "out-small", "out-large"]));
}

#[test]
fn a_relay_that_cannot_write_refuses_retryably_and_the_send_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    agencies_and_relay_home(d);
    let src = d.join("case");
    std::fs::create_dir(&src).expect("mkdir");
    write_random(&src.join("evidence.bin"), 12 << 20, 7);

    let mut c = limited(
        d,
        4096,
        &[
            "--home",
            "B-relay",
            "relay",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    c.env("ROGATORY_LOG", "warn").stderr(Stdio::null());
    let (mut child, line) = spawn_listening(c);
    let addr = listen_addr(&line);
    let o = send_with_legal(d, "A", false, &addr, "agency-b", &["case"]);
    let _ = child.kill();
    let _ = child.wait();
    let err = stderr(&o);
    assert_eq!(code(&o), 5, "{err}");
    assert!(err.contains("STORAGE_UNAVAILABLE"), "{err}");
    assert!(err.contains("run the same command again"), "{err}");

    let relay = start_relay(d, "B-relay");
    let o = send_with_legal(d, "A", true, &relay.1, "agency-b", &["case"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // How much the first run left durable depends on when the relay's group commit ran
    // before its writes failed (every 20 ms): not checked here; resuming is, in
    // `tests/relay_crash.rs`.
    assert!(
        json_lines(&o).iter().any(|v| v["type"] == "sent"),
        "no sent event"
    );
    let o = run(
        d,
        &[
            "--home", "B", "fetch", "--relay", &relay.1, "--all", "-o", "out",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        std::fs::read(transfer_dir(&d.join("out")).join("case/evidence.bin")).expect("fetched"),
        std::fs::read(src.join("evidence.bin")).expect("source")
    );
}
