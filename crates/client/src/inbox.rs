//! What awaits this agency at a relay (`docs/cli.md` "Receiving", `protocol.md` §6.3
//! INBOX_REQUEST → INBOX): every transfer of which it is a recipient, oldest first.

use rogatory_transport::ErrorCode;
use rogatory_transport::frame::{self, Frame};
use rogatory_transport::net::Session;

pub use rogatory_transport::frame::{InboxEntry, TransferState};

use crate::error::{Error, ErrorKind, Result, net, refused};
use crate::home::Home;

/// Whose inbox: this home's agency's, at `relay`.
#[derive(Clone, Debug, Default)]
pub struct InboxRequest {
    /// The relay, `HOST:PORT`.
    pub relay: String,
}

/// Lists the transfers awaiting this home's agency at the relay, oldest first (every page of
/// the relay's answer).
///
/// ```no_run
/// use rogatory_client::{Home, inbox::{InboxRequest, inbox}};
///
/// let home = Home::resolve(None)?;
/// for e in inbox(&home, &InboxRequest { relay: "127.0.0.1:4433".into() })? {
///     println!("{} from {}: {} files", e.transfer, e.sender, e.files);
/// }
/// # Ok::<(), rogatory_client::Error>(())
/// ```
pub fn inbox(home: &Home, req: &InboxRequest) -> Result<Vec<InboxEntry>> {
    let rt = crate::runtime()?;
    rt.block_on(async {
        let (_node, s) = crate::connect(home, &req.relay).await?;
        let e = entries(&s).await;
        s.close(ErrorCode::NO_ERROR, "done");
        e
    })
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
