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

use std::collections::{BTreeMap, HashSet};

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use caisse_protocol::encoding;
use caisse_protocol::rpc::MAX_RPC_SIZE;
use caisse_protocol::{CaisseId, FederationId, PurchaseId};

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
pub const K_DOSSIERS: &str = "dossiers";
pub const K_SALES: &str = "sales";
pub const K_LOCATION: &str = "location";
pub const K_BANK: &str = "bank";
pub const K_ADDRESSES: &str = "addresses";

/// Rounds of one sync session before giving up.
pub const MAX_SYNC_ROUNDS: usize = 32;

/// A new, empty document owned by `owner`.
pub fn new_document(owner: &CaisseId) -> AutoCommit {
    AutoCommit::new().with_actor(ActorId::from(&owner.as_bytes()[..]))
}

/// Maps whose entries the owner removes once it stops publishing them
/// (see `caisse_core::settlement::prune_publications`).
const PRUNED: [&str; 2] = [K_SETTLEMENT, K_SALES];

/// Past this saved size the owner starts a new epoch of its document: a
/// new document holding only what it publishes now. History (every value
/// ever published) is what grows with age; what is published now is
/// bounded by the pruning, so the saved size stays under about twice this.
pub const COMPACT_AT: usize = 512 * 1024;

/// The owner publishing `statements` into its document: apply them, and
/// when the saved document would pass [`COMPACT_AT`], replace it by a new
/// one holding only them (the caller signs the next epoch). `None` when
/// nothing changed (unless `force`); else the saved bytes and whether the
/// document was compacted.
pub fn publish_own(
    doc: &mut AutoCommit,
    owner: &CaisseId,
    statements: &Statements,
    force: bool,
) -> Result<Option<(Vec<u8>, bool)>, automerge::AutomergeError> {
    let changed = apply_statements(doc, statements)?;
    if !changed && !force {
        return Ok(None);
    }
    let bytes = doc.save();
    if bytes.len() <= COMPACT_AT {
        return Ok(Some((bytes, false)));
    }
    let mut fresh = new_document(owner);
    apply_statements(&mut fresh, statements)?;
    *doc = fresh;
    Ok(Some((doc.save(), true)))
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

fn map_absent(doc: &AutoCommit, key: &str) -> bool {
    !matches!(
        doc.get(ROOT, key),
        Ok(Some((Value::Object(ObjType::Map), _)))
    )
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
    let published = statements.published();
    let mut changed = false;
    if let Some(bytes) = &published.profile {
        let current = match doc.get(ROOT, K_PROFILE)? {
            Some((Value::Scalar(s), _)) => s.as_bytes().map(<[u8]>::to_vec),
            _ => None,
        };
        if current.as_deref() != Some(&bytes[..]) {
            doc.put(ROOT, K_PROFILE, ScalarValue::Bytes(bytes.clone()))?;
            changed = true;
        }
    }
    for (key, value) in [
        (K_LOCATION, &published.location),
        (K_BANK, &published.bank),
        (K_ADDRESSES, &published.addresses),
    ] {
        if let Some(bytes) = value
            && bytes_at(doc, &ROOT, key).as_deref() != Some(&bytes[..])
        {
            doc.put(ROOT, key, ScalarValue::Bytes(bytes.clone()))?;
            changed = true;
        }
    }
    for (name, entries) in [
        (K_CRITERIA, &published.criteria),
        (K_ACCREDITATIONS, &published.accreditations),
        (K_REVOCATIONS, &published.revocations),
        (K_SETTLEMENT, &published.settlement),
        (K_DOSSIERS, &published.dossiers),
        (K_SALES, &published.sales),
    ] {
        if entries.is_empty() && [K_DOSSIERS, K_SALES].contains(&name) && map_absent(doc, name) {
            // Documents without dossiers or sales keep the shape they had.
            continue;
        }
        let obj = ensure_map(doc, name)?;
        for (key, bytes) in entries {
            if bytes_at(doc, &obj, key).as_deref() != Some(&bytes[..]) {
                doc.put(&obj, key.as_str(), ScalarValue::Bytes(bytes.clone()))?;
                changed = true;
            }
        }
        if PRUNED.contains(&name) {
            // What the owner no longer publishes (settled, or past the
            // retention) leaves the document.
            let gone: Vec<String> = doc
                .keys(&obj)
                .filter(|k| !entries.contains_key(k))
                .collect();
            for k in gone {
                doc.delete(&obj, k.as_str())?;
                changed = true;
            }
        }
    }
    changed |= apply_claims(doc, &published.claims)?;
    let rec = ensure_map(doc, K_RECOGNISED)?;
    let present: HashSet<String> = doc.keys(&rec).collect();
    let wanted: HashSet<String> = published.recognised.iter().cloned().collect();
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

/// The receipt ids a creditor claims, per period and debtor: one key per
/// purchase id under `claims/<period>/<debtor>` (see
/// `caisse_core::settlement::claims_key`), so a new receipt adds one small
/// entry to the document's history instead of rewriting a whole list; a
/// settled period's lists go.
fn apply_claims(
    doc: &mut AutoCommit,
    claims: &BTreeMap<String, Vec<u8>>,
) -> Result<bool, automerge::AutomergeError> {
    if claims.is_empty() && map_absent(doc, K_CLAIMS) {
        return Ok(false);
    }
    let mut changed = false;
    let obj = ensure_map(doc, K_CLAIMS)?;
    let present: Vec<String> = doc.keys(&obj).collect();
    for period in present.iter().filter(|p| !claims.contains_key(*p)) {
        doc.delete(&obj, period.as_str())?;
        changed = true;
    }
    for (period, bytes) in claims {
        let ids: Vec<PurchaseId> = match encoding::decode(bytes, MAX_RPC_SIZE) {
            Ok(ids) => ids,
            Err(e) => {
                // Never silently empty: the period's entries stay as they were.
                tracing::error!(period = %period, error = %e, "claims not published: undecodable list");
                continue;
            }
        };
        let wanted: HashSet<String> = ids.iter().map(ToString::to_string).collect();
        let sub = match doc.get(&obj, period.as_str())? {
            Some((Value::Object(ObjType::Map), id)) => id,
            _ => {
                changed = true;
                doc.put_object(&obj, period.as_str(), ObjType::Map)?
            }
        };
        let have: HashSet<String> = doc.keys(&sub).collect();
        for k in wanted.difference(&have) {
            doc.put(&sub, k.as_str(), true)?;
            changed = true;
        }
        for k in have.difference(&wanted) {
            doc.delete(&sub, k.as_str())?;
            changed = true;
        }
    }
    Ok(changed)
}

/// The claims a document holds, as [`Published::claims`] has them (each
/// period's ids encoded as one list).
fn claims_in(doc: &AutoCommit) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(Some((Value::Object(ObjType::Map), obj))) = doc.get(ROOT, K_CLAIMS) else {
        return out;
    };
    for period in doc.keys(&obj) {
        let bytes = match doc.get(&obj, period.as_str()) {
            Ok(Some((Value::Object(ObjType::Map), sub))) => {
                let mut ids: Vec<PurchaseId> =
                    doc.keys(&sub).filter_map(|k| k.parse().ok()).collect();
                ids.sort();
                encoding::encode(&ids, MAX_RPC_SIZE).unwrap_or_default()
            }
            // A value of another shape fails verification and counts as invalid.
            _ => Vec::new(),
        };
        out.insert(period, bytes);
    }
    out
}

/// The statements' bytes a document holds, keyed as published (not yet
/// verified).
pub fn published_in(doc: &AutoCommit) -> Published {
    let mut p = Published::default();
    if let Ok(Some((Value::Scalar(s), _))) = doc.get(ROOT, K_PROFILE) {
        p.profile = s.as_bytes().map(<[u8]>::to_vec);
    }
    p.location = bytes_at(doc, &ROOT, K_LOCATION);
    p.bank = bytes_at(doc, &ROOT, K_BANK);
    p.addresses = bytes_at(doc, &ROOT, K_ADDRESSES);
    let map = |key: &str| match doc.get(ROOT, key) {
        Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
        _ => None,
    };
    for (name, entries) in [
        (K_CRITERIA, &mut p.criteria),
        (K_ACCREDITATIONS, &mut p.accreditations),
        (K_REVOCATIONS, &mut p.revocations),
        (K_SETTLEMENT, &mut p.settlement),
        (K_DOSSIERS, &mut p.dossiers),
        (K_SALES, &mut p.sales),
    ] {
        if let Some(obj) = map(name) {
            for k in doc.keys(&obj) {
                // A value that is not bytes is kept as empty bytes: it fails
                // verification and counts as invalid.
                let b = bytes_at(doc, &obj, &k).unwrap_or_default();
                entries.insert(k, b);
            }
        }
    }
    if let Some(obj) = map(K_RECOGNISED) {
        p.recognised = doc.keys(&obj).collect();
    }
    p.claims = claims_in(doc);
    p
}

/// Read a document into what it says, keeping only statements signed by its
/// owner (the verification is the core's, `Published::read`).
pub fn read_document(doc: &AutoCommit, owner: &CaisseId, federation: &FederationId) -> PeerCaisse {
    published_in(doc).read(owner, federation)
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
    use caisse_protocol::messages::{Accreditation, CaisseProfile, Subject};
    use caisse_protocol::{Category, ContentId, Day, Envelope, ProducerId, SecretKey};

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
    fn a_dossier_not_signed_by_its_producer_is_ignored_in_any_document() {
        use caisse_protocol::producer::{GeoPoint, ProducerDossier, Product};
        let owner = SecretKey::from_bytes([1; 32]);
        let id = owner.caisse_id();
        let farmer = SecretKey::from_bytes([7; 32]);
        let thief = SecretKey::from_bytes([8; 32]);
        let d = ProducerDossier {
            producer: farmer.public(),
            version: 1,
            name: "Ferme".into(),
            siret: "73282932000074".into(),
            commune: "Ganges".into(),
            postcode: "34190".into(),
            location: GeoPoint::parse("43.9340,3.7080").unwrap(),
            products: vec![Product {
                name: "Oignons".into(),
                category: Category::new("fresh-produce").unwrap(),
            }],
            certificates: vec![],
            practices: Default::default(),
            price_fairness_pct: None,
            origin: None,
            evidence: vec![],
            issued_at: 1,
        };
        let mut st = Statements::default();
        st.dossiers
            .insert(d.id(), Envelope::seal(&farmer, &fed(), &d).unwrap());
        let mut doc = new_document(&id);
        assert!(apply_statements(&mut doc, &st).unwrap());
        let view = read_document(&doc, &id, &fed());
        assert_eq!(
            view.dossiers.len(),
            1,
            "carried by the caisse, signed by the farmer"
        );
        assert_eq!(view.invalid_statements, 0);
        // A newer version signed by someone else, under the farmer's id.
        let mut forged = d.clone();
        forged.version = 2;
        let fenv = Envelope::seal(&thief, &fed(), &forged).unwrap();
        let obj = ensure_map(&mut doc, K_DOSSIERS).unwrap();
        doc.put(
            &obj,
            d.id().to_string(),
            ScalarValue::Bytes(fenv.to_bytes().unwrap()),
        )
        .unwrap();
        let view = read_document(&doc, &id, &fed());
        assert!(view.dossiers.is_empty(), "the forged version is not read");
        assert_eq!(view.invalid_statements, 1);
        // A genuine dossier filed under another producer's id is refused too.
        let obj = ensure_map(&mut doc, K_DOSSIERS).unwrap();
        doc.put(
            &obj,
            ProducerId::from_bytes([1; 16]).to_string(),
            ScalarValue::Bytes(
                Envelope::seal(&farmer, &fed(), &d)
                    .unwrap()
                    .to_bytes()
                    .unwrap(),
            ),
        )
        .unwrap();
        assert_eq!(read_document(&doc, &id, &fed()).invalid_statements, 2);
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

/// Every key and every scalar value a saved document holds or ever held
/// (its state at each of its changes), decoded: strings as UTF-8, byte
/// values as they are (signed statements, uncompressed). What a privacy
/// check must search: automerge compresses a saved document's larger
/// columns with DEFLATE, so a name stored in one is not in the saved bytes.
pub fn every_value(saved: &[u8]) -> Result<Vec<Vec<u8>>, automerge::AutomergeError> {
    let mut doc = AutoCommit::load(saved)?;
    let mut states = vec![doc.get_heads()];
    states.extend(doc.get_changes(&[]).iter().map(|c| vec![c.hash()]));
    let mut out = Vec::new();
    for heads in states {
        let state = doc.fork_at(&heads)?;
        collect_values(&state, &ROOT, &mut out)?;
    }
    Ok(out)
}

fn collect_values(
    doc: &AutoCommit,
    obj: &automerge::ObjId,
    out: &mut Vec<Vec<u8>>,
) -> Result<(), automerge::AutomergeError> {
    let visit = |v: Value<'_>, id: automerge::ObjId, out: &mut Vec<Vec<u8>>| match v {
        Value::Object(_) => collect_values(doc, &id, out),
        Value::Scalar(s) => {
            match s.as_ref() {
                ScalarValue::Bytes(b) => out.push(b.clone()),
                ScalarValue::Str(t) => out.push(t.as_bytes().to_vec()),
                other => out.push(other.to_string().into_bytes()),
            }
            Ok(())
        }
    };
    match doc.object_type(obj)? {
        ObjType::Map | ObjType::Table => {
            for key in doc.keys(obj) {
                out.push(key.as_bytes().to_vec());
                if let Some((v, id)) = doc.get(obj, key.as_str())? {
                    visit(v, id, out)?;
                }
            }
        }
        ObjType::List => {
            for i in 0..doc.length(obj) {
                if let Some((v, id)) = doc.get(obj, i)? {
                    visit(v, id, out)?;
                }
            }
        }
        ObjType::Text => out.push(doc.text(obj)?.into_bytes()),
    }
    Ok(())
}

#[cfg(test)]
mod privacy_check_tests {
    use super::*;

    /// A name planted in a document is found in its decoded values even
    /// where automerge compressed it out of sight of a byte search.
    #[test]
    fn a_planted_name_is_caught_in_decoded_values() {
        let owner = CaisseId::from_bytes([3; 32]);
        let mut doc = new_document(&owner);
        let notes = doc.put_object(ROOT, "notes", ObjType::List).unwrap();
        for i in 0..400 {
            doc.insert(&notes, i, format!("note {i} about Awa Diallo of Cadenet"))
                .unwrap();
        }
        let saved = doc.save();
        let raw_has = saved.windows(10).any(|w| w == b"Awa Diallo");
        assert!(
            !raw_has,
            "this document was meant to hide the name from a byte search"
        );
        let values = every_value(&saved).unwrap();
        assert!(
            values
                .iter()
                .any(|v| v.windows(10).any(|w| w == b"Awa Diallo"))
        );
        // And one deleted since: still in the history, still caught.
        let mut doc = AutoCommit::load(&saved).unwrap();
        doc.delete(ROOT, "notes").unwrap();
        doc.put(ROOT, "profile", "Caisse A").unwrap();
        let values = every_value(&doc.save()).unwrap();
        assert!(
            values
                .iter()
                .any(|v| v.windows(10).any(|w| w == b"Awa Diallo"))
        );
    }
}
