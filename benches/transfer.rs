//! The whole product against its baselines, in one run (issue 10): the real `rogatory` binary
//! (`send` through a real `relay serve` on 127.0.0.1, then `fetch`) next to a bare quinn stream,
//! `scp`, `age -d` and `rsync` on the same machine.
//!
//! `cargo bench --bench transfer`
//!
//! Measured, best of N rounds (wall time from process start to exit; `send` exits once the custody
//! receipt is saved, `fetch` once every file is in place and the delivery receipt is saved):
//!
//! 1. One file of `ROGATORY_BENCH_MIB` MiB (default 1024):
//!    - a bare quinn stream in this process, same mutual TLS configuration (AES-128-GCM), no disk;
//!    - `send` and `fetch` with the sender's, the relay's and the recipient's homes (and the
//!      source) on tmpfs, then on disk (page cache dropped before each disk run when possible);
//!    - on disk, the same durability with standard tools through a throwaway loopback sshd
//!      (`benches/loopback-sshd.sh`): `scp -c aes128-gcm@openssh.com` then a remote `sync FILE`;
//!      `scp` download of the age file, `age -d` (else `rage -d`, else `rogatory decrypt`), `sync FILE`;
//!    - for `send` and `fetch`: peak RSS (`/usr/bin/time -f %M`), the sender home's growth
//!      (sampled every 100 ms), the time to the first `progress` event with `bytes_done > 0` and
//!      to the relay's home first growing by 1 MiB.
//! 2. `ROGATORY_BENCH_FILES` files of 4 KiB (default 5000), homes on disk: `send` of the folder
//!    and `fetch --all`, against `rsync -a` over ssh both ways.
//!
//! Then it prints the ratios against the goals of issue 10. Anything that cannot be measured here
//! (no sshd, scp, rsync, tmpfs, disk directory, `/usr/bin/time`, no permission to drop the page
//! cache) is named with the reason; a number is never printed for something not measured. Exit 1
//! if any measured command failed.
//!
//! Environment: `ROGATORY_BENCH_MIB`, `ROGATORY_BENCH_FILES`, `ROGATORY_BENCH_ROUNDS` (default 2),
//! `ROGATORY_BENCH_ONLY=file|bulk`, `ROGATORY_BENCH_TMPFS` (default /dev/shm),
//! `ROGATORY_BENCH_DISK` (default this target directory's tmp/, else /var/tmp),
//! `ROGATORY_BIN` (default: the `rogatory` binary this bench was built with).

#[path = "../crates/transport/benches/bare_quinn/mod.rs"]
mod bare_quinn;

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const SSH_CIPHER: &str = "aes128-gcm@openssh.com";

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// A directory on a given kind of file system.
struct Place {
    name: &'static str,
    dir: PathBuf,
    fs: String,
}

/// `stat -f -c %T DIR`: the file system type (`tmpfs`, `ext2/ext3`, `xfs`, …).
fn fs_type(dir: &Path) -> Result<String, String> {
    let o = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run stat -f: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "stat -f {}: {}",
            dir.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn is_ram_fs(fs: &str) -> bool {
    fs == "tmpfs" || fs == "ramfs"
}

fn tmpfs_place() -> Result<Place, String> {
    let dir = PathBuf::from(
        std::env::var("ROGATORY_BENCH_TMPFS").unwrap_or_else(|_| "/dev/shm".to_owned()),
    );
    if !dir.is_dir() {
        return Err(format!("{} does not exist", dir.display()));
    }
    let fs = fs_type(&dir)?;
    if fs != "tmpfs" {
        return Err(format!("{} is {fs}, not tmpfs", dir.display()));
    }
    Ok(Place {
        name: "tmpfs",
        dir,
        fs,
    })
}

fn disk_place() -> Result<Place, String> {
    let candidates = match std::env::var("ROGATORY_BENCH_DISK") {
        Ok(d) => vec![PathBuf::from(d)],
        Err(_) => vec![
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
            PathBuf::from("/var/tmp"),
        ],
    };
    let mut why = Vec::new();
    for dir in candidates {
        if let Err(e) = fs::create_dir_all(&dir) {
            why.push(format!("{}: {e}", dir.display()));
            continue;
        }
        match fs_type(&dir) {
            Ok(fs) if !is_ram_fs(&fs) => {
                return Ok(Place {
                    name: "disk",
                    dir,
                    fs,
                });
            }
            Ok(fs) => why.push(format!("{} is {fs}", dir.display())),
            Err(e) => why.push(e),
        }
    }
    Err(format!("no directory on disk: {}", why.join("; ")))
}

/// `name` on PATH (and in the sbin directories, for sshd).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// CPU seconds (user + system) of a live process, and with `children` those of the children it
/// has reaped (how the loopback sshd's sessions are counted).
fn proc_cpu(pid: u32, children: bool, clk_tck: f64) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14-17 of proc(5) (utime, stime, cutime, cstime); `rest` starts at field 3.
    let mut ticks = f.get(11)? + f.get(12)?;
    if children {
        ticks += f.get(13)? + f.get(14)?;
    }
    Some(ticks as f64 / clk_tck)
}

/// Peak resident set size of a live process (`VmHWM`), in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// What `du -sb` prints: the apparent size of every entry under `dir`, the directories included.
/// Entries that vanish while it walks (renamed temporary files) are skipped.
fn du_sb(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&d) else {
            continue;
        };
        total += m.len();
        if m.is_dir()
            && let Ok(rd) = fs::read_dir(&d)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    total
}

/// Regular files and their bytes under `dir`, leaving out `.rogatory*` work entries.
fn tree_stats(dir: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".rogatory") {
                continue;
            }
            let Ok(m) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                files += 1;
                bytes += m.len();
            }
        }
    }
    (files, bytes)
}

