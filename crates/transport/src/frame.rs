//! Frames of the `rogatory/1` protocol (`protocol.md` §4 and §5).
//!
//! A frame is `type (1 byte) || length (varint) || payload`. Control payloads are postcard
//! (serde) and must be in canonical form: a payload that decodes must re-encode to the same bytes.
//! PIECE and RANGE carry raw bytes after a small fixed header so that bulk data is never copied
//! through serde. The length is checked against the limit for its type before anything is
//! allocated.

use rogatory_custody::{AgencyId, Timestamp, TransferId};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, FrameError};
use crate::varint;

/// The protocol versions this build speaks, best first.
pub const VERSIONS: &[u32] = &[1];
/// The ALPN protocol id (`protocol.md` §2).
pub const ALPN: &[u8] = b"rogatory/1";
/// Largest piece (`custody.md` §5.2): an encrypted STREAM chunk, or a maximal header + nonce.
pub const MAX_PIECE: u64 = 65_552;
/// Largest RANGE payload a relay sends.
pub const MAX_RANGE: u64 = 1 << 20;
/// The longest frame header: type byte and an 8-byte varint.
pub const MAX_HEADER: usize = 9;

/// Most consistency-proof hashes a CHECKPOINT carries (`protocol.md` §6.6): a proof between
/// two trees of fewer than 2^64 entries has at most 2·64 hashes, ours at most 64.
pub const MAX_CHECKPOINT_PROOF: usize = 64;
/// Largest CHECKPOINT payload (`protocol.md` §8): a signed note (≤ 64 KiB) and the proof.
pub const MAX_CHECKPOINT_FRAME: u64 = 64 * 1024 + 4096;

/// Frame size limits (`protocol.md` §8). Defaults are the protocol's; a node may lower them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// OFFER payloads: the offer (custody.md §10: ≤ 32 MiB). SEAL may carry twice this: the
    /// manifest and the encrypted contents.
    pub max_offer: u64,
    /// Any other control payload (INBOX, STATUS, receipts, …).
    pub max_control: u64,
    /// A payload larger than [`LARGE_FRAME`] must arrive within this long plus its length at
    /// `min_frame_rate` (`protocol.md` §4.3): a peer cannot hold a half-sent frame for ever.
    pub slow_frame_grace: std::time::Duration,
    /// Bytes per second a large payload must average, after the grace.
    pub min_frame_rate: u64,
}

/// Payloads above this size are read as they arrive (the buffer grows with them) and under a
/// deadline (`FrameLimits::slow_frame_grace`); a PIECE is below it.
pub const LARGE_FRAME: u64 = 128 << 10;

impl FrameLimits {
    /// How long a payload of `len` bytes may take to arrive once its header has.
    pub fn payload_time(&self, len: u64) -> std::time::Duration {
        self.slow_frame_grace
            + std::time::Duration::from_secs_f64(len as f64 / self.min_frame_rate.max(1) as f64)
    }
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_offer: 33 << 20,
            max_control: 1 << 20,
            slow_frame_grace: std::time::Duration::from_secs(60),
            min_frame_rate: 128 << 10,
        }
    }
}

