//! Key revocations (`custody.md` §8.3): a signed `key-revocation` statement names an
//! agency's key by kind and SHA-256; a set of verified revocations answers "is this TLS key
//! revoked" and "was this signature made after its key was revoked".

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::card::{AgencyCard, TrustStore};
use crate::error::{FieldError, ParseError};
use crate::ids::{AgencyId, Sha256Digest, Timestamp, TransferId};
use crate::note::{Note, NoteSigner, NoteVerifier};
use crate::statement::{Head, Statement};
use crate::text::Text;
use crate::verified::Verified;

/// Which key of an agency a revocation names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyKind {
    /// The TLS key: named by the SHA-256 of its certificate's SubjectPublicKeyInfo (DER), the
    /// card's pin.
    Tls,
    /// The signed-note signing key: named by the SHA-256 of its verifier key string
    /// ([`signing_key_sha256`]).
    Signing,
    /// An age key: named by the SHA-256 of its recipient string (`age1…` or `age1pq1…`).
    Age,
}

impl KeyKind {
    /// The word in the statement.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Tls => "tls",
            KeyKind::Signing => "signing",
            KeyKind::Age => "age",
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyKind {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, FieldError> {
        match s {
            "tls" => Ok(KeyKind::Tls),
            "signing" => Ok(KeyKind::Signing),
            "age" => Ok(KeyKind::Age),
            _ => Err(FieldError::new("key kind (tls, signing, age)", s)),
        }
    }
}

/// The SHA-256 that names a signing key in a revocation: of its verifier key string
/// (`<name>+<key id>+<base64>`).
pub fn signing_key_sha256(key: &NoteVerifier) -> Sha256Digest {
    Sha256Digest::of(key.to_string().as_bytes())
}

/// A key revocation (`custody.md` §8.3): the fields of a `key-revocation` statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Who signs: the agency itself, or the agency that trusts it (a local revocation).
    pub issuer: AgencyId,
    /// From when the key is revoked (the issuer's clock).
    pub time: Timestamp,
    /// The agency whose key is revoked.
    pub agency: AgencyId,
    /// Which key.
    pub kind: KeyKind,
    /// The key's SHA-256 ([`KeyKind`]).
    pub key_sha256: Sha256Digest,
    /// Why.
    pub reason: Text,
}

impl Revocation {
    /// The statement.
    pub fn statement(&self) -> Statement {
        Statement::KeyRevocation {
            head: Head {
                transfer: TransferId::NONE,
                issuer: self.issuer.clone(),
                time: self.time,
            },
            agency: self.agency.clone(),
            key_kind: self.kind,
            key_sha256: self.key_sha256,
            reason: self.reason.clone(),
        }
    }

    /// The fields of a `key-revocation` statement (`None` for another type).
    pub fn from_statement(s: &Statement) -> Option<Self> {
        match s {
            Statement::KeyRevocation {
                head,
                agency,
                key_kind,
                key_sha256,
                reason,
            } => Some(Revocation {
                issuer: head.issuer.clone(),
                time: head.time,
                agency: agency.clone(),
                kind: *key_kind,
                key_sha256: *key_sha256,
                reason: reason.clone(),
            }),
            _ => None,
        }
    }

    /// Whether the agency revokes its own key (otherwise a local revocation by `issuer`).
    pub fn is_own(&self) -> bool {
        self.issuer == self.agency
    }

