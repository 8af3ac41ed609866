//! Creating a caisse (`caisse init`) and running its node (`caisse node`).
//!
//! A data directory holds:
//!
//! | file | what |
//! |---|---|
//! | `config.toml` | settings, commented |
//! | `caisse.key` | the caisse's ed25519 secret key (mode 0600) |
//! | `admin.token`, `observer.token` | API tokens (mode 0600) |
//! | `store/` | the sled store: ledger, members, outlets |
//! | `node.json` | written by a running node: its id, API address, token files |
//!
//! Start-up is linear and logged: config, key, store, state, writer, API,
//! `node.json`. Shutdown (SIGINT/SIGTERM) stops the API, lets the writer
//! finish and sync its last batch, then removes `node.json`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use caisse_protocol::{CaisseId, FederationId, PurchaseId, SecretKey};
use serde::{Deserialize, Serialize};

use crate::caisse::Caisse;
use crate::config::{Config, Testing};
use crate::members::{Role, token_key};
use crate::policy::Policy;
use crate::store::{Op, Store, StoreError, encode_value};
use crate::writer::{self, Clock};

/// Why a node could not be created or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The directory already holds a caisse.
    #[error("{0} already holds a caisse (found caisse.key); refusing to overwrite it")]
    Exists(PathBuf),
    /// The directory holds no caisse.
    #[error("{0} holds no caisse: create one with `caisse init --data-dir {0} --name NAME`")]
    NotACaisse(PathBuf),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An invalid argument.
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What `caisse init` needs.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Public name.
    pub name: String,
    /// Territory.
    pub territory: String,
    /// Federation id.
    pub federation: FederationId,
    /// HTTP API address.
    pub api: SocketAddr,
    /// libp2p listen addresses.
    pub listen: Vec<String>,
    /// Bootstrap peers.
    pub bootstrap: Vec<String>,
    /// Public addresses to announce (behind a NAT).
    pub announce: Vec<String>,
    /// Initial policy.
    pub policy: Policy,
    /// Secret key bytes (random unless a test fixes them).
    pub secret: Option<[u8; 32]>,
    /// Testing settings.
    pub testing: Testing,
    /// The storage engine of the new store (redb unless sled is asked).
    pub engine: crate::store::Engine,
}

/// What `caisse init` created.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Created {
    /// The new caisse's id.
    pub caisse_id: CaisseId,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The admin token file.
    pub admin_token_file: PathBuf,
    /// The observer token file.
    pub observer_token_file: PathBuf,
}

/// Random bytes from the operating system.
pub fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    // The OS random source failing is unrecoverable for a node that signs.
    getrandom::fill(&mut b).unwrap_or_else(|e| panic!("OS random source failed: {e}"));
    b
}

/// A new purchase id for a till of this node or its CLI: time-ordered
/// ([`PurchaseId::time_ordered`]: the records of new sales append to their
/// index), the rest from the operating system's random source.
pub fn new_purchase_id() -> PurchaseId {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut random = [0u8; 10];
    random.copy_from_slice(&random32()[..10]);
    PurchaseId::time_ordered(ms, random)
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), NodeError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Every file and directory this process creates from now on is private
/// to its user (sled's snapshots, node.json, exports): umask 077.
pub fn private_umask() {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Paths under `dir` (itself included) that other accounts may read or
/// write: any group or other permission bit. Symlinks are not followed.
pub fn loose_paths(dir: &Path) -> Result<Vec<PathBuf>, NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let mut loose = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).map_err(io(&p))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.permissions().mode() & 0o077 != 0 {
            loose.push(p.clone());
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).map_err(io(&p))? {
                todo.push(e.map_err(io(&p))?.path());
            }
        }
    }
    Ok(loose)
}

/// Make the data directory private to its owner: the directory and every
/// directory under it 0700, every file 0600 (it holds names, residences,
/// incomes and the caisse's key). Returns the paths that were looser, so
/// the caller can warn.
pub fn make_private(dir: &Path) -> Result<Vec<PathBuf>, NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let loose = loose_paths(dir)?;
    for p in &loose {
        let meta = std::fs::symlink_metadata(p).map_err(io(p))?;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        let mode = meta.permissions().mode() & 0o777;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode & 0o700 | want))
            .map_err(io(p))?;
    }
    Ok(loose)
}

