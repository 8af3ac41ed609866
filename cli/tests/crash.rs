//! Crash safety: a node under a stream of concurrent purchases is killed
//! with SIGKILL at a random moment and restarted. Every purchase it had
//! acknowledged must be in the journal exactly once, retries of them must
//! not debit again, and `ledger check` must pass.
//!
//! Rounds: 5 by default; `CAISSE_CRASH_ROUNDS=50` for a soak run (see README).
//! Replay a failure with the printed `CAISSE_TEST_SEED`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caisse_node::client::Client;
use caisse_node::ledger::{EntryKind, JournalEntry};
use caisse_protocol::{Amount, PurchaseId};
use common::{Rng, TestNode, caisse, ok, seed};
use serde_json::{Value, json};

const MEMBERS: usize = 40;
const WORKERS: usize = 8;

async fn journal_purchases(client: &Client) -> HashMap<PurchaseId, usize> {
    let mut seen = HashMap::new();
    let mut from = 0u64;
    loop {
        let page: Vec<JournalEntry> = client
            .get(&format!("/api/v1/ledger/journal?from={from}&limit=1000"))
            .await
            .expect("journal");
        if page.is_empty() {
            return seen;
        }
        for e in &page {
            if let EntryKind::Purchase { id, .. } = e.kind {
                *seen.entry(id).or_insert(0) += 1;
            }
            from = e.seq + 1;
        }
    }
}

#[test]
fn acknowledged_purchases_survive_sigkill() {
    let rounds: usize = std::env::var("CAISSE_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed = seed();
    eprintln!("crash test: {rounds} rounds, CAISSE_TEST_SEED={seed}");
    let mut rng = Rng(seed);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Crash test", &[]);
    let mut node = TestNode::start(&dir);
    let mut cards = Vec::new();
    for i in 0..MEMBERS {
        let m = ok(
            &dir,
            &[
                "member",
                "enroll",
                "--name",
                &format!("M{i}"),
                "--residence",
                "Here",
                "--joined",
                "2020-01-01",
            ],
        );
        cards.push(m["card"].as_str().unwrap().to_owned());
    }
    let outlet = ok(
        &dir,
        &[
            "outlet",
            "register",
            "--name",
            "Shop",
            "--categories",
            "bread",
        ],
    );
    let outlet = outlet["outlet"].as_str().unwrap().to_owned();
    // Enough allocation for every round to keep purchasing (a soak run has many rounds).
    let mut period: caisse_protocol::Period = "2020-01".parse().unwrap();
    for _ in 0..(rounds * 2).max(6) {
        ok(
            &dir,
            &["allocation", "issue", "--period", &period.to_string()],
        );
        period = period.next().unwrap();
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Every acknowledged purchase: id -> (card index, amount).
    let acked: Arc<Mutex<HashMap<PurchaseId, (usize, Amount)>>> = Arc::default();
    for round in 0..rounds {
        let client = Client::new(node.api.parse().unwrap(), node.admin_token());
        let worker_seed = rng.next();
        let kill_after = Duration::from_millis(150 + rng.below(600));
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for w in 0..WORKERS {
                let client = client.clone();
                let acked = acked.clone();
                let cards = cards.clone();
                let outlet = outlet.clone();
                let mut r = Rng(worker_seed ^ (w as u64 + 1));
                tasks.push(tokio::spawn(async move {
                    loop {
                        let id = PurchaseId::from_bytes(r.bytes16());
                        let card = r.below(cards.len() as u64) as usize;
                        let cents = 1 + r.below(150) as i64;
                        let body = json!({
                            "id": id, "card": cards[card], "outlet": outlet,
                            "lines": [{ "category": "bread", "producer": null, "amount": Amount::from_cents(cents) }],
                        });
                        match client.post::<_, Value>("/api/v1/purchases", &body).await {
                            Ok(_) => {
                                acked.lock().unwrap().insert(id, (card, Amount::from_cents(cents)));
                            }
                            Err(e) if e.code() == Some("insufficient_balance") => {}
                            Err(_) => return, // the node is gone
                        }
                    }
                }));
            }
            tokio::time::sleep(kill_after).await;
            node.kill();
            for t in tasks {
                let _ = t.await;
            }
        });
        node = TestNode::start(&dir);
        let client = Client::new(node.api.parse().unwrap(), node.admin_token());
        let acked_now = acked.lock().unwrap().clone();
        runtime.block_on(async {
            let seen = journal_purchases(&client).await;
            for id in acked_now.keys() {
                assert_eq!(
                    seen.get(id).copied().unwrap_or(0),
                    1,
                    "round {round}: acknowledged purchase {id} must be in the journal exactly once (seed {seed})"
                );
            }
            assert!(seen.values().all(|n| *n == 1), "a purchase appears twice");
            // Retrying acknowledged purchases after the crash never debits again.
            let before: Value = client.get("/api/v1/ledger/balances").await.unwrap();
            for (id, (card, amount)) in acked_now.iter().take(20) {
                let body = json!({
                    "id": id, "card": cards[*card], "outlet": outlet,
                    "lines": [{ "category": "bread", "producer": null, "amount": amount }],
                });
                let r: Value = client.post("/api/v1/purchases", &body).await.unwrap();
                assert_eq!(r["replayed"], true);
            }
            let after: Value = client.get("/api/v1/ledger/balances").await.unwrap();
            assert_eq!(before, after, "retries changed balances");
        });
        let check = caisse(&dir, &["ledger", "check"]);
        assert!(
            check.status.success(),
            "round {round}: ledger check failed after SIGKILL (seed {seed}):\n{}",
            String::from_utf8_lossy(&check.stdout)
        );
        eprintln!(
            "round {round}: killed after {kill_after:?}, {} purchases acknowledged so far, all present once",
            acked_now.len()
        );
    }
    assert!(
        !acked.lock().unwrap().is_empty(),
        "no purchase was acknowledged: the test exercised nothing"
    );
}
