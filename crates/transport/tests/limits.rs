//! Every transport limit (`protocol.md` §8) has a finite default and reaches quinn and rustls
//! as configured.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rogatory_transport::config::{
    Congestion, rustls_client_config, rustls_server_config, server_config,
};
use rogatory_transport::frame::FrameLimits;
use rogatory_transport::{FrameType, Limits};
use support::*;

#[test]
fn defaults_are_the_documented_ones() {
    let l = Limits::default();
    assert_eq!(l.stream_receive_window, 16 << 20);
    assert_eq!(l.connection_receive_window, 64 << 20);
    assert_eq!(l.send_window, 64 << 20);
    assert_eq!(l.max_concurrent_bidi_streams, 16);
    assert_eq!(l.max_concurrent_uni_streams, 16);
    assert_eq!(l.max_data_streams, 8);
    assert_eq!(l.idle_timeout, Duration::from_secs(30));
    assert_eq!(l.keep_alive, Duration::from_secs(10));
    assert!(l.keep_alive < l.idle_timeout);
    assert_eq!(l.handshake_timeout, Duration::from_secs(10));
    assert_eq!(l.max_incoming, 256);
    assert_eq!(l.max_connections_per_agency, 32);
    assert!(l.max_connections_per_agency < l.max_incoming);
    assert_eq!(l.large_frame_budget, 256 << 20);
    assert_eq!(l.congestion, Congestion::Cubic);
    assert_eq!(
        l.frames,
        FrameLimits {
            max_offer: 33 << 20,
            max_control: 1 << 20,
            slow_frame_grace: Duration::from_secs(60),
            min_frame_rate: 128 << 10,
        }
    );
    // Every frame type has a finite limit, the OFFER limit covers the largest offer, and the
    // SEAL limit the largest manifest with the largest encrypted contents.
    for t in FrameType::ALL {
        assert!(t.limit(&l.frames) <= 66 << 20, "{t:?}");
        // A frame never waits for more of the budget than there is.
        assert!(t.limit(&l.frames) <= l.large_frame_budget, "{t:?}");
    }
    assert!(FrameType::Offer.limit(&l.frames) > rogatory_custody::MAX_MANIFEST_LEN as u64);
    assert!(
        FrameType::Seal.limit(&l.frames)
            > rogatory_custody::MAX_MANIFEST_LEN as u64
                + rogatory_custody::MAX_CONTENTS_CIPHERTEXT_LEN
    );
    assert_eq!("bbr".parse::<Congestion>(), Ok(Congestion::Bbr));
    assert!("reno2".parse::<Congestion>().is_err());
}

#[test]
fn an_agency_bounds_its_memory_not_the_relay() {
    // `protocol.md` §8: an agency's downloads share one 8 MiB connection window and an upload
    // keeps at most 16 MiB unacknowledged; everything else is the relay's default.
    let a = Limits::agency();
    let d = Limits::default();
    assert_eq!(a.connection_receive_window, 8 << 20);
    assert_eq!(a.send_window, 16 << 20);
    assert!(a.stream_receive_window > a.connection_receive_window);
    assert_eq!(
        Limits {
            connection_receive_window: d.connection_receive_window,
            send_window: d.send_window,
            ..a.clone()
        },
        d
    );
    let t = format!("{:?}", a.transport_config());
    assert!(t.contains("receive_window: 8388608"), "{t}");
    assert!(t.contains("send_window: 16777216"), "{t}");
}

#[test]
fn quinn_receives_every_limit() {
    let l = Limits {
        stream_receive_window: 3_000_000,
        connection_receive_window: 9_000_000,
        send_window: 7_000_000,
        max_concurrent_bidi_streams: 5,
        max_concurrent_uni_streams: 6,
        idle_timeout: Duration::from_secs(21),
        keep_alive: Duration::from_secs(4),
        max_incoming: 17,
        ..Limits::default()
    };
    let t = format!("{:?}", l.transport_config());
    for needle in [
        "max_concurrent_bidi_streams: 5",
        "max_concurrent_uni_streams: 6",
        "max_idle_timeout: Some(21000)",
        "stream_receive_window: 3000000",
        "receive_window: 9000000",
        "send_window: 7000000",
        "keep_alive_interval: Some(4s)",
        "datagram_receive_buffer_size: None",
        "datagram_send_buffer_size: 0",
        "enable_segmentation_offload: true",
    ] {
        assert!(t.contains(needle), "{needle} not in {t}");
    }
    let pki = Pki::new();
    let s = format!(
        "{:?}",
        server_config(&identity(&pki.relay), pki.trust(), &l).expect("server")
    );
    assert!(s.contains("migration: false"), "{s}");
    assert!(s.contains("max_incoming: 17"), "{s}");
    assert!(s.contains("max_concurrent_uni_streams: 6"), "{s}");
}

