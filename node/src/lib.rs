//! The daemon of one caisse: the I/O shell around `caisse-core`.
//!
//! The caisse's rules (ledger, members, parliament, conventionnement,
//! settlement, reports, federation documents) are the deterministic core,
//! `caisse_core`, re-exported here under the same module names. This crate
//! adds what touches the world:
//!
//! - [`store`]: the sled engine behind the core's `Store` trait.
//! - [`writer`]: the single writer thread with group commit, and the clock.
//! - [`console`]: the web console (till, member page, parliament,
//!   registry, treasury), server-rendered on the API's server.
//! - [`app`]: the application layer both front ends share (state, the host
//!   side of a cross-caisse sale, reports off the writer).
//! - [`api`]: the HTTP JSON API.
//! - [`redact`]: what each role sees of member and card ids.
//! - [`audit`]: the last clean ledger audit's checkpoint, for the next audit to start from.
//! - [`backup`]: online, consistent backups (copied by the writer between commits) and restore.
//! - [`cards`]: member cards to print (QR code and barcode of the card number).
//! - [`metrics`]: Prometheus metrics at `GET /metrics` (no personal data).
//! - [`limiter`]: failures per client address (sign-ins, wrong PINs).
//! - [`http`]: the HTTP listener with connection bounds and timeouts.
//! - [`server`]: the HTTP server: the API and the console side by side.
//! - [`daemon`]: `caisse init` and running a node.
//! - [`network`]: the libp2p swarm task.
//! - [`doctor`]: `caisse doctor`, what is wrong with a data directory.
//! - [`durable`]: small files saved so that a power cut leaves them whole.
//! - [`documents`]: the owner-signed automerge federation documents.
//! - [`federation`]: the federation task (gossip, sync, persistence).
//! - [`rogue`]: a misbehaving peer for tests and test networks.
//! - [`client`]: a typed client of the API, for the CLI and the testnet.
//! - [`config`]: the config file.

/// The allocator of every process that runs a node (`caisse`, the
/// testnet, the benches): mimalloc, not glibc's. At a million members,
/// just as an audit finished, one group of tills waited about 160 ms,
/// although neither its decisions nor its commit took any time (most
/// likely glibc handing the audit's freed memory back to the kernel in one
/// go); with mimalloc (and with jemalloc, tried by `LD_PRELOAD`) no group
/// took over 30 ms, and the jobs ran faster (BENCHMARKS.md, "Tills during
/// long jobs").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use caisse_core::{
    accounting, caisse, conventionnement, federation_view, ledger, members, parliament, policy,
    report, sepa, settlement,
};

pub mod api;
pub mod app;
pub mod audit;
pub mod backup;
pub mod cards;
pub mod client;
pub mod config;
pub mod console;
pub mod daemon;
pub mod doctor;
pub mod documents;
pub mod dto;
pub mod durable;
pub mod federation;
pub mod http;
pub mod limiter;
pub mod metrics;
pub mod network;
pub mod openapi;
pub mod producers;
pub mod redact;
pub mod rogue;
pub mod server;
pub mod started;
pub mod store;
pub mod writer;
