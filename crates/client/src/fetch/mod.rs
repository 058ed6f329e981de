//! Receiving evidence from a relay (`docs/cli.md` "Receiving", `protocol.md` §6.3): for each
//! transfer, verify the sender's seal and the relay's custody receipt, download every file
//! (ranged, resumable), open it in one pass (header MAC, every chunk authenticated before its
//! plaintext is written, the plaintext hashed on the way), check size and SHA-256 against the
//! seal, publish each file safely inside the output directory, and upload the signed delivery
//! receipt.
//!
//! The pipeline of one transfer (`docs/cli.md` "Receiving"): `WORKERS` request streams
//! download; small files are opened (the hybrid key unwrap is most of their cost) a few at a
//! time on the blocking threads, one per core; verified files wait closed in their 0600
//! partials for the batcher, which makes a batch durable together (`syncfs`), renames it into
//! place and reports it; the directories are fsynced once each; only then is the delivery
//! receipt sent.
//!
//! Files: `opener.rs` opens an age file as it arrives (no I/O); `download.rs` runs the requests
//! and opens each file; `disk.rs` creates directories and partial files; `batch.rs` makes
//! verified files durable in batches and renames them into place.

mod batch;
mod digest;
mod disk;
pub(crate) mod download;
mod opener;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rogatory_custody::{
    AgencyId, AgencyIdentity, Head, Inventory, Manifest, ReceiptBundle, Sha256Digest, Statement,
    Timestamp, TransferId, TrustStore, note_text_digest,
};
use rogatory_envelope::AnyIdentity;
use rogatory_transport::ErrorCode;
use rogatory_transport::frame::{Deliver, Frame, Object, ReceiptKind};
use rogatory_transport::net::Session;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result, io, net, refused};
use crate::events::Event;
use crate::home::{Home, write_file};
use crate::package;
use disk::{STATE_DIR, safe_parent, sha256_file, sweep_partials, write_state};
use download::{Ctx, small_object};
use opener::Buffers;

/// `progress` events are sent at most this often (`docs/cli.md` "JSON events").
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Files fetched at once, one request stream each: the relay accepts 16 concurrent streams
/// (`Limits::max_concurrent_bidi_streams`), so small files never wait for a round trip each.
const WORKERS: usize = 16;
/// Groups of small files opened or being written on the blocking threads at once: each holds
/// its ciphertext and plaintext in memory ([`SMALL_GROUP_BYTES`] of ciphertext, or one file of
/// at most 256 KiB, `download::IN_MEMORY`).
const IN_FLIGHT: usize = 16;

/// What to fetch, from where, into where.
#[derive(Clone, Debug, Default)]
pub struct FetchRequest {
    /// The relay, `HOST:PORT`.
    pub relay: String,
    /// Transfer ids to fetch, in this order.
    pub transfers: Vec<String>,
    /// Fetch everything in this agency's inbox that this agency has not delivered yet (instead
    /// of `transfers`).
    pub all: bool,
    /// Output directory (created if missing): each transfer goes into its own folder inside
    /// it (`package.rs`); files are created inside that folder only.
    pub output: PathBuf,
    /// Fetch a transfer fetched before into its earlier folder, overwriting its files; never
    /// a file of another transfer. Without it, a transfer fetched again goes into a new folder.
    pub force: bool,
}

/// One transfer fetched: every file verified and durable under its final name, the delivery
/// receipt logged by the relay and saved. Also sent as [`Event::Fetched`] as soon as it is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fetched {
    /// The transfer.
    pub transfer_id: TransferId,
    /// The sending agency (its seal verified).
    pub sender: AgencyId,
    /// Files.
    pub files: usize,
    /// Ciphertext bytes of the transfer.
    pub bytes_total: u64,
    /// Plaintext bytes of the transfer.
    pub plaintext_bytes: u64,
    /// Ciphertext bytes received from the relay by this run.
    pub bytes_downloaded: u64,
    /// Ciphertext bytes not downloaded again: held by partial files or already published.
    pub bytes_resumed: u64,
    /// The transfer's folder inside the output directory: its files and, in `.rogatory/`, its
    /// evidence package (`package.rs`).
    pub output: PathBuf,
    /// Where the delivery receipt (as the relay logged it) was saved.
    pub receipt: PathBuf,
}

