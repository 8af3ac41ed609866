//! Identifiers and calendar types shared by every caisse.
//!
//! Random identifiers are 16 bytes shown as a short prefix plus hex
//! (`mem_…`, `out_…`), so that an id pasted in the wrong place is caught by
//! its prefix. A [`CaisseId`] is the caisse's ed25519 public key; a
//! [`CardId`] starts with the first 8 bytes of its home caisse's key so that
//! any caisse can route a purchase to the card's home.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Why an identifier or calendar value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The text did not start with the expected prefix.
    #[error("{text:?} is not a {what}: expected it to start with {prefix:?}")]
    Prefix {
        /// What kind of id was expected.
        what: &'static str,
        /// The prefix it must start with.
        prefix: &'static str,
        /// The offending text.
        text: String,
    },
    /// Wrong length or non-hex characters.
    #[error("{text:?} is not a valid {what}: expected {hex_len} hex digits")]
    Hex {
        /// What kind of id was expected.
        what: &'static str,
        /// How many hex digits it needs.
        hex_len: usize,
        /// The offending text.
        text: String,
    },
    /// A period that is not `YYYY-MM`.
    #[error("{0:?} is not a period: write a calendar month as YYYY-MM, e.g. 2026-03")]
    Period(String),
    /// A day that is not `YYYY-MM-DD`.
    #[error("{0:?} is not a date: write it as YYYY-MM-DD, e.g. 2026-03-31")]
    Day(String),
    /// A category name with characters outside `a-z 0-9 - _`.
    #[error(
        "{0:?} is not a category: use 1 to 40 lowercase letters, digits, '-' or '_', e.g. fresh-produce"
    )]
    Category(String),
    /// A federation name with characters outside `a-z 0-9 - . _`.
    #[error("{0:?} is not a federation id: use 1 to 64 lowercase letters, digits, '-', '.' or '_'")]
    Federation(String),
}

/// Serde helpers for fixed-size byte arrays: hex text in human-readable
/// formats (JSON, TOML), raw bytes in the binary wire encoding.
pub(crate) mod byte_array {
    use super::*;

    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(bytes))
        } else {
            s.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            let mut out = [0u8; N];
            hex::decode_to_slice(text.trim(), &mut out)
                .map_err(|_| D::Error::custom(format!("expected {N} bytes of hex")))?;
            Ok(out)
        } else {
            let bytes: &[u8] = <&[u8]>::deserialize(d)?;
            <[u8; N]>::try_from(bytes)
                .map_err(|_| D::Error::custom(format!("expected {N} bytes, got {}", bytes.len())))
        }
    }
}

fn parse_hex<const N: usize>(
    text: &str,
    what: &'static str,
    prefix: &'static str,
) -> Result<[u8; N], IdError> {
    let t = text.trim();
    let rest = t.strip_prefix(prefix).ok_or_else(|| IdError::Prefix {
        what,
        prefix,
        text: t.to_owned(),
    })?;
    let mut out = [0u8; N];
    hex::decode_to_slice(rest, &mut out).map_err(|_| IdError::Hex {
        what,
        hex_len: N.saturating_mul(2),
        text: t.to_owned(),
    })?;
    Ok(out)
}

/// Serde for a 16-byte id: its display text in human-readable formats, raw
/// bytes in the wire encoding.
macro_rules! text_or_bytes_serde {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let text = String::deserialize(d)?;
                    text.parse().map_err(serde::de::Error::custom)
                } else {
                    byte_array::deserialize(d).map(Self)
                }
            }
        }
    };
}

/// Defines a random 16-byte identifier with a text prefix.
macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 16]);

        impl $name {
            /// The text prefix of this kind of id.
            pub const PREFIX: &'static str = $prefix;

            /// An id from 16 random bytes (the caller supplies the randomness).
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                parse_hex(s, $what, $prefix).map(Self)
            }
        }

        text_or_bytes_serde!($name);
    };
}

random_id!(
    /// A member of a caisse. Never leaves the home node.
    MemberId, "mem_", "member id"
);
random_id!(
    /// A producer (farm, cooperative), known across the federation.
    ProducerId, "prod_", "producer id"
);
random_id!(
    /// An outlet (shop, market stall, public grocery) where the allocation is spent.
    OutletId, "out_", "outlet id"
);
random_id!(
    /// A proposal put to a food parliament.
    ProposalId, "prop_", "proposal id"
);
random_id!(
    /// A household grouping members for household-based allocations.
    HouseholdId, "hh_", "household id"
);

