//! One-pass opening of a fetched age file (`docs/cli.md` "Receiving"): the ciphertext is fed
//! in as it arrives, in pieces of any size; the header is parsed and its MAC checked with the
//! agency's identity (`envelope.md` §3, §5.1), then every 64 KiB STREAM chunk is authenticated
//! before any of its plaintext is handed on (`envelope.md` §6), and the plaintext is hashed on
//! the way. No I/O here beyond the `Write` the caller passes and, for a large file, the writes
//! of the digest's thread to the file the caller names (`digest.rs`); everything else is
//! tested in memory.

use std::io::{self, Write};

use rogatory_custody::Sha256Digest;
use rogatory_envelope::{
    CHUNK_SIZE, DecryptError, Decryptor, ENCRYPTED_CHUNK_SIZE, IdentityKey, MAX_HEADER_LEN,
    NONCE_LEN, PayloadKey, PayloadNonce, TAG_SIZE, chunk_count,
};
use sha2::{Digest, Sha256};

use rogatory_transport::direct::DirectWriter;

use super::digest::{self, Digesting, Unfinished};

/// Where the pieces of one age file sit, from the sizes in the sealed manifest
/// (`envelope.md` §3 and §6, `custody.md` §5.2): `head` bytes of header and payload nonce
/// (piece 0), then `chunks` STREAM chunks of 65 552 bytes, the last one shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Plaintext size.
    pub(crate) size: u64,
    /// Size of the age file.
    pub(crate) ciphertext_size: u64,
    /// Header and payload nonce.
    pub(crate) head: u64,
    /// STREAM chunks (at least one).
    pub(crate) chunks: u64,
}

impl Layout {
    /// The layout a manifest entry implies, or `None` if its two sizes cannot belong to one
    /// age file of our profile (a header of 1 to 64 KiB bytes, `envelope.md` §8).
    pub(crate) fn new(size: u64, ciphertext_size: u64) -> Option<Self> {
        let chunks = chunk_count(size);
        let payload = size.checked_add(chunks.checked_mul(TAG_SIZE as u64)?)?;
        let head = ciphertext_size.checked_sub(payload)?;
        if head <= NONCE_LEN as u64 || head > (MAX_HEADER_LEN + NONCE_LEN) as u64 {
            return None;
        }
        Some(Self {
            size,
            ciphertext_size,
            head,
            chunks,
        })
    }

    /// Ciphertext bytes of chunk `i` (`envelope.md` §6: every chunk but the last is full).
    pub(crate) fn chunk_len(&self, i: u64) -> usize {
        if i + 1 < self.chunks {
            ENCRYPTED_CHUNK_SIZE
        } else {
            (self.size - i * CHUNK_SIZE as u64) as usize + TAG_SIZE
        }
    }

    /// How many whole chunks a resume keeps from a partial plaintext of `partial_len` bytes:
    /// the whole 64 KiB chunks it holds, but never the last chunk, so that every run ends by
    /// authenticating the final chunk as last (`envelope.md` §6, truncation) and the digest.
    pub(crate) fn kept_chunks(&self, partial_len: u64) -> u64 {
        (partial_len / CHUNK_SIZE as u64).min(self.chunks - 1)
    }

    /// The ciphertext offset where chunk `k` starts: `head + k × 65 552`.
    pub(crate) fn chunk_offset(&self, k: u64) -> u64 {
        self.head + k * ENCRYPTED_CHUNK_SIZE as u64
    }

    /// The plaintext offset where chunk `k` starts: `k × 65 536`.
    pub(crate) fn plain_offset(k: u64) -> u64 {
        k * CHUNK_SIZE as u64
    }
}

/// Why an age file could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The header, a chunk, the length or the digest is wrong (exit 3).
    Integrity(String),
    /// No stanza of the header is for this agency's identity (exit 4).
    NoMatch,
    /// Writing the plaintext failed (exit 7).
    Write(io::Error),
    /// The thread computing the digest died (a bug: exit 1).
    Digest,
}

