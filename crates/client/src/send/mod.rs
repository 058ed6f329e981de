//! Sending evidence through a relay (`docs/cli.md` "send", `protocol.md` §6.1).
//!
//! One pass over the data: the offer (sizes, recipients, legal metadata) goes out first, then
//! each plaintext chunk is read, hashed, encrypted and sent; no ciphertext is written locally.
//! Once every piece is durable at the relay the manifest, which only the data could determine,
//! is sealed and sent, and the relay answers with the custody receipt.
//!
//! Resume: the state of a send (`state.rs`) is kept under `outbox/<key>/`, where `<key>` names
//! the sender, recipients, legal metadata and source paths. Running the same command again
//! finds it, checks that no source changed (size, modification and change time, inode), and
//! sends only what the relay does not durably hold, re-encrypting it byte for byte under the
//! saved headers. A changed source is refused (exit 8), never mixed into the transfer.
//!
//! Repair (`relay.md` §10): the same command run again after the custody receipt asks the relay
//! for the transfer's state; if the relay reports it `damaged` (ciphertext lost at rest), the
//! state kept under `sent/<transfer>/` is put back under `outbox/<key>/` and the resume above
//! re-sends exactly what the relay's ACCEPT says it lacks, then the same seal, and gets the
//! original custody receipt back.

mod heads;
mod legal;
mod sources;
mod state;
mod stream;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rogatory_custody::{
    AgencyId, Legal, OfferedFile, ReceiptBundle, Sha256Digest, Statement, Timestamp, TransferId,
    TransferOffer,
};
use rogatory_envelope::{AnyRecipient, Encryptor, FileKey};

use rogatory_transport::frame::{Offer, PublishedPolicy};
use rogatory_transport::net::{NetError, upload};
use rogatory_transport::upload::{UploadConfig, UploadEvent};
use sha2::{Digest, Sha256};

pub use legal::LegalInput;
pub use sources::Failure;

use crate::error::{Error, ErrorKind, Result, io, net};
use crate::events::Event;
use crate::home::{Home, parse_agency, write_file};
use heads::{FileKeys, HeadMaker};
use state::{Saved, SealedDocs, StateDir};
use stream::{SourceError, Streamer};

/// What to send, and where.
#[derive(Clone, Debug, Default)]
pub struct SendRequest {
    /// The relay, `HOST:PORT`.
    pub relay: String,
    /// Recipient agencies.
    pub to: Vec<String>,
    /// Legal metadata.
    pub legal: LegalInput,
    /// Files and directories.
    pub paths: Vec<PathBuf>,
    /// Resume the interrupted send of this transfer id (no paths needed).
    pub resume: Option<String>,
    /// Discard an interrupted send of the same sources and start a new transfer.
    pub restart: bool,
}

/// A completed send.
#[derive(Clone, Debug)]
pub struct SendOutcome {
    /// The transfer id.
    pub transfer: TransferId,
    /// Files.
    pub files: usize,
    /// Ciphertext bytes of the transfer.
    pub bytes_total: u64,
    /// Bytes this run put on the wire (resends included).
    pub bytes_sent: u64,
    /// Bytes the relay already held when this run started.
    pub bytes_skipped: u64,
    /// Where the custody receipt was saved.
    pub receipt: PathBuf,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Names the state folder: the same sender, recipients, legal metadata and source paths find
/// the same folder; contents are checked separately (fingerprints).
fn outbox_key(
    sender: &AgencyId,
    recipients: &[AgencyId],
    legal: &rogatory_custody::Legal,
    sources: &[sources::Source],
) -> String {
    let mut h = Sha256::new();
    h.update(b"rogatory-outbox/v2\n");
    h.update(sender.as_str());
    for r in recipients {
        h.update(b"\nto ");
        h.update(r.as_str());
    }
    h.update(serde_json::to_vec(legal).unwrap_or_default());
    for s in sources {
        h.update(b"\n");
        h.update(s.rel.as_str());
        h.update(b"\0");
        h.update(s.path.as_os_str().as_encoded_bytes());
    }
    hex(&h.finalize()[..16])
}

/// `keys.age`: every file's key, 16 bytes each in file order, age-encrypted to the sender's
/// own key (`custody.md` §8.2): what lets this sender re-encrypt any piece byte for byte on a
/// resume or a repair, with one stanza per transfer instead of one in every file.
fn seal_file_keys(keys: &[FileKey], own: &AnyRecipient) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(keys.len() * 16));
    for k in keys {
        plain.extend_from_slice(k.expose_secret());
    }
    let failed = |e: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::Internal,
            format!("encrypting the file keys to this agency: {e}"),
        )
    };
    let enc = Encryptor::new(std::slice::from_ref(own)).map_err(|e| failed(&e))?;
    let mut out = Vec::with_capacity(plain.len() + 2048);
    let mut w = enc.wrap_output(&mut out).map_err(|e| failed(&e))?;
    w.write_all(&plain).map_err(|e| failed(&e))?;
    w.finish().map_err(|e| failed(&e))?;
    Ok(out)
}

