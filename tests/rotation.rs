//! Key rotation with card chains (issue 13; `custody.md` §8.5; test-plan.md 100 to 104, 106,
//! 107): B rotates its signing, age and TLS keys mid-life; A follows the card chain without a
//! fingerprint; A's receipts from before verify; transfers work both ways afterwards, and a
//! transfer sent to B before the rotation still opens; B's relay log verifies across the
//! rotation; a chain with a broken link, or a card that does not link, is not trusted without
//! the fingerprint; an interrupted rotation is completed; a revoked key hands no trust on.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rogatory_custody::{AgencyIdentity, CardChain, verify_records, verify_records_any};

/// Sends `file` (created with its name as contents) from `from` to `to` via `relay`; returns the
/// transfer id.
fn send_one(d: &Path, from: &str, relay: &str, to: &str, file: &str) -> String {
    std::fs::write(d.join(file), format!("evidence {file}\n")).expect("write");
    let o = send_with_legal(d, from, true, relay, to, &[file]);
    assert_eq!(code(&o), 0, "send {file}: {}", stderr(&o));
    transfer_id(&o)
}

/// `home` fetches transfer `t` from `relay` into `out`; checks the file came back as sent.
fn fetch_one(d: &Path, home: &str, relay: &str, t: &str, out: &str, file: &str) {
    ok(run(
        d,
        &["--home", home, "fetch", "--relay", relay, t, "-o", out],
    ));
    let got = std::fs::read_to_string(
        transfer_dirs(&d.join(out))
            .last()
            .expect("a folder")
            .join(file),
    )
    .expect("fetched file");
    assert_eq!(got, format!("evidence {file}\n"));
}

