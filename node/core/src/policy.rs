//! The caisse's policy: how much each member receives, what happens to an
//! unspent balance, and how much each member contributes.
//!
//! Set at `caisse init` from the config file and changed later by the food
//! parliament. The computations here are pure.

use caisse_protocol::{Amount, AmountError, Day, Period};
use serde::{Deserialize, Serialize};

/// How the monthly allocation is computed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AllocationPolicy {
    /// The same amount for every member (Montpellier: EUR 100).
    PerPerson {
        /// Monthly amount.
        amount: Amount,
    },
    /// A base for the household plus an amount per extra member (Nantes:
    /// EUR 100 + EUR 50). The base goes to the household's first member.
    PerHousehold {
        /// Amount for the first member.
        base: Amount,
        /// Amount for each other member.
        per_extra_member: Amount,
    },
}

/// What happens to an unspent balance when the next allocation is issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Rollover {
    /// Unspent allocation carries over.
    CarryOver,
    /// Unspent allocation expires.
    Expire,
    /// Carries over, but the balance after the allocation is capped.
    Cap {
        /// The largest balance a member may hold.
        max: Amount,
    },
}

/// One income bracket of a contribution scale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bracket {
    /// Monthly income up to which this bracket applies (none: no upper bound).
    pub up_to_income: Option<Amount>,
    /// Monthly contribution in this bracket.
    pub contribution: Amount,
}

/// How a member's monthly contribution follows their income.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ContributionScale {
    /// Fixed levels by income bracket (Clermont-Ferrand's five levels).
    Brackets {
        /// Brackets in increasing income order; the last has no upper bound.
        brackets: Vec<Bracket>,
    },
    /// Linear between a minimum and a maximum (Montpellier: EUR 1 to 150).
    Linear {
        /// Contribution at or below `income_floor`.
        min: Amount,
        /// Contribution at or above `income_ceiling`.
        max: Amount,
        /// Income at which the minimum applies.
        income_floor: Amount,
        /// Income at which the maximum applies.
        income_ceiling: Amount,
    },
}

/// The caisse's whole policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Monthly allocation.
    pub allocation: AllocationPolicy,
    /// Unspent balance rule.
    pub rollover: Rollover,
    /// Contribution scale.
    pub contribution: ContributionScale,
    /// Target share of funding from member contributions, in percent
    /// (Gironde: 40); the rest from subsidies.
    pub target_contribution_share_pct: u8,
    /// Wrong PINs before a card locks.
    pub pin_attempts: u8,
    /// Minimum age of a member (adults only).
    pub minimum_age: u8,
    /// How the food parliament decides.
    #[serde(default)]
    pub parliament: ParliamentRules,
    /// Which other caisses' accreditations count here.
    #[serde(default)]
    pub recognition: Recognition,
    /// Offline floor: when a card's home caisse cannot be reached, this
    /// caisse accepts up to this much allocation per card and day at its own
    /// outlets, at its own risk, and forwards the purchases later. Zero: off.
    #[serde(default)]
    pub offline_floor: Amount,
    /// The centre of the caisse's territory, from which producers'
    /// distances are computed (their dossier gives their commune's centre).
    #[serde(default)]
    pub territory_centre: Option<caisse_protocol::producer::GeoPoint>,
}

/// How the food parliament decides: caisse parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParliamentRules {
    /// Share of active seats that must vote (yes, no or abstain), in percent.
    pub quorum_pct: u8,
    /// Share of yes among yes + no needed to pass, in percent (strictly above).
    pub threshold_pct: u8,
    /// Default voting window, in minutes.
    pub window_minutes: u32,
}

impl Default for ParliamentRules {
    fn default() -> ParliamentRules {
        ParliamentRules {
            quorum_pct: 50,
            threshold_pct: 50,
            window_minutes: 7 * 24 * 60,
        }
    }
}

/// Which other caisses' accreditations this caisse recognises.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecognitionPolicy {
    /// Only our own accreditations count.
    #[default]
    None,
    /// Accreditations by the caisses listed in `recognised`.
    Listed,
    /// Accreditations by any caisse whose published criteria include ours.
    CompatibleCriteria,
}