/// Every transfer a [`fetch`] completed, in order.
#[derive(Clone, Debug, Default)]
pub struct FetchOutcome {
    /// The transfers.
    pub transfers: Vec<Fetched>,
}

/// Fetches transfers from a relay into `req.output` and returns once each is verified, durable
/// and receipted. `on` sees progress as it happens: [`Event::Connected`], then per transfer
/// [`Event::Start`], [`Event::Progress`], [`Event::FileDone`] and [`Event::Fetched`].
///
/// A failure stops the fetch: the transfers before it stay fetched, the one it hit is resumed
/// by the same call later (`docs/cli.md` "Receiving"). Temporary files that would not be
/// resumed are registered with [`crate::cleanup`] while they exist.
///
/// ```no_run
/// use rogatory_client::{Home, fetch::{FetchRequest, fetch}};
///
/// let home = Home::resolve(None)?;
/// let req = FetchRequest {
///     relay: "127.0.0.1:4433".into(),
///     all: true,
///     output: "received".into(),
///     ..Default::default()
/// };
/// let done = fetch(&home, &req, &|e| eprintln!("{e:?}"))?;
/// println!("{} transfers fetched", done.transfers.len());
/// # Ok::<(), rogatory_client::Error>(())
/// ```
pub fn fetch(
    home: &Home,
    req: &FetchRequest,
    on: &(dyn Fn(&Event) + Sync),
) -> Result<FetchOutcome> {
    if req.transfers.is_empty() && !req.all {
        return Err(Error::new(
            ErrorKind::Usage,
            "name the transfers to fetch, or pass --all",
        ));
    }
    let identity = home.identity()?;
    // Retired identities too (`custody.md` §8.5): a transfer sent before a key rotation.
    let age = Some(home.age_identities()?)
        .filter(|ids| !ids.is_empty())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NoKey,
                "this home holds no age identity (relay-only)",
            )
            .hint("fetch from the agency's analyst home")
        })?;
    let wanted: Vec<TransferId> = req
        .transfers
        .iter()
        .map(|t| {
            t.parse()
                .map_err(|_| Error::new(ErrorKind::Usage, format!("{t:?} is not a transfer id")))
        })
        .collect::<Result<_>>()?;
    let store = home.trust_store()?;
    fs::create_dir_all(&req.output).map_err(|e| io("creating", &req.output, e))?;
    let rt = crate::runtime()?;
    rt.block_on(async {
        let (node, s) = crate::connect_reporting(home, &req.relay, on).await?;
        on(&Event::Connected {
            relay_agency: s.peer.agency.to_string(),
            tls_key_exchange: s
                .key_exchange_group()
                .map(rogatory_transport::kx::group_name),
        });
        let relay_card = store
            .chain(&s.peer.agency)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Refused,
                    format!("relay agency {} has no trusted card", s.peer.agency),
                )
            })?
            .clone();
        // `--all`: what this agency has not delivered yet (`delivered` in an inbox entry is
        // this recipient's own state).
        // A damaged transfer (`relay.md` §10) cannot be fetched until its sender repairs it:
        // `--all` fetches the others first, then says which are waiting for a repair.
        let mut damaged = Vec::new();
        let list: Vec<TransferId> = if req.all {
            let mut list = Vec::new();
            for e in crate::inbox::entries(&s).await? {
                match e.state {
                    crate::inbox::TransferState::Delivered => {}
                    crate::inbox::TransferState::Damaged => damaged.push(e.transfer),
                    _ => list.push(e.transfer),
                }
            }
            list
        } else {
            wanted
        };
        if list.is_empty() && damaged.is_empty() {
            on(&Event::Info {
                message: "nothing to fetch: every transfer in the inbox is delivered".into(),
            });
        }
        let keys = Keys {
            home,
            store: &store,
            relay_card: &relay_card,
            identity: &identity,
            age: &age,
        };
        let mut out = FetchOutcome::default();
        for t in list {
            let done = fetch_one(&keys, req, on, &s, t).await?;
            on(&Event::Fetched(done.clone()));
            out.transfers.push(done);
        }
        node.close(ErrorCode::NO_ERROR).await;
        if !damaged.is_empty() {
            let ids: Vec<String> = damaged.iter().map(ToString::to_string).collect();
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "{} of the inbox's transfers are damaged at the relay and were not fetched: {}",
                    ids.len(),
                    ids.join(", ")
                ),
            )
            .hint("the sender repairs a damaged transfer by running the same send again; fetch it then"));
        }
        Ok(out)
    })
}