macro_rules! frame_types {
    ($($name:ident = $v:expr;)*) => {
        /// Frame types of `rogatory/1` (`protocol.md` §5).
        #[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
        #[repr(u8)]
        pub enum FrameType { $(#[allow(missing_docs)] $name = $v,)* }

        impl FrameType {
            /// From the type byte.
            pub fn from_u8(b: u8) -> Option<Self> {
                match b { $($v => Some(FrameType::$name),)* _ => None }
            }
            /// Name as written in `protocol.md`.
            pub fn name(self) -> &'static str {
                match self { $(FrameType::$name => stringify!($name),)* }
            }
            /// Every type.
            pub const ALL: &'static [FrameType] = &[$(FrameType::$name),*];
        }
    };
}

frame_types! {
    Hello = 0x01;
    Welcome = 0x02;
    Offer = 0x03;
    Accept = 0x04;
    Durable = 0x05;
    Receipt = 0x06;
    Attach = 0x07;
    Piece = 0x09;
    InboxRequest = 0x0a;
    Inbox = 0x0b;
    Fetch = 0x0c;
    FetchHead = 0x0d;
    Range = 0x0e;
    StatusRequest = 0x0f;
    Status = 0x10;
    Deliver = 0x11;
    Seal = 0x12;
    CheckpointRequest = 0x13;
    Checkpoint = 0x14;
    AddCheckpoint = 0x15;
    Cosignature = 0x16;
    WitnessSize = 0x17;
    Error = 0x1f;
}

impl FrameType {
    /// The payload limit for this type.
    pub fn limit(self, limits: &FrameLimits) -> u64 {
        match self {
            FrameType::Offer => limits.max_offer,
            FrameType::Seal => limits.max_offer.saturating_mul(2),
            // file + piece varints (≤ 4 + 8) and the piece.
            FrameType::Piece => MAX_PIECE + 12,
            FrameType::Range => MAX_RANGE + 8,
            FrameType::Hello | FrameType::Welcome | FrameType::Attach | FrameType::Durable => 4096,
            FrameType::InboxRequest | FrameType::Fetch | FrameType::StatusRequest => 4096,
            FrameType::Error | FrameType::CheckpointRequest => 4096,
            FrameType::Checkpoint | FrameType::AddCheckpoint => MAX_CHECKPOINT_FRAME,
            FrameType::Cosignature | FrameType::WitnessSize => 4096,
            _ => limits.max_control,
        }
    }
}

/// HELLO (client → relay, session stream): versions the client speaks and its agency id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Supported versions, best first.
    pub versions: Vec<u32>,
    /// The client's agency id; must equal the identity its TLS certificate proves.
    pub agency: AgencyId,
    /// Software name and version, informational.
    pub software: String,
}

/// WELCOME (relay → client): the chosen version and the relay's agency id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both speak.
    pub version: u32,
    /// The relay's agency id.
    pub agency: AgencyId,
    /// Software name and version, informational.
    pub software: String,
    /// How many data streams the client may use for one transfer.
    pub max_data_streams: u32,
    /// What the relay's policy asks of an offer, so a sender can check before any work.
    pub policy: PublishedPolicy,
}

/// The part of a relay's policy it publishes in WELCOME (`protocol.md` §6.0, `relay.md` §4):
/// the legal-metadata fields an offer must carry — and the only ones it may carry, the rest
/// travel encrypted to the recipients (`custody.md` §5.4) — and the largest transfer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPolicy {
    /// Required legal fields, by their manifest names (`custody.md` §5.4 `LEGAL_FIELDS`).
    pub require: Vec<String>,
    /// Largest transfer, ciphertext bytes (0: no limit announced).
    pub max_transfer_bytes: u64,
    /// Oldest acceptable manifest, days.
    pub max_manifest_age_days: u32,
}

/// OFFER (client → relay, upload stream): a transfer announced before its data, as its offer
/// (`custody.md` §5.3: recipients, legal metadata, file sizes; no names, no digests).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The transfer id (as in the offer).
    pub transfer: TransferId,
    /// The offer's canonical JSON.
    pub offer: String,
}

/// SEAL (client → relay, upload stream): once every piece is durable, the sealed manifest that
/// the data determined. It must agree with the offer and with the pieces the relay holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The transfer.
    pub transfer: TransferId,
    /// The seal: the signed note over the manifest (`custody.md` §4).
    pub seal: String,
    /// The manifest JSON the seal commits to.
    pub manifest: String,
    /// The age-encrypted contents the manifest names (`custody.md` §5.4).
    pub contents: Vec<u8>,
}

/// ACCEPT (relay → client): the offer is accepted; `durable[i]` pieces of file `i` are already
/// durably stored (a resume), so the client sends only the rest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    /// The transfer.
    pub transfer: TransferId,
    /// Durable piece count per file, in manifest order.
    pub durable: Vec<u64>,
}

/// DURABLE (relay → client): pieces `0..pieces` of `file` are durable (data and index fsynced).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    /// File index in the manifest.
    pub file: u32,
    /// Durable piece count (a prefix).
    pub pieces: u64,
}

/// What a RECEIPT frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptKind {
    /// Custody receipt bundle (relay, `custody.md` §7).
    Custody,
    /// Delivery receipt (recipient).
    Delivery,
    /// Purge receipt (relay).
    Purge,
    /// Rejection (relay).
    Rejection,
}

/// RECEIPT (relay → client): a signed statement or receipt bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The transfer it is about.
    pub transfer: TransferId,
    /// The kind.
    pub kind: ReceiptKind,
    /// The text (signed note or bundle).
    pub text: String,
}

/// ATTACH (client → relay): first frame of a data stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attach {
    /// The transfer this stream carries data for.
    pub transfer: TransferId,
}

