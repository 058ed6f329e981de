//! The audit log: an append-only RFC 6962 tree of statements with a signed checkpoint after
//! every batch, record framing for storage, outside verification, and receipt bundles
//! (`custody.md` §7).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest as _, Sha256};

use crate::checkpoint::Checkpoint;
use crate::error::{BundleError, LogError, ParseError};
use crate::merkle::{
    Hash, MAX_PROOF_LEN, Tree, leaf_hash, parse_b64_hash, verify_consistency, verify_inclusion,
};
use crate::note::{NoteSigner, NoteVerifier};
use crate::statement::Statement;
use crate::text::parse_u64;
use crate::verified::Verified;

/// `custody.md` §10: a record's body.
pub const MAX_RECORD_LEN: usize = 1024 * 1024;
const TAG_LEN: usize = 8;

/// One stored record: an entry, and the checkpoint note of the batch it closes (if it does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The entry: a statement's text.
    pub entry: Vec<u8>,
    /// The signed checkpoint note, on the last record of a batch.
    pub checkpoint: Option<String>,
}

impl Record {
    /// `u32 BE body length || body || SHA-256(body)[:8]`, body = `u32 BE entry length || entry
    /// || checkpoint note`.
    pub fn encode(&self) -> Vec<u8> {
        let cp = self.checkpoint.as_deref().unwrap_or("").as_bytes();
        let body_len = 4 + self.entry.len() + cp.len();
        let mut out = Vec::with_capacity(4 + body_len + TAG_LEN);
        out.extend_from_slice(&(body_len as u32).to_be_bytes());
        out.extend_from_slice(&(self.entry.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.entry);
        out.extend_from_slice(cp);
        let tag = Sha256::digest(&out[4..]);
        out.extend_from_slice(&tag[..TAG_LEN]);
        out
    }
}

/// The records of a log file, how many bytes they span, and whether a torn tail follows.
#[derive(Debug, Default)]
pub struct DecodedRecords {
    /// The complete, intact records.
    pub records: Vec<Record>,
    /// Bytes covered by `records`; a torn tail starts here.
    pub valid_len: usize,
    /// Whether bytes after `valid_len` did not form a valid record.
    pub torn_tail: bool,
}

/// Decodes framed records. A bad record is a torn tail (a crash during the last append) only
/// if it reaches the end of the data; a bad record with intact data after it is corruption.
pub fn decode_records(bytes: &[u8]) -> Result<DecodedRecords, LogError> {
    let mut out = DecodedRecords::default();
    let mut pos = 0usize;
    while pos < bytes.len() {
        match decode_one(&bytes[pos..]) {
            Some((rec, len)) => {
                out.records.push(rec);
                pos += len;
                out.valid_len = pos;
            }
            None => {
                let rest = &bytes[pos..];
                let declared_end = rest
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(|b| 4 + u32::from_be_bytes(b) as usize + TAG_LEN);
                let reaches_end = match declared_end {
                    None => true,
                    Some(end)
                        if (4 + 4 + TAG_LEN..=4 + MAX_RECORD_LEN + TAG_LEN).contains(&end) =>
                    {
                        end >= rest.len()
                    }
                    // A garbled length: only a tail shorter than any record can be torn.
                    Some(_) => rest.len() <= 4 + MAX_RECORD_LEN + TAG_LEN,
                };
                if !reaches_end {
                    return Err(LogError::Corrupt {
                        index: out.records.len() as u64,
                    });
                }
                out.torn_tail = true;
                break;
            }
        }
    }
    Ok(out)
}

fn decode_one(b: &[u8]) -> Option<(Record, usize)> {
    let body_len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    if !(4..=MAX_RECORD_LEN).contains(&body_len) {
        return None;
    }
    let body = b.get(4..4 + body_len)?;
    let tag = b.get(4 + body_len..4 + body_len + TAG_LEN)?;
    if Sha256::digest(body)[..TAG_LEN] != *tag {
        return None;
    }
    let entry_len = u32::from_be_bytes(body[..4].try_into().ok()?) as usize;
    let entry = body.get(4..4 + entry_len)?.to_vec();
    let cp = std::str::from_utf8(&body[4 + entry_len..]).ok()?;
    Some((
        Record {
            entry,
            checkpoint: (!cp.is_empty()).then(|| cp.to_owned()),
        },
        4 + body_len + TAG_LEN,
    ))
}

/// Durable storage of records. `append` returns only once the records are durable (written
/// and synced); a crash during `append` may leave a torn tail, which `load` reports.
pub trait LogStore {
    /// All records in order, and whether a torn tail was found (and dropped) after them.
    fn load(&mut self) -> Result<DecodedRecords, LogError>;
    /// Appends records durably.
    fn append(&mut self, records: &[Record]) -> Result<(), LogError>;
    /// Cuts a torn tail off, keeping the first `valid_len` bytes; the cut-off bytes are kept
    /// aside (quarantined), never silently deleted.
    fn truncate(&mut self, valid_len: usize) -> Result<(), LogError>;
}

/// An in-memory store with the on-disk framing, and fault injection for tests: fail the Nth
/// append, or leave a torn write behind.
#[derive(Debug, Default, Clone)]
pub struct MemoryLogStore {
    /// The framed bytes, as a file would hold them.
    pub bytes: Vec<u8>,
    /// Fail the append with this 0-based number (counting every call, also before a clone),
    /// writing nothing.
    pub fail_append: Option<usize>,
    /// Fail the append with this number after writing half of its bytes (a torn write).
    pub tear_append: Option<usize>,
    /// Bytes cut off by `truncate` (a torn tail), kept for inspection.
    pub quarantined: Vec<u8>,
    appends: usize,
}

impl LogStore for MemoryLogStore {
    fn load(&mut self) -> Result<DecodedRecords, LogError> {
        decode_records(&self.bytes)
    }

