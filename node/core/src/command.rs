//! Commands to a caisse and their replies, as data.
//!
//! Everything that changes a caisse's state is one [`Command`]: the HTTP
//! API, the console, the federation task and a simulator all build these
//! values, and [`Caisse::execute`] decides each one all or nothing. A
//! command can be logged, replayed or generated; nothing else reaches the
//! writer. Reads do not go through here: they run on a [`crate::view`] off
//! the writer.

use caisse_protocol::criteria::Attributes;
use caisse_protocol::{
    Amount, CaisseId, CardId, Category, ContentId, Day, Envelope, MemberId, OutletId, Period,
    ProducerId, ProposalId, PurchaseId,
};
use serde::{Deserialize, Serialize};

use crate::caisse::{
    Caisse, CaisseError, ContributionRecorded, EnrollInput, Enrolled, OutletRegistered, PayoutDone,
    PurchaseInput, Receipt, StatusChange, SubsidyRecorded,
};
use crate::conventionnement::ProducerRecord;
use crate::ledger::SubsidySource;
use crate::members::{MemberRecord, Role};
use crate::parliament::{Choice, Drawn, Proposal, ProposalKind, Seat, SeatKind, VoteRecorded};
use crate::settlement::{CrossStep, SettlementRun};

/// A change asked of the caisse. Decided all or nothing by
/// [`Caisse::execute`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Enrol a member.
    Enroll(EnrollInput),
    /// Suspend, reinstate or record the departure of a member.
    ChangeStatus {
        /// The member.
        member: MemberId,
        /// The change.
        change: StatusChange,
    },
    /// Set or reset a member's PIN.
    SetPin {
        /// The member.
        member: MemberId,
        /// The new PIN.
        pin: String,
    },
    /// Record a member's contribution (the scale's amount when none).
    Contribution {
        /// The member.
        member: MemberId,
        /// The period.
        period: Period,
        /// The amount, if not the scale's.
        amount: Option<Amount>,
    },
    /// Record the contribution of the member holding `card`.
    ContributionByCard {
        /// The member's card.
        card: CardId,
        /// The period.
        period: Period,
        /// The amount, if not the scale's.
        amount: Option<Amount>,
    },
    /// Record a subsidy (idempotent by `key`).
    Subsidy {
        /// The funder.
        source: SubsidySource,
        /// The amount.
        amount: Amount,
        /// The period.
        period: Period,
        /// The idempotency key (a bank reference).
        key: String,
    },
    /// Register an outlet (with an administrative accreditation when
    /// categories are given).
    RegisterOutlet {
        /// Its name.
        name: String,
        /// Categories and coverage.
        categories: Vec<(Category, u8)>,
    },
    /// Create an API token for a role.
    NewToken {
        /// The role.
        role: Role,
    },
    /// Revoke an API token, named by the start of its hash (as listed).
    RevokeToken {
        /// At least 8 hex digits of the token's hash.
        id: String,
    },
    /// Set the bank account of an outlet, or of the caisse (`outlet: None`).
    SetBank {
        /// The outlet, or none for the caisse itself.
        outlet: Option<OutletId>,
        /// The holder's name.
        holder: String,
        /// The IBAN (checked).
        iban: String,
        /// The BIC, if known.
        bic: Option<String>,
        /// The caisse's SEPA creditor identifier (its own account only).
        #[serde(default)]
        creditor_id: Option<String>,
    },
    /// Record (or replace) a member's SEPA direct debit mandate.
    SetMandate {
        /// The member.
        member: MemberId,
        /// The unique mandate reference.
        reference: String,
        /// The day it was signed.
        signed_on: Day,
        /// The account holder.
        holder: String,
        /// The IBAN (checked).
        iban: String,
        /// The BIC, if known.
        bic: Option<String>,
    },
    /// Suspend an outlet's tills, or reinstate them.
    SuspendOutlet {
        /// The outlet.
        outlet: OutletId,
        /// True to suspend, false to reinstate.
        suspended: bool,
        /// Why (shown to the till and in the outlet list).
        reason: Option<String>,
    },
    /// A local purchase at one of this caisse's outlets.
    Purchase(PurchaseInput),
    /// Pay an outlet what it is owed for a period.
    Payout {
        /// The outlet.
        outlet: OutletId,
        /// The period.
        period: Period,
    },
    /// A member signing in with card and PIN (a wrong PIN counts).
    MemberLogin {
        /// The card.
        card: CardId,
        /// The PIN typed.
        pin: String,
    },
    /// Host side of a cross-caisse purchase: check and sign the request.
    PrepareCrossPurchase(PurchaseInput),
    /// Host side: accept a sale under the offline floor.
    AcceptOffline {
        /// The till's purchase.
        input: PurchaseInput,
        /// The card's home caisse.
        home: CaisseId,
        /// The signed request to forward later.
        request: Envelope,
        /// The allocation part credited to the outlet.
        allocation_part: Amount,
    },
    /// Host side: record the home caisse's signed answer.
    RecordCrossAnswer {
        /// The till's purchase.
        input: PurchaseInput,
        /// The card's home caisse.
        home: CaisseId,
        /// The request sent.
        request: Envelope,
        /// The signed receipt or decline.
        answer: Envelope,
    },
    /// Home side: decide a purchase another caisse forwarded.
    HomePurchase {
        /// The host's signed request.
        request: Envelope,
    },
    /// Host side: the home's answer to a sale accepted offline.
    ResolveOffline {
        /// The purchase.
        purchase: PurchaseId,
        /// The signed receipt or decline.
        answer: Envelope,
    },
    /// Add a parliament seat.
    AddSeat {
        /// Citizen, producer or worker.
        kind: SeatKind,
        /// The member holding it (citizen seats).
        member: Option<MemberId>,
        /// The person holding it (others).
        holder: Option<String>,
    },
    /// Remove a seat.
    RemoveSeat {
        /// The seat number.
        seat: u32,
    },
    /// Draw citizen seats by stratified lottery among volunteers.
    DrawSeats {
        /// Seats to fill.
        seats: usize,
        /// The published seed.
        seed: u64,
        /// The volunteers.
        volunteers: Vec<MemberId>,
    },
    /// Put a proposal to the vote.
    Propose {
        /// Its title.
        title: String,
        /// What it changes.
        kind: ProposalKind,
        /// Voting window, if not the caisse's default.
        window_minutes: Option<u32>,
    },
    /// A seat's vote.
    Vote {
        /// The proposal.
        proposal: ProposalId,
        /// The seat.
        seat: u32,
        /// Yes, no or abstain.
        choice: Choice,
    },
    /// Close a vote and apply the proposal if it passed.
    CloseProposal {
        /// The proposal.
        proposal: ProposalId,
    },
    /// Register a producer with its declared attributes.
    RegisterProducer {
        /// Its name.
        name: String,
        /// Declared attributes.
        attributes: Attributes,
    },
    /// Take in a producer's signed dossier (verified against the producer's
    /// key; newer than the version held) and carry it in our document.
    RecordDossier {
        /// The producer's signed [`caisse_protocol::producer::ProducerDossier`].
        envelope: Envelope,
    },
    /// Give a producer registered before producers had keys an identity
    /// (a key the caisse holds until the producer claims it).
    AdoptProducer {
        /// The old record.
        producer: ProducerId,
        /// Its business details.
        adoption: crate::conventionnement::Adoption,
    },
    /// Hand the held key over to its producer (once).
    HandOverProducerKey {
        /// The producer identity.
        producer: ProducerId,
    },
    /// Set the centre of the caisse's territory, from which producers'
    /// distances are computed.
    SetTerritoryCentre {
        /// The centre (none: distances unknown).
        centre: Option<caisse_protocol::producer::GeoPoint>,
    },
    /// Sign this period's settlement statements and answer the others'.
    RunSettlement {
        /// The period.
        period: Period,
    },
    /// Record receipts a debtor re-sent to resolve a dispute.
    RecordResent {
        /// The debtor.
        debtor: CaisseId,
        /// The period.
        period: Period,
        /// The receipts.
        receipts: Vec<Envelope>,
    },
    /// Withdraw the claims a debtor disputed as unknown to it, and publish
    /// a revised statement without them.
    WithdrawClaims {
        /// The debtor.
        debtor: CaisseId,
        /// The period.
        period: Period,
    },
    /// Declare a net transfer paid.
    RecordTransfer {
        /// The period.
        period: Period,
        /// The receiving caisse.
        to: CaisseId,
        /// The amount.
        amount: Amount,
        /// The bank reference.
        reference: String,
    },
    /// Answer (acknowledge or dispute) the statements other caisses
    /// published against this one for these periods.
    AnswerStatements {
        /// The periods.
        periods: Vec<Period>,
    },
    /// Other caisses' documents, as the federation task read them after a
    /// sync: what purchase and settlement decisions see of the federation.
    /// Replies with the number of other caisses known once they are taken in.
    PeerDocuments {
        /// Each caisse's verified statements.
        peers: Vec<crate::federation_view::PeerCaisse>,
    },
}

