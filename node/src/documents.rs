//! Federation documents: each caisse publishes one automerge document that
//! only it can change, and every node replicates all of them.
//!
//! A document holds signed statements only (profile, criteria versions,
//! accreditations, revocations, recognised peers), each as the exact bytes
//! of its [`Envelope`]; no personal field can enter it. The owner signs the
//! heads of its document (`DocumentHeads`, with an increasing sequence)
//! and announces them on gossip. A node that sees newer signed heads pulls
//! the document with automerge's sync protocol, over the request-response
//! protocol, into a fork; it accepts the fork only if the fork's heads are
//! exactly heads the owner signed, so any change not covered by the owner's
//! signature is rejected (and logged). Each statement inside is verified
//! again against the owner's key before it is used.
//!
//! This module holds the documents themselves: the schema, projecting
//! statements into a document, reading a replica back into a
//! [`PeerCaisse`] and judging a synced fork. The view built from them is
//! plain data in `caisse_core::federation_view`; the federation task
//! ([`crate::federation`]) does the I/O. automerge lives here, not in the
//! core, because it draws random actor ids from the OS.

use std::collections::{HashMap, HashSet};

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use caisse_protocol::encoding;
use caisse_protocol::messages::{Accreditation, CaisseProfile, CriteriaVersion, Revocation};
use caisse_protocol::rpc::MAX_RPC_SIZE;
use caisse_protocol::{CaisseId, ContentId, Envelope, FederationId};

pub use caisse_core::federation_view::*;

use crate::store::keys;

/// Federation documents by owner.
pub const DOC: &[u8] = b"f/";
/// The owners' latest signed heads, by owner.
pub const HEADS: &[u8] = b"g/";

pub const K_PROFILE: &str = "profile";
pub const K_CRITERIA: &str = "criteria";
pub const K_ACCREDITATIONS: &str = "accreditations";
pub const K_REVOCATIONS: &str = "revocations";
pub const K_RECOGNISED: &str = "recognised";
pub const K_SETTLEMENT: &str = "settlement";
pub const K_CLAIMS: &str = "claims";

/// Rounds of one sync session before giving up.
pub const MAX_SYNC_ROUNDS: usize = 32;

/// A new, empty document owned by `owner`.
pub fn new_document(owner: &CaisseId) -> AutoCommit {
    AutoCommit::new().with_actor(ActorId::from(&owner.as_bytes()[..]))
}

pub fn ensure_map(
    doc: &mut AutoCommit,
    key: &str,
) -> Result<automerge::ObjId, automerge::AutomergeError> {
    match doc.get(ROOT, key)? {
        Some((Value::Object(ObjType::Map), id)) => Ok(id),
        _ => doc.put_object(ROOT, key, ObjType::Map),
    }
}

