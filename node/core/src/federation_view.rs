//! What this caisse knows of the federation: the statements a caisse
//! publishes, and each peer caisse's verified statements as read from its
//! replicated document. Plain data: the automerge documents themselves are
//! the node's (`caisse_node::documents`).

use std::collections::{BTreeMap, HashMap, HashSet};

use caisse_protocol::criteria::{Criteria, Rule};
use caisse_protocol::encoding;
use caisse_protocol::messages::{Accreditation, CaisseProfile, Revocation, Subject};
use caisse_protocol::producer::{ProducerDossier, ProducerSales};
use caisse_protocol::rpc::MAX_RPC_SIZE;
use caisse_protocol::{CaisseId, Category, ContentId, Day, Envelope, FederationId, ProducerId};
use serde::{Deserialize, Serialize};

use crate::policy::{Recognition, RecognitionPolicy};

/// The signed statements a caisse publishes, gathered from its state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Statements {
    /// The signed profile.
    pub profile: Option<Envelope>,
    /// Signed criteria versions by version number.
    pub criteria: BTreeMap<u32, Envelope>,
    /// Signed accreditations by content id.
    pub accreditations: BTreeMap<ContentId, Envelope>,
    /// Signed revocations by the accreditation they revoke.
    pub revocations: BTreeMap<ContentId, Envelope>,
    /// Caisses recognised by vote.
    pub recognised: Vec<CaisseId>,
    /// Settlement statements, answers and transfers, by key.
    pub settlement: BTreeMap<String, Envelope>,
    /// Purchase ids of the receipts held as host, per period.
    pub claims: BTreeMap<String, Vec<caisse_protocol::PurchaseId>>,
    /// Producers' own signed dossiers this caisse carries, by producer.
    pub dossiers: BTreeMap<ProducerId, Envelope>,
    /// Signed monthly sales totals of producers at this caisse's outlets.
    pub sales: BTreeMap<caisse_protocol::Period, Envelope>,
    /// Its signed territory centre.
    pub location: Option<Envelope>,
    /// Its signed bank account.
    pub bank: Option<Envelope>,
    /// Where its node can be reached, signed.
    pub addresses: Option<Envelope>,
}

/// A producer's dossier as carried in some caisse's document: verified
/// against the producer's own key, whoever carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedDossier {
    /// The dossier.
    pub dossier: ProducerDossier,
    /// The producer's signed statement, as published.
    pub envelope: Envelope,
}

/// An accreditation published by some caisse, as seen here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedAccreditation {
    /// Its content id.
    pub id: ContentId,
    /// The accreditation.
    pub accreditation: Accreditation,
    /// Its revocation, if revoked.
    pub revocation: Option<Revocation>,
}

