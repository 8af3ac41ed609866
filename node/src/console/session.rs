//! Console sessions and the sign-in rate limiter, in memory.
//!
//! A visitor who has not signed in holds only a random cookie: its CSRF
//! token is a keyed hash of that cookie, so the sign-in forms are protected
//! without any state on the server, and a flood of anonymous visits cannot
//! push anyone's open form out. Signing in creates a server-side session
//! under a new id; it ends when idle, at an absolute lifetime, at sign-out,
//! or as soon as its credential stops being valid (a revoked token, a
//! suspended member, a reset PIN: checked on every request). One
//! credential holds at most [`MAX_PER_PRINCIPAL`] sessions, so signing in
//! again and again with it only ends its own oldest sessions. Nothing here
//! is written to disk: a restart signs everyone out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caisse_protocol::{CardId, MemberId, OutletId};

use super::Kind;
use super::html::Flash;

/// The most signed-in sessions kept; beyond, the least recently used of
/// the principals holding several go first.
pub const MAX_SESSIONS: usize = 20_000;
/// The most sessions one credential (a token, a card) holds at once.
pub const MAX_PER_PRINCIPAL: usize = 16;
/// Failed sign-ins allowed per client address within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// The most client addresses the sign-in limiter remembers.
pub const MAX_LIMITED_CLIENTS: usize = 10_000;
/// The window over which failed sign-ins are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Who a signed-in session belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// The caisse's staff.
    Admin,
    /// The evaluation committee: reads, never changes.
    Observer,
    /// An outlet's till.
    Outlet {
        /// The outlet.
        outlet: OutletId,
    },
    /// A seat holder signed in with a seat token: votes for that seat.
    Seat {
        /// The seat number.
        seat: u32,
    },
    /// A producer, signed in with the producer token a caisse issued:
    /// sees its own page.
    Producer {
        /// The producer.
        producer: caisse_protocol::ProducerId,
    },
    /// A member, signed in with card and PIN.
    Member {
        /// The member.
        member: MemberId,
        /// The card used.
        card: CardId,
    },
}

impl Who {
    /// The kind of role.
    pub fn kind(&self) -> Kind {
        match self {
            Who::Admin => Kind::Admin,
            Who::Observer => Kind::Observer,
            Who::Outlet { .. } => Kind::Outlet,
            Who::Seat { .. } => Kind::Seat,
            Who::Producer { .. } => Kind::Producer,
            Who::Member { .. } => Kind::Member,
        }
    }

    /// How long the session may stay idle: a shop's tablet stays open the
    /// whole day, a member's page on a shared device does not.
    fn idle(&self) -> Duration {
        match self {
            Who::Outlet { .. } => Duration::from_secs(14 * 3600),
            Who::Admin | Who::Observer | Who::Seat { .. } | Who::Producer { .. } => {
                Duration::from_secs(8 * 3600)
            }
            Who::Member { .. } => Duration::from_secs(20 * 60),
        }
    }

    /// How long the session may last at all, however busy.
    fn lifetime(&self) -> Duration {
        match self {
            Who::Member { .. } => Duration::from_secs(2 * 3600),
            _ => Duration::from_secs(16 * 3600),
        }
    }
}

/// What a session was opened with, checked again on every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A token, by its storage key (its hash).
    Token(Vec<u8>),
    /// A member's card, with the PIN hash it was opened with.
    Card {
        /// The card.
        card: CardId,
        /// The member.
        member: MemberId,
        /// The PIN hash at sign-in (a reset PIN ends the session).
        pin_hash: Option<[u8; 32]>,
    },
}

impl Credential {
    fn principal(&self) -> Vec<u8> {
        match self {
            Credential::Token(k) => k.clone(),
            Credential::Card { card, .. } => card.as_bytes().to_vec(),
        }
    }
}

