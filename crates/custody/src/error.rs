//! Error types, one per operation.

use crate::merkle::ProofError;

/// A field whose text is not of the required form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {value:?}")]
pub struct FieldError {
    /// What the field is.
    pub what: &'static str,
    /// The offending value, shortened to 80 characters.
    pub value: String,
}

impl FieldError {
    pub(crate) fn new(what: &'static str, value: &str) -> Self {
        let value: String = value.chars().take(80).collect();
        Self { what, value }
    }
}

/// Why a signed note was refused (`custody.md` §3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// Larger than 64 KiB, or more than 100 signature lines.
    #[error("signed note exceeds the size or signature-count limit")]
    TooLarge,
    /// Not a well-formed signed note.
    #[error("malformed signed note: {0}")]
    Malformed(&'static str),
    /// A signature from a trusted key failed strict verification; the whole note is rejected.
    #[error("invalid signature by trusted key {0}")]
    BadSignature(String),
    /// No trusted key signed the note.
    #[error("no signature by a trusted key")]
    NoTrustedSignature,
}

/// Why a key string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not of the form `name+hex8+base64` (or `PRIVATE+KEY+…`).
    #[error("malformed key string")]
    Malformed,
    /// The key name is empty or holds a space or `+`.
    #[error("invalid key name")]
    Name,
    /// Not an Ed25519 (type 0x01) key.
    #[error("unsupported key type")]
    Type,
    /// The key id does not match the name and key.
    #[error("key id does not match the key")]
    KeyId,
    /// The public key is not a valid Ed25519 point.
    #[error("invalid Ed25519 public key")]
    Point,
}

/// Why a statement, checkpoint, manifest or card was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The text is not of the canonical form.
    #[error("{kind}: {what}")]
    Syntax {
        /// What was being parsed.
        kind: &'static str,
        /// What is wrong.
        what: String,
    },
    /// A field value is invalid.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The signed note around it was refused.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// Larger than the format's limit.
    #[error("{0} exceeds its size limit")]
    TooLarge(&'static str),
}

impl ParseError {
    pub(crate) fn syntax(kind: &'static str, what: impl Into<String>) -> Self {
        Self::Syntax {
            kind,
            what: what.into(),
        }
    }
}

/// Why a receipt bundle does not prove what it claims (`custody.md` §9).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The bundle or one of its parts does not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The statement or checkpoint signature was refused.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// The checkpoint is not from the expected log.
    #[error("checkpoint origin {0:?} is not the issuer's log")]
    Origin(String),
    /// The inclusion proof does not verify.
    #[error("inclusion proof: {0}")]
    Proof(#[from] ProofError),
    /// The statement's issuer is not the relay whose key signed it.
    #[error("statement issuer does not match the signing key")]
    Issuer,
}

/// Why an audit log failed verification or refused an operation (`custody.md` §7).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// Entry `first_bad_index` (or the batch starting there) does not match its checkpoint.
    #[error("audit log entry {first_bad_index} does not match the signed checkpoint")]
    Tampered {
        /// The first index that is wrong.
        first_bad_index: u64,
    },
    /// A stored checkpoint is unsigned, badly signed, or malformed.
    #[error("stored checkpoint at record {index} is invalid: {why}")]
    BadCheckpoint {
        /// The record that holds it.
        index: u64,
        /// Why.
        why: String,
    },
    /// A record is torn or garbled where it cannot be a crash tail.
    #[error("audit log record {index} is corrupt")]
    Corrupt {
        /// The record index.
        index: u64,
    },
    /// The log is shorter than, or forked from, a checkpoint held elsewhere.
    #[error("audit log rolled back or forked: {0}")]
    RolledBack(String),
    /// The log does not extend a checkpoint its owner keeps outside it (`custody.md` §7.4): it
    /// is shorter, or its tree at that size has another root.
    #[error(
        "the audit log holds {log_size} entries and does not extend the signed checkpoint for {held_size} entries kept outside it ({why})"
    )]
    NotExtending {
        /// Entries in the log (intact records).
        log_size: u64,
        /// Size of the checkpoint kept outside the log.
        held_size: u64,
        /// Why: shorter, or a different tree.
        why: String,
    },
    /// The log would sign a checkpoint inconsistent with one it signed before.
    #[error("refusing to sign an inconsistent checkpoint")]
    Inconsistent,
    /// An entry is larger than a record may be.
    #[error("audit log entry too large")]
    EntryTooLarge,
    /// The storage backend failed.
    #[error("audit log storage: {0}")]
    Storage(String),
}
