//! The upload exchange as two state machines that do no I/O (`protocol.md` §6): [`Upload`]
//! on the sender, [`Intake`] on the relay. Frames and time go in; frames, directives, events
//! and timeouts come out. The tokio shell (`net`) only moves bytes.
//!
//! Order (`protocol.md` §6.1): OFFER announces the files' sizes; the data follows at once,
//! produced while it is sent; once every piece is durable the sender sends SEAL, the sealed
//! manifest that the data determined, and the relay answers with the custody receipt.
//!
//! Reliability model: QUIC delivers each stream reliably and in order, but a stream can be
//! reset, a connection can drop and a relay can crash, so a piece is not safe until the relay
//! says it is **durable**. The sender keeps at most `window` bytes beyond the durable prefix in
//! flight; a data stream whose data in flight makes no durable progress for `ack_timeout` is
//! reset, and the files it carried are sent again from their durable prefixes by the streams
//! that take files next (go-back-N per file). The relay accepts only the next piece of each
//! file, so duplicates and gaps cost bandwidth, never correctness.
//!
//! Data streams (`protocol.md` §6.1, "Data streams"): up to `streams` at a time, each carrying
//! whole files one after the other, every piece of a file on one stream in order. A stream
//! is given a turn of `turn` bytes of frames before the next one takes over, so that many
//! small files share a stream and a write instead of paying for one each.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rogatory_custody::{PieceLayout, TransferId};

use crate::error::{ErrorCode, ProtocolError};
use crate::frame::{Accept, Durable, Frame, Receipt, ReceiptKind, Seal, piece_frame_len};

/// Sender-side settings (`protocol.md` §8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadConfig {
    /// Most ciphertext bytes sent but not yet durable. Bounds the sender's resend cost and,
    /// with the relay's sync interval, the throughput: it must exceed bandwidth × RTT.
    pub window: u64,
    /// Data in flight and no durable progress for this long: rewind and resend.
    pub ack_timeout: Duration,
    /// How long to wait for ACCEPT (or an ERROR) after OFFER.
    pub answer_timeout: Duration,
    /// How long to wait for the custody receipt once every piece is durable.
    pub receipt_timeout: Duration,
    /// Consecutive rewinds without durable progress before giving up (retryable).
    pub max_rewinds: u32,
    /// Data streams written in parallel (capped by WELCOME).
    pub streams: usize,
    /// PIECE frame bytes a data stream is given in a row before the next one's turn: the
    /// bytes the shell gathers for one write ([`crate::net::PIECE_BATCH`]), so that each turn
    /// ends with one write.
    pub turn: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            window: 64 << 20,
            ack_timeout: Duration::from_secs(15),
            answer_timeout: Duration::from_secs(60),
            receipt_timeout: Duration::from_secs(60),
            max_rewinds: 4,
            streams: 4,
            turn: crate::net::PIECE_BATCH as u64,
        }
    }
}

/// A data stream, named by the sender: numbered from 0 in the order they are opened, never
/// reused within an upload.
pub type StreamNumber = u64;

/// What the sender's shell must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// Send OFFER on the upload stream.
    Offer,
    /// Open data stream `stream` and send ATTACH.
    Open {
        /// The stream.
        stream: StreamNumber,
    },
    /// Send PIECE `piece` (`len` bytes) of `file` on data stream `stream`.
    Piece {
        /// The stream.
        stream: StreamNumber,
        /// File index.
        file: u32,
        /// Piece index.
        piece: u64,
        /// Its length.
        len: u64,
    },
    /// Nothing more will be written to data stream `stream`: write what is gathered and
    /// finish it.
    Finish {
        /// The stream.
        stream: StreamNumber,
    },
    /// Every file that data stream `stream` carried is durable: the stream, finished, needs
    /// no reset any more and is let go (nothing is sent; a transfer of many files keeps only
    /// the streams still carrying data not yet durable).
    Release {
        /// The stream.
        stream: StreamNumber,
    },
    /// Abandon data stream `stream` (reset it, if it still exists).
    Reset {
        /// The stream.
        stream: StreamNumber,
    },
    /// Every piece is durable: send SEAL (the sealed manifest) on the upload stream.
    Seal,
}

