//! Publishing verified files in batches (`docs/cli.md` "Receiving"): a file whose size and
//! SHA-256 match the seal waits, closed, in its 0600 partial file; the batch it joins is made
//! durable together, then each file is renamed to its final name. Nothing appears under a final
//! name before its bytes are durable, and no file waits for an fsync (and a disk cache flush) of
//! its own: a batch of several files is made durable with one `syncfs` per file system (Linux),
//! a lone file (or any batch elsewhere) with fsyncs of just its files, several at once.
//!
//! Batches form by themselves (group commit): the batcher takes every file that is ready when it
//! starts a batch, at most [`MAX_BATCH`]; files verified while it syncs go into the next one. So
//! a single small file is published at once, and thousands of small files share a few syncs.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use super::disk::{PartialFile, fsync_dir};
use crate::error::{Error, ErrorKind, Result, io};

/// Files published by one batch at most (and verified files waiting for a batch at most).
pub(super) const MAX_BATCH: usize = 1024;
/// Batches of at least this many files are made durable with one `syncfs` per file system
/// (Linux); a lone file with its own fsync, so that it does not wait for everything else that is
/// dirty on the file system (a large file arriving, other programs' writes).
#[cfg(target_os = "linux")]
const SYNCFS_FROM: usize = 2;

/// A verified file waiting for its batch: file `i` of the transfer, in its closed partial file.
#[derive(Debug)]
pub(super) struct Ready {
    pub(super) i: usize,
    pub(super) pf: PartialFile,
}

/// How a batch is made durable: per file system of the output's directories, a directory
/// opened before any file of this fetch was written there, for `syncfs` (whose error report
/// covers every writeback error on that file system since the directory was opened, or not
/// yet seen: Linux 5.8 and later).
#[derive(Debug)]
pub(super) struct Durability {
    /// One open directory per file system, with its path for messages.
    fs: Vec<(PathBuf, File)>,
    /// For each file of the transfer, its file system's index in `fs`.
    of_file: Vec<usize>,
}

impl Durability {
    /// Opens one directory per file system among `parents` (each file's parent directory).
    pub(super) fn open(parents: &[PathBuf]) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let mut fs: Vec<(PathBuf, File)> = Vec::new();
        let mut devs: Vec<u64> = Vec::new();
        let mut seen: HashMap<&PathBuf, usize> = HashMap::new();
        let mut of_file = Vec::with_capacity(parents.len());
        for p in parents {
            if let Some(&k) = seen.get(p) {
                of_file.push(k);
                continue;
            }
            let dir = File::open(p).map_err(|e| io("opening", p, e))?;
            let dev = dir.metadata().map_err(|e| io("checking", p, e))?.dev();
            let k = match devs.iter().position(|&d| d == dev) {
                Some(k) => k,
                None => {
                    devs.push(dev);
                    fs.push((p.clone(), dir));
                    fs.len() - 1
                }
            };
            seen.insert(p, k);
            of_file.push(k);
        }
        Ok(Self { fs, of_file })
    }

    /// Makes the data and inodes of every file of `batch` durable (module docs).
    fn sync(&self, batch: &[Ready]) -> Result<()> {
        #[cfg(target_os = "linux")]
        if batch.len() >= SYNCFS_FROM {
            return self.sync_fs(batch);
        }
        let _ = (&self.fs, &self.of_file);
        sync_each(batch)
    }

    /// One `syncfs` per file system the batch touches.
    #[cfg(target_os = "linux")]
    fn sync_fs(&self, batch: &[Ready]) -> Result<()> {
        let used: std::collections::BTreeSet<usize> = batch
            .iter()
            .filter_map(|r| self.of_file.get(r.i))
            .copied()
            .collect();
        for k in used {
            let (p, dir) = &self.fs[k];
            rustix::fs::syncfs(dir).map_err(|e| io("syncing the file system of", p, e.into()))?;
        }
        Ok(())
    }
}

/// One fsync per file, 16 at once (the file system merges their cache flushes). Each partial is
/// opened again by name, never through a symbolic link.
fn sync_each(batch: &[Ready]) -> Result<()> {
    use rustix::fs::{Mode, OFlags};
    let paths: Vec<&Path> = batch.iter().map(|r| r.pf.path.as_path()).collect();
    parallel(&paths, |p| {
        rustix::fs::open(
            *p,
            OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .and_then(rustix::fs::fsync)
        .map_err(|e| io("syncing", p, e.into()))
    })
}

/// Runs `f` on every item, on up to 16 threads; the first error wins.
fn parallel<T: Sync>(items: &[T], f: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    let threads = 16.min(items.len()).max(1);
    let per = items.len().div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        let handles: Vec<_> = items
            .chunks(per)
            .map(|chunk| sc.spawn(|| chunk.iter().try_for_each(&f)))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| Error::new(ErrorKind::Internal, "a sync thread failed"))?
        })
    })
}

