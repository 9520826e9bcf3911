//! The JSON endpoints behind the workbench page.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::backend::{DeadLetterQuery, QueueDepth};
use crate::cron::Schedule;
use crate::engine::Engine;
use crate::event::{StepName, TenantId, TraceId};

/// The most rows one list answers.
pub(super) const MAX_LIMIT: usize = 1_000;

/// How long a count of the queue is shown before it is counted again.
const QUEUE_EVERY: Duration = Duration::from_secs(5);

/// The queue as last counted, shared by every page the router serves.
#[derive(Default)]
pub(super) struct QueueCache {
    last: tokio::sync::Mutex<Option<(Instant, QueueDepth)>>,
}

impl QueueCache {
    /// The queue, counted again if the last count is older than
    /// [`QUEUE_EVERY`]; one count at a time.
    async fn depth(&self, engine: &Engine) -> Result<QueueDepth, crate::engine::EngineError> {
        let mut last = self.last.lock().await;
        if let Some((at, depth)) = *last {
            if at.elapsed() < QUEUE_EVERY {
                return Ok(depth);
            }
        }
        let depth = engine.metrics().await?.queue;
        *last = Some((Instant::now(), depth));
        Ok(depth)
    }
}

/// A query or body the endpoints refuse: `400` with `{"code", "message"}`.
pub(super) struct BadRequest {
    code: &'static str,
    message: String,
}

pub(super) fn bad_request(code: &'static str, message: impl Into<String>) -> BadRequest {
    BadRequest {
        code,
        message: message.into(),
    }
}

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        let body = json!({ "code": self.code, "message": self.message });
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    }
}

