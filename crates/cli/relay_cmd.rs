//! `rogatory relay serve|purge|gc|scrub` and `rogatory status`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rogatory_custody::AgencyIdentity;
use rogatory_relay::serve::serve_session;
use rogatory_relay::{DiskStorage, Policy, Relay, RelayConfig, system_clock};
use rogatory_transport::net::{Node, ServeConfig};
use rogatory_transport::{ErrorCode, Limits};

use crate::args::{RelayServeArgs, StatusArgs};
use crate::error::{CliError, Exit, Result};
use crate::events::{Events, Json};
use crate::home::{Home, read_secret};

/// The relay's identity: only the signing key is parsed; an age identity line, if the home
/// has one, is dropped before parsing, so the relay never loads the key that decrypts evidence.
fn relay_identity(home: &Home) -> Result<AgencyIdentity> {
    let p = home.path("identity.txt");
    let text = zeroize::Zeroizing::new(read_secret(&p)?);
    let signing_only: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(
        text.lines()
            .filter(|l| !l.trim_start().starts_with("AGE-SECRET-KEY-"))
            .map(|l| format!("{l}\n"))
            .collect(),
    );
    AgencyIdentity::parse(&signing_only).map_err(|e| {
        CliError::new(
            Exit::NoKey,
            format!("{}: not an agency identity", p.display()),
        )
        .source(e)
    })
}

/// Opens the relay's store; `locked`: this process holds the data directory's lock. Without
/// it, an index of an earlier version's layout is refused rather than upgraded under the relay
/// process that uses it (`relay.md` §2).
fn open_relay(
    home: &Home,
    policy: Option<&std::path::Path>,
    locked: bool,
) -> Result<Relay<DiskStorage>> {
    if !locked {
        let dir = home.path("relay");
        let old = rogatory_relay::index_needs_upgrade(&dir)
            .map_err(|e| CliError::new(Exit::Storage, format!("{}: {e}", dir.display())))?;
        if old {
            return Err(CliError::new(
                Exit::Safety,
                format!(
                    "{}: the index has an earlier version's layout and another relay process uses it",
                    dir.join("relay.db").display()
                ),
            )
            .hint("stop that relay; this version's `relay serve` upgrades the index when it starts"));
        }
    }
    let identity = relay_identity(home)?;
    let trust = home.trust_store()?;
    let policy = match policy {
        Some(p) => Policy::load(p).map_err(|e| CliError::new(Exit::Usage, e.to_string()))?,
        None => Policy::default(),
    };
    let cfg = RelayConfig {
        data_dir: home.path("relay"),
        identity,
        trust,
        policy,
        clock: system_clock(),
    };
    let relay = Relay::open(cfg, DiskStorage::new()).map_err(|e| {
        if e.is_integrity() {
            // `relay.md` §5.1: a log that does not extend what the relay handed out.
            let what = match &e {
                rogatory_relay::RelayError::Log(_) => {
                    format!("{}: {e}", home.path("relay").join("audit.log").display())
                }
                _ => e.to_string(),
            };
            CliError::new(Exit::Integrity, what).hint(
                "restore the relay's audit.log from a backup; do not delete relay.db, which keeps the checkpoint the log must extend",
            )
        } else {
            CliError::new(Exit::Storage, "opening the relay's store").source(e)
        }
    })?;
    if let Some((offset, bytes)) = relay.torn_tail_cut() {
        let log = home.path("relay").join("audit.log");
        errln!(
            "rogatory: warning: {}: cut a torn, never acknowledged tail of {bytes} bytes at offset {offset}; the bytes are kept in {}",
            log.display(),
            log.with_extension("quarantine").display()
        );
    }
    Ok(relay)
}

fn lock_data_dir(home: &Home) -> Result<std::fs::File> {
    let dir = home.path("relay");
    // Private whatever the umask (`relay.md` §2); `Relay::open` makes an older one private.
    crate::home::create_private_dir(&dir)?;
    let p = dir.join("lock");
    // Private like everything in the data directory (`relay.md` §2), whatever the umask.
    let f = {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| crate::error::io("opening", &p, e))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| crate::error::io("protecting", &p, e))?;
        f
    };
    match fs4::FileExt::try_lock(&f) {
        Ok(()) => Ok(f),
        Err(fs4::TryLockError::WouldBlock) => Err(CliError::new(
            Exit::Safety,
            format!("another relay process uses {}", dir.display()),
        )
        .hint("a running relay purges and collects garbage itself every hour")),
        // Not another process: a file system without locks, say (exit 7).
        Err(fs4::TryLockError::Error(e)) => Err(crate::error::io("locking", &p, e)),
    }
}

