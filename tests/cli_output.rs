//! What every subcommand prints, pinned: the same session of two agencies and a relay is run once
//! for people and once with `--json`, and each run's output (exit code, stdout, stderr, with the
//! values that change from run to run replaced by placeholders) is compared with
//! `tests/snapshots/output-human.txt` and `tests/snapshots/output-json.txt`. Every JSON line is
//! also checked against the "JSON events" table of `docs/cli.md` (its `type` is documented, with
//! exactly these fields), and every subcommand `--help` lists must appear in both sessions.
//!
//! After an intended change: `ROGATORY_UPDATE_SNAPSHOTS=1 cargo test --test cli_output`, then
//! review the diff (`docs/test-plan.md` 80).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// One session: a directory, the mode, and what it printed so far.
struct Session {
    dir: tempfile::TempDir,
    json: bool,
    /// The snapshot text.
    out: String,
    /// Subcommands run (`"trust add"`, …).
    covered: BTreeSet<String>,
    /// Values that change from run to run, and their placeholders (longest first when applied).
    vary: Vec<(String, String)>,
    /// Every JSON line's `type`, with its fields, in order of appearance.
    events: Vec<(String, Vec<String>)>,
}

/// The subcommands of `rogatory`, from `--help` of the program and of each command group.
fn subcommands() -> BTreeSet<String> {
    let names = |args: &[&str]| -> Vec<String> {
        let o = Command::new(bin()).args(args).output().expect("help");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let Some(start) = text.find("Commands:") else {
            return Vec::new();
        };
        text[start..]
            .lines()
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            // A name starts at column 2; wrapped descriptions are indented further.
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| *n != "help")
            .map(str::to_owned)
            .collect()
    };
    let mut all = BTreeSet::new();
    for top in names(&["--help"]) {
        let sub = names(&[&top, "--help"]);
        if sub.is_empty() {
            all.insert(top);
        } else {
            for s in sub {
                all.insert(format!("{top} {s}"));
            }
        }
    }
    all
}

