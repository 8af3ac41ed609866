//! Which version of another caisse's document a replica keeps.
//!
//! Every owner signs the heads of each version of its document with an
//! increasing sequence. A replica keeps the newest; an honest owner never
//! signs two versions under one sequence (the node makes a version durable
//! before gossiping it, and a wiped node's sequence starts from its clock).
//! A Byzantine owner may: it shows one version to some caisses and another
//! to others, so that they read different statements from it. Two signed
//! heads under one sequence are proof of that (both carry the owner's
//! signature); a replica that sees both logs it and keeps the one with the
//! smaller digest, the same choice at every honest caisse whatever the
//! order in which the versions arrived, so that the federation converges on
//! one version again (`judge_heads`; the node's federation task and the
//! simulator both apply it).
//!
//! [`Replication`] is the rest of the replication logic as a state machine
//! (`handle(input) -> outputs`): which documents this caisse follows,
//! which signed version it wants of each, when and from which peer a sync
//! starts, the backoff after a failed one, which stranger's document makes
//! room for a new one. Peers are bytes ([`PeerKey`]), time comes in as
//! milliseconds; the node's federation task does the I/O (gossip, sync
//! sessions over libp2p, the automerge documents, the store) and feeds it
//! what happened. [`Conduct`] counts a peer's misbehaviour towards a ban.

/// One signed version of a document, as a replica compares it: the
/// owner's sequence and a digest of what the version holds (the node: its
/// sorted heads and epoch; the simulator: its published bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mark {
    /// The owner's sequence.
    pub sequence: u64,
    /// What this version holds, hashed.
    pub digest: [u8; 32],
}

/// What a replica does with a version offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadsVerdict {
    /// The first version seen, or newer than the one known: take it.
    Newer,
    /// The version known, again: nothing to do.
    Same,
    /// Older than the one known: stale or replayed.
    Stale,
    /// Another version under the sequence known: the owner equivocated.
    /// `take` says whether the offered one is the one to keep.
    Equivocation {
        /// Whether the offered version replaces the known one.
        take: bool,
    },
}

impl HeadsVerdict {
    /// Whether the replica should fetch the offered version.
    pub fn take(self) -> bool {
        matches!(
            self,
            HeadsVerdict::Newer | HeadsVerdict::Equivocation { take: true }
        )
    }
}

/// Judge `offered` against the version a replica `known`s (the newest it
/// holds or is fetching).
pub fn judge_heads(known: Option<Mark>, offered: Mark) -> HeadsVerdict {
    let Some(known) = known else {
        return HeadsVerdict::Newer;
    };
    match offered.sequence.cmp(&known.sequence) {
        std::cmp::Ordering::Greater => HeadsVerdict::Newer,
        std::cmp::Ordering::Less => HeadsVerdict::Stale,
        std::cmp::Ordering::Equal if offered.digest == known.digest => HeadsVerdict::Same,
        std::cmp::Ordering::Equal => HeadsVerdict::Equivocation {
            take: offered.digest < known.digest,
        },
    }
}

/// The digest of a node's signed heads: the sorted change hashes and the
/// epoch they belong to.
pub fn heads_digest(sorted_heads: &[[u8; 32]], epoch: u32) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"caisse/heads/v1");
    h.update(epoch.to_be_bytes());
    h.update((sorted_heads.len() as u64).to_be_bytes());
    for x in sorted_heads {
        h.update(x);
    }
    h.finalize().into()
}

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use caisse_protocol::{CaisseId, Envelope};

/// A peer as the core knows it: the bytes of its network identity (the
/// node's libp2p peer id, as `PeerId::to_bytes` writes it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub Vec<u8>);

/// Sync sessions this node runs at once with one peer. A connection carries
/// at most 16 request streams for both directions, purchases and catalogs
/// included; past it, requests failed with "max sub-streams reached" and
/// the documents waited for a retry (a node catching up on 29 documents
/// from one peer started 29 at once).
pub const SYNCS_PER_PEER: usize = 6;
/// The first wait after a failed sync, in milliseconds; it doubles with
/// each failure.
pub const SYNC_BACKOFF_FIRST_MS: u64 = 250;
/// The longest wait between sync attempts for one document.
pub const SYNC_BACKOFF_MAX_MS: u64 = 30_000;
/// The longest wait for a document this caisse vouches for.
pub const SYNC_BACKOFF_VOUCHED_MAX_MS: u64 = 2_000;
/// Failed syncs after which a document nobody here vouches for is given up
/// until its owner signs a newer version.
pub const UNVOUCHED_ATTEMPTS: u32 = 4;
/// Documents followed at most whose owner this caisse does not vouch for
/// (neither recognises, nor sees recognised by a caisse it recognises, nor
/// settles with): a stranger minting keys can fill only these, and a new
/// one evicts the oldest.
pub const MAX_UNVOUCHED: usize = 128;
/// Documents followed at most, this caisse's own included.
pub const MAX_FOLLOWED: usize = caisse_protocol::rpc::MAX_CATALOG;
/// See [`Replication::busy`].
pub const BUSY_WINDOW_MS: u64 = 10_000;
/// See [`Replication::busy`].
pub const BUSY_NEWS: u32 = 10;

