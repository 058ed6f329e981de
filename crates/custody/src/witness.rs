//! Witness cosignatures of checkpoints (`custody.md` §7.3; C2SP tlog-cosignature,
//! `cosignature/v1`): an agency that witnesses another agency's log signs each checkpoint it
//! has checked to be consistent with the one it held, under the key name `<id>/witness`. A
//! cosignature is one more signature line on the checkpoint note, so a cosigned checkpoint is
//! still a valid signed note for the log key. Pure: who witnesses what is the caller's business.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest as _, Sha256};

use crate::card::AgencyCard;
use crate::checkpoint::Checkpoint;
use crate::error::NoteError;
use crate::identity::AgencyIdentity;
use crate::ids::AgencyId;
use crate::note::{Note, NoteSigner, NoteVerifier, ed25519_verify_strict};

/// The signature type byte of a `cosignature/v1` key (C2SP tlog-cosignature): it enters the
/// key id, so a cosignature never passes for a note signature (type 0x01) or the reverse.
pub const COSIGNATURE_KEY_TYPE: u8 = 0x04;

const SIG_PREFIX: &str = "\u{2014} ";
/// Key id, timestamp, Ed25519 signature.
const COSIG_LEN: usize = 4 + 8 + 64;

/// The key name under which `agency` cosigns checkpoints: `<id>/witness`.
pub fn witness_key_name(agency: &AgencyId) -> String {
    format!("{agency}/witness")
}

/// `key ID = SHA-256(key name || 0x0A || 0x04 || public key)[:4]`.
fn cosig_key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', COSIGNATURE_KEY_TYPE]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// The message a cosignature signs: `cosignature/v1 LF time <unix seconds> LF` followed by the
/// checkpoint note's text (`custody.md` §7.3).
pub fn cosigned_message(time: u64, checkpoint_text: &str) -> String {
    format!("cosignature/v1\ntime {time}\n{checkpoint_text}")
}

/// A witness's cosigning key: its agency's signing key under the name `<id>/witness`.
#[derive(Clone, Debug)]
pub struct Cosigner {
    agency: AgencyId,
    signer: NoteSigner,
}

impl Cosigner {
    /// The cosigning key of `identity`'s agency.
    pub fn new(identity: &AgencyIdentity) -> Self {
        let agency = identity.id().clone();
        let name = witness_key_name(&agency);
        // Invariant: an agency id followed by "/witness" is a valid key name.
        let signer = identity
            .signer()
            .with_name(&name)
            .unwrap_or_else(|| identity.signer().clone());
        Self { agency, signer }
    }

    /// The witness's agency.
    pub fn agency(&self) -> &AgencyId {
        &self.agency
    }

    /// The key name, `<id>/witness`.
    pub fn name(&self) -> &str {
        self.signer.name()
    }

    /// The verifying side of this key.
    pub fn key(&self) -> WitnessKey {
        WitnessKey::new(self.agency.clone(), &self.signer.verifier())
    }

    /// The cosignature line (with its final LF) of `checkpoint`, a checkpoint the caller has
    /// verified with the log's key and checked consistent, at `time` (Unix seconds):
    /// `— <id>/witness b64(key id || u64 BE time || Ed25519 signature)`.
    pub fn cosign(&self, checkpoint: &Checkpoint, time: u64) -> String {
        let msg = cosigned_message(time, &checkpoint.encode());
        let sig = self.signer.sign_raw(msg.as_bytes());
        let mut field = Vec::with_capacity(COSIG_LEN);
        let v = self.signer.verifier();
        field.extend_from_slice(&cosig_key_id(v.name(), v.public_key()).to_be_bytes());
        field.extend_from_slice(&time.to_be_bytes());
        field.extend_from_slice(&sig);
        format!("{SIG_PREFIX}{} {}\n", self.name(), B64.encode(field))
    }
}

