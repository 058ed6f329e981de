//! The upload state machines in memory (`protocol.md` §6) with simulated time: no sockets, no
//! sleeps. A seeded network model delivers control frames in order with latency, data streams
//! in order each but interleaved at random (reordering across streams), resets streams (the
//! sender is told, or the loss is silent), and re-delivers pieces (duplication). Every run must
//! end with the receiver holding exactly the sender's bytes and one receipt.

mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rogatory_custody::TransferId;
use rogatory_transport::frame::{self, Decoded, Frame, FrameLimits, Piece, Seal};
use rogatory_transport::net::PieceSource;
use rogatory_transport::upload::{
    DataAction, Intake, IntakeConfig, IntakePhase, Transmit, Upload, UploadConfig, UploadPhase,
};
use rogatory_transport::{ErrorClass, ErrorCode};
use support::memory::Files;

/// Frames in flight on one stream, with their delivery times.
type Queue = VecDeque<(Instant, Vec<u8>)>;

#[derive(Clone, Copy)]
struct Net {
    latency: Duration,
    /// Per data frame: probability that its stream is reset (rest of the stream lost).
    reset: f64,
    /// Of those resets, the fraction the sender learns about (STOP_SENDING); the rest are silent.
    told: f64,
    /// Per piece: probability that it is delivered twice.
    duplicate: f64,
    /// Per step: probability that the receiver syncs.
    sync: f64,
}

struct Outcome {
    phase: UploadPhase,
    received: Vec<Vec<u8>>,
    receipts: usize,
    rewinds: u32,
    now: Duration,
    /// Data streams opened.
    opened: u64,
}

fn encode(f: &Frame<'_>) -> Vec<u8> {
    // Through the real codec both ways.
    let b = f.to_vec();
    match frame::decode(&b, &FrameLimits::default()) {
        Ok(Decoded::Frame(g, n)) => {
            assert_eq!(n, b.len());
            assert_eq!(&g, f);
        }
        other => panic!("codec: {other:?}"),
    }
    b
}

