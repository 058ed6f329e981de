//! Where ciphertext lives (`docs/relay.md` §2): a small file-system interface so that tests can
//! inject faults — fail the Nth operation ([`Faulty`]), or crash at the Nth sync and drop or
//! garble every write that was not synced ([`SimStorage`]).

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rogatory_transport::direct::DirectSource;
use rogatory_transport::staged::{STAGE_MIN, StagedFile};

/// File operations the relay's data path uses. Every write is positional; nothing is durable
/// until [`Storage::sync`] (file data) and [`Storage::sync_dir`] (names in a directory).
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Writes `data` at `offset`, creating the file if needed (mode 0600).
    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end.
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Makes the file's data durable.
    fn sync(&self, path: &Path) -> io::Result<()>;
    /// Renames a file (not durable until the directories are synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the names in a directory durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes a file (missing is fine).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The file's size, `None` if it does not exist.
    fn len(&self, path: &Path) -> io::Result<Option<u64>>;
    /// Bytes available to the relay on the file system holding `path`.
    fn available_space(&self, path: &Path) -> io::Result<u64>;
    /// Drops any cached handle of `path`, so that the next operation opens the file by name
    /// again (it may have been removed or replaced behind the relay's back: `relay.md` §10).
    fn reopen(&self, _path: &Path) {}
    /// `path` (of `size` bytes) opened for direct reads, a block read ahead on a thread of its
    /// own (`protocol.md` §6.3), where this storage and its file system allow it; `None` means
    /// [`Storage::read_at`], also when opening fails (that read reports the error).
    fn open_direct(&self, _path: &Path, _size: u64) -> Option<DirectSource> {
        None
    }
}

/// The real file system. Keeps recently used files open (positional I/O), at most `MAX_OPEN`.
/// A pack's large pieces are gathered into aligned blocks and written directly where the file
/// system allows it (`relay.md` §3 "Writing the pack", [`StagedFile`]): every operation that
/// needs the bytes in the file (a sync, a read, its length, a rename) puts them there first.
#[derive(Debug, Default)]
pub struct DiskStorage {
    open: Mutex<HashMap<PathBuf, Arc<File>>>,
    staged: Mutex<HashMap<PathBuf, Arc<Mutex<StagedFile>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

const MAX_OPEN: usize = 256;
/// A pack not written for this long lets go of its staging (its buffers, its writing thread
/// and its descriptors) when another pack starts one: an upload whose sender went away.
#[cfg(not(test))]
const STAGED_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// In the unit tests every staging not in use is idle.
#[cfg(test)]
const STAGED_IDLE: std::time::Duration = std::time::Duration::ZERO;

impl DiskStorage {
    /// A new instance.
    pub fn new() -> Self {
        Self::default()
    }

    fn file(&self, path: &Path, create: bool) -> io::Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.get(path) {
            return Ok(f.clone());
        }
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(create);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let f = Arc::new(o.open(path)?);
        if open.len() >= MAX_OPEN {
            open.clear();
        }
        open.insert(path.to_owned(), f.clone());
        Ok(f)
    }

