//! Positional writes of a relay's pack gathered into aligned blocks and written with `O_DIRECT`
//! (`docs/relay.md` §3 "Writing the pack").
//!
//! A relay receives each file of a transfer as pieces in order (`protocol.md` §6.1), so the
//! writes into its pack are a few sequential runs, one per file being received, each starting
//! wherever the file's region of the pack starts. Through the page cache, every byte is copied
//! into a new cache page, tracked, then written back by the next fsync (a tenth to a fifth of a
//! relay's CPU in a 1 GiB `send` on disk, and on a virtual machine whose balloon driver reports
//! free memory to its host, each new page first faults in the host: `docs/performance.md`).
//! The relay never reads the ciphertext back through that cache either: a large file is served
//! with direct reads (§6.3).
//!
//! A [`StagedFile`] keeps a [`Run`] for each region being written: an aligned buffer that the
//! writes of the region fill, in order. A block of the file that lies wholly inside a run's
//! bytes is written directly once the buffer is full, or when [`StagedFile::flush`] is called;
//! the bytes of a run's first and last block, which it may share with its neighbours, go
//! through the page cache, so two runs never write the same block directly. Small writes that
//! continue no run (an age header, a file of a few KiB) and every write on a file system kept in
//! memory or one that refuses `O_DIRECT` go through the page cache at once, as before.
//!
//! Nothing staged is on the file until [`StagedFile::flush`]: the caller flushes before it
//! syncs, reads, measures, renames or lets go of the file. A run's bytes are never dropped
//! before they are written: a failed write keeps them for the next flush, which reports the
//! failure again until it succeeds, so a sync never covers bytes that are not in the file.

// Elsewhere there is no `O_DIRECT`: every write goes through the page cache.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::direct::{ALIGN, AlignedBuf, BLOCK};

/// Bytes one run holds; its whole blocks are written when it is full.
const RUN: usize = BLOCK;
/// A write that continues no run starts one only if it is at least this long (a payload
/// piece is 64 KiB and 16 bytes); shorter ones go through the page cache at once.
pub const STAGE_MIN: usize = 32 << 10;
/// Runs one file keeps (a relay receives a transfer on at most 8 data streams); for another, the
/// least recently written one is flushed and let go.
const RUNS_PER_FILE: usize = 8;
/// Run buffers alive in this process at most (24 MiB), those on their way to the file
/// included; past that, writes go through the page cache.
const RUNS_MAX: usize = 24;
/// Buffers kept for the next runs: a fresh one costs a page fault per page to fill.
const SPARE_MAX: usize = 8;

static RUNS_LIVE: AtomicUsize = AtomicUsize::new(0);
static SPARE: std::sync::Mutex<Vec<AlignedBuf>> = std::sync::Mutex::new(Vec::new());

/// A run's buffer, counted against [`RUNS_MAX`] while it lives.
#[derive(Debug)]
struct RunBuf(Option<AlignedBuf>);

impl RunBuf {
    fn take() -> Option<Self> {
        if RUNS_LIVE.fetch_add(1, Ordering::Relaxed) >= RUNS_MAX {
            RUNS_LIVE.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let spare = SPARE.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let buf = spare.unwrap_or_else(|| AlignedBuf::new(RUN));
        if !buf.is_aligned() {
            RUNS_LIVE.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(RunBuf(Some(buf)))
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_ref().map_or(&[], AlignedBuf::as_slice)
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.0.as_mut().map_or(&mut [], AlignedBuf::as_mut_slice)
    }
}

impl Drop for RunBuf {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            RUNS_LIVE.fetch_sub(1, Ordering::Relaxed);
            let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
            if spare.len() < SPARE_MAX {
                spare.push(b);
            }
        }
    }
}

fn align_down(x: u64) -> u64 {
    x - x % ALIGN as u64
}

fn align_up(x: u64) -> u64 {
    align_down(x + ALIGN as u64 - 1)
}

/// The bytes of one region being written in order: file offsets `[own, base + len)`, held in
/// `buf` from the aligned offset `base` (the bytes of `buf` before `own` are not the run's).
#[derive(Debug)]
struct Run {
    buf: RunBuf,
    base: u64,
    len: usize,
    own: u64,
    /// The run's part of its first block, `[own, align_up(own))`, is in the file.
    head_written: bool,
    /// The run's bytes before this offset are in the file (those it still holds included).
    clean: u64,
    /// When it was last written to, for letting the least recent go.
    used: u64,
}