/// PIECE (client → relay, data stream): one piece of one file. Raw layout:
/// `file (varint) || piece (varint) || bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    /// File index.
    pub file: u32,
    /// Piece index (0 = header and nonce).
    pub piece: u64,
    /// The ciphertext bytes of the piece.
    pub bytes: &'a [u8],
}

/// INBOX_REQUEST (recipient → relay): list transfers awaiting the caller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxRequest {
    /// Continue after this transfer (pagination).
    pub after: Option<TransferId>,
}

/// State of a transfer at the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferState {
    /// Offered and accepted; data still arriving.
    Receiving,
    /// Every piece durable and verified; custody receipt issued.
    Complete,
    /// A recipient uploaded a delivery receipt.
    Delivered,
    /// Ciphertext purged.
    Purged,
    /// Rejected (integrity or policy).
    Rejected,
    /// Receipted, but the relay found ciphertext lost or damaged (`relay scrub`, or a read while
    /// serving); not fetchable until the sender's next send re-uploads what is missing
    /// (`relay.md` §10).
    Damaged,
}

/// One line of an inbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// The transfer.
    pub transfer: TransferId,
    /// The sending agency.
    pub sender: AgencyId,
    /// Number of files.
    pub files: u64,
    /// Total ciphertext bytes.
    pub ciphertext_bytes: u64,
    /// When the custody receipt was issued.
    pub received: Timestamp,
    /// State.
    pub state: TransferState,
}

/// INBOX (relay → recipient).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbox {
    /// Entries, oldest first.
    pub entries: Vec<InboxEntry>,
    /// More entries follow after the last one.
    pub more: bool,
}

/// What a FETCH asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    /// The seal (signed note), as SEAL carried it.
    Seal,
    /// The manifest JSON, as SEAL carried it.
    Manifest,
    /// The age-encrypted contents, as SEAL carried them (`custody.md` §5.4).
    Contents,
    /// The ciphertext of a file.
    File(u32),
    /// The custody receipt bundle.
    CustodyReceipt,
}

impl std::fmt::Display for Object {
    /// The object in words, for messages ("fetching file 3 of …").
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Object::Seal => f.write_str("the seal"),
            Object::Manifest => f.write_str("the manifest"),
            Object::Contents => f.write_str("the contents"),
            Object::File(i) => write!(f, "file {i}"),
            Object::CustodyReceipt => f.write_str("the custody receipt"),
        }
    }
}

/// FETCH (recipient → relay): bytes `offset..offset + len` of an object (`len == 0`: to the end).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    /// The transfer.
    pub transfer: TransferId,
    /// The object.
    pub object: Object,
    /// First byte.
    pub offset: u64,
    /// Byte count, 0 for all.
    pub len: u64,
}

/// FETCH_HEAD (relay → recipient): the object's total size; RANGE frames follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchHead {
    /// Total size of the object.
    pub total: u64,
}

/// RANGE (relay → recipient): raw layout `offset (varint) || bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range<'a> {
    /// Offset of the first byte in the object.
    pub offset: u64,
    /// The bytes.
    pub bytes: &'a [u8],
}

/// STATUS_REQUEST (sender or recipient → relay).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    /// The transfer.
    pub transfer: TransferId,
}

/// STATUS (relay → client).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The transfer.
    pub transfer: TransferId,
    /// State.
    pub state: TransferState,
    /// Durable piece count per file.
    pub durable: Vec<u64>,
    /// Receipts issued so far (custody, delivery, purge, rejection).
    pub receipts: Vec<Receipt>,
}

/// DELIVER (recipient → relay): the recipient's signed delivery receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    /// The transfer.
    pub transfer: TransferId,
    /// The signed delivery receipt note.
    pub receipt: String,
}

/// CHECKPOINT_REQUEST (client → relay, `protocol.md` §6.6): the size of the relay's checkpoint
/// the client holds (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRequest {
    /// Size of the held checkpoint.
    pub held_size: u64,
}

/// CHECKPOINT (relay → client, `protocol.md` §6.6): the relay's latest signed checkpoint note
/// (`custody.md` §7) and the RFC 9162 consistency proof from the requested size to it (empty if
/// the requested size is 0, equal to, or larger than the checkpoint's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCheckpoint {
    /// The signed checkpoint note (empty while the log has no checkpoint).
    pub checkpoint: String,
    /// The consistency proof, at most [`MAX_CHECKPOINT_PROOF`] hashes.
    pub proof: Vec<[u8; 32]>,
}

