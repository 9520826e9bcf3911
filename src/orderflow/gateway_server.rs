//! [`gateway_router`]: the [`MockGateway`] served over HTTP (feature `axum`), the
//! seed's mock bank (SEED_SPEC §4) as the roadmap wanted it: charged with a POST,
//! idempotent on its key, with declines, 5xx answers, lost responses and outages
//! that look on the wire as they would from a real payment provider.
//!
//! | route | answers |
//! |---|---|
//! | `POST /charges` | body: a [`ChargeRequest`] as JSON. `201` the [`Charge`]; `402 {"code":"declined","message"}`; `409 {"code":"key_reused","message","key"}`; `503 {"code":"unavailable","message"}` in an outage; `5xx {"code":"server_error","message"}` for a simulated server error; a lost response: no answer (below) |
//! | `POST /refunds/{transaction_id}` | `200` the [`Refund`] (again on a second call); `404 {"code":"unknown_transaction","message"}`; `503` in an outage |
//! | `GET /ledger` | `200`, every [`LedgerEntry`](super::LedgerEntry) as a JSON array, in the order decided |
//! | `GET /health` | `200 {"status":"ok"}` |
//!
//! Bad input is a `4xx` with a JSON `{"code","message"}` body, never a `500`:
//! malformed JSON `400 invalid_json`; JSON of the wrong shape `422 invalid_charge`;
//! a body not declared `application/json` `415 unsupported_media_type`; a body
//! over 64 KiB `413 body_too_large`; an unknown route `404 not_found`; a known
//! route with another method `405 method_not_allowed`.
//!
//! **A lost response** (the mock captured the charge, then "lost" its answer)
//! looks like one: the server says nothing. It holds the request open for
//! 30 seconds, longer than any sane client timeout, so the client's own timeout
//! fires and it cannot know whether the money was taken. A client that gives up
//! and closes the connection ends the hold at once. A client still waiting after
//! 30 seconds gets `504 {"code":"lost_response"}`, which means the same thing:
//! the outcome is unknown, and a retry with the same idempotency key finds the
//! charge instead of making a second one.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::gateway::{ChargeRequest, GatewayError, MockGateway, PaymentGateway};

/// The largest request body the server reads.
const BODY_LIMIT: usize = 64 * 1024;

/// How long a lost response keeps the caller waiting before the server gives up
/// on it too.
const LOST_RESPONSE_HOLD: Duration = Duration::from_secs(30);

/// The [`MockGateway`] as an axum [`Router`] speaking JSON (the module docs list
/// the routes, statuses and bodies). Clones of `gateway` share its ledger, so a
/// test keeps one to read what the server charged.
///
/// ```no_run
/// use flowline::orderflow::{gateway_router, MockGateway};
/// use flowline::Clock;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let gateway = MockGateway::builder().seed(7).approval_rate(0.9).build(Clock::system())?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:4100").await?;
/// axum::serve(listener, gateway_router(gateway.clone())).await?;
/// # Ok(())
/// # }
/// ```
pub fn gateway_router(gateway: MockGateway) -> Router {
    Router::new()
        .route("/charges", post(charge))
        .route("/refunds/{transaction_id}", post(refund))
        .route("/ledger", get(ledger))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(gateway)
}

async fn charge(
    State(gateway): State<MockGateway>,
    body: Result<Json<ChargeRequest>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return json_rejection(&rejection),
    };
    let outcome = gateway.charge(&request).await;
    tracing::debug!(
        order_id = %request.order_id,
        key = %request.idempotency_key,
        outcome = ?outcome,
        "mock gateway charge"
    );
    match outcome {
        Ok(charge) => (StatusCode::CREATED, Json(charge)).into_response(),
        Err(GatewayError::Timeout) => {
            // Captured, answer lost: say nothing until the caller gives up.
            tokio::time::sleep(LOST_RESPONSE_HOLD).await;
            gateway_error(&GatewayError::Timeout)
        }
        Err(err) => gateway_error(&err),
    }
}

async fn refund(
    State(gateway): State<MockGateway>,
    transaction_id: Result<Path<String>, PathRejection>,
) -> Response {
    let transaction_id = match transaction_id {
        Ok(Path(id)) => id,
        Err(rejection) => {
            let status = client_error(rejection.status());
            return error(status, "invalid_path", rejection.body_text());
        }
    };
    match gateway.refund(&transaction_id).await {
        Ok(refund) => (StatusCode::OK, Json(refund)).into_response(),
        Err(err) => gateway_error(&err),
    }
}

async fn ledger(State(gateway): State<MockGateway>) -> Response {
    Json(gateway.ledger()).into_response()
}

async fn health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
}

/// The answer for what the mock decided, when it is not a success.
fn gateway_error(err: &GatewayError) -> Response {
    let message = err.to_string();
    match err {
        GatewayError::Declined { reason } => {
            error(StatusCode::PAYMENT_REQUIRED, "declined", reason.clone())
        }
        GatewayError::KeyReused { key } => (
            StatusCode::CONFLICT,
            Json(json!({ "code": "key_reused", "message": message, "key": key })),
        )
            .into_response(),
        GatewayError::Unavailable => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
        GatewayError::ServerError { status } => {
            let status = StatusCode::from_u16(*status)
                .ok()
                .filter(StatusCode::is_server_error)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(status, "server_error", message)
        }
        GatewayError::Timeout => error(StatusCode::GATEWAY_TIMEOUT, "lost_response", message),
        GatewayError::UnknownTransaction(_) => {
            error(StatusCode::NOT_FOUND, "unknown_transaction", message)
        }
    }
}

/// A `4xx` naming what was wrong with the body.
fn json_rejection(rejection: &JsonRejection) -> Response {
    let code = match rejection {
        JsonRejection::JsonSyntaxError(_) => "invalid_json",
        JsonRejection::JsonDataError(_) => "invalid_charge",
        JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
        JsonRejection::BytesRejection(_) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            "body_too_large"
        }
        _ => "unreadable_body",
    };
    error(
        client_error(rejection.status()),
        code,
        rejection.body_text(),
    )
}

/// `status` if it blames the client, else `400`: bad input is never a 5xx.
fn client_error(status: StatusCode) -> StatusCode {
    if status.is_client_error() {
        status
    } else {
        StatusCode::BAD_REQUEST
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({ "code": code, "message": message.into() });
    (status, Json(body)).into_response()
}
