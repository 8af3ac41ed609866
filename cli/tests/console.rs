//! The web console end to end, in headless Chromium against a real node:
//! language from the browser and switchable; a purchase at the till changes
//! the balance on the member's page, and a resubmitted sale is not charged
//! twice; a vote on the parliament page changes the tally; the registry
//! lists an accreditation made with the CLI; an outlet gets 403 on admin
//! and member pages; a form without its CSRF token is refused and changes
//! nothing; an observer cannot change anything; failed sign-ins are
//! rate-limited.
//!
//! Screenshots of every page at phone and desktop width:
//! `cargo test -p caisse-cli --test console -- --ignored screenshots`
//! (written to `screenshots/`, which is not committed).

mod common;
mod webdriver;

use std::path::{Path, PathBuf};

use common::{TestNode, ok, s};
use webdriver::{Browser, http};

/// A caisse with members, seats, criteria, an accredited producer (all
/// through the CLI), an outlet and an open proposal.
struct Demo {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    node: TestNode,
    base: String,
    card: String,
    pin: String,
    outlet_token: String,
    observer_token: String,
    admin_token: String,
    open_proposal: String,
    period: String,
    market: String,
}

fn vote_and_close(dir: &Path, id: &str) {
    for seat in ["seat-1", "seat-2", "seat-3"] {
        ok(
            dir,
            &[
                "parliament",
                "vote",
                "--proposal",
                id,
                "--seat",
                seat,
                "--choice",
                "yes",
            ],
        );
    }
    let closed = ok(dir, &["parliament", "close", "--proposal", id]);
    assert_eq!(closed["outcome"]["passed"], true, "{closed}");
}

