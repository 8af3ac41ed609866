//! Every statement caisses exchange, with its size limit and its rules.
//!
//! Each type here implements [`Message`]: it travels inside a signed
//! [`crate::Envelope`], its author must be the signer, and
//! [`Message::validate`] states the rules a decoded statement must meet.
//! No type here carries a name, address, income or the link between a card
//! and a person: only caisse-level facts, pseudonymous card ids and amounts.

use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::criteria::Criteria;
use crate::ids::{
    AccreditationId, CaisseId, CardId, Category, ContentId, Day, OutletId, Period, ProducerId,
    ProposalId, PurchaseId,
};
use crate::signed::{Message, MessageKind, PublicKey};

/// Longest free-text field (names, reasons, references), in bytes.
pub const MAX_TEXT: usize = 200;
/// Most lines in one purchase.
pub const MAX_PURCHASE_LINES: usize = 64;
/// Most categories in one accreditation's scope.
pub const MAX_SCOPE_ITEMS: usize = 64;
/// Most purchase ids listed in one dispute.
pub const MAX_DISPUTED_IDS: usize = 1_000;
/// Most document heads announced at once.
pub const MAX_HEADS: usize = 64;

fn text_ok(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_TEXT {
        Err(format!("{field} is longer than {MAX_TEXT} bytes"))
    } else {
        Ok(())
    }
}

fn non_negative(field: &str, a: Amount) -> Result<(), String> {
    if a.is_negative() {
        Err(format!("{field} is negative"))
    } else {
        Ok(())
    }
}

/// Who or what an accreditation concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// A producer (farm, cooperative, processor).
    Producer(ProducerId),
    /// An outlet (shop, market, public grocery).
    Outlet(OutletId),
}

/// A caisse's public profile: the first thing in its federation document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaisseProfile {
    /// The caisse.
    pub caisse: CaisseId,
    /// Its public name (`Caisse alimentaire commune de Montpellier`).
    pub name: String,
    /// Its territory (`Montpellier`, `Gironde`).
    pub territory: String,
    /// The unit its allocation is shown in (`EUR`, `MonA`).
    pub currency_unit: String,
    /// When this profile was issued (Unix seconds).
    pub issued_at: u64,
}

/// Where a caisse's node can be reached, signed by the caisse: the only
/// addresses other nodes dial for it (an address a peer merely claims, in
/// identify or in a routing answer, is never dialled).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaisseAddresses {
    /// The caisse.
    pub caisse: CaisseId,
    /// libp2p multiaddresses, as text (at most [`MAX_ADDRESSES`]).
    pub addresses: Vec<String>,
}

/// Addresses a caisse publishes at most.
pub const MAX_ADDRESSES: usize = 8;

impl Message for CaisseAddresses {
    const KIND: MessageKind = MessageKind::CaisseAddresses;
    const MAX_SIZE: usize = 2048;
    fn author(&self) -> PublicKey {
        self.caisse.into()
    }
    fn validate(&self) -> Result<(), String> {
        if self.addresses.len() > MAX_ADDRESSES {
            return Err(format!("more than {MAX_ADDRESSES} addresses"));
        }
        for a in &self.addresses {
            if !a.starts_with('/') || a.len() > 200 || !a.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("not a multiaddress: {a:?}"));
            }
        }
        Ok(())
    }
}

impl Message for CaisseProfile {
    const KIND: MessageKind = MessageKind::CaisseProfile;
    const MAX_SIZE: usize = 1024;
    fn author(&self) -> PublicKey {
        self.caisse.into()
    }
    fn validate(&self) -> Result<(), String> {
        text_ok("name", &self.name)?;
        text_ok("territory", &self.territory)?;
        text_ok("currency unit", &self.currency_unit)
    }
}

/// A criteria version adopted by a caisse's parliament.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriteriaVersion {
    /// The caisse that adopted it.
    pub caisse: CaisseId,
    /// The criteria.
    pub criteria: Criteria,
    /// The day it took effect.
    pub adopted_on: Day,
    /// The proposal that adopted it, if by vote.
    pub decided_by: Option<ProposalId>,
}

