//! Fault injection on the storage trait (`relay.md` §3; test-plan.md 25, 30, 34): fail the Nth
//! operation of a whole transfer (transient and persistent, ENOSPC and EIO), and crash at the
//! Nth sync with unsynced writes dropped or garbled. Every run ends in a clean error or a
//! receipt; a consistency check (scrub) passes; the transfer then resumes and completes with
//! exactly one custody receipt.

mod support;

use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;

use rogatory_custody::Sha256Digest;
use rogatory_relay::logfile::read_records;
use rogatory_relay::{DiskStorage, Faulty, Policy, Relay, SimStorage, Storage, Unsynced};
use rogatory_transport::ProtocolError;
use rogatory_transport::frame::Seal;
use rogatory_transport::net::Accepted;
use rogatory_transport::tls::PeerIdentity;
use support::*;

fn peer(w: &World) -> PeerIdentity {
    PeerIdentity {
        agency: w.a.identity.id().clone(),
        spki_sha256: w.a.tls.spki_sha256().expect("spki"),
        cert_sha256: Sha256Digest([1; 32]),
    }
}

/// A sender without the network: offer, pieces from the durable prefix, a sync every
/// `sync_every` pieces, then the seal and the receipt.
fn drive<S: Storage>(
    relay: &Relay<S>,
    peer: &PeerIdentity,
    t: &Transfer,
    sync_every: usize,
) -> Result<String, ProtocolError> {
    let Accepted {
        layouts,
        durable,
        lease,
    } = relay.offer(peer, &t.offer())?;
    let mut n = 0;
    for (f, l) in layouts.iter().enumerate() {
        if durable[f] == l.count() {
            // Complete: a network sender would not even open a stream for it.
            continue;
        }
        for p in durable[f]..l.count() {
            let r = l.range(p).expect("range");
            relay.store(
                lease,
                f as u32,
                p,
                &t.ciphertexts[f][r.start as usize..r.end as usize],
            )?;
            n += 1;
            if n % sync_every == 0 {
                relay.sync(lease)?;
            }
        }
    }
    if durable.iter().zip(&layouts).any(|(&d, l)| d < l.count()) {
        let d = relay.sync(lease)?;
        assert!(d.iter().zip(&layouts).all(|(&d, l)| d == l.count()));
    }
    let r = relay.complete(
        peer,
        lease,
        &Seal {
            transfer: t.id,
            seal: t.seal.clone(),
            manifest: t.manifest_json.clone(),
            contents: t.contents.clone(),
        },
    );
    if r.is_err() {
        relay.abandon(lease);
    }
    r
}

fn custody_receipts(dir: &Path) -> usize {
    read_records(&dir.join("audit.log"))
        .expect("log")
        .records
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.entry).contains("custody-receipt"))
        .count()
}

/// After a failure: the store is consistent, and a healthy relay on the same directory
/// completes the transfer with one receipt and the right bytes.
fn recover_and_finish<S: Storage + 'static>(w: &World, dir: &Path, storage: S, t: &Transfer) {
    let (_c, clock) = clock_at(now().unix());
    let relay = open_relay(w, dir, Policy::default(), storage, clock);
    assert_eq!(
        relay.scrub().expect("scrub"),
        vec![],
        "every durable piece verifies"
    );
    let bundle = drive(&relay, &peer(w), t, 5).expect("resume completes");
    assert!(bundle.contains("custody-receipt"));
    assert_eq!(custody_receipts(dir), 1, "exactly one custody receipt");
    let row = relay.transfer(&t.id).expect("db").expect("row");
    let mut got = vec![0u8; t.total() as usize];
    let n = relay.read_pack(&row, 0, &mut got).expect("read");
    assert_eq!(n, got.len());
    assert_eq!(got, t.ciphertexts.concat(), "the right digests");
}

fn small_transfer(w: &World) -> Transfer {
    transfer(
        &w.a,
        &[&w.b],
        &[
            ("a", vec![1; 300_000]),
            ("b", vec![]),
            ("c", vec![2; 70_000]),
        ],
        legal(),
        now(),
    )
}

