//! The OpenAPI 3.1 document of the orderflow API, served at `/openapi.json`.
//!
//! Written by hand beside the routes and held to them by a test
//! (`tests/openapi.rs`: every route is in it, and everything in it is a
//! route); CI fuzzes a running server against it with schemathesis (no
//! `5xx`, every answer as documented).

/// The document, as JSON text.
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /openapi.json`: the document (feature `axum`).
///
/// ```
/// let spec: serde_json::Value = serde_json::from_str(flowline::orderflow::OPENAPI)?;
/// assert_eq!(spec["openapi"], "3.1.0");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[cfg(feature = "axum")]
pub fn openapi_router() -> axum::Router {
    use axum::http::header;
    use axum::routing::get;
    axum::Router::new().route(
        "/openapi.json",
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
    )
}
