//! Attacks on a real node, one test per finding of the security review
//! (issue 14): what each role can learn, the export's anonymity, PIN
//! guessing, floods, files, revocation, redirects and hostile names.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{Rng, TestNode, console_sign_in, csrf_of, http, ok, s, session_cookie};
use serde_json::{Value, json};

/// A JSON API call with a bearer token: (status, JSON).
fn api(
    node: &TestNode,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (code, _, raw) = http(
        &node.api,
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    (code, serde_json::from_slice(&raw).unwrap_or(Value::Null))
}

fn must(node: &TestNode, token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let (code, v) = api(node, token, method, path, body);
    assert_eq!(code, 200, "{method} {path}: {v}");
    v
}

fn token_file(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .trim()
        .to_owned()
}

fn uuid(rng: &mut Rng) -> String {
    let h = hex(&rng.bytes16());
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A caisse of a few hundred varied members with a month of purchases,
/// contributions and a parliament with named seat holders.
struct Populated {
    node: TestNode,
    admin: String,
    members: Vec<(String, String, String)>, // (member id, card, name)
    period: String,
}

fn populate(dir: &Path, n: usize, seed: u64) -> Populated {
    TestNode::init(dir, "Caisse surveillée", &["--manual-clock"]);
    let node = TestNode::start(dir);
    let admin = node.admin_token();
    must(
        &node,
        &admin,
        "POST",
        "/api/v1/clock",
        Some(json!({"today": "2027-03-01"})),
    );
    let mut rng = Rng(seed);
    let mut members = Vec::new();
    let mut households: Vec<String> = Vec::new();
    for i in 0..n {
        let name = format!("Personne{i:04} Nomdefamille");
        let mut body = json!({
            "name": name,
            "residence": format!("{} rue des Lilas", i + 1),
            "birth_year": 1940 + rng.below(66) as u16,
            "income": format!("{}.00", 400 + rng.below(4_600)),
            "joined": format!("2027-{:02}-{:02}", 1 + rng.below(3), 1 + rng.below(28)),
        });
        if !households.is_empty() && rng.below(3) == 0 {
            body["household"] = json!(households[rng.below(households.len() as u64) as usize]);
        } else if rng.below(2) == 0 {
            body["new_household"] = json!(true);
        }
        let e = must(&node, &admin, "POST", "/api/v1/members", Some(body));
        if let Some(h) = e["household"].as_str() {
            households.push(h.to_owned());
        }
        members.push((s(&e["member"]), s(&e["card"]), name));
    }
    must(
        &node,
        &admin,
        "POST",
        "/api/v1/allocations",
        Some(json!({"period": "2027-03"})),
    );
    for (m, _, _) in &members {
        must(
            &node,
            &admin,
            "POST",
            "/api/v1/contributions",
            Some(json!({"member": m, "period": "2027-03"})),
        );
    }
    let mut outlets = Vec::new();
    for o in 0..3 {
        let r = must(
            &node,
            &admin,
            "POST",
            "/api/v1/outlets",
            Some(json!({"name": format!("Épicerie {o}"), "categories": ["vegetables", "bread"]})),
        );
        outlets.push((s(&r["outlet"]), s(&r["token"])));
    }
    for day in [3, 9, 17, 24] {
        must(
            &node,
            &admin,
            "POST",
            "/api/v1/clock",
            Some(json!({"today": format!("2027-03-{day:02}")})),
        );
        for _ in 0..n / 4 {
            let (_, card, _) = &members[rng.below(n as u64) as usize];
            let (outlet, token) = &outlets[rng.below(3) as usize];
            let _ = api(
                &node,
                token,
                "POST",
                "/api/v1/purchases",
                Some(json!({
                    "id": uuid(&mut rng),
                    "card": card,
                    "outlet": outlet,
                    "lines": [{"category": "vegetables", "producer": null,
                               "amount": format!("{}.{:02}", 1 + rng.below(30), rng.below(100))}],
                })),
            );
        }
    }
    // Seats: citizens (members) and a producer's representative, named.
    for (m, _, _) in members.iter().take(3) {
        must(
            &node,
            &admin,
            "POST",
            "/api/v1/parliament/seats",
            Some(json!({"kind": "citizen", "member": m})),
        );
    }
    must(
        &node,
        &admin,
        "POST",
        "/api/v1/parliament/seats",
        Some(json!({"kind": "producer", "holder": "Jeanne Maraîchère"})),
    );
    Populated {
        node,
        admin,
        members,
        period: "2027-03".into(),
    }
}

/// Nothing in `text` names a member: no member id, card id or name, and
/// no seat holder.
fn assert_no_person(what: &str, text: &str, p: &Populated) {
    assert!(
        !text.contains("mem_"),
        "{what} names a member id: {text:.300}"
    );
    assert!(!text.contains("card_"), "{what} names a card: {text:.300}");
    assert!(!text.contains("Nomdefamille"), "{what} names a member");
    assert!(!text.contains("Maraîchère"), "{what} names a seat holder");
    for (m, c, _) in &p.members {
        assert!(!text.contains(m.as_str()) && !text.contains(c.as_str()));
    }
}

/// Finding 1: the evaluation committee's token sees no person and no
/// per-member amount; the auditor verifies the ledger under pseudonyms.
#[test]
fn the_committee_sees_no_person() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    let p = populate(&dir, 300, common::seed());
    let node = &p.node;
    let observer = token_file(&dir, "observer.token");

    // The journal names member accounts: refused to the committee.
    let (code, v) = api(
        node,
        &observer,
        "GET",
        "/api/v1/ledger/journal?limit=500",
        None,
    );
    assert_eq!(code, 403, "the observer read the journal: {v:.300}");
    let (code, _) = api(node, &observer, "GET", "/api/v1/ledger/check", None);
    assert_eq!(code, 403);
    // Balances: member accounts only as one total.
    let v = must(node, &observer, "GET", "/api/v1/ledger/balances", None);
    assert_no_person("balances", &v.to_string(), &p);
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|b| b["account"] == "members")
    );
    // Parliament: the seats and their kinds, not who holds them.
    let v = must(node, &observer, "GET", "/api/v1/parliament", None);
    assert_no_person("parliament", &v.to_string(), &p);
    let seats = v["seats"].as_array().unwrap();
    assert_eq!(seats.len(), 4);
    // The admin still sees the holders.
    let v = must(node, &p.admin, "GET", "/api/v1/parliament", None);
    assert!(v.to_string().contains("Maraîchère"));

    // The auditor verifies the ledger and follows accounts by pseudonym.
    let t = must(
        node,
        &p.admin,
        "POST",
        "/api/v1/tokens",
        Some(json!({"role": "auditor"})),
    );
    let auditor = s(&t["token"]);
    let j = must(
        node,
        &auditor,
        "GET",
        "/api/v1/ledger/journal?limit=1000",
        None,
    );
    let text = j.to_string();
    assert_no_person("auditor's journal", &text, &p);
    assert!(
        text.contains("\"member\":\"acct_"),
        "accounts under pseudonyms: {text:.400}"
    );
    let again = must(
        node,
        &auditor,
        "GET",
        "/api/v1/ledger/journal?limit=1000",
        None,
    );
    assert_eq!(j, again, "pseudonyms are stable for the auditor");
    let c = must(node, &auditor, "GET", "/api/v1/ledger/check", None);
    assert_eq!(c["findings"], json!([]), "{c}");
    let b = must(node, &auditor, "GET", "/api/v1/ledger/balances", None);
    assert_no_person("auditor's balances", &b.to_string(), &p);
    // And the admin, who runs the caisse, sees members as they are.
    let j = must(
        node,
        &p.admin,
        "GET",
        "/api/v1/ledger/journal?limit=10",
        None,
    );
    assert!(j.to_string().contains("mem_"));
}

