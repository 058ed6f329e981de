//! Handshake matrix (`protocol.md` §3) over loopback: every bad client or relay certificate,
//! a missing certificate and a wrong ALPN are refused with a specific error on both sides, and
//! no session (so no application data) is ever established; valid pairs connect.

mod support;

use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionError, TransportErrorCode};
use rogatory_transport::certs::{Ca, Validity};
use rogatory_transport::config::{client_config, rustls_client_config};
use rogatory_transport::net::{NetError, Node, Session};
use rogatory_transport::{ErrorClass, Limits, PeerTrust, TlsIdentity};
use support::*;

// TLS alert codes (RFC 8446 §6).
const BAD_CERTIFICATE: u8 = 42;
const CERTIFICATE_REVOKED: u8 = 44;
const CERTIFICATE_EXPIRED: u8 = 45;
const CERTIFICATE_UNKNOWN: u8 = 46;
const UNKNOWN_CA: u8 = 48;
const ACCESS_DENIED: u8 = 49;
const CERTIFICATE_REQUIRED: u8 = 116;
const NO_APPLICATION_PROTOCOL: u8 = 120;

/// The TLS alert in a connection error and who raised it: `(alert, we_sent_it, reason)`.
fn alert(e: &NetError) -> (u8, bool, String) {
    let (code, local, reason) = match e {
        NetError::Connection(ConnectionError::TransportError(t)) => {
            (t.code, true, t.reason.clone())
        }
        NetError::Connection(ConnectionError::ConnectionClosed(c)) => (
            c.error_code,
            false,
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => panic!("expected a TLS failure, got {other:?}"),
    };
    for a in 0..=255u8 {
        if code == TransportErrorCode::crypto(a) {
            return (a, local, reason);
        }
    }
    panic!("not a TLS alert: {code:?} ({reason})");
}

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

/// The relay refuses the client: the relay raised `alert` (its reason contains `why`), the
/// client saw that alert, and neither side got a session.
async fn relay_refuses(
    client_cert: &TlsIdentity,
    relay_trust: PeerTrust,
    alert_code: u8,
    why: &str,
) {
    let pki = Pki::new();
    let relay = relay(identity(&pki.relay), relay_trust, Limits::default());
    let client = client(client_cert.clone(), pki.trust());
    let (s, c) = attempt(relay, client).await;
    let s = s.expect_err("relay must refuse");
    let c = c.expect_err("client must fail");
    let (a, local, reason) = alert(&s);
    assert!(local, "relay raised the alert");
    assert_eq!(a, alert_code, "relay alert ({reason})");
    assert!(
        reason.contains(why),
        "relay reason {reason:?} should mention {why:?}"
    );
    let (a, local, _) = alert(&c);
    assert!(!local, "client received the alert");
    assert_eq!(a, alert_code, "client sees the relay's alert");
    assert_eq!(c.class(), ErrorClass::Refused, "exit 6, not retryable");
}

#[tokio::test]
async fn valid_pair_connects_and_learns_identities() {
    let pki = Pki::new();
    let relay = relay(identity(&pki.relay), pki.trust(), Limits::default());
    let (s, c) = attempt(relay, client(identity(&pki.a), pki.trust())).await;
    let (s, c) = (s.expect("relay session"), c.expect("client session"));
    assert_eq!(s.peer.agency, id("agency-a"));
    assert_eq!(c.peer.agency, id("relay-b"));
    assert_eq!(c.version, 1);
    // Application data flows.
    let (mut w, _r) = c.open().await.expect("open");
    w.send(&rogatory_transport::Frame::StatusRequest(
        rogatory_transport::frame::StatusRequest {
            transfer: rogatory_custody::TransferId::from_bytes([1; 16]),
        },
    ))
    .await
    .expect("send");
    let (_w2, mut r2) = s
        .conn
        .accept_bi()
        .await
        .map(|(a, b)| {
            (
                a,
                rogatory_transport::net::FrameReader::new(b, s.conn.clone(), Default::default()),
            )
        })
        .expect("accept");
    assert!(matches!(
        r2.next().await.expect("frame"),
        Some(rogatory_transport::Frame::StatusRequest(_))
    ));
}

#[tokio::test]
async fn pinned_self_signed_pair_connects_without_a_ca() {
    let a = self_signed_for("agency-a");
    let r = self_signed_for("relay-b");
    let (ia, ir) = (identity(&a), identity(&r));
    let mut relay_trust = PeerTrust::new();
    relay_trust.add_agency(id("agency-a"), vec![ia.spki_sha256().expect("spki")]);
    let mut client_trust = PeerTrust::new();
    client_trust.add_agency(id("relay-b"), vec![ir.spki_sha256().expect("spki")]);
    let (s, c) = attempt(
        relay(ir, relay_trust, Limits::default()),
        client(ia, client_trust),
    )
    .await;
    assert_eq!(s.expect("relay").peer.agency, id("agency-a"));
    assert_eq!(c.expect("client").peer.agency, id("relay-b"));
}

#[tokio::test]
async fn ca_chain_and_matching_pin_connects() {
    let pki = Pki::new();
    let ia = identity(&pki.a);
    let mut t = pki.trust();
    t.add_agency(id("agency-a"), vec![ia.spki_sha256().expect("spki")]);
    let (s, c) = attempt(
        relay(identity(&pki.relay), t, Limits::default()),
        client(ia, pki.trust()),
    )
    .await;
    s.expect("relay");
    c.expect("client");
}

#[tokio::test]
async fn no_client_certificate_is_refused() {
    let pki = Pki::new();
    let relay = relay(identity(&pki.relay), pki.trust(), Limits::default());
    let addr = relay.local_addr().expect("addr");
    // A client that presents no certificate (built by hand: ours always presents one).
    let tls = rustls::ClientConfig::builder_with_provider(rogatory_transport::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    let mut tls = tls;
    tls.alpn_protocols = vec![rogatory_transport::ALPN.to_vec()];
    let server = tokio::spawn(async move { relay.accept_next().await.expect("incoming") });
    let c = raw_connect(tls, addr).await;
    let s = server.await.expect("join").expect_err("refused");
    let (a, local, reason) = alert(&s);
    assert!(local && a == CERTIFICATE_REQUIRED, "{a} {reason}");
    let (a, local, _) = alert(&c.expect_err("client fails"));
    assert!(!local && a == CERTIFICATE_REQUIRED);
}

#[tokio::test]
async fn wrong_alpn_is_refused() {
    let pki = Pki::new();
    let relay = relay(identity(&pki.relay), pki.trust(), Limits::default());
    let addr = relay.local_addr().expect("addr");
    let mut tls = rustls_client_config(&identity(&pki.a), pki.trust(), None).expect("tls");
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let server = tokio::spawn(async move { relay.accept_next().await.expect("incoming") });
    let c = raw_connect(tls, addr).await;
    let s = server.await.expect("join").expect_err("refused");
    let (a, local, reason) = alert(&s);
    assert!(local && a == NO_APPLICATION_PROTOCOL, "{a} {reason}");
    let (a, local, _) = alert(&c.expect_err("client fails"));
    assert!(!local && a == NO_APPLICATION_PROTOCOL);
}

#[tokio::test]
async fn self_signed_client_is_refused() {
    let pki = Pki::new();
    relay_refuses(
        &identity(&self_signed_for("agency-a")),
        pki.trust(),
        UNKNOWN_CA,
        "UnknownIssuer",
    )
    .await;
}

#[tokio::test]
async fn client_from_unknown_ca_is_refused() {
    let pki = Pki::new();
    let other = Ca::generate("Another CA", Validity::days_from_now(30)).expect("ca");
    let cert = other
        .issue(&id("agency-a"), Validity::days_from_now(7), 99)
        .expect("cert");
    relay_refuses(&identity(&cert), pki.trust(), UNKNOWN_CA, "UnknownIssuer").await;
}

#[tokio::test]
async fn expired_client_is_refused() {
    let pki = Pki::new();
    let cert = pki.ca.issue(&id("agency-a"), expired(), 20).expect("cert");
    relay_refuses(
        &identity(&cert),
        pki.trust(),
        CERTIFICATE_EXPIRED,
        "expired",
    )
    .await;
}

#[tokio::test]
async fn not_yet_valid_client_is_refused() {
    let pki = Pki::new();
    let cert = pki
        .ca
        .issue(&id("agency-a"), not_yet_valid(), 21)
        .expect("cert");
    relay_refuses(
        &identity(&cert),
        pki.trust(),
        CERTIFICATE_EXPIRED,
        "not valid yet",
    )
    .await;
}

#[tokio::test]
async fn revoked_client_is_refused_via_crl() {
    let pki = Pki::new();
    let cert = pki
        .ca
        .issue(&id("agency-a"), Validity::days_from_now(7), 30)
        .expect("cert");
    relay_refuses(
        &identity(&cert),
        trust_revoking(&pki, 30),
        CERTIFICATE_REVOKED,
        "Revoked",
    )
    .await;
}

/// The test PKI's trust with a current CRL of its CA that revokes `serial`.
fn trust_revoking(pki: &Pki, serial: u64) -> PeerTrust {
    let now = time::OffsetDateTime::now_utc();
    let crl = pki
        .ca
        .crl(
            &[serial],
            now - time::Duration::hours(1),
            now + time::Duration::days(1),
        )
        .expect("crl");
    let mut t = pki.trust();
    t.add_crl(crl.as_bytes()).expect("crl");
    t
}

/// test-plan.md 14, `relay.md` §11: a CRL loaded into a running relay (`Node::reload`, what its
/// live reload calls) closes the open connection whose certificate it revokes with
/// `NO_LONGER_TRUSTED`, keeps another agency's connection open, and refuses the revoked
/// certificate's next handshake.
#[tokio::test]
async fn a_crl_loaded_on_a_running_relay_closes_the_revoked_connection() {
    let pki = Pki::new();
    let revoked = pki
        .ca
        .issue(&id("agency-a"), Validity::days_from_now(7), 30)
        .expect("cert");
    let relay = relay(identity(&pki.relay), pki.trust(), Limits::default());
    let addr = relay.local_addr().expect("addr");
    let r = relay.clone();
    let serving = tokio::spawn(async move {
        r.serve(|s: Session| async move {
            let _ = s.conn.closed().await;
        })
        .await
    });
    let (na, nb) = (
        client(identity(&revoked), pki.trust()),
        client(identity(&pki.b), pki.trust()),
    );
    let a = na.connect(addr, None).await.expect("agency-a connects");
    let b = nb.connect(addr, None).await.expect("agency-b connects");
    relay.reload(trust_revoking(&pki, 30)).expect("reload");
    let e = tokio::time::timeout(Duration::from_secs(10), a.conn.closed())
        .await
        .expect("the revoked connection is closed");
    match e {
        ConnectionError::ApplicationClosed(c) => assert_eq!(
            c.error_code,
            rogatory_transport::ErrorCode::NO_LONGER_TRUSTED.to_varint()
        ),
        other => panic!("unexpected {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(b.conn.close_reason().is_none(), "agency-b was closed too");
    let again = client(identity(&revoked), pki.trust())
        .connect(addr, None)
        .await;
    let (alert_code, _, _) = alert(&again.expect_err("the revoked certificate connected"));
    assert_eq!(alert_code, CERTIFICATE_REVOKED);
    serving.abort();
}

#[tokio::test]
async fn expired_crl_fails_closed() {
    // enforce_revocation_expiration(): a CRL past its next update proves nothing.
    let pki = Pki::new();
    let now = time::OffsetDateTime::now_utc();
    let crl = pki
        .ca
        .crl(
            &[999],
            now - time::Duration::days(3),
            now - time::Duration::days(1),
        )
        .expect("crl");
    let mut t = pki.trust();
    t.add_crl(crl.as_bytes()).expect("crl");
    relay_refuses(&identity(&pki.a), t, UNKNOWN_CA, "expired").await;
}

#[tokio::test]
async fn pin_mismatch_is_refused() {
    let pki = Pki::new();
    // agency-a's card pins another key than the (CA-valid) certificate it presents.
    let other = identity(
        &pki.ca
            .issue(&id("agency-a"), Validity::days_from_now(7), 40)
            .expect("cert"),
    );
    let mut t = pki.trust();
    t.add_agency(id("agency-a"), vec![other.spki_sha256().expect("spki")]);
    relay_refuses(&identity(&pki.a), t, CERTIFICATE_UNKNOWN, "PinMismatch").await;
}

#[tokio::test]
async fn unknown_agency_is_refused() {
    let pki = Pki::new();
    let cert = pki
        .ca
        .issue(&id("agency-z"), Validity::days_from_now(7), 50)
        .expect("cert");
    relay_refuses(&identity(&cert), pki.trust(), ACCESS_DENIED, "").await;
}

#[tokio::test]
async fn client_refuses_expired_relay() {
    let pki = Pki::new();
    let bad = pki.ca.issue(&id("relay-b"), expired(), 60).expect("cert");
    let relay = relay(identity(&bad), pki.trust(), Limits::default());
    let (s, c) = attempt(relay, client(identity(&pki.a), pki.trust())).await;
    let (a, local, reason) = alert(&c.expect_err("client refuses"));
    assert!(local && a == CERTIFICATE_EXPIRED, "{a} {reason}");
    let (a, local, _) = alert(&s.expect_err("relay fails"));
    assert!(!local && a == CERTIFICATE_EXPIRED);
}

#[tokio::test]
async fn client_refuses_a_relay_that_is_not_the_expected_agency() {
    let pki = Pki::new();
    let relay = relay(identity(&pki.relay), pki.trust(), Limits::default());
    let addr = relay.local_addr().expect("addr");
    let server = tokio::spawn(async move { relay.accept_next().await.expect("incoming") });
    let c = client(identity(&pki.a), pki.trust())
        .connect(addr, Some(id("agency-b")))
        .await;
    let (a, local, _) = alert(&c.expect_err("wrong relay"));
    assert!(local && a == BAD_CERTIFICATE);
    let (a, _, _) = alert(&server.await.expect("join").expect_err("relay fails"));
    assert_eq!(a, BAD_CERTIFICATE);
}

/// test-plan.md 16: a relay whose certificate is valid under a trusted CA and names the expected
/// agency, but over another key than the one its card pins (a man in the middle holding a
/// certificate from the same CA): the client refuses it in the handshake, before any frame, as a
/// refusal (exit 6), not a retryable failure.
#[tokio::test]
async fn client_refuses_a_relay_whose_key_is_not_the_pinned_one() {
    let pki = Pki::new();
    let impostor = pki
        .ca
        .issue(&id("agency-b"), Validity::days_from_now(7), 41)
        .expect("cert");
    let relay = relay(identity(&impostor), pki.trust(), Limits::default());
    let addr = relay.local_addr().expect("addr");
    let server = tokio::spawn(async move { relay.accept_next().await.expect("incoming") });
    let mut t = pki.trust();
    t.add_agency(
        id("agency-b"),
        vec![identity(&pki.b).spki_sha256().expect("spki")],
    );
    let c = tokio::time::timeout(
        Duration::from_secs(10),
        client(identity(&pki.a), t).connect(addr, Some(id("agency-b"))),
    )
    .await
    .expect("client bounded");
    let c = c.expect_err("the impostor is refused");
    let (a, local, reason) = alert(&c);
    assert!(local, "the client raised the alert");
    assert_eq!(a, CERTIFICATE_UNKNOWN, "{reason}");
    assert!(reason.contains("PinMismatch"), "{reason:?}");
    assert_eq!(c.class(), ErrorClass::Refused, "exit 6, not retryable");
    let (a, _, _) = alert(&server.await.expect("join").expect_err("relay fails"));
    assert_eq!(a, CERTIFICATE_UNKNOWN);
}

#[test]
fn zero_rtt_is_off_on_both_sides() {
    let pki = Pki::new();
    let s = rogatory_transport::config::rustls_server_config(&identity(&pki.relay), pki.trust())
        .expect("server");
    assert_eq!(s.max_early_data_size, 0);
    assert!(!s.send_half_rtt_data);
    let c = rustls_client_config(&identity(&pki.a), pki.trust(), None).expect("client");
    assert!(!c.enable_early_data);
    // The quinn wrappers accept these configs (QUIC needs AES-128-GCM available).
    client_config(&identity(&pki.a), pki.trust(), None, &Limits::default()).expect("quinn client");
}

// --- helpers for hand-built clients ---

async fn raw_connect(
    tls: rustls::ClientConfig,
    addr: std::net::SocketAddr,
) -> Result<(), NetError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("bind")).expect("endpoint");
    let conn = ep
        .connect_with(
            quinn::ClientConfig::new(Arc::new(quic)),
            addr,
            "relay-b.rogatory.invalid",
        )?
        .await?;
    // TLS 1.3: the client may finish before the relay checks it; the refusal arrives next.
    let (mut s, mut r) = conn.open_bi().await?;
    s.write_all(b"\x01\x00").await?;
    let mut b = [0u8; 1];
    r.read_exact(&mut b).await.map_err(|e| match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
            NetError::Connection(c)
        }
        other => panic!("unexpected {other:?}"),
    })?;
    panic!("the relay answered an unauthenticated client");
}

