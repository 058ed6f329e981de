//! The relay over loopback with the real transport: receipts, idempotence, authorisation,
//! policy, resume, integrity, quota and reserve, canary scan, on-disk names, scrub, retention,
//! partial GC, log checkpoints, an offer waiting for the disk, an upload taken over by a newer
//! offer, a purge during a repair (test-plan.md 15, 26, 27, 28, 31, 33, 35, 36, 37, 38, 39, 52, 81,
//! 120, 131, 132, 133, 136).

mod support;

use std::sync::atomic::Ordering;

use rogatory_custody::{LegalText, PieceHash, ReceiptBundle, TransferId};
use rogatory_relay::{DiskStorage, Policy};
use rogatory_transport::ErrorCode;
use rogatory_transport::frame::{
    Deliver, Fetch, Frame, InboxRequest, Object, ReceiptKind, StatusRequest, TransferState,
};
use rogatory_transport::net::{NetError, Session};
use rogatory_transport::upload::UploadEvent;
use support::*;

fn code(e: &NetError) -> ErrorCode {
    match e {
        NetError::Protocol(p) => p.code,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

fn relay_in(w: &World, dir: &std::path::Path, policy: Policy) -> Running<DiskStorage> {
    let (_c, clock) = clock_at(now().unix());
    start(w, open_relay(w, dir, policy, DiskStorage::new(), clock))
}

async fn request(s: &Session, f: Frame<'_>) -> Frame<'static> {
    let (mut wr, mut rd) = s.open().await.expect("open");
    wr.send(&f).await.expect("send");
    wr.finish();
    let f = rd.expect().await.expect("answer");
    rogatory_transport::net::owned(f).expect("control frame")
}

async fn fetch_all(s: &Session, t: TransferId, object: Object) -> Result<Vec<u8>, ErrorCode> {
    let (mut wr, mut rd) = s.open().await.expect("open");
    wr.send(&Frame::Fetch(Fetch {
        transfer: t,
        object,
        offset: 0,
        len: 0,
    }))
    .await
    .expect("send");
    wr.finish();
    let total = match rd.expect().await.expect("head") {
        Frame::FetchHead(h) => h.total,
        Frame::Error(e) => return Err(e.code),
        other => panic!("unexpected {other:?}"),
    };
    let mut out = Vec::new();
    while let Some(f) = rd.next().await.expect("range") {
        match f {
            Frame::Range(r) => {
                assert_eq!(r.offset, out.len() as u64);
                out.extend_from_slice(r.bytes);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(out.len() as u64, total);
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_receipt_fetch_deliver_and_idempotence() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let r = relay_in(&w, dir.path(), Policy::default());
    let t = transfer(&w.a, &[&w.b], &exhibits(1), legal(), now());
    let sa = connect(&w, &w.a, r.addr).await;
    let out = send(&sa, &t, None).await.expect("upload");
    assert_eq!(out.stats.bytes_sent, t.total());
    // The custody receipt verifies with agency-b's key and proves inclusion in its log.
    let bundle = ReceiptBundle::parse(&out.receipt.text).expect("bundle");
    let logged = bundle
        .verify(&w.b.identity.signer().verifier())
        .expect("verifies");
    let _ = logged;
    let log_len = r.relay.log_len();
    assert_eq!(log_len, 1, "exactly one log entry: the custody receipt");
    // A file's FETCH reads the row without its documents (seal, manifest, offer: megabytes for
    // many files), everything else as `transfer` has it.
    let full = r.relay.transfer(&t.id).expect("db").expect("row");
    let light = r
        .relay
        .transfer_without_documents(&t.id)
        .expect("db")
        .expect("row");
    assert!(!full.seal.is_empty() && !full.manifest.is_empty() && !full.offer.is_empty());
    assert!(light.seal.is_empty() && light.manifest.is_empty() && light.offer.is_empty());
    assert_eq!(
        (
            light.row,
            light.transfer,
            &light.recipients,
            light.state,
            light.files
        ),
        (
            full.row,
            full.transfer,
            &full.recipients,
            full.state,
            full.files
        )
    );
    assert_eq!(
        (light.ciphertext_bytes, &light.custody_receipt),
        (full.ciphertext_bytes, &full.custody_receipt)
    );

    // 52(a): the same offer again returns the same receipt, sends nothing, logs nothing.
    let again = send(&sa, &t, None).await.expect("again");
    assert_eq!(again.receipt.text, out.receipt.text);
    assert_eq!(again.stats.bytes_sent, 0);
    assert_eq!(r.relay.log_len(), log_len);

    // 52(d): 100 concurrent status requests: byte-identical receipts, still one leaf.
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let s = sa.clone();
        tasks.push(tokio::spawn(async move {
            request(&s, Frame::StatusRequest(StatusRequest { transfer: t.id })).await
        }));
    }
    for task in tasks {
        match task.await.expect("join") {
            Frame::Status(st) => {
                assert_eq!(st.state, TransferState::Complete);
                assert_eq!(st.receipts[0].text, out.receipt.text);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(r.relay.log_len(), log_len);

    // The recipient sees it, fetches the exact ciphertext and the seal.
    let sb = connect(&w, &w.b, r.addr).await;
    match request(&sb, Frame::InboxRequest(InboxRequest { after: None })).await {
        Frame::Inbox(i) => assert_eq!(
            i.entries.iter().map(|e| e.transfer).collect::<Vec<_>>(),
            vec![t.id]
        ),
        other => panic!("unexpected {other:?}"),
    }
    for (i, ct) in t.ciphertexts.iter().enumerate() {
        assert_eq!(
            &fetch_all(&sb, t.id, Object::File(i as u32))
                .await
                .expect("file"),
            ct
        );
    }
    assert_eq!(
        fetch_all(&sb, t.id, Object::Seal).await.expect("seal"),
        t.seal.as_bytes()
    );
    assert_eq!(
        fetch_all(&sb, t.id, Object::Manifest)
            .await
            .expect("manifest"),
        t.manifest_json.as_bytes()
    );
    assert_eq!(
        r.relay.log_len(),
        log_len + 1,
        "one Fetch entry once every file was fetched"
    );

    // 15: another trusted agency sees nothing and cannot fetch; each attempt is logged.
    let sc = connect(&w, &w.c, r.addr).await;
    match request(&sc, Frame::InboxRequest(InboxRequest { after: None })).await {
        Frame::Inbox(i) => assert!(i.entries.is_empty()),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        fetch_all(&sc, t.id, Object::File(0)).await,
        Err(ErrorCode::NOT_AUTHORISED)
    );
    assert_eq!(r.relay.log_len(), log_len + 2);
    match request(&sc, Frame::StatusRequest(StatusRequest { transfer: t.id })).await {
        Frame::Error(e) => assert_eq!(e.code, ErrorCode::NOT_FOUND),
        other => panic!("unexpected {other:?}"),
    }

    // The recipient's delivery receipt is verified, logged, and visible to the sender.
    let note = delivery_note(&w, &w.b, &t, &out.receipt.text);
    match request(
        &sb,
        Frame::Deliver(Deliver {
            transfer: t.id,
            receipt: note.clone(),
        }),
    )
    .await
    {
        Frame::Receipt(rc) => {
            assert_eq!(rc.kind, ReceiptKind::Delivery);
            ReceiptBundle::parse(&rc.text)
                .expect("bundle")
                .verify(&w.b.identity.signer().verifier())
                .expect("verifies");
        }
        other => panic!("unexpected {other:?}"),
    }
    // A delivery receipt from a non-recipient is refused.
    match request(
        &sc,
        Frame::Deliver(Deliver {
            transfer: t.id,
            receipt: note,
        }),
    )
    .await
    {
        Frame::Error(e) => assert_eq!(e.code, ErrorCode::NOT_AUTHORISED),
        other => panic!("unexpected {other:?}"),
    }
    match request(&sa, Frame::StatusRequest(StatusRequest { transfer: t.id })).await {
        Frame::Status(st) => {
            assert_eq!(st.state, TransferState::Delivered);
            assert!(st.receipts.iter().any(|r| r.kind == ReceiptKind::Delivery));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_specific_logged_and_store_nothing() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let r = relay_in(&w, dir.path(), Policy::default());
    let files = vec![("x.bin", vec![1u8; 1000])];
    let mut entries = 0;
    let mut check = |e: NetError, want: ErrorCode| {
        assert_eq!(code(&e), want, "{e:?}");
        assert_eq!(
            e.class(),
            want.class(),
            "exit code follows the code (6 refused, 3 bad seal)"
        );
        entries += 1;
        assert_eq!(r.relay.log_len(), entries, "one audit entry per refusal");
    };
    // 15: agency-c replays agency-a's genuine sealed offer from its own connection.
    let genuine = transfer(&w.a, &[&w.b], &files, legal(), now());
    let sc = connect(&w, &w.c, r.addr).await;
    check(
        send(&sc, &genuine, None).await.expect_err("refused"),
        ErrorCode::NOT_AUTHORISED,
    );
    // A missing required field.
    let mut l = legal();
    l.legal_basis = None;
    let sa = connect(&w, &w.a, r.addr).await;
    check(
        send(&sa, &transfer(&w.a, &[&w.b], &files, l, now()), None)
            .await
            .expect_err("refused"),
        ErrorCode::POLICY,
    );
    // 52(b): an old manifest replayed under a new id.
    let old = rogatory_custody::Timestamp::from_unix(now().unix() - 40 * 86_400).expect("time");
    check(
        send(&sa, &transfer(&w.a, &[&w.b], &files, legal(), old), None)
            .await
            .expect_err("refused"),
        ErrorCode::POLICY,
    );
    // 48: a manifest dated two days ahead of the relay's clock (the sender's clock is wrong)
    // is refused, saying so (the boundary: `a_sender_clock_up_to_a_day_ahead_is_accepted`).
    let ahead = rogatory_custody::Timestamp::from_unix(now().unix() + 2 * 86_400).expect("time");
    let e = send(&sa, &transfer(&w.a, &[&w.b], &files, legal(), ahead), None)
        .await
        .expect_err("refused");
    assert!(format!("{e}").contains("ahead of the relay's clock"), "{e}");
    check(e, ErrorCode::POLICY);
    // 52(c): a transfer for agency-c, which this relay does not hold transfers for.
    check(
        send(&sa, &transfer(&w.a, &[&w.c], &files, legal(), now()), None)
            .await
            .expect_err("refused"),
        ErrorCode::POLICY,
    );
    // custody.md §5.4: an offer that shows a legal field the policy does not ask for (here the
    // classification) is refused: the relay learns only what its policy needs.
    let mut t = transfer(&w.a, &[&w.b], &files, legal(), now());
    t.manifest.legal.classification =
        Some(rogatory_custody::LegalText::new("RESTRICTED", false).expect("text"));
    t.manifest_json = String::from_utf8(t.manifest.to_json()).expect("utf8");
    t.seal = t.manifest.seal(w.a.identity.signer(), now()).expect("seal");
    let e = send(&sa, &t, None).await.expect_err("refused");
    assert!(format!("{e}").contains("classification"), "{e}");
    check(e, ErrorCode::POLICY);
    // Nothing was stored for a refused offer.
    assert_eq!(
        std::fs::read_dir(dir.path().join("spool"))
            .expect("spool")
            .count(),
        0
    );
    assert!(r.relay.transfers().expect("rows").is_empty());
    // A tampered seal: refused (and logged) at SEAL, after the data; never receipted.
    let mut t = transfer(&w.a, &[&w.b], &files, legal(), now());
    t.manifest_json = t.manifest_json.replace("XX-2026-0042", "XX-2026-0043");
    check(
        send(&sa, &t, None).await.expect_err("refused"),
        ErrorCode::BAD_SEAL,
    );
    let row = r.relay.transfer(&t.id).expect("db").expect("row");
    assert_eq!(row.state, TransferState::Receiving);
    assert!(row.custody_receipt.is_none() && row.manifest.is_empty());
    // Encrypted contents that are not the ones the seal names: refused at SEAL, never receipted.
    let mut t = transfer(&w.a, &[&w.b], &files, legal(), now());
    let last = t.contents.len() - 1;
    t.contents[last] ^= 1;
    check(
        send(&sa, &t, None).await.expect_err("refused"),
        ErrorCode::BAD_SEAL,
    );
    let row = r.relay.transfer(&t.id).expect("db").expect("row");
    assert!(row.custody_receipt.is_none() && row.manifest.is_empty());
    // A manifest that does not fulfil the offer (another case reference, correctly sealed).
    let mut t = transfer(&w.a, &[&w.b], &files, legal(), now());
    let mut m = t.manifest.clone();
    m.legal.case_reference =
        Some(rogatory_custody::LegalText::new("XX-2026-0099", false).expect("text"));
    let offer = t.offer();
    t.manifest_json = String::from_utf8(m.to_json()).expect("utf8");
    t.seal = m.seal(w.a.identity.signer(), now()).expect("seal");
    let mut src = Source {
        t: t.clone(),
        tamper: None,
    };
    let e = rogatory_transport::net::upload(
        &sa,
        &offer,
        t.layouts.clone(),
        Default::default(),
        &mut src,
        |_| {},
    )
    .await
    .expect_err("refused");
    check(e, ErrorCode::BAD_SEAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_is_decided_by_the_relay_and_bound_to_the_sender() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let r = relay_in(&w, dir.path(), Policy::default());
    let big: Vec<u8> = (0..20_000_000u32).map(|i| (i * 7) as u8).collect();
    let t = transfer(
        &w.a,
        &[&w.b],
        &[("big.bin", big), ("small", vec![3; 10])],
        legal(),
        now(),
    );
    let sa = connect(&w, &w.a, r.addr).await;
    upload_cut(&sa, &t, 4 << 20, 5 << 20).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let row = r.relay.transfer(&t.id).expect("db").expect("row");
    let durable = r.relay.durable(row.row).expect("durable");
    assert!(durable[0] > 0);
    // 31: another agency cannot take over the transfer id.
    let sc = connect(&w, &w.c, r.addr).await;
    let mut hijack = transfer(&w.c, &[&w.b], &[("x", vec![1; 10])], legal(), now());
    hijack.id = t.id;
    let mut m = hijack.manifest.clone();
    m.transfer_id = t.id;
    hijack.manifest_json = String::from_utf8(m.to_json()).expect("utf8");
    hijack.seal = m.seal(w.c.identity.signer(), now()).expect("seal");
    hijack.manifest = m;
    assert_eq!(
        code(&send(&sc, &hijack, None).await.expect_err("refused")),
        ErrorCode::NOT_AUTHORISED
    );
    // 26: the relay's durable prefix decides; the sender sends only the rest.
    let sa = connect(&w, &w.a, r.addr).await;
    let out = send(&sa, &t, None).await.expect("resumed");
    let skipped: u64 = durable
        .iter()
        .zip(&t.layouts)
        .map(|(&d, l)| rogatory_transport::upload::piece_offset(l, d))
        .sum();
    assert_eq!(out.stats.bytes_skipped, skipped);
    assert_eq!(out.stats.bytes_sent, t.total() - skipped);
    let row = r.relay.transfer(&t.id).expect("db").expect("row");
    let pack = std::fs::read(pack_path(dir.path(), row.row)).expect("pack");
    assert_eq!(pack, t.ciphertexts.concat());
    // `protocol.md` §6.3: read directly (where this file system allows it; else through the
    // page cache), at offsets and lengths off every alignment, across blocks, in any order and
    // past the end, the pack gives its bytes.
    let mut direct = r.relay.open_pack_direct(&row, row.ciphertext_bytes);
    let end = pack.len() as u64;
    let mib = 1u64 << 20;
    for (at, len) in [
        (0, 1000),
        (4095, mib),
        (3 * mib - 7, mib + 100),
        (mib + 1, 10),
        (end - 5000, 5000),
        (end - 10, 100),
        (end, 10),
    ] {
        // Read over what the buffer held (it is not zeroed first): exactly the pack's bytes,
        // and nothing past them touched.
        let mut buf = vec![0xeeu8; len as usize + 4];
        let n = r
            .relay
            .read_pack_into(&row, &mut direct, at, &mut buf[..len as usize])
            .expect("read");
        let want = &pack[at as usize..(at + len).min(end) as usize];
        assert_eq!(n, want.len(), "{len} bytes at {at}");
        assert_eq!(&buf[..n], want, "{len} bytes at {at}");
        assert!(buf[n..].iter().all(|&b| b == 0xee), "{len} bytes at {at}");
    }
    // At most 16 packs are open for direct reads at once (a thread and 4 MiB each); a reader
    // let go frees its place. (Where this file system has no direct I/O, there is none.)
    drop(direct);
    if let Some(first) = r.relay.open_pack_direct(&row, row.ciphertext_bytes) {
        let mut more: Vec<_> = (1..16)
            .map(|_| {
                r.relay
                    .open_pack_direct(&row, row.ciphertext_bytes)
                    .expect("below the bound")
            })
            .collect();
        assert!(
            r.relay
                .open_pack_direct(&row, row.ciphertext_bytes)
                .is_none(),
            "the 17th"
        );
        more.pop();
        assert!(
            r.relay
                .open_pack_direct(&row, row.ciphertext_bytes)
                .is_some()
        );
        drop((first, more));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_piece_is_an_integrity_error_and_never_receipted() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let r = relay_in(&w, dir.path(), Policy::default());
    let t = transfer(&w.a, &[&w.b], &exhibits(2), legal(), now());
    let sa = connect(&w, &w.a, r.addr).await;
    // Piece 12 of the big file (index 1 in manifest order: a/empty, a/small, b/big, c/exact).
    let big = t
        .inventory
        .files
        .iter()
        .position(|f| f.path.as_str() == "b/big.bin")
        .expect("big") as u32;
    // The relay holds the tampered bytes until SEAL, where their root differs from the sealed
    // one: the transfer is rejected, logged and never receipted.
    let e = send(&sa, &t, Some((big, 12))).await.expect_err("integrity");
    assert_eq!(code(&e), ErrorCode::INTEGRITY);
    assert_eq!(e.class().exit_code(), 3);
    assert_eq!(
        r.relay.log_len(),
        1,
        "an audit entry for the integrity failure"
    );
    let row = r.relay.transfer(&t.id).expect("db").expect("row");
    assert!(row.custody_receipt.is_none());
    assert_eq!(row.state, TransferState::Rejected);
    assert_eq!(
        std::fs::read_dir(dir.path().join("spool"))
            .expect("spool")
            .count(),
        0,
        "the rejected data is removed"
    );
    // The rejected transfer id stays refused; the same files as a new transfer complete.
    let e = send(&sa, &t, None)
        .await
        .expect_err("rejected stays rejected");
    assert_eq!(code(&e), ErrorCode::INTEGRITY);
    let again = transfer(&w.a, &[&w.b], &exhibits(2), legal(), now());
    let out = send(&sa, &again, None).await.expect("clean new transfer");
    assert_eq!(out.stats.bytes_sent, again.total());
    assert_eq!(r.relay.scrub().expect("scrub"), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_and_reserve_refuse_new_offers_but_not_receipts() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let files = vec![("x.bin", vec![5u8; 300_000])];
    let t1 = transfer(&w.a, &[&w.b], &files, legal(), now());
    let quota = t1.total() + t1.total() / 2;
    let policy = Policy::parse(&format!(
        "reserve_bytes = 0\n[[agency]]\nid = \"agency-a\"\nmay_send_to = [\"agency-b\"]\nquota_bytes = {quota}\n"
    ))
    .expect("policy");
    let r = relay_in(&w, dir.path(), policy);
    let sa = connect(&w, &w.a, r.addr).await;
    let first = send(&sa, &t1, None).await.expect("within quota");
    let t2 = transfer(&w.a, &[&w.b], &files, legal(), now());
    assert_eq!(
        code(&send(&sa, &t2, None).await.expect_err("over quota")),
        ErrorCode::QUOTA
    );
    // agency-c is not listed in the policy at all.
    let sc = connect(&w, &w.c, r.addr).await;
    assert_eq!(
        code(
            &send(&sc, &transfer(&w.c, &[&w.b], &files, legal(), now()), None)
                .await
                .expect_err("no rule")
        ),
        ErrorCode::POLICY
    );
    drop(r);

    // Reserve: more than the disk has. New offers are refused; the receipt of a complete
    // transfer is still served, and audit appends still work.
    let huge = Policy {
        reserve_bytes: u64::MAX / 4,
        ..Policy::default()
    };
    let r = relay_in(&w, dir.path(), huge);
    let sa = connect(&w, &w.a, r.addr).await;
    let before = r.relay.log_len();
    assert_eq!(
        code(&send(&sa, &t2, None).await.expect_err("reserve")),
        ErrorCode::INSUFFICIENT_SPACE
    );
    assert_eq!(
        r.relay.log_len(),
        before + 1,
        "the refusal was logged below the reserve"
    );
    assert_eq!(
        send(&sa, &t1, None)
            .await
            .expect("receipt again")
            .receipt
            .text,
        first.receipt.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_and_no_client_names_at_the_relay() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let r = relay_in(&w, dir.path(), Policy::default());
    let canary = *b"CANARY-7f3a9c2e-4b1d-rogatory-36";
    let sa = connect(&w, &w.a, r.addr).await;
    for i in 0..10u8 {
        let mut pt = vec![i; 100_000];
        pt[5_000..5_032].copy_from_slice(&canary);
        let name = format!("secret-name-{i}.txt");
        let files = vec![(name.as_str(), pt), ("c.bin", canary.repeat(4000))];
        let t = transfer(&w.a, &[&w.b], &files, legal(), now());
        send(&sa, &t, None).await.expect("upload");
    }
    // 36: no canary anywhere in the data directory (index, packs, log).
    let mut scanned = 0;
    let mut stack = vec![dir.path().to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir") {
            let p = e.expect("entry").path();
            // 38: every on-disk name is the relay's.
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .expect("utf8 name")
                .to_owned();
            assert!(
                !name.contains("secret") && !name.contains(".txt"),
                "client name on disk: {name}"
            );
            if p.is_dir() {
                stack.push(p);
            } else {
                let b = std::fs::read(&p).expect("read");
                assert!(
                    !b.windows(canary.len()).any(|w| w == canary),
                    "canary in {}",
                    p.display()
                );
                scanned += b.len();
            }
        }
    }
    assert!(scanned > 1_000_000);
    // 38: malformed transfer ids never parse (so never reach a path).
    for bad in [
        "../../etc/x",
        "%2e%2e/x",
        &"a".repeat(4096),
        "abc\0def",
        "0123456789abcdef0123456789ABCDEF",
    ] {
        assert!(bad.parse::<TransferId>().is_err(), "{bad:?}");
    }
    for bad in ["../x", "/etc/passwd", "a/../../x", "a\\b", "x\0y"] {
        assert!(
            bad.parse::<rogatory_custody::RelativePath>().is_err(),
            "{bad:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_finds_at_rest_corruption_exactly() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let r = relay_in(&w, dir.path(), Policy::default());
    let t = transfer(&w.a, &[&w.b], &exhibits(3), legal(), now());
    let sa = connect(&w, &w.a, r.addr).await;
    send(&sa, &t, None).await.expect("upload");
    assert!(r.relay.scrub().expect("scrub").is_empty());
    let row = r.relay.transfer(&t.id).expect("db").expect("row");
    let pack = pack_path(dir.path(), row.row);
    let mut b = std::fs::read(&pack).expect("pack");
    let big = t
        .inventory
        .files
        .iter()
        .position(|f| f.path.as_str() == "b/big.bin")
        .expect("big");
    let base: usize = t.ciphertexts[..big].iter().map(Vec::len).sum();
    b[base + 100_000] ^= 0x40;
    std::fs::write(&pack, &b).expect("write");
    let found = r.relay.scrub().expect("scrub");
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].0, found[0].1), (t.id, big as u32));
    // A stored manifest changed in the index is found too.
    let db = rusqlite_open(dir.path());
    db.execute("UPDATE documents SET manifest = CAST(REPLACE(CAST(manifest AS TEXT), 'XX-2026', 'YY-2026') AS BLOB)", []).expect("update");
    let found = r.relay.scrub().expect("scrub");
    assert!(
        found
            .iter()
            .any(|(tid, _, why)| *tid == t.id && why.contains("manifest")),
        "{found:?}"
    );
}

/// test-plan.md 120: a transfer offered as version 2 (SHA-256 piece leaves, begun before
/// BLAKE3) is received, resumed after a restart of the relay, receipted, scrubbed and repaired
/// with the leaves its offer names, as a version 3 one is with BLAKE3 (`custody.md` §5.2): the
/// relay never checks one transfer's pieces with the other's hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transfer_is_verified_with_its_own_piece_hash() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let big: Vec<u8> = (0..8_000_000u32).map(|i| (i * 13) as u8).collect();
    let files = [("big.bin", big), ("small", vec![3; 10])];
    for hash in [PieceHash::Sha256, PieceHash::Blake3] {
        let t = transfer_hashed(&w.a, &[&w.b], &files, legal(), now(), hash);
        assert_eq!(t.manifest.piece_hash(), hash);
        // Cut once part of it is durable; a new relay on the same store resumes it from the
        // frontiers it committed.
        let r = relay_in(&w, dir.path(), Policy::default());
        let sa = connect(&w, &w.a, r.addr).await;
        upload_cut(&sa, &t, 2 << 20, 2 << 20).await;
        drop(sa);
        drop(r);
        let r = relay_in(&w, dir.path(), Policy::default());
        let row = r.relay.transfer(&t.id).expect("db").expect("row");
        assert!(
            r.relay.durable(row.row).expect("durable")[0] > 0,
            "{hash:?}"
        );
        let sa = connect(&w, &w.a, r.addr).await;
        let out = send(&sa, &t, None).await.expect("resumed");
        assert!(out.stats.bytes_skipped > 0, "{hash:?}");
        ReceiptBundle::parse(&out.receipt.text)
            .expect("bundle")
            .verify(&w.b.identity.signer().verifier())
            .expect("receipt");
        let pack = pack_path(dir.path(), row.row);
        assert_eq!(std::fs::read(&pack).expect("pack"), t.ciphertexts.concat());
        let clean = r.relay.scrub().expect("scrub");
        assert!(
            clean.iter().all(|(tid, ..)| *tid != t.id),
            "{hash:?}: {clean:?}"
        );
        // A flipped byte is found, and the sender's re-send repairs it.
        let mut b = std::fs::read(&pack).expect("pack");
        b[100_000] ^= 1;
        std::fs::write(&pack, &b).expect("write");
        let found = r.relay.scrub().expect("scrub");
        assert!(
            found.iter().any(|(tid, f, _)| *tid == t.id && *f == 0),
            "{hash:?}: {found:?}"
        );
        send(&sa, &t, None).await.expect("repaired");
        assert_eq!(std::fs::read(&pack).expect("pack"), t.ciphertexts.concat());
        let clean = r.relay.scrub().expect("scrub");
        assert!(
            clean.iter().all(|(tid, ..)| *tid != t.id),
            "{hash:?}: {clean:?}"
        );
    }
}

/// Uploads `t` with `window` unacknowledged bytes at most, and closes the connection once more
/// than `after` bytes are durable: the upload fails, part of it durable at the relay.
async fn upload_cut(s: &Session, t: &Transfer, window: u64, after: u64) {
    let conn = s.conn.clone();
    let mut src = Source {
        t: t.clone(),
        tamper: None,
    };
    let res = rogatory_transport::net::upload(
        s,
        &t.offer(),
        t.layouts.clone(),
        rogatory_transport::upload::UploadConfig {
            window,
            ..Default::default()
        },
        &mut src,
        |e| {
            if let UploadEvent::Progress { durable, .. } = e
                && *durable > after
            {
                conn.close(0u32.into(), b"cut");
            }
        },
    )
    .await;
    assert!(res.is_err(), "the upload was cut");
}

fn rusqlite_open(dir: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("relay.db")).expect("db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_with_a_signed_receipt_and_gc_removes_only_stale_partials() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let (clock, clk) = clock_at(now().unix());
    let r = start(
        &w,
        open_relay(&w, dir.path(), Policy::default(), DiskStorage::new(), clk),
    );
    let sa = connect(&w, &w.a, r.addr).await;
    let mut l = legal();
    l.retain_until = Some("2027-01-31".parse().expect("date"));
    let short = transfer(&w.a, &[&w.b], &[("a", vec![1; 1000])], l, now());
    let long = transfer(&w.a, &[&w.b], &[("b", vec![2; 1000])], legal(), now());
    send(&sa, &short, None).await.expect("short");
    send(&sa, &long, None).await.expect("long");
    // A partial: offered and one table, then abandoned.
    let partial = transfer(&w.a, &[&w.b], &[("c", vec![3; 200_000])], legal(), now());
    let peer = rogatory_transport::tls::PeerIdentity {
        agency: w.a.identity.id().clone(),
        spki_sha256: w.a.tls.spki_sha256().expect("spki"),
        cert_sha256: rogatory_custody::Sha256Digest([0; 32]),
    };
    let accepted = r.relay.offer(&peer, &partial.offer()).expect("offer");
    r.relay.abandon(accepted.lease);

    assert!(r.relay.purge(true).expect("dry run").is_empty());
    // Time passes beyond 2027-01-31 (and beyond the partial TTL).
    *clock.lock().expect("clock") = rogatory_custody::Timestamp::from_unix(1_810_000_000)
        .expect("t")
        .unix();
    let due = r.relay.purge(true).expect("dry run");
    assert_eq!(
        due.iter().map(|(t, _)| t.transfer).collect::<Vec<_>>(),
        vec![short.id]
    );
    let before = r.relay.log_len();
    r.relay.purge(false).expect("purge");
    assert_eq!(r.relay.log_len(), before + 1, "one purge receipt");
    let row = r.relay.transfer(&short.id).expect("db").expect("row");
    assert_eq!(row.state, TransferState::Purged);
    let purge =
        ReceiptBundle::parse(row.purge_receipt.as_deref().expect("receipt")).expect("bundle");
    purge
        .verify(&w.b.identity.signer().verifier())
        .expect("verifies");
    assert!(
        !dir.path()
            .join("inbox")
            .join(format!("{}.pack", row.row))
            .exists()
    );
    assert!(
        r.relay.purge(true).expect("again").is_empty(),
        "purge is idempotent"
    );
    // The metadata went with the data: no manifest, contents, offer or piece table is left, only
    // what the receipts need; the custody receipt still verifies, and a re-offer is NOT_FOUND.
    assert!(row.manifest.is_empty() && row.offer.is_empty());
    assert_eq!(r.relay.contents(row.row).expect("db"), None);
    assert!(r.relay.durable(row.row).expect("db").is_empty());
    ReceiptBundle::parse(row.custody_receipt.as_deref().expect("custody"))
        .expect("bundle")
        .verify(&w.b.identity.signer().verifier())
        .expect("custody receipt still verifies");
    let sa = connect(&w, &w.a, r.addr).await;
    let e = send(&sa, &short, None).await.expect_err("purged");
    assert_eq!(code(&e), ErrorCode::NOT_FOUND, "{e}");

    // 37: only the stale partial goes; complete data stays; GC again does nothing.
    assert_eq!(r.relay.gc_partials().expect("gc"), vec![partial.id]);
    assert!(r.relay.gc_partials().expect("gc").is_empty());
    assert!(
        r.relay
            .transfer(&long.id)
            .expect("db")
            .expect("row")
            .custody_receipt
            .is_some()
    );
    assert!(r.relay.scrub().expect("scrub").is_empty());
    let _ = Ordering::SeqCst;
    let _ = LegalText::new("x", false);
}

#[test]
fn tls_refusals_are_logged_up_to_the_rate_limit() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let (_c, clock) = clock_at(now().unix());
    let relay = open_relay(&w, dir.path(), Policy::default(), DiskStorage::new(), clock);
    let limit = rogatory_relay::relay::TLS_REJECTIONS_PER_MINUTE;
    // Distinct certificates within one minute: the first `limit` are logged, the rest counted.
    for i in 0..limit + 10 {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&i.to_be_bytes());
        relay.log_tls_rejection(&rogatory_transport::Rejected {
            agency: Some(id("agency-z")),
            cert_sha256: rogatory_custody::Sha256Digest(h),
            reason: "invalid peer certificate: UnknownIssuer".into(),
        });
    }
    assert_eq!(relay.log_len(), u64::from(limit));
    let entry = rogatory_relay::logfile::read_records(&dir.path().join("audit.log"))
        .expect("log")
        .records[0]
        .entry
        .clone();
    let text = String::from_utf8(entry).expect("utf8");
    assert!(text.contains("agency-z") && text.contains("TLS"), "{text}");
}

/// `recipient`'s signed delivery receipt for `t`, whose custody receipt bundle is `custody`.
fn delivery_note(w: &World, recipient: &Agency, t: &Transfer, custody: &str) -> String {
    let bundle = ReceiptBundle::parse(custody).expect("bundle");
    rogatory_custody::Statement::DeliveryReceipt {
        head: rogatory_custody::Head {
            transfer: t.id,
            issuer: recipient.identity.id().clone(),
            time: now(),
        },
        sender: w.a.identity.id().clone(),
        manifest_sha256: t.manifest.digest(),
        seal_sha256: rogatory_relay::relay::text_digest(t.seal.as_bytes()),
        custody_receipt_sha256: rogatory_relay::relay::text_digest(
            bundle.statement_note.as_bytes(),
        ),
        files: t.ciphertexts.len() as u64,
        plaintext_bytes: t.plaintexts.iter().map(|p| p.len() as u64).sum(),
    }
    .sign(recipient.identity.signer())
    .expect("sign")
}

async fn inbox_state(s: &Session, t: TransferId) -> TransferState {
    match request(s, Frame::InboxRequest(InboxRequest { after: None })).await {
        Frame::Inbox(i) => {
            i.entries
                .iter()
                .find(|e| e.transfer == t)
                .expect("in the inbox")
                .state
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Issue 11: with two recipients the relay keeps one delivery receipt per recipient and serves
/// them all to the sender; each recipient's inbox says whether *it* has delivered; the transfer
/// is `delivered` only once both have. A repeated DELIVER returns the first receipt and logs
/// nothing. The relay's files are private to its user; a retention that has already ended is
/// refused at the offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recipient_has_its_own_delivery_receipt() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let r = relay_in(&w, dir.path(), Policy::default());
    let t = transfer(&w.a, &[&w.b, &w.c], &exhibits(3), legal(), now());
    let sa = connect(&w, &w.a, r.addr).await;
    let out = send(&sa, &t, None).await.expect("upload");
    let (sb, sc) = (
        connect(&w, &w.b, r.addr).await,
        connect(&w, &w.c, r.addr).await,
    );
    let deliver = |s: Session, note: String| async move {
        match request(
            &s,
            Frame::Deliver(Deliver {
                transfer: t.id,
                receipt: note,
            }),
        )
        .await
        {
            Frame::Receipt(rc) => rc.text,
            other => panic!("unexpected {other:?}"),
        }
    };
    let status = |s: Session| async move {
        match request(&s, Frame::StatusRequest(StatusRequest { transfer: t.id })).await {
            Frame::Status(st) => st,
            other => panic!("unexpected {other:?}"),
        }
    };
    let log_key = w.b.identity.signer().verifier();

    let from_b = deliver(sb.clone(), delivery_note(&w, &w.b, &t, &out.receipt.text)).await;
    let st = status(sa.clone()).await;
    assert_eq!(st.state, TransferState::Complete, "C has not delivered yet");
    assert_eq!(inbox_state(&sb, t.id).await, TransferState::Delivered);
    assert_eq!(inbox_state(&sc, t.id).await, TransferState::Complete);
    let len = r.relay.log_len();
    let again = deliver(sb.clone(), delivery_note(&w, &w.b, &t, &out.receipt.text)).await;
    assert_eq!(again, from_b, "the first receipt, not a second one");
    assert_eq!(r.relay.log_len(), len, "nothing logged twice");

    let from_c = deliver(sc.clone(), delivery_note(&w, &w.c, &t, &out.receipt.text)).await;
    let st = status(sa.clone()).await;
    assert_eq!(st.state, TransferState::Delivered);
    let delivered: Vec<&str> = st
        .receipts
        .iter()
        .filter(|rc| rc.kind == ReceiptKind::Delivery)
        .map(|rc| rc.text.as_str())
        .collect();
    assert_eq!(delivered, vec![from_b.as_str(), from_c.as_str()]);
    for (text, issuer) in [(&from_b, &w.b), (&from_c, &w.c)] {
        let b = ReceiptBundle::parse(text).expect("bundle");
        // The statement is the recipient's; the inclusion proof is B's log.
        b.verify_logged_by(&issuer.identity.signer().verifier(), &log_key)
            .expect("signed by its recipient, proven in B's log");
        assert!(
            b.verify(&issuer.identity.signer().verifier()).is_err()
                || issuer.identity.id() == w.b.identity.id(),
            "C's receipt is not in C's own log"
        );
    }
    assert_eq!(inbox_state(&sc, t.id).await, TransferState::Delivered);

    // Private files, whatever the umask.
    for (p, mode) in [
        (dir.path().to_owned(), 0o700),
        (dir.path().join("inbox"), 0o700),
        (dir.path().join("relay.db"), 0o600),
        (dir.path().join("audit.log"), 0o600),
    ] {
        let m = std::fs::metadata(&p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(m, mode, "{}", p.display());
    }

    // A retention that has already ended.
    let mut past = legal();
    past.retain_until = Some("2020-01-01".parse().expect("date"));
    let t2 = transfer(&w.a, &[&w.b], &exhibits(4), past, now());
    match send(&sa, &t2, None).await {
        Err(e) => assert_eq!(code(&e), ErrorCode::POLICY),
        Ok(_) => panic!("a past retain_until was accepted"),
    }
}

/// `custody.md` §8.3: after a reload with a revocation of A's signing key, a seal A signed at or
/// after the revocation is `BAD_SEAL` and never receipted; one sealed before it still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_by_a_revoked_signing_key_is_refused_from_the_revocation_on() {
    use rogatory_custody::{KeyKind, Revocation, Revocations, Timestamp, signing_key_sha256};
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let r = relay_in(&w, dir.path(), Policy::default());
    let files = vec![("x.bin", vec![1u8; 1000])];
    let cut = Timestamp::from_unix(now().unix() - 3600).expect("time");
    let rev = Revocation {
        issuer: id("agency-a"),
        time: cut,
        agency: id("agency-a"),
        kind: KeyKind::Signing,
        key_sha256: signing_key_sha256(&w.a.identity.signer().verifier()),
        reason: "signing key stolen".parse().expect("text"),
    };
    let note = rev.sign(w.a.identity.signer()).expect("sign");
    let mut revs = Revocations::new();
    revs.insert(Revocation::open(note.as_bytes(), &w.cards(), &id("agency-b")).expect("opens"));
    r.relay.reload(w.cards(), revs, Policy::default());
    let sa = connect(&w, &w.a, r.addr).await;
    let after = transfer(&w.a, &[&w.b], &files, legal(), now());
    let e = send(&sa, &after, None).await.expect_err("refused");
    assert_eq!(code(&e), ErrorCode::BAD_SEAL, "{e:?}");
    assert!(format!("{e}").contains("revoked"), "{e}");
    let row = r.relay.transfer(&after.id).expect("db").expect("row");
    assert!(row.custody_receipt.is_none());
    let before = Timestamp::from_unix(cut.unix() - 60).expect("time");
    let t = transfer(&w.a, &[&w.b], &files, legal(), before);
    send(&sa, &t, None)
        .await
        .expect("sealed before the revocation");
}

/// `protocol.md` §6.6 (test-plan.md 89): CHECKPOINT_REQUEST answers the latest signed checkpoint
/// and a consistency proof from the held size that verifies; none from 0, the same size or a
/// larger one; an empty log answers an empty checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_request_answers_the_latest_checkpoint_and_a_proof() {
    use rogatory_custody::{Checkpoint, check_consistency};
    use rogatory_transport::frame::CheckpointRequest;
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let r = relay_in(&w, dir.path(), Policy::default());
    let sa = connect(&w, &w.a, r.addr).await;
    let ask = |held: u64| {
        let sa = sa.clone();
        async move {
            match request(
                &sa,
                Frame::CheckpointRequest(CheckpointRequest { held_size: held }),
            )
            .await
            {
                Frame::Checkpoint(c) => c,
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let empty = ask(0).await;
    assert!(empty.checkpoint.is_empty() && empty.proof.is_empty());
    let key =
        w.b.identity
            .signer()
            .verifier()
            .with_name("agency-b/audit")
            .expect("log key");
    let mut held: Vec<Checkpoint> = Vec::new();
    for seed in 1..=3 {
        let t = transfer(&w.a, &[&w.b], &exhibits(seed), legal(), now());
        send(&sa, &t, None).await.expect("upload");
        let c = ask(0).await;
        assert!(c.proof.is_empty());
        let cp = Checkpoint::open(c.checkpoint.as_bytes(), &key)
            .expect("signed by the relay's log key")
            .into_inner();
        assert_eq!(cp.size, r.relay.log_len());
        held.push(cp);
    }
    let latest = held.last().expect("three").clone();
    for h in &held {
        let c = ask(h.size).await;
        check_consistency(Some(h), &latest, &c.proof).expect("consistent");
        assert_eq!(c.proof.is_empty(), h.size == latest.size);
    }
    let c = ask(latest.size + 5).await;
    assert!(c.proof.is_empty());
    let mut ahead = latest.clone();
    ahead.size += 5;
    assert!(check_consistency(Some(&ahead), &latest, &c.proof).is_err());
}

/// The operation a [`Gated`] storage holds while armed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Held {
    /// Asking the free space, which deciding an offer does.
    #[default]
    Space,
    /// An fsync of a pack: a group commit.
    Fsync,
    /// Removing a file: GC removing a partial upload's pack.
    Remove,
}

/// The real file system, except that while armed, the operation `at` names waits until the gate
/// opens, or opens it itself after 10 s (`timed_out`): an offer, a group commit or a removal
/// stalled on the disk.
#[derive(Debug, Default)]
struct Gated {
    inner: DiskStorage,
    armed: std::sync::atomic::AtomicBool,
    at: std::sync::Mutex<Held>,
    entered: std::sync::atomic::AtomicUsize,
    timed_out: std::sync::atomic::AtomicBool,
    open: (std::sync::Mutex<bool>, std::sync::Condvar),
}

impl Gated {
    /// Waits (blocking this thread, which is not the runtime's worker) until an offer is held.
    fn wait_entered(&self) {
        let t0 = std::time::Instant::now();
        while self.entered.load(Ordering::SeqCst) == 0 {
            assert!(
                t0.elapsed().as_secs() < 20,
                "the offer never reached the disk"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn release(&self) {
        *self.open.0.lock().expect("gate") = true;
        self.open.1.notify_all();
    }

    /// Waits for the gate if it is armed for this operation.
    fn hold(&self, op: Held) {
        if !self.armed.load(Ordering::SeqCst) || *self.at.lock().expect("gate") != op {
            return;
        }
        self.entered.fetch_add(1, Ordering::SeqCst);
        let t0 = std::time::Instant::now();
        let mut open = self.open.0.lock().expect("gate");
        while !*open {
            let Some(left) = std::time::Duration::from_secs(10).checked_sub(t0.elapsed()) else {
                self.timed_out.store(true, Ordering::SeqCst);
                break;
            };
            open = self.open.1.wait_timeout(open, left).expect("gate").0;
        }
    }
}

impl rogatory_relay::Storage for Gated {
    fn create_dir_all(&self, p: &std::path::Path) -> std::io::Result<()> {
        self.inner.create_dir_all(p)
    }
    fn write_at(&self, p: &std::path::Path, o: u64, d: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(p, o, d)
    }
    fn read_at(&self, p: &std::path::Path, o: u64, b: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read_at(p, o, b)
    }
    fn sync(&self, p: &std::path::Path) -> std::io::Result<()> {
        self.hold(Held::Fsync);
        self.inner.sync(p)
    }
    fn rename(&self, f: &std::path::Path, t: &std::path::Path) -> std::io::Result<()> {
        self.inner.rename(f, t)
    }
    fn sync_dir(&self, p: &std::path::Path) -> std::io::Result<()> {
        self.inner.sync_dir(p)
    }
    fn remove(&self, p: &std::path::Path) -> std::io::Result<()> {
        self.hold(Held::Remove);
        self.inner.remove(p)
    }
    fn len(&self, p: &std::path::Path) -> std::io::Result<Option<u64>> {
        self.inner.len(p)
    }
    fn available_space(&self, p: &std::path::Path) -> std::io::Result<u64> {
        self.hold(Held::Space);
        self.inner.available_space(p)
    }
}

/// A relay on [`Gated`] storage, armed: the next offer is held at the disk.
fn gated_relay(
    w: &World,
    dir: &std::path::Path,
) -> (Running<std::sync::Arc<Gated>>, std::sync::Arc<Gated>) {
    let (_c, clock) = clock_at(now().unix());
    let storage = std::sync::Arc::new(Gated::default());
    let r = start(
        w,
        open_relay(w, dir, Policy::default(), storage.clone(), clock),
    );
    storage.armed.store(true, Ordering::SeqCst);
    (r, storage)
}

/// `cli.md` "Running the relay" (test-plan.md 131): an offer being decided may wait for the
/// disk (its index commit and audit entry are fsynced); on a relay with one async worker, other
/// agencies still connect and get answers meanwhile, and the upload completes once the disk
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_offer_waiting_for_the_disk_does_not_stop_the_relays_other_requests() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let (r, storage) = gated_relay(&w, dir.path());
    let t = transfer(&w.a, &[&w.b], &exhibits(3), legal(), now());
    let sa = connect(&w, &w.a, r.addr).await;
    let tu = t.clone();
    let upload = tokio::spawn(async move { send(&sa, &tu, None).await });
    storage.wait_entered();
    // The offer is held at the disk: agency-b connects and asks for its inbox and a status.
    let sb = connect(&w, &w.b, r.addr).await;
    let inbox = request(&sb, Frame::InboxRequest(InboxRequest { after: None })).await;
    let status = request(&sb, Frame::StatusRequest(StatusRequest { transfer: t.id })).await;
    storage.release();
    assert!(
        !storage.timed_out.load(Ordering::SeqCst),
        "agency-b was answered only once the offer's disk wait ended"
    );
    match inbox {
        Frame::Inbox(i) => assert!(i.entries.is_empty(), "{i:?}"),
        other => panic!("unexpected {other:?}"),
    }
    match status {
        Frame::Error(e) => assert_eq!(e.code, ErrorCode::NOT_FOUND, "not offered yet"),
        other => panic!("unexpected {other:?}"),
    }
    let out = upload.await.expect("join").expect("upload");
    assert_eq!(out.stats.bytes_sent, t.total());
    assert_eq!(
        inbox_state(&connect(&w, &w.b, r.addr).await, t.id).await,
        TransferState::Complete
    );
}

/// `protocol.md` §6.2, `relay.md` §2: the same transfer offered twice at once on one
/// connection, the first held at the disk while it is decided: one upload goes on, the other
/// is answered CONFLICT (not an index error: offers are decided one at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_transfer_offered_twice_at_once_on_one_connection_is_one_upload() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let (r, storage) = gated_relay(&w, dir.path());
    let t = transfer(&w.a, &[&w.b], &exhibits(4), legal(), now());
    let sa = connect(&w, &w.a, r.addr).await;
    let mut streams = Vec::new();
    for _ in 0..2 {
        let (mut wr, rd) = sa.open().await.expect("open");
        wr.send(&Frame::Offer(t.offer())).await.expect("offer");
        streams.push((wr, rd));
    }
    storage.wait_entered();
    // The second offer arrives meanwhile: it waits for the first to be decided.
    std::thread::sleep(std::time::Duration::from_millis(200));
    storage.release();
    assert!(!storage.timed_out.load(Ordering::SeqCst));
    let mut answers = Vec::new();
    for (_wr, mut rd) in streams {
        let f = rd.expect().await.expect("answer");
        answers.push(rogatory_transport::net::owned(f).expect("control frame"));
    }
    let conflicts = answers
        .iter()
        .filter(|f| matches!(f, Frame::Error(e) if e.code == ErrorCode::CONFLICT))
        .count();
    let accepted = answers
        .iter()
        .filter(|f| matches!(f, Frame::Accept(_)))
        .count();
    assert_eq!((accepted, conflicts), (1, 1), "{answers:?}");
}

fn peer_a(w: &World) -> rogatory_transport::tls::PeerIdentity {
    rogatory_transport::tls::PeerIdentity {
        agency: w.a.identity.id().clone(),
        spki_sha256: w.a.tls.spki_sha256().expect("spki"),
        cert_sha256: rogatory_custody::Sha256Digest([0; 32]),
    }
}

/// Stores pieces `from..to` of file 0 of `t` under `lease`.
fn store_pieces<S: rogatory_relay::Storage>(
    relay: &rogatory_relay::relay::Relay<S>,
    lease: rogatory_transport::net::Lease,
    t: &Transfer,
    pieces: std::ops::Range<u64>,
) -> Result<(), rogatory_transport::ProtocolError> {
    for p in pieces {
        let r = t.layouts[0].range(p).expect("range");
        relay.store(
            lease,
            0,
            p,
            &t.ciphertexts[0][r.start as usize..r.end as usize],
        )?;
    }
    Ok(())
}

fn seal_of(t: &Transfer) -> rogatory_transport::frame::Seal {
    rogatory_transport::frame::Seal {
        transfer: t.id,
        seal: t.seal.clone(),
        manifest: t.manifest_json.clone(),
        contents: t.contents.clone(),
    }
}

/// A relay on disk in a new temporary directory, driven through its API (no network), with the
/// clock it reads.
fn api_relay(
    w: &World,
) -> (
    tempfile::TempDir,
    TestClock,
    rogatory_relay::relay::Relay<DiskStorage>,
) {
    let dir = tempfile::tempdir().expect("tmp");
    let (clock, clk) = clock_at(now().unix());
    let relay = open_relay(w, dir.path(), Policy::default(), DiskStorage::new(), clk);
    (dir, clock, relay)
}

/// `relay.md` §2 "One upload at a time" (test-plan.md 133): a sender killed or cut off and started
/// again offers its transfer while the relay still holds the old connection's upload, with
/// pieces stored but not yet durable. The new offer takes the upload over from the durable
/// prefixes; the old upload's writes, commits, seal and end are refused (CONFLICT) or ignored,
/// and the new one completes with its custody receipt and the stored bytes intact.
#[test]
fn a_newer_offer_of_a_transfer_takes_its_upload_over() {
    let w = World::new();
    let (_dir, _clock, relay) = api_relay(&w);
    let t = transfer(&w.a, &[&w.b], &[("big", vec![7; 600_000])], legal(), now());
    let n = t.layouts[0].count();
    assert!(n > 6, "{n} pieces");
    let peer = peer_a(&w);
    let old = relay.offer(&peer, &t.offer()).expect("first offer");
    store_pieces(&relay, old.lease, &t, 0..3).expect("store");
    assert_eq!(relay.sync(old.lease).expect("sync"), vec![3]);
    store_pieces(&relay, old.lease, &t, 3..5).expect("store, not synced");

    let new = relay.offer(&peer, &t.offer()).expect("the offer again");
    assert_ne!(new.lease, old.lease);
    assert_eq!(
        new.durable,
        vec![3],
        "from what is durable, not what was stored"
    );
    let conflict = |r: Result<(), rogatory_transport::ProtocolError>| match r {
        Err(e) => assert_eq!(e.code, ErrorCode::CONFLICT, "{e}"),
        Ok(()) => panic!("the old upload went on"),
    };
    conflict(store_pieces(&relay, old.lease, &t, 5..6));
    conflict(relay.sync(old.lease).map(drop));
    conflict(relay.complete(&peer, old.lease, &seal_of(&t)).map(drop));
    // The old connection ending does not end the new upload.
    relay.abandon(old.lease);

    store_pieces(&relay, new.lease, &t, 3..n).expect("the new upload");
    assert_eq!(relay.sync(new.lease).expect("sync"), vec![n]);
    let bundle = relay
        .complete(&peer, new.lease, &seal_of(&t))
        .expect("custody receipt");
    ReceiptBundle::parse(&bundle)
        .expect("bundle")
        .verify(&w.b.identity.signer().verifier())
        .expect("verifies");
    let row = relay.transfer(&t.id).expect("db").expect("row");
    assert_eq!(row.state, TransferState::Complete);
    let mut held = vec![0; t.ciphertexts[0].len()];
    assert_eq!(
        relay.read_pack(&row, 0, &mut held).expect("read"),
        held.len()
    );
    assert!(held == t.ciphertexts[0], "the pack holds the ciphertext");
}

/// `relay.md` §2 "One upload at a time" (test-plan.md 133): the old upload's group commit is
/// held at its fsync when the new offer takes over, or when the old connection ends (so the new
/// offer finds nothing to take over). The new offer does not wait for the disk, and the old
/// commit, once the disk answers, records nothing: the index keeps the durable prefixes the new
/// upload was given, which it then rewrites beyond.
#[test]
fn a_commit_of_an_upload_taken_over_or_ended_records_nothing() {
    for ended_first in [false, true] {
        commit_held_while_the_transfer_is_offered_again(ended_first);
    }
}

/// A relay on disk on [`Gated`] storage (not armed), driven through its API (no network): the
/// relay, its storage and the clock it reads.
type GatedApiRelay = (
    std::sync::Arc<rogatory_relay::relay::Relay<std::sync::Arc<Gated>>>,
    std::sync::Arc<Gated>,
    TestClock,
);

fn gated_api_relay(w: &World, dir: &std::path::Path) -> GatedApiRelay {
    let (clock, clk) = clock_at(now().unix());
    let storage = std::sync::Arc::new(Gated::default());
    let relay = std::sync::Arc::new(open_relay(w, dir, Policy::default(), storage.clone(), clk));
    (relay, storage, clock)
}

fn commit_held_while_the_transfer_is_offered_again(ended_first: bool) {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let (relay, storage, _clock) = gated_api_relay(&w, dir.path());
    let t = transfer(&w.a, &[&w.b], &[("big", vec![9; 600_000])], legal(), now());
    let n = t.layouts[0].count();
    let peer = peer_a(&w);
    let old = relay.offer(&peer, &t.offer()).expect("first offer");
    store_pieces(&relay, old.lease, &t, 0..2).expect("store");
    assert_eq!(relay.sync(old.lease).expect("sync"), vec![2]);
    store_pieces(&relay, old.lease, &t, 2..5).expect("store");
    *storage.at.lock().expect("gate") = Held::Fsync;
    storage.armed.store(true, Ordering::SeqCst);
    let held = {
        let relay = relay.clone();
        std::thread::spawn(move || relay.sync(old.lease))
    };
    storage.wait_entered();
    storage.armed.store(false, Ordering::SeqCst);
    if ended_first {
        relay.abandon(old.lease);
    }
    let new = relay.offer(&peer, &t.offer()).expect("the offer again");
    assert_eq!(new.durable, vec![2], "ended first: {ended_first}");
    storage.release();
    assert!(
        !storage.timed_out.load(Ordering::SeqCst),
        "the offer waited for the old fsync"
    );
    match held.join().expect("join") {
        Err(e) => assert_eq!(e.code, ErrorCode::CONFLICT, "{e}"),
        Ok(d) => panic!("the old commit was recorded (ended first: {ended_first}): {d:?}"),
    }
    let row = relay.transfer(&t.id).expect("db").expect("row");
    assert_eq!(relay.durable(row.row).expect("db"), vec![2]);
    store_pieces(&relay, new.lease, &t, 2..n).expect("the new upload");
    assert_eq!(relay.sync(new.lease).expect("sync"), vec![n]);
    relay
        .complete(&peer, new.lease, &seal_of(&t))
        .expect("custody receipt");
}

/// `relay.md` §7 (test-plan.md 137): GC decides each stale partial again with offers held off,
/// and removes it before any offer is decided. A sender resuming while GC removes its partial
/// waits, then starts the transfer afresh (nothing durable) and completes it: it is never given
/// a durable prefix whose pieces GC is deleting.
#[test]
fn a_sender_resuming_while_gc_removes_its_partial_starts_afresh() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let (relay, storage, clock) = gated_api_relay(&w, dir.path());
    let t = transfer(&w.a, &[&w.b], &[("big", vec![5; 600_000])], legal(), now());
    let n = t.layouts[0].count();
    let peer = peer_a(&w);
    let old = relay.offer(&peer, &t.offer()).expect("offer");
    store_pieces(&relay, old.lease, &t, 0..2).expect("store");
    assert_eq!(relay.sync(old.lease).expect("sync"), vec![2]);
    relay.abandon(old.lease);
    *clock.lock().expect("clock") += i64::from(Policy::default().partial_ttl_hours) * 3600 + 1;
    *storage.at.lock().expect("gate") = Held::Remove;
    storage.armed.store(true, Ordering::SeqCst);
    let gc = {
        let relay = relay.clone();
        std::thread::spawn(move || relay.gc_partials())
    };
    storage.wait_entered();
    storage.armed.store(false, Ordering::SeqCst);
    let resumed = {
        let (relay, peer, offer) = (relay.clone(), peer.clone(), t.offer());
        std::thread::spawn(move || relay.offer(&peer, &offer))
    };
    // Long enough for an offer that did not wait for GC to be decided.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let decided_during_gc = resumed.is_finished();
    storage.release();
    assert_eq!(gc.join().expect("join").expect("gc"), vec![t.id]);
    let new = resumed.join().expect("join").expect("the offer after GC");
    assert!(
        !decided_during_gc,
        "the offer was decided while GC was removing its partial"
    );
    assert!(!storage.timed_out.load(Ordering::SeqCst));
    assert_eq!(new.durable, vec![0], "the resumed sender starts afresh");
    store_pieces(&relay, new.lease, &t, 0..n).expect("the upload again");
    assert_eq!(relay.sync(new.lease).expect("sync"), vec![n]);
    relay
        .complete(&peer, new.lease, &seal_of(&t))
        .expect("custody receipt");
}

/// test-plan.md 48: clocks of agencies drift. Against a relay whose clock stands still, a
/// manifest dated exactly 24 h ahead of it is within the skew accepted (`relay.md` §4) and gets
/// its custody receipt; one second more is refused (`POLICY`), naming both times.
#[tokio::test]
async fn a_sender_clock_up_to_a_day_ahead_is_accepted() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let t0 = now().unix();
    let (_c, clock) = clock_at(t0);
    let r = start(
        &w,
        open_relay(&w, dir.path(), Policy::default(), DiskStorage::new(), clock),
    );
    let sa = connect(&w, &w.a, r.addr).await;
    let at = |s: i64| rogatory_custody::Timestamp::from_unix(t0 + s).expect("time");
    let late = transfer(&w.a, &[&w.b], &exhibits(2), legal(), at(86_401));
    let e = send(&sa, &late, None)
        .await
        .expect_err("a day and a second ahead");
    assert_eq!(code(&e), ErrorCode::POLICY, "{e}");
    let m = e.to_string();
    assert!(
        m.contains(&at(86_401).to_string()) && m.contains(&at(0).to_string()),
        "{m}"
    );
    let t = transfer(&w.a, &[&w.b], &exhibits(2), legal(), at(86_400));
    send(&sa, &t, None).await.expect("a day ahead is accepted");
}

/// `relay.md` §7, §2 "One upload at a time" (test-plan.md 136): a damaged transfer whose retention
/// ends while its sender is repairing it is purged, and the repair's next piece is refused: the
/// pack is not created anew (a copy of the ciphertext left behind after its purge receipt).
#[test]
fn a_purge_stops_a_repair_in_progress() {
    let w = World::new();
    let (dir, clock, relay) = api_relay(&w);
    let mut l = legal();
    l.retain_until = Some("2027-01-31".parse().expect("date"));
    let t = transfer(&w.a, &[&w.b], &[("big", vec![3; 600_000])], l, now());
    let n = t.layouts[0].count();
    let peer = peer_a(&w);
    let up = relay.offer(&peer, &t.offer()).expect("offer");
    store_pieces(&relay, up.lease, &t, 0..n).expect("store");
    relay.sync(up.lease).expect("sync");
    relay
        .complete(&peer, up.lease, &seal_of(&t))
        .expect("custody receipt");
    relay.abandon(up.lease);
    let _ = relay.damaged_on_read(&t.id, 0, "test: the pack lost file 0");
    let row = relay.transfer(&t.id).expect("db").expect("row");
    assert_eq!(row.state, TransferState::Damaged);
    let repair = relay.offer(&peer, &t.offer()).expect("repair offer");
    assert_eq!(repair.durable, vec![0]);
    store_pieces(&relay, repair.lease, &t, 0..2).expect("repair pieces");
    *clock.lock().expect("clock") = rogatory_custody::Timestamp::from_unix(1_810_000_000)
        .expect("t")
        .unix();
    let purged = relay.purge(false).expect("purge");
    assert_eq!(purged.len(), 1);
    let pack = pack_path(dir.path(), row.row);
    assert!(!pack.exists());
    match store_pieces(&relay, repair.lease, &t, 2..3) {
        Err(e) => assert!(
            matches!(e.code, ErrorCode::CONFLICT | ErrorCode::NOT_FOUND),
            "{e}"
        ),
        Ok(()) => panic!("the repair wrote after the purge"),
    }
    assert!(!pack.exists(), "the pack was created anew after its purge");
    match relay.offer(&peer, &t.offer()) {
        Err(e) => assert_eq!(e.code, ErrorCode::NOT_FOUND, "{e}"),
        Ok(_) => panic!("a purged transfer was offered again"),
    }
}
