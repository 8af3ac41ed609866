//! The single writer: one thread owns the [`Caisse`] and decides every
//! command, with group commit, in lanes.
//!
//! Requests arrive on a bounded channel from any task (the HTTP API, the
//! console, the federation) with a oneshot for the answer. The writer
//! sorts what is waiting into lanes: tills first (purchases, cross-caisse
//! purchases, member sign-in), then admin commands, then one step of a
//! background job (an allocation run or a ledger audit, in chunks sized to
//! take about [`JOB_STEP_TARGET`]). Each command is decided all or nothing
//! by [`Caisse::execute`]; the group's writes are applied in one atomic
//! batch and synced to disk, and only then answered. After a commit that
//! changed the small state (policy, conventions, outlets, members), a new
//! [`Snapshot`] is published for readers, who never wait for the writer.
//!
//! A storage failure stops the writer: every waiting caller gets an error,
//! and [`CaisseHandle::failed`] resolves with the reason, so the node stops
//! rather than run out of step with its disk.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use caisse_core::caisse::{ALLOCATION_CHUNK, AllocationJob};
use caisse_core::command::{Command, Reply};
use caisse_core::view::{Snapshot, View};
use caisse_protocol::{Amount, Category, Day, MemberId, OutletId, Period};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::caisse::{
    AllocationRun, Caisse, CaisseError, ContributionRecorded, EnrollInput, Enrolled,
    OutletRegistered, PayoutDone, PurchaseInput, Receipt, StatusChange, SubsidyRecorded,
};
use crate::ledger::{CheckReport, SubsidySource};
use crate::members::{MemberRecord, Role};
use crate::store::{Store, keys};

/// Most till commands decided per commit.
pub const MAX_GROUP: usize = 2048;
/// Most admin commands decided per commit (so tills behind them wait little).
pub const ADMIN_PER_GROUP: usize = 64;
/// Requests that may wait for the writer before callers are slowed down.
pub const QUEUE: usize = 8192;
/// How long one step of a background job should take.
pub const JOB_STEP_TARGET: Duration = Duration::from_millis(5);

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
            && let Err(e) = crate::durable::save(f, secs.to_string().as_bytes())
        {
            tracing::warn!(error = %e, "cannot save the test clock");
        }
    }
}

/// What the writer is asked.
enum Request {
    /// Decide a command.
    Execute(Box<Command>, oneshot::Sender<Result<Reply, CaisseError>>),
    /// Run a period's allocation as a background job; answered when done.
    Allocate(Period, oneshot::Sender<Result<AllocationRun, CaisseError>>),
    /// Audit the ledger: replayed off the writer up to the head (from the
    /// last clean audit's checkpoint, unless `full`), then what moved
    /// meanwhile settled between two commits.
    Check {
        full: bool,
        reply: oneshot::Sender<Result<CheckReport, CaisseError>>,
    },
    /// The off-writer part of an audit is done.
    CheckRead {
        id: u64,
        result: Result<Box<CheckRead>, crate::store::StoreError>,
        reply: oneshot::Sender<Result<CheckReport, CaisseError>>,
    },
    /// Write an online, consistent backup of the store to a new file.
    Backup(
        std::path::PathBuf,
        oneshot::Sender<Result<crate::backup::BackupDone, CaisseError>>,
    ),
    /// Decide what is queued, then stop (running jobs are abandoned).
    Stop,
}

/// What the off-writer part of an audit found, and the checkpoint to keep
/// if the settled audit is clean.
type CheckRead = (
    CheckReport,
    crate::ledger::Suspects,
    crate::ledger::AuditCheckpoint,
);

/// A backup the writer is copying, step by step between commits.
struct RunningBackup {
    id: u64,
    file: crate::backup::BackupWriter,
    reply: oneshot::Sender<Result<crate::backup::BackupDone, CaisseError>>,
}

/// A background job's visible state.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct JobStatus {
    /// Job number (since the node started).
    pub id: u64,
    /// What it does, e.g. `allocation 2026-05`.
    pub what: String,
    /// Items done so far.
    pub done: u64,
    /// Items in all.
    pub total: u64,
    /// Whether it finished.
    pub finished: bool,
    /// Why it stopped, if it failed.
    pub error: Option<String>,
}

