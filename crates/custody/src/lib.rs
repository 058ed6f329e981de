//! # rogatory-custody
//!
//! The records that make a transfer accountable (`docs/custody.md`): agency identities and
//! public cards with phone-readable fingerprints, the trust store, the canonical manifest with
//! its legal metadata, signed statements (seal, custody, delivery and purge receipts, rejection
//! notices) as C2SP signed notes with strict Ed25519, and the RFC 6962 Merkle audit log with
//! signed C2SP checkpoints and tlog-proof receipt bundles.
//!
//! It is pure: no sockets, no async, no clock (times are parameters), no file system (the audit
//! log's storage is the [`LogStore`] trait). Verification returns [`Verified<T>`], which nothing
//! outside this crate can construct.

#![forbid(unsafe_code)]

mod error;
mod ids;
pub mod merkle;
mod note;
mod verified;

pub use error::{BundleError, FieldError, KeyError, LogError, NoteError, ParseError};
pub use ids::{AgencyId, CalendarDate, Sha256Digest, Timestamp, TransferId};
pub use note::{
    MAX_NOTE_LEN, MAX_SIGNATURES, Note, NoteSigner, NoteVerifier, SignedText,
    ed25519_verify_strict, open_note,
};
pub use verified::Verified;
