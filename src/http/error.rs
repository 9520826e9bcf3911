//! The errors a request can meet before any step runs: each a `4xx` with a
//! JSON body `{"code", "message"}`, the shape the API steps answer with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Why the HTTP front end refused a request before it reached a step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The tenant header is missing.
    #[error("the {header} header is required")]
    MissingTenant {
        /// The header's name.
        header: String,
    },
    /// The tenant header's value is not a valid tenant id.
    #[error("{header}: {reason}")]
    InvalidTenant {
        /// The header's name.
        header: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// The body is larger than the limit.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body is not JSON, or not valid JSON.
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// A body came with a content type other than JSON.
    #[error("the request body must be application/json, got {0:?}")]
    UnsupportedMediaType(String),
    /// A header value is not visible ASCII / UTF-8, or the trace id is malformed.
    #[error("header {name}: {reason}")]
    InvalidHeader {
        /// The header's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The body could not be read.
    #[error("the request body could not be read: {0}")]
    BadBody(String),
    /// No API step answers this path.
    #[error("no route for {method} {path}")]
    NotFound {
        /// The method.
        method: String,
        /// The path.
        path: String,
    },
    /// No API key, or not a live one (`401`). It says nothing of the store.
    #[error("a valid API key is required")]
    Unauthorized,
    /// The key may not act in this store or with this scope (`403`). It
    /// says nothing of whether the store exists.
    #[error("this key may not do this here")]
    Forbidden,
    /// A route exists for the path, not for this method.
    #[error("{method} is not allowed here; allowed: {}", allowed.join(", "))]
    MethodNotAllowed {
        /// The method.
        method: String,
        /// The methods the path's steps answer.
        allowed: Vec<String>,
    },
}

impl HttpError {
    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::MissingTenant { .. }
            | HttpError::InvalidTenant { .. }
            | HttpError::InvalidJson(_)
            | HttpError::InvalidHeader { .. }
            | HttpError::BadBody(_) => StatusCode::BAD_REQUEST,
            HttpError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HttpError::NotFound { .. } => StatusCode::NOT_FOUND,
            HttpError::Unauthorized => StatusCode::UNAUTHORIZED,
            HttpError::Forbidden => StatusCode::FORBIDDEN,
            HttpError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// Its machine-readable code, e.g. `missing_tenant`.
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::MissingTenant { .. } => "missing_tenant",
            HttpError::InvalidTenant { .. } => "invalid_tenant",
            HttpError::PayloadTooLarge { .. } => "payload_too_large",
            HttpError::InvalidJson(_) => "invalid_json",
            HttpError::UnsupportedMediaType(_) => "unsupported_media_type",
            HttpError::InvalidHeader { .. } => "invalid_header",
            HttpError::BadBody(_) => "bad_body",
            HttpError::NotFound { .. } => "not_found",
            HttpError::Unauthorized => "unauthorized",
            HttpError::Forbidden => "forbidden",
            HttpError::MethodNotAllowed { .. } => "method_not_allowed",
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code(), "message": self.to_string() });
        let mut response = (self.status(), Json(body)).into_response();
        if let HttpError::MethodNotAllowed { allowed, .. } = &self {
            if let Ok(value) = axum::http::HeaderValue::try_from(allowed.join(", ")) {
                response
                    .headers_mut()
                    .insert(axum::http::header::ALLOW, value);
            }
        }
        response
    }
}
