//! The canonical JSON manifest, its legal metadata, relative paths and ciphertext pieces
//! (`custody.md` §5).

use std::ops::Range;

use rogatory_envelope::{ENCRYPTED_CHUNK_SIZE, MAX_HEADER_LEN, chunk_count, payload_len};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{FieldError, ParseError};
use crate::ids::{AgencyId, CalendarDate, Sha256Digest, Timestamp, TransferId};
use crate::merkle::{Hash, Tree, leaf_hash};
use crate::note::{NoteSigner, NoteVerifier};
use crate::statement::{Head, Statement};
use crate::verified::Verified;

/// `custody.md` §10: manifest size limit.
pub const MAX_MANIFEST_LEN: usize = 32 * 1024 * 1024;
/// `custody.md` §10: files per manifest.
pub const MAX_FILES: usize = 1_000_000;
/// `custody.md` §10: size of the encrypted contents (the contents' limit plus age's overhead).
pub const MAX_CONTENTS_CIPHERTEXT_LEN: u64 = MAX_MANIFEST_LEN as u64 + (1 << 20);
const MAX_PATH: usize = 4096;
const MAX_COMPONENT: usize = 255;
const MAX_LEGAL: usize = 4096;

/// A safe relative path (`custody.md` §5.1): it cannot hold `..`, an absolute path, a drive
/// letter, a backslash, NUL, control or bidi-override characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RelativePath(String);

impl RelativePath {
    /// The path, `/`-separated.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

/// Bidirectional controls and invisible characters (`custody.md` §5.1): they make two different
/// names or values look the same, or text read in another order than it is stored. Zero-width
/// (non-)joiners stay allowed: scripts such as Persian and Devanagari need them.
pub fn is_bidi_or_invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' // soft hyphen
        | '\u{061c}' // Arabic letter mark
        | '\u{180e}' // Mongolian vowel separator
        | '\u{200b}' // zero-width space
        | '\u{200e}' | '\u{200f}' // left-to-right and right-to-left marks
        | '\u{202a}'..='\u{202e}' // embeddings and overrides
        | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
        | '\u{2066}'..='\u{2069}' // isolates
        | '\u{feff}' // byte order mark, zero-width no-break space
    )
}

fn forbidden_char(c: char) -> bool {
    c.is_control() || matches!(c, '\\' | ':') || is_bidi_or_invisible(c)
}

impl std::str::FromStr for RelativePath {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || FieldError::new("relative path", s);
        if s.is_empty() || s.len() > MAX_PATH || s.starts_with('/') || s.chars().any(forbidden_char)
        {
            return Err(bad());
        }
        for c in s.split('/') {
            if c.is_empty() || c == "." || c == ".." || c.len() > MAX_COMPONENT {
                return Err(bad());
            }
        }
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Display for RelativePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A legal metadata string: at most 4 096 bytes, no control, bidirectional or invisible
/// characters (LF allowed in notes).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LegalText(String);

impl LegalText {
    /// Validates a legal field; `multiline` allows LF. Control, bidirectional and invisible
    /// characters are refused ([`is_bidi_or_invisible`]).
    pub fn new(s: &str, multiline: bool) -> Result<Self, FieldError> {
        let ok = !s.trim().is_empty()
            && s.len() <= MAX_LEGAL
            && !s
                .chars()
                .any(|c| (c.is_control() && !(multiline && c == '\n')) || is_bidi_or_invisible(c));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(FieldError::new("legal metadata text", s))
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether the recipient may pass the evidence on.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnwardTransfer {
    /// Onward transfer is forbidden.
    Forbidden,
    /// Allowed only with the sender's consent.
    WithConsent,
}

/// The legal-metadata fields a relay's policy can ask for, by their JSON names (`custody.md` §5.4).
pub const LEGAL_FIELDS: &[&str] = &[
    "case_reference",
    "legal_basis",
    "requesting_authority",
    "executing_authority",
    "purpose",
    "classification",
    "retain_until",
    "onward_transfer",
];

/// The legal metadata of a transfer (`custody.md` §5). Which fields are required is policy.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Legal {
    /// Case reference of the requesting authority.
    pub case_reference: Option<LegalText>,
    /// Legal basis, e.g. treaty and article.
    pub legal_basis: Option<LegalText>,
    /// The authority that requested the evidence.
    pub requesting_authority: Option<LegalText>,
    /// The authority that executes the request.
    pub executing_authority: Option<LegalText>,
    /// Purpose of the transfer.
    pub purpose: Option<LegalText>,
    /// Classification marking.
    pub classification: Option<LegalText>,
    /// Date until which the evidence may be retained.
    pub retain_until: Option<CalendarDate>,
    /// Onward transfer rule (always set in the contents, §5.4).
    pub onward_transfer: Option<OnwardTransfer>,
    /// Free notes (LF allowed).
    pub notes: Option<LegalText>,
}

impl Legal {
    /// Whether the field named `field` ([`LEGAL_FIELDS`], or `notes`) is set; `None` for an
    /// unknown name.
    pub fn has(&self, field: &str) -> Option<bool> {
        Some(match field {
            "case_reference" => self.case_reference.is_some(),
            "legal_basis" => self.legal_basis.is_some(),
            "requesting_authority" => self.requesting_authority.is_some(),
            "executing_authority" => self.executing_authority.is_some(),
            "purpose" => self.purpose.is_some(),
            "classification" => self.classification.is_some(),
            "retain_until" => self.retain_until.is_some(),
            "onward_transfer" => self.onward_transfer.is_some(),
            "notes" => self.notes.is_some(),
            _ => return None,
        })
    }

