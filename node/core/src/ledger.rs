//! The caisse's double-entry ledger: accounts, journal entries, and the
//! audit that checks the journal against everything derived from it.
//!
//! Every money movement is one [`JournalEntry`] whose postings sum to zero.
//! Entries are numbered without gaps and chained by hash (each names the
//! hash of the previous one), so a deleted or edited entry is detectable.
//! Cached balances, the allocation index and the purchase idempotency
//! records are written in the same atomic batch as the entry; [`check`]
//! replays the journal from the start and reports every disagreement.
//!
//! Sign convention: an account's balance is what it holds. Money enters
//! through source accounts, which go negative: `contributions` and
//! `subsidy:*` feed the `treasury`; `allocations` feeds member balances.
//! A purchase moves money from a member to an outlet; a payout clears the
//! outlet's balance back against `allocations` and moves cash from the
//! `treasury` to `paid-out`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use caisse_protocol::messages::PurchaseLine;
use caisse_protocol::{
    Amount, CaisseId, CardId, ContentId, MemberId, OutletId, Period, PurchaseId,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, decode_value, keys};

/// Where a subsidy comes from, kept apart so the caisse can report its
/// funding against a target split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubsidySource {
    /// The State (a national experimentation fund).
    State,
    /// A local authority (commune, department, region).
    LocalAuthority,
    /// Anything else (foundations, earmarked taxes).
    Other,
}

impl fmt::Display for SubsidySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SubsidySource::State => "state",
            SubsidySource::LocalAuthority => "local-authority",
            SubsidySource::Other => "other",
        })
    }
}

impl std::str::FromStr for SubsidySource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "state" => Ok(SubsidySource::State),
            "local-authority" => Ok(SubsidySource::LocalAuthority),
            "other" => Ok(SubsidySource::Other),
            _ => Err(format!(
                "unknown subsidy source {s:?}: use state, local-authority or other"
            )),
        }
    }
}

/// A ledger account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Account {
    /// A member's spendable allocation.
    Member(MemberId),
    /// What the caisse owes an outlet for purchases.
    Outlet(OutletId),
    /// Cash the caisse holds.
    Treasury,
    /// Source of allocations (negative: allocations outstanding).
    Allocations,
    /// Source of member contributions (negative: total received).
    Contributions,
    /// Source of subsidies, by funder (negative: total received).
    Subsidy(SubsidySource),
    /// Cash paid out to outlets.
    PaidOut,
    /// Sales accepted under the offline floor that the home caisse refused.
    OfflineLosses,
    /// Settlement with a peer caisse: positive is what we owe it (our
    /// members' purchases at its outlets), negative what it owes us.
    Peer(CaisseId),
}

impl Account {
    /// The account whose cached balance is under `key`, if any.
    pub fn from_balance_key(key: &[u8]) -> Option<Account> {
        let rest = key.strip_prefix(keys::BALANCE)?;
        let (tag, id) = rest.split_first()?;
        Some(match (tag, id.len()) {
            (b'm', 16) => Account::Member(MemberId::from_bytes(id.try_into().ok()?)),
            (b'o', 16) => Account::Outlet(OutletId::from_bytes(id.try_into().ok()?)),
            (b't', 0) => Account::Treasury,
            (b'a', 0) => Account::Allocations,
            (b'c', 0) => Account::Contributions,
            (b's', 1) => Account::Subsidy(match id[0] {
                0 => SubsidySource::State,
                1 => SubsidySource::LocalAuthority,
                2 => SubsidySource::Other,
                _ => return None,
            }),
            (b'x', 0) => Account::PaidOut,
            (b'l', 0) => Account::OfflineLosses,
            (b'p', 32) => Account::Peer(CaisseId::from_bytes(id.try_into().ok()?)),
            _ => return None,
        })
    }

    /// The key of this account's cached balance.
    pub fn balance_key(&self) -> Vec<u8> {
        let mut k = keys::BALANCE.to_vec();
        match self {
            Account::Member(m) => {
                k.push(b'm');
                k.extend_from_slice(m.as_bytes());
            }
            Account::Outlet(o) => {
                k.push(b'o');
                k.extend_from_slice(o.as_bytes());
            }
            Account::Treasury => k.push(b't'),
            Account::Allocations => k.push(b'a'),
            Account::Contributions => k.push(b'c'),
            Account::Subsidy(s) => {
                k.push(b's');
                k.push(match s {
                    SubsidySource::State => 0,
                    SubsidySource::LocalAuthority => 1,
                    SubsidySource::Other => 2,
                });
            }
            Account::PaidOut => k.push(b'x'),
            Account::OfflineLosses => k.push(b'l'),
            Account::Peer(c) => {
                k.push(b'p');
                k.extend_from_slice(c.as_bytes());
            }
        }
        k
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::Member(m) => write!(f, "member:{m}"),
            Account::Outlet(o) => write!(f, "outlet:{o}"),
            Account::Treasury => f.write_str("treasury"),
            Account::Allocations => f.write_str("allocations"),
            Account::Contributions => f.write_str("contributions"),
            Account::Subsidy(s) => write!(f, "subsidy:{s}"),
            Account::PaidOut => f.write_str("paid-out"),
            Account::OfflineLosses => f.write_str("offline-losses"),
            Account::Peer(c) => write!(f, "peer:{}", c.short()),
        }
    }
}

/// One leg of a journal entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    /// The account moved.
    pub account: Account,
    /// Signed amount: positive adds to the account.
    pub amount: Amount,
}