fn demo() -> Demo {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse de Cadenet", &[]);
    let node = TestNode::start(&dir);
    let base = format!("http://{}", node.api);
    let today = s(&ok(&dir, &["status"])["today"]);
    let period = today[..7].to_owned();
    let mut members = Vec::new();
    for (i, name) in ["Awa Diallo", "Jean Martin", "Lucie Bernard"]
        .iter()
        .enumerate()
    {
        let m = ok(
            &dir,
            &[
                "member",
                "enroll",
                "--name",
                name,
                "--residence",
                "Cadenet",
                "--joined",
                "2026-01-01",
                "--income",
                &format!("{}", 900 + 400 * i),
                "--pin",
                "2468",
            ],
        );
        members.push((s(&m["member"]), s(&m["card"])));
    }
    for (kind, who) in [
        ("citizen", members[0].0.as_str()),
        ("citizen", members[1].0.as_str()),
    ] {
        ok(
            &dir,
            &["parliament", "seat", "add", "--kind", kind, "--member", who],
        );
    }
    ok(
        &dir,
        &[
            "parliament",
            "seat",
            "add",
            "--kind",
            "producer",
            "--holder",
            "Marie (GAEC des Collines)",
        ],
    );
    let crit = tmp.path().join("criteria.toml");
    std::fs::write(
        &crit,
        "name = \"Cadenet 2026\"\nversion = 1\nlocal_distance_km = 150\n[rule]\nall = [\n  { any = [{ label = \"organic\" }, { practice = \"agroecology\" }] },\n  { max_distance_km = 250 },\n]\n",
    )
    .unwrap();
    let p = ok(
        &dir,
        &[
            "parliament",
            "propose",
            "--title",
            "Critères 2026",
            "--criteria",
            crit.to_str().unwrap(),
        ],
    );
    vote_and_close(&dir, &s(&p["id"]));
    let farm = tmp.path().join("farm.toml");
    std::fs::write(
        &farm,
        "labels = [\"organic\"]\ndistance_km = 40\nprice_fairness_pct = 110\norigin = \"FR\"\n",
    )
    .unwrap();
    let producer = s(&ok(
        &dir,
        &[
            "producer",
            "register",
            "--name",
            "GAEC des Collines",
            "--attributes",
            farm.to_str().unwrap(),
        ],
    )["id"]);
    let p = ok(
        &dir,
        &[
            "parliament",
            "propose",
            "--title",
            "Conventionner le GAEC des Collines",
            "--accredit-producer",
            &producer,
            "--scope",
            "fresh-produce:100,dairy:80",
        ],
    );
    vote_and_close(&dir, &s(&p["id"]));
    let shop = ok(
        &dir,
        &[
            "outlet",
            "register",
            "--name",
            "Épicerie paysanne",
            "--categories",
            "fresh-produce,bread",
        ],
    );
    let market = s(&ok(&dir, &["outlet", "register", "--name", "Marché de Cadenet"])["outlet"]);
    // A name is text, never markup.
    ok(
        &dir,
        &[
            "outlet",
            "register",
            "--name",
            "<img src=x onerror=alert(1)>",
        ],
    );
    ok(&dir, &["allocation", "issue", "--period", &period]);
    for (m, _) in &members {
        ok(
            &dir,
            &["contribution", "record", "--member", m, "--period", &period],
        );
    }
    ok(
        &dir,
        &[
            "subsidy",
            "record",
            "--source",
            "local-authority",
            "--amount",
            "150",
            "--period",
            &period,
            "--key",
            "vir-2026-001",
        ],
    );
    // A criteria change left open, for the parliament page to show and vote on.
    let crit2 = tmp.path().join("criteria2.toml");
    std::fs::write(
        &crit2,
        "name = \"Cadenet 2026\"\nversion = 2\nlocal_distance_km = 100\n[rule]\nall = [\n  { any = [{ label = \"organic\" }, { practice = \"agroecology\" }] },\n  { max_distance_km = 150 },\n]\n",
    )
    .unwrap();
    let open = ok(
        &dir,
        &[
            "parliament",
            "propose",
            "--title",
            "Critères 2026, version 2",
            "--criteria",
            crit2.to_str().unwrap(),
        ],
    );
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    Demo {
        admin_token: read("admin.token"),
        observer_token: read("observer.token"),
        outlet_token: s(&shop["token"]),
        card: members[0].1.clone(),
        pin: "2468".into(),
        open_proposal: s(&open["id"]),
        period,
        market,
        base,
        node,
        dir,
        _tmp: tmp,
    }
}

/// Cents from a displayed amount (`€150.00`, `150,00 €`).
fn cents(text: &str) -> i64 {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    let v: i64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("no amount in {text:?}"));
    if text.contains('-') { -v } else { v }
}

fn sign_in_token(b: &Browser, base: &str, token: &str) {
    b.goto(&format!("{base}/"));
    b.fill("#token", token);
    b.click("#staff-h ~ form button[type=submit]");
}

fn sign_in_card(b: &Browser, base: &str, card: &str, pin: &str) {
    b.goto(&format!("{base}/"));
    b.fill("#card", card);
    b.fill("#pin", pin);
    b.click("#member-h ~ form button[type=submit]");
}

fn sign_out(b: &Browser) {
    b.click("form[action='/logout'] button");
    b.find("#member-h");
}