/// What happened, for the sender's user interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadEvent {
    /// ACCEPT arrived; `skipped` bytes were already durable (resume).
    Accepted {
        /// Ciphertext bytes already durable at the relay.
        skipped: u64,
        /// Ciphertext bytes still to send.
        remaining: u64,
        /// Durable piece count per file at the relay.
        durable: Vec<u64>,
    },
    /// Pieces `0..pieces` of `file` are durable at the relay.
    Durable {
        /// File index.
        file: u32,
        /// Durable piece count.
        pieces: u64,
    },
    /// More data is durable.
    Progress {
        /// Durable ciphertext bytes, all files.
        durable: u64,
        /// Total ciphertext bytes.
        total: u64,
    },
    /// Every piece of `file` is durable.
    FileDurable(u32),
    /// Data was sent again after a timeout or a lost stream.
    Rewound {
        /// Bytes that will be sent again.
        bytes: u64,
    },
    /// The custody receipt.
    Receipt(Receipt),
}

/// Where the upload is: named by what is expected next (`protocol.md` §6.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadPhase {
    /// OFFER sent; waiting for ACCEPT.
    AwaitAccept,
    /// Sending pieces; waiting for DURABLE.
    AwaitDurable,
    /// Every piece durable and SEAL sent; waiting for RECEIPT.
    AwaitReceipt,
    /// Receipt received.
    Done,
    /// Failed; the error says whether a retry can help.
    Failed(ProtocolError),
}

/// Counters for the summary and the benches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Ciphertext bytes handed to data streams by this run (including resends).
    pub bytes_sent: u64,
    /// Ciphertext bytes that were already durable when the relay accepted (not sent).
    pub bytes_skipped: u64,
    /// Bytes sent again after a rewind or lost stream.
    pub bytes_resent: u64,
    /// Rewinds.
    pub rewinds: u32,
}

#[derive(Debug)]
struct SendFile {
    layout: PieceLayout,
    /// Pieces `0..durable` are durable at the relay.
    durable: u64,
    /// Pieces `0..sent` have been handed to a data stream.
    sent: u64,
    /// The data stream this file was given to, until the file is wholly durable or the
    /// stream is reset.
    stream: Option<StreamNumber>,
}

impl SendFile {
    fn count(&self) -> u64 {
        self.layout.count()
    }
}

/// A data stream the sender holds.
#[derive(Debug)]
struct DataStream {
    /// The file being written to it.
    current: Option<u32>,
    /// Every file given to it, in order. Those whose `stream` still names it are not yet
    /// wholly durable: a reset sends them again.
    carried: Vec<u32>,
    /// How many of `carried` are not yet wholly durable.
    pending: usize,
    /// Finished: it takes no more files, and is released once `pending` is 0.
    finished: bool,
    /// Bytes written to it and not yet durable.
    in_flight: u64,
    /// When it last had no data in flight, or its files last made durable progress: with data
    /// in flight and no progress for `ack_timeout` after this, it is reset.
    since: Instant,
}

/// Byte offset of piece `i` (`i == count` gives the ciphertext size).
pub fn piece_offset(layout: &PieceLayout, i: u64) -> u64 {
    layout.range(i).map_or(layout.ciphertext_size, |r| r.start)
}

/// The sender's state machine for one transfer.
#[derive(Debug)]
pub struct Upload {
    cfg: UploadConfig,
    transfer: TransferId,
    phase: UploadPhase,
    files: Vec<SendFile>,
    out: VecDeque<Transmit>,
    events: VecDeque<UploadEvent>,
    in_flight: u64,
    /// Every data stream held (opened, not yet reset or released), by number.
    streams: BTreeMap<StreamNumber, DataStream>,
    /// The streams still taking files, in the order they take turns.
    lanes: Vec<StreamNumber>,
    /// The lane whose turn it is, and the bytes it was given in this turn.
    cursor: usize,
    turn_bytes: u64,
    next_stream: StreamNumber,
    /// No file below this one is waiting for a stream.
    scan: u32,
    deadline: Instant,
    last_progress: Instant,
    /// The latest time given to [`Upload::handle`] or [`Upload::handle_timeout`]: when a
    /// stream's first data in flight was handed out ([`Upload::poll_transmit`] takes no time;
    /// the shell calls it right after handing over what arrived).
    clock: Instant,
    rewinds_in_a_row: u32,
    stats: UploadStats,
    /// Running totals, so that each event costs O(1) however many files there are.
    total: u64,
    durable_total: u64,
    incomplete: usize,
}