/// Finding 2: in the anonymised export every member row shares all its
/// columns with at least four others, every purchase line its (outlet,
/// week, amount) likewise, no column gives money to the cent, two exports
/// cannot be joined on pseudonyms, and the report's aggregates stay exact.
#[test]
fn the_export_is_k_anonymous() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    let p = populate(&dir, 300, common::seed());
    let node = &p.node;
    let observer = token_file(&dir, "observer.token");
    // The export.
    let e = must(
        node,
        &observer,
        "GET",
        &format!("/api/v1/report/export?period={}", p.period),
        None,
    );
    let text = e.to_string();
    assert_no_person("export", &text, &p);
    let members = e["members"].as_array().unwrap();
    let purchases = e["purchases"].as_array().unwrap();
    assert!(members.len() + e["withheld_members"].as_u64().unwrap() as usize == 300);
    assert!(
        members.len() >= 270,
        "most members are kept: {}",
        members.len()
    );
    assert!(!purchases.is_empty(), "purchase lines are kept");
    // k over every member column but the pseudonym.
    let mut classes: HashMap<String, usize> = HashMap::new();
    for m in members {
        let mut o = m.as_object().unwrap().clone();
        o.remove("member");
        *classes.entry(Value::Object(o).to_string()).or_default() += 1;
    }
    let k = classes.values().min().copied().unwrap();
    assert!(k >= 5, "a class of {k} member rows: {classes:?}");
    // k over what an onlooker sees of a purchase: shop, when, how much.
    let mut classes: HashMap<String, usize> = HashMap::new();
    for l in purchases {
        *classes
            .entry(format!("{}|{}|{}", l["outlet"], l["week"], l["amount"]))
            .or_default() += 1;
    }
    let k = classes.values().min().copied().unwrap();
    assert!(k >= 5, "a class of {k} purchase lines");
    // No column gives money to the cent, so no income can be recomputed
    // from a contribution and no join day from a pro-rata allocation.
    let cents = |v: &Value| {
        v.as_str()
            .is_some_and(|t| t.contains('.') && t.chars().all(|c| c.is_ascii_digit() || c == '.'))
    };
    for row in members.iter().chain(purchases) {
        for (col, v) in row.as_object().unwrap() {
            assert!(!cents(v), "column {col} gives an exact amount: {row}");
            assert!(!col.contains("contribution") && !col.contains("income_bracket"));
        }
    }
    // Two exports of one period cannot be joined on pseudonyms.
    let again = must(
        node,
        &observer,
        "GET",
        &format!("/api/v1/report/export?period={}", p.period),
        None,
    );
    let first: std::collections::HashSet<String> =
        members.iter().map(|m| s(&m["member"])).collect();
    assert!(
        again["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| !first.contains(&s(&m["member"])))
    );
    // The report's aggregates are the exact ones.
    let r = must(
        node,
        &observer,
        "GET",
        &format!("/api/v1/report?period={}", p.period),
        None,
    );
    assert_eq!(r["report"]["contributions"]["count"], 300);
}

/// The status's period (`YYYY-MM`) of a running node.
fn period_now(node: &TestNode, admin: &str) -> String {
    let v = must(node, admin, "GET", "/api/v1/status", None);
    s(&v["today"])[..7].to_owned()
}

/// A PIN nobody would call weak (six digits, not a run or a repeat).
fn strong_pin(rng: &mut Rng) -> String {
    loop {
        let p = format!("{:06}", 100_000 + rng.below(900_000));
        let d: Vec<u8> = p.bytes().collect();
        if d.windows(2).all(|w| w[0] != w[1]) && !d.windows(2).all(|w| w[1] == w[0] + 1) {
            return p;
        }
    }
}

fn buy(
    node: &TestNode,
    token: &str,
    outlet: &str,
    card: &str,
    pin: &str,
    rng: &mut Rng,
) -> (u16, Value) {
    api(
        node,
        token,
        "POST",
        "/api/v1/purchases",
        Some(json!({
            "id": uuid(rng),
            "card": card,
            "outlet": outlet,
            "pin": pin,
            "lines": [{"category": "vegetables", "producer": null, "amount": "1.00"}],
        })),
    )
}

