//! The relay's store and its answers to offers and pieces (`docs/relay.md`).
//!
//! Layout of the data directory (every on-disk name comes from a relay-generated row id):
//! ```text
//! relay.db          SQLite index (WAL, synchronous=FULL): transfers, their documents (apart),
//!                   files, durable prefixes, receipts
//! spool/<row>.pack  ciphertext of a transfer being received: file i at offset base(i)
//! inbox/<row>.pack  the same file once every piece is durable and verified
//! audit.log         the audit log (custody.md §7); audit.quarantine for a cut-off torn tail
//!                   (the newest checkpoint handed out is also kept in relay.db: relay.md §5.1)
//! ```
//!
//! Durability order (`relay.md` §3): piece hashed into its file's piece-root frontier and
//! written → pack fsynced (and the spool directory, once, so the name survives) → index
//! transaction with the new durable prefixes and frontiers committed → only then DURABLE to the
//! sender. Group commit: one fsync and one transaction cover every piece written since the last
//! one, and pieces keep arriving while they run. Completion, on SEAL: seal verified, manifest
//! matched against the offer and every file's piece root against the frontier computed on
//! arrival (nothing is read back) → manifest, seal and completion time committed → rename to
//! inbox → fsync both directories → custody receipt signed and appended to the audit log
//! (fsync) → bundle committed → RECEIPT.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rogatory_custody::merkle::Frontier;
use rogatory_custody::{
    AgencyId, AgencyIdentity, AuditLog, Head, Manifest, NoteSigner, Peer, PieceHash, PieceLayout,
    Revocations, Sha256Digest, Statement, Text, Timestamp, TransferId, TransferOffer, TrustStore,
};
use rogatory_transport::direct::{DirectRead, DirectSource};
use rogatory_transport::frame::{Offer, Seal, TransferState};
use rogatory_transport::net::{Accepted, Lease};
use rogatory_transport::tls::PeerIdentity;
use rogatory_transport::{ErrorCode, ProtocolError};
use rusqlite::{Connection, OptionalExtension, params};

use crate::logfile::FileLogStore;
use crate::policy::{MAX_CLOCK_AHEAD_SECS, Policy, Refusal};
use crate::storage::Storage;

