//! Benchmarks of the caisse node, figures for BENCHMARKS.md.
//!
//! ```text
//! cargo bench -p caisse-node --bench ledger                  # throughput + scale at 100,000 members
//! cargo bench -p caisse-node --bench ledger -- scale 1000000 # scale at 1,000,000 members
//! cargo bench -p caisse-node --bench ledger -- tills 100000  # till latency during long jobs
//! ```
//!
//! - `throughput`: durable purchases per second through the single writer
//!   (library, the store on disk: redb, or sled with
//!   `CAISSE_BENCH_ENGINE=sled`; group commit, one sync per group: for redb
//!   one write-ahead log record and one `fdatasync`), and through
//!   the real HTTP API over loopback TCP; plus the cost of one sync. The
//!   node in its own process is driven twice: by reqwest with JSON values
//!   (what a till's software does) and by a lean load (hyper connections,
//!   preformatted requests: what pgbench is to PostgreSQL).
//!   `CAISSE_BENCH_HTTP_N=6000`: 6,000 purchases at one in flight and
//!   90,000 above (2,000 and 30,000 by default).
//! - `http`: only the node in its own process under both loads (after a
//!   `CAISSE_BENCH_PAST` journal if asked).
//! - `library`: only the library's levels (after a `CAISSE_BENCH_PAST`
//!   journal if asked).
//! - `scale N`: N members enrolled through the library, then the time of a
//!   monthly allocation run, of `ledger check`, of a restart (state load, in
//!   a fresh process) and that process's resident memory.
//! - `drift N MINUTES`: N members; a real node in a child process under
//!   purchases as fast as 16 tills get answers, an allocation run, a
//!   `ledger check` and a report every two minutes; its resident memory
//!   every 30 s, then again after a restart on the same store. The node's
//!   audits start from the last clean one's checkpoint
//!   (`CAISSE_BENCH_FULL_CHECK=1`: each reads the whole journal).
//!   `CAISSE_BENCH_RATE=500` paces the tills to 500 purchases a second in
//!   all and `CAISSE_BENCH_JOBS_EVERY=15` runs the jobs every 15 minutes
//!   (a long run that leaves the machine room for other work).
//! - `upgrade N`: a redb store of layout version 1 with N statement lines
//!   (100,000 members), then the time the node's open takes to upgrade it.
//! - `tills N`: N members; a real node in a child process; this process is
//!   the load: four tills at a steady 200 purchases/s in all over HTTP,
//!   latency measured from each purchase's scheduled time, before and
//!   during the monthly allocation run, `ledger check`, the report
//!   with the anonymised export, and an online backup.

use std::sync::Arc;
use std::time::{Duration, Instant};

use caisse_node::caisse::{Caisse, EnrollInput, PurchaseInput};
use caisse_node::client::{Client, TokenFile};
use caisse_node::daemon::{self, InitOptions, random32};
use caisse_node::policy::Policy;
use caisse_node::store::{Engine, Op, SCHEMA_VERSION, Store, encode_value, keys};
use caisse_node::writer::{self, Clock};
use caisse_protocol::messages::PurchaseLine;
use caisse_protocol::{Amount, CardId, Category, Day, FederationId, Period};
use serde_json::{Value, json};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match args.first().map(String::as_str) {
        Some("load") => load(&args[1]),
        Some("scale") => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
            scale(n);
        }
        Some("throughput") => rt.block_on(throughput(Levels::All)),
        Some("http") => rt.block_on(throughput(Levels::Http)),
        Some("library") => rt.block_on(throughput(Levels::Library)),
        Some("upgrade") => {
            let n = args
                .get(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(1_000_000);
            upgrade(n);
        }
        Some("tills") => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
            rt.block_on(tills(n));
        }
        Some("drift") => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
            let minutes = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
            rt.block_on(drift(n, minutes));
        }
        Some("node") => {
            // The node's log (RUST_LOG, set from CAISSE_BENCH_NODE_LOG) on stderr.
            daemon::init_logging("warn");
            let dir = std::path::PathBuf::from(&args[1]);
            if let Some(reason) = rt.block_on(daemon::run_until_stopped(&dir)).expect("node") {
                panic!("node failed: {reason}");
            }
        }
        _ => {
            rt.block_on(throughput(Levels::All));
            scale(100_000);
        }
    }
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    b.copy_from_slice(&random32()[..16]);
    b
}

fn init_dir(dir: &std::path::Path) {
    daemon::init(
        dir,
        InitOptions {
            name: "Bench".into(),
            territory: "Bench".into(),
            federation: FederationId::new("bench").unwrap(),
            api: "127.0.0.1:0".parse().unwrap(),
            listen: vec![],
            bootstrap: vec![],
            announce: vec![],
            policy: Policy::default(),
            secret: None,
            testing: Default::default(),
            engine: bench_engine(),
        },
    )
    .expect("init");
}

