//! The storage adapter: tenant-scoped, versioned state plus the engine's bookkeeping.
//!
//! A backend implements [`Store`] and [`Transport`](crate::transport::Transport).
//! [`Store::complete`] is the heart of the contract: each [`Completion`] it is given
//! applies all at once or not at all, and that includes the transport side
//! (publishing the emitted deliveries, acknowledging, rescheduling or dead-lettering
//! the input delivery). Backends whose state and queues live in one database
//! (memory, SQLite, PostgreSQL) do it in one transaction.

use std::sync::Arc;

use async_trait::async_trait;

use crate::event::{Envelope, StepName, TenantId};
use crate::step::BoxError;
use crate::time::Timestamp;
use crate::transport::{LeaseRef, NewDelivery};

pub mod memory;
mod place;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// A stored value: JSON bytes as the engine wrote them.
pub type Value = Arc<[u8]>;

/// A value with the version it was written at. Versions only grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Value,
    /// Bumped by every write of the key.
    pub version: u64,
}

/// A key the handler read, and the version it saw (`None`: the key was absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadCheck {
    /// The state key.
    pub key: String,
    /// The version read, or `None` if the key did not exist.
    pub version: Option<u64>,
}

/// A state write: a new value, or `None` to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The state key.
    pub key: String,
    /// The new value, or `None` to delete the key.
    pub value: Option<Value>,
}

/// A blind, commutative increment of an integer key: see [`Action::Commit`].
///
/// An add reads nothing the handler saw, so it records no read check and never
/// conflicts with another add; the key's stored value must be a JSON integer
/// (absent counts as 0), and the sum must fit in an `i64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Add {
    /// The state key.
    pub key: String,
    /// What to add (may be negative).
    pub delta: i64,
}

impl Add {
    /// The new value of the key, given the bytes it holds now (`None`: absent,
    /// which counts as 0). Backends call this for each add of a commit, in order.
    ///
    /// ```
    /// use flowline::store::{Add, AddError};
    /// let add = Add { key: "orders/paid".into(), delta: 2 };
    /// assert_eq!(add.apply_to(None), Ok(2));
    /// assert_eq!(add.apply_to(Some(b"40")), Ok(42));
    /// assert!(matches!(add.apply_to(Some(br#""x""#)), Err(AddError::NotAnInteger { .. })));
    /// ```
    ///
    /// # Errors
    /// The stored value is not a JSON integer in the `i64` range, or the sum
    /// overflows an `i64`.
    pub fn apply_to(&self, stored: Option<&[u8]>) -> Result<i64, AddError> {
        let current = match stored {
            None => 0,
            Some(bytes) => {
                serde_json::from_slice::<i64>(bytes).map_err(|_| AddError::NotAnInteger {
                    key: self.key.clone(),
                    delta: self.delta,
                })?
            }
        };
        current
            .checked_add(self.delta)
            .ok_or_else(|| AddError::Overflow {
                key: self.key.clone(),
                current,
                delta: self.delta,
            })
    }
}

/// Why the adds of a commit could not apply ([`Outcome::Rejected`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddError {
    /// The key holds something other than a JSON integer in the `i64` range.
    #[error("cannot add {delta} to state key {key:?}: its stored value is not a JSON integer in the i64 range")]
    NotAnInteger {
        /// The state key.
        key: String,
        /// The delta that could not be added.
        delta: i64,
    },
    /// The sum does not fit in an `i64`.
    #[error("cannot add {delta} to state key {key:?}: {current} + {delta} overflows i64")]
    Overflow {
        /// The state key.
        key: String,
        /// The value stored (after the commit's earlier writes and adds).
        current: i64,
        /// The delta that could not be added.
        delta: i64,
    },
}

/// The new values of the keys `adds` change, in the order of their first add,
/// each computed by [`Add::apply_to`] on the value the key has once `writes` (in
/// order) and the adds before it have applied; `stored` reads a key's committed
/// bytes. Allocates nothing when `adds` is empty.
pub(crate) fn sum_adds<E>(
    adds: &[Add],
    writes: &[Write],
    mut stored: impl FnMut(&str) -> Result<Option<Value>, E>,
) -> Result<Result<Vec<(String, i64)>, AddError>, E> {
    let mut sums: Vec<(String, i64)> = Vec::new();
    for add in adds {
        if let Some(at) = sums.iter().position(|(key, _)| *key == add.key) {
            let current = sums[at].1;
            match current.checked_add(add.delta) {
                Some(sum) => sums[at].1 = sum,
                None => {
                    return Ok(Err(AddError::Overflow {
                        key: add.key.clone(),
                        current,
                        delta: add.delta,
                    }))
                }
            }
            continue;
        }
        let base = match writes.iter().rev().find(|w| w.key == add.key) {
            Some(write) => write.value.clone(),
            None => stored(&add.key)?,
        };
        match add.apply_to(base.as_deref()) {
            Ok(sum) => sums.push((add.key.clone(), sum)),
            Err(err) => return Ok(Err(err)),
        }
    }
    Ok(Ok(sums))
}

