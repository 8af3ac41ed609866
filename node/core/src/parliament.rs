//! The food parliament: seats, proposals, votes and signed decisions.
//!
//! Seats have a kind (citizen, producer, worker) and belong to people;
//! while fewer than half of the active seats are citizens' the parliament
//! cannot vote, and every attempt says why. One seat, one vote; a seat may
//! change its vote while the window is open. Closing tallies against the
//! caisse's quorum and threshold; a passed proposal takes effect in the same
//! atomic batch as its decision, which the caisse signs.

use std::collections::BTreeMap;
use std::fmt;

use caisse_protocol::criteria::Criteria;
use caisse_protocol::messages::{Decision, ScopeItem, Subject};
use caisse_protocol::{CaisseId, ContentId, Day, Envelope, MemberId, ProposalId};
use serde::{Deserialize, Serialize};

use crate::caisse::{Caisse, CaisseError};
use crate::policy::{AllocationPolicy, ContributionScale, RecognitionPolicy, Rollover};
use crate::store::{decode_value, encode_json_value, encode_value, keys};
use crate::view::Reads;

/// Seats by number.
pub const SEAT: &[u8] = b"s/";
/// Proposals by id.
pub const PROPOSAL: &[u8] = b"q/";

/// The kind of a parliament seat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeatKind {
    /// An ordinary resident, a member of the caisse.
    Citizen,
    /// A producer's representative.
    Producer,
    /// A food worker's representative.
    Worker,
}

impl std::str::FromStr for SeatKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "citizen" => Ok(SeatKind::Citizen),
            "producer" => Ok(SeatKind::Producer),
            "worker" => Ok(SeatKind::Worker),
            _ => Err(format!("seat kind {s:?}: use citizen, producer or worker")),
        }
    }
}

/// A seat of the parliament.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seat {
    /// Seat number (`seat-3` in the CLI).
    pub id: u32,
    /// Its kind.
    pub kind: SeatKind,
    /// The member holding it (required for citizen seats).
    pub member: Option<MemberId>,
    /// The person holding it (producer and worker seats name a person).
    pub holder: String,
    /// Day added.
    pub added: Day,
    /// Day removed, if removed.
    pub removed: Option<Day>,
}

/// A vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Choice {
    /// For.
    Yes,
    /// Against.
    No,
    /// Counts for quorum only.
    Abstain,
}

impl std::str::FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "yes" => Ok(Choice::Yes),
            "no" => Ok(Choice::No),
            "abstain" => Ok(Choice::Abstain),
            _ => Err(format!("vote {s:?}: use yes, no or abstain")),
        }
    }
}

/// What a proposal would change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProposalKind {
    /// Adopt a new criteria version.
    Criteria(Criteria),
    /// Change the allocation amount.
    Allocation(AllocationPolicy),
    /// Change the contribution scale.
    ContributionScale(ContributionScale),
    /// Change the rollover policy.
    Rollover(Rollover),
    /// Accredit a producer or outlet.
    Accredit {
        /// Who.
        subject: Subject,
        /// Categories and coverage rates.
        scope: Vec<ScopeItem>,
        /// First valid day.
        valid_from: Day,
        /// Last valid day.
        valid_until: Day,
    },
    /// Revoke an accreditation.
    Revoke {
        /// Which.
        accreditation: ContentId,
        /// Why.
        reason: String,
    },
    /// Recognise a peer caisse's accreditations.
    RecognisePeer {
        /// The caisse.
        caisse: CaisseId,
    },
    /// Set the policy for recognising other caisses' accreditations.
    RecognitionPolicy(RecognitionPolicy),
}

