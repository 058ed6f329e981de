//! The relay checkpoints this home has verified, and the consistency check every client
//! operation makes on contact (`custody.md` §7.2, `protocol.md` §6.6, `docs/cli.md` "State
//! directory"):
//!
//! ```text
//! checkpoints/<relay>.checkpoint                  the newest checkpoint of <relay>/audit verified
//! checkpoints/<relay>.seen/<size>.checkpoint      every one verified, for equal-size comparisons
//! checkpoints/<relay>.lock                      locked while the newest is compared and replaced
//! checkpoints/<relay>.fork-<UTC>/held.checkpoint  evidence of an inconsistent log: what this
//! checkpoints/<relay>.fork-<UTC>/presented.checkpoint   home held, and what the relay presented
//! ```
//!
//! Every file but the lock is a signed checkpoint note, written atomically with mode 0600.
//!
//! A home may require witnesses' cosignatures on the checkpoint of every receipt it accepts
//! (`custody.md` §7.3, `docs/cli.md` "State directory"): `witnesses.toml`, `require = K` and
//! `witnesses = ["<agency id>", …]`, each with a card in the trust store.

use std::path::PathBuf;

use rogatory_custody::{
    AgencyId, Checkpoint, ConsistencyError, NoteVerifier, Timestamp, TrustStore, WitnessKey,
    check_against_seen, check_consistency, verify_cosignatures,
};
use rogatory_transport::frame::{self, Frame};
use rogatory_transport::net::Session;

use crate::error::{Error, ErrorKind, Result, net, refused};
use crate::home::{Home, write_file};

/// What [`check_held`] could say about a receipt's checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeldCheck {
    /// This home verified a checkpoint of the same size from that relay, with the same root.
    Matches,
    /// No checkpoint of that size is held: nothing can be proven offline. `newest` is the size
    /// of the newest one held, if any.
    NotCompared {
        /// Size of the newest checkpoint held from that relay.
        newest: Option<u64>,
    },
}

fn newest_path(home: &Home, relay: &AgencyId) -> PathBuf {
    home.path(&format!("checkpoints/{relay}.checkpoint"))
}

fn seen_dir(home: &Home, relay: &AgencyId) -> PathBuf {
    home.path(&format!("checkpoints/{relay}.seen"))
}

/// The log keys of `relay`'s audit log, from its trusted card chain (`custody.md` §8.5: a
/// checkpoint signed before the relay's agency rotated its key keeps verifying).
fn log_key(store: &TrustStore, relay: &AgencyId) -> Result<Vec<NoteVerifier>> {
    let chain = store.chain(relay).ok_or_else(|| {
        Error::new(
            ErrorKind::Refused,
            format!("relay agency {relay} has no trusted card"),
        )
        .hint("add its card with `rogatory trust add` after checking its fingerprint")
    })?;
    Ok(chain.log_verifiers())
}

fn open_held(p: &std::path::Path, key: &[NoteVerifier]) -> Result<(Checkpoint, String)> {
    let text = std::fs::read_to_string(p).map_err(|e| crate::error::io("reading", p, e))?;
    let cp = Checkpoint::open_any(text.as_bytes(), key).map_err(|e| {
        Error::new(
            ErrorKind::Integrity,
            format!(
                "{}: a held checkpoint that does not verify with the relay's card",
                p.display()
            ),
        )
        .source(e)
        .hint("the file was changed, or the relay's card was replaced; keep it as evidence")
    })?;
    Ok((cp.into_inner(), text))
}

/// The newest checkpoint of `relay`'s log this home verified, and its note.
fn newest(
    home: &Home,
    relay: &AgencyId,
    key: &[NoteVerifier],
) -> Result<Option<(Checkpoint, String)>> {
    let p = newest_path(home, relay);
    if !p.exists() {
        return Ok(None);
    }
    open_held(&p, key).map(Some)
}

