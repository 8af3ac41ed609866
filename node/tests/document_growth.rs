//! One caisse's federation document through 60 months of settlement at
//! 5,000 cross-caisse purchases a month (issue 15, bounded replication):
//! the document stays under its bound whatever its age, a replica that
//! followed along follows every epoch, a brand-new node syncs it, and no
//! sync message passes 1 MiB. The owner's side is the code the federation
//! task runs: `prune_publications`, then `publish_own`.

use automerge::AutoCommit;
use automerge::sync::{Message, SyncDoc};
use caisse_core::federation_view::{FederationView, PeerCaisse, Statements};
use caisse_core::settlement::prune_publications;
use caisse_node::documents::{COMPACT_AT, publish_own, read_document, sorted_heads};
use caisse_protocol::messages::{
    Acknowledgement, SettlementStatement, TransferSettled, receipts_hash,
};
use caisse_protocol::{
    Amount, ContentId, Day, Envelope, FederationId, Period, PurchaseId, SecretKey,
};

/// No sync message over this.
const MESSAGE_LIMIT: usize = 1024 * 1024;
const PURCHASES_A_MONTH: u64 = 5_000;
/// Times the owner publishes a month (each a new version of its claims).
const PUBLISHES_A_MONTH: u64 = 10;
const MONTHS: u32 = 60;
const DEBTORS: u8 = 10;

/// Bring `replica` to `owner`'s document with automerge's sync protocol,
/// the owner answering read-only as nodes do. Returns the largest message.
fn sync(owner: &mut AutoCommit, replica: &mut AutoCommit) -> usize {
    let mut theirs = automerge::sync::State::new_read_only();
    let mut ours = automerge::sync::State::new();
    let mut largest = 0;
    for _ in 0..100 {
        let mut moved = false;
        if let Some(m) = replica.sync().generate_sync_message(&mut ours) {
            let bytes = m.encode();
            largest = largest.max(bytes.len());
            owner
                .sync()
                .receive_sync_message(&mut theirs, Message::decode(&bytes).unwrap())
                .unwrap();
            moved = true;
        }
        if let Some(m) = owner.sync().generate_sync_message(&mut theirs) {
            let bytes = m.encode();
            largest = largest.max(bytes.len());
            replica
                .sync()
                .receive_sync_message(&mut ours, Message::decode(&bytes).unwrap())
                .unwrap();
            moved = true;
        }
        if !moved {
            break;
        }
    }
    largest
}

fn unix(day: Day) -> u64 {
    u64::from(day.days()) * 86_400
}

