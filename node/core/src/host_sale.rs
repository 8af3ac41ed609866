//! The host side of a cross-caisse sale as a named state machine: a till at
//! one of our outlets presents another caisse's card, and the sale goes
//!
//! ```text
//! Preparing ──Prepared(Done)──────────────────────────────▶ finished (a retry: the receipt kept)
//!     │ Prepared(Forward): send the signed request, arm the deadline
//!     ▼
//! Forwarded ──Answer──▶ Recording ──Recorded──────────────▶ finished (the home's receipt or decline)
//!     │ Deadline / Unreachable
//!     ▼
//! Offline ──Recorded(receipt)─────────────────────────────▶ finished (accepted under the offline floor,
//!     └────Recorded(floor refused)────────────────────────▶ finished   forwarded later; or refused)
//! ```
//!
//! It holds no clock, no socket and no store: the shell (`caisse node`'s
//! `app::cross_sale`, or the simulator) runs each [`HostAction`] (a command
//! for the writer, a request to send with its deadline) and feeds back what
//! came of it as a [`HostEvent`]. Both drive this same machine, so the
//! simulator explores the node's own transitions.

use caisse_protocol::{Amount, CaisseId, Envelope};

use crate::caisse::{CaisseError, PurchaseInput, Receipt};
use crate::command::{Command, Reply};
use crate::settlement::CrossStep;

/// How long the host waits for the home caisse's answer, from the moment
/// the request leaves, before it falls back on its offline floor.
pub const HOME_DEADLINE_MS: u64 = 10_000;

/// Where a host sale stands.
#[derive(Clone, Debug)]
pub enum HostState {
    /// The core is checking and signing the request.
    Preparing,
    /// The signed request is on its way to the home; the deadline runs.
    Forwarded {
        /// The card's home caisse.
        home: CaisseId,
        /// The signed request.
        request: Envelope,
        /// The allocation part the host expects.
        allocation_part: Amount,
    },
    /// The home's answer is being recorded.
    Recording,
    /// No answer by the deadline: the offline floor decides.
    Offline {
        /// Why the home could not be reached.
        why: String,
    },
    /// Finished: nothing more happens.
    Finished,
}

/// What came of the last action.
#[derive(Debug)]
pub enum HostEvent {
    /// The writer's reply to [`Command::PrepareCrossPurchase`],
    /// [`Command::RecordCrossAnswer`] or [`Command::AcceptOffline`].
    Replied(Result<Reply, CaisseError>),
    /// The home's signed answer (a receipt or a decline) arrived.
    Answer(Box<Envelope>),
    /// The home refused the request itself (not a signed decline).
    Refused(String),
    /// The request could not be delivered, or its answer was unreadable.
    Unreachable(String),
    /// The deadline passed without an answer.
    Deadline,
}

/// What the shell must do next.
#[derive(Debug)]
pub enum HostAction {
    /// Run this command in the writer and feed back [`HostEvent::Replied`].
    Execute(Box<Command>),
    /// Send the signed request to the home caisse; feed back its answer,
    /// or [`HostEvent::Deadline`] once `within_ms` have passed without one.
    Send {
        /// The card's home caisse.
        home: CaisseId,
        /// The signed request.
        request: Box<Envelope>,
        /// How long to wait for the answer.
        within_ms: u64,
    },
    /// The sale is over: answer the till.
    Finish(Result<Receipt, HostSaleError>),
    /// Nothing to do: the event came too late or twice (an answer after
    /// the deadline is settled by the offline forwarding, not here).
    Ignore,
}

