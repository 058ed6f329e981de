//! Crash tests with real processes on 127.0.0.1 (test-plan.md 23, 24; relay issue): `kill -9` of the
//! relay at seeded random points and at named failpoints, and of the sender, during a transfer.
//! After each crash: every byte the sender saw acknowledged is durable at the relay and verifies
//! (`relay scrub`); re-running the same `send` resumes and completes with the right digests and
//! exactly one custody receipt.
//!
//! The receiving side (test-plan.md 29): `kill -9` of `fetch`, and of the relay with it, at seeded
//! random points of the download; every run leaves nothing unverified under a final name, and the
//! last one resumes from the partial files and ends byte-exact with no state left behind.
//!
//! The default run uses a 24 MiB transfer; `cargo test --release --test relay_crash -- --ignored`
//! runs the full size (256 MiB: 20 random relay kills and 10 sender kills while sending; 10 fetch
//! kills and 5 relay kills while fetching) and prints the figures.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

struct Env {
    dir: tempfile::TempDir,
    port: u16,
}

fn ok(o: &std::process::Output) {
    assert_eq!(code(o), 0, "{}", stderr(o));
}

fn setup() -> Env {
    let dir = tempfile::tempdir().expect("tmp");
    two_agencies(dir.path());
    Env { dir, port: 0 }
}

/// Like [`setup`], but B's home has its age identity, so B can fetch what it receives.
fn setup_recipient() -> Env {
    let dir = tempfile::tempdir().expect("tmp");
    agency(dir.path(), "A", "agency-a", false);
    agency(dir.path(), "B", "agency-b", false);
    trust(dir.path(), "A", "B");
    trust(dir.path(), "B", "A");
    Env { dir, port: 0 }
}

impl Env {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the relay (on the same port as before, once known) and waits until it listens.
    fn relay(&mut self, failpoints: Option<&str>) -> Child {
        let listen = format!("127.0.0.1:{}", self.port);
        let mut cmd = Command::new(bin());
        cmd.args(["--home", "B", "relay", "serve", "--listen", &listen])
            .current_dir(self.path())
            .env("ROGATORY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(f) = failpoints {
            cmd.env("ROGATORY_TEST_FAILPOINTS", f);
        }
        let mut child = cmd.spawn().expect("relay");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        self.port = port;
        child
    }