/// ADD_CHECKPOINT (submitting relay → witness relay, `protocol.md` §6.7): the submitter's
/// latest signed checkpoint note (`custody.md` §7) and the RFC 9162 consistency proof from
/// `old_size`, the size of the submitter's checkpoint the witness is believed to hold (0: none),
/// to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddCheckpoint {
    /// Size of the checkpoint the witness holds, as the submitter believes.
    pub old_size: u64,
    /// The consistency proof, at most [`MAX_CHECKPOINT_PROOF`] hashes.
    pub proof: Vec<[u8; 32]>,
    /// The signed checkpoint note.
    pub checkpoint: String,
}

/// COSIGNATURE (witness → submitter, `protocol.md` §6.7): the witness's cosignature line of
/// the checkpoint (`custody.md` §7.3), with its final LF.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CosignatureLine {
    /// `— <witness>/witness <b64(key id || time || signature)>` and LF.
    pub cosignature: String,
}

/// WITNESS_SIZE (witness → submitter, `protocol.md` §6.7): `old_size` is not the size of the
/// checkpoint the witness holds of this log; it holds `size` (0: none). Resubmit with a proof
/// from there (C2SP tlog-witness's 409 Conflict).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessSize {
    /// Size of the checkpoint the witness holds.
    pub size: u64,
}

/// ERROR (either way): the request on this stream failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The code.
    pub code: ErrorCode,
    /// One line; never plaintext, keys or file names.
    pub message: String,
}

/// A decoded frame. PIECE and RANGE borrow their bytes from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Frame<'a> {
    Hello(Hello),
    Welcome(Welcome),
    Offer(Offer),
    Accept(Accept),
    Durable(Durable),
    Receipt(Receipt),
    Attach(Attach),
    Piece(Piece<'a>),
    InboxRequest(InboxRequest),
    Inbox(Inbox),
    Fetch(Fetch),
    FetchHead(FetchHead),
    Range(Range<'a>),
    StatusRequest(StatusRequest),
    Status(Status),
    Deliver(Deliver),
    Seal(Seal),
    CheckpointRequest(CheckpointRequest),
    Checkpoint(LogCheckpoint),
    AddCheckpoint(AddCheckpoint),
    Cosignature(CosignatureLine),
    WitnessSize(WitnessSize),
    Error(ErrorFrame),
}

/// A frame header: type and payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub ty: FrameType,
    /// Payload length, already checked against the type's limit.
    pub len: u64,
    /// Bytes the header took.
    pub header_len: usize,
}

/// Result of [`parse_header`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderRead {
    /// A complete, acceptable header.
    Header(Header),
    /// More bytes are needed (at least this many in total).
    Incomplete(usize),
}

/// Reads and checks a frame header: the type must be known and the length within its limit.
/// This is the check that runs before any payload buffer is allocated.
pub fn parse_header(buf: &[u8], limits: &FrameLimits) -> Result<HeaderRead, FrameError> {
    let Some(&t) = buf.first() else {
        return Ok(HeaderRead::Incomplete(1));
    };
    let ty = FrameType::from_u8(t).ok_or(FrameError::UnknownType(t))?;
    match varint::get(&buf[1..]) {
        varint::Read::Incomplete(n) => Ok(HeaderRead::Incomplete(1 + n)),
        varint::Read::NonMinimal => Err(FrameError::NonMinimalVarint),
        varint::Read::Value(len, n) => {
            let limit = ty.limit(limits);
            if len > limit {
                return Err(FrameError::TooLarge {
                    ty: ty.name(),
                    len,
                    limit,
                });
            }
            Ok(HeaderRead::Header(Header {
                ty,
                len,
                header_len: 1 + n,
            }))
        }
    }
}

/// Result of [`decode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A frame and the number of bytes it took.
    Frame(Frame<'a>, usize),
    /// More bytes are needed (at least this many in total).
    Incomplete(usize),
}

/// Decodes one frame from the front of `buf`.
pub fn decode<'a>(buf: &'a [u8], limits: &FrameLimits) -> Result<Decoded<'a>, FrameError> {
    let h = match parse_header(buf, limits)? {
        HeaderRead::Incomplete(n) => return Ok(Decoded::Incomplete(n)),
        HeaderRead::Header(h) => h,
    };
    // `len` ≤ the type's limit, which fits in usize on every supported target.
    let total = h.header_len + h.len as usize;
    if buf.len() < total {
        return Ok(Decoded::Incomplete(total));
    }
    let frame = decode_payload(h.ty, &buf[h.header_len..total])?;
    Ok(Decoded::Frame(frame, total))
}

