//! The STREAM payload: chunked ChaCha20-Poly1305 with random access (`envelope.md` §6).

use std::io::{self, Read, Write};

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::error::PayloadError;
use crate::keys::{FileKey, PayloadNonce, hkdf32};

/// Plaintext bytes per chunk: 64 KiB.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Poly1305 tag bytes per chunk.
pub const TAG_SIZE: usize = 16;
/// Ciphertext bytes of a full chunk.
pub const ENCRYPTED_CHUNK_SIZE: usize = CHUNK_SIZE + TAG_SIZE;

/// Number of chunks for a plaintext of `plaintext_len` bytes: `max(1, ceil(n / 64 KiB))`.
pub fn chunk_count(plaintext_len: u64) -> u64 {
    plaintext_len.div_ceil(CHUNK_SIZE as u64).max(1)
}

/// Payload bytes (after the nonce) for a plaintext of `plaintext_len` bytes.
pub fn payload_len(plaintext_len: u64) -> u64 {
    plaintext_len + TAG_SIZE as u64 * chunk_count(plaintext_len)
}

/// Why a chunk could not be sealed: the caller broke a STREAM rule (`envelope.md` §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The buffer does not hold `plaintext + 16` bytes of a legal size for this position.
    #[error("illegal chunk length for index {index} (last: {last})")]
    Length {
        /// Chunk index.
        index: u64,
        /// Whether it was meant to be the last chunk.
        last: bool,
    },
    /// The chunk failed to authenticate.
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

/// The payload key of one file, `HKDF(file key, nonce, "payload")`. Wiped on drop.
///
/// Gives random access to any chunk: chunk `i` depends only on this key, `i`, whether it is
/// last, and its plaintext. Never seal two *different* plaintexts at one index: that reuses
/// the ChaCha20 keystream (`envelope.md` §6).
///
/// The AEAD is the ChaCha20-Poly1305 (RFC 8439) of aws-lc, the library under our QUIC/TLS
/// stack, for its AVX-512 code: the payload is every byte of the evidence, encrypted by the
/// sender and decrypted by each recipient (`envelope.md` §6.1). Its key lives in an aws-lc
/// context that is cleansed when freed.
pub struct PayloadKey(LessSafeKey);

impl std::fmt::Debug for PayloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PayloadKey(<redacted>)")
    }
}

/// `N(i, last) = i as 11-byte big-endian || last flag` (`envelope.md` §6).
fn chunk_nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    // Unique per (key, chunk position): the STREAM construction's nonce.
    Nonce::assume_unique_for_key(n)
}

/// The plaintext length of an encrypted chunk of `len` bytes at `index`, or why no such chunk
/// can open.
fn opened_len(index: u64, last: bool, len: usize) -> Result<usize, ChunkError> {
    let Some(plain_len) = len.checked_sub(TAG_SIZE) else {
        return Err(PayloadError::BadChunk(index).into());
    };
    if !legal_len(index, last, plain_len) {
        return Err(if last && plain_len == 0 {
            PayloadError::EmptyLastChunk(index)
        } else {
            PayloadError::BadChunk(index)
        }
        .into());
    }
    Ok(plain_len)
}

fn legal_len(index: u64, last: bool, plaintext_len: usize) -> bool {
    if last {
        plaintext_len <= CHUNK_SIZE && (plaintext_len > 0 || index == 0)
    } else {
        plaintext_len == CHUNK_SIZE
    }
}

impl PayloadKey {
    /// Derives the payload key from the file key and the payload nonce.
    pub fn derive(file_key: &FileKey, nonce: &PayloadNonce) -> Self {
        let k = zeroize::Zeroizing::new(hkdf32(file_key.expose_secret(), &nonce.0, b"payload"));
        // A 32-byte key is always a valid ChaCha20-Poly1305 key.
        match UnboundKey::new(&CHACHA20_POLY1305, &k[..]) {
            Ok(key) => Self(LessSafeKey::new(key)),
            Err(_) => unreachable!("a 32-byte ChaCha20-Poly1305 key is refused"),
        }
    }