/// The engine measured: `CAISSE_BENCH_ENGINE=sled` for the old one.
/// A store of layout version 1 with `n` statement lines, upgraded by the
/// node's open: how long a caisse with a long journal waits, once.
fn upgrade(n: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = caisse_node::store::open(dir.path(), Engine::Redb).expect("store");
        let mut ops = vec![Op::Put(keys::SCHEMA.to_vec(), encode_value(&1u32))];
        for seq in 0..n {
            let mut member = [0u8; 16];
            member[..8].copy_from_slice(&(seq.wrapping_mul(0x9e37_79b9) % 100_000).to_be_bytes());
            ops.push(Op::Put(
                keys::key(keys::STATEMENT_V1, &[&member, &seq.to_be_bytes()]),
                Vec::new(),
            ));
            if ops.len() == 100_000 {
                store.apply(&ops).expect("apply");
                ops.clear();
            }
        }
        store.apply(&ops).expect("apply");
        store.sync().expect("sync");
    }
    let started = Instant::now();
    let store = caisse_node::store::open(dir.path(), Engine::Redb).expect("open");
    let took = started.elapsed();
    let mut moved = 0u64;
    store
        .for_each_prefix(keys::STATEMENT, &mut |_, _| {
            moved += 1;
            true
        })
        .expect("scan");
    assert_eq!(moved, n, "every line moved");
    println!(
        "upgrade: {n} statement lines moved to layout {SCHEMA_VERSION} in {took:.1?} ({:.0} lines/s)",
        n as f64 / took.as_secs_f64()
    );
}

fn bench_engine() -> Engine {
    std::env::var("CAISSE_BENCH_ENGINE")
        .ok()
        .and_then(|e| Engine::parse(&e))
        .unwrap_or(Engine::Redb)
}

fn open(dir: &std::path::Path) -> (Arc<dyn Store>, Caisse) {
    let store: Arc<dyn Store> = caisse_node::store::open_existing(dir).expect("store");
    let key = daemon::load_key(dir).expect("key");
    let caisse = Caisse::load(
        store.clone(),
        key,
        FederationId::new("bench").unwrap(),
        Box::new(random32),
    )
    .expect("load");
    (store, caisse)
}

fn enroll_many(caisse: &mut Caisse, n: usize) -> Vec<CardId> {
    let mut cards = Vec::with_capacity(n);
    for i in 0..n {
        let e = caisse
            .enroll(
                EnrollInput {
                    name: format!("Member {i}"),
                    residence: "1 rue de la Caisse, Montpellier".into(),
                    birth_year: Some(1950 + (i % 40) as u16),
                    income: Some(Amount::from_cents(((i % 50) as i64) * 100_00)),
                    household: None,
                    new_household: false,
                    joined: Some("2026-01-01".parse().unwrap()),
                    pin: None,
                },
                Day::from_days(20_500),
            )
            .expect("enroll");
        cards.push(e.card);
        if i % 10_000 == 9_999 {
            caisse.commit().expect("commit");
        }
    }
    caisse.commit().expect("commit");
    cards
}

/// An allocation run as the node's writer does it: in steps, each one
/// durable batch.
fn allocate(caisse: &mut Caisse, period: Period, now: u64) -> caisse_node::caisse::AllocationRun {
    let mut job = caisse.allocation_job(period);
    while !caisse
        .allocation_step(&mut job, 10_000, now)
        .expect("allocate")
    {
        caisse.commit().expect("commit");
    }
    caisse.commit().expect("commit");
    job.run
}

fn line(cents: i64) -> Vec<PurchaseLine> {
    vec![PurchaseLine {
        category: Category::new("bread").unwrap(),
        producer: None,
        amount: Amount::from_cents(cents),
    }]
}

/// This process's bytes passed to write calls and bytes sent to the disk
/// so far (`wchar` and `write_bytes` of `/proc/self/io`), where Linux
/// gives them.
fn process_io() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    Some((field("wchar:")?, field("write_bytes:")?))
}