    /// Waits for the sender's `start` event (encryption done, upload starting).
    fn send_started(&self, folder: &str) -> Sender {
        let mut s = self.send(folder);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            match s.rx.recv_timeout(Duration::from_millis(10)) {
                Ok(v) if v["type"] == "start" => break,
                Ok(v) if v["type"] == "progress" => {
                    s.acked = s.acked.max(v["bytes_done"].as_u64().unwrap_or(0))
                }
                Ok(v) if v["type"] == "sent" || v["type"] == "fetched" => {
                    s.summary = Some(v);
                    break;
                }
                _ => {}
            }
            if s.child.try_wait().ok().flatten().is_some() {
                break;
            }
        }
        s
    }

    /// `rogatory --json ARGS` in the test directory, its JSON lines read on a thread.
    fn spawn_json(&self, args: &[&str]) -> Sender {
        let child = Command::new(bin())
            .arg("--json")
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rogatory");
        Sender::watch(child)
    }

    /// `fetch --json TRANSFER -o out` as B.
    fn fetch(&self, transfer: &str) -> Sender {
        let relay = format!("127.0.0.1:{}", self.port);
        self.spawn_json(&[
            "--home", "B", "fetch", "--relay", &relay, transfer, "-o", "out",
        ])
    }

    fn send_args(&self, folder: &str) -> Vec<String> {
        let relay = format!("127.0.0.1:{}", self.port);
        [
            "--home",
            "A",
            "send",
            "--relay",
            &relay,
            "--to",
            "agency-b",
            "--case",
            "C-42",
            "--legal-basis",
            "MLAT art. 18",
            "--purpose",
            "investigation",
            "--retain-until",
            "2030-01-01",
            folder,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn send(&self, folder: &str) -> Sender {
        let args = self.send_args(folder);
        self.spawn_json(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// `send` of `folder` with the sender's failpoint `fp` armed: it must abort.
    fn send_aborting_at(&self, folder: &str, fp: &str) {
        let out = Command::new(bin())
            .args(self.send_args(folder))
            .current_dir(self.path())
            .env("ROGATORY_TEST_FAILPOINTS", fp)
            .stdin(Stdio::null())
            .output()
            .expect("rogatory");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("failpoint"),
            "{fp}: the sender aborted ({:?}): {err}",
            out.status
        );
    }

    /// Polls the relay's index until `target` bytes are durable, the sender ends, or a minute.
    fn wait_durable(&self, s: &mut Sender, target: u64) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if self.path().join("B/relay/relay.db").exists() && self.durable() >= target {
                return;
            }
            s.drain();
            if s.summary.is_some() || s.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Durable ciphertext bytes per the relay's index.
    fn durable(&self) -> u64 {
        let db = rusqlite::Connection::open_with_flags(
            self.path().join("B/relay/relay.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("db");
        let mut q = db
            .prepare("SELECT size, ciphertext_size, durable FROM files")
            .expect("query");
        let rows = q
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .expect("rows");
        rows.map(|r| {
            let (size, ct, d) = r.expect("row");
            let l = rogatory_custody::piece_layout(size, ct).expect("layout");
            l.range(d).map_or(ct, |r| r.start)
        })
        .sum()
    }

    fn custody_receipts(&self) -> usize {
        let p = self.path().join("B/relay/audit.log");
        if !p.exists() {
            return 0;
        }
        rogatory_relay::logfile::read_records(&p)
            .expect("log")
            .records
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.entry).contains("custody-receipt"))
            .count()
    }

    fn scrub_ok(&self) {
        ok(&run(self.path(), &["--home", "B", "relay", "scrub"]));
    }
}

struct Sender {
    child: Child,
    rx: mpsc::Receiver<serde_json::Value>,
    acked: u64,
    summary: Option<serde_json::Value>,
}

impl Sender {
    /// Reads the child's `--json` lines on a thread.
    fn watch(mut child: Child) -> Self {
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Sender {
            child,
            rx,
            acked: 0,
            summary: None,
        }
    }

    fn drain(&mut self) {
        while let Ok(v) = self.rx.try_recv() {
            match v["type"].as_str() {
                Some("progress") => {
                    self.acked = self
                        .acked
                        .max(v["bytes_done"].as_u64().expect("bytes_done"))
                }
                // The last line of a send or of a fetch.
                Some("sent" | "fetched") => self.summary = Some(v),
                _ => {}
            }
        }
    }

    /// Waits until at least `bytes` are acknowledged (or the send ends).
    fn wait_acked(&mut self, bytes: u64, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            self.drain();
            if self.acked >= bytes
                || self.summary.is_some()
                || self.child.try_wait().expect("wait").is_some()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn kill(mut self) -> (u64, Option<serde_json::Value>) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(20));
        self.drain();
        (self.acked, self.summary)
    }

    /// Everything the command writes to stderr, until it closes it.
    fn take_stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        err
    }

    /// Waits for a command that must fail: its exit code and its stderr.
    fn failure(mut self) -> (Option<i32>, String) {
        let err = self.take_stderr();
        let status = self.child.wait().expect("wait");
        (status.code(), err)
    }

    fn finish(mut self) -> serde_json::Value {
        let err = self.take_stderr();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "send failed: {err}");
        std::thread::sleep(Duration::from_millis(20));
        self.drain();
        self.summary.expect("summary")
    }
}

fn make_folder(env: &Env, name: &str, mib: usize, seed: u64) -> PathBuf {
    let d = env.path().join(name);
    std::fs::create_dir_all(d.join("sub")).expect("mkdir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut big = vec![0u8; mib << 20];
    rng.fill(&mut big[..]);
    std::fs::write(d.join("evidence.bin"), &big).expect("write");
    std::fs::write(d.join("sub/notes.txt"), b"chain of custody form 7\n").expect("write");
    std::fs::write(d.join("empty"), b"").expect("write");
    d
}

/// The plaintext of the age file `bytes`, opened with `ids`.
fn open_age(bytes: &[u8], ids: &[rogatory_envelope::AnyIdentity], what: &str) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut rogatory_envelope::Decryptor::new(bytes)
            .expect("header")
            .decrypt(ids)
            .unwrap_or_else(|e| panic!("{what} does not open: {e}")),
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    out
}

