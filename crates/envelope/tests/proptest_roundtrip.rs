//! Property tests for the STREAM layer (`docs/envelope.md` §6): round trips for arbitrary sizes
//! and write-step sizes, random access equal to streaming, deterministic re-encryption.

use std::io::{Read, Write};

use proptest::prelude::*;
use rogatory_envelope::{
    CHUNK_SIZE, Decryptor, ENCRYPTED_CHUNK_SIZE, Encryptor, FileKey, Identity, PayloadKey,
    PayloadNonce, StreamWriter, chunk_count, payload_len,
};

fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..300,
        (CHUNK_SIZE - 20)..(CHUNK_SIZE + 20),
        (2 * CHUNK_SIZE - 3)..(2 * CHUNK_SIZE + 3),
        0usize..(4 * CHUNK_SIZE),
    ]
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_any_size_and_write_step(n in sizes(), step in 1usize..100_000, seed: u8) {
        let id = Identity::generate();
        let plain = data(n, seed);
        let enc = Encryptor::new(&[id.to_public()]).expect("recipient");
        let header_len = enc.header().encode().len();
        let mut w = enc.wrap_output(Vec::new()).expect("header");
        for piece in plain.chunks(step) {
            w.write_all(piece).expect("write");
        }
        let file = w.finish().expect("finish");
        prop_assert_eq!(file.len() as u64, header_len as u64 + 16 + payload_len(n as u64));
        let mut out = Vec::new();
        let mut r = Decryptor::new(&file[..]).expect("header").decrypt(&[id]).expect("key");
        let mut buf = vec![0u8; step.min(70_000)];
        loop {
            let k = r.read(&mut buf).expect("read");
            if k == 0 { break; }
            out.extend_from_slice(&buf[..k]);
        }
        prop_assert_eq!(out, plain);
    }

    #[test]
    fn random_access_equals_streaming_and_reencryption_is_deterministic(
        n in sizes(), seed: u8, key: [u8; 16], nonce: [u8; 16]
    ) {
        let plain = data(n, seed);
        let fk = FileKey::from_bytes(key);
        let nonce = PayloadNonce(nonce);
        let mut w = StreamWriter::new(Vec::new(), PayloadKey::derive(&fk, &nonce));
        w.write_all(&plain).expect("write");
        let payload = w.finish().expect("finish");
        let pk = PayloadKey::derive(&fk, &nonce);
        let count = chunk_count(n as u64);
        for i in 0..count {
            let last = i + 1 == count;
            let start = i as usize * ENCRYPTED_CHUNK_SIZE;
            let end = (start + ENCRYPTED_CHUNK_SIZE).min(payload.len());
            let mut chunk = payload[start..end].to_vec();
            let m = pk.open_chunk(i, last, &mut chunk).expect("chunk opens");
            let p0 = i as usize * CHUNK_SIZE;
            prop_assert_eq!(&chunk[..m], &plain[p0..p0 + m]);
            // Re-encrypting chunk i with the same file key reproduces the same bytes.
            pk.seal_chunk(i, last, &mut chunk).expect("chunk seals");
            prop_assert_eq!(&chunk[..], &payload[start..end]);
        }
    }
}

/// test-plan.md case 10 (scaled down here to 1 000; the property is pairwise distinctness):
/// fresh file keys, payload nonces and ephemeral shares for every encryption.
#[test]
fn keys_nonces_and_shares_are_fresh() {
    let id = Identity::generate();
    let mut keys = std::collections::HashSet::new();
    let mut nonces = std::collections::HashSet::new();
    let mut shares = std::collections::HashSet::new();
    for _ in 0..1000 {
        let enc = Encryptor::new(&[id.to_public()]).expect("recipient");
        let header_len = enc.header().encode().len();
        shares.insert(enc.header().stanzas()[0].args[0].clone());
        let mut w = enc.wrap_output(Vec::new()).expect("header");
        w.write_all(&[0u8; 1024]).expect("write");
        let file = w.finish().expect("finish");
        let d = Decryptor::new(&file[..]).expect("header");
        keys.insert(
            *d.unwrap_file_key(std::slice::from_ref(&id))
                .expect("key")
                .expose_secret(),
        );
        nonces.insert(file[header_len..header_len + 16].to_vec());
    }
    assert_eq!((keys.len(), nonces.len(), shares.len()), (1000, 1000, 1000));
}