fn simulate(
    files: &Files,
    cfg: UploadConfig,
    net: Net,
    seed: u64,
    relay_answers: bool,
    relay_acks: bool,
) -> Outcome {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut now = t0;
    let transfer = TransferId::from_bytes([5; 16]);
    let mut src = files.clone();
    let mut up = Upload::new(transfer, files.layouts.clone(), cfg, now);
    let mut intake: Option<Intake> = None;
    let mut to_relay: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut to_sender: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut streams: BTreeMap<u64, Queue> = BTreeMap::new();
    // The streams the driver holds (`net.rs`): opened, until reset or released, with the
    // files each carried.
    let mut held: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    let mut finished: BTreeSet<u64> = BTreeSet::new();
    let mut received: Vec<Vec<u8>> = vec![Vec::new(); files.layouts.len()];
    let mut receipts = 0;
    let mut opened = 0;
    let limits = FrameLimits::default();

    for _step in 0..2_000_000u64 {
        if matches!(up.phase(), UploadPhase::Done | UploadPhase::Failed(_)) {
            break;
        }
        // Sender transmits until its window is full.
        while let Some(t) = up.poll_transmit() {
            match t {
                Transmit::Offer => to_relay.push_back((now + net.latency, vec![])),
                Transmit::Open { stream } => {
                    opened += 1;
                    assert!(
                        streams.insert(stream, Queue::new()).is_none(),
                        "a new stream"
                    );
                    held.insert(stream, BTreeSet::new());
                }
                Transmit::Seal => {
                    let (seal, manifest, contents) = src.seal().expect("seal");
                    to_relay.push_back((
                        now + net.latency,
                        encode(&Frame::Seal(Seal {
                            transfer,
                            seal,
                            manifest,
                            contents,
                        })),
                    ));
                }
                Transmit::Piece {
                    stream,
                    file,
                    piece,
                    len,
                } => {
                    held.get_mut(&stream)
                        .expect("a piece on a stream held")
                        .insert(file);
                    let mut b = vec![0u8; len as usize];
                    src.piece(file, piece, &mut b).expect("piece");
                    let f = encode(&Frame::Piece(Piece {
                        file,
                        piece,
                        bytes: &b,
                    }));
                    if let Some(q) = streams.get_mut(&stream) {
                        if rng.gen_bool(net.duplicate) {
                            q.push_back((now + net.latency, f.clone()));
                        }
                        q.push_back((now + net.latency, f));
                    }
                }
                Transmit::Finish { stream } => {
                    assert!(held.contains_key(&stream), "finish of a stream held");
                    finished.insert(stream);
                }
                Transmit::Release { stream } => {
                    // Only a finished stream every file of which is durable; its data in
                    // flight (duplicates by now) may still arrive.
                    let carried = held.remove(&stream).expect("release of a stream held");
                    let relay = intake.as_ref().expect("durable data has an intake");
                    for file in carried {
                        let pieces = files.layouts[file as usize].count();
                        assert_eq!(relay.received(file), pieces, "released before all arrived");
                    }
                }
                Transmit::Reset { stream } => {
                    // Once everything is durable, a finished stream has been released.
                    assert!(
                        !(finished.contains(&stream)
                            && matches!(up.phase(), UploadPhase::AwaitReceipt)),
                        "finished stream {stream} reset instead of released"
                    );
                    streams.remove(&stream);
                    held.remove(&stream);
                }
            }
        }
        // The network delivers what is due: control in order, data streams interleaved at random.
        while to_relay.front().is_some_and(|(at, _)| *at <= now) {
            let (_, b) = to_relay.pop_front().expect("front");
            if !b.is_empty() {
                let Ok(Decoded::Frame(Frame::Seal(seal), _)) = frame::decode(&b, &limits) else {
                    panic!("only SEAL follows OFFER on the upload stream")
                };
                let i = intake.as_mut().expect("SEAL after ACCEPT");
                i.handle_seal(&seal)
                    .expect("SEAL once every piece is durable");
                assert_eq!(seal.manifest, files.roots_text(), "sealed roots");
                continue;
            }
            if relay_answers && intake.is_none() {
                intake = Some(Intake::new(
                    transfer,
                    files.layouts.clone(),
                    vec![0; files.layouts.len()],
                    IntakeConfig::default(),
                ));
            }
        }
        let due: Vec<u64> = streams
            .iter()
            .filter(|(_, q)| q.front().is_some_and(|(at, _)| *at <= now))
            .map(|(k, _)| *k)
            .collect();
        let mut order = due;
        // Shuffle the order in which streams make progress.
        for i in (1..order.len()).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        for key in order {
            let n = rng.gen_range(1..=4);
            for _ in 0..n {
                let Some(q) = streams.get_mut(&key) else {
                    break;
                };
                let Some((at, bytes)) = q.front().cloned() else {
                    break;
                };
                if at > now {
                    break;
                }
                q.pop_front();
                if rng.gen_bool(net.reset) {
                    streams.remove(&key);
                    if rng.gen_bool(net.told) {
                        up.stream_lost(key);
                    }
                    break;
                }
                let Some(intake) = intake.as_mut() else {
                    continue;
                };
                let Ok(Decoded::Frame(f, _)) = frame::decode(&bytes, &limits) else {
                    panic!("decode")
                };
                match intake.handle_data(&f).expect("valid data") {
                    DataAction::Store { file, piece, bytes } => {
                        let l = &files.layouts[file as usize];
                        assert_eq!(
                            received[file as usize].len() as u64,
                            l.range(piece).expect("range").start,
                            "in order"
                        );
                        received[file as usize].extend_from_slice(bytes);
                    }
                    DataAction::Duplicate | DataAction::Gap => {}
                }
            }
        }
        // The relay syncs now and then, acknowledges, and issues the receipt.
        if let Some(i) = intake.as_mut() {
            if relay_acks && rng.gen_bool(net.sync) {
                for f in 0..files.layouts.len() as u32 {
                    let r = i.received(f);
                    i.durable(now, f, r).expect("durable");
                }
            }
            if i.phase() == IntakePhase::AwaitReceipt {
                i.receipt("receipt\n".into()).expect("receipt");
                receipts += 1;
            }
            i.handle_timeout(now);
            while let Some(f) = i.poll_frame() {
                to_sender.push_back((now + net.latency, encode(&f)));
            }
        }
        while to_sender.front().is_some_and(|(at, _)| *at <= now) {
            let (_, b) = to_sender.pop_front().expect("front");
            let Ok(Decoded::Frame(f, _)) = frame::decode(&b, &limits) else {
                panic!("decode")
            };
            up.handle(now, &f);
        }
        // Time advances by a simulated step; timers fire when due.
        now += Duration::from_micros(rng.gen_range(100..2_000));
        if up.poll_timeout().is_some_and(|t| t <= now) {
            up.handle_timeout(now);
        }
    }
    if let Some(i) = &intake {
        // A file starts on any stream from its durable prefix: the relay never sees a gap.
        assert_eq!(i.counters().0, 0, "gaps at the relay");
    }
    if *up.phase() == UploadPhase::Done {
        // Every stream was let go once its file was durable: a transfer of many files does
        // not keep one per file until the end.
        assert!(held.is_empty(), "streams still held at the end: {held:?}");
    }
    Outcome {
        phase: up.phase().clone(),
        received,
        receipts,
        rewinds: up.stats().rewinds,
        now: now - t0,
        opened,
    }
}