/// The newest signed heads seen of a document, ahead of the version held.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    /// The owner's sequence.
    pub sequence: u64,
    /// The signed heads, sorted.
    pub heads: Vec<[u8; 32]>,
    /// The document's epoch.
    pub epoch: u32,
    /// The signed heads as they came (kept with the document once synced).
    pub envelope: Envelope,
}

impl Wanted {
    fn mark(&self) -> Mark {
        Mark {
            sequence: self.sequence,
            digest: heads_digest(&self.heads, self.epoch),
        }
    }
}

/// What the replication remembers of one document it follows.
#[derive(Clone, Debug, PartialEq)]
pub struct Follow {
    /// The sequence of the version held (0 before the first).
    pub sequence: u64,
    /// The epoch of the version held.
    pub epoch: u32,
    /// The digest of the version held; none before its first signed heads.
    pub digest: Option<[u8; 32]>,
    /// The next sync starts from an empty document, not from the one held:
    /// the one held has changes the wanted version does not (the losing
    /// side of an equivocation, or a sync judged forged).
    pub scratch: bool,
    /// Newer signed heads to fetch.
    pub wanted: Option<Wanted>,
    /// A peer known to have the wanted heads.
    pub source: Option<PeerKey>,
    /// A sync session is running.
    pub syncing: bool,
    /// Sync attempts that failed since the last success.
    pub failures: u32,
    /// No sync before this time (ms; exponential backoff after failures).
    pub next_try_ms: Option<u64>,
    /// When this node started following the document (eviction order).
    pub added_ms: u64,
}

impl Follow {
    fn new(added_ms: u64) -> Self {
        Follow {
            sequence: 0,
            epoch: 0,
            digest: None,
            scratch: false,
            wanted: None,
            source: None,
            syncing: false,
            failures: 0,
            next_try_ms: None,
            added_ms,
        }
    }

    /// The version held, as [`judge_heads`] compares it.
    pub fn held(&self) -> Option<Mark> {
        self.digest.map(|digest| Mark {
            sequence: self.sequence,
            digest,
        })
    }

    /// A failed or incomplete sync: wait longer before the next, and give
    /// up on a document nobody here vouches for after a few.
    fn failed(&mut self, vouched: bool, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        // A vouched document is tried again soon (another peer may have
        // it); a stranger's waits longer and longer.
        let max = if vouched {
            SYNC_BACKOFF_VOUCHED_MAX_MS
        } else {
            SYNC_BACKOFF_MAX_MS
        };
        let wait = SYNC_BACKOFF_FIRST_MS
            .saturating_mul(1u64 << self.failures.min(16))
            .min(max);
        self.next_try_ms = Some(now_ms.saturating_add(wait));
        if !vouched && self.failures >= UNVOUCHED_ATTEMPTS {
            // Wait for newer signed heads before trying again.
            self.wanted = None;
        }
    }
}

/// How a sync session ended, as the node judged what it brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncEnd {
    /// The session failed (the peer did not answer, refused, went away).
    Failed,
    /// It ended short of the signed heads.
    Incomplete,
    /// It brought changes the owner's signed heads do not cover.
    Forged,
}