/// What a journal entry records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// A member's monthly allocation (and any rollover expiry).
    Allocation {
        /// The member.
        member: MemberId,
        /// The period.
        period: Period,
        /// Allocation credited.
        amount: Amount,
        /// Balance expired by the rollover policy.
        expired: Amount,
    },
    /// A member's contribution for a period.
    Contribution {
        /// The member.
        member: MemberId,
        /// The period.
        period: Period,
    },
    /// A subsidy received.
    Subsidy {
        /// Funder.
        source: SubsidySource,
        /// The period.
        period: Period,
        /// Idempotency key.
        key: String,
    },
    /// A purchase at one of this caisse's outlets by one of its members.
    Purchase {
        /// The purchase.
        id: PurchaseId,
        /// The card used.
        card: CardId,
        /// The outlet.
        outlet: OutletId,
        /// What was bought.
        lines: Vec<PurchaseLine>,
        /// Coverage rate applied per line.
        coverage_pct: Vec<u8>,
        /// The period it counts in.
        period: Period,
    },
    /// A payout of what the caisse owed an outlet.
    Payout {
        /// The outlet.
        outlet: OutletId,
        /// The period.
        period: Period,
    },
    /// As home caisse: our member bought at another caisse's outlet; we owe the host.
    CrossPurchase {
        /// The purchase.
        id: PurchaseId,
        /// The host caisse.
        host: CaisseId,
        /// The card used.
        card: CardId,
        /// The host's outlet.
        outlet: OutletId,
        /// What was bought.
        lines: Vec<PurchaseLine>,
        /// Coverage applied per line.
        coverage_pct: Vec<u8>,
        /// The period it counts in.
        period: Period,
    },
    /// As host caisse: a sale accepted under our offline floor while the card's
    /// home caisse could not be reached; forwarded later, at our risk.
    OfflineSale {
        /// The purchase.
        id: PurchaseId,
        /// The card's home caisse.
        home: CaisseId,
        /// Our outlet.
        outlet: OutletId,
        /// The period.
        period: Period,
    },
    /// As host caisse: the home caisse refused a sale we accepted offline.
    OfflineLoss {
        /// The purchase.
        id: PurchaseId,
        /// The card's home caisse.
        home: CaisseId,
        /// Why the home caisse refused.
        reason: String,
        /// The period of the sale.
        period: Period,
    },
    /// As host caisse: a member of another caisse bought at our outlet; the home caisse owes us.
    CrossSale {
        /// The purchase.
        id: PurchaseId,
        /// The card's home caisse.
        home: CaisseId,
        /// Our outlet.
        outlet: OutletId,
        /// What was sold.
        lines: Vec<PurchaseLine>,
        /// Coverage the home caisse applied per line.
        coverage_pct: Vec<u8>,
        /// The period.
        period: Period,
    },
}

/// One journal entry: numbered, hash-chained, balanced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Sequence number, from 0, without gaps.
    pub seq: u64,
    /// Hash of the previous entry's stored bytes (zeros for the first).
    pub prev: [u8; 32],
    /// When recorded (Unix seconds).
    pub at: u64,
    /// What it records.
    pub kind: EntryKind,
    /// The postings; they sum to zero.
    pub postings: Vec<Posting>,
}

impl JournalEntry {
    /// The storage key of entry `seq`.
    pub fn key(seq: u64) -> Vec<u8> {
        keys::key(keys::JOURNAL, &[&seq.to_be_bytes()])
    }
    /// The sum of the postings (zero for a valid entry).
    pub fn imbalance(&self) -> Result<Amount, caisse_protocol::AmountError> {
        Amount::checked_sum(self.postings.iter().map(|p| p.amount))
    }
}

/// Hash of an entry's stored bytes, for the chain.
pub fn entry_hash(stored: &[u8]) -> [u8; 32] {
    Sha256::digest(stored).into()
}

/// The end of the journal: where the next entry goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The next sequence number (= number of entries).
    pub next_seq: u64,
    /// Hash of the last entry (zeros when empty).
    pub last_hash: [u8; 32],
}

/// The durable record that makes a purchase id idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRecord {
    /// Hash of the request content (card, outlet, lines).
    pub request: ContentId,
    /// The journal entry that recorded it.
    pub seq: u64,
    /// The part the allocation paid.
    pub allocation_part: Amount,
    /// The part the member paid outside the allocation.
    pub member_part: Amount,
    /// The member's balance right after.
    pub balance_after: Amount,
    /// When accepted (Unix seconds).
    pub at: u64,
}

/// A key into the allocation index: period then member.
pub fn allocation_key(period: Period, member: &MemberId) -> Vec<u8> {
    keys::key(
        keys::ALLOCATION,
        &[&period.index().to_be_bytes(), member.as_bytes()],
    )
}

/// One problem found by [`check`]: which item, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The item concerned (`journal entry 17`, `member:mem_…`, …).
    pub item: String,
    /// What is wrong, with the difference where there is one.
    pub problem: String,
}

/// The outcome of a ledger audit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Journal entries read.
    pub entries: u64,
    /// The first entry read: the entries before it were verified by an
    /// earlier clean audit, whose checkpoint this one started from (0: the
    /// whole journal was read).
    #[serde(default)]
    pub from: u64,
    /// When the whole journal was last read by a clean audit (Unix
    /// seconds), for an audit that started from a checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_at: Option<u64>,
    /// Accounts with a cached balance.
    pub accounts: u64,
    /// Every problem found (or the first ones: see [`CheckReport::bounded`]);
    /// empty means the ledger is sound.
    pub findings: Vec<Finding>,
    /// Findings found but left out of `findings` by [`CheckReport::bounded`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_findings: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl CheckReport {
    /// True when nothing was found.
    pub fn ok(&self) -> bool {
        self.findings.is_empty() && self.more_findings == 0
    }

    /// The report with at most `n` findings listed, the rest counted in
    /// `more_findings` (a store damaged throughout would otherwise give an
    /// answer of a finding per account).
    pub fn bounded(mut self, n: usize) -> CheckReport {
        let left_out = self.findings.len().saturating_sub(n);
        if left_out > 0 {
            self.findings.truncate(n);
            self.more_findings = self.more_findings.saturating_add(left_out as u64);
        }
        self
    }
}

