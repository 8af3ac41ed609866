//! The accountant's ledger file of a period, in the layout of the French
//! *fichier des écritures comptables* (FEC: 18 columns separated by `|`,
//! dates `YYYYMMDD`, decimal comma), on the chart of accounts of French
//! associations.
//!
//! The caisse's journal is a memo ledger of its own (member accounts,
//! outlets owed, allocations outstanding); each of its entries is written
//! here as the accounting entry it stands for:
//!
//! | journal entry | debit | credit |
//! |---|---|---|
//! | contribution | 512000 Banque | 756000 Cotisations |
//! | subsidy | 512000 Banque | 741000 / 744000 / 748000 Subventions (State / local authority / other) |
//! | allocation opened (net of expiry) | 801000 Engagements donnés : allocations ouvertes | 809000 Contrepartie des engagements |
//! | purchase by a member | 657000 Aides alimentaires versées (allocations) | 401000 Points de vente conventionnés |
//! |  and its commitment used | 809000 | 801000 |
//! | our member at another caisse | 657000 | 467100 Autres caisses |
//! | another caisse's member at our outlet (also offline) | 467100 | 401000 |
//! | offline sale the home refused | 658000 Charges diverses de gestion courante | 467100 |
//! | payout to an outlet | 401000 | 512000 |
//!
//! Member accounts are never itemised: a member appears only through the
//! amounts of their entries, under no name, id or card. Outlets and other
//! caisses are businesses and appear as auxiliary accounts. Every entry is
//! balanced (debits equal credits), which `to_fec`'s tests check.

use caisse_protocol::{Amount, CaisseId, Day, OutletId, Period};
use serde::Serialize;

use crate::caisse::CaisseError;
use crate::ledger::{Account, EntryKind, JournalEntry, SubsidySource};
use crate::members::OutletRecord;
use crate::store::{Store, decode_value, keys};

/// One line of the accountant's file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Line {
    /// Journal code (`BQ` bank, `OD` miscellaneous).
    pub journal: &'static str,
    /// The entry's number (the caisse journal's sequence number).
    pub number: u64,
    /// Its date.
    pub date: Day,
    /// Account number.
    pub account: &'static str,
    /// Account name.
    pub account_name: &'static str,
    /// Auxiliary account (an outlet or another caisse), if any.
    pub aux: String,
    /// Its name.
    pub aux_name: String,
    /// What the entry is, in words.
    pub label: String,
    /// Debit.
    pub debit: Amount,
    /// Credit.
    pub credit: Amount,
}

const BANK: (&str, &str) = ("512000", "Banque");
const CONTRIBUTIONS: (&str, &str) = ("756000", "Cotisations");
const OUTLETS: (&str, &str) = ("401000", "Points de vente conventionnés");
const PEERS: (&str, &str) = ("467100", "Autres caisses");
const AID: (&str, &str) = ("657000", "Aides alimentaires versées (allocations)");
const LOSSES: (&str, &str) = ("658000", "Charges diverses de gestion courante");
const COMMITTED: (&str, &str) = ("801000", "Engagements donnés : allocations ouvertes");
const COUNTERPART: (&str, &str) = ("809000", "Contrepartie des engagements");

fn subsidy_account(s: SubsidySource) -> (&'static str, &'static str) {
    match s {
        SubsidySource::State => ("741000", "Subventions d'exploitation : État"),
        SubsidySource::LocalAuthority => ("744000", "Subventions d'exploitation : collectivités"),
        SubsidySource::Other => ("748000", "Autres subventions d'exploitation"),
    }
}

fn sum(entry: &JournalEntry, f: impl Fn(&Account) -> bool) -> Amount {
    entry
        .postings
        .iter()
        .filter(|p| f(&p.account))
        .fold(Amount::ZERO, |acc, p| {
            acc.checked_add(p.amount).unwrap_or(acc)
        })
}

fn neg(a: Amount) -> Amount {
    a.checked_neg().unwrap_or(Amount::ZERO)
}

/// Everything the writer of lines needs besides the entry.
struct Names<'a> {
    outlets: &'a std::collections::HashMap<OutletId, String>,
}

impl Names<'_> {
    fn outlet(&self, o: &OutletId) -> (String, String) {
        (
            o.to_string(),
            self.outlets.get(o).cloned().unwrap_or_default(),
        )
    }
    fn peer(c: &CaisseId) -> (String, String) {
        (c.short(), String::new())
    }
}

