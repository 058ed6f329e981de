//! The plaintext SHA-256 of a large fetched file, computed on a thread of its own while the
//! file downloads, and its writes (`docs/cli.md` "Receiving", `docs/performance.md` "The
//! plaintext digest on a thread of its own", "Direct writes of the fetched plaintext").
//!
//! A `fetch` runs its connection and the chunks' authentication on the runtime's one worker
//! (`crate::runtime`), and that thread bounds a large download: SHA-256 was a quarter of its
//! time, the writes into the page cache a tenth. Each authenticated chunk's plaintext is still
//! hashed before the file can be published, in order, exactly once; only the hashing and the
//! writing move. The worker opens every chunk straight into a [`SEGMENT`]-byte buffer aligned
//! for direct I/O ([`Digesting::room`]: the plaintext is not copied, and only a chunk that
//! authenticated is counted in it), hands full buffers to the thread (one wake-up per segment,
//! not per chunk), and takes back the ones it is done with. The thread hashes each segment; a
//! second thread writes it at the next offset of the partial file while the next one is hashed
//! ([`DirectWriter`]: directly where the file system allows, so the plaintext is not copied
//! again into the page cache nor written back from it; a direct write waits for the device,
//! which on the hashing thread held the hashing up: `docs/performance.md` "The fetch's writes
//! on a thread of their own").
//! A partial file therefore only ever grows by whole segments, which are whole authenticated
//! chunks (or the file's end). Nothing is read back from the file.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use rogatory_transport::direct::{AlignedBuf, DirectWriter};
use sha2::{Digest, Sha256};

/// Bytes of plaintext handed to the thread at a time.
const SEGMENT: usize = 1 << 20;
/// Segments at most: one being filled, one being hashed, one being written, one queued.
const SEGMENTS: usize = 4;
/// Files with at least this much plaintext are hashed on a thread of their own; smaller ones
/// would spend more starting it than they save.
pub(crate) const ON_THREAD_MIN: u64 = 8 << 20;

/// The running SHA-256 of a file's plaintext, and where the plaintext is written.
pub(crate) enum Digesting {
    /// Hashed as it comes, on the calling thread, which writes it.
    Here(Sha256),
    /// Hashed on a thread of its own, and written on another if it was given the file.
    Thread(Feed),
}

/// Why the thread's side could not be finished.
#[derive(Debug)]
pub(crate) enum Unfinished {
    /// The thread died (a bug).
    Died,
    /// Writing the plaintext failed.
    Write(io::Error),
}

impl Digesting {
    pub(crate) fn new() -> Self {
        Digesting::Here(Sha256::new())
    }

    /// Adds plaintext, in order, to the digest only.
    #[cfg(test)]
    pub(crate) fn update(&mut self, p: &[u8]) {
        match self {
            Digesting::Here(h) => h.update(p),
            Digesting::Thread(f) => {
                let _ = f.update(p);
            }
        }
    }

    /// Adds plaintext, in order: hashed, and written to `out` unless the thread writes it.
    pub(crate) fn take(&mut self, p: &[u8], out: &mut impl Write) -> io::Result<()> {
        match self {
            Digesting::Here(h) => {
                h.update(p);
                out.write_all(p)
            }
            Digesting::Thread(f) => {
                f.update(p)?;
                if f.writer.is_some() {
                    Ok(())
                } else {
                    out.write_all(p)
                }
            }
        }
    }

    /// Room for `n` bytes of plaintext at the end of the segment being filled, if the thread
    /// hashes and the segment has that room: a caller opens a chunk straight into it, then
    /// counts it with [`Digesting::took`] once it is authenticated (bytes left there uncounted
    /// are never hashed nor written). A segment holds whole chunks: it is a multiple of
    /// their size, and the thread starts at a chunk boundary.
    pub(crate) fn room(&mut self, n: usize) -> Option<&mut [u8]> {
        match self {
            Digesting::Here(_) => None,
            Digesting::Thread(f) => {
                let at = f.cur.len;
                f.cur.buf.as_mut_slice().get_mut(at..at + n)
            }
        }
    }

    /// Counts the first `n` bytes of [`Digesting::room`] as plaintext added, in order, as
    /// [`Digesting::take`] would have: hashed, and written to `out` unless the thread writes it.
    pub(crate) fn took(&mut self, n: usize, out: &mut impl Write) -> io::Result<()> {
        match self {
            Digesting::Here(_) => Err(io::Error::other("no room was given")),
            Digesting::Thread(f) => {
                if f.writer.is_none() {
                    let at = f.cur.len;
                    out.write_all(&f.cur.buf.as_slice()[at..at + n])?;
                }
                f.added(n)
            }
        }
    }

    /// Whether the plaintext is written on the feed's writing thread (not by the caller).
    pub(crate) fn writes_on_thread(&self) -> bool {
        matches!(self, Digesting::Thread(f) if f.writer.is_some())
    }

