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
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Generate an age X25519 identity (secret key file, mode 0600).
    Keygen(KeygenArgs),
    /// Encrypt a file to one or more age recipients.
    Encrypt(EncryptArgs),
    /// Decrypt an age file with one or more identity files.
    Decrypt(DecryptArgs),
    /// Run a self-contained demonstration in a temporary directory.
    Demo(DemoArgs),
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
}

#[derive(Debug, Args)]
pub(crate) struct EncryptArgs {
    /// Encrypt to RECIPIENT (an age1… public key). May be repeated.
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
