//! Every transport limit as a documented setting with a safe default (`protocol.md` §8), and
//! the quinn/rustls configurations built from them (§2, §3).

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rogatory_custody::AgencyId;

use crate::frame::{ALPN, FrameLimits};
use crate::kx::{ObservedClientConfig, ObservedServerConfig};
use crate::tls::{
    ClientVerifier, PeerTrust, ServerVerifier, TlsConfigError, TlsIdentity, provider_for,
};

/// The congestion controller (`protocol.md` §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Congestion {
    /// CUBIC (RFC 9438): the default, well understood on shared links.
    #[default]
    Cubic,
    /// BBR: for long, lossy links where loss is not congestion.
    Bbr,
    /// NewReno (RFC 9002).
    NewReno,
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cubic" => Ok(Congestion::Cubic),
            "bbr" => Ok(Congestion::Bbr),
            "newreno" => Ok(Congestion::NewReno),
            _ => Err(format!(
                "unknown congestion controller {s:?} (cubic, bbr, newreno)"
            )),
        }
    }
}

/// Transport limits (`protocol.md` §8). Every field has a finite default sized for a
/// 1 Gbit/s link with 200 ms round trips (bandwidth × delay = 25 MB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Per-stream receive window (flow control), bytes.
    pub stream_receive_window: u64,
    /// Connection receive window, bytes.
    pub connection_receive_window: u64,
    /// Connection send buffer, bytes.
    pub send_window: u64,
    /// Concurrent bidirectional streams the peer may open (requests, uploads).
    pub max_concurrent_bidi_streams: u32,
    /// Concurrent unidirectional streams the peer may open (data streams).
    pub max_concurrent_uni_streams: u32,
    /// Data streams one transfer may use (announced in WELCOME).
    pub max_data_streams: u32,
    /// Frame size limits.
    pub frames: FrameLimits,
    /// Close a connection after this long without any packet.
    pub idle_timeout: Duration,
    /// Send a keep-alive after this long without sending (below `idle_timeout`).
    pub keep_alive: Duration,
    /// Give up a handshake (and the HELLO/WELCOME exchange) after this long.
    pub handshake_timeout: Duration,
    /// Connections a relay holds at once, handshaking or established.
    pub max_incoming: usize,
    /// Established connections one agency may hold at a relay at once: one agency, or one
    /// stolen key, cannot take every one of the `max_incoming` places from the others.
    pub max_connections_per_agency: usize,
    /// Bytes of large frame payloads (above `frame::LARGE_FRAME`: OFFER, SEAL) a relay reads
    /// at once over all its connections; a frame waits for its share, within its own deadline
    /// (`protocol.md` §4.3). At least the largest frame limit.
    pub large_frame_budget: u64,
    /// Congestion controller.
    pub congestion: Congestion,
    /// Receive and send buffer asked for each UDP socket, bytes (the kernel caps it, on Linux
    /// at `net.core.rmem_max` / `wmem_max`). The default 208 KiB overflows at a few hundred
    /// MB/s whenever the receiving process is briefly busy; every overflow is a loss that the
    /// congestion controller answers by slowing down.
    pub udp_buffer: usize,
}

/// [`Limits::agency`]'s connection receive window, shared by every stream of the connection.
const AGENCY_RECEIVE_WINDOW: u64 = 8 << 20;
/// [`Limits::agency`]'s send window.
const AGENCY_SEND_WINDOW: u64 = 16 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stream_receive_window: 16 << 20,
            connection_receive_window: 64 << 20,
            send_window: 64 << 20,
            max_concurrent_bidi_streams: 16,
            max_concurrent_uni_streams: 16,
            max_data_streams: 8,
            frames: FrameLimits::default(),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_incoming: 256,
            max_connections_per_agency: 32,
            large_frame_budget: 256 << 20,
            congestion: Congestion::Cubic,
            udp_buffer: 8 << 20,
        }
    }
}

impl Limits {
    /// The limits of an agency's side of a connection (`send`, `fetch`, `status`…), bounded by
    /// memory rather than by the longest link (`protocol.md` §8): every download of one
    /// connection shares one 8 MiB connection receive window, and an upload keeps at most 16 MiB
    /// unacknowledged. quinn keeps received data in the datagrams it arrived in, so a full
    /// window costs up to about twice its size in memory when streams interleave; with these
    /// bounds a `fetch` of any number of files stays well below 64 MiB. The per-stream window
    /// stays at the default: the connection's is the bound, and one file may use all of it. The
    /// relay keeps [`Limits::default`].
    pub fn agency() -> Self {
        Limits {
            connection_receive_window: AGENCY_RECEIVE_WINDOW,
            send_window: AGENCY_SEND_WINDOW,
            ..Limits::default()
        }
    }