/// Finding 3: one till token guessing PINs across cards is suspended after
/// a few wrong PINs, so it locks no card beyond that; a right PIN does not
/// reset a card's count; weak PINs are refused.
#[test]
fn a_till_guessing_pins_is_suspended_and_locks_no_more_cards() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse des codes", &[]);
    let node = TestNode::start(&dir);
    let admin = node.admin_token();
    let mut rng = Rng(common::seed());

    // Weak PINs are refused at enrolment and at a PIN change.
    for weak in ["1234", "0000", "1990", "1212", "987654"] {
        let (code, v) = api(
            &node,
            &admin,
            "POST",
            "/api/v1/members",
            Some(json!({"name": "Faible", "residence": "Ici", "pin": weak})),
        );
        assert_eq!(code, 422, "{weak}: {v}");
        assert!(s(&v["message"]).contains("too easy"), "{v}");
    }
    let mut cards = Vec::new();
    for i in 0..20 {
        let pin = strong_pin(&mut rng);
        let e = must(
            &node,
            &admin,
            "POST",
            "/api/v1/members",
            Some(json!({"name": format!("Membre {i}"), "residence": "Ici", "pin": pin})),
        );
        cards.push((s(&e["member"]), s(&e["card"]), pin));
    }
    let (code, v) = api(
        &node,
        &admin,
        "POST",
        &format!("/api/v1/members/{}/pin", cards[0].0),
        Some(json!({"pin": "4444"})),
    );
    assert_eq!(code, 422, "{v}");
    let period = period_now(&node, &admin);
    must(
        &node,
        &admin,
        "POST",
        "/api/v1/allocations",
        Some(json!({"period": period})),
    );
    let outlet = |name: &str| {
        let r = must(
            &node,
            &admin,
            "POST",
            "/api/v1/outlets",
            Some(json!({"name": name, "categories": ["vegetables"]})),
        );
        (s(&r["outlet"]), s(&r["token"]))
    };
    let (thief, thief_token) = outlet("Épicerie volée");
    let (honest, honest_token) = outlet("Épicerie honnête");

    // A right PIN between wrong ones does not clear the count.
    let (_, card, pin) = cards[19].clone();
    for p in ["000000", "000001"] {
        let (code, v) = buy(&node, &honest_token, &honest, &card, p, &mut rng);
        assert_eq!(code, 401, "{v}");
    }
    let (code, v) = buy(&node, &honest_token, &honest, &card, &pin, &mut rng);
    assert_eq!(code, 200, "{v}");
    let (_, v) = buy(&node, &honest_token, &honest, &card, "000002", &mut rng);
    assert_eq!(
        s(&v["error"]),
        "card_locked",
        "the third wrong PIN locks: {v}"
    );

    // 50 guesses with the stolen till token, three per card.
    let mut suspended_after = None;
    for g in 0..50 {
        let (_, card, _) = &cards[g / 3];
        let (code, v) = buy(
            &node,
            &thief_token,
            &thief,
            card,
            &format!("{:06}", 900_000 + g),
            &mut rng,
        );
        if code == 403 {
            assert_eq!(s(&v["error"]), "till_suspended", "{v}");
            suspended_after.get_or_insert(g);
        } else {
            assert!(
                suspended_after.is_none(),
                "a guess went through after the suspension: {v}"
            );
        }
    }
    let after = suspended_after.expect("the till token was never suspended");
    assert!(after <= 10, "suspended only after {after} guesses");
    // Which cards are locked: buy with the right PIN at the honest outlet.
    let mut locked = 0;
    for (_, card, pin) in &cards[..17] {
        let (code, v) = buy(&node, &honest_token, &honest, card, pin, &mut rng);
        if s(&v["error"]) == "card_locked" {
            locked += 1;
        } else {
            assert_eq!(code, 200, "{v}");
        }
    }
    assert!(locked <= 3, "{locked} cards locked by one till token");
    // The admin sees why, and reinstates the tills.
    let outlets = must(&node, &admin, "GET", "/api/v1/outlets", None);
    let o = outlets
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == json!(thief))
        .unwrap();
    assert!(s(&o["suspended"]["reason"]).contains("wrong PINs"), "{o}");
    assert!(
        std::fs::read_to_string(dir.join("node.log"))
            .unwrap()
            .contains("outlet tills suspended")
    );
    let (_, card, pin) = &cards[18];
    let (code, _) = buy(&node, &thief_token, &thief, card, pin, &mut rng);
    assert_eq!(
        code, 403,
        "a suspended till sells nothing, even with the right PIN"
    );
    must(
        &node,
        &admin,
        "POST",
        &format!("/api/v1/outlets/{thief}/reinstate"),
        None,
    );
    let (code, v) = buy(&node, &thief_token, &thief, card, pin, &mut rng);
    assert_eq!(code, 200, "{v}");
}

/// A console session: the cookie after signing in with a token or a card.
/// The status of a console page for a session cookie (303 = sent to sign in).
fn page(api: &str, path: &str, cookie: &str) -> u16 {
    http(
        api,
        "GET",
        path,
        &[("Cookie", &format!("caisse_session={cookie}"))],
        b"",
    )
    .0
}