/// Why a host sale did not go through.
#[derive(Debug, thiserror::Error)]
pub enum HostSaleError {
    /// This caisse refused it, or the home caisse's signed decline.
    #[error(transparent)]
    Caisse(#[from] CaisseError),
    /// The home did not answer by the deadline and the offline floor did
    /// not allow the sale: nothing was charged.
    #[error("{0}")]
    HomeUnreachable(String),
    /// The home refused the request itself.
    #[error("{0}")]
    RefusedByHome(String),
}

/// One host sale in progress.
#[derive(Clone, Debug)]
pub struct HostSale {
    input: PurchaseInput,
    state: HostState,
}

impl HostSale {
    /// A sale of `input` (another caisse's card at our outlet), and its
    /// first action: prepare the signed request.
    pub fn start(input: PurchaseInput) -> (HostSale, HostAction) {
        let first = HostAction::Execute(Box::new(Command::PrepareCrossPurchase(input.clone())));
        (
            HostSale {
                input,
                state: HostState::Preparing,
            },
            first,
        )
    }

    /// Where it stands.
    pub fn state(&self) -> &HostState {
        &self.state
    }

    /// The till's purchase.
    pub fn input(&self) -> &PurchaseInput {
        &self.input
    }

    /// Take `event` into account and say what to do next.
    pub fn step(&mut self, event: HostEvent) -> HostAction {
        let state = std::mem::replace(&mut self.state, HostState::Finished);
        let (next, action) = self.transition(state, event);
        self.state = next;
        action
    }

