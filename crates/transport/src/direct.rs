//! Direct reads of a large file on the data path: a sender's source (`protocol.md` §6.1,
//! "Reading the sources") and a relay's pack when it serves a large file (§6.3).
//!
//! A file of at least [`DIRECT_MIN`] bytes is read with `O_DIRECT`, one aligned block of
//! [`BLOCK`] bytes at a time, and its chunks are served from that block. The data goes from the
//! device to this buffer without passing through the page cache: sending a disk image of many
//! GiB does not evict the machine's cache (each chunk is then copied once, from the block to
//! the piece being produced, as the kernel would have copied it from its cache). It also avoids a
//! cost of virtual machines whose balloon driver reports free memory to the host: there the
//! first touch of every new page-cache page faults in the host, about 0.8 s of system time per
//! GiB read on the development machine (`docs/performance.md`).
//!
//! Where the file system refuses `O_DIRECT` (or on other systems), and on a file system kept in
//! memory (tmpfs, whose pages are the data: a direct read there only adds a copy), the caller
//! reads through the page cache as before. Nothing here decides whether the source changed: the caller checks the
//! fingerprint of the descriptor opened here, and the length of what each block returns.

// Elsewhere `DirectSource::open` answers "not supported" and nothing else here is used.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
#[cfg(target_os = "linux")]
use std::sync::mpsc::channel;
use std::sync::mpsc::{Receiver, Sender};

use bytes::Bytes;

/// Bytes per direct read: 16 STREAM chunks.
pub const BLOCK: usize = 1 << 20;
/// Blocks asked of the reader thread ahead of the one being served. With one, a relay serving a
/// GiB from disk waited for it at 770–850 of its 1,024 blocks, 1.1–1.6 s in all, in fetches of
/// about 2.3 s: the reader idled between an answer and the next request. With three queued it
/// reads nearly back to back (250–400 waits, 0.4–0.7 s; seven: 0.2 s, at twice the memory;
/// `docs/performance.md` "Reading ahead").
const AHEAD: usize = 3;
/// Files at least this large are read directly; smaller ones are read through the page cache
/// (with the kernel's read-ahead hints for many small files).
pub const DIRECT_MIN: u64 = 4 << 20;
/// Alignment of the buffer, offsets and lengths of a direct read: a page, at least the logical
/// block size of every common device.
pub(crate) const ALIGN: usize = 4096;

/// Whether `fd` is on a file system kept in memory (tmpfs, ramfs): its pages are the data, so a
/// direct read has no device to read from and only adds a copy (kernel to block, then block to
/// piece, against one copy from the page cache).
#[cfg(target_os = "linux")]
pub(crate) fn in_memory(fd: &File) -> bool {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    const RAMFS_MAGIC: u64 = 0x8584_58f6;
    rustix::fs::fstatfs(fd).is_ok_and(|s| {
        let t = s.f_type as u64;
        t == TMPFS_MAGIC || t == RAMFS_MAGIC
    })
}

/// A buffer of a fixed length whose first byte is aligned for direct I/O ([`ALIGN`]).
pub struct AlignedBuf {
    /// `len + ALIGN` bytes; the buffer starts at `at`, the first aligned address.
    buf: Vec<u8>,
    at: usize,
    len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

impl AlignedBuf {
    /// `len` zeroed bytes. Should no aligned start be found (`align_offset` may give up), the
    /// buffer is not aligned ([`AlignedBuf::is_aligned`]) and direct I/O does not use it.
    pub fn new(len: usize) -> Self {
        let buf = vec![0u8; len + ALIGN];
        let at = buf.as_ptr().align_offset(ALIGN);
        let at = if at <= ALIGN { at } else { 0 };
        AlignedBuf { buf, at, len }
    }

    /// Whether the buffer starts at an aligned address.
    pub fn is_aligned(&self) -> bool {
        self.as_slice().as_ptr().align_offset(ALIGN) == 0
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.len]
    }

    /// The buffer's bytes, to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.at..self.at + self.len]
    }
}

