//! Sweeps: a pilot run over a grid of parameters and seeds, written as one
//! tidy CSV, a summary, plots and every run's own files. The schema is in
//! `docs/RESEARCH.md`; the same command gives the same files, byte for byte.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, anyhow, bail};

use super::engine::{self, RunOutput};
use super::pilot::{PARAMETERS, Pilot};
use crate::svg;

/// One varied parameter and its values.
#[derive(Clone, Debug)]
pub struct Vary {
    /// Parameter name (see [`PARAMETERS`]).
    pub name: String,
    /// Its values.
    pub values: Vec<f64>,
}

impl Vary {
    /// Read `name=v1,v2,...`.
    pub fn parse(text: &str) -> Result<Vary> {
        let (name, values) = text.split_once('=').ok_or_else(|| {
            anyhow!("--vary {text:?}: write NAME=V1,V2,… (e.g. allocation=100,150)")
        })?;
        let name = name.trim().to_owned();
        if !PARAMETERS.iter().any(|(n, _)| *n == name) {
            let known: Vec<&str> = PARAMETERS.iter().map(|(n, _)| *n).collect();
            bail!(
                "--vary {name}: unknown parameter; the parameters are {}",
                known.join(", ")
            );
        }
        let values = values
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| anyhow!("--vary {name}: {v:?} is not a number"))
            })
            .collect::<Result<Vec<f64>>>()?;
        if values.is_empty() {
            bail!("--vary {name}: give at least one value");
        }
        Ok(Vary { name, values })
    }
}

