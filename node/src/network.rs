//! The libp2p network of a caisse: one task owns the `Swarm`.
//!
//! Transport TCP + Noise + Yamux; identify; Kademlia as an address book
//! only (client mode, no records stored, no queries, entries added by hand:
//! bootstrap addresses from the config and the addresses caisses sign in
//! their documents; an address a peer merely claims is never dialled);
//! gossipsub with explicit validation (messages are reported
//! Accept/Reject/Ignore by the federation before gossipsub forwards them;
//! message ids are content hashes); one request-response protocol carrying
//! length-prefixed byte frames (requests at most [`MAX_REQUEST`]);
//! connection limits, with few slots for strangers (peers that are not
//! caisses this node follows), per address and in all, reaped after
//! [`STRANGER_GRACE`]; and a block list.
//!
//! Nothing here decodes application bytes: frames go to the federation as
//! they are, so every malformed frame reaches code that counts and logs it.
//! The rest of the node talks to this task through [`Network`] (typed
//! commands, oneshot answers) and receives [`NetEvent`]s on a channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use caisse_protocol::CaisseId;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, identify, kad,
    noise, tcp, yamux,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

/// The request-response protocol of caisses.
pub const RPC_PROTOCOL: &str = "/caisse/rpc/1.0.0";
/// The Kademlia protocol of caisses.
pub const KAD_PROTOCOL: &str = "/caisse/kad/1.0.0";
/// Largest response frame.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Largest request frame (a sync round, a purchase, a list of receipt ids).
pub const MAX_REQUEST: usize = 1024 * 1024;
/// Request or response streams open at once on one connection.
pub const MAX_STREAMS: usize = 16;
/// Connections of strangers (peers this node does not know as caisses it
/// follows, nor as bootstrap peers) open at once.
pub const MAX_STRANGERS: usize = 128;
/// Strangers' connections from one IP address (loopback excepted, where
/// test networks live).
pub const MAX_STRANGERS_PER_IP: usize = 4;
/// How long a stranger may stay connected without becoming known.
pub const STRANGER_GRACE: Duration = Duration::from_secs(30);
/// Largest gossip message: gossip only announces heads; bodies travel by sync.
pub const MAX_GOSSIP: usize = 8 * 1024;

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// A bad key.
    #[error("network key: {0}")]
    Key(String),
    /// A bad address in the config.
    #[error("bad libp2p address {addr:?}: {detail}")]
    Address {
        /// The address.
        addr: String,
        /// What is wrong.
        detail: String,
    },
    /// The transport or a behaviour could not be built.
    #[error("network setup: {0}")]
    Setup(String),
}

/// The libp2p peer id of a caisse (derived from its ed25519 key).
///
/// Memoised: deriving it decompresses the key (a field inversion and a
/// square root), and the federation asks for it per document, per tick
/// and per known caisse; in a `federation-100` storm of publications that
/// decompression was about 12 % of a node's CPU samples. Bounded: emptied
/// when full.
pub fn peer_id_of(caisse: &CaisseId) -> Option<PeerId> {
    static KNOWN: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<CaisseId, Option<PeerId>>>,
    > = std::sync::LazyLock::new(Default::default);
    const MAX_KNOWN: usize = 1 << 14;
    if let Some(p) = KNOWN.lock().ok().and_then(|k| k.get(caisse).copied()) {
        return p;
    }
    let peer = libp2p::identity::ed25519::PublicKey::try_from_bytes(caisse.as_bytes())
        .ok()
        .map(|pk| libp2p::identity::PublicKey::from(pk).to_peer_id());
    if let Ok(mut k) = KNOWN.lock() {
        if k.len() >= MAX_KNOWN {
            k.clear();
        }
        k.insert(*caisse, peer);
    }
    peer
}

/// Frames of bytes with a 4-byte big-endian length, at most [`MAX_FRAME`].
#[derive(Clone)]
pub struct FrameCodec {
    failures: Arc<AtomicU64>,
    max: usize,
    max_request: usize,
}

impl Default for FrameCodec {
    fn default() -> FrameCodec {
        FrameCodec {
            failures: Arc::default(),
            max: MAX_FRAME,
            max_request: MAX_REQUEST,
        }
    }
}