pub fn bytes_at(doc: &AutoCommit, obj: &automerge::ObjId, key: &str) -> Option<Vec<u8>> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(s), _) => match s.as_ref() {
            ScalarValue::Bytes(b) => Some(b.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Write `statements` into the owner's document; true if anything changed.
pub fn apply_statements(
    doc: &mut AutoCommit,
    statements: &Statements,
) -> Result<bool, automerge::AutomergeError> {
    let mut changed = false;
    let put = |doc: &mut AutoCommit, obj: &automerge::ObjId, key: String, env: &Envelope| {
        let bytes = env.to_bytes().unwrap_or_default();
        if bytes_at(doc, obj, &key).as_deref() != Some(&bytes[..]) {
            doc.put(obj, key, ScalarValue::Bytes(bytes))?;
            return Ok::<bool, automerge::AutomergeError>(true);
        }
        Ok(false)
    };
    if let Some(p) = &statements.profile {
        let bytes = p.to_bytes().unwrap_or_default();
        let current = match doc.get(ROOT, K_PROFILE)? {
            Some((Value::Scalar(s), _)) => s.as_bytes().map(<[u8]>::to_vec),
            _ => None,
        };
        if current.as_deref() != Some(&bytes[..]) {
            doc.put(ROOT, K_PROFILE, ScalarValue::Bytes(bytes))?;
            changed = true;
        }
    }
    let crit = ensure_map(doc, K_CRITERIA)?;
    for (v, env) in &statements.criteria {
        changed |= put(doc, &crit, format!("{v:010}"), env)?;
    }
    let accs = ensure_map(doc, K_ACCREDITATIONS)?;
    for (id, env) in &statements.accreditations {
        changed |= put(doc, &accs, id.to_string(), env)?;
    }
    let revs = ensure_map(doc, K_REVOCATIONS)?;
    for (id, env) in &statements.revocations {
        changed |= put(doc, &revs, id.to_string(), env)?;
    }
    let set = ensure_map(doc, K_SETTLEMENT)?;
    for (k, env) in &statements.settlement {
        changed |= put(doc, &set, k.clone(), env)?;
    }
    let claims = ensure_map(doc, K_CLAIMS)?;
    for (period, ids) in &statements.claims {
        let bytes = encoding::encode(ids, MAX_RPC_SIZE).unwrap_or_default();
        if bytes_at(doc, &claims, period).as_deref() != Some(&bytes[..]) {
            doc.put(&claims, period.as_str(), ScalarValue::Bytes(bytes))?;
            changed = true;
        }
    }
    let rec = ensure_map(doc, K_RECOGNISED)?;
    let present: HashSet<String> = doc.keys(&rec).collect();
    let wanted: HashSet<String> = statements
        .recognised
        .iter()
        .map(|c| c.to_string())
        .collect();
    for k in wanted.difference(&present) {
        doc.put(&rec, k.as_str(), true)?;
        changed = true;
    }
    for k in present.difference(&wanted) {
        doc.delete(&rec, k.as_str())?;
        changed = true;
    }
    Ok(changed)
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

/// Read a document into what it says, keeping only statements signed by its owner.
pub fn read_document(doc: &AutoCommit, owner: &CaisseId, federation: &FederationId) -> PeerCaisse {
    let mut p = PeerCaisse {
        caisse: Some(*owner),
        ..PeerCaisse::default()
    };
    let mut invalid = 0u64;
    if let Ok(Some((Value::Scalar(s), _))) = doc.get(ROOT, K_PROFILE)
        && let Some(b) = s.as_bytes()
    {
        match open_bytes::<CaisseProfile>(b, federation, owner) {
            Some((_, prof)) => p.profile = Some(prof),
            None => invalid += 1,
        }
    }
    let map = |key: &str| match doc.get(ROOT, key) {
        Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
        _ => None,
    };
    if let Some(obj) = map(K_CRITERIA) {
        for k in doc.keys(&obj) {
            match bytes_at(doc, &obj, &k)
                .and_then(|b| open_bytes::<CriteriaVersion>(&b, federation, owner))
            {
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
    }
    let mut revocations: HashMap<ContentId, Revocation> = HashMap::new();
    if let Some(obj) = map(K_REVOCATIONS) {
        for k in doc.keys(&obj) {
            match bytes_at(doc, &obj, &k)
                .and_then(|b| open_bytes::<Revocation>(&b, federation, owner))
            {
                Some((_, r)) if r.accreditation.to_string() == k => {
                    revocations.insert(r.accreditation, r);
                }
                _ => invalid += 1,
            }
        }
    }
    if let Some(obj) = map(K_ACCREDITATIONS) {
        for k in doc.keys(&obj) {
            match bytes_at(doc, &obj, &k)
                .and_then(|b| open_bytes::<Accreditation>(&b, federation, owner))
            {
                Some((id, a)) if id.to_string() == k => {
                    p.accreditations.push(PublishedAccreditation {
                        id,
                        revocation: revocations.remove(&id),
                        accreditation: a,
                    })
                }
                _ => invalid += 1,
            }
        }
    }
    if let Some(obj) = map(K_RECOGNISED) {
        for k in doc.keys(&obj) {
            match k.parse::<CaisseId>() {
                Ok(c) => p.recognised.push(c),
                Err(_) => invalid += 1,
            }
        }
    }
    if let Some(obj) = map(K_SETTLEMENT) {
        use caisse_protocol::messages::{
            Acknowledgement, Dispute, SettlementStatement, TransferSettled,
        };
        for k in doc.keys(&obj) {
            let Some(b) = bytes_at(doc, &obj, &k) else {
                invalid += 1;
                continue;
            };
            let ok = if k.starts_with("statement/") {
                open_bytes::<SettlementStatement>(&b, federation, owner)
                    .map(|(id, st)| p.statements.push((id, st)))
                    .is_some()
            } else if k.starts_with("answer/") {
                open_bytes::<Acknowledgement>(&b, federation, owner)
                    .map(|(_, a)| p.acks.push(a.statement))
                    .or_else(|| {
                        open_bytes::<Dispute>(&b, federation, owner)
                            .map(|(_, d)| p.disputes.push(d))
                    })
                    .is_some()
            } else if k.starts_with("transfer/") {
                open_bytes::<TransferSettled>(&b, federation, owner)
                    .map(|(id, t)| p.transfers.push((id, t)))
                    .is_some()
            } else {
                false
            };
            if !ok {
                invalid += 1;
            }
        }
    }
    if let Some(obj) = map(K_CLAIMS) {
        for k in doc.keys(&obj) {
            match bytes_at(doc, &obj, &k).and_then(|b| {
                encoding::decode::<Vec<caisse_protocol::PurchaseId>>(&b, MAX_RPC_SIZE).ok()
            }) {
                Some(ids) => {
                    p.claims.insert(k, ids);
                }
                None => invalid += 1,
            }
        }
    }
    p.invalid_statements = invalid;
    p
}

/// What a node makes of a document pulled by sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncVerdict {
    /// Its heads are exactly the heads the owner signed: accept it.
    Accept,
    /// Some signed changes are still missing: keep the old copy, try again.
    Incomplete,
    /// It holds changes the owner's signed heads do not cover: reject it.
    Forged,
}

/// Judge a synced fork against the owner's signed (sorted) heads.
pub fn judge_fork(fork: &mut AutoCommit, signed: &[[u8; 32]]) -> SyncVerdict {
    let have = sorted_heads(fork);
    if have == signed {
        return SyncVerdict::Accept;
    }
    let signed_hashes: Vec<ChangeHash> = signed.iter().map(|h| ChangeHash(*h)).collect();
    let unknown_signed = fork.get_missing_deps(&signed_hashes);
    if unknown_signed.is_empty() {
        // Every signed head is present, yet the heads differ: something beyond them.
        return SyncVerdict::Forged;
    }
    // Not all signed changes arrived; anything present must still be an ancestor of them,
    // which we can only tell once they arrive. Heads that are not among the signed heads
    // and whose author is not the owner are forged for sure.
    SyncVerdict::Incomplete
}

pub fn sorted_heads(doc: &mut AutoCommit) -> Vec<[u8; 32]> {
    let mut h: Vec<[u8; 32]> = doc.get_heads().iter().map(|c| c.0).collect();
    h.sort();
    h
}

pub fn doc_key(c: &CaisseId) -> Vec<u8> {
    keys::key(DOC, &[c.as_bytes()])
}

pub fn heads_key(c: &CaisseId) -> Vec<u8> {
    keys::key(HEADS, &[c.as_bytes()])
}

/// Sort signed heads, the form [`judge_fork`] compares.
pub fn sorted(mut v: Vec<[u8; 32]>) -> Vec<[u8; 32]> {
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use caisse_protocol::messages::Subject;
    use caisse_protocol::{Category, Day, ProducerId, SecretKey};

    fn fed() -> FederationId {
        FederationId::new("t").unwrap()
    }

    #[test]
    fn documents_hold_only_owner_signed_statements() {
        let owner = SecretKey::from_bytes([1; 32]);
        let other = SecretKey::from_bytes([2; 32]);
        let id = owner.caisse_id();
        let profile = CaisseProfile {
            caisse: id,
            name: "A".into(),
            territory: "T".into(),
            currency_unit: "EUR".into(),
            issued_at: 1,
        };
        let mut st = Statements {
            profile: Some(Envelope::seal(&owner, &fed(), &profile).unwrap()),
            ..Statements::default()
        };
        let acc = Accreditation {
            caisse: id,
            subject: Subject::Producer(ProducerId::from_bytes([3; 16])),
            subject_name: "Farm".into(),
            scope: vec![caisse_protocol::messages::ScopeItem {
                category: Category::new("bread").unwrap(),
                coverage_pct: 100,
            }],
            criteria: ContentId::of(b"c"),
            valid_from: Day::from_days(0),
            valid_until: Day::from_days(1000),
            decided_by: None,
        };
        let env = Envelope::seal(&owner, &fed(), &acc).unwrap();
        st.accreditations.insert(env.content_id(&fed(), 1), env);
        let mut doc = new_document(&id);
        assert!(apply_statements(&mut doc, &st).unwrap());
        assert!(!apply_statements(&mut doc, &st).unwrap(), "idempotent");
        let view = read_document(&doc, &id, &fed());
        assert_eq!(view.accreditations.len(), 1);
        assert_eq!(view.profile.unwrap().name, "A");
        // A statement signed by someone else, slipped into the document, is ignored.
        let mut forged = acc.clone();
        forged.caisse = other.caisse_id();
        let fenv = Envelope::seal(&other, &fed(), &forged).unwrap();
        let obj = ensure_map(&mut doc, K_ACCREDITATIONS).unwrap();
        doc.put(
            &obj,
            fenv.content_id(&fed(), 1).to_string(),
            ScalarValue::Bytes(fenv.to_bytes().unwrap()),
        )
        .unwrap();
        let view = read_document(&doc, &id, &fed());
        assert_eq!(view.accreditations.len(), 1);
        assert_eq!(view.invalid_statements, 1);
    }

    #[test]
    fn forged_changes_are_judged() {
        let owner = CaisseId::from_bytes([5; 32]);
        let mut doc = new_document(&owner);
        doc.put(ROOT, "x", 1).unwrap();
        let signed = sorted_heads(&mut doc);
        // A faithful copy is accepted.
        let mut copy = doc.fork();
        assert_eq!(judge_fork(&mut copy, &signed), SyncVerdict::Accept);
        // A copy with a change by someone else on top is forged.
        let mut forged = doc.fork().with_actor(ActorId::from(&[9u8; 32][..]));
        forged.put(ROOT, "x", 2).unwrap();
        assert_eq!(judge_fork(&mut forged, &signed), SyncVerdict::Forged);
        // An old copy, missing the signed change, is incomplete.
        let mut old = new_document(&owner);
        assert_eq!(judge_fork(&mut old, &signed), SyncVerdict::Incomplete);
    }
}