/// The first file from `scan` on that has pieces to send and no stream; `scan` moves past
/// the files before it.
fn next_file(files: &[SendFile], scan: &mut u32) -> Option<u32> {
    while let Some(f) = files.get(*scan as usize) {
        if f.stream.is_none() && f.sent < f.count() {
            return Some(*scan);
        }
        *scan += 1;
    }
    None
}

impl Upload {
    /// A new upload of `files` (in manifest order); the first directive is [`Transmit::Offer`].
    pub fn new(
        transfer: TransferId,
        files: Vec<PieceLayout>,
        cfg: UploadConfig,
        now: Instant,
    ) -> Self {
        let files: Vec<SendFile> = files
            .into_iter()
            .map(|layout| SendFile {
                layout,
                durable: 0,
                sent: 0,
                stream: None,
            })
            .collect();
        let total = files.iter().map(|f| f.layout.ciphertext_size).sum();
        let incomplete = files.len();
        let deadline = now + cfg.answer_timeout;
        Upload {
            cfg,
            transfer,
            phase: UploadPhase::AwaitAccept,
            files,
            out: VecDeque::from([Transmit::Offer]),
            events: VecDeque::new(),
            in_flight: 0,
            streams: BTreeMap::new(),
            lanes: Vec::new(),
            cursor: 0,
            turn_bytes: 0,
            next_stream: 0,
            scan: 0,
            deadline,
            last_progress: now,
            clock: now,
            rewinds_in_a_row: 0,
            stats: UploadStats::default(),
            total,
            durable_total: 0,
            incomplete,
        }
    }

    /// The phase.
    pub fn phase(&self) -> &UploadPhase {
        &self.phase
    }

    /// Counters.
    pub fn stats(&self) -> UploadStats {
        self.stats
    }

    /// The piece layout of `file`.
    pub fn layout(&self, file: u32) -> Option<&PieceLayout> {
        self.files.get(file as usize).map(|f| &f.layout)
    }

    /// Bytes sent but not yet durable.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Total ciphertext bytes of the transfer.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Durable ciphertext bytes.
    pub fn durable_bytes(&self) -> u64 {
        self.durable_total
    }

    /// Caps parallel data streams (the relay's WELCOME `max_data_streams`).
    pub fn limit_streams(&mut self, n: usize) {
        self.cfg.streams = self.cfg.streams.min(n).max(1);
    }

    fn fail(&mut self, code: ErrorCode, msg: impl Into<String>) {
        if !matches!(self.phase, UploadPhase::Done | UploadPhase::Failed(_)) {
            self.phase = UploadPhase::Failed(ProtocolError::new(code, msg));
            self.reset_all_streams();
        }
    }

    /// Resets every data stream still held; none takes a turn any more.
    fn reset_all_streams(&mut self) {
        self.lanes.clear();
        for stream in std::mem::take(&mut self.streams).into_keys() {
            self.out.push_back(Transmit::Reset { stream });
        }
    }

    /// A frame from the relay on the upload stream.
    pub fn handle(&mut self, now: Instant, frame: &Frame<'_>) {
        self.clock = self.clock.max(now);
        match (&self.phase, frame) {
            (UploadPhase::Done | UploadPhase::Failed(_), _) => {}
            (_, Frame::Error(e)) => {
                let e = e.clone();
                self.fail(e.code, e.message);
            }
            (UploadPhase::AwaitAccept, Frame::Accept(a)) => self.on_accept(now, a),
            (UploadPhase::AwaitDurable | UploadPhase::AwaitReceipt, Frame::Durable(d)) => {
                self.on_durable(now, *d)
            }
            (UploadPhase::AwaitReceipt, Frame::Receipt(r))
                if r.kind == ReceiptKind::Custody && r.transfer == self.transfer =>
            {
                self.phase = UploadPhase::Done;
                self.events.push_back(UploadEvent::Receipt(r.clone()));
            }
            (_, f) => {
                let what = format!("unexpected {} frame while {:?}", f.ty().name(), self.phase);
                self.fail(ErrorCode::PROTOCOL_VIOLATION, what);
            }
        }
    }