/// Makes the entries of every directory in `dirs` durable (after the renames), several at once.
pub(super) fn sync_dirs(dirs: &[&Path]) -> Result<()> {
    parallel(dirs, |d| fsync_dir(d))
}

/// The batcher: publishes the files that `rx` delivers, batch after batch, and reports each
/// batch's file indices (or the first failure) on `done`. Runs on a blocking thread until `rx`
/// closes or a batch fails; whatever it has not published is dropped (removed, or kept for a
/// resume).
pub(super) fn run(
    dest: &dyn Fn(usize) -> PathBuf,
    force: bool,
    durability: &Durability,
    mut rx: mpsc::Receiver<Ready>,
    done: &mpsc::UnboundedSender<Result<Vec<usize>>>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        match commit(dest, force, durability, batch) {
            Ok(published) => {
                if done.send(Ok(published)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = done.send(Err(e));
                return;
            }
        }
    }
}

/// One batch: durable first, then each file renamed to `dest(i)` (module docs).
fn commit(
    dest: &dyn Fn(usize) -> PathBuf,
    force: bool,
    durability: &Durability,
    mut batch: Vec<Ready>,
) -> Result<Vec<usize>> {
    let synced = batch
        .iter_mut()
        .try_for_each(|r| {
            r.pf.finish_writeback()
                .map_err(|e| io("writing", &dest(r.i), e))
        })
        .and_then(|()| durability.sync(&batch));
    if let Err(e) = synced {
        // Nothing of a batch that did not become durable is kept for a resume, for the reason
        // `PartialFile::finish_writeback` gives.
        for r in &mut batch {
            r.pf.keep = false;
        }
        return Err(e);
    }
    let mut published = Vec::with_capacity(batch.len());
    for mut r in batch {
        r.pf.publish(&dest(r.i), force)?;
        published.push(r.i);
    }
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::disk::create_partial;
    use std::io::Write;

    fn ready(dir: &Path, i: usize, body: &[u8]) -> Ready {
        let mut pf =
            create_partial(dir, &format!(".rogatory-partial-test-{i}"), false).expect("partial");
        pf.file().expect("open").write_all(body).expect("write");
        pf.close();
        Ready { i, pf }
    }

    fn partials(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".rogatory-partial-"))
            .collect();
        v.sort();
        v
    }

    /// `docs/cli.md` "Receiving": every file of a batch is published under its final name with
    /// its bytes, each reported once; a destination that appeared meanwhile is refused (exit 8)
    /// and the partials not yet published are removed, never left under any name.
    #[test]
    fn batches_publish_in_order_and_a_clash_removes_the_rest() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = tmp.path().to_owned();
        let parents = vec![d.clone(); 6];
        let durability = Durability::open(&parents).expect("durability");
        let dest = |i: usize| d.join(format!("f{i}"));
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        for i in 0..3 {
            tx.try_send(ready(&d, i, format!("file {i}").as_bytes()))
                .expect("send");
        }
        drop(tx);
        run(&dest, false, &durability, rx, &done_tx);
        let mut published = Vec::new();
        while let Ok(r) = done_rx.try_recv() {
            published.extend(r.expect("batch"));
        }
        assert_eq!(published, vec![0, 1, 2]);
        for i in 0..3 {
            assert_eq!(
                std::fs::read(dest(i)).expect("published"),
                format!("file {i}").as_bytes()
            );
        }
        assert!(partials(&d).is_empty());

        // File 4's destination exists: 3 is published, 4 refused, 5 removed.
        std::fs::write(dest(4), b"already here").expect("clash");
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        for i in 3..6 {
            tx.try_send(ready(&d, i, b"new")).expect("send");
        }
        drop(tx);
        run(&dest, false, &durability, rx, &done_tx);
        let e = done_rx.try_recv().expect("reported").expect_err("clash");
        assert_eq!(e.kind, ErrorKind::Safety);
        assert_eq!(std::fs::read(dest(3)).expect("3"), b"new");
        assert_eq!(std::fs::read(dest(4)).expect("4"), b"already here");
        assert!(!dest(5).exists());
        assert!(partials(&d).is_empty(), "{:?}", partials(&d));

        // With `force` the same clash replaces the file.
        let (tx, rx) = mpsc::channel(MAX_BATCH);
        tx.try_send(ready(&d, 4, b"forced")).expect("send");
        drop(tx);
        run(&dest, true, &durability, rx, &done_tx);
        assert_eq!(done_rx.try_recv().expect("batch").expect("ok"), vec![4]);
        assert_eq!(std::fs::read(dest(4)).expect("4"), b"forced");
    }
}
