//! A store's webhook endpoints over HTTP (features `axum` and `webhooks`),
//! for the operator's key or the store's own key with the `admin` scope.
//!
//! | route under `/admin/stores/{store}/webhooks` | does |
//! |---|---|
//! | `GET` | the store's endpoints: `{"endpoints": [..]}` |
//! | `POST` `{"url", "topics": [..], "secret"?, "description"?}` | registers one: `201` with its `secret`, shown once |
//! | `GET /{id}` | one endpoint |
//! | `DELETE /{id}` | removes it: `204`, or `404` |
//! | `POST /{id}/enable`, `POST /{id}/disable` | turns deliveries on or off |
//! | `POST /{id}/rotate-secret` `{"overlapSeconds"}` | a new secret; the old one signs beside it for the overlap: `{"secret"}` |
//! | `GET /{id}/deliveries?limit=N` | the delivery log, newest first: `{"deliveries": [..]}` |
//! | `POST /{id}/deliveries/{messageId}/replay` | tries a message given up on once more: `202`, or `404` |
//!
//! A bad URL, scheme, destination, topic pattern or secret is `400` with a
//! code; nothing is kept.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::answer::from_api_response;
use super::keys::{ApiKeys, AuthOptions, Scope};
use crate::api::ApiResponse;
use crate::event::TenantId;
use crate::webhooks::{EndpointSpec, WebhookEndpoints, WebhookError, MAX_SECRET_OVERLAP};

#[derive(Clone)]
struct Hooks {
    endpoints: WebhookEndpoints,
}

/// The routes above, for `endpoints`, checked with `keys`.
///
/// ```no_run
/// # async fn serve(engine: flowline::Engine, webhooks: flowline::webhooks::Webhooks) -> std::io::Result<()> {
/// use flowline::http::{webhooks_router, ApiKeys};
/// let app = webhooks_router(webhooks.endpoints(engine.clone()), ApiKeys::new(engine));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app).await
/// # }
/// ```
pub fn webhooks_router(endpoints: WebhookEndpoints, keys: ApiKeys) -> Router {
    let base = "/admin/stores/{store}/webhooks";
    let routes = Router::new()
        .route(base, get(list).post(register))
        .route(&format!("{base}/{{id}}"), get(one).delete(remove))
        .route(&format!("{base}/{{id}}/enable"), post(enable))
        .route(&format!("{base}/{{id}}/disable"), post(disable))
        .route(&format!("{base}/{{id}}/rotate-secret"), post(rotate))
        .route(&format!("{base}/{{id}}/deliveries"), get(deliveries))
        .route(
            &format!("{base}/{{id}}/deliveries/{{message}}/replay"),
            post(replay),
        )
        .with_state(Hooks { endpoints });
    // Every route is the store's administration: its `admin` scope (the
    // operator's key allows every scope).
    let admin = AuthOptions::new(keys).scopes(Scope::admin(), Scope::admin());
    // A route layer: it runs once the route matched, so the path's store is known.
    routes.route_layer(from_fn_with_state(admin, require_store_admin))
}

async fn require_store_admin(
    State(auth): State<AuthOptions>,
    Path(params): Path<Vec<(String, String)>>,
    request: Request,
    next: Next,
) -> Response {
    let store = params
        .iter()
        .find(|(name, _)| name == "store")
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    let store = TenantId::new(store.trim()).map_err(|e| super::HttpError::InvalidTenant {
        header: "path".to_string(),
        reason: e.to_string(),
    });
    match super::check_store_key(&auth, request.headers(), &Method::POST, store).await {
        Ok(_) => next.run(request).await,
        Err(denied) => denied.into_response(super::BEARER),
    }
}

/// A JSON error `{"code", "message"}`, as the API steps answer.
fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    from_api_response(ApiResponse::error(
        status.as_u16(),
        code,
        message.to_string(),
    ))
}

fn from_error(err: WebhookError) -> Response {
    let (status, code) = match &err {
        WebhookError::InvalidUrl(_) => (StatusCode::BAD_REQUEST, "invalid_url"),
        WebhookError::UnsupportedScheme(_) => (StatusCode::BAD_REQUEST, "unsupported_scheme"),
        WebhookError::Destination(_) => (StatusCode::BAD_REQUEST, "refused_destination"),
        WebhookError::InvalidPattern(_) => (StatusCode::BAD_REQUEST, "invalid_topic_pattern"),
        WebhookError::UnknownTopic(_) => (StatusCode::BAD_REQUEST, "unknown_topic"),
        WebhookError::PatternCount => (StatusCode::BAD_REQUEST, "topic_count"),
        WebhookError::DescriptionTooLong => (StatusCode::BAD_REQUEST, "description_too_long"),
        WebhookError::Secret(_) => (StatusCode::BAD_REQUEST, "invalid_secret"),
        WebhookError::TooMany(_) => (StatusCode::CONFLICT, "too_many_endpoints"),
        WebhookError::NotFound(_) => (StatusCode::NOT_FOUND, "endpoint_not_found"),
        WebhookError::Busy(_) => (StatusCode::CONFLICT, "endpoint_busy"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
    };
    error(status, code, err)
}

/// A request refused before any endpoint is touched: `400` with a code.
struct Refused {
    code: &'static str,
    message: String,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.code, self.message)
    }
}