    fn on_accept(&mut self, now: Instant, a: &Accept) {
        if a.transfer != self.transfer || a.durable.len() != self.files.len() {
            return self.fail(
                ErrorCode::PROTOCOL_VIOLATION,
                "ACCEPT does not match the offer",
            );
        }
        if a.durable
            .iter()
            .zip(&self.files)
            .any(|(&d, f)| d > f.count())
        {
            return self.fail(
                ErrorCode::PROTOCOL_VIOLATION,
                "ACCEPT reports more pieces than a file has",
            );
        }
        for (f, &d) in self.files.iter_mut().zip(&a.durable) {
            f.durable = d;
            f.sent = d;
        }
        self.durable_total = self
            .files
            .iter()
            .map(|f| piece_offset(&f.layout, f.durable))
            .sum();
        self.incomplete = self.files.iter().filter(|f| f.durable < f.count()).count();
        let skipped = self.durable_bytes();
        self.stats.bytes_skipped = skipped;
        self.events.push_back(UploadEvent::Accepted {
            skipped,
            remaining: self.total_bytes() - skipped,
            durable: a.durable.clone(),
        });
        self.last_progress = now;
        self.phase = UploadPhase::AwaitDurable;
        self.check_all_durable(now);
    }

    fn on_durable(&mut self, now: Instant, d: Durable) {
        let Some(f) = self.files.get_mut(d.file as usize) else {
            return self.fail(
                ErrorCode::PROTOCOL_VIOLATION,
                "DURABLE names no file of the transfer",
            );
        };
        if d.pieces > f.count() || d.pieces < f.durable {
            return self.fail(
                ErrorCode::PROTOCOL_VIOLATION,
                "DURABLE out of range or going backwards",
            );
        }
        if d.pieces == f.durable {
            return;
        }
        let old = f.durable;
        let acked_in_flight = piece_offset(&f.layout, d.pieces.min(f.sent))
            - piece_offset(&f.layout, old.min(f.sent));
        self.in_flight -= acked_in_flight;
        // Every byte of the file in flight is on its stream.
        if acked_in_flight > 0
            && let Some(s) = f.stream.and_then(|n| self.streams.get_mut(&n))
        {
            s.in_flight -= acked_in_flight;
            s.since = now;
        }
        self.durable_total += piece_offset(&f.layout, d.pieces) - piece_offset(&f.layout, old);
        f.durable = d.pieces;
        // Data from an abandoned stream may have made it after all.
        f.sent = f.sent.max(d.pieces);
        let complete = f.durable == f.count();
        if complete {
            if let Some(stream) = f.stream.take() {
                self.file_durable_on(stream, d.file);
            }
            self.incomplete -= 1;
        }
        self.last_progress = now;
        self.rewinds_in_a_row = 0;
        self.events.push_back(UploadEvent::Durable {
            file: d.file,
            pieces: d.pieces,
        });
        self.events.push_back(UploadEvent::Progress {
            durable: self.durable_bytes(),
            total: self.total_bytes(),
        });
        if complete {
            self.events.push_back(UploadEvent::FileDurable(d.file));
        }
        self.check_all_durable(now);
    }

