//! Signal handling: on SIGINT, SIGTERM or SIGHUP, remove every temporary output file this
//! process registered (the client library's registry, `rogatory_client::cleanup`: `fetch`
//! partials that would not be resumed, `encrypt`/`decrypt` outputs) and exit with code 130, so an
//! interruption never leaves partial output behind. A relay (`relay serve`) instead stops cleanly
//! on SIGINT/SIGTERM and reloads its trust store, revocations, CA bundle, CRL and policy on
//! SIGHUP (`relay.md` §11).

use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) use rogatory_client::cleanup::{create_registered, unregister_with};

use crate::error::Exit;

/// Set by the signal handler in serve mode: the relay shuts down cleanly and exits 0.
pub(crate) static SHUTDOWN: AtomicBool = AtomicBool::new(false);
/// Set by SIGHUP in serve mode: the relay reloads its configuration (`relay.md` §11).
pub(crate) static RELOAD: AtomicBool = AtomicBool::new(false);
static SERVE_MODE: AtomicBool = AtomicBool::new(false);

/// SIGINT/SIGTERM stop a server cleanly (exit 0, as a systemd unit expects) instead of
/// interrupting it; its state is durable at every point anyway. SIGHUP asks it to reload.
pub(crate) fn serve_mode() {
    SERVE_MODE.store(true, Ordering::SeqCst);
}

pub(crate) fn install_signal_handler() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    // If the handler cannot be installed the default action (termination) still applies; the
    // temporary files are then removed by the next run's stale-file sweep. The signals are
    // handled on a thread of their own (signal-hook's self-pipe), never inside the handler.
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if SERVE_MODE.load(Ordering::SeqCst) {
                    if signal == SIGHUP {
                        RELOAD.store(true, Ordering::SeqCst);
                    } else {
                        SHUTDOWN.store(true, Ordering::SeqCst);
                    }
                    continue;
                }
                // Held until the process exits: nothing is published after the removal.
                let _removed = rogatory_client::cleanup::remove_registered();
                errln!("rogatory: error: interrupted");
                std::process::exit(i32::from(crate::error::code(Exit::Interrupted)));
            }
        });
}
