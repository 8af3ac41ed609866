//! The JSON shapes of the node's HTTP API: the bodies its clients send and
//! the answers they read. The API, its [`crate::client::Client`], the CLI and
//! the testnet all use these types, so a field renamed on one side fails to
//! compile on the other instead of reading as `null` at a treasurer's desk.
//!
//! Answers that were already core types (a [`crate::caisse::Receipt`], an
//! [`crate::caisse::AllocationRun`], a [`crate::ledger::CheckReport`]...) are
//! used as they are; this module holds the shapes that exist only on the wire.

use crate::members::{MemberRecord, OutletBlock, OutletRecord};
use caisse_protocol::{
    Amount, CaisseId, CardId, Category, ContentId, Day, MemberId, OutletId, Period,
};
use serde::{Deserialize, Serialize};

/// `GET /api/v1/status`: who this node is and how busy it is. Counters the
/// writer keeps: answering it reads nothing from the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// This caisse's id (its public key).
    pub caisse_id: CaisseId,
    /// Its name.
    pub name: String,
    /// The territory it serves.
    pub territory: String,
    /// The federation it belongs to.
    pub federation: caisse_protocol::FederationId,
    /// Members enrolled (any status).
    pub members: u64,
    /// Entries in the journal.
    pub journal_entries: u64,
    /// Background jobs not yet finished.
    pub jobs_running: usize,
    /// Commands waiting for the writer.
    pub writer_queue: u64,
    /// The node's date.
    pub today: Day,
    /// The sequence of this caisse's last published federation document.
    pub document_sequence: u64,
    /// Its heads, as published.
    pub document_heads: String,
}

/// `POST /api/v1/allocations`, `/outlets/{id}/payouts`, `/settlement/run`:
/// the period to act on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeriodBody {
    /// The month.
    pub period: Period,
}

/// `POST /api/v1/contributions`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContributionBody {
    /// Who contributes.
    pub member: MemberId,
    /// For which month.
    pub period: Period,
    /// The amount; by default, the policy's contribution scale decides.
    #[serde(default)]
    pub amount: Option<Amount>,
}

/// `POST /api/v1/subsidies`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubsidyBody {
    /// Who pays it.
    pub source: crate::ledger::SubsidySource,
    /// How much.
    pub amount: Amount,
    /// For which month.
    pub period: Period,
    /// The caller's idempotency key: the same key twice records it once.
    pub key: String,
}

/// `POST /api/v1/outlets`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutletBody {
    /// The outlet's name.
    pub name: String,
    /// What it may sell through the allocation.
    pub categories: Vec<Category>,
}

/// `POST /api/v1/members/{id}/{suspend|reinstate|leave|pin}`: each action
/// reads only its own field; the body may be left out.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemberActionBody {
    /// `leave`: the day the member leaves (default: today).
    #[serde(default)]
    pub on: Option<Day>,
    /// `pin`: the new PIN.
    #[serde(default)]
    pub pin: Option<String>,
}

/// `POST /api/v1/members/{id}/pin`: the card's PIN was set (and the card
/// unlocked).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PinSet {
    /// The member.
    pub member: MemberId,
    /// Their card.
    pub card: CardId,
    /// Always true.
    pub pin_set: bool,
}

/// A member as the admin sees them: the record and the allocation balance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberView {
    /// The member's record.
    #[serde(flatten)]
    pub record: MemberRecord,
    /// What is left of their allocation.
    pub balance: Amount,
}

/// An outlet with what the caisse owes it and whether its tills are open.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutletView {
    /// The outlet's record.
    #[serde(flatten)]
    pub record: OutletRecord,
    /// What the caisse owes it.
    pub owed: Amount,
    /// Why its tills are suspended, if they are.
    pub suspended: Option<OutletBlock>,
}

/// `POST /api/v1/outlets/{id}/{suspend|reinstate}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReasonBody {
    /// Why (kept with the suspension).
    #[serde(default)]
    pub reason: Option<String>,
}