    /// `file`, given to `stream`, is wholly durable.
    fn file_durable_on(&mut self, stream: StreamNumber, file: u32) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.pending -= 1;
        if s.current == Some(file) {
            // Still being written: a rewind sent the file again and an earlier stream's data
            // made it after all. Nothing more of it is sent; the stream goes on with the
            // next file.
            s.current = None;
        }
        self.release_if_done(stream);
    }

    /// Releases `stream` if it is finished and every file it carried is durable.
    fn release_if_done(&mut self, stream: StreamNumber) {
        if self
            .streams
            .get(&stream)
            .is_some_and(|s| s.finished && s.pending == 0)
        {
            self.streams.remove(&stream);
            self.out.push_back(Transmit::Release { stream });
        }
    }

    /// Takes lane `at` out of the turns. The turn stays with the lane that had it; a lane
    /// removed in its turn ends the turn.
    fn remove_lane(&mut self, at: usize) {
        self.lanes.remove(at);
        match at.cmp(&self.cursor) {
            std::cmp::Ordering::Less => self.cursor -= 1,
            std::cmp::Ordering::Equal => self.turn_bytes = 0,
            std::cmp::Ordering::Greater => {}
        }
    }

    fn check_all_durable(&mut self, now: Instant) {
        if self.phase == UploadPhase::AwaitDurable && self.incomplete == 0 {
            self.phase = UploadPhase::AwaitReceipt;
            // Streams still open carry nothing that is needed any more.
            self.reset_all_streams();
            self.out.push_back(Transmit::Seal);
            self.deadline = now + self.cfg.receipt_timeout;
        }
    }

    /// Whether data stream `stream` is still held (opened, not yet reset or released): a write
    /// to a stream no longer held is abandoned.
    pub fn holds(&self, stream: StreamNumber) -> bool {
        self.streams.contains_key(&stream)
    }

    /// While the shell waits on a write to a data stream: when, without durable progress, the
    /// wait is a rewind ([`Upload::write_stalled`]). Armed even with nothing in flight (the
    /// write that waits may be the ATTACH of a new stream).
    pub fn stall_deadline(&self) -> Option<Instant> {
        (self.phase == UploadPhase::AwaitDurable).then(|| self.last_progress + self.cfg.ack_timeout)
    }

    /// A write to `stream` has waited (flow control, no stream credit) with no durable progress
    /// from the relay for `ack_timeout`: a rewind "in a row" (too many fail the upload with
    /// `TIMEOUT`), which resets that stream and every stream with data in flight. A relay that
    /// answers QUIC but no longer reads its data streams (its disk hangs) would otherwise hold
    /// the sender for ever (`protocol.md` §6.1 "Rewind").
    pub fn write_stalled(&mut self, now: Instant, stream: StreamNumber) {
        self.clock = self.clock.max(now);
        if self.phase == UploadPhase::AwaitDurable
            && now >= self.last_progress + self.cfg.ack_timeout
        {
            self.rewind_stale(now, true, Some(stream), "the relay takes no more data");
        }
    }

    /// Resets the streams with data in flight that made no durable progress for `ack_timeout`
    /// (all of them when `stuck`: nothing progressed at all, a rewind "in a row", and past
    /// `max_rewinds` the upload fails with `TIMEOUT`, saying `why`), and `also`.
    fn rewind_stale(&mut self, now: Instant, stuck: bool, also: Option<StreamNumber>, why: &str) {
        let timeout = self.cfg.ack_timeout;
        let stale: Vec<StreamNumber> = self
            .streams
            .iter()
            .filter(|&(&n, s)| {
                Some(n) == also || (s.in_flight > 0 && (stuck || now >= s.since + timeout))
            })
            .map(|(&n, _)| n)
            .collect();
        if stuck {
            self.rewinds_in_a_row += 1;
            self.last_progress = now;
        } else if stale.is_empty() {
            return;
        }
        self.stats.rewinds += 1;
        if self.rewinds_in_a_row > self.cfg.max_rewinds {
            return self.fail(ErrorCode::TIMEOUT, why);
        }
        for n in stale {
            self.reset_stream(n);
        }
    }

    /// The relay stopped data stream `stream`, or writing to it failed: every file it carried
    /// that is not yet durable is sent again from its durable prefix, on another stream.
    pub fn stream_lost(&mut self, stream: StreamNumber) {
        if self.phase == UploadPhase::AwaitDurable {
            self.reset_stream(stream);
        }
    }

    /// Resets `stream` and rewinds every file it carried that is not yet wholly durable to
    /// its durable prefix; another stream takes them again.
    fn reset_stream(&mut self, stream: StreamNumber) {
        let Some(s) = self.streams.remove(&stream) else {
            return;
        };
        if let Some(at) = self.lanes.iter().position(|&l| l == stream) {
            self.remove_lane(at);
        }
        self.out.push_back(Transmit::Reset { stream });
        let mut bytes = 0;
        for file in s.carried {
            let f = &mut self.files[file as usize];
            if f.stream == Some(stream) {
                f.stream = None;
                bytes += piece_offset(&f.layout, f.sent) - piece_offset(&f.layout, f.durable);
                f.sent = f.durable;
                self.scan = self.scan.min(file);
            }
        }
        self.in_flight -= bytes;
        self.stats.bytes_resent += bytes;
        if bytes > 0 {
            self.events.push_back(UploadEvent::Rewound { bytes });
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        match self.phase {
            UploadPhase::AwaitAccept if now >= self.deadline => {
                self.fail(ErrorCode::TIMEOUT, "no answer to the offer")
            }
            UploadPhase::AwaitReceipt if now >= self.deadline => self.fail(
                ErrorCode::TIMEOUT,
                "every piece is durable but no receipt arrived",
            ),
            UploadPhase::AwaitDurable => {
                // No durable progress at all: every stream with data in flight is reset (one
                // with none keeps going), and too many of those in a row fail the upload.
                // Otherwise only the streams whose own data made none (a stream lost without
                // the sender being told, while the others go on).
                let stuck = self.in_flight > 0 && now >= self.last_progress + self.cfg.ack_timeout;
                self.rewind_stale(now, stuck, None, "no durable progress from the relay");
            }
            _ => {}
        }
    }

    /// When [`Upload::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            UploadPhase::AwaitAccept | UploadPhase::AwaitReceipt => Some(self.deadline),
            UploadPhase::AwaitDurable if self.in_flight > 0 => {
                let since = self
                    .streams
                    .values()
                    .filter(|s| s.in_flight > 0)
                    .map(|s| s.since)
                    .fold(self.last_progress, Instant::min);
                Some(since + self.cfg.ack_timeout)
            }
            _ => None,
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<UploadEvent> {
        self.events.pop_front()
    }

    /// The next thing to send, or `None` when the window is full or nothing is left.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.out.pop_front() {
            return Some(t);
        }
        if self.phase != UploadPhase::AwaitDurable {
            return None;
        }
        // Open a stream for the next file waiting for one (one per call), up to `streams`.
        if self.lanes.len() < self.cfg.streams
            && let Some(file) = next_file(&self.files, &mut self.scan)
        {
            let stream = self.next_stream;
            self.next_stream += 1;
            self.files[file as usize].stream = Some(stream);
            self.streams.insert(
                stream,
                DataStream {
                    current: Some(file),
                    carried: vec![file],
                    pending: 1,
                    finished: false,
                    in_flight: 0,
                    since: self.clock,
                },
            );
            self.lanes.push(stream);
            return Some(Transmit::Open { stream });
        }
        loop {
            if self.lanes.is_empty() {
                return None;
            }
            self.cursor %= self.lanes.len();
            let stream = self.lanes[self.cursor];
            let Some(s) = self.streams.get_mut(&stream) else {
                // A lane is always a stream held; never reached.
                self.lanes.remove(self.cursor);
                continue;
            };
            let file = match s.current {
                Some(file) => file,
                None => match next_file(&self.files, &mut self.scan) {
                    Some(file) => {
                        s.current = Some(file);
                        s.carried.push(file);
                        s.pending += 1;
                        self.files[file as usize].stream = Some(stream);
                        file
                    }
                    None => {
                        // Nothing left to give it: finish it (released once all it carried
                        // is durable).
                        s.finished = true;
                        self.remove_lane(self.cursor);
                        self.release_if_done(stream);
                        return Some(Transmit::Finish { stream });
                    }
                },
            };
            let f = &mut self.files[file as usize];
            debug_assert!(f.sent < f.count(), "a current file has a piece to send");
            let len = piece_offset(&f.layout, f.sent + 1) - piece_offset(&f.layout, f.sent);
            if self.in_flight > 0 && self.in_flight + len > self.cfg.window {
                return None;
            }
            let t = Transmit::Piece {
                stream,
                file,
                piece: f.sent,
                len,
            };
            if s.in_flight == 0 {
                s.since = self.clock;
            }
            self.turn_bytes += piece_frame_len(file, f.sent, len as usize);
            f.sent += 1;
            s.in_flight += len;
            self.in_flight += len;
            self.stats.bytes_sent += len;
            if f.sent == f.count() {
                s.current = None;
            }
            if self.turn_bytes >= self.cfg.turn {
                self.turn_bytes = 0;
                self.cursor += 1;
            }
            return Some(t);
        }
    }
}

