//! The sender's data path (`protocol.md` §6.1): each plaintext chunk is read once, hashed,
//! encrypted in place and handed to the wire. The digests the manifest needs (plaintext SHA-256
//! and piece root) advance only the first time a piece is produced; their state at the relay's
//! durable prefix is what a later run resumes from, so a resumed send never re-reads or
//! re-encrypts what the relay already holds.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use rogatory_custody::merkle::Frontier;
use rogatory_custody::{
    FileEntry, Inventory, Legal, Manifest, NoteSigner, PieceLayout, Sha256Digest, Timestamp,
    TransferOffer,
};
use rogatory_envelope::{
    AnyIdentity, AnyRecipient, CHUNK_SIZE, Decryptor, Encryptor, FileKey, PayloadKey, PayloadNonce,
    TAG_SIZE,
};
use rogatory_transport::direct::{DIRECT_MIN, DirectRead, DirectSource};
use rogatory_transport::net::PieceSource;
use sha2_resumable::Digest as _;
use sha2_resumable::digest::common::hazmat::SerializableState as _;

use super::heads::{FileKeys, HeadError, HeadMaker};
use super::sources::{Source, changed};
use super::state::{Done, Partial, SealedDocs, StateDir};

type PlainHash = sha2_resumable::Sha256;

/// Why the source cannot go on: carried inside the `io::Error` the transport sees.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    /// A source is not what it was (exit 8).
    #[error("{0}")]
    Changed(String),
    /// Our own state is unusable.
    #[error("{0}")]
    State(String),
    /// Our own state could not be written (running the same send again resumes).
    #[error("{0}")]
    Storage(String),
    /// A bug (running the same send again resumes).
    #[error("{0}")]
    Internal(String),
}

fn changed_err(s: &Source, what: &str) -> io::Error {
    io::Error::other(SourceError::Changed(changed(&s.path, what).to_string()))
}

fn state_err(m: impl Into<String>) -> io::Error {
    io::Error::other(SourceError::State(m.into()))
}

/// One piece produced but not yet durable: its leaf and the plaintext hash after it.
#[derive(Clone, Debug)]
struct Produced {
    leaf: [u8; 32],
    plain: PlainHash,
}

/// The digests of a file being sent. `produced` pieces have been hashed; `ring[k]` is piece
/// `durable + k` (produced, not yet durable).
#[derive(Debug)]
struct Hashing {
    produced: u64,
    plain: PlainHash,
    ring: VecDeque<Produced>,
    durable: u64,
    durable_plain: PlainHash,
    durable_frontier: Frontier,
}

impl Hashing {
    fn at(durable: u64, plain: PlainHash, frontier: Frontier) -> Box<Self> {
        Box::new(Hashing {
            produced: durable,
            plain: plain.clone(),
            ring: VecDeque::new(),
            durable,
            durable_plain: plain,
            durable_frontier: frontier,
        })
    }
}

#[derive(Debug)]
enum Phase {
    /// Nothing produced or durable yet (no state kept: thousands of files cost nothing; at most
    /// [`READ_AHEAD_FILES`] of them are open ahead).
    Pending,
    /// Pieces to produce.
    Open(Box<Hashing>),
    /// Every piece durable.
    Done(Done),
}

#[derive(Debug)]
struct FileState {
    layout: PieceLayout,
    /// Offset of the file's piece 0 in `heads.bin`.
    head_at: u64,
    key: Option<PayloadKey>,
    fd: Option<File>,
    /// How its data is read (a large file directly, until that is refused).
    direct: Direct,
    phase: Phase,
}

/// What sealing needs (`custody.md` §5.4).
#[derive(Debug)]
pub(crate) struct Sealing {
    /// The sender's signing key.
    pub(crate) signer: NoteSigner,
    /// All the legal metadata (the offer has the relay's part).
    pub(crate) legal: Legal,
    /// Who can open the contents: the recipients and the sender.
    pub(crate) contents_to: Vec<AnyRecipient>,
}