/// What the node tells the replication.
#[derive(Clone, Debug)]
pub enum Input {
    /// Signed heads whose signature the node has checked, from gossip, a
    /// catalog or a sync answer (`source`: the peer that sent them).
    Heads {
        /// The document's owner.
        owner: CaisseId,
        /// The owner's sequence.
        sequence: u64,
        /// The signed heads (any order).
        heads: Vec<[u8; 32]>,
        /// The document's epoch.
        epoch: u32,
        /// The signed heads as they came.
        envelope: Envelope,
        /// Who sent them.
        source: Option<PeerKey>,
    },
    /// The node holds this version of a document: loaded from the store at
    /// start (`sequence` 0 and no digest: not yet signed), or its own just
    /// published.
    Holding {
        /// The document's owner.
        owner: CaisseId,
        /// Its sequence.
        sequence: u64,
        /// Its epoch.
        epoch: u32,
        /// The digest of its sorted heads and epoch, if signed.
        digest: Option<[u8; 32]>,
    },
    /// A sync session with `peer` for `owner`'s document returned (before
    /// what it brought is judged).
    SyncReturned {
        /// The document.
        owner: CaisseId,
        /// The peer asked.
        peer: PeerKey,
    },
    /// What a returned session brought was not taken.
    SyncNotTaken {
        /// The document.
        owner: CaisseId,
        /// The peer asked.
        peer: PeerKey,
        /// Why.
        end: SyncEnd,
    },
    /// The wanted version was taken (from a sync, or from changes carried
    /// with the gossiped heads).
    Adopted {
        /// The document.
        owner: CaisseId,
    },
    /// A peer connected.
    Connected(PeerKey),
    /// A peer disconnected.
    Disconnected(PeerKey),
    /// Time passed: start the syncs that are due.
    Tick,
}

/// What the gossip layer does with a message of signed heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acceptance {
    /// Forward it: heads of a document this caisse vouches for.
    Accept,
    /// Do not forward it (kept or not): ours, stale, a stranger's, no room.
    Ignore,
}

/// What the replication asks of the node.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// What to do with the gossiped heads just handled.
    Gossip(Acceptance),
    /// A new document is followed (the node makes it an empty replica).
    Follow(CaisseId),
    /// No room for a new document: ignored (log it).
    NoRoom(CaisseId),
    /// Stop following a document: drop it from memory, disk and view.
    Evict(CaisseId),
    /// The owner signed two versions under one sequence (log it as a
    /// security event); `take`: the one just offered is the one kept.
    Equivocation {
        /// The owner.
        owner: CaisseId,
        /// The sequence signed twice.
        sequence: u64,
        /// Whether the offered version replaces the known one.
        take: bool,
        /// Who offered it.
        source: Option<PeerKey>,
    },
    /// Older heads than the version held: stale or replayed (log at debug).
    Stale {
        /// The owner.
        owner: CaisseId,
        /// The sequence offered.
        sequence: u64,
    },
    /// Start a sync session with `peer` towards `want` (sorted heads), from
    /// a fork of the document held or, `from_scratch`, an empty one.
    StartSync {
        /// The document.
        owner: CaisseId,
        /// The peer to ask.
        peer: PeerKey,
        /// Start from an empty document.
        from_scratch: bool,
        /// The signed heads to reach.
        want: Vec<[u8; 32]>,
    },
}

/// What the node knows that the replication reads with each input.
pub struct Context<'a> {
    /// Milliseconds on the node's monotonic clock.
    pub now_ms: u64,
    /// The caisses this caisse vouches for ([`crate::federation_view::FederationView::vouched_by`]).
    pub vouched: &'a HashSet<CaisseId>,
    /// The peer a caisse's node runs as (derived from its key).
    pub peer_of: &'a dyn Fn(&CaisseId) -> Option<PeerKey>,
}

/// The replication of the federation's documents at one caisse, as a state
/// machine: see the module's documentation.
#[derive(Debug)]
pub struct Replication {
    me: CaisseId,
    follows: BTreeMap<CaisseId, Follow>,
    connected: BTreeSet<PeerKey>,
    /// Sync sessions running with each peer (at most [`SYNCS_PER_PEER`]).
    syncs_with: BTreeMap<PeerKey, usize>,
    /// Newer heads of documents this caisse vouches for: since when (ms),
    /// how many (a window of [`BUSY_WINDOW_MS`]).
    news: (u64, u32),
}

impl Replication {
    /// A caisse's replication, following only its own document.
    pub fn new(me: CaisseId, now_ms: u64) -> Self {
        let mut follows = BTreeMap::new();
        follows.insert(me, Follow::new(now_ms));
        Replication {
            me,
            follows,
            connected: BTreeSet::new(),
            syncs_with: BTreeMap::new(),
            news: (now_ms, 0),
        }
    }

    /// What is remembered of `owner`'s document, if followed.
    pub fn follow(&self, owner: &CaisseId) -> Option<&Follow> {
        self.follows.get(owner)
    }

    /// The documents followed.
    pub fn followed(&self) -> impl Iterator<Item = &CaisseId> {
        self.follows.keys()
    }

    /// The peers connected, in order.
    pub fn connected(&self) -> impl Iterator<Item = &PeerKey> {
        self.connected.iter()
    }

    /// Whether `peer` is connected.
    pub fn is_connected(&self, peer: &PeerKey) -> bool {
        self.connected.contains(peer)
    }

