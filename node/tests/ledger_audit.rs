//! `ledger check` audited the way payment auditors test their controls:
//! a clean ledger has zero findings, and each targeted corruption made
//! directly in the sled store is reported, naming the item and the difference.

use std::sync::Arc;

use caisse_node::caisse::write_initial_state;
use caisse_node::caisse::{Caisse, EnrollInput, PurchaseInput};
use caisse_node::ledger::{
    self, Account, AuditCheckpoint, CheckReport, EntryKind, Head, JournalEntry, Posting,
    PurchaseRecord, SubsidySource, allocation_key, entry_hash,
};
use caisse_node::policy::Policy;
use caisse_node::store::{Op, SledStore, Store, decode_value, encode_value, keys};
use caisse_protocol::messages::PurchaseLine;
use caisse_protocol::{Amount, Category, Day, MemberId, OutletId, Period, PurchaseId, SecretKey};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<SledStore>,
    member: MemberId,
    outlet: OutletId,
    purchase: PurchaseId,
    purchase_seq: u64,
    period: Period,
    /// An audit's checkpoint just before the first purchase (the entries
    /// the corruptions target come after it).
    checkpoint: AuditCheckpoint,
}

fn eur(cents: i64) -> Amount {
    Amount::from_cents(cents)
}

/// A small but complete ledger: two members, an outlet, an allocation run,
/// purchases, a contribution, a subsidy and a payout.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(&dir.path().join("store")).unwrap());
    write_initial_state(
        &*store,
        &SecretKey::from_bytes([7; 32]),
        "Audit",
        "Testville",
        &Policy::default(),
        Day::from_days(20_000),
    )
    .unwrap();
    let mut n = 0u8;
    let mut c = Caisse::load(
        store.clone() as Arc<dyn Store>,
        SecretKey::from_bytes([7; 32]),
        caisse_protocol::FederationId::new("audit").unwrap(),
        Box::new(move || {
            n = n.wrapping_add(1);
            [n; 32]
        }),
    )
    .unwrap();
    let enroll = |c: &mut Caisse| {
        c.enroll(
            EnrollInput {
                name: "Member".into(),
                residence: "Testville".into(),
                birth_year: None,
                income: Some(eur(200_000)),
                household: None,
                new_household: false,
                joined: Some("2026-01-01".parse().unwrap()),
                pin: None,
            },
            Day::from_days(20_000),
        )
        .unwrap()
    };
    let a = enroll(&mut c);
    let _b = enroll(&mut c);
    let o = c
        .register_outlet(
            "Shop",
            vec![(Category::new("bread").unwrap(), 100)],
            Day::from_days(0),
        )
        .unwrap();
    let period: Period = "2026-03".parse().unwrap();
    c.issue_allocations(period, 1).unwrap();
    // The first purchase (10.00) is the one the corruptions target.
    let purchase = PurchaseId::from_bytes([1; 16]);
    let purchase_seq = c
        .purchase(
            PurchaseInput {
                id: purchase,
                card: a.card,
                outlet: o.outlet,
                lines: vec![PurchaseLine {
                    category: Category::new("bread").unwrap(),
                    producer: None,
                    amount: eur(10_00),
                }],
                pin: None,
            },
            2,
        )
        .unwrap()
        .seq;
    for i in 1..3u8 {
        c.purchase(
            PurchaseInput {
                id: PurchaseId::from_bytes([i + 1; 16]),
                card: a.card,
                outlet: o.outlet,
                lines: vec![PurchaseLine {
                    category: Category::new("bread").unwrap(),
                    producer: None,
                    amount: eur(5_00),
                }],
                pin: None,
            },
            3,
        )
        .unwrap();
    }
    c.record_contribution(a.member, period, None, 4).unwrap();
    c.record_subsidy(SubsidySource::State, eur(1_000_00), period, "s1".into(), 5)
        .unwrap();
    c.payout(o.outlet, period, 6).unwrap();
    c.commit().unwrap();
    let (_, _, checkpoint) = ledger::check_from(&*store, Some(purchase_seq), None).unwrap();
    Fixture {
        _dir: dir,
        store,
        member: a.member,
        outlet: o.outlet,
        purchase,
        purchase_seq,
        period,
        checkpoint,
    }
}

fn read_entry(store: &dyn Store, seq: u64) -> JournalEntry {
    let key = JournalEntry::key(seq);
    decode_value(&key, &store.get(&key).unwrap().unwrap()).unwrap()
}

