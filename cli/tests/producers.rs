//! Producers across regions, with three real caisse processes: a farmer
//! makes a key and publishes a signed dossier; caisse A accredits it by
//! vote; B judges the same dossier against B's own criteria (explained rule
//! by rule) and accredits it by a vote that shows A's decision; a sale of
//! the farm's product at C's outlet counts under C's recognition of A; the
//! farmer's page lists A and B with validity, what C's criteria still
//! require, and its sales per caisse and month; its organic certificate
//! expires and both accreditations lapse that day, warned of before; a
//! dossier signed by another key is refused everywhere; and no personal
//! field is in any replicated byte.

mod common;

use std::path::Path;

use caisse_protocol::producer::ProducerDossier;
use caisse_protocol::{Envelope, FederationId, SecretKey};
use common::{TestNode, caisse, json, node_json, ok, pass, s, seat_parliament, wait_until};
use serde_json::Value;

const FED: &str = "farmfed";

fn criteria(dir: &Path, tmp: &Path, name: &str, rule: &str) {
    let f = tmp.join(format!("{name}.toml"));
    std::fs::write(
        &f,
        format!("name = \"{name}\"\nversion = 1\n[rule]\n{rule}\n"),
    )
    .unwrap();
    pass(dir, &["--criteria", f.to_str().unwrap()]);
}

/// Run `caisse` with another token file (the producer's).
fn as_token(dir: &Path, token: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--token-file", token.to_str().unwrap()];
    all.extend_from_slice(args);
    json(dir, &all)
}

fn set_day(dirs: &[&Path], day: &str) {
    for d in dirs {
        ok(d, &["clock", "set", "--today", day]);
    }
}