#[test]
fn a_document_stays_bounded_through_sixty_months_of_settlement() {
    let fed = FederationId::new("growth").unwrap();
    let owner_key = SecretKey::from_bytes([1; 32]);
    let me = owner_key.caisse_id();
    let debtors: Vec<SecretKey> = (0..DEBTORS)
        .map(|i| SecretKey::from_bytes([10 + i; 32]))
        .collect();
    let mut st = Statements::default();
    let mut view = FederationView::default();
    view.caisses.insert(me, PeerCaisse::default());
    for d in &debtors {
        view.caisses.insert(d.caisse_id(), PeerCaisse::default());
    }
    let mut doc = caisse_node::documents::new_document(&me);
    let mut epoch = 0u32;
    let mut replica = AutoCommit::new();
    let mut replica_epoch = 0u32;
    let (mut largest_saved, mut largest_message, mut epochs) = (0usize, 0usize, 0u32);
    let mut next_purchase = 0u64;
    let first = Period::new(2027, 1).unwrap();
    for m in 0..MONTHS {
        let period = Period::from_index(first.index() + m).unwrap();
        let start = unix(period.first_day());
        // The month opens with last month's statements, our answers to the
        // statements others sent us, and a few transfers.
        if let Some(prev) = period.prev().filter(|_| m > 0) {
            for (i, d) in debtors.iter().enumerate() {
                let ids: Vec<PurchaseId> = Vec::new();
                let s = SettlementStatement {
                    creditor: me,
                    debtor: d.caisse_id(),
                    period: prev,
                    amount: Amount::from_cents(1_000_000 + i as i64),
                    count: PURCHASES_A_MONTH / u64::from(DEBTORS),
                    receipts: receipts_hash(&ids),
                    at: start,
                };
                let env = Envelope::seal(&owner_key, &fed, &s).unwrap();
                let id = env.content_id(&fed, 1);
                st.settlement
                    .insert(format!("statement/{prev}/{}", d.caisse_id()), env);
                view.caisses.get_mut(&me).unwrap().statements.push((id, s));
                let ack = Acknowledgement {
                    statement: ContentId::of(format!("{prev}/{i}").as_bytes()),
                    by: me,
                    at: start,
                };
                let env = Envelope::seal(&owner_key, &fed, &ack).unwrap();
                st.settlement
                    .insert(format!("answer/{}", env.content_id(&fed, 1)), env);
            }
            for i in 0..3u8 {
                let t = TransferSettled {
                    period: prev,
                    from: me,
                    to: debtors[usize::from(i)].caisse_id(),
                    amount: Amount::from_cents(500_000),
                    reference: format!("SETTLE-{prev}-{i}"),
                    at: start,
                };
                let env = Envelope::seal(&owner_key, &fed, &t).unwrap();
                st.settlement
                    .insert(format!("transfer/{prev}/{}", env.content_id(&fed, 1)), env);
            }
        }
        for step in 0..PUBLISHES_A_MONTH {
            let now = start + (step * 3 + 1) * 86_400;
            // This month's receipts, a batch at a time.
            let list = st.claims.entry(period.to_string()).or_default();
            for _ in 0..PURCHASES_A_MONTH / PUBLISHES_A_MONTH {
                next_purchase += 1;
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&next_purchase.to_le_bytes());
                list.push(PurchaseId::from_bytes(b));
            }
            // Mid-month the debtors acknowledge last month's statements.
            if step == PUBLISHES_A_MONTH / 2 {
                let ours: Vec<(ContentId, caisse_protocol::CaisseId)> = view.caisses[&me]
                    .statements
                    .iter()
                    .filter(|(_, s)| period.prev() == Some(s.period))
                    .map(|(id, s)| (*id, s.debtor))
                    .collect();
                for (id, debtor) in ours {
                    view.caisses.get_mut(&debtor).unwrap().acks.push(id);
                }
            }
            let mut published = st.clone();
            prune_publications(&mut published, &view, me, &fed, now);
            if let Some((bytes, compacted)) = publish_own(&mut doc, &me, &published, false).unwrap()
            {
                largest_saved = largest_saved.max(bytes.len());
                if compacted {
                    epoch += 1;
                    epochs += 1;
                }
            }
        }
        // A replica following along: from scratch when the epoch changed.
        if replica_epoch != epoch {
            replica = AutoCommit::new();
            replica_epoch = epoch;
        }
        largest_message = largest_message.max(sync(&mut doc, &mut replica));
        assert_eq!(
            sorted_heads(&mut replica),
            sorted_heads(&mut doc),
            "month {m}: the replica is not at the owner's heads"
        );
        // The view holds what the owner publishes (its own statements age out too).
        let cutoff = start.saturating_sub(caisse_core::settlement::DOCUMENT_RETENTION_SECS);
        view.caisses
            .get_mut(&me)
            .unwrap()
            .statements
            .retain(|(_, s)| s.at >= cutoff);
    }
    // A brand-new node.
    let mut fresh = AutoCommit::new();
    largest_message = largest_message.max(sync(&mut doc, &mut fresh));
    assert_eq!(sorted_heads(&mut fresh), sorted_heads(&mut doc));
    let seen = read_document(&fresh, &me, &fed);
    assert_eq!(seen.invalid_statements, 0);
    assert!(
        seen.claims.len() <= 2,
        "claims of settled periods still published: {:?}",
        seen.claims.keys().collect::<Vec<_>>()
    );
    let periods: std::collections::BTreeSet<Period> =
        seen.statements.iter().map(|(_, s)| s.period).collect();
    assert!(
        periods.len() <= 14,
        "statements of {} periods kept",
        periods.len()
    );
    eprintln!(
        "60 months: largest saved document {} KiB, final {} KiB, {} epochs, largest sync message {} KiB",
        largest_saved / 1024,
        doc.save().len() / 1024,
        epochs,
        largest_message / 1024
    );
    assert!(
        largest_saved <= 2 * COMPACT_AT,
        "the document reached {largest_saved} bytes"
    );
    assert!(
        largest_message <= MESSAGE_LIMIT,
        "a sync message of {largest_message} bytes"
    );
}
