//! The privacy model of the researchers' export.
//!
//! **Model.** Every column of a member row other than its pseudonym is
//! treated as a quasi-identifier (something an attacker may know about a
//! neighbour: age, household, roughly what they earn, when they joined).
//! A member's contribution follows from its place on the scale, so the
//! row gives only that place, in fifths; its spending is the sum of its
//! purchase lines, which are in brackets. The member table is made *k-anonymous* with [`K`] = 5: every
//! row shares all its quasi-identifiers with at least four others. It gets
//! there by generalisation (each column has a ladder of coarser values,
//! ending in `*`) chosen with the Datafly heuristic (coarsen the column
//! with the most distinct values until at most one row in twenty, or
//! `K - 1` rows, are left in a class smaller than `K`), then suppression (those remaining rows
//! have every quasi-identifier set to `*`; if fewer than `K` of them
//! remain, they are withheld and counted). Money is only ever given in
//! brackets: no column lets a reader recompute an income, a contribution
//! or a join day.
//!
//! Purchase lines carry a week of the month (not a day) and an amount
//! bracket; a line whose (outlet, week, amount bracket) is shared by fewer
//! than `K` lines loses its week, then its outlet and producer, and is
//! withheld if still rare.
//!
//! Pseudonyms are keyed by a secret drawn for each export and forgotten, so
//! two exports (two periods, or the same period twice) cannot be joined on
//! them. The evaluation report's aggregates are computed separately from
//! the exact ledger and are unchanged by any of this.
//!
//! **Not covered.** An attacker who knows a member's shopping well enough
//! to single out their pseudonym in the purchase lines learns that
//! member's generalised row; the purchase lines are only protected against
//! single observations (one shop, one week, one rough amount).

use std::collections::HashMap;

use caisse_protocol::Amount;
use serde::{Deserialize, Serialize};

/// The least number of rows that must share their quasi-identifiers.
pub const K: usize = 5;

/// What is known of one member before anonymisation.
#[derive(Clone, Debug)]
pub struct MemberFacts {
    /// The pseudonym for this export.
    pub pseudonym: String,
    /// Age in the period's year.
    pub age: Option<u16>,
    /// Position on the contribution scale: (bracket index, bracket count);
    /// `None` when the income is unknown.
    pub scale: Option<(usize, usize)>,
    /// Members in the household.
    pub household: u32,
    /// Status, as text.
    pub status: String,
    /// Enrolled during the period.
    pub joined_this_period: bool,
    /// Allocation received in the period.
    pub allocation: Amount,
    /// The full monthly allocation for this household (to tell a
    /// pro-rata first month from a full one).
    pub full_allocation: Amount,
}

/// One member row of the export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportMember {
    /// Pseudonym for this export only.
    pub member: String,
    /// Age band (`18-29` … `75+`, coarser `18-44`/`45+`, or `*`).
    pub age_band: String,
    /// Fifth of the contribution scale (`Q1` … `Q5`), coarser
    /// `lower`/`upper` half, `unknown`, or `*`.
    pub income_group: String,
    /// Household size (`1`, `2`, `3`, `4+`; coarser `2+`; or `*`).
    pub household: String,
    /// Status (or `*`).
    pub status: String,
    /// `this-period` or `earlier` (or `*`).
    pub joined: String,
    /// `none`, `partial` or `full` (or `*`).
    pub allocation: String,
}

/// The columns of `members.csv`, in order.
pub const MEMBER_COLUMNS: [&str; 7] = [
    "member",
    "age_band",
    "income_group",
    "household",
    "status",
    "joined",
    "allocation",
];

/// The columns of `purchases.csv`, in order.
pub const PURCHASE_COLUMNS: [&str; 7] = [
    "member",
    "week",
    "outlet",
    "category",
    "producer",
    "amount",
    "coverage_pct",
];

/// What is known of one purchase line before anonymisation.
#[derive(Clone, Debug)]
pub struct PurchaseFacts {
    /// The buyer's pseudonym for this export.
    pub member: String,
    /// Day of the month (1–31).
    pub day_of_month: u8,
    /// The outlet (a business).
    pub outlet: String,
    /// Category.
    pub category: String,
    /// Producer, if known (a business).
    pub producer: Option<String>,
    /// Line price.
    pub amount: Amount,
    /// Coverage applied.
    pub coverage_pct: u8,
}

