//! Pilot files: a caisse modelled on a real one, with its sources, the
//! behavioural rules of its members and the published figures to compare
//! with. See `docs/RESEARCH.md` for every field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use caisse_protocol::{Amount, Period};
use serde::{Deserialize, Serialize};

/// Who takes part.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Participation {
    /// Participating households.
    pub households: usize,
    /// Enrol every person of a participating household (Nantes counts
    /// them all); otherwise one adult per household.
    #[serde(default)]
    pub whole_households: bool,
    /// Share of participants recruited among the lowest incomes, in percent
    /// (the rest are drawn from the whole territory).
    #[serde(default)]
    pub low_income_share_pct: f64,
    /// What "lowest incomes" means: below this percentile of the territory.
    #[serde(default = "default_low_below")]
    pub low_income_below_pct: f64,
}

fn default_low_below() -> f64 {
    30.0
}

/// How contributions follow income.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contribution {
    /// The smallest monthly contribution.
    pub min: Amount,
    /// The largest.
    pub max: Amount,
    /// Monthly income at or below which the minimum applies.
    pub income_floor: Amount,
    /// Monthly income at or above which the maximum applies.
    pub income_ceiling: Amount,
    /// Which income the scale reads: `per-unit` (income per consumption
    /// unit, the "niveau de vie") or `household` (the household's resources,
    /// Dieulefit).
    #[serde(default = "default_basis")]
    pub basis: String,
}

fn default_basis() -> String {
    "per-unit".into()
}

/// A product category: what members put in their baskets.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    /// Name (`fresh-produce` is what reports count as fresh).
    pub name: String,
    /// Relative weight in baskets before coverage and prices act.
    pub weight: f64,
    /// Share of a line the allocation pays, in percent.
    pub coverage_pct: u8,
}

/// A kind of outlet.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutletKind {
    /// `epicerie`, `marche`, `cooperative`, `groupement`, …
    pub kind: String,
    /// How many.
    pub count: usize,
    /// How attractive this kind is, other things equal (utility units).
    #[serde(default)]
    pub preference: f64,
    /// Producers stocked per category.
    #[serde(default = "default_stock")]
    pub producers_per_category: usize,
}

fn default_stock() -> usize {
    4
}

/// The producers of the territory who apply for accreditation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Producers {
    /// Applicants.
    pub candidates: usize,
    /// Share of applicants holding the organic label, in percent.
    pub organic_pct: f64,
    /// Share of the others following agroecological practice, in percent.
    pub agroecology_pct: f64,
    /// Farthest applicant, km.
    #[serde(default = "default_max_km")]
    pub max_distance_km: u32,
    /// Organic price relative to conventional, in percent (125 = 25% dearer).
    #[serde(default = "default_organic_price")]
    pub organic_price_pct: f64,
    /// Agroecological (not organic) price, in percent of conventional.
    #[serde(default = "default_agro_price")]
    pub agroecology_price_pct: f64,
}

fn default_max_km() -> u32 {
    250
}
fn default_organic_price() -> f64 {
    125.0
}
fn default_agro_price() -> f64 {
    110.0
}

/// How members behave: the parameters of the rules in `docs/RESEARCH.md`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    /// Share of the allocation spent each month by the lowest incomes, percent.
    pub use_low_pct: f64,
    /// The same for the highest incomes (linear in between).
    pub use_high_pct: f64,
    /// Shopping trips with the card per month.
    pub trips_per_month: u32,
    /// Distance at which an outlet's appeal falls by a factor e, km.
    pub distance_decay_km: f64,
    /// Radius of the territory members and outlets are spread over, km.
    pub radius_km: f64,
    /// Utility of an organic product over an agroecological one.
    pub organic_preference: f64,
    /// Weight of price in product choice for the lowest incomes.
    pub price_sensitivity_low: f64,
    /// The same for the highest incomes (linear in between).
    pub price_sensitivity_high: f64,
    /// How much less members put a category in their basket when they pay
    /// part of it themselves: weight × coverage^elasticity (0 = not at all).
    pub coverage_elasticity: f64,
}

