//! Relay memory under load (relay issue): 50 concurrent senders of 64 MiB each against one
//! relay process on 127.0.0.1; every transfer completes, and the relay's peak RSS (VmHWM) is
//! printed. Long: `cargo test --release --test relay_load -- --ignored --nocapture`.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
#[ignore = "long: 50 x 64 MiB; run with --release -- --ignored --nocapture"]
fn fifty_concurrent_senders_of_64_mib() {
    let senders: usize = std::env::var("ROGATORY_LOAD_SENDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mib: usize = std::env::var("ROGATORY_LOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_agencies(d);
    for i in 0..senders {
        let f = d.join(format!("case-{i}"));
        std::fs::create_dir_all(&f).expect("mkdir");
        let data: Vec<u8> = (0..mib << 20).map(|j| (j as u8) ^ (i as u8)).collect();
        std::fs::write(f.join("evidence.bin"), data).expect("write");
    }
    let relay = start_relay(d, "B");
    let addr = relay.1.clone();
    let start = Instant::now();
    let children: Vec<_> = (0..senders)
        .map(|i| {
            Command::new(bin())
                .args([
                    "--home", "A", "--quiet", "send", "--relay", &addr, "--to", "agency-b",
                    "--case", "C",
                ])
                .args([
                    "--legal-basis",
                    "L",
                    "--purpose",
                    "P",
                    "--retain-until",
                    "2030-01-01",
                    &format!("case-{i}"),
                ])
                .current_dir(d)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("send")
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().expect("wait");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let secs = start.elapsed().as_secs_f64();
    let rss = peak_rss_kib(relay.0.id());
    drop(relay);
    let receipts = std::fs::read_dir(d.join("A/receipts"))
        .expect("receipts")
        .count();
    assert_eq!(receipts, senders);
    eprintln!(
        "{senders} concurrent senders x {mib} MiB: all complete in {secs:.1} s (encryption included); relay peak RSS {:.1} MiB",
        rss as f64 / 1024.0
    );
}
