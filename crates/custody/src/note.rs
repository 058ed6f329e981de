//! C2SP signed notes with Ed25519 (`custody.md` §3).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::error::{KeyError, NoteError};
use crate::verified::Verified;

/// `custody.md` §10: signed note size limit.
pub const MAX_NOTE_LEN: usize = 64 * 1024;
/// `custody.md` §10: signature lines per note ("MUST accept at least up to 16").
pub const MAX_SIGNATURES: usize = 100;
const SIG_PREFIX: &str = "\u{2014} ";
const ED25519: u8 = 0x01;

fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// `key ID = SHA-256(key name || 0x0A || 0x01 || public key)[:4]` (`custody.md` §3).
fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// A public verifier key under a name (`<name>+<hex8>+<b64(0x01 || key)>`).
#[derive(Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// The same public key under another name (e.g. the log origin). `None` for a bad name.
    pub fn with_name(&self, name: &str) -> Option<Self> {
        valid_key_name(name).then(|| Self {
            name: name.to_owned(),
            id: key_id(name, self.key.as_bytes()),
            key: self.key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.id
    }

    /// The raw Ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }
}

impl fmt::Display for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut k = [0u8; 33];
        k[0] = ED25519;
        k[1..].copy_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.id, B64.encode(k))
    }
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteVerifier({self})")
    }
}

fn parse_hex8(s: &str) -> Result<u32, KeyError> {
    if s.len() != 8
        || !s
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return Err(KeyError::Malformed);
    }
    u32::from_str_radix(s, 16).map_err(|_| KeyError::Malformed)
}

fn decode_key_field(s: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let raw = Zeroizing::new(B64.decode(s).map_err(|_| KeyError::Malformed)?);
    if raw.len() != 33 {
        return Err(KeyError::Malformed);
    }
    if raw[0] != ED25519 {
        return Err(KeyError::Type);
    }
    let mut k = Zeroizing::new([0u8; 32]);
    k.copy_from_slice(&raw[1..]);
    Ok(k)
}

/// Splits `<name>+<hex8>+<b64(0x01 || key)>` into a checked name, the id and the 32 key bytes.
fn split_key_string(s: &str) -> Result<(&str, u32, Zeroizing<[u8; 32]>), KeyError> {
    // The base64 key may itself contain '+'; the name and id cannot.
    let mut parts = s.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(KeyError::Malformed);
    };
    if !valid_key_name(name) {
        return Err(KeyError::Name);
    }
    Ok((name, parse_hex8(id)?, decode_key_field(key)?))
}

impl FromStr for NoteVerifier {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, id, raw) = split_key_string(s)?;
        let key = VerifyingKey::from_bytes(&raw).map_err(|_| KeyError::Point)?;
        if key_id(name, key.as_bytes()) != id {
            return Err(KeyError::KeyId);
        }
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }
}

/// A signing key under a name. Never printed; the seed is wiped on drop.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteSigner(<secret for {}>)", self.verifier())
    }
}

impl NoteSigner {
    /// A fresh key from the operating system's CSPRNG. `None` for an invalid name.
    pub fn generate(name: &str) -> Option<Self> {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        valid_key_name(name).then(|| Self {
            name: name.to_owned(),
            key,
        })
    }

