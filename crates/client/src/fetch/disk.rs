//! The receiver's side on disk (`docs/cli.md` "Receiving"): parent directories created inside
//! the output directory only, partial files beside their destinations, their publication under
//! the final name, the sweep of what a killed run left, and the per-transfer state file.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rogatory_custody::{FileEntry, Sha256Digest, TransferId};
use sha2::{Digest, Sha256};

use crate::cleanup;
use crate::error::{Error, ErrorKind, Result, io};
use crate::home::write_file;

/// Name prefix of every temporary file `fetch` creates beside a destination.
pub(super) const PARTIAL: &str = ".rogatory-partial-";
/// The per-transfer state directory inside the output directory.
pub(super) const STATE_DIR: &str = ".rogatory-fetch";
/// Files whose ciphertext is larger keep their partial plaintext for a resume; smaller ones are
/// fetched again whole (`docs/cli.md` "Receiving").
pub(super) const RESUMABLE: u64 = 1 << 20;

/// Creates `rel`'s parent directories inside `root`, refusing to follow a symbolic link or to
/// pass through anything that is not a directory (test-plan.md 7).
pub(super) fn safe_parent(root: &Path, rel: &str) -> Result<PathBuf> {
    let mut dir = root.to_owned();
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        dir.push(c);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::new(
                    ErrorKind::Safety,
                    format!(
                        "{} is a symbolic link; refusing to follow it",
                        dir.display()
                    ),
                ));
            }
            Ok(m) if !m.is_dir() => {
                return Err(Error::new(
                    ErrorKind::Safety,
                    format!("{} exists and is not a directory", dir.display()),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&dir).map_err(|e| io("creating", &dir, e))?
            }
            Err(e) => return Err(io("checking", &dir, e)),
        }
    }
    Ok(dir)
}

pub(super) fn sha256_file(p: &Path, buf: &mut [u8]) -> Result<Sha256Digest> {
    let mut f = File::open(p).map_err(|e| io("reading", p, e))?;
    let mut h = Sha256::new();
    loop {
        let n = f.read(buf).map_err(|e| io("reading", p, e))?;
        if n == 0 {
            return Ok(Sha256Digest(h.finalize().into()));
        }
        h.update(&buf[..n]);
    }
}

/// A partial plaintext file an earlier run left: `.rogatory-partial-<transfer>-<file>-<id>`,
/// where `id` names the age header (file key and payload nonce) its chunks were opened with.
#[derive(Debug, Clone)]
pub(super) struct Partial {
    pub(super) path: PathBuf,
    pub(super) id: [u8; 16],
}

