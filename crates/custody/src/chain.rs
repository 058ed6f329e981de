//! Card chains (`custody.md` §8.5): the cards an agency issued, oldest first, each successor
//! signed by its own key and by its predecessor's, so that a partner trusting one card can
//! follow the agency's key rotations, and statements, seals, receipts and checkpoints made
//! under retired keys keep verifying.

use crate::card::AgencyCard;
use crate::checkpoint::Checkpoint;
use crate::error::ParseError;
use crate::ids::{AgencyId, Timestamp};
use crate::manifest::{SealedManifest, open_sealed_manifest};
use crate::note::{Note, NoteVerifier, split_notes};
use crate::statement::Statement;
use crate::verified::Verified;

/// `custody.md` §10: cards in one chain.
pub const MAX_CHAIN_LEN: usize = 64;

const KIND: &str = "card chain";

/// One key of a chain and the interval it was the agency's current key (`custody.md` §8.5):
/// from its card's `valid_from` (if any) until the successor's `valid_from` (none for the
/// newest key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainKey {
    /// The signing key's verifier.
    pub key: NoteVerifier,
    /// From when its card is valid.
    pub valid_from: Option<Timestamp>,
    /// When its successor became valid: statements dated at or after it are refused.
    pub until: Option<Timestamp>,
    /// When it was revoked (`custody.md` §8.3), if it was: statements dated at or after it are
    /// refused.
    pub revoked: Option<Timestamp>,
}

/// The verified card chain of one agency, oldest card first; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardChain {
    cards: Vec<Verified<AgencyCard>>,
    /// Signing keys of the chain revoked, and from when (`custody.md` §8.3); applied by
    /// [`CardChain::revoke_signing_key`].
    revoked: Vec<(NoteVerifier, Timestamp)>,
}

/// Checks that `note` is a valid successor of `pred` (`custody.md` §8.5): a valid card whose own
/// signature verifies, with the same id, whose `previous_key` is `pred`'s verifier key, whose
/// note carries a valid signature by that key too, and whose `valid_from` is present and not
/// earlier than `pred`'s.
pub fn check_successor(pred: &AgencyCard, note: &[u8]) -> Result<Verified<AgencyCard>, ParseError> {
    let card = AgencyCard::open(note)?;
    if card.id != pred.id {
        return Err(ParseError::syntax(
            KIND,
            format!("a card of {} follows a card of {}", card.id, pred.id),
        ));
    }
    if card.previous_key.as_ref() != Some(&pred.verifier_key) {
        return Err(ParseError::syntax(
            KIND,
            format!(
                "the card of {} with key {} does not name its predecessor's key {} as previous_key",
                card.id, card.verifier_key, pred.verifier_key
            ),
        ));
    }
    // The predecessor's signature, checked on its own (the new key's signature is ignored here
    // as an unknown key, and was checked by `AgencyCard::open`).
    Note::parse(note)?
        .verify(std::slice::from_ref(&pred.verifier_key))
        .map_err(|e| {
            ParseError::syntax(
                KIND,
                format!(
                    "the card of {} with key {} is not signed by its previous key: {e}",
                    card.id, card.verifier_key
                ),
            )
        })?;
    match (card.valid_from, pred.valid_from) {
        (None, _) => Err(ParseError::syntax(
            KIND,
            "a successor card must say from when it is valid (valid_from)",
        )),
        (Some(t), Some(p)) if t < p => Err(ParseError::syntax(
            KIND,
            format!("a successor card valid from {t} precedes its predecessor's {p}"),
        )),
        _ => Ok(card),
    }
}

impl CardChain {
    /// A chain of one card.
    pub fn single(card: Verified<AgencyCard>) -> Self {
        Self {
            cards: vec![card],
            revoked: Vec::new(),
        }
    }

    /// A chain from card notes, oldest first: the first is a valid card, each next one a valid
    /// successor of the one before ([`check_successor`]).
    pub fn from_notes(notes: &[&[u8]]) -> Result<Self, ParseError> {
        let Some((first, rest)) = notes.split_first() else {
            return Err(ParseError::syntax(KIND, "no card"));
        };
        if notes.len() > MAX_CHAIN_LEN {
            return Err(ParseError::TooLarge(KIND));
        }
        let mut cards = vec![AgencyCard::open(first)?];
        for n in rest {
            // A key appears once: a chain that returned to an earlier key would give it a
            // second interval.
            let card = AgencyCard::open(n)?;
            if cards.iter().any(|c| c.verifier_key == card.verifier_key) {
                return Err(ParseError::syntax(
                    KIND,
                    format!("the key {} appears twice in the chain", card.verifier_key),
                ));
            }
            let next = check_successor(
                cards
                    .last()
                    .map(|c| &**c)
                    .ok_or_else(|| ParseError::syntax(KIND, "no card"))?,
                n,
            )?;
            cards.push(next);
        }
        Ok(Self {
            cards,
            revoked: Vec::new(),
        })
    }

