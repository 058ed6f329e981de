//! The relay on the network (`protocol.md` §6, `relay.md` §6): uploads through the transport's
//! intake driver, and the request streams (inbox, fetch, status, deliver), each authorised by the
//! authenticated agency.

use std::sync::Arc;

use rogatory_custody::{Timestamp, TransferId};
use rogatory_transport::frame::{
    ErrorFrame, FetchHead, Frame, Inbox, InboxEntry, LogCheckpoint, Object, Offer, Receipt,
    ReceiptKind, Seal, Status, TransferState,
};
use rogatory_transport::net::{
    Accepted, FrameReader, FrameWriter, IntakeHandler, Lease, MAX_RANGE_PARTS, ServeConfig,
    Session, serve_connection,
};
use rogatory_transport::tls::PeerIdentity;
use rogatory_transport::{ErrorCode, ProtocolError};

use crate::relay::{Relay, TransferRow, damaged_error};
use crate::storage::Storage;

/// Most entries in one INBOX answer.
pub const INBOX_PAGE: usize = 1000;

/// The relay as the transport's upload handler.
#[derive(Debug)]
pub struct Handler<S: Storage + 'static>(pub Arc<Relay<S>>);

impl<S: Storage + 'static> IntakeHandler for Handler<S> {
    fn offer(&self, peer: &PeerIdentity, offer: &Offer) -> Result<Accepted, ProtocolError> {
        self.0.offer(peer, offer)
    }
    fn store(&self, t: Lease, file: u32, piece: u64, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.0.store(t, file, piece, bytes)
    }
    fn sync(&self, t: Lease) -> Result<Vec<u64>, ProtocolError> {
        self.0.sync(t)
    }
    fn complete(
        &self,
        peer: &PeerIdentity,
        t: Lease,
        seal: &Seal,
    ) -> Result<String, ProtocolError> {
        self.0.complete(peer, t, seal)
    }
    fn abandon(&self, t: Lease) {
        self.0.abandon(t)
    }
}

/// Serves one authenticated connection until it ends.
pub async fn serve_session<S: Storage + 'static>(
    relay: Arc<Relay<S>>,
    session: Session,
    cfg: ServeConfig,
) {
    let handler = Arc::new(Handler(relay.clone()));
    serve_connection(session, handler, cfg, move |s, first, w, r| {
        let relay = relay.clone();
        async move { request(relay, s, first, w, r).await }
    })
    .await
}

async fn request<S: Storage + 'static>(
    relay: Arc<Relay<S>>,
    s: Session,
    first: Frame<'static>,
    mut w: FrameWriter,
    _r: FrameReader,
) {
    let peer = s.peer.clone();
    let result = match first {
        // Both read the index, which waits while a group commit fsyncs it, and a refused
        // status is logged (fsynced): off the async workers (`cli.md` "Running the relay").
        Frame::InboxRequest(q) => {
            blocking(&relay, &peer, move |r, p| {
                inbox(r, p, q.after).map(|f| vec![f])
            })
            .await
        }
        Frame::StatusRequest(q) => {
            blocking(&relay, &peer, move |r, p| {
                status(r, p, q.transfer).map(|f| vec![f])
            })
            .await
        }
        Frame::CheckpointRequest(q) => {
            // `protocol.md` §6.6: the log's latest checkpoint and a proof from the client's.
            // It waits for the log's lock (held through fsynced appends) and may commit the
            // checkpoint to the index: off the async workers.
            blocking(&relay, &peer, move |r, _| {
                r.checkpoint_with_proof(q.held_size)
            })
            .await
            .map(|(note, proof)| {
                vec![Frame::Checkpoint(LogCheckpoint {
                    checkpoint: note.unwrap_or_default(),
                    proof,
                })]
            })
        }
        Frame::AddCheckpoint(f) => {
            // `protocol.md` §6.7: the witness checks and durably keeps the checkpoint before it
            // cosigns: off the async workers.
            blocking(&relay, &peer, move |r, p| r.add_checkpoint(p, &f))
                .await
                .map(|f| vec![f])
        }
        Frame::Deliver(d) => {
            blocking(&relay, &peer, move |r, p| {
                r.deliver(p, d.transfer, &d.receipt).map(|text| {
                    vec![Frame::Receipt(Receipt {
                        transfer: d.transfer,
                        kind: ReceiptKind::Delivery,
                        text,
                    })]
                })
            })
            .await
        }
        Frame::Fetch(f) => {
            if let Err(e) = fetch(&relay, &peer, f, &mut w).await {
                let _ = w
                    .send(&Frame::Error(ErrorFrame {
                        code: e.code,
                        message: e.message,
                    }))
                    .await;
            }
            w.finish();
            return;
        }
        other => {
            let m = format!("{} cannot start a request", other.ty().name());
            s.close(ErrorCode::PROTOCOL_VIOLATION, &m);
            return;
        }
    };
    match result {
        Ok(frames) => {
            for f in frames {
                if w.send(&f).await.is_err() {
                    return;
                }
            }
        }
        Err(e) => {
            let _ = w
                .send(&Frame::Error(ErrorFrame {
                    code: e.code,
                    message: e.message,
                }))
                .await;
        }
    }
    w.finish();
}

