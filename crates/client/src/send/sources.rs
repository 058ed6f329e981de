//! The files of a send: walked once, named by their manifest paths, fingerprinted so that a
//! resumed send can tell whether a source changed (`docs/cli.md` "send").

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use rogatory_custody::RelativePath;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result, io};

/// What identifies a source's content without reading it: size, modification and change time,
/// inode and device. The change time moves on every write and on every `utimes`, so a file
/// rewritten with its old size and modification time restored (`cp -p`, `tar`, `rsync -t`)
/// is still seen as changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Fingerprint {
    pub(crate) size: u64,
    pub(crate) mtime: (i64, i64),
    pub(crate) ctime: (i64, i64),
    pub(crate) ino: u64,
    pub(crate) dev: u64,
}

impl Fingerprint {
    pub(crate) fn of(m: &fs::Metadata) -> Self {
        Fingerprint {
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// One source file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Source {
    /// Absolute path (as given, made absolute; not canonicalised).
    pub(crate) path: PathBuf,
    pub(crate) rel: RelativePath,
    pub(crate) fp: Fingerprint,
}

/// A source that could not be sent, and why.
pub type Failure = (String, String);

/// Folders read at once, at most: a walk from a cold cache waits on the disk for every block
/// of inodes, and a warm one costs a few system calls per file; two at once halved a walk of
/// 5,000 files in 50 folders on two cores, more did not help (`docs/performance.md`).
const MAX_WALKERS: usize = 4;

/// Walks `paths`: every regular file under them, sorted by manifest path. Files that cannot be
/// sent are listed in `failed`, all of them, not only the first, sorted by path.
pub(crate) fn collect(paths: &[PathBuf], failed: &mut Vec<Failure>) -> Result<Vec<Source>> {
    let mut found = Found::default();
    let mut folders = Vec::new();
    for p in paths {
        found.take(collect_one(p), p.display().to_string(), &mut folders);
    }
    read_folders(folders, &mut found);
    let Found {
        sources: mut out,
        failed: mut bad,
    } = found;
    bad.sort();
    failed.append(&mut bad);
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    for w in out.windows(2) {
        if w[0].rel == w[1].rel {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("two sources map to the same path {}", w[0].rel.as_str()),
            ));
        }
    }
    if out.is_empty() && failed.is_empty() {
        return Err(Error::new(
            ErrorKind::Usage,
            "nothing to send: no files under the given paths",
        ));
    }
    Ok(out)
}

/// Why a source cannot be sent, for the list of failures: the error and its causes, without
/// the path the list already shows.
pub(crate) fn why(e: &Error, path: &str) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.ends_with(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    match text.strip_prefix(path).and_then(|t| t.strip_prefix(": ")) {
        Some(rest) => rest.to_owned(),
        None => text,
    }
}

/// What walking found so far.
#[derive(Default)]
struct Found {
    sources: Vec<Source>,
    failed: Vec<Failure>,
}

impl Found {
    /// Takes what a path turned out to be: a file to send, a folder to read (into `folders`),
    /// or why it cannot be sent (listed as `shown`).
    fn take(&mut self, r: Result<Entry>, shown: String, folders: &mut Vec<Folder>) {
        match r {
            Ok(Entry::File(s)) => self.sources.push(s),
            Ok(Entry::Folder(f)) => folders.push(f),
            Err(e) => {
                let why = why(&e, &shown);
                self.failed.push((shown, why));
            }
        }
    }
}

/// A folder to read.
struct Folder {
    path: PathBuf,
    /// Its manifest path.
    rel: String,
    /// How a failure to read it names it: as given for a folder named on the command line.
    shown: String,
}

/// What a path names: a folder to read, or a file to send.
enum Entry {
    Folder(Folder),
    File(Source),
}

fn collect_one(p: &Path) -> Result<Entry> {
    let meta = fs::symlink_metadata(p).map_err(|e| {
        let what = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        Error::new(ErrorKind::Usage, format!("{}: {what}", p.display()))
    })?;
    let abs = std::path::absolute(p).map_err(|e| io("resolving", p, e))?;
    // `..` (or `dir/..`) has no name of its own: its folder's real name is the one sent.
    let named = if abs.file_name().is_none() {
        fs::canonicalize(&abs).map_err(|e| io("resolving", p, e))?
    } else {
        abs.clone()
    };
    let name = match named.file_name() {
        None => {
            return Err(Error::new(
                ErrorKind::Usage,
                format!("{}: the root directory cannot be sent", p.display()),
            )
            .hint("name the folder to send"));
        }
        Some(n) => n
            .to_str()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Usage,
                    format!(
                        "{}: the name {:?} is not UTF-8, which a manifest path must be",
                        p.display(),
                        n
                    ),
                )
            })?
            .to_owned(),
    };
    entry(abs, name, &meta, p.display().to_string())
}

