//! Producers' own identities: a key the producer holds, a signed dossier it
//! publishes into the federation, and the monthly sales totals caisses
//! publish about it.
//!
//! A producer is its ed25519 key; its [`ProducerId`] is derived from the key
//! ([`ProducerId::of_key`]), so any caisse can check that a dossier speaks
//! for the producer it names. A dossier holds business data only: the
//! business name, SIRET, commune (its INSEE centre, never a street address),
//! products, certificates (label, number, certifier, validity), practices,
//! price fairness, origin and hashes of evidence documents. There is no
//! field for a person's address, income or anything about members.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Amount;
use crate::criteria::{Attributes, Criteria, Tag};
use crate::ids::{CaisseId, Category, Day, Period, ProducerId};
use crate::signed::{Message, MessageKind, PublicKey};

/// The most products in a dossier.
pub const MAX_PRODUCTS: usize = 64;
/// The most certificates in a dossier.
pub const MAX_CERTIFICATES: usize = 16;
/// The most evidence references in a dossier.
pub const MAX_EVIDENCE: usize = 32;
/// The most producers in one caisse's monthly sales totals.
pub const MAX_SALES_LINES: usize = 4096;

impl ProducerId {
    /// The producer id of the holder of `key`: the first 16 bytes of
    /// SHA-256 over a domain tag and the key.
    pub fn of_key(key: &PublicKey) -> ProducerId {
        let mut h = Sha256::new();
        h.update(b"caisse-ssa/producer-id\0");
        h.update(key.as_bytes());
        let d = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        ProducerId::from_bytes(b)
    }
}

/// Check a French SIRET (14 digits) or SIREN (9 digits) by its Luhn key.
/// La Poste's establishments (SIREN 356000000) use their own rule: the
/// digits of the SIRET add up to a multiple of 5.
pub fn check_siret(s: &str) -> Result<(), String> {
    let digits: Vec<u32> = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_digit(10).ok_or(()))
        .collect::<Result<_, ()>>()
        .map_err(|()| format!("{s:?}: a SIRET is 14 digits (or a SIREN 9)"))?;
    if digits.len() != 14 && digits.len() != 9 {
        return Err(format!(
            "{s:?}: a SIRET is 14 digits (or a SIREN 9), this has {}",
            digits.len()
        ));
    }
    let sum_plain: u32 = digits.iter().fold(0u32, |a, d| a.saturating_add(*d));
    if digits.len() == 14 && digits.starts_with(&[3, 5, 6, 0, 0, 0, 0, 0, 0]) {
        return if sum_plain.is_multiple_of(5) {
            Ok(())
        } else {
            Err(format!("{s:?}: not a valid La Poste SIRET"))
        };
    }
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let v = if i % 2 == 1 {
            let x = d.saturating_mul(2);
            if x > 9 { x.saturating_sub(9) } else { x }
        } else {
            *d
        };
        sum = sum.saturating_add(v);
    }
    if sum.is_multiple_of(10) {
        Ok(())
    } else {
        Err(format!(
            "{s:?}: the SIRET's check digit does not match (mistyped?)"
        ))
    }
}

/// A point on Earth in millionths of a degree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoPoint {
    /// Latitude, millionths of a degree (-90e6 to 90e6).
    pub lat_e6: i32,
    /// Longitude, millionths of a degree (-180e6 to 180e6).
    pub lon_e6: i32,
}

impl GeoPoint {
    /// Read `LAT,LON` in degrees (`43.6109,3.8772`).
    pub fn parse(text: &str) -> Result<GeoPoint, String> {
        let bad = || format!("{text:?}: write LATITUDE,LONGITUDE in degrees, e.g. 43.6109,3.8772");
        let (a, b) = text.split_once(',').ok_or_else(bad)?;
        let deg = |s: &str, max: f64| -> Result<i32, String> {
            let v: f64 = s.trim().parse().map_err(|_| bad())?;
            if !v.is_finite() || v.abs() > max {
                return Err(bad());
            }
            Ok((v * 1e6).round() as i32)
        };
        Ok(GeoPoint {
            lat_e6: deg(a, 90.0)?,
            lon_e6: deg(b, 180.0)?,
        })
    }

    fn valid(&self) -> bool {
        self.lat_e6.unsigned_abs() <= 90_000_000 && self.lon_e6.unsigned_abs() <= 180_000_000
    }

