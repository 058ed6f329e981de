//! The `mlkem768x25519` hybrid post-quantum recipient type (`envelope.md` §5.3), as the C2SP age
//! specification defines it ("The MLKEM768-X25519 (i.e. X-Wing) hybrid post-quantum recipient
//! type"): the file key is sealed with HPKE (RFC 9180) in base mode, KEM MLKEM768-X25519
//! (X-Wing, draft-ietf-hpke-pq), KDF HKDF-SHA256, AEAD ChaCha20Poly1305,
//! `info = "age-encryption.org/mlkem768x25519"`, empty `aad`.
//!
//! HPKE (its key schedule and AEAD) comes from the `hpke` crate; the per-stanza ML-KEM-768 and
//! X25519 from aws-lc (`aws-lc-rs`), several times faster than RustCrypto's here; ML-KEM-768 key
//! generation from a seed from RustCrypto's `ml-kem` (aws-lc has none), the X25519 public key
//! from `x25519-dalek`, SHAKE256 and SHA3-256 from `shake` and `sha3`. Wrapping and unwrapping
//! use [`ExpandedXWing`], `hpke`'s X-Wing KEM (same KEM ID, keys, `enc` and shared secret) with
//! the identity's keys expanded once: `hpke`'s own X-Wing private key is the 32-byte seed and
//! `x-wing` 0.1 re-derives the ML-KEM-768 and X25519 keys from it (an ML-KEM key generation and
//! an X25519 base-point multiplication) on every decapsulation. The only X-Wing code written
//! here is the seed expansion, `Encapsulate`, `Decapsulate` and the SHA3-256 combiner of
//! draft-connolly-cfrg-xwing-kem-06, a few lines each; unit tests check them against `x-wing`
//! and `hpke`, the CCTV vectors check decryption and the interoperability tests with
//! `age-encryption` both directions.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use aws_lc_rs::agreement::{self as lc_agreement, X25519 as LC_X25519};
use aws_lc_rs::kem::{self as lc_kem, ML_KEM_768 as LC_ML_KEM_768};

use base64::Engine as _;
use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Checksum, Hrp};
use hpke::aead::{AeadTag, ChaCha20Poly1305};
use hpke::hybrid_array::typenum::{U32, Unsigned};
use hpke::inout::InOutBuf;
use hpke::kdf::HkdfSha256;
use hpke::kem::{SharedSecret, XWing};
use hpke::rand_core::CryptoRng;
use hpke::{Deserializable, HpkeError, Kem as _, OpModeR, OpModeS, Serializable};
use ml_kem::{KeyExport as _, ml_kem_768};
use rand::RngCore;
use rand::rngs::OsRng;
use sha3::{Digest as _, Sha3_256};
use shake::{ExtendableOutput as _, Shake256, Update as _, XofReader as _};
use subtle::{Choice, ConstantTimeEq};
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
/// The ML-KEM-768 encapsulation key, the first part of the recipient.
const MLKEM_EK_LEN: usize = 1184;
/// The HPKE encapsulated key `enc`: ML-KEM-768 ciphertext (1088 bytes) then an X25519 share.
const ENC_LEN: usize = 1120;
/// The ML-KEM-768 ciphertext, the first part of `enc`.
const MLKEM_CT_LEN: usize = 1088;
/// Canonical unpadded base64 of 1120 bytes.
const ENC_B64_LEN: usize = 1494;
/// The stanza body: the 16-byte file key and the 16-byte Poly1305 tag.
const BODY_LEN: usize = FILE_KEY_LEN + 16;
/// X-Wing's `XWingLabel`, the last input of its combiner (draft-connolly-cfrg-xwing-kem-06):
/// the ASCII characters `\.//^\`.
const XWING_LABEL: &[u8; 6] = br"\.//^\";

type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;
type PublicKey = <XWing as hpke::Kem>::PublicKey;
type EncappedKey = <XWing as hpke::Kem>::EncappedKey;