    /// From a 32-byte seed (test vectors, stored identities). `None` for an invalid name.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Option<Self> {
        valid_key_name(name).then(|| Self {
            name: name.to_owned(),
            key: SigningKey::from_bytes(seed),
        })
    }

    /// A fresh key named after an agency (always a valid key name).
    pub fn generate_for(id: &crate::ids::AgencyId) -> Self {
        Self {
            name: id.as_str().to_owned(),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// A key from a seed, named after an agency.
    pub fn from_seed_for(id: &crate::ids::AgencyId, seed: &[u8; 32]) -> Self {
        Self {
            name: id.as_str().to_owned(),
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public verifier key.
    pub fn verifier(&self) -> NoteVerifier {
        let key = self.key.verifying_key();
        NoteVerifier {
            name: self.name.clone(),
            id: key_id(&self.name, key.as_bytes()),
            key,
        }
    }

    /// The same key under another name (the log origin). `None` for an invalid name.
    pub fn with_name(&self, name: &str) -> Option<Self> {
        valid_key_name(name).then(|| Self {
            name: name.to_owned(),
            key: self.key.clone(),
        })
    }

    /// `PRIVATE+KEY+<name>+<hex8>+<b64(0x01 || seed)>`, zeroized on drop.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        let mut k = Zeroizing::new([0u8; 33]);
        k[0] = ED25519;
        k[1..].copy_from_slice(self.key.as_bytes());
        let v = self.verifier();
        Zeroizing::new(format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            v.id,
            B64.encode(&k[..])
        ))
    }

    /// Signs `text` and returns the signed note. `text` must be a valid note text.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig: Signature = self.key.sign(text.as_bytes());
        let mut field = Vec::with_capacity(68);
        field.extend_from_slice(&self.verifier().id.to_be_bytes());
        field.extend_from_slice(&sig.to_bytes());
        Ok(format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            B64.encode(field)
        ))
    }

    /// A raw Ed25519 signature of `msg` (for cosignatures, `custody.md` §7.3, whose signed
    /// message is not a note text).
    pub(crate) fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// Adds this key's signature to an already signed note (co-signing).
    pub fn cosign(&self, note: &str) -> Result<String, NoteError> {
        let parsed = Note::parse(note.as_bytes())?;
        let signed = self.sign(&parsed.text)?;
        let sig_line = &signed[parsed.text.len() + 1..];
        Ok(format!("{note}{sig_line}"))
    }
}

impl FromStr for NoteSigner {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("PRIVATE+KEY+").ok_or(KeyError::Malformed)?;
        let (name, id, seed) = split_key_string(rest)?;
        let signer = Self {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        };
        if signer.verifier().id != id {
            return Err(KeyError::KeyId);
        }
        Ok(signer)
    }
}

/// `custody.md` §3: "valid UTF-8 with no control character other than LF".
fn check_chars(s: &str) -> Result<(), NoteError> {
    if s.chars().any(|c| (c as u32) < 0x20 && c != '\n') {
        return Err(NoteError::Malformed("control character"));
    }
    Ok(())
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() || !text.ends_with('\n') {
        return Err(NoteError::Malformed(
            "text must be non-empty and end with a newline",
        ));
    }
    if text.len() > MAX_NOTE_LEN {
        return Err(NoteError::TooLarge);
    }
    check_chars(text)
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NoteSignature {
    name: String,
    id: u32,
    sig: Vec<u8>,
}

/// A parsed, **unverified** note. Only [`Note::verify`] says anything about its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    text: String,
    sigs: Vec<NoteSignature>,
}

/// A note whose text was signed by the trusted keys listed in `signers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedText {
    /// The note text, including its final newline.
    pub text: String,
    /// Names of the trusted keys whose signatures verified.
    pub signers: Vec<String>,
}

