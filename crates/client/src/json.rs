//! What `--json` prints: one [`Event`] per line on stdout, for every command of the `rogatory`
//! binary (`docs/cli.md` "JSON events").
//!
//! This is the scripts' contract. Each variant is one `type`, with always the same fields (a
//! field that has no value is `null`, never missing), and `docs/cli.md` documents each one: a test
//! here checks the table there against [`Event::samples`], and `tests/cli_output.rs` checks every
//! line the binary prints against the same table.

use serde::Serialize;

/// One line of `--json` output.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// `keygen -o FILE`: a new age identity was written.
    KeyCreated {
        /// The identity file.
        path: String,
        /// Its recipient (public key).
        public_key: String,
        /// Whether it is the hybrid post-quantum kind.
        post_quantum: bool,
    },
    /// `encrypt -o FILE`: the age file is in place.
    Encrypted {
        /// The age file.
        output: String,
        /// Plaintext bytes read.
        plaintext_bytes: u64,
    },
    /// `decrypt -o FILE`: the plaintext is in place, authenticated.
    Decrypted {
        /// The plaintext file.
        output: String,
        /// Plaintext bytes written.
        plaintext_bytes: u64,
    },
    /// `demo`: what the demonstration did and where it is.
    Demo {
        /// The demonstration's directory (removed unless kept).
        directory: String,
        /// Whether the directory was kept (`--keep`).
        kept: bool,
        /// The transfer it sent and fetched.
        transfer_id: String,
        /// The sender's custody receipt.
        receipt: String,
        /// The TLS key exchange of the live connection.
        tls_key_exchange: Option<String>,
    },
    /// `agency init`: a new agency home.
    AgencyCreated {
        /// The agency id.
        agency: String,
        /// The home directory.
        home: String,
        /// Its signed card (`card.note`).
        card: String,
        /// The card's fingerprint, to be compared out of band.
        fingerprint: String,
        /// Whether the home holds no age identity (a relay's).
        relay_only: bool,
    },
    /// `agency card`: this agency's card, parsed.
    Card {
        /// The card's body (id, name, jurisdiction, keys, pins).
        card: serde_json::Value,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// `agency fingerprint`.
    Fingerprint {
        /// The agency id.
        agency: String,
        /// The card's fingerprint.
        fingerprint: String,
    },
    /// `agency reissue-card`: a new card for the same keys.
    CardReissued {
        /// The agency id.
        agency: String,
        /// The new `card.note`.
        card: String,
        /// Its fingerprint (unchanged: the signing key is the same).
        fingerprint: String,
        /// Whether the card now names a post-quantum age recipient.
        post_quantum: bool,
    },
    /// `agency rotate`: new signing, age and TLS keys and a new card, signed by the new key and
    /// the previous one (`custody.md` §8.5).
    CardRotated {
        /// The agency id.
        agency: String,
        /// The new `card.note`.
        card: String,
        /// `card-chain.note`: every card this agency issued, what partners pass to `trust add`.
        card_chain: String,
        /// The new card's fingerprint.
        fingerprint: String,
        /// The previous card's fingerprint.
        previous_fingerprint: String,
        /// From when the new card is valid (and the previous key retired).
        valid_from: String,
        /// The file that keeps the retired age secrets (0600).
        retired: String,
    },
    /// `agency export-relay DIR`: a relay home without the age identity.
    RelayHomeExported {
        /// The agency id.
        agency: String,
        /// The new relay home.
        home: String,
    },
    /// `trust add` (the card added) and `trust list` (one per trusted agency).
    Trusted {
        /// The agency id.
        agency: String,
        /// Its name.
        name: String,
        /// Its jurisdiction.
        jurisdiction: String,
        /// The card's fingerprint.
        fingerprint: String,
        /// Whether the card names a post-quantum age recipient.
        post_quantum: bool,
    },
    /// `trust remove`.
    Untrusted {
        /// The agency id.
        agency: String,
    },
    /// `agency revoke`, `trust revoke`: one per revocation stored (`custody.md` §8.3).
    KeyRevoked {
        /// Whose key.
        agency: String,
        /// `tls` or `signing`.
        key: String,
        /// The revoked key's SHA-256 (the card's TLS pin, or of the signing key).
        key_sha256: String,
        /// Who signed the revocation: the agency itself, or this home's agency (local).
        issuer: String,
        /// From when the key is revoked.
        time: String,
        /// Why.
        reason: String,
        /// The stored revocation.
        path: String,
    },
    /// `relay serve`: the relay accepts connections.
    Listening {
        /// The relay's agency.
        agency: String,
        /// The address it listens on.
        address: String,
    },
    /// `relay purge`, one per transfer.
    RelayPurged {
        /// Whether nothing was removed (`--dry-run`).
        dry_run: bool,
        /// The transfer.
        transfer_id: String,
        /// Its sender.
        sender: String,
        /// Ciphertext bytes it held.
        ciphertext_bytes: u64,
        /// Why (the retention rule that applied).
        reason: String,
    },
    /// `relay purge`: the end.
    RelayPurgeDone {
        /// Transfers purged (or that would be).
        purged: u64,
        /// Ciphertext bytes they held.
        ciphertext_bytes: u64,
        /// Whether nothing was removed (`--dry-run`).
        dry_run: bool,
    },
    /// `relay gc`, one per partial upload removed.
    RelayGc {
        /// The transfer.
        transfer_id: String,
    },
    /// `relay gc`: the end.
    RelayGcDone {
        /// Partial uploads removed.
        removed: u64,
    },
    /// `relay scrub`, one per fault found.
    ScrubFault {
        /// The transfer.
        transfer_id: String,
        /// The file (its index in the manifest).
        file: u64,
        /// What is wrong.
        problem: String,
    },
    /// `relay scrub` when every stored piece verifies.
    ScrubOk {},
    /// `send`, `status`, `inbox`: connected to the relay (mutual TLS, HELLO/WELCOME done).
    Connected {
        /// The relay's agency, from its certificate.
        relay_agency: String,
        /// The TLS key-exchange group of this connection (e.g. `X25519MLKEM768`).
        tls_key_exchange: Option<String>,
    },
    /// `send --dry-run`: what would be sent, and who would see what.
    Plan {
        /// The recipients.
        recipients: Vec<String>,
        /// `[path, size]` of every file.
        files: Vec<(String, u64)>,
        /// Plaintext bytes in all.
        bytes: u64,
        /// All the legal metadata (what the recipients see).
        legal: serde_json::Value,
        /// The part of it the relay sees in the clear.
        relay_sees: serde_json::Value,
        /// The legal fields the relay's policy requires.
        relay_requires: Vec<String>,
        /// A send of these files that is receipted or interrupted, else `null`.
        existing: Option<String>,
    },
    /// `send`, `fetch`: a transfer starts.
    Start {
        /// The transfer.
        transfer_id: String,
        /// Its files.
        files: u64,
        /// Its ciphertext bytes.
        bytes_total: u64,
    },
    /// `send`, `fetch`: bytes done so far, at most every 100 ms and at the end.
    Progress {
        /// Durable at the relay (send); authenticated, resumed or already published (fetch).
        bytes_done: u64,
        /// Bytes in all.
        bytes_total: u64,
    },
    /// `send`, `fetch`: a file is durable (at the relay, or under its final name).
    FileDone {
        /// Its relative path in the transfer.
        path: String,
    },
    /// `send`, `fetch`, `status`: a receipt was verified and saved.
    Receipt {
        /// `custody`, `delivery` or `purge`.
        kind: String,
        /// The recipient that signed a delivery receipt, else `null`.
        agency: Option<String>,
        /// Where it was saved.
        path: String,
    },
    /// `send`: the transfer is receipted.
    Sent {
        /// The transfer.
        transfer_id: String,
        /// Its files.
        files: u64,
        /// Its ciphertext bytes.
        bytes_total: u64,
        /// Bytes this run sent.
        bytes_sent: u64,
        /// Bytes the relay already held durably.
        bytes_skipped: u64,
        /// The custody receipt.
        receipt: String,
    },
    /// `send`: sources that cannot be sent; nothing was sent (exit 2).
    Unsendable {
        /// Each source and why.
        failed: Vec<Unsendable>,
    },
    /// `inbox`, one per transfer awaiting this agency.
    Inbox {
        /// The transfer.
        transfer_id: String,
        /// Its sender.
        sender: String,
        /// Its files.
        files: u64,
        /// Its ciphertext bytes.
        ciphertext_bytes: u64,
        /// When the relay receipted it.
        received: String,
        /// Its state at the relay.
        state: String,
        /// All the legal metadata (field names as in the manifest), `null` if not opened.
        legal: Option<serde_json::Value>,
        /// Why the legal metadata are not shown, else `null`.
        legal_problem: Option<String>,
    },
    /// `fetch`, one per transfer fetched: every file in place, the delivery receipt saved.
    Fetched {
        /// The transfer.
        transfer_id: String,
        /// Its sender.
        sender: String,
        /// Its files.
        files: u64,
        /// Its ciphertext bytes.
        bytes_total: u64,
        /// Plaintext bytes in place.
        plaintext_bytes: u64,
        /// Ciphertext bytes this run downloaded.
        bytes_downloaded: u64,
        /// Ciphertext bytes an earlier, interrupted run had already verified.
        bytes_resumed: u64,
        /// The transfer's folder.
        output: String,
        /// The delivery receipt.
        receipt: String,
    },
    /// `fetch --all` when nothing awaits delivery.
    NothingToFetch {},
    /// `inbox` when nothing awaits this agency.
    InboxEmpty {},
    /// `status`.
    Status {
        /// The transfer.
        transfer_id: String,
        /// Its state at the relay.
        state: String,
        /// The TLS key exchange of this connection.
        tls_key_exchange: Option<String>,
        /// Receipts the relay holds for it.
        receipts: u64,
    },
    /// `verify FILE`: a statement, card or bundle verifies.
    Verified {
        /// The file.
        path: String,
        /// What it proves, in words.
        proves: String,
    },
    /// `verify FILE`: it does not verify.
    VerifyFailed {
        /// The file.
        path: String,
        /// Why.
        problem: String,
    },
    /// `verify DIR`: a fetched transfer folder verifies.
    PackageVerified(Package),
    /// `verify DIR`: a fetched transfer folder does not verify.
    PackageFailed(Package),
    /// `purge`, one per transfer.
    Purged {
        /// `sent` or `fetched`.
        side: String,
        /// The transfer.
        transfer_id: String,
        /// What was (or would be) removed.
        path: String,
        /// The sealed retention date.
        retain_until: String,
        /// Files removed (a fetched transfer's).
        files_removed: u64,
        /// Whether nothing was removed (`--dry-run`).
        dry_run: bool,
    },
    /// `purge`: the end.
    PurgeDone {
        /// Transfers purged (or that would be).
        purged: u64,
        /// Whether nothing was removed (`--dry-run`).
        dry_run: bool,
    },
    /// `audit verify`.
    AuditVerified {
        /// The log file.
        log: String,
        /// The agency whose log it is.
        agency: String,
        /// Entries, all under a signed checkpoint.
        entries: u64,
        /// Size of the checkpoint the relay's index keeps, which the log extends (`null`
        /// without an index next to the log).
        kept_checkpoint: Option<u64>,
    },
    /// `audit show`, one per entry.
    AuditEntry {
        /// Its index in the log.
        index: u64,
        /// The statement's kind.
        kind: String,
        /// The transfer it is about.
        transfer_id: String,
        /// Who signed it.
        issuer: String,
        /// When.
        time: String,
        /// What it says, in words.
        description: String,
        /// The statement's text.
        entry: String,
    },
    /// `audit export`.
    AuditExported {
        /// Entries exported.
        entries: u64,
        /// The export file.
        output: String,
    },
    /// Any command that fails: the last line (also printed on stderr).
    Error {
        /// The exit code.
        exit_code: i32,
        /// What went wrong.
        message: String,
    },
}