/// Finding 7: tokens are listed and revoked (401 at once), outlets
/// suspended, and console sessions end at once on revocation, PIN reset
/// or suspension.
#[test]
fn revocation_takes_effect_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse révocable", &[]);
    let node = TestNode::start(&dir);
    let admin = node.admin_token();
    let ids =
        |v: Value| -> Vec<String> { v.as_array().unwrap().iter().map(|t| s(&t["id"])).collect() };
    let before = ids(ok(&dir, &["token", "list"]));
    assert_eq!(before.len(), 2, "the admin's and the committee's");
    let t = must(
        &node,
        &admin,
        "POST",
        "/api/v1/tokens",
        Some(json!({"role": "observer"})),
    );
    let token = s(&t["token"]);
    must(&node, &token, "GET", "/api/v1/report?period=2027-01", None);
    let cookie = console_sign_in(&node.api, "/login/token", &[("token", &token)]);
    assert_eq!(page(&node.api, "/report", &cookie), 200);
    let after = ids(ok(&dir, &["token", "list"]));
    let new: Vec<&String> = after.iter().filter(|i| !before.contains(i)).collect();
    assert_eq!(new.len(), 1, "{after:?}");
    // The admin revokes it from the console's access page.
    let admin_cookie = console_sign_in(&node.api, "/login/token", &[("token", &admin)]);
    let (code, _, body) = http(
        &node.api,
        "GET",
        "/access",
        &[("Cookie", &format!("caisse_session={admin_cookie}"))],
        b"",
    );
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains(new[0].as_str()));
    let (code, head, _) = http(
        &node.api,
        "POST",
        "/access/revoke",
        &[
            ("Cookie", &format!("caisse_session={admin_cookie}")),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        format!("csrf={}&id={}", csrf_of(&body), new[0]).as_bytes(),
    );
    assert_eq!(code, 303, "{head}");
    let (code, v) = api(&node, &token, "GET", "/api/v1/report?period=2027-01", None);
    assert_eq!(code, 401, "a revoked token still opens the API: {v}");
    // The last admin token cannot be revoked (the caisse would lock itself out).
    for id in &before {
        let _ = common::caisse(&dir, &["token", "revoke", id]);
    }
    assert_eq!(api(&node, &admin, "GET", "/api/v1/status", None).0, 200);
    assert_eq!(
        page(&node.api, "/report", &cookie),
        303,
        "the console session outlived its token"
    );

    // A member's session ends when the PIN is reset, or the member suspended.
    let m = must(
        &node,
        &admin,
        "POST",
        "/api/v1/members",
        Some(json!({"name": "Awa", "residence": "Ici", "pin": "602817"})),
    );
    let member_cookie = || {
        console_sign_in(
            &node.api,
            "/login/card",
            &[("card", &s(&m["card"])), ("pin", "602817")],
        )
    };
    let c = member_cookie();
    assert_eq!(page(&node.api, "/member", &c), 200);
    must(
        &node,
        &admin,
        "POST",
        &format!("/api/v1/members/{}/pin", s(&m["member"])),
        Some(json!({"pin": "602817"})),
    );
    assert_eq!(
        page(&node.api, "/member", &c),
        303,
        "the session outlived a PIN reset"
    );
    let c = member_cookie();
    must(
        &node,
        &admin,
        "POST",
        &format!("/api/v1/members/{}/suspend", s(&m["member"])),
        None,
    );
    assert_eq!(
        page(&node.api, "/member", &c),
        303,
        "the session outlived a suspension"
    );

    // An outlet's tills suspended by the admin sell nothing until reinstated.
    let o = ok(
        &dir,
        &[
            "outlet",
            "register",
            "--name",
            "Marché",
            "--categories",
            "vegetables",
        ],
    );
    let outlet = s(&o["outlet"]);
    ok(
        &dir,
        &["outlet", "suspend", &outlet, "--reason", "tablet stolen"],
    );
    let (code, v) = api(
        &node,
        &s(&o["token"]),
        "POST",
        "/api/v1/purchases",
        Some(
            json!({"id": "00000000-0000-0000-0000-000000000001", "card": s(&m["card"]),
                    "outlet": outlet, "lines": [{"category": "vegetables", "producer": null, "amount": "1.00"}]}),
        ),
    );
    assert_eq!(code, 403, "{v}");
    assert!(s(&v["message"]).contains("tablet stolen"), "{v}");
    ok(&dir, &["outlet", "reinstate", &outlet]);
}

/// One keep-alive connection for floods: sends requests one after the
/// other and reads each response whole.
struct KeepAlive {
    c: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    fn new(api: &str) -> KeepAlive {
        let c = TcpStream::connect(api).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.set_nodelay(true).unwrap();
        KeepAlive { c, buf: Vec::new() }
    }