/// Opens `keys.age` again with the agency's identities and compares it with the keys it was
/// made from, before the send state is saved: a `keys.age` that could not give them back would
/// only be found on a resume or a repair, too late.
fn check_file_keys(
    keys_age: &[u8],
    keys: &[FileKey],
    identities: &[rogatory_envelope::AnyIdentity],
) -> Result<()> {
    let back: Vec<FileKey> = stream::open_file_keys(keys_age, identities, keys.len())
        .map_err(|e| Error::new(ErrorKind::Internal, "the file keys do not read back").source(e))?;
    let same = back.iter().zip(keys).all(|(b, k)| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            &b.expose_secret()[..],
            &k.expose_secret()[..],
        ))
    });
    if !same {
        return Err(Error::new(
            ErrorKind::Internal,
            "the file keys read back differently",
        ));
    }
    Ok(())
}

/// A send set up and ready to stream.
struct Prepared {
    /// The headers still being made (`heads.rs`), if any. Before `state`: fields drop in
    /// order, and its threads must stop before the send's lock (in `state`) is let go.
    heads: Option<HeadMaker>,
    state: StateDir,
    offer: TransferOffer,
    /// All the legal metadata; the offer has the relay's part.
    legal: Legal,
    sources: Vec<sources::Source>,
    /// Every file's key, when known at the start (a new transfer, or a resume that makes
    /// headers again); otherwise read from `keys.age` when needed.
    keys: Option<FileKeys>,
}

/// `outbox/<key>.sent`, beside a send's state folder: written once the transfer is receipted,
/// so that a re-run of the same command finds the receipt instead of sending again.
fn marker_of(state: &StateDir) -> PathBuf {
    state.dir.with_extension("sent")
}

/// A marker's transfer and sources' digest (`<transfer> <digest>`), if it is one.
fn read_marker(path: &std::path::Path) -> Option<(TransferId, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (t, digest) = text.trim_end().split_once(' ')?;
    Some((t.parse().ok()?, digest.to_owned()))
}

/// Removes the markers that name `transfer` (its send's record purged, `docs/cli.md`
/// "Retention at the ends"): the home keeps no trace of its sources, and the same command run
/// again is a new send.
pub(crate) fn forget_sent(home: &Home, transfer: TransferId) -> Result<()> {
    let outbox = home.path("outbox");
    let rd = match std::fs::read_dir(&outbox) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("reading", &outbox, e)),
    };
    for entry in rd {
        let p = entry.map_err(|e| io("reading", &outbox, e))?.path();
        if p.extension().is_some_and(|x| x == "sent")
            && read_marker(&p).is_some_and(|(t, _)| t == transfer)
        {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io("removing", &p, e));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A new send checked locally, waiting for the relay's policy before anything is written or
/// offered (its key work, in memory, overlaps the handshake: [`key_files`]).
struct Checked {
    state: StateDir,
    identity: rogatory_custody::AgencyIdentity,
    recipients: Vec<AgencyId>,
    /// Who every file is encrypted to: the recipient agencies (`custody.md` §8.2).
    file_recipients: Vec<AnyRecipient>,
    /// The sender's own key of the same kind: its copy of the file keys (`keys.age`).
    own_recipient: AnyRecipient,
    legal: Legal,
    sources: Vec<sources::Source>,
}

/// What a send finds before it starts.
enum Found {
    /// Work to do.
    Send(Box<Prepared>),
    /// A new transfer, checked locally; it is created once the relay's policy is known.
    New(Box<Checked>),
    /// The same files were sent and receipted already.
    Already(SendOutcome),
}

/// Digest of the sources' names and fingerprints: what "the same files" means for a re-run.
fn sources_digest(sources: &[sources::Source]) -> String {
    let mut h = Sha256::new();
    h.update(postcard::to_stdvec(sources).unwrap_or_default());
    hex(&h.finalize())
}

/// A receipted transfer, described from what the home kept (`sent/`, `receipts/`).
fn already_sent(home: &Home, transfer: TransferId) -> Option<SendOutcome> {
    let receipt = home.path(&format!("receipts/{transfer}.custody-receipt"));
    let m = std::fs::read(sent_dir(home, &transfer).join("manifest.json")).ok()?;
    let m = rogatory_custody::Manifest::parse(&m).ok()?;
    (receipt.exists() && m.transfer_id == transfer).then(|| SendOutcome {
        transfer,
        files: m.files.len(),
        bytes_total: m.ciphertext_bytes(),
        bytes_sent: 0,
        bytes_skipped: m.ciphertext_bytes(),
        receipt,
    })
}

/// `custody.md` §8.3 "Age key": nothing is encrypted to a revoked age key. `age_recipients` are
/// the recipients' keys in the order of `recipients`, then the sender's own (last).
fn refuse_revoked_age_keys(
    store: &rogatory_custody::TrustStore,
    recipients: &[AgencyId],
    age_recipients: &[rogatory_envelope::AnyRecipient],
) -> Result<()> {
    let revocations = store.revocations();
    for (i, r) in age_recipients.iter().enumerate() {
        let key = rogatory_custody::Sha256Digest::of(r.to_string().as_bytes());
        let Some(rev) = revocations.get(rogatory_custody::KeyKind::Age, &key) else {
            continue;
        };
        let (whose, hint) = match recipients.get(i) {
            Some(agency) => (
                format!("recipient {agency}"),
                format!("ask {agency} for a card with a new age key and trust it"),
            ),
            None => (
                "this agency".to_owned(),
                "issue new keys with `rogatory agency rotate`".to_owned(),
            ),
        };
        return Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "the age key of {whose} was revoked at {} ({}): nothing is encrypted to it",
                rev.time, rev.reason
            ),
        )
        .hint(hint));
    }
    Ok(())
}

