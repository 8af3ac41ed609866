//! The federation task: the I/O around the federation documents.
//!
//! One task runs the federation: it validates gossip (Accept / Reject /
//! Ignore, reported to gossipsub before anything is forwarded), answers
//! sync and catalog requests (with read-only sync states, so a requester's
//! changes are never applied), runs sync sessions, persists documents in
//! the store and keeps a [`FederationView`] that the API and purchase
//! checks read. The documents themselves (schema, projection, fork
//! judgement, the view) are `caisse_core::documents`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use automerge::sync::SyncDoc;
use automerge::{ActorId, AutoCommit};
use caisse_protocol::encoding;
use caisse_protocol::messages::DocumentHeads;
use caisse_protocol::rpc::{MAX_CATALOG, MAX_RPC_SIZE, RpcRequest, RpcResponse};
use caisse_protocol::{CaisseId, Envelope, FederationId, SecretKey};
use libp2p::PeerId;
use libp2p::gossipsub::MessageAcceptance;
use serde::Serialize;
use tokio::sync::mpsc;

pub use crate::documents::*;

use crate::network::{NetEvent, Network, peer_id_of};
use crate::store::{Op, Store, decode_value, encode_value};
use caisse_core::command::{Command, Reply};
use caisse_core::replication::{HeadsVerdict, Mark, heads_digest, judge_heads};

use crate::writer::{CaisseHandle, reply};

/// Counters of what the federation accepted and refused.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct FederationStats {
    /// Gossip messages accepted.
    pub gossip_accepted: AtomicU64,
    /// Gossip messages rejected (bad signature, forged, malformed); the sender is penalised.
    pub gossip_rejected: AtomicU64,
    /// Gossip messages ignored (stale or replayed heads, our own).
    pub gossip_ignored: AtomicU64,
    /// Requests that did not decode.
    pub rpc_malformed: AtomicU64,
    /// Sync results refused because they held changes the owner did not sign.
    pub sync_rejected: AtomicU64,
    /// Two versions of one document signed by its owner under one sequence
    /// (a Byzantine owner showing different caisses different statements).
    pub equivocations: AtomicU64,
    /// Peers banned for misbehaviour (in all, since start).
    pub peers_banned: AtomicU64,
    /// Documents accepted after a sync.
    pub sync_accepted: AtomicU64,
    /// Documents updated from the changes gossiped with their heads, with
    /// no sync.
    pub changes_applied: AtomicU64,
    /// Documents nobody here vouches for, dropped to make room.
    pub documents_evicted: AtomicU64,
    /// Sync sessions that failed or ended short of the signed heads.
    pub sync_failed: AtomicU64,
    /// Requests refused and gossip ignored because a peer sent too many.
    pub rate_limited: AtomicU64,
}

struct Replica {
    doc: AutoCommit,
    heads: Option<Envelope>,
    sequence: u64,
    /// The document's epoch (see [`DocumentHeads::epoch`]).
    epoch: u32,
    /// The digest of the version held (its sorted heads and epoch), as
    /// [`judge_heads`] compares it; none before the first signed heads.
    digest: Option<[u8; 32]>,
    /// The next sync starts from an empty document, not from the one held:
    /// the one held has changes the wanted version does not (the losing
    /// side of an equivocation, or a sync judged forged).
    scratch: bool,
    /// Newest signed heads seen (may be ahead of the document): sequence,
    /// envelope, sorted heads, epoch.
    wanted: Option<(u64, Envelope, Vec<[u8; 32]>, u32)>,
    /// A peer known to have the wanted heads.
    source: Option<PeerId>,
    syncing: bool,
    /// Sync attempts that failed since the last success.
    failures: u32,
    /// No sync before this (exponential backoff after failures).
    next_try: Option<Instant>,
    /// When this node started following the document (eviction order).
    added: Instant,
}

impl Replica {
    /// The version held, as [`judge_heads`] compares it.
    fn held(&self) -> Option<Mark> {
        self.digest.map(|digest| Mark {
            sequence: self.sequence,
            digest,
        })
    }

    fn new(mut doc: AutoCommit, heads: Option<Envelope>, sequence: u64, epoch: u32) -> Self {
        let digest = heads
            .as_ref()
            .map(|_| heads_digest(&sorted_heads(&mut doc), epoch));
        Replica {
            doc,
            heads,
            sequence,
            epoch,
            digest,
            scratch: false,
            wanted: None,
            source: None,
            syncing: false,
            failures: 0,
            next_try: None,
            added: Instant::now(),
        }
    }

    /// A failed or incomplete sync: wait longer before the next, and give
    /// up on a document nobody here vouches for after a few.
    fn failed(&mut self, vouched: bool, stats: &FederationStats) {
        stats.sync_failed.fetch_add(1, Ordering::Relaxed);
        self.failures = self.failures.saturating_add(1);
        // A vouched document is tried again soon (another peer may have
        // it); a stranger's waits longer and longer.
        let max = if vouched {
            SYNC_BACKOFF_VOUCHED_MAX
        } else {
            SYNC_BACKOFF_MAX
        };
        let wait = SYNC_BACKOFF_FIRST
            .saturating_mul(1u32 << self.failures.min(16))
            .min(max);
        self.next_try = Some(Instant::now() + wait);
        if !vouched && self.failures >= UNVOUCHED_ATTEMPTS {
            // Wait for newer signed heads before trying again.
            self.wanted = None;
        }
    }
}

/// How long a restarted node waits before publishing its new version
/// (see [`FederationTask::publish_if_changed`]).
pub const PUBLISH_AFTER_RESTART: Duration = Duration::from_secs(3);

/// The longest a forwarded purchase waits for the writer to take the
/// documents read before it arrived.
const DOCS_BEFORE_SALE: Duration = Duration::from_secs(2);

/// See [`FederationTask::busy`].
const BUSY_WINDOW: Duration = Duration::from_secs(10);
/// See [`FederationTask::busy`].
const BUSY_NEWS: u32 = 10;

/// Sync sessions this node runs at once with one peer. A connection carries
/// at most 16 request streams ([`crate::network::MAX_STREAMS`]) for both
/// directions, purchases and catalogs included; past it, requests failed
/// with "max sub-streams reached" and the documents waited for a retry (a
/// node catching up on 29 documents from one peer started 29 at once).
pub const SYNCS_PER_PEER: usize = 6;

/// The first wait after a failed sync; it doubles with each failure.
pub const SYNC_BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between sync attempts for one document.
pub const SYNC_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The longest wait for a document this caisse vouches for.
pub const SYNC_BACKOFF_VOUCHED_MAX: Duration = Duration::from_secs(2);
/// Failed syncs after which a document nobody here vouches for is given up
/// until its owner signs a newer version.
pub const UNVOUCHED_ATTEMPTS: u32 = 4;
/// Documents followed at most whose owner this caisse does not vouch for
/// (neither recognises, nor sees recognised by a caisse it recognises, nor
/// settles with): a stranger minting keys can fill only these, and a new
/// one evicts the oldest.
pub const MAX_UNVOUCHED: usize = 128;

/// Commands to the federation task.
enum FedCommand {
    View(tokio::sync::oneshot::Sender<FederationView>),
    Document(CaisseId, tokio::sync::oneshot::Sender<Option<Vec<u8>>>),
}

/// A handle to the federation task.
#[derive(Clone)]
pub struct Federation {
    tx: mpsc::Sender<FedCommand>,
    /// The shared view.
    pub view: Arc<RwLock<FederationView>>,
    /// Counters.
    pub stats: Arc<FederationStats>,
    /// The network.
    pub network: Network,
}

impl Federation {
    /// A copy of the view.
    pub fn snapshot(&self) -> FederationView {
        self.view.read().map(|v| v.clone()).unwrap_or_default()
    }

    /// The sequence of the signed heads this node holds for `caisse` (its
    /// own: the last version it published), 0 if none, and their
    /// fingerprint.
    pub fn sequence_of(&self, caisse: &CaisseId) -> (u64, String) {
        self.view
            .read()
            .ok()
            .and_then(|v| v.caisses.get(caisse).map(|p| (p.sequence, p.heads.clone())))
            .unwrap_or_default()
    }

