//! `rogatory inbox` and `rogatory fetch`: list what awaits this agency; download (ranged,
//! resumable), verify the seal and the custody receipt, decrypt, check every digest against the
//! sender's seal, publish each file safely inside the output directory, and upload the signed
//! delivery receipt.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rogatory_custody::{
    AgencyId, FileEntry, Head, Manifest, ReceiptBundle, Sha256Digest, Statement, Timestamp,
    TransferId, note_text_digest, open_sealed_manifest,
};
use rogatory_transport::frame::{
    Deliver, Fetch, Frame, InboxEntry, InboxRequest, Object, ReceiptKind,
};
use rogatory_transport::net::{Node, Session};
use rogatory_transport::{ErrorClass, ErrorCode};
use sha2::{Digest, Sha256};

use crate::args::{FetchArgs, InboxArgs};
use crate::error::{CliError, Exit, Result, io, net};
use crate::events::Events;
use crate::home::{Home, write_file};
use crate::opener::{Buffers, Layout, OpenError, Opener};

fn refused(what: &str, code: ErrorCode, message: &str) -> CliError {
    let exit = match code.class() {
        ErrorClass::Retryable => Exit::Transport,
        ErrorClass::Integrity => Exit::Integrity,
        _ => Exit::Refused,
    };
    CliError::new(exit, format!("{what}: {code}: {message}"))
}

async fn connect(home: &Home, relay: &str) -> Result<(Node, Session)> {
    rogatory_client::connect(home, relay).await
}

async fn inbox_entries(s: &Session) -> Result<Vec<InboxEntry>> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let (mut w, mut r) = s.open().await.map_err(|e| net("inbox", e))?;
        w.send(&Frame::InboxRequest(InboxRequest { after }))
            .await
            .map_err(|e| net("inbox", e))?;
        w.finish();
        match r.expect().await.map_err(|e| net("inbox", e))? {
            Frame::Inbox(i) => {
                after = i.entries.last().map(|e| e.transfer);
                all.extend(i.entries);
                if !i.more || after.is_none() {
                    return Ok(all);
                }
            }
            Frame::Error(e) => return Err(refused("inbox", e.code, &e.message)),
            other => {
                return Err(CliError::new(
                    Exit::Refused,
                    format!("inbox: unexpected {} frame", other.ty().name()),
                ));
            }
        }
    }
}

pub(crate) fn inbox(home: &Home, a: &InboxArgs, events: &Events) -> Result<()> {
    let rt = crate::runtime()?;
    let entries = rt.block_on(async {
        let (_node, s) = connect(home, &a.relay).await?;
        let e = inbox_entries(&s).await;
        s.close(ErrorCode::NO_ERROR, "done");
        e
    })?;
    for e in &entries {
        if events.json {
            let v = serde_json::json!({
                "type": "inbox", "transfer_id": e.transfer.to_string(), "sender": e.sender.as_str(), "files": e.files,
                "ciphertext_bytes": e.ciphertext_bytes, "received": e.received.to_string(),
                "state": rogatory_relay::relay::state_name(e.state),
            });
            println!("{v}");
        } else {
            println!(
                "{}\t{}\t{} files\t{} bytes\t{}\t{}",
                e.transfer,
                e.sender,
                e.files,
                e.ciphertext_bytes,
                e.received,
                rogatory_relay::relay::state_name(e.state)
            );
        }
    }
    if entries.is_empty() && !events.json && !events.quiet {
        eprintln!("rogatory: nothing awaits this agency");
    }
    Ok(())
}

/// Downloads an object, appending from `offset` to `out`; returns the object's total size.
async fn download(
    s: &Session,
    t: TransferId,
    object: Object,
    offset: u64,
    out: &mut (dyn Write + Send),
) -> Result<u64> {
    let what = format!("fetching {object:?} of {t}");
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
            return Err(CliError::new(
                Exit::Refused,
                format!("{what}: unexpected {} frame", other.ty().name()),
            ));
        }
    };
    let mut at = offset;
    while let Some(f) = r.next().await.map_err(|e| net(&what, e))? {
        match f {
            Frame::Range(rg) if rg.offset == at && at + rg.bytes.len() as u64 <= total => {
                out.write_all(rg.bytes)
                    .map_err(|e| CliError::new(Exit::Storage, what.clone()).source(e))?;
                at += rg.bytes.len() as u64;
            }
            Frame::Error(e) => return Err(refused(&what, e.code, &e.message)),
            _ => {
                return Err(CliError::new(
                    Exit::Refused,
                    format!("{what}: out-of-order or oversized data"),
                ));
            }
        }
    }
    if at != total {
        return Err(CliError::new(
            Exit::Transport,
            format!("{what}: the relay stopped at {at} of {total} bytes"),
        )
        .hint("retryable: run the same command again to resume"));
    }
    Ok(total)
}