fn finding(item: impl Into<String>, problem: impl Into<String>) -> Finding {
    Finding {
        item: item.into(),
        problem: problem.into(),
    }
}

fn diff(a: Amount, b: Amount) -> String {
    a.checked_sub(b)
        .map_or_else(|_| "out of range".into(), |d| d.to_string())
}

/// Audit the ledger in `store`: replay the journal from the first entry and
/// compare it with the chain, the cached balances, the allocation index and
/// the purchase records. Known members and outlets are the ones stored.
/// Nothing may write to `store` meanwhile (see [`check_within`]).
pub fn check(store: &dyn Store) -> Result<CheckReport, StoreError> {
    check_within(store, None).map(|(report, _)| report)
}

/// What a clean audit verified, for the next audit to start from instead
/// of the journal's first entry: the state after the first `upto` entries.
///
/// An audit from a checkpoint reads the entries from `upto` on (their
/// chain continuing from `prev_hash`, their postings, the balances they
/// leave from `balances` on, the statement lines, allocation index and
/// purchase records of those entries) and compares every cached balance
/// and peer receipt as the full audit does. What it does not read again is
/// the entries before `upto` and index records that point at them: an edit
/// made there after the checkpoint is found by a full audit, which stays
/// available (`caisse ledger check --full`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// Entries below it were verified.
    pub upto: u64,
    /// The hash of entry `upto - 1` (zeros when `upto` is 0).
    pub prev_hash: [u8; 32],
    /// Every account's balance after those entries, in account order.
    pub balances: Vec<(Account, Amount)>,
    /// When the whole journal was last read by a clean audit (Unix
    /// seconds; set by whoever keeps the checkpoint).
    pub full_at: u64,
    /// When this checkpoint was made (Unix seconds; likewise).
    pub made_at: u64,
}

impl AuditCheckpoint {
    /// Whether this checkpoint is of `store`'s journal: entry `upto - 1`
    /// is there and hashes to `prev_hash` (its hash covers, through the
    /// chain, every entry before it as the audit verified them).
    pub fn matches(&self, store: &dyn Store) -> Result<bool, StoreError> {
        let Some(last) = self.upto.checked_sub(1) else {
            return Ok(self.prev_hash == [0; 32] && self.balances.is_empty());
        };
        Ok(store
            .get(&JournalEntry::key(last))?
            .is_some_and(|bytes| entry_hash(&bytes) == self.prev_hash))
    }
}

/// [`check_within`], starting from `from` (a checkpoint of an earlier
/// clean audit of this journal: see [`AuditCheckpoint::matches`]) rather
/// than from the first entry when there is one, and also returning the
/// state the audit reached: the checkpoint to keep if the whole audit,
/// settled, comes out clean (its times left at 0 for the caller to set).
pub fn check_from(
    store: &dyn Store,
    upto: Option<u64>,
    from: Option<&AuditCheckpoint>,
) -> Result<(CheckReport, Suspects, AuditCheckpoint), StoreError> {
    let (report, suspects, agreed, reached) = check_pass(store, upto, false, from)?;
    if agreed {
        return Ok((report, suspects, reached));
    }
    let (report, suspects, _, reached) = check_pass(store, upto, true, from)?;
    Ok((report, suspects, reached))
}

/// What a bounded audit could not settle while the writer went on: the
/// balances that differed from the replay (they may have moved after the
/// bound), to settle with [`recheck`] once writes are paused.
#[derive(Clone, Debug, Default)]
pub struct Suspects {
    /// The bound: entries below it were replayed.
    pub upto: u64,
    /// Hash of the last entry replayed (to continue the chain).
    pub prev_hash: [u8; 32],
    /// Accounts whose cached balance differed, with the replayed balance.
    pub balances: Vec<(Account, Amount)>,
    /// Every peer caisse's replayed balance, when the receipts did not
    /// add up (receipts of later entries may explain it).
    pub peers: Option<Vec<(CaisseId, Amount)>>,
}

impl Suspects {
    /// Nothing to settle.
    pub fn is_empty(&self) -> bool {
        self.balances.is_empty() && self.peers.is_none()
    }
}

/// A multiset of records as a count and a sum of their hashes: equal
/// multisets give equal digests. The audit compares the journal with each
/// index (members' statements, allocations, purchase records) this way in
/// constant memory, and holds the keys themselves, to name what differs,
/// only when the digests differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Multiset {
    count: u64,
    sum: u128,
}

impl Multiset {
    fn add(&mut self, parts: &[&[u8]]) {
        let mut h = Sha256::new();
        for part in parts {
            h.update((part.len() as u32).to_le_bytes());
            h.update(part);
        }
        let digest = h.finalize();
        let mut low = [0u8; 16];
        low.copy_from_slice(&digest[..16]);
        self.count = self.count.wrapping_add(1);
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(low));
    }
}

/// Audit entries below `upto` (all of them with `None`) while a writer may
/// go on appending: records of later entries are left alone, and balances
/// that differ are returned as [`Suspects`] instead of findings. With
/// `None` it is the full audit and the suspects are empty.
///
/// A first pass compares the journal with its indexes by [`Multiset`]
/// digests, its memory bounded by the number of accounts, not of entries;
/// only if an index differs does a second, exact pass hold their keys to
/// name each difference.
pub fn check_within(
    store: &dyn Store,
    upto: Option<u64>,
) -> Result<(CheckReport, Suspects), StoreError> {
    check_from(store, upto, None).map(|(report, suspects, _)| (report, suspects))
}

