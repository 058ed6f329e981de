//! The files of a send: walked once, named by their manifest paths, fingerprinted so that a
//! resumed send can tell whether a source changed (`docs/cli.md` "send").

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

/// Walks `paths`: every regular file under them, sorted by manifest path. Files that cannot be
/// sent are listed in `failed`, all of them, not only the first.
pub(crate) fn collect(paths: &[PathBuf], failed: &mut Vec<Failure>) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for p in paths {
        if let Err(e) = collect_one(p, &mut out, failed) {
            let path = p.display().to_string();
            let why = why(&e, &path);
            failed.push((path, why));
        }
    }
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

fn collect_one(p: &Path, out: &mut Vec<Source>, failed: &mut Vec<Failure>) -> Result<()> {
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
    walk(&abs, &name, &meta, out, failed)
}

fn walk(
    p: &Path,
    rel: &str,
    meta: &fs::Metadata,
    out: &mut Vec<Source>,
    failed: &mut Vec<Failure>,
) -> Result<()> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("{}: symbolic links are not sent", p.display()),
        )
        .hint("pass the target itself"));
    }
    if ft.is_dir() {
        let rd = fs::read_dir(p).map_err(|e| io("reading directory", p, e))?;
        for e in rd {
            let e = e.map_err(|e| io("reading directory", p, e))?;
            // One bad entry does not hide the others: every failure is listed.
            let r = (|| {
                let name = e.file_name();
                let name = name.to_str().ok_or_else(|| {
                    Error::new(
                        ErrorKind::Usage,
                        format!("{}: file name is not UTF-8", e.path().display()),
                    )
                })?;
                let m =
                    fs::symlink_metadata(e.path()).map_err(|er| io("reading", &e.path(), er))?;
                walk(&e.path(), &format!("{rel}/{name}"), &m, out, failed)
            })();
            if let Err(err) = r {
                let path = e.path().display().to_string();
                let why = why(&err, &path);
                failed.push((path, why));
            }
        }
        return Ok(());
    }
    if !ft.is_file() {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("{}: not a regular file", p.display()),
        ));
    }
    let rel: RelativePath = rel.parse().map_err(|e| {
        Error::new(
            ErrorKind::Safety,
            format!("{}: unsafe name in a manifest", p.display()),
        )
        .source(e)
    })?;
    // Checked now, with every other source, not when its turn to be read comes: an unreadable
    // file is listed beside an unreadable folder before anything is sent.
    fs::File::open(p).map_err(|e| io("reading", p, e))?;
    out.push(Source {
        path: p.to_owned(),
        rel,
        fp: Fingerprint::of(meta),
    });
    Ok(())
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
