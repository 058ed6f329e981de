//! The `mlkem768x25519` hybrid post-quantum recipient type (`envelope.md` §5.3), as the C2SP age
//! specification defines it ("The MLKEM768-X25519 (i.e. X-Wing) hybrid post-quantum recipient
//! type"): the file key is sealed with HPKE (RFC 9180) in base mode, KEM MLKEM768-X25519
//! (X-Wing, draft-ietf-hpke-pq), KDF HKDF-SHA256, AEAD ChaCha20Poly1305,
//! `info = "age-encryption.org/mlkem768x25519"`, empty `aad`.
//!
//! No primitive is implemented here: HPKE comes from the `hpke` crate, X-Wing (ML-KEM-768 and
//! X25519) from RustCrypto's `x-wing`, `ml-kem` and `x25519-dalek`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Checksum, Hrp};
use hpke::aead::{AeadTag, ChaCha20Poly1305};
use hpke::inout::InOutBuf;
use hpke::kdf::HkdfSha256;
use hpke::kem::XWing;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand::RngCore;
use rand::rngs::OsRng;
use x_wing::TryDecapsulate;
use zeroize::{Zeroize, Zeroizing};

use crate::b64::UNPADDED;
use crate::error::{HeaderError, KeyParseError};
use crate::header::Stanza;
use crate::keys::{FILE_KEY_LEN, FileKey};

/// The stanza type (first argument) of hybrid recipients.
pub(crate) const STANZA_TAG: &str = "mlkem768x25519";
/// The HPKE `info` string.
const INFO: &[u8] = b"age-encryption.org/mlkem768x25519";
const RECIPIENT_HRP: &str = "age1pq";
const IDENTITY_HRP: &str = "AGE-SECRET-KEY-PQ-";
/// The identity: 32 random bytes, expanded into ML-KEM-768 and X25519 keys by X-Wing.
const SEED_LEN: usize = 32;
/// The recipient: an ML-KEM-768 encapsulation key (1184 bytes) then an X25519 key (32 bytes).
const RECIPIENT_LEN: usize = 1216;
/// The HPKE encapsulated key `enc`: ML-KEM-768 ciphertext (1088 bytes) then an X25519 share.
const ENC_LEN: usize = 1120;
/// Canonical unpadded base64 of 1120 bytes.
const ENC_B64_LEN: usize = 1494;
/// The stanza body: the 16-byte file key and the 16-byte Poly1305 tag.
const BODY_LEN: usize = FILE_KEY_LEN + 16;

type Kem = XWing;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;
type PrivateKey = <Kem as hpke::Kem>::PrivateKey;
type PublicKey = <Kem as hpke::Kem>::PublicKey;
type EncappedKey = <Kem as hpke::Kem>::EncappedKey;

/// The Bech32 checksum of BIP 173 (the same generator and residue as [`Bech32`], not Bech32m)
/// without BIP 173's length limit: age encodes the 1216-byte hybrid recipient as a ~1960
/// character Bech32 string. The limit here is what the longest hybrid key needs, rounded up.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum LongBech32 {}

impl Checksum for LongBech32 {
    type MidstateRepr = u32;
    const CODE_LENGTH: usize = 2048;
    const CHECKSUM_LENGTH: usize = <Bech32 as Checksum>::CHECKSUM_LENGTH;
    const GENERATOR_SH: [u32; 5] = <Bech32 as Checksum>::GENERATOR_SH;
    const TARGET_RESIDUE: u32 = <Bech32 as Checksum>::TARGET_RESIDUE;
}

/// A hybrid post-quantum recipient (`age1pq1…`): an X-Wing public key.
#[derive(Clone, PartialEq, Eq)]
pub struct HybridRecipient {
    bytes: Box<[u8; RECIPIENT_LEN]>,
    key: Box<PublicKey>,
}

/// A hybrid post-quantum identity (`AGE-SECRET-KEY-PQ-1…`): a 32-byte X-Wing seed. Never
/// printed; wiped on drop (the seed here, the expanded keys by `hpke`/`x-wing`).
#[derive(Clone)]
pub struct HybridIdentity(Box<IdentityKeys>);

