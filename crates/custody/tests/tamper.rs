//! Tampering (test-plan.md cases 41, 42, 43, 44, 52): changed fields, unknown or wrong keys, extra
//! signatures, signature floods, tampered logs, rollback and fork detection.

mod fixture;

use rogatory_custody::{
    AuditLog, Checkpoint, LogError, MemoryLogStore, NoteError, NoteSigner, ParseError,
    ReceiptBundle, Record, Statement, check_not_rolled_back, decode_records, verify_records,
};

fn statements(w: &fixture::World) -> Vec<(Statement, NoteSigner)> {
    vec![
        (w.custody_receipt(), w.relay.signer().clone()),
        (w.delivery_receipt(), w.recipient.signer().clone()),
        (w.purge_receipt(), w.relay.signer().clone()),
        (w.rejection(), w.relay.signer().clone()),
        (w.fetch(), w.relay.signer().clone()),
        (
            w.manifest
                .seal_statement(fixture::t("2026-11-22T05:10:01Z")),
            w.sender.signer().clone(),
        ),
    ]
}

/// (a) Changing any byte of any field of any statement is rejected: the signature no longer
/// verifies, or the text no longer parses.
#[test]
fn every_changed_byte_of_every_statement_is_rejected() {
    let w = fixture::world();
    for (st, signer) in statements(&w) {
        let note = st.sign(&signer).expect("sign");
        let text_len = note.find("\n\n").expect("split") + 1;
        let v = signer.verifier();
        for i in 0..text_len {
            let mut b = note.clone().into_bytes();
            if b[i] == b'\n' {
                continue; // removing a line break is covered by the parser tests
            }
            b[i] = if b[i].is_ascii_digit() {
                b'0' + (b[i] - b'0' + 1) % 10
            } else if b[i] == b'x' {
                b'y'
            } else {
                b'x'
            };
            assert!(
                Statement::open(&b, &v).is_err(),
                "{}: byte {i} changed but accepted",
                st.kind()
            );
        }
    }
}

#[test]
fn unknown_key_wrong_key_id_extra_signatures_and_floods() {
    let w = fixture::world();
    let st = w.custody_receipt();
    let relay = w.relay.signer();
    // (b) Re-signed with an unknown key under the same name.
    let impostor = NoteSigner::from_seed("zz-relay", &[0xee; 32]).expect("name");
    let forged = st.sign(&impostor).expect("sign");
    assert_eq!(
        Statement::open(forged.as_bytes(), &relay.verifier()),
        Err(ParseError::Note(NoteError::NoTrustedSignature))
    );
    // (c) A known key name with the wrong key id: ignored, so no trusted signature.
    let good = st.sign(relay).expect("sign");
    let sig_b64 = good.rsplit(' ').next().expect("sig").trim_end();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut raw = b64.decode(sig_b64).expect("b64");
    raw[0] ^= 0xff;
    let wrong_id = good.replace(sig_b64, &b64.encode(&raw));
    assert_eq!(
        Statement::open(wrong_id.as_bytes(), &relay.verifier()),
        Err(ParseError::Note(NoteError::NoTrustedSignature))
    );
    // (d) A known key plus an extra unknown signature: accepted.
    let extra = impostor.cosign(&good).expect("cosign");
    assert_eq!(
        *Statement::open(extra.as_bytes(), &relay.verifier()).expect("ok"),
        st
    );
    // (e) A known key with a bad signature: the whole note is rejected.
    let mut raw = b64.decode(sig_b64).expect("b64");
    raw[10] ^= 1;
    let bad = good.replace(sig_b64, &b64.encode(&raw));
    assert!(matches!(
        Statement::open(bad.as_bytes(), &relay.verifier()),
        Err(ParseError::Note(NoteError::BadSignature(_)))
    ));
    // (f) 17 signatures: accepted.
    let mut many = good.clone();
    for i in 0..16u8 {
        many = NoteSigner::from_seed(&format!("w{i}"), &[i; 32])
            .expect("n")
            .cosign(&many)
            .expect("cosign");
    }
    assert!(Statement::open(many.as_bytes(), &relay.verifier()).is_ok());
    // (g) 10 000 signatures: refused by the size limit.
    let line = many.lines().last().expect("line").to_owned() + "\n";
    let flood = good.clone() + &line.repeat(10_000);
    assert_eq!(
        Statement::open(flood.as_bytes(), &relay.verifier()),
        Err(ParseError::Note(NoteError::TooLarge))
    );
    // A statement signed by one agency but naming another as issuer.
    let other = w.recipient.signer();
    assert!(st.sign(other).is_err());
}

