//! The broker contract: a transport in another system than the store (NATS
//! JetStream, say), which carries deliveries but cannot join the store's
//! transaction.
//!
//! A broker is never given to the engine alone: a split backend
//! ([`SplitBackend`](crate::SplitBackend)) pairs it with a store, writes every
//! emit into the store's own queue (the outbox) in the completion's commit, and
//! relays due deliveries from there to the broker. See `docs/ADAPTERS.md`,
//! "A transport that is not the store's database", for why effects stay exactly
//! once across the split.

use std::sync::Arc;

use async_trait::async_trait;

use super::delivery::{ClaimRequest, Claimed, LeaseRef, QueueDepth};
use super::error::StoreError;
use super::transport::WakeUp;
use crate::event::{Envelope, StepName};
use crate::time::Timestamp;

/// A delivery on its way to a broker: due now, for one step.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Unique per delivery, and the same every time the relay sends it again
    /// (after a crash between sending and marking it sent): a broker drops a
    /// second copy with a key it has seen within its window.
    pub key: Arc<str>,
    /// The receiving step.
    pub step: StepName,
    /// The event.
    pub event: Arc<Envelope>,
    /// The attempt number its first claim reports (1 for a fresh delivery;
    /// higher for a retry). Each redelivery after an expired lease adds one.
    pub attempt: u32,
    /// When its first attempt was claimed.
    pub first_attempt_at: Timestamp,
    /// The previous attempt's error, if any.
    pub last_error: Option<String>,
}

/// A delivery a broker handed out under a lease, with its key.
#[derive(Clone, Debug)]
pub struct Received {
    /// The key it was sent with ([`Outgoing::key`]).
    pub key: Arc<str>,
    /// The delivery as the engine sees it.
    pub claimed: Claimed,
}

/// What [`Broker::receive`] returned.
#[derive(Clone, Debug, Default)]
pub struct ReceivedBatch {
    /// The deliveries handed out.
    pub deliveries: Vec<Received>,
    /// When the next held lease ends, if any: the dispatcher claims again then.
    pub next_due: Option<Timestamp>,
}

/// Durable, at-least-once delivery in a system other than the store.
///
/// What a broker must do (the conformance suite checks it through a
/// [`SplitBackend`](crate::SplitBackend)):
///
/// * [`send`](Self::send) returns only once every message is durable in the
///   broker, and drops a message whose key it has seen within a window that
///   is longer than the steps' leases (the relay claims the store's rows
///   under them, and a relay that dies sends them again after one).
/// * [`receive`](Self::receive) hands each message to one worker at a time
///   under a lease of the request's length, in [`ClaimRequest::now`] terms;
///   a lease that ends without an [`ack`](Self::ack) or a
///   [`release`](Self::release) hands it out again with the attempt one
///   higher and a new lease token; tenants are served round robin, as
///   [`Transport::claim`](crate::backend::Transport::claim) does. (Deliveries
///   of FIFO groups never reach a broker: the store runs them.)
/// * A broker may deliver a message more than once (a lost ack, a process
///   that died holding it): the store's delivery markers make every copy
///   after the first apply nothing.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Sends messages; returns once the broker holds them durably.
    async fn send(&self, messages: Vec<Outgoing>) -> Result<(), StoreError>;

    /// Hands out messages under leases, fairly across tenants.
    async fn receive(&self, request: ClaimRequest) -> Result<ReceivedBatch, StoreError>;

    /// Settles messages for good: their completion committed in the store.
    /// Leases that are no longer held are skipped. A settled message is
    /// never handed out by this broker again; telling a remote server may
    /// finish in the background (a lost ack only brings a copy that the
    /// store's markers drop), but [`depth`](Self::depth) and
    /// [`is_drained`](Self::is_drained) count it as gone once this returns.
    async fn ack(&self, leases: &[LeaseRef]) -> Result<(), StoreError>;

    /// Gives messages back without counting an attempt (shutdown).
    async fn release(&self, leases: &[LeaseRef]) -> Result<(), StoreError>;

    /// Counts messages by where they are as of `now` (`dead` is the store's).
    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError>;

    /// True when nothing is waiting and nothing is leased. The default
    /// counts with [`depth`](Self::depth).
    async fn is_drained(&self, now: Timestamp) -> Result<bool, StoreError> {
        let depth = self.depth(now).await?;
        Ok(depth.ready == 0 && depth.in_flight == 0)
    }

    /// Registers `wake`, to be called when messages may have arrived from
    /// another process; as [`Transport::on_new_work`](crate::backend::Transport::on_new_work).
    fn on_new_work(&self, wake: WakeUp) {
        let _ = wake;
    }
}