    /// Great-circle distance to `other`, in whole km (rounded up: a
    /// distance rule never passes on rounding).
    pub fn distance_km(&self, other: &GeoPoint) -> u32 {
        let rad = |e6: i32| f64::from(e6) / 1e6 * std::f64::consts::PI / 180.0;
        let (la1, lo1, la2, lo2) = (
            rad(self.lat_e6),
            rad(self.lon_e6),
            rad(other.lat_e6),
            rad(other.lon_e6),
        );
        let a = ((la2 - la1) / 2.0).sin().powi(2)
            + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
        let km = 2.0 * 6371.0 * a.sqrt().min(1.0).asin();
        km.ceil() as u32
    }
}

/// A label's certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// The label it grants (`organic`).
    pub label: Tag,
    /// The certificate's number.
    pub number: String,
    /// Who certified (`Ecocert FR-BIO-01`).
    pub certifier: String,
    /// First day of validity.
    pub valid_from: Day,
    /// Last day of validity.
    pub valid_until: Day,
}

/// A product the producer sells.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Its name (`Pommes golden`).
    pub name: String,
    /// Its category.
    pub category: Category,
}

/// A reference to a document backing an attribute: its hash, never the
/// document (which may hold personal content).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The attribute it backs (`price_fairness`, `agroecology`).
    pub attribute: String,
    /// SHA-256 of the document, 64 hex digits.
    pub sha256: String,
}

/// A producer's signed dossier: its public business identity and declared
/// attributes, published into the federation by the producer's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerDossier {
    /// The producer's key (the signer).
    pub producer: PublicKey,
    /// Increases with each new version the producer signs.
    pub version: u32,
    /// Business name.
    pub name: String,
    /// SIRET (or SIREN), checked by its key.
    pub siret: String,
    /// Commune of the farm (business location, never a street address).
    pub commune: String,
    /// Its postcode.
    pub postcode: String,
    /// The commune's centre, for distances to each caisse's territory.
    pub location: GeoPoint,
    /// Products and their categories.
    pub products: Vec<Product>,
    /// Label certificates.
    pub certificates: Vec<Certificate>,
    /// Practices followed (`agroecology`).
    pub practices: BTreeSet<Tag>,
    /// Price paid to the producer as a percentage of a reference fair price.
    pub price_fairness_pct: Option<u32>,
    /// Where the products come from (`FR`, `FR-OCC`).
    pub origin: Option<String>,
    /// Hashes of documents backing attributes.
    pub evidence: Vec<Evidence>,
    /// When this version was signed (Unix seconds).
    pub issued_at: u64,
}

fn text_ok(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.trim().is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(format!(
            "{what} must be 1 to {max} printable characters, got {s:?}"
        ));
    }
    Ok(())
}

impl ProducerDossier {
    /// The producer this dossier speaks for.
    pub fn id(&self) -> ProducerId {
        ProducerId::of_key(&self.producer)
    }

    /// The categories of its products.
    pub fn categories(&self) -> BTreeSet<Category> {
        self.products.iter().map(|p| p.category.clone()).collect()
    }

    /// Its attributes as a caisse whose territory centre is `territory`
    /// judges them on `day`: only certificates valid that day count.
    pub fn attributes_on(&self, day: Day, territory: Option<&GeoPoint>) -> Attributes {
        self.attributes_without(day, territory, None)
    }

    fn attributes_without(
        &self,
        day: Day,
        territory: Option<&GeoPoint>,
        skip: Option<usize>,
    ) -> Attributes {
        let mut a = Attributes {
            distance_km: territory.map(|t| self.location.distance_km(t)),
            practices: self.practices.clone(),
            price_fairness_pct: self.price_fairness_pct,
            origin: self.origin.clone(),
            ..Attributes::default()
        };
        for (i, c) in self.certificates.iter().enumerate() {
            if Some(i) != skip && c.valid_from <= day && day <= c.valid_until {
                a.labels.insert(c.label.clone());
                a.evidence.insert(
                    c.label.to_string(),
                    format!("{} ({})", c.number, c.certifier),
                );
            }
        }
        for e in &self.evidence {
            a.evidence
                .entry(e.attribute.clone())
                .or_insert_with(|| format!("sha256:{}", e.sha256));
        }
        a
    }

    /// The day an accreditation granted on `day` under `criteria` must
    /// lapse because the pass relies on a certificate that expires: the
    /// earliest last day of validity among the certificates without which
    /// the dossier would fail. None if the pass relies on no certificate
    /// (or the dossier fails anyway).
    pub fn relies_until(
        &self,
        criteria: &Criteria,
        day: Day,
        territory: Option<&GeoPoint>,
    ) -> Option<(Day, Certificate)> {
        if !criteria
            .evaluate(&self.attributes_on(day, territory))
            .passed
        {
            return None;
        }
        self.certificates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.valid_from <= day && day <= c.valid_until)
            .filter(|(i, _)| {
                !criteria
                    .evaluate(&self.attributes_without(day, territory, Some(*i)))
                    .passed
            })
            .map(|(_, c)| (c.valid_until, c.clone()))
            .min_by_key(|(d, _)| *d)
    }
}

