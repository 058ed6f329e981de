//! The tokio shell over quinn (`protocol.md` §2, §4.3, §6): endpoints, the HELLO/WELCOME
//! exchange, frame readers and writers on QUIC streams, and the drivers that run the
//! [`upload`](crate::upload) state machines over a connection. All protocol decisions are in the
//! state machines; this module moves bytes and time.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{ConnectionError, ReadExactError, WriteError};
use rogatory_custody::{AgencyId, PieceLayout, TransferId};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::config::{Limits, client_config, server_config};
use crate::error::{ErrorClass, ErrorCode, FrameError, ProtocolError};
use crate::frame::{
    self, Attach, ErrorFrame, Frame, FrameLimits, HeaderRead, Hello, MAX_HEADER, Offer,
    PublishedPolicy, Receipt, Seal, VERSIONS, Welcome,
};
use crate::tls::{PeerIdentity, PeerTrust, TlsConfigError, TlsIdentity};
use crate::upload::{
    DataAction, Intake, IntakeConfig, IntakePhase, StreamNumber, Transmit, Upload, UploadEvent,
    UploadPhase, UploadStats,
};

/// A transport failure, classified for the CLI's exit codes.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TLS/QUIC configuration is unusable.
    #[error(transparent)]
    Config(#[from] TlsConfigError),
    /// A socket could not be bound.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The connection could not be started.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed (TLS rejection, timeout, peer close).
    #[error("connection: {0}")]
    Connection(#[from] ConnectionError),
    /// The peer broke the framing.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer answered with an error, or broke the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A stream was reset or stopped by the peer with this code.
    #[error("stream closed by peer: {0}")]
    StreamClosed(ErrorCode),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// Reading local data to send failed.
    #[error("reading data to send: {0}")]
    Source(io::Error),
}

impl NetError {
    /// Whether the relay has no place for this connection now (`protocol.md` §8): `BUSY` (the
    /// agency holds `max_connections_per_agency`), or a QUIC refusal at `max_incoming`. Worth
    /// waiting for: each place ends with a connection.
    pub fn is_busy(&self) -> bool {
        match self {
            NetError::Protocol(e) => e.code == ErrorCode::BUSY,
            NetError::Connection(ConnectionError::ApplicationClosed(c)) => {
                ErrorCode::from_varint(c.error_code) == ErrorCode::BUSY
            }
            NetError::Connection(ConnectionError::ConnectionClosed(c)) => {
                c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
            }
            _ => false,
        }
    }

    /// The class (and so the exit code) of this failure.
    pub fn class(&self) -> ErrorClass {
        match self {
            NetError::Config(_) | NetError::Io(_) | NetError::Source(_) => ErrorClass::Refused,
            NetError::Connect(_) => ErrorClass::Refused,
            NetError::Connection(e) => match e {
                // A relay at its connection limit: try later.
                ConnectionError::ConnectionClosed(c)
                    if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                {
                    ErrorClass::Retryable
                }
                // The peer's TLS stack refused us (alert) or we refused it.
                ConnectionError::TransportError(_) | ConnectionError::ConnectionClosed(_) => {
                    ErrorClass::Refused
                }
                ConnectionError::ApplicationClosed(c) => {
                    ErrorCode::from_varint(c.error_code).class()
                }
                ConnectionError::VersionMismatch => ErrorClass::Refused,
                _ => ErrorClass::Retryable,
            },
            NetError::Frame(_) => ErrorClass::Protocol,
            NetError::Protocol(e) => e.code.class(),
            NetError::StreamClosed(c) => c.class(),
            NetError::Timeout(_) => ErrorClass::Retryable,
        }
    }
}

impl From<WriteError> for NetError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Stopped(c) => NetError::StreamClosed(ErrorCode::from_varint(c)),
            WriteError::ConnectionLost(c) => NetError::Connection(c),
            other => NetError::Io(io::Error::other(other)),
        }
    }
}

impl From<quinn::ClosedStream> for NetError {
    fn from(e: quinn::ClosedStream) -> Self {
        NetError::Io(io::Error::other(e))
    }
}

/// The largest buffer a [`FrameReader`] keeps between frames.
const KEEP_BUFFER: usize = 2 << 20;

/// Reads frames from a QUIC receive stream (`protocol.md` §4.3): the header is checked against
/// the type's limit before the payload buffer grows; an oversized frame stops just this stream
/// (`FRAME_TOO_LARGE`); any other framing error closes the connection with its code.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    conn: quinn::Connection,
    limits: FrameLimits,
    buf: Vec<u8>,
    /// A relay's budget for large payloads ([`Limits::large_frame_budget`]), and what the
    /// current frame's buffer holds of it (of the agency's share, of the whole).
    budget: Option<FrameBudget>,
    held: Option<(
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    )>,
}

/// A relay's budget for large payloads: the whole ([`Limits::large_frame_budget`]) and the
/// share of one agency (a quarter, at least the largest frame), so that no agency can take all
/// of it (`protocol.md` §8).
#[derive(Clone, Debug)]
struct FrameBudget {
    all: Arc<tokio::sync::Semaphore>,
    agency: Arc<tokio::sync::Semaphore>,
}

impl FrameReader {
    /// Wraps a receive stream of `conn`.
    pub fn new(recv: quinn::RecvStream, conn: quinn::Connection, limits: FrameLimits) -> Self {
        FrameReader {
            recv,
            conn,
            limits,
            buf: Vec::new(),
            budget: None,
            held: None,
        }
    }

    /// A large payload read by this reader takes its buffer's size from `budget` as the buffer
    /// grows, and gives it back (with the buffer) at the next frame.
    fn with_budget(mut self, budget: Option<FrameBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// Takes from the budget, if any, what a buffer of `size` bytes needs beyond what this
    /// reader holds: the agency's share first, then the whole; waits while either is spent.
    async fn take_budget(&mut self, size: usize) -> Result<(), NetError> {
        let Some(b) = &self.budget else {
            return Ok(());
        };
        let held = self.held.as_ref().map_or(0, |(a, _)| a.num_permits());
        let Some(more) = size.checked_sub(held).filter(|&m| m > 0) else {
            return Ok(());
        };
        let n = u32::try_from(more).unwrap_or(u32::MAX);
        let stopping = |_| {
            NetError::Protocol(ProtocolError::new(
                ErrorCode::SHUTTING_DOWN,
                "the relay is stopping",
            ))
        };
        let agency = b
            .agency
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(stopping)?;
        let all = b
            .all
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(stopping)?;
        match &mut self.held {
            Some((a, w)) => {
                a.merge(agency);
                w.merge(all);
            }
            None => self.held = Some((agency, all)),
        }
        Ok(())
    }

    fn fail(&mut self, e: FrameError) -> NetError {
        if e.code() == ErrorCode::FRAME_TOO_LARGE {
            let _ = self.recv.stop(e.code().to_varint());
        } else {
            self.conn
                .close(e.code().to_varint(), e.to_string().as_bytes());
        }
        NetError::Frame(e)
    }

    /// A large payload into `buf[..len]`, the buffer growing by doubling as bytes arrive: a peer
    /// that announces a large frame and sends little of it holds about twice what it sent of
    /// this side's memory, not what it announced (`protocol.md` §4.3).
    async fn read_large(&mut self, len: usize) -> Result<(), NetError> {
        let mut have = 0;
        while have < len {
            if self.buf.len() <= have {
                let to = len.min((have * 2).max(frame::LARGE_FRAME as usize));
                self.take_budget(to).await?;
                self.buf.resize(to, 0);
            }
            let end = self.buf.len().min(len);
            match self.recv.read(&mut self.buf[have..end]).await {
                Ok(Some(n)) => have += n,
                Ok(None) => return Err(self.fail(FrameError::Truncated)),
                Err(e) => return Err(read_error(e)),
            }
        }
        Ok(())
    }

    /// The next frame, or `None` when the peer finished the stream at a frame boundary.
    pub async fn next(&mut self) -> Result<Option<Frame<'_>>, NetError> {
        // A stream that carried one large control frame does not keep its buffer; one that
        // carries RANGE frames (1 MiB) keeps one of their size.
        let released = self.held.take().is_some();
        if released || self.buf.len() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        let mut head = [0u8; MAX_HEADER];
        let mut have = 0;
        let mut need = 1;
        let h = loop {
            match self.recv.read_exact(&mut head[have..need]).await {
                Ok(()) => {}
                Err(ReadExactError::FinishedEarly(0)) if have == 0 => return Ok(None),
                Err(ReadExactError::FinishedEarly(_)) => {
                    return Err(self.fail(FrameError::Truncated));
                }
                Err(ReadExactError::ReadError(e)) => return Err(read_error(e)),
            }
            have = need;
            match frame::parse_header(&head[..have], &self.limits) {
                Ok(HeaderRead::Header(h)) => break h,
                Ok(HeaderRead::Incomplete(n)) => need = n,
                Err(e) => return Err(self.fail(e)),
            }
        };
        // `h.len` is within the type's limit: only now may the buffer grow.
        let len = h.len as usize;
        if h.len > frame::LARGE_FRAME {
            let time = self.limits.payload_time(h.len);
            match tokio::time::timeout(time, self.read_large(len)).await {
                Ok(r) => r?,
                Err(_) => {
                    let _ = self.recv.stop(ErrorCode::TIMEOUT.to_varint());
                    return Err(NetError::Timeout("a frame's payload"));
                }
            }
        } else {
            if self.buf.len() < len {
                self.buf.resize(len, 0);
            }
            match self.recv.read_exact(&mut self.buf[..len]).await {
                Ok(()) => {}
                Err(ReadExactError::FinishedEarly(_)) => {
                    return Err(self.fail(FrameError::Truncated));
                }
                Err(ReadExactError::ReadError(e)) => return Err(read_error(e)),
            }
        }
        match frame::decode_payload(h.ty, &self.buf[..len]) {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                self.conn
                    .close(e.code().to_varint(), e.to_string().as_bytes());
                Err(NetError::Frame(e))
            }
        }
    }

    /// The next frame, which must exist.
    pub async fn expect(&mut self) -> Result<Frame<'_>, NetError> {
        match self.next().await? {
            Some(f) => Ok(f),
            None => Err(NetError::Protocol(ProtocolError::new(
                ErrorCode::PROTOCOL_VIOLATION,
                "stream ended early",
            ))),
        }
    }

    /// Stops the stream with `code`.
    pub fn stop(&mut self, code: ErrorCode) {
        let _ = self.recv.stop(code.to_varint());
    }
}