/// A source `send` cannot send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unsendable {
    /// The path as given or found.
    pub path: String,
    /// Why.
    pub error: String,
}

/// A fetched transfer folder as `verify DIR` found it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Package {
    /// The folder.
    pub path: String,
    /// The transfer, if its manifest could be read.
    pub transfer_id: Option<String>,
    /// Its sender.
    pub sender: Option<String>,
    /// Its recipients.
    pub recipients: Vec<String>,
    /// The relay that signed the custody receipt.
    pub relay: Option<String>,
    /// The recipient that signed the delivery receipt.
    pub delivered_by: Option<String>,
    /// Files checked.
    pub files: u64,
    /// Plaintext bytes checked.
    pub bytes: u64,
    /// When the files were purged at the end of retention, else `null`.
    pub purged_at: Option<String>,
    /// The legal metadata, notes included (`null` fields are not given).
    pub legal: PackageLegal,
    /// What does not verify, each naming its file (empty when it verifies).
    pub problems: Vec<String>,
}

/// The legal metadata of a [`Package`], every field named.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct PackageLegal {
    pub case_reference: Option<String>,
    pub legal_basis: Option<String>,
    pub requesting_authority: Option<String>,
    pub executing_authority: Option<String>,
    pub purpose: Option<String>,
    pub retain_until: Option<String>,
    pub classification: Option<String>,
    pub onward_transfer: Option<String>,
    pub notes: Option<String>,
}