async fn read_frame<T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
    failures: &AtomicU64,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "caisse::events::network", len, max, "oversized frame refused");
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes over the {max} byte limit"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    data: Vec<u8>,
    max: usize,
) -> std::io::Result<()> {
    if data.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    io.write_all(&(data.len() as u32).to_be_bytes()).await?;
    io.write_all(&data).await?;
    io.close().await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        read_frame(io, &self.failures, self.max_request).await
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        read_frame(io, &self.failures, self.max).await
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()> {
        write_frame(io, req, self.max_request).await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()> {
        write_frame(io, res, self.max).await
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossip: gossipsub::Behaviour,
    rpc: request_response::Behaviour<FrameCodec>,
}

/// What the network tells the rest of the node.
#[derive(Debug)]
pub enum NetEvent {
    /// A gossip message waiting for validation (report it with [`Network::validate`]).
    Gossip {
        /// The peer that forwarded it.
        source: PeerId,
        /// Its id (content hash).
        id: MessageId,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// A request from a peer; answer with [`Network::respond`].
    Request {
        /// The peer.
        peer: PeerId,
        /// The request bytes.
        data: Vec<u8>,
        /// Where the answer goes.
        channel: ResponseChannel<Vec<u8>>,
    },
    /// A connection to a peer was established.
    Connected(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
}

enum Command {
    Publish(Vec<u8>, oneshot::Sender<Result<(), String>>),
    Request(PeerId, Vec<u8>, oneshot::Sender<Result<Vec<u8>, String>>),
    Respond(ResponseChannel<Vec<u8>>, Vec<u8>),
    Validate(MessageId, PeerId, MessageAcceptance),
    Dial(Multiaddr),
    DialPeer(PeerId),
    Addresses(PeerId, Vec<Multiaddr>),
    Known(std::collections::HashSet<PeerId>),
    Provide(Vec<u8>),
    Block(PeerId, bool),
    Info(oneshot::Sender<NetInfo>),
}

/// A snapshot of the network's state.
#[derive(Clone, Debug, Default)]
pub struct NetInfo {
    /// This node's peer id.
    pub peer_id: Option<PeerId>,
    /// Addresses it listens on (with `/p2p/<peer id>`).
    pub listen: Vec<Multiaddr>,
    /// Connected peers.
    pub connected: Vec<PeerId>,
    /// Blocked peers.
    pub blocked: Vec<PeerId>,
    /// Request or response frames refused as malformed or oversized.
    pub frame_failures: u64,
    /// Bytes of requests and responses received (mostly document sync).
    pub rpc_bytes_received: u64,
    /// Bytes of requests and responses sent.
    pub rpc_bytes_sent: u64,
}

/// A cloneable handle to the swarm task.
#[derive(Clone)]
pub struct Network {
    tx: mpsc::Sender<Command>,
    local: PeerId,
}

/// What the network needs to start.
pub struct NetworkConfig {
    /// The caisse's key bytes (the same ed25519 key: the peer id is the caisse id).
    pub secret: [u8; 32],
    /// The federation (names the gossip topic).
    pub federation: String,
    /// Addresses to listen on.
    pub listen: Vec<String>,
    /// Addresses (with `/p2p/<peer id>`) to dial at start.
    pub bootstrap: Vec<String>,
    /// Limits other than the protocol's, for test peers that misbehave on purpose.
    pub limits: Option<(usize, usize)>,
    /// Addresses to announce besides the ones listened on (a node behind a
    /// NAT or a proxy names its public address here).
    pub announce: Vec<String>,
}

fn parse_addr(a: &str) -> Result<Multiaddr, NetworkError> {
    a.parse()
        .map_err(|e: libp2p::multiaddr::Error| NetworkError::Address {
            addr: a.to_owned(),
            detail: e.to_string(),
        })
}

/// The gossip topic of a federation.
pub fn heads_topic(federation: &str) -> IdentTopic {
    IdentTopic::new(format!("caisse/{federation}/heads/v1"))
}

/// Start the swarm task. Returns the handle, the event stream and the task.
pub async fn start(
    cfg: NetworkConfig,
) -> Result<
    (
        Network,
        mpsc::Receiver<NetEvent>,
        tokio::task::JoinHandle<()>,
    ),
    NetworkError,
> {
    let mut secret = cfg.secret;
    let keypair =
        Keypair::ed25519_from_bytes(&mut secret).map_err(|e| NetworkError::Key(e.to_string()))?;
    let local = keypair.public().to_peer_id();
    let topic = heads_topic(&cfg.federation);
    let (max_frame, max_gossip) = cfg.limits.unwrap_or((MAX_FRAME, MAX_GOSSIP));
    let codec = FrameCodec {
        failures: Arc::default(),
        max: max_frame,
        // A test peer that misbehaves on purpose may send requests as
        // large as its own limit.
        max_request: if cfg.limits.is_some() {
            max_frame
        } else {
            MAX_REQUEST
        },
    };
    let failures = codec.failures.clone();
    let topic_hash = topic.hash();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetworkError::Setup(e.to_string()))?
        .with_behaviour(|key| {
            let gossip_config = gossipsub::ConfigBuilder::default()
                .validate_messages()
                // What travels is self-authenticating (signed heads and
                // statements, checked by the federation): a libp2p signature
                // per message as well cost one ed25519 verification per copy
                // received (curve25519 arithmetic fell from about 15 % to
                // 2.5 % of a 30-caisse set-up's CPU samples without it).
                .validation_mode(gossipsub::ValidationMode::Anonymous)
                .max_transmit_size(max_gossip)
                .heartbeat_interval(Duration::from_millis(500))
                // Every caisse connects to every caisse it vouches for and
                // a publisher sends to all of them itself (flood publish):
                // the mesh is for what that first hop loses. A smaller mesh
                // than the default (6, 5-12) sends fewer duplicates; at 100
                // caisses on 2 cores, a storm of publications (every caisse
                // at once, as at a month's end) took each node about 20 s.
                .mesh_n(4)
                .mesh_n_low(3)
                .mesh_n_high(8)
                .gossip_lazy(4)
                .mesh_outbound_min(2)
                // Under load a forward waiting over a second was dropped,
                // and its receivers learned of the version only at the
                // next catalog (10 s).
                .forward_queue_duration(Duration::from_secs(5))
                .message_id_fn(|m: &gossipsub::Message| {
                    MessageId::from(hex::encode(Sha256::digest(&m.data)))
                })
                .build()
                .map_err(|e| e.to_string())?;
            let mut gossip = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Anonymous,
                gossip_config,
            )?;
            let mut params = gossipsub::PeerScoreParams {
                // No penalty for peers sharing an address. gossipsub's default
                // (-5 × (peers on one IP - 10)²) graylisted every peer of a
                // federation with more than about a dozen caisses on one host
                // (a testnet, a host serving several caisses): all their gossip
                // was dropped and changes travelled only by the 10-second
                // catalog (tests/propagation.rs in the testnet). Who takes part
                // is decided by signed recognition, and strangers are already
                // limited per address when they connect.
                ip_colocation_factor_weight: 0.0,
                // Nor for "broken promises" (IWANTs unanswered within 3 s) and
                // early grafts: counted squared at -10 each, they took honest
                // peers to -16,000 in federation-30 (a restart, a pruned mesh)
                // and every message from them was dropped. Peers that send
                // what does not verify are scored below (P4) and struck and
                // banned by the federation itself.
                behaviour_penalty_weight: 0.0,
                ..Default::default()
            };
            params.topics.insert(
                topic_hash.clone(),
                gossipsub::TopicScoreParams {
                    topic_weight: 1.0,
                    invalid_message_deliveries_weight: -100.0,
                    invalid_message_deliveries_decay: 0.5,
                    // No penalty for mesh peers that deliver few messages:
                    // the defaults expect about ten a second from each, and
                    // this topic carries a few heads a minute. A peer pruned
                    // from the mesh took up to -400 and was graylisted,
                    // every message from it dropped, for seconds at a time;
                    // in federation-30 one run in two waited on the
                    // 10-second catalog for its settlement answers (69 s
                    // instead of 9 s).
                    mesh_message_deliveries_weight: 0.0,
                    mesh_failure_penalty_weight: 0.0,
                    ..Default::default()
                },
            );
            gossip.with_peer_score(params, gossipsub::PeerScoreThresholds::default())?;
            // An address book, not a DHT: no records or provider records
            // stored for anyone, no answers to queries, entries by hand.
            let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
            kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
            kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
            let mut kad = kad::Behaviour::with_config(
                key.public().to_peer_id(),
                kad::store::MemoryStore::with_config(
                    key.public().to_peer_id(),
                    kad::store::MemoryStoreConfig {
                        max_records: 0,
                        max_value_bytes: 0,
                        max_providers_per_key: 0,
                        max_provided_keys: 0,
                    },
                ),
                kad_config,
            );
            kad.set_mode(Some(kad::Mode::Client));
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(1024))
                        .with_max_established_per_peer(Some(2))
                        .with_max_pending_incoming(Some(64)),
                ),
                blocked: Default::default(),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/caisse/1.0.0".into(),
                    key.public(),
                )),
                kad,
                gossip,
                rpc: request_response::Behaviour::with_codec(
                    codec.clone(),
                    [(
                        StreamProtocol::new(RPC_PROTOCOL),
                        request_response::ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_secs(10))
                        .with_max_concurrent_streams(MAX_STREAMS),
                ),
            })
        })
        .map_err(|e| NetworkError::Setup(e.to_string()))?
        .with_swarm_config(|c| {
            // Every request opens a stream; with the lazy negotiation the
            // request travels with the protocol's name instead of one round
            // trip after it (each peer speaks the same protocols): a
            // cross-caisse purchase and each sync round cost one round trip
            // less between caisses an ocean or a country apart.
            c.with_idle_connection_timeout(Duration::from_secs(300))
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();
    swarm
        .behaviour_mut()
        .gossip
        .subscribe(&topic)
        .map_err(|e| NetworkError::Setup(e.to_string()))?;
    let listen = if cfg.listen.is_empty() {
        vec!["/ip4/127.0.0.1/tcp/0".to_owned()]
    } else {
        cfg.listen.clone()
    };
    for a in &listen {
        swarm
            .listen_on(parse_addr(a)?)
            .map_err(|e| NetworkError::Address {
                addr: a.clone(),
                detail: e.to_string(),
            })?;
    }
    for a in &cfg.announce {
        swarm.add_external_address(parse_addr(a)?);
    }
    let mut bootstrap = Vec::new();
    for a in &cfg.bootstrap {
        bootstrap.push(parse_addr(a)?);
    }
    let (tx, rx) = mpsc::channel(1024);
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    // Wait for the listeners to be bound so the addresses can be published.
    let mut listening = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while listening.len() < listen.len() {
        match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => listening.push(address),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let mut redial = Vec::new();
    for addr in bootstrap {
        let peer = match addr.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(peer)) => Some(peer),
            _ => None,
        };
        if let Some(peer) = peer {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(target: "caisse::events::network", %addr, error = %e, "cannot dial bootstrap peer");
        }
        redial.push(Redial {
            addr,
            peer,
            next: tokio::time::Instant::now() + REDIAL_FIRST,
            backoff: REDIAL_FIRST,
        });
    }
    let task = SwarmTask {
        swarm,
        commands: rx,
        events: ev_tx,
        topic,
        pending: HashMap::new(),
        listening,
        failures,
        blocked: Vec::new(),
        known: redial.iter().filter_map(|r| r.peer).collect(),
        bootstrap_peers: redial.iter().filter_map(|r| r.peer).collect(),
        book: redial
            .iter()
            .filter_map(|r| r.peer.map(|p| (p, vec![r.addr.clone()])))
            .collect(),
        rpc_bytes_received: 0,
        rpc_bytes_sent: 0,
        links: LinkBacklog::default(),
        strangers: HashMap::new(),
        strangers_refused: 0,
        redial,
    };
    let handle = tokio::spawn(task.run());
    Ok((Network { tx, local }, ev_rx, handle))
}

