//! Relay test world: agencies with cards and certificates, real age files, sealed manifests,
//! a relay on 127.0.0.1 with its data in a temporary directory, and uploads through the real
//! transport.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rogatory_custody::{
    AgencyId, AgencyIdentity, FileEntry, Inventory, Legal, LegalText, Manifest, OnwardTransfer,
    PieceHash, PieceLayout, PieceTable, Sha256Digest, Timestamp, TransferId, TrustStore,
    piece_layout,
};
use rogatory_envelope::Encryptor;
use rogatory_relay::serve::serve_session;
use rogatory_relay::{Policy, Relay, RelayConfig, Storage};
use rogatory_transport::certs::{Ca, CertKey, Validity};
use rogatory_transport::frame::Offer;
use rogatory_transport::net::{
    NetError, Node, PieceSource, ServeConfig, Session, UploadOutcome, upload,
};
use rogatory_transport::upload::UploadConfig;
use rogatory_transport::{Limits, PeerTrust, TlsIdentity};

pub fn id(s: &str) -> AgencyId {
    s.parse().expect("id")
}

pub fn now() -> Timestamp {
    Timestamp::from_datetime(time::OffsetDateTime::now_utc())
}

/// One agency: identity, card, TLS certificate.
pub struct Agency {
    pub identity: AgencyIdentity,
    pub card_note: String,
    pub tls: TlsIdentity,
}

pub struct World {
    pub ca: Ca,
    pub a: Agency,
    pub b: Agency,
    pub c: Agency,
}

fn agency(ca: &Ca, name: &str, serial: u64) -> Agency {
    let identity = AgencyIdentity::generate(id(name));
    let ck: CertKey = ca
        .issue(&id(name), Validity::days_from_now(7), serial)
        .expect("cert");
    let tls = TlsIdentity::from_pem(ck.cert_pem.as_bytes(), ck.key_pem.as_bytes()).expect("tls");
    let (_, card_note) = identity
        .card(name, "XX", vec![tls.spki_sha256().expect("spki")])
        .expect("card");
    Agency {
        identity,
        card_note,
        tls,
    }
}

impl World {
    /// agency-a (sender), agency-b (the relay's agency and recipient), agency-c (another
    /// trusted agency).
    pub fn new() -> World {
        let ca = Ca::generate("relay test CA", Validity::days_from_now(30)).expect("ca");
        let a = agency(&ca, "agency-a", 1);
        let b = agency(&ca, "agency-b", 2);
        let c = agency(&ca, "agency-c", 3);
        World { ca, a, b, c }
    }

    pub fn cards(&self) -> TrustStore {
        let mut t = TrustStore::new();
        for ag in [&self.a, &self.b, &self.c] {
            let card = rogatory_custody::AgencyCard::open(ag.card_note.as_bytes()).expect("card");
            t.add(ag.card_note.as_bytes(), &card.fingerprint().to_string())
                .expect("trust");
        }
        t
    }

    pub fn peer_trust(&self) -> PeerTrust {
        let mut t = PeerTrust::new();
        t.add_ca_pem(self.ca.cert_pem().as_bytes()).expect("ca");
        for ag in [&self.a, &self.b, &self.c] {
            t.add_agency(
                ag.identity.id().clone(),
                vec![ag.tls.spki_sha256().expect("spki")],
            );
        }
        t
    }
}

/// A sealed transfer with its ciphertexts.
#[derive(Clone)]
pub struct Transfer {
    pub id: TransferId,
    pub inventory: Inventory,
    pub manifest: Manifest,
    pub manifest_json: String,
    /// The age-encrypted contents (`custody.md` §5.4).
    pub contents: Vec<u8>,
    pub seal: String,
    pub plaintexts: Vec<Vec<u8>>,
    pub ciphertexts: Vec<Vec<u8>>,
    pub layouts: Vec<PieceLayout>,
    pub tables: Vec<Vec<[u8; 32]>>,
}

pub fn legal() -> Legal {
    Legal {
        case_reference: Some(LegalText::new("XX-2026-0042", false).expect("text")),
        legal_basis: Some(LegalText::new("Budapest Convention, art. 31", false).expect("text")),
        requesting_authority: None,
        executing_authority: None,
        purpose: Some(LegalText::new("criminal investigation", false).expect("text")),
        classification: None,
        retain_until: Some("2030-12-31".parse().expect("date")),
        onward_transfer: Some(OnwardTransfer::Forbidden),
        notes: None,
    }
}

