//! The federation with real node processes on 127.0.0.1: an accreditation
//! granted at A is listed at B and C within seconds, recognition lets B's
//! outlets sell A's producers, a revocation at A stops those sales, a node
//! killed while A changes catches up after restart, a rogue peer's forged,
//! replayed, oversized and malformed messages are all refused while honest
//! nodes keep converging, and no personal data is in any replicated byte.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestNode, bin, caisse, json, ok, pass, s, seat_parliament, wait_until};
use serde_json::Value;

const FED: &str = "testfed";

fn listen_addr(dir: &Path) -> String {
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("node.json")).unwrap()).unwrap();
    s(&info["listen"][0])
}

fn caisse_id(dir: &Path) -> String {
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("node.json")).unwrap()).unwrap();
    s(&info["caisse_id"])
}

fn init(dir: &Path, name: &str, bootstrap: Option<&str>) {
    let mut extra = vec!["--listen", "/ip4/127.0.0.1/tcp/0", "--federation", FED];
    if let Some(b) = bootstrap {
        extra.extend_from_slice(&["--bootstrap", b]);
    }
    TestNode::init(dir, name, &extra);
}

fn federation_accreditations(dir: &Path) -> Vec<Value> {
    ok(dir, &["accreditation", "list", "--federation"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn has_accreditation(dir: &Path, subject: &str, status: &str) -> bool {
    federation_accreditations(dir)
        .iter()
        .any(|a| s(&a["subject_name"]) == subject && s(&a["status"]) == status)
}

fn stats(dir: &Path) -> Value {
    ok(dir, &["network", "show"])
}

#[test]
fn federation_of_three_caisses() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c): (PathBuf, PathBuf, PathBuf) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    init(&a, "Caisse A", None);
    let _na = TestNode::start(&a);
    let a_addr = listen_addr(&a);
    init(&b, "Caisse B", Some(&a_addr));
    init(&c, "Caisse C", Some(&a_addr));
    let _nb = TestNode::start(&b);
    let mut nc = TestNode::start(&c);
    let (a_id, b_id, c_id) = (caisse_id(&a), caisse_id(&b), caisse_id(&c));

    // Everyone learns about everyone (B and C meet through A's routing table).
    for (dir, others) in [
        (&a, [&b_id, &c_id]),
        (&b, [&a_id, &c_id]),
        (&c, [&a_id, &b_id]),
    ] {
        wait_until("every caisse to know the others", 20, || {
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

    // Personal data that must never leave A.
    let secret_name = "Zéphyrine Quibblesworth";
    let secret_home = "12 impasse du Secret";
    let member = ok(
        &a,
        &[
            "member",
            "enroll",
            "--name",
            secret_name,
            "--residence",
            secret_home,
            "--income",
            "1234",
            "--pin",
            "7264",
        ],
    );

    // A adopts criteria and accredits a farm by vote.
    seat_parliament(&a, "2026-01-01");
    let crit = tmp.path().join("criteria.toml");
    std::fs::write(&crit, "name = \"A 2026\"\nversion = 1\n[rule]\nall = [{ label = \"organic\" }, { max_distance_km = 200 }]\n").unwrap();
    pass(&a, &["--criteria", crit.to_str().unwrap()]);
    let farm = tmp.path().join("farm.toml");
    std::fs::write(&farm, "labels = [\"organic\"]\ndistance_km = 30\n").unwrap();
    let producer = s(&ok(
        &a,
        &[
            "producer",
            "register",
            "--name",
            "Ferme du Causse",
            "--attributes",
            farm.to_str().unwrap(),
        ],
    )["id"]);
    pass(
        &a,
        &[
            "--accredit-producer",
            &producer,
            "--scope",
            "fresh-produce:100",
        ],
    );

    // Listed at B and C within a few seconds.
    for dir in [&b, &c] {
        let t = wait_until("the accreditation to reach every caisse", 10, || {
            has_accreditation(dir, "Ferme du Causse", "active")
        });
        eprintln!("accreditation visible at {} after {t:?}", dir.display());
    }
    let shown = ok(&b, &["producer", "show", &producer]);
    assert_eq!(s(&shown["federation"][0]["caisse"]), a_id, "{shown}");
    assert_eq!(
        s(&shown["federation"][0]["criteria_version"]["version"]),
        "1"
    );

    // B's outlet sells A's producer only once B's parliament recognises A.
    seat_parliament(&b, "2026-01-01");
    let shop = ok(
        &b,
        &[
            "outlet",
            "register",
            "--name",
            "Épicerie B",
            "--categories",
            "fresh-produce",
        ],
    );
    let shop_id = s(&shop["outlet"]);
    let buyer = ok(
        &b,
        &[
            "member",
            "enroll",
            "--name",
            "Client B",
            "--residence",
            "Là",
            "--joined",
            "2026-01-01",
        ],
    );
    let today = s(&ok(&b, &["status"])["today"]);
    ok(&b, &["allocation", "issue", "--period", &today[..7]]);
    let line = format!("fresh-produce:5:{producer}");
    let buy = || {
        json(
            &b,
            &[
                "purchase",
                "--card",
                &s(&buyer["card"]),
                "--outlet",
                &shop_id,
                "--line",
                &line,
            ],
        )
    };
    assert_eq!(
        s(&buy().1["error"]),
        "not_conventioned",
        "not recognised yet"
    );
    pass(&b, &["--recognise", &a_id]);
    pass(&b, &["--recognition", "listed"]);
    let (code, r) = buy();
    assert_eq!(code, 0, "recognised accreditation counts: {r}");
    let peers = ok(&b, &["peers"]);
    let pa = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| s(&p["caisse"]) == a_id)
        .unwrap()
        .clone();
    assert_eq!(pa["recognised"], true);
    assert_eq!(pa["connected"], true);

    // A revokes; the revocation reaches B and C and stops B's sales at once.
    let acc_id = s(&ok(&a, &["accreditation", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|x| s(&x["subject_name"]) == "Ferme du Causse")
        .unwrap()["id"]);
    pass(
        &a,
        &["--revoke", &acc_id, "--reason", "contrôle non conforme"],
    );
    for dir in [&b, &c] {
        wait_until("the revocation to reach every caisse", 10, || {
            has_accreditation(dir, "Ferme du Causse", "revoked")
        });
    }
    assert_eq!(
        s(&buy().1["error"]),
        "not_conventioned",
        "revocation stops sales"
    );

    // C is killed while A changes its document; after restart it catches up.
    nc.kill();
    ok(
        &a,
        &[
            "outlet",
            "register",
            "--name",
            "Marché de A",
            "--categories",
            "bread",
        ],
    );
    wait_until("B to see A's new outlet", 10, || {
        has_accreditation(&b, "Marché de A", "active")
    });
    let mut nc = TestNode::start(&c);
    let t = wait_until("C to catch up after restart", 20, || {
        has_accreditation(&c, "Marché de A", "active")
    });
    eprintln!("C caught up {t:?} after restart");

    // A rogue peer attacks A; every attack is refused and nobody falls over.
    let before = stats(&a);
    let out = Command::new(bin())
        .args([
            "rogue",
            "--target-addr",
            &listen_addr(&a),
            "--target",
            &a_id,
            "--federation",
            FED,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rogue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = stats(&a);
    let n = |v: &Value, k: &str| v["federation"][k].as_u64().unwrap_or(0);
    assert!(
        n(&after, "gossip_rejected") >= n(&before, "gossip_rejected") + 2,
        "forged and badly signed heads rejected: {after}"
    );
    assert!(
        n(&after, "rpc_malformed") > n(&before, "rpc_malformed"),
        "malformed request counted: {after}"
    );
    assert!(
        after["frames_refused"].as_u64().unwrap() > before["frames_refused"].as_u64().unwrap(),
        "oversized frame refused: {after}"
    );
    // The forged change never entered A's document, as A or its peers see it.
    for dir in [&a, &b, &c] {
        let peers = ok(dir, &["peers"]);
        for p in peers.as_array().unwrap() {
            assert_eq!(p["invalid_statements"], 0, "{p}");
        }
    }
    assert_eq!(
        s(&ok(&b, &["peers"])
            .as_array()
            .unwrap()
            .iter()
            .find(|p| s(&p["caisse"]) == a_id)
            .unwrap()["name"]),
        "Caisse A"
    );
    // And the honest nodes still converge.
    ok(
        &a,
        &[
            "outlet",
            "register",
            "--name",
            "Après l'attaque",
            "--categories",
            "bread",
        ],
    );
    for dir in [&b, &c] {
        wait_until("convergence after the attack", 10, || {
            has_accreditation(dir, "Après l'attaque", "active")
        });
    }

    // No personal data in any replicated byte of A's document, anywhere.
    for dir in [&a, &b, &c] {
        let listed = caisse(dir, &["--json", "accreditation", "list", "--federation"]);
        let peers = caisse(dir, &["--json", "peers"]);
        for out in [listed, peers] {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(!text.contains(secret_name) && !text.contains(secret_home));
        }
    }
    let token = std::fs::read_to_string(b.join("admin.token")).unwrap();
    let api = {
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(b.join("node.json")).unwrap()).unwrap();
        s(&info["api"])
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let doc: Value = rt
        .block_on(
            caisse_node::client::Client::with_base(format!("http://{api}"), token)
                .get(&format!("/api/v1/federation/documents/{a_id}")),
        )
        .unwrap();
    let raw = hex_decode(&s(&doc["bytes"]));
    assert!(raw.len() > 100);
    // Search what the document says, decoded: every key and value it holds
    // or held, not its saved bytes (automerge compresses larger columns).
    let values = caisse_node::documents::every_value(&raw).expect("a valid document");
    assert!(values.len() > 10, "{} values", values.len());
    let found = |needle: &[u8]| values.iter().any(|v| contains(v, needle));
    assert!(found(b"Caisse A"), "the check reads the document's values");
    for needle in [
        secret_name,
        secret_home,
        &s(&member["member"]),
        &s(&member["card"]),
        "7264",
        "1234",
    ] {
        assert!(
            !found(needle.as_bytes()),
            "{needle:?} found in a federation document"
        );
    }
    let card_bytes = hex_decode(s(&member["card"]).trim_start_matches("card_"));
    assert!(
        !found(&card_bytes),
        "card id bytes found in a federation document"
    );
    let _ = nc.stop();
}

fn hex_decode(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