struct SwarmTask {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    topic: IdentTopic,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, String>>>,
    listening: Vec<Multiaddr>,
    failures: Arc<AtomicU64>,
    blocked: Vec<PeerId>,
    redial: Vec<Redial>,
    /// Peers that are not strangers: caisses the federation follows, and
    /// the bootstrap peers.
    known: std::collections::HashSet<PeerId>,
    bootstrap_peers: Vec<PeerId>,
    /// Open connections of strangers: peer, remote IP, since when.
    strangers: HashMap<
        libp2p::swarm::ConnectionId,
        (PeerId, Option<std::net::IpAddr>, tokio::time::Instant),
    >,
    /// Strangers' connections closed, for the log's summary.
    strangers_refused: u64,
    /// Where to dial each caisse: the addresses it signed (and bootstrap
    /// addresses). Kept here because Kademlia's table holds at most 20 peers
    /// per distance bucket and about half of all peers share the farthest
    /// one: past about 40 caisses it silently forgot some, and purchases
    /// for their cards failed with "Failed to dial the requested peer".
    book: HashMap<PeerId, Vec<Multiaddr>>,
    /// Request and response bytes received and sent (for the metrics).
    rpc_bytes_received: u64,
    rpc_bytes_sent: u64,
    /// Connection changes waiting for room in the federation's queue.
    links: LinkBacklog,
}