    fn forget(&self, path: &Path) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
    }

    /// The staged writes of `path`, if any.
    fn staged_of(&self, path: &Path) -> Option<Arc<Mutex<StagedFile>>> {
        lock(&self.staged).get(path).cloned()
    }

    /// Puts what is staged for `path` in the file.
    fn flush(&self, path: &Path) -> io::Result<()> {
        match self.staged_of(path) {
            Some(s) => lock(&s).flush(),
            None => Ok(()),
        }
    }

    /// Puts what is staged for `path` in the file and lets go of its staging; on an error the
    /// staging stays (its bytes are not lost).
    fn close_staged(&self, path: &Path) -> io::Result<()> {
        let Some(s) = self.staged_of(path) else {
            return Ok(());
        };
        lock(&s).retire()?;
        self.forget_staged(path, &s);
        Ok(())
    }

    /// Takes `s` out of the map if it is still `path`'s staging.
    fn forget_staged(&self, path: &Path, s: &Arc<Mutex<StagedFile>>) {
        let mut staged = lock(&self.staged);
        if staged.get(path).is_some_and(|x| Arc::ptr_eq(x, s)) {
            staged.remove(path);
        }
    }

    /// Lets go of the stagings of packs not written for [`STAGED_IDLE`], outside the map's lock
    /// (a flush may wait for the device) and never waiting for one in use. One that cannot be
    /// flushed stays, its bytes not yet in the file.
    fn sweep_idle(&self) {
        let idle: Vec<(PathBuf, Arc<Mutex<StagedFile>>)> = lock(&self.staged)
            .iter()
            .filter(|(_, s)| s.try_lock().is_ok_and(|g| g.idle_for() >= STAGED_IDLE))
            .map(|(p, s)| (p.clone(), Arc::clone(s)))
            .collect();
        for (path, s) in idle {
            let retired = s
                .try_lock()
                .is_ok_and(|mut g| g.idle_for() >= STAGED_IDLE && g.retire().is_ok());
            if retired {
                self.forget_staged(&path, &s);
            }
        }
    }
}

impl Storage for DiskStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    fn write_at(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        loop {
            let staged = match self.staged_of(path) {
                Some(s) => s,
                None if data.len() < STAGE_MIN => {
                    return self.file(path, true)?.write_all_at(data, offset);
                }
                None => {
                    self.sweep_idle();
                    let fd = self.file(path, true)?;
                    lock(&self.staged)
                        .entry(path.to_owned())
                        .or_insert_with(|| Arc::new(Mutex::new(StagedFile::new(fd, path))))
                        .clone()
                }
            };
            let mut g = lock(&staged);
            if g.is_retired() {
                // Let go (flushed) between the lookup and this lock: what it would stage now
                // no flush would ever write. Look again.
                drop(g);
                self.forget_staged(path, &staged);
                continue;
            }
            return g.write_at(offset, data);
        }
    }
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.flush(path)?;
        self.file(path, false)?.read_at(buf, offset)
    }
    fn open_direct(&self, path: &Path, size: u64) -> Option<DirectSource> {
        self.flush(path).ok()?;
        DirectSource::open(path, size).ok().flatten()
    }
    fn sync(&self, path: &Path) -> io::Result<()> {
        // Staged bytes go to the file under the staging's lock; the sync runs without it, so
        // writes go on meanwhile (the next sync covers them).
        self.flush(path)?;
        self.file(path, false)?.sync_data()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.close_staged(from)?;
        self.forget(from);
        fs::rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        // Whatever is staged goes with the file; a writer holding the staging looks again.
        let gone = lock(&self.staged).remove(path);
        if let Some(s) = gone {
            lock(&s).discard();
        }
        self.forget(path);
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
    fn len(&self, path: &Path) -> io::Result<Option<u64>> {
        self.flush(path)?;
        match fs::metadata(path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn available_space(&self, path: &Path) -> io::Result<u64> {
        fs4::available_space(path)
    }
    fn reopen(&self, path: &Path) {
        // A staging that cannot be flushed stays: its bytes are not in the file yet.
        if self.close_staged(path).is_ok() {
            self.forget(path);
        }
    }
}

/// Fails operations of an inner storage: the `fail_at`-th operation (0-based) and, when
/// `persistent`, every one after it, with `kind`.
#[derive(Debug)]
pub struct Faulty<S> {
    inner: S,
    ops: AtomicU64,
    fail_at: u64,
    persistent: bool,
    kind: io::ErrorKind,
}

impl<S: Storage> Faulty<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, fail_at: u64, persistent: bool, kind: io::ErrorKind) -> Self {
        Faulty {
            inner,
            ops: AtomicU64::new(0),
            fail_at,
            persistent,
            kind,
        }
    }

    /// Operations attempted so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    fn check(&self) -> io::Result<()> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        if n == self.fail_at || (self.persistent && n > self.fail_at) {
            return Err(io::Error::new(
                self.kind,
                format!("injected fault at operation {n}"),
            ));
        }
        Ok(())
    }
}