/// Every stored transfer, decrypted straight from the relay's packs (with the file keys the sender
/// kept, encrypted to its own key, in `sent/<transfer>/keys.age`: B's home here is relay-only),
/// equals the sender's files byte for byte. No copy of the ciphertext exists at the sender to
/// compare with.
fn relay_holds_the_sources(env: &Env) {
    let text = std::fs::read_to_string(env.path().join("A/identity.txt")).expect("identity");
    let a = rogatory_custody::AgencyIdentity::parse(&text).expect("identity");
    let ids = a.age_identities();
    let db = rusqlite::Connection::open_with_flags(
        env.path().join("B/relay/relay.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("db");
    let mut q = db
        .prepare("SELECT row, manifest, contents FROM transfers JOIN documents USING (row) WHERE state = 'complete'")
        .expect("query");
    let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = q
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect();
    assert!(!rows.is_empty(), "a complete transfer");
    for (row, manifest, contents) in rows {
        let m = rogatory_custody::Manifest::parse(&manifest).expect("manifest");
        // The sender can open the contents too (`custody.md` §5.4): the names are in there.
        let json = open_age(&contents, &ids, "the contents");
        let transfer = m.transfer_id;
        let m = m.open_contents(&json).expect("contents join");
        let keys_age = std::fs::read(env.path().join(format!("A/sent/{transfer}/keys.age")))
            .expect("the sender's keys.age");
        let keys = open_age(&keys_age, &ids, "keys.age, with the sender's key");
        assert_eq!(keys.len(), 16 * m.files.len(), "one key per file");
        let pack =
            std::fs::read(env.path().join(format!("B/relay/inbox/{row}.pack"))).expect("pack");
        let mut at = 0usize;
        for (f, key) in m.files.iter().zip(keys.chunks_exact(16)) {
            let ct = &pack[at..at + f.ciphertext_size as usize];
            at += f.ciphertext_size as usize;
            let d = rogatory_envelope::Decryptor::new(ct).expect("header");
            assert!(
                d.unwrap_file_key(&ids).is_err(),
                "{}: no stanza for the sender in the file",
                f.path
            );
            let mut k = [0u8; 16];
            k.copy_from_slice(key);
            let mut plain = Vec::new();
            std::io::Read::read_to_end(
                &mut d
                    .decrypt_with_file_key(&rogatory_envelope::FileKey::from_bytes(k))
                    .expect("file key"),
                &mut plain,
            )
            .expect("payload");
            let source = std::fs::read(env.path().join(f.path.as_str())).expect("source");
            assert!(plain == source, "{}: byte-exact at the relay", f.path);
        }
        assert_eq!(at, pack.len(), "nothing else in the pack");
    }
}

/// Kills land when a seeded random number of bytes is durable at the relay.
fn crash_run(mib: usize, relay_kills: usize, sender_kills: usize, seed: u64) {
    let mut env = setup();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    make_folder(&env, "case-42", mib, seed);
    let mut relay = env.relay(None);
    let total: u64 = (mib as u64) << 20;
    // Relay and sender kills, in a seeded order, spread over the whole transfer: each lands
    // within two shares of the durable prefix.
    let mut kinds: Vec<bool> = std::iter::repeat_n(true, relay_kills)
        .chain(std::iter::repeat_n(false, sender_kills))
        .collect();
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.gen_range(0..=i));
    }
    // Half the transfer is left for the final, measured run.
    let share = (total / (2 * (kinds.len() + 1)) as u64).max(1);
    for (round, kill_relay) in kinds.into_iter().enumerate() {
        let before = if env.path().join("B/relay/relay.db").exists() {
            env.durable()
        } else {
            0
        };
        let mut s = env.send_started("case-42");
        let target = (before + rng.gen_range(0..2 * share)).min(total - 1);
        env.wait_durable(&mut s, target);
        if kill_relay {
            let _ = relay.kill();
            let _ = relay.wait();
        }
        // The sender dies too when the relay does (it would wait for its idle timeout).
        let (acked, summary) = s.kill();
        let durable = env.durable();
        eprintln!(
            "round {round}: kill -9 {} at ~{target} durable bytes; sender saw {acked} acknowledged, relay has {durable} durable{}",
            if kill_relay { "relay+sender" } else { "sender" },
            if summary.is_some() {
                " (already complete)"
            } else {
                ""
            }
        );
        assert!(
            durable >= acked,
            "round {round}: acknowledged {acked} but only {durable} durable"
        );
        if kill_relay {
            env.scrub_ok();
            relay = env.relay(None);
        }
    }
    let before = env.durable();
    let summary = env.send("case-42").finish();
    let total_ct = summary["bytes_total"].as_u64().expect("total");
    let sent = summary["bytes_sent"].as_u64().expect("sent");
    let skipped = summary["bytes_skipped"].as_u64().expect("skipped");
    assert_eq!(sent + skipped, total_ct);
    let overhead = sent.saturating_sub(total_ct - before);
    assert!(
        overhead <= 1 << 20,
        "the resumed run re-sent {overhead} bytes beyond what the relay lacked"
    );
    assert_eq!(env.custody_receipts(), 1, "exactly one custody receipt");
    relay_holds_the_sources(&env);
    env.scrub_ok();
    eprintln!(
        "crash run: {mib} MiB, {relay_kills} relay kills, {sender_kills} sender kills; final run sent {sent} of {total_ct} bytes \
         (relay lacked {}), {overhead} bytes beyond what the relay lacked",
        total_ct - before
    );
    let _ = relay.kill();
    let _ = relay.wait();
}

