//! # rogatory-client
//!
//! The sender's and the recipient's side of Rogatory as a Rust API: [`send`](send::send)
//! evidence through a relay (streamed, resumable, receipted), and the agency home it works from
//! ([`Home`]: identity, TLS key, trusted cards). The `rogatory` binary is a thin shell over it;
//! a program can embed it and receive progress as [`Event`]s through a callback.
//!
//! What it is not: the relay (`rogatory-relay`), or the formats and protocol themselves
//! (`rogatory-custody`, `rogatory-transport`, `rogatory-envelope`).
//!
//! Where to start: [`send::send`] with a [`send::SendRequest`]; `examples/send.rs`.

#![forbid(unsafe_code)]

pub mod error;
mod events;
pub mod home;
pub mod send;

pub use error::{Error, ErrorKind, Result};
pub use events::Event;
pub use home::Home;

/// Connects to a relay as this home's agency (mutual TLS against the home's trust store) and
/// completes HELLO/WELCOME. Keep the [`Node`](rogatory_transport::net::Node) alive as long as
/// the session.
pub async fn connect(
    home: &Home,
    relay: &str,
) -> Result<(
    rogatory_transport::net::Node,
    rogatory_transport::net::Session,
)> {
    let store = home.trust_store()?;
    let peer_trust = home.peer_trust(&store)?;
    let tls = home.tls()?;
    let addr = rogatory_transport::net::resolve(relay)
        .await
        .map_err(|e| error::net(&format!("relay {relay}"), e))?;
    let node = rogatory_transport::net::Node::client(
        addr.is_ipv6(),
        tls,
        peer_trust,
        rogatory_transport::Limits::default(),
    )
    .map_err(|e| error::net("starting QUIC", e))?;
    let s = node
        .connect(addr, None)
        .await
        .map_err(|e| error::net(&format!("connecting to {relay}"), e))?;
    Ok((node, s))
}

/// The async runtime for network work: two worker threads (QUIC packet protection on one, our
/// work on the other).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::new(ErrorKind::Internal, "starting the async runtime").source(e))
}
