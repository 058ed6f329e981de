//! Agency cards, fingerprints and the trust store (`custody.md` §8).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rogatory_envelope::Recipient;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::error::{FieldError, ParseError};
use crate::ids::{AgencyId, Sha256Digest};
use crate::note::{Note, NoteSigner, NoteVerifier};
use crate::verified::Verified;

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The public card of an agency.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgencyCard {
    format: CardFormat,
    /// The agency id; also the key name of `verifier_key`.
    pub id: AgencyId,
    /// Display name.
    pub name: String,
    /// ISO 3166-1 alpha-2 code.
    pub jurisdiction: String,
    /// The signed-note verifier key of the agency's statements.
    #[serde(with = "as_text")]
    pub verifier_key: NoteVerifier,
    /// The age recipient that evidence for this agency is encrypted to.
    #[serde(with = "as_text")]
    pub age_recipient: Recipient,
    /// SHA-256 pins of the agency's TLS certificate SubjectPublicKeyInfo, sorted.
    pub tls_spki_sha256: Vec<Sha256Digest>,
}

crate::ids::format_tag!(CardFormat, "rogatory-card/v1");

mod as_text {
    use super::*;
    pub(super) fn serialize<T: fmt::Display, S: Serializer>(
        v: &T,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: fmt::Display,
        D: Deserializer<'de>,
    {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl AgencyCard {
    /// A card for `verifier_key`'s agency.
    pub fn new(
        verifier_key: NoteVerifier,
        name: &str,
        jurisdiction: &str,
        age_recipient: Recipient,
        mut tls_spki_sha256: Vec<Sha256Digest>,
    ) -> Result<Self, ParseError> {
        tls_spki_sha256.sort();
        tls_spki_sha256.dedup();
        let c = Self {
            format: CardFormat,
            id: verifier_key.name().parse()?,
            name: name.to_owned(),
            jurisdiction: jurisdiction.to_owned(),
            verifier_key,
            age_recipient,
            tls_spki_sha256,
        };
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ParseError> {
        const KIND: &str = "card";
        if self.verifier_key.name() != self.id.as_str() {
            return Err(ParseError::syntax(
                KIND,
                "verifier key name is not the agency id",
            ));
        }
        if self.name.trim().is_empty()
            || self.name.len() > 256
            || self.name.chars().any(char::is_control)
        {
            return Err(FieldError::new("agency name", &self.name).into());
        }
        let j = self.jurisdiction.as_bytes();
        if j.len() != 2 || !j.iter().all(u8::is_ascii_uppercase) {
            return Err(
                FieldError::new("jurisdiction (ISO 3166-1 alpha-2)", &self.jurisdiction).into(),
            );
        }
        if self.tls_spki_sha256.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ParseError::syntax(KIND, "TLS pins not sorted and unique"));
        }
        Ok(())
    }

    /// The canonical JSON line (without the final newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The card file: a signed note whose text is the JSON line. `signer` must be the card's key.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, ParseError> {
        if signer.verifier() != self.verifier_key {
            return Err(ParseError::syntax("card", "signer is not the card's key"));
        }
        Ok(signer.sign(&format!("{}\n", self.to_json()))?)
    }

    /// Parses a card file and checks its self-signature. This proves only that the card was
    /// made by the holder of its key; trust comes from the fingerprint (`TrustStore::add`).
    pub fn open(card_note: &[u8]) -> Result<Verified<Self>, ParseError> {
        const KIND: &str = "card";
        let note = Note::parse(card_note)?;
        let line = note
            .unverified_text()
            .strip_suffix('\n')
            .filter(|l| !l.contains('\n'))
            .ok_or_else(|| ParseError::syntax(KIND, "text must be one JSON line"))?;
        let card: Self =
            serde_json::from_str(line).map_err(|e| ParseError::syntax(KIND, e.to_string()))?;
        card.validate()?;
        if card.to_json() != line {
            return Err(ParseError::syntax(KIND, "not in canonical form"));
        }
        let key = card.verifier_key.clone();
        let signed = note.verify(std::slice::from_ref(&key))?;
        Ok(signed.map(|_| card))
    }

    /// The card's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.verifier_key)
    }