#[test]
fn the_console_in_a_real_browser() {
    if !webdriver::available() {
        return;
    }
    let d = demo();
    let base = d.base.as_str();
    let b = Browser::start("fr-FR");

    // The browser asks for French: the start page is in French; one link switches.
    b.goto(&format!("{base}/"));
    assert_eq!(b.text("h1"), "Connexion");
    assert_eq!(b.script("return document.documentElement.lang"), "fr");
    b.click("a.lang");
    b.wait_text("Sign in");
    assert_eq!(b.script("return document.documentElement.lang"), "en");
    // Unknown addresses: a page for people, JSON for programs.
    let (status, body) = http("GET", &format!("{base}/nowhere"), None, None);
    assert_eq!(status, 404);
    assert!(body.contains("<html"), "{body}");
    let (status, body) = http("GET", &format!("{base}/api/v1/nowhere"), None, None);
    assert_eq!(status, 404);
    assert!(body.contains("\"not_found\""), "{body}");

    // The member's page shows the balance.
    sign_in_card(&b, base, &d.card, &d.pin);
    b.wait_text("Left on my allocation");
    let before = cents(&b.text("#balance"));
    assert!(before > 1250, "balance {before}");
    assert!(
        b.body_text().contains("GAEC des Collines"),
        "accredited producer listed"
    );
    assert!(
        b.body_text().contains("Critères 2026, version 2"),
        "open vote listed"
    );
    sign_out(&b);

    // The till: a sale of 12.50 of fresh produce, all paid by the allocation.
    sign_in_token(&b, base, &d.outlet_token);
    b.wait_text("Charge the allocation");
    b.fill("#card", &d.card);
    b.fill("#pin", &d.pin);
    b.click("#cat1 option[value='fresh-produce']");
    b.fill("#amount1", "12.50");
    let sale = b.property("input[name=sale]", "value");
    b.click("form[action='/till'] button[type=submit]");
    b.wait_text("Sale recorded");
    assert_eq!(cents(&b.text("#allocation-part")), 1250);
    assert_eq!(cents(&b.text("#member-part")), 0);
    // The same sale sent again (a double click, a reload): answered, not charged.
    let csrf = b.property("input[name=csrf]", "value");
    b.script(&format!(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/till';
         for (const [k, v] of [['csrf', '{csrf}'], ['sale', '{sale}'], ['card', '{card}'], ['pin', '{pin}'],
                              ['cat1', 'fresh-produce'], ['amount1', '12.50']]) {{
           const i = document.createElement('input'); i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i);
         }}
         document.body.appendChild(f); f.submit();",
        card = d.card,
        pin = d.pin
    ));
    b.wait_text("was not charged again");
    // A refusal says why: more than the balance.
    b.fill("#card", &d.card);
    b.fill("#pin", &d.pin);
    b.click("#cat1 option[value='fresh-produce']");
    b.fill("#amount1", "5000");
    b.click("form[action='/till'] button[type=submit]");
    b.wait_text("insufficient balance");
    // An outlet's session cannot open admin or member pages.
    let outlet_cookie = b.cookie("caisse_session").expect("session cookie");
    for page in ["/treasury", "/report", "/member", "/parliament"] {
        let (status, _) = http("GET", &format!("{base}{page}"), Some(&outlet_cookie), None);
        assert_eq!(status, 403, "outlet on {page}");
    }
    b.goto(&format!("{base}/treasury"));
    assert_eq!(b.text("h1"), "Not allowed");
    sign_out(&b);

    // The member's page shows the balance after the one charge.
    sign_in_card(&b, base, &d.card, &d.pin);
    b.wait_text("Left on my allocation");
    let after = cents(&b.text("#balance"));
    assert_eq!(before - after, 1250, "charged once: {before} -> {after}");
    assert!(b.body_text().contains("Purchase at Épicerie paysanne"));

    // A vote through the parliament page changes the tally.
    b.goto(&format!("{base}/parliament"));
    let tally = format!("#tally-{}", d.open_proposal);
    assert!(b.text(&tally).contains("yes 0"), "{}", b.text(&tally));
    assert!(
        b.body_text().contains("max_distance_km"),
        "criteria diff shown"
    );
    b.click(&format!("#p-{} input[value=yes]", d.open_proposal));
    b.click(&format!("#p-{} form.vote button", d.open_proposal));
    b.wait_text("Vote of seat-1 recorded: yes");
    assert!(b.text(&tally).contains("yes 1"), "{}", b.text(&tally));
    let shown = ok(&d.dir, &["parliament", "show"]);
    let votes = shown["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| s(&p["id"]) == d.open_proposal)
        .map(|p| p["votes"].clone())
        .unwrap();
    assert_eq!(votes["1"], "yes", "{votes}");
    sign_out(&b);

    // The producers' representative has no card: a seat token lets her vote
    // for her seat, and opens nothing else.
    let seat_token = s(&ok(
        &d.dir,
        &["token", "create", "--role", "seat", "--seat", "seat-3"],
    )["token"]);
    sign_in_token(&b, base, &seat_token);
    b.wait_text("Proposals");
    assert!(
        b.try_find(&format!("#p-{} select[name=seat]", d.open_proposal))
            .is_none()
    );
    b.click(&format!("#p-{} input[value=no]", d.open_proposal));
    b.click(&format!("#p-{} form.vote button", d.open_proposal));
    b.wait_text("Vote of seat-3 recorded: no");
    assert!(b.text(&tally).contains("no 1"), "{}", b.text(&tally));
    let seat_cookie = b.cookie("caisse_session").expect("cookie");
    for page in ["/treasury", "/member", "/till"] {
        let (status, _) = http("GET", &format!("{base}{page}"), Some(&seat_cookie), None);
        assert_eq!(status, 403, "seat token on {page}");
    }
    sign_out(&b);

    // A producer signs in with the token its caisse issued and sees its own
    // page: where it is accredited and until when; nothing else opens.
    let gaec = ok(&d.dir, &["producer", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|p| s(&p["name"]) == "GAEC des Collines")
        .map(|p| s(&p["id"]))
        .expect("the demo's producer");
    let producer_token = s(&ok(
        &d.dir,
        &["token", "create", "--role", "producer", "--producer", &gaec],
    )["token"]);
    sign_in_token(&b, base, &producer_token);
    b.wait_text("Where I am accredited");
    let page = b.body_text();
    assert!(page.contains("GAEC des Collines"), "{page}");
    assert!(page.contains("active"), "{page}");
    let producer_cookie = b.cookie("caisse_session").expect("cookie");
    for page in ["/treasury", "/member", "/till", "/parliament"] {
        let (status, _) = http(
            "GET",
            &format!("{base}{page}"),
            Some(&producer_cookie),
            None,
        );
        assert_eq!(status, 403, "producer token on {page}");
    }
    sign_out(&b);

    // The public registry lists the accreditation voted through the CLI.
    b.goto(&format!("{base}/registry"));
    b.wait_text("GAEC des Collines");
    let row = b.script(
        "return [...document.querySelectorAll('#registry tbody tr')].map(r => r.innerText).find(t => t.includes('GAEC')) || ''",
    );
    let row = s(&row);
    assert!(row.contains("Cadenet 2026 v1"), "{row}");
    assert!(row.contains("Fresh fruit and vegetables 100"), "{row}");
    assert!(row.contains("active"), "{row}");
    b.click("#f-category option[value='bread']");
    b.click("form.filters button");
    b.wait_text("Épicerie paysanne");
    assert!(!b.body_text().contains("GAEC des Collines"), "filtered out");

    // Without its CSRF token a form is refused, and nothing changes.
    sign_in_token(&b, base, &d.admin_token);
    b.wait_text("Allocation run");
    let admin_cookie = b.cookie("caisse_session").expect("cookie");
    b.fill("#alloc-period", "2031-01");
    b.script("document.querySelector(\"form[action='/treasury/allocations'] input[name=csrf]\").remove()");
    b.click("form[action='/treasury/allocations'] button");
    b.wait_text("This form was refused");
    let (status, _) = http(
        "POST",
        &format!("{base}/treasury/allocations"),
        Some(&admin_cookie),
        Some(&[("period", "2031-01")]),
    );
    assert_eq!(status, 403);
    let (status, _) = http(
        "POST",
        &format!("{base}/treasury/allocations"),
        Some(&admin_cookie),
        Some(&[("period", "2031-01"), ("csrf", "0000")]),
    );
    assert_eq!(status, 403);
    let report = ok(&d.dir, &["report", "--period", "2031-01"]);
    assert_eq!(
        report["allocations"]["count"], 0,
        "nothing issued: {report}"
    );
    // With it, the admin's form works.
    b.goto(&format!("{base}/treasury?period={}", d.period));
    // The desk enrols a resident; the flash gives the card number.
    b.click("details:has(form[action='/treasury/members']) summary");
    b.fill("#m-name", "Nadia Benali");
    b.fill("#m-residence", "Cadenet");
    b.fill("#m-birth", "1990");
    b.fill("#m-income", "1100");
    b.fill("#m-pin", "9753");
    b.click("form[action='/treasury/members'] button");
    b.wait_text("Nadia Benali is enrolled. Card number to give them: card_");
    assert!(b.text("table").contains("Nadia Benali"));
    let notice = b.text(".notice");
    let nadia = format!(
        "card_{}",
        notice
            .split("card_")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
    );
    // Her contribution on the scale, then a subsidy, once per bank reference.
    b.click("details:has(form[action='/treasury/contributions']) summary");
    b.fill("#c-card", &nadia);
    b.click("form[action='/treasury/contributions'] button");
    b.wait_text("Contribution recorded:");
    for expect in [
        "Subsidy recorded: €200.00",
        "already recorded: nothing was added",
    ] {
        b.click("details:has(form[action='/treasury/subsidies']) summary");
        b.click("#s-source option[value='state']");
        b.fill("#s-amount", "200");
        b.fill("#s-key", "VIR-2026-0042");
        b.click("form[action='/treasury/subsidies'] button");
        b.wait_text(expect);
    }

    b.fill("#alloc-period", &d.period);
    b.click("form[action='/treasury/allocations'] button");
    b.wait_text("already issued");
    assert!(
        b.body_text().contains("<img src=x onerror=alert(1)>"),
        "shown as text"
    );
    assert_eq!(
        b.script("return document.querySelectorAll('img').length"),
        0
    );
    b.goto(&format!("{base}/report?period={}", d.period));
    b.find("svg#by-category");
    // The admin puts an accreditation to the vote from the parliament page.
    b.goto(&format!("{base}/parliament"));
    b.click("details:has(input[value=accredit]) summary");
    b.fill("#acc-title", "Conventionner le marché");
    b.click(&format!("#acc-subject option[value='{}']", d.market));
    b.fill("#acc-scope", "bread:150");
    b.click("details:has(input[value=accredit]) button");
    b.wait_text("Proposal not opened");
    b.click("details:has(input[value=accredit]) summary");
    b.fill("#acc-title", "Conventionner le marché");
    b.click(&format!("#acc-subject option[value='{}']", d.market));
    b.fill("#acc-scope", "bread:50, fresh-produce");
    b.click("details:has(input[value=accredit]) button");
    b.wait_text("Vote opened");
    assert!(
        b.body_text().contains(
            "Accredit Marché de Cadenet for Bread 50 %, Fresh fruit and vegetables 100 %"
        ),
        "{}",
        b.body_text()
    );
    // The proposals once only in the CLI have their forms too.
    b.click("details:has(input[value=household]) summary");
    b.fill("#hh-title", "Allocation par foyer");
    b.fill("#hh-base", "100");
    b.fill("#hh-extra", "50,00");
    b.click("details:has(input[value=household]) button");
    b.wait_text("Vote opened");
    assert!(
        b.body_text()
            .contains("An allocation of €100.00 per household and €50.00 per extra member"),
        "{}",
        b.body_text()
    );
    b.click("details:has(input[value=scale]) summary");
    b.fill("#scale-title", "Barème 2027");
    b.fill("#scale-min", "1");
    b.fill("#scale-max", "250");
    b.fill("#scale-floor", "800");
    b.fill("#scale-ceiling", "5000");
    b.click("details:has(input[value=scale]) button");
    b.wait_text("Vote opened");
    b.click("details:has(input[value=rollover]) summary");
    b.fill("#roll-title", "Report plafonné");
    b.click("details:has(input[value=rollover]) input[value=cap]");
    b.fill("#roll-cap", "200");
    b.click("details:has(input[value=rollover]) button");
    b.wait_text("Carry over, capped at €200.00");
    b.click("details:has(input[value=recognition]) summary");
    b.fill("#rec-title", "Reconnaissance");
    b.click("details:has(input[value=recognition]) input[value=listed]");
    b.click("details:has(input[value=recognition]) button");
    b.wait_text("Vote opened");
    let kinds: Vec<serde_json::Value> = ok(&d.dir, &["parliament", "show"])["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].clone())
        .collect();
    let text = serde_json::to_string(&kinds).unwrap();
    for needle in [
        "per-household",
        "\"max\":\"250.00\"",
        "\"income_ceiling\":\"5000.00\"",
        "\"cap\"",
        "listed",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    // …and a revocation, which the parliament passes (votes through the CLI):
    // the public registry then shows it with its day and reason.
    b.click("details:has(input[value=revoke]) summary");
    b.fill("#rev-title", "Retrait du GAEC");
    b.script(
        "const s = document.querySelector('#rev-acc');
         s.value = [...s.options].find(o => o.text.includes('GAEC')).value;",
    );
    b.fill("#rev-reason", "pesticides found in a sample");
    b.click("details:has(input[value=revoke]) button");
    b.wait_text("Vote opened");
    let shown = ok(&d.dir, &["parliament", "show"]);
    let revoke = shown["proposals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| s(&p["title"]) == "Retrait du GAEC")
        .map(|p| s(&p["id"]))
        .expect("the revocation proposal");
    vote_and_close(&d.dir, &revoke);
    b.goto(&format!("{base}/registry"));
    let row = s(&b.script(
        "return [...document.querySelectorAll('#registry tbody tr')].map(r => r.innerText).find(t => t.includes('GAEC')) || ''",
    ));
    assert!(row.contains("revoked on"), "{row}");
    assert!(row.contains("pesticides found in a sample"), "{row}");
    sign_out(&b);

    // An observer reads but cannot change anything, even with a valid token.
    sign_in_token(&b, base, &d.observer_token);
    b.wait_text("Treasury");
    assert!(b.try_find("form[action='/treasury/allocations']").is_none());
    assert!(b.body_text().contains("shown to the caisse's admin only"));
    let observer_cookie = b.cookie("caisse_session").expect("cookie");
    // The committee downloads the anonymised export for researchers.
    let get_csv = |file: &str| {
        let (status, body) = http(
            "GET",
            &format!("{base}/report/export/{file}?period={}", d.period),
            Some(&observer_cookie),
            None,
        );
        assert_eq!(status, 200, "{file}: {body}");
        body
    };
    let purchases = get_csv("purchases.csv");
    let members = get_csv("members.csv");
    assert!(
        purchases.starts_with("member,week,outlet,category,producer,amount,coverage_pct\n"),
        "{purchases}"
    );
    assert!(members.contains("age_band"), "{members}");
    for secret in ["Awa Diallo", "Cadenet", "card_", "mem_"] {
        assert!(
            !purchases.contains(secret) && !members.contains(secret),
            "{secret} leaked"
        );
    }
    // The two files share their pseudonyms (so they can be joined), where
    // any line is rare-free enough to be exported.
    if let Some(line) = purchases.lines().nth(1) {
        let pseudonym = line.split(',').next().unwrap().to_owned();
        assert!(
            members.contains(&pseudonym),
            "{pseudonym} not in members.csv"
        );
    }
    let csrf = b.property("form[action='/logout'] input[name=csrf]", "value");
    let (status, _) = http(
        "POST",
        &format!("{base}/treasury/allocations"),
        Some(&observer_cookie),
        Some(&[("period", "2031-02"), ("csrf", &csrf)]),
    );
    assert_eq!(status, 403);
    let (status, _) = http(
        "POST",
        &format!("{base}/parliament/vote"),
        Some(&observer_cookie),
        Some(&[
            ("proposal", &d.open_proposal),
            ("seat", "2"),
            ("choice", "no"),
            ("csrf", &csrf),
        ]),
    );
    assert_eq!(status, 403);
    sign_out(&b);

    // Failed sign-ins are rate-limited.
    for _ in 0..5 {
        sign_in_token(&b, base, "not-a-token");
        b.wait_text("This token is not known here");
    }
    sign_in_token(&b, base, &d.admin_token);
    b.wait_text("Too many failed sign-in attempts");
    drop(b);
    drop(d.node);
}

#[test]
#[ignore = "writes screenshots; run with --ignored screenshots"]
fn screenshots() {
    if !webdriver::available() {
        return;
    }
    let d = demo();
    let base = d.base.as_str();
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../screenshots");
    std::fs::create_dir_all(&out).unwrap();
    let b = Browser::start("fr-FR");
    let shoot = |name: &str| {
        for (label, w, h) in [("phone", 390, 1700), ("desktop", 1280, 1400)] {
            b.resize(w, h);
            let png = b.screenshot();
            assert!(png.starts_with(b"\x89PNG"), "not a PNG");
            std::fs::write(out.join(format!("{name}-{label}.png")), png).unwrap();
        }
        b.resize(1280, 900);
    };
    b.goto(&format!("{base}/"));
    shoot("01-sign-in");
    sign_in_token(&b, base, &d.outlet_token);
    b.find("#card");
    shoot("02-till");
    b.fill("#card", &d.card);
    b.fill("#pin", &d.pin);
    b.click("#cat1 option[value='fresh-produce']");
    b.fill("#amount1", "18,40");
    b.click("details.more-line summary");
    b.click("#cat2 option[value='bread']");
    b.fill("#amount2", "3,20");
    b.click("form[action='/till'] button[type=submit]");
    b.find("#receipt");
    shoot("03-till-receipt");
    sign_out(&b);
    sign_in_card(&b, base, &d.card, &d.pin);
    b.find("#balance");
    shoot("04-member");
    b.goto(&format!("{base}/parliament"));
    shoot("05-parliament");
    sign_out(&b);
    b.goto(&format!("{base}/registry"));
    shoot("06-registry");
    sign_in_token(&b, base, &d.admin_token);
    // The sign-in must land before the next page is asked for.
    b.wait_text("Trésorerie");
    b.goto(&format!("{base}/treasury?period={}", d.period));
    shoot("07-treasury");
    b.goto(&format!("{base}/report?period={}", d.period));
    shoot("08-report");
    b.goto(&format!("{base}/parliament"));
    b.script(
        "const forms = [...document.querySelectorAll('form[action=\"/parliament/propose\"]')];
         forms.forEach(f => f.closest('details').open = true);
         forms[0].closest('details').scrollIntoView();",
    );
    shoot("09-parliament-admin");
    let gaec = ok(&d.dir, &["producer", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|p| s(&p["name"]) == "GAEC des Collines")
        .map(|p| s(&p["id"]))
        .expect("the demo's producer");
    let producer_token = s(&ok(
        &d.dir,
        &["token", "create", "--role", "producer", "--producer", &gaec],
    )["token"]);
    sign_out(&b);
    sign_in_token(&b, base, &producer_token);
    b.wait_text("Où je suis conventionné");
    shoot("10-producer");
    eprintln!("screenshots written to {}", out.display());
}

/// A member of caisse A buys at caisse B's till, in the browser: B forwards
/// the sale to A over libp2p, the till shows A's answer, and A's member page
/// shows the purchase; each caisse's public registry lists the other's
/// accreditations.
#[test]
fn a_sale_at_another_caisses_till() {
    if !webdriver::available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    let mut first: Option<String> = None;
    for n in ["A", "B"] {
        let dir = tmp.path().join(n);
        let mut extra = vec!["--listen", "/ip4/127.0.0.1/tcp/0", "--federation", "webfed"];
        let boot;
        if let Some(a) = &first {
            boot = a.clone();
            extra.extend_from_slice(&["--bootstrap", &boot]);
        }
        TestNode::init(&dir, &format!("Caisse {n}"), &extra);
        nodes.push(TestNode::start(&dir));
        if first.is_none() {
            first = Some(s(&common::node_json(&dir)["listen"][0]));
        }
        dirs.push(dir);
    }
    let today = s(&ok(&dirs[0], &["status"])["today"]);
    let period = &today[..7];
    let mut cards = Vec::new();
    let mut tokens = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        for j in 0..2 {
            let m = ok(
                dir,
                &[
                    "member",
                    "enroll",
                    "--name",
                    &format!("Membre {i}{j}"),
                    "--residence",
                    "Ici",
                    "--joined",
                    "2026-01-01",
                    "--pin",
                    "1357",
                ],
            );
            ok(
                dir,
                &[
                    "parliament",
                    "seat",
                    "add",
                    "--kind",
                    "citizen",
                    "--member",
                    &s(&m["member"]),
                ],
            );
            cards.push(s(&m["card"]));
        }
        let shop = ok(
            dir,
            &[
                "outlet",
                "register",
                "--name",
                &format!("Épicerie {}", ["A", "B"][i]),
                "--categories",
                "bread",
            ],
        );
        tokens.push(s(&shop["token"]));
        ok(dir, &["allocation", "issue", "--period", period]);
    }
    let ids: Vec<String> = dirs
        .iter()
        .map(|d| s(&common::node_json(d)["caisse_id"]))
        .collect();
    for (i, dir) in dirs.iter().enumerate() {
        common::wait_until("the federation to form", 30, || {
            ok(dir, &["peers"]).as_array().unwrap().len() == 1
        });
        common::pass(dir, &["--recognise", &ids[1 - i]]);
        common::pass(dir, &["--recognition", "listed"]);
    }
    common::wait_until("B's outlet known at A", 20, || {
        ok(&dirs[0], &["accreditation", "list", "--federation"])
            .as_array()
            .unwrap()
            .iter()
            .any(|a| s(&a["subject_name"]) == "Épicerie B")
    });
    let base_a = format!("http://{}", nodes[0].api);
    let base_b = format!("http://{}", nodes[1].api);
    let b = Browser::start("en-GB");

    sign_in_token(&b, &base_b, &tokens[1]);
    b.wait_text("Charge the allocation");
    b.fill("#card", &cards[0]);
    b.fill("#pin", "1357");
    b.click("#cat1 option[value='bread']");
    b.fill("#amount1", "7.50");
    b.click("form[action='/till'] button[type=submit]");
    b.wait_text("Sale recorded");
    assert_eq!(cents(&b.text("#allocation-part")), 750);
    // A wrong PIN is refused by the card's home caisse, in words.
    b.fill("#card", &cards[0]);
    b.fill("#pin", "0000");
    b.click("#cat1 option[value='bread']");
    b.fill("#amount1", "1.00");
    b.click("form[action='/till'] button[type=submit]");
    b.wait_text("wrong PIN");
    sign_out(&b);

    sign_in_card(&b, &base_a, &cards[0], "1357");
    b.wait_text("Left on my allocation");
    assert_eq!(cents(&b.text("#balance")), 10000 - 750);
    assert!(
        b.body_text()
            .contains("Purchase at another caisse's outlet"),
        "{}",
        b.body_text()
    );
    sign_out(&b);

    b.goto(&format!("{base_a}/registry"));
    b.wait_text("Épicerie B");
    let row = s(&b.script(
        "return [...document.querySelectorAll('#registry tbody tr')].map(r => r.innerText).find(t => t.includes('Épicerie B')) || ''",
    ));
    assert!(row.contains("Caisse B"), "{row}");
    drop(b);
    drop(nodes);
}
