//! `rogatory send`: the client library's streamed, resumable send (`rogatory_client::send`),
//! with its events shown as a progress bar, lines or JSON.

use rogatory_client::send::{LegalInput, SendRequest, send};

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
    let done = send(home, &req, &|e| events.event(e))?;
    events.receipt(&done.receipt);
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