/// A figure the pilot published, to compare the run with.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    /// The measure it compares with (a column of `measures.csv`).
    pub measure: String,
    /// The published value (none: the pilot has published none that we
    /// could find; the row says so rather than invent one).
    #[serde(default)]
    pub value: Option<f64>,
    /// `input` (the run is given it) or `outcome` (the run produces it).
    pub role: String,
    /// Where it was published.
    pub source: String,
    /// Why the simulated value differs, as far as we can tell.
    #[serde(default)]
    pub gap: String,
}

/// A pilot.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pilot {
    /// Name.
    pub name: String,
    /// What it models and from which sources, in a few sentences.
    pub note: String,
    /// A built-in territory key or a territory file (relative to the pilot file).
    pub territory: String,
    /// Households drawn for the territory sample the participants come from.
    #[serde(default = "default_sample")]
    pub territory_sample: usize,
    /// First month.
    pub start: Period,
    /// Months simulated.
    pub months: u32,
    /// Who takes part.
    pub participation: Participation,
    /// Monthly allocation per member (per household's first member when
    /// `allocation_per_extra_member` is set).
    pub allocation: Amount,
    /// Allocation for each further member of a household (Nantes).
    #[serde(default)]
    pub allocation_per_extra_member: Option<Amount>,
    /// The contribution scale.
    pub contribution: Contribution,
    /// Subsidies per member and month (split state / local authority).
    pub subsidy_per_member: Amount,
    /// State's share of subsidies, percent.
    #[serde(default = "default_state_share")]
    pub state_share_pct: u8,
    /// The parliament's criteria, as the criteria language's JSON.
    pub criteria: serde_json::Value,
    /// Distance under which a producer counts as local in reports, km.
    #[serde(default)]
    pub local_distance_km: Option<u32>,
    /// Producer applicants.
    pub producers: Producers,
    /// Outlets.
    pub outlets: Vec<OutletKind>,
    /// Basket categories.
    pub categories: Vec<Category>,
    /// Member behaviour.
    pub behaviour: Behaviour,
    /// Published figures.
    #[serde(default)]
    pub published: Vec<Published>,
    /// Where the file was read from (relative territory paths).
    #[serde(skip)]
    pub dir: Option<PathBuf>,
}

fn default_sample() -> usize {
    20_000
}
fn default_state_share() -> u8 {
    60
}

/// The parameters a sweep can vary, and what each sets.
pub const PARAMETERS: &[(&str, &str)] = &[
    ("allocation", "monthly allocation, EUR"),
    (
        "scale",
        "largest monthly contribution (contribution.max), EUR",
    ),
    ("scale_min", "smallest monthly contribution, EUR"),
    (
        "scale_ceiling",
        "monthly income at which the largest contribution applies, EUR",
    ),
    ("subsidy", "subsidy per member and month, EUR"),
    ("households", "participating households"),
    (
        "coverage",
        "coverage of every category, percent (Cadenet-like tiers: set per category in the file)",
    ),
    (
        "use_low",
        "share of the allocation the lowest incomes spend, percent",
    ),
    (
        "use_high",
        "share of the allocation the highest incomes spend, percent",
    ),
    (
        "organic_pct",
        "share of producer applicants labelled organic, percent",
    ),
    (
        "organic_preference",
        "utility of organic over agroecological",
    ),
    (
        "price_sensitivity",
        "weight of price in choice for the lowest incomes",
    ),
];

fn euros(v: f64, what: &str) -> Result<Amount> {
    if !(0.0..=1_000_000.0).contains(&v) {
        bail!("{what} = {v}: give an amount in euros between 0 and 1,000,000");
    }
    Ok(Amount::from_cents((v * 100.0).round() as i64))
}

