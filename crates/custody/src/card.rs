//! Agency cards, fingerprints and the trust store (`custody.md` §8).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rogatory_envelope::{AnyRecipient, HybridRecipient, Recipient};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::chain::CardChain;
use crate::error::{FieldError, ParseError};
use crate::identity::AgencyIdentity;
use crate::ids::{AgencyId, Sha256Digest, Timestamp};
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
    /// The X25519 age recipient of this agency.
    #[serde(with = "as_text")]
    pub age_recipient: Recipient,
    /// The hybrid post-quantum age recipient (`age1pq1…`) of this agency, if it has one
    /// (absent from the JSON otherwise, so cards issued before it keep their exact form).
    #[serde(with = "opt_text", default, skip_serializing_if = "Option::is_none")]
    pub age_recipient_pq: Option<HybridRecipient>,
    /// SHA-256 pins of the agency's TLS certificate SubjectPublicKeyInfo, sorted.
    pub tls_spki_sha256: Vec<Sha256Digest>,
    /// From when this card is valid (`custody.md` §8, §8.5): set on every card issued since key
    /// rotation; absent from older cards, which keep their exact form and signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<Timestamp>,
    /// The verifier key of the card this one succeeds (`custody.md` §8.5), on a card issued by
    /// `agency rotate`: the note then carries a second signature, by that key.
    #[serde(with = "opt_text", default, skip_serializing_if = "Option::is_none")]
    pub previous_key: Option<NoteVerifier>,
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

