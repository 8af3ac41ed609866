//! Cross-caisse purchases and settlement with three real node processes:
//! purchases in every direction, retries that never debit twice (also after
//! a SIGKILL and while the home caisse is down), one card at two hosts at
//! once never overdrawing, a period settled with every statement
//! countersigned and identical net positions everywhere, and a creditor
//! claiming a receipt the debtor never signed producing a dispute naming it.

mod common;

use std::path::{Path, PathBuf};

use caisse_node::settlement::ReceiptRecord;
use caisse_node::store::{Op, encode_value};
use caisse_protocol::messages::PurchaseReceipt;
use caisse_protocol::{
    Amount, CaisseId, CardId, ContentId, Envelope, FederationId, OutletId, PurchaseId, SecretKey,
};
use common::{TestNode, json, node_json, ok, pass, s, wait_until};
use serde_json::Value;

const FED: &str = "crossfed";

struct Caisse {
    dir: PathBuf,
    id: String,
    outlet: String,
    members: Vec<(String, String)>,
}

fn balance(dir: &Path, member: &str) -> String {
    s(&ok(dir, &["member", "show", member])["balance"])
}

fn buy(host: &Caisse, card: &str, amount: &str, id: &str) -> (i32, Value) {
    json(
        &host.dir,
        &[
            "purchase",
            "--card",
            card,
            "--outlet",
            &host.outlet,
            "--amount",
            amount,
            "--category",
            "bread",
            "--id",
            id,
        ],
    )
}

