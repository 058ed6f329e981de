//! `rogatory`: end-to-end encrypted, mutually authenticated evidence transfer between agencies.
//!
//! The binary is a thin shell: it parses arguments (`args`), resolves them into one validated
//! configuration per command, runs the command on the library crates, and turns every failure
//! into one report on stderr and a documented exit code (`error`).

#![forbid(unsafe_code)]

#[macro_use]
mod print;
mod agency;
mod args;
mod cleanup;
mod crypt;
mod demo;
mod error;
mod events;
mod fetch;
mod home;
mod keygen;
mod output;
mod relay_cmd;
mod send;
mod verify;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                error::code(error::Exit::Usage)
            } else {
                0
            });
        }
    };
    cleanup::install_signal_handler();
    let events = events::Events {
        bar: Default::default(),
        json: cli.global.json,
        quiet: cli.global.quiet,
    };
    let result = run(cli, &events);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            events.error(i32::from(error::code(e.kind)), &e.to_string());
            error::report(&e);
            ExitCode::from(error::code(e.kind))
        }
    }
}

fn run(cli: args::Cli, events: &events::Events) -> error::Result<()> {
    use args::{AgencyCommand, Command, RelayCommand, TrustCommand};
    let home = || home::Home::resolve(cli.global.home.as_deref());
    match cli.command {
        Command::Keygen(a) => keygen::run(&a, events),
        Command::Encrypt(a) => crypt::encrypt(&a, events),
        Command::Decrypt(a) => crypt::decrypt(&a, events),
        Command::Demo(a) => demo::run(&a, events),
        Command::Agency(AgencyCommand::Init(a)) => agency::init(&home()?, &a, events),
        Command::Agency(AgencyCommand::Card) => agency::card(&home()?, events),
        Command::Agency(AgencyCommand::Fingerprint { card }) => {
            agency::fingerprint(&home()?, card.as_deref(), events)
        }
        Command::Agency(AgencyCommand::ExportRelay { dir, update }) => {
            agency::export_relay(&home()?, &dir, update, events)
        }
        Command::Agency(AgencyCommand::ReissueCard { add_pq }) => {
            agency::reissue_card(&home()?, add_pq, events)
        }
        Command::Trust(TrustCommand::Add(a)) => agency::trust_add(&home()?, &a, events),
        Command::Trust(TrustCommand::List) => agency::trust_list(&home()?, events),
        Command::Trust(TrustCommand::Remove { id }) => agency::trust_remove(&home()?, &id, events),
        Command::Trust(TrustCommand::Revoke(a)) => agency::trust_revoke(&home()?, &a, events),
        Command::Agency(AgencyCommand::Revoke(a)) => agency::revoke(&home()?, &a, events),
        Command::Agency(AgencyCommand::Rotate) => agency::rotate(&home()?, events),
        Command::Relay(RelayCommand::Serve(a)) => relay_cmd::serve(&home()?, &a, events),
        Command::Relay(RelayCommand::Purge { dry_run, policy }) => {
            relay_cmd::purge(&home()?, dry_run, policy.as_deref(), events)
        }
        Command::Relay(RelayCommand::Gc { policy }) => {
            relay_cmd::gc(&home()?, policy.as_deref(), events)
        }
        Command::Relay(RelayCommand::Scrub) => relay_cmd::scrub(&home()?, events),
        Command::Send(a) => send::run(&home()?, &a, events),
        Command::Status(a) => relay_cmd::status(&home()?, &a, events),
        Command::Inbox(a) => fetch::inbox(&home()?, &a, events),
        Command::Fetch(a) => fetch::fetch(&home()?, &a, events),
        Command::Verify { files } => verify::verify(&home()?, &files, events),
        Command::Purge(a) => verify::purge(&home()?, &a, events),
        Command::Audit(a) => verify::audit(&home()?, &a, events),
        Command::Completions { .. } | Command::Man if events.json => Err(error::CliError::new(
            error::Exit::Usage,
            "completions and man print documents, not events: run them without --json",
        )),
        Command::Completions { shell } => {
            let mut cmd = <args::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "rogatory", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let cmd = <args::Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(|e| {
                    error::CliError::new(error::Exit::Storage, "writing the manual page").source(e)
                })
        }
    }
}
