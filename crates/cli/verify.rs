//! `rogatory verify FILE…` (offline verification of receipts, statements, checkpoints and cards
//! against the trust store) and `rogatory audit verify|show|export` (the relay's audit log).

use std::path::Path;

use rogatory_custody::{
    AgencyCard, Checkpoint, ReceiptBundle, Statement, TransferId, TrustStore, verify_records,
};
use serde_json::json;

use crate::args::{AuditArgs, AuditCommand};
use crate::error::{CliError, Exit, Result, io};
use crate::events::Events;
use crate::home::Home;

fn describe(st: &Statement) -> String {
    let h = st.head();
    let what = match st {
        Statement::ManifestSeal {
            files,
            ciphertext_bytes,
            recipients,
            ..
        } => format!(
            "manifest seal: {} sealed {files} files ({ciphertext_bytes} bytes) for {}",
            h.issuer,
            recipients
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Statement::CustodyReceipt {
            sender,
            files,
            ciphertext_bytes,
            ..
        } => {
            format!(
                "custody receipt: {} holds {files} files ({ciphertext_bytes} bytes) sent by {sender}",
                h.issuer
            )
        }
        Statement::DeliveryReceipt {
            sender,
            files,
            plaintext_bytes,
            ..
        } => format!(
            "delivery receipt: {} received, decrypted and verified {files} files ({plaintext_bytes} bytes) from {sender}",
            h.issuer
        ),
        Statement::PurgeReceipt {
            files,
            ciphertext_bytes,
            reason,
            ..
        } => {
            format!(
                "purge receipt: {} deleted {files} files ({ciphertext_bytes} bytes): {reason}",
                h.issuer
            )
        }
        Statement::Rejection {
            peer, code, reason, ..
        } => format!("rejection by {}: {peer:?} {code}: {reason}", h.issuer),
        Statement::Fetch { peer, files, .. } => {
            format!("fetch: {peer} fetched {files} files from {}", h.issuer)
        }
        Statement::DamageReport { files, reason, .. } => format!(
            "damage report: {} found {files} files of the transfer lost or damaged: {reason}",
            h.issuer
        ),
        other => format!("{} by {}", other.kind(), h.issuer),
    };
    format!("{what}; transfer {}, at {}", h.transfer, h.time)
}

/// What one file proves, or why it proves nothing.
fn verify_one(text: &str, store: &TrustStore) -> std::result::Result<String, String> {
    let cards: Vec<&AgencyCard> = store.cards().collect();
    if let Ok(b) = ReceiptBundle::parse(text) {
        // custody.md §9: the statement's signer (the relay's agency for custody and purge
        // receipts, the recipient for a delivery receipt) and the log's owner (the relay's
        // agency, named by the checkpoint's origin) are both trusted agencies, possibly two.
        let Some(signer) = cards
            .iter()
            .find(|c| Statement::open(b.statement_note.as_bytes(), &c.verifier_key).is_ok())
        else {
            return Err("a receipt whose statement no trusted agency signed".into());
        };
        let origin = b.checkpoint_note.lines().next().unwrap_or_default();
        let Some(owner) = cards.iter().find(|c| origin == format!("{}/audit", c.id)) else {
            return Err(format!(
                "a receipt proven in the log {origin:?}, which is no trusted agency's"
            ));
        };
        return match b.verify_logged_by(&signer.verifier_key, &owner.verifier_key) {
            Ok(l) => Ok(format!(
                "{}; entry {} of {}/audit (checkpoint of {} entries)",
                describe(&l.statement),
                l.index,
                owner.id,
                l.checkpoint.size
            )),
            Err(e) => Err(format!(
                "a receipt signed by {} whose proof in {}/audit fails: {e}",
                signer.id, owner.id
            )),
        };
    }
    for c in &cards {
        if let Ok(st) = Statement::open(text.as_bytes(), &c.verifier_key) {
            return Ok(format!(
                "{} (signed statement, not proven in a log)",
                describe(&st)
            ));
        }
        if let Some(log_key) = c.verifier_key.with_name(&format!("{}/audit", c.id))
            && let Ok(cp) = Checkpoint::open(text.as_bytes(), &log_key)
        {
            return Ok(format!("checkpoint of {}: {} entries", cp.origin, cp.size));
        }
    }
    if let Ok(card) = AgencyCard::open(text.as_bytes()) {
        let trusted = store
            .get(&card.id)
            .is_some_and(|t| t.verifier_key.to_string() == card.verifier_key.to_string());
        return Ok(format!(
            "agency card of {} ({}, {}), fingerprint {}{}",
            card.id,
            card.name,
            card.jurisdiction,
            card.fingerprint(),
            if trusted {
                ", trusted"
            } else {
                ", NOT in the trust store"
            }
        ));
    }
    Err("no trusted signature verifies it".into())
}

pub(crate) fn verify(home: &Home, files: &[std::path::PathBuf], events: &Events) -> Result<()> {
    let store = home.trust_store()?;
    let mut failed = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| {
            CliError::new(Exit::Usage, format!("cannot read {}", f.display())).source(e)
        })?;
        match verify_one(&text, &store) {
            Ok(what) => {
                if events.json {
                    println!(
                        "{}",
                        json!({"type": "verified", "path": f.display().to_string(), "proves": what})
                    );
                } else {
                    println!("{}: ok: {what}", f.display());
                }
            }
            Err(why) => {
                if events.json {
                    println!(
                        "{}",
                        json!({"type": "error", "path": f.display().to_string(), "message": why})
                    );
                } else {
                    println!("{}: FAILED: {why}", f.display());
                }
                failed.push(f.display().to_string());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(
            Exit::Integrity,
            format!(
                "{} of {} files did not verify: {}",
                failed.len(),
                files.len(),
                failed.join(", ")
            ),
        ))
    }
}