#[test]
fn purchases_across_caisses_and_settlement() {
    let tmp = tempfile::tempdir().unwrap();
    let names = ["A", "B", "C"];
    let mut nodes = Vec::new();
    let mut caisses: Vec<Caisse> = Vec::new();
    let mut first_addr = None;
    for n in names {
        let dir = tmp.path().join(n);
        let mut extra = vec![
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--federation",
            FED,
            "--manual-clock",
        ];
        let addr: String;
        if let Some(a) = &first_addr {
            addr = String::clone(a);
            extra.extend_from_slice(&["--bootstrap", &addr]);
        }
        TestNode::init(&dir, &format!("Caisse {n}"), &extra);
        nodes.push(TestNode::start(&dir));
        if first_addr.is_none() {
            first_addr = Some(s(&node_json(&dir)["listen"][0]));
        }
        ok(&dir, &["clock", "set", "--today", "2027-03-01"]);
        let mut members = Vec::new();
        for i in 0..4 {
            let m = ok(
                &dir,
                &[
                    "member",
                    "enroll",
                    "--name",
                    &format!("{n}{i}"),
                    "--residence",
                    n,
                    "--joined",
                    "2027-01-01",
                ],
            );
            members.push((s(&m["member"]), s(&m["card"])));
        }
        for (m, _) in members.iter().take(2) {
            ok(
                &dir,
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
        let outlet = s(&ok(
            &dir,
            &[
                "outlet",
                "register",
                "--name",
                &format!("Épicerie {n}"),
                "--categories",
                "bread",
            ],
        )["outlet"]);
        ok(&dir, &["allocation", "issue", "--period", "2027-03"]);
        let id = s(&node_json(&dir)["caisse_id"]);
        caisses.push(Caisse {
            dir,
            id,
            outlet,
            members,
        });
    }
    // Every caisse knows and recognises the two others.
    for c in &caisses {
        wait_until("the federation to form", 20, || {
            ok(&c.dir, &["peers"]).as_array().unwrap().len() == 2
        });
        for other in caisses.iter().filter(|o| o.id != c.id) {
            pass(&c.dir, &["--recognise", &other.id]);
        }
        pass(&c.dir, &["--recognition", "listed"]);
    }
    for c in &caisses {
        for other in caisses.iter().filter(|o| o.id != c.id) {
            wait_until("outlet accreditations everywhere", 10, || {
                ok(&c.dir, &["accreditation", "list", "--federation"])
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| {
                        s(&a["subject_name"])
                            == format!(
                                "Épicerie {}",
                                names[caisses.iter().position(|x| x.id == other.id).unwrap()]
                            )
                    })
            });
        }
    }
    let (a, b, c) = (&caisses[0], &caisses[1], &caisses[2]);

    // Purchases in every direction.
    let mut n = 0;
    let mut next_id = || {
        n += 1;
        format!("00000000-0000-4000-8000-{n:012}")
    };
    for (home, host, amount) in [
        (a, b, "10.00"),
        (b, c, "7.50"),
        (c, a, "5.25"),
        (a, c, "4.00"),
        (b, a, "3.00"),
        (c, b, "2.00"),
    ] {
        let (code, r) = buy(host, &home.members[3].1, amount, &next_id());
        assert_eq!(code, 0, "{r}");
        assert_eq!(s(&r["allocation_part"]), amount);
    }
    assert_eq!(balance(&a.dir, &a.members[3].0), "86.00"); // 100 - 10 - 4
    // The host's outlet is owed; the home caisse owes the host.
    let owed: Vec<Value> = ok(&b.dir, &["outlet", "list"]).as_array().unwrap().clone();
    assert_eq!(s(&owed[0]["owed"]), "12.00"); // 10.00 from A's member, 2.00 from C's

    // A retry returns the same receipt and debits nothing.
    let id = next_id();
    let (_, r1) = buy(b, &a.members[2].1, "20.00", &id);
    let (_, r2) = buy(b, &a.members[2].1, "20.00", &id);
    assert_eq!(r2["replayed"], true, "{r2}");
    assert_eq!(r1["seq"], r2["seq"]);
    assert_eq!(balance(&a.dir, &a.members[2].0), "80.00");
    // … also after the host is killed with SIGKILL and restarted.
    nodes[1].kill();
    nodes[1] = TestNode::start(&b.dir);
    wait_until("B to reconnect", 20, || {
        ok(&b.dir, &["peers"])
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["connected"] == true)
    });
    let (code, r3) = buy(b, &a.members[2].1, "20.00", &id);
    assert_eq!(code, 0, "{r3}");
    assert_eq!(r3["replayed"], true);
    assert_eq!(balance(&a.dir, &a.members[2].0), "80.00");
    // … and while the home caisse is down: refused clearly, then accepted once when it is back.
    let id = next_id();
    assert_eq!(nodes[0].stop(), Some(0));
    let (code, v) = buy(b, &a.members[1].1, "1.00", &id);
    assert_eq!(
        (code, s(&v["error"])),
        (2, "home_unreachable".into()),
        "{v}"
    );
    nodes[0] = TestNode::start(&a.dir);
    wait_until("A to reconnect", 20, || {
        let (code, _) = buy(b, &a.members[1].1, "1.00", &id);
        code == 0
    });
    let (_, again) = buy(b, &a.members[1].1, "1.00", &id);
    assert_eq!(again["replayed"], true);
    assert_eq!(balance(&a.dir, &a.members[1].0), "99.00");

    // One card at two hosts at the same moment never overdraws.
    let card = a.members[0].1.clone();
    let (bd, bo, cd, co) = (
        b.dir.clone(),
        b.outlet.clone(),
        c.dir.clone(),
        c.outlet.clone(),
    );
    let card2 = card.clone();
    let t1 = std::thread::spawn(move || {
        json(
            &bd,
            &[
                "purchase",
                "--card",
                &card,
                "--outlet",
                &bo,
                "--amount",
                "60",
                "--category",
                "bread",
            ],
        )
    });
    let t2 = std::thread::spawn(move || {
        json(
            &cd,
            &[
                "purchase",
                "--card",
                &card2,
                "--outlet",
                &co,
                "--amount",
                "60",
                "--category",
                "bread",
            ],
        )
    });
    let (r1, r2) = (t1.join().unwrap(), t2.join().unwrap());
    let oks = [r1.0, r2.0].iter().filter(|c| **c == 0).count();
    assert_eq!(
        oks, 1,
        "exactly one of two concurrent 60.00 purchases on a 100.00 balance: {r1:?} {r2:?}"
    );
    let refused = if r1.0 == 0 { &r2.1 } else { &r1.1 };
    assert_eq!(s(&refused["error"]), "insufficient_balance", "{refused}");
    assert_eq!(balance(&a.dir, &a.members[0].0), "40.00");

    // Ledgers, with receivables and payables against receipts, audit clean.
    for x in &caisses {
        assert!(
            common::caisse(&x.dir, &["ledger", "check"])
                .status
                .success(),
            "ledger check at {}",
            x.dir.display()
        );
    }

    // Each caisse's bank account, published so that its debtors can pay it.
    let ibans = [
        "FR7630006000011234567890189",
        "DE89370400440532013000",
        "FR1420041010050500013M02606",
    ];
    for (x, iban) in caisses.iter().zip(ibans) {
        ok(
            &x.dir,
            &[
                "bank",
                "set",
                "--holder",
                &format!("Caisse {}", &x.id[..8]),
                "--iban",
                iban,
            ],
        );
    }
    // Settle the period: statements, countersignatures, identical netting everywhere.
    for x in &caisses {
        ok(&x.dir, &["settlement", "run", "--period", "2027-03"]);
    }
    let mut shows = Vec::new();
    for x in &caisses {
        wait_until("every statement countersigned", 20, || {
            let v = ok(&x.dir, &["settlement", "show", "--period", "2027-03"]);
            let st = v["statements"].as_array().unwrap();
            st.len() == 6 && st.iter().all(|s| s["acknowledged"] == true)
        });
        shows.push(ok(&x.dir, &["settlement", "show", "--period", "2027-03"]));
    }
    assert_eq!(s(&shows[0]["net_sum"]), "0.00");
    let transfers = shows[0]["transfers"].as_array().unwrap().len();
    assert!(transfers <= 2, "at most n-1 transfers: {}", shows[0]);
    assert_eq!(shows[0]["positions"], shows[1]["positions"]);
    assert_eq!(shows[1]["positions"], shows[2]["positions"]);
    assert_eq!(shows[0]["transfers"], shows[2]["transfers"]);
    // A's position: owes B 10 + 20 + 1 + 60 or not, … just check the sign of what A's members spent abroad.
    let a_pos = shows[0]["positions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| s(&p["caisse"]) == a.id)
        .unwrap()
        .clone();
    assert!(
        Amount::parse_signed(&s(&a_pos["net"]))
            .unwrap()
            .is_negative(),
        "A's members spent more abroad than others at A: {a_pos}"
    );
    // The payer records a transfer made outside the system.
    if let Some(t) = shows[0]["transfers"].as_array().unwrap().first() {
        let payer = caisses.iter().find(|x| x.id == s(&t["from"])).unwrap();
        // Its bank file holds the transfer, to the creditor's published
        // account, with the reference the payer then records.
        let (creditor_idx, creditor) = caisses
            .iter()
            .enumerate()
            .find(|(_, x)| x.id == s(&t["to"]))
            .unwrap();
        let file = tmp.path().join("settle.xml");
        let mut owed = Vec::new();
        wait_until("the creditor's bank account at the payer", 20, || {
            let _ = std::fs::remove_file(&file);
            let (code, v) = json(
                &payer.dir,
                &[
                    "bank",
                    "payouts",
                    "--period",
                    "2027-03",
                    "--out",
                    file.to_str().unwrap(),
                ],
            );
            owed.push(v);
            code == 0
        });
        let xml = std::fs::read_to_string(&file).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let block = doc
            .descendants()
            .find(|n| n.has_tag_name("PmtInf"))
            .expect("a payment block");
        let text_in = |name: &str| -> Vec<String> {
            block
                .descendants()
                .filter(|n| n.has_tag_name(name))
                .map(|n| n.text().unwrap_or("").to_owned())
                .collect()
        };
        assert_eq!(text_in("PmtInfId"), ["SETTLEMENT-2027-03"]);
        // One transaction per transfer the payer owes, and this one among them.
        let owed_here: Vec<&Value> = shows[0]["transfers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| s(&x["from"]) == payer.id)
            .collect();
        let txs: Vec<roxmltree::Node> = block
            .descendants()
            .filter(|n| n.has_tag_name("CdtTrfTxInf"))
            .collect();
        assert_eq!(txs.len(), owed_here.len(), "{xml}");
        let field = |tx: &roxmltree::Node, name: &str| -> String {
            tx.descendants()
                .find(|n| n.has_tag_name(name))
                .and_then(|n| n.text())
                .unwrap_or("")
                .to_owned()
        };
        let tx = txs
            .iter()
            .find(|tx| field(tx, "IBAN") == ibans[creditor_idx])
            .expect("a transfer to the creditor's published account");
        assert_eq!(field(tx, "InstdAmt"), s(&t["amount"]));
        let reference = field(tx, "EndToEndId");
        assert!(reference.starts_with("SETTLE-2027-03-"), "{reference}");
        assert!(
            creditor
                .id
                .starts_with(&reference["SETTLE-2027-03-".len()..])
        );
        ok(
            &payer.dir,
            &[
                "settlement",
                "paid",
                "--period",
                "2027-03",
                "--transfer",
                &s(&t["transfer"]),
                "--reference",
                &reference,
            ],
        );
        wait_until("the transfer to be seen as paid", 20, || {
            ok(
                &caisses[0].dir,
                &["settlement", "show", "--period", "2027-03"],
            )["transfers"][0]["paid"]
                == true
        });
    }

    // Next period: B claims a receipt A never signed; A's answer is a dispute naming it.
    for x in &caisses {
        ok(&x.dir, &["clock", "set", "--today", "2027-04-02"]);
    }
    let (code, _) = buy(b, &a.members[3].1, "1.00", &next_id());
    assert_eq!(code, 0);
    let fake = PurchaseId::from_bytes([0x66; 16]);
    assert_eq!(nodes[1].stop(), Some(0));
    {
        let store = caisse_node::store::open_existing(&b.dir).unwrap();
        let b_key = SecretKey::from_bytes({
            let mut k = [0u8; 32];
            let text = std::fs::read_to_string(b.dir.join("caisse.key")).unwrap();
            for (i, byte) in k.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&text.trim()[2 * i..2 * i + 2], 16).unwrap();
            }
            k
        });
        let home: CaisseId = a.id.parse().unwrap();
        let receipt = PurchaseReceipt {
            purchase: fake,
            request: ContentId::of(b"never sent"),
            home,
            host: b_key.caisse_id(),
            card: a.members[3].1.parse::<CardId>().unwrap(),
            outlet: b.outlet.parse::<OutletId>().unwrap(),
            allocation_part: Amount::from_cents(5_00),
            member_part: Amount::ZERO,
            period: "2027-04".parse().unwrap(),
            at: 1,
        };
        // Signed by B itself: not a receipt A ever gave.
        let env = Envelope::seal(&b_key, &FederationId::new(FED).unwrap(), &receipt).unwrap();
        let rec = ReceiptRecord {
            envelope: env,
            receipt,
            seq: 0,
            request: ContentId::of(b"x"),
        };
        store
            .apply(&[Op::Put(
                caisse_node::store::keys::key(b"h/", &[fake.as_bytes()]),
                encode_value(&rec),
            )])
            .unwrap();
        store.sync().unwrap();
    }
    nodes[1] = TestNode::start(&b.dir);
    ok(&b.dir, &["settlement", "run", "--period", "2027-04"]);
    wait_until("A to dispute B's statement", 20, || {
        let v = ok(&a.dir, &["settlement", "show", "--period", "2027-04"]);
        v["statements"]
            .as_array()
            .unwrap()
            .iter()
            .any(|st| !st["dispute"].is_null())
    });
    let v = ok(&a.dir, &["settlement", "show", "--period", "2027-04"]);
    let st = v["statements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| !st["dispute"].is_null())
        .unwrap();
    assert_eq!(st["acknowledged"], false);
    let unknown: Vec<String> = st["dispute"]["unknown_to_debtor"]
        .as_array()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(
        unknown,
        vec![fake.to_string()],
        "the dispute names the receipt A never signed"
    );
    // A disputed statement does not enter the netting.
    assert_eq!(v["positions"].as_array().unwrap().len(), 0);
    // B's treasurer withdraws the claim A disputed from the console's
    // treasury page: a revised statement without it, acknowledged by A, and
    // the netting follows.
    let api_b = s(&common::node_json(&b.dir)["api"]);
    let admin_b = std::fs::read_to_string(b.dir.join("admin.token")).unwrap();
    let cookie = common::console_sign_in(&api_b, "/login/token", &[("token", admin_b.trim())]);
    let with_cookie = [("Cookie", format!("caisse_session={cookie}"))];
    let with_cookie: Vec<(&str, &str)> =
        with_cookie.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, _, page) =
        common::http(&api_b, "GET", "/treasury?period=2027-04", &with_cookie, b"");
    assert_eq!(code, 200);
    let page = String::from_utf8_lossy(&page).into_owned();
    let at = page
        .find("action=\"/treasury/withdraw\"")
        .expect("a withdraw button on the disputed statement");
    assert!(page[at..].contains(&a.id), "the button names the debtor");
    let csrf = common::csrf_of(&page.as_bytes()[at..]);
    let form = format!("csrf={csrf}&debtor={}&period=2027-04", a.id);
    let mut headers = with_cookie.clone();
    headers.push(("Content-Type", "application/x-www-form-urlencoded"));
    let (code, head, _) = common::http(
        &api_b,
        "POST",
        "/treasury/withdraw",
        &headers,
        form.as_bytes(),
    );
    assert_eq!(code, 303, "{head}");
    let (_, _, page) = common::http(&api_b, "GET", "/treasury?period=2027-04", &with_cookie, b"");
    assert!(
        String::from_utf8_lossy(&page)
            .contains("Créances contestées retirées, relevé révisé publié : 1"),
        "the page says what was done: {}",
        String::from_utf8_lossy(&page)
    );
    wait_until("the revised statement acknowledged", 20, || {
        let v = ok(&a.dir, &["settlement", "show", "--period", "2027-04"]);
        let st = v["statements"].as_array().unwrap();
        st.iter().all(|x| x["acknowledged"] == true)
            && !v["positions"].as_array().unwrap().is_empty()
    });
    let v = ok(&a.dir, &["settlement", "show", "--period", "2027-04"]);
    let st = v["statements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| s(&x["creditor"]) == b.id)
        .unwrap()
        .clone();
    assert_eq!(
        s(&st["amount"]),
        "1.00",
        "only the real sale is claimed: {v}"
    );
    let (code, again) = json(
        &b.dir,
        &[
            "settlement",
            "withdraw",
            "--period",
            "2027-04",
            "--debtor",
            &a.id,
        ],
    );
    assert_ne!(code, 0, "nothing left to withdraw: {again}");
    let out = common::caisse(&a.dir, &["ledger", "check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = nodes;
}