/// Decodes a payload whose type and exact length are known.
pub fn decode_payload(ty: FrameType, p: &[u8]) -> Result<Frame<'_>, FrameError> {
    fn ctl<'a, T: Serialize + for<'de> Deserialize<'de>>(
        ty: FrameType,
        p: &'a [u8],
        wrap: fn(T) -> Frame<'a>,
    ) -> Result<Frame<'a>, FrameError> {
        let malformed = |reason: String| FrameError::Malformed {
            ty: ty.name(),
            reason,
        };
        let (v, rest): (T, &[u8]) =
            postcard::take_from_bytes(p).map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed(format!("{} trailing bytes", rest.len())));
        }
        // Canonical form: the payload must be exactly what we would send (`protocol.md` §4.2).
        let again = postcard::to_stdvec(&v).map_err(|e| malformed(e.to_string()))?;
        if again != p {
            return Err(malformed("not in canonical form".into()));
        }
        Ok(wrap(v))
    }
    match ty {
        FrameType::Hello => ctl(ty, p, Frame::Hello),
        FrameType::Welcome => ctl(ty, p, Frame::Welcome),
        FrameType::Offer => ctl(ty, p, Frame::Offer),
        FrameType::Accept => ctl(ty, p, Frame::Accept),
        FrameType::Durable => ctl(ty, p, Frame::Durable),
        FrameType::Receipt => ctl(ty, p, Frame::Receipt),
        FrameType::Attach => ctl(ty, p, Frame::Attach),
        FrameType::Piece => {
            let (file, a) = raw_varint(ty, p)?;
            let file = u32::try_from(file).map_err(|_| FrameError::Malformed {
                ty: ty.name(),
                reason: "file index out of range".into(),
            })?;
            let (piece, b) = raw_varint(ty, &p[a..])?;
            let bytes = &p[a + b..];
            if bytes.is_empty() || bytes.len() as u64 > MAX_PIECE {
                return Err(FrameError::Malformed {
                    ty: ty.name(),
                    reason: "piece length out of range".into(),
                });
            }
            Ok(Frame::Piece(Piece { file, piece, bytes }))
        }
        FrameType::InboxRequest => ctl(ty, p, Frame::InboxRequest),
        FrameType::Inbox => ctl(ty, p, Frame::Inbox),
        FrameType::Fetch => ctl(ty, p, Frame::Fetch),
        FrameType::FetchHead => ctl(ty, p, Frame::FetchHead),
        FrameType::Range => {
            let (offset, a) = raw_varint(ty, p)?;
            let bytes = &p[a..];
            if bytes.is_empty() || bytes.len() as u64 > MAX_RANGE {
                return Err(FrameError::Malformed {
                    ty: ty.name(),
                    reason: "range length out of range".into(),
                });
            }
            Ok(Frame::Range(Range { offset, bytes }))
        }
        FrameType::StatusRequest => ctl(ty, p, Frame::StatusRequest),
        FrameType::Status => ctl(ty, p, Frame::Status),
        FrameType::Deliver => ctl(ty, p, Frame::Deliver),
        FrameType::Seal => ctl(ty, p, Frame::Seal),
        FrameType::CheckpointRequest => ctl(ty, p, Frame::CheckpointRequest),
        FrameType::Checkpoint => {
            let f = ctl(ty, p, Frame::Checkpoint)?;
            if let Frame::Checkpoint(c) = &f
                && c.proof.len() > MAX_CHECKPOINT_PROOF
            {
                return Err(FrameError::Malformed {
                    ty: ty.name(),
                    reason: format!("{} proof hashes", c.proof.len()),
                });
            }
            Ok(f)
        }
        FrameType::AddCheckpoint => {
            let f = ctl(ty, p, Frame::AddCheckpoint)?;
            if let Frame::AddCheckpoint(c) = &f
                && c.proof.len() > MAX_CHECKPOINT_PROOF
            {
                return Err(FrameError::Malformed {
                    ty: ty.name(),
                    reason: format!("{} proof hashes", c.proof.len()),
                });
            }
            Ok(f)
        }
        FrameType::Cosignature => ctl(ty, p, Frame::Cosignature),
        FrameType::WitnessSize => ctl(ty, p, Frame::WitnessSize),
        FrameType::Error => ctl(ty, p, Frame::Error),
    }
}