/// The bytes a counter's value is stored as: its JSON.
pub(crate) fn counter_bytes(value: i64) -> Value {
    Arc::from(value.to_string().into_bytes())
}

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
}

/// How far behind a schedule's newest fire its fire markers are kept: long
/// enough that engines whose clocks or catch-up differ still agree on every
/// instant. An older instant counts as fired.
pub(crate) const CRON_FIRE_HORIZON: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

/// Whether a cron instant is already settled: recorded, or older than the
/// horizon behind the schedule's newest recorded fire.
pub(crate) fn cron_fire_settled(at: Timestamp, recorded: bool, newest: Option<Timestamp>) -> bool {
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
    },
    /// Make the input deliverable again at `at`; remember the error.
    Retry {
        /// When to try again.
        at: Timestamp,
        /// The error of the failed attempt.
        error: String,
    },
    /// Move the input to the dead letters.
    DeadLetter {
        /// The last error.
        error: String,
        /// When it was given up on.
        at: Timestamp,
    },
}

/// One atomic unit of work for [`Store::complete`].
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
    /// A read changed since the handler read it: nothing applied; run again.
    Conflict,
    /// The input's lease was lost (expired and claimed again, or already
    /// completed): nothing applied.
    Stale,
    /// The marker was already recorded: nothing applied.
    Duplicate,
    /// An add of the commit could not apply: nothing applied. The engine fails
    /// the execution with this error (it dead-letters at once).
    Rejected(AddError),
}

/// Which dead letters to list.
#[derive(Clone, Debug, Default)]
pub struct DeadLetterQuery {
    /// Only this step's.
    pub step: Option<StepName>,
    /// Only this tenant's.
    pub tenant: Option<TenantId>,
    /// At most this many (oldest first); `None` for all.
    pub limit: Option<usize>,
}

/// A delivery that could not succeed: kept for inspection, replay or purge.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The dead letter's id.
    pub id: u64,
    /// The step that failed.
    pub step: StepName,
    /// The event it failed on.
    pub event: Arc<Envelope>,
    /// The FIFO group the delivery was in, if any.
    pub group: Option<Arc<str>>,
    /// How many attempts ran.
    pub attempts: u32,
    /// When the first attempt started.
    pub first_attempt_at: Timestamp,
    /// When it was dead-lettered.
    pub failed_at: Timestamp,
    /// The last attempt's error.
    pub last_error: String,
}

impl DeadLetter {
    /// Builds a dead letter (for backends reading their records back).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        step: StepName,
        event: Arc<Envelope>,
        group: Option<Arc<str>>,
        attempts: u32,
        first_attempt_at: Timestamp,
        failed_at: Timestamp,
        last_error: String,
    ) -> Self {
        DeadLetter {
            id,
            step,
            event,
            group,
            attempts,
            first_attempt_at,
            failed_at,
            last_error,
        }
    }
}

/// A storage backend failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not do the operation (I/O, connection, SQL error).
    #[error("storage backend error: {0}")]
    Backend(#[source] BoxError),
    /// Stored data could not be read back.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// Tenant-scoped, versioned key/value state and the engine's bookkeeping.
///
/// Object-safe; the engine holds it as `Arc<dyn Backend>`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key of one tenant.
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Reads up to `limit` keys of one tenant that start with `prefix`, in key order.
    async fn scan(
        &self,
        tenant: &TenantId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError>;

    /// Applies a batch of completions, each one atomically, in order; returns one
    /// outcome per completion. An `Err` means none of the batch applied.
    async fn complete(&self, batch: Vec<Completion>) -> Result<Vec<Outcome>, StoreError>;

    /// Lists dead letters, oldest first.
    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError>;

    /// Moves dead letters back into the queue as fresh deliveries (attempt count
    /// reset), due at `now`. Returns how many were replayed.
    async fn replay_dead_letters(&self, ids: &[u64], now: Timestamp) -> Result<usize, StoreError>;

    /// Deletes dead letters. Returns how many were deleted.
    async fn purge_dead_letters(&self, ids: &[u64]) -> Result<usize, StoreError>;

    /// The newest recorded fire of a cron schedule.
    async fn last_cron_fire(&self, schedule: &StepName) -> Result<Option<Timestamp>, StoreError>;
}
