//! `rogatory demo`: the README's "run it" command. With no set-up at all it shows the envelope
//! layer end to end through the same code paths as the real commands: two agencies' keys, a
//! sample evidence file encrypted to the receiving agency (and to the sender), decrypted with
//! all-or-nothing output, digests compared, and a tampered copy refused.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::args::{DecryptArgs, DemoArgs, EncryptArgs, IoArgs, KeygenArgs};
use crate::error::{CliError, Exit, Result};
use crate::{crypt, keygen};

const SAMPLE_LEN: usize = 8 * 1024 * 1024 + 12_345;

fn io_err(what: &str, e: std::io::Error) -> CliError {
    CliError::new(Exit::Storage, format!("demo: {what}")).source(e)
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = fs::File::open(p).map_err(|e| io_err("cannot read file", e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| io_err("cannot read file", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn public_key_of(identity_file: &Path) -> Result<String> {
    let text = fs::read_to_string(identity_file).map_err(|e| io_err("cannot read key", e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .map(str::to_owned)
        .ok_or_else(|| CliError::new(Exit::Internal, "demo: key file has no public key line"))
}

pub(crate) fn run(a: &DemoArgs) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("rogatory-demo-")
        .tempdir()
        .map_err(|e| io_err("cannot create a temporary directory", e))?;
    let dir: PathBuf = tmp.path().to_owned();
    let p = |name: &str| dir.join(name);

    println!("Rogatory demo (envelope layer) in {}", dir.display());
    for agency in ["agency-a", "agency-b"] {
        keygen::run(&KeygenArgs {
            output: Some(p(&format!("{agency}.key"))),
        })?;
    }
    let sender = public_key_of(&p("agency-a.key"))?;
    let receiver = public_key_of(&p("agency-b.key"))?;

    // Sample evidence: deterministic, incompressible-looking bytes.
    let mut sample = Vec::with_capacity(SAMPLE_LEN);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while sample.len() < SAMPLE_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sample.extend_from_slice(&x.to_le_bytes());
    }
    sample.truncate(SAMPLE_LEN);
    fs::write(p("exhibit-1.bin"), &sample).map_err(|e| io_err("cannot write sample", e))?;

    let t = Instant::now();
    crypt::encrypt(&EncryptArgs {
        recipients: vec![receiver.clone(), sender.clone()],
        recipients_files: vec![],
        armor: false,
        io: IoArgs {
            output: Some(p("exhibit-1.bin.age")),
            force: false,
            input: Some(p("exhibit-1.bin")),
        },
    })?;
    let enc_time = t.elapsed();
    let t = Instant::now();
    crypt::decrypt(&DecryptArgs {
        identities: vec![p("agency-b.key")],
        io: IoArgs {
            output: Some(p("exhibit-1.received")),
            force: false,
            input: Some(p("exhibit-1.bin.age")),
        },
    })?;
    let dec_time = t.elapsed();
    let sent = sha256_file(&p("exhibit-1.bin"))?;
    let received = sha256_file(&p("exhibit-1.received"))?;
    if sent != received {
        return Err(CliError::new(
            Exit::Integrity,
            "demo: digests differ after decryption",
        ));
    }

    // A single flipped bit in transit: decryption refuses and leaves nothing behind.
    let mut tampered = fs::read(p("exhibit-1.bin.age")).map_err(|e| io_err("read", e))?;
    let mid = tampered.len() / 2;
    tampered[mid] ^= 1;
    fs::write(p("tampered.age"), &tampered).map_err(|e| io_err("write", e))?;
    let refused = crypt::decrypt(&DecryptArgs {
        identities: vec![p("agency-b.key")],
        io: IoArgs {
            output: Some(p("tampered.out")),
            force: false,
            input: Some(p("tampered.age")),
        },
    });
    let refusal = match refused {
        Err(e) if e.exit == Exit::Integrity && !p("tampered.out").exists() => e.to_string(),
        Err(e) => return Err(e),
        Ok(()) => {
            return Err(CliError::new(
                Exit::Internal,
                "demo: tampered file was accepted",
            ));
        }
    };

    let mbps = |d: std::time::Duration| SAMPLE_LEN as f64 / d.as_secs_f64().max(1e-9) / 1e6;
    let ct_len = fs::metadata(p("exhibit-1.bin.age"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("  sender     agency-a  {sender}");
    println!("  recipient  agency-b  {receiver}");
    println!("  exhibit-1.bin       {SAMPLE_LEN} bytes, sha256 {sent}");
    println!(
        "  encrypted           {ct_len} bytes (age v1, 2 recipients) in {:.0} ms, {:.0} MB/s",
        enc_time.as_secs_f64() * 1e3,
        mbps(enc_time)
    );
    println!(
        "  decrypted by B      sha256 {received} (match) in {:.0} ms, {:.0} MB/s",
        dec_time.as_secs_f64() * 1e3,
        mbps(dec_time)
    );
    println!("  tampered copy       refused (exit 3): {refusal}; no output left behind");
    if a.keep {
        let kept = tmp.keep();
        println!("Kept everything in {}", kept.display());
    } else {
        println!("Cleaned up (pass --keep to keep the files).");
    }
    Ok(())
}