#[derive(Clone)]
struct IdentityKeys {
    seed: Zeroizing<[u8; SEED_LEN]>,
    key: PrivateKey,
    /// The same key in `x-wing`'s form that refuses an all-zero X25519 shared secret.
    strict: x_wing::DecapsulationKeyRejectNonContrib,
    public: HybridRecipient,
}

impl HybridIdentity {
    /// A fresh identity: `identity = read(CSPRNG, 32)` (age.md).
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        OsRng.fill_bytes(&mut seed[..]);
        Self::from_seed(*seed)
    }

    /// The identity of a 32-byte seed (test vectors and deterministic fixtures).
    pub fn from_seed(seed: [u8; SEED_LEN]) -> Self {
        let seed = Zeroizing::new(seed);
        // Invariant: hpke's X-Wing private key is any 32-byte string.
        #[allow(clippy::expect_used)]
        let key = PrivateKey::from_bytes(&seed[..]).expect("a 32-byte X-Wing seed");
        let public = recipient_from_key(Kem::sk_to_pk(&key));
        Self(Box::new(IdentityKeys {
            strict: x_wing::DecapsulationKeyRejectNonContrib::from(*seed),
            seed,
            key,
            public,
        }))
    }

    /// The matching recipient (`PrivateKeyToPublicKey` of X-Wing).
    pub fn to_public(&self) -> HybridRecipient {
        self.0.public.clone()
    }

    /// The Bech32 encoding, `AGE-SECRET-KEY-PQ-1…`. The result is zeroized on drop.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        let mut lower = bech32_encode(IDENTITY_HRP, &self.0.seed[..]);
        let upper = Zeroizing::new(lower.to_uppercase());
        lower.zeroize();
        upper
    }

    /// Tries to unwrap the file key from the `mlkem768x25519` stanzas in `stanzas`.
    ///
    /// `Ok(None)` when no stanza is for this identity (other types are ignored, as age.md
    /// requires). A malformed hybrid stanza, or one whose X25519 half gives the all-zero
    /// shared secret, is an error that aborts decryption (`envelope.md` §5.3).
    pub(crate) fn unwrap(&self, stanzas: &[Stanza]) -> Result<Option<FileKey>, HeaderError> {
        for stanza in stanzas.iter().filter(|s| s.tag == STANZA_TAG) {
            let enc_bytes = parse_stanza(stanza)?;
            // RFC 7748 §6.1 / x-wing: refuse non-contributory X25519 (low-order share), as
            // age's reference implementation and the CCTV vectors do.
            let ct = x_wing::Ciphertext::try_from(&enc_bytes[..])
                .map_err(|_| HeaderError::InvalidHybridStanza)?;
            match self.0.strict.try_decapsulate(&ct) {
                Ok(mut ss) => ss.as_mut_slice().zeroize(),
                Err(_) => return Err(HeaderError::LowOrderShare),
            }
            let enc = EncappedKey::from_bytes(&enc_bytes[..])
                .map_err(|_| HeaderError::InvalidHybridStanza)?;
            let tag = AeadTag::<Aead>::from_bytes(&stanza.body[FILE_KEY_LEN..])
                .map_err(|_| HeaderError::InvalidHybridStanza)?;
            let mut buf = Zeroizing::new([0u8; FILE_KEY_LEN]);
            buf.copy_from_slice(&stanza.body[..FILE_KEY_LEN]);
            let opened = hpke::single_shot_open_inout_detached::<Aead, Kdf, Kem>(
                &OpModeR::Base,
                &self.0.key,
                &enc,
                INFO,
                InOutBuf::from(&mut buf[..]),
                b"",
                &tag,
            );
            if opened.is_ok() {
                return Ok(Some(FileKey::from_bytes(*buf)));
            }
        }
        Ok(None)
    }
}

/// age.md: "MUST otherwise reject any stanza that has more or less than two arguments, or where
/// the second argument is not a canonical base64 encoding of a 1120-byte value. It MUST check
/// that the body length is exactly 32 bytes before attempting to decrypt it".
fn parse_stanza(stanza: &Stanza) -> Result<Box<[u8; ENC_LEN]>, HeaderError> {
    let [arg] = stanza.args.as_slice() else {
        return Err(HeaderError::InvalidHybridStanza);
    };
    let mut enc = Box::new([0u8; ENC_LEN]);
    if arg.len() != ENC_B64_LEN || !matches!(UNPADDED.decode_slice(arg, &mut enc[..]), Ok(ENC_LEN))
    {
        return Err(HeaderError::InvalidHybridStanza);
    }
    if stanza.body.len() != BODY_LEN {
        return Err(HeaderError::InvalidHybridStanza);
    }
    Ok(enc)
}