impl Run {
    fn end(&self) -> u64 {
        self.base + self.len as u64
    }

    fn overlaps(&self, off: u64, end: u64) -> bool {
        off < self.end() && self.own < end
    }

    fn slice(&self, from: u64, to: u64) -> &[u8] {
        &self.buf.bytes()[(from - self.base) as usize..(to - self.base) as usize]
    }
}

/// Whole blocks of a run on their way to the file: `buf[from..to)`, at `base + from`.
#[derive(Debug)]
struct Job {
    buf: RunBuf,
    base: u64,
    from: usize,
    to: usize,
}

impl Job {
    fn range(&self) -> (u64, u64) {
        (self.base + self.from as u64, self.base + self.to as u64)
    }

    fn bytes(&self) -> &[u8] {
        &self.buf.bytes()[self.from..self.to]
    }
}

/// How a job went: `refused` if the file system refused the direct write (the job was then
/// written through the page cache).
#[derive(Debug)]
struct Done {
    job: Job,
    result: io::Result<()>,
    refused: bool,
}

/// The thread that writes a file's full blocks, so that the thread receiving the pieces never
/// waits for the device (`docs/performance.md` "The pack written directly").
#[derive(Debug)]
struct Writer {
    to: std::sync::mpsc::Sender<Job>,
    done: std::sync::mpsc::Receiver<Done>,
}

/// Jobs queued or being written per file at most; a run that fills while that many are out
/// waits for one (as a writer through the page cache waits when too much is dirty).
const IN_FLIGHT: usize = 4;

/// Writes `bytes` at `at` directly through `direct`, or what the file system refuses of them
/// through `fd`. Returns how that went and whether it refused.
fn write_both(direct: &File, fd: &File, at: u64, bytes: &[u8]) -> (io::Result<()>, bool) {
    let mut n = 0usize;
    while n < bytes.len() {
        match direct.write_at(&bytes[n..], at + n as u64) {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), false),
            Ok(k) if (n + k).is_multiple_of(ALIGN) => n += k,
            // A short write off the alignment: the rest through the page cache.
            Ok(k) => {
                n += k;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if crate::direct::is_unsupported(&e) => break,
            Err(e) => return (Err(e), false),
        }
    }
    if n == bytes.len() {
        return (Ok(()), false);
    }
    (fd.write_all_at(&bytes[n..], at + n as u64), true)
}

/// One file's staged writes: see the module's documentation.
#[derive(Debug)]
pub struct StagedFile {
    /// The file through the page cache (shared with the caller's other uses of it).
    fd: Arc<File>,
    /// The same file opened again with `O_DIRECT`, while direct writes work.
    direct: Option<Arc<File>>,
    runs: Vec<Run>,
    tick: u64,
    /// The writing thread, once there is something for it.
    writer: Option<Writer>,
    /// File ranges of the jobs out with the writer.
    in_flight: Vec<(u64, u64)>,
    /// Jobs whose write failed: written again (on the calling thread) by the next flush.
    failed: Vec<Job>,
    /// The writing thread ended with jobs in hand (a bug): their bytes cannot be written.
    lost: bool,
    /// The last write or flush.
    used_at: std::time::Instant,
    /// Let go for good ([`StagedFile::retire`]).
    retired: bool,
}

impl StagedFile {
    /// Stages writes of `fd` (the file at `path`, opened for writing) where the file system
    /// takes direct writes; elsewhere every write goes straight through `fd`.
    pub fn new(fd: Arc<File>, path: &Path) -> Self {
        let direct = open_direct(&fd, path).map(Arc::new);
        StagedFile {
            fd,
            direct,
            runs: Vec::new(),
            tick: 0,
            writer: None,
            in_flight: Vec::new(),
            failed: Vec::new(),
            lost: false,
            used_at: std::time::Instant::now(),
            retired: false,
        }
    }

    /// Whether blocks are written directly.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// How long since the last write or flush: a caller lets go of files no longer written
    /// ([`StagedFile::close`]), whose runs hold buffers and whose writing thread waits.
    pub fn idle_for(&self) -> std::time::Duration {
        self.used_at.elapsed()
    }