    /// The saved bytes of a caisse's document, as replicated here.
    pub async fn document(&self, caisse: CaisseId) -> Option<Vec<u8>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(FedCommand::Document(caisse, tx)).await.ok()?;
        rx.await.ok().flatten()
    }

    /// The view, as the federation task sees it now.
    pub async fn fresh_view(&self) -> FederationView {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(FedCommand::View(tx)).await.is_err() {
            return self.snapshot();
        }
        rx.await.unwrap_or_else(|_| self.snapshot())
    }
}

// Short-lived messages on an internal channel; boxing the fork buys nothing.
#[allow(clippy::large_enum_variant)]
enum Internal {
    Catalog {
        peer: PeerId,
        heads: Vec<Envelope>,
    },
    SyncDone {
        caisse: CaisseId,
        peer: PeerId,
        result: Result<(AutoCommit, Option<Envelope>), String>,
    },
}

/// Start the federation task over a running network and writer. Returns
/// once the writer holds every document stored here (decisions see other
/// caisses only through the writer's copy), before any network event is
/// handled: a purchase forwarded by a host the moment a restarted node is
/// reachable is decided with the host's accreditations in view.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    store: Arc<dyn Store>,
    secret: SecretKey,
    federation: FederationId,
    network: Network,
    events: mpsc::Receiver<NetEvent>,
    handle: CaisseHandle,
    view: Arc<RwLock<FederationView>>,
    local_version: Arc<AtomicU64>,
    sales_version: Arc<AtomicU64>,
) -> Result<(Federation, tokio::task::JoinHandle<()>), String> {
    let (tx, rx) = mpsc::channel(64);
    let (to_writer, mut from_task) = mpsc::unbounded_channel();
    let (applied, docs_applied) = tokio::sync::watch::channel(0);
    let writer = handle.clone();
    let handle_clock = handle.clock().clone();
    let (itx, irx) = mpsc::channel(64);
    let stats = Arc::new(FederationStats::default());
    let me = secret.caisse_id();
    let mut replicas = HashMap::new();
    // Load every replicated document, trusting only what its signed heads cover.
    if let Ok(docs) = store.scan_prefix(DOC) {
        for (k, v) in docs {
            let Ok(b) = <[u8; 32]>::try_from(&k[DOC.len()..]) else {
                continue;
            };
            let owner = CaisseId::from_bytes(b);
            let Ok(mut doc) = AutoCommit::load(&v) else {
                tracing::warn!(caisse = %owner.short(), "stored federation document does not load; will sync it again");
                continue;
            };
            let heads = store
                .get(&heads_key(&owner))
                .ok()
                .flatten()
                .and_then(|b| decode_value::<Envelope>(&heads_key(&owner), &b).ok());
            let signed = heads
                .as_ref()
                .and_then(|e| e.open::<DocumentHeads>(&federation).ok())
                .filter(|v| v.message.caisse == owner);
            let (ok, seq, epoch) = match &signed {
                Some(v) => (
                    sorted_heads(&mut doc) == sorted(v.message.heads.clone()),
                    v.message.sequence,
                    v.message.epoch,
                ),
                None => (owner == me, 0, 0),
            };
            if !ok {
                tracing::warn!(caisse = %owner.short(), "stored document does not match its signed heads; will sync it again");
                continue;
            }
            if owner == me {
                doc.set_actor(ActorId::from(&me.as_bytes()[..]));
            }
            replicas.insert(owner, Replica::new(doc, heads, seq, epoch));
        }
    }
    replicas
        .entry(me)
        .or_insert_with(|| Replica::new(new_document(&me), None, 0, 0));
    let fed = Federation {
        tx,
        view: view.clone(),
        stats: stats.clone(),
        network: network.clone(),
    };
    let mut task = FederationTask {
        store,
        secret,
        me,
        federation,
        network,
        handle,
        view,
        stats,
        replicas,
        responders: HashMap::new(),
        connected: HashSet::new(),
        syncs_with: HashMap::new(),
        vouched_cache: std::cell::RefCell::new(None),
        shared_known: std::cell::RefCell::new(HashSet::new()),
        local_version,
        sales_version,
        published_sales: 0,
        sales_dirty_since: None,
        published_version: u64::MAX,
        internal: itx,
        started: Instant::now(),
        news: (Instant::now(), 0),
        catalog_turn: 0,
        to_writer,
        docs_queued: 0,
        docs_applied,
        clock: handle_clock,
        conduct: Conduct::default(),
        addresses: None,
        recognition: Default::default(),
        buckets: PeerBuckets::default(),
    };
    for c in task.replicas.keys().copied().collect::<Vec<_>>() {
        task.refresh_view(c, false);
    }
    // Before the task reads its first network event (events wait in their
    // channel meanwhile).
    let known: Vec<_> = fed.snapshot().caisses.into_values().collect();
    task.handle
        .execute(Command::PeerDocuments { peers: known })
        .await
        .map_err(|e| format!("cannot hand the federation's documents to the writer: {e}"))?;
    // The same documents, queued one by one by `refresh_view` above: handed.
    while from_task.try_recv().is_ok() {}
    applied.send_replace(task.docs_queued);
    let join = tokio::spawn(async move {
        tokio::join!(
            task.run(events, rx, irx),
            forward_to_writer(writer, from_task, applied)
        );
    });
    Ok((fed, join))
}

/// What the federation task hands the writer.
enum ToWriter {
    /// A caisse's document as read after a sync, and its number in the
    /// order documents were queued (see [`FederationTask::docs_queued`]).
    Peer(Box<PeerCaisse>, u64),
    /// Answer the statements of these periods (after the documents sent
    /// before this).
    Answer(Vec<caisse_protocol::Period>),
}

/// Hand the writer what the federation task read, in order, coalescing the
/// documents that piled up meanwhile: decisions see the federation only
/// through these commands, never through a shared lock.
async fn forward_to_writer(
    handle: CaisseHandle,
    mut rx: mpsc::UnboundedReceiver<ToWriter>,
    applied: tokio::sync::watch::Sender<u64>,
) {
    let mut next = rx.recv().await;
    while let Some(first) = next.take() {
        let mut latest: BTreeMap<CaisseId, PeerCaisse> = BTreeMap::new();
        let mut answer: Option<Vec<caisse_protocol::Period>> = None;
        let mut upto = None;
        let mut item = Some(first);
        // Documents up to the first request to answer (or what is queued).
        while let Some(i) = item.take() {
            match i {
                ToWriter::Peer(p, n) => {
                    if let Some(c) = p.caisse {
                        latest.insert(c, *p);
                    }
                    upto = Some(n);
                    item = rx.try_recv().ok();
                }
                ToWriter::Answer(periods) => answer = Some(periods),
            }
        }
        if !latest.is_empty() {
            let peers = latest.into_values().collect();
            if let Err(e) = handle.execute(Command::PeerDocuments { peers }).await {
                tracing::warn!(error = %e, "the writer did not take the federation's documents");
            }
        }
        // Taken (or refused: a purchase waiting for them must not wait for ever).
        if let Some(n) = upto {
            applied.send_replace(n);
        }
        if let Some(periods) = answer
            && let Err(e) = handle.execute(Command::AnswerStatements { periods }).await
        {
            tracing::warn!(error = %e, "settlement statements not answered");
        }
        next = match rx.try_recv() {
            Ok(i) => Some(i),
            Err(_) => rx.recv().await,
        };
    }
}

