//! The requests of a fetch (`protocol.md` §6.3 FETCH → FETCH_HEAD, RANGE…) and the one-pass
//! fetch of each file (`docs/cli.md` "Receiving").

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rogatory_custody::{FileEntry, TransferId};
use rogatory_transport::frame::{Fetch, Frame, Object};
use rogatory_transport::net::Session;
use sha2::{Digest, Sha256};

use super::batch::Ready;
use super::disk::{Partial, PartialFile, RESUMABLE, create_partial, open_partial, partial_name};
use super::opener::{Buffers, Layout, OpenError, Opener};
use crate::error::{Error, ErrorKind, Result, io, net, refused};

/// What the fetch workers of one transfer share.
pub(super) struct Ctx {
    pub(super) s: Session,
    pub(super) t: TransferId,
    pub(super) files: Vec<FileEntry>,
    pub(super) output: PathBuf,
    /// Each file's (checked, created) parent directory.
    pub(super) parents: Vec<PathBuf>,
    pub(super) force: bool,
    pub(super) age: Vec<rogatory_envelope::AnyIdentity>,
    /// Resumable partial plaintext files found by the sweep, by file index.
    pub(super) partials: HashMap<usize, Partial>,
    /// Indices of the files to fetch, in manifest order; `next` is the next one to take.
    pub(super) todo: Vec<usize>,
    pub(super) next: AtomicUsize,
    /// Ciphertext bytes accounted for: authenticated, resumed, or already published.
    pub(super) bytes_done: AtomicU64,
    /// Ciphertext bytes received from the relay by this run.
    pub(super) downloaded: AtomicU64,
    /// Ciphertext bytes not downloaded again: held by partial files or already published.
    pub(super) resumed: AtomicU64,
}

/// Downloads an object, appending from `offset` to `out`; returns the object's total size.
async fn download(
    s: &Session,
    t: TransferId,
    object: Object,
    offset: u64,
    out: &mut (dyn Write + Send),
) -> Result<u64> {
    let what = format!("fetching {object} of transfer {t}");
    let (mut w, mut r) = s.open().await.map_err(|e| net(&what, e))?;
    w.send(&Frame::Fetch(Fetch {
        transfer: t,
        object,
        offset,
        len: 0,
    }))
    .await
    .map_err(|e| net(&what, e))?;
    w.finish();
    let total = match r.expect().await.map_err(|e| net(&what, e))? {
        Frame::FetchHead(h) => h.total,
        Frame::Error(e) => return Err(refused(&what, e.code, &e.message)),
        other => {
            return Err(Error::new(
                ErrorKind::Refused,
                format!("{what}: unexpected {} frame", other.ty().name()),
            ));
        }
    };
    let mut at = offset;
    while let Some(f) = r.next().await.map_err(|e| net(&what, e))? {
        match f {
            Frame::Range(rg) if rg.offset == at && at + rg.bytes.len() as u64 <= total => {
                out.write_all(rg.bytes)
                    .map_err(|e| Error::new(ErrorKind::Storage, what.clone()).source(e))?;
                at += rg.bytes.len() as u64;
            }
            Frame::Error(e) => return Err(refused(&what, e.code, &e.message)),
            _ => {
                return Err(Error::new(
                    ErrorKind::Refused,
                    format!("{what}: out-of-order or oversized data"),
                ));
            }
        }
    }
    if at != total {
        return Err(Error::new(
            ErrorKind::Transport,
            format!("{what}: the relay stopped at {at} of {total} bytes"),
        )
        .hint("retryable: run the same command again to resume"));
    }
    Ok(total)
}

/// A whole small object (seal, manifest, custody receipt) in memory.
pub(crate) async fn small_object(s: &Session, t: TransferId, object: Object) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    download(s, t, object, 0, &mut v).await?;
    Ok(v)
}

fn integrity(t: TransferId, f: &FileEntry, what: &str) -> Error {
    Error::new(
        ErrorKind::Integrity,
        format!("{t}: {} {what}", f.path.as_str()),
    )
}

/// Where file `i` is published. A failed write names it (what the user asked for; the partial
/// file beside it is removed, or kept for a resume), not the partial's generated name.
pub(super) fn dest(c: &Ctx, i: usize) -> std::path::PathBuf {
    c.output.join(c.files[i].path.as_str())
}