/// What is known of one caisse of the federation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCaisse {
    /// The caisse.
    pub caisse: Option<CaisseId>,
    /// Its profile.
    pub profile: Option<CaisseProfile>,
    /// Its latest criteria version and that version's hash.
    pub criteria: Option<(Criteria, ContentId)>,
    /// Its accreditations.
    pub accreditations: Vec<PublishedAccreditation>,
    /// Caisses it recognises.
    pub recognised: Vec<CaisseId>,
    /// Sequence of the signed heads accepted.
    pub sequence: u64,
    /// A fingerprint of those signed heads (hex, 16 digits): two nodes
    /// holding the same sequence with different fingerprints hold two
    /// versions the owner signed under one sequence.
    pub heads: String,
    /// When its document last changed here (Unix seconds).
    pub last_changed: u64,
    /// Whether a connection to it is open.
    pub connected: bool,
    /// Statements in its document that failed verification (ignored).
    pub invalid_statements: u64,
    /// Settlement statements it published as creditor, by content id.
    pub statements: Vec<(ContentId, caisse_protocol::messages::SettlementStatement)>,
    /// Statements it acknowledged as debtor.
    pub acks: Vec<ContentId>,
    /// Statements it disputed as debtor.
    pub disputes: Vec<caisse_protocol::messages::Dispute>,
    /// Transfers it declared paid, by content id.
    pub transfers: Vec<(ContentId, caisse_protocol::messages::TransferSettled)>,
    /// Purchase ids of the receipts it holds, per period.
    pub claims: BTreeMap<String, Vec<caisse_protocol::PurchaseId>>,
    /// Producers' dossiers it carries (each signed by its producer).
    #[serde(default)]
    pub dossiers: Vec<CarriedDossier>,
    /// Its monthly sales totals of producers at its outlets.
    #[serde(default)]
    pub sales: Vec<ProducerSales>,
    /// Its territory's centre.
    #[serde(default)]
    pub location: Option<caisse_protocol::producer::GeoPoint>,
    /// Its bank account (for settlement transfers).
    #[serde(default)]
    pub bank: Option<caisse_protocol::producer::CaisseBank>,
    /// The addresses its node signed (the only ones dialled for it).
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// Everything known of the federation, shared read-mostly.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FederationView {
    /// Every caisse with a document here (this one included).
    pub caisses: BTreeMap<CaisseId, PeerCaisse>,
}

/// Whether `theirs` includes `ours`: equal, or a conjunction (`all`) that
/// lists every rule of ours (or ours itself). Deliberately structural and
/// conservative: a caisse's parliament can always recognise a peer by name.
pub fn criteria_include(theirs: &Rule, ours: &Rule) -> bool {
    if theirs == ours {
        return true;
    }
    let Rule::All(their_rules) = theirs else {
        return false;
    };
    if their_rules.contains(ours) {
        return true;
    }
    match ours {
        Rule::All(our_rules) => our_rules.iter().all(|r| their_rules.contains(r)),
        _ => false,
    }
}

impl FederationView {
    /// Every caisse `me` vouches for, as its replication reads it: `me`
    /// recognises it (by name, or by its policy: compatible criteria), or a
    /// caisse `me` recognises by name does, or its document carries a
    /// settlement statement with `me`. The only candidates are the caisses
    /// in the view and those named in the recognised lists of `me` and of
    /// the caisses it recognises.
    pub fn vouched_by(&self, me: &CaisseId, recognition: &Recognition) -> HashSet<CaisseId> {
        let Some(mine) = self.caisses.get(me) else {
            return HashSet::new();
        };
        let ours = mine.criteria.as_ref().map(|(c, _)| c);
        let mut candidates: HashSet<CaisseId> = self.caisses.keys().copied().collect();
        candidates.extend(mine.recognised.iter().copied());
        for r in &mine.recognised {
            if let Some(p) = self.caisses.get(r) {
                candidates.extend(p.recognised.iter().copied());
            }
        }
        candidates
            .into_iter()
            .filter(|owner| {
                self.recognises(owner, recognition, ours)
                    || mine.recognised.contains(owner)
                    || mine.recognised.iter().any(|r| {
                        self.caisses
                            .get(r)
                            .is_some_and(|p| p.recognised.contains(owner))
                    })
                    || self.caisses.get(owner).is_some_and(|p| {
                        p.statements
                            .iter()
                            .any(|(_, s)| s.debtor == *me || s.creditor == *me)
                    })
            })
            .collect()
    }

    /// Whether this caisse's recognition policy accepts `issuer`'s accreditations.
    pub fn recognises(
        &self,
        issuer: &CaisseId,
        recognition: &Recognition,
        our_criteria: Option<&Criteria>,
    ) -> bool {
        match recognition.policy {
            RecognitionPolicy::None => false,
            RecognitionPolicy::Listed => recognition.recognised.contains(issuer),
            RecognitionPolicy::CompatibleCriteria => {
                recognition.recognised.contains(issuer)
                    || match (
                        our_criteria,
                        self.caisses.get(issuer).and_then(|p| p.criteria.as_ref()),
                    ) {
                        (Some(ours), Some((theirs, _))) => {
                            criteria_include(&theirs.rule, &ours.rule)
                        }
                        _ => false,
                    }
            }
        }
    }