fn hex16(id: &[u8; 16]) -> String {
    use std::fmt::Write as _;
    id.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub(super) fn partial_name(t: TransferId, i: usize, id: &[u8; 16]) -> String {
    format!("{PARTIAL}{t}-{i}-{}", hex16(id))
}

/// `(transfer, file, header id)` of a resumable partial's name.
fn parse_partial_name(name: &str) -> Option<(String, usize, [u8; 16])> {
    let rest = name.strip_prefix(PARTIAL)?;
    let mut it = rest.split('-');
    let (t, i, h) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || h.len() != 32 {
        return None;
    }
    let i = i.parse().ok()?;
    let mut id = [0u8; 16];
    for (k, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(h.get(2 * k..2 * k + 2)?, 16).ok()?;
    }
    Some((t.to_owned(), i, id))
}

/// A partial plaintext file being written. Dropped unpublished, it is removed unless it is
/// kept for a resume (large files, on any failure but an integrity one). Closed once written
/// (a verified file waits for its batch without an open descriptor).
#[derive(Debug)]
pub(super) struct PartialFile {
    pub(super) path: PathBuf,
    file: Option<File>,
    pub(super) keep: bool,
    /// Registered for removal on interrupt ([`crate::cleanup`]): files that are not resumable.
    registered: bool,
    /// Bytes written since the last writeback began ([`PartialFile::wrote`]).
    unsynced: u64,
    /// The writeback in flight: `fdatasync` of what was written so far, on a thread of its own.
    flushing: Option<std::thread::JoinHandle<io::Result<()>>>,
}

/// A large partial starts writing itself back every this many bytes ([`PartialFile::wrote`]).
const WRITEBACK_EVERY: u64 = 64 << 20;

impl PartialFile {
    fn new(path: PathBuf, file: File, keep: bool, registered: bool) -> Self {
        Self {
            path,
            file: Some(file),
            keep,
            registered,
            unsynced: 0,
            flushing: None,
        }
    }

    /// An earlier run's partial, opened for a resume (kept on failure, not registered).
    pub(super) fn resumed(path: PathBuf, file: File) -> Self {
        Self::new(path, file, true, false)
    }

    /// `n` more bytes were written. Every [`WRITEBACK_EVERY`] bytes, a thread of its own
    /// `fdatasync`s what is written so far (one at a time), so that the disk writes while the
    /// download goes on and the batch's final sync has only the tail left. Nothing is written
    /// twice. A writeback that failed fails the file ([`PartialFile::finish_writeback`]).
    pub(super) fn wrote(&mut self, n: u64) -> io::Result<()> {
        self.unsynced += n;
        if self.unsynced < WRITEBACK_EVERY
            || self.flushing.as_ref().is_some_and(|h| !h.is_finished())
        {
            return Ok(());
        }
        self.finish_writeback()?;
        let fd = self.file()?.try_clone()?;
        self.unsynced = 0;
        self.flushing = Some(std::thread::spawn(move || fd.sync_data()));
        Ok(())
    }

    /// Waits for the writeback in flight, and returns its error. A file whose writeback failed
    /// is not kept for a resume: its pages may be marked clean without being on disk, and a
    /// sync through another descriptor would not report it again.
    pub(super) fn finish_writeback(&mut self) -> io::Result<()> {
        let r = match self.flushing.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the writeback thread panicked"))),
            None => Ok(()),
        };
        if r.is_err() {
            self.keep = false;
        }
        r
    }

    /// The open file.
    pub(super) fn file(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("partial file already closed"))
    }

    /// The open file, if it is still open (for the digest's thread to write it).
    pub(super) fn fd(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// Closes the file; its data stays in the page cache until the batch makes it durable. A
    /// writeback still in flight is waited for by the batch ([`PartialFile::finish_writeback`]),
    /// on its blocking thread, not here on the thread that runs the connection.
    pub(super) fn close(&mut self) {
        self.file = None;
    }

    /// Renames the (durable, verified) partial to its final name: never over an existing file
    /// without `force` (exit 8). Done with the interrupt registry locked, so that an interrupt
    /// never removes a file that was just published.
    pub(super) fn publish(&mut self, dest: &Path, force: bool) -> Result<()> {
        let path = self.path.clone();
        let rename = || {
            let tp = tempfile::TempPath::try_from_path(&path)?;
            let r = if force {
                tp.persist(dest)
            } else {
                tp.persist_noclobber(dest)
            };
            // Our own guard decides what happens to the partial on failure.
            r.map_err(|e| {
                let _ = e.path.keep();
                e.error
            })
        };
        let r = if self.registered {
            cleanup::unregister_with(&path, rename)
        } else {
            rename()
        };
        match r {
            Ok(()) => {
                self.keep = true;
                self.registered = false;
                Ok(())
            }
            Err(e) => {
                self.keep = false;
                let kind = if e.kind() == io::ErrorKind::AlreadyExists {
                    ErrorKind::Safety
                } else {
                    ErrorKind::Storage
                };
                Err(Error::new(kind, format!("cannot create {}", dest.display())).source(e))
            }
        }
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        self.file = None;
        if self.keep {
            return;
        }
        if self.registered {
            cleanup::unregister_with(&self.path, || {
                let _ = fs::remove_file(&self.path);
            });
        } else {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates the partial file `name` in `dir` (mode 0600, `O_EXCL`: never through a symbolic
/// link); one that is not resumable is registered for removal on interrupt.
pub(super) fn create_partial(dir: &Path, name: &str, resumable: bool) -> Result<PartialFile> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
    };
    // Registered before it exists: an interrupt between the creation and the registration
    // would leave it behind.
    if !resumable {
        cleanup::register(&path);
    }
    let file = match open() {
        // Left by a run killed after the sweep: ours by its name, stale by definition.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&path);
            open()
        }
        r => r,
    };
    match file {
        Ok(file) => Ok(PartialFile::new(path, file, false, !resumable)),
        Err(e) => {
            if !resumable {
                cleanup::unregister_with(&path, || ());
            }
            Err(io("creating", &path, e))
        }
    }
}

/// Opens an earlier run's partial for a resume: a regular file, and still the one the sweep
/// saw (same device and inode after opening), so a symbolic link swapped in is never followed.
pub(super) fn open_partial(p: &Path) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let seen = fs::symlink_metadata(p)?;
    if !seen.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let f = OpenOptions::new().read(true).write(true).open(p)?;
    let now = f.metadata()?;
    if (now.dev(), now.ino()) != (seen.dev(), seen.ino()) {
        return Err(io::Error::other("replaced while being opened"));
    }
    Ok(f)
}