/// One aligned buffer of [`BLOCK`] bytes and what it holds.
struct Block {
    buf: AlignedBuf,
    /// File offset and valid length of the bytes held (`None`: nothing).
    held: Option<(u64, usize)>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block").field("held", &self.held).finish()
    }
}

impl Block {
    fn new() -> Option<Self> {
        let buf = AlignedBuf::new(BLOCK);
        buf.is_aligned().then_some(Block { buf, held: None })
    }

    /// Reads the block at `off` (aligned) of a file of `size` bytes: up to the block's end, or
    /// the file's end rounded up to the alignment; `held` says how many bytes it got.
    fn fill(&mut self, fd: &File, off: u64, size: u64) -> io::Result<()> {
        self.held = None;
        let want = size.saturating_sub(off).min(BLOCK as u64) as usize;
        let ask = want.next_multiple_of(ALIGN).min(BLOCK);
        let block = &mut self.buf.as_mut_slice()[..ask];
        let mut n = 0;
        while n < ask {
            match fd.read_at(&mut block[n..], off + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            // A short read that ends off the alignment cannot be continued directly: the end.
            if n % ALIGN != 0 {
                break;
            }
        }
        self.held = Some((off, n));
        Ok(())
    }
}

/// Wakes the task waiting for the reader thread when the thread ends.
struct WakeOnDrop(Arc<tokio::sync::Notify>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// A read of the block at an offset, made ahead on the reader thread.
type Request = (u64, Block);
/// Its answer: the buffer and how the read went.
type Answer = (Block, io::Result<()>);

/// One source opened for direct reads: the block being served, and the next [`AHEAD`] read
/// ahead on a thread of its own, so the producer does not wait for the device while it has
/// data (`1 + AHEAD` blocks of 1 MiB in all).
#[derive(Debug)]
pub struct DirectSource {
    fd: Arc<File>,
    size: u64,
    current: Block,
    /// Buffers not in use, here (the others are on the reader thread).
    spare: Vec<Block>,
    /// Offsets of the blocks asked of the reader thread, in the order its answers come.
    ahead: VecDeque<u64>,
    /// Answers already taken from the channel by [`DirectSource::poll_ready`], in order: those of
    /// the first blocks of `ahead`.
    arrived: VecDeque<Answer>,
    ask: Sender<Request>,
    answers: Receiver<Answer>,
    /// Woken by the reader thread after each answer ([`DirectSource::ready`]).
    answered: Arc<tokio::sync::Notify>,
    /// The bytes of the block held, once [`DirectSource::read_shared`] has handed them out:
    /// its buffer went with them (`current` holds a fresh one, unused until the next block).
    shared: Option<Bytes>,
    /// Answers waited for (blocking) so far: what a test of [`DirectSource::ready`] counts.
    #[cfg(test)]
    waited: usize,
}

/// What a direct read gave.
#[derive(Debug)]
pub enum DirectRead {
    /// This many bytes of the range asked: fewer if the file is now shorter there.
    Got(usize),
    /// The device or the file system failed.
    Failed(io::Error),
    /// Not possible here (refused for its alignment or by the file system): read through the
    /// page cache instead.
    Unsupported,
}

impl DirectSource {
    /// Opens `path` (of `size` bytes) for direct reads. `Ok(None)` where the file system or the
    /// system does not support it; an error is one opening the file would have had anyway.
    pub fn open(path: &Path, size: u64) -> io::Result<Option<Self>> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let r = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(path);
            let fd = match r {
                Ok(fd) => Arc::new(fd),
                Err(e) if is_unsupported(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            if in_memory(&fd) {
                return Ok(None);
            }
            let Some(current) = Block::new() else {
                return Ok(None);
            };
            let Some(spare) = (0..AHEAD).map(|_| Block::new()).collect::<Option<Vec<_>>>() else {
                return Ok(None);
            };
            let (ask, requests) = channel::<Request>();
            let (answer, answers) = channel::<Answer>();
            let answered = Arc::new(tokio::sync::Notify::new());
            let (reader_fd, wake) = (Arc::clone(&fd), Arc::clone(&answered));
            let spawned = std::thread::Builder::new()
                .name("rogatory-read".into())
                .spawn(move || {
                    // However the thread ends (the source dropped, or a panic), a task waiting
                    // in `ready` is woken and finds the channel closed.
                    let _wake = WakeOnDrop(Arc::clone(&wake));
                    // Ends when the source is dropped (its sender with it).
                    while let Ok((off, mut b)) = requests.recv() {
                        let r = b.fill(&reader_fd, off, size);
                        if answer.send((b, r)).is_err() {
                            break;
                        }
                        wake.notify_one();
                    }
                });
            if spawned.is_err() {
                return Ok(None);
            }
            Ok(Some(DirectSource {
                fd,
                size,
                current,
                spare,
                ahead: VecDeque::with_capacity(AHEAD),
                arrived: VecDeque::with_capacity(AHEAD),
                ask,
                answers,
                answered,
                shared: None,
                #[cfg(test)]
                waited: 0,
            }))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (path, size);
            Ok(None)
        }
    }

    /// The descriptor (for its fingerprint).
    pub fn fd(&self) -> &File {
        &self.fd
    }

    /// Copies the bytes at `off` into `dst`, from the block holding `off`: the block held, the
    /// next one read ahead, or else one read now; then keeps [`AHEAD`] blocks asked ahead of
    /// it. A range that goes past that block gets the bytes up to its end (a sender's chunks
    /// never do; a relay's ranges call again for the rest).
    pub fn read(&mut self, off: u64, dst: &mut [u8]) -> DirectRead {
        match self.held(off, dst.len()) {
            Ok((from, have)) => {
                dst[..have].copy_from_slice(&self.current_bytes()[from..from + have]);
                DirectRead::Got(have)
            }
            Err(r) => r,
        }
    }

    /// Like [`DirectSource::read`], without the copy: the bytes at `off` (at most `max`, up to
    /// the end of the block holding them) as a [`Bytes`] that shares the block's buffer, for a
    /// relay to hand to quinn as they are (`protocol.md` §6.3). The buffer goes back to a pool
    /// of spare blocks when the last of its `Bytes` is dropped (quinn drops them once the peer
    /// has acknowledged them); the source reads on into another. `Ok(None)`: no buffer could be
    /// made for that, read with [`DirectSource::read`] instead.
    pub fn read_shared(&mut self, off: u64, max: usize) -> Result<Option<Bytes>, DirectRead> {
        let (from, have) = self.held(off, max)?;
        if self.shared.is_none() {
            let Some((_, len)) = self.current.held else {
                return Err(DirectRead::Unsupported);
            };
            let Some(fresh) = spare_block() else {
                return Ok(None);
            };
            let buf = std::mem::replace(&mut self.current.buf, fresh);
            self.shared = Some(Bytes::from_owner(SharedBlock {
                buf: Some(buf),
                len,
            }));
        }
        Ok(self.shared.as_ref().map(|b| b.slice(from..from + have)))
    }

    /// The bytes of the block held: in its buffer, or in the one handed out with them.
    fn current_bytes(&self) -> &[u8] {
        match &self.shared {
            Some(b) => b,
            None => self.current.buf.as_slice(),
        }
    }

    /// Whether [`DirectSource::read`] of `len` bytes at `off` (at most [`AHEAD`] blocks: a
    /// relay's range is at most one) can be served without waiting for the device: its first
    /// block is held, or it and the range's other blocks are read ahead and answered. Blocks not
    /// asked yet are asked now. Never blocks: what an async caller checks first
    /// ([`DirectSource::ready`]), so that a relay's worker does not wait for the disk. A block
    /// whose read ahead failed counts as answered: the read tries it again, then reports it.
    fn poll_ready(&mut self, off: u64, len: usize) -> bool {
        loop {
            match self.answers.try_recv() {
                Ok(a) => self.arrived.push_back(a),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                // The reader is gone: the read reports it without waiting.
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return true,
            }
        }
        let first = off - off % BLOCK as u64;
        // Blocks read ahead before the range are of no use any more (`held` skips them).
        while self.ahead.front().is_some_and(|&o| o < first) && self.recycle_answered() {}
        let end = off
            .saturating_add(len.max(1) as u64)
            .min(self.size.max(off + 1))
            .min(first + (AHEAD * BLOCK) as u64);
        let (mut block, mut ready) = (first, true);
        while block < end {
            // `read` makes the range's first block current: a block held counts only there.
            let held = block == first && self.current.held.is_some_and(|(o, _)| o == block);
            match self.ahead.iter().position(|&o| o == block) {
                _ if held => {}
                Some(i) if i < self.arrived.len() => {}
                Some(_) => ready = false,
                None => {
                    // Asked now: after the blocks read ahead if it follows them (a start, or a
                    // range's next block) and a buffer is free, else alone (a rewind or a jump:
                    // what was read ahead is of no use, and goes back once every answer is in).
                    let follows = self.ahead.back().is_none_or(|&o| o + BLOCK as u64 == block);
                    if !follows || self.spare.is_empty() {
                        if self.ahead.len() > self.arrived.len() {
                            return false;
                        }
                        while self.recycle_answered() {}
                    }
                    // Every buffer is free now but the one held (`1 + AHEAD` in all); if the
                    // reader is gone, the read reports it without waiting.
                    if !self.ask_for(block) {
                        return true;
                    }
                    ready = false;
                }
            }
            block += BLOCK as u64;
        }
        ready
    }

    /// The first block read ahead, if its answer is in: its buffer goes back to the spares.
    fn recycle_answered(&mut self) -> bool {
        if self.arrived.is_empty() || self.ahead.pop_front().is_none() {
            return false;
        }
        if let Some((b, _)) = self.arrived.pop_front() {
            self.spare.push(b);
        }
        true
    }

    /// Asks the reader thread for the block at `off` in a spare buffer; false if none is spare
    /// or the thread is gone.
    fn ask_for(&mut self, off: u64) -> bool {
        let Some(b) = self.spare.pop() else {
            return false;
        };
        match self.ask.send((off, b)) {
            Ok(()) => {
                self.ahead.push_back(off);
                true
            }
            Err(e) => {
                self.spare.push(e.0.1);
                false
            }
        }
    }

    /// Waits, without blocking the thread, until [`DirectSource::read`] of `len` bytes at `off`
    /// (at most [`AHEAD`] blocks) can be served without waiting for the device: its first block
    /// is held, or it and the range's other blocks are read ahead and answered (a block whose
    /// read ahead failed counts as answered: the read tries it again, then reports it).
    pub async fn ready(&mut self, off: u64, len: usize) {
        while !self.poll_ready(off, len) {
            // A wake-up given before this wait is kept as a permit: none is lost.
            self.answered.notified().await;
        }
    }

    /// The next answer of the reader thread, taken earlier or waited for now.
    fn next_answer(&mut self) -> Option<Answer> {
        if let Some(a) = self.arrived.pop_front() {
            return Some(a);
        }
        #[cfg(test)]
        {
            self.waited += 1;
        }
        self.answers.recv().ok()
    }

    /// Where the bytes at `off` (at most `max`) are in the block holding `off`, made current:
    /// their start and length in [`DirectSource::current_bytes`].
    fn held(&mut self, off: u64, max: usize) -> Result<(usize, usize), DirectRead> {
        let block_off = off - off % BLOCK as u64;
        if self.current.held.is_none_or(|(o, _)| o != block_off) {
            // The block if it was asked ahead; blocks asked before it are skipped, and all of
            // them on a rewind or a jump (answers keep the order asked), then it is read now.
            let (mut b, ready) = loop {
                let Some(o) = self.ahead.pop_front() else {
                    let Some(b) = self.spare.pop() else {
                        return Err(DirectRead::Unsupported);
                    };
                    break (b, false);
                };
                let Some((b, r)) = self.next_answer() else {
                    return Err(DirectRead::Unsupported);
                };
                if o == block_off {
                    // A read ahead that failed: the block is read now (an error that persists
                    // is reported then).
                    break (b, r.is_ok());
                }
                self.spare.push(b);
            };
            let r = if ready {
                Ok(())
            } else {
                b.fill(&self.fd, block_off, self.size)
            };
            // The bytes handed out keep their buffer; `current`'s own goes back with it.
            self.shared = None;
            let old = std::mem::replace(&mut self.current, b);
            self.spare.push(old);
            match r {
                Err(e) if is_unsupported(&e) => return Err(DirectRead::Unsupported),
                Err(e) => return Err(DirectRead::Failed(e)),
                Ok(()) => {}
            }
            let mut next = self.ahead.back().map_or(block_off, |&o| o) + BLOCK as u64;
            while self.ahead.len() < AHEAD && next < self.size && self.ask_for(next) {
                next += BLOCK as u64;
            }
        }
        let Some((_, len)) = self.current.held else {
            return Err(DirectRead::Unsupported);
        };
        let from = (off - block_off) as usize;
        let have = len.saturating_sub(from).min(max);
        Ok((from.min(len), have))
    }
}

/// Buffers of blocks handed out by [`DirectSource::read_shared`], back from quinn, kept for
/// the next ones: at most [`SPARE_BLOCKS_MAX`]. A fresh buffer costs page faults to fill (with
/// a virtual machine's ballooned memory, faults in the host too). They hold ciphertext that
/// went on the wire, nothing secret; a direct read overwrites them.
static SPARE_BLOCKS: std::sync::Mutex<Vec<AlignedBuf>> = std::sync::Mutex::new(Vec::new());
/// Spare blocks kept at most.
const SPARE_BLOCKS_MAX: usize = 8;

/// A spare block's buffer, or a new one (`None` if it could not be aligned).
fn spare_block() -> Option<AlignedBuf> {
    let kept = SPARE_BLOCKS.lock().unwrap_or_else(|p| p.into_inner()).pop();
    kept.or_else(|| Some(AlignedBuf::new(BLOCK)).filter(AlignedBuf::is_aligned))
}

/// A block's buffer shared by the [`Bytes`] handed out; back to [`SPARE_BLOCKS`] when dropped.
struct SharedBlock {
    buf: Option<AlignedBuf>,
    len: usize,
}

impl AsRef<[u8]> for SharedBlock {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| &b.as_slice()[..self.len])
    }
}

