//! Producers' identities in the core: dossiers taken in only when signed by
//! the producer, newer versions flag a review and change no accreditation,
//! accreditations that rely on a certificate end with it, a producer known
//! only from the federation is accredited by one proposal that shows the
//! other caisses' decisions, sales at our outlets are totalled per month
//! and published signed, and nothing about members reaches the document.

use std::collections::BTreeSet;
use std::sync::Arc;

use caisse_protocol::criteria::{Criteria, Tag};
use caisse_protocol::messages::{PurchaseLine, ScopeItem, Subject};
use caisse_protocol::producer::{Certificate, GeoPoint, ProducerDossier, Product};
use caisse_protocol::{Category, Day, Envelope, FederationId, ProducerId, SecretKey};

use crate::caisse::tests::new_caisse;
use crate::caisse::{Caisse, CaisseError, EnrollInput, PurchaseInput};
use crate::command::{Command, Reply};
use crate::parliament::{Choice, ProposalKind, SeatKind};
use crate::store::{MemStore, Store};

const NOW: u64 = 20_010 * 86_400 + 9 * 3600;

fn fed() -> FederationId {
    FederationId::new("test").unwrap()
}

fn day(d: u32) -> Day {
    Day::from_days(d)
}

fn dossier(key: &SecretKey, version: u32, organic_until: Day) -> ProducerDossier {
    ProducerDossier {
        producer: key.public(),
        version,
        name: "Ferme des Garrigues".into(),
        siret: "73282932000074".into(),
        commune: "Saint-Mathieu-de-Tréviers".into(),
        postcode: "34270".into(),
        location: GeoPoint::parse("43.7670,3.8590").unwrap(),
        products: vec![Product {
            name: "Pommes".into(),
            category: Category::new("fresh-produce").unwrap(),
        }],
        certificates: vec![Certificate {
            label: Tag::new("organic").unwrap(),
            number: "FR-BIO-01/123".into(),
            certifier: "Ecocert".into(),
            valid_from: day(19_900),
            valid_until: organic_until,
        }],
        practices: BTreeSet::new(),
        price_fairness_pct: Some(105),
        origin: Some("FR".into()),
        evidence: vec![],
        issued_at: 1,
    }
}

fn run(c: &mut Caisse, cmd: Command) -> Result<Reply, CaisseError> {
    let r = c.execute(cmd, NOW);
    if let Some(ops) = c.take_batch() {
        c.store().apply(&ops).unwrap();
    }
    r
}

/// Enrol two members and give each a citizen seat; returns the seats.
fn seat_two(c: &mut Caisse, name: &str) -> Vec<u32> {
    let mut seats = Vec::new();
    for i in 0..2 {
        let Reply::Enrolled(e) = run(
            c,
            Command::Enroll(EnrollInput {
                name: format!("{name} {i}"),
                residence: "Montpellier".into(),
                birth_year: Some(1980),
                income: None,
                household: None,
                new_household: false,
                joined: Some(day(20_000)),
                pin: None,
            }),
        )
        .unwrap() else {
            panic!()
        };
        let Reply::Seat(s) = run(
            c,
            Command::AddSeat {
                kind: SeatKind::Citizen,
                member: Some(e.member),
                holder: None,
            },
        )
        .unwrap() else {
            panic!()
        };
        seats.push(s.id);
    }
    seats
}

/// A caisse with two citizen seats, organic criteria, a territory centre
/// (Montpellier) and an outlet; returns it and its seats.
fn caisse() -> (Caisse, Vec<u32>, caisse_protocol::OutletId) {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let mut c = new_caisse(store);
    run(
        &mut c,
        Command::SetTerritoryCentre {
            centre: Some(GeoPoint::parse("43.6109,3.8772").unwrap()),
        },
    )
    .unwrap();
    let seats = seat_two(&mut c, "Citoyenne");
    let criteria: Criteria = serde_json::from_value(serde_json::json!({
        "name": "Critères", "version": 1, "rule": { "label": "organic" }
    }))
    .unwrap();
    pass(&mut c, &seats, ProposalKind::Criteria(criteria)).unwrap();
    let Reply::Outlet(o) = run(
        &mut c,
        Command::RegisterOutlet {
            name: "Épicerie".into(),
            categories: vec![(Category::new("fresh-produce").unwrap(), 100)],
        },
    )
    .unwrap() else {
        panic!()
    };
    (c, seats, o.outlet)
}

