//! `caisse-testnet sim`: whole federations in one thread, under a seed.
//!
//! Every caisse is the real core ([`Caisse`], the same code `caisse node`
//! runs in its writer) over an in-memory store; the simulator plays the
//! node's I/O shell: a clock that jumps from event to event, a network that
//! delays, loses, duplicates and reorders messages and cuts links, crashes
//! that lose whatever was decided but not yet durable, and a workload drawn
//! from the seed (enrolments, allocations, contributions, local and
//! cross-caisse purchases, mistyped PINs and PIN resets, retries with the
//! same id, one card at two hosts at once, settlement runs, payouts and
//! transfers). Invariants are checked every simulated day
//! and at quiescence; the same seed gives the same run, proved by a hash of
//! the whole trace.
//!
//! What the simulator does not model yet: the automerge documents and their
//! sync (a caisse's statements travel as [`Published`] bytes with a
//! sequence and a digest, judged by the node's rule and read with the same
//! verification as a replica). See docs/SIMULATOR.md for what it does.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;

use caisse_core::caisse::{Caisse, CaisseError, EnrollInput, PurchaseInput};
use caisse_core::command::{Command, Reply};
use caisse_core::federation_view::Published;
use caisse_core::host_sale::{HostAction, HostEvent, HostSale, HostSaleError};
use caisse_core::ledger::{Account, SubsidySource};
use caisse_core::parliament::{Choice, ProposalKind, SeatKind, SplitMix64};
use caisse_core::policy::{Policy, Recognition, RecognitionPolicy};
use caisse_core::replication::{HeadsVerdict, Mark, judge_heads};
use caisse_core::store::{MemStore, Store, keys};
use caisse_core::view::Reads;
use caisse_protocol::messages::{PurchaseLine, ScopeItem, Subject};
use caisse_protocol::{
    Amount, CaisseId, CardId, Category, Day, Envelope, FederationId, MemberId, OutletId, Period,
    PurchaseId, SecretKey,
};
use sha2::{Digest, Sha256};

/// Milliseconds of simulated time.
type Ms = u64;

const DAY: Ms = 86_400_000;
/// The simulated federation starts on 2027-01-01.
const EPOCH_SECS: u64 = 1_798_761_600;
/// How long a host waits for the home caisse before the offline floor.
const HOME_DEADLINE: Ms = caisse_core::host_sale::HOME_DEADLINE_MS;
/// Percent of purchases with a PIN where the member mistypes it.
const WRONG_PIN_PCT: u64 = 8;

/// `right` with its first digit changed.
fn wrong(right: &str) -> String {
    let mut b = right.as_bytes().to_vec();
    if let Some(d) = b.first_mut() {
        *d = b'0' + (*d - b'0' + 1) % 10;
    }
    String::from_utf8(b).unwrap_or_default()
}

/// Link behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkProfile {
    /// 0.2-2 ms.
    Lan,
    /// 10-150 ms with jitter.
    Wan,
}

/// What can go wrong, by profile name.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Link latency.
    pub link: LinkProfile,
    /// Messages lost, per thousand.
    pub loss_pm: u64,
    /// Messages delivered twice, per thousand.
    pub dup_pm: u64,
    /// Chance per caisse and day of a crash, per thousand.
    pub crash_pm: u64,
    /// Chance per day that a caisse is cut off for a few hours, per thousand.
    pub partition_pm: u64,
    /// Caisse 0 is Byzantine: this often (per thousand answers) it signs a
    /// receipt for a request that was never made (another request id, a
    /// larger amount) instead of its real answer.
    pub forged_receipts_pm: u64,
    /// Caisse 0 also publishes this share (per thousand) of its settlement
    /// statements claiming one euro more than it holds, validly signed.
    pub inflated_statements_pm: u64,
    /// Chance per decision (a local sale, a home's answer to a forwarded
    /// sale), per thousand, that the node dies right after the decision
    /// was made durable and before its answer left.
    pub crash_after_sync_pm: u64,
    /// A slow disk: every commit whose answer goes over the network takes
    /// this long (simulated ms, least and most), queued behind the node's
    /// earlier commits; `(0, 0)`: instant.
    pub disk_ms: (u64, u64),
    /// Chance per commit, per thousand, that the disk stalls for longer
    /// than a host waits for a home's answer.
    pub disk_stall_pm: u64,
    /// Caisse 0 also puts, this often (per thousand publications), other
    /// caisses' signed settlement entries into its own document, as if
    /// they were its own.
    pub replayed_entries_pm: u64,
    /// Chance per workload step, per thousand, that a caisse's parliament
    /// votes to revoke its outlet's accreditation (or, once revoked, to
    /// accredit it again).
    pub revocations_pm: u64,
    /// Caisse 0 signs, this often (per thousand publications), two
    /// versions of its document under one sequence: the one it keeps to
    /// half of the other caisses, one whose statements claim two euros
    /// more (or that recognises one caisse fewer) to the others. Honest
    /// caisses then pass on the versions they take (as gossip forwards
    /// and catalogs do), so that one sees both.
    pub equivocation_pm: u64,
    /// Chance per workload step, per thousand, that a caisse's parliament
    /// votes to stop recognising the other caisses' accreditations (policy
    /// `none`), or, once it has, to recognise the caisses it lists again.
    pub recognition_pm: u64,
    /// Chance per workload step, per thousand, that a member signs in at
    /// the member page (the PIN mistyped a third of the time).
    pub signin_pm: u64,
}

impl Faults {
    /// `none`, `lan`, `wan`, `lossy` (WAN, 5% loss, 2% duplicates),
    /// `chaos` (lossy, plus crashes and partitions) or `disk` (chaos, plus
    /// a slow disk that sometimes stalls past the home deadline, crashes
    /// after the sync and before the answer, the Byzantine caisse passing
    /// other caisses' signed entries off as its own and equivocating,
    /// recognition changes and member sign-ins).
    pub fn profile(name: &str) -> Option<Faults> {
        let none = Faults {
            link: LinkProfile::Lan,
            loss_pm: 0,
            dup_pm: 0,
            crash_pm: 0,
            partition_pm: 0,
            forged_receipts_pm: 0,
            inflated_statements_pm: 0,
            crash_after_sync_pm: 0,
            disk_ms: (0, 0),
            disk_stall_pm: 0,
            replayed_entries_pm: 0,
            revocations_pm: 0,
            equivocation_pm: 0,
            recognition_pm: 0,
            signin_pm: 0,
        };
        let chaos = Faults {
            link: LinkProfile::Wan,
            loss_pm: 50,
            dup_pm: 20,
            crash_pm: 60,
            partition_pm: 60,
            forged_receipts_pm: 100,
            inflated_statements_pm: 300,
            ..none
        };
        Some(match name {
            "none" | "lan" => none,
            "wan" => Faults {
                link: LinkProfile::Wan,
                ..none
            },
            "lossy" => Faults {
                link: LinkProfile::Wan,
                loss_pm: 50,
                dup_pm: 20,
                ..none
            },
            "chaos" => chaos,
            "disk" => Faults {
                crash_after_sync_pm: 3,
                disk_ms: (5, 400),
                disk_stall_pm: 10,
                replayed_entries_pm: 200,
                revocations_pm: 4,
                equivocation_pm: 200,
                recognition_pm: 3,
                signin_pm: 40,
                ..chaos
            },
            _ => return None,
        })
    }
}

/// How busy the caisses are: the time between two workload actions (an
/// enrolment, a sale, a contribution, a vote…) anywhere in the federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// An action every 1 to 241 minutes (about 2 hours on average).
    Light,
    /// Every 1 to 61 minutes (about half an hour).
    Normal,
    /// Every 1 to 13 minutes (about 7 minutes).
    Busy,
}

impl Workload {
    /// `light`, `normal` or `busy`.
    pub fn by_name(name: &str) -> Option<Workload> {
        Some(match name {
            "light" => Workload::Light,
            "normal" => Workload::Normal,
            "busy" => Workload::Busy,
            _ => return None,
        })
    }

    /// The spread of the wait after the first minute, in ms.
    fn spread_ms(self) -> u64 {
        match self {
            Workload::Light => 14_400_000,
            Workload::Normal => 3_600_000,
            Workload::Busy => 720_000,
        }
    }
}

/// One simulated federation.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Caisses.
    pub caisses: usize,
    /// Members enrolled per caisse (over the first days).
    pub members: usize,
    /// Simulated days.
    pub days: u32,
    /// The seed of every choice.
    pub seed: u64,
    /// Faults.
    pub faults: Faults,
    /// How busy the caisses are.
    pub workload: Workload,
    /// For testing the shrinker only: a violation at this day's midnight
    /// when the federation has at least three caisses.
    #[doc(hidden)]
    pub canary_day: Option<u32>,
}

impl SimOptions {
    /// `caisses` caisses of `members` members for `days` days under `seed`.
    pub fn new(caisses: usize, members: usize, days: u32, seed: u64, faults: Faults) -> SimOptions {
        SimOptions {
            caisses,
            members,
            days,
            seed,
            faults,
            canary_day: None,
            workload: Workload::Normal,
        }
    }
}

/// What a run exercised and found.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// SHA-256 of the whole trace, hex.
    pub trace_hash: String,
    /// Events processed.
    pub events: u64,
    /// Messages sent, dropped, duplicated.
    pub messages: u64,
    /// Messages lost to loss, partitions or crashed receivers.
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Crashes.
    pub crashes: u64,
    /// Of which right after a sync, before the answer left.
    pub crashes_after_sync: u64,
    /// Disk stalls longer than a host waits for a home.
    pub disk_stalls: u64,
    /// Other caisses' signed entries the Byzantine caisse put in its own
    /// document (each must be refused by every reader).
    pub replayed_entries: u64,
    /// Outlet accreditations revoked by a parliament's vote, and outlets
    /// accredited again after one.
    pub revocations: (u64, u64),
    /// Sequences under which the Byzantine caisse signed two versions, and
    /// times an honest caisse was offered the second version of one.
    pub equivocations: (u64, u64),
    /// Parliaments that stopped recognising the other caisses, and that
    /// recognised them again.
    pub recognition_changes: (u64, u64),
    /// Member sign-ins: accepted, refused (wrong PIN or locked card).
    pub signins: (u64, u64),
    /// Partitions.
    pub partitions: u64,
    /// Purchases acknowledged (local, cross-caisse, offline).
    pub acknowledged: (u64, u64, u64),
    /// Purchases declined.
    pub declined: u64,
    /// Cross-caisse sales resolved (answered, offline, given up).
    pub sagas_resolved: u64,
    /// Retries with the same purchase id.
    pub retries: u64,
    /// Settlement statements published.
    pub statements: u64,
    /// Forged receipts refused by their hosts.
    pub forged_refused: u64,
    /// Statements the Byzantine caisse published claiming too much.
    pub inflated_statements: u64,
    /// Outlet payouts made.
    pub payouts: u64,
    /// Transfers declared paid by debtors after a month's netting.
    pub transfers_declared: u64,
    /// Sales refused for a wrong PIN or a locked card.
    pub pin_refusals: u64,
    /// PINs reset by the caisse (each unlocks a card).
    pub pin_resets: u64,
    /// Bytes sent (signed envelopes and published documents).
    pub bytes: u64,
    /// The largest published document, in bytes.
    pub largest_document: u64,
    /// Time for a caisse's change to reach every other caisse (simulated
    /// ms), one entry per change that reached all of them.
    pub convergence_ms: Vec<u64>,
    /// Time from a month's end until every settlement statement of that
    /// month has its debtor's signed answer published (simulated ms), one
    /// entry per month that completed.
    pub settlement_ms: Vec<u64>,
    /// Invariant violations (empty: the run is sound).
    pub violations: Vec<String>,
    /// The last lines of the trace, for a failing run.
    pub tail: Vec<String>,
    /// When the first violation was seen (simulated ms), if any.
    pub first_violation_ms: Option<u64>,
    /// The trace's hash so far at each midnight (first 8 bytes, hex): a
    /// shorter run with the same seed shares the longer one's prefix.
    pub midnight_hashes: Vec<String>,
}