/// What readers share with the writer.
struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    jobs: Mutex<Vec<JobStatus>>,
    queued: AtomicU64,
    /// Members and journal entries as of the last commit.
    members: AtomicU64,
    entries: AtomicU64,
    /// The caisse's published-statements counter as of the last commit.
    published: Arc<AtomicU64>,
    /// Its sales-totals counter as of the last commit.
    sales: Arc<AtomicU64>,
    /// Commits that wrote a token key (issued or revoked): a role read
    /// from the store under an older count may be stale.
    tokens: AtomicU64,
}

impl Shared {
    /// Change job `id`'s visible state.
    fn set_job(&self, id: u64, f: impl FnOnce(&mut JobStatus)) {
        if let Ok(mut jobs) = self.jobs.lock()
            && let Some(j) = jobs.iter_mut().find(|j| j.id == id)
        {
            f(j);
        }
    }
}

/// A cloneable handle to the writer.
#[derive(Clone)]
pub struct CaisseHandle {
    tx: mpsc::Sender<Request>,
    clock: Arc<Clock>,
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    failed: watch::Receiver<Option<String>>,
}

/// Start the writer thread over `caisse`. The thread ends when every
/// handle is dropped or storage fails; join the returned handle to wait.
/// Every audit reads the whole journal (no checkpoint is kept: see
/// [`spawn_in`]).
pub fn spawn(caisse: Caisse, clock: Arc<Clock>) -> (CaisseHandle, std::thread::JoinHandle<()>) {
    spawn_in(caisse, clock, None)
}

/// [`spawn`], keeping the last clean audit's checkpoint in the file
/// `audit` (see [`crate::audit`]) for the next audit to start from.
pub fn spawn_in(
    caisse: Caisse,
    clock: Arc<Clock>,
    audit: Option<std::path::PathBuf>,
) -> (CaisseHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (failed_tx, failed) = watch::channel(None);
    let shared = Arc::new(Shared {
        snapshot: RwLock::new(Arc::new(caisse.snapshot())),
        jobs: Mutex::new(Vec::new()),
        queued: AtomicU64::new(0),
        members: AtomicU64::new(caisse.member_count() as u64),
        entries: AtomicU64::new(caisse.head().next_seq),
        published: Arc::new(AtomicU64::new(
            caisse.published_version().load(Ordering::Acquire),
        )),
        sales: Arc::new(AtomicU64::new(
            caisse.sales_version().load(Ordering::Acquire),
        )),
        tokens: AtomicU64::new(0),
    });
    let store = caisse.store().clone();
    let thread_clock = clock.clone();
    let thread_shared = shared.clone();
    let back = tx.downgrade();
    let join = std::thread::Builder::new()
        .name(format!("writer-{}", caisse.id().short()))
        .spawn(move || {
            let mut w = Writer {
                caisse,
                clock: thread_clock,
                shared: thread_shared,
                tills: VecDeque::new(),
                admin: VecDeque::new(),
                jobs: VecDeque::new(),
                next_job: 1,
                step: 500,
                published: 0,
                stopping: false,
                back,
                backup: None,
                audit,
            };
            if let Err(reason) = w.run(rx) {
                tracing::error!(target: "caisse::events::storage", error = %reason, "the writer stopped: storage failed");
                let _ = failed_tx.send(Some(reason));
            } else {
                tracing::info!("writer stopped");
            }
        })
        .unwrap_or_else(|e| panic!("cannot start the writer thread: {e}"));
    (
        CaisseHandle {
            tx,
            clock,
            store,
            shared,
            failed,
        },
        join,
    )
}