impl<S: Storage> Storage for Faulty<S> {
    fn create_dir_all(&self, p: &Path) -> io::Result<()> {
        self.check()?;
        self.inner.create_dir_all(p)
    }
    fn write_at(&self, p: &Path, o: u64, d: &[u8]) -> io::Result<()> {
        self.check()?;
        self.inner.write_at(p, o, d)
    }
    fn read_at(&self, p: &Path, o: u64, b: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        self.inner.read_at(p, o, b)
    }
    fn sync(&self, p: &Path) -> io::Result<()> {
        self.check()?;
        self.inner.sync(p)
    }
    fn rename(&self, f: &Path, t: &Path) -> io::Result<()> {
        self.check()?;
        self.inner.rename(f, t)
    }
    fn sync_dir(&self, p: &Path) -> io::Result<()> {
        self.check()?;
        self.inner.sync_dir(p)
    }
    fn remove(&self, p: &Path) -> io::Result<()> {
        self.check()?;
        self.inner.remove(p)
    }
    fn len(&self, p: &Path) -> io::Result<Option<u64>> {
        self.inner.len(p)
    }
    fn available_space(&self, p: &Path) -> io::Result<u64> {
        self.inner.available_space(p)
    }
    fn reopen(&self, p: &Path) {
        self.inner.reopen(p)
    }
}

/// What happens to a write that was not synced when the simulated machine crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsynced {
    /// Each unsynced write is independently applied, dropped or garbled (seeded).
    Mixed(u64),
    /// Every unsynced write is lost.
    Dropped,
}