/// Bytes B holds of the transfer under `out/`: final files and `.rogatory-partial-*` files.
fn fetched_bytes(dir: &Path) -> (u64, u64) {
    let (mut finals, mut partials) = (0, 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                if e.file_name() != ".rogatory-fetch" && e.file_name() != ".rogatory" {
                    stack.push(e.path());
                }
            } else if e
                .file_name()
                .to_string_lossy()
                .starts_with(".rogatory-partial-")
            {
                partials += m.len();
            } else {
                finals += m.len();
            }
        }
    }
    (finals, partials)
}

/// Every file under its final name in `out/<transfer folder>/case-42` is byte-exact: a final
/// name never holds unverified or partial content, whatever the kill interrupted.
fn finals_are_exact(env: &Env) {
    let Some(folder) = transfer_dirs(&env.path().join("out")).pop() else {
        return;
    };
    let out = folder.join("case-42");
    for rel in ["evidence.bin", "sub/notes.txt", "empty"] {
        let p = out.join(rel);
        if p.exists() {
            assert!(
                std::fs::read(&p).expect("read")
                    == std::fs::read(env.path().join("case-42").join(rel)).expect("source"),
                "{rel}: a final name holds other bytes than the source"
            );
        }
    }
}

/// Fetch-side kills (test-plan.md 29): `kill -9` of `fetch` alone, or of the relay and `fetch`
/// together, when a seeded random number of bytes has arrived; the last run resumes from the
/// partial files (never downloading again what they hold, but for the last chunk) and ends
/// byte-exact with no partial file and no fetch state left.
fn fetch_crash_run(mib: usize, fetch_kills: usize, relay_kills: usize, seed: u64) {
    let mut env = setup_recipient();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    make_folder(&env, "case-42", mib, seed);
    let mut relay = env.relay(None);
    let sent = env.send("case-42").finish();
    let transfer = sent["transfer_id"]
        .as_str()
        .expect("transfer id")
        .to_owned();
    let total: u64 = (mib as u64) << 20;
    let mut kinds: Vec<bool> = std::iter::repeat_n(true, relay_kills)
        .chain(std::iter::repeat_n(false, fetch_kills))
        .collect();
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.gen_range(0..=i));
    }
    let out = env.path().join("out");
    let share = (total / (2 * (kinds.len() + 1)) as u64).max(1);
    let mut completed = false;
    for (round, kill_relay) in kinds.into_iter().enumerate() {
        let (finals, partials) = fetched_bytes(&out);
        let before = finals + partials;
        let target = (before + rng.gen_range(0..2 * share)).min(total - 1);
        let mut f = env.fetch(&transfer);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            let (a, b) = fetched_bytes(&out);
            if a + b >= target || f.child.try_wait().expect("wait").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        if kill_relay {
            let _ = relay.kill();
            let _ = relay.wait();
        }
        let (_, summary) = f.kill();
        let (finals, partials) = fetched_bytes(&out);
        eprintln!(
            "fetch round {round}: kill -9 {} at ~{target} bytes; B holds {finals} bytes under final names, {partials} in partial files{}",
            if kill_relay { "relay+fetch" } else { "fetch" },
            if summary.is_some() {
                " (already complete)"
            } else {
                ""
            }
        );
        finals_are_exact(&env);
        if kill_relay {
            env.scrub_ok();
            relay = env.relay(None);
        }
        if summary.is_some() {
            completed = true;
            break;
        }
    }
    if !completed {
        let (_, held) = fetched_bytes(&out);
        let summary = env.fetch(&transfer).finish();
        let downloaded = summary["bytes_downloaded"].as_u64().expect("downloaded");
        let resumed = summary["bytes_resumed"].as_u64().expect("resumed");
        // A partial keeps whole authenticated chunks: at most the torn last chunk is fetched again.
        assert!(
            resumed + 65_536 >= held,
            "the last run reused {resumed} of the {held} bytes its partial files held"
        );
        let total_ct = summary["bytes_total"].as_u64().expect("total");
        assert!(
            downloaded + resumed >= total_ct && downloaded <= total_ct - resumed + (1 << 20),
            "the last run downloaded {downloaded} bytes with {resumed} resumed of {total_ct}"
        );
        eprintln!(
            "fetch crash run: {mib} MiB; the last run resumed {resumed} bytes and downloaded {downloaded}"
        );
    }
    finals_are_exact(&env);
    assert_eq!(
        fetched_bytes(&out),
        (total + 24, 0),
        "every file in place, no partial file"
    );
    assert!(
        !out.join(".rogatory-fetch").exists(),
        "a completed fetch leaves no state"
    );
    let _ = relay.kill();
    let _ = relay.wait();
}