impl fmt::Display for ProposalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposalKind::Criteria(c) => {
                write!(f, "adopt criteria {:?} version {}", c.name, c.version)
            }
            ProposalKind::Allocation(a) => write!(f, "set the allocation to {a:?}"),
            ProposalKind::ContributionScale(_) => f.write_str("change the contribution scale"),
            ProposalKind::Rollover(r) => write!(f, "set the rollover policy to {r:?}"),
            ProposalKind::Accredit { subject, scope, .. } => {
                let cats: Vec<String> = scope
                    .iter()
                    .map(|s| format!("{} at {}%", s.category, s.coverage_pct))
                    .collect();
                let who = match subject {
                    Subject::Producer(p) => p.to_string(),
                    Subject::Outlet(o) => o.to_string(),
                };
                write!(f, "accredit {who} for {}", cats.join(", "))
            }
            ProposalKind::Revoke {
                accreditation,
                reason,
            } => {
                write!(
                    f,
                    "revoke accreditation {} ({reason})",
                    accreditation.short()
                )
            }
            ProposalKind::RecognisePeer { caisse } => {
                write!(f, "recognise caisse {}", caisse.short())
            }
            ProposalKind::RecognitionPolicy(p) => write!(f, "set the recognition policy to {p:?}"),
        }
    }
}

/// The result of closing a proposal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Whether it passed (and took effect).
    pub passed: bool,
    /// Votes for.
    pub yes: u32,
    /// Votes against.
    pub no: u32,
    /// Abstentions.
    pub abstain: u32,
    /// Active seats at closing.
    pub seats: u32,
    /// Why it passed or failed, in words.
    pub reason: String,
    /// Content id of the signed decision.
    pub decision: ContentId,
    /// The signed decision.
    pub envelope: Envelope,
    /// When closed (Unix seconds).
    pub closed_at: u64,
}

/// A proposal put to the parliament.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposal.
    pub id: ProposalId,
    /// A short title.
    pub title: String,
    /// What it would change.
    pub kind: ProposalKind,
    /// Opened (Unix seconds).
    pub opened: u64,
    /// Voting closes (Unix seconds).
    pub closes: u64,
    /// The current vote of each seat.
    pub votes: BTreeMap<u32, Choice>,
    /// Set once closed.
    pub outcome: Option<Outcome>,
    /// For a producer's accreditation: what the other caisses decided about
    /// the same producer, with their criteria, when the proposal was made.
    #[serde(default)]
    pub elsewhere: Vec<Elsewhere>,
}

/// Another caisse's accreditation of the producer a proposal is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elsewhere {
    /// The caisse.
    pub caisse: caisse_protocol::CaisseId,
    /// Its name.
    pub caisse_name: String,
    /// The accreditation.
    pub accreditation: caisse_protocol::ContentId,
    /// Categories and coverage rates.
    pub scope: Vec<caisse_protocol::messages::ScopeItem>,
    /// First day of validity.
    pub valid_from: Day,
    /// Last day of validity.
    pub valid_until: Day,
    /// Whether it has been revoked.
    pub revoked: bool,
    /// The hash of the criteria version it was judged against.
    pub criteria: caisse_protocol::ContentId,
    /// That caisse's current criteria (name, version, rule), to compare
    /// with ours side by side.
    pub their_criteria: Option<caisse_protocol::criteria::Criteria>,
}

/// What a vote did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRecorded {
    /// The proposal.
    pub proposal: ProposalId,
    /// The seat.
    pub seat: u32,
    /// The vote now counted.
    pub choice: Choice,
    /// The vote it replaced, if the seat had voted before.
    pub replaced: Option<Choice>,
}

fn seat_key(id: u32) -> Vec<u8> {
    keys::key(SEAT, &[&id.to_be_bytes()])
}

pub(crate) fn proposal_key(id: &ProposalId) -> Vec<u8> {
    keys::key(PROPOSAL, &[id.as_bytes()])
}