/// A relay could not start or an administrative operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The index.
    #[error("index: {0}")]
    Db(#[from] rusqlite::Error),
    /// The audit log.
    #[error("audit log: {0}")]
    Log(#[from] rogatory_custody::LogError),
    /// File system.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The audit log does not extend the checkpoint the index keeps (`relay.md` §5.1), or it
    /// fails verification: the relay refuses to sign a different history.
    #[error("{0}")]
    Integrity(String),
    /// Other.
    #[error("{0}")]
    Other(String),
}

impl RelayError {
    /// Whether this is an integrity failure of the relay's own state (exit 3 at the CLI).
    pub fn is_integrity(&self) -> bool {
        use rogatory_custody::LogError as L;
        match self {
            RelayError::Integrity(_) => true,
            RelayError::Log(e) => !matches!(e, L::Storage(_)),
            _ => false,
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RelayError {
    let what = what.into();
    move |source| RelayError::Io { what, source }
}

/// Audit entries for TLS refusals per minute, at most.
pub const TLS_REJECTIONS_PER_MINUTE: u32 = 120;

/// Where the relay gets the time (tests move it).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Settings of a relay.
pub struct RelayConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// This relay's agency identity (signing key; a relay-only identity has no age key).
    pub identity: AgencyIdentity,
    /// Trusted agencies' cards (verifier keys for seals and delivery receipts).
    pub trust: TrustStore,
    /// The policy.
    pub policy: Policy,
    /// The clock.
    pub clock: Clock,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| Timestamp::from_datetime(time::OffsetDateTime::now_utc()))
}

#[derive(Debug)]
struct FileInfo {
    layout: PieceLayout,
    base: u64,
}

/// One upload of a transfer in progress (`relay.md` §2 "One upload at a time").
#[derive(Debug)]
struct Upload {
    /// The offer it belongs to ([`Lease::id`]): a newer offer of the transfer takes it over.
    lease: u64,
    /// Taken over: nothing more of it is written or committed. Set before the new upload reads
    /// the durable prefixes, and read under the index's lock by a commit
    /// ([`Relay::commit_batch`]) and under `state`'s by a write ([`Relay::store`]).
    fenced: AtomicBool,
    state: Mutex<Active>,
}

impl Upload {
    fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    /// Marks it fenced: nothing more of it is written or committed.
    fn mark_fenced(&self) {
        self.fenced.store(true, Ordering::SeqCst);
    }

    /// Fences it and waits for a write of it in progress, which holds `state`.
    fn fence(&self) {
        self.mark_fenced();
        drop(lock(&self.state));
    }
}

/// A transfer being received (its pack file lives in the spool).
#[derive(Debug)]
struct Active {
    row: i64,
    /// The pack file in the spool (computed once, not per piece).
    spool: PathBuf,
    files: Vec<FileInfo>,
    /// How its pieces are hashed (its offer's format, `custody.md` §5.2).
    piece_hash: PieceHash,
    /// Each file's piece-root frontier over the pieces received (`custody.md` §5.2).
    frontiers: Vec<Frontier>,
    received: Vec<u64>,
    durable: Vec<u64>,
    /// Files whose received prefix grew since the last sync (each listed once).
    changed: Vec<u32>,
    dirty: bool,
    named: bool,
    /// A sync is running (its fsync happens without this lock held).
    syncing: bool,
}

/// The relay.
pub struct Relay<S: Storage> {
    agency: AgencyId,
    signer: NoteSigner,
    storage: S,
    data_dir: PathBuf,
    db: Mutex<Connection>,
    /// A second, read-only connection to the index, for the lookups an async worker makes
    /// (a file FETCH's row and extent): in WAL mode a reader never waits for the writer, whose
    /// connection's lock is held through commits and their fsyncs.
    reader: Mutex<Connection>,
    /// Guarded with the log: the size of the checkpoint the index holds (`relay.md` §5.1).
    log: Mutex<(AuditLog<FileLogStore>, u64)>,
    /// What opening the log cut off as a torn tail: `(offset, bytes)`.
    torn_cut: Option<(u64, u64)>,
    /// Replaced whole by [`Relay::reload`] (`relay.md` §11).
    trust: std::sync::RwLock<Arc<TrustStore>>,
    policy: std::sync::RwLock<Arc<Policy>>,
    revocations: std::sync::RwLock<Arc<Revocations>>,
    clock: Clock,
    active: Mutex<HashMap<TransferId, Arc<Upload>>>,
    /// The last [`Lease::id`] given out.
    leases: AtomicU64,
    /// TLS refusals logged in the current minute (a flood is summarised, not logged entry by entry).
    tls_rejections: Mutex<(i64, u32)>,
    /// Files each recipient has fetched to the end, per transfer (until it has all of them).
    served: Mutex<HashMap<(i64, AgencyId), std::collections::BTreeSet<u32>>>,
    /// Witnessing: cosigning other logs, cosignatures of this one (`relay.md` §12).
    witness: crate::witness::WitnessState,
    /// Packs open for direct reads now ([`DirectPack`]).
    direct_open: Arc<std::sync::atomic::AtomicUsize>,
    /// Held while an offer is decided: two offers of one transfer at once (two connections, or
    /// two streams of one) must not both find it new and create it. One offer takes one index
    /// commit, so deciding them one at a time costs little.
    offering: Mutex<()>,
}

/// Large files served at once through direct reads, each with a reader thread and four 1 MiB
/// blocks (`protocol.md` §6.3): at most 64 MiB; beyond them, files are read through the page
/// cache.
const MAX_DIRECT_READERS: usize = 16;

/// A pack opened for direct reads ([`Relay::open_pack_direct`]), counted against
/// [`MAX_DIRECT_READERS`] while it lives.
#[derive(Debug)]
pub struct DirectPack {
    source: DirectSource,
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl DirectPack {
    /// Waits, without blocking the thread, until `len` bytes at `offset` of the pack can be read
    /// without waiting for the device (read ahead on the source's thread): so that serving a
    /// file from disk never stops an async worker's other connections (`protocol.md` §6.3).
    pub async fn ready(&mut self, offset: u64, len: usize) {
        self.source.ready(offset, len).await;
    }

    /// The `len` bytes at `offset` of the pack in the blocks read directly, without a copy
    /// ([`DirectSource::read_shared`]): into `parts`, returning how many parts they took.
    /// `None` if they cannot be had so (a block that failed or came short, or more parts than
    /// `parts` holds): the caller reads them with [`Relay::read_pack_into`], which reports a
    /// failure as it always has.
    pub fn read_shared(
        &mut self,
        offset: u64,
        len: usize,
        parts: &mut [bytes::Bytes],
    ) -> Option<usize> {
        let (mut got, mut n) = (0, 0);
        while got < len {
            let part = parts.get_mut(n)?;
            match self.source.read_shared(offset + got as u64, len - got) {
                Ok(Some(b)) if !b.is_empty() => {
                    got += b.len();
                    *part = b;
                    n += 1;
                }
                _ => return None,
            }
        }
        Some(n)
    }
}

impl Drop for DirectPack {
    fn drop(&mut self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<S: Storage> std::fmt::Debug for Relay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("agency", &self.agency)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl Active {
    /// Whether every piece of every file is durable (what SEAL requires).
    fn all_durable(&self) -> bool {
        self.durable
            .iter()
            .zip(&self.files)
            .all(|(&d, f)| d == f.layout.count())
    }
}

fn read_arc<T>(l: &std::sync::RwLock<Arc<T>>) -> Arc<T> {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write_arc<T>(l: &std::sync::RwLock<Arc<T>>, v: T) {
    *l.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A write, commit or seal of an upload that a newer offer of its transfer took over.
fn taken_over() -> ProtocolError {
    perr(
        ErrorCode::CONFLICT,
        "a newer connection of the sender took this upload over; this one stops",
    )
}

/// Sets files' durable prefixes back to nothing: the sender re-sends them whole.
fn reset_files(db: &mut Connection, row: i64, files: &[u32]) -> Result<(), ProtocolError> {
    let tx = db.transaction().map_err(db_err)?;
    for &i in files {
        tx.execute(
            "UPDATE files SET durable = 0, frontier = NULL WHERE row = ?1 AND idx = ?2",
            params![row, i64::from(i)],
        )
        .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)
}

fn perr(code: ErrorCode, m: impl Into<String>) -> ProtocolError {
    ProtocolError::new(code, m)
}

/// Storage errors: a full disk is a refusal (6), anything else retryable (5).
fn storage_err(e: std::io::Error) -> ProtocolError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        perr(ErrorCode::INSUFFICIENT_SPACE, "the relay's storage is full")
    } else {
        tracing::warn!(error = %e, "storage error");
        perr(
            ErrorCode::STORAGE_UNAVAILABLE,
            "the relay cannot store data right now",
        )
    }
}

fn db_err(e: rusqlite::Error) -> ProtocolError {
    tracing::warn!(error = %e, "index error");
    perr(
        ErrorCode::STORAGE_UNAVAILABLE,
        "the relay's index is unavailable",
    )
}

/// The stored name of a state.
pub fn state_name(s: TransferState) -> &'static str {
    match s {
        TransferState::Receiving => "receiving",
        TransferState::Complete => "complete",
        TransferState::Delivered => "delivered",
        TransferState::Purged => "purged",
        TransferState::Rejected => "rejected",
        TransferState::Damaged => "damaged",
    }
}

/// A state from its stored name.
pub fn parse_state(s: &str) -> TransferState {
    match s {
        "complete" => TransferState::Complete,
        "delivered" => TransferState::Delivered,
        "purged" => TransferState::Purged,
        "rejected" => TransferState::Rejected,
        "damaged" => TransferState::Damaged,
        _ => TransferState::Receiving,
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS transfers (
    row INTEGER PRIMARY KEY,
    transfer BLOB NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    manifest_sha256 BLOB,
    ciphertext_bytes INTEGER NOT NULL,
    files INTEGER NOT NULL,
    state TEXT NOT NULL,
    offered_at INTEGER NOT NULL,
    touched_at INTEGER NOT NULL,
    retain_until TEXT,
    completed_at INTEGER,
    custody_receipt TEXT,
    delivered_at INTEGER,
    purge_receipt TEXT
);
CREATE TABLE IF NOT EXISTS documents (
    row INTEGER PRIMARY KEY,
    offer BLOB NOT NULL,
    manifest BLOB,
    contents BLOB,
    seal BLOB
);
CREATE TABLE IF NOT EXISTS deliveries (
    row INTEGER NOT NULL,
    agency TEXT NOT NULL,
    receipt TEXT NOT NULL,
    delivered_at INTEGER NOT NULL,
    PRIMARY KEY (row, agency)
);
CREATE TABLE IF NOT EXISTS files (
    row INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    size INTEGER NOT NULL,
    ciphertext_size INTEGER NOT NULL,
    base INTEGER NOT NULL,
    frontier BLOB,
    durable INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (row, idx)
);
CREATE TABLE IF NOT EXISTS served (
    row INTEGER NOT NULL,
    agency TEXT NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (row, agency, idx)
);
CREATE TABLE IF NOT EXISTS log_checkpoint (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    size INTEGER NOT NULL,
    note TEXT NOT NULL
);
";

/// The columns of `transfers` since the documents have a table of their own.
const TRANSFER_COLUMNS: &str = "row, transfer, sender, recipients, manifest_sha256, ciphertext_bytes, \
     files, state, offered_at, touched_at, retain_until, completed_at, custody_receipt, delivered_at, \
     purge_receipt";

/// Whether `transfers` has `column`.
fn has_transfer_column(db: &Connection, column: &str) -> rusqlite::Result<bool> {
    db.prepare("SELECT 1 FROM pragma_table_info('transfers') WHERE name = ?1")?
        .exists([column])
}

/// Moves the documents of an index made before they had their own table (`relay.md` §2) out of
/// `transfers`. SQLite keeps a row's columns in order, and reading a column behind a large one
/// follows that one's overflow pages, so with the offer, manifest and contents inside
/// `transfers` every query of a transfer's state read megabytes for a transfer of many files.
/// One transaction, taken before the layout is looked at (two processes opening at once do not
/// both move): the old table is renamed, the new one made, each row copied once, the old table
/// dropped; a crash leaves the old layout, moved again at the next start. An index made before
/// the contents were split off (`custody.md` §5.4) has no `contents` column. Only a process
/// holding the data directory's lock may call this ([`index_needs_upgrade`]).
fn move_documents(db: &mut Connection) -> rusqlite::Result<()> {
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if !has_transfer_column(&tx, "offer")? {
        return Ok(());
    }
    let contents = if has_transfer_column(&tx, "contents")? {
        "contents"
    } else {
        "NULL"
    };
    tx.execute_batch(&format!(
        "ALTER TABLE transfers RENAME TO transfers_before_documents;
         {SCHEMA}
         INSERT INTO documents (row, offer, manifest, contents, seal)
             SELECT row, offer, manifest, {contents}, seal FROM transfers_before_documents;
         INSERT INTO transfers ({TRANSFER_COLUMNS})
             SELECT {TRANSFER_COLUMNS} FROM transfers_before_documents;
         DROP TABLE transfers_before_documents;"
    ))?;
    tx.commit()
}

/// Whether the index in `data_dir` has an earlier version's layout, which only a process
/// holding the data directory's lock may change (`relay.md` §2): one beside a running relay of
/// that version must not pull its columns away.
pub fn index_needs_upgrade(data_dir: &Path) -> Result<bool, RelayError> {
    let p = data_dir.join("relay.db");
    if !p.exists() {
        return Ok(false);
    }
    let db = Connection::open_with_flags(&p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(has_transfer_column(&db, "offer")?)
}

/// The checkpoint note the index keeps (`relay.md` §5.1), if any.
fn stored_checkpoint(db: &Connection) -> rusqlite::Result<Option<(u64, String)>> {
    db.query_row(
        "SELECT size, note FROM log_checkpoint WHERE one = 1",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
    )
    .optional()
}

/// The checkpoint the index of the relay whose data directory is `data_dir` keeps
/// (`relay.md` §5.1), read without opening the relay: `(size, signed note)`, `None` if there is
/// no index or it keeps none. For `audit verify` next to a running or stopped relay.
pub fn kept_checkpoint(data_dir: &Path) -> Result<Option<(u64, String)>, RelayError> {
    let p = data_dir.join("relay.db");
    if !p.exists() {
        return Ok(None);
    }
    let db = Connection::open_with_flags(&p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let has_table: bool = db.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'log_checkpoint'",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    Ok(stored_checkpoint(&db)?)
}

/// Keeps `note` (a checkpoint of `size` entries) in the index unless it already holds a larger
/// one (`relay.md` §5.1). One autocommit transaction: durable (`synchronous=FULL`) on return.
fn store_checkpoint(db: &Connection, size: u64, note: &str) -> rusqlite::Result<()> {
    db.execute(
        "INSERT INTO log_checkpoint (one, size, note) VALUES (1, ?1, ?2)
         ON CONFLICT (one) DO UPDATE SET size = excluded.size, note = excluded.note
         WHERE excluded.size > log_checkpoint.size",
        params![size as i64, note],
    )
    .map(|_| ())
}

/// A stored transfer, as the index has it.
#[derive(Clone, Debug)]
pub struct TransferRow {
    /// Relay-generated id (names the pack file).
    pub row: i64,
    /// The transfer id.
    pub transfer: TransferId,
    /// The sender.
    pub sender: AgencyId,
    /// Recipients.
    pub recipients: Vec<AgencyId>,
    /// State.
    pub state: TransferState,
    /// Files.
    pub files: u64,
    /// Total ciphertext bytes.
    pub ciphertext_bytes: u64,
    /// When it was offered.
    pub offered_at: i64,
    /// When it completed.
    pub completed_at: Option<i64>,
    /// `retain_until` from the manifest.
    pub retain_until: Option<String>,
    /// Custody receipt bundle.
    pub custody_receipt: Option<String>,
    /// When the last recipient delivered (every recipient's receipt is in [`Relay::deliveries`]).
    pub delivered_at: Option<i64>,
    /// Purge receipt.
    pub purge_receipt: Option<String>,
    /// The seal (empty until the sender sealed the transfer).
    pub seal: Vec<u8>,
    /// The manifest JSON (empty until the sender sealed the transfer).
    pub manifest: Vec<u8>,
    /// The offer JSON.
    pub offer: Vec<u8>,
}

/// The columns [`read_row`] reads before the documents, in its order.
macro_rules! row_columns {
    () => {
        "SELECT row, transfer, sender, recipients, state, files, ciphertext_bytes, offered_at, \
         completed_at, retain_until, custody_receipt, NULL, delivered_at, purge_receipt"
    };
}
/// A transfer with its documents (`relay.md` §2): the row joined with its `documents` row.
const ROW_WITH_DOCUMENTS: &str = concat!(
    row_columns!(),
    ", COALESCE(seal, x''), COALESCE(manifest, x''), COALESCE(offer, x'') \
     FROM transfers LEFT JOIN documents USING (row)"
);
/// [`ROW_WITH_DOCUMENTS`] with the seal, manifest and offer left empty: the `transfers` table
/// alone, whose rows are small.
const ROW_WITHOUT_DOCUMENTS: &str = concat!(row_columns!(), ", x'', x'', x'' FROM transfers");

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TransferRow> {
    let t: Vec<u8> = r.get(1)?;
    let mut id = [0u8; 16];
    if t.len() == 16 {
        id.copy_from_slice(&t);
    }
    let parse_agency = |s: String| {
        s.parse::<AgencyId>()
            .map_err(|e| rusqlite::Error::InvalidColumnName(e.to_string()))
    };
    let recipients: String = r.get(3)?;
    Ok(TransferRow {
        row: r.get(0)?,
        transfer: TransferId::from_bytes(id),
        sender: parse_agency(r.get(2)?)?,
        recipients: recipients
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(|s| parse_agency(s.to_owned()))
            .collect::<Result<_, _>>()?,
        state: parse_state(&r.get::<_, String>(4)?),
        files: r.get::<_, i64>(5)? as u64,
        ciphertext_bytes: r.get::<_, i64>(6)? as u64,
        offered_at: r.get(7)?,
        completed_at: r.get(8)?,
        retain_until: r.get(9)?,
        custody_receipt: r.get(10)?,
        delivered_at: r.get(12)?,
        purge_receipt: r.get(13)?,
        seal: r.get(14)?,
        manifest: r.get(15)?,
        offer: r.get(16)?,
    })
}

/// Makes `dir` mode 0700.
fn private_dir(dir: &Path) -> Result<(), RelayError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("making {} private", dir.display())))
}

/// Creates `path` mode 0600 if it is missing, else makes it 0600 (SQLite creates its `-wal` and
/// `-shm` files with the database file's mode).
fn private_file(path: &Path) -> Result<(), RelayError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let what = || format!("making {} private", path.display());
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(what()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(what()))
}

/// What is submitted to a witness: the latest checkpoint `(size, note)`, if any, and the
/// consistency proof to it (`protocol.md` §6.7).
pub(crate) type WitnessSubmission = (Option<(u64, String)>, Vec<[u8; 32]>);

/// The opened log, the checkpoint size the index holds, and the torn tail cut `(offset, bytes)`.
type OpenedLog = (AuditLog<FileLogStore>, u64, Option<(u64, u64)>);

/// Opens the audit log against the checkpoint the index keeps (`relay.md` §5.1) and has the
/// index keep the log's newest checkpoint. Returns the log, the size the index now holds and
/// the torn tail cut off, if any. A log that is missing, shorter or different is refused with
/// [`RelayError::Integrity`] and left as it is.
///
/// `trust` holds this relay's agency's own card chain if it rotated its keys (`custody.md`
/// §8.5): checkpoints signed with a retired log key keep verifying; new ones use the current.
fn open_log(
    db: &Connection,
    d: &Path,
    identity: &AgencyIdentity,
    trust: &TrustStore,
) -> Result<OpenedLog, RelayError> {
    let path = d.join("audit.log");
    let signer = identity.log_signer();
    let retired: Vec<rogatory_custody::NoteVerifier> = trust
        .chain(identity.id())
        .map(|c| c.log_verifiers())
        .unwrap_or_default()
        .into_iter()
        .filter(|k| *k != signer.verifier())
        .collect();
    let mut log_keys = vec![signer.verifier()];
    log_keys.extend(retired.iter().cloned());
    let held = match stored_checkpoint(db)? {
        None => None,
        Some((size, note)) => {
            let cp = rogatory_custody::Checkpoint::open_any(note.as_bytes(), &log_keys)
                .map_err(|e| {
                    RelayError::Integrity(format!(
                        "{}: the checkpoint the index keeps does not verify with this relay's log key ({e}); the relay refuses to sign a different history",
                        d.join("relay.db").display()
                    ))
                })?
                .into_inner();
            if cp.size != size {
                return Err(RelayError::Integrity(format!(
                    "{}: the index keeps a checkpoint for {} entries under size {size}",
                    d.join("relay.db").display(),
                    cp.size
                )));
            }
            Some(cp)
        }
    };
    let refuse = |log_size: u64, held_size: u64, why: &str| {
        RelayError::Integrity(format!(
            "{}: the audit log {why} ({log_size} entries) but this relay has handed out a signed checkpoint for {held_size} entries; it refuses to sign a different history",
            path.display()
        ))
    };
    if let Some(h) = &held
        && !path.exists()
    {
        return Err(refuse(0, h.size, "is missing"));
    }
    let log = AuditLog::open_rotated(FileLogStore::open(&path)?, signer, &retired, held.as_ref())
        .map_err(|e| match e {
        rogatory_custody::LogError::NotExtending {
            log_size,
            held_size,
            why,
        } => {
            tracing::error!(%why, "the audit log does not extend the kept checkpoint");
            refuse(
                log_size,
                held_size,
                if log_size < held_size {
                    "is shorter"
                } else {
                    "holds a different history"
                },
            )
        }
        other => RelayError::Log(other),
    })?;
    let torn_cut = log.store().cut();
    if let Some((offset, bytes)) = torn_cut {
        tracing::warn!(
            log = %path.display(),
            offset,
            bytes,
            quarantine = %log.store().quarantine_path().display(),
            "cut a torn, never acknowledged tail off the audit log"
        );
    }
    let mut recorded = held.as_ref().map_or(0, |h| h.size);
    if let Some(note) = log.checkpoint_note()
        && log.len() > recorded
    {
        store_checkpoint(db, log.len(), note)?;
        recorded = log.len();
    }
    Ok((log, recorded, torn_cut))
}

impl<S: Storage> Relay<S> {
    /// Opens (or creates) a relay's state in `cfg.data_dir`, with ciphertext in `storage`.
    pub fn open(cfg: RelayConfig, storage: S) -> Result<Self, RelayError> {
        let d = &cfg.data_dir;
        std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        for sub in ["spool", "inbox"] {
            storage
                .create_dir_all(&d.join(sub))
                .map_err(io_err(format!("creating {sub}")))?;
        }
        // The index, the log and the packs are private to the relay's user, whatever the umask
        // (`relay.md` §2): the index names agencies and cases.
        private_dir(d)?;
        for sub in ["spool", "inbox"] {
            // (A storage under test may keep its packs elsewhere.)
            if d.join(sub).is_dir() {
                private_dir(&d.join(sub))?;
            }
        }
        let db_path = d.join("relay.db");
        private_file(&db_path)?;
        let mut db = Connection::open(&db_path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        // A damaged index must stop the relay here (`relay.md` §2), not answer every request
        // with an error later: SQLite checks every page and index (O(size), once per start).
        let check = db
            .query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
            .unwrap_or_else(|e| e.to_string());
        if check != "ok" {
            return Err(RelayError::Other(format!(
                "{} is damaged ({check}); restore it from a backup",
                db_path.display()
            )));
        }
        db.execute_batch(SCHEMA)?;
        move_documents(&mut db)?;
        db.execute_batch(crate::witness::SCHEMA)?;
        let (log, recorded, torn_cut) = open_log(&db, d, &cfg.identity, &cfg.trust)?;
        // After the schema: the reader sees the index as the writer left it, and the WAL files
        // exist (the writer's connection keeps them).
        let reader = Connection::open_with_flags(
            &db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let witness = crate::witness::WitnessState::open(
            rogatory_custody::Cosigner::new(&cfg.identity),
            &db,
            log.tree(),
        )?;
        Ok(Relay {
            agency: cfg.identity.id().clone(),
            signer: cfg.identity.signer().clone(),
            storage,
            data_dir: d.clone(),
            db: Mutex::new(db),
            reader: Mutex::new(reader),
            log: Mutex::new((log, recorded)),
            torn_cut,
            trust: std::sync::RwLock::new(Arc::new(cfg.trust)),
            policy: std::sync::RwLock::new(Arc::new(cfg.policy)),
            revocations: std::sync::RwLock::new(Arc::new(Revocations::new())),
            clock: cfg.clock,
            active: Mutex::default(),
            tls_rejections: Mutex::default(),
            served: Mutex::default(),
            witness,
            direct_open: Arc::default(),
            offering: Mutex::new(()),
            leases: AtomicU64::new(0),
        })
    }

    pub(crate) fn witness_state(&self) -> &crate::witness::WitnessState {
        &self.witness
    }

    pub(crate) fn db_lock(&self) -> MutexGuard<'_, Connection> {
        lock(&self.db)
    }

    /// The log's latest checkpoint `(size, note)` once the index keeps it (`relay.md` §5.1).
    pub(crate) fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, ProtocolError> {
        let mut log = lock(&self.log);
        self.record_checkpoint(&mut log)?;
        Ok(log.0.checkpoint_note().map(|n| (log.0.len(), n.to_owned())))
    }

    /// `protocol.md` §6.7: the latest checkpoint `(size, note as signed)` and, read under the
    /// same lock, the consistency proof from `old` entries to it (empty when `old` is 0, equal
    /// to or larger than the log).
    pub(crate) fn checkpoint_for_witness(
        &self,
        old: u64,
    ) -> Result<WitnessSubmission, ProtocolError> {
        let mut log = lock(&self.log);
        self.record_checkpoint(&mut log)?;
        let size = log.0.len();
        let proof = if old == 0 || old >= size {
            Vec::new()
        } else {
            log.0
                .tree()
                .consistency_proof(old, size)
                .unwrap_or_default()
        };
        Ok((log.0.checkpoint_note().map(|n| (size, n.to_owned())), proof))
    }

    /// This relay's agency.
    pub fn agency(&self) -> &AgencyId {
        &self.agency
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The policy (as of now: a reload replaces it).
    pub fn policy(&self) -> Arc<Policy> {
        read_arc(&self.policy)
    }

    /// The trust store (as of now: a reload replaces it).
    pub fn trust(&self) -> Arc<TrustStore> {
        read_arc(&self.trust)
    }

    /// The key revocations (as of now: a reload replaces them).
    pub fn revocations(&self) -> Arc<Revocations> {
        read_arc(&self.revocations)
    }

    /// Replaces the trust store, key revocations (none after [`Relay::open`]; a seal or
    /// delivery receipt signed by a revoked key at or after its revocation is refused,
    /// `custody.md` §8.3) and policy at once (`relay.md` §11): requests
    /// after this call see the new ones; a request already running finishes with the old.
    pub fn reload(&self, trust: TrustStore, revocations: Revocations, policy: Policy) {
        write_arc(&self.trust, trust);
        write_arc(&self.revocations, revocations);
        write_arc(&self.policy, policy);
    }

    /// `custody.md` §8.3: a statement signed by a signing key revoked at or before the
    /// statement's time is refused (`BAD_SEAL`).
    fn check_not_revoked(
        &self,
        key: &rogatory_custody::NoteVerifier,
        st: &Statement,
        what: &str,
    ) -> Result<(), ProtocolError> {
        match self.revocations().signing_revoked_at(key, st.head().time) {
            Some(r) => Err(perr(
                ErrorCode::BAD_SEAL,
                format!(
                    "{what}: signed at {} by a key of {} revoked at {} ({})",
                    st.head().time,
                    r.agency,
                    r.time,
                    r.reason
                ),
            )),
            None => Ok(()),
        }
    }

    /// Entries in the audit log.
    pub fn log_len(&self) -> u64 {
        lock(&self.log).0.len()
    }

    /// The latest signed checkpoint of the audit log, once the index keeps it (`relay.md` §5.1:
    /// no checkpoint leaves the relay before); `None` if the log is empty or the index cannot
    /// keep it now.
    pub fn checkpoint(&self) -> Option<String> {
        match self.checkpoint_with_proof(0) {
            Ok((note, _)) => note,
            Err(e) => {
                tracing::error!(error = %e.message, "could not keep the checkpoint in the index");
                None
            }
        }
    }

    /// The checkpoint the index keeps (`relay.md` §5.1): `(size, signed note)`, the newest one
    /// that may have left the relay.
    pub fn stored_checkpoint(&self) -> Result<Option<(u64, String)>, RelayError> {
        Ok(stored_checkpoint(&lock(&self.db))?)
    }

    /// What opening the audit log cut off as a never-acknowledged torn tail: `(offset, bytes)`,
    /// the bytes being kept in `audit.quarantine` (`relay.md` §5.1).
    pub fn torn_tail_cut(&self) -> Option<(u64, u64)> {
        self.torn_cut
    }

    /// Makes the index keep the log's newest checkpoint before it may leave the relay (a
    /// receipt bundle, a checkpoint): `relay.md` §5.1. Called with the log locked.
    fn record_checkpoint(
        &self,
        log: &mut MutexGuard<'_, (AuditLog<FileLogStore>, u64)>,
    ) -> Result<(), ProtocolError> {
        let size = log.0.len();
        if size <= log.1 {
            return Ok(());
        }
        let Some(note) = log.0.checkpoint_note() else {
            return Ok(());
        };
        store_checkpoint(&lock(&self.db), size, note).map_err(db_err)?;
        log.1 = size;
        // `relay.md` §12: a new checkpoint for the witnesses.
        self.witness.wake();
        Ok(())
    }

    /// `protocol.md` §6.6: the latest signed checkpoint note and, read under the same lock, the
    /// consistency proof from `held` entries to it (empty when `held` is 0, equal to or larger
    /// than the log: the client then compares, or reports the rollback). The index keeps the
    /// checkpoint before it leaves (`relay.md` §5.1).
    pub fn checkpoint_with_proof(
        &self,
        held: u64,
    ) -> Result<(Option<String>, Vec<[u8; 32]>), ProtocolError> {
        let mut log = lock(&self.log);
        self.record_checkpoint(&mut log)?;
        let size = log.0.len();
        let proof = if held == 0 || held >= size {
            Vec::new()
        } else {
            log.0
                .tree()
                .consistency_proof(held, size)
                .unwrap_or_default()
        };
        // `relay.md` §12: with the cosignatures this relay holds for it.
        let note = log
            .0
            .checkpoint_note()
            .map(|n| self.witness.attach(n, size));
        Ok((note, proof))
    }

    fn spool(&self, row: i64) -> PathBuf {
        self.data_dir.join("spool").join(format!("{row}.pack"))
    }

    fn inbox(&self, row: i64) -> PathBuf {
        self.data_dir.join("inbox").join(format!("{row}.pack"))
    }

    /// The pack file of a stored transfer (spool or inbox).
    pub fn pack_path(&self, row: &TransferRow) -> PathBuf {
        match row.state {
            // A crash between the move to the inbox and the index update leaves a receiving
            // transfer whose pack is already in the inbox.
            TransferState::Receiving => {
                let spool = self.spool(row.row);
                let inbox = self.inbox(row.row);
                let moved = matches!(self.storage.len(&spool), Ok(None))
                    && matches!(self.storage.len(&inbox), Ok(Some(_)));
                if moved { inbox } else { spool }
            }
            _ => self.inbox(row.row),
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Signs `st`, appends its text to the audit log (durable; custody.md §7: an entry is the
    /// statement text), and returns `(note, index)`. An identical statement already in the log
    /// is not appended again.
    fn log_statement(&self, st: &Statement) -> Result<(String, u64), ProtocolError> {
        let note = st
            .sign(&self.signer)
            .map_err(|e| perr(ErrorCode::INTERNAL, e.to_string()))?;
        let i = self.append_entry(st.encode().as_bytes())?;
        Ok((note, i))
    }

    /// Appends an entry (durable in the log), then has the index keep the new checkpoint
    /// (`relay.md` §5.1): the log is never behind the index, at most ahead of it.
    fn append_entry(&self, entry: &[u8]) -> Result<u64, ProtocolError> {
        let mut log = lock(&self.log);
        let i = match log.0.store().find(&Sha256Digest::of(entry)) {
            Some(i) => i,
            None => log.0.append(entry).map_err(|e| {
                tracing::error!(error = %e, "audit log append failed");
                perr(
                    ErrorCode::STORAGE_UNAVAILABLE,
                    "the relay's audit log is unavailable",
                )
            })?,
        };
        self.record_checkpoint(&mut log)?;
        Ok(i)
    }

    /// The receipt bundle of `note`, entry `index` (`custody.md` §7). With witnesses
    /// configured (`relay.md` §12) it waits a bounded time for them to cosign a checkpoint that
    /// covers the entry, and is built against the cosigned checkpoint with the most
    /// cosignatures, which it carries; otherwise against the latest checkpoint.
    fn bundle(&self, note: &str, index: u64) -> Result<String, ProtocolError> {
        {
            let mut log = lock(&self.log);
            self.record_checkpoint(&mut log)?;
        }
        self.witness.wait_for(index);
        let mut log = lock(&self.log);
        self.record_checkpoint(&mut log)?;
        if let Some((size, checkpoint_note)) = self.witness.best_for(index, log.0.tree())
            && size <= log.1
            && let Some(proof) = log.0.tree().inclusion_proof(index, size)
        {
            return Ok(rogatory_custody::ReceiptBundle {
                statement_note: note.to_owned(),
                index,
                proof,
                checkpoint_note,
            }
            .encode());
        }
        log.0
            .bundle(note, index)
            .map_err(|e| perr(ErrorCode::INTERNAL, e.to_string()))
    }

    /// A stored receipt bundle as it is served again (STATUS, FETCH of the custody receipt, a
    /// repeated SEAL or DELIVER): rebuilt against a cosigned checkpoint covering its entry that
    /// carries more cosignatures than the stored one, if there is one (`relay.md` §12: a receipt
    /// issued while a witness was down gets its cosignatures later); otherwise as stored. The
    /// statement and its index never change, only the inclusion proof and checkpoint.
    pub fn served_bundle(&self, stored: String) -> String {
        fn signature_lines(note: &str) -> usize {
            note.rsplit_once("\n\n")
                .map_or(0, |(_, sigs)| sigs.lines().count())
        }
        let Ok(b) = rogatory_custody::ReceiptBundle::parse(&stored) else {
            return stored;
        };
        let log = lock(&self.log);
        match self.witness.best_for(b.index, log.0.tree()) {
            Some((size, checkpoint_note))
                if size <= log.1
                    && signature_lines(&checkpoint_note) > signature_lines(&b.checkpoint_note) =>
            {
                match log.0.tree().inclusion_proof(b.index, size) {
                    Some(proof) => rogatory_custody::ReceiptBundle {
                        statement_note: b.statement_note,
                        index: b.index,
                        proof,
                        checkpoint_note,
                    }
                    .encode(),
                    None => stored,
                }
            }
            _ => stored,
        }
    }

    /// Records a refusal in the audit log and returns it (test-plan.md 51: one entry per refusal).
    pub fn refuse(
        &self,
        peer: &PeerIdentity,
        transfer: TransferId,
        e: ProtocolError,
    ) -> ProtocolError {
        let st = Statement::Rejection {
            head: Head {
                transfer,
                issuer: self.agency.clone(),
                time: self.now(),
            },
            peer: Peer::Agency(peer.agency.clone()),
            peer_cert_sha256: peer.cert_sha256,
            code: text(e.code.name().unwrap_or("UNKNOWN")),
            reason: text(&e.message),
        };
        tracing::info!(%transfer, peer = %peer.agency, code = %e.code, "refused");
        if let Err(le) = self.log_statement(&st) {
            tracing::error!(error = %le, "could not log a refusal");
        }
        e
    }

    /// Logs a client certificate refused during the TLS handshake (test-plan.md 13, 51): the agency
    /// it names (or `unknown`), its SHA-256 and the reason. At most [`TLS_REJECTIONS_PER_MINUTE`]
    /// entries a minute, so that strangers cannot flood the audit log; the rest are counted in the
    /// service log.
    pub fn log_tls_rejection(&self, r: &rogatory_transport::Rejected) {
        if self.tls_rejection_admitted() {
            self.append_tls_rejection(r);
        }
    }

    /// Counts a TLS refusal against [`TLS_REJECTIONS_PER_MINUTE`]: whether it is to be logged
    /// ([`Relay::append_tls_rejection`]). Never waits for the disk.
    pub fn tls_rejection_admitted(&self) -> bool {
        let mut w = lock(&self.tls_rejections);
        let minute = self.now().unix() / 60;
        if w.0 != minute {
            *w = (minute, 0);
        }
        w.1 += 1;
        if w.1 > TLS_REJECTIONS_PER_MINUTE {
            tracing::warn!(
                count = w.1,
                "TLS refusals above the audit rate limit this minute"
            );
            return false;
        }
        true
    }

    /// Logs a TLS refusal [`Relay::tls_rejection_admitted`] admitted (an fsynced append).
    pub fn append_tls_rejection(&self, r: &rogatory_transport::Rejected) {
        let now = self.now();
        let st = Statement::Rejection {
            head: Head {
                transfer: TransferId::NONE,
                issuer: self.agency.clone(),
                time: now,
            },
            peer: r.agency.clone().map_or(Peer::Unknown, Peer::Agency),
            peer_cert_sha256: r.cert_sha256,
            code: text("TLS"),
            reason: text(&r.reason),
        };
        if let Err(e) = self.log_statement(&st) {
            tracing::error!(error = %e, "could not log a TLS refusal");
        }
    }

    /// A transfer by id, with its seal, manifest and offer.
    pub fn transfer(&self, t: &TransferId) -> Result<Option<TransferRow>, ProtocolError> {
        let db = lock(&self.db);
        db.prepare_cached(&format!("{ROW_WITH_DOCUMENTS} WHERE transfer = ?1"))
            .and_then(|mut q| q.query_row(params![&t.as_bytes()[..]], read_row).optional())
            .map_err(db_err)
    }

    /// Like [`Relay::transfer`], but without the seal, manifest and offer (empty here), which
    /// can be megabytes for a transfer of many files: what serving one file's FETCH
    /// (`protocol.md` §6.3) or a STATUS needs, read once per request. (INBOX lists
    /// [`Relay::transfers`], also without them.) Read through the index's read-only connection:
    /// never waits for a commit, so an async worker may call it.
    pub fn transfer_without_documents(
        &self,
        t: &TransferId,
    ) -> Result<Option<TransferRow>, ProtocolError> {
        let db = lock(&self.reader);
        db.prepare_cached(&format!("{ROW_WITHOUT_DOCUMENTS} WHERE transfer = ?1"))
            .and_then(|mut q| q.query_row(params![&t.as_bytes()[..]], read_row).optional())
            .map_err(db_err)
    }

    /// `r` with its seal, manifest and offer read from the index (a row of
    /// [`Relay::transfers`] has them empty).
    pub fn with_documents(&self, mut r: TransferRow) -> Result<TransferRow, ProtocolError> {
        let docs = lock(&self.db)
            .prepare_cached(
                "SELECT COALESCE(seal, x''), COALESCE(manifest, x''), offer FROM documents WHERE row = ?1",
            )
            .and_then(|mut q| {
                q.query_row(params![r.row], |x| Ok((x.get(0)?, x.get(1)?, x.get(2)?)))
                    .optional()
            })
            .map_err(db_err)?;
        if let Some((seal, manifest, offer)) = docs {
            (r.seal, r.manifest, r.offer) = (seal, manifest, offer);
        }
        Ok(r)
    }

    /// The encrypted contents of a sealed transfer (`custody.md` §5.4).
    pub fn contents(&self, row: i64) -> Result<Option<Vec<u8>>, ProtocolError> {
        lock(&self.db)
            .query_row(
                "SELECT contents FROM documents WHERE row = ?1",
                params![row],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(db_err)
    }

    /// The delivery receipts of a transfer (`relay.md` §6): one per recipient that has fetched
    /// it, as `(recipient, receipt bundle)`, in the order they arrived.
    pub fn deliveries(&self, row: i64) -> Result<Vec<(AgencyId, String)>, ProtocolError> {
        let db = lock(&self.db);
        let mut q = db
            .prepare_cached(
                "SELECT agency, receipt FROM deliveries WHERE row = ?1 ORDER BY delivered_at, agency",
            )
            .map_err(db_err)?;
        let rows = q
            .query_map(params![row], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        rows.into_iter()
            .map(|(a, r)| {
                a.parse::<AgencyId>()
                    .map(|a| (a, r))
                    .map_err(|e| perr(ErrorCode::INTERNAL, format!("index: {e}")))
            })
            .collect()
    }

    /// Every transfer, oldest first, without its documents (see [`Relay::with_documents`]).
    pub fn transfers(&self) -> Result<Vec<TransferRow>, ProtocolError> {
        let db = lock(&self.db);
        let mut q = db
            .prepare(&format!("{ROW_WITHOUT_DOCUMENTS} ORDER BY row"))
            .map_err(db_err)?;
        let rows = q
            .query_map([], read_row)
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(rows)
    }

    /// Durable piece counts of a transfer's files.
    pub fn durable(&self, row: i64) -> Result<Vec<u64>, ProtocolError> {
        let db = lock(&self.db);
        let mut q = db
            .prepare("SELECT durable FROM files WHERE row = ?1 ORDER BY idx")
            .map_err(db_err)?;
        let v = q
            .query_map(params![row], |r| r.get::<_, i64>(0))
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(v.into_iter().map(|d| d as u64).collect())
    }

    /// Handles an OFFER (`relay.md` §2): bind the transfer to its sender, apply the policy to
    /// the offer, create or resume the transfer. Refusals are logged. The seal comes at the end
    /// of the upload ([`Relay::complete`]).
    pub fn offer(&self, peer: &PeerIdentity, offer: &Offer) -> Result<Accepted, ProtocolError> {
        let decided = {
            let _one = lock(&self.offering);
            self.offer_inner(peer, offer)
        };
        decided.map_err(|e| self.refuse(peer, offer.transfer, e))
    }

    fn offer_inner(&self, peer: &PeerIdentity, offer: &Offer) -> Result<Accepted, ProtocolError> {
        // One configuration for the whole request, even if a reload swaps it meanwhile
        // (`relay.md` §11).
        let (trust, policy) = (self.trust(), self.policy());
        let o = TransferOffer::parse(offer.offer.as_bytes())
            .map_err(|e| perr(ErrorCode::PROTOCOL_VIOLATION, format!("offer: {e}")))?;
        // The transfer must be the authenticated agency's own.
        if o.sender != peer.agency {
            return Err(perr(
                ErrorCode::NOT_AUTHORISED,
                format!("{} may not upload a transfer of {}", peer.agency, o.sender),
            ));
        }
        if trust.get(&peer.agency).is_none() {
            return Err(perr(
                ErrorCode::UNKNOWN_AGENCY,
                format!("{} has no card in the relay's trust store", peer.agency),
            ));
        }
        if o.transfer_id != offer.transfer {
            return Err(perr(
                ErrorCode::PROTOCOL_VIOLATION,
                "OFFER names another transfer than its offer",
            ));
        }
        let layouts = o.layouts();

        if let Some(existing) = self.transfer(&offer.transfer)? {
            // Resume authority (test-plan.md 26, 31): the transfer id belongs to its sender and its
            // offer; the relay's own durable prefixes answer.
            if existing.sender != peer.agency {
                return Err(perr(
                    ErrorCode::NOT_AUTHORISED,
                    "this transfer id belongs to another agency",
                ));
            }
            if existing.state == TransferState::Purged {
                return Err(perr(ErrorCode::NOT_FOUND, "this transfer was purged"));
            }
            if existing.offer != offer.offer.as_bytes() {
                return Err(perr(
                    ErrorCode::CONFLICT,
                    "this transfer id is in use with another offer",
                ));
            }
            match existing.state {
                TransferState::Receiving
                | TransferState::Complete
                | TransferState::Delivered
                | TransferState::Damaged => {}
                TransferState::Purged => {
                    return Err(perr(ErrorCode::NOT_FOUND, "this transfer was purged"));
                }
                TransferState::Rejected => {
                    return Err(perr(ErrorCode::INTEGRITY, "this transfer was rejected"));
                }
            }
            // A damaged transfer is repaired like a resume (`relay.md` §10): the sender re-sends
            // what the reduced durable prefixes lack, then the same seal.
            let receiving = matches!(
                existing.state,
                TransferState::Receiving | TransferState::Damaged
            );
            let (durable, lease) = if receiving {
                self.fence_upload(&offer.transfer, false);
                let activated = self.durable(existing.row).and_then(|d| {
                    let l = self.activate(&existing, &layouts, o.piece_hash(), &d)?;
                    Ok((d, l))
                });
                if activated.is_err() {
                    // The upload taken over has no successor.
                    lock(&self.active).remove(&offer.transfer);
                }
                activated?
            } else {
                (self.durable(existing.row)?, self.new_lease(offer.transfer))
            };
            let db = lock(&self.db);
            db.execute(
                "UPDATE transfers SET touched_at = ?1 WHERE row = ?2",
                params![self.now().unix(), existing.row],
            )
            .map_err(db_err)?;
            return Ok(Accepted {
                layouts,
                durable,
                lease,
            });
        }

        // A new transfer: policy (relay.md §4).
        let policy_err = |r: Refusal| match r {
            Refusal::NotAllowed(m) => perr(ErrorCode::POLICY, m),
            Refusal::MissingField(f) => perr(ErrorCode::POLICY, format!("the policy requires {f}")),
            Refusal::Unrequested(f) => perr(
                ErrorCode::POLICY,
                format!(
                    "the offer shows {} in the clear; this relay's policy does not ask for it (send it encrypted to the recipients)",
                    f.join(", ")
                ),
            ),
            Refusal::TooLarge(n) => perr(
                ErrorCode::TOO_LARGE,
                format!("{n} bytes exceed the relay's maximum"),
            ),
            Refusal::Quota => perr(ErrorCode::QUOTA, "the agency's quota would be exceeded"),
            Refusal::Stale => perr(
                ErrorCode::POLICY,
                "the manifest is older than the relay accepts",
            ),
            Refusal::Ahead { created_at, now } => perr(
                ErrorCode::POLICY,
                format!(
                    "the manifest is dated {created_at}, ahead of the relay's clock ({now}) by more than {} h: check the sender's clock",
                    MAX_CLOCK_AHEAD_SECS / 3600
                ),
            ),
        };
        for r in &o.recipients {
            if trust.get(r).is_none() && r != &self.agency {
                return Err(perr(
                    ErrorCode::POLICY,
                    format!("recipient {r} is not a trusted agency"),
                ));
            }
        }
        policy
            .check_route(&o.sender, &o.recipients, &self.agency)
            .map_err(policy_err)?;
        policy.check_legal(&o.legal).map_err(policy_err)?;
        // Retention that has already ended would have the transfer purged before any recipient
        // could fetch it (issue 11).
        if let Some(d) = &o.legal.retain_until
            && d.0 < self.now().date()
        {
            return Err(perr(
                ErrorCode::POLICY,
                format!("retain_until {d} has already passed"),
            ));
        }
        // The manifest age window (`relay.md` §4, test-plan.md 48, 52b): not older than the
        // policy allows, and not dated further ahead of this relay's clock than clocks drift.
        let clock = self.now();
        let now = clock.unix();
        let age = now - o.created_at.unix();
        if age > i64::from(policy.max_manifest_age_days) * 86_400 {
            return Err(policy_err(Refusal::Stale));
        }
        if -age > MAX_CLOCK_AHEAD_SECS {
            return Err(policy_err(Refusal::Ahead {
                created_at: o.created_at,
                now: clock,
            }));
        }
        let total = o.ciphertext_bytes();
        if total > policy.max_transfer_bytes {
            return Err(policy_err(Refusal::TooLarge(total)));
        }
        if let Some(q) = policy.rule(&o.sender).and_then(|r| r.quota_bytes) {
            let used: i64 = lock(&self.db)
                .query_row(
                    "SELECT COALESCE(SUM(ciphertext_bytes), 0) FROM transfers WHERE sender = ?1 AND state NOT IN ('purged', 'rejected')",
                    params![o.sender.as_str()],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if used as u64 + total > q {
                return Err(policy_err(Refusal::Quota));
            }
        }
        let free = self
            .storage
            .available_space(&self.data_dir.join("spool"))
            .map_err(storage_err)?;
        if free < total.saturating_add(policy.reserve_bytes) {
            return Err(perr(
                ErrorCode::INSUFFICIENT_SPACE,
                "the relay is below its free-space reserve",
            ));
        }

        let recipients = o
            .recipients
            .iter()
            .map(AgencyId::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        let row = {
            let mut db = lock(&self.db);
            let tx = db.transaction().map_err(db_err)?;
            tx.execute(
                "INSERT INTO transfers (transfer, sender, recipients, ciphertext_bytes, files, state, offered_at, touched_at, retain_until)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'receiving', ?6, ?6, ?7)",
                params![
                    &offer.transfer.as_bytes()[..],
                    o.sender.as_str(),
                    recipients,
                    total as i64,
                    o.files.len() as i64,
                    now,
                    o.legal.retain_until.map(|d| d.to_string()),
                ],
            )
            .map_err(db_err)?;
            let row = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO documents (row, offer) VALUES (?1, ?2)",
                params![row, offer.offer.as_bytes()],
            )
            .map_err(db_err)?;
            let mut base = 0u64;
            {
                let mut ins = tx
                    .prepare(
                        "INSERT INTO files (row, idx, size, ciphertext_size, base) VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(db_err)?;
                for (i, f) in o.files.iter().enumerate() {
                    ins.execute(params![
                        row,
                        i as i64,
                        f.size as i64,
                        f.ciphertext_size as i64,
                        base as i64
                    ])
                    .map_err(db_err)?;
                    base += f.ciphertext_size;
                }
            }
            tx.commit().map_err(db_err)?;
            row
        };
        tracing::info!(transfer = %offer.transfer, sender = %o.sender, files = o.files.len(), bytes = total, "transfer accepted");
        let existing = self
            .transfer(&offer.transfer)?
            .ok_or_else(|| perr(ErrorCode::INTERNAL, "transfer vanished"))?;
        debug_assert_eq!(existing.row, row);
        let durable = vec![0; layouts.len()];
        let lease = self.activate(&existing, &layouts, o.piece_hash(), &durable)?;
        Ok(Accepted {
            layouts,
            durable,
            lease,
        })
    }

    fn new_lease(&self, transfer: TransferId) -> Lease {
        let id = self.leases.fetch_add(1, Ordering::Relaxed) + 1;
        Lease { transfer, id }
    }

    /// Fences the transfer's upload, if one is held, and waits for a write of it in progress;
    /// its next piece, commit or SEAL is refused. Called with `offering` held, so that no offer
    /// activates the transfer meanwhile.
    ///
    /// An offer of a transfer whose upload the relay still holds takes it over (`relay.md` §2
    /// "One upload at a time": its sender was stopped or cut off and started again before the
    /// old connection timed out): fenced, then the durable prefixes are read for the new one. A
    /// commit of the old upload has either finished by then (its prefixes are the ones read) or
    /// finds it fenced and records nothing, so the index never describes bytes the new upload
    /// rewrites. The fenced upload stays in the map until [`Relay::activate`] replaces it, so
    /// that scrub and GC see the transfer as being uploaded throughout. With `forget` (a purge
    /// stopping a repair), it is removed at once.
    fn fence_upload(&self, t: &TransferId, forget: bool) {
        let old = {
            let mut active = lock(&self.active);
            if forget {
                active.remove(t)
            } else {
                active.get(t).cloned()
            }
        };
        if let Some(old) = old {
            old.fence();
            if forget {
                tracing::info!(transfer = %t, "upload stopped");
            } else {
                tracing::info!(transfer = %t, "upload taken over by a newer offer of its sender");
            }
        }
    }

    /// Holds the transfer's upload in memory under a new lease (any older one was taken over).
    fn activate(
        &self,
        row: &TransferRow,
        layouts: &[PieceLayout],
        piece_hash: PieceHash,
        durable: &[u64],
    ) -> Result<Lease, ProtocolError> {
        let frontiers = self.stored_frontiers(row.row, durable)?;
        // A damaged transfer's pack stays in the inbox and is repaired in place; it may have
        // been removed or replaced behind the relay's back, so no cached handle is trusted.
        let spool = if row.state == TransferState::Damaged {
            let inbox = self.inbox(row.row);
            self.storage.reopen(&inbox);
            inbox
        } else {
            self.spool(row.row)
        };
        let mut base = 0;
        let files = layouts
            .iter()
            .map(|l| {
                let fi = FileInfo { layout: *l, base };
                base += l.ciphertext_size;
                fi
            })
            .collect::<Vec<_>>();
        let lease = self.new_lease(row.transfer);
        lock(&self.active).insert(
            row.transfer,
            Arc::new(Upload {
                lease: lease.id,
                fenced: AtomicBool::new(false),
                state: Mutex::new(Active {
                    row: row.row,
                    spool,
                    files,
                    piece_hash,
                    frontiers,
                    received: durable.to_vec(),
                    durable: durable.to_vec(),
                    changed: Vec::new(),
                    dirty: false,
                    named: durable.iter().any(|&d| d > 0),
                    syncing: false,
                }),
            }),
        );
        Ok(lease)
    }

    /// The frontiers saved with the durable prefixes; each must cover exactly its prefix.
    fn stored_frontiers(&self, row: i64, durable: &[u64]) -> Result<Vec<Frontier>, ProtocolError> {
        let db = lock(&self.db);
        let mut q = db
            .prepare("SELECT frontier FROM files WHERE row = ?1 ORDER BY idx")
            .map_err(db_err)?;
        let v = q
            .query_map(params![row], |r| r.get::<_, Option<Vec<u8>>>(0))
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        v.into_iter()
            .zip(durable)
            .enumerate()
            .map(|(i, (b, &d))| {
                let f = match b {
                    None => Frontier::new(),
                    Some(b) => Frontier::from_bytes(&b).unwrap_or_default(),
                };
                if f.len() == d {
                    Ok(f)
                } else {
                    Err(perr(
                        ErrorCode::STORAGE_UNAVAILABLE,
                        format!(
                            "file {i}: the index's piece frontier does not match its durable prefix"
                        ),
                    ))
                }
            })
            .collect()
    }

    /// The upload `lease` holds, unless a newer offer took it over.
    fn get_active(&self, lease: &Lease) -> Result<Arc<Upload>, ProtocolError> {
        let u = lock(&self.active)
            .get(&lease.transfer)
            .cloned()
            .ok_or_else(|| {
                perr(
                    ErrorCode::NOT_FOUND,
                    "no upload of this transfer is in progress",
                )
            })?;
        if u.lease != lease.id || u.is_fenced() {
            return Err(taken_over());
        }
        Ok(u)
    }

    /// Forgets the upload `lease` holds, if it still does, fenced first: a group commit of it
    /// still running (its connection ended meanwhile) records nothing, since a newer offer will
    /// not find it to take over.
    fn release(&self, lease: &Lease) {
        let mut active = lock(&self.active);
        if let Some(u) = active.get(&lease.transfer)
            && u.lease == lease.id
        {
            u.mark_fenced();
            active.remove(&lease.transfer);
        }
    }

    /// Rejects a transfer for an integrity failure: logged, never receipted.
    fn integrity(&self, t: TransferId, sender: &AgencyId, what: String) -> ProtocolError {
        let e = perr(ErrorCode::INTEGRITY, what);
        let st = Statement::Rejection {
            head: Head {
                transfer: t,
                issuer: self.agency.clone(),
                time: self.now(),
            },
            peer: Peer::Agency(sender.clone()),
            peer_cert_sha256: Sha256Digest([0; 32]),
            code: text("INTEGRITY"),
            reason: text(&e.message),
        };
        if let Err(le) = self.log_statement(&st) {
            tracing::error!(error = %le, "could not log an integrity failure");
        }
        tracing::warn!(transfer = %t, "integrity failure: {}", e.message);
        e
    }

    /// The next piece of `file` (the intake hands them out in order): its leaf joins the file's
    /// piece-root frontier, then it is written. Nothing is durable before [`Relay::sync`].
    pub fn store(
        &self,
        lease: Lease,
        file: u32,
        piece: u64,
        bytes: &[u8],
    ) -> Result<(), ProtocolError> {
        let u = self.get_active(&lease)?;
        let mut a = lock(&u.state);
        // Checked under the lock a takeover waits for: no write of a fenced upload follows.
        if u.is_fenced() {
            return Err(taken_over());
        }
        let f = file as usize;
        let info = a
            .files
            .get(f)
            .ok_or_else(|| perr(ErrorCode::PROTOCOL_VIOLATION, "no such file"))?;
        if a.received[f] != piece {
            return Err(perr(ErrorCode::INTERNAL, "pieces must be stored in order"));
        }
        let range = info
            .layout
            .range(piece)
            .ok_or_else(|| perr(ErrorCode::PROTOCOL_VIOLATION, "piece out of range"))?;
        let off = info.base + range.start;
        self.storage
            .write_at(&a.spool, off, bytes)
            .map_err(storage_err)?;
        crate::failpoint::hit("store.after_write");
        let leaf = a.piece_hash.leaf(bytes);
        a.frontiers[f].push(leaf);
        if a.received[f] == a.durable[f] {
            a.changed.push(file);
        }
        a.received[f] = piece + 1;
        a.dirty = true;
        Ok(())
    }

    /// Makes what was stored durable (`relay.md` §3) and returns the durable piece counts.
    /// Group commit: the fsync runs without the transfer's lock, so pieces keep being stored
    /// meanwhile; they are covered by the next sync.
    pub fn sync(&self, lease: Lease) -> Result<Vec<u64>, ProtocolError> {
        let u = self.get_active(&lease)?;
        let a = &u.state;
        let (spool, row, named, batch) = {
            let mut g = lock(a);
            if !g.dirty || g.syncing {
                return Ok(g.durable.clone());
            }
            g.dirty = false;
            g.syncing = true;
            let changed = std::mem::take(&mut g.changed);
            let batch: Vec<(u32, u64, Vec<u8>)> = changed
                .into_iter()
                .map(|i| {
                    let f = i as usize;
                    (i, g.received[f], g.frontiers[f].to_bytes())
                })
                .collect();
            (g.spool.clone(), g.row, g.named, batch)
        };
        let result = self.commit_batch(&spool, row, named, &batch, &u);
        let mut g = lock(a);
        g.syncing = false;
        match result {
            Ok(()) => {
                g.named = true;
                for &(i, r, _) in &batch {
                    let f = i as usize;
                    g.durable[f] = r;
                    // Pieces stored while this sync ran still need the next one.
                    if g.received[f] > r {
                        g.changed.push(i);
                    }
                }
                Ok(g.durable.clone())
            }
            Err(e) => {
                // Nothing of this batch is known durable: the next sync retries all of it.
                for &(i, _, _) in &batch {
                    if !g.changed.contains(&i) {
                        g.changed.push(i);
                    }
                }
                g.dirty = true;
                Err(e)
            }
        }
    }

    fn commit_batch(
        &self,
        spool: &Path,
        row: i64,
        named: bool,
        batch: &[(u32, u64, Vec<u8>)],
        upload: &Upload,
    ) -> Result<(), ProtocolError> {
        self.storage.sync(spool).map_err(storage_err)?;
        crate::failpoint::hit("sync.after_fsync");
        if !named {
            // The spool, or the inbox for a damaged transfer being repaired.
            let dir = spool
                .parent()
                .map_or_else(|| self.data_dir.join("spool"), Path::to_path_buf);
            self.storage.sync_dir(&dir).map_err(storage_err)?;
        }
        {
            // Under the index's lock: a takeover reads the durable prefixes after this commit,
            // or this commit finds the upload fenced and records nothing.
            let mut db = self.db_unless_fenced(upload)?;
            let tx = db.transaction().map_err(db_err)?;
            {
                let mut up = tx
                    .prepare(
                        "UPDATE files SET durable = ?1, frontier = ?2 WHERE row = ?3 AND idx = ?4",
                    )
                    .map_err(db_err)?;
                for (i, r, frontier) in batch {
                    up.execute(params![*r as i64, frontier, row, i64::from(*i)])
                        .map_err(db_err)?;
                }
            }
            tx.execute(
                "UPDATE transfers SET touched_at = ?1 WHERE row = ?2",
                params![self.now().unix(), row],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        crate::failpoint::hit("sync.after_commit");
        Ok(())
    }

    /// SEAL (`relay.md` §5): every piece is durable and the sender sealed the manifest. The
    /// seal must verify with the sender's card, the manifest must fulfil the offer, and every
    /// file's piece root must equal the one computed as its pieces arrived. Then publish to the
    /// inbox, sign and log the custody receipt (once), and return its bundle. A re-sent SEAL of
    /// a completed transfer gets the same receipt.
    pub fn complete(
        &self,
        peer: &PeerIdentity,
        lease: Lease,
        seal: &Seal,
    ) -> Result<String, ProtocolError> {
        let t = lease.transfer;
        self.complete_inner(&lease, seal).map_err(|e| {
            // Integrity failures are logged where they are found; other refusals here.
            let logged = e.code == ErrorCode::INTEGRITY
                || e.code == ErrorCode::INTERNAL
                || e.code.class() == rogatory_transport::ErrorClass::Retryable;
            if logged { e } else { self.refuse(peer, t, e) }
        })
    }

    fn complete_inner(&self, lease: &Lease, seal: &Seal) -> Result<String, ProtocolError> {
        let t = lease.transfer;
        let row = self
            .transfer(&t)?
            .ok_or_else(|| perr(ErrorCode::NOT_FOUND, "no such transfer"))?;
        if row.state == TransferState::Damaged {
            return self.repaired(lease, &row, seal);
        }
        if let Some(b) = &row.custody_receipt {
            if row.manifest == seal.manifest.as_bytes() && row.seal == seal.seal.as_bytes() {
                return Ok(self.served_bundle(b.clone()));
            }
            return Err(perr(
                ErrorCode::CONFLICT,
                "this transfer was receipted with another seal",
            ));
        }
        if row.state != TransferState::Receiving {
            return Err(perr(ErrorCode::NOT_FOUND, "transfer is not being received"));
        }
        let trust = self.trust();
        let card = trust.chain(&row.sender).ok_or_else(|| {
            perr(
                ErrorCode::UNKNOWN_AGENCY,
                format!("{} has no card in the relay's trust store", row.sender),
            )
        })?;
        // Any key of the sender's card chain, within its interval (`custody.md` §8.5).
        let (sealed, key) = card
            .open_sealed_manifest(seal.manifest.as_bytes(), seal.seal.as_bytes())
            .map_err(|e| perr(ErrorCode::BAD_SEAL, format!("sealed manifest: {e}")))?;
        self.check_not_revoked(&key, &sealed.seal, "seal")?;
        let m: &Manifest = &sealed.manifest;
        if m.transfer_id != t || m.sender != row.sender || m.offer().to_json() != row.offer {
            return Err(perr(
                ErrorCode::BAD_SEAL,
                "the sealed manifest does not match the offer",
            ));
        }
        let active = self.get_active(lease)?;
        let a = lock(&active.state);
        if !a.all_durable() {
            return Err(perr(
                ErrorCode::PROTOCOL_VIOLATION,
                "SEAL before every piece is durable",
            ));
        }
        // Keyless verification (`custody.md` §5.2): the roots of what the relay holds, computed
        // on arrival, against the roots the sender sealed.
        if let Some(i) = m
            .files
            .iter()
            .zip(&a.frontiers)
            .position(|(f, fr)| !bool::from(subtle_eq(&fr.root(), &f.piece_root.0)))
        {
            drop(a);
            self.reject(&row);
            return Err(self.integrity(
                t,
                &row.sender,
                format!("file {i}: the stored ciphertext does not match its sealed piece root"),
            ));
        }
        drop(a);
        // The encrypted contents must be the ones the sealed manifest names (`custody.md` §5.4):
        // the custody receipt covers them like the files.
        if !m.holds_contents_ciphertext(&seal.contents) {
            return Err(perr(
                ErrorCode::BAD_SEAL,
                "the encrypted contents do not match the sealed manifest",
            ));
        }
        // The manifest, seal and completion time are committed before anything is signed, so a
        // retry signs the same text and finds it in the log instead of appending it twice.
        let manifest_sha = Sha256Digest::of(seal.manifest.as_bytes());
        let completed = match row.completed_at {
            Some(c) if row.seal == seal.seal.as_bytes() => c,
            _ => self.now().unix(),
        };
        {
            // Under the index's lock, as for a group commit: a SEAL of an upload taken over since
            // it was checked above commits nothing (the newer upload's SEAL then finds this
            // completion time, or none, never two).
            let mut db = self.db_unless_fenced(&active)?;
            let tx = db.transaction().map_err(db_err)?;
            tx.execute(
                "UPDATE documents SET manifest = ?1, seal = ?2, contents = ?3 WHERE row = ?4",
                params![
                    seal.manifest.as_bytes(),
                    seal.seal.as_bytes(),
                    &seal.contents[..],
                    row.row
                ],
            )
            .map_err(db_err)?;
            tx.execute(
                "UPDATE transfers SET manifest_sha256 = ?1, completed_at = ?2 WHERE row = ?3",
                params![&manifest_sha.0[..], completed, row.row],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        let spool = self.spool(row.row);
        let inbox = self.inbox(row.row);
        if self.storage.len(&spool).map_err(storage_err)?.is_some() {
            self.storage.rename(&spool, &inbox).map_err(storage_err)?;
            self.storage
                .sync_dir(&self.data_dir.join("inbox"))
                .map_err(storage_err)?;
            self.storage
                .sync_dir(&self.data_dir.join("spool"))
                .map_err(storage_err)?;
        } else if self.storage.len(&inbox).map_err(storage_err)?.is_none() && !m.files.is_empty() {
            return Err(perr(ErrorCode::INTERNAL, "the transfer's data is missing"));
        }
        let st = Statement::CustodyReceipt {
            head: Head {
                transfer: t,
                issuer: self.agency.clone(),
                time: Timestamp::from_unix(completed)
                    .map_err(|e| perr(ErrorCode::INTERNAL, e.to_string()))?,
            },
            sender: row.sender.clone(),
            recipients: row.recipients.clone(),
            manifest_sha256: manifest_sha,
            seal_sha256: text_digest(seal.seal.as_bytes()),
            files: m.files.len() as u64,
            ciphertext_bytes: row.ciphertext_bytes,
        };
        let (note, index) = self.log_statement(&st)?;
        crate::failpoint::hit("receipt.after_log");
        let bundle = self.bundle(&note, index)?;
        lock(&self.db)
            .execute(
                "UPDATE transfers SET state = 'complete', custody_receipt = ?1 WHERE row = ?2",
                params![bundle, row.row],
            )
            .map_err(db_err)?;
        self.release(lease);
        tracing::info!(transfer = %t, log_index = index, "custody receipt issued");
        Ok(bundle)
    }

    /// SEAL of a damaged transfer (`relay.md` §10): the seal it was receipted with, every piece
    /// durable again and every file's root equal to its sealed piece root. It becomes fetchable
    /// again under its original custody receipt, which is returned; nothing new is signed.
    fn repaired(
        &self,
        lease: &Lease,
        row: &TransferRow,
        seal: &Seal,
    ) -> Result<String, ProtocolError> {
        let t = row.transfer;
        let bundle = row
            .custody_receipt
            .clone()
            .ok_or_else(|| perr(ErrorCode::INTERNAL, "a damaged transfer has no receipt"))?;
        if row.manifest != seal.manifest.as_bytes() || row.seal != seal.seal.as_bytes() {
            return Err(perr(
                ErrorCode::CONFLICT,
                "this transfer was receipted with another seal",
            ));
        }
        let m = Manifest::parse(&row.manifest)
            .map_err(|e| perr(ErrorCode::INTERNAL, format!("stored manifest: {e}")))?;
        let active = self.get_active(lease)?;
        let a = lock(&active.state);
        if !a.all_durable() {
            return Err(perr(
                ErrorCode::PROTOCOL_VIOLATION,
                "SEAL before every piece is durable",
            ));
        }
        let bad: Vec<u32> = m
            .files
            .iter()
            .zip(&a.frontiers)
            .enumerate()
            .filter(|(_, (f, fr))| !bool::from(subtle_eq(&fr.root(), &f.piece_root.0)))
            .map(|(i, _)| i as u32)
            .collect();
        drop(a);
        if let Some(&first) = bad.first() {
            // Still damaged: those files are to be re-sent whole again.
            reset_files(&mut *self.db_unless_fenced(&active)?, row.row, &bad)?;
            self.release(lease);
            return Err(self.integrity(
                t,
                &row.sender,
                format!(
                    "file {first}: the re-sent ciphertext does not match its sealed piece root"
                ),
            ));
        }
        self.storage
            .sync_dir(&self.data_dir.join("inbox"))
            .map_err(storage_err)?;
        {
            let db = self.db_unless_fenced(&active)?;
            db.execute(
                "UPDATE transfers SET state = CASE WHEN delivered_at IS NULL THEN 'complete' ELSE 'delivered' END WHERE row = ?1 AND state = 'damaged'",
                params![row.row],
            )
            .map_err(db_err)?;
        }
        self.release(lease);
        tracing::info!(transfer = %t, "damaged transfer repaired by its sender");
        Ok(bundle)
    }

    /// The index's writer connection, unless `upload` was fenced: checked under the lock, so
    /// that what is committed with it belongs to an upload still held (`relay.md` §2 "One upload
    /// at a time").
    fn db_unless_fenced(
        &self,
        upload: &Upload,
    ) -> Result<MutexGuard<'_, Connection>, ProtocolError> {
        let db = lock(&self.db);
        if upload.is_fenced() {
            return Err(taken_over());
        }
        Ok(db)
    }

    /// Marks files of a receipted transfer damaged (`relay.md` §10): one signed `damage-report`
    /// naming them is logged, then, in one transaction, the transfer becomes `damaged` and those
    /// files' durable prefixes are set back to nothing, so that the relay's ACCEPT asks the
    /// sender for them again. The sealed manifest binds only each file's piece root, so no
    /// piece of a file that fails it can be vouched for: the file is re-sent whole. (Logged
    /// before the index is updated: a crash in between logs the same damage again rather than
    /// not at all.) A transfer being repaired right now is left alone.
    fn mark_damaged(
        &self,
        row: &TransferRow,
        files: &[(u32, String)],
    ) -> Result<(), ProtocolError> {
        if files.is_empty() || lock(&self.active).contains_key(&row.transfer) {
            return Ok(());
        }
        let reason = files
            .iter()
            .map(|(i, why)| format!("file {i}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        let st = Statement::DamageReport {
            head: Head {
                transfer: row.transfer,
                issuer: self.agency.clone(),
                time: self.now(),
            },
            sender: row.sender.clone(),
            manifest_sha256: Sha256Digest::of(&row.manifest),
            files: files.len() as u64,
            reason: text(&reason),
        };
        self.log_statement(&st)?;
        tracing::warn!(transfer = %row.transfer, files = files.len(), "ciphertext lost or damaged: {reason}");
        let mut db = lock(&self.db);
        let tx = db.transaction().map_err(db_err)?;
        tx.execute(
            "UPDATE transfers SET state = 'damaged' WHERE row = ?1 AND state IN ('complete', 'delivered', 'damaged')",
            params![row.row],
        )
        .map_err(db_err)?;
        for (i, _) in files {
            tx.execute(
                "UPDATE files SET durable = 0, frontier = NULL WHERE row = ?1 AND idx = ?2",
                params![row.row, i64::from(*i)],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Serving FETCH found file `i` of `t` missing or short in the pack: the transfer is marked
    /// damaged (once) and the recipient gets [`damaged_error`].
    pub fn damaged_on_read(&self, t: &TransferId, i: u32, why: &str) -> ProtocolError {
        match self.transfer(t) {
            Ok(Some(row))
                if matches!(
                    row.state,
                    TransferState::Complete | TransferState::Delivered
                ) =>
            {
                if let Err(e) = self.mark_damaged(&row, &[(i, why.to_owned())]) {
                    tracing::error!(transfer = %t, error = %e, "could not mark a damaged transfer");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(transfer = %t, error = %e, "could not mark a damaged transfer")
            }
        }
        damaged_error()
    }

    fn reject(&self, row: &TransferRow) {
        let _ = lock(&self.db).execute(
            "UPDATE transfers SET state = 'rejected' WHERE row = ?1",
            params![row.row],
        );
        if let Some(u) = lock(&self.active).remove(&row.transfer) {
            u.mark_fenced();
        }
        let _ = self.storage.remove(&self.spool(row.row));
    }

    /// The upload stopped before completion: forget the in-memory state (what is durable stays),
    /// unless a newer offer has taken it over.
    pub fn abandon(&self, lease: Lease) {
        self.release(&lease);
    }

    /// Reads `len` bytes of a stored transfer's pack file at `offset` into `buf`.
    pub fn read_pack(
        &self,
        row: &TransferRow,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, ProtocolError> {
        self.storage
            .read_at(&self.pack_path(row), offset, buf)
            .map_err(storage_err)
    }

    /// The transfer's pack opened for direct reads (`protocol.md` §6.3) up to pack offset
    /// `end` (the end of what is served: nothing past it is read ahead), if its storage allows
    /// it and fewer than [`MAX_DIRECT_READERS`] are open.
    pub fn open_pack_direct(&self, row: &TransferRow, end: u64) -> Option<DirectPack> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.direct_open.fetch_add(1, Relaxed) >= MAX_DIRECT_READERS {
            self.direct_open.fetch_sub(1, Relaxed);
            return None;
        }
        let open = Arc::clone(&self.direct_open);
        match self
            .storage
            .open_direct(&self.pack_path(row), end.min(row.ciphertext_bytes))
        {
            Some(source) => Some(DirectPack { source, open }),
            None => {
                open.fetch_sub(1, Relaxed);
                None
            }
        }
    }

    /// Like [`Relay::read_pack`], through `direct` while it lasts: `out.len()` bytes at
    /// `offset` (fewer at the pack's end) into `out`, reading on through the page cache (and
    /// dropping `direct`) if the file system refuses a direct read. Returns how many were read.
    /// `out` is not zeroed first: the bytes read directly are copied once from the block into
    /// it, the others read into it (`protocol.md` §6.3).
    pub fn read_pack_into(
        &self,
        row: &TransferRow,
        direct: &mut Option<DirectPack>,
        offset: u64,
        out: &mut [u8],
    ) -> Result<usize, ProtocolError> {
        let mut got = 0;
        if let Some(d) = direct.as_mut() {
            while got < out.len() {
                match d.source.read(offset + got as u64, &mut out[got..]) {
                    DirectRead::Got(0) => return Ok(got),
                    DirectRead::Got(k) => got += k,
                    DirectRead::Failed(e) => return Err(storage_err(e)),
                    DirectRead::Unsupported => {
                        *direct = None;
                        break;
                    }
                }
            }
        }
        if got == out.len() {
            return Ok(got);
        }
        Ok(got + self.read_pack(row, offset + got as u64, &mut out[got..])?)
    }

    /// File `i`'s place in the pack: `(base, ciphertext_size)`.
    pub fn file_extent(&self, row: i64, i: u32) -> Result<Option<(u64, u64)>, ProtocolError> {
        lock(&self.reader)
            .prepare_cached("SELECT base, ciphertext_size FROM files WHERE row = ?1 AND idx = ?2")
            .and_then(|mut q| {
                q.query_row(params![row, i64::from(i)], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })
                .optional()
            })
            .map_err(db_err)
    }

    /// Records that `agency` fetched file `i` to its end; true when it has now fetched every
    /// file, and [`Relay::fetched_all`] should record it. Progress is kept in memory: no fsync
    /// per file fetched.
    pub fn served(&self, row: &TransferRow, agency: &AgencyId, i: u32) -> bool {
        let mut served = lock(&self.served);
        let set = served.entry((row.row, agency.clone())).or_default();
        set.insert(i);
        set.len() as u64 == row.files
    }

    /// `agency` has fetched every file of `row`: one Fetch statement in the audit log, once per
    /// transfer and agency (recorded in the index). It commits and fsyncs. The progress kept in
    /// memory goes once this succeeds: after a failure, the next file served tries again.
    pub fn fetched_all(&self, row: &TransferRow, agency: &AgencyId) -> Result<(), ProtocolError> {
        let new = lock(&self.db)
            .execute(
                "INSERT OR IGNORE INTO served (row, agency, idx) VALUES (?1, ?2, -1)",
                params![row.row, agency.as_str()],
            )
            .map_err(db_err)?;
        if new == 1 {
            let st = Statement::Fetch {
                head: Head {
                    transfer: row.transfer,
                    issuer: self.agency.clone(),
                    time: self.now(),
                },
                peer: agency.clone(),
                files: row.files,
                ciphertext_bytes: row.ciphertext_bytes,
            };
            self.log_statement(&st)?;
        }
        lock(&self.served).remove(&(row.row, agency.clone()));
        Ok(())
    }

    /// A recipient's delivery receipt (`relay.md` §6): verified with its card's key against the
    /// stored transfer, logged once; returns its bundle.
    pub fn deliver(
        &self,
        peer: &PeerIdentity,
        t: TransferId,
        note: &str,
    ) -> Result<String, ProtocolError> {
        let row = self
            .transfer(&t)?
            .ok_or_else(|| perr(ErrorCode::NOT_FOUND, "no such transfer"))?;
        if !row.recipients.contains(&peer.agency) {
            return Err(self.refuse(
                peer,
                t,
                perr(ErrorCode::NOT_AUTHORISED, "only a recipient may deliver"),
            ));
        }
        let custody = row
            .custody_receipt
            .clone()
            .ok_or_else(|| perr(ErrorCode::NOT_FOUND, "transfer not complete"))?;
        let trust = self.trust();
        let card = trust
            .chain(&peer.agency)
            .ok_or_else(|| perr(ErrorCode::UNKNOWN_AGENCY, "no card for the recipient"))?;
        // Any key of the recipient's card chain, within its interval (`custody.md` §8.5).
        let (st, key) = card
            .open_statement(note.as_bytes())
            .map_err(|e| perr(ErrorCode::BAD_SEAL, format!("delivery receipt: {e}")))?;
        self.check_not_revoked(&key, &st, "delivery receipt")?;
        let ok = match &*st {
            Statement::DeliveryReceipt {
                head,
                sender,
                manifest_sha256,
                seal_sha256,
                custody_receipt_sha256,
                files,
                ..
            } => {
                head.transfer == t
                    && head.issuer == peer.agency
                    && *sender == row.sender
                    && *manifest_sha256 == Sha256Digest::of(&row.manifest)
                    && *seal_sha256 == text_digest(&row.seal)
                    && *custody_receipt_sha256 == text_digest(custody.as_bytes())
                    && *files == row.files
            }
            _ => false,
        };
        if !ok {
            return Err(self.refuse(
                peer,
                t,
                perr(
                    ErrorCode::BAD_SEAL,
                    "the delivery receipt does not match this transfer",
                ),
            ));
        }
        // One receipt per recipient: a second delivery by the same agency (a re-run after a
        // lost answer) gets the first one back and is not logged again.
        if let Some((_, bundle)) = self
            .deliveries(row.row)?
            .into_iter()
            .find(|(a, _)| *a == peer.agency)
        {
            return Ok(bundle);
        }
        // Log the recipient's statement; its signed note goes into the bundle.
        let index = self.append_entry(st.encode().as_bytes())?;
        let note = note.to_owned();
        let bundle = self.bundle(&note, index)?;
        let now = self.now().unix();
        let mut db = lock(&self.db);
        let tx = db.transaction().map_err(db_err)?;
        tx.execute(
            "INSERT OR IGNORE INTO deliveries (row, agency, receipt, delivered_at) VALUES (?1, ?2, ?3, ?4)",
            params![row.row, peer.agency.as_str(), bundle, now],
        )
        .map_err(db_err)?;
        let delivered: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM deliveries WHERE row = ?1",
                params![row.row],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        // Delivered once every recipient has delivered.
        if delivered as usize >= row.recipients.len() {
            tx.execute(
                "UPDATE transfers SET state = CASE WHEN state = 'complete' THEN 'delivered' ELSE state END, delivered_at = COALESCE(delivered_at, ?1) WHERE row = ?2",
                params![now, row.row],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(bundle)
    }

    /// Transfers whose ciphertext is due for purging at `today` (`relay.md` §7).
    pub fn due_for_purge(&self) -> Result<Vec<(TransferRow, String)>, ProtocolError> {
        let now = self.now();
        let today = now.date();
        let mut out = Vec::new();
        for r in self.transfers()? {
            if !matches!(
                r.state,
                TransferState::Complete | TransferState::Delivered | TransferState::Damaged
            ) {
                continue;
            }
            let r = self.with_documents(r)?;
            // Retention comes from the sealed manifest, which the sender signed, never from a
            // column an operator could edit (issue 11); a manifest that does not parse is kept.
            let by_date = match rogatory_custody::Manifest::parse(&r.manifest) {
                Ok(m) => m.legal.retain_until.is_some_and(|d| d.0 < today),
                Err(e) => {
                    tracing::error!(transfer = %r.transfer, error = %e, "stored manifest does not parse; not purged");
                    false
                }
            };
            let by_delivery = match (self.policy().retain_after_delivery_days, r.delivered_at) {
                (Some(days), Some(at)) => now.unix() >= at + i64::from(days) * 86_400,
                _ => false,
            };
            if by_date {
                out.push((r, "retain_until passed".to_owned()));
            } else if by_delivery {
                out.push((r, "retention period after delivery passed".to_owned()));
            }
        }
        Ok(out)
    }

    /// Purges what is due: deletes the ciphertext, logs a signed purge receipt. Returns what
    /// was purged (or, with `dry_run`, what would be).
    pub fn purge(&self, dry_run: bool) -> Result<Vec<(TransferRow, String)>, ProtocolError> {
        let due = self.due_for_purge()?;
        if dry_run {
            return Ok(due);
        }
        for (r, reason) in &due {
            let st = Statement::PurgeReceipt {
                head: Head {
                    transfer: r.transfer,
                    issuer: self.agency.clone(),
                    time: self.now(),
                },
                sender: r.sender.clone(),
                manifest_sha256: Sha256Digest::of(&r.manifest),
                files: r.files,
                ciphertext_bytes: r.ciphertext_bytes,
                reason: text(reason),
            };
            let (note, index) = self.log_statement(&st)?;
            let bundle = self.bundle(&note, index)?;
            // No upload of it may write again (a sender repairing it would create its pack
            // anew, a copy left behind after the purge), nor be accepted until it is purged.
            let _one = lock(&self.offering);
            self.fence_upload(&r.transfer, true);
            self.storage
                .remove(&self.inbox(r.row))
                .map_err(storage_err)?;
            self.storage
                .sync_dir(&self.data_dir.join("inbox"))
                .map_err(storage_err)?;
            // The transfer's metadata go with its data (`relay.md` §7): what remains is what its
            // receipts and audit entries need — ids, sender, recipients, counts, the manifest's
            // digest, the seal and the receipts.
            let mut db = lock(&self.db);
            let tx = db.transaction().map_err(db_err)?;
            tx.execute(
                "UPDATE transfers SET state = 'purged', purge_receipt = ?1 WHERE row = ?2",
                params![bundle, r.row],
            )
            .map_err(db_err)?;
            tx.execute(
                "UPDATE documents SET manifest = NULL, contents = NULL, offer = x'' WHERE row = ?1",
                params![r.row],
            )
            .map_err(db_err)?;
            tx.execute("DELETE FROM files WHERE row = ?1", params![r.row])
                .map_err(db_err)?;
            tx.execute("DELETE FROM served WHERE row = ?1", params![r.row])
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            drop(db);
            tracing::info!(transfer = %r.transfer, "purged");
        }
        Ok(due)
    }

    /// Removes partial uploads untouched for longer than the policy's TTL (test-plan.md 37): only
    /// transfers still receiving; complete or receipted data is never touched. Idempotent.
    pub fn gc_partials(&self) -> Result<Vec<TransferId>, ProtocolError> {
        let cutoff = self.now().unix() - i64::from(self.policy().partial_ttl_hours) * 3600;
        let receiving: Vec<TransferRow> = self
            .transfers()?
            .into_iter()
            .filter(|r| r.state == TransferState::Receiving)
            .collect();
        let mut out = Vec::new();
        for r in receiving {
            // Decided, and removed, with offers held off: its sender may be resuming it right
            // now (test-plan.md 137).
            let _one = lock(&self.offering);
            let stale = lock(&self.db)
                .query_row(
                    "SELECT touched_at FROM transfers WHERE row = ?1 AND state = 'receiving'",
                    params![r.row],
                    |x| x.get::<_, i64>(0),
                )
                .optional()
                .map_err(db_err)?
                .is_some_and(|t| t < cutoff);
            if !stale || lock(&self.active).contains_key(&r.transfer) {
                continue;
            }
            self.storage
                .remove(&self.spool(r.row))
                .map_err(storage_err)?;
            self.storage
                .sync_dir(&self.data_dir.join("spool"))
                .map_err(storage_err)?;
            let mut db = lock(&self.db);
            let tx = db.transaction().map_err(db_err)?;
            tx.execute("DELETE FROM deliveries WHERE row = ?1", params![r.row])
                .map_err(db_err)?;
            tx.execute("DELETE FROM files WHERE row = ?1", params![r.row])
                .map_err(db_err)?;
            tx.execute("DELETE FROM documents WHERE row = ?1", params![r.row])
                .map_err(db_err)?;
            tx.execute("DELETE FROM transfers WHERE row = ?1", params![r.row])
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            out.push(r.transfer);
        }
        Ok(out)
    }

    /// Re-verifies every stored piece of every transfer (test-plan.md 39, `relay.md` §10) and
    /// marks what fails: a receipted transfer with lost or damaged ciphertext becomes `damaged`
    /// (one `damage-report` per damage found), and a file of a transfer still being received
    /// that no longer matches its committed frontier is set back to nothing held. Returns
    /// `(transfer, file, problem)` for each fault, those of transfers already damaged included.
    pub fn scrub(&self) -> Result<Vec<(TransferId, u32, String)>, ProtocolError> {
        self.scrub_inner(true)
    }

    /// [`Relay::scrub`] without marking anything: for a store another process is serving.
    pub fn scrub_dry_run(&self) -> Result<Vec<(TransferId, u32, String)>, ProtocolError> {
        self.scrub_inner(false)
    }

    /// Reads `count` pieces of a file from the pack into a frontier; a missing, short or
    /// unreadable piece is a problem.
    fn read_pieces(
        &self,
        path: &Path,
        base: u64,
        layout: &PieceLayout,
        hash: PieceHash,
        count: u64,
        buf: &mut [u8],
    ) -> Result<Frontier, String> {
        let mut frontier = Frontier::new();
        for p in 0..count {
            let Some(range) = layout.range(p) else { break };
            let len = (range.end - range.start) as usize;
            let Some(buf) = buf.get_mut(..len) else {
                return Err(format!("piece {p} is longer than a piece can be"));
            };
            match self.storage.read_at(path, base + range.start, buf) {
                Ok(n) if n == len => frontier.push(hash.leaf(buf)),
                Ok(_) => return Err(format!("piece {p} is missing (the pack is too short)")),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err("the pack file is missing".to_owned());
                }
                Err(e) => return Err(format!("piece {p} cannot be read: {e}")),
            }
        }
        Ok(frontier)
    }

    /// The committed frontier blobs of a transfer's files, as stored (unchecked).
    fn frontier_rows(&self, row: i64) -> Result<Vec<Option<Vec<u8>>>, ProtocolError> {
        let db = lock(&self.db);
        let mut q = db
            .prepare("SELECT frontier FROM files WHERE row = ?1 ORDER BY idx")
            .map_err(db_err)?;
        let v = q
            .query_map(params![row], |r| r.get::<_, Option<Vec<u8>>>(0))
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(v)
    }

    fn scrub_inner(&self, mark: bool) -> Result<Vec<(TransferId, u32, String)>, ProtocolError> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_552];
        for r in self.transfers()? {
            if matches!(r.state, TransferState::Purged | TransferState::Rejected) {
                continue;
            }
            let r = self.with_documents(r)?;
            let offer = match TransferOffer::parse(&r.offer) {
                Ok(o) => o,
                Err(e) => {
                    out.push((r.transfer, 0, format!("stored offer: {e}")));
                    continue;
                }
            };
            let durable = self.durable(r.row)?;
            let receipted = matches!(
                r.state,
                TransferState::Complete | TransferState::Delivered | TransferState::Damaged
            );
            // What each file's pieces must hash to: the sealed piece roots once sealed, else the
            // frontiers committed with the durable prefixes.
            let expected: Vec<Sha256Digest> = if r.manifest.is_empty() {
                match self.stored_frontiers(r.row, &durable) {
                    Ok(f) => f.iter().map(|f| Sha256Digest(f.root())).collect(),
                    Err(e) => {
                        out.push((r.transfer, 0, e.message));
                        continue;
                    }
                }
            } else {
                let want: Option<Vec<u8>> = lock(&self.db)
                    .query_row(
                        "SELECT manifest_sha256 FROM transfers WHERE row = ?1",
                        params![r.row],
                        |x| x.get(0),
                    )
                    .map_err(db_err)?;
                if want.as_deref() != Some(&Sha256Digest::of(&r.manifest).0[..]) {
                    out.push((
                        r.transfer,
                        0,
                        "stored manifest does not match its digest".to_owned(),
                    ));
                    continue;
                }
                match Manifest::parse(&r.manifest) {
                    Ok(m) if m.offer().to_json() == r.offer => {
                        m.files.iter().map(|f| f.piece_root).collect()
                    }
                    Ok(_) => {
                        out.push((
                            r.transfer,
                            0,
                            "stored manifest does not match the offer".to_owned(),
                        ));
                        continue;
                    }
                    Err(e) => {
                        out.push((r.transfer, 0, format!("stored manifest: {e}")));
                        continue;
                    }
                }
            };
            let path = self.pack_path(&r);
            // The pack may have been removed or replaced since a handle to it was cached.
            self.storage.reopen(&path);
            let frontiers = if receipted {
                self.frontier_rows(r.row)?
            } else {
                Vec::new()
            };
            // Faults found now in data the relay vouched for (marked and reported once).
            let mut new = Vec::new();
            let mut base = 0u64;
            let hash = offer.piece_hash();
            for (i, layout) in offer.layouts().iter().enumerate() {
                let held = durable.get(i).copied().unwrap_or(0);
                let count = layout.count();
                let problem = if !receipted {
                    // Still being received: the durable prefix against its committed frontier
                    // (or the sealed root, once sealed).
                    match self.read_pieces(&path, base, layout, hash, held, &mut buf) {
                        Err(p) => Some(p),
                        Ok(f) => expected
                            .get(i)
                            .is_none_or(|want| !bool::from(subtle_eq(&f.root(), &want.0)))
                            .then(|| {
                                "the stored pieces do not match the file's piece root".to_owned()
                            }),
                    }
                } else if r.state == TransferState::Damaged && held < count {
                    // Known damage awaiting the sender's re-send: what was re-sent so far must
                    // match the frontier committed with it.
                    let stored = frontiers
                        .get(i)
                        .cloned()
                        .flatten()
                        .and_then(|b| Frontier::from_bytes(&b));
                    let resent = self.read_pieces(&path, base, layout, hash, held, &mut buf);
                    let intact = match (&stored, &resent) {
                        (Some(s), Ok(f)) => s.len() == held && s.root() == f.root(),
                        (None, Ok(_)) => held == 0,
                        _ => false,
                    };
                    if !intact && mark && !lock(&self.active).contains_key(&r.transfer) {
                        reset_files(&mut lock(&self.db), r.row, &[i as u32])?;
                    }
                    out.push((
                        r.transfer,
                        i as u32,
                        format!(
                            "damaged: {held} of {count} pieces held again, awaiting the sender's re-send"
                        ),
                    ));
                    base += layout.ciphertext_size;
                    continue;
                } else {
                    // Receipted: every piece the sealed manifest names, read from the pack and
                    // hashed against the sealed piece root, whatever the index says; then the
                    // index must agree.
                    match self.read_pieces(&path, base, layout, hash, count, &mut buf) {
                        Err(p) => Some(p),
                        Ok(f) => {
                            let stored = frontiers.get(i).cloned().flatten();
                            if expected
                                .get(i)
                                .is_none_or(|want| !bool::from(subtle_eq(&f.root(), &want.0)))
                            {
                                Some(
                                    "the stored pieces do not match the file's sealed piece root"
                                        .to_owned(),
                                )
                            } else if held != count {
                                Some(format!("the index records {held} of {count} pieces held"))
                            } else if stored.as_deref() != Some(&f.to_bytes()[..]) {
                                Some(
                                    "the index's piece frontier does not match the stored pieces"
                                        .to_owned(),
                                )
                            } else {
                                None
                            }
                        }
                    }
                };
                if let Some(p) = problem {
                    if receipted {
                        new.push((i as u32, p.clone()));
                    } else if mark && !lock(&self.active).contains_key(&r.transfer) {
                        reset_files(&mut lock(&self.db), r.row, &[i as u32])?;
                    }
                    out.push((r.transfer, i as u32, p));
                }
                base += layout.ciphertext_size;
            }
            if mark && !new.is_empty() {
                self.mark_damaged(&r, &new)?;
            }
        }
        Ok(out)
    }
}

/// SHA-256 of a signed note's text (see [`rogatory_custody::note_text_digest`]).
pub fn text_digest(note: &[u8]) -> Sha256Digest {
    rogatory_custody::note_text_digest(note)
}

/// Statement text from a message: control characters become spaces, trimmed, at most 4 096
/// bytes, never empty — so it always satisfies `Text`.
fn text(s: &str) -> Text {
    let mut t: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut end = t.trim_end().len().min(4096);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    t.truncate(end);
    let t = t.trim_start();
    let t = if t.is_empty() { "-" } else { t };
    t.parse().expect("sanitised text is valid statement text")
}

/// The answer to a FETCH of a damaged transfer's ciphertext (`protocol.md` §7: integrity
/// class, exit 3, not retryable).
pub fn damaged_error() -> ProtocolError {
    perr(
        ErrorCode::DAMAGED,
        "the relay's copy of this transfer is lost or damaged; it can be fetched again once the sender re-sends it",
    )
}

fn subtle_eq(a: &[u8; 32], b: &[u8; 32]) -> subtle::Choice {
    use subtle::ConstantTimeEq;
    a.ct_eq(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cli.md` "Running the relay" (test-plan.md 135): the index lookups a file FETCH makes on
    /// an async worker do not wait for the writer's connection, held (as through a commit and
    /// its fsync) by another thread meanwhile.
    #[test]
    fn a_fetchs_index_lookups_do_not_wait_for_a_commit() {
        let dir = tempfile::tempdir().expect("tmp");
        let relay = Arc::new(
            Relay::open(
                RelayConfig {
                    data_dir: dir.path().to_owned(),
                    identity: identity().relay_only(),
                    trust: TrustStore::new(),
                    policy: Policy::default(),
                    clock: system_clock(),
                },
                crate::DiskStorage::new(),
            )
            .expect("relay"),
        );
        let writer = relay.db_lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let r = relay.clone();
        let looking = std::thread::spawn(move || {
            let t: TransferId = "00112233445566778899aabbccddeeff".parse().expect("id");
            let found = r.transfer_without_documents(&t).map(|row| row.is_none());
            let extent = r.file_extent(1, 0).map(|e| e.is_none());
            let _ = tx.send((found, extent));
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(writer);
        looking.join().expect("join");
        match got {
            Ok((Ok(true), Ok(true))) => {}
            Ok(other) => panic!("unexpected lookups: {other:?}"),
            Err(_) => panic!("the lookups waited for the writer's connection"),
        }
    }

    fn identity() -> AgencyIdentity {
        AgencyIdentity::from_seeds("agency-b".parse().expect("id"), &[7; 32], [8; 32])
    }

    fn index(d: &Path) -> Connection {
        let db = Connection::open(d.join("relay.db")).expect("db");
        db.execute_batch(SCHEMA).expect("schema");
        db
    }

    /// Opens the log as `Relay::open` does and appends `entries`, keeping each checkpoint in
    /// the index when `record`.
    fn append(d: &Path, entries: &[&str], record: bool) {
        let db = index(d);
        let (mut log, _, _) = open_log(&db, d, &identity(), &TrustStore::new()).expect("open");
        for e in entries {
            log.append(e.as_bytes()).expect("append");
            if record {
                store_checkpoint(&db, log.len(), log.checkpoint_note().expect("cp"))
                    .expect("store");
            }
        }
    }

    fn refused(d: &Path) -> String {
        match open_log(&index(d), d, &identity(), &TrustStore::new()) {
            Err(RelayError::Integrity(m)) => m,
            other => panic!("expected a refusal, got {:?}", other.map(|r| r.1)),
        }
    }

    /// `transfers` as it was before the documents had a table of their own; `contents` was
    /// added last by an index made before the contents were split off.
    const OLD_TRANSFERS: &str = "CREATE TABLE transfers (
        row INTEGER PRIMARY KEY, transfer BLOB NOT NULL UNIQUE, sender TEXT NOT NULL,
        recipients TEXT NOT NULL, offer BLOB NOT NULL, manifest BLOB, {contents} seal BLOB,
        manifest_sha256 BLOB, ciphertext_bytes INTEGER NOT NULL, files INTEGER NOT NULL,
        state TEXT NOT NULL, offered_at INTEGER NOT NULL, touched_at INTEGER NOT NULL,
        retain_until TEXT, completed_at INTEGER, custody_receipt TEXT, delivered_at INTEGER,
        purge_receipt TEXT)";

    #[test]
    fn an_old_index_has_its_documents_moved_out_of_transfers_at_open() {
        for contents in [true, false] {
            let dir = tempfile::tempdir().expect("tmp");
            let mut db = Connection::open(dir.path().join("relay.db")).expect("db");
            let column = if contents { "contents BLOB," } else { "" };
            db.execute_batch(&OLD_TRANSFERS.replace("{contents}", column))
                .expect("old table");
            db.execute(
                "INSERT INTO transfers (row, transfer, sender, recipients, offer, manifest, seal, \
                 ciphertext_bytes, files, state, offered_at, touched_at) \
                 VALUES (7, x'00', 'agency-a', 'agency-b', x'0102', x'0304', x'05', 9, 1, 'complete', 1, 1)",
                [],
            )
            .expect("old row");
            if contents {
                db.execute("UPDATE transfers SET contents = x'06' WHERE row = 7", [])
                    .expect("contents");
            }
            db.execute_batch(SCHEMA).expect("schema");
            move_documents(&mut db).expect("move");
            // Opened again: nothing left to move.
            move_documents(&mut db).expect("move again");
            let left: Vec<String> = db
                .prepare("SELECT name FROM pragma_table_info('transfers')")
                .expect("columns")
                .query_map([], |r| r.get(0))
                .expect("columns")
                .collect::<Result<_, _>>()
                .expect("columns");
            for gone in ["offer", "manifest", "contents", "seal"] {
                assert!(!left.iter().any(|c| c == gone), "{gone} in {left:?}");
            }
            let docs: (Vec<u8>, Vec<u8>, Option<Vec<u8>>, Vec<u8>) = db
                .query_row(
                    "SELECT offer, manifest, contents, seal FROM documents WHERE row = 7",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .expect("documents");
            let expect_contents = contents.then(|| vec![6]);
            assert_eq!(docs, (vec![1, 2], vec![3, 4], expect_contents, vec![5]));
            let state: String = db
                .query_row("SELECT state FROM transfers WHERE row = 7", [], |r| {
                    r.get(0)
                })
                .expect("row kept");
            assert_eq!(state, "complete");
        }
    }

    #[test]
    fn a_fresh_relay_starts_and_keeps_every_new_checkpoint() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        let db = index(d);
        let (log, recorded, cut) = open_log(&db, d, &identity(), &TrustStore::new()).expect("open");
        assert_eq!((log.len(), recorded, cut), (0, 0, None));
        assert_eq!(stored_checkpoint(&db).expect("read"), None);
        drop((log, db));
        append(d, &["one", "two"], true);
        let db = index(d);
        let (size, note) = stored_checkpoint(&db).expect("read").expect("kept");
        assert_eq!(size, 2);
        let (log, recorded, _) = open_log(&db, d, &identity(), &TrustStore::new()).expect("reopen");
        assert_eq!((log.len(), recorded), (2, 2));
        assert_eq!(log.checkpoint_note(), Some(note.as_str()));
        // A smaller checkpoint never replaces a larger one.
        store_checkpoint(&db, 1, "older").expect("store");
        assert_eq!(stored_checkpoint(&db).expect("read").expect("kept").0, 2);
    }

    #[test]
    fn a_log_ahead_of_the_index_is_fine_and_recorded_at_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        append(d, &["one"], true);
        // A crash between the log append and the index update.
        append(d, &["two", "three"], false);
        let db = index(d);
        assert_eq!(stored_checkpoint(&db).expect("read").expect("kept").0, 1);
        let (log, recorded, _) = open_log(&db, d, &identity(), &TrustStore::new()).expect("open");
        assert_eq!((log.len(), recorded), (3, 3));
        assert_eq!(stored_checkpoint(&db).expect("read").expect("kept").0, 3);
    }

    #[test]
    fn a_missing_shorter_or_different_log_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        append(d, &["one", "two"], true);
        let log = d.join("audit.log");
        let good = std::fs::read(&log).expect("read");
        std::fs::remove_file(&log).expect("rm");
        let m = refused(d);
        assert!(m.contains("is missing (0 entries)"), "{m}");
        assert!(m.contains("checkpoint for 2 entries"), "{m}");
        assert!(!log.exists());
        // Shorter: only the first record.
        let one = rogatory_custody::decode_records(&good)
            .expect("decode")
            .records[0]
            .encode();
        std::fs::write(&log, &one).expect("write");
        assert!(refused(d).contains("is shorter (1 entries)"));
        // Different: another history of the same size, signed with the same key.
        std::fs::remove_file(&log).expect("rm");
        let other = tempfile::tempdir().expect("tmp");
        append(other.path(), &["uno", "dos"], true);
        std::fs::copy(other.path().join("audit.log"), &log).expect("copy");
        let m = refused(d);
        assert!(m.contains("holds a different history (2 entries)"), "{m}");
        assert!(!d.join("audit.quarantine").exists());
    }
}