/// The trusted card of every recipient, in order.
fn recipient_cards<'a>(
    store: &'a rogatory_custody::TrustStore,
    recipients: &[AgencyId],
) -> Result<Vec<&'a rogatory_custody::AgencyCard>> {
    recipients
        .iter()
        .map(|r| {
            store.get(r).ok_or_else(|| {
                Error::new(ErrorKind::Usage, format!("recipient {r} is not trusted"))
                    .hint("add its card with `rogatory trust add CARD --fingerprint …` first")
            })
        })
        .collect()
}

/// Sets up a new send, or finds the interrupted (or completed) one of the same sources.
/// Everything that needs no relay is checked here, before connecting: the recipients, the
/// legal metadata and every source.
fn prepare(home: &Home, req: &SendRequest, dry: bool, on: &dyn Fn(&Event)) -> Result<Found> {
    let identity = home.identity()?;
    let store = home.trust_store()?;
    if req.to.is_empty() {
        return Err(Error::new(ErrorKind::Usage, "no recipient").hint("pass --to AGENCY"));
    }
    let mut recipients: Vec<AgencyId> = req
        .to
        .iter()
        .map(|t| parse_agency(t))
        .collect::<Result<_>>()?;
    recipients.sort();
    recipients.dedup();
    let cards = recipient_cards(&store, &recipients)?;
    // Hybrid post-quantum stanzas when every party has a hybrid key, X25519 otherwise; never
    // mixed. The files are encrypted to the recipients; the sender keeps their file keys,
    // encrypted to its own key, in the send state (`keys.age`), so it can resume.
    let (file_recipients, own_recipient) = rogatory_custody::file_recipients_for(&identity, &cards);
    refuse_revoked_age_keys(
        &store,
        &recipients,
        &rogatory_custody::age_recipients_for(&identity, &cards),
    )?;
    let legal = legal::legal(&req.legal)?;
    let mut failed = Vec::new();
    let sources = sources::collect(&req.paths, &mut failed)?;
    if !failed.is_empty() {
        let total = sources.len() + failed.len();
        on(&Event::Failed {
            failed: failed.clone(),
        });
        return Err(failures(failed.len(), total));
    }
    let key = outbox_key(identity.id(), &recipients, &legal, &sources);
    let mut state = StateDir::new(home.path(&format!("outbox/{key}")));
    if !dry {
        state.lock()?;
    }
    let marker = marker_of(&state);
    if !req.restart
        && !state.exists()
        && let Some((t, digest)) = read_marker(&marker)
        && digest == sources_digest(&sources)
        && let Some(done) = already_sent(home, t)
    {
        // A repair takes the lock of the folder it puts the kept state back in.
        state.unlock();
        if let Some(found) = repair_if_damaged(home, &req.relay, t, dry, on)? {
            return Ok(found);
        }
        on(&Event::Info {
            message: format!(
                "these files were already sent as transfer {t} and receipted; --restart sends them again as a new transfer"
            ),
        });
        return Ok(Found::Already(done));
    }
    if state.exists() {
        if req.restart {
            std::fs::remove_dir_all(&state.dir).map_err(|e| io("removing", &state.dir, e))?;
        } else {
            let saved = state.load()?;
            let offer = saved_offer(&saved)?;
            on(&Event::Info {
                message: format!("resuming transfer {}", offer.transfer_id),
            });
            return resumed(home, state, saved, offer, dry);
        }
    }
    Ok(Found::New(Box::new(Checked {
        state,
        identity,
        recipients,
        file_recipients,
        own_recipient,
        legal,
        sources,
    })))
}

/// A new transfer's file keys and `keys.age`, made in memory, and its headers being made
/// (nothing is written).
struct Keyed {
    keys: FileKeys,
    keys_age: Vec<u8>,
    /// The length of every header with its nonce (one was made to learn it).
    head_len: u64,
    heads: HeadMaker,
}

/// The length of a header (with its nonce) to `recipients`: the same for every file.
fn header_len(recipients: &[AnyRecipient]) -> Result<u64> {
    let mut one = Vec::new();
    heads::make_head(&FileKey::generate(), recipients, &mut one)
        .map_err(|e| Error::new(ErrorKind::Usage, "cannot encrypt to the recipients").source(e))?;
    Ok(one.len() as u64)
}

fn start_heads(
    from: u32,
    keys: &FileKeys,
    recipients: &[AnyRecipient],
    head_len: u64,
) -> Result<HeadMaker> {
    HeadMaker::start(
        from,
        Arc::clone(keys),
        recipients.to_vec(),
        head_len as usize,
    )
    .map_err(|e| Error::new(ErrorKind::Internal, "starting the header threads").source(e))
}