    fn transition(&self, state: HostState, event: HostEvent) -> (HostState, HostAction) {
        use HostEvent as E;
        use HostState as S;
        let finish = |r: Result<Receipt, HostSaleError>| (S::Finished, HostAction::Finish(r));
        match (state, event) {
            (S::Preparing, E::Replied(Ok(Reply::Cross(step)))) => match *step {
                CrossStep::Done(receipt) => finish(Ok(receipt)),
                CrossStep::Forward {
                    home,
                    request,
                    allocation_part,
                } => (
                    S::Forwarded {
                        home,
                        request: request.clone(),
                        allocation_part,
                    },
                    HostAction::Send {
                        home,
                        request: Box::new(request),
                        within_ms: HOME_DEADLINE_MS,
                    },
                ),
            },
            (S::Forwarded { home, request, .. }, E::Answer(answer)) => (
                S::Recording,
                HostAction::Execute(Box::new(Command::RecordCrossAnswer {
                    input: self.input.clone(),
                    home,
                    request,
                    answer: *answer,
                })),
            ),
            (S::Forwarded { .. }, E::Refused(why)) => {
                finish(Err(HostSaleError::RefusedByHome(why)))
            }
            (
                S::Forwarded {
                    home,
                    request,
                    allocation_part,
                },
                event @ (E::Unreachable(_) | E::Deadline),
            ) => {
                let why = match event {
                    E::Unreachable(why) => why,
                    _ => format!("no answer within {} s", HOME_DEADLINE_MS / 1000),
                };
                (
                    S::Offline { why },
                    HostAction::Execute(Box::new(Command::AcceptOffline {
                        input: self.input.clone(),
                        home,
                        request,
                        allocation_part,
                    })),
                )
            }
            (S::Recording, E::Replied(Ok(Reply::Receipt(r)))) => finish(Ok(*r)),
            (S::Offline { .. }, E::Replied(Ok(Reply::Receipt(r)))) => finish(Ok(*r)),
            (S::Offline { why }, E::Replied(Err(CaisseError::Conflict(floor)))) => finish(Err(
                HostSaleError::HomeUnreachable(format!("{why}; {floor}")),
            )),
            (S::Preparing | S::Recording | S::Offline { .. }, E::Replied(Err(e))) => {
                finish(Err(e.into()))
            }
            (S::Preparing | S::Recording | S::Offline { .. }, E::Replied(Ok(other))) => {
                finish(Err(CaisseError::Invalid(format!(
                    "unexpected reply {} in a cross-caisse sale",
                    other.kind()
                ))
                .into()))
            }
            // A late or duplicate answer, a deadline after the answer, an
            // event once finished: nothing changes.
            (state, _) => (state, HostAction::Ignore),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caisse_protocol::messages::PurchaseLine;
    use caisse_protocol::{CardId, OutletId, PurchaseId, SecretKey};

    fn input() -> PurchaseInput {
        PurchaseInput {
            id: PurchaseId::from_bytes([1; 16]),
            card: CardId::from_bytes([2; 16]),
            outlet: OutletId::from_bytes([3; 16]),
            lines: vec![PurchaseLine {
                category: "bread".parse().unwrap(),
                producer: None,
                amount: Amount::from_cents(500),
            }],
            pin: None,
        }
    }

    fn envelope(n: u8) -> Envelope {
        let key = SecretKey::from_bytes([n; 32]);
        let fed = caisse_protocol::FederationId::new("test").unwrap();
        let message = caisse_protocol::messages::CaisseAddresses {
            caisse: key.caisse_id(),
            addresses: Vec::new(),
        };
        Envelope::seal(&key, &fed, &message).unwrap()
    }

    fn receipt(offline: bool) -> Receipt {
        Receipt {
            purchase: input().id,
            total: Amount::from_cents(500),
            allocation_part: Amount::from_cents(500),
            member_part: Amount::ZERO,
            balance_after: Amount::ZERO,
            seq: 1,
            at: 0,
            replayed: false,
            offline,
        }
    }

    fn forwarded() -> HostSale {
        let (mut sale, _) = HostSale::start(input());
        let home = CaisseId::from_bytes([9; 32]);
        let action = sale.step(HostEvent::Replied(Ok(Reply::Cross(Box::new(
            CrossStep::Forward {
                home,
                request: envelope(1),
                allocation_part: Amount::from_cents(500),
            },
        )))));
        assert!(
            matches!(action, HostAction::Send { within_ms, .. } if within_ms == HOME_DEADLINE_MS)
        );
        sale
    }

    #[test]
    fn an_answer_in_time_is_recorded() {
        let mut sale = forwarded();
        let action = sale.step(HostEvent::Answer(Box::new(envelope(2))));
        assert!(
            matches!(&action, HostAction::Execute(c) if matches!(**c, Command::RecordCrossAnswer { .. }))
        );
        // The deadline firing while the answer is recorded changes nothing.
        assert!(matches!(sale.step(HostEvent::Deadline), HostAction::Ignore));
        let done = sale.step(HostEvent::Replied(Ok(Reply::Receipt(Box::new(receipt(
            false,
        ))))));
        assert!(matches!(done, HostAction::Finish(Ok(r)) if !r.offline));
        assert!(matches!(sale.state(), HostState::Finished));
    }

    #[test]
    fn no_answer_by_the_deadline_asks_the_offline_floor() {
        let mut sale = forwarded();
        let action = sale.step(HostEvent::Deadline);
        assert!(
            matches!(&action, HostAction::Execute(c) if matches!(**c, Command::AcceptOffline { .. }))
        );
        // The home's answer arriving now is not recorded here: the offline
        // forwarding settles it.
        assert!(matches!(
            sale.step(HostEvent::Answer(Box::new(envelope(2)))),
            HostAction::Ignore
        ));
        let done = sale.step(HostEvent::Replied(Err(CaisseError::Conflict(
            "over the floor".into(),
        ))));
        let HostAction::Finish(Err(HostSaleError::HomeUnreachable(why))) = done else {
            panic!("refused by the floor must finish unreachable");
        };
        assert!(why.contains("no answer within 10 s") && why.contains("over the floor"));
    }

    #[test]
    fn a_refusal_or_a_retry_finishes_at_once() {
        let mut sale = forwarded();
        assert!(matches!(
            sale.step(HostEvent::Refused("bad request".into())),
            HostAction::Finish(Err(HostSaleError::RefusedByHome(_)))
        ));
        let (mut again, _) = HostSale::start(input());
        let done = again.step(HostEvent::Replied(Ok(Reply::Cross(Box::new(
            CrossStep::Done(receipt(false)),
        )))));
        assert!(matches!(done, HostAction::Finish(Ok(_))));
        let (mut refused, _) = HostSale::start(input());
        assert!(matches!(
            refused.step(HostEvent::Replied(Err(CaisseError::Unavailable))),
            HostAction::Finish(Err(HostSaleError::Caisse(CaisseError::Unavailable)))
        ));
    }
}
