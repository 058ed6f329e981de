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
//!
//! ```
//! use rogatory_custody::{AgencyIdentity, AuditLog, MemoryLogStore, ReceiptBundle, Statement,
//!     Head, Timestamp, TransferId};
//!
//! let relay = AgencyIdentity::generate("nl-relay".parse()?);
//! let mut log = AuditLog::open(MemoryLogStore::default(), relay.log_signer())?;
//! let fetch = Statement::Fetch {
//!     head: Head { transfer: TransferId::generate(), issuer: relay.id().clone(),
//!                  time: Timestamp::from_unix(1_800_000_000)? },
//!     peer: "de-bka".parse()?, files: 3, ciphertext_bytes: 1234,
//! };
//! let note = fetch.sign(relay.signer())?;
//! let index = log.append(fetch.encode().as_bytes())?;
//! let bundle = log.bundle(&note, index)?;
//! let proven = ReceiptBundle::parse(&bundle)?.verify(&relay.signer().verifier())?;
//! assert_eq!(proven.statement, fetch);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod card;
mod chain;
mod checkpoint;
mod consistency;
mod error;
mod identity;
mod ids;
mod log;
mod manifest;
pub mod merkle;
mod note;
mod revocation;
mod statement;
mod text;
mod verified;
mod witness;

pub use card::{
    AgencyCard, Fingerprint, TrustError, TrustStore, age_recipients_for, file_recipients_for,
    fingerprint_matches,
};
pub use chain::{CardChain, ChainKey, MAX_CHAIN_LEN, check_successor};
pub use checkpoint::Checkpoint;
pub use consistency::{ConsistencyError, check_against_seen, check_consistency};
pub use error::{BundleError, FieldError, KeyError, LogError, NoteError, ParseError};
pub use identity::AgencyIdentity;

// Secrets are compared only in constant time (test-plan.md 69).
rogatory_envelope::assert_not_partial_eq!(AgencyIdentity, NoteSigner);
pub use ids::{AgencyId, CalendarDate, Sha256Digest, Timestamp, TransferId};
pub use log::{
    AuditLog, DecodedRecords, LogStore, LoggedStatement, MAX_RECORD_LEN, MemoryLogStore,
    ReceiptBundle, Record, check_extends, check_not_rolled_back, decode_records, verify_records,
    verify_records_any,
};
pub use manifest::{
    Contents, ContentsFile, ContentsRef, FileEntry, Inventory, LEGAL_FIELDS, Legal, LegalText,
    MAX_CONTENTS_CIPHERTEXT_LEN, MAX_FILES, MAX_MANIFEST_LEN, Manifest, ManifestFile, OfferedFile,
    OnwardTransfer, PieceHash, PieceLayout, PieceTable, RelativePath, SealedManifest,
    TransferOffer, is_bidi_or_invisible, open_sealed_manifest, piece_layout,
};
pub use note::{
    MAX_NOTE_LEN, MAX_SIGNATURES, Note, NoteSigner, NoteVerifier, SignedText,
    ed25519_verify_strict, note_text_digest, open_note, split_notes,
};
pub use revocation::{KeyKind, Revocation, Revocations, signing_key_sha256};
#[doc(hidden)]
pub use rogatory_envelope::assert_not_partial_eq;
pub use statement::{Head, Peer, Statement};
pub use text::Text;
pub use verified::Verified;
pub use witness::{
    COSIGNATURE_KEY_TYPE, Cosignature, Cosigner, WitnessKey, add_cosignatures, cosigned_message,
    verify_cosignatures, witness_key_name,
};
