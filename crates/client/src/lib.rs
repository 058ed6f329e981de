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

/// The async runtime for network work: two worker threads (QUIC packet protection on one, our
/// work on the other).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::new(ErrorKind::Internal, "starting the async runtime").source(e))
}
