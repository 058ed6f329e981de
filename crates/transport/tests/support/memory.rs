//! An in-memory relay side for transport tests: it verifies tables and pieces like the relay
//! does, and loses whatever was not synced when an upload is abandoned (a crash).

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rogatory_custody::merkle::leaf_hash;
use rogatory_custody::{PieceLayout, TransferId, piece_layout};
use rogatory_transport::frame::Offer;
use rogatory_transport::net::{IntakeHandler, PieceSource};
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
            let t = (0..layout.count())
                .map(|i| {
                    let r = layout.range(i).expect("range");
                    leaf_hash(&d[r.start as usize..r.end as usize])
                })
                .collect();
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

impl PieceSource for Files {
    fn table(
        &mut self,
        file: u32,
        first: u64,
        count: usize,
        out: &mut Vec<[u8; 32]>,
    ) -> io::Result<()> {
        let t = &self.tables[file as usize];
        out.extend_from_slice(&t[first as usize..first as usize + count]);
        Ok(())
    }
    fn piece(&mut self, file: u32, piece: u64, out: &mut Vec<u8>) -> io::Result<()> {
        let r = self.layouts[file as usize].range(piece).expect("range");
        out.extend_from_slice(&self.data[file as usize][r.start as usize..r.end as usize]);
        Ok(())
    }
}

#[derive(Default)]
struct Stored {
    tables: Vec<Vec<[u8; 32]>>,
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
    fn offer(
        &self,
        _peer: &PeerIdentity,
        offer: &Offer,
    ) -> Result<(Vec<PieceLayout>, Vec<u64>), ProtocolError> {
        let f = self
            .expected
            .get(&offer.transfer)
            .ok_or_else(|| err(ErrorCode::POLICY, "unexpected transfer"))?;
        let mut st = self.state.lock().expect("lock");
        let s = st.entry(offer.transfer).or_insert_with(|| Stored {
            tables: vec![Vec::new(); f.layouts.len()],
            bytes: vec![Vec::new(); f.layouts.len()],
            received: vec![0; f.layouts.len()],
            durable: vec![0; f.layouts.len()],
            receipted: false,
        });
        Ok((f.layouts.clone(), s.durable.clone()))
    }

    fn table(
        &self,
        t: TransferId,
        file: u32,
        first: u64,
        hashes: &[[u8; 32]],
    ) -> Result<(), ProtocolError> {
        let f = &self.expected[&t];
        let mut st = self.state.lock().expect("lock");
        let s = st
            .get_mut(&t)
            .ok_or_else(|| err(ErrorCode::INTERNAL, "no transfer"))?;
        let want = &f.tables[file as usize][first as usize..first as usize + hashes.len()];
        if want != hashes {
            return Err(err(ErrorCode::INTEGRITY, "table does not match piece_root"));
        }
        let table = &mut s.tables[file as usize];
        if table.len() as u64 == first {
            table.extend_from_slice(hashes);
        }
        Ok(())
    }

    fn store(
        &self,
        t: TransferId,
        file: u32,
        piece: u64,
        bytes: &[u8],
    ) -> Result<(), ProtocolError> {
        let mut st = self.state.lock().expect("lock");
        let s = st
            .get_mut(&t)
            .ok_or_else(|| err(ErrorCode::INTERNAL, "no transfer"))?;
        if s.tables[file as usize][piece as usize] != leaf_hash(bytes) {
            return Err(err(
                ErrorCode::INTEGRITY,
                "piece does not match its table entry",
            ));
        }
        let f = file as usize;
        if s.received[f] != piece {
            return Err(err(ErrorCode::INTERNAL, "store out of order"));
        }
        s.bytes[f].extend_from_slice(bytes);
        s.received[f] += 1;
        Ok(())
    }

    fn duplicate(
        &self,
        t: TransferId,
        file: u32,
        piece: u64,
        bytes: &[u8],
    ) -> Result<(), ProtocolError> {
        let st = self.state.lock().expect("lock");
        let s = st
            .get(&t)
            .ok_or_else(|| err(ErrorCode::INTERNAL, "no transfer"))?;
        if s.tables[file as usize][piece as usize] != leaf_hash(bytes) {
            return Err(err(
                ErrorCode::CONFLICT,
                "a resent piece differs from the stored one",
            ));
        }
        Ok(())
    }

    fn sync(&self, t: TransferId) -> Result<Vec<u64>, ProtocolError> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().expect("lock");
        let s = st
            .get_mut(&t)
            .ok_or_else(|| err(ErrorCode::INTERNAL, "no transfer"))?;
        s.durable = s.received.clone();
        Ok(s.durable.clone())
    }

    fn receipt(&self, t: TransferId) -> Result<String, ProtocolError> {
        let mut st = self.state.lock().expect("lock");
        let s = st
            .get_mut(&t)
            .ok_or_else(|| err(ErrorCode::INTERNAL, "no transfer"))?;
        if !s.receipted {
            s.receipted = true;
            self.receipts.fetch_add(1, Ordering::Relaxed);
        }
        Ok(format!("custody receipt for {t}\n"))
    }

    fn abandon(&self, t: TransferId) {
        // A crash loses what was not synced.
        let f = &self.expected[&t];
        let mut st = self.state.lock().expect("lock");
        if let Some(s) = st.get_mut(&t) {
            for (i, l) in f.layouts.iter().enumerate() {
                s.received[i] = s.durable[i];
                s.bytes[i].truncate(piece_offset(l, s.durable[i]) as usize);
            }
        }
    }
}