/// `path`, whose metadata (not following a link) is `meta`: a folder, or a regular file that
/// can be opened and whose manifest path `rel` is safe.
fn entry(path: PathBuf, rel: String, meta: &fs::Metadata, shown: String) -> Result<Entry> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("{}: symbolic links are not sent", path.display()),
        )
        .hint("pass the target itself"));
    }
    if ft.is_dir() {
        return Ok(Entry::Folder(Folder { path, rel, shown }));
    }
    if !ft.is_file() {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("{}: not a regular file", path.display()),
        ));
    }
    let rel: RelativePath = rel.parse().map_err(|e| {
        Error::new(
            ErrorKind::Safety,
            format!("{}: unsafe name in a manifest", path.display()),
        )
        .source(e)
    })?;
    // Checked now, with every other source, not when its turn to be read comes: an unreadable
    // file is listed beside an unreadable folder before anything is sent.
    fs::File::open(&path).map_err(|e| io("reading", &path, e))?;
    Ok(Entry::File(Source {
        path,
        rel,
        fp: Fingerprint::of(meta),
    }))
}

/// The folders still to read, shared by the walkers.
struct Queue {
    todo: Vec<Folder>,
    /// Folders being read: each may add more.
    busy: usize,
}

/// The queue and the signal that it changed.
struct Walk {
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Walk {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A folder being read: when it is dropped (after the read, or by a panic in it), it is no
/// longer counted and the waiting walkers look again, so none waits for ever.
struct Reading<'a>(&'a Walk);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.lock().busy -= 1;
        self.0.changed.notify_all();
    }
}