/// Encrypts `files` to the recipients and seals the manifest as `sender`.
pub fn transfer(
    sender: &Agency,
    recipients: &[&Agency],
    files: &[(&str, Vec<u8>)],
    legal: Legal,
    created: Timestamp,
) -> Transfer {
    transfer_hashed(
        sender,
        recipients,
        files,
        legal,
        created,
        PieceHash::CURRENT,
    )
}

/// [`transfer`] with the pieces hashed as `hash` says (`custody.md` §5.2).
pub fn transfer_hashed(
    sender: &Agency,
    recipients: &[&Agency],
    files: &[(&str, Vec<u8>)],
    legal: Legal,
    created: Timestamp,
    hash: PieceHash,
) -> Transfer {
    let id = TransferId::generate();
    let rcpts: Vec<_> = recipients
        .iter()
        .map(|r| r.identity.age_recipient())
        .collect();
    let mut entries = Vec::new();
    let (mut cts, mut layouts, mut tables, mut pts) = (vec![], vec![], vec![], vec![]);
    for (path, pt) in files {
        let enc = Encryptor::new(&rcpts).expect("encryptor");
        let mut ct = Vec::new();
        let mut w = enc.wrap_output(&mut ct).expect("wrap");
        w.write_all(pt).expect("write");
        w.finish().expect("finish");
        let layout = piece_layout(pt.len() as u64, ct.len() as u64).expect("layout");
        let table = PieceTable::of_ciphertext(&layout, hash, &ct).expect("table");
        entries.push(FileEntry {
            path: path.parse().expect("path"),
            size: pt.len() as u64,
            sha256: Sha256Digest::of(pt),
            ciphertext_size: ct.len() as u64,
            piece_root: table.root(),
        });
        layouts.push(layout);
        tables.push(table.leaves().to_vec());
        cts.push(ct);
        pts.push(pt.clone());
    }
    let recipients: Vec<AgencyId> = recipients.iter().map(|r| r.identity.id().clone()).collect();
    let mut inventory = Inventory::new(
        id,
        sender.identity.id().clone(),
        recipients,
        created,
        legal,
        entries,
    )
    .expect("inventory");
    inventory.piece_hash = hash;
    let contents = inventory.contents();
    let contents_ct = {
        let mut all = rcpts.clone();
        all.push(sender.identity.age_recipient());
        let enc = Encryptor::new(&all).expect("encryptor");
        let mut ct = Vec::new();
        let mut w = enc.wrap_output(&mut ct).expect("wrap");
        w.write_all(&contents.to_json()).expect("write");
        w.finish().expect("finish");
        ct
    };
    let public = inventory
        .legal
        .public(&rogatory_relay::policy::Policy::default().require);
    let manifest = inventory
        .manifest(public, &contents, &contents_ct)
        .expect("manifest");
    // The inventory sorts files by path; keep our vectors in its order.
    let order: Vec<usize> = inventory
        .files
        .iter()
        .map(|f| {
            files
                .iter()
                .position(|(p, _)| *p == f.path.as_str())
                .expect("file")
        })
        .collect();
    let seal = manifest
        .seal(sender.identity.signer(), created)
        .expect("seal");
    Transfer {
        id,
        manifest_json: String::from_utf8(manifest.to_json()).expect("utf8"),
        manifest,
        inventory,
        contents: contents_ct,
        seal,
        plaintexts: order.iter().map(|&i| pts[i].clone()).collect(),
        ciphertexts: order.iter().map(|&i| cts[i].clone()).collect(),
        layouts: order.iter().map(|&i| layouts[i]).collect(),
        tables: order.iter().map(|&i| tables[i].clone()).collect(),
    }
}

impl Transfer {
    pub fn offer(&self) -> Offer {
        Offer {
            transfer: self.id,
            offer: String::from_utf8(self.manifest.offer().to_json()).expect("utf8"),
        }
    }
    pub fn total(&self) -> u64 {
        self.ciphertexts.iter().map(|c| c.len() as u64).sum()
    }
}

