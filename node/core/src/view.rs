//! Reading a caisse without waiting for its writer.
//!
//! [`Reads`] is every read-only question asked of a caisse (seats,
//! proposals, a member's record and statement, outlets, producers'
//! evaluations), written once over four primitives. Two things answer it:
//! the [`Caisse`] itself inside the writer (its pending writes included),
//! and a [`View`]: the committed store plus a [`Snapshot`] of the small
//! in-memory state that the writer publishes after each commit that
//! changed it. Pages, reports and the API read through a `View` on a
//! blocking thread, so no read ever waits behind the writer and no
//! closure ever runs inside it.

use std::collections::HashMap;
use std::sync::Arc;

use caisse_protocol::messages::Subject;
use caisse_protocol::{Amount, CaisseId, Day, MemberId, OutletId, Period, ProducerId, ProposalId};

use crate::caisse::{Caisse, CaisseError, ContributionIndex};
use caisse_protocol::criteria::Evaluation;

use crate::conventionnement::Conventions;
use crate::ledger::{Account, EntryKind, Head, JournalEntry, allocation_key};
use crate::members::{MemberRecord, OutletRecord};
use crate::parliament::{PROPOSAL, Proposal, SEAT, Seat, proposal_key};
use crate::policy::Policy;
use crate::store::{Pair, Store, StoreError, decode_json_value, decode_value, keys};

/// Read-only questions to a caisse, over four primitives.
pub trait Reads {
    /// The value under `key`.
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every pair under `prefix`, in key order.
    fn read_prefix(&self, prefix: &[u8]) -> Result<Vec<Pair>, StoreError>;
    /// The policy in force.
    fn policy(&self) -> &Policy;
    /// Producers, criteria and accreditations.
    fn conventions(&self) -> &Conventions;
    /// The caisse's outlets by id.
    fn outlet_records(&self) -> &HashMap<OutletId, OutletRecord>;
    /// The balance of an account.
    fn balance(&self, account: &Account) -> Amount;
    /// The caisse's id.
    fn caisse_id(&self) -> CaisseId;
    /// The journal's next sequence number as this reader knows it.
    fn journal_next_seq(&self) -> u64;

    /// Whether `seat` exists and has not been removed.
    fn seat_is_active(&self, seat: u32) -> Result<bool, StoreError> {
        Ok(self
            .seats()?
            .iter()
            .any(|x| x.id == seat && x.removed.is_none()))
    }

    /// The active seat a member holds, if any.
    fn seat_of(&self, member: &MemberId) -> Result<Option<u32>, StoreError> {
        Ok(self
            .seats()?
            .into_iter()
            .find(|x| x.removed.is_none() && x.member.as_ref() == Some(member))
            .map(|x| x.id))
    }

    /// Every seat, active or removed.
    fn seats(&self) -> Result<Vec<Seat>, StoreError> {
        self.read_prefix(SEAT)?
            .into_iter()
            .map(|(k, v)| decode_value(&k, &v))
            .collect()
    }

    /// Read a proposal.
    fn proposal(&self, id: &ProposalId) -> Result<Proposal, CaisseError> {
        let key = proposal_key(id);
        let bytes = self.read(&key)?.ok_or_else(|| CaisseError::NotFound {
            what: "proposal",
            id: id.to_string(),
        })?;
        Ok(decode_json_value(&key, &bytes)?)
    }

    /// Every proposal, newest first.
    fn proposals(&self) -> Result<Vec<Proposal>, CaisseError> {
        let mut out: Vec<Proposal> = Vec::new();
        for (k, v) in self.read_prefix(PROPOSAL)? {
            out.push(decode_json_value(&k, &v)?);
        }
        out.sort_by(|a, b| b.opened.cmp(&a.opened).then(a.id.cmp(&b.id)));
        Ok(out)
    }
    /// Read a member's full record (pending writes included).
    fn member_record(&self, id: &MemberId) -> Result<MemberRecord, CaisseError> {
        let key = MemberRecord::key(id);
        let bytes = self.read(&key)?.ok_or_else(|| CaisseError::NotFound {
            what: "member",
            id: id.to_string(),
        })?;
        Ok(decode_value(&key, &bytes)?)
    }

