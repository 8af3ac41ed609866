//! `caisse-testnet powercut`: power cuts under load, on a real node.
//!
//! Two real caisse node processes: caisse 0 keeps its data directory on a
//! [`LazyFs`](crate::lazyfs) mount, which holds every write not yet synced
//! in a volatile cache; caisse 1 is its federation peer on an ordinary
//! directory. Each round moves the clocks a day, starts caisse 0's
//! allocation run, a parliament vote that accredits a producer (a new
//! signed document version gossiped to caisse 1), and purchases from
//! several concurrent tills: local ones, members of caisse 1 buying at
//! caisse 0 and members of caisse 0 buying at caisse 1. At a random moment
//! the power is cut: the filesystem fails every operation and keeps none,
//! a random prefix, or a torn prefix of the unsynced writes; the node is
//! SIGKILLed; the power comes back and the node restarts on what survived.
//!
//! Then, as a till would, every purchase whose answer was lost is retried
//! with the same id, and the harness checks: the node starts (or the run
//! fails, with its log); every acknowledged purchase is in the home's
//! journal exactly once (cross-caisse ones in the host's as well); no
//! declined purchase is in a journal; `ledger check` is clean on both
//! nodes; caisse 0's signed document never goes back to an older version
//! than caisse 1 already holds, and caisse 1 ends holding exactly caisse
//! 0's current version without ever counting one of its statements as
//! invalid.
//!
//! `--skip-sync` is the negative control: the node's store syncs nothing,
//! and the harness must then find acknowledged purchases lost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use caisse_core::parliament::SplitMix64;
use caisse_node::caisse::{AllocationRun, PurchaseInput, Receipt};
use caisse_node::config::StoreFaults;
use caisse_node::conventionnement::ProducerRecord;
use caisse_node::dto;
use caisse_node::ledger::CheckReport;
use caisse_node::parliament::ProposalKind;
use caisse_node::policy::{AllocationPolicy, Policy};
use caisse_node::store::Engine;
use caisse_protocol::criteria::Attributes;
use caisse_protocol::messages::{PurchaseLine, ScopeItem, Subject};
use caisse_protocol::{Amount, CaisseId, Category, Day, Period, PurchaseId};
use serde_json::{Value, json};

use crate::cluster::Node;
use crate::lazyfs::{self, CutMode};
use crate::run::{self, Setup, Shared, get, post, progress, set_day};
use crate::scenario::{CategoryMix, Scenario};

/// How to run the harness.
pub struct Options {
    /// Power cuts to make.
    pub cuts: u32,
    /// Seed of every random choice (traffic, cut moments, modes, prefixes).
    pub seed: u64,
    /// One mode for every cut, or a random one per cut.
    pub mode: Option<CutMode>,
    /// Where the report (`powercut.json`) and the nodes' logs go.
    pub out: PathBuf,
    /// The negative control: the node's store never syncs.
    pub skip_sync: bool,
    /// Tills sending purchases at once.
    pub tills: usize,
    /// caisse 0's storage engine.
    pub engine: Engine,
}

/// A purchase sent, with where it goes.
#[derive(Clone)]
struct Attempt {
    id: PurchaseId,
    home: usize,
    host: usize,
    body: PurchaseInput,
}

#[derive(Default)]
struct Outcomes {
    acked: Vec<Attempt>,
    /// No answer, or an answer that does not say whether it was recorded
    /// (the node died, its disk failed, the home was unreachable).
    uncertain: Vec<Attempt>,
    /// Definitely refused: must be in no journal.
    declined: Vec<(Attempt, String)>,
}

/// What happened to one purchase sent once.
enum Answer {
    Acked,
    Uncertain,
    Declined(String),
}

async fn send(c: &Shared, body: &PurchaseInput, within: Duration) -> Answer {
    match tokio::time::timeout(
        within,
        run::client(c).post::<_, Receipt>("/api/v1/purchases", body),
    )
    .await
    {
        Ok(Ok(_)) => Answer::Acked,
        Ok(Err(e)) => match e.code() {
            Some(code)
                if !["unavailable", "storage", "home_unreachable", "internal"].contains(&code) =>
            {
                Answer::Declined(code.to_owned())
            }
            _ => Answer::Uncertain,
        },
        Err(_) => Answer::Uncertain,
    }
}