/// A purchase, chosen by the till so that a retry carries the same id.
///
/// Shown as a UUID (`8-4-4-4-12` hex), the format tills already produce.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PurchaseId([u8; 16]);
text_or_bytes_serde!(PurchaseId);

impl PurchaseId {
    /// A purchase id from 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A time-ordered purchase id, laid out as a UUID version 7: the
    /// sale's time in milliseconds since 1970 (48 bits, big-endian) first,
    /// then `random`. Ids a till makes this way sort by time, so the
    /// node's idempotency records of new sales land at the end of their
    /// index instead of anywhere in it: a caisse with a long journal
    /// writes a few pages per checkpoint for them, not one per sale. Any
    /// other 16 bytes are still a valid id. The caller brings the clock
    /// and the randomness (this crate has neither).
    pub fn time_ordered(unix_ms: u64, random: [u8; 10]) -> Self {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        b[6..].copy_from_slice(&random);
        b[6] = 0x70 | (b[6] & 0x0f); // version 7
        b[8] = 0x80 | (b[8] & 0x3f); // RFC 4122 variant
        Self(b)
    }
}

impl fmt::Display for PurchaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        let (a, r) = h.split_at(8);
        let (b, r) = r.split_at(4);
        let (c, r) = r.split_at(4);
        let (d, e) = r.split_at(4);
        write!(f, "{a}-{b}-{c}-{d}-{e}")
    }
}

impl fmt::Debug for PurchaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PurchaseId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let compact: String = s.trim().chars().filter(|c| *c != '-').collect();
        let mut out = [0u8; 16];
        hex::decode_to_slice(&compact, &mut out).map_err(|_| IdError::Hex {
            what: "purchase id (UUID)",
            hex_len: 32,
            text: s.trim().to_owned(),
        })?;
        Ok(Self(out))
    }
}

/// A caisse: its ed25519 public key, which is also its network identity.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CaisseId(#[serde(with = "byte_array")] [u8; 32]);

impl CaisseId {
    /// The caisse id of a public key's bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// The public key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// The first 8 bytes, used to route cards to their home caisse.
    pub fn routing_prefix(&self) -> [u8; 8] {
        let mut p = [0u8; 8];
        p.copy_from_slice(&self.0[..8]);
        p
    }
    /// A short form for logs and tables (first 8 hex digits).
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for CaisseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CaisseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "caisse:{}", self.short())
    }
}

impl FromStr for CaisseId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        parse_hex(s, "caisse id", "").map(Self)
    }
}

/// A member's card: pseudonymous, routable to its home caisse.
///
/// The first 8 bytes are the home caisse's routing prefix, the last 8 are
/// random. A card id says nothing about the person holding it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CardId([u8; 16]);
text_or_bytes_serde!(CardId);

impl CardId {
    /// The text prefix of card ids.
    pub const PREFIX: &'static str = "card_";

    /// A new card of `home`, from 8 random bytes.
    pub fn new(home: &CaisseId, random: [u8; 8]) -> Self {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&home.routing_prefix());
        b[8..].copy_from_slice(&random);
        Self(b)
    }
    /// A card id from its 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
    /// The routing prefix of the card's home caisse.
    pub fn home_prefix(&self) -> [u8; 8] {
        let mut p = [0u8; 8];
        p.copy_from_slice(&self.0[..8]);
        p
    }
    /// True if `caisse` is this card's home.
    pub fn is_issued_by(&self, caisse: &CaisseId) -> bool {
        self.home_prefix() == caisse.routing_prefix()
    }
}

impl fmt::Display for CardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, hex::encode(self.0))
    }
}

impl fmt::Debug for CardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for CardId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        parse_hex(s, "card id", Self::PREFIX).map(Self)
    }
}

/// The SHA-256 hash of some exact bytes: ids of signed statements
/// (accreditations, receipts, statements) and hashes of criteria versions.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContentId(#[serde(with = "byte_array")] [u8; 32]);

/// An accreditation is identified by the content id of its signed bytes.
pub type AccreditationId = ContentId;

impl ContentId {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
    /// The hash of several byte strings, each length-prefixed so that
    /// different splits never collide.
    pub fn of_parts(parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        Self(h.finalize().into())
    }
    /// A content id from its 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// A short form for logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.short())
    }
}

