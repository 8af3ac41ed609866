//! The application layer: what the two front ends (the JSON API and the web
//! console) share, over the writer's handle. Neither front end imports the
//! other; both import this.
//!
//! - [`App`]: the state every handler reaches (the writer's handle, the
//!   store for reads, the config, the federation).
//! - [`cross_sale`]: the host side of a cross-caisse purchase, driving the
//!   core's state machine (`caisse_core::host_sale::HostSale`: prepared →
//!   forwarded with a deadline → answered, or offline → resolved) with the
//!   writer, the network and the clock.
//! - [`report`]: the evaluation report, computed off the writer.
//! - [`App::start_audit`], [`App::start_backup`]: a ledger audit or a
//!   backup started now and collected later (`crate::started`: either can
//!   outlast one request).

use std::sync::Arc;
use std::time::Duration;

use caisse_core::command::{Command, Reply};
use caisse_core::host_sale::{HostAction, HostEvent, HostSale, HostSaleError};
use caisse_protocol::rpc::{MAX_RESENT, MAX_RPC_SIZE, RpcRequest, RpcResponse};
use caisse_protocol::{CaisseId, Envelope, Period};

use crate::caisse::{CaisseError, PurchaseInput, Receipt};
// (`app` names axum only for the request parts a client address is read from.)
use crate::backup::BackupDone;
use crate::config::Config;
use crate::members::Role;
use crate::started::{Run, Runs};
use crate::store::{Store, StoreError};
use crate::writer::{CaisseHandle, reply};
use caisse_core::ledger::CheckReport;

/// What every handler, of the API or of the console, can reach: one
/// shared [`AppState`] (cloned per request and per middleware by axum, so
/// a clone is one reference count, not one per field).
#[derive(Clone)]
pub struct App(Arc<AppState>);

impl std::ops::Deref for App {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.0
    }
}

/// The state behind [`App`].
pub struct AppState {
    /// The writer.
    pub(crate) handle: CaisseHandle,
    /// The store, for reads off the writer.
    pub(crate) store: Arc<dyn Store>,
    /// The node's configuration.
    pub(crate) config: Arc<Config>,
    /// This caisse.
    pub(crate) caisse_id: CaisseId,
    /// The federation task's handle.
    pub(crate) federation: crate::federation::Federation,
    /// The auditor's pseudonyms for member and card ids.
    pub(crate) pseudonyms: crate::redact::Pseudonyms,
    /// One whole-journal read (a report, an export) at a time: more would
    /// only share the disk and multiply the memory, and slow the tills.
    pub(crate) heavy: Arc<tokio::sync::Semaphore>,
    /// Wrong PINs per client address, over every till and every card.
    pub(crate) pin_guesses: crate::limiter::FailureLimiter,
    /// Roles of tokens seen, with the writer's token generation when read
    /// (see [`AppState::role_of`]).
    tokens: std::sync::Mutex<std::collections::HashMap<Vec<u8>, (Role, u64)>>,
    /// Audits started to be collected later (see [`App::start_audit`]).
    audits: std::sync::Mutex<Runs<bool, CheckReport>>,
    /// Backups likewise (see [`App::start_backup`]).
    backups: std::sync::Mutex<Runs<std::path::PathBuf, BackupDone>>,
}

/// A ledger audit started by [`App::start_audit`] (asked: whether it
/// reads the whole journal).
pub type AuditRun = Run<bool, CheckReport>;

/// A backup started by [`App::start_backup`] (asked: the file).
pub type BackupRun = Run<std::path::PathBuf, BackupDone>;

/// Findings an audit's answer lists; more are counted (a store damaged
/// throughout has a finding per account).
pub const FINDINGS_LISTED: usize = 1_000;

/// Wrong PINs one client address may send within [`PIN_GUESS_WINDOW`]
/// before its sales with a PIN wait (a shop's tills behind one address
/// see a few mistyped PINs an hour, not this).
pub const PIN_GUESSES_PER_ADDRESS: usize = 20;
/// The window of [`PIN_GUESSES_PER_ADDRESS`].
pub const PIN_GUESS_WINDOW: Duration = Duration::from_secs(15 * 60);

