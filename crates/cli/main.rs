//! `rogatory`: end-to-end encrypted, mutually authenticated evidence transfer between agencies.
//!
//! The binary is a thin shell: it parses arguments (`args`), resolves them into one validated
//! configuration per command, runs the command on the library crates, and turns every failure
//! into one report on stderr and a documented exit code (`error`).

#![forbid(unsafe_code)]

mod args;
mod cleanup;
mod crypt;
mod demo;
mod error;
mod keygen;
mod output;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                error::Exit::Usage as u8
            } else {
                0
            });
        }
    };
    cleanup::install_signal_handler();
    let result = match cli.command {
        args::Command::Keygen(a) => keygen::run(&a),
        args::Command::Encrypt(a) => crypt::encrypt(&a),
        args::Command::Decrypt(a) => crypt::decrypt(&a),
        args::Command::Demo(a) => demo::run(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.report();
            ExitCode::from(e.exit as u8)
        }
    }
}
