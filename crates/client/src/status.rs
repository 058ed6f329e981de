//! A transfer's state at the relay (`docs/cli.md` "Sending", `protocol.md` §6.3
//! STATUS_REQUEST → STATUS), for its sender or a recipient.

use rogatory_custody::TransferId;
use rogatory_transport::ErrorCode;
use rogatory_transport::frame::{self, Frame};

pub use rogatory_transport::frame::{Receipt, ReceiptKind, TransferState};

use crate::error::{Error, ErrorKind, Result, net, refused};
use crate::home::Home;

/// Which transfer, at which relay.
#[derive(Clone, Debug, Default)]
pub struct StatusRequest {
    /// The relay, `HOST:PORT`.
    pub relay: String,
    /// The transfer id.
    pub transfer: String,
}

/// What the relay says about a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferStatus {
    /// The transfer.
    pub transfer: TransferId,
    /// Its state.
    pub state: TransferState,
    /// Durable piece count per file.
    pub durable: Vec<u64>,
    /// Receipts issued so far (custody, delivery, purge, rejection).
    pub receipts: Vec<Receipt>,
    /// The TLS key-exchange group the connection negotiated (`protocol.md` §2).
    pub tls_key_exchange: Option<String>,
}

/// Asks the relay for a transfer's state and receipts.
///
/// ```no_run
/// use rogatory_client::{Home, status::{StatusRequest, status}};
///
/// let home = Home::resolve(None)?;
/// let st = status(&home, &StatusRequest {
///     relay: "127.0.0.1:4433".into(),
///     transfer: "0123456789abcdef0123456789abcdef".into(),
/// })?;
/// println!("{:?}, {} receipts", st.state, st.receipts.len());
/// # Ok::<(), rogatory_client::Error>(())
/// ```
pub fn status(home: &Home, req: &StatusRequest) -> Result<TransferStatus> {
    let t: TransferId = req.transfer.parse().map_err(|_| {
        Error::new(
            ErrorKind::Usage,
            format!("{:?} is not a transfer id", req.transfer),
        )
    })?;
    let rt = crate::runtime()?;
    let (frame, tls_key_exchange) = rt.block_on(async {
        let (node, s) = crate::connect(home, &req.relay).await?;
        let (mut w, mut r) = s.open().await.map_err(|e| net("status", e))?;
        w.send(&Frame::StatusRequest(frame::StatusRequest { transfer: t }))
            .await
            .map_err(|e| net("status", e))?;
        w.finish();
        let f = r.expect().await.map_err(|e| net("status", e))?;
        let f = rogatory_transport::net::owned(f)
            .ok_or_else(|| Error::new(ErrorKind::Refused, "unexpected answer"))?;
        // `custody.md` §7.2: every receipt of the answer is proven consistent online with what
        // this home holds (its checkpoint kept, so `verify` compares it offline later).
        if let Frame::Status(st) = &f {
            for r in &st.receipts {
                crate::checkpoints::confirm_receipt(home, &s, &r.text).await?;
            }
        }
        // The key-exchange group this live connection negotiated (docs/protocol.md §2).
        let kx = s
            .key_exchange_group()
            .map(rogatory_transport::kx::group_name);
        node.close(ErrorCode::NO_ERROR).await;
        Ok::<_, Error>((f, kx))
    })?;
    match frame {
        Frame::Status(st) => Ok(TransferStatus {
            transfer: st.transfer,
            state: st.state,
            durable: st.durable,
            receipts: st.receipts,
            tls_key_exchange,
        }),
        Frame::Error(e) => Err(refused("status", e.code, &e.message)),
        _ => Err(Error::new(
            ErrorKind::Refused,
            "unexpected answer to STATUS_REQUEST",
        )),
    }
}

/// A receipt [`save_receipts`] kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedReceipt {
    /// `custody`, `delivery`, `purge` or `rejection`.
    pub kind: &'static str,
    /// For a delivery receipt, the recipient agency that signed it.
    pub agency: Option<String>,
    /// Where it was saved.
    pub path: std::path::PathBuf,
}

/// Saves every receipt of a [`status`] answer under the home's `receipts/` (`docs/cli.md`
/// "State directory"): `<transfer>.custody-receipt`, `<transfer>.delivery-<agency>.receipt`
/// (one per recipient), `<transfer>.purge-receipt`, `<transfer>.rejection-receipt`. Each is
/// verified against the trust store first (`custody.md` §9, as `rogatory verify` does): one
/// that does not verify, or is about another transfer, is not saved and fails the call (exit 3)
/// after the good ones are saved.
pub fn save_receipts(home: &Home, st: &TransferStatus) -> Result<Vec<SavedReceipt>> {
    let store = home.trust_store()?;
    let t = st.transfer;
    let mut saved = Vec::new();
    let mut bad = Vec::new();
    for r in &st.receipts {
        let kind = match r.kind {
            ReceiptKind::Custody => "custody",
            ReceiptKind::Delivery => "delivery",
            ReceiptKind::Purge => "purge",
            ReceiptKind::Rejection => "rejection",
        };
        let (name, agency) = match crate::package::verify_receipt(&r.text, &store) {
            Ok(v) if v.logged.statement.head().transfer == t => match r.kind {
                ReceiptKind::Delivery
                    if matches!(
                        v.logged.statement,
                        rogatory_custody::Statement::DeliveryReceipt { .. }
                    ) =>
                {
                    (
                        format!("receipts/{t}.delivery-{}.receipt", v.signer),
                        Some(v.signer.to_string()),
                    )
                }
                ReceiptKind::Delivery => {
                    bad.push(kind);
                    continue;
                }
                _ => (format!("receipts/{t}.{kind}-receipt"), None),
            },
            // A rejection need not be a logged bundle: it is kept only if it is one.
            _ if r.kind == ReceiptKind::Rejection => continue,
            _ => {
                bad.push(kind);
                continue;
            }
        };
        // `custody.md` §7.2: a receipt whose checkpoint forks from one this home verified is
        // evidence, not a receipt.
        crate::checkpoints::check_receipt(home, &store, &r.text)?;
        let path = home.path(&name);
        crate::home::write_file(&path, r.text.as_bytes(), 0o644, true)?;
        saved.push(SavedReceipt { kind, agency, path });
    }
    if bad.is_empty() {
        Ok(saved)
    } else {
        Err(Error::new(
            ErrorKind::Integrity,
            format!(
                "{t}: the relay's {} receipt does not verify against the trust store; not saved",
                bad.join(", ")
            ),
        ))
    }
}
