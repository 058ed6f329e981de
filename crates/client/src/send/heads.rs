//! Every file's age header, made on worker threads while the upload runs (`protocol.md` §6.1
//! "Headers").
//!
//! A header wraps the file's key to every recipient: the per-file public-key work (a hybrid
//! encapsulation, an X25519 agreement). Its length depends only on the number and kinds of the
//! recipients, so the offer's ciphertext sizes are known from one header before the others
//! exist. The file keys
//! themselves are drawn first and saved in `keys.age`, before the offer; the headers are then
//! made in batches, in file order, appended to `heads.bin` and made durable (`fdatasync`) batch
//! by batch. A file's first piece (its header) is produced only once its header is durable
//! ([`HeadMaker::wait`]): a resume finds, for every file the relay holds any piece of, the very
//! header it was sent with. Headers past the durable ones are made again on a resume (their
//! files were never sent, so any header to the same key serves).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write as _};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rogatory_envelope::{AnyRecipient, Encryptor, FileKey, PayloadNonce};

/// Every file's key, in file order.
pub(crate) type FileKeys = Arc<[FileKey]>;

/// Files in the first batch: small, so the first file waits for little.
const FIRST_BATCH: u32 = 16;
/// Files in a batch, at most (each batch costs one `fdatasync` of `heads.bin`).
const MAX_BATCH: u32 = 512;

/// Batch `b` covers files `from + start(b) .. from + start(b + 1)`: 16, 64, 256, then 512 files.
fn batch_start(b: u32) -> u64 {
    let mut start = 0u64;
    let mut size = u64::from(FIRST_BATCH);
    for _ in 0..b {
        start += size;
        size = (size * 4).min(u64::from(MAX_BATCH));
    }
    start
}

/// One file's piece 0: its age header and payload nonce.
pub(crate) fn make_head(
    key: &FileKey,
    recipients: &[AnyRecipient],
    out: &mut Vec<u8>,
) -> Result<(), rogatory_envelope::EncryptError> {
    let enc = Encryptor::with_file_key(key.clone(), recipients)?;
    out.extend_from_slice(&enc.header().encode());
    out.extend_from_slice(&PayloadNonce::generate().0);
    Ok(())
}

/// Why a header cannot be had.
#[derive(Clone, Debug)]
pub(crate) enum HeadError {
    /// `heads.bin` could not be written or synced: running the same send again resumes.
    Storage(String),
    /// A header could not be made as the offer says, or `heads.bin` is not what this send
    /// wrote.
    Failed(String),
    /// A header thread failed (a bug).
    Internal(String),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Storage(m) | HeadError::Failed(m) | HeadError::Internal(m) => f.write_str(m),
        }
    }
}

struct Shared {
    /// Files before `from` already have their header in `heads.bin`.
    from: u32,
    /// Number of files.
    n: u32,
    /// Every header's length (with its nonce), fixed by the offer.
    head_len: usize,
    recipients: Vec<AnyRecipient>,
    /// Every file's key, in file order.
    keys: FileKeys,
    /// The next batch a worker takes.
    next: AtomicU32,
    inner: Mutex<Inner>,
    cv: Condvar,
}

