//! The client's one error type: what failed and where, in one line, with a hint and a cause
//! chain, and a [`ErrorKind`] that the binary maps to its documented exit codes.

use std::error::Error as StdError;
use std::fmt;
use std::path::Path;

/// What kind of failure this is; the `rogatory` binary maps each kind to one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A bug or an unexpected condition.
    Internal,
    /// Bad arguments, bad recipient strings, unreadable input path.
    Usage,
    /// Integrity or authentication failure: header, MAC, tag, truncation, signature, digest.
    Integrity,
    /// No usable identity or key: no match, missing, unreadable or insecure key file.
    NoKey,
    /// Transport failure, retryable: timeout, connection lost.
    Transport,
    /// Refused by the peer, not retryable: TLS rejection, not authorised, policy, quota.
    Refused,
    /// Local storage error: ENOSPC, EIO, permission.
    Storage,
    /// Refused by local safety policy: would overwrite, same file, unsafe name, changed source.
    Safety,
    /// Interrupted by SIGINT or SIGTERM.
    Interrupted,
}

/// A failure as the user sees it: one line of what and where, an optional hint, a cause chain.
#[derive(Debug)]
pub struct Error {
    /// The kind (the binary's exit code).
    pub kind: ErrorKind,
    message: String,
    hint: Option<String>,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
            source: None,
        }
    }

    /// Adds what the user can do about it.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds the cause.
    pub fn source(mut self, e: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }

    /// The hint, if any.
    pub fn hint_text(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The message without its causes.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.source {
            Some(s) => Some(s.as_ref()),
            None => None,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A transport failure as the user sees it: its class gives the kind.
pub fn net(what: &str, e: rogatory_transport::net::NetError) -> Error {
    use rogatory_transport::ErrorClass;
    let kind = match e.class() {
        ErrorClass::Retryable => ErrorKind::Transport,
        ErrorClass::Refused | ErrorClass::Protocol => ErrorKind::Refused,
        ErrorClass::Integrity => ErrorKind::Integrity,
    };
    let err = Error::new(kind, format!("{what}: {e}"));
    match kind {
        ErrorKind::Transport => err.hint("retryable: run the same command again to resume"),
        _ => err,
    }
}

/// A TOML error of `text` (read from `path`) as a usage error in one line, `PATH: line L, column
/// C: what` (the toml crate's own text quotes the line over several).
pub fn toml(path: &Path, text: &str, e: &::toml::de::Error) -> Error {
    let what = match e.span().and_then(|s| text.get(..s.start)) {
        Some(before) => format!(
            "line {}, column {}: {}",
            before.matches('\n').count() + 1,
            before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
            e.message()
        ),
        None => e.message().to_owned(),
    };
    Error::new(ErrorKind::Usage, format!("{}: {what}", path.display()))
}

/// A local file-system failure, naming the path.
pub fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Storage, format!("{what} {}", path.display())).source(e)
}

/// A relay's ERROR answer to a request as the user sees it: the code's class gives the kind
/// (`protocol.md` §7).
pub fn refused(what: &str, code: rogatory_transport::ErrorCode, message: &str) -> Error {
    use rogatory_transport::ErrorClass;
    let kind = match code.class() {
        ErrorClass::Retryable => ErrorKind::Transport,
        ErrorClass::Integrity => ErrorKind::Integrity,
        _ => ErrorKind::Refused,
    };
    let err = Error::new(kind, format!("{what}: {code}: {message}"));
    if code == rogatory_transport::ErrorCode::DAMAGED {
        // `relay.md` §10: the sender's next send re-uploads what the relay lost.
        return err.hint(
            "the sender repairs it by running the same send again; then fetch again (retrying now will not help)",
        );
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TOML file's error is one line naming the file, the line and column, and what is wrong.
    #[test]
    fn a_toml_error_is_one_line_saying_where() {
        let text = "notes = \"x\"\nonward_transfer = 3\n";
        let e = ::toml::from_str::<::toml::Table>("a = \n").expect_err("no value");
        let m = toml(Path::new("meta.toml"), "a = \n", &e).to_string();
        assert!(m.starts_with("meta.toml: line 1, column "), "{m}");
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Meta {
            notes: String,
            onward_transfer: String,
        }
        let e = ::toml::from_str::<Meta>(text).expect_err("a number");
        let m = toml(Path::new("meta.toml"), text, &e);
        assert_eq!(
            m.to_string(),
            "meta.toml: line 2, column 19: invalid type: integer `3`, expected a string"
        );
        assert_eq!(m.kind, ErrorKind::Usage);
    }
}