#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
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

fn example(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../certs-example")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn example_identity(name: &str) -> TlsIdentity {
    TlsIdentity::from_pem(
        &example(&format!("{name}.pem")),
        &example(&format!("{name}.key")),
    )
    .expect("identity")
}

fn example_trust() -> PeerTrust {
    let mut t = PeerTrust::new();
    t.add_ca_pem(&example("ca.pem")).expect("ca");
    t.add_crl(&example("crl.pem")).expect("crl");
    t.add_agency(id("agency-a"), vec![])
        .add_agency(id("agency-b"), vec![]);
    t
}

#[tokio::test]
async fn certs_example_pki_connects_and_its_crl_revokes() {
    let relay_id = example_identity("relay-b");
    assert_eq!(
        relay_id.agency().expect("agency"),
        id("agency-b"),
        "the relay speaks for agency-b"
    );
    let r = relay(relay_id.clone(), example_trust(), Limits::default());
    let (s, c) = attempt(r, client(example_identity("agency-a"), example_trust())).await;
    assert_eq!(s.expect("relay").peer.agency, id("agency-a"));
    assert_eq!(c.expect("client").peer.agency, id("agency-b"));
    let r = relay(relay_id, example_trust(), Limits::default());
    let (s, _c) = attempt(r, client(example_identity("revoked"), example_trust())).await;
    assert_eq!(alert(&s.expect_err("revoked")).0, CERTIFICATE_REVOKED);
}