/// What every transfer of one fetch is checked and opened with.
struct Keys<'a> {
    home: &'a Home,
    store: &'a TrustStore,
    relay_card: &'a rogatory_custody::CardChain,
    identity: &'a AgencyIdentity,
    age: &'a [AnyIdentity],
}

async fn fetch_one(
    k: &Keys<'_>,
    req: &FetchRequest,
    on: &(dyn Fn(&Event) + Sync),
    s: &Session,
    t: TransferId,
) -> Result<Fetched> {
    // 1. The seal, by the sender's trusted key, and the relay's custody receipt for it.
    let seal = small_object(s, t, Object::Seal).await?;
    let manifest_json = small_object(s, t, Object::Manifest).await?;
    let claimed = Manifest::parse(&manifest_json)
        .map_err(|e| Error::new(ErrorKind::Integrity, format!("{t}: bad manifest")).source(e))?;
    let sender: &AgencyId = &claimed.sender;
    let card = k.store.chain(sender).ok_or_else(|| {
        Error::new(
            ErrorKind::Integrity,
            format!("{t}: sender {sender} is not trusted; its seal cannot be verified"),
        )
    })?;
    // Any key of the sender's card chain (`custody.md` §8.5).
    let (sealed, _) = card
        .open_sealed_manifest(&manifest_json, &seal)
        .map_err(|e| {
            Error::new(
                ErrorKind::Integrity,
                format!("{t}: the sender's seal does not verify"),
            )
            .source(e)
        })?;
    if !sealed.manifest.recipients.contains(k.identity.id()) {
        return Err(Error::new(
            ErrorKind::Refused,
            format!("{t}: this agency is not a recipient"),
        ));
    }
    let custody = String::from_utf8(small_object(s, t, Object::CustodyReceipt).await?)
        .map_err(|_| Error::new(ErrorKind::Integrity, "custody receipt is not UTF-8"))?;
    let bundle = ReceiptBundle::parse(&custody)
        .map_err(|e| Error::new(ErrorKind::Integrity, "custody receipt malformed").source(e))?;
    let (logged, _) = bundle
        .verify_chains(k.relay_card, k.relay_card)
        .map_err(|e| {
            Error::new(
                ErrorKind::Integrity,
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
            return Err(Error::new(
                ErrorKind::Integrity,
                format!("{t}: the custody receipt is for something else"),
            ));
        }
    }

    // The contents (`custody.md` §5.4): names, plaintext digests and all the legal metadata,
    // encrypted to the recipients and bound to the seal.
    let contents_age = small_object(s, t, Object::Contents).await?;
    let (inventory, contents_json) =
        crate::contents::open(t, &sealed.manifest, &contents_age, k.age)?;
    let m = &inventory;

    // 2. The transfer's own folder inside the output directory (`package.rs`): the one an
    //    interrupted fetch of it was using (its state file names it), else a new one, else with
    //    `force` the folder of an earlier fetch of the same transfer. Never another transfer's.
    //    Nothing in it may be overwritten unless `force`: check every destination first. A
    //    file an interrupted earlier fetch already published is kept if it still matches the
    //    seal (checked below).
    for f in &m.files {
        if f.path.components().next() == Some(package::PACKAGE_DIR) {
            return Err(Error::new(
                ErrorKind::Safety,
                format!(
                    "{t}: the manifest names a file inside the package folder {}",
                    package::PACKAGE_DIR
                ),
            ));
        }
    }
    let state = req.output.join(STATE_DIR).join(t.to_string());
    let (folder_name, resuming) = choose_folder(&req.output, &state, m, req.force)?;
    let output = &req.output.join(&folder_name);
    fs::create_dir_all(output).map_err(|e| io("creating", output, e))?;
    let mut pkg = package::Package {
        manifest: Some(manifest_json.clone()),
        contents: Some(contents_json),
        seal: seal.clone(),
        custody_receipt: custody.as_bytes().to_vec(),
        delivery_receipt: None,
    };
    let mut record = package::Record {
        transfer: t.to_string(),
        sender: m.sender.to_string(),
        recipient: k.identity.id().to_string(),
        manifest_sha256: Sha256Digest::of(&manifest_json).to_string(),
        retain_until: m.legal.retain_until.map(|d| d.to_string()),
        fetched_at: None,
        purged_at: None,
    };
    package::write(output, &pkg, &record)?;
    let mut published_before = Vec::new();
    for (i, f) in m.files.iter().enumerate() {
        let dest = output.join(f.path.as_str());
        match fs::symlink_metadata(&dest) {
            Ok(md) if resuming && md.is_file() && md.len() == f.size => published_before.push(i),
            Ok(_) if !req.force => {
                return Err(exists(&dest));
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
                safe_parent(output, rel)?
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
    write_state(&req.output, &state, &folder_name)?;
    let total: u64 = m.files.iter().map(|f| f.ciphertext_size).sum();
    on(&Event::Start {
        transfer_id: t,
        files: m.files.len(),
        bytes_total: total,
    });
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
        let dest = output.join(f.path.as_str());
        if sha256_file(&dest, &mut scratch)? == f.sha256 {
            skipped += f.ciphertext_size;
            on(&Event::FileDone {
                path: f.path.as_str().to_owned(),
            });
        } else if req.force {
            todo.push(i);
        } else {
            return Err(exists(&dest));
        }
    }
    drop(scratch);
    let ctx = Arc::new(Ctx {
        s: s.clone(),
        t,
        files: m.files.clone(),
        output: output.clone(),
        parents,
        force: req.force,
        age: k.age.to_vec(),
        partials,
        todo,
        next: AtomicUsize::new(0),
        bytes_done: AtomicU64::new(skipped),
        downloaded: AtomicU64::new(0),
        resumed: AtomicU64::new(skipped),
    });

    // 6. Every remaining file (module docs): WORKERS request streams download, each taking
    //    the next file as soon as its last one is downloaded. Small files are downloaded whole
    //    and opened, checked and written a few at a time on the blocking threads, as many at
    //    once as there are cores; a large one is opened as it arrives, resuming an earlier
    //    partial. Verified files go to the batcher, which makes them durable together and
    //    renames them into place.
    let durability = {
        let parents = ctx.parents.clone();
        tokio::task::spawn_blocking(move || batch::Durability::open(&parents))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, "opening directories").source(e))??
    };
    let (ready_tx, ready_rx) = tokio::sync::mpsc::channel::<batch::Ready>(batch::MAX_BATCH);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<Vec<usize>>>();
    let cpu = Arc::new(tokio::sync::Semaphore::new(
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    ));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS.min(ctx.todo.len()) {
        let (c, ready, done) = (ctx.clone(), ready_tx.clone(), done_tx.clone());
        let (cpu, in_flight) = (cpu.clone(), in_flight.clone());
        workers.spawn(async move {
            if let Err(e) = worker(&c, &ready, &done, &cpu, &in_flight).await {
                let _ = done.send(Err(e));
            }
        });
    }
    drop(ready_tx);
    let batcher = {
        let (c, done) = (ctx.clone(), done_tx.clone());
        tokio::task::spawn_blocking(move || {
            let dest = |i: usize| download::dest(&c, i);
            batch::run(&dest, c.force, &durability, ready_rx, &done)
        })
    };
    drop(done_tx);
    let mut remaining = ctx.todo.len();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let mut shown = u64::MAX;
    while remaining > 0 {
        tokio::select! {
            msg = done_rx.recv() => match msg {
                Some(Ok(published)) => {
                    for i in published {
                        remaining = remaining.saturating_sub(1);
                        on(&Event::FileDone { path: m.files[i].path.as_str().to_owned() });
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Err(Error::new(ErrorKind::Internal, "fetch workers stopped early")),
            },
            _ = tick.tick() => {
                let done = ctx.bytes_done.load(Ordering::Relaxed);
                if done != shown {
                    shown = done;
                    on(&Event::Progress { bytes_done: done, bytes_total: total });
                }
            }
        }
    }
    drop(workers);
    batcher
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "the batcher failed").source(e))?;
    if shown != total {
        on(&Event::Progress {
            bytes_done: total,
            bytes_total: total,
        });
    }
    // Directory entries are made durable once per directory, before the delivery receipt.
    {
        let dirs: BTreeSet<PathBuf> = ctx.parents.iter().cloned().collect();
        tokio::task::spawn_blocking(move || {
            let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
            batch::sync_dirs(&dirs)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "syncing directories").source(e))??;
    }

    // 7. The signed delivery receipt, logged by the relay and kept here.
    let st = Statement::DeliveryReceipt {
        head: Head {
            transfer: t,
            issuer: k.identity.id().clone(),
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
        .sign(k.identity.signer())
        .map_err(|e| Error::new(ErrorKind::Internal, "signing the delivery receipt").source(e))?;
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
            return Err(Error::new(
                ErrorKind::Refused,
                "delivery receipt: unexpected answer",
            ));
        }
    };
    // `custody.md` §7.2: both receipts proven consistent with what this home holds, online,
    // and their checkpoints kept, so that `verify` compares them offline later.
    crate::checkpoints::confirm_receipt(k.home, s, &custody).await?;
    crate::checkpoints::confirm_receipt(k.home, s, &delivered).await?;
    // Both receipts' checkpoints against those this home verified.
    let store = k.home.trust_store()?;
    crate::checkpoints::check_receipt(k.home, &store, &custody)?;
    crate::checkpoints::check_receipt(k.home, &store, &delivered)?;
    let rpath = k.home.path(&format!("receipts/{t}.delivery-receipt"));
    write_file(&rpath, delivered.as_bytes(), 0o644, true)?;
    let cpath = k.home.path(&format!("receipts/{t}.custody-receipt"));
    write_file(&cpath, custody.as_bytes(), 0o644, true)?;
    // The package is complete with this recipient's delivery receipt.
    pkg.delivery_receipt = Some(delivered.as_bytes().to_vec());
    record.fetched_at = Some(package::now().to_string());
    package::write(output, &pkg, &record)?;
    // Completed fetch state goes: nothing of it grows.
    let _ = fs::remove_file(&state);
    let _ = fs::remove_dir(req.output.join(STATE_DIR));
    Ok(Fetched {
        transfer_id: t,
        sender: m.sender.clone(),
        files: m.files.len(),
        bytes_total: total,
        plaintext_bytes,
        bytes_downloaded: ctx.downloaded.load(Ordering::Relaxed),
        bytes_resumed: ctx.resumed.load(Ordering::Relaxed),
        output: output.clone(),
        receipt: rpath,
    })
}

/// One request stream's loop: takes the next file until none is left (step 6 of [`fetch_one`]).
/// Small files are gathered into groups ([`SMALL_GROUP`]); a group is opened on a blocking thread
/// once a core is free (`cpu`) and written there, at most [`IN_FLIGHT`] groups at once
/// (`in_flight`), while the stream moves on to the next download. A large file is opened as it
/// arrives, after the group gathered before it is handed on.
async fn worker(
    c: &Arc<Ctx>,
    ready: &tokio::sync::mpsc::Sender<batch::Ready>,
    done: &tokio::sync::mpsc::UnboundedSender<Result<Vec<usize>>>,
    cpu: &Arc<tokio::sync::Semaphore>,
    in_flight: &Arc<tokio::sync::Semaphore>,
) -> Result<()> {
    let mut bufs = Buffers::new();
    // Small files downloaded and not yet handed to a blocking thread.
    let mut small: Vec<(usize, Vec<u8>)> = Vec::new();
    loop {
        let n = c.next.fetch_add(1, Ordering::Relaxed);
        let Some(&i) = c.todo.get(n) else {
            return open_small_files(c, std::mem::take(&mut small), ready, done, cpu, in_flight)
                .await;
        };
        let size = c.files[i].ciphertext_size;
        // The group so far goes first if this file does not join it: a large file (whose
        // download may take long), a full group, or one this file would take past
        // SMALL_GROUP_BYTES (a larger small file goes alone).
        let held: u64 = small.iter().map(|(_, ct)| ct.len() as u64).sum();
        if !small.is_empty()
            && (size > download::IN_MEMORY
                || small.len() == SMALL_GROUP
                || held + size > SMALL_GROUP_BYTES)
        {
            open_small_files(c, std::mem::take(&mut small), ready, done, cpu, in_flight).await?;
        }
        if size > download::IN_MEMORY {
            let r = download::fetch_streamed(c, i, &mut bufs).await?;
            ready.send(r).await.map_err(|_| batcher_stopped())?;
            continue;
        }
        small.push((i, download::download_small(c, i).await?));
    }
}

/// Small files opened on one blocking thread in turn at most: a hand-off to a blocking thread
/// per file cost more than opening a 4 KiB file (`docs/performance.md` "Small files opened a
/// few at a time").
const SMALL_GROUP: usize = 8;
/// Ciphertext a group holds at most, so that what the request streams hold stays small (a
/// file larger than this goes alone).
const SMALL_GROUP_BYTES: u64 = 64 << 10;

fn batcher_stopped() -> Error {
    Error::new(ErrorKind::Internal, "the batcher stopped")
}

/// Opens, checks and writes a group of small files downloaded whole on a blocking thread, one
/// after the other, and hands each to the batcher; a failure is reported on `done` (the group's
/// partial files already written are removed).
async fn open_small_files(
    c: &Arc<Ctx>,
    files: Vec<(usize, Vec<u8>)>,
    ready: &tokio::sync::mpsc::Sender<batch::Ready>,
    done: &tokio::sync::mpsc::UnboundedSender<Result<Vec<usize>>>,
    cpu: &Arc<tokio::sync::Semaphore>,
    in_flight: &Arc<tokio::sync::Semaphore>,
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let slot = in_flight
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| batcher_stopped())?;
    let core = cpu
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| batcher_stopped())?;
    let (c, ready, done) = (c.clone(), ready.clone(), done.clone());
    tokio::task::spawn_blocking(move || {
        let opened: Result<Vec<_>> = files
            .iter()
            .map(|(i, ct)| download::open_small(&c, *i, ct))
            .collect();
        drop(files);
        // The core is free for the next files while these are written.
        drop(core);
        let written = opened.and_then(|o| {
            o.into_iter()
                .map(|o| download::write_small(&c, o))
                .collect::<Result<Vec<_>>>()
        });
        drop(slot);
        match written {
            // A closed batcher has reported why (or the fetch stopped): the partials go.
            Ok(rs) => {
                for r in rs {
                    if ready.blocking_send(r).is_err() {
                        break;
                    }
                }
            }
            Err(e) => {
                let _ = done.send(Err(e));
            }
        }
    });
    Ok(())
}

