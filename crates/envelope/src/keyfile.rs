//! Identity and recipient files, in age's text format: one key per line, blank lines and
//! lines starting with `#` ignored.

use zeroize::Zeroizing;

use crate::any::{AnyIdentity, AnyRecipient};
use crate::error::KeyParseError;

/// Why a key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Line `line` (1-based) holds no valid key.
    #[error("line {line}: {kind}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        kind: KeyParseError,
    },
    /// The file holds no key at all.
    #[error("no keys found")]
    Empty,
}

fn key_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Parses an identity file (`AGE-SECRET-KEY-1…` and `AGE-SECRET-KEY-PQ-1…` lines).
pub fn parse_identities(text: &str) -> Result<Vec<AnyIdentity>, KeyFileError> {
    let ids = key_lines(text)
        .map(|(line, l)| {
            l.parse::<AnyIdentity>()
                .map_err(|kind| KeyFileError::Line { line, kind })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err(KeyFileError::Empty);
    }
    Ok(ids)
}

/// Parses a recipients file (`age1…` and `age1pq1…` lines).
pub fn parse_recipients(text: &str) -> Result<Vec<AnyRecipient>, KeyFileError> {
    let rs = key_lines(text)
        .map(|(line, l)| {
            l.parse::<AnyRecipient>()
                .map_err(|kind| KeyFileError::Line { line, kind })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if rs.is_empty() {
        return Err(KeyFileError::Empty);
    }
    Ok(rs)
}

/// Formats an identity file as `age-keygen` does, with a creation comment supplied by the
/// caller (the library has no clock). The result is zeroized on drop.
pub fn format_identity_file(identity: &AnyIdentity, created: &str) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "# created: {created}\n# public key: {}\n{}\n",
        identity.to_public(),
        identity.to_secret_string().as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HybridIdentity, Identity};

    #[test]
    fn identity_file_round_trip_and_line_numbers() {
        let id = AnyIdentity::from(Identity::generate());
        let text = format_identity_file(&id, "2026-11-22T00:00:00Z");
        let ids = parse_identities(&text).expect("parses");
        assert_eq!(ids[0].to_public(), id.to_public());
        let pq = AnyIdentity::from(HybridIdentity::generate());
        let text_pq = format_identity_file(&pq, "2026-11-22T00:00:00Z");
        assert!(text_pq.contains("# public key: age1pq1"));
        let both = format!("{}{}", text.as_str(), text_pq.as_str());
        let ids = parse_identities(&both).expect("parses");
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[1].to_public(), pq.to_public());
        let bad = format!("{}\nnot-a-key\n", text.as_str());
        assert!(matches!(
            parse_identities(&bad),
            Err(KeyFileError::Line { line: 5, .. })
        ));
        assert_eq!(
            parse_identities("# only a comment\n").err(),
            Some(KeyFileError::Empty)
        );
    }

    #[test]
    fn recipients_file() {
        let r = AnyRecipient::from(Identity::generate().to_public());
        let h = AnyRecipient::from(HybridIdentity::generate().to_public());
        let text = format!("# agency b\n\n{r}\n{h}\n");
        assert_eq!(parse_recipients(&text).expect("parses"), vec![r.clone(), h]);
        assert_eq!(parse_recipients("").err(), Some(KeyFileError::Empty));
        assert!(matches!(
            parse_recipients(&format!("{r}\nage1xyz\n")),
            Err(KeyFileError::Line { line: 2, .. })
        ));
    }
}