    /// The signed note; `signer` must be the issuer's key.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, ParseError> {
        self.statement().sign(signer)
    }

    /// The file name a home stores it under (`custody.md` §8.3): one file per revoked key,
    /// `<agency>.<kind>.<key-sha256>.note`.
    pub fn file_name(&self) -> String {
        format!("{}.{}.{}.note", self.agency, self.kind, self.key_sha256)
    }

    /// Verifies a revocation note (`custody.md` §8.3). It must be signed by its issuer's key as
    /// `trust` holds it, and the issuer must be the agency whose key it revokes (signed with its
    /// current signing key, which may be the revoked one) or `home`, the agency that trusts it
    /// (a local revocation, whose card `trust` also holds).
    pub fn open(
        note: &[u8],
        trust: &TrustStore,
        home: &AgencyId,
    ) -> Result<Verified<Self>, ParseError> {
        const KIND: &str = "key revocation";
        let unverified = Statement::parse(Note::parse(note)?.unverified_text())?;
        let r = Self::from_statement(&unverified).ok_or_else(|| {
            ParseError::syntax(
                KIND,
                format!("a {} statement, not a key-revocation", unverified.kind()),
            )
        })?;
        if !r.is_own() && &r.issuer != home {
            return Err(ParseError::syntax(
                KIND,
                format!(
                    "issued by {} for {}: only the agency itself or this agency ({home}) may revoke its keys",
                    r.issuer, r.agency
                ),
            ));
        }
        let chain = trust.chain(&r.issuer).ok_or_else(|| {
            ParseError::syntax(KIND, format!("the issuer {} is not trusted", r.issuer))
        })?;
        // Any key of the issuer's card chain, within its interval (`custody.md` §8.5), whether
        // or not it is itself revoked (a revocation only removes trust, §8.3).
        let (verified, signer) = chain.open_revocation_statement(note)?;
        let r = Self::from_statement(&verified)
            .ok_or_else(|| ParseError::syntax(KIND, "not a key-revocation"))?;
        // The key must be one the revoked agency's card names: nobody revokes another
        // agency's key (a thief of one agency's signing key could otherwise lock out any other).
        let owner = trust.chain(&r.agency).ok_or_else(|| {
            ParseError::syntax(KIND, format!("the agency {} is not trusted", r.agency))
        })?;
        // A key of a card of its chain: a retired key can be revoked too (`custody.md` §8.5).
        // The agency's own revocation, signed with key `k_i`, may name keys of cards `0..=i`
        // only: a thief of a retired key cannot revoke the keys that replaced it.
        let upto = if r.is_own() {
            chain.position_of(&signer).map_or(0, |i| i + 1)
        } else {
            owner.len()
        };
        if !owner
            .cards()
            .take(upto)
            .any(|c| owner_holds(c, r.kind, &r.key_sha256))
        {
            return Err(ParseError::syntax(
                KIND,
                format!(
                    "the {} key {} is not one the card of {} names (an agency's key revokes keys of its own card or of earlier ones)",
                    r.kind, r.key_sha256, r.agency
                ),
            ));
        }
        Ok(verified.map(|_| r))
    }
}

/// Whether `card` names the key `kind`/`key_sha256` (`custody.md` §8.3: the TLS pins, the
/// signing key, the age recipients).
fn owner_holds(card: &AgencyCard, kind: KeyKind, key_sha256: &Sha256Digest) -> bool {
    match kind {
        KeyKind::Tls => card.tls_spki_sha256.contains(key_sha256),
        KeyKind::Signing => signing_key_sha256(&card.verifier_key) == *key_sha256,
        KeyKind::Age => {
            Sha256Digest::of(card.age_recipient.to_string().as_bytes()) == *key_sha256
                || card
                    .age_recipient_pq
                    .as_ref()
                    .is_some_and(|r| Sha256Digest::of(r.to_string().as_bytes()) == *key_sha256)
        }
    }
}

/// A set of verified revocations: at most one per key (the earliest time wins).
#[derive(Clone, Debug, Default)]
pub struct Revocations {
    keys: BTreeMap<(KeyKind, Sha256Digest), Revocation>,
}

impl Revocations {
    /// No revocation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a verified revocation; of two for the same key, the earlier one is kept.
    pub fn insert(&mut self, r: Verified<Revocation>) {
        let r = r.into_inner();
        let k = (r.kind, r.key_sha256);
        match self.keys.get(&k) {
            Some(old) if old.time <= r.time => {}
            _ => {
                self.keys.insert(k, r);
            }
        }
    }

    /// Every revocation, by kind then key.
    pub fn iter(&self) -> impl Iterator<Item = &Revocation> {
        self.keys.values()
    }

    /// The revocation of a key, if any.
    pub fn get(&self, kind: KeyKind, key_sha256: &Sha256Digest) -> Option<&Revocation> {
        self.keys.get(&(kind, *key_sha256))
    }

    /// The SPKI hashes of every revoked TLS key.
    pub fn tls_spki(&self) -> impl Iterator<Item = &Sha256Digest> {
        self.keys
            .keys()
            .filter(|(k, _)| *k == KeyKind::Tls)
            .map(|(_, d)| d)
    }