/// Incompressible bytes (xorshift64*), so that nothing gains from compression.
fn fill(buf: &mut [u8], state: &mut u64) {
    for c in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

fn write_random(path: &Path, bytes: u64, seed: u64) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    let mut state = seed | 1;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill(&mut buf[..n], &mut state);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// User and system CPU seconds and peak RSS of a command, from `/usr/bin/time`.
#[derive(Clone, Copy)]
struct Usage {
    user: f64,
    sys: f64,
    max_rss_kib: u64,
}

/// One measured command.
struct Measured {
    wall: Duration,
    usage: Option<Usage>,
    /// Stdout lines with the time since the process was spawned.
    lines: Vec<(Duration, String)>,
    /// Per watched directory: (time since spawn, `du -sb`) every 100 ms.
    samples: Vec<Vec<(Duration, u64)>>,
}

/// One round of one row of the table.
#[derive(Clone)]
struct Sample {
    wall: Duration,
    /// User + system seconds of the client processes (from `/usr/bin/time`), if known.
    client_cpu: Option<f64>,
    /// CPU seconds of the server side (the relay, or the loopback sshd's sessions), if known.
    server_cpu: Option<f64>,
    max_rss_kib: Option<u64>,
    /// Steps of a composite baseline (scp, sync, …) and their wall times.
    parts: Vec<(String, Duration)>,
}

impl Sample {
    fn of(m: &Measured, server_cpu: Option<f64>) -> Sample {
        Sample {
            wall: m.wall,
            client_cpu: m.usage.map(|u| u.user + u.sys),
            server_cpu,
            max_rss_kib: m.usage.map(|u| u.max_rss_kib),
            parts: Vec::new(),
        }
    }

    /// The steps run one after the other: walls and CPU add up.
    fn chain(steps: &[(&str, &Measured, Option<f64>)]) -> Sample {
        let mut s = Sample {
            wall: Duration::ZERO,
            client_cpu: Some(0.0),
            server_cpu: Some(0.0),
            max_rss_kib: None,
            parts: Vec::new(),
        };
        for (name, m, server) in steps {
            s.wall += m.wall;
            s.client_cpu = s.client_cpu.zip(m.usage).map(|(a, u)| a + u.user + u.sys);
            s.server_cpu = match (s.server_cpu, server) {
                (Some(a), Some(b)) => Some(a + b),
                (a, None) => a,
                (None, _) => None,
            };
            s.max_rss_kib = worst(s.max_rss_kib, m.usage.map(|u| u.max_rss_kib));
            s.parts.push(((*name).to_owned(), m.wall));
        }
        s
    }
}

/// A row of the table: its rounds, or why it was not measured.
struct Row {
    label: String,
    bytes: u64,
    samples: Vec<Sample>,
    errors: Vec<String>,
    skipped: Option<String>,
}

impl Row {
    fn new(label: impl Into<String>, bytes: u64) -> Row {
        Row {
            label: label.into(),
            bytes,
            samples: Vec::new(),
            errors: Vec::new(),
            skipped: None,
        }
    }

    fn skip(label: impl Into<String>, why: impl Into<String>) -> Row {
        let mut r = Row::new(label, 0);
        r.skipped = Some(why.into());
        r
    }

    fn push(&mut self, s: Result<Sample, String>) {
        match s {
            Ok(s) => self.samples.push(s),
            Err(e) => self.errors.push(e),
        }
    }

    fn best(&self) -> Option<&Sample> {
        if !self.errors.is_empty() {
            return None;
        }
        self.samples.iter().min_by_key(|s| s.wall)
    }
}

/// Worst-of-rounds figures of one `send` + `fetch` placement.
#[derive(Default)]
struct Resources {
    rounds: usize,
    send_rss_kib: Option<u64>,
    fetch_rss_kib: Option<u64>,
    relay_hwm_kib: Option<u64>,
    home_growth_during: Option<u64>,
    home_growth_after: Option<i64>,
    first_progress: Option<Option<Duration>>,
    relay_first_mib: Option<Option<Duration>>,
    fetch_progress_mid: Option<usize>,
    fetch_first_progress: Option<Option<Duration>>,
}

fn worst<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Latest of two "first time" observations; `None` inside means "never happened" and wins.
fn worst_time(a: Option<Option<Duration>>, b: Option<Duration>) -> Option<Option<Duration>> {
    match a {
        None => Some(b),
        Some(None) => Some(None),
        Some(Some(x)) => Some(b.map(|y| x.max(y))),
    }
}

/// What one `send` + `fetch` round measured.
struct RogRound {
    send: Sample,
    fetch: Sample,
    send_rss_kib: Option<u64>,
    fetch_rss_kib: Option<u64>,
    relay_hwm_kib: Option<u64>,
    /// `None` when not sampled.
    home_growth_during: Option<u64>,
    home_growth_after: i64,
    first_progress: Option<Duration>,
    /// `None` when not sampled; `Some(None)` when it never grew by 1 MiB.
    relay_first_mib: Option<Option<Duration>>,
    fetch_progress_mid: usize,
    fetch_first_progress: Option<Duration>,
    /// The round's homes, relay and fetched copy, removed when dropped.
    dir: tempfile::TempDir,
}

/// The relay process of a round; killed on drop.
struct Relay {
    child: Child,
    addr: String,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The loopback sshd (`benches/loopback-sshd.sh`); stopped on drop.
struct Sshd {
    script: PathBuf,
    dir: tempfile::TempDir,
    config: PathBuf,
    pid: Option<u32>,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

impl Sshd {
    fn start() -> Result<Sshd, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/loopback-sshd.sh");
        let dir = tempfile::Builder::new()
            .prefix("rogatory-bench-sshd-")
            .tempdir()
            .map_err(|e| format!("temporary directory for sshd: {e}"))?;
        let o = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let port = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let pid = fs::read_to_string(dir.path().join("sshd.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let sshd = Sshd {
            script,
            config: dir.path().join("ssh_config"),
            dir,
            pid,
        };
        if !o.status.success() || port.is_empty() {
            return Err(format!(
                "loopback sshd did not start: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(sshd)
    }

    /// CPU seconds of the sshd sessions that have ended so far.
    fn cpu(&self, clk_tck: f64) -> Option<f64> {
        // A session's CPU reaches the listener's counters once the listener has reaped it.
        std::thread::sleep(Duration::from_millis(100));
        proc_cpu(self.pid?, true, clk_tck)
    }

    fn ssh_e(&self) -> String {
        format!("ssh -F {} -c {SSH_CIPHER}", self.config.display())
    }
}

/// Which program decrypts the downloaded age file in the scp baseline.
enum Decryptor {
    Age(PathBuf),
    Rage(PathBuf),
    Ours,
}

struct Bench {
    bin: PathBuf,
    mib: u64,
    rounds: usize,
    files: u64,
    time: Option<PathBuf>,
    clk_tck: f64,
    nproc: usize,
    retain_until: String,
    /// Whether dropping the page cache works (checked once).
    drop_caches: Result<(), String>,
    /// Every measurement not made, and why.
    skipped: Vec<String>,
}

impl Bench {
    fn rogatory(&self, cwd: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.current_dir(cwd);
        c
    }

    /// Runs a set-up command (not measured); its stdout and stderr, or an error naming it.
    fn setup_cmd(&self, mut c: Command) -> Result<String, String> {
        let o = c
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {:?}: {e}", c.get_program()))?;
        if !o.status.success() {
            return Err(format!(
                "{} failed ({}): {}",
                describe(&c),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }

    fn rog(&self, cwd: &Path, args: &[&str]) -> Result<String, String> {
        let mut c = self.rogatory(cwd);
        c.args(args);
        self.setup_cmd(c)
    }

    /// Drops the page cache before a disk run, if that works here.
    fn drop_caches(&self) {
        if self.drop_caches.is_ok() {
            let _ = try_drop_caches();
        }
    }

    /// Runs `c` to completion under `/usr/bin/time` (if present), timing it from spawn to exit,
    /// timestamping its stdout lines and sampling `du -sb` of `watch` every 100 ms.
    fn measure(&self, c: &Command, watch: &[PathBuf]) -> Result<Measured, String> {
        let timefile = tempfile::NamedTempFile::new()
            .map_err(|e| format!("temporary file for /usr/bin/time: {e}"))?;
        let mut cmd = match &self.time {
            Some(t) => {
                let mut w = Command::new(t);
                w.args(["-f", "%e %U %S %M", "-o"])
                    .arg(timefile.path())
                    .arg(c.get_program())
                    .args(c.get_args());
                w
            }
            None => {
                let mut w = Command::new(c.get_program());
                w.args(c.get_args());
                w
            }
        };
        if let Some(d) = c.get_current_dir() {
            cmd.current_dir(d);
        }
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", describe(c)))?;
        let sampler = (!watch.is_empty()).then(|| {
            let (stop, dirs) = (stop.clone(), watch.to_vec());
            std::thread::spawn(move || {
                let mut out = vec![Vec::new(); dirs.len()];
                loop {
                    for (d, o) in dirs.iter().zip(out.iter_mut()) {
                        o.push((start.elapsed(), du_sb(d)));
                    }
                    if stop.load(Ordering::SeqCst) {
                        return out;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .map(|l| (start.elapsed(), l))
                .collect::<Vec<_>>()
        });
        let mut stderr = child.stderr.take().expect("piped stderr");
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let status = child
            .wait()
            .map_err(|e| format!("wait for {}: {e}", describe(c)))?;
        let wall = start.elapsed();
        stop.store(true, Ordering::SeqCst);
        let samples = sampler
            .map(|h: JoinHandle<_>| h.join().expect("the du sampler"))
            .unwrap_or_default();
        let lines = reader.join().expect("the stdout reader");
        let err = err_reader.join().expect("the stderr reader");
        if !status.success() {
            let tail: Vec<&str> = err.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "{} failed ({status}): {}",
                describe(c),
                tail.join(" | ")
            ));
        }
        let usage = self.time.as_ref().and_then(|_| {
            let s = fs::read_to_string(timefile.path()).ok()?;
            let last = s.lines().rev().find(|l| !l.trim().is_empty())?;
            let f: Vec<&str> = last.split_whitespace().collect();
            Some(Usage {
                user: f.get(1)?.parse().ok()?,
                sys: f.get(2)?.parse().ok()?,
                max_rss_kib: f.get(3)?.parse().ok()?,
            })
        });
        Ok(Measured {
            wall,
            usage,
            lines,
            samples,
        })
    }

    /// Two agencies in `base`: `A` sends, `B` receives, `B-relay` (B without its age key) serves.
    fn agencies(&self, base: &Path) -> Result<(), String> {
        for (home, id) in [("A", "agency-a"), ("B", "agency-b")] {
            self.rog(
                base,
                &[
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
                ],
            )?;
        }
        for (home, other) in [("A", "B"), ("B", "A")] {
            let fp = self.rog(base, &["--home", other, "agency", "fingerprint"])?;
            let fp = fp.lines().next().unwrap_or_default().trim().to_owned();
            self.rog(
                base,
                &[
                    "--home",
                    home,
                    "trust",
                    "add",
                    &format!("{other}/card.note"),
                    "--fingerprint",
                    &fp,
                ],
            )?;
        }
        self.rog(base, &["--home", "B", "agency", "export-relay", "B-relay"])?;
        Ok(())
    }

    fn start_relay(&self, base: &Path) -> Result<Relay, String> {
        let log =
            fs::File::create(base.join("relay.log")).map_err(|e| format!("relay log file: {e}"))?;
        let mut child = self
            .rogatory(base)
            .args([
                "--home",
                "B-relay",
                "relay",
                "serve",
                "--listen",
                "127.0.0.1:0",
            ])
            .env("ROGATORY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start the relay: {e}"))?;
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        // Keep draining its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || io::copy(&mut out, &mut io::sink()));
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        let relay = Relay { child, addr };
        if !line.contains("listening") || relay.addr.is_empty() {
            return Err(format!(
                "the relay did not start: {}",
                fs::read_to_string(base.join("relay.log"))
                    .unwrap_or_default()
                    .trim()
            ));
        }
        Ok(relay)
    }

    /// One `send` of `src` and one `fetch --all` of it, with fresh homes under `place`. With
    /// `sample`, the sender's and the relay's homes are measured every 100 ms during the send
    /// (not for thousands of small files, where walking them would cost the send a core).
    fn rogatory_round(
        &self,
        place: &Place,
        src: &Path,
        expect: (u64, u64),
        sample: bool,
    ) -> Result<RogRound, String> {
        let base = tempfile::Builder::new()
            .prefix("rogatory-bench-round-")
            .tempdir_in(&place.dir)
            .map_err(|e| format!("round directory in {}: {e}", place.dir.display()))?;
        let b = base.path();
        self.agencies(b)?;
        let relay = self.start_relay(b)?;
        let relay_pid = relay.child.id();
        let (home, relay_home) = (b.join("A"), b.join("B-relay"));
        let home0 = du_sb(&home);
        let relay0 = du_sb(&relay_home);
        let cold = !is_ram_fs(&place.fs);

        if cold {
            self.drop_caches();
        }
        let mut send = self.rogatory(b);
        send.args(["--home", "A", "--json", "send", "--relay", &relay.addr])
            .args(["--to", "agency-b", "--case", "BENCH-2026-1"])
            .args(["--legal-basis", "bench", "--purpose", "benchmark"])
            .args(["--retain-until", &self.retain_until])
            .arg(src);
        let cpu0 = proc_cpu(relay_pid, false, self.clk_tck);
        let watch = if sample {
            vec![home.clone(), relay_home.clone()]
        } else {
            Vec::new()
        };
        let m = self.measure(&send, &watch)?;
        let cpu1 = proc_cpu(relay_pid, false, self.clk_tck);
        let send_sample = Sample::of(&m, cpu1.zip(cpu0).map(|(a, b)| a - b));
        let events = json_events(&m.lines);
        if !events.iter().any(|(_, v)| v["type"] == "sent") {
            return Err("send printed no JSON sent event".into());
        }
        let send_first_progress = first_progress(&events);
        let home_growth_during = m.samples.first().map(|samples| {
            samples
                .iter()
                .map(|&(_, s)| s.saturating_sub(home0))
                .max()
                .unwrap_or(0)
        });
        let home_growth_after = du_sb(&home) as i64 - home0 as i64;
        let relay_first_mib = m.samples.get(1).map(|samples| {
            samples
                .iter()
                .find(|&&(_, s)| s >= relay0 + MIB)
                .map(|&(t, _)| t)
        });

        if cold {
            self.drop_caches();
        }
        // The fetched copy's pages, resident (see `prefault`).
        prefault(place, expect.1);
        let out = b.join("out");
        let mut fetch = self.rogatory(b);
        fetch
            .args(["--home", "B", "--json", "fetch", "--relay", &relay.addr])
            .args(["--all", "-o"])
            .arg(&out);
        let cpu0 = proc_cpu(relay_pid, false, self.clk_tck);
        let fm = self.measure(&fetch, &[])?;
        let cpu1 = proc_cpu(relay_pid, false, self.clk_tck);
        let fetch_sample = Sample::of(&fm, cpu1.zip(cpu0).map(|(a, b)| a - b));
        let got = tree_stats(&out);
        if got != expect {
            return Err(format!(
                "fetch wrote {} files, {} bytes; expected {} files, {} bytes",
                got.0, got.1, expect.0, expect.1
            ));
        }
        let fevents = json_events(&fm.lines);
        // Progress events strictly between the start and the end of the download.
        let mid = fevents
            .iter()
            .filter(|(_, v)| v["type"] == "progress")
            .filter(|(_, v)| {
                let total = v["bytes_total"].as_u64().unwrap_or(0);
                v["bytes_done"].as_u64().is_some_and(|d| d > 0 && d < total)
            })
            .count();
        let relay_hwm_kib = vm_hwm_kib(relay_pid);
        drop(relay);
        Ok(RogRound {
            send_rss_kib: send_sample.max_rss_kib,
            fetch_rss_kib: fetch_sample.max_rss_kib,
            send: send_sample,
            fetch: fetch_sample,
            relay_hwm_kib,
            home_growth_during,
            home_growth_after,
            first_progress: send_first_progress,
            relay_first_mib,
            fetch_progress_mid: mid,
            fetch_first_progress: first_progress(&fevents),
            dir: base,
        })
    }
}

fn describe(c: &Command) -> String {
    let prog = Path::new(c.get_program())
        .file_name()
        .unwrap_or(c.get_program())
        .to_string_lossy()
        .into_owned();
    let args: Vec<String> = c
        .get_args()
        .take(6)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("`{prog} {}`", args.join(" "))
}

fn json_events(lines: &[(Duration, String)]) -> Vec<(Duration, serde_json::Value)> {
    lines
        .iter()
        .filter_map(|(t, l)| serde_json::from_str(l).ok().map(|v| (*t, v)))
        .collect()
}

/// Time of the first `progress` event with `bytes_done > 0`.
fn first_progress(events: &[(Duration, serde_json::Value)]) -> Option<Duration> {
    events
        .iter()
        .find(|(_, v)| v["type"] == "progress" && v["bytes_done"].as_u64().is_some_and(|d| d > 0))
        .map(|(t, _)| *t)
}

fn try_drop_caches() -> Result<(), String> {
    let _ = Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| format!("cannot write /proc/sys/vm/drop_caches: {e}"))
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn retain_until() -> String {
    let d = time::OffsetDateTime::now_utc().date() + time::Duration::days(365);
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// This machine's CPU time so far, in ticks: what the hypervisor gave to other guests while
/// its virtual CPUs wanted to run ("steal", the 8th field of `/proc/stat`'s first line), and
/// all of it. A host busy with other guests slows every row of a round, ours and the
/// baselines alike, by as much as it takes.
fn cpu_ticks() -> Option<(u64, u64)> {
    let s = fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((*f.get(7)?, f.iter().sum()))
}

/// The share of CPU time stolen by the host since `from` ([`cpu_ticks`]).
fn steal_since(from: Option<(u64, u64)>) -> String {
    match (from, cpu_ticks()) {
        (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
            format!(
                "{:.1}%",
                100.0 * s1.saturating_sub(s0) as f64 / (t1 - t0) as f64
            )
        }
        _ => "-".into(),
    }
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mib_of(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

/// The table line of one row.
fn print_row(r: &Row, nproc: usize) {
    if let Some(why) = &r.skipped {
        println!("{:<52} skipped: {why}", r.label);
        return;
    }
    if !r.errors.is_empty() {
        println!(
            "{:<52} FAILED in {} of {} rounds: {}",
            r.label,
            r.errors.len(),
            r.errors.len() + r.samples.len(),
            r.errors[0]
        );
        return;
    }
    let Some(s) = r.best() else {
        println!("{:<52} not measured", r.label);
        return;
    };
    let mbs = r.bytes as f64 / secs(s.wall) / 1e6;
    let cpu = s.client_cpu.map(|c| c + s.server_cpu.unwrap_or(0.0));
    let busy = cpu.map(|c| c / secs(s.wall));
    let hint = match busy {
        Some(b) if b >= 0.85 * nproc as f64 => "CPU-bound (all cores busy)",
        Some(b) if b >= 0.85 => "CPU: one core or more busy",
        Some(_) => "mostly waiting (disk, fsync, pipeline)",
        None => "",
    };
    println!(
        "{:<52} {:>7.2} {:>8.1} {:>10} {:>10} {:>6} {:>10}  {hint}",
        r.label,
        secs(s.wall),
        mbs,
        opt(s.client_cpu, |c| format!("{c:.2}")),
        opt(s.server_cpu, |c| format!("{c:.2}")),
        opt(busy, |b| format!("{b:.2}")),
        opt(s.max_rss_kib, mib_of),
    );
    if !s.parts.is_empty() {
        let parts: Vec<String> = s
            .parts
            .iter()
            .map(|(n, d)| format!("{n} {:.2} s", secs(*d)))
            .collect();
        println!("{:<52} ({})", "", parts.join(" + "));
    }
}

fn header() {
    println!(
        "{:<52} {:>7} {:>8} {:>10} {:>10} {:>6} {:>10}  bound (hint)",
        "", "wall s", "MB/s", "client cpu", "server cpu", "cores", "peak RSS"
    );
}

/// `baseline wall / ours wall`: how many times faster ours is (for the bare stream: the fraction
/// of its throughput).
fn print_goal(label: &str, ours: &Row, base: &Row, goal: f64) {
    let why_not = |r: &Row| {
        r.skipped
            .clone()
            .or_else(|| (!r.errors.is_empty()).then(|| "failed".to_owned()))
            .unwrap_or_else(|| "not measured".to_owned())
    };
    match (ours.best(), base.best()) {
        (Some(o), Some(b)) => {
            let ratio = secs(b.wall) / secs(o.wall);
            println!(
                "{label:<58} {ratio:>6.2}x   goal >= {goal:.1}x   {}",
                if ratio >= goal { "met" } else { "NOT met" }
            );
        }
        (None, _) => println!("{label:<58} no ratio: {}: {}", ours.label, why_not(ours)),
        (_, None) => println!("{label:<58} no ratio: {}: {}", base.label, why_not(base)),
    }
}

/// The limits measured in a run: the write floor of each placement, and the single-core rates
/// of the per-byte crypto.
struct Floors<'a> {
    write: &'a [(String, Row)],
    rates: Option<Rates>,
}

/// Single-core rates, bytes per second, of the per-byte work the product adds to the transport.
#[derive(Clone, Copy)]
struct Rates {
    /// SHA-256: the plaintext digest of each file.
    sha: f64,
    /// The piece leaf of new transfers (`PieceHash::CURRENT`, BLAKE3), over a whole piece.
    leaf: f64,
    /// The payload AEAD, ChaCha20-Poly1305.
    aead: f64,
}

impl Rates {
    /// The best of two runs, rate by rate.
    fn max(self, o: Rates) -> Rates {
        Rates {
            sha: self.sha.max(o.sha),
            leaf: self.leaf.max(o.leaf),
            aead: self.aead.max(o.aead),
        }
    }
}

/// What bounds each row, from the limits measured in the same run: the CPU the whole machine
/// must spend (the bare stream's, plus the product's per-byte crypto at the measured single-core
/// rates) spread over every core, and the write floor of the placement. Prints, for each row,
/// that floor and how close the row came to it, and the best ratio the goal could reach.
fn print_limits(
    b: &Bench,
    bytes: u64,
    bare: &Row,
    rows: &[(Row, Row, Resources)],
    sources: &[(&Place, tempfile::TempDir, PathBuf)],
    floors: Floors<'_>,
    scp: (&Row, &Row),
) {
    let Floors {
        write: write_floors,
        rates,
    } = floors;
    let (Some(bare_s), Some(Rates { sha, leaf, aead })) = (bare.best(), rates) else {
        return;
    };
    let Some(bare_cpu) = bare_s.client_cpu else {
        return;
    };
    let n = bytes as f64;
    // Per-byte work beyond the transport (docs/performance.md "What bounds a transfer"):
    // send: plaintext SHA-256, seal, piece leaf at the sender, piece leaf at the relay; fetch:
    // open and plaintext SHA-256 at the recipient.
    let send_crypto = n * (1.0 / sha + 2.0 / leaf + 1.0 / aead);
    let fetch_crypto = n * (1.0 / sha + 1.0 / aead);
    let cores = b.nproc as f64;
    println!();
    println!("-- {} MiB: limits measured in this run --", bytes / MIB);
    println!(
        "single core: SHA-256 {:.0} MB/s, piece leaf (BLAKE3) {:.0} MB/s, payload ChaCha20-Poly1305 {:.0} MB/s; bare quinn used {bare_cpu:.2} CPU s",
        sha / 1e6,
        leaf / 1e6,
        aead / 1e6
    );
    println!(
        "{:<52} {:>9} {:>12} {:>10}  best ratio the goal allows",
        "", "floor s", "what", "ours/floor"
    );
    for ((send, fetch, _), (place, _, _)) in rows.iter().zip(sources) {
        let write = write_floors
            .iter()
            .find(|(name, _)| name == place.name)
            .and_then(|(_, r)| r.best())
            .map(|s| secs(s.wall));
        for (row, crypto, is_send) in [(send, send_crypto, true), (fetch, fetch_crypto, false)] {
            let Some(ours) = row.best() else { continue };
            let cpu_floor = (bare_cpu + crypto) / cores;
            let (floor, what) = match write {
                Some(w) if w > cpu_floor => (w, "write+fsync"),
                _ => (cpu_floor, "CPU"),
            };
            let base = match (place.name, is_send) {
                ("tmpfs", _) => Some(bare),
                (_, true) => Some(scp.0),
                (_, false) => Some(scp.1),
            };
            let best = match base.and_then(|r| r.best().map(|s| (r, s))) {
                Some((r, s)) => format!("{:.2}x ({})", secs(s.wall) / floor, r.label),
                None => "-".to_owned(),
            };
            println!(
                "{:<52} {:>9.2} {:>12} {:>10.2}  {best}",
                row.label,
                floor,
                what,
                secs(ours.wall) / floor,
            );
        }
    }
    println!(
        "  CPU floor = (bare quinn's CPU + the per-byte crypto at the single-core rates above) / {} cores; \
         write floor = writing and fsyncing as many bytes on that placement; a row can hardly beat the larger one (both are measurements)",
        b.nproc
    );
}

/// On tmpfs, writes and deletes `bytes` just before a measurement, so that the pages it is
/// about to fill are resident. A virtual machine whose balloon driver reports free pages to its
/// host (virtio `free page reporting`) gives freed memory back after about two seconds, and the
/// first write to such a page then costs a fault in the host: on the development machine `dd` to
/// `/dev/shm` ran at 0.4 GB/s cold and 3.4 GB/s warm. The bare quinn stream writes no pages, so
/// without this the tmpfs rows would measure the host's memory management. Nothing on disk.
fn prefault(place: &Place, bytes: u64) {
    if place.fs != "tmpfs" {
        return;
    }
    let path = place.dir.join("prefault.bin");
    let written = write_bytes(&path, bytes, false);
    let _ = fs::remove_file(&path);
    if let Err(e) = written {
        println!("  (could not pre-fault {}: {e})", place.dir.display());
    }
}

/// Writes `bytes` to a new file in `dir` (1 MiB writes) and fsyncs it, then removes it: the
/// floor of any receiver that keeps that much data durably there (the relay's pack on `send`,
/// the output on `fetch`, the remote file of scp). On tmpfs the pages are pre-faulted first
/// (`prefault`), as for the rows it bounds.
fn write_floor(dir: &Path, bytes: u64) -> io::Result<Duration> {
    let path = dir.join("write-floor.bin");
    let start = Instant::now();
    write_bytes(&path, bytes, true)?;
    let t = start.elapsed();
    fs::remove_file(&path)?;
    Ok(t)
}

/// Writes `bytes` of a constant pattern to a new file at `path`, 1 MiB at a time, and fsyncs
/// it if `sync`.
fn write_bytes(path: &Path, bytes: u64, sync: bool) -> io::Result<()> {
    let buf = vec![0xa5u8; MIB as usize];
    let mut f = fs::File::create(path)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

/// Single-core rates of the per-byte work the product adds to the transport, over 64 KiB chunks
/// as in a transfer: SHA-256 (`sha2`, the plaintext digests), the piece leaf
/// (`PieceHash::leaf`, over a whole encrypted chunk) and the payload AEAD
/// (`PayloadKey::seal_chunk`, ChaCha20-Poly1305).
fn crypto_rates() -> Rates {
    use rogatory_envelope::{CHUNK_SIZE, FileKey, PayloadKey, PayloadNonce, TAG_SIZE};
    use sha2::Digest as _;
    const CHUNKS: u64 = 4096; // 256 MiB
    /// Bytes per second of `CHUNKS` calls of `f`, each over `bytes` bytes.
    fn rate(bytes: usize, mut f: impl FnMut(u64) -> u8) -> f64 {
        let start = Instant::now();
        let mut acc = 0u8;
        for i in 0..CHUNKS {
            acc ^= f(i);
        }
        std::hint::black_box(acc);
        (CHUNKS * bytes as u64) as f64 / secs(start.elapsed())
    }
    let mut buf = vec![0x3cu8; CHUNK_SIZE + TAG_SIZE];
    let sha = rate(CHUNK_SIZE, |_| sha2::Sha256::digest(&buf[..CHUNK_SIZE])[0]);
    let leaf = rate(buf.len(), |_| {
        rogatory_custody::PieceHash::CURRENT.leaf(&buf)[0]
    });
    let key = PayloadKey::derive(&FileKey::from_bytes([7; 16]), &PayloadNonce([9; 16]));
    let aead = rate(CHUNK_SIZE, |i| {
        key.seal_chunk(i, false, &mut buf)
            .expect("a full chunk seals");
        buf[CHUNK_SIZE]
    });
    Rates { sha, leaf, aead }
}

/// Runs the bare quinn stream in this process; its wall time and the process's CPU.
fn bare_round(rt: &tokio::runtime::Runtime, s: &bare_quinn::Setup, bytes: u64, tck: f64) -> Sample {
    let cpu0 = proc_cpu(std::process::id(), false, tck);
    let wall = rt.block_on(bare_quinn::bare(s, bytes));
    let cpu1 = proc_cpu(std::process::id(), false, tck);
    Sample {
        wall,
        client_cpu: cpu1.zip(cpu0).map(|(a, b)| a - b),
        server_cpu: None,
        max_rss_kib: None,
        parts: Vec::new(),
    }
}

fn main() {
    let bin = std::env::var_os("ROGATORY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rogatory")));
    let only = std::env::var("ROGATORY_BENCH_ONLY").unwrap_or_default();
    assert!(
        ["", "file", "bulk"].contains(&only.as_str()),
        "ROGATORY_BENCH_ONLY={only:?}: expected `file` or `bulk`"
    );
    let mut b = Bench {
        mib: env_num("ROGATORY_BENCH_MIB", 1024).max(1),
        rounds: env_num("ROGATORY_BENCH_ROUNDS", 2).max(1) as usize,
        files: env_num("ROGATORY_BENCH_FILES", 5000).max(1),
        time: Some(PathBuf::from("/usr/bin/time")).filter(|p| p.is_file()),
        clk_tck: clk_tck(),
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        retain_until: retain_until(),
        drop_caches: try_drop_caches(),
        skipped: Vec::new(),
        bin,
    };
    let version = b
        .setup_cmd({
            let mut c = Command::new(&b.bin);
            c.arg("--version");
            c
        })
        .unwrap_or_else(|e| panic!("the rogatory binary does not run: {e}"));
    let tmpfs = tmpfs_place();
    let disk = disk_place();
    let bytes = b.mib * MIB;

    let run_ticks = cpu_ticks();
    println!("rogatory transfer bench (issue 10)");
    println!("binary      {} ({})", b.bin.display(), version.trim());
    println!("machine     {} cores, load average {}", b.nproc, loadavg());
    for (name, p) in [("tmpfs", &tmpfs), ("disk", &disk)] {
        match p {
            Ok(p) => println!("{name:<11} {} ({})", p.dir.display(), p.fs),
            Err(e) => println!("{name:<11} not available, its runs are skipped: {e}"),
        }
    }
    match &b.drop_caches {
        Ok(()) => println!(
            "page cache  dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before each disk run"
        ),
        Err(e) => println!(
            "page cache  NOT dropped before disk runs ({e}): disk runs may read from cache"
        ),
    }
    match &b.time {
        Some(_) => println!(
            "cpu, rss    /usr/bin/time -f '%e %U %S %M' around each client process; relay CPU from /proc/<pid>/stat; sshd sessions' CPU from the listener's reaped-children counters"
        ),
        None => {
            let why = "/usr/bin/time not found (Debian: apt-get install time): no client CPU time, no peak RSS";
            println!("cpu, rss    {why}");
            b.skipped.push(why.into());
        }
    }
    println!(
        "rounds      best of {} (ROGATORY_BENCH_ROUNDS); wall time from process start to exit",
        b.rounds
    );

    let sshd = match (which("sshd"), which("ssh"), which("ssh-keygen")) {
        (Some(_), Some(_), Some(_)) => match Sshd::start() {
            Ok(s) => Some(s),
            Err(e) => {
                b.skipped.push(format!("scp and rsync baselines: {e}"));
                None
            }
        },
        _ => {
            b.skipped.push(
                "scp and rsync baselines: sshd, ssh or ssh-keygen not found (Debian: apt-get install openssh-server)".into(),
            );
            None
        }
    };
    let scp = which("scp");
    let rsync = which("rsync");

    let mut failed = false;
    if only.is_empty() || only == "file" {
        failed |= file_section(&mut b, bytes, &tmpfs, &disk, sshd.as_ref(), scp.as_deref());
    }
    if only.is_empty() || only == "bulk" {
        failed |= bulk_section(&mut b, &tmpfs, &disk, sshd.as_ref(), rsync.as_deref());
    }
    drop(sshd);

    println!();
    let load = loadavg();
    println!("load average at the end: {load}");
    println!(
        "CPU time taken by the host (steal) during the whole run: {}",
        steal_since(run_ticks)
    );
    if load
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
        .is_some_and(|l| l > b.nproc as f64)
    {
        println!(
            "  the machine was busy with other work (load > {} cores): wall times include waiting for a CPU, \
             which the bound hints cannot tell from waiting for the disk; compare ratios, not absolute numbers",
            b.nproc
        );
    }
    if b.skipped.is_empty() {
        println!("skipped: nothing");
    } else {
        println!("skipped or not measured:");
        for s in &b.skipped {
            println!("  - {s}");
        }
    }
    if failed {
        println!("some measurements FAILED (see above)");
        std::process::exit(1);
    }
}

/// The single-file section; true if anything failed.
fn file_section(
    b: &mut Bench,
    bytes: u64,
    tmpfs: &Result<Place, String>,
    disk: &Result<Place, String>,
    sshd: Option<&Sshd>,
    scp: Option<&Path>,
) -> bool {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime for the bare quinn stream");
    let quinn_setup = bare_quinn::setup();
    // Warm-up (page faults, CPU frequency), as the throughput bench does.
    rt.block_on(bare_quinn::bare(&quinn_setup, bytes.min(64 * MIB)));

    // One source per placement, and on disk the age file the scp download starts from.
    let mut sources = Vec::new();
    for place in [tmpfs, disk] {
        let Ok(place) = place else { continue };
        let dir = tempfile::Builder::new()
            .prefix("rogatory-bench-src-")
            .tempdir_in(&place.dir)
            .expect("source directory");
        let file = dir.path().join("evidence.bin");
        write_random(&file, bytes, 0x5eed_0001).expect("write the source file");
        sources.push((place, dir, file));
    }

    let mut decryptor = None;
    let mut age_file = None;
    let scp_skip = match (disk, sshd, scp) {
        (Err(e), _, _) => Some(format!("no disk placement: {e}")),
        (_, None, _) => Some("no loopback sshd (see the end)".to_owned()),
        (_, _, None) => Some("scp not found (Debian: apt-get install openssh-client)".to_owned()),
        _ => None,
    };
    let disk_source = sources.iter().find(|(p, _, _)| p.name == "disk");
    if let (None, Some((_, dir, file))) = (&scp_skip, disk_source) {
        let key = dir.path().join("key.txt");
        let pubkey = b
            .rog(dir.path(), &["keygen", "-o", "key.txt"])
            .expect("rogatory keygen");
        let pubkey = pubkey
            .split_whitespace()
            .find(|w| w.starts_with("age1"))
            .expect("keygen prints the public key")
            .to_owned();
        let enc = dir.path().join("evidence.bin.age");
        let mut c = b.rogatory(dir.path());
        c.args(["encrypt", "-r", &pubkey, "-o"]).arg(&enc).arg(file);
        b.setup_cmd(c).expect("rogatory encrypt");
        decryptor = Some(if let Some(p) = which("age") {
            Decryptor::Age(p)
        } else if let Some(p) = which("rage") {
            Decryptor::Rage(p)
        } else {
            Decryptor::Ours
        });
        age_file = Some((key, enc));
    }

    let mib = b.mib;
    let mut bare = Row::new("bare quinn stream (in process, no disk)", bytes);
    let mut rows: Vec<(Row, Row, Resources)> = Vec::new();
    for (place, _, _) in &sources {
        rows.push((
            Row::new(format!("rogatory send, homes on {}", place.name), bytes),
            Row::new(format!("rogatory fetch, homes on {}", place.name), bytes),
            Resources::default(),
        ));
    }
    let dec_name = match &decryptor {
        Some(Decryptor::Age(_)) => "age -d",
        Some(Decryptor::Rage(_)) => "rage -d",
        Some(Decryptor::Ours) => "rogatory decrypt",
        None => "age -d",
    };
    let up_label = format!("disk: scp -c {SSH_CIPHER} + ssh sync FILE");
    let down_label = format!("disk: scp download + {dec_name} + sync FILE");
    let (mut scp_up, mut scp_down) = match &scp_skip {
        Some(why) => (Row::skip(&up_label, why), Row::skip(&down_label, why)),
        None => (Row::new(&up_label, bytes), Row::new(&down_label, bytes)),
    };
    if let Some(why) = &scp_skip {
        b.skipped.push(format!("scp baselines: {why}"));
    }
    let mut missing_rows = Vec::new();
    for (name, p) in [("tmpfs", tmpfs), ("disk", disk)] {
        if let Err(e) = p {
            b.skipped
                .push(format!("send and fetch with homes on {name}: {e}"));
            missing_rows.push(Row::skip(format!("rogatory send, homes on {name}"), e));
            missing_rows.push(Row::skip(format!("rogatory fetch, homes on {name}"), e));
        }
    }

    println!();
    println!(
        "== {mib} MiB, one file (ROGATORY_BENCH_MIB): {} rounds ==",
        b.rounds
    );
    let mut write_floors: Vec<(String, Row)> = sources
        .iter()
        .map(|(place, _, _)| {
            (
                place.name.to_owned(),
                Row::new(
                    format!("limit: write + fsync a new file on {}", place.name),
                    bytes,
                ),
            )
        })
        .collect();
    let mut rates: Option<Rates> = None;
    for round in 1..=b.rounds {
        let ticks = cpu_ticks();
        let s = bare_round(&rt, &quinn_setup, bytes, b.clk_tck);
        println!("round {round}: bare quinn {:.2} s", secs(s.wall));
        bare.push(Ok(s));
        let r = crypto_rates();
        rates = Some(rates.map_or(r, |a| a.max(r)));

        for ((place, _, file), (send, fetch, res)) in sources.iter().zip(rows.iter_mut()) {
            // The relay's pack: new pages on tmpfs.
            prefault(place, bytes);
            match b.rogatory_round(place, file, (1, bytes), true) {
                Ok(r) => {
                    println!(
                        "round {round}: {}: send {:.2} s, fetch {:.2} s",
                        place.name,
                        secs(r.send.wall),
                        secs(r.fetch.wall)
                    );
                    res.rounds += 1;
                    res.send_rss_kib = worst(res.send_rss_kib, r.send_rss_kib);
                    res.fetch_rss_kib = worst(res.fetch_rss_kib, r.fetch_rss_kib);
                    res.relay_hwm_kib = worst(res.relay_hwm_kib, r.relay_hwm_kib);
                    res.home_growth_during = worst(res.home_growth_during, r.home_growth_during);
                    res.home_growth_after = worst(res.home_growth_after, Some(r.home_growth_after));
                    res.first_progress = worst_time(res.first_progress, r.first_progress);
                    if let Some(t) = r.relay_first_mib {
                        res.relay_first_mib = worst_time(res.relay_first_mib, t);
                    }
                    res.fetch_progress_mid = Some(
                        res.fetch_progress_mid
                            .map_or(r.fetch_progress_mid, |m| m.min(r.fetch_progress_mid)),
                    );
                    res.fetch_first_progress =
                        worst_time(res.fetch_first_progress, r.fetch_first_progress);
                    send.push(Ok(r.send));
                    fetch.push(Ok(r.fetch));
                }
                Err(e) => {
                    println!("round {round}: {}: FAILED: {e}", place.name);
                    send.push(Err(e.clone()));
                    fetch.push(Err(e));
                }
            }
        }
        for ((place, _, _), (_, row)) in sources.iter().zip(write_floors.iter_mut()) {
            prefault(place, bytes);
            let w = write_floor(&place.dir, bytes)
                .map(|wall| Sample {
                    wall,
                    client_cpu: None,
                    server_cpu: None,
                    max_rss_kib: None,
                    parts: Vec::new(),
                })
                .map_err(|e| format!("write floor on {}: {e}", place.name));
            println!(
                "round {round}: {}: write + fsync {}",
                place.name,
                w.as_ref().map_or_else(
                    |e| format!("FAILED: {e}"),
                    |s| format!("{:.2} s", secs(s.wall))
                )
            );
            row.push(w);
        }
        if let (Some(sshd), Some((key, enc)), Some(dec)) = (sshd, &age_file, &decryptor) {
            let disk = disk.as_ref().expect("scp runs only with a disk placement");
            let src = &sources
                .iter()
                .find(|(p, _, _)| p.name == "disk")
                .expect("disk source")
                .2;
            let up = scp_upload(b, sshd, disk, src, bytes);
            let down = scp_download(b, sshd, disk, enc, key, dec, bytes);
            println!(
                "round {round}: scp upload+sync {}, download+decrypt+sync {}",
                up.as_ref().map_or_else(
                    |e| format!("FAILED: {e}"),
                    |s| format!("{:.2} s", secs(s.wall))
                ),
                down.as_ref().map_or_else(
                    |e| format!("FAILED: {e}"),
                    |s| format!("{:.2} s", secs(s.wall))
                )
            );
            scp_up.push(up);
            scp_down.push(down);
        }
        println!(
            "round {round}: CPU time taken by the host (steal): {}",
            steal_since(ticks)
        );
    }

    println!();
    println!("-- {mib} MiB, one file: best of {} --", b.rounds);
    header();
    print_row(&bare, b.nproc);
    for (send, fetch, _) in &rows {
        print_row(send, b.nproc);
        print_row(fetch, b.nproc);
    }
    for r in &missing_rows {
        print_row(r, b.nproc);
    }
    print_row(&scp_up, b.nproc);
    print_row(&scp_down, b.nproc);
    for (_, r) in &write_floors {
        print_row(r, b.nproc);
    }
    if scp_skip.is_none() {
        println!(
            "  scp: OpenSSH's scp to/from a loopback sshd (benches/loopback-sshd.sh), cipher {SSH_CIPHER}; the remote \
             sync is a second ssh connection, as in a script; decrypt: {}",
            match &decryptor {
                Some(Decryptor::Age(p)) =>
                    format!("{} (the age reference implementation)", p.display()),
                Some(Decryptor::Rage(p)) => format!("{} (rage)", p.display()),
                _ => "rogatory decrypt (age v1 compatible; neither age nor rage is installed)"
                    .to_owned(),
            }
        );
    }
    println!(
        "  client cpu: user+sys of the command (scp/ssh clients, {dec_name}, sync); server cpu: the relay, or the sshd sessions; cores = (client+server cpu) / wall"
    );

    println!();
    println!("-- {mib} MiB: goals (ratio = baseline wall / ours wall) --");
    let find = |name: &str| {
        rows.iter()
            .zip(sources.iter())
            .find(|(_, s)| s.0.name == name)
    };
    for name in ["tmpfs", "disk"] {
        let (send, fetch) = match find(name) {
            Some(((s, f, _), _)) => (s, f),
            None => {
                println!("{name}: no ratios: placement not available");
                continue;
            }
        };
        if name == "tmpfs" {
            print_goal("tmpfs: send, fraction of bare quinn", send, &bare, 0.5);
            print_goal("tmpfs: fetch, fraction of bare quinn", fetch, &bare, 0.5);
        } else {
            print_goal("disk: send vs scp + remote sync", send, &scp_up, 1.2);
            print_goal(
                &format!("disk: fetch vs scp download + {dec_name} + sync"),
                fetch,
                &scp_down,
                1.5,
            );
        }
    }

    print_limits(
        b,
        bytes,
        &bare,
        &rows,
        &sources,
        Floors {
            write: &write_floors,
            rates,
        },
        (&scp_up, &scp_down),
    );

    println!();
    println!(
        "-- {mib} MiB send/fetch: resources, worst of the rounds (issue goals are stated for 2 GiB and 8 GiB) --"
    );
    let cols: Vec<(&str, &Resources)> = rows
        .iter()
        .zip(sources.iter())
        .map(|((_, _, r), s)| (s.0.name, r))
        .collect();
    print!("{:<48}", "");
    for (n, _) in &cols {
        print!(" {:<24}", format!("homes on {n}"));
    }
    println!(" issue goal");
    let line = |label: &str, goal: &str, f: &dyn Fn(&Resources) -> String| {
        print!("{label:<48}");
        for (_, r) in &cols {
            let v = if r.rounds == 0 {
                "not measured".to_owned()
            } else {
                f(r)
            };
            print!(" {v:<24}");
        }
        println!(" {goal}");
    };
    let time_or = |t: Option<Option<Duration>>, never: &str| match t {
        Some(Some(t)) => format!("{:.2} s", secs(t)),
        Some(None) => never.to_owned(),
        None => "-".to_owned(),
    };
    line("send peak RSS (/usr/bin/time %M)", "<= 64 MiB", &|r| {
        opt(r.send_rss_kib, mib_of)
    });
    line("fetch peak RSS (/usr/bin/time %M)", "<= 64 MiB", &|r| {
        opt(r.fetch_rss_kib, mib_of)
    });
    line("relay peak RSS (VmHWM over send+fetch)", "", &|r| {
        opt(r.relay_hwm_kib, mib_of)
    });
    line(
        "sender home growth during send (du -sb, 100 ms)",
        "<= 16 MiB",
        &|r| opt(r.home_growth_during, |g| mib_of(g / 1024)),
    );
    line("sender home growth after send", "<= 1 MiB", &|r| {
        opt(r.home_growth_after, |g| {
            format!("{:.2} MiB", g as f64 / MIB as f64)
        })
    });
    line(
        "send: first progress event, bytes_done > 0",
        "first byte on the wire <= 1.5 s",
        &|r| time_or(r.first_progress, "none"),
    );
    line("send: relay home first grew by >= 1 MiB", "", &|r| {
        time_or(r.relay_first_mib, "never")
    });
    line(
        "fetch: progress events before the end",
        "growing bytes_done while downloading",
        &|r| {
            format!(
                "{}, first at {}",
                opt(r.fetch_progress_mid, |n| n.to_string()),
                time_or(r.fetch_first_progress, "none")
            )
        },
    );
    println!(
        "  times are from spawning the command. First byte: `send --json` reports bytes durable at the relay, so its \
         first progress event is an upper bound on the first byte on the wire; the relay's home growing by 1 MiB \
         (sampled every 100 ms) is another."
    );

    let failed = bare.errors.len()
        + rows
            .iter()
            .map(|(s, f, _)| s.errors.len() + f.errors.len())
            .sum::<usize>()
        + scp_up.errors.len()
        + scp_down.errors.len();
    failed > 0
}

/// `scp` of the file to the loopback sshd, then `sync FILE` there.
fn scp_upload(
    b: &Bench,
    sshd: &Sshd,
    disk: &Place,
    src: &Path,
    bytes: u64,
) -> Result<Sample, String> {
    let remote = tempfile::Builder::new()
        .prefix("rogatory-bench-scp-remote-")
        .tempdir_in(&disk.dir)
        .map_err(|e| format!("remote directory: {e}"))?;
    let dest = remote.path().join("evidence.bin");
    b.drop_caches();
    let cpu0 = sshd.cpu(b.clk_tck);
    let mut c = Command::new("scp");
    c.arg("-q")
        .arg("-F")
        .arg(&sshd.config)
        .args(["-c", SSH_CIPHER])
        .arg(src)
        .arg(format!("bench:{}", dest.display()));
    let m1 = b.measure(&c, &[])?;
    let cpu1 = sshd.cpu(b.clk_tck);
    let mut c = Command::new("ssh");
    c.arg("-F")
        .arg(&sshd.config)
        .arg("bench")
        .arg(format!("sync '{}'", dest.display()));
    let m2 = b.measure(&c, &[])?;
    let cpu2 = sshd.cpu(b.clk_tck);
    let got = fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
    if got != bytes {
        return Err(format!("scp left {got} bytes, expected {bytes}"));
    }
    Ok(Sample::chain(&[
        ("scp", &m1, cpu1.zip(cpu0).map(|(a, b)| a - b)),
        ("ssh sync", &m2, cpu2.zip(cpu1).map(|(a, b)| a - b)),
    ]))
}

/// `scp` of the age file from the loopback sshd, decrypt it, `sync FILE`.
fn scp_download(
    b: &Bench,
    sshd: &Sshd,
    disk: &Place,
    enc: &Path,
    key: &Path,
    dec: &Decryptor,
    bytes: u64,
) -> Result<Sample, String> {
    let local = tempfile::Builder::new()
        .prefix("rogatory-bench-scp-local-")
        .tempdir_in(&disk.dir)
        .map_err(|e| format!("local directory: {e}"))?;
    let got_enc = local.path().join("evidence.bin.age");
    let plain = local.path().join("evidence.bin");
    b.drop_caches();
    let cpu0 = sshd.cpu(b.clk_tck);
    let mut c = Command::new("scp");
    c.arg("-q")
        .arg("-F")
        .arg(&sshd.config)
        .args(["-c", SSH_CIPHER])
        .arg(format!("bench:{}", enc.display()))
        .arg(&got_enc);
    let m1 = b.measure(&c, &[])?;
    let cpu1 = sshd.cpu(b.clk_tck);
    let (name, mut c) = match dec {
        Decryptor::Age(p) => ("age -d", Command::new(p)),
        Decryptor::Rage(p) => ("rage -d", Command::new(p)),
        Decryptor::Ours => ("rogatory decrypt", Command::new(&b.bin)),
    };
    match dec {
        Decryptor::Ours => c.arg("decrypt"),
        _ => c.arg("-d"),
    };
    c.arg("-i").arg(key).arg("-o").arg(&plain).arg(&got_enc);
    let m2 = b.measure(&c, &[])?;
    let mut c = Command::new("sync");
    c.arg(&plain);
    let m3 = b.measure(&c, &[])?;
    let got = fs::metadata(&plain).map(|m| m.len()).unwrap_or(0);
    if got != bytes {
        return Err(format!("{name} wrote {got} bytes, expected {bytes}"));
    }
    Ok(Sample::chain(&[
        ("scp", &m1, cpu1.zip(cpu0).map(|(a, b)| a - b)),
        (name, &m2, None),
        ("sync", &m3, None),
    ]))
}

/// The bulk section; true if anything failed.
fn bulk_section(
    b: &mut Bench,
    tmpfs: &Result<Place, String>,
    disk: &Result<Place, String>,
    sshd: Option<&Sshd>,
    rsync: Option<&Path>,
) -> bool {
    let place = match (disk, tmpfs) {
        (Ok(d), _) => d,
        (Err(e), Ok(t)) => {
            b.skipped.push(format!(
                "bulk on disk ({e}): the bulk runs use tmpfs instead"
            ));
            t
        }
        (Err(e), Err(f)) => {
            b.skipped
                .push(format!("bulk section: no disk ({e}), no tmpfs ({f})"));
            return false;
        }
    };
    let files = b.files;
    let src_dir = tempfile::Builder::new()
        .prefix("rogatory-bench-bulk-")
        .tempdir_in(&place.dir)
        .expect("bulk source directory");
    let bulk = src_dir.path().join("bulk");
    let mut state = 0x5eed_0002u64;
    let mut buf = vec![0u8; 4096];
    for i in 0..files {
        let d = bulk.join(format!("d{:02}", i % 50));
        fs::create_dir_all(&d).expect("bulk subdirectory");
        fill(&mut buf, &mut state);
        fs::write(d.join(format!("f{i:05}.bin")), &buf).expect("bulk file");
    }
    let _ = Command::new("sync").status();
    let bytes = files * 4096;
    let expect = (files, bytes);
    let rsync_skip = match (sshd, rsync) {
        (None, _) => Some("no loopback sshd (see the end)".to_owned()),
        (_, None) => Some("rsync not found (Debian: apt-get install rsync)".to_owned()),
        _ => None,
    };
    if let Some(why) = &rsync_skip {
        b.skipped.push(format!("rsync baselines: {why}"));
    }
    let p = place.name;
    let mut send = Row::new(format!("rogatory send, homes on {p}"), bytes);
    let mut fetch = Row::new(format!("rogatory fetch --all, homes on {p}"), bytes);
    let up_label = format!("{p}: rsync -a over ssh, to the sshd");
    let down_label = format!("{p}: rsync -a over ssh, from the sshd");
    let (mut up, mut down) = match &rsync_skip {
        Some(why) => (Row::skip(&up_label, why), Row::skip(&down_label, why)),
        None => (Row::new(&up_label, bytes), Row::new(&down_label, bytes)),
    };

    println!();
    println!(
        "== bulk: {files} files of 4 KiB (ROGATORY_BENCH_FILES), on {p}: {} rounds ==",
        b.rounds
    );
    // Every round's folders stay until the section ends. Removing thousands of files just
    // before a row slows that row's file creations down: ext4 without a journal (this machine's
    // disk) skips inodes freed in the last 30 seconds (`recently_deleted`), scanning past each
    // of them. Removed between rows, they slowed whichever rows came next (our fetch from the
    // second round on, rsync's upload in every round) and not the others. (On tmpfs, used only
    // without a disk, they hold about 90 MB per round of the default 5,000 files.)
    let mut kept: Vec<tempfile::TempDir> = Vec::new();
    for round in 1..=b.rounds {
        let ticks = cpu_ticks();
        match b.rogatory_round(place, &bulk, expect, false) {
            Ok(r) => {
                println!(
                    "round {round}: send {:.2} s, fetch --all {:.2} s",
                    secs(r.send.wall),
                    secs(r.fetch.wall)
                );
                send.push(Ok(r.send));
                fetch.push(Ok(r.fetch));
                kept.push(r.dir);
            }
            Err(e) => {
                println!("round {round}: rogatory FAILED: {e}");
                send.push(Err(e.clone()));
                fetch.push(Err(e));
            }
        }
        if let (None, Some(sshd)) = (&rsync_skip, sshd) {
            let (u, d) = rsync_round(b, sshd, place, &bulk, expect, &mut kept);
            println!(
                "round {round}: rsync to {}, from {}",
                u.as_ref().map_or_else(
                    |e| format!("FAILED: {e}"),
                    |s| format!("{:.2} s", secs(s.wall))
                ),
                d.as_ref().map_or_else(
                    |e| format!("FAILED: {e}"),
                    |s| format!("{:.2} s", secs(s.wall))
                )
            );
            up.push(u);
            down.push(d);
        }
        println!(
            "round {round}: CPU time taken by the host (steal): {}",
            steal_since(ticks)
        );
    }
    println!();
    println!("-- bulk, {files} files of 4 KiB: best of {} --", b.rounds);
    header();
    for r in [&send, &fetch, &up, &down] {
        print_row(r, b.nproc);
    }
    println!(
        "  rsync: plain `rsync -a -e 'ssh -c {SSH_CIPHER}'` as in the issue: no fsync (rogatory's receipt covers durable data)"
    );
    println!();
    println!("-- bulk: goals (ratio = rsync wall / ours wall) --");
    print_goal("bulk: send vs rsync -a to the sshd", &send, &up, 1.5);
    print_goal(
        "bulk: fetch --all vs rsync -a from the sshd",
        &fetch,
        &down,
        1.0,
    );
    send.errors.len() + fetch.errors.len() + up.errors.len() + down.errors.len() > 0
}

/// `rsync -a` of the folder to the loopback sshd, then back into a fresh directory (kept in
/// `kept`).
fn rsync_round(
    b: &Bench,
    sshd: &Sshd,
    place: &Place,
    bulk: &Path,
    expect: (u64, u64),
    kept: &mut Vec<tempfile::TempDir>,
) -> (Result<Sample, String>, Result<Sample, String>) {
    let dirs = tempfile::Builder::new()
        .prefix("rogatory-bench-rsync-")
        .tempdir_in(&place.dir)
        .map_err(|e| format!("rsync directory: {e}"));
    let dirs = match dirs {
        Ok(d) => d,
        Err(e) => return (Err(e.clone()), Err(e)),
    };
    let remote = dirs.path().join("remote");
    let local = dirs.path().join("local");
    for d in [&remote, &local] {
        if let Err(e) = fs::create_dir_all(d) {
            let e = format!("{}: {e}", d.display());
            return (Err(e.clone()), Err(e));
        }
    }
    let one = |from: String, to: String, check: PathBuf| -> Result<Sample, String> {
        if !is_ram_fs(&place.fs) {
            b.drop_caches();
        }
        let cpu0 = sshd.cpu(b.clk_tck);
        let mut c = Command::new("rsync");
        c.arg("-a").arg("-e").arg(sshd.ssh_e()).arg(from).arg(to);
        let m = b.measure(&c, &[])?;
        let cpu1 = sshd.cpu(b.clk_tck);
        let got = tree_stats(&check);
        if got != expect {
            return Err(format!(
                "rsync copied {} files, {} bytes; expected {} files, {} bytes",
                got.0, got.1, expect.0, expect.1
            ));
        }
        Ok(Sample::of(&m, cpu1.zip(cpu0).map(|(a, b)| a - b)))
    };
    let up = one(
        bulk.display().to_string(),
        format!("bench:{}/", remote.display()),
        remote.join("bulk"),
    );
    let down = match &up {
        Ok(_) => one(
            format!("bench:{}", remote.join("bulk").display()),
            format!("{}/", local.display()),
            local.join("bulk"),
        ),
        Err(_) => Err("not run: the upload failed".into()),
    };
    kept.push(dirs);
    (up, down)
}