/// A trusted witness's verifying key: the agency's card key under `<id>/witness`, type 0x04.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessKey {
    agency: AgencyId,
    name: String,
    id: u32,
    public: [u8; 32],
    /// Unix time from which this key's cosignatures no longer count: its successor's
    /// `valid_from` or its revocation, whichever is earlier (`custody.md` §7.3, §8.5).
    until: Option<i64>,
}

impl WitnessKey {
    /// The cosigning key of `agency`, whose statement verifier key is `key` (any name).
    pub fn new(agency: AgencyId, key: &NoteVerifier) -> Self {
        let name = witness_key_name(&agency);
        let public = *key.public_key();
        Self {
            id: cosig_key_id(&name, &public),
            name,
            agency,
            public,
            until: None,
        }
    }

    /// The cosigning key of the agency whose trusted card this is.
    pub fn of_card(card: &AgencyCard) -> Self {
        Self::new(card.id.clone(), &card.verifier_key)
    }

    /// The cosigning keys of every card of a trusted agency's chain (`custody.md` §8.5): a
    /// retired key's cosignatures count only if made before its successor's `valid_from`; a
    /// revoked key's never count (its holder may be a thief, and would back-date them).
    pub fn of_chain(chain: &crate::CardChain) -> Vec<Self> {
        chain
            .keys()
            .into_iter()
            .map(|k| {
                let mut w = Self::new(chain.id().clone(), &k.key);
                w.until = if k.revoked.is_some() {
                    Some(i64::MIN)
                } else {
                    k.until.map(|t| t.unix())
                };
                w
            })
            .collect()
    }

    /// The witness's agency.
    pub fn agency(&self) -> &AgencyId {
        &self.agency
    }

    /// The key id (`SHA-256(name || 0x0A || 0x04 || key)[:4]`).
    pub fn key_id(&self) -> u32 {
        self.id
    }
}

/// A cosignature that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosignature {
    /// The witness.
    pub witness: AgencyId,
    /// When it cosigned (Unix seconds, as it signed it).
    pub time: u64,
}

/// `custody.md` §7.3: the cosignatures on a checkpoint note by the `witnesses` given, each
/// witness counted once (its first line). Lines of other keys (the log's own signature, unknown
/// witnesses, a witness key under another name or type byte) are ignored. A line under a given
/// witness's name and key id that does not verify strictly, over this note's text, refuses the
/// whole note (`NoteError::BadSignature`), as for any signed note (`custody.md` §3). The caller
/// verifies the checkpoint itself with the log key.
pub fn verify_cosignatures(
    checkpoint_note: &str,
    witnesses: &[WitnessKey],
) -> Result<Vec<Cosignature>, NoteError> {
    let note = Note::parse(checkpoint_note.as_bytes())?;
    let text = note.unverified_text();
    let mut out: Vec<Cosignature> = Vec::new();
    for (name, id, rest) in note.signature_lines() {
        let Some(w) = witnesses.iter().find(|w| w.name == name && w.id == id) else {
            continue;
        };
        let bad = || NoteError::BadSignature(w.name.clone());
        if rest.len() != COSIG_LEN - 4 {
            return Err(bad());
        }
        let (time, sig) = rest.split_at(8);
        let time = u64::from_be_bytes(time.try_into().map_err(|_| bad())?);
        let msg = cosigned_message(time, text);
        if !ed25519_verify_strict(&w.public, msg.as_bytes(), sig) {
            return Err(bad());
        }
        // A valid cosignature by a key retired or revoked before it was made does not count.
        if w.until
            .is_some_and(|until| i64::try_from(time).map_or(true, |t| t >= until))
        {
            continue;
        }
        if !out.iter().any(|c| c.witness == w.agency) {
            out.push(Cosignature {
                witness: w.agency.clone(),
                time,
            });
        }
    }
    Ok(out)
}

