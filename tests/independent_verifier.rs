//! test-plan.md 40: every receipt verifies independently. This file re-implements the check of
//! `docs/custody.md` §9 from the specification alone, without any of our crates: C2SP signed
//! notes and verifier keys, the tlog-proof bundle, RFC 9162 inclusion proofs, with Ed25519 and
//! SHA-256 from aws-lc (our crates use ed25519-dalek and sha2). It checks what the real binary
//! produced in a transfer from A to B and C through B's relay: the custody receipt (signed by
//! the relay's agency) and both delivery receipts (each signed by its recipient), all proven
//! in the relay's log, against the manifest the recipients hold; and that a receipt changed in
//! one byte no longer verifies.

mod common;

use std::path::Path;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(p);
    }
    digest(&SHA256, &all).as_ref().try_into().expect("32 bytes")
}

/// An Ed25519 verifier key: a name and a public key, with its C2SP key id.
#[derive(Clone)]
struct Key {
    name: String,
    public: [u8; 32],
}

impl Key {
    /// `<name>+<hex8 key id>+<b64(0x01 || public key)>`, its key id checked.
    fn parse(vkey: &str) -> Result<Key, String> {
        let mut it = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(b)) = (it.next(), it.next(), it.next()) else {
            return Err(format!("not a verifier key: {vkey}"));
        };
        let raw = B64.decode(b).map_err(|e| e.to_string())?;
        if raw.len() != 33 || raw[0] != 0x01 {
            return Err("not an Ed25519 verifier key".into());
        }
        let key = Key {
            name: name.to_owned(),
            public: raw[1..].try_into().expect("32 bytes"),
        };
        if format!("{:08x}", u32::from_be_bytes(key.id())) != id {
            return Err("key id does not match the key".into());
        }
        Ok(key)
    }

    /// The same public key under another name (the relay's log key, `R/audit`).
    fn renamed(&self, name: &str) -> Key {
        Key {
            name: name.to_owned(),
            public: self.public,
        }
    }

    /// `SHA-256(name || 0x0A || 0x01 || public key)[:4]`.
    fn id(&self) -> [u8; 4] {
        sha256(&[self.name.as_bytes(), b"\n\x01", &self.public])[..4]
            .try_into()
            .expect("4 bytes")
    }
}

/// A signed note verified with `key`: its text. A signature by `key` that does not verify
/// rejects the note; none by `key` rejects it too.
fn open_note<'a>(note: &'a str, key: &Key) -> Result<&'a str, String> {
    let split = note
        .rfind("\n\n")
        .ok_or("no blank line before the signatures")?;
    let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
    let mut verified = false;
    for line in sigs.lines() {
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or_else(|| format!("not a signature line: {line}"))?;
        let (name, b) = rest.split_once(' ').ok_or("signature line without a key")?;
        let raw = B64.decode(b).map_err(|e| e.to_string())?;
        if raw.len() != 68 || name != key.name || raw[..4] != key.id() {
            continue;
        }
        UnparsedPublicKey::new(&ED25519, key.public)
            .verify(text.as_bytes(), &raw[4..])
            .map_err(|_| format!("a signature by {name} does not verify"))?;
        verified = true;
    }
    if verified {
        Ok(text)
    } else {
        Err(format!("not signed by {}", key.name))
    }
}

/// RFC 9162 §2.1.3.2: whether `proof` proves `leaf` is entry `index` of the tree of `size`
/// entries with `root`.
fn inclusion_ok(index: u64, size: u64, leaf: [u8; 32], proof: &[[u8; 32]], root: [u8; 32]) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = sha256(&[b"\x01", p, &r]);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = sha256(&[b"\x01", &r, p]);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == root
}