    fn send(&mut self, method: &str, path: &str, headers: &str, body: &str) -> u16 {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{headers}\r\n{body}",
            body.len()
        );
        self.c.write_all(req.as_bytes()).unwrap();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("responses carry a length");
                if self.buf.len() >= end + 4 + len {
                    let code = head
                        .split(' ')
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    self.buf.drain(..end + 4 + len);
                    return code;
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.c.read(&mut chunk).expect("read a response");
            assert!(n > 0, "the node closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Finding 5: 25,000 sign-ins with one credential leave the admin signed
/// in, and a flood of anonymous visits does not invalidate a form being
/// filled in.
#[test]
fn floods_sign_nobody_out_and_spoil_no_form() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse inondée", &[]);
    let node = TestNode::start(&dir);
    let admin = node.admin_token();
    let observer = token_file(&dir, "observer.token");
    let admin_cookie = console_sign_in(&node.api, "/login/token", &[("token", &admin)]);
    assert_eq!(page(&node.api, "/treasury", &admin_cookie), 200);
    // Someone opens the sign-in form and starts typing.
    let (_, head, body) = http(&node.api, "GET", "/", &[], b"");
    let visitor = session_cookie(&head).unwrap();
    let visitor_csrf = csrf_of(&body);

    // 24,000 anonymous visits.
    let mut k = KeepAlive::new(&node.api);
    for _ in 0..24_000 {
        assert_eq!(k.send("GET", "/", "", ""), 200);
    }
    // 25,000 sign-ins with one valid credential.
    let (_, head, body) = http(&node.api, "GET", "/", &[], b"");
    let cookie = session_cookie(&head).unwrap();
    let form = format!("csrf={}&token={observer}", csrf_of(&body));
    let headers = format!(
        "Cookie: caisse_session={cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    );
    for _ in 0..25_000 {
        assert_eq!(k.send("POST", "/login/token", &headers, &form), 303);
    }
    assert_eq!(
        page(&node.api, "/treasury", &admin_cookie),
        200,
        "the flood signed the admin out"
    );
    // The form opened before the flood is still accepted.
    let (code, head, _) = http(
        &node.api,
        "POST",
        "/login/token",
        &[
            ("Cookie", &format!("caisse_session={visitor}")),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        format!("csrf={visitor_csrf}&token={admin}").as_bytes(),
    );
    assert_eq!(code, 303, "the form was refused after the flood: {head}");
}

/// Finding 5: 2,000 idle and 1,000 slow connections held open from one
/// address (a node started with the usual soft limit of 1,024 open files)
/// do not stop a till: its purchase answers in under a second.
#[test]
fn idle_and_slow_connections_do_not_stop_the_tills() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse assiégée", &[]);
    let node = TestNode::start_with(&dir, |cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; only the child's limits change.
        unsafe {
            cmd.pre_exec(|| {
                let r = libc::rlimit {
                    rlim_cur: 1024,
                    rlim_max: 8192,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &r);
                Ok(())
            });
        }
    });
    let admin = node.admin_token();
    let mut rng = Rng(common::seed());
    let e = must(
        &node,
        &admin,
        "POST",
        "/api/v1/members",
        Some(json!({"name": "A", "residence": "B"})),
    );
    let period = period_now(&node, &admin);
    must(
        &node,
        &admin,
        "POST",
        "/api/v1/allocations",
        Some(json!({"period": period})),
    );
    let o = must(
        &node,
        &admin,
        "POST",
        "/api/v1/outlets",
        Some(json!({"name": "Halle", "categories": ["vegetables"]})),
    );
    // This test holds 3,000 sockets itself.
    unsafe {
        let r = libc::rlimit {
            rlim_cur: 8192,
            rlim_max: 8192,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    let addr: std::net::SocketAddr = node.api.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let held = runtime.block_on(async {
        let mut held = Vec::new();
        for i in 0..3_000 {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            // The attacker's own address, not the till's.
            sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let Ok(Ok(mut c)) =
                tokio::time::timeout(Duration::from_secs(2), sock.connect(addr)).await
            else {
                // The node's backlog is full: the attacker holds all it can.
                break;
            };
            if i >= 2_000 {
                // Slow: the start of a request, never finished.
                use tokio::io::AsyncWriteExt;
                let _ = c
                    .write_all(b"POST /api/v1/purchases HTTP/1.1\r\nHost: x\r\n")
                    .await;
            }
            held.push(c);
        }
        held
    });
    assert!(held.len() > 1_000, "the attacker could not even connect");
    let started = std::time::Instant::now();
    let (code, v) = buy(
        &node,
        &s(&o["token"]),
        &s(&o["outlet"]),
        &s(&e["card"]),
        "",
        &mut rng,
    );
    let took = started.elapsed();
    assert_eq!(code, 200, "{v}");
    assert!(took < Duration::from_secs(1), "the purchase took {took:?}");
    // The node is still there, and says what it refused.
    let log = std::fs::read_to_string(dir.join("node.log")).unwrap();
    assert!(
        log.contains("HTTP connection refused"),
        "no security event logged"
    );
    drop(held);
}

/// Finding 6: the data directory, the store and the exports are private
/// to the caisse's user, and a loosened mode is tightened with a warning.
#[test]
fn files_are_private_to_the_caisse() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse discrète", &[]);
    let mut node = TestNode::start(&dir);
    ok(
        &dir,
        &[
            "member",
            "enroll",
            "--name",
            "Awa Diallo",
            "--residence",
            "Cadenet",
        ],
    );
    assert_eq!(mode(&dir), 0o700, "data directory");
    assert_eq!(mode(&dir.join("store.redb")), 0o600, "store file");
    assert_eq!(mode(&dir.join("admin.token")), 0o600);
    assert_eq!(mode(&dir.join("caisse.key")), 0o600);
    let out = tmp.path().join("export");
    ok(
        &dir,
        &[
            "report",
            "export",
            "--period",
            "2027-01",
            "--anonymised",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(mode(&out), 0o700, "export directory");
    assert_eq!(mode(&out.join("members.csv")), 0o600, "exported file");
    // Someone loosens the store: the node tightens it at start and warns.
    node.stop();
    std::fs::set_permissions(
        dir.join("store.redb"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let _node = TestNode::start(&dir);
    assert_eq!(mode(&dir.join("store.redb")), 0o600);
    let log = std::fs::read_to_string(dir.join("node.log")).unwrap();
    assert!(
        log.contains("readable by other accounts"),
        "no warning in the log"
    );
}

/// Finding 8: no redirect leaves the site, whatever `back` says.
#[test]
fn no_redirect_leaves_the_site() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse locale", &[]);
    let node = TestNode::start(&dir);
    for back in [
        "/%09/evil.example",
        "//evil.example",
        "/%0a/evil.example",
        "https://evil.example",
        "/%5Cevil.example",
    ] {
        let (code, head, _) = http(&node.api, "GET", &format!("/lang/en?back={back}"), &[], b"");
        assert_eq!(code, 303, "{head}");
        let location = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("location: ")
                    .or_else(|| l.strip_prefix("Location: "))
            })
            .unwrap();
        assert_eq!(location, "/", "back={back} sent the visitor to {location}");
    }
    let (_, head, _) = http(&node.api, "GET", "/lang/fr?back=/registry", &[], b"");
    assert!(
        head.to_ascii_lowercase().contains("location: /registry"),
        "{head}"
    );
}

/// Finding 8: another caisse's name with escape sequences and newlines
/// prints on this caisse's terminal without a control character, and
/// `init` refuses such a name for our own caisse.
#[test]
fn a_hostile_caisse_name_prints_clean() {
    const FED: &str = "fed-hostile-names";
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    TestNode::init(
        &a,
        "Caisse A",
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--federation", FED],
    );
    let _na = TestNode::start(&a);
    let first = s(&common::node_json(&a)["listen"][0]);
    TestNode::init(
        &b,
        "Caisse B",
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--federation",
            FED,
            "--bootstrap",
            &first,
        ],
    );
    // The hostile caisse writes its profile by hand, as any program may.
    let hostile = "Caisse A\u{1b}[2J\u{1b}[H\nFAKE  yes  yes\u{7}\u{202e}";
    {
        let store = caisse_node::store::open_existing(&b).unwrap();
        let key = caisse_node::store::keys::PROFILE;
        let mut p: caisse_node::caisse::Profile =
            caisse_node::store::decode_value(key, &store.get(key).unwrap().unwrap()).unwrap();
        p.name = hostile.into();
        store
            .apply(&[caisse_node::store::Op::Put(
                key.to_vec(),
                caisse_node::store::encode_value(&p),
            )])
            .unwrap();
        store.sync().unwrap();
    }
    let _nb = TestNode::start(&b);
    common::wait_until("A knows B's name", 60, || {
        ok(&a, &["peers"]).to_string().contains("FAKE")
    });
    let out = common::caisse(&a, &["peers"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("FAKE"), "{text}");
    assert!(
        !text
            .chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
        "a control character reached the terminal: {text:?}"
    );
    assert_eq!(
        text.lines().filter(|l| l.contains("FAKE")).count(),
        1,
        "the name forged a table row: {text}"
    );
    // In A's public registry, B's accreditations carry B's key fingerprint
    // and say A does not recognise it: a borrowed name fools no one.
    ok(
        &b,
        &[
            "outlet",
            "register",
            "--name",
            "Étal",
            "--categories",
            "bread",
        ],
    );
    let b_id = s(&common::node_json(&b)["caisse_id"]);
    let api_a = s(&common::node_json(&a)["api"]);
    let mut registry = String::new();
    common::wait_until("B's outlet in A's registry", 60, || {
        registry = String::from_utf8_lossy(
            &http(
                &api_a,
                "GET",
                "/registry",
                &[("Accept-Language", "en")],
                b"",
            )
            .2,
        )
        .into_owned();
        registry.contains("Étal")
    });
    let row = registry
        .split("<tr>")
        .find(|r| r.contains("Étal"))
        .unwrap()
        .to_owned();
    assert!(row.contains(&b_id[..8]), "no fingerprint: {row}");
    assert!(row.contains("not recognised by this caisse"), "{row}");
    assert!(!row.contains('\u{1b}'), "{row}");
    // Our own caisse cannot take such a name.
    let out = common::caisse(
        &tmp.path().join("bad"),
        &[
            "init",
            "--name",
            "Caisse\u{1b}[2J",
            "--territory",
            "X",
            "--federation",
            FED,
        ],
    );
    assert!(
        !out.status.success(),
        "init took a name with an escape sequence"
    );
}

/// Finding 4: a member of caisse A pays at caisse B's outlet. A mistyped
/// PIN, then the same purchase id with the right PIN, goes through (the
/// retry is a new request, sealed again); B's store holds the PIN nowhere,
/// only bytes sealed to A; and A's card is not locked by the correction.
#[test]
fn a_corrected_pin_at_another_caisse_goes_through_and_the_host_cannot_read_it() {
    const FED: &str = "fed-sealed-pins";
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    TestNode::init(
        &a,
        "Caisse A",
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--federation",
            FED,
            "--manual-clock",
        ],
    );
    let _na = TestNode::start(&a);
    let first = s(&common::node_json(&a)["listen"][0]);
    TestNode::init(
        &b,
        "Caisse B",
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--federation",
            FED,
            "--manual-clock",
            "--bootstrap",
            &first,
        ],
    );
    let mut nb = TestNode::start(&b);
    let mut outlets = Vec::new();
    let mut member = None;
    for dir in [&a, &b] {
        ok(dir, &["clock", "set", "--today", "2027-03-01"]);
        let mut ids = Vec::new();
        for i in 0..3 {
            let mut args = vec!["member", "enroll", "--name", "Membre", "--residence", "Ici"];
            let n = format!("Membre {i}");
            args[3] = &n;
            if dir == &a && i == 2 {
                args.extend_from_slice(&["--pin", "602817"]);
            }
            let m = ok(dir, &args);
            ids.push((s(&m["member"]), s(&m["card"])));
        }
        for (m, _) in ids.iter().take(2) {
            ok(
                dir,
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
        if dir == &a {
            member = Some(ids[2].clone());
        }
        let o = ok(
            dir,
            &[
                "outlet",
                "register",
                "--name",
                "Épicerie",
                "--categories",
                "bread",
            ],
        );
        outlets.push(s(&o["outlet"]));
        ok(dir, &["allocation", "issue", "--period", "2027-03"]);
    }
    let (member, card) = member.unwrap();
    let ids = [a.clone(), b.clone()].map(|d| s(&common::node_json(&d)["caisse_id"]));
    for (dir, other) in [(&a, &ids[1]), (&b, &ids[0])] {
        common::wait_until("the two caisses to meet", 30, || {
            ok(dir, &["peers"]).as_array().unwrap().len() == 1
        });
        common::pass(dir, &["--recognise", other]);
        common::pass(dir, &["--recognition", "listed"]);
    }
    common::wait_until("A to know B's outlet", 30, || {
        ok(&a, &["accreditation", "list", "--federation"])
            .as_array()
            .unwrap()
            .iter()
            .any(|x| s(&x["caisse"]) == ids[1] || x.to_string().contains(&outlets[1]))
    });
    let id = "00000000-0000-4000-8000-00000000c0de";
    let buy = |pin: &str| {
        common::json(
            &b,
            &[
                "purchase",
                "--card",
                &card,
                "--outlet",
                &outlets[1],
                "--amount",
                "4.00",
                "--category",
                "bread",
                "--id",
                id,
                "--pin",
                pin,
            ],
        )
    };
    let (code, v) = buy("602871");
    assert_ne!(code, 0, "a wrong PIN was accepted: {v}");
    assert_eq!(s(&v["error"]), "wrong_pin", "{v}");
    let (code, v) = buy("602817");
    assert_eq!(code, 0, "the corrected PIN was refused: {v}");
    assert_eq!(s(&v["allocation_part"]), "4.00");
    let (_, again) = buy("602817");
    assert_eq!(
        again["replayed"], true,
        "a retry after success debits nothing: {again}"
    );
    assert_eq!(s(&ok(&a, &["member", "show", &member])["balance"]), "96.00");
    // One wrong PIN counted at home, not two: the correction was not
    // re-sent with the old PIN.
    let (_, v) = common::json(
        &a,
        &[
            "purchase",
            "--card",
            &card,
            "--outlet",
            &outlets[0],
            "--amount",
            "1.00",
            "--category",
            "bread",
            "--pin",
            "000000",
        ],
    );
    assert!(s(&v["message"]).contains("1 attempts left"), "{v}");
    // The host's store: no PIN, in any file, in any form it could read.
    nb.stop();
    let mut files = vec![b.join("store.redb")];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&p).unwrap();
            for pin in [&b"602817"[..], b"602871"] {
                assert!(
                    !bytes.windows(pin.len()).any(|w| w == pin),
                    "a PIN is readable in {}",
                    p.display()
                );
            }
        }
    }
    let store = caisse_node::store::open_existing(&b).unwrap();
    let mut requests = 0;
    for (k, v) in store.scan_prefix(b"n/").unwrap() {
        let (_, env): (caisse_protocol::ContentId, caisse_protocol::Envelope) =
            caisse_node::store::decode_value(&k, &v).unwrap();
        let fed = caisse_protocol::FederationId::new(FED).unwrap();
        let req = env
            .open::<caisse_protocol::messages::PurchaseRequest>(&fed)
            .unwrap()
            .message;
        assert!(
            !matches!(req.auth, caisse_protocol::messages::CardAuth::Pin(_)),
            "the host kept a request with {:?}",
            req.auth
        );
        requests += 1;
    }
    assert_eq!(
        requests, 1,
        "one forwarded request kept, the one that went through"
    );
}

/// Finding 3, per address: wrong PINs from one address across several
/// outlets' tokens (each below its own limit) make that address wait.
#[test]
fn wrong_pins_from_one_address_across_outlets_are_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse des adresses", &[]);
    let node = TestNode::start(&dir);
    let admin = node.admin_token();
    let mut rng = Rng(common::seed());
    let mut cards = Vec::new();
    for i in 0..25 {
        let e = must(
            &node,
            &admin,
            "POST",
            "/api/v1/members",
            Some(json!({"name": format!("M{i}"), "residence": "Ici", "pin": strong_pin(&mut rng)})),
        );
        cards.push(s(&e["card"]));
    }
    let period = period_now(&node, &admin);
    must(
        &node,
        &admin,
        "POST",
        "/api/v1/allocations",
        Some(json!({"period": period})),
    );
    let outlets: Vec<(String, String)> = (0..3)
        .map(|i| {
            let r = must(
                &node,
                &admin,
                "POST",
                "/api/v1/outlets",
                Some(json!({"name": format!("Boutique {i}"), "categories": ["vegetables"]})),
            );
            (s(&r["outlet"]), s(&r["token"]))
        })
        .collect();
    let mut limited_at = None;
    for g in 0..24 {
        let (outlet, token) = &outlets[g % 3];
        let (code, v) = buy(&node, token, outlet, &cards[g], "000000", &mut rng);
        if code == 429 {
            assert_eq!(s(&v["error"]), "too_many_wrong_pins", "{v}");
            limited_at.get_or_insert(g);
        } else {
            assert!(limited_at.is_none(), "a guess went through the limit: {v}");
            assert_eq!(code, 401, "{v}");
        }
    }
    assert_eq!(limited_at, Some(20), "20 wrong PINs per address, then wait");
    // A sale without a PIN from the same address still goes through.
    let e = must(
        &node,
        &admin,
        "POST",
        "/api/v1/members",
        Some(json!({"name": "Sans", "residence": "Ici"})),
    );
    must(
        &node,
        &admin,
        "POST",
        "/api/v1/allocations",
        Some(json!({"period": period})),
    );
    let (code, v) = buy(
        &node,
        &outlets[0].1,
        &outlets[0].0,
        &s(&e["card"]),
        "",
        &mut rng,
    );
    assert_eq!(code, 200, "{v}");
}