fn recipient_from_key(key: PublicKey) -> HybridRecipient {
    let mut bytes = Box::new([0u8; RECIPIENT_LEN]);
    bytes.copy_from_slice(&key.to_bytes());
    HybridRecipient {
        bytes,
        key: Box::new(key),
    }
}

impl HybridRecipient {
    /// The raw 1216-byte X-Wing public key.
    pub fn as_bytes(&self) -> &[u8; RECIPIENT_LEN] {
        &self.bytes
    }

    /// Wraps `file_key` to this recipient in a fresh `mlkem768x25519` stanza (HPKE SealBase).
    pub(crate) fn wrap(&self, file_key: &FileKey) -> Option<Stanza> {
        let mut buf = Zeroizing::new(*file_key.expose_secret());
        let (enc, tag) = hpke::single_shot_seal_inout_detached::<Aead, Kdf, Kem>(
            &OpModeS::Base,
            &self.key,
            INFO,
            InOutBuf::from(&mut buf[..]),
            b"",
        )
        .ok()?;
        let mut body = buf.to_vec();
        body.extend_from_slice(&tag.to_bytes());
        Some(Stanza {
            tag: STANZA_TAG.to_owned(),
            args: vec![UNPADDED.encode(enc.to_bytes())],
            body,
        })
    }
}

impl fmt::Display for HybridRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bech32_encode(RECIPIENT_HRP, &self.bytes[..]))
    }
}

impl fmt::Debug for HybridRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.to_string();
        write!(f, "HybridRecipient({}…{})", &s[..16], &s[s.len() - 8..])
    }
}

impl fmt::Debug for HybridIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HybridIdentity(<secret for {:?}>)", self.0.public)
    }
}

impl FromStr for HybridRecipient {
    type Err = KeyParseError;

    /// Parses `age1pq1…`. Only lowercase is accepted, as age writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(KeyParseError::Bech32);
        }
        let bytes = bech32_decode(s, RECIPIENT_HRP, RECIPIENT_LEN)?;
        // ML-KEM encapsulation keys must pass FIPS 203's modulus check.
        let key = PublicKey::from_bytes(&bytes[..]).map_err(|_| KeyParseError::InvalidKey)?;
        Ok(recipient_from_key(key))
    }
}

impl FromStr for HybridIdentity {
    type Err = KeyParseError;

    /// Parses `AGE-SECRET-KEY-PQ-1…`. Only uppercase is accepted, as age writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.bytes().any(|c| c.is_ascii_lowercase()) {
            return Err(KeyParseError::Bech32);
        }
        let bytes = bech32_decode(s, IDENTITY_HRP, SEED_LEN)?;
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        seed.copy_from_slice(&bytes);
        Ok(Self::from_seed(*seed))
    }
}

fn bech32_encode(hrp: &str, data: &[u8]) -> String {
    // Invariant: both HRPs are valid and both key sizes fit in `LongBech32::CODE_LENGTH`.
    #[allow(clippy::expect_used)]
    let hrp = Hrp::parse(hrp).expect("valid HRP");
    #[allow(clippy::expect_used)]
    bech32::encode::<LongBech32>(hrp, data).expect("hybrid keys fit")
}

