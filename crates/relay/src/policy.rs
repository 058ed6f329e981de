//! The relay's policy (`docs/relay.md` §4), a TOML file. Without one the relay accepts any
//! agency in its trust store sending to the relay's own agency, and requires
//! `case_reference`, `legal_basis`, `purpose` and `retain_until`.

use std::path::Path;

use rogatory_custody::{AgencyId, LEGAL_FIELDS, Legal, Timestamp};
use rogatory_transport::frame::PublishedPolicy;
use serde::Deserialize;

/// The legal-metadata fields a policy can require (`custody.md` §5.4).
pub const FIELDS: &[&str] = LEGAL_FIELDS;

/// What one agency may do.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgencyRule {
    /// The sending agency.
    pub id: AgencyId,
    /// Recipients it may send to (`"*"`: any agency in the trust store).
    pub may_send_to: Vec<String>,
    /// Ciphertext bytes it may hold at this relay at once (unpurged transfers).
    pub quota_bytes: Option<u64>,
}

/// The policy.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Legal-metadata fields every manifest must carry.
    pub require: Vec<String>,
    /// Largest transfer (ciphertext bytes).
    pub max_transfer_bytes: u64,
    /// New offers are refused when free space would fall below this; receipts and audit
    /// appends still proceed.
    pub reserve_bytes: u64,
    /// Manifests created longer ago than this are refused (replay of old transfers).
    pub max_manifest_age_days: u32,
    /// A partial upload untouched for this long is removed by `relay gc`.
    pub partial_ttl_hours: u32,
    /// Purge ciphertext this many days after delivery, even before `retain_until`.
    pub retain_after_delivery_days: Option<u32>,
    /// Per-agency rules. Empty: every trusted agency may send to this relay's agency.
    pub agency: Vec<AgencyRule>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            require: ["case_reference", "legal_basis", "purpose", "retain_until"]
                .map(String::from)
                .to_vec(),
            max_transfer_bytes: 1 << 40,
            reserve_bytes: 1 << 30,
            max_manifest_age_days: 30,
            partial_ttl_hours: 7 * 24,
            retain_after_delivery_days: None,
            agency: Vec::new(),
        }
    }
}

/// A policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML for a policy.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What and where.
        message: String,
    },
}

/// Why an offer is refused by policy (each maps to a protocol error code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The sender may not send (to one of) these recipients.
    NotAllowed(String),
    /// A required field is missing.
    MissingField(&'static str),
    /// The offer carries fields the policy does not ask for: they belong in the encrypted
    /// contents (`custody.md` §5.4).
    Unrequested(Vec<&'static str>),
    /// Too large.
    TooLarge(u64),
    /// Over quota.
    Quota,
    /// The manifest is too old.
    Stale,
    /// The manifest is dated more than [`MAX_CLOCK_AHEAD_SECS`] ahead of the relay's clock:
    /// the sender's clock is wrong.
    Ahead {
        /// The manifest's `created_at`.
        created_at: Timestamp,
        /// The relay's clock.
        now: Timestamp,
    },
}

/// A TOML error of `text` in one line, `line L, column C: what` (the toml crate's own text
/// quotes the line over several).
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(before) = e.span().and_then(|s| text.get(..s.start)) else {
        return e.message().to_owned();
    };
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {}", e.message())
}

/// How far ahead of the relay's clock a manifest's `created_at` may be (`relay.md` §4, the
/// manifest age window; test-plan.md 48): clocks of agencies in other jurisdictions drift.
pub const MAX_CLOCK_AHEAD_SECS: i64 = 86_400;

impl Policy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| PolicyError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses policy TOML.
    pub fn parse(text: &str) -> Result<Self, String> {
        let p: Policy = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        for f in &p.require {
            if !FIELDS.contains(&f.as_str()) {
                return Err(format!(
                    "require: unknown field {f:?} (known: {})",
                    FIELDS.join(", ")
                ));
            }
        }
        Ok(p)
    }

    /// The rule of `sender`, if the policy lists agencies.
    pub fn rule(&self, sender: &AgencyId) -> Option<&AgencyRule> {
        self.agency.iter().find(|r| &r.id == sender)
    }

    /// Checks who may send to whom. `relay` is this relay's agency.
    pub fn check_route(
        &self,
        sender: &AgencyId,
        recipients: &[AgencyId],
        relay: &AgencyId,
    ) -> Result<(), Refusal> {
        if self.agency.is_empty() {
            if recipients.contains(relay) {
                return Ok(());
            }
            return Err(Refusal::NotAllowed(format!(
                "this relay holds transfers for {relay} only"
            )));
        }
        let rule = self.rule(sender).ok_or_else(|| {
            Refusal::NotAllowed(format!("{sender} may not send through this relay"))
        })?;
        for r in recipients {
            if !rule.may_send_to.iter().any(|m| m == "*" || m == r.as_str()) {
                return Err(Refusal::NotAllowed(format!("{sender} may not send to {r}")));
            }
        }
        Ok(())
    }

    /// What WELCOME publishes (`protocol.md` §6.0): a sender checks its metadata against it
    /// before any work, and puts only these fields in the clear.
    pub fn published(&self) -> PublishedPolicy {
        PublishedPolicy {
            require: self.require.clone(),
            max_transfer_bytes: self.max_transfer_bytes,
            max_manifest_age_days: self.max_manifest_age_days,
        }
    }

    /// Checks the offer's legal fields: every required one present, and no other one but
    /// `retain_until` (the relay learns only what its policy needs, `custody.md` §5.4).
    pub fn check_legal(&self, legal: &Legal) -> Result<(), Refusal> {
        let required = |f: &str| self.require.iter().any(|r| r == f);
        for f in FIELDS {
            if required(f) && legal.has(f) != Some(true) {
                return Err(Refusal::MissingField(f));
            }
        }
        let extra: Vec<&'static str> = legal
            .present()
            .into_iter()
            .filter(|f| !required(f) && *f != "retain_until")
            .collect();
        if !extra.is_empty() {
            return Err(Refusal::Unrequested(extra));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_and_refuses_unknown_keys() {
        let p = Policy::parse(
            r#"
require = ["case_reference", "legal_basis"]
max_transfer_bytes = 1000
reserve_bytes = 10
[[agency]]
id = "agency-a"
may_send_to = ["agency-b"]
quota_bytes = 5000
"#,
        )
        .expect("policy");
        assert_eq!(p.max_transfer_bytes, 1000);
        assert_eq!(p.agency[0].quota_bytes, Some(5000));
        let a: AgencyId = "agency-a".parse().expect("id");
        let b: AgencyId = "agency-b".parse().expect("id");
        let c: AgencyId = "agency-c".parse().expect("id");
        assert_eq!(p.check_route(&a, std::slice::from_ref(&b), &b), Ok(()));
        assert!(p.check_route(&a, std::slice::from_ref(&c), &b).is_err());
        assert!(p.check_route(&c, std::slice::from_ref(&b), &b).is_err());
        assert!(Policy::parse("quota = 1").is_err());
        // One line saying where and what, not the toml crate's snippet over several.
        assert_eq!(
            Policy::parse("require = []\nmax_transfer_bytes = \"lots\"\n"),
            Err("line 2, column 22: invalid type: string \"lots\", expected u64".to_owned())
        );
        // Columns count characters: "é", a byte pair, is the second.
        let e = Policy::parse("réserve = 1").expect_err("not a bare key");
        assert!(e.starts_with("line 1, column 2: "), "{e}");
        assert!(Policy::parse("require = [\"shoe_size\"]").is_err());
    }
}