/// Every checkpoint of `relay`'s log this home verified (the newest included).
fn seen(home: &Home, relay: &AgencyId, key: &[NoteVerifier], size: u64) -> Result<Seen> {
    let mut out = Seen::default();
    if let Some((cp, _)) = newest(home, relay, key)? {
        out.newest = Some(cp.size);
        if cp.size == size {
            out.same_size.push(cp);
        }
    }
    // Only a checkpoint of the same size can be compared offline (`custody.md` §7.2), so only
    // that one file is read: the cost does not grow with the number of checkpoints held.
    let p = seen_dir(home, relay).join(format!("{size}.checkpoint"));
    if p.exists() {
        out.same_size.push(open_held(&p, key)?.0);
    }
    Ok(out)
}

/// What [`seen`] found: the held checkpoints of one size, and the newest size held.
#[derive(Default)]
struct Seen {
    same_size: Vec<Checkpoint>,
    newest: Option<u64>,
}

/// Keeps a verified checkpoint: by size, and as the newest unless another process of this home
/// meanwhile kept a larger one (never replaced by a smaller one).
fn keep(
    home: &Home,
    relay: &AgencyId,
    key: &[NoteVerifier],
    cp: &Checkpoint,
    note: &str,
) -> Result<()> {
    let dir = seen_dir(home, relay);
    write_file(
        &dir.join(format!("{}.checkpoint", cp.size)),
        note.as_bytes(),
        0o600,
        true,
    )?;
    // Two commands of one home may keep checkpoints of the same relay at once: the comparison
    // with the newest held and the replacement happen under one lock, so a smaller checkpoint
    // never replaces a larger one kept meanwhile.
    let _lock = lock_relay(home, relay)?;
    if newest(home, relay, key)?.is_some_and(|(held, _)| held.size >= cp.size) {
        return Ok(());
    }
    write_file(&newest_path(home, relay), note.as_bytes(), 0o600, true)
}

/// An exclusive lock on `checkpoints/<relay>.lock`, held while the newest checkpoint of `relay`
/// is compared and replaced; released when the file is dropped.
fn lock_relay(home: &Home, relay: &AgencyId) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let p = home.path(&format!("checkpoints/{relay}.lock"));
    let storage = |e: std::io::Error| {
        Error::new(ErrorKind::Storage, format!("{}: cannot lock", p.display())).source(e)
    };
    let f = std::fs::OpenOptions::new()
        .mode(0o600)
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(storage)?;
    fs4::FileExt::lock(&f).map_err(storage)?;
    Ok(f)
}

/// Saves both notes as evidence and returns the exit-3 error naming the relay and both sizes.
fn inconsistent(
    home: &Home,
    relay: &AgencyId,
    held: Option<(&Checkpoint, &str)>,
    presented: &str,
    presented_size: u64,
    e: Option<&ConsistencyError>,
) -> Error {
    let stamp = Timestamp::from_datetime(time::OffsetDateTime::now_utc())
        .to_string()
        .replace([':', '-'], "");
    let dir = home.path(&format!("checkpoints/{relay}.fork-{stamp}"));
    let mut saved = write_file(
        &dir.join("presented.checkpoint"),
        presented.as_bytes(),
        0o600,
        true,
    );
    if let Some((_, note)) = held {
        saved = saved
            .and_then(|_| write_file(&dir.join("held.checkpoint"), note.as_bytes(), 0o600, true));
    }
    let (held_size, root) = match held {
        Some((h, _)) => (
            h.size,
            h.encode().lines().nth(2).unwrap_or_default().to_owned(),
        ),
        None => (0, String::new()),
    };
    let how = match e {
        Some(ConsistencyError::RolledBack { .. }) => " (rolled back)",
        Some(ConsistencyError::Forked { .. }) => " (forked)",
        _ => "",
    };
    let err = Error::new(
        ErrorKind::Integrity,
        format!(
            "relay {relay} presented a log inconsistent with the one this home saw{how}: held {held_size} entries (root {root}), relay shows {presented_size} entries"
        ),
    );
    match saved {
        Ok(()) => err.hint(format!(
            "do not trust this relay's receipts; evidence (held and presented checkpoints) saved in {}",
            dir.display()
        )),
        Err(w) => err.hint(format!("do not trust this relay's receipts; saving the evidence failed: {w}")),
    }
}