pub(crate) fn serve(home: &Home, a: &RelayServeArgs, events: &Events) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROGATORY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    let _lock = lock_data_dir(home)?;
    let relay = Arc::new(open_relay(home, a.policy.as_deref(), true)?);
    let mut watch = Watch::new(home, a.policy.as_deref());
    let (peer_trust, ..) = load_trust(home, a, &relay, &mut watch)?;
    let tls = home.tls()?;
    let listen: SocketAddr = a.listen.parse().map_err(|_| {
        CliError::new(
            Exit::Usage,
            format!("--listen {:?}: expected HOST:PORT", a.listen),
        )
    })?;
    crate::cleanup::serve_mode();
    // One per core but one, at least one: the group commits, index commits and audit-log
    // appends run on blocking threads beside them (docs/cli.md "Running the relay").
    let workers = a.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)),
        usize::from,
    );
    let mut limits = Limits::default();
    if let Some(n) = a.max_connections_per_agency {
        limits.max_connections_per_agency = usize::from(n);
    }
    let rt = rogatory_client::runtime_with(workers)?;
    rt.block_on(async {
        let node = Arc::new(
            Node::server(listen, tls, peer_trust, limits)
                .map_err(|e| listen_error(&listen, e))?
                .with_policy(relay.policy().published()),
        );
        let addr = node
            .local_addr()
            .map_err(|e| CliError::new(Exit::Storage, "socket").source(e))?;
        if events.json {
            events.emit(Json::Listening {
                agency: relay.agency().to_string(),
                address: addr.to_string(),
            });
        } else {
            outln!("relay {} listening on {addr}", relay.agency());
        }
        let _ = std::io::Write::flush(&mut std::io::stdout());
        // `relay.md` §12: submits this relay's checkpoints to its witnesses.
        let submitter = tokio::spawn(rogatory_relay::witness::submit(relay.clone(), node.clone()));
        let (n, r) = (node.clone(), relay.clone());
        let server = tokio::spawn(async move {
            n.serve(move |s| {
                let r = r.clone();
                async move { serve_session(r, s, ServeConfig::default()).await }
            })
            .await
        });
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut housekeeping = tokio::time::Instant::now();
        let mut ticks = 0u64;
        loop {
            tick.tick().await;
            if crate::cleanup::SHUTDOWN.load(Ordering::SeqCst) {
                break;
            }
            ticks += 1;
            // `relay.md` §11: every 200 ms, a change to the trust store, revocations, CA
            // bundle, CRL or policy file is loaded without a restart.
            // SIGHUP reloads at once, changed or not (a CRL refreshed in place with the same
            // bytes is re-read too).
            if crate::cleanup::RELOAD.swap(false, Ordering::SeqCst) {
                tracing::info!("SIGHUP: reloading trust, revocations and policy");
                reload(home, a, &relay, &node, &mut watch);
            } else if ticks.is_multiple_of(2) && watch.changed() {
                reload(home, a, &relay, &node, &mut watch);
            }
            if housekeeping.elapsed() >= Duration::from_secs(3600) {
                housekeeping = tokio::time::Instant::now();
                let r = relay.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Err(e) = r.purge(false) {
                        tracing::warn!(error = %e, "purge failed");
                    }
                    if let Err(e) = r.gc_partials() {
                        tracing::warn!(error = %e, "gc failed");
                    }
                })
                .await;
            }
        }
        tracing::info!("shutting down");
        node.shutdown(ErrorCode::SHUTTING_DOWN).await;
        server.abort();
        submitter.abort();
        Ok::<_, CliError>(())
    })
}

/// What the running relay watches (`relay.md` §11): every file of `trust/` and
/// `trust/revoked/`, this agency's card, the CA bundle and CRL, and the policy file, by
/// contents.
struct Watch {
    paths: Vec<std::path::PathBuf>,
    dirs: Vec<std::path::PathBuf>,
    seen: Vec<(std::path::PathBuf, Option<Vec<u8>>)>,
}

impl Watch {
    fn new(home: &Home, policy: Option<&std::path::Path>) -> Self {
        let mut paths: Vec<_> = ["card.note", "tls/ca.pem", "tls/crl.pem"]
            .iter()
            .map(|p| home.path(p))
            .collect();
        paths.extend(policy.map(|p| p.to_owned()));
        paths.push(
            home.path("relay")
                .join(rogatory_relay::witness::CONFIG_FILE),
        );
        Watch {
            paths,
            dirs: vec![home.path("trust"), home.path("trust/revoked")],
            seen: Vec::new(),
        }
    }