/// Read seeds: `1..20` (inclusive) or `1,2,5`.
pub fn parse_seeds(text: &str) -> Result<Vec<u64>> {
    let bad = || anyhow!("--seeds {text:?}: write FIRST..LAST (inclusive) or a list like 1,2,5");
    let seeds: Vec<u64> = if let Some((a, b)) = text.split_once("..") {
        let a: u64 = a.trim().parse().map_err(|_| bad())?;
        let b: u64 = b
            .trim()
            .trim_start_matches('=')
            .parse()
            .map_err(|_| bad())?;
        if b < a || b - a >= 10_000 {
            return Err(bad());
        }
        (a..=b).collect()
    } else {
        text.split(',')
            .map(|s| s.trim().parse().map_err(|_| bad()))
            .collect::<Result<_>>()?
    };
    if seeds.is_empty() {
        return Err(bad());
    }
    Ok(seeds)
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Write one run's own files into `dir`: `report.json`, `report.md`,
/// `measures.csv`, `population.csv` and `export/<month>/{purchases,members}.csv`.
pub fn write_run(
    dir: &Path,
    pilot: &Pilot,
    params: &BTreeMap<String, f64>,
    out: &RunOutput,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let w = |name: &str, body: String| -> Result<()> {
        std::fs::write(dir.join(name), body).with_context(|| format!("writing {name}"))
    };
    w(
        "report.json",
        serde_json::to_string_pretty(&serde_json::json!({
            "pilot": out.pilot, "seed": out.seed, "parameters": params,
            "measures": out.measures, "deciles": out.deciles,
            "territory": out.territory, "reports": out.reports,
        }))?,
    )?;
    w("report.md", markdown(pilot, out))?;
    let mut csv = String::from("pilot,seed,measure,value\n");
    for (k, v) in &out.measures {
        let _ = writeln!(csv, "{},{},{k},{}", out.pilot, out.seed, num(*v));
    }
    w("measures.csv", csv)?;
    let mut pop = String::from(
        "decile,source_eur,model_eur,sample_eur,standard_error_eur,gap_in_standard_errors\n",
    );
    for d in &out.deciles {
        let _ = writeln!(
            pop,
            "{},{},{},{},{},{}",
            d.decile,
            d.source.map(num).unwrap_or_default(),
            num(d.model),
            num(d.sample),
            num(d.standard_error),
            num(d.gap_in_standard_errors)
        );
    }
    w("population.csv", pop)?;
    // The anonymised export of each month, as `caisse report export` writes it.
    for e in &out.exports {
        let d = dir.join("export").join(e.period.to_string());
        std::fs::create_dir_all(&d)?;
        let rows = |v: serde_json::Value| v.as_array().cloned().unwrap_or_default();
        let purchases = rows(serde_json::to_value(&e.purchases)?);
        let members = rows(serde_json::to_value(&e.members)?);
        std::fs::write(
            d.join("purchases.csv"),
            caisse_core::report::to_csv(&caisse_core::report::PURCHASE_COLUMNS, &purchases),
        )?;
        std::fs::write(
            d.join("members.csv"),
            caisse_core::report::to_csv(&caisse_core::report::MEMBER_COLUMNS, &members),
        )?;
    }
    Ok(())
}

/// The pilot's report: the population against its source, the published
/// figures against the simulated ones, and every measure.
pub fn markdown(pilot: &Pilot, out: &RunOutput) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Pilot {} (seed {})\n\n{}\n",
        pilot.name,
        out.seed,
        pilot.note.trim()
    );
    let t = &out.territory;
    let _ = writeln!(
        s,
        "## Population\n\nTerritory: {} — {} ({}). Annual disposable income per consumption unit, EUR; \
         the model passes through the published d1, median and d9 (two-piece log-normal); a sample of {} \
         households is drawn from it and the participants are recruited from the sample.\n",
        t.name, t.source, t.year, pilot.territory_sample
    );
    let _ = writeln!(
        s,
        "| decile | source | model | sample | standard error | gap (standard errors) |\n|---|---|---|---|---|---|"
    );
    for d in &out.deciles {
        let _ = writeln!(
            s,
            "| D{} | {} | {:.0} | {:.0} | {:.0} | {:+.2} |",
            d.decile,
            d.source.map_or("—".into(), |v| format!("{v:.0}")),
            d.model,
            d.sample,
            d.standard_error,
            d.gap_in_standard_errors
        );
    }
    let _ = writeln!(
        s,
        "\nShare of the territory below the 2013 poverty line (EUR 12,000 a year): model {:.1}%, published poverty rate {:.1}%.\n",
        100.0 * t.share_below(engine::POVERTY_LINE_2013),
        t.poverty_rate_pct
    );
    let _ = writeln!(
        s,
        "## Simulated against published\n\n| measure | role | published | simulated | gap | source | why the gap |\n|---|---|---|---|---|---|---|"
    );
    for p in &pilot.published {
        let sim = out.measures.get(&p.measure).copied();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            p.measure,
            p.role,
            p.value.map_or("none found".into(), num),
            sim.map_or("not measured".into(), |v| format!("{v:.1}")),
            match (sim, p.value) {
                (Some(v), Some(w)) => format!("{:+.1}", v - w),
                _ => "—".into(),
            },
            p.source,
            if p.gap.is_empty() {
                "—"
            } else {
                p.gap.as_str()
            }
        );
    }
    let _ = writeln!(s, "\n## Every measure\n\n| measure | value |\n|---|---|");
    for (k, v) in &out.measures {
        let _ = writeln!(s, "| {k} | {} |", num(*v));
    }
    s
}

/// A sweep's plan.
pub struct SweepOptions {
    /// The pilot.
    pub pilot: Pilot,
    /// What varies.
    pub vary: Vec<Vary>,
    /// The seeds.
    pub seeds: Vec<u64>,
    /// Where everything goes.
    pub out: PathBuf,
    /// Worker threads.
    pub threads: usize,
}

