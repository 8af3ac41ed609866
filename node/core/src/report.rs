//! The evaluation report of a period, for the evaluation committee, and the
//! anonymised export for researchers.
//!
//! Shares are in basis points (1/100 of a percent: 8000 = 80.00%), computed
//! with integer arithmetic over line prices, so a report is exact and
//! reproducible.

use std::collections::{BTreeMap, HashMap};

use caisse_protocol::{Amount, MemberId, OutletId, Period};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::anonymise::{ExportMember, ExportPurchase, MEMBER_COLUMNS, PURCHASE_COLUMNS};
use crate::anonymise::{MemberFacts, PurchaseFacts};
use crate::caisse::{Caisse, CaisseError, ContributionIndex};
use crate::ledger::{Account, EntryKind, JournalEntry};
use crate::members::{MemberRecord, MemberStatus};
use crate::store::{Store, decode_value, keys};

/// Categories counted as fresh fruit and vegetables.
pub const FRESH_CATEGORIES: &[&str] =
    &["fresh-produce", "fruits", "vegetables", "fruit-vegetables"];
/// The label counted as organic.
pub const ORGANIC_LABEL: &str = "organic";

/// `part / whole` in basis points (0 when the whole is zero).
pub fn share_bp(part: Amount, whole: Amount) -> u32 {
    if whole.cents() <= 0 {
        return 0;
    }
    let bp = i128::from(part.cents()) * 10_000 / i128::from(whole.cents());
    u32::try_from(bp.clamp(0, 10_000)).unwrap_or(0)
}

/// Basis points as a percentage with two decimals.
pub fn pct(bp: u32) -> String {
    format!("{}.{:02}%", bp / 100, bp % 100)
}

/// Members in the period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberFigures {
    /// Active members now.
    pub active: u64,
    /// Suspended members now.
    pub suspended: u64,
    /// Members who have left.
    pub left: u64,
    /// Enrolled during the period.
    pub new_enrolments: u64,
}

/// A count and a sum.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// How many.
    pub count: u64,
    /// How much.
    pub total: Amount,
}

impl Tally {
    fn add(&mut self, a: Amount) {
        self.count += 1;
        self.total = self.total.checked_add(a).unwrap_or(Amount::MAX);
    }
}

/// Spending in the period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spending {
    /// Purchases by our members (here and at other caisses' outlets).
    pub purchases: u64,
    /// Of which at other caisses' outlets.
    pub cross_caisse_purchases: u64,
    /// Sum of the lines' prices.
    pub total: Amount,
    /// Paid by the allocation.
    pub allocation_part: Amount,
    /// Paid by members outside the allocation.
    pub member_part: Amount,
    /// Line prices by category.
    pub by_category: BTreeMap<String, Amount>,
    /// Share from producers labelled organic, in basis points.
    pub organic_bp: u32,
    /// Share of fresh fruit and vegetables, in basis points.
    pub fresh_bp: u32,
    /// Share from producers within the criteria's local distance, in basis points.
    pub local_bp: u32,
    /// The local distance used, if the criteria set one.
    pub local_distance_km: Option<u32>,
}

/// One outlet's turnover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutletTurnover {
    /// The outlet.
    pub outlet: OutletId,
    /// Its name.
    pub name: String,
    /// Sum of line prices sold under the allocation in the period.
    pub turnover: Amount,
    /// The same in the previous period.
    pub previous: Amount,
    /// Change from the previous period in basis points (none if it had no turnover).
    pub change_bp: Option<i64>,
}

/// Participation in one vote closed in the period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteParticipation {
    /// The proposal.
    pub proposal: String,
    /// Its title.
    pub title: String,
    /// Votes cast (yes, no, abstain).
    pub cast: u32,
    /// Active seats.
    pub seats: u32,
    /// Participation in basis points.
    pub participation_bp: u32,
    /// Whether it passed.
    pub passed: bool,
}

/// Accreditation activity in the period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccreditationFigures {
    /// Granted (valid from a day in the period).
    pub granted: u64,
    /// Expired (last valid day in the period).
    pub expired: u64,
    /// Revoked in the period.
    pub revoked: u64,
    /// Active at the end of the period.
    pub active: u64,
}