/// Where a resume finds the file keys (`custody.md` §8.2).
#[derive(Debug)]
enum SavedKeys {
    /// Not looked for yet.
    Unread,
    /// No `keys.age`: a version 2 state, whose headers carry a stanza for this sender.
    InHeaders,
    /// The keys of `keys.age`, in file order.
    Keys(Vec<FileKey>),
}

/// The sender's [`PieceSource`].
#[derive(Debug)]
pub(crate) struct Streamer {
    /// The headers still being made: a file's is read from `heads.bin` once it is durable.
    /// Before `state`: fields drop in order, and its threads must stop before the send's lock
    /// (in `state`) is let go.
    heads_made: Option<HeadMaker>,
    state: StateDir,
    offer: TransferOffer,
    sources: Vec<Source>,
    files: Vec<FileState>,
    heads: File,
    identities: Vec<AnyIdentity>,
    signer: NoteSigner,
    /// All the legal metadata (the offer has the relay's part).
    legal: Legal,
    /// Who can open the contents: the recipients and the sender.
    contents_to: Vec<AnyRecipient>,
    /// Every file's key, when known at the start (otherwise read from `keys.age`).
    keys: Option<FileKeys>,
    /// The file keys a resume uses.
    saved_keys: SavedKeys,
    /// Files that finished since `done.bin` was last appended to.
    finished: Vec<(u32, Done)>,
    progress_dirty: bool,
    last_save: Instant,
    /// `read_ahead` has considered every file before this one.
    advised: usize,
}

/// Whether a file is read with direct I/O ([`DirectSource`], `protocol.md` §6.1).
#[derive(Debug)]
enum Direct {
    /// A large file not being read now: opened directly when its next chunk is read.
    Closed,
    /// Open, with its blocks (several files are sent at once, each has its own).
    Open(Box<DirectSource>),
    /// Read through the page cache: a small file, or direct I/O was refused.
    Off,
}

impl FileState {
    /// Closes the file's descriptors: the one opened and checked, and a direct one with its
    /// thread and buffers (the thread ends, and lets go of its descriptor and block, once any
    /// read in flight returns). Returns the first.
    fn release(&mut self) -> Option<File> {
        if matches!(self.direct, Direct::Open(_)) {
            self.direct = Direct::Closed;
        }
        self.fd.take()
    }
}

/// Files opened ahead of the one being read (`Streamer::read_ahead`).
const READ_AHEAD_FILES: usize = 32;
/// How much of each file opened ahead the kernel is asked to read; beyond it, its own
/// read-ahead follows a sequential reader.
const READ_AHEAD_BYTES: u64 = 256 << 10;

/// Asks the kernel to start reading the first `len` bytes of `fd` into its cache (best effort).
fn will_need(fd: &File, len: u64) {
    #[cfg(target_os = "linux")]
    let _ = rustix::fs::fadvise(
        fd,
        0,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::WillNeed,
    );
    #[cfg(not(target_os = "linux"))]
    let _ = (fd, len);
}

fn fresh_hash() -> PlainHash {
    PlainHash::new()
}

/// A saved plaintext hash state (`None` if it is not one).
fn plain_from(b: &[u8]) -> Option<PlainHash> {
    let state = b.try_into().ok()?;
    PlainHash::deserialize(state).ok()
}

impl Streamer {
    pub(crate) fn new(
        state: StateDir,
        offer: TransferOffer,
        sources: Vec<Source>,
        identities: Vec<AnyIdentity>,
        sealing: Sealing,
        keys: Option<FileKeys>,
        heads_made: Option<HeadMaker>,
    ) -> io::Result<Self> {
        let Sealing {
            signer,
            legal,
            contents_to,
        } = sealing;
        let heads = state.heads().map_err(io::Error::other)?;
        let mut head_at = 0;
        let files = offer
            .layouts()
            .into_iter()
            .map(|layout| {
                let f = FileState {
                    layout,
                    head_at,
                    key: None,
                    fd: None,
                    direct: if layout.size >= DIRECT_MIN {
                        Direct::Closed
                    } else {
                        Direct::Off
                    },
                    phase: Phase::Pending,
                };
                head_at += layout.head_len;
                f
            })
            .collect::<Vec<_>>();
        if files.len() != sources.len() {
            return Err(state_err("the send state lists another number of files"));
        }
        Ok(Streamer {
            state,
            offer,
            sources,
            files,
            heads,
            identities,
            signer,
            legal,
            contents_to,
            keys,
            heads_made,
            saved_keys: SavedKeys::Unread,
            finished: Vec::new(),
            progress_dirty: false,
            last_save: Instant::now(),
            advised: 0,
        })
    }

