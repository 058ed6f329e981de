//! `rogatory send`: encrypt every file to every recipient and to the sender, seal the manifest,
//! stream it to the relay with resume, verify and save the custody receipt.
//!
//! Resume: the ciphertext is spooled once under `outbox/<key>/`, where `<key>` is a digest of
//! the sources (paths, sizes, modification times, inodes), the recipients and the legal
//! metadata. Running the same command again finds the spool and the seal, never re-encrypts (so
//! no file key or nonce is ever used for two different plaintexts, TESTS.md 27), and uploads only
//! what the relay does not hold durably. A source that changed since gives another key, so a new
//! transfer.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rogatory_custody::merkle::leaf_hash;
use rogatory_custody::{
    AgencyId, FileEntry, Legal, LegalText, Manifest, OnwardTransfer, PieceLayout, ReceiptBundle,
    RelativePath, Sha256Digest, Statement, Timestamp, TransferId, piece_layout,
};
use rogatory_envelope::Encryptor;
use rogatory_transport::Limits;
use rogatory_transport::frame::Offer;
use rogatory_transport::net::{Node, PieceSource, upload};
use rogatory_transport::upload::{UploadConfig, UploadEvent};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::args::SendArgs;
use crate::error::{CliError, Exit, Result, io, net};
use crate::events::Events;
use crate::home::{Home, parse_agency, write_file};

/// One source file.
#[derive(Debug, Clone)]
struct Source {
    path: PathBuf,
    rel: RelativePath,
    size: u64,
    mtime_ns: i128,
    ino: u64,
}

fn collect(paths: &[PathBuf], failed: &mut Vec<Failure>) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for p in paths {
        if let Err(e) = collect_one(p, &mut out, failed) {
            failed.push((p.display().to_string(), e.to_string()));
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    for w in out.windows(2) {
        if w[0].rel == w[1].rel {
            return Err(CliError::new(
                Exit::Usage,
                format!("two sources map to the same path {}", w[0].rel.as_str()),
            ));
        }
    }
    if out.is_empty() && failed.is_empty() {
        return Err(CliError::new(
            Exit::Usage,
            "nothing to send: no files under the given paths",
        ));
    }
    Ok(out)
}

fn collect_one(p: &Path, out: &mut Vec<Source>, failed: &mut Vec<Failure>) -> Result<()> {
    let meta = fs::symlink_metadata(p)
        .map_err(|e| CliError::new(Exit::Usage, format!("{}", p.display())).source(e))?;
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            CliError::new(
                Exit::Usage,
                format!("{}: needs a UTF-8 file name", p.display()),
            )
        })?
        .to_owned();
    walk(p, &name, &meta, out, failed)
}

/// A source that could not be sent, and why.
type Failure = (String, String);

/// Reports every failed source (JSON summary or one stderr line each); nothing is sent.
fn failures(events: &Events, failed: &[Failure], total: usize) -> CliError {
    events.failed(failed);
    CliError::new(
        Exit::Usage,
        format!(
            "{} of {total} files cannot be sent; nothing was sent",
            failed.len()
        ),
    )
    .hint("fix or leave out the files listed above and run the same command again")
}