    /// The names of the fields that are set, in [`LEGAL_FIELDS`] order (then `notes`).
    pub fn present(&self) -> Vec<&'static str> {
        LEGAL_FIELDS
            .iter()
            .chain(&["notes"])
            .copied()
            .filter(|f| self.has(f) == Some(true))
            .collect()
    }

    /// What the relay sees (§5.4): the fields named in `required`, and `retain_until` (the
    /// relay enforces retention); every other field, and always `notes`, left out.
    pub fn public(&self, required: &[String]) -> Legal {
        let keep = |f: &str| required.iter().any(|r| r == f);
        let text = |f: &str, v: &Option<LegalText>| if keep(f) { v.clone() } else { None };
        Legal {
            case_reference: text("case_reference", &self.case_reference),
            legal_basis: text("legal_basis", &self.legal_basis),
            requesting_authority: text("requesting_authority", &self.requesting_authority),
            executing_authority: text("executing_authority", &self.executing_authority),
            purpose: text("purpose", &self.purpose),
            classification: text("classification", &self.classification),
            retain_until: self.retain_until,
            onward_transfer: self.onward_transfer.filter(|_| keep("onward_transfer")),
            notes: None,
        }
    }

    /// Whether `self` (a manifest's public legal metadata) is a part of `full` (the
    /// contents'): every field it sets is set to the same value there, and `retain_until` is
    /// the same (§5.4).
    pub fn is_public_part_of(&self, full: &Legal) -> bool {
        fn part<T: PartialEq>(public: &Option<T>, full: &Option<T>) -> bool {
            public.is_none() || public == full
        }
        part(&self.case_reference, &full.case_reference)
            && part(&self.legal_basis, &full.legal_basis)
            && part(&self.requesting_authority, &full.requesting_authority)
            && part(&self.executing_authority, &full.executing_authority)
            && part(&self.purpose, &full.purpose)
            && part(&self.classification, &full.classification)
            && part(&self.onward_transfer, &full.onward_transfer)
            && self.notes.is_none()
            && self.retain_until == full.retain_until
    }
}

/// One file of a transfer as a recipient knows it: the manifest's sizes and piece root joined
/// with the contents' path and plaintext digest (§5.4).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FileEntry {
    /// Where the recipient creates it, relative to its output directory.
    pub path: RelativePath,
    /// Plaintext size.
    pub size: u64,
    /// Plaintext SHA-256.
    pub sha256: Sha256Digest,
    /// Size of the age file.
    pub ciphertext_size: u64,
    /// Merkle root over the ciphertext pieces (`custody.md` §5.2): the digest of the age file.
    pub piece_root: Sha256Digest,
}

/// One file of a manifest: what the relay checks and stores (§5).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Plaintext size.
    pub size: u64,
    /// Size of the age file.
    pub ciphertext_size: u64,
    /// Merkle root over the ciphertext pieces (§5.2).
    pub piece_root: Sha256Digest,
}