struct FederationTask {
    store: Arc<dyn Store>,
    secret: SecretKey,
    me: CaisseId,
    federation: FederationId,
    network: Network,
    handle: CaisseHandle,
    view: Arc<RwLock<FederationView>>,
    stats: Arc<FederationStats>,
    replicas: HashMap<CaisseId, Replica>,
    /// The answering side of sync sessions: one state per peer and
    /// document, for the requester's current session only.
    responders: HashMap<(PeerId, CaisseId), Responder>,
    connected: HashSet<PeerId>,
    /// Sync sessions running with each peer (at most [`SYNCS_PER_PEER`]).
    syncs_with: HashMap<PeerId, usize>,
    /// The caisses this node vouches for, computed once per change of the
    /// view or of the recognition policy (it was computed per document, on
    /// every sync and every new heads).
    vouched_cache: std::cell::RefCell<Option<HashSet<CaisseId>>>,
    /// The known peers last given to the network task.
    shared_known: std::cell::RefCell<HashSet<PeerId>>,
    local_version: Arc<AtomicU64>,
    /// Changes to the sales totals alone: published
    /// [`caisse_core::sales::SALES_PUBLISH_EVERY_MS`] (and a spread) after
    /// the first unpublished one.
    sales_version: Arc<AtomicU64>,
    published_sales: u64,
    sales_dirty_since: Option<Instant>,
    published_version: u64,
    internal: mpsc::Sender<Internal>,
    started: Instant,
    /// Newer heads of documents this caisse vouches for: since when, how
    /// many (a window of [`BUSY_WINDOW`]).
    news: (Instant, u32),
    /// Catalogs asked so far (whose turn is next, see
    /// [`FederationTask::ask_a_catalog`]).
    catalog_turn: usize,
    /// Documents read after a sync and what to do about them, on their way
    /// to the writer, in order.
    to_writer: mpsc::UnboundedSender<ToWriter>,
    /// Documents queued for the writer so far.
    docs_queued: u64,
    /// The number of the last document the writer has taken: a purchase
    /// forwarded to this caisse is decided only once the writer holds
    /// every document this task had read when the request arrived (a sale
    /// at an outlet whose revocation was just read is declined).
    docs_applied: tokio::sync::watch::Receiver<u64>,
    /// The node's clock (a test network's manual clock included).
    clock: Arc<crate::writer::Clock>,
    /// Misbehaviour per peer, and the peers banned for it.
    conduct: Conduct,
    /// This node's signed addresses, published in its document.
    addresses: Option<Envelope>,
    /// This caisse's recognition policy (from the core), for vouching.
    recognition: caisse_core::policy::Recognition,
    /// Token buckets per peer.
    buckets: PeerBuckets,
}

/// Strikes within [`STRIKE_WINDOW`] that ban a peer.
pub const STRIKES_TO_BAN: u32 = 20;
/// The window strikes are counted over.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(60);
/// How long a ban lasts (the peer id is refused on every reconnection).
pub const BAN: Duration = Duration::from_secs(10 * 60);
/// Strikes per window written to the log one by one; the rest are counted
/// and summed up when the peer is banned.
pub const LOGGED_STRIKES: u32 = 5;
/// Peers whose conduct is remembered at most.
const MAX_CONDUCT: usize = 10_000;
/// Requests one peer may make per second, after a burst of [`RPC_BURST`]
/// (a caisse catching up on a hundred documents makes a few hundred).
pub const RPC_PER_SECOND: u32 = 200;
/// See [`RPC_PER_SECOND`].
pub const RPC_BURST: u32 = 1_000;
/// Gossip messages taken from one peer per second, after a burst of
/// [`GOSSIP_BURST`]; the rest are ignored (not forwarded).
pub const GOSSIP_PER_SECOND: u32 = 200;
/// See [`GOSSIP_PER_SECOND`].
pub const GOSSIP_BURST: u32 = 1_000;

/// Token buckets per peer, on requests and on gossip (`governor`).
struct PeerBuckets {
    rpc: governor::DefaultKeyedRateLimiter<PeerId>,
    gossip: governor::DefaultKeyedRateLimiter<PeerId>,
}

impl Default for PeerBuckets {
    fn default() -> Self {
        let quota = |rate: u32, burst: u32| {
            governor::Quota::per_second(std::num::NonZeroU32::new(rate).expect("non-zero"))
                .allow_burst(std::num::NonZeroU32::new(burst).expect("non-zero"))
        };
        PeerBuckets {
            rpc: governor::RateLimiter::keyed(quota(RPC_PER_SECOND, RPC_BURST)),
            gossip: governor::RateLimiter::keyed(quota(GOSSIP_PER_SECOND, GOSSIP_BURST)),
        }
    }
}

/// What the federation task remembers of each peer's misbehaviour: a
/// malformed request or gossip message, heads with a bad signature. (A sync
/// refused for changes the owner did not sign is not counted: a lost
/// response can make an honest peer look like that.)
#[derive(Default)]
struct Conduct {
    strikes: HashMap<PeerId, (Instant, u32)>,
    banned: HashMap<PeerId, Instant>,
}