/// Buffers one worker reuses for every file it opens: nothing is allocated per chunk, and
/// nothing per file once they have grown.
#[derive(Debug)]
pub(crate) struct Buffers {
    head: Vec<u8>,
    chunk: Box<[u8]>,
}

impl Buffers {
    pub(crate) fn new() -> Self {
        Self {
            head: Vec::with_capacity(1024),
            chunk: vec![0u8; ENCRYPTED_CHUNK_SIZE].into_boxed_slice(),
        }
    }
}

/// The state of one file being opened.
pub(crate) struct Opener<'b> {
    layout: Layout,
    bufs: &'b mut Buffers,
    key: Option<PayloadKey>,
    /// Ciphertext bytes of the current chunk held in `bufs.chunk`.
    fill: usize,
    /// Index of the current chunk.
    next: u64,
    hasher: Digesting,
}

impl std::fmt::Debug for Opener<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("layout", &self.layout)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl<'b> Opener<'b> {
    pub(crate) fn new(layout: Layout, bufs: &'b mut Buffers) -> Self {
        bufs.head.clear();
        Self {
            layout,
            bufs,
            key: None,
            fill: 0,
            next: 0,
            hasher: Digesting::new(),
        }
    }

    /// Whether the header piece is still incomplete.
    pub(crate) fn wants_head(&self) -> bool {
        (self.bufs.head.len() as u64) < self.layout.head
    }

    /// Takes header bytes from the front of `bytes`; returns how many it took.
    pub(crate) fn push_head(&mut self, bytes: &[u8]) -> usize {
        let want = (self.layout.head - self.bufs.head.len() as u64) as usize;
        let n = want.min(bytes.len());
        self.bufs.head.extend_from_slice(&bytes[..n]);
        n
    }

    /// Parses the complete header piece, unwraps the file key (which checks the header MAC,
    /// `envelope.md` §3) and derives the payload key. Returns an identifier of the header piece
    /// (the first 16 bytes of its SHA-256), which fixes the file key a resume must use again.
    pub(crate) fn open_head<I: IdentityKey>(
        &mut self,
        identities: &[I],
    ) -> Result<[u8; 16], OpenError> {
        if self.wants_head() {
            return Err(OpenError::Integrity("the header is incomplete".into()));
        }
        let piece = &self.bufs.head[..];
        let (header, nonce) = piece.split_at(piece.len() - NONCE_LEN);
        let mut rest = header;
        let bad = |e: DecryptError| match e {
            DecryptError::NoMatch => OpenError::NoMatch,
            e => OpenError::Integrity(format!("bad header: {e}")),
        };
        let d = Decryptor::new(&mut rest).map_err(bad)?;
        let file_key = d.unwrap_file_key(identities);
        drop(d);
        if !rest.is_empty() {
            return Err(OpenError::Integrity(
                "the header's length does not match the seal".into(),
            ));
        }
        let file_key = file_key.map_err(bad)?;
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        self.key = Some(PayloadKey::derive(&file_key, &PayloadNonce(n)));
        let mut id = [0u8; 16];
        id.copy_from_slice(&Sha256::digest(piece)[..16]);
        Ok(id)
    }

    /// The chunk buffer as scratch space while no chunk is being assembled (hashing a
    /// partial file on resume, before [`Opener::resume`]).
    pub(crate) fn scratch(&mut self) -> &mut [u8] {
        self.fill = 0;
        &mut self.bufs.chunk
    }

    /// Resumes after `kept` chunks whose plaintext the caller holds and has hashed into
    /// `hasher` (only after [`Opener::open_head`]).
    pub(crate) fn resume(&mut self, kept: u64, hasher: Sha256) {
        self.next = kept;
        self.fill = 0;
        self.hasher = Digesting::Here(hasher);
    }