/// The caisse's recognition of its peers, decided by parliament.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recognition {
    /// The policy.
    pub policy: RecognitionPolicy,
    /// Caisses recognised by vote.
    pub recognised: Vec<caisse_protocol::CaisseId>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            allocation: AllocationPolicy::PerPerson {
                amount: Amount::from_cents(100_00),
            },
            rollover: Rollover::CarryOver,
            contribution: ContributionScale::Linear {
                min: Amount::from_cents(1_00),
                max: Amount::from_cents(150_00),
                income_floor: Amount::from_cents(800_00),
                income_ceiling: Amount::from_cents(4_000_00),
            },
            target_contribution_share_pct: 40,
            pin_attempts: 3,
            minimum_age: 18,
            parliament: ParliamentRules::default(),
            recognition: Recognition::default(),
            offline_floor: Amount::ZERO,
            territory_centre: None,
        }
    }
}

/// Why a policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A negative amount somewhere.
    #[error("policy amounts must not be negative")]
    Negative,
    /// Brackets not in increasing order or the last one bounded.
    #[error(
        "contribution brackets must be in increasing income order, and only the last may have no upper bound"
    )]
    Brackets,
    /// The linear scale is inverted.
    #[error("linear scale: need min <= max and income_floor < income_ceiling")]
    Linear,
    /// A percentage above 100.
    #[error("percentages (target contribution share, quorum, threshold) must be 0 to 100")]
    Share,
    /// No PIN attempts.
    #[error("pin_attempts must be at least 1")]
    PinAttempts,
}

impl Policy {
    /// Check the policy makes sense.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let amounts: Vec<Amount> = match &self.allocation {
            AllocationPolicy::PerPerson { amount } => vec![*amount],
            AllocationPolicy::PerHousehold {
                base,
                per_extra_member,
            } => vec![*base, *per_extra_member],
        };
        if amounts.iter().any(|a| a.is_negative()) {
            return Err(PolicyError::Negative);
        }
        if let Rollover::Cap { max } = self.rollover
            && max.is_negative()
        {
            return Err(PolicyError::Negative);
        }
        match &self.contribution {
            ContributionScale::Brackets { brackets } => {
                if brackets.is_empty() {
                    return Err(PolicyError::Brackets);
                }
                let mut last: Option<Amount> = None;
                for (i, b) in brackets.iter().enumerate() {
                    if b.contribution.is_negative() {
                        return Err(PolicyError::Negative);
                    }
                    let is_last = i.saturating_add(1) == brackets.len();
                    match b.up_to_income {
                        None if !is_last => return Err(PolicyError::Brackets),
                        Some(u) if last.is_some_and(|l| u <= l) => {
                            return Err(PolicyError::Brackets);
                        }
                        Some(u) => last = Some(u),
                        None => {}
                    }
                }
            }
            ContributionScale::Linear {
                min,
                max,
                income_floor,
                income_ceiling,
            } => {
                if min.is_negative() || max.is_negative() {
                    return Err(PolicyError::Negative);
                }
                if min > max || income_floor >= income_ceiling {
                    return Err(PolicyError::Linear);
                }
            }
        }
        if self.target_contribution_share_pct > 100 {
            return Err(PolicyError::Share);
        }
        if self.pin_attempts == 0 {
            return Err(PolicyError::PinAttempts);
        }
        if self.offline_floor.is_negative() {
            return Err(PolicyError::Negative);
        }
        if self.parliament.quorum_pct > 100 || self.parliament.threshold_pct > 100 {
            return Err(PolicyError::Share);
        }
        Ok(())
    }

    /// The contribution of a member with monthly `income` (unknown income
    /// pays the minimum: there is no means test), and the bracket index.
    pub fn contribution_for(&self, income: Option<Amount>) -> Result<(Amount, usize), AmountError> {
        match &self.contribution {
            ContributionScale::Brackets { brackets } => {
                let Some(income) = income else {
                    return Ok((brackets.first().map_or(Amount::ZERO, |b| b.contribution), 0));
                };
                let idx = brackets
                    .iter()
                    .position(|b| b.up_to_income.is_none_or(|u| income <= u))
                    .unwrap_or(brackets.len().saturating_sub(1));
                Ok((
                    brackets.get(idx).map_or(Amount::ZERO, |b| b.contribution),
                    idx,
                ))
            }
            ContributionScale::Linear {
                min,
                max,
                income_floor,
                income_ceiling,
            } => {
                let Some(income) = income else {
                    return Ok((*min, 0));
                };
                if income <= *income_floor {
                    return Ok((*min, 0));
                }
                if income >= *income_ceiling {
                    return Ok((*max, 9));
                }
                let span = income_ceiling.checked_sub(*income_floor)?;
                let above = income.checked_sub(*income_floor)?;
                let extra = max
                    .checked_sub(*min)?
                    .mul_div_floor(above.cents(), span.cents())?;
                // Deciles of the scale serve as brackets for reporting.
                let decile = above.mul_div_floor(10, span.cents())?.cents();
                Ok((
                    min.checked_add(extra)?,
                    usize::try_from(decile).unwrap_or(0),
                ))
            }
        }
    }

    /// The full-month allocation of a member, given whether they are the
    /// first member of their household.
    pub fn monthly_allocation(&self, first_in_household: bool) -> Amount {
        match &self.allocation {
            AllocationPolicy::PerPerson { amount } => *amount,
            AllocationPolicy::PerHousehold {
                base,
                per_extra_member,
            } => {
                if first_in_household {
                    *base
                } else {
                    *per_extra_member
                }
            }
        }
    }
}