fn small_cfg() -> UploadConfig {
    UploadConfig {
        window: 512 << 10,
        ack_timeout: Duration::from_millis(300),
        answer_timeout: Duration::from_secs(5),
        receipt_timeout: Duration::from_secs(5),
        max_rewinds: 50,
        streams: 3,
        // Several files per turn, and turns that end within a file.
        turn: 100_000,
    }
}

#[test]
fn lossless_network_delivers_everything_once() {
    let files = Files::random(&[0, 1, 70_000, 1 << 20], 7);
    let net = Net {
        latency: Duration::from_millis(20),
        reset: 0.0,
        told: 1.0,
        duplicate: 0.0,
        sync: 0.3,
    };
    let o = simulate(&files, small_cfg(), net, 1, true, true);
    assert_eq!(o.phase, UploadPhase::Done);
    assert_eq!(o.received, files.data);
    assert_eq!(o.receipts, 1);
    assert_eq!(o.rewinds, 0);
}

#[test]
fn lossy_reordering_duplicating_network_converges_for_many_seeds() {
    let files = Files::random(&[2 << 20, 300_000, 65_536, 0, 1 << 20], 8);
    let net = Net {
        latency: Duration::from_millis(15),
        reset: 0.01,
        told: 0.5,
        duplicate: 0.02,
        sync: 0.2,
    };
    let mut rewinds = 0;
    for seed in 0..24 {
        let o = simulate(&files, small_cfg(), net, seed, true, true);
        assert_eq!(o.phase, UploadPhase::Done, "seed {seed}");
        assert_eq!(o.received, files.data, "seed {seed}: byte-exact");
        assert_eq!(o.receipts, 1, "seed {seed}");
        rewinds += o.rewinds;
    }
    assert!(
        rewinds > 0,
        "silent losses were recovered by the ack timeout"
    );
}