/// Runs `f` on a blocking thread: for the relay's work that may wait for an fsync (an index
/// commit, an audit-log append), which would otherwise pause every connection of the async
/// worker it ran on.
async fn blocking<S: Storage + 'static, T: Send + 'static>(
    relay: &Arc<Relay<S>>,
    peer: &PeerIdentity,
    f: impl FnOnce(&Relay<S>, &PeerIdentity) -> Result<T, ProtocolError> + Send + 'static,
) -> Result<T, ProtocolError> {
    let (r, p) = (relay.clone(), peer.clone());
    rogatory_transport::net::off_worker(move || f(&r, &p)).await
}

/// [`blocking`] for work whose outcome is an error to answer (a refusal logged, damage marked).
async fn blocking_error<S: Storage + 'static>(
    relay: &Arc<Relay<S>>,
    peer: &PeerIdentity,
    f: impl FnOnce(&Relay<S>, &PeerIdentity) -> ProtocolError + Send + 'static,
) -> ProtocolError {
    blocking(relay, peer, move |r, p| Ok(f(r, p)))
        .await
        .unwrap_or_else(|e| e)
}

/// The relay's hook for client certificates refused during the TLS handshake
/// ([`Relay::log_tls_rejection`]): the audit-log append (fsynced) runs on a blocking thread, not
/// on the async worker that drives the handshake and other connections.
pub fn tls_rejection_hook<S: Storage + 'static>(
    relay: Arc<Relay<S>>,
) -> impl Fn(&rogatory_transport::Rejected) + Send + Sync + 'static {
    move |rej| {
        // Counted here, so that a flood of refused handshakes past the rate limit starts no
        // thread at all.
        if !relay.tls_rejection_admitted() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (r, rej) = (relay.clone(), rej.clone());
                drop(rt.spawn_blocking(move || r.append_tls_rejection(&rej)));
            }
            Err(_) => relay.append_tls_rejection(rej),
        }
    }
}

fn inbox<S: Storage>(
    relay: &Relay<S>,
    peer: &PeerIdentity,
    after: Option<TransferId>,
) -> Result<Frame<'static>, ProtocolError> {
    let mut rows: Vec<_> = relay
        .transfers()?
        .into_iter()
        .filter(|r| r.recipients.contains(&peer.agency))
        .filter(|r| {
            matches!(
                r.state,
                TransferState::Complete | TransferState::Delivered | TransferState::Damaged
            )
        })
        .collect();
    if let Some(a) = after
        && let Some(pos) = rows.iter().position(|r| r.transfer == a)
    {
        rows.drain(..=pos);
    }
    let more = rows.len() > INBOX_PAGE;
    rows.truncate(INBOX_PAGE);
    let entries = rows
        .into_iter()
        .map(|r| {
            // `delivered` as this recipient sees it: it has delivered its own receipt; a damaged
            // transfer is `damaged` for everyone (`relay.md` §10).
            let state = if r.state == TransferState::Damaged {
                TransferState::Damaged
            } else if relay
                .deliveries(r.row)?
                .iter()
                .any(|(a, _)| *a == peer.agency)
            {
                TransferState::Delivered
            } else {
                TransferState::Complete
            };
            Ok(InboxEntry {
                transfer: r.transfer,
                sender: r.sender,
                files: r.files,
                ciphertext_bytes: r.ciphertext_bytes,
                received: Timestamp::from_unix(r.completed_at.unwrap_or(r.offered_at))
                    .unwrap_or_else(|_| Timestamp::from_datetime(time::OffsetDateTime::UNIX_EPOCH)),
                state,
            })
        })
        .collect::<Result<Vec<_>, ProtocolError>>()?;
    Ok(Frame::Inbox(Inbox { entries, more }))
}