    fn append(&mut self, records: &[Record]) -> Result<(), LogError> {
        let n = self.appends;
        self.appends += 1;
        if self.fail_append == Some(n) {
            return Err(LogError::Storage("injected failure".into()));
        }
        let bytes: Vec<u8> = records.iter().flat_map(Record::encode).collect();
        if self.tear_append == Some(n) {
            self.bytes.extend_from_slice(&bytes[..bytes.len() / 2]);
            return Err(LogError::Storage("injected torn write".into()));
        }
        self.bytes.extend_from_slice(&bytes);
        Ok(())
    }

    fn truncate(&mut self, valid_len: usize) -> Result<(), LogError> {
        let tail = self.bytes.split_off(valid_len.min(self.bytes.len()));
        self.quarantined.extend_from_slice(&tail);
        Ok(())
    }
}

/// Recomputes the tree over `records` and checks every stored checkpoint (signature, size,
/// root). Returns the tree and the last checkpoint. The first failing checkpoint names the
/// first bad index: the start of its batch.
pub fn verify_records(
    records: &[Record],
    log_key: &NoteVerifier,
) -> Result<(Tree, Option<Verified<Checkpoint>>), LogError> {
    verify_records_any(records, std::slice::from_ref(log_key))
}

/// [`verify_records`] with any of `log_keys`: the log keys of the owner's card chain, so that
/// checkpoints signed before a key rotation keep verifying (`custody.md` §8.5).
pub fn verify_records_any(
    records: &[Record],
    log_keys: &[NoteVerifier],
) -> Result<(Tree, Option<Verified<Checkpoint>>), LogError> {
    let mut tree = Tree::new();
    let mut last: Option<Verified<Checkpoint>> = None;
    let mut batch_start = 0u64;
    for (i, r) in records.iter().enumerate() {
        let i = i as u64;
        tree.push(leaf_hash(&r.entry));
        let Some(note) = &r.checkpoint else { continue };
        let cp = Checkpoint::open_any(note.as_bytes(), log_keys).map_err(|e| {
            LogError::BadCheckpoint {
                index: i,
                why: e.to_string(),
            }
        })?;
        if cp.size != i + 1
            || !bool::from(subtle::ConstantTimeEq::ct_eq(
                &cp.root[..],
                &tree.root()[..],
            ))
        {
            return Err(LogError::Tampered {
                first_bad_index: batch_start,
            });
        }
        batch_start = i + 1;
        last = Some(cp);
    }
    if batch_start != tree.len() {
        // Entries after the last checkpoint: nothing vouches for them.
        return Err(LogError::Tampered {
            first_bad_index: batch_start,
        });
    }
    Ok((tree, last))
}

/// Checks that `held`, a checkpoint a client kept from earlier, is consistent with the log's
/// current tree: the log was not rolled back or forked.
pub fn check_not_rolled_back(tree: &Tree, held: &Checkpoint) -> Result<(), LogError> {
    if held.size > tree.len() {
        return Err(LogError::RolledBack(format!(
            "log has {} entries but a checkpoint for {} exists",
            tree.len(),
            held.size
        )));
    }
    let proof = tree
        .consistency_proof(held.size, tree.len())
        .ok_or_else(|| LogError::RolledBack("no consistency proof".into()))?;
    let now = tree.root();
    if held.size == 0 {
        return Ok(());
    }
    verify_consistency(held.size, tree.len(), &proof, &held.root, &now)
        .map_err(|e| LogError::RolledBack(format!("checkpoint for {} entries: {e}", held.size)))
}

/// Checks that the log's tree extends `held`, a checkpoint its owner kept outside the log
/// (`custody.md` §7.1): at least `held.size` entries, and a consistency proof from `held` to the
/// tree verifies.
pub fn check_extends(tree: &Tree, held: &Checkpoint) -> Result<(), LogError> {
    let err = |why: String| LogError::NotExtending {
        log_size: tree.len(),
        held_size: held.size,
        why,
    };
    if held.size > tree.len() {
        return Err(err("the log is shorter".into()));
    }
    check_not_rolled_back(tree, held)
        .map_err(|_| err(format!("its first {} entries differ", held.size)))
}

/// An agency's audit log over a [`LogStore`].
#[derive(Debug)]
pub struct AuditLog<S: LogStore> {
    store: S,
    signer: NoteSigner,
    tree: Tree,
    last: Option<Checkpoint>,
    last_note: Option<String>,
}

impl<S: LogStore> AuditLog<S> {
    /// Opens the log: cuts a torn tail, verifies every record against its checkpoint with the
    /// log key, and refuses to open a log that does not verify.
    pub fn open(store: S, log_signer: NoteSigner) -> Result<Self, LogError> {
        Self::open_extending(store, log_signer, None)
    }

