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
use caisse_core::replication::{
    Acceptance, Conduct, Context, Input, Output, PeerKey, Replication, SyncEnd, heads_digest,
};

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

/// A document this node holds: the automerge document and the signed heads
/// it is at. What the replication remembers of it (the version held and
/// wanted, the sync in progress, its backoff) is the core's
/// [`Replication`].
struct Replica {
    doc: AutoCommit,
    heads: Option<Envelope>,
}

impl Replica {
    fn new(doc: AutoCommit, heads: Option<Envelope>) -> Self {
        Replica { doc, heads }
    }
}

/// The core's name for a peer: its id's bytes.
fn key(p: &PeerId) -> PeerKey {
    PeerKey(p.to_bytes())
}

/// The peer a caisse's node runs as, in the core's terms.
fn peer_key_of(c: &CaisseId) -> Option<PeerKey> {
    peer_id_of(c).map(|p| key(&p))
}

/// The peer the core names.
fn peer_of_key(k: &PeerKey) -> Option<PeerId> {
    PeerId::from_bytes(&k.0).ok()
}

/// How long a restarted node waits before publishing its new version
/// (see [`FederationTask::publish_if_changed`]).
pub const PUBLISH_AFTER_RESTART: Duration = Duration::from_secs(3);

/// The longest a forwarded purchase waits for the writer to take the
/// documents read before it arrived.
const DOCS_BEFORE_SALE: Duration = Duration::from_secs(2);

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
    let mut replication = Replication::new(me, 0);
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
            let digest = heads
                .as_ref()
                .map(|_| heads_digest(&sorted_heads(&mut doc), epoch));
            let cx = Context {
                now_ms: 0,
                vouched: &HashSet::new(),
                peer_of: &peer_key_of,
            };
            replication.handle(
                Input::Holding {
                    owner,
                    sequence: seq,
                    epoch,
                    digest,
                },
                &cx,
            );
            replicas.insert(owner, Replica::new(doc, heads));
        }
    }
    replicas
        .entry(me)
        .or_insert_with(|| Replica::new(new_document(&me), None));
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
        replication,
        vouched_cache: std::cell::RefCell::new(None),
        shared_known: std::cell::RefCell::new(HashSet::new()),
        local_version,
        sales_version,
        published_sales: 0,
        sales_dirty_since: None,
        published_version: u64::MAX,
        internal: itx,
        started: Instant::now(),
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
    /// Which documents are followed, which version is wanted of each,
    /// which syncs run with whom, which peers are connected: the core's
    /// state machine, fed with what happens here.
    replication: Replication,
    /// The caisses this node vouches for, computed once per change of the
    /// view or of the recognition policy (it was computed per document, on
    /// every sync and every new heads).
    vouched_cache: std::cell::RefCell<Option<Arc<HashSet<CaisseId>>>>,
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
    /// The task's start: its monotonic clock (milliseconds since, as the
    /// core's replication reads time).
    started: Instant,
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
    /// Misbehaviour per peer, and the peers banned for it (the core's).
    conduct: Conduct,
    /// This node's signed addresses, published in its document.
    addresses: Option<Envelope>,
    /// This caisse's recognition policy (from the core), for vouching.
    recognition: caisse_core::policy::Recognition,
    /// Token buckets per peer.
    buckets: PeerBuckets,
}

use caisse_core::replication::{BAN_MS, STRIKES_TO_BAN};

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