async fn small_object(s: &Session, t: TransferId, object: Object) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    download(s, t, object, 0, &mut v).await?;
    Ok(v)
}

/// Creates `rel`'s parent directories inside `root`, refusing to follow a symbolic link or to
/// pass through anything that is not a directory (test-plan.md 7).
fn safe_parent(root: &Path, rel: &str) -> Result<PathBuf> {
    let mut dir = root.to_owned();
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        dir.push(c);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(CliError::new(
                    Exit::Safety,
                    format!(
                        "{} is a symbolic link; refusing to follow it",
                        dir.display()
                    ),
                ));
            }
            Ok(m) if !m.is_dir() => {
                return Err(CliError::new(
                    Exit::Safety,
                    format!("{} exists and is not a directory", dir.display()),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&dir).map_err(|e| io("creating", &dir, e))?
            }
            Err(e) => return Err(io("checking", &dir, e)),
        }
    }
    Ok(dir)
}

fn sha256_file(p: &Path, buf: &mut [u8]) -> Result<Sha256Digest> {
    let mut f = File::open(p).map_err(|e| io("reading", p, e))?;
    let mut h = Sha256::new();
    loop {
        let n = f.read(buf).map_err(|e| io("reading", p, e))?;
        if n == 0 {
            return Ok(Sha256Digest(h.finalize().into()));
        }
        h.update(&buf[..n]);
    }
}

