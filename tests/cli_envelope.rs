//! The `keygen`, `encrypt` and `decrypt` commands through the real binary: exit codes, exact
//! messages, and "bad input loses nothing" (test-plan.md cases 1, 4, 53 to 56, 60 to 62).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{assert_failed_cleanly, code, listing, run, run_with_stdin, stderr};

struct Setup {
    dir: tempfile::TempDir,
    recipient: String,
}

/// A directory with `key` (identity), `plain` (200 KiB) and `ct.age` (its encryption).
fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = run(dir.path(), &["keygen", "-o", "key"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    let recipient = err
        .strip_prefix("Public key: ")
        .expect("public key on stderr")
        .trim()
        .to_owned();
    let plain: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
    fs::write(dir.path().join("plain"), &plain).expect("write");
    let o = run(
        dir.path(),
        &["encrypt", "-r", &recipient, "-o", "ct.age", "plain"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    Setup { dir, recipient }
}

fn p(s: &Setup) -> &Path {
    s.dir.path()
}

const BASE: &[&str] = &["ct.age", "key", "plain"];

#[test]
fn keygen_writes_0600_and_never_overwrites() {
    let s = setup();
    let mode = fs::metadata(p(&s).join("key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = fs::read(p(&s).join("key")).expect("key");
    let o = run(p(&s), &["keygen", "-o", "key"]);
    assert_failed_cleanly(&o, 8, p(&s), BASE);
    assert_eq!(fs::read(p(&s).join("key")).expect("key"), before);
    assert!(s.recipient.starts_with("age1"));
}

#[test]
fn round_trip_binary_and_armored() {
    let s = setup();
    let o = run(p(&s), &["decrypt", "-i", "key", "-o", "out", "ct.age"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        fs::read(p(&s).join("out")).unwrap_or_default(),
        fs::read(p(&s).join("plain")).unwrap_or_default()
    );
    let o = run(
        p(&s),
        &["encrypt", "-a", "-r", &s.recipient, "-o", "ct.txt", "plain"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let armored = fs::read_to_string(p(&s).join("ct.txt")).expect("armored");
    assert!(armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----\n"));
    // Armor detected on stdin, plaintext to stdout.
    let o = run_with_stdin(p(&s), &["decrypt", "-i", "key"], armored.as_bytes());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(o.stdout, fs::read(p(&s).join("plain")).expect("plain"));
}

#[test]
fn tampered_payload_byte_exit_3_no_output() {
    let s = setup();
    let mut ct = fs::read(p(&s).join("ct.age")).expect("ct");
    let i = ct.len() - 70_000; // inside chunk 1 of 0..=3
    ct[i] ^= 1;
    fs::write(p(&s).join("ct.age"), &ct).expect("write");
    let o = run(p(&s), &["decrypt", "-i", "key", "-o", "out", "ct.age"]);
    assert_failed_cleanly(&o, 3, p(&s), BASE);
    assert_eq!(
        stderr(&o),
        "rogatory: error: ct.age failed authentication: payload chunk 1 failed to authenticate\n"
    );
}

#[test]
fn truncated_file_exit_3_no_output() {
    let s = setup();
    let ct = fs::read(p(&s).join("ct.age")).expect("ct");
    let header_end = ct.windows(4).position(|w| w == b"--- ").expect("mac line") + 48;
    // Cuts inside the payload nonce are header failures; every other cut is a payload failure.
    for cut in [
        header_end,
        header_end + 1,
        header_end + 16,
        ct.len() - 65_552,
        ct.len() - 1,
    ] {
        fs::write(p(&s).join("cut.age"), &ct[..cut]).expect("write");
        let o = run(p(&s), &["decrypt", "-i", "key", "-o", "out", "cut.age"]);
        assert_failed_cleanly(&o, 3, p(&s), &["ct.age", "cut.age", "key", "plain"]);
    }
    let o = run(p(&s), &["decrypt", "-i", "key", "-o", "out", "cut.age"]);
    assert!(
        stderr(&o).contains("cut.age failed authentication"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn wrong_identity_exit_4_no_output() {
    let s = setup();
    let o = run(p(&s), &["keygen", "-o", "other"]);
    assert_eq!(code(&o), 0);
    let o = run(p(&s), &["decrypt", "-i", "other", "-o", "out", "ct.age"]);
    assert_failed_cleanly(&o, 4, p(&s), &["ct.age", "key", "other", "plain"]);
    assert_eq!(
        stderr(&o),
        "rogatory: error: no identity matches any recipient of ct.age\n\
         rogatory: hint: is this file encrypted to you? pass the right -i FILE\n"
    );
}

#[test]
fn existing_output_exit_8_unchanged() {
    let s = setup();
    fs::write(p(&s).join("out"), b"precious").expect("write");
    let o = run(p(&s), &["decrypt", "-i", "key", "-o", "out", "ct.age"]);
    assert_failed_cleanly(&o, 8, p(&s), &["ct.age", "key", "out", "plain"]);
    assert_eq!(fs::read(p(&s).join("out")).expect("out"), b"precious");
    assert_eq!(
        stderr(&o),
        "rogatory: error: output file already exists: out\n\
         rogatory: hint: choose another -o, or pass --force to replace it\n"
    );
    // --force replaces it, atomically.
    let o = run(
        p(&s),
        &["decrypt", "-i", "key", "--force", "-o", "out", "ct.age"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        fs::read(p(&s).join("out")).expect("out"),
        fs::read(p(&s).join("plain")).expect("plain")
    );
}

#[test]
fn input_equals_output_exit_8() {
    let s = setup();
    fs::create_dir(p(&s).join("a")).expect("mkdir");
    fs::hard_link(p(&s).join("ct.age"), p(&s).join("hard")).expect("link");
    std::os::unix::fs::symlink("ct.age", p(&s).join("soft")).expect("symlink");
    let before = fs::read(p(&s).join("ct.age")).expect("ct");
    for out in ["ct.age", "./ct.age", "a/../ct.age", "hard", "soft"] {
        let o = run(
            p(&s),
            &["decrypt", "-i", "key", "--force", "-o", out, "ct.age"],
        );
        assert_eq!(code(&o), 8, "-o {out}: {}", stderr(&o));
        assert!(stderr(&o).contains("input and output are the same file"));
    }
    assert_eq!(fs::read(p(&s).join("ct.age")).expect("ct"), before);
}

#[test]
fn bad_recipients_exit_2_naming_them() {
    let s = setup();
    let r = &s.recipient;
    let mut checksum = r.clone();
    let last = checksum.pop().expect("char");
    checksum.push(if last == 'q' { 'p' } else { 'q' });
    let mixed = format!("{}{}", &r[..10].to_uppercase(), &r[10..]);
    let truncated = r[..r.len() - 4].to_owned();
    let wrong_hrp = r.replacen("age1", "agf1", 1);
    for bad in [&checksum, &mixed, &truncated, &wrong_hrp] {
        let o = run(p(&s), &["encrypt", "-r", bad, "-o", "x", "plain"]);
        assert_failed_cleanly(&o, 2, p(&s), BASE);
        assert!(
            stderr(&o).contains(&format!("invalid recipient \"{bad}\"")),
            "{}",
            stderr(&o)
        );
    }
    fs::write(p(&s).join("rcpts"), "# nobody\n\n").expect("write");
    let o = run(p(&s), &["encrypt", "-R", "rcpts", "-o", "x", "plain"]);
    assert_failed_cleanly(&o, 2, p(&s), &["ct.age", "key", "plain", "rcpts"]);
    assert_eq!(stderr(&o), "rogatory: error: no recipients in rcpts\n");
    fs::write(p(&s).join("rcpts"), format!("{r}\n{checksum}\n")).expect("write");
    let o = run(p(&s), &["encrypt", "-R", "rcpts", "-o", "x", "plain"]);
    assert!(
        stderr(&o).contains("rcpts: line 2: invalid Bech32 encoding"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn identity_problems_exit_4_or_2() {
    let s = setup();
    // Missing required -i is a usage error.
    let o = run(p(&s), &["decrypt", "-o", "out", "ct.age"]);
    assert_eq!(code(&o), 2);
    assert!(o.stdout.is_empty());
    let o = run(p(&s), &["decrypt", "-i", "nope", "-o", "out", "ct.age"]);
    assert_failed_cleanly(&o, 4, p(&s), BASE);
    fs::write(p(&s).join("bad"), "AGE-SECRET-KEY-1NOTAKEY\n").expect("write");
    fs::set_permissions(p(&s).join("bad"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let o = run(p(&s), &["decrypt", "-i", "bad", "-o", "out", "ct.age"]);
    assert_failed_cleanly(&o, 4, p(&s), &["bad", "ct.age", "key", "plain"]);
    fs::set_permissions(p(&s).join("key"), fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = run(p(&s), &["decrypt", "-i", "key", "-o", "out", "ct.age"]);
    assert_failed_cleanly(&o, 4, p(&s), &["bad", "ct.age", "key", "plain"]);
    assert_eq!(
        stderr(&o),
        "rogatory: error: identity file key is accessible by other users (mode 0644)\n\
         rogatory: hint: run: chmod 600 key\n"
    );
}

#[test]
fn not_an_age_file_exit_3() {
    let s = setup();
    let random: Vec<u8> = (0..1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let inputs: [(&str, &[u8]); 4] = [
        ("empty", b""),
        ("random", &random),
        ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"),
        (
            "armor-garbage",
            b"-----BEGIN AGE ENCRYPTED FILE-----\nnot base64!\n",
        ),
    ];
    for (name, bytes) in inputs {
        fs::write(p(&s).join(name), bytes).expect("write");
        let o = run(p(&s), &["decrypt", "-i", "key", "-o", "out", name]);
        assert_eq!(code(&o), 3, "{name}: {}", stderr(&o));
        assert!(!p(&s).join("out").exists());
        fs::remove_file(p(&s).join(name)).expect("rm");
    }
    assert_eq!(listing(p(&s)), BASE);
}

#[test]
fn usage_errors_exit_2_with_nothing_on_stdout() {
    let s = setup();
    for args in [
        &["encrypt", "--bogus"][..],
        &["decrypt"][..],
        &["frobnicate"][..],
        &["encrypt", "-o"][..],
    ] {
        let o = run(p(&s), args);
        assert_eq!(code(&o), 2, "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
        assert!(!o.stderr.is_empty(), "{args:?}");
    }
    let o = run(
        p(&s),
        &["encrypt", "-r", &s.recipient, "-o", "x", "missing-input"],
    );
    assert_failed_cleanly(&o, 2, p(&s), BASE);
}

/// test-plan.md case 61: SIGINT, SIGTERM or SIGHUP (a closed terminal) mid-decrypt removes the temporary file, exit 130.
#[test]
fn interrupted_decrypt_leaves_nothing() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let s = setup();
    let ct = fs::read(p(&s).join("ct.age")).expect("ct");
    for signal in ["-INT", "-TERM", "-HUP"] {
        let mut child = Command::new(common::bin())
            .args(["decrypt", "-i", "key", "-o", "out", "-"])
            .current_dir(p(&s))
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        // Send the header and the first chunk, then stall: the temporary file now exists.
        stdin.write_all(&ct[..ct.len() / 2]).expect("write");
        stdin.flush().expect("flush");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listing(p(&s))
            .iter()
            .any(|n| n.ends_with(".rogatory-partial"))
        {
            assert!(Instant::now() < deadline, "temporary file never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = child.id().to_string();
        let k = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(k.success());
        let out = child.wait_with_output().expect("wait");
        drop(stdin);
        assert_eq!(out.status.code(), Some(130), "{signal}");
        assert_eq!(listing(p(&s)), BASE, "{signal}: no temp file, no output");
    }
}

/// The README's "run it" command works and proves what it says.
#[test]
fn demo_runs_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = run(dir.path(), &["demo"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("every SHA-256 equal to the original"), "{out}");
    assert!(out.contains("state delivered"), "{out}");
    assert_eq!(
        out.matches("signature ok").count(),
        2,
        "both receipts verify: {out}"
    );
    assert!(out.contains("relay scrub: exit 3"), "{out}");
    let demo_dir = out
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .expect("demo dir");
    assert!(!Path::new(demo_dir).exists(), "demo directory removed");
}

/// test-plan.md 62: binary output is never written to a terminal. The terminal is a pseudo-
/// terminal from util-linux `script` (`-e`: its exit code is the command's); without `script`
/// the test says so and checks nothing.
#[test]
fn binary_output_is_refused_on_a_terminal() {
    let Ok(script) = which_script() else {
        eprintln!("skipped: no `script` (util-linux) to give the command a terminal");
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let bin = common::bin();
    let bin = bin.to_str().expect("utf-8 path");
    assert_eq!(code(&run(d, &["keygen", "-o", "k.txt"])), 0);
    fs::write(d.join("p.txt"), b"PLAINTEXT-MARKER\n").expect("write");
    let key = fs::read_to_string(d.join("k.txt")).expect("key");
    let public = key
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .trim();
    assert_eq!(
        code(&run(d, &["encrypt", "-r", public, "-o", "p.age", "p.txt"])),
        0
    );
    let on_tty = |cmd: String| {
        std::process::Command::new(&script)
            .args(["-qec", &cmd, "/dev/null"])
            .current_dir(d)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("script")
    };
    // Decrypting and binary encrypting to the terminal: exit 2, nothing of the data shown.
    for cmd in [
        format!("'{bin}' decrypt -i k.txt p.age"),
        format!("'{bin}' encrypt -r {public} p.txt"),
    ] {
        let o = on_tty(cmd.clone());
        let shown = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {shown}");
        assert!(
            shown.contains("refusing to write binary output to a terminal"),
            "{cmd}: {shown}"
        );
        assert!(!shown.contains("PLAINTEXT-MARKER"), "{cmd}: {shown}");
        assert!(!shown.contains("age-encryption.org"), "{cmd}: {shown}");
    }
    // Armored output is text: allowed.
    let o = on_tty(format!("'{bin}' encrypt -a -r {public} p.txt"));
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("BEGIN AGE ENCRYPTED FILE"));
}

fn which_script() -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|p| p.join("script"))
        .find(|p| p.is_file())
        .ok_or(())
}
