//! Interoperability with an independent age implementation, the `age-encryption` npm package
//! (typage, `tests/interop-node/`): files for a hybrid post-quantum recipient (and an X25519
//! one) that the real `rogatory` binary writes decrypt with it, and the reverse.
//!
//! Needs `node` and `npm ci` run in `tests/interop-node/` (`.ci/run` does it). Without them the
//! tests fail when `CI` is set, and otherwise skip with the reason printed.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{code, run, stderr};

fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop-node")
}

/// Whether the node side is usable; in CI its absence is a failure, never a silent pass.
fn node_ready() -> bool {
    let installed = project()
        .join("node_modules/age-encryption/package.json")
        .is_file();
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if installed && node {
        return true;
    }
    let why = if node {
        "tests/interop-node/node_modules is missing (run `npm ci` there)"
    } else {
        "node is not installed"
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "interop with age-encryption cannot run in CI: {why}"
    );
    eprintln!("SKIPPED: interop with age-encryption: {why}");
    false
}

fn node(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("node")
        .arg(project().join("age.mjs"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("node runs");
    assert!(
        o.status.success(),
        "node age.mjs {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// A plaintext over several STREAM chunks with a short last one.
fn plaintext() -> Vec<u8> {
    (0..150_000u32).map(|i| (i * 31 + i / 300) as u8).collect()
}

fn header_stanzas(file: &[u8]) -> Vec<String> {
    let end = file
        .windows(4)
        .position(|w| w == b"\n---")
        .expect("a header");
    String::from_utf8_lossy(&file[..end])
        .lines()
        .filter_map(|l| l.strip_prefix("-> "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

fn ours_to_theirs(kind: &str, stanza: &str) {
    if !node_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // The independent implementation makes the key; we encrypt to its recipient.
    let recipient = node(d, &["keygen", kind, "their-key"]);
    fs::write(d.join("plain"), plaintext()).expect("write");
    for armor in [false, true] {
        let mut args = vec!["encrypt", "-r", &recipient, "-o", "ours.age", "plain"];
        if armor {
            args.insert(1, "-a");
        }
        let _ = fs::remove_file(d.join("ours.age"));
        let o = run(d, &args);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let file = fs::read(d.join("ours.age")).expect("ciphertext");
        if !armor {
            assert_eq!(header_stanzas(&file), vec![stanza.to_owned()]);
        }
        node(d, &["decrypt", "their-key", "ours.age", "decrypted"]);
        assert_eq!(
            fs::read(d.join("decrypted")).expect("out"),
            plaintext(),
            "age-encryption decrypts our {kind} file (armor: {armor})"
        );
    }
}

fn theirs_to_ours(pq: bool, stanza: &str) {
    if !node_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // We make the key; the independent implementation encrypts to our recipient.
    let mut args = vec!["keygen", "-o", "our-key"];
    if pq {
        args.push("--pq");
    }
    let o = run(d, &args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let recipient = stderr(&o)
        .strip_prefix("Public key: ")
        .expect("public key")
        .trim()
        .to_owned();
    fs::write(d.join("plain"), plaintext()).expect("write");
    node(d, &["encrypt", &recipient, "plain", "theirs.age"]);
    let file = fs::read(d.join("theirs.age")).expect("ciphertext");
    assert_eq!(header_stanzas(&file), vec![stanza.to_owned()]);
    let o = run(d, &["decrypt", "-i", "our-key", "-o", "out", "theirs.age"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(fs::read(d.join("out")).expect("out"), plaintext());
    // A flipped byte in their payload is refused by us (exit 3), as for our own files.
    let mut bad = file;
    let last = bad.len() - 1;
    bad[last] ^= 1;
    fs::write(d.join("bad.age"), bad).expect("write");
    let o = run(d, &["decrypt", "-i", "our-key", "-o", "bad-out", "bad.age"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(!d.join("bad-out").exists());
}

#[test]
fn hybrid_file_we_write_decrypts_with_age_encryption() {
    ours_to_theirs("pq", "mlkem768x25519");
}

#[test]
fn hybrid_file_age_encryption_writes_decrypts_with_us() {
    theirs_to_ours(true, "mlkem768x25519");
}

#[test]
fn x25519_file_we_write_decrypts_with_age_encryption() {
    ours_to_theirs("x25519", "X25519");
}

#[test]
fn x25519_file_age_encryption_writes_decrypts_with_us() {
    theirs_to_ours(false, "X25519");
}
