//! Witnesses (`relay.md` §12, `protocol.md` §6.7, `custody.md` §7.3): a relay cosigns the
//! checkpoints of the logs it is configured to witness after checking each one extends the one
//! it cosigned before, and submits its own checkpoints to the witnesses it is configured with,
//! attaching their cosignatures to the receipts it issues and to its CHECKPOINT answers.
//!
//! Configuration: `witness.toml` in the relay's data directory (reloaded with the trust store
//! and policy, `relay.md` §11):
//!
//! ```toml
//! cosign = ["agency-b"]        # logs this relay witnesses (their cards are in its trust store)
//! wait_ms = 5000               # how long a receipt waits for cosignatures
//! [[witness]]                  # witnesses this relay submits its checkpoints to
//! id = "agency-c"
//! address = "witness.agency-c.example:4433"
//! ```
//!
//! Storage, in the relay's index (`relay.db`): `witnessed` (per origin, the newest checkpoint
//! this relay cosigned), `witness_refusals` (evidence of a log that did not extend it: the held
//! and the presented checkpoint), `cosignatures` (per size of this relay's own log and witness,
//! the checkpoint note submitted and the cosignature line received).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use rogatory_custody::merkle::Tree;
use rogatory_custody::{
    AgencyId, Checkpoint, ConsistencyError, Cosigner, WitnessKey, add_cosignatures,
    check_consistency, verify_cosignatures,
};
use rogatory_transport::frame::{AddCheckpoint, CosignatureLine, Frame, WitnessSize};
use rogatory_transport::net::{Node, resolve};
use rogatory_transport::tls::PeerIdentity;
use rogatory_transport::{ErrorCode, ProtocolError};
use serde::Deserialize;

use crate::relay::Relay;
use crate::storage::Storage;

/// The name of the witness configuration file in the relay's data directory.
pub const CONFIG_FILE: &str = "witness.toml";
/// Default of [`WitnessConfig::wait_ms`].
pub const DEFAULT_WAIT_MS: u64 = 5000;
/// How often the submitter retries witnesses without a new checkpoint.
const RETRY: Duration = Duration::from_secs(30);
/// `relay.md` §12: one submission (connect, as many ADD_CHECKPOINT as a WITNESS_SIZE needs, the
/// answer) gets this long; a witness that does not answer in time counts as not answering.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A witness this relay submits its checkpoints to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessPeer {
    /// The witness's agency (its card must be in the relay's trust store).
    pub id: AgencyId,
    /// Its relay's `HOST:PORT`.
    pub address: String,
}

/// `witness.toml` (`relay.md` §12).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WitnessConfig {
    /// Agencies whose logs this relay cosigns.
    pub cosign: Vec<AgencyId>,
    /// How long a receipt waits for every witness to cosign a checkpoint that covers it.
    pub wait_ms: u64,
    /// Witnesses this relay submits its checkpoints to.
    pub witness: Vec<WitnessPeer>,
}

impl Default for WitnessConfig {
    fn default() -> Self {
        Self {
            cosign: Vec::new(),
            wait_ms: DEFAULT_WAIT_MS,
            witness: Vec::new(),
        }
    }
}