/// One browser's session.
#[derive(Clone, Debug)]
pub struct Session {
    /// The cookie value (random, 256 bits).
    pub id: String,
    /// The token every form must carry (random, 256 bits).
    pub csrf: String,
    /// Who signed in, if anyone.
    pub who: Option<Who>,
    /// What they signed in with.
    pub credential: Option<Credential>,
    /// A message for the next page shown.
    pub flash: Option<Flash>,
    /// The pseudonym key of this session's anonymised export, by period:
    /// drawn at the first download so that the two files of one export
    /// share pseudonyms, forgotten with the session.
    export_keys: Vec<(caisse_protocol::Period, [u8; 32])>,
    last_seen: Instant,
    created: Instant,
}

/// The sessions and the limiter, shared by every request.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Mutex<Inner>>,
    /// Keys the CSRF tokens of anonymous visitors (drawn at start).
    csrf_key: [u8; 32],
    /// Failed sign-ins per client address.
    limiter: crate::limiter::FailureLimiter,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions {
            inner: Arc::default(),
            csrf_key: crate::daemon::random32(),
            limiter: crate::limiter::FailureLimiter::new(
                "sign-in",
                MAX_FAILURES,
                FAILURE_WINDOW,
                MAX_LIMITED_CLIENTS,
            ),
        }
    }
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Session>,
}

fn random_hex() -> String {
    hex::encode(crate::daemon::random32())
}

