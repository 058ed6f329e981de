//! Signed statements: seal, custody / delivery / purge receipts, rejection and fetch notices,
//! damage reports and key revocations (`custody.md` §4).

use std::fmt::Write as _;

use crate::error::{FieldError, ParseError};
use crate::ids::{AgencyId, Sha256Digest, Timestamp, TransferId};
use crate::note::{Note, NoteSigner, NoteVerifier};
use crate::revocation::KeyKind;
use crate::text::{Fields, Text};
use crate::verified::Verified;

const MAGIC: &str = "rogatory/v1";

/// The lines every statement starts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The transfer (or [`TransferId::NONE`]).
    pub transfer: TransferId,
    /// The agency that issues and signs the statement.
    pub issuer: AgencyId,
    /// The issuer's clock when it issued the statement.
    pub time: Timestamp,
}

/// The peer of a rejection: an agency, or `unknown` when it could not be identified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// An authenticated agency.
    Agency(AgencyId),
    /// Not identified (no or untrusted certificate).
    Unknown,
}

impl std::str::FromStr for Peer {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "unknown" {
            Ok(Self::Unknown)
        } else {
            s.parse().map(Self::Agency)
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Agency(a) => a.fmt(f),
            Self::Unknown => f.write_str("unknown"),
        }
    }
}

/// A statement (`custody.md` §4). Field order in the text is the order of the fields here.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Statement {
    /// The sender's seal over a manifest.
    ManifestSeal {
        /// Common lines.
        head: Head,
        /// SHA-256 of the canonical manifest.
        manifest_sha256: Sha256Digest,
        /// Size of the canonical manifest in bytes.
        manifest_size: u64,
        /// Recipient agencies, sorted.
        recipients: Vec<AgencyId>,
        /// Number of files.
        files: u64,
        /// Total ciphertext bytes.
        ciphertext_bytes: u64,
    },
    /// The relay holds the complete, verified ciphertext.
    CustodyReceipt {
        /// Common lines.
        head: Head,
        /// The sending agency.
        sender: AgencyId,
        /// Recipient agencies, sorted.
        recipients: Vec<AgencyId>,
        /// SHA-256 of the canonical manifest.
        manifest_sha256: Sha256Digest,
        /// SHA-256 of the seal's text.
        seal_sha256: Sha256Digest,
        /// Number of files.
        files: u64,
        /// Total ciphertext bytes held.
        ciphertext_bytes: u64,
    },
    /// The recipient decrypted every file and every plaintext digest matched.
    DeliveryReceipt {
        /// Common lines.
        head: Head,
        /// The sending agency.
        sender: AgencyId,
        /// SHA-256 of the canonical manifest.
        manifest_sha256: Sha256Digest,
        /// SHA-256 of the seal's text.
        seal_sha256: Sha256Digest,
        /// SHA-256 of the custody receipt's text.
        custody_receipt_sha256: Sha256Digest,
        /// Number of files.
        files: u64,
        /// Total plaintext bytes verified.
        plaintext_bytes: u64,
    },
    /// The relay deleted the ciphertext.
    PurgeReceipt {
        /// Common lines.
        head: Head,
        /// The sending agency.
        sender: AgencyId,
        /// SHA-256 of the canonical manifest.
        manifest_sha256: Sha256Digest,
        /// Number of files.
        files: u64,
        /// Ciphertext bytes deleted.
        ciphertext_bytes: u64,
        /// Why (e.g. `retention expired 2027-12-31`).
        reason: Text,
    },
    /// The relay refused a peer or a request.
    Rejection {
        /// Common lines.
        head: Head,
        /// Who was refused.
        peer: Peer,
        /// SHA-256 of the peer's certificate (DER).
        peer_cert_sha256: Sha256Digest,
        /// The protocol error code (`docs/protocol.md`).
        code: Text,
        /// Human-readable reason.
        reason: Text,
    },
    /// The relay found ciphertext of a receipted transfer lost or damaged (`relay.md` §10); the
    /// transfer is not fetchable until the sender re-sends what is missing.
    DamageReport {
        /// Common lines.
        head: Head,
        /// The sending agency.
        sender: AgencyId,
        /// SHA-256 of the canonical manifest.
        manifest_sha256: Sha256Digest,
        /// Number of files found damaged.
        files: u64,
        /// What was found (e.g. `file 0: piece 3 is missing`).
        reason: Text,
    },
    /// A key of `agency` is revoked from `head.time` on (`custody.md` §8.3). `head.transfer` is
    /// [`TransferId::NONE`]. Issued by the agency itself or, as a local revocation, by the
    /// agency that trusts it.
    KeyRevocation {
        /// Common lines.
        head: Head,
        /// The agency whose key is revoked.
        agency: AgencyId,
        /// Which of its keys.
        key_kind: KeyKind,
        /// SHA-256 that names the key (`custody.md` §8.3: the TLS SPKI pin, the signed-note
        /// verifier key string, or the age recipient string).
        key_sha256: Sha256Digest,
        /// Why (e.g. `laptop stolen`).
        reason: Text,
    },
    /// A recipient fetched ciphertext.
    Fetch {
        /// Common lines.
        head: Head,
        /// The recipient agency.
        peer: AgencyId,
        /// Number of files fetched.
        files: u64,
        /// Ciphertext bytes sent.
        ciphertext_bytes: u64,
    },
}

