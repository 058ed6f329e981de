//! Rogatory transport: QUIC (quinn) with mutual TLS 1.3 (rustls), and the `rogatory/1` wire
//! protocol (`docs/protocol.md`).
//!
//! - [`frame`]: frames, their canonical encoding and size limits (§4, §5).
//! - [`upload`]: the upload exchange as sans-IO state machines (§6).
//! - [`tls`]: peer authentication: CA chains, CRLs, SPKI pins from agency cards (§3).
//! - [`config`]: every transport limit as a documented setting (§8).
//! - [`kx`]: the key-exchange group each connection negotiated (§2).
//! - [`net`]: the thin tokio shell over quinn.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod certs;
pub mod config;
pub mod direct;
pub mod error;
pub mod failpoint;
pub mod frame;
#[cfg(feature = "impair")]
pub mod impair;
pub mod kx;
pub mod net;
pub mod staged;
pub mod tls;
pub mod upload;
pub mod varint;

pub use config::{Congestion, Limits};
pub use error::{ErrorClass, ErrorCode, FrameError, ProtocolError};
pub use frame::{ALPN, Frame, FrameLimits, FrameType};
pub use tls::{PeerIdentity, PeerTrust, Rejected, TlsIdentity};