    fn snapshot(&self) -> Vec<(std::path::PathBuf, Option<Vec<u8>>)> {
        let mut files = self.paths.clone();
        for d in &self.dirs {
            if let Ok(rd) = std::fs::read_dir(d) {
                files.extend(
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_file() && !is_temporary(p)),
                );
            }
        }
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let b = std::fs::read(&p).ok();
                (p, b)
            })
            .collect()
    }

    /// Whether anything changed since the last [`Watch::mark`].
    fn changed(&self) -> bool {
        self.snapshot() != self.seen
    }

    fn mark(&mut self, snapshot: Vec<(std::path::PathBuf, Option<Vec<u8>>)>) {
        self.seen = snapshot;
    }
}

/// A file being written by `write_file` (`.<name>.tmp-<pid>`) is not read until renamed.
fn is_temporary(p: &std::path::Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Reads the trust store, revocations and policy of `home` (nothing is changed if any is bad)
/// and the peer trust built from them, with the relay's refusal log and post-quantum setting.
fn load_trust(
    home: &Home,
    a: &RelayServeArgs,
    relay: &Arc<Relay<DiskStorage>>,
    watch: &mut Watch,
) -> Result<(
    rogatory_transport::PeerTrust,
    rogatory_custody::TrustStore,
    rogatory_custody::Revocations,
    Policy,
)> {
    // Marked first: a bad file is looked at again only once something changes.
    watch.mark(watch.snapshot());
    let store = home.trust_store()?;
    let revocations = store.revocations().clone();
    let policy = match a.policy.as_deref() {
        Some(p) => Policy::load(p).map_err(|e| CliError::new(Exit::Usage, e.to_string()))?,
        None => Policy::default(),
    };
    let mut peer_trust = home.peer_trust(&store)?;
    peer_trust.on_reject(rogatory_relay::serve::tls_rejection_hook(relay.clone()));
    peer_trust.require_post_quantum(a.require_pq_tls);
    // `relay.md` §12: the witness configuration, checked before anything is replaced.
    let witness = rogatory_relay::witness::WitnessConfig::load(&home.path("relay"))
        .map_err(|e| CliError::new(Exit::Usage, e))?;
    relay.reload(store.clone(), revocations.clone(), policy.clone());
    relay.witness().set_config(witness);
    Ok((peer_trust, store, revocations, policy))
}

/// `relay.md` §11: loads the changed configuration; if any part of it is bad, logs one error
/// line and keeps serving with the previous one. Then closes the connections of agencies no
/// longer trusted.
fn reload(
    home: &Home,
    a: &RelayServeArgs,
    relay: &Arc<Relay<DiskStorage>>,
    node: &Node,
    watch: &mut Watch,
) {
    let old = (relay.trust(), relay.revocations(), relay.policy());
    let loaded = load_trust(home, a, relay, watch).and_then(|(peer_trust, store, revs, policy)| {
        let published = policy.published();
        match node.reload(peer_trust) {
            Ok(closed) => Ok((store, revs, published, closed)),
            Err(e) => Err(CliError::new(Exit::Usage, "the new TLS trust is unusable").source(e)),
        }
    });
    match loaded {
        Ok((store, revs, published, closed)) => {
            node.set_policy(published);
            tracing::info!(
                agencies = store.cards().count(),
                revoked_keys = revs.iter().count(),
                closed = closed.len(),
                "reloaded trust, revocations and policy"
            );
        }
        Err(e) => {
            // Back to what was served; the bad files are looked at again when they change.
            relay.reload((*old.0).clone(), (*old.1).clone(), (*old.2).clone());
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why = format!("{why}: {s}");
                src = s.source();
            }
            tracing::error!("reload failed, the previous trust and policy stay in force: {why}");
        }
    }
}

pub(crate) fn purge(
    home: &Home,
    dry_run: bool,
    policy: Option<&std::path::Path>,
    events: &Events,
) -> Result<()> {
    // A dry run beside a running relay only reads.
    let lock = if dry_run {
        lock_data_dir(home).ok()
    } else {
        Some(lock_data_dir(home)?)
    };
    let relay = open_relay(home, policy, lock.is_some())?;
    let done = relay
        .purge(dry_run)
        .map_err(|e| CliError::new(Exit::Storage, format!("purge: {e}")))?;
    for (r, why) in &done {
        if events.json {
            events.emit(Json::RelayPurged {
                dry_run,
                transfer_id: r.transfer.to_string(),
                sender: r.sender.to_string(),
                ciphertext_bytes: r.ciphertext_bytes,
                reason: why.to_string(),
            });
            continue;
        }
        outln!(
            "{}{}\t{}\t{} bytes\t{why}",
            if dry_run { "would purge " } else { "purged " },
            r.transfer,
            r.sender,
            r.ciphertext_bytes
        );
    }
    if events.json {
        events.emit(Json::RelayPurgeDone {
            purged: done.len() as u64,
            ciphertext_bytes: done.iter().map(|(r, _)| r.ciphertext_bytes).sum(),
            dry_run,
        });
    } else if done.is_empty() {
        errln!(
            "rogatory: nothing {}",
            if dry_run {
                "would be purged"
            } else {
                "to purge"
            }
        );
    }
    Ok(())
}