/// Opening file `i` failed.
fn open_error(c: &Ctx, i: usize, e: OpenError) -> Error {
    let (t, f) = (c.t, &c.files[i]);
    match e {
        OpenError::Integrity(m) => integrity(t, f, &m),
        OpenError::NoMatch => Error::new(
            ErrorKind::NoKey,
            format!(
                "{t}: {} is not encrypted to this agency's age identity",
                f.path.as_str()
            ),
        ),
        OpenError::Write(e) => io("writing", &dest(c, i), e),
        OpenError::Digest => Error::new(
            ErrorKind::Internal,
            format!(
                "{t}: {}: the thread computing its digest stopped",
                f.path.as_str()
            ),
        ),
    }
}

/// Sends one FETCH for `[offset, offset + len)` of file `i` (`len` 0: to the end,
/// `protocol.md` §6.3) and hands every RANGE to `sink` in order. The relay's copy must have the
/// sealed size; a stream that ends early is a retryable transport failure.
async fn request(
    c: &Ctx,
    i: usize,
    offset: u64,
    len: u64,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let f = &c.files[i];
    let what = || format!("fetching {} of {}", f.path.as_str(), c.t);
    let (mut w, mut r) = c.s.open().await.map_err(|e| net(&what(), e))?;
    w.send(&Frame::Fetch(Fetch {
        transfer: c.t,
        object: Object::File(i as u32),
        offset,
        len,
    }))
    .await
    .map_err(|e| net(&what(), e))?;
    w.finish();
    match r.expect().await.map_err(|e| net(&what(), e))? {
        Frame::FetchHead(h) if h.total == f.ciphertext_size => {}
        Frame::FetchHead(h) => {
            return Err(integrity(
                c.t,
                f,
                &format!(
                    "has {} bytes of ciphertext at the relay; the seal says {}",
                    h.total, f.ciphertext_size
                ),
            ));
        }
        Frame::Error(e) => return Err(refused(&what(), e.code, &e.message)),
        other => {
            return Err(Error::new(
                ErrorKind::Refused,
                format!("{}: unexpected {} frame", what(), other.ty().name()),
            ));
        }
    }
    let end = if len == 0 {
        f.ciphertext_size
    } else {
        offset.saturating_add(len).min(f.ciphertext_size)
    };
    let mut at = offset;
    while let Some(fr) = r.next().await.map_err(|e| net(&what(), e))? {
        match fr {
            Frame::Range(rg) if rg.offset == at && rg.bytes.len() as u64 <= end - at => {
                at += rg.bytes.len() as u64;
                c.downloaded
                    .fetch_add(rg.bytes.len() as u64, Ordering::Relaxed);
                sink(rg.bytes)?;
            }
            Frame::Error(e) => return Err(refused(&what(), e.code, &e.message)),
            _ => {
                return Err(Error::new(
                    ErrorKind::Refused,
                    format!("{}: out-of-order or oversized data", what()),
                ));
            }
        }
    }
    if at != end {
        return Err(Error::new(
            ErrorKind::Transport,
            format!("{}: the relay stopped at {at} of {end} bytes", what()),
        )
        .hint("retryable: run the same command again to resume"));
    }
    Ok(())
}

/// Creates file `i`'s partial beside its destination.
fn new_partial(c: &Ctx, i: usize, id: &[u8; 16], resumable: bool) -> Result<PartialFile> {
    create_partial(&c.parents[i], &partial_name(c.t, i, id), resumable)
}

/// Files with at most this much ciphertext are downloaded whole into memory and opened on the
/// blocking threads; larger ones are opened as they arrive.
pub(super) const IN_MEMORY: u64 = 256 << 10;

/// Downloads small file `i` (at most [`IN_MEMORY`] bytes of ciphertext) whole into memory.
pub(super) async fn download_small(c: &Ctx, i: usize) -> Result<Vec<u8>> {
    let mut ct = Vec::with_capacity(c.files[i].ciphertext_size.min(IN_MEMORY) as usize);
    request(c, i, 0, 0, |b| {
        ct.extend_from_slice(b);
        Ok(())
    })
    .await?;
    Ok(ct)
}

