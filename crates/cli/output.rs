//! Where results go: stdout, or a file that appears under its final name only once complete.
//!
//! A file output is written to a temporary file in the same directory (mode 0600), fsynced,
//! renamed over the final name (without clobbering unless `--force`), and the directory is
//! fsynced. On any failure, or an interrupt, the temporary file is removed and nothing is left
//! at the final name.

use std::fs::{self, File};
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::cleanup;
use crate::error::{CliError, Exit, Result};

/// Whether a path argument means stdin/stdout.
pub(crate) fn is_stdio(p: &Option<PathBuf>) -> bool {
    p.as_deref().is_none_or(|p| p == Path::new("-"))
}

/// A validated output destination; nothing is created until [`Target::open`].
#[derive(Debug)]
pub(crate) enum Target {
    Stdout,
    File { path: PathBuf, force: bool },
}

impl Target {
    /// Resolves `-o` and checks the local safety rules before any work starts.
    ///
    /// `binary`: whether the output may be binary (refused on a terminal).
    pub(crate) fn resolve(
        output: &Option<PathBuf>,
        input: &Option<PathBuf>,
        force: bool,
        binary: bool,
    ) -> Result<Self> {
        if is_stdio(output) {
            if binary && io::stdout().is_terminal() {
                return Err(CliError::new(
                    Exit::Usage,
                    "refusing to write binary output to a terminal",
                )
                .hint("use -o FILE, redirect stdout, or -a for armored output when encrypting"));
            }
            return Ok(Self::Stdout);
        }
        let path = output.clone().unwrap_or_default();
        if !is_stdio(input) {
            let input = input.as_deref().unwrap_or(Path::new("-"));
            if same_file(input, &path) {
                return Err(CliError::new(
                    Exit::Safety,
                    format!("input and output are the same file: {}", path.display()),
                ));
            }
        }
        if !force && fs::symlink_metadata(&path).is_ok() {
            return Err(CliError::new(
                Exit::Safety,
                format!("output file already exists: {}", path.display()),
            )
            .hint("choose another -o, or pass --force to replace it"));
        }
        Ok(Self::File { path, force })
    }

    /// Opens the sink: stdout, or a fresh temporary file next to the final path.
    pub(crate) fn open(self) -> Result<Sink> {
        match self {
            Self::Stdout => Ok(Sink::Stdout(io::stdout().lock())),
            Self::File { path, force } => {
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                    _ => PathBuf::from("."),
                };
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| {
                        CliError::new(Exit::Usage, format!("not a file name: {}", path.display()))
                    })?;
                // Registered as it is created: an interrupt in between would leave it behind.
                let tmp = cleanup::create_registered(
                    || {
                        tempfile::Builder::new()
                            .prefix(&format!(".{name}."))
                            .suffix(".rogatory-partial")
                            .tempfile_in(&dir)
                    },
                    NamedTempFile::path,
                )
                .map_err(|e| storage_error(&dir, e))?;
                Ok(Sink::File(AtomicFile {
                    tmp: Some(tmp),
                    path,
                    dir,
                    force,
                }))
            }
        }
    }
}

/// Whether two paths name the same file (same device and inode: also catches hard links,
/// symlinks and `a/../x` spellings).
fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

pub(crate) fn storage_error(path: &Path, e: io::Error) -> CliError {
    CliError::new(Exit::Storage, format!("cannot write {}", path.display())).source(e)
}

/// An open output.
#[derive(Debug)]
pub(crate) enum Sink {
    Stdout(io::StdoutLock<'static>),
    File(AtomicFile),
}

impl Sink {
    /// Publishes the output: flush stdout, or fsync + rename + fsync the directory.
    pub(crate) fn commit(self) -> Result<()> {
        match self {
            Self::Stdout(mut s) => s
                .flush()
                .map_err(|e| storage_error(Path::new("<stdout>"), e)),
            Self::File(f) => f.commit(),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Stdout(_) => "<stdout>".into(),
            Self::File(f) => f.path.display().to_string(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stdout(s) => s.write(buf),
            Self::File(f) => f.file()?.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Stdout(s) => s.write_all(buf),
            Self::File(f) => f.file()?.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout(s) => s.flush(),
            Self::File(f) => f.file()?.flush(),
        }
    }
}

/// A temporary file that becomes `path` on commit, and disappears otherwise.
#[derive(Debug)]
pub(crate) struct AtomicFile {
    tmp: Option<NamedTempFile>,
    path: PathBuf,
    dir: PathBuf,
    force: bool,
}

impl AtomicFile {
    fn file(&mut self) -> io::Result<&mut File> {
        self.tmp
            .as_mut()
            .map(NamedTempFile::as_file_mut)
            .ok_or_else(|| io::Error::other("output already committed"))
    }

    fn commit(mut self) -> Result<()> {
        let Some(tmp) = self.tmp.take() else {
            return Err(CliError::new(Exit::Internal, "output committed twice"));
        };
        tmp.as_file()
            .sync_all()
            .map_err(|e| storage_error(&self.path, e))?;
        let tmp_path = tmp.path().to_owned();
        let persisted = cleanup::unregister_with(&tmp_path, || {
            if self.force {
                tmp.persist(&self.path)
            } else {
                tmp.persist_noclobber(&self.path)
            }
        });
        match persisted {
            Ok(_) => {}
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                // Dropping `e.file` removes the temporary file.
                return Err(CliError::new(
                    Exit::Safety,
                    format!("output file appeared meanwhile: {}", self.path.display()),
                ));
            }
            Err(e) => return Err(storage_error(&self.path, e.error)),
        }
        fsync_dir(&self.dir).map_err(|e| storage_error(&self.dir, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let p = tmp.path().to_owned();
            cleanup::unregister_with(&p, || drop(tmp));
        }
    }
}

/// Makes a rename or a file creation in `dir` durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
