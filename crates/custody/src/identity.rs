//! An agency's secret identity (`custody.md` §8): its signing key and, unless it is a
//! relay-only identity, the age identities that decrypt evidence sent to it: an X25519 one and,
//! for every agency created since post-quantum support, a hybrid `mlkem768x25519` one.

use rogatory_envelope::{AnyIdentity, HybridIdentity, HybridRecipient, Identity as AgeIdentity};
use zeroize::Zeroizing;

use crate::card::AgencyCard;
use crate::error::{FieldError, ParseError};
use crate::ids::{AgencyId, Sha256Digest, Timestamp};
use crate::note::NoteSigner;

/// The comment line that carries the hybrid post-quantum recipient in an identity file.
const PQ_COMMENT: &str = "# age recipient (post-quantum): ";

/// A secret agency identity. Never printed.
#[derive(Clone)]
pub struct AgencyIdentity {
    id: AgencyId,
    signer: NoteSigner,
    age: Option<AgeIdentity>,
    /// The public age recipient, kept for relay-only identities (which cannot derive it).
    recipient: rogatory_envelope::Recipient,
    /// The hybrid post-quantum age identity, if the agency has one (absent in relay-only ones).
    pq: Option<HybridIdentity>,
    /// Its recipient, kept for relay-only identities.
    pq_recipient: Option<HybridRecipient>,
}

impl std::fmt::Debug for AgencyIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgencyIdentity({}, <secret>)", self.id)
    }
}

impl AgencyIdentity {
    /// A fresh identity, with an X25519 and a hybrid post-quantum age identity.
    pub fn generate(id: AgencyId) -> Self {
        let age = AgeIdentity::generate();
        let pq = HybridIdentity::generate();
        let signer = NoteSigner::generate_for(&id);
        Self {
            recipient: age.to_public(),
            id,
            signer,
            age: Some(age),
            pq_recipient: Some(pq.to_public()),
            pq: Some(pq),
        }
    }

    /// A deterministic identity from seeds, X25519 only (test vectors only; see
    /// [`AgencyIdentity::with_pq_seed`]).
    pub fn from_seeds(id: AgencyId, signing_seed: &[u8; 32], age_secret: [u8; 32]) -> Self {
        let age = AgeIdentity::from_secret_bytes(age_secret);
        let signer = NoteSigner::from_seed_for(&id, signing_seed);
        Self {
            recipient: age.to_public(),
            id,
            signer,
            age: Some(age),
            pq: None,
            pq_recipient: None,
        }
    }

    /// The same identity with the hybrid post-quantum age identity of `seed` (test vectors, and
    /// adding a post-quantum key to an existing agency: `custody.md` §8.2).
    pub fn with_pq_seed(self, seed: [u8; 32]) -> Self {
        self.with_pq(HybridIdentity::from_seed(seed))
    }

    /// The same identity with `pq` as its hybrid post-quantum age identity.
    pub fn with_pq(mut self, pq: HybridIdentity) -> Self {
        self.pq_recipient = Some(pq.to_public());
        self.pq = Some(pq);
        self
    }

    /// The agency id.
    pub fn id(&self) -> &AgencyId {
        &self.id
    }

    /// The statement signing key (key name = agency id).
    pub fn signer(&self) -> &NoteSigner {
        &self.signer
    }

    /// The audit-log signing key (key name = `<id>/audit`).
    pub fn log_signer(&self) -> NoteSigner {
        let origin = format!("{}/audit", self.id);
        self.signer
            .with_name(&origin)
            .unwrap_or_else(|| self.signer.clone())
    }

    /// The age identity, absent in a relay-only identity.
    pub fn age_identity(&self) -> Option<&AgeIdentity> {
        self.age.as_ref()
    }

    /// The hybrid post-quantum age identity, if the agency has one (never in a relay-only one).
    pub fn age_identity_pq(&self) -> Option<&HybridIdentity> {
        self.pq.as_ref()
    }

    /// Every age identity this agency decrypts with: X25519, then hybrid if it has one. Empty
    /// for a relay-only identity.
    pub fn age_identities(&self) -> Vec<AnyIdentity> {
        let mut out: Vec<AnyIdentity> = self.age.iter().cloned().map(AnyIdentity::from).collect();
        out.extend(self.pq.iter().cloned().map(AnyIdentity::from));
        out
    }

    /// The X25519 age recipient of this agency.
    pub fn age_recipient(&self) -> rogatory_envelope::Recipient {
        self.recipient
    }