/// Reads `folders` and every folder under them, up to [`MAX_WALKERS`] at once. Each entry's
/// metadata is read relative to its open folder.
fn read_folders(folders: Vec<Folder>, found: &mut Found) {
    if folders.is_empty() {
        return;
    }
    let walk = Walk {
        queue: Mutex::new(Queue {
            todo: folders,
            busy: 0,
        }),
        changed: Condvar::new(),
    };
    let work = || {
        let mut mine = Found::default();
        let mut more = Vec::new();
        let mut q = walk.lock();
        loop {
            if let Some(f) = q.todo.pop() {
                q.busy += 1;
                drop(q);
                let reading = Reading(&walk);
                read_folder(&f, &mut mine, &mut more);
                walk.lock().todo.append(&mut more);
                drop(reading);
                q = walk.lock();
            } else if q.busy == 0 {
                return mine;
            } else {
                q = walk.changed.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        }
    };
    let walkers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, MAX_WALKERS);
    std::thread::scope(|s| {
        // Fewer helpers than asked (or none) still walk everything.
        let helpers: Vec<_> = (1..walkers)
            .map_while(|_| {
                std::thread::Builder::new()
                    .name("walk".into())
                    .spawn_scoped(s, work)
                    .ok()
            })
            .collect();
        let mut all = vec![work()];
        for h in helpers {
            match h.join() {
                Ok(f) => all.push(f),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        for mut f in all {
            found.sources.append(&mut f.sources);
            found.failed.append(&mut f.failed);
        }
    });
}

/// Reads one folder: its files into `found`, its folders into `more`.
fn read_folder(f: &Folder, found: &mut Found, more: &mut Vec<Folder>) {
    let unreadable = |e: std::io::Error, found: &mut Found| {
        let err = io("reading directory", &f.path, e);
        found.failed.push((f.shown.clone(), why(&err, &f.shown)));
    };
    let rd = match fs::read_dir(&f.path) {
        Ok(rd) => rd,
        Err(e) => return unreadable(e, found),
    };
    for e in rd {
        let e = match e {
            Ok(e) => e,
            Err(e) => return unreadable(e, found),
        };
        let path = e.path();
        let shown = path.display().to_string();
        // One bad entry does not hide the others: every failure is listed.
        let r = (|| {
            let name = e.file_name();
            let name = name.to_str().ok_or_else(|| {
                Error::new(ErrorKind::Usage, format!("{shown}: file name is not UTF-8"))
            })?;
            // Relative to the open folder, not following a link (`symlink_metadata`).
            let m = e.metadata().map_err(|er| io("reading", &path, er))?;
            entry(path.clone(), format!("{}/{name}", f.rel), &m, shown.clone())
        })();
        found.take(r, shown, more);
    }
}

impl Source {
    /// Whether `fd` is this source as it was when the transfer began (its fingerprint).
    pub(crate) fn is(&self, fd: &fs::File) -> std::io::Result<bool> {
        Ok(Fingerprint::of(&fd.metadata()?) == self.fp)
    }
}

/// The error for a source that is not what it was when the transfer began.
pub(crate) fn changed(path: &Path, what: &str) -> Error {
    Error::new(
        ErrorKind::Safety,
        format!("{} changed since this transfer began ({what})", path.display()),
    )
    .hint("a transfer never mixes two versions of a file: send again with --restart to start a new transfer of the current content")
}

/// Checks that every source still has its fingerprint (before any byte is re-read).
pub(crate) fn check_unchanged(sources: &[Source]) -> Result<()> {
    for s in sources {
        let m = fs::symlink_metadata(&s.path).map_err(|_| changed(&s.path, "it is gone"))?;
        if !m.file_type().is_file() {
            return Err(changed(&s.path, "it is no longer a regular file"));
        }
        let now = Fingerprint::of(&m);
        if now != s.fp {
            let what = if now.size != s.fp.size {
                "its size differs"
            } else if now.ino != s.fp.ino || now.dev != s.fp.dev {
                "it was replaced by another file"
            } else {
                "it was modified"
            };
            return Err(changed(&s.path, what));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rels(sources: &[Source]) -> Vec<&str> {
        sources.iter().map(|s| s.rel.as_str()).collect()
    }

    /// A tree of folders read several at once: every file found once, with the metadata of the
    /// file itself, sorted by manifest path; empty folders add nothing (test-plan.md 127).
    #[test]
    fn a_tree_read_several_folders_at_once_finds_every_file_once() {
        let tmp = tempfile::tempdir().expect("tmp");
        let case = tmp.path().join("case");
        let mut expect = Vec::new();
        for a in 0..6 {
            for b in 0..5 {
                let d = case.join(format!("a{a}/b{b}"));
                fs::create_dir_all(d.join("empty")).expect("mkdir");
                for f in 0..(a + b) {
                    fs::write(d.join(format!("f{f}")), vec![b'x'; f]).expect("write");
                    expect.push(format!("case/a{a}/b{b}/f{f}"));
                }
            }
        }
        fs::write(case.join("top"), b"top").expect("write");
        expect.push("case/top".into());
        let single = tmp.path().join("single.txt");
        fs::write(&single, b"alone").expect("write");
        expect.push("single.txt".into());
        expect.sort();
        let mut failed = Vec::new();
        let got = collect(&[case, single], &mut failed).expect("collect");
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(rels(&got), expect);
        for s in &got {
            assert_eq!(
                s.fp,
                Fingerprint::of(&fs::symlink_metadata(&s.path).expect("metadata")),
                "{}",
                s.rel.as_str()
            );
        }
    }

    /// Failures in several folders are all listed, sorted by path, beside the files that can
    /// be sent.
    #[test]
    fn failures_in_several_folders_are_all_listed_in_order() {
        let tmp = tempfile::tempdir().expect("tmp");
        let case = tmp.path().join("case");
        for d in ["z", "m", "a/deep"] {
            fs::create_dir_all(case.join(d)).expect("mkdir");
            fs::write(case.join(d).join("ok"), b"ok").expect("write");
            std::os::unix::fs::symlink("/etc/hostname", case.join(d).join("link"))
                .expect("symlink");
        }
        let mut failed = Vec::new();
        let got = collect(std::slice::from_ref(&case), &mut failed).expect("collect");
        assert_eq!(rels(&got), ["case/a/deep/ok", "case/m/ok", "case/z/ok"]);
        let paths: Vec<String> = failed.iter().map(|(p, _)| p.clone()).collect();
        let expect: Vec<String> = ["a/deep/link", "m/link", "z/link"]
            .iter()
            .map(|d| case.join(d).display().to_string())
            .collect();
        assert_eq!(paths, expect);
        assert!(
            failed
                .iter()
                .all(|(_, why)| why.contains("symbolic links are not sent")),
            "{failed:?}"
        );
    }
}
