//! Key revocation and live reload at the relay (issue 13; `custody.md` §8.3, `relay.md` §11):
//! a revoked TLS key is refused even in a new self-signed certificate, without restarting the
//! relay; the open connection of an agency no longer trusted is closed; a bad new trust file
//! keeps the previous configuration.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rogatory_transport::certs::{Validity, self_signed_for_key};
use rogatory_transport::net::{Node, Session};
use rogatory_transport::{ErrorCode, Limits, PeerTrust, TlsIdentity};

/// Replaces A's TLS certificate by a new self-signed one over the same key.
fn new_self_signed_cert(d: &Path) {
    let key = std::fs::read_to_string(d.join("A/tls/key.pem")).expect("key");
    let id = "agency-a".parse().expect("id");
    let pem = self_signed_for_key(&id, &key, Validity::days_from_now(30)).expect("cert");
    std::fs::write(d.join("A/tls/cert.pem"), pem).expect("write cert");
}

/// `inbox` from A until it exits with `want` (the relay reloads within a second), at most 10 s.
fn inbox_until(d: &Path, relay: &str, want: i32) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = run(d, &["--home", "A", "inbox", "--relay", relay]);
        if code(&o) == want || Instant::now() > deadline {
            return o;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_revoked_tls_key_is_refused_in_a_new_self_signed_certificate_without_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_agencies(d);
    let relay = start_relay(d, "B");
    // A self-signed certificate over the pinned key is accepted before the revocation.
    new_self_signed_cert(d);
    let o = run(d, &["--home", "A", "inbox", "--relay", &relay.1]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    // A revokes its TLS key; B imports the revocation (verified against A's card).
    let o = ok(run(
        d,
        &[
            "--home",
            "A",
            "--json",
            "agency",
            "revoke",
            "--key",
            "tls",
            "--reason",
            "laptop stolen",
            "-o",
            "rev.note",
        ],
    ));
    let ev = json_lines(&o);
    assert_eq!(ev[0]["type"], "key_revoked", "{ev:?}");
    assert_eq!(ev[0]["key"], "tls");
    let text = std::fs::read_to_string(d.join("rev.note")).expect("rev");
    assert!(text.starts_with("rogatory/v1 key-revocation\n"), "{text}");
    assert!(text.contains("\nreason laptop stolen\n"), "{text}");
    // A revocation altered after signing, or issued for A by a third party, is refused.
    std::fs::write(d.join("forged.note"), text.replace("laptop", "laptob")).expect("w");
    let o = run(d, &["--home", "B", "trust", "revoke", "forged.note"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    ok(run(d, &["--home", "B", "trust", "revoke", "rev.note"]));
    let revoked = std::fs::read_dir(d.join("B/trust/revoked"))
        .expect("dir")
        .count();
    assert_eq!(revoked, 1);
    // A relay home exported from B carries the revocation.
    ok(run(
        d,
        &["--home", "B", "agency", "export-relay", "B-relay"],
    ));
    assert_eq!(
        std::fs::read_dir(d.join("B-relay/trust/revoked"))
            .expect("exported dir")
            .count(),
        1
    );

    // Without a restart: a new self-signed certificate with the revoked key is refused (exit 6).
    new_self_signed_cert(d);
    let o = inbox_until(d, &relay.1, 6);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
}

/// A's transport-level client, from its home's files (trusting B's pin).
fn client_of_a(d: &Path) -> Node {
    let cert = std::fs::read(d.join("A/tls/cert.pem")).expect("cert");
    let key = std::fs::read(d.join("A/tls/key.pem")).expect("key");
    let tls = TlsIdentity::from_pem(&cert, &key).expect("tls");
    let b = TlsIdentity::from_pem(
        &std::fs::read(d.join("B/tls/cert.pem")).expect("b cert"),
        &std::fs::read(d.join("B/tls/key.pem")).expect("b key"),
    )
    .expect("b tls");
    let mut trust = PeerTrust::new();
    trust.add_agency(
        "agency-b".parse().expect("id"),
        vec![b.spki_sha256().expect("pin")],
    );
    Node::client(false, tls, trust, Limits::default()).expect("client")
}

async fn connect(node: &Node, relay: &str) -> Session {
    node.connect(relay.parse().expect("addr"), None)
        .await
        .expect("A connects to B's relay")
}

/// Waits (at most 3 s) for the relay to close `s`; returns how long it took and the code.
async fn closed_within(s: &Session) -> (Duration, Option<ErrorCode>) {
    let t0 = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(3), s.conn.closed())
        .await
        .expect("the relay closed the connection within 3 s");
    let code = match e {
        quinn::ConnectionError::ApplicationClosed(c) => Some(ErrorCode::from_varint(c.error_code)),
        _ => None,
    };
    (t0.elapsed(), code)
}

#[test]
fn removing_an_agency_closes_its_open_connection_and_a_bad_trust_file_keeps_the_old_config() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_agencies(d);
    let relay = start_relay(d, "B");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let node = client_of_a(d);
        // A corrupt new card in the trust store: the reload fails, the old trust stays, the
        // open connection stays open and new ones are accepted.
        let s = connect(&node, &relay.1).await;
        std::fs::write(d.join("B/trust/agency-c.card"), "not a card\n").expect("w");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(s.conn.close_reason().is_none(), "closed after a bad reload");
        let s2 = connect(&node, &relay.1).await;
        std::fs::remove_file(d.join("B/trust/agency-c.card")).expect("rm");

        // `trust remove agency-a` on the running relay closes both connections.
        let t0 = Instant::now();
        ok(run(d, &["--home", "B", "trust", "remove", "agency-a"]));
        let (_, code) = closed_within(&s).await;
        let (_, code2) = closed_within(&s2).await;
        let latency = t0.elapsed();
        eprintln!("connection closed {latency:?} after `trust remove`");
        assert_eq!(code, Some(ErrorCode::NO_LONGER_TRUSTED));
        assert_eq!(code2, Some(ErrorCode::NO_LONGER_TRUSTED));
        // And a new connection is refused.
        assert!(
            node.connect(relay.1.parse().expect("addr"), None)
                .await
                .is_err(),
            "a removed agency connected"
        );
    });
}