impl Message for CriteriaVersion {
    const KIND: MessageKind = MessageKind::CriteriaVersion;
    const MAX_SIZE: usize = Criteria::MAX_SIZE + 256;
    fn author(&self) -> PublicKey {
        self.caisse.into()
    }
    fn validate(&self) -> Result<(), String> {
        self.criteria.validate().map_err(|e| e.to_string())
    }
}

/// One category of an accreditation's scope, with the share of each line
/// the allocation pays.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScopeItem {
    /// The product category.
    pub category: Category,
    /// The share of the line the allocation pays, 0 to 100.
    pub coverage_pct: u8,
}

impl ScopeItem {
    /// Read a scope as people write it: `fresh-produce:100,bread:66`
    /// (`CATEGORY[:COVERAGE%]`, comma-separated; no rate means 100).
    pub fn parse_list(text: &str) -> Result<Vec<ScopeItem>, String> {
        let mut items: Vec<ScopeItem> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (cat, pct) = match part.split_once(':') {
                Some((c, p)) => (
                    c,
                    p.trim()
                        .trim_end_matches('%')
                        .parse::<u8>()
                        .ok()
                        .filter(|p| *p <= 100)
                        .ok_or_else(|| format!("{part:?}: the coverage is 0 to 100"))?,
                ),
                None => (part, 100),
            };
            let category: Category = cat.parse().map_err(|e| format!("{part:?}: {e}"))?;
            if items.iter().any(|i| i.category == category) {
                return Err(format!("{part:?}: category {category} is listed twice"));
            }
            items.push(ScopeItem {
                category,
                coverage_pct: pct,
            });
        }
        if items.is_empty() {
            return Err("a scope lists at least one CATEGORY[:COVERAGE%], e.g. bread:66".into());
        }
        Ok(items)
    }
}

/// A caisse's accreditation (conventionnement) of a producer or outlet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accreditation {
    /// The issuing caisse.
    pub caisse: CaisseId,
    /// The producer or outlet accredited.
    pub subject: Subject,
    /// Its public (business) name.
    pub subject_name: String,
    /// What may be bought, with coverage rates.
    pub scope: Vec<ScopeItem>,
    /// The hash of the criteria version it was judged against.
    pub criteria: ContentId,
    /// First day of validity.
    pub valid_from: Day,
    /// Last day of validity.
    pub valid_until: Day,
    /// The proposal that decided it, if by vote.
    pub decided_by: Option<ProposalId>,
}

impl Accreditation {
    /// True if valid on `day` (revocations are checked separately).
    pub fn is_valid_on(&self, day: Day) -> bool {
        self.valid_from <= day && day <= self.valid_until
    }
    /// The coverage rate for `category`, if it is in scope.
    pub fn coverage(&self, category: &Category) -> Option<u8> {
        self.scope
            .iter()
            .find(|s| &s.category == category)
            .map(|s| s.coverage_pct)
    }
}

impl Message for Accreditation {
    const KIND: MessageKind = MessageKind::Accreditation;
    const MAX_SIZE: usize = 4 * 1024;
    fn author(&self) -> PublicKey {
        self.caisse.into()
    }
    fn validate(&self) -> Result<(), String> {
        text_ok("subject name", &self.subject_name)?;
        if self.scope.is_empty() || self.scope.len() > MAX_SCOPE_ITEMS {
            return Err(format!("scope must list 1 to {MAX_SCOPE_ITEMS} categories"));
        }
        if let Some(s) = self.scope.iter().find(|s| s.coverage_pct > 100) {
            return Err(format!("coverage of {} is above 100%", s.category));
        }
        if self.valid_until < self.valid_from {
            return Err("valid_until is before valid_from".into());
        }
        Ok(())
    }
}

/// A caisse withdrawing one of its accreditations. A revocation always wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The issuing caisse (must be the accreditation's issuer).
    pub caisse: CaisseId,
    /// The accreditation withdrawn.
    pub accreditation: AccreditationId,
    /// Why, in words.
    pub reason: String,
    /// The day it takes effect.
    pub effective: Day,
    /// The proposal that decided it, if by vote.
    pub decided_by: Option<ProposalId>,
}

