//! Multilateral netting of inter-caisse obligations.
//!
//! From the countersigned bilateral obligations of a period, every caisse
//! computes the same net position for each caisse (what it is owed minus
//! what it owes; they sum to zero) and the same short list of transfers
//! that realises those positions. There is no clearing house: the result
//! is a pure function of the set of obligations, whatever their order.
//!
//! Transfers are found greedily: the largest remaining debtor pays the
//! largest remaining creditor (ties broken by caisse id) as much as it can.
//! Each transfer brings at least one caisse to zero and the last one brings
//! two, so a set of `n` caisses needs at most `n - 1` transfers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::amount::{Amount, AmountError};
use crate::ids::CaisseId;

/// One caisse owing another an amount for a period.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Obligation {
    /// Who owes.
    pub debtor: CaisseId,
    /// Who is owed.
    pub creditor: CaisseId,
    /// How much (non-negative).
    pub amount: Amount,
}

/// A payment that, made outside the system, settles part of the net positions.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Transfer {
    /// Who pays.
    pub from: CaisseId,
    /// Who receives.
    pub to: CaisseId,
    /// How much (positive).
    pub amount: Amount,
}

/// The result of netting a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Netting {
    /// Net position of every caisse named in an obligation: positive means
    /// it is owed money. The positions sum to zero.
    pub positions: BTreeMap<CaisseId, Amount>,
    /// The transfers that settle the positions, at most `n - 1` of them.
    pub transfers: Vec<Transfer>,
}

/// Why obligations could not be netted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NettingError {
    /// An obligation with a negative amount.
    #[error("obligation of {debtor:?} to {creditor:?} is negative")]
    Negative {
        /// The debtor named.
        debtor: CaisseId,
        /// The creditor named.
        creditor: CaisseId,
    },
    /// Sums out of range.
    #[error(transparent)]
    Amount(#[from] AmountError),
}

/// Net the obligations of a period: positions and transfers.
pub fn net(obligations: &[Obligation]) -> Result<Netting, NettingError> {
    let mut positions: BTreeMap<CaisseId, Amount> = BTreeMap::new();
    for o in obligations {
        if o.amount.is_negative() {
            return Err(NettingError::Negative {
                debtor: o.debtor,
                creditor: o.creditor,
            });
        }
        let d = positions.entry(o.debtor).or_insert(Amount::ZERO);
        *d = d.checked_sub(o.amount)?;
        let c = positions.entry(o.creditor).or_insert(Amount::ZERO);
        *c = c.checked_add(o.amount)?;
    }
    let transfers = transfers_for(&positions)?;
    Ok(Netting {
        positions,
        transfers,
    })
}

/// The greedy transfer list realising `positions` (which must sum to zero).
pub fn transfers_for(
    positions: &BTreeMap<CaisseId, Amount>,
) -> Result<Vec<Transfer>, NettingError> {
    // (remaining amount, id); sorted so that the largest, then smallest id, comes last.
    let mut creditors: Vec<(Amount, CaisseId)> = Vec::new();
    let mut debtors: Vec<(Amount, CaisseId)> = Vec::new();
    for (id, pos) in positions {
        if pos.is_negative() {
            debtors.push((pos.checked_neg()?, *id));
        } else if !pos.is_zero() {
            creditors.push((*pos, *id));
        }
    }
    let order = |a: &(Amount, CaisseId), b: &(Amount, CaisseId)| a.0.cmp(&b.0).then(b.1.cmp(&a.1));
    let mut transfers = Vec::new();
    loop {
        creditors.sort_by(order);
        debtors.sort_by(order);
        let (Some(c), Some(d)) = (creditors.pop(), debtors.pop()) else {
            break;
        };
        let paid = c.0.min(d.0);
        transfers.push(Transfer {
            from: d.1,
            to: c.1,
            amount: paid,
        });
        let c_left = c.0.checked_sub(paid)?;
        let d_left = d.0.checked_sub(paid)?;
        if !c_left.is_zero() {
            creditors.push((c_left, c.1));
        }
        if !d_left.is_zero() {
            debtors.push((d_left, d.1));
        }
    }
    Ok(transfers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> CaisseId {
        CaisseId::from_bytes([n; 32])
    }

    #[test]
    fn triangle_nets_to_nothing() {
        let o = |d, c, a| Obligation {
            debtor: id(d),
            creditor: id(c),
            amount: Amount::from_cents(a),
        };
        let n = net(&[o(1, 2, 100), o(2, 3, 100), o(3, 1, 100)]).unwrap();
        assert!(n.transfers.is_empty());
        assert!(n.positions.values().all(|p| p.is_zero()));
        let n = net(&[o(1, 2, 500), o(2, 3, 200), o(3, 1, 100)]).unwrap();
        assert_eq!(n.positions[&id(1)], Amount::from_cents(-400));
        assert_eq!(n.positions[&id(2)], Amount::from_cents(300));
        assert_eq!(n.transfers.len(), 2);
    }

    fn arb_obligations() -> impl Strategy<Value = Vec<Obligation>> {
        prop::collection::vec(
            (0u8..8, 0u8..8, 0i64..1_000_000).prop_filter_map("distinct", |(d, c, a)| {
                (d != c).then(|| Obligation {
                    debtor: id(d),
                    creditor: id(c),
                    amount: Amount::from_cents(a),
                })
            }),
            0..40,
        )
    }

    proptest! {
        #[test]
        fn netting_invariants(obligations in arb_obligations(), seed in any::<u64>()) {
            let n = net(&obligations).unwrap();
            // Positions sum to zero.
            let sum = Amount::checked_sum(n.positions.values().copied()).unwrap();
            prop_assert_eq!(sum, Amount::ZERO);
            // At most n-1 transfers, all positive.
            prop_assert!(n.transfers.len() <= n.positions.len().saturating_sub(1));
            prop_assert!(n.transfers.iter().all(|t| t.amount > Amount::ZERO && t.from != t.to));
            // Transfers reproduce the positions exactly.
            let mut replay: BTreeMap<CaisseId, Amount> =
                n.positions.keys().map(|k| (*k, Amount::ZERO)).collect();
            for t in &n.transfers {
                let f = replay.get_mut(&t.from).unwrap();
                *f = f.checked_sub(t.amount).unwrap();
                let r = replay.get_mut(&t.to).unwrap();
                *r = r.checked_add(t.amount).unwrap();
            }
            for (k, p) in &n.positions {
                prop_assert_eq!(replay[k], *p);
            }
            // Deterministic under any permutation of the input.
            let mut shuffled = obligations.clone();
            let len = shuffled.len();
            if len > 1 {
                let mut s = seed;
                for i in (1..len).rev() {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let j = usize::try_from(s >> 33).unwrap() % (i + 1);
                    shuffled.swap(i, j);
                }
            }
            prop_assert_eq!(net(&shuffled).unwrap(), n);
        }
    }
}