    /// Opens the log as [`AuditLog::open`] does, but refuses one that does not extend `held`,
    /// the newest checkpoint its owner keeps outside the log (`custody.md` §7.1): the intact
    /// records must number at least `held.size` and their tree at that size must have
    /// `held.root`. Nothing is cut off unless the log extends `held`: a torn record that
    /// `held` covers was acknowledged, so it is corruption, not a crash tail.
    pub fn open_extending(
        store: S,
        log_signer: NoteSigner,
        held: Option<&Checkpoint>,
    ) -> Result<Self, LogError> {
        Self::open_rotated(store, log_signer, &[], held)
    }

    /// [`AuditLog::open_extending`] for a log whose owner rotated its key (`custody.md` §8.5):
    /// stored checkpoints may be signed by `log_signer` or by any of `retired_log_keys`; new
    /// ones are signed by `log_signer`.
    pub fn open_rotated(
        mut store: S,
        log_signer: NoteSigner,
        retired_log_keys: &[NoteVerifier],
        held: Option<&Checkpoint>,
    ) -> Result<Self, LogError> {
        let decoded = store.load()?;
        let mut keys = vec![log_signer.verifier()];
        keys.extend(retired_log_keys.iter().cloned());
        let (tree, last) = verify_records_any(&decoded.records, &keys)?;
        if let Some(h) = held {
            check_extends(&tree, h)?;
        }
        if decoded.torn_tail {
            store.truncate(decoded.valid_len)?;
        }
        let last_note = decoded
            .records
            .iter()
            .rev()
            .find_map(|r| r.checkpoint.clone());
        Ok(Self {
            store,
            signer: log_signer,
            tree,
            last: last.map(Verified::into_inner),
            last_note,
        })
    }