/// The key work of a new transfer: fresh file keys, sealed to this agency and read back, and
/// the per-file public-key work (every header) started on worker threads (`heads.rs`). It
/// needs nothing from the relay, so [`send`] starts it while the connection is set up; the
/// headers go on being made while the upload runs.
fn key_files(c: &Checked) -> Result<Keyed> {
    let keys: FileKeys = FileKey::generate_many(c.sources.len());
    let keys_age = seal_file_keys(&keys, &c.own_recipient)?;
    check_file_keys(&keys_age, &keys, &c.identity.age_identities())?;
    let head_len = header_len(&c.file_recipients)?;
    let heads = start_heads(0, &keys, &c.file_recipients, head_len)?;
    Ok(Keyed {
        keys,
        keys_age,
        head_len,
        heads,
    })
}

/// Creates a new transfer once the relay's policy is known (`protocol.md` §6.0): its required
/// legal fields are checked before anything is written or offered, and they are the only ones
/// the offer shows.
fn create(c: Checked, keyed: Keyed, policy: &PublishedPolicy) -> Result<Prepared> {
    let Checked {
        state,
        identity,
        recipients,
        legal,
        sources,
        ..
    } = c;
    legal::check_required(&legal, &policy.require)?;
    if state.dir.exists() {
        // An earlier run died before its state was complete: nothing was offered from it.
        std::fs::remove_dir_all(&state.dir).map_err(|e| io("removing", &state.dir, e))?;
    }
    let Keyed {
        keys,
        keys_age,
        head_len,
        heads,
    } = keyed;
    let transfer = TransferId::generate();
    let now = Timestamp::from_datetime(time::OffsetDateTime::now_utc());
    let files = sources
        .iter()
        .map(|s| OfferedFile {
            size: s.fp.size,
            ciphertext_size: head_len + rogatory_envelope::payload_len(s.fp.size),
        })
        .collect();
    // The relay sees only the legal fields its policy asks for (and retention); the rest
    // travels in the encrypted contents (`custody.md` §5.4).
    let offer = TransferOffer::new(
        transfer,
        identity.id().clone(),
        recipients,
        now,
        legal.public(&policy.require),
        files,
    )
    .map_err(|e| Error::new(ErrorKind::Usage, "the transfer is not valid").source(e))?;
    let json = String::from_utf8(offer.to_json())
        .map_err(|_| Error::new(ErrorKind::Internal, "offer is not UTF-8"))?;
    let out = state.create(
        &Saved {
            version: state::STATE_VERSION,
            offer: json,
            legal: String::from_utf8(serde_json::to_vec(&legal).unwrap_or_default())
                .unwrap_or_default(),
            sources: sources.clone(),
        },
        &keys_age,
    )?;
    heads.attach(out);
    Ok(Prepared {
        state,
        offer,
        legal,
        sources,
        keys: Some(keys),
        heads: Some(heads),
    })
}

/// An interrupted send found again: its sources must be unchanged. Headers it had not made
/// durable when it stopped are made again (`heads.rs`), to the recipients' current keys (a
/// revoked one refused): their files were never sent. A dry run (`dry`) only looks.
fn resumed(
    home: &Home,
    state: StateDir,
    saved: Saved,
    offer: TransferOffer,
    dry: bool,
) -> Result<Found> {
    state.require_keys(saved.version)?;
    sources::check_unchanged(&saved.sources)?;
    let legal: Legal = serde_json::from_str(&saved.legal).map_err(|e| {
        Error::new(ErrorKind::Integrity, "the saved legal metadata is damaged").source(e)
    })?;
    let (keys, heads) = if saved.version >= state::STATE_VERSION && !dry {
        resume_heads(home, &state, &offer)?
    } else {
        // Earlier versions wrote every header before the offer.
        (None, None)
    };
    Ok(Found::Send(Box::new(Prepared {
        state,
        offer,
        legal,
        sources: saved.sources,
        keys,
        heads,
    })))
}

