//! A peer that announces large frames and sends little of them (test-plan.md 65, 67): the
//! relay holds about what was sent, not what was announced, and stops each such stream with
//! TIMEOUT once the frame is overdue (`protocol.md` §4.3); the connection and its other
//! streams go on. Its own test binary: it reads this process's resident memory.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rogatory_transport::frame::FrameType;
use rogatory_transport::{ErrorCode, Limits, varint};
use support::memory::Memory;
use support::*;

/// This process's resident set, KiB (Linux).
fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_but_unsent_frames_cost_little_and_time_out() {
    let pki = Pki::new();
    let mut limits = Limits::default();
    limits.frames.slow_frame_grace = Duration::from_millis(500);
    limits.frames.min_frame_rate = 64 << 20;
    let node = start_relay(&pki, Arc::new(Memory::new(vec![])), limits);
    let s = client(identity(&pki.a), pki.trust())
        .connect(node.local_addr().expect("addr"), None)
        .await
        .expect("connect");

    let before = rss_kib();
    // Twelve OFFERs of 32 MiB announced, 4 KiB of each sent.
    const STREAMS: usize = 12;
    let mut sends = Vec::new();
    for _ in 0..STREAMS {
        let (mut send, recv) = s.conn.open_bi().await.expect("bi");
        let mut h = vec![FrameType::Offer as u8];
        varint::put(&mut h, 32 << 20);
        h.extend_from_slice(&[0x5a; 4096]);
        send.write_all(&h).await.expect("part of a frame");
        sends.push((send, recv));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let (Some(b), Some(a)) = (before, rss_kib()) {
        // Buffers of the announced size would be 384 MiB.
        let grew = a.saturating_sub(b);
        assert!(grew < 48 << 10, "resident memory grew by {grew} KiB");
    }
    // Each is overdue after 0.5 s + 32 MiB at 64 MiB/s: stopped with TIMEOUT.
    for (send, _recv) in &mut sends {
        let stopped = tokio::time::timeout(Duration::from_secs(10), send.stopped())
            .await
            .expect("stopped in time");
        assert_eq!(
            stopped.expect("stop code"),
            Some(ErrorCode::TIMEOUT.to_varint())
        );
    }
    // The connection and a new request are unaffected.
    assert!(s.conn.close_reason().is_none());
    status_still_works(&s).await;
}