impl FromStr for ContentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        parse_hex(s, "content id", "").map(Self)
    }
}

/// A calendar month, the period of allocations, contributions and settlement.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    year: u16,
    month: u8,
}

impl Period {
    /// The period of `year` and `month` (1-12), if valid.
    pub fn new(year: u16, month: u8) -> Option<Period> {
        ((1..=12).contains(&month) && (1970..=9999).contains(&year))
            .then_some(Period { year, month })
    }
    /// The year.
    pub fn year(self) -> u16 {
        self.year
    }
    /// The month, 1 to 12.
    pub fn month(self) -> u8 {
        self.month
    }
    /// The following month.
    pub fn next(self) -> Option<Period> {
        if self.month == 12 {
            Period::new(self.year.checked_add(1)?, 1)
        } else {
            Period::new(self.year, self.month.checked_add(1)?)
        }
    }
    /// The preceding month.
    pub fn prev(self) -> Option<Period> {
        if self.month == 1 {
            Period::new(self.year.checked_sub(1)?, 12)
        } else {
            Period::new(self.year, self.month.checked_sub(1)?)
        }
    }
    /// The first day of the period.
    pub fn first_day(self) -> Day {
        Day::from_ymd(self.year, self.month, 1).unwrap_or(Day(0))
    }
    /// The number of days in the period.
    pub fn days(self) -> u8 {
        match self.month {
            4 | 6 | 9 | 11 => 30,
            2 if is_leap(self.year) => 29,
            2 => 28,
            _ => 31,
        }
    }
    /// A compact sortable key (`year * 12 + month - 1`).
    pub fn index(self) -> u32 {
        u32::from(self.year)
            .saturating_mul(12)
            .saturating_add(u32::from(self.month).saturating_sub(1))
    }
    /// The period of a compact key made by [`Period::index`].
    pub fn from_index(index: u32) -> Option<Period> {
        let year = u16::try_from(index.checked_div(12)?).ok()?;
        let month = u8::try_from(index.checked_rem(12)?.checked_add(1)?).ok()?;
        Period::new(year, month)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl fmt::Debug for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Period {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let t = s.trim();
        let err = || IdError::Period(t.to_owned());
        let (y, m) = t.split_once('-').ok_or_else(err)?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(err());
        }
        Period::new(y.parse().map_err(|_| err())?, m.parse().map_err(|_| err())?).ok_or_else(err)
    }
}

impl Serialize for Period {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            (self.year, self.month).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            String::deserialize(d)?.parse().map_err(D::Error::custom)
        } else {
            let (y, m) = <(u16, u8)>::deserialize(d)?;
            Period::new(y, m).ok_or_else(|| D::Error::custom("invalid period"))
        }
    }
}

fn is_leap(y: u16) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

/// A calendar day, counted in days since 1970-01-01 (UTC).
///
/// Used for validity dates of accreditations and voting windows.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(u32);

impl Day {
    /// The day number `days` since 1970-01-01.
    pub const fn from_days(days: u32) -> Day {
        Day(days)
    }
    /// Days since 1970-01-01.
    pub const fn days(self) -> u32 {
        self.0
    }
    /// The day containing the Unix time `secs`.
    pub fn from_unix(secs: u64) -> Day {
        Day(u32::try_from(secs / 86_400).unwrap_or(u32::MAX))
    }
    /// The day of a civil date, if valid (years 1970-9999).
    // Calendar arithmetic on small bounded values (years 1970-9999); cannot overflow.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn from_ymd(year: u16, month: u8, day: u8) -> Option<Day> {
        let p = Period::new(year, month)?;
        if day == 0 || day > p.days() {
            return None;
        }
        // Days from civil, after H. Hinnant; all values here are small and positive.
        let y = i64::from(year) - i64::from(month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(month);
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        u32::try_from(days).ok().map(Day)
    }
    /// The civil date `(year, month, day)`.
    // Calendar arithmetic on a u32 day count widened to i64; cannot overflow.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn ymd(self) -> (u16, u8, u8) {
        let z = i64::from(self.0) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        (
            u16::try_from(y).unwrap_or(u16::MAX),
            u8::try_from(m).unwrap_or(1),
            u8::try_from(d).unwrap_or(1),
        )
    }
    /// The period (month) this day falls in.
    pub fn period(self) -> Period {
        let (y, m, _) = self.ymd();
        Period::new(y, m).unwrap_or(Period {
            year: 1970,
            month: 1,
        })
    }
    /// The day `n` days later, saturating.
    pub fn plus(self, n: u32) -> Day {
        Day(self.0.saturating_add(n))
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.ymd();
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

impl fmt::Debug for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Day {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let t = s.trim();
        let err = || IdError::Day(t.to_owned());
        let mut parts = t.split('-');
        let (Some(y), Some(m), Some(d), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return Err(err());
        }
        Day::from_ymd(
            y.parse().map_err(|_| err())?,
            m.parse().map_err(|_| err())?,
            d.parse().map_err(|_| err())?,
        )
        .ok_or_else(err)
    }
}

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u32(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            String::deserialize(d)?.parse().map_err(D::Error::custom)
        } else {
            u32::deserialize(d).map(Day)
        }
    }
}

