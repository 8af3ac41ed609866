//! The daemon of one caisse.
