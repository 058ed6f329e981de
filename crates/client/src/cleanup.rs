//! Temporary files this process is writing, for an interrupt handler to remove.
//!
//! The library never installs a signal handler and never exits the process. While it writes a
//! file that must not outlive an interruption (a `fetch` partial that would not be resumed, an
//! output on its way to its final name), the file's path is registered here; it is forgotten
//! the moment the file is published or removed. A program that wants the `rogatory` binary's
//! behaviour on SIGINT/SIGTERM calls [`remove_registered`] from its own handler before it exits
//! (`crates/cli/cleanup.rs` does). Anything a killed process leaves behind anyway (SIGKILL, power
//! loss) is swept by the next `fetch` into the same directory (`docs/cli.md` "Receiving").

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

static PENDING: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn pending() -> MutexGuard<'static, Option<HashSet<PathBuf>>> {
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers a temporary file for removal on interrupt.
pub fn register(path: &Path) {
    pending()
        .get_or_insert_with(HashSet::new)
        .insert(path.to_owned());
}

/// Creates a temporary file whose name is known only once it exists (`create`, a `tempfile`
/// builder, say) and registers its path (`path_of`), with the registry locked throughout: a
/// [`remove_registered`] running meanwhile waits, so it comes before the file exists or after it
/// is registered, never between (where it would leave the file behind).
pub fn create_registered<T, E>(
    create: impl FnOnce() -> Result<T, E>,
    path_of: impl FnOnce(&T) -> &Path,
) -> Result<T, E> {
    let mut pending = pending();
    let made = create()?;
    pending
        .get_or_insert_with(HashSet::new)
        .insert(path_of(&made).to_owned());
    Ok(made)
}

/// Runs `f` (which publishes or removes `path`) with the registry locked, then forgets `path`,
/// so that [`remove_registered`] can never remove a file that was just published.
pub fn unregister_with<T>(path: &Path, f: impl FnOnce() -> T) -> T {
    let mut pending = pending();
    let out = f();
    if let Some(set) = pending.as_mut() {
        set.remove(path);
    }
    out
}

/// Removes every registered file. The registry stays locked for as long as the returned guard
/// lives: call it last, just before exiting, so that no file is published after it ran.
pub fn remove_registered() -> RemovedGuard {
    let pending = pending();
    for p in pending.iter().flatten() {
        let _ = std::fs::remove_file(p);
    }
    RemovedGuard { pending }
}

/// Holds the registry locked after [`remove_registered`]: nothing can be published (renamed to
/// its final name) while it lives.
#[derive(Debug)]
pub struct RemovedGuard {
    pending: MutexGuard<'static, Option<HashSet<PathBuf>>>,
}

impl RemovedGuard {
    /// How many files were registered (and removed).
    pub fn removed(&self) -> usize {
        self.pending.as_ref().map_or(0, HashSet::len)
    }
}