/// What a command did.
#[derive(Clone, Debug)]
pub enum Reply {
    /// [`Command::Enroll`].
    Enrolled(Enrolled),
    /// [`Command::ChangeStatus`].
    Member(Box<MemberRecord>),
    /// [`Command::SetPin`].
    Card(CardId),
    /// [`Command::Contribution`], [`Command::ContributionByCard`].
    Contribution(ContributionRecorded),
    /// [`Command::Subsidy`].
    Subsidy(SubsidyRecorded),
    /// [`Command::RegisterOutlet`].
    Outlet(OutletRegistered),
    /// [`Command::NewToken`].
    Token(String),
    /// [`Command::RevokeToken`]: the role the token had.
    Revoked(Role),
    /// [`Command::SuspendOutlet`]: whether the tills are now suspended.
    Suspended(bool),
    /// [`Command::SetBank`]: the account as stored.
    Bank(crate::sepa::BankAccount),
    /// [`Command::Purchase`], [`Command::AcceptOffline`], [`Command::RecordCrossAnswer`].
    Receipt(Box<Receipt>),
    /// [`Command::Payout`].
    Payout(PayoutDone),
    /// [`Command::MemberLogin`].
    SignedIn(MemberId),
    /// [`Command::PrepareCrossPurchase`].
    Cross(Box<CrossStep>),
    /// [`Command::HomePurchase`]: the signed receipt or decline.
    Answer(Box<Envelope>),
    /// [`Command::ResolveOffline`]: whether the home confirmed the sale.
    Resolved(bool),
    /// [`Command::AddSeat`], [`Command::RemoveSeat`].
    Seat(Seat),
    /// [`Command::DrawSeats`].
    Drawn(Box<Drawn>),
    /// [`Command::Propose`], [`Command::CloseProposal`].
    Proposal(Box<Proposal>),
    /// [`Command::Vote`].
    Vote(VoteRecorded),
    /// [`Command::RegisterProducer`], [`Command::RecordDossier`].
    Producer(Box<ProducerRecord>),
    /// [`Command::RunSettlement`].
    Settlement(SettlementRun),
    /// [`Command::RecordResent`], [`Command::AnswerStatements`],
    /// [`Command::PeerDocuments`].
    Count(u64),
    /// [`Command::RecordTransfer`].
    Transfer(ContentId),
}

