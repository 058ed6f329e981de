//! The recipient's evidence package (`docs/cli.md` "Fetched output"): beside each fetched
//! transfer's files, in the hidden folder `<transfer folder>/.rogatory/`, everything needed to
//! prove later, offline, what the files are: the manifest, the sender's seal, the relay's
//! custody receipt and this recipient's own delivery receipt, plus a small record
//! (`package.json`) of whose transfer it is and when its retention ends.
//!
//! [`Package`] is the one list of the documents; [`write`] publishes them, [`verify`] checks a
//! fetched folder against the trust store, [`purge`](crate::purge) removes what is past its
//! retention.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use rogatory_custody::{
    AgencyId, CalendarDate, CardChain, Inventory, Legal, LoggedStatement, Manifest, ReceiptBundle,
    Sha256Digest, Statement, Timestamp, TransferId, TrustStore, note_text_digest,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result, io};
use crate::home::write_file;

/// The hidden package folder inside each transfer folder.
pub const PACKAGE_DIR: &str = ".rogatory";
/// The package record's file name.
pub const RECORD: &str = "package.json";

/// The documents of a package, each kept byte for byte as the sender and the relay made it.
/// Their file names are in [`Package::documents`] only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Package {
    /// `manifest.json`: the sealed manifest, what the relay saw (removed by a purge).
    pub manifest: Option<Vec<u8>>,
    /// `contents.json`: the manifest's contents, decrypted (`custody.md` §5.4): the file names,
    /// plaintext digests and all the legal metadata (removed by a purge: it names the files).
    pub contents: Option<Vec<u8>>,
    /// `seal.note`: the sender's signed seal of the manifest.
    pub seal: Vec<u8>,
    /// `custody.receipt`: the relay's custody receipt bundle.
    pub custody_receipt: Vec<u8>,
    /// `delivery.receipt`: this recipient's delivery receipt bundle, as the relay logged it
    /// (absent until the fetch is complete).
    pub delivery_receipt: Option<Vec<u8>>,
}

impl Package {
    /// `(file name, bytes)` of every document present.
    pub fn documents(&self) -> Vec<(&'static str, &[u8])> {
        let mut v: Vec<(&'static str, &[u8])> = Vec::with_capacity(4);
        if let Some(m) = &self.manifest {
            v.push(("manifest.json", m));
        }
        if let Some(c) = &self.contents {
            v.push(("contents.json", c));
        }
        v.push(("seal.note", &self.seal));
        v.push(("custody.receipt", &self.custody_receipt));
        if let Some(d) = &self.delivery_receipt {
            v.push(("delivery.receipt", d));
        }
        v
    }

    /// Reads the package of the transfer folder `folder`; a missing optional document is
    /// `None`, a missing required one an error naming it.
    pub fn read(folder: &Path) -> Result<Package> {
        let dir = folder.join(PACKAGE_DIR);
        let opt = |name: &str| -> Result<Option<Vec<u8>>> {
            let p = dir.join(name);
            match fs::read(&p) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io("reading", &p, e)),
            }
        };
        let req = |name: &str| -> Result<Vec<u8>> {
            opt(name)?.ok_or_else(|| {
                Error::new(
                    ErrorKind::Integrity,
                    format!("{} is missing", dir.join(name).display()),
                )
            })
        };
        Ok(Package {
            manifest: opt("manifest.json")?,
            contents: opt("contents.json")?,
            seal: req("seal.note")?,
            custody_receipt: req("custody.receipt")?,
            delivery_receipt: opt("delivery.receipt")?,
        })
    }
}

/// `package.json`: whose transfer a folder holds, and when its retention ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The transfer.
    pub transfer: String,
    /// The sending agency.
    pub sender: String,
    /// This recipient.
    pub recipient: String,
    /// SHA-256 of `manifest.json` (what the receipts name; kept after a purge).
    pub manifest_sha256: String,
    /// The manifest's `legal.retain_until` (`YYYY-MM-DD`), if any.
    pub retain_until: Option<String>,
    /// When the fetch completed (`None` while it is under way).
    pub fetched_at: Option<String>,
    /// When `rogatory purge` removed the files (`None` until then).
    pub purged_at: Option<String>,
}