/// The accounting lines of one journal entry (empty for an entry that
/// moves nothing, such as an allocation fully expired against itself).
fn lines_of(entry: &JournalEntry, names: &Names<'_>) -> Vec<Line> {
    let date = Day::from_unix(entry.at);
    let mut out = Vec::new();
    let mut pair = |journal: &'static str,
                    label: String,
                    debit: ((&'static str, &'static str), (String, String)),
                    credit: ((&'static str, &'static str), (String, String)),
                    amount: Amount| {
        if amount == Amount::ZERO {
            return;
        }
        // A negative amount swaps the sides (a reversal).
        let (debit, credit, amount) = if amount.is_negative() {
            (credit, debit, neg(amount))
        } else {
            (debit, credit, amount)
        };
        for ((acct, aux), is_debit) in [(debit, true), (credit, false)] {
            out.push(Line {
                journal,
                number: entry.seq,
                date,
                account: acct.0,
                account_name: acct.1,
                aux: aux.0,
                aux_name: aux.1,
                label: label.clone(),
                debit: if is_debit { amount } else { Amount::ZERO },
                credit: if is_debit { Amount::ZERO } else { amount },
            });
        }
    };
    let none = || (String::new(), String::new());
    let members = sum(entry, |a| matches!(a, Account::Member(_)));
    match &entry.kind {
        EntryKind::Contribution { period, .. } => {
            let a = sum(entry, |a| *a == Account::Treasury);
            pair(
                "BQ",
                format!("Cotisation {period}"),
                (BANK, none()),
                (CONTRIBUTIONS, none()),
                a,
            );
        }
        EntryKind::Subsidy {
            source,
            period,
            key,
        } => {
            let a = sum(entry, |a| *a == Account::Treasury);
            pair(
                "BQ",
                format!("Subvention {source} {period} ({key})"),
                (BANK, none()),
                (subsidy_account(*source), none()),
                a,
            );
        }
        EntryKind::Allocation { period, .. } => {
            pair(
                "OD",
                format!("Allocations ouvertes {period}"),
                (COMMITTED, none()),
                (COUNTERPART, none()),
                members,
            );
        }
        EntryKind::Purchase { outlet, period, .. } => {
            let a = neg(members);
            pair(
                "OD",
                format!("Achats sur l'allocation {period}"),
                (AID, none()),
                (OUTLETS, names.outlet(outlet)),
                a,
            );
            pair(
                "OD",
                format!("Allocations utilisées {period}"),
                (COUNTERPART, none()),
                (COMMITTED, none()),
                a,
            );
        }
        EntryKind::CrossPurchase { host, period, .. } => {
            let a = neg(members);
            pair(
                "OD",
                format!("Achats dans une autre caisse {period}"),
                (AID, none()),
                (PEERS, Names::peer(host)),
                a,
            );
            pair(
                "OD",
                format!("Allocations utilisées {period}"),
                (COUNTERPART, none()),
                (COMMITTED, none()),
                a,
            );
        }
        EntryKind::CrossSale {
            home,
            outlet,
            period,
            ..
        }
        | EntryKind::OfflineSale {
            home,
            outlet,
            period,
            ..
        } => {
            let a = sum(entry, |a| matches!(a, Account::Outlet(_)));
            pair(
                "OD",
                format!("Ventes aux membres d'une autre caisse {period}"),
                (PEERS, Names::peer(home)),
                (OUTLETS, names.outlet(outlet)),
                a,
            );
        }
        EntryKind::OfflineLoss {
            home,
            period,
            reason,
            ..
        } => {
            let a = sum(entry, |a| *a == Account::OfflineLosses);
            pair(
                "OD",
                format!("Vente hors ligne refusée {period} : {reason}"),
                (LOSSES, none()),
                (PEERS, Names::peer(home)),
                a,
            );
        }
        EntryKind::Payout { outlet, period } => {
            let a = neg(sum(entry, |a| *a == Account::Treasury));
            pair(
                "BQ",
                format!("Paiement du point de vente {period}"),
                (OUTLETS, names.outlet(outlet)),
                (BANK, none()),
                a,
            );
        }
    }
    out
}

