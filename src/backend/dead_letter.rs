//! Dead letters: deliveries that could not succeed, kept for inspection, replay
//! or purge.

use std::sync::Arc;

use crate::event::{Envelope, StepName, TenantId};
use crate::time::Timestamp;

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
