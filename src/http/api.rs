//! A flow's API steps over HTTP: each request becomes an [`ApiRequest`] for
//! [`Engine::call`], its answer an HTTP response.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tracing::Instrument;

use super::answer::from_api_response;
use super::error::HttpError;
use super::keys::{check_store_key, BEARER};
use super::options::HttpOptions;
use crate::api::{ApiRequest, Method};
use crate::engine::trace_link;
use crate::engine::Engine;
use crate::event::{TenantId, TraceId};
use crate::trace_context::{TraceParent, TRACEPARENT_HEADER, TRACESTATE_HEADER};

/// The header a trace id comes in and goes out on.
pub const TRACE_HEADER: &str = "x-trace-id";

struct ApiState {
    engine: Engine,
    options: HttpOptions,
}

/// The flow's API steps as an axum [`Router`].
///
/// Every request is routed the way [`Engine::call`] routes it (the steps'
/// patterns, in registration order): a path no step answers is a `404`, a
/// method other than the ones its steps answer a `405` with `Allow`, both
/// JSON errors. Before a step runs, the request must name its tenant in the
/// header [`HttpOptions::tenant_header`], carry a JSON body (or none) no
/// larger than [`HttpOptions::body_limit`]; each failed check is a `4xx`
/// [`HttpError`], and nothing runs or is stored. Headers go to the step as
/// they came (so an `Idempotency-Key` reaches it); the `X-Trace-Id` header,
/// if it holds a trace id, is the trace the call's events join, and every
/// response carries the trace id in `X-Trace-Id`. Each request runs in a
/// `http` tracing span (method, path, tenant, trace id, status). With
/// origins allowed in [`HttpOptions::cors`], browsers' preflights are
/// answered on every path and answers carry the CORS headers.
///
/// The router's fallback answers every request: merge it *last* into a
/// router of your own that has no fallback, or nest it under a prefix.
///
/// ```no_run
/// # async fn serve(engine: flowline::Engine) -> std::io::Result<()> {
/// use flowline::http::{api_router, HttpOptions};
/// let app = axum::Router::new()
///     .route("/health", axum::routing::get(|| async { "ok" }))
///     .merge(api_router(engine, HttpOptions::new().tenant_header("X-Store-ID")));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app)
///     .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
///     .await
/// # }
/// ```
pub fn api_router(engine: Engine, options: HttpOptions) -> Router {
    let cors = options.cors_settings().layer(options.tenant_header_name());
    let state = Arc::new(ApiState { engine, options });
    let router = Router::new().fallback(call_step).with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

async fn call_step(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let span = tracing::info_span!(
        "http",
        method = %method,
        path = %path,
        tenant = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    // A malformed `traceparent` is ignored: the request starts a new trace.
    let carried = trace_link::join(&span, trace_parent_of(request.headers()).as_ref());
    let trace = match &carried {
        Some(parent) => parent.trace_id(),
        None => match trace_of(request.headers()) {
            Ok(trace) => trace,
            Err(err) => return err.into_response(),
        },
    };
    span.record("trace_id", tracing::field::display(trace));
    let answer = async {
        if let Err(refused) = check_route(&state.engine, &method, &path) {
            tracing::debug!(error = %refused, "request refused");
            return refused.into_response();
        }
        if let Some(auth) = state.options.auth() {
            let store = tenant_of(&state.options, request.headers());
            if let Err(denied) = check_store_key(auth, request.headers(), &method, store).await {
                return denied.into_response(BEARER);
            }
        }
        match to_api_request(&state.options, request, trace, carried).await {
            Ok(api) => {
                tracing::Span::current().record("tenant", api.tenant.as_str());
                from_api_response(state.engine.call(api).await)
            }
            Err(err) => {
                tracing::debug!(error = %err, "request refused");
                err.into_response()
            }
        }
    }
    .instrument(span.clone())
    .await;
    span.record("status", answer.status().as_u16());
    with_trace(answer, trace)
}

/// `404` when no API step answers the path, `405` (with `Allow`) when steps
/// answer it with other methods.
fn check_route(engine: &Engine, method: &axum::http::Method, path: &str) -> Result<(), HttpError> {
    let allowed = engine.flow().methods_for(path);
    if method_of(method).is_some_and(|m| allowed.contains(&m)) {
        return Ok(());
    }
    if allowed.is_empty() {
        return Err(HttpError::NotFound {
            method: method.to_string(),
            path: path.to_string(),
        });
    }
    Err(HttpError::MethodNotAllowed {
        method: method.to_string(),
        allowed: allowed.iter().map(ToString::to_string).collect(),
    })
}

/// The request's W3C trace parent, if it sent a well-formed one.
fn trace_parent_of(headers: &HeaderMap) -> Option<TraceParent> {
    let parent: TraceParent = headers
        .get(TRACEPARENT_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    // Several `tracestate` headers are one list, in order.
    let states: Vec<&str> = headers
        .get_all(TRACESTATE_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    Some(if states.is_empty() {
        parent
    } else {
        parent.with_state(&states.join(","))
    })
}

/// The request's trace when it sent no `traceparent`: the `X-Trace-Id`
/// header's, or a new one.
fn trace_of(headers: &HeaderMap) -> Result<TraceId, HttpError> {
    match headers.get(TRACE_HEADER) {
        None => Ok(TraceId::new()),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| HttpError::InvalidHeader {
                name: TRACE_HEADER.to_string(),
                reason: "must be a trace id (a UUID)".to_string(),
            }),
    }
}

async fn to_api_request(
    options: &HttpOptions,
    request: Request,
    trace: TraceId,
    trace_parent: Option<TraceParent>,
) -> Result<ApiRequest, HttpError> {
    let (parts, body) = request.into_parts();
    let method = method_of(&parts.method).ok_or_else(|| HttpError::NotFound {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
    })?;
    let tenant = tenant_of(options, &parts.headers)?;
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        // What the trace headers said is in `trace_parent`, checked.
        if name == TRACEPARENT_HEADER || name == TRACESTATE_HEADER {
            continue;
        }
        let value = value.to_str().map_err(|_| HttpError::InvalidHeader {
            name: name.to_string(),
            reason: "must be visible ASCII".to_string(),
        })?;
        headers.push((name.to_string(), value.to_string()));
    }
    if let Some(parent) = trace_parent {
        parent.write_headers(&mut headers);
    }
    let body = json_body(options, &parts.headers, body).await?;
    let mut api = ApiRequest::new(method, parts.uri.path(), tenant)
        .json(body)
        .trace(trace);
    api.headers = headers;
    Ok(api)
}

fn method_of(method: &axum::http::Method) -> Option<Method> {
    Some(match *method {
        axum::http::Method::GET => Method::Get,
        axum::http::Method::POST => Method::Post,
        axum::http::Method::PUT => Method::Put,
        axum::http::Method::PATCH => Method::Patch,
        axum::http::Method::DELETE => Method::Delete,
        _ => return None,
    })
}

pub(crate) fn tenant_of(options: &HttpOptions, headers: &HeaderMap) -> Result<TenantId, HttpError> {
    let header = options.tenant_header_name();
    let value = headers
        .get(header)
        .ok_or_else(|| HttpError::MissingTenant {
            header: header.to_string(),
        })?;
    let invalid = |reason: String| HttpError::InvalidTenant {
        header: header.to_string(),
        reason,
    };
    let text = value
        .to_str()
        .map_err(|_| invalid("must be visible ASCII".to_string()))?;
    TenantId::new(text.trim()).map_err(|e| invalid(e.to_string()))
}

/// The body as JSON: `null` when empty; else it must say it is JSON, fit the
/// limit and parse.
async fn json_body(
    options: &HttpOptions,
    headers: &HeaderMap,
    body: Body,
) -> Result<serde_json::Value, HttpError> {
    let limit = options.body_limit_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(HttpError::PayloadTooLarge { limit });
    }
    let bytes = to_bytes(body, limit).await.map_err(|err| {
        let too_large = std::error::Error::source(&err)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            HttpError::PayloadTooLarge { limit }
        } else {
            HttpError::BadBody(err.to_string())
        }
    })?;
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_json(content_type) {
        return Err(HttpError::UnsupportedMediaType(content_type.to_string()));
    }
    serde_json::from_slice(&bytes).map_err(|e| HttpError::InvalidJson(e.to_string()))
}

/// `application/json`, `application/problem+json` and the like, any parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn with_trace(mut response: Response, trace: TraceId) -> Response {
    if let Ok(value) = HeaderValue::try_from(trace.to_string()) {
        response.headers_mut().insert(TRACE_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types() {
        for yes in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/problem+json",
        ] {
            assert!(is_json(yes), "{yes}");
        }
        for no in [
            "",
            "text/plain",
            "application/x-www-form-urlencoded",
            "text/json+html",
        ] {
            assert!(!is_json(no), "{no}");
        }
    }
}