    /// Hashes the rest of the plaintext on a thread of its own
    /// ([`Digesting::move_to_thread`]) if at least [`digest::ON_THREAD_MIN`] bytes of it are
    /// left, and writes it on another, to `file` from the next chunk's plaintext offset, if
    /// `file` is given and can be written directly ([`DirectWriter`]); less is hashed (and
    /// written) here. A file that cannot be written directly (on tmpfs, say) is written here
    /// through the page cache: on a thread, that copy made the fetch slower (the worker
    /// waited for segments whenever the thread was late).
    pub(crate) fn hash_on_thread(&mut self, file: Option<&std::fs::File>) {
        let at = Layout::plain_offset(self.next);
        if self.layout.size - at >= digest::ON_THREAD_MIN {
            let to = file
                .and_then(|f| f.try_clone().ok())
                .map(|fd| DirectWriter::new(fd, at))
                .filter(DirectWriter::is_direct);
            self.hasher.move_to_thread(to);
        }
    }

    /// Whether the plaintext is written on the digest's writing thread: the caller does not
    /// write it.
    pub(crate) fn writes_on_thread(&self) -> bool {
        self.hasher.writes_on_thread()
    }

    /// Takes payload bytes: every chunk that becomes complete is authenticated (as last only
    /// if the layout says it is the last), hashed and written to `out`. Returns the ciphertext
    /// bytes of the chunks completed by this call.
    pub(crate) fn push_payload(
        &mut self,
        mut bytes: &[u8],
        out: &mut impl Write,
    ) -> Result<u64, OpenError> {
        let Some(key) = &self.key else {
            return Err(OpenError::Integrity("payload before the header".into()));
        };
        let mut done = 0u64;
        while !bytes.is_empty() {
            if self.next >= self.layout.chunks {
                return Err(OpenError::Integrity(
                    "data after the last chunk (envelope.md §6)".into(),
                ));
            }
            let len = self.layout.chunk_len(self.next);
            let last = self.next + 1 == self.layout.chunks;
            let chunk_err = |e: rogatory_envelope::ChunkError| {
                OpenError::Integrity(format!("chunk {}: {e}", self.next))
            };
            // The chunk's ciphertext: where it arrived if it is whole there, else assembled in
            // the chunk buffer.
            let whole = self.fill == 0 && bytes.len() >= len;
            if !whole {
                let n = (len - self.fill).min(bytes.len());
                self.bufs.chunk[self.fill..self.fill + n].copy_from_slice(&bytes[..n]);
                self.fill += n;
                bytes = &bytes[n..];
                if self.fill < len {
                    break;
                }
            }
            let arrived = whole.then(|| {
                let (chunk, rest) = bytes.split_at(len);
                bytes = rest;
                chunk
            });
            if let Some(room) = self.hasher.room(len - TAG_SIZE) {
                // Opened straight into the digest thread's segment: the plaintext is not
                // copied; only an authenticated chunk is counted in it.
                let ct = arrived.unwrap_or(&self.bufs.chunk[..len]);
                let plain = key
                    .open_chunk_into(self.next, last, ct, room)
                    .map_err(chunk_err)?;
                self.hasher.took(plain, out).map_err(OpenError::Write)?;
            } else {
                let plain = if let Some(ct) = arrived {
                    key.open_chunk_into(self.next, last, ct, &mut self.bufs.chunk)
                        .map_err(chunk_err)?
                } else {
                    key.open_chunk(self.next, last, &mut self.bufs.chunk[..len])
                        .map_err(chunk_err)?
                };
                let p = &self.bufs.chunk[..plain];
                self.hasher.take(p, out).map_err(OpenError::Write)?;
            }
            self.fill = 0;
            self.next += 1;
            done += len as u64;
        }
        Ok(done)
    }