fn read_error(e: quinn::ReadError) -> NetError {
    match e {
        quinn::ReadError::Reset(c) => NetError::StreamClosed(ErrorCode::from_varint(c)),
        quinn::ReadError::ConnectionLost(c) => NetError::Connection(c),
        other => NetError::Io(io::Error::other(other)),
    }
}

/// How long [`Node::close`] lets the endpoint's driver send its CONNECTION_CLOSE frames.
pub const CLOSE_FLUSH: Duration = Duration::from_millis(10);

/// PIECE bytes gathered before a write to the stream (`protocol.md` §6.1, "Writing the
/// pieces"): each write takes the connection's lock, which its driver holds while it builds and
/// encrypts packets.
pub const PIECE_BATCH: usize = 2 << 20;

/// Parts of one RANGE frame at most ([`FrameWriter::send_range_shared`]): a range of at most
/// a block spans two blocks at most.
pub const MAX_RANGE_PARTS: usize = 2;

/// A gathering buffer's size: a batch and the PIECE frame that completes it (its header, two
/// varints and at most [`frame::MAX_PIECE`] bytes), so that it never grows.
const BATCH_CAPACITY: usize = PIECE_BATCH + MAX_HEADER + 2 * 8 + frame::MAX_PIECE as usize;

/// Gathering buffers quinn has released (the peer acknowledged their bytes), kept for the next
/// batches of any stream of this process: at most [`SPARE_BATCHES`] of them (about 2 MiB each).
/// A fresh buffer of a megabyte or two costs page faults to fill and is unmapped when dropped;
/// with the ballooned memory of a virtual machine each first touch of a page faults in the host
/// too (`docs/performance.md` "Gathering buffers reused"). They hold only frames that went on
/// the wire (ciphertext and framing), nothing secret.
static SPARE: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
/// Spare gathering buffers kept at most: what one transfer has in flight on a fast link.
const SPARE_BATCHES: usize = 8;

/// A gathering buffer handed to quinn, of which the first `len` bytes are frames; when quinn
/// drops it, it goes back to [`SPARE`].
struct Batch {
    v: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Batch {
    fn as_ref(&self) -> &[u8] {
        &self.v[..self.len]
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.v);
        // Only `push` and `pop` run under the lock: a poisoned list is still whole.
        keep_spare(&mut lock(&SPARE), v);
    }
}

/// Keeps `v` among the `spare` buffers if it is a gathering buffer (at least
/// [`BATCH_CAPACITY`] bytes, and not one a large control frame grew: an OFFER or SEAL may take
/// tens of MiB) and fewer than [`SPARE_BATCHES`] are kept; else frees it. Its bytes are kept
/// as they are (frames that went on the wire): the next frames are written over them, and only
/// bytes no frame ever wrote are zeroed first.
fn keep_spare(spare: &mut Vec<Vec<u8>>, v: Vec<u8>) {
    if (BATCH_CAPACITY..=2 * BATCH_CAPACITY).contains(&v.capacity()) && spare.len() < SPARE_BATCHES
    {
        spare.push(v);
    }
}

/// A gathering buffer of [`BATCH_CAPACITY`] bytes: a spare one if there is one.
fn batch_buffer() -> Vec<u8> {
    lock(&SPARE)
        .pop()
        .unwrap_or_else(|| Vec::with_capacity(BATCH_CAPACITY))
}

/// Writes frames to a QUIC send stream. Small frames are copied into quinn from one reusable
/// buffer; a batch of pieces (or any frame of half a batch or more) is handed over as it is,
/// and another buffer ([`batch_buffer`]) takes its place.
///
/// The frames gathered are `buf[..used]`. Past them `buf` may hold bytes of earlier frames
/// (a reused buffer): a data frame's bytes are written over them, and only bytes never written
/// before are zeroed first (a source writes into a slice).
#[derive(Debug)]
pub struct FrameWriter {
    send: quinn::SendStream,
    buf: Vec<u8>,
    used: usize,
    /// A data frame's header, made here before it is copied into `buf`.
    head: Vec<u8>,
}

impl FrameWriter {
    /// Wraps a send stream.
    pub fn new(send: quinn::SendStream) -> Self {
        FrameWriter {
            send,
            buf: Vec::new(),
            used: 0,
            head: Vec::with_capacity(MAX_HEADER + 2 * 8),
        }
    }

    /// Sends one frame (after any pieces gathered before it).
    pub async fn send(&mut self, f: &Frame<'_>) -> Result<(), NetError> {
        self.flush().await?;
        self.buf.clear();
        f.encode(&mut self.buf);
        self.used = self.buf.len();
        self.flush().await
    }

    /// Adds a PIECE frame whose `len` bytes `fill` writes into the slice it is given (no
    /// intermediate copy; the slice may hold older bytes, so `fill` writes all of it or fails).
    /// The frames are written to the stream [`PIECE_BATCH`] bytes at a time, or by
    /// [`Self::flush`].
    pub async fn send_piece(
        &mut self,
        file: u32,
        piece: u64,
        len: u64,
        fill: impl FnOnce(&mut [u8]) -> io::Result<()>,
    ) -> Result<(), NetError> {
        let header = |b: &mut Vec<u8>| frame::piece_header(b, file, piece, len as usize);
        self.send_data(len, header, fill).await
    }

    /// Adds a RANGE frame of `len` bytes at `offset` whose bytes `fill` writes, gathered as
    /// [`Self::send_piece`] gathers pieces: a relay serving a file reads it straight into the
    /// buffer that goes to quinn.
    pub async fn send_range(
        &mut self,
        offset: u64,
        len: u64,
        fill: impl FnOnce(&mut [u8]) -> io::Result<()>,
    ) -> Result<(), NetError> {
        let header = |b: &mut Vec<u8>| frame::range_header(b, offset, len as usize);
        self.send_data(len, header, fill).await
    }

    /// Writes a RANGE frame at `offset` whose bytes are `parts`, in order, as they are: the
    /// frames gathered before it first, then its header, then the parts, which quinn keeps
    /// until the peer acknowledges them. What a relay serving a large file sends from the
    /// blocks it read directly (`protocol.md` §6.3), without copying them into a frame. At
    /// most [`MAX_RANGE_PARTS`] parts, of [`frame::MAX_RANGE`] bytes in all.
    pub async fn send_range_shared(
        &mut self,
        offset: u64,
        parts: &[bytes::Bytes],
    ) -> Result<(), NetError> {
        let len: usize = parts.iter().map(bytes::Bytes::len).sum();
        if parts.len() > MAX_RANGE_PARTS || len as u64 > frame::MAX_RANGE {
            return Err(NetError::Source(io::Error::other(format!(
                "a RANGE of {len} bytes in {} parts",
                parts.len()
            ))));
        }
        self.flush().await?;
        let mut head = Vec::with_capacity(MAX_HEADER + 2 * 8);
        frame::range_header(&mut head, offset, len);
        let mut chunks: [bytes::Bytes; 1 + MAX_RANGE_PARTS] = Default::default();
        chunks[0] = bytes::Bytes::from(head);
        for (c, p) in chunks[1..].iter_mut().zip(parts) {
            *c = p.clone();
        }
        self.send
            .write_all_chunks(&mut chunks[..1 + parts.len()])
            .await?;
        Ok(())
    }

