//! Command-line grammar (clap). Flags follow age where they apply.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Rogatory: move evidence between agencies, end-to-end encrypted, with signed receipts.
#[derive(Debug, Parser)]
#[command(name = "rogatory", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 ok, 1 internal error, 2 usage, 3 integrity or \
authentication failure, 4 no usable identity or key, 5 transport failure (retryable), \
6 refused by peer, 7 local storage error, 8 refused by local safety policy, 130 interrupted."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Generate an age identity, X25519 or hybrid post-quantum (secret key file, mode 0600).
    Keygen(KeygenArgs),
    /// Encrypt a file to one or more age recipients.
    Encrypt(EncryptArgs),
    /// Decrypt an age file with one or more identity files.
    Decrypt(DecryptArgs),
    /// Run a self-contained demonstration in a temporary directory.
    Demo(DemoArgs),
    /// This agency: create its keys, show its card and fingerprint.
    #[command(subcommand)]
    Agency(AgencyCommand),
    /// Trusted agencies.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// This agency's relay.
    #[command(subcommand)]
    Relay(RelayCommand),
    /// Send files and directories to agencies through a relay (resumes when re-run).
    Send(SendArgs),
    /// State and receipts of a transfer at a relay.
    Status(StatusArgs),
    /// List the transfers that await this agency at a relay.
    Inbox(InboxArgs),
    /// Download, verify and decrypt transfers into a directory; send the delivery receipt.
    Fetch(FetchArgs),
    /// Verify receipts, signed statements, checkpoints and cards offline, or fetched output
    /// folders (every transfer's files, seal and receipts); print what each proves.
    Verify {
        /// Files, fetched output directories or transfer folders to verify.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Remove completed sends, or with DIR fetched transfers, past their retention date.
    ///
    /// Retention is the sealed manifest's retain_until. What the receipts need stays (seal,
    /// receipts, manifest digest); each purge is recorded in the home's purged.log.
    Purge(PurgeArgs),
    /// Check, show or export the relay's audit log.
    Audit(AuditArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout.
    Man,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep the demo directory instead of removing it.
    #[arg(long)]
    pub(crate) keep: bool,
}

#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Write the identity to FILE (created 0600; never overwritten) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Generate a hybrid post-quantum identity (mlkem768x25519: AGE-SECRET-KEY-PQ-1…, whose
    /// recipient is age1pq1…) instead of an X25519 one.
    #[arg(long)]
    pub(crate) pq: bool,
}

#[derive(Debug, Args)]
pub(crate) struct EncryptArgs {
    /// Encrypt to RECIPIENT (an age1… or age1pq1… public key; never both kinds). May be repeated.
    #[arg(short, long = "recipient", value_name = "RECIPIENT")]
    pub(crate) recipients: Vec<String>,
    /// Encrypt to the recipients listed in FILE (one per line, # comments). May be repeated.
    #[arg(short = 'R', long = "recipients-file", value_name = "FILE")]
    pub(crate) recipients_files: Vec<PathBuf>,
    /// Write ASCII-armored output (PEM-like text).
    #[arg(short, long)]
    pub(crate) armor: bool,
    #[command(flatten)]
    pub(crate) io: IoArgs,
}

/// Input and output of `encrypt` and `decrypt`.
#[derive(Debug, Args)]
pub(crate) struct IoArgs {
    /// Write to FILE instead of stdout. FILE appears under its name only once complete and,
    /// when decrypting, only after the whole input has authenticated; on any failure nothing
    /// is left behind.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub(crate) force: bool,
    /// Input file (binary or armored when decrypting); omitted or `-` reads stdin.
    #[arg(value_name = "INPUT")]
    pub(crate) input: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DecryptArgs {
    /// Identity file (AGE-SECRET-KEY-1… lines, mode 0600). May be repeated.
    #[arg(short, long = "identity", value_name = "FILE", required = true)]
    pub(crate) identities: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) io: IoArgs,
}

