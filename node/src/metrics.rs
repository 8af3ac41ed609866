//! Prometheus metrics: what an operator watches, never who.
//!
//! Through the well-kept `metrics` facade and `metrics-exporter-prometheus`
//! (without its HTTP listener: the node serves the text itself at
//! `GET /metrics`, behind a bearer token like the rest of the API). Labels
//! are outcomes, paths and reasons, never a member, card or name. One
//! recorder per process: a process running several nodes (a bench) sums
//! their counters.
//!
//! Recorded where things happen: sales (`app::sell`: outcome and latency,
//! local or cross-caisse), commits (`writer`: group size, apply + fsync
//! time). Read at scrape time: members, journal entries, writer queue,
//! jobs, peers connected and blocked, gossip and request counters, request
//! bytes, the federation's documents and their sizes, the settlement of
//! the last closed month.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The thread that folds histogram samples into their buckets.
const UPKEEP_THREAD: &str = "metrics-upkeep";
/// How often it does.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process's recorder, installed on first use (`None` if another
/// recorder was installed first).
fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                    10.0,
                ])
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            // Histogram samples wait in the recorder until they are folded
            // into their buckets: at a scrape, or by this upkeep. A node
            // nobody scrapes (most caisses) kept every purchase's and every
            // commit's sample: 121 MiB restarted against 386 MiB after 8.8
            // million purchases (BENCHMARKS.md, "Memory of a long-running node").
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name(UPKEEP_THREAD.into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
            Some(handle)
        })
        .as_ref()
}

/// Install the recorder (call once at start).
pub fn install() {
    let _ = handle();
}

/// A sale decided: `path` is `local` or `cross`, `outcome` `accepted` or
/// the refusal's code.
pub fn sale(path: &'static str, outcome: &'static str, seconds: f64) {
    metrics::counter!("caisse_purchases_total", "path" => path, "outcome" => outcome).increment(1);
    metrics::histogram!("caisse_purchase_seconds", "path" => path).record(seconds);
}

/// A commit of the writer: commands in the group, seconds to apply and sync.
pub fn commit(commands: usize, seconds: f64) {
    metrics::histogram!("caisse_commit_seconds").record(seconds);
    metrics::histogram!("caisse_commit_group_size").record(commands as f64);
}

/// The saved size of a federation document (labelled by its caisse's short
/// id: public, not personal).
pub fn document_size(caisse: &caisse_protocol::CaisseId, bytes: usize) {
    metrics::gauge!("caisse_federation_document_bytes", "caisse" => caisse.short())
        .set(bytes as f64);
}

