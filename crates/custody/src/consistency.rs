//! Checking a relay's log against what a client saw before (`custody.md` §7.2): a checkpoint the
//! client holds, a checkpoint the relay presents, and the consistency proof between them. Pure:
//! where checkpoints are kept is the caller's business.

use crate::checkpoint::Checkpoint;
use crate::merkle::{Hash, verify_consistency};

/// Why a presented checkpoint is not a continuation of the held one. Each carries both sizes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsistencyError {
    /// The presented log is shorter than the held checkpoint: entries were removed.
    #[error("rolled back: held {held} entries, presented {presented}")]
    RolledBack {
        /// Size of the held checkpoint.
        held: u64,
        /// Size of the presented checkpoint.
        presented: u64,
    },
    /// The presented log does not extend the held one (equal sizes with different roots, or a
    /// proof that does not verify).
    #[error("forked: held {held} entries, presented {presented}")]
    Forked {
        /// Size of the held checkpoint.
        held: u64,
        /// Size of the presented checkpoint.
        presented: u64,
    },
    /// The two checkpoints are of different logs.
    #[error("origin {presented:?} is not the held checkpoint's {held:?}")]
    Origin {
        /// Origin of the held checkpoint.
        held: String,
        /// Origin of the presented checkpoint.
        presented: String,
    },
}

impl ConsistencyError {
    /// `(held size, presented size)`, or `None` for an origin mismatch.
    pub fn sizes(&self) -> Option<(u64, u64)> {
        match self {
            Self::RolledBack { held, presented } | Self::Forked { held, presented } => {
                Some((*held, *presented))
            }
            Self::Origin { .. } => None,
        }
    }
}

/// `custody.md` §7.2: checks that `presented` extends `held` with the RFC 9162 consistency
/// `proof` from `held.size` to `presented.size`. Both checkpoints must already be verified with
/// the log's key. No held checkpoint, or an empty one, is extended by any log. Equal sizes need
/// equal roots and an empty proof.
pub fn check_consistency(
    held: Option<&Checkpoint>,
    presented: &Checkpoint,
    proof: &[Hash],
) -> Result<(), ConsistencyError> {
    let Some(held) = held else { return Ok(()) };
    if held.origin != presented.origin {
        return Err(ConsistencyError::Origin {
            held: held.origin.clone(),
            presented: presented.origin.clone(),
        });
    }
    let sizes = (held.size, presented.size);
    if held.size > presented.size {
        return Err(ConsistencyError::RolledBack {
            held: sizes.0,
            presented: sizes.1,
        });
    }
    if held.size == 0 {
        return Ok(());
    }
    verify_consistency(
        held.size,
        presented.size,
        proof,
        &held.root,
        &presented.root,
    )
    .map_err(|_| ConsistencyError::Forked {
        held: sizes.0,
        presented: sizes.1,
    })
}

/// `custody.md` §7.2: checks a checkpoint against others of the same log verified before,
/// without a proof: only equal sizes can be compared, and they must have equal roots. Returns
/// the held checkpoint it was compared with, if any.
pub fn check_against_seen<'a>(
    seen: impl IntoIterator<Item = &'a Checkpoint>,
    presented: &Checkpoint,
) -> Result<Option<&'a Checkpoint>, ConsistencyError> {
    for h in seen {
        if h.origin == presented.origin && h.size == presented.size {
            return if bool::from(subtle::ConstantTimeEq::ct_eq(
                &h.root[..],
                &presented.root[..],
            )) {
                Ok(Some(h))
            } else {
                Err(ConsistencyError::Forked {
                    held: h.size,
                    presented: presented.size,
                })
            };
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{Tree, leaf_hash};

    fn tree(entries: std::ops::Range<u32>) -> Tree {
        Tree::from_leaves(entries.map(|i| leaf_hash(format!("entry {i}").as_bytes())))
    }

    fn cp(t: &Tree, size: u64) -> Checkpoint {
        Checkpoint {
            origin: "agency-b/audit".into(),
            size,
            root: t.root_at(size).expect("size within the tree"),
        }
    }

    #[test]
    fn an_extension_is_consistent() {
        let t = tree(0..12);
        for (a, b) in [(1, 12), (5, 12), (8, 12), (12, 12), (3, 7)] {
            let proof = t.consistency_proof(a, b).expect("proof");
            check_consistency(Some(&cp(&t, a)), &cp(&t, b), &proof).expect("consistent");
        }
        check_consistency(None, &cp(&t, 12), &[]).expect("nothing held");
    }

    #[test]
    fn a_rollback_names_both_sizes() {
        let t = tree(0..12);
        let e = check_consistency(Some(&cp(&t, 12)), &cp(&t, 11), &[]).expect_err("rolled back");
        assert_eq!(
            e,
            ConsistencyError::RolledBack {
                held: 12,
                presented: 11
            }
        );
        assert_eq!(e.sizes(), Some((12, 11)));
    }

    #[test]
    fn a_fork_with_equal_sizes_is_refused() {
        let honest = tree(0..12);
        let forged = tree(1..13);
        let e =
            check_consistency(Some(&cp(&honest, 12)), &cp(&forged, 12), &[]).expect_err("forked");
        assert_eq!(
            e,
            ConsistencyError::Forked {
                held: 12,
                presented: 12
            }
        );
        assert!(check_against_seen([&cp(&honest, 12)], &cp(&forged, 12)).is_err());
        assert!(check_against_seen([&cp(&honest, 12)], &cp(&honest, 12)).is_ok());
        assert_eq!(
            check_against_seen([&cp(&honest, 11)], &cp(&forged, 12)),
            Ok(None)
        );
    }

    #[test]
    fn a_dropped_entry_is_a_fork_whatever_the_proof() {
        // The attack: entry 0 dropped, the rest re-logged and re-signed, the log grows again.
        let honest = tree(0..12);
        let forged = tree(1..20);
        let proof = forged.consistency_proof(12, 19).expect("proof");
        let e = check_consistency(Some(&cp(&honest, 12)), &cp(&forged, 19), &proof)
            .expect_err("forked");
        assert_eq!(e.sizes(), Some((12, 19)));
        // The honest proof does not help either.
        let honest_more = tree(0..19);
        let proof = honest_more.consistency_proof(12, 19).expect("proof");
        assert!(check_consistency(Some(&cp(&honest, 12)), &cp(&forged, 19), &proof).is_err());
    }

    #[test]
    fn another_log_is_refused() {
        let t = tree(0..3);
        let mut other = cp(&t, 3);
        other.origin = "agency-c/audit".into();
        assert!(matches!(
            check_consistency(Some(&cp(&t, 3)), &other, &[]),
            Err(ConsistencyError::Origin { .. })
        ));
    }
}
