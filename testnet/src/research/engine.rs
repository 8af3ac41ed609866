//! One pilot run: a territory's population drawn from its statistics,
//! participants recruited from it, a caisse run for some months on the
//! real core (the code `caisse node` runs, over an in-memory store, in one
//! thread, with a simulated clock), members shopping by the behavioural
//! rules, and the measures read back from the caisse's own evaluation
//! reports. The same pilot and seed give the same measures, bit for bit.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use caisse_core::caisse::{Caisse, CaisseError, EnrollInput, PurchaseInput};
use caisse_core::command::{Command, Reply};
use caisse_core::ledger::SubsidySource;
use caisse_core::parliament::{Choice, ProposalKind, SeatKind, SplitMix64};
use caisse_core::policy::{AllocationPolicy, ContributionScale, Policy};
use caisse_core::report::{Export, Report, export_of, report_of};
use caisse_core::store::{MemStore, Store};
use caisse_protocol::criteria::{Attributes, Criteria};
use caisse_protocol::messages::{PurchaseLine, ScopeItem, Subject};
use caisse_protocol::{
    Amount, CardId, Category, Day, FederationId, MemberId, OutletId, ProducerId, PurchaseId,
    SecretKey,
};
use serde::Serialize;
use serde_json::json;

use super::pilot::Pilot;
use super::territory::{Household, Territory, sample_quantile, uniform};

/// The 2013 poverty line INSEE uses (60% of the national median): EUR 1,000
/// a month, EUR 12,000 a year. Used only to describe who took part.
pub const POVERTY_LINE_2013: f64 = 12_000.0;

/// One decile of the territory sample against the source and the model.
#[derive(Clone, Debug, Serialize)]
pub struct DecileCheck {
    /// Which decile (1 to 9).
    pub decile: u8,
    /// The published value, where the source file has it.
    pub source: Option<f64>,
    /// The model's value.
    pub model: f64,
    /// The sample's value.
    pub sample: f64,
    /// The sampling standard error of the sample decile.
    pub standard_error: f64,
    /// (sample - source, or model) / standard error.
    pub gap_in_standard_errors: f64,
}

/// What one run produced.
#[derive(Clone, Debug, Serialize)]
pub struct RunOutput {
    /// The pilot's name.
    pub pilot: String,
    /// The seed.
    pub seed: u64,
    /// Measures by name (the rows of `measures.csv`).
    pub measures: BTreeMap<String, f64>,
    /// The territory sample's deciles.
    pub deciles: Vec<DecileCheck>,
    /// The territory.
    pub territory: Territory,
    /// The caisse's own evaluation report of each month.
    pub reports: Vec<Report>,
    /// The anonymised export of each month.
    #[serde(skip)]
    pub exports: Vec<Export>,
}

struct Member {
    id: MemberId,
    card: CardId,
    /// Percentile of the household's income in the territory.
    percentile: f64,
    /// Full-month allocation.
    monthly: Amount,
    balance: Amount,
    x: f64,
    y: f64,
}

struct Outlet {
    id: OutletId,
    preference: f64,
    x: f64,
    y: f64,
    /// Producers stocked per category index: (producer, organic, price index).
    stock: Vec<Vec<(ProducerId, bool, f64)>>,
}

struct Run<'a> {
    pilot: &'a Pilot,
    caisse: Caisse,
    store: Arc<MemStore>,
    rng: SplitMix64,
    now: u64,
    purchase_seq: u64,
}

fn unix(day: Day) -> u64 {
    u64::from(day.days()) * 86_400
}

fn pick_weighted(rng: &mut SplitMix64, weights: &[f64]) -> Option<usize> {
    let total: f64 = weights.iter().filter(|w| w.is_finite()).sum();
    if total <= 0.0 {
        return None;
    }
    let mut r = uniform(rng) * total;
    for (i, w) in weights.iter().enumerate() {
        if r < *w {
            return Some(i);
        }
        r -= w;
    }
    weights.iter().rposition(|w| *w > 0.0)
}

