//! The TLS key-exchange group each connection actually negotiated (`protocol.md` §2).
//!
//! quinn 0.11 does not expose rustls' `negotiated_key_exchange_group()`, so we observe it:
//! - every key-exchange group of our provider is wrapped so that the call that *completes* a key
//!   exchange (`start_and_complete` on a server; `complete`, or `complete_hybrid_component` when a
//!   server picks the classical share of a hybrid offer, on a client) records its group;
//! - every QUIC crypto session is wrapped so that, while quinn drives rustls inside
//!   `read_handshake`/`write_handshake` (synchronously, on the calling thread), the current
//!   thread's recording slot is that session's own.
//!
//! The group a session reports is therefore the one whose key exchange ran for that
//! connection, read back through [`quinn::Connection::handshake_data`] as a [`Negotiated`].

use std::any::Any;
use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock};

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::crypto::{
    self, ExportKeyingMaterialError, HeaderKey, KeyPair, Keys, PacketKey, UnsupportedVersion,
};
use quinn::{ConnectError, ConnectionId, Side};
use quinn_proto::TransportError;
use quinn_proto::transport_parameters::TransportParameters;
use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::ffdhe_groups::FfdheGroup;
use rustls::{NamedGroup, ProtocolVersion, SupportedProtocolVersion};

/// The hybrid post-quantum group (ML-KEM-768 + X25519) we offer first and a relay may require.
pub const POST_QUANTUM_GROUP: NamedGroup = NamedGroup::X25519MLKEM768;

/// What a connection's handshake established, as [`quinn::Connection::handshake_data`] returns
/// it for our connections (in place of quinn's own `HandshakeData`, whose fields it copies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The key-exchange group whose exchange completed for this connection; `None` until it has.
    pub key_exchange_group: Option<NamedGroup>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The server name the client sent (server side only).
    pub server_name: Option<String>,
}

/// The key-exchange group `conn` negotiated, if it is one of ours and its key exchange ran.
pub fn negotiated_group(conn: &quinn::Connection) -> Option<NamedGroup> {
    conn.handshake_data()?
        .downcast::<Negotiated>()
        .ok()?
        .key_exchange_group
}

/// The display name of a group (`X25519MLKEM768`, `X25519`, …).
pub fn group_name(group: NamedGroup) -> String {
    format!("{group:?}")
}

type Slot = Arc<Mutex<Option<NamedGroup>>>;

thread_local! {
    /// The slot of the session rustls is running for on this thread, if any.
    static CURRENT: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

fn record(group: NamedGroup) {
    CURRENT.with(|c| {
        if let Some(slot) = &*c.borrow() {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(group);
        }
    });
}

/// Makes `slot` current until dropped, then restores the previous one.
struct Scope(Option<Slot>);

fn enter(slot: &Slot) -> Scope {
    Scope(CURRENT.with(|c| c.replace(Some(slot.clone()))))
}

impl Drop for Scope {
    fn drop(&mut self) {
        let prev = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

/// A provider group that records when its key exchange completes.
#[derive(Debug)]
struct ObservedGroup(&'static dyn SupportedKxGroup);

impl SupportedKxGroup for ObservedGroup {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        Ok(Box::new(ObservedKx(self.0.start()?)))
    }

    fn start_and_complete(
        &self,
        peer_pub_key: &[u8],
    ) -> Result<CompletedKeyExchange, rustls::Error> {
        let done = self.0.start_and_complete(peer_pub_key)?;
        record(done.group);
        Ok(done)
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        self.0.ffdhe_group()
    }

    fn name(&self) -> NamedGroup {
        self.0.name()
    }

    fn fips(&self) -> bool {
        self.0.fips()
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        self.0.usable_for_version(version)
    }
}

struct ObservedKx(Box<dyn ActiveKeyExchange>);

impl ActiveKeyExchange for ObservedKx {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let group = self.0.group();
        let secret = self.0.complete(peer_pub_key)?;
        record(group);
        Ok(secret)
    }

    fn complete_for_tls_version(
        self: Box<Self>,
        peer_pub_key: &[u8],
        tls_version: &SupportedProtocolVersion,
    ) -> Result<SharedSecret, rustls::Error> {
        let group = self.0.group();
        let secret = self.0.complete_for_tls_version(peer_pub_key, tls_version)?;
        record(group);
        Ok(secret)
    }

    fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
        self.0.hybrid_component()
    }

    fn complete_hybrid_component(
        self: Box<Self>,
        peer_pub_key: &[u8],
    ) -> Result<SharedSecret, rustls::Error> {
        let group = self.0.hybrid_component().map(|(g, _)| g);
        let secret = self.0.complete_hybrid_component(peer_pub_key)?;
        if let Some(g) = group {
            record(g);
        }
        Ok(secret)
    }

    fn pub_key(&self) -> &[u8] {
        self.0.pub_key()
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        self.0.ffdhe_group()
    }

    fn group(&self) -> NamedGroup {
        self.0.group()
    }
}

/// `groups` with each group replaced by its observed wrapper (same name, same order).
pub(crate) fn observe(
    groups: &[&'static dyn SupportedKxGroup],
) -> Vec<&'static dyn SupportedKxGroup> {
    static WRAPPED: OnceLock<Vec<ObservedGroup>> = OnceLock::new();
    let wrapped = WRAPPED.get_or_init(|| {
        rustls::crypto::aws_lc_rs::ALL_KX_GROUPS
            .iter()
            .map(|g| ObservedGroup(*g))
            .collect()
    });
    groups
        .iter()
        .map(|g| {
            wrapped
                .iter()
                .find(|w| w.0.name() == g.name())
                .map_or(*g, |w| w as &'static dyn SupportedKxGroup)
        })
        .collect()
}

/// A QUIC crypto session whose key exchange is observed (module docs).
struct ObservedSession {
    inner: Box<dyn crypto::Session>,
    slot: Slot,
}

impl crypto::Session for ObservedSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        self.inner.initial_keys(dst_cid, side)
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        let quic = self
            .inner
            .handshake_data()?
            .downcast::<HandshakeData>()
            .ok();
        Some(Box::new(Negotiated {
            key_exchange_group: *self.slot.lock().unwrap_or_else(|p| p.into_inner()),
            alpn: quic.as_ref().and_then(|q| q.protocol.clone()),
            server_name: quic.and_then(|q| q.server_name),
        }))
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        self.inner.peer_identity()
    }

    fn early_crypto(&self) -> Option<(Box<dyn HeaderKey>, Box<dyn PacketKey>)> {
        self.inner.early_crypto()
    }

    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.early_data_accepted()
    }

    fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let _scope = enter(&self.slot);
        self.inner.read_handshake(buf)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.inner.transport_parameters()
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let _scope = enter(&self.slot);
        self.inner.write_handshake(buf)
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.inner.next_1rtt_keys()
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.inner.is_valid_retry(orig_dst_cid, header, payload)
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.inner.export_keying_material(output, label, context)
    }
}

