//! Framework-neutral request and response types for API steps.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::event::{TenantId, TraceId};

/// An HTTP method an API step answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        })
    }
}

/// A request to an API step.
///
/// The host (an HTTP framework adapter, or a test) resolves the tenant before the
/// request reaches the engine; the handler sees only that tenant's state.
///
/// ```
/// use flowline::{ApiRequest, Method, TenantId};
/// let request = ApiRequest::new(Method::Post, "/orders", TenantId::new("X").unwrap())
///     .header("Idempotency-Key", "abc")
///     .json(serde_json::json!({"sku": "tea", "qty": 2}));
/// assert_eq!(request.header_value("idempotency-key"), Some("abc"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ApiRequest {
    /// The HTTP method.
    pub method: Method,
    /// The request path, e.g. `/orders/42`.
    pub path: String,
    /// The tenant the request acts for.
    pub tenant: TenantId,
    /// Request headers, in order.
    pub headers: Vec<(String, String)>,
    /// Path parameters matched from the step's pattern (`{id}` -> `"42"`).
    pub params: BTreeMap<String, String>,
    /// The JSON body (`null` when there is none).
    pub body: serde_json::Value,
    /// The trace the call joins (an HTTP front end carries it from a request
    /// header); `None` starts a new one.
    pub trace_id: Option<TraceId>,
}

impl ApiRequest {
    /// A request with no headers and a `null` body.
    pub fn new(method: Method, path: impl Into<String>, tenant: TenantId) -> Self {
        ApiRequest {
            method,
            path: path.into(),
            tenant,
            headers: Vec::new(),
            params: BTreeMap::new(),
            body: serde_json::Value::Null,
            trace_id: None,
        }
    }

    /// Joins the call to `trace`: its events carry that trace id.
    #[must_use]
    pub fn trace(mut self, trace: TraceId) -> Self {
        self.trace_id = Some(trace);
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the JSON body.
    #[must_use]
    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.body = body;
        self
    }

    /// The first header with this name, compared case-insensitively.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A path parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// The response of an API step: a status and a JSON body.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ApiResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: serde_json::Value,
}

impl ApiResponse {
    /// A response with `status` and a serialized body (`null` if it cannot serialize).
    pub fn json<T: Serialize + ?Sized>(status: u16, body: &T) -> Self {
        ApiResponse {
            status,
            headers: Vec::new(),
            body: serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
        }
    }

    /// `200 OK` with a body.
    pub fn ok<T: Serialize + ?Sized>(body: &T) -> Self {
        Self::json(200, body)
    }

    /// An error response: `{"code": code, "message": message}`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::json(
            status,
            &serde_json::json!({ "code": code, "message": message.into() }),
        )
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The first header with this name, compared case-insensitively.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True for 2xx statuses.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A parsed route pattern, e.g. `/orders/{id}/items`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PathPattern {
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

impl PathPattern {
    pub(crate) fn parse(pattern: &str) -> Result<Self, &'static str> {
        if !pattern.starts_with('/') {
            return Err("must start with '/'");
        }
        let mut segments = Vec::new();
        for part in pattern.split('/').skip(1).filter(|s| !s.is_empty()) {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err("a parameter must be '{name}' with letters, digits or '_'");
                }
                segments.push(Segment::Param(name.to_string()));
            } else if part.contains(['{', '}']) {
                return Err("braces must enclose a whole segment");
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(PathPattern { segments })
    }

    pub(crate) fn matches(&self, path: &str) -> Option<BTreeMap<String, String>> {
        let path = path.split('?').next().unwrap_or(path);
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut params = BTreeMap::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => {
                    params.insert(name.clone(), part.to_string());
                }
            }
        }
        Some(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns_match_and_extract_params() {
        let p = PathPattern::parse("/orders/{id}/track").unwrap();
        let params = p.matches("/orders/42/track?x=1").unwrap();
        assert_eq!(params["id"], "42");
        assert!(p.matches("/orders/42").is_none());
        assert!(p.matches("/order/42/track").is_none());
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(PathPattern::parse("orders").is_err());
        assert!(PathPattern::parse("/orders/{}").is_err());
        assert!(PathPattern::parse("/orders/x{id}").is_err());
    }
}
