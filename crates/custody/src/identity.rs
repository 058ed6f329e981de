//! An agency's secret identity (`custody.md` §8): its signing key and, unless it is a
//! relay-only identity, the age identity that decrypts evidence sent to it.

use rogatory_envelope::Identity as AgeIdentity;
use zeroize::Zeroizing;

use crate::card::AgencyCard;
use crate::error::{FieldError, ParseError};
use crate::ids::{AgencyId, Sha256Digest};
use crate::note::NoteSigner;

/// A secret agency identity. Never printed.
#[derive(Clone)]
pub struct AgencyIdentity {
    id: AgencyId,
    signer: NoteSigner,
    age: Option<AgeIdentity>,
    /// The public age recipient, kept for relay-only identities (which cannot derive it).
    recipient: rogatory_envelope::Recipient,
}

impl std::fmt::Debug for AgencyIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgencyIdentity({}, <secret>)", self.id)
    }
}

impl AgencyIdentity {
    /// A fresh identity.
    pub fn generate(id: AgencyId) -> Self {
        let age = AgeIdentity::generate();
        let signer = NoteSigner::generate_for(&id);
        Self {
            recipient: age.to_public(),
            id,
            signer,
            age: Some(age),
        }
    }

    /// A deterministic identity from seeds (test vectors only).
    pub fn from_seeds(id: AgencyId, signing_seed: &[u8; 32], age_secret: [u8; 32]) -> Self {
        let age = AgeIdentity::from_secret_bytes(age_secret);
        let signer = NoteSigner::from_seed_for(&id, signing_seed);
        Self {
            recipient: age.to_public(),
            id,
            signer,
            age: Some(age),
        }
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

    /// The age recipient evidence for this agency is encrypted to.
    pub fn age_recipient(&self) -> rogatory_envelope::Recipient {
        self.recipient
    }

    /// The same identity without the age secret: what a relay runs with.
    pub fn relay_only(&self) -> Self {
        Self {
            id: self.id.clone(),
            signer: self.signer.clone(),
            age: None,
            recipient: self.recipient,
        }
    }

    /// The public card, signed.
    pub fn card(
        &self,
        name: &str,
        jurisdiction: &str,
        tls_spki_sha256: Vec<Sha256Digest>,
    ) -> Result<(AgencyCard, String), ParseError> {
        let card = AgencyCard::new(
            self.signer.verifier(),
            name,
            jurisdiction,
            self.recipient,
            tls_spki_sha256,
        )?;
        let note = card.sign(&self.signer)?;
        Ok((card, note))
    }

    /// The identity file text (mode 0600 is the caller's job). `created` goes in a comment.
    pub fn to_secret_text(&self, created: &str) -> Zeroizing<String> {
        let mut s = format!(
            "# rogatory agency identity: {}\n# created: {created}\n# age recipient: {}\n{}\n",
            self.id,
            self.recipient,
            self.signer.to_secret_string().as_str()
        );
        match &self.age {
            Some(age) => {
                s.push_str(age.to_secret_string().as_str());
                s.push('\n');
            }
            None => s.push_str("# relay-only: no age identity\n"),
        }
        Zeroizing::new(s)
    }

    /// Parses an identity file. A relay-only file carries the recipient in its comment line.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        const KIND: &str = "identity";
        let mut signer = None;
        let mut age = None;
        let mut recipient = None;
        for line in text.lines().map(str::trim) {
            if let Some(r) = line.strip_prefix("# age recipient: ") {
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
        Ok(Self {
            id,
            signer,
            age,
            recipient,
        })
    }
}
