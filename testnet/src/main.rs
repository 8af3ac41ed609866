//! `caisse-testnet`: spawns a federation of real caisse node processes on
//! this machine, runs a scenario, injects faults, checks invariants and
//! writes a report with plots.

mod cluster;
mod lazyfs;
mod powercut;
mod run;
mod scenario;
mod wan;

use caisse_testnet::research;
use caisse_testnet::svg;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// A federation of real caisse nodes on this machine, for researchers and newcomers.
#[derive(Parser)]
#[command(name = "caisse-testnet", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario: N node processes on 127.0.0.1, M simulated months,
    /// faults, invariants, a report (report.json, report.md, SVG plots).
    Run {
        /// A built-in scenario (demo, montpellier, federation-30, federation-100) or a TOML file.
        #[arg(long, default_value = "demo")]
        scenario: String,
        /// Where to write the report.
        #[arg(long, default_value = "testnet-report")]
        out: PathBuf,
        /// Seed of every random choice: the same seed gives the same scenario.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Keep the nodes' data directories (under OUT/nodes).
        #[arg(long)]
        keep: bool,
        /// The network: none (loopback), lan, national (round trips
        /// 10–150 ms, jitter, 0.1% loss) or rural (40–200 ms, 2% loss).
        /// Anything but none puts each node in its own network namespace
        /// behind an emulated link (needs root). Default: the scenario's
        /// `wan`, else none.
        #[arg(long)]
        wan: Option<String>,
    },
    /// Measure accreditation propagation: time from a decision at one node
    /// to its visibility at every other node.
    Propagation {
        /// Number of nodes.
        #[arg(long, default_value_t = 12)]
        nodes: usize,
        /// Accreditations to time (at rotating nodes).
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// The network, as for `run`: none (loopback), lan, national or
        /// rural (each node in its own namespace; needs root).
        #[arg(long, default_value = "none")]
        wan: String,
        /// Seed of the emulated links' distances.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Simulate whole federations in one thread, seed after seed: the real
    /// core of every caisse, a simulated clock, network, crashes and
    /// workload; invariants checked daily and at quiescence.
    Sim {
        /// Caisses per federation.
        #[arg(long, default_value_t = 4)]
        caisses: usize,
        /// Members per caisse.
        #[arg(long, default_value_t = 12)]
        members: usize,
        /// Seeds to run, `A..B` (B excluded) or one number.
        #[arg(long, default_value = "0..100")]
        seeds: String,
        /// Simulated days.
        #[arg(long, default_value_t = 45)]
        days: u32,
        /// Fault profile: none, lan, wan, lossy, chaos or disk (chaos with a
        /// slow, stalling disk, crashes after the sync, replayed entries,
        /// equivocations, parliaments revoking and re-accrediting outlets
        /// and changing their recognition, and member sign-ins).
        #[arg(long, default_value = "chaos")]
        faults: String,
        /// How busy the caisses are: light (an action every two hours or
        /// so), normal (every half hour) or busy (every seven minutes).
        #[arg(long, default_value = "normal")]
        workload: String,
        /// Print every run's trace hash and counts.
        #[arg(long)]
        verbose: bool,
    },
    /// Cut the power under load, again and again: caisse 0 keeps its data
    /// on a FUSE filesystem that loses every write not yet synced; after
    /// each cut it restarts and every acknowledged purchase, the ledgers
    /// and the signed documents are checked. Needs /dev/fuse and root.
    Powercut {
        /// Power cuts to make.
        #[arg(long, default_value_t = 20)]
        cuts: u32,
        /// Seed of traffic, cut moments and what survives each cut.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// What survives a cut: drop (nothing unsynced), prefix (a random
        /// prefix of the unsynced writes), torn (a prefix ending in a torn
        /// write) or mixed (one of them at random per cut).
        #[arg(long, default_value = "mixed")]
        mode: String,
        /// Tills sending purchases at once.
        #[arg(long, default_value_t = 8)]
        tills: usize,
        /// Where powercut.json and the nodes' logs go.
        #[arg(long, default_value = "powercut-report")]
        out: PathBuf,
        /// Negative control: the node's store syncs nothing; the harness
        /// must then find acknowledged purchases lost (and exits 0 if so).
        #[arg(long)]
        skip_sync: bool,
        /// Storage engine of the node that loses power: redb (the
        /// default) or sled (to reproduce its losses).
        #[arg(long, default_value = "redb", value_parser = ["redb", "sled"])]
        store_engine: String,
    },
    /// Run one research pilot (montpellier, nantes, cadenet, dieulefit or a
    /// pilot TOML file) on the real caisse core in one thread: a population
    /// drawn from the territory's published income statistics, members
    /// shopping by behavioural rules, and a report comparing the outcomes
    /// with the pilot's published figures (report.md, report.json,
    /// measures.csv, population.csv, export/).
    Pilot {
        /// Built-in pilot name or pilot file.
        #[arg(long, default_value = "montpellier")]
        pilot: String,
        /// Seed of the population and of every choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where the files go.
        #[arg(long, default_value = "pilot-report")]
        out: PathBuf,
    },
    /// Run a pilot over a grid of parameters and seeds: one tidy CSV (a row
    /// per run and measure), a summary, plots of each measure against each
    /// parameter with the spread across seeds, and every run's files.
    Sweep {
        /// Built-in pilot name or pilot file.
        #[arg(long, alias = "scenario", default_value = "montpellier")]
        pilot: String,
        /// NAME=V1,V2,… (repeat for a grid): allocation, scale, scale_min,
        /// scale_ceiling, subsidy, households, coverage, use_low, use_high,
        /// organic_pct, organic_preference, price_sensitivity.
        #[arg(long, required = true)]
        vary: Vec<String>,
        /// FIRST..LAST (inclusive) or a list: 1,2,5.
        #[arg(long, default_value = "1..10")]
        seeds: String,
        /// Where the files go.
        #[arg(long, default_value = "sweep")]
        out: PathBuf,
        /// Runs at once (default: the machine's cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// (internal) Run one caisse node: what `run` spawns for each caisse.
    #[command(hide = true)]
    Node {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A test network runs tens of node processes on a few cores: one
    // worker thread each (at 100 nodes on 2 cores, two workers per node
    // spent about 14 % of a node's CPU samples switching threads). A
    // caisse's own node (`caisse node`) keeps one worker per core.
    let workers = if matches!(cli.command, Cmd::Node { .. }) {
        1
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(main_async(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn main_async(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Pilot { pilot, seed, out } => {
            let p = research::pilot::Pilot::load(&pilot)?;
            research::progress(format!("pilot {} (seed {seed})", p.name));
            let o = research::engine::run(&p, seed)?;
            research::sweep::write_run(&out, &p, &Default::default(), &o)?;
            println!("{}", research::sweep::markdown(&p, &o));
            println!("files in {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sweep {
            pilot,
            vary,
            seeds,
            out,
            threads,
        } => {
            let opts = research::sweep::SweepOptions {
                pilot: research::pilot::Pilot::load(&pilot)?,
                vary: vary
                    .iter()
                    .map(|v| research::sweep::Vary::parse(v))
                    .collect::<Result<_>>()?,
                seeds: research::sweep::parse_seeds(&seeds)?,
                out: out.clone(),
                threads: threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
            };
            let started = std::time::Instant::now();
            let n = research::sweep::sweep(&opts)?;
            println!(
                "{n} runs in {:.1} s: {}/sweep.csv, summary.csv, plots/, runs/",
                started.elapsed().as_secs_f64(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sim {
            caisses,
            members,
            seeds,
            days,
            faults,
            workload,
            verbose,
        } => sim_command(caisses, members, &seeds, days, &faults, &workload, verbose),
        Cmd::Powercut {
            cuts,
            seed,
            mode,
            tills,
            out,
            skip_sync,
            store_engine,
        } => {
            let mode = match mode.as_str() {
                "mixed" => None,
                m => Some(lazyfs::CutMode::parse(m).ok_or_else(|| {
                    anyhow::anyhow!("--mode {m}: use drop, prefix, torn or mixed")
                })?),
            };
            if cuts == 0 || tills == 0 {
                anyhow::bail!("--cuts and --tills must be at least 1");
            }
            let (_, ok) = powercut::powercut(powercut::Options {
                cuts,
                seed,
                mode,
                out: out.clone(),
                skip_sync,
                tills,
                engine: caisse_node::store::Engine::parse(&store_engine)
                    .ok_or_else(|| anyhow::anyhow!("--store-engine: redb or sled"))?,
            })
            .await?;
            println!("Report: {}", out.join("powercut.json").display());
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Cmd::Node { data_dir } => {
            cluster::run_node(&data_dir).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            scenario,
            out,
            seed,
            keep,
            wan,
        } => {
            let scenario = scenario::Scenario::load(&scenario)?;
            let wan = wan
                .or_else(|| scenario.wan.clone())
                .unwrap_or_else(|| "none".into());
            let wan = wan::Profile::by_name(&wan)?;
            let (report, ok) = run::run(run::RunOptions {
                scenario,
                seed,
                out: out.clone(),
                keep,
                wan,
            })
            .await?;
            println!(
                "{}",
                std::fs::read_to_string(out.join("report.md")).unwrap_or_default()
            );
            println!(
                "Report: {}/report.json, report.md and SVG plots in {}",
                out.display(),
                out.display()
            );
            let _ = report;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Cmd::Propagation {
            nodes,
            rounds,
            wan,
            seed,
        } => {
            if nodes < 2 {
                anyhow::bail!("--nodes must be at least 2");
            }
            let wan = wan::Profile::by_name(&wan)?;
            let (mut ms, counters) = run::propagation(nodes, rounds, wan, seed).await?;
            ms.sort_by(f64::total_cmp);
            let p = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
            println!(
                "accreditation propagation over {nodes} nodes: {} observations, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms.len(),
                p(0.5),
                p(0.99),
                p(1.0)
            );
            println!(
                "documents updated: {} from the changes gossiped with their heads, {} by sync",
                counters.get("changes_applied").copied().unwrap_or(0),
                counters.get("sync_accepted").copied().unwrap_or(0)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_seeds(text: &str) -> Result<std::ops::Range<u64>> {
    match text.split_once("..") {
        Some((a, b)) => {
            let (a, b): (u64, u64) = (a.trim().parse()?, b.trim().parse()?);
            if b <= a {
                anyhow::bail!("--seeds {text}: the end must be after the start (A..B, B excluded)");
            }
            Ok(a..b)
        }
        None => {
            let a: u64 = text.trim().parse()?;
            Ok(a..a + 1)
        }
    }
}

fn sim_command(
    caisses: usize,
    members: usize,
    seeds: &str,
    days: u32,
    faults: &str,
    workload_name: &str,
    verbose: bool,
) -> Result<ExitCode> {
    use caisse_testnet::sim;
    if caisses < 2 {
        anyhow::bail!("--caisses must be at least 2");
    }
    let range = parse_seeds(seeds)
        .map_err(|e| anyhow::anyhow!("--seeds {seeds}: {e} (write A..B or one number)"))?;
    let Some(profile) = sim::Faults::profile(faults) else {
        anyhow::bail!("--faults {faults}: unknown profile (none, lan, wan, lossy, chaos or disk)");
    };
    let Some(workload) = sim::Workload::by_name(workload_name) else {
        anyhow::bail!("--workload {workload_name}: unknown (light, normal or busy)");
    };
    let options = |seed: u64| sim::SimOptions {
        workload,
        ..sim::SimOptions::new(caisses, members, days, seed, profile.clone())
    };
    let started = std::time::Instant::now();
    let mut total = sim::SimReport::default();
    let mut failed = Vec::new();
    for seed in range.clone() {
        let r = sim::run(options(seed));
        if verbose {
            println!(
                "seed {seed}: trace {} events {} acks {:?} crashes {} dropped {}",
                &r.trace_hash[..16],
                r.events,
                r.acknowledged,
                r.crashes,
                r.dropped
            );
        }
        total.events += r.events;
        total.messages += r.messages;
        total.dropped += r.dropped;
        total.duplicated += r.duplicated;
        total.crashes += r.crashes;
        total.partitions += r.partitions;
        total.acknowledged.0 += r.acknowledged.0;
        total.acknowledged.1 += r.acknowledged.1;
        total.acknowledged.2 += r.acknowledged.2;
        total.declined += r.declined;
        total.sagas_resolved += r.sagas_resolved;
        total.retries += r.retries;
        total.statements += r.statements;
        total.bytes += r.bytes;
        total.largest_document = total.largest_document.max(r.largest_document);
        total
            .convergence_ms
            .extend(r.convergence_ms.iter().copied());
        total.settlement_ms.extend(r.settlement_ms.iter().copied());
        total.forged_refused += r.forged_refused;
        total.inflated_statements += r.inflated_statements;
        total.payouts += r.payouts;
        total.transfers_declared += r.transfers_declared;
        total.pin_refusals += r.pin_refusals;
        total.pin_resets += r.pin_resets;
        total.crashes_after_sync += r.crashes_after_sync;
        total.disk_stalls += r.disk_stalls;
        total.replayed_entries += r.replayed_entries;
        total.revocations.0 += r.revocations.0;
        total.revocations.1 += r.revocations.1;
        total.equivocations.0 += r.equivocations.0;
        total.equivocations.1 += r.equivocations.1;
        total.recognition_changes.0 += r.recognition_changes.0;
        total.recognition_changes.1 += r.recognition_changes.1;
        total.signins.0 += r.signins.0;
        total.signins.1 += r.signins.1;
        if !r.violations.is_empty() {
            eprintln!("seed {seed} FAILED:");
            for v in &r.violations {
                eprintln!("  - {v}");
            }
            eprintln!("  last steps:");
            for l in &r.tail {
                eprintln!("    {l}");
            }
            eprintln!(
                "  replay: caisse-testnet sim --caisses {caisses} --members {members} --days {days} --faults {faults} --workload {workload_name} --seeds {seed} --verbose"
            );
            if failed.is_empty() {
                // The first failure only: shrinking costs up to 40 runs.
                let (small, r) = sim::shrink(&options(seed), 40);
                eprintln!(
                    "  shrunk: caisse-testnet sim --caisses {} --members {} --days {} --faults {faults} --workload {workload_name} --seeds {seed} --verbose ({})",
                    small.caisses,
                    small.members,
                    small.days,
                    r.violations.first().map_or("", String::as_str)
                );
            }
            failed.push(seed);
        }
    }
    let n = range.end - range.start;
    println!(
        "{n} seeds, {caisses} caisses, {days} days, faults {faults}: {} failed, {:.1?} wall",
        failed.len(),
        started.elapsed()
    );
    println!(
        "exercised: {} events, {} messages ({} dropped, {} duplicated), {} crashes, {} partitions, purchases acknowledged {} local / {} cross-caisse / {} offline, {} declined, {} sales resolved, {} retries, {} settlement statements, {} sales refused for a wrong PIN or a locked card, {} PINs reset, {} outlet payouts, {} transfers declared paid",
        total.events,
        total.messages,
        total.dropped,
        total.duplicated,
        total.crashes,
        total.partitions,
        total.acknowledged.0,
        total.acknowledged.1,
        total.acknowledged.2,
        total.declined,
        total.sagas_resolved,
        total.retries,
        total.statements,
        total.pin_refusals,
        total.pin_resets,
        total.payouts,
        total.transfers_declared
    );
    let mut conv = total.convergence_ms.clone();
    conv.sort_unstable();
    let mut settled = total.settlement_ms.clone();
    settled.sort_unstable();
    let at = |v: &[u64], q: f64| {
        v.get(((v.len().saturating_sub(1)) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let pct = |q: f64| at(&conv, q);
    let caisse_days = (n as f64) * (caisses as f64) * f64::from(days.max(1));
    println!(
        "per caisse and day: {:.0} messages, {:.1} KiB sent; largest document {:.1} KiB; a change reached every caisse in p50 {} ms, p99 {} ms, max {} ms (simulated, {} changes); {} forged receipts refused; {} statements claiming too much published, none acknowledged",
        total.messages as f64 / caisse_days,
        total.bytes as f64 / caisse_days / 1024.0,
        total.largest_document as f64 / 1024.0,
        pct(0.5),
        pct(0.99),
        pct(1.0),
        conv.len(),
        total.forged_refused,
        total.inflated_statements
    );
    if total.crashes_after_sync + total.disk_stalls + total.replayed_entries > 0 {
        println!(
            "disk: {} crashes after a sync and before the answer, {} disk stalls past the home deadline; {} other caisses' entries passed off by the Byzantine caisse as its own, none read as its; {} outlet accreditations revoked by vote, {} outlets accredited again",
            total.crashes_after_sync,
            total.disk_stalls,
            total.replayed_entries,
            total.revocations.0,
            total.revocations.1
        );
    }
    if total.equivocations.0 + total.recognition_changes.0 + total.signins.0 + total.signins.1 > 0 {
        println!(
            "byzantine and parliaments: {} sequences under which the Byzantine caisse signed two versions of its document, {} times an honest caisse was offered the other side (each kept the smaller digest); {} parliaments stopped recognising the other caisses, {} recognised them again; member sign-ins {} accepted, {} refused",
            total.equivocations.0,
            total.equivocations.1,
            total.recognition_changes.0,
            total.recognition_changes.1,
            total.signins.0,
            total.signins.1
        );
    }
    println!(
        "settlement: every statement of a month answered {} ms after the month's end at p50, {} ms at p99, {} ms at most (simulated, {} months)",
        at(&settled, 0.5),
        at(&settled, 0.99),
        at(&settled, 1.0),
        settled.len()
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