impl Pilot {
    /// Read a pilot: a built-in name (`montpellier`, `nantes`, `cadenet`,
    /// `dieulefit`) or a TOML file.
    pub fn load(name: &str) -> Result<Pilot> {
        let (text, dir) = match builtin(name) {
            Some(t) => (t.to_owned(), None),
            None => {
                let p = Path::new(name);
                let text = std::fs::read_to_string(p).map_err(|e| {
                    anyhow!(
                        "pilot {name:?} is neither built in (montpellier, nantes, cadenet, dieulefit) nor a readable file: {e}"
                    )
                })?;
                (text, p.parent().map(Path::to_path_buf))
            }
        };
        let mut p: Pilot =
            toml::from_str(&text).with_context(|| format!("reading pilot {name}"))?;
        p.dir = dir;
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> Result<()> {
        if self.participation.households == 0 || self.months == 0 {
            bail!(
                "pilot {}: households and months must be at least 1",
                self.name
            );
        }
        if self.categories.is_empty() || self.outlets.iter().all(|o| o.count == 0) {
            bail!(
                "pilot {}: give at least one category and one outlet",
                self.name
            );
        }
        if self.contribution.income_ceiling <= self.contribution.income_floor
            || self.contribution.max < self.contribution.min
        {
            bail!(
                "pilot {}: the contribution scale must rise (min <= max, income_floor < income_ceiling)",
                self.name
            );
        }
        if !["per-unit", "household"].contains(&self.contribution.basis.as_str()) {
            bail!(
                "pilot {}: contribution.basis is `per-unit` or `household`, not {:?}",
                self.name,
                self.contribution.basis
            );
        }
        for p in &self.published {
            if !["input", "outcome"].contains(&p.role.as_str()) {
                bail!(
                    "pilot {}: published {}: role is `input` or `outcome`",
                    self.name,
                    p.measure
                );
            }
        }
        Ok(())
    }

    /// This pilot with `values` set (names from [`PARAMETERS`]).
    pub fn with(&self, values: &BTreeMap<String, f64>) -> Result<Pilot> {
        let mut p = self.clone();
        for (k, &v) in values {
            match k.as_str() {
                "allocation" => p.allocation = euros(v, k)?,
                "scale" => p.contribution.max = euros(v, k)?,
                "scale_min" => p.contribution.min = euros(v, k)?,
                "scale_ceiling" => p.contribution.income_ceiling = euros(v, k)?,
                "subsidy" => p.subsidy_per_member = euros(v, k)?,
                "households" => {
                    if !(1.0..=1_000_000.0).contains(&v) || v.fract() != 0.0 {
                        bail!("households = {v}: give a whole number from 1 to 1,000,000");
                    }
                    p.participation.households = v as usize;
                }
                "coverage" => {
                    if !(0.0..=100.0).contains(&v) {
                        bail!("coverage = {v}: give a percentage from 0 to 100");
                    }
                    for c in &mut p.categories {
                        c.coverage_pct = v.round() as u8;
                    }
                }
                "use_low" => p.behaviour.use_low_pct = v,
                "use_high" => p.behaviour.use_high_pct = v,
                "organic_pct" => p.producers.organic_pct = v,
                "organic_preference" => p.behaviour.organic_preference = v,
                "price_sensitivity" => p.behaviour.price_sensitivity_low = v,
                _ => {
                    let known: Vec<&str> = PARAMETERS.iter().map(|(n, _)| *n).collect();
                    bail!("cannot vary {k:?}: the parameters are {}", known.join(", "));
                }
            }
        }
        p.validate()?;
        Ok(p)
    }
}

fn builtin(name: &str) -> Option<&'static str> {
    Some(match name {
        "montpellier" => include_str!("../../../scenarios/pilots/montpellier.toml"),
        "nantes" => include_str!("../../../scenarios/pilots/nantes.toml"),
        "cadenet" => include_str!("../../../scenarios/pilots/cadenet.toml"),
        "dieulefit" => include_str!("../../../scenarios/pilots/dieulefit.toml"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_pilot_reads_and_names_a_known_territory() {
        for name in ["montpellier", "nantes", "cadenet", "dieulefit"] {
            let p = Pilot::load(name).unwrap();
            super::super::territory::Territory::load(&p.territory, None).unwrap();
            assert!(!p.published.is_empty(), "{name} has no published figures");
        }
    }

    #[test]
    fn varying_an_unknown_or_bad_parameter_says_what_is_allowed() {
        let p = Pilot::load("montpellier").unwrap();
        let e = p
            .with(&BTreeMap::from([("colour".to_string(), 1.0)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("allocation") && e.contains("scale"), "{e}");
        let e = p
            .with(&BTreeMap::from([("scale".to_string(), -5.0)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("between 0"), "{e}");
        let q = p
            .with(&BTreeMap::from([("allocation".to_string(), 150.0)]))
            .unwrap();
        assert_eq!(q.allocation, Amount::from_cents(150_00));
    }
}
