//! Property tests: manifest and statement encode/parse round trips, and canonical parsing
//! (anything that parses re-encodes byte for byte).

mod fixture;

use proptest::prelude::*;
use rogatory_custody::{
    Contents, FileEntry, Head, Inventory, LEGAL_FIELDS, Legal, LegalText, Manifest, OnwardTransfer,
    Sha256Digest, Statement, Timestamp, TransferId,
};

fn agency() -> impl Strategy<Value = rogatory_custody::AgencyId> {
    "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?".prop_map(|s| s.parse().expect("valid id"))
}

fn text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9é][A-Za-z0-9 ,.()éü§\u{4e2d}-]{0,30}[A-Za-z0-9]"
}

fn legal() -> impl Strategy<Value = Legal> {
    (
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        any::<bool>(),
        proptest::option::of(0i32..3000),
    )
        .prop_map(|(a, b, notes, onward, days)| Legal {
            case_reference: a.map(|s| LegalText::new(&s, false).expect("text")),
            legal_basis: b.map(|s| LegalText::new(&s, false).expect("text")),
            requesting_authority: None,
            executing_authority: None,
            purpose: Some(
                LegalText::new("investigation \"quoted\" \\ backslash", false).expect("t"),
            ),
            classification: None,
            retain_until: days.map(|d| {
                rogatory_custody::CalendarDate(
                    time::Date::from_calendar_date(2027, time::Month::January, 1).expect("date")
                        + time::Duration::days(i64::from(d)),
                )
            }),
            onward_transfer: Some(if onward {
                OnwardTransfer::WithConsent
            } else {
                OnwardTransfer::Forbidden
            }),
            notes: notes.map(|s| LegalText::new(&format!("{s}\nline 2"), true).expect("text")),
        })
}

fn files() -> impl Strategy<Value = Vec<FileEntry>> {
    proptest::collection::btree_map(
        "[a-z]{1,8}(/[a-z é]{0,6}[a-z]){0,3}",
        (0u64..1 << 40, any::<[u8; 32]>()),
        0..8,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(path, (size, d))| FileEntry {
                path: path.parse().expect("path"),
                size,
                sha256: Sha256Digest(d),
                ciphertext_size: rogatory_envelope::payload_len(size) + 16 + 180,
                piece_root: Sha256Digest(d),
            })
            .collect()
    })
}

/// An inventory split into its manifest (with a random part of the legal fields public) and
/// contents.
fn split() -> impl Strategy<Value = (Inventory, Manifest, Contents)> {
    (
        any::<[u8; 16]>(),
        agency(),
        proptest::collection::btree_set(agency(), 1..4),
        0i64..4_000_000_000,
        legal(),
        files(),
        proptest::collection::vec(any::<bool>(), LEGAL_FIELDS.len()),
        any::<[u8; 32]>(),
        proptest::collection::vec(any::<u8>(), 40..200),
    )
        .prop_map(|(t, s, r, time, legal, files, public, salt, ct)| {
            let inventory = Inventory::new(
                TransferId::from_bytes(t),
                s,
                r.into_iter().collect(),
                Timestamp::from_unix(time).expect("time"),
                legal,
                files,
            )
            .expect("valid inventory");
            let required: Vec<String> = LEGAL_FIELDS
                .iter()
                .zip(public)
                .filter(|(_, p)| *p)
                .map(|(f, _)| (*f).to_owned())
                .collect();
            let contents = inventory.contents_with_salt(Sha256Digest(salt));
            let manifest = inventory
                .manifest(inventory.legal.public(&required), &contents, &ct)
                .expect("valid manifest");
            (inventory, manifest, contents)
        })
}

fn manifest() -> impl Strategy<Value = Manifest> {
    split().prop_map(|(_, m, _)| m)
}

