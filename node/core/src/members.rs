//! Members, their cards and households, and outlets: the caisse's own
//! records. Personal fields (name, residence, birth year, income) live only
//! here, in the home node's store, and never enter a federation message.

use caisse_protocol::{Amount, CardId, Category, Day, MemberId, OutletId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::keys;

/// Whether a member may use their card.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberStatus {
    /// Receives allocations and may spend.
    Active,
    /// Temporarily barred (no allocation, card refused).
    Suspended,
    /// Left the caisse (moved away); kept for the accounts.
    Left,
}

/// A member of the caisse, as kept at home.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member.
    pub id: MemberId,
    /// Full name (personal).
    pub name: String,
    /// Place of residence, the only condition of membership (personal).
    pub residence: String,
    /// Year of birth, to check adulthood (personal).
    pub birth_year: Option<u16>,
    /// Declared monthly income, for the contribution scale (personal).
    pub income: Option<Amount>,
    /// The household the member belongs to, if any.
    pub household: Option<caisse_protocol::ids::HouseholdId>,
    /// Status.
    pub status: MemberStatus,
    /// Day of enrolment.
    pub joined: Day,
    /// Day of leaving, if they left.
    pub left: Option<Day>,
    /// The member's card.
    pub card: CardId,
}

impl MemberRecord {
    /// Storage key.
    pub fn key(id: &MemberId) -> Vec<u8> {
        keys::key(keys::MEMBER, &[id.as_bytes()])
    }
}

/// A card and how it is unlocked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardRecord {
    /// The card.
    pub card: CardId,
    /// Its holder.
    pub member: MemberId,
    /// Salted, peppered hash of the PIN, if one is set.
    pub pin_hash: Option<[u8; 32]>,
    /// The salt.
    pub salt: [u8; 16],
    /// Wrong PINs in the current window (a right PIN does not clear it:
    /// only the window's end or a PIN reset does).
    pub failed_attempts: u8,
    /// Locked after too many wrong PINs.
    pub locked: bool,
    /// When the current window of wrong PINs began (unix seconds).
    pub window_start: u64,
}

/// How long wrong PINs count against a card: [`crate::policy::Policy::pin_attempts`]
/// wrong PINs within this many seconds lock it, whatever right PINs came
/// between.
pub const PIN_WINDOW_SECS: u64 = 24 * 3600;

/// A card as stored before the failure window (schema 1).
#[derive(Deserialize)]
struct CardRecordV1 {
    card: CardId,
    member: MemberId,
    pin_hash: Option<[u8; 32]>,
    salt: [u8; 16],
    failed_attempts: u8,
    locked: bool,
}

/// Decode a stored card, of this layout or of the one before it.
pub fn decode_card(key: &[u8], bytes: &[u8]) -> Result<CardRecord, crate::store::StoreError> {
    match crate::store::decode_value::<CardRecord>(key, bytes) {
        Ok(c) => Ok(c),
        Err(e) => match crate::store::decode_value::<CardRecordV1>(key, bytes) {
            Ok(v1) => Ok(CardRecord {
                card: v1.card,
                member: v1.member,
                pin_hash: v1.pin_hash,
                salt: v1.salt,
                failed_attempts: v1.failed_attempts,
                locked: v1.locked,
                window_start: 0,
            }),
            Err(_) => Err(e),
        },
    }
}

/// Why an outlet's tills are suspended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutletBlock {
    /// Why, in words for the admin.
    pub reason: String,
    /// Since when (unix seconds).
    pub since: u64,
    /// True when the node suspended it (a burst of wrong PINs), false
    /// when the admin did.
    pub automatic: bool,
}

impl OutletBlock {
    /// Storage key.
    pub fn key(id: &OutletId) -> Vec<u8> {
        keys::key(keys::OUTLET_BLOCK, &[id.as_bytes()])
    }
}

/// Wrong PINs on different cards from one outlet's tills within
/// [`OUTLET_PIN_WINDOW_SECS`] that suspend the outlet's tills: a shop
/// sees a few mistyped PINs a day, not this.
pub const OUTLET_PIN_LIMIT: u32 = 10;
/// The window of [`OUTLET_PIN_LIMIT`].
pub const OUTLET_PIN_WINDOW_SECS: u64 = 3600;

impl CardRecord {
    /// Storage key.
    pub fn key(id: &CardId) -> Vec<u8> {
        keys::key(keys::CARD, &[id.as_bytes()])
    }
}

