//! `caisse-testnet`: spawns a federation of real caisse node processes on
//! this machine, runs a scenario, injects faults, checks invariants and
//! writes a report with plots.

mod cluster;
mod run;
mod scenario;
mod svg;

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
        /// A built-in scenario (demo, montpellier, federation-30) or a TOML file.
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
    let rt = match tokio::runtime::Builder::new_multi_thread()
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
        Cmd::Node { data_dir } => {
            cluster::run_node(&data_dir).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            scenario,
            out,
            seed,
            keep,
        } => {
            let scenario = scenario::Scenario::load(&scenario)?;
            let (report, ok) = run::run(run::RunOptions {
                scenario,
                seed,
                out: out.clone(),
                keep,
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
        Cmd::Propagation { nodes, rounds } => {
            if nodes < 2 {
                anyhow::bail!("--nodes must be at least 2");
            }
            let mut ms = run::propagation(nodes, rounds).await?;
            ms.sort_by(f64::total_cmp);
            let p = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
            println!(
                "accreditation propagation over {nodes} nodes: {} observations, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms.len(),
                p(0.5),
                p(0.99),
                p(1.0)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