fn walk(
    p: &Path,
    rel: &str,
    meta: &fs::Metadata,
    out: &mut Vec<Source>,
    failed: &mut Vec<Failure>,
) -> Result<()> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(CliError::new(
            Exit::Usage,
            format!("{}: symbolic links are not sent", p.display()),
        )
        .hint("pass the target itself"));
    }
    if ft.is_dir() {
        let rd = fs::read_dir(p).map_err(|e| io("reading directory", p, e))?;
        for e in rd {
            let e = e.map_err(|e| io("reading directory", p, e))?;
            // One bad entry does not hide the others: every failure is listed.
            let r = (|| {
                let name = e.file_name();
                let name = name.to_str().ok_or_else(|| {
                    CliError::new(
                        Exit::Usage,
                        format!("{}: file name is not UTF-8", e.path().display()),
                    )
                })?;
                let m =
                    fs::symlink_metadata(e.path()).map_err(|er| io("reading", &e.path(), er))?;
                walk(&e.path(), &format!("{rel}/{name}"), &m, out, failed)
            })();
            if let Err(err) = r {
                failed.push((e.path().display().to_string(), err.to_string()));
            }
        }
        return Ok(());
    }
    if !ft.is_file() {
        return Err(CliError::new(
            Exit::Usage,
            format!("{}: not a regular file", p.display()),
        ));
    }
    let rel: RelativePath = rel.parse().map_err(|e| {
        CliError::new(
            Exit::Safety,
            format!("{}: unsafe name in a manifest", p.display()),
        )
        .source(e)
    })?;
    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    out.push(Source {
        path: p.to_owned(),
        rel,
        size: meta.len(),
        mtime_ns,
        ino: meta.ino(),
    });
    Ok(())
}

/// Optional legal fields from `--meta FILE.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    case_reference: Option<String>,
    legal_basis: Option<String>,
    requesting_authority: Option<String>,
    executing_authority: Option<String>,
    purpose: Option<String>,
    classification: Option<String>,
    retain_until: Option<String>,
    onward_transfer: Option<String>,
    notes: Option<String>,
}

fn legal(a: &SendArgs) -> Result<Legal> {
    let meta: Meta = match &a.meta {
        Some(p) => {
            let t = fs::read_to_string(p).map_err(|e| {
                CliError::new(Exit::Usage, format!("cannot read {}", p.display())).source(e)
            })?;
            toml::from_str(&t).map_err(|e| {
                CliError::new(Exit::Usage, format!("{}: {}", p.display(), e.message()))
            })?
        }
        None => Meta::default(),
    };
    let text = |flag: &Option<String>,
                file: Option<String>,
                name: &str,
                multi: bool|
     -> Result<Option<LegalText>> {
        match flag.clone().or(file) {
            None => Ok(None),
            Some(s) => LegalText::new(&s, multi).map(Some).map_err(|e| {
                CliError::new(
                    Exit::Usage,
                    format!("{name}: {s:?} is not acceptable legal text"),
                )
                .source(e)
            }),
        }
    };
    let retain = match a.retain_until.clone().or(meta.retain_until) {
        None => None,
        Some(d) => Some(d.parse().map_err(|e| {
            CliError::new(
                Exit::Usage,
                format!("--retain-until {d:?}: expected YYYY-MM-DD"),
            )
            .source(e)
        })?),
    };
    let onward = match meta.onward_transfer.as_deref() {
        None | Some("forbidden") => OnwardTransfer::Forbidden,
        Some("with-consent") => OnwardTransfer::WithConsent,
        Some(o) => {
            return Err(CliError::new(
                Exit::Usage,
                format!("onward_transfer {o:?}: forbidden or with-consent"),
            ));
        }
    };
    Ok(Legal {
        case_reference: text(&a.case, meta.case_reference, "--case", false)?,
        legal_basis: text(&a.legal_basis, meta.legal_basis, "--legal-basis", false)?,
        requesting_authority: text(
            &None,
            meta.requesting_authority,
            "requesting_authority",
            false,
        )?,
        executing_authority: text(
            &None,
            meta.executing_authority,
            "executing_authority",
            false,
        )?,
        purpose: text(&a.purpose, meta.purpose, "--purpose", false)?,
        classification: text(
            &a.classification,
            meta.classification,
            "--classification",
            false,
        )?,
        retain_until: retain,
        onward_transfer: onward,
        notes: text(&None, meta.notes, "notes", true)?,
    })
}

/// The sealed, spooled transfer: what a resumed run reloads.
struct Prepared {
    dir: PathBuf,
    transfer: TransferId,
    manifest: Manifest,
    manifest_json: String,
    seal: String,
    layouts: Vec<PieceLayout>,
    tables: Vec<Vec<[u8; 32]>>,
}

