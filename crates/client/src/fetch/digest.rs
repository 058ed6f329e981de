//! The plaintext SHA-256 of a large fetched file, computed on a thread of its own while the
//! file downloads (`docs/cli.md` "Receiving", `docs/performance.md` "The plaintext digest on a
//! thread of its own").
//!
//! A `fetch` runs its connection, the chunks' authentication and the writes on the runtime's
//! one worker (`crate::runtime`), and that thread bounds a large download: SHA-256 was a
//! quarter of its time. Each authenticated chunk's plaintext is still hashed before the file
//! can be published, in order, exactly once; only the hashing moves. The worker copies every
//! chunk's plaintext into a [`SEGMENT`]-byte buffer, hands full buffers to the hashing thread
//! (one wake-up per segment, not per chunk), and takes back the ones it has hashed. Nothing is
//! read back from the file.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

/// Bytes of plaintext handed to the hashing thread at a time.
const SEGMENT: usize = 1 << 20;
/// Segments at most: one being filled, the others queued or being hashed.
const SEGMENTS: usize = 3;
/// Files with at least this much plaintext are hashed on a thread of their own; smaller ones
/// would spend more starting it than they save.
pub(crate) const ON_THREAD_MIN: u64 = 8 << 20;

/// The running SHA-256 of a file's plaintext.
pub(crate) enum Digesting {
    /// Hashed as it comes, on the calling thread.
    Here(Sha256),
    /// Hashed on a thread of its own.
    Thread(Feed),
}

impl Digesting {
    pub(crate) fn new() -> Self {
        Digesting::Here(Sha256::new())
    }

    /// Adds plaintext, in order.
    pub(crate) fn update(&mut self, p: &[u8]) {
        match self {
            Digesting::Here(h) => h.update(p),
            Digesting::Thread(f) => f.update(p),
        }
    }

    /// Moves the hashing to a thread of its own, from the state reached so far. Stays here if
    /// no thread can be started.
    pub(crate) fn move_to_thread(&mut self) {
        if let Digesting::Here(h) = self
            && let Some(f) = Feed::start(h.clone())
        {
            *self = Digesting::Thread(f);
        }
    }

    /// The digest of everything added; `None` if the hashing thread died.
    pub(crate) fn finalize(self) -> Option<[u8; 32]> {
        match self {
            Digesting::Here(h) => Some(h.finalize().into()),
            Digesting::Thread(f) => f.finish(),
        }
    }
}

/// The calling thread's side of a hashing thread.
pub(crate) struct Feed {
    /// The segment being filled.
    cur: Vec<u8>,
    to: Sender<Vec<u8>>,
    back: Receiver<Vec<u8>>,
    /// Segments made so far.
    made: usize,
    thread: JoinHandle<[u8; 32]>,
}

impl Feed {
    fn start(state: Sha256) -> Option<Self> {
        let (to, segments) = channel::<Vec<u8>>();
        let (give_back, back) = channel();
        let thread = std::thread::Builder::new()
            .name("rogatory-hash".into())
            .spawn(move || {
                let mut h = state;
                for mut s in segments {
                    h.update(&s);
                    s.clear();
                    // The feed may be gone (it stopped early): the segment is dropped.
                    let _ = give_back.send(s);
                }
                h.finalize().into()
            })
            .ok()?;
        Some(Feed {
            cur: Vec::with_capacity(SEGMENT),
            to,
            back,
            made: 1,
            thread,
        })
    }

    fn update(&mut self, mut p: &[u8]) {
        while !p.is_empty() {
            let n = (SEGMENT - self.cur.len()).min(p.len());
            self.cur.extend_from_slice(&p[..n]);
            p = &p[n..];
            if self.cur.len() == SEGMENT {
                let next = self.spare();
                let full = std::mem::replace(&mut self.cur, next);
                // A thread that died is reported by `finish`.
                let _ = self.to.send(full);
            }
        }
    }

    /// An empty segment: one the thread has hashed, a new one while fewer than [`SEGMENTS`]
    /// exist, else the next one hashed (the thread is behind: this waits as long as hashing
    /// here would have taken).
    fn spare(&mut self) -> Vec<u8> {
        if let Ok(s) = self.back.try_recv() {
            return s;
        }
        if self.made < SEGMENTS {
            self.made += 1;
            return Vec::with_capacity(SEGMENT);
        }
        self.back
            .recv()
            .unwrap_or_else(|_| Vec::with_capacity(SEGMENT))
    }

    fn finish(self) -> Option<[u8; 32]> {
        let Feed {
            cur, to, thread, ..
        } = self;
        if !cur.is_empty() {
            let _ = to.send(cur);
        }
        drop(to);
        thread.join().ok()
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
            d.move_to_thread();
            assert!(matches!(d, Digesting::Thread(_)));
            for piece in plain[start_after..].chunks(65_536 + 16) {
                d.update(piece);
            }
            let expect: [u8; 32] = Sha256::digest(&plain).into();
            assert_eq!(
                d.finalize(),
                Some(expect),
                "moved after {start_after} bytes"
            );
        }
    }

    #[test]
    fn nothing_added_on_the_thread_is_the_state_it_started_from() {
        let mut d = Digesting::new();
        d.update(b"abc");
        d.move_to_thread();
        let expect: [u8; 32] = Sha256::digest(b"abc").into();
        assert_eq!(d.finalize(), Some(expect));
    }

    #[test]
    fn at_most_the_segments_in_flight_are_made() {
        let mut d = Digesting::new();
        d.move_to_thread();
        let Digesting::Thread(f) = &mut d else {
            panic!("no hashing thread");
        };
        for _ in 0..4 * SEGMENTS {
            f.update(&[7u8; SEGMENT]);
            assert!(f.made <= SEGMENTS, "{} segments made", f.made);
        }
        assert!(d.finalize().is_some());
    }
}
