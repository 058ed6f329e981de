//! Golden vectors of our own formats (`docs/custody.md` §11): regenerated from fixed keys and
//! compared byte for byte, then parsed and verified. `ROGATORY_UPDATE_GOLDEN=1 cargo test -p
//! rogatory-custody --test golden` rewrites them after a deliberate format change.

mod fixture;

use std::path::PathBuf;

use rogatory_custody::{
    AgencyCard, AgencyIdentity, Checkpoint, Manifest, PieceHash, ReceiptBundle, Statement,
    TransferOffer, open_sealed_manifest,
};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn check(name: &str, generated: &[u8]) {
    let p = path(name);
    if std::env::var_os("ROGATORY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&p, generated).expect("write golden");
    }
    let stored = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(stored == generated, "{name} differs from its golden file");
}

#[test]
fn golden_vectors() {
    let w = fixture::world();

    let id_text = w.sender.to_secret_text("2026-11-22T05:00:00Z");
    check("identity.txt", id_text.as_bytes());
    let back = AgencyIdentity::parse(&id_text).expect("identity parses");
    assert_eq!(back.signer().verifier(), w.sender.signer().verifier());
    let relay_only = w.sender.relay_only().to_secret_text("2026-11-22T05:00:00Z");
    check("identity-relay-only.txt", relay_only.as_bytes());
    let ro = AgencyIdentity::parse(&relay_only).expect("relay-only parses");
    assert!(ro.age_identity().is_none());
    assert_eq!(ro.age_recipient(), w.sender.age_recipient());
    assert!(ro.age_identity_pq().is_none());
    assert_eq!(ro.age_recipient_pq(), w.sender.age_recipient_pq());
    assert_eq!(back.age_recipient_pq(), w.sender.age_recipient_pq());
    assert_eq!(back.age_identities().len(), 2);

    let (card, card_note) = w
        .sender
        .card(
            "Xx Federal Police, Cybercrime Unit",
            "XX",
            vec!["9f".repeat(32).parse().expect("pin")],
        )
        .expect("card");
    check("card.note", card_note.as_bytes());
    let opened = AgencyCard::open(card_note.as_bytes()).expect("card verifies");
    assert_eq!(*opened, card);
    assert_eq!(
        opened.age_recipient_pq.as_ref(),
        w.sender.age_recipient_pq(),
        "the card carries the hybrid post-quantum recipient"
    );
    check(
        "fingerprint.txt",
        format!("{}\n", card.fingerprint()).as_bytes(),
    );

    // A card chain (`custody.md` §8.5, §11.10): the relay's card as issued before key rotation
    // (no `valid_from`), then its successor under a new key (seed 0x09, X25519 age secret
    // 0x0a), valid from 2026-12-01T00:00:00Z, signed by the new key and the previous one.
    let (_, relay_card) = w
        .relay
        .card(
            "Zz Relay",
            "ZZ",
            vec!["9e".repeat(32).parse().expect("pin")],
        )
        .expect("card");
    let rotated = AgencyIdentity::from_seeds(w.relay.id().clone(), &[0x09; 32], [0x0a; 32]);
    let (_, successor) = rotated
        .issue_card(
            "Zz Relay",
            "ZZ",
            vec!["9d".repeat(32).parse().expect("pin")],
            Some("2026-12-01T00:00:00Z".parse().expect("time")),
            Some(w.relay.signer()),
        )
        .expect("successor");
    let chain_file = format!("{relay_card}{successor}");
    check("card-chain.note", chain_file.as_bytes());
    let chain = rogatory_custody::CardChain::parse(chain_file.as_bytes()).expect("chain verifies");
    assert_eq!(chain.len(), 2);
    assert_eq!(
        chain.newest().previous_key.as_ref(),
        Some(&w.relay.signer().verifier())
    );

    let json = w.manifest.to_json();
    check("manifest.json", &json);
    assert_eq!(Manifest::parse(&json).expect("parses"), w.manifest);
    check("seal.note", w.seal.as_bytes());
    let sealed = open_sealed_manifest(&json, w.seal.as_bytes(), &w.sender.signer().verifier())
        .expect("seal verifies");
    assert_eq!(sealed.manifest, w.manifest);
    assert_eq!(w.manifest.piece_hash(), PieceHash::Blake3);
    assert_eq!(w.manifest.offer().piece_hash(), PieceHash::Blake3);

    // A manifest of version 2, sealed before BLAKE3 piece digests (`custody.md` §5.2): it still
    // parses, re-encodes byte for byte, verifies, and names SHA-256 piece leaves, for itself and
    // for its offer, so a transfer begun then resumes and is verified as it began.
    let v2 = std::fs::read(path("manifest-v2.json")).expect("v2 manifest");
    let v2_seal = std::fs::read(path("seal-v2.note")).expect("v2 seal");
    let old = open_sealed_manifest(&v2, &v2_seal, &w.sender.signer().verifier())
        .expect("a v2 seal verifies");
    assert_eq!(old.manifest.to_json(), v2);
    assert_eq!(old.manifest.piece_hash(), PieceHash::Sha256);
    let old_offer = old.manifest.offer();
    assert_eq!(old_offer.piece_hash(), PieceHash::Sha256);
    assert_eq!(
        TransferOffer::parse(&old_offer.to_json()).expect("a v2 offer parses"),
        old_offer
    );
    assert!(
        old_offer
            .to_json()
            .starts_with(br#"{"format":"rogatory-offer/v2","#)
    );
    // The same inventory as version 2: a v2 manifest and offer, which a v3 offer does not
    // equal, and whose contents join back to the v2 inventory (a sender resuming a v2 state).
    let mut inv2 = w.inventory.clone();
    inv2.piece_hash = PieceHash::Sha256;
    let m2 = inv2
        .manifest(
            w.manifest.legal.clone(),
            &w.contents,
            &w.contents_ciphertext,
        )
        .expect("v2 manifest");
    assert_eq!(m2.piece_hash(), PieceHash::Sha256);
    assert_ne!(
        m2.offer(),
        w.manifest.offer(),
        "the version is part of the offer"
    );
    assert_eq!(Manifest::parse(&m2.to_json()).expect("parses"), m2);
    assert_eq!(
        m2.open_contents(&w.contents.to_json()).expect("joins"),
        inv2
    );
    let v4 = String::from_utf8(v2).expect("utf8").replacen(
        "rogatory-manifest/v2",
        "rogatory-manifest/v4",
        1,
    );
    assert!(
        Manifest::parse(v4.as_bytes()).is_err(),
        "an unknown format is refused"
    );

    let contents = w.contents.to_json();
    check("contents.json", &contents);
    assert_eq!(
        w.manifest.open_contents(&contents).expect("joins"),
        w.inventory
    );
    assert!(w.manifest.holds_contents_ciphertext(&w.contents_ciphertext));

    for (name, st, signer) in [
        (
            "delivery-receipt.note",
            w.delivery_receipt(),
            w.recipient.signer(),
        ),
        ("purge-receipt.note", w.purge_receipt(), w.relay.signer()),
        ("rejection.note", w.rejection(), w.relay.signer()),
        ("fetch.note", w.fetch(), w.relay.signer()),
        ("damage-report.note", w.damage_report(), w.relay.signer()),
        ("key-revocation.note", w.key_revocation(), w.sender.signer()),
    ] {
        let note = st.sign(signer).expect("sign");
        check(name, note.as_bytes());
        let opened = Statement::open(note.as_bytes(), &signer.verifier()).expect("verifies");
        assert_eq!(*opened, st);
        assert_eq!(Statement::parse(&st.encode()).expect("parses"), st);
    }

    let (log, bundle) = w.relay_log();
    check("custody-receipt.bundle", bundle.as_bytes());
    let proven = ReceiptBundle::parse(&bundle)
        .expect("bundle parses")
        .verify(&w.relay.signer().verifier())
        .expect("bundle verifies");
    assert_eq!(proven.statement, w.custody_receipt());
    assert_eq!(proven.index, 1);
    let cp = log.checkpoint_note().expect("checkpoint");
    check("checkpoint.note", cp.as_bytes());
    // `custody.md` §7.3, §11.11: that checkpoint cosigned by the sender's agency as a witness.
    let witness = rogatory_custody::Cosigner::new(&w.sender);
    let cosigned = rogatory_custody::add_cosignatures(
        cp,
        [witness
            .cosign(
                &Checkpoint::parse(
                    cp.split("\n\n")
                        .next()
                        .map(|t| format!("{t}\n"))
                        .as_deref()
                        .unwrap_or(""),
                )
                .expect("checkpoint"),
                1_800_000_000,
            )
            .as_str()],
    );
    check("cosigned-checkpoint.note", cosigned.as_bytes());
    let found = rogatory_custody::verify_cosignatures(&cosigned, &[witness.key()])
        .expect("cosignature verifies");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].time, 1_800_000_000);
    let cp =
        Checkpoint::open(cosigned.as_bytes(), &w.relay.log_signer().verifier()).expect("verifies");
    assert_eq!(cp.size, 3);
    check("audit.log", &log.store().bytes);
}