    /// The quinn transport configuration: windows, stream counts, timeouts, datagrams off,
    /// congestion controller; GSO/GRO stay on (quinn's default).
    pub fn transport_config(&self) -> TransportConfig {
        let mut t = TransportConfig::default();
        t.stream_receive_window(varint(self.stream_receive_window))
            .receive_window(varint(self.connection_receive_window))
            .send_window(self.send_window)
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(self.max_concurrent_uni_streams))
            .max_idle_timeout(Some(
                IdleTimeout::try_from(self.idle_timeout)
                    .unwrap_or(IdleTimeout::from(VarInt::from_u32(30_000))),
            ))
            .keep_alive_interval(Some(self.keep_alive))
            .datagram_receive_buffer_size(None)
            .datagram_send_buffer_size(0)
            .enable_segmentation_offload(true);
        match self.congestion {
            Congestion::Cubic => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
            }
            Congestion::NewReno => t.congestion_controller_factory(Arc::new(
                quinn::congestion::NewRenoConfig::default(),
            )),
        };
        t
    }

    /// A quinn endpoint on a UDP socket bound to `addr`, with the socket buffers of these limits,
    /// serving `server` if given. An IPv6 socket is made dual-stack where the system allows it.
    pub fn endpoint(
        &self,
        addr: std::net::SocketAddr,
        server: Option<quinn::ServerConfig>,
    ) -> std::io::Result<quinn::Endpoint> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            // Not every system allows dual-stack sockets; IPv6 alone then.
            let _ = socket.set_only_v6(false);
        }
        // Best effort: a smaller buffer than asked is slower, not wrong. Linux caps it at
        // `net.core.rmem_max` (212 992 bytes on a stock system): say so once per endpoint.
        let _ = socket.set_recv_buffer_size(self.udp_buffer);
        let _ = socket.set_send_buffer_size(self.udp_buffer);
        if let Ok(got) = socket.recv_buffer_size()
            && got < self.udp_buffer
        {
            tracing::info!(
                asked = self.udp_buffer,
                got,
                "UDP receive buffer smaller than asked: raise net.core.rmem_max (protocol.md §8)"
            );
        }
        socket.bind(&addr.into())?;
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            server,
            socket.into(),
            Arc::new(quinn::TokioRuntime),
        )
    }
}

fn varint(v: u64) -> VarInt {
    VarInt::from_u64(v).unwrap_or(VarInt::MAX)
}

/// The rustls server configuration of a relay: TLS 1.3 only, mandatory client certificates
/// checked by our verifier, ALPN `rogatory/1`, no 0-RTT (`max_early_data_size == 0`); only
/// X25519MLKEM768 when `trust` requires post-quantum key exchange.
pub fn rustls_server_config(
    identity: &TlsIdentity,
    trust: PeerTrust,
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let provider = provider_for(trust.requires_post_quantum());
    let verifier = Arc::new(ClientVerifier::new(trust, &provider)?);
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key())?;
    c.alpn_protocols = vec![ALPN.to_vec()];
    c.max_early_data_size = 0;
    c.send_half_rtt_data = false;
    // No session tickets: every connection is a full handshake with certificate checks, and
    // no resumption secrets are kept.
    c.send_tls13_tickets = 0;
    c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(c)
}

/// The rustls client configuration: TLS 1.3 only, our certificate, our server verifier,
/// ALPN `rogatory/1`, no early data, no resumption; only X25519MLKEM768 when `trust` requires
/// post-quantum key exchange.
pub fn rustls_client_config(
    identity: &TlsIdentity,
    trust: PeerTrust,
    expect: Option<AgencyId>,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = provider_for(trust.requires_post_quantum());
    let verifier = Arc::new(ServerVerifier::new(trust, expect, &provider)?);
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain.clone(), identity.key())?;
    c.alpn_protocols = vec![ALPN.to_vec()];
    c.enable_early_data = false;
    c.resumption = rustls::client::Resumption::disabled();
    Ok(c)
}

/// The quinn server configuration: our TLS (each session's key exchange observed,
/// [`crate::kx`]), our limits, migration off.
pub fn server_config(
    identity: &TlsIdentity,
    trust: PeerTrust,
    limits: &Limits,
) -> Result<quinn::ServerConfig, TlsConfigError> {
    let tls = rustls_server_config(identity, trust)?;
    let quic =
        QuicServerConfig::try_from(tls).map_err(|e| TlsConfigError::Certificate(e.to_string()))?;
    let mut c = quinn::ServerConfig::with_crypto(Arc::new(ObservedServerConfig(Arc::new(quic))));
    c.transport_config(Arc::new(limits.transport_config()));
    c.migration(false);
    c.max_incoming(limits.max_incoming);
    Ok(c)
}

/// The quinn client configuration (each session's key exchange observed, [`crate::kx`]).
pub fn client_config(
    identity: &TlsIdentity,
    trust: PeerTrust,
    expect: Option<AgencyId>,
    limits: &Limits,
) -> Result<quinn::ClientConfig, TlsConfigError> {
    let tls = rustls_client_config(identity, trust, expect)?;
    let quic =
        QuicClientConfig::try_from(tls).map_err(|e| TlsConfigError::Certificate(e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(ObservedClientConfig(Arc::new(quic))));
    c.transport_config(Arc::new(limits.transport_config()));
    Ok(c)
}