pub(crate) fn audit(home: &Home, a: &AuditArgs, events: &Events) -> Result<()> {
    let log_path = a
        .log
        .clone()
        .unwrap_or_else(|| home.path("relay/audit.log"));
    let card = match &a.agency {
        None => AgencyCard::clone(&*home.card()?),
        Some(id) => {
            let id = crate::home::parse_agency(id)?;
            home.trust_store()?.get(&id).cloned().ok_or_else(|| {
                CliError::new(Exit::Usage, format!("{id} is not a trusted agency"))
            })?
        }
    };
    let log_key = card
        .verifier_key
        .with_name(&format!("{}/audit", card.id))
        .ok_or_else(|| CliError::new(Exit::Internal, "log key name"))?;
    let decoded = rogatory_relay::logfile::read_records(&log_path).map_err(|e| {
        CliError::new(
            Exit::Integrity,
            format!("{}: unreadable audit log", log_path.display()),
        )
        .source(e)
    })?;
    match &a.command {
        AuditCommand::Verify => {
            let (tree, last) = verify_records(&decoded.records, &log_key).map_err(|e| {
                CliError::new(
                    Exit::Integrity,
                    format!("{}: the audit log does not verify", log_path.display()),
                )
                .source(e)
            })?;
            if decoded.torn_tail {
                return Err(CliError::new(
                    Exit::Integrity,
                    format!(
                        "{}: a torn record follows entry {}",
                        log_path.display(),
                        decoded.records.len()
                    ),
                ));
            }
            let size = last.as_ref().map_or(0, |c| c.size);
            if size != tree.len() {
                return Err(CliError::new(
                    Exit::Integrity,
                    format!(
                        "{}: entries after the last signed checkpoint",
                        log_path.display()
                    ),
                ));
            }
            println!(
                "{}: ok: {size} entries, every checkpoint signed by {} and consistent",
                log_path.display(),
                card.id
            );
            Ok(())
        }
        AuditCommand::Show { transfer, period }
        | AuditCommand::Export {
            transfer, period, ..
        } => {
            let date = |d: &Option<String>,
                        flag: &str|
             -> Result<Option<rogatory_custody::CalendarDate>> {
                d.as_deref()
                    .map(|s| {
                        s.parse().map_err(|_| {
                            CliError::new(Exit::Usage, format!("{flag} {s:?}: expected YYYY-MM-DD"))
                        })
                    })
                    .transpose()
            };
            let (since, until) = (
                date(&period.since, "--since")?,
                date(&period.until, "--until")?,
            );
            let want: Option<TransferId> = match transfer {
                Some(t) => Some(t.parse().map_err(|_| {
                    CliError::new(Exit::Usage, format!("{t:?} is not a transfer id"))
                })?),
                None => None,
            };
            verify_records(&decoded.records, &log_key).map_err(|e| {
                CliError::new(
                    Exit::Integrity,
                    format!("{}: the audit log does not verify", log_path.display()),
                )
                .source(e)
            })?;
            let mut out = Vec::new();
            for (i, r) in decoded.records.iter().enumerate() {
                let text = String::from_utf8_lossy(&r.entry);
                let Ok(st) = Statement::parse(&text) else {
                    continue;
                };
                if want.is_some_and(|t| st.head().transfer != t) {
                    continue;
                }
                let day = st.head().time.date();
                if since.is_some_and(|s| day < s.0) || until.is_some_and(|u| day > u.0) {
                    continue;
                }
                out.push((i, st, text.into_owned()));
            }
            match &a.command {
                AuditCommand::Export { output, .. } => {
                    let mut s = String::new();
                    for (i, st, text) in &out {
                        s.push_str(&json!({"index": i, "kind": st.kind(), "transfer": st.head().transfer.to_string(), "time": st.head().time.to_string(), "entry": text}).to_string());
                        s.push('\n');
                    }
                    if let Some(cp) = decoded
                        .records
                        .iter()
                        .rev()
                        .find_map(|r| r.checkpoint.clone())
                    {
                        s.push_str(&json!({"checkpoint": cp}).to_string());
                        s.push('\n');
                    }
                    write_export(output, s.as_bytes())?;
                    if !events.quiet {
                        eprintln!(
                            "rogatory: exported {} entries and the latest checkpoint to {}",
                            out.len(),
                            output.display()
                        );
                    }
                }
                _ => {
                    for (i, st, _) in &out {
                        println!("{i}\t{}", describe(st));
                    }
                }
            }
            Ok(())
        }
    }
}

fn write_export(p: &Path, data: &[u8]) -> Result<()> {
    crate::home::write_file(p, data, 0o644, false).map_err(|e| {
        if e.kind == Exit::Safety {
            e
        } else {
            io("writing", p, std::io::Error::other(e.to_string()))
        }
    })
}