/// One CHECKPOINT exchange (`protocol.md` §6.6): the relay's latest checkpoint, verified with
/// its card (`None` for an empty log), its note, and the consistency proof from `held_size`.
async fn exchange(
    s: &Session,
    key: &[NoteVerifier],
    held_size: u64,
) -> Result<Option<(Checkpoint, String, Vec<[u8; 32]>)>> {
    let relay = &s.peer.agency;
    let what = "checkpoint request";
    let (mut w, mut r) = s.open().await.map_err(|e| net(what, e))?;
    w.send(&Frame::CheckpointRequest(frame::CheckpointRequest {
        held_size,
    }))
    .await
    .map_err(|e| net(what, e))?;
    w.finish();
    let answer = match r.expect().await.map_err(|e| net(what, e))? {
        Frame::Checkpoint(c) => c,
        Frame::Error(e) => return Err(refused(what, e.code, &e.message)),
        other => {
            return Err(Error::new(
                ErrorKind::Refused,
                format!("{what}: unexpected answer {}", other.ty().name()),
            ));
        }
    };
    if answer.checkpoint.is_empty() {
        return Ok(None);
    }
    let cp = Checkpoint::open_any(answer.checkpoint.as_bytes(), key)
        .map_err(|e| {
            Error::new(
                ErrorKind::Integrity,
                format!("relay {relay} presented a checkpoint that does not verify with its card"),
            )
            .source(e)
        })?
        .into_inner();
    Ok(Some((cp, answer.checkpoint, answer.proof)))
}

/// `protocol.md` §6.6, `custody.md` §7.2: asks the relay of `s` for its latest checkpoint and a
/// consistency proof from the newest one this home holds, verifies the checkpoint with the
/// relay's card and the proof, and keeps it. A log that does not extend the held checkpoint
/// (rolled back, forked) is refused (exit 3) with both checkpoints saved as evidence and the
/// held one kept. Called once per connection, after WELCOME and before anything else.
pub async fn check_relay(home: &Home, s: &Session) -> Result<()> {
    check_relay_latest(home, s).await.map(|_| ())
}

/// [`check_relay`], returning the relay's latest checkpoint it verified (`None`: empty log).
async fn check_relay_latest(home: &Home, s: &Session) -> Result<Option<Checkpoint>> {
    let relay = s.peer.agency.clone();
    let store = home.trust_store()?;
    let key = log_key(&store, &relay)?;
    let held = newest(home, &relay, &key)?;
    let held_size = held.as_ref().map_or(0, |(c, _)| c.size);
    let held_ref = held.as_ref().map(|(c, n)| (c, n.as_str()));
    let Some((cp, note, proof)) = exchange(s, &key, held_size).await? else {
        // An empty log: consistent only with holding nothing.
        return match held_ref {
            None => Ok(None),
            Some(_) => Err(inconsistent(home, &relay, held_ref, "", 0, None)),
        };
    };
    if let Err(e) = check_consistency(held.as_ref().map(|(c, _)| c), &cp, &proof) {
        return Err(inconsistent(
            home,
            &relay,
            held_ref,
            &note,
            cp.size,
            Some(&e),
        ));
    }
    if held_size != cp.size || held.is_none() {
        keep(home, &relay, &key, &cp, &note)?;
    }
    Ok(Some(cp))
}

