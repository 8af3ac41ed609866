//! A stranger on the federation's network sending garbage (issue 15,
//! finding 6): the node logs a few lines, not one per message, bans the
//! peer, keeps it banned when it comes back with the same key, and keeps
//! serving.

mod common;

use common::{TestNode, caisse, node_json, ok, s};

const FED: &str = "fed-misbehaviour";
const SEED: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

fn rogue(dir: &std::path::Path, repeat: &str) -> std::process::Output {
    let info = node_json(dir);
    caisse(
        dir,
        &[
            "rogue",
            "--target-addr",
            &s(&info["listen"][0]),
            "--target",
            &s(&info["caisse_id"]),
            "--federation",
            FED,
            "--attack",
            "malformed",
            "--attack",
            "bad-signature",
            "--repeat",
            repeat,
            "--seed",
            SEED,
        ],
    )
}

#[test]
fn a_peer_sending_garbage_is_banned_and_stays_banned() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    TestNode::init(
        &dir,
        "Caisse visée",
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--federation", FED],
    );
    let _node = TestNode::start(&dir);
    // 300 rounds: 900 malformed or forged messages.
    let out = rogue(&dir, "300");
    assert!(
        out.status.success(),
        "the rogue could not even start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let net = ok(&dir, &["network", "show"]);
    assert!(
        net["federation"]["peers_banned"].as_u64().unwrap_or(0) >= 1,
        "nobody was banned: {net}"
    );
    assert_eq!(
        net["blocked"].as_array().map(Vec::len),
        Some(1),
        "the rogue is not blocked: {net}"
    );
    let log = std::fs::read_to_string(dir.join("node.log")).unwrap();
    let lines = log
        .lines()
        .filter(|l| {
            l.contains("refused a malformed request")
                || l.contains("rejected malformed gossip")
                || l.contains("rejected document heads")
        })
        .count();
    assert!(lines <= 20, "{lines} log lines for one peer's garbage");
    assert!(
        log.contains("peer banned for misbehaviour"),
        "no ban logged"
    );
    // The same key comes back: refused.
    let again = rogue(&dir, "1");
    assert!(
        !again.status.success(),
        "a banned peer connected again: {}",
        String::from_utf8_lossy(&again.stdout)
    );
    // And the node still serves.
    ok(&dir, &["status"]);
}

/// Three caisses restarted together find each other again within seconds
/// (issue 15, finding 6), not at the next half-minute bootstrap.
#[test]
fn three_nodes_restarted_together_reconnect_within_five_seconds() {
    const FED3: &str = "fed-restart";
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = ["a", "b", "c"].iter().map(|n| tmp.path().join(n)).collect();
    TestNode::init(
        &dirs[0],
        "A",
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--federation", FED3],
    );
    let mut nodes = vec![TestNode::start(&dirs[0])];
    let first = s(&node_json(&dirs[0])["listen"][0]);
    for (i, d) in dirs.iter().enumerate().skip(1) {
        TestNode::init(
            d,
            ["A", "B", "C"][i],
            &[
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--federation",
                FED3,
                "--bootstrap",
                &first,
            ],
        );
        nodes.push(TestNode::start(d));
    }
    let all_connected = |dirs: &[std::path::PathBuf]| {
        dirs.iter().all(|d| {
            ok(d, &["network", "show"])["connected"]
                .as_array()
                .is_some_and(|a| a.len() >= 2)
        })
    };
    common::wait_until("the three to meet", 30, || all_connected(&dirs));
    // A clean stop of all three (the closing side's sockets stay in
    // TIME_WAIT on the ports they restart on).
    for n in &mut nodes {
        n.stop();
    }
    let mut nodes: Vec<TestNode> = dirs.iter().map(|d| TestNode::start(d)).collect();
    let took = common::wait_until("the three to meet again", 60, || all_connected(&dirs));
    assert!(
        took < std::time::Duration::from_secs(5),
        "they met again only after {took:?}"
    );
    for n in &mut nodes {
        n.stop();
    }
}
