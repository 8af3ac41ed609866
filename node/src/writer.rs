//! The single writer: one thread owns the [`Caisse`] and decides every
//! command in arrival order, with group commit.
//!
//! Commands arrive on a bounded channel from any task (the HTTP API, the
//! network) with a oneshot for the answer. The writer takes every command
//! waiting (up to [`MAX_GROUP`]), decides each against the in-memory state,
//! then applies all their writes in one atomic batch and syncs it to disk,
//! and only then answers. A storage failure stops the writer: every waiting
//! caller gets an error and the node shuts down rather than run out of step
//! with its disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use caisse_protocol::{Amount, Category, Day, MemberId, OutletId, Period};
use tokio::sync::{mpsc, oneshot};

use crate::caisse::{
    AllocationRun, Caisse, CaisseError, ContributionRecorded, EnrollInput, Enrolled,
    OutletRegistered, PayoutDone, PurchaseInput, Receipt, StatusChange, SubsidyRecorded,
};
use crate::ledger::{CheckReport, SubsidySource};
use crate::members::{MemberRecord, Role};

/// Most commands decided per commit.
pub const MAX_GROUP: usize = 2048;
/// Commands that may wait for the writer before callers are slowed down.
pub const QUEUE: usize = 8192;

/// The node's notion of time: the system clock, or a manual clock that a
/// testnet sets to simulate months (only when the config enables it).
#[derive(Debug, Default)]
pub struct Clock {
    manual: AtomicU64,
    file: Option<std::path::PathBuf>,
}

impl Clock {
    /// A clock following the system time.
    pub fn system() -> Arc<Clock> {
        Arc::new(Clock::default())
    }

    /// A test network's settable clock, kept in `file` so that a node
    /// restarted mid-scenario resumes at the scenario's date.
    pub fn persistent(file: std::path::PathBuf) -> Arc<Clock> {
        let saved = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        Arc::new(Clock {
            manual: AtomicU64::new(saved),
            file: Some(file),
        })
    }
    /// Unix seconds now.
    pub fn now(&self) -> u64 {
        match self.manual.load(Ordering::Relaxed) {
            0 => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            t => t,
        }
    }
    /// Today.
    pub fn today(&self) -> Day {
        Day::from_unix(self.now())
    }
    /// Set the manual time (Unix seconds); 0 returns to the system clock.
    pub fn set(&self, secs: u64) {
        self.manual.store(secs, Ordering::Relaxed);
        if let Some(f) = &self.file
            && let Err(e) = std::fs::write(f, secs.to_string())
        {
            tracing::warn!(error = %e, "cannot save the test clock");
        }
    }
}

/// A command to the writer, with its typed answer channel.
pub enum Command {
    /// Enrol a member.
    Enroll(EnrollInput, oneshot::Sender<Result<Enrolled, CaisseError>>),
    /// Change a member's status.
    ChangeStatus(
        MemberId,
        StatusChange,
        oneshot::Sender<Result<MemberRecord, CaisseError>>,
    ),
    /// Set a member's PIN.
    SetPin(
        MemberId,
        String,
        oneshot::Sender<Result<caisse_protocol::CardId, CaisseError>>,
    ),
    /// Run the allocation of a period.
    IssueAllocations(Period, oneshot::Sender<Result<AllocationRun, CaisseError>>),
    /// Record a contribution.
    Contribution(
        MemberId,
        Period,
        Option<Amount>,
        oneshot::Sender<Result<ContributionRecorded, CaisseError>>,
    ),
    /// Record a subsidy.
    Subsidy(
        SubsidySource,
        Amount,
        Period,
        String,
        oneshot::Sender<Result<SubsidyRecorded, CaisseError>>,
    ),
    /// Register an outlet.
    RegisterOutlet(
        String,
        Vec<(Category, u8)>,
        oneshot::Sender<Result<OutletRegistered, CaisseError>>,
    ),
    /// Create an API token.
    NewToken(Role, oneshot::Sender<Result<String, CaisseError>>),
    /// A local purchase.
    Purchase(
        Box<PurchaseInput>,
        oneshot::Sender<Result<Receipt, CaisseError>>,
    ),
    /// Pay an outlet.
    Payout(
        OutletId,
        Period,
        oneshot::Sender<Result<PayoutDone, CaisseError>>,
    ),
    /// Audit the ledger.
    Check(oneshot::Sender<Result<CheckReport, CaisseError>>),
    /// Any other decision, as a closure over the caisse and the time now.
    With(Decision),
}