/// Where the manifest's contents are and what they hash to (§5.4).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentsRef {
    /// Size of the age-encrypted contents.
    pub ciphertext_size: u64,
    /// SHA-256 of the age-encrypted contents: what the relay holds.
    pub ciphertext_sha256: Sha256Digest,
    /// SHA-256 of the contents' canonical JSON (salted): what a recipient decrypted.
    pub sha256: Sha256Digest,
}

/// The manifest of a transfer (§5): what the sender seals and the relay sees. Names, plaintext
/// digests, notes and the legal fields the relay's policy does not ask for are in its
/// [`Contents`], encrypted to the recipients.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    format: Format,
    /// The transfer id.
    pub transfer_id: TransferId,
    /// The sending agency.
    pub sender: AgencyId,
    /// Recipient agencies, sorted and unique.
    pub recipients: Vec<AgencyId>,
    /// When the sender created the manifest.
    pub created_at: Timestamp,
    /// The legal metadata the relay sees.
    pub legal: Legal,
    /// The encrypted contents.
    pub contents: ContentsRef,
    /// Files, in the contents' order (sorted by path).
    pub files: Vec<ManifestFile>,
}

/// One file of the contents.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentsFile {
    /// Where the recipient creates it, relative to its output directory.
    pub path: RelativePath,
    /// Plaintext SHA-256.
    pub sha256: Sha256Digest,
}

/// The contents of a transfer (§5.4): for the recipients only, age-encrypted to them.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contents {
    format: ContentsFormat,
    /// The transfer id.
    pub transfer_id: TransferId,
    /// 32 random bytes, so that the manifest's digest of the contents reveals nothing.
    pub salt: Sha256Digest,
    /// All the legal metadata.
    pub legal: Legal,
    /// Files, sorted by path, in the manifest's order.
    pub files: Vec<ContentsFile>,
}

/// How the leaves of a file's `piece_root` are hashed (§5.2). The format of the offer and of the
/// manifest says which: a transfer keeps the one it was offered with, so a send begun before
/// version 3 resumes, and its relay verifies it, as it began.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum PieceHash {
    /// `rogatory-offer/v2`, `rogatory-manifest/v2`: leaf `SHA-256(0x00 || piece)`.
    Sha256,
    /// `rogatory-offer/v3`, `rogatory-manifest/v3`: leaf `SHA-256(0x00 || BLAKE3-256(piece))`.
    Blake3,
}

impl PieceHash {
    /// What a new transfer uses.
    pub const CURRENT: PieceHash = PieceHash::Blake3;

    /// The Merkle leaf hash (§6) of one piece.
    pub fn leaf(self, piece: &[u8]) -> Hash {
        match self {
            PieceHash::Sha256 => leaf_hash(piece),
            PieceHash::Blake3 => leaf_hash(blake3::hash(piece).as_bytes()),
        }
    }
}

crate::ids::format_tag!(Format(PieceHash) {
    "rogatory-manifest/v3" => PieceHash::Blake3,
    "rogatory-manifest/v2" => PieceHash::Sha256
});
crate::ids::format_tag!(ContentsFormat, "rogatory-contents/v1");
crate::ids::format_tag!(OfferFormat(PieceHash) {
    "rogatory-offer/v3" => PieceHash::Blake3,
    "rogatory-offer/v2" => PieceHash::Sha256
});

/// The sizes of one file of an offer.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferedFile {
    /// Plaintext size.
    pub size: u64,
    /// Size of the age file.
    pub ciphertext_size: u64,
}

/// What a sender announces before any data (`custody.md` §5.3): the manifest without what
/// only the data determines (paths, plaintext digests, piece roots). The relay applies its
/// policy to it and lays out its store; the sealed manifest that ends the upload must agree with
/// it in every field ([`Manifest::offer`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferOffer {
    format: OfferFormat,
    /// The transfer id.
    pub transfer_id: TransferId,
    /// The sending agency.
    pub sender: AgencyId,
    /// Recipient agencies, sorted and unique.
    pub recipients: Vec<AgencyId>,
    /// When the sender created the transfer (the manifest's `created_at`).
    pub created_at: Timestamp,
    /// Legal metadata.
    pub legal: Legal,
    /// File sizes, in manifest order.
    pub files: Vec<OfferedFile>,
}

