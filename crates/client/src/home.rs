//! The agency's state directory (`--home`, `ROGATORY_HOME`, default `$XDG_DATA_HOME/rogatory`):
//!
//! ```text
//! identity.txt      the agency identity (secret, 0600; relay-only homes hold no age key)
//! tls/key.pem       TLS private key (secret, 0600)
//! tls/cert.pem      TLS certificate (self-signed, names <id>.rogatory.invalid; pinned by the card)
//! tls/ca.pem        optional CA bundle; tls/crl.pem optional CRL
//! card.note         this agency's signed card (public), its newest
//! card-chain.note   every card it issued, oldest first, once it rotated its keys (`custody.md` §8.5)
//! retired/<UTC>.identity.txt  age secrets of a retired identity (secret, 0600; `agency rotate`)
//! rotate.new/       a rotation being installed (`agency rotate` completes or discards it)
//! trust/<id>.card   cards of trusted agencies: one card, or its card chain (`custody.md` §8.5)
//! trust/revoked/    signed key revocations, one file per key (`custody.md` §8.3)
//! outbox/<key>/     sends in progress: offer, headers, resume points (no data; `send` module)
//! sent/<transfer>/  completed sends: manifest, contents and seal; state, heads and digests for
//!                   a repair (after `purge`: seal and purged.json)
//! receipts/         receipts: custody, each recipient's delivery receipt, purge
//! purged.log        every `purge` at this end (JSON lines)
//! relay/            the relay's data directory (`relay serve`)
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rogatory_custody::{
    AgencyCard, AgencyId, AgencyIdentity, CardChain, Revocation, Revocations, TrustStore,
};
use rogatory_envelope::AnyIdentity;
use rogatory_transport::{PeerTrust, TlsIdentity};

use crate::error::{Error as CliError, ErrorKind as Exit, Result, io};

#[derive(Debug, Clone)]
pub struct Home {
    /// The directory.
    pub root: PathBuf,
}

