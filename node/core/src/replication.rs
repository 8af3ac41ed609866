//! Which version of another caisse's document a replica keeps.
//!
//! Every owner signs the heads of each version of its document with an
//! increasing sequence. A replica keeps the newest; an honest owner never
//! signs two versions under one sequence (the node makes a version durable
//! before gossiping it, and a wiped node's sequence starts from its clock).
//! A Byzantine owner may: it shows one version to some caisses and another
//! to others, so that they read different statements from it. Two signed
//! heads under one sequence are proof of that (both carry the owner's
//! signature); a replica that sees both logs it and keeps the one with the
//! smaller digest, the same choice at every honest caisse whatever the
//! order in which the versions arrived, so that the federation converges on
//! one version again (`judge_heads`; the node's federation task and the
//! simulator both apply it).

/// One signed version of a document, as a replica compares it: the
/// owner's sequence and a digest of what the version holds (the node: its
/// sorted heads and epoch; the simulator: its published bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mark {
    /// The owner's sequence.
    pub sequence: u64,
    /// What this version holds, hashed.
    pub digest: [u8; 32],
}

/// What a replica does with a version offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadsVerdict {
    /// The first version seen, or newer than the one known: take it.
    Newer,
    /// The version known, again: nothing to do.
    Same,
    /// Older than the one known: stale or replayed.
    Stale,
    /// Another version under the sequence known: the owner equivocated.
    /// `take` says whether the offered one is the one to keep.
    Equivocation {
        /// Whether the offered version replaces the known one.
        take: bool,
    },
}

impl HeadsVerdict {
    /// Whether the replica should fetch the offered version.
    pub fn take(self) -> bool {
        matches!(
            self,
            HeadsVerdict::Newer | HeadsVerdict::Equivocation { take: true }
        )
    }
}

/// Judge `offered` against the version a replica `known`s (the newest it
/// holds or is fetching).
pub fn judge_heads(known: Option<Mark>, offered: Mark) -> HeadsVerdict {
    let Some(known) = known else {
        return HeadsVerdict::Newer;
    };
    match offered.sequence.cmp(&known.sequence) {
        std::cmp::Ordering::Greater => HeadsVerdict::Newer,
        std::cmp::Ordering::Less => HeadsVerdict::Stale,
        std::cmp::Ordering::Equal if offered.digest == known.digest => HeadsVerdict::Same,
        std::cmp::Ordering::Equal => HeadsVerdict::Equivocation {
            take: offered.digest < known.digest,
        },
    }
}

/// The digest of a node's signed heads: the sorted change hashes and the
/// epoch they belong to.
pub fn heads_digest(sorted_heads: &[[u8; 32]], epoch: u32) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"caisse/heads/v1");
    h.update(epoch.to_be_bytes());
    h.update((sorted_heads.len() as u64).to_be_bytes());
    for x in sorted_heads {
        h.update(x);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(sequence: u64, d: u8) -> Mark {
        Mark {
            sequence,
            digest: [d; 32],
        }
    }

    #[test]
    fn newer_same_stale_and_equivocation() {
        assert_eq!(judge_heads(None, m(3, 1)), HeadsVerdict::Newer);
        assert_eq!(judge_heads(Some(m(3, 1)), m(4, 9)), HeadsVerdict::Newer);
        assert_eq!(judge_heads(Some(m(3, 1)), m(3, 1)), HeadsVerdict::Same);
        assert_eq!(judge_heads(Some(m(3, 1)), m(2, 0)), HeadsVerdict::Stale);
        assert_eq!(
            judge_heads(Some(m(3, 5)), m(3, 2)),
            HeadsVerdict::Equivocation { take: true }
        );
        assert_eq!(
            judge_heads(Some(m(3, 2)), m(3, 5)),
            HeadsVerdict::Equivocation { take: false }
        );
    }

    #[test]
    fn the_digest_tells_heads_and_epochs_apart() {
        let a = heads_digest(&[[1; 32]], 0);
        assert_ne!(a, heads_digest(&[[2; 32]], 0));
        assert_ne!(a, heads_digest(&[[1; 32]], 1));
        assert_ne!(a, heads_digest(&[[1; 32], [1; 32]], 0));
        assert_eq!(a, heads_digest(&[[1; 32]], 0));
    }

    proptest! {
        /// Whatever versions arrive, in whatever order, every replica ends
        /// holding the same one: the highest sequence and, among the
        /// versions signed under it, the smallest digest.
        #[test]
        fn replicas_converge_whatever_the_order(
            offers in prop::collection::vec((0u64..5, 0u8..4), 1..12),
            order in prop::collection::vec(any::<prop::sample::Index>(), 12),
        ) {
            let offers: Vec<Mark> = offers.into_iter().map(|(s, d)| m(s, d)).collect();
            let apply = |list: &[Mark]| {
                let mut held: Option<Mark> = None;
                for o in list {
                    if judge_heads(held, *o).take() {
                        held = Some(*o);
                    }
                }
                held
            };
            let mut shuffled = offers.clone();
            for (k, ix) in order.iter().enumerate().take(shuffled.len()) {
                let j = ix.index(shuffled.len());
                shuffled.swap(k, j);
            }
            let best = offers
                .iter()
                .copied()
                .max_by(|a, b| a.sequence.cmp(&b.sequence).then(b.digest.cmp(&a.digest)));
            prop_assert_eq!(apply(&offers), best);
            prop_assert_eq!(apply(&shuffled), best);
        }
    }
}
