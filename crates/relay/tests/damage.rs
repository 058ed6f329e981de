//! Damage is visible and repairable (`relay.md` §10, test-plan.md 39a): ciphertext lost at rest
//! (a deleted or cut pack, flipped bytes) or an edited piece table is found by scrub — against
//! the sealed piece roots, never the stored table — or by a read while serving FETCH; the
//! transfer becomes `damaged` (status, inbox, one `damage-report` in the audit log), FETCH gets
//! the non-retryable DAMAGED, and the sender's next upload re-sends exactly the damaged files
//! and makes it complete again under its original custody receipt, byte for byte.

mod support;

use rogatory_custody::TransferId;
use rogatory_relay::{DiskStorage, Policy};
use rogatory_transport::ErrorCode;
use rogatory_transport::frame::{Fetch, Frame, InboxRequest, Object, StatusRequest, TransferState};
use rogatory_transport::net::Session;
use support::*;

fn relay_in(w: &World, dir: &std::path::Path) -> Running<DiskStorage> {
    let (_c, clock) = clock_at(now().unix());
    start(
        w,
        open_relay(w, dir, Policy::default(), DiskStorage::new(), clock),
    )
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
    match rd.expect().await.expect("head") {
        Frame::FetchHead(_) => {}
        Frame::Error(e) => return Err(e.code),
        other => panic!("unexpected {other:?}"),
    }
    let mut out = Vec::new();
    while let Some(f) = rd.next().await.expect("range") {
        match f {
            Frame::Range(r) => out.extend_from_slice(r.bytes),
            Frame::Error(e) => return Err(e.code),
            other => panic!("unexpected {other:?}"),
        }
    }
    Ok(out)
}

async fn status(s: &Session, t: TransferId) -> (TransferState, Vec<u64>) {
    match request(s, Frame::StatusRequest(StatusRequest { transfer: t })).await {
        Frame::Status(st) => (st.state, st.durable),
        other => panic!("unexpected {other:?}"),
    }
}

async fn inbox_state(s: &Session, t: TransferId) -> TransferState {
    match request(s, Frame::InboxRequest(InboxRequest { after: None })).await {
        Frame::Inbox(i) => {
            i.entries
                .iter()
                .find(|e| e.transfer == t)
                .expect("listed")
                .state
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn damage_reports(dir: &std::path::Path) -> usize {
    rogatory_relay::logfile::read_records(&dir.join("audit.log"))
        .expect("log")
        .records
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.entry).contains("damage-report"))
        .count()
}

fn db(dir: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("relay.db")).expect("db")
}

fn big_index(t: &Transfer) -> usize {
    t.inventory
        .files
        .iter()
        .position(|f| f.path.as_str() == "b/big.bin")
        .expect("big")
}