#[derive(Default)]
struct Inner {
    /// Batches made and not yet written, by number.
    made: BTreeMap<u32, Vec<u8>>,
    /// `heads.bin`, opened for appending, once the send state exists ([`HeadMaker::attach`]).
    /// Taken by the thread writing to it.
    out: Option<File>,
    writing: bool,
    /// Batches written and made durable.
    written: u32,
    /// Files whose header is durable: every file before this one.
    ready: u32,
    error: Option<HeadError>,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A worker that panicked while holding the lock left `Inner` consistent (it only
        // inserts, takes and counts).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Files `lo..hi` of batch `b`, absolute; `None` past the last file.
    fn batch(&self, b: u32) -> Option<(u32, u32)> {
        let n = u64::from(self.n);
        let lo = u64::from(self.from) + batch_start(b);
        if lo >= n {
            return None;
        }
        let hi = (u64::from(self.from) + batch_start(b + 1)).min(n);
        // Both below `n`, a u32.
        Some((lo as u32, hi as u32))
    }

    fn fail(&self, g: &mut MutexGuard<'_, Inner>, e: HeadError) {
        g.error.get_or_insert(e);
        self.cv.notify_all();
    }

    fn make(&self, lo: u32, hi: u32) -> Result<Vec<u8>, HeadError> {
        let mut bytes = Vec::with_capacity((hi - lo) as usize * self.head_len);
        for i in lo..hi {
            let before = bytes.len();
            make_head(&self.keys[i as usize], &self.recipients, &mut bytes).map_err(|e| {
                HeadError::Failed(format!("encrypting file {i} to the recipients: {e}"))
            })?;
            if bytes.len() - before != self.head_len {
                return Err(HeadError::Failed(format!(
                    "the header of file {i} has another length than the offer says (a recipient's key changed?)"
                )));
            }
        }
        Ok(bytes)
    }

    fn work(&self) {
        // A worker that panics (a failed random source, say) must not leave the upload waiting
        // for a batch that never comes.
        struct OnPanic<'a>(&'a Shared);
        impl Drop for OnPanic<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let mut g = self.0.lock();
                    self.0
                        .fail(&mut g, HeadError::Internal("a header thread failed".into()));
                }
            }
        }
        let _guard = OnPanic(self);
        loop {
            let b = self.next.fetch_add(1, Ordering::Relaxed);
            let Some((lo, hi)) = self.batch(b) else {
                return;
            };
            {
                let g = self.lock();
                if g.stop || g.error.is_some() {
                    return;
                }
            }
            let made = self.make(lo, hi);
            let mut g = self.lock();
            match made {
                Ok(bytes) => {
                    g.made.insert(b, bytes);
                }
                Err(e) => return self.fail(&mut g, e),
            }
            self.write(g);
        }
    }

    /// Appends every batch that is next in file order to `heads.bin`, with one `fdatasync`
    /// for all of them, outside the lock; one thread at a time.
    fn write<'a>(&'a self, mut g: MutexGuard<'a, Inner>) {
        while !g.writing && !g.stop && g.error.is_none() && g.made.contains_key(&g.written) {
            let Some(mut out) = g.out.take() else {
                return;
            };
            let mut bufs = Vec::new();
            let mut next = g.written;
            while let Some(b) = g.made.remove(&next) {
                bufs.push(b);
                next += 1;
            }
            g.writing = true;
            // What `heads.bin` must hold before this append: the headers of every file before
            // `ready`, nothing else (the send's lock keeps other runs out; checked anyway).
            let expect = u64::from(g.ready) * self.head_len as u64;
            drop(g);
            if rogatory_transport::failpoint::armed("heads.mid_write") {
                // The crash tests: a batch torn in the middle, never synced.
                // Half the batch and part of the next header: a torn record at the end.
                let torn = (bufs[0].len() / 2 + self.head_len / 3).min(bufs[0].len());
                let half = &bufs[0][..torn];
                let _ = out.write_all(half);
                eprintln!("rogatory: failpoint heads.mid_write reached; aborting");
                std::process::abort();
            }
            let r = match out.metadata() {
                Ok(m) if m.len() != expect => Err(HeadError::Failed(format!(
                    "heads.bin holds {} bytes, {expect} expected: changed by another process",
                    m.len()
                ))),
                m => m
                    .and_then(|_| {
                        bufs.iter()
                            .try_for_each(|b| out.write_all(b))
                            .and_then(|()| out.sync_data())
                    })
                    .map_err(|e| HeadError::Storage(format!("writing heads.bin: {e}"))),
            };
            g = self.lock();
            g.out = Some(out);
            g.writing = false;
            match r {
                Ok(()) => {
                    g.written = next;
                    g.ready = self.batch(next).map_or(self.n, |(lo, _)| lo);
                }
                Err(e) => {
                    g.error.get_or_insert(e);
                }
            }
            self.cv.notify_all();
        }
    }
}

/// The headers of files `from..n`, being made (see the module doc).
pub(crate) struct HeadMaker {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for HeadMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadMaker")
            .field("from", &self.shared.from)
            .field("n", &self.shared.n)
            .finish_non_exhaustive()
    }
}

