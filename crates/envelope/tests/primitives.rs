//! Wycheproof primitive vectors (test-plan.md cases 47 and 8), read from `tests/wycheproof/`.
//! They guard against a miswired crate or a dependency swap, and check that every
//! `ZeroSharedSecret` X25519 input aborts age decryption with a header failure.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rogatory_envelope::{DecryptError, Decryptor, HeaderError, Identity};
use serde_json::Value;
use sha2::Sha256;

fn load(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/wycheproof/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("vector file");
    let v: Value = serde_json::from_str(&text).expect("json");
    let tests: Vec<Value> = v["testGroups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["tests"].as_array().expect("tests").clone())
        .collect();
    assert_eq!(
        tests.len() as u64,
        v["numberOfTests"].as_u64().expect("count")
    );
    tests
}

fn hx(t: &Value, k: &str) -> Vec<u8> {
    hex::decode(t[k].as_str().expect("hex field")).expect("hex")
}

fn result(t: &Value) -> &str {
    t["result"].as_str().expect("result")
}

#[test]
fn chacha20_poly1305() {
    let tests = load("chacha20_poly1305_test.json");
    let (mut valid, mut invalid) = (0, 0);
    for t in &tests {
        let (key, iv, aad, msg, ct, tag) = (
            hx(t, "key"),
            hx(t, "iv"),
            hx(t, "aad"),
            hx(t, "msg"),
            hx(t, "ct"),
            hx(t, "tag"),
        );
        let id = &t["tcId"];
        // Only 96-bit nonces exist for this AEAD: other sizes cannot even be expressed.
        let usable = key.len() == 32 && iv.len() == 12 && tag.len() == 16;
        let opened = usable && {
            let aead = ChaCha20Poly1305::new(Key::from_slice(&key));
            let mut buf = ct.clone();
            aead.decrypt_in_place_detached(
                Nonce::from_slice(&iv),
                &aad,
                &mut buf,
                Tag::from_slice(&tag),
            )
            .is_ok()
                && buf == msg
        };
        match result(t) {
            "valid" => {
                valid += 1;
                assert!(opened, "tc {id} must decrypt");
                let aead = ChaCha20Poly1305::new(Key::from_slice(&key));
                let mut buf = msg.clone();
                let got = aead
                    .encrypt_in_place_detached(Nonce::from_slice(&iv), &aad, &mut buf)
                    .expect("encrypt");
                assert_eq!((buf, got.to_vec()), (ct, tag), "tc {id}");
            }
            _ => {
                invalid += 1;
                assert!(!opened, "tc {id} must be rejected");
            }
        }
    }
    println!("chacha20-poly1305: {valid} valid, {invalid} invalid");
    assert_eq!(tests.len(), 325);
}

#[test]
fn hkdf_sha256() {
    let tests = load("hkdf_sha256_test.json");
    for t in &tests {
        let size = t["size"].as_u64().expect("size") as usize;
        let mut okm = vec![0u8; size];
        let ok = Hkdf::<Sha256>::new(Some(&hx(t, "salt")), &hx(t, "ikm"))
            .expand(&hx(t, "info"), &mut okm)
            .is_ok();
        match result(t) {
            "valid" => assert!(ok && okm == hx(t, "okm"), "tc {}", t["tcId"]),
            _ => assert!(!ok, "tc {} must fail (e.g. SizeTooLarge)", t["tcId"]),
        }
    }
    assert_eq!(tests.len(), 86);
}

#[test]
fn hmac_sha256() {
    let tests = load("hmac_sha256_test.json");
    for t in &tests {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&hx(t, "key")).expect("any key length");
        mac.update(&hx(t, "msg"));
        let tag = hx(t, "tag");
        // Truncated tags are compared on their prefix, in constant time.
        let ok = !tag.is_empty() && mac.verify_truncated_left(&tag).is_ok();
        match result(t) {
            "valid" => assert!(ok, "tc {}", t["tcId"]),
            _ => assert!(!ok, "tc {} must fail", t["tcId"]),
        }
    }
    assert_eq!(tests.len(), 174);
}

/// A header with one X25519 stanza whose share is `public`.
fn header_with_share(public: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    format!(
        "age-encryption.org/v1\n-> X25519 {}\n{}\n--- {}\n",
        b64.encode(public),
        b64.encode([0x42u8; 32]),
        b64.encode([0u8; 32])
    )
    .into_bytes()
}

#[test]
fn x25519_and_zero_shared_secrets_abort_decryption() {
    let tests = load("x25519_test.json");
    let mut zero = 0;
    for t in &tests {
        let private: [u8; 32] = hx(t, "private").try_into().expect("32 bytes");
        let public: [u8; 32] = hx(t, "public").try_into().expect("32 bytes");
        let shared = x25519_dalek::StaticSecret::from(private)
            .diffie_hellman(&x25519_dalek::PublicKey::from(public));
        if matches!(result(t), "valid" | "acceptable") {
            assert_eq!(
                shared.as_bytes().to_vec(),
                hx(t, "shared"),
                "tc {}",
                t["tcId"]
            );
        }
        let flags: Vec<&str> = t["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if flags.contains(&"ZeroSharedSecret") {
            zero += 1;
            let id = Identity::from_secret_bytes(private);
            let header = header_with_share(&public);
            let d = Decryptor::new(&header[..]).expect("header parses");
            let err = d.unwrap_file_key(&[id]).expect_err("must abort");
            assert!(
                matches!(err, DecryptError::Header(HeaderError::LowOrderShare)),
                "tc {}: {err}",
                t["tcId"]
            );
        }
    }
    assert_eq!(zero, 31, "all 31 ZeroSharedSecret cases checked");
    assert_eq!(tests.len(), 518);
}
