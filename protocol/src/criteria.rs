//! The conventionnement criteria language.
//!
//! A food parliament votes criteria as data, not code: typed rules over the
//! attributes a producer or outlet declares (labels, distance, practices,
//! price fairness, origin), combined with `all`, `any` and `not`. Criteria
//! are versioned and hashed, so an accreditation can name exactly which
//! version it was judged against. Evaluation is pure and explains, in plain
//! words, every rule that failed.
//!
//! A criteria file, in TOML:
//!
//! ```toml
//! name = "Montpellier 2026"
//! version = 2
//! local_distance_km = 150
//! [rule]
//! all = [
//!   { any = [{ label = "organic" }, { practice = "agroecology" }] },
//!   { max_distance_km = 250 },
//!   { min_price_fairness_pct = 100 },
//! ]
//! ```

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::encoding;
use crate::ids::{Category, ContentId, IdError};

/// A label or practice name (`organic`, `fair-trade`, `animal-welfare`,
/// `agroecology`…): the same lowercase token rules as a category.
pub type Tag = Category;

/// What a producer or outlet declares about itself, each with optional evidence.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Attributes {
    /// Labels held (`organic`, `fair-trade`, `animal-welfare`, …).
    pub labels: BTreeSet<Tag>,
    /// Distance from the caisse's territory, in km.
    pub distance_km: Option<u32>,
    /// Practices followed (`agroecology`, `no-till`, …).
    pub practices: BTreeSet<Tag>,
    /// Price paid to the producer as a percentage of a reference fair price
    /// (100 = exactly fair).
    pub price_fairness_pct: Option<u32>,
    /// Where the products come from (a country or region code, e.g. `FR`, `FR-OCC`).
    pub origin: Option<String>,
    /// Evidence reference per attribute name (a certificate number, an audit).
    pub evidence: BTreeMap<String, String>,
}

/// One rule of the criteria language.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The subject holds this label.
    Label(Tag),
    /// The subject follows this practice.
    Practice(Tag),
    /// The subject declared a distance of at most this many km.
    MaxDistanceKm(u32),
    /// The subject's price fairness is at least this percentage.
    MinPriceFairnessPct(u32),
    /// The subject's origin is one of these codes.
    OriginIn(Vec<String>),
    /// Every sub-rule holds.
    All(Vec<Rule>),
    /// At least one sub-rule holds.
    Any(Vec<Rule>),
    /// The sub-rule does not hold.
    Not(Box<Rule>),
}

/// The deepest nesting of rules accepted (also bounds decoding recursion).
pub const MAX_RULE_DEPTH: u32 = 16;
/// The most rules (leaves and combinators) in one criteria version.
pub const MAX_RULES: usize = 256;