impl TransferOffer {
    /// Builds an offer; checks the rules of §5.3 (recipients are sorted here).
    pub fn new(
        transfer_id: TransferId,
        sender: AgencyId,
        mut recipients: Vec<AgencyId>,
        created_at: Timestamp,
        legal: Legal,
        files: Vec<OfferedFile>,
    ) -> Result<Self, ParseError> {
        recipients.sort();
        let o = Self {
            format: OfferFormat(PieceHash::CURRENT),
            transfer_id,
            sender,
            recipients,
            created_at,
            legal,
            files,
        };
        o.validate()?;
        Ok(o)
    }

    fn validate(&self) -> Result<(), ParseError> {
        const KIND: &str = "offer";
        check_recipients_and_legal(KIND, &self.recipients, &self.legal)?;
        if self.legal.notes.is_some() {
            return Err(ParseError::syntax(
                KIND,
                "notes belong in the encrypted contents",
            ));
        }
        if self.files.len() > MAX_FILES {
            return Err(ParseError::TooLarge(KIND));
        }
        if self
            .files
            .iter()
            .any(|f| piece_layout(f.size, f.ciphertext_size).is_none())
        {
            return Err(ParseError::syntax(
                KIND,
                "a ciphertext size does not fit its plaintext size",
            ));
        }
        Ok(())
    }

    /// The canonical JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        to_canonical_json(self)
    }

    /// Parses canonical JSON: anything that does not re-encode byte for byte is refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        parse_canonical_json("offer", bytes, Self::validate)
    }

    /// How its pieces are hashed (its format, §5.2).
    pub fn piece_hash(&self) -> PieceHash {
        self.format.0
    }

    /// The piece layout of every file.
    pub fn layouts(&self) -> Vec<PieceLayout> {
        self.files
            .iter()
            // `validate` checked every file's sizes.
            .filter_map(|f| piece_layout(f.size, f.ciphertext_size))
            .collect()
    }

    /// Total ciphertext bytes.
    pub fn ciphertext_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.ciphertext_size).sum()
    }
}

fn to_canonical_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Invariant: our documents always serialise (no maps with non-string keys, no floats).
    serde_json::to_vec(v).unwrap_or_default()
}

/// §5: a document of at most 32 MiB that passes `validate` and re-encodes byte for byte.
fn parse_canonical_json<T: Serialize + serde::de::DeserializeOwned>(
    kind: &'static str,
    bytes: &[u8],
    validate: fn(&T) -> Result<(), ParseError>,
) -> Result<T, ParseError> {
    if bytes.len() > MAX_MANIFEST_LEN {
        return Err(ParseError::TooLarge(kind));
    }
    let v: T =
        serde_json::from_slice(bytes).map_err(|e| ParseError::syntax(kind, e.to_string()))?;
    validate(&v)?;
    if to_canonical_json(&v) != bytes {
        return Err(ParseError::syntax(kind, "not in canonical form"));
    }
    Ok(v)
}

fn check_recipients_and_legal(
    kind: &'static str,
    recipients: &[AgencyId],
    legal: &Legal,
) -> Result<(), ParseError> {
    if recipients.is_empty() || recipients.windows(2).any(|w| w[0] >= w[1]) {
        return Err(ParseError::syntax(
            kind,
            "recipients must be non-empty, sorted and unique",
        ));
    }
    for t in [
        &legal.case_reference,
        &legal.legal_basis,
        &legal.requesting_authority,
        &legal.executing_authority,
        &legal.purpose,
        &legal.classification,
    ]
    .into_iter()
    .flatten()
    {
        if t.0.contains('\n') {
            return Err(ParseError::syntax(
                kind,
                "only notes may span several lines",
            ));
        }
    }
    Ok(())
}

impl Serialize for LegalText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LegalText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        // Only `notes` may be multi-line; the others are checked again in `validate`.
        Self::new(&s, true).map_err(serde::de::Error::custom)
    }
}

crate::ids::serde_as_text!(RelativePath);