/// One purchase line of the export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportPurchase {
    /// The buyer's pseudonym for this export.
    pub member: String,
    /// Week of the month (`days 1-7` … `days 29-31`, or `*`).
    pub week: String,
    /// The outlet (or `*`).
    pub outlet: String,
    /// Category.
    pub category: String,
    /// Producer (or `*`, or empty when unknown).
    pub producer: String,
    /// Line price, a bracket in EUR.
    pub amount: String,
    /// Coverage applied.
    pub coverage_pct: u8,
}

/// The anonymised tables and what was withheld.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anonymised {
    /// Member rows.
    pub members: Vec<ExportMember>,
    /// Purchase lines.
    pub purchases: Vec<ExportPurchase>,
    /// Member rows withheld (too few left after suppression to hide in).
    pub withheld_members: usize,
    /// Purchase lines withheld (too rare even without week and outlet).
    pub withheld_purchases: usize,
    /// The generalisation level applied to each member column.
    pub levels: Vec<(String, u8)>,
    /// The k the tables satisfy.
    pub k: usize,
}

fn bracket(cents: i64, edges_eur: &[i64]) -> String {
    if cents == 0 {
        return "0".into();
    }
    let eur = cents / 100;
    let mut low = 0;
    for &e in edges_eur {
        if eur < e {
            return format!("{low}-{e}");
        }
        low = e;
    }
    format!("{low}+")
}

/// The member columns, each a ladder of generalisations (level 0 the
/// finest; the last level is always `*`).
const COLUMNS: [(&str, u8); N] = [
    ("age_band", 2),
    ("income_group", 2),
    ("household", 2),
    ("status", 1),
    ("joined", 1),
    ("allocation", 1),
];

/// The number of member columns besides the pseudonym.
const N: usize = 6;

fn column(m: &MemberFacts, col: usize, level: u8) -> String {
    let max = COLUMNS[col].1;
    if level >= max {
        return "*".into();
    }
    match (col, level) {
        (0, 0) => match m.age {
            None => "unknown".into(),
            Some(a) if a < 30 => "18-29".into(),
            Some(a) if a < 45 => "30-44".into(),
            Some(a) if a < 60 => "45-59".into(),
            Some(a) if a < 75 => "60-74".into(),
            Some(_) => "75+".into(),
        },
        (0, _) => match m.age {
            None => "unknown".into(),
            Some(a) if a < 45 => "18-44".into(),
            Some(_) => "45+".into(),
        },
        (1, l) => match m.scale {
            None => "unknown".into(),
            Some((idx, count)) => {
                let count = count.max(1);
                if l == 0 {
                    format!("Q{}", idx * 5 / count + 1)
                } else if idx * 2 < count {
                    "lower".into()
                } else {
                    "upper".into()
                }
            }
        },
        (2, 0) => match m.household {
            0 | 1 => "1".into(),
            2 => "2".into(),
            3 => "3".into(),
            _ => "4+".into(),
        },
        (2, _) => if m.household <= 1 { "1" } else { "2+" }.into(),
        (3, _) => m.status.clone(),
        (4, _) => if m.joined_this_period {
            "this-period"
        } else {
            "earlier"
        }
        .into(),
        (5, _) => {
            if m.allocation == Amount::ZERO {
                "none".into()
            } else if m.allocation >= m.full_allocation {
                "full".into()
            } else {
                "partial".into()
            }
        }
        _ => "*".into(),
    }
}

fn member_row(m: &MemberFacts, levels: &[u8; N]) -> ExportMember {
    let c = |i: usize| column(m, i, levels[i]);
    ExportMember {
        member: m.pseudonym.clone(),
        age_band: c(0),
        income_group: c(1),
        household: c(2),
        status: c(3),
        joined: c(4),
        allocation: c(5),
    }
}

/// The quasi-identifiers of a member row (everything but the pseudonym).
pub fn member_key(r: &ExportMember) -> [&str; N] {
    [
        &r.age_band,
        &r.income_group,
        &r.household,
        &r.status,
        &r.joined,
        &r.allocation,
    ]
}

/// The smallest class over the member rows' quasi-identifiers (`usize::MAX`
/// for an empty table).
pub fn member_k(rows: &[ExportMember]) -> usize {
    let mut classes: HashMap<[&str; N], usize> = HashMap::new();
    for r in rows {
        *classes.entry(member_key(r)).or_default() += 1;
    }
    classes.values().copied().min().unwrap_or(usize::MAX)
}

/// The smallest class of purchase lines over (outlet, week, amount).
pub fn purchase_k(rows: &[ExportPurchase]) -> usize {
    let mut classes: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for r in rows {
        *classes
            .entry((r.outlet.as_str(), r.week.as_str(), r.amount.as_str()))
            .or_default() += 1;
    }
    classes.values().copied().min().unwrap_or(usize::MAX)
}