impl Conduct {
    /// Count a strike; returns (log this one, ban now).
    fn strike(&mut self, peer: PeerId) -> (bool, bool) {
        if self.banned.contains_key(&peer) {
            return (false, false);
        }
        let now = Instant::now();
        if self.strikes.len() >= MAX_CONDUCT && !self.strikes.contains_key(&peer) {
            self.strikes
                .retain(|_, (t, _)| now.duration_since(*t) < STRIKE_WINDOW);
            if self.strikes.len() >= MAX_CONDUCT {
                self.strikes.clear();
            }
        }
        let e = self.strikes.entry(peer).or_insert((now, 0));
        if now.duration_since(e.0) >= STRIKE_WINDOW {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        let n = e.1;
        if n >= STRIKES_TO_BAN {
            self.strikes.remove(&peer);
            self.banned.insert(peer, now + BAN);
            return (false, true);
        }
        (n <= LOGGED_STRIKES, false)
    }

    /// Bans that have run out.
    fn expired(&mut self) -> Vec<PeerId> {
        let now = Instant::now();
        let out: Vec<PeerId> = self
            .banned
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &out {
            self.banned.remove(p);
        }
        out
    }
}

impl FederationTask {
    /// Count a peer's misbehaviour (`what`, `error`): logged while it is
    /// rare, then only counted; at [`STRIKES_TO_BAN`] within the window the
    /// peer is banned for [`BAN`], on every reconnection too.
    async fn misbehaved(&mut self, peer: PeerId, what: &'static str, error: &str) {
        let (log, ban) = self.conduct.strike(peer);
        if log {
            tracing::warn!(target: "caisse::events::federation", %peer, error, "{what}");
        }
        if ban {
            self.stats.peers_banned.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "caisse::security", %peer, strikes = STRIKES_TO_BAN, last = what, minutes = BAN.as_secs() / 60, "peer banned for misbehaviour");
            self.network.block(peer, true).await;
        }
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<NetEvent>,
        mut commands: mpsc::Receiver<FedCommand>,
        mut internal: mpsc::Receiver<Internal>,
    ) {
        let span = tracing::info_span!("federation", caisse = %self.me.short());
        let _e = span.enter();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut catalog_tick = tokio::time::interval(Duration::from_secs(10));
        let mut offline_tick = tokio::time::interval(Duration::from_secs(2));
        let forwarding = Arc::new(std::sync::atomic::AtomicBool::new(false));
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.net_event(ev).await,
                    None => break,
                },
                cmd = commands.recv() => match cmd {
                    Some(FedCommand::View(reply)) => {
                        let _ = reply.send(self.view.read().map(|v| v.clone()).unwrap_or_default());
                    }
                    Some(FedCommand::Document(c, reply)) => {
                        let bytes = self.replicas.get_mut(&c).map(|r| r.doc.save());
                        let _ = reply.send(bytes);
                    }
                    None => break,
                },
                Some(i) = internal.recv() => self.internal(i).await,
                _ = tick.tick() => {
                    self.publish_if_changed().await;
                    self.start_pending_syncs();
                }
                _ = offline_tick.tick() => {
                    // While documents are changing, a node that missed a
                    // gossip message (dropped under load) learns of the new
                    // version from a catalog in seconds, not at the next
                    // 10 s one: one more catalog every 2 s, from a peer in turn.
                    if self.busy() {
                        self.ask_a_catalog();
                    }
                    // Forward sales accepted under the offline floor once their home is reachable.
                    if !forwarding.swap(true, Ordering::AcqRel) {
                        let (handle, net, flag) = (self.handle.clone(), self.network.clone(), forwarding.clone());
                        tokio::spawn(async move {
                            forward_offline(&handle, &net).await;
                            flag.store(false, Ordering::Release);
                        });
                    }
                }
                _ = catalog_tick.tick() => {
                    // Heal partitions by sync, not by luck: ask a connected peer what it holds.
                    self.ask_a_catalog();
                    self.refresh_recognition().await;
                    self.share_known();
                    self.dial_vouched();
                    let cutoff = Instant::now() - Duration::from_secs(120);
                    self.responders.retain(|_, r| r.seen > cutoff);
                    self.buckets.rpc.retain_recent();
                    self.buckets.gossip.retain_recent();
                    for peer in self.conduct.expired() {
                        tracing::info!(target: "caisse::security", %peer, "ban over");
                        self.network.block(peer, false).await;
                    }
                }
            }
        }
        tracing::info!("federation stopped");
    }

    /// Project this caisse's statements into its own document when they change.
    async fn publish_if_changed(&mut self) {
        let version = self.local_version.load(Ordering::Acquire);
        let sales = self.sales_version.load(Ordering::Acquire);
        let sales_due = sales != self.published_sales && {
            let since = *self.sales_dirty_since.get_or_insert_with(Instant::now);
            // Spread by caisse, so that caisses whose sales began together
            // do not all publish (and make everyone sync) at once.
            let every = caisse_core::sales::SALES_PUBLISH_EVERY_MS;
            let spread = u64::from(u16::from_le_bytes([
                self.me.as_bytes()[0],
                self.me.as_bytes()[1],
            ])) % every;
            since.elapsed() >= Duration::from_millis(every + spread)
        };
        if version == self.published_version && !sales_due {
            return;
        }
        // Back from a restart (a version published before), the node waits
        // for its connections and their subscriptions before publishing
        // again: published at the first tick, a restarted caisse's new
        // version reached the few peers connected by then, the others had
        // already asked its catalog on connecting, and learned of it 20 s
        // later (`federation-100`, the kill-restart).
        let published_before = self
            .replicas
            .get(&self.me)
            .is_some_and(|r| r.heads.is_some());
        if published_before && self.started.elapsed() < PUBLISH_AFTER_RESTART {
            return;
        }
        let (me, secret, federation) = (
            self.me,
            SecretKey::from_bytes(self.secret.to_bytes()),
            self.federation.clone(),
        );
        let (mut statements, recognition) = match self
            .handle
            .read(move |c, _| {
                use caisse_core::view::Reads;
                Ok((
                    caisse_core::conventionnement::federation_statements(
                        c,
                        me,
                        &secret,
                        &federation,
                    ),
                    c.policy().recognition.clone(),
                ))
            })
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read local statements");
                return;
            }
        };
        self.recognition = recognition;
        self.forget_vouched();
        statements.addresses = self.signed_addresses().await;
        if let Ok(view) = self.view.read() {
            caisse_core::settlement::prune_publications(
                &mut statements,
                &view,
                self.me,
                &self.federation,
                self.clock.now(),
            );
        }
        self.published_version = version;
        self.published_sales = sales;
        self.sales_dirty_since = None;
        let me = self.me;
        let Some(replica) = self.replicas.get_mut(&me) else {
            return;
        };
        let force = replica.heads.is_none();
        let before = replica.doc.get_heads();
        let (bytes, compacted) = match publish_own(&mut replica.doc, &me, &statements, force) {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot update the federation document");
                return;
            }
        };
        if compacted {
            replica.epoch = replica.epoch.saturating_add(1);
            tracing::info!(target: "caisse::events::federation", epoch = replica.epoch, bytes = bytes.len(), "document compacted into a new epoch");
        }
        let heads = sorted_heads(&mut replica.doc);
        // The changes of this version, to gossip with its heads (not across
        // a new epoch, which shares no history with the old one).
        let changes = (!compacted).then(|| replica.doc.save_after(&before));
        // Increasing, and ahead of anything signed before a wipe: the
        // node's clock in milliseconds (a test network's manual clock too).
        let sequence = replica
            .sequence
            .saturating_add(1)
            .max(self.clock.now().saturating_mul(1000));
        let message = DocumentHeads {
            caisse: me,
            heads,
            sequence,
            epoch: replica.epoch,
        };
        let env = match Envelope::seal(&self.secret, &self.federation, &message) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign document heads");
                return;
            }
        };
        replica.sequence = sequence;
        replica.digest = Some(heads_digest(&message.heads, message.epoch));
        replica.heads = Some(env.clone());
        self.persist(me, bytes, &env);
        // Durable before anyone sees it: a version gossiped then lost in a
        // power cut would be signed again, differently, under the same
        // sequence, and every replica holding the first would be stuck
        // (found by the power-cut soak, cut 185 of 200).
        if let Err(e) = self.store.sync() {
            tracing::error!(error = %e, "cannot make the new document version durable; not gossiped");
            return;
        }
        self.refresh_view(me, true);
        tracing::info!(target: "caisse::events::federation", sequence, "published document heads");
        // With the changes when they fit in one gossip message: a replica
        // one version behind then needs no sync.
        let carried = changes.and_then(|changes| {
            let mut base: Vec<[u8; 32]> = before.iter().map(|h| h.0).collect();
            base.sort();
            caisse_protocol::rpc::HeadsGossip {
                heads: env.clone(),
                base,
                changes,
            }
            .to_gossip(crate::network::MAX_GOSSIP)
        });
        if let Some(data) = carried.or_else(|| env.to_bytes().ok())
            && let Err(e) = self.network.publish(data).await
        {
            tracing::info!(target: "caisse::events::federation", error = %e, sequence, "heads not gossiped (no peers yet?)");
        }
    }

    /// Read this caisse's recognition policy again (it changes by vote).
    async fn refresh_recognition(&mut self) {
        if let Ok(r) = self
            .handle
            .read(|c, _| {
                use caisse_core::view::Reads;
                Ok(c.policy().recognition.clone())
            })
            .await
        {
            self.recognition = r;
            self.forget_vouched();
        }
    }

    /// This node's addresses (listened on and announced), signed once.
    async fn signed_addresses(&mut self) -> Option<Envelope> {
        if self.addresses.is_none() {
            let info = self.network.info().await;
            let addresses: Vec<String> = info
                .listen
                .iter()
                .take(caisse_protocol::messages::MAX_ADDRESSES)
                .map(ToString::to_string)
                .collect();
            if addresses.is_empty() {
                return None;
            }
            let m = caisse_protocol::messages::CaisseAddresses {
                caisse: self.me,
                addresses,
            };
            self.addresses = Envelope::seal(&self.secret, &self.federation, &m).ok();
        }
        self.addresses.clone()
    }

    /// Tell the network which peers are not strangers: owners of the
    /// documents this node holds, and those it vouches for.
    fn share_known(&self) {
        let known: HashSet<PeerId> = self
            .replicas
            .iter()
            .filter(|(c, r)| r.heads.is_some() || self.vouched(c))
            .filter_map(|(c, _)| peer_id_of(c))
            .collect();
        let mut shared = self.shared_known.borrow_mut();
        if *shared != known {
            shared.clone_from(&known);
            self.network.set_known(known);
        }
    }

    /// Dial the caisses this node vouches for that are not connected, at
    /// the addresses they signed.
    fn dial_vouched(&self) {
        for c in self.replicas.keys() {
            if *c == self.me {
                continue;
            }
            if let Some(p) = peer_id_of(c)
                && !self.connected.contains(&p)
                && self.vouched(c)
            {
                self.network.dial_peer(p);
            }
        }
    }

    fn persist(&self, owner: CaisseId, doc: Vec<u8>, heads: &Envelope) {
        crate::metrics::document_size(&owner, doc.len());
        let ops = [
            Op::Put(doc_key(&owner), doc),
            Op::Put(heads_key(&owner), encode_value(heads)),
        ];
        if let Err(e) = self.store.apply(&ops) {
            tracing::error!(error = %e, "cannot store a federation document");
        }
    }

    fn refresh_view(&mut self, owner: CaisseId, changed: bool) {
        let Some(r) = self.replicas.get(&owner) else {
            return;
        };
        let mut p = read_document(&r.doc, &owner, &self.federation);
        p.sequence = r.sequence;
        p.heads = r
            .heads
            .as_ref()
            .and_then(|e| e.to_bytes().ok())
            .map(|b| {
                use sha2::Digest;
                hex::encode(&sha2::Sha256::digest(b)[..8])
            })
            .unwrap_or_default();
        let connected = peer_id_of(&owner).is_some_and(|pid| self.connected.contains(&pid));
        if owner != self.me
            && let Some(pid) = peer_id_of(&owner)
        {
            // Only addresses ending in the owner's own peer id, if any.
            let addrs: Vec<libp2p::Multiaddr> = p
                .addresses
                .iter()
                .filter_map(|a| a.parse::<libp2p::Multiaddr>().ok())
                .filter(|a| match a.iter().last() {
                    Some(libp2p::multiaddr::Protocol::P2p(x)) => x == pid,
                    _ => true,
                })
                .collect();
            if !addrs.is_empty() {
                self.network.add_addresses(pid, addrs);
            }
        }
        let me = self.me;
        // What vouching reads of a document: its criteria, whom it
        // recognises, whether it has settlement with this caisse.
        let vouching = |x: &PeerCaisse| {
            (
                x.criteria.as_ref().map(|(_, id)| *id),
                x.recognised.clone(),
                x.statements
                    .iter()
                    .any(|(_, s)| s.debtor == me || s.creditor == me),
            )
        };
        let mut same_vouching = false;
        if let Ok(mut v) = self.view.write() {
            let last = v.caisses.get(&owner).map_or(0, |x| x.last_changed);
            p.last_changed = if changed { self.clock.now() } else { last };
            p.connected = connected || owner == self.me;
            if owner != self.me {
                self.docs_queued += 1;
                let _ = self
                    .to_writer
                    .send(ToWriter::Peer(Box::new(p.clone()), self.docs_queued));
            }
            same_vouching = v
                .caisses
                .get(&owner)
                .is_some_and(|old| vouching(old) == vouching(&p));
            v.caisses.insert(owner, p);
        }
        // Recomputed over every caisse on its next use: only when this
        // document changed what vouching reads (a storm of sales totals
        // recomputed it once per document received).
        if !same_vouching {
            self.forget_vouched();
        }
    }

    fn set_connected(&mut self, peer: PeerId, on: bool) {
        if on {
            self.connected.insert(peer);
            // An owner back online: its document is worth a try at once.
            for (c, r) in self.replicas.iter_mut() {
                if peer_id_of(c) == Some(peer) {
                    r.next_try = None;
                }
            }
        } else {
            self.connected.remove(&peer);
        }
        if let Ok(mut v) = self.view.write() {
            for (c, p) in v.caisses.iter_mut() {
                if peer_id_of(c) == Some(peer) {
                    p.connected = on;
                }
            }
        }
    }

    /// Check signed heads; record them as wanted if newer. Returns the acceptance.
    fn consider_heads(&mut self, env: &Envelope, source: Option<PeerId>) -> MessageAcceptance {
        let v = match env.open::<DocumentHeads>(&self.federation) {
            Ok(v) => v,
            Err(e) => {
                // Logged and counted by the caller, against the peer.
                tracing::debug!(target: "caisse::events::federation", error = %e, peer = ?source, "rejected document heads");
                return MessageAcceptance::Reject;
            }
        };
        let owner = v.message.caisse;
        if owner == self.me {
            return MessageAcceptance::Ignore;
        }
        let vouched = self.vouched(&owner);
        if !self.replicas.contains_key(&owner) && !self.make_room(vouched) {
            tracing::warn!(target: "caisse::events::federation", caisse = %owner.short(), "ignored a new document: this node already follows the most it will");
            return MessageAcceptance::Ignore;
        }
        // Heads of a document nobody here vouches for are kept (so a new
        // caisse can be seen and recognised) but not forwarded.
        let acceptance = if vouched {
            MessageAcceptance::Accept
        } else {
            MessageAcceptance::Ignore
        };
        let replica = self
            .replicas
            .entry(owner)
            .or_insert_with(|| Replica::new(AutoCommit::new(), None, 0, 0));
        // The newest version known: the one being fetched, else the one held.
        let known = match &replica.wanted {
            Some((seq, _, heads, epoch)) if *seq >= replica.sequence => Some(Mark {
                sequence: *seq,
                digest: heads_digest(heads, *epoch),
            }),
            _ => replica.held(),
        };
        let heads = sorted(v.message.heads.clone());
        let offered = Mark {
            sequence: v.message.sequence,
            digest: heads_digest(&heads, v.message.epoch),
        };
        let verdict = judge_heads(known, offered);
        if let HeadsVerdict::Equivocation { take } = verdict {
            self.stats.equivocations.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "caisse::security", caisse = %owner.short(), sequence = offered.sequence, peer = ?source, keep = if take { "the one just offered" } else { "the one known" }, "the owner signed two versions of its document under one sequence (equivocation): keeping the one with the smaller digest, as every honest caisse does");
        }
        if !verdict.take() {
            if verdict == HeadsVerdict::Stale && v.message.sequence < replica.sequence {
                tracing::debug!(target: "caisse::events::federation", caisse = %owner.short(), sequence = v.message.sequence, "stale or replayed heads ignored");
            }
            if source.is_some() && replica.source.is_none() {
                replica.source = source;
            }
            return MessageAcceptance::Ignore;
        }
        // The losing side of an equivocation is held: the winner is
        // fetched whole, not merged into it.
        if offered.sequence == replica.sequence {
            replica.scratch = true;
        }
        replica.wanted = Some((v.message.sequence, env.clone(), heads, v.message.epoch));
        if vouched {
            if self.news.0.elapsed() > BUSY_WINDOW {
                self.news = (Instant::now(), 0);
            }
            self.news.1 = self.news.1.saturating_add(1);
        }
        if source.is_some() {
            replica.source = source;
        }
        let from_owner = source.is_some() && source == peer_id_of(&owner);
        if vouched || from_owner {
            // A newer version of a document this caisse vouches for, or one
            // its owner announces itself over its own connection: worth a
            // try at once (a caisse back from a restart is found again in
            // seconds, not after the backoff a stranger's document earns).
            replica.next_try = None;
            replica.failures = 0;
        }
        acceptance
    }

    /// Whether this caisse vouches for `owner`'s document: it recognises
    /// the owner (by name, or by its policy: compatible criteria), or a
    /// caisse it recognises by name does, or the owner's document carries a
    /// settlement statement with this caisse.
    fn vouched(&self, owner: &CaisseId) -> bool {
        if let Some(set) = self.vouched_cache.borrow().as_ref() {
            return set.contains(owner);
        }
        let set = self.vouched_now();
        let answer = set.contains(owner);
        *self.vouched_cache.borrow_mut() = Some(set);
        answer
    }

    /// Every caisse [`Self::vouched`] is true for, from the view: the only
    /// candidates are the caisses in the view and the ones named in the
    /// recognised lists of this caisse and of those it recognises.
    fn vouched_now(&self) -> HashSet<CaisseId> {
        let Ok(v) = self.view.read() else {
            return HashSet::new();
        };
        let Some(mine) = v.caisses.get(&self.me) else {
            return HashSet::new();
        };
        let ours = mine.criteria.as_ref().map(|(c, _)| c);
        let mut candidates: HashSet<CaisseId> = v.caisses.keys().copied().collect();
        candidates.extend(mine.recognised.iter().copied());
        for r in &mine.recognised {
            if let Some(p) = v.caisses.get(r) {
                candidates.extend(p.recognised.iter().copied());
            }
        }
        candidates
            .into_iter()
            .filter(|owner| {
                v.recognises(owner, &self.recognition, ours)
                    || mine.recognised.contains(owner)
                    || mine.recognised.iter().any(|r| {
                        v.caisses
                            .get(r)
                            .is_some_and(|p| p.recognised.contains(owner))
                    })
                    || v.caisses.get(owner).is_some_and(|p| {
                        p.statements
                            .iter()
                            .any(|(_, s)| s.debtor == self.me || s.creditor == self.me)
                    })
            })
            .collect()
    }

    /// The view or the recognition policy changed: vouching is recomputed
    /// on its next use.
    fn forget_vouched(&self) {
        *self.vouched_cache.borrow_mut() = None;
    }

    /// Make room for one more document: a vouched one may take the place of
    /// an unvouched one when the catalog is full; an unvouched one takes the
    /// place of the oldest unvouched (never-synced first) when their quota
    /// is full. False when there is no room.
    fn make_room(&mut self, vouched: bool) -> bool {
        let unvouched: Vec<(CaisseId, bool, Instant)> = self
            .replicas
            .iter()
            .filter(|(c, _)| **c != self.me)
            .map(|(c, r)| (*c, r.heads.is_some(), r.added))
            .filter(|(c, _, _)| !self.vouched(c))
            .collect();
        let full = self.replicas.len() >= MAX_CATALOG;
        if vouched && !full {
            return true;
        }
        if !vouched && !full && unvouched.len() < MAX_UNVOUCHED {
            return true;
        }
        let Some((victim, _, _)) = unvouched
            .into_iter()
            .min_by_key(|(_, synced, added)| (*synced, *added))
        else {
            return false;
        };
        self.evict(victim);
        true
    }

    /// Stop following `owner`'s document: dropped from memory, disk and view.
    fn evict(&mut self, owner: CaisseId) {
        self.replicas.remove(&owner);
        self.responders.retain(|(_, c), _| *c != owner);
        if let Err(e) = self
            .store
            .apply(&[Op::Delete(doc_key(&owner)), Op::Delete(heads_key(&owner))])
        {
            tracing::error!(error = %e, "cannot drop an evicted federation document");
        }
        if let Ok(mut v) = self.view.write() {
            v.caisses.remove(&owner);
        }
        self.forget_vouched();
        crate::metrics::document_size(&owner, 0);
        self.stats.documents_evicted.fetch_add(1, Ordering::Relaxed);
        self.share_known();
        tracing::info!(target: "caisse::events::federation", caisse = %owner.short(), "stopped following a document nobody here vouches for");
    }

    fn start_pending_syncs(&mut self) {
        let me = self.me;
        let connected = self.connected.clone();
        let mut starts = Vec::new();
        let now = Instant::now();
        for (owner, r) in self.replicas.iter_mut() {
            if *owner == me || r.syncing || r.next_try.is_some_and(|t| t > now) {
                continue;
            }
            let Some((seq, _, _, epoch)) = &r.wanted else {
                continue;
            };
            // (Under the sequence held only to replace the losing side of
            // an equivocation.)
            if *seq < r.sequence || (*seq == r.sequence && !r.scratch) {
                r.wanted = None;
                continue;
            }
            // Prefer the owner itself, then whoever announced the heads,
            // then each connected peer in turn (one that lacked the version
            // last time is not asked again first). A peer already running
            // its share of sessions with this node is waited for.
            let peer = peer_id_of(owner)
                .filter(|p| connected.contains(p))
                .or(r.source.filter(|p| connected.contains(p)))
                .or_else(|| {
                    let mut all: Vec<&PeerId> = connected.iter().collect();
                    all.sort();
                    all.get(r.failures as usize % all.len().max(1)).map(|p| **p)
                });
            if let Some(peer) = peer {
                let running = self.syncs_with.entry(peer).or_default();
                if *running >= SYNCS_PER_PEER {
                    continue;
                }
                *running += 1;
                r.syncing = true;
                // A new epoch shares no history with the old one.
                let base = if *epoch == r.epoch && !r.scratch {
                    r.doc.fork()
                } else {
                    AutoCommit::new()
                };
                starts.push((*owner, peer, base, r.wanted.as_ref().map(|w| w.2.clone())));
            }
        }
        for (owner, peer, fork, want) in starts {
            let want = want.unwrap_or_default();
            let net = self.network.clone();
            let tx = self.internal.clone();
            tokio::spawn(async move {
                let result = sync_session(&net, peer, owner, fork, &want).await;
                let _ = tx
                    .send(Internal::SyncDone {
                        caisse: owner,
                        peer,
                        result,
                    })
                    .await;
            });
        }
    }

    async fn internal(&mut self, i: Internal) {
        let (caisse, peer, result) = match i {
            Internal::Catalog { peer, heads } => {
                for env in heads.iter().take(MAX_CATALOG) {
                    if self.consider_heads(env, Some(peer)) == MessageAcceptance::Reject {
                        self.stats.gossip_rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.start_pending_syncs();
                return;
            }
            Internal::SyncDone {
                caisse,
                peer,
                result,
            } => (caisse, peer, result),
        };
        // A connected owner is a caisse, not a key minted for an attack:
        // its document is retried like a vouched one.
        let vouched = self.vouched(&caisse)
            || peer_id_of(&caisse).is_some_and(|p| self.connected.contains(&p));
        if let Some(n) = self.syncs_with.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.syncs_with.remove(&peer);
            }
        }
        let Some(r) = self.replicas.get_mut(&caisse) else {
            return;
        };
        r.syncing = false;
        let (mut fork, offered) = match result {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(caisse = %caisse.short(), %peer, error = %e, "sync failed; will retry");
                r.source = None;
                r.failed(vouched, &self.stats);
                return;
            }
        };
        // Newer signed heads offered by the responder count too.
        if let Some(env) = offered {
            let _ = self.consider_heads(&env, Some(peer));
        }
        let Some(r) = self.replicas.get_mut(&caisse) else {
            return;
        };
        let Some((seq, env, want, epoch)) = r.wanted.clone() else {
            return;
        };
        match judge_fork(&mut fork, &want) {
            SyncVerdict::Accept => {}
            // Retried after a backoff, in a new session, from another peer
            // unless this one is the owner.
            SyncVerdict::Incomplete => {
                if r.source == Some(peer) {
                    r.source = None;
                }
                r.failed(vouched, &self.stats);
                return;
            }
            SyncVerdict::Forged => {
                r.failed(vouched, &self.stats);
                // The held document may be what adds the unsigned changes
                // (the losing side of an equivocation the owner built on
                // the other side of): the next session starts empty.
                r.scratch = true;
                self.stats.sync_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "caisse::events::federation", caisse = %caisse.short(), %peer, "rejected a sync holding changes the owner did not sign");
                if r.source == Some(peer) {
                    r.source = None;
                }
                return;
            }
        }
        self.stats.sync_accepted.fetch_add(1, Ordering::Relaxed);
        self.adopt(caisse, fork, seq, env, epoch);
        // Heads that arrived while this session ran: pull them now, not at
        // the next tick.
        self.start_pending_syncs();
    }

    /// Gossiped heads came with the changes since `base`: when the replica
    /// holds exactly `base` and the changes give exactly the signed heads
    /// just recorded as wanted, take the new version without a sync.
    /// Anything else (another base, a sync under way, changes that do not
    /// give the signed heads) leaves the pull to do it.
    fn apply_carried(&mut self, env: &Envelope, base: &[[u8; 32]], changes: &[u8]) {
        let Ok(v) = env.open::<DocumentHeads>(&self.federation) else {
            return;
        };
        let owner = v.message.caisse;
        let Some(r) = self.replicas.get_mut(&owner) else {
            return;
        };
        let Some((seq, wenv, want, epoch)) = r.wanted.clone() else {
            return;
        };
        if seq != v.message.sequence || epoch != r.epoch || r.syncing {
            return;
        }
        if sorted_heads(&mut r.doc) != sorted(base.to_vec()) {
            return;
        }
        let mut fork = r.doc.fork();
        if fork.load_incremental(changes).is_err()
            || judge_fork(&mut fork, &want) != SyncVerdict::Accept
        {
            tracing::debug!(target: "caisse::events::federation", caisse = %owner.short(), sequence = seq, "gossiped changes do not give the signed heads; pulling instead");
            return;
        }
        self.stats.changes_applied.fetch_add(1, Ordering::Relaxed);
        self.adopt(owner, fork, seq, wenv, epoch);
    }

    /// Take `fork` as `caisse`'s document at the signed heads `env`: persist
    /// it, refresh the view, hand it to the writer.
    fn adopt(&mut self, caisse: CaisseId, fork: AutoCommit, seq: u64, env: Envelope, epoch: u32) {
        let Some(r) = self.replicas.get_mut(&caisse) else {
            return;
        };
        r.doc = fork;
        r.sequence = seq;
        r.epoch = epoch;
        r.digest = Some(heads_digest(&sorted_heads(&mut r.doc), epoch));
        r.scratch = false;
        r.heads = Some(env.clone());
        r.wanted = None;
        r.failures = 0;
        r.next_try = None;
        let bytes = r.doc.save();
        self.persist(caisse, bytes, &env);
        self.refresh_view(caisse, true);
        self.share_known();
        if let Some(p) = peer_id_of(&caisse)
            && !self.connected.contains(&p)
            && self.vouched(&caisse)
        {
            self.network.dial_peer(p);
        }
        tracing::info!(target: "caisse::events::federation", caisse = %caisse.short(), sequence = seq, "document updated");
        let me = self.me;
        let periods: Vec<caisse_protocol::Period> = self
            .view
            .read()
            .map(|v| {
                v.caisses
                    .get(&caisse)
                    .map(|p| {
                        p.statements
                            .iter()
                            .filter(|(_, s)| s.debtor == me)
                            .map(|(_, s)| s.period)
                            .chain(
                                p.transfers
                                    .iter()
                                    .filter(|(_, t)| t.to == me)
                                    .map(|(_, t)| t.period),
                            )
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        if !periods.is_empty() {
            // After the document itself, in the same ordered queue: the
            // writer answers against the statements it has just been given.
            let _ = self.to_writer.send(ToWriter::Answer(periods));
        }
    }

    /// Whether many documents changed lately (a storm of publications, as
    /// at a month's end): at least [`BUSY_NEWS`] new versions within the
    /// current or the last [`BUSY_WINDOW`].
    fn busy(&self) -> bool {
        self.news.1 >= BUSY_NEWS && self.news.0.elapsed() < 2 * BUSY_WINDOW
    }

    /// Ask one connected peer, chosen in turn, what it holds.
    fn ask_a_catalog(&mut self) {
        let mut peers: Vec<PeerId> = self.connected.iter().copied().collect();
        peers.sort();
        if !peers.is_empty() {
            // A turn counter, not the clock: asked every 2 s (busy) or
            // 10 s, a clock in seconds skipped every other peer.
            self.catalog_turn = self.catalog_turn.wrapping_add(1);
            self.ask_catalog(peers[self.catalog_turn % peers.len()]);
        }
    }

    fn ask_catalog(&self, peer: PeerId) {
        let net = self.network.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let Ok(req) = encoding::encode(&RpcRequest::Catalog, MAX_RPC_SIZE) else {
                return;
            };
            let Ok(resp) = net.request(peer, req).await else {
                return;
            };
            match encoding::decode::<RpcResponse>(&resp, MAX_RPC_SIZE) {
                Ok(RpcResponse::Catalog(heads)) => {
                    let _ = tx.send(Internal::Catalog { peer, heads }).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(target: "caisse::events::federation", %peer, error = %e, "malformed catalog answer");
                }
            }
        });
    }

    async fn net_event(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Connected(peer) => {
                self.set_connected(peer, true);
                self.ask_catalog(peer);
            }
            NetEvent::Disconnected(peer) => self.set_connected(peer, false),
            NetEvent::Gossip { source, id, data } => {
                if self.buckets.gossip.check_key(&source).is_err() {
                    // Over its share: neither read nor forwarded.
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    self.stats.gossip_ignored.fetch_add(1, Ordering::Relaxed);
                    self.network
                        .validate(id, source, MessageAcceptance::Ignore)
                        .await;
                    return;
                }
                let decoded = match caisse_protocol::rpc::HeadsGossip::from_gossip(
                    &data,
                    crate::network::MAX_GOSSIP,
                ) {
                    Ok(Some(g)) => Ok((g.heads, Some((g.base, g.changes)))),
                    Ok(None) => Envelope::from_bytes(&data).map(|e| (e, None)),
                    Err(e) => Err(e),
                };
                let acceptance = match decoded {
                    Ok((env, carried)) => {
                        let a = self.consider_heads(&env, Some(source));
                        if a == MessageAcceptance::Reject {
                            self.misbehaved(
                                source,
                                "rejected document heads",
                                "bad signature or not heads",
                            )
                            .await;
                        } else if let Some((base, changes)) = carried {
                            self.apply_carried(&env, &base, &changes);
                        }
                        a
                    }
                    Err(e) => {
                        self.misbehaved(source, "rejected malformed gossip", &e.to_string())
                            .await;
                        MessageAcceptance::Reject
                    }
                };
                match acceptance {
                    MessageAcceptance::Accept => &self.stats.gossip_accepted,
                    MessageAcceptance::Reject => &self.stats.gossip_rejected,
                    MessageAcceptance::Ignore => &self.stats.gossip_ignored,
                }
                .fetch_add(1, Ordering::Relaxed);
                self.network.validate(id, source, acceptance).await;
                self.start_pending_syncs();
            }
            NetEvent::Request {
                peer,
                data,
                channel,
            } => {
                if self.buckets.rpc.check_key(&peer).is_err() {
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    let refused =
                        RpcResponse::Refused("rate limited: too many requests, slow down".into());
                    self.network
                        .respond(channel, encode_response(&refused))
                        .await;
                    return;
                }
                let response = match encoding::decode::<RpcRequest>(&data, MAX_RPC_SIZE) {
                    Ok(RpcRequest::Purchase(env)) => {
                        // Decided by the writer, off this task: answer when it is durable.
                        let handle = self.handle.clone();
                        let net = self.network.clone();
                        let (need, mut applied) = (self.docs_queued, self.docs_applied.clone());
                        tokio::spawn(async move {
                            // After every document read so far (bounded: a
                            // writer that stalls does not hold the sale for ever).
                            let _ = tokio::time::timeout(
                                DOCS_BEFORE_SALE,
                                applied.wait_for(|n| *n >= need),
                            )
                            .await;
                            let decided =
                                handle.execute(Command::HomePurchase { request: env }).await;
                            let answer = match reply!(decided, Reply::Answer) {
                                Ok(receipt) => RpcResponse::Purchase(*receipt),
                                Err(e) => {
                                    tracing::warn!(target: "caisse::events::purchase", %peer, error = %e, "refused a forwarded purchase");
                                    RpcResponse::Refused(e.to_string())
                                }
                            };
                            net.respond(channel, encode_response(&answer)).await;
                        });
                        return;
                    }
                    Ok(req) => self.request(peer, req).await,
                    Err(e) => {
                        self.stats.rpc_malformed.fetch_add(1, Ordering::Relaxed);
                        self.misbehaved(peer, "refused a malformed request", &e.to_string())
                            .await;
                        RpcResponse::Refused(format!("malformed request: {e}"))
                    }
                };
                self.network
                    .respond(channel, encode_response(&response))
                    .await;
            }
        }
    }

    async fn request(&mut self, peer: PeerId, req: RpcRequest) -> RpcResponse {
        match req {
            RpcRequest::Catalog => {
                let envs: Vec<Envelope> = self
                    .replicas
                    .values()
                    .filter_map(|r| r.heads.clone())
                    .take(MAX_CATALOG)
                    .collect();
                RpcResponse::Catalog(envs)
            }
            RpcRequest::Sync {
                caisse,
                session,
                message,
            } => {
                let Some(r) = self.replicas.get_mut(&caisse) else {
                    return RpcResponse::Refused("no such document here".into());
                };
                if r.heads.is_none() {
                    return RpcResponse::Refused("no signed heads for that document yet".into());
                }
                let responder = self
                    .responders
                    .entry((peer, caisse))
                    .or_insert_with(|| Responder::new(session));
                if responder.session != session {
                    // A new session (a retry after a lost answer, or the
                    // requester restarted): what this side believes it sent
                    // may never have arrived.
                    *responder = Responder::new(session);
                }
                responder.seen = Instant::now();
                let state = &mut responder.state;
                if let Some(m) = message {
                    let decoded = match automerge::sync::Message::decode(&m) {
                        Ok(d) => d,
                        Err(e) => {
                            self.stats.rpc_malformed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(target: "caisse::events::federation", %peer, error = %e, "refused a malformed sync message");
                            return RpcResponse::Refused("malformed sync message".into());
                        }
                    };
                    // Read-only state: whatever changes the requester sends are not applied.
                    if let Err(e) = r.doc.sync().receive_sync_message(state, decoded) {
                        tracing::warn!(target: "caisse::events::federation", %peer, error = %e, "refused a sync message");
                        return RpcResponse::Refused("bad sync message".into());
                    }
                }
                let reply = r
                    .doc
                    .sync()
                    .generate_sync_message(state)
                    .map(|m| m.encode());
                RpcResponse::Sync {
                    message: reply,
                    heads: r.heads.clone(),
                }
            }
            // Forwarded purchases are decided by the writer before reaching here.
            RpcRequest::Purchase(_) => RpcResponse::Refused("purchase not accepted here".into()),
            RpcRequest::Receipts(ids) => {
                let creditor = self.view.read().ok().and_then(|v| {
                    v.caisses
                        .keys()
                        .find(|c| peer_id_of(c) == Some(peer))
                        .copied()
                });
                let Some(creditor) = creditor else {
                    return RpcResponse::Refused("unknown caisse".into());
                };
                match self
                    .handle
                    .read(move |c, _| caisse_core::settlement::resend_receipts(c, &creditor, &ids))
                    .await
                {
                    Ok(envs) => RpcResponse::Receipts(envs),
                    Err(e) => RpcResponse::Refused(e.to_string()),
                }
            }
        }
    }
}

