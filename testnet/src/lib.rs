//! The testnet's library: the deterministic simulator ([`sim`]), the
//! research pilots and sweeps ([`research`]) and the report charts
//! ([`svg`]), used by `caisse-testnet` and by the tests.

pub mod research;
pub mod sim;
pub mod svg;