impl Message for ProducerDossier {
    const KIND: MessageKind = MessageKind::ProducerDossier;
    const MAX_SIZE: usize = 16 * 1024;
    fn author(&self) -> PublicKey {
        self.producer
    }
    fn validate(&self) -> Result<(), String> {
        text_ok("the business name", &self.name, 200)?;
        check_siret(&self.siret)?;
        text_ok("the commune", &self.commune, 100)?;
        if self.postcode.len() != 5 || !self.postcode.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{:?}: a postcode is 5 digits", self.postcode));
        }
        if !self.location.valid() {
            return Err("the commune's location is not on Earth".into());
        }
        if self.version == 0 {
            return Err("dossier versions start at 1".into());
        }
        if self.products.is_empty() || self.products.len() > MAX_PRODUCTS {
            return Err(format!("list 1 to {MAX_PRODUCTS} products"));
        }
        for p in &self.products {
            text_ok("a product name", &p.name, 120)?;
        }
        if self.certificates.len() > MAX_CERTIFICATES {
            return Err(format!("at most {MAX_CERTIFICATES} certificates"));
        }
        for c in &self.certificates {
            text_ok("a certificate number", &c.number, 80)?;
            text_ok("a certifier", &c.certifier, 120)?;
            if c.valid_until < c.valid_from {
                return Err(format!(
                    "certificate {}: valid_until is before valid_from",
                    c.number
                ));
            }
        }
        if self.practices.len() > 32 {
            return Err("at most 32 practices".into());
        }
        if let Some(o) = &self.origin {
            text_ok("the origin", o, 16)?;
        }
        if self.evidence.len() > MAX_EVIDENCE {
            return Err(format!("at most {MAX_EVIDENCE} evidence references"));
        }
        for e in &self.evidence {
            text_ok("an evidence attribute", &e.attribute, 60)?;
            if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "evidence for {}: give the document's SHA-256 (64 hex digits), never the document",
                    e.attribute
                ));
            }
        }
        Ok(())
    }
}

/// Where a caisse's territory is: the point producers' distances are
/// computed from, published so a producer can see what each caisse's
/// distance rule makes of its commune.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaisseLocation {
    /// The caisse.
    pub caisse: CaisseId,
    /// Its territory's centre.
    pub centre: GeoPoint,
}

impl Message for CaisseLocation {
    const KIND: MessageKind = MessageKind::CaisseLocation;
    const MAX_SIZE: usize = 128;
    fn author(&self) -> PublicKey {
        self.caisse.into()
    }
    fn validate(&self) -> Result<(), String> {
        if self.centre.valid() {
            Ok(())
        } else {
            Err("the territory's centre is not on Earth".into())
        }
    }
}

/// A caisse's bank account, published so that the caisses that owe it after
/// a settlement can pay it (an association's business account, not a
/// person's). The receiving node checks the IBAN's digits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaisseBank {
    /// The caisse.
    pub caisse: CaisseId,
    /// The account holder.
    pub holder: String,
    /// The IBAN, electronic form.
    pub iban: String,
    /// The BIC, if known.
    pub bic: Option<String>,
}

impl Message for CaisseBank {
    const KIND: MessageKind = MessageKind::CaisseBank;
    const MAX_SIZE: usize = 512;
    fn author(&self) -> PublicKey {
        self.caisse.into()
    }
    fn validate(&self) -> Result<(), String> {
        text_ok("the account holder", &self.holder, 140)?;
        let alnum = |s: &str, min: usize, max: usize| {
            (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
        };
        if !alnum(&self.iban, 15, 34) || self.bic.as_deref().is_some_and(|b| !alnum(b, 8, 11)) {
            return Err("not an IBAN (15 to 34 letters and digits) or BIC (8 or 11)".into());
        }
        Ok(())
    }
}

/// One producer's sales through the allocation at one caisse's outlets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalesLine {
    /// The producer.
    pub producer: ProducerId,
    /// Sum of the line prices naming it.
    pub amount: Amount,
    /// How many purchase lines.
    pub lines: u32,
}

/// A caisse's signed monthly totals of purchase lines naming producers, at
/// its outlets: what lets a producer see its demand. No member data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerSales {
    /// The caisse whose outlets sold.
    pub caisse: CaisseId,
    /// The month.
    pub period: Period,
    /// Totals by producer.
    pub totals: Vec<SalesLine>,
}

