//! A command that fails part way changes nothing, and a node whose disk
//! fails stops: real `caisse node` processes with storage faults injected
//! through `[testing.faults]` in their config.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{TestNode, caisse, json, ok, s};

fn add_faults(dir: &std::path::Path, faults: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("config.toml"))
        .unwrap();
    writeln!(f, "\n[testing.faults]\n{faults}").unwrap();
}

fn enroll(dir: &std::path::Path, name: &str) -> (i32, serde_json::Value) {
    json(
        dir,
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
            "1500",
        ],
    )
}

#[test]
fn a_draw_that_fails_part_way_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse atomique", &[]);
    // The fourth read of the seats fails: `parliament show` reads them once,
    // the draw once to exclude seated members, then once per seat it adds,
    // so the draw fails after seating its first member.
    add_faults(&dir, "read_prefix = \"s/\"\nread_after = 3");
    let _node = TestNode::start(&dir);
    let mut volunteers = String::new();
    for i in 0..3 {
        let (code, m) = enroll(&dir, &format!("Volontaire {i}"));
        assert_eq!(code, 0, "{m}");
        volunteers.push_str(&s(&m["member"]));
        volunteers.push('\n');
    }
    let file = tmp.path().join("volunteers.txt");
    std::fs::write(&file, volunteers).unwrap();

    let parliament = ok(&dir, &["parliament", "show"]);
    let journal = ok(&dir, &["ledger", "journal"]);
    let out = caisse(
        &dir,
        &[
            "parliament",
            "draw",
            "--seats",
            "3",
            "--from",
            file.to_str().unwrap(),
            "--seed",
            "42",
        ],
    );
    assert!(
        !out.status.success(),
        "the draw must fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("injected read failure"), "{err}");

    assert_eq!(
        ok(&dir, &["parliament", "show"]),
        parliament,
        "no seat was added"
    );
    assert_eq!(ok(&dir, &["ledger", "journal"]), journal);
    let check = caisse(&dir, &["ledger", "check"]);
    assert!(check.status.success(), "ledger check after the failed draw");

    // The fault fired once: the same draw now seats three members.
    let drawn = ok(
        &dir,
        &[
            "parliament",
            "draw",
            "--seats",
            "3",
            "--from",
            file.to_str().unwrap(),
            "--seed",
            "42",
        ],
    );
    assert_eq!(drawn["seats"].as_array().map(Vec::len), Some(3));
    let seats = ok(&dir, &["parliament", "show"]);
    assert_eq!(seats["seats"].as_array().map(Vec::len), Some(3));
}

#[test]
fn a_node_whose_disk_fails_stops_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("caisse");
    TestNode::init(&dir, "Caisse sans disque", &[]);
    add_faults(&dir, "apply_after = 12");
    let mut node = TestNode::start(&dir);
    // Enrol until the disk refuses a batch (each enrolment is one commit;
    // start-up and the federation document use a few).
    let mut refused = None;
    for i in 0..20 {
        let (code, v) = enroll(&dir, &format!("Membre {i}"));
        if code != 0 {
            refused = Some(v);
            break;
        }
    }
    let refused = refused.expect("the disk refused a batch");
    assert!(
        refused.to_string().contains("storage"),
        "the refusal names the storage: {refused}"
    );
    let started = Instant::now();
    let code = node.wait_exit(5);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the node must stop by itself"
    );
    assert!(
        code.is_some_and(|c| c != 0),
        "the node exits non-zero, got {code:?}"
    );
    let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
    assert!(
        log.contains("storage failed") || log.contains("the writer stopped"),
        "the log says why: {log}"
    );
}
