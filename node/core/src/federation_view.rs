//! What this caisse knows of the federation: the statements a caisse
//! publishes, and each peer caisse's verified statements as read from its
//! replicated document. Plain data: the automerge documents themselves are
//! the node's (`caisse_node::documents`).

use std::collections::BTreeMap;

use caisse_protocol::criteria::{Criteria, Rule};
use caisse_protocol::messages::{Accreditation, CaisseProfile, Revocation, Subject};
use caisse_protocol::{CaisseId, Category, ContentId, Day, Envelope, ProducerId};
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

    /// Every accreditation of the federation, with its issuer.
    pub fn all_accreditations(&self) -> Vec<&PublishedAccreditation> {
        self.caisses
            .values()
            .flat_map(|p| p.accreditations.iter())
            .collect()
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