/// A cloneable handle to the writer.
#[derive(Clone)]
pub struct CaisseHandle {
    tx: mpsc::Sender<Command>,
    clock: Arc<Clock>,
}

/// Start the writer thread over `caisse`. The thread ends when every
/// handle is dropped or storage fails; join the returned handle to wait.
pub fn spawn(caisse: Caisse, clock: Arc<Clock>) -> (CaisseHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let thread_clock = clock.clone();
    let join = std::thread::Builder::new()
        .name(format!("writer-{}", caisse.id().short()))
        .spawn(move || run(caisse, rx, thread_clock))
        .unwrap_or_else(|e| panic!("cannot start the writer thread: {e}"));
    (CaisseHandle { tx, clock }, join)
}

/// An answer waiting for the commit that makes it durable (opaque outside this module).
type Deliver = Box<dyn FnOnce(Option<&str>) + Send>;
/// A decision to run in the writer: the caisse and the time now in, an answer out.
pub type Decision = Box<dyn FnOnce(&mut Caisse, u64) -> Pending + Send>;
pub struct Pending(Deliver);

fn answer<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, CaisseError>>,
    result: Result<T, CaisseError>,
) -> Pending {
    Pending(Box::new(move |failure: Option<&str>| {
        let result = match failure {
            Some(msg) => Err(CaisseError::Storage(crate::store::StoreError::Engine(
                msg.to_owned(),
            ))),
            None => result,
        };
        let _ = reply.send(result);
    }))
}

fn run(mut caisse: Caisse, mut rx: mpsc::Receiver<Command>, clock: Arc<Clock>) {
    let span = tracing::info_span!("writer", caisse = %caisse.id().short());
    let _enter = span.enter();
    let mut group: Vec<Command> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let size = group.len();
        let mut answers: Vec<Pending> = Vec::with_capacity(size);
        for cmd in group.drain(..) {
            answers.push(decide(&mut caisse, cmd, &clock));
        }
        let failure = caisse.commit().err().map(|e| e.to_string());
        if let Some(msg) = &failure {
            tracing::error!(target: "caisse::events::storage", error = %msg, "commit failed; stopping the writer");
        }
        for a in answers {
            (a.0)(failure.as_deref());
        }
        let took = started.elapsed();
        if took > Duration::from_millis(500) {
            tracing::warn!(
                commands = size,
                took_ms = took.as_millis() as u64,
                "slow commit"
            );
        } else {
            tracing::trace!(commands = size, took_us = took.as_micros() as u64, "commit");
        }
        if failure.is_some() {
            return;
        }
    }
    tracing::info!("writer stopped");
}

fn decide(caisse: &mut Caisse, cmd: Command, clock: &Clock) -> Pending {
    let now = clock.now();
    let today = Day::from_unix(now);
    match cmd {
        Command::Enroll(input, r) => answer(r, caisse.enroll(input, today)),
        Command::ChangeStatus(id, change, r) => answer(r, caisse.change_status(id, change, today)),
        Command::SetPin(id, pin, r) => answer(r, caisse.set_pin(id, &pin)),
        Command::IssueAllocations(period, r) => {
            let result = caisse.issue_allocations(period, now);
            if let Ok(run) = &result {
                tracing::info!(target: "caisse::events::allocation", %period, issued = run.issued, already = run.already_issued, total = %run.total, "allocation run");
            }
            answer(r, result)
        }
        Command::Contribution(m, p, a, r) => answer(r, caisse.record_contribution(m, p, a, now)),
        Command::Subsidy(s, a, p, k, r) => answer(r, caisse.record_subsidy(s, a, p, k, now)),
        Command::RegisterOutlet(name, cats, r) => {
            answer(r, caisse.register_outlet(&name, cats, today))
        }
        Command::NewToken(role, r) => answer(r, Ok(caisse.new_token(role))),
        Command::Purchase(input, r) => {
            let id = input.id;
            let result = caisse.purchase(*input, now);
            match &result {
                Ok(rc) => {
                    tracing::debug!(target: "caisse::events::purchase", purchase = %id, allocation_cents = rc.allocation_part.cents(), replayed = rc.replayed, "accepted")
                }
                Err(e) => {
                    tracing::debug!(target: "caisse::events::purchase", purchase = %id, code = e.code(), "declined")
                }
            }
            answer(r, result)
        }
        Command::Payout(o, p, r) => answer(r, caisse.payout(o, p, now)),
        Command::Check(r) => answer(r, caisse.check()),
        Command::With(f) => f(caisse, now),
    }
}

