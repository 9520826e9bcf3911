//! Giving a delivery up: the kind of its failure, and its step's hook run
//! into the dead letter's action.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use super::{FailureContext, FailureKind, StepFailure, FAILURE_DEPTH_HEADER, MAX_FAILURE_DEPTH};
use crate::backend::{Action, Claimed};
use crate::engine::context::{ContextInfo, StepContext};
use crate::engine::shared::Shared;
use crate::engine::step_error::{panicked, HandlerPanicked, StepError};
use crate::event::DecodeError;
use crate::time::Timestamp;

/// The kind of a failure that ends a delivery: `error` was its last attempt's.
pub(crate) fn kind_of(error: &StepError) -> FailureKind {
    let source = error.source();
    if error.is_permanent() {
        if source.is::<DecodeError>() {
            FailureKind::Undecodable
        } else {
            FailureKind::Permanent
        }
    } else if source.is::<HandlerPanicked>() {
        FailureKind::Panicked
    } else {
        FailureKind::Exhausted
    }
}

/// The action that dead-letters `claimed`, a delivery of step `index`, for
/// `kind` with `error`: with what the step's failure hook emits, if it has
/// one and the chain of hooks is not too deep. A hook that fails or panics
/// emits nothing; its error joins the dead letter's.
pub(crate) fn give_up(
    shared: &Arc<Shared>,
    index: usize,
    claimed: &Claimed,
    kind: FailureKind,
    error: String,
    now: Timestamp,
) -> Action {
    let dead = |error, emits| Action::DeadLetter {
        error,
        at: now,
        kind,
        emits,
    };
    let step = &shared.flow.steps()[index];
    let Some(hook) = &step.on_failure else {
        return dead(error, Vec::new());
    };
    let depth = failure_depth(claimed);
    if depth >= MAX_FAILURE_DEPTH {
        tracing::warn!(step = %step.name, depth, "failure hook skipped: the event was emitted by a chain of failure hooks this deep");
        return dead(error, Vec::new());
    }
    let info = ContextInfo::of_delivery(claimed, &step.name, index, now);
    let cx = FailureContext {
        ctx: StepContext::new(info, shared.clone()),
        depth: depth + 1,
    };
    let failure = StepFailure {
        kind,
        error,
        attempts: claimed.attempt,
        event: claimed.event.clone(),
    };
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| hook(&cx, &failure)))
        .unwrap_or_else(|payload| Err(panicked(payload.as_ref())));
    match ran {
        Ok(()) => {
            let emits = shared.fan_out(cx.ctx.take_txn().into_parts().emits);
            dead(failure.error, emits)
        }
        Err(err) => {
            tracing::error!(step = %step.name, error = %err, "failure hook failed; dead-lettering without its emits");
            dead(
                format!(
                    "{}; the failure hook failed: {}",
                    failure.error,
                    err.chain_message()
                ),
                Vec::new(),
            )
        }
    }
}

/// How deep in a chain of failure hooks `claimed`'s event was emitted (0: not
/// by a hook).
fn failure_depth(claimed: &Claimed) -> u32 {
    claimed
        .event
        .headers
        .iter()
        .find(|(name, _)| name == FAILURE_DEPTH_HEADER)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}
