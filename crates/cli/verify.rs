//! `rogatory verify FILE…` (offline verification of receipts, statements, checkpoints and cards
//! against the trust store) and `rogatory audit verify|show|export` (the relay's audit log).

use std::path::Path;

use rogatory_custody::{
    AgencyCard, Checkpoint, ReceiptBundle, Statement, TransferId, TrustStore,
    check_not_rolled_back, verify_records_any,
};
use serde_json::json;

use crate::args::{AuditArgs, AuditCommand};
use crate::error::{CliError, Exit, Result, io};
use crate::events::{Events, Json};
use crate::home::Home;
use rogatory_client::json::{Package, PackageLegal};

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
        } => format!(
            "rejection by {}: {peer} refused, {code}: {reason}",
            h.issuer
        ),
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

/// `custody.md` §7.2: a receipt's checkpoint against those this home verified from its log.
/// Same size, other root: the failure (exit 3; evidence saved). Otherwise what was compared.
fn held_note(
    home: &Home,
    store: &TrustStore,
    text: &str,
    v: &rogatory_client::package::VerifiedReceipt,
) -> std::result::Result<String, String> {
    use rogatory_client::checkpoints::{HeldCheck, check_held};
    let note = ReceiptBundle::parse(text)
        .map(|b| b.checkpoint_note)
        .unwrap_or_default();
    match check_held(home, store, &v.log_owner, &v.logged.checkpoint, &note) {
        Ok(HeldCheck::Matches) => Ok(", the same as this home verified".into()),
        Ok(HeldCheck::NotCompared { newest: None }) => Ok(format!(
            ", not compared: this home holds no checkpoint of {}/audit",
            v.log_owner
        )),
        Ok(HeldCheck::NotCompared { newest: Some(n) }) => Ok(format!(
            ", not compared: this home verified none of that size from {}/audit (newest: {n} entries)",
            v.log_owner
        )),
        Err(e) => Err(match e.hint_text() {
            Some(h) => format!("{e} ({h})"),
            None => e.to_string(),
        }),
    }
}

/// What one file proves, or why it proves nothing.
fn verify_one(home: &Home, text: &str, store: &TrustStore) -> std::result::Result<String, String> {
    if ReceiptBundle::parse(text).is_ok() {
        // custody.md §9: the statement's signer (the relay's agency for custody and purge
        // receipts, the recipient for a delivery receipt) and the log's owner (the relay's
        // agency, named by the checkpoint's origin) are both trusted agencies, possibly two.
        let v = rogatory_client::package::verify_receipt(text, store)?;
        let held = held_note(home, store, text, &v)?;
        // `custody.md` §7.3: the witnesses' cosignatures, and the home's requirement.
        let note = ReceiptBundle::parse(text)
            .map(|b| b.checkpoint_note)
            .unwrap_or_default();
        let cosigned = rogatory_client::checkpoints::check_cosigned(
            home,
            store,
            &v.log_owner,
            v.logged.checkpoint.size,
            &note,
        )
        .map_err(|e| match e.hint_text() {
            Some(h) => format!("{e} ({h})"),
            None => e.to_string(),
        })?;
        let held = if cosigned.is_empty() {
            held
        } else {
            let names: Vec<String> = cosigned.iter().map(ToString::to_string).collect();
            format!("{held}; cosigned by {}", names.join(", "))
        };
        return Ok(format!(
            "{}; entry {} of {}/audit (checkpoint of {} entries{held})",
            describe(&v.logged.statement),
            v.logged.index,
            v.log_owner,
            v.logged.checkpoint.size
        ));
    }
    // Any key of each trusted agency's card chain (`custody.md` §8.5).
    let mut refused = None;
    for c in store.chains() {
        match c.open_statement(text.as_bytes()) {
            Ok((st, _)) => {
                return Ok(format!(
                    "{} (signed statement, not proven in a log)",
                    describe(&st)
                ));
            }
            // Signed, but refused for its date (`custody.md` §8.3, §8.5): said below.
            Err(e) if rogatory_client::package::refused_for_its_date(&e) => {
                refused.get_or_insert(e);
            }
            Err(_) => {}
        }
        if let Ok(cp) = c.open_checkpoint(text.as_bytes()) {
            return Ok(format!("checkpoint of {}: {} entries", cp.origin, cp.size));
        }
    }
    // A card, or a card chain (`custody.md` §8.5): its newest card.
    if let Ok(chain) = rogatory_custody::CardChain::parse(text.as_bytes()) {
        let card = chain.newest();
        let trusted = store
            .get(&card.id)
            .is_some_and(|t| t.verifier_key.to_string() == card.verifier_key.to_string());
        return Ok(format!(
            "agency card of {} ({}, {}), fingerprint {}{}{}",
            card.id,
            card.name,
            card.jurisdiction,
            card.fingerprint(),
            if chain.len() > 1 {
                format!(", newest of a chain of {} cards", chain.len())
            } else {
                String::new()
            },
            if trusted {
                ", trusted"
            } else {
                ", NOT in the trust store"
            }
        ));
    }
    Err(refused.map_or_else(
        || "no trusted signature verifies it".into(),
        |e| format!("refused: {e}"),
    ))
}

