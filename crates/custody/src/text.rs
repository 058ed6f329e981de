//! Line-oriented canonical text shared by statements and checkpoints (`custody.md` §4).

use std::str::FromStr;

use crate::error::{FieldError, ParseError};

/// `custody.md` §10: statement line limit.
pub(crate) const MAX_LINE: usize = 4096;

/// Free text in a statement value or legal field: non-empty, no control characters, no
/// leading or trailing whitespace, at most 4 096 bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Text(String);

impl Text {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Text {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= MAX_LINE
            && s.trim() == s
            && !s.chars().any(char::is_control);
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(FieldError::new("text", s))
        }
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A canonical unsigned decimal (no sign, no leading zeros).
pub(crate) fn parse_u64(s: &str) -> Result<u64, FieldError> {
    let canonical =
        !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical
        .then(|| s.parse().ok())
        .flatten()
        .ok_or_else(|| FieldError::new("number", s))
}

/// Reads `key value` lines in a fixed order.
pub(crate) struct Fields<'a> {
    kind: &'static str,
    lines: std::iter::Peekable<std::str::Split<'a, char>>,
}

impl<'a> Fields<'a> {
    /// `text` must end with a newline; lines are split on LF.
    pub(crate) fn new(kind: &'static str, text: &'a str) -> Result<Self, ParseError> {
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| ParseError::syntax(kind, "text does not end with a newline"))?;
        if body.split('\n').any(|l| l.len() > MAX_LINE) {
            return Err(ParseError::TooLarge(kind));
        }
        Ok(Self {
            kind,
            lines: body.split('\n').peekable(),
        })
    }

    /// The next raw line.
    pub(crate) fn line(&mut self) -> Result<&'a str, ParseError> {
        self.lines
            .next()
            .ok_or_else(|| ParseError::syntax(self.kind, "missing line"))
    }

    /// The value of the next line, which must have key `key`.
    pub(crate) fn raw(&mut self, key: &str) -> Result<&'a str, ParseError> {
        let line = self.line()?;
        match line.split_once(' ') {
            Some((k, v)) if k == key => Ok(v),
            _ => Err(ParseError::syntax(
                self.kind,
                format!("expected {key:?} line, found {:?}", truncate(line)),
            )),
        }
    }

    /// The parsed value of the next line, which must have key `key`.
    pub(crate) fn get<T: FromStr<Err = FieldError>>(&mut self, key: &str) -> Result<T, ParseError> {
        Ok(self.raw(key)?.parse()?)
    }

    pub(crate) fn number(&mut self, key: &str) -> Result<u64, ParseError> {
        Ok(parse_u64(self.raw(key)?)?)
    }

    /// One or more consecutive lines with key `key`.
    pub(crate) fn repeated<T: FromStr<Err = FieldError>>(
        &mut self,
        key: &str,
    ) -> Result<Vec<T>, ParseError> {
        let mut out = vec![self.get(key)?];
        while self
            .lines
            .peek()
            .is_some_and(|l| l.split_once(' ').is_some_and(|(k, _)| k == key))
        {
            out.push(self.get(key)?);
        }
        Ok(out)
    }

    /// Asserts that no line is left.
    pub(crate) fn end(mut self) -> Result<(), ParseError> {
        match self.lines.next() {
            None => Ok(()),
            Some(l) => Err(ParseError::syntax(
                self.kind,
                format!("unexpected line {:?}", truncate(l)),
            )),
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}