/// Relay-side settings (`protocol.md` §8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntakeConfig {
    /// Coalesce DURABLE frames for up to this long (a completed file is acknowledged at once).
    pub ack_delay: Duration,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            ack_delay: Duration::from_millis(50),
        }
    }
}

/// What the relay's shell must do with a data frame.
#[derive(Debug, PartialEq, Eq)]
pub enum DataAction<'a> {
    /// The next piece of `file`: hash it (its leaf joins the file's piece root) and write it.
    Store {
        /// File index.
        file: u32,
        /// Piece index.
        piece: u64,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// A piece the relay already has (a resend after a rewind): dropped. The copy already
    /// stored is the one the piece root covers, checked against the sealed manifest at SEAL.
    Duplicate,
    /// A piece beyond the next expected one (its predecessor was lost): dropped; the sender
    /// will resend from the durable prefix.
    Gap,
}

/// Where the intake is (`protocol.md` §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntakePhase {
    /// Waiting for pieces.
    AwaitPieces,
    /// Every piece durable; waiting for SEAL ([`Intake::handle_seal`]).
    AwaitSeal,
    /// SEAL arrived; the relay must check it and issue the receipt ([`Intake::receipt`]).
    AwaitReceipt,
    /// Receipt queued.
    Done,
}

#[derive(Debug)]
struct RecvFile {
    layout: PieceLayout,
    received: u64,
    durable: u64,
    acked: u64,
}