    /// Encrypts chunk `index` in place. `buf` holds the plaintext followed by 16 bytes of
    /// room, which receive the tag. A non-last chunk must hold exactly 64 KiB of plaintext;
    /// a last chunk at most 64 KiB, and may be empty only at index 0.
    pub fn seal_chunk(&self, index: u64, last: bool, buf: &mut [u8]) -> Result<(), ChunkError> {
        let Some(plain_len) = buf.len().checked_sub(TAG_SIZE) else {
            return Err(ChunkError::Length { index, last });
        };
        if !legal_len(index, last, plain_len) {
            return Err(ChunkError::Length { index, last });
        }
        let (plain, tag_out) = buf.split_at_mut(plain_len);
        let tag = self
            .0
            .seal_in_place_separate_tag(chunk_nonce(index, last), Aad::empty(), plain)
            .map_err(|_| ChunkError::Length { index, last })?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Decrypts chunk `index` in place and returns the plaintext length (`buf.len() - 16`).
    /// On failure the buffer content is unspecified and must not be used.
    pub fn open_chunk(&self, index: u64, last: bool, buf: &mut [u8]) -> Result<usize, ChunkError> {
        let plain_len = opened_len(index, last, buf.len())?;
        let (ct, tag) = buf.split_at_mut(plain_len);
        self.0
            .open_in_place_separate_tag(chunk_nonce(index, last), Aad::empty(), tag, ct)
            .map_err(|_| PayloadError::BadChunk(index))?;
        Ok(plain_len)
    }

    /// Decrypts chunk `index` from `chunk` (ciphertext and tag) into `out`, leaving `chunk`
    /// as it was, and returns the plaintext length: for a reader that does not know whether
    /// a full chunk is the last one and may try both, or that opens a chunk where it arrived
    /// without copying it first. On failure `out` must not be used.
    pub fn open_chunk_into(
        &self,
        index: u64,
        last: bool,
        chunk: &[u8],
        out: &mut [u8],
    ) -> Result<usize, ChunkError> {
        let plain_len = opened_len(index, last, chunk.len())?;
        let Some(out) = out.get_mut(..plain_len) else {
            return Err(PayloadError::BadChunk(index).into());
        };
        let (ct, tag) = chunk.split_at(plain_len);
        self.0
            .open_separate_gather(chunk_nonce(index, last), Aad::empty(), ct, tag, out)
            .map_err(|_| PayloadError::BadChunk(index))?;
        Ok(plain_len)
    }
}

/// Streaming encryptor of the payload (`impl Write`), in constant memory.
///
/// Call [`StreamWriter::finish`] at the end: it writes the final chunk. A writer dropped
/// without `finish` leaves a truncated file that no reader accepts.
pub struct StreamWriter<W: Write> {
    inner: W,
    key: PayloadKey,
    /// Plaintext of the current chunk plus room for the tag.
    buf: Box<[u8]>,
    len: usize,
    index: u64,
    /// Set when a write to `inner` failed mid-chunk; the stream can no longer be completed.
    poisoned: bool,
}

impl<W: Write> std::fmt::Debug for StreamWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("index", &self.index)
            .field("buffered", &self.len)
            .finish_non_exhaustive()
    }
}

impl<W: Write> StreamWriter<W> {
    /// Wraps `inner`, which must already hold the header and the payload nonce.
    pub fn new(inner: W, key: PayloadKey) -> Self {
        Self {
            inner,
            key,
            buf: vec![0u8; ENCRYPTED_CHUNK_SIZE].into_boxed_slice(),
            len: 0,
            index: 0,
            poisoned: false,
        }
    }

    fn seal_and_write(&mut self, last: bool) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::other(
                "earlier write failed; stream is incomplete",
            ));
        }
        let buf = &mut self.buf[..self.len + TAG_SIZE];
        self.key
            .seal_chunk(self.index, last, buf)
            .map_err(io::Error::other)?;
        self.poisoned = true;
        self.inner.write_all(buf)?;
        self.poisoned = false;
        self.len = 0;
        self.index = self
            .index
            .checked_add(1)
            .ok_or_else(|| PayloadError::TooManyChunks.into_io())?;
        Ok(())
    }

    /// Writes the final chunk, flushes, and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal_and_write(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for StreamWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            // A full chunk is written only once more data proves it is not the last one.
            if self.len == CHUNK_SIZE {
                self.seal_and_write(false)?;
            }
            let n = (CHUNK_SIZE - self.len).min(data.len());
            self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
        }
        Ok(total)
    }

    /// Flushes the inner writer. Buffered plaintext stays buffered: a chunk is only written
    /// once it is full, or by `finish`.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug, Clone, Copy)]
enum ReadState {
    Reading,
    /// The last chunk authenticated; the input must now be at end of file.
    CheckTrailing,
    Done,
    Failed(PayloadError),
}