impl Reply {
    /// The name of the reply's kind, for an error when a caller gets an
    /// unexpected one (a bug in the node, never the user's fault).
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Enrolled(_) => "enrolled",
            Reply::Member(_) => "member",
            Reply::Card(_) => "card",
            Reply::Contribution(_) => "contribution",
            Reply::Subsidy(_) => "subsidy",
            Reply::Outlet(_) => "outlet",
            Reply::Token(_) => "token",
            Reply::Revoked(_) => "revoked",
            Reply::Suspended(_) => "suspended",
            Reply::Bank(_) => "bank",
            Reply::Receipt(_) => "receipt",
            Reply::Payout(_) => "payout",
            Reply::SignedIn(_) => "signed_in",
            Reply::Cross(_) => "cross",
            Reply::Answer(_) => "answer",
            Reply::Resolved(_) => "resolved",
            Reply::Seat(_) => "seat",
            Reply::Drawn(_) => "drawn",
            Reply::Proposal(_) => "proposal",
            Reply::Vote(_) => "vote",
            Reply::Producer(_) => "producer",
            Reply::Settlement(_) => "settlement",
            Reply::Count(_) => "count",
            Reply::Transfer(_) => "transfer",
        }
    }
}

impl Command {
    /// A short name for logs (never the command's content: it may hold a
    /// PIN or a person's details).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Enroll(_) => "enroll",
            Command::ChangeStatus { .. } => "change_status",
            Command::SetPin { .. } => "set_pin",
            Command::Contribution { .. } => "contribution",
            Command::ContributionByCard { .. } => "contribution_by_card",
            Command::Subsidy { .. } => "subsidy",
            Command::RegisterOutlet { .. } => "register_outlet",
            Command::NewToken { .. } => "new_token",
            Command::RevokeToken { .. } => "revoke_token",
            Command::SuspendOutlet { .. } => "suspend_outlet",
            Command::SetBank { .. } => "set_bank",
            Command::SetMandate { .. } => "set_mandate",
            Command::Purchase(_) => "purchase",
            Command::Payout { .. } => "payout",
            Command::MemberLogin { .. } => "member_login",
            Command::PrepareCrossPurchase(_) => "prepare_cross_purchase",
            Command::AcceptOffline { .. } => "accept_offline",
            Command::RecordCrossAnswer { .. } => "record_cross_answer",
            Command::HomePurchase { .. } => "home_purchase",
            Command::ResolveOffline { .. } => "resolve_offline",
            Command::AddSeat { .. } => "add_seat",
            Command::RemoveSeat { .. } => "remove_seat",
            Command::DrawSeats { .. } => "draw_seats",
            Command::Propose { .. } => "propose",
            Command::Vote { .. } => "vote",
            Command::CloseProposal { .. } => "close_proposal",
            Command::RegisterProducer { .. } => "register_producer",
            Command::RecordDossier { .. } => "record_dossier",
            Command::AdoptProducer { .. } => "adopt_producer",
            Command::HandOverProducerKey { .. } => "hand_over_producer_key",
            Command::SetTerritoryCentre { .. } => "set_territory_centre",
            Command::RunSettlement { .. } => "run_settlement",
            Command::RecordResent { .. } => "record_resent",
            Command::RecordTransfer { .. } => "record_transfer",
            Command::WithdrawClaims { .. } => "withdraw_claims",
            Command::AnswerStatements { .. } => "answer_statements",
            Command::PeerDocuments { .. } => "peer_documents",
        }
    }

    /// Whether a till (or another caisse's till, through its host) waits
    /// for this command: these go before admin work and background jobs.
    /// Other caisses' documents go with them: a forwarded sale waits for
    /// the documents read before it arrived (their accreditations and
    /// revocations), so they must not wait behind admin work.
    pub fn is_till(&self) -> bool {
        matches!(
            self,
            Command::PeerDocuments { .. }
                | Command::Purchase(_)
                | Command::PrepareCrossPurchase(_)
                | Command::AcceptOffline { .. }
                | Command::RecordCrossAnswer { .. }
                | Command::HomePurchase { .. }
                | Command::MemberLogin { .. }
        )
    }
}

