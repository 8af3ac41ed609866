//! Money: integer euro cents with checked arithmetic.
//!
//! Every amount of money in the federation is an [`Amount`]. Arithmetic that
//! would overflow returns an error instead of wrapping or panicking, and
//! amounts are parsed from and shown as `12.50`-style decimal strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An amount of money in euro cents.
///
/// Signed so that net positions and ledger postings can be expressed; user
/// input is parsed as non-negative only (see [`Amount::from_str`]).
///
/// In human-readable formats (JSON, TOML) an amount is the string `"12.50"`
/// (negative ones `"-3.00"`), so no reader ever sees a float; in the binary
/// wire encoding it is the integer number of cents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i64);

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            Amount::parse_signed(&text).map_err(serde::de::Error::custom)
        } else {
            i64::deserialize(d).map(Amount)
        }
    }
}

/// Why an amount could not be parsed or computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmountError {
    /// The result does not fit in the range of an amount.
    #[error("amount overflow: the result is out of range")]
    Overflow,
    /// The text was empty.
    #[error("empty amount: write euros like 12.50")]
    Empty,
    /// A minus sign was given where only a non-negative amount is allowed.
    #[error("negative amount {0:?}: amounts must be zero or more")]
    Negative(String),
    /// More than two digits after the decimal point.
    #[error("too many decimals in {0:?}: at most 2 (cents), e.g. 12.34")]
    TooManyDecimals(String),
    /// Anything that is not digits with an optional decimal point.
    #[error("not an amount: {0:?}; write euros like 12 or 12.50")]
    Invalid(String),
    /// A percentage above 100.
    #[error("percentage {0} is above 100")]
    Percentage(u8),
}

impl Amount {
    /// Zero euros.
    pub const ZERO: Amount = Amount(0);
    /// The largest representable amount.
    pub const MAX: Amount = Amount(i64::MAX);

    /// An amount of `cents` euro cents.
    pub const fn from_cents(cents: i64) -> Amount {
        Amount(cents)
    }

    /// Whole euros, failing on overflow.
    pub fn from_euros(euros: i64) -> Result<Amount, AmountError> {
        euros
            .checked_mul(100)
            .map(Amount)
            .ok_or(AmountError::Overflow)
    }

    /// The amount in cents.
    pub const fn cents(self) -> i64 {
        self.0
    }

    /// True for amounts below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// True for exactly zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `self + other`, or an error on overflow.
    pub fn checked_add(self, other: Amount) -> Result<Amount, AmountError> {
        self.0
            .checked_add(other.0)
            .map(Amount)
            .ok_or(AmountError::Overflow)
    }

    /// `self - other`, or an error on overflow.
    pub fn checked_sub(self, other: Amount) -> Result<Amount, AmountError> {
        self.0
            .checked_sub(other.0)
            .map(Amount)
            .ok_or(AmountError::Overflow)
    }

    /// `-self`, or an error on overflow (for the most negative amount).
    pub fn checked_neg(self) -> Result<Amount, AmountError> {
        self.0
            .checked_neg()
            .map(Amount)
            .ok_or(AmountError::Overflow)
    }

    /// `self * factor`, or an error on overflow.
    pub fn checked_mul(self, factor: i64) -> Result<Amount, AmountError> {
        self.0
            .checked_mul(factor)
            .map(Amount)
            .ok_or(AmountError::Overflow)
    }

    /// The absolute value, or an error on overflow.
    pub fn checked_abs(self) -> Result<Amount, AmountError> {
        self.0
            .checked_abs()
            .map(Amount)
            .ok_or(AmountError::Overflow)
    }

    /// `self * numerator / denominator`, rounded toward zero.
    ///
    /// Used for pro rata allocations and linear contribution scales. The
    /// intermediate product is computed in 128 bits so it cannot overflow;
    /// a zero denominator or an out-of-range result is an error.
    pub fn mul_div_floor(self, numerator: i64, denominator: i64) -> Result<Amount, AmountError> {
        if denominator == 0 {
            return Err(AmountError::Overflow);
        }
        let product = i128::from(self.0)
            .checked_mul(i128::from(numerator))
            .ok_or(AmountError::Overflow)?;
        let quotient = product
            .checked_div(i128::from(denominator))
            .ok_or(AmountError::Overflow)?;
        i64::try_from(quotient)
            .map(Amount)
            .map_err(|_| AmountError::Overflow)
    }

    /// Split a purchase line into the part the allocation pays at `percent`
    /// coverage and the part left for the member.
    ///
    /// Rounding rule: the allocation part is rounded down to the cent, the
    /// member pays the rest, so the two parts always add up to the line
    /// exactly and the allocation never pays more than its share.
    pub fn split_coverage(self, percent: u8) -> Result<(Amount, Amount), AmountError> {
        if percent > 100 {
            return Err(AmountError::Percentage(percent));
        }
        let covered = self.mul_div_floor(i64::from(percent), 100)?;
        let rest = self.checked_sub(covered)?;
        Ok((covered, rest))
    }

    /// Parse an amount that may be negative (`-3.00`), for stored and
    /// exchanged values; user input goes through [`Amount::from_str`].
    pub fn parse_signed(text: &str) -> Result<Amount, AmountError> {
        match text.trim().strip_prefix('-') {
            Some(rest) => rest.parse::<Amount>()?.checked_neg(),
            None => text.parse(),
        }
    }