/// Send every sale accepted offline to its home caisse and record the
/// answers; homes still unreachable are tried again at the next tick.
async fn forward_offline(handle: &CaisseHandle, net: &Network) {
    let Ok(pending) = handle
        .read(|c, _| caisse_core::settlement::offline_pending(c))
        .await
    else {
        return;
    };
    for (id, home, request) in pending {
        // The request dials the home caisse at its known addresses if needed.
        let Some(peer) = peer_id_of(&home) else {
            continue;
        };
        let Ok(bytes) = encoding::encode(&RpcRequest::Purchase(request), MAX_RPC_SIZE) else {
            continue;
        };
        let Ok(answer) = net.request(peer, bytes).await else {
            continue;
        };
        if let Ok(RpcResponse::Purchase(env)) =
            encoding::decode::<RpcResponse>(&answer, MAX_RPC_SIZE)
        {
            let resolve = Command::ResolveOffline {
                purchase: id,
                answer: env,
            };
            match handle.execute(resolve).await {
                Ok(_) => {
                    tracing::info!(target: "caisse::events::purchase", purchase = %id, home = %home.short(), "offline sale resolved")
                }
                Err(e) => {
                    tracing::warn!(target: "caisse::events::purchase", purchase = %id, error = %e, "offline sale answer refused")
                }
            }
        }
    }
}