impl Drop for SharedBlock {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            let mut spare = SPARE_BLOCKS.lock().unwrap_or_else(|p| p.into_inner());
            if spare.len() < SPARE_BLOCKS_MAX {
                spare.push(b);
            }
        }
    }
}

/// Writes a file's bytes at increasing offsets: directly (`O_DIRECT`: nothing copied into the
/// page cache, nothing left for writeback to do later) while the file system allows it and every
/// write is whole aligned blocks from an aligned buffer, through the page cache otherwise (a file
/// system kept in memory or one that refuses, an unaligned start, the file's last bytes). Used
/// by `fetch` for a large file's plaintext (`docs/cli.md` "Receiving"). Direct writes are on the
/// device when they return, but the device's cache is not flushed: the caller still syncs the
/// file before it counts on it.
///
/// The flag belongs to the open file description, which every duplicate of the descriptor
/// shares: [`DirectWriter::finish`] (or dropping the writer) clears it again.
#[derive(Debug)]
pub struct DirectWriter {
    fd: File,
    at: u64,
    direct: bool,
}

impl DirectWriter {
    /// A writer of `fd` from offset `at`; direct if it can be.
    pub fn new(fd: File, at: u64) -> Self {
        #[cfg(target_os = "linux")]
        let direct =
            at.is_multiple_of(ALIGN as u64) && !in_memory(&fd) && set_direct(&fd, true).is_ok();
        #[cfg(not(target_os = "linux"))]
        let direct = false;
        DirectWriter { fd, at, direct }
    }