fn anonymise_members(facts: &[MemberFacts]) -> (Vec<ExportMember>, usize, [u8; N]) {
    let mut levels = [0u8; N];
    let budget = (facts.len() / 20).max(K - 1);
    loop {
        let rows: Vec<ExportMember> = facts.iter().map(|m| member_row(m, &levels)).collect();
        let mut classes: HashMap<[&str; N], usize> = HashMap::new();
        for r in &rows {
            *classes.entry(member_key(r)).or_default() += 1;
        }
        let rare = rows.iter().filter(|r| classes[&member_key(r)] < K).count();
        // The column with the most distinct values that can still be coarsened.
        let next = (0..N)
            .filter(|&i| levels[i] < COLUMNS[i].1)
            .max_by_key(|&i| {
                let mut seen: Vec<&str> = rows.iter().map(|r| member_key(r)[i]).collect();
                seen.sort_unstable();
                seen.dedup();
                (seen.len(), std::cmp::Reverse(i))
            });
        if rare <= budget || next.is_none() {
            // Suppress what is still rare; withhold it if too few to hide together.
            let rare_ids: Vec<bool> = rows.iter().map(|r| classes[&member_key(r)] < K).collect();
            drop(classes);
            let mut out = Vec::with_capacity(rows.len());
            let mut suppressed = Vec::new();
            for (r, is_rare) in rows.into_iter().zip(rare_ids) {
                if is_rare {
                    suppressed.push(ExportMember {
                        member: r.member,
                        age_band: "*".into(),
                        income_group: "*".into(),
                        household: "*".into(),
                        status: "*".into(),
                        joined: "*".into(),
                        allocation: "*".into(),
                    });
                } else {
                    out.push(r);
                }
            }
            // Rows already all `*` join the suppressed ones' class.
            let starred = out
                .iter()
                .filter(|r| member_key(r).iter().all(|c| *c == "*"))
                .count();
            let mut withheld = if suppressed.len() + starred >= K {
                out.extend(suppressed);
                0
            } else {
                suppressed.len()
            };
            // Fewer than K rows in all: nothing can hide among them.
            if member_k(&out) < K {
                withheld += out.len();
                out.clear();
            }
            return (out, withheld, levels);
        }
        if let Some(i) = next {
            levels[i] += 1;
        }
    }
}

fn week(day: u8) -> &'static str {
    match day {
        0..=7 => "days 1-7",
        8..=14 => "days 8-14",
        15..=21 => "days 15-21",
        22..=28 => "days 22-28",
        _ => "days 29-31",
    }
}

fn anonymise_purchases(facts: &[PurchaseFacts]) -> (Vec<ExportPurchase>, usize) {
    let mut rows: Vec<ExportPurchase> = facts
        .iter()
        .map(|p| ExportPurchase {
            member: p.member.clone(),
            week: week(p.day_of_month).into(),
            outlet: p.outlet.clone(),
            category: p.category.clone(),
            producer: p.producer.clone().unwrap_or_default(),
            amount: bracket(p.amount.cents(), &[5, 10, 20, 50]),
            coverage_pct: p.coverage_pct,
        })
        .collect();
    let rare = |rows: &[ExportPurchase]| -> Vec<bool> {
        let mut classes: HashMap<(String, String, String), usize> = HashMap::new();
        for r in rows {
            *classes
                .entry((r.outlet.clone(), r.week.clone(), r.amount.clone()))
                .or_default() += 1;
        }
        rows.iter()
            .map(|r| classes[&(r.outlet.clone(), r.week.clone(), r.amount.clone())] < K)
            .collect()
    };
    // First drop the week of rare lines, then their outlet and producer.
    for step in 0..2 {
        let flags = rare(&rows);
        for (r, is_rare) in rows.iter_mut().zip(flags) {
            if is_rare {
                if step == 0 {
                    r.week = "*".into();
                } else {
                    r.outlet = "*".into();
                    r.producer = "*".into();
                }
            }
        }
    }
    let flags = rare(&rows);
    let before = rows.len();
    let kept: Vec<ExportPurchase> = rows
        .into_iter()
        .zip(flags)
        .filter_map(|(r, is_rare)| (!is_rare).then_some(r))
        .collect();
    // Withholding can leave a class under K only if it was rare, which it
    // was not: classes are unchanged for what is kept.
    let withheld = before - kept.len();
    (kept, withheld)
}