impl HeadMaker {
    /// Starts making the headers of files `from..keys.len()`, each `head_len` bytes long, on
    /// one thread per core. They are kept in memory until [`HeadMaker::attach`].
    pub(crate) fn start(
        from: u32,
        keys: FileKeys,
        recipients: Vec<AnyRecipient>,
        head_len: usize,
    ) -> io::Result<Self> {
        let n = u32::try_from(keys.len()).map_err(|_| io::Error::other("too many files"))?;
        let shared = Arc::new(Shared {
            from,
            n,
            head_len,
            recipients,
            keys,
            next: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                ready: from,
                ..Inner::default()
            }),
            cv: Condvar::new(),
        });
        let batches = (0..).take_while(|&b| shared.batch(b).is_some()).count();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, batches.max(1));
        let mut handles = Vec::with_capacity(threads);
        for _ in 0..threads {
            let s = Arc::clone(&shared);
            match std::thread::Builder::new()
                .name("heads".into())
                .spawn(move || s.work())
            {
                Ok(h) => handles.push(h),
                // Fewer threads still make every header; none at all cannot.
                Err(e) if handles.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(HeadMaker {
            shared,
            threads: handles,
        })
    }

    /// `heads.bin`, opened for appending and holding exactly the headers of the files before
    /// `from`: the headers made so far are written now, the others as they are made.
    pub(crate) fn attach(&self, out: File) {
        let mut g = self.shared.lock();
        g.out = Some(out);
        self.shared.write(g);
    }

    /// The first file whose header this maker makes.
    pub(crate) fn from(&self) -> u32 {
        self.shared.from
    }

    /// Waits until `file`'s header is durable in `heads.bin`.
    pub(crate) fn wait(&self, file: u32) -> Result<(), HeadError> {
        let mut g = self.shared.lock();
        loop {
            if file < g.ready {
                return Ok(());
            }
            if let Some(e) = &g.error {
                return Err(e.clone());
            }
            if file >= self.shared.n {
                return Err(HeadError::Failed(format!("no file {file}")));
            }
            g = self.shared.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for HeadMaker {
    /// Stops the workers after the batch each is making, and waits for them.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rogatory_envelope::{AnyIdentity, Decryptor};

    /// A hybrid recipient, its identity, and the length of a header to it.
    fn recipient() -> (AnyIdentity, AnyRecipient, usize) {
        let id = AnyIdentity::from(rogatory_envelope::HybridIdentity::generate());
        let r = id.to_public();
        let mut one = Vec::new();
        make_head(&FileKey::generate(), std::slice::from_ref(&r), &mut one).expect("head");
        (id, r, one.len())
    }

    fn keys(n: usize) -> FileKeys {
        (0..n).map(|_| FileKey::generate()).collect()
    }

    #[test]
    fn batches_cover_every_file_once_in_order() {
        assert_eq!(
            (0..6).map(batch_start).collect::<Vec<_>>(),
            vec![0, 16, 80, 336, 848, 1360]
        );
    }

    #[test]
    fn every_header_is_written_in_file_order_and_opens_with_its_key() {
        let (id, r, head_len) = recipient();
        let n = 1000;
        let keys = keys(n);
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("heads.bin");
        // Three headers are already there (a resume): the maker starts after them.
        let mut start = Vec::new();
        for k in &keys[..3] {
            make_head(k, std::slice::from_ref(&r), &mut start).expect("head");
        }
        std::fs::write(&path, &start).expect("write");
        let m = HeadMaker::start(3, Arc::clone(&keys), vec![r], head_len).expect("start");
        // Made in memory before the file exists; written once attached.
        std::thread::sleep(std::time::Duration::from_millis(20));
        m.attach(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open"),
        );
        m.wait(0).expect("an earlier file");
        m.wait(17).expect("file 17");
        m.wait(n as u32 - 1).expect("the last file");
        assert!(m.wait(n as u32).is_err(), "no such file");
        drop(m);
        let all = std::fs::read(&path).expect("read");
        assert_eq!(all.len(), n * head_len);
        for (i, k) in keys.iter().enumerate() {
            let head = &all[i * head_len..(i + 1) * head_len - 16];
            let d = Decryptor::new(head).expect("a header");
            assert!(d.header().verify_mac(k), "file {i}'s header is its key's");
            if i % 97 == 0 {
                let got = d
                    .unwrap_file_key(std::slice::from_ref(&id))
                    .expect("the recipient opens it");
                assert_eq!(got.expose_secret(), k.expose_secret());
            }
        }
    }

    #[test]
    fn a_failed_write_is_reported_to_whoever_waits() {
        let (_, r, head_len) = recipient();
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("heads.bin");
        std::fs::write(&path, b"").expect("write");
        let m = HeadMaker::start(0, keys(100), vec![r], head_len).expect("start");
        // Opened for reading only: every write fails.
        m.attach(File::open(&path).expect("open"));
        let e = m.wait(50).expect_err("nothing can be written");
        assert!(e.to_string().contains("heads.bin"), "{e}");
    }

    #[test]
    fn a_header_of_another_length_is_an_error_not_a_wrong_offset() {
        let (_, r, head_len) = recipient();
        let tmp = tempfile::tempdir().expect("tmp");
        let m = HeadMaker::start(0, keys(40), vec![r], head_len + 1).expect("start");
        m.attach(File::create(tmp.path().join("heads.bin")).expect("create"));
        let e = m.wait(0).expect_err("a wrong length");
        assert!(e.to_string().contains("another length"), "{e}");
    }

    #[test]
    fn dropping_it_midway_stops_the_workers() {
        let (_, r, head_len) = recipient();
        // Never attached: the workers make what they can in memory, then stop when dropped
        // (after the batch each is making), long before 100,000 hybrid headers (196 batches)
        // are made.
        let m = HeadMaker::start(0, keys(100_000), vec![r], head_len).expect("start");
        let shared = Arc::clone(&m.shared);
        std::thread::sleep(std::time::Duration::from_millis(5));
        drop(m);
        let made =
            || -> usize { shared.lock().made.values().map(Vec::len).sum::<usize>() / head_len };
        let now = made();
        assert!(now < 100_000, "the workers stopped: {now} headers made");
        assert_eq!(made(), now, "and made nothing after");
    }
}
