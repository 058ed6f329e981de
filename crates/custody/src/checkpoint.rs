//! C2SP tlog-checkpoints (`custody.md` §7).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::error::ParseError;
use crate::merkle::{Hash, parse_b64_hash};
use crate::note::{Note, NoteSigner, NoteVerifier};
use crate::text::{Fields, parse_u64};
use crate::verified::Verified;

/// A log's signed statement of its size and root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin, `<agency id>/audit`.
    pub origin: String,
    /// Number of entries.
    pub size: u64,
    /// RFC 6962 root hash of the first `size` entries.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: `origin LF size LF b64(root) LF`.
    pub fn encode(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parses the note text. Extension lines are refused: our logs never write them.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        const KIND: &str = "checkpoint";
        let mut f = Fields::new(KIND, text)?;
        let origin = f.line()?;
        if origin.is_empty() || origin.chars().any(|c| c.is_whitespace() || c == '+') {
            return Err(ParseError::syntax(KIND, "bad origin"));
        }
        let size = parse_u64(f.line()?)?;
        let root_b64 = f.line()?;
        let root: Hash =
            parse_b64_hash(root_b64).ok_or_else(|| ParseError::syntax(KIND, "bad root hash"))?;
        f.end()?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// Signs with the log key (whose name must be the origin).
    pub fn sign(&self, log_signer: &NoteSigner) -> Result<String, ParseError> {
        if log_signer.name() != self.origin {
            return Err(ParseError::syntax(
                "checkpoint",
                "key name is not the origin",
            ));
        }
        Ok(log_signer.sign(&self.encode())?)
    }

    /// Verifies a checkpoint note with the log's verifier key; the origin must be its name.
    pub fn open(note: &[u8], log_key: &NoteVerifier) -> Result<Verified<Self>, ParseError> {
        let signed = Note::parse(note)?.verify(std::slice::from_ref(log_key))?;
        let cp = Self::parse(&signed.text)?;
        if cp.origin != log_key.name() {
            return Err(ParseError::syntax(
                "checkpoint",
                "origin is not the log key's name",
            ));
        }
        Ok(signed.map(|_| cp))
    }

    /// Verifies a checkpoint note with any of `log_keys`, the log keys of one agency's card
    /// chain (`custody.md` §8.5), which share one name: the origin.
    pub fn open_any(note: &[u8], log_keys: &[NoteVerifier]) -> Result<Verified<Self>, ParseError> {
        let signed = Note::parse(note)?.verify(log_keys)?;
        let cp = Self::parse(&signed.text)?;
        if !signed.signers.contains(&cp.origin) {
            return Err(ParseError::syntax(
                "checkpoint",
                "origin is not the log key's name",
            ));
        }
        Ok(signed.map(|_| cp))
    }
}