impl Record {
    /// Reads `folder/.rogatory/package.json`.
    pub fn read(folder: &Path) -> Result<Record> {
        let p = folder.join(PACKAGE_DIR).join(RECORD);
        let b = fs::read(&p).map_err(|e| io("reading", &p, e))?;
        serde_json::from_slice(&b).map_err(|_| {
            Error::new(
                ErrorKind::Integrity,
                format!("{} is not a package record", p.display()),
            )
        })
    }

    /// Writes `folder/.rogatory/package.json` (atomically).
    pub fn write(&self, folder: &Path) -> Result<()> {
        let p = folder.join(PACKAGE_DIR).join(RECORD);
        let mut b = serde_json::to_vec_pretty(self).map_err(|e| {
            Error::new(ErrorKind::Internal, "encoding the package record").source(e)
        })?;
        b.push(b'\n');
        write_file(&p, &b, 0o644, true)
    }
}

/// Writes every document of `pkg` into `folder/.rogatory/` (each atomically; existing ones of
/// the same transfer are replaced) and the record.
pub fn write(folder: &Path, pkg: &Package, record: &Record) -> Result<()> {
    let dir = folder.join(PACKAGE_DIR);
    match fs::symlink_metadata(&dir) {
        Ok(m) if !m.is_dir() || m.file_type().is_symlink() => {
            return Err(Error::new(
                ErrorKind::Safety,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(_) => {}
        Err(_) => fs::create_dir(&dir).map_err(|e| io("creating", &dir, e))?,
    }
    for (name, bytes) in pkg.documents() {
        write_file(&dir.join(name), bytes, 0o644, true)?;
    }
    record.write(folder)
}

/// Whether `dir` is a transfer folder (holds a package).
pub fn is_transfer_folder(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(PACKAGE_DIR)).is_ok_and(|m| m.is_dir())
}

/// The transfer folder name for a fetched transfer: `<sender>_<case>_<first 8 hex digits of
/// the transfer id>`, the case reference reduced to letters, digits, `.` and `-` (other runs
/// become one `-`) and cut to 40 characters; `<sender>_<8 hex>` without a case reference.
pub fn folder_name(sender: &AgencyId, case: Option<&str>, t: &TransferId) -> String {
    let id = t.to_string();
    let short = id.get(..8).unwrap_or(&id);
    let case = case.map(sanitise).filter(|c| !c.is_empty());
    match case {
        Some(c) => format!("{sender}_{c}_{short}"),
        None => format!("{sender}_{short}"),
    }
}

/// A free-text case reference as one safe file-name component (ASCII letters, digits, `.`,
/// `-`; no leading or trailing `.`/`-`; at most 40 characters).
pub fn sanitise(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(40));
    for c in s.chars() {
        let keep = c.is_ascii_alphanumeric() || c == '.' || c == '-';
        if keep {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= 40 {
            break;
        }
    }
    out.trim_matches(|c| c == '-' || c == '.').to_owned()
}

/// The one place a package's manifest is opened: the seal verified with the sender's card, the
/// manifest checked against it (today's sealed manifest, `custody.md` §4–5).
pub fn open_manifest(manifest: &[u8], seal: &[u8], store: &TrustStore) -> Result<Manifest> {
    let claimed = Manifest::parse(manifest)
        .map_err(|e| Error::new(ErrorKind::Integrity, "manifest.json is malformed").source(e))?;
    let card = store.chain(&claimed.sender).ok_or_else(|| {
        Error::new(
            ErrorKind::Integrity,
            format!(
                "sender {} is not trusted; its seal cannot be verified",
                claimed.sender
            ),
        )
    })?;
    // Any key of the sender's card chain (`custody.md` §8.5).
    let (sealed, _) = card.open_sealed_manifest(manifest, seal).map_err(|e| {
        Error::new(
            ErrorKind::Integrity,
            "seal.note: the sender's seal does not verify against manifest.json",
        )
        .source(e)
    })?;
    Ok(sealed.into_inner().manifest)
}

/// The sealed manifest joined with its contents (`custody.md` §5.4): the seal verified with the
/// sender's card, the contents' salted digest the one the manifest names. What a recipient
/// checks its files against, offline and without any key.
pub fn open_inventory(
    manifest: &[u8],
    contents: &[u8],
    seal: &[u8],
    store: &TrustStore,
) -> Result<Inventory> {
    let m = open_manifest(manifest, seal, store)?;
    m.open_contents(contents).map_err(|e| {
        Error::new(
            ErrorKind::Integrity,
            "contents.json is not the contents the sender sealed",
        )
        .source(e)
    })
}

/// A receipt bundle verified against the trust store (`custody.md` §9): its statement signed
/// by a trusted agency, its checkpoint by a trusted agency's log key (origin `<id>/audit`),
/// the inclusion proof good.
#[derive(Clone, Debug)]
pub struct VerifiedReceipt {
    /// The logged statement.
    pub logged: LoggedStatement,
    /// Who signed the statement.
    pub signer: AgencyId,
    /// Whose log holds it.
    pub log_owner: AgencyId,
}

/// Verifies a receipt bundle's text against the trust store; the error is a plain sentence.
pub fn verify_receipt(
    text: &str,
    store: &TrustStore,
) -> std::result::Result<VerifiedReceipt, String> {
    // Every trusted agency's card chain (`custody.md` §8.5): receipts signed and logged before
    // a key rotation keep verifying.
    let chains: Vec<&CardChain> = store.chains().collect();
    let b = ReceiptBundle::parse(text).map_err(|_| "not a receipt bundle".to_owned())?;
    let Some(signer) = chains
        .iter()
        .find(|c| c.open_statement(b.statement_note.as_bytes()).is_ok())
    else {
        // A signature that verifies but is refused for its date says why (`custody.md` §8.3,
        // §8.5): a revoked or superseded key.
        return Err(chains
            .iter()
            .find_map(|c| {
                c.open_statement(b.statement_note.as_bytes())
                    .err()
                    .filter(refused_for_its_date)
            })
            .map_or_else(
                || "a receipt whose statement no trusted agency signed".into(),
                |e| format!("a receipt whose statement is refused: {e}"),
            ));
    };
    let origin = b.checkpoint_note.lines().next().unwrap_or_default();
    let Some(owner) = chains
        .iter()
        .find(|c| origin == format!("{}/audit", c.id()))
    else {
        return Err(format!(
            "a receipt proven in the log {}, which is no trusted agency's",
            origin.escape_debug()
        ));
    };
    match b.verify_chains(signer, owner) {
        Ok((l, _)) => Ok(VerifiedReceipt {
            logged: l.into_inner(),
            signer: signer.id().clone(),
            log_owner: owner.id().clone(),
        }),
        Err(e) => Err(format!(
            "a receipt signed by {} whose proof in {}/audit fails: {e}",
            signer.id(),
            owner.id()
        )),
    }
}

/// What `verify` found in one transfer folder.
#[derive(Clone, Debug, Serialize)]
pub struct TransferReport {
    /// The transfer folder.
    pub folder: PathBuf,
    /// The transfer, once known.
    pub transfer: Option<String>,
    /// The sending agency, once its seal verified.
    pub sender: Option<String>,
    /// The recipients (from the sealed manifest).
    pub recipients: Vec<String>,
    /// The legal metadata (from the sealed manifest).
    pub legal: Option<Legal>,
    /// Files checked.
    pub files: usize,
    /// Plaintext bytes checked.
    pub bytes: u64,
    /// The relay whose log holds the receipts.
    pub relay: Option<String>,
    /// The recipient whose delivery receipt the package holds.
    pub delivered_by: Option<String>,
    /// When the files were purged at the end of retention (then only receipts are checked).
    pub purged_at: Option<String>,
    /// Every mismatch, each naming its file; empty when the folder verifies.
    pub problems: Vec<String>,
}

/// Verifies a fetched output folder (every transfer folder in it) or one transfer folder,
/// offline against `store`. `Err` only when `path` holds no package at all.
pub fn verify(path: &Path, store: &TrustStore) -> Result<Vec<TransferReport>> {
    let folders: Vec<PathBuf> = if is_transfer_folder(path) {
        vec![path.to_owned()]
    } else {
        let rd = fs::read_dir(path).map_err(|e| io("reading", path, e))?;
        let mut v: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) && is_transfer_folder(p))
            .collect();
        v.sort();
        v
    };
    if folders.is_empty() {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("{} holds no fetched transfer", path.display()),
        )
        .hint("name the output directory of `rogatory fetch -o`, or a transfer folder in it"));
    }
    Ok(folders.iter().map(|f| verify_folder(f, store)).collect())
}

