//! The audit log on disk (`custody.md` §7): one append-only file of framed records, fsynced on
//! every append; a torn tail is cut off on open and kept in `audit.quarantine` (only a tail the
//! index's checkpoint does not cover: `relay.md` §5.1).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rogatory_custody::{DecodedRecords, LogStore, Record, decode_records};
use rogatory_custody::{LogError, Sha256Digest};

/// A file-backed [`LogStore`] that also knows the index of every entry by its hash, so that a
/// retried append of the same statement can be recognised (`relay.md` §5).
#[derive(Debug)]
pub struct FileLogStore {
    path: PathBuf,
    quarantine: PathBuf,
    by_hash: HashMap<[u8; 32], u64>,
    len: u64,
    /// The torn tail cut off by [`LogStore::truncate`]: `(offset, bytes)`.
    cut: Option<(u64, u64)>,
    /// Why a failed append could not be undone: every later append is refused.
    poisoned: Option<String>,
}

fn io(e: std::io::Error) -> LogError {
    LogError::Storage(e.to_string())
}

fn sync_parent(p: &Path) -> std::io::Result<()> {
    match p.parent() {
        Some(d) => File::open(d)?.sync_all(),
        None => Ok(()),
    }
}

impl FileLogStore {
    /// The log at `path` (created empty if missing, with its directory entry made durable).
    pub fn open(path: &Path) -> Result<Self, LogError> {
        if !path.exists() {
            let mut o = OpenOptions::new();
            o.create(true).append(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                o.mode(0o600);
            }
            o.open(path).and_then(|f| f.sync_all()).map_err(io)?;
            sync_parent(path).map_err(io)?;
        }
        Ok(FileLogStore {
            path: path.to_owned(),
            quarantine: path.with_extension("quarantine"),
            by_hash: HashMap::new(),
            len: 0,
            cut: None,
            poisoned: None,
        })
    }

    /// The index of the entry whose text hashes to `h`, if present.
    pub fn find(&self, h: &Sha256Digest) -> Option<u64> {
        self.by_hash.get(&h.0).copied()
    }

    /// The torn tail cut off when the log was opened, `(offset, bytes)`, if any.
    pub fn cut(&self) -> Option<(u64, u64)> {
        self.cut
    }

    /// Where cut-off bytes are kept.
    pub fn quarantine_path(&self) -> &Path {
        &self.quarantine
    }

    fn note(&mut self, r: &Record) {
        self.by_hash.insert(Sha256Digest::of(&r.entry).0, self.len);
        self.len += 1;
    }
}

impl LogStore for FileLogStore {
    fn load(&mut self) -> Result<DecodedRecords, LogError> {
        let mut bytes = Vec::new();
        File::open(&self.path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io)?;
        let d = decode_records(&bytes)?;
        self.by_hash.clear();
        self.len = 0;
        for r in &d.records {
            self.note(r);
        }
        Ok(d)
    }

    fn append(&mut self, records: &[Record]) -> Result<(), LogError> {
        let bytes: Vec<u8> = records.iter().flat_map(Record::encode).collect();
        let mut f = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        if crate::failpoint::armed("log.mid_append") {
            let _ = f
                .write_all(&bytes[..bytes.len() / 2])
                .and_then(|_| f.sync_data());
            eprintln!("rogatory: failpoint log.mid_append reached; aborting");
            std::process::abort();
        }
        if let Some(e) = self.poisoned.as_ref() {
            return Err(LogError::Storage(format!(
                "the audit log could not be restored after a failed append ({e}); restart the relay"
            )));
        }
        let before = f.metadata().map_err(io)?.len();
        let written = f.write_all(&bytes).and_then(|()| f.sync_data());
        if let Err(e) = written {
            // Nothing of a failed append may stay: the next append would follow orphan bytes
            // (a signed checkpoint of a tree never handed out) and the log would no longer open.
            if let Err(cut) = f.set_len(before).and_then(|()| f.sync_data()) {
                self.poisoned = Some(cut.to_string());
            }
            return Err(io(e));
        }
        for r in records {
            self.note(r);
        }
        Ok(())
    }

    fn truncate(&mut self, valid_len: usize) -> Result<(), LogError> {
        let mut bytes = Vec::new();
        File::open(&self.path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io)?;
        if valid_len < bytes.len() {
            let mut q = {
                use std::os::unix::fs::OpenOptionsExt as _;
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&self.quarantine)
                    .map_err(io)?
            };
            q.write_all(&bytes[valid_len..])
                .and_then(|_| q.sync_all())
                .map_err(io)?;
            let f = OpenOptions::new()
                .write(true)
                .open(&self.path)
                .map_err(io)?;
            f.set_len(valid_len as u64)
                .and_then(|_| f.sync_all())
                .map_err(io)?;
            self.cut = Some((valid_len as u64, (bytes.len() - valid_len) as u64));
        }
        Ok(())
    }
}

/// Reads every record of a log file (for `audit verify` and tests).
pub fn read_records(path: &Path) -> Result<DecodedRecords, LogError> {
    decode_records(&fs::read(path).map_err(io)?)
}
