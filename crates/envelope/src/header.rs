//! The age header: parsing, encoding and MAC (`envelope.md` §3, §4, §8).

use std::io::BufRead;

use base64::Engine as _;

use crate::b64::{UNPADDED, is_b64_char};
use crate::error::{DecryptError, HeaderError};
use crate::keys::FileKey;
use crate::read_line_bounded;

/// `envelope.md` §3: "The first line MUST be exactly `age-encryption.org/v1`."
pub(crate) const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
const STANZA_PREFIX: &[u8] = b"-> ";
const MAC_PREFIX: &[u8] = b"---";
/// Body lines are wrapped at 64 columns (`envelope.md` §4).
const BODY_COLUMNS: usize = 64;
/// `envelope.md` §8: header size limit.
pub const MAX_HEADER_LEN: usize = 64 * 1024;
/// `envelope.md` §8: stanza count limit.
pub const MAX_STANZAS: usize = 64;

/// One recipient stanza: a type, its arguments and a binary body (`envelope.md` §4).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Stanza {
    /// The stanza type, e.g. `X25519`.
    pub tag: String,
    /// The arguments after the type.
    pub args: Vec<String>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl Stanza {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(STANZA_PREFIX);
        out.extend_from_slice(self.tag.as_bytes());
        for a in &self.args {
            out.push(b' ');
            out.extend_from_slice(a.as_bytes());
        }
        out.push(b'\n');
        let encoded = UNPADDED.encode(&self.body);
        let mut rest = encoded.as_bytes();
        // Full lines, then a final line shorter than 64 columns (possibly empty).
        while rest.len() >= BODY_COLUMNS {
            out.extend_from_slice(&rest[..BODY_COLUMNS]);
            out.push(b'\n');
            rest = &rest[BODY_COLUMNS..];
        }
        out.extend_from_slice(rest);
        out.push(b'\n');
    }
}

/// A parsed header. Parsing is strict, so [`Header::encode`] reproduces the input bytes exactly.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Header {
    stanzas: Vec<Stanza>,
    mac: [u8; 32],
    /// The header bytes up to and including `---`, as read (canonical by construction).
    mac_input: Vec<u8>,
}

impl Header {
    /// Builds and MACs the header for `file_key` and already-wrapped `stanzas`.
    pub(crate) fn seal(stanzas: Vec<Stanza>, file_key: &FileKey) -> Self {
        let mut mac_input = Vec::with_capacity(256);
        mac_input.extend_from_slice(VERSION_LINE);
        for s in &stanzas {
            s.encode_into(&mut mac_input);
        }
        mac_input.extend_from_slice(MAC_PREFIX);
        let mac = file_key.mac_key().mac(&mac_input);
        Self {
            stanzas,
            mac,
            mac_input,
        }
    }

    /// The recipient stanzas, in file order.
    pub fn stanzas(&self) -> &[Stanza] {
        &self.stanzas
    }

    /// Checks the header MAC with `file_key`, in constant time (`envelope.md` §3).
    pub fn verify_mac(&self, file_key: &FileKey) -> bool {
        file_key.mac_key().verify(&self.mac_input, &self.mac)
    }

    /// The canonical encoding of the header, including the final MAC line.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.mac_input.len() + 48);
        out.extend_from_slice(&self.mac_input);
        out.push(b' ');
        out.extend_from_slice(UNPADDED.encode(self.mac).as_bytes());
        out.push(b'\n');
        out
    }

    /// Parses a header from `input`, consuming exactly the header bytes and nothing after.
    pub fn read<R: BufRead>(input: &mut R) -> Result<Self, DecryptError> {
        let mut p = Parser {
            input,
            mac_input: Vec::with_capacity(512),
            line: Vec::with_capacity(128),
        };
        p.parse()
    }
}

struct Parser<'a, R> {
    input: &'a mut R,
    mac_input: Vec<u8>,
    line: Vec<u8>,
}