    /// The verifier key of this agency's audit log (`<id>/audit`).
    pub fn log_verifier(&self) -> NoteVerifier {
        // Invariant: an agency id followed by "/audit" is a valid key name.
        self.verifier_key
            .with_name(&format!("{}/audit", self.id))
            .unwrap_or_else(|| self.verifier_key.clone())
    }
}

/// A phone-readable fingerprint of an agency's signing key (`custody.md` §8).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// `SHA-256("rogatory-fingerprint/v1" || LF || verifier key string)`.
    pub fn of(key: &NoteVerifier) -> Self {
        let mut h = Sha256::new();
        h.update(b"rogatory-fingerprint/v1\n");
        h.update(key.to_string().as_bytes());
        Self(h.finalize().into())
    }

    fn base32(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(52);
        let (mut acc, mut bits) = (0u32, 0u32);
        for &b in &self.0 {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(B32[((acc >> bits) & 31) as usize]);
            }
        }
        if bits > 0 {
            out.push(B32[((acc << (5 - bits)) & 31) as usize]);
        }
        out
    }
}

/// §8.1: Luhn mod 32 over base32 values.
fn luhn32(group: &[u8]) -> u8 {
    let (mut factor, mut sum) = (1u32, 0u32);
    for &c in group {
        let v = B32.iter().position(|&x| x == c).unwrap_or(0) as u32;
        let a = factor * v;
        factor = 3 - factor;
        sum += a / 32 + a % 32;
    }
    B32[((32 - sum % 32) % 32) as usize]
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = Vec::with_capacity(56);
        for group in self.base32().chunks(13) {
            chars.extend_from_slice(group);
            chars.push(luhn32(group));
        }
        let groups: Vec<&str> = chars
            .chunks(7)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        f.write_str(&groups.join("-"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Compares a typed fingerprint with a card's: case, spaces and dashes do not matter.
pub fn fingerprint_matches(typed: &str, actual: &Fingerprint) -> bool {
    let norm: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let want: String = actual.to_string().replace('-', "");
    use subtle::ConstantTimeEq;
    norm.len() == want.len() && bool::from(norm.as_bytes().ct_eq(want.as_bytes()))
}

/// Why a card could not be added to the trust store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The card is invalid.
    #[error(transparent)]
    Card(#[from] ParseError),
    /// The fingerprint does not match.
    #[error("fingerprint mismatch for {id}: the card's is {actual}")]
    FingerprintMismatch {
        /// The agency.
        id: AgencyId,
        /// The card's actual fingerprint.
        actual: String,
    },
    /// A card with another key is already trusted for this agency.
    #[error("a different key is already trusted for {0}; remove it first")]
    Conflict(AgencyId),
}

/// The set of trusted agencies: at most one card per agency id.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    cards: BTreeMap<AgencyId, Verified<AgencyCard>>,
}

impl TrustStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a card after checking its signature and the fingerprint the caller read out of
    /// band. Re-adding the same key (e.g. with new TLS pins) replaces the card.
    pub fn add(
        &mut self,
        card_note: &[u8],
        expected_fingerprint: &str,
    ) -> Result<&AgencyCard, TrustError> {
        let card = AgencyCard::open(card_note)?;
        let actual = card.fingerprint();
        if !fingerprint_matches(expected_fingerprint, &actual) {
            return Err(TrustError::FingerprintMismatch {
                id: card.id.clone(),
                actual: actual.to_string(),
            });
        }
        if let Some(old) = self.cards.get(&card.id)
            && old.verifier_key != card.verifier_key
        {
            return Err(TrustError::Conflict(card.id.clone()));
        }
        let id = card.id.clone();
        self.cards.insert(id.clone(), card);
        Ok(&self.cards[&id])
    }

    /// Adds a card already trusted by other means (loading the store from disk).
    pub fn insert_verified(&mut self, card: Verified<AgencyCard>) {
        self.cards.insert(card.id.clone(), card);
    }

    /// Removes an agency.
    pub fn remove(&mut self, id: &AgencyId) -> Option<Verified<AgencyCard>> {
        self.cards.remove(id)
    }

    /// The card of an agency.
    pub fn get(&self, id: &AgencyId) -> Option<&AgencyCard> {
        self.cards.get(id).map(|c| &**c)
    }

    /// The agency whose card pins this TLS SPKI hash.
    pub fn by_spki(&self, spki_sha256: &Sha256Digest) -> Option<&AgencyCard> {
        self.cards
            .values()
            .map(|c| &**c)
            .find(|c| c.tls_spki_sha256.iter().any(|p| p.ct_eq(spki_sha256)))
    }

    /// All trusted cards, by id.
    pub fn cards(&self) -> impl Iterator<Item = &AgencyCard> {
        self.cards.values().map(|c| &**c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AgencyIdentity;

    fn card(seed: u8) -> (AgencyCard, String) {
        AgencyIdentity::from_seeds("de-bka".parse().expect("id"), &[seed; 32], [seed; 32])
            .card("BKA", "DE", vec![])
            .expect("card")
    }

    #[test]
    fn trust_requires_the_fingerprint_and_refuses_a_second_key() {
        let (c, note) = card(1);
        let fp = c.fingerprint().to_string();
        assert_eq!(fp.len(), 63);
        assert_eq!(fp.split('-').count(), 8);
        let mut store = TrustStore::new();
        // A one-character typo is refused.
        let mut typo = fp.clone().into_bytes();
        typo[0] = if typo[0] == b'A' { b'B' } else { b'A' };
        let typo = String::from_utf8(typo).expect("ascii");
        assert!(matches!(
            store.add(note.as_bytes(), &typo),
            Err(TrustError::FingerprintMismatch { .. })
        ));
        // Case, spaces and dashes do not matter.
        let relaxed = fp.to_lowercase().replace('-', " ");
        assert!(store.add(note.as_bytes(), &relaxed).is_ok());
        assert_eq!(store.get(&c.id), Some(&c));
        // Another key for the same agency id is a conflict, not a silent replacement.
        let (c2, note2) = card(2);
        assert!(matches!(
            store.add(note2.as_bytes(), &c2.fingerprint().to_string()),
            Err(TrustError::Conflict(_))
        ));
        assert!(store.remove(&c.id).is_some());
        assert!(
            store
                .add(note2.as_bytes(), &c2.fingerprint().to_string())
                .is_ok()
        );
    }

    #[test]
    fn luhn_check_characters_catch_single_substitutions() {
        let (c, _) = card(3);
        let chars = c.fingerprint().base32();
        for group in chars.chunks(13) {
            let check = luhn32(group);
            for i in 0..group.len() {
                let mut g = group.to_vec();
                g[i] = if g[i] == b'A' { b'B' } else { b'A' };
                assert_ne!(luhn32(&g), check, "substitution at {i} undetected");
            }
        }
    }

    #[test]
    fn tampered_or_foreign_cards_are_refused() {
        let (_, note) = card(1);
        let tampered = note.replacen("\"BKA\"", "\"BKB\"", 1);
        assert!(AgencyCard::open(tampered.as_bytes()).is_err());
        // Signed by another key than its verifier_key.
        let other = NoteSigner::from_seed("de-bka", &[9; 32]).expect("name");
        let text = &note[..note.find("\n\n").expect("split") + 1];
        let resigned = other.sign(text).expect("sign");
        assert!(AgencyCard::open(resigned.as_bytes()).is_err());
    }
}