pub(crate) fn verify(home: &Home, files: &[std::path::PathBuf], events: &Events) -> Result<()> {
    let store = home.trust_store()?;
    let mut failed = Vec::new();
    for f in files {
        if f.is_dir() {
            failed.extend(verify_fetched(home, f, &store, events)?);
            continue;
        }
        let text = std::fs::read_to_string(f).map_err(|e| {
            CliError::new(Exit::Usage, format!("cannot read {}", f.display())).source(e)
        })?;
        match verify_one(home, &text, &store) {
            Ok(what) => {
                if events.json {
                    events.emit(Json::Verified {
                        path: f.display().to_string(),
                        proves: what,
                    });
                } else {
                    outln!("{}: ok: {what}", f.display());
                }
            }
            Err(why) => {
                if events.json {
                    events.emit(Json::VerifyFailed {
                        path: f.display().to_string(),
                        problem: why,
                    });
                } else {
                    outln!("{}: FAILED: {why}", f.display());
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
                "{} did not verify: {}",
                if failed.len() == 1 {
                    "1 item".to_owned()
                } else {
                    format!("{} items", failed.len())
                },
                failed.join(", ")
            ),
        ))
    }
}

/// `verify DIR`: every transfer folder of a fetched output directory (or the one named),
/// checked by `rogatory_client::package::verify`; returns what failed, each naming its file.
fn verify_fetched(
    home: &Home,
    dir: &Path,
    store: &TrustStore,
    events: &Events,
) -> Result<Vec<String>> {
    let reports = rogatory_client::package::verify(dir, store)?;
    let mut failed = Vec::new();
    for mut r in reports {
        // `custody.md` §7.2: the package's receipts against the checkpoints this home verified
        // from their relay; a fork is one more problem (exit 3).
        for name in ["custody.receipt", "delivery.receipt"] {
            let p = r
                .folder
                .join(rogatory_client::package::PACKAGE_DIR)
                .join(name);
            if let Ok(text) = std::fs::read_to_string(&p)
                && let Err(e) = rogatory_client::checkpoints::check_receipt(home, store, &text)
            {
                r.problems.push(format!(
                    "{}/{name}: {e}",
                    rogatory_client::package::PACKAGE_DIR
                ));
            }
        }
        let folder = r.folder.display().to_string();
        let legal = r.legal.as_ref();
        let text = |f: fn(&rogatory_custody::Legal) -> Option<&rogatory_custody::LegalText>| {
            legal.and_then(f).map(|t| t.as_str().to_owned())
        };
        let onward = legal.and_then(|l| l.onward_transfer).map(|o| match o {
            rogatory_custody::OnwardTransfer::Forbidden => "forbidden",
            rogatory_custody::OnwardTransfer::WithConsent => "with the sender's consent",
        });
        let retain = legal.and_then(|l| l.retain_until).map(|d| d.to_string());
        let ok = r.problems.is_empty();
        if events.json {
            let p = Package {
                path: folder.clone(),
                transfer_id: r.transfer.clone(),
                sender: r.sender.clone(),
                recipients: r.recipients.clone(),
                relay: r.relay.clone(),
                delivered_by: r.delivered_by.clone(),
                files: r.files as u64,
                bytes: r.bytes,
                purged_at: r.purged_at.clone(),
                legal: PackageLegal {
                    case_reference: text(|l| l.case_reference.as_ref()),
                    legal_basis: text(|l| l.legal_basis.as_ref()),
                    requesting_authority: text(|l| l.requesting_authority.as_ref()),
                    executing_authority: text(|l| l.executing_authority.as_ref()),
                    purpose: text(|l| l.purpose.as_ref()),
                    retain_until: retain.clone(),
                    classification: text(|l| l.classification.as_ref()),
                    onward_transfer: onward.map(str::to_owned),
                    notes: text(|l| l.notes.as_ref()),
                },
                problems: r.problems.clone(),
            };
            events.emit(if ok {
                Json::PackageVerified(p)
            } else {
                Json::PackageFailed(p)
            });
        } else {
            let shown = |v: Option<String>| {
                crate::error::escape_controls(v.as_deref().unwrap_or("(not given)"))
            };
            let t = r.transfer.clone().unwrap_or_else(|| "?".into());
            if ok {
                match &r.purged_at {
                    Some(at) => outln!(
                        "{folder}: ok: transfer {t} from {}, purged at the end of retention on {at}; its receipts verify",
                        shown(r.sender.clone())
                    ),
                    None => outln!(
                        "{folder}: ok: transfer {t} from {}: {} files ({} bytes) match the sealed manifest; custody receipt of {} and delivery receipt of {} verify",
                        shown(r.sender.clone()),
                        r.files,
                        r.bytes,
                        shown(r.relay.clone()),
                        shown(r.delivered_by.clone())
                    ),
                }
            } else {
                outln!("{folder}: FAILED: transfer {t}");
                for p in &r.problems {
                    outln!("  {}", crate::error::escape_controls(p));
                }
            }
            if legal.is_some() {
                outln!(
                    "  case reference:       {}",
                    shown(text(|l| l.case_reference.as_ref()))
                );
                outln!(
                    "  legal basis:          {}",
                    shown(text(|l| l.legal_basis.as_ref()))
                );
                outln!(
                    "  requesting authority: {}",
                    shown(text(|l| l.requesting_authority.as_ref()))
                );
                outln!(
                    "  executing authority:  {}",
                    shown(text(|l| l.executing_authority.as_ref()))
                );
                outln!(
                    "  purpose:              {}",
                    shown(text(|l| l.purpose.as_ref()))
                );
                outln!("  retain until:         {}", shown(retain.clone()));
                outln!(
                    "  classification:       {}",
                    shown(text(|l| l.classification.as_ref()))
                );
                outln!(
                    "  onward transfer:      {}",
                    shown(onward.map(str::to_owned))
                );
                if let Some(n) = text(|l| l.notes.as_ref()) {
                    for line in n.lines() {
                        outln!(
                            "  notes:                {}",
                            crate::error::escape_controls(line)
                        );
                    }
                }
            }
        }
        if !ok {
            failed.extend(r.problems);
        }
    }
    Ok(failed)
}