/// Days of `period` a member enrolled on `joined` and leaving on `left`
/// (exclusive: the day they leave is not counted) is a member.
pub fn days_active(period: Period, joined: Day, left: Option<Day>) -> u32 {
    let first = period.first_day().days();
    let end = first.saturating_add(u32::from(period.days())); // exclusive
    let from = joined.days().max(first);
    let to = left.map_or(end, |l| l.days().min(end));
    to.saturating_sub(from)
}

/// `monthly` pro rata for `days` of a month of `days_in_month` days, rounded down.
pub fn pro_rata(monthly: Amount, days: u32, days_in_month: u8) -> Result<Amount, AmountError> {
    if days >= u32::from(days_in_month) {
        return Ok(monthly);
    }
    monthly.mul_div_floor(i64::from(days), i64::from(days_in_month))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(c: i64) -> Amount {
        Amount::from_cents(c * 100)
    }

    #[test]
    fn linear_scale_like_montpellier() {
        let p = Policy::default();
        assert_eq!(p.contribution_for(None).unwrap().0, eur(1));
        assert_eq!(p.contribution_for(Some(eur(500))).unwrap().0, eur(1));
        assert_eq!(p.contribution_for(Some(eur(10_000))).unwrap().0, eur(150));
        // Halfway between 800 and 4000: 1 + 149/2 = 75.50
        assert_eq!(
            p.contribution_for(Some(eur(2400))).unwrap().0,
            Amount::from_cents(75_50)
        );
    }

    #[test]
    fn brackets() {
        let p = Policy {
            contribution: ContributionScale::Brackets {
                brackets: vec![
                    Bracket {
                        up_to_income: Some(eur(1000)),
                        contribution: eur(5),
                    },
                    Bracket {
                        up_to_income: Some(eur(2000)),
                        contribution: eur(30),
                    },
                    Bracket {
                        up_to_income: None,
                        contribution: eur(80),
                    },
                ],
            },
            ..Policy::default()
        };
        p.validate().unwrap();
        assert_eq!(p.contribution_for(Some(eur(1000))).unwrap(), (eur(5), 0));
        assert_eq!(p.contribution_for(Some(eur(1500))).unwrap(), (eur(30), 1));
        assert_eq!(p.contribution_for(Some(eur(9000))).unwrap(), (eur(80), 2));
    }

    #[test]
    fn pro_rata_days() {
        let march: Period = "2026-03".parse().unwrap();
        let joined: Day = "2026-03-17".parse().unwrap();
        assert_eq!(days_active(march, joined, None), 15);
        assert_eq!(
            pro_rata(eur(100), 15, 31).unwrap(),
            Amount::from_cents(48_38)
        );
        let before: Day = "2026-01-01".parse().unwrap();
        assert_eq!(days_active(march, before, None), 31);
        let left: Day = "2026-03-11".parse().unwrap();
        assert_eq!(days_active(march, before, Some(left)), 10);
        assert_eq!(days_active(march, before, Some(before)), 0);
    }

    #[test]
    fn bad_policies_are_refused() {
        let p = Policy {
            target_contribution_share_pct: 120,
            ..Policy::default()
        };
        assert_eq!(p.validate(), Err(PolicyError::Share));
        let p = Policy {
            contribution: ContributionScale::Brackets {
                brackets: vec![
                    Bracket {
                        up_to_income: None,
                        contribution: eur(5),
                    },
                    Bracket {
                        up_to_income: Some(eur(10)),
                        contribution: eur(5),
                    },
                ],
            },
            ..Policy::default()
        };
        assert_eq!(p.validate(), Err(PolicyError::Brackets));
    }
}