/// A response's wire bytes; one too large to encode becomes a refusal that
/// says so (logged), never empty bytes.
fn encode_response(response: &RpcResponse) -> Vec<u8> {
    match encoding::encode(response, MAX_RPC_SIZE) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(target: "caisse::events::federation", error = %e, "a response could not be encoded; refused instead");
            let refused = RpcResponse::Refused(format!("response not sent: {e}"));
            encoding::encode(&refused, MAX_RPC_SIZE).expect("a short refusal always encodes")
        }
    }
}

/// The responder's side of one peer's sync session for one document.
struct Responder {
    /// The requester's session this state belongs to.
    session: u64,
    /// Read-only: changes the requester sends are never applied.
    state: automerge::sync::State,
    /// Last request, for expiry.
    seen: Instant,
}

impl Responder {
    fn new(session: u64) -> Self {
        Responder {
            session,
            state: automerge::sync::State::new_read_only(),
            seen: Instant::now(),
        }
    }
}

/// Pull `owner`'s document from `peer` into `fork` with automerge's sync
/// protocol, in a session of its own, until automerge has nothing more to
/// exchange or the document's heads are exactly `want` (the signed heads
/// sought; empty: no such shortcut). The caller decides whether to accept
/// the result.
pub async fn sync_session(
    net: &Network,
    peer: PeerId,
    owner: CaisseId,
    mut fork: AutoCommit,
    want: &[[u8; 32]],
) -> Result<(AutoCommit, Option<Envelope>), String> {
    let session = u64::from_le_bytes(
        crate::daemon::random32()[..8]
            .try_into()
            .expect("eight bytes"),
    );
    let mut state = automerge::sync::State::new();
    let mut offered = None;
    for round in 0..MAX_SYNC_ROUNDS {
        let ours = fork
            .sync()
            .generate_sync_message(&mut state)
            .map(|m| m.encode());
        if ours.is_none() && round > 0 {
            break;
        }
        let sent_nothing = ours.is_none();
        let req = encoding::encode(
            &RpcRequest::Sync {
                caisse: owner,
                session,
                message: ours,
            },
            MAX_RPC_SIZE,
        )
        .map_err(|e| e.to_string())?;
        let resp = net.request(peer, req).await?;
        match encoding::decode::<RpcResponse>(&resp, MAX_RPC_SIZE).map_err(|e| e.to_string())? {
            RpcResponse::Sync { message, heads } => {
                if heads.is_some() {
                    offered = heads;
                }
                match message {
                    Some(m) => {
                        let m = automerge::sync::Message::decode(&m).map_err(|e| e.to_string())?;
                        fork.sync()
                            .receive_sync_message(&mut state, m)
                            .map_err(|e| e.to_string())?;
                        // Exactly the signed heads we want: done, without the
                        // round that would only confirm it (one round trip).
                        if !want.is_empty() && sorted_heads(&mut fork) == want {
                            break;
                        }
                    }
                    None if sent_nothing => break,
                    None => {}
                }
            }
            RpcResponse::Refused(r) => return Err(r),
            _ => return Err("unexpected answer".into()),
        }
    }
    Ok((fork, offered))
}