/// quinn's rustls server configuration, with every session observed.
pub(crate) struct ObservedServerConfig(pub(crate) Arc<QuicServerConfig>);

impl crypto::ServerConfig for ObservedServerConfig {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        self.0.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.0.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn crypto::Session> {
        let slot = Slot::default();
        let inner = {
            let _scope = enter(&slot);
            self.0.clone().start_session(version, params)
        };
        Box::new(ObservedSession { inner, slot })
    }
}

/// quinn's rustls client configuration, with every session observed.
pub(crate) struct ObservedClientConfig(pub(crate) Arc<QuicClientConfig>);

impl crypto::ClientConfig for ObservedClientConfig {
    fn start_session(
        self: Arc<Self>,
        version: u32,
        server_name: &str,
        params: &TransportParameters,
    ) -> Result<Box<dyn crypto::Session>, ConnectError> {
        let slot = Slot::default();
        let inner = {
            let _scope = enter(&slot);
            self.0.clone().start_session(version, server_name, params)?
        };
        Ok(Box::new(ObservedSession { inner, slot }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_needs_a_current_slot_and_scopes_nest() {
        let (a, b) = (Slot::default(), Slot::default());
        record(NamedGroup::X25519);
        {
            let _a = enter(&a);
            {
                let _b = enter(&b);
                record(POST_QUANTUM_GROUP);
            }
            record(NamedGroup::X25519);
        }
        record(NamedGroup::secp256r1);
        assert_eq!(*a.lock().expect("lock"), Some(NamedGroup::X25519));
        assert_eq!(*b.lock().expect("lock"), Some(POST_QUANTUM_GROUP));
    }

    #[test]
    fn every_provider_group_is_wrapped_in_order() {
        let groups = rustls::crypto::aws_lc_rs::default_provider().kx_groups;
        let observed = observe(&groups);
        assert_eq!(
            groups.iter().map(|g| g.name()).collect::<Vec<_>>(),
            observed.iter().map(|g| g.name()).collect::<Vec<_>>()
        );
        assert_eq!(observed[0].name(), POST_QUANTUM_GROUP);
        assert_eq!(group_name(POST_QUANTUM_GROUP), "X25519MLKEM768");
        // A completed exchange through a wrapper is recorded in the current slot.
        let slot = Slot::default();
        let _s = enter(&slot);
        let peer = observed[1].start().expect("start");
        let ours = observed[1].start().expect("start");
        ours.complete(peer.pub_key()).expect("complete");
        assert_eq!(*slot.lock().expect("lock"), Some(observed[1].name()));
    }
}
