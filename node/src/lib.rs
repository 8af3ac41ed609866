//! The daemon of one caisse.
//!
//! A node stores its own members, policy and ledger, decides purchases and
//! allocations, and serves a local HTTP API. Its modules, one per concept:
//!
//! - [`store`]: the `Store` trait, its sled engine and in-memory twin.
//! - [`ledger`]: accounts, the hash-chained journal, and `ledger check`.
//! - [`policy`]: allocation, rollover and contribution rules.
//! - [`members`]: members, cards, households, outlets, API roles.
//! - [`caisse`]: the state machine that decides every command.
//! - [`parliament`]: seats, proposals, votes, signed decisions.
//! - [`conventionnement`]: producers, criteria versions, accreditations.
//! - [`settlement`]: cross-caisse purchases, receipts, statements, netting.
//! - [`report`]: the evaluation report and the anonymised export.
//! - [`writer`]: the single writer thread with group commit.
//! - [`console`]: the web console (till, member page, parliament,
//!   registry, treasury), server-rendered on the API's server.
//! - [`api`]: the HTTP JSON API.
//! - [`daemon`]: `caisse init` and running a node.
//! - [`network`]: the libp2p swarm task.
//! - [`federation`]: owner-signed federation documents and their sync.
//! - [`rogue`]: a misbehaving peer for tests and test networks.
//! - [`client`]: a typed client of the API, for the CLI and the testnet.
//! - [`config`]: the config file.

pub mod api;
pub mod caisse;
pub mod client;
pub mod config;
pub mod console;
pub mod conventionnement;
pub mod daemon;
pub mod federation;
pub mod ledger;
pub mod members;
pub mod network;
pub mod parliament;
pub mod policy;
pub mod report;
pub mod rogue;
pub mod settlement;
pub mod store;
pub mod writer;