/// The relay's state machine for one transfer on one connection.
#[derive(Debug)]
pub struct Intake {
    cfg: IntakeConfig,
    transfer: TransferId,
    phase: IntakePhase,
    files: Vec<RecvFile>,
    out: VecDeque<Frame<'static>>,
    ack_due: Option<Instant>,
    gaps: u64,
    duplicates: u64,
    /// Files whose durable prefix grew since the last DURABLE, and files not yet complete:
    /// each event costs O(1) however many files a transfer has.
    unacked: Vec<u32>,
    incomplete: usize,
    /// Pieces not yet handed out for storing, over all files.
    missing: u64,
}

impl Intake {
    /// Accepts an offer: `durable[i]` pieces of file `i` are already durable in the store.
    /// Queues ACCEPT.
    pub fn new(
        transfer: TransferId,
        layouts: Vec<PieceLayout>,
        durable: Vec<u64>,
        cfg: IntakeConfig,
    ) -> Self {
        let files: Vec<RecvFile> = layouts
            .into_iter()
            .zip(durable.iter().copied().chain(std::iter::repeat(0)))
            .map(|(layout, d)| {
                let d = d.min(layout.count());
                RecvFile {
                    layout,
                    received: d,
                    durable: d,
                    acked: d,
                }
            })
            .collect();
        let accept = Accept {
            transfer,
            durable: files.iter().map(|f| f.durable).collect(),
        };
        let incomplete = files
            .iter()
            .filter(|f| f.durable < f.layout.count())
            .count();
        let missing = files.iter().map(|f| f.layout.count() - f.received).sum();
        let mut me = Intake {
            cfg,
            transfer,
            phase: IntakePhase::AwaitPieces,
            files,
            incomplete,
            missing,
            unacked: Vec::new(),
            out: VecDeque::from([Frame::Accept(accept)]),
            ack_due: None,
            gaps: 0,
            duplicates: 0,
        };
        me.check_all_durable();
        me
    }

    /// The phase.
    pub fn phase(&self) -> IntakePhase {
        self.phase
    }

    /// Pieces dropped because they arrived after a gap, and duplicates seen.
    pub fn counters(&self) -> (u64, u64) {
        (self.gaps, self.duplicates)
    }

    /// Pieces of `file` handed out for storing (durable or not).
    pub fn received(&self, file: u32) -> u64 {
        self.files.get(file as usize).map_or(0, |f| f.received)
    }

    /// Whether every piece of every file has been handed out for storing: nothing more can
    /// arrive, so the store's next sync need not wait for the group commit's interval
    /// (`protocol.md` §6.2).
    pub fn all_received(&self) -> bool {
        self.missing == 0
    }

