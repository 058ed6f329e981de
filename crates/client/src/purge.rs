//! Retention at the ends (`docs/cli.md` "Retention at the ends"): `rogatory purge` removes what
//! is past the sealed manifest's `legal.retain_until`, at the sender (`sent/<transfer>/`) or at
//! the recipient (the transfer folders of a fetched output directory), keeps what the receipts
//! need, and records every purge in the home's append-only `purged.log`.
//!
//! What stays: at the sender, `sent/<transfer>/seal.note` and `purged.json` (transfer, manifest
//! digest, retention, time) beside the untouched `receipts/`; `manifest.json` goes, because it
//! names the files and the receipts need only its digest. At the recipient, the transfer
//! folder's `.rogatory/` keeps `seal.note`, both receipts and `package.json` (now with
//! `purged_at`); every file and `manifest.json` go.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rogatory_custody::{CalendarDate, Sha256Digest};
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result, io};
use crate::home::{Home, write_file};
use crate::package::{self, PACKAGE_DIR, Record};

/// What to purge.
#[derive(Clone, Debug, Default)]
pub struct PurgeRequest {
    /// A fetched output directory (recipient side); `None`: this home's `sent/` (sender side).
    pub output: Option<PathBuf>,
    /// Report only; change nothing.
    pub dry_run: bool,
    /// The date to judge retention by (default: today, UTC).
    pub today: Option<CalendarDate>,
}

/// One transfer purged (or, with `dry_run`, that would be).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Purged {
    /// `sent` (sender side) or `fetched` (recipient side).
    pub side: &'static str,
    /// The transfer.
    pub transfer: String,
    /// Its folder.
    pub path: PathBuf,
    /// Its retention date.
    pub retain_until: String,
    /// Files removed (fetched side; 0 at the sender, which holds no evidence).
    pub files_removed: usize,
    /// Nothing was changed.
    pub dry_run: bool,
}

/// Purges what is past retention on one side; returns every transfer it purged, oldest
/// retention first. Transfers without a retention date, or whose manifest does not verify,
/// are kept.
pub fn purge(home: &Home, req: &PurgeRequest) -> Result<Vec<Purged>> {
    let today = req.today.unwrap_or_else(package::today);
    let mut out = match &req.output {
        None => purge_sent(home, today, req.dry_run)?,
        Some(dir) => purge_fetched(home, dir, today, req.dry_run)?,
    };
    out.sort_by(|a, b| (&a.retain_until, &a.transfer).cmp(&(&b.retain_until, &b.transfer)));
    Ok(out)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("reading", dir, e)),
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
        .collect();
    v.sort();
    Ok(v)
}

/// `sent/<transfer>/purged.json`.
#[derive(Serialize)]
struct SentPurged<'a> {
    transfer: &'a str,
    manifest_sha256: String,
    retain_until: String,
    purged_at: String,
}

fn purge_sent(home: &Home, today: CalendarDate, dry_run: bool) -> Result<Vec<Purged>> {
    let store = home.trust_store()?;
    let mut out = Vec::new();
    for dir in subdirs(&home.path("sent"))? {
        let mpath = dir.join("manifest.json");
        let (Ok(m), Ok(seal)) = (fs::read(&mpath), fs::read(dir.join("seal.note"))) else {
            continue; // purged already, or not a completed send
        };
        let Ok(man) = package::open_manifest(&m, &seal, &store) else {
            continue;
        };
        let Some(until) = man.legal.retain_until.filter(|d| *d < today) else {
            continue;
        };
        let transfer = man.transfer_id.to_string();
        if !dry_run {
            let rec = SentPurged {
                transfer: &transfer,
                manifest_sha256: Sha256Digest::of(&m).to_string(),
                retain_until: until.to_string(),
                purged_at: package::now().to_string(),
            };
            let mut b = serde_json::to_vec_pretty(&rec)
                .map_err(|e| Error::new(ErrorKind::Internal, "encoding purged.json").source(e))?;
            b.push(b'\n');
            write_file(&dir.join("purged.json"), &b, 0o644, true)?;
            // Everything that names or describes the files goes (`custody.md` §5.4: the
            // contents; the send state kept for a repair); the seal and the receipts stay.
            for name in [
                "contents.json",
                "contents.age",
                "state.bin",
                "heads.bin",
                "keys.age",
                "done.bin",
            ] {
                let p = dir.join(name);
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("removing", &p, e)),
                }
            }
            fs::remove_file(&mpath).map_err(|e| io("removing", &mpath, e))?;
            crate::send::forget_sent(home, man.transfer_id)?;
            log(home, "sent", &transfer, &dir, &until, 0)?;
        }
        out.push(Purged {
            side: "sent",
            transfer,
            path: dir,
            retain_until: until.to_string(),
            files_removed: 0,
            dry_run,
        });
    }
    Ok(out)
}