/// The headers of an interrupted send: those in `heads.bin` that open with their saved key
/// (`keys.age`), in file order up to the first that does not (a batch being written when the
/// send stopped), are kept; the rest, whose files were not sent, are made again to the same
/// keys.
fn resume_heads(
    home: &Home,
    state: &StateDir,
    offer: &TransferOffer,
) -> Result<(Option<FileKeys>, Option<HeadMaker>)> {
    let layouts = offer.layouts();
    let n = layouts.len();
    let Some(head_len) = layouts.first().map(|l| l.head_len) else {
        return Ok((None, None));
    };
    let damaged = |m: String| {
        Error::new(
            ErrorKind::Integrity,
            format!("{}: {m}", state.dir.display()),
        )
        .hint("send again with --restart to start a new transfer")
    };
    if layouts.iter().any(|l| l.head_len != head_len) {
        return Err(damaged("the saved offer's headers differ in length".into()));
    }
    let keys_age = match state.keys_age() {
        Ok(Some(b)) => b,
        Ok(None) => return Err(damaged("the send state has no keys.age".into())),
        Err(e) => return Err(io("reading", &state.path("keys.age"), e)),
    };
    let keys: FileKeys = stream::open_file_keys(&keys_age, &home.age_identities()?, n)
        .map_err(|e| damaged(e.to_string()))?;
    let path = state.path("heads.bin");
    let mut saved = std::io::BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(&path).map_err(|e| io("reading", &path, e))?,
    );
    let mut head = vec![0u8; head_len as usize];
    let mut ready = 0;
    while ready < n {
        match std::io::Read::read_exact(&mut saved, &mut head) {
            Ok(()) => {}
            // The end of what was written: a torn record, or none.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io("reading", &path, e)),
        }
        // The MAC covers the header, not the nonce after it: a record whose nonce was torn is
        // kept, made durable below before it is used, and its file was never sent, so any
        // nonce serves.
        let header = &head[..head.len().saturating_sub(16)];
        let opens = rogatory_envelope::Decryptor::new(header)
            .is_ok_and(|d| d.header().verify_mac(&keys[ready]));
        if !opens {
            break;
        }
        ready += 1;
    }
    if ready == n {
        // Made durable now: the last run may have died between writing and syncing them.
        drop(state.truncate_heads(ready as u64 * head_len)?);
        return Ok((Some(keys), None));
    }
    if state.sealed().is_some() {
        // Sealed (or kept for a repair): every file was sent, with the header it has here.
        return Err(damaged(format!(
            "the saved header of file {ready} does not open with its key, and the transfer was sealed with it"
        )));
    }
    let identity = home.identity()?;
    let store = home.trust_store()?;
    let cards = recipient_cards(&store, &offer.recipients)?;
    let (recipients, _) = rogatory_custody::file_recipients_for(&identity, &cards);
    refuse_revoked_age_keys(
        &store,
        &offer.recipients,
        &rogatory_custody::age_recipients_for(&identity, &cards),
    )?;
    if header_len(&recipients)? != head_len {
        return Err(Error::new(
            ErrorKind::Usage,
            "a recipient's key changed kind since this send began",
        )
        .hint("send again with --restart to start a new transfer"));
    }
    let out = state.truncate_heads(ready as u64 * head_len)?;
    let heads = start_heads(ready as u32, &keys, &recipients, head_len)?;
    heads.attach(out);
    Ok((Some(keys), Some(heads)))
}

/// A receipted transfer found again: if the relay reports its ciphertext lost or damaged
/// (`relay.md` §10), the state kept under `sent/<transfer>/` goes back under `outbox/<key>/` and
/// the send resumes from it, re-sending what the relay lacks. A relay that cannot be asked
/// leaves the transfer as it was (receipted), with a note.
fn repair_if_damaged(
    home: &Home,
    relay: &str,
    t: TransferId,
    dry: bool,
    on: &dyn Fn(&Event),
) -> Result<Option<Found>> {
    use crate::status::{StatusRequest, TransferState, status};
    let st = match status(
        home,
        &StatusRequest {
            relay: relay.to_owned(),
            transfer: t.to_string(),
        },
    ) {
        Ok(st) => st,
        Err(e) => {
            on(&Event::Info {
                message: format!(
                    "could not ask the relay whether it still holds transfer {t}: {e}"
                ),
            });
            return Ok(None);
        }
    };
    if st.state != TransferState::Damaged {
        return Ok(None);
    }
    if dry {
        on(&Event::Info {
            message: format!(
                "the relay reports transfer {t} damaged (ciphertext lost at rest); running the command re-sends what it lacks"
            ),
        });
        return Ok(None);
    }
    let sent = sent_dir(home, &t);
    let kept = StateDir::new(sent.clone());
    if !kept.exists() || !kept.path("heads.bin").exists() {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "the relay reports transfer {t} damaged, and this home kept no headers to re-send it from"
            ),
        )
        .hint("send the files again with --restart, as a new transfer"));
    }
    let saved = kept.load()?;
    let offer = TransferOffer::parse(saved.offer.as_bytes())
        .map_err(|e| Error::new(ErrorKind::Integrity, "the kept offer is damaged").source(e))?;
    if offer.transfer_id != t {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!("{}: the kept state is of another transfer", sent.display()),
        ));
    }
    // The folder a re-run of the same command finds: named by all the legal metadata (the
    // offer has only the relay's part).
    let legal: Legal = serde_json::from_str(&saved.legal).map_err(|e| {
        Error::new(ErrorKind::Integrity, "the kept legal metadata is damaged").source(e)
    })?;
    let key = outbox_key(&offer.sender, &offer.recipients, &legal, &saved.sources);
    let mut state = StateDir::new(home.path(&format!("outbox/{key}")));
    state.lock()?;
    if state.exists() {
        let other = state.load()?;
        if TransferOffer::parse(other.offer.as_bytes()).map(|o| o.transfer_id) != Ok(t) {
            return Err(Error::new(
                ErrorKind::Safety,
                format!(
                    "{}: another send of these files is interrupted; finish it first",
                    state.dir.display()
                ),
            ));
        }
    } else {
        if state.dir.exists() {
            std::fs::remove_dir_all(&state.dir).map_err(|e| io("removing", &state.dir, e))?;
        }
        state.restore(&sent)?;
    }
    on(&Event::Info {
        message: format!(
            "the relay reports transfer {t} damaged (ciphertext lost at rest); re-sending what it lacks"
        ),
    });
    resumed(home, state, saved, offer, false).map(Some)
}

fn failures(n: usize, total: usize) -> Error {
    Error::new(
        ErrorKind::Usage,
        format!("{n} of {total} files cannot be sent; nothing was sent"),
    )
    .hint("fix or leave out the files listed above and run the same command again")
}

