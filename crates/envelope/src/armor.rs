//! Strict ASCII armor (`envelope.md` §7).

use std::io::{self, BufRead, Read, Write};

use base64::Engine as _;

use crate::b64::{PADDED, is_b64_char};
use crate::error::ArmorError;
use crate::read_line_bounded;

const BEGIN: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
const END: &[u8] = b"-----END AGE ENCRYPTED FILE-----";
const COLUMNS: usize = 64;
const BYTES_PER_LINE: usize = COLUMNS / 4 * 3;
/// Lines of data encoded or decoded per batch.
const BATCH_LINES: usize = 512;

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// Whether buffered input looks armored: its first non-whitespace byte is `-`, or it is
/// non-empty and all whitespace (a binary age file starts with `a`).
pub(crate) fn looks_armored(peek: &[u8]) -> bool {
    match peek.iter().find(|c| !is_ws(**c)) {
        Some(c) => *c == b'-',
        None => !peek.is_empty(),
    }
}

/// Writes the armored form of everything written to it. Call [`ArmoredWriter::finish`].
#[derive(Debug)]
pub struct ArmoredWriter<W: Write> {
    inner: W,
    pending: Vec<u8>,
    line_buf: Vec<u8>,
    begun: bool,
}

impl<W: Write> ArmoredWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            pending: Vec::with_capacity(BYTES_PER_LINE * BATCH_LINES),
            line_buf: Vec::with_capacity((COLUMNS + 1) * BATCH_LINES),
            begun: false,
        }
    }

    fn emit(&mut self, data: &[u8]) -> io::Result<()> {
        self.line_buf.clear();
        if !self.begun {
            self.line_buf.extend_from_slice(BEGIN);
            self.line_buf.push(b'\n');
            self.begun = true;
        }
        let mut enc = [0u8; COLUMNS];
        for line in data.chunks(BYTES_PER_LINE) {
            // Invariant: 48 input bytes encode to at most 64 output bytes.
            let n = PADDED
                .encode_slice(line, &mut enc)
                .map_err(io::Error::other)?;
            self.line_buf.extend_from_slice(&enc[..n]);
            self.line_buf.push(b'\n');
        }
        self.inner.write_all(&self.line_buf)
    }

    /// Writes the last line and the END line; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let rest = std::mem::take(&mut self.pending);
        self.emit(&rest)?;
        self.inner.write_all(END)?;
        self.inner.write_all(b"\n")?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ArmoredWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let cap = BYTES_PER_LINE * BATCH_LINES;
        let n = (cap - self.pending.len()).min(data.len());
        self.pending.extend_from_slice(&data[..n]);
        if self.pending.len() == cap {
            let full = std::mem::take(&mut self.pending);
            let res = self.emit(&full);
            self.pending = full;
            self.pending.clear();
            res?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Data,
    /// A short or padded line was seen: only the END line may follow.
    LastLineSeen,
    Ended,
    Failed(ArmorError),
}

/// Decodes strict armor (`envelope.md` §7); implements [`BufRead`] over the decoded bytes.
#[derive(Debug)]
pub struct ArmoredReader<R: BufRead> {
    inner: R,
    state: State,
    line: Vec<u8>,
    decoded: Vec<u8>,
    pos: usize,
}