impl Message for ProducerSales {
    const KIND: MessageKind = MessageKind::ProducerSales;
    const MAX_SIZE: usize = 256 * 1024;
    fn author(&self) -> PublicKey {
        self.caisse.into()
    }
    fn validate(&self) -> Result<(), String> {
        if self.totals.len() > MAX_SALES_LINES {
            return Err(format!("at most {MAX_SALES_LINES} producers"));
        }
        if self.totals.iter().any(|l| l.amount.cents() < 0) {
            return Err("negative sales".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signed::{Envelope, FederationId, SecretKey};

    fn day(s: &str) -> Day {
        s.parse().unwrap()
    }

    pub(crate) fn dossier(key: &SecretKey) -> ProducerDossier {
        ProducerDossier {
            producer: key.public(),
            version: 1,
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
                number: "FR-BIO-01/2027/123".into(),
                certifier: "Ecocert".into(),
                valid_from: day("2027-01-01"),
                valid_until: day("2027-06-30"),
            }],
            practices: BTreeSet::new(),
            price_fairness_pct: Some(105),
            origin: Some("FR".into()),
            evidence: vec![],
            issued_at: 1,
        }
    }

    #[test]
    fn siret_keys_are_checked() {
        check_siret("73282932000074").unwrap();
        check_siret("732 829 320").unwrap();
        check_siret("35600000000010").unwrap(); // La Poste: digits add up to 15
        assert!(
            check_siret("73282932000075")
                .unwrap_err()
                .contains("check digit")
        );
        assert!(check_siret("1234").unwrap_err().contains("14 digits"));
        assert!(check_siret("7328293200007A").is_err());
    }

    #[test]
    fn distances_come_from_the_commune() {
        let montpellier = GeoPoint::parse("43.6109,3.8772").unwrap();
        let nantes = GeoPoint::parse("47.2184,-1.5536").unwrap();
        let d = montpellier.distance_km(&nantes);
        assert!((575..=595).contains(&d), "{d}");
        assert_eq!(montpellier.distance_km(&montpellier), 0);
        assert!(GeoPoint::parse("91,0").is_err());
        assert!(GeoPoint::parse("43.6").is_err());
    }

    #[test]
    fn a_dossier_is_signed_by_its_producer_and_no_one_else() {
        let f = FederationId::new("test").unwrap();
        let farmer = SecretKey::from_bytes([7; 32]);
        let other = SecretKey::from_bytes([8; 32]);
        let d = dossier(&farmer);
        let e = Envelope::seal(&farmer, &f, &d).unwrap();
        let v = e.open::<ProducerDossier>(&f).unwrap();
        assert_eq!(v.message.id(), ProducerId::of_key(&farmer.public()));
        // Signed by another key: refused.
        let forged = Envelope::seal(&other, &f, &d).unwrap();
        assert!(forged.open::<ProducerDossier>(&f).is_err());
        // A bad SIRET: refused even when properly signed.
        let mut bad = d.clone();
        bad.siret = "73282932000075".into();
        let e = Envelope::seal(&farmer, &f, &bad).unwrap();
        assert!(e.open::<ProducerDossier>(&f).is_err());
        // Evidence is a hash, never a document.
        let mut doc = d;
        doc.evidence.push(Evidence {
            attribute: "price_fairness".into(),
            sha256: "my invoice text".into(),
        });
        let e = Envelope::seal(&farmer, &f, &doc).unwrap();
        assert!(e.open::<ProducerDossier>(&f).is_err());
    }

    #[test]
    fn an_accreditation_relying_on_a_certificate_lapses_with_it() {
        let d = dossier(&SecretKey::from_bytes([7; 32]));
        let organic: Criteria = serde_json::from_value(serde_json::json!({
            "name": "A", "version": 1, "rule": { "label": "organic" }
        }))
        .unwrap();
        let distance: Criteria = serde_json::from_value(serde_json::json!({
            "name": "B", "version": 1, "rule": { "max_distance_km": 100 }
        }))
        .unwrap();
        let here = GeoPoint::parse("43.6109,3.8772").unwrap();
        let (until, cert) = d
            .relies_until(&organic, day("2027-02-01"), Some(&here))
            .unwrap();
        assert_eq!(until, day("2027-06-30"));
        assert_eq!(cert.number, "FR-BIO-01/2027/123");
        // A pass that does not need the label does not lapse with it.
        assert_eq!(
            d.relies_until(&distance, day("2027-02-01"), Some(&here)),
            None
        );
        // After the certificate's last day the label no longer counts.
        assert!(
            !organic
                .evaluate(&d.attributes_on(day("2027-07-01"), Some(&here)))
                .passed
        );
        assert!(
            organic
                .evaluate(&d.attributes_on(day("2027-06-30"), Some(&here)))
                .passed
        );
    }
}