/// Where the store's bytes go after `purchases` purchases: per key prefix,
/// and redb's pages.
fn print_layout(path: &std::path::Path, purchases: usize, unit: &str) {
    let store = caisse_node::store::RedbStore::open(path).expect("store");
    let l = store.layout().expect("layout");
    let per = |b: u64| b as f64 / purchases.max(1) as f64;
    println!(
        "store layout: file {} MiB = {:.0} B per {unit}; leaves {} + branches {} of {} pages allocated ({} B each); stored {:.0} B, fragmented {:.0} B per {unit}",
        l.file_bytes / 1_048_576,
        per(l.file_bytes),
        l.leaf_pages,
        l.branch_pages,
        l.allocated_pages,
        l.page_size,
        per(l.stored_bytes),
        per(l.fragmented_bytes),
    );
    if l.journal_buckets > 0 {
        println!(
            "  journal packed: {} records, {:.1} entries each",
            l.journal_buckets,
            l.prefixes.get("j/").map_or(0, |p| p.0) as f64 / l.journal_buckets as f64
        );
    }
    for (prefix, (n, kb, vb)) in &l.prefixes {
        if *n > 1_000 {
            println!(
                "  {prefix:<6} {n:>10} keys, {:>7.1} B key + {:>7.1} B value each, {:>6.1} B per {unit}",
                *kb as f64 / *n as f64,
                *vb as f64 / *n as f64,
                per(kb + vb)
            );
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Which throughput levels a run measures (a `CAISSE_BENCH_PAST` journal
/// is filled first in each).
#[derive(Clone, Copy, PartialEq)]
enum Levels {
    /// The library's, then HTTP in the same process, then the node in its
    /// own process under both loads.
    All,
    /// Only the node in its own process under both loads.
    Http,
    /// Only the library's.
    Library,
}

/// The throughput levels `levels` says.
async fn throughput(levels: Levels) {
    let only_http = levels == Levels::Http;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("caisse");
    init_dir(&dir);

    // The cost of one durable sync on this disk.
    if !only_http {
        std::fs::create_dir_all(tmp.path().join("sync-probe")).expect("probe directory");
        let store = caisse_node::store::open(&tmp.path().join("sync-probe"), bench_engine())
            .expect("store");
        let mut times = Vec::new();
        for i in 0..200u32 {
            store
                .apply(&[Op::Put(i.to_be_bytes().to_vec(), vec![0; 200])])
                .expect("apply");
            let t = Instant::now();
            store.sync().expect("sync");
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "sync ({}: Store::sync after one small batch; redb: the log's fdatasync): p50 {:?}, p99 {:?}",
            bench_engine().name(),
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
    }

    let (store, mut caisse) = open(&dir);
    let cards = enroll_many(&mut caisse, 1000);
    let outlet = caisse
        .register_outlet(
            "Shop",
            vec![(Category::new("bread").unwrap(), 100)],
            Day::from_unix(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            ),
        )
        .expect("outlet")
        .outlet;
    for m in 1..=3 {
        caisse
            .issue_allocations(Period::new(2026, m).unwrap(), 1)
            .expect("allocate");
    }
    caisse.commit().expect("commit");
    let (handle, join) = writer::spawn(caisse, Clock::system());

    // A long journal first, when asked (`CAISSE_BENCH_PAST=10000000`):
    // past purchases through the same writer, 512 in flight.
    let past: usize = std::env::var("CAISSE_BENCH_PAST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if past > 0 {
        let started = Instant::now();
        let chunk = 1_000_000usize.min(past);
        let mut done = 0usize;
        while done + 512 <= past {
            let n = chunk.min(past - done);
            let per_task = n / 512;
            let mut tasks = Vec::new();
            for t in 0..512usize {
                let h = handle.clone();
                let cards = cards.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..per_task {
                        h.purchase(PurchaseInput {
                            id: daemon::new_purchase_id(),
                            card: cards[(t * 7 + i) % cards.len()],
                            outlet,
                            lines: line(1),
                            pin: None,
                        })
                        .await
                        .expect("past purchase");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
            done += per_task * 512;
            println!(
                "journal: {done} past purchases in {:.0?} ({:.0}/s)",
                started.elapsed(),
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }

    let library_levels: &[usize] = if only_http { &[] } else { &[1, 64, 512] };
    for &inflight in library_levels {
        let total = if inflight == 1 { 20_000 } else { 100_000 };
        let io_before = process_io();
        let started = Instant::now();
        let per_task = total / inflight;
        let mut tasks = Vec::new();
        for t in 0..inflight {
            let h = handle.clone();
            let cards = cards.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let t0 = Instant::now();
                    h.purchase(PurchaseInput {
                        id: daemon::new_purchase_id(),
                        card: cards[(t * 7 + i) % cards.len()],
                        outlet,
                        lines: line(1),
                        pin: None,
                    })
                    .await
                    .expect("purchase");
                    lat.push(t0.elapsed());
                }
                lat
            }));
        }
        let label = format!("ledger (writer, {}, durable)", bench_engine().name());
        let done = level_done(&label, inflight, started, tasks).await;
        if let (Some(a), Some(b)) = (io_before, process_io()) {
            let n = done.max(1) as f64;
            println!(
                "  written per purchase: {:.0} B through write calls, {:.0} B to the disk",
                (b.0 - a.0) as f64 / n,
                (b.1 - a.1) as f64 / n
            );
        }
    }
    drop(handle);
    let _ = tokio::task::spawn_blocking(move || join.join()).await;
    drop(store);
    let bytes: u64 = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("store"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    println!(
        "store after {} past purchases and the library levels: {} MiB",
        past,
        bytes / 1_048_576
    );
    if bench_engine() == Engine::Redb {
        print_layout(
            &dir.join("store.redb"),
            past + 20_000 + 2 * 100_000,
            "purchase",
        );
    }

    if levels == Levels::Library {
        return;
    }
    // Through the real HTTP API over loopback, the node in this process.
    if !only_http {
        let node = daemon::start(&dir).await.expect("start node");
        http_load(
            &dir,
            &cards,
            outlet,
            &[1, 64],
            "HTTP API (loopback, same process)",
        )
        .await;
        node.stop().await;
    }

    // The node in its own process, this one only the load (keep-alive
    // connections, one per in-flight request): what a shop's tills see.
    // As deployed behind a TLS reverse proxy on the same machine: the load
    // arrives from 127.0.0.1, the proxy's address, held to the total bound
    // only (the per-address bound is for clients reaching the node directly).
    let config = std::fs::read_to_string(dir.join("config.toml")).expect("config");
    std::fs::write(
        dir.join("config.toml"),
        config.replace("trusted_proxies = []", "trusted_proxies = [\"127.0.0.1\"]"),
    )
    .expect("config");
    let _ = std::fs::remove_file(dir.join("node.json"));
    let child = KillOnDrop(
        std::process::Command::new(std::env::current_exe().expect("exe"))
            .arg("node")
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("node process"),
    );
    let t = Instant::now();
    while !dir.join("node.json").exists() {
        assert!(t.elapsed() < Duration::from_secs(120), "node did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    http_load(
        &dir,
        &cards,
        outlet,
        &[1, 64, 256],
        "HTTP API (node in its own process, separate load process)",
    )
    .await;
    lean_http_load(
        &dir,
        &cards,
        outlet,
        &[1, 64, 256],
        "HTTP API (node in its own process, lean separate load)",
    )
    .await;
    let client = Client::from_data_dir(&dir, TokenFile::Admin).expect("client");
    let check: Value = client.get("/api/v1/ledger/check").await.expect("check");
    assert_eq!(
        check["findings"],
        json!([]),
        "ledger check after the benchmark"
    );
    drop(child);
}

/// A child process stopped (SIGTERM, then waited for) when dropped, also
/// when the benchmark panics.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

/// Purchases through the HTTP API at each number in flight, each level on
/// fresh keep-alive connections (one per request in flight: the node bounds
/// connections per address); prints the rate and latencies under `label`.
async fn http_load(
    dir: &std::path::Path,
    cards: &[CardId],
    outlet: caisse_protocol::OutletId,
    inflights: &[usize],
    label: &str,
) {
    let cards: Arc<Vec<CardId>> = Arc::new(cards.to_vec());
    for &inflight in inflights {
        let client = Client::from_data_dir(dir, TokenFile::Admin)
            .expect("client")
            .with_idle_connections(inflight);
        let total = http_level_size(inflight);
        let per_task = total / inflight;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..inflight {
            let c = client.clone();
            let cards = cards.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let body = json!({
                        "id": daemon::new_purchase_id(),
                        "card": cards[(t * 13 + i) % cards.len()],
                        "outlet": outlet,
                        "lines": line(1),
                    });
                    let t0 = Instant::now();
                    let _: Value = c.post("/api/v1/purchases", &body).await.expect("purchase");
                    lat.push(t0.elapsed());
                }
                lat
            }));
        }
        level_done(label, inflight, started, tasks).await;
        // Close this level's connections before the next one opens its own.
        drop(client);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Wait for one level's tasks (each returns its latencies), print its
/// rate and latencies under `label`; the purchases made.
async fn level_done(
    label: &str,
    inflight: usize,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
) -> usize {
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let took = started.elapsed();
    lat.sort();
    println!(
        "{label}: {inflight:>3} in flight: {:>8.0} purchases/s ({} in {:.2?}), latency p50 {:?} p99 {:?}",
        lat.len() as f64 / took.as_secs_f64(),
        lat.len(),
        took,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    lat.len()
}

/// Purchases per HTTP level: 2,000 at one in flight, 30,000 above, or
/// `CAISSE_BENCH_HTTP_N` times 1 and 15 (longer samples on a noisy machine).
fn http_level_size(inflight: usize) -> usize {
    let n: usize = std::env::var("CAISSE_BENCH_HTTP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    if inflight == 1 { n } else { 15 * n }
}

/// Purchases through the HTTP API as [`http_load`] does, from a lean load:
/// one hyper HTTP/1.1 connection per request in flight (no pool), each
/// request formatted from pre-encoded parts, the answer's status checked
/// and its body read but not parsed: what pgbench is to PostgreSQL, so that
/// the load takes less of this 2-core machine from the node it measures.
async fn lean_http_load(
    dir: &std::path::Path,
    cards: &[CardId],
    outlet: caisse_protocol::OutletId,
    inflights: &[usize],
    label: &str,
) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    let info = daemon::NodeInfo::read(dir).expect("node.json");
    let client = Client::from_data_dir(dir, TokenFile::Admin).expect("client");
    let auth = Arc::new(format!("Bearer {}", client.token()));
    let host = Arc::new(info.api.to_string());
    let cards: Arc<Vec<String>> = Arc::new(
        cards
            .iter()
            .map(|c| serde_json::to_string(c).unwrap())
            .collect(),
    );
    let tail = Arc::new(format!(
        r#","outlet":{},"lines":{}}}"#,
        serde_json::to_string(&outlet).unwrap(),
        serde_json::to_string(&line(1)).unwrap()
    ));
    for &inflight in inflights {
        let total = http_level_size(inflight);
        let per_task = total / inflight;
        let mut senders = Vec::new();
        for _ in 0..inflight {
            let stream = tokio::net::TcpStream::connect(info.api)
                .await
                .expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .expect("handshake");
            tokio::spawn(conn);
            senders.push(send);
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (t, mut send) in senders.into_iter().enumerate() {
            let (cards, tail, auth, host) =
                (cards.clone(), tail.clone(), auth.clone(), host.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let body = format!(
                        r#"{{"id":{},"card":{}{tail}"#,
                        serde_json::to_string(&daemon::new_purchase_id()).unwrap(),
                        cards[(t * 13 + i) % cards.len()]
                    );
                    let req = hyper::Request::post("/api/v1/purchases")
                        .header(hyper::header::HOST, host.as_str())
                        .header(hyper::header::AUTHORIZATION, auth.as_str())
                        .header(hyper::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .expect("request");
                    let t0 = Instant::now();
                    send.ready().await.expect("connection ready");
                    let resp = send.send_request(req).await.expect("purchase");
                    let status = resp.status();
                    let bytes = resp.into_body().collect().await.expect("answer").to_bytes();
                    assert!(
                        status.is_success(),
                        "purchase refused: {status} {}",
                        String::from_utf8_lossy(&bytes)
                    );
                    lat.push(t0.elapsed());
                }
                lat
            }));
        }
        level_done(label, inflight, started, tasks).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn scale(n: usize) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("caisse");
    init_dir(&dir);
    let (store, mut caisse) = open(&dir);
    let t = Instant::now();
    enroll_many(&mut caisse, n);
    println!("scale {n}: enrolment (library) {:.2?}", t.elapsed());
    let t = Instant::now();
    let run = allocate(&mut caisse, Period::new(2026, 3).unwrap(), 1);
    println!(
        "scale {n}: allocation run {:.2?} ({} issued, total {} EUR)",
        t.elapsed(),
        run.issued,
        run.total
    );
    let t = Instant::now();
    let report = caisse.check().expect("check");
    println!(
        "scale {n}: ledger check {:.2?} ({} entries, {} accounts, {} findings)",
        t.elapsed(),
        report.entries,
        report.accounts,
        report.findings.len()
    );
    drop(caisse);
    drop(store);
    let exe = std::env::current_exe().expect("exe");
    let out = std::process::Command::new(exe)
        .arg("load")
        .arg(&dir)
        .output()
        .expect("load process");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let size: u64 = walk_size(&bench_engine().path(&dir));
    println!("scale {n}: store on disk {} MiB", size / (1024 * 1024));
    if bench_engine() == Engine::Redb {
        print_layout(&Engine::Redb.path(&dir), n, "member");
    }
}

fn walk_size(p: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    };
    rd.flatten().map(|e| walk_size(&e.path())).sum()
}

/// In a fresh process: open the store and load the caisse's state, as
/// `caisse node` does at start.
fn load(dir: &str) {
    let dir = std::path::Path::new(dir);
    let t = Instant::now();
    let (_store, caisse) = open(dir);
    let took = t.elapsed();
    let (rss, hwm) = rss_kib();
    println!(
        "scale {}: restart (open store + load state) {:.2?}; resident memory after load {} MiB (peak {} MiB)",
        caisse.member_count(),
        took,
        rss / 1024,
        hwm / 1024
    );
}

/// Latencies of one phase of the till benchmark.
#[derive(Default)]
struct Phase {
    name: &'static str,
    latencies: Vec<Duration>,
    errors: u64,
    /// Purchases over 50 ms: when they were scheduled (ms since the Unix
    /// epoch, to compare with the node's log), which till, how long.
    slow: Vec<(u128, usize, Duration)>,
}

/// A data directory with `n` members enrolled, an outlet and this month's
/// allocation issued, written through the library and synced.
struct Prepared {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    cards: Arc<Vec<CardId>>,
    outlet: caisse_protocol::OutletId,
    period: Period,
}

fn prepare(n: usize, what: &str) -> Prepared {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("caisse");
    init_dir(&dir);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let today = Day::from_unix(now);
    let (store, mut caisse) = open(&dir);
    let t = Instant::now();
    let cards = Arc::new(enroll_many(&mut caisse, n));
    let outlet = caisse
        .register_outlet("Shop", vec![(Category::new("bread").unwrap(), 100)], today)
        .expect("outlet")
        .outlet;
    let period = today.period();
    allocate(&mut caisse, period, now);
    drop(caisse);
    drop(store);
    println!(
        "{what} {n}: prepared (enrolment + one allocation run) in {:.1?}",
        t.elapsed()
    );
    // The store just written (1.3 GB at a million) out of the kernel's
    // dirty pages first: otherwise the node's first fsyncs wait behind
    // their writeback (commits of 400 ms in the idle phase), which says
    // nothing about the node.
    let t = Instant::now();
    let _ = std::process::Command::new("sync").status();
    println!("{what} {n}: sync after preparing {:.1?}", t.elapsed());
    Prepared {
        _tmp: tmp,
        dir,
        cards,
        outlet,
        period,
    }
}

/// Start a real node on `p` in a child process and wait for the first
/// purchase it acknowledges (durable): the issue's "restart to first
/// purchase", from starting the process, the state of every member loaded.
async fn start_node(p: &Prepared) -> (std::process::Child, Client, Duration) {
    let _ = std::fs::remove_file(p.dir.join("node.json"));
    let child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("node")
        .arg(&p.dir)
        .env(
            "RUST_LOG",
            std::env::var("CAISSE_BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .expect("node process");
    let t = Instant::now();
    while !p.dir.join("node.json").exists() {
        assert!(t.elapsed() < Duration::from_secs(120), "node did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = Client::from_data_dir(&p.dir, TokenFile::Admin).expect("client");
    let first = json!({
        "id": daemon::new_purchase_id(),
        "card": p.cards[0],
        "outlet": p.outlet,
        "lines": line(1),
    });
    loop {
        match client.post::<_, Value>("/api/v1/purchases", &first).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    t.elapsed() < Duration::from_secs(120),
                    "no first purchase: {e}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (child, client, t.elapsed())
}

/// Till latency at a steady 200 purchases/s while long jobs run.
async fn tills(n: usize) {
    use std::sync::Mutex;
    let prepared = prepare(n, "tills");
    let (cards, outlet, this) = (prepared.cards.clone(), prepared.outlet, prepared.period);
    let (mut child, client, first) = start_node(&prepared).await;
    println!("tills {n}: start to first purchase acknowledged {first:.1?}");

    // Four tills, 50 purchases/s each, each purchase's latency measured from
    // its scheduled time (a slow answer delays the next one and counts).
    let phase: Arc<Mutex<Phase>> = Arc::new(Mutex::new(Phase {
        name: "idle",
        ..Phase::default()
    }));
    let done: Arc<Mutex<Vec<Phase>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tills = Vec::new();
    for till in 0..4usize {
        let (c, cards, phase, stop) = (client.clone(), cards.clone(), phase.clone(), stop.clone());
        tills.push(tokio::spawn(async move {
            let period = Duration::from_millis(20);
            let start = Instant::now() + Duration::from_millis(5 * till as u64);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let scheduled = start + period * i as u32;
                tokio::time::sleep_until(scheduled.into()).await;
                let body = json!({
                    "id": daemon::new_purchase_id(),
                    "card": cards[(random16()[0] as usize * 65_537 + i as usize * 4 + till) % cards.len()],
                    "outlet": outlet,
                    "lines": line(1),
                });
                let r: Result<Value, _> = c.post("/api/v1/purchases", &body).await;
                let lat = scheduled.elapsed();
                let mut p = phase.lock().unwrap();
                match r {
                    Ok(_) => p.latencies.push(lat),
                    Err(_) => p.errors += 1,
                }
                if lat > Duration::from_millis(50) {
                    let at = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .saturating_sub(lat);
                    p.slow.push((at.as_millis(), till, lat));
                }
                i += 1;
            }
        }));
    }
    let switch = |name: &'static str| {
        let old = std::mem::replace(
            &mut *phase.lock().unwrap(),
            Phase {
                name,
                ..Phase::default()
            },
        );
        done.lock().unwrap().push(old);
    };
    tokio::time::sleep(Duration::from_secs(10)).await;

    switch("allocation run");
    let t = Instant::now();
    let next = this.next().expect("next period");
    let run: Value = client
        .post("/api/v1/allocations", &json!({ "period": next }))
        .await
        .expect("allocation run");
    let allocation_took = t.elapsed();

    switch("after allocation");
    tokio::time::sleep(Duration::from_secs(3)).await;
    switch("ledger check");
    let t = Instant::now();
    let check: Value = client.get("/api/v1/ledger/check").await.expect("check");
    let check_took = t.elapsed();

    switch("after check");
    tokio::time::sleep(Duration::from_secs(3)).await;
    switch("report + export");
    let t = Instant::now();
    let _: Value = client
        .get(&format!("/api/v1/report?period={this}"))
        .await
        .expect("report");
    let _: Value = client
        .get(&format!("/api/v1/report/export?period={this}"))
        .await
        .expect("export");
    let report_took = t.elapsed();

    switch("after report");
    tokio::time::sleep(Duration::from_secs(3)).await;
    switch("backup");
    let t = Instant::now();
    let out = prepared.dir.join("tills.backup");
    let backup: Value = client
        .post("/api/v1/backup", &json!({ "out": out }))
        .await
        .expect("backup");
    let backup_took = t.elapsed();
    switch("after backup");
    tokio::time::sleep(Duration::from_secs(3)).await;
    switch("end");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tills {
        let _ = t.await;
    }
    // Only now: removing a file of hundreds of megabytes holds the
    // filesystem's journal, which the node's syncs wait for.
    let _ = std::fs::remove_file(&out);
    unsafe_kill(&mut child);

    println!(
        "tills {n}: allocation run {:.2?} ({} issued), ledger check {:.2?} ({} entries, {} findings), report + export {:.2?}",
        allocation_took,
        run["issued"],
        check_took,
        check["entries"],
        check["findings"].as_array().map_or(0, Vec::len),
        report_took
    );
    println!(
        "tills {n}: backup {backup_took:.2?} ({} records, {} bytes)",
        backup["records"], backup["bytes"]
    );
    println!("| members | phase | purchases | failed | p50 | p99 | max |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let phases: Vec<Phase> = done.lock().unwrap().drain(..).collect();
    if std::env::var_os("CAISSE_BENCH_SLOW").is_some() {
        for p in &phases {
            for (at, till, lat) in p.slow.iter().take(40) {
                println!("slow: {} at {at} ms (till {till}): {lat:.1?}", p.name);
            }
        }
    }
    for mut p in phases {
        p.latencies.sort();
        println!(
            "| {n} | {} | {} | {} | {:.1?} | {:.1?} | {:.1?} |",
            p.name,
            p.latencies.len(),
            p.errors,
            percentile(&p.latencies, 0.5),
            percentile(&p.latencies, 0.99),
            p.latencies.last().copied().unwrap_or_default()
        );
    }
}

/// Resident memory of process `pid` (KiB).
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A long-running node's resident memory under steady traffic and the
/// monthly jobs, against the same node restarted: does it drift?
async fn drift(n: usize, minutes: u64) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let prepared = prepare(n, "drift");
    let (mut child, client, first) = start_node(&prepared).await;
    println!("drift {n}: start to first purchase {first:.1?}");
    let purchases = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Purchases a second in all (as fast as answered when unset), and the
    // minutes between the monthly jobs.
    let rate: Option<f64> = std::env::var("CAISSE_BENCH_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|r: &f64| *r > 0.0);
    let jobs_every: u64 = std::env::var("CAISSE_BENCH_JOBS_EVERY")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|m| *m > 0)
        .unwrap_or(2);
    if let Some(rate) = rate {
        println!(
            "drift {n}: tills paced to {rate} purchases a second, jobs every {jobs_every} min"
        );
    }
    let mut tills = Vec::new();
    for till in 0..16usize {
        let (c, cards, outlet) = (client.clone(), prepared.cards.clone(), prepared.outlet);
        let (purchases, stop) = (purchases.clone(), stop.clone());
        tills.push(tokio::spawn(async move {
            let mut i = 0usize;
            let mut pace = rate.map(|r| {
                let mut t = tokio::time::interval(Duration::from_secs_f64(16.0 / r));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while !stop.load(Ordering::Relaxed) {
                if let Some(pace) = pace.as_mut() {
                    pace.tick().await;
                }
                let body = json!({
                    "id": daemon::new_purchase_id(),
                    "card": cards[(random16()[0] as usize * 65_537 + i * 16 + till) % cards.len()],
                    "outlet": outlet,
                    "lines": line(1),
                });
                if c.post::<_, Value>("/api/v1/purchases", &body).await.is_ok() {
                    purchases.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    println!("| minute | purchases so far | journal entries | resident (MiB) | store file (MiB) |");
    println!("|---:|---:|---:|---:|---:|");
    let store_file = bench_engine().path(&prepared.dir);
    let started = Instant::now();
    let mut period = prepared.period;
    let mut samples = Vec::new();
    let mut next_jobs = Duration::from_secs(60 * jobs_every);
    let mut jobs = Vec::new();
    // The node's audits start from the last clean one's checkpoint;
    // `CAISSE_BENCH_FULL_CHECK=1` has each read the whole journal.
    let check_path = if std::env::var_os("CAISSE_BENCH_FULL_CHECK").is_some() {
        "/api/v1/ledger/check?full=true"
    } else {
        "/api/v1/ledger/check"
    };
    while started.elapsed() < Duration::from_secs(minutes * 60) {
        tokio::time::sleep(Duration::from_secs(30)).await;
        if started.elapsed() >= next_jobs {
            next_jobs += Duration::from_secs(60 * jobs_every);
            period = period.next().expect("next period");
            let t = Instant::now();
            let _: Value = client
                .post("/api/v1/allocations", &json!({ "period": period }))
                .await
                .expect("allocation run");
            let allocation = t.elapsed();
            let audit: Value = client.get(check_path).await.expect("check");
            let check = t.elapsed() - allocation;
            let _: Value = client
                .get(&format!("/api/v1/report?period={period}"))
                .await
                .expect("report");
            jobs.push((
                started.elapsed().as_secs() / 60,
                allocation,
                check,
                t.elapsed() - allocation - check,
                audit,
            ));
        }
        let status: Value = client.get("/api/v1/status").await.expect("status");
        let rss = rss_of(child.id()) / 1024;
        samples.push(rss);
        let file = std::fs::metadata(&store_file).map_or(0, |m| m.len()) >> 20;
        println!(
            "| {:.1} | {} | {} | {rss} | {file} |",
            started.elapsed().as_secs_f64() / 60.0,
            purchases.load(Ordering::Relaxed),
            status["journal_entries"]
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in tills {
        let _ = t.await;
    }
    // The tills stopped: the audit from the last checkpoint, then the
    // whole journal, on the same store.
    let mut idle = Vec::new();
    for path in ["/api/v1/ledger/check", "/api/v1/ledger/check?full=true"] {
        let t = Instant::now();
        let audit: Value = client.get(path).await.expect("check");
        idle.push(format!(
            "{path}: {:.1?} ({} entries read from entry {}, {} findings)",
            t.elapsed(),
            audit["entries"],
            audit["from"],
            audit["findings"].as_array().map_or(0, Vec::len)
        ));
    }
    unsafe_kill(&mut child);
    let (mut child, _client, first) = start_node(&prepared).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restarted = rss_of(child.id()) / 1024;
    unsafe_kill(&mut child);
    let tail = &samples[samples.len().saturating_sub(4)..];
    println!(
        "drift {n}: {minutes} min, {} purchases; resident first {} MiB, last {} MiB (last four samples {:?}); restarted on the same store: {restarted} MiB ({first:.1?} to its first purchase)",
        purchases.load(Ordering::Relaxed),
        samples.first().copied().unwrap_or(0),
        samples.last().copied().unwrap_or(0),
        tail
    );
    println!("drift {n}: idle at the end, {}", idle.join("; "));
    for (minute, allocation, check, report, audit) in jobs {
        println!(
            "jobs at minute {minute}: allocation run {allocation:.1?}, ledger check {check:.1?} ({} entries read from entry {}, {} findings), report {report:.1?}",
            audit["entries"],
            audit["from"],
            audit["findings"].as_array().map_or(0, Vec::len)
        );
    }
    if bench_engine() == Engine::Redb {
        let total = purchases.load(Ordering::Relaxed) as usize;
        print_layout(&prepared.dir.join("store.redb"), total, "purchase");
    }
}

/// Stop the node process (SIGTERM through `kill`, then wait).
fn unsafe_kill(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}