fn hex_decode(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn a_producer_accredited_across_three_caisses() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (a, b, c) = (t.join("a"), t.join("b"), t.join("c"));
    let base = [
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--federation",
        FED,
        "--manual-clock",
    ];
    TestNode::init(&a, "Caisse A", &base);
    let _na = TestNode::start(&a);
    let a_addr = s(&node_json(&a)["listen"][0]);
    let mut with_bootstrap = base.to_vec();
    with_bootstrap.extend_from_slice(&["--bootstrap", &a_addr]);
    TestNode::init(&b, "Caisse B", &with_bootstrap);
    TestNode::init(&c, "Caisse C", &with_bootstrap);
    let _nb = TestNode::start(&b);
    let _nc = TestNode::start(&c);
    let all = [a.as_path(), b.as_path(), c.as_path()];
    set_day(&all, "2027-03-01");
    let id_of = |d: &Path| s(&node_json(d)["caisse_id"]);
    let (a_id, b_id, c_id) = (id_of(&a), id_of(&b), id_of(&c));
    for (dir, others) in [
        (&a, [&b_id, &c_id]),
        (&b, [&a_id, &c_id]),
        (&c, [&a_id, &b_id]),
    ] {
        wait_until("every caisse to know the others", 30, || {
            let peers = ok(dir, &["peers"]);
            others.iter().all(|o| {
                peers
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| s(&p["caisse"]) == **o)
            })
        });
    }
    // Montpellier, Nîmes, Sète: where each caisse measures distances from.
    ok(&a, &["territory-centre", "43.6109,3.8772"]);
    ok(&b, &["territory-centre", "43.8367,4.3601"]);
    ok(&c, &["territory-centre", "43.4028,3.6928"]);

    // Personal data at C that must never leave it.
    let secret_name = "Philomène Tartempion";
    let secret_home = "7 chemin des Secrets";
    let buyer = ok(
        &c,
        &[
            "member",
            "enroll",
            "--name",
            secret_name,
            "--residence",
            secret_home,
            "--income",
            // (Long enough not to turn up by chance in a hash's hex digits,
            // as a four-digit income did once.)
            "41789.27",
            "--joined",
            "2027-01-01",
        ],
    );

    // The farmer: a key, a dossier, evidence hashed on the farm's machine.
    let key = t.join("farm.key");
    let out = caisse(
        t,
        &[
            "--json",
            "producer",
            "keygen",
            "--out",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let producer = s(&made["producer"]);
    std::fs::write(
        t.join("contrat.pdf"),
        "prix juste: contrat avec la coopérative",
    )
    .unwrap();
    let dossier = t.join("dossier.toml");
    std::fs::write(
        &dossier,
        r#"version = 1
name = "Ferme des Garrigues"
siret = "73282932000074"
commune = "Saint-Mathieu-de-Tréviers"
postcode = "34270"
location = "43.7670,3.8590"
price_fairness_pct = 105
origin = "FR"
practices = []

[[products]]
name = "Pommes"
category = "fresh-produce"

[[certificates]]
label = "organic"
number = "FR-BIO-01/2027/4471"
certifier = "Ecocert"
valid_from = "2027-01-01"
valid_until = "2027-03-20"

[[evidence]]
attribute = "price_fairness"
file = "contrat.pdf"
"#,
    )
    .unwrap();
    // A's desk gives the farmer a producer token; the farmer publishes with it.
    let tok = ok(
        &a,
        &[
            "token",
            "create",
            "--role",
            "producer",
            "--producer",
            &producer,
        ],
    );
    let token = t.join("producer.token");
    std::fs::write(&token, s(&tok["token"])).unwrap();
    let (code, v) = as_token(
        &a,
        &token,
        &[
            "producer",
            "publish",
            "--key",
            key.to_str().unwrap(),
            "--dossier",
            dossier.to_str().unwrap(),
            "--federation",
            FED,
        ],
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(s(&v["producer"]), producer);
    // The producer token opens nothing else.
    let (code, v) = as_token(&a, &token, &["member", "list"]);
    assert_ne!(code, 0, "{v}");

    // A: criteria, then accreditation by vote. The pass needs the organic
    // certificate, so the accreditation ends with it.
    seat_parliament(&a, "2027-01-01");
    criteria(
        &a,
        t,
        "Critères A",
        "all = [{ label = \"organic\" }, { max_distance_km = 100 }]",
    );
    let e = ok(&a, &["producer", "evaluate", &producer]);
    assert_eq!(e["evaluation"]["passed"], true, "{e}");
    assert_eq!(s(&e["would_lapse_with"]["day"]), "2027-03-20", "{e}");
    pass(
        &a,
        &[
            "--accredit-producer",
            &producer,
            "--scope",
            "fresh-produce:100",
            "--valid-until",
            "2027-12-31",
        ],
    );
    let acc_a: Vec<Value> = ok(&a, &["accreditation", "list"])
        .as_array()
        .unwrap()
        .clone();
    let mine = acc_a
        .iter()
        .find(|x| s(&x["subject_name"]) == "Ferme des Garrigues")
        .unwrap();
    assert_eq!(s(&mine["valid_until"]), "2027-03-20", "{mine}");

    // B judges the same dossier, from the federation, against its own criteria.
    seat_parliament(&b, "2027-01-01");
    criteria(
        &b,
        t,
        "Critères B",
        "all = [{ any = [{ label = \"organic\" }, { practice = \"agroecology\" }] }, { max_distance_km = 60 }, { min_price_fairness_pct = 100 }]",
    );
    let e = wait_until_ok(&b, &["producer", "evaluate", &producer], 20);
    assert_eq!(s(&e["source"]), "dossier from the federation", "{e}");
    assert_eq!(e["evaluation"]["passed"], true, "{e}");
    let outcomes = e["evaluation"]["outcomes"].as_array().unwrap();
    assert!(outcomes.len() >= 3, "explained rule by rule: {e}");
    assert!(
        outcomes
            .iter()
            .any(|o| s(&o["explanation"]).contains("km is within 60 km")),
        "{e}"
    );
    // And, in one command, against A's criteria from A's territory (once
    // A's criteria document has reached B).
    let e = wait_until_ok(
        &b,
        &["producer", "evaluate", &producer, "--against", &a_id],
        20,
    );
    assert_eq!(s(&e["criteria"]["name"]), "Critères A", "{e}");
    assert_eq!(e["distance_km"], 18, "{e}");
    assert_eq!(e["evaluation"]["passed"], true, "{e}");
    // Wait for A's accreditation to reach B, then one proposal accredits it and shows A's decision.
    wait_until("A's accreditation at B", 20, || {
        ok(&b, &["accreditation", "list", "--federation"])
            .as_array()
            .unwrap()
            .iter()
            .any(|x| s(&x["subject_name"]) == "Ferme des Garrigues")
    });
    let closed = pass(
        &b,
        &[
            "--accredit-producer",
            &producer,
            "--scope",
            "fresh-produce:80",
        ],
    );
    let elsewhere = closed["elsewhere"].as_array().unwrap();
    assert_eq!(elsewhere.len(), 1, "{closed}");
    assert_eq!(s(&elsewhere[0]["caisse_name"]), "Caisse A");
    assert_eq!(s(&elsewhere[0]["their_criteria"]["name"]), "Critères A");
    let acc_b: Vec<Value> = ok(&b, &["accreditation", "list"])
        .as_array()
        .unwrap()
        .clone();
    let mine_b = acc_b
        .iter()
        .find(|x| s(&x["subject_name"]) == "Ferme des Garrigues")
        .unwrap();
    assert_eq!(
        s(&mine_b["valid_until"]),
        "2027-03-20",
        "B's lapses with the certificate too: {mine_b}"
    );

    // C recognises A; a sale of the farm's apples at C's outlet counts.
    seat_parliament(&c, "2027-01-01");
    criteria(
        &c,
        t,
        "Critères C",
        "all = [{ label = \"organic\" }, { max_distance_km = 10 }]",
    );
    pass(&c, &["--recognise", &a_id]);
    pass(&c, &["--recognition", "listed"]);
    let shop = s(&ok(
        &c,
        &[
            "outlet",
            "register",
            "--name",
            "Épicerie C",
            "--categories",
            "fresh-produce",
        ],
    )["outlet"]);
    ok(&c, &["allocation", "issue", "--period", "2027-03"]);
    let line = format!("fresh-produce:12.50:{producer}");
    let buy = || {
        json(
            &c,
            &[
                "purchase",
                "--card",
                &s(&buyer["card"]),
                "--outlet",
                &shop,
                "--line",
                &line,
            ],
        )
    };
    wait_until("A's accreditation at C", 20, || buy().0 == 0);
    let (code, r) = buy();
    assert_eq!(code, 0, "{r}");

    // The farmer's page at A: A and B with validity, what C still asks,
    // sales per caisse and month, and the warning before the lapse.
    // (Once C's document with both sales has reached A.)
    let page = wait_until_value(&a, &token, 30, |p| {
        p["sales"].as_array().is_some_and(|v| {
            v.iter()
                .any(|x| s(&x["caisse_name"]) == "Caisse C" && s(&x["amount"]) == "25.00")
        }) && p["accreditations"].as_array().is_some_and(|v| v.len() >= 2)
    });
    let accs = page["accreditations"].as_array().unwrap();
    for name in ["Caisse A", "Caisse B"] {
        let row = accs
            .iter()
            .find(|x| s(&x["caisse_name"]) == name)
            .unwrap_or_else(|| panic!("{name}: {page}"));
        assert_eq!(s(&row["status"]), "active");
        assert_eq!(s(&row["valid_until"]), "2027-03-20");
    }
    let sales = page["sales"].as_array().unwrap();
    let at_c = sales
        .iter()
        .find(|x| s(&x["caisse_name"]) == "Caisse C")
        .unwrap();
    assert_eq!(s(&at_c["period"]), "2027-03");
    assert_eq!(s(&at_c["amount"]), "25.00", "two sales of 12.50: {page}");
    let reqs = page["requirements"].as_array().unwrap();
    let c_req = reqs
        .iter()
        .find(|x| s(&x["caisse_name"]) == "Caisse C")
        .unwrap();
    assert_eq!(c_req["passed"], false);
    assert!(
        s(&c_req["missing"][0]).contains("farther than the maximum of 10 km"),
        "{c_req}"
    );
    let warnings: Vec<String> = page["warnings"].as_array().unwrap().iter().map(s).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("FR-BIO-01/2027/4471") && w.contains("2027-03-20")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("Caisse B") && w.contains("ends on 2027-03-20")),
        "{warnings:?}"
    );
    let lapsing = ok(&a, &["accreditation", "lapsing"]);
    assert!(
        s(&lapsing[0]["lapses_with"]).contains("FR-BIO-01/2027/4471"),
        "{lapsing}"
    );

    // A producer A registered before producers had keys gets an identity:
    // a key A holds until the farmer claims it, handed over once.
    let old_attrs = t.join("old.toml");
    std::fs::write(
        &old_attrs,
        "labels = [\"organic\"]\ndistance_km = 25\n[evidence]\norganic = \"FR-BIO-01/2026/99\"\n",
    )
    .unwrap();
    let old_id = s(&ok(
        &a,
        &[
            "producer",
            "register",
            "--name",
            "Ferme d'avant",
            "--attributes",
            old_attrs.to_str().unwrap(),
        ],
    )["id"]);
    pass(
        &a,
        &["--accredit-producer", &old_id, "--scope", "bread:100"],
    );
    let adopted = ok(
        &a,
        &[
            "producer",
            "adopt",
            &old_id,
            "--siret",
            "73282932000074",
            "--commune",
            "Lunel",
            "--postcode",
            "34400",
            "--location",
            "43.6750,4.1360",
        ],
    );
    let new_id = s(&adopted["producer"]);
    assert_ne!(new_id, old_id);
    let held = t.join("held.key");
    ok(
        &a,
        &[
            "producer",
            "handover",
            &new_id,
            "--out",
            held.to_str().unwrap(),
        ],
    );
    let (code, v) = json(
        &a,
        &[
            "producer",
            "handover",
            &new_id,
            "--out",
            t.join("again.key").to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0, "handed over once only: {v}");
    let held_public = {
        let k: [u8; 32] = hex_decode(std::fs::read_to_string(&held).unwrap().trim())
            .try_into()
            .unwrap();
        SecretKey::from_bytes(k).public()
    };
    let held_dossier: ProducerDossier =
        serde_json::from_value(ok(&a, &["producer", "dossier", &new_id])["dossier"].clone())
            .unwrap();
    assert_eq!(
        held_dossier.producer, held_public,
        "the farmer now holds the key of its identity"
    );
    assert!(
        ok(&a, &["accreditation", "list"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| s(&x["subject_name"]) == "Ferme d'avant" && s(&x["status"]) == "active")
            .count()
            == 2,
        "accredited under the old id and the new one"
    );

    // A dossier signed by another key is refused by every caisse.
    let farmer_public = {
        let k: [u8; 32] = hex_decode(std::fs::read_to_string(&key).unwrap().trim())
            .try_into()
            .unwrap();
        SecretKey::from_bytes(k).public()
    };
    let genuine: Value = ok(&a, &["producer", "dossier", &producer]);
    let mut forged: ProducerDossier = serde_json::from_value(genuine["dossier"].clone()).unwrap();
    assert_eq!(forged.producer, farmer_public);
    forged.version = 9;
    forged.certificates[0].valid_until = "2030-12-31".parse().unwrap();
    let thief = SecretKey::from_bytes([0x66; 32]);
    let env = Envelope::seal(&thief, &FederationId::new(FED).unwrap(), &forged).unwrap();
    let forged_file = t.join("forged.hex");
    std::fs::write(&forged_file, hex_encode(&env.to_bytes().unwrap())).unwrap();
    for dir in all {
        let (code, v) = json(
            dir,
            &[
                "producer",
                "publish",
                "--signed",
                forged_file.to_str().unwrap(),
            ],
        );
        assert_ne!(code, 0, "{v}");
        assert!(s(&v["message"]).contains("refused"), "{v}");
    }

    // The certificate ends on 2027-03-20: both accreditations lapse that day.
    set_day(&all, "2027-03-20");
    assert_eq!(buy().0, 0, "still valid on its last day");
    set_day(&all, "2027-03-21");
    let (code, r) = buy();
    assert_ne!(code, 0, "lapsed: {r}");
    assert_eq!(s(&r["error"]), "not_conventioned", "{r}");
    let (_, page) = as_token(&a, &token, &["producer", "page"]);
    for name in ["Caisse A", "Caisse B"] {
        let row = page["accreditations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| s(&x["caisse_name"]) == name)
            .unwrap()
            .clone();
        assert_eq!(s(&row["status"]), "lapsed", "{name}: {row}");
    }

    // No personal field in any replicated byte: every document, decoded.
    let token_b = std::fs::read_to_string(b.join("admin.token")).unwrap();
    let api_b = s(&node_json(&b)["api"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = caisse_node::client::Client::with_base(format!("http://{api_b}"), token_b);
    for owner in [&a_id, &b_id, &c_id] {
        let doc: Value = rt
            .block_on(client.get(&format!("/api/v1/federation/documents/{owner}")))
            .unwrap();
        let raw = hex_decode(&s(&doc["bytes"]));
        let values = caisse_node::documents::every_value(&raw).expect("a valid document");
        let found = |needle: &[u8]| values.iter().any(|v| contains(v, needle));
        if owner == &a_id {
            assert!(
                found(b"Ferme des Garrigues"),
                "the check reads the dossier's values"
            );
        }
        for needle in [
            secret_name,
            secret_home,
            "41789.27",
            "4178927",
            &s(&buyer["member"]),
            &s(&buyer["card"]),
        ] {
            assert!(
                !found(needle.as_bytes()),
                "{needle:?} in {owner}'s document"
            );
        }
        // Values are also scanned inside the signed statements they hold:
        // decode every envelope and look at its JSON.
        for v in &values {
            if let Ok(e) = Envelope::from_bytes(v) {
                let text = format!("{:?}", e.body);
                assert!(!text.contains(secret_name));
                if let Ok(d) = e.open::<ProducerDossier>(&FederationId::new(FED).unwrap()) {
                    let j = serde_json::to_string(&d.message).unwrap();
                    for needle in [secret_name, secret_home, "41789.27", "4178927"] {
                        assert!(!j.contains(needle), "{needle} in a dossier");
                    }
                }
            }
        }
    }
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn wait_until_ok(dir: &Path, args: &[&str], secs: u64) -> Value {
    let mut last = Value::Null;
    wait_until(&format!("caisse {args:?} to succeed"), secs, || {
        let (code, v) = json(dir, args);
        last = v;
        code == 0
    });
    last
}

fn wait_until_value(dir: &Path, token: &Path, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    wait_until("the producer's page to show every caisse", secs, || {
        let (code, v) = as_token(dir, token, &["producer", "page"]);
        let good = code == 0 && f(&v);
        last = v;
        good
    });
    last
}
