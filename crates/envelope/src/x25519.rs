//! X25519 recipients and identities (`envelope.md` §5.1).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use rand::rngs::OsRng;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::b64::UNPADDED;
use crate::error::{HeaderError, KeyParseError};
use crate::header::Stanza;
use crate::keys::{FILE_KEY_LEN, FileKey, hkdf32};

/// The stanza type of X25519 recipients.
pub(crate) const STANZA_TAG: &str = "X25519";
const KDF_LABEL: &[u8] = b"age-encryption.org/v1/X25519";
const RECIPIENT_HRP: &str = "age";
const IDENTITY_HRP: &str = "AGE-SECRET-KEY-";
/// A wrapped file key: 16 bytes of key plus a 16-byte Poly1305 tag.
const WRAPPED_LEN: usize = FILE_KEY_LEN + 16;

/// An X25519 recipient (`age1…`): a public key that files can be encrypted to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Recipient(PublicKey);

/// An X25519 identity (`AGE-SECRET-KEY-1…`): the secret key that decrypts. Never printed.
/// Its public key is computed once, not for every file it opens (`envelope.md` §5.1 needs it
/// in the HKDF salt of every unwrap).
#[derive(Clone)]
pub struct Identity {
    secret: StaticSecret,
    public: PublicKey,
}

impl Identity {
    /// A fresh identity from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self::from_secret(StaticSecret::random_from_rng(OsRng))
    }

    /// An identity from raw secret scalar bytes (clamped by X25519 as usual).
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        Self::from_secret(StaticSecret::from(bytes))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// The matching recipient.
    pub fn to_public(&self) -> Recipient {
        Recipient(self.public)
    }

    /// The Bech32 encoding, `AGE-SECRET-KEY-1…`. The result is zeroized on drop.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        let bytes = Zeroizing::new(self.secret.to_bytes());
        Zeroizing::new(bech32_encode(IDENTITY_HRP, &bytes[..]).to_uppercase())
    }

    /// Tries to unwrap the file key from the X25519 stanzas in `stanzas`.
    ///
    /// Returns `Ok(None)` when no stanza is for this identity, and an error when an X25519
    /// stanza is malformed or gives an all-zero shared secret: `envelope.md` §5.1 says
    /// decryption then **aborts** rather than trying the next stanza.
    pub(crate) fn unwrap(&self, stanzas: &[Stanza]) -> Result<Option<FileKey>, HeaderError> {
        let ours = self.to_public();
        for stanza in stanzas.iter().filter(|s| s.tag == STANZA_TAG) {
            let share = parse_stanza(stanza)?;
            let shared = Zeroizing::new(self.secret.diffie_hellman(&share).to_bytes());
            if bool::from(shared.ct_eq(&[0u8; 32])) {
                return Err(HeaderError::LowOrderShare);
            }
            let key = wrap_key(&shared, share.as_bytes(), ours.0.as_bytes());
            let mut buf = Zeroizing::new([0u8; FILE_KEY_LEN]);
            buf.copy_from_slice(&stanza.body[..FILE_KEY_LEN]);
            let tag = Tag::from_slice(&stanza.body[FILE_KEY_LEN..]);
            let aead = ChaCha20Poly1305::new(Key::from_slice(&key[..]));
            if aead
                .decrypt_in_place_detached(&Nonce::default(), b"", &mut buf[..], tag)
                .is_ok()
            {
                return Ok(Some(FileKey::from_bytes(*buf)));
            }
        }
        Ok(None)
    }
}

/// `envelope.md` §5.1: "an X25519 stanza MUST have exactly one argument, which decodes to
/// exactly 32 bytes, and a body of exactly 32 bytes".
fn parse_stanza(stanza: &Stanza) -> Result<PublicKey, HeaderError> {
    let [arg] = stanza.args.as_slice() else {
        return Err(HeaderError::InvalidX25519Stanza);
    };
    let mut share = [0u8; 32];
    if arg.len() != 43 || !matches!(UNPADDED.decode_slice(arg, &mut share), Ok(32)) {
        return Err(HeaderError::InvalidX25519Stanza);
    }
    if stanza.body.len() != WRAPPED_LEN {
        return Err(HeaderError::InvalidX25519Stanza);
    }
    Ok(PublicKey::from(share))
}

fn wrap_key(shared: &[u8; 32], share: &[u8; 32], recipient: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(share);
    salt[32..].copy_from_slice(recipient);
    Zeroizing::new(hkdf32(shared, &salt, KDF_LABEL))
}

impl Recipient {
    /// The raw 32-byte public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Wraps `file_key` to this recipient in a fresh `X25519` stanza.
    pub(crate) fn wrap(&self, file_key: &FileKey) -> Option<Stanza> {
        let ephemeral = StaticSecret::random_from_rng(OsRng);
        let share = PublicKey::from(&ephemeral);
        let shared = Zeroizing::new(ephemeral.diffie_hellman(&self.0).to_bytes());
        if bool::from(shared.ct_eq(&[0u8; 32])) {
            return None;
        }
        let key = wrap_key(&shared, share.as_bytes(), self.0.as_bytes());
        let mut body = file_key.expose_secret().to_vec();
        let aead = ChaCha20Poly1305::new(Key::from_slice(&key[..]));
        let tag = aead
            .encrypt_in_place_detached(&Nonce::default(), b"", &mut body)
            .ok()?;
        body.extend_from_slice(&tag);
        Some(Stanza {
            tag: STANZA_TAG.to_owned(),
            args: vec![UNPADDED.encode(share.as_bytes())],
            body,
        })
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bech32_encode(RECIPIENT_HRP, self.0.as_bytes()))
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({self})")
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity(<secret for {}>)", self.to_public())
    }
}

