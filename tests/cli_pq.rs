//! Hybrid post-quantum age keys (`mlkem768x25519`) through the real binary: `keygen --pq`,
//! `encrypt -r age1pq1…` and `-R FILE`, `decrypt -i` with a PQ identity, and the rule that
//! hybrid and classical recipients never share a file (`docs/envelope.md` §5.3).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{assert_failed_cleanly, code, run, run_with_stdin, stderr};

/// `keygen [--pq] -o name` in `dir`; returns the recipient printed on stderr.
fn keygen(dir: &Path, name: &str, pq: bool) -> String {
    let mut args = vec!["keygen", "-o", name];
    if pq {
        args.push("--pq");
    }
    let o = run(dir, &args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "nothing on stdout with -o");
    stderr(&o)
        .strip_prefix("Public key: ")
        .expect("public key on stderr")
        .trim()
        .to_owned()
}

fn stanza_types(file: &[u8]) -> Vec<String> {
    let end = file.windows(4).position(|w| w == b"\n---").expect("header");
    String::from_utf8_lossy(&file[..end])
        .lines()
        .filter_map(|l| l.strip_prefix("-> "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

fn plain() -> Vec<u8> {
    (0..100_000u32).map(|i| (i % 251) as u8).collect()
}

#[test]
fn keygen_pq_writes_a_pq_identity_like_age_keygen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let r = keygen(d, "key", true);
    assert!(r.starts_with("age1pq1"), "{r}");
    // "age1pq1" and 1952 characters: 1216 bytes in Bech32 plus the checksum.
    assert_eq!(r.len(), 7 + 1952);
    let text = fs::read_to_string(d.join("key")).expect("key");
    let mode = fs::metadata(d.join("key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(text.starts_with("# created: "));
    assert!(text.contains(&format!("# public key: {r}\n")));
    let secret = text.lines().last().expect("secret line");
    assert!(secret.starts_with("AGE-SECRET-KEY-PQ-1"), "{secret}");
    // To stdout without -o, recipient still on stderr.
    let o = run(d, &["keygen", "--pq"]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("AGE-SECRET-KEY-PQ-1"));
    assert!(stderr(&o).starts_with("Public key: age1pq1"));
    // And the classical default is unchanged.
    assert!(!keygen(d, "classic", false).starts_with("age1pq1"));
}

#[test]
fn pq_round_trip_with_r_and_r_file_binary_and_armored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let r1 = keygen(d, "k1", true);
    let r2 = keygen(d, "k2", true);
    fs::write(d.join("plain"), plain()).expect("plain");
    fs::write(d.join("recipients"), format!("# agency b\n{r2}\n")).expect("recipients");
    let o = run(
        d,
        &[
            "encrypt",
            "-r",
            &r1,
            "-R",
            "recipients",
            "-o",
            "ct.age",
            "plain",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let ct = fs::read(d.join("ct.age")).expect("ct");
    assert_eq!(stanza_types(&ct), vec!["mlkem768x25519", "mlkem768x25519"]);
    for key in ["k1", "k2"] {
        let out = format!("out-{key}");
        let o = run(d, &["decrypt", "-i", key, "-o", &out, "ct.age"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert_eq!(fs::read(d.join(&out)).expect("out"), plain());
    }
    let o = run(d, &["encrypt", "-a", "-r", &r1, "-o", "ct.txt", "plain"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let armored = fs::read(d.join("ct.txt")).expect("armored");
    let o = run_with_stdin(d, &["decrypt", "-i", "k1"], &armored);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(o.stdout, plain());
}

#[test]
fn one_identity_file_with_both_kinds_decrypts_both_kinds_of_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let rx = keygen(d, "kx", false);
    let rq = keygen(d, "kq", true);
    let both = format!(
        "{}{}",
        fs::read_to_string(d.join("kx")).expect("kx"),
        fs::read_to_string(d.join("kq")).expect("kq")
    );
    fs::write(d.join("both"), both).expect("both");
    fs::set_permissions(d.join("both"), fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::write(d.join("plain"), plain()).expect("plain");
    for (r, ct) in [(&rx, "x.age"), (&rq, "q.age")] {
        let o = run(d, &["encrypt", "-r", r, "-o", ct, "plain"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let o = run_with_stdin(d, &["decrypt", "-i", "both", ct], b"");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert_eq!(o.stdout, plain());
    }
    // The classical key alone cannot open the hybrid file: exit 4, nothing written.
    let o = run(d, &["decrypt", "-i", "kx", "-o", "nope", "q.age"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(!d.join("nope").exists());
}

#[test]
fn mixing_hybrid_and_classical_recipients_is_refused_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let rx = keygen(d, "kx", false);
    let rq = keygen(d, "kq", true);
    fs::write(d.join("plain"), b"evidence").expect("plain");
    fs::write(d.join("mixed"), format!("{rq}\n{rx}\n")).expect("mixed");
    let files = ["kq", "kx", "mixed", "plain"];
    for args in [
        vec!["encrypt", "-r", &rq, "-r", &rx, "-o", "ct.age", "plain"],
        vec!["encrypt", "-R", "mixed", "-o", "ct.age", "plain"],
    ] {
        let o = run(d, &args);
        assert_failed_cleanly(&o, 2, d, &files);
        assert!(
            stderr(&o).contains("cannot be mixed in one file"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn malformed_pq_keys_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let rq = keygen(d, "kq", true);
    fs::write(d.join("plain"), b"evidence").expect("plain");
    // A flipped character breaks the Bech32 checksum: exit 2 naming the recipient.
    let mut bad = rq.clone().into_bytes();
    bad[100] = if bad[100] == b'q' { b'p' } else { b'q' };
    let bad = String::from_utf8(bad).expect("ascii");
    let o = run(d, &["encrypt", "-r", &bad, "-o", "ct.age", "plain"]);
    assert_failed_cleanly(&o, 2, d, &["kq", "plain"]);
    assert!(stderr(&o).contains("invalid recipient"), "{}", stderr(&o));
    // A damaged PQ identity file is an unusable key: exit 4.
    let text = fs::read_to_string(d.join("kq")).expect("kq");
    let damaged = text.replace("AGE-SECRET-KEY-PQ-1", "AGE-SECRET-KEY-PQ-1Q");
    fs::write(d.join("damaged"), damaged).expect("write");
    fs::set_permissions(d.join("damaged"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let o = run(d, &["encrypt", "-r", &rq, "-o", "ct.age", "plain"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run(d, &["decrypt", "-i", "damaged", "-o", "out", "ct.age"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(!d.join("out").exists());
}

#[test]
fn new_agencies_have_a_pq_card_and_old_ones_add_one_by_reissuing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    common::agency(d, "A", "agency-a", false);
    let card = |d: &Path| {
        let o = run(d, &["--home", "A", "agency", "card"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(card(d).contains("\"age_recipient_pq\":\"age1pq1"));
    let fp = run(d, &["--home", "A", "agency", "fingerprint"]).stdout;
    // Already post-quantum: --add-pq refuses (exit 8) and changes nothing.
    let before = fs::read(d.join("A/identity.txt")).expect("identity");
    let o = run(d, &["--home", "A", "agency", "reissue-card", "--add-pq"]);
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    assert_eq!(
        fs::read(d.join("A/identity.txt")).expect("identity"),
        before
    );
    // An agency from before post-quantum support: no hybrid key, a card without it.
    let old: String = String::from_utf8_lossy(&before)
        .lines()
        .filter(|l| !l.contains("PQ-1") && !l.contains("post-quantum"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(d.join("A/identity.txt"), old).expect("write");
    let o = run(d, &["--home", "A", "agency", "reissue-card"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!card(d).contains("age_recipient_pq"));
    // Re-issue with a hybrid key: same fingerprint, the card carries it, 0600 kept.
    let o = run(d, &["--home", "A", "agency", "reissue-card", "--add-pq"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(card(d).contains("\"age_recipient_pq\":\"age1pq1"));
    assert_eq!(run(d, &["--home", "A", "agency", "fingerprint"]).stdout, fp);
    let text = fs::read_to_string(d.join("A/identity.txt")).expect("identity");
    assert_eq!(text.matches("\nAGE-SECRET-KEY-PQ-1").count(), 1);
    let mode = fs::metadata(d.join("A/identity.txt"))
        .expect("identity")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