impl<R: BufRead> ArmoredReader<R> {
    /// Wraps `inner`, positioned at the start of the armored text.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            state: State::Start,
            line: Vec::with_capacity(COLUMNS + 3),
            decoded: Vec::with_capacity(BYTES_PER_LINE * BATCH_LINES),
            pos: 0,
        }
    }

    /// Reads one line, without its LF or CRLF ending. `Ok(false)` at end of input.
    fn read_line(&mut self, max: usize) -> Result<bool, io::Error> {
        self.line.clear();
        let n = read_line_bounded(&mut self.inner, &mut self.line, max as u64 + 2)?;
        if n == 0 {
            return Ok(false);
        }
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
        }
        if self.line.len() > max {
            return Err(ArmorError::BadLine.into_io());
        }
        Ok(true)
    }

    fn skip_whitespace(&mut self) -> io::Result<Option<u8>> {
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            match buf.iter().position(|c| !is_ws(*c)) {
                Some(i) => {
                    let c = buf[i];
                    self.inner.consume(i);
                    return Ok(Some(c));
                }
                None => {
                    let n = buf.len();
                    self.inner.consume(n);
                }
            }
        }
    }

    fn step(&mut self) -> io::Result<()> {
        match self.state {
            State::Start => {
                self.skip_whitespace()?;
                if !self.read_line(BEGIN.len())? || self.line != BEGIN {
                    return Err(ArmorError::BadBegin.into_io());
                }
                self.state = State::Data;
            }
            State::Data | State::LastLineSeen => {
                for _ in 0..BATCH_LINES {
                    if !self.read_line(COLUMNS.max(END.len()))? {
                        return Err(ArmorError::BadEnd.into_io());
                    }
                    if self.line.first() == Some(&b'-') {
                        if self.line != END {
                            return Err(ArmorError::BadEnd.into_io());
                        }
                        if self.skip_whitespace()?.is_some() {
                            return Err(ArmorError::TrailingData.into_io());
                        }
                        self.state = State::Ended;
                        return Ok(());
                    }
                    if self.state == State::LastLineSeen
                        || self.line.is_empty()
                        || self.line.len() > COLUMNS
                        || !self.line.iter().all(|&c| is_b64_char(c) || c == b'=')
                    {
                        return Err(ArmorError::BadLine.into_io());
                    }
                    if self.line.len() < COLUMNS || self.line.last() == Some(&b'=') {
                        self.state = State::LastLineSeen;
                    }
                    let start = self.decoded.len();
                    self.decoded.resize(start + BYTES_PER_LINE, 0);
                    let n = PADDED
                        .decode_slice(&self.line, &mut self.decoded[start..])
                        .map_err(|_| ArmorError::BadBase64.into_io())?;
                    self.decoded.truncate(start + n);
                }
            }
            State::Ended => {}
            State::Failed(e) => return Err(e.into_io()),
        }
        Ok(())
    }
}

impl<R: BufRead> BufRead for ArmoredReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.decoded.len() && self.state != State::Ended {
            self.decoded.clear();
            self.pos = 0;
            if let Err(e) = self.step() {
                if let Some(a) = ArmorError::from_io(&e) {
                    self.state = State::Failed(a);
                }
                return Err(e);
            }
        }
        Ok(&self.decoded[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.decoded.len());
    }
}

impl<R: BufRead> Read for ArmoredReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn armor(data: &[u8]) -> Vec<u8> {
        let mut w = ArmoredWriter::new(Vec::new());
        w.write_all(data).expect("write");
        w.finish().expect("finish")
    }

    fn dearmor(text: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ArmoredReader::new(text).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_every_small_length_and_a_large_one() {
        for n in (0..200).chain([48 * BATCH_LINES, 48 * BATCH_LINES + 1, 100_000]) {
            let data: Vec<u8> = (0..n).map(|i| (i * 31) as u8).collect();
            let text = armor(&data);
            for line in text.split(|&c| c == b'\n') {
                assert!(line.len() <= COLUMNS.max(BEGIN.len()));
            }
            assert_eq!(dearmor(&text).expect("decodes"), data, "n = {n}");
        }
    }

    #[test]
    fn strictness() {
        let good = armor(&[1u8; 100]);
        let s = String::from_utf8(good.clone()).expect("ascii");
        let bad = [
            s.replace("BEGIN AGE", "BEGIN XAGE"),
            s.replace("-----END AGE ENCRYPTED FILE-----\n", ""),
            s.replacen('\n', "\n\n", 2),
            format!("{s}garbage"),
            format!("garbage{s}"),
            s.replacen("\n", " \n", 2),
            s.to_lowercase(),
        ];
        for b in bad {
            let e = dearmor(b.as_bytes()).expect_err(&b);
            assert!(ArmorError::from_io(&e).is_some(), "{b:?} -> {e}");
        }
        assert!(dearmor(format!("  \n{s}\n\t ").as_bytes()).is_ok());
        assert!(dearmor(s.replace('\n', "\r\n").as_bytes()).is_ok());
    }
}