/// The offer a send's state saved.
fn saved_offer(saved: &Saved) -> Result<TransferOffer> {
    TransferOffer::parse(saved.offer.as_bytes())
        .map_err(|e| Error::new(ErrorKind::Integrity, "the saved offer is damaged").source(e))
}

/// The interrupted send of transfer `id` under `outbox/` (`send --resume`), or its outcome if it
/// completed.
fn find_interrupted(
    home: &Home,
    id: &str,
    relay: &str,
    dry: bool,
    on: &dyn Fn(&Event),
) -> Result<Found> {
    let t: TransferId = id
        .parse()
        .map_err(|_| Error::new(ErrorKind::Usage, format!("{id:?} is not a transfer id")))?;
    if let Some(done) = already_sent(home, t) {
        if let Some(found) = repair_if_damaged(home, relay, t, dry, on)? {
            return Ok(found);
        }
        return Ok(Found::Already(done));
    }
    let outbox = home.path("outbox");
    let dirs = std::fs::read_dir(&outbox).map_err(|e| {
        Error::new(
            ErrorKind::Usage,
            format!("no sends in {}", outbox.display()),
        )
        .source(e)
    })?;
    for e in dirs.flatten() {
        let state = StateDir::new(e.path());
        if !state.exists() {
            continue;
        }
        let Ok(saved) = state.load() else { continue };
        let Ok(offer) = TransferOffer::parse(saved.offer.as_bytes()) else {
            continue;
        };
        if offer.transfer_id == t {
            if dry {
                return resumed(home, state, saved, offer, true);
            }
            let mut state = state;
            state.lock()?;
            // Read again under the lock: another run may have finished or replaced it meanwhile.
            if let Some(done) = already_sent(home, t) {
                return Ok(Found::Already(done));
            }
            let saved = state.load()?;
            let offer = saved_offer(&saved)?;
            if offer.transfer_id != t {
                break;
            }
            return resumed(home, state, saved, offer, false);
        }
    }
    Err(Error::new(
        ErrorKind::Usage,
        format!("transfer {t} is not in {}", outbox.display()),
    )
    .hint("a completed send keeps only its manifest, seal and receipts (sent/, receipts/)"))
}

/// The upload's failure as the user sees it: a changed source is a safety refusal (exit 8).
fn upload_error(e: NetError) -> Error {
    if let NetError::Source(io_err) = &e {
        if let Some(se) = io_err
            .get_ref()
            .and_then(|x| x.downcast_ref::<SourceError>())
        {
            return match se {
                SourceError::Changed(m) => Error::new(ErrorKind::Safety, m.clone()).hint(
                    "a transfer never mixes two versions of a file: send again with --restart to start a new transfer of the current content (the relay collects the partial upload)",
                ),
                SourceError::State(m) => Error::new(ErrorKind::Integrity, format!("send state: {m}"))
                    .hint("send again with --restart to start a new transfer"),
                SourceError::Storage(m) => Error::new(ErrorKind::Storage, format!("send state: {m}"))
                    .hint("make room (or fix the disk) and run the same command again: it resumes"),
                SourceError::Internal(m) => Error::new(ErrorKind::Internal, format!("send: {m}"))
                    .hint("run the same command again: it resumes"),
            };
        }
        return Error::new(ErrorKind::Storage, "reading the sources")
            .source(io::Error::new(io_err.kind(), io_err.to_string()));
    }
    net("upload", e)
}

/// Closes a send's connection when it is dropped, on an early return too (`Node::close`).
struct Closing<'a> {
    rt: &'a tokio::runtime::Runtime,
    node: &'a rogatory_transport::net::Node,
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.rt
            .block_on(self.node.close(rogatory_transport::ErrorCode::NO_ERROR));
    }
}

/// What a send would do (`send --dry-run`): every file and its size, the legal metadata, and
/// which of it the relay would see (its published policy, `protocol.md` §6.0) and which only the
/// recipients (`custody.md` §5.4). Nothing is encrypted, offered or written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    /// The recipients.
    pub recipients: Vec<String>,
    /// `(relative path, plaintext size)` of every file, as the recipients will see them.
    pub files: Vec<(String, u64)>,
    /// Plaintext bytes in all.
    pub bytes: u64,
    /// All the legal metadata (what the recipients see).
    pub legal: Legal,
    /// The part the relay sees in the clear (with the sizes, sender and recipients).
    pub relay_sees: Legal,
    /// The legal fields the relay's policy requires.
    pub relay_requires: Vec<String>,
    /// A send of these files that already exists: receipted, or interrupted and resumable.
    pub existing: Option<String>,
}