/// Compare two secrets in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live session by cookie value (touching it): the signed-in session
    /// kept under that id, or else the anonymous visitor holding it.
    pub fn get(&self, id: &str) -> Option<Session> {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut g = self.lock();
        let now = Instant::now();
        let Some(s) = g.sessions.get_mut(id) else {
            drop(g);
            return Some(self.anonymous(id.to_owned()));
        };
        let expired = s.who.as_ref().is_some_and(|w| {
            now.duration_since(s.last_seen) > w.idle()
                || now.duration_since(s.created) > w.lifetime()
        });
        if expired {
            g.sessions.remove(id);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    /// An anonymous visitor's session: nothing kept on the server, the CSRF
    /// token derived from the cookie.
    fn anonymous(&self, id: String) -> Session {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"caisse-console-anonymous-csrf/v1");
        h.update(self.csrf_key);
        h.update(id.as_bytes());
        let now = Instant::now();
        Session {
            csrf: hex::encode(h.finalize()),
            id,
            who: None,
            credential: None,
            flash: None,
            export_keys: Vec::new(),
            last_seen: now,
            created: now,
        }
    }

    /// A new anonymous visitor (a new cookie; nothing kept).
    pub fn visitor(&self) -> Session {
        self.anonymous(random_hex())
    }

    /// A new signed-in session for `who`, opened with `credential`.
    pub fn create(&self, who: Who, credential: Credential) -> Session {
        let now = Instant::now();
        let s = Session {
            id: random_hex(),
            csrf: random_hex(),
            who: Some(who),
            credential: Some(credential.clone()),
            flash: None,
            export_keys: Vec::new(),
            last_seen: now,
            created: now,
        };
        let principal = credential.principal();
        let mut g = self.lock();
        // One credential, a bounded number of sessions: its oldest go.
        let mut own: Vec<(Instant, String)> = g
            .sessions
            .values()
            .filter(|x| x.credential.as_ref().map(Credential::principal) == Some(principal.clone()))
            .map(|x| (x.last_seen, x.id.clone()))
            .collect();
        if own.len() >= MAX_PER_PRINCIPAL {
            own.sort();
            for (_, id) in own.iter().take(own.len() + 1 - MAX_PER_PRINCIPAL) {
                g.sessions.remove(id);
            }
        }
        if g.sessions.len() >= MAX_SESSIONS {
            g.sessions.retain(|_, x| {
                x.who.as_ref().is_some_and(|w| {
                    now.duration_since(x.last_seen) <= w.idle()
                        && now.duration_since(x.created) <= w.lifetime()
                })
            });
            // Still full: the least recently used tenth goes, taken first
            // from principals holding more than one session.
            if g.sessions.len() >= MAX_SESSIONS {
                let mut count: HashMap<Vec<u8>, usize> = HashMap::new();
                for x in g.sessions.values() {
                    if let Some(c) = &x.credential {
                        *count.entry(c.principal()).or_default() += 1;
                    }
                }
                let mut order: Vec<(bool, Instant, String)> =
                    g.sessions
                        .values()
                        .map(|x| {
                            let single = x.credential.as_ref().is_none_or(|c| {
                                count.get(&c.principal()).copied().unwrap_or(0) <= 1
                            });
                            (single, x.last_seen, x.id.clone())
                        })
                        .collect();
                order.sort();
                for (_, _, id) in order.into_iter().take(MAX_SESSIONS / 10) {
                    g.sessions.remove(&id);
                }
            }
        }
        g.sessions.insert(s.id.clone(), s.clone());
        s
    }

    /// End a session.
    pub fn remove(&self, id: &str) {
        self.lock().sessions.remove(id);
    }

    /// Leave a message for the session's next page.
    pub fn set_flash(&self, id: &str, flash: Option<Flash>) {
        if let Some(s) = self.lock().sessions.get_mut(id) {
            s.flash = flash;
        }
    }

    /// The pseudonym key of this session's export of `period` (drawn once).
    pub fn export_key(&self, id: &str, period: caisse_protocol::Period) -> [u8; 32] {
        let mut g = self.lock();
        let Some(s) = g.sessions.get_mut(id) else {
            return crate::daemon::random32();
        };
        if let Some((_, k)) = s.export_keys.iter().find(|(p, _)| *p == period) {
            return *k;
        }
        let k = crate::daemon::random32();
        if s.export_keys.len() >= 24 {
            s.export_keys.remove(0);
        }
        s.export_keys.push((period, k));
        k
    }

    /// Count a failed sign-in from `client`.
    pub fn record_failure(&self, client: &str) {
        self.limiter.record_failure(client);
    }

    /// How long `client` must wait before trying again, if it must.
    pub fn limiter_wait(&self, client: &str) -> Option<Duration> {
        self.limiter.wait(client)
    }

    /// Sessions held (for tests and status).
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_beyond_the_limit_wait_and_others_do_not() {
        let s = Sessions::default();
        for _ in 0..MAX_FAILURES - 1 {
            s.record_failure("10.0.0.1");
        }
        assert!(s.limiter_wait("10.0.0.1").is_none());
        s.record_failure("10.0.0.1");
        let wait = s.limiter_wait("10.0.0.1").expect("limited");
        assert!(wait <= FAILURE_WINDOW && wait > Duration::from_secs(60));
        assert!(s.limiter_wait("10.0.0.2").is_none());
    }

    #[test]
    fn sessions_are_found_by_id_and_ids_are_unguessable() {
        let s = Sessions::default();
        let a = s.visitor();
        let b = s.create(Who::Admin, Credential::Token(vec![1]));
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf, a.id);
        assert_eq!(a.id.len(), 64);
        assert_eq!(s.get(&b.id).and_then(|x| x.who), Some(Who::Admin));
        assert!(s.get("not-a-session").is_none());
        s.remove(&b.id);
        assert_eq!(s.get(&b.id).and_then(|x| x.who), None);
        // An anonymous visitor's form token holds without server state.
        assert_eq!(s.get(&a.id).unwrap().csrf, a.csrf);
        assert!(s.is_empty());
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }

    #[test]
    fn the_number_of_sessions_is_bounded_and_anonymous_ones_go_first() {
        let s = Sessions::default();
        let signed_in = s.create(Who::Observer, Credential::Token(vec![1]));
        for _ in 0..MAX_SESSIONS + 10 {
            s.visitor();
            s.create(Who::Admin, Credential::Token(vec![2]));
        }
        assert!(s.len() <= MAX_PER_PRINCIPAL + 1);
        assert_eq!(
            s.get(&signed_in.id).and_then(|x| x.who),
            Some(Who::Observer),
            "a flood of visits or sign-ins signed someone out"
        );
    }
}