/// Connection changes the federation task has not taken yet because its
/// queue was full: the latest state of each peer, in the order peers
/// changed. Gossip and requests are dropped when the queue is full (their
/// senders retry); a dropped `Disconnected` left a peer counted as
/// connected for good, a dropped `Connected` one never asked to sync.
#[derive(Default)]
struct LinkBacklog {
    order: std::collections::VecDeque<PeerId>,
    state: HashMap<PeerId, bool>,
}

/// Peers whose connection change may wait at most; past it the oldest is
/// forgotten (logged).
const MAX_LINK_BACKLOG: usize = 10_000;

impl LinkBacklog {
    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Note that `peer` is now connected (`on`) or not.
    fn note(&mut self, peer: PeerId, on: bool) {
        if self.state.insert(peer, on).is_none() {
            self.order.push_back(peer);
        }
        if self.order.len() > MAX_LINK_BACKLOG
            && let Some(old) = self.order.pop_front()
        {
            self.state.remove(&old);
            tracing::warn!(target: "caisse::events::network", peer = %old, "a connection change was dropped: the node is overloaded");
        }
    }

    /// The oldest change, as the event to hand over.
    fn pop(&mut self) -> Option<NetEvent> {
        let peer = self.order.pop_front()?;
        Some(match self.state.remove(&peer) {
            Some(true) => NetEvent::Connected(peer),
            _ => NetEvent::Disconnected(peer),
        })
    }
}

