//! Error types, one per operation (`envelope.md` §9).

use std::fmt;
use std::io;

/// Why a header was refused (`envelope.md` §3 to §5, §8).
///
/// Kept deliberately coarse: the message says which rule was broken, never which key bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// The first line is not `age-encryption.org/v1`.
    UnsupportedVersion,
    /// The header does not follow the grammar of `envelope.md` §3 and §4.
    Malformed(&'static str),
    /// The header is larger than the 64 KiB limit, or has more than 64 stanzas.
    TooLarge,
    /// An `X25519` stanza is not well formed (`envelope.md` §5.1).
    InvalidX25519Stanza,
    /// An `mlkem768x25519` stanza is not well formed (`envelope.md` §5.3).
    InvalidHybridStanza,
    /// An X25519 share (alone or as the X25519 half of a hybrid `enc`) gives an all-zero
    /// shared secret (low-order point).
    LowOrderShare,
    /// An `scrypt` stanza is mixed with other stanzas (`envelope.md` §5.2).
    ScryptNotAlone,
    /// The 16-byte payload nonce after the header is missing or short.
    MissingNonce,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedVersion => f.write_str("unsupported age format version"),
            Self::Malformed(what) => write!(f, "malformed header: {what}"),
            Self::TooLarge => f.write_str("header exceeds the size or stanza-count limit"),
            Self::InvalidX25519Stanza => f.write_str("invalid X25519 recipient stanza"),
            Self::InvalidHybridStanza => f.write_str("invalid mlkem768x25519 recipient stanza"),
            Self::LowOrderShare => f.write_str("X25519 share gives an all-zero shared secret"),
            Self::ScryptNotAlone => f.write_str("an scrypt stanza must be the only stanza"),
            Self::MissingNonce => f.write_str("payload nonce missing or truncated"),
        }
    }
}

/// Why ASCII armor was refused (`envelope.md` §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArmorError {
    /// The BEGIN line is missing or is not exactly the age label.
    #[error("missing or wrong BEGIN line")]
    BadBegin,
    /// The END line is missing or is not exactly the age label.
    #[error("missing or wrong END line")]
    BadEnd,
    /// A data line is too long, too short before the last line, empty, or has whitespace.
    #[error("bad line length or whitespace in armored data")]
    BadLine,
    /// A data line is not canonical padded base64, or padding is not at the very end.
    #[error("invalid base64 in armored data")]
    BadBase64,
    /// Something other than whitespace follows the END line.
    #[error("trailing data after END line")]
    TrailingData,
}

/// A payload chunk failed (`envelope.md` §6). Carried inside an [`io::Error`] of kind
/// [`io::ErrorKind::InvalidData`] by the streaming reader; see [`PayloadError::from_io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Chunk `.0` did not authenticate (tampered, truncated, reordered or misplaced).
    #[error("payload chunk {0} failed to authenticate")]
    BadChunk(u64),
    /// The stream ended without a final chunk, after chunk `.0`.
    #[error("payload truncated after chunk {0}")]
    Truncated(u64),
    /// The final chunk is empty but is not the only chunk.
    #[error("payload chunk {0} is an empty final chunk")]
    EmptyLastChunk(u64),
    /// Data follows the final chunk.
    #[error("data after the final payload chunk")]
    TrailingData,
    /// The chunk index overflowed `u64`.
    #[error("payload has too many chunks")]
    TooManyChunks,
}

impl PayloadError {
    /// Recovers a payload error from an error returned by the streaming reader.
    pub fn from_io(e: &io::Error) -> Option<Self> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Self>())
            .copied()
    }

    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

impl ArmorError {
    /// Recovers an armor error from an error returned by the armored reader.
    pub fn from_io(e: &io::Error) -> Option<Self> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Self>())
            .copied()
    }

    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// Why a file could not be opened for decryption (`envelope.md` §9).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// The ASCII armor is invalid.
    #[error("invalid armor: {0}")]
    Armor(ArmorError),
    /// The header is invalid.
    #[error("{0}")]
    Header(HeaderError),
    /// The file is passphrase-encrypted, which Rogatory does not support.
    #[error("passphrase-encrypted (scrypt) files are not supported")]
    UnsupportedScrypt,
    /// No identity could unwrap any recipient stanza.
    #[error("no identity matched any of the file's recipients")]
    NoMatch,
    /// A file key was unwrapped but the header MAC does not match.
    #[error("header MAC mismatch: the header was modified")]
    HeaderMac,
    /// Reading the input failed.
    #[error("read failed: {0}")]
    Io(#[source] io::Error),
}

impl DecryptError {
    /// Maps a read error while parsing, keeping armor errors in their own class.
    pub(crate) fn from_read(e: io::Error) -> Self {
        match ArmorError::from_io(&e) {
            Some(a) => Self::Armor(a),
            None => Self::Io(e),
        }
    }
}

impl From<HeaderError> for DecryptError {
    fn from(e: HeaderError) -> Self {
        Self::Header(e)
    }
}

/// Why a recipient or identity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyParseError {
    /// Not valid Bech32 (bad checksum, mixed case, Bech32m, invalid character).
    #[error("invalid Bech32 encoding")]
    Bech32,
    /// The human-readable prefix is not the expected one.
    #[error("wrong key type prefix (expected {expected})")]
    WrongPrefix {
        /// The prefix that was expected.
        expected: &'static str,
    },
    /// The key has the wrong length, or has non-zero padding bits.
    #[error("wrong key length")]
    Length,
    /// The key decodes but is not a valid key of its type (an ML-KEM-768 encapsulation key
    /// that fails the FIPS 203 modulus check).
    #[error("invalid key")]
    InvalidKey,
}

/// Why encryption could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncryptError {
    /// No recipient was given.
    #[error("no recipients")]
    NoRecipients,
    /// More recipients than a header may hold (`envelope.md` §8).
    #[error("too many recipients (at most 64)")]
    TooManyRecipients,
    /// A recipient key is a low-order point, or cannot be encapsulated to.
    #[error("recipient key is a low-order point or unusable")]
    LowOrderRecipient,
    /// Hybrid post-quantum and classical recipients in one file (`envelope.md` §5.3).
    #[error("post-quantum (age1pq1…) and classical (age1…) recipients cannot be mixed in one file")]
    MixedPostQuantum,
    /// The header would exceed the 64 KiB limit (`envelope.md` §8).
    #[error("too many recipients: the header would exceed 64 KiB")]
    HeaderTooLarge,
    /// Writing the output failed.
    #[error("write failed: {0}")]
    Io(#[from] io::Error),
}
