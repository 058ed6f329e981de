//! `rogatory inbox` and `rogatory fetch`: list what awaits this agency; download (ranged,
//! resumable), verify the seal and the custody receipt, decrypt, check every digest against the
//! sender's seal, publish each file safely inside the output directory, and upload the signed
//! delivery receipt.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use rogatory_custody::{
    AgencyId, Head, Manifest, ReceiptBundle, Sha256Digest, Statement, Timestamp, TransferId,
    note_text_digest, open_sealed_manifest,
};
use rogatory_envelope::Decryptor;
use rogatory_transport::frame::{
    Deliver, Fetch, Frame, InboxEntry, InboxRequest, Object, ReceiptKind,
};
use rogatory_transport::net::{Node, Session};
use rogatory_transport::{ErrorClass, ErrorCode, Limits};
use sha2::{Digest, Sha256};

use crate::args::{FetchArgs, InboxArgs};
use crate::error::{CliError, Exit, Result, io, net};
use crate::events::Events;
use crate::home::{Home, write_file};

fn refused(what: &str, code: ErrorCode, message: &str) -> CliError {
    let exit = match code.class() {
        ErrorClass::Retryable => Exit::Transport,
        ErrorClass::Integrity => Exit::Integrity,
        _ => Exit::Refused,
    };
    CliError::new(exit, format!("{what}: {code}: {message}"))
}

