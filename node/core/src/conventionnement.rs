//! Conventionnement: producers and their declared attributes, the caisse's
//! criteria versions, and the signed accreditations and revocations that
//! say what the allocation may buy, where, and at what coverage rate.
//!
//! An accreditation is signed by the caisse and names the criteria version
//! it was judged against. It is valid between two dates; a revocation wins
//! at once. A purchase line is paid by the allocation only if the outlet
//! holds an active accreditation covering its category, and, when the line
//! names a producer, the producer does too; the coverage rate is the lower
//! of the two.

use std::collections::HashMap;

use caisse_protocol::criteria::{Attributes, Criteria};
use caisse_protocol::messages::{Accreditation, CriteriaVersion, Revocation, ScopeItem, Subject};
use caisse_protocol::producer::{GeoPoint, ProducerDossier};
use caisse_protocol::{Category, ContentId, Day, Envelope, ProducerId, ProposalId};
use serde::{Deserialize, Serialize};

use crate::caisse::{Caisse, CaisseError};
use crate::store::{Store, StoreError, decode_value, encode_value, keys};
use crate::view::Reads;

/// Producers by id.
pub const PRODUCER: &[u8] = b"r/";
/// Keys the caisse holds for producers until they claim them, by producer
/// id (never in a record the API shows, deleted at hand-over).
pub const HELD_KEY: &[u8] = b"ph/";
/// Accreditations by content id.
pub const ACCREDITATION: &[u8] = b"z/";
/// Criteria versions by version number.
pub const CRITERIA: &[u8] = b"v/";

/// How long an accreditation lasts when the decision does not say.
pub const DEFAULT_VALIDITY_DAYS: u32 = 365;

/// The criteria hash recorded by an administrative accreditation made
/// before any criteria were adopted.
pub const NO_CRITERIA: ContentId = ContentId::from_bytes([0; 32]);

/// A producer registered with the caisse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerRecord {
    /// The producer.
    pub id: ProducerId,
    /// Its public (business) name.
    pub name: String,
    /// What it declares, with evidence references.
    pub attributes: Attributes,
    /// Day registered.
    pub registered: Day,
    /// The producer's own signed dossier, when it has one: its attributes
    /// then come from the dossier (and its certificates' validity), not
    /// from what a desk typed in.
    #[serde(default)]
    pub dossier: Option<HeldDossier>,
    /// For an identity the caisse made for a producer registered before
    /// producers had keys: that old record's id.
    #[serde(default)]
    pub legacy_id: Option<ProducerId>,
    /// For such an old record: the identity it was adopted as.
    #[serde(default)]
    pub adopted_as: Option<ProducerId>,
}

/// What the desk gives to turn an old producer record into an identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoption {
    /// SIRET (or SIREN).
    pub siret: String,
    /// Commune of the farm.
    pub commune: String,
    /// Its postcode.
    pub postcode: String,
    /// The commune's centre.
    pub location: GeoPoint,
}

/// A producer's signed dossier as this caisse holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldDossier {
    /// The dossier.
    pub dossier: ProducerDossier,
    /// The producer's signed statement.
    pub envelope: Envelope,
    /// Day this version arrived here.
    pub received: Day,
    /// Set when a new version arrived while the producer held an
    /// accreditation here: the parliament must re-evaluate; nothing changed
    /// by itself.
    #[serde(default)]
    pub review: Option<String>,
}

impl ProducerRecord {
    /// What the producer declares as judged on `day` by a caisse whose
    /// territory centre is `centre`: from its dossier when it has one (only
    /// certificates valid that day count), else as registered.
    pub fn attributes_on(&self, day: Day, centre: Option<&GeoPoint>) -> Attributes {
        match &self.dossier {
            Some(h) => h.dossier.attributes_on(day, centre),
            None => self.attributes.clone(),
        }
    }
}

/// A revocation as kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// Day it took effect.
    pub day: Day,
    /// Why.
    pub reason: String,
    /// The signed revocation.
    pub envelope: Envelope,
}

