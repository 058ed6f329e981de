//! Throughput of the real stack over loopback: 1 GiB with mutual TLS and our framing (OFFER,
//! PIECE and SEAL frames, DURABLE acknowledgements, the upload state machines; no envelope, no
//! disk), next to a bare quinn stream on the same TLS and transport configuration in the same
//! run. Reports MB/s of each and the ratio; the target is ≤ 10 % overhead (ratio ≥ 0.90).
//!
//! `cargo bench -p rogatory-transport --bench throughput`
//! (`ROGATORY_BENCH_MIB=256` for a shorter run, `ROGATORY_BENCH_ROUNDS=5` for more rounds).

mod bare_quinn;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bare_quinn::{Setup, bare, setup};
use rogatory_custody::{PieceLayout, TransferId, piece_layout};
use rogatory_transport::frame::{Offer, Seal};
use rogatory_transport::net::{
    Accepted, IntakeHandler, Lease, Node, PieceSource, ServeConfig, serve_connection, upload,
};
use rogatory_transport::tls::PeerIdentity;
use rogatory_transport::upload::UploadConfig;
use rogatory_transport::{Limits, ProtocolError};

/// The relay side of the framing bench: accepts, counts, acknowledges; no disk, no hashing.
struct Sink {
    layout: PieceLayout,
    received: AtomicU64,
    bytes: AtomicU64,
}

impl IntakeHandler for Sink {
    fn offer(&self, _: &PeerIdentity, o: &Offer) -> Result<Accepted, ProtocolError> {
        self.received.store(0, Ordering::SeqCst);
        self.bytes.store(0, Ordering::SeqCst);
        Ok(Accepted {
            layouts: vec![self.layout],
            durable: vec![0],
            lease: Lease {
                transfer: o.transfer,
                id: 0,
            },
        })
    }
    fn store(&self, _: Lease, _: u32, _: u64, b: &[u8]) -> Result<(), ProtocolError> {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn sync(&self, _: Lease) -> Result<Vec<u64>, ProtocolError> {
        Ok(vec![self.received.load(Ordering::SeqCst)])
    }
    fn complete(&self, _: &PeerIdentity, _: Lease, _: &Seal) -> Result<String, ProtocolError> {
        Ok("receipt\n".into())
    }
}

struct Source {
    layout: PieceLayout,
    buf: Vec<u8>,
}

impl PieceSource for Source {
    fn seal(&mut self) -> io::Result<(String, String, Vec<u8>)> {
        Ok((String::new(), String::new(), Vec::new()))
    }
    fn piece(&mut self, _: u32, piece: u64, out: &mut [u8]) -> io::Result<()> {
        let r = self
            .layout
            .range(piece)
            .ok_or_else(|| io::Error::other("range"))?;
        out.copy_from_slice(&self.buf[..(r.end - r.start) as usize]);
        Ok(())
    }
}

async fn framed(s: &Setup, bytes: u64) -> Duration {
    let limits = Limits::default();
    // One file whose ciphertext is `bytes` (head piece of 200 bytes).
    let size = (bytes - 200) / 65_552 * 65_536 + ((bytes - 200) % 65_552).saturating_sub(16);
    let layout = piece_layout(size, 200 + rogatory_envelope::payload_len(size)).expect("layout");
    let relay = Arc::new(
        Node::server(
            "127.0.0.1:0".parse().expect("addr"),
            s.relay_id.clone(),
            s.trust.clone(),
            limits.clone(),
        )
        .expect("relay"),
    );
    let addr = relay.local_addr().expect("addr");
    let sink = Arc::new(Sink {
        layout,
        received: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    let (r2, sink2) = (relay.clone(), sink.clone());
    let server = tokio::spawn(async move {
        r2.serve(move |sess| {
            let sink = sink2.clone();
            async move {
                serve_connection(sess, sink, ServeConfig::default(), |_, _, _, _| async {}).await
            }
        })
        .await
    });
    let client = Node::client(false, s.client_id.clone(), s.trust.clone(), limits).expect("client");
    let session = client.connect(addr, None).await.expect("connect");
    let mut src = Source {
        layout,
        buf: vec![0x5a; 65_552],
    };
    let offer = Offer {
        transfer: TransferId::from_bytes([1; 16]),
        offer: String::new(),
    };
    let start = Instant::now();
    let out = upload(
        &session,
        &offer,
        vec![layout],
        UploadConfig::default(),
        &mut src,
        |_| {},
    )
    .await
    .expect("upload");
    let t = start.elapsed();
    assert_eq!(sink.bytes.load(Ordering::SeqCst), layout.ciphertext_size);
    assert_eq!(out.stats.bytes_sent, layout.ciphertext_size);
    session.close(rogatory_transport::ErrorCode::NO_ERROR, "done");
    relay
        .shutdown(rogatory_transport::ErrorCode::NO_ERROR)
        .await;
    server.abort();
    t
}

fn main() {
    let mib: u64 = std::env::var("ROGATORY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let rounds: usize = std::env::var("ROGATORY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let bytes = mib << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let s = setup();
    rt.block_on(async {
        // Warm-up (page faults, CPU frequency).
        bare(&s, 64 << 20).await;
        framed(&s, 64 << 20).await;
        let (mut best_bare, mut best_ours) = (Duration::MAX, Duration::MAX);
        for round in 0..rounds {
            let b = bare(&s, bytes).await;
            let o = framed(&s, bytes).await;
            let mbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
            println!("round {round}: bare quinn {:7.1} MB/s   rogatory/1 {:7.1} MB/s", mbs(b), mbs(o));
            best_bare = best_bare.min(b);
            best_ours = best_ours.min(o);
        }
        let mbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
        let ratio = mbs(best_ours) / mbs(best_bare);
        println!(
            "best of {rounds}, {mib} MiB over loopback, mTLS (AES-128-GCM, X25519MLKEM768):\n  bare quinn stream  {:7.1} MB/s\n  rogatory/1 upload  {:7.1} MB/s\n  ratio              {ratio:.3}  (target >= 0.90: framing costs <= 10 %)",
            mbs(best_bare),
            mbs(best_ours)
        );
    });
}