/// Why the parliament, as composed, cannot vote (or `None` if it can).
pub fn composition_problem(seats: &[Seat]) -> Option<String> {
    let active: Vec<&Seat> = seats.iter().filter(|s| s.removed.is_none()).collect();
    let citizens = active
        .iter()
        .filter(|s| s.kind == SeatKind::Citizen)
        .count();
    if active.is_empty() {
        return Some("the parliament has no seats: add seats with `parliament seat add`".into());
    }
    if citizens.saturating_mul(2) < active.len() {
        return Some(format!(
            "the parliament cannot vote: only {citizens} of its {} seats are citizens, and at least half must be (add citizen seats or remove others)",
            active.len()
        ));
    }
    None
}

impl Caisse {
    /// Add a seat. Citizen seats are held by members; producer and worker
    /// seats name a person.
    pub fn add_seat(
        &mut self,
        kind: SeatKind,
        member: Option<MemberId>,
        holder: Option<String>,
        today: Day,
    ) -> Result<Seat, CaisseError> {
        let seats = self.seats()?;
        let holder = match (kind, member) {
            (SeatKind::Citizen, None) => {
                return Err(CaisseError::Invalid(
                    "a citizen seat is held by a member: give --member ID".into(),
                ));
            }
            (_, Some(m)) => {
                let rec = self.member_record(&m)?;
                if rec.status != crate::members::MemberStatus::Active {
                    return Err(CaisseError::Invalid(format!(
                        "member {m} is not active and cannot hold a seat"
                    )));
                }
                if seats
                    .iter()
                    .any(|s| s.removed.is_none() && s.member == Some(m))
                {
                    return Err(CaisseError::Conflict(format!(
                        "member {m} already holds a seat: one person, one vote"
                    )));
                }
                holder.unwrap_or(rec.name)
            }
            (_, None) => holder.filter(|h| !h.trim().is_empty()).ok_or_else(|| {
                CaisseError::Invalid(
                    "a producer or worker seat names the person holding it: give --holder NAME"
                        .into(),
                )
            })?,
        };
        if holder.len() > 100 {
            return Err(CaisseError::Invalid(
                "holder name is at most 100 characters".into(),
            ));
        }
        let id = seats
            .iter()
            .map(|s| s.id)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let seat = Seat {
            id,
            kind,
            member,
            holder: holder.trim().to_owned(),
            added: today,
            removed: None,
        };
        self.pending.put(seat_key(id), encode_value(&seat));
        Ok(seat)
    }

    /// Remove a seat; its votes on open proposals no longer count.
    pub fn remove_seat(&mut self, id: u32, today: Day) -> Result<Seat, CaisseError> {
        let key = seat_key(id);
        let bytes = self.get(&key)?.ok_or_else(|| CaisseError::NotFound {
            what: "seat",
            id: format!("seat-{id}"),
        })?;
        let mut seat: Seat = decode_value(&key, &bytes)?;
        if seat.removed.is_some() {
            return Err(CaisseError::Conflict(format!(
                "seat-{id} was already removed"
            )));
        }
        seat.removed = Some(today);
        self.pending.put(key, encode_value(&seat));
        Ok(seat)
    }

    /// Put a proposal to the parliament, open for `window_minutes` (default:
    /// the caisse's parameter).
    pub fn propose(
        &mut self,
        title: String,
        kind: ProposalKind,
        window_minutes: Option<u32>,
        now: u64,
    ) -> Result<Proposal, CaisseError> {
        if let Some(problem) = composition_problem(&self.seats()?) {
            return Err(CaisseError::Conflict(problem));
        }
        if title.trim().is_empty() || title.len() > 200 {
            return Err(CaisseError::Invalid(
                "a proposal title is 1 to 200 characters".into(),
            ));
        }
        let today = Day::from_unix(now);
        let mut elsewhere = Vec::new();
        if let ProposalKind::Accredit {
            subject: Subject::Producer(p),
            ..
        } = &kind
        {
            // A producer known here only from the federation (its dossier in
            // another caisse's document): take its dossier in, so one
            // proposal accredits it.
            if self.conventions.producer(p).is_none()
                && let Some(d) = self.peers.dossier(p)
            {
                let envelope = d.envelope.clone();
                self.record_dossier(envelope, today)?;
            }
            elsewhere = self.elsewhere(p);
        }
        self.check_proposal(&kind, today)?;
        let window = window_minutes.unwrap_or(self.policy.parliament.window_minutes);
        let proposal = Proposal {
            id: ProposalId::from_bytes(self.random16()),
            title: title.trim().to_owned(),
            kind,
            opened: now,
            closes: now.saturating_add(u64::from(window).saturating_mul(60)),
            votes: BTreeMap::new(),
            outcome: None,
            elsewhere,
        };
        self.pending
            .put(proposal_key(&proposal.id), encode_json_value(&proposal));
        Ok(proposal)
    }