fn verify_folder(folder: &Path, store: &TrustStore) -> TransferReport {
    let mut r = TransferReport {
        folder: folder.to_owned(),
        transfer: None,
        sender: None,
        recipients: Vec::new(),
        legal: None,
        files: 0,
        bytes: 0,
        relay: None,
        delivered_by: None,
        purged_at: None,
        problems: Vec::new(),
    };
    let pkg_dir = folder.join(PACKAGE_DIR);
    let name = |n: &str| pkg_dir.join(n).display().to_string();
    let pkg = match Package::read(folder) {
        Ok(p) => p,
        Err(e) => {
            r.problems.push(e.message().to_owned());
            return r;
        }
    };
    let record = Record::read(folder).ok();
    r.purged_at = record.as_ref().and_then(|x| x.purged_at.clone());

    // The manifest and the seal; after a purge, the digest the record kept.
    let seal_digest = note_text_digest(&pkg.seal);
    let (manifest, manifest_digest) = match (&pkg.manifest, &record) {
        (Some(m), _) => {
            let Some(c) = &pkg.contents else {
                r.problems
                    .push(format!("{} is missing", name("contents.json")));
                return r;
            };
            match open_manifest(m, &pkg.seal, store) {
                Ok(_) => match open_inventory(m, c, &pkg.seal, store) {
                    Ok(inv) => (Some(inv), Sha256Digest::of(m)),
                    Err(e) => {
                        r.problems
                            .push(format!("{}: {}", name("contents.json"), e.message()));
                        return r;
                    }
                },
                Err(e) => {
                    r.problems
                        .push(format!("{}: {}", name("seal.note"), e.message()));
                    return r;
                }
            }
        }
        (None, Some(rec)) if rec.purged_at.is_some() => {
            match rec.manifest_sha256.parse::<Sha256Digest>() {
                Ok(d) => (None, d),
                Err(_) => {
                    r.problems
                        .push(format!("{}: bad manifest digest", name(RECORD)));
                    return r;
                }
            }
        }
        _ => {
            r.problems
                .push(format!("{} is missing", name("manifest.json")));
            return r;
        }
    };
    let transfer: Option<TransferId> = match &manifest {
        Some(m) => Some(m.transfer_id),
        None => record.as_ref().and_then(|x| x.transfer.parse().ok()),
    };
    r.transfer = transfer.map(|t| t.to_string());
    if let Some(m) = &manifest {
        r.sender = Some(m.sender.to_string());
        r.recipients = m.recipients.iter().map(|a| a.to_string()).collect();
        r.legal = Some(m.legal.clone());
    } else if let Some(rec) = &record {
        r.sender = Some(rec.sender.clone());
    }

    // The custody receipt: by the relay, in its own log, naming this manifest and seal.
    let custody_text = String::from_utf8_lossy(&pkg.custody_receipt).into_owned();
    match verify_receipt(&custody_text, store) {
        Ok(v) => {
            let ok = v.signer == v.log_owner
                && matches!(&v.logged.statement, Statement::CustodyReceipt { head, manifest_sha256, seal_sha256, .. }
                    if Some(head.transfer) == transfer && *manifest_sha256 == manifest_digest && *seal_sha256 == seal_digest);
            if ok {
                r.relay = Some(v.log_owner.to_string());
            } else {
                r.problems.push(format!(
                    "{}: not the custody receipt of this transfer, manifest and seal",
                    name("custody.receipt")
                ));
            }
        }
        Err(why) => r
            .problems
            .push(format!("{}: {why}", name("custody.receipt"))),
    }

    // The delivery receipt: by a recipient, in the same relay's log, naming the same documents.
    match &pkg.delivery_receipt {
        None => r.problems.push(format!(
            "{} is missing (fetch not completed)",
            name("delivery.receipt")
        )),
        Some(d) => match verify_receipt(&String::from_utf8_lossy(d), store) {
            Ok(v) => {
                let ok = r.relay.as_deref() == Some(v.log_owner.as_str())
                    && (manifest.is_none() || r.recipients.iter().any(|a| a == v.signer.as_str()))
                    && matches!(&v.logged.statement, Statement::DeliveryReceipt { head, manifest_sha256, seal_sha256, custody_receipt_sha256, .. }
                        if Some(head.transfer) == transfer && *manifest_sha256 == manifest_digest
                            && *seal_sha256 == seal_digest
                            && *custody_receipt_sha256 == note_text_digest(&pkg.custody_receipt));
                if ok {
                    r.delivered_by = Some(v.signer.to_string());
                } else {
                    r.problems.push(format!(
                        "{}: not a delivery receipt of this transfer, manifest, seal and custody receipt",
                        name("delivery.receipt")
                    ));
                }
            }
            Err(why) => r
                .problems
                .push(format!("{}: {why}", name("delivery.receipt"))),
        },
    }

    // Every file: present, its size and SHA-256 as sealed; nothing added.
    if let Some(m) = &manifest {
        let mut buf = vec![0u8; 1 << 16];
        let mut expected = BTreeSet::new();
        for f in &m.files {
            expected.insert(f.path.as_str().to_owned());
            let p = folder.join(f.path.as_str());
            let shown = p.display().to_string();
            match fs::symlink_metadata(&p) {
                Ok(md) if md.is_file() => {
                    if md.len() != f.size {
                        r.problems.push(format!(
                            "{shown}: size {} where the manifest says {}",
                            md.len(),
                            f.size
                        ));
                        continue;
                    }
                    match sha256_file(&p, &mut buf) {
                        Ok(d) if d == f.sha256 => {
                            r.files += 1;
                            r.bytes += f.size;
                        }
                        Ok(_) => r
                            .problems
                            .push(format!("{shown}: SHA-256 differs from the manifest's")),
                        Err(e) => r.problems.push(format!("{shown}: unreadable: {e}")),
                    }
                }
                Ok(_) => r.problems.push(format!("{shown}: not a regular file")),
                Err(_) => r.problems.push(format!("{shown}: missing")),
            }
        }
        let mut found = Vec::new();
        list_files(folder, "", &mut found);
        for rel in found {
            if !expected.contains(&rel) {
                r.problems.push(format!(
                    "{}: not in the manifest (added)",
                    folder.join(&rel).display()
                ));
            }
        }
    }
    r
}