impl FromStr for Recipient {
    type Err = KeyParseError;

    /// Parses `age1…`. Only lowercase is accepted, as age writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(KeyParseError::Bech32);
        }
        let bytes = bech32_decode(s, RECIPIENT_HRP)?;
        Ok(Self(PublicKey::from(*bytes)))
    }
}

impl FromStr for Identity {
    type Err = KeyParseError;

    /// Parses `AGE-SECRET-KEY-1…`. Only uppercase is accepted, as age writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.bytes().any(|c| c.is_ascii_lowercase()) {
            return Err(KeyParseError::Bech32);
        }
        let bytes = bech32_decode(s, IDENTITY_HRP)?;
        Ok(Self::from_secret(StaticSecret::from(*bytes)))
    }
}

fn bech32_encode(hrp: &str, data: &[u8]) -> String {
    // Invariant: both HRPs are valid and 32 bytes fit in a Bech32 string.
    #[allow(clippy::expect_used)]
    let hrp = Hrp::parse(hrp).expect("valid HRP");
    #[allow(clippy::expect_used)]
    bech32::encode::<Bech32>(hrp, data).expect("32 bytes fit in Bech32")
}

fn bech32_decode(s: &str, hrp: &'static str) -> Result<Zeroizing<[u8; 32]>, KeyParseError> {
    let parsed = CheckedHrpstring::new::<Bech32>(s).map_err(|_| KeyParseError::Bech32)?;
    if !parsed.hrp().as_str().eq_ignore_ascii_case(hrp) {
        return Err(KeyParseError::WrongPrefix { expected: hrp });
    }
    parsed
        .validate_segwit_padding()
        .map_err(|_| KeyParseError::Length)?;
    let mut out = Zeroizing::new([0u8; 32]);
    let mut n = 0;
    for b in parsed.byte_iter() {
        *out.get_mut(n).ok_or(KeyParseError::Length)? = b;
        n += 1;
    }
    if n != 32 {
        return Err(KeyParseError::Length);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_text() {
        let id = Identity::generate();
        let text = id.to_secret_string();
        assert!(text.starts_with("AGE-SECRET-KEY-1"));
        let back: Identity = text.parse().expect("parses");
        assert_eq!(back.to_public(), id.to_public());
        let r = id.to_public().to_string();
        assert!(r.starts_with("age1"));
        assert_eq!(r.parse::<Recipient>().expect("parses"), id.to_public());
    }

    #[test]
    fn bad_recipients_are_refused() {
        let r = Identity::generate().to_public().to_string();
        // Checksum error.
        let mut bad = r.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'q' { b'p' } else { b'q' };
        let bad = String::from_utf8(bad).expect("ascii");
        assert_eq!(bad.parse::<Recipient>(), Err(KeyParseError::Bech32));
        // Mixed case, upper case.
        assert!(r.to_uppercase().parse::<Recipient>().is_err());
        // Truncated.
        assert!(r[..r.len() - 5].parse::<Recipient>().is_err());
        // Wrong prefix: an identity is not a recipient.
        let id = Identity::generate().to_secret_string();
        assert!(id.to_lowercase().parse::<Recipient>().is_err());
        assert!(r.parse::<Identity>().is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let id = Identity::generate();
        let secret = id.to_secret_string();
        let shown = format!("{id:?}");
        assert!(!shown.contains(&secret[16..]));
        assert!(shown.contains("age1"));
    }

    #[test]
    fn wrap_unwrap_round_trip_and_wrong_identity() {
        let id = Identity::generate();
        let fk = FileKey::generate();
        let stanza = id.to_public().wrap(&fk).expect("wraps");
        let got = id.unwrap(std::slice::from_ref(&stanza)).expect("ok");
        assert_eq!(got.expect("matches").expose_secret(), fk.expose_secret());
        let other = Identity::generate();
        assert!(other.unwrap(&[stanza]).expect("ok").is_none());
    }

    #[test]
    fn low_order_share_aborts() {
        let id = Identity::generate();
        let stanza = Stanza {
            tag: STANZA_TAG.into(),
            args: vec![UNPADDED.encode([0u8; 32])],
            body: vec![0; 32],
        };
        assert!(matches!(
            id.unwrap(std::slice::from_ref(&stanza)),
            Err(HeaderError::LowOrderShare)
        ));
        // test-plan.md 8: placed before a stanza that would unwrap the file key for this very
        // identity, it still aborts the whole decryption; it is not skipped.
        let fk = FileKey::generate();
        let good = id.to_public().wrap(&fk).expect("wraps");
        assert!(
            id.unwrap(std::slice::from_ref(&good))
                .expect("ok")
                .is_some()
        );
        assert!(matches!(
            id.unwrap(&[stanza, good]),
            Err(HeaderError::LowOrderShare)
        ));
    }
}
