//! Research use: pilots calibrated on published figures (`caisse-testnet
//! pilot`) and parameter sweeps (`caisse-testnet sweep`), on the real caisse
//! core in one thread. See `docs/RESEARCH.md`.

pub mod engine;
pub mod pilot;
pub mod sweep;
pub mod territory;

/// A progress line on stderr.
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("[research] {}", msg.as_ref());
}
