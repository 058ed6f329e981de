//! Encryption to X25519 or hybrid recipients (`envelope.md` §3, §5, §6).

use std::io::Write;

use crate::any::{RecipientKey, mixes_post_quantum, wrap};
use crate::error::EncryptError;
use crate::header::{Header, MAX_HEADER_LEN, MAX_STANZAS};
use crate::keys::{FileKey, PayloadNonce};
use crate::stream::{PayloadKey, StreamWriter};

/// Prepares an age file for a set of recipients: a fresh file key, wrapped to each of them.
///
/// ```
/// use std::io::{Read, Write};
/// use rogatory_envelope::{Decryptor, Encryptor, Identity};
///
/// let alice = Identity::generate();
/// let enc = Encryptor::new(&[alice.to_public()])?;
/// let mut w = enc.wrap_output(Vec::new())?;
/// w.write_all(b"evidence")?;
/// let file = w.finish()?;
///
/// let mut r = Decryptor::new(&file[..])?.decrypt(std::slice::from_ref(&alice))?;
/// let mut plain = Vec::new();
/// r.read_to_end(&mut plain)?;
/// assert_eq!(plain, b"evidence");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Encryptor {
    file_key: FileKey,
    header: Header,
}

impl Encryptor {
    /// A fresh file key wrapped to every recipient (at least one, at most 64, all of one kind:
    /// X25519 or hybrid post-quantum, never both; `envelope.md` §5.3).
    pub fn new<R: RecipientKey>(recipients: &[R]) -> Result<Self, EncryptError> {
        Self::with_file_key(FileKey::generate(), recipients)
    }

    /// Wraps a given file key (for callers that manage file keys themselves).
    pub fn with_file_key<R: RecipientKey>(
        file_key: FileKey,
        recipients: &[R],
    ) -> Result<Self, EncryptError> {
        if recipients.is_empty() {
            return Err(EncryptError::NoRecipients);
        }
        if recipients.len() > MAX_STANZAS {
            return Err(EncryptError::TooManyRecipients);
        }
        if mixes_post_quantum(recipients) {
            return Err(EncryptError::MixedPostQuantum);
        }
        let stanzas = recipients
            .iter()
            .map(|r| wrap(r, &file_key).ok_or(EncryptError::LowOrderRecipient))
            .collect::<Result<Vec<_>, _>>()?;
        let header = Header::seal(stanzas, &file_key);
        // Never write a header our own reader would refuse (hybrid stanzas are ~1.5 KiB).
        if header.encode().len() > MAX_HEADER_LEN {
            return Err(EncryptError::HeaderTooLarge);
        }
        Ok(Self { file_key, header })
    }

    /// The header that will be written.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file key, for random access to chunks ([`PayloadKey::derive`]).
    pub fn file_key(&self) -> &FileKey {
        &self.file_key
    }

    /// Writes the header and a fresh payload nonce to `out` and returns the payload writer.
    pub fn wrap_output<W: Write>(self, out: W) -> Result<StreamWriter<W>, EncryptError> {
        self.wrap_output_with_nonce(out, PayloadNonce::generate())
    }

    /// Like [`Encryptor::wrap_output`] with a caller-chosen nonce. A nonce must never be used
    /// twice with one file key.
    pub fn wrap_output_with_nonce<W: Write>(
        self,
        mut out: W,
        nonce: PayloadNonce,
    ) -> Result<StreamWriter<W>, EncryptError> {
        out.write_all(&self.header.encode())?;
        out.write_all(&nonce.0)?;
        Ok(StreamWriter::new(
            out,
            PayloadKey::derive(&self.file_key, &nonce),
        ))
    }
}
