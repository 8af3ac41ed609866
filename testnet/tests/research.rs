//! Research use, through the `caisse-testnet` binary researchers run: the
//! calibrated Montpellier pilot, a sweep that gives the same files twice,
//! and the docs' Python snippet run on a sweep's output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_caisse-testnet")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("caisse-research-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run caisse-testnet");
    assert!(
        out.status.success(),
        "caisse-testnet {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_calibrated_montpellier_pilot_matches_its_deciles_and_compares_with_published_figures() {
    let out = tmp("pilot");
    let md = run(&[
        "pilot",
        "--pilot",
        "montpellier",
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    // The territory sample's published deciles are within 3 standard errors.
    let pop = read(&out.join("population.csv"));
    let mut checked = 0;
    for line in pop.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f[1].is_empty() {
            continue;
        }
        let gap: f64 = f[5].parse().unwrap();
        assert!(
            gap.abs() < 3.0,
            "decile {} is {gap} standard errors off: {line}",
            f[0]
        );
        checked += 1;
    }
    assert_eq!(checked, 3, "D1, D5 and D9 are published: {pop}");
    // The table of simulated against published figures, with gaps explained.
    for row in [
        "| average_contribution_eur | outcome | 60 |",
        "| contribution_share_pct | outcome | 60 |",
        "| budget_balance_eur_per_month | outcome | 0 |",
        "| participants | input | 400 | 400.0 |",
        "| outlets | input | none found |",
        "| organic_share_pct | outcome | 80 |",
    ] {
        assert!(md.contains(row), "missing {row:?} in:\n{md}");
    }
    assert!(
        md.contains("choose their contribution"),
        "the gap is explained: {md}"
    );
    // The measures come out of the run, not the file: organic and fresh
    // shares are near but not equal to the published ones, and money adds up.
    let measures: BTreeMap<String, f64> = read(&out.join("measures.csv"))
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[2].to_owned(), f[3].parse().unwrap())
        })
        .collect();
    let m = |k: &str| measures[k];
    assert!(
        (60.0..95.0).contains(&m("organic_share_pct")),
        "{measures:?}"
    );
    assert_ne!(m("organic_share_pct"), 80.0);
    assert_eq!(m("allocations_eur_per_month"), 40_000.0);
    let balance = m("contributions_eur_per_month") + m("subsidies_eur_per_month")
        - m("allocations_eur_per_month");
    assert!(
        (balance - m("budget_balance_eur_per_month")).abs() < 0.01,
        "{measures:?}"
    );
    assert_eq!(m("declined_purchases"), 0.0);
    // The anonymised export is there, with the columns the node exports.
    let purchases = read(&out.join("export/2027-01/purchases.csv"));
    assert!(purchases.starts_with("member,week,outlet,category,producer,amount,coverage_pct"));
    assert!(purchases.lines().count() > 1000);
    assert!(!purchases.contains("Participant"), "no names in the export");
    std::fs::remove_dir_all(out).unwrap();
}