/// The folder (a name inside `out`) a transfer is fetched into, and whether an interrupted
/// fetch of it is resumed there: the folder the state file names; else the first of `base`,
/// `base-2`, `base-3`, … that does not exist, or (with `force`) that holds an earlier fetch of
/// this same transfer. A folder of another transfer, or one without a package, is never used.
fn choose_folder(out: &Path, state: &Path, m: &Inventory, force: bool) -> Result<(String, bool)> {
    let t = m.transfer_id;
    let ours = |name: &str| {
        package::Record::read(&out.join(name)).is_ok_and(|r| r.transfer == t.to_string())
    };
    if let Ok(text) = fs::read_to_string(state) {
        let name = text.trim();
        let simple =
            !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
        if simple && ours(name) {
            return Ok((name.to_owned(), true));
        }
    }
    let base = package::folder_name(
        &m.sender,
        m.legal.case_reference.as_ref().map(|c| c.as_str()),
        &t,
    );
    for n in 1..10_000u32 {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        match fs::symlink_metadata(out.join(&name)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((name, false)),
            Err(e) => return Err(io("checking", &out.join(&name), e)),
            Ok(md) if force && md.is_dir() && ours(&name) => return Ok((name, false)),
            Ok(_) => {}
        }
    }
    Err(Error::new(
        ErrorKind::Safety,
        format!("{}: no free folder name for {t}", out.display()),
    ))
}

/// A destination that exists and may not be overwritten (exit 8).
fn exists(dest: &std::path::Path) -> Error {
    Error::new(ErrorKind::Safety, format!("{} exists", dest.display()))
        .hint("use --force to overwrite, or another -o")
}