    /// Moves the hashing to a thread of its own, from the state reached so far, and the
    /// writing to another if `to` is given. Stays here if the threads cannot be started.
    pub(crate) fn move_to_thread(&mut self, to: Option<DirectWriter>) {
        if let Digesting::Here(h) = self
            && let Some(f) = Feed::start(h.clone(), to)
        {
            *self = Digesting::Thread(f);
        }
    }

    /// The digest of everything added, once every byte is written.
    pub(crate) fn finalize(self) -> Result<[u8; 32], Unfinished> {
        match self {
            Digesting::Here(h) => Ok(h.finalize().into()),
            Digesting::Thread(f) => f.finish(),
        }
    }
}

/// A segment of plaintext, aligned for a direct write.
struct Segment {
    buf: AlignedBuf,
    len: usize,
}

impl Segment {
    fn new() -> Self {
        Segment {
            buf: AlignedBuf::new(SEGMENT),
            len: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf.as_slice()[..self.len]
    }
}

/// The calling thread's side of the hashing thread and of the writing thread.
pub(crate) struct Feed {
    /// The segment being filled.
    cur: Segment,
    to: Sender<Segment>,
    back: Receiver<Segment>,
    /// The first write error (or the writing thread's death), as soon as it is known.
    failed: Receiver<io::Error>,
    /// Segments made so far.
    made: usize,
    /// The hashing thread: the digest.
    thread: JoinHandle<[u8; 32]>,
    /// The writing thread, if any: how the writes went.
    writer: Option<JoinHandle<io::Result<()>>>,
}

/// What a writing thread that died (a bug) leaves the file's writes as.
fn writer_died() -> io::Error {
    io::Error::other("the thread writing the file died")
}

/// Writes `segments` with `w` at its next offsets, in order, and gives each one back; the first
/// write error goes to `fail` at once (the worker hears of it) and ends the writing: later
/// segments are only given back. Returns how the writing went.
fn write_segments(
    mut w: DirectWriter,
    segments: Receiver<Segment>,
    give_back: &Sender<Segment>,
    fail: &Sender<io::Error>,
) -> io::Result<()> {
    let mut wrote = Ok(());
    for mut s in segments {
        if wrote.is_ok()
            && let Err(e) = w.write(s.bytes())
        {
            wrote = Err(io::Error::new(e.kind(), e.to_string()));
            let _ = fail.send(e);
        }
        s.len = 0;
        // The feed may be gone (it stopped early): the segment is dropped.
        let _ = give_back.send(s);
    }
    match wrote {
        Ok(()) => w.finish(),
        e => e,
    }
}

impl Feed {
    fn start(state: Sha256, to: Option<DirectWriter>) -> Option<Self> {
        let (give, segments) = channel::<Segment>();
        let (give_back, back) = channel();
        let (fail, failed) = channel();
        // The writes on a thread of their own: a segment is written while the next one is
        // hashed, so that a disk slow to answer a write does not hold the hashing up too.
        let (write, writer) = match to {
            Some(w) => {
                let (write, written) = channel::<Segment>();
                let (give_back, fail) = (give_back.clone(), fail.clone());
                let j = std::thread::Builder::new()
                    .name("rogatory-write".into())
                    .spawn(move || write_segments(w, written, &give_back, &fail))
                    .ok()?;
                (Some(write), Some(j))
            }
            None => (None, None),
        };
        let spawned = std::thread::Builder::new()
            .name("rogatory-hash".into())
            .spawn(move || {
                let (mut h, mut write) = (state, write);
                for mut s in segments {
                    h.update(s.bytes());
                    if let Some(w) = &write {
                        match w.send(s) {
                            Ok(()) => continue,
                            // The writing thread died (a bug): the worker hears of it once, and
                            // this segment and the next go back, so that it never waits for one.
                            Err(std::sync::mpsc::SendError(back)) => {
                                s = back;
                                write = None;
                                let _ = fail.send(writer_died());
                            }
                        }
                    }
                    s.len = 0;
                    // The feed may be gone (it stopped early): the segment is dropped.
                    let _ = give_back.send(s);
                }
                // Dropping `write` here lets the writing thread finish.
                h.finalize().into()
            });
        let thread = match spawned {
            Ok(t) => t,
            Err(_) => {
                // The writing thread's sender went with the closure: it ends, clearing
                // `O_DIRECT` before the caller writes through the descriptor.
                if let Some(j) = writer {
                    let _ = j.join();
                }
                return None;
            }
        };
        Some(Feed {
            cur: Segment::new(),
            to: give,
            back,
            failed,
            made: 1,
            thread,
            writer,
        })
    }