#[test]
fn no_answer_times_out_as_retryable() {
    let files = Files::random(&[1000], 9);
    let net = Net {
        latency: Duration::from_millis(10),
        reset: 0.0,
        told: 1.0,
        duplicate: 0.0,
        sync: 0.5,
    };
    let o = simulate(&files, small_cfg(), net, 1, false, true);
    match o.phase {
        UploadPhase::Failed(e) => {
            assert_eq!(e.code, ErrorCode::TIMEOUT);
            assert_eq!(e.code.class(), ErrorClass::Retryable);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        o.now >= Duration::from_secs(5),
        "the answer timeout was honoured in simulated time"
    );
}

#[test]
fn a_relay_that_never_acknowledges_gives_up_after_max_rewinds() {
    let files = Files::random(&[1 << 20], 10);
    let net = Net {
        latency: Duration::from_millis(10),
        reset: 0.0,
        told: 1.0,
        duplicate: 0.0,
        sync: 0.5,
    };
    let cfg = UploadConfig {
        max_rewinds: 3,
        ..small_cfg()
    };
    let o = simulate(&files, cfg, net, 1, true, false);
    match o.phase {
        UploadPhase::Failed(e) => assert_eq!(e.code, ErrorCode::TIMEOUT),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(o.rewinds, 4);
}

#[test]
fn resume_sends_only_what_is_not_durable() {
    let files = Files::random(&[1 << 20, 200_000], 11);
    let t = TransferId::from_bytes([6; 16]);
    let now = Instant::now();
    let mut up = Upload::new(t, files.layouts.clone(), small_cfg(), now);
    assert_eq!(up.poll_transmit(), Some(Transmit::Offer));
    assert_eq!(up.poll_transmit(), None, "nothing before ACCEPT");
    // The relay already holds 10 pieces of file 0 and all of file 1.
    let intake = Intake::new(
        t,
        files.layouts.clone(),
        vec![10, files.layouts[1].count()],
        IntakeConfig::default(),
    );
    let mut intake = intake;
    let accept = intake.poll_frame().expect("ACCEPT");
    up.handle(now, &accept);
    let mut pieces = vec![];
    while let Some(tx) = up.poll_transmit() {
        if let Transmit::Piece { file, piece, .. } = tx {
            pieces.push((file, piece));
        }
    }
    assert_eq!(pieces.first(), Some(&(0, 10)));
    assert!(pieces.iter().all(|&(f, p)| f == 0 && p >= 10));
    assert_eq!(
        up.stats().bytes_skipped,
        rogatory_transport::upload::piece_offset(&files.layouts[0], 10)
            + files.layouts[1].ciphertext_size
    );
}

#[test]
fn intake_refuses_misplaced_and_malformed_data() {
    let files = Files::random(&[200_000], 12);
    let t = TransferId::from_bytes([7; 16]);
    let mut i = Intake::new(t, files.layouts.clone(), vec![0], IntakeConfig::default());
    let piece = vec![0u8; 65_552];
    let count = files.layouts[0].count();
    // SEAL before every piece is durable, or naming another transfer.
    let seal = |transfer| Seal {
        transfer,
        seal: "s".into(),
        manifest: "m".into(),
        contents: Vec::new(),
    };
    assert_eq!(
        i.handle_seal(&seal(t)).expect_err("early").code,
        ErrorCode::PROTOCOL_VIOLATION
    );
    assert!(
        i.handle_seal(&seal(TransferId::from_bytes([8; 16])))
            .is_err()
    );
    // Wrong file, beyond the last piece, wrong length.
    assert!(
        i.handle_data(&Frame::Piece(Piece {
            file: 1,
            piece: 0,
            bytes: &piece
        }))
        .is_err()
    );
    assert!(
        i.handle_data(&Frame::Piece(Piece {
            file: 0,
            piece: count,
            bytes: &piece
        }))
        .is_err()
    );
    let e = i
        .handle_data(&Frame::Piece(Piece {
            file: 0,
            piece: 1,
            bytes: &piece[..100],
        }))
        .expect_err("length");
    assert_eq!(e.code, ErrorCode::INTEGRITY);
    // A gap is dropped, not stored.
    assert_eq!(
        i.handle_data(&Frame::Piece(Piece {
            file: 0,
            piece: 2,
            bytes: &piece
        }))
        .expect("gap"),
        DataAction::Gap
    );
    // Acknowledging more than was received is a bug in the store, refused.
    assert!(i.durable(Instant::now(), 0, 1).is_err());
    assert!(
        i.receipt("early".into()).is_err(),
        "no receipt before everything is durable"
    );
}

/// The intake knows when the last missing piece has been handed out for storing (the relay
/// then syncs at once instead of waiting out its group commit's interval): not before,
/// whatever duplicates or gaps arrive, and at once for a resumed transfer the store already
/// holds whole (test-plan.md 126).
#[test]
fn intake_knows_when_every_piece_has_arrived() {
    let files = Files::random(&[200_000, 100], 14);
    let t = TransferId::from_bytes([10; 16]);
    let piece = |f: usize, p: u64| {
        let r = files.layouts[f].range(p).expect("piece in range");
        Frame::Piece(Piece {
            file: f as u32,
            piece: p,
            bytes: &files.data[f][r.start as usize..r.end as usize],
        })
    };
    // File 1 is already durable; file 0 arrives in order, with a duplicate and a gap.
    let count = files.layouts[0].count();
    let mut i = Intake::new(
        t,
        files.layouts.clone(),
        vec![0, files.layouts[1].count()],
        IntakeConfig::default(),
    );
    for p in 0..count {
        assert!(!i.all_received(), "piece {p} of {count} still missing");
        if p + 1 < count {
            assert_eq!(
                i.handle_data(&piece(0, p + 1)).expect("gap"),
                DataAction::Gap
            );
        }
        assert!(matches!(
            i.handle_data(&piece(0, p)).expect("next piece"),
            DataAction::Store { .. }
        ));
        assert_eq!(
            i.handle_data(&piece(0, p)).expect("again"),
            DataAction::Duplicate
        );
    }
    assert!(i.all_received());
    // A resume of a transfer whose every piece is durable has nothing to wait for.
    let whole = files.layouts.iter().map(|l| l.count()).collect();
    assert!(Intake::new(t, files.layouts.clone(), whole, IntakeConfig::default()).all_received());
}

/// A file sent again after a rewind, whose earlier stream's data then turns out durable:
/// nothing more is sent for the file, the new stream is abandoned (reset) and the upload goes
/// on to SEAL instead of offering pieces past the file's end.
#[test]
fn a_file_made_durable_by_its_earlier_stream_stops_being_sent() {
    let files = Files::random(&[400_000], 13);
    let t = TransferId::from_bytes([9; 16]);
    let count = files.layouts[0].count();
    let t0 = Instant::now();
    let mut up = Upload::new(t, files.layouts.clone(), small_cfg(), t0);
    assert_eq!(up.poll_transmit(), Some(Transmit::Offer));
    up.handle(
        t0,
        &Frame::Accept(rogatory_transport::frame::Accept {
            transfer: t,
            durable: vec![0],
        }),
    );
    // Stream 0: every piece, then FIN.
    assert_eq!(up.poll_transmit(), Some(Transmit::Open { stream: 0 }));
    let mut sent = 0;
    while let Some(tx) = up.poll_transmit() {
        match tx {
            Transmit::Piece { stream: 0, .. } => sent += 1,
            Transmit::Finish { stream: 0 } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sent, count);
    // No acknowledgement within ack_timeout: rewound, sent again on stream 1.
    let later = t0 + Duration::from_secs(1);
    up.handle_timeout(later);
    assert_eq!(up.poll_transmit(), Some(Transmit::Reset { stream: 0 }));
    assert_eq!(up.poll_transmit(), Some(Transmit::Open { stream: 1 }));
    assert!(matches!(
        up.poll_transmit(),
        Some(Transmit::Piece {
            stream: 1,
            piece: 0,
            ..
        })
    ));
    // The relay had it all from stream 0.
    up.handle(
        later,
        &Frame::Durable(rogatory_transport::frame::Durable {
            file: 0,
            pieces: count,
        }),
    );
    assert_eq!(up.poll_transmit(), Some(Transmit::Reset { stream: 1 }));
    assert_eq!(up.poll_transmit(), Some(Transmit::Seal));
    assert_eq!(up.poll_transmit(), None);
}

/// Many small files share a few streams: with no loss, every stream carries several files,
/// one after the other; with resets (told and silent) and duplicates, every seed still ends
/// byte-exact with one receipt.
#[test]
fn small_files_share_streams_and_survive_resets() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let sizes: Vec<u64> = (0..120)
        .map(|i| match i % 10 {
            0 => 0,
            9 => rng.gen_range(70_000..200_000),
            _ => rng.gen_range(1..9_000),
        })
        .collect();
    let files = Files::random(&sizes, 15);
    let calm = Net {
        latency: Duration::from_millis(5),
        reset: 0.0,
        told: 1.0,
        duplicate: 0.0,
        sync: 0.3,
    };
    let o = simulate(&files, small_cfg(), calm, 1, true, true);
    assert_eq!(o.phase, UploadPhase::Done);
    assert_eq!(o.received, files.data);
    assert!(
        o.opened <= 3,
        "{} streams for {} files: each carries many",
        o.opened,
        sizes.len()
    );
    let rough = Net {
        latency: Duration::from_millis(5),
        reset: 0.01,
        told: 0.5,
        duplicate: 0.02,
        sync: 0.2,
    };
    let mut rewound = 0;
    for seed in 0..24 {
        let o = simulate(&files, small_cfg(), rough, seed, true, true);
        assert_eq!(o.phase, UploadPhase::Done, "seed {seed}");
        assert_eq!(o.received, files.data, "seed {seed}: byte-exact");
        assert_eq!(o.receipts, 1, "seed {seed}");
        rewound += o.opened.saturating_sub(3);
    }
    assert!(rewound > 0, "streams were lost and replaced");
}

fn accepted(files: &Files, cfg: UploadConfig, t0: Instant) -> Upload {
    let t = TransferId::from_bytes([10; 16]);
    let mut up = Upload::new(t, files.layouts.clone(), cfg, t0);
    assert_eq!(up.poll_transmit(), Some(Transmit::Offer));
    up.handle(
        t0,
        &Frame::Accept(rogatory_transport::frame::Accept {
            transfer: t,
            durable: vec![0; files.layouts.len()],
        }),
    );
    up
}

fn durable(up: &mut Upload, now: Instant, file: u32, pieces: u64) {
    up.handle(
        now,
        &Frame::Durable(rogatory_transport::frame::Durable { file, pieces }),
    );
}

/// A stream lost sends again exactly the files it carried that are not yet durable, on a new
/// stream; a finished stream is let go only once every file it carried is durable.
#[test]
fn a_lost_stream_sends_again_only_its_files_not_yet_durable() {
    let files = Files::random(&[1_000, 2_000, 3_000, 4_000, 5_000], 16);
    let t0 = Instant::now();
    let cfg = UploadConfig {
        streams: 1,
        ..small_cfg()
    };
    let mut up = accepted(&files, cfg.clone(), t0);
    let mut sent = vec![];
    while let Some(tx) = up.poll_transmit() {
        match tx {
            Transmit::Open { stream } => assert_eq!(stream, 0),
            Transmit::Piece { stream, file, .. } => sent.push((stream, file)),
            Transmit::Finish { stream } => assert_eq!(stream, 0),
            other => panic!("unexpected {other:?}"),
        }
    }
    let all = |f: usize| files.layouts[f].count();
    sent.dedup();
    assert_eq!(sent, [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]);
    durable(&mut up, t0, 0, all(0));
    durable(&mut up, t0, 3, all(3));
    while up.poll_event().is_some() {}
    up.stream_lost(0);
    assert_eq!(up.poll_transmit(), Some(Transmit::Reset { stream: 0 }));
    let again: u64 = [1, 2, 4]
        .iter()
        .map(|&i| files.layouts[i].ciphertext_size)
        .sum();
    assert!(
        std::iter::from_fn(|| up.poll_event())
            .any(|e| e == rogatory_transport::upload::UploadEvent::Rewound { bytes: again })
    );
    let mut resent = vec![];
    while let Some(tx) = up.poll_transmit() {
        match tx {
            Transmit::Open { stream } => assert_eq!(stream, 1),
            Transmit::Piece { stream, file, .. } => resent.push((stream, file)),
            Transmit::Finish { stream } => assert_eq!(stream, 1),
            other => panic!("unexpected {other:?}"),
        }
    }
    resent.dedup();
    assert_eq!(resent, [(1, 1), (1, 2), (1, 4)]);
    // Stream 1, finished, is let go with its last file durable, not before.
    durable(&mut up, t0, 1, all(1));
    durable(&mut up, t0, 2, all(2));
    assert_eq!(up.poll_transmit(), None);
    durable(&mut up, t0, 4, all(4));
    assert_eq!(up.poll_transmit(), Some(Transmit::Release { stream: 1 }));
    assert_eq!(up.poll_transmit(), Some(Transmit::Seal));
}

/// Streams take turns of `turn` bytes: many small files go to one stream in a row, and a
/// large file's pieces alternate between streams a turn at a time.
#[test]
fn streams_take_turns_of_whole_batches() {
    let files = Files::random(&[1_000, 1_000, 1_000, 300_000, 300_000], 17);
    let t0 = Instant::now();
    let cfg = UploadConfig {
        streams: 2,
        turn: 150_000,
        window: 10 << 20,
        ..small_cfg()
    };
    let mut up = accepted(&files, cfg, t0);
    let mut order = vec![];
    while let Some(tx) = up.poll_transmit() {
        if let Transmit::Piece { stream, file, .. } = tx {
            order.push((stream, file));
        }
    }
    // Stream 0 was given file 0 and stream 1 file 1 when they opened. Stream 0 writes first
    // and goes on with files 2 and 3 until its turn is over (within file 3: 64 KiB pieces),
    // then stream 1 writes file 1 and goes on with file 4. Each file stays on its stream.
    let mut turns = order.clone();
    turns.dedup();
    assert_eq!(turns[..5], [(0, 0), (0, 2), (0, 3), (1, 1), (1, 4)]);
    let first_of_1 = order.iter().position(|&(s, _)| s == 1).expect("stream 1");
    assert!(
        (3..=4).contains(&order[..first_of_1].iter().filter(|&&(_, f)| f == 3).count()),
        "stream 0's turn ended within file 3: {order:?}"
    );
    for (file, stream) in [(0, 0), (1, 1), (2, 0), (3, 0), (4, 1)] {
        let on: Vec<_> = order.iter().filter(|&&(_, f)| f == file).collect();
        assert_eq!(on.len() as u64, files.layouts[file as usize].count());
        assert!(on.iter().all(|&&(s, _)| s == stream), "file {file}");
    }
}

/// A stream lost without the sender being told, while the others make progress: it is reset
/// once its own data has made no durable progress for `ack_timeout`, its files are sent again
/// by another stream, and this is not a rewind "in a row" (the relay is answering).
#[test]
fn a_silently_lost_stream_is_reset_while_the_others_progress() {
    let files = Files::random(&[1_000; 8], 18);
    let t0 = Instant::now();
    let cfg = UploadConfig {
        streams: 2,
        turn: 3_000,
        max_rewinds: 0,
        ..small_cfg()
    };
    let timeout = cfg.ack_timeout;
    let mut up = accepted(&files, cfg, t0);
    let mut on: BTreeMap<u32, u64> = BTreeMap::new();
    while let Some(tx) = up.poll_transmit() {
        if let Transmit::Piece { stream, file, .. } = tx {
            on.insert(file, stream);
        }
    }
    let lost: Vec<u32> = on
        .iter()
        .filter(|&(_, &s)| s == 0)
        .map(|(&f, _)| f)
        .collect();
    assert!(
        !lost.is_empty() && lost.len() < files.layouts.len(),
        "{on:?}"
    );
    // Stream 1's files become durable; stream 0's never do.
    let half = t0 + timeout / 2;
    for (&f, &s) in &on {
        if s == 1 {
            durable(&mut up, half, f, files.layouts[f as usize].count());
        }
    }
    while up.poll_event().is_some() {}
    assert_eq!(up.poll_transmit(), Some(Transmit::Release { stream: 1 }));
    assert_eq!(up.poll_transmit(), None);
    assert_eq!(up.poll_timeout(), Some(t0 + timeout), "stream 0's deadline");
    up.handle_timeout(t0 + timeout);
    assert_eq!(up.poll_transmit(), Some(Transmit::Reset { stream: 0 }));
    let again: u64 = lost
        .iter()
        .map(|&f| files.layouts[f as usize].ciphertext_size)
        .sum();
    assert!(
        std::iter::from_fn(|| up.poll_event())
            .any(|e| e == rogatory_transport::upload::UploadEvent::Rewound { bytes: again })
    );
    let mut resent = BTreeSet::new();
    while let Some(tx) = up.poll_transmit() {
        if let Transmit::Piece { file, .. } = tx {
            resent.insert(file);
        }
    }
    assert_eq!(resent.into_iter().collect::<Vec<_>>(), lost);
    // Not a failure: max_rewinds 0 counts rewinds without any progress in a row.
    assert_eq!(*up.phase(), UploadPhase::AwaitDurable);
    assert_eq!(up.stats().rewinds, 1);
}

/// A write the shell waits on (here the ATTACH of a new stream: nothing in flight, so no ack
/// timer) with no durable progress for `ack_timeout` is a rewind in a row: its stream is reset,
/// progress starts the count again, and one too many fails the upload with TIMEOUT.
#[test]
fn a_write_that_waits_without_progress_is_a_rewind_in_a_row() {
    let files = Files::random(&[1_000, 1_000], 19);
    let t0 = Instant::now();
    let cfg = UploadConfig {
        streams: 1,
        max_rewinds: 1,
        ..small_cfg()
    };
    let timeout = cfg.ack_timeout;
    let mut up = accepted(&files, cfg, t0);
    assert_eq!(up.poll_transmit(), Some(Transmit::Open { stream: 0 }));
    assert_eq!(up.poll_timeout(), None, "nothing in flight");
    assert_eq!(up.stall_deadline(), Some(t0 + timeout));
    up.write_stalled(t0 + timeout / 2, 0);
    assert!(up.holds(0), "too early");
    up.write_stalled(t0 + timeout, 0);
    assert!(!up.holds(0));
    assert_eq!(up.poll_transmit(), Some(Transmit::Reset { stream: 0 }));
    assert_eq!(up.poll_transmit(), Some(Transmit::Open { stream: 1 }));
    // Durable progress (file 0, from wherever): the count starts again.
    let later = t0 + timeout + timeout / 2;
    durable(&mut up, later, 0, files.layouts[0].count());
    up.write_stalled(later + timeout / 2, 1);
    assert!(up.holds(1), "progress within ack_timeout");
    up.write_stalled(later + timeout, 1);
    assert_eq!(
        *up.phase(),
        UploadPhase::AwaitDurable,
        "one rewind in a row is allowed"
    );
    assert!(!up.holds(1));
    while up.poll_transmit().is_some() {}
    let open: Vec<u64> = (2..3).filter(|&n| up.holds(n)).collect();
    assert_eq!(open, [2]);
    up.write_stalled(later + 2 * timeout, 2);
    match up.phase() {
        UploadPhase::Failed(e) => assert_eq!(e.code, ErrorCode::TIMEOUT),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(up.poll_transmit(), Some(Transmit::Reset { stream: 2 }));
}
