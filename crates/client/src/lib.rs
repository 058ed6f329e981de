//! # rogatory-client
//!
//! The sender's and the recipient's side of Rogatory as a Rust API, blocking calls that each run
//! their own connection to a relay:
//!
//! - [`send`](send::send) evidence through a relay (streamed, resumable, receipted);
//! - [`status`](status::status) of a transfer at the relay;
//! - [`inbox`](inbox::inbox): what awaits this agency;
//! - [`fetch`](fetch::fetch) transfers into a directory (verified, resumable, receipted);
//! - [`package`]: the evidence package kept with each fetched transfer, and its offline
//!   verification ([`package::verify`]);
//! - [`purge`](purge::purge) what is past its retention, at the sender or the recipient;
//!
//! and the agency home they work from ([`Home`]: identity, TLS key, trusted cards). Each takes a
//! request struct and returns a summary; `send` and `fetch` report progress as [`Event`]s through
//! a callback as they go. Failures are one [`Error`] whose [`ErrorKind`] the `rogatory` binary
//! maps to its exit codes.
//!
//! The `rogatory` binary is a thin shell over this crate: it parses arguments, prints the events
//! (`crates/cli/events.rs`) and installs the SIGINT/SIGTERM handler that removes the temporary
//! files registered in [`cleanup`] (`crates/cli/cleanup.rs`). The library itself never prints,
//! never exits and never installs a signal handler.
//!
//! What it is not: the relay (`rogatory-relay`), or the formats and protocol themselves
//! (`rogatory-custody`, `rogatory-transport`, `rogatory-envelope`).
//!
//! Where to start: [`send::send`] with a [`send::SendRequest`], [`fetch::fetch`] with a
//! [`fetch::FetchRequest`]; `examples/send.rs`, `examples/fetch.rs`.

#![forbid(unsafe_code)]

pub mod checkpoints;
pub mod cleanup;
pub mod contents;
pub mod error;
mod events;
pub mod fetch;
pub mod home;
pub mod inbox;
pub mod json;
pub mod package;
pub mod purge;
pub mod send;
pub mod status;

pub use error::{Error, ErrorKind, Result};
pub use events::Event;
pub use home::Home;

/// Connects to a relay as this home's agency (mutual TLS against the home's trust store),
/// completes HELLO/WELCOME, and checks the relay's log against the checkpoints this home holds
/// ([`checkpoints::check_relay`], `custody.md` §7.2) before anything else is asked. Keep the [`Node`](rogatory_transport::net::Node) alive as long as
/// the session.
pub async fn connect(
    home: &Home,
    relay: &str,
) -> Result<(
    rogatory_transport::net::Node,
    rogatory_transport::net::Session,
)> {
    connect_reporting(home, relay, &|_| {}).await
}

/// How long [`connect`] waits for a place at a relay that has none for this agency now (the
/// agency holds `max_connections_per_agency` connections, or the relay `max_incoming`:
/// `protocol.md` §8), trying again with growing pauses, before it gives up (exit 5). A script
/// that runs more sends at once than the relay admits from one agency sees the extra ones wait
/// their turn, not fail.
pub const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// [`connect`], telling `on` (one [`Event::Info`]) when it waits for a place at a busy relay.
pub async fn connect_reporting(
    home: &Home,
    relay: &str,
    on: &(dyn Fn(&Event) + Sync),
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
        rogatory_transport::Limits::agency(),
    )
    .map_err(|e| error::net("starting QUIC", e))?;
    let deadline = std::time::Instant::now() + BUSY_WAIT;
    let mut pause = std::time::Duration::from_millis(50);
    let mut told = false;
    let s = loop {
        match node.connect(addr, None).await {
            Err(e) if e.is_busy() && std::time::Instant::now() + pause < deadline => {
                if !told {
                    on(&Event::Info {
                        message: format!(
                            "relay {relay} has no place now ({e}): waiting for one, at most {} minutes",
                            BUSY_WAIT.as_secs() / 60
                        ),
                    });
                    told = true;
                }
                // Up to half again, so that the agencies waiting do not all come back at once.
                let spread = f64::from(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.subsec_micros() % 1000)
                        .unwrap_or(0),
                ) / 2000.0;
                tokio::time::sleep(pause.mul_f64(1.0 + spread)).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            r => break r.map_err(|e| error::net(&format!("connecting to {relay}"), e))?,
        }
    };
    if let Err(e) = checkpoints::check_relay(home, &s).await {
        s.close(rogatory_transport::ErrorCode::NO_ERROR, "done");
        return Err(e);
    }
    Ok((node, s))
}

/// The async runtime of an agency's commands: one worker thread for QUIC and the streams, beside
/// the calling thread (which produces a send's pieces in `block_on`) and the blocking threads
/// (small files opened, files made durable). With a second worker, the QUIC driver and the task
/// reading a stream woke each other across threads every few datagrams: a 1 GiB `fetch` used
/// 15 % more CPU and nearly twice the memory, and took 20 % longer with the relay on the same
/// two cores (`docs/performance.md`). One worker caps a single `fetch` at what one core
/// decrypts, about 600 MB/s here.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    runtime_with(1)
}

/// An async runtime with `workers` worker threads (at least one).
pub fn runtime_with(workers: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .map_err(|e| Error::new(ErrorKind::Internal, "starting the async runtime").source(e))
}