/// The operator's metrics (issue 17): Prometheus text behind a token,
/// counting sales by outcome, with no member, card or name in any label.
#[test]
fn metrics_count_sales_and_name_no_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse mesurée", &[]);
    let node = TestNode::start(&dir);
    let admin = node.admin_token();
    let mut rng = Rng(common::seed());
    let e = must(
        &node,
        &admin,
        "POST",
        "/api/v1/members",
        Some(json!({"name": "Awa Diallo", "residence": "Cadenet", "pin": "602817"})),
    );
    let period = period_now(&node, &admin);
    must(
        &node,
        &admin,
        "POST",
        "/api/v1/allocations",
        Some(json!({"period": period})),
    );
    let o = must(
        &node,
        &admin,
        "POST",
        "/api/v1/outlets",
        Some(json!({"name": "Halle", "categories": ["vegetables"]})),
    );
    let (outlet, token, card) = (s(&o["outlet"]), s(&o["token"]), s(&e["card"]));
    assert_eq!(
        buy(&node, &token, &outlet, &card, "602817", &mut rng).0,
        200
    );
    assert_eq!(
        buy(&node, &token, &outlet, &card, "602817", &mut rng).0,
        200
    );
    assert_eq!(
        buy(&node, &token, &outlet, &card, "111111", &mut rng).0,
        401
    );
    let (code, _, _) = http(&node.api, "GET", "/metrics", &[], b"");
    assert_eq!(code, 401, "metrics without a token");
    let observer = token_file(&dir, "observer.token");
    let (code, head, body) = http(
        &node.api,
        "GET",
        "/metrics",
        &[("Authorization", &format!("Bearer {observer}"))],
        b"",
    );
    assert_eq!(code, 200, "{head}");
    let text = String::from_utf8(body).unwrap();
    let line = |name: &str, labels: &[&str]| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .map(str::to_owned)
    };
    let accepted = line(
        "caisse_purchases_total{",
        &["path=\"local\"", "outcome=\"accepted\""],
    )
    .unwrap_or_else(|| panic!("no accepted sales counted:\n{text}"));
    assert!(accepted.ends_with(" 2"), "{accepted}");
    let wrong = line("caisse_purchases_total{", &["outcome=\"wrong_pin\""]).expect("wrong PINs");
    assert!(wrong.ends_with(" 1"), "{wrong}");
    assert!(
        line("caisse_members ", &[]).is_some_and(|l| l.ends_with(" 1")),
        "{text}"
    );
    assert!(line("caisse_commit_seconds_count", &[]).is_some(), "{text}");
    assert!(line("caisse_purchase_seconds_bucket", &["path=\"local\""]).is_some());
    // The federation's side: its own document's size, request bytes, and
    // the last month's settlement (nothing owed on a lone node).
    let own_doc = line("caisse_federation_document_bytes{", &[]).expect("document size");
    let bytes: f64 = own_doc.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(bytes > 100.0, "{own_doc}");
    assert!(
        line(
            "caisse_federation_rpc_bytes_total{",
            &["direction=\"sent\""]
        )
        .is_some()
    );
    let awaiting = line(
        "caisse_settlement_statements{",
        &["role=\"creditor\"", "state=\"awaiting\""],
    )
    .expect("settlement state");
    assert!(awaiting.ends_with(" 0"), "{awaiting}");
    for secret in ["mem_", "card_", "Awa", "Cadenet", card.as_str()] {
        assert!(!text.contains(secret), "{secret} in the metrics");
    }
}