impl Message for Revocation {
    const KIND: MessageKind = MessageKind::Revocation;
    const MAX_SIZE: usize = 1024;
    fn author(&self) -> PublicKey {
        self.caisse.into()
    }
    fn validate(&self) -> Result<(), String> {
        text_ok("reason", &self.reason)
    }
}

/// One line of a purchase: what was bought, from whom, for how much.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseLine {
    /// Product category.
    pub category: Category,
    /// The producer, when known.
    pub producer: Option<ProducerId>,
    /// Price of the line.
    pub amount: Amount,
}

/// Split purchase lines at their coverage rates into the part the
/// allocation pays and the part left for the member (each line rounded as
/// [`Amount::split_coverage`] does, so the parts add up to the total exactly).
pub fn split_lines(
    lines: &[PurchaseLine],
    coverage_pct: &[u8],
) -> Result<(Amount, Amount), crate::amount::AmountError> {
    let mut allocation = Amount::ZERO;
    let mut member = Amount::ZERO;
    for (l, p) in lines.iter().zip(coverage_pct) {
        let (a, m) = l.amount.split_coverage(*p)?;
        allocation = allocation.checked_add(a)?;
        member = member.checked_add(m)?;
    }
    Ok((allocation, member))
}

/// How the member proved they hold the card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardAuth {
    /// No proof beyond the card id (contactless under the caisse's limits).
    None,
    /// A PIN typed on the outlet's device, in clear: what nodes before
    /// sealed PINs sent; still accepted from them, never sent any more.
    Pin(String),
    /// A PIN typed on the outlet's device, sealed to the home caisse's key
    /// ([`crate::pin_seal`]): only the home caisse can read it.
    SealedPin(Vec<u8>),
}

/// A host caisse forwarding a purchase at one of its outlets to the card's
/// home caisse, which alone holds the member's balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRequest {
    /// Chosen by the till; a retry carries the same id.
    pub id: PurchaseId,
    /// The caisse whose outlet made the sale.
    pub host: CaisseId,
    /// The member's card.
    pub card: CardId,
    /// The outlet.
    pub outlet: OutletId,
    /// What was bought.
    pub lines: Vec<PurchaseLine>,
    /// Sum of the lines.
    pub total: Amount,
    /// Coverage rate per line, as the host's accreditation states it.
    pub coverage_pct: Vec<u8>,
    /// Proof of card holding.
    pub auth: CardAuth,
    /// When the sale happened (Unix seconds).
    pub at: u64,
}

