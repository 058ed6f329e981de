//! The one user-facing error report, and the exit-code contract (README "Exit codes").

use std::error::Error as StdError;

pub(crate) use rogatory_client::error::io;
/// The library's error kinds are the CLI's exit classes; [`code`] gives the number.
pub(crate) use rogatory_client::{Error as CliError, ErrorKind as Exit};

/// Exit codes: the CLI's contract with scripts. Documented in the README; tests assert them.
/// The one place where an error kind becomes a number.
pub(crate) fn code(kind: Exit) -> u8 {
    match kind {
        Exit::Internal => 1,
        Exit::Usage => 2,
        Exit::Integrity => 3,
        Exit::NoKey => 4,
        Exit::Transport => 5,
        Exit::Refused => 6,
        Exit::Storage => 7,
        Exit::Safety => 8,
        Exit::Interrupted => 130,
        _ => 1,
    }
}

/// Prints `rogatory: error: …: cause: cause` and `rogatory: hint: …` on stderr.
pub(crate) fn report(e: &CliError) {
    let mut line = format!("rogatory: error: {}", e.message());
    let mut cause = StdError::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        // Skip causes whose text the message already carries.
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    errln!("{}", escape_controls(&line));
    if let Some(h) = e.hint_text() {
        errln!("rogatory: hint: {}", escape_controls(h));
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

#[cfg(test)]
mod tests {
    use super::escape_controls;

    /// test-plan.md 59: a name from a file or a peer cannot drive the terminal. Escape
    /// sequences, newlines, carriage returns and the bidi overrides that reorder what is shown
    /// are printed as escapes; every other character, accents and scripts included, as is.
    #[test]
    fn controls_and_bidi_overrides_are_escaped_and_the_rest_kept() {
        assert_eq!(
            escape_controls("case\u{1b}[2J/evil\rname\n"),
            "case\\u{1b}[2J/evil\\u{d}name\\u{a}"
        );
        assert_eq!(
            escape_controls("invoice\u{202e}fdp.exe"),
            "invoice\\u{202e}fdp.exe"
        );
        for c in [
            '\u{2066}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{7f}', '\u{85}',
        ] {
            assert_eq!(
                escape_controls(&c.to_string()),
                c.escape_unicode().to_string()
            );
        }
        let kept = "Ermittlungsakte Müller/Δ-12/案件 ok.pdf";
        assert_eq!(escape_controls(kept), kept);
    }
}