/// The evaluation report of a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The caisse's name.
    pub caisse: String,
    /// The period.
    pub period: Period,
    /// Members.
    pub members: MemberFigures,
    /// Allocations issued for the period.
    pub allocations: Tally,
    /// Contributions for the period.
    pub contributions: Tally,
    /// Contributions by bracket of the scale.
    pub contributions_by_bracket: BTreeMap<u8, Tally>,
    /// Subsidies for the period by source.
    pub subsidies: BTreeMap<String, Amount>,
    /// Total subsidies.
    pub subsidies_total: Amount,
    /// Contributions' share of funding, in basis points.
    pub contribution_share_bp: u32,
    /// The caisse's target for that share, in percent.
    pub contribution_target_pct: u8,
    /// Contributions + subsidies - allocations.
    pub budget_balance: Amount,
    /// Spending.
    pub spending: Spending,
    /// Turnover per outlet.
    pub outlets: Vec<OutletTurnover>,
    /// Votes closed in the period.
    pub votes: Vec<VoteParticipation>,
    /// Accreditations.
    pub accreditations: AccreditationFigures,
    /// Sales accepted under the offline floor that the card's home caisse refused.
    #[serde(default)]
    pub offline_losses: Tally,
}

fn profile_name(store: &dyn Store) -> Result<String, CaisseError> {
    let bytes = store.get(keys::PROFILE)?.unwrap_or_default();
    let p: crate::caisse::Profile = decode_value(keys::PROFILE, &bytes)?;
    Ok(p.name)
}

fn credit(entry: &JournalEntry, account: Account) -> Amount {
    entry
        .postings
        .iter()
        .filter(|p| p.account == account)
        .fold(Amount::ZERO, |a, p| a.checked_add(p.amount).unwrap_or(a))
}

