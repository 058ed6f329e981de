//! Decryption with X25519 or hybrid identities (`envelope.md` §3 to §7, §9).

use std::io::{self, BufRead, Read};

use crate::any::{IdentityKey, unwrap};
use crate::armor::{ArmoredReader, looks_armored};
use crate::error::{DecryptError, HeaderError};
use crate::header::Header;
use crate::keys::{FileKey, NONCE_LEN, PayloadNonce};
use crate::stream::{PayloadKey, StreamReader};

/// The scrypt stanza type (`envelope.md` §5.2).
const SCRYPT_TAG: &str = "scrypt";

/// Input that is binary or armored, detected from its first bytes.
#[derive(Debug)]
pub enum Input<R: BufRead> {
    /// A binary age file.
    Binary(R),
    /// An ASCII-armored age file.
    Armored(ArmoredReader<R>),
}

impl<R: BufRead> Read for Input<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Binary(r) => r.read(out),
            Self::Armored(r) => r.read(out),
        }
    }
}

impl<R: BufRead> BufRead for Input<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Self::Binary(r) => r.fill_buf(),
            Self::Armored(r) => r.fill_buf(),
        }
    }

    fn consume(&mut self, amt: usize) {
        match self {
            Self::Binary(r) => r.consume(amt),
            Self::Armored(r) => r.consume(amt),
        }
    }
}

/// A file whose header has been parsed, ready to be decrypted.
#[derive(Debug)]
pub struct Decryptor<R: BufRead> {
    input: R,
    header: Header,
}

impl<R: BufRead> Decryptor<Input<R>> {
    /// Parses the header of a binary or armored file, detecting armor (`envelope.md` §7).
    pub fn new_detect(mut input: R) -> Result<Self, DecryptError> {
        let peek = input.fill_buf().map_err(DecryptError::Io)?;
        let input = if looks_armored(peek) {
            Input::Armored(ArmoredReader::new(input))
        } else {
            Input::Binary(input)
        };
        Decryptor::new(input)
    }
}

impl<R: BufRead> Decryptor<R> {
    /// Parses the header of a binary file (wrap an [`ArmoredReader`] for armored input, or use
    /// [`Decryptor::new_detect`]).
    pub fn new(mut input: R) -> Result<Self, DecryptError> {
        let header = Header::read(&mut input)?;
        Ok(Self { input, header })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Unwraps the file key with the first identity that matches, then checks the header MAC.
    pub fn unwrap_file_key<I: IdentityKey>(
        &self,
        identities: &[I],
    ) -> Result<FileKey, DecryptError> {
        let stanzas = self.header.stanzas();
        // `envelope.md` §5.2: scrypt must be alone, and is refused without any work.
        if stanzas.iter().any(|s| s.tag == SCRYPT_TAG) {
            return Err(if stanzas.len() > 1 {
                HeaderError::ScryptNotAlone.into()
            } else {
                DecryptError::UnsupportedScrypt
            });
        }
        for identity in identities {
            if let Some(file_key) = unwrap(identity, stanzas)? {
                if !self.header.verify_mac(&file_key) {
                    return Err(DecryptError::HeaderMac);
                }
                return Ok(file_key);
            }
        }
        Err(DecryptError::NoMatch)
    }

    /// Unwraps the file key and returns the streaming plaintext reader.
    pub fn decrypt<I: IdentityKey>(
        self,
        identities: &[I],
    ) -> Result<StreamReader<R>, DecryptError> {
        let file_key = self.unwrap_file_key(identities)?;
        self.decrypt_with_file_key(&file_key)
    }

    /// Reads the payload nonce and returns the streaming reader for a known file key. The
    /// header MAC is checked here too.
    pub fn decrypt_with_file_key(
        mut self,
        file_key: &FileKey,
    ) -> Result<StreamReader<R>, DecryptError> {
        if !self.header.verify_mac(file_key) {
            return Err(DecryptError::HeaderMac);
        }
        let nonce = read_nonce(&mut self.input)?;
        Ok(StreamReader::new(
            self.input,
            PayloadKey::derive(file_key, &nonce),
        ))
    }
}

/// `envelope.md` §6: "Fewer than 16 bytes there is a header failure."
fn read_nonce<R: Read>(input: &mut R) -> Result<PayloadNonce, DecryptError> {
    let mut nonce = [0u8; NONCE_LEN];
    match input.read_exact(&mut nonce) {
        Ok(()) => Ok(PayloadNonce(nonce)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(HeaderError::MissingNonce.into()),
        Err(e) => Err(DecryptError::from_read(e)),
    }
}
