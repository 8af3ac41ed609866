//! Benchmarks of the caisse node, figures for BENCHMARKS.md.
//!
//! ```text
//! cargo bench -p caisse-node --bench ledger                  # throughput + scale at 100,000 members
//! cargo bench -p caisse-node --bench ledger -- scale 1000000 # scale at 1,000,000 members
//! ```
//!
//! - `throughput`: durable purchases per second through the single writer
//!   (library, sled on disk, group commit with flush + fsync), and through
//!   the real HTTP API over loopback TCP; plus the cost of one sync.
//! - `scale N`: N members enrolled through the library, then the time of a
//!   monthly allocation run, of `ledger check`, of a restart (state load, in
//!   a fresh process) and that process's resident memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use caisse_node::caisse::{Caisse, EnrollInput, PurchaseInput};
use caisse_node::client::{Client, TokenFile};
use caisse_node::daemon::{self, InitOptions, random32};
use caisse_node::policy::Policy;
use caisse_node::store::{Op, SledStore, Store};
use caisse_node::writer::{self, Clock};
use caisse_protocol::messages::PurchaseLine;
use caisse_protocol::{Amount, CardId, Category, Day, FederationId, Period, PurchaseId};
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
        Some("throughput") => rt.block_on(throughput()),
        _ => {
            rt.block_on(throughput());
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
            policy: Policy::default(),
            secret: None,
            testing: Default::default(),
        },
    )
    .expect("init");
}

fn open(dir: &std::path::Path) -> (Arc<dyn Store>, Caisse) {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("store")).expect("store"));
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

fn line(cents: i64) -> Vec<PurchaseLine> {
    vec![PurchaseLine {
        category: Category::new("bread").unwrap(),
        producer: None,
        amount: Amount::from_cents(cents),
    }]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn throughput() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("caisse");
    init_dir(&dir);

    // The cost of one durable sync on this disk.
    {
        let store = SledStore::open(&tmp.path().join("sync-probe")).expect("store");
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
            "sync (sled flush + fsync of its data file): p50 {:?}, p99 {:?}",
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

    for &inflight in &[1usize, 64, 512] {
        let total = if inflight == 1 { 2_000 } else { 100_000 };
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
                        id: PurchaseId::from_bytes(random16()),
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
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.expect("task"));
        }
        let took = started.elapsed();
        lat.sort();
        println!(
            "ledger (writer, sled, durable): {inflight:>3} in flight: {:>8.0} purchases/s ({} in {:.2?}), latency p50 {:?} p99 {:?}",
            lat.len() as f64 / took.as_secs_f64(),
            lat.len(),
            took,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
    drop(handle);
    let _ = tokio::task::spawn_blocking(move || join.join()).await;
    drop(store);

    // Through the real HTTP API over loopback.
    let node = daemon::start(&dir).await.expect("start node");
    let client = Client::from_data_dir(&dir, TokenFile::Admin).expect("client");
    for &inflight in &[1usize, 64] {
        let total = if inflight == 1 { 2_000 } else { 30_000 };
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
                        "id": PurchaseId::from_bytes(random16()),
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
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.expect("task"));
        }
        let took = started.elapsed();
        lat.sort();
        println!(
            "HTTP API (loopback, same process): {inflight:>3} in flight: {:>8.0} purchases/s ({} in {:.2?}), latency p50 {:?} p99 {:?}",
            lat.len() as f64 / took.as_secs_f64(),
            lat.len(),
            took,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
    let check: Value = client.get("/api/v1/ledger/check").await.expect("check");
    assert_eq!(
        check["findings"],
        json!([]),
        "ledger check after the benchmark"
    );
    node.stop().await;
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
    let run = caisse
        .issue_allocations(Period::new(2026, 3).unwrap(), 1)
        .expect("allocate");
    caisse.commit().expect("commit");
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
    let size: u64 = walk_size(&dir.join("store"));
    println!("scale {n}: store on disk {} MiB", size / (1024 * 1024));
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
