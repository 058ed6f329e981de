//! An in-memory relay side for transport tests: it checks, like the relay does, that the pieces
//! it received hash to the piece roots the sender seals at the end, and loses whatever was not
//! synced when an upload is abandoned (a crash).

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rogatory_custody::{PieceHash, PieceLayout, PieceTable, TransferId, piece_layout};
use rogatory_transport::frame::{Offer, Seal};
use rogatory_transport::net::{Accepted, IntakeHandler, Lease, PieceSource};
use rogatory_transport::tls::PeerIdentity;
use rogatory_transport::upload::piece_offset;
use rogatory_transport::{ErrorCode, ProtocolError};

/// Files that look like age files to the protocol: a head piece and 64 KiB chunks.
#[derive(Clone)]
pub struct Files {
    pub layouts: Vec<PieceLayout>,
    pub data: Vec<Vec<u8>>,
    pub tables: Vec<Vec<[u8; 32]>>,
}

impl Files {
    pub fn random(sizes: &[u64], seed: u64) -> Files {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut f = Files {
            layouts: vec![],
            data: vec![],
            tables: vec![],
        };
        for &size in sizes {
            let head = 200;
            let ct = head + rogatory_envelope::payload_len(size);
            let layout = piece_layout(size, ct).expect("layout");
            let mut d = vec![0u8; ct as usize];
            rng.fill_bytes(&mut d);
            let t = PieceTable::of_ciphertext(&layout, PieceHash::CURRENT, &d)
                .expect("table")
                .leaves()
                .to_vec();
            f.layouts.push(layout);
            f.data.push(d);
            f.tables.push(t);
        }
        f
    }

    pub fn total(&self) -> u64 {
        self.layouts.iter().map(|l| l.ciphertext_size).sum()
    }
}

impl Files {
    /// The roots a sender would seal: one per file, as text.
    pub fn roots_text(&self) -> String {
        self.tables
            .iter()
            .map(|t| {
                let root = rogatory_custody::merkle::Tree::from_leaves(t.iter().copied()).root();
                root.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n"
            })
            .collect()
    }
}

impl PieceSource for Files {
    fn seal(&mut self) -> io::Result<(String, String, Vec<u8>)> {
        // The test "manifest" is the list of piece roots; the test relay checks it.
        Ok(("test seal\n".into(), self.roots_text(), Vec::new()))
    }
    fn piece(&mut self, file: u32, piece: u64, out: &mut [u8]) -> io::Result<()> {
        let r = self.layouts[file as usize].range(piece).expect("range");
        out.copy_from_slice(&self.data[file as usize][r.start as usize..r.end as usize]);
        Ok(())
    }
}

#[derive(Default)]
struct Stored {
    /// Leaf hashes of the pieces received, computed on arrival.
    leaves: Vec<Vec<[u8; 32]>>,
    bytes: Vec<Vec<u8>>,
    received: Vec<u64>,
    durable: Vec<u64>,
    receipted: bool,
}

/// The test relay's store.
pub struct Memory {
    expected: HashMap<TransferId, Files>,
    state: Mutex<HashMap<TransferId, Stored>>,
    pub receipts: AtomicU64,
    pub syncs: AtomicU64,
}

impl Memory {
    pub fn new(expected: Vec<(TransferId, Files)>) -> Memory {
        Memory {
            expected: expected.into_iter().collect(),
            state: Mutex::default(),
            receipts: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        }
    }

    pub fn bytes(&self, t: TransferId) -> Vec<Vec<u8>> {
        self.state
            .lock()
            .expect("lock")
            .get(&t)
            .map(|s| s.bytes.clone())
            .unwrap_or_default()
    }

    pub fn durable_bytes(&self, t: TransferId) -> u64 {
        let st = self.state.lock().expect("lock");
        let Some(s) = st.get(&t) else { return 0 };
        let f = &self.expected[&t];
        s.durable
            .iter()
            .zip(&f.layouts)
            .map(|(&d, l)| piece_offset(l, d))
            .sum()
    }
}

fn err(code: ErrorCode, m: &str) -> ProtocolError {
    ProtocolError::new(code, m)
}

impl IntakeHandler for Memory {
    fn offer(&self, _peer: &PeerIdentity, offer: &Offer) -> Result<Accepted, ProtocolError> {
        let f = self
            .expected
            .get(&offer.transfer)
            .ok_or_else(|| err(ErrorCode::POLICY, "unexpected transfer"))?;
        let mut st = self.state.lock().expect("lock");
        let s = st.entry(offer.transfer).or_insert_with(|| Stored {
            leaves: vec![Vec::new(); f.layouts.len()],
            bytes: vec![Vec::new(); f.layouts.len()],
            received: vec![0; f.layouts.len()],
            durable: vec![0; f.layouts.len()],
            receipted: false,
        });
        Ok(Accepted {
            layouts: f.layouts.clone(),
            durable: s.durable.clone(),
            lease: Lease {
                transfer: offer.transfer,
                id: 0,
            },
        })
    }

    fn store(
        &self,
        Lease { transfer: t, .. }: Lease,
        file: u32,
        piece: u64,
        bytes: &[u8],
    ) -> Result<(), ProtocolError> {
        let mut st = self.state.lock().expect("lock");
        let s = st
            .get_mut(&t)
            .ok_or_else(|| err(ErrorCode::INTERNAL, "no transfer"))?;
        let f = file as usize;
        if s.received[f] != piece {
            return Err(err(ErrorCode::INTERNAL, "store out of order"));
        }
        s.leaves[f].push(PieceHash::CURRENT.leaf(bytes));
        s.bytes[f].extend_from_slice(bytes);
        s.received[f] += 1;
        Ok(())
    }

    fn sync(&self, Lease { transfer: t, .. }: Lease) -> Result<Vec<u64>, ProtocolError> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("lock");
        let s = st
            .get_mut(&t)
            .ok_or_else(|| err(ErrorCode::INTERNAL, "no transfer"))?;
        s.durable = s.received.clone();
        Ok(s.durable.clone())
    }

    fn complete(
        &self,
        _peer: &PeerIdentity,
        Lease { transfer: t, .. }: Lease,
        seal: &Seal,
    ) -> Result<String, ProtocolError> {
        let mut st = self.state.lock().expect("lock");
        let s = st
            .get_mut(&t)
            .ok_or_else(|| err(ErrorCode::INTERNAL, "no transfer"))?;
        // Keyless verification: the roots of what arrived against the roots the sender sealed.
        let held = Files {
            layouts: vec![],
            data: vec![],
            tables: s.leaves.clone(),
        };
        if seal.manifest != held.roots_text() {
            return Err(err(
                ErrorCode::INTEGRITY,
                "pieces do not match the sealed roots",
            ));
        }
        if !s.receipted {
            s.receipted = true;
            self.receipts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(format!("custody receipt for {t}\n"))
    }

    fn abandon(&self, Lease { transfer: t, .. }: Lease) {
        // A crash loses what was not synced.
        let f = &self.expected[&t];
        let mut st = self.state.lock().expect("lock");
        if let Some(s) = st.get_mut(&t) {
            for (i, l) in f.layouts.iter().enumerate() {
                s.received[i] = s.durable[i];
                s.leaves[i].truncate(s.durable[i] as usize);
                s.bytes[i].truncate(piece_offset(l, s.durable[i]) as usize);
            }
        }
    }
}