    /// Whether many documents changed lately (a storm of publications, as
    /// at a month's end): at least [`BUSY_NEWS`] new versions within the
    /// current or the last [`BUSY_WINDOW_MS`].
    pub fn busy(&self, now_ms: u64) -> bool {
        self.news.1 >= BUSY_NEWS && now_ms.saturating_sub(self.news.0) < 2 * BUSY_WINDOW_MS
    }

    /// Handle one input; the outputs in the order the node carries them out.
    pub fn handle(&mut self, input: Input, cx: &Context) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Heads {
                owner,
                sequence,
                mut heads,
                epoch,
                envelope,
                source,
            } => {
                heads.sort();
                let wanted = Wanted {
                    sequence,
                    heads,
                    epoch,
                    envelope,
                };
                let a = self.heads(owner, wanted, source, cx, &mut out);
                out.push(Output::Gossip(a));
            }
            Input::Holding {
                owner,
                sequence,
                epoch,
                digest,
            } => {
                let f = self
                    .follows
                    .entry(owner)
                    .or_insert_with(|| Follow::new(cx.now_ms));
                f.sequence = sequence;
                f.epoch = epoch;
                f.digest = digest;
            }
            Input::SyncReturned { owner, peer } => {
                if let Some(n) = self.syncs_with.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.syncs_with.remove(&peer);
                    }
                }
                if let Some(f) = self.follows.get_mut(&owner) {
                    f.syncing = false;
                }
            }
            Input::SyncNotTaken { owner, peer, end } => {
                // A connected owner is a caisse, not a key minted for an
                // attack: its document is retried like a vouched one.
                let vouched = cx.vouched.contains(&owner)
                    || (cx.peer_of)(&owner).is_some_and(|p| self.connected.contains(&p));
                let Some(f) = self.follows.get_mut(&owner) else {
                    return out;
                };
                match end {
                    SyncEnd::Failed => f.source = None,
                    // Retried after a backoff, in a new session, from
                    // another peer unless this one is the owner.
                    SyncEnd::Incomplete => {
                        if f.source.as_ref() == Some(&peer) {
                            f.source = None;
                        }
                    }
                    // The held document may be what adds the unsigned
                    // changes (the losing side of an equivocation the owner
                    // built on the other side of): the next session starts
                    // empty.
                    SyncEnd::Forged => {
                        f.scratch = true;
                        if f.source.as_ref() == Some(&peer) {
                            f.source = None;
                        }
                    }
                }
                f.failed(vouched, cx.now_ms);
            }
            Input::Adopted { owner } => {
                if let Some(f) = self.follows.get_mut(&owner)
                    && let Some(w) = f.wanted.take()
                {
                    f.digest = Some(w.mark().digest);
                    f.sequence = w.sequence;
                    f.epoch = w.epoch;
                    f.scratch = false;
                    f.failures = 0;
                    f.next_try_ms = None;
                }
            }
            Input::Connected(peer) => {
                // An owner back online: its document is worth a try at once.
                for (c, f) in self.follows.iter_mut() {
                    if (cx.peer_of)(c).as_ref() == Some(&peer) {
                        f.next_try_ms = None;
                    }
                }
                self.connected.insert(peer);
            }
            Input::Disconnected(peer) => {
                self.connected.remove(&peer);
            }
            Input::Tick => self.start_due(cx, &mut out),
        }
        out
    }

    /// Signed heads offered: record them as wanted if newer.
    fn heads(
        &mut self,
        owner: CaisseId,
        wanted: Wanted,
        source: Option<PeerKey>,
        cx: &Context,
        out: &mut Vec<Output>,
    ) -> Acceptance {
        if owner == self.me {
            return Acceptance::Ignore;
        }
        let vouched = cx.vouched.contains(&owner);
        if !self.follows.contains_key(&owner) {
            if !self.make_room(vouched, cx, out) {
                out.push(Output::NoRoom(owner));
                return Acceptance::Ignore;
            }
            self.follows.insert(owner, Follow::new(cx.now_ms));
            out.push(Output::Follow(owner));
        }
        // Heads of a document nobody here vouches for are kept (so a new
        // caisse can be seen and recognised) but not forwarded.
        let acceptance = if vouched {
            Acceptance::Accept
        } else {
            Acceptance::Ignore
        };
        let Some(f) = self.follows.get_mut(&owner) else {
            return Acceptance::Ignore;
        };
        // The newest version known: the one being fetched, else the one held.
        let known = match &f.wanted {
            Some(w) if w.sequence >= f.sequence => Some(w.mark()),
            _ => f.held(),
        };
        let offered = wanted.mark();
        let verdict = judge_heads(known, offered);
        if let HeadsVerdict::Equivocation { take } = verdict {
            out.push(Output::Equivocation {
                owner,
                sequence: offered.sequence,
                take,
                source: source.clone(),
            });
        }
        if !verdict.take() {
            if verdict == HeadsVerdict::Stale && offered.sequence < f.sequence {
                out.push(Output::Stale {
                    owner,
                    sequence: offered.sequence,
                });
            }
            if source.is_some() && f.source.is_none() {
                f.source = source;
            }
            return Acceptance::Ignore;
        }
        // The losing side of an equivocation is held: the winner is
        // fetched whole, not merged into it.
        if offered.sequence == f.sequence {
            f.scratch = true;
        }
        f.wanted = Some(wanted);
        if vouched {
            if cx.now_ms.saturating_sub(self.news.0) > BUSY_WINDOW_MS {
                self.news = (cx.now_ms, 0);
            }
            self.news.1 = self.news.1.saturating_add(1);
        }
        let from_owner = source.is_some() && source == (cx.peer_of)(&owner);
        if source.is_some() {
            f.source = source;
        }
        if vouched || from_owner {
            // A newer version of a document this caisse vouches for, or one
            // its owner announces itself over its own connection: worth a
            // try at once (a caisse back from a restart is found again in
            // seconds, not after the backoff a stranger's document earns).
            f.next_try_ms = None;
            f.failures = 0;
        }
        acceptance
    }

    /// Make room for one more document: a vouched one may take the place of
    /// an unvouched one when the catalog is full; an unvouched one takes the
    /// place of the oldest unvouched (never-synced first) when their quota
    /// is full. False when there is no room.
    fn make_room(&mut self, vouched: bool, cx: &Context, out: &mut Vec<Output>) -> bool {
        let unvouched: Vec<(CaisseId, bool, u64)> = self
            .follows
            .iter()
            .filter(|(c, _)| **c != self.me && !cx.vouched.contains(c))
            .map(|(c, f)| (*c, f.digest.is_some(), f.added_ms))
            .collect();
        let full = self.follows.len() >= MAX_FOLLOWED;
        if vouched && !full {
            return true;
        }
        if !vouched && !full && unvouched.len() < MAX_UNVOUCHED {
            return true;
        }
        let Some((victim, _, _)) = unvouched
            .into_iter()
            .min_by_key(|(c, synced, added)| (*synced, *added, *c))
        else {
            return false;
        };
        self.follows.remove(&victim);
        out.push(Output::Evict(victim));
        true
    }

    /// Start the syncs that are due, each with the best peer that has room.
    fn start_due(&mut self, cx: &Context, out: &mut Vec<Output>) {
        let connected: Vec<PeerKey> = self.connected.iter().cloned().collect();
        for (owner, f) in self.follows.iter_mut() {
            if *owner == self.me || f.syncing || f.next_try_ms.is_some_and(|t| t > cx.now_ms) {
                continue;
            }
            let Some(w) = &f.wanted else {
                continue;
            };
            // (Under the sequence held only to replace the losing side of
            // an equivocation.)
            if w.sequence < f.sequence || (w.sequence == f.sequence && !f.scratch) {
                f.wanted = None;
                continue;
            }
            // Prefer the owner itself, then whoever announced the heads,
            // then each connected peer in turn (one that lacked the version
            // last time is not asked again first). A peer already running
            // its share of sessions with this node is waited for.
            let peer = (cx.peer_of)(owner)
                .filter(|p| self.connected.contains(p))
                .or(f.source.clone().filter(|p| self.connected.contains(p)))
                .or_else(|| {
                    connected
                        .get(f.failures as usize % connected.len().max(1))
                        .cloned()
                });
            let Some(peer) = peer else {
                continue;
            };
            let running = self.syncs_with.entry(peer.clone()).or_default();
            if *running >= SYNCS_PER_PEER {
                continue;
            }
            *running += 1;
            f.syncing = true;
            out.push(Output::StartSync {
                owner: *owner,
                peer,
                // A new epoch shares no history with the old one.
                from_scratch: w.epoch != f.epoch || f.scratch,
                want: w.heads.clone(),
            });
        }
    }
}