/// The metrics as Prometheus text, with the gauges read now from `app`.
pub async fn render(app: &crate::app::App) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let (members, entries) = app.handle.counts();
    metrics::gauge!("caisse_members").set(members as f64);
    metrics::gauge!("caisse_journal_entries").set(entries as f64);
    metrics::gauge!("caisse_writer_queue").set(app.handle.queued() as f64);
    let jobs = app.handle.jobs();
    metrics::gauge!("caisse_jobs_running").set(jobs.iter().filter(|j| !j.finished).count() as f64);
    let info = app.federation.network.info().await;
    metrics::gauge!("caisse_peers_connected").set(info.connected.len() as f64);
    metrics::gauge!("caisse_peers_blocked").set(info.blocked.len() as f64);
    metrics::counter!("caisse_frames_refused_total").absolute(info.frame_failures);
    // Requests and responses between caisses: mostly document sync.
    metrics::counter!("caisse_federation_rpc_bytes_total", "direction" => "received")
        .absolute(info.rpc_bytes_received);
    metrics::counter!("caisse_federation_rpc_bytes_total", "direction" => "sent")
        .absolute(info.rpc_bytes_sent);
    let st = &app.federation.stats;
    for (outcome, v) in [
        ("accepted", &st.gossip_accepted),
        ("rejected", &st.gossip_rejected),
        ("ignored", &st.gossip_ignored),
    ] {
        metrics::counter!("caisse_gossip_total", "outcome" => outcome).absolute(v.load(Relaxed));
    }
    metrics::counter!("caisse_requests_malformed_total").absolute(st.rpc_malformed.load(Relaxed));
    for (outcome, v) in [
        ("accepted", &st.sync_accepted),
        ("rejected", &st.sync_rejected),
        ("from_gossip", &st.changes_applied),
    ] {
        metrics::counter!("caisse_syncs_total", "outcome" => outcome).absolute(v.load(Relaxed));
    }
    metrics::counter!("caisse_peers_banned_total").absolute(st.peers_banned.load(Relaxed));
    // Owners caught signing two versions under one sequence.
    metrics::counter!("caisse_equivocations_total").absolute(st.equivocations.load(Relaxed));
    let view = app
        .federation
        .view
        .read()
        .map(|v| v.caisses.len())
        .unwrap_or(0);
    metrics::gauge!("caisse_federation_caisses").set(view as f64);
    // Settlement of the last closed month, as far as this caisse is party
    // to it: statements by role and state, transfers owed and paid.
    let me = app.caisse_id;
    let last = caisse_protocol::Day::from_unix(app.handle.clock().now())
        .period()
        .prev();
    let mut statements = std::collections::BTreeMap::new();
    let mut transfers = std::collections::BTreeMap::new();
    if let Some(period) = last {
        // Read in place: a scrape must not copy every followed document.
        let v = match app.federation.view.read() {
            Ok(view) => crate::settlement::settlement_view(&view, period),
            Err(_) => Default::default(),
        };
        for (_, st, acked, dispute) in &v.statements {
            let role = if st.creditor == me {
                "creditor"
            } else if st.debtor == me {
                "debtor"
            } else {
                continue;
            };
            let state = match (acked, dispute) {
                (true, _) => "acknowledged",
                (false, Some(_)) => "disputed",
                (false, None) => "awaiting",
            };
            *statements.entry((role, state)).or_insert(0u64) += 1;
        }
        for t in v.transfers.iter().filter(|t| t.from == me || t.to == me) {
            let direction = if t.from == me { "to_pay" } else { "to_receive" };
            let paid = v
                .paid
                .iter()
                .any(|(p, _)| p.from == t.from && p.to == t.to && p.amount == t.amount);
            let state = if paid { "paid" } else { "open" };
            *transfers.entry((direction, state)).or_insert(0u64) += 1;
        }
    }
    for role in ["creditor", "debtor"] {
        for state in ["acknowledged", "awaiting", "disputed"] {
            let n = statements.get(&(role, state)).copied().unwrap_or(0);
            metrics::gauge!("caisse_settlement_statements", "period" => "previous", "role" => role, "state" => state)
                .set(n as f64);
        }
    }
    for direction in ["to_pay", "to_receive"] {
        for state in ["open", "paid"] {
            let n = transfers.get(&(direction, state)).copied().unwrap_or(0);
            metrics::gauge!("caisse_settlement_transfers", "period" => "previous", "direction" => direction, "state" => state)
                .set(n as f64);
        }
    }
    handle().map_or_else(
        || "# metrics unavailable: another recorder is installed in this process\n".to_owned(),
        PrometheusHandle::render,
    )
}

#[cfg(test)]
mod upkeep_tests {
    /// Without a scrape, histogram samples piled up for as long as the
    /// node ran: the recorder comes with a thread that folds them in.
    #[test]
    fn the_recorder_folds_samples_without_a_scrape() {
        super::install();
        let threads = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .expect("Linux: /proc/self/task")
                .filter_map(Result::ok)
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .collect()
        };
        // (A new thread names itself once it runs.)
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut names = threads();
        while !names.iter().any(|n| n == super::UPKEEP_THREAD)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
            names = threads();
        }
        assert!(
            names.iter().any(|n| n == super::UPKEEP_THREAD),
            "no upkeep thread among {names:?}"
        );
    }
}