#[cfg(test)]
mod start_tests {
    use super::*;
    use caisse_core::caisse::{Caisse, write_initial_state};
    use caisse_core::federation_view::Statements;
    use caisse_core::policy::Policy;
    use caisse_core::store::MemStore;

    /// A node restarted under traffic must decide a purchase forwarded to
    /// it with every stored document of other caisses already in the
    /// writer: a request from a host arrives as soon as the network is up,
    /// and a home deciding with no view of the host declines it as "not
    /// conventioned". Once `start` returns, the writer knows every stored
    /// document, before any network event is handled.
    #[tokio::test(flavor = "current_thread")]
    async fn the_writer_holds_the_stored_documents_when_start_returns() {
        let fed = FederationId::new("test").unwrap();
        let mine = SecretKey::from_bytes([1; 32]);
        let peer = SecretKey::from_bytes([2; 32]);
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let today = caisse_protocol::Day::from_unix(1_800_000_000);
        write_initial_state(&*store, &mine, "A", "Aville", &Policy::default(), today).unwrap();
        // The other caisse's document, stored with its signed heads, as a
        // sync before the restart left it.
        let owner = peer.caisse_id();
        let mut doc = new_document(&owner);
        publish_own(&mut doc, &owner, &Statements::default(), true).unwrap();
        let heads = DocumentHeads {
            caisse: owner,
            heads: sorted_heads(&mut doc),
            sequence: 1,
            epoch: 0,
        };
        let env = Envelope::seal(&peer, &fed, &heads).unwrap();
        store
            .apply(&[
                Op::Put(doc_key(&owner), doc.save()),
                Op::Put(heads_key(&owner), encode_value(&env)),
            ])
            .unwrap();
        let caisse = Caisse::load(
            store.clone(),
            SecretKey::from_bytes([1; 32]),
            fed.clone(),
            Box::new(|| [7; 32]),
        )
        .unwrap();
        let published = caisse.published_version();
        let sales = caisse.sales_version();
        let (handle, _writer) = crate::writer::spawn(caisse, crate::writer::Clock::system());
        let (network, events, _net) = crate::network::start(crate::network::NetworkConfig {
            secret: mine.to_bytes(),
            federation: "test".into(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            bootstrap: vec![],
            limits: None,
            announce: vec![],
        })
        .await
        .unwrap();
        let (_fed, _task) = start(
            store,
            mine,
            fed,
            network,
            events,
            handle.clone(),
            Arc::default(),
            published,
            sales,
        )
        .await
        .unwrap();
        // The next command in the writer's queue sees the other caisse.
        let known = handle
            .execute(Command::PeerDocuments { peers: vec![] })
            .await
            .unwrap();
        assert!(matches!(known, Reply::Count(1)), "{known:?}");
    }
}
