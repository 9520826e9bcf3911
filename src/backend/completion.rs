//! One atomic unit of work ([`Completion`]), what it asks for ([`Action`]) and how
//! it ended ([`Outcome`]); once-only markers and the cron fire horizon.

use std::sync::Arc;

use super::dead_letter::FailureKind;
use super::delivery::{Cancel, LeaseRef, NewDelivery};
use super::state::{Add, AddError, ReadCheck, Write};
use crate::event::{StepName, TenantId};
use crate::time::Timestamp;

/// A once-only record: a completion carrying one applies only the first time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Marker {
    /// A cron schedule fired for this instant.
    CronFire {
        /// The cron step.
        schedule: StepName,
        /// The scheduled instant.
        at: Timestamp,
    },
    /// A delivery carried by a [`Broker`](crate::backend::Broker) was completed:
    /// its effects applied, it was retried or it was dead-lettered. The key is
    /// the delivery's [`Received::key`](crate::backend::Received), unique per
    /// delivery; a store keeps the marker at least [`DELIVERY_MARKER_RETENTION`].
    Delivery {
        /// The delivery's key.
        key: Arc<str>,
    },
}

/// How long a store keeps [`Marker::Delivery`] records at the least: longer
/// than any copy of a delivery can stay in a broker (a broker redelivers what
/// was not acknowledged within its ack wait, which is seconds).
pub const DELIVERY_MARKER_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

/// How far behind a schedule's newest fire its fire markers are kept: long
/// enough that engines whose clocks or catch-up differ still agree on every
/// instant. An older instant counts as fired.
pub const CRON_FIRE_HORIZON: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Whether a cron instant is already settled: recorded, or older than the
/// horizon behind the schedule's newest recorded fire.
pub fn cron_fire_settled(at: Timestamp, recorded: bool, newest: Option<Timestamp>) -> bool {
    recorded || newest.is_some_and(|newest| at < newest - CRON_FIRE_HORIZON)
}

/// What a finished execution asks the backend to do.
#[derive(Clone, Debug)]
pub enum Action {
    /// Apply the writes and adds and publish the emits, if no read changed
    /// meanwhile; then acknowledge the input.
    Commit {
        /// Versions to check (optimistic isolation).
        reads: Vec<ReadCheck>,
        /// Writes to apply, in order.
        writes: Vec<Write>,
        /// Increments to apply after the writes, in order, each to the value the
        /// key has at that point (absent: 0). Each changed key gets a new version,
        /// as a write would. If one cannot apply (the value is not a JSON integer,
        /// or the sum overflows an `i64`) the outcome is [`Outcome::Rejected`] and
        /// nothing of the completion applies.
        adds: Vec<Add>,
        /// Deliveries to publish (one per subscribing step of each emitted event).
        emits: Vec<NewDelivery>,
        /// Keyed deliveries of the completion's tenant to cancel, if they
        /// still wait (a cancel does not see this completion's own emits).
        cancels: Vec<Cancel>,
    },
    /// Make the input deliverable again at `at`; remember the error.
    Retry {
        /// When to try again.
        at: Timestamp,
        /// The error of the failed attempt.
        error: String,
    },
    /// Give the input back unrun, due again at `at`: the claim does not count
    /// as an attempt and the last error is kept, as with
    /// [`Transport::release`](crate::backend::Transport::release) but later.
    /// The engine defers what flow control holds back (a rate limit or a
    /// concurrency key out of budget); nothing else of the completion applies.
    Defer {
        /// When the delivery may be claimed again.
        at: Timestamp,
    },
    /// Move the input to the dead letters and publish the emits (what the
    /// step's failure hook emitted), together.
    DeadLetter {
        /// The last error.
        error: String,
        /// When it was given up on.
        at: Timestamp,
        /// Why it was given up on, kept with the dead letter.
        kind: FailureKind,
        /// Deliveries to publish with the dead letter, as a commit's.
        emits: Vec<NewDelivery>,
    },
    /// Queue a delivery that already ran `attempts` times, due at its
    /// `due_at`: a split backend's retry of a delivery that a broker carried
    /// (the input is `None`; the completion carries a [`Marker::Delivery`]).
    /// A claim of it reports attempt `attempts + 1`, `first_attempt_at` and
    /// `error` as the last error.
    Requeue {
        /// The delivery, due when it should run again.
        delivery: NewDelivery,
        /// How many attempts ran.
        attempts: u32,
        /// When the first attempt was claimed.
        first_attempt_at: Timestamp,
        /// The error of the failed attempt.
        error: String,
    },
    /// Record a dead letter for a delivery that a broker carried (the input
    /// is `None`; the completion carries a [`Marker::Delivery`]).
    Bury {
        /// The delivery that failed (its `due_at` is not used).
        delivery: NewDelivery,
        /// How many attempts ran.
        attempts: u32,
        /// When the first attempt was claimed.
        first_attempt_at: Timestamp,
        /// The last error.
        error: String,
        /// When it was given up on.
        at: Timestamp,
        /// Why it was given up on, kept with the dead letter.
        kind: FailureKind,
        /// Deliveries to publish with the dead letter, as a commit's.
        emits: Vec<NewDelivery>,
    },
}

impl Action {
    /// A commit that changes nothing: it only acknowledges its input.
    pub fn acknowledge() -> Action {
        Action::Commit {
            reads: Vec::new(),
            writes: Vec::new(),
            adds: Vec::new(),
            emits: Vec::new(),
            cancels: Vec::new(),
        }
    }
}

/// One atomic unit of work for [`Store::complete`](crate::backend::Store::complete).
#[derive(Clone, Debug)]
pub struct Completion {
    /// The tenant whose state the action touches.
    pub tenant: TenantId,
    /// The claimed delivery this completes; `None` for API calls and cron fires.
    pub input: Option<LeaseRef>,
    /// A once-only record to write with the action.
    pub marker: Option<Marker>,
    /// What to do.
    pub action: Action,
}

/// The result of one [`Completion`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything applied.
    Applied,
    /// A read changed since the handler read it, or a bounded add would break
    /// its floor: nothing applied; run again.
    Conflict,
    /// The input's lease was lost (expired and claimed again, or already
    /// completed): nothing applied.
    Stale,
    /// The marker was already recorded: nothing applied.
    Duplicate,
    /// An add of the commit could not apply (other than by its floor, see
    /// [`AddError::outcome`]): nothing applied. The engine fails
    /// the execution with this error (it dead-letters at once).
    Rejected(AddError),
}

impl AddError {
    /// The outcome of a completion whose adds cannot apply: a broken floor
    /// ([`AddError::BelowFloor`]) is a [`Conflict`](Outcome::Conflict), so the
    /// handler runs again and sees the shortfall; anything else is a
    /// [`Rejected`](Outcome::Rejected) commit.
    pub fn outcome(self) -> Outcome {
        match self {
            AddError::BelowFloor { .. } => Outcome::Conflict,
            rejected => Outcome::Rejected(rejected),
        }
    }
}