/// Streaming decryptor of the payload (`impl Read`), in constant memory.
///
/// It releases plaintext one authenticated chunk at a time, exactly as the reference Go
/// implementation does (the CCTV vectors pin which plaintext is released before a failure):
/// a full chunk that authenticates as non-last is released before the next one is read, and
/// the final chunk is released before trailing data is looked for. On a payload failure every
/// later read returns the same error. Callers that must not expose unverified output (the CLI)
/// write to a temporary file and publish it only after reading to a clean end of file.
pub struct StreamReader<R: Read> {
    inner: R,
    key: PayloadKey,
    /// One encrypted chunk.
    buf: Box<[u8]>,
    /// Its plaintext: decrypted out of place, so that a full chunk that fails as a middle
    /// chunk can still be tried as the last one.
    plain: Box<[u8]>,
    plain_start: usize,
    plain_end: usize,
    index: u64,
    state: ReadState,
}

impl<R: Read> std::fmt::Debug for StreamReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("index", &self.index)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Drop for StreamReader<R> {
    /// Wipes the last chunk's plaintext (the chunk buffer only ever holds ciphertext).
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.plain[..]);
    }
}

impl<R: Read> StreamReader<R> {
    /// Wraps `inner`, positioned just after the payload nonce.
    pub fn new(inner: R, key: PayloadKey) -> Self {
        Self {
            inner,
            key,
            buf: vec![0u8; ENCRYPTED_CHUNK_SIZE].into_boxed_slice(),
            plain: vec![0u8; CHUNK_SIZE].into_boxed_slice(),
            plain_start: 0,
            plain_end: 0,
            index: 0,
            state: ReadState::Reading,
        }
    }

    /// The index of the next chunk to be decrypted (or of the chunk that failed).
    pub fn chunk_index(&self) -> u64 {
        self.index
    }