fn write_entry(store: &dyn Store, entry: &JournalEntry) {
    store
        .apply(&[Op::Put(JournalEntry::key(entry.seq), encode_value(entry))])
        .unwrap();
}

fn head(store: &dyn Store) -> Head {
    decode_value(keys::HEAD, &store.get(keys::HEAD).unwrap().unwrap()).unwrap()
}

/// Append an entry with a valid chain and head, as a forger with write
/// access to the store would.
fn append_forged(store: &dyn Store, kind: EntryKind, postings: Vec<Posting>) -> u64 {
    let h = head(store);
    let entry = JournalEntry {
        seq: h.next_seq,
        prev: h.last_hash,
        at: 99,
        kind,
        postings,
    };
    let bytes = encode_value(&entry);
    let new_head = Head {
        next_seq: h.next_seq + 1,
        last_hash: entry_hash(&bytes),
    };
    store
        .apply(&[
            Op::Put(JournalEntry::key(entry.seq), bytes),
            Op::Put(keys::HEAD.to_vec(), encode_value(&new_head)),
        ])
        .unwrap();
    entry.seq
}

/// The full audit; the node's two-phase audit (bounded replay off the
/// writer, then `recheck`) must agree on whether anything is wrong, and
/// so must the audit from the fixture's checkpoint (its findings are
/// returned second).
fn audit(f: &Fixture) -> CheckReport {
    let (full, incremental) = audit_both(f);
    assert_eq!(
        full.ok(),
        incremental.ok(),
        "full audit {:#?}\naudit from the checkpoint {:#?}",
        full.findings,
        incremental.findings
    );
    full
}

/// The full audit (checked against the two-phase one) and the audit from
/// the fixture's checkpoint, which reads only the entries after it.
fn audit_both(f: &Fixture) -> (CheckReport, CheckReport) {
    let store = &*f.store;
    let full = ledger::check(store).unwrap();
    let upto = store
        .last_with_prefix(keys::JOURNAL)
        .unwrap()
        .map_or(0, |(k, _)| {
            u64::from_be_bytes(k[2..].try_into().unwrap()) + 1
        });
    let (mut bounded, suspects) = ledger::check_within(store, Some(upto)).unwrap();
    let (more, _) = ledger::recheck(store, &suspects).unwrap();
    bounded.findings.extend(more);
    assert_eq!(
        full.ok(),
        bounded.ok(),
        "full audit {:#?}\ntwo-phase audit {:#?}",
        full.findings,
        bounded.findings
    );
    let incremental = if f.checkpoint.matches(store).unwrap() {
        let (mut report, suspects, _) =
            ledger::check_from(store, Some(upto), Some(&f.checkpoint)).unwrap();
        let (more, _) = ledger::recheck(store, &suspects).unwrap();
        report.findings.extend(more);
        assert_eq!(report.from, f.checkpoint.upto);
        report
    } else {
        // What the node does with a checkpoint of another journal.
        ledger::check(store).unwrap()
    };
    (full, incremental)
}

fn assert_finding(report: &CheckReport, item: &str, problem: &str) {
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.item.contains(item) && f.problem.contains(problem)),
        "expected a finding on {item:?} containing {problem:?}, got {:#?}",
        report.findings
    );
}

#[test]
fn clean_ledger_has_no_findings() {
    let f = fixture();
    let r = audit(&f);
    assert!(r.ok(), "{:#?}", r.findings);
    assert!(r.entries >= 8);
}

#[test]
fn edited_amount_on_one_leg() {
    let f = fixture();
    let mut e = read_entry(&*f.store, f.purchase_seq);
    e.postings[1].amount = eur(12_00);
    write_entry(&*f.store, &e);
    let r = audit(&f);
    let item = format!("journal entry {}", f.purchase_seq);
    assert_finding(&r, &item, "do not balance: they sum to 2.00");
    assert_finding(
        &r,
        &format!("journal entry {}", f.purchase_seq + 1),
        "hash chain broken",
    );
}