/// Anonymise an export's members and purchase lines under the model above.
pub fn anonymise(members: &[MemberFacts], purchases: &[PurchaseFacts]) -> Anonymised {
    let (mut members, withheld_members, levels) = anonymise_members(members);
    members.sort_by(|a, b| a.member.cmp(&b.member));
    let (mut purchases, withheld_purchases) = anonymise_purchases(purchases);
    purchases.sort_by(|a, b| a.week.cmp(&b.week).then(a.member.cmp(&b.member)));
    Anonymised {
        members,
        purchases,
        withheld_members,
        withheld_purchases,
        levels: COLUMNS
            .iter()
            .zip(levels)
            .map(|((name, _), l)| ((*name).to_owned(), l))
            .collect(),
        k: K,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts(seed: u64, n: usize) -> Vec<MemberFacts> {
        let mut r = crate::parliament::SplitMix64(seed);
        (0..n)
            .map(|i| {
                let alloc = 10_000 + 5_000 * (r.next_u64() % 3) as i64;
                let joined = r.next_u64().is_multiple_of(10);
                MemberFacts {
                    pseudonym: format!("p{i}"),
                    age: Some(18 + (r.next_u64() % 70) as u16),
                    scale: Some(((r.next_u64() % 10) as usize, 10)),
                    household: 1 + (r.next_u64() % 6) as u32,
                    status: ["active", "active", "active", "suspended"]
                        [(r.next_u64() % 4) as usize]
                        .into(),
                    joined_this_period: joined,
                    allocation: Amount::from_cents(if joined {
                        alloc * (r.next_u64() % 28 + 1) as i64 / 30
                    } else {
                        alloc
                    }),
                    full_allocation: Amount::from_cents(alloc),
                }
            })
            .collect()
    }

    proptest! {
        #[test]
        fn every_member_class_has_k_rows(seed in any::<u64>(), n in 0usize..400) {
            let a = anonymise(&facts(seed, n), &[]);
            prop_assert!(member_k(&a.members) >= K || a.members.is_empty());
            prop_assert_eq!(a.members.len() + a.withheld_members, n);
        }

        #[test]
        fn every_purchase_class_has_k_lines(seed in any::<u64>(), n in 0usize..600) {
            let mut r = crate::parliament::SplitMix64(seed);
            let p: Vec<PurchaseFacts> = (0..n).map(|i| PurchaseFacts {
                member: format!("p{}", i % 50),
                day_of_month: 1 + (r.next_u64() % 30) as u8,
                outlet: format!("out{}", r.next_u64() % 6),
                category: "vegetables".into(),
                producer: None,
                amount: Amount::from_cents((r.next_u64() % 8_000) as i64),
                coverage_pct: 100,
            }).collect();
            let a = anonymise(&[], &p);
            prop_assert!(purchase_k(&a.purchases) >= K || a.purchases.is_empty());
            prop_assert_eq!(a.purchases.len() + a.withheld_purchases, n);
        }
    }

    #[test]
    fn money_only_in_brackets() {
        assert_eq!(bracket(0, &[10, 25]), "0");
        assert_eq!(bracket(950, &[10, 25]), "0-10");
        assert_eq!(bracket(2_499, &[10, 25]), "10-25");
        assert_eq!(bracket(9_999_999, &[10, 25]), "25+");
    }
}

#[cfg(test)]
mod usefulness {
    use super::*;

    /// On a few hundred varied members the export stays useful: most rows
    /// are kept with some detail, not all stars.
    #[test]
    fn most_rows_keep_detail() {
        for seed in 0..20 {
            let f = tests_facts(seed, 300);
            let a = anonymise(&f, &[]);
            let starred = a
                .members
                .iter()
                .filter(|r| member_key(r).iter().all(|c| *c == "*"))
                .count();
            assert!(starred + a.withheld_members <= 300 / 10, "{:?}", a.levels);
            assert!(member_k(&a.members) >= K);
        }
    }

    fn tests_facts(seed: u64, n: usize) -> Vec<MemberFacts> {
        let mut r = crate::parliament::SplitMix64(seed);
        (0..n)
            .map(|i| MemberFacts {
                pseudonym: format!("p{i}"),
                age: Some(18 + (r.next_u64() % 70) as u16),
                scale: Some(((r.next_u64() % 10) as usize, 10)),
                household: 1 + (r.next_u64() % 5) as u32,
                status: "active".into(),
                joined_this_period: r.next_u64().is_multiple_of(10),
                allocation: Amount::from_cents(10_000),
                full_allocation: Amount::from_cents(10_000),
            })
            .collect()
    }
}