    /// The newest `limit` journal entries touching a member's account, newest first.
    fn member_statement(
        &self,
        member: &MemberId,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, CaisseError> {
        let mut out = Vec::new();
        // Block by block from the newest; one block past the head, for
        // lines written after the head this view was given.
        let newest = (self.journal_next_seq() >> keys::STATEMENT_BLOCK_BITS).saturating_add(1);
        for block in (0..=newest).rev() {
            if out.len() >= limit {
                break;
            }
            let prefix = keys::statement_block(block, member.as_bytes());
            let pairs = self.read_prefix(&prefix)?;
            for (k, _) in pairs.iter().rev().take(limit - out.len()) {
                let Some((_, seq)) = keys::statement_parts(k) else {
                    continue;
                };
                let key = JournalEntry::key(seq);
                if let Some(bytes) = self.read(&key)? {
                    out.push(decode_value(&key, &bytes)?);
                }
            }
        }
        Ok(out)
    }

    /// The allocation issued to a member for a period, if any.
    fn member_allocation(
        &self,
        member: &MemberId,
        period: Period,
    ) -> Result<Option<Amount>, CaisseError> {
        let key = allocation_key(period, member);
        let Some(bytes) = self.read(&key)? else {
            return Ok(None);
        };
        let seq: u64 = decode_value(&key, &bytes)?;
        let jkey = JournalEntry::key(seq);
        let Some(entry) = self.read(&jkey)? else {
            return Ok(None);
        };
        let entry: JournalEntry = decode_value(&jkey, &entry)?;
        Ok(match entry.kind {
            EntryKind::Allocation { amount, .. } => Some(amount),
            _ => None,
        })
    }

    /// The contribution recorded for a member and period, if any.
    fn member_contribution(
        &self,
        member: &MemberId,
        period: Period,
    ) -> Result<Option<ContributionIndex>, CaisseError> {
        let key = keys::key(
            keys::CONTRIBUTION,
            &[&period.index().to_be_bytes(), member.as_bytes()],
        );
        match self.read(&key)? {
            Some(bytes) => Ok(Some(decode_value(&key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// The outlets of this caisse.
    fn outlets(&self) -> Vec<OutletRecord> {
        let mut v: Vec<OutletRecord> = self.outlet_records().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Which caisse-level subject an accreditation covers (for listings).
    fn subject_name(&self, subject: &Subject) -> String {
        match subject {
            Subject::Producer(p) => self
                .conventions()
                .producer(p)
                .map_or_else(|| p.to_string(), |r| r.name.clone()),
            Subject::Outlet(o) => self
                .outlet_records()
                .get(o)
                .map_or_else(|| o.to_string(), |r| r.name.clone()),
        }
    }
    /// Judge a producer against the current criteria, rule by rule.
    fn evaluate_producer(&self, id: &ProducerId, today: Day) -> Result<Evaluation, CaisseError> {
        let producer = self
            .conventions()
            .producer(id)
            .ok_or_else(|| CaisseError::NotFound {
                what: "producer",
                id: id.to_string(),
            })?;
        let criteria = self.conventions().criteria().ok_or_else(|| {
            CaisseError::Conflict(
                "no criteria adopted yet: the parliament must first pass a criteria proposal"
                    .into(),
            )
        })?;
        Ok(criteria
            .version
            .criteria
            .evaluate(&producer.attributes_on(today, self.policy().territory_centre.as_ref())))
    }
}

/// The small in-memory state of a caisse, as of a commit: what a read
/// needs besides the store.
#[derive(Clone)]
pub struct Snapshot {
    /// The caisse.
    pub id: CaisseId,
    /// The policy in force.
    pub policy: Policy,
    /// Producers, criteria and accreditations.
    pub conventions: Conventions,
    /// Outlets by id.
    pub outlets: HashMap<OutletId, OutletRecord>,
    /// Members enrolled (all statuses).
    pub members: usize,
    /// The journal head.
    pub head: Head,
}

/// A consistent-enough read-only view: the committed store and the latest
/// published [`Snapshot`]. Cheap to clone.
#[derive(Clone)]
pub struct View {
    /// The store (committed data only).
    pub store: Arc<dyn Store>,
    /// The small state.
    pub snapshot: Arc<Snapshot>,
}

impl Reads for View {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(key)
    }
    fn read_prefix(&self, prefix: &[u8]) -> Result<Vec<Pair>, StoreError> {
        self.store.scan_prefix(prefix)
    }
    fn policy(&self) -> &Policy {
        &self.snapshot.policy
    }
    fn conventions(&self) -> &Conventions {
        &self.snapshot.conventions
    }
    fn outlet_records(&self) -> &HashMap<OutletId, OutletRecord> {
        &self.snapshot.outlets
    }
    /// Balances as committed (`b/`); zero for an account never moved.
    fn balance(&self, account: &Account) -> Amount {
        let key = account.balance_key();
        self.store
            .get(&key)
            .ok()
            .flatten()
            .and_then(|b| decode_value::<Amount>(&key, &b).ok())
            .unwrap_or(Amount::ZERO)
    }
    fn caisse_id(&self) -> CaisseId {
        self.snapshot.id
    }
    fn journal_next_seq(&self) -> u64 {
        self.snapshot.head.next_seq
    }
}

impl View {
    /// The caisse id.
    pub fn id(&self) -> CaisseId {
        self.snapshot.id
    }
}

impl Reads for Caisse {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(key)
    }
    fn read_prefix(&self, prefix: &[u8]) -> Result<Vec<Pair>, StoreError> {
        self.scan(prefix)
    }
    fn policy(&self) -> &Policy {
        &self.policy
    }
    fn conventions(&self) -> &Conventions {
        &self.conventions
    }
    fn outlet_records(&self) -> &HashMap<OutletId, OutletRecord> {
        &self.outlets
    }
    fn balance(&self, account: &Account) -> Amount {
        self.balances.get(account).copied().unwrap_or(Amount::ZERO)
    }
    fn caisse_id(&self) -> CaisseId {
        self.id
    }
    fn journal_next_seq(&self) -> u64 {
        self.head.next_seq
    }
}

impl Caisse {
    /// A snapshot of the small state, for [`View`]s.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            id: self.id,
            policy: self.policy.clone(),
            conventions: self.conventions.clone(),
            outlets: self.outlets.clone(),
            members: self.members.len(),
            head: self.head,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caisse::tests::new_caisse;
    use crate::ledger::SubsidySource;
    use crate::store::{MemStore, Op, encode_value};

    /// A statement reads newest first across journal blocks, stops at its
    /// limit, and sees a line one block past the head it was given.
    #[test]
    fn a_statement_reads_newest_first_across_blocks() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let caisse = new_caisse(store.clone());
        let member = MemberId::from_bytes([4; 16]);
        let other = MemberId::from_bytes([5; 16]);
        let b = 1u64 << keys::STATEMENT_BLOCK_BITS;
        let seqs = [5u64, b - 1, b, 3 * b + 100, 4 * b + 50];
        let mut ops = Vec::new();
        for (i, seq) in seqs.iter().enumerate() {
            let entry = JournalEntry {
                seq: *seq,
                prev: [0; 32],
                at: i as u64,
                kind: EntryKind::Subsidy {
                    source: SubsidySource::Other,
                    period: "2026-01".parse().unwrap(),
                    key: format!("k{i}"),
                },
                postings: Vec::new(),
            };
            ops.push(Op::Put(JournalEntry::key(*seq), encode_value(&entry)));
            ops.push(Op::Put(
                keys::statement(member.as_bytes(), *seq),
                Vec::new(),
            ));
        }
        ops.push(Op::Put(
            keys::statement(other.as_bytes(), b + 7),
            Vec::new(),
        ));
        store.apply(&ops).unwrap();
        let mut snapshot = caisse.snapshot();
        // The head is in block 3: the line at 4 * b + 50 is in the block after.
        snapshot.head.next_seq = 3 * b + 200;
        let view = View {
            store,
            snapshot: Arc::new(snapshot),
        };
        let read = |limit| -> Vec<u64> {
            view.member_statement(&member, limit)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        assert_eq!(read(10), vec![4 * b + 50, 3 * b + 100, b, b - 1, 5]);
        assert_eq!(read(3), vec![4 * b + 50, 3 * b + 100, b]);
        assert_eq!(read(0), Vec::<u64>::new());
    }
}