/// A small file opened and verified in memory, not yet written.
#[derive(Debug)]
pub(super) struct Opened {
    i: usize,
    /// The header id (names the partial file).
    id: [u8; 16],
    plain: Vec<u8>,
    /// Ciphertext bytes authenticated.
    credit: u64,
}

/// Opens small file `i` from its whole ciphertext `ct` (the CPU-bound part of a small file, on
/// a blocking thread): header MAC and file key unwrap, every chunk, size and SHA-256 against
/// the seal.
pub(super) fn open_small(c: &Ctx, i: usize, ct: &[u8]) -> Result<Opened> {
    let f = &c.files[i];
    let t = c.t;
    let layout = Layout::new(f.size, f.ciphertext_size)
        .ok_or_else(|| integrity(t, f, "has sizes in the manifest that no age file has"))?;
    thread_local! {
        /// Each blocking thread's buffers, reused for every small file it opens.
        static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::new(Buffers::new());
    }
    BUFFERS.with_borrow_mut(|bufs| {
        let mut op = Opener::new(layout, bufs);
        let n = op.push_head(ct);
        let id = op.open_head(&c.age).map_err(|e| open_error(c, i, e))?;
        let mut plain = Vec::with_capacity(f.size.min(IN_MEMORY) as usize);
        let done = op
            .push_payload(&ct[n..], &mut plain)
            .map_err(|e| open_error(c, i, e))?;
        op.finish(&f.sha256).map_err(|e| open_error(c, i, e))?;
        Ok(Opened {
            i,
            id,
            plain,
            credit: layout.head + done,
        })
    })
}

/// Writes an opened small file to a new partial file beside its destination (0600, registered
/// for removal on interrupt) and closes it, ready for a batch.
pub(super) fn write_small(c: &Ctx, o: Opened) -> Result<Ready> {
    let mut pf = new_partial(c, o.i, &o.id, false)?;
    pf.file()
        .and_then(|w| w.write_all(&o.plain))
        .map_err(|e| io("writing", &dest(c, o.i), e))?;
    pf.close();
    c.bytes_done.fetch_add(o.credit, Ordering::Relaxed);
    Ok(Ready { i: o.i, pf })
}

