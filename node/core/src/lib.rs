//! The deterministic core of a caisse.
//!
//! Everything a caisse decides lives here, as plain state machines: inputs
//! (a command, a peer's message, the time now, random bytes) go in; replies,
//! pending durable writes and outgoing statements come out. No sockets,
//! threads, clocks or OS randomness: the node (`caisse-node`) is the I/O
//! shell around this crate, and the same code can run under a simulator.
//!
//! - [`store`]: the `Store` trait, the key layout, the versioned value
//!   encoding, and the in-memory engine.
//! - [`ledger`]: accounts, the hash-chained journal, and `ledger check`.
//! - [`policy`]: allocation, rollover and contribution rules.
//! - [`members`]: members, cards, households, outlets, roles.
//! - [`caisse`]: the state machine that decides every command.
//! - [`command`]: commands and replies as data; `Caisse::execute`.
//! - [`parliament`]: seats, proposals, votes, signed decisions.
//! - [`conventionnement`]: producers, criteria versions, accreditations.
//! - [`sales`]: producers' monthly sales totals at our outlets, signed for
//!   the federation.
//! - [`sepa`]: bank details (IBAN checked) and the pain.001 file of payouts.
//! - [`settlement`]: cross-caisse purchases, receipts, statements, netting.
//! - [`view`]: reads (`Reads`) over the caisse or over a `View` off the
//!   writer (committed store + published `Snapshot`).
//! - [`replication`]: which signed version of another caisse's document a
//!   replica keeps (newest; on equivocation, the smaller digest).
//! - [`report`]: the evaluation report and the anonymised export.
//! - [`accounting`]: the accountant's file of a period (FEC layout).
//! - [`anonymise`]: the export's privacy model (k-anonymity, brackets).
//! - [`federation_view`]: what is known of the other caisses, as read from
//!   their owner-signed documents (the documents themselves are the node's:
//!   automerge draws random actor ids from the OS).

pub mod accounting;
pub mod anonymise;
pub mod caisse;
pub mod command;
pub mod conventionnement;
pub mod federation_view;
pub mod host_sale;
pub mod ledger;
pub mod members;
pub mod parliament;
pub mod policy;
pub mod replication;
pub mod report;
pub mod sales;
pub mod schema;
pub mod sepa;
pub mod settlement;
pub mod store;
pub mod view;

#[cfg(test)]
mod atomicity_tests;
#[cfg(test)]
mod producer_tests;