/// Checks a send as [`send`] would, then describes it instead of doing it (`send --dry-run`).
pub fn plan(home: &Home, req: &SendRequest, on: &(dyn Fn(&Event) + Sync)) -> Result<Plan> {
    let found = match &req.resume {
        Some(id) => find_interrupted(home, id, &req.relay, true, on)?,
        None => prepare(home, req, true, on)?,
    };
    let rt = crate::runtime()?;
    let policy = rt.block_on(async {
        let (node, s) = crate::connect_reporting(home, &req.relay, on).await?;
        on(&Event::Connected {
            relay_agency: s.peer.agency.to_string(),
            tls_key_exchange: s
                .key_exchange_group()
                .map(rogatory_transport::kx::group_name),
        });
        let p = s.policy.clone();
        node.close(rogatory_transport::ErrorCode::NO_ERROR).await;
        Ok::<_, Error>(p)
    })?;
    let of_sources = |sources: &[sources::Source]| -> Vec<(String, u64)> {
        sources
            .iter()
            .map(|s| (s.rel.as_str().to_owned(), s.fp.size))
            .collect()
    };
    let (recipients, files, legal, relay_sees, existing) = match found {
        Found::New(c) => {
            legal::check_required(&c.legal, &policy.require)?;
            let relay_sees = c.legal.public(&policy.require);
            (
                c.recipients,
                of_sources(&c.sources),
                c.legal,
                relay_sees,
                None,
            )
        }
        Found::Send(p) => (
            p.offer.recipients.clone(),
            of_sources(&p.sources),
            p.legal.clone(),
            p.offer.legal.clone(),
            Some(format!(
                "transfer {} is interrupted; running the command resumes it",
                p.offer.transfer_id
            )),
        ),
        Found::Already(done) => {
            let m = std::fs::read(sent_dir(home, &done.transfer).join("manifest.json"))
                .ok()
                .and_then(|m| rogatory_custody::Manifest::parse(&m).ok());
            return Ok(Plan {
                recipients: m
                    .as_ref()
                    .map(|m| m.recipients.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                files: Vec::new(),
                bytes: 0,
                legal: legal::legal(&req.legal)?,
                relay_sees: m.map(|m| m.legal).unwrap_or_else(legal::empty),
                relay_requires: policy.require,
                existing: Some(format!(
                    "these files were already sent as transfer {} and receipted",
                    done.transfer
                )),
            });
        }
    };
    Ok(Plan {
        recipients: recipients.iter().map(ToString::to_string).collect(),
        bytes: files.iter().map(|(_, n)| n).sum(),
        files,
        legal,
        relay_sees,
        relay_requires: policy.require,
        existing,
    })
}

/// Sends files to recipients through a relay and returns once the custody receipt is verified
/// and saved. `on` sees progress as it happens.
///
/// ```no_run
/// use rogatory_client::{Home, send::{SendRequest, LegalInput, send}};
///
/// let home = Home::resolve(None)?;
/// let req = SendRequest {
///     relay: "127.0.0.1:4433".into(),
///     to: vec!["agency-b".into()],
///     legal: LegalInput { case: Some("XX-2026-0042".into()), ..Default::default() },
///     paths: vec!["case-42".into()],
///     ..Default::default()
/// };
/// let done = send(&home, &req, &|e| eprintln!("{e:?}"))?;
/// println!("receipt {}", done.receipt.display());
/// # Ok::<(), rogatory_client::Error>(())
/// ```
pub fn send(home: &Home, req: &SendRequest, on: &(dyn Fn(&Event) + Sync)) -> Result<SendOutcome> {
    // Local checks first; then the relay's WELCOME says which legal fields its policy requires,
    // which are checked before anything is written or offered and are the only ones it sees
    // (`protocol.md` §6.0).
    let found = match &req.resume {
        Some(id) => find_interrupted(home, id, &req.relay, false, on)?,
        None => prepare(home, req, false, on)?,
    };
    let found = match found {
        Found::Already(done) => return Ok(done),
        Found::Send(p) => Ok(p),
        Found::New(c) => Err(c),
    };
    let rt = crate::runtime()?;
    let relay = req.relay.clone();
    // A new transfer's key work overlaps the handshake; the relay's policy is still checked
    // before anything is written or offered (`create`).
    let (connected, found) = std::thread::scope(|sc| match found {
        Ok(p) => (
            rt.block_on(crate::connect_reporting(home, &relay, on)),
            Ok(p),
        ),
        Err(c) => {
            let keyed = sc.spawn(move || key_files(&c).map(|k| (c, k)));
            let connected = rt.block_on(crate::connect_reporting(home, &relay, on));
            let keyed = keyed
                .join()
                .unwrap_or_else(|_| Err(Error::new(ErrorKind::Internal, "the key thread failed")));
            (connected, Err(keyed))
        }
    });
    let (node, session) = connected?;
    // Whatever fails from here on, the relay is told the connection is over.
    let closing = Closing {
        rt: &rt,
        node: &node,
    };
    on(&Event::Connected {
        relay_agency: session.peer.agency.to_string(),
        tls_key_exchange: session
            .key_exchange_group()
            .map(rogatory_transport::kx::group_name),
    });
    // The session stays up while the transfer is created: the runtime's workers keep it alive.
    let p = match found {
        Ok(p) => p,
        Err(keyed) => {
            let (c, k) = keyed?;
            Box::new(create(*c, k, &session.policy)?)
        }
    };
    let marker = marker_of(&p.state);
    let digest = sources_digest(&p.sources);
    let identity = home.identity()?;
    let store = home.trust_store()?;
    // Retired identities too (`custody.md` §8.5): a send resumed after a key rotation.
    let age_identities = home.age_identities()?;
    if age_identities.is_empty() {
        return Err(Error::new(
            ErrorKind::NoKey,
            "this home has no age identity (a relay-only home cannot send)",
        ));
    }
    let layouts = p.offer.layouts();
    let total: u64 = layouts.iter().map(|l| l.ciphertext_size).sum();
    let transfer = p.offer.transfer_id;
    let nfiles = layouts.len();
    on(&Event::Start {
        transfer_id: transfer,
        files: nfiles,
        bytes_total: total,
    });
    let offer_frame = Offer {
        transfer,
        offer: String::from_utf8(p.offer.to_json())
            .map_err(|_| Error::new(ErrorKind::Internal, "offer is not UTF-8"))?,
    };
    let rels: Vec<String> = p
        .sources
        .iter()
        .map(|s| s.rel.as_str().to_owned())
        .collect();
    // The contents are encrypted to the recipients and to the sender (the files: to the
    // recipients only, `custody.md` §8.2).
    let cards = recipient_cards(&store, &p.offer.recipients)?;
    let contents_to = rogatory_custody::age_recipients_for(&identity, &cards);
    let mut streamer = Streamer::new(
        p.state,
        p.offer,
        p.sources,
        age_identities,
        stream::Sealing {
            signer: identity.signer().clone(),
            legal: p.legal,
            contents_to,
        },
        p.keys,
        p.heads,
    )
    .map_err(|e| Error::new(ErrorKind::Storage, "opening the send state").source(e))?;
    let result = rt.block_on(async {
        let mut last = Instant::now() - Duration::from_secs(1);
        let out = upload(
            &session,
            &offer_frame,
            layouts,
            UploadConfig::default(),
            &mut streamer,
            |e| match e {
                UploadEvent::Accepted { skipped, .. } if *skipped > 0 => on(&Event::Info {
                    message: format!("the relay already holds {skipped} bytes"),
                }),
                UploadEvent::Progress { durable, total }
                    if last.elapsed() >= Duration::from_millis(100) || durable == total =>
                {
                    last = Instant::now();
                    on(&Event::Progress {
                        bytes_done: *durable,
                        bytes_total: *total,
                    });
                }
                UploadEvent::FileDurable(i) => on(&Event::FileDone {
                    path: rels.get(*i as usize).cloned().unwrap_or_default(),
                }),
                _ => {}
            },
        )
        .await;
        // `custody.md` §7.2: the custody receipt proven consistent with what this home holds,
        // online, and its checkpoint kept, so that `verify` compares it offline later.
        let checked = match &out {
            Ok(o) => crate::checkpoints::confirm_receipt(home, &session, &o.receipt.text).await,
            Err(_) => Ok(()),
        };
        let out = out.map_err(upload_error)?;
        checked?;
        Ok::<_, Error>((out, session.peer.agency.clone()))
    });
    drop(closing);
    let (outcome, relay_agency) = result?;
    let state = streamer.into_state();
    let Some(SealedDocs {
        manifest: manifest_json,
        seal,
        ..
    }) = state.sealed()
    else {
        return Err(Error::new(
            ErrorKind::Internal,
            "receipted without a saved seal",
        ));
    };
    // The receipt must verify with the relay agency's card and match what we sealed.
    let card = store.chain(&relay_agency).ok_or_else(|| {
        Error::new(
            ErrorKind::Integrity,
            format!("no card for relay agency {relay_agency}"),
        )
    })?;
    let bundle = ReceiptBundle::parse(&outcome.receipt.text).map_err(|e| {
        Error::new(ErrorKind::Integrity, "the custody receipt is malformed").source(e)
    })?;
    let (logged, _) = bundle.verify_chains(card, card).map_err(|e| {
        Error::new(ErrorKind::Integrity, "the custody receipt does not verify").source(e)
    })?;
    let ok = match &logged.statement {
        Statement::CustodyReceipt {
            head,
            sender,
            manifest_sha256,
            seal_sha256,
            ..
        } => {
            head.transfer == transfer
                && sender == identity.id()
                && *manifest_sha256 == Sha256Digest::of(manifest_json.as_bytes())
                && *seal_sha256 == rogatory_custody::note_text_digest(seal.as_bytes())
        }
        _ => false,
    };
    if !ok {
        return Err(Error::new(
            ErrorKind::Integrity,
            "the custody receipt does not describe this transfer",
        ));
    }
    // `custody.md` §7.2: its checkpoint against those this home verified from the relay.
    crate::checkpoints::check_receipt(home, &home.trust_store()?, &outcome.receipt.text)?;
    let rpath = home.path(&format!("receipts/{transfer}.custody-receipt"));
    write_file(&rpath, outcome.receipt.text.as_bytes(), 0o644, true)?;
    // The marker first: a run that stops between the two finds the state and resumes it (the
    // relay answers with the same receipt); the other way round it would find neither and send
    // the files again as a new transfer.
    write_file(
        &marker,
        format!("{transfer} {digest}\n").as_bytes(),
        0o600,
        true,
    )?;
    state.finish(&sent_dir(home, &transfer))?;
    Ok(SendOutcome {
        transfer,
        files: nfiles,
        bytes_total: total,
        bytes_sent: outcome.stats.bytes_sent,
        bytes_skipped: outcome.stats.bytes_skipped,
        receipt: rpath,
    })
}

/// Where a completed send keeps its manifest and seal.
pub fn sent_dir(home: &Home, transfer: &TransferId) -> PathBuf {
    home.path(&format!("sent/{transfer}"))
}
