//! Uploads through the real stack (quinn, mTLS, framing, state machines) on loopback, through
//! the impairment proxy; oversized and garbage frames (`protocol.md` §4.3, §6, §9).

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rogatory_custody::TransferId;
use rogatory_transport::frame::{self, Frame, FrameType, Offer};
use rogatory_transport::impair::{Impairment, Proxy};
use rogatory_transport::net::{IntakeHandler, NetError, Node, Session, upload};
use rogatory_transport::upload::{UploadConfig, UploadEvent};
use rogatory_transport::{ErrorCode, Limits, varint};
use support::memory::{Files, Memory};
use support::*;

fn offer(t: TransferId) -> Offer {
    Offer {
        transfer: t,
        offer: "{}".into(),
    }
}

async fn run(
    session: &Session,
    t: TransferId,
    files: &Files,
    cfg: UploadConfig,
) -> Result<rogatory_transport::net::UploadOutcome, NetError> {
    let mut src = files.clone();
    upload(
        session,
        &offer(t),
        files.layouts.clone(),
        cfg,
        &mut src,
        |_| {},
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_upload_of_several_files_is_byte_exact() {
    let pki = Pki::new();
    let t = TransferId::from_bytes([1; 16]);
    let files = Files::random(&[0, 1, 65_536, 65_537, 3 << 20], 1);
    let store = Arc::new(Memory::new(vec![(t, files.clone())]));
    let relay = start_relay(&pki, store.clone(), Limits::default());
    let c = client(identity(&pki.a), pki.trust());
    let s = c
        .connect(relay.local_addr().expect("addr"), Some(id("relay-b")))
        .await
        .expect("connect");
    let out = run(&s, t, &files, UploadConfig::default())
        .await
        .expect("upload");
    assert_eq!(out.receipt.text, format!("custody receipt for {t}\n"));
    assert_eq!(store.bytes(t), files.data);
    assert_eq!(out.stats.bytes_sent, files.total());
    assert_eq!(out.stats.bytes_skipped, 0);
    // A second offer of the completed transfer sends nothing and gets the receipt again, without
    // a second receipt being created.
    let again = run(&s, t, &files, UploadConfig::default())
        .await
        .expect("again");
    assert_eq!(again.stats.bytes_sent, 0);
    assert_eq!(again.stats.bytes_skipped, files.total());
    assert_eq!(store.receipts.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_survives_loss_reordering_duplication_and_a_blackout() {
    let pki = Pki::new();
    let t = TransferId::from_bytes([2; 16]);
    // 64 MiB in all: one big file and a few small ones.
    let files = Files::random(&[60 << 20, 3 << 20, 1 << 20, 1000, 0], 2);
    let store = Arc::new(Memory::new(vec![(t, files.clone())]));
    // BBR: on a randomly lossy link loss is not congestion (CUBIC would crawl at 5 % loss).
    let limits = Limits {
        congestion: rogatory_transport::Congestion::Bbr,
        ..Limits::default()
    };
    let relay = start_relay(&pki, store.clone(), limits.clone());
    let imp = Impairment {
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(2),
        loss: 0.05,
        reorder: 0.10,
        reorder_delay: Duration::from_millis(4),
        duplicate: 0.01,
        mtu: 1500,
    };
    let proxy = Arc::new(
        Proxy::start(relay.local_addr().expect("addr"), imp, 42)
            .await
            .expect("proxy"),
    );
    let c = Node::client(false, identity(&pki.a), pki.trust(), limits).expect("client");
    let s = c
        .connect(proxy.addr(), None)
        .await
        .expect("connect through the proxy");
    let started = std::time::Instant::now();
    let mut src = files.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let p = proxy.clone();
    // A 2 s blackout once a quarter of the data is durable.
    let blackout = tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            if d > (16u64 << 20) {
                p.set_blackout(true);
                tokio::time::sleep(Duration::from_secs(2)).await;
                p.set_blackout(false);
                return true;
            }
        }
        false
    });
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        upload(
            &s,
            &offer(t),
            files.layouts.clone(),
            UploadConfig::default(),
            &mut src,
            |e| {
                if let UploadEvent::Progress { durable, .. } = e {
                    let _ = tx.send(*durable);
                }
            },
        ),
    )
    .await
    .expect("bounded")
    .expect("upload completes");
    assert!(blackout.await.expect("join"), "the blackout happened");
    assert_eq!(store.bytes(t), files.data, "byte-exact");
    let cnt = proxy.counters();
    assert!(
        cnt.dropped.load(Ordering::Relaxed) > 100,
        "loss was applied"
    );
    assert!(
        cnt.reordered.load(Ordering::Relaxed) > 100,
        "reordering was applied"
    );
    assert!(
        cnt.duplicated.load(Ordering::Relaxed) > 10,
        "duplication was applied"
    );
    assert_eq!(store.receipts.load(Ordering::Relaxed), 1);
    eprintln!(
        "impaired upload: {:?} in {:?}, proxy dropped {} of {}",
        out.stats,
        started.elapsed(),
        cnt.dropped.load(Ordering::Relaxed),
        cnt.seen.load(Ordering::Relaxed)
    );
}