    /// A data frame: `header`, then the `len` bytes `fill` writes.
    async fn send_data(
        &mut self,
        len: u64,
        header: impl FnOnce(&mut Vec<u8>),
        fill: impl FnOnce(&mut [u8]) -> io::Result<()>,
    ) -> Result<(), NetError> {
        let need = self.used + MAX_HEADER + 2 * 8 + len as usize;
        if need > self.buf.capacity() {
            if self.used == 0 && (PIECE_BATCH / 2..=BATCH_CAPACITY).contains(&need) {
                // A frame of half a batch or more (a RANGE of a large file): a whole
                // gathering buffer, a spare one if there is one.
                self.buf = batch_buffer();
            } else {
                // Doubling (a small file's stream stays small), but never past a batch.
                let size = (self.buf.capacity() * 2).clamp(need, BATCH_CAPACITY.max(need));
                self.buf.truncate(self.used);
                self.buf.reserve_exact(size - self.used);
            }
        }
        self.head.clear();
        header(&mut self.head);
        let start = self.used + self.head.len();
        let end = start + len as usize;
        if self.buf.len() < end {
            // Only bytes no frame ever wrote.
            self.buf.resize(end, 0);
        }
        self.buf[self.used..start].copy_from_slice(&self.head);
        // A failure leaves `used` where it was: the frames gathered before this one stay.
        fill(&mut self.buf[start..end]).map_err(NetError::Source)?;
        self.used = end;
        if self.used >= PIECE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the frames gathered so far. Half a batch or more: the buffer itself goes to quinn,
    /// which keeps it until the peer acknowledges it (no copy of a megabyte under the
    /// connection's lock, and at most twice the bytes it holds); less is copied.
    pub async fn flush(&mut self) -> Result<(), NetError> {
        let len = std::mem::take(&mut self.used);
        if len >= PIECE_BATCH / 2 {
            let v = std::mem::replace(&mut self.buf, batch_buffer());
            let chunk = bytes::Bytes::from_owner(Batch { v, len });
            self.send.write_chunk(chunk).await?;
        } else if len > 0 {
            self.send.write_all(&self.buf[..len]).await?;
        }
        Ok(())
    }

    /// Finishes the stream (after [`Self::flush`]: what is gathered and not written is lost)
    /// and lets the buffer go (back to the spare ones if it is a gathering buffer): nothing
    /// more is written to it.
    pub fn finish(&mut self) {
        debug_assert!(self.used == 0, "finish with frames not written");
        keep_spare(&mut lock(&SPARE), std::mem::take(&mut self.buf));
        self.used = 0;
        let _ = self.send.finish();
    }

    /// Resets the stream with `code` (frames not yet written are dropped).
    pub fn reset(&mut self, code: ErrorCode) {
        self.used = 0;
        let _ = self.send.reset(code.to_varint());
    }
}

/// An authenticated connection after HELLO/WELCOME.
#[derive(Debug, Clone)]
pub struct Session {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// The peer, as its certificate proves.
    pub peer: PeerIdentity,
    /// The negotiated protocol version.
    pub version: u32,
    /// Data streams per transfer (from WELCOME).
    pub max_data_streams: u32,
    /// The relay's published policy (from WELCOME).
    pub policy: PublishedPolicy,
    /// Limits of this node.
    pub limits: Limits,
    /// A relay's budget for large payloads, and its peer's share (`None` at an agency).
    frame_budget: Option<FrameBudget>,
}

/// The connections each agency holds at a relay (`Limits::max_connections_per_agency`), and
/// its share of the large-frame budget, which its connections use together.
type AgencySlots = Arc<Mutex<HashMap<AgencyId, (usize, Arc<tokio::sync::Semaphore>)>>>;

/// One connection counted in [`AgencySlots`] until it is dropped.
#[derive(Debug)]
struct AgencySlot {
    slots: AgencySlots,
    agency: AgencyId,
}

impl AgencySlot {
    /// A place for one more connection of `agency`, unless it holds `max` already, and the
    /// agency's share of the large-frame budget (`share` bytes when it has no connection yet).
    fn take(
        slots: &AgencySlots,
        agency: &AgencyId,
        max: usize,
        share: usize,
    ) -> Option<(AgencySlot, Arc<tokio::sync::Semaphore>)> {
        let mut held = lock(slots);
        if held.get(agency).map_or(0, |(n, _)| *n) >= max {
            return None;
        }
        let (n, budget) = held
            .entry(agency.clone())
            .or_insert_with(|| (0, Arc::new(tokio::sync::Semaphore::new(share))));
        *n += 1;
        Some((
            AgencySlot {
                slots: slots.clone(),
                agency: agency.clone(),
            },
            budget.clone(),
        ))
    }
}

impl Drop for AgencySlot {
    fn drop(&mut self) {
        let mut held = lock(&self.slots);
        if let Some((n, _)) = held.get_mut(&self.agency) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.agency);
            }
        }
    }
}

impl Session {
    /// Opens a bidirectional request stream.
    pub async fn open(&self) -> Result<(FrameWriter, FrameReader), NetError> {
        let (s, r) = self.conn.open_bi().await?;
        Ok((
            FrameWriter::new(s),
            FrameReader::new(r, self.conn.clone(), self.limits.frames),
        ))
    }

    /// Closes the connection with `code`.
    pub fn close(&self, code: ErrorCode, reason: &str) {
        self.conn.close(code.to_varint(), reason.as_bytes());
    }

    /// The TLS key-exchange group this connection negotiated, observed while its handshake ran
    /// (`protocol.md` §2, [`crate::kx`]): `X25519MLKEM768` between our own nodes.
    pub fn key_exchange_group(&self) -> Option<rustls::NamedGroup> {
        crate::kx::negotiated_group(&self.conn)
    }

    /// Whether the key exchange was the hybrid post-quantum X25519MLKEM768.
    pub fn is_post_quantum(&self) -> bool {
        self.key_exchange_group() == Some(crate::kx::POST_QUANTUM_GROUP)
    }
}

/// `protocol.md` §2: with [`PeerTrust::require_post_quantum`], a connection whose handshake did
/// not negotiate X25519MLKEM768 is closed (the TLS configuration already offers nothing else;
/// this checks what the connection reports).
fn check_key_exchange(trust: &PeerTrust, conn: &quinn::Connection) -> Result<(), NetError> {
    if trust.requires_post_quantum()
        && crate::kx::negotiated_group(conn) != Some(crate::kx::POST_QUANTUM_GROUP)
    {
        let e = ProtocolError::new(
            ErrorCode::NOT_AUTHORISED,
            "the TLS handshake did not negotiate X25519MLKEM768",
        );
        conn.close(e.code.to_varint(), e.message.as_bytes());
        return Err(e.into());
    }
    Ok(())
}