/// A transfer as its recipients know it (§5.4): the manifest joined with its contents. The
/// sender builds one from its files and splits it; a recipient gets one from
/// [`Manifest::open_contents`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Inventory {
    /// The transfer id.
    pub transfer_id: TransferId,
    /// The sending agency.
    pub sender: AgencyId,
    /// Recipient agencies, sorted and unique.
    pub recipients: Vec<AgencyId>,
    /// When the sender created the transfer.
    pub created_at: Timestamp,
    /// All the legal metadata.
    pub legal: Legal,
    /// Files, sorted by path.
    pub files: Vec<FileEntry>,
    /// How the files' pieces are hashed: [`PieceHash::CURRENT`] from [`Inventory::new`]; a
    /// resumed transfer keeps its offer's.
    pub piece_hash: PieceHash,
}

impl Inventory {
    /// Builds an inventory; sorts recipients and files and checks every rule of §5.
    pub fn new(
        transfer_id: TransferId,
        sender: AgencyId,
        mut recipients: Vec<AgencyId>,
        created_at: Timestamp,
        legal: Legal,
        mut files: Vec<FileEntry>,
    ) -> Result<Self, ParseError> {
        recipients.sort();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        const KIND: &str = "manifest";
        check_recipients_and_legal(KIND, &recipients, &legal)?;
        check_contents_legal(KIND, &legal)?;
        check_paths(KIND, files.iter().map(|f| &f.path))?;
        for f in &files {
            if piece_layout(f.size, f.ciphertext_size).is_none() {
                return Err(ParseError::syntax(
                    KIND,
                    format!("ciphertext size does not fit plaintext size for {}", f.path),
                ));
            }
        }
        Ok(Self {
            transfer_id,
            sender,
            recipients,
            created_at,
            legal,
            files,
            piece_hash: PieceHash::CURRENT,
        })
    }

    /// The contents (§5.4), with a fresh random salt.
    pub fn contents(&self) -> Contents {
        use rand::RngCore as _;
        let mut salt = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        self.contents_with_salt(Sha256Digest(salt))
    }

    /// The contents with a given salt (tests and golden files).
    pub fn contents_with_salt(&self, salt: Sha256Digest) -> Contents {
        Contents {
            format: ContentsFormat,
            transfer_id: self.transfer_id,
            salt,
            legal: self.legal.clone(),
            files: self
                .files
                .iter()
                .map(|f| ContentsFile {
                    path: f.path.clone(),
                    sha256: f.sha256,
                })
                .collect(),
        }
    }

    /// The manifest: `public_legal` is what the relay sees ([`Legal::public`]), `contents` the
    /// document from [`Self::contents`] and `contents_ciphertext` its age encryption.
    pub fn manifest(
        &self,
        public_legal: Legal,
        contents: &Contents,
        contents_ciphertext: &[u8],
    ) -> Result<Manifest, ParseError> {
        let m = Manifest {
            format: Format(self.piece_hash),
            transfer_id: self.transfer_id,
            sender: self.sender.clone(),
            recipients: self.recipients.clone(),
            created_at: self.created_at,
            legal: public_legal,
            contents: ContentsRef {
                ciphertext_size: contents_ciphertext.len() as u64,
                ciphertext_sha256: Sha256Digest::of(contents_ciphertext),
                sha256: contents.digest(),
            },
            files: self
                .files
                .iter()
                .map(|f| ManifestFile {
                    size: f.size,
                    ciphertext_size: f.ciphertext_size,
                    piece_root: f.piece_root,
                })
                .collect(),
        };
        m.validate()?;
        if !m.legal.is_public_part_of(&self.legal) || contents.transfer_id != self.transfer_id {
            return Err(ParseError::syntax(
                "manifest",
                "the public legal metadata is not a part of the contents'",
            ));
        }
        Ok(m)
    }

    /// Total ciphertext bytes.
    pub fn ciphertext_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.ciphertext_size).sum()
    }

    /// Total plaintext bytes.
    pub fn plaintext_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

fn check_paths<'a>(
    kind: &'static str,
    mut paths: impl Iterator<Item = &'a RelativePath>,
) -> Result<(), ParseError> {
    let Some(mut prev) = paths.next() else {
        return Ok(());
    };
    for p in paths {
        if prev >= p {
            return Err(ParseError::syntax(
                kind,
                "files must be sorted by path and unique",
            ));
        }
        prev = p;
    }
    Ok(())
}