/// The answer to suspending or reinstating an outlet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutletSuspension {
    /// The outlet.
    pub outlet: OutletId,
    /// Whether its tills are now suspended.
    pub suspended: bool,
}

/// One account's balance in `GET /api/v1/ledger/balances`. The account is
/// text: for an auditor, member accounts carry pseudonyms, and for an
/// observer they are one line, `members`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BalanceView {
    /// The account.
    pub account: String,
    /// Its balance.
    pub balance: Amount,
}

/// `GET /api/v1/ledger/accounting`: the accountant's file of a period.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountingFile {
    /// The month.
    pub period: Period,
    /// Lines in the file.
    pub lines: usize,
    /// Sum of the debits.
    pub debit: Amount,
    /// Sum of the credits (equal to the debits).
    pub credit: Amount,
    /// The file itself (FEC layout).
    pub fec: String,
}

/// `POST /api/v1/bank`: an outlet's or the caisse's own account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BankBody {
    /// The outlet; none for the caisse's own account.
    #[serde(default)]
    pub outlet: Option<OutletId>,
    /// Account holder.
    pub holder: String,
    /// IBAN.
    pub iban: String,
    /// BIC, where the bank needs it.
    #[serde(default)]
    pub bic: Option<String>,
    /// SEPA creditor identifier (the caisse's own account, to collect
    /// contributions by direct debit).
    #[serde(default)]
    pub creditor_id: Option<String>,
}

/// `POST /api/v1/mandates`: a member's SEPA direct debit mandate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MandateBody {
    /// The member.
    pub member: MemberId,
    /// The mandate's reference.
    pub reference: String,
    /// When it was signed.
    pub signed_on: Day,
    /// Account holder.
    pub holder: String,
    /// IBAN.
    pub iban: String,
    /// BIC, where the bank needs it.
    #[serde(default)]
    pub bic: Option<String>,
}

/// The answer to recording a mandate (the account itself is not echoed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MandateRecorded {
    /// The member.
    pub member: MemberId,
    /// The mandate's reference.
    pub reference: String,
    /// When it was signed.
    pub signed_on: Day,
}

/// `GET /api/v1/sepa/payouts`: the credit transfers of a period's payouts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PayoutsFile {
    /// The month.
    pub period: Period,
    /// Requested execution day.
    pub execution: Day,
    /// The pain.001 file.
    pub xml: String,
}

/// `GET /api/v1/sepa/contributions`: the direct debits of a period's
/// contributions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContributionsFile {
    /// The month.
    pub period: Period,
    /// Requested collection day.
    pub collection: Day,
    /// The pain.008 file.
    pub xml: String,
    /// Direct debits in it.
    pub count: usize,
    /// Their sum.
    pub total: Amount,
    /// Contributions left out: their members have no mandate.
    pub without_mandate: usize,
}

/// `POST /api/v1/backup`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupBody {
    /// Where the node writes the file (absolute; must not exist).
    pub out: std::path::PathBuf,
}

/// `POST /api/v1/tokens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenBody {
    /// observer, auditor, admin, seat or producer.
    pub role: String,
    /// For a seat token: which seat (`seat-3`).
    #[serde(default)]
    pub seat: Option<String>,
    /// For a producer token: which producer.
    #[serde(default)]
    pub producer: Option<String>,
}

/// A new token, shown once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenCreated {
    /// The role asked for.
    pub role: String,
    /// The token itself.
    pub token: String,
    /// Its seat, for a seat token.
    pub seat: Option<String>,
    /// Its producer, for a producer token.
    pub producer: Option<String>,
}

/// One token in `GET /api/v1/tokens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRow {
    /// The start of the token's hash.
    pub id: String,
    /// What it opens.
    pub role: crate::members::Role,
}

/// The answer to revoking a token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRevoked {
    /// The token's id.
    pub revoked: String,
    /// What it opened.
    pub role: crate::members::Role,
}