    /// Parses a card file or card-chain file: one card note, or several concatenated, oldest
    /// first (`custody.md` §8.5).
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        if bytes.len() > MAX_CHAIN_LEN * crate::note::MAX_NOTE_LEN {
            return Err(ParseError::TooLarge(KIND));
        }
        Self::from_notes(&split_notes(bytes))
    }

    /// The newest card (the agency's current one).
    pub fn newest(&self) -> &Verified<AgencyCard> {
        // Invariant: a chain is never empty.
        &self.cards[self.cards.len() - 1]
    }

    /// The agency.
    pub fn id(&self) -> &AgencyId {
        &self.newest().id
    }

    /// Every card, oldest first.
    pub fn cards(&self) -> impl DoubleEndedIterator<Item = &AgencyCard> {
        self.cards.iter().map(|c| &**c)
    }

    /// Number of cards.
    pub fn len(&self) -> usize {
        self.cards.len()
    }

    /// Always false: a chain holds at least one card.
    pub fn is_empty(&self) -> bool {
        self.cards.is_empty()
    }

    /// The position (oldest first) of the card whose signing key is `key`.
    pub fn position_of(&self, key: &NoteVerifier) -> Option<usize> {
        self.cards.iter().position(|c| &c.verifier_key == key)
    }

    /// Whether some card of the chain has the signing key `key`.
    pub fn holds_key(&self, key: &NoteVerifier) -> bool {
        self.cards.iter().any(|c| &c.verifier_key == key)
    }

    /// Every signing key with the interval it was current, newest first.
    pub fn keys(&self) -> Vec<ChainKey> {
        let mut out = Vec::with_capacity(self.cards.len());
        let mut until = None;
        for c in self.cards.iter().rev() {
            out.push(ChainKey {
                key: c.verifier_key.clone(),
                valid_from: c.valid_from,
                until,
                revoked: self
                    .revoked
                    .iter()
                    .filter(|(k, _)| k == &c.verifier_key)
                    .map(|(_, t)| *t)
                    .min(),
            });
            until = c.valid_from;
        }
        out
    }

    /// `custody.md` §8.3 "Signing key": from `time` on, nothing signed by `key` (a key of this
    /// chain) verifies; what is dated before keeps verifying. Of two revocations of one key the
    /// earlier counts. A key the chain does not hold is ignored.
    pub fn revoke_signing_key(&mut self, key: &NoteVerifier, time: Timestamp) {
        if self.holds_key(key) {
            self.revoked.push((key.clone(), time));
        }
    }

    /// Every signing key, newest first.
    pub fn verifier_keys(&self) -> Vec<NoteVerifier> {
        self.cards
            .iter()
            .rev()
            .map(|c| c.verifier_key.clone())
            .collect()
    }

    /// Every audit-log key (`<id>/audit`), newest first.
    pub fn log_verifiers(&self) -> Vec<NoteVerifier> {
        self.cards.iter().rev().map(|c| c.log_verifier()).collect()
    }

    /// Opens something signed by one of the chain's keys: `open` with each key, newest first.
    /// A superseded key's signature counts only on what is dated (`time`) before its
    /// successor's `valid_from` (`custody.md` §8.5). The error is the newest key's, unless an
    /// older key verified a signature made too late.
    fn open_with<T>(
        &self,
        honour_revocations: bool,
        what: &str,
        time: impl Fn(&T) -> Timestamp,
        open: impl Fn(&NoteVerifier) -> Result<Verified<T>, ParseError>,
    ) -> Result<(Verified<T>, NoteVerifier), ParseError> {
        let mut first_err = None;
        for k in self.keys() {
            match open(&k.key) {
                Ok(v) => {
                    if let Some(revoked) = k.revoked.filter(|_| honour_revocations)
                        && time(&v) >= revoked
                    {
                        return Err(ParseError::syntax(
                            "signature",
                            format!(
                                "{what} dated {} is signed by a key of {} revoked at {revoked}",
                                time(&v),
                                self.id()
                            ),
                        ));
                    }
                    if let Some(until) = k.until
                        && time(&v) >= until
                    {
                        return Err(ParseError::syntax(
                            "signature",
                            format!(
                                "{what} dated {} is signed by a key of {} superseded at {until}",
                                time(&v),
                                self.id()
                            ),
                        ));
                    }
                    return Ok((v, k.key));
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| ParseError::syntax(KIND, "no card")))
    }

    /// Verifies a statement signed by this agency with any key of the chain (a superseded key
    /// only for a statement dated before its successor's `valid_from`). Returns the key.
    pub fn open_statement(
        &self,
        note: &[u8],
    ) -> Result<(Verified<Statement>, NoteVerifier), ParseError> {
        self.statement_with(true, note)
    }

    /// [`CardChain::open_statement`] without the signing-key revocations: for a key revocation
    /// itself (`custody.md` §8.3), which the revoked key signs at the time it takes effect and
    /// which only ever removes trust.
    pub fn open_revocation_statement(
        &self,
        note: &[u8],
    ) -> Result<(Verified<Statement>, NoteVerifier), ParseError> {
        self.statement_with(false, note)
    }

    fn statement_with(
        &self,
        honour_revocations: bool,
        note: &[u8],
    ) -> Result<(Verified<Statement>, NoteVerifier), ParseError> {
        self.open_with(
            honour_revocations,
            "a statement",
            |s: &Statement| s.head().time,
            |k| Statement::open(note, k),
        )
    }

    /// [`open_sealed_manifest`] with any key of the chain, as [`CardChain::open_statement`].
    pub fn open_sealed_manifest(
        &self,
        manifest_json: &[u8],
        seal_note: &[u8],
    ) -> Result<(Verified<SealedManifest>, NoteVerifier), ParseError> {
        self.open_with(
            true,
            "a seal",
            |s: &SealedManifest| s.seal.head().time,
            |k| open_sealed_manifest(manifest_json, seal_note, k),
        )
    }

    /// Verifies a checkpoint of this agency's audit log with any of its log keys. A checkpoint
    /// carries no time, so a retired log key's checkpoint is always accepted (`custody.md` §8.5
    /// says what that allows a thief of a retired key).
    pub fn open_checkpoint(&self, note: &[u8]) -> Result<Verified<Checkpoint>, ParseError> {
        Checkpoint::open_any(note, &self.log_verifiers())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AgencyIdentity;
    use crate::ids::TransferId;
    use crate::statement::Head;

    fn id() -> AgencyId {
        "de-bka".parse().expect("id")
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    /// An agency's first card and a rotated successor.
    fn rotated() -> (AgencyIdentity, String, AgencyIdentity, String) {
        let old = AgencyIdentity::from_seeds(id(), &[1; 32], [2; 32]);
        let (_, n0) = old
            .issue_card("BKA", "DE", vec![], Some(t("2026-01-01T00:00:00Z")), None)
            .expect("card");
        let new = AgencyIdentity::from_seeds(id(), &[3; 32], [4; 32]);
        let (_, n1) = new
            .issue_card(
                "BKA",
                "DE",
                vec![],
                Some(t("2026-06-01T00:00:00Z")),
                Some(old.signer()),
            )
            .expect("successor");
        (old, n0, new, n1)
    }

    fn fetch_at(who: &AgencyIdentity, time: &str) -> String {
        Statement::Fetch {
            head: Head {
                transfer: TransferId::NONE,
                issuer: id(),
                time: t(time),
            },
            peer: "nl-relay".parse().expect("id"),
            files: 1,
            ciphertext_bytes: 1,
        }
        .sign(who.signer())
        .expect("sign")
    }

    /// test-plan.md 113: a revoked signing key verifies what is dated before its revocation
    /// only; a key revocation itself still verifies; other keys are unaffected.
    #[test]
    fn a_revoked_key_verifies_only_what_is_dated_before_its_revocation() {
        let (old, n0, new, n1) = rotated();
        let mut chain = CardChain::parse(format!("{n0}{n1}").as_bytes()).expect("chain");
        chain.revoke_signing_key(&new.signer().verifier(), t("2026-07-01T00:00:00Z"));
        // A later, then an earlier revocation of one key: the earlier counts.
        chain.revoke_signing_key(&new.signer().verifier(), t("2026-08-01T00:00:00Z"));
        let before = fetch_at(&new, "2026-06-30T23:59:59Z");
        assert!(chain.open_statement(before.as_bytes()).is_ok());
        for late in ["2026-07-01T00:00:00Z", "2026-07-15T00:00:00Z"] {
            let e = chain
                .open_statement(fetch_at(&new, late).as_bytes())
                .expect_err("signed after the revocation");
            assert!(
                e.to_string().contains("revoked at 2026-07-01T00:00:00Z"),
                "{e}"
            );
            assert!(
                chain
                    .open_revocation_statement(fetch_at(&new, late).as_bytes())
                    .is_ok()
            );
        }
        // The retired key keeps its own interval, unaffected.
        assert!(
            chain
                .open_statement(fetch_at(&old, "2026-03-01T00:00:00Z").as_bytes())
                .is_ok()
        );
        // A key of another agency is ignored.
        let other = AgencyIdentity::from_seeds(id(), &[9; 32], [9; 32]);
        chain.revoke_signing_key(&other.signer().verifier(), t("2026-01-01T00:00:00Z"));
        assert!(chain.open_statement(before.as_bytes()).is_ok());
    }

    /// test-plan.md 105.
    #[test]
    fn a_chain_verifies_old_and_new_statements_within_their_intervals() {
        let (old, n0, new, n1) = rotated();
        let file = format!("{n0}{n1}");
        let chain = CardChain::parse(file.as_bytes()).expect("chain");
        assert_eq!(chain.len(), 2);
        assert_eq!(chain.newest().verifier_key, new.signer().verifier());
        let keys = chain.keys();
        assert_eq!(keys[0].until, None);
        assert_eq!(keys[1].until, Some(t("2026-06-01T00:00:00Z")));
        // The old key before the rotation, the new key at any time.
        let (_, k) = chain
            .open_statement(fetch_at(&old, "2026-05-31T23:59:59Z").as_bytes())
            .expect("old key before");
        assert_eq!(k, old.signer().verifier());
        assert!(
            chain
                .open_statement(fetch_at(&new, "2026-07-01T00:00:00Z").as_bytes())
                .is_ok()
        );
        // The old key at or after its successor's valid_from: refused.
        let e = chain
            .open_statement(fetch_at(&old, "2026-06-01T00:00:00Z").as_bytes())
            .expect_err("superseded");
        assert!(e.to_string().contains("superseded"), "{e}");
        // Checkpoints of either log key.
        let cp = Checkpoint {
            origin: "de-bka/audit".into(),
            size: 0,
            root: [0; 32],
        };
        for who in [&old, &new] {
            let note = cp.sign(&who.log_signer()).expect("sign");
            assert!(chain.open_checkpoint(note.as_bytes()).is_ok());
        }
        // A single card is a chain too.
        assert_eq!(CardChain::parse(n0.as_bytes()).expect("one").len(), 1);
    }

    /// test-plan.md 101.
    #[test]
    fn broken_links_are_refused() {
        let (old, n0, new, n1) = rotated();
        // The successor without the previous key's signature.
        let own_only = &n1[..n1.rfind("\u{2014} ").expect("sig")];
        let e = CardChain::parse(format!("{n0}{own_only}").as_bytes()).expect_err("unsigned");
        assert!(
            e.to_string().contains("not signed by its previous key"),
            "{e}"
        );
        // A previous signature by another key (same name, so a different key id is ignored
        // and no trusted signature is left).
        let other = AgencyIdentity::from_seeds(id(), &[9; 32], [9; 32]);
        let forged = other.signer().cosign(own_only).expect("cosign");
        assert!(CardChain::parse(format!("{n0}{forged}").as_bytes()).is_err());
        // A garbled previous signature (right key id, wrong bytes): refused.
        let prev_line = n1.lines().last().expect("line").to_owned();
        let mut bad = prev_line.clone().into_bytes();
        let i = bad.len() - 3;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        let garbled = n1.replace(&prev_line, &String::from_utf8(bad).expect("utf8"));
        assert!(CardChain::parse(format!("{n0}{garbled}").as_bytes()).is_err());
        // Out of order, or a successor of another card.
        assert!(CardChain::parse(format!("{n1}{n0}").as_bytes()).is_err());
        let (_, unrelated) = AgencyIdentity::from_seeds(id(), &[7; 32], [7; 32])
            .issue_card("BKA", "DE", vec![], Some(t("2025-01-01T00:00:00Z")), None)
            .expect("card");
        assert!(CardChain::parse(format!("{unrelated}{n1}").as_bytes()).is_err());
        // A successor valid before its predecessor.
        let (_, early) = new
            .issue_card(
                "BKA",
                "DE",
                vec![],
                Some(t("2025-12-31T00:00:00Z")),
                Some(old.signer()),
            )
            .expect("card");
        assert!(CardChain::parse(format!("{n0}{early}").as_bytes()).is_err());
        // A successor without valid_from.
        let bare = new
            .card("BKA", "DE", vec![])
            .expect("card")
            .0
            .with_previous_key(Some(old.signer().verifier()))
            .expect("prev");
        let note = bare
            .sign_successor(new.signer(), old.signer())
            .expect("signs");
        assert!(CardChain::parse(format!("{n0}{note}").as_bytes()).is_err());
        assert!(CardChain::parse(b"").is_err());
    }

    /// test-plan.md 105.
    #[test]
    fn a_trust_store_holds_chains_and_revocations_name_retired_keys() {
        use crate::card::TrustStore;
        use crate::revocation::{KeyKind, Revocation, signing_key_sha256};
        let (old, n0, new, n1) = rotated();
        let chain = CardChain::parse(format!("{n0}{n1}").as_bytes()).expect("chain");
        let mut store = TrustStore::new();
        // The file name must be the id; the newest card is the current one.
        assert!(store.insert_chain_from_file("zz", chain.clone()).is_err());
        store
            .insert_chain_from_file("de-bka", chain.clone())
            .expect("stored");
        let id = id();
        assert_eq!(
            store.get(&id).map(|c| &c.verifier_key),
            Some(&new.signer().verifier())
        );
        assert_eq!(store.chain(&id).map(CardChain::len), Some(2));
        // A chain whose newest key differs from the one already loaded is a conflict.
        let (_, other) = AgencyIdentity::from_seeds(id.clone(), &[8; 32], [8; 32])
            .issue_card("BKA", "DE", vec![], None, None)
            .expect("card");
        let other = CardChain::parse(other.as_bytes()).expect("one");
        assert!(store.insert_chain_from_file("de-bka", other).is_err());
        // The agency revokes its retired key, signed with its new key: a key of its chain.
        let r = Revocation {
            issuer: id.clone(),
            time: t("2026-07-01T00:00:00Z"),
            agency: id.clone(),
            kind: KeyKind::Signing,
            key_sha256: signing_key_sha256(&old.signer().verifier()),
            reason: "retired laptop lost".parse().expect("text"),
        };
        let note = r.sign(new.signer()).expect("sign");
        assert!(Revocation::open(note.as_bytes(), &store, &id).is_ok());
        // Signed with the retired key after it was superseded: refused.
        let late = r.sign(old.signer()).expect("sign");
        assert!(Revocation::open(late.as_bytes(), &store, &id).is_err());
        // A thief of the retired key revokes the key that replaced it, back-dated into the
        // retired key's interval: refused (a key revokes keys of its own card or older ones).
        let forged = Revocation {
            time: t("2026-05-31T23:59:59Z"),
            key_sha256: signing_key_sha256(&new.signer().verifier()),
            ..r.clone()
        };
        let forged = forged.sign(old.signer()).expect("sign");
        let e = Revocation::open(forged.as_bytes(), &store, &id).expect_err("forged");
        assert!(e.to_string().contains("not one"), "{e}");
        // The retired key may still revoke itself within its interval.
        let own = Revocation {
            time: t("2026-05-31T23:59:59Z"),
            ..r
        };
        let own = own.sign(old.signer()).expect("sign");
        assert!(Revocation::open(own.as_bytes(), &store, &id).is_ok());
    }

    /// test-plan.md 101: a key may appear only once in a chain.
    #[test]
    fn a_chain_returning_to_an_earlier_key_is_refused() {
        let (old, n0, new, n1) = rotated();
        let (_, back) = old
            .issue_card(
                "BKA",
                "DE",
                vec![],
                Some(t("2026-09-01T00:00:00Z")),
                Some(new.signer()),
            )
            .expect("back");
        let e = CardChain::parse(format!("{n0}{n1}{back}").as_bytes()).expect_err("refused");
        assert!(e.to_string().contains("appears twice"), "{e}");
    }
}