/// A message between caisses.
#[derive(Clone, Debug)]
enum Msg {
    /// Host → home: a signed purchase request.
    Request {
        purchase: PurchaseId,
        request: Envelope,
    },
    /// Home → host: the signed receipt or decline.
    Answer {
        purchase: PurchaseId,
        answer: Envelope,
    },
    /// A caisse's published statements (its federation document), with
    /// the sequence of its signed heads and a digest of the version: older
    /// ones are ignored, two under one sequence are an equivocation. From
    /// its owner, or passed on by a caisse that holds it.
    Document {
        owner: usize,
        mark: Mark,
        doc: Arc<Published>,
    },
}

#[derive(Clone, Debug)]
enum Event {
    /// The workload acts.
    Tick,
    /// A message arrives.
    Deliver { from: usize, to: usize, msg: Msg },
    /// A message leaves once its commit is durable, unless its sender
    /// crashed meanwhile (then it never leaves).
    Leave {
        from: usize,
        incarnation: u64,
        to: usize,
        msg: Msg,
    },
    /// A host gives up waiting for the home caisse.
    Deadline { host: usize, purchase: PurchaseId },
    /// A caisse restarts after a crash.
    Restart { node: usize },
    /// A cut-off caisse is reachable again.
    Heal { node: usize },
    /// Midnight: daily checks; allocations and settlement on the 1st.
    Midnight,
    /// Hosts forward the sales they accepted offline.
    ForwardOffline,
    /// Caisses compare catalogs of signed heads and send what a peer lacks
    /// (the node does this on connection and every few seconds).
    CatchUp,
    /// Tills send again the sales they never got an answer to.
    Retry,
}

/// A cross-caisse sale waiting for its home caisse.
#[derive(Clone, Debug)]
struct Saga {
    /// The node's own state machine of the sale.
    sale: HostSale,
    /// The card's home caisse.
    home: CaisseId,
}

/// What the tills were told, to check against the ledgers.
#[derive(Clone, Debug)]
struct Ack {
    host: usize,
    home: usize,
    purchase: PurchaseId,
    offline: bool,
}

/// Allocation accepted under a host's offline floor, per card and day.
type OfflineUse = BTreeMap<(usize, CardId, Day), Amount>;

struct Node {
    id: CaisseId,
    key: [u8; 32],
    store: Arc<MemStore>,
    caisse: Option<Caisse>,
    incarnation: u64,
    outlet: OutletId,
    members: Vec<(MemberId, CardId)>,
    published_seen: u64,
    cut_until: Ms,
    /// Other caisses' documents as this caisse stored them (the node keeps
    /// them under `f/` and reloads them at start).
    documents: BTreeMap<usize, (Mark, Arc<Published>)>,
    /// Sequence of the documents this caisse published (its signed heads').
    sequence: u64,
    /// This caisse's offline floor (per card and day).
    floor: Amount,
    /// What it published last (for catch-up).
    latest: Option<(Mark, Arc<Published>)>,
    /// The Byzantine caisse: the other side of its last publication, when
    /// it equivocated, which it keeps showing the odd-numbered caisses.
    other_side: Option<(Mark, Arc<Published>)>,
    /// The right PIN of each of its cards that has one.
    pins: BTreeMap<CardId, String>,
    /// The simulator's own count of each card's wrong PINs, from every
    /// answer this caisse gave: (window start, wrong PINs in the window).
    pin_model: BTreeMap<CardId, (u64, u8)>,
    /// When this caisse's disk finishes the commits queued so far.
    disk_free_at: Ms,
    /// Its parliament's one citizen seat, once a member holds it.
    seat: Option<u32>,
    /// Whether its parliament revoked its outlet's accreditation last.
    outlet_revoked: bool,
}

/// The whole simulation.
struct Sim {
    opts: SimOptions,
    federation: FederationId,
    rng: SplitMix64,
    now: Ms,
    seq: u64,
    queue: BinaryHeap<Reverse<(Ms, u64)>>,
    events: BTreeMap<u64, Event>,
    nodes: Vec<Node>,
    sagas: BTreeMap<(usize, PurchaseId), Saga>,
    retry: VecDeque<(usize, PurchaseInput)>,
    acks: Vec<Ack>,
    /// Hashes of the answers the Byzantine caisse forged.
    forged: BTreeSet<[u8; 32]>,
    /// Settlement entries (statements, answers) already checked, by hash.
    settlement_checked: BTreeSet<[u8; 32]>,
    /// Statements the Byzantine caisse inflated, by hash.
    inflated: BTreeSet<[u8; 32]>,
    /// Statements only in the other side of the Byzantine caisse's
    /// equivocations, by content id.
    equivocated:
        BTreeMap<caisse_protocol::ContentId, caisse_protocol::messages::SettlementStatement>,
    /// Caisses pass on the documents they take (on when the Byzantine
    /// caisse equivocates: otherwise each caisse would only ever see the
    /// side sent to it).
    relay: bool,
    /// Each caisse's published changes not yet everywhere: (sequence, when).
    changes: BTreeMap<usize, VecDeque<(u64, Ms)>>,
    /// Months being settled: (period, when the settlement runs started,
    /// statements published, statements answered).
    settling: Vec<(
        Period,
        Ms,
        BTreeSet<caisse_protocol::ContentId>,
        BTreeSet<caisse_protocol::ContentId>,
    )>,
    offline_use: OfflineUse,
    next_purchase: u64,
    hasher: Sha256,
    tail: VecDeque<String>,
    report: SimReport,
    quiescent: bool,
    print_trace: bool,
}

fn key_of(seed: u64, node: usize) -> [u8; 32] {
    let mut r = SplitMix64(seed ^ 0x5EED_CA15 ^ (node as u64).wrapping_mul(0x9E37_79B9));
    let mut k = [0u8; 32];
    for c in k.chunks_mut(8) {
        c.copy_from_slice(&r.next_u64().to_le_bytes());
    }
    k
}

fn bread() -> Category {
    Category::new("bread").unwrap_or_else(|e| panic!("{e}"))
}

fn fresh() -> Category {
    Category::new("fresh-produce").unwrap_or_else(|e| panic!("{e}"))
}