/// The X-Wing KEM of `hpke` (same `KEM_ID`, keys, `enc` and shared secret as [`XWing`]), whose
/// private key is kept expanded ([`ExpandedKey`]) so that a decapsulation is one ML-KEM-768
/// decapsulation, one X25519 and one SHA3-256, and that refuses a non-contributory X25519 share
/// before anything else. `hpke` then runs its own RFC 9180 key schedule and AEAD on the shared
/// secret. Encapsulation is X-Wing's `Encapsulate`, with aws-lc's ML-KEM-768 and X25519 ([`encapsulate`]).
///
/// `hpke::Kem` is a public trait, but `Kem::decap` and `SharedSecret` are `#[doc(hidden)]`: an
/// `hpke` release that changes them breaks the build here (never behaviour: the CCTV vectors and
/// the unit tests below pin the results).
#[derive(Debug)]
enum ExpandedXWing {}

/// An X-Wing private key (the 32-byte seed, which is what serializes) with the keys that
/// `expandDecapsulationKey` derives from it. Every secret is wiped on drop: the seed by
/// [`Zeroizing`], the ML-KEM-768 key by `ml-kem` (feature `zeroize`), the aws-lc keys by aws-lc
/// when freed (the X25519 key is only there).
#[derive(Clone)]
struct ExpandedKey {
    seed: Zeroizing<[u8; SEED_LEN]>,
    /// The ML-KEM-768 encapsulation key (public; the private key is only in `lc`).
    mlkem_ek: Box<[u8; MLKEM_EK_LEN]>,
    x25519_public: x25519_dalek_3::PublicKey,
    /// The same two private keys in aws-lc, which decapsulates (`envelope.md` §5.3).
    lc: Arc<LcKeys>,
}

/// aws-lc's ML-KEM-768 and X25519, several times faster than the RustCrypto ones on the
/// development machine (ML-KEM-768 encapsulation 12 against 103 µs, decapsulation 26 against
/// 101 µs; X25519 32 against 70 µs): the per-file key work of a bulk send or fetch. `ml-kem`
/// still derives the keys from the seed (aws-lc has no `KeyGen_internal(d, z)`), and the CCTV
/// vectors and the tests below pin the results against `x-wing` and `hpke`.
struct LcKeys {
    mlkem: lc_kem::DecapsulationKey<lc_kem::AlgorithmId>,
    x25519: lc_agreement::PrivateKey,
}

impl ExpandedKey {
    /// draft-connolly-cfrg-xwing-kem-06, `expandDecapsulationKey(sk)`:
    ///
    /// ```text
    /// expanded = SHAKE256(sk, 96)
    /// (pk_M, sk_M) = ML-KEM-768.KeyGen_internal(expanded[0:32], expanded[32:64])
    /// sk_X = expanded[64:96]
    /// pk_X = X25519(sk_X, X25519_BASE)
    /// ```
    fn from_seed(seed: &[u8; SEED_LEN]) -> Self {
        let mut expanded = Zeroizing::new([0u8; 96]);
        let mut xof = Shake256::default();
        xof.update(&seed[..]);
        xof.finalize_xof().read(&mut expanded[..]);
        // `KeyGen_internal(d, z)` with `d || z` = `expanded[0:64]`, ML-KEM's 64-byte seed form.
        let mut mlkem_seed = ml_kem::Seed::default();
        mlkem_seed.copy_from_slice(&expanded[..64]);
        let mlkem = ml_kem_768::DecapsulationKey::from_seed(mlkem_seed);
        mlkem_seed.as_mut_slice().zeroize();
        let mut x25519_seed = Zeroizing::new([0u8; 32]);
        x25519_seed.copy_from_slice(&expanded[64..]);
        let x25519 = x25519_dalek_3::StaticSecret::from(*x25519_seed);
        let x25519_public = x25519_dalek_3::PublicKey::from(&x25519);
        // FIPS 203's 2400-byte decapsulation key, the form aws-lc imports.
        #[allow(deprecated)]
        let mut dk = ml_kem::ExpandedKeyEncoding::to_expanded_bytes(&mlkem);
        let lc_mlkem = lc_kem::DecapsulationKey::new(&LC_ML_KEM_768, &dk[..]);
        dk.as_mut_slice().zeroize();
        let mut mlkem_ek = Box::new([0u8; MLKEM_EK_LEN]);
        mlkem_ek.copy_from_slice(&mlkem.encapsulation_key().to_bytes());
        // `ml-kem` wipes its copy of the private key when dropped (feature `zeroize`).
        drop(mlkem);
        let lc_x25519 = lc_agreement::PrivateKey::from_private_key(&LC_X25519, &x25519_seed[..]);
        // Invariant: a 2400-byte ML-KEM-768 key and a 32-byte X25519 key are the sizes aws-lc
        // takes; only an allocation failure could refuse them.
        #[allow(clippy::expect_used)]
        let lc = Arc::new(LcKeys {
            mlkem: lc_mlkem.expect("aws-lc takes a 2400-byte ML-KEM-768 key"),
            x25519: lc_x25519.expect("aws-lc takes a 32-byte X25519 key"),
        });
        Self {
            seed: Zeroizing::new(*seed),
            mlkem_ek,
            x25519_public,
            lc,
        }
    }

