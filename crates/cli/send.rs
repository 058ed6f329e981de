//! `rogatory send`: the client library's streamed, resumable send (`rogatory_client::send`),
//! with its events shown as a progress bar, lines or JSON.

use rogatory_client::send::{LegalInput, Plan, SendRequest, plan, send};

use crate::args::SendArgs;
use crate::error::Result;
use crate::events::Events;
use crate::home::Home;

pub(crate) fn run(home: &Home, a: &SendArgs, events: &Events) -> Result<()> {
    let req = SendRequest {
        relay: a.relay.clone(),
        to: a.to.clone(),
        legal: LegalInput {
            case: a.case.clone(),
            legal_basis: a.legal_basis.clone(),
            purpose: a.purpose.clone(),
            retain_until: a.retain_until.clone(),
            classification: a.classification.clone(),
            meta: a.meta.clone(),
        },
        paths: a.paths.clone(),
        resume: a.resume.clone(),
        restart: a.restart,
    };
    if a.dry_run {
        let p = plan(home, &req, &|e| events.event(e))?;
        show_plan(&p, events);
        return Ok(());
    }
    let done = send(home, &req, &|e| events.event(e))?;
    events.receipt("custody", None, &done.receipt);
    events.summary(
        &done.transfer,
        done.files,
        done.bytes_total,
        done.bytes_sent,
        done.bytes_skipped,
        &done.receipt,
    );
    Ok(())
}

/// `send --dry-run`: the files, the legal metadata, and who sees what (`custody.md` §5.4).
fn show_plan(p: &Plan, events: &Events) {
    if events.json {
        let legal = |l| serde_json::to_value(l).unwrap_or_default();
        events.emit(rogatory_client::json::Event::Plan {
            recipients: p.recipients.clone(),
            files: p.files.clone(),
            bytes: p.bytes,
            legal: legal(&p.legal),
            relay_sees: legal(&p.relay_sees),
            relay_requires: p.relay_requires.clone(),
            existing: p.existing.clone(),
        });
        return;
    }
    if let Some(e) = &p.existing {
        outln!("{e}");
    }
    outln!(
        "would send {} files ({} bytes) to {}; nothing was encrypted or sent",
        p.files.len(),
        p.bytes,
        p.recipients.join(", ")
    );
    for (path, size) in &p.files {
        outln!("  {}\t{size} bytes", crate::error::escape_controls(path));
    }
    outln!("the relay sees: the sender, the recipients, the number of files and their sizes, and");
    let public = crate::events::legal_lines(&p.relay_sees);
    if public.is_empty() {
        outln!("  no legal metadata");
    }
    for (name, value) in &public {
        outln!("  {name}: {}", crate::error::escape_controls(value));
    }
    outln!("only the recipients see: the file names and their digests, and");
    let all = crate::events::legal_lines(&p.legal);
    let private: Vec<_> = all.iter().filter(|l| !public.contains(l)).collect();
    if private.is_empty() {
        outln!("  no other legal metadata");
    }
    for (name, value) in private {
        outln!("  {name}: {}", crate::error::escape_controls(value));
    }
}