impl App {
    /// The application over a running writer and its store.
    pub fn new(
        handle: CaisseHandle,
        store: Arc<dyn Store>,
        config: Config,
        caisse_id: CaisseId,
        federation: crate::federation::Federation,
        pseudonym_secret: &[u8; 32],
    ) -> App {
        App(Arc::new(AppState {
            handle,
            store,
            config: Arc::new(config),
            caisse_id,
            federation,
            pseudonyms: crate::redact::Pseudonyms::new(pseudonym_secret),
            heavy: Arc::new(tokio::sync::Semaphore::new(1)),
            pin_guesses: crate::limiter::FailureLimiter::new(
                "wrong PINs",
                PIN_GUESSES_PER_ADDRESS,
                PIN_GUESS_WINDOW,
                10_000,
            ),
            tokens: std::sync::Mutex::new(std::collections::HashMap::new()),
            audits: std::sync::Mutex::new(Runs::default()),
            backups: std::sync::Mutex::new(Runs::default()),
        }))
    }

    /// Start a ledger audit (from the last clean audit's checkpoint, or of
    /// the whole journal if `full`) and return at once; [`App::audit_run`]
    /// gives its outcome when it is done, however long the journal. One at
    /// a time: while one runs, a request it answers as well (it reads the
    /// whole journal, or this one does not ask for that) gets that one (a
    /// treasurer who stopped waiting and asks again), any other is refused.
    pub fn start_audit(&self, full: bool) -> Result<AuditRun, CaisseError> {
        let joins = |r: &AuditRun| {
            if r.ask || !full {
                return Ok(());
            }
            Err(CaisseError::Conflict(format!(
                "audit {} (from the last clean audit's checkpoint) is running, started {} s ago: once it ends (`caisse job list`), run `caisse ledger check --full` again",
                r.id,
                r.seconds(),
            )))
        };
        self.start(
            |s| &s.audits,
            full,
            joins,
            move |app| async move {
                app.handle
                    .check(full)
                    .await
                    .map(|r| r.bounded(FINDINGS_LISTED))
            },
        )
    }

    /// The audit numbered `id` that [`App::start_audit`] started, running
    /// or among the last finished.
    pub fn audit_run(&self, id: u64) -> Option<AuditRun> {
        lock(&self.audits).get(id)
    }

    /// Start an online backup to the new file `out` and return at once;
    /// [`App::backup_run`] gives its outcome once the file is on disk,
    /// however large the store. One at a time: asking again for the same
    /// file while it runs gets that one.
    pub fn start_backup(&self, out: std::path::PathBuf) -> Result<BackupRun, CaisseError> {
        let asked = out.clone();
        let joins = move |r: &BackupRun| {
            if r.ask == asked {
                return Ok(());
            }
            Err(CaisseError::Conflict(format!(
                "a backup to {} is running, started {} s ago: wait for it (`caisse job list`)",
                r.ask.display(),
                r.seconds(),
            )))
        };
        let to = out.clone();
        self.start(
            |s| &s.backups,
            out,
            joins,
            move |app| async move { app.handle.backup(to).await },
        )
    }

    /// The backup numbered `id` that [`App::start_backup`] started.
    pub fn backup_run(&self, id: u64) -> Option<BackupRun> {
        lock(&self.backups).get(id)
    }

    /// Begin a job of the kind `runs` holds (see [`Runs::begin`]) and, if
    /// it is new, run `job` on the runtime, its outcome kept in `runs`.
    fn start<A, T, F>(
        &self,
        runs: fn(&AppState) -> &std::sync::Mutex<Runs<A, T>>,
        ask: A,
        joins: impl FnOnce(&Run<A, T>) -> Result<(), CaisseError>,
        job: impl FnOnce(App) -> F,
    ) -> Result<Run<A, T>, CaisseError>
    where
        A: Clone + Send + 'static,
        T: Clone + Send + 'static,
        F: std::future::Future<Output = Result<T, CaisseError>> + Send + 'static,
    {
        let (run, new) = lock(runs(self)).begin(ask, joins)?;
        if new {
            let (app, id) = (self.clone(), run.id);
            let running = job(app.clone());
            tokio::spawn(async move {
                let outcome = running.await.map_err(|e| e.to_string());
                lock(runs(&app)).finish(id, outcome);
            });
        }
        Ok(run)
    }
}

