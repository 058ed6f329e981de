//! Envelope throughput: ours, the `age` crate, and the raw ChaCha20-Poly1305 AEAD, side by side
//! on 64 MiB, encrypt and decrypt. After criterion's report it measures the three again in one
//! run (best of several passes) and prints MB/s and the ratios:
//!
//! - ours / age crate (target ≥ 1.0×),
//! - ours / raw AEAD (target ≥ 0.8×).
//!
//! "Raw AEAD" is the limit for any STREAM implementation on the AEAD our payload uses (aws-lc's
//! ChaCha20-Poly1305, `docs/envelope.md` §6.1): encrypt = `seal_in_place_separate_tag` over the
//! 64 KiB chunks of the buffer, no copy at all; decrypt = `open_separate_gather` of each 64 KiB
//! chunk into a scratch buffer (a streaming reader cannot decrypt in the caller's input). The
//! `age` crate uses RustCrypto's AEAD. Run: `cargo bench --bench envelope`.

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use criterion::{Criterion, Throughput};
use rand::RngCore;
use rogatory_envelope::{CHUNK_SIZE, Decryptor, ENCRYPTED_CHUNK_SIZE, Encryptor, Identity};

const SIZE: usize = 64 * 1024 * 1024;

struct Fixture {
    plain: Vec<u8>,
    ours_id: Identity,
    age_id: age::x25519::Identity,
    ours_ct: Vec<u8>,
    age_ct: Vec<u8>,
    raw_ct: Vec<u8>,
    aead: LessSafeKey,
}

fn fixture() -> Fixture {
    let mut plain = vec![0u8; SIZE];
    rand::thread_rng().fill_bytes(&mut plain);
    let ours_id = Identity::generate();
    let age_id = age::x25519::Identity::generate();
    let ours_ct = ours_encrypt(
        &ours_id,
        &plain,
        Vec::with_capacity(SIZE + SIZE / 1000 + 1024),
    );
    let age_ct = age_encrypt(
        &age_id,
        &plain,
        Vec::with_capacity(SIZE + SIZE / 1000 + 1024),
    );
    let aead = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7u8; 32]).expect("key"));
    let mut raw_ct = Vec::with_capacity(SIZE + SIZE / 1000);
    for (i, chunk) in plain.chunks(CHUNK_SIZE).enumerate() {
        let start = raw_ct.len();
        raw_ct.extend_from_slice(chunk);
        let tag = aead
            .seal_in_place_separate_tag(nonce(i as u64), Aad::empty(), &mut raw_ct[start..])
            .expect("encrypt");
        raw_ct.extend_from_slice(tag.as_ref());
    }
    Fixture {
        plain,
        ours_id,
        age_id,
        ours_ct,
        age_ct,
        raw_ct,
        aead,
    }
}

fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&i.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn ours_encrypt<W: Write>(id: &Identity, plain: &[u8], out: W) -> W {
    let mut w = Encryptor::new(&[id.to_public()])
        .expect("recipient")
        .wrap_output(out)
        .expect("header");
    w.write_all(plain).expect("write");
    w.finish().expect("finish")
}

fn age_encrypt<W: Write>(id: &age::x25519::Identity, plain: &[u8], out: W) -> W {
    let r = id.to_public();
    let mut w = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
        .expect("recipient")
        .wrap_output(out)
        .expect("header");
    w.write_all(plain).expect("write");
    w.finish().expect("finish")
}

fn drain<R: Read>(mut r: R, buf: &mut [u8]) -> usize {
    let mut total = 0;
    loop {
        match r.read(buf).expect("read") {
            0 => return total,
            n => total += n,
        }
    }
}

fn ours_decrypt(f: &Fixture, buf: &mut [u8]) -> usize {
    let r = Decryptor::new(&f.ours_ct[..])
        .expect("header")
        .decrypt(std::slice::from_ref(&f.ours_id))
        .expect("key");
    drain(r, buf)
}