/// An accreditation as kept: the signed statement, decoded, and its revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccreditationRecord {
    /// Content id of the signed accreditation.
    pub id: ContentId,
    /// The accreditation.
    pub accreditation: Accreditation,
    /// The signed statement, as published.
    pub envelope: Envelope,
    /// Its revocation, if revoked.
    pub revoked: Option<RevocationRecord>,
    /// Why it ends when it does, when a certificate it relied on ends then.
    #[serde(default)]
    pub lapses_with: Option<String>,
}

impl AccreditationRecord {
    /// True if it counts on `day`.
    pub fn active_on(&self, day: Day) -> bool {
        self.revoked.is_none() && self.accreditation.is_valid_on(day)
    }
}

/// A criteria version as kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriteriaRecord {
    /// The hash naming this version.
    pub hash: ContentId,
    /// The signed criteria version.
    pub version: CriteriaVersion,
    /// The signed statement.
    pub envelope: Envelope,
}

/// The caisse's conventionnement state, in memory.
#[derive(Clone, Default)]
pub struct Conventions {
    pub(crate) criteria: Option<CriteriaRecord>,
    pub(crate) accreditations: HashMap<ContentId, AccreditationRecord>,
    pub(crate) by_subject: HashMap<Subject, Vec<ContentId>>,
    pub(crate) producers: HashMap<ProducerId, ProducerRecord>,
}

impl Conventions {
    /// Load from the store.
    pub fn load(store: &dyn Store) -> Result<Conventions, StoreError> {
        let mut c = Conventions::default();
        if let Some((k, v)) = store.last_with_prefix(CRITERIA)? {
            c.criteria = Some(decode_value(&k, &v)?);
        }
        for (k, v) in store.scan_prefix(ACCREDITATION)? {
            let rec: AccreditationRecord = decode_value(&k, &v)?;
            c.index(rec);
        }
        for (k, v) in store.scan_prefix(PRODUCER)? {
            let rec: ProducerRecord = decode_value(&k, &v)?;
            c.producers.insert(rec.id, rec);
        }
        Ok(c)
    }

    fn index(&mut self, rec: AccreditationRecord) {
        let ids = self
            .by_subject
            .entry(rec.accreditation.subject)
            .or_default();
        if !ids.contains(&rec.id) {
            ids.push(rec.id);
        }
        self.accreditations.insert(rec.id, rec);
    }

    /// The current criteria version, if any was adopted.
    pub fn criteria(&self) -> Option<&CriteriaRecord> {
        self.criteria.as_ref()
    }

    /// Accreditations of `subject` active on `day`.
    pub fn active(&self, subject: &Subject, day: Day) -> Vec<&AccreditationRecord> {
        self.by_subject
            .get(subject)
            .into_iter()
            .flatten()
            .filter_map(|id| self.accreditations.get(id))
            .filter(|r| r.active_on(day))
            .collect()
    }

    /// The coverage rate `subject` is accredited for in `category` on `day`
    /// (the highest among its active accreditations), if any.
    pub fn coverage(&self, subject: &Subject, category: &Category, day: Day) -> Option<u8> {
        self.active(subject, day)
            .iter()
            .filter_map(|r| r.accreditation.coverage(category))
            .max()
    }

    /// All accreditations, newest first.
    pub fn all(&self) -> Vec<&AccreditationRecord> {
        let mut v: Vec<_> = self.accreditations.values().collect();
        v.sort_by(|a, b| {
            b.accreditation
                .valid_from
                .cmp(&a.accreditation.valid_from)
                .then(a.id.cmp(&b.id))
        });
        v
    }

    /// Every registered producer.
    pub fn producers(&self) -> &HashMap<ProducerId, ProducerRecord> {
        &self.producers
    }

    /// A registered producer.
    pub fn producer(&self, id: &ProducerId) -> Option<&ProducerRecord> {
        self.producers.get(id)
    }
}

fn producer_key(id: &ProducerId) -> Vec<u8> {
    keys::key(PRODUCER, &[id.as_bytes()])
}