fn failpoints(mib: usize) {
    let mut env = setup();
    // The second group commit must come before the transfer ends: the relay commits every
    // 20 ms, and a few MiB cross loopback in less, so those two get more data.
    for (i, (fp, mib)) in [
        ("store.after_write=40", mib),
        ("sync.after_fsync=2", mib * 8),
        ("sync.after_commit=2", mib * 8),
        ("log.mid_append=1", mib),
        ("receipt.after_log=1", mib),
    ]
    .into_iter()
    .enumerate()
    {
        let folder = format!("case-{i}");
        make_folder(&env, &folder, mib, i as u64);
        let mut relay = env.relay(Some(fp));
        let mut s = env.send(&folder);
        // The relay aborts at the failpoint; a transfer that ends first fails the test (it
        // would otherwise wait for ever).
        let started = Instant::now();
        let status = loop {
            if let Some(st) = relay.try_wait().expect("relay status") {
                break st;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{fp}: the relay never reached its failpoint"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{fp}: the relay aborted");
        s.wait_acked(u64::MAX, Duration::from_millis(200));
        let (acked, _) = s.kill();
        assert!(
            env.durable() >= acked,
            "{fp}: acknowledged bytes are durable"
        );
        env.scrub_ok();
        let mut relay = env.relay(None);
        let summary = env.send(&folder).finish();
        assert!(
            summary["transfer_id"].is_string(),
            "{fp}: resumed and completed"
        );
        assert_eq!(
            env.custody_receipts(),
            i + 1,
            "{fp}: one custody receipt per transfer"
        );
        let _ = relay.kill();
        let _ = relay.wait();
    }
    relay_holds_the_sources(&env);
}

/// Issue 10: a source rewritten between two runs with its size kept and its modification time
/// restored (as `cp -p`, `tar` and `rsync -t` do) is refused with exit 8, naming the file, and
/// nothing of the new content joins the transfer; `--restart` sends the new content as a new
/// transfer, and the relay holds exactly it.
#[test]
fn a_source_changed_between_runs_is_refused_and_never_mixed() {
    let mut env = setup();
    make_folder(&env, "case-7", 8, 99);
    let mut relay = env.relay(None);
    let mut s = env.send_started("case-7");
    env.wait_durable(&mut s, 2 << 20);
    let (_, summary) = s.kill();
    assert!(summary.is_none(), "killed mid-transfer");
    let path = env.path().join("case-7/evidence.bin");
    let before = std::fs::metadata(&path).expect("meta");
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).expect("rewrite");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(before.modified().expect("mtime")))
        .expect("restore mtime");
    let after = std::fs::metadata(&path).expect("meta");
    assert_eq!(
        (after.len(), after.modified().ok()),
        (before.len(), before.modified().ok())
    );

    let (code, err) = env.send("case-7").failure();
    assert_eq!(code, Some(8), "{err}");
    assert!(
        err.contains("evidence.bin") && err.contains("changed"),
        "{err}"
    );
    assert_eq!(env.custody_receipts(), 0, "nothing receipted");

    // --restart: a new transfer of the current content.
    let relay_addr = format!("127.0.0.1:{}", env.port);
    let o = Command::new(bin())
        .args([
            "--home",
            "A",
            "--json",
            "send",
            "--restart",
            "--relay",
            &relay_addr,
            "--to",
            "agency-b",
            "--case",
            "C-42",
            "--legal-basis",
            "MLAT art. 18",
            "--purpose",
            "investigation",
            "--retain-until",
            "2030-01-01",
            "case-7",
        ])
        .current_dir(env.path())
        .output()
        .expect("send");
    ok(&o);
    assert_eq!(env.custody_receipts(), 1);
    relay_holds_the_sources(&env);
    let _ = relay.kill();
    let _ = relay.wait();
}

/// test-plan.md 32 (`relay.md` §7, `cli.md` "Running the relay"): a partial upload is kept by
/// `relay gc` under the default TTL (168 h) and collected by `relay gc --policy FILE` whose
/// `partial_ttl_hours` is 0; the sender that starts the transfer again then re-sends it from the
/// start (nothing skipped) and gets one custody receipt for exactly its sources.
#[test]
fn a_partial_collected_by_gc_is_sent_again_from_the_start() {
    let mut env = setup();
    make_folder(&env, "case-7", 8, 7);
    let mut relay = env.relay(None);
    let mut s = env.send_started("case-7");
    env.wait_durable(&mut s, 2 << 20);
    let (_, summary) = s.kill();
    assert!(summary.is_none(), "killed mid-transfer");
    let _ = relay.kill();
    let _ = relay.wait();
    // The index counts whole seconds: the partial is now older than a TTL of 0 hours.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(env.path().join("policy.toml"), "partial_ttl_hours = 0\n").expect("policy");
    let gc = |args: &[&str]| {
        let o = Command::new(bin())
            .args(["--home", "B", "--json", "relay", "gc"])
            .args(args)
            .current_dir(env.path())
            .output()
            .expect("gc");
        ok(&o);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains("\"relay_gc\""))
            .count()
    };
    assert_eq!(gc(&[]), 0, "the default TTL keeps a fresh partial");
    assert_eq!(gc(&["--policy", "policy.toml"]), 1, "collected");
    let mut relay = env.relay(None);
    let summary = env.send("case-7").finish();
    let total = summary["bytes_total"].as_u64().expect("total");
    assert_eq!(summary["bytes_skipped"].as_u64(), Some(0), "{summary}");
    assert_eq!(summary["bytes_sent"].as_u64(), Some(total), "{summary}");
    assert_eq!(env.custody_receipts(), 1);
    relay_holds_the_sources(&env);
    let _ = relay.kill();
    let _ = relay.wait();
}