/// `POST /api/v1/clock` (test networks only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClockBody {
    /// The date to move to (noon UTC of that day).
    pub today: Day,
}

/// `POST /api/v1/cards/print`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PrintBody {
    /// The members whose cards to print (at most 1,000), or none with `all`.
    #[serde(default)]
    pub members: Vec<MemberId>,
    /// Every member (the first 1,000).
    #[serde(default)]
    pub all: bool,
    /// How to reach the caisse, printed on each card.
    #[serde(default)]
    pub contact: Option<String>,
}

/// A printable page of member cards.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CardsPrinted {
    /// Cards on the page (active members only).
    pub cards: usize,
    /// The page.
    pub html: String,
}

/// `POST /api/v1/territory-centre`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CentreBody {
    /// `LAT,LON` in degrees, or empty to clear.
    pub centre: String,
}

/// The territory's centre, once set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TerritoryCentre {
    /// Where producers' distances are computed from; none: unknown.
    pub territory_centre: Option<caisse_protocol::producer::GeoPoint>,
}

/// An accreditation of this caisse that ends soon, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Lapsing {
    /// The accreditation.
    pub id: ContentId,
    /// What it accredits.
    pub subject: caisse_protocol::messages::Subject,
    /// Its name.
    pub name: String,
    /// Its last valid day.
    pub valid_until: Day,
    /// Days from today to then.
    pub days_left: u32,
    /// The certificate it ends with, when that is why.
    pub lapses_with: Option<String>,
}

/// One row of `GET /api/v1/peers`: another caisse as this node knows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerRow {
    /// Its id.
    pub caisse: CaisseId,
    /// Its name, once its profile arrived.
    pub name: Option<String>,
    /// Its territory.
    pub territory: Option<String>,
    /// Whether this caisse's policy recognises its accreditations.
    pub recognised: bool,
    /// Whether a connection is open.
    pub connected: bool,
    /// When its document last changed here (unix seconds).
    pub last_changed: u64,
    /// The sequence of its document held here.
    pub sequence: u64,
    /// Its heads.
    pub heads: String,
    /// Accreditations it published.
    pub accreditations: usize,
    /// The version of its criteria.
    pub criteria_version: Option<u32>,
    /// Statements from it refused as invalid.
    pub invalid_statements: u64,
    /// Where it says it listens.
    pub addresses: Vec<String>,
}

/// `POST /api/v1/network/block`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlockBody {
    /// The caisse.
    pub caisse: CaisseId,
    /// Block (true) or unblock (false).
    pub block: bool,
}

/// The answer to blocking or unblocking a caisse.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Blocked {
    /// The caisse.
    pub caisse: CaisseId,
    /// Whether it is now blocked.
    pub blocked: bool,
}

/// `GET /api/v1/criteria`: the criteria in force (none before the
/// parliament adopts any).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CriteriaInForce {
    /// Their content hash.
    pub hash: ContentId,
    /// When they were adopted.
    pub adopted_on: Day,
    /// The parliament's proposal that adopted them (none: set at start).
    pub decided_by: Option<caisse_protocol::ProposalId>,
    /// The criteria.
    pub criteria: caisse_protocol::criteria::Criteria,
}

/// `POST /api/v1/settlement/withdraw`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WithdrawBody {
    /// The month.
    pub period: Period,
    /// The debtor whose disputed claims to withdraw.
    pub debtor: CaisseId,
}

/// The answer to withdrawing disputed claims.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Withdrawn {
    /// The month.
    pub period: Period,
    /// The debtor.
    pub debtor: CaisseId,
    /// Claims withdrawn.
    pub withdrawn: u64,
}

/// `POST /api/v1/settlement/paid`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PaidBody {
    /// The month.
    pub period: Period,
    /// The transfer's number in `settlement show`.
    pub transfer: usize,
    /// The bank's reference of the payment.
    pub reference: String,
}