    /// `custody.md` §8.3: a statement signed by `key` at `time` is refused when `key` was
    /// revoked at or before `time`. Returns that revocation.
    pub fn signing_revoked_at(&self, key: &NoteVerifier, time: Timestamp) -> Option<&Revocation> {
        self.get(KeyKind::Signing, &signing_key_sha256(key))
            .filter(|r| r.time <= time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AgencyIdentity;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    fn setup() -> (AgencyIdentity, AgencyIdentity, AgencyIdentity, TrustStore) {
        let a = AgencyIdentity::generate("agency-a".parse().expect("id"));
        let b = AgencyIdentity::generate("agency-b".parse().expect("id"));
        let c = AgencyIdentity::generate("agency-c".parse().expect("id"));
        let mut store = TrustStore::new();
        for x in [&a, &b, &c] {
            let (_, note) = x.card("X", "XX", vec![pin(x)]).expect("card");
            store.insert_verified(crate::AgencyCard::open(note.as_bytes()).expect("card"));
        }
        (a, b, c, store)
    }

    /// A stand-in TLS pin for `x`'s card.
    fn pin(x: &AgencyIdentity) -> Sha256Digest {
        Sha256Digest::of(x.id().as_str().as_bytes())
    }

    /// `issuer` revokes `agency`'s key of `kind`, as its card names it.
    fn rev(issuer: &AgencyIdentity, agency: &AgencyIdentity, kind: KeyKind) -> Revocation {
        let key_sha256 = match kind {
            KeyKind::Tls => pin(agency),
            KeyKind::Signing => signing_key_sha256(&agency.signer().verifier()),
            KeyKind::Age => Sha256Digest::of(b"age"),
        };
        Revocation {
            issuer: issuer.id().clone(),
            time: t("2026-12-01T03:00:00Z"),
            agency: agency.id().clone(),
            kind,
            key_sha256,
            reason: "key stolen".parse().expect("text"),
        }
    }

    #[test]
    fn own_and_local_revocations_verify_others_do_not() {
        let (a, b, c, store) = setup();
        let home = b.id().clone();
        let own = rev(&a, &a, KeyKind::Tls);
        let note = own.sign(a.signer()).expect("sign");
        assert_eq!(
            *Revocation::open(note.as_bytes(), &store, &home).expect("own"),
            own
        );
        let local = rev(&b, &a, KeyKind::Tls);
        let note = local.sign(b.signer()).expect("sign");
        assert_eq!(
            *Revocation::open(note.as_bytes(), &store, &home).expect("local"),
            local
        );
        // Nobody revokes another agency's key by naming it as its own: A's "own" revocation of
        // B's TLS pin, or of B's signing key, is refused.
        for kind in [KeyKind::Tls, KeyKind::Signing] {
            let mut stolen = rev(&a, &a, kind);
            stolen.key_sha256 = rev(&b, &b, kind).key_sha256;
            let note = stolen.sign(a.signer()).expect("sign");
            let e = Revocation::open(note.as_bytes(), &store, &home).expect_err("not A's key");
            assert!(
                e.to_string().contains("not one the card of agency-a names"),
                "{e}"
            );
        }
        // A third agency may not revoke A's key here.
        let third = rev(&c, &a, KeyKind::Tls);
        let note = third.sign(c.signer()).expect("sign");
        assert!(Revocation::open(note.as_bytes(), &store, &home).is_err());
        // A note signed by another key than the issuer's is refused.
        let forged = own.statement().encode();
        let by_c = c
            .signer()
            .with_name("agency-a")
            .expect("name")
            .sign(&forged);
        assert!(Revocation::open(by_c.expect("sign").as_bytes(), &store, &home).is_err());
        // Another statement type is refused.
        let fetch = Statement::Fetch {
            head: Head {
                transfer: TransferId::NONE,
                issuer: a.id().clone(),
                time: t("2026-12-01T03:00:00Z"),
            },
            peer: b.id().clone(),
            files: 1,
            ciphertext_bytes: 1,
        };
        let note = fetch.sign(a.signer()).expect("sign");
        assert!(Revocation::open(note.as_bytes(), &store, &home).is_err());
    }

    #[test]
    fn parser_is_strict() {
        let (a, _, _, _) = setup();
        let text = rev(&a, &a, KeyKind::Signing).statement().encode();
        assert_eq!(Statement::parse(&text).expect("parses").encode(), text);
        let bad = [
            text.replace("key-kind signing", "key-kind ssh"),
            text.replace("key-kind signing", "key-kind Signing"),
            text.replace(
                "transfer 00000000000000000000000000000000",
                "transfer 0123456789abcdef0123456789abcdef",
            ),
            text.replace("reason key stolen\n", ""),
            text.replace("reason key stolen", "reason  key stolen"),
            format!("{text}extra 1\n"),
        ];
        for b in &bad {
            assert!(Statement::parse(b).is_err(), "accepted {b:?}");
        }
    }

    #[test]
    fn the_earliest_revocation_wins_and_signing_keys_are_refused_from_then_on() {
        let (a, _, _, store) = setup();
        let key = a.signer().verifier();
        let mut r = rev(&a, &a, KeyKind::Signing);
        r.key_sha256 = signing_key_sha256(&key);
        let late = Revocation {
            time: t("2026-12-02T00:00:00Z"),
            ..r.clone()
        };
        let mut set = Revocations::new();
        for x in [&late, &r, &late] {
            let note = x.sign(a.signer()).expect("sign");
            set.insert(Revocation::open(note.as_bytes(), &store, a.id()).expect("open"));
        }
        assert_eq!(set.iter().count(), 1);
        assert!(
            set.signing_revoked_at(&key, t("2026-12-01T02:59:59Z"))
                .is_none()
        );
        assert!(
            set.signing_revoked_at(&key, t("2026-12-01T03:00:00Z"))
                .is_some()
        );
        assert_eq!(set.tls_spki().count(), 0);
        assert_eq!(
            r.file_name(),
            format!("agency-a.signing.{}.note", r.key_sha256)
        );
    }
}