/// The accounting lines of the journal entries dated within `period`.
pub fn accounting_of(store: &dyn Store, period: Period) -> Result<Vec<Line>, CaisseError> {
    let mut outlets = std::collections::HashMap::new();
    for (k, v) in store.scan_prefix(keys::OUTLET)? {
        let o: OutletRecord = decode_value(&k, &v)?;
        outlets.insert(o.id, o.name);
    }
    let names = Names { outlets: &outlets };
    let mut out = Vec::new();
    let mut err = None;
    crate::store::for_each_chunked(store, keys::JOURNAL, &mut |k, v| {
        match decode_value::<JournalEntry>(k, v) {
            Ok(e) if Day::from_unix(e.at).period() == period => out.extend(lines_of(&e, &names)),
            Ok(_) => {}
            Err(e) => {
                err = Some(e);
                return false;
            }
        }
        true
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    Ok(out)
}

/// The FEC column names, in order.
pub const FEC_COLUMNS: [&str; 18] = [
    "JournalCode",
    "JournalLib",
    "EcritureNum",
    "EcritureDate",
    "CompteNum",
    "CompteLib",
    "CompAuxNum",
    "CompAuxLib",
    "PieceRef",
    "PieceDate",
    "EcritureLib",
    "Debit",
    "Credit",
    "EcritureLet",
    "DateLet",
    "ValidDate",
    "Montantdevise",
    "Idevise",
];

fn fec_amount(a: Amount) -> String {
    a.to_string().replace('.', ",")
}

fn fec_date(d: Day) -> String {
    let (y, m, dd) = d.ymd();
    format!("{y:04}{m:02}{dd:02}")
}

fn fec_text(t: &str) -> String {
    t.chars()
        .map(|c| if c == '|' || c.is_control() { ' ' } else { c })
        .collect()
}

/// The lines as a FEC file.
pub fn to_fec(lines: &[Line]) -> String {
    let mut s = FEC_COLUMNS.join("|");
    s.push('\n');
    for l in lines {
        let journal_lib = if l.journal == "BQ" {
            "Banque"
        } else {
            "Opérations diverses"
        };
        let date = fec_date(l.date);
        let fields = [
            l.journal.to_owned(),
            journal_lib.to_owned(),
            l.number.to_string(),
            date.clone(),
            l.account.to_owned(),
            l.account_name.to_owned(),
            fec_text(&l.aux),
            fec_text(&l.aux_name),
            format!("J{}", l.number),
            date.clone(),
            fec_text(&l.label),
            fec_amount(l.debit),
            fec_amount(l.credit),
            String::new(),
            String::new(),
            date,
            String::new(),
            String::new(),
        ];
        s.push_str(&fields.join("|"));
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Posting;

    fn entry(seq: u64, kind: EntryKind, postings: Vec<(Account, i64)>) -> JournalEntry {
        JournalEntry {
            seq,
            prev: [0; 32],
            at: 1_800_000_000,
            kind,
            postings: postings
                .into_iter()
                .map(|(account, c)| Posting {
                    account,
                    amount: Amount::from_cents(c),
                })
                .collect(),
        }
    }

    #[test]
    fn every_entry_balances_and_names_no_member() {
        let m = caisse_protocol::MemberId::from_bytes([1; 16]);
        let o = OutletId::from_bytes([2; 16]);
        let p = Period::new(2027, 1).unwrap_or_else(|| Day::from_unix(1_800_000_000).period());
        let outlets = std::collections::HashMap::from([(o, "Épicerie".to_owned())]);
        let names = Names { outlets: &outlets };
        let entries = [
            entry(
                0,
                EntryKind::Contribution {
                    member: m,
                    period: p,
                },
                vec![(Account::Contributions, -1500), (Account::Treasury, 1500)],
            ),
            entry(
                1,
                EntryKind::Allocation {
                    member: m,
                    period: p,
                    amount: Amount::from_cents(10_000),
                    expired: Amount::ZERO,
                },
                vec![
                    (Account::Member(m), 10_000),
                    (Account::Allocations, -10_000),
                ],
            ),
            entry(
                2,
                EntryKind::Purchase {
                    id: caisse_protocol::PurchaseId::from_bytes([3; 16]),
                    card: caisse_protocol::CardId::from_bytes([4; 16]),
                    outlet: o,
                    lines: vec![],
                    coverage_pct: vec![],
                    period: p,
                },
                vec![(Account::Member(m), -1250), (Account::Outlet(o), 1250)],
            ),
            entry(
                3,
                EntryKind::Payout {
                    outlet: o,
                    period: p,
                },
                vec![
                    (Account::Outlet(o), -1250),
                    (Account::Allocations, 1250),
                    (Account::Treasury, -1250),
                    (Account::PaidOut, 1250),
                ],
            ),
        ];
        let lines: Vec<Line> = entries.iter().flat_map(|e| lines_of(e, &names)).collect();
        for e in &entries {
            let (d, c) = lines
                .iter()
                .filter(|l| l.number == e.seq)
                .fold((0, 0), |(d, c), l| {
                    (d + l.debit.cents(), c + l.credit.cents())
                });
            assert_eq!(d, c, "entry {} unbalanced", e.seq);
            assert!(d > 0, "entry {} wrote nothing", e.seq);
        }
        // The bank: +15.00 − 12.50; the outlet: owed 12.50 then paid.
        let net = |acct: &str| -> i64 {
            lines
                .iter()
                .filter(|l| l.account == acct)
                .map(|l| l.debit.cents() - l.credit.cents())
                .sum()
        };
        assert_eq!(net("512000"), 250);
        assert_eq!(net("401000"), 0);
        assert_eq!(net("657000"), 1250);
        let fec = to_fec(&lines);
        assert!(fec.starts_with("JournalCode|JournalLib|EcritureNum|EcritureDate|"));
        assert!(fec.contains("|12,50|0,00|"), "{fec}");
        assert!(!fec.contains("mem_") && !fec.contains("card_"));
        assert!(fec.lines().all(|l| l.split('|').count() == 18));
    }
}