impl Statement {
    /// The type word of the first line.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ManifestSeal { .. } => "manifest-seal",
            Self::CustodyReceipt { .. } => "custody-receipt",
            Self::DeliveryReceipt { .. } => "delivery-receipt",
            Self::PurgeReceipt { .. } => "purge-receipt",
            Self::Rejection { .. } => "rejection",
            Self::Fetch { .. } => "fetch",
            Self::DamageReport { .. } => "damage-report",
            Self::KeyRevocation { .. } => "key-revocation",
        }
    }

    /// The common lines.
    pub fn head(&self) -> &Head {
        match self {
            Self::ManifestSeal { head, .. }
            | Self::CustodyReceipt { head, .. }
            | Self::DeliveryReceipt { head, .. }
            | Self::PurgeReceipt { head, .. }
            | Self::Rejection { head, .. }
            | Self::Fetch { head, .. }
            | Self::DamageReport { head, .. }
            | Self::KeyRevocation { head, .. } => head,
        }
    }

    /// The canonical text.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(512);
        let h = self.head();
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "{MAGIC} {}\ntransfer {}\nissuer {}\ntime {}\n",
            self.kind(),
            h.transfer,
            h.issuer,
            h.time
        );
        let mut line = |k: &str, v: &dyn std::fmt::Display| {
            let _ = writeln!(s, "{k} {v}");
        };
        match self {
            Self::ManifestSeal {
                manifest_sha256,
                manifest_size,
                recipients,
                files,
                ciphertext_bytes,
                ..
            } => {
                line("manifest-sha256", manifest_sha256);
                line("manifest-size", manifest_size);
                for r in recipients {
                    line("recipient", r);
                }
                line("files", files);
                line("ciphertext-bytes", ciphertext_bytes);
            }
            Self::CustodyReceipt {
                sender,
                recipients,
                manifest_sha256,
                seal_sha256,
                files,
                ciphertext_bytes,
                ..
            } => {
                line("sender", sender);
                for r in recipients {
                    line("recipient", r);
                }
                line("manifest-sha256", manifest_sha256);
                line("seal-sha256", seal_sha256);
                line("files", files);
                line("ciphertext-bytes", ciphertext_bytes);
            }
            Self::DeliveryReceipt {
                sender,
                manifest_sha256,
                seal_sha256,
                custody_receipt_sha256,
                files,
                plaintext_bytes,
                ..
            } => {
                line("sender", sender);
                line("manifest-sha256", manifest_sha256);
                line("seal-sha256", seal_sha256);
                line("custody-receipt-sha256", custody_receipt_sha256);
                line("files", files);
                line("plaintext-bytes", plaintext_bytes);
            }
            Self::PurgeReceipt {
                sender,
                manifest_sha256,
                files,
                ciphertext_bytes,
                reason,
                ..
            } => {
                line("sender", sender);
                line("manifest-sha256", manifest_sha256);
                line("files", files);
                line("ciphertext-bytes", ciphertext_bytes);
                line("reason", reason);
            }
            Self::Rejection {
                peer,
                peer_cert_sha256,
                code,
                reason,
                ..
            } => {
                line("peer", peer);
                line("peer-cert-sha256", peer_cert_sha256);
                line("code", code);
                line("reason", reason);
            }
            Self::Fetch {
                peer,
                files,
                ciphertext_bytes,
                ..
            } => {
                line("peer", peer);
                line("files", files);
                line("ciphertext-bytes", ciphertext_bytes);
            }
            Self::DamageReport {
                sender,
                manifest_sha256,
                files,
                reason,
                ..
            } => {
                line("sender", sender);
                line("manifest-sha256", manifest_sha256);
                line("files", files);
                line("reason", reason);
            }
            Self::KeyRevocation {
                agency,
                key_kind,
                key_sha256,
                reason,
                ..
            } => {
                line("agency", agency);
                line("key-kind", key_kind);
                line("key-sha256", key_sha256);
                line("reason", reason);
            }
        }
        s
    }

    /// Parses canonical text; anything else is refused.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        const KIND: &str = "statement";
        let mut f = Fields::new(KIND, text)?;
        let kind = f.raw(MAGIC)?;
        let head = Head {
            transfer: f.get("transfer")?,
            issuer: f.get("issuer")?,
            time: f.get("time")?,
        };
        let recipients = |f: &mut Fields<'_>| -> Result<Vec<AgencyId>, ParseError> {
            let r: Vec<AgencyId> = f.repeated("recipient")?;
            if r.windows(2).any(|w| w[0] >= w[1]) {
                return Err(ParseError::syntax(KIND, "recipients not sorted and unique"));
            }
            Ok(r)
        };
        let s = match kind {
            "manifest-seal" => Self::ManifestSeal {
                head,
                manifest_sha256: f.get("manifest-sha256")?,
                manifest_size: f.number("manifest-size")?,
                recipients: recipients(&mut f)?,
                files: f.number("files")?,
                ciphertext_bytes: f.number("ciphertext-bytes")?,
            },
            "custody-receipt" => Self::CustodyReceipt {
                head,
                sender: f.get("sender")?,
                recipients: recipients(&mut f)?,
                manifest_sha256: f.get("manifest-sha256")?,
                seal_sha256: f.get("seal-sha256")?,
                files: f.number("files")?,
                ciphertext_bytes: f.number("ciphertext-bytes")?,
            },
            "delivery-receipt" => Self::DeliveryReceipt {
                head,
                sender: f.get("sender")?,
                manifest_sha256: f.get("manifest-sha256")?,
                seal_sha256: f.get("seal-sha256")?,
                custody_receipt_sha256: f.get("custody-receipt-sha256")?,
                files: f.number("files")?,
                plaintext_bytes: f.number("plaintext-bytes")?,
            },
            "purge-receipt" => Self::PurgeReceipt {
                head,
                sender: f.get("sender")?,
                manifest_sha256: f.get("manifest-sha256")?,
                files: f.number("files")?,
                ciphertext_bytes: f.number("ciphertext-bytes")?,
                reason: f.get("reason")?,
            },
            "rejection" => Self::Rejection {
                head,
                peer: f.get("peer")?,
                peer_cert_sha256: f.get("peer-cert-sha256")?,
                code: f.get("code")?,
                reason: f.get("reason")?,
            },
            "fetch" => Self::Fetch {
                head,
                peer: f.get("peer")?,
                files: f.number("files")?,
                ciphertext_bytes: f.number("ciphertext-bytes")?,
            },
            "damage-report" => Self::DamageReport {
                head,
                sender: f.get("sender")?,
                manifest_sha256: f.get("manifest-sha256")?,
                files: f.number("files")?,
                reason: f.get("reason")?,
            },
            "key-revocation" => {
                if head.transfer != TransferId::NONE {
                    return Err(ParseError::syntax(
                        KIND,
                        "a key revocation names no transfer (transfer must be all zeros)",
                    ));
                }
                Self::KeyRevocation {
                    head,
                    agency: f.get("agency")?,
                    key_kind: f.get("key-kind")?,
                    key_sha256: f.get("key-sha256")?,
                    reason: f.get("reason")?,
                }
            }
            other => {
                return Err(ParseError::syntax(KIND, format!("unknown type {other:?}")));
            }
        };
        f.end()?;
        Ok(s)
    }

    /// Signs the statement; the signer's key name must be the issuer.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, ParseError> {
        if signer.name() != self.head().issuer.as_str() {
            return Err(ParseError::syntax("statement", "signer is not the issuer"));
        }
        Ok(signer.sign(&self.encode())?)
    }

    /// Verifies a statement note with the issuer's key and parses it. The issuer line must
    /// name the key that signed.
    pub fn open(note: &[u8], issuer_key: &NoteVerifier) -> Result<Verified<Self>, ParseError> {
        let signed = Note::parse(note)?.verify(std::slice::from_ref(issuer_key))?;
        let statement = Self::parse(&signed.text)?;
        if statement.head().issuer.as_str() != issuer_key.name() {
            return Err(ParseError::syntax(
                "statement",
                "issuer is not the signing key",
            ));
        }
        Ok(signed.map(|_| statement))
    }

    /// SHA-256 of the canonical text: the statement's id (never of signature bytes).
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of(self.encode().as_bytes())
    }
}
