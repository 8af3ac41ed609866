//! The producer's side of the federation, built from what caisses publish
//! and this caisse's own state: a producer's page (its accreditations in
//! every caisse, what each caisse's criteria still require of its dossier,
//! its sales through the allocation per caisse and month, warnings before
//! anything lapses), the registry of producers, and the accreditations of
//! this caisse about to lapse. Business data only: dossiers, accreditations
//! and monthly totals hold nothing about members.

use std::collections::{BTreeMap, BTreeSet};

use caisse_core::conventionnement::{AccreditationRecord, ProducerRecord};
use caisse_core::federation_view::FederationView;
use caisse_protocol::criteria::{Attributes, Criteria, RuleOutcome};
use caisse_protocol::messages::{ScopeItem, Subject};
use caisse_protocol::producer::{GeoPoint, ProducerDossier, SalesLine};
use caisse_protocol::{Amount, CaisseId, Category, ContentId, Day, Period, ProducerId};
use serde::Serialize;

/// How many days ahead a lapse is warned of.
pub const WARN_DAYS: u32 = 30;

/// One accreditation of the producer, at some caisse.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct AccreditationRow {
    /// The caisse.
    pub caisse: CaisseId,
    /// Its name.
    pub caisse_name: String,
    /// The accreditation.
    pub accreditation: ContentId,
    /// Categories and coverage.
    pub scope: Vec<ScopeItem>,
    /// First day.
    pub valid_from: Day,
    /// Last day.
    pub valid_until: Day,
    /// `active`, `not yet valid`, `lapsed` or `revoked`.
    pub status: String,
    /// Why it ends when it does (a certificate), when known here.
    pub lapses_with: Option<String>,
}

/// What one caisse's criteria make of the producer's dossier today.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Requirement {
    /// The caisse.
    pub caisse: CaisseId,
    /// Its name.
    pub caisse_name: String,
    /// Its criteria's name and version.
    pub criteria: String,
    /// The producer's distance to that caisse's territory, if it published it.
    pub distance_km: Option<u32>,
    /// Whether the dossier meets them.
    pub passed: bool,
    /// What is still missing (empty when passed).
    pub missing: Vec<String>,
    /// Every rule's outcome.
    pub outcomes: Vec<RuleOutcome>,
}

/// The producer's sales through the allocation at one caisse's outlets in one month.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SalesRow {
    /// The caisse whose outlets sold.
    pub caisse: CaisseId,
    /// Its name.
    pub caisse_name: String,
    /// The month.
    pub period: Period,
    /// Sum of the line prices.
    pub amount: Amount,
    /// Purchase lines.
    pub lines: u32,
}

/// A producer's page.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ProducerPage {
    /// The producer.
    pub producer: ProducerId,
    /// Its business name.
    pub name: String,
    /// Its newest dossier known here.
    pub dossier: Option<ProducerDossier>,
    /// Accreditations in every caisse.
    pub accreditations: Vec<AccreditationRow>,
    /// What each caisse's criteria require of the dossier.
    pub requirements: Vec<Requirement>,
    /// Sales per caisse and month.
    pub sales: Vec<SalesRow>,
    /// What lapses soon, and why.
    pub warnings: Vec<String>,
}

/// What this caisse knows of itself that its published document may not
/// show yet.
pub struct Local {
    /// This caisse.
    pub id: CaisseId,
    /// Its name.
    pub name: String,
    /// Its criteria.
    pub criteria: Option<Criteria>,
    /// Its territory centre.
    pub centre: Option<GeoPoint>,
    /// The producer as registered here.
    pub record: Option<ProducerRecord>,
    /// Its accreditations of the producer.
    pub accreditations: Vec<AccreditationRecord>,
    /// Its sales totals of the producer, by month.
    pub sales: Vec<(Period, SalesLine)>,
}

fn status(valid_from: Day, valid_until: Day, revoked: bool, today: Day) -> &'static str {
    if revoked {
        "revoked"
    } else if today < valid_from {
        "not yet valid"
    } else if today > valid_until {
        "lapsed"
    } else {
        "active"
    }
}

fn days_between(a: Day, b: Day) -> u32 {
    b.days().saturating_sub(a.days())
}

/// The newest of the dossier held here (`held`) and those other caisses carry.
pub fn newest_dossier(
    view: &FederationView,
    producer: ProducerId,
    held: Option<ProducerDossier>,
) -> Option<ProducerDossier> {
    held.into_iter()
        .chain(view.dossier(&producer).map(|d| d.dossier.clone()))
        .max_by_key(|d| d.version)
}