    /// Every other caisse's accreditation of `producer`, from the federation.
    pub fn elsewhere(&self, producer: &caisse_protocol::ProducerId) -> Vec<Elsewhere> {
        let subject = Subject::Producer(*producer);
        self.peers
            .caisses
            .iter()
            .filter(|(c, _)| **c != self.id)
            .flat_map(|(c, peer)| {
                peer.accreditations
                    .iter()
                    .filter(|a| a.accreditation.subject == subject)
                    .map(move |a| Elsewhere {
                        caisse: *c,
                        caisse_name: peer
                            .profile
                            .as_ref()
                            .map(|p| p.name.clone())
                            .unwrap_or_default(),
                        accreditation: a.id,
                        scope: a.accreditation.scope.clone(),
                        valid_from: a.accreditation.valid_from,
                        valid_until: a.accreditation.valid_until,
                        revoked: a.revocation.is_some(),
                        criteria: a.accreditation.criteria,
                        their_criteria: peer.criteria.as_ref().map(|(c, _)| c.clone()),
                    })
            })
            .collect()
    }

    /// Check that a proposal could take effect if it passed.
    fn check_proposal(&self, kind: &ProposalKind, today: Day) -> Result<(), CaisseError> {
        let invalid = |m: String| Err(CaisseError::Invalid(m));
        match kind {
            ProposalKind::Criteria(c) => {
                c.validate()
                    .map_err(|e| CaisseError::Invalid(format!("criteria: {e}")))?;
                if let Some(cur) = self.conventions.criteria()
                    && c.version <= cur.version.criteria.version
                {
                    return invalid(format!(
                        "criteria version {} must be above the current version {}",
                        c.version, cur.version.criteria.version
                    ));
                }
            }
            ProposalKind::Allocation(_)
            | ProposalKind::ContributionScale(_)
            | ProposalKind::Rollover(_) => {
                let mut p = self.policy.clone();
                apply_policy_change(&mut p, kind);
                p.validate()
                    .map_err(|e| CaisseError::Invalid(format!("policy: {e}")))?;
            }
            ProposalKind::Accredit {
                subject,
                scope,
                valid_from,
                valid_until,
            } => {
                if scope.is_empty() || scope.iter().any(|s| s.coverage_pct > 100) {
                    return invalid("scope must list categories with coverage 0 to 100%".into());
                }
                if valid_until < valid_from {
                    return invalid("valid_until is before valid_from".into());
                }
                let criteria = self.conventions.criteria().ok_or_else(|| {
                    CaisseError::Conflict(
                        "adopt criteria first: an accreditation is judged against a criteria version".into(),
                    )
                })?;
                match subject {
                    Subject::Producer(p) => {
                        let producer =
                            self.conventions
                                .producer(p)
                                .ok_or_else(|| CaisseError::NotFound {
                                    what: "producer",
                                    id: p.to_string(),
                                })?;
                        let attributes = producer.attributes_on(
                            (*valid_from).max(today),
                            self.policy.territory_centre.as_ref(),
                        );
                        let e = criteria.version.criteria.evaluate(&attributes);
                        if !e.passed {
                            return Err(CaisseError::Conflict(format!(
                                "{} does not meet criteria version {}: {}",
                                producer.name,
                                criteria.version.criteria.version,
                                e.failures.join("; ")
                            )));
                        }
                    }
                    Subject::Outlet(o) => {
                        if !self.outlets.contains_key(o) {
                            return Err(CaisseError::NotFound {
                                what: "outlet",
                                id: o.to_string(),
                            });
                        }
                    }
                }
            }
            ProposalKind::Revoke {
                accreditation,
                reason,
            } => {
                if reason.len() > 200 {
                    return invalid("the reason is at most 200 characters".into());
                }
                match self.conventions.accreditations.get(accreditation) {
                    None => {
                        return Err(CaisseError::NotFound {
                            what: "accreditation",
                            id: accreditation.to_string(),
                        });
                    }
                    Some(r) if r.revoked.is_some() => {
                        return Err(CaisseError::Conflict(
                            "that accreditation is already revoked".into(),
                        ));
                    }
                    Some(_) => {}
                }
            }
            ProposalKind::RecognisePeer { caisse } => {
                if *caisse == self.id {
                    return invalid("a caisse does not need to recognise itself".into());
                }
            }
            ProposalKind::RecognitionPolicy(_) => {}
        }
        Ok(())
    }

