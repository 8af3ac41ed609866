//! Console sessions and the sign-in rate limiter, in memory.
//!
//! A session is created on the first visit (so that even the sign-in forms
//! carry a CSRF token) and replaced by a new one at sign-in and sign-out.
//! Sessions expire when idle; their number is bounded, the oldest going
//! first. Nothing here is written to disk: a restart signs everyone out.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caisse_protocol::{CardId, MemberId, OutletId};

use super::Kind;
use super::html::Flash;

/// The most sessions kept; beyond, the least recently used go.
pub const MAX_SESSIONS: usize = 20_000;
/// Failed sign-ins allowed per client address within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 5;
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
            Who::Member { .. } => Kind::Member,
        }
    }

    /// How long the session may stay idle: a shop's tablet stays open the
    /// whole day, a member's page on a shared device does not.
    fn idle(&self) -> Duration {
        match self {
            Who::Outlet { .. } => Duration::from_secs(14 * 3600),
            Who::Admin | Who::Observer | Who::Seat { .. } => Duration::from_secs(8 * 3600),
            Who::Member { .. } => Duration::from_secs(20 * 60),
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
    /// A message for the next page shown.
    pub flash: Option<Flash>,
    /// The pseudonym key of this session's anonymised export, by period:
    /// drawn at the first download so that the two files of one export
    /// share pseudonyms, forgotten with the session.
    export_keys: Vec<(caisse_protocol::Period, [u8; 32])>,
    last_seen: Instant,
}

/// The sessions and the limiter, shared by every request.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    failures: HashMap<String, VecDeque<Instant>>,
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

    /// A live session by cookie value (touching it).
    pub fn get(&self, id: &str) -> Option<Session> {
        if id.len() != 64 {
            return None;
        }
        let mut g = self.lock();
        let now = Instant::now();
        let s = g.sessions.get_mut(id)?;
        let idle = s.who.as_ref().map_or(Duration::from_secs(3600), Who::idle);
        if now.duration_since(s.last_seen) > idle {
            g.sessions.remove(id);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    /// A new session.
    pub fn create(&self, who: Option<Who>) -> Session {
        let s = Session {
            id: random_hex(),
            csrf: random_hex(),
            who,
            flash: None,
            export_keys: Vec::new(),
            last_seen: Instant::now(),
        };
        let mut g = self.lock();
        if g.sessions.len() >= MAX_SESSIONS {
            let now = Instant::now();
            g.sessions.retain(|_, x| {
                now.duration_since(x.last_seen)
                    <= x.who.as_ref().map_or(Duration::from_secs(3600), Who::idle)
            });
            // Still full: drop the least recently used tenth, anonymous
            // sessions first, so a flood of visits cannot sign anyone out.
            if g.sessions.len() >= MAX_SESSIONS {
                let mut order: Vec<(bool, Instant, String)> = g
                    .sessions
                    .values()
                    .map(|x| (x.who.is_some(), x.last_seen, x.id.clone()))
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
        let mut g = self.lock();
        if g.failures.len() > MAX_SESSIONS {
            let now = Instant::now();
            g.failures.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t) < FAILURE_WINDOW)
            });
        }
        let q = g.failures.entry(client.to_owned()).or_default();
        q.push_back(Instant::now());
        while q.len() > MAX_FAILURES {
            q.pop_front();
        }
    }

    /// How long `client` must wait before trying again, if it must.
    pub fn limiter_wait(&self, client: &str) -> Option<Duration> {
        let g = self.lock();
        let q = g.failures.get(client)?;
        if q.len() < MAX_FAILURES {
            return None;
        }
        let first = q.front()?;
        let elapsed = Instant::now().duration_since(*first);
        FAILURE_WINDOW.checked_sub(elapsed).filter(|d| !d.is_zero())
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
        let a = s.create(None);
        let b = s.create(Some(Who::Admin));
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf, a.id);
        assert_eq!(a.id.len(), 64);
        assert_eq!(s.get(&b.id).and_then(|x| x.who), Some(Who::Admin));
        assert!(s.get("not-a-session").is_none());
        s.remove(&b.id);
        assert!(s.get(&b.id).is_none());
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
        let signed_in = s.create(Some(Who::Observer));
        for _ in 0..MAX_SESSIONS + 10 {
            s.create(None);
        }
        assert!(s.len() <= MAX_SESSIONS);
        assert!(
            s.get(&signed_in.id).is_some(),
            "a flood of visits signed someone out"
        );
    }
}
