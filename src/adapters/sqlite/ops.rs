//! What callers send the writer thread, and what it answers.

use tokio::sync::oneshot;

use crate::backend::{ClaimBatch, ClaimRequest, Completion, LeaseRef, NewDelivery, Outcome};
use crate::backend::{QueueDepth, StepWork, StoreError};
use crate::event::{Payload, StepName};
use crate::time::Timestamp;

/// One operation for the writer.
#[derive(Debug)]
pub(super) enum Op {
    /// A change to the file, applied in the group's transaction.
    Change(Change),
    /// Queue depth, read once the group's changes are in the index.
    Depth(Timestamp),
    /// The steps with work, read once the group's changes are in the index.
    Work(Timestamp),
}

/// An operation that changes the file.
#[derive(Debug)]
pub(super) enum Change {
    Publish(Vec<NewDelivery>),
    Claim(ClaimRequest),
    Complete(Vec<Completion>),
    Release(Vec<LeaseRef>),
    Replay(Vec<u64>, Timestamp),
    Purge(Vec<u64>),
    Amend(u64, Payload),
    Move(StepName, Option<StepName>),
}

impl From<Change> for Op {
    fn from(change: Change) -> Self {
        Op::Change(change)
    }
}

/// What an operation returns.
#[derive(Debug)]
pub(super) enum Reply {
    Done,
    Claimed(ClaimBatch),
    Outcomes(Vec<Outcome>),
    Depth(QueueDepth),
    Work(Vec<StepWork>),
    Count(usize),
}

/// An operation and where its answer goes.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) op: Op,
    pub(super) reply: oneshot::Sender<Result<Reply, StoreError>>,
}