#[test]
fn a_local_revocation_closes_the_open_connection_of_the_revoked_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_agencies(d);
    let relay = start_relay(d, "B");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let node = client_of_a(d);
        let s = connect(&node, &relay.1).await;
        // B revokes A's TLS key itself (signed by B's key).
        let o = ok(run(
            d,
            &[
                "--home", "B", "--json", "trust", "revoke", "agency-a", "--key", "tls",
            ],
        ));
        let ev = json_lines(&o);
        assert_eq!(ev[0]["issuer"], "agency-b", "{ev:?}");
        assert_eq!(ev[0]["agency"], "agency-a", "{ev:?}");
        let (_, code) = closed_within(&s).await;
        assert_eq!(code, Some(ErrorCode::NO_LONGER_TRUSTED));
    });
    // A's client is refused, exit 6.
    let o = run(d, &["--home", "A", "inbox", "--relay", &relay.1]);
    assert_eq!(code(&o), 6, "{}", stderr(&o));
}

/// `docs/test-plan.md` 110: SIGHUP makes a running relay reload (it used to terminate it):
/// after a SIGHUP the relay logs the reload and keeps serving; SIGTERM then stops it cleanly
/// (exit 0).
#[test]
fn sighup_reloads_a_running_relay_and_sigterm_stops_it_cleanly() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_agencies(d);
    let (mut child, addr) = spawn_relay_logging(d, "B");
    let pid = child.id().to_string();
    let signal = |sig: &str| {
        let st = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(st.success(), "kill {sig}");
    };
    signal("-HUP");
    // Still serving after the SIGHUP: A can talk to it.
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "SIGHUP stopped the relay"
    );
    let o = run(d, &["--home", "A", "inbox", "--relay", &addr]);
    ok(o);
    signal("-TERM");
    let o = child.wait_with_output().expect("output");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "SIGTERM exit: {err}");
    assert!(err.contains("SIGHUP: reloading"), "{err}");
    assert!(
        err.contains("reloaded trust, revocations and policy"),
        "{err}"
    );
    assert!(err.contains("shutting down"), "{err}");
}