#[test]
fn receipt_bundle_tampering() {
    let w = fixture::world();
    let (_, bundle) = w.relay_log();
    let relay = w.relay.signer().verifier();
    let good = ReceiptBundle::parse(&bundle).expect("parses");
    assert!(good.verify(&relay).is_ok());
    let mut b = good.clone();
    b.index = 0;
    assert!(b.verify(&relay).is_err(), "modified index");
    let mut b = good.clone();
    b.proof[0][3] ^= 1;
    assert!(b.verify(&relay).is_err(), "modified path element");
    let mut b = good.clone();
    b.proof.push([0; 32]);
    assert!(b.verify(&relay).is_err(), "extra path element");
    let mut b = good.clone();
    b.checkpoint_note = b.checkpoint_note.replacen("\n2\n", "\n3\n", 1);
    assert!(b.verify(&relay).is_err(), "modified size");
    // A bundle for another agency's log key.
    assert!(good.verify(&w.sender.signer().verifier()).is_err());
    // Round trip of the text form.
    assert_eq!(good.encode(), bundle);
}

fn big_log(n: usize) -> (Vec<Record>, NoteSigner) {
    let w = fixture::world();
    let signer = w.relay.log_signer();
    let mut log = AuditLog::open(MemoryLogStore::default(), signer.clone()).expect("open");
    for i in 0..n {
        log.append(format!("rogatory/v1 test-entry\nn {i}\n").as_bytes())
            .expect("append");
    }
    let records = decode_records(&log.store().bytes).expect("decode").records;
    (records, signer)
}

/// test-plan.md case 42: modify, delete, insert or reorder entry 5 000 of 10 000: verification
/// fails and names index 5 000.
#[test]
fn tampered_log_names_the_first_bad_index() {
    let (records, signer) = big_log(10_000);
    let key = signer.verifier();
    let (tree, last) = verify_records(&records, &key).expect("intact log verifies");
    assert_eq!(tree.len(), 10_000);
    assert_eq!(last.expect("checkpoint").size, 10_000);

    let want = Err(LogError::Tampered {
        first_bad_index: 5000,
    });
    let mut modified = records.clone();
    modified[5000].entry[5] ^= 1;
    assert_eq!(verify_records(&modified, &key).map(|_| ()), want);
    let mut deleted = records.clone();
    deleted.remove(5000);
    assert_eq!(verify_records(&deleted, &key).map(|_| ()), want);
    let mut inserted = records.clone();
    inserted.insert(
        5000,
        Record {
            entry: b"forged\n".to_vec(),
            checkpoint: None,
        },
    );
    assert_eq!(verify_records(&inserted, &key).map(|_| ()), want);
    let mut reordered = records.clone();
    reordered.swap(5000, 5001);
    assert_eq!(verify_records(&reordered, &key).map(|_| ()), want);

    // At the byte level: a flipped byte inside record 5 000 is corruption, not a torn tail.
    let mut bytes: Vec<u8> = records.iter().flat_map(Record::encode).collect();
    let offset: usize = records[..5000].iter().map(|r| r.encode().len()).sum();
    bytes[offset + 10] ^= 1;
    assert_eq!(
        decode_records(&bytes).map(|_| ()),
        Err(LogError::Corrupt { index: 5000 })
    );
}

/// test-plan.md case 43: a log restored from a shorter backup, or forked, is detected against a
/// checkpoint a client holds; a torn tail is cut off on open.
#[test]
fn rollback_fork_and_torn_tail() {
    let w = fixture::world();
    let signer = w.relay.log_signer();
    let mut log = AuditLog::open(MemoryLogStore::default(), signer.clone()).expect("open");
    let mut backup = None;
    for i in 0..300 {
        if i == 200 {
            backup = Some(log.store().clone());
        }
        log.append(format!("entry {i}\n").as_bytes())
            .expect("append");
    }
    let held = Checkpoint::open(
        log.checkpoint_note().expect("cp").as_bytes(),
        &signer.verifier(),
    )
    .expect("verifies");
    // (a) Restored backup, 100 entries shorter: opens (a valid prefix) but is detected.
    let restored = AuditLog::open(backup.expect("backup"), signer.clone()).expect("opens");
    assert!(matches!(
        check_not_rolled_back(restored.tree(), &held),
        Err(LogError::RolledBack(_))
    ));
    assert!(check_not_rolled_back(log.tree(), &held).is_ok());
    // (b) A checkpoint with the same size and another root (a fork): detected by its holder.
    let forked = Checkpoint {
        root: [7; 32],
        ..(*held).clone()
    };
    assert!(matches!(
        check_not_rolled_back(log.tree(), &forked),
        Err(LogError::RolledBack(_))
    ));
    // Torn tail: the half-written last append is cut off and the log reopens at 300.
    let mut store = log.store().clone();
    store.tear_append = Some(300); // the 301st append call
    let mut torn = AuditLog::open(store, signer.clone()).expect("open");
    assert!(torn.append(b"lost\n").is_err());
    assert_eq!(torn.len(), 300);
    let reopened = AuditLog::open(torn.store().clone(), signer.clone()).expect("reopen");
    assert_eq!(reopened.len(), 300);
    assert_eq!(reopened.store().bytes.len(), log.store().bytes.len());
    // A failed append changes nothing.
    let mut store = log.store().clone();
    store.fail_append = Some(300);
    let mut failing = AuditLog::open(store, signer).expect("open");
    assert!(failing.append(b"x\n").is_err());
    assert_eq!(failing.len(), 300);
}
