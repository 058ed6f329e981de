//! The bare-quinn baseline shared by two benches: `crates/transport/benches/throughput.rs`
//! (our framing against it) and the root `benches/transfer.rs` (the whole `send`/`fetch` against
//! it, through `#[path]`). One unidirectional stream over loopback with the same mutual TLS and
//! transport configuration and UDP socket buffers as the product (`config::{client,server}_config`,
//! `Limits::endpoint`; TLS 1.3 prefers
//! AES-128-GCM), 64 KiB writes, a reader that only counts bytes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rogatory_custody::AgencyId;
use rogatory_transport::certs::{Ca, Validity};
use rogatory_transport::config::{client_config, server_config};
use rogatory_transport::{Limits, PeerTrust, TlsIdentity};

pub(crate) fn id(s: &str) -> AgencyId {
    s.parse().expect("a valid agency id")
}

/// A throwaway CA, a relay (`relay-b`) and a client (`agency-a`) certificate, and the trust in both.
pub(crate) struct Setup {
    pub(crate) relay_id: TlsIdentity,
    pub(crate) client_id: TlsIdentity,
    pub(crate) trust: PeerTrust,
}

pub(crate) fn setup() -> Setup {
    let ca = Ca::generate("bench CA", Validity::days_from_now(2)).expect("generate the bench CA");
    let v = Validity::days_from_now(1);
    let r = ca
        .issue(&id("relay-b"), v, 1)
        .expect("issue the relay certificate");
    let c = ca
        .issue(&id("agency-a"), v, 2)
        .expect("issue the client certificate");
    let mut trust = PeerTrust::new();
    trust
        .add_ca_pem(ca.cert_pem().as_bytes())
        .expect("trust the bench CA");
    trust
        .add_agency(id("relay-b"), vec![])
        .add_agency(id("agency-a"), vec![]);
    Setup {
        relay_id: TlsIdentity::from_pem(r.cert_pem.as_bytes(), r.key_pem.as_bytes())
            .expect("relay TLS identity"),
        client_id: TlsIdentity::from_pem(c.cert_pem.as_bytes(), c.key_pem.as_bytes())
            .expect("client TLS identity"),
        trust,
    }
}

/// Sends `bytes` over one bare quinn stream; the time from opening the stream until the reader
/// has counted every byte.
pub(crate) async fn bare(s: &Setup, bytes: u64) -> Duration {
    let limits = Limits::default();
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
    let server = limits
        .endpoint(
            addr,
            Some(server_config(&s.relay_id, s.trust.clone(), &limits).expect("server TLS config")),
        )
        .expect("bind the quinn server on 127.0.0.1");
    let addr = server.local_addr().expect("server address");
    let recv = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .expect("incoming connection")
            .await
            .expect("server handshake");
        let mut r = conn.accept_uni().await.expect("accept the stream");
        let mut n = 0u64;
        while let Some(c) = r.read_chunk(usize::MAX, true).await.expect("read") {
            n += c.bytes.len() as u64;
        }
        conn.close(0u32.into(), b"");
        n
    });
    let client = limits
        .endpoint("127.0.0.1:0".parse().expect("loopback address"), None)
        .expect("bind the quinn client on 127.0.0.1");
    let cfg = client_config(&s.client_id, s.trust.clone(), None, &limits).expect("client config");
    let conn = client
        .connect_with(cfg, addr, "relay-b.rogatory.invalid")
        .expect("connect")
        .await
        .expect("client handshake");
    let buf = vec![0x5au8; 65_552];
    let start = Instant::now();
    let mut w = conn.open_uni().await.expect("open the stream");
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n]).await.expect("write");
        left -= n as u64;
    }
    w.finish().expect("finish the stream");
    assert_eq!(
        recv.await.expect("join the reader"),
        bytes,
        "the reader counted every byte"
    );
    let t = start.elapsed();
    client.close(0u32.into(), b"");
    t
}