pub(super) fn unavailable(err: impl std::fmt::Display) -> Response {
    let body = json!({ "code": "storage_unavailable", "message": err.to_string() });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// The query parameters the lists take, checked.
pub(super) struct Filter {
    pub(super) tenant: Option<TenantId>,
    pub(super) step: Option<StepName>,
    trace: Option<TraceId>,
    pub(super) limit: usize,
}

impl Filter {
    pub(super) fn parse(
        query: &HashMap<String, String>,
        default_limit: usize,
    ) -> Result<Self, BadRequest> {
        let given = |name: &str| query.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let tenant = given("tenant")
            .map(TenantId::new)
            .transpose()
            .map_err(|e| bad_request("invalid_tenant", e.to_string()))?;
        let step = given("step")
            .map(StepName::new)
            .transpose()
            .map_err(|e| bad_request("invalid_step", e.to_string()))?;
        let trace = given("trace")
            .map(|t| t.parse::<TraceId>())
            .transpose()
            .map_err(|_| bad_request("invalid_trace", "trace must be a trace id (a UUID)"))?;
        let limit = match given("limit") {
            None => default_limit,
            Some(n) => n
                .parse::<usize>()
                .map_err(|_| bad_request("invalid_limit", format!("limit {n:?} is not a count")))?
                .min(MAX_LIMIT),
        };
        Ok(Filter {
            tenant,
            step,
            trace,
            limit,
        })
    }
}

pub(super) async fn flow(State(engine): State<Engine>) -> Json<Value> {
    let flow = engine.flow();
    Json(json!({ "flow": flow.to_json(), "mermaid": flow.to_mermaid() }))
}

pub(super) async fn stats(
    State(workbench): State<super::Workbench>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let engine = &workbench.engine;
    let filter = match Filter::parse(&query, 0) {
        Ok(filter) => filter,
        Err(bad) => return bad.into_response(),
    };
    let q = match workbench.queue.depth(engine).await {
        Ok(depth) => depth,
        Err(err) => return unavailable(err),
    };
    let metrics = engine.local_metrics();
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let mut body = json!({
        "engine": {
            "processed": metrics.processed,
            "failed": metrics.failed,
            "retried": metrics.retried,
            "deadLettered": metrics.dead_lettered,
            "conflicts": metrics.conflicts,
            "timeouts": metrics.timeouts,
            "apiCalls": metrics.api_calls,
            "cronFires": metrics.cron_fires,
            "handlerP50Micros": micros(metrics.handler_latency.p50),
            "handlerP99Micros": micros(metrics.handler_latency.p99),
            "endToEndP50Micros": micros(metrics.end_to_end_latency.p50),
            "endToEndP99Micros": micros(metrics.end_to_end_latency.p99),
        },
        "queue": {
            "ready": q.ready, "delayed": q.delayed, "waiting": q.waiting,
            "inFlight": q.in_flight, "dead": q.dead,
        },
        "steps": engine.step_metrics(),
        "now": engine.clock().now(),
    });
    // A tenant's own view: its dead letters per step, from the store.
    if let Some(tenant) = filter.tenant {
        let query = DeadLetterQuery::new()
            .tenant(tenant.clone())
            .limit(MAX_LIMIT);
        match engine.dead_letters(&query).await {
            Ok(dead) => {
                let mut per_step: HashMap<String, u64> = HashMap::new();
                for d in &dead {
                    *per_step.entry(d.step.to_string()).or_default() += 1;
                }
                // The engine counts per step, not per tenant: a tenant's own
                // counts come from the executions it still remembers.
                let recent: Vec<_> = engine
                    .recent_executions(usize::MAX)
                    .into_iter()
                    .filter(|r| r.tenant == tenant)
                    .collect();
                let mut by_step: HashMap<String, HashMap<&str, u64>> = HashMap::new();
                for r in &recent {
                    let outcome = match r.outcome {
                        crate::engine::ExecutionOutcome::Committed => "committed",
                        crate::engine::ExecutionOutcome::Retried => "retried",
                        crate::engine::ExecutionOutcome::DeadLettered => "deadLettered",
                    };
                    *by_step
                        .entry(r.step.to_string())
                        .or_default()
                        .entry(outcome)
                        .or_default() += 1;
                }
                body["tenant"] = json!({
                    "id": tenant,
                    "deadLettersByStep": per_step,
                    "recentExecutions": recent.len(),
                    "recentByStep": by_step,
                });
            }
            Err(err) => return unavailable(err),
        }
    }
    Json(body).into_response()
}

pub(super) async fn executions(
    State(engine): State<Engine>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let filter = match Filter::parse(&query, 100) {
        Ok(filter) => filter,
        Err(bad) => return bad.into_response(),
    };
    let records: Vec<_> = engine
        .recent_executions(usize::MAX)
        .into_iter()
        .filter(|r| filter.tenant.as_ref().is_none_or(|t| &r.tenant == t))
        .filter(|r| filter.step.as_ref().is_none_or(|s| &r.step == s))
        .filter(|r| filter.trace.is_none_or(|t| r.trace_id == t))
        .take(filter.limit)
        .collect();
    Json(json!({ "executions": records })).into_response()
}

pub(super) async fn schedules(State(engine): State<Engine>) -> Json<Value> {
    let now = engine.clock().now();
    let flow = engine.flow().to_json();
    let steps = flow["steps"].as_array().cloned().unwrap_or_default();
    let schedules: Vec<Value> = steps
        .iter()
        .filter(|s| s["kind"] == "cron")
        .map(|s| {
            let expression = s["schedule"].as_str().unwrap_or_default();
            let zone = s["timeZone"].as_str().unwrap_or("UTC");
            let next = Schedule::parse(expression, zone)
                .ok()
                .and_then(|schedule| schedule.next_after(now));
            json!({
                "step": s["name"],
                "expression": expression,
                "timeZone": zone,
                "nextFire": next,
            })
        })
        .collect();
    Json(json!({ "now": now, "schedules": schedules }))
}

/// How many flow-control keys the workbench lists.
const MAX_KEYS: usize = 200;

/// `GET /_flowline/api/limits`: the flow-control keys that have a state
/// (running executions, a schedule ahead, a quota set at run time), with when
/// each may run next.
pub(super) async fn limits(State(workbench): State<super::Workbench>) -> Response {
    let engine = &workbench.engine;
    match engine.limit_statuses(MAX_KEYS).await {
        Ok(keys) => Json(json!({ "now": engine.clock().now(), "keys": keys })).into_response(),
        Err(err) => unavailable(err),
    }
}