/// Finding 5, behind a reverse proxy: with the proxy listed in
/// `trusted_proxies`, the sign-in limiter counts each client's own address
/// (one attacker does not lock every till out), and the session cookie is
/// `Secure` when the console is served over https.
#[test]
fn behind_a_proxy_each_client_has_its_own_limit_and_cookies_are_secure() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse derrière un proxy", &[]);
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let config = config
        .replace("trusted_proxies = []", "trusted_proxies = [\"127.0.0.1\"]")
        .replace("secure_cookies = false", "secure_cookies = true");
    assert!(config.contains("secure_cookies = true"), "{config}");
    std::fs::write(dir.join("config.toml"), config).unwrap();
    let node = TestNode::start(&dir);
    let (_, head, body) = http(&node.api, "GET", "/", &[], b"");
    let set_cookie = head
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: caisse_session=")
        })
        .unwrap()
        .to_owned();
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
    let cookie = session_cookie(&head).unwrap();
    let csrf = csrf_of(&body);
    let sign_in = |client: &str| {
        http(
            &node.api,
            "POST",
            "/login/token",
            &[
                ("Cookie", &format!("caisse_session={cookie}")),
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("X-Forwarded-For", client),
            ],
            format!("csrf={csrf}&token=cst_wrong").as_bytes(),
        )
        .0
    };
    for _ in 0..5 {
        assert_eq!(sign_in("203.0.113.7"), 401);
    }
    assert_eq!(sign_in("203.0.113.7"), 429, "the attacker is limited");
    assert_eq!(
        sign_in("198.51.100.20"),
        401,
        "another client behind the same proxy was limited too"
    );
    // A header naming only the proxy itself falls back to the proxy's own
    // address: a bucket of its own, not the attacker's.
    assert_eq!(sign_in("127.0.0.1"), 401);
}