/// The contents carry every rule a recipient relies on: the onward-transfer rule is set.
fn check_contents_legal(kind: &'static str, legal: &Legal) -> Result<(), ParseError> {
    if legal.onward_transfer.is_none() {
        return Err(ParseError::syntax(
            kind,
            "the onward-transfer rule is missing",
        ));
    }
    Ok(())
}

impl Contents {
    fn validate(&self) -> Result<(), ParseError> {
        const KIND: &str = "contents";
        if self.files.len() > MAX_FILES {
            return Err(ParseError::TooLarge(KIND));
        }
        check_contents_legal(KIND, &self.legal)?;
        check_paths(KIND, self.files.iter().map(|f| &f.path))
    }

    /// The canonical JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        to_canonical_json(self)
    }

    /// Parses canonical JSON: anything that does not re-encode byte for byte is refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        parse_canonical_json("contents", bytes, Self::validate)
    }

    /// SHA-256 of the canonical JSON.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of(&self.to_json())
    }
}

impl Manifest {
    fn validate(&self) -> Result<(), ParseError> {
        const KIND: &str = "manifest";
        check_recipients_and_legal(KIND, &self.recipients, &self.legal)?;
        if self.legal.notes.is_some() {
            return Err(ParseError::syntax(
                KIND,
                "notes belong in the encrypted contents",
            ));
        }
        if self.files.len() > MAX_FILES {
            return Err(ParseError::TooLarge(KIND));
        }
        if self.contents.ciphertext_size > MAX_CONTENTS_CIPHERTEXT_LEN {
            return Err(ParseError::TooLarge(KIND));
        }
        for (i, f) in self.files.iter().enumerate() {
            if piece_layout(f.size, f.ciphertext_size).is_none() {
                return Err(ParseError::syntax(
                    KIND,
                    format!("ciphertext size does not fit plaintext size for file {i}"),
                ));
            }
        }
        Ok(())
    }

    /// The canonical JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        to_canonical_json(self)
    }

    /// Parses canonical JSON: anything that does not re-encode byte for byte is refused.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        parse_canonical_json("manifest", bytes, Self::validate)
    }

    /// SHA-256 of the canonical JSON.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of(&self.to_json())
    }

    /// Total ciphertext bytes of the files.
    pub fn ciphertext_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.ciphertext_size).sum()
    }

    /// Total plaintext bytes.
    pub fn plaintext_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Whether `ciphertext` is the encrypted contents this manifest names (size and SHA-256).
    pub fn holds_contents_ciphertext(&self, ciphertext: &[u8]) -> bool {
        ciphertext.len() as u64 == self.contents.ciphertext_size
            && Sha256Digest::of(ciphertext).ct_eq(&self.contents.ciphertext_sha256)
    }

    /// Joins the manifest with its decrypted contents (§5.4): the contents' digest is the one
    /// the manifest names, same transfer, same number of files, and the manifest's legal
    /// metadata is a part of the contents'.
    pub fn open_contents(&self, contents_json: &[u8]) -> Result<Inventory, ParseError> {
        const KIND: &str = "contents";
        if !Sha256Digest::of(contents_json).ct_eq(&self.contents.sha256) {
            return Err(ParseError::syntax(
                KIND,
                "the contents do not match the sealed manifest's digest",
            ));
        }
        let c = Contents::parse(contents_json)?;
        if c.transfer_id != self.transfer_id || c.files.len() != self.files.len() {
            return Err(ParseError::syntax(
                KIND,
                "the contents belong to another transfer",
            ));
        }
        if !self.legal.is_public_part_of(&c.legal) {
            return Err(ParseError::syntax(
                KIND,
                "the manifest's legal metadata differs from the contents'",
            ));
        }
        Ok(Inventory {
            transfer_id: self.transfer_id,
            sender: self.sender.clone(),
            recipients: self.recipients.clone(),
            created_at: self.created_at,
            legal: c.legal,
            files: self
                .files
                .iter()
                .zip(c.files)
                .map(|(m, c)| FileEntry {
                    path: c.path,
                    size: m.size,
                    sha256: c.sha256,
                    ciphertext_size: m.ciphertext_size,
                    piece_root: m.piece_root,
                })
                .collect(),
            piece_hash: self.format.0,
        })
    }

    /// How its pieces are hashed (its format, §5.2).
    pub fn piece_hash(&self) -> PieceHash {
        self.format.0
    }

    /// The offer this manifest fulfils (`custody.md` §5.3).
    pub fn offer(&self) -> TransferOffer {
        TransferOffer {
            format: OfferFormat(self.format.0),
            transfer_id: self.transfer_id,
            sender: self.sender.clone(),
            recipients: self.recipients.clone(),
            created_at: self.created_at,
            legal: self.legal.clone(),
            files: self
                .files
                .iter()
                .map(|f| OfferedFile {
                    size: f.size,
                    ciphertext_size: f.ciphertext_size,
                })
                .collect(),
        }
    }

    /// The seal statement for this manifest.
    pub fn seal_statement(&self, time: Timestamp) -> Statement {
        let json = self.to_json();
        Statement::ManifestSeal {
            head: Head {
                transfer: self.transfer_id,
                issuer: self.sender.clone(),
                time,
            },
            manifest_sha256: Sha256Digest::of(&json),
            manifest_size: json.len() as u64,
            recipients: self.recipients.clone(),
            files: self.files.len() as u64,
            ciphertext_bytes: self.ciphertext_bytes(),
        }
    }

    /// Signs the seal (the signer must be the sender's key).
    pub fn seal(&self, signer: &NoteSigner, time: Timestamp) -> Result<String, ParseError> {
        self.seal_statement(time).sign(signer)
    }
}