#[test]
fn tls_is_1_3_only_with_aes128_first_post_quantum_first_and_no_early_data() {
    let pki = Pki::new();
    for (suites, groups, alpn, early) in [
        {
            let c = rustls_server_config(&identity(&pki.relay), pki.trust()).expect("server");
            (
                c.crypto_provider().cipher_suites.clone(),
                c.crypto_provider().kx_groups.clone(),
                c.alpn_protocols.clone(),
                c.max_early_data_size > 0,
            )
        },
        {
            let c = rustls_client_config(&identity(&pki.a), pki.trust(), None).expect("client");
            (
                c.crypto_provider().cipher_suites.clone(),
                c.crypto_provider().kx_groups.clone(),
                c.alpn_protocols.clone(),
                c.enable_early_data,
            )
        },
    ] {
        assert!(
            suites
                .iter()
                .all(|s| s.version() == &rustls::version::TLS13),
            "TLS 1.3 only"
        );
        assert_eq!(
            suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert_eq!(groups[0].name(), rustls::NamedGroup::X25519MLKEM768);
        assert_eq!(alpn, vec![b"rogatory/1".to_vec()]);
        assert!(!early, "0-RTT off");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_incoming_connections_is_enforced() {
    let pki = Pki::new();
    let limits = Limits {
        max_incoming: 1,
        ..Limits::default()
    };
    let node = holding_relay(&pki, limits);
    let addr = node.local_addr().expect("addr");
    let c = client(identity(&pki.a), pki.trust());
    let first = c.connect(addr, None).await.expect("first connection");
    let second = c.connect(addr, None).await.expect_err("second refused");
    // A relay at capacity refuses the QUIC connection; that is worth retrying later (exit 5).
    assert_eq!(
        second.class(),
        rogatory_transport::ErrorClass::Retryable,
        "{second:?}"
    );
    drop(first);
    let _ = Arc::strong_count(&node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agency_cannot_take_every_connection() {
    // test-plan.md 63: an agency at `max_connections_per_agency` is refused with BUSY
    // (retryable, with the reason), another agency still connects, and a place that ends is
    // free again.
    let pki = Pki::new();
    let limits = Limits {
        max_connections_per_agency: 2,
        ..Limits::default()
    };
    let node = holding_relay(&pki, limits);
    let addr = node.local_addr().expect("addr");
    let a = client(identity(&pki.a), pki.trust());
    let first = a.connect(addr, None).await.expect("first connection");
    let _second = a.connect(addr, None).await.expect("second connection");
    let third = a.connect(addr, None).await.expect_err("third refused");
    assert_eq!(
        third.class(),
        rogatory_transport::ErrorClass::Retryable,
        "{third:?}"
    );
    let shown = third.to_string();
    assert!(
        shown.contains("agency-a") && shown.contains("as it may (2)"),
        "{shown}"
    );
    let b = client(identity(&pki.b), pki.trust());
    let _other = b
        .connect(addr, None)
        .await
        .expect("another agency connects");

    first.conn.close(0u32.into(), b"done");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match a.connect(addr, None).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(
                    e.class(),
                    rogatory_transport::ErrorClass::Retryable,
                    "{e:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the place the first connection held is not free again: {e}"),
        }
    }
}

/// A relay whose sessions hold their connection open until the client goes.
fn holding_relay(pki: &Pki, limits: Limits) -> Arc<rogatory_transport::net::Node> {
    let node = relay(identity(&pki.relay), pki.trust(), limits);
    let n = node.clone();
    tokio::spawn(async move {
        n.serve(|s| async move {
            s.conn.closed().await;
        })
        .await
    });
    node
}