thread_local! {
    static DECODE_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Bounds the recursion of rule decoding so that hostile, deeply nested
/// input fails cleanly instead of exhausting the stack.
struct DepthGuard;

impl DepthGuard {
    fn enter() -> Result<DepthGuard, String> {
        DECODE_DEPTH.with(|d| {
            let now = d.get();
            if now >= MAX_RULE_DEPTH {
                Err(format!("rules nested deeper than {MAX_RULE_DEPTH} levels"))
            } else {
                d.set(now.saturating_add(1));
                Ok(DepthGuard)
            }
        })
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        DECODE_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

#[derive(Deserialize)]
#[serde(rename = "Rule", rename_all = "snake_case")]
enum RuleRepr {
    Label(Tag),
    Practice(Tag),
    MaxDistanceKm(u32),
    MinPriceFairnessPct(u32),
    OriginIn(Vec<String>),
    All(Vec<Rule>),
    Any(Vec<Rule>),
    Not(Box<Rule>),
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let _guard = DepthGuard::enter().map_err(serde::de::Error::custom)?;
        Ok(match RuleRepr::deserialize(d)? {
            RuleRepr::Label(t) => Rule::Label(t),
            RuleRepr::Practice(t) => Rule::Practice(t),
            RuleRepr::MaxDistanceKm(k) => Rule::MaxDistanceKm(k),
            RuleRepr::MinPriceFairnessPct(p) => Rule::MinPriceFairnessPct(p),
            RuleRepr::OriginIn(o) => Rule::OriginIn(o),
            RuleRepr::All(r) => Rule::All(r),
            RuleRepr::Any(r) => Rule::Any(r),
            RuleRepr::Not(r) => Rule::Not(r),
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Label(t) => write!(f, "holds the label {t}"),
            Rule::Practice(t) => write!(f, "follows the practice {t}"),
            Rule::MaxDistanceKm(k) => write!(f, "is at most {k} km away"),
            Rule::MinPriceFairnessPct(p) => write!(f, "pays at least {p}% of the fair price"),
            Rule::OriginIn(o) => write!(f, "comes from one of {}", o.join(", ")),
            Rule::All(r) => write!(f, "meets all of {} rules", r.len()),
            Rule::Any(r) => write!(f, "meets at least one of {} rules", r.len()),
            Rule::Not(r) => write!(f, "does not: {r}"),
        }
    }
}

/// A version of a caisse's criteria, as voted by its parliament.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Criteria {
    /// A human name (`Montpellier 2026`).
    pub name: String,
    /// The version number, increasing with each vote.
    pub version: u32,
    /// The distance under which a producer counts as local in reports.
    #[serde(default)]
    pub local_distance_km: Option<u32>,
    /// The rule every accredited producer or outlet must meet.
    pub rule: Rule,
}

/// Why criteria were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CriteriaError {
    /// Too deep or too many rules.
    #[error("criteria too complex: {0}")]
    TooComplex(String),
    /// An empty `all`/`any`, or an empty origin list.
    #[error("empty rule: {0}")]
    Empty(String),
    /// A bad origin code.
    #[error("origin code {0:?} must be 2 to 10 characters of A-Z, 0-9 or '-'")]
    Origin(String),
    /// A bad name.
    #[error("criteria name must be 1 to 120 characters")]
    Name,
    /// A tag that is not a valid token.
    #[error(transparent)]
    Tag(#[from] IdError),
}

fn valid_origin(code: &str) -> bool {
    (2..=10).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
}

impl Rule {
    fn check(&self, depth: u32, count: &mut usize) -> Result<(), CriteriaError> {
        *count = count.saturating_add(1);
        if depth > MAX_RULE_DEPTH || *count > MAX_RULES {
            return Err(CriteriaError::TooComplex(format!(
                "at most {MAX_RULES} rules nested at most {MAX_RULE_DEPTH} deep"
            )));
        }
        let next = depth.saturating_add(1);
        match self {
            Rule::OriginIn(codes) => {
                if codes.is_empty() {
                    return Err(CriteriaError::Empty(
                        "origin_in needs at least one code".into(),
                    ));
                }
                if let Some(bad) = codes.iter().find(|c| !valid_origin(c)) {
                    return Err(CriteriaError::Origin(bad.clone()));
                }
            }
            Rule::All(rules) | Rule::Any(rules) => {
                if rules.is_empty() {
                    return Err(CriteriaError::Empty(
                        "all/any needs at least one rule".into(),
                    ));
                }
                for r in rules {
                    r.check(next, count)?;
                }
            }
            Rule::Not(r) => r.check(next, count)?,
            Rule::Label(_) | Rule::Practice(_) | Rule::MaxDistanceKm(_) => {}
            Rule::MinPriceFairnessPct(_) => {}
        }
        Ok(())
    }
}

/// The outcome of one leaf rule for one subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleOutcome {
    /// Where the rule sits in the tree, e.g. `all[1].any[0]`.
    pub path: String,
    /// The rule in words.
    pub rule: String,
    /// Whether the subject meets it.
    pub passed: bool,
    /// Why, in words a committee member understands.
    pub explanation: String,
}

/// The result of judging a subject against criteria.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Whether the subject meets the criteria as a whole.
    pub passed: bool,
    /// Every leaf rule's outcome, in tree order.
    pub outcomes: Vec<RuleOutcome>,
    /// The explanations of the failures that decided a negative result.
    pub failures: Vec<String>,
}

impl Criteria {
    /// The largest encoded criteria version accepted.
    pub const MAX_SIZE: usize = 16 * 1024;

    /// Check the criteria are well formed (sizes, depth, codes).
    pub fn validate(&self) -> Result<(), CriteriaError> {
        if self.name.trim().is_empty() || self.name.len() > 120 {
            return Err(CriteriaError::Name);
        }
        let mut count = 0usize;
        self.rule.check(1, &mut count)
    }

    /// The hash naming this exact version (over its canonical encoding).
    pub fn hash(&self) -> ContentId {
        match encoding::encode(self, usize::MAX) {
            Ok(bytes) => ContentId::of_parts(&[b"caisse-ssa/criteria/v1", &bytes]),
            // Encoding a plain struct cannot fail; hash the debug form rather than panic.
            Err(_) => ContentId::of(format!("{self:?}").as_bytes()),
        }
    }

    /// Judge `subject` against these criteria.
    pub fn evaluate(&self, subject: &Attributes) -> Evaluation {
        let mut outcomes = Vec::new();
        let mut failures = Vec::new();
        let passed = eval(&self.rule, subject, "rule", &mut outcomes, &mut failures);
        if passed {
            failures.clear();
        }
        Evaluation {
            passed,
            outcomes,
            failures,
        }
    }
}