    /// Record a seat's vote. A seat may change its vote while the window is open.
    pub fn vote(
        &mut self,
        proposal: ProposalId,
        seat: u32,
        choice: Choice,
        now: u64,
    ) -> Result<VoteRecorded, CaisseError> {
        let seats = self.seats()?;
        if let Some(problem) = composition_problem(&seats) {
            return Err(CaisseError::Conflict(problem));
        }
        let mut p = self.proposal(&proposal)?;
        if p.outcome.is_some() {
            return Err(CaisseError::Conflict(format!(
                "proposal {} is closed: votes are no longer accepted",
                p.id
            )));
        }
        if now >= p.closes {
            return Err(CaisseError::Conflict(format!(
                "voting on proposal {} closed at {}: this vote is late and was not counted",
                p.id,
                Day::from_unix(p.closes)
            )));
        }
        let Some(s) = seats.iter().find(|s| s.id == seat) else {
            return Err(CaisseError::NotFound {
                what: "seat",
                id: format!("seat-{seat}"),
            });
        };
        if s.removed.is_some() {
            return Err(CaisseError::Conflict(format!(
                "seat-{seat} was removed on {} and cannot vote",
                s.removed.unwrap_or(Day::from_days(0))
            )));
        }
        let replaced = p.votes.insert(seat, choice);
        self.pending.put(proposal_key(&p.id), encode_json_value(&p));
        Ok(VoteRecorded {
            proposal,
            seat,
            choice,
            replaced,
        })
    }

