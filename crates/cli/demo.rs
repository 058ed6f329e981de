//! `rogatory demo`: the README's "run it" command. With no set-up at all, in a temporary
//! directory, it runs the real commands (this same binary) end to end: two agencies exchange
//! cards, agency B runs a relay on 127.0.0.1, agency A sends a sample evidence folder with legal
//! metadata, B lists its inbox, fetches, decrypts and verifies it and returns a signed delivery
//! receipt, both receipts are verified against the cards, and a byte flipped in the relay's store
//! is found by `relay scrub`. `--keep` keeps the directory.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

/// A human line of the demonstration; with `--json` only the final `demo` event is printed.
macro_rules! say {
    ($events:expr, $($t:tt)*) => {
        if !$events.json {
            outln!($($t)*);
        }
    };
}

use rogatory_custody::{AgencyCard, ReceiptBundle, Sha256Digest, Statement};

use crate::args::DemoArgs;
use crate::error::{CliError, Exit, Result};

struct Demo {
    exe: PathBuf,
    dir: PathBuf,
}

fn fail(step: &str, o: &Output) -> CliError {
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| l.contains("error"))
        .unwrap_or("")
        .trim()
        .to_owned();
    let exit = match o.status.code() {
        Some(3) => Exit::Integrity,
        Some(4) => Exit::NoKey,
        Some(5) => Exit::Transport,
        Some(6) => Exit::Refused,
        Some(7) => Exit::Storage,
        Some(8) => Exit::Safety,
        _ => Exit::Internal,
    };
    CliError::new(exit, format!("demo: {step} failed: {last}"))
}

