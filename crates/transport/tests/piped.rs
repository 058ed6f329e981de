//! A [`FrameWriter::piped`] data stream, over loopback (`protocol.md` §6.1): the frames arrive
//! in the order written, whole, with the stream finished after the last; a reset reaches the
//! peer as a reset; a stream the peer stopped fails the writes that follow.

mod support;

use std::time::Duration;

use rogatory_custody::TransferId;
use rogatory_transport::frame::Attach;
use rogatory_transport::net::{FrameReader, FrameWriter, NetError, Session};
use rogatory_transport::{ErrorCode, Frame, Limits};
use support::*;

/// A connected pair: the relay's session and the client's.
async fn pair() -> (Session, Session) {
    let pki = Pki::new();
    let relay = relay(identity(&pki.relay), pki.trust(), Limits::default());
    let addr = relay.local_addr().expect("addr");
    let server = tokio::spawn(async move { relay.accept_next().await.expect("incoming") });
    let c = client(identity(&pki.a), pki.trust());
    let c = tokio::time::timeout(Duration::from_secs(10), c.connect(addr, None))
        .await
        .expect("bounded")
        .expect("client session");
    let s = server.await.expect("join").expect("relay session");
    (s, c)
}

/// A small frame between the pieces.
fn attached(n: u8) -> Attach {
    Attach {
        transfer: TransferId::from_bytes([n; 16]),
    }
}

fn attach(n: u8) -> Frame<'static> {
    Frame::Attach(attached(n))
}

/// The bytes of piece `p` of file `f`, `len` long.
fn piece_bytes(f: u32, p: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 7 + p * 13 + u64::from(f)) as u8)
        .collect()
}

#[tokio::test]
async fn pieces_arrive_whole_and_in_order_then_the_end() {
    let (relay, client) = pair().await;
    let mut w = FrameWriter::piped(client.conn.open_uni().await.expect("open"));
    // Pieces of odd sizes, over several batches (2 MiB each) and small frames between them.
    let sizes: Vec<usize> = (0..120).map(|i| 1 + (i * 40_503) % 65_552).collect();
    w.send(&attach(1)).await.expect("first frame");
    for (p, &len) in sizes.iter().enumerate() {
        let bytes = piece_bytes(3, p as u64, len);
        w.send_piece(3, p as u64, len as u64, |out| {
            out.copy_from_slice(&bytes);
            Ok(())
        })
        .await
        .expect("piece");
    }
    w.flush().await.expect("flush");
    w.send(&attach(2)).await.expect("last frame");
    w.finish();
    let recv = tokio::time::timeout(Duration::from_secs(10), relay.conn.accept_uni())
        .await
        .expect("bounded")
        .expect("accept");
    let mut r = FrameReader::new(recv, relay.conn.clone(), Default::default());
    assert!(matches!(r.next().await, Ok(Some(Frame::Attach(a))) if a == attached(1)));
    for (p, &len) in sizes.iter().enumerate() {
        match r.next().await {
            Ok(Some(Frame::Piece(got))) => {
                assert_eq!((got.file, got.piece), (3, p as u64));
                assert_eq!(got.bytes, &piece_bytes(3, p as u64, len)[..], "piece {p}");
            }
            other => panic!("piece {p}: {other:?}"),
        }
    }
    assert!(matches!(r.next().await, Ok(Some(Frame::Attach(a))) if a == attached(2)));
    assert!(
        matches!(r.next().await, Ok(None)),
        "the stream ends after the last frame"
    );
}

#[tokio::test]
async fn a_reset_reaches_the_peer() {
    let (relay, client) = pair().await;
    let mut w = FrameWriter::piped(client.conn.open_uni().await.expect("open"));
    w.send(&attach(1)).await.expect("frame");
    let recv = tokio::time::timeout(Duration::from_secs(10), relay.conn.accept_uni())
        .await
        .expect("bounded")
        .expect("accept");
    let mut r = FrameReader::new(recv, relay.conn.clone(), Default::default());
    assert!(matches!(r.next().await, Ok(Some(Frame::Attach(a))) if a == attached(1)));
    w.reset(ErrorCode::NO_ERROR);
    let end = tokio::time::timeout(Duration::from_secs(10), r.next())
        .await
        .expect("bounded");
    assert!(end.is_err(), "a reset, not a clean end: {end:?}");
}

#[tokio::test]
async fn writes_after_the_peer_stopped_the_stream_fail() {
    let (relay, client) = pair().await;
    let mut w = FrameWriter::piped(client.conn.open_uni().await.expect("open"));
    w.send(&attach(1)).await.expect("frame");
    let mut recv = tokio::time::timeout(Duration::from_secs(10), relay.conn.accept_uni())
        .await
        .expect("bounded")
        .expect("accept");
    recv.stop(ErrorCode::TIMEOUT.to_varint()).expect("stop");
    let piece = vec![7u8; 65_552];
    let failed = tokio::time::timeout(Duration::from_secs(10), async {
        for p in 0.. {
            let r = w
                .send_piece(0, p, piece.len() as u64, |out| {
                    out.copy_from_slice(&piece);
                    Ok(())
                })
                .await;
            if let Err(e) = r {
                return e;
            }
        }
        unreachable!("the pieces are endless")
    })
    .await
    .expect("a write fails within the bound");
    assert!(
        matches!(failed, NetError::StreamClosed(c) if c == ErrorCode::TIMEOUT),
        "{failed:?}"
    );
}