/// One till: purchases until told to stop.
#[allow(clippy::too_many_arguments)]
async fn till(
    w: usize,
    seed: u64,
    round: u32,
    clients: Arc<Vec<Shared>>,
    setups: Arc<Vec<Arc<Setup>>>,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Outcomes>>,
) {
    let mut rng = SplitMix64(seed ^ (w as u64) << 32 ^ u64::from(round) << 48 ^ 0x7711);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // 70% local at caisse 0, 15% caisse 1's members at caisse 0, 15%
        // caisse 0's members at caisse 1.
        let r = rng.below(100);
        let (home, host) = if r < 70 {
            (0, 0)
        } else if r < 85 {
            (1, 0)
        } else {
            (0, 1)
        };
        let members = &setups[home].members;
        let (_, card) = &members[rng.below(members.len() as u64) as usize];
        let hs = &setups[host];
        let producer = &hs.producers[rng.below(hs.producers.len() as u64) as usize];
        let outlet = &hs.outlets[rng.below(hs.outlets.len() as u64) as usize];
        let mut idb = [0u8; 16];
        idb[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        idb[8..].copy_from_slice(&(u64::from(round) << 40 | (w as u64) << 32 | n).to_le_bytes());
        n += 1;
        let id = PurchaseId::from_bytes(idb);
        let amount = Amount::from_cents(10 + rng.below(40) as i64);
        let body = PurchaseInput {
            id,
            card: *card,
            outlet: *outlet,
            lines: vec![PurchaseLine {
                category: groceries(),
                producer: Some(*producer),
                amount,
            }],
            pin: None,
        };
        let a = Attempt {
            id,
            home,
            host,
            body,
        };
        let answer = send(&clients[host], &a.body, Duration::from_secs(10)).await;
        let pause = {
            let mut o = out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match answer {
                Answer::Acked => o.acked.push(a),
                Answer::Uncertain => o.uncertain.push(a),
                Answer::Declined(code) => o.declined.push((a, code)),
            }
            o.uncertain.last().is_some_and(|u| u.id == id)
        };
        if pause {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How the journals stand against what was acknowledged and declined.
#[derive(Default, Debug)]
struct Tally {
    lost: Vec<String>,
    twice: usize,
    declined_recorded: usize,
}

async fn tally(clients: &[Shared], o: &Outcomes) -> Result<Tally> {
    let mut journals = Vec::new();
    for c in clients {
        journals.push(run::journal_purchases(c).await?);
    }
    let count = |a: &Attempt| -> (u32, u32) {
        if a.home == a.host {
            (journals[a.home].local.get(&a.id).copied().unwrap_or(0), 1)
        } else {
            (
                journals[a.home].home.get(&a.id).copied().unwrap_or(0),
                journals[a.host].host.get(&a.id).copied().unwrap_or(0),
            )
        }
    };
    let mut t = Tally::default();
    for a in &o.acked {
        let (home, host) = count(a);
        if home == 0 || host == 0 {
            t.lost.push(format!(
                "{} (home {}, host {}: {home} in the home's journal, {host} in the host's)",
                a.id, a.home, a.host
            ));
        }
    }
    for (a, _) in &o.declined {
        let (home, host) = count(a);
        if home > 0 || (a.home != a.host && host > 0) {
            t.declined_recorded += 1;
        }
    }
    t.twice = journals
        .iter()
        .flat_map(|j| {
            j.local
                .values()
                .chain(j.home.values())
                .chain(j.host.values())
        })
        .filter(|n| **n > 1)
        .count();
    Ok(t)
}

/// The `/api/v1/peers` row of caisse `id` at the node behind `c` (null if
/// it does not know it).
async fn peer_row(c: &Shared, id: CaisseId) -> Result<Option<dto::PeerRow>> {
    let peers: Vec<dto::PeerRow> = get(c, "/api/v1/peers").await?;
    Ok(peers.into_iter().find(|p| p.caisse == id))
}

/// The version of caisse `id`'s document that the node behind `c` holds:
/// sequence and heads fingerprint.
async fn documents_seen(c: &Shared, id: CaisseId) -> Result<(u64, String)> {
    Ok(peer_row(c, id)
        .await?
        .map_or((0, String::new()), |row| (row.sequence, row.heads)))
}

/// caisse 0's own document version, and caisse 1's view of it.
struct Docs {
    own: u64,
    own_heads: String,
    seen: u64,
    seen_heads: String,
    invalid: u64,
}

async fn documents(clients: &[Shared], id0: CaisseId) -> Result<Docs> {
    let status: dto::Status = get(&clients[0], "/api/v1/status").await?;
    let row = peer_row(&clients[1], id0).await?;
    Ok(Docs {
        own: status.document_sequence,
        own_heads: status.document_heads,
        seen: row.as_ref().map_or(0, |r| r.sequence),
        seen_heads: row.as_ref().map(|r| r.heads.clone()).unwrap_or_default(),
        invalid: row.as_ref().map_or(0, |r| r.invalid_statements),
    })
}

/// Accredit one more producer at caisse 0 by a vote: a new version of its
/// signed document, gossiped to caisse 1.
async fn accredit_one(c: Shared, n: u32, today: Day) -> Result<()> {
    let organic: Category = "organic"
        .parse()
        .map_err(|e| anyhow!("the organic label: {e}"))?;
    let r: ProducerRecord = post(
        &c,
        "/api/v1/producers",
        &dto::ProducerBody {
            name: format!("Ferme coupure {n}"),
            attributes: Attributes {
                labels: [organic].into(),
                distance_km: Some(20),
                ..Attributes::default()
            },
        },
    )
    .await?;
    let kind = ProposalKind::Accredit {
        subject: Subject::Producer(r.id),
        scope: vec![ScopeItem {
            category: groceries(),
            coverage_pct: 100,
        }],
        valid_from: today,
        valid_until: today.plus(365),
    };
    run::pass(&c, &format!("producteur {n}"), kind).await?;
    Ok(())
}

/// The one category the power-cut tills sell.
fn groceries() -> Category {
    "groceries"
        .parse()
        .unwrap_or_else(|_| unreachable!("a valid category name"))
}

fn scenario() -> Scenario {
    Scenario {
        name: "powercut".into(),
        caisses: 2,
        members_per_caisse: 40,
        months: 12,
        start: Period::new(2027, 1).unwrap_or_else(|| unreachable!("a valid month")),
        purchases_per_member: 0,
        allocation: Amount::from_cents(300_00),
        territory: None,
        income_min: Amount::from_cents(800_00),
        income_max: Amount::from_cents(3_000_00),
        subsidy_per_member: Amount::from_cents(0),
        producers_per_caisse: 2,
        outlets_per_caisse: 2,
        organic_share_pct: 100,
        cross_caisse_pct: 0,
        categories: vec![CategoryMix {
            name: "groceries".into(),
            weight: 1,
            coverage_pct: 100,
        }],
        faults: Vec::new(),
        wan: None,
    }
}

/// Run the harness; the report, and whether it passed.
pub async fn powercut(opts: Options) -> Result<(Value, bool)> {
    lazyfs::available()
        .map_err(|why| anyhow!("the power-cut filesystem cannot run here: {why}"))?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let out = std::path::absolute(&opts.out)?;
    let tmp = std::env::temp_dir().join(format!(
        "caisse-powercut-{}-{}",
        std::process::id(),
        opts.seed
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let mounted = lazyfs::mount(&tmp.join("backing"), &tmp.join("mnt"))
        .context("mounting the power-cut filesystem")?;
    let result = harness(&opts, &out, &tmp, &mounted).await;
    drop(mounted);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn harness(
    opts: &Options,
    out: &std::path::Path,
    tmp: &std::path::Path,
    fs: &lazyfs::Mounted,
) -> Result<(Value, bool)> {
    let sc = scenario();
    let policy = Policy {
        allocation: AllocationPolicy::PerPerson {
            amount: sc.allocation,
        },
        ..Policy::default()
    };
    let faults = opts.skip_sync.then(|| StoreFaults {
        skip_sync: true,
        ..StoreFaults::default()
    });
    let mut node0 = Node::create_with(
        0,
        &fs.path().join("caisse-00"),
        "Caisse 0",
        Vec::new(),
        policy.clone(),
        faults,
        out.join("caisse-00.log"),
        opts.engine,
        None,
    )
    .await?;
    let mut node1 = Node::create_with(
        1,
        &tmp.join("caisse-01"),
        "Caisse 1",
        vec![node0.addr.clone()],
        policy,
        None,
        out.join("caisse-01.log"),
        Engine::Redb,
        None,
    )
    .await?;
    let clients: Arc<Vec<Shared>> = Arc::new(vec![
        Arc::new(RwLock::new(node0.client.clone())),
        Arc::new(RwLock::new(node1.client.clone())),
    ]);
    let id0 = node0.id;
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in clients.iter() {
        while get::<Vec<dto::PeerRow>>(c, "/api/v1/peers")
            .await?
            .is_empty()
        {
            if Instant::now() > deadline {
                bail!("the two caisses did not find each other within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let start = sc.start.first_day();
    let mut setups = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        setups.push(Arc::new(
            run::setup_caisse(i, c.clone(), sc.clone(), opts.seed, start, Arc::default()).await?,
        ));
    }
    let setups = Arc::new(setups);
    progress(format!(
        "powercut (seed {}): two caisses set up, caisse 0 on the power-cut filesystem; {} cuts",
        opts.seed, opts.cuts
    ));

    let mut rng = SplitMix64(opts.seed ^ 0xC0FF_EE00);
    // How long forwarded purchases and documents may take to settle after
    // a restart; the negative control expects losses and need not wait.
    let settle = Duration::from_secs(if opts.skip_sync { 3 } else { 30 });
    let all = Arc::new(Mutex::new(Outcomes::default()));
    let mut cuts = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut total_lost = 0usize;
    let mut pending_total = 0usize;
    for round in 1..=opts.cuts {
        let today = start.plus(round);
        for c in clients.iter() {
            set_day(c, today).await?;
        }
        post::<_, AllocationRun>(
            &clients[1],
            "/api/v1/allocations",
            &dto::PeriodBody {
                period: today.period(),
            },
        )
        .await?;
        let own_before = documents(&clients, id0).await?.own;
        // One cut in four lands on a quiet node just after it published a
        // new version of its document and caisse 1 received it: the
        // moment a publication not yet durable would be lost after being
        // seen. The others land at a random moment under load: an
        // allocation run, a vote, and the tills.
        let quiet = rng.below(4) == 0 && round > 1;
        let stop = Arc::new(AtomicBool::new(false));
        let round_out = Arc::new(Mutex::new(Outcomes::default()));
        let mut tasks = Vec::new();
        for w in 0..if quiet { 0 } else { opts.tills } {
            tasks.push(tokio::spawn(till(
                w,
                opts.seed,
                round,
                clients.clone(),
                setups.clone(),
                stop.clone(),
                round_out.clone(),
            )));
        }
        let alloc = {
            let c = clients[0].clone();
            let period = today.period();
            tokio::spawn(async move {
                post::<_, AllocationRun>(&c, "/api/v1/allocations", &dto::PeriodBody { period })
                    .await
            })
        };
        let vote = tokio::spawn(accredit_one(clients[0].clone(), round, today));
        let after = if quiet {
            let began = Instant::now();
            let _ = alloc.is_finished();
            while !vote.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The vote's new version is published, and caisse 1 holds it.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut own = documents(&clients, id0).await?.own;
            while own <= own_before && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
                own = documents(&clients, id0).await?.own;
            }
            while documents(&clients, id0).await?.seen < own && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            began.elapsed()
        } else {
            let after = Duration::from_millis(200 + rng.below(1800));
            tokio::time::sleep(after).await;
            after
        };
        let mode = opts.mode.unwrap_or(match rng.below(3) {
            0 => CutMode::Drop,
            1 => CutMode::Prefix,
            _ => CutMode::Torn,
        });
        let (writes_before, syncs_before) = fs.counters();
        // The process stops and the volatile cache is lost at one instant:
        // nothing the node does can come between.
        node0.kill();
        let report = fs.cut(mode, &mut rng);
        let seen_at_cut = documents_seen(&clients[1], id0).await?;
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            let _ = t.await;
        }
        let _ = alloc.await;
        let _ = vote.await;
        fs.restore();
        pending_total += report.pending;
        let restarted = Instant::now();
        if let Err(e) = node0.restart().await {
            let detail = format!("cut {round}: caisse 0 did not start after the cut: {e:#}");
            failures.push(detail.clone());
            progress(&detail);
            cuts.push(
                json!({ "cut": round, "mode": mode.name(), "restart": "failed", "detail": detail }),
            );
            // Count what was acknowledged as lost: nothing can be read back.
            let o = all
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            total_lost = o.acked.len()
                + round_out
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .acked
                    .len();
            drop(o);
            break;
        }
        let restart_ms = restarted.elapsed().as_millis() as u64;
        if let Ok(mut c) = clients[0].write() {
            *c = node0.client.clone();
        }
        set_day(&clients[0], today).await?;
        let r = std::mem::take(
            &mut *round_out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let (acked_now, uncertain_now) = (r.acked.len(), r.uncertain.len());
        let mut o = std::mem::take(
            &mut *all
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        o.acked.extend(r.acked);
        o.declined.extend(r.declined);
        // Retry, as a till would, every purchase whose answer was lost, all
        // at once, while the two caisses find each other again.
        let mut retries = Vec::new();
        for a in std::mem::take(&mut o.uncertain)
            .into_iter()
            .chain(r.uncertain)
        {
            let c = clients[a.host].clone();
            retries.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match send(&c, &a.body, Duration::from_secs(20)).await {
                        Answer::Uncertain if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        answer => return (a, answer),
                    }
                }
            }));
        }
        let mut retried_acked = 0;
        for t in retries {
            let (a, answer) = t.await?;
            match answer {
                Answer::Acked => {
                    retried_acked += 1;
                    o.acked.push(a);
                }
                Answer::Declined(code) => o.declined.push((a, code)),
                Answer::Uncertain => o.uncertain.push(a),
            }
        }
        // The journals, with time for forwarded cross-caisse purchases.
        let deadline = Instant::now() + settle;
        let t = loop {
            let t = tally(&clients, &o).await?;
            if t.lost.is_empty() || Instant::now() > deadline {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        // Every member enrolled during set-up is still there.
        let members = get::<dto::Status>(&clients[0], "/api/v1/status")
            .await?
            .members;
        let enrolled = setups[0].members.len() as u64 + 2;
        if members < enrolled {
            failures.push(format!(
                "cut {round}: caisse 0 holds {members} members after restart; {enrolled} were enrolled and acknowledged"
            ));
        }
        let mut clean = true;
        for c in clients.iter() {
            // From the last clean audit's checkpoint (a file the cut may
            // have caught mid-save), then the whole journal.
            for path in ["/api/v1/ledger/check", "/api/v1/ledger/check?full=true"] {
                let check: CheckReport = get(c, path).await?;
                if !check.ok() {
                    clean = false;
                    failures.push(format!("cut {round}: {path}: {:?}", check.findings));
                }
            }
        }
        // Documents: never behind what the peer already holds; converged.
        let deadline = Instant::now() + settle;
        let (at_cut, heads_at_cut) = seen_at_cut;
        let d = loop {
            let d = documents(&clients, id0).await?;
            let converged = d.own == d.seen && d.own_heads == d.seen_heads && d.own >= at_cut;
            if converged || Instant::now() > deadline {
                break d;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // Signed again under the sequence the peer held, differently: the
        // owner lost a version it had gossiped.
        let resigned = d.own == at_cut && d.own_heads != heads_at_cut;
        let docs_ok = d.own >= at_cut
            && d.own == d.seen
            && d.own_heads == d.seen_heads
            && !resigned
            && d.invalid == 0;
        let (own, seen, invalid) = (d.own, d.seen, d.invalid);
        if !docs_ok {
            failures.push(format!(
                "cut {round}: caisse 0's document at sequence {own} (heads {}) after restart; caisse 1 had {at_cut} (heads {heads_at_cut}) at the cut and holds {seen} (heads {}), with {invalid} invalid statements",
                d.own_heads, d.seen_heads
            ));
        }
        if !t.lost.is_empty() {
            failures.push(format!(
                "cut {round}: {} acknowledged purchases lost, e.g. {}",
                t.lost.len(),
                t.lost[0]
            ));
        }
        if t.twice > 0 || t.declined_recorded > 0 {
            failures.push(format!(
                "cut {round}: {} purchases recorded twice, {} declined ones recorded",
                t.twice, t.declined_recorded
            ));
        }
        total_lost = t.lost.len();
        progress(format!(
            "cut {round}/{} ({}{}, after {} ms, {} unsynced writes pending, {} kept{}): {} acknowledged, {} unanswered then retried ({} recorded), restart {} ms; lost {}, twice {}, ledgers {}, documents {}",
            opts.cuts,
            mode.name(),
            if quiet {
                ", quiet, just after a publication"
            } else {
                ""
            },
            after.as_millis(),
            report.pending,
            report.applied,
            if report.torn_bytes > 0 {
                format!(", one torn at {} bytes", report.torn_bytes)
            } else {
                String::new()
            },
            acked_now,
            uncertain_now,
            retried_acked,
            restart_ms,
            t.lost.len(),
            t.twice,
            if clean { "clean" } else { "NOT clean" },
            if docs_ok {
                format!("at {own}")
            } else {
                "WRONG".into()
            },
        ));
        cuts.push(json!({
            "cut": round, "mode": mode.name(), "quiet": quiet, "after_ms": after.as_millis() as u64,
            "pending_writes": report.pending, "kept_writes": report.applied, "torn_bytes": report.torn_bytes,
            "fs_writes": writes_before, "fs_syncs": syncs_before,
            "acknowledged": acked_now, "unanswered": uncertain_now, "retried_recorded": retried_acked,
            "restart_ms": restart_ms, "lost": t.lost.len(), "twice": t.twice,
            "declined_recorded": t.declined_recorded, "ledgers_clean": clean,
            "document_sequence": own, "peer_had_at_cut": at_cut, "peer_holds": seen,
        }));
        *all.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = o;
        if opts.skip_sync && total_lost > 0 {
            break;
        }
    }
    node0.stop();
    node1.stop();
    let o = all
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut declined: BTreeMap<String, u64> = BTreeMap::new();
    for (_, code) in &o.declined {
        *declined.entry(code.clone()).or_default() += 1;
    }
    let passed = if opts.skip_sync {
        total_lost > 0
    } else {
        failures.is_empty()
    };
    let report = json!({
        "seed": opts.seed,
        "mode": opts.mode.map_or("mixed", CutMode::name),
        "skip_sync": opts.skip_sync,
        "engine": opts.engine.name(),
        "cuts": cuts.len(),
        "acknowledged": o.acked.len(),
        "still_unanswered": o.uncertain.len(),
        "declined": declined,
        "lost": total_lost,
        "unsynced_writes_thrown_away_or_cut": pending_total,
        "failures": failures,
        "passed": passed,
        "per_cut": cuts,
    });
    std::fs::write(
        out.join("powercut.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    if opts.skip_sync {
        progress(format!(
            "negative control (store syncs nothing): {} acknowledged purchases lost after {} cuts: {}",
            total_lost,
            cuts.len(),
            if passed {
                "detected, as it must be"
            } else {
                "NOT detected: the harness is blind"
            }
        ));
    } else {
        progress(format!(
            "{} cuts, {} purchases acknowledged, {} lost, {} failures: {}",
            cuts.len(),
            o.acked.len(),
            total_lost,
            failures.len(),
            if passed { "passed" } else { "FAILED" }
        ));
        for f in &failures {
            progress(format!("  {f}"));
        }
    }
    Ok((report, passed))
}