/// Strikes within [`STRIKE_WINDOW_MS`] that ban a peer.
pub const STRIKES_TO_BAN: u32 = 20;
/// The window strikes are counted over (ms).
pub const STRIKE_WINDOW_MS: u64 = 60_000;
/// How long a ban lasts (ms; the peer is refused on every reconnection).
pub const BAN_MS: u64 = 10 * 60_000;
/// Strikes per window written to the log one by one; the rest are counted
/// and summed up when the peer is banned.
pub const LOGGED_STRIKES: u32 = 5;
/// Peers whose conduct is remembered at most.
const MAX_CONDUCT: usize = 10_000;

/// What a caisse remembers of each peer's misbehaviour: a malformed
/// request or gossip message, heads with a bad signature. (A sync refused
/// for changes the owner did not sign is not counted: a lost response can
/// make an honest peer look like that.)
#[derive(Debug, Default)]
pub struct Conduct {
    strikes: HashMap<PeerKey, (u64, u32)>,
    banned: HashMap<PeerKey, u64>,
}

/// What to do about one strike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strike {
    /// Write this one to the log (the first few of a window).
    pub log: bool,
    /// Ban the peer now.
    pub ban: bool,
}

impl Conduct {
    /// Count a strike against `peer` at `now_ms`.
    pub fn strike(&mut self, peer: &PeerKey, now_ms: u64) -> Strike {
        let none = Strike {
            log: false,
            ban: false,
        };
        if self.banned.contains_key(peer) {
            return none;
        }
        if self.strikes.len() >= MAX_CONDUCT && !self.strikes.contains_key(peer) {
            self.strikes
                .retain(|_, (t, _)| now_ms.saturating_sub(*t) < STRIKE_WINDOW_MS);
            if self.strikes.len() >= MAX_CONDUCT {
                self.strikes.clear();
            }
        }
        let e = self.strikes.entry(peer.clone()).or_insert((now_ms, 0));
        if now_ms.saturating_sub(e.0) >= STRIKE_WINDOW_MS {
            *e = (now_ms, 0);
        }
        e.1 = e.1.saturating_add(1);
        let n = e.1;
        if n >= STRIKES_TO_BAN {
            self.strikes.remove(peer);
            self.banned
                .insert(peer.clone(), now_ms.saturating_add(BAN_MS));
            return Strike {
                log: false,
                ban: true,
            };
        }
        Strike {
            log: n <= LOGGED_STRIKES,
            ban: false,
        }
    }