impl Note {
    /// Parses a signed note without verifying it. Size limits apply first.
    pub fn parse(bytes: &[u8]) -> Result<Self, NoteError> {
        if bytes.len() > MAX_NOTE_LEN {
            return Err(NoteError::TooLarge);
        }
        let s = std::str::from_utf8(bytes).map_err(|_| NoteError::Malformed("not UTF-8"))?;
        check_chars(s)?;
        if !s.ends_with('\n') {
            return Err(NoteError::Malformed("does not end with a newline"));
        }
        let split = s
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let text = &s[..split + 1];
        let sig_block = &s[split + 2..];
        if text.is_empty() || sig_block.is_empty() {
            return Err(NoteError::Malformed("empty text or no signatures"));
        }
        let lines: Vec<&str> = sig_block[..sig_block.len() - 1].split('\n').collect();
        if lines.len() > MAX_SIGNATURES {
            return Err(NoteError::TooLarge);
        }
        let mut sigs = Vec::with_capacity(lines.len());
        for line in lines {
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or(NoteError::Malformed("bad signature line"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or(NoteError::Malformed("bad signature line"))?;
            if !valid_key_name(name) {
                return Err(NoteError::Malformed("bad key name in signature line"));
            }
            let raw = B64
                .decode(b64)
                .map_err(|_| NoteError::Malformed("bad signature encoding"))?;
            if raw.len() < 5 {
                return Err(NoteError::Malformed("signature too short"));
            }
            sigs.push(NoteSignature {
                name: name.to_owned(),
                id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
                sig: raw[4..].to_vec(),
            });
        }
        Ok(Self {
            text: text.to_owned(),
            sigs,
        })
    }

    /// The unverified text. Do not act on it: use [`Note::verify`].
    pub fn unverified_text(&self) -> &str {
        &self.text
    }

    /// Every signature line, unverified: key name, key id, and the bytes after the key id.
    pub(crate) fn signature_lines(&self) -> impl Iterator<Item = (&str, u32, &[u8])> {
        self.sigs
            .iter()
            .map(|s| (s.name.as_str(), s.id, s.sig.as_slice()))
    }

    /// Names of all signers, trusted or not (for diagnostics).
    pub fn signature_names(&self) -> impl Iterator<Item = &str> {
        self.sigs.iter().map(|s| s.name.as_str())
    }

    /// Verifies against trusted keys (`custody.md` §3, rules 2 to 4).
    pub fn verify(self, trusted: &[NoteVerifier]) -> Result<Verified<SignedText>, NoteError> {
        let mut signers = Vec::new();
        for sig in &self.sigs {
            let Some(v) = trusted
                .iter()
                .find(|v| v.name == sig.name && v.id == sig.id)
            else {
                continue; // unknown (name, id): ignored
            };
            if !verify_strict(&v.key, self.text.as_bytes(), &sig.sig) {
                return Err(NoteError::BadSignature(v.name.clone()));
            }
            if !signers.contains(&v.name) {
                signers.push(v.name.clone());
            }
        }
        if signers.is_empty() {
            return Err(NoteError::NoTrustedSignature);
        }
        Ok(Verified::new(SignedText {
            text: self.text,
            signers,
        }))
    }
}

fn verify_strict(key: &VerifyingKey, msg: &[u8], sig: &[u8]) -> bool {
    <[u8; 64]>::try_from(sig)
        .ok()
        .map(|b| Signature::from_bytes(&b))
        .is_some_and(|s| key.verify_strict(msg, &s).is_ok())
}

/// The exact Ed25519 check signed notes use (`custody.md` §3 rule 3): strict RFC 8032
/// verification that refuses small-order or non-canonical `A` and `R`, `S ≥ L`, and any
/// signature that is not exactly 64 bytes.
pub fn ed25519_verify_strict(public_key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    <[u8; 32]>::try_from(public_key)
        .ok()
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .is_some_and(|k| verify_strict(&k, msg, sig))
}

/// Splits concatenated signed notes (a card-chain file, `custody.md` §8.5): each note ends
/// after its signature block, the signature lines that follow its blank line, up to the first
/// line that is not one. Nothing is parsed or verified; bytes before the first note's blank
/// line and after the last are part of the first and last note.
pub fn split_notes(bytes: &[u8]) -> Vec<&[u8]> {
    let sig_prefix = SIG_PREFIX.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i, mut in_sigs) = (0, 0, false);
    while i < bytes.len() {
        let end = bytes[i..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(bytes.len(), |p| i + p + 1);
        let line = &bytes[i..end];
        if in_sigs && !line.starts_with(sig_prefix) {
            out.push(&bytes[start..i]);
            start = i;
            in_sigs = false;
        }
        if line == b"\n" {
            in_sigs = true;
        }
        i = end;
    }
    if start < bytes.len() {
        out.push(&bytes[start..]);
    }
    out
}

/// Parses and verifies a signed note in one step.
pub fn open_note(
    bytes: &[u8],
    trusted: &[NoteVerifier],
) -> Result<Verified<SignedText>, NoteError> {
    Note::parse(bytes)?.verify(trusted)
}

/// SHA-256 of a signed note's text: its lines up to the blank line that starts the signatures,
/// each with its LF. This is what statements reference as `seal_sha256` and
/// `custody_receipt_sha256` (`custody.md` §4); for a note that is a statement it equals
/// `Statement::digest`.
pub fn note_text_digest(note: &[u8]) -> crate::Sha256Digest {
    let end = note
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or(note.len(), |p| p + 1);
    crate::Sha256Digest::of(&note[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(name: &str) -> NoteSigner {
        NoteSigner::from_seed(name, &[1; 32]).expect("valid name")
    }

    #[test]
    fn sign_verify_and_key_strings_round_trip() {
        let s = signer("xx-test");
        let note = s.sign("hello\nworld\n").expect("signs");
        let v = s.verifier();
        let opened = open_note(note.as_bytes(), std::slice::from_ref(&v)).expect("verifies");
        assert_eq!(opened.text, "hello\nworld\n");
        assert_eq!(opened.signers, vec!["xx-test".to_owned()]);
        let v2: NoteVerifier = v.to_string().parse().expect("parses");
        assert_eq!(v2, v);
        let s2: NoteSigner = s.to_secret_string().parse().expect("parses");
        assert_eq!(s2.verifier(), v);
        assert!(!format!("{s:?}").contains(&s.to_secret_string()[20..]));
    }

    /// The C2SP example from the signed-note spec verifies with Go's published key.
    #[test]
    fn go_note_interop_example() {
        // From golang.org/x/mod/sumdb/note's documentation.
        let vkey: NoteVerifier =
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
                .parse()
                .expect("verifier");
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let opened = open_note(note.as_bytes(), std::slice::from_ref(&vkey)).expect("verifies");
        assert!(opened.text.starts_with("If you think"));
        // Our signer, from Go's published private key, reproduces the note byte for byte.
        let skey: NoteSigner =
            "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
                .parse()
                .expect("signer");
        assert_eq!(skey.verifier(), vkey);
        assert_eq!(skey.sign(&opened.text).expect("signs"), note);
    }

    #[test]
    fn unknown_known_and_bad_signatures() {
        let a = signer("agency-a");
        let b = NoteSigner::from_seed("agency-b", &[2; 32]).expect("name");
        let note = a.sign("text\n").expect("signs");
        // Unknown key only: rejected.
        assert_eq!(
            open_note(note.as_bytes(), &[b.verifier()]),
            Err(NoteError::NoTrustedSignature)
        );
        // Known key plus an extra unknown signature: accepted, the unknown one ignored.
        let both = b.cosign(&note).expect("cosign");
        let opened = open_note(both.as_bytes(), &[a.verifier()]).expect("verifies");
        assert_eq!(opened.signers, vec!["agency-a".to_owned()]);
        // Same name, other key (so other id): ignored, not an error.
        let impostor = NoteSigner::from_seed("agency-a", &[9; 32]).expect("name");
        assert_eq!(
            open_note(note.as_bytes(), &[impostor.verifier()]),
            Err(NoteError::NoTrustedSignature)
        );
        // Known key, bad signature: whole note rejected.
        let mut bad = note.clone().into_bytes();
        let n = bad.len();
        bad[n - 5] = if bad[n - 5] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            open_note(&bad, &[a.verifier()]),
            Err(NoteError::BadSignature(_) | NoteError::Malformed(_))
        ));
        // Changed text.
        let changed = note.replacen("text", "texT", 1);
        assert_eq!(
            open_note(changed.as_bytes(), &[a.verifier()]),
            Err(NoteError::BadSignature("agency-a".into()))
        );
    }

    #[test]
    fn signature_count_and_size_limits() {
        let a = signer("agency-a");
        let mut note = a.sign("text\n").expect("signs");
        let others: Vec<NoteSigner> = (0..16)
            .map(|i| NoteSigner::from_seed(&format!("w{i}"), &[i as u8 + 10; 32]).expect("n"))
            .collect();
        for o in &others {
            note = o.cosign(&note).expect("cosign");
        }
        // 17 signatures: accepted.
        assert!(open_note(note.as_bytes(), &[a.verifier()]).is_ok());
        // 10 000 signatures: refused by the size limit before any verification.
        let line = note.lines().last().expect("line").to_owned() + "\n";
        let mut huge = note.clone();
        for _ in 0..10_000 {
            huge.push_str(&line);
        }
        assert_eq!(
            open_note(huge.as_bytes(), &[a.verifier()]),
            Err(NoteError::TooLarge)
        );
        // 101 short signature lines under the byte limit: refused by the count limit.
        let mut many = a.sign("text\n").expect("signs");
        for i in 0..MAX_SIGNATURES {
            many.push_str(&format!("\u{2014} k{i} AAAAAAA=\n"));
        }
        assert_eq!(
            open_note(many.as_bytes(), &[a.verifier()]),
            Err(NoteError::TooLarge)
        );
    }

    #[test]
    fn malformed_notes() {
        let a = signer("agency-a");
        for bad in [
            "",
            "text\n",
            "text\n\n",
            "text\n\n\u{2014} agency-a\n",
            "text\r\n\n\u{2014} agency-a AAAAAAAA\n",
            "text\n\n- agency-a AAAAAAAA\n",
        ] {
            assert!(
                open_note(bad.as_bytes(), &[a.verifier()]).is_err(),
                "{bad:?}"
            );
        }
        assert!(a.sign("no newline").is_err());
        assert!(a.sign("tab\there\n").is_err());
    }
}
