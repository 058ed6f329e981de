//! Test support: a demo PKI and endpoints on 127.0.0.1.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;

use rogatory_custody::{AgencyId, TransferId};
use rogatory_transport::ErrorCode;
use rogatory_transport::certs::{Ca, CertKey, Validity, self_signed};
use rogatory_transport::frame::{ErrorFrame, Frame, StatusRequest};
use rogatory_transport::net::{IntakeHandler, Node, ServeConfig, Session, serve_connection};
use rogatory_transport::{Limits, PeerTrust, TlsIdentity};
use time::{Duration, OffsetDateTime};

pub fn id(s: &str) -> AgencyId {
    s.parse().expect("agency id")
}

pub fn identity(c: &CertKey) -> TlsIdentity {
    TlsIdentity::from_pem(c.cert_pem.as_bytes(), c.key_pem.as_bytes()).expect("identity")
}

/// A CA and certificates for agency-a (sender), agency-b (recipient) and relay-b.
pub struct Pki {
    pub ca: Ca,
    pub a: CertKey,
    pub b: CertKey,
    pub relay: CertKey,
}

impl Pki {
    pub fn new() -> Self {
        let ca = Ca::generate("Rogatory test CA", Validity::days_from_now(30)).expect("ca");
        let v = Validity::days_from_now(7);
        Pki {
            a: ca.issue(&id("agency-a"), v, 10).expect("a"),
            b: ca.issue(&id("agency-b"), v, 11).expect("b"),
            relay: ca.issue(&id("relay-b"), v, 12).expect("relay"),
            ca,
        }
    }

    /// Trust: the CA bundle and the three agencies, no pins.
    pub fn trust(&self) -> PeerTrust {
        let mut t = PeerTrust::new();
        t.add_ca_pem(self.ca.cert_pem().as_bytes()).expect("ca pem");
        for a in ["agency-a", "agency-b", "relay-b"] {
            t.add_agency(id(a), vec![]);
        }
        t
    }
}

pub fn expired() -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity {
        not_before: now - Duration::days(10),
        not_after: now - Duration::days(1),
    }
}

pub fn not_yet_valid() -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity {
        not_before: now + Duration::days(1),
        not_after: now + Duration::days(10),
    }
}

pub fn self_signed_for(agency: &str) -> CertKey {
    self_signed(&id(agency), Validity::days_from_now(7)).expect("self-signed")
}

pub fn relay(identity: TlsIdentity, trust: PeerTrust, limits: Limits) -> Arc<Node> {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    Arc::new(Node::server(addr, identity, trust, limits).expect("relay"))
}

pub fn client(identity: TlsIdentity, trust: PeerTrust) -> Node {
    Node::client(false, identity, trust, Limits::default()).expect("client")
}

pub mod memory;

/// Starts a relay serving uploads into `store`; other requests get NOT_FOUND.
pub fn start_relay<H: IntakeHandler>(pki: &Pki, store: Arc<H>, limits: Limits) -> Arc<Node> {
    let node = relay(identity(&pki.relay), pki.trust(), limits);
    let n = node.clone();
    tokio::spawn(async move {
        n.serve(move |s: Session| {
            let store = store.clone();
            async move {
                serve_connection(
                    s,
                    store,
                    ServeConfig::default(),
                    |_s, _f, mut w, _r| async move {
                        let e = Frame::Error(ErrorFrame {
                            code: ErrorCode::NOT_FOUND,
                            message: "no such transfer".into(),
                        });
                        let _ = w.send(&e).await;
                        w.finish();
                    },
                )
                .await
            }
        })
        .await
    });
    node
}

/// A STATUS request on a new stream of `s` is answered (NOT_FOUND: no such transfer): the
/// connection still works.
pub async fn status_still_works(s: &Session) {
    let (mut w, mut r) = s.open().await.expect("open");
    w.send(&Frame::StatusRequest(StatusRequest {
        transfer: TransferId::from_bytes([9; 16]),
    }))
    .await
    .expect("send");
    w.finish();
    match r.next().await.expect("answer") {
        Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::NOT_FOUND),
        other => panic!("unexpected {other:?}"),
    }
}
