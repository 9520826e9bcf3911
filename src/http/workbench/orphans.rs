//! The workbench's orphan endpoints: deliveries of steps the flow does not
//! have (after a step was renamed or removed), listed, moved or purged.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::endpoints::{bad_request, unavailable, BadRequest};
use crate::engine::{Engine, EngineError};
use crate::event::StepName;

pub(super) async fn list(State(engine): State<Engine>) -> Response {
    match engine.orphaned_deliveries().await {
        Ok(found) => {
            let rows: Vec<_> = found
                .iter()
                .map(|w| json!({ "step": w.step, "pending": w.pending, "ready": w.ready, "leased": w.leased }))
                .collect();
            Json(json!({ "orphans": rows })).into_response()
        }
        Err(err) => unavailable(err),
    }
}

/// The body of a move (`to` set) or a purge.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Orphans {
    from: String,
    to: Option<String>,
}

pub(super) async fn move_to(
    State(engine): State<Engine>,
    body: Result<Json<Orphans>, JsonRejection>,
) -> Response {
    let (from, to) = match names(body) {
        Ok((from, Some(to))) => (from, to),
        Ok((_, None)) => return bad_request("invalid_body", "a move needs \"to\"").into_response(),
        Err(bad) => return bad.into_response(),
    };
    answer(engine.move_orphans(&from, &to).await, "moved")
}

pub(super) async fn purge(
    State(engine): State<Engine>,
    body: Result<Json<Orphans>, JsonRejection>,
) -> Response {
    let from = match names(body) {
        Ok((from, None)) => from,
        Ok((_, Some(_))) => {
            return bad_request("invalid_body", "a purge takes no \"to\"").into_response()
        }
        Err(bad) => return bad.into_response(),
    };
    answer(engine.purge_orphans(&from).await, "purged")
}

fn names(
    body: Result<Json<Orphans>, JsonRejection>,
) -> Result<(StepName, Option<StepName>), BadRequest> {
    let body = body
        .map_err(|r| bad_request("invalid_body", r.body_text()))?
        .0;
    let step =
        |name: &str| StepName::new(name).map_err(|e| bad_request("invalid_step", e.to_string()));
    let to = body.to.as_deref().map(step).transpose()?;
    Ok((step(&body.from)?, to))
}

fn answer(result: Result<u64, EngineError>, done: &str) -> Response {
    match result {
        Ok(n) => Json(json!({ done: n })).into_response(),
        Err(err @ (EngineError::StepInFlow { .. } | EngineError::UnknownStep { .. })) => {
            let body = json!({ "code": "refused", "message": err.to_string() });
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
        Err(err) => unavailable(err),
    }
}