    /// The state folder, once the upload is over.
    pub(crate) fn into_state(self) -> StateDir {
        self.state
    }

    fn head(&self, file: usize, out: &mut [u8]) -> io::Result<()> {
        if let Some(h) = &self.heads_made {
            h.wait(file as u32).map_err(|e| match e {
                HeadError::Storage(m) => io::Error::other(SourceError::Storage(m)),
                HeadError::Failed(m) => state_err(m),
                HeadError::Internal(m) => io::Error::other(SourceError::Internal(m)),
            })?;
        }
        let f = &self.files[file];
        if out.len() as u64 != f.layout.head_len {
            return Err(state_err("a header piece of another length was asked for"));
        }
        self.heads.read_exact_at(out, f.head_at)
    }

    /// The payload key of `file`: its key known from the start (a new transfer, or a resume
    /// that checked every kept header against it), or the saved one of `keys.age`, checked
    /// against the saved header's MAC.
    fn key(&mut self, file: usize) -> io::Result<()> {
        if self.files[file].key.is_some() {
            return Ok(());
        }
        let mut head = vec![0u8; self.files[file].layout.head_len as usize];
        self.head(file, &mut head)?;
        self.key_from_head(file, &head)
    }

    /// Derives the payload key of `file` from its header piece `head` (the header, then the
    /// payload nonce) and its key, known or saved.
    fn key_from_head(&mut self, file: usize, head: &[u8]) -> io::Result<()> {
        let Some(nonce_at) = head.len().checked_sub(rogatory_envelope::NONCE_LEN) else {
            return Err(state_err("saved header too short"));
        };
        let mut nonce = PayloadNonce([0; rogatory_envelope::NONCE_LEN]);
        nonce.0.copy_from_slice(&head[nonce_at..]);
        let file_key = match self.keys.as_ref().and_then(|k| k.get(file)) {
            Some(k) => k.clone(),
            None => self.saved_key(file, &head[..nonce_at])?,
        };
        self.files[file].key = Some(PayloadKey::derive(&file_key, &nonce));
        Ok(())
    }

    /// The saved key of `file` (`keys.age`, opened once with the agency's own identity), if it
    /// opens the saved header; for a state without `keys.age`, unwrapped from the header.
    fn saved_key(&mut self, file: usize, header: &[u8]) -> io::Result<FileKey> {
        if matches!(self.saved_keys, SavedKeys::Unread) {
            self.saved_keys = match self.state.keys_age() {
                Ok(Some(b)) => {
                    SavedKeys::Keys(open_file_keys(&b, &self.identities, self.files.len())?)
                }
                Ok(None) => SavedKeys::InHeaders,
                Err(e) => return Err(state_err(format!("reading keys.age: {e}"))),
            };
        }
        let bad =
            |e: &dyn std::fmt::Display| state_err(format!("saved header of file {file}: {e}"));
        let d = Decryptor::new(header).map_err(|e| bad(&e))?;
        match &self.saved_keys {
            SavedKeys::Keys(keys) => {
                let k = keys
                    .get(file)
                    .ok_or_else(|| state_err("keys.age holds fewer keys than files"))?;
                if !d.header().verify_mac(k) {
                    return Err(state_err(format!(
                        "the key saved for file {file} does not open its header"
                    )));
                }
                Ok(k.clone())
            }
            _ => d.unwrap_file_key(&self.identities).map_err(|e| bad(&e)),
        }
    }

    /// Opens `file` for its data pieces, and the next files ahead of it (`read_ahead`).
    fn open(&mut self, file: usize) -> io::Result<()> {
        if self.files[file].fd.is_none() {
            self.files[file].fd = Some(self.open_source(file)?);
        }
        self.read_ahead(file);
        Ok(())
    }