/// Hash a PIN with the card's salt and the caisse's secret pepper, so that a
/// copy of the store alone does not reveal PINs.
pub fn pin_hash(pepper: &[u8; 32], salt: &[u8; 16], pin: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"caisse-pin/v1");
    h.update(pepper);
    h.update(salt);
    h.update(pin.as_bytes());
    h.finalize().into()
}

/// Check a PIN is 4 to 8 digits.
pub fn valid_pin(pin: &str) -> bool {
    (4..=8).contains(&pin.len()) && pin.bytes().all(|b| b.is_ascii_digit())
}

/// Why `pin` is too easy to guess, if it is: one digit repeated, a run
/// up or down the keypad's digits (`1234`, `9876`), a pair repeated
/// (`1212`), doubled digits (`1122`), a year of birth (`1940`–`2029`), or
/// one of the PINs people choose most.
pub fn weak_pin(pin: &str) -> Option<&'static str> {
    const COMMON: [&str; 12] = [
        "1004", "2580", "0852", "1379", "5683", "7410", "0147", "3690", "1470", "2589", "159753",
        "147258",
    ];
    let d: Vec<i16> = pin
        .bytes()
        .map(|b| i16::from(b) - i16::from(b'0'))
        .collect();
    if d.len() < 2 {
        return None;
    }
    if d.iter().all(|x| *x == d[0]) {
        return Some("one digit repeated");
    }
    let step = d[1] - d[0];
    if step.abs() == 1 && d.windows(2).all(|w| w[1] - w[0] == step) {
        return Some("a run of consecutive digits");
    }
    if d.len() >= 4 && d.len().is_multiple_of(2) && d.chunks(2).all(|c| c == &d[..2]) {
        return Some("a pair of digits repeated");
    }
    if d.len() == 4 && d[0] == d[1] && d[2] == d[3] {
        return Some("two doubled digits");
    }
    if d.len() == 4
        && let Ok(y) = pin.parse::<u16>()
        && (1940..=2029).contains(&y)
    {
        return Some("a year");
    }
    if COMMON.contains(&pin) {
        return Some("one of the most common PINs");
    }
    None
}

/// An outlet registered with the caisse.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutletRecord {
    /// The outlet.
    pub id: OutletId,
    /// Its public name.
    pub name: String,
    /// Categories it is conventioned for, each with the coverage rate.
    pub categories: Vec<(Category, u8)>,
    /// Day registered.
    pub registered: Day,
    /// Whether it may sell under the allocation.
    pub active: bool,
}

impl OutletRecord {
    /// Storage key.
    pub fn key(id: &OutletId) -> Vec<u8> {
        keys::key(keys::OUTLET, &[id.as_bytes()])
    }
    /// The coverage rate for `category`, if the outlet is conventioned for it.
    pub fn coverage(&self, category: &Category) -> Option<u8> {
        self.categories
            .iter()
            .find(|(c, _)| c == category)
            .map(|(_, p)| *p)
    }
}

/// Who an API token belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs the caisse.
    Admin,
    /// An outlet's till: may only submit purchases for its own outlet.
    Outlet {
        /// The outlet.
        outlet: OutletId,
    },
    /// The evaluation committee: read-only.
    Observer,
    /// The holder of a parliament seat who is not a member signing in with a
    /// card (a producer's or worker's representative): votes for that seat
    /// in the console, nothing else.
    Seat {
        /// The seat number.
        seat: u32,
    },
    /// The treasurer's accountant: verifies the ledger and sees member
    /// accounts under stable pseudonyms, never names, cards or incomes.
    Auditor,
    /// A producer: its own page (accreditations across the federation,
    /// what each caisse's criteria require, its sales per caisse and
    /// month) and publishing its own signed dossier; nothing else.
    Producer {
        /// The producer.
        producer: caisse_protocol::ProducerId,
    },
}

/// The storage key of a token (by its hash; the token itself is never stored).
pub fn token_key(token: &str) -> Vec<u8> {
    let h: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    keys::key(keys::TOKEN, &[&h])
}

#[cfg(test)]
mod pin_tests {
    use super::weak_pin;

    #[test]
    fn the_usual_pins_are_refused() {
        for p in [
            "1234", "0000", "1111", "4321", "9876", "0123", "1212", "1122", "1990", "2024", "2580",
            "123456", "654321", "121212",
        ] {
            assert!(weak_pin(p).is_some(), "{p}");
        }
        for p in ["3819", "7264", "2468", "1357", "4829", "5927", "60417"] {
            assert_eq!(weak_pin(p), None, "{p}");
        }
    }
}