    fn fill(&mut self, buf_len: usize) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf_len {
            match self.inner.read(&mut self.buf[filled..buf_len]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    /// Reads and authenticates the next chunk into `plain[..plain_end]`; returns whether it
    /// was the last one. I/O errors of the inner reader are returned as they are.
    fn open_next(&mut self) -> io::Result<Result<bool, PayloadError>> {
        let index = self.index;
        let filled = self.fill(ENCRYPTED_CHUNK_SIZE)?;
        Ok(self.open_filled(index, filled))
    }

    fn open_filled(&mut self, index: u64, filled: usize) -> Result<bool, PayloadError> {
        let chunk = &self.buf[..filled];
        let out = &mut self.plain[..];
        let opened = if filled < ENCRYPTED_CHUNK_SIZE {
            // Ended by end of file: this is the last chunk (`envelope.md` §6).
            if filled == 0 && index > 0 {
                return Err(PayloadError::Truncated(index - 1));
            }
            self.key
                .open_chunk_into(index, true, chunk, out)
                .map(|n| (n, true))
        } else {
            // A full chunk is either a middle chunk or a full final chunk; decrypting out of
            // place keeps the ciphertext for the second try.
            self.key
                .open_chunk_into(index, false, chunk, out)
                .map(|n| (n, false))
                .or_else(|_| {
                    self.key
                        .open_chunk_into(index, true, chunk, out)
                        .map(|n| (n, true))
                })
        };
        let (n, last) = opened.map_err(|e| match e {
            ChunkError::Payload(p) => p,
            ChunkError::Length { .. } => PayloadError::BadChunk(index),
        })?;
        self.plain_start = 0;
        self.plain_end = n;
        self.index = index.checked_add(1).ok_or(PayloadError::TooManyChunks)?;
        Ok(last)
    }

    /// Makes progress when no plaintext is buffered.
    fn advance(&mut self) -> io::Result<()> {
        let next = match self.state {
            ReadState::Reading => match self.open_next()? {
                Ok(true) => ReadState::CheckTrailing,
                Ok(false) => ReadState::Reading,
                Err(p) => ReadState::Failed(p),
            },
            ReadState::CheckTrailing => {
                let mut probe = [0u8; 1];
                loop {
                    match self.inner.read(&mut probe) {
                        Ok(0) => break ReadState::Done,
                        Ok(_) => break ReadState::Failed(PayloadError::TrailingData),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            state => state,
        };
        self.state = next;
        Ok(())
    }
}

impl<R: Read> Read for StreamReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.plain_start == self.plain_end {
            match self.state {
                ReadState::Done => return Ok(0),
                ReadState::Failed(p) => return Err(p.into_io()),
                ReadState::Reading | ReadState::CheckTrailing => self.advance()?,
            }
        }
        let n = (self.plain_end - self.plain_start).min(out.len());
        out[..n].copy_from_slice(&self.plain[self.plain_start..self.plain_start + n]);
        self.plain_start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PayloadKey {
        PayloadKey::derive(&FileKey::from_bytes([1; 16]), &PayloadNonce([2; 16]))
    }

    fn encrypt(plain: &[u8]) -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), key());
        w.write_all(plain).expect("write");
        w.finish().expect("finish")
    }

    fn decrypt(ct: &[u8]) -> (Vec<u8>, Option<PayloadError>) {
        let mut r = StreamReader::new(ct, key());
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, PayloadError::from_io(&e)),
            }
        }
    }

    #[test]
    fn sizes_match_the_formula() {
        for n in [0usize, 1, 65_535, 65_536, 65_537, 131_072, 131_073] {
            let plain = vec![9u8; n];
            let ct = encrypt(&plain);
            assert_eq!(ct.len() as u64, payload_len(n as u64), "n = {n}");
            assert_eq!(decrypt(&ct), (plain, None));
        }
        assert_eq!(chunk_count(65_536), 1, "64 KiB is one full final chunk");
        assert_eq!(chunk_count(0), 1, "empty is one empty final chunk");
    }

    #[test]
    fn truncation_at_every_boundary_is_a_payload_failure() {
        let plain: Vec<u8> = (0..3 * CHUNK_SIZE + 17).map(|i| i as u8).collect();
        let ct = encrypt(&plain);
        let e = ENCRYPTED_CHUNK_SIZE;
        let cuts = [
            0,
            1,
            16,
            e - 1,
            e,
            e + 1,
            2 * e,
            2 * e + 1,
            3 * e,
            ct.len() - 1,
        ];
        for cut in cuts {
            let (released, err) = decrypt(&ct[..cut]);
            assert!(err.is_some(), "cut at {cut} must fail");
            // Only whole chunks before the failure were released.
            assert_eq!(released.len() % CHUNK_SIZE, 0);
            assert_eq!(&plain[..released.len()], &released[..]);
        }
        let mut extended = ct.clone();
        extended.push(0);
        assert!(decrypt(&extended).1.is_some());
    }

    #[test]
    fn reordered_chunks_fail_at_the_first_swap() {
        let plain = vec![5u8; 3 * CHUNK_SIZE + 1];
        let ct = encrypt(&plain);
        let e = ENCRYPTED_CHUNK_SIZE;
        let mut swapped = ct.clone();
        swapped[e..2 * e].copy_from_slice(&ct[2 * e..3 * e]);
        swapped[2 * e..3 * e].copy_from_slice(&ct[e..2 * e]);
        assert_eq!(decrypt(&swapped).1, Some(PayloadError::BadChunk(1)));
        let mut dup = ct.clone();
        dup[e..2 * e].copy_from_slice(&ct[..e]);
        assert_eq!(decrypt(&dup).1, Some(PayloadError::BadChunk(1)));
    }

    #[test]
    fn random_access_matches_the_stream() {
        let plain: Vec<u8> = (0..2 * CHUNK_SIZE + 100).map(|i| (i * 7) as u8).collect();
        let ct = encrypt(&plain);
        let k = key();
        for i in 0..3u64 {
            let start = i as usize * ENCRYPTED_CHUNK_SIZE;
            let end = (start + ENCRYPTED_CHUNK_SIZE).min(ct.len());
            let mut chunk = ct[start..end].to_vec();
            let n = k.open_chunk(i, i == 2, &mut chunk).expect("opens");
            let p_start = i as usize * CHUNK_SIZE;
            assert_eq!(&chunk[..n], &plain[p_start..p_start + n]);
            k.seal_chunk(i, i == 2, &mut chunk).expect("seals");
            assert_eq!(&chunk[..], &ct[start..end]);
        }
    }

    #[test]
    fn illegal_chunk_shapes_are_refused() {
        let k = key();
        let mut empty_last = [0u8; TAG_SIZE];
        assert!(k.seal_chunk(1, true, &mut empty_last).is_err());
        assert!(k.seal_chunk(0, true, &mut empty_last).is_ok());
        let mut short = vec![0u8; 100 + TAG_SIZE];
        assert!(k.seal_chunk(0, false, &mut short).is_err());
        let mut tiny = [0u8; 3];
        assert!(k.seal_chunk(0, true, &mut tiny).is_err());
        assert!(k.open_chunk(0, true, &mut tiny).is_err());
    }
}