    /// Adds plaintext; fails with the thread's first write error once it is known.
    fn update(&mut self, mut p: &[u8]) -> io::Result<()> {
        while !p.is_empty() {
            let n = (SEGMENT - self.cur.len).min(p.len());
            let at = self.cur.len;
            self.cur.buf.as_mut_slice()[at..at + n].copy_from_slice(&p[..n]);
            p = &p[n..];
            self.added(n)?;
        }
        Ok(())
    }

    /// Counts `n` more bytes of the segment being filled; hands it to the thread once full.
    fn added(&mut self, n: usize) -> io::Result<()> {
        self.cur.len += n;
        if self.cur.len == SEGMENT {
            if let Ok(e) = self.failed.try_recv() {
                return Err(e);
            }
            let next = self.spare();
            let full = std::mem::replace(&mut self.cur, next);
            // A thread that died is reported by `finish`.
            let _ = self.to.send(full);
        }
        Ok(())
    }

    /// An empty segment: one the thread is done with, a new one while fewer than [`SEGMENTS`]
    /// exist, else the next one the thread is done with (it is behind: this waits as long as
    /// the work here would have taken).
    fn spare(&mut self) -> Segment {
        if let Ok(s) = self.back.try_recv() {
            return s;
        }
        if self.made < SEGMENTS {
            self.made += 1;
            return Segment::new();
        }
        self.back.recv().unwrap_or_else(|_| Segment::new())
    }

    fn finish(self) -> Result<[u8; 32], Unfinished> {
        let Feed {
            cur,
            to,
            thread,
            writer,
            ..
        } = self;
        if cur.len > 0 {
            let _ = to.send(cur);
        }
        drop(to);
        // The hashing thread first: once it has ended, the writing thread has every segment and
        // ends after the last write.
        let digest = thread.join();
        let wrote = match writer {
            Some(j) => j.join().unwrap_or_else(|_| Err(writer_died())),
            None => Ok(()),
        };
        match (digest, wrote) {
            (Ok(d), Ok(())) => Ok(d),
            (Ok(_), Err(e)) => Err(Unfinished::Write(e)),
            (Err(_), _) => Err(Unfinished::Died),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plaintext of `n` bytes, not periodic in the segment size.
    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect()
    }

    #[test]
    fn the_thread_hashes_what_the_caller_would_have_hashed() {
        // Pieces of odd sizes across several segments, more than the segments in flight.
        let plain = data(SEGMENT * (SEGMENTS + 2) + 12_345);
        for start_after in [0, 1, SEGMENT - 1, SEGMENT + 7] {
            let mut d = Digesting::new();
            d.update(&plain[..start_after]);
            d.move_to_thread(None);
            assert!(matches!(d, Digesting::Thread(_)));
            for piece in plain[start_after..].chunks(65_536 + 16) {
                d.update(piece);
            }
            let expect: [u8; 32] = Sha256::digest(&plain).into();
            assert_eq!(
                d.finalize().ok(),
                Some(expect),
                "moved after {start_after} bytes"
            );
        }
    }

    #[test]
    fn chunks_opened_into_the_segment_count_only_once_taken() {
        // Chunks of 64 KiB written into the room given, as `Opener` opens them; a chunk that
        // failed to authenticate leaves its bytes there uncounted.
        let plain = data(SEGMENT * 3 + 1000);
        let mut d = Digesting::new();
        assert!(d.room(10).is_none(), "no room before the thread");
        d.move_to_thread(None);
        let mut out = Vec::new();
        for piece in plain.chunks(65_536) {
            let room = d.room(piece.len()).expect("a segment holds whole chunks");
            room.fill(0xee);
            let room = d.room(piece.len()).expect("still room");
            room.copy_from_slice(piece);
            d.took(piece.len(), &mut out).expect("no writes to fail");
        }
        assert_eq!(
            out, plain,
            "written by the caller when the thread does not write"
        );
        let expect: [u8; 32] = Sha256::digest(&plain).into();
        assert_eq!(d.finalize().ok(), Some(expect));
    }

    #[test]
    fn nothing_added_on_the_thread_is_the_state_it_started_from() {
        let mut d = Digesting::new();
        d.update(b"abc");
        d.move_to_thread(None);
        let expect: [u8; 32] = Sha256::digest(b"abc").into();
        assert_eq!(d.finalize().ok(), Some(expect));
    }

    #[test]
    fn at_most_the_segments_in_flight_are_made() {
        let mut d = Digesting::new();
        d.move_to_thread(None);
        let Digesting::Thread(f) = &mut d else {
            panic!("no hashing thread");
        };
        for _ in 0..4 * SEGMENTS {
            f.update(&[7u8; SEGMENT]).expect("no writes to fail");
            assert!(f.made <= SEGMENTS, "{} segments made", f.made);
        }
        assert!(d.finalize().is_ok());
    }
}