impl<R: BufRead> Parser<'_, R> {
    /// Reads one LF-terminated line into `self.line` (without the LF), never reading past the
    /// header size limit.
    fn next_line(&mut self) -> Result<(), DecryptError> {
        self.line.clear();
        let budget = MAX_HEADER_LEN.saturating_sub(self.mac_input.len()) as u64;
        let n = read_line_bounded(self.input, &mut self.line, budget)
            .map_err(DecryptError::from_read)?;
        if self.line.last() != Some(&b'\n') {
            return Err(if n as u64 >= budget {
                HeaderError::TooLarge
            } else {
                HeaderError::Malformed("unexpected end of header")
            }
            .into());
        }
        self.mac_input.extend_from_slice(&self.line);
        self.line.pop();
        if self.line.contains(&b'\r') {
            return Err(HeaderError::Malformed("carriage return in header").into());
        }
        Ok(())
    }

    fn parse(&mut self) -> Result<Header, DecryptError> {
        self.next_line()?;
        if self.line != VERSION_LINE[..VERSION_LINE.len() - 1] {
            // Distinguish "an age file of another version" from "not an age file".
            return Err(if self.line.starts_with(b"age-encryption.org/") {
                HeaderError::UnsupportedVersion
            } else {
                HeaderError::Malformed("not an age file (bad version line)")
            }
            .into());
        }
        let mut stanzas = Vec::new();
        let mut pending: Option<Vec<String>> = None;
        loop {
            self.next_line()?;
            if let Some(args) = pending.take() {
                // The line after a stanza line starts the body (`envelope.md` §4).
                let body = self.read_body()?;
                let mut args = args.into_iter();
                let tag = args.next().unwrap_or_default();
                stanzas.push(Stanza {
                    tag,
                    args: args.collect(),
                    body,
                });
                self.next_line()?;
            }
            if let Some(rest) = self.line.strip_prefix(STANZA_PREFIX) {
                if stanzas.len() == MAX_STANZAS {
                    return Err(HeaderError::TooLarge.into());
                }
                pending = Some(parse_args(rest)?);
            } else if let Some(rest) = self.line.strip_prefix(MAC_PREFIX) {
                if stanzas.is_empty() {
                    return Err(HeaderError::Malformed("no recipient stanzas").into());
                }
                let mac = parse_mac(rest)?;
                // The MAC covers everything up to and including "---".
                let keep = self.mac_input.len() - 1 - rest.len();
                self.mac_input.truncate(keep);
                return Ok(Header {
                    stanzas,
                    mac,
                    mac_input: std::mem::take(&mut self.mac_input),
                });
            } else {
                return Err(HeaderError::Malformed("expected a stanza or the MAC line").into());
            }
        }
    }

    /// Reads body lines starting with the one in `self.line`, up to and including the first
    /// line shorter than 64 columns.
    fn read_body(&mut self) -> Result<Vec<u8>, DecryptError> {
        let mut encoded = Vec::new();
        loop {
            if self.line.len() > BODY_COLUMNS {
                return Err(HeaderError::Malformed("stanza body line too long").into());
            }
            if !self.line.iter().all(|&c| is_b64_char(c)) {
                return Err(HeaderError::Malformed("invalid character in stanza body").into());
            }
            encoded.extend_from_slice(&self.line);
            if self.line.len() < BODY_COLUMNS {
                break;
            }
            self.next_line()?;
        }
        UNPADDED
            .decode(&encoded)
            .map_err(|_| HeaderError::Malformed("non-canonical base64 in stanza body").into())
    }
}

/// `envelope.md` §4: "one or more arguments separated by single spaces. Every argument is a
/// non-empty string of VCHAR (0x21 to 0x7E)."
fn parse_args(rest: &[u8]) -> Result<Vec<String>, DecryptError> {
    let mut args = Vec::new();
    for arg in rest.split(|&c| c == b' ') {
        if arg.is_empty() {
            return Err(HeaderError::Malformed("empty stanza argument").into());
        }
        if !arg.iter().all(|c| (0x21..=0x7e).contains(c)) {
            return Err(HeaderError::Malformed("invalid character in stanza argument").into());
        }
        // Invariant: VCHAR bytes are ASCII, hence UTF-8.
        args.push(String::from_utf8_lossy(arg).into_owned());
    }
    Ok(args)
}

/// `envelope.md` §3: "`--- MAC`, MAC = b64 of 32 bytes, exactly 43 characters".
fn parse_mac(rest: &[u8]) -> Result<[u8; 32], DecryptError> {
    let encoded = rest
        .strip_prefix(b" ")
        .filter(|e| e.len() == 43)
        .ok_or(HeaderError::Malformed("bad MAC line"))?;
    let mut mac = [0u8; 32];
    match UNPADDED.decode_slice(encoded, &mut mac) {
        Ok(32) => Ok(mac),
        _ => Err(HeaderError::Malformed("bad MAC encoding").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Header, DecryptError> {
        Header::read(&mut &bytes[..])
    }

    #[test]
    fn seal_then_parse_round_trips() {
        let key = FileKey::generate();
        for body_len in [0usize, 1, 47, 48, 49, 96, 200] {
            let stanza = Stanza {
                tag: "test".into(),
                args: vec!["a".into(), "b!".into()],
                body: vec![7; body_len],
            };
            let h = Header::seal(vec![stanza.clone(), stanza], &key);
            let bytes = h.encode();
            let parsed = parse(&bytes).expect("parses");
            assert_eq!(parsed, h);
            assert_eq!(parsed.encode(), bytes);
            assert!(parsed.verify_mac(&key));
            assert!(!parsed.verify_mac(&FileKey::generate()));
        }
    }

    #[test]
    fn oversized_header_is_refused_without_reading_it_all() {
        let mut big = VERSION_LINE.to_vec();
        big.extend_from_slice(b"-> x ");
        big.extend(std::iter::repeat_n(b'a', 1 << 20));
        big.push(b'\n');
        let mut input = &big[..];
        assert!(matches!(
            Header::read(&mut input),
            Err(DecryptError::Header(HeaderError::TooLarge))
        ));
        // Nothing beyond the limit was consumed.
        assert!(big.len() - input.len() <= MAX_HEADER_LEN);
    }

    #[test]
    fn too_many_stanzas_are_refused() {
        let mut h = VERSION_LINE.to_vec();
        for _ in 0..=MAX_STANZAS {
            h.extend_from_slice(b"-> x\n\n");
        }
        h.extend_from_slice(b"--- AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n");
        assert!(matches!(
            parse(&h),
            Err(DecryptError::Header(HeaderError::TooLarge))
        ));
    }

    #[test]
    fn no_stanza_is_refused() {
        let mut h = VERSION_LINE.to_vec();
        h.extend_from_slice(b"--- AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n");
        assert!(matches!(parse(&h), Err(DecryptError::Header(_))));
    }

    #[test]
    fn other_versions_are_unsupported_not_garbage() {
        assert!(matches!(
            parse(b"age-encryption.org/v2\n"),
            Err(DecryptError::Header(HeaderError::UnsupportedVersion))
        ));
        assert!(matches!(
            parse(b"%PDF-1.7\n"),
            Err(DecryptError::Header(HeaderError::Malformed(_)))
        ));
        assert!(matches!(parse(b""), Err(DecryptError::Header(_))));
    }
}