    /// Close a proposal: tally, and if it passed, apply it in the same
    /// batch as its signed decision. Allowed once the window has ended, or
    /// earlier when every active seat has voted.
    pub fn close_proposal(&mut self, id: ProposalId, now: u64) -> Result<Proposal, CaisseError> {
        let seats = self.seats()?;
        let mut p = self.proposal(&id)?;
        if p.outcome.is_some() {
            return Err(CaisseError::Conflict(format!(
                "proposal {id} is already closed"
            )));
        }
        let active: Vec<&Seat> = seats.iter().filter(|s| s.removed.is_none()).collect();
        let counted: Vec<Choice> = active
            .iter()
            .filter_map(|s| p.votes.get(&s.id).copied())
            .collect();
        if now < p.closes && counted.len() < active.len() {
            return Err(CaisseError::Conflict(format!(
                "voting is open until {} and {} of {} seats have voted; close it then, or once every seat has voted",
                Day::from_unix(p.closes),
                counted.len(),
                active.len()
            )));
        }
        let count = |c: Choice| counted.iter().filter(|x| **x == c).count() as u32;
        let (yes, no, abstain) = (
            count(Choice::Yes),
            count(Choice::No),
            count(Choice::Abstain),
        );
        let seats_n = active.len() as u32;
        let rules = self.policy.parliament.clone();
        let cast = yes + no + abstain;
        let (mut passed, mut reason) = if let Some(problem) = composition_problem(&seats) {
            (false, problem)
        } else if u64::from(cast) * 100 < u64::from(rules.quorum_pct) * u64::from(seats_n) {
            (
                false,
                format!(
                    "quorum not reached: {cast} of {seats_n} seats voted, {}% needed",
                    rules.quorum_pct
                ),
            )
        } else if u64::from(yes) * 100 > u64::from(rules.threshold_pct) * u64::from(yes + no) {
            (
                true,
                format!("passed: {yes} yes, {no} no, {abstain} abstain"),
            )
        } else {
            (
                false,
                format!(
                    "rejected: {yes} yes, {no} no, {abstain} abstain (more than {}% yes needed)",
                    rules.threshold_pct
                ),
            )
        };
        let today = Day::from_unix(now);
        if passed && let Err(e) = self.apply_proposal(&p, today) {
            // The world changed since the proposal was made (e.g. the accreditation was
            // revoked another way): record the vote, apply nothing.
            passed = false;
            reason = format!("passed the vote but could not take effect: {e}");
        }
        let decision = Decision {
            caisse: self.id,
            proposal: id,
            summary: format!("{}: {}", p.title, reason)
                .chars()
                .take(200)
                .collect(),
            passed,
            yes,
            no,
            abstain,
            seats: seats_n,
            decided_on: today,
        };
        let envelope = Envelope::seal(&self.secret, &self.federation, &decision)
            .map_err(|e| CaisseError::Invalid(format!("decision: {e}")))?;
        let decision_id = envelope.content_id(&self.federation, 1);
        p.outcome = Some(Outcome {
            passed,
            yes,
            no,
            abstain,
            seats: seats_n,
            reason,
            decision: decision_id,
            envelope,
            closed_at: now,
        });
        self.pending.put(proposal_key(&id), encode_json_value(&p));
        Ok(p)
    }

    fn apply_proposal(&mut self, p: &Proposal, today: Day) -> Result<(), CaisseError> {
        match &p.kind {
            ProposalKind::Criteria(c) => {
                self.adopt_criteria(c.clone(), Some(p.id), today)?;
            }
            ProposalKind::Allocation(_)
            | ProposalKind::ContributionScale(_)
            | ProposalKind::Rollover(_) => {
                let mut policy = self.policy.clone();
                apply_policy_change(&mut policy, &p.kind);
                self.set_policy(policy)?;
            }
            ProposalKind::Accredit {
                subject,
                scope,
                valid_from,
                valid_until,
            } => {
                self.check_proposal(&p.kind, today)?;
                self.accredit(
                    *subject,
                    scope.clone(),
                    *valid_from,
                    *valid_until,
                    Some(p.id),
                )?;
            }
            ProposalKind::Revoke {
                accreditation,
                reason,
            } => self.revoke(*accreditation, reason.clone(), Some(p.id), today)?,
            ProposalKind::RecognisePeer { caisse } => {
                let mut policy = self.policy.clone();
                if !policy.recognition.recognised.contains(caisse) {
                    policy.recognition.recognised.push(*caisse);
                }
                self.set_policy(policy)?;
            }
            ProposalKind::RecognitionPolicy(r) => {
                let mut policy = self.policy.clone();
                policy.recognition.policy = r.clone();
                self.set_policy(policy)?;
            }
        }
        Ok(())
    }
}