/// Removes `.rogatory-partial-*` regular files from the directories the transfer's files go
/// to, except the resumable partials of this transfer's large files (one per file, in that
/// file's directory), which it returns. Never follows a symbolic link.
pub(super) fn sweep_partials(
    t: TransferId,
    files: &[FileEntry],
    parents: &[PathBuf],
) -> HashMap<usize, Partial> {
    let tid = t.to_string();
    let mut kept: HashMap<usize, Partial> = HashMap::new();
    let dirs: BTreeSet<&PathBuf> = parents.iter().collect();
    for d in dirs {
        if !fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let Ok(rd) = fs::read_dir(d) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(PARTIAL) || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let resumable = parse_partial_name(name).and_then(|(pt, i, id)| {
                let ok = pt == tid
                    && files.get(i).is_some_and(|f| f.ciphertext_size > RESUMABLE)
                    && parents.get(i) == Some(d)
                    && !kept.contains_key(&i);
                ok.then_some((i, id))
            });
            match resumable {
                Some((i, id)) => {
                    kept.insert(i, Partial { path: e.path(), id });
                }
                None => {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    kept
}

/// Creates the per-transfer state file (and its directory) and makes it durable, so that a
/// crash after the first file was published still lets a re-run recognise its own files. It
/// names the transfer folder the fetch is using.
pub(super) fn write_state(output: &Path, state: &Path, folder: &str) -> Result<()> {
    let dir = output.join(STATE_DIR);
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
            return Err(Error::new(
                ErrorKind::Safety,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(_) => {}
        Err(_) => fs::create_dir(&dir).map_err(|e| io("creating", &dir, e))?,
    }
    // A work directory of an older version (ciphertext work files) goes.
    if fs::symlink_metadata(state).is_ok_and(|m| m.is_dir()) {
        fs::remove_dir_all(state).map_err(|e| io("removing", state, e))?;
    }
    let want = format!("{folder}\n");
    if fs::symlink_metadata(state).is_ok_and(|m| m.is_file())
        && fs::read_to_string(state).is_ok_and(|t| t == want)
    {
        return Ok(());
    }
    write_file(state, want.as_bytes(), 0o600, true)?;
    for d in [&dir, &output.to_path_buf()] {
        fsync_dir(d)?;
    }
    Ok(())
}

/// Makes the entries of directory `d` (creations, renames) durable.
pub(super) fn fsync_dir(d: &Path) -> Result<()> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("syncing", d, e))
}