fn raw_varint(ty: FrameType, p: &[u8]) -> Result<(u64, usize), FrameError> {
    match varint::get(p) {
        varint::Read::Value(v, n) => Ok((v, n)),
        varint::Read::NonMinimal => Err(FrameError::NonMinimalVarint),
        varint::Read::Incomplete(_) => Err(FrameError::Malformed {
            ty: ty.name(),
            reason: "truncated header field".into(),
        }),
    }
}

impl Frame<'_> {
    /// The frame's type.
    pub fn ty(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Welcome(_) => FrameType::Welcome,
            Frame::Offer(_) => FrameType::Offer,
            Frame::Accept(_) => FrameType::Accept,
            Frame::Durable(_) => FrameType::Durable,
            Frame::Receipt(_) => FrameType::Receipt,
            Frame::Attach(_) => FrameType::Attach,
            Frame::Piece(_) => FrameType::Piece,
            Frame::InboxRequest(_) => FrameType::InboxRequest,
            Frame::Inbox(_) => FrameType::Inbox,
            Frame::Fetch(_) => FrameType::Fetch,
            Frame::FetchHead(_) => FrameType::FetchHead,
            Frame::Range(_) => FrameType::Range,
            Frame::StatusRequest(_) => FrameType::StatusRequest,
            Frame::Status(_) => FrameType::Status,
            Frame::Deliver(_) => FrameType::Deliver,
            Frame::Seal(_) => FrameType::Seal,
            Frame::CheckpointRequest(_) => FrameType::CheckpointRequest,
            Frame::Checkpoint(_) => FrameType::Checkpoint,
            Frame::AddCheckpoint(_) => FrameType::AddCheckpoint,
            Frame::Cosignature(_) => FrameType::Cosignature,
            Frame::WitnessSize(_) => FrameType::WitnessSize,
            Frame::Error(_) => FrameType::Error,
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn ctl<T: Serialize>(ty: FrameType, v: &T, out: &mut Vec<u8>) {
            // Serialising our own message types into a Vec cannot fail: they hold only
            // strings, integers, options, vectors and fixed arrays.
            let body = postcard::to_stdvec(v).unwrap_or_default();
            out.push(ty as u8);
            varint::put(out, body.len() as u64);
            out.extend_from_slice(&body);
        }
        let ty = self.ty();
        match self {
            Frame::Hello(v) => ctl(ty, v, out),
            Frame::Welcome(v) => ctl(ty, v, out),
            Frame::Offer(v) => ctl(ty, v, out),
            Frame::Accept(v) => ctl(ty, v, out),
            Frame::Durable(v) => ctl(ty, v, out),
            Frame::Receipt(v) => ctl(ty, v, out),
            Frame::Attach(v) => ctl(ty, v, out),
            Frame::Piece(p) => {
                piece_header(out, p.file, p.piece, p.bytes.len());
                out.extend_from_slice(p.bytes);
            }
            Frame::InboxRequest(v) => ctl(ty, v, out),
            Frame::Inbox(v) => ctl(ty, v, out),
            Frame::Fetch(v) => ctl(ty, v, out),
            Frame::FetchHead(v) => ctl(ty, v, out),
            Frame::Range(r) => {
                range_header(out, r.offset, r.bytes.len());
                out.extend_from_slice(r.bytes);
            }
            Frame::StatusRequest(v) => ctl(ty, v, out),
            Frame::Status(v) => ctl(ty, v, out),
            Frame::Deliver(v) => ctl(ty, v, out),
            Frame::Seal(v) => ctl(ty, v, out),
            Frame::CheckpointRequest(v) => ctl(ty, v, out),
            Frame::Checkpoint(v) => ctl(ty, v, out),
            Frame::AddCheckpoint(v) => ctl(ty, v, out),
            Frame::Cosignature(v) => ctl(ty, v, out),
            Frame::WitnessSize(v) => ctl(ty, v, out),
            Frame::Error(v) => ctl(ty, v, out),
        }
    }

    /// The encoded frame as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

/// Appends a PIECE frame header for a piece of `len` bytes; the caller appends the bytes.
/// This is the hot path's way to build a frame without an intermediate copy.
pub fn piece_header(out: &mut Vec<u8>, file: u32, piece: u64, len: usize) {
    out.push(FrameType::Piece as u8);
    varint::put(out, piece_payload_len(file, piece, len) as u64);
    varint::put(out, u64::from(file));
    varint::put(out, piece);
}