    /// Opens a source and checks that it is the file this transfer began with.
    fn open_source(&self, file: usize) -> io::Result<File> {
        let s = &self.sources[file];
        let fd = File::open(&s.path).map_err(|e| {
            use rustix::io::Errno;
            match Errno::from_io_error(&e) {
                // Out of file descriptors or memory, a failing disk: not a change of the source.
                Some(Errno::MFILE | Errno::NFILE | Errno::NOMEM | Errno::IO) => {
                    io::Error::new(e.kind(), format!("opening {}: {e}", s.path.display()))
                }
                _ => changed_err(s, "it cannot be opened"),
            }
        })?;
        if !s.is(&fd)? {
            return Err(changed_err(s, "its size, times or inode differ"));
        }
        Ok(fd)
    }

    /// Reads `dst.len()` bytes at `off` of `file`, which is open: a large file directly
    /// ([`DirectSource`]) where its file system allows, any other through the page cache.
    /// Returns how many bytes the file had there.
    fn read_source(&mut self, file: usize, off: u64, dst: &mut [u8]) -> io::Result<usize> {
        let f = &mut self.files[file];
        if matches!(f.direct, Direct::Closed) {
            // The descriptor read from must be the file fingerprinted; otherwise (or if it
            // cannot be opened again) the one already open and checked is read instead.
            let s = &self.sources[file];
            f.direct = match DirectSource::open(&s.path, f.layout.size) {
                Ok(Some(d)) if s.is(d.fd()).unwrap_or(false) => Direct::Open(Box::new(d)),
                _ => Direct::Off,
            };
        }
        if let Direct::Open(d) = &mut f.direct {
            match d.read(off, dst) {
                DirectRead::Got(n) if n == dst.len() => return Ok(n),
                // Fewer bytes than asked: the page cache decides (a file system may end a
                // direct read early without the file being shorter).
                DirectRead::Got(_) => {}
                DirectRead::Failed(e) => return Err(e),
                DirectRead::Unsupported => f.direct = Direct::Off,
            }
        }
        let Some(fd) = &f.fd else {
            return Err(state_err("file not open"));
        };
        read_full_at(fd, dst, off)
    }

    /// Opens up to [`READ_AHEAD_FILES`] files after `file` and asks the kernel to start reading
    /// their first [`READ_AHEAD_BYTES`] (`POSIX_FADV_WILLNEED`), so that thousands of small files
    /// are read from a cold cache many at a time instead of one random read after another. A
    /// file that cannot be opened here is reported when its turn comes.
    fn read_ahead(&mut self, file: usize) {
        let end = (file + 1 + READ_AHEAD_FILES).min(self.files.len());
        let mut next = self.advised.max(file + 1);
        while next < end {
            let f = &self.files[next];
            if f.fd.is_none()
                && f.layout.size > 0
                && matches!(f.phase, Phase::Pending)
                && let Ok(fd) = self.open_source(next)
            {
                // A file read directly does not go through the page cache.
                if matches!(self.files[next].direct, Direct::Off) {
                    will_need(&fd, self.files[next].layout.size.min(READ_AHEAD_BYTES));
                }
                self.files[next].fd = Some(fd);
            }
            next += 1;
        }
        self.advised = self.advised.max(next);
    }

