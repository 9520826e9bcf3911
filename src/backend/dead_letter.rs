//! Dead letters: deliveries that could not succeed, kept for inspection, replay
//! or purge.

use std::fmt;
use std::sync::Arc;

use crate::event::{Envelope, StepName, TenantId};
use crate::time::Timestamp;

/// Why a delivery was given up on.
///
/// Stored with the dead letter as [`as_str`](Self::as_str); an operator can
/// then tell a bug (permanent, undecodable) from an outage that outlasted the
/// retries (exhausted), and replay only the latter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler said no retry can help (`StepError::permanent`, or one of
    /// the engine's own errors that are permanent by nature).
    Permanent,
    /// Every attempt the step's retry policy allows failed, or ran out of
    /// time, or lost its lease.
    Exhausted,
    /// The payload does not decode into the step's input type.
    Undecodable,
    /// The handler panicked on its last attempt.
    Panicked,
    /// No step can run the delivery: it names an API step. (Deliveries of a
    /// step the flow no longer has are not dead-lettered; the engine reports
    /// them as orphans, see `Engine::orphaned_deliveries`.)
    Unroutable,
    /// Recorded before the kind was (a dead letter kept from an older version).
    Unrecorded,
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [FailureKind; 6] = [
        FailureKind::Permanent,
        FailureKind::Exhausted,
        FailureKind::Undecodable,
        FailureKind::Panicked,
        FailureKind::Unroutable,
        FailureKind::Unrecorded,
    ];

    /// The stable name a backend stores: `permanent`, `exhausted`,
    /// `undecodable`, `panicked`, `unroutable` or `unrecorded`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Permanent => "permanent",
            FailureKind::Exhausted => "exhausted",
            FailureKind::Undecodable => "undecodable",
            FailureKind::Panicked => "panicked",
            FailureKind::Unroutable => "unroutable",
            FailureKind::Unrecorded => "unrecorded",
        }
    }

    /// The kind a stored name stands for; an unknown name (written by a newer
    /// version) reads as [`Unrecorded`](Self::Unrecorded).
    ///
    /// ```
    /// use flowline::FailureKind;
    ///
    /// assert_eq!(FailureKind::from_stored("exhausted"), FailureKind::Exhausted);
    /// assert_eq!(FailureKind::from_stored("from-the-future"), FailureKind::Unrecorded);
    /// ```
    pub fn from_stored(name: &str) -> Self {
        FailureKind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .unwrap_or(FailureKind::Unrecorded)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which dead letters to list: every filter set must match. Oldest (lowest
/// id) first.
///
/// A listing longer than one page is read with a cursor: pass the last id of
/// a page to [`after`](Self::after) to get the next.
///
/// ```
/// use flowline::{DeadLetterQuery, FailureKind, StepName, Timestamp};
///
/// let query = DeadLetterQuery::new()
///     .step(StepName::new("send_welcome").unwrap())
///     .kind(FailureKind::Exhausted)
///     .since(Timestamp::from_millis(1_700_000_000_000))
///     .limit(100);
/// let next_page = query.clone().after(4_711);
/// assert_eq!(next_page.after, Some(4_711));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct DeadLetterQuery {
    /// Only this step's.
    pub step: Option<StepName>,
    /// Only this tenant's.
    pub tenant: Option<TenantId>,
    /// Only those of this kind.
    pub kind: Option<FailureKind>,
    /// Only those that failed at or after this instant.
    pub since: Option<Timestamp>,
    /// Only those that failed before this instant.
    pub until: Option<Timestamp>,
    /// Only those with a greater id: the cursor of the next page.
    pub after: Option<u64>,
    /// At most this many (oldest first); `None` for all.
    pub limit: Option<usize>,
}

impl DeadLetterQuery {
    /// Every dead letter.
    pub fn new() -> Self {
        DeadLetterQuery::default()
    }

    /// Only `step`'s.
    pub fn step(mut self, step: StepName) -> Self {
        self.step = Some(step);
        self
    }

    /// Only `tenant`'s.
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Only those of `kind`.
    pub fn kind(mut self, kind: FailureKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Only those that failed at or after `at`.
    pub fn since(mut self, at: Timestamp) -> Self {
        self.since = Some(at);
        self
    }

    /// Only those that failed before `at`.
    pub fn until(mut self, at: Timestamp) -> Self {
        self.until = Some(at);
        self
    }

    /// Only those with an id greater than `id` (the last of the previous page).
    pub fn after(mut self, id: u64) -> Self {
        self.after = Some(id);
        self
    }

    /// At most `n`.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Whether `letter` passes every filter but the limit: what a backend that
    /// filters in memory checks.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.step.as_ref().is_none_or(|s| *s == letter.step)
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| *t == letter.event.tenant)
            && self.kind.is_none_or(|k| k == letter.kind)
            && self.since.is_none_or(|at| letter.failed_at >= at)
            && self.until.is_none_or(|at| letter.failed_at < at)
            && self.after.is_none_or(|id| letter.id > id)
    }
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
    /// Why it was given up on.
    pub kind: FailureKind,
}

impl DeadLetter {
    /// Builds a dead letter (for backends reading their records back), of
    /// kind [`Unrecorded`](FailureKind::Unrecorded) until
    /// [`with_kind`](Self::with_kind) says otherwise.
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
            kind: FailureKind::Unrecorded,
        }
    }

    /// The same dead letter, of `kind`.
    pub fn with_kind(mut self, kind: FailureKind) -> Self {
        self.kind = kind;
        self
    }
}