    /// After the last byte: every chunk was opened (a missing last chunk is truncation,
    /// `envelope.md` §6) and the plaintext's SHA-256 is the sealed one.
    pub(crate) fn finish(self, sha256: &Sha256Digest) -> Result<(), OpenError> {
        if self.key.is_none() || self.next != self.layout.chunks || self.fill != 0 {
            return Err(OpenError::Integrity("truncated (envelope.md §6)".into()));
        }
        let digest = self.hasher.finalize().map_err(|e| match e {
            Unfinished::Died => OpenError::Digest,
            Unfinished::Write(e) => OpenError::Write(e),
        })?;
        if Sha256Digest(digest) != *sha256 {
            return Err(OpenError::Integrity(
                "does not match the sender's digest".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rogatory_envelope::{ENCRYPTED_CHUNK_SIZE as E, Encryptor, Identity, payload_len};

    fn sealed(plain: &[u8], to: &Identity) -> Vec<u8> {
        let mut w = Encryptor::new(&[to.to_public()])
            .expect("encryptor")
            .wrap_output(Vec::new())
            .expect("wrap");
        w.write_all(plain).expect("write");
        w.finish().expect("finish")
    }

    /// Feeds `ct` in pieces of `step` bytes; returns the plaintext written or the error.
    fn open_all(
        ct: &[u8],
        size: u64,
        sha: &Sha256Digest,
        id: &Identity,
        step: usize,
    ) -> Result<Vec<u8>, OpenError> {
        let layout = Layout::new(size, ct.len() as u64)
            .ok_or_else(|| OpenError::Integrity("layout".into()))?;
        let mut bufs = Buffers::new();
        let mut op = Opener::new(layout, &mut bufs);
        let mut out = Vec::new();
        for piece in ct.chunks(step) {
            let used = op.push_head(piece);
            if used > 0 && !op.wants_head() {
                op.open_head(std::slice::from_ref(id))?;
            }
            if used < piece.len() {
                op.push_payload(&piece[used..], &mut out)?;
            }
        }
        op.finish(sha)?;
        Ok(out)
    }

    #[test]
    fn opens_every_size_in_any_pieces_and_refuses_tampering() {
        let id = Identity::generate();
        for n in [0usize, 1, 65_535, 65_536, 65_537, 200_000] {
            let plain: Vec<u8> = (0..n).map(|i| (i * 31) as u8).collect();
            let sha = Sha256Digest::of(&plain);
            let ct = sealed(&plain, &id);
            for step in [1usize, 7, 4096, E, E + 1, 1 << 20] {
                if n > 70_000 && step < 4096 {
                    continue;
                }
                let got = open_all(&ct, n as u64, &sha, &id, step).expect("opens");
                assert_eq!(got, plain, "n {n} step {step}");
            }
            // A byte flipped anywhere: refused, and never more than the chunks before it;
            // chunks copied together (4096) and opened where they arrived (1 MiB).
            for at in [10, ct.len() / 2, ct.len() - 1] {
                let mut bad = ct.clone();
                bad[at] ^= 1;
                for step in [4096, 1 << 20] {
                    assert!(
                        open_all(&bad, n as u64, &sha, &id, step).is_err(),
                        "n {n} at {at} step {step}"
                    );
                }
            }
            // Truncated: the sizes no longer fit, or the last chunk is missing.
            let cut = &ct[..ct.len() - 1];
            assert!(open_all(cut, n as u64, &sha, &id, 4096).is_err());
            // Another identity: no match.
            assert!(matches!(
                open_all(&ct, n as u64, &sha, &Identity::generate(), 4096),
                Err(OpenError::NoMatch)
            ));
            // The right bytes under another digest: refused.
            let other = Sha256Digest::of(b"other");
            assert!(open_all(&ct, n as u64, &other, &id, 4096).is_err());
        }
    }

    #[test]
    fn a_file_cut_at_a_chunk_boundary_is_truncation() {
        let id = Identity::generate();
        let plain = vec![3u8; 3 * CHUNK_SIZE];
        let ct = sealed(&plain, &id);
        let layout = Layout::new(plain.len() as u64, ct.len() as u64).expect("layout");
        let mut bufs = Buffers::new();
        let mut op = Opener::new(layout, &mut bufs);
        let head = op.push_head(&ct);
        op.open_head(std::slice::from_ref(&id)).expect("head");
        let two = layout.chunk_offset(2) as usize;
        op.push_payload(&ct[head..two], &mut io::sink())
            .expect("two chunks");
        assert!(op.finish(&Sha256Digest::of(&plain)).is_err());
    }

    #[test]
    fn resuming_after_kept_chunks_gives_the_same_plaintext() {
        let id = Identity::generate();
        let plain: Vec<u8> = (0..5 * CHUNK_SIZE + 99).map(|i| (i * 7) as u8).collect();
        let sha = Sha256Digest::of(&plain);
        let ct = sealed(&plain, &id);
        let layout = Layout::new(plain.len() as u64, ct.len() as u64).expect("layout");
        for partial in [0u64, 1, 65_536, 3 * 65_536 + 5, plain.len() as u64] {
            let k = layout.kept_chunks(partial);
            let mut bufs = Buffers::new();
            let mut op = Opener::new(layout, &mut bufs);
            op.push_head(&ct[..layout.head as usize]);
            op.open_head(std::slice::from_ref(&id)).expect("head");
            let held = &plain[..Layout::plain_offset(k) as usize];
            let mut h = Sha256::new();
            h.update(held);
            op.resume(k, h);
            let mut out = held.to_vec();
            op.push_payload(&ct[layout.chunk_offset(k) as usize..], &mut out)
                .expect("rest");
            op.finish(&sha).expect("digest");
            assert_eq!(out, plain);
        }
    }

    /// A file of 8 MiB and `extra` bytes sealed to a new identity: the identity, the plaintext,
    /// its digest, the age file and its layout.
    fn large_file(extra: usize) -> (Identity, Vec<u8>, Sha256Digest, Vec<u8>, Layout) {
        let id = Identity::generate();
        let n = digest::ON_THREAD_MIN as usize + extra;
        let plain: Vec<u8> = (0..n).map(|i| (i * 13 + (i >> 20)) as u8).collect();
        let sha = Sha256Digest::of(&plain);
        let ct = sealed(&plain, &id);
        let layout = Layout::new(n as u64, ct.len() as u64).expect("layout");
        (id, plain, sha, ct, layout)
    }

    /// An opener of `ct` with its header opened, resumed after `kept` chunks whose plaintext is
    /// `held`.
    fn resumed_at<'b>(
        ct: &[u8],
        layout: Layout,
        id: &Identity,
        bufs: &'b mut Buffers,
        kept: u64,
        held: &[u8],
    ) -> Opener<'b> {
        let mut op = Opener::new(layout, bufs);
        op.push_head(&ct[..layout.head as usize]);
        op.open_head(std::slice::from_ref(id)).expect("head");
        op.resume(kept, Sha256::new().chain_update(held));
        op
    }

    /// A large file's digest computed on its own thread (`digest.rs`), fresh or after a
    /// resume (here only if 8 MiB are left): the sealed digest is accepted, any other refused
    /// as integrity.
    #[test]
    fn a_large_file_hashed_on_a_thread_is_checked_like_any_other() {
        let (id, plain, sha, ct, layout) = large_file(3 * CHUNK_SIZE + 17);
        for (kept, good) in [(0u64, true), (0, false), (2, true), (2, false), (40, true)] {
            let mut bufs = Buffers::new();
            let held = &plain[..Layout::plain_offset(kept) as usize];
            let mut op = resumed_at(&ct, layout, &id, &mut bufs, kept, held);
            op.hash_on_thread(None);
            // Less than 8 MiB left after 40 chunks: hashed here.
            assert_eq!(matches!(op.hasher, Digesting::Thread(_)), kept < 40);
            let mut out = held.to_vec();
            for piece in ct[layout.chunk_offset(kept) as usize..].chunks(1 << 20) {
                op.push_payload(piece, &mut out).expect("payload");
            }
            assert_eq!(out, plain);
            let want = if good {
                sha
            } else {
                Sha256Digest::of(b"other")
            };
            match op.finish(&want) {
                Ok(()) => assert!(good, "kept {kept}: a wrong digest accepted"),
                Err(OpenError::Integrity(_)) => assert!(!good, "kept {kept}: refused"),
                Err(e) => panic!("kept {kept}: {e:?}"),
            }
        }
    }

    /// test-plan.md 128: a large file's plaintext written by the digest's thread, fresh and
    /// after kept chunks: the caller's writer gets nothing, the file holds exactly the
    /// plaintext, and the digest is checked as ever; a file the thread cannot write fails the
    /// file as a write error (exit 7), not as its integrity.
    #[test]
    fn a_large_file_written_on_the_thread_holds_its_plaintext() {
        use std::os::unix::fs::FileExt as _;
        let (id, plain, sha, ct, layout) = large_file(5 * CHUNK_SIZE + 4099);
        let n = plain.len();
        let dir = tempfile::tempdir().expect("tmp");
        for (kept, writable) in [(0u64, true), (3, true), (0, false)] {
            let path = dir.path().join(format!("partial-{kept}-{writable}"));
            let held = &plain[..Layout::plain_offset(kept) as usize];
            std::fs::write(&path, held).expect("partial");
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(writable)
                .open(&path)
                .expect("open");
            let mut bufs = Buffers::new();
            let mut op = resumed_at(&ct, layout, &id, &mut bufs, kept, held);
            op.hash_on_thread(Some(&file));
            if !op.writes_on_thread() {
                // No direct writes here (a file system in memory, or one that refuses them):
                // the caller writes, as for a small file.
                assert!(matches!(op.hasher, Digesting::Thread(_)));
                continue;
            }
            let mut out = Vec::new();
            let mut pushed = Ok(0);
            for piece in ct[layout.chunk_offset(kept) as usize..].chunks(1 << 20) {
                pushed = op.push_payload(piece, &mut out);
                if pushed.is_err() {
                    break;
                }
            }
            assert!(out.is_empty(), "the caller writes nothing");
            let r = pushed.and_then(|_| op.finish(&sha));
            if writable {
                r.expect("opened");
                let mut got = vec![0u8; n + 1];
                let len = file.read_at(&mut got, 0).expect("read");
                assert_eq!(len, n, "kept {kept}");
                assert!(
                    got[..n] == plain[..],
                    "kept {kept}: the file is the plaintext"
                );
            } else {
                assert!(matches!(r, Err(OpenError::Write(_))), "{r:?}");
            }
        }
    }

    proptest! {
        /// `docs/cli.md` "Receiving", resume: for any file size and any partial length, the
        /// kept chunks are whole, never the last one, and the offset to fetch from is the
        /// start of the next chunk: it maps back to the same chunk count and the remaining
        /// ciphertext is exactly the remaining chunks.
        #[test]
        fn resume_offsets_match_chunk_counts(
            size in prop_oneof![0u64..300_000, 0u64..(1u64 << 50)],
            head in 17u64..=(MAX_HEADER_LEN + NONCE_LEN) as u64,
            partial_frac in 0.0f64..1.5,
        ) {
            let ct = head + payload_len(size);
            let l = Layout::new(size, ct).expect("layout");
            prop_assert_eq!(l.head, head);
            let partial = (size as f64 * partial_frac) as u64;
            let k = l.kept_chunks(partial);
            prop_assert!(k < l.chunks);
            prop_assert!(Layout::plain_offset(k) <= partial);
            prop_assert!(Layout::plain_offset(k) <= size);
            let off = l.chunk_offset(k);
            prop_assert!(off < ct);
            // Back from the offset to the chunk count.
            prop_assert_eq!((off - l.head) % E as u64, 0);
            prop_assert_eq!((off - l.head) / E as u64, k);
            // What is left to fetch is exactly chunks k.. of the layout.
            if l.chunks - k < 10_000 {
                let rest: u64 = (k..l.chunks).map(|i| l.chunk_len(i) as u64).sum();
                prop_assert_eq!(ct - off, rest);
            }
            prop_assert_eq!(
                ct - off,
                size - Layout::plain_offset(k) + TAG_SIZE as u64 * (l.chunks - k)
            );
            // A partial that holds every whole chunk keeps all but the last.
            if partial >= size {
                prop_assert_eq!(k, l.chunks - 1);
            }
        }

        #[test]
        fn impossible_sizes_have_no_layout(size in 0u64..(1u64 << 40), short in 0u64..=16) {
            prop_assert!(Layout::new(size, payload_len(size) + short).is_none());
            prop_assert!(Layout::new(size, payload_len(size) + 16 + MAX_HEADER_LEN as u64 + 1).is_none());
            prop_assert!(Layout::new(u64::MAX, u64::MAX).is_none());
        }
    }
}