/// test-plan.md 121: a large source (read with direct I/O, a block ahead: `protocol.md` §6.1)
/// rewritten in place while it is sent, its size kept, in a part the sender has not read yet, is
/// refused with exit 8, "modified while it was read", naming the file; nothing is receipted.
/// The relay is stopped (SIGSTOP) while the byte is changed, so the sender, held by its window
/// of unacknowledged bytes, cannot have read that far.
#[test]
fn a_source_modified_while_it_is_read_is_refused() {
    const MIB: u64 = 1 << 20;
    const SIZE_MIB: u64 = 192;
    let mut env = setup();
    let folder = make_folder(&env, "case-8", SIZE_MIB as usize, 5);
    // Killed on drop, stopped or not, whatever assertion fails.
    let relay = RelayProcess(env.relay(None), String::new());
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &relay.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig}");
    };
    let mut s = env.send_started("case-8");
    env.wait_durable(&mut s, MIB);
    signal("-STOP");
    std::thread::sleep(Duration::from_millis(300));
    // The upload window (64 MiB unacknowledged) and one block read ahead bound what the sender
    // has read: the changed byte is past that.
    let at = SIZE_MIB * MIB - 100 * 1024;
    let durable = env.durable();
    assert!(
        durable + 66 * MIB < at,
        "durable {durable}: too far to test"
    );
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(folder.join("evidence.bin"))
        .expect("open");
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).expect("read");
    std::os::unix::fs::FileExt::write_all_at(&f, &[b[0] ^ 0x5a], at).expect("rewrite");
    drop(f);
    signal("-CONT");
    let (code, err) = s.failure();
    assert_eq!(code, Some(8), "{err}");
    assert!(
        err.contains("evidence.bin") && err.contains("modified while it was read"),
        "{err}"
    );
    assert_eq!(env.custody_receipts(), 0, "nothing receipted");
}

/// Sends `sig` (`STOP`, `CONT`) to a child.
fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -{sig}");
}

/// The relay's index: the last file (by index) it holds a piece of, and the header length of
/// the transfer's files (they all have the same).
fn last_held_and_head_len(env: &Env) -> (u64, u64) {
    let db = rusqlite::Connection::open_with_flags(
        env.path().join("B/relay/relay.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("db");
    let mut q = db
        .prepare("SELECT idx, size, ciphertext_size, durable FROM files")
        .expect("query");
    let rows: Vec<(u64, u64, u64, u64)> = q
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
            ))
        })
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect();
    let held = rows
        .iter()
        .filter(|r| r.3 > 0)
        .map(|r| r.0)
        .max()
        .expect("the relay holds a piece");
    let (_, size, ct, _) = rows[0];
    let head_len = rogatory_custody::piece_layout(size, ct)
        .expect("layout")
        .head_len;
    (held, head_len)
}

/// `n` files of different small sizes in `name/`.
fn make_many(env: &Env, name: &str, n: usize, seed: u64) -> PathBuf {
    let d = env.path().join(name);
    std::fs::create_dir_all(&d).expect("mkdir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..n {
        let mut b = vec![0u8; (i * 37) % 3000];
        rng.fill(&mut b[..]);
        std::fs::write(d.join(format!("f{i:04}")), &b).expect("write");
    }
    d
}

/// The one interrupted send's `heads.bin` under A's `outbox/`.
fn outbox_heads(env: &Env) -> PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(env.path().join("A/outbox"))
        .expect("outbox")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("state.bin").exists())
        .collect();
    assert_eq!(dirs.len(), 1, "one interrupted send: {dirs:?}");
    dirs[0].join("heads.bin")
}