#[test]
fn edited_amount_on_both_legs() {
    let f = fixture();
    let mut e = read_entry(&*f.store, f.purchase_seq);
    e.postings[0].amount = eur(-2_00);
    e.postings[1].amount = eur(2_00);
    write_entry(&*f.store, &e);
    let r = audit(&f);
    assert_finding(
        &r,
        &format!("journal entry {}", f.purchase_seq + 1),
        "hash chain broken",
    );
    assert_finding(
        &r,
        &format!("purchase {}", f.purchase),
        "idempotency record says 10.00 but the journal debited 2.00 (difference 8.00)",
    );
    assert_finding(
        &r,
        &format!("member:{}", f.member),
        "but the journal says 88.00 (difference -8.00)",
    );
}

#[test]
fn deleted_journal_entry() {
    let f = fixture();
    f.store
        .apply(&[Op::Delete(JournalEntry::key(f.purchase_seq))])
        .unwrap();
    let r = audit(&f);
    assert_finding(
        &r,
        &format!("journal entry {}", f.purchase_seq + 1),
        &format!("entries {}..{} are missing", f.purchase_seq, f.purchase_seq),
    );
    assert_finding(
        &r,
        &format!("purchase {}", f.purchase),
        "idempotency record with no journal entry",
    );
}

#[test]
fn duplicated_allocation() {
    let f = fixture();
    append_forged(
        &*f.store,
        EntryKind::Allocation {
            member: f.member,
            period: f.period,
            amount: eur(100_00),
            expired: Amount::ZERO,
        },
        vec![
            Posting {
                account: Account::Allocations,
                amount: eur(-100_00),
            },
            Posting {
                account: Account::Member(f.member),
                amount: eur(100_00),
            },
        ],
    );
    let r = audit(&f);
    assert_finding(
        &r,
        "journal entry",
        &format!("second allocation to {}", f.member),
    );
    assert_finding(&r, &format!("member:{}", f.member), "difference -100.00");
}

#[test]
fn edited_cached_balance() {
    let f = fixture();
    let key = Account::Member(f.member).balance_key();
    f.store
        .apply(&[Op::Put(key, encode_value(&eur(500_00)))])
        .unwrap();
    let r = audit(&f);
    assert_finding(
        &r,
        &format!("member:{}", f.member),
        "cached balance 500.00 but the journal says 80.00 (difference 420.00)",
    );
}

#[test]
fn posting_that_does_not_balance() {
    let f = fixture();
    let seq = append_forged(
        &*f.store,
        EntryKind::Subsidy {
            source: SubsidySource::Other,
            period: f.period,
            key: "forged".into(),
        },
        vec![Posting {
            account: Account::Treasury,
            amount: eur(50_00),
        }],
    );
    let r = audit(&f);
    assert_finding(
        &r,
        &format!("journal entry {seq}"),
        "do not balance: they sum to 50.00",
    );
}

#[test]
fn dropped_idempotency_record() {
    let f = fixture();
    f.store
        .apply(&[Op::Delete(keys::key(
            keys::PURCHASE,
            &[f.purchase.as_bytes()],
        ))])
        .unwrap();
    let r = audit(&f);
    assert_finding(
        &r,
        &format!("purchase {}", f.purchase),
        &format!("journal entry {} has no idempotency record", f.purchase_seq),
    );
}

#[test]
fn idempotency_record_pointing_elsewhere() {
    let f = fixture();
    let key = keys::key(keys::PURCHASE, &[f.purchase.as_bytes()]);
    let mut rec: PurchaseRecord = decode_value(&key, &f.store.get(&key).unwrap().unwrap()).unwrap();
    rec.seq = 0;
    f.store.apply(&[Op::Put(key, encode_value(&rec))]).unwrap();
    let r = audit(&f);
    assert_finding(
        &r,
        &format!("purchase {}", f.purchase),
        &format!(
            "points to entry 0 but the journal has it in entry {}",
            f.purchase_seq
        ),
    );
}

#[test]
fn dropped_allocation_index() {
    let f = fixture();
    f.store
        .apply(&[Op::Delete(allocation_key(f.period, &f.member))])
        .unwrap();
    let (r, from_checkpoint) = audit_both(&f);
    assert_finding(
        &r,
        &format!("allocation {} {}", f.period, f.member),
        "the index does not record it",
    );
    // The allocation is before the checkpoint: what the audit from it
    // does not read again (ARCHITECTURE.md, "Invariants").
    assert!(from_checkpoint.ok(), "{:#?}", from_checkpoint.findings);
}