/// Retries `args` until it exits 0 (a relay reloads its trust store within a second), 10 s at most.
fn until_ok(d: &Path, args: &[&str]) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = run(d, args);
        if code(&o) == 0 || Instant::now() > deadline {
            return o;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn b_rotates_mid_life_and_everything_keeps_verifying() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    // B's relay runs from an exported relay home; A's relay from A's own home.
    agencies_and_relay_home(d);
    let rb = start_relay(d, "B-relay");
    let ra = start_relay(d, "A");

    // Before the rotation: A -> B fetched, B -> A fetched, A -> B left pending.
    let t1 = send_one(d, "A", &rb.1, "agency-b", "one.txt");
    fetch_one(d, "B", &rb.1, &t1, "b-out1", "one.txt");
    ok(run(d, &["--home", "A", "status", "--relay", &rb.1, &t1]));
    let t2 = send_one(d, "B", &ra.1, "agency-a", "two.txt");
    fetch_one(d, "A", &ra.1, &t2, "a-out2", "two.txt");
    let t3 = send_one(d, "A", &rb.1, "agency-b", "three.txt");
    let old_fp = fingerprint(d, "B");
    let old_identity = AgencyIdentity::parse(
        &std::fs::read_to_string(d.join("B/identity.txt")).expect("identity"),
    )
    .expect("parses");

    // 100. B rotates: a new card signed by both keys, the chain, the retired age secrets (0600).
    let o = ok(run(d, &["--home", "B", "--json", "agency", "rotate"]));
    let ev = json_lines(&o);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["type"], "card_rotated");
    assert_eq!(ev[0]["previous_fingerprint"], old_fp.as_str());
    let new_fp = fingerprint(d, "B");
    assert_ne!(new_fp, old_fp);
    assert_eq!(ev[0]["fingerprint"], new_fp.as_str());
    let chain_bytes = std::fs::read(d.join("B/card-chain.note")).expect("chain");
    let chain = CardChain::parse(&chain_bytes).expect("B's chain verifies");
    assert_eq!(chain.len(), 2);
    assert_eq!(
        chain.newest().previous_key.as_ref(),
        Some(&old_identity.signer().verifier())
    );
    assert!(chain.newest().valid_from.is_some());
    let retired = d.join(ev[0]["retired"].as_str().expect("retired"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&retired)
            .expect("retired")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let retired_text = std::fs::read_to_string(&retired).expect("retired");
    assert!(retired_text.contains("AGE-SECRET-KEY-PQ-1"));
    assert!(
        !retired_text.contains("PRIVATE+KEY"),
        "no retired signing key"
    );
    // A rotated card cannot be re-issued (the previous key's signature would be lost).
    assert_eq!(code(&run(d, &["--home", "B", "agency", "reissue-card"])), 8);

    // 101. A chain with a broken link (the previous key's signature made by another key under
    // the same name) is refused (exit 3); a card of agency-b that does not link to the trusted
    // one needs the fingerprint (exit 2 without it).
    let text = String::from_utf8(chain_bytes.clone()).expect("utf8");
    let last_sig = text.lines().last().expect("a line").to_owned();
    let new_card_note = CardChain::parse(&chain_bytes)
        .map(|_| text[text.rfind("{\"format\"").expect("newest card")..].to_owned())
        .expect("newest");
    let unsigned = new_card_note.replace(&format!("{last_sig}\n"), "");
    let other = AgencyIdentity::generate("agency-b".parse().expect("id"));
    let forged = other.signer().cosign(&unsigned).expect("cosign");
    let broken = text.replace(&new_card_note, &forged);
    std::fs::write(d.join("broken-chain.note"), &broken).expect("w");
    let o = run(d, &["--home", "A", "trust", "add", "broken-chain.note"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    agency(d, "Impostor", "agency-b", false);
    let o = run(d, &["--home", "A", "trust", "add", "Impostor/card.note"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));

    // 102. A follows the chain without a fingerprint (it links to the card A trusts).
    let o = ok(run(
        d,
        &["--home", "A", "trust", "add", "B/card-chain.note"],
    ));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains(&new_fp) && out.contains("links to"), "{out}");
    let o = ok(run(d, &["--home", "A", "--json", "trust", "list"]));
    assert_eq!(json_lines(&o)[0]["fingerprint"], new_fp.as_str());

    // 114. B's relay: its home updated in place (the new keys and the chain, its data kept), and
    // restarted. Without --update an existing home is refused; another agency's home too.
    drop(rb);
    let o = run(d, &["--home", "B", "agency", "export-relay", "B-relay"]);
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    let o = run(
        d,
        &[
            "--home",
            "A",
            "agency",
            "export-relay",
            "--update",
            "B-relay",
        ],
    );
    assert_eq!(code(&o), 8, "{}", stderr(&o));
    ok(run(
        d,
        &[
            "--home",
            "B",
            "agency",
            "export-relay",
            "--update",
            "B-relay",
        ],
    ));
    assert_eq!(
        std::fs::read(d.join("B-relay/card.note")).expect("card"),
        std::fs::read(d.join("B/card.note")).expect("card")
    );
    assert!(d.join("B-relay/card-chain.note").exists());
    assert!(
        !d.join("B-relay/retired").exists(),
        "no age secret in a relay home"
    );
    let rb = start_relay(d, "B-relay");

    // 103. A's receipts from before the rotation still verify, and so do both fetched packages.
    let o = run(
        d,
        &[
            "--home",
            "A",
            "verify",
            &format!("A/receipts/{t1}.custody-receipt"),
            &format!("A/receipts/{t1}.delivery-agency-b.receipt"),
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let a_pkg = transfer_dir(&d.join("a-out2"));
    ok(run(
        d,
        &["--home", "A", "verify", a_pkg.to_str().expect("utf8")],
    ));
    let b_pkg = transfer_dir(&d.join("b-out1"));
    ok(run(
        d,
        &["--home", "B", "verify", b_pkg.to_str().expect("utf8")],
    ));

    // 104. After the rotation: B fetches the transfer sent to it before (encrypted to its
    // retired age keys); A -> B and B -> A work with the new keys.
    fetch_one(d, "B", &rb.1, &t3, "b-out3", "three.txt");
    let t4 = send_one(d, "A", &rb.1, "agency-b", "four.txt");
    fetch_one(d, "B", &rb.1, &t4, "b-out4", "four.txt");
    ok(run(d, &["--home", "A", "status", "--relay", &rb.1, &t4]));
    ok(run(
        d,
        &[
            "--home",
            "A",
            "verify",
            &format!("A/receipts/{t4}.custody-receipt"),
            &format!("A/receipts/{t4}.delivery-agency-b.receipt"),
        ],
    ));
    // A's relay picks up A's new trust in B (live reload) and accepts B's new TLS key.
    std::fs::write(d.join("five.txt"), "evidence five.txt\n").expect("w");
    let mut args = vec![
        "--home", "B", "--json", "send", "--relay", &ra.1, "--to", "agency-a",
    ];
    args.extend(LEGAL);
    args.push("five.txt");
    let o = until_ok(d, &args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let t5 = transfer_id(&o);
    fetch_one(d, "A", &ra.1, &t5, "a-out5", "five.txt");

    // B's relay log verifies across the rotation, for B and for A; it needs both log keys.
    let log = d.join("B-relay/relay/audit.log");
    let log_s = log.to_str().expect("utf8");
    ok(run(d, &["--home", "B", "audit", "verify", "--log", log_s]));
    ok(run(
        d,
        &[
            "--home", "A", "audit", "verify", "--agency", "agency-b", "--log", log_s,
        ],
    ));
    let records = rogatory_relay::logfile::read_records(&log)
        .expect("log")
        .records;
    let chain = CardChain::parse(&std::fs::read(d.join("B/card-chain.note")).expect("chain"))
        .expect("chain");
    assert!(verify_records_any(&records, &chain.log_verifiers()).is_ok());
    assert!(
        verify_records(&records, &chain.newest().log_verifier()).is_err(),
        "older checkpoints are signed by the retired log key"
    );
    assert!(
        verify_records(&records, &old_identity.log_signer().verifier()).is_err(),
        "newer checkpoints are signed by the new log key"
    );
}

/// Copies `files` (relative paths) from home `from` into `to`.
fn copy_files(d: &Path, from: &str, to: &str, files: &[&str]) {
    for f in files {
        let dest = d.join(to).join(f);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(d.join(from).join(f), &dest).expect("copy");
    }
}

/// test-plan.md 106: an interrupted rotation. A stage without its completion marker is
/// discarded and the rotation runs; a complete stage half installed (the home refused, exit 3)
/// is completed by the next `agency rotate`, which reports it instead of rotating again.
#[test]
fn an_interrupted_rotation_is_completed_or_discarded() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    agency(d, "C", "agency-c", false);
    // An incomplete stage: discarded.
    std::fs::create_dir_all(d.join("C/rotate.new")).expect("mkdir");
    std::fs::write(d.join("C/rotate.new/card.note"), "garbage").expect("w");
    let before = fingerprint(d, "C");
    ok(run(d, &["--home", "C", "agency", "rotate"]));
    assert!(!d.join("C/rotate.new").exists());
    let after = fingerprint(d, "C");
    assert_ne!(before, after);

    // A rotation made in a copy, staged in C and half installed: the TLS files and the identity
    // are in place, the chain and the card are not.
    let files = [
        "identity.txt",
        "card.note",
        "card-chain.note",
        "tls/key.pem",
        "tls/cert.pem",
    ];
    copy_files(d, "C", "C2", &files);
    ok(run(d, &["--home", "C2", "agency", "rotate"]));
    copy_files(d, "C2", "C/rotate.new", &files[1..3]);
    copy_files(
        d,
        "C2",
        "C",
        &["identity.txt", "tls/key.pem", "tls/cert.pem"],
    );
    std::fs::write(d.join("C/rotate.new/complete"), b"").expect("marker");
    // The new identity beside the old card: nothing signs or connects until it is completed.
    let o = run(d, &["--home", "C", "inbox", "--relay", "127.0.0.1:9"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("interrupted key rotation"),
        "{}",
        stderr(&o)
    );
    // Another half-installed state: the chain installed, the card not: refused (exit 3).
    std::fs::copy(
        d.join("C/rotate.new/card-chain.note"),
        d.join("C/card-chain.note"),
    )
    .expect("copy");
    let o = run(d, &["--home", "C", "trust", "list"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let o = ok(run(d, &["--home", "C", "--json", "agency", "rotate"]));
    assert!(
        stderr(&o).contains("completed an interrupted"),
        "{}",
        stderr(&o)
    );
    let ev = json_lines(&o);
    assert_eq!(ev[0]["type"], "card_rotated");
    assert_eq!(ev[0]["previous_fingerprint"], after.as_str());
    assert_eq!(ev[0]["fingerprint"], fingerprint(d, "C2").as_str());
    assert_eq!(fingerprint(d, "C"), fingerprint(d, "C2"));
    assert!(!d.join("C/rotate.new").exists());
    ok(run(d, &["--home", "C", "trust", "list"]));
}

/// test-plan.md 107: a chain is not followed from a signing key this home revoked; with the
/// fingerprint of the newest card it is trusted as before.
#[test]
fn a_revoked_key_hands_no_trust_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    agency(d, "P", "agency-p", false);
    agency(d, "Q", "agency-q", false);
    trust(d, "P", "Q");
    ok(run(d, &["--home", "Q", "agency", "rotate"]));
    ok(run(
        d,
        &[
            "--home", "P", "trust", "revoke", "agency-q", "--key", "signing",
        ],
    ));
    let o = run(d, &["--home", "P", "trust", "add", "Q/card-chain.note"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let fp = fingerprint(d, "Q");
    ok(run(
        d,
        &[
            "--home",
            "P",
            "trust",
            "add",
            "Q/card-chain.note",
            "--fingerprint",
            &fp,
        ],
    ));
    let o = ok(run(d, &["--home", "P", "--json", "trust", "list"]));
    assert_eq!(json_lines(&o)[0]["fingerprint"], fp.as_str());
}

/// test-plan.md 108: `agency revoke --key signing --retired` revokes the keys an agency rotated
/// from, signed with its current key; a partner that follows its chain imports it, and the
/// current key is untouched. Without a rotation there is nothing to revoke (exit 2), and
/// `--retired` names signing keys only (exit 2).
#[test]
fn an_agency_revokes_its_retired_signing_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    agency(d, "P", "agency-p", false);
    agency(d, "Q", "agency-q", false);
    trust(d, "P", "Q");
    let o = run(
        d,
        &[
            "--home",
            "Q",
            "agency",
            "revoke",
            "--key",
            "signing",
            "--retired",
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    ok(run(d, &["--home", "Q", "agency", "rotate"]));
    let o = run(
        d,
        &[
            "--home",
            "Q",
            "agency",
            "revoke",
            "--key",
            "tls",
            "--retired",
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    ok(run(
        d,
        &["--home", "P", "trust", "add", "Q/card-chain.note"],
    ));
    ok(run(
        d,
        &[
            "--home",
            "Q",
            "agency",
            "revoke",
            "--key",
            "signing",
            "--retired",
            "-o",
            "q-retired.revocation",
        ],
    ));
    ok(run(
        d,
        &["--home", "P", "trust", "revoke", "q-retired.revocation"],
    ));
    let revoked: Vec<String> = std::fs::read_dir(d.join("P/trust/revoked"))
        .expect("revoked")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert!(revoked[0].starts_with("agency-q.signing."), "{revoked:?}");
    // The current key still verifies what it signs: Q's card chain is trusted as before.
    let o = ok(run(d, &["--home", "P", "--json", "trust", "list"]));
    assert_eq!(
        json_lines(&o)[0]["fingerprint"],
        fingerprint(d, "Q").as_str()
    );
    ok(run(d, &["--home", "P", "verify", "Q/card-chain.note"]));
}