/// The answer to declaring a transfer paid.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransferRecorded {
    /// The transfer's number.
    pub transfer: usize,
    /// Who receives it.
    pub to: CaisseId,
    /// How much.
    pub amount: Amount,
    /// The signed statement published for the receiver.
    pub statement: ContentId,
}

/// `GET /api/v1/settlement`: a period's statements, net positions and
/// transfers, as this node sees the federation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SettlementShow {
    /// The month.
    pub period: Period,
    /// Every statement between two caisses.
    pub statements: Vec<StatementRow>,
    /// Each caisse's net position.
    pub positions: Vec<Position>,
    /// Their sum (zero when everything is known).
    pub net_sum: Amount,
    /// The transfers that settle the positions.
    pub transfers: Vec<TransferRow>,
}

/// A statement between a creditor and a debtor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatementRow {
    /// Its content id.
    pub id: ContentId,
    /// Who is owed.
    pub creditor: CaisseId,
    /// Who owes.
    pub debtor: CaisseId,
    /// How much.
    pub amount: Amount,
    /// Receipts in it.
    pub count: u64,
    /// Countersigned by the debtor.
    pub acknowledged: bool,
    /// The debtor's dispute, if any.
    pub dispute: Option<caisse_protocol::messages::Dispute>,
}

/// A caisse's net position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The caisse.
    pub caisse: CaisseId,
    /// Positive: it is owed; negative: it owes.
    pub net: Amount,
}

/// One transfer of the netting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRow {
    /// Its number (from 1).
    pub transfer: usize,
    /// Who pays.
    pub from: CaisseId,
    /// Who receives.
    pub to: CaisseId,
    /// How much.
    pub amount: Amount,
    /// Declared paid by the payer.
    pub paid: bool,
    /// Confirmed by the receiver.
    pub confirmed_by_receiver: bool,
}

/// `GET /api/v1/network`: this node's libp2p addresses and peers, and what
/// the federation accepted and refused. The API answers with the live
/// counters borrowed (`NetworkInfo<&FederationStats>`); a client reads them
/// owned.
#[derive(Debug, Serialize, Deserialize)]
pub struct NetworkInfo<S = crate::federation::FederationStats> {
    /// This node's peer id.
    pub peer_id: Option<String>,
    /// Where it listens.
    pub listen: Vec<String>,
    /// Peers connected now.
    pub connected: Vec<String>,
    /// Peers blocked by the admin.
    pub blocked: Vec<String>,
    /// Frames refused as malformed or too large.
    pub frames_refused: u64,
    /// The federation's counters.
    pub federation: S,
}

/// `POST /api/v1/parliament/seats`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeatBody {
    /// citizen, producer or worker.
    pub kind: crate::parliament::SeatKind,
    /// The member (citizen seats).
    #[serde(default)]
    pub member: Option<MemberId>,
    /// The person holding it (producer and worker seats).
    #[serde(default)]
    pub holder: Option<String>,
}

/// `POST /api/v1/parliament/draw`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrawBody {
    /// Citizen seats to fill.
    pub seats: usize,
    /// The published seed.
    pub seed: u64,
    /// The volunteers.
    pub volunteers: Vec<MemberId>,
}

/// `POST /api/v1/parliament/proposals`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProposeBody {
    /// A short title.
    pub title: String,
    /// What it changes.
    pub kind: crate::parliament::ProposalKind,
    /// How long voting stays open (default: the policy's).
    #[serde(default)]
    pub window_minutes: Option<u32>,
}

/// `POST /api/v1/parliament/proposals/{id}/votes`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VoteBody {
    /// The seat voting (`seat-3`).
    pub seat: String,
    /// yes, no or abstain.
    pub choice: crate::parliament::Choice,
}

/// A seat as `GET /api/v1/parliament` shows it: who holds it only for the
/// admin (the others see the seat, its kind and its votes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeatView {
    /// Seat number.
    pub id: u32,
    /// Its kind.
    pub kind: crate::parliament::SeatKind,
    /// The member holding it (admin only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<MemberId>,
    /// The person holding it (admin only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// Day added.
    pub added: Day,
    /// Day removed, if removed.
    pub removed: Option<Day>,
}