fn point_in_disc(rng: &mut SplitMix64, radius: f64) -> (f64, f64) {
    let r = radius * uniform(rng).sqrt();
    let a = 2.0 * std::f64::consts::PI * uniform(rng);
    (r * a.cos(), r * a.sin())
}

fn euros(a: Amount) -> f64 {
    a.cents() as f64 / 100.0
}

impl Run<'_> {
    fn exec(&mut self, cmd: Command) -> Result<Reply, CaisseError> {
        let r = self.caisse.execute(cmd, self.now);
        if let Some(ops) = self.caisse.take_batch() {
            self.store
                .apply(&ops)
                .map_err(|e| CaisseError::Conflict(format!("in-memory store: {e}")))?;
        }
        r
    }

    fn must(&mut self, what: &str, cmd: Command) -> Result<Reply> {
        self.exec(cmd)
            .map_err(|e| anyhow!("{}: {what}: {e}", self.pilot.name))
    }

    /// Put a proposal to the two seats, vote yes, close. `Ok(false)` when
    /// the caisse refused the proposal (a producer that fails the criteria).
    fn pass(&mut self, seats: &[u32], title: &str, kind: ProposalKind) -> Result<bool> {
        let p = match self.exec(Command::Propose {
            title: title.into(),
            kind,
            window_minutes: None,
        }) {
            Ok(Reply::Proposal(p)) => p,
            Ok(other) => bail!("proposal {title}: unexpected reply {}", other.kind()),
            Err(CaisseError::Conflict(_)) => return Ok(false),
            Err(e) => bail!("proposal {title}: {e}"),
        };
        for seat in seats {
            self.must(
                "vote",
                Command::Vote {
                    proposal: p.id,
                    seat: *seat,
                    choice: Choice::Yes,
                },
            )?;
        }
        match self.must("close", Command::CloseProposal { proposal: p.id })? {
            Reply::Proposal(p) if p.outcome.as_ref().is_some_and(|o| o.passed) => Ok(true),
            other => bail!("proposal {title} did not pass: {}", other.kind()),
        }
    }
}

