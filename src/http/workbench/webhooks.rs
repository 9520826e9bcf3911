//! The workbench's view of webhooks (feature `webhooks`): a tenant's
//! endpoints with their newest deliveries, and a replay of a message given
//! up on. Served by [`workbench_webhooks_router`] beside the workbench; the
//! page shows the card when this answers.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::api::ApiResponse;
use crate::event::TenantId;
use crate::http::answer::from_api_response;
use crate::webhooks::WebhookEndpoints;

/// How many of each endpoint's newest deliveries the page shows.
const SHOWN: usize = 20;

/// `GET /_flowline/api/webhooks?tenant=X` (a tenant's endpoints, each with
/// its newest deliveries) and `POST /_flowline/api/webhooks/replay`
/// (`{"tenant", "endpoint", "messageId"}`), for the workbench page. Put it
/// behind the same key as the workbench.
///
/// ```no_run
/// # async fn serve(engine: flowline::Engine, webhooks: flowline::webhooks::Webhooks) -> std::io::Result<()> {
/// use flowline::http::{workbench_router, workbench_webhooks_router};
/// let app = workbench_router(engine.clone())
///     .merge(workbench_webhooks_router(webhooks.endpoints(engine)));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app).await
/// # }
/// ```
pub fn workbench_webhooks_router(endpoints: WebhookEndpoints) -> Router {
    Router::new()
        .route("/_flowline/api/webhooks", get(list))
        .route("/_flowline/api/webhooks/replay", post(replay))
        .with_state(endpoints)
}

/// A JSON error `{"code", "message"}`, as the API steps answer.
fn refused(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    from_api_response(ApiResponse::error(
        status.as_u16(),
        code,
        message.to_string(),
    ))
}

#[derive(Deserialize)]
struct TenantQuery {
    tenant: Option<String>,
}

async fn list(
    State(endpoints): State<WebhookEndpoints>,
    Query(query): Query<TenantQuery>,
) -> Response {
    let Some(tenant) = query.tenant.filter(|t| !t.is_empty()) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "tenant_required",
            "endpoints belong to a tenant: pick one",
        );
    };
    let tenant = match TenantId::new(tenant.trim()) {
        Ok(tenant) => tenant,
        Err(err) => return refused(StatusCode::BAD_REQUEST, "invalid_tenant", err),
    };
    let listed = match endpoints.list(&tenant).await {
        Ok(listed) => listed,
        Err(err) => return refused(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", err),
    };
    let mut out = Vec::with_capacity(listed.len());
    for endpoint in listed {
        let deliveries = endpoints
            .deliveries(&tenant, &endpoint.id, SHOWN)
            .await
            .unwrap_or_default();
        let mut shown = json!(endpoint);
        shown["deliveries"] = json!(deliveries);
        out.push(shown);
    }
    Json(json!({ "tenant": tenant, "endpoints": out })).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReplayBody {
    tenant: String,
    endpoint: String,
    message_id: String,
}

async fn replay(
    State(endpoints): State<WebhookEndpoints>,
    body: Result<Json<ReplayBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(err) => return refused(StatusCode::BAD_REQUEST, "invalid_body", err.body_text()),
    };
    let tenant = match TenantId::new(body.tenant.trim()) {
        Ok(tenant) => tenant,
        Err(err) => return refused(StatusCode::BAD_REQUEST, "invalid_tenant", err),
    };
    match endpoints
        .replay(&tenant, &body.endpoint, &body.message_id)
        .await
    {
        Ok(true) => (
            StatusCode::ACCEPTED,
            Json(json!({ "replayed": body.message_id })),
        )
            .into_response(),
        Ok(false) => refused(
            StatusCode::NOT_FOUND,
            "message_not_dead_lettered",
            "not in the dead letters",
        ),
        Err(err) => refused(StatusCode::NOT_FOUND, "endpoint_not_found", err),
    }
}