impl Event {
    /// The line: compact JSON, no newline.
    pub fn to_line(&self) -> String {
        // Serialising this type cannot fail: string keys, no non-finite floats.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","exit_code":1,"message":"event not printable: {e}"}}"#)
        })
    }

    /// One event of each `type`, for the documentation check (`docs/cli.md` "JSON events").
    pub fn samples() -> Vec<Event> {
        let s = String::new;
        let package = Package {
            path: s(),
            transfer_id: None,
            sender: None,
            recipients: vec![],
            relay: None,
            delivered_by: None,
            files: 0,
            bytes: 0,
            purged_at: None,
            legal: PackageLegal::default(),
            problems: vec![],
        };
        vec![
            Event::KeyCreated {
                path: s(),
                public_key: s(),
                post_quantum: false,
            },
            Event::Encrypted {
                output: s(),
                plaintext_bytes: 0,
            },
            Event::Decrypted {
                output: s(),
                plaintext_bytes: 0,
            },
            Event::Demo {
                directory: s(),
                kept: false,
                transfer_id: s(),
                receipt: s(),
                tls_key_exchange: None,
            },
            Event::AgencyCreated {
                agency: s(),
                home: s(),
                card: s(),
                fingerprint: s(),
                relay_only: false,
            },
            Event::Card {
                card: serde_json::Value::Null,
                fingerprint: s(),
            },
            Event::Fingerprint {
                agency: s(),
                fingerprint: s(),
            },
            Event::CardReissued {
                agency: s(),
                card: s(),
                fingerprint: s(),
                post_quantum: false,
            },
            Event::CardRotated {
                agency: s(),
                card: s(),
                card_chain: s(),
                fingerprint: s(),
                previous_fingerprint: s(),
                valid_from: s(),
                retired: s(),
            },
            Event::RelayHomeExported {
                agency: s(),
                home: s(),
            },
            Event::Trusted {
                agency: s(),
                name: s(),
                jurisdiction: s(),
                fingerprint: s(),
                post_quantum: false,
            },
            Event::Untrusted { agency: s() },
            Event::KeyRevoked {
                agency: s(),
                key: s(),
                key_sha256: s(),
                issuer: s(),
                time: s(),
                reason: s(),
                path: s(),
            },
            Event::Listening {
                agency: s(),
                address: s(),
            },
            Event::RelayPurged {
                dry_run: false,
                transfer_id: s(),
                sender: s(),
                ciphertext_bytes: 0,
                reason: s(),
            },
            Event::RelayPurgeDone {
                purged: 0,
                ciphertext_bytes: 0,
                dry_run: false,
            },
            Event::RelayGc { transfer_id: s() },
            Event::RelayGcDone { removed: 0 },
            Event::ScrubFault {
                transfer_id: s(),
                file: 0,
                problem: s(),
            },
            Event::ScrubOk {},
            Event::Connected {
                relay_agency: s(),
                tls_key_exchange: None,
            },
            Event::Plan {
                recipients: vec![],
                files: vec![],
                bytes: 0,
                legal: serde_json::Value::Null,
                relay_sees: serde_json::Value::Null,
                relay_requires: vec![],
                existing: None,
            },
            Event::Start {
                transfer_id: s(),
                files: 0,
                bytes_total: 0,
            },
            Event::Progress {
                bytes_done: 0,
                bytes_total: 0,
            },
            Event::FileDone { path: s() },
            Event::Receipt {
                kind: s(),
                agency: None,
                path: s(),
            },
            Event::Sent {
                transfer_id: s(),
                files: 0,
                bytes_total: 0,
                bytes_sent: 0,
                bytes_skipped: 0,
                receipt: s(),
            },
            Event::Unsendable { failed: vec![] },
            Event::Inbox {
                transfer_id: s(),
                sender: s(),
                files: 0,
                ciphertext_bytes: 0,
                received: s(),
                state: s(),
                legal: None,
                legal_problem: None,
            },
            Event::Fetched {
                transfer_id: s(),
                sender: s(),
                files: 0,
                bytes_total: 0,
                plaintext_bytes: 0,
                bytes_downloaded: 0,
                bytes_resumed: 0,
                output: s(),
                receipt: s(),
            },
            Event::NothingToFetch {},
            Event::InboxEmpty {},
            Event::Status {
                transfer_id: s(),
                state: s(),
                tls_key_exchange: None,
                receipts: 0,
            },
            Event::Verified {
                path: s(),
                proves: s(),
            },
            Event::VerifyFailed {
                path: s(),
                problem: s(),
            },
            Event::PackageVerified(package.clone()),
            Event::PackageFailed(package),
            Event::Purged {
                side: s(),
                transfer_id: s(),
                path: s(),
                retain_until: s(),
                files_removed: 0,
                dry_run: false,
            },
            Event::PurgeDone {
                purged: 0,
                dry_run: false,
            },
            Event::AuditVerified {
                log: s(),
                agency: s(),
                entries: 0,
                kept_checkpoint: None,
            },
            Event::AuditEntry {
                index: 0,
                kind: s(),
                transfer_id: s(),
                issuer: s(),
                time: s(),
                description: s(),
                entry: s(),
            },
            Event::AuditExported {
                entries: 0,
                output: s(),
            },
            Event::Error {
                exit_code: 0,
                message: s(),
            },
        ]
    }
}