impl Session {
    fn new(json: bool) -> Self {
        Session {
            dir: tempfile::tempdir().expect("tmp"),
            json,
            out: String::new(),
            covered: BTreeSet::new(),
            vary: Vec::new(),
            events: Vec::new(),
        }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn vary(&mut self, value: &str, placeholder: &str) {
        if !value.is_empty() && !self.vary.iter().any(|(v, _)| v == value) {
            self.vary.push((value.to_owned(), placeholder.to_owned()));
            self.vary.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        }
    }

    /// Runs `rogatory [--home HOME] [--json] ARGS`, records it as subcommand `cmd`, checks its
    /// exit code, and adds its normalised output to the snapshot; `keep` lines of stdout at
    /// most (documents such as `man` are long).
    fn run(&mut self, cmd: &str, home: Option<&str>, args: &[&str], want: i32) -> Output {
        self.run_limited(cmd, home, args, want, usize::MAX)
    }

    fn run_limited(
        &mut self,
        cmd: &str,
        home: Option<&str>,
        args: &[&str],
        want: i32,
        keep: usize,
    ) -> Output {
        let mut all: Vec<&str> = Vec::new();
        if let Some(h) = home {
            all.extend(["--home", h]);
        }
        if self.json {
            all.push("--json");
        }
        all.extend_from_slice(args);
        let o = run(self.d(), &all);
        assert_eq!(code(&o), want, "rogatory {}: {}", all.join(" "), stderr(&o));
        self.record(cmd, &all, code(&o), &o.stdout, &o.stderr, keep);
        o
    }

    fn record(&mut self, cmd: &str, args: &[&str], exit: i32, out: &[u8], err: &[u8], keep: usize) {
        self.covered.insert(cmd.to_owned());
        let stdout = String::from_utf8_lossy(out).into_owned();
        if self.json {
            // A script reading `--json` learns how a command ended from its last line: none is
            // silent, even when there was nothing to do.
            assert!(
                !stdout.trim().is_empty(),
                "{cmd}: --json printed no event: {}",
                String::from_utf8_lossy(err)
            );
            for l in stdout.lines() {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{cmd}: a stdout line is not JSON ({e}): {l}"));
                let ev = rogatory_client::json::fields_of(&v)
                    .unwrap_or_else(|| panic!("{cmd}: a line without a type: {l}"));
                self.learn(&v);
                self.events.push(ev);
            }
        }
        let shown: Vec<&str> = stdout.lines().collect();
        let mut stdout_text = String::new();
        // Progress lines come at most every 100 ms: how many, and where among the other lines,
        // depends on the machine. They are checked here (growing, ending at the total) and
        // summed up in one line.
        let mut progress: Vec<(u64, u64)> = Vec::new();
        // Files are fetched in parallel: a run of `file_done` lines is shown sorted.
        let mut files_done: Vec<&str> = Vec::new();
        for l in shown.iter().take(keep) {
            if l.contains(r#""type":"progress""#) {
                let v: serde_json::Value = serde_json::from_str(l).expect("progress");
                progress.push((
                    v["bytes_done"].as_u64().expect("bytes_done"),
                    v["bytes_total"].as_u64().expect("bytes_total"),
                ));
                continue;
            }
            if l.contains(r#""type":"file_done""#) {
                files_done.push(l);
                continue;
            }
            files_done.sort_unstable();
            for f in files_done.drain(..) {
                stdout_text.push_str(f);
                stdout_text.push('\n');
            }
            stdout_text.push_str(l);
            stdout_text.push('\n');
        }
        files_done.sort_unstable();
        for f in files_done {
            stdout_text.push_str(f);
            stdout_text.push('\n');
        }
        if let Some(&(done, total)) = progress.last() {
            assert!(
                progress.windows(2).all(|w| w[0].0 <= w[1].0) && done == total,
                "{cmd}: progress must grow to the total: {progress:?}"
            );
            stdout_text.push_str(&format!("(progress lines growing to {done} of {total})\n"));
        }
        if shown.len() > keep {
            stdout_text.push_str(&format!("… ({} lines in all)\n", shown.len()));
        }
        self.out.push_str(&format!(
            "$ rogatory {}\nexit {exit}\n--- stdout\n{stdout_text}--- stderr\n{}\n",
            args.join(" "),
            String::from_utf8_lossy(err)
        ));
    }

    /// Learns the varying values a JSON line carries (transfer ids, times, keys).
    fn learn(&mut self, v: &serde_json::Value) {
        for (key, placeholder) in [
            ("transfer_id", "<transfer>"),
            ("public_key", "<public-key>"),
            ("received", "<time>"),
            ("time", "<time>"),
        ] {
            if let Some(s) = v[key].as_str() {
                let s = s.to_owned();
                self.vary(&s, placeholder);
            }
        }
    }

    /// The snapshot: what was printed, with what varies between runs replaced.
    fn snapshot(&mut self) -> String {
        // Fetched folders are named with a transfer id's first 8 characters.
        let ids: Vec<String> = words_of(&self.out)
            .filter(|w| w.len() == 32 && is_hex(w))
            .map(str::to_owned)
            .collect();
        for id in ids {
            self.vary(&id, "<transfer>");
            self.vary(&format!("_{}", &id[..8]), "_<short-id>");
        }
        // Digests inside file names (`trust/revoked/<agency>.tls.<sha256>.note`).
        let digests: Vec<String> = words_of(&self.out)
            .filter(|w| w.len() == 64 && is_hex(w))
            .map(str::to_owned)
            .collect();
        for d in digests {
            self.vary(&d, "<sha256>");
        }
        let mut s = self.out.replace(&self.d().display().to_string(), "<tmp>");
        for (v, p) in &self.vary {
            s = s.replace(v.as_str(), p);
        }
        words(&s)
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | ':' | '.' | '_')
}

fn is_hex(t: &str) -> bool {
    t.bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The maximal runs of lowercase hex digits and letters in `s`.
fn words_of(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !c.is_ascii_alphanumeric())
}

/// Replaces, word by word, what differs between runs: fingerprints, SHA-256 digests, transfer
/// ids, times, keys and signatures, ports, durations, the demo's directory.
fn words(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(&classify(word));
        word.clear();
    };
    let s = duration(s);
    for c in s.chars() {
        if is_word_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn classify(w: &str) -> String {
    let core = w.trim_end_matches(['.', ':', ',']);
    let tail = &w[core.len()..];
    let is_fp = |t: &str| {
        let g: Vec<&str> = t.split('-').collect();
        g.len() == 8
            && g.iter().all(|g| {
                g.len() == 7
                    && g.bytes()
                        .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c))
            })
    };
    let is_time = |t: &str| {
        let b = t.as_bytes();
        b.len() >= 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && t.ends_with('Z')
            && b[..4].iter().all(u8::is_ascii_digit)
    };
    let replaced = if is_fp(core) {
        Some("<fingerprint>")
    } else if core.len() == 64 && is_hex(core) {
        Some("<sha256>")
    } else if core.len() == 32 && is_hex(core) {
        Some("<transfer>")
    } else if let Some(port) = core.strip_prefix("127.0.0.1:") {
        port.parse::<u16>().is_ok().then_some("127.0.0.1:<port>")
    } else if let Some(rest) = core.strip_prefix("/tmp/rogatory-demo-") {
        let after = rest.find('/').map_or("", |i| &rest[i..]);
        return format!("<demo-dir>{after}{tail}");
    } else if is_time(core) {
        Some("<time>")
    } else if core.len() >= 40 && (!core.contains('/') || core.contains('+') || core.ends_with('='))
        || core.starts_with("age1")
    {
        Some("<key>")
    } else {
        None
    };
    match replaced {
        Some(p) => format!("{p}{tail}"),
        None => w.to_owned(),
    }
}