#[derive(Debug, Default, Clone)]
struct SimFile {
    synced: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct Sim {
    files: HashMap<u64, SimFile>,
    names: HashMap<PathBuf, u64>,
    synced_names: HashMap<PathBuf, u64>,
    next: u64,
    syncs: u64,
    crashed: bool,
}

/// An in-memory file system that models power loss (the SQLite `test6.c` model): file data is
/// durable after `sync`, names after `sync_dir` of their directory. At the `crash_at`-th sync
/// (0-based) the machine "dies": that and every later operation fails, and
/// [`SimStorage::recover`] gives the state a reboot would find.
#[derive(Debug)]
pub struct SimStorage {
    sim: Mutex<Sim>,
    crash_at: Option<u64>,
}

fn dead() -> io::Error {
    io::Error::other("simulated crash")
}

impl SimStorage {
    /// An empty file system that crashes at sync number `crash_at`, or never.
    pub fn new(crash_at: Option<u64>) -> Self {
        SimStorage {
            sim: Mutex::default(),
            crash_at,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Syncs so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Whether the crash happened.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// The state after a reboot: synced names and data; unsynced writes applied, dropped or
    /// garbled per `mode`. The new storage does not crash.
    pub fn recover(&self, mode: Unsynced) -> SimStorage {
        let s = self.lock();
        let mut rng = rand::rngs::StdRng::seed_from_u64(match mode {
            Unsynced::Mixed(seed) => seed,
            Unsynced::Dropped => 0,
        });
        let mut files = HashMap::new();
        for (id, f) in &s.files {
            let mut data = f.synced.clone();
            for (off, w) in &f.pending {
                let choice = match mode {
                    Unsynced::Dropped => 1,
                    Unsynced::Mixed(_) => rng.gen_range(0..3),
                };
                let bytes: Vec<u8> = match choice {
                    0 => w.clone(),
                    1 => continue,
                    _ => w.iter().map(|b| b ^ rng.r#gen::<u8>()).collect(),
                };
                let end = *off as usize + bytes.len();
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[*off as usize..end].copy_from_slice(&bytes);
            }
            files.insert(
                *id,
                SimFile {
                    synced: data.clone(),
                    current: data,
                    pending: vec![],
                },
            );
        }
        let sim = Sim {
            files,
            names: s.synced_names.clone(),
            synced_names: s.synced_names.clone(),
            next: s.next,
            syncs: 0,
            crashed: false,
        };
        SimStorage {
            sim: Mutex::new(sim),
            crash_at: None,
        }
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, _: &Path) -> io::Result<()> {
        if self.lock().crashed {
            return Err(dead());
        }
        Ok(())
    }
    fn write_at(&self, p: &Path, o: u64, d: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        if s.crashed {
            return Err(dead());
        }
        let id = match s.names.get(p) {
            Some(id) => *id,
            None => {
                let id = s.next;
                s.next += 1;
                s.names.insert(p.to_owned(), id);
                s.files.insert(id, SimFile::default());
                id
            }
        };
        let f = s.files.get_mut(&id).ok_or_else(dead)?;
        let end = o as usize + d.len();
        if f.current.len() < end {
            f.current.resize(end, 0);
        }
        f.current[o as usize..end].copy_from_slice(d);
        f.pending.push((o, d.to_vec()));
        Ok(())
    }
    fn read_at(&self, p: &Path, o: u64, b: &mut [u8]) -> io::Result<usize> {
        let s = self.lock();
        if s.crashed {
            return Err(dead());
        }
        let id = s
            .names
            .get(p)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let f = &s.files[id];
        let start = (o as usize).min(f.current.len());
        let n = b.len().min(f.current.len() - start);
        b[..n].copy_from_slice(&f.current[start..start + n]);
        Ok(n)
    }
    fn sync(&self, p: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.crashed {
            return Err(dead());
        }
        let n = s.syncs;
        s.syncs += 1;
        if self.crash_at == Some(n) {
            s.crashed = true;
            return Err(dead());
        }
        let id = *s
            .names
            .get(p)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let f = s.files.get_mut(&id).ok_or_else(dead)?;
        f.synced = f.current.clone();
        f.pending.clear();
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.crashed {
            return Err(dead());
        }
        let id = s
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        s.names.insert(to.to_owned(), id);
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.crashed {
            return Err(dead());
        }
        let n = s.syncs;
        s.syncs += 1;
        if self.crash_at == Some(n) {
            s.crashed = true;
            return Err(dead());
        }
        let in_dir = |p: &Path| p.parent() == Some(dir);
        let current: Vec<(PathBuf, u64)> = s
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        s.synced_names.retain(|p, _| !in_dir(p));
        s.synced_names.extend(current);
        Ok(())
    }
    fn remove(&self, p: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.crashed {
            return Err(dead());
        }
        s.names.remove(p);
        Ok(())
    }
    fn len(&self, p: &Path) -> io::Result<Option<u64>> {
        let s = self.lock();
        Ok(s.names.get(p).map(|id| s.files[id].current.len() as u64))
    }
    fn available_space(&self, _: &Path) -> io::Result<u64> {
        Ok(u64::MAX / 2)
    }
}

impl<S: Storage + ?Sized> Storage for Arc<S> {
    fn create_dir_all(&self, p: &Path) -> io::Result<()> {
        (**self).create_dir_all(p)
    }
    fn write_at(&self, p: &Path, o: u64, d: &[u8]) -> io::Result<()> {
        (**self).write_at(p, o, d)
    }
    fn read_at(&self, p: &Path, o: u64, b: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(p, o, b)
    }
    fn sync(&self, p: &Path) -> io::Result<()> {
        (**self).sync(p)
    }
    fn rename(&self, f: &Path, t: &Path) -> io::Result<()> {
        (**self).rename(f, t)
    }
    fn sync_dir(&self, p: &Path) -> io::Result<()> {
        (**self).sync_dir(p)
    }
    fn remove(&self, p: &Path) -> io::Result<()> {
        (**self).remove(p)
    }
    fn len(&self, p: &Path) -> io::Result<Option<u64>> {
        (**self).len(p)
    }
    fn available_space(&self, p: &Path) -> io::Result<u64> {
        (**self).available_space(p)
    }
    fn reopen(&self, p: &Path) {
        (**self).reopen(p)
    }
    fn open_direct(&self, p: &Path, size: u64) -> Option<DirectSource> {
        (**self).open_direct(p, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory, a storage, and `len` bytes of a pattern to write.
    fn setup(len: u32, modulus: u32) -> (tempfile::TempDir, DiskStorage, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tmp");
        let data = (0..len).map(|i| (i % modulus) as u8).collect();
        (dir, DiskStorage::new(), data)
    }

    /// test-plan.md 138: a pack written through `DiskStorage` in PIECE-sized writes, large
    /// ones staged: its bytes are read back, measured and carried by a rename before any sync,
    /// and a removed pack takes what was staged for it along.
    #[test]
    fn disk_storage_reads_measures_and_renames_what_it_staged() {
        let (dir, s, data) = setup(3_000_000, 241);
        let pack = dir.path().join("p.pack");
        // An age header first (small, at once), then payload pieces.
        s.write_at(&pack, 0, &data[..211]).expect("header");
        let mut off = 211;
        while off < data.len() {
            let end = (off + 65_552).min(data.len());
            s.write_at(&pack, off as u64, &data[off..end])
                .expect("piece");
            off = end;
        }
        let mut back = vec![0u8; 70_000];
        let n = s
            .read_at(&pack, 1_234_567, &mut back)
            .expect("read before a sync");
        assert_eq!(&back[..n], &data[1_234_567..1_234_567 + n]);
        assert_eq!(s.len(&pack).expect("len"), Some(data.len() as u64));
        let inbox = dir.path().join("i.pack");
        s.rename(&pack, &inbox).expect("rename");
        s.sync(&inbox).expect("sync");
        assert!(std::fs::read(&inbox).expect("read") == data);

        let other = dir.path().join("o.pack");
        s.write_at(&other, 0, &data[..200_000]).expect("staged");
        s.remove(&other).expect("remove");
        assert_eq!(
            s.len(&other).expect("len"),
            None,
            "removed, staging and all"
        );
        assert!(lock(&s.staged).is_empty(), "nothing staged is left behind");
    }

    /// test-plan.md 138: a pack no longer written lets go of its staging when another pack
    /// starts one (here at once: in the unit tests every staging not in use is idle), and its
    /// staged bytes are then in the file.
    #[test]
    fn a_pack_no_longer_written_lets_go_of_its_staging() {
        let (dir, s, data) = setup(300_000, 239);
        let (a, b) = (dir.path().join("a.pack"), dir.path().join("b.pack"));
        for (k, piece) in data.chunks(65_552).enumerate() {
            s.write_at(&a, 100 + (k * 65_552) as u64, piece)
                .expect("piece of a");
        }
        s.write_at(&b, 0, &data[..65_552]).expect("a piece of b");
        let staged: Vec<PathBuf> = lock(&s.staged).keys().cloned().collect();
        assert_eq!(
            staged,
            vec![b.clone()],
            "only the pack being written keeps one"
        );
        let got = std::fs::read(&a).expect("read a");
        assert!(got[100..] == data[..], "a's staged bytes are in its file");
    }

    /// test-plan.md 138: a staging let go (here by `reopen`, as `relay scrub` does) while a
    /// writer already held it refuses that writer, and `DiskStorage` looks the pack's staging
    /// up again: every byte written reaches the file.
    #[test]
    fn a_staging_let_go_under_a_writer_is_looked_up_again() {
        let (dir, s, data) = setup(262_208, 233);
        let p = dir.path().join("p.pack");
        let (a, b) = data.split_at(131_104);
        s.write_at(&p, 0, a).expect("first half");
        let held = s.staged_of(&p).expect("a staging");
        s.reopen(&p);
        assert!(lock(&held).is_retired(), "let go");
        assert!(
            lock(&held).write_at(a.len() as u64, b).is_err(),
            "refuses a late writer"
        );
        s.write_at(&p, a.len() as u64, b)
            .expect("second half, through a new staging");
        s.sync(&p).expect("sync");
        assert!(
            std::fs::read(&p).expect("read") == data,
            "every byte in the file"
        );
    }
}