/// `custody.md` §7.2: proves a receipt the relay of `s` just handed out consistent with what
/// this home holds, online: the relay's latest checkpoint must extend the receipt's (a proof
/// from its size), and extend the newest one held ([`check_relay`]); both answers must be the
/// same checkpoint. Then the receipt's checkpoint is kept, so that `verify` compares the
/// receipt offline. A receipt on a forked tree is refused (exit 3, evidence saved). If the log
/// grew between the two answers nothing is kept (the receipt stays "not compared").
pub async fn confirm_receipt(home: &Home, s: &Session, text: &str) -> Result<()> {
    let store = home.trust_store()?;
    let relay = s.peer.agency.clone();
    let (Ok(v), Ok(b)) = (
        crate::package::verify_receipt(text, &store),
        rogatory_custody::ReceiptBundle::parse(text),
    ) else {
        return Ok(());
    };
    if v.log_owner != relay {
        return Ok(());
    }
    let key = log_key(&store, &relay)?;
    let receipt_cp = &v.logged.checkpoint;
    // Already proven: this home holds a checkpoint of that size with that root (one file
    // read, so a status or fetch of many receipts stays linear).
    let same_size = seen_dir(home, &relay).join(format!("{}.checkpoint", receipt_cp.size));
    if same_size.exists()
        && open_held(&same_size, &key).is_ok_and(|(held, _)| held.root == receipt_cp.root)
    {
        return Ok(());
    }
    let Some((latest, note, proof)) = exchange(s, &key, receipt_cp.size).await? else {
        return Err(inconsistent(
            home,
            &relay,
            Some((receipt_cp, &b.checkpoint_note)),
            "",
            0,
            None,
        ));
    };
    if let Err(e) = check_consistency(Some(receipt_cp), &latest, &proof) {
        return Err(inconsistent(
            home,
            &relay,
            Some((receipt_cp, &b.checkpoint_note)),
            &note,
            latest.size,
            Some(&e),
        ));
    }
    let held_latest = check_relay_latest(home, s).await?;
    if held_latest.is_some_and(|h| h.size == latest.size && h.root == latest.root) {
        keep(home, &relay, &key, receipt_cp, &b.checkpoint_note)?;
    }
    Ok(())
}

/// `witnesses.toml` of a home (`docs/cli.md` "State directory"): accept a receipt only if its
/// checkpoint carries valid cosignatures (`custody.md` §7.3) by at least `require` of
/// `witnesses`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessRequirement {
    /// How many distinct witnesses must have cosigned.
    pub require: usize,
    /// The witnesses this home trusts (agency ids with a card in the trust store).
    pub witnesses: Vec<AgencyId>,
}

/// The home's `witnesses.toml`, if it has one (a bad one is a usage error, exit 2).
pub fn witness_requirement(home: &Home) -> Result<Option<WitnessRequirement>> {
    let p = home.path("witnesses.toml");
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::error::io("reading", &p, e)),
    };
    let r: WitnessRequirement =
        toml::from_str(&text).map_err(|e| crate::error::toml(&p, &text, &e))?;
    if r.require > r.witnesses.len() {
        return Err(Error::new(
            ErrorKind::Usage,
            format!(
                "{}: require = {} but only {} witnesses are listed",
                p.display(),
                r.require,
                r.witnesses.len()
            ),
        ));
    }
    Ok(Some(r))
}