mod opt_text {
    use super::*;
    pub(super) fn serialize<T: fmt::Display, S: Serializer>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }
    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: fmt::Display,
        D: Deserializer<'de>,
    {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map(Some).map_err(serde::de::Error::custom)
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
            age_recipient_pq: None,
            tls_spki_sha256,
            valid_from: None,
            previous_key: None,
        };
        c.validate()?;
        Ok(c)
    }

    /// The same card carrying the hybrid post-quantum recipient `pq` (or none).
    pub fn with_pq_recipient(mut self, pq: Option<HybridRecipient>) -> Self {
        self.age_recipient_pq = pq;
        self
    }

    /// The same card, valid from `t` (`custody.md` §8.5).
    pub fn with_valid_from(mut self, t: Option<Timestamp>) -> Self {
        self.valid_from = t;
        self
    }

    /// The same card, naming `key` as its predecessor's verifier key (`custody.md` §8.5).
    pub fn with_previous_key(mut self, key: Option<NoteVerifier>) -> Result<Self, ParseError> {
        self.previous_key = key;
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<(), ParseError> {
        const KIND: &str = "card";
        if self.verifier_key.name() != self.id.as_str() {
            return Err(ParseError::syntax(
                KIND,
                "verifier key name is not the agency id",
            ));
        }
        if let Some(prev) = &self.previous_key {
            if prev.name() != self.id.as_str() {
                return Err(ParseError::syntax(
                    KIND,
                    "previous key name is not the agency id",
                ));
            }
            if prev == &self.verifier_key {
                return Err(ParseError::syntax(
                    KIND,
                    "previous key is the card's own key",
                ));
            }
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

    /// The card file of a card issued by key rotation (`custody.md` §8.5): signed by its own key
    /// (`signer`) and by `previous`, the key its `previous_key` names.
    pub fn sign_successor(
        &self,
        signer: &NoteSigner,
        previous: &NoteSigner,
    ) -> Result<String, ParseError> {
        if self.previous_key.as_ref() != Some(&previous.verifier()) {
            return Err(ParseError::syntax(
                "card",
                "the previous signer is not the card's previous key",
            ));
        }
        Ok(previous.cosign(&self.sign(signer)?)?)
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

/// The age recipients a sender encrypts the contents of one transfer to (`custody.md` §8.2,
/// §5.4): the recipient agencies' keys, then the sender's own, of one kind (see
/// [`file_recipients_for`]).
pub fn age_recipients_for(sender: &AgencyIdentity, cards: &[&AgencyCard]) -> Vec<AnyRecipient> {
    let (mut all, own) = file_recipients_for(sender, cards);
    all.push(own);
    all
}

/// The age recipients each file of one transfer is encrypted to, and the sender's own key of
/// the same kind (`custody.md` §8.2): the hybrid post-quantum recipient of every party when
/// every party has one, otherwise the X25519 recipient of every party. Never a mix: a classical
/// stanza beside hybrid ones would leave the file open to a quantum attacker, and age forbids
/// it.
///
/// The files are encrypted to the recipient agencies only (`cards`, in that order): the sender
/// keeps its file keys in its own send state, encrypted once to `own`, so that it can resume,
/// rather than a stanza of its own in every file (a hybrid stanza is about 1.5 KiB and one
/// ML-KEM-768 encapsulation and two X25519 operations per file).
pub fn file_recipients_for(
    sender: &AgencyIdentity,
    cards: &[&AgencyCard],
) -> (Vec<AnyRecipient>, AnyRecipient) {
    let sender_pq = sender.age_recipient_pq();
    let cards_pq: Option<Vec<&HybridRecipient>> =
        cards.iter().map(|c| c.age_recipient_pq.as_ref()).collect();
    match (sender_pq, cards_pq) {
        (Some(own), Some(theirs)) => (
            theirs
                .into_iter()
                .cloned()
                .map(AnyRecipient::Hybrid)
                .collect(),
            AnyRecipient::Hybrid(own.clone()),
        ),
        _ => (
            cards
                .iter()
                .map(|c| AnyRecipient::X25519(c.age_recipient))
                .collect(),
            AnyRecipient::X25519(sender.age_recipient()),
        ),
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
    /// A trust-store file whose name is not `<its card's id>.card` (`custody.md` §8.4).
    #[error("holds the card of {id}, but a trusted card must be stored as {id}.card")]
    FileName {
        /// The id the card carries.
        id: AgencyId,
    },
}

/// The set of trusted agencies: at most one card chain per agency id (`custody.md` §8, §8.5);
/// the newest card of each is its current card.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    cards: BTreeMap<AgencyId, CardChain>,
    /// The key revocations applied to it ([`TrustStore::apply_signing_revocations`]).
    revocations: crate::Revocations,
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
        if let Some(old) = self.get(&card.id)
            && old.verifier_key != card.verifier_key
        {
            return Err(TrustError::Conflict(card.id.clone()));
        }
        let id = card.id.clone();
        self.cards.insert(id.clone(), CardChain::single(card));
        Ok(self.cards[&id].newest())
    }

    /// Adds a card already trusted by other means (loading the store from disk).
    pub fn insert_verified(&mut self, card: Verified<AgencyCard>) {
        self.insert_chain(CardChain::single(card));
    }

    /// Adds a card chain already trusted by other means (this agency's own, `custody.md` §8.5).
    pub fn insert_chain(&mut self, chain: CardChain) {
        self.cards.insert(chain.id().clone(), chain);
    }

    /// Adds a card loaded from the trust-store file `<file_stem>.card` (`custody.md` §8.4).
    pub fn insert_from_file(
        &mut self,
        file_stem: &str,
        card: Verified<AgencyCard>,
    ) -> Result<(), TrustError> {
        self.insert_chain_from_file(file_stem, CardChain::single(card))
    }

    /// Adds a card chain loaded from the trust-store file `<file_stem>.card` (`custody.md`
    /// §8.4, §8.5): the name must be the chain's id, and a chain already loaded for that id
    /// (the agency's own) must have the same newest key. Nothing is replaced: the first chain
    /// for an id stays.
    pub fn insert_chain_from_file(
        &mut self,
        file_stem: &str,
        chain: CardChain,
    ) -> Result<(), TrustError> {
        let id = chain.id().clone();
        if file_stem != id.as_str() {
            return Err(TrustError::FileName { id });
        }
        match self.cards.get(&id) {
            // The home's own chain is loaded first: a copy of one of its cards (also one from
            // before a rotation) is ignored, any other key for its id is a conflict.
            Some(old) if !old.holds_key(&chain.newest().verifier_key) => {
                Err(TrustError::Conflict(id))
            }
            Some(_) => Ok(()),
            None => {
                self.cards.insert(id, chain);
                Ok(())
            }
        }
    }

    /// Removes an agency; returns its current card.
    pub fn remove(&mut self, id: &AgencyId) -> Option<Verified<AgencyCard>> {
        self.cards.remove(id).map(|c| c.newest().clone())
    }

    /// The current (newest) card of an agency.
    pub fn get(&self, id: &AgencyId) -> Option<&AgencyCard> {
        self.cards.get(id).map(|c| &**c.newest())
    }

    /// The card chain of an agency: every card it issued that this store knows, oldest first.
    pub fn chain(&self, id: &AgencyId) -> Option<&CardChain> {
        self.cards.get(id)
    }

    /// The agency whose current card pins this TLS SPKI hash (TLS uses the newest card only).
    pub fn by_spki(&self, spki_sha256: &Sha256Digest) -> Option<&AgencyCard> {
        self.cards()
            .find(|c| c.tls_spki_sha256.iter().any(|p| p.ct_eq(spki_sha256)))
    }

    /// All trusted agencies' current cards, by id.
    pub fn cards(&self) -> impl Iterator<Item = &AgencyCard> {
        self.cards.values().map(|c| &**c.newest())
    }

    /// The key revocations this store applies (`custody.md` §8.3): empty until
    /// [`TrustStore::apply_signing_revocations`].
    pub fn revocations(&self) -> &crate::Revocations {
        &self.revocations
    }

    /// All trusted agencies' card chains, by id.
    pub fn chains(&self) -> impl Iterator<Item = &CardChain> {
        self.cards.values()
    }

    /// Applies the signing-key revocations of `revocations` to the chains they concern
    /// (`custody.md` §8.3): from then on every statement or seal this store verifies that is
    /// signed by a revoked key and dated at or after its revocation is refused.
    pub fn apply_signing_revocations(&mut self, revocations: crate::Revocations) {
        for chain in self.cards.values_mut() {
            for key in chain.verifier_keys() {
                if let Some(r) =
                    revocations.get(crate::KeyKind::Signing, &crate::signing_key_sha256(&key))
                {
                    chain.revoke_signing_key(&key, r.time);
                }
            }
        }
        self.revocations = revocations;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn agency(name: &str, seed: u8, pq: bool) -> AgencyIdentity {
        let a = AgencyIdentity::from_seeds(name.parse().expect("id"), &[seed; 32], [seed; 32]);
        if pq {
            a.with_pq_seed([seed ^ 0x80; 32])
        } else {
            a
        }
    }

    #[test]
    fn pq_card_round_trips_and_old_cards_keep_their_form() {
        let pq = agency("de-bka", 1, true);
        let (c, note) = pq.card("BKA", "DE", vec![]).expect("card");
        assert!(c.to_json().contains("\"age_recipient_pq\":\"age1pq1"));
        let opened = AgencyCard::open(note.as_bytes()).expect("opens");
        assert_eq!(opened.age_recipient_pq.as_ref(), pq.age_recipient_pq());
        let (old, old_note) = agency("de-bka", 1, false)
            .card("BKA", "DE", vec![])
            .expect("card");
        assert!(!old.to_json().contains("age_recipient_pq"));
        assert!(
            AgencyCard::open(old_note.as_bytes())
                .expect("opens")
                .age_recipient_pq
                .is_none()
        );
        // Same signing key: adding the post-quantum recipient keeps the fingerprint.
        assert_eq!(old.fingerprint(), c.fingerprint());
        // A bad hybrid recipient is refused.
        let text = note.replacen(
            "\"age_recipient_pq\":\"age1pq1",
            "\"age_recipient_pq\":\"age1pq1q",
            1,
        );
        assert!(AgencyCard::open(text.as_bytes()).is_err());
    }

    #[test]
    fn recipients_are_hybrid_only_when_every_party_has_one() {
        let sender_pq = agency("xx-a", 1, true);
        let sender_x = agency("xx-a", 1, false);
        let (b_pq, _) = agency("yy-b", 2, true)
            .card("B", "YY", vec![])
            .expect("card");
        let (c_pq, _) = agency("zz-c", 3, true)
            .card("C", "ZZ", vec![])
            .expect("card");
        let (c_x, _) = agency("zz-c", 3, false)
            .card("C", "ZZ", vec![])
            .expect("card");

        let all_pq = age_recipients_for(&sender_pq, &[&b_pq, &c_pq]);
        assert_eq!(all_pq.len(), 3);
        assert!(all_pq.iter().all(AnyRecipient::is_post_quantum));
        // The recipients' stanzas first (one key exchange each to find their own), the sender's
        // last.
        assert_eq!(
            all_pq[2],
            AnyRecipient::Hybrid(sender_pq.age_recipient_pq().expect("pq").clone())
        );
        assert_eq!(
            all_pq[1],
            AnyRecipient::Hybrid(c_pq.age_recipient_pq.clone().expect("pq"))
        );

        // One recipient without a hybrid key: X25519 for everyone, the sender included.
        let mixed = age_recipients_for(&sender_pq, &[&b_pq, &c_x]);
        assert_eq!(mixed.len(), 3);
        assert!(mixed.iter().all(|r| !r.is_post_quantum()));
        assert_eq!(mixed[2], AnyRecipient::X25519(sender_pq.age_recipient()));
        assert_eq!(mixed[0], AnyRecipient::X25519(b_pq.age_recipient));

        // A sender without a hybrid key: X25519 too.
        let old_sender = age_recipients_for(&sender_x, &[&b_pq]);
        assert!(old_sender.iter().all(|r| !r.is_post_quantum()));
        // No recipient cards: the sender alone, hybrid if it can.
        let alone = age_recipients_for(&sender_pq, &[]);
        assert_eq!(alone.len(), 1);
        assert!(alone[0].is_post_quantum());
    }
}