fn status<S: Storage>(
    relay: &Relay<S>,
    peer: &PeerIdentity,
    t: TransferId,
) -> Result<Frame<'static>, ProtocolError> {
    let not_found = || ProtocolError::new(ErrorCode::NOT_FOUND, "no such transfer");
    let r = relay
        .transfer_without_documents(&t)?
        .ok_or_else(not_found)?;
    if r.sender != peer.agency && !r.recipients.contains(&peer.agency) {
        // Indistinguishable from a missing transfer for a stranger, but logged.
        relay.refuse(
            peer,
            t,
            ProtocolError::new(
                ErrorCode::NOT_AUTHORISED,
                "status of another agency's transfer",
            ),
        );
        return Err(not_found());
    }
    // Every receipt the relay holds: custody, one delivery receipt per recipient that has
    // fetched, purge (`relay.md` §6).
    let deliveries = relay
        .deliveries(r.row)?
        .into_iter()
        .map(|(_, text)| relay.served_bundle(text));
    let receipts = r
        .custody_receipt
        .iter()
        .cloned()
        .map(|text| (ReceiptKind::Custody, relay.served_bundle(text)))
        .chain(deliveries.map(|text| (ReceiptKind::Delivery, text)))
        .chain(
            r.purge_receipt
                .iter()
                .cloned()
                .map(|text| (ReceiptKind::Purge, relay.served_bundle(text))),
        )
        .map(|(kind, text)| Receipt {
            transfer: t,
            kind,
            text,
        })
        .collect();
    Ok(Frame::Status(Status {
        transfer: t,
        state: r.state,
        durable: relay.durable(r.row)?,
        receipts,
    }))
}

fn not_a_recipient() -> ProtocolError {
    ProtocolError::new(ErrorCode::NOT_AUTHORISED, "only a recipient may fetch")
}

/// The row of a FETCH's transfer, with its documents (seal, manifest, offer) or without.
fn row_for<S: Storage>(
    relay: &Relay<S>,
    t: &TransferId,
    documents: bool,
) -> Result<TransferRow, ProtocolError> {
    if documents {
        relay.transfer(t)?
    } else {
        relay.transfer_without_documents(t)?
    }
    .ok_or_else(|| ProtocolError::new(ErrorCode::NOT_FOUND, "no such transfer"))
}

/// A FETCH of a document or a receipt (not a file): the transfer's row and the object's bytes,
/// for a recipient only (anyone else is refused and the refusal logged). Run on a blocking
/// thread: index reads, the audit log's lock.
fn document<S: Storage>(
    relay: &Relay<S>,
    peer: &PeerIdentity,
    t: &TransferId,
    object: Object,
) -> Result<(TransferRow, Vec<u8>), ProtocolError> {
    let mut r = row_for(relay, t, !matches!(object, Object::CustodyReceipt))?;
    if !r.recipients.contains(&peer.agency) {
        return Err(relay.refuse(peer, *t, not_a_recipient()));
    }
    if r.manifest.is_empty() && matches!(object, Object::Seal | Object::Manifest | Object::Contents)
    {
        return Err(ProtocolError::new(
            ErrorCode::NOT_FOUND,
            "the transfer is not sealed yet",
        ));
    }
    let b = match object {
        // Moved out of the row, not copied: a manifest of many files is megabytes, and the
        // caller needs only the row's identity.
        Object::Seal => std::mem::take(&mut r.seal),
        Object::Manifest => std::mem::take(&mut r.manifest),
        Object::Contents => relay.contents(r.row)?.ok_or_else(|| {
            ProtocolError::new(ErrorCode::NOT_FOUND, "the transfer has no contents")
        })?,
        Object::CustodyReceipt => {
            let b = r.custody_receipt.take().ok_or_else(|| {
                ProtocolError::new(ErrorCode::NOT_FOUND, "no custody receipt yet")
            })?;
            relay.served_bundle(b).into_bytes()
        }
        Object::File(_) => {
            return Err(ProtocolError::new(
                ErrorCode::INTERNAL,
                "a file is not a document",
            ));
        }
    };
    Ok((r, b))
}

