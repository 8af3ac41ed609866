//! Real node processes on 127.0.0.1, or each in its own network namespace
//! (`--wan`, see [`crate::wan`]): create, start, kill, restart.
//!
//! Each node is a separate OS process running the caisse daemon
//! (`caisse_node::daemon`, the code behind `caisse node`), started by
//! re-executing this binary with its hidden `node` subcommand, so a test
//! network needs nothing but this one binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use caisse_node::client::{Client, TokenFile};
use caisse_node::daemon::{self, InitOptions, NodeInfo};
use caisse_node::policy::Policy;
use caisse_node::store::Engine;
use caisse_protocol::{CaisseId, FederationId};

use crate::wan::Place;

/// The federation id of test networks.
pub const FEDERATION: &str = "testnet";

/// One node of the test network.
pub struct Node {
    /// Data directory.
    pub dir: PathBuf,
    /// The caisse id.
    pub id: CaisseId,
    /// Its API client (admin).
    pub client: Client,
    /// Its libp2p address.
    pub addr: String,
    /// Where its log goes.
    pub log: PathBuf,
    /// The network namespace it runs in (`--wan`), or none for loopback.
    netns: Option<String>,
    child: Option<Child>,
}

impl Node {
    /// Create the caisse in `dir` (manual clock on) and start it, with
    /// storage faults injected, the log written to
    /// `log` (outside a data directory that a power cut may take away) and
    /// a chosen storage engine, in the network namespace of `place` (its
    /// API and federation addresses there) or on loopback.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_with(
        index: usize,
        dir: &Path,
        name: &str,
        bootstrap: Vec<String>,
        policy: Policy,
        faults: Option<caisse_node::config::StoreFaults>,
        log: PathBuf,
        engine: Engine,
        place: Option<&Place>,
    ) -> Result<Node> {
        let (api, listen) = match place {
            Some(p) => (
                std::net::SocketAddr::from((p.api_ip, 0)),
                format!("/ip4/{}/tcp/0", p.wan_ip),
            ),
            None => ("127.0.0.1:0".parse()?, "/ip4/127.0.0.1/tcp/0".to_owned()),
        };
        let netns = place.map(|p| p.netns.clone());
        daemon::init(
            dir,
            InitOptions {
                name: name.to_owned(),
                territory: format!("Territoire {index}"),
                federation: FederationId::new(FEDERATION)?,
                api,
                listen: vec![listen],
                bootstrap,
                announce: Vec::new(),
                policy,
                secret: None,
                testing: caisse_node::config::Testing {
                    manual_clock: true,
                    faults,
                },
                engine,
            },
        )
        .with_context(|| format!("creating caisse {index}"))?;
        let (child, info) = spawn(dir, &log, netns.as_deref()).await?;
        Ok(Node {
            dir: dir.to_owned(),
            id: info.caisse_id,
            client: Client::from_data_dir(dir, TokenFile::Admin)?,
            addr: info.listen.first().cloned().unwrap_or_default(),
            log,
            netns,
            child: Some(child),
        })
    }

    /// SIGKILL the process, as a power cut would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the process again on the same data directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        let (child, info) = spawn(&self.dir, &self.log, self.netns.as_deref()).await?;
        self.child = Some(child);
        self.client = Client::from_data_dir(&self.dir, TokenFile::Admin)?;
        self.addr = info.listen.first().cloned().unwrap_or_default();
        Ok(())
    }

    /// Stop cleanly (SIGTERM), then make sure the process is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling a child process we own by its pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let Some(c) = &self.child else { return 0 };
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", c.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn spawn(dir: &Path, log_path: &Path, netns: Option<&str>) -> Result<(Child, NodeInfo)> {
    let _ = std::fs::remove_file(dir.join("node.json"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    let exe = std::env::current_exe()?;
    // In a namespace, `ip netns exec` enters it and execs the node (same pid).
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = cmd
        .arg("node")
        .arg("--data-dir")
        .arg(dir)
        .env(
            "RUST_LOG",
            std::env::var("CAISSE_NODE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting a node process")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(info) = NodeInfo::read(dir) {
            return Ok((child, info));
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "node in {} exited with {status} before it was ready; see {}",
                dir.display(),
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("node in {} did not start within 30 s", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The hidden `node` subcommand: run one caisse daemon until SIGTERM.
pub async fn run_node(dir: &Path) -> Result<()> {
    daemon::init_logging("info");
    if let Some(reason) = daemon::run_until_stopped(dir).await? {
        anyhow::bail!("the caisse's storage failed and the node stopped: {reason}");
    }
    Ok(())
}
