//! The offline floor: while a card's home caisse is unreachable, the host
//! accepts small purchases at its own risk, forwards them when the home is
//! back, and books the ones the home refuses as losses in its report.

mod common;

use common::{TestNode, json, ok, pass, s, wait_until};
use serde_json::Value;

const FED: &str = "offlinefed";

const HOST_POLICY: &str = r#"
target_contribution_share_pct = 40
pin_attempts = 3
minimum_age = 18
offline_floor = "10.00"

[allocation]
kind = "per-person"
amount = "100.00"

[rollover]
kind = "carry-over"

[contribution]
kind = "linear"
min = "1.00"
max = "150.00"
income_floor = "800.00"
income_ceiling = "4000.00"
"#;

#[test]
fn offline_floor_accepts_then_forwards_and_books_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    TestNode::init(
        &a,
        "Home",
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--federation", FED],
    );
    let mut na = TestNode::start(&a);
    let a_info: Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("node.json")).unwrap()).unwrap();
    let policy = tmp.path().join("host-policy.toml");
    std::fs::write(&policy, HOST_POLICY).unwrap();
    TestNode::init(
        &b,
        "Host",
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--federation",
            FED,
            "--bootstrap",
            &s(&a_info["listen"][0]),
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    let _nb = TestNode::start(&b);
    let b_id = s(&serde_json::from_str::<Value>(
        &std::fs::read_to_string(b.join("node.json")).unwrap(),
    )
    .unwrap()["caisse_id"]);

    let mut members = Vec::new();
    for i in 0..3 {
        let m = ok(
            &a,
            &[
                "member",
                "enroll",
                "--name",
                &format!("M{i}"),
                "--residence",
                "Home",
                "--joined",
                "2026-01-01",
            ],
        );
        members.push((s(&m["member"]), s(&m["card"])));
    }
    for (m, _) in members.iter().take(2) {
        ok(
            &a,
            &[
                "parliament",
                "seat",
                "add",
                "--kind",
                "citizen",
                "--member",
                m,
            ],
        );
    }
    let today = s(&ok(&a, &["status"])["today"]);
    ok(&a, &["allocation", "issue", "--period", &today[..7]]);
    wait_until("A to know B", 20, || {
        ok(&a, &["peers"]).as_array().unwrap().len() == 1
    });
    pass(&a, &["--recognise", &b_id]);
    pass(&a, &["--recognition", "listed"]);
    let outlet = s(&ok(
        &b,
        &[
            "outlet",
            "register",
            "--name",
            "Hôte",
            "--categories",
            "bread",
        ],
    )["outlet"]);
    wait_until("A to see B's outlet", 20, || {
        ok(&a, &["accreditation", "list", "--federation"])
            .as_array()
            .unwrap()
            .iter()
            .any(|x| s(&x["subject_name"]) == "Hôte")
    });
    let buy = |card: &str, amount: &str, id: &str| {
        json(
            &b,
            &[
                "purchase",
                "--card",
                card,
                "--outlet",
                &outlet,
                "--amount",
                amount,
                "--category",
                "bread",
                "--id",
                id,
            ],
        )
    };
    let (code, r) = buy(
        &members[1].1,
        "2.00",
        "10000000-0000-4000-8000-000000000001",
    );
    assert_eq!(code, 0, "online first: {r}");
    assert_eq!(r["offline"], false);

    // The home caisse goes down; one member has been suspended there meanwhile.
    ok(&a, &["member", "suspend", &members[2].0]);
    assert_eq!(na.stop(), Some(0));
    let (code, r) = buy(
        &members[1].1,
        "6.00",
        "10000000-0000-4000-8000-000000000002",
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["offline"], true);
    let (code, v) = buy(
        &members[1].1,
        "5.00",
        "10000000-0000-4000-8000-000000000003",
    );
    assert_eq!(
        (code, s(&v["error"])),
        (2, "home_unreachable".into()),
        "{v}"
    );
    assert!(s(&v["message"]).contains("offline floor of 10.00"), "{v}");
    let (code, r) = buy(
        &members[2].1,
        "3.00",
        "10000000-0000-4000-8000-000000000004",
    );
    assert_eq!((code, r["offline"].clone()), (0, true.into()), "{r}");
    // A retry while still offline is the same sale.
    let (_, again) = buy(
        &members[2].1,
        "3.00",
        "10000000-0000-4000-8000-000000000004",
    );
    assert_eq!(again["replayed"], true);

    // Home is back: the host forwards; one sale is confirmed, the other refused and booked as a loss.
    na = TestNode::start(&a);
    wait_until("the offline sale to reach the home caisse", 30, || {
        s(&ok(&a, &["member", "show", &members[1].0])["balance"]) == "92.00"
    });
    let period = &today[..7];
    wait_until("the refused sale to be booked as a loss", 30, || {
        ok(&b, &["report", "--period", period, "--format", "json"])["offline_losses"]["count"] == 1
    });
    let report = ok(&b, &["report", "--period", period, "--format", "json"]);
    assert_eq!(s(&report["offline_losses"]["total"]), "3.00");
    assert_eq!(
        s(&ok(&a, &["member", "show", &members[2].0])["balance"]),
        "100.00",
        "a refused sale debits nothing"
    );
    for dir in [&a, &b] {
        let out = common::caisse(dir, &["ledger", "check"]);
        assert!(
            out.status.success(),
            "ledger check at {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let _ = na;
}