/// Peers the address book holds at most (above the followed documents' cap).
pub const MAX_BOOK_PEERS: usize = 4096;
/// Addresses kept per peer (its newest).
pub const MAX_BOOK_ADDRESSES: usize = 8;

/// The first wait before dialling a lost bootstrap peer again; it doubles
/// after each failed attempt up to [`REDIAL_MAX`].
const REDIAL_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two dials of a lost bootstrap peer.
const REDIAL_MAX: Duration = Duration::from_secs(30);

/// A configured bootstrap peer, dialled again with exponential backoff
/// while it is not connected: a caisse back from a power cut is found
/// within seconds, and one that stays away costs a dial every 30 s.
struct Redial {
    addr: Multiaddr,
    peer: Option<PeerId>,
    next: tokio::time::Instant,
    backoff: Duration,
}

impl SwarmTask {
    /// Dial the bootstrap peers that are due and not connected.
    fn redial_due(&mut self) {
        let now = tokio::time::Instant::now();
        for r in &mut self.redial {
            let connected = r.peer.is_some_and(|p| self.swarm.is_connected(&p));
            let blocked = r.peer.is_some_and(|p| self.blocked.contains(&p));
            if connected || blocked || r.peer.is_none() {
                r.backoff = REDIAL_FIRST;
                r.next = now + REDIAL_FIRST;
                continue;
            }
            if now >= r.next {
                tracing::debug!(target: "caisse::events::network", addr = %r.addr, "dialling a lost bootstrap peer again");
                let _ = self.swarm.dial(r.addr.clone());
                r.next = now + r.backoff;
                r.backoff = (r.backoff * 2).min(REDIAL_MAX);
            }
        }
    }

    /// A connection from a peer this node does not know: kept only while
    /// there are few of them (in all, and from its IP address).
    fn admit_stranger(
        &mut self,
        peer: PeerId,
        connection: libp2p::swarm::ConnectionId,
        ip: Option<std::net::IpAddr>,
    ) {
        let same_ip = self
            .strangers
            .values()
            .filter(|(_, i, _)| ip.is_some() && *i == ip)
            .count();
        let crowded_ip = ip.is_some_and(|i| !i.is_loopback()) && same_ip >= MAX_STRANGERS_PER_IP;
        if self.strangers.len() >= MAX_STRANGERS || crowded_ip {
            self.refuse_stranger(connection, peer, "too many strangers connected");
            return;
        }
        self.strangers
            .insert(connection, (peer, ip, tokio::time::Instant::now()));
    }