    /// Produces piece `piece` of `file` into `out` (exactly its length, not zeroed: every
    /// byte is written); returns its leaf.
    fn produce(&mut self, file: usize, piece: u64, out: &mut [u8]) -> io::Result<[u8; 32]> {
        if piece == 0 {
            self.head(file, out)?;
            // The key now, from the header in hand, rather than from `heads.bin` again at the
            // first payload piece.
            if self.files[file].key.is_none() {
                self.key_from_head(file, out)?;
            }
            return Ok(self.offer.piece_hash().leaf(out));
        }
        self.key(file)?;
        self.open(file)?;
        let f = &self.files[file];
        let size = f.layout.size;
        let chunk = piece - 1;
        let off = chunk * CHUNK_SIZE as u64;
        let len = (size - off).min(CHUNK_SIZE as u64) as usize;
        let last = piece + 1 == f.layout.count();
        if out.len() != len + TAG_SIZE {
            return Err(state_err(format!(
                "piece {piece} of file {file} asked with another length"
            )));
        }
        let n = self.read_source(file, off, &mut out[..len])?;
        if n != len {
            return Err(changed_err(
                &self.sources[file],
                "it is shorter than it was",
            ));
        }
        if let Phase::Open(h) = &mut self.files[file].phase
            && h.produced == piece
        {
            h.plain.update(&out[..len]);
        }
        let Some(key) = &self.files[file].key else {
            return Err(state_err("no payload key"));
        };
        key.seal_chunk(chunk, last, out)
            .map_err(|e| state_err(e.to_string()))?;
        if last {
            // Read to its end (nothing follows the last chunk), and still the file it was when
            // opened (perhaps 32 files earlier, `read_ahead`). Then closed: thousands of small
            // files must not stay open until the relay has them durably; a resend after a
            // rewind opens and checks it again.
            if let Some(fd) = self.files[file].release() {
                let s = &self.sources[file];
                let now = super::sources::Fingerprint::of(&fd.metadata()?);
                if now.size > size {
                    return Err(changed_err(s, "it grew"));
                }
                if now != s.fp {
                    return Err(changed_err(s, "it was modified while it was read"));
                }
            }
        }
        Ok(self.offer.piece_hash().leaf(out))
    }

    /// Brings a file's digests from its saved resume point up to `target` pieces by
    /// re-reading them (only when the relay is ahead of what this sender saved).
    fn catch_up(&mut self, file: usize, target: u64) -> io::Result<()> {
        let mut scratch = vec![0u8; rogatory_envelope::ENCRYPTED_CHUNK_SIZE];
        loop {
            let p = match &self.files[file].phase {
                Phase::Pending => 0,
                Phase::Open(h) => h.produced,
                Phase::Done(_) => return Ok(()),
            };
            if p >= target {
                break;
            }
            let Some(r) = self.files[file].layout.range(p) else {
                return Err(state_err("the relay holds more pieces than the file has"));
            };
            let len = (r.end - r.start) as usize;
            if scratch.len() < len {
                scratch.resize(len, 0);
            }
            self.piece(file as u32, p, &mut scratch[..len])?;
        }
        self.durable(file as u32, target)
    }

    fn save_progress(&mut self, force: bool) -> io::Result<()> {
        if !force && (!self.progress_dirty || self.last_save.elapsed() < Duration::from_millis(500))
        {
            return Ok(());
        }
        let finished = std::mem::take(&mut self.finished);
        self.state
            .append_done(&finished)
            .map_err(io::Error::other)?;
        let partial = self
            .files
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match &f.phase {
                Phase::Open(h) if h.durable > 0 => Some(Partial {
                    file: i as u32,
                    durable: h.durable,
                    plain: h.durable_plain.serialize().to_vec(),
                    frontier: h.durable_frontier.to_bytes(),
                }),
                _ => None,
            })
            .collect();
        self.state.save_partial(partial).map_err(io::Error::other)?;
        self.progress_dirty = false;
        self.last_save = Instant::now();
        Ok(())
    }

    /// Whether every file's digests are final.
    fn all_done(&self) -> bool {
        self.files.iter().all(|f| matches!(f.phase, Phase::Done(_)))
    }
}