impl SeatView {
    /// A seat as `admin` (or anyone else) may see it.
    pub fn of(seat: &crate::parliament::Seat, admin: bool) -> SeatView {
        SeatView {
            id: seat.id,
            kind: seat.kind,
            member: seat.member.filter(|_| admin),
            holder: admin.then(|| seat.holder.clone()),
            added: seat.added,
            removed: seat.removed,
        }
    }
}

/// `GET /api/v1/parliament`: seats, rules and proposals.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParliamentShow {
    /// Every seat, active or removed.
    pub seats: Vec<SeatView>,
    /// Whether the composition allows a vote.
    pub can_vote: bool,
    /// Why not, if not.
    pub composition_problem: Option<String>,
    /// Quorum, majority and voting window.
    pub rules: crate::policy::ParliamentRules,
    /// Every proposal, open or closed.
    pub proposals: Vec<crate::parliament::Proposal>,
}

/// `GET /api/v1/report`: the evaluation report of a period, and the same
/// as Markdown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportAnswer {
    /// The report.
    pub report: crate::report::Report,
    /// As Markdown.
    pub markdown: String,
}

/// Why and when an accreditation was revoked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevokedView {
    /// From when.
    pub day: Day,
    /// Why.
    pub reason: String,
}

/// An accreditation as a reader sees it, with its state today: active,
/// expired, not yet valid, revoked (or, for another caisse's, published).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccreditationView {
    /// Its content id.
    pub id: ContentId,
    /// The caisse that decided it.
    pub caisse: CaisseId,
    /// That caisse's name (the federation's list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caisse_name: Option<String>,
    /// What it accredits.
    pub subject: caisse_protocol::messages::Subject,
    /// Its name.
    pub subject_name: String,
    /// Categories and coverage.
    pub scope: Vec<caisse_protocol::messages::ScopeItem>,
    /// The criteria it was judged against.
    pub criteria: ContentId,
    /// First valid day.
    pub valid_from: Day,
    /// Last valid day.
    pub valid_until: Day,
    /// The proposal that decided it.
    #[serde(default)]
    pub decided_by: Option<caisse_protocol::ProposalId>,
    /// active, expired, not yet valid or revoked.
    pub status: String,
    /// Its revocation, if revoked.
    pub revoked: Option<RevokedView>,
}

impl AccreditationView {
    /// An accreditation's view on `today`; `revoked` is its revocation.
    pub fn of(
        id: ContentId,
        a: &caisse_protocol::messages::Accreditation,
        revoked: Option<RevokedView>,
        today: Day,
    ) -> AccreditationView {
        let status = if revoked.is_some() {
            "revoked"
        } else if a.valid_until < today {
            "expired"
        } else if a.valid_from > today {
            "not yet valid"
        } else {
            "active"
        };
        AccreditationView {
            id,
            caisse: a.caisse,
            caisse_name: None,
            subject: a.subject,
            subject_name: a.subject_name.clone(),
            scope: a.scope.clone(),
            criteria: a.criteria,
            valid_from: a.valid_from,
            valid_until: a.valid_until,
            decided_by: a.decided_by,
            status: status.into(),
            revoked,
        }
    }
}

/// Which criteria: name, version and content hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CriteriaRef {
    /// Their name.
    pub name: String,
    /// Their version.
    pub version: u32,
    /// Their content hash.
    pub hash: ContentId,
}