fn peer_of(conn: &quinn::Connection) -> Result<PeerIdentity, NetError> {
    conn.peer_identity()
        .and_then(|a| {
            a.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|c| PeerIdentity::from_chain(&c))
        .ok_or_else(|| {
            NetError::Protocol(ProtocolError::new(
                ErrorCode::NOT_AUTHORISED,
                "peer presented no usable certificate",
            ))
        })
}

/// A QUIC endpoint: a relay (server) or a client.
#[derive(Debug)]
pub struct Node {
    endpoint: quinn::Endpoint,
    limits: Limits,
    agency: AgencyId,
    identity: TlsIdentity,
    /// Replaced by [`Node::reload`] (`relay.md` §11).
    trust: std::sync::RwLock<PeerTrust>,
    active: Arc<tokio::sync::Semaphore>,
    /// Established connections per agency (a relay's).
    slots: AgencySlots,
    /// [`Limits::large_frame_budget`], shared by the sessions this node serves, and the share
    /// of one agency.
    frame_budget: Arc<tokio::sync::Semaphore>,
    agency_share: usize,
    /// Replaced by [`Node::set_policy`].
    policy: std::sync::RwLock<PublishedPolicy>,
    server: bool,
    /// The connections [`Node::serve`] holds, by QUIC stable id (re-checked on a reload).
    sessions: Mutex<HashMap<usize, quinn::Connection>>,
    /// Reloads so far, counted under the `sessions` lock: a connection whose handshake spanned a
    /// reload is re-checked before it is registered.
    reloads: std::sync::atomic::AtomicU64,
    /// The connections [`Node::connect`] opened: [`Node::close`] waits until each has sent its
    /// CONNECTION_CLOSE.
    outgoing: Mutex<Vec<quinn::Connection>>,
}

fn read<T: Clone>(l: &std::sync::RwLock<T>) -> T {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(l: &std::sync::RwLock<T>, v: T) {
    *l.write().unwrap_or_else(|p| p.into_inner()) = v;
}

/// Closes `conn` with `NO_LONGER_TRUSTED` if `check` now refuses its certificate chain
/// (`relay.md` §11); returns `Some(its agency, if known)` when it did.
fn close_if_untrusted(
    check: &crate::tls::ClientVerifier,
    conn: &quinn::Connection,
) -> Option<Option<AgencyId>> {
    let chain = conn.peer_identity().and_then(|a| {
        a.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    })?;
    let (first, rest) = chain.split_first()?;
    let now = rustls::pki_types::UnixTime::now();
    let e = rustls::server::danger::ClientCertVerifier::verify_client_cert(check, first, rest, now)
        .err()?;
    let who = PeerIdentity::from_chain(&chain).map(|p| p.agency);
    let name = who
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    let reason = format!("{name} is no longer trusted: {e}");
    tracing::warn!(peer = %name, error = %e, "closing connection: no longer trusted");
    conn.close(ErrorCode::NO_LONGER_TRUSTED.to_varint(), reason.as_bytes());
    Some(who)
}

/// Answers a HELLO with ERROR `e` instead of WELCOME, so that the peer can report why, and
/// closes the connection with its code.
async fn refuse_hello(mut w: FrameWriter, conn: &quinn::Connection, e: ProtocolError) -> NetError {
    // The close carries the code too, should the ERROR frame not get through.
    if w.send(&Frame::Error(ErrorFrame {
        code: e.code,
        message: e.message.clone(),
    }))
    .await
    .is_ok()
    {
        w.finish();
    }
    conn.close(e.code.to_varint(), e.message.as_bytes());
    e.into()
}

/// Removes a connection from [`Node::serve`]'s table when its task ends.
struct Registered<'a>(&'a Mutex<HashMap<usize, quinn::Connection>>, usize);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl Node {
    /// A relay listening on `addr`.
    pub fn server(
        addr: SocketAddr,
        identity: TlsIdentity,
        trust: PeerTrust,
        limits: Limits,
    ) -> Result<Self, NetError> {
        let cfg = server_config(&identity, trust.clone(), &limits)?;
        let mut n =
            Self::with_endpoint(limits.endpoint(addr, Some(cfg))?, identity, trust, limits)?;
        n.server = true;
        Ok(n)
    }

    /// A client bound to an ephemeral port of the given family.
    pub fn client(
        ipv6: bool,
        identity: TlsIdentity,
        trust: PeerTrust,
        limits: Limits,
    ) -> Result<Self, NetError> {
        let bind: SocketAddr = if ipv6 {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        Self::with_endpoint(limits.endpoint(bind, None)?, identity, trust, limits)
    }

    fn with_endpoint(
        endpoint: quinn::Endpoint,
        identity: TlsIdentity,
        trust: PeerTrust,
        limits: Limits,
    ) -> Result<Self, NetError> {
        let agency = identity.agency()?;
        let active = Arc::new(tokio::sync::Semaphore::new(limits.max_incoming));
        // Each at least the largest frame, which could wait for ever otherwise.
        let largest = frame::FrameType::ALL
            .iter()
            .map(|t| t.limit(&limits.frames))
            .max()
            .unwrap_or(0);
        let whole = usize::try_from(limits.large_frame_budget.max(largest))
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let agency_share = (whole / 4).max(usize::try_from(largest).unwrap_or(usize::MAX));
        let frame_budget = Arc::new(tokio::sync::Semaphore::new(whole));
        Ok(Node {
            endpoint,
            limits,
            agency,
            identity,
            trust: std::sync::RwLock::new(trust),
            active,
            slots: AgencySlots::default(),
            frame_budget,
            agency_share,
            policy: std::sync::RwLock::new(PublishedPolicy::default()),
            server: false,
            sessions: Mutex::new(HashMap::new()),
            reloads: std::sync::atomic::AtomicU64::new(0),
            outgoing: Mutex::new(Vec::new()),
        })
    }

    /// A relay publishes this policy in every WELCOME (`protocol.md` §6.0).
    pub fn with_policy(self, policy: PublishedPolicy) -> Self {
        self.set_policy(policy);
        self
    }

    /// Publishes `policy` in the WELCOME of every later connection (a reloaded policy).
    pub fn set_policy(&self, policy: PublishedPolicy) {
        write(&self.policy, policy);
    }

    /// Replaces who is trusted (`relay.md` §11): later handshakes are checked against `trust`,
    /// and every connection [`Node::serve`] holds whose certificate `trust` would now refuse
    /// (agency removed, TLS key revoked, pin changed, CRL) is closed with `NO_LONGER_TRUSTED`
    /// (`protocol.md` §7). Returns the agencies of the connections closed. If `trust` cannot
    /// make a TLS configuration, nothing changes.
    pub fn reload(&self, trust: PeerTrust) -> Result<Vec<AgencyId>, NetError> {
        let check = crate::tls::ClientVerifier::new(
            trust.without_hook(),
            &crate::tls::provider_for(trust.requires_post_quantum()),
        )?;
        if self.server {
            let cfg = server_config(&self.identity, trust.clone(), &self.limits)?;
            self.endpoint.set_server_config(Some(cfg));
        }
        // The new trust and the snapshot of connections under one lock: a connection registered
        // after it was checked under the new trust (see `serve`).
        let conns: Vec<quinn::Connection> = {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            write(&self.trust, trust);
            self.reloads
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            sessions.values().cloned().collect()
        };
        let mut closed = Vec::new();
        for conn in conns {
            if let Some(who) = close_if_untrusted(&check, &conn) {
                closed.extend(who);
            }
        }
        Ok(closed)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// This node's agency.
    pub fn agency(&self) -> &AgencyId {
        &self.agency
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Connects to a relay, authenticates it (optionally as `expect`), and runs HELLO/WELCOME,
    /// all within the handshake timeout.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expect: Option<AgencyId>,
    ) -> Result<Session, NetError> {
        let cfg = client_config(
            &self.identity,
            read(&self.trust),
            expect.clone(),
            &self.limits,
        )?;
        let name = match &expect {
            Some(a) => crate::tls::agency_dns_name(a),
            None => "relay.rogatory.invalid".to_owned(),
        };
        let fut = async {
            let conn = self.endpoint.connect_with(cfg, addr, &name)?.await?;
            {
                let mut out = lock(&self.outgoing);
                out.retain(|c| c.close_reason().is_none());
                out.push(conn.clone());
            }
            let peer = peer_of(&conn)?;
            check_key_exchange(&read(&self.trust), &conn)?;
            let (s, r) = conn.open_bi().await?;
            let mut w = FrameWriter::new(s);
            let mut r = FrameReader::new(r, conn.clone(), self.limits.frames);
            let hello = Hello {
                versions: VERSIONS.to_vec(),
                agency: self.agency.clone(),
                software: software(),
            };
            w.send(&Frame::Hello(hello)).await?;
            w.finish();
            let welcome = match r.expect().await? {
                Frame::Welcome(w) => w,
                Frame::Error(e) => {
                    return Err(NetError::Protocol(ProtocolError::new(e.code, e.message)));
                }
                other => {
                    let m = format!("expected WELCOME, got {}", other.ty().name());
                    conn.close(ErrorCode::PROTOCOL_VIOLATION.to_varint(), m.as_bytes());
                    return Err(NetError::Protocol(ProtocolError::new(
                        ErrorCode::PROTOCOL_VIOLATION,
                        m,
                    )));
                }
            };
            if !VERSIONS.contains(&welcome.version) || welcome.agency != peer.agency {
                conn.close(ErrorCode::PROTOCOL_VIOLATION.to_varint(), b"bad WELCOME");
                return Err(NetError::Protocol(ProtocolError::new(
                    ErrorCode::PROTOCOL_VIOLATION,
                    "WELCOME names another version or agency than the handshake",
                )));
            }
            Ok(Session {
                conn,
                peer,
                version: welcome.version,
                max_data_streams: welcome.max_data_streams.max(1),
                policy: welcome.policy,
                limits: self.limits.clone(),
                frame_budget: None,
            })
        };
        tokio::time::timeout(self.limits.handshake_timeout, fut)
            .await
            .map_err(|_| NetError::Timeout("handshake"))?
    }

    /// The next incoming connection's outcome: a session, or why it was refused (tests and
    /// diagnostics; [`Node::serve`] is the server loop, and the only one that keeps count of
    /// each agency's connections). `None` when the endpoint is closed.
    pub async fn accept_next(&self) -> Option<Result<Session, NetError>> {
        let incoming = self.endpoint.accept().await?;
        Some(
            match tokio::time::timeout(self.limits.handshake_timeout, self.handshake(incoming))
                .await
            {
                Ok(r) => r.map(|(session, _)| session),
                Err(_) => Err(NetError::Timeout("handshake")),
            },
        )
    }

    /// Accepts connections forever, handing each authenticated session to `serve` on its own
    /// task (the handshake of one slow client does not hold up the others).
    pub async fn serve<F, Fut>(self: &Arc<Self>, serve: F)
    where
        F: Fn(Session) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let serve = Arc::new(serve);
        while let Some(incoming) = self.endpoint.accept().await {
            let Ok(permit) = self.active.clone().try_acquire_owned() else {
                tracing::warn!(remote = %incoming.remote_address(), "refusing connection: max_incoming reached");
                incoming.refuse();
                continue;
            };
            let me = self.clone();
            let serve = serve.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let reloads = me.reloads.load(std::sync::atomic::Ordering::SeqCst);
                match tokio::time::timeout(me.limits.handshake_timeout, me.handshake(incoming))
                    .await
                {
                    Ok(Ok((s, _slot))) => {
                        let kx = s.key_exchange_group().map(crate::kx::group_name);
                        let id = s.conn.stable_id();
                        {
                            let mut sessions =
                                me.sessions.lock().unwrap_or_else(|p| p.into_inner());
                            // A reload during the handshake: checked under the trust it set,
                            // which `reload` cannot have seen this connection for.
                            if me.reloads.load(std::sync::atomic::Ordering::SeqCst) != reloads {
                                let trust = read(&me.trust);
                                let refused = crate::tls::ClientVerifier::new(
                                    trust.without_hook(),
                                    &crate::tls::provider_for(trust.requires_post_quantum()),
                                )
                                .map_or(true, |check| {
                                    close_if_untrusted(&check, &s.conn).is_some()
                                });
                                if refused {
                                    s.conn.close(
                                        ErrorCode::NO_LONGER_TRUSTED.to_varint(),
                                        b"no longer trusted",
                                    );
                                    return;
                                }
                            }
                            sessions.insert(id, s.conn.clone());
                        }
                        tracing::info!(peer = %s.peer.agency, kx = kx.as_deref().unwrap_or("unknown"), "session established");
                        let _registered = Registered(&me.sessions, id);
                        serve(s).await
                    }
                    Ok(Err(e)) => tracing::info!(error = %e, "connection refused"),
                    Err(_) => tracing::info!("handshake timed out"),
                }
            });
        }
    }

    /// The TLS handshake and HELLO/WELCOME of an incoming connection, and its place among its
    /// agency's connections, which the caller holds for as long as it serves the connection.
    async fn handshake(
        &self,
        incoming: quinn::Incoming,
    ) -> Result<(Session, AgencySlot), NetError> {
        let conn = incoming.accept()?.await?;
        let peer = peer_of(&conn)?;
        check_key_exchange(&read(&self.trust), &conn)?;
        let (s, r) = conn.accept_bi().await?;
        let mut w = FrameWriter::new(s);
        let mut r = FrameReader::new(r, conn.clone(), self.limits.frames);
        let hello = match r.expect().await? {
            Frame::Hello(h) => h,
            other => {
                let m = format!("expected HELLO, got {}", other.ty().name());
                conn.close(ErrorCode::PROTOCOL_VIOLATION.to_varint(), m.as_bytes());
                return Err(NetError::Protocol(ProtocolError::new(
                    ErrorCode::PROTOCOL_VIOLATION,
                    m,
                )));
            }
        };
        if hello.agency != peer.agency {
            let e = ProtocolError::new(
                ErrorCode::NOT_AUTHORISED,
                "HELLO names another agency than the certificate",
            );
            conn.close(e.code.to_varint(), e.message.as_bytes());
            return Err(e.into());
        }
        let Some(version) = VERSIONS
            .iter()
            .copied()
            .find(|v| hello.versions.contains(v))
        else {
            let e = ProtocolError::new(
                ErrorCode::UNSUPPORTED_VERSION,
                "no protocol version in common",
            );
            return Err(refuse_hello(w, &conn, e).await);
        };
        // Counted once the peer is known and speaks our protocol, refused with an answer it can
        // report (`protocol.md` §8): BUSY is retryable.
        let Some((slot, share)) = AgencySlot::take(
            &self.slots,
            &peer.agency,
            self.limits.max_connections_per_agency,
            self.agency_share,
        ) else {
            let e = ProtocolError::new(
                ErrorCode::BUSY,
                format!(
                    "{} already holds as many connections to this relay as it may ({}): retry when one ends",
                    peer.agency, self.limits.max_connections_per_agency
                ),
            );
            // A waiting client tries again every few seconds: not a warning each time.
            tracing::info!(peer = %peer.agency, limit = self.limits.max_connections_per_agency, "refusing connection: too many from this agency");
            return Err(refuse_hello(w, &conn, e).await);
        };
        let welcome = Welcome {
            version,
            agency: self.agency.clone(),
            software: software(),
            max_data_streams: self.limits.max_data_streams,
            policy: read(&self.policy),
        };
        w.send(&Frame::Welcome(welcome)).await?;
        w.finish();
        let session = Session {
            conn,
            peer,
            version,
            max_data_streams: self.limits.max_data_streams,
            policy: read(&self.policy),
            limits: self.limits.clone(),
            frame_budget: Some(FrameBudget {
                all: self.frame_budget.clone(),
                agency: share,
            }),
        };
        Ok((session, slot))
    }

    /// Closes the endpoint and waits until peers have been told: the closing period of every
    /// connection (three probe timeouts, RFC 9000 §10.2), at most 2 s. For a relay stopping.
    pub async fn shutdown(&self, code: ErrorCode) {
        self.endpoint.close(code.to_varint(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    /// Closes the endpoint once a client is done with it: returns once every connection it
    /// opened has sent a datagram since (its CONNECTION_CLOSE: a closed connection sends
    /// nothing else), or after [`CLOSE_FLUSH`], without waiting out the closing period, which
    /// only re-sends it to a peer that keeps talking (RFC 9000 §10.2.1). A relay that missed one
    /// drops the connection at its idle timeout. The closing period cost every `send` 80 ms
    /// over loopback, and up to 2 s on a long link; the whole flush, 10 ms a command.
    pub async fn close(&self, code: ErrorCode) {
        // Counted after `close`: a datagram counted before it could be an acknowledgement, and
        // this would return before the CONNECTION_CLOSE left. (If the driver sends it between
        // the two calls, the wait below runs to its end, as it always did.)
        let open: Vec<(quinn::Connection, u64)> = std::mem::take(&mut *lock(&self.outgoing))
            .into_iter()
            .filter(|c| c.close_reason().is_none())
            .map(|c| {
                c.close(code.to_varint(), b"done");
                let sent = c.stats().udp_tx.datagrams;
                (c, sent)
            })
            .collect();
        self.endpoint.close(code.to_varint(), b"done");
        let deadline = Instant::now() + CLOSE_FLUSH;
        while open
            .iter()
            .any(|(c, sent)| c.stats().udp_tx.datagrams == *sent)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    }
}

fn software() -> String {
    concat!("rogatory ", env!("CARGO_PKG_VERSION")).to_owned()
}

/// Where the sender's bytes come from (`protocol.md` §6.1): the ciphertext of every piece,
/// produced as it is sent, and at the end the sealed manifest that the data determined.
pub trait PieceSource: Send {
    /// The relay accepted the offer and holds `durable[i]` pieces of file `i`: the next piece
    /// asked for each file is at most that one. A source that cannot continue from there
    /// (its input changed) fails the upload.
    fn resume(&mut self, durable: &[u64]) -> io::Result<()> {
        let _ = durable;
        Ok(())
    }
    /// Writes the ciphertext of piece `piece` of `file` into `out`, which is exactly the
    /// piece's length (`PieceLayout::range`) and may hold bytes of earlier frames, of this or
    /// another transfer: every byte of it must be written, or an error returned. Pieces of a
    /// file are asked for in order from its durable prefix; after a rewind, earlier ones again.
    fn piece(&mut self, file: u32, piece: u64, out: &mut [u8]) -> io::Result<()>;
    /// Pieces `0..pieces` of `file` are durable at the relay (what a later resume starts from).
    fn durable(&mut self, file: u32, pieces: u64) -> io::Result<()> {
        let _ = (file, pieces);
        Ok(())
    }
    /// Every piece is durable: the sealed manifest, as `(seal note, manifest JSON, encrypted
    /// contents)` (`custody.md` §5.4).
    fn seal(&mut self) -> io::Result<(String, String, Vec<u8>)>;
}

/// The outcome of a completed upload.
#[derive(Debug, Clone)]
pub struct UploadOutcome {
    /// The custody receipt.
    pub receipt: Receipt,
    /// Counters.
    pub stats: UploadStats,
}

/// Runs an upload over `session` (`protocol.md` §6.1): OFFER on a new bidirectional stream,
/// data on unidirectional streams, SEAL once every piece is durable, until the custody receipt
/// arrives or the upload fails. `on_event` sees every [`UploadEvent`].
pub async fn upload(
    session: &Session,
    offer: &Offer,
    layouts: Vec<PieceLayout>,
    cfg: crate::upload::UploadConfig,
    source: &mut dyn PieceSource,
    mut on_event: impl FnMut(&UploadEvent) + Send,
) -> Result<UploadOutcome, NetError> {
    let mut up = Upload::new(offer.transfer, layouts, cfg, Instant::now().into_std());
    up.limit_streams(session.max_data_streams as usize);
    let (send, recv) = session.conn.open_bi().await?;
    let mut control = FrameWriter::new(send);
    // Frames from the relay arrive on their own task so that acknowledgements are seen while
    // a data write waits for flow control.
    let (tx, mut rx) = mpsc::channel::<Result<Frame<'static>, NetError>>(64);
    let mut reader = FrameReader::new(recv, session.conn.clone(), session.limits.frames);
    let reader_task = tokio::spawn(async move {
        loop {
            let item = match reader.next().await {
                Ok(Some(f)) => match owned(f) {
                    Some(f) => Ok(f),
                    None => Err(NetError::Protocol(ProtocolError::new(
                        ErrorCode::PROTOCOL_VIOLATION,
                        "data frame on the upload stream",
                    ))),
                },
                Ok(None) => Err(NetError::Protocol(ProtocolError::new(
                    ErrorCode::PROTOCOL_VIOLATION,
                    "relay ended the upload stream",
                ))),
                Err(e) => Err(e),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    let _guard = AbortOnDrop(reader_task);
    let mut streams: HashMap<StreamNumber, FrameWriter> = HashMap::new();
    let mut late_error: Option<NetError> = None;
    let mut receipt = None;

    // The stream the last piece went to: when the next one goes elsewhere, that stream's turn
    // is over and what it gathered is written (`protocol.md` §6.1 "Data streams").
    let mut last_stream: Option<StreamNumber> = None;

    loop {
        // Everything that arrived so far.
        loop {
            match rx.try_recv() {
                Ok(Ok(f)) => up.handle(Instant::now().into_std(), &f),
                Ok(Err(e)) => {
                    late_error.get_or_insert(e);
                    break;
                }
                Err(_) => break,
            }
        }
        // The timers, however busy the sending (a send paced by its sources never waits below).
        let now = Instant::now().into_std();
        if up.poll_timeout().is_some_and(|t| t <= now) {
            up.handle_timeout(now);
        }
        while let Some(e) = up.poll_event() {
            match &e {
                UploadEvent::Accepted { durable, .. } => {
                    source.resume(durable).map_err(NetError::Source)?
                }
                UploadEvent::Durable { file, pieces } => {
                    source.durable(*file, *pieces).map_err(NetError::Source)?
                }
                _ => {}
            }
            on_event(&e);
            if let UploadEvent::Receipt(r) = e {
                receipt = Some(r);
            }
        }
        match up.phase() {
            UploadPhase::Done => break,
            UploadPhase::Failed(e) => {
                let e = e.clone();
                for (_, mut w) in streams.drain() {
                    w.reset(e.code);
                }
                return Err(NetError::Protocol(e));
            }
            _ => {}
        }
        if let Some(e) = late_error.take() {
            for (_, mut w) in streams.drain() {
                w.reset(ErrorCode::INTERNAL);
            }
            return Err(e);
        }
        if let Some(t) = up.poll_transmit() {
            match t {
                Transmit::Offer => control.send(&Frame::Offer(offer.clone())).await?,
                Transmit::Open { stream } => {
                    let opened = async {
                        let mut w = FrameWriter::new(session.conn.open_uni().await?);
                        let attach = Attach {
                            transfer: offer.transfer,
                        };
                        w.send(&Frame::Attach(attach)).await.map(|()| w)
                    };
                    if let Some(w) =
                        while_waiting(opened, stream, &mut up, &mut rx, &mut late_error).await?
                    {
                        streams.insert(stream, w);
                    }
                }
                Transmit::Piece {
                    stream,
                    file,
                    piece,
                    len,
                } => {
                    if let Some(prev) = last_stream.replace(stream)
                        && prev != stream
                        && let Some(w) = streams.get_mut(&prev)
                    {
                        while_waiting(w.flush(), prev, &mut up, &mut rx, &mut late_error).await?;
                    }
                    debug_assert!(streams.contains_key(&stream), "a piece for a stream held");
                    if let Some(w) = streams.get_mut(&stream) {
                        let write =
                            w.send_piece(file, piece, len, |out| source.piece(file, piece, out));
                        while_waiting(write, stream, &mut up, &mut rx, &mut late_error).await?;
                    }
                }
                Transmit::Finish { stream } => {
                    if let Some(w) = streams.get_mut(&stream)
                        && while_waiting(w.flush(), stream, &mut up, &mut rx, &mut late_error)
                            .await?
                            .is_some()
                    {
                        w.finish();
                    }
                }
                Transmit::Release { stream } => {
                    streams.remove(&stream);
                }
                Transmit::Reset { stream } => {
                    if let Some(mut w) = streams.remove(&stream) {
                        w.reset(ErrorCode::NO_ERROR);
                    }
                }
                Transmit::Seal => {
                    let (seal, manifest, contents) = source.seal().map_err(NetError::Source)?;
                    control
                        .send(&Frame::Seal(Seal {
                            transfer: offer.transfer,
                            seal,
                            manifest,
                            contents,
                        }))
                        .await?;
                }
            }
            continue;
        }
        // Nothing to send: the pieces gathered go out, then wait for the relay or the next
        // timeout.
        let mut lost = false;
        for (&stream, w) in &mut streams {
            lost |= while_waiting(w.flush(), stream, &mut up, &mut rx, &mut late_error)
                .await?
                .is_none();
        }
        if lost {
            continue;
        }
        let deadline = up.poll_timeout().map(Instant::from_std);
        tokio::select! {
            m = rx.recv() => match m {
                Some(Ok(f)) => up.handle(Instant::now().into_std(), &f),
                Some(Err(e)) => { late_error = Some(e); }
                None => { late_error = Some(NetError::Timeout("upload stream reader ended")); }
            },
            _ = sleep_until(deadline) => up.handle_timeout(Instant::now().into_std()),
        }
    }
    control.finish();
    let stats = up.stats();
    let receipt = receipt.ok_or_else(|| {
        NetError::Protocol(ProtocolError::new(
            ErrorCode::INTERNAL,
            "upload done without a receipt",
        ))
    })?;
    Ok(UploadOutcome { receipt, stats })
}

/// Awaits `write` to data stream `stream` while the relay's frames are handled and the
/// upload's timers run (`protocol.md` §6.1 "Rewind"): a write held up by flow control on a
/// stream the relay no longer reads (a relay whose disk hangs, say) would otherwise stop both,
/// and the upload would wait for ever instead of timing out. `Ok(None)`: the write was
/// abandoned, because the stream was lost (the relay stopped it: `up` was told), reset or
/// released meanwhile (what it was writing goes with the stream), or the upload failed
/// (`up`'s phase or `late_error` says so); `Err`: any other failure, which ends the upload.
async fn while_waiting<T>(
    write: impl std::future::Future<Output = Result<T, NetError>>,
    stream: StreamNumber,
    up: &mut Upload,
    rx: &mut mpsc::Receiver<Result<Frame<'static>, NetError>>,
    late_error: &mut Option<NetError>,
) -> Result<Option<T>, NetError> {
    let done = |r: Result<T, NetError>, up: &mut Upload| match r {
        Ok(v) => Ok(Some(v)),
        Err(NetError::StreamClosed(_)) => {
            up.stream_lost(stream);
            Ok(None)
        }
        Err(e) => Err(e),
    };
    tokio::pin!(write);
    // Most writes are done at once (a piece is only gathered): no timers for them.
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match write.as_mut().poll(cx) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => None,
        })
    })
    .await;
    if let Some(r) = first {
        return done(r, up);
    }
    loop {
        let deadline = [up.poll_timeout(), up.stall_deadline()]
            .into_iter()
            .flatten()
            .min()
            .map(Instant::from_std);
        tokio::select! {
            biased;
            r = &mut write => return done(r, up),
            m = rx.recv(), if late_error.is_none() => match m {
                Some(Ok(f)) => up.handle(Instant::now().into_std(), &f),
                Some(Err(e)) => *late_error = Some(e),
                None => *late_error = Some(NetError::Timeout("upload stream reader ended")),
            },
            _ = sleep_until(deadline) => {
                let now = Instant::now().into_std();
                up.handle_timeout(now);
                up.write_stalled(now, stream);
            }
        }
        if late_error.is_some() || !up.holds(stream) {
            return Ok(None);
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A control frame as an owned value (`None` for PIECE and RANGE, which borrow).
pub fn owned(f: Frame<'_>) -> Option<Frame<'static>> {
    Some(match f {
        Frame::Hello(v) => Frame::Hello(v),
        Frame::Welcome(v) => Frame::Welcome(v),
        Frame::Offer(v) => Frame::Offer(v),
        Frame::Accept(v) => Frame::Accept(v),
        Frame::Durable(v) => Frame::Durable(v),
        Frame::Receipt(v) => Frame::Receipt(v),
        Frame::Attach(v) => Frame::Attach(v),
        Frame::InboxRequest(v) => Frame::InboxRequest(v),
        Frame::Inbox(v) => Frame::Inbox(v),
        Frame::Fetch(v) => Frame::Fetch(v),
        Frame::FetchHead(v) => Frame::FetchHead(v),
        Frame::StatusRequest(v) => Frame::StatusRequest(v),
        Frame::Status(v) => Frame::Status(v),
        Frame::Deliver(v) => Frame::Deliver(v),
        Frame::Seal(v) => Frame::Seal(v),
        Frame::CheckpointRequest(v) => Frame::CheckpointRequest(v),
        Frame::Checkpoint(v) => Frame::Checkpoint(v),
        Frame::AddCheckpoint(v) => Frame::AddCheckpoint(v),
        Frame::Cosignature(v) => Frame::Cosignature(v),
        Frame::WitnessSize(v) => Frame::WitnessSize(v),
        Frame::Error(v) => Frame::Error(v),
        Frame::Piece(_) | Frame::Range(_) => return None,
    })
}

/// One upload of a transfer as the relay holds it (`relay.md` §2 "One upload at a time"). A
/// newer offer of the same transfer (its sender started again while the relay still holds the
/// old connection) takes the upload over: the older lease is refused with `CONFLICT` from then on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The transfer uploaded.
    pub transfer: TransferId,
    /// Which offer of it: distinct for every offer the relay accepts.
    pub id: u64,
}

/// An accepted offer ([`IntakeHandler::offer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Each file's pieces.
    pub layouts: Vec<PieceLayout>,
    /// `durable[i]` pieces of file `i` are already durable (resume).
    pub durable: Vec<u64>,
    /// The upload's lease, passed to every later call.
    pub lease: Lease,
}

/// What a relay does with uploads (`protocol.md` §6.2). The relay crate implements it over its
/// durable store; tests implement it in memory. Methods may block briefly (disk I/O); `sync`
/// and `receipt`, which fsync, run on the blocking pool.
pub trait IntakeHandler: Send + Sync + 'static {
    /// Decides on an offer by `peer` and, if it is accepted, leases its upload to the caller.
    /// Called on a blocking thread: it may commit and fsync.
    fn offer(&self, peer: &PeerIdentity, offer: &Offer) -> Result<Accepted, ProtocolError>;
    /// The next piece of `file`: hash it and write it (not yet durable).
    fn store(&self, lease: Lease, file: u32, piece: u64, bytes: &[u8])
    -> Result<(), ProtocolError>;
    /// Makes everything stored so far durable; returns each file's durable piece count.
    /// Called from one task per transfer while `store` goes on: it must not stall `store` for
    /// the duration of an fsync.
    fn sync(&self, lease: Lease) -> Result<Vec<u64>, ProtocolError>;
    /// Every piece is durable and the sender sealed the manifest: check the seal against the
    /// offer and the pieces held, then log and sign the custody receipt.
    fn complete(
        &self,
        peer: &PeerIdentity,
        lease: Lease,
        seal: &Seal,
    ) -> Result<String, ProtocolError>;
    /// The upload ended without completing (connection lost, failure); the store keeps what
    /// is durable. A lease already taken over is left alone.
    fn abandon(&self, _lease: Lease) {}
}

/// Relay-side settings of the upload driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// Sync stored data at most this often (data and index fsync, then DURABLE).
    pub sync_interval: Duration,
    /// Intake settings.
    pub intake: IntakeConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            sync_interval: Duration::from_millis(20),
            intake: IntakeConfig::default(),
        }
    }
}

#[derive(Debug)]
struct Active {
    lease: Lease,
    state: Mutex<ActiveState>,
    notify: Notify,
}

#[derive(Debug)]
struct ActiveState {
    intake: Intake,
    dirty: bool,
    failed: Option<ProtocolError>,
}

/// The connection's uploads; `None` while an offer is being decided.
type Registry = Arc<Mutex<HashMap<TransferId, Option<Arc<Active>>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock is a bug; the state is still consistent enough to fail
    // the transfer cleanly, so continue with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves one connection's uploads: OFFER streams and data streams, until the connection ends.
/// A bidirectional stream that starts with another request is passed to `other` (inbox, fetch,
/// status, deliver), which owns it from then on.
pub async fn serve_connection<H, R, Fut>(
    session: Session,
    handler: Arc<H>,
    cfg: ServeConfig,
    other: R,
) where
    H: IntakeHandler,
    R: Fn(Session, Frame<'static>, FrameWriter, FrameReader) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let registry: Registry = Arc::default();
    let other = Arc::new(other);
    loop {
        tokio::select! {
            bi = session.conn.accept_bi() => {
                let Ok((s, r)) = bi else { break };
                let (session, handler, cfg, registry, other) = (session.clone(), handler.clone(), cfg.clone(), registry.clone(), other.clone());
                tokio::spawn(async move {
                    let mut w = FrameWriter::new(s);
                    let mut r = FrameReader::new(r, session.conn.clone(), session.limits.frames)
                        .with_budget(session.frame_budget.clone());
                    let first = match r.next().await {
                        Ok(Some(f)) => owned(f),
                        Ok(None) | Err(_) => return,
                    };
                    match first {
                        Some(Frame::Offer(offer)) => serve_upload(session, handler, cfg, registry, offer, w, r).await,
                        Some(f) => other(session, f, w, r).await,
                        None => {
                            let e = ErrorCode::PROTOCOL_VIOLATION;
                            let _ = w.send(&Frame::Error(ErrorFrame { code: e, message: "data frame on a request stream".into() })).await;
                            session.close(e, "data frame on a request stream");
                        }
                    }
                });
            }
            uni = session.conn.accept_uni() => {
                let Ok(r) = uni else { break };
                let (session, handler, registry) = (session.clone(), handler.clone(), registry.clone());
                tokio::spawn(async move {
                    let r = FrameReader::new(r, session.conn.clone(), session.limits.frames)
                        .with_budget(session.frame_budget.clone());
                    serve_data(session, handler, registry, r).await;
                });
            }
        }
    }
    if let Some(reason) = session.conn.close_reason() {
        tracing::debug!(peer = %session.peer.agency, %reason, "connection ended");
    }
    let left: Vec<Lease> = lock(&registry)
        .drain()
        .filter_map(|(_, a)| a.map(|a| a.lease))
        .collect();
    for l in left {
        handler.abandon(l);
    }
}

/// Runs `f`, work that may wait for the disk (an fsync, a lock held through one), on a
/// blocking thread, so that the async worker's other connections go on meanwhile. A task that
/// fails (a panic) is logged and answered `INTERNAL`, without its message.
pub async fn off_worker<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProtocolError> + Send + 'static,
) -> Result<T, ProtocolError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "a blocking task failed");
        Err(ProtocolError::new(ErrorCode::INTERNAL, "internal error"))
    })
}

