//! # rogatory-envelope
//!
//! age v1 envelope encryption for Rogatory: X25519 recipients and the hybrid post-quantum
//! `mlkem768x25519` recipients (X-Wing in HPKE), the header MAC, the chunked ChaCha20-Poly1305
//! STREAM payload and strict ASCII armor, as profiled in `docs/envelope.md`. Files we write
//! decrypt with `age` and `rage` (hybrid files with age ≥ 1.3 and `age-encryption` ≥ 0.3), and
//! the reverse.
//!
//! What it is not: sender authentication (age has none; see `docs/custody.md`), passphrase
//! recipients, or anything that does I/O beyond `io::Read` / `io::Write`. It is pure and
//! synchronous.
//!
//! Where to start: [`Encryptor`] and [`Decryptor`] for whole files; [`PayloadKey`] for random
//! access to one chunk (encrypt or decrypt chunk *i* given the file key and payload nonce),
//! which the transfer layer uses to resume.
//!
//! ```
//! use std::io::{Read, Write};
//! use rogatory_envelope::{Decryptor, Encryptor, Identity};
//!
//! let agency_b = Identity::generate();
//! let mut w = Encryptor::new(&[agency_b.to_public()])?.wrap_output(Vec::new())?;
//! w.write_all(b"case 42, exhibit 1")?;
//! let file = w.finish()?;
//!
//! let mut plain = Vec::new();
//! Decryptor::new_detect(&file[..])?
//!     .decrypt(std::slice::from_ref(&agency_b))?
//!     .read_to_end(&mut plain)?;
//! assert_eq!(plain, b"case 42, exhibit 1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod any;
mod armor;
mod b64;
mod decrypt;
mod encrypt;
mod error;
mod header;
mod hybrid;
mod keyfile;
mod keys;
mod stream;
mod x25519;

use std::io::{self, BufRead};

pub use any::{AnyIdentity, AnyRecipient, IdentityKey, RecipientKey};
pub use armor::{ArmoredReader, ArmoredWriter};
pub use decrypt::{Decryptor, Input};
pub use encrypt::Encryptor;
pub use error::{ArmorError, DecryptError, EncryptError, HeaderError, KeyParseError, PayloadError};
pub use header::{Header, MAX_HEADER_LEN, MAX_STANZAS, Stanza};
pub use hybrid::{HybridIdentity, HybridRecipient};
pub use keyfile::{KeyFileError, format_identity_file, parse_identities, parse_recipients};
pub use keys::{FILE_KEY_LEN, FileKey, NONCE_LEN, PayloadNonce};
pub use stream::{
    CHUNK_SIZE, ChunkError, ENCRYPTED_CHUNK_SIZE, PayloadKey, StreamReader, StreamWriter, TAG_SIZE,
    chunk_count, payload_len,
};
pub use x25519::{Identity, Recipient};

/// Fails to compile if a type implements `PartialEq`: secrets are compared only in constant
/// time, through `subtle` (test-plan.md 69), and a secret type without `PartialEq` cannot be
/// compared with `==` by mistake. A second blanket impl of the helper trait for a type that does
/// implement `PartialEq` makes the final path ambiguous: a compile error naming the type.
#[macro_export]
#[doc(hidden)]
macro_rules! assert_not_partial_eq {
    ($($t:ty),+ $(,)?) => {
        $(const _: fn() = || {
            trait AmbiguousIfEq<A> {
                fn item() {}
            }
            impl<T: ?Sized> AmbiguousIfEq<()> for T {}
            #[allow(dead_code)]
            struct Eq;
            impl<T: ?Sized + ::core::cmp::PartialEq> AmbiguousIfEq<Eq> for T {}
            let _ = <$t as AmbiguousIfEq<_>>::item;
        };)+
    };
}

assert_not_partial_eq!(
    FileKey,
    keys::MacKey,
    PayloadKey,
    Identity,
    HybridIdentity,
    AnyIdentity,
);

/// Like `read_until(b'\n')`, but reads at most `limit` bytes. Returns the bytes read.
pub(crate) fn read_line_bounded<R: BufRead>(
    r: &mut R,
    out: &mut Vec<u8>,
    limit: u64,
) -> io::Result<usize> {
    let mut total = 0usize;
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let room = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(total);
        if available.is_empty() || room == 0 {
            return Ok(total);
        }
        let window = &available[..available.len().min(room)];
        let (take, done) = match window.iter().position(|&c| c == b'\n') {
            Some(i) => (i + 1, true),
            None => (window.len(), false),
        };
        out.extend_from_slice(&window[..take]);
        r.consume(take);
        total += take;
        if done {
            return Ok(total);
        }
    }
}