async fn connect(home: &Home, relay: &str) -> Result<(Node, Session)> {
    let store = home.trust_store()?;
    let peer_trust = home.peer_trust(&store)?;
    let tls = home.tls()?;
    let addr = rogatory_transport::net::resolve(relay)
        .await
        .map_err(|e| net(&format!("relay {relay}"), e))?;
    let node = Node::client(addr.is_ipv6(), tls, peer_trust, Limits::default())
        .map_err(|e| net("starting QUIC", e))?;
    let s = node
        .connect(addr, None)
        .await
        .map_err(|e| net(&format!("connecting to {relay}"), e))?;
    Ok((node, s))
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
/// pass through anything that is not a directory (TESTS.md 7).
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

    // 2. Nothing may be overwritten unless --force: check every destination first.
    for f in &m.files {
        let dest = a.output.join(f.path.as_str());
        if !a.force && fs::symlink_metadata(&dest).is_ok() {
            return Err(
                CliError::new(Exit::Safety, format!("{} exists", dest.display()))
                    .hint("use --force to overwrite, or another -o"),
            );
        }
    }

    // 3. Temporary files a killed earlier run left beside this transfer's destinations go first
    //    (TESTS.md 29): only our own `.rogatory-partial-*` names, only in those directories.
    sweep_partials(&a.output, m);

    // Download (resumable), check, decrypt, check, publish — file by file.
    let work = a.output.join(".rogatory-fetch").join(t.to_string());
    fs::create_dir_all(&work).map_err(|e| io("creating", &work, e))?;
    let total: u64 = m.files.iter().map(|f| f.ciphertext_size).sum();
    events.start(&t, m.files.len(), total);
    let mut done = 0u64;
    let mut plaintext_bytes = 0u64;
    let mut dirs: std::collections::BTreeSet<PathBuf> = std::collections::BTreeSet::new();
    // One buffer for every file: thousands of small files must not cost an allocation each.
    let mut buf = vec![0u8; 1 << 20];
    // Small files are downloaded into memory, up to PIPELINE requests ahead (no work file, no
    // round trip each); large ones into a resumable work file.
    const SMALL: u64 = 4 << 20;
    const PIPELINE: usize = 16;
    let mut ahead: std::collections::VecDeque<(usize, tokio::task::JoinHandle<Result<Vec<u8>>>)> =
        std::collections::VecDeque::new();
    let mut next_small = 0usize;
    for (i, f) in m.files.iter().enumerate() {
        let ciphertext = if f.ciphertext_size <= SMALL {
            while ahead.len() < PIPELINE && next_small < m.files.len() {
                let j = next_small;
                next_small += 1;
                if m.files[j].ciphertext_size > SMALL {
                    continue;
                }
                let s2 = s.clone();
                ahead.push_back((
                    j,
                    tokio::spawn(async move {
                        let mut v = Vec::new();
                        download(&s2, t, Object::File(j as u32), 0, &mut v)
                            .await
                            .map(|_| v)
                    }),
                ));
            }
            let (j, h) = ahead
                .pop_front()
                .ok_or_else(|| CliError::new(Exit::Internal, "fetch pipeline empty"))?;
            debug_assert_eq!(i, j);
            let bytes = h
                .await
                .map_err(|e| CliError::new(Exit::Internal, "fetch task").source(e))??;
            if Sha256Digest::of(&bytes) != f.ciphertext_sha256 {
                return Err(CliError::new(
                    Exit::Integrity,
                    format!(
                        "{t}: ciphertext of {} does not match the seal",
                        f.path.as_str()
                    ),
                ));
            }
            Ciphertext::Memory(bytes)
        } else {
            let part = work.join(format!("{i}.age"));
            let have = fs::metadata(&part)
                .map(|m| m.len())
                .unwrap_or(0)
                .min(f.ciphertext_size);
            {
                let mut out = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&part)
                    .map_err(|e| io("opening", &part, e))?;
                out.set_len(have).map_err(|e| io("truncating", &part, e))?;
                if have < f.ciphertext_size {
                    download(s, t, Object::File(i as u32), have, &mut out).await?;
                }
                // No fsync: this is a resumable cache whose digest is checked right below; a
                // copy lost in a crash is downloaded again.
            }
            if sha256_file(&part, &mut buf)? != f.ciphertext_sha256 {
                let _ = fs::remove_file(&part);
                return Err(CliError::new(
                    Exit::Integrity,
                    format!(
                        "{t}: ciphertext of {} does not match the seal",
                        f.path.as_str()
                    ),
                ));
            }
            Ciphertext::File(part)
        };
        let parent = publish(a, t, f, age, &ciphertext, &mut buf)?;
        // Directory entries are made durable once per directory, before the delivery receipt.
        dirs.insert(parent);
        if let Ciphertext::File(part) = &ciphertext {
            let _ = fs::remove_file(part);
        }
        done += f.ciphertext_size;
        plaintext_bytes += f.size;
        events.progress(done, total);
        events.file_done(f.path.as_str());
    }
    for d in &dirs {
        File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("syncing", d, e))?;
    }
    let _ = fs::remove_dir(&work);
    let _ = fs::remove_dir(a.output.join(".rogatory-fetch"));

    // 4. The signed delivery receipt, logged by the relay and kept here.
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
    if events.json {
        let v = serde_json::json!({"type": "summary", "transfer_id": t.to_string(), "files": m.files.len(),
            "bytes_total": total, "plaintext_bytes": plaintext_bytes, "output": a.output.display().to_string(),
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

/// Removes `.rogatory-partial-*` regular files from the existing directories the transfer's
/// files go to. Never follows a symbolic link.
fn sweep_partials(root: &Path, m: &Manifest) {
    let dirs: std::collections::BTreeSet<PathBuf> = m
        .files
        .iter()
        .filter_map(|f| root.join(f.path.as_str()).parent().map(Path::to_path_buf))
        .collect();
    for d in dirs {
        // Only real directories below the root: a symlinked component is refused later anyway.
        if !fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let stale = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(".rogatory-partial-"));
            if stale && e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

enum Ciphertext {
    Memory(Vec<u8>),
    File(PathBuf),
}

/// Decrypts one file to a temporary file beside its destination, checks size and digest
/// against the seal, fsyncs, and renames it into place (never over an existing file without
/// `--force`). Returns the directory it was created in.
fn publish(
    a: &FetchArgs,
    t: TransferId,
    f: &rogatory_custody::FileEntry,
    age: &[rogatory_envelope::AnyIdentity],
    ciphertext: &Ciphertext,
    buf: &mut [u8],
) -> Result<PathBuf> {
    let parent = safe_parent(&a.output, f.path.as_str())?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".rogatory-partial-")
        .tempfile_in(&parent)
        .map_err(|e| io("creating a temporary file in", &parent, e))?;
    crate::cleanup::register(tmp.path());
    let input: Box<dyn io::BufRead> = match ciphertext {
        Ciphertext::Memory(b) => Box::new(&b[..]),
        Ciphertext::File(p) => Box::new(BufReader::with_capacity(
            64 << 10,
            File::open(p).map_err(|e| io("reading", p, e))?,
        )),
    };
    let bad =
        |what: &str| CliError::new(Exit::Integrity, format!("{t}: {} {what}", f.path.as_str()));
    let mut reader = Decryptor::new(input)
        .and_then(|d| d.decrypt(age))
        .map_err(|e| bad("cannot be decrypted").source(e))?;
    let mut h = Sha256::new();
    let mut n_total = 0u64;
    let result = loop {
        let n = match reader.read(buf) {
            Ok(n) => n,
            Err(e) => break Err(bad("does not decrypt").source(e)),
        };
        if n == 0 {
            break Ok(());
        }
        h.update(&buf[..n]);
        if let Err(e) = tmp.write_all(&buf[..n]) {
            break Err(io("writing", tmp.path(), e));
        }
        n_total += n as u64;
    };
    let result = result.and_then(|()| {
        if n_total != f.size || Sha256Digest(h.finalize().into()) != f.sha256 {
            Err(bad("does not match the sender's digest"))
        } else {
            tmp.as_file()
                .sync_all()
                .map_err(|e| io("syncing", tmp.path(), e))
        }
    });
    let tmp_path = tmp.path().to_owned();
    if let Err(e) = result {
        crate::cleanup::unregister_with(&tmp_path, || drop(tmp));
        return Err(e);
    }
    let dest = a.output.join(f.path.as_str());
    let persisted = crate::cleanup::unregister_with(&tmp_path, || {
        if a.force {
            tmp.persist(&dest)
        } else {
            tmp.persist_noclobber(&dest)
        }
    });
    persisted.map_err(|e| {
        let exit = if e.error.kind() == io::ErrorKind::AlreadyExists {
            Exit::Safety
        } else {
            Exit::Storage
        };
        CliError::new(exit, format!("cannot create {}", dest.display())).source(e.error)
    })?;
    Ok(parent)
}