/// The mutex's value, even if a thread panicked holding it (what it
/// guards is whole after every change).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tokens whose roles [`AppState::role_of`] keeps (the caisse's own
/// tokens: an admin's, an observer's, one per outlet, seat and producer);
/// past it, the cache starts again empty.
const CACHED_TOKENS: usize = 4_096;

impl AppState {
    /// The role of the token stored under `key` (see
    /// `members::token_key`), `None` for a token the caisse never issued or
    /// revoked. Read from the store once, then from a cache whose entries
    /// any commit writing a token (a new one, a revocation) makes stale:
    /// the generation is read before the store, so a role read across a
    /// revocation is kept under the generation before it and never served
    /// after it.
    pub fn role_of(&self, key: &[u8]) -> Result<Option<Role>, StoreError> {
        let generation = self.handle.tokens_generation();
        if let Ok(cache) = self.tokens.lock()
            && let Some((role, at)) = cache.get(key)
            && *at == generation
        {
            return Ok(Some(role.clone()));
        }
        let Some(bytes) = self.store.get(key)? else {
            return Ok(None);
        };
        let role: Role = caisse_core::store::decode_value(key, &bytes)?;
        if let Ok(mut cache) = self.tokens.lock() {
            if cache.len() >= CACHED_TOKENS {
                cache.clear();
            }
            cache.insert(key.to_vec(), (role.clone(), generation));
        }
        Ok(Some(role))
    }
}

/// Why a sale with another caisse's card did not go through.
#[derive(Debug, thiserror::Error)]
pub enum SaleError {
    /// This caisse refused it, or the home caisse's signed decline.
    #[error(transparent)]
    Caisse(#[from] CaisseError),
    /// The home caisse did not answer by the deadline, and the offline
    /// floor did not allow the sale. Nothing was charged: retry with the
    /// same purchase id.
    #[error(
        "the card's home caisse cannot be reached ({0}): the purchase was not made; retry with the same id, or pay otherwise"
    )]
    HomeUnreachable(String),
    /// The home caisse refused the request itself (not a signed decline).
    #[error("the card's home caisse refused the request: {0}")]
    RefusedByHome(String),
    /// Too many wrong PINs from this address lately: nothing was tried.
    #[error(
        "too many wrong PINs from this device lately: wait {} minute(s), or ask the caisse",
        .0.as_secs().div_ceil(60).max(1)
    )]
    TooManyWrongPins(Duration),
}

/// A sale at one of our outlets from a till at `client` (its address):
/// decided by this caisse for its own cards, forwarded to the home caisse
/// for another's. Wrong PINs are counted per address, whatever the card:
/// past [`PIN_GUESSES_PER_ADDRESS`] within the window, sales with a PIN
/// from that address wait, without touching any card.
pub async fn sell(app: &App, input: PurchaseInput, client: &str) -> Result<Receipt, SaleError> {
    if input.pin.as_deref().is_some_and(|p| !p.is_empty())
        && let Some(wait) = app.pin_guesses.wait(client)
    {
        tracing::info!(target: "caisse::security", %client, outlet = %input.outlet, "sale with a PIN refused: too many wrong PINs from this address");
        return Err(SaleError::TooManyWrongPins(wait));
    }
    let (outlet, card) = (input.outlet, input.card);
    let started = std::time::Instant::now();
    let local = input.card.is_issued_by(&app.caisse_id);
    let result = if local {
        app.handle.purchase(input).await.map_err(SaleError::from)
    } else {
        cross_sale(app, input).await
    };
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(SaleError::Caisse(e)) => e.code(),
        Err(SaleError::HomeUnreachable(_)) => "home_unreachable",
        Err(SaleError::RefusedByHome(_)) => "refused_by_home",
        Err(SaleError::TooManyWrongPins(_)) => "too_many_wrong_pins",
    };
    crate::metrics::sale(
        if local { "local" } else { "cross" },
        outcome,
        started.elapsed().as_secs_f64(),
    );
    if let Err(SaleError::Caisse(CaisseError::Declined { reason, .. })) = &result
        && matches!(
            reason,
            caisse_protocol::messages::DeclineReason::WrongPin
                | caisse_protocol::messages::DeclineReason::CardLocked
        )
    {
        tracing::info!(target: "caisse::security", %client, %outlet, card = %crate::caisse::card_tail(&card), "wrong PIN at a till");
        app.pin_guesses.record_failure(client);
    }
    result
}

