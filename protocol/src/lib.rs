//! The pure core of the caisse federation.
//!
//! Everything a caisse node and its peers must agree on lives here, with no
//! I/O, no clock and no randomness: time and random bytes come in as
//! arguments. That makes every rule deterministic and property-testable.
//!
//! - [`amount`]: money as integer euro cents with checked arithmetic.
//! - [`ids`]: identifiers of caisses, members, cards, producers, outlets,
//!   purchases, proposals, periods and days.
//! - [`signed`]: ed25519 keys and signed envelopes with domain separation.
//! - [`encoding`]: the one deterministic, size-bounded wire encoding.
//! - [`messages`]: every statement exchanged between caisses.
//! - [`criteria`]: the conventionnement rule language and its evaluator.
//! - [`netting`]: multilateral netting of inter-caisse obligations.
//! - [`rpc`]: request-response frames between caisses.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::arithmetic_side_effects
    )
)]

pub mod amount;
pub mod criteria;
pub mod encoding;
pub mod ids;
pub mod messages;
pub mod netting;
pub mod pin_seal;
pub mod producer;
pub mod rpc;
pub mod signed;
pub mod text;

pub use amount::{Amount, AmountError};
pub use ids::{
    AccreditationId, CaisseId, CardId, Category, ContentId, Day, MemberId, OutletId, Period,
    ProducerId, ProposalId, PurchaseId,
};
pub use signed::{Envelope, FederationId, PublicKey, SecretKey, Signature, Verified};