/// An audit is started and collected later (the audit of years of journal
/// outlasts a request), by the treasurer or the auditor only; a finding
/// names a member's account to the treasurer and only by pseudonym to the
/// auditor, and `caisse ledger check` exits 3 on it.
#[test]
fn an_audit_is_collected_later_and_names_members_by_pseudonym_to_the_auditor() {
    use caisse_node::store::{Op, encode_value, open_existing};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse auditée", &[]);
    let mut node = TestNode::start(&dir);
    let admin = token_file(&dir, "admin.token");
    let observer = token_file(&dir, "observer.token");
    let m = ok(
        &dir,
        &[
            "member",
            "enroll",
            "--name",
            "Anne Nomdefamille",
            "--residence",
            "Ici",
        ],
    );
    let member = s(&m["member"]);
    let period = s(&ok(&dir, &["status"])["today"])[..7].to_owned();
    ok(&dir, &["allocation", "issue", "--period", &period]);
    let t = must(
        &node,
        &admin,
        "POST",
        "/api/v1/tokens",
        Some(json!({"role": "auditor"})),
    );
    let auditor = s(&t["token"]);

    let collect = |node: &TestNode, token: &str, full: bool| -> Value {
        let (code, v) = api(
            node,
            token,
            "POST",
            "/api/v1/ledger/checks",
            Some(json!({"full": full})),
        );
        assert_eq!(code, 202, "{v}");
        let id = v["id"].as_u64().expect("an audit number");
        for _ in 0..600 {
            let v = must(
                node,
                token,
                "GET",
                &format!("/api/v1/ledger/checks/{id}"),
                None,
            );
            if v["finished"] == true {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("audit {id} did not finish in 30 s");
    };
    // Clean, collected, the whole journal when asked.
    let run = collect(&node, &admin, true);
    assert_eq!(run["result"]["findings"], json!([]), "{run}");
    assert_eq!(run["result"]["from"], 0, "{run}");
    assert_eq!(run["full"], true, "{run}");
    // The committee's token may not start one nor read one.
    let (code, _) = api(
        &node,
        &observer,
        "POST",
        "/api/v1/ledger/checks",
        Some(json!({})),
    );
    assert_eq!(code, 403);
    let (code, _) = api(
        &node,
        &observer,
        "GET",
        &format!("/api/v1/ledger/checks/{}", run["id"]),
        None,
    );
    assert_eq!(code, 403);
    // Nor may the auditor start a backup (the file holds names and
    // incomes) or read one's outcome.
    let (code, _) = api(
        &node,
        &auditor,
        "POST",
        "/api/v1/backups",
        Some(json!({"out": "/tmp/x.backup"})),
    );
    assert_eq!(code, 403);
    let (code, _) = api(&node, &auditor, "GET", "/api/v1/backups/1", None);
    assert_eq!(code, 403);
    let (code, v) = api(&node, &admin, "GET", "/api/v1/ledger/checks/9999", None);
    assert_eq!(code, 404, "{v}");
    assert!(s(&v["message"]).contains("start one again"), "{v}");

    // A member's cached balance edited behind the node's back.
    node.stop();
    {
        let store = open_existing(&dir).unwrap();
        let id: caisse_protocol::MemberId = member.parse().unwrap();
        let key = caisse_node::ledger::Account::Member(id).balance_key();
        store
            .apply(&[Op::Put(
                key,
                encode_value(&caisse_protocol::Amount::from_cents(999_999_00)),
            )])
            .unwrap();
        store.sync().unwrap();
    }
    let node = TestNode::start(&dir);
    let treasurer = collect(&node, &admin, true).to_string();
    assert!(
        treasurer.contains(&format!("member:{member}")),
        "{treasurer}"
    );
    for text in [
        collect(&node, &auditor, true).to_string(),
        collect(&node, &auditor, false).to_string(),
        must(
            &node,
            &auditor,
            "GET",
            "/api/v1/ledger/check?full=true",
            None,
        )
        .to_string(),
    ] {
        assert!(
            text.contains("member:acct_") && text.contains("cached balance"),
            "{text}"
        );
        assert!(
            !text.contains(&member) && !text.contains("mem_"),
            "the auditor saw a member id: {text}"
        );
    }
    let out = common::caisse(&dir, &["ledger", "check", "--full"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("PROBLEM"),
        "{out:?}"
    );
}