/// Fetches file `i` (more than [`IN_MEMORY`] bytes of ciphertext) in one pass (`docs/cli.md`
/// "Receiving"): every RANGE goes through the [`Opener`] (header MAC, then each chunk
/// authenticated before its plaintext is written and hashed) into a partial file beside the
/// destination, resuming from an earlier run's partial if the file is resumable; at the end
/// size and SHA-256 must be the sealed ones, and the closed partial is ready for a batch.
pub(super) async fn fetch_streamed(c: &Ctx, i: usize, bufs: &mut Buffers) -> Result<Ready> {
    let f = &c.files[i];
    let t = c.t;
    let layout = Layout::new(f.size, f.ciphertext_size)
        .ok_or_else(|| integrity(t, f, "has sizes in the manifest that no age file has"))?;
    let resumable = f.ciphertext_size > RESUMABLE;
    let mut earlier = if resumable {
        c.partials.get(&i).cloned()
    } else {
        None
    };
    loop {
        let resume_from = earlier.take();
        let was_resume = resume_from.is_some();
        let mut op = Opener::new(layout, bufs);
        let mut out: Option<PartialFile> = None;
        // Ciphertext bytes this attempt counted as done, and as resumed (taken back if it
        // starts over).
        let mut credited = 0u64;
        let mut resumed_credit = 0u64;
        let from = match resume_from {
            Some(p) => {
                // The header piece again: the partial's plaintext is kept only if it was opened
                // with this very header (file key and nonce).
                request(c, i, 0, layout.head, |b| {
                    op.push_head(b);
                    Ok(())
                })
                .await?;
                let id = op.open_head(&c.age).map_err(|e| open_error(c, i, e))?;
                let held = if id == p.id {
                    open_partial(&p.path).ok()
                } else {
                    None
                };
                match held {
                    Some(file) => {
                        let mut pf = PartialFile::resumed(p.path, file);
                        // Reading and hashing a partial of many GiB takes seconds: the
                        // runtime's worker hands the connection to another thread meanwhile
                        // (the runtime is multi-threaded, `crate::runtime`).
                        let k = tokio::task::block_in_place(|| {
                            resume_partial(&mut pf, &layout, &mut op)
                        })?;
                        op.hash_on_thread(pf.fd());
                        credited = layout.chunk_offset(k);
                        resumed_credit = credited;
                        c.resumed.fetch_add(credited, Ordering::Relaxed);
                        c.bytes_done.fetch_add(credited, Ordering::Relaxed);
                        out = Some(pf);
                        layout.chunk_offset(k)
                    }
                    None => {
                        let _ = fs::remove_file(&p.path);
                        let mut pf = new_partial(c, i, &id, resumable)?;
                        pf.keep = true;
                        op.hash_on_thread(pf.fd());
                        out = Some(pf);
                        credited = layout.head;
                        c.bytes_done.fetch_add(layout.head, Ordering::Relaxed);
                        layout.head
                    }
                }
            }
            None => 0,
        };
        let streamed = request(c, i, from, 0, |mut b| {
            if op.wants_head() {
                let n = op.push_head(b);
                b = &b[n..];
                if !op.wants_head() {
                    let id = op.open_head(&c.age).map_err(|e| open_error(c, i, e))?;
                    let mut pf = new_partial(c, i, &id, resumable)?;
                    pf.keep = resumable;
                    op.hash_on_thread(pf.fd());
                    out = Some(pf);
                    credited += layout.head;
                    c.bytes_done.fetch_add(layout.head, Ordering::Relaxed);
                }
            }
            if b.is_empty() {
                return Ok(());
            }
            let pf = out
                .as_mut()
                .ok_or_else(|| Error::new(ErrorKind::Internal, "payload before the header"))?;
            let file = pf.file().map_err(|e| io("writing", &dest(c, i), e))?;
            let n = op.push_payload(b, file).map_err(|e| open_error(c, i, e))?;
            // What the thread writes goes straight to the device where it can: no writeback.
            if !op.writes_on_thread() {
                pf.wrote(n).map_err(|e| io("writing", &dest(c, i), e))?;
            }
            credited += n;
            c.bytes_done.fetch_add(n, Ordering::Relaxed);
            Ok(())
        })
        .await;
        let checked = streamed.and_then(|()| {
            if out.is_none() {
                return Err(integrity(t, f, "has no header"));
            }
            op.finish(&f.sha256).map_err(|e| open_error(c, i, e))
        });
        match checked {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::Integrity => {
                // Nothing of a file that failed to authenticate is kept...
                if let Some(pf) = out.as_mut() {
                    pf.keep = false;
                }
                drop(out);
                c.bytes_done.fetch_sub(credited, Ordering::Relaxed);
                if was_resume {
                    // ...and a resumed one is fetched once more from the start: the part
                    // held locally may be what was wrong (a crash of this machine).
                    c.resumed.fetch_sub(resumed_credit, Ordering::Relaxed);
                    continue;
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        let Some(mut pf) = out else {
            return Err(integrity(t, f, "has no header"));
        };
        pf.close();
        return Ok(Ready { i, pf });
    }
}

/// Prepares a resume from an earlier run's partial plaintext: cuts a torn tail back to whole
/// chunks (never the last), rebuilds the SHA-256 state by reading them once, and positions the
/// file at their end. Returns the number of chunks kept.
fn resume_partial(pf: &mut PartialFile, layout: &Layout, op: &mut Opener<'_>) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let p = pf.path.clone();
    let file = pf.file().map_err(|e| io("reading", &p, e))?;
    let len = file.metadata().map_err(|e| io("reading", &p, e))?.len();
    let k = layout.kept_chunks(len);
    let keep = Layout::plain_offset(k);
    file.set_len(keep).map_err(|e| io("truncating", &p, e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| io("reading", &p, e))?;
    let mut h = Sha256::new();
    let buf = op.scratch();
    let mut left = keep;
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        let n = file
            .read(&mut buf[..want])
            .map_err(|e| io("reading", &p, e))?;
        if n == 0 {
            return Err(io(
                "reading",
                &p,
                io::Error::from(io::ErrorKind::UnexpectedEof),
            ));
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    op.resume(k, h);
    Ok(k)
}