/// `custody.md` §7.3: the witnesses whose valid cosignatures `checkpoint_note` (of `relay`'s
/// log) carries, among every agency of the trust store but the relay's; a cosignature line of a
/// trusted witness that does not verify is exit 3. With a `witnesses.toml`, fewer than
/// `require` of its witnesses is exit 3, naming the relay, `require` and the count found.
pub fn check_cosigned(
    home: &Home,
    store: &TrustStore,
    relay: &AgencyId,
    size: u64,
    checkpoint_note: &str,
) -> Result<Vec<AgencyId>> {
    let keys: Vec<WitnessKey> = store
        .chains()
        .filter(|c| c.id() != relay)
        .flat_map(WitnessKey::of_chain)
        .collect();
    let found: Vec<AgencyId> = verify_cosignatures(checkpoint_note, &keys)
        .map_err(|e| {
            Error::new(
                ErrorKind::Integrity,
                format!("relay {relay}: a receipt's checkpoint carries a cosignature that does not verify"),
            )
            .source(e)
        })?
        .into_iter()
        .map(|c| c.witness)
        .collect();
    let Some(req) = witness_requirement(home)? else {
        return Ok(found);
    };
    if let Some(w) = req.witnesses.iter().find(|w| store.get(w).is_none()) {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("witnesses.toml names witness {w}, which has no card in the trust store"),
        )
        .hint("add its card with `rogatory trust add` after checking its fingerprint"));
    }
    let count = found.iter().filter(|w| req.witnesses.contains(w)).count();
    if count < req.require {
        let names: Vec<String> = req.witnesses.iter().map(ToString::to_string).collect();
        return Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "relay {relay}: the receipt's checkpoint ({size} entries) carries {count} valid cosignatures from the witnesses this home trusts ({}); it requires {}",
                names.join(", "),
                req.require
            ),
        )
        .hint("a witness refused to cosign (the relay's log may be forked) or did not answer; do not rely on this receipt until it is cosigned"));
    }
    Ok(found)
}

/// [`check_held`] for a receipt bundle's text, as received from a relay: a bundle that
/// verifies against the trust store and whose checkpoint forks from one this home verified is
/// refused (exit 3, evidence saved), as is one whose checkpoint lacks the cosignatures the
/// home's `witnesses.toml` requires ([`check_cosigned`]). Anything else passes here (it is
/// verified where it is used).
///
/// A home that holds no checkpoint of that log yet (its first contact found the log empty)
/// keeps the receipt's verified checkpoint as its first one, as the first contact would have:
/// from then on the relay must prove every later log extends it (`custody.md` §7.2).
pub fn check_receipt(home: &Home, store: &TrustStore, text: &str) -> Result<()> {
    if let Ok(v) = crate::package::verify_receipt(text, store)
        && let Ok(b) = rogatory_custody::ReceiptBundle::parse(text)
    {
        let relay = &v.log_owner;
        let cp = &v.logged.checkpoint;
        check_cosigned(home, store, relay, cp.size, &b.checkpoint_note)?;
        if let HeldCheck::NotCompared { newest: None } =
            check_held(home, store, relay, cp, &b.checkpoint_note)?
        {
            let key = log_key(store, relay)?;
            keep(home, relay, &key, cp, &b.checkpoint_note)?;
        }
    }
    Ok(())
}

/// `custody.md` §7.2: compares a receipt's checkpoint of `relay`'s log with the checkpoints
/// this home verified from it: one of the same size with another root is a fork (exit 3, the
/// evidence saved); without one of the same size nothing is proven offline
/// ([`HeldCheck::NotCompared`]).
pub fn check_held(
    home: &Home,
    store: &TrustStore,
    relay: &AgencyId,
    cp: &Checkpoint,
    note: &str,
) -> Result<HeldCheck> {
    let key = log_key(store, relay)?;
    let seen = seen(home, relay, &key, cp.size)?;
    match check_against_seen(seen.same_size.iter(), cp) {
        Ok(Some(_)) => Ok(HeldCheck::Matches),
        Ok(None) => Ok(HeldCheck::NotCompared {
            newest: seen.newest,
        }),
        Err(e) => {
            let held = seen
                .same_size
                .iter()
                .find(|c| c.size == cp.size)
                .cloned()
                .unwrap_or_else(|| cp.clone());
            let p = seen_dir(home, relay).join(format!("{}.checkpoint", held.size));
            let held_note = std::fs::read_to_string(&p)
                .or_else(|_| std::fs::read_to_string(newest_path(home, relay)))
                .unwrap_or_default();
            Err(inconsistent(
                home,
                relay,
                Some((&held, &held_note)),
                note,
                cp.size,
                Some(&e),
            ))
        }
    }
}