/// `protocol.md` §6.1 "Headers": a send that dies while writing a batch of headers
/// (`heads.mid_write`: half a batch and part of a record written, never synced) resumes. The
/// headers that open with their saved keys are kept, the others are made again to the same keys,
/// and every file reaches the recipient and opens byte for byte.
#[test]
fn a_send_that_died_writing_its_headers_resumes_and_every_file_opens() {
    let mut env = setup_recipient();
    let src = make_many(&env, "many", 300, 5);
    let mut relay = env.relay(None);
    env.send_aborting_at("many", "heads.mid_write=1");
    let torn = std::fs::metadata(outbox_heads(&env))
        .expect("heads.bin")
        .len();
    assert!(torn > 0, "half a batch was written");
    let sent = env.send("many").finish();
    let transfer = sent["transfer_id"]
        .as_str()
        .expect("transfer id")
        .to_owned();
    assert_eq!(env.custody_receipts(), 1);
    let (_, head_len) = last_held_and_head_len(&env);
    let kept = std::fs::metadata(env.path().join(format!("A/sent/{transfer}/heads.bin")))
        .expect("kept heads.bin")
        .len();
    assert_eq!(kept, 300 * head_len, "300 whole headers, the torn one gone");
    assert!(kept > torn, "the missing headers were made");
    fetched_equal_sources(&env, &transfer, &src, 300);
    let _ = relay.kill();
    let _ = relay.wait();
}

/// B fetches `transfer`; its first `n` files (`fNNNN` in `src/`) arrived byte for byte.
fn fetched_equal_sources(env: &Env, transfer: &str, src: &Path, n: usize) {
    env.fetch(transfer).finish();
    let name = src.file_name().expect("a folder");
    let out = transfer_dirs(&env.path().join("out"))
        .pop()
        .expect("a transfer folder")
        .join(name);
    for i in 0..n {
        let f = format!("f{i:04}");
        assert!(
            std::fs::read(out.join(&f)).expect("fetched")
                == std::fs::read(src.join(&f)).expect("source"),
            "{f} arrived byte for byte"
        );
    }
}

/// A send of `n` small files in `name/` stopped (`kill -9`) part way, with the relay (so that
/// its index says all it holds: it commits in groups), and its `heads.bin` then cut to the
/// headers of the files the relay holds plus `extra` bytes, as after a crash before the later
/// batches were synced. Returns the sources and the path of `heads.bin`; the relay is stopped.
fn interrupted_with_headers_lost(
    env: &mut Env,
    name: &str,
    n: usize,
    extra: u64,
) -> (PathBuf, PathBuf) {
    let src = make_many(env, name, n, n as u64);
    let mut relay = env.relay(None);
    let mut s = env.send_started(name);
    env.wait_durable(&mut s, 1);
    let _ = relay.kill();
    let _ = relay.wait();
    let (_, summary) = s.kill();
    assert!(summary.is_none(), "killed mid-transfer");
    let (held, head_len) = last_held_and_head_len(env);
    eprintln!("the relay holds pieces of {} of {n} files", held + 1);
    assert!(
        held + 1 < n as u64,
        "the relay holds pieces of the first {} files only",
        held + 1
    );
    let heads = outbox_heads(env);
    std::fs::File::options()
        .write(true)
        .open(&heads)
        .and_then(|f| f.set_len((held + 1) * head_len + extra.min(head_len - 1)))
        .expect("cut heads.bin");
    (src, heads)
}