pub(crate) fn gc(home: &Home, policy: Option<&std::path::Path>, events: &Events) -> Result<()> {
    let _lock = lock_data_dir(home)?;
    let relay = open_relay(home, policy, true)?;
    let removed = relay
        .gc_partials()
        .map_err(|e| CliError::new(Exit::Storage, format!("gc: {e}")))?;
    if removed.is_empty() {
        events.emit_line("gc: no partial upload to remove");
    }
    for t in &removed {
        if events.json {
            events.emit(Json::RelayGc {
                transfer_id: t.to_string(),
            });
        } else {
            outln!("removed partial {t}");
        }
    }
    if events.json {
        events.emit(Json::RelayGcDone {
            removed: removed.len() as u64,
        });
    }
    Ok(())
}

/// `relay scrub` (`relay.md` §10): marks what it finds (damaged transfers, their files set back
/// for the sender to re-send, one damage-report each) when it can take the data directory's
/// lock; next to a running relay it only reports.
pub(crate) fn scrub(home: &Home, events: &Events) -> Result<()> {
    let lock = lock_data_dir(home).ok();
    let relay = open_relay(home, None, lock.is_some())?;
    let found = if lock.is_some() {
        relay.scrub()
    } else {
        errln!(
            "rogatory: the relay is running: faults are reported, not marked damaged (stop it and scrub again to mark them)"
        );
        relay.scrub_dry_run()
    }
    .map_err(|e| CliError::new(Exit::Storage, format!("scrub: {e}")))?;
    for (t, f, why) in &found {
        if events.json {
            events.emit(Json::ScrubFault {
                transfer_id: t.to_string(),
                file: u64::from(*f),
                problem: why.clone(),
            });
        } else {
            outln!("{t}\tfile {f}\t{why}");
        }
    }
    if found.is_empty() {
        if events.json {
            events.emit(Json::ScrubOk {});
        } else {
            outln!("scrub: every stored piece verifies");
        }
        Ok(())
    } else {
        Err(CliError::new(
            Exit::Integrity,
            format!("scrub: {} faults", found.len()),
        ))
    }
}

/// `status`: the client library's (`rogatory_client::status`), printed as lines.
pub(crate) fn status(home: &Home, a: &StatusArgs, events: &Events) -> Result<()> {
    let st = rogatory_client::status::status(
        home,
        &rogatory_client::status::StatusRequest {
            relay: a.relay.clone(),
            transfer: a.transfer.clone(),
        },
    )?;
    let state = rogatory_relay::relay::state_name(st.state);
    if events.json {
        events.emit(Json::Status {
            transfer_id: st.transfer.to_string(),
            state: state.to_owned(),
            tls_key_exchange: st.tls_key_exchange.clone(),
            receipts: st.receipts.len() as u64,
        });
    } else {
        outln!("transfer {}\nstate {state}", st.transfer);
        outln!(
            "tls-key-exchange {}",
            st.tls_key_exchange.as_deref().unwrap_or("unknown")
        );
    }
    // Every receipt the relay holds is verified and kept under receipts/ (docs/cli.md
    // "Sending").
    for r in rogatory_client::status::save_receipts(home, &st)? {
        if events.json {
            events.receipt(r.kind, r.agency.clone(), &r.path);
        } else {
            let by = r.agency.map(|a| format!(" by {a}")).unwrap_or_default();
            outln!("receipt {}{by} {}", r.kind, r.path.display());
        }
    }
    Ok(())
}

/// Why the relay cannot listen: a local failure, never "refused by the peer". A busy port is a
/// local resource (exit 7); an address this machine does not have is a usage error (exit 2).
fn listen_error(addr: &SocketAddr, e: rogatory_transport::net::NetError) -> CliError {
    use std::io::ErrorKind as K;
    match &e {
        rogatory_transport::net::NetError::Io(io) if io.kind() == K::AddrInUse => CliError::new(
            Exit::Storage,
            format!("cannot listen on {addr}: the port is in use"),
        )
        .hint("stop the other program, or pass another --listen port"),
        rogatory_transport::net::NetError::Io(io) if io.kind() == K::AddrNotAvailable => {
            CliError::new(
                Exit::Usage,
                format!("cannot listen on {addr}: this machine has no such address"),
            )
            .hint("pass one of this machine's addresses, or 0.0.0.0, to --listen")
        }
        _ => CliError::new(Exit::Storage, format!("cannot listen on {addr}")).source(e),
    }
}