/// Recruit the participating households from the territory sample.
fn recruit(pilot: &Pilot, sample: &[Household], rng: &mut SplitMix64) -> Result<Vec<usize>> {
    let n = pilot.participation.households;
    if n > sample.len() / 2 {
        bail!(
            "{} households take part but the territory sample has only {}: raise territory_sample",
            n,
            sample.len()
        );
    }
    let below = pilot.participation.low_income_below_pct / 100.0;
    let mut low: Vec<usize> = (0..sample.len())
        .filter(|i| sample[*i].percentile < below)
        .collect();
    let mut all: Vec<usize> = (0..sample.len()).collect();
    let shuffle = |v: &mut Vec<usize>, rng: &mut SplitMix64| {
        for i in (1..v.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    };
    shuffle(&mut low, rng);
    shuffle(&mut all, rng);
    let want_low = ((n as f64) * pilot.participation.low_income_share_pct / 100.0).round() as usize;
    let mut chosen: Vec<usize> = low.into_iter().take(want_low.min(n)).collect();
    let mut taken = vec![false; sample.len()];
    for i in &chosen {
        taken[*i] = true;
    }
    for i in all {
        if chosen.len() >= n {
            break;
        }
        if !taken[i] {
            taken[i] = true;
            chosen.push(i);
        }
    }
    Ok(chosen)
}

fn decile_checks(t: &Territory, sample: &[Household]) -> Vec<DecileCheck> {
    let mut nv: Vec<f64> = sample.iter().map(|h| h.niveau_de_vie).collect();
    (1..=9u8)
        .map(|d| {
            let p = f64::from(d) / 10.0;
            let source = match d {
                1 => Some(t.d1),
                5 => Some(t.median),
                9 => Some(t.d9),
                _ => None,
            };
            let model = t.quantile(p);
            let s = sample_quantile(&mut nv, p);
            let se = t.quantile_standard_error(p, sample.len());
            DecileCheck {
                decile: d,
                source,
                model,
                sample: s,
                standard_error: se,
                gap_in_standard_errors: (s - source.unwrap_or(model)) / se,
            }
        })
        .collect()
}

/// Run `pilot` under `seed`.
pub fn run(pilot: &Pilot, seed: u64) -> Result<RunOutput> {
    let territory = Territory::load(&pilot.territory, pilot.dir.as_deref())?;
    let sample = territory.draw(pilot.territory_sample, seed);
    let deciles = decile_checks(&territory, &sample);
    let mut rng = SplitMix64(seed ^ 0xCA15_5E00_0000_0001);
    let chosen = recruit(pilot, &sample, &mut rng)?;

    let whole = pilot.participation.whole_households;
    let policy = Policy {
        allocation: match pilot.allocation_per_extra_member {
            Some(extra) => AllocationPolicy::PerHousehold {
                base: pilot.allocation,
                per_extra_member: extra,
            },
            None => AllocationPolicy::PerPerson {
                amount: pilot.allocation,
            },
        },
        contribution: ContributionScale::Linear {
            min: pilot.contribution.min,
            max: pilot.contribution.max,
            income_floor: pilot.contribution.income_floor,
            income_ceiling: pilot.contribution.income_ceiling,
        },
        minimum_age: if whole { 0 } else { 18 },
        ..Policy::default()
    };
    policy
        .validate()
        .map_err(|e| anyhow!("pilot {}: policy: {e}", pilot.name))?;
    let start = pilot.start.first_day();
    let mut key = [0u8; 32];
    let mut krng = SplitMix64(seed ^ 0x5EC2_E700);
    for c in key.chunks_mut(8) {
        c.copy_from_slice(&krng.next_u64().to_le_bytes());
    }
    let store = Arc::new(MemStore::new());
    caisse_core::caisse::write_initial_state(
        &*store,
        &SecretKey::from_bytes(key),
        &pilot.name,
        &territory.name,
        &policy,
        start,
    )
    .context("initial state")?;
    let mut r2 = SplitMix64(seed ^ 0xA11_0CA7E);
    let random = Box::new(move || {
        let mut b = [0u8; 32];
        for c in b.chunks_mut(8) {
            c.copy_from_slice(&r2.next_u64().to_le_bytes());
        }
        b
    });
    let caisse = Caisse::load(
        store.clone(),
        SecretKey::from_bytes(key),
        FederationId::new("research")?,
        random,
    )
    .context("loading the caisse")?;
    let mut run = Run {
        pilot,
        caisse,
        store: store.clone(),
        rng,
        now: unix(start) + 8 * 3600,
        purchase_seq: 0,
    };

    // Participants.
    let b = &pilot.behaviour;
    let start_year = pilot.start.year();
    let mut members: Vec<Member> = Vec::new();
    let mut contributors: Vec<MemberId> = Vec::new();
    let mut below_line = 0usize;
    for (hi, &si) in chosen.iter().enumerate() {
        let h = &sample[si];
        if h.niveau_de_vie < POVERTY_LINE_2013 {
            below_line += 1;
        }
        let income = match pilot.contribution.basis.as_str() {
            "household" => h.monthly_income(),
            _ => h.niveau_de_vie / 12.0,
        };
        let income = Amount::from_cents((income * 100.0).round() as i64);
        let (x, y) = point_in_disc(&mut run.rng, b.radius_km);
        let persons = if whole { h.size } else { 1 };
        let mut household = None;
        for k in 0..persons {
            let adult = k < h.adults;
            let birth = if adult {
                start_year - 25 - run.rng.below(50) as u16
            } else {
                start_year - 1 - run.rng.below(13) as u16
            };
            let e = match run.must(
                "enrol",
                Command::Enroll(EnrollInput {
                    name: format!("Participant {hi}-{k}"),
                    residence: territory.name.clone(),
                    birth_year: Some(birth),
                    income: (k == 0).then_some(income),
                    household,
                    new_household: whole && k == 0,
                    joined: Some(start),
                    pin: None,
                }),
            )? {
                Reply::Enrolled(e) => e,
                other => bail!("enrol: unexpected reply {}", other.kind()),
            };
            if whole && k == 0 {
                household = e.household;
            }
            if k == 0 {
                contributors.push(e.member);
            }
            members.push(Member {
                id: e.member,
                card: e.card,
                percentile: h.percentile,
                monthly: policy.monthly_allocation(k == 0),
                balance: Amount::ZERO,
                x,
                y,
            });
        }
    }

    // The parliament: two citizen seats, the criteria, then accreditations.
    let mut seats = Vec::new();
    for m in members.iter().take(2).map(|m| m.id).collect::<Vec<_>>() {
        match run.must(
            "seat",
            Command::AddSeat {
                kind: SeatKind::Citizen,
                member: Some(m),
                holder: None,
            },
        )? {
            Reply::Seat(s) => seats.push(s.id),
            other => bail!("seat: unexpected reply {}", other.kind()),
        }
    }
    let criteria: Criteria = serde_json::from_value(json!({
        "name": format!("Critères {}", pilot.name), "version": 1,
        "local_distance_km": pilot.local_distance_km, "rule": pilot.criteria,
    }))
    .map_err(|e| anyhow!("pilot {}: criteria: {e}", pilot.name))?;
    run.pass(&seats, "criteria", ProposalKind::Criteria(criteria))?;

    let cats: Vec<Category> = pilot
        .categories
        .iter()
        .map(|c| Category::new(&c.name).map_err(|e| anyhow!("category {}: {e}", c.name)))
        .collect::<Result<_>>()?;
    let until = start.plus(pilot.months * 31 + 400);
    let pr = &pilot.producers;
    // (producer, category indices, organic, price index) of accredited producers.
    let mut accredited: Vec<(ProducerId, Vec<usize>, bool, f64)> = Vec::new();
    let mut refused = 0u64;
    for p in 0..pr.candidates {
        let organic = uniform(&mut run.rng) * 100.0 < pr.organic_pct;
        let agro = !organic && uniform(&mut run.rng) * 100.0 < pr.agroecology_pct;
        let distance = 5 + run.rng.below(u64::from(pr.max_distance_km.max(6) - 5));
        let mut mine = vec![run.rng.below(cats.len() as u64) as usize];
        if run.rng.below(3) == 0 {
            let other = run.rng.below(cats.len() as u64) as usize;
            if !mine.contains(&other) {
                mine.push(other);
            }
        }
        let attributes: Attributes = serde_json::from_value(json!({
            "labels": if organic { vec!["organic"] } else { vec![] },
            "practices": if agro { vec!["agroecology"] } else { vec![] },
            "distance_km": distance, "price_fairness_pct": 100, "origin": "FR",
            "evidence": {}
        }))?;
        let id = match run.must(
            "producer",
            Command::RegisterProducer {
                name: format!("Ferme {p}"),
                attributes,
            },
        )? {
            Reply::Producer(r) => r.id,
            other => bail!("producer: unexpected reply {}", other.kind()),
        };
        let scope = mine
            .iter()
            .map(|i| ScopeItem {
                category: cats[*i].clone(),
                coverage_pct: pilot.categories[*i].coverage_pct,
            })
            .collect();
        let kind = ProposalKind::Accredit {
            subject: Subject::Producer(id),
            scope,
            valid_from: start,
            valid_until: until,
        };
        if run.pass(&seats, &format!("Ferme {p}"), kind)? {
            let price = if organic {
                pr.organic_price_pct
            } else if agro {
                pr.agroecology_price_pct
            } else {
                100.0
            } / 100.0;
            accredited.push((id, mine, organic, price));
        } else {
            refused += 1;
        }
    }
    let full_scope: Vec<ScopeItem> = cats
        .iter()
        .zip(&pilot.categories)
        .map(|(c, k)| ScopeItem {
            category: c.clone(),
            coverage_pct: k.coverage_pct,
        })
        .collect();
    let mut outlets: Vec<Outlet> = Vec::new();
    for kind in &pilot.outlets {
        for o in 0..kind.count {
            let name = format!("{} {o}", kind.kind);
            let id = match run.must(
                "outlet",
                Command::RegisterOutlet {
                    name: name.clone(),
                    categories: full_scope
                        .iter()
                        .map(|s| (s.category.clone(), s.coverage_pct))
                        .collect(),
                },
            )? {
                Reply::Outlet(o) => o.outlet,
                other => bail!("outlet: unexpected reply {}", other.kind()),
            };
            run.pass(
                &seats,
                &name,
                ProposalKind::Accredit {
                    subject: Subject::Outlet(id),
                    scope: full_scope.clone(),
                    valid_from: start,
                    valid_until: until,
                },
            )?;
            let (x, y) = point_in_disc(&mut run.rng, b.radius_km);
            let mut stock = Vec::new();
            for ci in 0..cats.len() {
                let mut offer: Vec<(ProducerId, bool, f64)> = accredited
                    .iter()
                    .filter(|a| a.1.contains(&ci))
                    .map(|a| (a.0, a.2, a.3))
                    .collect();
                for i in (1..offer.len()).rev() {
                    let j = run.rng.below(i as u64 + 1) as usize;
                    offer.swap(i, j);
                }
                offer.truncate(kind.producers_per_category);
                stock.push(offer);
            }
            outlets.push(Outlet {
                id,
                preference: kind.preference,
                x,
                y,
                stock,
            });
        }
    }

    // The months.
    let mut reports = Vec::new();
    let mut exports = Vec::new();
    let mut declined: u64 = 0;
    let mut period = pilot.start;
    for _ in 0..pilot.months {
        run.now = unix(period.first_day()) + 6 * 3600;
        let issued = run
            .caisse
            .issue_allocations(period, run.now)
            .map_err(|e| anyhow!("allocation {period}: {e}"))?;
        if let Some(ops) = run.caisse.take_batch() {
            store.apply(&ops)?;
        }
        if issued.issued == 0 {
            bail!("allocation {period} issued nothing");
        }
        for m in &mut members {
            m.balance = match policy.rollover {
                caisse_core::policy::Rollover::CarryOver => m.balance.checked_add(m.monthly)?,
                _ => m.monthly,
            };
        }
        for m in contributors.clone() {
            run.must(
                "contribution",
                Command::Contribution {
                    member: m,
                    period,
                    amount: None,
                },
            )?;
        }
        let total = pilot
            .subsidy_per_member
            .checked_mul(i64::try_from(members.len())?)?;
        let state = total.mul_div_floor(i64::from(pilot.state_share_pct), 100)?;
        for (source, amount) in [
            (SubsidySource::State, state),
            (SubsidySource::LocalAuthority, total.checked_sub(state)?),
        ] {
            if amount > Amount::ZERO {
                run.must(
                    "subsidy",
                    Command::Subsidy {
                        source,
                        amount,
                        period,
                        key: format!("{source}-{period}"),
                    },
                )?;
            }
        }
        let trips = b.trips_per_month.max(1);
        for trip in 0..trips {
            let day = period
                .first_day()
                .plus(1 + trip * (u32::from(period.days()) - 3) / trips);
            run.now = unix(day) + 9 * 3600;
            for member in &mut members {
                run.now += 1;
                if shop(&mut run, member, &outlets, trip, trips)? == Shopped::Declined {
                    declined += 1;
                }
            }
        }
        let report = report_of(&*store, period).map_err(|e| anyhow!("report {period}: {e}"))?;
        reports.push(report);
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&(seed ^ u64::from(period.month())).to_le_bytes());
        exports.push(export_of(&*store, period, secret).map_err(|e| anyhow!("export: {e}"))?);
        period = period
            .next()
            .ok_or_else(|| anyhow!("{period} has no next month"))?;
    }
    let check = run
        .caisse
        .check()
        .map_err(|e| anyhow!("ledger check: {e}"))?;
    if !check.findings.is_empty() {
        bail!("the ledger does not audit clean: {:?}", check.findings);
    }

    let months = f64::from(pilot.months);
    let sum = |f: &dyn Fn(&Report) -> Amount| -> f64 { reports.iter().map(|r| euros(f(r))).sum() };
    let allocations = sum(&|r| r.allocations.total);
    let contributions = sum(&|r| r.contributions.total);
    let subsidies = sum(&|r| r.subsidies_total);
    let spent = sum(&|r| r.spending.total);
    let alloc_part = sum(&|r| r.spending.allocation_part);
    let member_part = sum(&|r| r.spending.member_part);
    let weighted = |f: &dyn Fn(&Report) -> u32| -> f64 {
        let w: f64 = reports
            .iter()
            .map(|r| euros(r.spending.total) * f64::from(f(r)))
            .sum();
        if spent > 0.0 { w / spent / 100.0 } else { 0.0 }
    };
    let contributions_count: u64 = reports.iter().map(|r| r.contributions.count).sum();
    let purchases: u64 = reports.iter().map(|r| r.spending.purchases).sum();
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: f64| {
        m.insert(k.to_owned(), (v * 10_000.0).round() / 10_000.0);
    };
    put("participants", chosen.len() as f64);
    put("members", members.len() as f64);
    put(
        "participants_below_poverty_line_pct",
        100.0 * below_line as f64 / chosen.len() as f64,
    );
    put("allocations_eur_per_month", allocations / months);
    put("contributions_eur_per_month", contributions / months);
    put("subsidies_eur_per_month", subsidies / months);
    put(
        "average_contribution_eur",
        if contributions_count > 0 {
            contributions / contributions_count as f64
        } else {
            0.0
        },
    );
    put(
        "contribution_share_pct",
        if contributions + subsidies > 0.0 {
            100.0 * contributions / (contributions + subsidies)
        } else {
            0.0
        },
    );
    put(
        "budget_balance_eur_per_month",
        (contributions + subsidies - allocations) / months,
    );
    put(
        "budget_balance_pct_of_allocations",
        if allocations > 0.0 {
            100.0 * (contributions + subsidies - allocations) / allocations
        } else {
            0.0
        },
    );
    put(
        "allocation_used_pct",
        if allocations > 0.0 {
            100.0 * alloc_part / allocations
        } else {
            0.0
        },
    );
    put("member_part_eur_per_month", member_part / months);
    put("spending_eur_per_month", spent / months);
    put("organic_share_pct", weighted(&|r| r.spending.organic_bp));
    put("fresh_share_pct", weighted(&|r| r.spending.fresh_bp));
    put("local_share_pct", weighted(&|r| r.spending.local_bp));
    put("outlets", outlets.len() as f64);
    put("producers_accredited", accredited.len() as f64);
    put("producers_refused", refused as f64);
    put("purchases_per_month", purchases as f64 / months);
    put("declined_purchases", declined as f64);
    Ok(RunOutput {
        pilot: pilot.name.clone(),
        seed,
        measures: m,
        deciles,
        territory,
        reports,
        exports,
    })
}