/// The evaluation report of `period`, from what the store holds: it reads
/// the whole journal, so it runs outside the writer (on a blocking thread)
/// and never holds purchases up.
pub fn report_of(store: &dyn Store, period: Period) -> Result<Report, CaisseError> {
    let conventions = crate::conventionnement::Conventions::load(store)?;
    let policy = crate::caisse::decode_policy(&store.get(keys::POLICY)?.unwrap_or_default())?;
    let mut proposals: Vec<crate::parliament::Proposal> = Vec::new();
    for (k, v) in store.scan_prefix(crate::parliament::PROPOSAL)? {
        proposals.push(crate::store::decode_json_value(&k, &v)?);
    }
    let mut outlets: HashMap<OutletId, crate::members::OutletRecord> = HashMap::new();
    for (k, v) in store.scan_prefix(keys::OUTLET)? {
        let o: crate::members::OutletRecord = decode_value(&k, &v)?;
        outlets.insert(o.id, o);
    }
    let prev = period.prev();
    let mut members = MemberFigures::default();
    for (k, v) in store.scan_prefix(keys::MEMBER)? {
        let m: MemberRecord = decode_value(&k, &v)?;
        match m.status {
            MemberStatus::Active => members.active += 1,
            MemberStatus::Suspended => members.suspended += 1,
            MemberStatus::Left => members.left += 1,
        }
        if m.joined.period() == period {
            members.new_enrolments += 1;
        }
    }
    let mut allocations = Tally::default();
    let mut offline_losses = Tally::default();
    let mut contributions = Tally::default();
    let mut by_bracket: BTreeMap<u8, Tally> = BTreeMap::new();
    let mut subsidies: BTreeMap<String, Amount> = BTreeMap::new();
    let mut spending = Spending {
        local_distance_km: conventions
            .criteria()
            .and_then(|c| c.version.criteria.local_distance_km),
        ..Spending::default()
    };
    let mut organic = Amount::ZERO;
    let mut fresh = Amount::ZERO;
    let mut local = Amount::ZERO;
    let mut turnover: HashMap<OutletId, (Amount, Amount)> = HashMap::new();
    let add = |a: &mut Amount, b: Amount| *a = a.checked_add(b).unwrap_or(*a);
    let mut err = None;
    crate::store::for_each_chunked(store, keys::JOURNAL, &mut |k, v| {
        let entry: JournalEntry = match decode_value(k, v) {
            Ok(e) => e,
            Err(e) => {
                err = Some(e);
                return false;
            }
        };
        match &entry.kind {
            EntryKind::Allocation {
                period: p, amount, ..
            } if *p == period => {
                allocations.add(*amount);
            }
            EntryKind::Contribution { member, period: p } if *p == period => {
                let amount = credit(&entry, Account::Treasury);
                contributions.add(amount);
                let key = keys::key(
                    keys::CONTRIBUTION,
                    &[&period.index().to_be_bytes(), member.as_bytes()],
                );
                let bracket = store
                    .get(&key)
                    .ok()
                    .flatten()
                    .and_then(|b| decode_value::<ContributionIndex>(&key, &b).ok())
                    .map_or(u8::MAX, |i| i.bracket);
                by_bracket.entry(bracket).or_default().add(amount);
            }
            EntryKind::OfflineLoss {
                home, period: p, ..
            } if *p == period => {
                offline_losses.add(credit(&entry, Account::Peer(*home)));
            }
            EntryKind::Subsidy {
                source, period: p, ..
            } if *p == period => {
                add(
                    subsidies.entry(source.to_string()).or_insert(Amount::ZERO),
                    credit(&entry, Account::Treasury),
                );
            }
            EntryKind::CrossSale {
                outlet,
                lines,
                period: p,
                ..
            } => {
                // Another caisse's member at our outlet: our outlet's turnover, not our members' spending.
                let line_total =
                    Amount::checked_sum(lines.iter().map(|l| l.amount)).unwrap_or(Amount::ZERO);
                if Some(*p) == prev {
                    add(&mut turnover.entry(*outlet).or_default().1, line_total);
                } else if *p == period {
                    add(&mut turnover.entry(*outlet).or_default().0, line_total);
                }
            }
            EntryKind::Purchase {
                outlet,
                lines,
                coverage_pct,
                period: p,
                ..
            }
            | EntryKind::CrossPurchase {
                outlet,
                lines,
                coverage_pct,
                period: p,
                ..
            } => {
                let at_home = matches!(entry.kind, EntryKind::Purchase { .. });
                let line_total =
                    Amount::checked_sum(lines.iter().map(|l| l.amount)).unwrap_or(Amount::ZERO);
                if at_home && Some(*p) == prev {
                    add(&mut turnover.entry(*outlet).or_default().1, line_total);
                }
                if *p != period {
                    return true;
                }
                if at_home {
                    add(&mut turnover.entry(*outlet).or_default().0, line_total);
                } else {
                    spending.cross_caisse_purchases += 1;
                }
                spending.purchases += 1;
                for (l, cov) in lines.iter().zip(coverage_pct) {
                    add(&mut spending.total, l.amount);
                    let (a, m) = l
                        .amount
                        .split_coverage(*cov)
                        .unwrap_or((Amount::ZERO, l.amount));
                    add(&mut spending.allocation_part, a);
                    add(&mut spending.member_part, m);
                    add(
                        spending
                            .by_category
                            .entry(l.category.to_string())
                            .or_insert(Amount::ZERO),
                        l.amount,
                    );
                    if FRESH_CATEGORIES.contains(&l.category.as_str()) {
                        add(&mut fresh, l.amount);
                    }
                    let producer = l.producer.and_then(|p| conventions.producer(&p));
                    if let Some(pr) = producer {
                        if pr
                            .attributes
                            .labels
                            .iter()
                            .any(|t| t.as_str() == ORGANIC_LABEL)
                        {
                            add(&mut organic, l.amount);
                        }
                        if let (Some(d), Some(max)) =
                            (pr.attributes.distance_km, spending.local_distance_km)
                            && d <= max
                        {
                            add(&mut local, l.amount);
                        }
                    }
                }
            }
            _ => {}
        }
        true
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    spending.organic_bp = share_bp(organic, spending.total);
    spending.fresh_bp = share_bp(fresh, spending.total);
    spending.local_bp = share_bp(local, spending.total);
    let subsidies_total = Amount::checked_sum(subsidies.values().copied()).unwrap_or(Amount::ZERO);
    let funding = contributions
        .total
        .checked_add(subsidies_total)
        .unwrap_or(Amount::MAX);
    let budget_balance = funding
        .checked_sub(allocations.total)
        .unwrap_or(Amount::ZERO);
    let mut outlets: Vec<OutletTurnover> = outlets
        .values()
        .map(|o| {
            let (now, before) = turnover.get(&o.id).copied().unwrap_or_default();
            let change_bp = (before.cents() > 0).then(|| {
                ((i128::from(now.cents()) - i128::from(before.cents())) * 10_000
                    / i128::from(before.cents())) as i64
            });
            OutletTurnover {
                outlet: o.id,
                name: o.name.clone(),
                turnover: now,
                previous: before,
                change_bp,
            }
        })
        .collect();
    outlets.sort_by(|a, b| b.turnover.cmp(&a.turnover).then(a.outlet.cmp(&b.outlet)));
    let mut votes = Vec::new();
    for p in proposals {
        if let Some(o) = &p.outcome
            && caisse_protocol::Day::from_unix(o.closed_at).period() == period
        {
            let cast = o.yes + o.no + o.abstain;
            votes.push(VoteParticipation {
                proposal: p.id.to_string(),
                title: p.title.clone(),
                cast,
                seats: o.seats,
                participation_bp: (cast * 10_000).checked_div(o.seats).unwrap_or(0),
                passed: o.passed,
            });
        }
    }
    let mut acc = AccreditationFigures::default();
    let end = period
        .first_day()
        .plus(u32::from(period.days()).saturating_sub(1));
    for r in conventions.accreditations.values() {
        let a = &r.accreditation;
        if a.valid_from.period() == period {
            acc.granted += 1;
        }
        if a.valid_until.period() == period {
            acc.expired += 1;
        }
        if r.revoked.as_ref().is_some_and(|x| x.day.period() == period) {
            acc.revoked += 1;
        }
        if r.active_on(end) {
            acc.active += 1;
        }
    }
    Ok(Report {
        caisse: profile_name(store)?,
        period,
        members,
        contribution_share_bp: share_bp(contributions.total, funding),
        contribution_target_pct: policy.target_contribution_share_pct,
        allocations,
        contributions,
        contributions_by_bracket: by_bracket,
        subsidies,
        subsidies_total,
        budget_balance,
        spending,
        outlets,
        votes,
        accreditations: acc,
        offline_losses,
    })
}

/// The anonymised export of `period` for researchers, from what the store
/// holds: per-purchase and per-member rows with no names, addresses or card
/// ids, members under pseudonyms keyed by `secret` (a random key drawn for
/// one export and then forgotten). Like [`report_of`], it reads the whole
/// journal, so it runs off the writer.
pub fn export_of(
    store: &dyn Store,
    period: Period,
    secret: [u8; 32],
) -> Result<Export, CaisseError> {
    let policy = crate::caisse::decode_policy(&store.get(keys::POLICY)?.unwrap_or_default())?;
    let pseudonym = |m: &MemberId| {
        let mut h = Sha256::new();
        h.update(secret);
        h.update(m.as_bytes());
        format!("p{}", &hex::encode(h.finalize())[..12])
    };
    let mut cards: HashMap<caisse_protocol::CardId, MemberId> = HashMap::new();
    let mut records: Vec<MemberRecord> = Vec::new();
    for (k, v) in store.scan_prefix(keys::MEMBER)? {
        let m: MemberRecord = decode_value(&k, &v)?;
        cards.insert(m.card, m.id);
        records.push(m);
    }
    let mut household_size: HashMap<caisse_protocol::ids::HouseholdId, u32> = HashMap::new();
    for m in &records {
        if let Some(h) = m.household {
            *household_size.entry(h).or_default() += 1;
        }
    }
    let mut purchases = Vec::new();
    let mut allocated: HashMap<MemberId, Amount> = HashMap::new();
    let mut err = None;
    crate::store::for_each_chunked(store, keys::JOURNAL, &mut |k, v| {
        let entry: JournalEntry = match decode_value(k, v) {
            Ok(e) => e,
            Err(e) => {
                err = Some(e);
                return false;
            }
        };
        match &entry.kind {
            EntryKind::Purchase {
                card,
                outlet,
                lines,
                coverage_pct,
                period: p,
                ..
            } if *p == period => {
                let member = cards.get(card).copied();
                for (l, cov) in lines.iter().zip(coverage_pct) {
                    purchases.push(PurchaseFacts {
                        member: member.map_or_else(|| "unknown".into(), |m| pseudonym(&m)),
                        day_of_month: caisse_protocol::Day::from_unix(entry.at).ymd().2,
                        outlet: outlet.to_string(),
                        category: l.category.to_string(),
                        producer: l.producer.map(|p| p.to_string()),
                        amount: l.amount,
                        coverage_pct: *cov,
                    });
                }
            }
            EntryKind::Allocation {
                member,
                period: p,
                amount,
                ..
            } if *p == period => {
                let e = allocated.entry(*member).or_default();
                *e = e.checked_add(*amount).unwrap_or(*e);
            }
            _ => {}
        }
        true
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    let scale_len = match &policy.contribution {
        crate::policy::ContributionScale::Brackets { brackets } => brackets.len(),
        crate::policy::ContributionScale::Linear { .. } => 10,
    };
    let full = policy
        .monthly_allocation(true)
        .min(policy.monthly_allocation(false));
    let facts: Vec<MemberFacts> = records
        .iter()
        .map(|m| MemberFacts {
            pseudonym: pseudonym(&m.id),
            age: m.birth_year.map(|b| period.year().saturating_sub(b)),
            scale: m.income.and_then(|i| {
                policy
                    .contribution_for(Some(i))
                    .ok()
                    .map(|(_, idx)| (idx, scale_len))
            }),
            household: m.household.map_or(1, |h| household_size[&h]),
            status: format!("{:?}", m.status).to_lowercase(),
            joined_this_period: m.joined.period() == period,
            allocation: allocated.get(&m.id).copied().unwrap_or_default(),
            full_allocation: full,
        })
        .collect();
    let a = crate::anonymise::anonymise(&facts, &purchases);
    Ok(Export {
        period,
        model: format!(
            "k-anonymity over every member column (k = {}), money in brackets, purchase weeks not days, pseudonyms for this export only",
            a.k
        ),
        k: a.k,
        withheld_members: a.withheld_members,
        withheld_purchases: a.withheld_purchases,
        purchases: a.purchases,
        members: a.members,
    })
}

impl Caisse {}

/// An anonymised export (see [`crate::anonymise`] for its privacy model).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    /// The period.
    pub period: Period,
    /// The privacy model, in a sentence.
    pub model: String,
    /// Every member row shares its columns with at least this many others.
    pub k: usize,
    /// Member rows withheld to keep `k`.
    pub withheld_members: usize,
    /// Purchase lines withheld to keep `k`.
    pub withheld_purchases: usize,
    /// Purchase lines.
    pub purchases: Vec<ExportPurchase>,
    /// Members.
    pub members: Vec<ExportMember>,
}

/// The report as Markdown, for the committee.
pub fn to_markdown(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "# Evaluation report — {} — {}\n", r.caisse, r.period);
    let _ = writeln!(s, "## Members\n");
    let _ = writeln!(
        s,
        "| active | suspended | left | new this period |\n|---:|---:|---:|---:|\n| {} | {} | {} | {} |\n",
        r.members.active, r.members.suspended, r.members.left, r.members.new_enrolments
    );
    let _ = writeln!(s, "## Budget\n");
    let _ = writeln!(s, "| item | count | EUR |\n|---|---:|---:|");
    let _ = writeln!(
        s,
        "| allocations issued | {} | {} |",
        r.allocations.count, r.allocations.total
    );
    let _ = writeln!(
        s,
        "| contributions | {} | {} |",
        r.contributions.count, r.contributions.total
    );
    for (src, a) in &r.subsidies {
        let _ = writeln!(s, "| subsidy: {src} | | {a} |");
    }
    let _ = writeln!(
        s,
        "| **budget balance** (contributions + subsidies − allocations) | | **{}** |\n",
        r.budget_balance
    );
    let _ = writeln!(
        s,
        "Contributions are {} of funding (target {}%).\n",
        pct(r.contribution_share_bp),
        r.contribution_target_pct
    );
    if !r.contributions_by_bracket.is_empty() {
        let _ = writeln!(
            s,
            "| contribution bracket | members | EUR |\n|---|---:|---:|"
        );
        for (b, t) in &r.contributions_by_bracket {
            let name = if *b == u8::MAX {
                "-".to_string()
            } else {
                b.to_string()
            };
            let _ = writeln!(s, "| {name} | {} | {} |", t.count, t.total);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## Spending\n");
    let _ = writeln!(
        s,
        "{} purchases, {} EUR of which {} paid by the allocation and {} by members.\n",
        r.spending.purchases, r.spending.total, r.spending.allocation_part, r.spending.member_part
    );
    let local = r.spending.local_distance_km.map_or_else(
        || "not set by the criteria".to_string(),
        |km| format!("within {km} km"),
    );
    let _ = writeln!(
        s,
        "| share | value |\n|---|---:|\n| organic | {} |\n| fresh fruit and vegetables | {} |\n| local producers ({local}) | {} |\n",
        pct(r.spending.organic_bp),
        pct(r.spending.fresh_bp),
        pct(r.spending.local_bp)
    );
    let _ = writeln!(s, "| category | EUR | share |\n|---|---:|---:|");
    for (c, a) in &r.spending.by_category {
        let _ = writeln!(s, "| {c} | {a} | {} |", pct(share_bp(*a, r.spending.total)));
    }
    let _ = writeln!(
        s,
        "\n## Outlets\n\n| outlet | turnover | previous period | change |\n|---|---:|---:|---:|"
    );
    for o in &r.outlets {
        let change = o.change_bp.map_or_else(
            || "-".into(),
            |c| {
                let sign = if c < 0 { "-" } else { "+" };
                let a = c.unsigned_abs();
                format!("{sign}{}.{:02}%", a / 100, a % 100)
            },
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} | {change} |",
            o.name, o.turnover, o.previous
        );
    }
    let _ = writeln!(s, "\n## Parliament\n");
    if r.votes.is_empty() {
        let _ = writeln!(s, "No vote closed in this period.");
    } else {
        let _ = writeln!(
            s,
            "| proposal | votes | seats | participation | outcome |\n|---|---:|---:|---:|---|"
        );
        for v in &r.votes {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                v.title,
                v.cast,
                v.seats,
                pct(v.participation_bp),
                if v.passed { "passed" } else { "not passed" }
            );
        }
    }
    if r.offline_losses.count > 0 {
        let _ = writeln!(
            s,
            "\n## Offline losses\n\n{} sales accepted under the offline floor were refused by the card's home caisse: {} EUR.",
            r.offline_losses.count, r.offline_losses.total
        );
    }
    let a = &r.accreditations;
    let _ = writeln!(
        s,
        "\n## Accreditations\n\n| granted | expired | revoked | active at the end |\n|---:|---:|---:|---:|\n| {} | {} | {} | {} |",
        a.granted, a.expired, a.revoked, a.active
    );
    s
}

/// Rows as CSV (RFC 4180 quoting) under `header`, always written even with
/// no rows: what researchers open in a spreadsheet or R. A cell that a
/// spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a
/// tab or a carriage return, and not a plain number) is prefixed with `'`.
pub fn to_csv<T: Serialize>(header: &[&str], rows: &[T]) -> String {
    fn field(v: &serde_json::Value) -> String {
        let mut t = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        let formula = t.starts_with(['=', '+', '-', '@', '\t', '\r']) && t.parse::<f64>().is_err();
        if formula {
            t.insert(0, '\'');
        }
        if t.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", t.replace('"', "\"\""))
        } else {
            t
        }
    }
    let mut text = header.join(",");
    text.push('\n');
    for r in rows {
        let r = serde_json::to_value(r).unwrap_or_default();
        let line: Vec<String> = header.iter().map(|c| field(&r[*c])).collect();
        text.push_str(&line.join(","));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod csv_tests {
    use super::to_csv;

    #[test]
    fn formulas_are_neutralised_and_numbers_kept() {
        let rows = vec![
            serde_json::json!({"a": "=HYPERLINK(\"http://x\")", "b": "-12.50"}),
            serde_json::json!({"a": "@SUM(A1)", "b": "+33"}),
        ];
        let t = to_csv(&["a", "b"], &rows);
        assert_eq!(
            t,
            "a,b\n\"'=HYPERLINK(\"\"http://x\"\")\",-12.50\n'@SUM(A1),+33\n"
        );
        assert_eq!(to_csv::<serde_json::Value>(&["a"], &[]), "a\n");
    }
}