    /// The best coverage rate another recognised caisse accredits `producer`
    /// for in `category` on `day`, and which caisse.
    pub fn producer_coverage(
        &self,
        producer: &ProducerId,
        category: &Category,
        day: Day,
        us: &CaisseId,
        recognition: &Recognition,
        our_criteria: Option<&Criteria>,
    ) -> Option<(u8, CaisseId)> {
        let subject = Subject::Producer(*producer);
        self.caisses
            .iter()
            .filter(|(id, _)| *id != us && self.recognises(id, recognition, our_criteria))
            .flat_map(|(id, p)| p.accreditations.iter().map(move |a| (id, a)))
            .filter(|(_, a)| {
                a.revocation.is_none()
                    && a.accreditation.subject == subject
                    && a.accreditation.is_valid_on(day)
            })
            .filter_map(|(id, a)| a.accreditation.coverage(category).map(|c| (c, *id)))
            .max()
    }

    /// The newest dossier of `producer` any caisse carries.
    pub fn dossier(&self, producer: &ProducerId) -> Option<&CarriedDossier> {
        self.caisses
            .values()
            .flat_map(|p| p.dossiers.iter())
            .filter(|d| d.dossier.id() == *producer)
            .max_by_key(|d| d.dossier.version)
    }

    /// Every accreditation of the federation, with its issuer.
    pub fn all_accreditations(&self) -> Vec<&PublishedAccreditation> {
        self.caisses
            .values()
            .flat_map(|p| p.accreditations.iter())
            .collect()
    }
}

/// A caisse's published statements as bytes, keyed as in its federation
/// document: what a replica holds before anything is verified. The node
/// reads it out of an automerge document; a simulator builds it from the
/// owner's [`Statements`]; [`Published::read`] verifies it the same way for
/// both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// The signed profile.
    pub profile: Option<Vec<u8>>,
    /// Signed criteria versions, by zero-padded version number.
    pub criteria: BTreeMap<String, Vec<u8>>,
    /// Signed accreditations, by content id.
    pub accreditations: BTreeMap<String, Vec<u8>>,
    /// Signed revocations, by the accreditation's content id.
    pub revocations: BTreeMap<String, Vec<u8>>,
    /// Recognised caisse ids, as text.
    pub recognised: Vec<String>,
    /// Settlement statements, answers and transfers, by key.
    pub settlement: BTreeMap<String, Vec<u8>>,
    /// Encoded purchase-id lists of the receipts held, by period.
    pub claims: BTreeMap<String, Vec<u8>>,
    /// Producers' signed dossiers, by producer id.
    pub dossiers: BTreeMap<String, Vec<u8>>,
    /// Signed monthly sales totals, by period.
    pub sales: BTreeMap<String, Vec<u8>>,
    /// The signed territory centre.
    pub location: Option<Vec<u8>>,
    /// The signed bank account.
    pub bank: Option<Vec<u8>>,
    /// The signed addresses.
    pub addresses: Option<Vec<u8>>,
}