async fn serve_upload<H: IntakeHandler>(
    session: Session,
    handler: Arc<H>,
    cfg: ServeConfig,
    registry: Registry,
    offer: Offer,
    mut w: FrameWriter,
    mut r: FrameReader,
) {
    let transfer = offer.transfer;
    let refuse = |e: ProtocolError| {
        Frame::Error(ErrorFrame {
            code: e.code,
            message: e.message,
        })
    };
    let conflict = || {
        refuse(ProtocolError::new(
            ErrorCode::CONFLICT,
            "the transfer is already being uploaded on this connection",
        ))
    };
    // Claimed before the offer is decided: a second offer of the transfer on this connection
    // is refused here and never takes the first's upload over at the relay (`relay.md` §2).
    let claimed = match lock(&registry).entry(transfer) {
        std::collections::hash_map::Entry::Occupied(_) => false,
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(None);
            true
        }
    };
    if !claimed {
        let _ = w.send(&conflict()).await;
        w.finish();
        return;
    }
    // Deciding commits the offer to the index and may log a refusal, both fsynced: off the
    // async workers, whose other connections would wait meanwhile (`cli.md` "Running the relay").
    let decided = {
        let (h, peer) = (handler.clone(), session.peer.clone());
        off_worker(move || h.offer(&peer, &offer)).await
    };
    let accepted = match decided {
        Ok(v) => v,
        Err(e) => {
            lock(&registry).remove(&transfer);
            tracing::info!(%transfer, code = %e.code, "offer refused");
            let _ = w.send(&refuse(e)).await;
            w.finish();
            return;
        }
    };
    let lease = accepted.lease;
    let active = Arc::new(Active {
        lease,
        state: Mutex::new(ActiveState {
            intake: Intake::new(
                transfer,
                accepted.layouts,
                accepted.durable,
                cfg.intake.clone(),
            ),
            dirty: false,
            failed: None,
        }),
        notify: Notify::new(),
    });
    lock(&registry).insert(transfer, Some(active.clone()));
    // The upload stream is read on its own task: reading a frame is not cancel-safe, and the
    // driver below waits on several things at once (`protocol.md` §6.2).
    let (tx, mut rx) = mpsc::channel::<Result<Option<Frame<'static>>, NetError>>(4);
    let reader_task = tokio::spawn(async move {
        loop {
            let item = match r.next().await {
                Ok(Some(f)) => match owned(f) {
                    Some(f) => Ok(Some(f)),
                    None => Err(NetError::Protocol(ProtocolError::new(
                        ErrorCode::PROTOCOL_VIOLATION,
                        "data frame on the upload stream",
                    ))),
                },
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            let stop = !matches!(item, Ok(Some(_)));
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    let _guard = AbortOnDrop(reader_task);
    let result = drive_intake(&handler, &session.peer, &cfg, &active, &mut w, &mut rx).await;
    lock(&registry).remove(&transfer);
    // Whatever the outcome, the relay forgets this lease (a no-op if a completion already did):
    // a SEAL answered from an earlier completion must not leave it held.
    handler.abandon(lease);
    match result {
        Ok(()) => w.finish(),
        Err(e) => {
            tracing::info!(%transfer, code = %e.code, error = %e.message, "upload failed");
            let _ = w.send(&refuse(e)).await;
            w.finish();
        }
    }
}

async fn drive_intake<H: IntakeHandler>(
    handler: &Arc<H>,
    peer: &PeerIdentity,
    cfg: &ServeConfig,
    active: &Arc<Active>,
    w: &mut FrameWriter,
    rx: &mut mpsc::Receiver<Result<Option<Frame<'static>>, NetError>>,
) -> Result<(), ProtocolError> {
    let lease = active.lease;
    let mut out = Vec::new();
    let mut last_sync = Instant::now();
    let mut seal: Option<Seal> = None;
    loop {
        // Frames the state machine wants sent.
        let (phase, deadline, dirty, complete) = {
            let mut st = lock(&active.state);
            if let Some(e) = st.failed.take() {
                return Err(e);
            }
            st.intake.handle_timeout(Instant::now().into_std());
            while let Some(f) = st.intake.poll_frame() {
                out.push(f);
            }
            (
                st.intake.phase(),
                st.intake.poll_timeout().map(Instant::from_std),
                st.dirty,
                st.intake.all_received(),
            )
        };
        for f in out.drain(..) {
            w.send(&f)
                .await
                .map_err(|e| ProtocolError::new(ErrorCode::TIMEOUT, e.to_string()))?;
        }
        match phase {
            IntakePhase::Done => return Ok(()),
            IntakePhase::AwaitReceipt => {
                let h = handler.clone();
                let Some(seal) = seal.take() else {
                    return Err(ProtocolError::new(ErrorCode::INTERNAL, "no seal held"));
                };
                let peer = peer.clone();
                let text = off_worker(move || h.complete(&peer, lease, &seal)).await?;
                lock(&active.state).intake.receipt(text)?;
                continue;
            }
            IntakePhase::AwaitPieces | IntakePhase::AwaitSeal => {}
        }
        // Group commit (`protocol.md` §6.2): at most one sync per interval while pieces
        // arrive; once the last one has, at once, since nothing else can join the batch.
        if dirty && (complete || last_sync.elapsed() >= cfg.sync_interval) {
            lock(&active.state).dirty = false;
            let h = handler.clone();
            let durable = off_worker(move || h.sync(lease)).await?;
            last_sync = Instant::now();
            let mut st = lock(&active.state);
            let now = Instant::now().into_std();
            for (file, d) in durable.into_iter().enumerate() {
                st.intake.durable(now, file as u32, d)?;
            }
            continue;
        }
        let sync_at = dirty.then(|| last_sync + cfg.sync_interval);
        let wake = match (deadline, sync_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            _ = active.notify.notified() => {}
            _ = sleep_until(wake) => {}
            f = rx.recv() => match f {
                None | Some(Ok(None)) => return Err(ProtocolError::new(ErrorCode::TIMEOUT, "sender closed the upload stream")),
                Some(Ok(Some(Frame::Seal(s)))) => {
                    lock(&active.state).intake.handle_seal(&s)?;
                    seal = Some(s);
                }
                Some(Ok(Some(f))) => return Err(ProtocolError::new(ErrorCode::PROTOCOL_VIOLATION, format!("unexpected {} on the upload stream", f.ty().name()))),
                Some(Err(e)) => return Err(ProtocolError::new(ErrorCode::TIMEOUT, e.to_string())),
            },
        }
    }
}

async fn serve_data<H: IntakeHandler>(
    session: Session,
    handler: Arc<H>,
    registry: Registry,
    mut r: FrameReader,
) {
    let transfer = match r.next().await {
        Ok(Some(Frame::Attach(a))) => a.transfer,
        Ok(Some(f)) => {
            let m = format!(
                "data stream starts with {} instead of ATTACH",
                f.ty().name()
            );
            session.close(ErrorCode::PROTOCOL_VIOLATION, &m);
            return;
        }
        Ok(None) | Err(_) => return,
    };
    let Some(active) = lock(&registry).get(&transfer).cloned().flatten() else {
        r.stop(ErrorCode::NOT_FOUND);
        return;
    };
    loop {
        let frame = match r.next().await {
            Ok(Some(f)) => f,
            // A finished or reset data stream is normal (end of file, or a sender rewind).
            Ok(None) | Err(NetError::StreamClosed(_)) => return,
            Err(NetError::Frame(e)) => {
                // FRAME_TOO_LARGE stopped just this stream; anything else closed the connection.
                tracing::info!(%transfer, error = %e, "bad frame on a data stream");
                return;
            }
            Err(_) => return,
        };
        let mut st = lock(&active.state);
        // The driver only needs waking when there is something new for it: the first piece
        // since its last sync (it arms the group commit's timer), the last piece of the
        // transfer (synced at once) or a failure, not every piece (16,000 a GiB).
        let mut wake = false;
        let res = match st.intake.handle_data(&frame) {
            Ok(DataAction::Duplicate | DataAction::Gap) => Ok(()),
            Ok(DataAction::Store { file, piece, bytes }) => {
                wake = !st.dirty || st.intake.all_received();
                st.dirty = true;
                handler.store(active.lease, file, piece, bytes)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            let code = e.code;
            st.failed = Some(e);
            drop(st);
            active.notify.notify_one();
            r.stop(code);
            if code == ErrorCode::PROTOCOL_VIOLATION {
                session.close(code, "protocol violation on a data stream");
            }
            return;
        }
        drop(st);
        if wake {
            active.notify.notify_one();
        }
    }
}

/// Resolves `HOST:PORT` to a socket address (the first one).
pub async fn resolve(addr: &str) -> Result<SocketAddr, NetError> {
    tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
        NetError::Io(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr}: no address"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_batches_are_kept_as_they_are_up_to_the_limit() {
        let mut spare = Vec::new();
        for _ in 0..SPARE_BATCHES + 2 {
            let mut v = Vec::with_capacity(BATCH_CAPACITY);
            v.extend_from_slice(b"frames that went on the wire");
            keep_spare(&mut spare, v);
        }
        assert_eq!(spare.len(), SPARE_BATCHES);
        // Kept with their bytes: the next frames overwrite them instead of zeroing them first.
        assert!(
            spare
                .iter()
                .all(|v| v.as_slice() == b"frames that went on the wire"
                    && v.capacity() >= BATCH_CAPACITY)
        );
        // A short stream's small buffer, and one a large control frame grew, are freed.
        let mut kept = Vec::new();
        keep_spare(&mut kept, Vec::with_capacity(4096));
        keep_spare(&mut kept, Vec::with_capacity(2 * BATCH_CAPACITY + 1));
        assert!(kept.is_empty());
    }

    #[test]
    fn a_batch_is_only_its_frames() {
        // A reused buffer holds older bytes past the frames gathered in it: quinn gets the
        // frames only.
        let mut v = Vec::with_capacity(BATCH_CAPACITY);
        v.extend_from_slice(b"new frames|older bytes");
        let b = bytes::Bytes::from_owner(Batch { v, len: 10 });
        assert_eq!(&b[..], b"new frames");
        assert_eq!(b.slice(4..).as_ref(), b"frames");
    }
}