/// The client's address: the connection's peer, or, when the peer is one
/// of the configured reverse proxies, the last address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_address(parts: &axum::http::request::Parts, trusted: &[std::net::IpAddr]) -> String {
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let Some(peer) = peer else {
        return "local".to_owned();
    };
    if !trusted.contains(&peer) {
        return peer.to_string();
    }
    let forwarded: Vec<std::net::IpAddr> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|a| !trusted.contains(a))
        .unwrap_or(peer)
        .to_string()
}

/// How long the host waits for the home caisse's answer.
pub const HOME_DEADLINE: Duration = Duration::from_millis(caisse_core::host_sale::HOME_DEADLINE_MS);

/// A purchase at one of our outlets with another caisse's card: the host
/// side of the cross-caisse saga, [`HostSale`] in the core, driven here
/// with the writer, the network and the clock: each of its actions is run
/// (a command in the writer; the signed request sent to the home caisse,
/// with its deadline) and what came of it fed back, until it finishes.
pub async fn cross_sale(app: &App, input: PurchaseInput) -> Result<Receipt, SaleError> {
    let id = input.id;
    let (mut sale, mut action) = HostSale::start(input);
    loop {
        let event = match action {
            HostAction::Execute(command) => HostEvent::Replied(app.handle.execute(*command).await),
            HostAction::Send {
                home,
                request,
                within_ms,
            } => send_to_home(app, home, *request, Duration::from_millis(within_ms)).await,
            HostAction::Finish(result) => {
                return result.map_err(|e| match e {
                    HostSaleError::Caisse(e) => SaleError::Caisse(e),
                    HostSaleError::RefusedByHome(why) => SaleError::RefusedByHome(why),
                    HostSaleError::HomeUnreachable(why) => {
                        tracing::warn!(target: "caisse::events::purchase", purchase = %id, %why, "home caisse unreachable");
                        SaleError::HomeUnreachable(why)
                    }
                });
            }
            // Each event here answers the action just run: nothing is
            // ignored in this loop, but stop rather than spin if it were.
            HostAction::Ignore => {
                return Err(SaleError::Caisse(CaisseError::Invalid(
                    "the cross-caisse sale stalled".into(),
                )));
            }
        };
        if matches!(event, HostEvent::Deadline | HostEvent::Unreachable(_)) {
            tracing::info!(target: "caisse::events::purchase", purchase = %id, "no answer from the home caisse: asking the offline floor");
        }
        action = sale.step(event);
    }
}

/// Send a signed purchase request to its home caisse and wait for the
/// answer at most `within`.
async fn send_to_home(app: &App, home: CaisseId, request: Envelope, within: Duration) -> HostEvent {
    let Some(peer) = crate::network::peer_id_of(&home) else {
        return HostEvent::Unreachable("bad caisse key".into());
    };
    let bytes =
        match caisse_protocol::encoding::encode(&RpcRequest::Purchase(request), MAX_RPC_SIZE) {
            Ok(b) => b,
            Err(e) => return HostEvent::Unreachable(e.to_string()),
        };
    match tokio::time::timeout(within, app.federation.network.request(peer, bytes)).await {
        Err(_) => HostEvent::Deadline,
        Ok(Err(e)) => HostEvent::Unreachable(e),
        Ok(Ok(answer)) => {
            match caisse_protocol::encoding::decode::<RpcResponse>(&answer, MAX_RPC_SIZE) {
                Ok(RpcResponse::Purchase(answer)) => HostEvent::Answer(Box::new(answer)),
                Ok(RpcResponse::Refused(why)) => HostEvent::Refused(why),
                Ok(_) | Err(_) => HostEvent::Unreachable("malformed answer".into()),
            }
        }
    }
}