#[derive(PartialEq, Eq)]
enum Shopped {
    Nothing,
    Bought,
    Declined,
}

/// One shopping trip of one member, by the rules of `docs/RESEARCH.md`.
fn shop(
    run: &mut Run<'_>,
    m: &mut Member,
    outlets: &[Outlet],
    trip: u32,
    trips: u32,
) -> Result<Shopped> {
    let p = run.pilot;
    let b = &p.behaviour;
    let pos = m.percentile;
    // Rule 1: the share of the month's allocation this member uses, spread
    // over the trips; never more than the balance.
    let use_share = (b.use_low_pct + (b.use_high_pct - b.use_low_pct) * pos) / 100.0;
    let target = euros(m.monthly) * use_share.clamp(0.0, 1.0) / f64::from(trips);
    let mut budget = Amount::from_cents((target * 100.0).round() as i64).min(m.balance);
    if trip + 1 == trips {
        // The last trip of the month spends what this member meant to spend.
        let left = euros(m.balance) - euros(m.monthly) * (1.0 - use_share.clamp(0.0, 1.0));
        if left > euros(budget) {
            budget = Amount::from_cents((left * 100.0).round() as i64).min(m.balance);
        }
    }
    if budget < Amount::from_cents(1_00) {
        return Ok(Shopped::Nothing);
    }
    // Rule 2: the outlet, by a logit on kind preference and distance.
    let weights: Vec<f64> = outlets
        .iter()
        .map(|o| {
            let d = ((o.x - m.x).powi(2) + (o.y - m.y).powi(2)).sqrt();
            (o.preference - d / b.distance_decay_km.max(0.1)).exp()
        })
        .collect();
    let Some(oi) = pick_weighted(&mut run.rng, &weights) else {
        return Ok(Shopped::Nothing);
    };
    let outlet = &outlets[oi];
    // Rule 3: categories by basket weight, less of what members pay part of.
    let cat_weights: Vec<f64> = p
        .categories
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if c.coverage_pct == 0 || outlet.stock[i].is_empty() {
                0.0
            } else {
                c.weight * (f64::from(c.coverage_pct) / 100.0).powf(b.coverage_elasticity)
            }
        })
        .collect();
    let n_lines = 1 + run.rng.below(3) as usize;
    let share = budget.cents() / n_lines as i64;
    let mut lines = Vec::new();
    let mut left = budget.cents();
    for li in 0..n_lines {
        let Some(ci) = pick_weighted(&mut run.rng, &cat_weights) else {
            break;
        };
        // Rule 4: the product, by a logit on organic preference and price.
        let sens =
            b.price_sensitivity_low + (b.price_sensitivity_high - b.price_sensitivity_low) * pos;
        let offer = &outlet.stock[ci];
        let pw: Vec<f64> = offer
            .iter()
            .map(|(_, organic, price)| {
                (if *organic { b.organic_preference } else { 0.0 } - sens * (price - 1.0)).exp()
            })
            .collect();
        let Some(pi) = pick_weighted(&mut run.rng, &pw) else {
            continue;
        };
        let alloc_cents = if li + 1 == n_lines { left } else { share };
        left -= alloc_cents;
        let cov = i64::from(p.categories[ci].coverage_pct);
        // The line's price such that the allocation pays about `alloc_cents`.
        let amount = (alloc_cents * 100 / cov).max(1);
        lines.push(PurchaseLine {
            category: Category::new(&p.categories[ci].name)
                .map_err(|e| anyhow!("category: {e}"))?,
            producer: Some(offer[pi].0),
            amount: Amount::from_cents(amount),
        });
    }
    if lines.is_empty() {
        return Ok(Shopped::Nothing);
    }
    run.purchase_seq += 1;
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&run.purchase_seq.to_le_bytes());
    id[8..].copy_from_slice(&run.rng.next_u64().to_le_bytes());
    match run.exec(Command::Purchase(PurchaseInput {
        id: PurchaseId::from_bytes(id),
        card: m.card,
        outlet: outlet.id,
        lines,
        pin: None,
    })) {
        Ok(Reply::Receipt(r)) => {
            m.balance = r.balance_after;
            Ok(Shopped::Bought)
        }
        Ok(other) => bail!("purchase: unexpected reply {}", other.kind()),
        Err(_) => Ok(Shopped::Declined),
    }
}