async fn fetch<S: Storage + 'static>(
    relay: &Arc<Relay<S>>,
    peer: &PeerIdentity,
    f: rogatory_transport::frame::Fetch,
    w: &mut FrameWriter,
) -> Result<(), ProtocolError> {
    let (r, source, base, total): (TransferRow, Option<Vec<u8>>, u64, u64) = match f.object {
        Object::File(i) => {
            // A file's FETCH does not need the seal and manifest (megabytes for many files),
            // and looks its row up here: one thread hand-off per file would cost a bulk fetch.
            let r = row_for(relay, &f.transfer, false)?;
            if !r.recipients.contains(&peer.agency) {
                let t = f.transfer;
                return Err(blocking_error(relay, peer, move |r, p| {
                    r.refuse(p, t, not_a_recipient())
                })
                .await);
            }
            if r.state == TransferState::Damaged {
                return Err(damaged_error());
            }
            if !matches!(r.state, TransferState::Complete | TransferState::Delivered) {
                return Err(ProtocolError::new(
                    ErrorCode::NOT_FOUND,
                    "the transfer is not complete or was purged",
                ));
            }
            let (base, size) = relay
                .file_extent(r.row, i)?
                .ok_or_else(|| ProtocolError::new(ErrorCode::NOT_FOUND, "no such file"))?;
            (r, None, base, size)
        }
        object => {
            // A document or a receipt: the custody receipt's bundle waits for the audit log's
            // lock, held through fsynced appends: off the async workers.
            let t = f.transfer;
            let (r, b) = blocking(relay, peer, move |relay, peer| {
                document(relay, peer, &t, object)
            })
            .await?;
            let n = b.len() as u64;
            (r, Some(b), 0, n)
        }
    };
    if f.offset > total {
        return Err(ProtocolError::new(
            ErrorCode::NOT_FOUND,
            "offset beyond the object",
        ));
    }
    let end = if f.len == 0 {
        total
    } else {
        total.min(f.offset.saturating_add(f.len))
    };
    let io = |e: rogatory_transport::net::NetError| {
        ProtocolError::new(ErrorCode::TIMEOUT, e.to_string())
    };
    w.send(&Frame::FetchHead(FetchHead { total }))
        .await
        .map_err(io)?;
    // A large file is read from the pack directly, a few blocks ahead (`protocol.md` §6.3).
    // Up to the range's end only: nothing past it is read ahead.
    let file = match f.object {
        Object::File(i) => Some(i),
        _ => None,
    };
    let mut direct = match file {
        Some(_) if end - f.offset >= rogatory_transport::direct::DIRECT_MIN => {
            relay.open_pack_direct(&r, base + end)
        }
        _ => None,
    };
    let mut off = f.offset;
    while off < end {
        let n = (end - off).min(rogatory_transport::frame::MAX_RANGE) as usize;
        match &source {
            Some(b) => {
                w.send(&Frame::Range(rogatory_transport::frame::Range {
                    offset: off,
                    bytes: &b[off as usize..off as usize + n],
                }))
                .await
                .map_err(io)?;
            }
            None => {
                // Handed to quinn in the blocks read directly (`protocol.md` §6.3), once the
                // blocks read ahead hold the range: the worker never waits for the disk, and
                // the bytes are not copied.
                if let Some(d) = direct.as_mut() {
                    d.ready(base + off, n).await;
                    let mut parts: [bytes::Bytes; MAX_RANGE_PARTS] = Default::default();
                    if let Some(k) = d.read_shared(base + off, n, &mut parts) {
                        w.send_range_shared(off, &parts[..k]).await.map_err(io)?;
                        off += n as u64;
                        continue;
                    }
                }
                // Else read into the buffer that goes to quinn: through the page cache, or
                // directly with a copy (a block that failed is reported from here).
                let mut failed = None;
                let sent = w
                    .send_range(off, n as u64, |out| {
                        match relay.read_pack_into(&r, &mut direct, base + off, out) {
                            Ok(got) if got == n => Ok(()),
                            got => {
                                failed = Some(got);
                                Err(std::io::Error::other("reading the pack"))
                            }
                        }
                    })
                    .await;
                if let Some(got) = failed {
                    // Only a file is read from the pack (`source` is `None`).
                    // Damage is marked and logged (fsynced): off the async workers.
                    let (row, i) = (r.clone(), file.unwrap_or(0));
                    return Err(blocking_error(relay, peer, move |r, _| {
                        pack_read_failed(r, &row, i, got)
                    })
                    .await);
                }
                sent.map_err(io)?;
            }
        }
        off += n as u64;
    }
    w.flush().await.map_err(io)?;
    if let Object::File(i) = f.object
        && end == total
    {
        // The last file of the transfer this agency fetched: the Fetch statement is logged
        // and the index updated (fsynced), off the async workers.
        if relay.served(&r, &peer.agency, i) {
            blocking(relay, peer, move |relay, p| {
                relay.fetched_all(&r, &p.agency)
            })
            .await?;
        }
    }
    Ok(())
}

/// What a read of the pack that failed or came back short while serving `file` answers.
/// Ciphertext gone or cut short at rest is damage (`relay.md` §10): marked, and the recipient
/// told plainly instead of "retry" for ever. Other read errors pass; `relay scrub` decides about
/// them.
fn pack_read_failed<S: Storage>(
    relay: &Relay<S>,
    r: &TransferRow,
    file: u32,
    got: Result<usize, ProtocolError>,
) -> ProtocolError {
    let missing = || {
        relay
            .storage()
            .len(&relay.pack_path(r))
            .is_ok_and(|l| l.is_none())
    };
    match got {
        Err(e) if !missing() => e,
        Err(_) => relay.damaged_on_read(&r.transfer, file, "the pack file is missing"),
        Ok(_) => relay.damaged_on_read(
            &r.transfer,
            file,
            "stored ciphertext is shorter than recorded (the pack is too short)",
        ),
    }
}