/// `rogatory purge [--dry-run] [DIR]` (`rogatory_client::purge`).
pub(crate) fn purge(home: &Home, a: &crate::args::PurgeArgs, events: &Events) -> Result<()> {
    let today = a
        .as_of
        .as_deref()
        .map(|s| {
            s.parse().map_err(|_| {
                CliError::new(Exit::Usage, format!("--as-of {s:?}: expected YYYY-MM-DD"))
            })
        })
        .transpose()?;
    let done = rogatory_client::purge::purge(
        home,
        &rogatory_client::purge::PurgeRequest {
            output: a.output.clone(),
            dry_run: a.dry_run,
            today,
        },
    )?;
    for p in &done {
        if events.json {
            events.emit(Json::Purged {
                side: p.side.to_owned(),
                transfer_id: p.transfer.clone(),
                path: p.path.display().to_string(),
                retain_until: p.retain_until.clone(),
                files_removed: p.files_removed as u64,
                dry_run: p.dry_run,
            });
        } else {
            outln!(
                "{} {} {} (retained until {}){}",
                if p.dry_run { "would purge" } else { "purged" },
                p.transfer,
                p.path.display(),
                p.retain_until,
                if p.side == "fetched" {
                    format!(", {} files", p.files_removed)
                } else {
                    String::new()
                }
            );
        }
    }
    if events.json {
        events.emit(Json::PurgeDone {
            purged: done.len() as u64,
            dry_run: a.dry_run,
        });
    } else if done.is_empty() {
        events.emit_line("nothing is past its retention");
    }
    Ok(())
}