/// Piece source over a transfer's ciphertexts; `tamper` flips a byte of one piece.
#[derive(Clone)]
pub struct Source {
    pub t: Transfer,
    pub tamper: Option<(u32, u64)>,
}

impl PieceSource for Source {
    fn seal(&mut self) -> std::io::Result<(String, String, Vec<u8>)> {
        Ok((
            self.t.seal.clone(),
            self.t.manifest_json.clone(),
            self.t.contents.clone(),
        ))
    }
    fn piece(&mut self, file: u32, piece: u64, out: &mut [u8]) -> std::io::Result<()> {
        let r = self.t.layouts[file as usize].range(piece).expect("range");
        out.copy_from_slice(&self.t.ciphertexts[file as usize][r.start as usize..r.end as usize]);
        if self.tamper == Some((file, piece)) {
            out[0] ^= 1;
        }
        Ok(())
    }
}

/// A relay of agency-b on 127.0.0.1.
pub struct Running<S: Storage + 'static> {
    pub relay: Arc<Relay<S>>,
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl<S: Storage + 'static> Drop for Running<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub type TestClock = Arc<Mutex<i64>>;

pub fn clock_at(t: i64) -> (TestClock, rogatory_relay::relay::Clock) {
    let c = Arc::new(Mutex::new(t));
    let c2 = c.clone();
    (
        c,
        Arc::new(move || Timestamp::from_unix(*c2.lock().expect("clock")).expect("time")),
    )
}

/// Where a relay with its data in `dir` keeps the pack of transfer row `row`.
pub fn pack_path(dir: &std::path::Path, row: i64) -> std::path::PathBuf {
    dir.join("inbox").join(format!("{row}.pack"))
}

pub fn open_relay<S: Storage + 'static>(
    w: &World,
    dir: &std::path::Path,
    policy: Policy,
    storage: S,
    clock: rogatory_relay::relay::Clock,
) -> Relay<S> {
    let cfg = RelayConfig {
        data_dir: dir.to_owned(),
        identity: w.b.identity.relay_only(),
        trust: w.cards(),
        policy,
        clock,
    };
    Relay::open(cfg, storage).expect("relay")
}

pub fn start<S: Storage + 'static>(w: &World, relay: Relay<S>) -> Running<S> {
    let relay = Arc::new(relay);
    let node = Arc::new(
        Node::server(
            "127.0.0.1:0".parse().expect("addr"),
            w.b.tls.clone(),
            w.peer_trust(),
            Limits::default(),
        )
        .expect("node")
        .with_policy(relay.policy().published()),
    );
    let addr = node.local_addr().expect("addr");
    let (n, r) = (node.clone(), relay.clone());
    let task = tokio::spawn(async move {
        n.serve(move |s: Session| {
            let r = r.clone();
            async move { serve_session(r, s, ServeConfig::default()).await }
        })
        .await
    });
    let dir = relay.data_dir().to_owned();
    Running {
        relay,
        node,
        addr,
        dir,
        task,
    }
}

pub async fn connect(w: &World, who: &Agency, addr: SocketAddr) -> Session {
    let _ = w;
    let node =
        Node::client(false, who.tls.clone(), w.peer_trust(), Limits::default()).expect("client");
    let s = node
        .connect(addr, Some(id("agency-b")))
        .await
        .expect("connect");
    // Keep the endpoint alive as long as the session.
    std::mem::forget(node);
    s
}

pub async fn send(
    s: &Session,
    t: &Transfer,
    tamper: Option<(u32, u64)>,
) -> Result<UploadOutcome, NetError> {
    let mut src = Source {
        t: t.clone(),
        tamper,
    };
    upload(
        s,
        &t.offer(),
        t.layouts.clone(),
        UploadConfig::default(),
        &mut src,
        |_| {},
    )
    .await
}

pub fn exhibits(seed: u8) -> Vec<(&'static str, Vec<u8>)> {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i as u8) ^ seed).collect();
    vec![
        ("a/empty.bin", vec![]),
        ("a/small.txt", vec![seed; 100]),
        ("b/big.bin", big),
        ("c/exact", vec![7; 65_536]),
    ]
}