#[test]
fn failing_any_single_operation_is_clean_and_recoverable() {
    let w = World::new();
    let t = small_transfer(&w);
    // Count the operations of one clean transfer.
    let total = {
        let dir = tempfile::tempdir().expect("tmp");
        let (_c, clock) = clock_at(now().unix());
        let relay = open_relay(
            &w,
            dir.path(),
            Policy::default(),
            Faulty::new(DiskStorage::new(), u64::MAX, false, ErrorKind::Other),
            clock,
        );
        drive(&relay, &peer(&w), &t, 3).expect("clean run");
        relay.storage().ops()
    };
    assert!(total > 10);
    let mut failures = 0;
    for n in 0..total {
        for (persistent, kind) in [(false, ErrorKind::StorageFull), (true, ErrorKind::Other)] {
            let dir = tempfile::tempdir().expect("tmp");
            let (_c, clock) = clock_at(now().unix());
            let cfg_storage = Faulty::new(DiskStorage::new(), n, persistent, kind);
            let opened = Relay::open(
                rogatory_relay::RelayConfig {
                    data_dir: dir.path().to_owned(),
                    identity: w.b.identity.relay_only(),
                    trust: w.cards(),
                    policy: Policy::default(),
                    clock,
                },
                cfg_storage,
            );
            match opened {
                Err(_) => failures += 1,
                Ok(relay) => match drive(&relay, &peer(&w), &t, 3) {
                    Ok(_) => assert!(
                        !persistent || n >= total,
                        "op {n}: a persistent fault cannot complete"
                    ),
                    Err(e) => {
                        failures += 1;
                        let want = if kind == ErrorKind::StorageFull {
                            "INSUFFICIENT_SPACE"
                        } else {
                            "STORAGE_UNAVAILABLE"
                        };
                        assert_eq!(e.code.name(), Some(want), "op {n}: {e}");
                        let row = relay.transfer(&t.id).expect("db");
                        assert!(
                            row.is_none_or(|r| r.custody_receipt.is_none()),
                            "no receipt for incomplete data"
                        );
                        assert_eq!(custody_receipts(dir.path()), 0);
                    }
                },
            }
            recover_and_finish(&w, dir.path(), DiskStorage::new(), &t);
        }
    }
    assert!(
        failures as u64 >= total,
        "every operation was failed at least once"
    );
}

#[test]
fn crash_at_every_sync_with_unsynced_writes_dropped_or_garbled() {
    let w = World::new();
    let t = small_transfer(&w);
    let syncs = {
        let dir = tempfile::tempdir().expect("tmp");
        let (_c, clock) = clock_at(now().unix());
        let sim = Arc::new(SimStorage::new(None));
        let relay = open_relay(&w, dir.path(), Policy::default(), sim.clone(), clock);
        drive(&relay, &peer(&w), &t, 2).expect("clean run");
        sim.syncs()
    };
    assert!(syncs > 5);
    for k in 0..syncs {
        for mode in [
            Unsynced::Dropped,
            Unsynced::Mixed(k),
            Unsynced::Mixed(1000 + k),
        ] {
            let dir = tempfile::tempdir().expect("tmp");
            let (_c, clock) = clock_at(now().unix());
            let sim = Arc::new(SimStorage::new(Some(k)));
            let relay = open_relay(&w, dir.path(), Policy::default(), sim.clone(), clock);
            assert!(
                drive(&relay, &peer(&w), &t, 2).is_err(),
                "sync {k}: the crash stops the run"
            );
            assert!(sim.crashed());
            assert_eq!(
                custody_receipts(dir.path()),
                0,
                "sync {k}: no receipt before everything is durable"
            );
            drop(relay);
            // Reboot: only synced data and names survive; unsynced writes are lost or garbled.
            recover_and_finish(&w, dir.path(), Arc::new(sim.recover(mode)), &t);
        }
    }
}

#[test]
fn a_torn_audit_log_tail_is_quarantined_and_the_relay_opens() {
    let w = World::new();
    let t = small_transfer(&w);
    let dir = tempfile::tempdir().expect("tmp");
    {
        let (_c, clock) = clock_at(now().unix());
        let relay = open_relay(&w, dir.path(), Policy::default(), DiskStorage::new(), clock);
        drive(&relay, &peer(&w), &t, 4).expect("run");
    }
    // A crash mid-append leaves half a record.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("audit.log"))
        .expect("log");
    f.write_all(&[0, 0, 1, 0, 42, 42, 42]).expect("tear");
    drop(f);
    let (_c, clock) = clock_at(now().unix());
    let relay = open_relay(&w, dir.path(), Policy::default(), DiskStorage::new(), clock);
    assert_eq!(relay.log_len(), 1);
    assert!(dir.path().join("audit.quarantine").exists());
    // The receipt is served again without a new entry.
    drive(&relay, &peer(&w), &t, 4).expect("again");
    assert_eq!(custody_receipts(dir.path()), 1);
}