pub(crate) fn audit(home: &Home, a: &AuditArgs, events: &Events) -> Result<()> {
    let log_path = match &a.log {
        // A log named on the command line that is not there is a mistyped path, as for
        // `verify FILE`; a relay home whose log is gone is tampering (exit 3, below).
        Some(p)
            if std::fs::metadata(p).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
        {
            return Err(CliError::new(
                Exit::Usage,
                format!("cannot read {}: no such file", p.display()),
            ));
        }
        Some(p) => p.clone(),
        None if !home.path("relay").is_dir() => {
            return Err(CliError::new(
                Exit::Usage,
                format!(
                    "{} runs no relay, so it keeps no audit log: give the relay's home (--home) or a copy of its log (--log FILE)",
                    home.root.display()
                ),
            ));
        }
        None => home.path("relay/audit.log"),
    };
    // The log keys of the owner's whole card chain (`custody.md` §8.5): checkpoints signed
    // before a key rotation keep verifying.
    let chain = match &a.agency {
        None => home.card_chain()?,
        Some(id) => {
            let id = crate::home::parse_agency(id)?;
            home.trust_store()?.chain(&id).cloned().ok_or_else(|| {
                CliError::new(Exit::Usage, format!("{id} is not a trusted agency"))
            })?
        }
    };
    let card = AgencyCard::clone(chain.newest());
    let log_key = chain.log_verifiers();
    let decoded = rogatory_relay::logfile::read_records(&log_path).map_err(|e| {
        CliError::new(
            Exit::Integrity,
            format!("{}: unreadable audit log", log_path.display()),
        )
        .source(e)
    })?;
    match &a.command {
        AuditCommand::Verify => {
            let (tree, last) = verify_records_any(&decoded.records, &log_key).map_err(|e| {
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
            // relay.md §5.1: the log must extend the checkpoint its relay's index keeps (the
            // newest one that may have left the relay).
            let data_dir = log_path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let kept = rogatory_relay::relay::kept_checkpoint(data_dir).map_err(|e| {
                CliError::new(
                    Exit::Storage,
                    format!("{}: cannot read the relay's index", data_dir.display()),
                )
                .source(e)
            })?;
            let kept_size = match kept {
                None => None,
                Some((n, note)) => {
                    let cp = Checkpoint::open_any(note.as_bytes(), &log_key)
                        .map_err(|e| {
                            CliError::new(
                                Exit::Integrity,
                                format!(
                                    "{}/relay.db: the checkpoint it keeps does not verify with {}'s key",
                                    data_dir.display(),
                                    card.id
                                ),
                            )
                            .source(e)
                        })?
                        .into_inner();
                    check_not_rolled_back(&tree, &cp).map_err(|e| {
                        CliError::new(
                            Exit::Integrity,
                            format!(
                                "{}: the audit log ({size} entries) does not extend the checkpoint for {n} entries its relay handed out (kept in relay.db)",
                                log_path.display()
                            ),
                        )
                        .source(e)
                        .hint("restore the audit log from a backup; the relay refuses to start with it")
                    })?;
                    Some(n)
                }
            };
            if events.json {
                events.emit(Json::AuditVerified {
                    log: log_path.display().to_string(),
                    agency: card.id.to_string(),
                    entries: size,
                    kept_checkpoint: kept_size,
                });
            } else {
                let kept = kept_size
                    .map(|n| {
                        format!("; it extends the checkpoint for {n} entries the relay handed out")
                    })
                    .unwrap_or_default();
                outln!(
                    "{}: ok: {size} entries, every checkpoint signed by {} and consistent{kept}",
                    log_path.display(),
                    card.id
                );
            }
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
            verify_records_any(&decoded.records, &log_key).map_err(|e| {
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
                    if events.json {
                        events.emit(Json::AuditExported {
                            entries: out.len() as u64,
                            output: output.display().to_string(),
                        });
                    } else if !events.quiet {
                        errln!(
                            "rogatory: exported {} entries and the latest checkpoint to {}",
                            out.len(),
                            output.display()
                        );
                    }
                }
                _ => {
                    for (i, st, text) in &out {
                        if events.json {
                            events.emit(Json::AuditEntry {
                                index: *i as u64,
                                kind: st.kind().to_owned(),
                                transfer_id: st.head().transfer.to_string(),
                                issuer: st.head().issuer.to_string(),
                                time: st.head().time.to_string(),
                                description: describe(st),
                                entry: text.clone(),
                            });
                        } else {
                            outln!("{i}\t{}", describe(st));
                        }
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
