//! The TLS key exchange over loopback (`protocol.md` §2): our client and relay negotiate the
//! hybrid post-quantum group X25519MLKEM768, each session reports the group its own handshake
//! ran (a classical-only client is seen as X25519 on the same relay), and a relay that requires
//! post-quantum key exchange refuses a client that does not offer it. The hand-built client
//! also checks the refusal of a HELLO with no protocol version in common.

mod support;

use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionError, TransportErrorCode};
use rogatory_transport::frame::Hello;
use rogatory_transport::kx::{POST_QUANTUM_GROUP, group_name};
use rogatory_transport::net::{FrameReader, FrameWriter, NetError, Node, Session};
use rogatory_transport::{Frame, Limits, PeerTrust};
use rustls::NamedGroup;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::*;

/// TLS alert `handshake_failure` (RFC 8446 §6): no key-exchange group in common.
const HANDSHAKE_FAILURE: u8 = 40;

async fn attempt(
    relay: Arc<Node>,
    client: Node,
) -> (Result<Session, NetError>, Result<Session, NetError>) {
    let addr = relay.local_addr().expect("addr");
    let server = tokio::spawn(async move { relay.accept_next().await.expect("incoming") });
    let c = tokio::time::timeout(Duration::from_secs(10), client.connect(addr, None))
        .await
        .expect("client bounded");
    let s = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server bounded")
        .expect("join");
    (s, c)
}

#[tokio::test]
async fn our_client_and_relay_negotiate_x25519mlkem768() {
    let pki = Pki::new();
    let relay = relay(identity(&pki.relay), pki.trust(), Limits::default());
    let (s, c) = attempt(relay, client(identity(&pki.a), pki.trust())).await;
    let (s, c) = (s.expect("relay session"), c.expect("client session"));
    assert_eq!(s.key_exchange_group(), Some(NamedGroup::X25519MLKEM768));
    assert_eq!(c.key_exchange_group(), Some(NamedGroup::X25519MLKEM768));
    assert!(s.is_post_quantum() && c.is_post_quantum());
    assert_eq!(group_name(POST_QUANTUM_GROUP), "X25519MLKEM768");
}

#[tokio::test]
async fn a_relay_requiring_pq_accepts_our_client() {
    let pki = Pki::new();
    let mut trust = pki.trust();
    trust.require_post_quantum(true);
    let relay = relay(identity(&pki.relay), trust, Limits::default());
    let (s, c) = attempt(relay, client(identity(&pki.a), pki.trust())).await;
    assert!(s.expect("relay session").is_post_quantum());
    assert!(c.expect("client session").is_post_quantum());
}

/// A client (built by hand, with agency-a's valid certificate) whose TLS offers only the
/// classical X25519 group, as an older or misconfigured peer would. It connects and, if the
/// relay lets it, says HELLO.
async fn classical_client(pki: &Pki, addr: std::net::SocketAddr) -> Result<(), NetError> {
    match hand_built_client(pki, addr, vec![1]).await? {
        Ok(()) => Ok(()),
        Err(e) => panic!("expected WELCOME, got ERROR {e:?}"),
    }
}