    /// The X-Wing public key `pk_M || pk_X` (`PrivateKeyToPublicKey`).
    fn public_bytes(&self) -> Box<[u8; RECIPIENT_LEN]> {
        let mut bytes = Box::new([0u8; RECIPIENT_LEN]);
        bytes[..MLKEM_EK_LEN].copy_from_slice(&self.mlkem_ek[..]);
        bytes[MLKEM_EK_LEN..].copy_from_slice(self.x25519_public.as_bytes());
        bytes
    }

    /// draft-connolly-cfrg-xwing-kem-06, `Decapsulate(ct, sk)` with the keys already expanded,
    /// and `Combiner(ss_M, ss_X, ct_X, pk_X) = SHA3-256(ss_M || ss_X || ct_X || pk_X ||
    /// XWingLabel)`:
    ///
    /// ```text
    /// ct_M = ct[0:1088]
    /// ct_X = ct[1088:1120]
    /// ss_M = ML-KEM-768.Decaps(sk_M, ct_M)
    /// ss_X = X25519(sk_X, ct_X)
    /// return Combiner(ss_M, ss_X, ct_X, pk_X)
    /// ```
    ///
    /// The X25519 half is computed first (the result does not depend on the order) so that it
    /// returns `None`, before any other work, when `ss_X` is all zeros (a low-order `ct_X`):
    /// RFC 7748 §6.1's optional check, which age's reference implementation and the CCTV
    /// vectors make, as `x-wing`'s `DecapsulationKeyRejectNonContrib` does.
    fn decapsulate(&self, ct: &[u8; ENC_LEN]) -> Option<Zeroizing<[u8; 32]>> {
        let (ct_m, ct_x) = ct.split_at(MLKEM_CT_LEN);
        let ss_x = x25519_secret(|keep| {
            lc_agreement::agree(
                &self.lc.x25519,
                lc_agreement::UnparsedPublicKey::new(&LC_X25519, ct_x),
                (),
                |k| keep(k),
            )
        })?;
        // A 1088-byte ciphertext always decapsulates (implicit rejection, FIPS 203).
        let ss_m = self
            .lc
            .mlkem
            .decapsulate(lc_kem::Ciphertext::from(ct_m))
            .ok()?;
        Some(combine(
            ss_m.as_ref(),
            &ss_x[..],
            ct_x,
            self.x25519_public.as_bytes(),
        ))
    }
}