    /// A frame from a data stream of this transfer (after its ATTACH).
    pub fn handle_data<'a>(
        &mut self,
        frame: &'a Frame<'a>,
    ) -> Result<DataAction<'a>, ProtocolError> {
        let violation = |m: &str| ProtocolError::new(ErrorCode::PROTOCOL_VIOLATION, m);
        match frame {
            Frame::Piece(p) => {
                let f = self
                    .files
                    .get_mut(p.file as usize)
                    .ok_or_else(|| violation("PIECE names no file of the transfer"))?;
                let r = f
                    .layout
                    .range(p.piece)
                    .ok_or_else(|| violation("PIECE beyond the file's piece count"))?;
                if p.bytes.len() as u64 != r.end - r.start {
                    return Err(ProtocolError::new(
                        ErrorCode::INTEGRITY,
                        "PIECE has the wrong length for its position",
                    ));
                }
                if p.piece < f.received {
                    self.duplicates += 1;
                    return Ok(DataAction::Duplicate);
                }
                if p.piece > f.received {
                    self.gaps += 1;
                    return Ok(DataAction::Gap);
                }
                f.received += 1;
                self.missing -= 1;
                Ok(DataAction::Store {
                    file: p.file,
                    piece: p.piece,
                    bytes: p.bytes,
                })
            }
            other => Err(violation(&format!(
                "{} frame on a data stream",
                other.ty().name()
            ))),
        }
    }

    /// The store made pieces `0..pieces` of `file` durable (data and index fsynced).
    pub fn durable(&mut self, now: Instant, file: u32, pieces: u64) -> Result<(), ProtocolError> {
        let f = self
            .files
            .get_mut(file as usize)
            .ok_or_else(|| ProtocolError::new(ErrorCode::INTERNAL, "durable: no such file"))?;
        if pieces > f.received || pieces < f.durable {
            return Err(ProtocolError::new(
                ErrorCode::INTERNAL,
                "durable: out of range",
            ));
        }
        if pieces == f.durable {
            return Ok(());
        }
        if f.durable == f.acked {
            self.unacked.push(file);
        }
        f.durable = pieces;
        if pieces == f.layout.count() {
            self.incomplete -= 1;
        }
        let due = if pieces == f.layout.count() {
            now
        } else {
            now + self.cfg.ack_delay
        };
        self.ack_due = Some(self.ack_due.map_or(due, |d| d.min(due)));
        self.check_all_durable();
        Ok(())
    }

    fn check_all_durable(&mut self) {
        if self.phase == IntakePhase::AwaitPieces && self.incomplete == 0 {
            self.phase = IntakePhase::AwaitSeal;
            // The sender seals once it has seen every piece durable: tell it now.
            self.flush_acks();
        }
    }

    /// SEAL arrived on the upload stream: accepted only once every piece is durable
    /// (`protocol.md` §6.2). The shell then checks it and issues the receipt.
    pub fn handle_seal(&mut self, seal: &Seal) -> Result<(), ProtocolError> {
        if seal.transfer != self.transfer {
            return Err(ProtocolError::new(
                ErrorCode::PROTOCOL_VIOLATION,
                "SEAL names another transfer",
            ));
        }
        if self.phase != IntakePhase::AwaitSeal {
            return Err(ProtocolError::new(
                ErrorCode::PROTOCOL_VIOLATION,
                "SEAL before every piece is durable",
            ));
        }
        self.phase = IntakePhase::AwaitReceipt;
        Ok(())
    }

    /// Queues the custody receipt (after SEAL was checked).
    pub fn receipt(&mut self, text: String) -> Result<(), ProtocolError> {
        if self.phase != IntakePhase::AwaitReceipt {
            return Err(ProtocolError::new(
                ErrorCode::INTERNAL,
                "receipt before the seal",
            ));
        }
        self.flush_acks();
        self.out.push_back(Frame::Receipt(Receipt {
            transfer: self.transfer,
            kind: ReceiptKind::Custody,
            text,
        }));
        self.phase = IntakePhase::Done;
        Ok(())
    }

    fn flush_acks(&mut self) {
        for i in self.unacked.drain(..) {
            let f = &mut self.files[i as usize];
            if f.durable > f.acked {
                f.acked = f.durable;
                self.out.push_back(Frame::Durable(Durable {
                    file: i,
                    pieces: f.durable,
                }));
            }
        }
        self.ack_due = None;
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ack_due.is_some_and(|d| now >= d) {
            self.flush_acks();
        }
    }

    /// When [`Intake::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ack_due
    }

    /// The next frame for the upload stream.
    pub fn poll_frame(&mut self) -> Option<Frame<'static>> {
        self.out.pop_front()
    }
}