    /// Number of durable entries.
    pub fn len(&self) -> u64 {
        self.tree.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The origin (`<agency id>/audit`).
    pub fn origin(&self) -> &str {
        self.signer.name()
    }

    /// The latest signed checkpoint note.
    pub fn checkpoint_note(&self) -> Option<&str> {
        self.last_note.as_deref()
    }

    /// The tree (for proofs).
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The storage backend.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Appends a batch of entries, signs the checkpoint that covers them and stores both
    /// durably. Returns the index of the first entry. On error nothing stays appended in memory;
    /// storage may hold a torn tail, which the next `open` cuts off.
    pub fn append_batch(&mut self, entries: &[Vec<u8>]) -> Result<u64, LogError> {
        if entries.is_empty() {
            return Ok(self.tree.len());
        }
        if entries.iter().any(|e| e.len() > MAX_RECORD_LEN - 4 - 1024) {
            return Err(LogError::EntryTooLarge);
        }
        let first = self.tree.len();
        for e in entries {
            self.tree.push(leaf_hash(e));
        }
        // Until the batch is durable, any failure takes the new leaves back out.
        match self.sign_and_store(entries) {
            Ok(()) => Ok(first),
            Err(e) => {
                self.tree.truncate(first);
                Err(e)
            }
        }
    }

    fn sign_and_store(&mut self, entries: &[Vec<u8>]) -> Result<(), LogError> {
        let cp = Checkpoint {
            origin: self.signer.name().to_owned(),
            size: self.tree.len(),
            root: self.tree.root(),
        };
        // Never sign a checkpoint inconsistent with the last one (`custody.md` §7).
        if let Some(last) = &self.last {
            check_not_rolled_back(&self.tree, last).map_err(|_| LogError::Inconsistent)?;
        }
        let note = cp
            .sign(&self.signer)
            .map_err(|e| LogError::Storage(e.to_string()))?;
        let records: Vec<Record> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| Record {
                entry: e.clone(),
                checkpoint: (i + 1 == entries.len()).then(|| note.clone()),
            })
            .collect();
        self.store.append(&records)?;
        self.last = Some(cp);
        self.last_note = Some(note);
        Ok(())
    }

    /// Appends one entry; returns its index.
    pub fn append(&mut self, entry: &[u8]) -> Result<u64, LogError> {
        self.append_batch(&[entry.to_vec()])
    }

    /// The receipt bundle for the statement note whose text is entry `index`, against the
    /// latest checkpoint (which includes it).
    pub fn bundle(&self, statement_note: &str, index: u64) -> Result<String, LogError> {
        let note = self
            .last_note
            .as_deref()
            .ok_or_else(|| LogError::Storage("no checkpoint yet".into()))?;
        let size = self.tree.len();
        let proof = self
            .tree
            .inclusion_proof(index, size)
            .ok_or_else(|| LogError::Storage(format!("index {index} not in the log")))?;
        Ok(ReceiptBundle {
            statement_note: statement_note.to_owned(),
            index,
            proof,
            checkpoint_note: note.to_owned(),
        }
        .encode())
    }
}

/// A signed statement with a tlog-proof that it is in the issuer's log (`custody.md` §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptBundle {
    /// The signed statement.
    pub statement_note: String,
    /// Its index in the log.
    pub index: u64,
    /// Inclusion proof from the leaf to the checkpoint root.
    pub proof: Vec<Hash>,
    /// The signed checkpoint.
    pub checkpoint_note: String,
}