/// Runs an aws-lc X25519 agreement (`run` is given what keeps the shared secret) and returns
/// the secret, or `None` if aws-lc refuses the agreement or the secret is all zeros (RFC 7748
/// §6.1: aws-lc refuses that itself; checked again here).
fn x25519_secret<F>(run: F) -> Option<Zeroizing<[u8; 32]>>
where
    F: FnOnce(&mut dyn FnMut(&[u8]) -> Result<(), ()>) -> Result<(), ()>,
{
    let mut ss = Zeroizing::new([0u8; 32]);
    let mut keep = |k: &[u8]| {
        if k.len() != 32 {
            return Err(());
        }
        ss.copy_from_slice(k);
        Ok(())
    };
    run(&mut keep).ok()?;
    if bool::from(ss[..].ct_eq(&[0u8; 32][..])) {
        return None;
    }
    Some(ss)
}

/// X-Wing's `Combiner(ss_M, ss_X, ct_X, pk_X) = SHA3-256(ss_M || ss_X || ct_X || pk_X ||
/// XWingLabel)` (draft-connolly-cfrg-xwing-kem-06).
fn combine(ss_m: &[u8], ss_x: &[u8], ct_x: &[u8], pk_x: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut combined = Sha3_256::new()
        .chain_update(ss_m)
        .chain_update(ss_x)
        .chain_update(ct_x)
        .chain_update(pk_x)
        .chain_update(XWING_LABEL)
        .finalize();
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&combined[..]);
    combined.as_mut_slice().zeroize();
    out
}

/// draft-connolly-cfrg-xwing-kem-06, `Encapsulate(pk)`, with aws-lc's ML-KEM-768 and X25519
/// and fresh randomness from aws-lc:
///
/// ```text
/// pk_M = pk[0:1184]
/// pk_X = pk[1184:1216]
/// ek_X = random(32)
/// ct_X = X25519(ek_X, X25519_BASE)
/// ss_X = X25519(ek_X, pk_X)
/// (ss_M, ct_M) = ML-KEM-768.Encaps(pk_M)
/// return (Combiner(ss_M, ss_X, ct_X, pk_X), ct_M || ct_X)
/// ```
///
/// `None` if aws-lc refuses the key (not an ML-KEM-768 key, or an X25519 key whose shared
/// secret is all zeros).
fn encapsulate(pk: &[u8]) -> Option<(Zeroizing<[u8; 32]>, [u8; ENC_LEN])> {
    if pk.len() != RECIPIENT_LEN {
        return None;
    }
    let (pk_m, pk_x) = pk.split_at(MLKEM_EK_LEN);
    let (ct_m, ss_m) = lc_kem::EncapsulationKey::new(&LC_ML_KEM_768, pk_m)
        .ok()?
        .encapsulate()
        .ok()?;
    // aws-lc draws the ephemeral key from its own DRBG; the `SecureRandom` argument is
    // required by the API and not used for X25519.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let ek_x = lc_agreement::EphemeralPrivateKey::generate(&LC_X25519, &rng).ok()?;
    let ct_x = ek_x.compute_public_key().ok()?;
    let ss_x = x25519_secret(|keep| {
        lc_agreement::agree_ephemeral(
            ek_x,
            lc_agreement::UnparsedPublicKey::new(&LC_X25519, pk_x),
            (),
            |k| keep(k),
        )
    })?;
    let mut enc = [0u8; ENC_LEN];
    let ct_m = ct_m.as_ref();
    if ct_m.len() != MLKEM_CT_LEN || ct_x.as_ref().len() != 32 {
        return None;
    }
    enc[..MLKEM_CT_LEN].copy_from_slice(ct_m);
    enc[MLKEM_CT_LEN..].copy_from_slice(ct_x.as_ref());
    Some((combine(ss_m.as_ref(), &ss_x[..], ct_x.as_ref(), pk_x), enc))
}

impl ConstantTimeEq for ExpandedKey {
    fn ct_eq(&self, other: &Self) -> Choice {
        // Everything else is derived from the seed.
        self.seed[..].ct_eq(&other.seed[..])
    }
}