    /// Sum an iterator of amounts, failing on overflow.
    pub fn checked_sum<I: IntoIterator<Item = Amount>>(items: I) -> Result<Amount, AmountError> {
        items
            .into_iter()
            .try_fold(Amount::ZERO, |acc, a| acc.checked_add(a))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    /// Parse a non-negative euro amount: `12`, `12.5`, `12.50`, `0.07`.
    fn from_str(text: &str) -> Result<Amount, AmountError> {
        let s = text.trim();
        if s.is_empty() {
            return Err(AmountError::Empty);
        }
        if s.starts_with('-') {
            return Err(AmountError::Negative(s.to_owned()));
        }
        let (whole, frac) = match s.split_once('.') {
            Some((w, f)) => (w, f),
            None => (s, ""),
        };
        let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(frac) {
            return Err(AmountError::Invalid(s.to_owned()));
        }
        if s.contains('.') && frac.is_empty() {
            return Err(AmountError::Invalid(s.to_owned()));
        }
        if frac.len() > 2 {
            return Err(AmountError::TooManyDecimals(s.to_owned()));
        }
        let euros: i64 = whole.parse().map_err(|_| AmountError::Overflow)?;
        let mut cents: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse()
                .map_err(|_| AmountError::Invalid(s.to_owned()))?
        };
        if frac.len() == 1 {
            cents = cents.checked_mul(10).ok_or(AmountError::Overflow)?;
        }
        Amount::from_euros(euros)?.checked_add(Amount(cents))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_displays() {
        assert_eq!("12.50".parse::<Amount>().unwrap(), Amount::from_cents(1250));
        assert_eq!("12.5".parse::<Amount>().unwrap(), Amount::from_cents(1250));
        assert_eq!("12".parse::<Amount>().unwrap(), Amount::from_cents(1200));
        assert_eq!("0.07".parse::<Amount>().unwrap(), Amount::from_cents(7));
        assert_eq!(Amount::from_cents(1250).to_string(), "12.50");
        assert_eq!(Amount::from_cents(-7).to_string(), "-0.07");
    }

    #[test]
    fn rejects_bad_text_with_clear_errors() {
        assert!(matches!(
            "12.345".parse::<Amount>(),
            Err(AmountError::TooManyDecimals(_))
        ));
        assert!(matches!(
            "-3".parse::<Amount>(),
            Err(AmountError::Negative(_))
        ));
        assert!(matches!(
            "abc".parse::<Amount>(),
            Err(AmountError::Invalid(_))
        ));
        assert!(matches!("".parse::<Amount>(), Err(AmountError::Empty)));
        assert!(matches!(
            "1.".parse::<Amount>(),
            Err(AmountError::Invalid(_))
        ));
        assert!(matches!(
            ".5".parse::<Amount>(),
            Err(AmountError::Invalid(_))
        ));
        assert!(matches!(
            "99999999999999999999".parse::<Amount>(),
            Err(AmountError::Overflow)
        ));
        let msg = "12.345".parse::<Amount>().unwrap_err().to_string();
        assert!(msg.contains("at most 2"), "{msg}");
    }

    #[test]
    fn coverage_split_rounds_allocation_down() {
        let (alloc, rest) = Amount::from_cents(1001).split_coverage(66).unwrap();
        assert_eq!(alloc, Amount::from_cents(660));
        assert_eq!(rest, Amount::from_cents(341));
        assert!(Amount::from_cents(1).split_coverage(101).is_err());
    }

    proptest! {
        #[test]
        fn arithmetic_never_wraps(a in any::<i64>(), b in any::<i64>()) {
            let (x, y) = (Amount::from_cents(a), Amount::from_cents(b));
            let wide = i128::from(a) + i128::from(b);
            match x.checked_add(y) {
                Ok(s) => prop_assert_eq!(i128::from(s.cents()), wide),
                Err(_) => prop_assert!(wide > i128::from(i64::MAX) || wide < i128::from(i64::MIN)),
            }
            let wide = i128::from(a) - i128::from(b);
            match x.checked_sub(y) {
                Ok(s) => prop_assert_eq!(i128::from(s.cents()), wide),
                Err(_) => prop_assert!(wide > i128::from(i64::MAX) || wide < i128::from(i64::MIN)),
            }
            let wide = i128::from(a) * i128::from(b);
            match x.checked_mul(b) {
                Ok(s) => prop_assert_eq!(i128::from(s.cents()), wide),
                Err(_) => prop_assert!(wide > i128::from(i64::MAX) || wide < i128::from(i64::MIN)),
            }
        }

        #[test]
        fn display_parse_round_trip(c in 0i64..=i64::MAX) {
            let a = Amount::from_cents(c);
            prop_assert_eq!(a.to_string().parse::<Amount>().unwrap(), a);
        }

        #[test]
        fn json_round_trip(c in (i64::MIN + 1)..=i64::MAX) {
            let a = Amount::from_cents(c);
            let json = serde_json::to_string(&a).unwrap();
            prop_assert_eq!(serde_json::from_str::<Amount>(&json).unwrap(), a);
        }

        #[test]
        fn coverage_parts_add_up(c in 0i64..1_000_000_000_000, p in 0u8..=100) {
            let a = Amount::from_cents(c);
            let (covered, rest) = a.split_coverage(p).unwrap();
            prop_assert_eq!(covered.checked_add(rest).unwrap(), a);
            prop_assert!(!covered.is_negative() && !rest.is_negative());
            prop_assert!(i128::from(covered.cents()) * 100 <= i128::from(c) * i128::from(p));
        }
    }
}