/// Run a sweep; returns the number of runs.
pub fn sweep(opts: &SweepOptions) -> Result<usize> {
    // The grid, in a fixed order: parameters as given, values as given, then seeds.
    let mut grid: Vec<BTreeMap<String, f64>> = vec![BTreeMap::new()];
    for v in &opts.vary {
        if opts.vary.iter().filter(|w| w.name == v.name).count() > 1 {
            bail!("--vary {} given twice", v.name);
        }
        grid = grid
            .into_iter()
            .flat_map(|g| {
                v.values.iter().map(move |x| {
                    let mut g = g.clone();
                    g.insert(v.name.clone(), *x);
                    g
                })
            })
            .collect();
    }
    let mut runs: Vec<(BTreeMap<String, f64>, u64, Pilot)> = Vec::new();
    for g in &grid {
        let p = opts.pilot.with(g)?;
        for s in &opts.seeds {
            runs.push((g.clone(), *s, p.clone()));
        }
    }
    std::fs::create_dir_all(opts.out.join("runs"))
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<RunOutput>>>> =
        Mutex::new((0..runs.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..opts.threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((params, seed, pilot)) = runs.get(i) else {
                        break;
                    };
                    let r = engine::run(pilot, *seed).and_then(|o| {
                        write_run(&opts.out.join("runs").join(run_name(i)), pilot, params, &o)?;
                        Ok(o)
                    });
                    if let Ok(mut all) = results.lock() {
                        all[i] = Some(r);
                    }
                    crate::research::progress(format!(
                        "run {}/{} done (seed {seed}, {})",
                        i + 1,
                        runs.len(),
                        params
                            .iter()
                            .map(|(k, v)| format!("{k}={}", num(*v)))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ));
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| anyhow!("a sweep worker panicked"))?;
    let mut outputs = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        let r = r.ok_or_else(|| anyhow!("run {i} did not finish"))?;
        outputs.push(r.with_context(|| format!("run {}", run_name(i)))?);
    }
    let names: Vec<&str> = opts.vary.iter().map(|v| v.name.as_str()).collect();
    // The tidy CSV.
    let mut csv = String::from("run,pilot,seed");
    for n in &names {
        let _ = write!(csv, ",{n}");
    }
    csv.push_str(",measure,value\n");
    for (i, ((params, seed, _), o)) in runs.iter().zip(&outputs).enumerate() {
        for (k, v) in &o.measures {
            let _ = write!(csv, "{},{},{seed}", run_name(i), o.pilot);
            for n in &names {
                let _ = write!(csv, ",{}", num(params[*n]));
            }
            let _ = writeln!(csv, ",{k},{}", num(*v));
        }
    }
    std::fs::write(opts.out.join("sweep.csv"), csv)?;
    // The summary: per grid point and measure, mean, sd, min, max over seeds.
    let mut by_point: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let key = |p: &BTreeMap<String, f64>| {
        names
            .iter()
            .map(|n| num(p[*n]))
            .collect::<Vec<_>>()
            .join(",")
    };
    for ((params, _, _), o) in runs.iter().zip(&outputs) {
        for (k, v) in &o.measures {
            by_point
                .entry((key(params), k.clone()))
                .or_default()
                .push(*v);
        }
    }
    let mut summary = String::new();
    for n in &names {
        let _ = write!(summary, "{n},");
    }
    summary.push_str("measure,seeds,mean,sd,min,max\n");
    for ((point, measure), vals) in &by_point {
        let (mean, sd, lo, hi) = stats(vals);
        if !point.is_empty() {
            let _ = write!(summary, "{point},");
        }
        let _ = writeln!(
            summary,
            "{measure},{},{},{},{},{}",
            vals.len(),
            num(mean),
            num(sd),
            num(lo),
            num(hi)
        );
    }
    std::fs::write(opts.out.join("summary.csv"), summary)?;
    plots(opts, &runs, &outputs)?;
    std::fs::write(opts.out.join("README.md"), readme(opts, runs.len()))?;
    Ok(runs.len())
}

fn run_name(i: usize) -> String {
    format!("r{i:04}")
}

fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let lo = v.iter().copied().fold(f64::MAX, f64::min);
    let hi = v.iter().copied().fold(f64::MIN, f64::max);
    (mean, var.sqrt(), lo, hi)
}