impl Sim {
    fn new(opts: SimOptions) -> Sim {
        let federation = FederationId::new("sim").unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<[u8; 32]> = (0..opts.caisses).map(|i| key_of(opts.seed, i)).collect();
        let ids: Vec<CaisseId> = keys
            .iter()
            .map(|k| SecretKey::from_bytes(*k).caisse_id())
            .collect();
        let mut rng = SplitMix64(opts.seed);
        let mut nodes = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let store = Arc::new(MemStore::new());
            let policy = Policy {
                recognition: Recognition {
                    policy: RecognitionPolicy::Listed,
                    recognised: ids.iter().filter(|c| **c != ids[i]).copied().collect(),
                },
                // Some caisses accept sales offline at their own risk.
                offline_floor: Amount::from_cents(if rng.below(2) == 0 { 0 } else { 5_00 }),
                ..Policy::default()
            };
            caisse_core::caisse::write_initial_state(
                &*store,
                &SecretKey::from_bytes(*key),
                &format!("Caisse {i}"),
                &format!("Territoire {i}"),
                &policy,
                Day::from_unix(EPOCH_SECS),
            )
            .unwrap_or_else(|e| panic!("initial state: {e}"));
            nodes.push(Node {
                id: ids[i],
                key: *key,
                store,
                caisse: None,
                incarnation: 0,
                outlet: OutletId::from_bytes([0; 16]),
                members: Vec::new(),
                published_seen: 0,
                cut_until: 0,
                documents: BTreeMap::new(),
                sequence: 0,
                floor: policy.offline_floor,
                latest: None,
                other_side: None,
                pins: BTreeMap::new(),
                pin_model: BTreeMap::new(),
                disk_free_at: 0,
                seat: None,
                outlet_revoked: false,
            });
        }
        let relay = opts.faults.equivocation_pm > 0;
        let mut sim = Sim {
            opts,
            federation,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes,
            sagas: BTreeMap::new(),
            retry: VecDeque::new(),
            acks: Vec::new(),
            forged: BTreeSet::new(),
            settlement_checked: BTreeSet::new(),
            inflated: BTreeSet::new(),
            equivocated: BTreeMap::new(),
            relay,
            changes: BTreeMap::new(),
            settling: Vec::new(),
            offline_use: BTreeMap::new(),
            next_purchase: 1,
            hasher: Sha256::new(),
            tail: VecDeque::new(),
            report: SimReport::default(),
            quiescent: false,
            print_trace: std::env::var_os("CAISSE_SIM_TRACE").is_some(),
        };
        for i in 0..sim.nodes.len() {
            sim.boot(i);
            let r = sim.exec(
                i,
                Command::RegisterOutlet {
                    name: format!("Épicerie {i}"),
                    categories: vec![(bread(), 100), (fresh(), 80)],
                },
            );
            if let Ok(Reply::Outlet(o)) = r {
                sim.nodes[i].outlet = o.outlet;
            }
        }
        sim
    }

    fn trace(&mut self, line: String) {
        if self.print_trace {
            eprintln!("t={}ms {line}", self.now);
        }
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        if self.tail.len() >= 60 {
            self.tail.pop_front();
        }
        self.tail.push_back(format!("t={}ms {line}", self.now));
    }

    fn schedule(&mut self, at: Ms, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, e);
    }

    fn secs(&self) -> u64 {
        EPOCH_SECS + self.now / 1000
    }

    fn today(&self) -> Day {
        Day::from_unix(self.secs())
    }

    /// (Re)load a caisse from what is durable in its store.
    fn boot(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.incarnation += 1;
        n.disk_free_at = 0;
        let mut r = SplitMix64(self.opts.seed ^ ((i as u64) << 32) ^ (n.incarnation << 48));
        let random = Box::new(move || {
            let mut b = [0u8; 32];
            for c in b.chunks_mut(8) {
                c.copy_from_slice(&r.next_u64().to_le_bytes());
            }
            b
        });
        let store: Arc<dyn Store> = n.store.clone();
        let caisse = Caisse::load(
            store,
            SecretKey::from_bytes(n.key),
            self.federation.clone(),
            random,
        )
        .unwrap_or_else(|e| panic!("caisse {i} does not load what it made durable: {e}"));
        n.published_seen = 0;
        n.caisse = Some(caisse);
        // As the node does before serving: the stored documents to the writer.
        let peers: Vec<_> = self.nodes[i]
            .documents
            .iter()
            .map(|(j, (_, d))| d.read(&self.nodes[*j].id, &self.federation))
            .collect();
        if !peers.is_empty() {
            let _ = self.exec(i, Command::PeerDocuments { peers });
        }
    }

    /// Decide a command at caisse `i` and make its writes durable (the
    /// writer's contract: answered only once synced).
    fn exec(&mut self, i: usize, cmd: Command) -> Result<Reply, CaisseError> {
        let now = self.secs();
        let name = match &cmd {
            Command::Purchase(p) | Command::PrepareCrossPurchase(p) => {
                format!("{} {}", cmd.name(), p.id)
            }
            Command::AcceptOffline { input, .. } | Command::RecordCrossAnswer { input, .. } => {
                format!("{} {}", cmd.name(), input.id)
            }
            Command::ResolveOffline { purchase, .. } => format!("{} {purchase}", cmd.name()),
            Command::HomePurchase { request } => format!(
                "{} {}",
                cmd.name(),
                request
                    .open::<caisse_protocol::messages::PurchaseRequest>(&self.federation)
                    .map(|v| v.message.id.to_string())
                    .unwrap_or_default()
            ),
            _ => cmd.name().to_string(),
        };
        // The card this command would charge at this caisse, and whether
        // it was locked before; the member whose PIN it resets.
        let charged = match &cmd {
            Command::Purchase(p) => Some((p.card, p.id)),
            Command::HomePurchase { request } => request
                .open::<caisse_protocol::messages::PurchaseRequest>(&self.federation)
                .ok()
                .map(|v| (v.message.card, v.message.id)),
            _ => None,
        };
        // The card whose PIN this command checks.
        let pin_card = match &cmd {
            Command::MemberLogin { card, .. } => Some(*card),
            _ => charged.map(|(c, _)| c),
        };
        let login = matches!(cmd, Command::MemberLogin { .. });
        let reset = match &cmd {
            Command::SetPin { member, .. } => Some(*member),
            _ => None,
        };
        let is_home_purchase = matches!(cmd, Command::HomePurchase { .. });
        let Some(c) = self.nodes[i].caisse.as_mut() else {
            return Err(CaisseError::Unavailable);
        };
        // Locked, and the sale not already recorded (a retry is answered
        // with what was decided before the lock).
        let card_locked = pin_card.is_some_and(|card| c.card(&card).is_some_and(|r| r.locked));
        let locked_before = card_locked
            && charged.is_some_and(|(_, id)| {
                c.read(&keys::key(keys::PURCHASE, &[id.as_bytes()]))
                    .is_ok_and(|r| r.is_none())
            });
        let r = c.execute(cmd, now);
        let ops = c.take_batch().unwrap_or_default();
        if !ops.is_empty() {
            self.nodes[i]
                .store
                .apply(&ops)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let outcome = match &r {
            Ok(reply) => reply.kind().to_string(),
            Err(e) => e.code().to_string(),
        };
        self.trace(format!("{i} {name} -> {outcome}"));
        let charged_ok = match &r {
            Ok(Reply::Answer(a)) if is_home_purchase => a
                .open::<caisse_protocol::messages::PurchaseReceipt>(&self.federation)
                .is_ok(),
            Ok(_) => !is_home_purchase,
            Err(_) => false,
        };
        let pin_refused = match &r {
            Err(e) => matches!(e.code(), "wrong_pin" | "card_locked"),
            Ok(Reply::Answer(a)) if is_home_purchase => a
                .open::<caisse_protocol::messages::PurchaseDecline>(&self.federation)
                .is_ok_and(|d| {
                    matches!(
                        d.message.reason,
                        caisse_protocol::messages::DeclineReason::WrongPin
                            | caisse_protocol::messages::DeclineReason::CardLocked
                    )
                }),
            Ok(_) => false,
        };
        if pin_refused {
            self.report.pin_refusals += 1;
            // A card already locked is refused without counting.
            if !card_locked && let Some(card) = pin_card {
                let m = self.nodes[i].pin_model.entry(card).or_insert((now, 0));
                if m.1 == 0 || now >= m.0.saturating_add(caisse_core::members::PIN_WINDOW_SECS) {
                    *m = (now, 0);
                }
                m.1 = m.1.saturating_add(1);
            }
        }
        if login && card_locked && r.is_ok() {
            self.violation(format!(
                "caisse {i} let a member sign in with card {} although it was locked after wrong PINs",
                pin_card.map(|c| c.to_string()).unwrap_or_default()
            ));
        }
        if charged_ok && locked_before {
            self.violation(format!(
                "caisse {i} charged card {} although it was locked after wrong PINs ({name})",
                charged.map(|(c, _)| c.to_string()).unwrap_or_default()
            ));
        }
        self.check_pin_counters(i, reset);
        self.gossip_if_changed(i);
        r
    }

    /// Every card of caisse `i` has exactly the wrong PINs its answers
    /// showed in the current window (no right PIN and no other caisse's
    /// success lowers the count; only the window's end or a PIN reset
    /// does), and is locked exactly when they reach the policy's limit.
    fn check_pin_counters(&mut self, i: usize, reset: Option<MemberId>) {
        let node = &mut self.nodes[i];
        let Some(c) = node.caisse.as_ref() else {
            return;
        };
        let limit = c.policy().pin_attempts;
        let mut wrong = Vec::new();
        for (member, card) in &node.members {
            if reset == Some(*member) {
                node.pin_model.remove(card);
            }
            let Some(r) = c.card(card) else { continue };
            let (start, count) = node.pin_model.get(card).copied().unwrap_or((0, 0));
            if r.failed_attempts != count || r.locked != (count >= limit) {
                wrong.push(format!(
                    "caisse {i}: card {card} counts {} wrong PINs (locked: {}), its answers showed {count} since {start}",
                    r.failed_attempts, r.locked
                ));
            }
        }
        for w in wrong {
            self.violation(w);
        }
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].caisse.is_some()
    }

    fn latency(&mut self) -> Ms {
        match self.opts.faults.link {
            LinkProfile::Lan => 1 + self.rng.below(2),
            LinkProfile::Wan => 10 + self.rng.below(140),
        }
    }

    /// How long the commit just made at caisse `i` takes to be durable,
    /// queued behind its earlier commits (0 without a slow disk).
    fn commit_delay(&mut self, i: usize) -> Ms {
        let (lo, hi) = self.opts.faults.disk_ms;
        if hi == 0 {
            return 0;
        }
        let mut took = lo + self.rng.below(hi.saturating_sub(lo) + 1);
        if self.opts.faults.disk_stall_pm > 0
            && self.rng.below(1000) < self.opts.faults.disk_stall_pm
        {
            took += HOME_DEADLINE + 2_000;
            self.report.disk_stalls += 1;
            self.trace(format!("{i} disk stalls for {took} ms"));
        }
        let done = self.nodes[i].disk_free_at.max(self.now) + took;
        self.nodes[i].disk_free_at = done;
        done - self.now
    }

    /// Send `msg` once the commit that made it is durable (see
    /// [`Sim::commit_delay`]); returns that delay.
    fn send_after_commit(&mut self, from: usize, to: usize, msg: Msg) -> Ms {
        let delay = self.commit_delay(from);
        if delay == 0 {
            self.send(from, to, msg);
        } else {
            let incarnation = self.nodes[from].incarnation;
            self.schedule(
                self.now + delay,
                Event::Leave {
                    from,
                    incarnation,
                    to,
                    msg,
                },
            );
        }
        delay
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.report.messages += 1;
        self.report.bytes += match &msg {
            Msg::Request { request, .. } => request.to_bytes().map_or(0, |b| b.len() as u64),
            Msg::Answer { answer, .. } => answer.to_bytes().map_or(0, |b| b.len() as u64),
            Msg::Document { doc, .. } => published_size(doc),
        };
        let cut = self.nodes[from].cut_until > self.now || self.nodes[to].cut_until > self.now;
        if cut || self.rng.below(1000) < self.opts.faults.loss_pm {
            self.report.dropped += 1;
            self.trace(format!("drop {from}->{to}"));
            return;
        }
        let at = self.now + self.latency();
        if self.rng.below(1000) < self.opts.faults.dup_pm {
            self.report.duplicated += 1;
            let again = at + self.latency();
            self.schedule(
                again,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
        self.schedule(at, Event::Deliver { from, to, msg });
    }

    /// Publish caisse `i`'s statements to every other caisse when they changed.
    fn gossip_if_changed(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(c) = node.caisse.as_ref() else {
            return;
        };
        let v = c
            .published_version()
            .load(std::sync::atomic::Ordering::Acquire);
        if v == node.published_seen {
            return;
        }
        node.published_seen = v;
        let secret = SecretKey::from_bytes(node.key);
        let mut st = caisse_core::conventionnement::federation_statements(
            c,
            node.id,
            &secret,
            &self.federation,
        );
        self.check_settlement_entries(i, &st);
        if i == 0 && self.opts.faults.inflated_statements_pm > 0 {
            self.inflate(&mut st);
        }
        if i == 0
            && self.opts.faults.replayed_entries_pm > 0
            && self.rng.below(1000) < self.opts.faults.replayed_entries_pm
        {
            self.replay_entries(&mut st);
        }
        self.note_settlement(&st);
        let other_side = (i == 0
            && self.opts.faults.equivocation_pm > 0
            && self.rng.below(1000) < self.opts.faults.equivocation_pm)
            .then(|| self.other_side(&st))
            .flatten();
        let doc = Arc::new(st.published());
        self.nodes[i].sequence += 1;
        let sequence = self.nodes[i].sequence;
        let mark = Mark {
            sequence,
            digest: doc.digest(),
        };
        self.report.largest_document = self.report.largest_document.max(published_size(&doc));
        self.changes
            .entry(i)
            .or_default()
            .push_back((sequence, self.now));
        self.nodes[i].latest = Some((mark, doc.clone()));
        let other_side = other_side.map(|d| {
            self.report.equivocations.0 += 1;
            self.trace(format!("{i} signs two versions under sequence {sequence}"));
            (
                Mark {
                    sequence,
                    digest: d.digest(),
                },
                Arc::new(d),
            )
        });
        self.nodes[i].other_side = other_side.clone();
        for j in 0..self.nodes.len() {
            if j == i {
                continue;
            }
            let (mark, doc) = match &other_side {
                Some((m, d)) if j % 2 == 1 => (*m, d.clone()),
                _ => (mark, doc.clone()),
            };
            self.send(
                i,
                j,
                Msg::Document {
                    owner: i,
                    mark,
                    doc,
                },
            );
        }
    }

    /// `statement` claiming `cents` more, signed with `key`.
    fn claim_more(
        &self,
        key: &SecretKey,
        statement: caisse_protocol::messages::SettlementStatement,
        cents: i64,
    ) -> Option<(Envelope, caisse_protocol::messages::SettlementStatement)> {
        let mut claim = statement;
        claim.amount = claim
            .amount
            .checked_add(Amount::from_cents(cents))
            .unwrap_or(claim.amount);
        let env = Envelope::seal(key, &self.federation, &claim).ok()?;
        Some((env, claim))
    }

    /// The content id of a statement signed by the simulator.
    fn statement_id(&self, env: &Envelope) -> Option<caisse_protocol::ContentId> {
        env.open::<caisse_protocol::messages::SettlementStatement>(&self.federation)
            .ok()
            .map(|v| v.id)
    }

    /// Caisse 0, Byzantine, signs another version of the statements it is
    /// about to publish: its statements as creditor claim two euros more,
    /// or, with none, it recognises one caisse fewer. None when there is
    /// nothing to change.
    fn other_side(&mut self, st: &caisse_core::federation_view::Statements) -> Option<Published> {
        use caisse_protocol::messages::SettlementStatement;
        let key = SecretKey::from_bytes(self.nodes[0].key);
        let me = self.nodes[0].id;
        let mut other = st.clone();
        let mut changed = false;
        for env in other.settlement.values_mut() {
            let Ok(v) = env.open::<SettlementStatement>(&self.federation) else {
                continue;
            };
            if v.message.creditor != me {
                continue;
            }
            if let Some((forged, claim)) = self.claim_more(&key, v.message, 2_00)
                && let Some(id) = self.statement_id(&forged)
            {
                self.equivocated.insert(id, claim);
                *env = forged;
                changed = true;
            }
        }
        if !changed {
            changed = other.recognised.pop().is_some();
        }
        changed.then(|| other.published())
    }

    /// Follow the months being settled through what caisses publish: the
    /// statements of the month, and the answers (acknowledgement or
    /// dispute) that name them. A month completes when every statement
    /// published for it has an answer.
    fn note_settlement(&mut self, st: &caisse_core::federation_view::Statements) {
        use caisse_protocol::messages::{Acknowledgement, Dispute, SettlementStatement};
        if self.settling.is_empty() {
            return;
        }
        let fed = self.federation.clone();
        for env in st.settlement.values() {
            if let Ok(v) = env.open::<SettlementStatement>(&fed) {
                for s in self.settling.iter_mut().filter(|s| s.0 == v.message.period) {
                    s.2.insert(v.id);
                }
                continue;
            }
            let answered = env
                .open::<Acknowledgement>(&fed)
                .map(|v| v.message.statement)
                .or_else(|_| env.open::<Dispute>(&fed).map(|v| v.message.statement));
            if let Ok(id) = answered {
                for s in self.settling.iter_mut() {
                    s.3.insert(id);
                }
            }
        }
        let now = self.now;
        let mut done = Vec::new();
        self.settling.retain(|(_, started, statements, answers)| {
            let complete = !statements.is_empty() && statements.is_subset(answers);
            if complete {
                done.push(now - started);
            }
            !complete
        });
        self.report.settlement_ms.extend(done);
    }

    /// Caisse 0, Byzantine, copies up to three settlement entries signed
    /// by other caisses (statements, answers, transfers from the documents
    /// it holds) into its own document, as if they were its own.
    fn replay_entries(&mut self, st: &mut caisse_core::federation_view::Statements) {
        let theirs: Vec<(String, Envelope)> = self.nodes[0]
            .documents
            .values()
            .flat_map(|(_, d)| d.settlement.iter())
            .filter(|(k, _)| !st.settlement.contains_key(*k))
            .filter_map(|(k, b)| Envelope::from_bytes(b).ok().map(|e| (k.clone(), e)))
            .collect();
        if theirs.is_empty() {
            return;
        }
        for _ in 0..3 {
            let (k, e) = theirs[self.rng.below(theirs.len() as u64) as usize].clone();
            if st.settlement.insert(k.clone(), e).is_none() {
                self.report.replayed_entries += 1;
                self.trace(format!("0 passes off {k} as its own"));
            }
        }
    }

    /// Caisse 0, Byzantine, replaces some of its statements by ones
    /// claiming one euro more (the same receipts, validly signed by it): the
    /// same statements every time it publishes, chosen by their hash.
    fn inflate(&mut self, st: &mut caisse_core::federation_view::Statements) {
        use caisse_protocol::messages::SettlementStatement;
        let key = SecretKey::from_bytes(self.nodes[0].key);
        let me = self.nodes[0].id;
        for env in st.settlement.values_mut() {
            let Ok(v) = env.open::<SettlementStatement>(&self.federation) else {
                continue;
            };
            let h = envelope_hash(env);
            if v.message.creditor != me
                || u64::from(u16::from_le_bytes([h[0], h[1]])) % 1000
                    >= self.opts.faults.inflated_statements_pm
            {
                continue;
            }
            if let Some((forged, claim)) = self.claim_more(&key, v.message, 1_00) {
                if self.inflated.insert(envelope_hash(&forged)) {
                    self.report.inflated_statements += 1;
                    self.trace(format!(
                        "0 claims one euro more from {}",
                        claim.debtor.short()
                    ));
                }
                *env = forged;
            }
        }
    }

    /// Each settlement entry caisse `i` publishes, checked as it appears
    /// (right after the command that made it): a statement states exactly
    /// the receipts it holds from that debtor for that month; an
    /// acknowledgement answers a statement that matches the receipts it
    /// signed; a dispute names as unknown only receipts the creditor holds
    /// from it that it never signed, and as missing only receipts it signed.
    fn check_settlement_entries(
        &mut self,
        i: usize,
        st: &caisse_core::federation_view::Statements,
    ) {
        use caisse_core::settlement::{HELD, ISSUED};
        use caisse_protocol::messages::{
            Acknowledgement, Dispute, SettlementStatement, receipts_hash,
        };
        let fed = self.federation.clone();
        let fresh: Vec<Envelope> = st
            .settlement
            .values()
            .filter(|e| !self.settlement_checked.contains(&envelope_hash(e)))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return;
        }
        // Every statement the other caisses published, by content id (as
        // they last published it, whether they are up or not).
        let mut statements: BTreeMap<caisse_protocol::ContentId, SettlementStatement> =
            BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.id != self.nodes[i].id) {
            if let Some((_, doc)) = n.latest.as_ref() {
                statements.extend(doc.read(&n.id, &fed).statements);
            }
        }
        if self.nodes[i].id != self.nodes[0].id {
            statements.extend(self.equivocated.iter().map(|(k, v)| (*k, v.clone())));
        }
        let receipts = |node: &Node, prefix: &[u8], period: Period, other: &CaisseId| {
            node.caisse
                .as_ref()
                .and_then(|c| c.receipts(prefix, period).ok())
                .and_then(|mut m| m.remove(other))
                .unwrap_or_default()
        };
        // Ids and total of receipts, as a statement states them.
        let summary = |rs: &[caisse_protocol::messages::PurchaseReceipt]| {
            let ids: Vec<PurchaseId> = rs.iter().map(|r| r.purchase).collect();
            let amount =
                Amount::checked_sum(rs.iter().map(|r| r.allocation_part)).unwrap_or(Amount::ZERO);
            (ids, amount)
        };
        let me = self.nodes[i].id;
        let mut wrong = Vec::new();
        for env in fresh {
            self.settlement_checked.insert(envelope_hash(&env));
            if let Ok(v) = env.open::<SettlementStatement>(&fed) {
                let s = v.message;
                let (ids, amount) = summary(&receipts(&self.nodes[i], HELD, s.period, &s.debtor));
                if s.receipts != receipts_hash(&ids)
                    || s.count != ids.len() as u64
                    || s.amount != amount
                {
                    wrong.push(format!(
                        "caisse {i}'s statement of {} states {} receipts for {}, it holds {} for {}{}",
                        s.period,
                        s.count,
                        s.amount,
                        ids.len(),
                        amount,
                        if s.receipts == receipts_hash(&ids) {
                            ""
                        } else {
                            " (and the receipt ids differ)"
                        }
                    ));
                }
            } else if let Ok(v) = env.open::<Acknowledgement>(&fed) {
                let Some(s) = statements.get(&v.message.statement) else {
                    continue; // a transfer confirmed
                };
                let (ids, amount) =
                    summary(&receipts(&self.nodes[i], ISSUED, s.period, &s.creditor));
                if s.receipts != receipts_hash(&ids)
                    || s.amount != amount
                    || s.count != ids.len() as u64
                {
                    wrong.push(format!(
                        "caisse {i} acknowledged a statement of {} claiming {} for {} receipts; it signed {} for {}",
                        s.period,
                        s.amount,
                        s.count,
                        ids.len(),
                        amount
                    ));
                }
            } else if let Ok(v) = env.open::<Dispute>(&fed) {
                let d = v.message;
                let Some(s) = statements.get(&d.statement) else {
                    wrong.push(format!("caisse {i} disputed a statement nobody published"));
                    continue;
                };
                let issued: BTreeSet<PurchaseId> =
                    receipts(&self.nodes[i], ISSUED, s.period, &s.creditor)
                        .iter()
                        .map(|r| r.purchase)
                        .collect();
                // What the creditor holds from this debtor (unknown while
                // the creditor is down: then only what the debtor signed
                // is checked).
                let held: Option<BTreeSet<PurchaseId>> = self
                    .index_of(&s.creditor)
                    .filter(|c| self.nodes[*c].caisse.is_some())
                    .map(|c| {
                        receipts(&self.nodes[c], HELD, s.period, &me)
                            .iter()
                            .map(|r| r.purchase)
                            .collect()
                    });
                let not_ours: Vec<&PurchaseId> = d
                    .unknown_to_debtor
                    .iter()
                    .filter(|id| {
                        issued.contains(id) || held.as_ref().is_some_and(|h| !h.contains(id))
                    })
                    .collect();
                let not_signed: Vec<&PurchaseId> = d
                    .missing_from_statement
                    .iter()
                    .filter(|id| !issued.contains(id))
                    .collect();
                if !not_ours.is_empty() || !not_signed.is_empty() {
                    wrong.push(format!(
                        "caisse {i}'s dispute of a statement of {} names {} receipts as unknown that are not the creditor's claims on it (e.g. {:?}) and {} as missing that it never signed",
                        s.period,
                        not_ours.len(),
                        not_ours.first(),
                        not_signed.len()
                    ));
                }
            }
        }
        for w in wrong {
            self.violation(w);
        }
    }

    fn pick_member(&mut self, i: usize) -> Option<(MemberId, CardId)> {
        let m = &self.nodes[i].members;
        if m.is_empty() {
            return None;
        }
        let k = self.rng.below(m.len() as u64) as usize;
        Some(m[k])
    }

    fn new_purchase(&mut self, card: CardId, outlet: OutletId) -> PurchaseInput {
        self.next_purchase += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.opts.seed.to_be_bytes());
        id[8..].copy_from_slice(&self.next_purchase.to_be_bytes());
        let cents = 50 + self.rng.below(600) as i64;
        let mut lines = vec![PurchaseLine {
            category: bread(),
            producer: None,
            amount: Amount::from_cents(cents),
        }];
        if self.rng.below(2) == 0 {
            lines.push(PurchaseLine {
                category: fresh(),
                producer: None,
                amount: Amount::from_cents(30 + self.rng.below(400) as i64),
            });
        }
        // The card's PIN when it has one, mistyped now and then.
        let pin = self
            .home_index(&card)
            .and_then(|h| self.nodes[h].pins.get(&card).cloned())
            .map(|right| {
                if self.rng.below(100) < WRONG_PIN_PCT {
                    wrong(&right)
                } else {
                    right
                }
            });
        PurchaseInput {
            id: PurchaseId::from_bytes(id),
            card,
            outlet,
            lines,
            pin,
        }
    }

    /// A 4-digit PIN the caisse accepts (not one of the easy ones).
    fn new_pin(&mut self) -> String {
        loop {
            let p = format!("{:04}", self.rng.below(10_000));
            if caisse_core::members::weak_pin(&p).is_none() {
                return p;
            }
        }
    }

    /// The workload: one action drawn from the seed.
    fn tick(&mut self) {
        let n = self.nodes.len();
        let i = self.rng.below(n as u64) as usize;
        let roll = self.rng.below(100);
        if !self.up(i) {
            return;
        }
        if self.nodes[i].members.len() < self.opts.members && roll < 25 {
            let pin = (self.rng.below(2) == 0).then(|| self.new_pin());
            let birth = 1950 + self.rng.below(50) as u16;
            let income = Amount::from_cents(500_00 + self.rng.below(300_000) as i64);
            let r = self.exec(
                i,
                Command::Enroll(EnrollInput {
                    name: format!("Membre {}", self.seq),
                    residence: "quelque part".into(),
                    birth_year: Some(birth),
                    income: Some(income),
                    household: None,
                    new_household: false,
                    joined: None,
                    pin: pin.clone(),
                }),
            );
            if let Ok(Reply::Enrolled(e)) = r {
                self.nodes[i].members.push((e.member, e.card));
                if let Some(p) = pin {
                    self.nodes[i].pins.insert(e.card, p);
                }
                // A member enrolled mid-month gets this month's allocation pro rata.
                self.allocate(i, self.today().period());
            }
            return;
        }
        // A revoked outlet is accredited again about five times sooner
        // than an accredited one is revoked.
        let pm = self.opts.faults.revocations_pm * if self.nodes[i].outlet_revoked { 5 } else { 1 };
        if pm > 0 && self.rng.below(1000) < pm {
            self.parliament_step(i);
            return;
        }
        // A parliament that stopped recognising the others recognises them
        // again about five times sooner.
        let pm = self.opts.faults.recognition_pm * if self.recognises(i) { 1 } else { 5 };
        if pm > 0 && self.rng.below(1000) < pm {
            self.recognition_step(i);
            return;
        }
        let pm = self.opts.faults.signin_pm;
        if pm > 0 && self.rng.below(1000) < pm {
            self.sign_in(i);
            return;
        }
        match roll {
            0..45 => {
                // A local purchase.
                let Some((_, card)) = self.pick_member(i) else {
                    return;
                };
                let input = self.new_purchase(card, self.nodes[i].outlet);
                self.local_sale(i, input);
            }
            45..80 => {
                // A member of `i` buys at another caisse's outlet.
                let Some((_, card)) = self.pick_member(i) else {
                    return;
                };
                let host = (i + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                let input = self.new_purchase(card, self.nodes[host].outlet);
                self.cross_sale(host, input.clone());
                if roll < 50 {
                    // The same card at a second host at once.
                    let other = (host + 1) % n;
                    if other != i {
                        let input = self.new_purchase(card, self.nodes[other].outlet);
                        self.cross_sale(other, input);
                    }
                }
            }
            80..88 => {
                // A till retries a sale whose answer it never got.
                if let Some((host, input)) = self.retry.pop_front() {
                    self.report.retries += 1;
                    self.resend(host, input);
                }
            }
            88..94 => {
                let Some((member, _)) = self.pick_member(i) else {
                    return;
                };
                let period = self.today().period();
                let _ = self.exec(
                    i,
                    Command::Contribution {
                        member,
                        period,
                        amount: None,
                    },
                );
            }
            _ => {
                let period = self.today().period();
                let key = format!("virement-{}", self.rng.below(40));
                let _ = self.exec(
                    i,
                    Command::Subsidy {
                        source: SubsidySource::State,
                        amount: Amount::from_cents(10_000_00),
                        period,
                        key,
                    },
                );
            }
        }
    }

    /// Caisse `i`'s parliament (one citizen seat, held by its first
    /// member) votes to revoke its outlet's accreditation, or, once it is
    /// revoked, to accredit the outlet again: the revocation travels in its
    /// document and every home must decline the outlet's sales once it
    /// holds it.
    fn parliament_step(&mut self, i: usize) {
        let Some(seat) = self.seat(i) else {
            return;
        };
        let outlet = self.nodes[i].outlet;
        let today = self.today();
        let revoking = self.outlet_accreditation(i);
        let kind = match revoking {
            Some(accreditation) => ProposalKind::Revoke {
                accreditation,
                reason: "contrôle sur place".into(),
            },
            None => ProposalKind::Accredit {
                subject: Subject::Outlet(outlet),
                scope: vec![
                    ScopeItem {
                        category: bread(),
                        coverage_pct: 100,
                    },
                    ScopeItem {
                        category: fresh(),
                        coverage_pct: 80,
                    },
                ],
                valid_from: today,
                valid_until: today.plus(365),
            },
        };
        if revoking.is_none() && !self.vote(i, seat, kind.clone()) {
            // An accreditation is judged against criteria: adopt a first
            // version, then accredit.
            let criteria = ProposalKind::Criteria(caisse_protocol::criteria::Criteria {
                name: "Critères de la caisse".into(),
                version: 1,
                local_distance_km: None,
                rule: caisse_protocol::criteria::Rule::MaxDistanceKm(500),
            });
            if !self.vote(i, seat, criteria) {
                return;
            }
            self.vote(i, seat, kind);
        } else if revoking.is_some() {
            self.vote(i, seat, kind);
        }
        let now = self.outlet_accreditation(i);
        self.nodes[i].outlet_revoked = now.is_none();
        match (revoking, now) {
            (Some(_), None) => self.report.revocations.0 += 1,
            (None, Some(_)) => self.report.revocations.1 += 1,
            _ => {}
        }
    }

    /// Caisse `i`'s one citizen seat, held by its first member (taken at
    /// the first vote).
    fn seat(&mut self, i: usize) -> Option<u32> {
        let (member, _) = self.nodes[i].members.first().copied()?;
        if self.nodes[i].seat.is_none()
            && let Ok(Reply::Seat(seat)) = self.exec(
                i,
                Command::AddSeat {
                    kind: SeatKind::Citizen,
                    member: Some(member),
                    holder: None,
                },
            )
        {
            self.nodes[i].seat = Some(seat.id);
        }
        self.nodes[i].seat
    }

    /// Whether caisse `i` recognises the other caisses' accreditations now.
    fn recognises(&self, i: usize) -> bool {
        self.nodes[i]
            .caisse
            .as_ref()
            .is_some_and(|c| c.policy().recognition.policy != RecognitionPolicy::None)
    }

    /// Caisse `i`'s parliament votes to stop recognising the other
    /// caisses' accreditations, or, once it has, to recognise the caisses
    /// it lists again: every home must decline sales at other caisses'
    /// outlets while it recognises none.
    fn recognition_step(&mut self, i: usize) {
        let Some(seat) = self.seat(i) else {
            return;
        };
        let before = self.recognises(i);
        let policy = if before {
            RecognitionPolicy::None
        } else {
            RecognitionPolicy::Listed
        };
        self.vote(i, seat, ProposalKind::RecognitionPolicy(policy));
        match (before, self.recognises(i)) {
            (true, false) => self.report.recognition_changes.0 += 1,
            (false, true) => self.report.recognition_changes.1 += 1,
            _ => {}
        }
    }

    /// A member of caisse `i` signs in at the member page with card and
    /// PIN, mistyped a third of the time: a wrong PIN counts toward the
    /// card's lock like one at a till.
    fn sign_in(&mut self, i: usize) {
        let Some((_, card)) = self.pick_member(i) else {
            return;
        };
        let Some(right) = self.nodes[i].pins.get(&card).cloned() else {
            return;
        };
        let pin = if self.rng.below(3) == 0 {
            wrong(&right)
        } else {
            right
        };
        match self.exec(i, Command::MemberLogin { card, pin }) {
            Ok(_) => self.report.signins.0 += 1,
            Err(_) => self.report.signins.1 += 1,
        }
    }

    /// Put `kind` to caisse `i`'s parliament, vote yes on its one seat and
    /// close the vote; whether the proposal could be made.
    fn vote(&mut self, i: usize, seat: u32, kind: ProposalKind) -> bool {
        let Ok(Reply::Proposal(p)) = self.exec(
            i,
            Command::Propose {
                title: "l'épicerie".into(),
                kind,
                window_minutes: None,
            },
        ) else {
            return false;
        };
        let _ = self.exec(
            i,
            Command::Vote {
                proposal: p.id,
                seat,
                choice: Choice::Yes,
            },
        );
        let _ = self.exec(i, Command::CloseProposal { proposal: p.id });
        true
    }

    /// The accreditation of caisse `i`'s outlet that is not revoked, if any.
    fn outlet_accreditation(&self, i: usize) -> Option<caisse_protocol::ContentId> {
        let node = &self.nodes[i];
        let c = node.caisse.as_ref()?;
        let st = caisse_core::conventionnement::federation_statements(
            c,
            node.id,
            &SecretKey::from_bytes(node.key),
            &self.federation,
        );
        st.accreditations
            .iter()
            .filter(|(id, _)| !st.revocations.contains_key(*id))
            .find(|(_, env)| {
                env.open::<caisse_protocol::messages::Accreditation>(&self.federation)
                    .is_ok_and(|v| v.message.subject == Subject::Outlet(node.outlet))
            })
            .map(|(id, _)| *id)
    }

    /// A home just accepted a sale it had not decided before: the host's
    /// document it holds must not show the outlet's accreditations all
    /// revoked.
    fn check_conventioned(&mut self, home: usize, host: usize, request: &Envelope) {
        let Ok(v) = request.open::<caisse_protocol::messages::PurchaseRequest>(&self.federation)
        else {
            return;
        };
        if !self.recognises(home) {
            self.violation(format!(
                "caisse {home} accepted sale {} at caisse {host}'s outlet although its parliament recognises no other caisse's accreditations",
                v.message.id
            ));
        }
        let Some((mark, doc)) = self.nodes[home].documents.get(&host) else {
            return;
        };
        let seq = mark.sequence;
        let peer = doc.read(&self.nodes[host].id, &self.federation);
        let outlet = Subject::Outlet(v.message.outlet);
        let of_outlet: Vec<_> = peer
            .accreditations
            .iter()
            .filter(|a| a.accreditation.subject == outlet)
            .collect();
        if !of_outlet.is_empty() && of_outlet.iter().all(|a| a.revocation.is_some()) {
            self.violation(format!(
                "caisse {home} accepted sale {} at caisse {host}'s outlet although caisse {host}'s document it holds (version {seq}) revokes that outlet's accreditation",
                v.message.id
            ));
        }
    }

    fn local_sale(&mut self, i: usize, input: PurchaseInput) {
        let id = input.id;
        if !self.quiescent && self.rng.below(1000) < self.opts.faults.crash_pm / 20 {
            // The node dies before the sale is durable: the till retries.
            self.crash_mid_decision(i, Command::Purchase(input.clone()));
            self.retry_later(i, input);
            return;
        }
        match self.exec(i, Command::Purchase(input.clone())) {
            Ok(_) if self.crash_after_sync(i) => self.retry_later(i, input),
            Ok(_) => {
                self.acks.push(Ack {
                    host: i,
                    home: i,
                    purchase: id,
                    offline: false,
                });
                if self.rng.below(1000) < self.opts.faults.loss_pm {
                    // The till never saw the answer: it sends the same sale again.
                    self.retry_later(i, input);
                }
            }
            Err(CaisseError::Unavailable) => self.retry_later(i, input),
            Err(_) => self.report.declined += 1,
        }
    }

    fn cross_sale(&mut self, host: usize, input: PurchaseInput) {
        if !self.up(host) {
            // The till cannot reach its own node: it tries again later.
            self.retry_later(host, input);
            return;
        }
        let id = input.id;
        let (mut sale, first) = HostSale::start(input);
        match self.drive(host, &mut sale, first) {
            HostAction::Finish(Ok(_)) => self.acks.push(Ack {
                host,
                home: self.home_index(&sale.input().card).unwrap_or(host),
                purchase: id,
                offline: false,
            }),
            HostAction::Send {
                home,
                request,
                within_ms,
            } => {
                let Some(h) = self.index_of(&home) else {
                    return;
                };
                self.sagas.insert((host, id), Saga { sale, home });
                // The request leaves once the prepared sale is durable;
                // the host waits for the home from then on.
                let delay = self.send_after_commit(
                    host,
                    h,
                    Msg::Request {
                        purchase: id,
                        request: *request,
                    },
                );
                self.schedule(
                    self.now + delay + within_ms,
                    Event::Deadline { host, purchase: id },
                );
            }
            _ => self.report.declined += 1,
        }
    }

    /// Run a host sale's commands at caisse `i` until it asks for
    /// something else (to send its request, or to finish).
    fn drive(&mut self, i: usize, sale: &mut HostSale, mut action: HostAction) -> HostAction {
        while let HostAction::Execute(cmd) = action {
            let result = self.exec(i, *cmd);
            action = sale.step(HostEvent::Replied(result));
        }
        action
    }

    fn index_of(&self, c: &CaisseId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == *c)
    }

    fn home_index(&self, card: &CardId) -> Option<usize> {
        self.nodes.iter().position(|n| card.is_issued_by(&n.id))
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        if !self.up(to) {
            self.report.dropped += 1;
            return;
        }
        match msg {
            Msg::Request { purchase, request } => {
                // The home decides; a crash before the decision is durable
                // loses it and the answer.
                if self.rng.below(1000) < self.opts.faults.crash_pm / 20 {
                    self.crash_mid_decision(to, Command::HomePurchase { request });
                    return;
                }
                // A sale this home has not decided before (not a retry).
                let fresh = request
                    .open::<caisse_protocol::messages::PurchaseRequest>(&self.federation)
                    .ok()
                    .zip(self.nodes[to].caisse.as_ref())
                    .is_some_and(|(v, c)| {
                        c.read(&keys::key(keys::PURCHASE, &[v.message.id.as_bytes()]))
                            .is_ok_and(|r| r.is_none())
                    });
                let checked = request.clone();
                if let Ok(Reply::Answer(answer)) = self.exec(to, Command::HomePurchase { request })
                {
                    if fresh
                        && answer
                            .open::<caisse_protocol::messages::PurchaseReceipt>(&self.federation)
                            .is_ok()
                    {
                        self.check_conventioned(to, from, &checked);
                    }
                    if self.crash_after_sync(to) {
                        return;
                    }
                    let forge =
                        to == 0 && self.rng.below(1000) < self.opts.faults.forged_receipts_pm;
                    let answer = if forge { self.forge(*answer) } else { *answer };
                    self.send_after_commit(to, from, Msg::Answer { purchase, answer });
                }
            }
            Msg::Answer { purchase, answer } => {
                let offline = self.nodes[to].caisse.as_ref().is_some_and(|c| {
                    caisse_core::settlement::offline_pending(c)
                        .is_ok_and(|p| p.iter().any(|(id, _, _)| *id == purchase))
                });
                if offline {
                    if self
                        .exec(to, Command::ResolveOffline { purchase, answer })
                        .is_ok()
                    {
                        self.report.sagas_resolved += 1;
                    }
                    return;
                }
                let Some(mut saga) = self.sagas.remove(&(to, purchase)) else {
                    return; // a duplicate, or an answer after the deadline
                };
                let forged = self.forged.contains(&envelope_hash(&answer));
                let input = saga.sale.input().clone();
                self.report.sagas_resolved += 1;
                let next = saga.sale.step(HostEvent::Answer(Box::new(answer)));
                match self.drive(to, &mut saga.sale, next) {
                    HostAction::Finish(Ok(_)) if forged => {
                        self.violation(format!(
                            "caisse {to} accepted a receipt for {purchase} that caisse {from} forged"
                        ));
                    }
                    HostAction::Finish(Err(_)) if forged => {
                        // Refused, as it must be: the till tries again later.
                        self.report.forged_refused += 1;
                        self.retry_later(to, input);
                    }
                    HostAction::Finish(Ok(_)) => self.acks.push(Ack {
                        host: to,
                        home: from,
                        purchase,
                        offline: false,
                    }),
                    HostAction::Finish(Err(HostSaleError::Caisse(CaisseError::Declined {
                        ..
                    }))) => self.report.declined += 1,
                    _ => self.retry_later(to, input),
                }
            }
            Msg::Document {
                owner: o,
                mark,
                doc,
            } => {
                if o == to {
                    return; // its own, passed back
                }
                let known = self.nodes[to].documents.get(&o).map(|(m, _)| *m);
                let verdict = judge_heads(known, mark);
                if let HeadsVerdict::Equivocation { take } = verdict {
                    self.report.equivocations.1 += 1;
                    self.trace(format!(
                        "{to} holds two versions of {o}'s document under sequence {}; keeps {}",
                        mark.sequence,
                        if take { "the one offered" } else { "its own" }
                    ));
                }
                if !verdict.take() {
                    return; // stale, replayed, or the losing side
                }
                let peer = doc.read(&self.nodes[o].id, &self.federation);
                let owner = self.nodes[o].id;
                if peer.statements.iter().any(|(_, st)| st.creditor != owner)
                    || peer.transfers.iter().any(|(_, t)| t.from != owner)
                    || peer.disputes.iter().any(|d| d.by != owner)
                {
                    self.violation(format!(
                        "caisse {to} read, in caisse {o}'s document, a settlement entry another caisse signed"
                    ));
                }
                self.nodes[to].documents.insert(o, (mark, doc.clone()));
                self.converged(o);
                if self.relay {
                    // Passed on, as gossip forwards and catalogs offer it.
                    for _ in 0..2 {
                        let k = self.rng.below(self.nodes.len() as u64) as usize;
                        if k != to && k != o {
                            self.send(
                                to,
                                k,
                                Msg::Document {
                                    owner: o,
                                    mark,
                                    doc: doc.clone(),
                                },
                            );
                        }
                    }
                }
                let me = self.nodes[to].id;
                let periods: BTreeSet<Period> = peer
                    .statements
                    .iter()
                    .filter(|(_, s)| s.debtor == me)
                    .map(|(_, s)| s.period)
                    .chain(
                        peer.transfers
                            .iter()
                            .filter(|(_, t)| t.to == me)
                            .map(|(_, t)| t.period),
                    )
                    .collect();
                let _ = self.exec(to, Command::PeerDocuments { peers: vec![peer] });
                if !periods.is_empty() {
                    let _ = self.exec(
                        to,
                        Command::AnswerStatements {
                            periods: periods.into_iter().collect(),
                        },
                    );
                }
            }
        }
    }

    /// Caisse 0 turns a real receipt into one for a request never made (a
    /// different request id, a larger amount), validly signed by its key.
    fn forge(&mut self, answer: Envelope) -> Envelope {
        use caisse_protocol::messages::PurchaseReceipt;
        let Ok(v) = answer.open::<PurchaseReceipt>(&self.federation) else {
            return answer; // a decline: nothing to forge
        };
        let mut r = v.message;
        r.request = caisse_protocol::ContentId::of(&self.rng.next_u64().to_le_bytes());
        r.allocation_part = r
            .allocation_part
            .checked_add(Amount::from_cents(1_00))
            .unwrap_or(r.allocation_part);
        let key = SecretKey::from_bytes(self.nodes[0].key);
        let Ok(forged) = Envelope::seal(&key, &self.federation, &r) else {
            return answer;
        };
        self.forged.insert(envelope_hash(&forged));
        self.trace(format!("0 forged a receipt for {}", r.purchase));
        forged
    }

    /// Record the changes of caisse `i` that every other caisse now holds.
    fn converged(&mut self, i: usize) {
        let everywhere = (0..self.nodes.len())
            .filter(|j| *j != i)
            .map(|j| {
                self.nodes[j]
                    .documents
                    .get(&i)
                    .map_or(0, |(m, _)| m.sequence)
            })
            .min()
            .unwrap_or(0);
        let now = self.now;
        if let Some(q) = self.changes.get_mut(&i) {
            while q.front().is_some_and(|(s, _)| *s <= everywhere) {
                if let Some((_, at)) = q.pop_front() {
                    self.report.convergence_ms.push(now - at);
                }
            }
        }
    }

    /// Whether caisse `i` dies now, its last decision durable but its
    /// answer not yet sent (the writer syncs, then answers).
    fn crash_after_sync(&mut self, i: usize) -> bool {
        let pm = self.opts.faults.crash_after_sync_pm;
        if pm == 0 || self.rng.below(1000) >= pm {
            return false;
        }
        self.report.crashes_after_sync += 1;
        self.trace(format!("{i} crash after sync, before the answer"));
        self.crash(i);
        true
    }

    /// A crash after deciding `cmd` but before its writes were synced.
    fn crash_mid_decision(&mut self, i: usize, cmd: Command) {
        let now = self.secs();
        if let Some(c) = self.nodes[i].caisse.as_mut() {
            let _ = c.execute(cmd, now);
            // The batch never reaches the disk.
            let _ = c.take_batch();
        }
        self.trace(format!("{i} crash before sync"));
        self.crash(i);
    }

    fn crash(&mut self, i: usize) {
        if self.nodes[i].caisse.take().is_some() {
            self.report.crashes += 1;
            self.trace(format!("{i} crash"));
            let back = self.now + 1_000 + self.rng.below(30_000);
            self.schedule(back, Event::Restart { node: i });
        }
    }

    fn deadline(&mut self, host: usize, purchase: PurchaseId) {
        let Some(mut saga) = self.sagas.remove(&(host, purchase)) else {
            return;
        };
        self.report.sagas_resolved += 1;
        let input = saga.sale.input().clone();
        if !self.up(host) {
            self.retry_later(host, input);
            return;
        }
        let home = self.index_of(&saga.home).unwrap_or(host);
        let card = input.card;
        let next = saga.sale.step(HostEvent::Deadline);
        match self.drive(host, &mut saga.sale, next) {
            HostAction::Finish(Ok(r)) if !r.replayed => {
                let used = self
                    .offline_use
                    .entry((host, card, self.today()))
                    .or_insert(Amount::ZERO);
                *used = used.checked_add(r.allocation_part).unwrap_or(Amount::MAX);
                if *used > self.nodes[host].floor {
                    let (u, f) = (*used, self.nodes[host].floor);
                    self.violation(format!(
                        "caisse {host} accepted {u} offline for one card in a day, above its floor of {f}"
                    ));
                }
                self.acks.push(Ack {
                    host,
                    home,
                    purchase,
                    offline: true,
                });
            }
            HostAction::Finish(Ok(_)) => self.acks.push(Ack {
                host,
                home,
                purchase,
                offline: true,
            }),
            // Unreachable and no floor: the till was told nothing was charged.
            _ => self.retry_later(host, input),
        }
    }

    fn catch_up(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            if !self.up(i) {
                continue;
            }
            let Some(latest) = self.nodes[i].latest.clone() else {
                continue;
            };
            for j in 0..n {
                // Each side to its half, even after the faults stop.
                let (mark, doc) = match &self.nodes[i].other_side {
                    Some(side) if j % 2 == 1 => side.clone(),
                    _ => latest.clone(),
                };
                let known = self.nodes[j].documents.get(&i).map(|(m, _)| *m);
                if j != i && judge_heads(known, mark).take() && self.up(j) {
                    self.send(
                        i,
                        j,
                        Msg::Document {
                            owner: i,
                            mark,
                            doc: doc.clone(),
                        },
                    );
                }
            }
        }
        if !self.relay {
            return;
        }
        // Each caisse offers one other what it holds that the other would
        // take (a catalog exchange).
        for j in 0..n {
            if !self.up(j) {
                continue;
            }
            let k = self.rng.below(n as u64) as usize;
            if k == j || !self.up(k) {
                continue;
            }
            let offers: Vec<(usize, Mark, Arc<Published>)> = self.nodes[j]
                .documents
                .iter()
                .filter(|(o, (m, _))| {
                    **o != k
                        && judge_heads(self.nodes[k].documents.get(o).map(|(m, _)| *m), *m).take()
                })
                .map(|(o, (m, d))| (*o, *m, d.clone()))
                .collect();
            for (owner, mark, doc) in offers {
                self.send(j, k, Msg::Document { owner, mark, doc });
            }
        }
    }

    fn forward_offline(&mut self) {
        for i in 0..self.nodes.len() {
            let pending = match self.nodes[i].caisse.as_ref() {
                Some(c) => caisse_core::settlement::offline_pending(c).unwrap_or_default(),
                None => continue,
            };
            for (id, home, request) in pending {
                if let Some(h) = self.index_of(&home) {
                    self.send(
                        i,
                        h,
                        Msg::Request {
                            purchase: id,
                            request,
                        },
                    );
                }
            }
        }
    }

    fn allocate(&mut self, i: usize, period: Period) {
        let now = self.secs();
        let node = &mut self.nodes[i];
        let Some(c) = node.caisse.as_mut() else {
            return;
        };
        let mut job = c.allocation_job(period);
        loop {
            let r = c.allocation_step(&mut job, 64, now);
            let ops = c.take_batch().unwrap_or_default();
            node.store.apply(&ops).unwrap_or_else(|e| panic!("{e}"));
            match r {
                Ok(false) => {}
                Ok(true) | Err(_) => break,
            }
        }
        let issued = job.run.issued;
        self.trace(format!("{i} allocation {period}: {issued}"));
    }

    fn midnight(&mut self) {
        self.report
            .midnight_hashes
            .push(hex::encode(&self.hasher.clone().finalize()[..8]));
        let today = self.today();
        self.trace(format!("midnight {today}"));
        if today.ymd().2 == 1
            && let Some(prev) = previous(today.period())
        {
            let now = self.now;
            self.settling
                .push((prev, now, BTreeSet::new(), BTreeSet::new()));
        }
        for i in 0..self.nodes.len() {
            if !self.up(i) {
                continue;
            }
            if today.ymd().2 == 1 {
                self.allocate(i, today.period());
                // Settle last month.
                if let Some(prev) = previous(today.period())
                    && let Ok(Reply::Settlement(s)) =
                        self.exec(i, Command::RunSettlement { period: prev })
                {
                    self.report.statements += s.statements_published;
                }
            }
            self.reset_locked_pins(i);
            if let Some(prev) = previous(today.period()) {
                match today.ymd().2 {
                    // Last month's sales paid to the outlet.
                    2 => {
                        let outlet = self.nodes[i].outlet;
                        if let Ok(Reply::Payout(p)) = self.exec(
                            i,
                            Command::Payout {
                                outlet,
                                period: prev,
                            },
                        ) && !p.already_paid
                        {
                            self.report.payouts += 1;
                        }
                    }
                    // The transfers last month's netting asks of this caisse.
                    5 => self.declare_transfers(i, prev),
                    _ => {}
                }
            }
            // Faults of the day.
            if !self.quiescent {
                if self.rng.below(1000) < self.opts.faults.crash_pm {
                    self.crash(i);
                    continue;
                }
                if self.rng.below(1000) < self.opts.faults.partition_pm {
                    self.report.partitions += 1;
                    let until = self.now + 3_600_000 * (1 + self.rng.below(6));
                    self.nodes[i].cut_until = until;
                    self.trace(format!("{i} cut off"));
                    self.schedule(until, Event::Heal { node: i });
                }
            }
        }
        self.check_daily();
        if self
            .opts
            .canary_day
            .is_some_and(|d| today.days() == Day::from_unix(EPOCH_SECS).days() + d)
            && self.nodes.len() >= 3
        {
            self.violation("canary".into());
        }
    }

    /// Caisse `i` declares paid the transfers the netting of `period` asks
    /// of it, as computed from the documents it holds and its own.
    fn declare_transfers(&mut self, i: usize, period: Period) {
        let mut view = caisse_core::federation_view::FederationView::default();
        for (j, (_, doc)) in &self.nodes[i].documents {
            view.caisses.insert(
                self.nodes[*j].id,
                doc.read(&self.nodes[*j].id, &self.federation),
            );
        }
        let me = self.nodes[i].id;
        if let Some((_, doc)) = &self.nodes[i].latest {
            view.caisses.insert(me, doc.read(&me, &self.federation));
        }
        let v = caisse_core::settlement::settlement_view(&view, period);
        for t in v.transfers.iter().filter(|t| t.from == me) {
            if self
                .exec(
                    i,
                    Command::RecordTransfer {
                        period,
                        to: t.to,
                        amount: t.amount,
                        reference: format!("virement {period} {}", t.to.short()),
                    },
                )
                .is_ok()
            {
                self.report.transfers_declared += 1;
            }
        }
    }

    /// Members whose card is locked ask the caisse for a new PIN, about
    /// half of them the next day.
    fn reset_locked_pins(&mut self, i: usize) {
        let Some(c) = self.nodes[i].caisse.as_ref() else {
            return;
        };
        let locked: Vec<(MemberId, CardId)> = self.nodes[i]
            .members
            .iter()
            .filter(|(_, card)| c.card(card).is_some_and(|r| r.locked))
            .copied()
            .collect();
        for (member, card) in locked {
            if self.rng.below(2) == 0 {
                continue;
            }
            let pin = self.new_pin();
            if self
                .exec(
                    i,
                    Command::SetPin {
                        member,
                        pin: pin.clone(),
                    },
                )
                .is_ok()
            {
                self.report.pin_resets += 1;
                self.nodes[i].pins.insert(card, pin);
            }
        }
    }

    /// A till will send this sale again. Once faults have stopped, tills
    /// retry within a second (the workload's own retries have ended): a
    /// sale left unanswered then was dropped for good (seed 1282 of the
    /// first 10,000-seed soak: an answer lost just before quiescence, the
    /// host's offline fallback refused, the retry never sent).
    fn retry_later(&mut self, host: usize, input: PurchaseInput) {
        self.retry.push_back((host, input));
        let last = (u64::from(self.opts.days) + 3) * DAY;
        if self.quiescent && self.now < last {
            self.schedule(self.now + 1_000, Event::Retry);
        }
    }

    /// Every till sends again what it never got an answer to.
    fn retry_now(&mut self) {
        for (host, input) in std::mem::take(&mut self.retry) {
            self.resend(host, input);
        }
    }

    /// A till at `host` sends a sale again, with the same id.
    fn resend(&mut self, host: usize, input: PurchaseInput) {
        if input.card.is_issued_by(&self.nodes[host].id) {
            self.local_sale(host, input);
        } else {
            self.cross_sale(host, input);
        }
    }

    /// Schedule the workload's next action, if before the end of the days.
    fn next_tick(&mut self) {
        let t = self.now + 60_000 + self.rng.below(self.opts.workload.spread_ms());
        if t < u64::from(self.opts.days) * DAY {
            self.schedule(t, Event::Tick);
        }
    }

    fn violation(&mut self, v: String) {
        self.report.first_violation_ms.get_or_insert(self.now);
        if self.report.violations.len() < 20 {
            self.report.violations.push(v);
        }
    }

    /// Every caisse's ledger audits clean (from what is durable).
    fn check_daily(&mut self) {
        for i in 0..self.nodes.len() {
            match caisse_core::ledger::check(&*self.nodes[i].store) {
                Ok(r) if r.ok() => {}
                Ok(r) => {
                    let f = r
                        .findings
                        .iter()
                        .take(3)
                        .map(|f| format!("{}: {}", f.item, f.problem))
                        .collect::<Vec<_>>()
                        .join("; ");
                    self.violation(format!("day {}: caisse {i} ledger: {f}", self.today()));
                }
                Err(e) => self.violation(format!("caisse {i}: audit failed: {e}")),
            }
        }
    }

    /// After the faults stop and time passes: everything resolved and agreed.
    fn check_quiescent(&mut self) {
        self.check_daily();
        if !self.sagas.is_empty() {
            self.violation(format!(
                "{} cross-caisse sales still unresolved at quiescence",
                self.sagas.len()
            ));
        }
        for i in 0..self.nodes.len() {
            let pending = self.nodes[i]
                .caisse
                .as_ref()
                .map(|c| caisse_core::settlement::offline_pending(c).unwrap_or_default())
                .unwrap_or_default();
            if !pending.is_empty() {
                self.violation(format!(
                    "caisse {i}: {} offline sales never resolved",
                    pending.len()
                ));
            }
        }
        // Every acknowledged purchase is recorded exactly once where it must be.
        let acks = self.acks.clone();
        for a in &acks {
            let has = |n: usize, prefix: &[u8]| {
                self.nodes[n]
                    .store
                    .get(&keys::key(prefix, &[a.purchase.as_bytes()]))
                    .ok()
                    .flatten()
                    .is_some()
            };
            if a.host == a.home {
                if !has(a.host, keys::PURCHASE) {
                    self.violation(format!(
                        "local purchase {} acknowledged but lost",
                        a.purchase
                    ));
                }
                continue;
            }
            let issued = has(a.home, caisse_core::settlement::ISSUED);
            let held = has(a.host, caisse_core::settlement::HELD);
            let recorded = issued && held;
            if !a.offline && !recorded {
                self.violation(format!(
                    "cross purchase {} acknowledged: receipt at home {issued}, at host {held}",
                    a.purchase
                ));
            }
            if a.offline && issued && !held {
                self.violation(format!(
                    "offline sale {} confirmed by its home but not recorded at the host",
                    a.purchase
                ));
            }
        }
        // What each caisse owes another, both sides agree.
        let n = self.nodes.len();
        for a in 0..n {
            for b in (a + 1)..n {
                let (Some(ca), Some(cb)) =
                    (self.nodes[a].caisse.as_ref(), self.nodes[b].caisse.as_ref())
                else {
                    continue;
                };
                let ab = ca.balance(&Account::Peer(self.nodes[b].id));
                let ba = cb.balance(&Account::Peer(self.nodes[a].id));
                if ab.checked_add(ba).ok() != Some(Amount::ZERO) {
                    // Receipts at `n` under `prefix` whose counterpart is `other`.
                    let ids = |n: usize, prefix: &[u8], other: usize| -> BTreeSet<PurchaseId> {
                        self.nodes[n]
                            .store
                            .scan_prefix(prefix)
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|(k, v)| {
                                let r: caisse_core::settlement::ReceiptRecord =
                                    caisse_core::store::decode_value(&k, &v).ok()?;
                                let them = if prefix == caisse_core::settlement::ISSUED {
                                    r.receipt.host
                                } else {
                                    r.receipt.home
                                };
                                (them == self.nodes[other].id).then_some(r.receipt.purchase)
                            })
                            .collect()
                    };
                    use caisse_core::settlement::{HELD, ISSUED};
                    let (xa, hb) = (ids(a, ISSUED, b), ids(b, HELD, a));
                    let (xb, ha) = (ids(b, ISSUED, a), ids(a, HELD, b));
                    let show = |v: Vec<&PurchaseId>| {
                        v.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let only_issued = show(xa.difference(&hb).chain(xb.difference(&ha)).collect());
                    let only_held = show(hb.difference(&xa).chain(ha.difference(&xb)).collect());
                    self.violation(format!(
                        "caisse {a} books {ab} with {b}, which books {ba} with {a} (receipts issued but not held: [{only_issued}]; held but not issued: [{only_held}])"
                    ));
                }
            }
        }
        self.check_documents();
        self.check_netting();
    }

    /// Every caisse holds the same version of every other caisse's
    /// document (same sequence, same digest): an honest owner's latest,
    /// and one of the Byzantine caisse's sides, the same everywhere.
    fn check_documents(&mut self) {
        let n = self.nodes.len();
        for o in 0..n {
            let Some((latest, _)) = self.nodes[o].latest.clone() else {
                continue;
            };
            let held: Vec<(usize, Option<Mark>)> = (0..n)
                .filter(|j| *j != o)
                .map(|j| (j, self.nodes[j].documents.get(&o).map(|(m, _)| *m)))
                .collect();
            let first = held.first().and_then(|(_, m)| *m);
            for (j, m) in &held {
                let wrong = if o == 0 && self.equivocated_any() {
                    *m != first || m.is_none_or(|m| m.sequence != latest.sequence)
                } else {
                    *m != Some(latest)
                };
                if wrong {
                    self.violation(format!(
                        "at quiescence caisse {j} holds version {:?} of caisse {o}'s document, whose owner published {} and caisse {} holds {:?}",
                        m.map(|m| (m.sequence, hex::encode(&m.digest[..4]))),
                        latest.sequence,
                        held[0].0,
                        first.map(|m| (m.sequence, hex::encode(&m.digest[..4])))
                    ));
                }
            }
        }
    }

    fn equivocated_any(&self) -> bool {
        self.report.equivocations.0 > 0
    }

    /// For every period settled: the netting every caisse computes (the
    /// same code over the same signed documents) realises the positions
    /// that follow from the acknowledged statements, recomputed here on
    /// their own: positions sum to zero, each caisse's transfers in minus
    /// out equal its position, and there are at most n - 1 transfers.
    fn check_netting(&mut self) {
        let mut view = caisse_core::federation_view::FederationView::default();
        // Each caisse's document as the others hold it (all the same
        // version once converged; the Byzantine caisse's own latest may be
        // the losing side of its last equivocation).
        for (i, n) in self.nodes.iter().enumerate() {
            let held = self
                .nodes
                .iter()
                .enumerate()
                .find(|(j, _)| *j != i)
                .and_then(|(_, other)| other.documents.get(&i))
                .map(|(_, d)| d)
                .or(n.latest.as_ref().map(|(_, d)| d));
            if let Some(doc) = held {
                view.caisses.insert(n.id, doc.read(&n.id, &self.federation));
            }
        }
        let periods: BTreeSet<Period> = view
            .caisses
            .values()
            .flat_map(|p| p.statements.iter().map(|(_, s)| s.period))
            .collect();
        for period in periods {
            let v = caisse_core::settlement::settlement_view(&view, period);
            let mut expected: BTreeMap<CaisseId, i64> = BTreeMap::new();
            for (_, st, acked, _) in &v.statements {
                if *acked {
                    *expected.entry(st.creditor).or_default() += st.amount.cents();
                    *expected.entry(st.debtor).or_default() -= st.amount.cents();
                }
            }
            let mut realised: BTreeMap<CaisseId, i64> = BTreeMap::new();
            for t in &v.transfers {
                *realised.entry(t.to).or_default() += t.amount.cents();
                *realised.entry(t.from).or_default() -= t.amount.cents();
            }
            expected.retain(|_, c| *c != 0);
            realised.retain(|_, c| *c != 0);
            if expected != realised {
                self.violation(format!(
                    "netting of {period}: transfers realise {realised:?}, the acknowledged statements give {expected:?}"
                ));
            }
            for (t, confirmed) in &v.paid {
                if !confirmed {
                    self.violation(format!(
                        "transfer of {} from {} to {} for {period} declared paid, never confirmed by its receiver",
                        t.amount,
                        t.from.short(),
                        t.to.short()
                    ));
                }
            }
            if v.transfers.len() > self.nodes.len().saturating_sub(1) {
                self.violation(format!(
                    "netting of {period}: {} transfers for {} caisses",
                    v.transfers.len(),
                    self.nodes.len()
                ));
            }
        }
    }

    fn run(mut self) -> SimReport {
        let days = u64::from(self.opts.days);
        let end = days * DAY;
        // The workload: an action every half hour of simulated time on
        // average, each tick drawing the next one, so that a shorter run
        // (fewer days) is a prefix of a longer one with the same seed.
        self.next_tick();
        for d in 1..=days + 3 {
            self.schedule(d * DAY, Event::Midnight);
        }
        let mut f = 0;
        while f < end + 3 * DAY {
            f += 300_000;
            self.schedule(f, Event::ForwardOffline);
            self.schedule(f + 150_000, Event::CatchUp);
        }
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            let Some(e) = self.events.remove(&seq) else {
                continue;
            };
            self.now = at;
            self.report.events += 1;
            if at >= end && !self.quiescent {
                // Faults stop; crashed caisses come back; links heal.
                self.quiescent = true;
                self.trace("quiescence".into());
                for i in 0..self.nodes.len() {
                    self.nodes[i].cut_until = 0;
                    if !self.up(i) {
                        self.boot(i);
                    }
                }
                self.opts.faults.loss_pm = 0;
                self.opts.faults.dup_pm = 0;
                self.opts.faults.crash_pm = 0;
                self.opts.faults.forged_receipts_pm = 0;
                self.opts.faults.inflated_statements_pm = 0;
                self.opts.faults.crash_after_sync_pm = 0;
                self.opts.faults.disk_stall_pm = 0;
                self.opts.faults.replayed_entries_pm = 0;
                self.opts.faults.revocations_pm = 0;
                self.opts.faults.equivocation_pm = 0;
                self.opts.faults.recognition_pm = 0;
                // Tills retry what they never got an answer to.
                self.retry_now();
            }
            match e {
                Event::Tick => {
                    self.tick();
                    self.next_tick();
                }
                Event::Deliver { from, to, msg } => self.deliver(from, to, msg),
                Event::Leave {
                    from,
                    incarnation,
                    to,
                    msg,
                } => {
                    if self.up(from) && self.nodes[from].incarnation == incarnation {
                        self.send(from, to, msg);
                    } else {
                        self.trace(format!(
                            "{from} crashed before its commit completed: nothing sent to {to}"
                        ));
                    }
                }
                Event::Deadline { host, purchase } => self.deadline(host, purchase),
                Event::Restart { node } => {
                    if !self.up(node) {
                        self.trace(format!("{node} restart"));
                        self.boot(node);
                        self.gossip_if_changed(node);
                    }
                }
                Event::Heal { node } => self.trace(format!("{node} healed")),
                Event::Midnight => self.midnight(),
                Event::ForwardOffline => self.forward_offline(),
                Event::CatchUp => self.catch_up(),
                Event::Retry => self.retry_now(),
            }
        }
        self.check_quiescent();
        let hash = std::mem::take(&mut self.hasher).finalize();
        self.report.seed = self.opts.seed;
        self.report.trace_hash = hex::encode(hash);
        self.report.tail = self.tail.iter().cloned().collect();
        self.report.acknowledged = (
            self.acks.iter().filter(|a| a.host == a.home).count() as u64,
            self.acks
                .iter()
                .filter(|a| a.host != a.home && !a.offline)
                .count() as u64,
            self.acks.iter().filter(|a| a.offline).count() as u64,
        );
        self.report
    }
}

