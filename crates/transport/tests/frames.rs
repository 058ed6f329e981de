//! Frames gathered over reused buffers (`protocol.md` §6.1 "Writing the pieces", test-plan.md
//! 129), over loopback: a piece whose source fails after writing into its slot leaves nothing
//! on the wire, and the bytes a reused gathering buffer held past its frames are never sent.

mod support;

use std::time::Duration;

use rogatory_transport::net::{FrameReader, NetError};
use rogatory_transport::{Frame, Limits};
use support::*;

#[tokio::test]
async fn a_failed_piece_and_the_bytes_of_reused_buffers_never_reach_the_wire() {
    let pki = Pki::new();
    let relay = relay(identity(&pki.relay), pki.trust(), Limits::default());
    let addr = relay.local_addr().expect("addr");
    let server = tokio::spawn(async move { relay.accept_next().await.expect("incoming") });
    let c = tokio::time::timeout(
        Duration::from_secs(10),
        client(identity(&pki.a), pki.trust()).connect(addr, None),
    )
    .await
    .expect("client bounded")
    .expect("client session");
    let s = server.await.expect("join").expect("relay session");
    let reader = tokio::spawn(async move {
        let (_, r) = s.conn.accept_bi().await.expect("the client's stream");
        let mut r = FrameReader::new(r, s.conn.clone(), Default::default());
        let mut got = Vec::new();
        while let Some(f) = r.next().await.expect("a frame") {
            match f {
                Frame::Piece(p) => got.push((p.file, p.piece, p.bytes.to_vec())),
                other => panic!("unexpected {} frame", other.ty().name()),
            }
        }
        got
    });

    // About 13 MiB: several batches, whose buffers quinn releases to be reused. Every seventh
    // source scribbles over its whole slot, then fails; the pieces after it are shorter, so
    // that its bytes lie past the frames gathered after it.
    let (mut w, _) = c.open().await.expect("stream");
    let mut expect = Vec::new();
    for p in 0..200u64 {
        let len = 65_552 - (p as usize % 3) * 1_000;
        let byte = (p % 251) as u8;
        if p % 7 == 3 {
            let r = w
                .send_piece(1, p, len as u64, |out| {
                    out.fill(0xee);
                    Err(std::io::Error::other("the source failed"))
                })
                .await;
            assert!(matches!(r, Err(NetError::Source(_))), "{r:?}");
        } else {
            w.send_piece(1, p, len as u64, |out| {
                out.fill(byte);
                Ok(())
            })
            .await
            .expect("piece");
            expect.push((1u32, p, vec![byte; len]));
        }
    }
    w.flush().await.expect("flush");
    w.finish();
    let got = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("reader bounded")
        .expect("join");
    assert_eq!(got.len(), expect.len());
    for (g, e) in got.iter().zip(&expect) {
        assert!(g == e, "piece {} differs", e.1);
    }
}