impl FederationTask {
    /// Count a peer's misbehaviour (`what`, `error`): logged while it is
    /// rare, then only counted; at [`STRIKES_TO_BAN`] within the window the
    /// peer is banned for [`BAN`], on every reconnection too.
    async fn misbehaved(&mut self, peer: PeerId, what: &'static str, error: &str) {
        let strike = self.conduct.strike(&key(&peer), self.now_ms());
        if strike.log {
            tracing::warn!(target: "caisse::events::federation", %peer, error, "{what}");
        }
        if strike.ban {
            self.stats.peers_banned.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "caisse::security", %peer, strikes = STRIKES_TO_BAN, last = what, minutes = BAN_MS / 60_000, "peer banned for misbehaviour");
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
                    for peer in self.conduct.expired(self.now_ms()).iter().filter_map(peer_of_key) {
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
        let (held_sequence, mut epoch) = self
            .replication
            .follow(&me)
            .map_or((0, 0), |f| (f.sequence, f.epoch));
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
            epoch = epoch.saturating_add(1);
            tracing::info!(target: "caisse::events::federation", epoch, bytes = bytes.len(), "document compacted into a new epoch");
        }
        let heads = sorted_heads(&mut replica.doc);
        // The changes of this version, to gossip with its heads (not across
        // a new epoch, which shares no history with the old one).
        let changes = (!compacted).then(|| replica.doc.save_after(&before));
        // Increasing, and ahead of anything signed before a wipe: the
        // node's clock in milliseconds (a test network's manual clock too).
        let sequence = held_sequence
            .saturating_add(1)
            .max(self.clock.now().saturating_mul(1000));
        let message = DocumentHeads {
            caisse: me,
            heads,
            sequence,
            epoch,
        };
        let env = match Envelope::seal(&self.secret, &self.federation, &message) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign document heads");
                return;
            }
        };
        replica.heads = Some(env.clone());
        self.replicate(Input::Holding {
            owner: me,
            sequence,
            epoch,
            digest: Some(heads_digest(&message.heads, message.epoch)),
        });
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
                && !self.replication.is_connected(&key(&p))
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
        p.sequence = self.replication.follow(&owner).map_or(0, |f| f.sequence);
        p.heads = r
            .heads
            .as_ref()
            .and_then(|e| e.to_bytes().ok())
            .map(|b| {
                use sha2::Digest;
                hex::encode(&sha2::Sha256::digest(b)[..8])
            })
            .unwrap_or_default();
        let connected = peer_key_of(&owner).is_some_and(|k| self.replication.is_connected(&k));
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
        self.replicate(if on {
            Input::Connected(key(&peer))
        } else {
            Input::Disconnected(key(&peer))
        });
        if let Ok(mut v) = self.view.write() {
            for (c, p) in v.caisses.iter_mut() {
                if peer_id_of(c) == Some(peer) {
                    p.connected = on;
                }
            }
        }
    }

    /// Milliseconds since the task started: the time the core's
    /// replication and conduct read.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Feed the core's replication one input and carry out what it asks:
    /// follow or drop documents, start sync sessions, log what it found.
    /// Returns what to do with gossiped heads, if the input was heads.
    fn replicate(&mut self, input: Input) -> Option<Acceptance> {
        let vouched = self.vouched_set();
        let cx = Context {
            now_ms: self.now_ms(),
            vouched: &vouched,
            peer_of: &peer_key_of,
        };
        let outputs = self.replication.handle(input, &cx);
        let mut acceptance = None;
        for o in outputs {
            match o {
                Output::Gossip(a) => acceptance = Some(a),
                Output::Follow(owner) => {
                    self.replicas
                        .entry(owner)
                        .or_insert_with(|| Replica::new(AutoCommit::new(), None));
                }
                Output::NoRoom(owner) => {
                    tracing::warn!(target: "caisse::events::federation", caisse = %owner.short(), "ignored a new document: this node already follows the most it will");
                }
                Output::Evict(owner) => self.evict(owner),
                Output::Equivocation {
                    owner,
                    sequence,
                    take,
                    source,
                } => {
                    self.stats.equivocations.fetch_add(1, Ordering::Relaxed);
                    let peer = source.as_ref().and_then(peer_of_key);
                    tracing::warn!(target: "caisse::security", caisse = %owner.short(), sequence, peer = ?peer, keep = if take { "the one just offered" } else { "the one known" }, "the owner signed two versions of its document under one sequence (equivocation): keeping the one with the smaller digest, as every honest caisse does");
                }
                Output::Stale { owner, sequence } => {
                    tracing::debug!(target: "caisse::events::federation", caisse = %owner.short(), sequence, "stale or replayed heads ignored");
                }
                Output::StartSync {
                    owner,
                    peer,
                    from_scratch,
                    want,
                } => self.start_sync(owner, peer, from_scratch, want),
            }
        }
        acceptance
    }

    /// Check signed heads and hand them to the replication. Returns the acceptance.
    fn consider_heads(&mut self, env: &Envelope, source: Option<PeerId>) -> MessageAcceptance {
        let v = match env.open::<DocumentHeads>(&self.federation) {
            Ok(v) => v,
            Err(e) => {
                // Logged and counted by the caller, against the peer.
                tracing::debug!(target: "caisse::events::federation", error = %e, peer = ?source, "rejected document heads");
                return MessageAcceptance::Reject;
            }
        };
        let m = v.message;
        let acceptance = self.replicate(Input::Heads {
            owner: m.caisse,
            sequence: m.sequence,
            heads: m.heads,
            epoch: m.epoch,
            envelope: env.clone(),
            source: source.as_ref().map(key),
        });
        match acceptance {
            Some(Acceptance::Accept) => MessageAcceptance::Accept,
            _ => MessageAcceptance::Ignore,
        }
    }

    /// Whether this caisse vouches for `owner`'s document (see
    /// [`FederationView::vouched_by`]).
    fn vouched(&self, owner: &CaisseId) -> bool {
        self.vouched_set().contains(owner)
    }

    /// Every caisse [`Self::vouched`] is true for, computed once per change
    /// of the view or of the recognition policy.
    fn vouched_set(&self) -> Arc<HashSet<CaisseId>> {
        if let Some(set) = self.vouched_cache.borrow().as_ref() {
            return set.clone();
        }
        let set = Arc::new(
            self.view
                .read()
                .map(|v| v.vouched_by(&self.me, &self.recognition))
                .unwrap_or_default(),
        );
        *self.vouched_cache.borrow_mut() = Some(set.clone());
        set
    }

    /// The view or the recognition policy changed: vouching is recomputed
    /// on its next use.
    fn forget_vouched(&self) {
        *self.vouched_cache.borrow_mut() = None;
    }

    /// Stop following `owner`'s document (the replication dropped it):
    /// dropped from memory, disk and view.
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

    /// Start the syncs the replication finds due.
    fn start_pending_syncs(&mut self) {
        self.replicate(Input::Tick);
    }

    /// Run one sync session with `peer` towards `want`, from a fork of the
    /// document held or from an empty one; its end comes back as
    /// [`Internal::SyncDone`].
    fn start_sync(
        &mut self,
        owner: CaisseId,
        peer: PeerKey,
        from_scratch: bool,
        want: Vec<[u8; 32]>,
    ) {
        let Some(pid) = peer_of_key(&peer) else {
            // Not a peer id: the replication only names connected peers.
            self.replicate(Input::SyncReturned { owner, peer });
            return;
        };
        let fork = match self.replicas.get_mut(&owner) {
            Some(r) if !from_scratch => r.doc.fork(),
            _ => AutoCommit::new(),
        };
        let net = self.network.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let result = sync_session(&net, pid, owner, fork, &want).await;
            let _ = tx
                .send(Internal::SyncDone {
                    caisse: owner,
                    peer: pid,
                    result,
                })
                .await;
        });
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
        self.replicate(Input::SyncReturned {
            owner: caisse,
            peer: key(&peer),
        });
        if !self.replicas.contains_key(&caisse) {
            return;
        }
        let not_taken = |end| Input::SyncNotTaken {
            owner: caisse,
            peer: key(&peer),
            end,
        };
        let (mut fork, offered) = match result {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(caisse = %caisse.short(), %peer, error = %e, "sync failed; will retry");
                self.stats.sync_failed.fetch_add(1, Ordering::Relaxed);
                self.replicate(not_taken(SyncEnd::Failed));
                return;
            }
        };
        // Newer signed heads offered by the responder count too.
        if let Some(env) = offered {
            let _ = self.consider_heads(&env, Some(peer));
        }
        let Some(wanted) = self
            .replication
            .follow(&caisse)
            .and_then(|f| f.wanted.clone())
        else {
            return;
        };
        match judge_fork(&mut fork, &wanted.heads) {
            SyncVerdict::Accept => {}
            SyncVerdict::Incomplete => {
                self.stats.sync_failed.fetch_add(1, Ordering::Relaxed);
                self.replicate(not_taken(SyncEnd::Incomplete));
                return;
            }
            SyncVerdict::Forged => {
                self.stats.sync_failed.fetch_add(1, Ordering::Relaxed);
                self.stats.sync_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "caisse::events::federation", caisse = %caisse.short(), %peer, "rejected a sync holding changes the owner did not sign");
                self.replicate(not_taken(SyncEnd::Forged));
                return;
            }
        }
        self.stats.sync_accepted.fetch_add(1, Ordering::Relaxed);
        self.adopt(caisse, fork, wanted.sequence, wanted.envelope);
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
        let Some(f) = self.replication.follow(&owner) else {
            return;
        };
        let Some(wanted) = f.wanted.clone() else {
            return;
        };
        if wanted.sequence != v.message.sequence || wanted.epoch != f.epoch || f.syncing {
            return;
        }
        let Some(r) = self.replicas.get_mut(&owner) else {
            return;
        };
        if sorted_heads(&mut r.doc) != sorted(base.to_vec()) {
            return;
        }
        let mut fork = r.doc.fork();
        if fork.load_incremental(changes).is_err()
            || judge_fork(&mut fork, &wanted.heads) != SyncVerdict::Accept
        {
            tracing::debug!(target: "caisse::events::federation", caisse = %owner.short(), sequence = wanted.sequence, "gossiped changes do not give the signed heads; pulling instead");
            return;
        }
        self.stats.changes_applied.fetch_add(1, Ordering::Relaxed);
        self.adopt(owner, fork, wanted.sequence, wanted.envelope);
    }

    /// Take `fork` as `caisse`'s document at the signed heads `env` (the
    /// version the replication wants): persist it, refresh the view, hand
    /// it to the writer.
    fn adopt(&mut self, caisse: CaisseId, fork: AutoCommit, seq: u64, env: Envelope) {
        let Some(r) = self.replicas.get_mut(&caisse) else {
            return;
        };
        r.doc = fork;
        r.heads = Some(env.clone());
        let bytes = r.doc.save();
        self.replicate(Input::Adopted { owner: caisse });
        self.persist(caisse, bytes, &env);
        self.refresh_view(caisse, true);
        self.share_known();
        if let Some(p) = peer_id_of(&caisse)
            && !self.replication.is_connected(&key(&p))
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

    /// Whether many documents changed lately (see [`Replication::busy`]).
    fn busy(&self) -> bool {
        self.replication.busy(self.now_ms())
    }

    /// Ask one connected peer, chosen in turn, what it holds.
    fn ask_a_catalog(&mut self) {
        let peers: Vec<PeerId> = self
            .replication
            .connected()
            .filter_map(peer_of_key)
            .collect();
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
