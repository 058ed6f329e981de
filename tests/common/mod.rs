//! Shared helpers for the end-to-end tests: run the real `rogatory` binary.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rogatory"))
}

/// Runs `rogatory ARGS` in `dir` with empty stdin.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("spawn rogatory")
}

/// Runs `rogatory ARGS` in `dir`, feeding `stdin`.
pub fn run_with_stdin(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rogatory");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    out
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Names of every entry in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Asserts the command failed with `want` and left nothing new in `dir` but `allowed`.
#[track_caller]
pub fn assert_failed_cleanly(o: &Output, want: i32, dir: &Path, allowed: &[&str]) {
    assert_eq!(code(o), want, "stderr: {}", stderr(o));
    assert!(o.stdout.is_empty(), "nothing on stdout on failure");
    let err = stderr(o);
    assert!(err.starts_with("rogatory: error: "), "stderr: {err}");
    let mut allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
    allowed.sort();
    assert_eq!(listing(dir), allowed, "no partial or temporary output left");
}

/// Asserts exit 0 and returns the output.
pub fn ok(o: Output) -> Output {
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    o
}

/// `agency init` in `home` (`relay_only`: no age identity).
pub fn agency(dir: &Path, home: &str, id: &str, relay_only: bool) {
    let mut args = vec![
        "--home",
        home,
        "agency",
        "init",
        "--id",
        id,
        "--name",
        id,
        "--jurisdiction",
        "XX",
    ];
    if relay_only {
        args.push("--relay-only");
    }
    ok(run(dir, &args));
}

/// The fingerprint of the agency in `home`.
pub fn fingerprint(dir: &Path, home: &str) -> String {
    String::from_utf8(ok(run(dir, &["--home", home, "agency", "fingerprint"])).stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

/// `home` trusts the card of the agency in `other`, by its fingerprint.
pub fn trust(dir: &Path, home: &str, other: &str) {
    let fp = fingerprint(dir, other);
    ok(run(
        dir,
        &[
            "--home",
            home,
            "trust",
            "add",
            &format!("{other}/card.note"),
            "--fingerprint",
            &fp,
        ],
    ));
}

/// Agencies `A` and `B` trusting each other, and `B-relay`: a home of agency-b without its age
/// identity, for the relay.
pub fn agencies_and_relay_home(d: &Path) {
    two_full_agencies(d);
    ok(run(
        d,
        &["--home", "B", "agency", "export-relay", "B-relay"],
    ));
}

/// Two agencies in `dir`, `A` (agency-a) and `B` (agency-b), both with age identities, each
/// trusting the other's card by its fingerprint.
pub fn two_full_agencies(dir: &Path) {
    agency(dir, "A", "agency-a", false);
    agency(dir, "B", "agency-b", false);
    trust(dir, "A", "B");
    trust(dir, "B", "A");
}

/// Two agencies in `dir`: `A` (agency-a, full identity) and `B` (agency-b, relay-only), each
/// trusting the other's card by its fingerprint.
pub fn two_agencies(dir: &Path) {
    agency(dir, "A", "agency-a", false);
    agency(dir, "B", "agency-b", true);
    trust(dir, "A", "B");
    trust(dir, "B", "A");
}

/// A relay process (`relay serve` on 127.0.0.1:0) and its address; killed on drop.
pub struct RelayProcess(pub std::process::Child, pub String);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `relay serve` from `home` and waits until it listens.
pub fn start_relay(dir: &Path, home: &str) -> RelayProcess {
    start_relay_printing(dir, home, false).0
}

/// [`start_relay`] logging at `log` (`ROGATORY_LOG`) into the file `to`, which a test can read
/// while the relay runs or after it.
pub fn start_relay_logging_to(dir: &Path, home: &str, log: &str, to: &Path) -> RelayProcess {
    let file = std::fs::File::create(to).expect("relay log file");
    let (child, line) = spawn_relay_at(dir, home, false, Stdio::from(file), log, &[]);
    let addr = listen_addr(&line);
    RelayProcess(child, addr)
}

/// Starts `relay serve` from `home` (with `--json` if `json`) and waits until it listens; returns
/// it and the line it printed (`relay … listening on ADDR`, or the `listening` event).
pub fn start_relay_printing(dir: &Path, home: &str, json: bool) -> (RelayProcess, String) {
    let (child, line) = spawn_relay(dir, home, json, Stdio::null());
    let addr = if json {
        let v: serde_json::Value = serde_json::from_str(&line).expect("a listening event");
        v["address"].as_str().expect("address").to_owned()
    } else {
        listen_addr(&line)
    };
    (RelayProcess(child, addr), line)
}

/// The address in a relay's `relay … listening on ADDR` line.
pub fn listen_addr(line: &str) -> String {
    line.trim().rsplit(' ').next().expect("addr").to_owned()
}

/// Starts `relay serve` from `home`, waits until it listens, stops it; returns its stderr.
pub fn serve_started(dir: &Path, home: &str) -> String {
    let (mut child, line) = spawn_relay(dir, home, false, Stdio::piped());
    let _ = child.kill();
    let o = child.wait_with_output().expect("output");
    assert!(line.contains("listening"), "{line} {}", stderr(&o));
    stderr(&o)
}

/// `relay serve --listen 127.0.0.1:0` from `home`, logging at `info` to a piped stderr, and
/// the address it listens on.
pub fn spawn_relay_logging(dir: &Path, home: &str) -> (std::process::Child, String) {
    spawn_relay_log(dir, home, "info")
}

/// [`spawn_relay_logging`] with the log filter `log` (`ROGATORY_LOG`).
pub fn spawn_relay_log(dir: &Path, home: &str, log: &str) -> (std::process::Child, String) {
    let (child, line) = spawn_relay_at(dir, home, false, Stdio::piped(), log, &[]);
    let addr = listen_addr(&line);
    (child, addr)
}

/// `relay serve --listen 127.0.0.1:0` from `home`, and its first stdout line.
fn spawn_relay(dir: &Path, home: &str, json: bool, err: Stdio) -> (std::process::Child, String) {
    spawn_relay_at(dir, home, json, err, "warn", &[])
}

/// `relay serve --listen 127.0.0.1:0 EXTRA…` from `home`, waiting until it listens.
pub fn start_relay_with(dir: &Path, home: &str, extra: &[&str]) -> RelayProcess {
    let (child, line) = spawn_relay_at(dir, home, false, Stdio::null(), "warn", extra);
    let addr = listen_addr(&line);
    RelayProcess(child, addr)
}

fn spawn_relay_at(
    dir: &Path,
    home: &str,
    json: bool,
    err: Stdio,
    log: &str,
    extra: &[&str],
) -> (std::process::Child, String) {
    let mut args = vec!["--home", home];
    if json {
        args.push("--json");
    }
    args.extend(["relay", "serve", "--listen", "127.0.0.1:0"]);
    args.extend_from_slice(extra);
    let mut c = Command::new(bin());
    c.args(&args)
        .current_dir(dir)
        .env("ROGATORY_LOG", log)
        .stdin(Stdio::null())
        .stderr(err);
    spawn_listening(c)
}

/// Spawns `relay serve` as `c` says, its stdout piped, and returns it with its first stdout
/// line, once it printed it (`relay … listening on ADDR`, or the `listening` event).
pub fn spawn_listening(mut c: Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = c.stdout(Stdio::piped()).spawn().expect("relay");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    (child, line)
}

/// Compares `actual` with `tests/snapshots/NAME.txt`, or writes it there when
/// `ROGATORY_UPDATE_SNAPSHOTS` is set; a difference names its first line.
#[track_caller]
pub fn check_snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("ROGATORY_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing snapshot {}", path.display()));
    if actual != want {
        let first = actual
            .lines()
            .zip(want.lines())
            .position(|(a, w)| a != w)
            .unwrap_or(actual.lines().count().min(want.lines().count()));
        panic!(
            "snapshot {name} changed at line {}:\n  now: {:?}\n  was: {:?}\n(ROGATORY_UPDATE_SNAPSHOTS=1 to accept, then review the diff)",
            first + 1,
            actual.lines().nth(first),
            want.lines().nth(first)
        );
    }
}

/// The transfer folders `fetch -o out` made (`docs/cli.md` "Fetched output"), sorted: every
/// subdirectory holding a `.rogatory/` package.
pub fn transfer_dirs(out: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(".rogatory").is_dir())
        .collect();
    v.sort();
    v
}