/// `docs/test-plan.md` 111: a revoked age key is never encrypted to (`custody.md` §8.3): B revokes
/// its age keys and A imports the revocation; A's `send` to B is refused with exit 3 naming B,
/// before any relay is contacted, leaving `outbox/` empty; B itself, whose own key is always a
/// recipient, is refused too.
#[test]
fn a_revoked_age_key_is_never_encrypted_to() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_agencies(d);
    std::fs::write(d.join("evidence.bin"), b"evidence").expect("w");
    // A relay that cannot be reached: the refusal must come before any connection.
    let nowhere = "127.0.0.1:9";
    ok(run(
        d,
        &[
            "--home",
            "B",
            "agency",
            "revoke",
            "--key",
            "age",
            "-o",
            "b-age.revocation",
        ],
    ));
    ok(run(
        d,
        &["--home", "A", "trust", "revoke", "b-age.revocation"],
    ));
    let o = send_with_legal(d, "A", false, nowhere, "agency-b", &["evidence.bin"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("the age key of recipient agency-b was revoked"),
        "{err}"
    );
    let outbox = d.join("A/outbox");
    assert!(
        !outbox.exists() || std::fs::read_dir(&outbox).expect("outbox").next().is_none(),
        "a refused send left state in outbox/"
    );
    // The same with --json: one error event, exit 3.
    let o = send_with_legal(d, "A", true, nowhere, "agency-b", &["evidence.bin"]);
    assert_eq!(code(&o), 3);
    let last = String::from_utf8_lossy(&o.stdout);
    assert!(
        last.contains("\"type\":\"error\"") && last.contains("revoked"),
        "{last}"
    );
    // B itself refuses to send to anyone with its own revoked age key (it is always a recipient).
    let o = send_with_legal(d, "B", false, nowhere, "agency-a", &["evidence.bin"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("the age key of this agency was revoked"));
}

/// `docs/test-plan.md` 113: a revoked signing key's later signatures are refused everywhere, its
/// earlier ones keep verifying (`custody.md` §8.3). B's delivery receipt from before the
/// revocation still passes A's `verify`; after B revokes its signing key and A imports the
/// revocation, the custody receipt B's relay signs with that key for A's next send is refused
/// (exit 3), and so is `status` of it.
#[test]
fn a_revoked_signing_key_is_refused_after_its_revocation_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    two_full_agencies(d);
    let relay = start_relay(d, "B");
    std::fs::write(d.join("one.txt"), b"one").expect("w");
    let o = send_with_legal(d, "A", true, &relay.1, "agency-b", &["one.txt"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let t1 = transfer_id(&o);
    ok(run(
        d,
        &[
            "--home", "B", "fetch", "--relay", &relay.1, &t1, "-o", "out",
        ],
    ));
    ok(run(d, &["--home", "A", "status", "--relay", &relay.1, &t1]));
    // Statements carry whole seconds: the revocation comes in a later second.
    std::thread::sleep(Duration::from_millis(1100));
    ok(run(
        d,
        &[
            "--home",
            "B",
            "agency",
            "revoke",
            "--key",
            "signing",
            "-o",
            "b-signing.revocation",
        ],
    ));
    ok(run(
        d,
        &["--home", "A", "trust", "revoke", "b-signing.revocation"],
    ));
    // Earlier signatures keep verifying.
    for r in [
        format!("A/receipts/{t1}.custody-receipt"),
        format!("A/receipts/{t1}.delivery-agency-b.receipt"),
    ] {
        let o = run(d, &["--home", "A", "verify", &r]);
        assert_eq!(code(&o), 0, "{r}: {}", stderr(&o));
    }
    // Later ones do not: the custody receipt of a new send is signed by the revoked key.
    std::fs::write(d.join("two.txt"), b"two").expect("w");
    let o = send_with_legal(d, "A", false, &relay.1, "agency-b", &["two.txt"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("revoked at"), "{}", stderr(&o));
    // `verify` of a statement the revoked key signed later says why it is refused.
    std::thread::sleep(Duration::from_millis(1100));
    ok(run(
        d,
        &[
            "--home",
            "B",
            "agency",
            "revoke",
            "--key",
            "tls",
            "-o",
            "later.revocation",
        ],
    ));
    let o = run(d, &["--home", "A", "verify", "later.revocation"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("revoked at")
            || stderr(&o).contains("revoked at"),
        "{} {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    let o = run(d, &["--home", "A", "status", "--relay", &relay.1, &t1]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}