#[test]
fn edited_journal_head() {
    let f = fixture();
    let mut h = head(&*f.store);
    let real = h.next_seq;
    h.next_seq += 5;
    f.store
        .apply(&[Op::Put(keys::HEAD.to_vec(), encode_value(&h))])
        .unwrap();
    let r = audit(&f);
    assert_finding(
        &r,
        "journal head",
        &format!(
            "says {} entries but the journal ends after {real}",
            real + 5
        ),
    );
}

#[test]
fn last_entry_edited() {
    let f = fixture();
    let h = head(&*f.store);
    let mut e = read_entry(&*f.store, h.next_seq - 1);
    e.at += 1;
    write_entry(&*f.store, &e);
    let r = audit(&f);
    assert_finding(&r, "journal head", "hash does not match the last entry");
}

#[test]
fn undecodable_entry() {
    let f = fixture();
    f.store
        .apply(&[Op::Put(
            JournalEntry::key(f.purchase_seq),
            vec![1, 0xff, 0xff],
        )])
        .unwrap();
    let r = audit(&f);
    assert_finding(
        &r,
        &format!("journal entry {}", f.purchase_seq),
        "cannot be decoded",
    );
}

#[test]
fn member_balance_below_zero() {
    let f = fixture();
    append_forged(
        &*f.store,
        EntryKind::Payout {
            outlet: f.outlet,
            period: f.period,
        },
        vec![
            Posting {
                account: Account::Member(f.member),
                amount: eur(-90_00),
            },
            Posting {
                account: Account::Outlet(f.outlet),
                amount: eur(90_00),
            },
        ],
    );
    let r = audit(&f);
    assert_finding(
        &r,
        &format!("member:{}", f.member),
        "balance goes below zero (-10.00)",
    );
}

#[test]
fn posting_to_unknown_account() {
    let f = fixture();
    let ghost = MemberId::from_bytes([0xee; 16]);
    append_forged(
        &*f.store,
        EntryKind::Contribution {
            member: ghost,
            period: f.period,
        },
        vec![
            Posting {
                account: Account::Member(ghost),
                amount: eur(1_00),
            },
            Posting {
                account: Account::Allocations,
                amount: eur(-1_00),
            },
        ],
    );
    let r = audit(&f);
    assert_finding(
        &r,
        "journal entry",
        &format!("posts to member:{ghost} which is not a known account"),
    );
}

#[test]
fn replayed_purchase_entry() {
    let f = fixture();
    let e = read_entry(&*f.store, f.purchase_seq);
    append_forged(&*f.store, e.kind.clone(), e.postings.clone());
    let r = audit(&f);
    assert_finding(
        &r,
        "journal entry",
        &format!("purchase {} recorded twice (debited twice)", f.purchase),
    );
}

#[test]
fn dropped_or_forged_statement_line() {
    let f = fixture();
    let line = |seq: u64| keys::statement(f.member.as_bytes(), seq);
    assert!(f.store.get(&line(f.purchase_seq)).unwrap().is_some());
    // The purchase vanishes from the member's page…
    f.store.apply(&[Op::Delete(line(f.purchase_seq))]).unwrap();
    let r = audit(&f);
    assert_finding(&r, "ws/", "missing from the member's statement");
    // …and an entry that is not theirs appears on it.
    let other = (0..head(&*f.store).next_seq)
        .find(|seq| {
            !read_entry(&*f.store, *seq)
                .postings
                .iter()
                .any(|p| p.account == Account::Member(f.member))
        })
        .expect("an entry not touching the member");
    f.store
        .apply(&[
            Op::Put(line(f.purchase_seq), Vec::new()),
            Op::Put(line(other), Vec::new()),
        ])
        .unwrap();
    let (r, from_checkpoint) = audit_both(&f);
    assert_finding(&r, "ws/", "does not touch their account");
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    if other >= f.checkpoint.upto {
        assert_finding(&from_checkpoint, "ws/", "does not touch their account");
    } else {
        // A line forged among entries the checkpoint covers: found by the
        // full audit only.
        assert!(from_checkpoint.ok(), "{:#?}", from_checkpoint.findings);
    }
}