impl Message for PurchaseRequest {
    const KIND: MessageKind = MessageKind::PurchaseRequest;
    const MAX_SIZE: usize = 8 * 1024;
    fn author(&self) -> PublicKey {
        self.host.into()
    }
    fn validate(&self) -> Result<(), String> {
        if self.lines.is_empty() || self.lines.len() > MAX_PURCHASE_LINES {
            return Err(format!("a purchase has 1 to {MAX_PURCHASE_LINES} lines"));
        }
        if self.coverage_pct.len() != self.lines.len() {
            return Err("one coverage rate per line is required".into());
        }
        if self.coverage_pct.iter().any(|p| *p > 100) {
            return Err("coverage above 100%".into());
        }
        for l in &self.lines {
            non_negative("line amount", l.amount)?;
        }
        let sum =
            Amount::checked_sum(self.lines.iter().map(|l| l.amount)).map_err(|e| e.to_string())?;
        if sum != self.total {
            return Err(format!(
                "total {} is not the sum of the lines {}",
                self.total, sum
            ));
        }
        match &self.auth {
            CardAuth::Pin(p) if p.is_empty() || p.len() > 12 => {
                return Err("a PIN has 1 to 12 characters".into());
            }
            CardAuth::SealedPin(b) if b.is_empty() || b.len() > crate::pin_seal::MAX_SEALED_PIN => {
                return Err(format!(
                    "a sealed PIN has 1 to {} bytes",
                    crate::pin_seal::MAX_SEALED_PIN
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The home caisse's acceptance of a purchase: it debited the member, and
/// now owes the host. The host's claim on the home caisse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseReceipt {
    /// The purchase.
    pub purchase: PurchaseId,
    /// Content id of the exact request accepted.
    pub request: ContentId,
    /// The card's home caisse (the debtor, and the signer).
    pub home: CaisseId,
    /// The host caisse (the creditor).
    pub host: CaisseId,
    /// The card.
    pub card: CardId,
    /// The outlet.
    pub outlet: OutletId,
    /// The part the allocation paid (owed by home to host).
    pub allocation_part: Amount,
    /// The part left for the member to pay outside the allocation.
    pub member_part: Amount,
    /// The settlement period it belongs to.
    pub period: Period,
    /// When home accepted it (Unix seconds).
    pub at: u64,
}

impl Message for PurchaseReceipt {
    const KIND: MessageKind = MessageKind::PurchaseReceipt;
    const MAX_SIZE: usize = 1024;
    fn author(&self) -> PublicKey {
        self.home.into()
    }
    fn validate(&self) -> Result<(), String> {
        non_negative("allocation part", self.allocation_part)?;
        non_negative("member part", self.member_part)
    }
}

/// Why a home caisse refused a purchase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclineReason {
    /// Not enough allocation left.
    InsufficientBalance {
        /// What the card can still spend.
        available: Amount,
    },
    /// No such card at the home caisse.
    UnknownCard,
    /// The card's member is suspended or has left.
    SuspendedCard,
    /// Too many wrong PINs; the card is locked.
    CardLocked,
    /// Wrong PIN.
    WrongPin,
    /// Home does not recognise the host's accreditation for these lines.
    NotRecognised {
        /// Which line or party is not recognised, in words.
        detail: String,
    },
    /// The request breaks a rule.
    InvalidRequest {
        /// What is wrong.
        detail: String,
    },
    /// The same purchase id was used before with different content.
    ConflictingRetry,
}

/// The home caisse's signed refusal of a purchase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseDecline {
    /// The purchase.
    pub purchase: PurchaseId,
    /// Content id of the request refused.
    pub request: ContentId,
    /// The home caisse (signer).
    pub home: CaisseId,
    /// Why.
    pub reason: DeclineReason,
    /// When (Unix seconds).
    pub at: u64,
}

impl Message for PurchaseDecline {
    const KIND: MessageKind = MessageKind::PurchaseDecline;
    const MAX_SIZE: usize = 1024;
    fn author(&self) -> PublicKey {
        self.home.into()
    }
    fn validate(&self) -> Result<(), String> {
        match &self.reason {
            DeclineReason::NotRecognised { detail } | DeclineReason::InvalidRequest { detail } => {
                text_ok("detail", detail)
            }
            _ => Ok(()),
        }
    }
}

/// A creditor caisse's claim on a debtor for one period: the sum of the
/// receipts the debtor signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementStatement {
    /// Who is owed (signer).
    pub creditor: CaisseId,
    /// Who owes.
    pub debtor: CaisseId,
    /// The period.
    pub period: Period,
    /// Sum of the allocation parts of the receipts.
    pub amount: Amount,
    /// Number of receipts.
    pub count: u64,
    /// Hash of the sorted receipt purchase ids (see [`receipts_hash`]).
    pub receipts: ContentId,
    /// When issued (Unix seconds).
    pub at: u64,
}

/// The hash of a set of purchase ids, sorted, that both sides of a
/// settlement compute identically from their own records.
pub fn receipts_hash(ids: &[PurchaseId]) -> ContentId {
    let mut sorted: Vec<&PurchaseId> = ids.iter().collect();
    sorted.sort();
    sorted.dedup();
    let bytes: Vec<u8> = sorted
        .iter()
        .flat_map(|p| p.as_bytes().iter().copied())
        .collect();
    ContentId::of_parts(&[b"caisse-ssa/receipts/v1", &bytes])
}

impl Message for SettlementStatement {
    const KIND: MessageKind = MessageKind::SettlementStatement;
    const MAX_SIZE: usize = 512;
    fn author(&self) -> PublicKey {
        self.creditor.into()
    }
    fn validate(&self) -> Result<(), String> {
        non_negative("amount", self.amount)?;
        if self.creditor == self.debtor {
            return Err("a caisse cannot owe itself".into());
        }
        Ok(())
    }
}

/// A caisse countersigning another's statement (a settlement statement, or
/// a transfer it received): "I agree".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledgement {
    /// The statement agreed to.
    pub statement: ContentId,
    /// The countersigning caisse.
    pub by: CaisseId,
    /// When (Unix seconds).
    pub at: u64,
}

impl Message for Acknowledgement {
    const KIND: MessageKind = MessageKind::Acknowledgement;
    const MAX_SIZE: usize = 256;
    fn author(&self) -> PublicKey {
        self.by.into()
    }
}

/// A debtor refusing a settlement statement, naming the receipts that differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispute {
    /// The statement disputed.
    pub statement: ContentId,
    /// The disputing caisse.
    pub by: CaisseId,
    /// Receipts the creditor claims that the debtor has no record of signing.
    pub unknown_to_debtor: Vec<PurchaseId>,
    /// Receipts the debtor signed that the creditor left out.
    pub missing_from_statement: Vec<PurchaseId>,
    /// When (Unix seconds).
    pub at: u64,
}