/// After a clean settled audit: its checkpoint saved off the writer (at a
/// million members, about 21 MB) for the next audit to start from, then
/// `report` answered, so that an audit asked after this one's answer
/// starts there. (An audit with findings leaves the last checkpoint in
/// place: the next one reads them again.)
fn keep_checkpoint(
    reached: crate::ledger::AuditCheckpoint,
    file: std::path::PathBuf,
    report: CheckReport,
    reply: oneshot::Sender<Result<CheckReport, CaisseError>>,
) {
    let upto = reached.upto;
    let answer = Arc::new(Mutex::new(Some((report, reply))));
    let answer_here = answer.clone();
    let saved = std::thread::Builder::new()
        .name("audit-checkpoint".into())
        .spawn(move || {
            lower_priority();
            match crate::audit::save(&file, &reached) {
                Ok(()) => {
                    tracing::info!(target: "caisse::events::audit", upto, "audit checkpoint saved: the next audit starts there");
                }
                Err(e) => {
                    tracing::warn!(target: "caisse::events::audit", file = %file.display(), error = %e, "cannot save the audit checkpoint: the next audit starts from the last one");
                }
            }
            answer_with(&answer);
        });
    if let Err(e) = saved {
        tracing::warn!(target: "caisse::events::audit", error = %e, "no thread to save the audit checkpoint");
        answer_with(&answer_here);
    }
}

/// An audit's report and where to send it.
type AuditAnswer = (
    CheckReport,
    oneshot::Sender<Result<CheckReport, CaisseError>>,
);

/// Send the audit's answer held in `answer`, once.
fn answer_with(answer: &Mutex<Option<AuditAnswer>>) {
    let taken = answer.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((report, reply)) = taken {
        let _ = reply.send(Ok(report));
    }
}

/// Lower the calling thread's scheduling priority (nice 10), for good: a
/// long read off the writer (an audit, a report, an export) runs on a
/// thread of its own, so that on a machine of two cores the writer and the
/// HTTP runtime come first. The tills' answers wait on them, not on the
/// report: at a million members a report and export beside the tills gave
/// p99 55 ms at equal priority.
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid, getpriority and setpriority on the calling thread only.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, now.saturating_add(10).min(19));
    }
}

/// A job in the writer's background lane.
enum Job {
    Allocation {
        id: u64,
        job: AllocationJob,
        reply: oneshot::Sender<Result<AllocationRun, CaisseError>>,
    },
    Recheck {
        id: u64,
        report: CheckReport,
        suspects: crate::ledger::Suspects,
        /// The checkpoint to keep if the settled audit is clean.
        reached: crate::ledger::AuditCheckpoint,
        reply: oneshot::Sender<Result<CheckReport, CaisseError>>,
    },
}

/// An answer that waits for the commit making it durable.
type Deliver = Box<dyn FnOnce(Option<&str>) + Send>;

fn deliver<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, CaisseError>>,
    result: Result<T, CaisseError>,
) -> Deliver {
    Box::new(move |failure: Option<&str>| {
        let result = match failure {
            Some(msg) => Err(CaisseError::Storage(crate::store::StoreError::Engine(
                msg.to_owned(),
            ))),
            None => result,
        };
        let _ = reply.send(result);
    })
}

