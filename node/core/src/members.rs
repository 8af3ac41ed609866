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
    /// Consecutive wrong PINs.
    pub failed_attempts: u8,
    /// Locked after too many wrong PINs.
    pub locked: bool,
}

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
}

/// The storage key of a token (by its hash; the token itself is never stored).
pub fn token_key(token: &str) -> Vec<u8> {
    let h: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    keys::key(keys::TOKEN, &[&h])
}