    /// Peers whose gossip score is below zero (their messages are dropped
    /// below -80), at debug level.
    fn log_low_scores(&self) {
        if !tracing::enabled!(target: "caisse::events::network", tracing::Level::DEBUG) {
            return;
        }
        let gossip = &self.swarm.behaviour().gossip;
        for peer in self.swarm.connected_peers() {
            if let Some(score) = gossip.peer_score(peer)
                && score < 0.0
            {
                tracing::debug!(target: "caisse::events::network", %peer, score, "low gossip score");
            }
        }
    }

    /// Remember an address to dial `peer` at (in Kademlia's table too).
    fn remember(&mut self, peer: PeerId, addr: Multiaddr) {
        self.swarm
            .behaviour_mut()
            .kad
            .add_address(&peer, addr.clone());
        if !self.book.contains_key(&peer) && self.book.len() >= MAX_BOOK_PEERS {
            tracing::debug!(target: "caisse::events::network", %peer, "address book full");
            return;
        }
        let addrs = self.book.entry(peer).or_default();
        if let Some(i) = addrs.iter().position(|a| *a == addr) {
            addrs.remove(i);
        }
        addrs.push(addr);
        if addrs.len() > MAX_BOOK_ADDRESSES {
            addrs.remove(0);
        }
    }