/// A producer as this caisse knows it: registered here (with its
/// attributes and this caisse's accreditations) and as other caisses
/// accredited it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProducerView {
    /// The producer.
    pub id: caisse_protocol::ProducerId,
    /// Its name.
    pub name: String,
    /// Whether it is registered here.
    pub registered_here: bool,
    /// Its attributes (registered here).
    #[serde(default)]
    pub attributes: Option<caisse_protocol::criteria::Attributes>,
    /// When it was registered here.
    #[serde(default)]
    pub registered: Option<Day>,
    /// This caisse's accreditations of it.
    pub accreditations: Vec<AccreditationView>,
    /// Other caisses' accreditations of it (`producer show` only).
    #[serde(default)]
    pub federation: Vec<PublishedAccreditation>,
}

/// Another caisse's accreditation of a producer, as published.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishedAccreditation {
    /// Its content id.
    pub id: ContentId,
    /// The caisse.
    pub caisse: CaisseId,
    /// Its name.
    pub caisse_name: String,
    /// Categories and coverage.
    pub scope: Vec<caisse_protocol::messages::ScopeItem>,
    /// The criteria it was judged against.
    pub criteria: ContentId,
    /// That caisse's criteria in force, as published.
    pub criteria_version: Option<CriteriaRef>,
    /// The producer's name in it.
    pub subject_name: String,
    /// First valid day.
    pub valid_from: Day,
    /// Last valid day.
    pub valid_until: Day,
    /// published or revoked.
    pub status: String,
}

/// `POST /api/v1/producers`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProducerBody {
    /// Its name.
    pub name: String,
    /// What the criteria judge.
    pub attributes: caisse_protocol::criteria::Attributes,
}

/// When an accreditation would end because a certificate it relies on ends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WouldLapse {
    /// The day.
    pub day: Day,
    /// The certificate's number.
    pub certificate: String,
    /// The label it certifies.
    pub label: Category,
}

/// `GET /api/v1/producers/{id}/evaluation`: a producer judged against this
/// caisse's criteria (or, with `?caisse=`, another caisse's).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvaluationView {
    /// The producer.
    pub producer: caisse_protocol::ProducerId,
    /// The other caisse judged against, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caisse: Option<CaisseId>,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caisse_name: Option<String>,
    /// The criteria (none adopted yet: none).
    pub criteria: Option<CriteriaRef>,
    /// Rule by rule.
    pub evaluation: caisse_protocol::criteria::Evaluation,
    /// What was judged: the record here or a dossier.
    pub source: String,
    /// The dossier's version, if a dossier was judged.
    pub dossier_version: Option<u32>,
    /// Distance from the territory's centre.
    pub distance_km: Option<u32>,
    /// When an accreditation would lapse with a certificate.
    #[serde(default)]
    pub would_lapse_with: Option<WouldLapse>,
}

/// `POST /api/v1/producers/dossiers`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DossierBody {
    /// The producer's signed dossier: its envelope's bytes, hex.
    pub dossier: String,
}

/// A dossier accepted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DossierPublished {
    /// The producer.
    pub producer: caisse_protocol::ProducerId,
    /// Its name.
    pub name: String,
    /// The dossier's version.
    pub version: Option<u32>,
    /// What the desk should look at, if anything.
    pub review: Option<String>,
}

/// `GET /api/v1/producers/{id}/dossier`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DossierShown {
    /// The producer.
    pub producer: caisse_protocol::ProducerId,
    /// Its newest dossier known here.
    pub dossier: caisse_protocol::producer::ProducerDossier,
}

/// `POST /api/v1/producers/{id}/adopt`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdoptBody {
    /// SIRET.
    pub siret: String,
    /// Commune.
    pub commune: String,
    /// Postcode.
    pub postcode: String,
    /// `LAT,LON` of the commune's centre.
    pub location: String,
}

/// A producer given its own identity.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Adopted {
    /// Its new id.
    pub producer: caisse_protocol::ProducerId,
    /// Its id before.
    pub legacy_id: Option<caisse_protocol::ProducerId>,
    /// Its name.
    pub name: String,
}

/// A producer's key handed over (shown once).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyHandedOver {
    /// The producer.
    pub producer: caisse_protocol::ProducerId,
    /// Its secret key, hex.
    pub key: String,
}