fn purge_fetched(
    home: &Home,
    out_dir: &Path,
    today: CalendarDate,
    dry_run: bool,
) -> Result<Vec<Purged>> {
    if !out_dir.is_dir() {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("{} is not a directory", out_dir.display()),
        )
        .hint("name the output directory of `rogatory fetch -o`, or a transfer folder in it"));
    }
    let store = home.trust_store()?;
    let folders: Vec<PathBuf> = if package::is_transfer_folder(out_dir) {
        vec![out_dir.to_owned()]
    } else {
        subdirs(out_dir)?
            .into_iter()
            .filter(|p| package::is_transfer_folder(p))
            .collect()
    };
    let mut out = Vec::new();
    for folder in folders {
        let Ok(mut record) = Record::read(&folder) else {
            continue;
        };
        if record.purged_at.is_some() || record.fetched_at.is_none() {
            continue; // purged already, or a fetch under way
        }
        let pkg_dir = folder.join(PACKAGE_DIR);
        let (Ok(m), Ok(seal)) = (
            fs::read(pkg_dir.join("manifest.json")),
            fs::read(pkg_dir.join("seal.note")),
        ) else {
            continue;
        };
        // Retention as the sender sealed it, not as the record says.
        let Ok(man) = package::open_manifest(&m, &seal, &store) else {
            continue;
        };
        let Some(until) = man.legal.retain_until.filter(|d| *d < today) else {
            continue;
        };
        let mut removed = 0;
        if dry_run {
            removed = man.files.len();
        } else {
            let rd = fs::read_dir(&folder).map_err(|e| io("reading", &folder, e))?;
            for e in rd.flatten() {
                if e.file_name() == PACKAGE_DIR {
                    continue;
                }
                let p = e.path();
                let dir = e.file_type().is_ok_and(|t| t.is_dir());
                let r = if dir {
                    removed += count_files(&p);
                    fs::remove_dir_all(&p)
                } else {
                    removed += 1;
                    fs::remove_file(&p)
                };
                r.map_err(|e| io("removing", &p, e))?;
            }
            record.purged_at = Some(package::now().to_string());
            record.retain_until = Some(until.to_string());
            record.write(&folder)?;
            let cp = pkg_dir.join("contents.json");
            match fs::remove_file(&cp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &cp, e)),
            }
            let mp = pkg_dir.join("manifest.json");
            fs::remove_file(&mp).map_err(|e| io("removing", &mp, e))?;
            log(home, "fetched", &record.transfer, &folder, &until, removed)?;
        }
        out.push(Purged {
            side: "fetched",
            transfer: record.transfer.clone(),
            path: folder,
            retain_until: until.to_string(),
            files_removed: removed,
            dry_run,
        });
    }
    Ok(out)
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// Appends one JSON line to the home's `purged.log` (created 0600; fsynced).
fn log(
    home: &Home,
    side: &str,
    transfer: &str,
    path: &Path,
    until: &CalendarDate,
    files: usize,
) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = home.path("purged.log");
    let line = serde_json::json!({
        "time": package::now().to_string(), "side": side, "transfer": transfer,
        "path": path.display().to_string(), "retain_until": until.to_string(),
        "files_removed": files,
    });
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&p)
        .map_err(|e| io("opening", &p, e))?;
    writeln!(f, "{line}")
        .and_then(|_| f.sync_all())
        .map_err(|e| io("writing", &p, e))
}