fn sweep(out: &Path, threads: &str) -> String {
    run(&[
        "sweep",
        "--pilot",
        "montpellier",
        "--vary",
        "allocation=100,150",
        "--vary",
        "scale=100,150,250",
        "--seeds",
        "1..10",
        "--threads",
        threads,
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn a_sweep_lands_in_one_folder_and_twice_gives_identical_files() {
    let a = tmp("sweep-a");
    let b = tmp("sweep-b");
    let said = sweep(&a, "2");
    assert!(said.contains("60 runs"), "{said}");
    sweep(&b, "1");
    for f in ["sweep.csv", "summary.csv"] {
        assert_eq!(
            read(&a.join(f)),
            read(&b.join(f)),
            "{f} differs between two runs"
        );
    }
    let csv = read(&a.join("sweep.csv"));
    let header = csv.lines().next().unwrap();
    assert_eq!(header, "run,pilot,seed,allocation,scale,measure,value");
    let measures: std::collections::BTreeSet<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap())
        .collect();
    assert_eq!(
        csv.lines().count() - 1,
        60 * measures.len(),
        "one row per run and measure"
    );
    // A plot per measure and varied parameter, each with a line per other value.
    let plots = std::fs::read_dir(a.join("plots")).unwrap().count();
    assert_eq!(plots, 2 * measures.len());
    let svg = read(&a.join("plots/budget_balance_eur_per_month__by__scale.svg"));
    assert!(svg.contains("allocation=100") && svg.contains("allocation=150"));
    assert_eq!(svg.matches("<polyline").count(), 2);
    // The parameters act: a larger scale collects more.
    let summary = read(&a.join("summary.csv"));
    let mean = |alloc: &str, scale: &str| -> f64 {
        summary
            .lines()
            .find(|l| l.starts_with(&format!("{alloc},{scale},average_contribution_eur,")))
            .and_then(|l| l.split(',').nth(4))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no summary row for {alloc},{scale}"))
    };
    assert!(mean("100", "250") > mean("100", "150") && mean("100", "150") > mean("100", "100"));
    for run in ["r0000", "r0059"] {
        for f in ["report.md", "report.json", "measures.csv", "population.csv"] {
            assert!(a.join("runs").join(run).join(f).is_file(), "{run}/{f}");
        }
    }
    std::fs::remove_dir_all(a).unwrap();
    std::fs::remove_dir_all(b).unwrap();
}

/// The first ```python block after the `<!-- tested` marker in docs/RESEARCH.md.
fn docs_snippet() -> String {
    let doc = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/RESEARCH.md"));
    let after = &doc[doc.find("<!-- tested").expect("the tested marker")..];
    let start = after.find("```python\n").expect("a python block") + "```python\n".len();
    let len = after[start..].find("```").expect("the block's end");
    after[start..start + len].to_owned()
}

#[test]
fn the_docs_python_snippet_reads_a_sweep_as_the_summary_says() {
    let has_pandas = Command::new("python3")
        .args(["-c", "import pandas"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_pandas {
        let how = "install Python 3 and pandas (Debian: apt-get install python3-pandas; else pip install pandas)";
        if std::env::var_os("CI").is_some() || std::env::var_os("CAISSE_REQUIRE_PANDAS").is_some() {
            panic!("python3 with pandas is needed to test docs/RESEARCH.md's snippet: {how}");
        }
        eprintln!("SKIPPED: python3 with pandas not found; {how}");
        return;
    }
    let out = tmp("snippet");
    sweep(&out, "2");
    let py = Command::new("python3")
        .args(["-c", &docs_snippet()])
        .env("SWEEP", &out)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let printed = String::from_utf8_lossy(&py.stdout);
    let mut lines = printed.lines();
    assert_eq!(lines.next(), Some("allocation,scale,mean,std,count"));
    let summary = read(&out.join("summary.csv"));
    let mut rows = 0;
    for l in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = l.split(',').collect();
        let (alloc, scale): (f64, f64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        let want = summary
            .lines()
            .find(|s| s.starts_with(&format!("{alloc},{scale},budget_balance_eur_per_month,")))
            .unwrap_or_else(|| panic!("no summary row for {alloc},{scale}"));
        let w: Vec<f64> = want
            .split(',')
            .skip(3)
            .map(|x| x.parse().unwrap())
            .collect();
        let (mean, sd, n): (f64, f64, f64) = (
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
        );
        assert_eq!(n, w[0], "{l} vs {want}");
        assert!(
            (mean - w[1]).abs() < 0.01 && (sd - w[2]).abs() < 0.01,
            "{l} vs {want}"
        );
        rows += 1;
    }
    assert_eq!(rows, 6, "one row per allocation × scale: {printed}");
    std::fs::remove_dir_all(out).unwrap();
}