/// A manifest whose seal verified with the sender's key and matches it in every field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedManifest {
    /// The manifest.
    pub manifest: Manifest,
    /// The seal statement.
    pub seal: Statement,
}

/// Verifies a sealed manifest (`custody.md` §4 and §5): the seal verifies with the sender's
/// key, and its digest, size, transfer, sender, recipients and counts match the manifest.
pub fn open_sealed_manifest(
    manifest_json: &[u8],
    seal_note: &[u8],
    sender_key: &NoteVerifier,
) -> Result<Verified<SealedManifest>, ParseError> {
    let seal = Statement::open(seal_note, sender_key)?;
    let manifest = Manifest::parse(manifest_json)?;
    let expected = manifest.seal_statement(seal.head().time);
    if *seal != expected {
        return Err(ParseError::syntax(
            "seal",
            "seal does not match the manifest",
        ));
    }
    Ok(seal.map(|seal| SealedManifest { manifest, seal }))
}

/// Where the pieces of an age file are (`custody.md` §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceLayout {
    /// Plaintext size.
    pub size: u64,
    /// Ciphertext size.
    pub ciphertext_size: u64,
    /// Length of piece 0 (header and payload nonce).
    pub head_len: u64,
}

/// The piece layout, or `None` if the sizes cannot belong to one age file.
pub fn piece_layout(size: u64, ciphertext_size: u64) -> Option<PieceLayout> {
    let payload = payload_len(size);
    let head_len = ciphertext_size.checked_sub(payload)?;
    // A header is at least the version line, one stanza line and the MAC line, plus the nonce.
    (head_len > 16 && head_len <= MAX_HEADER_LEN as u64 + 16).then_some(PieceLayout {
        size,
        ciphertext_size,
        head_len,
    })
}

impl PieceLayout {
    /// Number of pieces: 1 + number of STREAM chunks.
    pub fn count(&self) -> u64 {
        1 + chunk_count(self.size)
    }

    /// Byte range of piece `i` in the age file.
    pub fn range(&self, i: u64) -> Option<Range<u64>> {
        if i == 0 {
            return Some(0..self.head_len);
        }
        if i >= self.count() {
            return None;
        }
        let start = self.head_len + (i - 1) * ENCRYPTED_CHUNK_SIZE as u64;
        Some(start..(start + ENCRYPTED_CHUNK_SIZE as u64).min(self.ciphertext_size))
    }

    /// The piece that contains byte `offset`.
    pub fn piece_of(&self, offset: u64) -> Option<u64> {
        if offset >= self.ciphertext_size {
            return None;
        }
        if offset < self.head_len {
            return Some(0);
        }
        Some(1 + (offset - self.head_len) / ENCRYPTED_CHUNK_SIZE as u64)
    }
}

/// The leaf hashes of every piece of an age file, and their root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceTable {
    leaves: Vec<Hash>,
}