    /// Whether the next aligned write goes directly.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Writes all of `data` at the current offset, then moves past it.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.direct
            && (data.as_ptr().align_offset(ALIGN) != 0 || !data.len().is_multiple_of(ALIGN))
        {
            self.buffered()?;
        }
        let mut n = 0;
        while n < data.len() {
            match self.fd.write_at(&data[n..], self.at + n as u64) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Refused for its alignment or by the file system: the page cache then.
                Err(e) if self.direct && is_unsupported(&e) => self.buffered()?,
                Err(e) => return Err(e),
            }
            // A short direct write that ends off the alignment cannot go on directly.
            if self.direct && !n.is_multiple_of(ALIGN) {
                self.buffered()?;
            }
        }
        self.at += n as u64;
        Ok(())
    }

    /// The descriptor back as it was (no longer direct).
    pub fn finish(mut self) -> io::Result<()> {
        self.buffered()
    }

    fn buffered(&mut self) -> io::Result<()> {
        if self.direct {
            #[cfg(target_os = "linux")]
            set_direct(&self.fd, false)?;
            self.direct = false;
        }
        Ok(())
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        let _ = self.buffered();
    }
}

/// Sets or clears `O_DIRECT` on `fd`'s open file description.
#[cfg(target_os = "linux")]
fn set_direct(fd: &File, on: bool) -> io::Result<()> {
    use rustix::fs::OFlags;
    let flags = rustix::fs::fcntl_getfl(fd)?;
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    rustix::fs::fcntl_setfl(fd, flags)?;
    Ok(())
}