/// Every non-directory entry under `dir` as a `/`-separated relative path, the package folder
/// excluded; symbolic links are listed, never followed.
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if prefix.is_empty() && name == PACKAGE_DIR {
            continue;
        }
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        match e.file_type() {
            Ok(t) if t.is_dir() => list_files(&e.path(), &rel, out),
            _ => out.push(rel),
        }
    }
}

fn sha256_file(p: &Path, buf: &mut [u8]) -> std::io::Result<Sha256Digest> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = fs::File::open(p)?;
    let mut h = Sha256::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            return Ok(Sha256Digest(h.finalize().into()));
        }
        h.update(&buf[..n]);
    }
}

/// Today's date in UTC.
pub fn today() -> CalendarDate {
    CalendarDate(time::OffsetDateTime::now_utc().date())
}

/// Now, to the second.
pub fn now() -> Timestamp {
    Timestamp::from_datetime(time::OffsetDateTime::now_utc())
}

/// Whether a chain refused a statement whose signature verified, for its date: signed by a key
/// revoked or superseded at or before that date (`custody.md` §8.3, §8.5).
pub fn refused_for_its_date(e: &rogatory_custody::ParseError) -> bool {
    let m = e.to_string();
    m.contains(" revoked at ") || m.contains(" superseded at ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_references_become_safe_components() {
        assert_eq!(sanitise("XX-2026-0042"), "XX-2026-0042");
        assert_eq!(sanitise("../../etc/passwd"), "etc-passwd");
        assert_eq!(sanitise("Fall 42 / Müller"), "Fall-42-M-ller");
        assert_eq!(sanitise("..."), "");
        assert!(sanitise(&"a".repeat(200)).len() <= 40);
    }

    #[test]
    fn documents_are_listed_in_one_place() {
        let p = Package {
            manifest: Some(b"m".to_vec()),
            contents: None,
            seal: b"s".to_vec(),
            custody_receipt: b"c".to_vec(),
            delivery_receipt: None,
        };
        let names: Vec<&str> = p.documents().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["manifest.json", "seal.note", "custody.receipt"]);
    }
}