fn age_decrypt(f: &Fixture, buf: &mut [u8]) -> usize {
    let r = age::Decryptor::new_buffered(&f.age_ct[..])
        .expect("header")
        .decrypt(std::iter::once(&f.age_id as &dyn age::Identity))
        .expect("key");
    drain(r, buf)
}

fn raw_encrypt(f: &Fixture, data: &mut [u8]) {
    for (i, chunk) in data.chunks_mut(CHUNK_SIZE).enumerate() {
        let tag = f
            .aead
            .seal_in_place_separate_tag(nonce(i as u64), Aad::empty(), chunk)
            .expect("encrypt");
        black_box(tag.as_ref()[0]);
    }
}

fn raw_decrypt(f: &Fixture, scratch: &mut [u8]) -> usize {
    let mut total = 0;
    for (i, chunk) in f.raw_ct.chunks(ENCRYPTED_CHUNK_SIZE).enumerate() {
        let n = chunk.len() - 16;
        f.aead
            .open_separate_gather(
                nonce(i as u64),
                Aad::empty(),
                &chunk[..n],
                &chunk[n..],
                &mut scratch[..n],
            )
            .expect("decrypt");
        total += n;
    }
    total
}

/// The operations under test, by name.
fn run_op(f: &Fixture, op: &str, work: &mut [u8], scratch: &mut [u8]) {
    match op {
        "encrypt/ours" => drop(black_box(ours_encrypt(&f.ours_id, &f.plain, io::sink()))),
        "encrypt/age" => drop(black_box(age_encrypt(&f.age_id, &f.plain, io::sink()))),
        "encrypt/raw-aead" => raw_encrypt(f, work),
        "decrypt/ours" => assert_eq!(ours_decrypt(f, scratch), SIZE),
        "decrypt/age" => assert_eq!(age_decrypt(f, scratch), SIZE),
        "decrypt/raw-aead" => assert_eq!(raw_decrypt(f, scratch), SIZE),
        _ => unreachable!("unknown op {op}"),
    }
}

const OPS: [&str; 6] = [
    "encrypt/ours",
    "encrypt/age",
    "encrypt/raw-aead",
    "decrypt/ours",
    "decrypt/age",
    "decrypt/raw-aead",
];

fn main() {
    let f = fixture();
    let mut work = f.plain.clone();
    let mut scratch = vec![0u8; CHUNK_SIZE];
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    for dir in ["encrypt", "decrypt"] {
        let mut g = c.benchmark_group(format!("envelope-{dir}-64MiB"));
        g.throughput(Throughput::Bytes(SIZE as u64));
        for op in OPS.iter().filter(|o| o.starts_with(dir)) {
            let name = op.split('/').nth(1).unwrap_or(op);
            g.bench_function(name, |b| b.iter(|| run_op(&f, op, &mut work, &mut scratch)));
        }
        g.finish();
    }
    c.final_summary();

    // The ratios, measured together in this run: best of 7 passes each, interleaved so that
    // frequency or load changes hit all three alike.
    let mut best = [Duration::MAX; 6];
    for _ in 0..7 {
        for (i, op) in OPS.iter().enumerate() {
            let t = Instant::now();
            run_op(&f, op, &mut work, &mut scratch);
            best[i] = best[i].min(t.elapsed());
        }
    }
    let mbps = |d: Duration| SIZE as f64 / d.as_secs_f64() / 1e6;
    println!("\nenvelope throughput, 64 MiB, best of 7 (MB/s = 10^6 bytes/s):");
    for (i, op) in OPS.iter().enumerate() {
        println!("  {op:<18} {:8.1} MB/s", mbps(best[i]));
    }
    for (dir, base) in [("encrypt", 0), ("decrypt", 3)] {
        let ours = mbps(best[base]);
        println!(
            "  {dir}: ours/age = {:.2}x (target >= 1.0), ours/raw-aead = {:.2}x (target >= 0.8)",
            ours / mbps(best[base + 1]),
            ours / mbps(best[base + 2])
        );
    }
}
