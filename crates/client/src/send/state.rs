//! What a send keeps on disk while it runs (`docs/cli.md` "send", `protocol.md` §6.1): enough
//! to resume without a ciphertext copy, never a byte of evidence.
//!
//! ```text
//! outbox/<key>/state.bin     the offer (transfer id, sizes, legal metadata) and the sources
//!                            with their fingerprints; written once, fsynced, before OFFER
//! outbox/<key>/heads.bin     piece 0 of every file (age header and payload nonce), in file
//!                            order: it fixes each file's nonce, so any piece can be re-encrypted
//!                            byte for byte; appended in batches while the upload runs, each
//!                            fsynced before any of its files is sent (`heads.rs`)
//! outbox/<key>/keys.age      every file key (16 bytes each, in file order), age-encrypted to
//!                            this sender's own key: the files are encrypted to the recipients
//!                            only (`custody.md` §8.2); written once, fsynced, before OFFER
//! outbox/<key>/progress.bin  per unfinished file: the relay's durable piece count, the
//!                            plaintext SHA-256 state and the piece-root frontier at that count
//!                            (replaced atomically; no fsync: an older copy only costs re-reading)
//! outbox/<key>/done.bin      per finished file: plaintext SHA-256 and piece root (appended)
//! outbox/<key>/manifest.json, contents.json, contents.age, seal.note
//!                            the sealed manifest and its contents, plain and encrypted
//!                            (`custody.md` §5.4), once every piece is durable
//! outbox/<key>.lock          held (`flock`) by the one process running the send, removed when
//!                            it ends ([`StateDir::lock`])
//! outbox/<key>.sent          the marker of a receipted send (written before the folder goes)
//! ```
//!
//! After the custody receipt the folder is removed; the manifest, contents, seal and receipt are
//! kept under `sent/<transfer>/` and `receipts/`, and so are `state.bin`, `heads.bin`,
//! `keys.age` and `done.bin`: a few hundred bytes to about 1.6 KiB per file, and no evidence
//! (the headers open only with a recipient's key, like the relay's copy; `keys.age` only with
//! this sender's). They let a later `send` re-encrypt,
//! byte for byte, the pieces a relay reports lost or damaged (`relay.md` §10) and put the folder
//! back for that.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::sources::Source;
use crate::error::{Error, ErrorKind, Result, io};
use crate::home::write_file;

/// `state.bin`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Saved {
    pub(crate) version: u32,
    pub(crate) offer: String,
    /// All the legal metadata as JSON (the offer carries only what the relay's policy asks for;
    /// the rest goes into the encrypted contents, `custody.md` §5.4).
    pub(crate) legal: String,
    pub(crate) sources: Vec<Source>,
}

/// The sealed documents of a send (`custody.md` §5.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SealedDocs {
    /// The manifest JSON.
    pub(crate) manifest: String,
    /// The contents JSON (names, plaintext digests, all the legal metadata).
    pub(crate) contents: Vec<u8>,
    /// The contents, age-encrypted to the recipients and the sender.
    pub(crate) contents_age: Vec<u8>,
    /// The seal note.
    pub(crate) seal: String,
}

/// One unfinished file in `progress.bin`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Partial {
    pub(crate) file: u32,
    pub(crate) durable: u64,
    /// Serialized plaintext SHA-256 state after the durable pieces.
    pub(crate) plain: Vec<u8>,
    /// Piece-root frontier of the durable pieces.
    pub(crate) frontier: Vec<u8>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    partial: Vec<Partial>,
}

/// A finished file in `done.bin`: plaintext SHA-256 and piece root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Done {
    pub(crate) sha256: [u8; 32],
    pub(crate) root: [u8; 32],
}

const DONE_RECORD: usize = 4 + 32 + 32 + 4;
/// Version 4: `heads.bin` is written while the upload runs and may hold fewer headers than
/// files. Version 3 (the sender's file keys in `keys.age`, `custody.md` §8.2, every header
/// written before the offer) and version 2 states (every header carries a stanza for the
/// sender) are still resumed.
pub(crate) const STATE_VERSION: u32 = 4;
const STATE_VERSION_KEYS_AGE: u32 = 3;
const STATE_VERSION_HEADER_KEYS: u32 = 2;

/// The state folder of one send.
#[derive(Debug)]
pub(crate) struct StateDir {
    pub(crate) dir: PathBuf,
    done: Option<File>,
    /// `<dir>.lock`, once [`StateDir::lock`] took it.
    lock: Option<SendLock>,
}

