//! Lines for people and scripts on stdout and stderr that never panic: a closed pipe
//! (`rogatory audit show | head -1`) ends the output quietly instead of aborting the command
//! with Rust's panic text. The command itself goes on (a fetch is never interrupted between
//! files because its reader went away) and its exit code is its own: 0 if it succeeded, as
//! `cat` and `grep` end when their reader is gone (issue 12, `docs/cli.md` "Exit codes").

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout, unless stdout is closed.
pub(crate) fn out(args: std::fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut o = std::io::stdout().lock();
    if o.write_fmt(format_args!("{args}\n")).is_err() {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Writes one line to stderr, unless stderr is closed.
pub(crate) fn err(args: std::fmt::Arguments<'_>) {
    if STDERR_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut e = std::io::stderr().lock();
    if e.write_fmt(format_args!("{args}\n")).is_err() {
        STDERR_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `println!` that never panics ([`out`]).
macro_rules! outln {
    () => { $crate::print::out(format_args!("")) };
    ($($t:tt)*) => { $crate::print::out(format_args!($($t)*)) };
}

/// `eprintln!` that never panics ([`err`]).
macro_rules! errln {
    () => { $crate::print::err(format_args!("")) };
    ($($t:tt)*) => { $crate::print::err(format_args!($($t)*)) };
}
