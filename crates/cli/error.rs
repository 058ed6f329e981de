//! The one user-facing error report, and the exit-code contract (README "Exit codes").

use std::error::Error as StdError;
use std::fmt;

/// Exit codes: the CLI's contract with scripts. Documented in the README; tests assert them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Exit {
    /// A bug or an unexpected condition.
    Internal = 1,
    /// Bad arguments, bad recipient strings, unreadable input path.
    Usage = 2,
    /// Integrity or authentication failure: header, MAC, tag, truncation, signature, digest.
    Integrity = 3,
    /// No usable identity or key: no match, missing, unreadable or insecure key file.
    NoKey = 4,
    /// Transport failure, retryable: timeout, connection lost.
    Transport = 5,
    /// Refused by the peer, not retryable: TLS rejection, not authorised, policy, quota.
    Refused = 6,
    /// Local storage error: ENOSPC, EIO, permission.
    Storage = 7,
    /// Refused by local safety policy: would overwrite, same file, unsafe name.
    Safety = 8,
    /// Interrupted by SIGINT or SIGTERM.
    Interrupted = 130,
}

/// A failure as the user sees it: one line of what and where, an optional hint, a cause chain.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) exit: Exit,
    message: String,
    hint: Option<String>,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl CliError {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            hint: None,
            source: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn source(mut self, e: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }

    /// Prints `rogatory: error: …: cause: cause` and `rogatory: hint: …` on stderr.
    pub(crate) fn report(&self) {
        let mut line = format!("rogatory: error: {}", self.message);
        let mut cause: Option<&(dyn StdError + 'static)> = match &self.source {
            Some(s) => Some(s.as_ref()),
            None => None,
        };
        while let Some(c) = cause {
            let text = c.to_string();
            // Skip causes whose text the message already carries.
            if !line.ends_with(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = c.source();
        }
        eprintln!("{}", escape_controls(&line));
        if let Some(h) = &self.hint {
            eprintln!("rogatory: hint: {}", escape_controls(h));
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Escapes control and bidi characters so that names from files or peers cannot drive the
/// terminal.
pub(crate) fn escape_controls(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let unsafe_char = c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
            if unsafe_char {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

pub(crate) type Result<T, E = CliError> = std::result::Result<T, E>;

/// A transport failure as the user sees it: its class gives the exit code (5, 6 or 3).
pub(crate) fn net(what: &str, e: rogatory_transport::net::NetError) -> CliError {
    use rogatory_transport::ErrorClass;
    let exit = match e.class() {
        ErrorClass::Retryable => Exit::Transport,
        ErrorClass::Refused | ErrorClass::Protocol => Exit::Refused,
        ErrorClass::Integrity => Exit::Integrity,
    };
    let hint = match exit {
        Exit::Transport => Some("retryable: run the same command again to resume"),
        _ => None,
    };
    let err = CliError::new(exit, format!("{what}: {e}"));
    match hint {
        Some(h) => err.hint(h),
        None => err,
    }
}

/// A local file-system failure (exit 7), naming the path.
pub(crate) fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> CliError {
    CliError::new(Exit::Storage, format!("{what} {}", path.display())).source(e)
}
