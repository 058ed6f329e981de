//! Crash points for the process-level crash tests (test-plan.md 24): with
//! `ROGATORY_TEST_FAILPOINTS=name=N[,name=N…]` in the environment, the process aborts (as
//! `kill -9` would: no destructors, no flushing) the Nth time it reaches `name`. Without the
//! variable, each point costs one relaxed atomic load.
//!
//! The relay's points: `store.after_write` (piece written, not synced), `sync.after_fsync` (data
//! synced, index not committed), `sync.after_commit` (index committed, DURABLE not yet sent),
//! `log.mid_append` (half an audit record written), `receipt.after_log` (receipt logged,
//! bundle not committed). The sender's: `heads.mid_write` (half of a batch of headers written
//! to `heads.bin`, not synced).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static POINTS: OnceLock<HashMap<String, (u64, AtomicU64)>> = OnceLock::new();

fn points() -> &'static HashMap<String, (u64, AtomicU64)> {
    POINTS.get_or_init(|| {
        let spec = std::env::var("ROGATORY_TEST_FAILPOINTS").unwrap_or_default();
        spec.split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((
                    k.trim().to_owned(),
                    (v.trim().parse().ok()?, AtomicU64::new(0)),
                ))
            })
            .collect()
    })
}

/// Aborts the process if `name` is armed and this is its Nth hit.
pub fn hit(name: &str) {
    let p = points();
    if p.is_empty() {
        return;
    }
    if let Some((n, count)) = p.get(name)
        && count.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        eprintln!("rogatory: failpoint {name} reached; aborting");
        std::process::abort();
    }
}

/// Whether `name` fires on this hit (for points that must act before aborting).
pub fn armed(name: &str) -> bool {
    let p = points();
    match p.get(name) {
        Some((n, count)) => count.fetch_add(1, Ordering::SeqCst) + 1 == *n,
        None => false,
    }
}
