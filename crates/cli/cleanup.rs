//! Interrupt handling: on SIGINT or SIGTERM, remove every temporary output file this process
//! registered and exit with code 130, so an interruption never leaves partial output behind.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Exit;

static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Set by the signal handler in serve mode: the relay shuts down cleanly and exits 0.
pub(crate) static SHUTDOWN: AtomicBool = AtomicBool::new(false);
static SERVE_MODE: AtomicBool = AtomicBool::new(false);

/// SIGINT/SIGTERM stop a server cleanly (exit 0, as a systemd unit expects) instead of
/// interrupting it; its state is durable at every point anyway.
pub(crate) fn serve_mode() {
    SERVE_MODE.store(true, Ordering::SeqCst);
}

pub(crate) fn install_signal_handler() {
    // If a handler cannot be installed the default action (termination) still applies; the
    // temporary files are then removed by the next run's stale-file sweep.
    let _ = ctrlc::set_handler(|| {
        if SERVE_MODE.load(Ordering::SeqCst) {
            SHUTDOWN.store(true, Ordering::SeqCst);
            return;
        }
        let pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
        for p in pending.iter() {
            let _ = std::fs::remove_file(p);
        }
        eprintln!("rogatory: error: interrupted");
        std::process::exit(i32::from(crate::error::code(Exit::Interrupted)));
    });
}

/// Registers a temporary file for removal on interrupt.
pub(crate) fn register(path: &Path) {
    PENDING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(path.to_owned());
}

/// Runs `f` (which publishes or removes `path`) with the registry locked, then forgets `path`,
/// so an interrupt can never remove a file that was just published.
pub(crate) fn unregister_with<T>(path: &Path, f: impl FnOnce() -> T) -> T {
    let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    let out = f();
    pending.retain(|p| p != path);
    out
}
