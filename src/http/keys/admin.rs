//! The admin HTTP API over [`ApiKeys`], behind an operator key.
//!
//! | route | does |
//! |---|---|
//! | `GET /admin/keys` (`?store=X` for one store's) | lists the live keys: `{"keys": [..]}` |
//! | `POST /admin/keys` `{"store": "X", "scopes": [..], "label": ".."}` | creates a key (`"store": null`: an operator key): `201` with the key, shown once |
//! | `POST /admin/keys/{id}/rotate` `{"overlapSeconds": 3600}` | a new key for the same store and scopes; the old one works for the overlap: `201` |
//! | `DELETE /admin/keys/{id}` | revokes it at once: `204`, or `404` |
//!
//! Every answer is JSON in camelCase; a bad body is `400` with a code.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::KeyError;
use super::guard::operator_only;
use super::scope::{KeyOwner, Scope};
use super::store::{ApiKey, ApiKeys, NewApiKey};
use crate::api::ApiResponse;
use crate::event::TenantId;
use crate::http::answer::from_api_response;

/// The longest overlap a rotation may give the old key: 30 days.
const MAX_OVERLAP: Duration = Duration::from_secs(30 * 24 * 3600);

/// The admin API (table above), behind an operator key ([`operator_only`]).
///
/// ```no_run
/// # async fn serve(engine: flowline::Engine) -> std::io::Result<()> {
/// use flowline::http::{admin_router, ApiKeys};
/// let app = admin_router(ApiKeys::new(engine));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app).await
/// # }
/// ```
pub fn admin_router(keys: ApiKeys) -> Router {
    let routes = Router::new()
        .route("/admin/keys", get(list).post(create))
        .route("/admin/keys/{id}/rotate", post(rotate))
        .route("/admin/keys/{id}", axum::routing::delete(revoke))
        .with_state(keys.clone());
    operator_only(routes, keys)
}

/// A JSON error `{"code", "message"}`, as the API steps answer.
fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    from_api_response(ApiResponse::error(
        status.as_u16(),
        code,
        message.to_string(),
    ))
}

fn from_key_error(err: KeyError) -> Response {
    match err {
        KeyError::InvalidScope { .. } => error(StatusCode::BAD_REQUEST, "invalid_scope", err),
        KeyError::NoScopes => error(StatusCode::BAD_REQUEST, "no_scopes", err),
        KeyError::LabelTooLong => error(StatusCode::BAD_REQUEST, "label_too_long", err),
        KeyError::NotFound(_) => error(StatusCode::NOT_FOUND, "key_not_found", err),
        KeyError::Busy(_) => error(StatusCode::CONFLICT, "key_busy", err),
        other => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            other,
        ),
    }
}

fn from_rejection(rejection: JsonRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_body",
        rejection.body_text(),
    )
}

fn key_json(key: &ApiKey) -> Value {
    json!({
        "id": key.id,
        "store": key.owner.store().map(TenantId::as_str),
        "operator": key.is_operator(),
        "scopes": key.scopes,
        "label": key.label,
        "createdAt": key.created_at.as_millis(),
        "expiresAt": key.expires_at.map(|at| at.as_millis()),
    })
}

fn created(new: &NewApiKey) -> Response {
    let mut body = key_json(&new.key);
    body["key"] = json!(new.secret());
    (StatusCode::CREATED, Json(body)).into_response()
}

#[derive(Deserialize)]
struct StoreQuery {
    store: Option<String>,
}

async fn list(
    State(keys): State<ApiKeys>,
    query: Result<Query<StoreQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                rejection.body_text(),
            )
        }
    };
    let store = match query.store {
        None => None,
        Some(store) => match TenantId::new(store.trim()) {
            Ok(store) => Some(store),
            Err(err) => return error(StatusCode::BAD_REQUEST, "invalid_store", err),
        },
    };
    match keys.list(store.as_ref()).await {
        Ok(found) => {
            Json(json!({ "keys": found.iter().map(key_json).collect::<Vec<_>>() })).into_response()
        }
        Err(err) => from_key_error(err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    store: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    label: String,
}

async fn create(
    State(keys): State<ApiKeys>,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return from_rejection(rejection),
    };
    let owner = match body.store {
        None => KeyOwner::Operator,
        Some(store) => match TenantId::new(store.trim()) {
            Ok(store) => KeyOwner::Store(store),
            Err(err) => return error(StatusCode::BAD_REQUEST, "invalid_store", err),
        },
    };
    let scopes: Result<Vec<Scope>, KeyError> = body.scopes.into_iter().map(Scope::new).collect();
    let scopes = match scopes {
        Ok(scopes) => scopes,
        Err(err) => return from_key_error(err),
    };
    match keys.create(owner, &scopes, &body.label).await {
        Ok(new) => created(&new),
        Err(err) => from_key_error(err),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    overlap_seconds: u64,
}

async fn rotate(
    State(keys): State<ApiKeys>,
    Path(id): Path<String>,
    body: Result<Json<RotateBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => return from_rejection(rejection),
    };
    let overlap = Duration::from_secs(body.overlap_seconds);
    if overlap > MAX_OVERLAP {
        return error(
            StatusCode::BAD_REQUEST,
            "overlap_too_long",
            "overlapSeconds is at most 2592000 (30 days)",
        );
    }
    match keys.rotate(&id, overlap).await {
        Ok(new) => created(&new),
        Err(err) => from_key_error(err),
    }
}

async fn revoke(State(keys): State<ApiKeys>, Path(id): Path<String>) -> Response {
    match keys.revoke(&id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            "key_not_found",
            format!("no key {id}"),
        ),
        Err(err) => from_key_error(err),
    }
}