/// Apply a policy-changing proposal to a copy of the policy.
fn apply_policy_change(policy: &mut crate::policy::Policy, kind: &ProposalKind) {
    match kind {
        ProposalKind::Allocation(a) => policy.allocation = a.clone(),
        ProposalKind::ContributionScale(c) => policy.contribution = c.clone(),
        ProposalKind::Rollover(r) => policy.rollover = r.clone(),
        _ => {}
    }
}

/// The outcome of a citizens' lottery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drawn {
    /// The published seed.
    pub seed: u64,
    /// The eligible volunteers with their strata.
    pub volunteers: Vec<Volunteer>,
    /// Volunteers left out: not active, or already seated.
    pub excluded: Vec<MemberId>,
    /// The members drawn.
    pub drawn: Vec<MemberId>,
    /// The seats created for them.
    pub seats: Vec<Seat>,
}

impl Caisse {
    /// Draw `seats` citizen seats among `volunteers` (stratified lottery
    /// from the published `seed`) and seat the members drawn, all or
    /// nothing. Members not active or already seated are excluded.
    pub fn draw_seats(
        &mut self,
        seats: usize,
        seed: u64,
        volunteers: &[MemberId],
        today: Day,
    ) -> Result<Drawn, CaisseError> {
        let seated: Vec<MemberId> = self
            .seats()?
            .iter()
            .filter(|s| s.removed.is_none())
            .filter_map(|s| s.member)
            .collect();
        let mut eligible = Vec::new();
        let mut excluded = Vec::new();
        for m in volunteers {
            let rec = self.member_record(m)?;
            if rec.status != crate::members::MemberStatus::Active || seated.contains(m) {
                excluded.push(*m);
                continue;
            }
            eligible.push(Volunteer {
                member: *m,
                age_band: age_band(rec.birth_year, today.ymd().0),
                income_bracket: match rec.income {
                    Some(i) => self
                        .policy()
                        .contribution_for(Some(i))
                        .map_or_else(|_| "unknown".into(), |(_, b)| b.to_string()),
                    None => "unknown".into(),
                },
            });
        }
        let drawn = draw(&eligible, seats, seed);
        let mut created = Vec::with_capacity(drawn.len());
        for m in &drawn {
            created.push(self.add_seat(SeatKind::Citizen, Some(*m), None, today)?);
        }
        Ok(Drawn {
            seed,
            volunteers: eligible,
            excluded,
            drawn,
            seats: created,
        })
    }
}

/// A volunteer for the citizens' lottery, with the stratum they belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volunteer {
    /// The member.
    pub member: MemberId,
    /// Age band (`18-29`, `30-44`, …, `unknown`).
    pub age_band: String,
    /// Income bracket on the caisse's scale (`0`, `1`, …, `unknown`).
    pub income_bracket: String,
}

/// The age band of someone born in `birth_year`, in `year`.
pub fn age_band(birth_year: Option<u16>, year: u16) -> String {
    match birth_year.map(|b| year.saturating_sub(b)) {
        None => "unknown".into(),
        Some(a) if a < 30 => "18-29".into(),
        Some(a) if a < 45 => "30-44".into(),
        Some(a) if a < 60 => "45-59".into(),
        Some(a) if a < 75 => "60-74".into(),
        Some(_) => "75+".into(),
    }
}