fn read_full_at(fd: &File, buf: &mut [u8], mut off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match fd.read_at(&mut buf[n..], off) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                off += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl PieceSource for Streamer {
    fn resume(&mut self, durable: &[u64]) -> io::Result<()> {
        if durable.len() != self.files.len() {
            return Err(state_err("the relay reports another number of files"));
        }
        // Headers made again on this run were never sent: a file the relay holds a piece of
        // must have kept its header (it is made durable before the file's first piece leaves).
        if let Some(h) = &self.heads_made
            && let Some(i) = (h.from() as usize..durable.len()).find(|&i| durable[i] > 0)
        {
            return Err(state_err(format!(
                "the relay holds pieces of file {i}, whose header this send did not keep"
            )));
        }
        let mut done = self.state.load_done();
        let mut partial = self.state.load_partial();
        // Every file's phase first, then the catching up: a file caught up opens the next ones
        // ahead of it (`read_ahead`), which must already know which are finished.
        let mut behind = Vec::new();
        for (i, &d) in durable.iter().enumerate() {
            let count = self.files[i].layout.count();
            // The saved point, if it is exactly where the relay is.
            if d == count
                && let Some(rec) = done.remove(&(i as u32))
            {
                self.files[i].phase = Phase::Done(rec);
                continue;
            }
            let mut start = (0, fresh_hash(), Frontier::new());
            if let Some(p) = partial.remove(&(i as u32))
                && p.durable <= d
                && let (Some(plain), Some(fr)) =
                    (plain_from(&p.plain), Frontier::from_bytes(&p.frontier))
                && fr.len() == p.durable
            {
                start = (p.durable, plain, fr);
            }
            let (at, plain, frontier) = start;
            self.files[i].phase = if at == 0 {
                Phase::Pending
            } else {
                Phase::Open(Hashing::at(at, plain, frontier))
            };
            if at < d {
                behind.push((i, d));
            }
        }
        for (i, d) in behind {
            self.catch_up(i, d)?;
        }
        self.progress_dirty = true;
        self.save_progress(true)
    }

    fn piece(&mut self, file: u32, piece: u64, out: &mut [u8]) -> io::Result<()> {
        let i = file as usize;
        if i >= self.files.len() {
            return Err(state_err("no such file"));
        }
        if matches!(self.files[i].phase, Phase::Pending) {
            self.files[i].phase = Phase::Open(Hashing::at(0, fresh_hash(), Frontier::new()));
        }
        let leaf = self.produce(i, piece, out)?;
        let Phase::Open(h) = &mut self.files[i].phase else {
            // A resend of a finished file's piece: nothing to account.
            return Ok(());
        };
        if piece == h.produced {
            let plain = h.plain.clone();
            h.ring.push_back(Produced { leaf, plain });
            h.produced += 1;
        } else if piece < h.produced && piece >= h.durable {
            // A resend after a rewind: byte for byte what was produced before, or the source
            // changed under us.
            let k = (piece - h.durable) as usize;
            if h.ring.get(k).is_none_or(|p| p.leaf != leaf) {
                return Err(changed_err(&self.sources[i], "a re-read piece differs"));
            }
        } else {
            return Err(state_err(format!(
                "piece {piece} of file {file} asked out of order"
            )));
        }
        Ok(())
    }

    fn durable(&mut self, file: u32, pieces: u64) -> io::Result<()> {
        let i = file as usize;
        let count = self.files.get(i).map_or(0, |f| f.layout.count());
        let Some(f) = self.files.get_mut(i) else {
            return Err(state_err("no such file"));
        };
        let h = match &mut f.phase {
            Phase::Open(h) => h,
            Phase::Done(_) => return Ok(()),
            Phase::Pending if pieces == 0 => return Ok(()),
            Phase::Pending => {
                return Err(state_err(
                    "the relay holds pieces this sender never produced",
                ));
            }
        };
        if pieces <= h.durable {
            return Ok(());
        }
        if pieces > h.produced {
            return Err(state_err(
                "the relay holds pieces this sender never produced",
            ));
        }
        while h.durable < pieces {
            let Some(p) = h.ring.pop_front() else {
                return Err(state_err("resume ring out of step"));
            };
            h.durable_frontier.push(p.leaf);
            h.durable_plain = p.plain;
            h.durable += 1;
        }
        if pieces == count {
            let rec = Done {
                sha256: h.durable_plain.clone().finalize().into(),
                root: h.durable_frontier.root(),
            };
            f.phase = Phase::Done(rec);
            f.release();
            f.key = None;
            self.finished.push((file, rec));
        }
        self.progress_dirty = true;
        self.save_progress(false)
    }

    fn seal(&mut self) -> io::Result<(String, String, Vec<u8>)> {
        self.save_progress(true)?;
        if !self.all_done() {
            return Err(state_err("sealing before every file is durable"));
        }
        let transfer = self.offer.transfer_id;
        let entries = self
            .files
            .iter()
            .zip(&self.sources)
            .map(|(f, s)| {
                let Phase::Done(d) = &f.phase else {
                    return Err(state_err("file not finished"));
                };
                Ok(FileEntry {
                    path: s.rel.clone(),
                    size: f.layout.size,
                    sha256: Sha256Digest(d.sha256),
                    ciphertext_size: f.layout.ciphertext_size,
                    piece_root: Sha256Digest(d.root),
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut inventory = Inventory::new(
            transfer,
            self.offer.sender.clone(),
            self.offer.recipients.clone(),
            self.offer.created_at,
            self.legal.clone(),
            entries,
        )
        .map_err(|e| state_err(format!("manifest: {e}")))?;
        // A transfer keeps the piece hash it was offered with (`custody.md` §5.2).
        inventory.piece_hash = self.offer.piece_hash();
        // A seal made by an earlier run is sent again, never re-signed, if it seals exactly
        // this data (its contents were salted and encrypted once, `custody.md` §5.4).
        if let Some(d) = self.state.sealed()
            && let Ok(m) = Manifest::parse(d.manifest.as_bytes())
            && m.offer() == self.offer
            && m.holds_contents_ciphertext(&d.contents_age)
            && m.open_contents(&d.contents).is_ok_and(|i| i == inventory)
        {
            return Ok((d.seal, d.manifest, d.contents_age));
        }
        let contents = inventory.contents();
        let contents_json = contents.to_json();
        let contents_age = encrypt_contents(&self.contents_to, &contents_json)?;
        let manifest = inventory
            .manifest(self.offer.legal.clone(), &contents, &contents_age)
            .map_err(|e| state_err(format!("manifest: {e}")))?;
        if manifest.offer() != self.offer {
            return Err(state_err("the manifest does not match the offer"));
        }
        let json = String::from_utf8(manifest.to_json())
            .map_err(|_| state_err("manifest is not UTF-8"))?;
        let now = Timestamp::from_datetime(time::OffsetDateTime::now_utc());
        let seal = manifest
            .seal(&self.signer, now)
            .map_err(|e| state_err(format!("sealing: {e}")))?;
        let docs = SealedDocs {
            manifest: json,
            contents: contents_json,
            contents_age,
            seal,
        };
        self.state.save_sealed(&docs).map_err(io::Error::other)?;
        Ok((docs.seal, docs.manifest, docs.contents_age))
    }
}

/// The file keys of `keys.age` (16 bytes each, in file order), opened with the agency's own
/// identity; exactly `count` of them.
pub(crate) fn open_file_keys<C: FromIterator<FileKey>>(
    age: &[u8],
    identities: &[AnyIdentity],
    count: usize,
) -> io::Result<C> {
    use std::io::Read as _;
    let bad = |e: &dyn std::fmt::Display| state_err(format!("keys.age: {e}"));
    let mut r = Decryptor::new(age)
        .and_then(|d| d.decrypt(identities))
        .map_err(|e| bad(&e))?;
    // Read into a wiped buffer of exactly the expected size, then make sure nothing follows.
    let mut plain = zeroize::Zeroizing::new(vec![0u8; count * rogatory_envelope::FILE_KEY_LEN]);
    r.read_exact(&mut plain)
        .map_err(|e| bad(&format!("fewer than {count} keys ({e})")))?;
    let mut more = zeroize::Zeroizing::new([0u8; 1]);
    if r.read(&mut more[..]).map_err(|e| bad(&e))? != 0 {
        return Err(state_err(format!("keys.age holds more than {count} keys")));
    }
    Ok(FileKey::collect_from_bytes(&plain))
}

/// The contents, age-encrypted (`custody.md` §5.4).
fn encrypt_contents(to: &[AnyRecipient], json: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Write as _;
    let enc = Encryptor::new(to).map_err(|e| state_err(format!("encrypting the contents: {e}")))?;
    let mut out = Vec::with_capacity(json.len() + 1024);
    let mut w = enc
        .wrap_output(&mut out)
        .map_err(|e| state_err(format!("encrypting the contents: {e}")))?;
    w.write_all(json)?;
    w.finish()?;
    Ok(out)
}