pub(crate) fn fetch(home: &Home, a: &FetchArgs, events: &Events) -> Result<()> {
    if a.transfers.is_empty() && !a.all {
        return Err(CliError::new(
            Exit::Usage,
            "name the transfers to fetch, or pass --all",
        ));
    }
    let identity = home.identity()?;
    let age = Some(identity.age_identities())
        .filter(|ids| !ids.is_empty())
        .ok_or_else(|| {
            CliError::new(Exit::NoKey, "this home holds no age identity (relay-only)")
                .hint("fetch from the agency's analyst home")
        })?;
    let wanted: Vec<TransferId> = a
        .transfers
        .iter()
        .map(|t| {
            t.parse()
                .map_err(|_| CliError::new(Exit::Usage, format!("{t:?} is not a transfer id")))
        })
        .collect::<Result<_>>()?;
    let store = home.trust_store()?;
    fs::create_dir_all(&a.output).map_err(|e| io("creating", &a.output, e))?;
    let rt = crate::runtime()?;
    rt.block_on(async {
        let (_node, s) = connect(home, &a.relay).await?;
        let relay_card = store
            .get(&s.peer.agency)
            .ok_or_else(|| {
                CliError::new(
                    Exit::Refused,
                    format!("relay agency {} has no trusted card", s.peer.agency),
                )
            })?
            .clone();
        let list = if a.all {
            inbox_entries(&s)
                .await?
                .into_iter()
                .map(|e| e.transfer)
                .collect()
        } else {
            wanted
        };
        for t in list {
            fetch_one(home, a, events, &s, &store, &relay_card, &identity, &age, t).await?;
        }
        s.close(ErrorCode::NO_ERROR, "done");
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
async fn fetch_one(
    home: &Home,
    a: &FetchArgs,
    events: &Events,
    s: &Session,
    store: &rogatory_custody::TrustStore,
    relay_card: &rogatory_custody::AgencyCard,
    identity: &rogatory_custody::AgencyIdentity,
    age: &[rogatory_envelope::AnyIdentity],
    t: TransferId,
) -> Result<()> {
    // 1. The seal, by the sender's trusted key, and the relay's custody receipt for it.
    let seal = small_object(s, t, Object::Seal).await?;
    let manifest_json = small_object(s, t, Object::Manifest).await?;
    let claimed = Manifest::parse(&manifest_json)
        .map_err(|e| CliError::new(Exit::Integrity, format!("{t}: bad manifest")).source(e))?;
    let sender: &AgencyId = &claimed.sender;
    let card = store.get(sender).ok_or_else(|| {
        CliError::new(
            Exit::Integrity,
            format!("{t}: sender {sender} is not trusted; its seal cannot be verified"),
        )
    })?;
    let sealed = open_sealed_manifest(&manifest_json, &seal, &card.verifier_key).map_err(|e| {
        CliError::new(
            Exit::Integrity,
            format!("{t}: the sender's seal does not verify"),
        )
        .source(e)
    })?;
    let m = &sealed.manifest;
    if !m.recipients.contains(identity.id()) {
        return Err(CliError::new(
            Exit::Refused,
            format!("{t}: this agency is not a recipient"),
        ));
    }
    let custody = String::from_utf8(small_object(s, t, Object::CustodyReceipt).await?)
        .map_err(|_| CliError::new(Exit::Integrity, "custody receipt is not UTF-8"))?;
    let bundle = ReceiptBundle::parse(&custody)
        .map_err(|e| CliError::new(Exit::Integrity, "custody receipt malformed").source(e))?;
    let logged = bundle.verify(&relay_card.verifier_key).map_err(|e| {
        CliError::new(
            Exit::Integrity,
            format!("{t}: the custody receipt does not verify"),
        )
        .source(e)
    })?;
    match &logged.statement {
        Statement::CustodyReceipt {
            head,
            manifest_sha256,
            seal_sha256,
            ..
        } if head.transfer == t
            && *manifest_sha256 == Sha256Digest::of(&manifest_json)
            && *seal_sha256 == note_text_digest(&seal) => {}
        _ => {
            return Err(CliError::new(
                Exit::Integrity,
                format!("{t}: the custody receipt is for something else"),
            ));
        }
    }

    // 2. Nothing may be overwritten unless --force: check every destination first. A file an
    //    interrupted earlier fetch of this transfer into this directory already published (the
    //    state file says one was under way) is kept if it still matches the seal (checked below).
    let state = a.output.join(STATE_DIR).join(t.to_string());
    let resuming = fs::symlink_metadata(&state).is_ok();
    let mut published_before = Vec::new();
    for (i, f) in m.files.iter().enumerate() {
        let dest = a.output.join(f.path.as_str());
        match fs::symlink_metadata(&dest) {
            Ok(md) if resuming && md.is_file() && md.len() == f.size => published_before.push(i),
            Ok(_) if !a.force => {
                return Err(
                    CliError::new(Exit::Safety, format!("{} exists", dest.display()))
                        .hint("use --force to overwrite, or another -o"),
                );
            }
            _ => {}
        }
    }

    // 3. Parent directories, created once each and never through a symbolic link (exit 8).
    let mut parents: Vec<PathBuf> = Vec::with_capacity(m.files.len());
    let mut made: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for f in &m.files {
        let rel = f.path.as_str();
        let dir_rel = rel.rsplit_once('/').map_or("", |(d, _)| d);
        let p = match made.get(dir_rel) {
            Some(&j) => parents[j].clone(),
            None => {
                made.insert(dir_rel, parents.len());
                safe_parent(&a.output, rel)?
            }
        };
        parents.push(p);
    }

    // 4. Temporary files a killed earlier run left beside this transfer's destinations go
    //    (test-plan.md 29): only our own `.rogatory-partial-*` names, only in those directories;
    //    the resumable partial plaintext of this transfer's large files stays.
    let partials = sweep_partials(t, &m.files, &parents);

    // 5. The per-transfer state: while it exists, a fetch of this transfer into this
    //    directory is under way. Durable before the first file is published.
    write_state(&a.output, &state, t)?;
    let total: u64 = m.files.iter().map(|f| f.ciphertext_size).sum();
    events.start(&t, m.files.len(), total);
    let plaintext_bytes: u64 = m.files.iter().map(|f| f.size).sum();
    let mut skipped = 0u64;
    let mut todo = Vec::with_capacity(m.files.len());
    let mut before = published_before.iter().peekable();
    let mut scratch = vec![0u8; 1 << 16];
    for (i, f) in m.files.iter().enumerate() {
        if before.next_if_eq(&&i).is_none() {
            todo.push(i);
            continue;
        }
        let dest = a.output.join(f.path.as_str());
        if sha256_file(&dest, &mut scratch)? == f.sha256 {
            skipped += f.ciphertext_size;
            events.file_done(f.path.as_str());
        } else if a.force {
            todo.push(i);
        } else {
            return Err(
                CliError::new(Exit::Safety, format!("{} exists", dest.display()))
                    .hint("use --force to overwrite, or another -o"),
            );
        }
    }
    drop(scratch);
    let ctx = Arc::new(Ctx {
        s: s.clone(),
        t,
        files: m.files.clone(),
        output: a.output.clone(),
        parents,
        force: a.force,
        age: age.to_vec(),
        partials,
        todo,
        next: AtomicUsize::new(0),
        bytes_done: AtomicU64::new(skipped),
        downloaded: AtomicU64::new(0),
        resumed: AtomicU64::new(skipped),
    });

    // 6. Every remaining file: download, authenticate, hash and write in one pass, WORKERS
    //    at a time (one request stream each), fsync and rename (module docs).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Result<()>)>();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS.min(ctx.todo.len()) {
        let (c, tx) = (ctx.clone(), tx.clone());
        workers.spawn(async move {
            let mut bufs = Buffers::new();
            loop {
                let n = c.next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = c.todo.get(n) else { break };
                let r = fetch_file(&c, i, &mut bufs).await;
                let failed = r.is_err();
                if tx.send((i, r)).is_err() || failed {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut remaining = ctx.todo.len();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let mut shown = u64::MAX;
    while remaining > 0 {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((i, Ok(()))) => {
                    remaining -= 1;
                    events.file_done(m.files[i].path.as_str());
                }
                Some((_, Err(e))) => return Err(e),
                None => return Err(CliError::new(Exit::Internal, "fetch workers stopped early")),
            },
            _ = tick.tick() => {
                let done = ctx.bytes_done.load(Ordering::Relaxed);
                if done != shown {
                    shown = done;
                    events.progress(done, total);
                }
            }
        }
    }
    drop(workers);
    if shown != total {
        events.progress(total, total);
    }
    // Directory entries are made durable once per directory, before the delivery receipt.
    let dirs: std::collections::BTreeSet<&PathBuf> = ctx.parents.iter().collect();
    for d in dirs {
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("syncing", d, e))?;
    }

    // 7. The signed delivery receipt, logged by the relay and kept here.
    let st = Statement::DeliveryReceipt {
        head: Head {
            transfer: t,
            issuer: identity.id().clone(),
            time: Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
        },
        sender: m.sender.clone(),
        manifest_sha256: Sha256Digest::of(&manifest_json),
        seal_sha256: note_text_digest(&seal),
        custody_receipt_sha256: note_text_digest(custody.as_bytes()),
        files: m.files.len() as u64,
        plaintext_bytes,
    };
    let note = st
        .sign(identity.signer())
        .map_err(|e| CliError::new(Exit::Internal, "signing the delivery receipt").source(e))?;
    let (mut w, mut r) = s.open().await.map_err(|e| net("delivery receipt", e))?;
    w.send(&Frame::Deliver(Deliver {
        transfer: t,
        receipt: note,
    }))
    .await
    .map_err(|e| net("delivery receipt", e))?;
    w.finish();
    let delivered = match r.expect().await.map_err(|e| net("delivery receipt", e))? {
        Frame::Receipt(rc) if rc.kind == ReceiptKind::Delivery && rc.transfer == t => rc.text,
        Frame::Error(e) => return Err(refused("delivery receipt", e.code, &e.message)),
        _ => {
            return Err(CliError::new(
                Exit::Refused,
                "delivery receipt: unexpected answer",
            ));
        }
    };
    let rpath = home.path(&format!("receipts/{t}.delivery-receipt"));
    write_file(&rpath, delivered.as_bytes(), 0o644, true)?;
    let cpath = home.path(&format!("receipts/{t}.custody-receipt"));
    write_file(&cpath, custody.as_bytes(), 0o644, true)?;
    events.receipt(&rpath);
    // Completed fetch state goes: nothing of it grows.
    let _ = fs::remove_file(&state);
    let _ = fs::remove_dir(a.output.join(STATE_DIR));
    if events.json {
        let v = serde_json::json!({"type": "summary", "transfer_id": t.to_string(), "files": m.files.len(),
            "bytes_total": total, "plaintext_bytes": plaintext_bytes,
            "bytes_downloaded": ctx.downloaded.load(Ordering::Relaxed),
            "bytes_resumed": ctx.resumed.load(Ordering::Relaxed),
            "output": a.output.display().to_string(),
            "receipt": rpath.display().to_string(), "failed": []});
        println!("{v}");
    } else if !events.quiet {
        println!(
            "fetched {t}: {} files from {} into {}",
            m.files.len(),
            m.sender,
            a.output.display()
        );
        println!("receipt {}", rpath.display());
    }
    Ok(())
}

/// Name prefix of every temporary file `fetch` creates beside a destination.
const PARTIAL: &str = ".rogatory-partial-";
/// The per-transfer state directory inside the output directory.
const STATE_DIR: &str = ".rogatory-fetch";
/// Files whose ciphertext is larger keep their partial plaintext for a resume; smaller ones are
/// fetched again whole (`docs/cli.md` "Receiving").
const RESUMABLE: u64 = 1 << 20;
/// Files fetched at once, one request stream each: the relay accepts 16 concurrent streams
/// (`Limits::max_concurrent_bidi_streams`), so small files never wait for a round trip each.
const WORKERS: usize = 16;
/// `progress` events and the bar are updated at most this often (`docs/cli.md` "JSON events").
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// What the fetch workers of one transfer share.
struct Ctx {
    s: Session,
    t: TransferId,
    files: Vec<FileEntry>,
    output: PathBuf,
    /// Each file's (checked, created) parent directory.
    parents: Vec<PathBuf>,
    force: bool,
    age: Vec<rogatory_envelope::AnyIdentity>,
    /// Resumable partial plaintext files found by the sweep, by file index.
    partials: HashMap<usize, Partial>,
    /// Indices of the files to fetch, in manifest order; `next` is the next one to take.
    todo: Vec<usize>,
    next: AtomicUsize,
    /// Ciphertext bytes accounted for: authenticated, resumed, or already published.
    bytes_done: AtomicU64,
    /// Ciphertext bytes received from the relay by this run.
    downloaded: AtomicU64,
    /// Ciphertext bytes not downloaded again: held by partial files or already published.
    resumed: AtomicU64,
}

/// A partial plaintext file an earlier run left: `.rogatory-partial-<transfer>-<file>-<id>`,
/// where `id` names the age header (file key and payload nonce) its chunks were opened with.
#[derive(Debug, Clone)]
struct Partial {
    path: PathBuf,
    id: [u8; 16],
}

fn hex16(id: &[u8; 16]) -> String {
    use std::fmt::Write as _;
    id.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn partial_name(t: TransferId, i: usize, id: &[u8; 16]) -> String {
    format!("{PARTIAL}{t}-{i}-{}", hex16(id))
}

/// `(transfer, file, header id)` of a resumable partial's name.
fn parse_partial_name(name: &str) -> Option<(String, usize, [u8; 16])> {
    let rest = name.strip_prefix(PARTIAL)?;
    let mut it = rest.split('-');
    let (t, i, h) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || h.len() != 32 {
        return None;
    }
    let i = i.parse().ok()?;
    let mut id = [0u8; 16];
    for (k, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(h.get(2 * k..2 * k + 2)?, 16).ok()?;
    }
    Some((t.to_owned(), i, id))
}

fn integrity(t: TransferId, f: &FileEntry, what: &str) -> CliError {
    CliError::new(Exit::Integrity, format!("{t}: {} {what}", f.path.as_str()))
}

fn open_error(t: TransferId, f: &FileEntry, p: &Path, e: OpenError) -> CliError {
    match e {
        OpenError::Integrity(m) => integrity(t, f, &m),
        OpenError::NoMatch => CliError::new(
            Exit::NoKey,
            format!(
                "{t}: {} is not encrypted to this agency's age identity",
                f.path.as_str()
            ),
        ),
        OpenError::Write(e) => io("writing", p, e),
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
            return Err(CliError::new(
                Exit::Refused,
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
                return Err(CliError::new(
                    Exit::Refused,
                    format!("{}: out-of-order or oversized data", what()),
                ));
            }
        }
    }
    if at != end {
        return Err(CliError::new(
            Exit::Transport,
            format!("{}: the relay stopped at {at} of {end} bytes", what()),
        )
        .hint("retryable: run the same command again to resume"));
    }
    Ok(())
}

/// A partial plaintext file being written. Dropped unpublished, it is removed unless it is
/// kept for a resume (large files, on any failure but an integrity one).
struct PartialFile {
    path: PathBuf,
    file: File,
    keep: bool,
    /// Registered for removal on SIGINT/SIGTERM (files that are not resumable).
    registered: bool,
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if self.registered {
            crate::cleanup::unregister_with(&self.path, || {
                let _ = fs::remove_file(&self.path);
            });
        } else {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates file `i`'s partial (mode 0600, `O_EXCL`: never through a symbolic link).
fn create_partial(c: &Ctx, i: usize, id: &[u8; 16], resumable: bool) -> Result<PartialFile> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = c.parents[i].join(partial_name(c.t, i, id));
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
    };
    let file = match open() {
        // Left by a run killed after the sweep: ours by its name, stale by definition.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&path);
            open()
        }
        r => r,
    }
    .map_err(|e| io("creating", &path, e))?;
    if !resumable {
        crate::cleanup::register(&path);
    }
    Ok(PartialFile {
        path,
        file,
        keep: false,
        registered: !resumable,
    })
}

/// Opens an earlier run's partial for a resume: a regular file, and still the one the sweep
/// saw (same device and inode after opening), so a symbolic link swapped in is never followed.
fn open_partial(p: &Path) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let seen = fs::symlink_metadata(p)?;
    if !seen.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let f = OpenOptions::new().read(true).write(true).open(p)?;
    let now = f.metadata()?;
    if (now.dev(), now.ino()) != (seen.dev(), seen.ino()) {
        return Err(io::Error::other("replaced while being opened"));
    }
    Ok(f)
}

/// Fetches file `i` in one pass (`docs/cli.md` "Receiving"): every RANGE goes through the
/// [`Opener`] (header MAC, then each chunk authenticated before its plaintext is written and
/// hashed) into a partial file beside the destination; at the end size and SHA-256 must be
/// the sealed ones; then fsync and rename, off the async threads.
async fn fetch_file(c: &Ctx, i: usize, bufs: &mut Buffers) -> Result<()> {
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
                let id = op
                    .open_head(&c.age)
                    .map_err(|e| open_error(t, f, &p.path, e))?;
                let held = if id == p.id {
                    open_partial(&p.path).ok()
                } else {
                    None
                };
                match held {
                    Some(file) => {
                        let mut pf = PartialFile {
                            path: p.path,
                            file,
                            keep: true,
                            registered: false,
                        };
                        let k = resume_partial(&mut pf, &layout, &mut op)?;
                        credited = layout.chunk_offset(k);
                        resumed_credit = credited;
                        c.resumed.fetch_add(credited, Ordering::Relaxed);
                        c.bytes_done.fetch_add(credited, Ordering::Relaxed);
                        out = Some(pf);
                        layout.chunk_offset(k)
                    }
                    None => {
                        let _ = fs::remove_file(&p.path);
                        let mut pf = create_partial(c, i, &id, resumable)?;
                        pf.keep = true;
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
                    let id = op
                        .open_head(&c.age)
                        .map_err(|e| open_error(t, f, &c.parents[i], e))?;
                    let mut pf = create_partial(c, i, &id, resumable)?;
                    pf.keep = resumable;
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
                .ok_or_else(|| CliError::new(Exit::Internal, "payload before the header"))?;
            let n = op
                .push_payload(b, &mut pf.file)
                .map_err(|e| open_error(t, f, &pf.path, e))?;
            credited += n;
            c.bytes_done.fetch_add(n, Ordering::Relaxed);
            Ok(())
        })
        .await;
        let checked = streamed.and_then(|()| {
            let pf = out
                .as_ref()
                .ok_or_else(|| integrity(t, f, "has no header"))?;
            op.finish(&f.sha256)
                .map_err(|e| open_error(t, f, &pf.path, e))
        });
        match checked {
            Ok(()) => {}
            Err(e) if e.kind == Exit::Integrity => {
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
        let dest = c.output.join(f.path.as_str());
        let force = c.force;
        return tokio::task::spawn_blocking(move || publish(&mut pf, &dest, force))
            .await
            .map_err(|e| CliError::new(Exit::Internal, "publishing task").source(e))?;
    }
}

/// Prepares a resume from an earlier run's partial plaintext: cuts a torn tail back to whole
/// chunks (never the last), rebuilds the SHA-256 state by reading them once, and positions the
/// file at their end. Returns the number of chunks kept.
fn resume_partial(pf: &mut PartialFile, layout: &Layout, op: &mut Opener<'_>) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let p = pf.path.clone();
    let len = pf.file.metadata().map_err(|e| io("reading", &p, e))?.len();
    let k = layout.kept_chunks(len);
    let keep = Layout::plain_offset(k);
    pf.file.set_len(keep).map_err(|e| io("truncating", &p, e))?;
    pf.file
        .seek(SeekFrom::Start(0))
        .map_err(|e| io("reading", &p, e))?;
    let mut h = Sha256::new();
    let buf = op.scratch();
    let mut left = keep;
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        let n = pf
            .file
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

/// fsyncs a verified partial once and renames it to its final name: never over an existing
/// file without `--force` (exit 8).
fn publish(pf: &mut PartialFile, dest: &Path, force: bool) -> Result<()> {
    pf.file.sync_all().map_err(|e| io("syncing", &pf.path, e))?;
    let rename = || {
        let tp = tempfile::TempPath::try_from_path(&pf.path)?;
        let r = if force {
            tp.persist(dest)
        } else {
            tp.persist_noclobber(dest)
        };
        // Our own guard decides what happens to the partial on failure.
        r.map_err(|e| {
            let _ = e.path.keep();
            e.error
        })
    };
    let r = if pf.registered {
        crate::cleanup::unregister_with(&pf.path, rename)
    } else {
        rename()
    };
    match r {
        Ok(()) => {
            pf.keep = true;
            pf.registered = false;
            Ok(())
        }
        Err(e) => {
            pf.keep = false;
            let exit = if e.kind() == io::ErrorKind::AlreadyExists {
                Exit::Safety
            } else {
                Exit::Storage
            };
            Err(CliError::new(exit, format!("cannot create {}", dest.display())).source(e))
        }
    }
}

/// Removes `.rogatory-partial-*` regular files from the directories the transfer's files go
/// to, except the resumable partials of this transfer's large files (one per file, in that
/// file's directory), which it returns. Never follows a symbolic link.
fn sweep_partials(
    t: TransferId,
    files: &[FileEntry],
    parents: &[PathBuf],
) -> HashMap<usize, Partial> {
    let tid = t.to_string();
    let mut kept: HashMap<usize, Partial> = HashMap::new();
    let dirs: std::collections::BTreeSet<&PathBuf> = parents.iter().collect();
    for d in dirs {
        if !fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let Ok(rd) = fs::read_dir(d) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(PARTIAL) || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let resumable = parse_partial_name(name).and_then(|(pt, i, id)| {
                let ok = pt == tid
                    && files.get(i).is_some_and(|f| f.ciphertext_size > RESUMABLE)
                    && parents.get(i) == Some(d)
                    && !kept.contains_key(&i);
                ok.then_some((i, id))
            });
            match resumable {
                Some((i, id)) => {
                    kept.insert(i, Partial { path: e.path(), id });
                }
                None => {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    kept
}

/// Creates the per-transfer state file (and its directory) and makes it durable, so that a
/// crash after the first file was published still lets a re-run recognise its own files.
fn write_state(output: &Path, state: &Path, t: TransferId) -> Result<()> {
    let dir = output.join(STATE_DIR);
    match fs::symlink_metadata(&dir) {
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
            return Err(CliError::new(
                Exit::Safety,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(_) => {}
        Err(_) => fs::create_dir(&dir).map_err(|e| io("creating", &dir, e))?,
    }
    // A work directory of an older version (ciphertext work files) goes.
    if fs::symlink_metadata(state).is_ok_and(|m| m.is_dir()) {
        fs::remove_dir_all(state).map_err(|e| io("removing", state, e))?;
    }
    if fs::symlink_metadata(state).is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    write_file(
        state,
        format!("fetch of {t} under way\n").as_bytes(),
        0o600,
        true,
    )?;
    for d in [&dir, &output.to_path_buf()] {
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("syncing", d, e))?;
    }
    Ok(())
}
