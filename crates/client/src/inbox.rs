//! What awaits this agency at a relay (`docs/cli.md` "Receiving", `protocol.md` §6.3
//! INBOX_REQUEST → INBOX): every transfer of which it is a recipient, oldest first.

use std::sync::Arc;

use rogatory_custody::{Legal, Manifest, TrustStore};
use rogatory_envelope::AnyIdentity;
use rogatory_transport::ErrorCode;
use rogatory_transport::frame::{self, Frame, Object};
use rogatory_transport::net::Session;

pub use rogatory_transport::frame::{InboxEntry, TransferState};

use crate::error::{Error, ErrorKind, Result, net, refused};
use crate::fetch::download::small_object;
use crate::home::Home;

/// One transfer awaiting this agency, with the legal metadata it was sent under.
#[derive(Clone, Debug)]
pub struct InboxItem {
    /// What the relay says about it.
    pub entry: InboxEntry,
    /// All the legal metadata, from the contents (`custody.md` §5.4) under the sender's verified
    /// seal; `None` if they could not be opened (see `problem`).
    pub legal: Option<Legal>,
    /// Why the legal metadata are not shown (sender not trusted, seal or contents do not
    /// verify, no age identity in this home).
    pub problem: Option<String>,
}

/// Transfers whose metadata are opened at once.
const PARALLEL: usize = 8;

/// Whose inbox: this home's agency's, at `relay`.
#[derive(Clone, Debug, Default)]
pub struct InboxRequest {
    /// The relay, `HOST:PORT`.
    pub relay: String,
}

/// Lists the transfers awaiting this home's agency at the relay, oldest first (every page of
/// the relay's answer), each with the legal metadata the recipient may see: the sender's seal
/// is verified and the contents decrypted (`custody.md` §5.4), which costs three small requests
/// per transfer and one download of its contents (about 150 bytes per file).
///
/// ```no_run
/// use rogatory_client::{Home, inbox::{InboxRequest, inbox}};
///
/// let home = Home::resolve(None)?;
/// for i in inbox(&home, &InboxRequest { relay: "127.0.0.1:4433".into() })? {
///     let case = i.legal.as_ref().and_then(|l| l.case_reference.as_ref());
///     println!("{} from {}: {} files, case {case:?}", i.entry.transfer, i.entry.sender, i.entry.files);
/// }
/// # Ok::<(), rogatory_client::Error>(())
/// ```
pub fn inbox(home: &Home, req: &InboxRequest) -> Result<Vec<InboxItem>> {
    let store = Arc::new(home.trust_store()?);
    // Retired identities too (`custody.md` §8.5).
    let identities: Arc<Vec<AnyIdentity>> = Arc::new(home.age_identities()?);
    let rt = crate::runtime()?;
    rt.block_on(async {
        let (node, s) = crate::connect(home, &req.relay).await?;
        let e = match entries(&s).await {
            Ok(e) => e,
            Err(e) => {
                node.close(ErrorCode::NO_ERROR).await;
                return Err(e);
            }
        };
        // Each transfer's seal, manifest and contents, a few at a time.
        let mut items: Vec<Option<InboxItem>> = vec![None; e.len()];
        let mut set = tokio::task::JoinSet::new();
        let mut next = 0;
        loop {
            while next < e.len() && set.len() < PARALLEL {
                let (s, store, ids, entry) = (
                    s.clone(),
                    store.clone(),
                    identities.clone(),
                    e[next].clone(),
                );
                let i = next;
                set.spawn(async move {
                    let opened = legal_of(&s, &store, &ids, &entry).await;
                    (i, entry, opened)
                });
                next += 1;
            }
            let Some(done) = set.join_next().await else {
                break;
            };
            let (i, entry, opened) = done
                .map_err(|e| Error::new(ErrorKind::Internal, "inbox: a task failed").source(e))?;
            let (legal, problem) = match opened {
                Ok(l) => (Some(l), None),
                Err(e) => (None, Some(e.to_string())),
            };
            items[i] = Some(InboxItem {
                entry,
                legal,
                problem,
            });
        }
        node.close(ErrorCode::NO_ERROR).await;
        Ok(items.into_iter().flatten().collect())
    })
}

/// The legal metadata of one transfer: the manifest under the sender's verified seal, joined
/// with its decrypted contents.
async fn legal_of(
    s: &Session,
    store: &TrustStore,
    identities: &[AnyIdentity],
    e: &InboxEntry,
) -> Result<Legal> {
    let t = e.transfer;
    let seal = small_object(s, t, Object::Seal).await?;
    let manifest_json = small_object(s, t, Object::Manifest).await?;
    let claimed = Manifest::parse(&manifest_json)
        .map_err(|e| Error::new(ErrorKind::Integrity, format!("{t}: bad manifest")).source(e))?;
    let card = store.chain(&claimed.sender).ok_or_else(|| {
        Error::new(
            ErrorKind::Integrity,
            format!("sender {} is not trusted", claimed.sender),
        )
    })?;
    // Any key of the sender's card chain (`custody.md` §8.5).
    let (sealed, _) = card
        .open_sealed_manifest(&manifest_json, &seal)
        .map_err(|e| {
            Error::new(ErrorKind::Integrity, "the sender's seal does not verify").source(e)
        })?;
    let contents = small_object(s, t, Object::Contents).await?;
    let (inventory, _) = crate::contents::open(t, &sealed.manifest, &contents, identities)?;
    Ok(inventory.legal)
}

/// The whole inbox over an open session, page after page.
pub(crate) async fn entries(s: &Session) -> Result<Vec<InboxEntry>> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let (mut w, mut r) = s.open().await.map_err(|e| net("inbox", e))?;
        w.send(&Frame::InboxRequest(frame::InboxRequest { after }))
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
                return Err(Error::new(
                    ErrorKind::Refused,
                    format!("inbox: unexpected {} frame", other.ty().name()),
                ));
            }
        }
    }
}