struct Writer {
    caisse: Caisse,
    clock: Arc<Clock>,
    shared: Arc<Shared>,
    tills: VecDeque<(Command, oneshot::Sender<Result<Reply, CaisseError>>)>,
    admin: VecDeque<(Command, oneshot::Sender<Result<Reply, CaisseError>>)>,
    jobs: VecDeque<Job>,
    next_job: u64,
    /// Members per allocation step, adapted to take about JOB_STEP_TARGET.
    step: usize,
    published: u64,
    stopping: bool,
    /// The writer's own inbox, for its helper threads (weak: it must not
    /// keep the writer alive).
    back: mpsc::WeakSender<Request>,
    /// The backup being copied, if any (one at a time).
    backup: Option<RunningBackup>,
    /// Where the last clean audit's checkpoint is kept, if anywhere.
    audit: Option<std::path::PathBuf>,
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Request>) -> Result<(), String> {
        let span = tracing::info_span!("writer", caisse = %self.caisse.id().short());
        let _enter = span.enter();
        let mut open = true;
        loop {
            if self.stopping && self.tills.is_empty() && self.admin.is_empty() {
                for job in self.jobs.drain(..) {
                    match job {
                        Job::Allocation { reply, .. } => {
                            let _ = reply.send(Err(CaisseError::Unavailable));
                        }
                        Job::Recheck { reply, .. } => {
                            let _ = reply.send(Err(CaisseError::Unavailable));
                        }
                    }
                }
                if let Some(b) = self.backup.take() {
                    b.file.abandon();
                    let _ = b.reply.send(Err(CaisseError::Unavailable));
                }
                return Ok(());
            }
            let idle = self.tills.is_empty()
                && self.admin.is_empty()
                && self.jobs.is_empty()
                && self.backup.is_none();
            if idle {
                if !open {
                    return Ok(());
                }
                match rx.blocking_recv() {
                    Some(r) => self.sort(r),
                    None => return Ok(()),
                }
            }
            while self.tills.len() + self.admin.len() < QUEUE {
                match rx.try_recv() {
                    Ok(r) => self.sort(r),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.shared.queued.store(
                (self.tills.len() + self.admin.len()) as u64,
                Ordering::Relaxed,
            );
            self.group()?;
        }
    }

    fn sort(&mut self, r: Request) {
        match r {
            Request::Execute(c, reply) if c.is_till() => self.tills.push_back((*c, reply)),
            Request::Execute(c, reply) => self.admin.push_back((*c, reply)),
            Request::Allocate(period, reply) => {
                let id = self.new_job(format!("allocation {period}"), 0);
                let job = self.caisse.allocation_job(period);
                self.set_job(id, |s| s.total = job.progress().1 as u64);
                self.jobs.push_back(Job::Allocation { id, job, reply });
            }
            Request::Check { full, reply } => {
                // Everything decided so far is committed: the head is durable.
                let upto = self.caisse.head().next_seq;
                let what = if full {
                    "ledger check (full)"
                } else {
                    "ledger check"
                };
                let id = self.new_job(what.into(), upto);
                let store = self.caisse.store().clone();
                let back = self.back.clone();
                let file = self.audit.clone().filter(|_| !full);
                let now = self.clock.now();
                let spawned = std::thread::Builder::new()
                    .name("ledger-check".into())
                    .spawn(move || {
                        lower_priority();
                        let from = file.and_then(|f| crate::audit::load(&f, &*store));
                        let result = crate::ledger::check_from(&*store, Some(upto), from.as_ref())
                            .map(|(report, suspects, mut reached)| {
                                reached.made_at = now;
                                reached.full_at = from.as_ref().map_or(now, |cp| cp.full_at);
                                Box::new((report, suspects, reached))
                            });
                        if let Some(tx) = back.upgrade() {
                            let _ = tx.blocking_send(Request::CheckRead { id, result, reply });
                        }
                    });
                if let Err(e) = spawned {
                    self.set_job(id, |s| {
                        s.finished = true;
                        s.error = Some(e.to_string());
                    });
                }
            }
            Request::CheckRead { id, result, reply } => match result.map(|read| *read) {
                Ok((report, suspects, reached)) => {
                    // Entries verified, by this audit or the one whose
                    // checkpoint it started from.
                    self.set_job(id, |s| s.done = report.from.saturating_add(report.entries));
                    self.jobs.push_back(Job::Recheck {
                        id,
                        report,
                        suspects,
                        reached,
                        reply,
                    });
                }
                Err(e) => {
                    self.set_job(id, |s| {
                        s.finished = true;
                        s.error = Some(e.to_string());
                    });
                    let _ = reply.send(Err(e.into()));
                }
            },
            Request::Backup(path, reply) => {
                if self.backup.is_some() {
                    let _ = reply.send(Err(CaisseError::Conflict(
                        "a backup is already running: wait for it (`caisse job list`)".into(),
                    )));
                    return;
                }
                match crate::backup::BackupWriter::create(&path) {
                    Ok(file) => {
                        let id = self.new_job(format!("backup to {}", path.display()), 0);
                        self.backup = Some(RunningBackup { id, file, reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(CaisseError::Invalid(format!(
                            "cannot create {}: {e} (it must not exist yet)",
                            path.display()
                        ))));
                    }
                }
            }
            Request::Stop => self.stopping = true,
        }
    }

    /// Copy the backup's next keys (before this group's commit).
    fn backup_step(&mut self) {
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        let store = self.caisse.store().clone();
        if let Err(e) = b.file.step(&*store) {
            self.backup_failed(&e);
        } else if let Some(b) = &self.backup {
            let records = b.file.records();
            self.set_job(b.id, |s| s.done = records);
        }
    }

    /// After a commit: the backup logs what it touched behind the cursor,
    /// and ends once every key was copied.
    fn backup_after_commit(&mut self, ops: &[crate::store::Op]) {
        let Some(b) = self.backup.as_mut() else {
            return;
        };
        if let Err(e) = b.file.log(ops) {
            self.backup_failed(&e);
            return;
        }
        if self.backup.as_ref().is_some_and(|b| b.file.copied_all)
            && let Some(b) = self.backup.take()
        {
            let entries = self.caisse.head().next_seq;
            let (id, reply, shared) = (b.id, b.reply, self.shared.clone());
            // Answered once the file is on disk, by the backup's own
            // thread: the writer goes on.
            b.file.finish(entries, move |outcome| match outcome {
                Ok(done) => {
                    tracing::info!(path = %done.path.display(), records = done.records, entries, "backup written");
                    shared.set_job(id, |s| {
                        s.done = done.records;
                        s.total = done.records;
                        s.finished = true;
                    });
                    let _ = reply.send(Ok(done));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "backup abandoned");
                    shared.set_job(id, |s| {
                        s.finished = true;
                        s.error = Some(e.to_string());
                    });
                    let _ = reply.send(Err(CaisseError::Invalid(format!(
                        "the backup could not be written: {e}; nothing else was affected"
                    ))));
                }
            });
        }
    }

    fn backup_failed(&mut self, e: &std::io::Error) {
        if let Some(b) = self.backup.take() {
            tracing::warn!(error = %e, "backup abandoned");
            self.set_job(b.id, |s| {
                s.finished = true;
                s.error = Some(e.to_string());
            });
            b.file.abandon();
            let _ = b.reply.send(Err(CaisseError::Invalid(format!(
                "the backup could not be written: {e}; nothing else was affected"
            ))));
        }
    }

    fn new_job(&mut self, what: String, total: u64) -> u64 {
        let id = self.next_job;
        self.next_job = self.next_job.saturating_add(1);
        if let Ok(mut jobs) = self.shared.jobs.lock() {
            // Keep the last finished jobs for `job list`, and every running one.
            while jobs.len() >= 32 {
                match jobs.iter().position(|j| j.finished) {
                    Some(i) => {
                        jobs.remove(i);
                    }
                    None => break,
                }
            }
            jobs.push(JobStatus {
                id,
                what,
                done: 0,
                total,
                finished: false,
                error: None,
            });
        }
        id
    }

    fn set_job(&self, id: u64, f: impl FnOnce(&mut JobStatus)) {
        self.shared.set_job(id, f);
    }

    /// One group: till commands, some admin commands, one job step, one commit.
    fn group(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let now = self.clock.now();
        let mut answers: Vec<Deliver> = Vec::new();
        let tills = self.tills.len().min(MAX_GROUP);
        for (cmd, reply) in self.tills.drain(..tills) {
            answers.push(deliver(reply, decide(&mut self.caisse, cmd, now)));
        }
        let admin = self.admin.len().min(ADMIN_PER_GROUP);
        for (cmd, reply) in self.admin.drain(..admin) {
            answers.push(deliver(reply, decide(&mut self.caisse, cmd, now)));
        }
        let step_started = Instant::now();
        let mut stepped = false;
        if let Some(job) = self.jobs.pop_front() {
            // (The scan of households is not what a step's size is set by.)
            stepped = matches!(&job, Job::Allocation { job, .. } if !job.scanning());
            if let Some(job) = self.job_step(job, now, &mut answers)? {
                self.jobs.push_front(job);
            }
        }
        self.backup_step();
        let commit_started = Instant::now();
        let failure = self.commit().err();
        let commit_took = commit_started.elapsed();
        crate::metrics::commit(tills + admin, commit_took.as_secs_f64());
        if stepped {
            // The step's cost is its decisions and the commit of its writes:
            // what the tills of the next group wait for.
            self.adapt_step(step_started.elapsed());
        }
        for a in answers {
            a(failure.as_deref());
        }
        let took = started.elapsed();
        if took > Duration::from_millis(500) {
            tracing::warn!(
                commands = tills + admin,
                took_ms = took.as_millis() as u64,
                "slow commit"
            );
        }
        match failure {
            Some(f) => Err(f),
            None => {
                self.publish();
                let all = started.elapsed();
                if all > Duration::from_millis(30) {
                    tracing::debug!(target: "caisse::writer", commands = tills + admin, stepped, took_ms = all.as_millis() as u64, commit_ms = commit_took.as_millis() as u64, "long group");
                }
                Ok(())
            }
        }
    }

    fn commit(&mut self) -> Result<(), String> {
        let Some(ops) = self.caisse.take_batch() else {
            return Err("internal error: a savepoint was left open".into());
        };
        if !ops.is_empty() {
            let store = self.caisse.store().clone();
            store.apply_durably(&ops).map_err(|e| e.to_string())?;
            // Before any answer of this group: a revocation acknowledged
            // is one every later request sees.
            if ops.iter().any(|op| op.key().starts_with(keys::TOKEN)) {
                self.shared.tokens.fetch_add(1, Ordering::Release);
            }
        }
        self.backup_after_commit(&ops);
        Ok(())
    }

    fn publish(&mut self) {
        let statements = self.caisse.published_version().load(Ordering::Acquire);
        let sales = self.caisse.sales_version().load(Ordering::Acquire);
        let v = self.caisse.state_version();
        if v != self.published {
            self.published = v;
            let snap = Arc::new(self.caisse.snapshot());
            if let Ok(mut s) = self.shared.snapshot.write() {
                *s = snap;
            }
        }
        self.shared
            .members
            .store(self.caisse.member_count() as u64, Ordering::Relaxed);
        self.shared
            .entries
            .store(self.caisse.head().next_seq, Ordering::Relaxed);
        // Only now, with the writes durable and the snapshot out, may the
        // federation read what changed.
        self.shared.published.store(statements, Ordering::Release);
        self.shared.sales.store(sales, Ordering::Release);
    }

    /// Run one step of `job`; the job back if it is not finished.
    fn job_step(
        &mut self,
        job: Job,
        now: u64,
        answers: &mut Vec<Deliver>,
    ) -> Result<Option<Job>, String> {
        match job {
            Job::Allocation { id, mut job, reply } => {
                let result = self.caisse.allocation_step(&mut job, self.step, now);
                let (done, total) = job.progress();
                match result {
                    Ok(false) => {
                        self.set_job(id, |s| s.done = done as u64);
                        Ok(Some(Job::Allocation { id, job, reply }))
                    }
                    Ok(true) => {
                        let run = job.run;
                        tracing::info!(target: "caisse::events::allocation", period = ?run.period, issued = run.issued, already = run.already_issued, total = %run.total, "allocation run");
                        self.set_job(id, |s| {
                            s.done = total as u64;
                            s.finished = true;
                        });
                        answers.push(deliver(reply, Ok(run)));
                        Ok(None)
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        self.set_job(id, |s| {
                            s.finished = true;
                            s.error = Some(msg);
                        });
                        answers.push(deliver(reply, Err(e)));
                        Ok(None)
                    }
                }
            }
            Job::Recheck {
                id,
                mut report,
                suspects,
                reached,
                reply,
            } => {
                // Settle what moved during the audit: commit what is pending
                // first, so the store is exactly the caisse's state.
                let t = Instant::now();
                self.commit()?;
                let committed = t.elapsed();
                let result = crate::ledger::recheck(&**self.caisse.store(), &suspects)
                    .map(|(findings, tail)| {
                        report.findings.extend(findings);
                        report.entries = report.entries.saturating_add(tail);
                        report
                    })
                    .map_err(CaisseError::from);
                tracing::debug!(target: "caisse::writer", balances = suspects.balances.len(), peers = suspects.peers.as_ref().map_or(0, Vec::len), commit_ms = committed.as_millis() as u64, recheck_ms = (t.elapsed() - committed).as_millis() as u64, "audit settled");
                self.set_job(id, |s| {
                    s.finished = true;
                    s.error = result.as_ref().err().map(ToString::to_string);
                });
                match (result, &self.audit) {
                    (Ok(report), Some(file)) if report.ok() => {
                        keep_checkpoint(reached, file.clone(), report, reply);
                    }
                    (result, _) => answers.push(deliver(reply, result)),
                }
                Ok(None)
            }
        }
    }

    /// Aim each allocation step at JOB_STEP_TARGET.
    fn adapt_step(&mut self, took: Duration) {
        let target = JOB_STEP_TARGET.as_micros().max(1);
        let took = took.as_micros().max(1);
        let scaled = (self.step as u128).saturating_mul(target) / took;
        let next = scaled.clamp(self.step as u128 / 2, self.step as u128 * 2);
        self.step = (next as usize).clamp(50, ALLOCATION_CHUNK);
    }
}

fn decide(caisse: &mut Caisse, cmd: Command, now: u64) -> Result<Reply, CaisseError> {
    let name = cmd.name();
    let purchase = match &cmd {
        Command::Purchase(p) => Some(p.id),
        _ => None,
    };
    let result = caisse.execute(cmd, now);
    match (&result, purchase) {
        (Ok(Reply::Receipt(rc)), Some(id)) => {
            tracing::debug!(target: "caisse::events::purchase", purchase = %id, allocation_cents = rc.allocation_part.cents(), replayed = rc.replayed, "accepted");
        }
        (Err(e), Some(id)) => {
            tracing::debug!(target: "caisse::events::purchase", purchase = %id, code = e.code(), "declined");
        }
        (Err(e), None) => {
            tracing::debug!(command = name, code = e.code(), "command refused");
        }
        _ => {}
    }
    result
}

/// The reply of the expected kind (`Result<Reply, CaisseError>` in,
/// `Result<T, CaisseError>` out), or an internal error naming the kind got.
macro_rules! reply {
    ($reply:expr, $variant:path) => {
        match $reply {
            Ok($variant(x)) => Ok(x),
            Ok(other) => Err($crate::caisse::CaisseError::Invalid(format!(
                "internal error: unexpected {} reply",
                other.kind()
            ))),
            Err(e) => Err(e),
        }
    };
}

pub(crate) use reply;

impl CaisseHandle {
    /// The node's clock.
    pub fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CaisseError>>) -> Request,
    ) -> Result<T, CaisseError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| CaisseError::Unavailable)?;
        rx.await.map_err(|_| CaisseError::Unavailable)?
    }

    /// Decide a command in the writer; answered once its writes are durable.
    pub async fn execute(&self, command: Command) -> Result<Reply, CaisseError> {
        self.ask(|r| Request::Execute(Box::new(command), r)).await
    }

    /// A read-only view: the committed store and the latest snapshot.
    pub fn view(&self) -> View {
        let snapshot = self
            .shared
            .snapshot
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        View {
            store: self.store.clone(),
            snapshot,
        }
    }

    /// Run a read on a blocking thread over a [`View`], with the time now;
    /// it never waits for the writer.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&View, u64) -> Result<T, CaisseError> + Send + 'static,
    ) -> Result<T, CaisseError> {
        let view = self.view();
        let now = self.clock.now();
        tokio::task::spawn_blocking(move || f(&view, now))
            .await
            .map_err(|_| CaisseError::Unavailable)?
    }

    /// Background jobs, running and recently finished.
    pub fn jobs(&self) -> Vec<JobStatus> {
        self.shared
            .jobs
            .lock()
            .map(|j| j.clone())
            .unwrap_or_default()
    }

    /// A counter that changes, after the commit, whenever something this
    /// caisse publishes to the federation changed.
    pub fn published_version(&self) -> Arc<AtomicU64> {
        self.shared.published.clone()
    }

    /// Changes to the sales totals alone, as of the last commit (published
    /// lazily by the federation task).
    pub fn sales_version(&self) -> Arc<AtomicU64> {
        self.shared.sales.clone()
    }

    /// Members enrolled and journal entries, as of the last commit.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.members.load(Ordering::Relaxed),
            self.shared.entries.load(Ordering::Relaxed),
        )
    }

    /// How many commits so far wrote a token (issued or revoked): a role
    /// read from the store is current while this count has not moved.
    pub fn tokens_generation(&self) -> u64 {
        self.shared.tokens.load(Ordering::Acquire)
    }

    /// Requests waiting for the writer.
    pub fn queued(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Ask the writer to decide what is queued and stop, even while other
    /// handles remain.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Request::Stop).await;
    }

    /// Resolves with the reason once the writer has stopped on a storage
    /// failure; never resolves while it runs.
    pub async fn failed(&self) -> String {
        let mut rx = self.failed.clone();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                // The writer ended without failing (shut down): wait forever.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Enrol a member.
    pub async fn enroll(&self, input: EnrollInput) -> Result<Enrolled, CaisseError> {
        reply!(self.execute(Command::Enroll(input)).await, Reply::Enrolled)
    }
    /// Suspend, reinstate or record the departure of a member.
    pub async fn change_status(
        &self,
        member: MemberId,
        change: StatusChange,
    ) -> Result<MemberRecord, CaisseError> {
        reply!(
            self.execute(Command::ChangeStatus { member, change }).await,
            Reply::Member
        )
        .map(|b| *b)
    }
    /// Set a member's PIN.
    pub async fn set_pin(
        &self,
        member: MemberId,
        pin: String,
    ) -> Result<caisse_protocol::CardId, CaisseError> {
        reply!(
            self.execute(Command::SetPin { member, pin }).await,
            Reply::Card
        )
    }
    /// Issue a period's allocations (a background job, in chunks between
    /// the tills' purchases); answered when the whole run is done.
    pub async fn issue_allocations(&self, period: Period) -> Result<AllocationRun, CaisseError> {
        self.ask(|r| Request::Allocate(period, r)).await
    }
    /// Record a contribution.
    pub async fn record_contribution(
        &self,
        member: MemberId,
        period: Period,
        amount: Option<Amount>,
    ) -> Result<ContributionRecorded, CaisseError> {
        reply!(
            self.execute(Command::Contribution {
                member,
                period,
                amount
            })
            .await,
            Reply::Contribution
        )
    }
    /// Record a subsidy.
    pub async fn record_subsidy(
        &self,
        source: SubsidySource,
        amount: Amount,
        period: Period,
        key: String,
    ) -> Result<SubsidyRecorded, CaisseError> {
        reply!(
            self.execute(Command::Subsidy {
                source,
                amount,
                period,
                key
            })
            .await,
            Reply::Subsidy
        )
    }
    /// Register an outlet.
    pub async fn register_outlet(
        &self,
        name: String,
        categories: Vec<(Category, u8)>,
    ) -> Result<OutletRegistered, CaisseError> {
        reply!(
            self.execute(Command::RegisterOutlet { name, categories })
                .await,
            Reply::Outlet
        )
    }
    /// Write an online, consistent backup of the store to `path` (a new
    /// file); answered when it is complete and durable.
    pub async fn backup(
        &self,
        path: std::path::PathBuf,
    ) -> Result<crate::backup::BackupDone, CaisseError> {
        self.ask(|reply| Request::Backup(path, reply)).await
    }
    /// Create an API token.
    pub async fn new_token(&self, role: Role) -> Result<String, CaisseError> {
        reply!(self.execute(Command::NewToken { role }).await, Reply::Token)
    }
    /// Submit a purchase.
    pub async fn purchase(&self, input: PurchaseInput) -> Result<Receipt, CaisseError> {
        reply!(self.execute(Command::Purchase(input)).await, Reply::Receipt).map(|b| *b)
    }
    /// Pay an outlet.
    pub async fn payout(
        &self,
        outlet: OutletId,
        period: Period,
    ) -> Result<PayoutDone, CaisseError> {
        reply!(
            self.execute(Command::Payout { outlet, period }).await,
            Reply::Payout
        )
    }
    /// Audit the ledger (between commits, as a background job): from the
    /// last clean audit's checkpoint, or the whole journal if `full`.
    pub async fn check(&self, full: bool) -> Result<CheckReport, CaisseError> {
        self.ask(|reply| Request::Check { full, reply }).await
    }
}