/// The one transfer folder in `out`.
#[track_caller]
pub fn transfer_dir(out: &Path) -> PathBuf {
    let v = transfer_dirs(out);
    assert_eq!(
        v.len(),
        1,
        "one transfer folder in {}: {v:?}",
        out.display()
    );
    v.into_iter().next().expect("one")
}

/// The `transfer_id` of a `--json` command's last event (`sent`, `fetched`, …).
pub fn transfer_id(o: &Output) -> String {
    json_lines(o).pop().expect("summary")["transfer_id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// Every stdout line of `o` parsed as JSON (`--json`: nothing else may be printed there).
pub fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect()
}

/// `relay serve --listen LISTEN` from `home` that must refuse to start: killed (and the test
/// failed) if it is still running after 20 s.
pub fn serve_refused(dir: &Path, home: &str, listen: &str) -> Output {
    serve_refused_with(dir, home, &["--listen", listen])
}

/// `relay serve ARGS…` that must refuse to start: killed (and the test failed) if it serves.
pub fn serve_refused_with(dir: &Path, home: &str, args: &[&str]) -> Output {
    let mut child = Command::new(bin())
        .args(["--home", home, "relay", "serve"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("relay serve {} started instead of refusing", args.join(" "));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// The legal flags of a send that every default relay policy accepts.
pub const LEGAL: [&str; 8] = [
    "--case",
    "XX-2026-0042",
    "--legal-basis",
    "MLAT art. 18",
    "--purpose",
    "investigation",
    "--retain-until",
    "2030-12-31",
];

/// `rogatory --home HOME [--json] send --relay RELAY --to TO` with [`LEGAL`] and `paths`.
pub fn send_with_legal(
    dir: &Path,
    home: &str,
    json: bool,
    relay: &str,
    to: &str,
    paths: &[&str],
) -> Output {
    let mut args = vec!["--home", home];
    if json {
        args.push("--json");
    }
    args.extend(["send", "--relay", relay, "--to", to]);
    args.extend(LEGAL);
    args.extend_from_slice(paths);
    run(dir, &args)
}
