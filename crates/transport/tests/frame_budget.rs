//! test-plan.md 63: a relay's large payloads share `large_frame_budget`, counted as their
//! buffers grow with what the peer sent (`protocol.md` §8). With a budget of one SEAL, a SEAL
//! mostly sent and then stalled holds all of it; a second one, sent in full, is not read until
//! the first is stopped for being overdue and gives its share back; then it is read and, being
//! garbage, closes the connection.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rogatory_transport::frame::FrameType;
use rogatory_transport::{ErrorCode, Limits, varint};
use support::memory::Memory;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_wait_for_the_relays_budget() {
    let pki = Pki::new();
    let mut limits = Limits::default();
    // SEAL limit 8 MiB, the largest frame; the budget, one of them.
    limits.frames.max_offer = 4 << 20;
    limits.frames.slow_frame_grace = Duration::from_millis(2500);
    limits.frames.min_frame_rate = 1 << 30;
    limits.large_frame_budget = 8 << 20;
    let node = start_relay(&pki, Arc::new(Memory::new(vec![])), limits);
    let s = client(identity(&pki.a), pki.trust())
        .connect(node.local_addr().expect("addr"), None)
        .await
        .expect("connect");
    let seal = |sent: usize| {
        let mut h = vec![FrameType::Seal as u8];
        varint::put(&mut h, 8 << 20);
        h.extend(std::iter::repeat_n(0xa5, sent));
        h
    };
    let (mut first, _r1) = s.conn.open_bi().await.expect("bi");
    first
        .write_all(&seal(7 << 20))
        .await
        .expect("first, all but 1 MiB");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (mut second, _r2) = s.conn.open_bi().await.expect("bi");
    second
        .write_all(&seal(8 << 20))
        .await
        .expect("second, in full");
    let t0 = std::time::Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(20), first.stopped())
        .await
        .expect("first stopped in time");
    assert_eq!(stopped.expect("code"), Some(ErrorCode::TIMEOUT.to_varint()));
    assert!(
        s.conn.close_reason().is_none(),
        "the second frame was read before the first gave its share back"
    );
    let reason = tokio::time::timeout(Duration::from_secs(20), s.conn.closed())
        .await
        .expect("closed after the second frame was read");
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == ErrorCode::PROTOCOL_VIOLATION.to_varint()),
        "{reason:?} after {:?}",
        t0.elapsed()
    );
}
