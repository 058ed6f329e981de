//! Key purposes as types (`envelope.md` §3, §6): a file key, the header MAC key and the
//! payload key cannot be mixed up, and all of them are wiped on drop.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of a file key in bytes.
pub const FILE_KEY_LEN: usize = 16;
/// Length of the payload nonce in bytes.
pub const NONCE_LEN: usize = 16;

/// The 128-bit symmetric key of one age file. Never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct FileKey([u8; FILE_KEY_LEN]);

impl FileKey {
    /// A fresh random file key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut k = [0u8; FILE_KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }

    /// `n` fresh random file keys, drawn from the operating system's CSPRNG at once (one
    /// system call for a batch rather than one per key: a send of many files draws them all),
    /// collected straight into `C` (no intermediate copy of the keys to wipe).
    pub fn generate_many<C: FromIterator<Self>>(n: usize) -> C {
        let mut bytes = zeroize::Zeroizing::new(vec![0u8; n * FILE_KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self::collect_from_bytes(&bytes)
    }

    /// The keys stored one after the other in `bytes` (a whole number of [`FILE_KEY_LEN`]
    /// bytes; a shorter tail is ignored), collected straight into `C`; no copy of a key is
    /// left unwiped. The caller wipes `bytes`.
    pub fn collect_from_bytes<C: FromIterator<Self>>(bytes: &[u8]) -> C {
        bytes
            .chunks_exact(FILE_KEY_LEN)
            .map(|c| {
                let mut k = [0u8; FILE_KEY_LEN];
                k.copy_from_slice(c);
                let key = Self(k);
                k.zeroize();
                key
            })
            .collect()
    }

    /// Wraps raw key bytes (for callers that stored a file key, e.g. to resume a transfer).
    pub fn from_bytes(bytes: [u8; FILE_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes. Handle with care: whoever holds them can decrypt the file.
    pub fn expose_secret(&self) -> &[u8; FILE_KEY_LEN] {
        &self.0
    }

    /// The header MAC key, `HKDF(file key, "", "header")` (`envelope.md` §3).
    pub(crate) fn mac_key(&self) -> MacKey {
        MacKey(hkdf32(&self.0, b"", b"header"))
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(<redacted>)")
    }
}

/// The header MAC key.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct MacKey([u8; 32]);

impl MacKey {
    pub(crate) fn mac(&self, header_without_mac: &[u8]) -> [u8; 32] {
        let mut mac = hmac_for(&self.0);
        mac.update(header_without_mac);
        mac.finalize().into_bytes().into()
    }

    /// Constant-time verification of a header MAC.
    pub(crate) fn verify(&self, header_without_mac: &[u8], tag: &[u8; 32]) -> bool {
        let mut mac = hmac_for(&self.0);
        mac.update(header_without_mac);
        mac.verify_slice(tag).is_ok()
    }
}

fn hmac_for(key: &[u8; 32]) -> Hmac<Sha256> {
    // Invariant: HMAC accepts keys of any length.
    #[allow(clippy::expect_used)]
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length")
}

/// The 16-byte nonce written after the header, from which the payload key is derived.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PayloadNonce(pub [u8; NONCE_LEN]);

impl PayloadNonce {
    /// A fresh random nonce.
    pub fn generate() -> Self {
        let mut n = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut n);
        Self(n)
    }
}

/// HKDF-SHA-256 with a 32-byte output (RFC 5869).
pub(crate) fn hkdf32(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut okm = [0u8; 32];
    // Invariant: 32 bytes is far below HKDF-SHA-256's 255 * 32 byte limit.
    #[allow(clippy::expect_used)]
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    okm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_keys_are_drawn_fresh_and_distinct() {
        assert!(FileKey::generate_many::<Vec<_>>(0).is_empty());
        let keys: Vec<FileKey> = FileKey::generate_many(64);
        assert_eq!(keys.len(), 64);
        let mut seen: Vec<[u8; FILE_KEY_LEN]> = keys.iter().map(|k| *k.expose_secret()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 64, "no two keys alike");
        assert!(seen.iter().all(|k| k != &[0u8; FILE_KEY_LEN]));
    }
}