    /// Bans that have run out by `now_ms` (forgotten here; lift them).
    pub fn expired(&mut self, now_ms: u64) -> Vec<PeerKey> {
        let mut out: Vec<PeerKey> = self
            .banned
            .iter()
            .filter(|(_, until)| **until <= now_ms)
            .map(|(p, _)| p.clone())
            .collect();
        out.sort();
        for p in &out {
            self.banned.remove(p);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(sequence: u64, d: u8) -> Mark {
        Mark {
            sequence,
            digest: [d; 32],
        }
    }

    #[test]
    fn newer_same_stale_and_equivocation() {
        assert_eq!(judge_heads(None, m(3, 1)), HeadsVerdict::Newer);
        assert_eq!(judge_heads(Some(m(3, 1)), m(4, 9)), HeadsVerdict::Newer);
        assert_eq!(judge_heads(Some(m(3, 1)), m(3, 1)), HeadsVerdict::Same);
        assert_eq!(judge_heads(Some(m(3, 1)), m(2, 0)), HeadsVerdict::Stale);
        assert_eq!(
            judge_heads(Some(m(3, 5)), m(3, 2)),
            HeadsVerdict::Equivocation { take: true }
        );
        assert_eq!(
            judge_heads(Some(m(3, 2)), m(3, 5)),
            HeadsVerdict::Equivocation { take: false }
        );
    }

    #[test]
    fn the_digest_tells_heads_and_epochs_apart() {
        let a = heads_digest(&[[1; 32]], 0);
        assert_ne!(a, heads_digest(&[[2; 32]], 0));
        assert_ne!(a, heads_digest(&[[1; 32]], 1));
        assert_ne!(a, heads_digest(&[[1; 32], [1; 32]], 0));
        assert_eq!(a, heads_digest(&[[1; 32]], 0));
    }

    proptest! {
        /// Whatever versions arrive, in whatever order, every replica ends
        /// holding the same one: the highest sequence and, among the
        /// versions signed under it, the smallest digest.
        #[test]
        fn replicas_converge_whatever_the_order(
            offers in prop::collection::vec((0u64..5, 0u8..4), 1..12),
            order in prop::collection::vec(any::<prop::sample::Index>(), 12),
        ) {
            let offers: Vec<Mark> = offers.into_iter().map(|(s, d)| m(s, d)).collect();
            let apply = |list: &[Mark]| {
                let mut held: Option<Mark> = None;
                for o in list {
                    if judge_heads(held, *o).take() {
                        held = Some(*o);
                    }
                }
                held
            };
            let mut shuffled = offers.clone();
            for (k, ix) in order.iter().enumerate().take(shuffled.len()) {
                let j = ix.index(shuffled.len());
                shuffled.swap(k, j);
            }
            let best = offers
                .iter()
                .copied()
                .max_by(|a, b| a.sequence.cmp(&b.sequence).then(b.digest.cmp(&a.digest)));
            prop_assert_eq!(apply(&offers), best);
            prop_assert_eq!(apply(&shuffled), best);
        }
    }

    mod machine {
        use super::super::*;
        use caisse_protocol::messages::DocumentHeads;
        use caisse_protocol::{FederationId, SecretKey};

        fn key(n: u8) -> SecretKey {
            SecretKey::from_bytes([n; 32])
        }
        fn id(n: u8) -> CaisseId {
            key(n).caisse_id()
        }
        /// A caisse's node runs as the peer whose bytes are its id's.
        fn peer_of(c: &CaisseId) -> Option<PeerKey> {
            Some(PeerKey(c.as_bytes().to_vec()))
        }
        fn peer(n: u8) -> PeerKey {
            peer_of(&id(n)).expect("a peer")
        }
        fn heads(owner: u8, sequence: u64, h: u8, source: Option<PeerKey>) -> Input {
            let message = DocumentHeads {
                caisse: id(owner),
                heads: vec![[h; 32]],
                sequence,
                epoch: 0,
            };
            let fed = FederationId::new("test").expect("a name");
            let envelope = Envelope::seal(&key(owner), &fed, &message).expect("sealed");
            Input::Heads {
                owner: id(owner),
                sequence,
                heads: vec![[h; 32]],
                epoch: 0,
                envelope,
                source,
            }
        }
        struct World {
            r: Replication,
            vouched: HashSet<CaisseId>,
            now: u64,
        }
        impl World {
            fn new(vouched: &[u8]) -> Self {
                World {
                    r: Replication::new(id(0), 0),
                    vouched: vouched.iter().map(|n| id(*n)).collect(),
                    now: 0,
                }
            }
            fn go(&mut self, input: Input) -> Vec<Output> {
                let cx = Context {
                    now_ms: self.now,
                    vouched: &self.vouched,
                    peer_of: &peer_of,
                };
                self.r.handle(input, &cx)
            }
            fn syncs(&mut self) -> Vec<(CaisseId, PeerKey, bool)> {
                self.go(Input::Tick)
                    .into_iter()
                    .filter_map(|o| match o {
                        Output::StartSync {
                            owner,
                            peer,
                            from_scratch,
                            ..
                        } => Some((owner, peer, from_scratch)),
                        _ => None,
                    })
                    .collect()
            }
        }

        #[test]
        fn a_vouched_document_is_followed_fetched_from_its_owner_and_retried_after_a_backoff() {
            let mut w = World::new(&[1]);
            w.go(Input::Connected(peer(1)));
            w.go(Input::Connected(peer(9)));
            let out = w.go(heads(1, 1, 7, Some(peer(9))));
            assert_eq!(
                out,
                vec![Output::Follow(id(1)), Output::Gossip(Acceptance::Accept)]
            );
            // The owner itself is asked, not the peer that gossiped.
            assert_eq!(w.syncs(), vec![(id(1), peer(1), false)]);
            // Not twice while the session runs.
            assert_eq!(w.syncs(), vec![]);
            w.go(Input::SyncReturned {
                owner: id(1),
                peer: peer(1),
            });
            w.go(Input::SyncNotTaken {
                owner: id(1),
                peer: peer(1),
                end: SyncEnd::Failed,
            });
            // 250 ms doubled once: nothing before 500 ms.
            w.now = 499;
            assert_eq!(w.syncs(), vec![]);
            w.now = 500;
            assert_eq!(w.syncs(), vec![(id(1), peer(1), false)]);
            w.go(Input::SyncReturned {
                owner: id(1),
                peer: peer(1),
            });
            w.go(Input::Adopted { owner: id(1) });
            let f = w.r.follow(&id(1)).expect("followed");
            assert_eq!((f.sequence, f.failures, f.wanted.is_none()), (1, 0, true));
            assert_eq!(w.syncs(), vec![]);
            // The same heads again: nothing to do; older ones: stale.
            let out = w.go(heads(1, 1, 7, Some(peer(9))));
            assert_eq!(out, vec![Output::Gossip(Acceptance::Ignore)]);
            let out = w.go(heads(1, 0, 3, Some(peer(9))));
            assert_eq!(
                out,
                vec![
                    Output::Stale {
                        owner: id(1),
                        sequence: 0
                    },
                    Output::Gossip(Acceptance::Ignore)
                ]
            );
        }

        #[test]
        fn an_equivocation_is_reported_and_the_winner_fetched_from_scratch() {
            let mut w = World::new(&[1]);
            w.go(Input::Connected(peer(1)));
            w.go(heads(1, 4, 9, None));
            w.syncs();
            w.go(Input::SyncReturned {
                owner: id(1),
                peer: peer(1),
            });
            w.go(Input::Adopted { owner: id(1) });
            // Another version under sequence 4, with a smaller digest or not.
            let a = heads(1, 4, 1, None);
            let b = heads(1, 4, 2, None);
            let digest = |i: &Input| match i {
                Input::Heads { heads, epoch, .. } => heads_digest(heads, *epoch),
                _ => unreachable!(),
            };
            let held = w.r.follow(&id(1)).and_then(|f| f.digest).expect("held");
            for other in [a, b] {
                let take = digest(&other) < held;
                let out = w.go(other);
                assert!(out.contains(&Output::Equivocation {
                    owner: id(1),
                    sequence: 4,
                    take,
                    source: None
                }));
                if take {
                    assert_eq!(w.syncs(), vec![(id(1), peer(1), true)]);
                    return;
                }
            }
            panic!("one of two other digests is smaller than the held one or both are not");
        }

        #[test]
        fn strangers_fill_only_their_quota_and_the_oldest_makes_room() {
            let mut w = World::new(&[]);
            for n in 0..MAX_UNVOUCHED as u64 {
                w.now = n;
                let out = w.go(heads(10 + n as u8, 1, 1, None));
                assert_eq!(
                    out.last(),
                    Some(&Output::Gossip(Acceptance::Ignore)),
                    "a stranger's heads are kept, not forwarded"
                );
                assert!(!out.iter().any(|o| matches!(o, Output::Evict(_))));
            }
            w.now = 1_000;
            let out = w.go(heads(200, 1, 1, None));
            assert_eq!(out[0], Output::Evict(id(10)), "the oldest stranger goes");
            assert_eq!(out[1], Output::Follow(id(200)));
            assert_eq!(w.r.followed().count(), MAX_UNVOUCHED + 1);
        }

        #[test]
        fn a_peer_runs_at_most_its_share_of_sessions_and_a_stranger_is_given_up() {
            let mut w = World::new(&[]);
            w.go(Input::Connected(peer(99)));
            for n in 1..=(SYNCS_PER_PEER as u8 + 2) {
                w.go(heads(n, 1, 1, Some(peer(99))));
            }
            let started = w.syncs();
            assert_eq!(started.len(), SYNCS_PER_PEER);
            assert!(started.iter().all(|(_, p, _)| *p == peer(99)));
            // One stranger's document fails again and again: given up after
            // a few attempts, until newer heads come.
            let (owner, _, _) = started[0];
            for _ in 0..UNVOUCHED_ATTEMPTS {
                w.go(Input::SyncReturned {
                    owner,
                    peer: peer(99),
                });
                w.go(Input::SyncNotTaken {
                    owner,
                    peer: peer(99),
                    end: SyncEnd::Incomplete,
                });
                w.now += SYNC_BACKOFF_MAX_MS;
                w.syncs();
            }
            let f = w.r.follow(&owner).expect("followed");
            assert!(f.wanted.is_none(), "given up");
            assert!(f.failures >= UNVOUCHED_ATTEMPTS);
        }

        #[test]
        fn twenty_strikes_ban_and_the_ban_runs_out() {
            let mut c = Conduct::default();
            let p = peer(5);
            let mut logged = 0;
            for k in 1..STRIKES_TO_BAN {
                let s = c.strike(&p, k as u64);
                assert!(!s.ban);
                logged += s.log as u32;
            }
            assert_eq!(logged, LOGGED_STRIKES);
            assert!(c.strike(&p, 100).ban);
            assert!(!c.strike(&p, 101).ban, "banned once");
            assert!(c.expired(100 + BAN_MS - 1).is_empty());
            assert_eq!(c.expired(100 + BAN_MS), vec![p.clone()]);
            // Strikes spread over more than the window never ban.
            for k in 0..(3 * STRIKES_TO_BAN as u64) {
                assert!(!c.strike(&p, 1_000_000 + k * STRIKE_WINDOW_MS / 10).ban);
            }
        }
    }
}