fn pass(
    c: &mut Caisse,
    seats: &[u32],
    kind: ProposalKind,
) -> Result<crate::parliament::Proposal, CaisseError> {
    let Reply::Proposal(p) = run(
        c,
        Command::Propose {
            title: "t".into(),
            kind,
            window_minutes: None,
        },
    )?
    else {
        panic!()
    };
    for s in seats {
        run(
            c,
            Command::Vote {
                proposal: p.id,
                seat: *s,
                choice: Choice::Yes,
            },
        )?;
    }
    let Reply::Proposal(p) = run(c, Command::CloseProposal { proposal: p.id })? else {
        panic!()
    };
    assert!(p.outcome.as_ref().unwrap().passed, "{:?}", p.outcome);
    Ok(*p)
}

fn accredit(id: ProducerId) -> ProposalKind {
    ProposalKind::Accredit {
        subject: Subject::Producer(id),
        scope: vec![ScopeItem {
            category: Category::new("fresh-produce").unwrap(),
            coverage_pct: 100,
        }],
        valid_from: day(20_010),
        valid_until: day(20_400),
    }
}

#[test]
fn a_dossier_signed_by_another_key_is_refused_and_changes_nothing() {
    let (mut c, _, _) = caisse();
    let farmer = SecretKey::from_bytes([9; 32]);
    let thief = SecretKey::from_bytes([10; 32]);
    let forged = Envelope::seal(&thief, &fed(), &dossier(&farmer, 1, day(20_100))).unwrap();
    let e = run(&mut c, Command::RecordDossier { envelope: forged }).unwrap_err();
    assert!(e.to_string().contains("producer dossier refused"), "{e}");
    assert!(c.conventions.producers().is_empty());
    // The genuine one is taken in, under the id its key gives.
    let ok = Envelope::seal(&farmer, &fed(), &dossier(&farmer, 1, day(20_100))).unwrap();
    let Reply::Producer(p) = run(
        &mut c,
        Command::RecordDossier {
            envelope: ok.clone(),
        },
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(p.id, ProducerId::of_key(&farmer.public()));
    // The same again is harmless; an older or equal different version is refused.
    run(&mut c, Command::RecordDossier { envelope: ok }).unwrap();
    let mut other = dossier(&farmer, 1, day(20_100));
    other.name = "Autre nom".into();
    let e = run(
        &mut c,
        Command::RecordDossier {
            envelope: Envelope::seal(&farmer, &fed(), &other).unwrap(),
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("not newer"), "{e}");
}

#[test]
fn an_accreditation_ends_with_the_certificate_it_relies_on_and_a_new_version_only_flags_a_review() {
    let (mut c, seats, outlet) = caisse();
    let farmer = SecretKey::from_bytes([9; 32]);
    let env = Envelope::seal(&farmer, &fed(), &dossier(&farmer, 1, day(20_100))).unwrap();
    run(&mut c, Command::RecordDossier { envelope: env }).unwrap();
    let id = ProducerId::of_key(&farmer.public());
    pass(&mut c, &seats, accredit(id)).unwrap();
    let rec = c
        .conventions
        .all()
        .into_iter()
        .find(|r| r.accreditation.subject == Subject::Producer(id))
        .unwrap()
        .clone();
    assert_eq!(
        rec.accreditation.valid_until,
        day(20_100),
        "asked until 20400, the certificate ends on 20100"
    );
    assert!(
        rec.lapses_with
            .as_deref()
            .unwrap()
            .contains("FR-BIO-01/123")
    );
    // Renewed certificate in version 2: flagged for review, nothing else changes.
    let v2 = Envelope::seal(&farmer, &fed(), &dossier(&farmer, 2, day(20_500))).unwrap();
    let Reply::Producer(p) = run(&mut c, Command::RecordDossier { envelope: v2 }).unwrap() else {
        panic!()
    };
    assert!(p.dossier.unwrap().review.unwrap().contains("re-evaluate"));
    let same = c
        .conventions
        .all()
        .into_iter()
        .find(|r| r.id == rec.id)
        .unwrap();
    assert_eq!(same.accreditation.valid_until, day(20_100));
    // A sale of its product counts towards its monthly total, published signed.
    let Reply::Enrolled(m) = run(
        &mut c,
        Command::Enroll(EnrollInput {
            name: "Ana".into(),
            residence: "Montpellier".into(),
            birth_year: Some(1980),
            income: None,
            household: None,
            new_household: false,
            joined: Some(day(20_000)),
            pin: None,
        }),
    )
    .unwrap() else {
        panic!()
    };
    let period = day(20_010).period();
    c.issue_allocations(period, NOW).unwrap();
    if let Some(ops) = c.take_batch() {
        c.store().apply(&ops).unwrap();
    }
    pass(
        &mut c,
        &seats,
        ProposalKind::Accredit {
            subject: Subject::Outlet(outlet),
            scope: vec![ScopeItem {
                category: Category::new("fresh-produce").unwrap(),
                coverage_pct: 100,
            }],
            valid_from: day(20_010),
            valid_until: day(20_400),
        },
    )
    .unwrap();
    for n in 0..2u8 {
        run(
            &mut c,
            Command::Purchase(PurchaseInput {
                id: caisse_protocol::PurchaseId::from_bytes([n + 1; 16]),
                card: m.card,
                outlet,
                lines: vec![PurchaseLine {
                    category: Category::new("fresh-produce").unwrap(),
                    producer: Some(id),
                    amount: caisse_protocol::Amount::from_cents(12_50),
                }],
                pin: None,
            }),
        )
        .unwrap();
    }
    let totals = crate::sales::totals(&c, period).unwrap();
    assert_eq!(totals.len(), 1);
    assert_eq!(totals[0].amount, caisse_protocol::Amount::from_cents(25_00));
    assert_eq!(totals[0].lines, 2);
    let st = crate::conventionnement::federation_statements(
        &c,
        c.id(),
        &SecretKey::from_bytes([3; 32]),
        &fed(),
    );
    let peer = st.published().read(&c.id(), &fed());
    assert_eq!(peer.sales.len(), 1);
    assert_eq!(peer.sales[0].totals[0].producer, id);
    assert_eq!(
        peer.dossiers.len(),
        1,
        "the dossier travels in our document"
    );
    assert!(peer.location.is_some());
    assert_eq!(peer.invalid_statements, 0);
    // Nothing about members in what is published: decode every statement
    // and look for the enrolled names.
    let text = format!("{:?}", peer);
    for name in ["Ana", "Citoyenne", "Montpellier\""] {
        assert!(!text.contains(name), "{name} in the published statements");
    }
}

#[test]
fn a_producer_known_only_from_the_federation_is_accredited_by_one_proposal_showing_the_others() {
    let (mut a, seats_a, _) = caisse();
    let farmer = SecretKey::from_bytes([9; 32]);
    let env = Envelope::seal(&farmer, &fed(), &dossier(&farmer, 1, day(20_100))).unwrap();
    run(&mut a, Command::RecordDossier { envelope: env }).unwrap();
    let id = ProducerId::of_key(&farmer.public());
    pass(&mut a, &seats_a, accredit(id)).unwrap();
    let a_doc = crate::conventionnement::federation_statements(
        &a,
        a.id(),
        &SecretKey::from_bytes([3; 32]),
        &fed(),
    )
    .published()
    .read(&a.id(), &fed());
    // Caisse B (another key) sees A's document only.
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    crate::caisse::write_initial_state(
        &*store,
        &SecretKey::from_bytes([4; 32]),
        "B",
        "Bville",
        &crate::policy::Policy::default(),
        day(20_000),
    )
    .unwrap();
    let mut n = 0u8;
    let mut b = Caisse::load(
        store,
        SecretKey::from_bytes([4; 32]),
        fed(),
        Box::new(move || {
            n = n.wrapping_add(1);
            [n; 32]
        }),
    )
    .unwrap();
    run(&mut b, Command::PeerDocuments { peers: vec![a_doc] }).unwrap();
    let seats_b = seat_two(&mut b, "B");
    let criteria: Criteria = serde_json::from_value(serde_json::json!({
        "name": "Critères B", "version": 1, "rule": { "any": [ { "label": "organic" }, { "practice": "agroecology" } ] }
    }))
    .unwrap();
    pass(&mut b, &seats_b, ProposalKind::Criteria(criteria)).unwrap();
    let p = pass(&mut b, &seats_b, accredit(id)).unwrap();
    assert_eq!(p.elsewhere.len(), 1, "A's decision is shown");
    assert_eq!(p.elsewhere[0].caisse, a.id());
    assert_eq!(
        p.elsewhere[0].their_criteria.as_ref().unwrap().name,
        "Critères"
    );
    assert!(b.conventions.producer(&id).unwrap().dossier.is_some());
}

#[test]
fn an_old_producer_record_is_adopted_under_a_held_key_then_handed_over_once() {
    let (mut c, seats, _) = caisse();
    let attrs: caisse_protocol::criteria::Attributes = serde_json::from_value(serde_json::json!({
        "labels": ["organic"], "distance_km": 20, "evidence": { "organic": "FR-BIO-01/777" }
    }))
    .unwrap();
    let Reply::Producer(old) = run(
        &mut c,
        Command::RegisterProducer {
            name: "Ferme ancienne".into(),
            attributes: attrs,
        },
    )
    .unwrap() else {
        panic!()
    };
    pass(&mut c, &seats, accredit(old.id)).unwrap();
    let adoption = crate::conventionnement::Adoption {
        siret: "73282932000074".into(),
        commune: "Lunel".into(),
        postcode: "34400".into(),
        location: GeoPoint::parse("43.6750,4.1360").unwrap(),
    };
    let Reply::Producer(new) = run(
        &mut c,
        Command::AdoptProducer {
            producer: old.id,
            adoption: adoption.clone(),
        },
    )
    .unwrap() else {
        panic!()
    };
    assert_ne!(new.id, old.id);
    assert_eq!(new.legacy_id, Some(old.id));
    let d = &new.dossier.as_ref().unwrap().dossier;
    assert_eq!(d.certificates[0].number, "FR-BIO-01/777");
    assert_eq!(ProducerId::of_key(&d.producer), new.id);
    // Its accreditation stands under both ids.
    let subjects: Vec<Subject> = c
        .conventions
        .all()
        .into_iter()
        .filter(|r| r.active_on(day(20_050)))
        .map(|r| r.accreditation.subject)
        .collect();
    assert!(subjects.contains(&Subject::Producer(old.id)));
    assert!(subjects.contains(&Subject::Producer(new.id)));
    // Adopting twice is refused.
    let e = run(
        &mut c,
        Command::AdoptProducer {
            producer: old.id,
            adoption,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("already has an identity"), "{e}");
    // The hand-over gives the key that signed the dossier, once.
    let Reply::Token(hex_key) =
        run(&mut c, Command::HandOverProducerKey { producer: new.id }).unwrap()
    else {
        panic!()
    };
    let bytes: [u8; 32] = hex::decode(hex_key).unwrap().try_into().unwrap();
    let key = SecretKey::from_bytes(bytes);
    assert_eq!(key.public(), d.producer);
    let e = run(&mut c, Command::HandOverProducerKey { producer: new.id }).unwrap_err();
    assert!(e.to_string().contains("holds no key"), "{e}");
    // The producer now signs its next version itself.
    let mut v2 = d.clone();
    v2.version = 2;
    run(
        &mut c,
        Command::RecordDossier {
            envelope: Envelope::seal(&key, &fed(), &v2).unwrap(),
        },
    )
    .unwrap();
}