/// One pass of [`check_within`]: `exact` holds every index key to name
/// what differs; otherwise the indexes are compared by digest, and the
/// answer says whether they agreed (if not, the findings about them are
/// left to an exact pass). From a checkpoint, only the entries from it on
/// are read: their statement lines are compared the same way (the lines
/// of a block of entries are neighbours in the index), their allocation
/// and purchase records looked up one by one.
pub(crate) fn check_pass(
    store: &dyn Store,
    upto: Option<u64>,
    exact: bool,
    from: Option<&AuditCheckpoint>,
) -> Result<(CheckReport, Suspects, bool, AuditCheckpoint), StoreError> {
    let mut agreed = true;
    let (mut journal_statements, mut index_statements) = (Multiset::default(), Multiset::default());
    let (mut journal_allocations, mut index_allocations) =
        (Multiset::default(), Multiset::default());
    let (mut journal_purchases, mut index_purchases) = (Multiset::default(), Multiset::default());
    let bound = upto.unwrap_or(u64::MAX);
    let later = |seq: u64| seq >= bound;
    let mut suspects = Suspects {
        upto: bound,
        ..Suspects::default()
    };
    let mut report = CheckReport::default();
    let mut replayed: HashMap<Account, Amount> = HashMap::new();
    let mut allocations: HashMap<(Period, MemberId), u64> = HashMap::new();
    let mut purchases: HashMap<PurchaseId, (u64, Amount)> = HashMap::new();
    let mut expected_seq = 0u64;
    let mut prev_hash = [0u8; 32];
    if let Some(cp) = from {
        expected_seq = cp.upto;
        prev_hash = cp.prev_hash;
        replayed.extend(cp.balances.iter().copied());
        report.from = cp.upto;
        report.full_at = Some(cp.full_at);
    }
    let first = expected_seq;
    // A store read that failed inside a walk (reported after it).
    let mut failed: Option<StoreError> = None;
    let mut negative: BTreeMap<Account, (u64, Amount)> = BTreeMap::new();
    // Each member's statement index: the keys the journal says must exist.
    let mut statement: HashSet<Vec<u8>> = HashSet::new();

    let members: HashSet<Vec<u8>> = store
        .scan_prefix(keys::MEMBER)?
        .into_iter()
        .map(|(k, _)| k[keys::MEMBER.len()..].to_vec())
        .collect();
    let outlets: HashSet<Vec<u8>> = store
        .scan_prefix(keys::OUTLET)?
        .into_iter()
        .map(|(k, _)| k[keys::OUTLET.len()..].to_vec())
        .collect();

    let mut findings = Vec::new();
    let start = JournalEntry::key(first);
    crate::store::for_each_collected_from(store, keys::JOURNAL, &start, &mut |key, bytes| {
        let key_seq = key
            .get(keys::JOURNAL.len()..)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map(u64::from_be_bytes);
        if key_seq.is_some_and(later) {
            return false;
        }
        report.entries = report.entries.saturating_add(1);
        let Some(key_seq) = key_seq else {
            findings.push(finding(keys::printable(key), "malformed journal key"));
            return true;
        };
        let item = format!("journal entry {key_seq}");
        if key_seq != expected_seq {
            findings.push(finding(
                &item,
                format!(
                    "sequence gap: entries {expected_seq}..{} are missing (deleted?)",
                    key_seq.saturating_sub(1)
                ),
            ));
        }
        expected_seq = key_seq.saturating_add(1);
        let entry: JournalEntry = match decode_value(key, bytes) {
            Ok(e) => e,
            Err(e) => {
                findings.push(finding(&item, format!("cannot be decoded: {e}")));
                prev_hash = entry_hash(bytes);
                return true;
            }
        };
        if entry.seq != key_seq {
            findings.push(finding(
                &item,
                format!("stored under {key_seq} but says it is entry {}", entry.seq),
            ));
        }
        if entry.prev != prev_hash {
            findings.push(finding(
                &item,
                "hash chain broken: the previous entry was edited, removed or replaced",
            ));
        }
        prev_hash = entry_hash(bytes);
        match entry.imbalance() {
            Ok(s) if s.is_zero() => {}
            Ok(s) => findings.push(finding(
                &item,
                format!("postings do not balance: they sum to {s}, not 0.00"),
            )),
            Err(_) => findings.push(finding(&item, "postings overflow")),
        }
        for (i, p) in entry.postings.iter().enumerate() {
            let known = match &p.account {
                Account::Member(m) => members.contains(m.as_bytes().as_slice()),
                Account::Outlet(o) => outlets.contains(o.as_bytes().as_slice()),
                _ => true,
            };
            if !known {
                findings.push(finding(
                    &item,
                    format!("posts to {} which is not a known account", p.account),
                ));
            }
            if let Account::Member(m) = &p.account {
                let key = keys::statement(m.as_bytes(), key_seq);
                if exact {
                    statement.insert(key);
                } else if !entry.postings[..i]
                    .iter()
                    .any(|earlier| earlier.account == p.account)
                {
                    // One statement line per member and entry, however
                    // many postings (an allocation that also expires the
                    // rest posts twice to the member).
                    journal_statements.add(&[&key]);
                }
            }
            let bal = replayed.entry(p.account).or_insert(Amount::ZERO);
            match bal.checked_add(p.amount) {
                Ok(b) => *bal = b,
                Err(_) => findings.push(finding(&item, "balance overflow")),
            }
            if matches!(p.account, Account::Member(_) | Account::Outlet(_)) && bal.is_negative() {
                negative.entry(p.account).or_insert((key_seq, *bal));
            }
        }
        match &entry.kind {
            EntryKind::Allocation { member, period, .. } if from.is_some() => {
                match allocation_indexed(store, *period, member, key_seq, &item) {
                    Ok(found) => findings.extend(found),
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                }
            }
            EntryKind::Allocation { member, period, .. } if !exact => {
                journal_allocations.add(&[
                    &period.index().to_be_bytes(),
                    member.as_bytes(),
                    &key_seq.to_be_bytes(),
                ]);
            }
            EntryKind::Allocation { member, period, .. } => {
                if let Some(first) = allocations.insert((*period, *member), key_seq) {
                    findings.push(finding(
                        &item,
                        format!(
                            "second allocation to {member} for {period} (first in entry {first})"
                        ),
                    ));
                }
            }
            EntryKind::Purchase { id, lines, .. } | EntryKind::CrossPurchase { id, lines, .. } => {
                let member_debit = entry
                    .postings
                    .iter()
                    .filter(|p| matches!(p.account, Account::Member(_)))
                    .try_fold(Amount::ZERO, |acc, p| acc.checked_sub(p.amount));
                let debit = member_debit.unwrap_or(Amount::MAX);
                if from.is_some() {
                    match purchase_recorded(store, id, key_seq, debit, &item) {
                        Ok(found) => findings.extend(found),
                        Err(e) => {
                            failed = Some(e);
                            return false;
                        }
                    }
                } else if !exact {
                    journal_purchases.add(&[
                        id.as_bytes(),
                        &key_seq.to_be_bytes(),
                        &debit.cents().to_be_bytes(),
                    ]);
                } else if purchases.insert(*id, (key_seq, debit)).is_some() {
                    findings.push(finding(
                        &item,
                        format!("purchase {id} recorded twice (debited twice)"),
                    ));
                }
                if lines.is_empty() {
                    findings.push(finding(&item, format!("purchase {id} has no lines")));
                }
            }
            _ => {}
        }
        true
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    report.findings.append(&mut findings);

    // Members' statements (what their console page lists) against the
    // journal: from a checkpoint, the lines of the blocks of entries read.
    let lines_from = match first >> keys::STATEMENT_BLOCK_BITS {
        0 => keys::STATEMENT.to_vec(),
        block => keys::key(keys::STATEMENT, &[&block.to_be_bytes()[2..]]),
    };
    crate::store::for_each_collected_from(store, keys::STATEMENT, &lines_from, &mut |key, _| {
        let seq = keys::statement_parts(key).map(|(_, seq)| seq);
        if seq.is_some_and(|s| later(s) || s < first) {
            return true;
        }
        if !exact {
            index_statements.add(&[key]);
        } else if !statement.remove(key) {
            report.findings.push(finding(
                keys::printable(key),
                "a member's statement lists a journal entry that does not touch their account",
            ));
        }
        true
    })?;
    let mut missing: Vec<Vec<u8>> = statement.into_iter().collect();
    missing.sort();
    for key in missing {
        report.findings.push(finding(
            keys::printable(&key),
            "missing from the member's statement (the journal entry touches their account)",
        ));
    }

    for (account, (seq, bal)) in negative {
        report.findings.push(finding(
            account.to_string(),
            format!("balance goes below zero ({bal}) at journal entry {seq}"),
        ));
    }

    suspects.prev_hash = prev_hash;
    // The head must match the end of the journal (a bounded audit leaves it
    // to `recheck`).
    match if upto.is_some() {
        None
    } else {
        store.get(keys::HEAD)?
    } {
        Some(bytes) => match decode_value::<Head>(keys::HEAD, &bytes) {
            Ok(head) => {
                if head.next_seq != expected_seq {
                    report.findings.push(finding(
                        "journal head",
                        format!(
                            "says {} entries but the journal ends after {expected_seq}",
                            head.next_seq
                        ),
                    ));
                } else if head.last_hash != prev_hash {
                    report.findings.push(finding(
                        "journal head",
                        "hash does not match the last entry (last entry edited?)",
                    ));
                }
            }
            Err(e) => report.findings.push(finding("journal head", e.to_string())),
        },
        None if expected_seq > 0 && upto.is_none() => report.findings.push(finding(
            "journal head",
            "missing while the journal has entries",
        )),
        None => {}
    }

    // Cached balances against the replay.
    let mut cached: HashMap<Vec<u8>, Amount> = HashMap::new();
    for (k, v) in store.scan_prefix(keys::BALANCE)? {
        report.accounts = report.accounts.saturating_add(1);
        match decode_value::<Amount>(&k, &v) {
            Ok(a) => {
                cached.insert(k, a);
            }
            Err(e) => report
                .findings
                .push(finding(keys::printable(&k), e.to_string())),
        }
    }
    let mut accounts: Vec<(&Account, &Amount)> = replayed.iter().collect();
    accounts.sort();
    for (account, journal) in accounts {
        let key = account.balance_key();
        let c = cached.remove(&key).unwrap_or(Amount::ZERO);
        if c != *journal && upto.is_some() {
            suspects.balances.push((*account, *journal));
        } else if c != *journal {
            report.findings.push(finding(
                account.to_string(),
                format!(
                    "cached balance {c} but the journal says {journal} (difference {})",
                    diff(c, *journal)
                ),
            ));
        }
    }
    let mut cached: Vec<(Vec<u8>, Amount)> = cached.into_iter().collect();
    cached.sort();
    for (key, c) in cached {
        if !c.is_zero() && upto.is_some() {
            // An account first moved after the bound.
            if let Some(a) = Account::from_balance_key(&key) {
                suspects.balances.push((a, Amount::ZERO));
                continue;
            }
        }
        if !c.is_zero() {
            report.findings.push(finding(
                keys::printable(&key),
                format!("cached balance {c} for an account with no journal entries"),
            ));
        }
    }

    if !exact && from.is_some() {
        // From a checkpoint the allocation and purchase records of the
        // entries read were looked up one by one.
        agreed = agreed && journal_statements == index_statements;
    } else if !exact {
        // The indexes by digest, streamed: nothing held per entry.
        crate::store::for_each_chunked(store, keys::ALLOCATION, &mut |k, v| {
            let seq = decode_value::<u64>(k, v);
            let parsed = k.get(keys::ALLOCATION.len()..).filter(|r| r.len() == 20);
            match (parsed, seq) {
                (Some(_), Ok(seq)) if later(seq) => {}
                (Some(r), Ok(seq)) => {
                    index_allocations.add(&[&r[..4], &r[4..], &seq.to_be_bytes()])
                }
                _ => agreed = false,
            }
            true
        })?;
        crate::store::for_each_chunked(store, keys::PURCHASE, &mut |k, v| {
            let id = k.get(keys::PURCHASE.len()..).filter(|r| r.len() == 16);
            match (id, decode_value::<PurchaseRecord>(k, v)) {
                (Some(_), Ok(rec)) if later(rec.seq) => {}
                (Some(id), Ok(rec)) => index_purchases.add(&[
                    id,
                    &rec.seq.to_be_bytes(),
                    &rec.allocation_part.cents().to_be_bytes(),
                ]),
                _ => agreed = false,
            }
            true
        })?;
        agreed = agreed
            && journal_statements == index_statements
            && journal_allocations == index_allocations
            && journal_purchases == index_purchases;
    }
    // The allocation index against the journal.
    // (Read whole only by an exact pass: at a million members a year of
    // allocations is twelve million keys.)
    let allocation_index = if exact && from.is_none() {
        store.scan_prefix(keys::ALLOCATION)?
    } else {
        Vec::new()
    };
    for (k, v) in allocation_index {
        let seq = decode_value::<u64>(&k, &v);
        let parsed = k
            .get(keys::ALLOCATION.len()..)
            .filter(|r| r.len() == 20)
            .and_then(|r| {
                let period = Period::from_index(u32::from_be_bytes(r[..4].try_into().ok()?))?;
                let member = MemberId::from_bytes(r[4..].try_into().ok()?);
                Some((period, member))
            });
        match (parsed, seq) {
            (Some(_), Ok(seq)) if later(seq) => {}
            (Some(pm), Ok(seq)) => match allocations.remove(&pm) {
                Some(s) if s == seq => {}
                Some(s) => report.findings.push(finding(
                    format!("allocation {} {}", pm.0, pm.1),
                    format!("index points to entry {seq} but the journal has it in entry {s}"),
                )),
                None => report.findings.push(finding(
                    format!("allocation {} {}", pm.0, pm.1),
                    "indexed as issued but no journal entry issues it",
                )),
            },
            _ => report.findings.push(finding(
                keys::printable(&k),
                "malformed allocation index entry",
            )),
        }
    }
    for ((period, member), seq) in allocations {
        report.findings.push(finding(
            format!("allocation {period} {member}"),
            format!(
                "journal entry {seq} issues it but the index does not record it (a rerun could pay twice)"
            ),
        ));
    }

    // Purchase idempotency records against the journal.
    let purchase_index = if exact && from.is_none() {
        store.scan_prefix(keys::PURCHASE)?
    } else {
        Vec::new()
    };
    for (k, v) in purchase_index {
        let id = k
            .get(keys::PURCHASE.len()..)
            .and_then(|r| <[u8; 16]>::try_from(r).ok())
            .map(PurchaseId::from_bytes);
        let record = decode_value::<PurchaseRecord>(&k, &v);
        match (id, record) {
            (Some(_), Ok(rec)) if later(rec.seq) => {}
            (Some(id), Ok(rec)) => match purchases.remove(&id) {
                Some((seq, debit)) => {
                    if seq != rec.seq {
                        report.findings.push(finding(
                            format!("purchase {id}"),
                            format!(
                                "idempotency record points to entry {} but the journal has it in entry {seq}",
                                rec.seq
                            ),
                        ));
                    }
                    if debit != rec.allocation_part {
                        report.findings.push(finding(
                            format!("purchase {id}"),
                            format!(
                                "idempotency record says {} but the journal debited {debit} (difference {})",
                                rec.allocation_part,
                                diff(rec.allocation_part, debit)
                            ),
                        ));
                    }
                }
                None => report.findings.push(finding(
                    format!("purchase {id}"),
                    "idempotency record with no journal entry (acknowledged purchase lost?)",
                )),
            },
            _ => report
                .findings
                .push(finding(keys::printable(&k), "malformed purchase record")),
        }
    }
    // Receivables and payables against the receipts held and issued.
    let expected = receipts_by_peer(store, &later, &mut report.findings)?;
    let mut peers: Vec<CaisseId> = replayed
        .keys()
        .filter_map(|a| match a {
            Account::Peer(c) => Some(*c),
            _ => None,
        })
        .chain(expected.keys().copied())
        .collect();
    peers.sort();
    peers.dedup();
    for c in peers {
        let journal = replayed
            .get(&Account::Peer(c))
            .copied()
            .unwrap_or(Amount::ZERO);
        let receipts = expected.get(&c).copied().unwrap_or(Amount::ZERO);
        if journal != receipts && upto.is_some() {
            // Offline sales (fw/) carry no entry number: settle in `recheck`.
            suspects.peers = Some(Vec::new());
        } else if journal != receipts {
            report.findings.push(finding(
                Account::Peer(c).to_string(),
                format!(
                    "journal balance {journal} but the receipts held and issued add up to {receipts} (difference {})",
                    diff(journal, receipts)
                ),
            ));
        }
    }
    if let Some(p) = &mut suspects.peers {
        p.extend(replayed.iter().filter_map(|(a, b)| match a {
            Account::Peer(c) => Some((*c, *b)),
            _ => None,
        }));
    }
    let mut orphans: Vec<_> = purchases.into_iter().collect();
    orphans.sort();
    for (id, (seq, _)) in orphans {
        report.findings.push(finding(
            format!("purchase {id}"),
            format!("journal entry {seq} has no idempotency record (a retry would debit twice)"),
        ));
    }
    let mut balances: Vec<(Account, Amount)> = replayed.into_iter().collect();
    balances.sort();
    let reached = AuditCheckpoint {
        upto: expected_seq,
        prev_hash: suspects.prev_hash,
        balances,
        full_at: 0,
        made_at: 0,
    };
    Ok((report, suspects, agreed, reached))
}

/// From a checkpoint: whether the allocation index records the allocation
/// of journal entry `seq` (`item`) as the full audit would find it.
fn allocation_indexed(
    store: &dyn Store,
    period: Period,
    member: &MemberId,
    seq: u64,
    item: &str,
) -> Result<Option<Finding>, StoreError> {
    let key = allocation_key(period, member);
    let name = format!("allocation {period} {member}");
    let Some(value) = store.get(&key)? else {
        return Ok(Some(finding(
            name,
            format!(
                "journal entry {seq} issues it but the index does not record it (a rerun could pay twice)"
            ),
        )));
    };
    let indexed = match decode_value::<u64>(&key, &value) {
        Ok(s) => s,
        Err(_) => {
            return Ok(Some(finding(
                keys::printable(&key),
                "malformed allocation index entry",
            )));
        }
    };
    if indexed == seq {
        return Ok(None);
    }
    let earlier_same = indexed < seq
        && matches!(
            entry_at(store, indexed)?,
            Some(JournalEntry { kind: EntryKind::Allocation { member: m, period: p, .. }, .. })
                if m == *member && p == period
        );
    Ok(Some(if earlier_same {
        finding(
            item,
            format!("second allocation to {member} for {period} (first in entry {indexed})"),
        )
    } else {
        finding(
            name,
            format!("index points to entry {indexed} but the journal has it in entry {seq}"),
        )
    }))
}

/// From a checkpoint: whether the idempotency record of the purchase `id`
/// in journal entry `seq` (`item`), debiting `debit`, agrees with it.
fn purchase_recorded(
    store: &dyn Store,
    id: &PurchaseId,
    seq: u64,
    debit: Amount,
    item: &str,
) -> Result<Vec<Finding>, StoreError> {
    let key = keys::key(keys::PURCHASE, &[id.as_bytes()]);
    let name = format!("purchase {id}");
    let Some(value) = store.get(&key)? else {
        return Ok(vec![finding(
            name,
            format!("journal entry {seq} has no idempotency record (a retry would debit twice)"),
        )]);
    };
    let Ok(rec) = decode_value::<PurchaseRecord>(&key, &value) else {
        return Ok(vec![finding(
            keys::printable(&key),
            "malformed purchase record",
        )]);
    };
    if rec.seq < seq
        && matches!(
            entry_at(store, rec.seq)?,
            Some(JournalEntry { kind: EntryKind::Purchase { id: first, .. } | EntryKind::CrossPurchase { id: first, .. }, .. })
                if first == *id
        )
    {
        return Ok(vec![finding(
            item,
            format!("purchase {id} recorded twice (debited twice)"),
        )]);
    }
    let mut out = Vec::new();
    if rec.seq != seq {
        out.push(finding(
            &name,
            format!(
                "idempotency record points to entry {} but the journal has it in entry {seq}",
                rec.seq
            ),
        ));
    }
    if debit != rec.allocation_part {
        out.push(finding(
            &name,
            format!(
                "idempotency record says {} but the journal debited {debit} (difference {})",
                rec.allocation_part,
                diff(rec.allocation_part, debit)
            ),
        ));
    }
    Ok(out)
}

/// Journal entry `seq`, if it is there and decodes.
fn entry_at(store: &dyn Store, seq: u64) -> Result<Option<JournalEntry>, StoreError> {
    let key = JournalEntry::key(seq);
    Ok(store
        .get(&key)?
        .and_then(|bytes| decode_value(&key, &bytes).ok()))
}

/// What each peer caisse owes (positive) or is owed, from the receipts this
/// caisse issued as home (`x/`) and holds as host (`h/`) and the sales
/// still waiting under the offline floor (`fw/`); receipts of entries
/// `later` than a bound are left out.
fn receipts_by_peer(
    store: &dyn Store,
    later: &dyn Fn(u64) -> bool,
    findings: &mut Vec<Finding>,
) -> Result<HashMap<CaisseId, Amount>, StoreError> {
    let mut expected: HashMap<CaisseId, Amount> = HashMap::new();
    for (prefix, sign) in [(b"x/".as_slice(), 1i64), (b"h/".as_slice(), -1i64)] {
        for (k, v) in store.scan_prefix(prefix)? {
            match decode_value::<crate::settlement::ReceiptRecord>(&k, &v) {
                Ok(rec) if later(rec.seq) => {}
                Ok(rec) => {
                    let other = if sign > 0 {
                        rec.receipt.host
                    } else {
                        rec.receipt.home
                    };
                    let e = expected.entry(other).or_insert(Amount::ZERO);
                    let amt = rec
                        .receipt
                        .allocation_part
                        .checked_mul(sign)
                        .unwrap_or(Amount::ZERO);
                    *e = e.checked_add(amt).unwrap_or(*e);
                }
                Err(e) => findings.push(finding(keys::printable(&k), e.to_string())),
            }
        }
    }
    for (k, v) in store.scan_prefix(crate::settlement::PENDING)? {
        match decode_value::<crate::settlement::OfflinePending>(&k, &v) {
            Ok(p) => {
                let e = expected.entry(p.home).or_insert(Amount::ZERO);
                *e = e.checked_sub(p.allocation_part).unwrap_or(*e);
            }
            Err(e) => findings.push(finding(keys::printable(&k), e.to_string())),
        }
    }
    Ok(expected)
}

/// Settle what a bounded audit left (nothing may write meanwhile): replay
/// the entries appended since its bound, check their chain up to the head,
/// and compare the suspect balances (and the peer balances against the
/// receipts) once more. Returns the findings that remain, and the entries
/// read.
pub fn recheck(store: &dyn Store, suspects: &Suspects) -> Result<(Vec<Finding>, u64), StoreError> {
    let mut findings = Vec::new();
    let mut balances: HashMap<Account, Amount> = suspects.balances.iter().copied().collect();
    let mut peers: HashMap<CaisseId, Amount> = suspects.peers.iter().flatten().copied().collect();
    let mut expected_seq = suspects.upto;
    let mut prev_hash = suspects.prev_hash;
    let mut read = 0u64;
    let start = JournalEntry::key(suspects.upto);
    let mut tail = Vec::new();
    store.for_each_from(keys::JOURNAL, &start, &mut |k, v| {
        tail.push((k.to_vec(), v.to_vec()));
        true
    })?;
    for (key, bytes) in tail {
        read = read.saturating_add(1);
        let item = keys::printable(&key);
        let entry: JournalEntry = match decode_value(&key, &bytes) {
            Ok(e) => e,
            Err(e) => {
                findings.push(finding(&item, format!("cannot be decoded: {e}")));
                return Ok((findings, read));
            }
        };
        if entry.seq != expected_seq {
            findings.push(finding(&item, format!("expected entry {expected_seq}")));
        }
        if entry.prev != prev_hash {
            findings.push(finding(
                &item,
                "hash chain broken: the previous entry was edited, removed or replaced",
            ));
        }
        prev_hash = entry_hash(&bytes);
        expected_seq = entry.seq.saturating_add(1);
        for p in &entry.postings {
            if let Some(b) = balances.get_mut(&p.account) {
                *b = b.checked_add(p.amount).unwrap_or(*b);
            }
            if let Account::Peer(c) = p.account
                && let Some(b) = peers.get_mut(&c)
            {
                *b = b.checked_add(p.amount).unwrap_or(*b);
            } else if let Account::Peer(c) = p.account
                && suspects.peers.is_some()
            {
                peers.insert(c, p.amount);
            }
        }
    }
    match store.get(keys::HEAD)? {
        Some(bytes) => match decode_value::<Head>(keys::HEAD, &bytes) {
            Ok(head) if head.next_seq != expected_seq => findings.push(finding(
                "journal head",
                format!(
                    "says {} entries but the journal ends after {expected_seq}",
                    head.next_seq
                ),
            )),
            Ok(head) if head.last_hash != prev_hash => findings.push(finding(
                "journal head",
                "hash does not match the last entry (last entry edited?)",
            )),
            Ok(_) => {}
            Err(e) => findings.push(finding("journal head", e.to_string())),
        },
        None if expected_seq > 0 => findings.push(finding(
            "journal head",
            "missing while the journal has entries",
        )),
        None => {}
    }
    let mut accounts: Vec<(Account, Amount)> = balances.into_iter().collect();
    accounts.sort();
    for (account, journal) in accounts {
        let key = account.balance_key();
        let cached = match store.get(&key)? {
            Some(b) => decode_value::<Amount>(&key, &b)?,
            None => Amount::ZERO,
        };
        if cached != journal {
            findings.push(finding(
                account.to_string(),
                format!(
                    "cached balance {cached} but the journal says {journal} (difference {})",
                    diff(cached, journal)
                ),
            ));
        }
    }
    if suspects.peers.is_some() {
        let receipts = receipts_by_peer(store, &|_| false, &mut findings)?;
        let mut all: Vec<CaisseId> = peers.keys().chain(receipts.keys()).copied().collect();
        all.sort();
        all.dedup();
        for c in all {
            let journal = peers.get(&c).copied().unwrap_or(Amount::ZERO);
            let r = receipts.get(&c).copied().unwrap_or(Amount::ZERO);
            if journal != r {
                findings.push(finding(
                    Account::Peer(c).to_string(),
                    format!(
                        "journal balance {journal} but the receipts held and issued add up to {r} (difference {})",
                        diff(journal, r)
                    ),
                ));
            }
        }
    }
    Ok((findings, read))
}

#[cfg(test)]
mod report_tests {
    use super::*;

    /// A bounded report lists the first findings, counts the rest, and is
    /// still not ok when only counted ones remain.
    #[test]
    fn a_bounded_report_counts_what_it_leaves_out() {
        let report = CheckReport {
            findings: (0..5)
                .map(|i| finding(format!("journal entry {i}"), "x"))
                .collect(),
            ..CheckReport::default()
        };
        let b = report.clone().bounded(2);
        assert_eq!(b.findings, report.findings[..2].to_vec());
        assert_eq!(b.more_findings, 3);
        assert!(!b.ok());
        let none = report.clone().bounded(0);
        assert!(none.findings.is_empty() && none.more_findings == 5 && !none.ok());
        assert_eq!(report.clone().bounded(5), report);
        assert!(CheckReport::default().bounded(0).ok());
    }
}