impl Serializable for ExpandedKey {
    /// `Nsk` = 32: the seed, as for [`XWing`].
    type OutputSize = U32;

    fn write_exact(&self, buf: &mut [u8]) {
        // The trait's contract: panic on a wrong length.
        assert_eq!(buf.len(), SEED_LEN, "X-Wing private key length");
        buf.copy_from_slice(&self.seed[..]);
    }
}

impl Deserializable for ExpandedKey {
    fn from_bytes(encoded: &[u8]) -> Result<Self, HpkeError> {
        let seed: &[u8; SEED_LEN] = encoded
            .try_into()
            .map_err(|_| HpkeError::IncorrectInputLength(Self::OutputSize::USIZE, encoded.len()))?;
        Ok(Self::from_seed(seed))
    }
}

impl hpke::Kem for ExpandedXWing {
    type PublicKey = PublicKey;
    type PrivateKey = ExpandedKey;
    type EncappedKey = EncappedKey;
    type NSecret = <XWing as hpke::Kem>::NSecret;
    const KEM_ID: u16 = <XWing as hpke::Kem>::KEM_ID;

    fn sk_to_pk(sk: &ExpandedKey) -> PublicKey {
        // Invariant: an ML-KEM key generated from a seed passes FIPS 203's modulus check.
        #[allow(clippy::expect_used)]
        PublicKey::from_bytes(&sk.public_bytes()[..]).expect("a generated X-Wing public key")
    }

    fn derive_keypair(ikm: &[u8]) -> (ExpandedKey, PublicKey) {
        let (sk, pk) = XWing::derive_keypair(ikm);
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        sk.write_exact(&mut seed[..]);
        (ExpandedKey::from_seed(&seed), pk)
    }

    fn decap(
        sk_recip: &ExpandedKey,
        pk_sender_id: Option<&PublicKey>,
        encapped_key: &EncappedKey,
    ) -> Result<SharedSecret<Self>, HpkeError> {
        // X-Wing has no authenticated mode.
        if pk_sender_id.is_some() {
            return Err(HpkeError::DecapError);
        }
        let mut ct = [0u8; ENC_LEN];
        encapped_key.write_exact(&mut ct[..]);
        let ss = sk_recip.decapsulate(&ct).ok_or(HpkeError::DecapError)?;
        let mut shared = SharedSecret::<Self>::default();
        shared.0.copy_from_slice(&ss[..]);
        Ok(shared)
    }

    fn encap_with_rng(
        pk_recip: &PublicKey,
        sender_id_keypair: Option<(&ExpandedKey, &PublicKey)>,
        csprng: &mut impl CryptoRng,
    ) -> Result<(SharedSecret<Self>, EncappedKey), HpkeError> {
        if sender_id_keypair.is_some() {
            return Err(HpkeError::EncapError);
        }
        // aws-lc draws its own randomness (from the operating system, as `hpke`'s does).
        let _ = csprng;
        let (ss, enc) = encapsulate(&pk_recip.to_bytes()).ok_or(HpkeError::EncapError)?;
        let enc = EncappedKey::from_bytes(&enc).map_err(|_| HpkeError::EncapError)?;
        let mut shared = SharedSecret::<Self>::default();
        shared.0.copy_from_slice(&ss[..]);
        Ok((shared, enc))
    }
}

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

/// A hybrid post-quantum identity (`AGE-SECRET-KEY-PQ-1…`): a 32-byte X-Wing seed, kept with
/// the ML-KEM-768 and X25519 keys it expands to (derived once, here, rather than at every
/// decapsulation). Never printed; wiped on drop.
#[derive(Clone)]
pub struct HybridIdentity(Box<IdentityKeys>);

#[derive(Clone)]
struct IdentityKeys {
    key: ExpandedKey,
    public: HybridRecipient,
}