    /// Bytes staged or on their way, not yet known to be in the file.
    pub fn staged(&self) -> u64 {
        let runs: u64 = self
            .runs
            .iter()
            .map(|r| r.end().saturating_sub(r.own.max(r.base).max(r.clean)))
            .sum();
        let out: u64 = self.in_flight.iter().map(|(a, b)| b - a).sum();
        let failed: u64 = self.failed.iter().map(|j| (j.to - j.from) as u64).sum();
        runs + out + failed
    }

    /// Writes `data` at `off`, staged or at once. The bytes are in the file after the next
    /// [`StagedFile::flush`] at the latest; an error means `data` was not taken (what was staged
    /// before is kept).
    pub fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        if self.retired {
            return Err(io::Error::other(
                "this staging was let go; look the file's up again",
            ));
        }
        if data.is_empty() {
            return Ok(());
        }
        let end = off
            .checked_add(data.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflow"))?;
        self.tick += 1;
        self.used_at = std::time::Instant::now();
        self.collect(false);
        // Bytes written again (a rewind, a takeover): everything staged goes to the file
        // first, so that this later write is the one that stays.
        let cont = self.runs.iter().position(|r| r.end() == off);
        let overlaps = self
            .runs
            .iter()
            .enumerate()
            .any(|(i, r)| Some(i) != cont && r.overlaps(off, end))
            || self.in_flight.iter().any(|&(a, b)| off < b && a < end)
            || self.failed.iter().any(|j| {
                let (a, b) = j.range();
                off < b && a < end
            });
        if overlaps {
            self.close()?;
            return self.write_at(off, data);
        }
        if let Some(i) = cont {
            return self.append(i, data);
        }
        if self.direct.is_some()
            && data.len() >= STAGE_MIN
            && self.make_room()
            && let Some(buf) = RunBuf::take()
        {
            let base = align_down(off);
            self.runs.push(Run {
                buf,
                base,
                len: (off - base) as usize,
                own: off,
                head_written: false,
                clean: off,
                used: self.tick,
            });
            let last = self.runs.len() - 1;
            if let Err(e) = self.append(last, data) {
                self.runs.pop();
                return Err(e);
            }
            return Ok(());
        }
        self.fd.write_all_at(data, off)
    }

    /// Room for one more run: the least recently written one is flushed and let go if this file
    /// has all it may keep. `false` if that flush failed (the run stays).
    fn make_room(&mut self) -> bool {
        if self.runs.len() < RUNS_PER_FILE {
            return true;
        }
        let Some(lru) = (0..self.runs.len()).min_by_key(|&i| self.runs[i].used) else {
            return true;
        };
        if self.flush_run(lru).is_err() {
            return false;
        }
        self.runs.swap_remove(lru);
        true
    }

    /// Appends `data` to run `i`, handing its whole blocks on each time it fills. An error (a
    /// write of a run's first block through the page cache failing) may leave part of `data`
    /// staged: the caller counts none of it, and writing it again overlaps that part, which
    /// is then put in the file first ([`StagedFile::write_at`]).
    fn append(&mut self, i: usize, mut data: &[u8]) -> io::Result<()> {
        let tick = self.tick;
        while !data.is_empty() {
            let r = &mut self.runs[i];
            r.used = tick;
            let room = RUN - r.len;
            if room == 0 {
                self.write_blocks(i)?;
                continue;
            }
            let n = room.min(data.len());
            let at = r.len;
            r.buf.bytes_mut()[at..at + n].copy_from_slice(&data[..n]);
            r.len += n;
            data = &data[n..];
        }
        Ok(())
    }

