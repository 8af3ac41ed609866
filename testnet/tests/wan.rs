//! The test network on a real, emulated wide-area network (issue 15): three
//! caisses, each in its own network namespace behind a link of the national
//! profile (round trips of 10–150 ms, jitter, loss), one cut off at the
//! link for a few seconds and one killed mid-traffic. Every invariant must
//! hold, the latencies must show the links' round trips (a purchase at
//! another caisse cannot be faster than one), and the run must leave no
//! namespace behind.
//!
//! Namespaces and TUN devices need root (here and in CI). Where they are
//! missing the test says so and stops; in CI (`CI` set) that is a failure.

mod common;

use std::process::Command;

use serde_json::Value;

const SCENARIO: &str = r#"
name = "wan-small"
caisses = 3
members_per_caisse = 20
months = 1
start = "2027-03"
purchases_per_member = 2
allocation = "100.00"
income_min = "500.00"
income_max = "4000.00"
subsidy_per_member = "60.00"
producers_per_caisse = 1
outlets_per_caisse = 1
cross_caisse_pct = 30
wan = "national"

[[categories]]
name = "fresh-produce"
weight = 60
coverage_pct = 100

[[faults]]
kind = "partition"
caisse = 2
month = 1
seconds = 3

[[faults]]
kind = "kill-restart"
caisse = 1
month = 1
"#;

fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("caisse-{pid}-")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn three_caisses_over_a_national_wan_with_a_cut_link() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("wan.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let out = dir.path().join("report");
    let child = Command::new(env!("CARGO_BIN_EXE_caisse-testnet"))
        .args(["run", "--scenario"])
        .arg(&scenario)
        .arg("--out")
        .arg(&out)
        .args(["--seed", "5"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("caisse-testnet runs");
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    if common::unavailable_here(&stderr, "--wan needs", "the WAN test network") {
        return;
    }
    assert!(
        namespaces_of(pid).is_empty(),
        "the run left namespaces behind: {:?}",
        namespaces_of(pid)
    );
    let text = std::fs::read_to_string(out.join("report.json"))
        .unwrap_or_else(|e| panic!("no report ({e}); stderr:\n{stderr}"));
    let r: Value = serde_json::from_str(&text).unwrap();
    assert!(o.status.success(), "{stderr}\n{r:#}");
    assert_eq!(r["ok"], true, "{r:#}");
    let net = &r["network"];
    assert_eq!(net["profile"], "national", "{net:#}");
    let min_rtt = net["rtt_ms"]["min"].as_f64().unwrap();
    assert!(
        (10.0..=150.0).contains(&min_rtt),
        "round trips outside the profile: {net:#}"
    );
    // Thousands of packets cross the emulator in a run; how many depends
    // on timing (a CI run forwarded 999 against a bound of 1,000 here), so
    // the bound only says that the caisses' traffic went through it.
    assert!(
        net["packets"]["forwarded"].as_u64().unwrap() > 500,
        "{net:#}"
    );
    assert!(
        net["packets"]["cut"].as_u64().unwrap() > 0,
        "the cut dropped nothing: {net:#}"
    );
    // The links are real: no purchase at another caisse answers faster
    // than the round trip between the two.
    let samples = net["cross_caisse_samples"].as_array().unwrap();
    for s in samples {
        let (rtt, ms) = (s[0].as_f64().unwrap(), s[1].as_f64().unwrap());
        assert!(
            ms + 12.0 >= rtt,
            "a purchase over a {rtt} ms round trip took {ms} ms"
        );
    }
    let p50 = r["latency_ms"]["cross_caisse_purchase"]["p50"]
        .as_f64()
        .unwrap();
    assert!(p50 >= min_rtt * 0.9, "cross-caisse p50 {p50} ms: {net:#}");
    // Local purchases do not cross the WAN.
    let local = r["latency_ms"]["local_purchase"]["p50"].as_f64().unwrap();
    assert!(local < min_rtt, "local p50 {local} ms: {net:#}");
    let faults = r["faults"].as_array().unwrap();
    let cut = faults.iter().find(|f| f["kind"] == "partition").unwrap();
    assert!(
        cut["done"].as_str().unwrap().contains("link"),
        "the partition was not made at the link: {cut:#}"
    );
    for f in faults {
        for c in f["checked_after"].as_array().unwrap() {
            assert_eq!(c["ok"], true, "after {}: {c:#}", f["kind"]);
        }
    }
}

#[test]
fn an_unknown_wan_profile_is_refused_with_the_choices() {
    let o = Command::new(env!("CARGO_BIN_EXE_caisse-testnet"))
        .args(["run", "--wan", "moon", "--out"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("none, lan, national or rural"), "{err}");
}
