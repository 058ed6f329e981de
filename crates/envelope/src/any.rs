//! Recipients and identities of either native type we support (`envelope.md` §5): X25519
//! (`age1…`, `AGE-SECRET-KEY-1…`) and the hybrid post-quantum `mlkem768x25519` (`age1pq1…`,
//! `AGE-SECRET-KEY-PQ-1…`), and the two traits [`Encryptor`](crate::Encryptor) and
//! [`Decryptor`](crate::Decryptor) take.

use std::fmt;
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::error::{HeaderError, KeyParseError};
use crate::header::Stanza;
use crate::hybrid::{HybridIdentity, HybridRecipient};
use crate::keys::FileKey;
use crate::x25519::{Identity, Recipient};

/// The Bech32 prefix (HRP and separator) of hybrid recipients. No X25519 recipient starts with
/// it: `1` is not a Bech32 data character.
const HYBRID_RECIPIENT_PREFIX: &str = "age1pq1";
/// The Bech32 prefix of hybrid identities (`-` is not a Bech32 data character either).
const HYBRID_IDENTITY_PREFIX: &str = "AGE-SECRET-KEY-PQ-1";

mod sealed {
    use super::*;

    /// What the envelope needs from a recipient; implemented in this crate only.
    pub trait WrapFileKey {
        /// A fresh stanza wrapping `file_key`, `None` if this recipient key is unusable.
        fn wrap_file_key(&self, file_key: &FileKey) -> Option<Stanza>;
        /// Whether this recipient type resists a quantum computer (age's "postquantum" label).
        fn post_quantum(&self) -> bool;
    }

    /// What the envelope needs from an identity; implemented in this crate only.
    pub trait UnwrapFileKey {
        /// The file key from the stanzas addressed to this identity, if any (`envelope.md` §5).
        fn unwrap_file_key(&self, stanzas: &[Stanza]) -> Result<Option<FileKey>, HeaderError>;
    }
}

/// A recipient files can be encrypted to: [`Recipient`] (X25519), [`HybridRecipient`] or
/// [`AnyRecipient`].
pub trait RecipientKey: sealed::WrapFileKey {}

/// An identity that can decrypt: [`Identity`] (X25519), [`HybridIdentity`] or [`AnyIdentity`].
pub trait IdentityKey: sealed::UnwrapFileKey {}

impl sealed::WrapFileKey for Recipient {
    fn wrap_file_key(&self, file_key: &FileKey) -> Option<Stanza> {
        self.wrap(file_key)
    }
    fn post_quantum(&self) -> bool {
        false
    }
}
impl RecipientKey for Recipient {}

impl sealed::WrapFileKey for HybridRecipient {
    fn wrap_file_key(&self, file_key: &FileKey) -> Option<Stanza> {
        self.wrap(file_key)
    }
    fn post_quantum(&self) -> bool {
        true
    }
}
impl RecipientKey for HybridRecipient {}

impl sealed::UnwrapFileKey for Identity {
    fn unwrap_file_key(&self, stanzas: &[Stanza]) -> Result<Option<FileKey>, HeaderError> {
        self.unwrap(stanzas)
    }
}
impl IdentityKey for Identity {}

impl sealed::UnwrapFileKey for HybridIdentity {
    fn unwrap_file_key(&self, stanzas: &[Stanza]) -> Result<Option<FileKey>, HeaderError> {
        self.unwrap(stanzas)
    }
}
impl IdentityKey for HybridIdentity {}

/// An X25519 or a hybrid recipient, parsed from `age1…` or `age1pq1…`.
#[derive(Clone, PartialEq, Eq)]
pub enum AnyRecipient {
    /// `age1…`
    X25519(Recipient),
    /// `age1pq1…`
    Hybrid(HybridRecipient),
}

impl AnyRecipient {
    /// Whether this is the hybrid post-quantum type.
    pub fn is_post_quantum(&self) -> bool {
        matches!(self, Self::Hybrid(_))
    }
}

impl sealed::WrapFileKey for AnyRecipient {
    fn wrap_file_key(&self, file_key: &FileKey) -> Option<Stanza> {
        match self {
            Self::X25519(r) => r.wrap(file_key),
            Self::Hybrid(r) => r.wrap(file_key),
        }
    }
    fn post_quantum(&self) -> bool {
        self.is_post_quantum()
    }
}
impl RecipientKey for AnyRecipient {}

impl From<Recipient> for AnyRecipient {
    fn from(r: Recipient) -> Self {
        Self::X25519(r)
    }
}

impl From<HybridRecipient> for AnyRecipient {
    fn from(r: HybridRecipient) -> Self {
        Self::Hybrid(r)
    }
}