impl Home {
    pub fn resolve(flag: Option<&Path>) -> Result<Home> {
        let root = match flag {
            Some(p) => p.to_owned(),
            None => match std::env::var_os("ROGATORY_HOME") {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ => {
                    let base = std::env::var_os("XDG_DATA_HOME")
                        .filter(|p| !p.is_empty())
                        .map(PathBuf::from)
                        .or_else(|| {
                            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share"))
                        })
                        .ok_or_else(|| {
                            CliError::new(Exit::Usage, "no home directory")
                                .hint("pass --home DIR or set ROGATORY_HOME")
                        })?;
                    base.join("rogatory")
                }
            },
        };
        Ok(Home { root })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn identity(&self) -> Result<AgencyIdentity> {
        self.refuse_staged_rotation()?;
        let p = self.path("identity.txt");
        let text = read_secret(&p)?;
        AgencyIdentity::parse(&text).map_err(|e| {
            CliError::new(
                Exit::NoKey,
                format!("{}: not an agency identity", p.display()),
            )
            .source(e)
        })
    }

    /// `docs/cli.md` "Rotating keys": while a complete rotation is staged (`rotate.new/complete`)
    /// its installation may have stopped half way (a new identity beside the old card), so
    /// nothing signs or connects with this home until `agency rotate` completes it.
    fn refuse_staged_rotation(&self) -> Result<()> {
        if self.path("rotate.new/complete").exists() {
            return Err(CliError::new(
                Exit::Integrity,
                format!(
                    "{}: an interrupted key rotation is staged; this home's keys and card may not match",
                    self.path("rotate.new").display()
                ),
            )
            .hint("run `rogatory agency rotate` to complete it"));
        }
        Ok(())
    }

    pub fn tls(&self) -> Result<TlsIdentity> {
        self.refuse_staged_rotation()?;
        let cert = self.path("tls/cert.pem");
        let key = self.path("tls/key.pem");
        let c = fs::read(&cert).map_err(|e| no_key(&cert, e))?;
        let k = read_secret(&key)?;
        TlsIdentity::from_pem(&c, k.as_bytes()).map_err(|e| {
            CliError::new(
                Exit::NoKey,
                format!("{}: unusable TLS identity", cert.display()),
            )
            .source(e)
        })
    }

    /// Trusted agencies' cards (and this agency's own card): the one checked loader every
    /// command and the relay use (`custody.md` §8.4). Each `trust/*.card` must be named after
    /// its card's id, and a card for this agency's own id must carry its own key; anything else
    /// is refused here, at load, naming the file (exit 3).
    pub fn trust_store(&self) -> Result<TrustStore> {
        let mut t = TrustStore::new();
        if self.path("card.note").exists() {
            t.insert_chain(self.card_chain()?);
        }
        let dir = self.path("trust");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(t),
            Err(e) => return Err(io("reading", &dir, e)),
        };
        let mut paths: Vec<PathBuf> = rd
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| io("reading", &dir, e))?;
        paths.sort();
        for p in paths
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "card"))
        {
            let chain = read_chain(&p)?;
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            t.insert_chain_from_file(stem, chain).map_err(|e| {
                CliError::new(
                    Exit::Integrity,
                    format!("{}: {e}; the trust store is refused", p.display()),
                )
                .hint(format!(
                    "remove {} (cards are trusted only with `rogatory trust add`, which names the file after the agency)",
                    p.display()
                ))
            })?;
        }
        // `custody.md` §8.3: statements and seals signed by a revoked signing key and dated at
        // or after its revocation are refused by everything that verifies with this store.
        let revocations = self.revocations(&t)?;
        t.apply_signing_revocations(revocations);
        Ok(t)
    }

    /// The key revocations under `trust/revoked/` (`custody.md` §8.3), each verified against
    /// `store`: by the card of the agency it names, or by this agency's own card for a local
    /// revocation. A file that does not verify, or whose name is not
    /// `<agency>.<kind>.<key-sha256>.note` for its contents, is an error (exit 3). A
    /// revocation of an agency that is no longer trusted is skipped (its card is gone, and the
    /// agency with it).
    pub fn revocations(&self, store: &TrustStore) -> Result<Revocations> {
        let mut set = Revocations::new();
        let dir = self.path("trust/revoked");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(set),
            Err(e) => return Err(io("reading", &dir, e)),
        };
        let home = self.card()?.id.clone();
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "note"))
        {
            let b = fs::read(&p).map_err(|e| io("reading", &p, e))?;
            let unverified = rogatory_custody::Note::parse(&b)
                .ok()
                .and_then(|n| rogatory_custody::Statement::parse(n.unverified_text()).ok())
                .and_then(|s| Revocation::from_statement(&s));
            if let Some(r) = &unverified
                && store.get(&r.agency).is_none()
            {
                continue;
            }
            let r = Revocation::open(&b, store, &home).map_err(|e| {
                CliError::new(
                    Exit::Integrity,
                    format!("{}: not a valid key revocation", p.display()),
                )
                .source(e)
                .hint("remove the file, or import the revocation again with `rogatory trust revoke FILE`")
            })?;
            if p.file_name().and_then(|n| n.to_str()) != Some(r.file_name().as_str()) {
                return Err(CliError::new(
                    Exit::Integrity,
                    format!(
                        "{}: holds the revocation {}, stored under another name",
                        p.display(),
                        r.file_name()
                    ),
                )
                .hint("import it with `rogatory trust revoke FILE`, which names it"));
            }
            set.insert(r);
        }
        Ok(set)
    }

    /// Peer trust for TLS: every trusted agency with its card's SPKI pins, plus the optional CA
    /// bundle and CRL, and every revoked TLS key (`custody.md` §8.3).
    pub fn peer_trust(&self, store: &TrustStore) -> Result<PeerTrust> {
        let mut t = PeerTrust::new();
        for spki in store.revocations().tls_spki() {
            t.revoke_spki(*spki);
        }
        let ca = self.path("tls/ca.pem");
        if ca.exists() {
            let b = fs::read(&ca).map_err(|e| io("reading", &ca, e))?;
            t.add_ca_pem(&b).map_err(|e| {
                CliError::new(Exit::Usage, format!("{}: bad CA bundle", ca.display())).source(e)
            })?;
        }
        let crl = self.path("tls/crl.pem");
        if crl.exists() {
            let b = fs::read(&crl).map_err(|e| io("reading", &crl, e))?;
            t.add_crl(&b).map_err(|e| {
                CliError::new(Exit::Usage, format!("{}: bad CRL", crl.display())).source(e)
            })?;
        }
        for c in store.cards() {
            t.add_agency(c.id.clone(), c.tls_spki_sha256.clone());
        }
        Ok(t)
    }

    pub fn card(&self) -> Result<rogatory_custody::Verified<AgencyCard>> {
        read_card(&self.path("card.note"))
    }

    /// This agency's card chain (`custody.md` §8.5): `card-chain.note` if it rotated its keys
    /// (its newest card must be `card.note`), else `card.note` alone.
    pub fn card_chain(&self) -> Result<CardChain> {
        let card = self.card()?;
        let p = self.path("card-chain.note");
        if !p.exists() {
            return Ok(CardChain::single(card));
        }
        let chain = read_chain(&p)?;
        if **chain.newest() != *card {
            return Err(CliError::new(
                Exit::Integrity,
                format!(
                    "{}: its newest card is not {}",
                    p.display(),
                    self.path("card.note").display()
                ),
            )
            .hint(
                "if `agency rotate` was interrupted, run it again to complete it; otherwise restore both files from a backup",
            ));
        }
        Ok(chain)
    }

    /// Every age identity this agency decrypts with: its identity's, then those of every
    /// retired identity under `retired/` (`custody.md` §8.5), newest first, so that transfers
    /// encrypted to its recipients before a rotation still open.
    pub fn age_identities(&self) -> Result<Vec<AnyIdentity>> {
        let mut out = self.identity()?.age_identities();
        let dir = self.path("retired");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("reading", &dir, e)),
        };
        let mut paths: Vec<PathBuf> = rd
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| io("reading", &dir, e))?;
        paths.retain(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".identity.txt") && !n.starts_with('.'))
        });
        paths.sort();
        for p in paths.into_iter().rev() {
            let text = zeroize::Zeroizing::new(read_secret(&p)?);
            out.extend(rogatory_envelope::parse_identities(&text).map_err(|e| {
                CliError::new(
                    Exit::NoKey,
                    format!("{}: not an age identity file", p.display()),
                )
                .source(e)
            })?);
        }
        Ok(out)
    }
}