fn bech32_decode(
    s: &str,
    hrp: &'static str,
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, KeyParseError> {
    let parsed = CheckedHrpstring::new::<LongBech32>(s).map_err(|_| KeyParseError::Bech32)?;
    if !parsed.hrp().as_str().eq_ignore_ascii_case(hrp) {
        return Err(KeyParseError::WrongPrefix { expected: hrp });
    }
    parsed
        .validate_segwit_padding()
        .map_err(|_| KeyParseError::Length)?;
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    for b in parsed.byte_iter() {
        if out.len() == len {
            return Err(KeyParseError::Length);
        }
        out.push(b);
    }
    if out.len() != len {
        return Err(KeyParseError::Length);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_text() {
        let id = HybridIdentity::generate();
        let text = id.to_secret_string();
        assert!(text.starts_with("AGE-SECRET-KEY-PQ-1"));
        let back: HybridIdentity = text.parse().expect("parses");
        assert!(back.to_public() == id.to_public());
        let r = id.to_public().to_string();
        assert!(r.starts_with("age1pq1"));
        assert!(r.parse::<HybridRecipient>().expect("parses") == id.to_public());
    }

    /// age.md's example identity and the first characters of its recipient.
    #[test]
    fn spec_example_key_derives_the_spec_recipient() {
        let id: HybridIdentity =
            "AGE-SECRET-KEY-PQ-1XX76JRALNLXDMEW0CRK45QMCCH4X06SE84UN3VPM33W6HWDX0H3SK3ZQFR"
                .parse()
                .expect("spec identity parses");
        let r = id.to_public().to_string();
        assert!(
            r.starts_with("age1pq1x34nzsvr0rxjsgdn8zgyhfe8j7ceq5r9rdelkjuh3y235jzxshfg87pzf5"),
            "{r}"
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        let r = HybridIdentity::generate().to_public().to_string();
        let mut bad = r.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'q' { b'p' } else { b'q' };
        let bad = String::from_utf8(bad).expect("ascii");
        assert_eq!(
            bad.parse::<HybridRecipient>().err(),
            Some(KeyParseError::Bech32)
        );
        assert!(r.to_uppercase().parse::<HybridRecipient>().is_err());
        assert!(r[..r.len() - 5].parse::<HybridRecipient>().is_err());
        // An X25519 recipient is not a hybrid one, and the reverse.
        let x = crate::Identity::generate().to_public().to_string();
        assert!(x.parse::<HybridRecipient>().is_err());
        assert!(r.parse::<crate::Recipient>().is_err());
        // Identities are not recipients.
        let id = HybridIdentity::generate().to_secret_string();
        assert!(id.to_lowercase().parse::<HybridRecipient>().is_err());
        assert!(r.parse::<HybridIdentity>().is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let id = HybridIdentity::generate();
        let secret = id.to_secret_string();
        let shown = format!("{id:?}");
        assert!(!shown.contains(&secret[20..40]));
        assert!(shown.contains("age1pq1"));
    }

    #[test]
    fn wrap_unwrap_round_trip_and_wrong_identity() {
        let id = HybridIdentity::generate();
        let fk = FileKey::generate();
        let stanza = id.to_public().wrap(&fk).expect("wraps");
        assert_eq!(stanza.args[0].len(), ENC_B64_LEN);
        assert_eq!(stanza.body.len(), BODY_LEN);
        let got = id.unwrap(std::slice::from_ref(&stanza)).expect("ok");
        assert_eq!(got.expect("matches").expose_secret(), fk.expose_secret());
        let other = HybridIdentity::generate();
        assert!(other.unwrap(&[stanza]).expect("ok").is_none());
    }

    #[test]
    fn malformed_stanzas_abort() {
        let id = HybridIdentity::generate();
        let good = id.to_public().wrap(&FileKey::generate()).expect("wraps");
        let mut extra = good.clone();
        extra.args.push("x".into());
        let mut long_body = good.clone();
        long_body.body.push(0);
        let mut short_enc = good.clone();
        short_enc.args[0].truncate(ENC_B64_LEN - 4);
        for bad in [extra, long_body, short_enc] {
            assert_eq!(
                id.unwrap(&[bad]).err(),
                Some(HeaderError::InvalidHybridStanza)
            );
        }
        // An all-zero X25519 share: the X25519 half is non-contributory.
        let mut enc = [0u8; ENC_LEN];
        UNPADDED
            .decode_slice(&good.args[0], &mut enc[..])
            .expect("decodes");
        enc[ENC_LEN - 32..].fill(0);
        let mut low = good.clone();
        low.args[0] = UNPADDED.encode(enc);
        assert_eq!(id.unwrap(&[low]).err(), Some(HeaderError::LowOrderShare));
    }
}