impl FromStr for AnyRecipient {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with(HYBRID_RECIPIENT_PREFIX) {
            s.parse().map(Self::Hybrid)
        } else {
            s.parse().map(Self::X25519)
        }
    }
}

impl fmt::Display for AnyRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::X25519(r) => r.fmt(f),
            Self::Hybrid(r) => r.fmt(f),
        }
    }
}

impl fmt::Debug for AnyRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::X25519(r) => r.fmt(f),
            Self::Hybrid(r) => r.fmt(f),
        }
    }
}

/// An X25519 or a hybrid identity, parsed from `AGE-SECRET-KEY-1…` or `AGE-SECRET-KEY-PQ-1…`.
#[derive(Clone)]
pub enum AnyIdentity {
    /// `AGE-SECRET-KEY-1…`
    X25519(Identity),
    /// `AGE-SECRET-KEY-PQ-1…`
    Hybrid(HybridIdentity),
}

impl AnyIdentity {
    /// The matching recipient.
    pub fn to_public(&self) -> AnyRecipient {
        match self {
            Self::X25519(i) => AnyRecipient::X25519(i.to_public()),
            Self::Hybrid(i) => AnyRecipient::Hybrid(i.to_public()),
        }
    }

    /// The Bech32 encoding. The result is zeroized on drop.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        match self {
            Self::X25519(i) => i.to_secret_string(),
            Self::Hybrid(i) => i.to_secret_string(),
        }
    }
}

impl sealed::UnwrapFileKey for AnyIdentity {
    fn unwrap_file_key(&self, stanzas: &[Stanza]) -> Result<Option<FileKey>, HeaderError> {
        match self {
            Self::X25519(i) => i.unwrap(stanzas),
            Self::Hybrid(i) => i.unwrap(stanzas),
        }
    }
}
impl IdentityKey for AnyIdentity {}

impl From<Identity> for AnyIdentity {
    fn from(i: Identity) -> Self {
        Self::X25519(i)
    }
}

impl From<HybridIdentity> for AnyIdentity {
    fn from(i: HybridIdentity) -> Self {
        Self::Hybrid(i)
    }
}

impl FromStr for AnyIdentity {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with(HYBRID_IDENTITY_PREFIX) {
            s.parse().map(Self::Hybrid)
        } else {
            s.parse().map(Self::X25519)
        }
    }
}

impl fmt::Debug for AnyIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::X25519(i) => i.fmt(f),
            Self::Hybrid(i) => i.fmt(f),
        }
    }
}

/// Whether `recipients` mix hybrid and classical types, which age forbids in one file: a
/// classical stanza beside a hybrid one would leave the file open to a quantum attacker.
pub(crate) fn mixes_post_quantum<R: RecipientKey>(recipients: &[R]) -> bool {
    recipients.iter().any(|r| r.post_quantum()) && recipients.iter().any(|r| !r.post_quantum())
}

pub(crate) fn wrap<R: RecipientKey>(r: &R, file_key: &FileKey) -> Option<Stanza> {
    sealed::WrapFileKey::wrap_file_key(r, file_key)
}

pub(crate) fn unwrap<I: IdentityKey>(
    i: &I,
    stanzas: &[Stanza],
) -> Result<Option<FileKey>, HeaderError> {
    sealed::UnwrapFileKey::unwrap_file_key(i, stanzas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_dispatches_on_the_prefix() {
        let x = Identity::generate();
        let h = HybridIdentity::generate();
        let any_x: AnyIdentity = x.to_secret_string().parse().expect("x25519");
        let any_h: AnyIdentity = h.to_secret_string().parse().expect("hybrid");
        assert!(matches!(any_x, AnyIdentity::X25519(_)));
        assert!(matches!(any_h, AnyIdentity::Hybrid(_)));
        assert_eq!(any_x.to_public().to_string(), x.to_public().to_string());
        let rx: AnyRecipient = x.to_public().to_string().parse().expect("x25519");
        let rh: AnyRecipient = h.to_public().to_string().parse().expect("hybrid");
        assert!(!rx.is_post_quantum());
        assert!(rh.is_post_quantum());
        assert!(rh == any_h.to_public());
        assert!("age1pq1qqqq".parse::<AnyRecipient>().is_err());
    }

    #[test]
    fn mixing_is_detected() {
        let x = AnyRecipient::from(Identity::generate().to_public());
        let h = AnyRecipient::from(HybridIdentity::generate().to_public());
        assert!(!mixes_post_quantum(&[x.clone(), x.clone()]));
        assert!(!mixes_post_quantum(&[h.clone(), h.clone()]));
        assert!(mixes_post_quantum(&[x.clone(), h.clone()]));
        assert!(mixes_post_quantum(&[h, x]));
    }
}