/// Global options.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The agency's state directory (default: $ROGATORY_HOME, else $XDG_DATA_HOME/rogatory).
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    /// Print JSON Lines events on stdout (start, progress, file_done, receipt, summary, error).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Print only errors and results.
    #[arg(long, short, global = true)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgencyCommand {
    /// Create this agency's identity (signing key, age identity), TLS key and certificate, and card.
    Init(AgencyInitArgs),
    /// Print this agency's public card (JSON).
    Card,
    /// Print the fingerprint of this agency, or of a card file.
    Fingerprint {
        /// A card file (default: this agency's own).
        card: Option<PathBuf>,
    },
    /// Re-sign this agency's card from its identity (same signing key, name, jurisdiction and
    /// TLS pins); with --add-pq, first add a hybrid post-quantum age key (docs/custody.md §8.2).
    ReissueCard {
        /// Generate a hybrid post-quantum (mlkem768x25519) age identity for this agency and put
        /// its recipient on the card.
        #[arg(long)]
        add_pq: bool,
    },
    /// Rotate this agency's keys (docs/custody.md §8.5): new signing, age and TLS keys and a
    /// new card signed by the new key and the previous one; card-chain.note holds every card
    /// for partners (`trust add`), retired age secrets are kept under retired/.
    Rotate,
    /// Revoke one of this agency's own keys (docs/custody.md §8.3): writes a signed
    /// key-revocation for partners (`trust revoke FILE`) and stores it in this home.
    Revoke(AgencyRevokeArgs),
    /// Create a home for this agency's relay that holds no age identity: the signing key, TLS
    /// key and certificate, card and trusted cards only.
    ExportRelay {
        /// The new home (must not exist, unless --update).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Update an existing relay home of this agency after `agency rotate` or `reissue-card`:
        /// its keys, card, chain and trusted cards are replaced; its relay/ data is kept.
        #[arg(long)]
        update: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct AgencyInitArgs {
    /// Agency id: 1 to 63 of a-z, 0-9 and '-'.
    #[arg(long)]
    pub(crate) id: String,
    /// Display name.
    #[arg(long)]
    pub(crate) name: String,
    /// ISO 3166-1 alpha-2 jurisdiction code, e.g. DE.
    #[arg(long)]
    pub(crate) jurisdiction: String,
    /// Create a relay-only identity: no age identity, so this home cannot decrypt evidence.
    #[arg(long)]
    pub(crate) relay_only: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TrustCommand {
    /// Trust an agency's card after checking its fingerprint.
    Add(TrustAddArgs),
    /// List trusted agencies.
    List,
    /// Stop trusting an agency.
    Remove {
        /// The agency id.
        id: String,
    },
    /// Import a partner's key revocation (FILE), or revoke a partner's key locally (AGENCY
    /// --key tls|signing|age) (docs/custody.md §8.3).
    Revoke(TrustRevokeArgs),
}

/// Which key a revocation names.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum RevokeKey {
    /// The TLS key (the card's pin).
    Tls,
    /// The signing key (statements signed by it from now on are refused).
    Signing,
    /// The age keys (X25519 and post-quantum recipients: nothing is encrypted to them any more).
    Age,
}

#[derive(Debug, Args)]
pub(crate) struct AgencyRevokeArgs {
    /// The key to revoke.
    #[arg(long, value_enum)]
    pub(crate) key: RevokeKey,
    /// Why (one line).
    #[arg(long, default_value = "key revoked")]
    pub(crate) reason: String,
    /// Also write the revocation to FILE (default: standard output).
    #[arg(long, short)]
    pub(crate) output: Option<PathBuf>,
    /// Revoke the keys of the cards this agency rotated from (docs/custody.md §8.5), not those
    /// of its current card: only with --key signing.
    #[arg(long)]
    pub(crate) retired: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TrustRevokeArgs {
    /// A revocation file from a partner, or, with --key, the agency whose key this agency
    /// revokes locally.
    #[arg(value_name = "FILE|AGENCY")]
    pub(crate) target: String,
    /// Revoke this key of AGENCY locally (a revocation signed by this agency).
    #[arg(long, value_enum)]
    pub(crate) key: Option<RevokeKey>,
    /// Why (one line; with --key; default "key revoked").
    #[arg(long)]
    pub(crate) reason: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct TrustAddArgs {
    /// The card file (a signed note), or a card-chain file (docs/custody.md §8.5).
    pub(crate) card: PathBuf,
    /// The fingerprint confirmed with the agency over a separate channel (not needed for a
    /// card chain that links to the card already trusted for that agency).
    #[arg(long)]
    pub(crate) fingerprint: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RelayCommand {
    /// Run this agency's relay in the foreground (Ctrl-C or SIGTERM stop it cleanly).
    Serve(RelayServeArgs),
    /// Purge ciphertext whose retention has passed, with signed purge receipts.
    Purge {
        /// Show what would be purged; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Policy file (for retain_after_delivery_days).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Remove partial uploads untouched for longer than the policy's TTL.
    Gc {
        /// Policy file (for partial_ttl_hours; without it, the default of 168 hours).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Re-verify every stored piece; exit 3 naming each fault.
    Scrub,
}

#[derive(Debug, Args)]
pub(crate) struct RelayServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:4433", value_name = "ADDR")]
    pub(crate) listen: String,
    /// Policy file (TOML; docs/relay.md §4).
    #[arg(long, value_name = "FILE")]
    pub(crate) policy: Option<PathBuf>,
    /// Refuse clients whose TLS handshake does not negotiate the hybrid post-quantum key
    /// exchange X25519MLKEM768 (docs/protocol.md §2).
    #[arg(long)]
    pub(crate) require_pq_tls: bool,
    /// Worker threads for QUIC, requests and the intake (default: one per core but one, at
    /// least 1); fsyncs run on threads of their own (docs/cli.md, docs/performance.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) workers: Option<u16>,
    /// Connections one agency may hold at once (default 32, of 256 in all); the next waits
    /// for a place (docs/protocol.md §8).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) max_connections_per_agency: Option<u16>,
}

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// The relay, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) relay: String,
    /// Recipient agency. May be repeated.
    #[arg(long = "to", value_name = "ID")]
    pub(crate) to: Vec<String>,
    /// Case reference.
    #[arg(long, value_name = "REF")]
    pub(crate) case: Option<String>,
    /// Legal basis (treaty and article).
    #[arg(long, value_name = "TEXT")]
    pub(crate) legal_basis: Option<String>,
    /// Purpose of the transfer.
    #[arg(long, value_name = "TEXT")]
    pub(crate) purpose: Option<String>,
    /// Date until which the evidence may be retained (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    pub(crate) retain_until: Option<String>,
    /// Classification marking.
    #[arg(long, value_name = "TEXT")]
    pub(crate) classification: Option<String>,
    /// More legal metadata (TOML with the manifest's legal field names).
    #[arg(long, value_name = "FILE.toml")]
    pub(crate) meta: Option<PathBuf>,
    /// Resume the interrupted send of this transfer id (no paths needed).
    #[arg(long, value_name = "TRANSFER_ID", conflicts_with_all = ["to", "paths", "case", "legal_basis", "purpose", "retain_until", "classification", "meta", "restart"])]
    pub(crate) resume: Option<String>,
    /// Start a new transfer even if an interrupted send of the same files exists (its state is
    /// discarded; the relay collects its partial upload).
    #[arg(long)]
    pub(crate) restart: bool,
    /// Show what would be sent (each file and size, the legal metadata, what the relay would see
    /// and what only the recipients) and stop: nothing is encrypted or sent.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Files and directories (recursive).
    #[arg(required_unless_present = "resume", value_name = "PATH")]
    pub(crate) paths: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The relay, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) relay: String,
    /// The transfer id.
    pub(crate) transfer: String,
}

#[derive(Debug, Args)]
pub(crate) struct InboxArgs {
    /// The relay, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) relay: String,
}

#[derive(Debug, Args)]
pub(crate) struct FetchArgs {
    /// The relay, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) relay: String,
    /// Fetch every transfer in this agency's inbox that it has not yet received (delivered).
    #[arg(long, conflicts_with = "transfers")]
    pub(crate) all: bool,
    /// Output directory (created if missing): each transfer goes into its own folder inside it,
    /// <sender>_<case>_<id>, with its evidence package in <folder>/.rogatory/.
    #[arg(short, long, value_name = "DIR")]
    pub(crate) output: PathBuf,
    /// Fetch a transfer fetched before into its earlier folder, overwriting its files (never
    /// another transfer's); without it, a new folder (<folder>-2, …).
    #[arg(long)]
    pub(crate) force: bool,
    /// Transfer ids.
    #[arg(value_name = "TRANSFER_ID")]
    pub(crate) transfers: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// The audit log file (default: this home's relay log).
    #[arg(long, value_name = "FILE", global = true)]
    pub(crate) log: Option<PathBuf>,
    /// Whose log it is (a trusted agency; default: this agency).
    #[arg(long, value_name = "ID", global = true)]
    pub(crate) agency: Option<String>,
    #[command(subcommand)]
    pub(crate) command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Recompute the log's Merkle tree and check every signed checkpoint (exit 3 on tampering).
    Verify,
    /// Print the entries (optionally of one transfer or period).
    Show {
        /// Only entries about this transfer.
        #[arg(long, value_name = "ID")]
        transfer: Option<String>,
        #[command(flatten)]
        period: Period,
    },
    /// Write the entries (optionally of one transfer or period) and the latest checkpoint as
    /// JSON Lines.
    Export {
        /// Only entries about this transfer.
        #[arg(long, value_name = "ID")]
        transfer: Option<String>,
        #[command(flatten)]
        period: Period,
        /// Output file (never overwritten).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}

/// A period of audit entries, by their time.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct Period {
    /// Only entries at or after this date (YYYY-MM-DD, UTC).
    #[arg(long, value_name = "DATE")]
    pub(crate) since: Option<String>,
    /// Only entries before the end of this date (YYYY-MM-DD, UTC).
    #[arg(long, value_name = "DATE")]
    pub(crate) until: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// Show what would be purged; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Judge retention as of this date (YYYY-MM-DD) instead of today (for rehearsals and tests).
    #[arg(long, value_name = "DATE", hide = true)]
    pub(crate) as_of: Option<String>,
    /// A fetched output directory (recipient side), or one transfer folder in it; without it,
    /// this home's sent/ (sender side).
    #[arg(value_name = "DIR")]
    pub(crate) output: Option<PathBuf>,
}