fn no_key(p: &Path, e: std::io::Error) -> CliError {
    CliError::new(Exit::NoKey, format!("cannot read {}", p.display()))
        .source(e)
        .hint("create this agency's keys with `rogatory agency init`")
}

/// Reads a secret file, refusing one that others can read (exit 4).
pub fn read_secret(p: &Path) -> Result<String> {
    let meta = fs::metadata(p).map_err(|e| no_key(p, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(CliError::new(
                Exit::NoKey,
                format!("{} is accessible by other users", p.display()),
            )
            .hint(format!("chmod 600 {}", p.display())));
        }
    }
    let _ = meta;
    let b = fs::read(p).map_err(|e| no_key(p, e))?;
    String::from_utf8(b)
        .map_err(|_| CliError::new(Exit::NoKey, format!("{} is not UTF-8", p.display())))
}

pub fn read_card(p: &Path) -> Result<rogatory_custody::Verified<AgencyCard>> {
    let b = fs::read(p).map_err(|e| {
        CliError::new(Exit::Usage, format!("cannot read card {}", p.display())).source(e)
    })?;
    AgencyCard::open(&b).map_err(|e| {
        CliError::new(
            Exit::Integrity,
            format!("{}: not a valid agency card", p.display()),
        )
        .source(e)
    })
}

/// Reads a card file or card-chain file (`custody.md` §8.5) and checks every link.
pub fn read_chain(p: &Path) -> Result<CardChain> {
    let b = fs::read(p).map_err(|e| {
        CliError::new(Exit::Usage, format!("cannot read card {}", p.display())).source(e)
    })?;
    CardChain::parse(&b).map_err(|e| {
        CliError::new(
            Exit::Integrity,
            format!("{}: not a valid agency card or card chain", p.display()),
        )
        .source(e)
    })
}

/// Makes a directory private to its owner (0700), whatever the umask.
pub fn make_private(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| io("securing", dir, e))?;
    }
    Ok(())
}

/// Creates `dir` and any missing parent, each created one private to its owner (0700) whatever
/// the umask (`cli.md` "Home"); directories that exist are left as they are.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let mut missing: Vec<&Path> = dir
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .take_while(|a| !a.exists())
        .collect();
    missing.reverse();
    for d in missing {
        let mut b = fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        match b.create(d) {
            Ok(()) => make_private(d)?,
            // Created meanwhile by another process: its mode is its creator's business.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(io("creating", d, e)),
        }
    }
    Ok(())
}

/// Writes a new file atomically (temp, fsync, rename, fsync dir) with `mode` (set explicitly,
/// whatever the umask); never replaces an existing file unless `replace`. Missing directories
/// are created private (0700).
pub fn write_file(p: &Path, data: &[u8], mode: u32, replace: bool) -> Result<()> {
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_private_dir(dir)?;
    if !replace && p.exists() {
        return Err(CliError::new(
            Exit::Safety,
            format!("{} already exists", p.display()),
        ));
    }
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        p.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    let _ = mode;
    let mut f = o.open(&tmp).map_err(|e| io("creating", &tmp, e))?;
    #[cfg(unix)]
    let r = {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .and_then(|_| f.write_all(data))
            .and_then(|_| f.sync_all())
    };
    #[cfg(not(unix))]
    let r = f.write_all(data).and_then(|_| f.sync_all());
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(io("writing", &tmp, e));
    }
    fs::rename(&tmp, p).map_err(|e| io("renaming", p, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))?;
    Ok(())
}

pub fn parse_agency(s: &str) -> Result<AgencyId> {
    s.parse().map_err(|_| {
        CliError::new(Exit::Usage, format!("{s:?} is not an agency id"))
            .hint("1 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit")
    })
}