impl Caisse {
    /// Decide `command` at time `now` (Unix seconds), all or nothing: if it
    /// returns an error, the state and the pending writes are exactly as
    /// they were. (Presenting a card with a wrong PIN is the one outcome
    /// kept when the rest is refused: the attempt counts.)
    pub fn execute(&mut self, command: Command, now: u64) -> Result<Reply, CaisseError> {
        self.atomically(|c| c.decide(command, now))
    }

    fn decide(&mut self, command: Command, now: u64) -> Result<Reply, CaisseError> {
        let today = Day::from_unix(now);
        Ok(match command {
            Command::Enroll(input) => Reply::Enrolled(self.enroll(input, today)?),
            Command::ChangeStatus { member, change } => {
                Reply::Member(Box::new(self.change_status(member, change, today)?))
            }
            Command::SetPin { member, pin } => Reply::Card(self.set_pin(member, &pin)?),
            Command::Contribution {
                member,
                period,
                amount,
            } => Reply::Contribution(self.record_contribution(member, period, amount, now)?),
            Command::ContributionByCard {
                card,
                period,
                amount,
            } => {
                let member =
                    self.card(&card)
                        .map(|c| c.member)
                        .ok_or_else(|| CaisseError::NotFound {
                            what: "card",
                            id: card.to_string(),
                        })?;
                Reply::Contribution(self.record_contribution(member, period, amount, now)?)
            }
            Command::Subsidy {
                source,
                amount,
                period,
                key,
            } => Reply::Subsidy(self.record_subsidy(source, amount, period, key, now)?),
            Command::RegisterOutlet { name, categories } => {
                Reply::Outlet(self.register_outlet(&name, categories, today)?)
            }
            Command::NewToken { role } => Reply::Token(self.new_token(role)),
            Command::Purchase(input) => Reply::Receipt(Box::new(self.purchase(input, now)?)),
            Command::Payout { outlet, period } => Reply::Payout(self.payout(outlet, period, now)?),
            Command::MemberLogin { card, pin } => {
                Reply::SignedIn(self.member_login(&card, &pin, now)?)
            }
            Command::RevokeToken { id } => Reply::Revoked(self.revoke_token(&id)?),
            Command::SetMandate {
                member,
                reference,
                signed_on,
                holder,
                iban,
                bic,
            } => {
                if !self.members.contains_key(&member) {
                    return Err(CaisseError::NotFound {
                        what: "member",
                        id: member.to_string(),
                    });
                }
                let m = crate::sepa::mandate(&reference, signed_on, &holder, &iban, bic.as_deref())
                    .map_err(CaisseError::Invalid)?;
                self.pending.put(
                    crate::sepa::mandate_key(&member),
                    crate::store::encode_value(&m),
                );
                Reply::Count(1)
            }
            Command::SetBank {
                outlet,
                holder,
                iban,
                bic,
                creditor_id,
            } => {
                if let Some(o) = &outlet
                    && !self.outlets.contains_key(o)
                {
                    return Err(CaisseError::NotFound {
                        what: "outlet",
                        id: o.to_string(),
                    });
                }
                let mut account = crate::sepa::bank_account(&holder, &iban, bic.as_deref())
                    .map_err(CaisseError::Invalid)?;
                if let Some(ics) = creditor_id {
                    if outlet.is_some() {
                        return Err(CaisseError::Invalid(
                            "a creditor identifier is the caisse's own: set it without --outlet"
                                .into(),
                        ));
                    }
                    account.creditor_id =
                        Some(crate::sepa::check_creditor_id(&ics).map_err(CaisseError::Invalid)?);
                }
                self.pending.put(
                    crate::sepa::bank_key(outlet.as_ref()),
                    crate::store::encode_value(&account),
                );
                if outlet.is_none() {
                    // Our own account is published, for the caisses that owe us.
                    self.mark_published_changed();
                }
                Reply::Bank(account)
            }
            Command::SuspendOutlet {
                outlet,
                suspended,
                reason,
            } => {
                self.set_outlet_suspended(outlet, suspended, reason, now)?;
                Reply::Suspended(suspended)
            }
            Command::PrepareCrossPurchase(input) => {
                Reply::Cross(Box::new(self.prepare_cross_purchase(&input, now)?))
            }
            Command::AcceptOffline {
                input,
                home,
                request,
                allocation_part,
            } => Reply::Receipt(Box::new(self.accept_offline(
                &input,
                home,
                &request,
                allocation_part,
                now,
            )?)),
            Command::RecordCrossAnswer {
                input,
                home,
                request,
                answer,
            } => Reply::Receipt(Box::new(
                self.record_cross_answer(&input, home, &request, &answer, now)?,
            )),
            Command::HomePurchase { request } => {
                Reply::Answer(Box::new(self.home_purchase(&request, now)?))
            }
            Command::ResolveOffline { purchase, answer } => {
                Reply::Resolved(self.resolve_offline(purchase, &answer, now)?)
            }
            Command::AddSeat {
                kind,
                member,
                holder,
            } => Reply::Seat(self.add_seat(kind, member, holder, today)?),
            Command::RemoveSeat { seat } => Reply::Seat(self.remove_seat(seat, today)?),
            Command::DrawSeats {
                seats,
                seed,
                volunteers,
            } => Reply::Drawn(Box::new(self.draw_seats(
                seats,
                seed,
                &volunteers,
                today,
            )?)),
            Command::Propose {
                title,
                kind,
                window_minutes,
            } => Reply::Proposal(Box::new(self.propose(title, kind, window_minutes, now)?)),
            Command::Vote {
                proposal,
                seat,
                choice,
            } => Reply::Vote(self.vote(proposal, seat, choice, now)?),
            Command::CloseProposal { proposal } => {
                Reply::Proposal(Box::new(self.close_proposal(proposal, now)?))
            }
            Command::RegisterProducer { name, attributes } => {
                Reply::Producer(Box::new(self.register_producer(&name, attributes, today)?))
            }
            Command::RecordDossier { envelope } => {
                Reply::Producer(Box::new(self.record_dossier(envelope, today)?))
            }
            Command::AdoptProducer { producer, adoption } => Reply::Producer(Box::new(
                self.adopt_producer(producer, adoption, today, now)?,
            )),
            Command::HandOverProducerKey { producer } => {
                Reply::Token(self.hand_over_producer_key(producer)?)
            }
            Command::SetTerritoryCentre { centre } => {
                let mut policy = self.policy.clone();
                policy.territory_centre = centre;
                self.set_policy(policy)?;
                Reply::Count(u64::from(centre.is_some()))
            }
            Command::WithdrawClaims { debtor, period } => {
                Reply::Count(self.withdraw_claims(debtor, period, now)?)
            }
            Command::RunSettlement { period } => {
                Reply::Settlement(self.run_settlement(period, now)?)
            }
            Command::RecordResent {
                debtor,
                period,
                receipts,
            } => Reply::Count(self.record_resent(debtor, period, &receipts, now)?),
            Command::RecordTransfer {
                period,
                to,
                amount,
                reference,
            } => Reply::Transfer(self.record_transfer(period, to, amount, reference, now)?),
            Command::PeerDocuments { peers } => {
                self.set_peers(peers);
                Reply::Count(self.peers.caisses.len() as u64)
            }
            Command::AnswerStatements { periods } => {
                let mut n = 0u64;
                for p in periods {
                    n = n.saturating_add(self.answer_statements(p, now)?);
                }
                Reply::Count(n)
            }
        })
    }
}
