//! The receiving relay (`docs/relay.md`): a durable ciphertext store indexed in SQLite, keyless
//! verification of every piece against the sealed manifest, crash-safe resume, custody /
//! delivery / purge receipts in a Merkle audit log, policy, retention.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Crash points for the crash tests (shared with the sender).
pub use rogatory_transport::failpoint;
pub mod logfile;
pub mod policy;
pub mod relay;
pub mod serve;
pub mod storage;
pub mod witness;

pub use policy::Policy;
pub use relay::{
    DirectPack, Relay, RelayConfig, RelayError, TransferRow, index_needs_upgrade, system_clock,
};
pub use storage::{DiskStorage, Faulty, SimStorage, Storage, Unsynced};