    /// The hybrid post-quantum age recipient of this agency, if it has one.
    pub fn age_recipient_pq(&self) -> Option<&HybridRecipient> {
        self.pq_recipient.as_ref()
    }

    /// The same identity without the age secrets: what a relay runs with.
    pub fn relay_only(&self) -> Self {
        Self {
            id: self.id.clone(),
            signer: self.signer.clone(),
            age: None,
            recipient: self.recipient,
            pq: None,
            pq_recipient: self.pq_recipient.clone(),
        }
    }

    /// The public card, signed (no `valid_from`, no predecessor: [`AgencyIdentity::issue_card`]).
    pub fn card(
        &self,
        name: &str,
        jurisdiction: &str,
        tls_spki_sha256: Vec<Sha256Digest>,
    ) -> Result<(AgencyCard, String), ParseError> {
        self.issue_card(name, jurisdiction, tls_spki_sha256, None, None)
    }

    /// A card issued now (`custody.md` §8, §8.5): valid from `valid_from`, and, for a card issued
    /// by key rotation, naming `previous`'s key as its predecessor and signed by it too.
    pub fn issue_card(
        &self,
        name: &str,
        jurisdiction: &str,
        tls_spki_sha256: Vec<Sha256Digest>,
        valid_from: Option<Timestamp>,
        previous: Option<&NoteSigner>,
    ) -> Result<(AgencyCard, String), ParseError> {
        let card = AgencyCard::new(
            self.signer.verifier(),
            name,
            jurisdiction,
            self.recipient,
            tls_spki_sha256,
        )?
        .with_pq_recipient(self.pq_recipient.clone())
        .with_valid_from(valid_from)
        .with_previous_key(previous.map(NoteSigner::verifier))?;
        let note = match previous {
            Some(p) => card.sign_successor(&self.signer, p)?,
            None => card.sign(&self.signer)?,
        };
        Ok((card, note))
    }

    /// The age secrets alone, as an age identity file (`custody.md` §8.5): what a home keeps
    /// of a retired identity after `agency rotate`, so that transfers encrypted to the old
    /// recipients still decrypt. It holds no signing key. Empty for a relay-only identity.
    pub fn retired_secret_text(&self, retired: &str) -> Zeroizing<String> {
        let mut s = format!(
            "# rogatory retired age identity: {}\n# retired: {retired}\n# age recipient: {}\n",
            self.id, self.recipient,
        );
        if let Some(r) = &self.pq_recipient {
            s.push_str(&format!("{PQ_COMMENT}{r}\n"));
        }
        for k in [
            self.age.as_ref().map(|a| a.to_secret_string()),
            self.pq.as_ref().map(|p| p.to_secret_string()),
        ]
        .into_iter()
        .flatten()
        {
            s.push_str(k.as_str());
            s.push('\n');
        }
        Zeroizing::new(s)
    }

    /// The identity file text (mode 0600 is the caller's job). `created` goes in a comment.
    pub fn to_secret_text(&self, created: &str) -> Zeroizing<String> {
        let mut s = format!(
            "# rogatory agency identity: {}\n# created: {created}\n# age recipient: {}\n",
            self.id, self.recipient,
        );
        if let Some(r) = &self.pq_recipient {
            s.push_str(&format!("{PQ_COMMENT}{r}\n"));
        }
        s.push_str(self.signer.to_secret_string().as_str());
        s.push('\n');
        match &self.age {
            Some(age) => {
                s.push_str(age.to_secret_string().as_str());
                s.push('\n');
                if let Some(pq) = &self.pq {
                    s.push_str(pq.to_secret_string().as_str());
                    s.push('\n');
                }
            }
            None => s.push_str("# relay-only: no age identity\n"),
        }
        Zeroizing::new(s)
    }