/// test-plan.md 21: path-MTU trouble. Through a path that drops every datagram over 1,200 bytes
/// (the QUIC minimum) from the start, the sender never raises its packets above it; through one
/// whose MTU falls from 1,500 to 1,200 bytes once path-MTU discovery has raised the sender's
/// packets above 1,200 bytes, the sender detects the black hole and falls back. Both uploads
/// complete byte-exact with one receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_survives_a_small_path_mtu_and_an_mtu_black_hole() {
    let pki = Pki::new();
    for (seed, black_hole) in [(5u8, false), (6, true)] {
        let t = TransferId::from_bytes([seed; 16]);
        let files = Files::random(&[24 << 20, 1000], u64::from(seed));
        let store = Arc::new(Memory::new(vec![(t, files.clone())]));
        let relay = start_relay(&pki, store.clone(), Limits::default());
        let imp = Impairment {
            mtu: if black_hole { 1500 } else { 1200 },
            ..Impairment::default()
        };
        let proxy = Arc::new(
            Proxy::start(relay.local_addr().expect("addr"), imp, 7)
                .await
                .expect("proxy"),
        );
        let c =
            Node::client(false, identity(&pki.a), pki.trust(), Limits::default()).expect("client");
        let s = c
            .connect(proxy.addr(), None)
            .await
            .expect("connect through the proxy");
        // The MTU falls as soon as the sender's packets are larger than 1,200 bytes.
        let (conn, p) = (s.conn.clone(), proxy.clone());
        let fall = tokio::spawn(async move {
            if !black_hole {
                return false;
            }
            while conn.stats().path.current_mtu <= 1200 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            p.set_mtu(1200);
            true
        });
        let mut src = files.clone();
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            upload(
                &s,
                &offer(t),
                files.layouts.clone(),
                UploadConfig::default(),
                &mut src,
                |_| {},
            ),
        )
        .await
        .expect("bounded")
        .expect("upload completes");
        fall.abort();
        let fell = fall.await.unwrap_or(false);
        assert_eq!(store.bytes(t), files.data, "byte-exact");
        assert_eq!(store.receipts.load(Ordering::Relaxed), 1);
        let path = s.conn.stats().path;
        let too_large = proxy.counters().too_large.load(Ordering::Relaxed);
        if black_hole {
            assert!(
                fell,
                "path-MTU discovery never raised the packets above 1,200 bytes"
            );
            assert!(too_large > 0, "nothing was dropped for its size");
            assert!(path.black_holes_detected >= 1, "{path:?}");
        }
        assert_eq!(path.current_mtu, 1200, "black hole {black_hole}: {path:?}");
        eprintln!(
            "mtu (black hole {black_hole}): {:?}, {too_large} datagrams too large, {} black holes",
            out.stats, path.black_holes_detected
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_upload_resumes_from_the_durable_prefix() {
    let pki = Pki::new();
    let t = TransferId::from_bytes([3; 16]);
    let files = Files::random(&[24 << 20, 2 << 20], 3);
    let store = Arc::new(Memory::new(vec![(t, files.clone())]));
    let relay = start_relay(&pki, store.clone(), Limits::default());
    let addr = relay.local_addr().expect("addr");
    let c = client(identity(&pki.a), pki.trust());
    let s = c.connect(addr, None).await.expect("connect");
    // Cut the connection once 8 MiB are durable.
    let conn = s.conn.clone();
    let mut src = files.clone();
    // A 4 MiB window: the sender cannot get far ahead of the durable prefix, so the cut always
    // lands mid-transfer.
    let small_window = UploadConfig {
        window: 4 << 20,
        ..UploadConfig::default()
    };
    let r = upload(
        &s,
        &offer(t),
        files.layouts.clone(),
        small_window,
        &mut src,
        |e| {
            if let UploadEvent::Progress { durable, .. } = e
                && *durable > 8 << 20
            {
                conn.close(0u32.into(), b"cut");
            }
        },
    )
    .await;
    assert!(r.is_err(), "the cut connection fails the first run");
    // Wait until the relay noticed and dropped what was not synced.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let durable = store.durable_bytes(t);
    assert!(durable > 8 << 20);
    let s = c.connect(addr, None).await.expect("reconnect");
    let out = run(&s, t, &files, UploadConfig::default())
        .await
        .expect("resumed");
    assert_eq!(
        out.stats.bytes_skipped, durable,
        "ACCEPT reported the durable prefix"
    );
    assert_eq!(
        out.stats.bytes_sent,
        files.total() - durable,
        "only the rest was sent"
    );
    assert_eq!(store.bytes(t), files.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_offer_is_a_refusal() {
    let pki = Pki::new();
    let store = Arc::new(Memory::new(vec![]));
    let relay = start_relay(&pki, store, Limits::default());
    let s = client(identity(&pki.a), pki.trust())
        .connect(relay.local_addr().expect("addr"), None)
        .await
        .expect("connect");
    let files = Files::random(&[10], 4);
    let e = run(
        &s,
        TransferId::from_bytes([4; 16]),
        &files,
        UploadConfig::default(),
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(&e, NetError::Protocol(p) if p.code == ErrorCode::POLICY),
        "{e:?}"
    );
    assert_eq!(e.class().exit_code(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused_before_allocation_and_only_their_stream_is_reset() {
    let pki = Pki::new();
    let store = Arc::new(Memory::new(vec![]));
    let relay = start_relay(&pki, store, Limits::default());
    let s = client(identity(&pki.a), pki.trust())
        .connect(relay.local_addr().expect("addr"), None)
        .await
        .expect("connect");

    // A 100 MiB OFFER: only its header is sent; the relay must stop the stream at once.
    let (mut send, _recv) = s.conn.open_bi().await.expect("bi");
    let mut h = vec![FrameType::Offer as u8];
    varint::put(&mut h, 100 << 20);
    send.write_all(&h).await.expect("header");
    let stopped = tokio::time::timeout(Duration::from_secs(5), send.stopped())
        .await
        .expect("stopped in time");
    assert_eq!(
        stopped.expect("stop code"),
        Some(ErrorCode::FRAME_TOO_LARGE.to_varint())
    );

    // A PIECE whose length prefix is 2^62 - 1, on a data stream.
    let mut uni = s.conn.open_uni().await.expect("uni");
    let mut h = Frame::Attach(frame::Attach {
        transfer: TransferId::from_bytes([8; 16]),
    })
    .to_vec();
    h.clear();
    h.push(FrameType::Piece as u8);
    varint::put(&mut h, varint::MAX);
    uni.write_all(&h).await.expect("header");
    let stopped = tokio::time::timeout(Duration::from_secs(5), uni.stopped())
        .await
        .expect("stopped in time");
    assert_eq!(
        stopped.expect("stop code"),
        Some(ErrorCode::FRAME_TOO_LARGE.to_varint())
    );

    // The connection and its other streams are unaffected.
    status_still_works(&s).await;
    assert!(s.conn.close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_the_connection_with_a_protocol_error() {
    let pki = Pki::new();
    let relay = start_relay(&pki, Arc::new(Memory::new(vec![])), Limits::default());
    let c = client(identity(&pki.a), pki.trust());
    for (garbage, code) in [
        // Unknown frame type.
        (vec![0xee, 0x01, 0x00], ErrorCode::UNKNOWN_FRAME),
        // A STATUS_REQUEST whose payload is not a transfer id.
        (
            vec![FrameType::StatusRequest as u8, 0x03, 0xff, 0xfe, 0xfd],
            ErrorCode::PROTOCOL_VIOLATION,
        ),
        // A non-minimal length varint.
        (
            vec![FrameType::StatusRequest as u8, 0x40, 0x01, 0x00],
            ErrorCode::PROTOCOL_VIOLATION,
        ),
    ] {
        let s = c
            .connect(relay.local_addr().expect("addr"), None)
            .await
            .expect("connect");
        let (mut send, _recv) = s.conn.open_bi().await.expect("bi");
        send.write_all(&garbage).await.expect("write");
        let reason = tokio::time::timeout(Duration::from_secs(5), s.conn.closed())
            .await
            .expect("closed in time");
        match reason {
            quinn::ConnectionError::ApplicationClosed(a) => {
                assert_eq!(ErrorCode::from_varint(a.error_code), code)
            }
            other => panic!("unexpected close {other:?}"),
        }
        let e = NetError::Connection(s.conn.close_reason().expect("closed"));
        assert_eq!(
            e.class().exit_code(),
            6,
            "a protocol error is not retryable"
        );
    }
}

/// A store that hangs after `after` pieces, as a relay's disk that stops answering: its data
/// streams stop being read while QUIC itself still answers.
struct Hung {
    inner: Memory,
    after: u64,
    pieces: std::sync::atomic::AtomicU64,
    gate: (std::sync::Mutex<bool>, std::sync::Condvar),
}

impl Hung {
    fn release(&self) {
        *self.gate.0.lock().expect("gate") = true;
        self.gate.1.notify_all();
    }
}

impl IntakeHandler for Hung {
    fn offer(
        &self,
        peer: &rogatory_transport::PeerIdentity,
        offer: &Offer,
    ) -> Result<rogatory_transport::net::Accepted, rogatory_transport::ProtocolError> {
        self.inner.offer(peer, offer)
    }

    fn store(
        &self,
        t: rogatory_transport::net::Lease,
        file: u32,
        piece: u64,
        bytes: &[u8],
    ) -> Result<(), rogatory_transport::ProtocolError> {
        if self.pieces.fetch_add(1, Ordering::Relaxed) >= self.after {
            let mut open = self.gate.0.lock().expect("gate");
            while !*open {
                open = self.gate.1.wait(open).expect("gate");
            }
        }
        self.inner.store(t, file, piece, bytes)
    }

    fn sync(
        &self,
        t: rogatory_transport::net::Lease,
    ) -> Result<Vec<u64>, rogatory_transport::ProtocolError> {
        self.inner.sync(t)
    }

    fn complete(
        &self,
        peer: &rogatory_transport::PeerIdentity,
        t: rogatory_transport::net::Lease,
        seal: &frame::Seal,
    ) -> Result<String, rogatory_transport::ProtocolError> {
        self.inner.complete(peer, t, seal)
    }
}

/// `protocol.md` §6.1 "Rewind": a relay whose store hangs while QUIC still answers holds the
/// sender's writes on flow control, with the window far from full. The upload's timers run
/// while a write waits: the streams are reset, sent again, and after `max_rewinds` the upload
/// fails with TIMEOUT (retryable) instead of waiting for ever.
#[test]
fn a_relay_whose_store_hangs_is_a_timeout_not_a_wait_for_ever() {
    let pki = Pki::new();
    let t = TransferId::from_bytes([12; 16]);
    let files = Files::random(&[8 << 20, 1000, 2000], 12);
    let hung = Arc::new(Hung {
        inner: Memory::new(vec![(t, files.clone())]),
        after: 20,
        pieces: std::sync::atomic::AtomicU64::new(0),
        gate: (std::sync::Mutex::new(false), std::sync::Condvar::new()),
    });
    // The relay on a runtime of its own with threads to spare for the tasks that hang, so
    // that its connection goes on answering; small windows, so that writes wait soon.
    let relay_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(8)
        .enable_all()
        .build()
        .expect("relay runtime");
    let limits = Limits {
        stream_receive_window: 1 << 20,
        connection_receive_window: 2 << 20,
        ..Limits::default()
    };
    let relay = {
        let _in = relay_rt.enter();
        start_relay(&pki, hung.clone(), limits)
    };
    let addr = relay.local_addr().expect("addr");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ended = rt.block_on(async {
        let c = client(identity(&pki.a), pki.trust());
        let s = c.connect(addr, Some(id("relay-b"))).await.expect("connect");
        let cfg = UploadConfig {
            ack_timeout: Duration::from_millis(400),
            max_rewinds: 2,
            ..UploadConfig::default()
        };
        tokio::time::timeout(Duration::from_secs(20), run(&s, t, &files, cfg)).await
    });
    hung.release();
    relay_rt.shutdown_timeout(Duration::from_secs(1));
    match ended.expect("the upload ended by itself instead of waiting for ever") {
        Err(NetError::Protocol(e)) => assert_eq!(e.code, ErrorCode::TIMEOUT, "{e}"),
        other => panic!("expected TIMEOUT, got {other:?}"),
    }
}