fn accreditation_key(id: &ContentId) -> Vec<u8> {
    keys::key(ACCREDITATION, &[id.as_bytes()])
}

impl Caisse {
    /// Register a producer and what it declares.
    pub fn register_producer(
        &mut self,
        name: &str,
        attributes: Attributes,
        today: Day,
    ) -> Result<ProducerRecord, CaisseError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 100 {
            return Err(CaisseError::Invalid(
                "producer name must be 1 to 100 characters".into(),
            ));
        }
        if attributes.evidence.len() > 32
            || attributes
                .evidence
                .iter()
                .any(|(k, v)| k.len() > 64 || v.len() > 200)
            || attributes.origin.as_ref().is_some_and(|o| o.len() > 10)
            || attributes.labels.len() > 32
            || attributes.practices.len() > 32
        {
            return Err(CaisseError::Invalid(
                "attributes too large: at most 32 labels, practices and evidence entries".into(),
            ));
        }
        let rec = ProducerRecord {
            id: ProducerId::from_bytes(self.random16()),
            name: name.to_owned(),
            attributes,
            registered: today,
            dossier: None,
            legacy_id: None,
            adopted_as: None,
        };
        self.pending.put(producer_key(&rec.id), encode_value(&rec));
        self.conventions_mut().producers.insert(rec.id, rec.clone());
        Ok(rec)
    }

    /// Take in a producer's signed dossier (from the producer, the desk, or
    /// another caisse's document): verified against the producer's key,
    /// newer than the version held, then carried in this caisse's document.
    /// A new version for a producer accredited here changes no
    /// accreditation: it flags the producer for re-evaluation.
    pub fn record_dossier(
        &mut self,
        envelope: Envelope,
        today: Day,
    ) -> Result<ProducerRecord, CaisseError> {
        let v = envelope
            .open::<ProducerDossier>(&self.federation)
            .map_err(|e| CaisseError::Invalid(format!("producer dossier refused: {e}")))?;
        let dossier = v.message;
        let id = dossier.id();
        let existing = self.conventions.producer(&id).cloned();
        if let Some(h) = existing.as_ref().and_then(|r| r.dossier.as_ref()) {
            if h.envelope == envelope {
                return existing.ok_or(CaisseError::Unavailable);
            }
            if dossier.version <= h.dossier.version {
                return Err(CaisseError::Conflict(format!(
                    "dossier version {} of {} is not newer than version {} held here",
                    dossier.version, dossier.name, h.dossier.version
                )));
            }
        }
        let accredited = self
            .conventions
            .by_subject
            .get(&Subject::Producer(id))
            .into_iter()
            .flatten()
            .filter_map(|a| self.conventions.accreditations.get(a))
            .any(|a| a.revoked.is_none() && a.accreditation.valid_until >= today);
        let review = (accredited && existing.is_some()).then(|| {
            format!(
                "dossier version {} arrived on {today}: re-evaluate it against the criteria; the accreditations stand until the parliament decides",
                dossier.version
            )
        });
        let centre = self.policy.territory_centre;
        let rec = ProducerRecord {
            id,
            name: dossier.name.chars().take(100).collect(),
            attributes: dossier.attributes_on(today, centre.as_ref()),
            registered: existing.as_ref().map_or(today, |r| r.registered),
            dossier: Some(HeldDossier {
                dossier,
                envelope,
                received: today,
                review,
            }),
            legacy_id: existing.as_ref().and_then(|r| r.legacy_id),
            adopted_as: None,
        };
        self.pending.put(producer_key(&rec.id), encode_value(&rec));
        self.conventions_mut().producers.insert(rec.id, rec.clone());
        self.mark_published_changed();
        Ok(rec)
    }

    /// Give a producer registered before producers had keys an identity of
    /// its own: a key the caisse holds until the producer claims it, a
    /// first dossier signed with it from the record and the desk's business
    /// details, and the record's accreditations issued again for the new
    /// id (same scope, validity and deciding proposal; the old ones stand
    /// until they end, so tills naming the old id keep working).
    pub fn adopt_producer(
        &mut self,
        legacy: ProducerId,
        adoption: Adoption,
        today: Day,
        now: u64,
    ) -> Result<ProducerRecord, CaisseError> {
        let old =
            self.conventions
                .producer(&legacy)
                .cloned()
                .ok_or_else(|| CaisseError::NotFound {
                    what: "producer",
                    id: legacy.to_string(),
                })?;
        if old.dossier.is_some() || old.adopted_as.is_some() {
            return Err(CaisseError::Conflict(format!(
                "{} already has an identity of its own: nothing to adopt",
                old.name
            )));
        }
        let accreditations: Vec<AccreditationRecord> = self
            .conventions
            .all()
            .into_iter()
            .filter(|r| r.accreditation.subject == Subject::Producer(legacy) && r.active_on(today))
            .cloned()
            .collect();
        let mut categories: Vec<Category> = accreditations
            .iter()
            .flat_map(|r| r.accreditation.scope.iter().map(|s| s.category.clone()))
            .collect();
        categories.sort();
        categories.dedup();
        if categories.is_empty() {
            return Err(CaisseError::Conflict(format!(
                "{} holds no active accreditation, so its products are unknown: let the producer make its own key and dossier instead (`caisse producer keygen`)",
                old.name
            )));
        }
        let until = accreditations
            .iter()
            .map(|r| r.accreditation.valid_until)
            .max()
            .unwrap_or(today);
        let secret = caisse_protocol::SecretKey::from_bytes((self.random)());
        let dossier = ProducerDossier {
            producer: secret.public(),
            version: 1,
            name: old.name.clone(),
            siret: adoption.siret,
            commune: adoption.commune,
            postcode: adoption.postcode,
            location: adoption.location,
            products: categories
                .iter()
                .map(|c| caisse_protocol::producer::Product {
                    name: c.to_string(),
                    category: c.clone(),
                })
                .collect(),
            certificates: old
                .attributes
                .labels
                .iter()
                .map(|l| caisse_protocol::producer::Certificate {
                    label: l.clone(),
                    number: old
                        .attributes
                        .evidence
                        .get(l.as_str())
                        .cloned()
                        .unwrap_or_else(|| "declared to the caisse".into())
                        .chars()
                        .take(80)
                        .collect(),
                    certifier: "declared to the caisse".into(),
                    valid_from: old.registered.min(today),
                    valid_until: until,
                })
                .collect(),
            practices: old.attributes.practices.clone(),
            price_fairness_pct: old.attributes.price_fairness_pct,
            origin: old.attributes.origin.clone(),
            evidence: Vec::new(),
            issued_at: now,
        };
        let envelope = Envelope::seal(&secret, &self.federation, &dossier)
            .map_err(|e| CaisseError::Invalid(format!("dossier: {e}")))?;
        let mut rec = self.record_dossier(envelope, today)?;
        rec.legacy_id = Some(legacy);
        self.pending.put(producer_key(&rec.id), encode_value(&rec));
        self.pending.put(
            keys::key(HELD_KEY, &[rec.id.as_bytes()]),
            secret.to_bytes().to_vec(),
        );
        let mut old = old;
        old.adopted_as = Some(rec.id);
        self.pending.put(producer_key(&legacy), encode_value(&old));
        {
            let conv = self.conventions_mut();
            conv.producers.insert(rec.id, rec.clone());
            conv.producers.insert(legacy, old);
        }
        for a in accreditations {
            self.accredit(
                Subject::Producer(rec.id),
                a.accreditation.scope.clone(),
                a.accreditation.valid_from,
                a.accreditation.valid_until,
                a.accreditation.decided_by,
            )?;
        }
        Ok(rec)
    }

    /// Hand the key the caisse holds for a producer over to it, once: the
    /// caisse deletes its copy and can sign nothing more as that producer.
    pub fn hand_over_producer_key(&mut self, producer: ProducerId) -> Result<String, CaisseError> {
        let key = keys::key(HELD_KEY, &[producer.as_bytes()]);
        let secret = self.get(&key)?.ok_or_else(|| {
            CaisseError::Conflict(format!(
                "this caisse holds no key for {producer}: it was handed over already, or the producer made its own"
            ))
        })?;
        self.pending.delete(key);
        Ok(hex::encode(secret))
    }

    /// Adopt a criteria version (after a vote), signed by the caisse.
    pub(crate) fn adopt_criteria(
        &mut self,
        criteria: Criteria,
        decided_by: Option<ProposalId>,
        today: Day,
    ) -> Result<ContentId, CaisseError> {
        criteria
            .validate()
            .map_err(|e| CaisseError::Invalid(format!("criteria: {e}")))?;
        if let Some(cur) = self.conventions.criteria()
            && criteria.version <= cur.version.criteria.version
        {
            return Err(CaisseError::Conflict(format!(
                "criteria version {} is not newer than the current version {}",
                criteria.version, cur.version.criteria.version
            )));
        }
        let hash = criteria.hash();
        let version = CriteriaVersion {
            caisse: self.id,
            criteria,
            adopted_on: today,
            decided_by,
        };
        let envelope = Envelope::seal(&self.secret, &self.federation, &version)
            .map_err(|e| CaisseError::Invalid(format!("criteria too large: {e}")))?;
        let rec = CriteriaRecord {
            hash,
            version,
            envelope,
        };
        self.pending.put(
            keys::key(CRITERIA, &[&rec.version.criteria.version.to_be_bytes()]),
            encode_value(&rec),
        );
        self.conventions_mut().criteria = Some(rec);
        self.mark_published_changed();
        Ok(hash)
    }

    /// Issue a signed accreditation.
    pub(crate) fn accredit(
        &mut self,
        subject: Subject,
        scope: Vec<ScopeItem>,
        valid_from: Day,
        valid_until: Day,
        decided_by: Option<ProposalId>,
    ) -> Result<ContentId, CaisseError> {
        let subject_name = match &subject {
            Subject::Producer(p) => self
                .conventions
                .producer(p)
                .map(|r| r.name.clone())
                .ok_or_else(|| CaisseError::NotFound {
                    what: "producer",
                    id: p.to_string(),
                })?,
            Subject::Outlet(o) => self.outlets.get(o).map(|r| r.name.clone()).ok_or_else(|| {
                CaisseError::NotFound {
                    what: "outlet",
                    id: o.to_string(),
                }
            })?,
        };
        let criteria = self.conventions.criteria().map_or(NO_CRITERIA, |c| c.hash);
        // Expiry follows evidence: a pass that needs a certificate ends on
        // the certificate's last day, for every caisse that reads it.
        let mut valid_until = valid_until;
        let mut lapses_with = None;
        if let Subject::Producer(p) = &subject
            && let Some(h) = self
                .conventions
                .producer(p)
                .and_then(|r| r.dossier.as_ref())
            && let Some(c) = self.conventions.criteria()
            && let Some((last, cert)) = h.dossier.relies_until(
                &c.version.criteria,
                valid_from,
                self.policy.territory_centre.as_ref(),
            )
            && last < valid_until
        {
            valid_until = last;
            lapses_with = Some(format!(
                "certificate {} ({}, {}) ends on {last}",
                cert.number, cert.label, cert.certifier
            ));
        }
        let accreditation = Accreditation {
            caisse: self.id,
            subject,
            subject_name,
            scope,
            criteria,
            valid_from,
            valid_until,
            decided_by,
        };
        use caisse_protocol::signed::Message;
        accreditation
            .validate()
            .map_err(|e| CaisseError::Invalid(format!("accreditation: {e}")))?;
        let envelope = Envelope::seal(&self.secret, &self.federation, &accreditation)
            .map_err(|e| CaisseError::Invalid(format!("accreditation too large: {e}")))?;
        let id = envelope.content_id(&self.federation, Accreditation::VERSION);
        let rec = AccreditationRecord {
            id,
            accreditation,
            envelope,
            revoked: None,
            lapses_with,
        };
        self.pending.put(accreditation_key(&id), encode_value(&rec));
        self.conventions_mut().index(rec);
        self.mark_published_changed();
        Ok(id)
    }

    /// Revoke an accreditation, at once. The revocation is signed.
    pub(crate) fn revoke(
        &mut self,
        id: ContentId,
        reason: String,
        decided_by: Option<ProposalId>,
        today: Day,
    ) -> Result<(), CaisseError> {
        let mut rec = self
            .conventions
            .accreditations
            .get(&id)
            .cloned()
            .ok_or_else(|| CaisseError::NotFound {
                what: "accreditation",
                id: id.to_string(),
            })?;
        if rec.revoked.is_some() {
            return Err(CaisseError::Conflict(format!(
                "accreditation {} is already revoked",
                id.short()
            )));
        }
        let revocation = Revocation {
            caisse: self.id,
            accreditation: id,
            reason: reason.clone(),
            effective: today,
            decided_by,
        };
        let envelope = Envelope::seal(&self.secret, &self.federation, &revocation)
            .map_err(|e| CaisseError::Invalid(format!("revocation: {e}")))?;
        rec.revoked = Some(RevocationRecord {
            day: today,
            reason,
            envelope,
        });
        self.pending.put(accreditation_key(&id), encode_value(&rec));
        self.conventions_mut().index(rec);
        self.mark_published_changed();
        Ok(())
    }
}