impl PieceTable {
    /// Computes the table of a complete age file.
    pub fn of_ciphertext(layout: &PieceLayout, hash: PieceHash, ciphertext: &[u8]) -> Option<Self> {
        if ciphertext.len() as u64 != layout.ciphertext_size {
            return None;
        }
        let leaves = (0..layout.count())
            .map(|i| {
                let r = layout.range(i)?;
                Some(hash.leaf(&ciphertext[r.start as usize..r.end as usize]))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { leaves })
    }

    /// The Merkle root (`piece_root`).
    pub fn root(&self) -> Sha256Digest {
        Sha256Digest(Tree::from_leaves(self.leaves.iter().copied()).root())
    }

    /// The leaf hashes.
    pub fn leaves(&self) -> &[Hash] {
        &self.leaves
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// test-plan.md 120: the leaf of a v3 piece is the RFC 6962 leaf of its BLAKE3-256 digest
    /// (the BLAKE3 value is the empty input's from the reference test vectors); a v2 leaf hashes
    /// the piece itself.
    #[test]
    fn piece_leaves_follow_the_format() {
        let empty = hex::decode("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")
            .expect("hex");
        assert_eq!(PieceHash::Blake3.leaf(b""), leaf_hash(&empty));
        assert_eq!(PieceHash::Sha256.leaf(b"piece"), leaf_hash(b"piece"));
        assert_ne!(
            PieceHash::Blake3.leaf(b"piece"),
            PieceHash::Sha256.leaf(b"piece")
        );
    }

    /// test-plan.md case 57: every one of these names is refused.
    #[test]
    fn traversal_names_are_refused() {
        for bad in [
            "../../x",
            "/etc/x",
            "C:\\x",
            "C:x",
            "\\\\srv\\share\\x",
            "a/../../x",
            "x\0y",
            ".",
            "..",
            "",
            "a//b",
            "a/",
            "a/./b",
            "x\ny",
            "x\u{1b}[31m",
            "evil\u{202e}txt.exe",
            "exhibit\u{200b}1.txt",
            "exhibit\u{200e}1.txt",
            "exhibit\u{200f}1.txt",
            "exhibit\u{061c}1.txt",
            "\u{feff}exhibit1.txt",
            "a/b\u{2066}c",
        ] {
            assert!(bad.parse::<RelativePath>().is_err(), "{bad:?}");
        }
        assert!("x".repeat(256).parse::<RelativePath>().is_err());
        for good in [
            "a",
            "a/b c/d é.pdf",
            "case 42/exhibit-1.bin",
            ".hidden",
            "a..b",
        ] {
            assert!(good.parse::<RelativePath>().is_ok(), "{good:?}");
        }
    }

    #[test]
    fn legal_text_refuses_controls_bidi_and_invisible_characters() {
        for bad in [
            "",
            "  ",
            "a\u{202e}b",
            "XX\u{200b}42",
            "\u{feff}case",
            "x\u{1b}[31m",
            "a\rb",
        ] {
            assert!(LegalText::new(bad, true).is_err(), "{bad:?}");
        }
        assert!(LegalText::new("line 1\nline 2", false).is_err());
        assert!(LegalText::new("line 1\nline 2", true).is_ok());
        assert!(LegalText::new(&"x".repeat(4097), false).is_err());
        assert!(
            LegalText::new(
                "Budapest Convention, art. 31 (\u{5e1}\u{5e2}\u{5d9}\u{5e3})",
                false
            )
            .is_ok()
        );
        // Zero-width joiners are part of some scripts.
        assert!(LegalText::new("\u{645}\u{200c}\u{6cc}", false).is_ok());
    }

    #[test]
    fn piece_layout_boundaries() {
        let l = piece_layout(65_536, 200 + 16 + 65_536 + 16).expect("fits");
        assert_eq!(l.count(), 2);
        assert_eq!(l.range(0), Some(0..216));
        assert_eq!(l.range(1), Some(216..216 + 65_552));
        assert_eq!(l.range(2), None);
        assert_eq!(l.piece_of(215), Some(0));
        assert_eq!(l.piece_of(216), Some(1));
        assert_eq!(l.piece_of(l.ciphertext_size), None);
        assert!(piece_layout(10, 10).is_none());
        assert!(piece_layout(0, 16).is_none());
    }
}