    /// Dial `peer` at the addresses the book holds for it, unless it is
    /// connected, being dialled, or blocked.
    fn dial_known(&mut self, peer: PeerId) {
        if self.swarm.is_connected(&peer) || self.blocked.contains(&peer) {
            return;
        }
        let addrs = self.book.get(&peer).cloned().unwrap_or_default();
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(target: "caisse::events::network", %peer, error = %e, "cannot dial");
        }
    }

    fn refuse_stranger(
        &mut self,
        connection: libp2p::swarm::ConnectionId,
        peer: PeerId,
        why: &'static str,
    ) {
        self.strangers.remove(&connection);
        self.swarm.close_connection(connection);
        self.strangers_refused += 1;
        // A few lines, then one in a thousand: a crowd must not flood the log.
        if self.strangers_refused <= 5 || self.strangers_refused.is_multiple_of(1000) {
            tracing::info!(target: "caisse::security", %peer, why, refused = self.strangers_refused, "closed a stranger's connection");
        }
    }

    /// Close strangers' connections older than [`STRANGER_GRACE`], and
    /// stop counting peers that became known.
    fn reap_strangers(&mut self) {
        let known = &self.known;
        self.strangers.retain(|_, (p, _, _)| !known.contains(p));
        let now = tokio::time::Instant::now();
        let old: Vec<(libp2p::swarm::ConnectionId, PeerId)> = self
            .strangers
            .iter()
            .filter(|(_, (_, _, since))| now.duration_since(*since) > STRANGER_GRACE)
            .map(|(c, (p, _, _))| (*c, *p))
            .collect();
        for (c, p) in old {
            self.refuse_stranger(c, p, "connected too long without becoming known");
        }
    }

    async fn run(mut self) {
        let mut reap_timer = tokio::time::interval(Duration::from_secs(2));
        let mut redial_timer = tokio::time::interval(REDIAL_FIRST);
        redial_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let events = self.events.clone();
        loop {
            tokio::select! {
                // Waiting connection changes, as soon as there is room.
                Ok(permit) = events.reserve(), if !self.links.is_empty() => {
                    if let Some(ev) = self.links.pop() {
                        permit.send(ev);
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.event(ev),
                _ = reap_timer.tick() => {
                    self.reap_strangers();
                    self.log_low_scores();
                }
                _ = redial_timer.tick() => self.redial_due(),
            }
        }
        tracing::info!("network stopped");
    }

    fn emit(&mut self, ev: NetEvent) {
        let link = match &ev {
            NetEvent::Connected(p) => Some((*p, true)),
            NetEvent::Disconnected(p) => Some((*p, false)),
            _ => None,
        };
        // Connection changes keep their order behind those waiting.
        if let Some((peer, on)) = link
            && !self.links.is_empty()
        {
            self.links.note(peer, on);
            return;
        }
        match self.events.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(NetEvent::Connected(p))) => {
                self.links.note(p, true)
            }
            Err(mpsc::error::TrySendError::Full(NetEvent::Disconnected(p))) => {
                self.links.note(p, false)
            }
            Err(e) => {
                tracing::warn!(target: "caisse::events::network", error = %e, "network event dropped: the node is overloaded");
            }
        }
    }

    fn command(&mut self, c: Command) {
        let b = self.swarm.behaviour_mut();
        match c {
            Command::Publish(data, reply) => {
                let r = b
                    .gossip
                    .publish(self.topic.clone(), data)
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
            Command::Request(peer, data, reply) => {
                // Dialled here with the book's addresses; the request waits
                // for the connection.
                self.dial_known(peer);
                self.rpc_bytes_sent += data.len() as u64;
                let id = self.swarm.behaviour_mut().rpc.send_request(&peer, data);
                self.pending.insert(id, reply);
            }
            Command::Respond(channel, data) => {
                self.rpc_bytes_sent += data.len() as u64;
                let _ = self.swarm.behaviour_mut().rpc.send_response(channel, data);
            }
            Command::Validate(id, source, acceptance) => {
                b.gossip
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::Dial(addr) => {
                if let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() {
                    self.remember(peer, addr.clone());
                }
                let _ = self.swarm.dial(addr);
            }
            Command::DialPeer(peer) => self.dial_known(peer),
            Command::Addresses(peer, addrs) => {
                for a in addrs {
                    self.remember(peer, a);
                }
            }
            Command::Provide(key) => {
                let _ = b.kad.start_providing(kad::RecordKey::new(&key));
            }
            Command::Known(mut known) => {
                known.extend(self.bootstrap_peers.iter().copied());
                self.known = known;
            }
            Command::Block(peer, block) => {
                if block {
                    b.blocked.block_peer(peer);
                    if !self.blocked.contains(&peer) {
                        self.blocked.push(peer);
                    }
                } else {
                    b.blocked.unblock_peer(peer);
                    self.blocked.retain(|p| *p != peer);
                }
            }
            Command::Info(reply) => {
                let local = *self.swarm.local_peer_id();
                let listen = self
                    .listening
                    .iter()
                    .chain(self.swarm.external_addresses())
                    .map(|a| a.clone().with(libp2p::multiaddr::Protocol::P2p(local)))
                    .collect();
                let _ = reply.send(NetInfo {
                    peer_id: Some(local),
                    listen,
                    connected: self.swarm.connected_peers().copied().collect(),
                    blocked: self.blocked.clone(),
                    frame_failures: self.failures.load(Ordering::Relaxed),
                    rpc_bytes_received: self.rpc_bytes_received,
                    rpc_bytes_sent: self.rpc_bytes_sent,
                });
            }
        }
    }

    fn event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } if !self.listening.contains(&address) => {
                self.listening.push(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                if !self.known.contains(&peer_id) {
                    let ip = endpoint.get_remote_address().iter().find_map(|p| match p {
                        libp2p::multiaddr::Protocol::Ip4(a) => Some(std::net::IpAddr::V4(a)),
                        libp2p::multiaddr::Protocol::Ip6(a) => Some(std::net::IpAddr::V6(a)),
                        _ => None,
                    });
                    self.admit_stranger(peer_id, connection_id, ip);
                }
                if num_established.get() == 1 {
                    tracing::debug!(target: "caisse::events::network", peer = %peer_id, "connected");
                    // Only an address this node dialled itself is worth
                    // keeping; a listener sees the peer's ephemeral port.
                    if endpoint.is_dialer() {
                        self.remember(peer_id, endpoint.get_remote_address().clone());
                    }
                    self.emit(NetEvent::Connected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.strangers.remove(&connection_id);
                if num_established == 0 {
                    self.emit(NetEvent::Disconnected(peer_id));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.emit(NetEvent::Gossip {
                source: propagation_source,
                id: message_id,
                data: message.data,
            }),
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.rpc_bytes_received += request.len() as u64;
                    self.emit(NetEvent::Request {
                        peer,
                        data: request,
                        channel,
                    })
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.rpc_bytes_received += response.len() as u64;
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(
                request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    peer,
                    ..
                },
            )) => {
                tracing::debug!(target: "caisse::events::network", %peer, %error, "request failed");
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(
                request_response::Event::InboundFailure { peer, error, .. },
            )) => {
                tracing::warn!(target: "caisse::events::network", %peer, %error, "inbound request refused");
            }
            _ => {}
        }
    }
}

impl Network {
    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Publish bytes on the federation's gossip topic.
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Publish(data, tx))
            .await
            .map_err(|_| "network stopped".to_owned())?;
        rx.await.map_err(|_| "network stopped".to_owned())?
    }

    /// Send a request to a peer and wait for its answer.
    pub async fn request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Request(peer, data, tx))
            .await
            .map_err(|_| "network stopped".to_owned())?;
        rx.await.map_err(|_| "network stopped".to_owned())?
    }

    /// Answer a request.
    pub async fn respond(&self, channel: ResponseChannel<Vec<u8>>, data: Vec<u8>) {
        let _ = self.tx.send(Command::Respond(channel, data)).await;
    }

    /// Report the validation result of a gossip message.
    pub async fn validate(&self, id: MessageId, source: PeerId, acceptance: MessageAcceptance) {
        let _ = self
            .tx
            .send(Command::Validate(id, source, acceptance))
            .await;
    }

    /// Dial an address.
    pub async fn dial(&self, addr: Multiaddr) {
        let _ = self.tx.send(Command::Dial(addr)).await;
    }

    /// Dial a peer at the addresses known for it, unless connected. Never
    /// waits: dropped when the network's queue is full.
    pub fn dial_peer(&self, peer: PeerId) {
        let _ = self.tx.try_send(Command::DialPeer(peer));
    }

    /// Record where a peer can be reached (addresses its caisse signed).
    /// Never waits: dropped when the network's queue is full.
    pub fn add_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let _ = self.tx.try_send(Command::Addresses(peer, addrs));
    }

    /// Announce a Kademlia provider record for `key` to the peers this
    /// node knows (test peers only: a node never does; it stores none).
    pub async fn provide(&self, key: Vec<u8>) {
        let _ = self.tx.send(Command::Provide(key)).await;
    }

    /// The peers that are not strangers (besides the bootstrap peers).
    /// Never waits: dropped when the network's queue is full.
    pub fn set_known(&self, known: std::collections::HashSet<PeerId>) {
        let _ = self.tx.try_send(Command::Known(known));
    }

    /// Block or unblock a peer (test networks use this to cut a node off).
    pub async fn block(&self, peer: PeerId, block: bool) {
        let _ = self.tx.send(Command::Block(peer, block)).await;
    }

    /// The network's state.
    pub async fn info(&self) -> NetInfo {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Info(tx)).await.is_err() {
            return NetInfo::default();
        }
        rx.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod link_tests {
    use super::*;

    fn link(ev: Option<NetEvent>) -> Option<(PeerId, bool)> {
        match ev? {
            NetEvent::Connected(p) => Some((p, true)),
            NetEvent::Disconnected(p) => Some((p, false)),
            _ => None,
        }
    }

    /// A full queue to the federation task once dropped connection changes:
    /// now each peer's latest state waits, in the order peers changed.
    #[test]
    fn connection_changes_wait_for_room_and_keep_each_peers_latest_state() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut links = LinkBacklog::default();
        links.note(a, true);
        links.note(b, true);
        links.note(a, false);
        assert_eq!(link(links.pop()), Some((a, false)));
        assert_eq!(link(links.pop()), Some((b, true)));
        assert!(links.pop().is_none() && links.is_empty());
    }

    #[test]
    fn the_backlog_is_bounded() {
        let mut links = LinkBacklog::default();
        let first = PeerId::random();
        links.note(first, true);
        for _ in 0..MAX_LINK_BACKLOG {
            links.note(PeerId::random(), true);
        }
        assert_eq!(links.order.len(), MAX_LINK_BACKLOG);
        assert_eq!(links.state.len(), MAX_LINK_BACKLOG);
        assert!(!links.state.contains_key(&first), "the oldest is forgotten");
    }
}