fn leaf(rule: &Rule, s: &Attributes) -> (bool, String) {
    let list = |set: &BTreeSet<Tag>| {
        if set.is_empty() {
            "none".to_owned()
        } else {
            set.iter().map(Tag::as_str).collect::<Vec<_>>().join(", ")
        }
    };
    match rule {
        Rule::Label(t) => {
            let ok = s.labels.contains(t);
            let why = if ok {
                format!("holds the label {t}")
            } else {
                format!(
                    "does not hold the label {t} (declared labels: {})",
                    list(&s.labels)
                )
            };
            (ok, why)
        }
        Rule::Practice(t) => {
            let ok = s.practices.contains(t);
            let why = if ok {
                format!("follows {t}")
            } else {
                format!(
                    "does not follow the practice {t} (declared practices: {})",
                    list(&s.practices)
                )
            };
            (ok, why)
        }
        Rule::MaxDistanceKm(max) => match s.distance_km {
            Some(d) if d <= *max => (true, format!("{d} km is within {max} km")),
            Some(d) => (
                false,
                format!("{d} km is farther than the maximum of {max} km"),
            ),
            None => (false, format!("no distance declared (maximum {max} km)")),
        },
        Rule::MinPriceFairnessPct(min) => match s.price_fairness_pct {
            Some(p) if p >= *min => (
                true,
                format!("pays {p}% of the fair price (minimum {min}%)"),
            ),
            Some(p) => (
                false,
                format!("pays {p}% of the fair price, below the minimum of {min}%"),
            ),
            None => (
                false,
                format!("no price fairness declared (minimum {min}%)"),
            ),
        },
        Rule::OriginIn(codes) => match &s.origin {
            Some(o) if codes.iter().any(|c| c == o) => (true, format!("origin {o} is accepted")),
            Some(o) => (
                false,
                format!("origin {o} is not one of {}", codes.join(", ")),
            ),
            None => (
                false,
                format!("no origin declared (accepted: {})", codes.join(", ")),
            ),
        },
        Rule::All(_) | Rule::Any(_) | Rule::Not(_) => (false, String::new()),
    }
}

