//! Deliveries: what is published, claimed under a lease, and counted.

use std::sync::Arc;
use std::time::Duration;

use crate::event::{Envelope, StepName};
use crate::time::Timestamp;

/// A delivery to publish: one event for one subscribing step.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    /// The receiving step.
    pub step: StepName,
    /// The event, shared by all its deliveries.
    pub event: Arc<Envelope>,
    /// The FIFO group, set only when the step asked for ordering.
    pub group: Option<Arc<str>>,
    /// Not claimable before this time.
    pub due_at: Timestamp,
    /// A name that lets a later completion of the same tenant cancel the
    /// delivery while it waits ([`Cancel`]), such as a wait's timer.
    pub key: Option<Arc<str>>,
}

/// Cancels the pending deliveries of one step that carry a key
/// ([`NewDelivery::key`]), in the tenant of the completion that asks.
///
/// Only deliveries that wait (delayed, ready or behind their FIFO group) are
/// cancelled; one that is leased runs on. A delivery a split backend already
/// handed to its broker cannot be cancelled: the engine checks, when a keyed
/// delivery runs, whether it is still wanted, so cancelling only keeps the
/// queue short.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cancel {
    /// The step the deliveries are for.
    pub step: StepName,
    /// Their key.
    pub key: Arc<str>,
}

/// Proof of a claim: completing or releasing a delivery needs the lease it was
/// claimed under, so a worker whose lease expired cannot complete it any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseRef {
    /// The delivery.
    pub id: u64,
    /// Which claim of the delivery this is.
    pub token: u64,
}

/// A delivery handed to a worker under a lease.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Claimed {
    /// The lease to complete it with.
    pub lease: LeaseRef,
    /// The receiving step.
    pub step: StepName,
    /// The event.
    pub event: Arc<Envelope>,
    /// Which attempt this is, from 1. A lease that expired counts as an attempt.
    pub attempt: u32,
    /// When the first attempt was claimed.
    pub first_attempt_at: Timestamp,
    /// The previous attempt's error, if any.
    pub last_error: Option<String>,
    /// The FIFO group of the delivery, if its step asked for ordering. A
    /// backend sets it with [`with_group`](Self::with_group); a split backend
    /// needs it to carry the group on to the broker.
    pub group: Option<Arc<str>>,
}

impl Claimed {
    /// Builds a claimed delivery (for backends reading their records back).
    pub fn new(
        lease: LeaseRef,
        step: StepName,
        event: Arc<Envelope>,
        attempt: u32,
        first_attempt_at: Timestamp,
        last_error: Option<String>,
    ) -> Self {
        Claimed {
            lease,
            step,
            event,
            attempt,
            first_attempt_at,
            last_error,
            group: None,
        }
    }

    /// The same delivery, in FIFO group `group`.
    pub fn with_group(mut self, group: Option<Arc<str>>) -> Self {
        self.group = group;
        self
    }
}

/// How many deliveries of one step to claim.
#[derive(Clone, Debug)]
pub struct StepClaim {
    /// The step.
    pub step: StepName,
    /// At most this many.
    pub max: usize,
    /// Lease length.
    pub lease: Duration,
}

/// A request for due deliveries.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    /// The current time: deliveries due at or before it are claimable, leases
    /// that ended before it are expired.
    pub now: Timestamp,
    /// Per-step limits, in the order to serve them.
    pub steps: Vec<StepClaim>,
    /// Fairness: take at most this many from one tenant before moving to the next
    /// tenant with work (round robin), as long as others are waiting.
    pub tenant_quantum: usize,
}

/// What a claim returned.
#[derive(Clone, Debug, Default)]
pub struct ClaimBatch {
    /// The claimed deliveries.
    pub deliveries: Vec<Claimed>,
    /// When the next delayed delivery becomes due or the next lease ends, if known:
    /// the dispatcher sleeps until then when there is nothing else to do.
    pub next_due: Option<Timestamp>,
}

/// The unfinished deliveries of one step: what an engine compares with its
/// flow to find deliveries no step of it runs (a step renamed or removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepWork {
    /// The step.
    pub step: StepName,
    /// Its deliveries not yet finished (ready, delayed, waiting or leased).
    pub pending: u64,
    /// Of those, the ones claimable as of the `now` asked about (due, not
    /// leased).
    pub ready: u64,
    /// Of those, the ones leased (running somewhere).
    pub leased: u64,
}

/// How many deliveries are where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Claimable now (or as soon as a claim runs).
    pub ready: u64,
    /// Waiting for a later due time (delayed events and retries).
    pub delayed: u64,
    /// Waiting behind another delivery of their FIFO group.
    pub waiting: u64,
    /// Claimed and not yet completed.
    pub in_flight: u64,
    /// Dead letters kept.
    pub dead: u64,
}

impl QueueDepth {
    /// Deliveries not yet finished: ready + delayed + waiting + in flight.
    pub fn pending(&self) -> u64 {
        self.ready + self.delayed + self.waiting + self.in_flight
    }
}