/// `done in 2.7 s` → `done in <secs> s`.
fn duration(s: &str) -> String {
    s.lines()
        .map(|l| match l.strip_prefix("done in ") {
            Some(rest) if rest.ends_with(" s") => "done in <secs> s".to_owned(),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + if s.ends_with('\n') { "\n" } else { "" }
}

/// Starts `relay serve` from `home` in the session's mode and records its first line.
fn start_relay(s: &mut Session, home: &str) -> RelayProcess {
    let (relay, line) = start_relay_printing(s.d(), home, s.json);
    s.vary(&relay.1, "<relay>");
    let mut args = vec!["--home", home];
    if s.json {
        args.push("--json");
    }
    args.extend(["relay", "serve", "--listen", "127.0.0.1:0"]);
    s.record("relay serve", &args, 0, line.as_bytes(), b"", usize::MAX);
    relay
}

/// The whole session: every subcommand once (or more), in an order that makes each meaningful.
fn session(json: bool) -> Session {
    let mut s = Session::new(json);
    let d = s.d().to_owned();
    std::fs::write(d.join("note.txt"), b"a note\n").expect("w");
    std::fs::create_dir_all(d.join("case/sub")).expect("mkdir");
    std::fs::write(d.join("case/report.txt"), b"the report\n").expect("w");
    std::fs::write(d.join("case/sub/photo.bin"), vec![7u8; 100_000]).expect("w");

    // Envelope commands.
    s.run("keygen", None, &["keygen", "-o", "key.txt"], 0);
    let key = std::fs::read_to_string(d.join("key.txt")).expect("key");
    let public = key
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .to_owned();
    s.vary(&public, "<public-key>");
    if json {
        // stdout is the key itself: --json needs -o.
        s.run("keygen", None, &["keygen"], 2);
    }
    s.run(
        "encrypt",
        None,
        &["encrypt", "-r", &public, "-o", "note.age", "note.txt"],
        0,
    );
    s.run(
        "decrypt",
        None,
        &["decrypt", "-i", "key.txt", "-o", "note.out", "note.age"],
        0,
    );

    // Two agencies that trust each other.
    for (home, id, name, j) in [
        ("A", "agency-a", "Agency A", "DE"),
        ("B", "agency-b", "Agency B", "FR"),
    ] {
        s.run(
            "agency init",
            Some(home),
            &[
                "agency",
                "init",
                "--id",
                id,
                "--name",
                name,
                "--jurisdiction",
                j,
            ],
            0,
        );
    }
    s.run("agency card", Some("A"), &["agency", "card"], 0);
    s.run(
        "agency fingerprint",
        Some("B"),
        &["agency", "fingerprint"],
        0,
    );
    s.run(
        "agency reissue-card",
        Some("A"),
        &["agency", "reissue-card"],
        0,
    );
    let fp_a = fingerprint(&d, "A");
    let fp_b = fingerprint(&d, "B");
    s.run(
        "trust add",
        Some("A"),
        &["trust", "add", "B/card.note", "--fingerprint", &fp_b],
        0,
    );
    s.run(
        "trust add",
        Some("B"),
        &["trust", "add", "A/card.note", "--fingerprint", &fp_a],
        0,
    );
    s.run("trust list", Some("A"), &["trust", "list"], 0);
    s.run(
        "agency export-relay",
        Some("B"),
        &["agency", "export-relay", "B-relay"],
        0,
    );

    // A sends to B through B's relay; B fetches; both check what they hold.
    let relay = start_relay(&mut s, "B-relay");
    let addr = relay.1.clone();
    let send = [
        "send",
        "--relay",
        &addr,
        "--to",
        "agency-b",
        "--case",
        "XX-2026-1",
        "--legal-basis",
        "MLAT art. 4",
        "--purpose",
        "inquiry",
        "--retain-until",
        "2031-01-01",
        "--classification",
        "restricted",
        "case",
    ];
    s.run("send", Some("A"), &[&send[..], &["--dry-run"]].concat(), 0);
    s.run("send", Some("A"), &send, 0);
    // Nothing to send: every problem listed, nothing sent.
    s.run(
        "send",
        Some("A"),
        &["send", "--relay", &addr, "--to", "agency-b", "missing.txt"],
        2,
    );
    let t = std::fs::read_dir(d.join("A/sent"))
        .expect("sent")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.len() == 32)
        .expect("a sent transfer");
    s.vary(&t, "<transfer>");
    s.run("inbox", Some("B"), &["inbox", "--relay", &addr], 0);
    s.run(
        "fetch",
        Some("B"),
        &["fetch", "--relay", &addr, "--all", "-o", "out"],
        0,
    );
    s.run(
        "fetch",
        Some("B"),
        &["fetch", "--relay", &addr, "--all", "-o", "out"],
        0,
    );
    s.run("status", Some("A"), &["status", "--relay", &addr, &t], 0);
    s.run("inbox", Some("A"), &["inbox", "--relay", &addr], 0);
    let receipt = format!("A/receipts/{t}.custody-receipt");
    s.run("verify", Some("A"), &["verify", &receipt], 0);
    s.run("verify", Some("B"), &["verify", "out"], 0);
    s.run("purge", Some("B"), &["purge", "--dry-run", "out"], 0);
    drop(relay);

    // The relay's maintenance, stopped.
    s.run("relay scrub", Some("B-relay"), &["relay", "scrub"], 0);
    s.run("relay gc", Some("B-relay"), &["relay", "gc"], 0);
    s.run(
        "relay purge",
        Some("B-relay"),
        &["relay", "purge", "--dry-run"],
        0,
    );
    s.run("audit verify", Some("B-relay"), &["audit", "verify"], 0);
    s.run("audit show", Some("B-relay"), &["audit", "show"], 0);
    s.run(
        "audit export",
        Some("B-relay"),
        &["audit", "export", "-o", "audit.jsonl"],
        0,
    );
    // B rotates its keys; A follows the card chain without a fingerprint (custody.md §8.5).
    s.run("agency rotate", Some("B"), &["agency", "rotate"], 0);
    for e in std::fs::read_dir(d.join("B/retired"))
        .expect("retired")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        s.vary(&name, "<retired>.identity.txt");
    }
    s.run(
        "trust add",
        Some("A"),
        &["trust", "add", "B/card-chain.note"],
        0,
    );
    s.run(
        "trust remove",
        Some("A"),
        &["trust", "remove", "agency-b"],
        0,
    );
    // A revokes its TLS key; B imports the revocation.
    s.run(
        "agency revoke",
        Some("A"),
        &[
            "agency",
            "revoke",
            "--key",
            "tls",
            "--reason",
            "laptop stolen",
            "-o",
            "a-tls.revocation",
        ],
        0,
    );
    s.run(
        "trust revoke",
        Some("B"),
        &["trust", "revoke", "a-tls.revocation"],
        0,
    );

    // Documents: printed for people, refused with --json.
    let want = if json { 2 } else { 0 };
    s.run_limited("completions", None, &["completions", "bash"], want, 3);
    s.run_limited("man", None, &["man"], want, 3);
    s.run("demo", None, &["demo"], 0);
    s
}

#[test]
fn every_subcommand_for_people() {
    let mut s = session(false);
    assert_eq!(s.covered, subcommands(), "subcommands run for people");
    check_snapshot("output-human", &s.snapshot());
}

#[test]
fn every_subcommand_with_json() {
    let mut s = session(true);
    assert_eq!(s.covered, subcommands(), "subcommands run with --json");
    let md = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md"))
        .expect("docs/cli.md");
    let documented = rogatory_client::json::documented_events(&md);
    for (t, fields) in &s.events {
        let doc = documented.iter().find(|(d, _)| d == t);
        assert_eq!(
            doc.map(|(_, f)| f),
            Some(fields),
            "a `{t}` line and docs/cli.md \"JSON events\" disagree"
        );
    }
    check_snapshot("output-json", &s.snapshot());
}
