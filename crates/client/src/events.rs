//! What the client reports while it works (`send`, `fetch`). The binary prints these as human lines, a progress
//! bar, or JSON Lines (`docs/cli.md` "JSON events"); an embedding program receives them through
//! its callback.

use rogatory_custody::TransferId;
use serde::Serialize;

/// One event of a running operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A sentence for a person (resuming, what the relay already holds, …).
    Info {
        /// The sentence.
        message: String,
    },
    /// Connected to a relay (mutual TLS verified, HELLO/WELCOME done).
    Connected {
        /// The relay's agency, from its certificate.
        relay_agency: String,
        /// The TLS key-exchange group this connection negotiated (e.g. `X25519MLKEM768`).
        tls_key_exchange: Option<String>,
    },
    /// A transfer starts.
    Start {
        /// The transfer.
        transfer_id: TransferId,
        /// Files in the transfer.
        files: usize,
        /// Ciphertext bytes of the transfer.
        bytes_total: u64,
    },
    /// Bytes done so far (durable at the relay for a send; written and verified for a fetch).
    Progress {
        /// Bytes done.
        bytes_done: u64,
        /// Bytes in all.
        bytes_total: u64,
    },
    /// A file is done: durable at the relay for a send; verified and durable under its final
    /// name for a fetch.
    FileDone {
        /// Its path in the manifest.
        path: String,
    },
    /// A fetched transfer is complete: every file in place, the delivery receipt saved.
    Fetched(crate::fetch::Fetched),
    /// Sources that cannot be sent (nothing was sent).
    Failed {
        /// `(path, why)` for each.
        failed: Vec<(String, String)>,
    },
}