impl Demo {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .env("ROGATORY_LOG", "warn");
        c
    }

    fn run(&self, step: &str, args: &[&str]) -> Result<String> {
        let o = self
            .cmd(args)
            .output()
            .map_err(|e| CliError::new(Exit::Internal, format!("demo: {step}")).source(e))?;
        if !o.status.success() {
            return Err(fail(step, &o));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

struct RelayProcess(Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write(p: &Path, data: &[u8]) -> Result<()> {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).map_err(|e| crate::error::io("creating", d, e))?;
    }
    fs::write(p, data).map_err(|e| crate::error::io("writing", p, e))
}

/// The sample evidence: a report, a photo, a server log with a non-ASCII name, an empty note.
fn sample(root: &Path) -> Result<Vec<(String, Sha256Digest)>> {
    let mut files = vec![
        ("report.txt".to_owned(), b"Report on the seizure of server srv-07, 2026-11-20.\nChain of custody form 7 attached.\n".to_vec()),
        ("empty-note.txt".to_owned(), Vec::new()),
    ];
    let mut x: u32 = 0x2545_f491;
    let photo: Vec<u8> = (0..3 * 1024 * 1024 + 777)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    files.push(("photos/IMG 0001.jpg".to_owned(), photo));
    let log: String = (0..20_000)
        .map(|i| {
            format!(
                "2026-11-19T{:02}:{:02}:00Z srv-07 sshd: session {i} opened\n",
                i / 60 % 24,
                i % 60
            )
        })
        .collect();
    files.push((
        "logs/serveur-\u{e9}t\u{e9}.log".to_owned(),
        log.into_bytes(),
    ));
    let mut out = Vec::new();
    for (name, data) in &files {
        write(&root.join(name), data)?;
        out.push((name.clone(), Sha256Digest::of(data)));
    }
    out.sort();
    Ok(out)
}

fn card(d: &Demo, home: &str) -> Result<rogatory_custody::Verified<AgencyCard>> {
    let b = fs::read(d.path(&format!("{home}/card.note")))
        .map_err(|e| crate::error::io("reading", &d.path(home), e))?;
    AgencyCard::open(&b).map_err(|e| CliError::new(Exit::Integrity, "demo: card").source(e))
}

fn verify_receipt(path: &Path, card: &AgencyCard) -> Result<(String, u64)> {
    let text = fs::read_to_string(path).map_err(|e| crate::error::io("reading", path, e))?;
    let b = ReceiptBundle::parse(&text).map_err(|e| {
        CliError::new(Exit::Integrity, format!("demo: {}", path.display())).source(e)
    })?;
    let logged = b.verify(&card.verifier_key).map_err(|e| {
        CliError::new(
            Exit::Integrity,
            format!("demo: {} does not verify", path.display()),
        )
        .source(e)
    })?;
    let kind = match &logged.statement {
        Statement::CustodyReceipt { .. } => "custody receipt",
        Statement::DeliveryReceipt { .. } => "delivery receipt",
        _ => "statement",
    };
    Ok((kind.to_owned(), logged.index))
}

/// The recipient stanza types of every file of the transfer as the relay stores it: the headers
/// read from the relay's pack (one pack in the demo) at the offsets the sealed manifest gives.
fn stanza_types(manifest: &Path, packs: &Path) -> Result<Vec<String>> {
    let m = fs::read(manifest).map_err(|e| crate::error::io("reading", manifest, e))?;
    let m = rogatory_custody::Manifest::parse(&m)
        .map_err(|e| CliError::new(Exit::Integrity, "demo: the sent manifest").source(e))?;
    let pack = fs::read_dir(packs)
        .map_err(|e| crate::error::io("reading", packs, e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .ok_or_else(|| CliError::new(Exit::Internal, "demo: no pack at the relay"))?;
    let bytes = fs::read(&pack).map_err(|e| crate::error::io("reading", &pack, e))?;
    let mut out = Vec::new();
    let mut at = 0usize;
    for (i, f) in m.files.iter().enumerate() {
        let end = at + f.ciphertext_size as usize;
        let file = bytes
            .get(at..end)
            .ok_or_else(|| CliError::new(Exit::Integrity, "demo: the pack is short"))?;
        let d = rogatory_envelope::Decryptor::new(BufReader::new(file))
            .map_err(|e| CliError::new(Exit::Integrity, format!("demo: file {i}")).source(e))?;
        out.extend(d.header().stanzas().iter().map(|s| s.tag.clone()));
        at = end;
    }
    Ok(out)
}

pub(crate) fn run(a: &DemoArgs, events: &crate::events::Events) -> Result<()> {
    let start = Instant::now();
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(Exit::Internal, "demo: cannot find this program").source(e))?;
    let tmp = tempfile::Builder::new()
        .prefix("rogatory-demo-")
        .tempdir()
        .map_err(|e| {
            CliError::new(Exit::Storage, "demo: cannot create a temporary directory").source(e)
        })?;
    let d = Demo {
        exe,
        dir: tmp.path().to_owned(),
    };
    say!(events, "demo directory {}", d.dir.display());

    // 1. Two agencies, each trusting the other's card by its fingerprint.
    d.run(
        "agency init (A)",
        &[
            "--home",
            "A",
            "agency",
            "init",
            "--id",
            "demo-police-a",
            "--name",
            "Demo Police A",
            "--jurisdiction",
            "DE",
        ],
    )?;
    d.run(
        "agency init (B)",
        &[
            "--home",
            "B",
            "agency",
            "init",
            "--id",
            "demo-prosecutor-b",
            "--name",
            "Demo Prosecutor B",
            "--jurisdiction",
            "FR",
        ],
    )?;
    let fa = d
        .run("fingerprint (A)", &["--home", "A", "agency", "fingerprint"])?
        .trim()
        .to_owned();
    let fb = d
        .run("fingerprint (B)", &["--home", "B", "agency", "fingerprint"])?
        .trim()
        .to_owned();
    d.run(
        "trust add (A trusts B)",
        &[
            "--home",
            "A",
            "trust",
            "add",
            "B/card.note",
            "--fingerprint",
            &fb,
        ],
    )?;
    d.run(
        "trust add (B trusts A)",
        &[
            "--home",
            "B",
            "trust",
            "add",
            "A/card.note",
            "--fingerprint",
            &fa,
        ],
    )?;
    say!(events, "agencies            demo-police-a (DE) {fa}");
    say!(events, "                    demo-prosecutor-b (FR) {fb}");

    // 2. B's relay on 127.0.0.1, from a home that holds no age identity.
    d.run(
        "agency export-relay",
        &["--home", "B", "agency", "export-relay", "B-relay"],
    )?;
    let mut child = d
        .cmd(&[
            "--home",
            "B-relay",
            "relay",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--require-pq-tls",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| CliError::new(Exit::Internal, "demo: cannot start the relay").source(e))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let relay = RelayProcess(child);
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|a| a.contains(':'))
        .map(str::to_owned);
    let addr =
        addr.ok_or_else(|| CliError::new(Exit::Internal, "demo: the relay did not start"))?;
    say!(
        events,
        "relay               demo-prosecutor-b on {addr} (QUIC, mutual TLS 1.3, --require-pq-tls)\n                    run from B-relay/, a home without the age key"
    );

    // 3. A sends the evidence folder with its legal metadata.
    let originals = sample(&d.path("case-XX-2026-0042"))?;
    let sent = d.run(
        "send",
        &[
            "--home",
            "A",
            "--json",
            "send",
            "--relay",
            &addr,
            "--to",
            "demo-prosecutor-b",
            "--case",
            "XX-2026-0042",
            "--legal-basis",
            "Budapest Convention, art. 31",
            "--purpose",
            "criminal investigation",
            "--retain-until",
            "2031-12-31",
            "case-XX-2026-0042",
        ],
    )?;
    let summary: serde_json::Value = sent
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "sent")
        .ok_or_else(|| CliError::new(Exit::Internal, "demo: send printed no sent event"))?;
    let transfer = summary["transfer_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    say!(
        events,
        "sent                {} files, {} bytes of age ciphertext, transfer {transfer}",
        summary["files"],
        summary["bytes_total"]
    );
    let types = stanza_types(
        &d.path(&format!("A/sent/{transfer}/manifest.json")),
        &d.path("B-relay/relay/inbox"),
    )?;
    if types.is_empty() || types.iter().any(|t| t != "mlkem768x25519") {
        return Err(CliError::new(
            Exit::Internal,
            format!("demo: the stored files are not all hybrid post-quantum: {types:?}"),
        ));
    }
    say!(
        events,
        "envelope            {} mlkem768x25519 stanzas for {} files, no other kind (hybrid post-quantum, for B; A keeps its file keys in keys.age)",
        types.len(),
        summary["files"]
    );

    // 4. B lists and fetches: digests checked against A's seal before anything is published.
    let inbox = d.run("inbox", &["--home", "B", "inbox", "--relay", &addr])?;
    if !inbox.contains(&transfer) {
        return Err(CliError::new(
            Exit::Internal,
            "demo: the transfer is not in B's inbox",
        ));
    }
    d.run(
        "fetch",
        &[
            "--home", "B", "fetch", "--relay", &addr, &transfer, "-o", "received",
        ],
    )?;
    // Each transfer lands in its own folder, <sender>_<case>_<short id> (docs/cli.md "Fetched
    // output").
    let folder = format!(
        "received/demo-police-a_XX-2026-0042_{}",
        transfer.get(..8).unwrap_or(&transfer)
    );
    for (name, digest) in &originals {
        let got = fs::read(d.path(&format!("{folder}/case-XX-2026-0042/{name}")))
            .map_err(|e| crate::error::io("reading", &d.path("received"), e))?;
        if Sha256Digest::of(&got) != *digest {
            return Err(CliError::new(
                Exit::Integrity,
                format!("demo: {name} differs after the round trip"),
            ));
        }
    }
    say!(
        events,
        "fetched             {} files into {folder}/, every SHA-256 equal to the original",
        originals.len()
    );
    // The evidence package beside them proves it offline: seal, files, both receipts.
    d.run("verify (B)", &["--home", "B", "verify", "received"])?;
    say!(
        events,
        "verified            {folder}: the seal, every file and the custody and delivery receipts"
    );
    let status = d.run(
        "status",
        &["--home", "A", "status", "--relay", &addr, &transfer],
    )?;
    say!(
        events,
        "status (sender)     {}",
        status
            .lines()
            .find(|l| l.starts_with("state"))
            .unwrap_or("")
            .trim()
    );
    // The group is read from the status command's live connection, not assumed.
    let kx = status
        .lines()
        .find_map(|l| l.strip_prefix("tls-key-exchange "))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    if kx != "X25519MLKEM768" {
        return Err(CliError::new(
            Exit::Internal,
            format!("demo: the connection negotiated {kx}, not X25519MLKEM768"),
        ));
    }
    say!(
        events,
        "key exchange        {kx}, read from the live QUIC/TLS connection"
    );

    // 5. Both receipts verify against agency B's card and prove inclusion in its audit log.
    let b_card = card(&d, "B")?;
    for (who, file) in [
        ("A", format!("A/receipts/{transfer}.custody-receipt")),
        ("B", format!("B/receipts/{transfer}.delivery-receipt")),
    ] {
        let (kind, index) = verify_receipt(&d.path(&file), &b_card)?;
        say!(
            events,
            "{:<20}signature ok, entry {index} of B's audit log, held by {who}: {file}",
            kind
        );
    }

    // 6. Stop the relay (SIGTERM-equivalent shutdown is covered by the tests), flip one byte of
    //    the stored ciphertext, and let scrub find it.
    drop(relay);
    let inbox_dir = d.path("B-relay/relay/inbox");
    let pack = fs::read_dir(&inbox_dir)
        .ok()
        .and_then(|mut r| r.find_map(|e| e.ok().map(|e| e.path())))
        .ok_or_else(|| CliError::new(Exit::Internal, "demo: no stored pack"))?;
    let mut b = fs::read(&pack).map_err(|e| crate::error::io("reading", &pack, e))?;
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    fs::write(&pack, &b).map_err(|e| crate::error::io("writing", &pack, e))?;
    let o = d
        .cmd(&["--home", "B-relay", "relay", "scrub"])
        .output()
        .map_err(|e| CliError::new(Exit::Internal, "demo: scrub").source(e))?;
    if o.status.code() != Some(3) {
        return Err(CliError::new(
            Exit::Internal,
            "demo: scrub did not find the flipped byte",
        ));
    }
    let finding = String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .replace('\t', " ")
        .to_owned();
    say!(events, "tampered store      relay scrub: exit 3, {finding}");
    say!(
        events,
        "plaintext at relay  none: the relay holds only age ciphertext and never loads an age key"
    );
    say!(events, "done in {:.1} s", start.elapsed().as_secs_f64());

    let directory = d.dir.display().to_string();
    let receipt = format!("{directory}/A/receipts/{transfer}.custody-receipt");
    if a.keep {
        let kept = tmp.keep();
        say!(events, "kept {}", kept.display());
    } else {
        tmp.close().map_err(|e| {
            CliError::new(Exit::Storage, "demo: cannot remove the demo directory").source(e)
        })?;
    }
    if events.json {
        events.emit(crate::events::Json::Demo {
            directory,
            kept: a.keep,
            transfer_id: transfer,
            receipt,
            tls_key_exchange: Some(kx),
        });
    }
    Ok(())
}