/// SplitMix64: a tiny, well-known generator, so anyone can re-run a draw
/// from its published seed in any language.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number below `n` (n > 0), without modulo bias worth noting for draws.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Draw `seats` citizens among `volunteers`, stratified: each stratum (age
/// band × income bracket) gets seats in proportion to its volunteers
/// (largest remainders, ties by stratum name), then members are drawn within
/// each stratum. Deterministic from `seed` and the set of volunteers.
pub fn draw(volunteers: &[Volunteer], seats: usize, seed: u64) -> Vec<MemberId> {
    let mut strata: BTreeMap<(String, String), Vec<MemberId>> = BTreeMap::new();
    for v in volunteers {
        strata
            .entry((v.age_band.clone(), v.income_bracket.clone()))
            .or_default()
            .push(v.member);
    }
    for members in strata.values_mut() {
        members.sort();
        members.dedup();
    }
    let total: usize = strata.values().map(Vec::len).sum();
    let seats = seats.min(total);
    if seats == 0 {
        return Vec::new();
    }
    // Proportional quotas by largest remainder.
    let mut quotas: Vec<((String, String), usize, usize)> = strata
        .iter()
        .map(|(k, m)| {
            let exact = m.len() * seats;
            (k.clone(), exact / total, exact % total)
        })
        .collect();
    let mut left = seats - quotas.iter().map(|q| q.1).sum::<usize>();
    let mut order: Vec<usize> = (0..quotas.len()).collect();
    order.sort_by(|a, b| {
        quotas[*b]
            .2
            .cmp(&quotas[*a].2)
            .then(quotas[*a].0.cmp(&quotas[*b].0))
    });
    for i in order {
        if left == 0 {
            break;
        }
        if quotas[i].1 < strata[&quotas[i].0].len() {
            quotas[i].1 += 1;
            left -= 1;
        }
    }
    let mut rng = SplitMix64(seed);
    let mut chosen = Vec::with_capacity(seats);
    for (key, quota, _) in quotas {
        let mut pool = strata[&key].clone();
        for i in 0..quota.min(pool.len()) {
            let j = i + rng.below((pool.len() - i) as u64) as usize;
            pool.swap(i, j);
            chosen.push(pool[i]);
        }
    }
    chosen.sort();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vol(n: u8, age: &str, inc: &str) -> Volunteer {
        Volunteer {
            member: MemberId::from_bytes([n; 16]),
            age_band: age.into(),
            income_bracket: inc.into(),
        }
    }

    #[test]
    fn composition_rule() {
        let seat = |id, kind| Seat {
            id,
            kind,
            member: None,
            holder: "x".into(),
            added: Day::from_days(0),
            removed: None,
        };
        assert!(composition_problem(&[]).is_some());
        assert!(
            composition_problem(&[seat(1, SeatKind::Citizen), seat(2, SeatKind::Producer)])
                .is_none()
        );
        let p = composition_problem(&[
            seat(1, SeatKind::Citizen),
            seat(2, SeatKind::Producer),
            seat(3, SeatKind::Worker),
        ])
        .unwrap();
        assert!(p.contains("only 1 of its 3 seats are citizens"), "{p}");
    }

    #[test]
    fn draw_is_stratified_and_reproducible() {
        let mut v = Vec::new();
        for i in 0..60 {
            v.push(vol(i, "18-29", "0"));
        }
        for i in 60..100 {
            v.push(vol(i, "60-74", "3"));
        }
        let a = draw(&v, 10, 42);
        assert_eq!(a.len(), 10);
        let young = a.iter().filter(|m| m.as_bytes()[0] < 60).count();
        assert_eq!(young, 6, "seats in proportion to the strata");
        assert_eq!(draw(&v, 10, 42), a, "same seed, same draw");
        assert_ne!(draw(&v, 10, 43), a, "another seed, another draw");
        let mut reversed = v.clone();
        reversed.reverse();
        assert_eq!(
            draw(&reversed, 10, 42),
            a,
            "the order of the file does not matter"
        );
    }

    proptest! {
        #[test]
        fn draw_picks_distinct_volunteers(n in 0usize..80, seats in 0usize..100, seed in any::<u64>()) {
            let v: Vec<Volunteer> = (0..n)
                .map(|i| vol(i as u8, ["18-29", "30-44", "unknown"][i % 3], ["0", "1"][i % 2]))
                .collect();
            let d = draw(&v, seats, seed);
            prop_assert_eq!(d.len(), seats.min(n));
            let mut dd = d.clone();
            dd.dedup();
            prop_assert_eq!(dd.len(), d.len());
        }
    }
}