/// A product category (`fresh-produce`, `dairy`, `bread`…), as named by a caisse.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Category(String);

impl Category {
    /// The longest category name accepted.
    pub const MAX_LEN: usize = 40;

    /// A category, if the name is 1-40 chars of `a-z 0-9 - _`.
    pub fn new(name: &str) -> Result<Category, IdError> {
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Category(name.to_owned()))
        } else {
            Err(IdError::Category(name.to_owned()))
        }
    }
    /// The category name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Category {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Category::new(s.trim())
    }
}

impl<'de> Deserialize<'de> for Category {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Category::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_round_trip_and_check_prefix() {
        let m = MemberId::from_bytes([7; 16]);
        assert_eq!(m.to_string().parse::<MemberId>().unwrap(), m);
        let err = m.to_string().replace("mem_", "out_").parse::<MemberId>();
        assert!(matches!(err, Err(IdError::Prefix { .. })));
        let p = PurchaseId::from_bytes([0xab; 16]);
        assert_eq!(p.to_string().len(), 36);
        assert_eq!(p.to_string().parse::<PurchaseId>().unwrap(), p);
    }

    proptest! {
        /// Time-ordered ids sort as their times do, whatever the random
        /// part, and read as UUID version 7.
        #[test]
        fn time_ordered_ids_sort_by_time(
            a in 0u64..(1 << 48), b in 0u64..(1 << 48),
            ra in any::<[u8; 10]>(), rb in any::<[u8; 10]>(),
        ) {
            let (x, y) = (PurchaseId::time_ordered(a, ra), PurchaseId::time_ordered(b, rb));
            if a < b {
                prop_assert!(x < y);
            }
            let text = x.to_string();
            prop_assert_eq!(&text[14..15], "7");
            prop_assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"));
            prop_assert_eq!(text.parse::<PurchaseId>().unwrap(), x);
        }
    }

    #[test]
    fn cards_route_home() {
        let home = CaisseId::from_bytes([9; 32]);
        let other = CaisseId::from_bytes([8; 32]);
        let c = CardId::new(&home, [1; 8]);
        assert!(c.is_issued_by(&home));
        assert!(!c.is_issued_by(&other));
        assert_eq!(c.to_string().parse::<CardId>().unwrap(), c);
    }

    #[test]
    fn periods() {
        let p: Period = "2026-02".parse().unwrap();
        assert_eq!(p.days(), 28);
        assert_eq!(p.prev().unwrap().to_string(), "2026-01");
        assert_eq!(
            "2025-12".parse::<Period>().unwrap().next().unwrap(),
            p.prev().unwrap()
        );
        for bad in [
            "2026-13", "2026-1", "26-01", "2026/01", "abcd-ef", "2026-00",
        ] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
        assert_eq!(Period::from_index(p.index()), Some(p));
    }

    #[test]
    fn days() {
        assert_eq!(Day::from_ymd(1970, 1, 1), Some(Day(0)));
        assert_eq!(
            "2000-03-01".parse::<Day>().unwrap().to_string(),
            "2000-03-01"
        );
        assert!("2026-02-29".parse::<Day>().is_err());
        assert!("2024-02-29".parse::<Day>().is_ok());
    }

    proptest! {
        #[test]
        fn day_round_trip(d in 0u32..2_900_000) {
            let day = Day(d);
            let (y, m, dd) = day.ymd();
            prop_assert_eq!(Day::from_ymd(y, m, dd), Some(day));
            prop_assert_eq!(day.to_string().parse::<Day>().unwrap(), day);
        }
    }
}
