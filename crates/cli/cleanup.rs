//! Interrupt handling: on SIGINT or SIGTERM, remove every temporary output file this process
//! registered (the client library's registry, `rogatory_client::cleanup`: `fetch` partials that
//! would not be resumed, `encrypt`/`decrypt` outputs) and exit with code 130, so an interruption
//! never leaves partial output behind.

use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) use rogatory_client::cleanup::{register, unregister_with};

use crate::error::Exit;

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
        // Held until the process exits: nothing is published after the removal.
        let _removed = rogatory_client::cleanup::remove_registered();
        errln!("rogatory: error: interrupted");
        std::process::exit(i32::from(crate::error::code(Exit::Interrupted)));
    });
}