    /// Writes run `i`'s part of its first block once the run covers it (through the page
    /// cache), and hands every whole block after it to the writing thread (or writes them
    /// directly here if there is none), keeping only its last, partial block.
    fn write_blocks(&mut self, i: usize) -> io::Result<()> {
        let r = &self.runs[i];
        let (end, own) = (r.end(), r.own);
        let first = align_up(own);
        let last = align_down(end);
        if own < first && !r.head_written && end >= first {
            self.fd.write_all_at(r.slice(own, first), own)?;
            self.runs[i].head_written = true;
        }
        if last <= first {
            return Ok(());
        }
        // A fresh buffer for the run's partial last block, the full one to the writer.
        if let Some(mut fresh) = self.writer_ready().then(RunBuf::take).flatten() {
            let r = &mut self.runs[i];
            let keep = (last - r.base) as usize;
            let tail = r.len - keep;
            fresh.bytes_mut()[..tail].copy_from_slice(&r.buf.bytes()[keep..r.len]);
            let full = std::mem::replace(&mut r.buf, fresh);
            let job = Job {
                base: r.base,
                from: (first - r.base) as usize,
                to: keep,
                buf: full,
            };
            r.len = tail;
            r.base = last;
            r.own = r.own.max(last);
            self.send(job);
            return Ok(());
        }
        // No thread or no buffer: through the page cache, as before, rather than waiting
        // here for the device.
        let r = &self.runs[i];
        self.fd.write_all_at(r.slice(first, last), first)?;
        let r = &mut self.runs[i];
        let keep = (last - r.base) as usize;
        r.buf.bytes_mut().copy_within(keep..r.len, 0);
        r.len -= keep;
        r.base = last;
        r.own = r.own.max(last);
        Ok(())
    }

    /// Whether a job can go to the writing thread now: it is started (or starts), and fewer
    /// than [`IN_FLIGHT`] jobs are out (waiting for one if needed).
    fn writer_ready(&mut self) -> bool {
        if self.writer.is_none() {
            let Some(direct) = self.direct.clone() else {
                return false;
            };
            let fd = Arc::clone(&self.fd);
            let (to, jobs) = std::sync::mpsc::channel::<Job>();
            let (done_tx, done) = std::sync::mpsc::channel::<Done>();
            let spawned = std::thread::Builder::new()
                .name("rogatory-pack".into())
                .spawn(move || {
                    for job in jobs {
                        let (at, _) = job.range();
                        let (result, refused) = write_both(&direct, &fd, at, job.bytes());
                        if done_tx
                            .send(Done {
                                job,
                                result,
                                refused,
                            })
                            .is_err()
                        {
                            break;
                        }
                    }
                });
            if spawned.is_err() {
                return false;
            }
            self.writer = Some(Writer { to, done });
        }
        while self.in_flight.len() >= IN_FLIGHT {
            if !self.collect(true) {
                return false;
            }
        }
        true
    }

    fn send(&mut self, job: Job) {
        let range = job.range();
        match &self.writer {
            Some(w) => match w.to.send(job) {
                Ok(()) => self.in_flight.push(range),
                // The thread is gone (a bug): the next flush writes this job here, but those
                // it had in hand are lost.
                Err(std::sync::mpsc::SendError(job)) => {
                    self.failed.push(job);
                    if self.in_flight.is_empty() {
                        self.writer = None;
                    } else {
                        self.writer_gone();
                    }
                }
            },
            None => self.failed.push(job),
        }
    }

    /// Takes the writing thread's answers: all that are there, or (`wait`) at least one.
    /// `false` if waiting found the thread gone.
    fn collect(&mut self, mut wait: bool) -> bool {
        loop {
            let Some(w) = &self.writer else {
                return !wait;
            };
            let d = if wait {
                match w.done.recv() {
                    Ok(d) => d,
                    Err(_) => {
                        self.writer_gone();
                        return false;
                    }
                }
            } else {
                match w.done.try_recv() {
                    Ok(d) => d,
                    Err(_) => return true,
                }
            };
            wait = false;
            let range = d.job.range();
            if let Some(k) = self.in_flight.iter().position(|&x| x == range) {
                self.in_flight.swap_remove(k);
            }
            if d.refused {
                self.direct = None;
            }
            if d.result.is_err() {
                self.failed.push(d.job);
            }
        }
    }

    /// The thread died with jobs out (a bug): their buffers went with it, so the bytes cannot
    /// be written again; every later flush fails.
    fn writer_gone(&mut self) {
        self.writer = None;
        self.lost = true;
    }

    /// Writes everything run `i` holds; the run stays, holding its last partial block for the
    /// writes that continue it.
    fn flush_run(&mut self, i: usize) -> io::Result<()> {
        self.write_blocks(i)?;
        let r = &self.runs[i];
        let from = r.own.max(align_down(r.end()));
        if from < r.end() {
            self.fd.write_all_at(r.slice(from, r.end()), from)?;
        }
        let r = &mut self.runs[i];
        r.clean = r.end();
        Ok(())
    }

