//! Calling an API step: the handler runs in the caller's task and its writes
//! and emits commit before the call returns.

use std::sync::atomic::Ordering;

use super::context::{ContextInfo, StepContext};
use super::flow_control::Refusal;
use super::handle::Engine;
use super::journal::{ExecutionOutcome, ExecutionRecord};
use super::step::Handler;
use super::step_error::{catch_panic, ErrorClass, StepError};
use crate::api::{ApiRequest, ApiResponse};
use crate::backend::{Completion, Outcome};
use crate::event::Priority;
use crate::time::Timestamp;
use crate::trace_context::TraceParent;

impl Engine {
    /// Calls the API step that answers the request's method and path.
    ///
    /// The handler runs at once, in the caller's task; its writes and emits commit
    /// atomically before this returns (re-running it on a commit conflict). No route:
    /// 404. Handler error or timeout: 500, and nothing commits. The events it emits
    /// carry the request's `trace_id`, or a new one.
    pub async fn call(&self, mut request: ApiRequest) -> ApiResponse {
        let shared = &self.shared;
        if shared.is_stopping() {
            return ApiResponse::error(503, "shutting_down", "the engine is shutting down");
        }
        let Some((index, params)) = shared.flow.route(request.method, &request.path) else {
            return ApiResponse::error(
                404,
                "not_found",
                format!("no API step answers {} {}", request.method, request.path),
            );
        };
        request.params = params;
        let now = shared.clock.now();
        let permit = match shared
            .gate
            .admit_call(&shared.backend, now, index, &request.tenant, &request.body)
            .await
        {
            Ok(permit) => permit,
            Err(refusal) => return refused(refusal, now),
        };
        let response = self.call_admitted(index, request).await;
        shared
            .gate
            .release_call(&shared.backend, shared.clock.now(), permit)
            .await;
        response
    }

    async fn call_admitted(&self, index: usize, request: ApiRequest) -> ApiResponse {
        let shared = &self.shared;
        let step = shared.flow.steps()[index].clone();
        let Handler::Api(handler) = &step.handler else {
            return ApiResponse::error(500, "internal", "route points at a non-API step");
        };
        shared.metrics.api_calls.fetch_add(1, Ordering::Relaxed);
        let trace_id = request.trace_id.unwrap_or_default();
        let parent =
            TraceParent::from_headers(&request.headers).filter(|p| p.trace_id() == trace_id);
        for _ in 0..=shared.config.max_conflict_reruns {
            let span = tracing::info_span!(
                "api",
                step = %step.name,
                tenant = %request.tenant,
                trace_id = %trace_id,
                method = %request.method,
                path = %request.path,
                error.type = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let ctx = StepContext::new(
                ContextInfo {
                    tenant: request.tenant.clone(),
                    step: step.name.clone(),
                    step_index: index,
                    trace_id,
                    event_id: None,
                    attempt: 1,
                    deadline: shared.clock.now() + step.config.timeout,
                    priority: Priority::Normal,
                    trace_parent: super::trace_link::join(&span, parent.as_ref()).map(Box::new),
                },
                shared.clone(),
            );
            let run = super::deadline::within(
                tokio::time::Instant::now() + step.config.timeout,
                catch_panic(async { handler(ctx.clone(), request.clone()).await }),
            );
            let result = tracing::Instrument::instrument(run, span.clone()).await;
            let response = match result {
                Ok(Ok(response)) => response,
                Ok(Err(err)) => {
                    span.record("error.type", err.class().as_str());
                    span.record("otel.status_code", "ERROR");
                    tracing::warn!(step = %step.name, error = %err, "API step failed");
                    return failed(&err);
                }
                // Nothing of a step that ran out of time is committed: the
                // client may try again, as the engine would an event step.
                Err(_) => {
                    return ApiResponse::error(
                        503,
                        "timeout",
                        format!("API step {} timed out", step.name),
                    );
                }
            };
            let parts = ctx.take_txn().into_parts();
            let emitted = shared.kept_for_hook(&parts.emits);
            let completion = Completion {
                tenant: request.tenant.clone(),
                input: None,
                marker: None,
                action: shared.commit_of(parts),
            };
            let outcome = match shared.backend.complete(vec![completion]).await {
                Ok(outcomes) => outcomes.into_iter().next(),
                Err(err) => return ApiResponse::error(503, "storage_unavailable", err.to_string()),
            };
            match outcome {
                Some(Outcome::Conflict) => {
                    shared.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(Outcome::Rejected(err)) => {
                    tracing::warn!(step = %step.name, error = %err, "API step's commit rejected");
                    return ApiResponse::error(500, "invalid_counter", err.to_string());
                }
                _ => {
                    if let Some(emitted) = &emitted {
                        shared.tell_hook(emitted);
                    }
                    shared.wake.notify_one();
                    shared.step_counters[index].add_processed();
                    if shared.journal.enabled() {
                        shared.journal.extend(vec![ExecutionRecord::new(
                            step.name.clone(),
                            request.tenant.clone(),
                            trace_id,
                            ExecutionOutcome::Committed,
                            shared.clock.now(),
                            None,
                        )]);
                    }
                    return response;
                }
            }
        }
        ApiResponse::error(503, "contention", "too many concurrent updates; try again")
    }
}

/// The answer to a handler's error: one a retry can cure (a backend that
/// failed) is a `503` the client may retry, with `Retry-After` when the error
/// names a delay; a panic or any other error is a `500`.
fn failed(err: &StepError) -> ApiResponse {
    if err.is_panic() {
        // A bug, not a bad moment: retrying the same request panics again.
        return ApiResponse::error(500, "internal", err.chain_message());
    }
    match err.class() {
        ErrorClass::Permanent => ApiResponse::error(500, "internal", err.chain_message()),
        ErrorClass::Retryable => ApiResponse::error(503, "unavailable", err.chain_message()),
        ErrorClass::RetryAfter(delay) => {
            ApiResponse::error(503, "unavailable", err.chain_message())
                .header("Retry-After", retry_after_seconds(delay))
        }
    }
}

/// A `Retry-After` value: whole seconds, rounded up, at least one.
fn retry_after_seconds(wait: std::time::Duration) -> String {
    wait.as_millis().div_ceil(1000).max(1).to_string()
}

/// The answer to a call that flow control refused: `429` with `Retry-After`
/// (whole seconds, rounded up) while out of budget.
fn refused(refusal: Refusal, now: Timestamp) -> ApiResponse {
    match refusal {
        Refusal::Throttled(at) => {
            let wait = at.saturating_since(now);
            ApiResponse::error(
                429,
                "throttled",
                format!(
                    "too many requests; try again in {} ms",
                    wait.as_millis().max(1)
                ),
            )
            .header("Retry-After", retry_after_seconds(wait))
        }
        Refusal::Key(message) => ApiResponse::error(422, "invalid_limit_key", message),
        Refusal::Unavailable(message) => ApiResponse::error(503, "storage_unavailable", message),
    }
}