const PROOF_MAGIC: &str = "c2sp.org/tlog-proof@v1\n";

/// A statement proven to be entry `index` of a signed checkpoint of its issuer's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedStatement {
    /// The statement.
    pub statement: Statement,
    /// Its log index.
    pub index: u64,
    /// The checkpoint it was proven against.
    pub checkpoint: Checkpoint,
}

impl ReceiptBundle {
    /// `statement note || LF || tlog-proof`.
    pub fn encode(&self) -> String {
        let mut s = format!(
            "{}\n{PROOF_MAGIC}index {}\n",
            self.statement_note, self.index
        );
        for h in &self.proof {
            s.push_str(&B64.encode(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint_note);
        s
    }

    /// Splits and parses a bundle (nothing is verified yet).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        const KIND: &str = "receipt bundle";
        if text.len() > 4 * crate::note::MAX_NOTE_LEN {
            return Err(ParseError::TooLarge(KIND));
        }
        let split = text
            .find(&format!("\n\n{PROOF_MAGIC}"))
            .ok_or_else(|| ParseError::syntax(KIND, "no tlog-proof section"))?;
        let statement_note = &text[..split + 1];
        let rest = &text[split + 2 + PROOF_MAGIC.len()..];
        let (proof_block, checkpoint_note) = rest
            .split_once("\n\n")
            .ok_or_else(|| ParseError::syntax(KIND, "no checkpoint after the proof"))?;
        let mut lines = proof_block.split('\n');
        let index = lines
            .next()
            .and_then(|l| l.strip_prefix("index "))
            .ok_or_else(|| ParseError::syntax(KIND, "missing index line"))?;
        let index = parse_u64(index)?;
        let mut proof = Vec::new();
        for l in lines {
            let h = parse_b64_hash(l).ok_or_else(|| ParseError::syntax(KIND, "bad proof hash"))?;
            proof.push(h);
            if proof.len() > MAX_PROOF_LEN {
                return Err(ParseError::TooLarge(KIND));
            }
        }
        Ok(Self {
            statement_note: statement_note.to_owned(),
            index,
            proof,
            checkpoint_note: checkpoint_note.to_owned(),
        })
    }

    /// Verifies the statement with the issuer's key, the checkpoint with the issuer's log key,
    /// and the inclusion proof (`custody.md` §9 steps 2 to 4): a receipt the relay's agency both
    /// signed and logged (custody, purge).
    pub fn verify(
        &self,
        issuer_key: &NoteVerifier,
    ) -> Result<Verified<LoggedStatement>, BundleError> {
        self.verify_logged_by(issuer_key, issuer_key)
    }

    /// Verifies the statement with any key of `signer`'s card chain and the checkpoint with any
    /// log key of `log_owner`'s, then the inclusion proof (`custody.md` §8.5, §9). Returns the
    /// key that signed the statement too.
    pub fn verify_chains(
        &self,
        signer: &crate::chain::CardChain,
        log_owner: &crate::chain::CardChain,
    ) -> Result<(Verified<LoggedStatement>, NoteVerifier), BundleError> {
        let (statement, key) = signer.open_statement(self.statement_note.as_bytes())?;
        let origin = format!("{}/audit", log_owner.id());
        let cp = log_owner.open_checkpoint(self.checkpoint_note.as_bytes());
        Ok((self.logged(statement, cp, &origin)?, key))
    }

    /// The inclusion of `statement` as entry `index` of the verified checkpoint `cp` of the log
    /// `origin` (`custody.md` §9).
    fn logged(
        &self,
        statement: Verified<Statement>,
        cp: Result<Verified<Checkpoint>, ParseError>,
        origin: &str,
    ) -> Result<Verified<LoggedStatement>, BundleError> {
        let cp = cp.map_err(|e| match e {
            ParseError::Note(n) => BundleError::Note(n),
            other => BundleError::Parse(other),
        })?;
        if cp.origin != origin {
            return Err(BundleError::Origin(cp.origin.clone()));
        }
        let leaf = leaf_hash(statement.encode().as_bytes());
        verify_inclusion(&leaf, self.index, cp.size, &self.proof, &cp.root)?;
        let index = self.index;
        let checkpoint = cp.into_inner();
        Ok(statement.map(|statement| LoggedStatement {
            statement,
            index,
            checkpoint,
        }))
    }

    /// Verifies the statement with `statement_key` and the checkpoint with the log key of
    /// `log_owner_key`'s agency, then the inclusion proof (`custody.md` §9): a delivery receipt
    /// is signed by the recipient and logged by the relay's agency, which may be another one.
    pub fn verify_logged_by(
        &self,
        statement_key: &NoteVerifier,
        log_owner_key: &NoteVerifier,
    ) -> Result<Verified<LoggedStatement>, BundleError> {
        let statement = Statement::open(self.statement_note.as_bytes(), statement_key)?;
        let origin = format!("{}/audit", log_owner_key.name());
        let log_key = log_owner_key
            .with_name(&origin)
            .ok_or(BundleError::Origin(origin.clone()))?;
        let cp = Checkpoint::open(self.checkpoint_note.as_bytes(), &log_key);
        self.logged(statement, cp, &origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AgencyIdentity;

    fn signer() -> NoteSigner {
        AgencyIdentity::from_seeds("xx-a".parse().expect("id"), &[1; 32], [2; 32]).log_signer()
    }

    fn log_of(entries: &[&str]) -> (MemoryLogStore, Checkpoint) {
        let mut log = AuditLog::open(MemoryLogStore::default(), signer()).expect("open");
        for e in entries {
            log.append(e.as_bytes()).expect("append");
        }
        let note = log.checkpoint_note().expect("cp");
        let cp = Checkpoint::open(note.as_bytes(), &signer().verifier())
            .expect("checkpoint")
            .into_inner();
        (log.store().clone(), cp)
    }

    #[test]
    fn open_extending_refuses_to_cut_an_acknowledged_record() {
        let (store, held) = log_of(&["a", "b", "c"]);
        // The last record garbled: it looks like a torn tail, but `held` covers it.
        let mut bad = store.clone();
        let n = bad.bytes.len();
        bad.bytes[n - 3] ^= 1;
        let e = AuditLog::open_extending(bad.clone(), signer(), Some(&held)).expect_err("refused");
        assert!(matches!(
            e,
            LogError::NotExtending {
                log_size: 2,
                held_size: 3,
                ..
            }
        ));
        // Without a held checkpoint it is cut as before.
        let log = AuditLog::open(bad, signer()).expect("open");
        assert_eq!(log.len(), 2);
        // Garbage after the last held record is an unacknowledged tail: cut and kept aside.
        let mut torn = store.clone();
        torn.bytes.extend_from_slice(&[0xff; 5]);
        let log = AuditLog::open_extending(torn, signer(), Some(&held)).expect("open");
        assert_eq!(log.len(), 3);
        assert_eq!(log.store().quarantined, vec![0xff; 5]);
        // Another history of the same size does not extend `held`.
        let (other, _) = log_of(&["x", "y", "z"]);
        assert!(matches!(
            AuditLog::open_extending(other, signer(), Some(&held)),
            Err(LogError::NotExtending { log_size: 3, .. })
        ));
        // A longer log that extends it opens.
        let (longer, _) = log_of(&["a", "b", "c", "d"]);
        assert!(AuditLog::open_extending(longer, signer(), Some(&held)).is_ok());
    }
}
