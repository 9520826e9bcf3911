//! `GET /metrics`: the engine's metrics for Prometheus (feature `prometheus`).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::prometheus::{PrometheusExporter, CONTENT_TYPE as OPENMETRICS};

/// The route Prometheus scrapes: `GET /metrics`, OpenMetrics text.
///
/// It says what the engine does: put it behind
/// [`operator_only`](crate::http::operator_only) where API keys are on (a
/// Prometheus scrape config sends the key as `authorization: credentials`).
///
/// ```
/// use flowline::http::metrics_router;
/// use flowline::prometheus::PrometheusExporter;
/// # use flowline::{Engine, Flow};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let engine = Engine::builder(Flow::builder().build()?).start().await?;
/// let app = metrics_router(PrometheusExporter::new(engine.clone()));
/// # let _: axum::Router = app;
/// # Ok(())
/// # }
/// ```
pub fn metrics_router(exporter: PrometheusExporter) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(exporter)
}

async fn scrape(State(exporter): State<PrometheusExporter>) -> impl IntoResponse {
    ([(CONTENT_TYPE, OPENMETRICS)], exporter.render().await)
}
