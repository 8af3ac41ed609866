//! The food parliament through the real binary: composition rule, criteria
//! by vote with explained evaluations, accreditation by vote gating sales,
//! revocation stopping them at once, refused votes, a failed proposal
//! changing nothing, and a report matching hand-computed figures.

mod common;

use common::{TestNode, caisse, json, ok, s};

fn vote_all(dir: &std::path::Path, proposal: &str, seats: &[u32], choice: &str) {
    for seat in seats {
        ok(
            dir,
            &[
                "parliament",
                "vote",
                "--proposal",
                proposal,
                "--seat",
                &format!("seat-{seat}"),
                "--choice",
                choice,
            ],
        );
    }
}

#[test]
fn a_parliament_decides_what_the_allocation_buys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse du parlement", &[]);
    let _node = TestNode::start(&dir);
    let today = s(&ok(&dir, &["status"])["today"]);
    let period = &today[..7];

    let mut members = Vec::new();
    for i in 0..6 {
        let m = ok(
            &dir,
            &[
                "member",
                "enroll",
                "--name",
                &format!("Citoyen {i}"),
                "--residence",
                "Cadenet",
                "--joined",
                "2026-01-01",
                "--income",
                "1200",
            ],
        );
        members.push((s(&m["member"]), s(&m["card"])));
    }

    // Fewer than half citizens: the parliament cannot vote, and says why.
    ok(
        &dir,
        &[
            "parliament",
            "seat",
            "add",
            "--kind",
            "citizen",
            "--member",
            &members[0].0,
        ],
    );
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
    ok(
        &dir,
        &[
            "parliament",
            "seat",
            "add",
            "--kind",
            "worker",
            "--holder",
            "Karim (épicerie)",
        ],
    );
    let (code, v) = json(
        &dir,
        &[
            "parliament",
            "propose",
            "--title",
            "Too early",
            "--allocation",
            "120",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        s(&v["message"]).contains("only 1 of its 3 seats are citizens"),
        "{v}"
    );
    let (code, _) = json(&dir, &["parliament", "seat", "add", "--kind", "citizen"]);
    assert_eq!(code, 2, "a citizen seat needs a member");
    ok(
        &dir,
        &[
            "parliament",
            "seat",
            "add",
            "--kind",
            "citizen",
            "--member",
            &members[1].0,
        ],
    );
    ok(
        &dir,
        &[
            "parliament",
            "seat",
            "add",
            "--kind",
            "citizen",
            "--member",
            &members[2].0,
        ],
    );
    let (code, v) = json(
        &dir,
        &[
            "parliament",
            "seat",
            "add",
            "--kind",
            "citizen",
            "--member",
            &members[2].0,
        ],
    );
    assert_eq!(code, 2, "one person, one seat: {v}");
    let shown = ok(&dir, &["parliament", "show"]);
    assert_eq!(shown["can_vote"], true);
    let seats = [1, 2, 3, 4, 5];

    // Producers declare attributes.
    let farm_a = tmp.path().join("a.toml");
    std::fs::write(&farm_a, "labels = [\"organic\"]\ndistance_km = 40\nprice_fairness_pct = 110\norigin = \"FR\"\n[evidence]\nlabels = \"Ecocert FR-BIO-01 #1234\"\n").unwrap();
    let farm_b = tmp.path().join("b.toml");
    std::fs::write(
        &farm_b,
        "labels = []\ndistance_km = 300\nprice_fairness_pct = 95\norigin = \"ES\"\n",
    )
    .unwrap();
    let a = s(&ok(
        &dir,
        &[
            "producer",
            "register",
            "--name",
            "GAEC des Collines",
            "--attributes",
            farm_a.to_str().unwrap(),
        ],
    )["id"]);
    let b = s(&ok(
        &dir,
        &[
            "producer",
            "register",
            "--name",
            "AgroExport SA",
            "--attributes",
            farm_b.to_str().unwrap(),
        ],
    )["id"]);
    let (code, v) = json(&dir, &["producer", "evaluate", &a]);
    assert_eq!(code, 2, "no criteria yet: {v}");

    // A criteria proposal passes.
    let crit = tmp.path().join("criteria.toml");
    std::fs::write(&crit, "name = \"Cadenet 2026\"\nversion = 1\nlocal_distance_km = 150\n[rule]\nall = [\n  { any = [{ label = \"organic\" }, { practice = \"agroecology\" }] },\n  { max_distance_km = 250 },\n  { min_price_fairness_pct = 100 },\n]\n").unwrap();
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
    let pid = s(&p["id"]);
    // Not closable while open and not everyone voted.
    let (code, v) = json(&dir, &["parliament", "close", "--proposal", &pid]);
    assert_eq!(code, 2, "{v}");
    // A seat changes its vote while open: it replaces, it does not add.
    ok(
        &dir,
        &[
            "parliament",
            "vote",
            "--proposal",
            &pid,
            "--seat",
            "seat-1",
            "--choice",
            "no",
        ],
    );
    let changed = ok(
        &dir,
        &[
            "parliament",
            "vote",
            "--proposal",
            &pid,
            "--seat",
            "seat-1",
            "--choice",
            "yes",
        ],
    );
    assert_eq!(s(&changed["replaced"]), "no");
    vote_all(&dir, &pid, &[2, 3, 4], "yes");
    ok(
        &dir,
        &[
            "parliament",
            "vote",
            "--proposal",
            &pid,
            "--seat",
            "5",
            "--choice",
            "abstain",
        ],
    );
    let closed = ok(&dir, &["parliament", "close", "--proposal", &pid]);
    assert_eq!(closed["outcome"]["passed"], true, "{closed}");
    assert_eq!(
        (
            closed["outcome"]["yes"].clone(),
            closed["outcome"]["abstain"].clone()
        ),
        (4.into(), 1.into())
    );
    let (code, v) = json(
        &dir,
        &[
            "parliament",
            "vote",
            "--proposal",
            &pid,
            "--seat",
            "2",
            "--choice",
            "no",
        ],
    );
    assert_eq!(code, 2, "no vote after closing: {v}");
    assert_eq!(s(&ok(&dir, &["criteria"])["criteria"]["version"]), "1");

    // Producers are evaluated against it, with readable explanations.
    let ea = ok(&dir, &["producer", "evaluate", &a]);
    assert_eq!(ea["evaluation"]["passed"], true);
    let eb = ok(&dir, &["producer", "evaluate", &b]);
    assert_eq!(eb["evaluation"]["passed"], false);
    let failures = eb["evaluation"]["failures"].to_string();
    assert!(
        failures.contains("300 km is farther than the maximum of 250 km"),
        "{failures}"
    );
    assert!(
        failures.contains("pays 95% of the fair price, below the minimum of 100%"),
        "{failures}"
    );
    let human = caisse(&dir, &["producer", "evaluate", &b]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("FAIL"));
    // A producer that fails the criteria cannot even be proposed for accreditation.
    let (code, v) = json(
        &dir,
        &[
            "parliament",
            "propose",
            "--title",
            "B",
            "--accredit-producer",
            &b,
            "--scope",
            "fresh-produce",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        s(&v["message"]).contains("does not meet criteria version 1"),
        "{v}"
    );

    // An outlet registered without categories sells nothing under the allocation…
    let shop = ok(&dir, &["outlet", "register", "--name", "Épicerie paysanne"]);
    let shop_id = s(&shop["outlet"]);
    ok(&dir, &["allocation", "issue", "--period", period]);
    let card = members[3].1.clone();
    let buy = |args: &[&str]| {
        let mut all = vec![
            "purchase",
            "--card",
            card.as_str(),
            "--outlet",
            shop_id.as_str(),
        ];
        all.extend_from_slice(args);
        json(&dir, &all)
    };
    assert_eq!(
        s(&buy(&["--amount", "5", "--category", "fresh-produce"]).1["error"]),
        "not_conventioned"
    );
    // …until the parliament accredits it, with Cadenet-style coverage tiers.
    let p = ok(
        &dir,
        &[
            "parliament",
            "propose",
            "--title",
            "Épicerie paysanne",
            "--accredit-outlet",
            &shop_id,
            "--scope",
            "fresh-produce:100,bread:66",
        ],
    );
    vote_all(&dir, &s(&p["id"]), &seats, "yes");
    assert_eq!(
        ok(&dir, &["parliament", "close", "--proposal", &s(&p["id"])])["outcome"]["passed"],
        true
    );
    let p = ok(
        &dir,
        &[
            "parliament",
            "propose",
            "--title",
            "GAEC",
            "--accredit-producer",
            &a,
            "--scope",
            "fresh-produce",
        ],
    );
    vote_all(&dir, &s(&p["id"]), &seats, "yes");
    assert_eq!(
        ok(&dir, &["parliament", "close", "--proposal", &s(&p["id"])])["outcome"]["passed"],
        true
    );
    let shown = ok(&dir, &["producer", "show", &a]);
    assert_eq!(s(&shown["accreditations"][0]["status"]), "active");

    let (code, r) = buy(&[
        "--line",
        &format!("fresh-produce:20:{a}"),
        "--line",
        "bread:10",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(s(&r["total"]), "30.00");
    assert_eq!(s(&r["allocation_part"]), "26.60"); // 20.00 at 100% + 10.00 at 66% = 6.60
    assert_eq!(s(&r["member_part"]), "3.40");
    assert_eq!(s(&r["balance_after"]), "73.40");
    assert_eq!(
        s(&buy(&["--amount", "4", "--category", "dairy"]).1["error"]),
        "not_conventioned"
    );
    let (_, v) = buy(&["--line", &format!("fresh-produce:4:{b}")]);
    assert_eq!(s(&v["error"]), "not_conventioned", "{v}");
    assert!(
        s(&v["message"]).contains("AgroExport SA is not accredited"),
        "{v}"
    );

    // Late votes and removed seats are refused.
    let late = ok(
        &dir,
        &[
            "parliament",
            "propose",
            "--title",
            "Late",
            "--rollover",
            "expire",
            "--window-minutes",
            "0",
        ],
    );
    let (code, v) = json(
        &dir,
        &[
            "parliament",
            "vote",
            "--proposal",
            &s(&late["id"]),
            "--seat",
            "1",
            "--choice",
            "yes",
        ],
    );
    assert_eq!(code, 2);
    assert!(s(&v["message"]).contains("late"), "{v}");
    let closed_late = ok(
        &dir,
        &["parliament", "close", "--proposal", &s(&late["id"])],
    );
    assert_eq!(closed_late["outcome"]["passed"], false);
    assert!(
        s(&closed_late["outcome"]["reason"]).contains("quorum"),
        "{closed_late}"
    );

    // A failed proposal changes nothing.
    let before = ok(&dir, &["policy"]);
    let p = ok(
        &dir,
        &[
            "parliament",
            "propose",
            "--title",
            "150 EUR",
            "--allocation",
            "150",
        ],
    );
    vote_all(&dir, &s(&p["id"]), &[1, 2], "yes");
    vote_all(&dir, &s(&p["id"]), &[3, 4, 5], "no");
    let rejected = ok(&dir, &["parliament", "close", "--proposal", &s(&p["id"])]);
    assert_eq!(rejected["outcome"]["passed"], false);
    assert!(s(&rejected["outcome"]["reason"]).contains("rejected: 2 yes, 3 no"));
    assert_eq!(ok(&dir, &["policy"]), before);

    ok(&dir, &["parliament", "seat", "remove", "--seat", "seat-5"]);
    let p = ok(
        &dir,
        &[
            "parliament",
            "propose",
            "--title",
            "Stop",
            "--revoke",
            &s(&ok(&dir, &["accreditation", "list"])
                .as_array()
                .unwrap()
                .iter()
                .find(|x| s(&x["subject_name"]) == "Épicerie paysanne")
                .unwrap()["id"]),
            "--reason",
            "left the network",
        ],
    );
    let (code, v) = json(
        &dir,
        &[
            "parliament",
            "vote",
            "--proposal",
            &s(&p["id"]),
            "--seat",
            "5",
            "--choice",
            "yes",
        ],
    );
    assert_eq!(code, 2);
    assert!(s(&v["message"]).contains("removed"), "{v}");
    vote_all(&dir, &s(&p["id"]), &[1, 2, 3, 4], "yes");
    assert_eq!(
        ok(&dir, &["parliament", "close", "--proposal", &s(&p["id"])])["outcome"]["passed"],
        true
    );
    // The revocation stops sales at once.
    assert_eq!(
        s(&buy(&["--amount", "1", "--category", "bread"]).1["error"]),
        "not_conventioned"
    );

    // Contributions and a subsidy, then the report against hand-computed figures.
    for (m, _) in &members {
        ok(
            &dir,
            &[
                "contribution",
                "record",
                "--member",
                m,
                "--period",
                period,
                "--amount",
                "20",
            ],
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
            "300",
            "--period",
            period,
            "--key",
            "mairie-1",
        ],
    );
    let report = ok(&dir, &["report", "--period", period, "--format", "json"]);
    assert_eq!(report["members"]["active"], 6);
    assert_eq!(report["allocations"]["count"], 6);
    assert_eq!(s(&report["allocations"]["total"]), "600.00");
    assert_eq!(s(&report["contributions"]["total"]), "120.00");
    assert_eq!(s(&report["subsidies_total"]), "300.00");
    assert_eq!(s(&report["budget_balance"]), "-180.00"); // 120 + 300 - 600
    assert_eq!(report["contribution_share_bp"], 2857); // 120 / 420
    assert_eq!(s(&report["spending"]["total"]), "30.00");
    assert_eq!(s(&report["spending"]["allocation_part"]), "26.60");
    assert_eq!(report["spending"]["organic_bp"], 6666); // 20 of 30 from the organic farm
    assert_eq!(report["spending"]["fresh_bp"], 6666);
    assert_eq!(report["spending"]["local_bp"], 6666); // 40 km <= 150 km
    assert_eq!(s(&report["outlets"][0]["turnover"]), "30.00");
    assert_eq!(report["accreditations"]["revoked"], 1);
    let votes = report["votes"].as_array().unwrap();
    assert_eq!(votes.len(), 6);
    assert!(
        votes
            .iter()
            .any(|v| v["cast"] == 5 && v["participation_bp"] == 10_000)
    );
    let md = caisse(&dir, &["report", "--period", period]);
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(md.contains("| organic | 66.66% |"), "{md}");

    // The anonymised export has no names, residences or card ids.
    let out_dir = tmp.path().join("export");
    ok(
        &dir,
        &[
            "report",
            "export",
            "--period",
            period,
            "--anonymised",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    let purchases = std::fs::read_to_string(out_dir.join("purchases.csv")).unwrap();
    let members_csv = std::fs::read_to_string(out_dir.join("members.csv")).unwrap();
    // Six alike members hide among each other; two purchase lines are too
    // few to hide in and are withheld (the header stays).
    assert_eq!(members_csv.lines().count(), 7, "{members_csv}");
    assert_eq!(purchases.lines().count(), 1, "{purchases}");
    for (m, c) in &members {
        for text in [&purchases, &members_csv] {
            assert!(!text.contains(m.as_str()) && !text.contains(c.as_str()));
            assert!(!text.contains("Citoyen") && !text.contains("Cadenet"));
        }
    }
    let again = tmp.path().join("export2");
    ok(
        &dir,
        &[
            "report",
            "export",
            "--period",
            period,
            "--anonymised",
            "--out",
            again.to_str().unwrap(),
        ],
    );
    assert_ne!(
        std::fs::read_to_string(again.join("members.csv")).unwrap(),
        members_csv,
        "pseudonyms change per export"
    );
    assert!(caisse(&dir, &["ledger", "check"]).status.success());
}

#[test]
fn lottery_draws_citizen_seats_by_strata() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Tirage", &[]);
    let _node = TestNode::start(&dir);
    let mut ids = Vec::new();
    for i in 0..30 {
        let year = if i % 2 == 0 { "1990" } else { "1955" };
        let m = ok(
            &dir,
            &[
                "member",
                "enroll",
                "--name",
                &format!("V{i}"),
                "--residence",
                "Montpellier",
                "--birth-year",
                year,
            ],
        );
        ids.push(s(&m["member"]));
    }
    let file = dir.join("volunteers.txt");
    std::fs::write(&file, format!("# volunteers\n{}\n", ids.join("\n"))).unwrap();
    let v = ok(
        &dir,
        &[
            "parliament",
            "draw",
            "--seats",
            "10",
            "--from",
            file.to_str().unwrap(),
            "--seed",
            "2026",
        ],
    );
    let drawn: Vec<usize> = v["drawn"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| ids.iter().position(|x| *x == s(d)).unwrap())
        .collect();
    assert_eq!(drawn.len(), 10);
    let young = drawn.iter().filter(|i| *i % 2 == 0).count();
    assert_eq!(young, 5, "stratified by age band: {drawn:?}");
    let shown = ok(&dir, &["parliament", "show"]);
    assert_eq!(shown["seats"].as_array().unwrap().len(), 10);
    assert_eq!(shown["can_vote"], true);
    // Drawing again skips members who already hold a seat.
    let again = ok(
        &dir,
        &[
            "parliament",
            "draw",
            "--seats",
            "5",
            "--from",
            file.to_str().unwrap(),
            "--seed",
            "7",
        ],
    );
    assert_eq!(again["excluded"].as_array().unwrap().len(), 10);
    assert_eq!(again["drawn"].as_array().unwrap().len(), 5);
}