/// `protocol.md` §6.1 "Headers": a send stopped (`kill -9`, with the relay) part way through many files, whose
/// `heads.bin` then lacks the headers after those of the files the relay holds (part of one
/// left), as after a crash before the later batches were synced. The resume keeps the headers
/// of the files the relay holds, makes the others again to the same keys, and every file
/// reaches the recipient byte for byte.
#[test]
fn a_resume_makes_again_the_headers_a_crash_lost_and_every_file_opens() {
    let mut env = setup_recipient();
    let n = 1200;
    // Part of the next header left.
    let (src, heads) = interrupted_with_headers_lost(&mut env, "more", n, 700);
    let (_, head_len) = last_held_and_head_len(&env);
    let mut relay = env.relay(None);
    // A dry run looks and writes nothing: no header made, no lock left.
    let cut = std::fs::metadata(&heads).expect("heads.bin").len();
    let mut dry = env.send_args("more");
    dry.push("--dry-run".into());
    let o = run(
        env.path(),
        &dry.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("interrupted"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(std::fs::metadata(&heads).expect("heads.bin").len(), cut);
    let sent = env.send("more").finish();
    let transfer = sent["transfer_id"]
        .as_str()
        .expect("transfer id")
        .to_owned();
    assert!(
        sent["bytes_skipped"].as_u64().expect("skipped") > 0,
        "resumed: {sent}"
    );
    let kept = std::fs::metadata(env.path().join(format!("A/sent/{transfer}/heads.bin")))
        .expect("kept heads.bin")
        .len();
    assert_eq!(kept, n as u64 * head_len, "every header whole");
    fetched_equal_sources(&env, &transfer, &src, n);
    let _ = relay.kill();
    let _ = relay.wait();
}

/// A resume that must make headers again checks the recipients' age keys first
/// (`custody.md` §8.3): after B revokes its age keys and A imports the revocation, `send --resume
/// ID` of an interrupted send whose later headers were lost is refused (exit 3, naming the
/// revocation) and sends nothing more.
#[test]
fn a_resume_makes_no_header_to_a_revoked_age_key() {
    let mut env = setup_recipient();
    interrupted_with_headers_lost(&mut env, "rev", 1200, 0);
    ok(&run(
        env.path(),
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
    ok(&run(
        env.path(),
        &["--home", "A", "trust", "revoke", "b-age.revocation"],
    ));
    let transfer = {
        let db = rusqlite::Connection::open_with_flags(
            env.path().join("B/relay/relay.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("db");
        let id: Vec<u8> = db
            .query_row("SELECT transfer FROM transfers", [], |r| r.get(0))
            .expect("one transfer");
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let mut relay = env.relay(None);
    let before = env.durable();
    let relay_addr = format!("127.0.0.1:{}", env.port);
    let o = run(
        env.path(),
        &[
            "--home",
            "A",
            "send",
            "--relay",
            &relay_addr,
            "--resume",
            &transfer,
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("revoked"), "{err}");
    assert_eq!(env.durable(), before, "nothing more was sent");
    let _ = relay.kill();
    let _ = relay.wait();
}

/// A second run of a send that is running is refused at once (exit 8) and changes nothing; the
/// first then completes, and no lock file is left. The relay is stopped (SIGSTOP) while both
/// start, so that the first run holds its lock, waiting for the relay, for as long as the test
/// needs.
#[test]
fn a_second_run_of_a_running_send_is_refused() {
    let mut env = setup();
    make_folder(&env, "case-5", 8, 5);
    let mut relay = env.relay(None);
    signal(&relay, "STOP");
    let first = env.send("case-5");
    let outbox = env.path().join("A/outbox");
    let locked = || {
        std::fs::read_dir(&outbox).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".lock"))
        })
    };
    let start = Instant::now();
    while !locked() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the first run took its lock"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (code, err) = env.send("case-5").failure();
    signal(&relay, "CONT");
    assert_eq!(code, Some(8), "{err}");
    assert!(err.contains("another run of this send"), "{err}");
    let summary = first.finish();
    assert!(summary["transfer_id"].is_string(), "{summary}");
    assert_eq!(env.custody_receipts(), 1);
    let left: Vec<_> = std::fs::read_dir(&outbox)
        .expect("outbox")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".sent"))
        .collect();
    assert!(left.is_empty(), "only the marker is left: {left:?}");
    let _ = relay.kill();
    let _ = relay.wait();
}

/// A send whose `heads.bin` lost the header of a file the relay holds pieces of (a disk that
/// lost synced data) cannot re-send that file byte for byte: the resume is refused (exit 3)
/// rather than sending pieces under another header.
#[test]
fn a_resume_that_lost_the_header_of_a_file_the_relay_holds_is_refused() {
    let mut env = setup();
    make_folder(&env, "case-9", 8, 9);
    let mut relay = env.relay(None);
    let mut s = env.send_started("case-9");
    env.wait_durable(&mut s, 1 << 20);
    let (_, summary) = s.kill();
    assert!(summary.is_none(), "killed mid-transfer");
    let heads = outbox_heads(&env);
    std::fs::File::options()
        .write(true)
        .open(&heads)
        .and_then(|f| f.set_len(0))
        .expect("cut heads.bin");
    let (code, err) = env.send("case-9").failure();
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("header"), "{err}");
    assert_eq!(env.custody_receipts(), 0, "nothing receipted");
    let _ = relay.kill();
    let _ = relay.wait();
}

#[test]
fn relay_and_sender_kills_lose_nothing() {
    crash_run(24, 4, 3, 7);
}

#[test]
fn relay_failpoints_lose_nothing() {
    failpoints(6);
}

#[test]
fn fetch_and_relay_kills_while_fetching_lose_nothing() {
    fetch_crash_run(24, 3, 2, 11);
}

#[test]
#[ignore = "long: 256 MiB with 10 fetch kills and 5 relay kills; run with --release -- --ignored"]
fn fetch_and_relay_kills_while_fetching_lose_nothing_256_mib() {
    fetch_crash_run(256, 10, 5, 2026);
}

#[test]
#[ignore = "long: 256 MiB with 20 relay kills and 10 sender kills; run with --release -- --ignored"]
fn relay_and_sender_kills_lose_nothing_256_mib() {
    crash_run(256, 20, 10, 2026);
}