impl Statements {
    /// The bytes a document holds for these statements, keyed as published.
    pub fn published(&self) -> Published {
        let bytes = |e: &Envelope| e.to_bytes().unwrap_or_default();
        Published {
            profile: self.profile.as_ref().map(bytes),
            criteria: self
                .criteria
                .iter()
                .map(|(v, e)| (format!("{v:010}"), bytes(e)))
                .collect(),
            accreditations: self
                .accreditations
                .iter()
                .map(|(id, e)| (id.to_string(), bytes(e)))
                .collect(),
            revocations: self
                .revocations
                .iter()
                .map(|(id, e)| (id.to_string(), bytes(e)))
                .collect(),
            recognised: self.recognised.iter().map(ToString::to_string).collect(),
            settlement: self
                .settlement
                .iter()
                .map(|(k, e)| (k.clone(), bytes(e)))
                .collect(),
            claims: self
                .claims
                .iter()
                .map(|(p, ids)| {
                    (
                        p.clone(),
                        encoding::encode(ids, MAX_RPC_SIZE).unwrap_or_default(),
                    )
                })
                .collect(),
            dossiers: self
                .dossiers
                .iter()
                .map(|(id, e)| (id.to_string(), bytes(e)))
                .collect(),
            sales: self
                .sales
                .iter()
                .map(|(p, e)| (p.to_string(), bytes(e)))
                .collect(),
            location: self.location.as_ref().map(bytes),
            bank: self.bank.as_ref().map(bytes),
            addresses: self.addresses.as_ref().map(bytes),
        }
    }
}

fn open_bytes<T: caisse_protocol::signed::Message>(
    bytes: &[u8],
    federation: &FederationId,
    owner: &CaisseId,
) -> Option<(ContentId, T)> {
    let env = Envelope::from_bytes(bytes).ok()?;
    let v = env.open::<T>(federation).ok()?;
    (v.signer.caisse_id() == *owner).then_some((v.id, v.message))
}

impl Published {
    /// A digest of everything this version holds, in a fixed order: two
    /// versions under one sequence with different digests are an
    /// equivocation (see [`crate::replication`]).
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut put = |tag: &str, b: &[u8]| {
            h.update((tag.len() as u64).to_be_bytes());
            h.update(tag.as_bytes());
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        for (tag, one) in [
            ("profile", &self.profile),
            ("location", &self.location),
            ("bank", &self.bank),
            ("addresses", &self.addresses),
        ] {
            if let Some(b) = one {
                put(tag, b);
            }
        }
        for (tag, map) in [
            ("criteria", &self.criteria),
            ("accreditations", &self.accreditations),
            ("revocations", &self.revocations),
            ("settlement", &self.settlement),
            ("claims", &self.claims),
            ("dossiers", &self.dossiers),
            ("sales", &self.sales),
        ] {
            for (k, v) in map {
                put(tag, k.as_bytes());
                put(tag, v);
            }
        }
        for r in &self.recognised {
            put("recognised", r.as_bytes());
        }
        h.finalize().into()
    }

