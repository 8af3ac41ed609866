//! A stranger on the federation's network sending garbage (issue 15,
//! finding 6): the node logs a few lines, not one per message, bans the
//! peer, keeps it banned when it comes back with the same key, and keeps
//! serving.

mod common;

use std::time::Duration;

use common::{TestNode, node_json, ok, s};

const FED: &str = "fed-misbehaviour";
const SEED: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// `caisse rogue` aimed at the node in `dir` (its address and caisse id
/// from node.json) in federation `fed`, with `args` after them.
fn rogue_cmd(dir: &std::path::Path, fed: &str, args: &[&str]) -> std::process::Command {
    let info = node_json(dir);
    let mut c = std::process::Command::new(common::bin());
    c.arg("--data-dir").arg(dir).args([
        "rogue",
        "--target-addr",
        &s(&info["listen"][0]),
        "--target",
        &s(&info["caisse_id"]),
        "--federation",
        fed,
    ]);
    c.args(args);
    c
}

/// Run `caisse rogue` (see [`rogue_cmd`]) to the end; it must succeed.
fn rogue_ok(dir: &std::path::Path, fed: &str, args: &[&str]) -> std::process::Output {
    let out = rogue_cmd(dir, fed, args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One node of its own federation `fed`, listening on loopback: its
/// temporary folder (kept alive by the caller), data directory and process.
fn lone_node(fed: &str, name: &str) -> (tempfile::TempDir, std::path::PathBuf, TestNode) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    TestNode::init(
        &dir,
        name,
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--federation", fed],
    );
    let node = TestNode::start(&dir);
    (tmp, dir, node)
}

fn rogue(dir: &std::path::Path, repeat: &str) -> std::process::Output {
    rogue_cmd(
        dir,
        FED,
        &[
            "--attack",
            "malformed",
            "--attack",
            "bad-signature",
            "--attack",
            "forged-heads",
            "--repeat",
            repeat,
            "--seed",
            SEED,
        ],
    )
    .output()
    .unwrap()
}

#[test]
fn a_peer_sending_garbage_is_banned_and_stays_banned() {
    let (_tmp, dir, _node) = lone_node(FED, "Caisse visée");
    // 300 rounds: 1,200 malformed or forged messages (garbage, a flipped
    // signature bit, heads of the target's document signed by the rogue).
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

/// A sync answer lost on the way (issue 15, finding 2): a replica holding
/// an older version asks for the newer one, the answer is lost, and its
/// retry (a fresh session from the same peer) must get what was lost rather
/// than nothing ("already sent"), so a replica cannot stay stuck until the
/// owner restarts.
#[test]
fn a_dropped_sync_response_is_followed_by_a_full_resync() {
    const FED2: &str = "fed-lost-sync";
    let (_tmp, dir, _node) = lone_node(FED2, "Caisse au lien perdu");
    let rogue = rogue_cmd(&dir, FED2, &["--attack", "lost-sync"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the rogue holds the first version (it waits for the owner's
    // first heads), the owner signs a new one.
    std::thread::sleep(std::time::Duration::from_secs(6));
    ok(
        &dir,
        &[
            "bank",
            "set",
            "--holder",
            "Caisse au lien perdu",
            "--iban",
            "FR7630006000011234567890189",
        ],
    );
    let out = rogue.wait_with_output().unwrap();
    let last = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(last.contains("resync complete"), "{last}");
    ok(&dir, &["status"]);
}

fn peer_row(dir: &std::path::Path, caisse_id: &str) -> Option<serde_json::Value> {
    ok(dir, &["peers"])
        .as_array()
        .unwrap()
        .iter()
        .find(|p| s(&p["caisse"]) == caisse_id)
        .cloned()
}

fn federation_stat(dir: &std::path::Path, what: &str) -> u64 {
    ok(dir, &["network", "show"])["federation"][what]
        .as_u64()
        .unwrap_or(0)
}

/// A change B makes, and how long until A holds it.
fn propagation(a: &std::path::Path, b: &std::path::Path, b_id: &str, iban: &str) -> Duration {
    let before = peer_row(a, b_id).map_or(0, |p| p["sequence"].as_u64().unwrap_or(0));
    ok(b, &["bank", "set", "--holder", "Caisse B", "--iban", iban]);
    common::wait_until("B's change at A", 30, || {
        peer_row(a, b_id).is_some_and(|p| p["sequence"].as_u64().unwrap_or(0) > before)
    })
}

fn spawn_throwaway(dir: &std::path::Path, repeat: &str, seed: &str) -> std::process::Child {
    rogue_cmd(
        dir,
        "fed-throwaway",
        &["--attack", "throwaway", "--repeat", repeat, "--seed", seed],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap()
}

/// Throwaway keys (issue 15, finding 1): 2,000 documents announced under
/// fresh keys neither evict the document of a caisse A recognises, nor keep
/// A syncing once the stranger has left, nor slow B's changes reaching A
/// beyond 20% (plus a second of polling noise); and a new caisse that B
/// recognises is followed by A even while strangers churn the slots for
/// documents nobody vouches for.
#[test]
fn throwaway_keys_neither_evict_nor_keep_a_node_syncing() {
    const FED3: &str = "fed-throwaway";
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, d) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("d"),
    );
    TestNode::init(
        &a,
        "Caisse A",
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--federation", FED3],
    );
    let _na = TestNode::start(&a);
    let first = s(&node_json(&a)["listen"][0]);
    let join = [
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--federation",
        FED3,
        "--bootstrap",
        &first,
    ];
    TestNode::init(&b, "Caisse B", &join);
    let _nb = TestNode::start(&b);
    let (a_id, b_id) = (
        s(&node_json(&a)["caisse_id"]),
        s(&node_json(&b)["caisse_id"]),
    );
    // A recognises B; B recognises A.
    for (dir, other) in [(&a, &b_id), (&b, &a_id)] {
        common::seat_parliament(dir, "2026-01-01");
        common::pass(dir, &["--recognise", other]);
        common::pass(dir, &["--recognition", "listed"]);
    }
    common::wait_until("A to follow B's document", 30, || {
        peer_row(&a, &b_id).is_some_and(|p| p["recognised"] == true)
    });
    let quiet = propagation(&a, &b, &b_id, "FR7630006000011234567890189");

    // 2,000 throwaway keys at A; B changes meanwhile.
    let rogue = spawn_throwaway(&a, "2000", SEED);
    std::thread::sleep(Duration::from_secs(3));
    let attacked = propagation(&a, &b, &b_id, "DE89370400440532013000");
    let out = rogue.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        attacked <= quiet.mul_f64(1.2) + Duration::from_secs(1),
        "B's change took {attacked:?} under attack, {quiet:?} before"
    );
    let evicted = federation_stat(&a, "documents_evicted");
    assert!(evicted >= 1000, "only {evicted} stranger documents evicted");
    let peers = ok(&a, &["peers"]).as_array().unwrap().len();
    assert!(peers <= 128 + 2, "A follows {peers} documents");
    let row = peer_row(&a, &b_id).expect("B's document evicted");
    assert_eq!(row["recognised"], true, "{row}");

    // The stranger has left: within the backoff, A stops trying.
    std::thread::sleep(Duration::from_secs(12));
    let failed = federation_stat(&a, "sync_failed");
    std::thread::sleep(Duration::from_secs(5));
    let later = federation_stat(&a, "sync_failed");
    assert_eq!(failed, later, "A still syncing strangers' documents");

    // A new caisse D that B recognises: A follows it although A's slots
    // for documents nobody vouches for are full of strangers, and keeps it
    // through another wave of them.
    TestNode::init(&d, "Caisse D", &join);
    let _nd = TestNode::start(&d);
    let d_id = s(&node_json(&d)["caisse_id"]);
    common::pass(&b, &["--recognise", &d_id]);
    common::wait_until("A to follow D", 30, || {
        peer_row(&a, &d_id).is_some_and(|p| p["name"] == "Caisse D")
    });
    let wave = spawn_throwaway(
        &a,
        "300",
        "7777777777777777777777777777777777777777777777777777777777777777",
    );
    let out = wave.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        federation_stat(&a, "documents_evicted") >= evicted + 200,
        "the second wave evicted nothing"
    );
    assert!(
        peer_row(&a, &d_id).is_some(),
        "D, vouched for by B, was evicted at A"
    );
    assert!(peer_row(&a, &b_id).is_some(), "B was evicted at A");
}

/// A peer announcing a third party's address as its own (issue 15): the
/// node never dials it, neither while the peer is connected nor after it
/// has left, when the node looks for it again.
#[test]
fn a_peer_claiming_a_third_partys_address_causes_no_dial() {
    const FED4: &str = "fed-claims";
    let (_tmp, dir, _node) = lone_node(FED4, "Caisse prudente");
    let victim = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    victim.set_nonblocking(true).unwrap();
    let claim = format!("/ip4/127.0.0.1/tcp/{}", victim.local_addr().unwrap().port());
    rogue_ok(&dir, FED4, &["--attack", "replay", "--claim-addr", &claim]);
    // Past the node's periodic peer discovery (every 30 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while std::time::Instant::now() < deadline {
        match victim.accept() {
            Ok((_, from)) => panic!("the node dialled the claimed address (from {from})"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(&dir, &["status"]);
}

/// A crowd of strangers (issue 15, finding 3): 500 connections from new
/// peer ids leave a caisse A recognises able to connect to A, and A keeps
/// only a few of them open.
#[test]
fn a_crowd_of_strangers_leaves_a_recognised_caisse_able_to_connect() {
    const FED5: &str = "fed-crowd";
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    TestNode::init(
        &a,
        "Caisse A",
        &["--listen", "/ip4/127.0.0.1/tcp/0", "--federation", FED5],
    );
    let _na = TestNode::start(&a);
    let first = s(&node_json(&a)["listen"][0]);
    TestNode::init(
        &b,
        "Caisse B",
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--federation",
            FED5,
            "--bootstrap",
            &first,
            "--announce",
            "/dns4/caisse-b.example.org/tcp/7400",
        ],
    );
    let mut nb = TestNode::start(&b);
    let b_id = s(&node_json(&b)["caisse_id"]);
    let b_peer = s(&ok(&b, &["network", "show"])["peer_id"]);
    common::seat_parliament(&a, "2026-01-01");
    common::pass(&a, &["--recognise", &b_id]);
    common::pass(&a, &["--recognition", "listed"]);
    let connected = |dir: &std::path::Path, peer: &str| {
        ok(dir, &["network", "show"])["connected"]
            .as_array()
            .is_some_and(|c| c.iter().any(|p| s(p) == peer))
    };
    common::wait_until("A to follow B", 30, || {
        peer_row(&a, &b_id).is_some_and(|p| p["recognised"] == true)
    });
    // What A will dial B at: the addresses B signed, its listen address and
    // the one it announces.
    let row = peer_row(&a, &b_id).unwrap();
    let signed: Vec<String> = row["addresses"].as_array().unwrap().iter().map(s).collect();
    let b_listen = s(&node_json(&b)["listen"][0]);
    assert!(signed.contains(&b_listen), "{row}");
    assert!(
        signed
            .iter()
            .any(|x| x.starts_with("/dns4/caisse-b.example.org/tcp/7400")),
        "{row}"
    );
    nb.stop();
    let rogue = rogue_cmd(&a, FED5, &["--attack", "crowd", "--repeat", "500"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let _nb = TestNode::start(&b);
    let took = common::wait_until("B to connect to A through the crowd", 20, || {
        connected(&a, &b_peer)
    });
    let out = rogue.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let detail = s(&v[0]["detail"]);
    let open: u64 = detail
        .split(", ")
        .find_map(|p| p.strip_suffix(" still open after 25 s")?.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(open <= 128, "{report}");
    assert!(took < Duration::from_secs(15), "B connected after {took:?}");
    ok(&a, &["status"]);
}

/// Resident memory of a process, from /proc (Linux).
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Memory under hostile load (issue 15, finding 4): ten peers announcing
/// Kademlia provider records and sending 4 MiB requests leave the node
/// under 100 MB above its baseline, and it keeps serving.
#[test]
fn provider_records_and_large_requests_leave_memory_bounded() {
    const FED6: &str = "fed-memory";
    let (_tmp, dir, node) = lone_node(FED6, "Caisse sobre");
    let pid = node.child.as_ref().unwrap().id();
    std::thread::sleep(Duration::from_secs(3));
    let baseline = rss_bytes(pid);
    assert!(baseline > 0, "no RSS for the node");
    let rogues: Vec<std::process::Child> = (0..10)
        .map(|i| {
            rogue_cmd(
                &dir,
                FED6,
                &[
                    "--attack",
                    "providers",
                    "--attack",
                    "large",
                    "--repeat",
                    "3",
                    "--seed",
                    &format!("{i:02}").repeat(32),
                ],
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut peak = baseline;
    let mut rogues = rogues;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while rogues.iter_mut().any(|r| r.try_wait().unwrap().is_none()) {
        peak = peak.max(rss_bytes(pid));
        assert!(std::time::Instant::now() < deadline, "rogues still running");
        std::thread::sleep(Duration::from_millis(100));
    }
    // And what stays after (records kept, buffers not returned).
    std::thread::sleep(Duration::from_secs(2));
    peak = peak.max(rss_bytes(pid));
    let grew = peak.saturating_sub(baseline);
    assert!(
        grew < 100 * 1024 * 1024,
        "the node grew by {} MB (baseline {} MB)",
        grew / (1024 * 1024),
        baseline / (1024 * 1024)
    );
    eprintln!(
        "baseline {} MB, peak {} MB",
        baseline / (1024 * 1024),
        peak / (1024 * 1024)
    );
    ok(&dir, &["status"]);
}

/// Token buckets per peer (issue 15): a peer flooding the node with
/// requests is refused past its share ("rate limited"), counted in
/// `network show`, and the node keeps serving.
#[test]
fn a_peer_flooding_requests_is_rate_limited() {
    const FED7: &str = "fed-flood";
    let (_tmp, dir, _node) = lone_node(FED7, "Caisse assaillie");
    let out = rogue_ok(&dir, FED7, &["--attack", "flood"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let detail = s(&v[0]["detail"]);
    let limited: u64 = detail
        .split(", ")
        .find_map(|p| p.strip_suffix(" rate limited")?.parse().ok())
        .unwrap_or_else(|| panic!("{detail}"));
    assert!(limited > 0, "{detail}");
    assert!(federation_stat(&dir, "rate_limited") >= limited, "{detail}");
    ok(&dir, &["status"]);
}

/// A Byzantine owner signing two versions of its document under one
/// sequence (issue 13): the node counts each equivocation, logs it under
/// the security target with the choice every honest caisse makes (the
/// smaller digest, `caisse_core::replication`), does not ban an owner for
/// its own document, and keeps serving.
#[test]
fn an_owner_signing_two_versions_under_one_sequence_is_caught() {
    const FED8: &str = "fed-equivocate";
    let (_tmp, dir, _node) = lone_node(FED8, "Caisse témoin");
    let out = rogue_ok(&dir, FED8, &["--attack", "equivocate", "--repeat", "3"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while federation_stat(&dir, "equivocations") < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        federation_stat(&dir, "equivocations"),
        3,
        "three sequences signed twice each: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let log = std::fs::read_to_string(dir.join("node.log")).unwrap();
    let caught = log
        .lines()
        .filter(|l| l.contains("caisse::security") && l.contains("equivocation"))
        .count();
    assert_eq!(caught, 3, "one security line per equivocation");
    ok(&dir, &["status"]);
}