/// The lock of one send ([`StateDir::lock`]): its file is removed, then released, when this is
/// dropped, so that no lock file outlives the run that held it.
#[derive(Debug)]
struct SendLock {
    path: PathBuf,
    // Closed (and so unlocked) after `drop` removed the path.
    file: File,
}

impl Drop for SendLock {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        // Only the file this lock holds (not one another run made after it was removed by hand).
        if let (Ok(held), Ok(now)) = (self.file.metadata(), fs::metadata(&self.path))
            && held.ino() == now.ino()
            && held.dev() == now.dev()
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl StateDir {
    pub(crate) fn new(dir: PathBuf) -> Self {
        StateDir {
            dir,
            done: None,
            lock: None,
        }
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.with_extension("lock")
    }

    /// Takes the send's lock, `<dir>.lock` beside its folder (`flock`; refused at once, exit 8,
    /// if another process holds it), for as long as this value lives: one process at a time
    /// sets up, resumes or finishes a send. Two runs of one send would otherwise append
    /// headers to the same `heads.bin`, and a new send's set-up would remove a running one's
    /// folder as incomplete. The lock file is removed when the lock is let go.
    pub(crate) fn lock(&mut self) -> Result<()> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let p = self.lock_path();
        if let Some(parent) = p.parent() {
            crate::home::create_private_dir(parent)?;
        }
        let busy = || {
            Error::new(
                ErrorKind::Safety,
                format!("another run of this send is going on ({})", p.display()),
            )
            .hint("wait for it to end; if it stops, the same command resumes it")
        };
        // The run that held it removes it when it ends: a lock taken on the file it removed
        // guards nothing, so the file is opened again.
        for _ in 0..8 {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&p)
                .map_err(|e| io("opening", &p, e))?;
            match fs4::FileExt::try_lock(&f) {
                Ok(()) => {}
                Err(fs4::TryLockError::WouldBlock) => return Err(busy()),
                Err(fs4::TryLockError::Error(e)) => return Err(io("locking", &p, e)),
            }
            let held = f.metadata().map_err(|e| io("reading", &p, e))?;
            if fs::metadata(&p).is_ok_and(|m| m.ino() == held.ino() && m.dev() == held.dev()) {
                self.lock = Some(SendLock { path: p, file: f });
                return Ok(());
            }
        }
        Err(busy())
    }

    /// Lets the send's lock go (its file removed).
    pub(crate) fn unlock(&mut self) {
        self.lock = None;
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether a send was set up here (its state is complete).
    pub(crate) fn exists(&self) -> bool {
        self.path("state.bin").exists()
    }

    /// Writes the file keys, an empty `heads.bin` and the state (fsynced, state last: its
    /// presence means complete), and returns `heads.bin` opened for appending the headers.
    pub(crate) fn create(&self, saved: &Saved, keys_age: &[u8]) -> Result<File> {
        fs::create_dir_all(&self.dir).map_err(|e| io("creating", &self.dir, e))?;
        crate::home::make_private(&self.dir)?;
        write_file(&self.path("heads.bin"), b"", 0o600, true)?;
        write_file(&self.path("keys.age"), keys_age, 0o600, true)?;
        let bytes = postcard::to_stdvec(saved)
            .map_err(|e| Error::new(ErrorKind::Internal, "encoding the send state").source(e))?;
        write_file(&self.path("state.bin"), &bytes, 0o600, true)?;
        self.append_heads()
    }

    fn append_heads(&self) -> Result<File> {
        let p = self.path("heads.bin");
        OpenOptions::new()
            .append(true)
            .open(&p)
            .map_err(|e| io("opening", &p, e))
    }

    /// Cuts `heads.bin` to its first `len` bytes (the headers a resume keeps, made durable),
    /// and returns it opened for appending the others.
    pub(crate) fn truncate_heads(&self, len: u64) -> Result<File> {
        let p = self.path("heads.bin");
        let f = self.append_heads()?;
        f.set_len(len)
            .and_then(|()| f.sync_all())
            .map_err(|e| io("truncating", &p, e))?;
        Ok(f)
    }

    pub(crate) fn load(&self) -> Result<Saved> {
        let p = self.path("state.bin");
        let b = fs::read(&p).map_err(|e| io("reading", &p, e))?;
        let s: Saved = postcard::from_bytes(&b).map_err(|e| {
            Error::new(
                ErrorKind::Integrity,
                format!("{}: damaged send state", p.display()),
            )
            .source(e)
            .hint("remove the folder and send again with --restart")
        })?;
        if ![
            STATE_VERSION,
            STATE_VERSION_KEYS_AGE,
            STATE_VERSION_HEADER_KEYS,
        ]
        .contains(&s.version)
        {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("{}: send state of another version", p.display()),
            )
            .hint("send again with --restart"));
        }
        Ok(s)
    }

    /// `keys.age`, or `None` if there is none (a version 2 state, whose headers carry a
    /// stanza for the sender instead). Any other read error is an error.
    pub(crate) fn keys_age(&self) -> std::io::Result<Option<Vec<u8>>> {
        match fs::read(self.path("keys.age")) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A state of `version` 3 or later must hold `keys.age`: refused before anything is
    /// offered (exit 3), rather than when the first piece is needed.
    pub(crate) fn require_keys(&self, version: u32) -> Result<()> {
        if version < STATE_VERSION_KEYS_AGE || self.path("keys.age").exists() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "{}: the send state has no keys.age (its file keys)",
                self.dir.display()
            ),
        )
        .hint("send again with --restart to start a new transfer"))
    }

    pub(crate) fn heads(&self) -> Result<File> {
        let p = self.path("heads.bin");
        File::open(&p).map_err(|e| io("reading", &p, e))
    }

    /// Unfinished files' resume points (an unreadable file gives none: resume re-reads more).
    pub(crate) fn load_partial(&self) -> BTreeMap<u32, Partial> {
        let p = self.path("progress.bin");
        let Ok(b) = fs::read(&p) else {
            return BTreeMap::new();
        };
        let pr: Progress = postcard::from_bytes(&b).unwrap_or_default();
        pr.partial.into_iter().map(|p| (p.file, p)).collect()
    }

    /// Replaces `progress.bin` (temp file and rename; no fsync, see the module doc).
    pub(crate) fn save_partial(&self, partial: Vec<Partial>) -> Result<()> {
        let p = self.path("progress.bin");
        let tmp = self.path("progress.bin.tmp");
        let bytes = postcard::to_stdvec(&Progress { partial })
            .map_err(|e| Error::new(ErrorKind::Internal, "encoding progress").source(e))?;
        fs::write(&tmp, bytes).map_err(|e| io("writing", &tmp, e))?;
        fs::rename(&tmp, &p).map_err(|e| io("renaming", &p, e))
    }

    /// Finished files (a torn or damaged tail is ignored: those files are hashed again).
    pub(crate) fn load_done(&self) -> BTreeMap<u32, Done> {
        let mut out = BTreeMap::new();
        let Ok(b) = fs::read(self.path("done.bin")) else {
            return out;
        };
        for r in b.chunks_exact(DONE_RECORD) {
            let (body, check) = r.split_at(DONE_RECORD - 4);
            if sha2::Sha256::digest(body)[..4] != *check {
                break;
            }
            let mut idx = [0u8; 4];
            idx.copy_from_slice(&body[..4]);
            let mut d = Done {
                sha256: [0; 32],
                root: [0; 32],
            };
            d.sha256.copy_from_slice(&body[4..36]);
            d.root.copy_from_slice(&body[36..68]);
            out.insert(u32::from_le_bytes(idx), d);
        }
        out
    }

    /// Appends finished files to `done.bin` (no fsync, see the module doc).
    pub(crate) fn append_done(&mut self, records: &[(u32, Done)]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let p = self.path("done.bin");
        if self.done.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| io("opening", &p, e))?;
            self.done = Some(f);
        }
        let mut buf = Vec::with_capacity(records.len() * DONE_RECORD);
        for (i, d) in records {
            let start = buf.len();
            buf.extend_from_slice(&i.to_le_bytes());
            buf.extend_from_slice(&d.sha256);
            buf.extend_from_slice(&d.root);
            let check = sha2::Sha256::digest(&buf[start..]);
            buf.extend_from_slice(&check[..4]);
        }
        match &mut self.done {
            Some(f) => f.write_all(&buf).map_err(|e| io("writing", &p, e)),
            None => Ok(()),
        }
    }

    /// The sealed manifest, if this send got that far.
    pub(crate) fn sealed(&self) -> Option<SealedDocs> {
        Some(SealedDocs {
            manifest: fs::read_to_string(self.path("manifest.json")).ok()?,
            contents: fs::read(self.path("contents.json")).ok()?,
            contents_age: fs::read(self.path("contents.age")).ok()?,
            seal: fs::read_to_string(self.path("seal.note")).ok()?,
        })
    }

    pub(crate) fn save_sealed(&self, d: &SealedDocs) -> Result<()> {
        for (name, bytes) in [
            ("manifest.json", d.manifest.as_bytes()),
            ("contents.json", &d.contents[..]),
            ("contents.age", &d.contents_age[..]),
        ] {
            write_file(&self.path(name), bytes, 0o600, true)?;
        }
        // The seal last: its presence means the others are complete.
        write_file(&self.path("seal.note"), d.seal.as_bytes(), 0o600, true)
    }

    /// Puts a receipted transfer's kept state (`sent/<transfer>/`, see [`StateDir::finish`])
    /// back here, so that the ordinary resume re-sends what a relay lost; `state.bin` last.
    pub(crate) fn restore(&self, sent: &Path) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| io("creating", &self.dir, e))?;
        crate::home::make_private(&self.dir)?;
        for name in [
            "heads.bin",
            "keys.age",
            "done.bin",
            "manifest.json",
            "contents.json",
            "contents.age",
            "seal.note",
            "state.bin",
        ] {
            let from = sent.join(name);
            let bytes = match fs::read(&from) {
                Ok(b) => b,
                Err(e)
                    if (name == "done.bin" || name == "keys.age")
                        && e.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(e) => return Err(io("reading", &from, e)),
            };
            write_file(&self.path(name), &bytes, 0o600, true)?;
        }
        Ok(())
    }

    /// The transfer is receipted: keep the manifest, contents and seal under
    /// `sent/<transfer>/`, with what re-sends lost pieces (the state, the heads and the finished
    /// files' digests), drop everything else.
    pub(crate) fn finish(self, sent: &Path) -> Result<()> {
        fs::create_dir_all(sent).map_err(|e| io("creating", sent, e))?;
        for name in [
            "manifest.json",
            "contents.json",
            "contents.age",
            "seal.note",
            "heads.bin",
            "keys.age",
            "state.bin",
        ] {
            let from = self.path(name);
            let to = sent.join(name);
            match fs::rename(&from, &to) {
                Ok(()) => {}
                // A send set up before `keys.age` existed has none.
                Err(e) if name == "keys.age" && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("moving", &from, e)),
            }
        }
        // done.bin only saves re-reading the sources on a repair: best effort, made durable
        // like the rest.
        let done = self.path("done.bin");
        if File::open(&done).and_then(|f| f.sync_all()).is_ok() {
            let _ = fs::rename(&done, sent.join("done.bin"));
        }
        if let Some(parent) = sent.parent() {
            File::open(sent)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("syncing", sent, e))?;
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("syncing", parent, e))?;
        }
        drop(self.done);
        fs::remove_dir_all(&self.dir).map_err(|e| io("removing", &self.dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(b: u8) -> Done {
        Done {
            sha256: [b; 32],
            root: [b ^ 0xff; 32],
        }
    }

    #[test]
    fn finished_files_survive_a_torn_or_damaged_tail() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut st = StateDir::new(tmp.path().to_owned());
        st.append_done(&[(0, done(1)), (7, done(2))])
            .expect("append");
        st.append_done(&[(9, done(3))]).expect("append");
        let all = st.load_done();
        assert_eq!(all.len(), 3);
        assert_eq!(all[&7], done(2));
        // A torn last record is ignored: that file is hashed again on resume.
        let p = st.path("done.bin");
        let mut b = fs::read(&p).expect("read");
        b.truncate(b.len() - 5);
        fs::write(&p, &b).expect("write");
        assert_eq!(st.load_done().len(), 2);
        // A damaged record stops the scan there.
        b[DONE_RECORD + 10] ^= 1;
        fs::write(&p, &b).expect("write");
        assert_eq!(st.load_done().keys().copied().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn progress_is_replaced_whole_and_a_bad_file_means_none() {
        let tmp = tempfile::tempdir().expect("tmp");
        let st = StateDir::new(tmp.path().to_owned());
        assert!(st.load_partial().is_empty());
        let p = Partial {
            file: 3,
            durable: 12,
            plain: vec![1, 2, 3],
            frontier: vec![4; 8],
        };
        st.save_partial(vec![p.clone()]).expect("save");
        assert_eq!(st.load_partial()[&3].durable, 12);
        st.save_partial(vec![]).expect("save");
        assert!(st.load_partial().is_empty());
        fs::write(st.path("progress.bin"), b"\xff\xff\xff garbage").expect("write");
        assert!(st.load_partial().is_empty());
    }
}