fn published_size(p: &Published) -> u64 {
    let maps = [
        &p.criteria,
        &p.accreditations,
        &p.revocations,
        &p.settlement,
        &p.claims,
    ];
    let entries: usize = maps
        .iter()
        .flat_map(|m| m.iter())
        .map(|(k, v)| k.len() + v.len())
        .sum();
    let recognised: usize = p.recognised.iter().map(String::len).sum();
    (entries + recognised + p.profile.as_ref().map_or(0, Vec::len)) as u64
}

fn envelope_hash(e: &Envelope) -> [u8; 32] {
    Sha256::digest(e.to_bytes().unwrap_or_default()).into()
}

fn previous(p: Period) -> Option<Period> {
    let (y, m) = (p.year(), p.month());
    if m == 1 {
        Period::new(y.checked_sub(1)?, 12)
    } else {
        Period::new(y, m - 1)
    }
}

/// Run one federation under `opts.seed`.
pub fn run(opts: SimOptions) -> SimReport {
    Sim::new(opts).run()
}

/// A smaller federation that still fails, from a failing one: fewer days
/// (a shorter run with the same seed is a prefix of the longer one, so the
/// days up to the first violation are tried first), then fewer caisses,
/// then fewer members, each the smallest that still shows a violation.
/// At most `budget` runs; returns the smallest failing options found and
/// their report.
pub fn shrink(failing: &SimOptions, budget: usize) -> (SimOptions, SimReport) {
    let mut best = failing.clone();
    let mut report = run(best.clone());
    if report.violations.is_empty() {
        return (best, report);
    }
    let mut runs = 1;
    let attempt = |o: &SimOptions, runs: &mut usize| -> Option<SimReport> {
        if *runs >= budget {
            return None;
        }
        *runs += 1;
        let r = run(o.clone());
        (!r.violations.is_empty()).then_some(r)
    };
    // Days: the day of the first violation, else the smallest that fails.
    if let Some(at) = report.first_violation_ms {
        let day = u32::try_from(at / DAY + 1)
            .unwrap_or(u32::MAX)
            .min(best.days);
        if day < best.days {
            let o = SimOptions {
                days: day,
                ..best.clone()
            };
            if let Some(r) = attempt(&o, &mut runs) {
                best = o;
                report = r;
            }
        }
    }
    let (mut lo, mut hi) = (1u32, best.days);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let o = SimOptions {
            days: mid,
            ..best.clone()
        };
        match attempt(&o, &mut runs) {
            Some(r) => {
                hi = mid;
                best = o;
                report = r;
            }
            None if runs >= budget => break,
            None => lo = mid + 1,
        }
    }
    // Caisses, then members: the smallest that still fails.
    type Dim = (usize, fn(&SimOptions) -> usize, fn(&mut SimOptions, usize));
    let dims: [Dim; 2] = [
        (2, |o| o.caisses, |o, v| o.caisses = v),
        (1, |o| o.members, |o, v| o.members = v),
    ];
    for (least, get, set) in dims {
        for v in least..get(&best) {
            let mut o = best.clone();
            set(&mut o, v);
            if let Some(r) = attempt(&o, &mut runs) {
                best = o;
                report = r;
                break;
            }
        }
    }
    (best, report)
}