/// `checkpoint_note` with the cosignature `lines` appended (each ending in LF), skipping any
/// line the note already carries.
pub fn add_cosignatures<'a>(
    checkpoint_note: &str,
    lines: impl IntoIterator<Item = &'a str>,
) -> String {
    let mut out = checkpoint_note.to_owned();
    for l in lines {
        let present = {
            let sigs = out.rsplit_once("\n\n").map_or("", |(_, s)| s);
            sigs.split_inclusive('\n').any(|x| x == l)
        };
        // One whole line each: a value with an inner LF would add lines of its choice.
        if !present
            && l.ends_with('\n')
            && l.matches('\n').count() == 1
            && l.starts_with(SIG_PREFIX)
        {
            out.push_str(l);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{Tree, leaf_hash};

    fn identity(id: &str, seed: u8) -> AgencyIdentity {
        AgencyIdentity::from_seeds(id.parse().expect("id"), &[seed; 32], [seed + 1; 32])
    }

    fn checkpoint(size: u64) -> Checkpoint {
        let t = Tree::from_leaves((0..size).map(|i| leaf_hash(format!("e{i}").as_bytes())));
        Checkpoint {
            origin: "xx-log/audit".into(),
            size,
            root: t.root(),
        }
    }

    fn signed(size: u64) -> (Checkpoint, String) {
        let log = identity("xx-log", 1);
        let cp = checkpoint(size);
        let note = cp.sign(&log.log_signer()).expect("signs");
        (cp, note)
    }

    /// test-plan.md 93: across a witness's key rotation (`custody.md` §8.5), its retired key's
    /// cosignatures count only when made before the successor's `valid_from`, and a revoked
    /// key's never (a thief would back-date them).
    #[test]
    fn a_retired_or_revoked_witness_key_counts_only_before_its_end() {
        let (cp, note) = signed(5);
        let old = identity("xx-wit", 7);
        let new = identity("xx-wit", 9);
        let t = |u: i64| crate::Timestamp::from_unix(u).expect("time");
        let (_, n0) = old
            .issue_card("W", "XX", vec![], Some(t(1_700_000_000)), None)
            .expect("card");
        let (_, n1) = new
            .issue_card(
                "W",
                "XX",
                vec![],
                Some(t(1_800_000_000)),
                Some(old.signer()),
            )
            .expect("successor");
        let mut chain = crate::CardChain::parse(format!("{n0}{n1}").as_bytes()).expect("chain");
        let count = |chain: &crate::CardChain, who: &AgencyIdentity, time: u64| {
            let line = Cosigner::new(who).cosign(&cp, time);
            verify_cosignatures(
                &add_cosignatures(&note, [line.as_str()]),
                &WitnessKey::of_chain(chain),
            )
            .expect("verifies")
            .len()
        };
        assert_eq!(count(&chain, &old, 1_799_999_999), 1);
        assert_eq!(count(&chain, &old, 1_800_000_000), 0);
        assert_eq!(count(&chain, &new, 1_800_000_000), 1);
        chain.revoke_signing_key(&new.signer().verifier(), t(1_900_000_000));
        assert_eq!(count(&chain, &new, 1_800_000_000), 0);
        assert_eq!(count(&chain, &new, 1_900_000_000), 0);
        assert_eq!(count(&chain, &old, 1_799_999_999), 1);
        // A value with an inner LF is not appended: it would add lines of its choice.
        let line = Cosigner::new(&old).cosign(&cp, 1_700_000_001);
        let smuggled = format!("{line}— xx-log/audit AAAA\n");
        assert_eq!(add_cosignatures(&note, [smuggled.as_str()]), note);
    }

    #[test]
    fn a_cosigned_checkpoint_verifies_and_stays_a_checkpoint() {
        let (cp, note) = signed(5);
        let w = Cosigner::new(&identity("xx-wit", 7));
        assert_eq!(w.name(), "xx-wit/witness");
        let line = w.cosign(&cp, 1_800_000_000);
        let cosigned = add_cosignatures(&note, [line.as_str()]);
        let found = verify_cosignatures(&cosigned, &[w.key()]).expect("verifies");
        assert_eq!(
            found,
            vec![Cosignature {
                witness: "xx-wit".parse().expect("id"),
                time: 1_800_000_000
            }]
        );
        // Still a valid checkpoint for the log key: the cosignature line is ignored there.
        let log_key = identity("xx-log", 1).log_signer().verifier();
        assert_eq!(
            Checkpoint::open(cosigned.as_bytes(), &log_key)
                .expect("checkpoint")
                .into_inner(),
            cp
        );
        // Nothing from an untrusted witness; the same line twice is added and counted once.
        assert_eq!(verify_cosignatures(&cosigned, &[]).expect("ok"), vec![]);
        let twice = format!("{cosigned}{line}");
        assert_eq!(add_cosignatures(&cosigned, [line.as_str()]), cosigned);
        assert_eq!(
            verify_cosignatures(&twice, &[w.key()]).expect("ok").len(),
            1
        );
        // A second cosignature by the same witness at another time: still one witness.
        let again = format!("{cosigned}{}", w.cosign(&cp, 1_800_000_001));
        assert_eq!(
            verify_cosignatures(&again, &[w.key()]).expect("ok").len(),
            1
        );
        // Two witnesses count two.
        let w2 = Cosigner::new(&identity("xx-two", 9));
        let both = add_cosignatures(&cosigned, [w2.cosign(&cp, 5).as_str()]);
        assert_eq!(
            verify_cosignatures(&both, &[w.key(), w2.key()])
                .expect("ok")
                .len(),
            2
        );
    }

    #[test]
    fn wrong_type_byte_or_name_is_not_a_cosignature() {
        let (cp, note) = signed(3);
        let wid = identity("xx-wit", 7);
        let w = Cosigner::new(&wid);
        // The witness key as a plain note signer (type 0x01) under the witness name: its key
        // id differs, so the line is not taken for a cosignature.
        let plain = wid
            .signer()
            .with_name("xx-wit/witness")
            .expect("name")
            .cosign(&note)
            .expect("cosign");
        assert_eq!(verify_cosignatures(&plain, &[w.key()]).expect("ok"), vec![]);
        // A type-0x04 line whose key id is right for another name is ignored too.
        let line = w.cosign(&cp, 10);
        let renamed = line.replacen("xx-wit/witness", "xx-wit/audit", 1);
        let n = add_cosignatures(&note, [renamed.as_str()]);
        assert_eq!(verify_cosignatures(&n, &[w.key()]).expect("ok"), vec![]);
        // Another agency's key under this witness's name: another key id, ignored.
        let other = Cosigner::new(&identity("xx-wit", 8)).cosign(&cp, 10);
        let n = add_cosignatures(&note, [other.as_str()]);
        assert_eq!(verify_cosignatures(&n, &[w.key()]).expect("ok"), vec![]);
    }

    #[test]
    fn a_cosignature_of_another_checkpoint_or_time_refuses_the_note() {
        let (_, note) = signed(4);
        let w = Cosigner::new(&identity("xx-wit", 7));
        // Moved from the cosigned checkpoint of size 3 onto the one of size 4.
        let moved = add_cosignatures(&note, [w.cosign(&checkpoint(3), 10).as_str()]);
        assert_eq!(
            verify_cosignatures(&moved, &[w.key()]),
            Err(NoteError::BadSignature("xx-wit/witness".into()))
        );
        // The time changed after signing.
        let (cp, note) = signed(4);
        let line = w.cosign(&cp, 10);
        let field = line.trim_end().rsplit(' ').next().expect("b64");
        let mut raw = B64.decode(field).expect("b64");
        raw[11] ^= 1;
        let forged = line.replacen(field, &B64.encode(&raw), 1);
        let n = add_cosignatures(&note, [forged.as_str()]);
        assert!(matches!(
            verify_cosignatures(&n, &[w.key()]),
            Err(NoteError::BadSignature(_))
        ));
        // Truncated.
        let short = line.replacen(field, &B64.encode(&raw[..40]), 1);
        let n = add_cosignatures(&note, [short.as_str()]);
        assert!(verify_cosignatures(&n, &[w.key()]).is_err());
    }
}
