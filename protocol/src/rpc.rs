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

/// The first bytes of a [`HeadsGossip`] on the gossip topic. A plain
/// [`Envelope`] of document heads can never start with them (its first byte
/// is a message kind, below 0x80), so both forms travel on one topic.
pub const HEADS_GOSSIP_TAG: [u8; 2] = [0xFF, 0x01];

/// Gossip of a document's new signed heads with the changes since its
/// previous version, when they are small: a replica that holds exactly
/// `base` applies `changes` and checks the result against the signed heads,
/// with no sync round trip. The signed heads alone decide what is accepted
/// (the changes are a shortcut, never trusted for themselves).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeadsGossip {
    /// The owner's signed `DocumentHeads`.
    pub heads: Envelope,
    /// The document's heads before these changes, sorted.
    pub base: Vec<[u8; 32]>,
    /// The changes after `base` (automerge's incremental save format).
    pub changes: Vec<u8>,
}

impl HeadsGossip {
    /// The bytes to gossip, tag first; `None` when they would pass `max`.
    pub fn to_gossip(&self, max: usize) -> Option<Vec<u8>> {
        let body =
            crate::encoding::encode(self, max.saturating_sub(HEADS_GOSSIP_TAG.len())).ok()?;
        let mut out = HEADS_GOSSIP_TAG.to_vec();
        out.extend_from_slice(&body);
        Some(out)
    }

    /// Read gossip bytes: `Ok(Some(_))` for this form, `Ok(None)` for a plain
    /// envelope of heads (the caller decodes it), an error when malformed.
    pub fn from_gossip(
        bytes: &[u8],
        max: usize,
    ) -> Result<Option<HeadsGossip>, crate::encoding::DecodeError> {
        match bytes.strip_prefix(&HEADS_GOSSIP_TAG) {
            Some(rest) => crate::encoding::decode(rest, max).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod gossip_tests {
    use super::*;
    use crate::FederationId;
    use crate::SecretKey;
    use crate::messages::DocumentHeads;

    #[test]
    fn heads_with_changes_round_trip_and_plain_heads_are_told_apart() {
        let key = SecretKey::from_bytes([9; 32]);
        let fed = FederationId::new("test").unwrap();
        let heads = DocumentHeads {
            caisse: key.caisse_id(),
            heads: vec![[1; 32]],
            sequence: 7,
            epoch: 0,
        };
        let env = Envelope::seal(&key, &fed, &heads).unwrap();
        let plain = env.to_bytes().unwrap();
        assert_ne!(plain[0], HEADS_GOSSIP_TAG[0]);
        assert!(HeadsGossip::from_gossip(&plain, 8192).unwrap().is_none());
        let g = HeadsGossip {
            heads: env,
            base: vec![[2; 32]],
            changes: vec![5; 100],
        };
        let bytes = g.to_gossip(8192).unwrap();
        let back = HeadsGossip::from_gossip(&bytes, 8192).unwrap().unwrap();
        assert_eq!(back.base, g.base);
        assert_eq!(back.changes, g.changes);
        // Too large for the limit: not sent in this form.
        let big = HeadsGossip {
            changes: vec![0; 9000],
            ..g
        };
        assert!(big.to_gossip(8192).is_none());
        // Tagged but truncated: an error, not a plain envelope.
        assert!(HeadsGossip::from_gossip(&bytes[..bytes.len() - 3], 8192).is_err());
    }
}
