//! The per-file cost of the recipient stanza: hybrid post-quantum `mlkem768x25519` next to
//! X25519, for one recipient.
//!
//! - wrap: `Encryptor::new` (a fresh file key, its stanza, the header MAC), what every file pays
//!   once per recipient before its payload;
//! - unwrap: parsing that header and `unwrap_file_key` with the matching identity (stanza checks,
//!   KEM decapsulation, AEAD open, header MAC), what every decryption pays once;
//! - header size: the bytes the stanza adds to every file.
//!
//! After criterion's report it prints the best of several interleaved passes per operation.
//! Run: `cargo bench --bench stanza`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use rogatory_envelope::{AnyIdentity, Decryptor, Encryptor, HybridIdentity, Identity};

struct Kind {
    name: &'static str,
    id: AnyIdentity,
    header: Vec<u8>,
}

fn kinds() -> Vec<Kind> {
    [
        ("x25519", AnyIdentity::from(Identity::generate())),
        (
            "mlkem768x25519",
            AnyIdentity::from(HybridIdentity::generate()),
        ),
    ]
    .into_iter()
    .map(|(name, id)| {
        let header = Encryptor::new(&[id.to_public()])
            .expect("recipient")
            .header()
            .encode();
        Kind { name, id, header }
    })
    .collect()
}

fn wrap(k: &Kind) {
    black_box(Encryptor::new(&[k.id.to_public()]).expect("wrap"));
}

fn unwrap(k: &Kind) {
    let d = Decryptor::new(&k.header[..]).expect("header");
    black_box(
        d.unwrap_file_key(std::slice::from_ref(&k.id))
            .expect("unwrap"),
    );
}

fn main() {
    let kinds = kinds();
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    for op in ["wrap", "unwrap"] {
        let mut g = c.benchmark_group(format!("stanza-{op}"));
        for k in &kinds {
            g.bench_function(k.name, |b| {
                b.iter(|| if op == "wrap" { wrap(k) } else { unwrap(k) })
            });
        }
        g.finish();
    }
    c.final_summary();

    // Best of 200 interleaved passes, so that load changes hit both kinds alike.
    let mut best = [[Duration::MAX; 2]; 2];
    for _ in 0..200 {
        for (i, k) in kinds.iter().enumerate() {
            let t = Instant::now();
            wrap(k);
            best[i][0] = best[i][0].min(t.elapsed());
            let t = Instant::now();
            unwrap(k);
            best[i][1] = best[i][1].min(t.elapsed());
        }
    }
    println!("\nper-file recipient stanza cost, one recipient, best of 200:");
    for (i, k) in kinds.iter().enumerate() {
        println!(
            "  {:<15} wrap {:8.1} µs   unwrap {:8.1} µs   header {:5} bytes",
            k.name,
            best[i][0].as_secs_f64() * 1e6,
            best[i][1].as_secs_f64() * 1e6,
            k.header.len()
        );
    }
    println!(
        "  hybrid / x25519: wrap {:.1}x, unwrap {:.1}x",
        best[1][0].as_secs_f64() / best[0][0].as_secs_f64(),
        best[1][1].as_secs_f64() / best[0][1].as_secs_f64()
    );
}