/// How long a debtor has to re-send the receipts a dispute names.
pub const RESEND_DEADLINE: Duration = Duration::from_secs(10);

/// The settlement run of `period` (creditor: publish statements; debtor:
/// acknowledge or dispute), then, for each dispute over receipts this
/// caisse lacks, the debtor asked to re-send them and what it sends
/// recorded (each receipt checked against its signature by the core).
pub async fn run_settlement(
    app: &App,
    period: Period,
) -> Result<crate::settlement::SettlementRun, CaisseError> {
    let mut run = reply!(
        app.handle.execute(Command::RunSettlement { period }).await,
        Reply::Settlement
    )?;
    let (me, view) = (app.caisse_id, app.federation.snapshot());
    let missing = app
        .handle
        .read(move |c, _| crate::settlement::missing_receipts(c, me, &view))
        .await?;
    for (debtor, period, ids) in missing {
        let Some(peer) = crate::network::peer_id_of(&debtor) else {
            continue;
        };
        let ids: Vec<_> = ids.into_iter().take(MAX_RESENT).collect();
        let Ok(bytes) = caisse_protocol::encoding::encode(&RpcRequest::Receipts(ids), MAX_RPC_SIZE)
        else {
            continue;
        };
        let answer =
            tokio::time::timeout(RESEND_DEADLINE, app.federation.network.request(peer, bytes))
                .await;
        if let Ok(Ok(answer)) = answer
            && let Ok(RpcResponse::Receipts(receipts)) =
                caisse_protocol::encoding::decode::<RpcResponse>(&answer, MAX_RPC_SIZE)
        {
            run.receipts_recovered += reply!(
                app.handle
                    .execute(Command::RecordResent {
                        debtor,
                        period,
                        receipts,
                    })
                    .await,
                Reply::Count
            )?;
        }
    }
    Ok(run)
}

/// Run `read` over the store on a blocking thread, never in the writer,
/// one whole-journal read (a report, an export, the accounts) at a time.
async fn heavy_read<T: Send + 'static>(
    app: &App,
    read: impl FnOnce(&dyn Store) -> Result<T, CaisseError> + Send + 'static,
) -> Result<T, CaisseError> {
    let _turn = app
        .heavy
        .acquire()
        .await
        .map_err(|_| CaisseError::Unavailable)?;
    let store = app.store.clone();
    // A thread of its own, at a lower priority (see `writer::lower_priority`).
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("heavy-read".into())
        .spawn(move || {
            crate::writer::lower_priority();
            let _ = tx.send(read(&*store));
        })
        .map_err(|_| CaisseError::Unavailable)?;
    rx.await.map_err(|_| CaisseError::Unavailable)?
}

/// The evaluation report of a period.
pub async fn report(app: &App, period: Period) -> Result<crate::report::Report, CaisseError> {
    heavy_read(app, move |store| crate::report::report_of(store, period)).await
}

/// The accountant's lines of a period.
pub async fn accounting(
    app: &App,
    period: Period,
) -> Result<Vec<crate::accounting::Line>, CaisseError> {
    heavy_read(app, move |store| {
        crate::accounting::accounting_of(store, period)
    })
    .await
}

/// The anonymised export of a period, pseudonyms keyed by `secret`.
pub async fn export(
    app: &App,
    period: Period,
    secret: [u8; 32],
) -> Result<crate::report::Export, CaisseError> {
    heavy_read(app, move |store| {
        crate::report::export_of(store, period, secret)
    })
    .await
}

/// A seat as people write it: `seat-3` or `3`.
pub fn parse_seat(text: &str) -> Result<u32, String> {
    let t = text.trim();
    t.strip_prefix("seat-")
        .unwrap_or(t)
        .parse()
        .map_err(|_| format!("bad seat {t:?}: write seat-3 or 3"))
}
