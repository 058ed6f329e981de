//! Error codes on the wire (`protocol.md` §7) and the crate's error types.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An application error code, carried in ERROR frames, stream resets and connection closes.
///
/// The code's range gives its class, so a peer can classify codes it does not know
/// (`protocol.md` §7): `0x10..=0x1f` retryable, `0x20..=0x2f` refused, `0x30..=0x3f` integrity,
/// everything else a protocol error.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u32);

/// What an error code means for the client: which CLI exit code it maps to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ErrorClass {
    /// Try again later (exit 5).
    Retryable,
    /// Refused by the peer; retrying will not help (exit 6).
    Refused,
    /// Data failed verification (exit 3). Never reported as retryable.
    Integrity,
    /// The peer broke the protocol (exit 6: a peer that does this will do it again).
    Protocol,
}

impl ErrorClass {
    /// The CLI exit code (README "Exit codes").
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorClass::Retryable => 5,
            ErrorClass::Refused | ErrorClass::Protocol => 6,
            ErrorClass::Integrity => 3,
        }
    }
}

macro_rules! codes {
    ($($name:ident = $v:expr, $text:expr;)*) => {
        impl ErrorCode {
            $(#[doc = $text] pub const $name: ErrorCode = ErrorCode($v);)*

            /// The code's name, or `None` for a code this version does not define.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $($v => Some(stringify!($name)),)* _ => None }
            }

            /// Every defined code (for documentation tests).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];
        }
    };
}

codes! {
    NO_ERROR = 0x00, "Clean close.";
    PROTOCOL_VIOLATION = 0x01, "Malformed or non-canonical frame, or a frame not allowed in the current phase.";
    FRAME_TOO_LARGE = 0x02, "A frame's length prefix exceeds the limit for its type; the stream is stopped.";
    UNSUPPORTED_VERSION = 0x03, "No protocol version in common.";
    UNKNOWN_FRAME = 0x04, "A frame type this version does not define.";
    INTERNAL = 0x05, "The peer hit a bug.";
    BUSY = 0x10, "Too many connections or transfers; try later.";
    TIMEOUT = 0x11, "An expected frame did not arrive in time.";
    SHUTTING_DOWN = 0x12, "The relay is shutting down.";
    STORAGE_UNAVAILABLE = 0x13, "The relay cannot write right now (I/O error).";
    NOT_AUTHORISED = 0x20, "The authenticated agency may not do this.";
    UNKNOWN_AGENCY = 0x21, "The agency is not in the peer's trust store.";
    POLICY = 0x22, "Refused by policy (sender, recipient, required legal field).";
    QUOTA = 0x23, "The agency's quota would be exceeded.";
    TOO_LARGE = 0x24, "The transfer exceeds the maximum size.";
    INSUFFICIENT_SPACE = 0x25, "The relay is below its free-space reserve.";
    NOT_FOUND = 0x26, "No such transfer or object.";
    CONFLICT = 0x27, "The transfer id is in use with a different manifest, or a piece conflicts with stored data.";
    NO_LONGER_TRUSTED = 0x28, "The relay reloaded its trust and the agency of this connection is no longer trusted (card removed or TLS key revoked); the connection is closed.";
    INTEGRITY = 0x30, "A piece does not match its table entry or the table does not match `piece_root`.";
    BAD_SEAL = 0x31, "The sealed manifest does not verify or is malformed.";
    DAMAGED = 0x32, "The relay's copy of the transfer is lost or damaged; it is fetchable again once the sender re-sends it.";
}

impl ErrorCode {
    /// The class of this code, by range.
    pub fn class(self) -> ErrorClass {
        match self.0 {
            0x10..=0x1f => ErrorClass::Retryable,
            0x20..=0x2f => ErrorClass::Refused,
            0x30..=0x3f => ErrorClass::Integrity,
            _ => ErrorClass::Protocol,
        }
    }

    /// As a QUIC application error code.
    pub fn to_varint(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self.0)
    }

    /// From a QUIC application error code (codes above `u32::MAX` are protocol errors).
    pub fn from_varint(v: quinn::VarInt) -> Self {
        ErrorCode(u32::try_from(v.into_inner()).unwrap_or(u32::MAX))
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} (0x{:02x})", self.0),
            None => write!(f, "unknown code 0x{:02x}", self.0),
        }
    }
}

/// A frame could not be decoded (`protocol.md` §4).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix exceeds the limit for the frame type; nothing was allocated.
    #[error("{ty} frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Frame type name.
        ty: &'static str,
        /// Announced payload length.
        len: u64,
        /// The limit for this type.
        limit: u64,
    },
    /// A frame type this version does not define.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// A varint in a longer form than necessary.
    #[error("non-minimal varint encoding")]
    NonMinimalVarint,
    /// The payload does not decode, has trailing bytes, or is not in canonical form.
    #[error("malformed {ty} frame: {reason}")]
    Malformed {
        /// Frame type name.
        ty: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

impl FrameError {
    /// The error code a receiver sends for this error: `FRAME_TOO_LARGE` stops just the
    /// stream; the others close the connection (`protocol.md` §4.3).
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            FrameError::UnknownType(_) => ErrorCode::UNKNOWN_FRAME,
            _ => ErrorCode::PROTOCOL_VIOLATION,
        }
    }
}

/// An error reported by the peer or detected locally, with its code.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    /// The code (gives the class and the exit code).
    pub code: ErrorCode,
    /// One line saying what happened.
    pub message: String,
}

impl ProtocolError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_ranges() {
        assert_eq!(ErrorCode::TIMEOUT.class(), ErrorClass::Retryable);
        assert_eq!(ErrorCode::POLICY.class().exit_code(), 6);
        assert_eq!(ErrorCode::INTEGRITY.class().exit_code(), 3);
        assert_eq!(ErrorCode(0x1e).class(), ErrorClass::Retryable);
        assert_eq!(ErrorCode(0x999).class(), ErrorClass::Protocol);
        for c in ErrorCode::ALL {
            assert!(c.name().is_some());
        }
    }
}