/// Create a caisse in `dir`: key, config, store, tokens. Refuses to
/// overwrite an existing caisse.
pub fn init(dir: &Path, opts: InitOptions) -> Result<Created, NodeError> {
    if opts.name.trim().is_empty() || opts.name.len() > 200 {
        return Err(NodeError::Invalid(
            "--name must be 1 to 200 characters".into(),
        ));
    }
    for (what, text) in [("--name", &opts.name), ("--territory", &opts.territory)] {
        if text.chars().any(caisse_protocol::text::is_hostile) {
            return Err(NodeError::Invalid(format!(
                "{what} has control characters: use plain text (other caisses show it)"
            )));
        }
    }
    opts.policy
        .validate()
        .map_err(|e| NodeError::Invalid(format!("policy: {e}")))?;
    let key_path = dir.join("caisse.key");
    if key_path.exists() || crate::store::Engine::of(dir).is_some() {
        return Err(NodeError::Exists(dir.to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let secret = SecretKey::from_bytes(opts.secret.unwrap_or_else(random32));
    write_private(&key_path, hex::encode(secret.to_bytes()).as_bytes())?;
    let config = Config {
        name: opts.name.trim().to_owned(),
        territory: opts.territory.trim().to_owned(),
        federation: opts.federation,
        api: opts.api,
        listen: opts.listen,
        bootstrap: opts.bootstrap,
        announce: opts.announce,
        http: crate::config::Http::default(),
        testing: opts.testing,
    };
    let config_path = dir.join("config.toml");
    crate::durable::save(&config_path, config.to_commented_toml().as_bytes())
        .map_err(io(&config_path))?;
    let store = crate::store::open(dir, opts.engine)?;
    let today = Clock::system().today();
    caisse_core::caisse::write_initial_state(
        store.as_ref(),
        &secret,
        &config.name,
        &config.territory,
        &opts.policy,
        today,
    )?;
    private_umask();
    make_private(dir)?;
    let mut tokens = Vec::new();
    let mut files = Vec::new();
    for (role, file) in [
        (Role::Admin, "admin.token"),
        (Role::Observer, "observer.token"),
    ] {
        let token = format!("cst_{}", hex::encode(random32()));
        tokens.push(Op::Put(token_key(&token), encode_value(&role)));
        let path = dir.join(file);
        write_private(&path, format!("{token}\n").as_bytes())?;
        files.push(path);
    }
    store.apply(&tokens)?;
    store.sync()?;
    Ok(Created {
        caisse_id: secret.caisse_id(),
        data_dir: dir.to_owned(),
        admin_token_file: files[0].clone(),
        observer_token_file: files[1].clone(),
    })
}

/// Read the caisse's secret key from `dir`.
pub fn load_key(dir: &Path) -> Result<SecretKey, NodeError> {
    let path = dir.join("caisse.key");
    if !path.exists() {
        return Err(NodeError::NotACaisse(dir.to_owned()));
    }
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let mut b = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut b)
        .map_err(|_| NodeError::Invalid(format!("{} is not a caisse key file", path.display())))?;
    Ok(SecretKey::from_bytes(b))
}

/// What a running node publishes in `node.json` for scripts and the CLI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The caisse id.
    pub caisse_id: CaisseId,
    /// The bound HTTP API address.
    pub api: SocketAddr,
    /// The libp2p addresses it listens on, with `/p2p/<peer id>`.
    pub listen: Vec<String>,
    /// The admin token file.
    pub admin_token_file: PathBuf,
    /// The observer token file.
    pub observer_token_file: PathBuf,
    /// The node's process id.
    pub pid: u32,
    /// The federation.
    pub federation: FederationId,
}

impl NodeInfo {
    /// Read `node.json` from a data directory.
    pub fn read(dir: &Path) -> Result<NodeInfo, NodeError> {
        let path = dir.join("node.json");
        let text = std::fs::read_to_string(&path).map_err(|source| NodeError::Io {
            path: path.clone(),
            source: std::io::Error::new(
                source.kind(),
                format!(
                    "{source}: is the node running? start it with `caisse node --data-dir {}`",
                    dir.display()
                ),
            ),
        })?;
        serde_json::from_str(&text)
            .map_err(|e| NodeError::Invalid(format!("{}: {e}", path.display())))
    }
}

/// Log to stderr with the filter in `RUST_LOG`, else `default_filter`
/// (`info`, `warn`, ...); colours only on a terminal. For the binaries that
/// run a node or talk to one (the CLI, the testnet's node processes, the
/// benchmarks' node).
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A running node, for tests and the testnet to hold and stop.
pub struct RunningNode {
    /// What the node published.
    pub info: NodeInfo,
    /// The writer handle.
    pub handle: writer::CaisseHandle,
    shutdown: tokio::sync::watch::Sender<bool>,
    api_task: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
    writer_thread: std::thread::JoinHandle<()>,
    dir: PathBuf,
}

/// Start the node of the caisse in `dir`: returns once the API is bound
/// and `node.json` is written.
pub async fn start(dir: &Path) -> Result<RunningNode, NodeError> {
    let open_files = crate::http::raise_open_file_limit();
    crate::metrics::install();
    private_umask();
    let secret = load_key(dir)?;
    let config = Config::load(&dir.join("config.toml"))?;
    let caisse_id = secret.caisse_id();
    let span = tracing::info_span!("node", caisse = %caisse_id.short());
    let _enter = span.enter();
    for p in make_private(dir)? {
        tracing::warn!(target: "caisse::security", path = %p.display(), "readable by other accounts on this machine: made private to the caisse's user (0700 directories, 0600 files)");
    }
    tracing::info!(name = %config.name, federation = %config.federation, "starting");
    let engine = crate::store::Engine::of(dir).ok_or_else(|| {
        NodeError::Invalid(format!(
            "{} holds no store (store.redb or store/): create the caisse with `caisse init`, or restore a backup into it",
            dir.display()
        ))
    })?;
    if engine == crate::store::Engine::Sled {
        tracing::warn!(
            "this store uses sled, which loses acknowledged writes at a power cut: stop the node and run `caisse store convert --to redb`"
        );
    }
    let mut store: Arc<dyn Store> = match &config.testing.faults {
        // Skipping the sync means nothing synced: no checkpoint either.
        Some(f) if f.skip_sync && engine == crate::store::Engine::Redb => {
            let s = crate::store::RedbStore::open(&engine.path(dir))?;
            s.hold_checkpoints();
            crate::store::upgrade_layout(&s)?;
            Arc::new(s)
        }
        _ => crate::store::open(dir, engine)?,
    };
    if let Some(faults) = config.testing.faults.clone() {
        tracing::warn!(
            ?faults,
            "storage faults injected: this node belongs to a test"
        );
        store = Arc::new(crate::store::FaultyStore::new(store, faults));
    }
    let started = std::time::Instant::now();
    let secret_bytes = secret.to_bytes();
    let caisse = Caisse::load(
        store.clone(),
        secret,
        config.federation.clone(),
        Box::new(random32),
    )?;
    tracing::info!(
        members = caisse.member_count(),
        entries = caisse.head().next_seq,
        took_ms = started.elapsed().as_millis() as u64,
        "state loaded"
    );
    let view: Arc<std::sync::RwLock<crate::federation::FederationView>> = Arc::default();
    let clock = if config.testing.manual_clock {
        tracing::warn!("manual clock enabled: this node belongs to a test network");
        Clock::persistent(dir.join("clock"))
    } else {
        Clock::system()
    };
    let (handle, writer_thread) =
        writer::spawn_in(caisse, clock, Some(dir.join(crate::audit::FILE)));
    let published = handle.published_version();
    let sales = handle.sales_version();
    // Listening on port 0 picks a free port; keep the one picked, so that
    // after a restart peers find this caisse where they last saw it.
    let saved_listen = dir.join("listen.addrs");
    let wants_any_port =
        config.listen.is_empty() || config.listen.iter().any(|a| a.ends_with("/tcp/0"));
    let reuse: Option<Vec<String>> = std::fs::read_to_string(&saved_listen)
        .ok()
        .map(|t| {
            t.lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .filter(|v: &Vec<String>| wants_any_port && !v.is_empty());
    let net_config = |listen: Vec<String>| crate::network::NetworkConfig {
        secret: secret_bytes,
        federation: config.federation.as_str().to_owned(),
        listen,
        bootstrap: config.bootstrap.clone(),
        limits: None,
        announce: config.announce.clone(),
    };
    let started_net = match reuse {
        Some(addrs) => match crate::network::start(net_config(addrs)).await {
            Ok(n) => Ok(n),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen where this node listened before; picking new ports");
                crate::network::start(net_config(config.listen.clone())).await
            }
        },
        None => crate::network::start(net_config(config.listen.clone())).await,
    };
    let (network, events, network_task) =
        started_net.map_err(|e| NodeError::Invalid(e.to_string()))?;
    let (federation, federation_task) = crate::federation::start(
        store.clone(),
        SecretKey::from_bytes(secret_bytes),
        config.federation.clone(),
        network.clone(),
        events,
        handle.clone(),
        view,
        published,
        sales,
    )
    .await
    .map_err(NodeError::Invalid)?;
    let listen_addrs: Vec<String> = network
        .info()
        .await
        .listen
        .iter()
        .map(ToString::to_string)
        .collect();
    tracing::info!(peer = %network.local_peer_id(), listen = ?listen_addrs, "network up");
    if wants_any_port {
        let plain: Vec<String> = listen_addrs
            .iter()
            .map(|a| a.split("/p2p/").next().unwrap_or(a).to_owned())
            .collect();
        if let Err(e) = crate::durable::save(&saved_listen, plain.join("\n").as_bytes()) {
            tracing::warn!(error = %e, "cannot save the listening port for the next start");
        }
    }
    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .map_err(io(Path::new("api address")))?;
    let api = listener
        .local_addr()
        .map_err(io(Path::new("api address")))?;
    let (shutdown, stop) = tokio::sync::watch::channel(false);
    let app = crate::app::App::new(
        handle.clone(),
        store,
        config.clone(),
        caisse_id,
        federation,
        &secret_bytes,
    );
    let router = crate::server::router(app);
    let limits = config.http.limits().within(open_files);
    let api_task = tokio::spawn(crate::http::serve(listener, router, limits, stop));
    // Absolute paths: the CLI reads them from any working directory.
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let info = NodeInfo {
        caisse_id,
        api,
        listen: listen_addrs,
        admin_token_file: abs.join("admin.token"),
        observer_token_file: abs.join("observer.token"),
        pid: std::process::id(),
        federation: config.federation,
    };
    let path = dir.join("node.json");
    let tmp = dir.join("node.json.tmp");
    let json = serde_json::to_vec_pretty(&info).map_err(|e| NodeError::Invalid(e.to_string()))?;
    std::fs::write(&tmp, json).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    tracing::info!(%api, "ready; web console at http://{api}/");
    Ok(RunningNode {
        info,
        handle,
        shutdown,
        api_task,
        background: vec![federation_task, network_task],
        writer_thread,
        dir: dir.to_owned(),
    })
}

/// Run the node of the caisse in `dir` until SIGINT or SIGTERM, or until
/// its storage fails; stop it in order. Returns the failure, if any.
pub async fn run_until_stopped(dir: &Path) -> Result<Option<String>, NodeError> {
    let running = start(dir).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io(Path::new("SIGTERM handler")))?;
    let failure = tokio::select! {
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT received, stopping"); None }
        _ = term.recv() => { tracing::info!("SIGTERM received, stopping"); None }
        reason = running.failed() => Some(reason),
    };
    running.stop().await;
    Ok(failure)
}

impl RunningNode {
    /// Resolves with the reason if the writer stops on a storage failure:
    /// the node must then stop (its memory may be ahead of its disk).
    pub async fn failed(&self) -> String {
        self.handle.failed().await
    }

    /// Stop in order: API, then the writer (which syncs its last batch).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.api_task).await;
        for t in self.background {
            t.abort();
            let _ = t.await;
        }
        self.handle.shutdown().await;
        drop(self.handle);
        let join = self.writer_thread;
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::task::spawn_blocking(move || join.join()),
        )
        .await;
        if waited.is_err() {
            tracing::error!("the writer did not stop within 10 s");
        }
        let _ = std::fs::remove_file(self.dir.join("node.json"));
        tracing::info!("stopped");
    }
}