impl CaisseHandle {
    /// The node's clock.
    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CaisseError>>) -> Command,
    ) -> Result<T, CaisseError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| CaisseError::Unavailable)?;
        rx.await.map_err(|_| CaisseError::Unavailable)?
    }

    /// Enrol a member.
    pub async fn enroll(&self, input: EnrollInput) -> Result<Enrolled, CaisseError> {
        self.call(|r| Command::Enroll(input, r)).await
    }
    /// Suspend, reinstate or record the departure of a member.
    pub async fn change_status(
        &self,
        id: MemberId,
        change: StatusChange,
    ) -> Result<MemberRecord, CaisseError> {
        self.call(|r| Command::ChangeStatus(id, change, r)).await
    }
    /// Set a member's PIN.
    pub async fn set_pin(
        &self,
        id: MemberId,
        pin: String,
    ) -> Result<caisse_protocol::CardId, CaisseError> {
        self.call(|r| Command::SetPin(id, pin, r)).await
    }
    /// Issue a period's allocations.
    pub async fn issue_allocations(&self, period: Period) -> Result<AllocationRun, CaisseError> {
        self.call(|r| Command::IssueAllocations(period, r)).await
    }
    /// Record a contribution.
    pub async fn record_contribution(
        &self,
        member: MemberId,
        period: Period,
        amount: Option<Amount>,
    ) -> Result<ContributionRecorded, CaisseError> {
        self.call(|r| Command::Contribution(member, period, amount, r))
            .await
    }
    /// Record a subsidy.
    pub async fn record_subsidy(
        &self,
        source: SubsidySource,
        amount: Amount,
        period: Period,
        key: String,
    ) -> Result<SubsidyRecorded, CaisseError> {
        self.call(|r| Command::Subsidy(source, amount, period, key, r))
            .await
    }
    /// Register an outlet.
    pub async fn register_outlet(
        &self,
        name: String,
        categories: Vec<(Category, u8)>,
    ) -> Result<OutletRegistered, CaisseError> {
        self.call(|r| Command::RegisterOutlet(name, categories, r))
            .await
    }
    /// Create an API token.
    pub async fn new_token(&self, role: Role) -> Result<String, CaisseError> {
        self.call(|r| Command::NewToken(role, r)).await
    }
    /// Submit a purchase.
    pub async fn purchase(&self, input: PurchaseInput) -> Result<Receipt, CaisseError> {
        self.call(|r| Command::Purchase(Box::new(input), r)).await
    }
    /// Pay an outlet.
    pub async fn payout(
        &self,
        outlet: OutletId,
        period: Period,
    ) -> Result<PayoutDone, CaisseError> {
        self.call(|r| Command::Payout(outlet, period, r)).await
    }
    /// Audit the ledger.
    pub async fn check(&self) -> Result<CheckReport, CaisseError> {
        self.call(Command::Check).await
    }

    /// Run `f` on the caisse in the writer, in order with every other
    /// command; its writes are committed (durably) before the answer.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Caisse, u64) -> Result<T, CaisseError> + Send + 'static,
    ) -> Result<T, CaisseError> {
        self.call(|r| {
            Command::With(Box::new(move |c: &mut Caisse, now: u64| {
                answer(r, f(c, now))
            }))
        })
        .await
    }
}
