//! A small scenario end to end through the real binaries: two caisses, one
//! month, a node killed mid-traffic and a rogue peer; report.json must
//! carry every field and every invariant must hold. Run twice with the same
//! seed, it gives the same counts.

use std::process::Command;

use serde_json::Value;

const SCENARIO: &str = r#"
name = "small"
caisses = 2
members_per_caisse = 30
months = 1
start = "2027-03"
purchases_per_member = 2
allocation = "100.00"
income_min = "500.00"
income_max = "4000.00"
subsidy_per_member = "60.00"
producers_per_caisse = 2
outlets_per_caisse = 1
cross_caisse_pct = 25

[[categories]]
name = "fresh-produce"
weight = 60
coverage_pct = 100

[[categories]]
name = "groceries"
weight = 40
coverage_pct = 66

[[faults]]
kind = "kill-restart"
caisse = 1
month = 1

[[faults]]
kind = "rogue"
caisse = 0
month = 1
"#;

fn run(dir: &std::path::Path, seed: &str) -> Value {
    let scenario = dir.join("small.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let out = dir.join(format!("report-{seed}"));
    let status = Command::new(env!("CARGO_BIN_EXE_caisse-testnet"))
        .args([
            "run",
            "--scenario",
            scenario.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--seed",
            seed,
        ])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "testnet failed: {}\n{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    for f in [
        "report.json",
        "report.md",
        "balances_and_spending.svg",
        "spending_by_category.svg",
        "settlement_flows.svg",
        "accreditation_propagation.svg",
        "purchase_latency.svg",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

#[test]
fn small_scenario_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let a = run(tmp.path(), "7");
    assert_eq!(a["ok"], true, "{a:#}");
    for key in [
        "scenario",
        "seed",
        "caisses",
        "members",
        "producers",
        "outlets",
        "months",
        "allocations_issued_cents",
        "contributions_cents",
        "subsidies_cents",
        "faults",
        "invariants",
    ] {
        assert!(!a[key].is_null(), "report.json lacks {key}");
    }
    for path in [
        ("purchases", "local"),
        ("purchases", "cross_caisse"),
        ("purchases", "declined"),
        ("settlement", "statements"),
        ("settlement", "disputes"),
        ("settlement", "net_sum_cents"),
        ("settlement", "transfers"),
        ("latency_ms", "accreditation_propagation"),
    ] {
        assert!(
            !a[path.0][path.1].is_null(),
            "report.json lacks {}.{}",
            path.0,
            path.1
        );
    }
    let invariants = a["invariants"].as_array().unwrap();
    assert!(invariants.len() >= 6);
    assert!(
        invariants.iter().all(|i| i["ok"] == true),
        "{invariants:#?}"
    );
    assert_eq!(a["faults"].as_array().unwrap().len(), 2);
    assert!(a["purchases"]["local"].as_u64().unwrap() > 0);
    // Every category is accredited everywhere: nothing may be refused as not
    // conventioned (a node restarted mid-scenario must resume at the scenario's date).
    assert!(
        a["purchases"]["declined"]["not_conventioned"].is_null(),
        "{:#}",
        a["purchases"]
    );
    assert!(
        a["latency_ms"]["accreditation_propagation"]["samples"]
            .as_u64()
            .unwrap()
            > 0
    );
    // The same seed gives the same scenario counts.
    let b = run(tmp.path(), "7");
    for key in [
        "members",
        "allocations_issued_cents",
        "contributions_cents",
        "subsidies_cents",
    ] {
        assert_eq!(
            a[key], b[key],
            "{key} differs between runs with the same seed"
        );
    }
    assert_eq!(a["purchases"]["local"], b["purchases"]["local"]);
    assert_eq!(
        a["purchases"]["declined"], b["purchases"]["declined"],
        "first run: {:#}\nsecond run: {:#}",
        a["purchases"], b["purchases"]
    );
}