fn store_of(store: &str) -> Result<TenantId, Refused> {
    TenantId::new(store.trim()).map_err(|e| Refused {
        code: "invalid_store",
        message: e.to_string(),
    })
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Refused> {
    body.map(|Json(body)| body).map_err(|rejection| Refused {
        code: "invalid_body",
        message: rejection.body_text(),
    })
}

async fn list(State(hooks): State<Hooks>, Path(store): Path<String>) -> Response {
    let store = match store_of(&store) {
        Ok(store) => store,
        Err(refused) => return refused.into_response(),
    };
    match hooks.endpoints.list(&store).await {
        Ok(endpoints) => Json(json!({ "endpoints": endpoints })).into_response(),
        Err(err) => from_error(err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    url: String,
    topics: Vec<String>,
    secret: Option<String>,
    #[serde(default)]
    description: String,
}

async fn register(
    State(hooks): State<Hooks>,
    Path(store): Path<String>,
    given: Result<Json<RegisterBody>, JsonRejection>,
) -> Response {
    let (store, given) = match (store_of(&store), body(given)) {
        (Ok(store), Ok(given)) => (store, given),
        (Err(refused), _) | (_, Err(refused)) => return refused.into_response(),
    };
    let spec = EndpointSpec {
        url: given.url,
        topics: given.topics,
        secret: given.secret,
        description: given.description,
    };
    match hooks.endpoints.register(&store, spec).await {
        Ok(registered) => {
            let mut answer = json!(registered.endpoint);
            answer["secret"] = json!(registered.secret());
            (StatusCode::CREATED, Json(answer)).into_response()
        }
        Err(err) => from_error(err),
    }
}

async fn one(State(hooks): State<Hooks>, Path((store, id)): Path<(String, String)>) -> Response {
    let store = match store_of(&store) {
        Ok(store) => store,
        Err(refused) => return refused.into_response(),
    };
    match hooks.endpoints.get(&store, &id).await {
        Ok(endpoint) => Json(endpoint).into_response(),
        Err(err) => from_error(err),
    }
}

async fn remove(State(hooks): State<Hooks>, Path((store, id)): Path<(String, String)>) -> Response {
    let store = match store_of(&store) {
        Ok(store) => store,
        Err(refused) => return refused.into_response(),
    };
    match hooks.endpoints.remove(&store, &id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => from_error(WebhookError::NotFound(id)),
        Err(err) => from_error(err),
    }
}

async fn set_enabled(hooks: Hooks, store: String, id: String, enabled: bool) -> Response {
    let store = match store_of(&store) {
        Ok(store) => store,
        Err(refused) => return refused.into_response(),
    };
    match hooks.endpoints.set_enabled(&store, &id, enabled).await {
        Ok(endpoint) => Json(endpoint).into_response(),
        Err(err) => from_error(err),
    }
}

async fn enable(State(hooks): State<Hooks>, Path((store, id)): Path<(String, String)>) -> Response {
    set_enabled(hooks, store, id, true).await
}

async fn disable(
    State(hooks): State<Hooks>,
    Path((store, id)): Path<(String, String)>,
) -> Response {
    set_enabled(hooks, store, id, false).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    overlap_seconds: u64,
}

async fn rotate(
    State(hooks): State<Hooks>,
    Path((store, id)): Path<(String, String)>,
    given: Result<Json<RotateBody>, JsonRejection>,
) -> Response {
    let (store, given) = match (store_of(&store), body(given)) {
        (Ok(store), Ok(given)) => (store, given),
        (Err(refused), _) | (_, Err(refused)) => return refused.into_response(),
    };
    let overlap = Duration::from_secs(given.overlap_seconds);
    if overlap > MAX_SECRET_OVERLAP {
        return error(
            StatusCode::BAD_REQUEST,
            "overlap_too_long",
            "overlapSeconds is at most 604800 (7 days)",
        );
    }
    match hooks.endpoints.rotate_secret(&store, &id, overlap).await {
        Ok(secret) => Json(json!({ "secret": secret })).into_response(),
        Err(err) => from_error(err),
    }
}

#[derive(Deserialize)]
struct LogQuery {
    limit: Option<usize>,
}

async fn deliveries(
    State(hooks): State<Hooks>,
    Path((store, id)): Path<(String, String)>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Response {
    let store = match store_of(&store) {
        Ok(store) => store,
        Err(refused) => return refused.into_response(),
    };
    let limit = match query {
        Ok(Query(query)) => query.limit.unwrap_or(50).clamp(1, 1000),
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                rejection.body_text(),
            )
        }
    };
    match hooks.endpoints.deliveries(&store, &id, limit).await {
        Ok(log) => Json(json!({ "deliveries": log })).into_response(),
        Err(err) => from_error(err),
    }
}

async fn replay(
    State(hooks): State<Hooks>,
    Path((store, id, message)): Path<(String, String, String)>,
) -> Response {
    let store = match store_of(&store) {
        Ok(store) => store,
        Err(refused) => return refused.into_response(),
    };
    match hooks.endpoints.replay(&store, &id, &message).await {
        Ok(true) => (StatusCode::ACCEPTED, Json(json!({ "replayed": message }))).into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            "message_not_dead_lettered",
            format!("{message} is not in the dead letters"),
        ),
        Err(err) => from_error(err),
    }
}
