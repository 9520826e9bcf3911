//! Turning a handler's result into the execution's action (commit, retry or
//! dead-letter) and the completion that carries it.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Action, Claimed, Completion};
use crate::engine::context::StepContext;
use crate::engine::failure::{give_up, kind_of};
use crate::engine::shared::Shared;
use crate::engine::step_error::{ErrorClass, StepError};
use crate::event::Envelope;

/// What a finished execution asks the backend to do, for the batch's statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Commit,
    Retry,
    DeadLetter,
}

impl Kind {
    pub(super) fn of(action: &Action) -> Self {
        match action {
            Action::Commit { .. } => Kind::Commit,
            // Flow control defers before a handler runs, never through an
            // execution; were one to, it would come back later, like a retry.
            Action::Retry { .. } | Action::Requeue { .. } | Action::Defer { .. } => Kind::Retry,
            Action::DeadLetter { .. } | Action::Bury { .. } => Kind::DeadLetter,
        }
    }
}

pub(super) struct Execution {
    pub(super) index: usize,
    pub(super) claimed: Claimed,
    pub(super) kind: Kind,
    pub(super) ran_for: Option<Duration>,
    pub(super) timed_out: bool,
    /// What it emitted, kept only for an emit hook, which hears of it once
    /// the commit applied.
    pub(super) emitted: Option<Vec<Arc<Envelope>>>,
}

/// Executions and the completions that carry their actions, in matching order.
pub(super) struct Done {
    pub(super) executions: Vec<Execution>,
    pub(super) completions: Vec<Completion>,
}

impl Done {
    pub(super) fn with_capacity(n: usize) -> Self {
        Done {
            executions: Vec::with_capacity(n),
            completions: Vec::with_capacity(n),
        }
    }
}

/// Pairs an execution with the completion that carries its action, and adds them
/// to `done`.
#[inline]
pub(super) fn finish(
    done: &mut Done,
    index: usize,
    claimed: Claimed,
    action: Action,
    ran_for: Option<Duration>,
    timed_out: bool,
) {
    let kind = Kind::of(&action);
    done.completions.push(Completion {
        tenant: claimed.event.tenant.clone(),
        input: Some(claimed.lease),
        marker: None,
        action,
    });
    done.executions.push(Execution {
        index,
        claimed,
        kind,
        ran_for,
        timed_out,
        emitted: None,
    });
}

/// Turns a handler's result into the execution's action: commit its transaction,
/// retry per the step's policy, or dead-letter.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) fn conclude(
    done: &mut Done,
    shared: &Arc<Shared>,
    index: usize,
    claimed: Claimed,
    ctx: &StepContext,
    result: Result<(), StepError>,
    ran_for: Duration,
    timed_out: bool,
    span: &tracing::Span,
) {
    let ran_for = Some(ran_for);
    let error = match result {
        Ok(()) => {
            let parts = ctx.take_txn().into_parts();
            let emitted = shared.kept_for_hook(&parts.emits);
            let action = shared.commit_of(parts);
            finish(done, index, claimed, action, ran_for, timed_out);
            if let Some(execution) = done.executions.last_mut() {
                execution.emitted = emitted;
            }
            return;
        }
        Err(err) => err,
    };
    let action = failure(shared, index, &claimed, error, span);
    finish(done, index, claimed, action, ran_for, timed_out);
}

/// The action for an attempt that failed with `error`: retry per the step's
/// policy, or dead-letter. Logs it in `span`.
pub(super) fn failure(
    shared: &Arc<Shared>,
    index: usize,
    claimed: &Claimed,
    error: StepError,
    span: &tracing::Span,
) -> Action {
    let policy = shared.flow.steps()[index].config.retry;
    let now = shared.clock.now();
    let message = error.chain_message();
    let elapsed = now.saturating_since(claimed.first_attempt_at);
    let next = match error.class() {
        ErrorClass::Permanent => None,
        ErrorClass::Retryable => policy.next_delay(claimed.attempt, elapsed, None),
        ErrorClass::RetryAfter(floor) => policy.next_delay(claimed.attempt, elapsed, Some(floor)),
    };
    // OpenTelemetry's names: an exporter marks the span failed, with the class.
    span.record("error.type", error.class().as_str());
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_message", message.as_str());
    let _enter = span.enter();
    match next {
        Some(delay) => {
            tracing::warn!(error = %message, retry_in = ?delay, "attempt failed; will retry");
            Action::Retry {
                at: now + delay,
                error: message,
            }
        }
        None => {
            let kind = kind_of(&error);
            tracing::error!(error = %message, %kind, "attempt failed; dead-lettering");
            give_up(shared, index, claimed, kind, message, now)
        }
    }
}