/// [`classical_client`] saying HELLO with `versions`: `Ok(())` for WELCOME, the code and
/// message of an ERROR answer otherwise.
async fn hand_built_client(
    pki: &Pki,
    addr: std::net::SocketAddr,
    versions: Vec<u32>,
) -> Result<Result<(), (rogatory_transport::ErrorCode, String)>, NetError> {
    let mut provider = (*rogatory_transport::tls::provider()).clone();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let chain = vec![CertificateDer::from_pem_slice(pki.a.cert_pem.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(pki.a.key_pem.as_bytes()).expect("key");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    tls.alpn_protocols = vec![rogatory_transport::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("bind")).expect("endpoint");
    let conn = ep
        .connect_with(
            quinn::ClientConfig::new(Arc::new(quic)),
            addr,
            "relay-b.rogatory.invalid",
        )?
        .await?;
    let (s, r) = conn.open_bi().await?;
    let mut w = FrameWriter::new(s);
    let mut r = FrameReader::new(r, conn.clone(), Default::default());
    w.send(&Frame::Hello(Hello {
        versions,
        agency: id("agency-a"),
        software: "classical test client".into(),
    }))
    .await?;
    w.finish();
    match r.expect().await? {
        Frame::Welcome(_) => Ok(Ok(())),
        Frame::Error(e) => Ok(Err((e.code, e.message))),
        other => panic!("expected WELCOME or ERROR, got {}", other.ty().name()),
    }
}

/// test-plan.md 17 (`protocol.md` §6.0): a HELLO offering no protocol version the relay speaks
/// (0, or a future 99) is refused with `UNSUPPORTED_VERSION` and the relay ends the session; a
/// HELLO that also offers version 1 is welcomed. The relay sends an ERROR frame and closes the
/// connection with the same code and message: the client gets one or the other, whichever
/// arrives first.
#[tokio::test]
async fn a_hello_with_no_version_in_common_is_refused() {
    let pki = Pki::new();
    for (versions, welcomed) in [(vec![0], false), (vec![99], false), (vec![99, 1], true)] {
        let relay = relay(identity(&pki.relay), pki.trust(), Limits::default());
        let addr = relay.local_addr().expect("addr");
        let server = tokio::spawn(async move { relay.accept_next().await.expect("incoming") });
        let answer = hand_built_client(&pki, addr, versions.clone()).await;
        let s = server.await.expect("join");
        if welcomed {
            assert_eq!(answer.expect("an answer"), Ok(()), "{versions:?}");
            s.expect("the relay's session");
            continue;
        }
        let unsupported = rogatory_transport::ErrorCode::UNSUPPORTED_VERSION;
        let message = match answer {
            Ok(Err((code, message))) if code == unsupported => message,
            Err(NetError::Connection(ConnectionError::ApplicationClosed(c)))
                if c.error_code == unsupported.to_varint() =>
            {
                String::from_utf8_lossy(&c.reason).into_owned()
            }
            other => panic!("{versions:?}: expected UNSUPPORTED_VERSION, got {other:?}"),
        };
        assert!(message.contains("version"), "{message}");
        assert!(s.is_err(), "{versions:?}: the relay kept the session");
    }
}

#[tokio::test]
async fn each_session_reports_its_own_group_a_classical_client_is_seen_as_x25519() {
    let pki = Pki::new();
    let relay = relay(identity(&pki.relay), pki.trust(), Limits::default());
    let addr = relay.local_addr().expect("addr");
    let r = relay.clone();
    let server = tokio::spawn(async move { r.accept_next().await.expect("incoming") });
    classical_client(&pki, addr)
        .await
        .expect("classical client");
    let s = server.await.expect("join").expect("relay session");
    assert_eq!(s.key_exchange_group(), Some(NamedGroup::X25519));
    assert!(!s.is_post_quantum());
    // The same relay, the next connection: our client, post-quantum again.
    let (s, c) = attempt(relay, client(identity(&pki.a), pki.trust())).await;
    assert_eq!(
        s.expect("relay").key_exchange_group(),
        Some(NamedGroup::X25519MLKEM768)
    );
    assert!(c.expect("client").is_post_quantum());
}

#[tokio::test]
async fn a_relay_requiring_pq_refuses_a_classical_client() {
    let pki = Pki::new();
    let mut trust: PeerTrust = pki.trust();
    trust.require_post_quantum(true);
    let relay = relay(identity(&pki.relay), trust, Limits::default());
    let addr = relay.local_addr().expect("addr");
    let server = tokio::spawn(async move { relay.accept_next().await.expect("incoming") });
    let c = classical_client(&pki, addr).await;
    let s = server.await.expect("join").expect_err("the relay refuses");
    match s {
        NetError::Connection(ConnectionError::TransportError(t)) => {
            assert_eq!(
                t.code,
                TransportErrorCode::crypto(HANDSHAKE_FAILURE),
                "{}",
                t.reason
            );
        }
        other => panic!("expected a TLS handshake failure, got {other:?}"),
    }
    match c.expect_err("the client fails") {
        NetError::Connection(ConnectionError::ConnectionClosed(c)) => {
            assert_eq!(c.error_code, TransportErrorCode::crypto(HANDSHAKE_FAILURE));
        }
        other => panic!("expected the relay's alert, got {other:?}"),
    }
}

#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rogatory_transport::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