fn outbox_key(
    sender: &AgencyId,
    recipients: &[AgencyId],
    legal: &Legal,
    sources: &[Source],
) -> String {
    let mut h = Sha256::new();
    h.update(b"rogatory-outbox/v1\n");
    h.update(sender.as_str());
    for r in recipients {
        h.update(b"\nto ");
        h.update(r.as_str());
    }
    h.update(serde_json::to_vec(legal).unwrap_or_default());
    for s in sources {
        h.update(
            format!(
                "\n{}\0{}\0{}\0{}\0{}",
                s.rel.as_str(),
                s.size,
                s.mtime_ns,
                s.ino,
                s.path.display()
            )
            .as_bytes(),
        );
    }
    hex(&h.finalize()[..16])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn spool_path(dir: &Path, i: usize) -> PathBuf {
    dir.join("files").join(format!("{i}.age"))
}

/// Encrypts every source into the spool (temp name, fsync, rename) and seals the manifest.
fn prepare(home: &Home, a: &SendArgs, events: &Events) -> Result<Prepared> {
    let identity = home.identity()?;
    let store = home.trust_store()?;
    let mut recipients: Vec<AgencyId> =
        a.to.iter()
            .map(|t| parse_agency(t))
            .collect::<Result<_>>()?;
    recipients.sort();
    recipients.dedup();
    let mut cards = Vec::new();
    for r in &recipients {
        let card = store.get(r).ok_or_else(|| {
            CliError::new(Exit::Usage, format!("recipient {r} is not trusted"))
                .hint("add its card with `rogatory trust add CARD --fingerprint …` first")
        })?;
        cards.push(card);
    }
    let age_recipients = rogatory_custody::age_recipients_for(&identity, &cards);
    let legal = legal(a)?;
    let mut failed = Vec::new();
    let sources = collect(&a.paths, &mut failed)?;
    if !failed.is_empty() {
        return Err(failures(events, &failed, sources.len() + failed.len()));
    }
    let key = outbox_key(identity.id(), &recipients, &legal, &sources);
    let dir = home.path(&format!("outbox/{key}"));
    if dir.join("seal.note").exists() {
        return load(&dir);
    }
    fs::create_dir_all(dir.join("files")).map_err(|e| io("creating", &dir, e))?;
    let total: u64 = sources.iter().map(|s| s.size).sum();
    events.emit_line(&format!(
        "encrypting {} files ({total} bytes) to {}",
        sources.len(),
        recipients
            .iter()
            .map(AgencyId::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut entries = Vec::new();
    // One buffer for every file: thousands of small files must not cost an allocation each.
    let mut buf = vec![0u8; 1 << 20];
    let mut tables = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        match encrypt_one(s, &age_recipients, &spool_path(&dir, i), &mut buf) {
            Ok((entry, table)) => {
                entries.push(entry);
                tables.push(table);
            }
            // Keep going: the summary lists every file that failed, not just the first.
            Err(e) => failed.push((s.path.display().to_string(), e.to_string())),
        }
    }
    if !failed.is_empty() {
        return Err(failures(events, &failed, sources.len()));
    }
    let transfer = TransferId::generate();
    let now = Timestamp::from_datetime(time::OffsetDateTime::now_utc());
    let manifest = Manifest::new(
        transfer,
        identity.id().clone(),
        recipients,
        now,
        legal,
        entries,
    )
    .map_err(|e| CliError::new(Exit::Usage, "the manifest is not valid").source(e))?;
    let seal = manifest
        .seal(identity.signer(), now)
        .map_err(|e| CliError::new(Exit::Internal, "sealing").source(e))?;
    let json = manifest.to_json();
    write_file(&dir.join("manifest.json"), &json, 0o600, true)?;
    // The seal is written last: its presence means the spool is complete.
    write_file(&dir.join("seal.note"), seal.as_bytes(), 0o600, true)?;
    // Sources are sorted like the manifest's files, so spool file i is manifest file i and the
    // tables just computed need no second pass over the spool (a resumed run re-checks it).
    if !manifest
        .files
        .iter()
        .zip(&sources)
        .all(|(f, s)| f.path == s.rel)
    {
        return load(&dir);
    }
    let layouts = manifest
        .files
        .iter()
        .map(|f| piece_layout(f.size, f.ciphertext_size))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| CliError::new(Exit::Internal, "manifest sizes"))?;
    Ok(Prepared {
        dir,
        transfer,
        manifest_json: String::from_utf8(json)
            .map_err(|_| CliError::new(Exit::Internal, "manifest is not UTF-8"))?,
        manifest,
        seal,
        layouts,
        tables,
    })
}

fn encrypt_one(
    s: &Source,
    recipients: &[rogatory_envelope::AnyRecipient],
    dest: &Path,
    buf: &mut [u8],
) -> Result<(FileEntry, Vec<[u8; 32]>)> {
    let mut input = File::open(&s.path).map_err(|e| {
        CliError::new(Exit::Usage, format!("cannot read {}", s.path.display())).source(e)
    })?;
    let tmp = dest.with_extension("tmp");
    let out = File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
    let enc = Encryptor::new(recipients)
        .map_err(|e| CliError::new(Exit::Internal, "encryptor").source(e))?;
    let mut w = enc
        .wrap_output(io::BufWriter::with_capacity(64 << 10, out))
        .map_err(|e| {
            CliError::new(Exit::Storage, format!("writing {}", tmp.display())).source(e)
        })?;
    let mut h = Sha256::new();
    let mut n_total = 0u64;
    loop {
        let n = input.read(buf).map_err(|e| io("reading", &s.path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).map_err(|e| io("writing", &tmp, e))?;
        n_total += n as u64;
    }
    if n_total != s.size {
        return Err(CliError::new(
            Exit::Usage,
            format!("{} changed while it was being read", s.path.display()),
        ));
    }
    let bw = w.finish().map_err(|e| io("writing", &tmp, e))?;
    let f = bw
        .into_inner()
        .map_err(|e| io("writing", &tmp, e.into_error()))?;
    f.sync_all().map_err(|e| io("syncing", &tmp, e))?;
    fs::rename(&tmp, dest).map_err(|e| io("renaming", dest, e))?;
    let ct_len = fs::metadata(dest)
        .map_err(|e| io("reading", dest, e))?
        .len();
    let layout = piece_layout(s.size, ct_len)
        .ok_or_else(|| CliError::new(Exit::Internal, "ciphertext size"))?;
    let (table, ct_sha) = hash_pieces(dest, &layout, buf)?;
    let root =
        Sha256Digest(rogatory_custody::merkle::Tree::from_leaves(table.iter().copied()).root());
    let entry = FileEntry {
        path: s.rel.clone(),
        size: s.size,
        sha256: Sha256Digest(h.finalize().into()),
        ciphertext_size: ct_len,
        ciphertext_sha256: ct_sha,
        piece_root: root,
    };
    Ok((entry, table))
}

/// Leaf hashes of every piece and the SHA-256 of the whole file.
fn hash_pieces(
    path: &Path,
    layout: &PieceLayout,
    buf: &mut [u8],
) -> Result<(Vec<[u8; 32]>, Sha256Digest)> {
    let f = File::open(path).map_err(|e| io("reading", path, e))?;
    let mut whole = Sha256::new();
    let mut leaves = Vec::with_capacity(layout.count() as usize);
    for i in 0..layout.count() {
        let r = layout
            .range(i)
            .ok_or_else(|| CliError::new(Exit::Internal, "piece range"))?;
        let b = &mut buf[..(r.end - r.start) as usize];
        f.read_exact_at(b, r.start)
            .map_err(|e| io("reading", path, e))?;
        whole.update(&*b);
        leaves.push(leaf_hash(b));
    }
    Ok((leaves, Sha256Digest(whole.finalize().into())))
}

fn load(dir: &Path) -> Result<Prepared> {
    let json = fs::read(dir.join("manifest.json"))
        .map_err(|e| io("reading", &dir.join("manifest.json"), e))?;
    let seal = fs::read_to_string(dir.join("seal.note"))
        .map_err(|e| io("reading", &dir.join("seal.note"), e))?;
    let manifest = Manifest::parse(&json).map_err(|e| {
        CliError::new(Exit::Integrity, format!("{}: bad manifest", dir.display())).source(e)
    })?;
    let mut layouts = Vec::new();
    let mut tables = Vec::new();
    let mut buf = vec![0u8; 65_552];
    for (i, f) in manifest.files.iter().enumerate() {
        let layout = piece_layout(f.size, f.ciphertext_size)
            .ok_or_else(|| CliError::new(Exit::Integrity, "manifest sizes"))?;
        let p = spool_path(dir, i);
        let (t, sha) = hash_pieces(&p, &layout, &mut buf)?;
        if sha != f.ciphertext_sha256 {
            return Err(CliError::new(
                Exit::Integrity,
                format!(
                    "{}: spooled ciphertext does not match the manifest",
                    p.display()
                ),
            ));
        }
        layouts.push(layout);
        tables.push(t);
    }
    Ok(Prepared {
        dir: dir.to_owned(),
        transfer: manifest.transfer_id,
        manifest_json: String::from_utf8(json)
            .map_err(|_| CliError::new(Exit::Integrity, "manifest is not UTF-8"))?,
        manifest,
        seal,
        layouts,
        tables,
    })
}

/// The spooled, sealed transfer `id` under `outbox/` (`send --resume`).
fn find_spooled(home: &Home, id: &str) -> Result<Prepared> {
    let t: TransferId = id
        .parse()
        .map_err(|_| CliError::new(Exit::Usage, format!("{id:?} is not a transfer id")))?;
    let outbox = home.path("outbox");
    let dirs = fs::read_dir(&outbox).map_err(|e| {
        CliError::new(Exit::Usage, format!("no sends in {}", outbox.display())).source(e)
    })?;
    for e in dirs.flatten() {
        let dir = e.path();
        let Ok(json) = fs::read(dir.join("manifest.json")) else {
            continue;
        };
        if !dir.join("seal.note").exists() {
            continue;
        }
        if Manifest::parse(&json).is_ok_and(|m| m.transfer_id == t) {
            return load(&dir);
        }
    }
    Err(CliError::new(
        Exit::Usage,
        format!("transfer {t} is not in {}", outbox.display()),
    ))
}

struct Spool {
    files: Vec<File>,
    layouts: Vec<PieceLayout>,
    tables: Vec<Vec<[u8; 32]>>,
}

impl PieceSource for Spool {
    fn table(
        &mut self,
        file: u32,
        first: u64,
        count: usize,
        out: &mut Vec<[u8; 32]>,
    ) -> io::Result<()> {
        let t = self
            .tables
            .get(file as usize)
            .ok_or_else(|| io::Error::other("no such file"))?;
        out.extend_from_slice(
            t.get(first as usize..first as usize + count)
                .ok_or_else(|| io::Error::other("table range"))?,
        );
        Ok(())
    }
    fn piece(&mut self, file: u32, piece: u64, out: &mut Vec<u8>) -> io::Result<()> {
        let l = self
            .layouts
            .get(file as usize)
            .ok_or_else(|| io::Error::other("no such file"))?;
        let r = l
            .range(piece)
            .ok_or_else(|| io::Error::other("piece range"))?;
        let start = out.len();
        out.resize(start + (r.end - r.start) as usize, 0);
        self.files[file as usize].read_exact_at(&mut out[start..], r.start)
    }
}

pub(crate) fn run(home: &Home, a: &SendArgs, events: &Events) -> Result<()> {
    let p = match &a.resume {
        Some(id) => find_spooled(home, id)?,
        None => {
            if a.to.is_empty() {
                return Err(CliError::new(Exit::Usage, "no recipient").hint("pass --to AGENCY"));
            }
            prepare(home, a, events)?
        }
    };
    let store = home.trust_store()?;
    let peer_trust = home.peer_trust(&store)?;
    let tls = home.tls()?;
    let total: u64 = p.layouts.iter().map(|l| l.ciphertext_size).sum();
    events.start(&p.transfer, p.manifest.files.len(), total);
    let files = (0..p.layouts.len())
        .map(|i| {
            File::open(spool_path(&p.dir, i)).map_err(|e| io("reading", &spool_path(&p.dir, i), e))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut src = Spool {
        files,
        layouts: p.layouts.clone(),
        tables: p.tables.clone(),
    };
    let offer = Offer {
        transfer: p.transfer,
        seal: p.seal.clone(),
        manifest: p.manifest_json.clone(),
    };
    let rt = crate::runtime()?;
    let relay = a.relay.clone();
    let paths: Vec<String> = p
        .manifest
        .files
        .iter()
        .map(|f| f.path.as_str().to_owned())
        .collect();
    let (outcome, relay_agency) = rt.block_on(async {
        let addr = rogatory_transport::net::resolve(&relay)
            .await
            .map_err(|e| net(&format!("relay {relay}"), e))?;
        let node = Node::client(addr.is_ipv6(), tls, peer_trust, Limits::default())
            .map_err(|e| net("starting QUIC", e))?;
        let session = node
            .connect(addr, None)
            .await
            .map_err(|e| net(&format!("connecting to {relay}"), e))?;
        let mut last = Instant::now() - Duration::from_secs(1);
        let out = upload(
            &session,
            &offer,
            p.layouts.clone(),
            UploadConfig::default(),
            &mut src,
            |e| match e {
                UploadEvent::Progress { durable, total }
                    if last.elapsed() >= Duration::from_millis(50) || durable == total =>
                {
                    last = Instant::now();
                    events.progress(*durable, *total);
                }
                UploadEvent::FileDurable(i) => {
                    events.file_done(paths.get(*i as usize).map_or("", String::as_str))
                }
                _ => {}
            },
        )
        .await
        .map_err(|e| net("upload", e))?;
        session.close(rogatory_transport::ErrorCode::NO_ERROR, "done");
        node.shutdown(rogatory_transport::ErrorCode::NO_ERROR).await;
        Ok::<_, CliError>((out, session.peer.agency.clone()))
    })?;
    // The receipt must verify with the relay agency's card and match what we sent.
    let card = store.get(&relay_agency).ok_or_else(|| {
        CliError::new(
            Exit::Integrity,
            format!("no card for relay agency {relay_agency}"),
        )
    })?;
    let bundle = ReceiptBundle::parse(&outcome.receipt.text).map_err(|e| {
        CliError::new(Exit::Integrity, "the custody receipt is malformed").source(e)
    })?;
    let logged = bundle.verify(&card.verifier_key).map_err(|e| {
        CliError::new(Exit::Integrity, "the custody receipt does not verify").source(e)
    })?;
    let ok = match &logged.statement {
        Statement::CustodyReceipt {
            head,
            sender,
            manifest_sha256,
            seal_sha256,
            ..
        } => {
            head.transfer == p.transfer
                && *sender == p.manifest.sender
                && *manifest_sha256 == Sha256Digest::of(p.manifest_json.as_bytes())
                && *seal_sha256 == rogatory_custody::note_text_digest(p.seal.as_bytes())
        }
        _ => false,
    };
    if !ok {
        return Err(CliError::new(
            Exit::Integrity,
            "the custody receipt does not describe this transfer",
        ));
    }
    let rpath = home.path(&format!("receipts/{}.custody-receipt", p.transfer));
    write_file(&rpath, outcome.receipt.text.as_bytes(), 0o644, true)?;
    write_file(
        &p.dir.join("custody-receipt"),
        outcome.receipt.text.as_bytes(),
        0o644,
        true,
    )?;
    events.receipt(&rpath);
    events.summary(
        &p.transfer,
        p.manifest.files.len(),
        total,
        outcome.stats.bytes_sent,
        outcome.stats.bytes_skipped,
        &rpath,
    );
    Ok(())
}