    /// Parses an identity file. A relay-only file carries the recipients in comment lines.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        const KIND: &str = "identity";
        let mut signer = None;
        let mut age = None;
        let mut recipient = None;
        let mut pq: Option<HybridIdentity> = None;
        let mut pq_recipient: Option<HybridRecipient> = None;
        for line in text.lines().map(str::trim) {
            if let Some(r) = line.strip_prefix(PQ_COMMENT) {
                pq_recipient = Some(
                    r.parse::<HybridRecipient>()
                        .map_err(|_| FieldError::new("post-quantum age recipient", r))?,
                );
            } else if line.starts_with("AGE-SECRET-KEY-PQ-1") {
                if pq.is_some() {
                    return Err(ParseError::syntax(
                        KIND,
                        "more than one post-quantum age identity",
                    ));
                }
                pq = Some(line.parse::<HybridIdentity>().map_err(|e| {
                    ParseError::syntax(KIND, format!("post-quantum age identity: {e}"))
                })?);
            } else if let Some(r) = line.strip_prefix("# age recipient: ") {
                recipient = Some(
                    r.parse::<rogatory_envelope::Recipient>()
                        .map_err(|_| FieldError::new("age recipient", r))?,
                );
            } else if line.is_empty() || line.starts_with('#') {
                continue;
            } else if line.starts_with("PRIVATE+KEY+") {
                if signer.is_some() {
                    return Err(ParseError::syntax(KIND, "more than one signing key"));
                }
                signer = Some(
                    line.parse::<NoteSigner>()
                        .map_err(|e| ParseError::syntax(KIND, format!("signing key: {e}")))?,
                );
            } else if line.starts_with("AGE-SECRET-KEY-1") {
                if age.is_some() {
                    return Err(ParseError::syntax(KIND, "more than one age identity"));
                }
                age = Some(
                    line.parse::<AgeIdentity>()
                        .map_err(|e| ParseError::syntax(KIND, format!("age identity: {e}")))?,
                );
            } else {
                return Err(ParseError::syntax(KIND, "unexpected line"));
            }
        }
        let signer = signer.ok_or_else(|| ParseError::syntax(KIND, "no signing key"))?;
        let id: AgencyId = signer.name().parse()?;
        let recipient = match (&age, recipient) {
            (Some(a), Some(r)) if a.to_public() != r => {
                return Err(ParseError::syntax(
                    KIND,
                    "age recipient comment does not match",
                ));
            }
            (Some(a), _) => a.to_public(),
            (None, Some(r)) => r,
            (None, None) => return Err(ParseError::syntax(KIND, "no age identity or recipient")),
        };
        if pq.is_some() && age.is_none() {
            return Err(ParseError::syntax(
                KIND,
                "a post-quantum age identity without the X25519 one",
            ));
        }
        let pq_recipient = match (&pq, pq_recipient) {
            (Some(k), Some(r)) if k.to_public() != r => {
                return Err(ParseError::syntax(
                    KIND,
                    "post-quantum age recipient comment does not match",
                ));
            }
            (Some(k), _) => Some(k.to_public()),
            (None, r) => r,
        };
        Ok(Self {
            id,
            signer,
            age,
            recipient,
            pq,
            pq_recipient,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pq_identity() -> AgencyIdentity {
        AgencyIdentity::from_seeds("xx-a".parse().expect("id"), &[1; 32], [2; 32])
            .with_pq_seed([3; 32])
    }

    #[test]
    fn generated_agencies_have_both_age_keys() {
        let a = AgencyIdentity::generate("xx-a".parse().expect("id"));
        assert!(a.age_identity().is_some() && a.age_identity_pq().is_some());
        assert_eq!(a.age_identities().len(), 2);
        let text = a.to_secret_text("t");
        assert!(text.contains("\nAGE-SECRET-KEY-PQ-1"));
        assert!(text.contains(PQ_COMMENT));
        let back = AgencyIdentity::parse(&text).expect("parses");
        assert_eq!(back.age_recipient_pq(), a.age_recipient_pq());
        let ro = AgencyIdentity::parse(&a.relay_only().to_secret_text("t")).expect("parses");
        assert!(ro.age_identities().is_empty());
        assert_eq!(ro.age_recipient_pq(), a.age_recipient_pq());
    }

    #[test]
    fn inconsistent_pq_lines_are_refused() {
        let a = pq_identity();
        let other = AgencyIdentity::generate("xx-a".parse().expect("id"));
        let text = a.to_secret_text("t");
        // A recipient comment that is not the secret's recipient.
        let wrong = text.replace(
            &a.age_recipient_pq().expect("pq").to_string(),
            &other.age_recipient_pq().expect("pq").to_string(),
        );
        assert!(AgencyIdentity::parse(&wrong).is_err());
        // Two post-quantum secrets.
        let pq_line = text
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-PQ-1"))
            .expect("pq line");
        assert!(AgencyIdentity::parse(&format!("{}{pq_line}\n", text.as_str())).is_err());
        // A post-quantum secret without the X25519 one.
        let no_x: String = text
            .lines()
            .filter(|l| !l.starts_with("AGE-SECRET-KEY-1"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(AgencyIdentity::parse(&no_x).is_err());
    }
}