/// One SVG per measure and varied parameter: the mean across seeds against
/// the parameter, one line per combination of the other parameters, with
/// the lowest-to-highest spread across seeds as a bar.
fn plots(
    opts: &SweepOptions,
    runs: &[(BTreeMap<String, f64>, u64, Pilot)],
    outputs: &[RunOutput],
) -> Result<()> {
    let dir = opts.out.join("plots");
    std::fs::create_dir_all(&dir)?;
    let measures: Vec<String> = outputs
        .first()
        .map(|o| o.measures.keys().cloned().collect())
        .unwrap_or_default();
    for v in &opts.vary {
        for m in &measures {
            // series name -> x -> values
            let mut series: BTreeMap<String, BTreeMap<i64, (f64, Vec<f64>)>> = BTreeMap::new();
            for ((params, _, _), o) in runs.iter().zip(outputs) {
                let others: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| **k != v.name)
                    .map(|(k, x)| format!("{k}={}", num(*x)))
                    .collect();
                let name = if others.is_empty() {
                    opts.pilot.name.clone()
                } else {
                    others.join(" ")
                };
                let x = params[&v.name];
                series
                    .entry(name)
                    .or_default()
                    .entry((x * 1e6).round() as i64)
                    .or_insert((x, Vec::new()))
                    .1
                    .push(o.measures.get(m).copied().unwrap_or(0.0));
            }
            let lines: Vec<svg::SpreadSeries> = series
                .into_iter()
                .map(|(name, pts)| {
                    let pts = pts
                        .into_values()
                        .map(|(x, vals)| {
                            let (mean, _, lo, hi) = stats(&vals);
                            (x, mean, lo, hi)
                        })
                        .collect();
                    (name, pts)
                })
                .collect();
            let chart = svg::spread(
                &format!("{m} by {} ({} seeds)", v.name, opts.seeds.len()),
                &v.name,
                m,
                &lines,
            );
            std::fs::write(dir.join(format!("{m}__by__{}.svg", v.name)), chart)?;
        }
    }
    Ok(())
}

fn readme(opts: &SweepOptions, runs: usize) -> String {
    let mut s = format!(
        "# Sweep of pilot {}\n\n{runs} runs: {} × seeds {:?}.\n\n",
        opts.pilot.name,
        opts.vary
            .iter()
            .map(|v| format!(
                "{} in {{{}}}",
                v.name,
                v.values
                    .iter()
                    .map(|x| num(*x))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .collect::<Vec<_>>()
            .join(" × "),
        opts.seeds
    );
    s.push_str(
        "- `sweep.csv`: one row per run and measure (`run,pilot,seed,<parameters…>,measure,value`).\n\
         - `summary.csv`: per grid point and measure, the mean, standard deviation, minimum and maximum across seeds.\n\
         - `plots/<measure>__by__<parameter>.svg`: the mean against the parameter, the bar spans the seeds.\n\
         - `runs/rNNNN/`: each run's `report.md`, `report.json` (the caisse's own monthly reports included), \
         `measures.csv`, `population.csv` and `export/<month>/purchases.csv` and `members.csv` (the anonymised export of each month, as `caisse report export` writes it).\n\n\
         Every measure is defined in docs/RESEARCH.md.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vary_and_seeds_read_what_researchers_write_and_refuse_the_rest() {
        let v = Vary::parse("allocation=100,150").unwrap();
        assert_eq!(
            (v.name.as_str(), v.values),
            ("allocation", vec![100.0, 150.0])
        );
        assert!(
            Vary::parse("allocation")
                .unwrap_err()
                .to_string()
                .contains("NAME=")
        );
        assert!(
            Vary::parse("colour=1")
                .unwrap_err()
                .to_string()
                .contains("the parameters are")
        );
        assert!(
            Vary::parse("scale=1,x")
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
        assert_eq!(parse_seeds("1..3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seeds("4,9").unwrap(), vec![4, 9]);
        assert!(parse_seeds("3..1").is_err());
        assert!(parse_seeds("a").is_err());
    }
}
