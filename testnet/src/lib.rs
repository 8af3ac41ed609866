//! The testnet's library: the deterministic simulator ([`sim`]), used by
//! `caisse-testnet sim` and by the tests.

pub mod sim;