/// A PIECE frame's payload length: `file`, `piece` and the bytes.
fn piece_payload_len(file: u32, piece: u64, len: usize) -> usize {
    varint::len(u64::from(file)) + varint::len(piece) + len
}

/// The encoded length of a PIECE frame of a piece of `len` bytes: what [`piece_header`] appends,
/// and the bytes.
pub fn piece_frame_len(file: u32, piece: u64, len: usize) -> u64 {
    let payload = piece_payload_len(file, piece, len);
    (1 + varint::len(payload as u64) + payload) as u64
}

/// Appends a RANGE frame header for `len` bytes at `offset`.
pub fn range_header(out: &mut Vec<u8>, offset: u64, len: usize) {
    out.push(FrameType::Range as u8);
    varint::put(out, (varint::len(offset) + len) as u64);
    varint::put(out, offset);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agency(s: &str) -> AgencyId {
        s.parse().expect("agency id")
    }

    #[test]
    fn piece_frame_len_is_the_encoded_length() {
        for (file, piece, len) in [(0, 0, 0), (3, 1, 1200), (70_000, 1 << 20, 65_552)] {
            let bytes = vec![7u8; len];
            let mut out = Vec::new();
            piece_header(&mut out, file, piece, len);
            out.extend_from_slice(&bytes);
            assert_eq!(piece_frame_len(file, piece, len), out.len() as u64);
            let f = Frame::Piece(Piece {
                file,
                piece,
                bytes: &bytes,
            });
            assert_eq!(f.to_vec(), out);
        }
    }

    fn samples() -> Vec<Frame<'static>> {
        let t = TransferId::from_bytes([7; 16]);
        vec![
            Frame::Hello(Hello {
                versions: vec![1, 2],
                agency: agency("agency-a"),
                software: "rogatory 0.1".into(),
            }),
            Frame::Welcome(Welcome {
                version: 1,
                agency: agency("relay-b"),
                software: "x".into(),
                max_data_streams: 8,
                policy: PublishedPolicy {
                    require: vec!["case_reference".into()],
                    max_transfer_bytes: 1 << 40,
                    max_manifest_age_days: 30,
                },
            }),
            Frame::Offer(Offer {
                transfer: t,
                offer: "{}".into(),
            }),
            Frame::Accept(Accept {
                transfer: t,
                durable: vec![0, 5, u64::MAX >> 2],
            }),
            Frame::Durable(Durable {
                file: 3,
                pieces: 70_000,
            }),
            Frame::Receipt(Receipt {
                transfer: t,
                kind: ReceiptKind::Custody,
                text: "r".into(),
            }),
            Frame::Attach(Attach { transfer: t }),
            Frame::Piece(Piece {
                file: 70_000,
                piece: 1 << 40,
                bytes: b"ciphertext",
            }),
            Frame::InboxRequest(InboxRequest { after: None }),
            Frame::Inbox(Inbox {
                entries: vec![],
                more: false,
            }),
            Frame::Fetch(Fetch {
                transfer: t,
                object: Object::File(2),
                offset: 10,
                len: 0,
            }),
            Frame::FetchHead(FetchHead { total: 99 }),
            Frame::Range(Range {
                offset: 1 << 33,
                bytes: b"abc",
            }),
            Frame::StatusRequest(StatusRequest { transfer: t }),
            Frame::Status(Status {
                transfer: t,
                state: TransferState::Receiving,
                durable: vec![1],
                receipts: vec![],
            }),
            Frame::Deliver(Deliver {
                transfer: t,
                receipt: "d".into(),
            }),
            Frame::Seal(Seal {
                transfer: t,
                seal: "seal\n".into(),
                manifest: "{}".into(),
                contents: b"age".to_vec(),
            }),
            Frame::CheckpointRequest(CheckpointRequest { held_size: 12 }),
            Frame::Checkpoint(LogCheckpoint {
                checkpoint: "agency-b/audit\n12\nroot\n\n— sig\n".into(),
                proof: vec![[3; 32], [4; 32]],
            }),
            Frame::AddCheckpoint(AddCheckpoint {
                old_size: 3,
                proof: vec![[5; 32]],
                checkpoint: "agency-b/audit\n12\nroot\n\n— sig\n".into(),
            }),
            Frame::Cosignature(CosignatureLine {
                cosignature: "— agency-c/witness sig\n".into(),
            }),
            Frame::WitnessSize(WitnessSize { size: 7 }),
            Frame::Error(ErrorFrame {
                code: ErrorCode::POLICY,
                message: "no".into(),
            }),
        ]
    }

    #[test]
    fn every_type_round_trips() {
        let limits = FrameLimits::default();
        let all = samples();
        assert_eq!(all.len(), FrameType::ALL.len());
        for f in &all {
            let bytes = f.to_vec();
            match decode(&bytes, &limits).expect("decodes") {
                Decoded::Frame(g, n) => {
                    assert_eq!(n, bytes.len());
                    assert_eq!(&g, f);
                }
                Decoded::Incomplete(_) => panic!("incomplete"),
            }
            for cut in 0..bytes.len() {
                assert!(
                    matches!(decode(&bytes[..cut], &limits), Ok(Decoded::Incomplete(n)) if n > cut)
                );
            }
        }
    }

    #[test]
    fn oversized_length_is_refused_from_the_header_alone() {
        let limits = FrameLimits::default();
        // Length 2^62 - 1 (the varint maximum) on a PIECE frame: refused with 9 bytes seen.
        let mut b = vec![FrameType::Piece as u8];
        varint::put(&mut b, varint::MAX);
        assert!(matches!(
            parse_header(&b, &limits),
            Err(FrameError::TooLarge { .. })
        ));
        // A 100 MiB OFFER.
        let mut b = vec![FrameType::Offer as u8];
        varint::put(&mut b, 100 << 20);
        let e = parse_header(&b, &limits).expect_err("too large");
        assert_eq!(e.code(), ErrorCode::FRAME_TOO_LARGE);
    }

    #[test]
    fn a_checkpoint_with_too_long_a_proof_is_refused() {
        let f = |n: usize| {
            Frame::Checkpoint(LogCheckpoint {
                checkpoint: "c".into(),
                proof: vec![[1; 32]; n],
            })
            .to_vec()
        };
        let limits = FrameLimits::default();
        assert!(matches!(
            decode(&f(MAX_CHECKPOINT_PROOF), &limits),
            Ok(Decoded::Frame(Frame::Checkpoint(_), _))
        ));
        assert!(matches!(
            decode(&f(MAX_CHECKPOINT_PROOF + 1), &limits),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let limits = FrameLimits::default();
        assert_eq!(
            decode(&[0xee, 0], &limits),
            Err(FrameError::UnknownType(0xee))
        );
        assert_eq!(
            decode(&[FrameType::Hello as u8, 0x40, 0x01, 0], &limits),
            Err(FrameError::NonMinimalVarint)
        );
        let e =
            decode(&[FrameType::Hello as u8, 3, 0xff, 0xff, 0xff], &limits).expect_err("garbage");
        assert_eq!(e.code(), ErrorCode::PROTOCOL_VIOLATION);
        // Trailing bytes after a valid DURABLE payload.
        let mut b = Frame::Durable(Durable { file: 1, pieces: 2 }).to_vec();
        b[1] += 1;
        b.push(0);
        assert!(matches!(
            decode(&b, &limits),
            Err(FrameError::Malformed { .. })
        ));
    }

    proptest::proptest! {
        /// Whatever decodes re-encodes byte-identically (the fuzz target's property, always on).
        #[test]
        fn decodable_bytes_reencode_identically(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300), ty in 0u8..0x20) {
            let mut b = vec![ty];
            varint::put(&mut b, data.len() as u64);
            b.extend_from_slice(&data);
            if let Ok(Decoded::Frame(f, n)) = decode(&b, &FrameLimits::default()) {
                proptest::prop_assert_eq!(f.to_vec(), b[..n].to_vec());
            }
        }

        #[test]
        fn pieces_round_trip(file in 0u32..u32::MAX, piece in 0u64..varint::MAX, len in 1usize..2000) {
            let bytes = vec![0xa5; len];
            let f = Frame::Piece(Piece { file, piece, bytes: &bytes });
            let b = f.to_vec();
            proptest::prop_assert_eq!(decode(&b, &FrameLimits::default()), Ok(Decoded::Frame(f, b.len())));
        }
    }

    #[test]
    fn non_canonical_payload_is_refused() {
        // postcard's varint for DURABLE.file = 1 written in two bytes (0x81 0x00).
        let b = [FrameType::Durable as u8, 3, 0x81, 0x00, 0x02];
        assert!(matches!(
            decode(&b, &FrameLimits::default()),
            Err(FrameError::Malformed { .. })
        ));
    }
}
