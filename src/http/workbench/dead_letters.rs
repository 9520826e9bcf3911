//! The workbench's dead-letter endpoints: listing by step, tenant, kind and
//! time with a cursor; replaying and purging by ids or by query; replaying
//! one with a corrected payload.

use std::collections::HashMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::endpoints::{bad_request, unavailable, BadRequest, Filter, MAX_LIMIT};
use crate::backend::{DeadLetter, DeadLetterQuery, FailureKind};
use crate::engine::{Engine, EngineError};
use crate::event::Payload;
use crate::time::Timestamp;

fn dead_letter_json(d: &DeadLetter) -> Value {
    json!({
        "id": d.id,
        "step": d.step,
        "tenant": d.event.tenant,
        "topic": d.event.topic,
        "eventId": d.event.id,
        "traceId": d.event.trace_id,
        "kind": d.kind.as_str(),
        "attempts": d.attempts,
        "firstAttemptAt": d.first_attempt_at,
        "failedAt": d.failed_at,
        "lastError": d.last_error,
        "payload": d.event.payload,
    })
}

/// The filters of a query string or a body's `query`: `tenant`, `step`,
/// `kind`, `since` and `until` (milliseconds since the Unix epoch), `after`
/// (the cursor) and `limit`.
fn query_of(
    given: &HashMap<String, String>,
    default_limit: usize,
) -> Result<DeadLetterQuery, BadRequest> {
    let filter = Filter::parse(given, default_limit)?;
    let value = |name: &str| given.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let number = |name: &'static str| -> Result<Option<i64>, BadRequest> {
        value(name)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    bad_request(
                        "invalid_query",
                        format!("{name} {v:?} is not a whole number"),
                    )
                })
            })
            .transpose()
    };
    let mut query = DeadLetterQuery::new().limit(filter.limit);
    query.step = filter.step;
    query.tenant = filter.tenant;
    if let Some(kind) = value("kind") {
        let known = FailureKind::from_stored(kind);
        if known.as_str() != kind {
            let names: Vec<&str> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(bad_request(
                "invalid_kind",
                format!("kind {kind:?} is none of {}", names.join(", ")),
            ));
        }
        query.kind = Some(known);
    }
    query.since = number("since")?.map(Timestamp::from_millis);
    query.until = number("until")?.map(Timestamp::from_millis);
    query.after = number("after")?
        .map(|id| {
            u64::try_from(id)
                .map_err(|_| bad_request("invalid_query", "after must not be negative"))
        })
        .transpose()?;
    Ok(query)
}

pub(super) async fn list(
    State(engine): State<Engine>,
    Query(given): Query<HashMap<String, String>>,
) -> Response {
    let query = match query_of(&given, 100) {
        Ok(query) => query,
        Err(bad) => return bad.into_response(),
    };
    match engine.dead_letters(&query).await {
        Ok(dead) => {
            let next = (dead.len() == query.limit.unwrap_or(usize::MAX))
                .then(|| dead.last().map(|d| d.id))
                .flatten();
            let rows: Vec<Value> = dead.iter().map(dead_letter_json).collect();
            Json(json!({ "deadLetters": rows, "nextAfter": next })).into_response()
        }
        Err(err) => unavailable(err),
    }
}

/// The body of a replay or purge: the dead letters' ids, or a query that
/// selects them (its filters as strings, as in the list's query string).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Selection {
    ids: Option<Vec<u64>>,
    query: Option<HashMap<String, Value>>,
}

/// What a replay or purge acts on.
enum Target {
    Ids(Vec<u64>),
    Query(DeadLetterQuery),
}

fn target_of(body: Result<Json<Selection>, JsonRejection>) -> Result<Target, BadRequest> {
    let selection = body
        .map_err(|rejection| bad_request("invalid_body", rejection.body_text()))?
        .0;
    match (selection.ids, selection.query) {
        (Some(ids), None) if ids.len() <= MAX_LIMIT => Ok(Target::Ids(ids)),
        (Some(_), None) => Err(bad_request(
            "too_many_ids",
            format!("at most {MAX_LIMIT} ids at once"),
        )),
        (None, Some(query)) => {
            let given: HashMap<String, String> = query
                .into_iter()
                .map(|(name, value)| match value {
                    Value::String(text) => (name, text),
                    other => (name, other.to_string()),
                })
                .collect();
            // A query without a limit acts on every dead letter it matches.
            let mut query = query_of(&given, usize::MAX)?;
            if !given.contains_key("limit") {
                query.limit = None;
            }
            Ok(Target::Query(query))
        }
        _ => Err(bad_request(
            "invalid_body",
            "give either \"ids\" or \"query\", not both",
        )),
    }
}

pub(super) async fn replay(
    State(engine): State<Engine>,
    body: Result<Json<Selection>, JsonRejection>,
) -> Response {
    act(body, "replayed", |target| async move {
        match target {
            Target::Ids(ids) => engine.replay_dead_letters(&ids).await,
            Target::Query(query) => engine.replay_matching(&query).await,
        }
    })
    .await
}

pub(super) async fn purge(
    State(engine): State<Engine>,
    body: Result<Json<Selection>, JsonRejection>,
) -> Response {
    act(body, "purged", |target| async move {
        match target {
            Target::Ids(ids) => engine.purge_dead_letters(&ids).await,
            Target::Query(query) => engine.purge_matching(&query).await,
        }
    })
    .await
}

/// Checks a replay's or purge's body, runs `act` on what it selects and
/// answers `{done: n}`.
async fn act<F, Fut>(body: Result<Json<Selection>, JsonRejection>, done: &str, act: F) -> Response
where
    F: FnOnce(Target) -> Fut,
    Fut: std::future::Future<Output = Result<usize, EngineError>>,
{
    let target = match target_of(body) {
        Ok(target) => target,
        Err(bad) => return bad.into_response(),
    };
    match act(target).await {
        Ok(n) => Json(json!({ done: n })).into_response(),
        Err(err) => unavailable(err),
    }
}

/// The body of a corrected replay: the payload to run the event with.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Correction {
    payload: Value,
}

pub(super) async fn replay_corrected(
    State(engine): State<Engine>,
    Path(id): Path<u64>,
    body: Result<Json<Correction>, JsonRejection>,
) -> Response {
    let payload = match body {
        Ok(Json(Correction { payload })) => match Payload::encode(&payload) {
            Ok(payload) => payload,
            Err(err) => return bad_request("invalid_body", err.to_string()).into_response(),
        },
        Err(rejection) => {
            return bad_request("invalid_body", rejection.body_text()).into_response()
        }
    };
    match engine.replay_corrected_json(id, payload).await {
        Ok(true) => Json(json!({ "replayed": 1 })).into_response(),
        Ok(false) => {
            let body = json!({ "code": "not_found", "message": format!("no dead letter {id}") });
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
        Err(err) => unavailable(err),
    }
}