impl HybridIdentity {
    /// A fresh identity: `identity = read(CSPRNG, 32)` (age.md).
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        OsRng.fill_bytes(&mut seed[..]);
        Self::from_seed_ref(&seed)
    }

    /// The identity of a 32-byte seed (test vectors and deterministic fixtures).
    pub fn from_seed(seed: [u8; SEED_LEN]) -> Self {
        let seed = Zeroizing::new(seed);
        Self::from_seed_ref(&seed)
    }

    fn from_seed_ref(seed: &[u8; SEED_LEN]) -> Self {
        let key = ExpandedKey::from_seed(seed);
        let public = recipient_from_key(ExpandedXWing::sk_to_pk(&key));
        Self(Box::new(IdentityKeys { key, public }))
    }

    /// The matching recipient (`PrivateKeyToPublicKey` of X-Wing).
    pub fn to_public(&self) -> HybridRecipient {
        self.0.public.clone()
    }

    /// The Bech32 encoding, `AGE-SECRET-KEY-PQ-1…`. The result is zeroized on drop.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        let mut lower = bech32_encode(IDENTITY_HRP, &self.0.key.seed[..]);
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
            let enc = EncappedKey::from_bytes(&enc_bytes[..])
                .map_err(|_| HeaderError::InvalidHybridStanza)?;
            let tag = AeadTag::<Aead>::from_bytes(&stanza.body[FILE_KEY_LEN..])
                .map_err(|_| HeaderError::InvalidHybridStanza)?;
            // One X-Wing decapsulation with the expanded keys, then RFC 9180's key schedule.
            // Decapsulation is the only step of `setup_receiver` that can fail, and
            // `ExpandedXWing` fails it only when the X25519 half of `enc` is non-contributory
            // (RFC 7748 §6.1), checked before the ML-KEM half or any key is computed: refused, as
            // age's reference implementation and the CCTV vectors do.
            let mut ctx = hpke::setup_receiver::<Aead, Kdf, ExpandedXWing>(
                &OpModeR::Base,
                &self.0.key,
                &enc,
                INFO,
            )
            .map_err(|_| HeaderError::LowOrderShare)?;
            let mut buf = Zeroizing::new([0u8; FILE_KEY_LEN]);
            buf.copy_from_slice(&stanza.body[..FILE_KEY_LEN]);
            if ctx
                .open_inout_detached(InOutBuf::from(&mut buf[..]), b"", &tag)
                .is_ok()
            {
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
        let (enc, tag) = hpke::single_shot_seal_inout_detached::<Aead, Kdf, ExpandedXWing>(
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
        // An X25519 half of low order would give every wrap an all-zero shared secret: refused
        // here, where the key is named. With a clamped scalar (a multiple of 8), X25519 is zero
        // exactly for those points, and aws-lc refuses a zero result.
        let probe = lc_agreement::PrivateKey::from_private_key(&LC_X25519, &[0x42; 32])
            .map_err(|_| KeyParseError::InvalidKey)?;
        lc_agreement::agree(
            &probe,
            lc_agreement::UnparsedPublicKey::new(&LC_X25519, &bytes[MLKEM_EK_LEN..]),
            KeyParseError::InvalidKey,
            |_| Ok(()),
        )?;
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

    /// Seeds for the cross-checks: fixed ones and fresh random ones.
    fn seeds() -> Vec<[u8; SEED_LEN]> {
        let mut seeds = vec![[0u8; SEED_LEN], [0xff; SEED_LEN]];
        for _ in 0..6 {
            let mut s = [0u8; SEED_LEN];
            OsRng.fill_bytes(&mut s);
            seeds.push(s);
        }
        seeds
    }

    /// `expandDecapsulationKey` as written here gives the public key of `hpke`'s and of
    /// `x-wing`'s X-Wing for the same seed.
    #[test]
    fn expanded_key_matches_hpke_and_x_wing() {
        use x_wing::{Decapsulator as _, KeyExport as _};
        for seed in seeds() {
            let ours = ExpandedKey::from_seed(&seed);
            let hpke_sk = <XWing as hpke::Kem>::PrivateKey::from_bytes(&seed).expect("seed");
            let theirs = XWing::sk_to_pk(&hpke_sk).to_bytes();
            assert_eq!(ours.public_bytes()[..], theirs[..]);
            let x_wing_pk = x_wing::DecapsulationKey::from(seed)
                .encapsulation_key()
                .to_bytes();
            assert_eq!(ours.public_bytes()[..], x_wing_pk[..]);
            assert_eq!(ExpandedXWing::sk_to_pk(&ours).to_bytes()[..], theirs[..]);
            // Serialization is the seed, as for `XWing`.
            assert_eq!(ours.to_bytes()[..], hpke_sk.to_bytes()[..]);
            let back = ExpandedKey::from_bytes(&ours.to_bytes()).expect("32 bytes");
            assert!(bool::from(back.ct_eq(&ours)));
            assert!(ExpandedKey::from_bytes(&seed[1..]).is_err());
        }
    }

    /// The encapsulation written here (aws-lc's ML-KEM-768 and X25519) gives ciphertexts that
    /// `x-wing`'s decapsulation opens to the same shared secret, directly and through `hpke`'s
    /// interface as `wrap` uses it; a recipient whose X25519 half is a low-order point is refused.
    #[test]
    fn encapsulation_matches_x_wing() {
        use x_wing::Decapsulate as _;
        for seed in seeds() {
            let ours = ExpandedKey::from_seed(&seed);
            let reference = x_wing::DecapsulationKey::from(seed);
            let pk = ours.public_bytes();
            let (ss, enc) = encapsulate(&pk[..]).expect("encapsulates");
            let x_ct = x_wing::Ciphertext::try_from(&enc[..]).expect("1120 bytes");
            assert_eq!(reference.decapsulate(&x_ct)[..], ss[..]);
            assert_eq!(ours.decapsulate(&enc).expect("contributory")[..], ss[..]);
            let (ss2, enc2) =
                ExpandedXWing::encap(&ExpandedXWing::sk_to_pk(&ours), None).expect("encapsulates");
            let x_ct = x_wing::Ciphertext::try_from(&enc2.to_bytes()[..]).expect("1120 bytes");
            assert_eq!(reference.decapsulate(&x_ct)[..], ss2.0[..]);
            assert_ne!(enc2.to_bytes()[..], enc[..], "fresh randomness every time");

            let mut low = pk.clone();
            low[MLKEM_EK_LEN..].fill(0);
            assert!(encapsulate(&low[..]).is_none());
            assert!(encapsulate(&pk[1..]).is_none());
            // Refused already when parsed, as every low-order X25519 point is.
            let good = bech32_encode(RECIPIENT_HRP, &pk[..]);
            assert!(good.parse::<HybridRecipient>().is_ok());
            for share in [[0u8; 32], {
                let mut one = [0u8; 32];
                one[0] = 1;
                one
            }] {
                low[MLKEM_EK_LEN..].copy_from_slice(&share);
                let text = bech32_encode(RECIPIENT_HRP, &low[..]);
                assert!(matches!(
                    text.parse::<HybridRecipient>(),
                    Err(KeyParseError::InvalidKey)
                ));
            }
        }
    }

    /// The decapsulation written here gives the shared secret of `hpke`'s encapsulation and of
    /// `x-wing`'s decapsulation, for honest ciphertexts and for tampered ones (ML-KEM's
    /// implicit rejection, another X25519 share), and refuses exactly what `x-wing`'s
    /// `DecapsulationKeyRejectNonContrib` refuses.
    #[test]
    fn decapsulation_matches_hpke_and_x_wing() {
        use x_wing::{Decapsulate as _, TryDecapsulate as _};
        for seed in seeds() {
            let ours = ExpandedKey::from_seed(&seed);
            let reference = x_wing::DecapsulationKey::from(seed);
            let strict = x_wing::DecapsulationKeyRejectNonContrib::from(seed);
            let pk = ExpandedXWing::sk_to_pk(&ours);
            let (ss, enc) = XWing::encap(&pk, None).expect("encapsulates");
            let mut ct = [0u8; ENC_LEN];
            ct.copy_from_slice(&enc.to_bytes());
            let got = ours.decapsulate(&ct).expect("contributory");
            assert_eq!(got[..], ss.0[..]);
            // Through hpke's `Kem` interface too.
            let via_kem = ExpandedXWing::decap(&ours, None, &enc).expect("decapsulates");
            assert_eq!(via_kem.0[..], ss.0[..]);

            let mut tampered_m = ct;
            tampered_m[7] ^= 0x40;
            let mut tampered_x = ct;
            tampered_x[MLKEM_CT_LEN + 3] ^= 0x01;
            for c in [ct, tampered_m, tampered_x] {
                let x_ct = x_wing::Ciphertext::try_from(&c[..]).expect("1120 bytes");
                let want = reference.decapsulate(&x_ct);
                let got = ours.decapsulate(&c).expect("contributory");
                assert_eq!(got[..], want[..]);
                assert_eq!(
                    strict.try_decapsulate(&x_ct).expect("contributory")[..],
                    want[..]
                );
            }

            // Low-order X25519 shares (RFC 7748 §6.1): 0, 1, and a point of order 8.
            let mut order_8 = [0u8; 32];
            hex::decode_to_slice(
                "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
                &mut order_8,
            )
            .expect("hex");
            let mut one = [0u8; 32];
            one[0] = 1;
            for share in [[0u8; 32], one, order_8] {
                let mut low = ct;
                low[MLKEM_CT_LEN..].copy_from_slice(&share);
                assert!(ours.decapsulate(&low).is_none());
                let x_ct = x_wing::Ciphertext::try_from(&low[..]).expect("1120 bytes");
                assert!(strict.try_decapsulate(&x_ct).is_err());
                let enc = EncappedKey::from_bytes(&low).expect("1120 bytes");
                assert!(matches!(
                    ExpandedXWing::decap(&ours, None, &enc),
                    Err(HpkeError::DecapError)
                ));
            }
        }
    }

    /// `ExpandedXWing` is interchangeable with `XWing` in HPKE, both ways.
    #[test]
    fn expanded_kem_interoperates_with_hpke_x_wing() {
        let (sk, pk) = ExpandedXWing::derive_keypair(b"some input keying material");
        let (xsk, xpk) = XWing::derive_keypair(b"some input keying material");
        assert_eq!(pk.to_bytes(), xpk.to_bytes());
        assert_eq!(sk.to_bytes(), xsk.to_bytes());
        let msg = b"sixteen byte key";
        let (enc, ct) =
            hpke::single_shot_seal::<Aead, Kdf, ExpandedXWing>(&OpModeS::Base, &pk, INFO, msg, b"")
                .expect("seals");
        let xenc = EncappedKey::from_bytes(&enc.to_bytes()).expect("enc");
        let opened =
            hpke::single_shot_open::<Aead, Kdf, XWing>(&OpModeR::Base, &xsk, &xenc, INFO, &ct, b"")
                .expect("XWing opens what ExpandedXWing sealed");
        assert_eq!(&opened[..], msg);
        let (enc, ct) =
            hpke::single_shot_seal::<Aead, Kdf, XWing>(&OpModeS::Base, &xpk, INFO, msg, b"")
                .expect("seals");
        let opened = hpke::single_shot_open::<Aead, Kdf, ExpandedXWing>(
            &OpModeR::Base,
            &sk,
            &enc,
            INFO,
            &ct,
            b"",
        )
        .expect("ExpandedXWing opens what XWing sealed");
        assert_eq!(&opened[..], msg);
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
