//! Request-response frames between caisses.
//!
//! Requests and responses travel as single frames over the caisses'
//! request-response protocol, encoded with [`crate::encoding`] and bounded
//! by [`MAX_RPC_SIZE`]. Signed statements inside them are opened and
//! checked separately by the receiver.

use serde::{Deserialize, Serialize};

use crate::ids::CaisseId;
use crate::signed::Envelope;

/// The largest request or response frame.
pub const MAX_RPC_SIZE: usize = 4 * 1024 * 1024;
/// The most documents listed in one catalog.
pub const MAX_CATALOG: usize = 1024;
/// The most receipts asked for or re-sent at once.
pub const MAX_RESENT: usize = 1000;

/// A request from one caisse to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcRequest {
    /// One round of automerge's sync protocol for the federation document
    /// owned by `caisse`.
    Sync {
        /// The document's owner.
        caisse: CaisseId,
        /// The requester's session, new for each session it starts: a
        /// responder keeps one sync state per peer and document and starts
        /// it afresh when the session changes, so a retry after a lost
        /// answer gets what was lost instead of nothing ("already sent").
        session: u64,
        /// The requester's sync message (automerge encoding), if it has one.
        message: Option<Vec<u8>>,
    },
    /// The signed heads of every federation document the responder holds,
    /// so a (re)connecting node learns what to sync.
    Catalog,
    /// A host caisse forwarding a purchase to the card's home caisse
    /// (a signed [`crate::messages::PurchaseRequest`]).
    Purchase(Envelope),
    /// A creditor asking the debtor to re-send receipts it signed, to
    /// resolve a dispute (at most [`MAX_RESENT`] ids).
    Receipts(Vec<crate::ids::PurchaseId>),
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcResponse {
    /// The responder's sync message and the owner's latest signed heads.
    Sync {
        /// The responder's sync message, if it has one.
        message: Option<Vec<u8>>,
        /// The latest [`crate::messages::DocumentHeads`] signed by the owner, if known.
        heads: Option<Envelope>,
    },
    /// Signed [`crate::messages::DocumentHeads`], at most [`MAX_CATALOG`].
    Catalog(Vec<Envelope>),
    /// A signed receipt or decline for a forwarded purchase.
    Purchase(Envelope),
    /// Signed receipts re-sent to resolve a dispute.
    Receipts(Vec<Envelope>),
    /// The request was refused.
    Refused(String),
}