fn statement() -> impl Strategy<Value = Statement> {
    (
        any::<[u8; 16]>(),
        agency(),
        agency(),
        0i64..4_000_000_000,
        any::<[u8; 32]>(),
        any::<u64>(),
        text(),
        0usize..7,
    )
        .prop_map(|(t, issuer, other, time, d, n, txt, kind)| {
            let head = Head {
                transfer: TransferId::from_bytes(t),
                issuer,
                time: Timestamp::from_unix(time).expect("time"),
            };
            let d = Sha256Digest(d);
            let txt = txt.parse().expect("text");
            match kind {
                0 => Statement::ManifestSeal {
                    head,
                    manifest_sha256: d,
                    manifest_size: n,
                    recipients: vec![other],
                    files: n / 3,
                    ciphertext_bytes: n,
                },
                1 => Statement::CustodyReceipt {
                    head,
                    sender: other.clone(),
                    recipients: vec![other],
                    manifest_sha256: d,
                    seal_sha256: d,
                    files: n,
                    ciphertext_bytes: n,
                },
                2 => Statement::DeliveryReceipt {
                    head,
                    sender: other,
                    manifest_sha256: d,
                    seal_sha256: d,
                    custody_receipt_sha256: d,
                    files: 1,
                    plaintext_bytes: n,
                },
                3 => Statement::PurgeReceipt {
                    head,
                    sender: other,
                    manifest_sha256: d,
                    files: 0,
                    ciphertext_bytes: n,
                    reason: txt,
                },
                4 => Statement::Rejection {
                    head,
                    peer: rogatory_custody::Peer::Agency(other),
                    peer_cert_sha256: d,
                    code: "quota".parse().expect("t"),
                    reason: txt,
                },
                5 => Statement::DamageReport {
                    head,
                    sender: other,
                    manifest_sha256: d,
                    files: n,
                    reason: txt,
                },
                _ => Statement::Fetch {
                    head,
                    peer: other,
                    files: n,
                    ciphertext_bytes: n,
                },
            }
        })
}

/// Byte-level mutations of a valid encoding.
fn mutate(mut b: Vec<u8>, ops: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(pos, op, byte) in ops {
        let i = if b.is_empty() { 0 } else { pos % b.len() };
        match op % 3 {
            0 if !b.is_empty() => b[i] = byte,
            1 => b.insert(i, byte),
            _ if !b.is_empty() => {
                b.remove(i);
            }
            _ => {}
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn manifest_round_trip(m in manifest()) {
        let json = m.to_json();
        let back = Manifest::parse(&json).expect("parses");
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.to_json(), json);
    }

    /// §5.4: the contents round-trip, and joining them with the manifest gives back the
    /// inventory they were split from; the manifest never carries notes or names.
    #[test]
    fn contents_join_back((inventory, m, c) in split()) {
        let json = c.to_json();
        prop_assert_eq!(&Contents::parse(&json).expect("parses"), &c);
        prop_assert_eq!(&m.open_contents(&json).expect("joins"), &inventory);
        prop_assert!(m.legal.notes.is_none());
        let public = String::from_utf8(m.to_json()).expect("utf-8");
        prop_assert!(!public.contains("\"path\""), "the manifest names no file");
        // Contents that are not the sealed ones never join.
        let mut other = c.clone();
        other.salt = Sha256Digest([0xee; 32]);
        prop_assert!(m.open_contents(&other.to_json()).is_err());
    }

    #[test]
    fn statement_round_trip(s in statement()) {
        let text = s.encode();
        let back = Statement::parse(&text).expect("parses");
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(back.encode(), text);
    }

    #[test]
    fn whatever_parses_is_canonical(
        m in manifest(), s in statement(),
        ops in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4),
    ) {
        let json = mutate(m.to_json(), &ops);
        if let Ok(parsed) = Manifest::parse(&json) {
            prop_assert_eq!(parsed.to_json(), json);
        }
        let text = mutate(s.encode().into_bytes(), &ops);
        if let Ok(t) = std::str::from_utf8(&text)
            && let Ok(parsed) = Statement::parse(t) {
                prop_assert_eq!(parsed.encode().into_bytes(), text);
            }
    }
}