fn eval(
    rule: &Rule,
    s: &Attributes,
    path: &str,
    outcomes: &mut Vec<RuleOutcome>,
    failures: &mut Vec<String>,
) -> bool {
    match rule {
        Rule::All(rules) => {
            let mut ok = true;
            for (i, r) in rules.iter().enumerate() {
                ok &= eval(r, s, &format!("{path}.all[{i}]"), outcomes, failures);
            }
            ok
        }
        Rule::Any(rules) => {
            let mut sub_failures = Vec::new();
            let mut ok = false;
            for (i, r) in rules.iter().enumerate() {
                ok |= eval(
                    r,
                    s,
                    &format!("{path}.any[{i}]"),
                    outcomes,
                    &mut sub_failures,
                );
            }
            if !ok {
                failures.push(format!(
                    "meets none of the alternatives: {}",
                    sub_failures.join("; or ")
                ));
            }
            ok
        }
        Rule::Not(inner) => {
            let mut ignored = Vec::new();
            let before = outcomes.len();
            let inner_ok = eval(inner, s, &format!("{path}.not"), outcomes, &mut ignored);
            for o in outcomes.iter_mut().skip(before) {
                o.rule = format!("must not: {}", o.rule);
            }
            if inner_ok {
                failures.push(format!("must not be the case that it {inner}"));
            }
            !inner_ok
        }
        _ => {
            let (passed, explanation) = leaf(rule, s);
            if !passed {
                failures.push(explanation.clone());
            }
            outcomes.push(RuleOutcome {
                path: path.to_owned(),
                rule: rule.to_string(),
                passed,
                explanation,
            });
            passed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tag(s: &str) -> Tag {
        Tag::new(s).unwrap()
    }

    fn sample() -> Criteria {
        toml::from_str(
            r#"
            name = "Montpellier 2026"
            version = 2
            local_distance_km = 150
            [rule]
            all = [
              { any = [{ label = "organic" }, { practice = "agroecology" }] },
              { max_distance_km = 250 },
              { min_price_fairness_pct = 100 },
              { not = { label = "ultra-processed" } },
            ]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn evaluates_with_explanations() {
        let c = sample();
        c.validate().unwrap();
        let mut farm = Attributes {
            distance_km: Some(40),
            price_fairness_pct: Some(110),
            ..Default::default()
        };
        farm.labels.insert(tag("organic"));
        let e = c.evaluate(&farm);
        assert!(e.passed, "{e:?}");
        assert!(e.failures.is_empty());

        farm.labels.clear();
        farm.distance_km = Some(300);
        let e = c.evaluate(&farm);
        assert!(!e.passed);
        assert_eq!(e.failures.len(), 2, "{:?}", e.failures);
        assert!(e.failures[0].contains("organic"), "{:?}", e.failures);
        assert!(e.failures[1].contains("300 km is farther than the maximum of 250 km"));
    }

    #[test]
    fn json_and_binary_forms_agree() {
        let c = sample();
        let json = serde_json::to_string(&c).unwrap();
        let back: Criteria = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.hash(), c.hash());
        let bytes = encoding::encode(&c, Criteria::MAX_SIZE).unwrap();
        assert_eq!(
            encoding::decode::<Criteria>(&bytes, Criteria::MAX_SIZE).unwrap(),
            c
        );
    }

    #[test]
    fn hostile_nesting_is_refused_not_a_crash() {
        // 10,000 nested `not`s in the binary encoding: variant tag 7 repeated.
        let mut bytes = vec![1u8, b'x', 1, 0];
        bytes.extend(std::iter::repeat_n(7u8, 10_000));
        bytes.extend_from_slice(&[2, 5]);
        assert!(encoding::decode::<Criteria>(&bytes, 64 * 1024).is_err());
        let mut deep = Rule::Label(tag("organic"));
        for _ in 0..20 {
            deep = Rule::Not(Box::new(deep));
        }
        let c = Criteria {
            name: "deep".into(),
            version: 1,
            local_distance_km: None,
            rule: deep,
        };
        assert!(matches!(c.validate(), Err(CriteriaError::TooComplex(_))));
    }

    #[test]
    fn validation_errors() {
        let mut c = sample();
        c.rule = Rule::All(vec![]);
        assert!(matches!(c.validate(), Err(CriteriaError::Empty(_))));
        c.rule = Rule::OriginIn(vec!["fr".into()]);
        assert!(matches!(c.validate(), Err(CriteriaError::Origin(_))));
    }

    pub(crate) fn arb_tag() -> impl Strategy<Value = Tag> {
        prop::sample::select(vec![
            "organic",
            "fair-trade",
            "animal-welfare",
            "agroecology",
            "local",
        ])
        .prop_map(tag)
    }

    pub(crate) fn arb_rule() -> impl Strategy<Value = Rule> {
        let leaf = prop_oneof![
            arb_tag().prop_map(Rule::Label),
            arb_tag().prop_map(Rule::Practice),
            prop::sample::select(vec![0u32, 50, 150, 300]).prop_map(Rule::MaxDistanceKm),
            prop::sample::select(vec![80u32, 100, 120]).prop_map(Rule::MinPriceFairnessPct),
            prop::collection::vec(prop::sample::select(vec!["FR", "BE", "ES"]), 1..3)
                .prop_map(|v| Rule::OriginIn(v.into_iter().map(String::from).collect())),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..4).prop_map(Rule::All),
                prop::collection::vec(inner.clone(), 1..4).prop_map(Rule::Any),
                inner.prop_map(|r| Rule::Not(Box::new(r))),
            ]
        })
    }

    pub(crate) fn arb_attributes() -> impl Strategy<Value = Attributes> {
        (
            prop::collection::btree_set(arb_tag(), 0..3),
            prop::option::of(prop::sample::select(vec![0u32, 50, 150, 300, 400])),
            prop::collection::btree_set(arb_tag(), 0..3),
            prop::option::of(prop::sample::select(vec![80u32, 99, 100, 120])),
            prop::option::of(prop::sample::select(vec!["FR", "BE", "ES"])),
        )
            .prop_map(
                |(labels, distance_km, practices, price, origin)| Attributes {
                    labels,
                    distance_km,
                    practices,
                    price_fairness_pct: price,
                    origin: origin.map(String::from),
                    evidence: BTreeMap::new(),
                },
            )
    }

    /// A plain reference evaluator, to check the explaining one against.
    fn reference(rule: &Rule, s: &Attributes) -> bool {
        match rule {
            Rule::Label(t) => s.labels.contains(t),
            Rule::Practice(t) => s.practices.contains(t),
            Rule::MaxDistanceKm(m) => s.distance_km.is_some_and(|d| d <= *m),
            Rule::MinPriceFairnessPct(m) => s.price_fairness_pct.is_some_and(|p| p >= *m),
            Rule::OriginIn(c) => s.origin.as_ref().is_some_and(|o| c.contains(o)),
            Rule::All(r) => r.iter().all(|r| reference(r, s)),
            Rule::Any(r) => r.iter().any(|r| reference(r, s)),
            Rule::Not(r) => !reference(r, s),
        }
    }

    proptest! {
        #[test]
        fn evaluation_is_deterministic_and_correct(rule in arb_rule(), s in arb_attributes()) {
            let c = Criteria { name: "p".into(), version: 1, local_distance_km: None, rule };
            let a = c.evaluate(&s);
            let b = c.clone().evaluate(&s.clone());
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.passed, reference(&c.rule, &s));
            prop_assert_eq!(a.passed, a.failures.is_empty());
            prop_assert_eq!(c.hash(), c.clone().hash());
        }
    }
}