    /// What `owner` says, keeping only statements it signed (each verified
    /// against its key); the others are counted as invalid.
    pub fn read(&self, owner: &CaisseId, federation: &FederationId) -> PeerCaisse {
        use caisse_protocol::messages::{
            Acknowledgement, CriteriaVersion, Dispute, SettlementStatement, TransferSettled,
        };
        let mut p = PeerCaisse {
            caisse: Some(*owner),
            ..PeerCaisse::default()
        };
        let mut invalid = 0u64;
        if let Some(b) = &self.profile {
            match open_bytes::<CaisseProfile>(b, federation, owner) {
                Some((_, prof)) => p.profile = Some(prof),
                None => invalid += 1,
            }
        }
        for b in self.criteria.values() {
            match open_bytes::<CriteriaVersion>(b, federation, owner) {
                Some((_, cv)) => {
                    let newer = p
                        .criteria
                        .as_ref()
                        .is_none_or(|(c, _)| cv.criteria.version > c.version);
                    if newer {
                        let h = cv.criteria.hash();
                        p.criteria = Some((cv.criteria, h));
                    }
                }
                None => invalid += 1,
            }
        }
        let mut revocations: HashMap<ContentId, Revocation> = HashMap::new();
        for (k, b) in &self.revocations {
            match open_bytes::<Revocation>(b, federation, owner) {
                Some((_, r)) if r.accreditation.to_string() == *k => {
                    revocations.insert(r.accreditation, r);
                }
                _ => invalid += 1,
            }
        }
        for (k, b) in &self.accreditations {
            match open_bytes::<Accreditation>(b, federation, owner) {
                Some((id, a)) if id.to_string() == *k => {
                    p.accreditations.push(PublishedAccreditation {
                        id,
                        revocation: revocations.remove(&id),
                        accreditation: a,
                    })
                }
                _ => invalid += 1,
            }
        }
        for k in &self.recognised {
            match k.parse::<CaisseId>() {
                Ok(c) => p.recognised.push(c),
                Err(_) => invalid += 1,
            }
        }
        for (k, b) in &self.settlement {
            let ok = if k.starts_with("statement/") {
                open_bytes::<SettlementStatement>(b, federation, owner)
                    .map(|(id, st)| p.statements.push((id, st)))
                    .is_some()
            } else if k.starts_with("answer/") {
                open_bytes::<Acknowledgement>(b, federation, owner)
                    .map(|(_, a)| p.acks.push(a.statement))
                    .or_else(|| {
                        open_bytes::<Dispute>(b, federation, owner).map(|(_, d)| p.disputes.push(d))
                    })
                    .is_some()
            } else if k.starts_with("transfer/") {
                open_bytes::<TransferSettled>(b, federation, owner)
                    .map(|(id, t)| p.transfers.push((id, t)))
                    .is_some()
            } else {
                false
            };
            if !ok {
                invalid += 1;
            }
        }
        for (k, b) in &self.claims {
            match encoding::decode::<Vec<caisse_protocol::PurchaseId>>(b, MAX_RPC_SIZE) {
                Ok(ids) => {
                    p.claims.insert(k.clone(), ids);
                }
                Err(_) => invalid += 1,
            }
        }
        for (k, b) in &self.dossiers {
            // Signed by the producer, not by the caisse carrying it.
            let opened = Envelope::from_bytes(b)
                .ok()
                .and_then(|e| Some((e.open::<ProducerDossier>(federation).ok()?, e)));
            match opened {
                Some((v, envelope)) if v.message.id().to_string() == *k => {
                    p.dossiers.push(CarriedDossier {
                        dossier: v.message,
                        envelope,
                    })
                }
                _ => invalid += 1,
            }
        }
        if let Some(b) = &self.location {
            match open_bytes::<caisse_protocol::producer::CaisseLocation>(b, federation, owner) {
                Some((_, l)) => p.location = Some(l.centre),
                None => invalid += 1,
            }
        }
        if let Some(b) = &self.bank {
            match open_bytes::<caisse_protocol::producer::CaisseBank>(b, federation, owner) {
                Some((_, bank)) if crate::sepa::check_iban(&bank.iban).is_ok() => {
                    p.bank = Some(bank);
                }
                _ => invalid += 1,
            }
        }
        if let Some(b) = &self.addresses {
            match open_bytes::<caisse_protocol::messages::CaisseAddresses>(b, federation, owner) {
                Some((_, a)) => p.addresses = a.addresses,
                None => invalid += 1,
            }
        }
        for (k, b) in &self.sales {
            match open_bytes::<ProducerSales>(b, federation, owner) {
                Some((_, s)) if s.period.to_string() == *k => p.sales.push(s),
                _ => invalid += 1,
            }
        }
        p.invalid_statements = invalid;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria_inclusion() {
        let l = |s: &str| Rule::Label(Category::new(s).unwrap());
        let ours = Rule::All(vec![l("organic"), Rule::MaxDistanceKm(250)]);
        let theirs = Rule::All(vec![
            l("organic"),
            Rule::MaxDistanceKm(250),
            l("fair-trade"),
        ]);
        assert!(criteria_include(&theirs, &ours));
        assert!(!criteria_include(&ours, &theirs));
        assert!(criteria_include(&ours, &ours));
        assert!(criteria_include(
            &Rule::All(vec![l("organic"), ours.clone()]),
            &ours
        ));
    }
}