impl Message for Dispute {
    const KIND: MessageKind = MessageKind::Dispute;
    const MAX_SIZE: usize = 2 * MAX_DISPUTED_IDS * 17 + 256;
    fn author(&self) -> PublicKey {
        self.by.into()
    }
    fn validate(&self) -> Result<(), String> {
        if self.unknown_to_debtor.len() > MAX_DISPUTED_IDS
            || self.missing_from_statement.len() > MAX_DISPUTED_IDS
        {
            return Err(format!("at most {MAX_DISPUTED_IDS} ids per list"));
        }
        Ok(())
    }
}

/// A paying caisse declaring a transfer made outside the system (a bank
/// transfer) that settles a netted position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSettled {
    /// The period settled.
    pub period: Period,
    /// Who paid (signer).
    pub from: CaisseId,
    /// Who received.
    pub to: CaisseId,
    /// How much.
    pub amount: Amount,
    /// The bank reference, for the receiver to match.
    pub reference: String,
    /// When (Unix seconds).
    pub at: u64,
}

impl Message for TransferSettled {
    const KIND: MessageKind = MessageKind::TransferSettled;
    const MAX_SIZE: usize = 512;
    fn author(&self) -> PublicKey {
        self.from.into()
    }
    fn validate(&self) -> Result<(), String> {
        non_negative("amount", self.amount)?;
        text_ok("reference", &self.reference)
    }
}

/// The outcome of a parliament vote, signed by the caisse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The caisse.
    pub caisse: CaisseId,
    /// The proposal decided.
    pub proposal: ProposalId,
    /// What it was about, in words.
    pub summary: String,
    /// Whether it passed.
    pub passed: bool,
    /// Votes for.
    pub yes: u32,
    /// Votes against.
    pub no: u32,
    /// Abstentions.
    pub abstain: u32,
    /// Seats that could vote.
    pub seats: u32,
    /// Day decided.
    pub decided_on: Day,
}

impl Message for Decision {
    const KIND: MessageKind = MessageKind::Decision;
    const MAX_SIZE: usize = 1024;
    fn author(&self) -> PublicKey {
        self.caisse.into()
    }
    fn validate(&self) -> Result<(), String> {
        text_ok("summary", &self.summary)
    }
}

/// A caisse announcing the current heads of its federation document, so
/// peers know to pull. Small by design: bodies travel by sync, not gossip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentHeads {
    /// The document's owner (signer).
    pub caisse: CaisseId,
    /// The automerge change hashes of the heads.
    pub heads: Vec<[u8; 32]>,
    /// A per-caisse counter, increasing with each announcement.
    pub sequence: u64,
    /// The document's epoch: the owner compacts its document (a new one
    /// holding only what it publishes now, without the history) and counts
    /// up; a replica of an older epoch syncs the new one from scratch.
    pub epoch: u32,
}

impl Message for DocumentHeads {
    const KIND: MessageKind = MessageKind::DocumentHeads;
    const MAX_SIZE: usize = 72 + MAX_HEADS * 33;
    fn author(&self) -> PublicKey {
        self.caisse.into()
    }
    fn validate(&self) -> Result<(), String> {
        if self.heads.is_empty() || self.heads.len() > MAX_HEADS {
            return Err(format!("1 to {MAX_HEADS} heads"));
        }
        Ok(())
    }
}
