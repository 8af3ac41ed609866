//! Scenario files: what a test network does. See `scenarios/README.md`.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use caisse_protocol::{Amount, Period};
use serde::{Deserialize, Serialize};

/// A product category with its weight in purchases and its coverage rate.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryMix {
    /// Category name.
    pub name: String,
    /// Relative weight in purchase lines.
    pub weight: u32,
    /// Share of the line paid by the allocation.
    pub coverage_pct: u8,
}

/// A fault to inject.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// `kill-restart`, `partition` or `rogue`.
    pub kind: String,
    /// Which caisse (0-based).
    pub caisse: usize,
    /// During which month (1-based).
    pub month: u32,
    /// For partitions: how long the caisse is cut off.
    #[serde(default = "default_seconds")]
    pub seconds: u64,
}

fn default_seconds() -> u64 {
    3
}

/// A whole scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name, shown in the report.
    pub name: String,
    /// Number of caisses (node processes).
    pub caisses: usize,
    /// Members enrolled in each caisse.
    pub members_per_caisse: usize,
    /// Months simulated.
    pub months: u32,
    /// First month, YYYY-MM.
    pub start: Period,
    /// Purchases per member per month.
    pub purchases_per_member: u32,
    /// Monthly allocation per member.
    pub allocation: Amount,
    /// Draw incomes from a territory's published statistics (a key of
    /// `scenarios/data/territories.toml` or a territory file) instead of
    /// uniformly between `income_min` and `income_max`.
    #[serde(default)]
    pub territory: Option<String>,
    /// Lowest monthly income (uniformly distributed up to `income_max`).
    pub income_min: Amount,
    /// Highest monthly income.
    pub income_max: Amount,
    /// Subsidy per member per month (60% state, 40% local authority).
    pub subsidy_per_member: Amount,
    /// Producers per caisse, accredited by vote.
    pub producers_per_caisse: usize,
    /// Outlets per caisse, accredited by vote.
    pub outlets_per_caisse: usize,
    /// Share of producers holding the organic label, in percent.
    #[serde(default = "default_organic")]
    pub organic_share_pct: u32,
    /// Share of purchases made at another caisse's outlet, in percent.
    #[serde(default)]
    pub cross_caisse_pct: u32,
    /// Category mix.
    pub categories: Vec<CategoryMix>,
    /// Faults to inject.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// The network the nodes run on unless `--wan` says otherwise: `none`
    /// (loopback), `lan`, `national` or `rural` (see `testnet/src/wan.rs`).
    #[serde(default)]
    pub wan: Option<String>,
}

fn default_organic() -> u32 {
    70
}

impl Scenario {
    /// Load a built-in scenario by name, or a file.
    pub fn load(name_or_file: &str) -> Result<Scenario> {
        let text = match name_or_file {
            "demo" => include_str!("../../scenarios/demo.toml").to_owned(),
            "montpellier" => include_str!("../../scenarios/montpellier.toml").to_owned(),
            "federation-30" => include_str!("../../scenarios/federation-30.toml").to_owned(),
            "federation-100" => include_str!("../../scenarios/federation-100.toml").to_owned(),
            path => std::fs::read_to_string(Path::new(path)).with_context(|| {
                format!("{path:?} is neither a built-in scenario (demo, montpellier, federation-30, federation-100) nor a readable file")
            })?,
        };
        let s: Scenario =
            toml::from_str(&text).map_err(|e| anyhow!("scenario {name_or_file}: {e}"))?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<()> {
        if self.caisses == 0 || self.caisses > 128 {
            bail!("caisses must be 1 to 128");
        }
        if self.members_per_caisse == 0 || self.members_per_caisse > 20_000 {
            bail!("members_per_caisse must be 1 to 20,000");
        }
        if self.months == 0 || self.months > 24 {
            bail!("months must be 1 to 24");
        }
        if self.categories.is_empty() || self.categories.iter().all(|c| c.weight == 0) {
            bail!("give at least one category with a weight");
        }
        if self.producers_per_caisse == 0 || self.outlets_per_caisse == 0 {
            bail!("each caisse needs at least one producer and one outlet");
        }
        if self.income_max < self.income_min {
            bail!("income_max is below income_min");
        }
        if let Some(t) = &self.territory {
            caisse_testnet::research::territory::Territory::load(t, None)?;
        }
        if let Some(w) = &self.wan {
            crate::wan::Profile::by_name(w)?;
        }
        for f in &self.faults {
            if f.caisse >= self.caisses || f.month == 0 || f.month > self.months {
                bail!("fault {f:?} names a caisse or month outside the scenario");
            }
            if !["kill-restart", "partition", "rogue"].contains(&f.kind.as_str()) {
                bail!(
                    "fault kind {:?}: use kill-restart, partition or rogue",
                    f.kind
                );
            }
        }
        Ok(())
    }
}