    /// Puts every staged byte in the file (not durably: the caller syncs), waiting for the
    /// writing thread. On an error the bytes not written stay staged, and the next flush tries
    /// them again.
    pub fn flush(&mut self) -> io::Result<()> {
        self.used_at = std::time::Instant::now();
        for i in 0..self.runs.len() {
            self.flush_run(i)?;
        }
        while !self.in_flight.is_empty() {
            if !self.collect(true) {
                break;
            }
        }
        if self.lost {
            return Err(io::Error::other(
                "the thread writing the pack ended with writes in hand",
            ));
        }
        while let Some(job) = self.failed.pop() {
            let (at, _) = job.range();
            let result = match &self.direct {
                Some(d) => {
                    let (r, refused) = write_both(d, &self.fd, at, job.bytes());
                    if refused {
                        self.direct = None;
                    }
                    r
                }
                None => self.fd.write_all_at(job.bytes(), at),
            };
            if let Err(e) = result {
                self.failed.push(job);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Flushes, then lets go of every run (and its buffer). On an error nothing is let go.
    pub fn close(&mut self) -> io::Result<()> {
        self.flush()?;
        self.runs.clear();
        Ok(())
    }

    /// [`StagedFile::close`], then marks this staging as let go for good: a caller that held it
    /// meanwhile must not write through it ([`StagedFile::is_retired`]), since nothing would
    /// flush what it staged. On an error nothing changes.
    pub fn retire(&mut self) -> io::Result<()> {
        self.close()?;
        self.retired = true;
        Ok(())
    }

    /// Lets go of everything staged without writing it (the file is being removed), for
    /// good, as [`StagedFile::retire`] does.
    pub fn discard(&mut self) {
        self.runs.clear();
        self.failed.clear();
        self.retired = true;
    }

    /// Whether [`StagedFile::retire`] let this staging go: look the file's staging up again.
    pub fn is_retired(&self) -> bool {
        self.retired
    }
}

/// `path` opened again for direct writes, if its file system keeps data on a device and takes
/// them.
#[cfg(target_os = "linux")]
fn open_direct(fd: &File, path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if crate::direct::in_memory(fd) {
        return None;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_fd: &File, _path: &Path) -> Option<File> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A staged file in `dir` of `len` zero bytes, and its path.
    fn staged(dir: &Path, len: u64) -> (StagedFile, std::path::PathBuf) {
        let path = dir.join("pack");
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create the pack");
        fd.set_len(len).expect("size the pack");
        (StagedFile::new(Arc::new(fd), &path), path)
    }

    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
            .collect()
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The next `len` bytes of region `r`, continuing where it stopped.
        Next { r: usize, len: usize },
        /// Region `r` again from `back` bytes before where it stopped (a rewind).
        Rewind { r: usize, back: usize },
        /// Everything to the file.
        Flush,
        /// Everything to the file, and every run let go.
        Close,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..3usize, prop_oneof![Just(65_552usize), Just(40_000), 1..70_000usize])
                .prop_map(|(r, len)| Op::Next { r, len }),
            1 => (0..3usize, 1..300_000usize).prop_map(|(r, back)| Op::Rewind { r, back }),
            1 => Just(Op::Flush),
            1 => Just(Op::Close),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// test-plan.md 138: writes of three regions of one file, each in order from an
        /// unaligned start that shares its first block with the region before it, pieces
        /// of any length, rewinds that write bytes again (with other contents), flushes and
        /// closes in any order: after each flush the file holds exactly the bytes last
        /// written at every offset and zeros elsewhere, and nothing is left staged.
        #[test]
        fn staged_writes_leave_exactly_the_last_bytes_written(ops in prop::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().expect("tmp");
            let starts = [100u64, 1_000_003, 2_500_001];
            let size = 4_000_000u64;
            let (mut f, path) = staged(dir.path(), size);
            let mut model = vec![0u8; size as usize];
            let mut at = [0u64; 3];
            let limit = [starts[1] - starts[0], starts[2] - starts[1], size - starts[2]];
            let mut seed = 0u64;
            let check = |f: &mut StagedFile, model: &[u8]| {
                f.flush().expect("flush");
                assert_eq!(f.staged(), 0, "nothing left staged after a flush");
                let got = std::fs::read(&path).expect("read the pack");
                assert!(got == model, "the file differs from the bytes last written");
            };
            for op in ops {
                match op {
                    Op::Next { r, len } => {
                        let len = len.min((limit[r] - at[r]) as usize);
                        if len == 0 {
                            continue;
                        }
                        seed += 1;
                        let data = pattern(seed, len);
                        let off = starts[r] + at[r];
                        f.write_at(off, &data).expect("write");
                        model[off as usize..off as usize + len].copy_from_slice(&data);
                        at[r] += len as u64;
                    }
                    Op::Rewind { r, back } => at[r] = at[r].saturating_sub(back as u64),
                    Op::Flush => check(&mut f, &model),
                    Op::Close => {
                        f.close().expect("close");
                        check(&mut f, &model);
                    }
                }
            }
            check(&mut f, &model);
        }
    }

    /// test-plan.md 138: on a file system that keeps its data on a device, whole blocks of a
    /// large run go directly, and the file is exact after the flush.
    #[test]
    fn a_large_run_is_written_directly_where_the_file_system_allows() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut f, path) = staged(dir.path(), 0);
        let data = pattern(9, 5 * RUN + 12_345);
        for (k, piece) in data.chunks(65_552).enumerate() {
            f.write_at(777 + (k * 65_552) as u64, piece).expect("write");
        }
        f.flush().expect("flush");
        let got = std::fs::read(&path).expect("read");
        assert_eq!(got.len(), 777 + data.len());
        assert!(got[..777].iter().all(|&b| b == 0));
        assert!(got[777..] == data[..], "every byte where it belongs");
        if f.is_direct() {
            assert!(f.writer.is_some(), "full runs went to the writing thread");
        }
    }

    /// test-plan.md 138: a write the device refuses is not forgotten. With the direct handle
    /// unable to write (opened read-only), every flush fails and the bytes stay staged; once
    /// the handle works again, the next flush writes them and the file is exact.
    #[test]
    fn a_failed_direct_write_is_kept_until_a_flush_writes_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut f, path) = staged(dir.path(), 0);
        if !f.is_direct() {
            return; // A file system without direct writes: nothing goes that way.
        }
        let good = f.direct.take().expect("direct handle");
        f.direct = Some(Arc::new(File::open(&path).expect("read-only handle")));
        let data = pattern(3, 3 * RUN + 100);
        for (k, piece) in data.chunks(65_552).enumerate() {
            f.write_at((k * 65_552) as u64, piece)
                .expect("staged writes succeed");
        }
        assert!(f.flush().is_err(), "the refused bytes fail the flush");
        assert!(f.flush().is_err(), "and the next one");
        assert!(f.staged() > 0, "the bytes are still held");
        assert!(f.close().is_err(), "close keeps them too");
        f.direct = Some(good);
        f.flush().expect("the flush writes them now");
        assert_eq!(f.staged(), 0);
        assert!(std::fs::read(&path).expect("read") == data);
    }

    /// test-plan.md 138: bytes written again while an earlier write of them waits to be
    /// retried are not overwritten by that retry: the later write is refused until the earlier
    /// one is in the file, then taken, and the file holds the later bytes.
    #[test]
    fn a_write_over_bytes_waiting_for_a_retry_waits_for_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut f, path) = staged(dir.path(), 0);
        if !f.is_direct() {
            return;
        }
        let good = f.direct.take().expect("direct handle");
        f.direct = Some(Arc::new(File::open(&path).expect("read-only handle")));
        let mut data = pattern(5, 3 * RUN);
        for (k, piece) in data.chunks(65_552).enumerate() {
            f.write_at((k * 65_552) as u64, piece).expect("staged");
        }
        assert!(f.flush().is_err(), "the direct writes failed");
        let again = pattern(6, 1000);
        assert!(
            f.write_at(8192, &again).is_err(),
            "refused while the bytes it covers wait for a retry"
        );
        f.direct = Some(good);
        f.write_at(8192, &again)
            .expect("taken once they are written");
        data[8192..9192].copy_from_slice(&again);
        f.flush().expect("flush");
        assert!(
            std::fs::read(&path).expect("read") == data,
            "the later bytes stay"
        );
    }
}