/// The page of `producer` as this caisse sees the federation on `today`.
pub fn page(
    view: &FederationView,
    local: &Local,
    producer: ProducerId,
    today: Day,
) -> ProducerPage {
    let subject = Subject::Producer(producer);
    let dossier = newest_dossier(
        view,
        producer,
        local
            .record
            .as_ref()
            .and_then(|r| r.dossier.as_ref())
            .map(|h| h.dossier.clone()),
    );
    let name_of = |c: &CaisseId| -> String {
        if *c == local.id {
            return local.name.clone();
        }
        view.caisses
            .get(c)
            .and_then(|p| p.profile.as_ref())
            .map(|p| p.name.clone())
            .unwrap_or_else(|| c.short())
    };
    let mut accreditations: Vec<AccreditationRow> = local
        .accreditations
        .iter()
        .map(|r| AccreditationRow {
            caisse: local.id,
            caisse_name: local.name.clone(),
            accreditation: r.id,
            scope: r.accreditation.scope.clone(),
            valid_from: r.accreditation.valid_from,
            valid_until: r.accreditation.valid_until,
            status: status(
                r.accreditation.valid_from,
                r.accreditation.valid_until,
                r.revoked.is_some(),
                today,
            )
            .into(),
            lapses_with: r.lapses_with.clone(),
        })
        .collect();
    for (c, p) in view.caisses.iter().filter(|(c, _)| **c != local.id) {
        for a in p
            .accreditations
            .iter()
            .filter(|a| a.accreditation.subject == subject)
        {
            accreditations.push(AccreditationRow {
                caisse: *c,
                caisse_name: name_of(c),
                accreditation: a.id,
                scope: a.accreditation.scope.clone(),
                valid_from: a.accreditation.valid_from,
                valid_until: a.accreditation.valid_until,
                status: status(
                    a.accreditation.valid_from,
                    a.accreditation.valid_until,
                    a.revocation.is_some(),
                    today,
                )
                .into(),
                lapses_with: None,
            });
        }
    }
    // What each caisse's criteria make of the dossier (or, for a producer
    // registered here without one, of what the desk recorded).
    let attributes = |centre: Option<&GeoPoint>| -> Option<Attributes> {
        match &dossier {
            Some(d) => Some(d.attributes_on(today, centre)),
            None => local.record.as_ref().map(|r| r.attributes.clone()),
        }
    };
    let mut requirements = Vec::new();
    let mut judge = |caisse: CaisseId, criteria: &Criteria, centre: Option<&GeoPoint>| {
        if let Some(a) = attributes(centre) {
            let e = criteria.evaluate(&a);
            requirements.push(Requirement {
                caisse,
                caisse_name: name_of(&caisse),
                criteria: format!("{} (version {})", criteria.name, criteria.version),
                distance_km: a.distance_km,
                passed: e.passed,
                missing: e.failures,
                outcomes: e.outcomes,
            });
        }
    };
    if let Some(c) = &local.criteria {
        judge(local.id, c, local.centre.as_ref());
    }
    for (c, p) in view.caisses.iter().filter(|(c, _)| **c != local.id) {
        if let Some((criteria, _)) = &p.criteria {
            judge(*c, criteria, p.location.as_ref());
        }
    }
    // Sales: ours from the running totals, the others' from their signed statements.
    let mut sales: Vec<SalesRow> = local
        .sales
        .iter()
        .map(|(period, l)| SalesRow {
            caisse: local.id,
            caisse_name: local.name.clone(),
            period: *period,
            amount: l.amount,
            lines: l.lines,
        })
        .collect();
    for (c, p) in view.caisses.iter().filter(|(c, _)| **c != local.id) {
        for s in &p.sales {
            for l in s.totals.iter().filter(|l| l.producer == producer) {
                sales.push(SalesRow {
                    caisse: *c,
                    caisse_name: name_of(c),
                    period: s.period,
                    amount: l.amount,
                    lines: l.lines,
                });
            }
        }
    }
    sales.sort_by(|a, b| (a.period, &a.caisse_name).cmp(&(b.period, &b.caisse_name)));
    let mut warnings = Vec::new();
    for a in accreditations.iter().filter(|a| a.status == "active") {
        let left = days_between(today, a.valid_until);
        if left <= WARN_DAYS {
            warnings.push(format!(
                "Your accreditation at {} ends on {} (in {left} days){}.",
                a.caisse_name,
                a.valid_until,
                a.lapses_with
                    .as_ref()
                    .map(|w| format!(": {w}"))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(d) = &dossier {
        for c in &d.certificates {
            if c.valid_until < today {
                warnings.push(format!(
                    "Certificate {} ({}) ended on {}: it no longer counts for any caisse.",
                    c.number, c.label, c.valid_until
                ));
            } else if days_between(today, c.valid_until) <= WARN_DAYS {
                warnings.push(format!(
                    "Certificate {} ({}) ends on {}: accreditations that rely on it lapse that day; publish a new dossier version with the renewed certificate.",
                    c.number, c.label, c.valid_until
                ));
            }
        }
    }
    ProducerPage {
        producer,
        name: dossier
            .as_ref()
            .map(|d| d.name.clone())
            .or_else(|| local.record.as_ref().map(|r| r.name.clone()))
            .or_else(|| {
                view.all_accreditations()
                    .into_iter()
                    .find(|a| a.accreditation.subject == subject)
                    .map(|a| a.accreditation.subject_name.clone())
            })
            .unwrap_or_else(|| producer.to_string()),
        dossier,
        accreditations,
        requirements,
        sales,
        warnings,
    }
}

/// One producer in the registry.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RegistryRow {
    /// The producer.
    pub producer: ProducerId,
    /// Its business name.
    pub name: String,
    /// Its commune and postcode, from its dossier.
    pub commune: Option<String>,
    /// Categories of its products (dossier) or of its accreditations.
    pub categories: BTreeSet<Category>,
    /// Labels with a certificate valid today.
    pub labels: BTreeSet<String>,
    /// Distance to this caisse's territory, km.
    pub distance_km: Option<u32>,
    /// Who accredits it, under what.
    pub accredited_by: Vec<AccreditationRow>,
}

/// Filters of the registry.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct RegistryFilter {
    /// Sells in this category.
    #[serde(default)]
    pub category: Option<String>,
    /// Holds this label today.
    #[serde(default)]
    pub label: Option<String>,
    /// At most this far from this caisse's territory.
    #[serde(default)]
    pub max_km: Option<u32>,
    /// Accredited (active) by this caisse.
    #[serde(default)]
    pub caisse: Option<String>,
}

/// Every producer known in the federation (by dossier or accreditation),
/// filtered.
pub fn registry(
    view: &FederationView,
    local: &Local,
    today: Day,
    filter: &RegistryFilter,
) -> Vec<RegistryRow> {
    let mut ids: BTreeMap<ProducerId, ()> = BTreeMap::new();
    for p in view.caisses.values() {
        for d in &p.dossiers {
            ids.insert(d.dossier.id(), ());
        }
        for a in &p.accreditations {
            if let Subject::Producer(id) = a.accreditation.subject {
                ids.insert(id, ());
            }
        }
    }
    let mut rows = Vec::new();
    for id in ids.into_keys() {
        let l = Local {
            id: local.id,
            name: local.name.clone(),
            criteria: None,
            centre: local.centre,
            record: None,
            accreditations: Vec::new(),
            sales: Vec::new(),
        };
        let p = page(view, &l, id, today);
        let mut categories: BTreeSet<Category> = p
            .dossier
            .as_ref()
            .map(ProducerDossier::categories)
            .unwrap_or_default();
        for a in &p.accreditations {
            categories.extend(a.scope.iter().map(|s| s.category.clone()));
        }
        let attributes = p
            .dossier
            .as_ref()
            .map(|d| d.attributes_on(today, local.centre.as_ref()));
        let row = RegistryRow {
            producer: id,
            name: p.name.clone(),
            commune: p
                .dossier
                .as_ref()
                .map(|d| format!("{} ({})", d.commune, d.postcode)),
            categories,
            labels: attributes
                .as_ref()
                .map(|a| a.labels.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            distance_km: attributes.as_ref().and_then(|a| a.distance_km),
            accredited_by: p.accreditations,
        };
        let keep = filter
            .category
            .as_ref()
            .is_none_or(|c| row.categories.iter().any(|x| x.as_str() == c))
            && filter.label.as_ref().is_none_or(|l| row.labels.contains(l))
            && filter
                .max_km
                .is_none_or(|m| row.distance_km.is_some_and(|d| d <= m))
            && filter.caisse.as_ref().is_none_or(|c| {
                row.accredited_by
                    .iter()
                    .any(|a| a.status == "active" && a.caisse.to_string() == *c)
            });
        if keep {
            rows.push(row);
        }
    }
    rows
}

/// What this caisse knows of itself about `producer`, from its own state.
pub fn local_side(
    c: &impl caisse_core::view::Reads,
    producer: caisse_protocol::ProducerId,
) -> Result<Local, caisse_core::caisse::CaisseError> {
    let profile: caisse_core::caisse::Profile = caisse_core::store::decode_value(
        caisse_core::store::keys::PROFILE,
        &c.read(caisse_core::store::keys::PROFILE)?
            .unwrap_or_default(),
    )?;
    let subject = caisse_protocol::messages::Subject::Producer(producer);
    let sales = caisse_core::sales::producer_totals(c, &producer)?;
    Ok(Local {
        id: c.caisse_id(),
        name: profile.name,
        criteria: c
            .conventions()
            .criteria()
            .map(|r| r.version.criteria.clone()),
        centre: c.policy().territory_centre,
        record: c.conventions().producer(&producer).cloned(),
        accreditations: c
            .conventions()
            .all()
            .into_iter()
            .filter(|r| r.accreditation.subject == subject)
            .cloned()
            .collect(),
        sales,
    })
}

/// This caisse's accreditations ending within `days`, with why.
pub fn lapsing(
    accreditations: &[&AccreditationRecord],
    today: Day,
    days: u32,
) -> Vec<crate::dto::Lapsing> {
    accreditations
        .iter()
        .filter(|r| r.active_on(today) && days_between(today, r.accreditation.valid_until) <= days)
        .map(|r| crate::dto::Lapsing {
            id: r.id,
            subject: r.accreditation.subject,
            name: r.accreditation.subject_name.clone(),
            valid_until: r.accreditation.valid_until,
            days_left: days_between(today, r.accreditation.valid_until),
            lapses_with: r.lapses_with.clone(),
        })
        .collect()
}