/// The audit from a checkpoint reads only the entries after it and
/// reaches the state the full audit does; with the corruptions after the
/// checkpoint, it names them as the full audit does.
#[test]
fn an_audit_from_a_checkpoint_reads_only_what_follows() {
    let f = fixture();
    let store = &*f.store;
    let h = head(store);
    let (full, _, whole) = ledger::check_from(store, None, None).unwrap();
    let (from, _, reached) = ledger::check_from(store, None, Some(&f.checkpoint)).unwrap();
    assert!(full.ok() && from.ok(), "{:#?}", from.findings);
    assert_eq!(full.from, 0);
    assert_eq!(full.entries, h.next_seq);
    assert_eq!(from.from, f.purchase_seq);
    assert_eq!(from.entries, h.next_seq - f.purchase_seq);
    assert_eq!(reached, whole);

    // A second allocation, a replayed purchase and a dropped statement
    // line, all after the checkpoint: named as the full audit names them.
    let e = read_entry(store, f.purchase_seq);
    append_forged(store, e.kind.clone(), e.postings.clone());
    let allocation = (0..h.next_seq)
        .map(|seq| read_entry(store, seq))
        .find(|e| matches!(e.kind, EntryKind::Allocation { .. }))
        .unwrap();
    append_forged(store, allocation.kind.clone(), allocation.postings.clone());
    store
        .apply(&[Op::Delete(keys::statement(
            f.member.as_bytes(),
            f.purchase_seq,
        ))])
        .unwrap();
    let (full, from) = audit_both(&f);
    for r in [&full, &from] {
        assert_finding(r, "journal entry", "recorded twice (debited twice)");
        assert_finding(r, "journal entry", "second allocation to");
        assert_finding(r, "ws/", "missing from the member's statement");
    }

    // An edit of the checkpoint's last entry: the checkpoint is no longer
    // of this journal.
    let mut last = read_entry(store, f.purchase_seq - 1);
    last.at += 1;
    write_entry(store, &last);
    assert!(!f.checkpoint.matches(store).unwrap());
}

/// The node audits while purchases go on: entries appended after the
/// bound are not findings, and balances they moved are settled by
/// `recheck`; a balance edited meanwhile is still found.
#[test]
fn audit_while_the_ledger_moves() {
    let f = fixture();
    let upto = head(&*f.store).next_seq;
    // Entries appended after the bound: a balanced transfer of allocation.
    let seq = append_forged(
        &*f.store,
        EntryKind::Allocation {
            member: f.member,
            period: f.period.next().unwrap(),
            amount: eur(1_00),
            expired: Amount::ZERO,
        },
        vec![
            Posting {
                account: Account::Allocations,
                amount: eur(-1_00),
            },
            Posting {
                account: Account::Member(f.member),
                amount: eur(1_00),
            },
        ],
    );
    let key = Account::Member(f.member).balance_key();
    let before: Amount = decode_value(&key, &f.store.get(&key).unwrap().unwrap()).unwrap();
    let alloc_key = Account::Allocations.balance_key();
    let alloc: Amount =
        decode_value(&alloc_key, &f.store.get(&alloc_key).unwrap().unwrap()).unwrap();
    f.store
        .apply(&[
            Op::Put(
                key.clone(),
                encode_value(&before.checked_add(eur(1_00)).unwrap()),
            ),
            Op::Put(
                alloc_key,
                encode_value(&alloc.checked_sub(eur(1_00)).unwrap()),
            ),
            Op::Put(
                allocation_key(f.period.next().unwrap(), &f.member),
                encode_value(&seq),
            ),
            Op::Put(keys::statement(f.member.as_bytes(), seq), Vec::new()),
        ])
        .unwrap();
    let (report, suspects) = ledger::check_within(&*f.store, Some(upto)).unwrap();
    assert!(report.ok(), "{:#?}", report.findings);
    assert!(!suspects.is_empty(), "the moved balances are suspects");
    let (findings, tail) = ledger::recheck(&*f.store, &suspects).unwrap();
    assert!(findings.is_empty(), "{findings:#?}");
    assert_eq!(tail, 1);

    // A balance edited after the bound is not explained by the tail.
    f.store
        .apply(&[Op::Put(
            key.clone(),
            encode_value(&before.checked_add(eur(7_00)).unwrap()),
        )])
        .unwrap();
    let (report, suspects) = ledger::check_within(&*f.store, Some(upto)).unwrap();
    assert!(report.ok());
    let (findings, _) = ledger::recheck(&*f.store, &suspects).unwrap();
    assert!(
        findings.iter().any(|f| f.problem.contains("difference")),
        "{findings:#?}"
    );
}