impl WitnessConfig {
    /// Reads `witness.toml` from `data_dir`; none there is the empty configuration.
    pub fn load(data_dir: &Path) -> Result<Self, String> {
        let p = data_dir.join(CONFIG_FILE);
        match std::fs::read_to_string(&p) {
            Ok(text) => Self::parse(&text).map_err(|e| format!("{}: {e}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }

    /// Parses the TOML.
    pub fn parse(text: &str) -> Result<Self, String> {
        let c: Self = toml::from_str(text).map_err(|e| crate::policy::toml_error(text, &e))?;
        if c.wait_ms > 20_000 {
            return Err("wait_ms above 20000".into());
        }
        Ok(c)
    }
}

/// A checkpoint of this relay's log and the cosignature lines it got, by witness.
#[derive(Clone, Debug)]
struct Cosigned {
    note: String,
    lines: BTreeMap<AgencyId, String>,
}

/// The witness state a relay keeps in memory (the index holds it durably).
#[derive(Debug)]
pub struct WitnessState {
    config: RwLock<Arc<WitnessConfig>>,
    cosigner: Cosigner,
    /// This relay's checkpoints (by size) with cosignatures; each root is this log's.
    cosigned: Mutex<BTreeMap<u64, Cosigned>>,
    changed: Condvar,
    /// Wakes the submitter: a new checkpoint, or a new configuration.
    notify: tokio::sync::Notify,
    /// A submitter runs ([`submit`]); without one nothing waits for cosignatures.
    submitting: std::sync::atomic::AtomicBool,
    /// Witnesses whose last submission failed (refused, down, too slow): a receipt does not
    /// wait for them until one succeeds again.
    not_answering: Mutex<std::collections::BTreeSet<AgencyId>>,
}

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS witnessed (
    origin TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    note TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS witness_refusals (
    id INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    at INTEGER NOT NULL,
    held TEXT NOT NULL,
    presented TEXT NOT NULL,
    why TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cosignatures (
    size INTEGER NOT NULL,
    witness TEXT NOT NULL,
    note TEXT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (size, witness)
);
";

impl WitnessState {
    /// The state of a relay whose identity is `cosigner`'s, with the cosignatures the index
    /// `db` keeps for checkpoints of `tree` (others, of another history, are left out).
    pub(crate) fn open(
        cosigner: Cosigner,
        db: &rusqlite::Connection,
        tree: &Tree,
    ) -> rusqlite::Result<Self> {
        let mut cosigned: BTreeMap<u64, Cosigned> = BTreeMap::new();
        let mut q = db.prepare("SELECT size, witness, note, line FROM cosignatures")?;
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        for row in rows {
            let (size, witness, note, line) = row?;
            let Ok(witness) = witness.parse::<AgencyId>() else {
                continue;
            };
            if !of_tree(&note, size, tree) {
                continue;
            }
            cosigned
                .entry(size)
                .or_insert_with(|| Cosigned {
                    note,
                    lines: BTreeMap::new(),
                })
                .lines
                .insert(witness, line);
        }
        Ok(Self {
            config: RwLock::new(Arc::new(WitnessConfig::default())),
            cosigner,
            cosigned: Mutex::new(cosigned),
            changed: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            submitting: std::sync::atomic::AtomicBool::new(false),
            not_answering: Mutex::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<WitnessConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the configuration (`relay.md` §11) and wakes the submitter.
    pub fn set_config(&self, c: WitnessConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c);
        self.notify.notify_one();
    }

    /// Wakes the submitter (a new checkpoint was recorded).
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Cosigned>> {
        self.cosigned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The witnesses that cosigned the checkpoint of `size`, if any.
    fn lines_at(&self, size: u64) -> Vec<String> {
        self.lock()
            .get(&size)
            .map(|c| c.lines.values().cloned().collect())
            .unwrap_or_default()
    }

    /// `note` (this log's checkpoint of `size`) with the cosignatures held for that size.
    pub(crate) fn attach(&self, note: &str, size: u64) -> String {
        let lines = self.lines_at(size);
        add_cosignatures(note, lines.iter().map(String::as_str))
    }

    /// Records whether the last submission to `witness` succeeded.
    pub(crate) fn set_answering(&self, witness: &AgencyId, ok: bool) {
        let mut g = self.not_answering.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            g.remove(witness);
        } else {
            g.insert(witness.clone());
        }
        drop(g);
        self.changed.notify_all();
    }

    /// `relay.md` §12: waits (at most `wait_ms`, only while a submitter runs and witnesses are
    /// configured) until every configured witness cosigned a checkpoint that covers entry
    /// `index`.
    pub(crate) fn wait_for(&self, index: u64) {
        let cfg = self.config();
        if cfg.witness.is_empty() || !self.submitting.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        self.wake();
        let deadline = Instant::now() + Duration::from_millis(cfg.wait_ms);
        let mut g = self.lock();
        loop {
            let not_answering = self
                .not_answering
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let done = cfg
                .witness
                .iter()
                .filter(|w| !not_answering.contains(&w.id))
                .all(|w| {
                    g.range(index + 1..)
                        .any(|(_, c)| c.lines.contains_key(&w.id))
                });
            let now = Instant::now();
            if done || now >= deadline {
                if !done {
                    tracing::warn!(
                        index,
                        "a receipt is issued without the cosignature of every witness (they did not answer in time)"
                    );
                }
                return;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The cosigned checkpoint covering entry `index` with the most cosignatures (the newest of
    /// those): `(size, note with its cosignatures)`; `None` if none covers it.
    pub(crate) fn best_for(&self, index: u64, tree: &Tree) -> Option<(u64, String)> {
        let g = self.lock();
        g.range(index + 1..)
            .filter(|(s, c)| {
                **s <= tree.len() && !c.lines.is_empty() && of_tree(&c.note, **s, tree)
            })
            .max_by_key(|(s, c)| (c.lines.len(), **s))
            .map(|(s, c)| {
                (
                    *s,
                    add_cosignatures(&c.note, c.lines.values().map(String::as_str)),
                )
            })
    }
}

/// Whether `note` is a checkpoint of `size` entries with `tree`'s root at that size.
fn of_tree(note: &str, size: u64, tree: &Tree) -> bool {
    let text = note.split("\n\n").next().unwrap_or_default();
    Checkpoint::parse(&format!("{text}\n")).is_ok_and(|cp| {
        cp.size == size
            && tree
                .root_at(size)
                .is_some_and(|r| bool::from(subtle::ConstantTimeEq::ct_eq(&r[..], &cp.root[..])))
    })
}

fn perr(code: ErrorCode, m: impl Into<String>) -> ProtocolError {
    ProtocolError::new(code, m)
}

fn db_err(e: rusqlite::Error) -> ProtocolError {
    tracing::warn!(error = %e, "index error");
    perr(
        ErrorCode::STORAGE_UNAVAILABLE,
        "the relay's index is unavailable",
    )
}

impl<S: Storage> Relay<S> {
    /// The witness state.
    pub fn witness(&self) -> &WitnessState {
        self.witness_state()
    }

    /// `protocol.md` §6.7, witness side: ADD_CHECKPOINT from `peer`, which must be the agency
    /// whose log it is, and a log this relay is configured to witness. The checkpoint must
    /// verify with the agency's card (key `<id>/audit`); `old_size` must be the size this relay
    /// holds (else WITNESS_SIZE with it); the proof must show it extends the held checkpoint
    /// (else INTEGRITY, logged, both notes kept as evidence). The new checkpoint is committed to
    /// the index before the cosignature is returned.
    pub fn add_checkpoint(
        &self,
        peer: &PeerIdentity,
        f: &AddCheckpoint,
    ) -> Result<Frame<'static>, ProtocolError> {
        let agency = &peer.agency;
        if !self.witness().config().cosign.contains(agency) {
            return Err(perr(
                ErrorCode::NOT_AUTHORISED,
                format!("{} does not witness {agency}'s log", self.agency()),
            ));
        }
        let trust = self.trust();
        let chain = trust.chain(agency).ok_or_else(|| {
            perr(
                ErrorCode::UNKNOWN_AGENCY,
                format!("{agency} has no card in the witness's trust store"),
            )
        })?;
        // Any log key of the agency's card chain (`custody.md` §8.5): a log keeps its history
        // across a key rotation, and so does its witness.
        let origin = format!("{agency}/audit");
        let cp = chain
            .open_checkpoint(f.checkpoint.as_bytes())
            .map_err(|e| {
                perr(
                    ErrorCode::INTEGRITY,
                    format!("the checkpoint does not verify with {agency}'s card: {e}"),
                )
            })?
            .into_inner();
        let now = self.now().unix().max(0);
        let db = self.db_lock();
        let held: Option<(u64, String)> = db
            .query_row(
                "SELECT size, note FROM witnessed WHERE origin = ?1",
                [&origin],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(db_err)?;
        let held_size = held.as_ref().map_or(0, |h| h.0);
        if f.old_size != held_size {
            return Ok(Frame::WitnessSize(WitnessSize { size: held_size }));
        }
        let held_cp = match &held {
            None => None,
            Some((_, note)) => Some(
                chain
                    .open_checkpoint(note.as_bytes())
                    .map_err(|e| {
                        tracing::error!(%origin, error = %e, "the checkpoint this witness holds no longer verifies with the agency's card");
                        perr(
                            ErrorCode::INTERNAL,
                            "the witness's held checkpoint does not verify with the agency's current card",
                        )
                    })?
                    .into_inner(),
            ),
        };
        if let Err(e) = check_consistency(held_cp.as_ref(), &cp, &f.proof) {
            let how = match e {
                ConsistencyError::RolledBack { .. } => "rolled back",
                _ => "forked",
            };
            let why = format!(
                "{origin} presented a checkpoint of {} entries that does not extend the one of {held_size} entries this witness cosigned ({how})",
                cp.size
            );
            tracing::error!(%origin, held = held_size, presented = cp.size, "WITNESS REFUSED TO COSIGN: {why}");
            db.execute(
                "INSERT INTO witness_refusals (origin, at, held, presented, why) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    origin,
                    now,
                    held.as_ref().map(|h| h.1.as_str()).unwrap_or(""),
                    f.checkpoint,
                    why
                ],
            )
            .map_err(db_err)?;
            return Err(perr(ErrorCode::INTEGRITY, why));
        }
        if cp.size > held_size {
            db.execute(
                "INSERT INTO witnessed (origin, size, note, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (origin) DO UPDATE SET size = excluded.size, note = excluded.note, updated_at = excluded.updated_at",
                rusqlite::params![origin, cp.size as i64, f.checkpoint, now],
            )
            .map_err(db_err)?;
        }
        drop(db);
        tracing::info!(%origin, size = cp.size, "cosigned a checkpoint");
        Ok(Frame::Cosignature(CosignatureLine {
            cosignature: self.witness().cosigner.cosign(&cp, now as u64),
        }))
    }

    /// The size of this relay's checkpoint `witness` holds, as far as this relay knows (the
    /// largest it cosigned).
    fn witness_holds(&self, witness: &AgencyId) -> u64 {
        self.witness()
            .lock()
            .iter()
            .rev()
            .find(|(_, c)| c.lines.contains_key(witness))
            .map_or(0, |(s, _)| *s)
    }

    /// Keeps a cosignature of this relay's checkpoint `note` of `size` by `witness`.
    fn keep_cosignature(
        &self,
        witness: &AgencyId,
        size: u64,
        note: &str,
        line: &str,
    ) -> Result<(), ProtocolError> {
        self.db_lock()
            .execute(
                "INSERT OR REPLACE INTO cosignatures (size, witness, note, line) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![size as i64, witness.as_str(), note, line],
            )
            .map_err(db_err)?;
        let w = self.witness();
        w.lock()
            .entry(size)
            .or_insert_with(|| Cosigned {
                note: note.to_owned(),
                lines: BTreeMap::new(),
            })
            .lines
            .insert(witness.clone(), line.to_owned());
        w.changed.notify_all();
        Ok(())
    }
}

/// `relay.md` §12, submitter side: runs until the runtime stops. Whenever a checkpoint is
/// recorded (and every 30 s), submits the log's latest checkpoint to every configured witness
/// (one submission in flight per witness) and keeps the cosignatures.
pub async fn submit<S: Storage + 'static>(relay: Arc<Relay<S>>, node: Arc<Node>) {
    relay
        .witness()
        .submitting
        .store(true, std::sync::atomic::Ordering::SeqCst);
    loop {
        let cfg = relay.witness().config();
        let mut tasks = Vec::new();
        for w in cfg.witness.iter().cloned() {
            let (r, n) = (relay.clone(), node.clone());
            tasks.push(tokio::spawn(async move {
                let result = tokio::time::timeout(SUBMIT_TIMEOUT, submit_one(&r, &n, &w))
                    .await
                    .unwrap_or_else(|_| {
                        Err(perr(
                            ErrorCode::TIMEOUT,
                            format!("no answer within {} s", SUBMIT_TIMEOUT.as_secs()),
                        ))
                    });
                r.witness().set_answering(&w.id, result.is_ok());
                if let Err(e) = result {
                    if e.code == ErrorCode::INTEGRITY {
                        tracing::error!(witness = %w.id, error = %e.message, "the witness refused to cosign this relay's checkpoint");
                    } else {
                        tracing::warn!(witness = %w.id, error = %e.message, "could not get a cosignature");
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let _ = tokio::time::timeout(RETRY, relay.witness().notify.notified()).await;
    }
}

async fn submit_one<S: Storage + 'static>(
    relay: &Arc<Relay<S>>,
    node: &Node,
    w: &WitnessPeer,
) -> Result<(), ProtocolError> {
    let net = |what: &str, e: rogatory_transport::net::NetError| {
        perr(ErrorCode::TIMEOUT, format!("{what} {}: {e}", w.address))
    };
    let mut old = relay.witness_holds(&w.id);
    let r2 = relay.clone();
    let latest = tokio::task::spawn_blocking(move || r2.latest_checkpoint())
        .await
        .map_err(|e| perr(ErrorCode::INTERNAL, e.to_string()))??;
    let Some((size, _)) = latest else {
        return Ok(());
    };
    if relay
        .witness()
        .lock()
        .get(&size)
        .is_some_and(|c| c.lines.contains_key(&w.id))
    {
        return Ok(());
    }
    let keys = relay
        .trust()
        .chain(&w.id)
        .map(WitnessKey::of_chain)
        .ok_or_else(|| {
            perr(
                ErrorCode::UNKNOWN_AGENCY,
                format!("witness {} has no card in this relay's trust store", w.id),
            )
        })?;
    let addr = resolve(&w.address).await.map_err(|e| net("resolving", e))?;
    let s = node
        .connect(addr, Some(w.id.clone()))
        .await
        .map_err(|e| net("connecting to", e))?;
    let result = async {
        for _ in 0..2 {
            let r2 = relay.clone();
            let (note, proof) = tokio::task::spawn_blocking(move || r2.checkpoint_for_witness(old))
                .await
                .map_err(|e| perr(ErrorCode::INTERNAL, e.to_string()))??;
            let Some((size, note)) = note else {
                return Ok(());
            };
            let (mut wr, mut rd) = s.open().await.map_err(|e| net("talking to", e))?;
            wr.send(&Frame::AddCheckpoint(AddCheckpoint {
                old_size: old,
                proof,
                checkpoint: note.clone(),
            }))
            .await
            .map_err(|e| net("talking to", e))?;
            wr.finish();
            match rd.expect().await.map_err(|e| net("talking to", e))? {
                Frame::Cosignature(c) => {
                    // Exactly one signature line, under the witness's own key name: a witness
                    // must not slip other lines (say, under this log's key name) into the
                    // checkpoints this relay hands out.
                    let line = c.cosignature.as_str();
                    let single = line.ends_with('\n') && line.matches('\n').count() == 1;
                    let named = line
                        .strip_prefix(&format!("— {} ", rogatory_custody::witness_key_name(&w.id)))
                        .is_some();
                    if !single || !named {
                        return Err(perr(
                            ErrorCode::INTEGRITY,
                            format!(
                                "witness {} answered with something other than one cosignature line of its own",
                                w.id
                            ),
                        ));
                    }
                    let with = add_cosignatures(&note, [line]);
                    let ok = verify_cosignatures(&with, &keys)
                        .is_ok_and(|v| v.iter().any(|x| x.witness == w.id));
                    if !ok {
                        return Err(perr(
                            ErrorCode::INTEGRITY,
                            format!(
                                "witness {} answered with a cosignature that does not verify",
                                w.id
                            ),
                        ));
                    }
                    relay.keep_cosignature(&w.id, size, &note, &c.cosignature)?;
                    tracing::info!(witness = %w.id, size, "checkpoint cosigned");
                    return Ok(());
                }
                Frame::WitnessSize(ws) => old = ws.size,
                Frame::Error(e) => return Err(perr(e.code, e.message)),
                other => {
                    return Err(perr(
                        ErrorCode::PROTOCOL_VIOLATION,
                        format!("unexpected answer {}", other.ty().name()),
                    ));
                }
            }
        }
        Err(perr(
            ErrorCode::CONFLICT,
            format!("witness {} keeps answering another size", w.id),
        ))
    }
    .await;
    s.close(ErrorCode::NO_ERROR, "done");
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use rogatory_custody::{AgencyIdentity, AuditLog, MemoryLogStore, Sha256Digest, TrustStore};

    use crate::{DiskStorage, Policy, RelayConfig, system_clock};

    fn identity(id: &str, seed: u8) -> AgencyIdentity {
        AgencyIdentity::from_seeds(id.parse().expect("id"), &[seed; 32], [seed + 1; 32])
    }

    fn peer(id: &str) -> PeerIdentity {
        PeerIdentity {
            agency: id.parse().expect("id"),
            spki_sha256: Sha256Digest::of(id.as_bytes()),
            cert_sha256: Sha256Digest::of(id.as_bytes()),
        }
    }

    /// The witness relay of agency-c, trusting agency-a and agency-b, witnessing agency-b.
    fn witness(dir: &Path) -> Relay<DiskStorage> {
        let mut trust = TrustStore::new();
        for (id, seed) in [("agency-a", 1), ("agency-b", 3)] {
            let (card, note) = identity(id, seed).card(id, "XX", vec![]).expect("card");
            trust
                .add(note.as_bytes(), &card.fingerprint().to_string())
                .expect("trust");
        }
        let cfg = RelayConfig {
            data_dir: dir.to_owned(),
            identity: identity("agency-c", 5),
            trust,
            policy: Policy::default(),
            clock: system_clock(),
        };
        let r = Relay::open(cfg, DiskStorage::new()).expect("relay");
        r.witness()
            .set_config(WitnessConfig::parse("cosign = [\"agency-b\"]\n").expect("config"));
        r
    }

    fn log_of(entries: &[&str]) -> AuditLog<MemoryLogStore> {
        let mut log = AuditLog::open(
            MemoryLogStore::default(),
            identity("agency-b", 3).log_signer(),
        )
        .expect("log");
        for e in entries {
            log.append(e.as_bytes()).expect("append");
        }
        log
    }

    fn add(
        r: &Relay<DiskStorage>,
        who: &str,
        old_size: u64,
        log: &AuditLog<MemoryLogStore>,
    ) -> Result<Frame<'static>, ProtocolError> {
        let proof = if old_size == 0 || old_size >= log.len() {
            Vec::new()
        } else {
            log.tree()
                .consistency_proof(old_size, log.len())
                .expect("proof")
        };
        r.add_checkpoint(
            &peer(who),
            &AddCheckpoint {
                old_size,
                proof,
                checkpoint: log.checkpoint_note().expect("note").to_owned(),
            },
        )
    }

    fn refusals(r: &Relay<DiskStorage>) -> i64 {
        r.db_lock()
            .query_row("SELECT count(*) FROM witness_refusals", [], |x| x.get(0))
            .expect("count")
    }

    /// test-plan.md 93: the witness side of `protocol.md` §6.7.
    #[test]
    fn a_witness_cosigns_extensions_and_refuses_forks_and_rollbacks() {
        let dir = tempfile::tempdir().expect("tmp");
        let r = witness(dir.path());
        let key = Cosigner::new(&identity("agency-c", 5)).key();
        let honest = log_of(&["e0", "e1", "e2"]);
        // First checkpoint: trusted on first submission, cosigned with a line that verifies.
        let Frame::Cosignature(c) = add(&r, "agency-b", 0, &honest).expect("cosigned") else {
            panic!("expected a cosignature");
        };
        let note = honest.checkpoint_note().expect("note");
        let with = add_cosignatures(note, [c.cosignature.as_str()]);
        assert_eq!(
            verify_cosignatures(&with, &[key]).expect("verifies").len(),
            1
        );
        // A wrong old size: the size held, nothing changed.
        let honest = log_of(&["e0", "e1", "e2", "e3"]);
        assert_eq!(
            add(&r, "agency-b", 0, &honest).expect("answer"),
            Frame::WitnessSize(WitnessSize { size: 3 })
        );
        assert!(matches!(
            add(&r, "agency-b", 3, &honest).expect("cosigned"),
            Frame::Cosignature(_)
        ));
        // The forged log (entry 0 dropped, re-signed with B's key), same size or grown.
        for forged in [
            log_of(&["e1", "e2", "e3", "e4"]),
            log_of(&["e1", "e2", "e3", "e4", "e5", "e6"]),
        ] {
            let e = add(&r, "agency-b", 4, &forged).expect_err("refused");
            assert_eq!(e.code, ErrorCode::INTEGRITY);
            assert!(
                e.message.contains("does not extend the one of 4 entries"),
                "{}",
                e.message
            );
        }
        // A rollback.
        let e = add(&r, "agency-b", 4, &log_of(&["e0", "e1"])).expect_err("refused");
        assert!(e.message.contains("(rolled back)"), "{}", e.message);
        assert_eq!(refusals(&r), 3);
        // Only the log's own agency, and only a witnessed log.
        let e = add(&r, "agency-a", 4, &honest).expect_err("refused");
        assert_eq!(e.code, ErrorCode::NOT_AUTHORISED);
        r.witness().set_config(
            WitnessConfig::parse("cosign = [\"agency-a\", \"agency-b\"]\n").expect("config"),
        );
        let e = add(&r, "agency-a", 0, &honest).expect_err("refused");
        assert_eq!(e.code, ErrorCode::INTEGRITY);
        // What it cosigned survives a restart.
        drop(r);
        let r = witness(dir.path());
        assert_eq!(
            add(&r, "agency-b", 0, &honest).expect("answer"),
            Frame::WitnessSize(WitnessSize { size: 4 })
        );
    }

    #[test]
    fn the_configuration_parses_and_refuses_unknown_keys() {
        let c = WitnessConfig::parse(
            "cosign = [\"agency-b\"]\nwait_ms = 100\n[[witness]]\nid = \"agency-c\"\naddress = \"h:1\"\n",
        )
        .expect("parses");
        assert_eq!(c.wait_ms, 100);
        assert_eq!(c.witness[0].id.as_str(), "agency-c");
        assert!(WitnessConfig::parse("cosigns = []\n").is_err());
        assert!(WitnessConfig::parse("wait_ms = 100000\n").is_err());
        assert_eq!(
            WitnessConfig::parse("").expect("empty"),
            WitnessConfig::default()
        );
    }
}
