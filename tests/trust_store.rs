//! A trust store that cannot be edited around (`custody.md` §8.4, issue 13): one card per
//! agency id, each in `trust/<id>.card`; any other file is refused at load by every command
//! that loads trust (exit 3). Homes are private whatever the umask (`cli.md` "Home").

mod common;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

fn send(d: &Path) -> std::process::Output {
    send_with_legal(d, "A", false, "127.0.0.1:9", "agency-b", &["evidence.txt"])
}

#[test]
fn an_impostor_or_misnamed_card_is_refused_at_load() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_agencies(d);
    std::fs::write(d.join("evidence.txt"), b"evidence\n").expect("write");
    // An impostor: a card for agency-b under another key, dropped in as trust/zz.card.
    agency(d, "X", "agency-b", true);
    let impostor = d.join("A/trust/zz.card");
    std::fs::copy(d.join("X/card.note"), &impostor).expect("copy");
    for o in [run(d, &["--home", "A", "trust", "list"]), send(d)] {
        assert_eq!(code(&o), 3, "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("zz.card: holds the card of agency-b, but a trusted card must be stored as agency-b.card"),
            "{err}"
        );
        assert!(err.contains("rogatory: hint: remove"), "{err}");
    }
    std::fs::remove_file(&impostor).expect("rm");
    ok(run(d, &["--home", "A", "trust", "list"]));
    // The real card under another agency's name.
    std::fs::copy(
        d.join("A/trust/agency-b.card"),
        d.join("A/trust/agency-c.card"),
    )
    .expect("copy");
    let o = run(d, &["--home", "A", "trust", "list"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("agency-c.card: holds the card of agency-b"),
        "{}",
        stderr(&o)
    );
    // A second card for the home's own id, under another key: refused, also by the relay.
    std::fs::copy(d.join("X/card.note"), d.join("B/trust/agency-b.card")).expect("copy");
    for args in [
        &["--home", "B", "trust", "list"][..],
        &["--home", "B", "relay", "serve", "--listen", "127.0.0.1:0"][..],
    ] {
        let o = run(d, args);
        assert_eq!(code(&o), 3, "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("agency-b.card: a different key is already trusted for agency-b"),
            "{}",
            stderr(&o)
        );
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// `rogatory ARGS` under `umask 000`.
fn umask_000(d: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(bin())
        .args(args)
        .current_dir(d)
        .stdin(Stdio::null());
    c
}

#[test]
fn homes_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    agency(d, "A", "agency-a", false);
    let init = [
        "--home",
        "U",
        "agency",
        "init",
        "--id",
        "agency-u",
        "--name",
        "U",
        "--jurisdiction",
        "XX",
    ];
    ok(umask_000(d, &init).output().expect("init"));
    let fp = fingerprint(d, "A");
    let add = [
        "--home",
        "U",
        "trust",
        "add",
        "A/card.note",
        "--fingerprint",
        &fp,
    ];
    ok(umask_000(d, &add).output().expect("trust add"));
    let mut relay = umask_000(
        d,
        &["--home", "U", "relay", "serve", "--listen", "127.0.0.1:0"],
    )
    .env("ROGATORY_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("relay");
    let mut line = String::new();
    std::io::BufReader::new(relay.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let _ = relay.kill();
    let _ = relay.wait();
    assert!(line.contains("listening"), "{line}");
    let u = d.join("U");
    for p in ["", "tls", "trust", "relay", "relay/spool", "relay/inbox"] {
        assert_eq!(mode(&u.join(p)), 0o700, "U/{p}");
    }
    for p in [
        "identity.txt",
        "tls/key.pem",
        "relay/relay.db",
        "relay/audit.log",
        "relay/lock",
    ] {
        assert_eq!(mode(&u.join(p)), 0o600, "U/{p}");
    }
    for p in ["card.note", "tls/cert.pem", "trust/agency-a.card"] {
        assert_eq!(mode(&u.join(p)), 0o644, "U/{p}");
    }
}