/// Everything caisse `id` publishes to the federation, signed with its
/// `secret`: read from `r` (the caisse itself or a view of it).
pub fn federation_statements(
    r: &impl Reads,
    id: caisse_protocol::CaisseId,
    secret: &caisse_protocol::SecretKey,
    federation: &caisse_protocol::FederationId,
) -> crate::federation_view::Statements {
    let mut st = crate::federation_view::Statements::default();
    if let Ok(Some(bytes)) = r.read(keys::PROFILE)
        && let Ok(p) = decode_value::<crate::caisse::Profile>(keys::PROFILE, &bytes)
    {
        let profile = caisse_protocol::messages::CaisseProfile {
            caisse: id,
            name: p.name.chars().take(200).collect(),
            territory: p.territory.chars().take(200).collect(),
            currency_unit: "EUR".into(),
            issued_at: u64::from(p.created.days()).saturating_mul(86_400),
        };
        st.profile = Envelope::seal(secret, federation, &profile).ok();
    }
    if let Ok(versions) = r.read_prefix(CRITERIA) {
        for (k, v) in versions {
            if let Ok(rec) = decode_value::<CriteriaRecord>(&k, &v) {
                st.criteria
                    .insert(rec.version.criteria.version, rec.envelope);
            }
        }
    }
    for rec in r.conventions().accreditations.values() {
        st.accreditations.insert(rec.id, rec.envelope.clone());
        if let Some(rv) = &rec.revoked {
            st.revocations.insert(rec.id, rv.envelope.clone());
        }
    }
    for rec in r.conventions().producers.values() {
        if let Some(h) = &rec.dossier {
            st.dossiers.insert(rec.id, h.envelope.clone());
        }
    }
    st.sales = crate::sales::publications(r, id, secret, federation);
    if let Ok(Some(b)) = r.read(&crate::sepa::bank_key(None))
        && let Ok(account) =
            decode_value::<crate::sepa::BankAccount>(&crate::sepa::bank_key(None), &b)
    {
        let bank = caisse_protocol::producer::CaisseBank {
            caisse: id,
            holder: account.holder,
            iban: account.iban,
            bic: account.bic,
        };
        st.bank = Envelope::seal(secret, federation, &bank).ok();
    }
    if let Some(centre) = r.policy().territory_centre {
        let l = caisse_protocol::producer::CaisseLocation { caisse: id, centre };
        st.location = Envelope::seal(secret, federation, &l).ok();
    }
    st.recognised = r.policy().recognition.recognised.clone();
    st.settlement = crate::settlement::settlement_publications(r);
    st.claims = crate::settlement::claims(r);
    st
}