/// Damage found by `damage` (which returns the files it expects damaged): shown, refused,
/// logged once, then repaired by the sender's next upload, which re-sends only those files.
async fn damaged_then_repaired(damage: impl FnOnce(&std::path::Path, &Transfer, i64) -> Vec<u32>) {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let r = relay_in(&w, dir.path());
    let t = transfer(&w.a, &[&w.b], &exhibits(5), legal(), now());
    let sa = connect(&w, &w.a, r.addr).await;
    let sb = connect(&w, &w.b, r.addr).await;
    let first = send(&sa, &t, None).await.expect("upload");
    assert!(r.relay.scrub().expect("scrub").is_empty());
    let row = r.relay.transfer(&t.id).expect("db").expect("row");
    let bad = damage(dir.path(), &t, row.row);

    // Found by scrub: exactly the damaged files, marked, one damage-report.
    let log_before = r.relay.log_len();
    let found = r.relay.scrub().expect("scrub");
    let mut files: Vec<u32> = found.iter().map(|f| f.1).collect();
    files.dedup();
    assert_eq!(files, bad, "{found:?}");
    assert!(found.iter().all(|f| f.0 == t.id));
    assert_eq!(r.relay.log_len(), log_before + 1);
    assert_eq!(damage_reports(dir.path()), 1);
    // Shown by status and inbox; the damaged files' durable prefixes are back to nothing.
    let (state, durable) = status(&sa, t.id).await;
    assert_eq!(state, TransferState::Damaged);
    for (i, d) in durable.iter().enumerate() {
        let want = if bad.contains(&(i as u32)) {
            0
        } else {
            t.layouts[i].count()
        };
        assert_eq!(*d, want, "file {i}");
    }
    assert_eq!(inbox_state(&sb, t.id).await, TransferState::Damaged);
    // FETCH of the ciphertext: DAMAGED, integrity class (exit 3), never retryable.
    let e = fetch_all(&sb, t.id, Object::File(bad[0]))
        .await
        .expect_err("damaged");
    assert_eq!(e, ErrorCode::DAMAGED);
    assert_eq!(e.class().exit_code(), 3);
    // Scrub again: still reported, nothing new logged.
    let again = r.relay.scrub().expect("scrub");
    assert!(!again.is_empty());
    assert_eq!(r.relay.log_len(), log_before + 1);

    // The sender's next upload re-sends exactly the damaged files; same receipt, nothing new
    // signed.
    let resent: u64 = bad
        .iter()
        .map(|&i| t.ciphertexts[i as usize].len() as u64)
        .sum();
    let repair = send(&sa, &t, None).await.expect("repair");
    assert_eq!(repair.stats.bytes_sent, resent);
    assert_eq!(repair.receipt.text, first.receipt.text);
    assert_eq!(r.relay.log_len(), log_before + 1);
    assert_eq!(status(&sa, t.id).await.0, TransferState::Complete);
    assert!(r.relay.scrub().expect("scrub").is_empty());
    for (i, ct) in t.ciphertexts.iter().enumerate() {
        let got = fetch_all(&sb, t.id, Object::File(i as u32))
            .await
            .expect("fetch");
        assert!(got == *ct, "file {i} byte-exact after repair");
    }
    // An intact transfer offered again: nothing sent, same receipt.
    let idle = send(&sa, &t, None).await.expect("again");
    assert_eq!(idle.stats.bytes_sent, 0);
    assert_eq!(idle.receipt.text, first.receipt.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pack_is_found_shown_and_repaired() {
    damaged_then_repaired(|dir, t, row| {
        std::fs::remove_file(pack_path(dir, row)).expect("rm");
        (0..t.ciphertexts.len() as u32).collect()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_durable_count_is_found_shown_and_repaired() {
    damaged_then_repaired(|dir, t, row| {
        let big = big_index(t);
        db(dir)
            .execute(
                "UPDATE files SET durable = durable - 3 WHERE row = ?1 AND idx = ?2",
                rusqlite::params![row, big as i64],
            )
            .expect("edit");
        vec![big as u32]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_hidden_by_an_edited_frontier_are_found_and_repaired() {
    damaged_then_repaired(|dir, t, row| {
        // Flip a byte of the big file, and make the table "agree": the frontier of the damaged
        // pieces replaces the committed one. Only the sealed root can tell.
        let big = big_index(t);
        let pack = pack_path(dir, row);
        let mut b = std::fs::read(&pack).expect("pack");
        let base: usize = t.ciphertexts[..big].iter().map(Vec::len).sum();
        b[base + 200_000] ^= 0x01;
        std::fs::write(&pack, &b).expect("write");
        let ct = &b[base..base + t.ciphertexts[big].len()];
        let mut f = rogatory_custody::merkle::Frontier::new();
        let table = rogatory_custody::PieceTable::of_ciphertext(
            &t.layouts[big],
            t.manifest.piece_hash(),
            ct,
        )
        .expect("table");
        for &l in table.leaves() {
            f.push(l);
        }
        db(dir)
            .execute(
                "UPDATE files SET frontier = ?1 WHERE row = ?2 AND idx = ?3",
                rusqlite::params![f.to_bytes(), row, big as i64],
            )
            .expect("edit");
        vec![big as u32]
    })
    .await;
}

/// A pack cut short is noticed by the FETCH that reads past its end: the transfer is marked
/// damaged there and then (one damage-report), and the sender's next upload repairs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_read_while_serving_marks_the_transfer_damaged() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let r = relay_in(&w, dir.path());
    let t = transfer(&w.a, &[&w.b], &exhibits(9), legal(), now());
    let sa = connect(&w, &w.a, r.addr).await;
    let sb = connect(&w, &w.b, r.addr).await;
    let first = send(&sa, &t, None).await.expect("upload");
    let row = r.relay.transfer(&t.id).expect("db").expect("row");
    let pack = pack_path(dir.path(), row.row);
    let last = t.ciphertexts.len() - 1;
    let len = std::fs::metadata(&pack).expect("pack").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .and_then(|f| f.set_len(len - 10))
        .expect("truncate");
    let e = fetch_all(&sb, t.id, Object::File(last as u32))
        .await
        .expect_err("cut short");
    assert_eq!(e, ErrorCode::DAMAGED);
    assert_eq!(status(&sb, t.id).await.0, TransferState::Damaged);
    assert_eq!(damage_reports(dir.path()), 1);
    // Another FETCH: refused, not logged again.
    let e = fetch_all(&sb, t.id, Object::File(0))
        .await
        .expect_err("damaged");
    assert_eq!(e, ErrorCode::DAMAGED);
    assert_eq!(damage_reports(dir.path()), 1);
    let repair = send(&sa, &t, None).await.expect("repair");
    assert_eq!(repair.stats.bytes_sent, t.ciphertexts[last].len() as u64);
    assert_eq!(repair.receipt.text, first.receipt.text);
    let got = fetch_all(&sb, t.id, Object::File(last as u32))
        .await
        .expect("fetch");
    assert!(got == t.ciphertexts[last]);
    assert!(r.relay.scrub().expect("scrub").is_empty());
}

/// The same for a file served from the pack directly (`protocol.md` §6.3: 4 MiB or more): a
/// pack cut short, or removed, while a large file is served is damage, not a transient error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_read_directly_from_a_cut_or_missing_pack_is_damage() {
    let w = World::new();
    let dir = tempfile::tempdir().expect("tmp");
    let r = relay_in(&w, dir.path());
    let sa = connect(&w, &w.a, r.addr).await;
    let sb = connect(&w, &w.b, r.addr).await;
    let large: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
    for cut in [true, false] {
        let t = transfer(
            &w.a,
            &[&w.b],
            &[("large.bin", large.clone())],
            legal(),
            now(),
        );
        send(&sa, &t, None).await.expect("upload");
        let row = r.relay.transfer(&t.id).expect("db").expect("row");
        let pack = pack_path(dir.path(), row.row);
        if cut {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&pack)
                .and_then(|f| f.set_len(3_000_000))
                .expect("truncate");
        } else {
            std::fs::remove_file(&pack).expect("remove");
        }
        let e = fetch_all(&sb, t.id, Object::File(0))
            .await
            .expect_err("damaged");
        assert_eq!(e, ErrorCode::DAMAGED, "cut: {cut}");
        assert_eq!(status(&sb, t.id).await.0, TransferState::Damaged);
    }
    assert_eq!(damage_reports(dir.path()), 2);
}