/// The `JSON events` table of `docs/cli.md`: `type` → documented field names, sorted.
///
/// A row is `` | `type` | commands | `field`, `field`, … | ``; the third column lists every
/// field and nothing else in backquotes.
pub fn documented_events(cli_md: &str) -> Vec<(String, Vec<String>)> {
    let Some(start) = cli_md.find("## JSON events") else {
        return Vec::new();
    };
    let section = &cli_md[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    section[..end]
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim().trim_matches('|').split('|').collect();
            if cells.len() != 3 {
                return None;
            }
            let name = ticked(cells[0]);
            if name.len() != 1 || name[0] == "type" {
                return None;
            }
            let mut fields = ticked(cells[2]);
            fields.sort();
            Some((name[0].clone(), fields))
        })
        .collect()
}

/// The fields of an event line, `type` excepted, sorted; `None` if it is not an object with a
/// string `type`.
pub fn fields_of(line: &serde_json::Value) -> Option<(String, Vec<String>)> {
    let o = line.as_object()?;
    let t = o.get("type")?.as_str()?.to_owned();
    let mut keys: Vec<String> = o.keys().filter(|k| *k != "type").cloned().collect();
    keys.sort();
    Some((t, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant has a sample: adding one without a sample fails to compile here.
    #[test]
    fn samples_cover_every_variant() {
        let mut seen = [false; 43];
        for e in Event::samples() {
            let i = match e {
                Event::KeyCreated { .. } => 0,
                Event::Encrypted { .. } => 1,
                Event::Decrypted { .. } => 2,
                Event::Demo { .. } => 3,
                Event::AgencyCreated { .. } => 4,
                Event::Card { .. } => 5,
                Event::Fingerprint { .. } => 6,
                Event::CardReissued { .. } => 7,
                Event::RelayHomeExported { .. } => 8,
                Event::Trusted { .. } => 9,
                Event::Untrusted { .. } => 10,
                Event::Listening { .. } => 11,
                Event::RelayPurged { .. } => 12,
                Event::RelayGc { .. } => 13,
                Event::ScrubFault { .. } => 14,
                Event::ScrubOk {} => 15,
                Event::Connected { .. } => 16,
                Event::Plan { .. } => 17,
                Event::Start { .. } => 18,
                Event::Progress { .. } => 19,
                Event::FileDone { .. } => 20,
                Event::Receipt { .. } => 21,
                Event::Sent { .. } => 22,
                Event::Unsendable { .. } => 23,
                Event::Inbox { .. } => 24,
                Event::Fetched { .. } => 25,
                Event::NothingToFetch {} => 26,
                Event::InboxEmpty {} => 27,
                Event::Status { .. } => 28,
                Event::Verified { .. } => 29,
                Event::VerifyFailed { .. } => 30,
                Event::PackageVerified(_) => 31,
                Event::PackageFailed(_) => 32,
                Event::Purged { .. } => 33,
                Event::PurgeDone { .. } => 34,
                Event::AuditVerified { .. } => 35,
                Event::AuditEntry { .. } => 36,
                Event::AuditExported { .. } => 37,
                Event::Error { .. } => 38,
                Event::KeyRevoked { .. } => 39,
                Event::CardRotated { .. } => 40,
                Event::RelayPurgeDone { .. } => 41,
                Event::RelayGcDone { .. } => 42,
            };
            assert!(!seen[i], "two samples of variant {i}");
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s), "a variant without a sample");
    }

    /// `docs/cli.md` documents exactly these types, each with exactly its fields.
    #[test]
    fn cli_md_table_matches_the_event_type() {
        let md = include_str!("../../../docs/cli.md");
        let documented = documented_events(md);
        let mut from_type = Vec::new();
        for e in Event::samples() {
            let v = serde_json::to_value(&e).expect("serialise");
            from_type.push(fields_of(&v).expect("an object with a type"));
        }
        for (t, fields) in &from_type {
            let doc = documented.iter().find(|(d, _)| d == t);
            assert_eq!(
                doc.map(|(_, f)| f),
                Some(fields),
                "docs/cli.md \"JSON events\": row for `{t}`"
            );
        }
        for (t, _) in &documented {
            assert!(
                from_type.iter().any(|(f, _)| f == t),
                "docs/cli.md documents `{t}`, which no event has"
            );
        }
        let mut types: Vec<_> = documented.iter().map(|(t, _)| t).collect();
        types.sort();
        types.dedup();
        assert_eq!(types.len(), documented.len(), "a type documented twice");
    }
}