/// A direct read refused for its alignment or by the file system.
pub(crate) fn is_unsupported(e: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        rustix::io::Errno::from_io_error(e) == Some(rustix::io::Errno::INVAL)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = e;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl DirectRead {
        fn got(self) -> usize {
            match self {
                DirectRead::Got(n) => n,
                other => panic!("expected bytes, got {other:?}"),
            }
        }
    }

    /// Writes `parts` (each from an aligned buffer) with a `DirectWriter` from `at`, into a
    /// file of `at` bytes of 0xee; returns the file and whether each write went directly.
    fn write_parts(dir: &Path, at: u64, parts: &[&[u8]]) -> (Vec<u8>, Vec<bool>) {
        let path = dir.join("out.bin");
        std::fs::write(&path, vec![0xee; at as usize]).expect("prefix");
        let fd = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        let mut w = DirectWriter::new(fd.try_clone().expect("dup"), at);
        let mut direct = Vec::new();
        for p in parts {
            let mut buf = AlignedBuf::new(p.len());
            buf.as_mut_slice().copy_from_slice(p);
            direct.push(w.is_direct());
            w.write(buf.as_slice()).expect("write");
        }
        w.finish().expect("finish");
        #[cfg(target_os = "linux")]
        assert!(
            !rustix::fs::fcntl_getfl(&fd)
                .expect("flags")
                .contains(rustix::fs::OFlags::DIRECT),
            "the shared descriptor is no longer direct"
        );
        (std::fs::read(&path).expect("read"), direct)
    }

    /// test-plan.md 128: whole aligned blocks, then a tail off the alignment, from an aligned
    /// offset and from an unaligned one, on disk and in memory: the file holds exactly the
    /// bytes written after what was there; on a file system kept in memory nothing is written
    /// directly, and after an unaligned write nothing more is.
    #[test]
    fn a_direct_writer_writes_every_byte_where_it_belongs() {
        let data: Vec<u8> = (0..3 * BLOCK + 1234).map(|i| (i % 253) as u8).collect();
        let (a, b, tail) = (&data[..BLOCK], &data[BLOCK..3 * BLOCK], &data[3 * BLOCK..]);
        let mut dirs = vec![tempfile::tempdir().expect("tmp")];
        dirs.extend(tempfile::tempdir_in("/dev/shm"));
        for dir in &dirs {
            for at in [0u64, 65_536, 100] {
                let (got, direct) = write_parts(dir.path(), at, &[a, b, tail]);
                assert_eq!(got.len() as u64, at + data.len() as u64);
                assert!(got[..at as usize].iter().all(|&x| x == 0xee));
                assert_eq!(&got[at as usize..], &data[..], "from {at}");
                if at == 100 || dir.path().starts_with("/dev/shm") {
                    assert_eq!(direct, [false; 3], "from {at} in {:?}", dir.path());
                }
                // Once off the alignment, never direct again.
                assert!(direct.windows(2).all(|w| w[0] || !w[1]), "{direct:?}");
            }
        }
    }

    /// test-plan.md 121: a source on tmpfs is read through the page cache.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_source_kept_in_memory_is_not_read_directly() {
        // tmpfs takes O_DIRECT (Linux 6.6 and later) but has no device behind it.
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let path = dir.path().join("big.bin");
        std::fs::write(&path, vec![7u8; 2 * BLOCK]).expect("write");
        let fd = File::open(&path).expect("open");
        assert!(in_memory(&fd), "/dev/shm is tmpfs");
        assert!(
            DirectSource::open(&path, 2 * BLOCK as u64)
                .expect("open")
                .is_none()
        );
    }

    /// test-plan.md 121: every chunk of a file read through a direct source equals the file's
    /// bytes, in any order (a resume or a rewind reads an earlier block again), and a block read
    /// after the file is cut shorter returns fewer bytes.
    #[test]
    fn chunks_read_directly_are_the_files_bytes() {
        const CHUNK: usize = 64 * 1024;
        let Some(dir) = direct_dir() else {
            return;
        };
        let path = dir.path().join("big.bin");
        let size = (AHEAD + 3) * BLOCK + 5 * CHUNK + 1234;
        let data: Vec<u8> = (0..size as u32).map(|i| (i * 31 + i / 7) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let Some(mut d) = DirectSource::open(&path, size as u64).expect("open") else {
            // This file system has no direct I/O: the page cache path is the one tested.
            return;
        };
        let chunks = size.div_ceil(CHUNK);
        // In order, then back, to the end, to a block read ahead but not the next one (block 2
        // while 1, 2 and 3 are asked), and a block back.
        let per_block = BLOCK / CHUNK;
        let order: Vec<usize> = (0..chunks)
            .chain([3, 0, chunks - 1, 17, 2 * per_block + 1, 16])
            .collect();
        let mut dst = vec![0u8; CHUNK];
        for c in order {
            let off = c * CHUNK;
            let len = (size - off).min(CHUNK);
            let n = d.read(off as u64, &mut dst[..len]).got();
            assert_eq!(n, len, "chunk {c}");
            assert_eq!(&dst[..len], &data[off..off + len], "chunk {c}");
        }
        // Back to block 0 (blocks 1 to AHEAD are read ahead), then cut the file half-way
        // through the block after them: that block, read now, is shorter. (A block read ahead
        // before a change may hold the bytes from before it, as a chunk read then would: the
        // fingerprint checked after the last chunk finds it.)
        let n = d.read(0, &mut dst).got();
        assert_eq!(&dst[..n], &data[..CHUNK]);
        let b = AHEAD + 1;
        let cut = b * BLOCK + BLOCK / 2;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(cut as u64).expect("truncate");
        let off = b * BLOCK + 12 * CHUNK;
        let n = d.read(off as u64, &mut dst).got();
        assert_eq!(n, 0, "nothing past the cut");
        let off = b * BLOCK + 7 * CHUNK;
        let n = d.read(off as u64, &mut dst).got();
        assert_eq!(n, cut - off);
        assert_eq!(&dst[..n], &data[off..cut]);
    }

    #[test]
    fn ranges_shared_from_the_blocks_are_the_files_bytes() {
        // `protocol.md` §6.3: a relay hands ranges to quinn in the blocks themselves. Ranges of
        // 1 MiB off the blocks (two parts each), kept alive past the block's turn (as quinn keeps
        // them until acknowledged), mixed with copies out of a block already shared, a rewind,
        // and the file's short end.
        let Some(dir) = direct_dir() else {
            return;
        };
        let (path, data) = pack_file(&dir, (AHEAD + 4) * BLOCK + 4321);
        let size = data.len();
        let Some(mut d) = DirectSource::open(&path, size as u64).expect("open") else {
            return;
        };
        let mut kept = Vec::new();
        let mut off = 777;
        while off < size {
            let end = (off + BLOCK).min(size);
            let mut at = off;
            while at < end {
                let b = d
                    .read_shared(at as u64, end - at)
                    .expect("read")
                    .expect("a buffer");
                assert!(!b.is_empty(), "at {at}");
                assert_eq!(&b[..], &data[at..at + b.len()], "at {at}");
                at += b.len();
                kept.push((at - b.len(), b));
            }
            // A copy out of the block just shared reads its bytes, not the fresh buffer's.
            let mut dst = [0u8; 100];
            let back = end - 100;
            assert_eq!(d.read(back as u64, &mut dst).got(), 100);
            assert_eq!(&dst[..], &data[back..end]);
            off = end;
        }
        // A rewind to the start, shared again.
        let b = d.read_shared(0, 5000).expect("read").expect("a buffer");
        assert_eq!(&b[..], &data[..5000]);
        drop(d);
        // Every range shared still holds its bytes after the source went on and went away.
        for (at, b) in &kept {
            assert_eq!(&b[..], &data[*at..*at + b.len()], "kept at {at}");
        }
        drop(kept);
        let spare = SPARE_BLOCKS.lock().unwrap_or_else(|p| p.into_inner()).len();
        assert!(
            (1..=SPARE_BLOCKS_MAX).contains(&spare),
            "{spare} spare blocks after the ranges were dropped"
        );
    }

    /// A pack of `size` bytes in `dir`, not periodic in the block size, and its bytes.
    fn pack_file(dir: &tempfile::TempDir, size: usize) -> (std::path::PathBuf, Vec<u8>) {
        let path = dir.path().join("pack");
        let data: Vec<u8> = (0..size as u32).map(|i| (i * 13 + i / 5) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        (path, data)
    }

    /// A temporary directory on a file system with direct reads: the system's temporary
    /// directory, else `/var/tmp`, else this crate's directory (where `/tmp` is tmpfs). `None`
    /// (and a note) only where none of them has them.
    fn direct_dir() -> Option<tempfile::TempDir> {
        let places = [
            std::env::temp_dir(),
            "/var/tmp".into(),
            env!("CARGO_MANIFEST_DIR").into(),
        ];
        for place in places {
            let Ok(dir) = tempfile::tempdir_in(&place) else {
                continue;
            };
            let probe = dir.path().join("probe");
            if std::fs::write(&probe, vec![0u8; BLOCK]).is_ok()
                && DirectSource::open(&probe, BLOCK as u64).is_ok_and(|d| d.is_some())
            {
                return Some(dir);
            }
        }
        eprintln!("no file system here reads directly: the direct read path is not tested");
        None
    }

    /// `protocol.md` §6.3: a relay's worker waits for a range's blocks without blocking, then
    /// reads them without waiting for the device (no blocking wait for the reader thread);
    /// ranges of 1 MiB at offsets off the blocks (each over two blocks, the first ones asked
    /// together), in order, back, a jump ahead, a rewind of less than a block (into the block
    /// before the one held) and the end. A wait that never ends (two blocks asking each other
    /// away) fails the timeout.
    #[tokio::test]
    async fn a_range_is_waited_for_then_read_without_waiting() {
        let Some(dir) = direct_dir() else {
            return;
        };
        let (path, data) = pack_file(&dir, (AHEAD + 5) * BLOCK + 777);
        let size = data.len();
        let mut d = DirectSource::open(&path, size as u64)
            .expect("open")
            .expect("direct reads");
        let range = BLOCK;
        let starts: Vec<usize> = (0..)
            .map(|k| 1000 + k * range)
            .take_while(|&o| o < size)
            .chain([
                5000,
                3 * BLOCK + 1,
                size - 10,
                5 * BLOCK + 10,
                5 * BLOCK + 20,
                4 * BLOCK + 20,
                0,
            ])
            .collect();
        let mut dst = vec![0u8; range];
        for off in starts {
            let len = (size - off).min(range);
            let waited =
                tokio::time::timeout(std::time::Duration::from_secs(10), d.ready(off as u64, len))
                    .await;
            assert!(waited.is_ok(), "the range at {off} never became ready");
            let before = d.waited;
            let mut got = 0;
            while got < len {
                match d.read((off + got) as u64, &mut dst[got..len]) {
                    DirectRead::Got(0) => break,
                    DirectRead::Got(k) => got += k,
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(d.waited, before, "the range at {off} waited for the reader");
            assert_eq!(got, len, "range at {off}");
            assert_eq!(&dst[..len], &data[off..off + len], "range at {off}");
        }
    }
}
