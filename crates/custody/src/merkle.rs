//! RFC 6962 / RFC 9162 §2.1 Merkle trees: hashing, an append-only tree with O(log n) roots and
//! proofs, and proof verification (`custody.md` §6).

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// A SHA-256 node or leaf hash.
pub type Hash = [u8; 32];

/// `custody.md` §10: proofs longer than this are refused (a tree of 2^64 leaves needs 64).
pub const MAX_PROOF_LEN: usize = 64;

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// Index or sizes out of range (index ≥ size, size1 > size2).
    #[error("index or size out of range")]
    Range,
    /// The proof has the wrong number of hashes.
    #[error("wrong proof length")]
    Length,
    /// The computed root differs from the expected one.
    #[error("root mismatch")]
    RootMismatch,
}

/// Parses a hash written in canonical padded base64 (checkpoint roots, tlog-proof lines).
pub fn parse_b64_hash(s: &str) -> Option<Hash> {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    let h: Hash = B64.decode(s).ok()?.try_into().ok()?;
    (B64.encode(h) == s).then_some(h)
}

/// `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

fn eq(a: &Hash, b: &Hash) -> bool {
    a.ct_eq(b).into()
}

/// The largest power of two strictly less than `n` (for `n ≥ 2`).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// An append-only Merkle tree that keeps the hash of every complete aligned subtree, so roots
/// and proofs for any size cost O(log n) hashes.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    /// `levels[k][j]` is the hash of leaves `[j * 2^k, (j + 1) * 2^k)`.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree of the given leaf hashes.
    pub fn from_leaves(leaves: impl IntoIterator<Item = Hash>) -> Self {
        let mut t = Self::new();
        for l in leaves {
            t.push(l);
        }
        t
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut level = 0;
        let mut hash = leaf;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(hash);
            let n = self.levels[level].len();
            if n % 2 == 1 {
                return;
            }
            hash = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            level += 1;
        }
    }

    /// Drops every leaf from `len` on (undoes appends that could not be made durable).
    pub fn truncate(&mut self, len: u64) {
        for (k, level) in self.levels.iter_mut().enumerate() {
            level.truncate(usize::try_from(len >> k).unwrap_or(usize::MAX));
        }
        while self.levels.last().is_some_and(Vec::is_empty) {
            self.levels.pop();
        }
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// `MTH(D[start:end])` for `start < end ≤ len`, where `start` is aligned as in RFC 9162.
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let k = n.trailing_zeros() as usize;
            return self.levels[k][(start >> k) as usize];
        }
        let k = split(n);
        node_hash(
            &self.subtree(start, start + k),
            &self.subtree(start + k, end),
        )
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        match size {
            0 => Some(empty_root()),
            s if s <= self.len() => Some(self.subtree(0, s)),
            _ => None,
        }
    }

    /// The current root.
    pub fn root(&self) -> Hash {
        self.root_at(self.len()).unwrap_or_else(empty_root)
    }

    /// RFC 9162 §2.1.3.1 `PATH(index, D[0:size])`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.len() {
            return None;
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Some(proof)
    }

    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.subtree(start, start + k));
        }
    }

    /// RFC 9162 §2.1.4.1 `PROOF(size1, D[0:size2])`.
    pub fn consistency_proof(&self, size1: u64, size2: u64) -> Option<Vec<Hash>> {
        if size1 > size2 || size2 > self.len() {
            return None;
        }
        let mut proof = Vec::new();
        if size1 > 0 && size1 < size2 {
            self.subproof(size1, 0, size2, true, &mut proof);
        }
        Some(proof)
    }

    fn subproof(&self, m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(self.subtree(start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, whole, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.subtree(start, start + k));
        }
    }
}

/// RFC 9162 §2.1.3.2: verifies that `leaf` is at `index` in the tree of `size` with `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Range);
    }
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::Length);
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::Length);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::Length);
    }
    if eq(&r, root) {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// RFC 9162 §2.1.4.2: verifies that the tree of `size1` with `root1` is a prefix of the tree
/// of `size2` with `root2`.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &Hash,
    root2: &Hash,
) -> Result<(), ProofError> {
    // Every tree extends the empty tree: a proof from size 0 proves nothing, and is refused as
    // the reference verifier does.
    if size1 > size2 || size1 == 0 {
        return Err(ProofError::Range);
    }
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::Length);
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::Length);
        }
        return if eq(root1, root2) {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::Length);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        path.push(*root1);
    }
    path.extend_from_slice(proof);
    let (mut fn_, mut sn) = (size1 - 1, size2 - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return Err(ProofError::Length);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::Length);
    }
    if eq(&fr, root1) && eq(&sr, root2) {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference MTH by the RFC's recursive definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn roots_and_proofs_agree_with_the_definition_for_every_small_size() {
        let leaves: Vec<Hash> = (0..70u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let tree = Tree::from_leaves(leaves.iter().copied());
        for size in 0..=70u64 {
            let root = tree.root_at(size).expect("root");
            assert_eq!(root, mth(&leaves[..size as usize]), "size {size}");
            for i in 0..size {
                let p = tree.inclusion_proof(i, size).expect("proof");
                verify_inclusion(&leaves[i as usize], i, size, &p, &root).expect("verifies");
                if !p.is_empty() {
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(verify_inclusion(&leaves[i as usize], i, size, &bad, &root).is_err());
                }
                assert!(verify_inclusion(&leaves[i as usize], i + 1, size, &p, &root).is_err());
            }
            let mut cut = tree.clone();
            cut.truncate(size);
            assert_eq!(cut.len(), size);
            assert_eq!(cut.root(), root, "truncate to {size}");
            for old in 1..=size {
                let p = tree.consistency_proof(old, size).expect("proof");
                let r1 = tree.root_at(old).expect("root");
                verify_consistency(old, size, &p, &r1, &root).expect("consistent");
                if old > 0 && old < size {
                    let mut wrong = r1;
                    wrong[0] ^= 1;
                    assert!(verify_consistency(old, size, &p, &wrong, &root).is_err());
                }
            }
        }
    }

    #[test]
    fn known_roots() {
        // RFC 6962 empty-tree hash.
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