/// The statement of a receipt bundle (`docs/custody.md` §7, §9) from `relay`'s log, signed by
/// `signer`, as `key value` lines.
fn verify_bundle(bundle: &str, signer: &Key, relay: &Key) -> Result<Vec<(String, String)>, String> {
    const PROOF: &str = "\nc2sp.org/tlog-proof@v1\n";
    let at = bundle.find(PROOF).ok_or("no tlog-proof")?;
    let statement = open_note(&bundle[..at], signer)?;
    let mut proof = bundle[at + PROOF.len()..].splitn(2, "\n\n");
    let (head, checkpoint) = (
        proof.next().unwrap_or_default(),
        proof.next().unwrap_or_default(),
    );
    let mut head = head.lines();
    let index: u64 = head
        .next()
        .and_then(|l| l.strip_prefix("index "))
        .and_then(|n| n.parse().ok())
        .ok_or("no index")?;
    let hashes = head
        .map(|l| {
            B64.decode(l)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(|| format!("not a hash: {l}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let log_key = relay.renamed(&format!("{}/audit", relay.name));
    let cp = open_note(checkpoint, &log_key)?;
    let mut cp = cp.lines();
    if cp.next() != Some(log_key.name.as_str()) {
        return Err("the checkpoint is not the relay's log".into());
    }
    let size: u64 = cp.next().and_then(|n| n.parse().ok()).ok_or("no size")?;
    let root: [u8; 32] = cp
        .next()
        .and_then(|r| B64.decode(r).ok())
        .and_then(|r| r.try_into().ok())
        .ok_or("no root")?;
    let leaf = sha256(&[b"\x00", statement.as_bytes()]);
    if !inclusion_ok(index, size, leaf, &hashes, root) {
        return Err(format!("entry {index} is not in the checkpoint of {size}"));
    }
    Ok(statement
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `verifier_key` of a card (`card.note`), taken as obtained out of band.
fn card_key(d: &Path, home: &str) -> Key {
    let note = std::fs::read_to_string(d.join(home).join("card.note")).expect("card");
    let json = note.lines().next().expect("card text");
    let card: serde_json::Value = serde_json::from_str(json).expect("card JSON");
    Key::parse(card["verifier_key"].as_str().expect("verifier_key")).expect("verifier key")
}

#[test]
fn receipts_verify_with_an_independent_implementation() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    for (home, id) in [("A", "agency-a"), ("B", "agency-b"), ("C", "agency-c")] {
        agency(d, home, id, false);
    }
    for a in ["A", "B", "C"] {
        for b in ["A", "B", "C"] {
            if a != b {
                trust(d, a, b);
            }
        }
    }
    ok(run(
        d,
        &["--home", "B", "agency", "export-relay", "B-relay"],
    ));
    let relay = start_relay(d, "B-relay");
    std::fs::create_dir(d.join("case")).expect("mkdir");
    std::fs::write(d.join("case/one.txt"), b"exhibit one\n").expect("write");
    std::fs::write(d.join("case/two.bin"), vec![7u8; 200_000]).expect("write");
    let mut args = vec!["--home", "A", "--json", "send", "--relay", &relay.1];
    args.extend(["--to", "agency-b", "--to", "agency-c"]);
    args.extend(LEGAL);
    args.push("case");
    let o = run(d, &args);
    assert_eq!(code(&o), 0, "send: {}", stderr(&o));
    let t = transfer_id(&o);
    for home in ["B", "C"] {
        let out = format!("out{home}");
        ok(run(
            d,
            &[
                "--home", home, "fetch", "--relay", &relay.1, "--all", "-o", &out,
            ],
        ));
    }
    ok(run(d, &["--home", "A", "status", "--relay", &relay.1, &t]));

    let (b, c) = (card_key(d, "B"), card_key(d, "C"));
    let manifest = std::fs::read(transfer_dir(&d.join("outB")).join(".rogatory/manifest.json"))
        .expect("manifest");
    let m: serde_json::Value = serde_json::from_slice(&manifest).expect("manifest JSON");
    let files = m["files"].as_array().expect("files");
    let ciphertext: u64 = files
        .iter()
        .map(|f| f["ciphertext_size"].as_u64().expect("size"))
        .sum();

    // The custody receipt: signed by the relay's agency, in its log, about this manifest.
    let receipts = d.join("A/receipts");
    let custody = std::fs::read_to_string(receipts.join(format!("{t}.custody-receipt")))
        .expect("custody receipt");
    let f = verify_bundle(&custody, &b, &b).expect("custody receipt");
    assert_eq!(field(&f, "transfer"), [t.as_str()]);
    assert_eq!(field(&f, "issuer"), ["agency-b"]);
    assert_eq!(field(&f, "sender"), ["agency-a"]);
    assert_eq!(field(&f, "recipient"), ["agency-b", "agency-c"]);
    let digest_hex: String = sha256(&[&manifest])
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    assert_eq!(field(&f, "manifest-sha256"), [digest_hex.as_str()]);
    assert_eq!(field(&f, "files"), [files.len().to_string().as_str()]);
    assert_eq!(
        field(&f, "ciphertext-bytes"),
        [ciphertext.to_string().as_str()]
    );

    // Each delivery receipt: signed by its recipient, proven in the relay's log.
    for (who, key) in [("agency-b", &b), ("agency-c", &c)] {
        let r = std::fs::read_to_string(receipts.join(format!("{t}.delivery-{who}.receipt")))
            .expect("delivery receipt");
        let f = verify_bundle(&r, key, &b).unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(field(&f, "transfer"), [t.as_str()], "{who}");
        assert_eq!(field(&f, "issuer"), [who], "{who}");
        // Signed by the other recipient's key it is not.
        let other = if who == "agency-b" { &c } else { &b };
        assert!(verify_bundle(&r, other, &b).is_err(), "{who}");
    }

    // A byte added to the statement, or one changed in the checkpoint, and it does not verify.
    let tampered = custody.replacen("files ", "files 1", 1);
    assert!(verify_bundle(&tampered, &b, &b).is_err());
    let at = custody.find("agency-b/audit\n").expect("checkpoint");
    let mut bytes = custody.clone().into_bytes();
    bytes[at + "agency-b/audit\n".len()] ^= 0x01;
    let tampered = String::from_utf8(bytes).expect("utf-8");
    assert!(verify_bundle(&tampered, &b, &b).is_err());
}
