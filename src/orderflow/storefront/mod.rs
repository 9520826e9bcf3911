//! The store front (features `orderflow` and `axum`): a page a merchant keeps
//! open, bundled in the crate like the workbench, with no build step.
//!
//! A store switcher (X, Y, Z: each sees only its own data), an order form
//! over the store's catalogue and stock (`GET /api/catalogue`), the placed
//! order's live tracking, and a live dashboard (orders by status, revenue,
//! fulfilment rate, recent orders) with alert pop-ups, the last two over
//! server-sent events ([`live_router`](super::live_router)).
//!
//! `?api=http://host:port` points the page at an API on another origin, which
//! must allow the page's origin ([`Cors`](crate::http::Cors)); `?store=Y`
//! opens a store.

use axum::Router;

use crate::http::bundled;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// The store front at `/`, its script and style under `/storefront/`.
///
/// ```no_run
/// # async fn serve(engine: flowline::Engine) -> std::io::Result<()> {
/// use flowline::http::{api_router, HttpOptions};
/// use flowline::orderflow::{live_router, storefront_router, STORE_HEADER};
/// let options = HttpOptions::new().tenant_header(STORE_HEADER);
/// let app = storefront_router()
///     .merge(live_router(engine.clone(), &options))
///     .merge(api_router(engine, options));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app).await
/// # }
/// ```
pub fn storefront_router() -> Router {
    Router::new()
        .route("/", bundled::html(PAGE))
        .route("/storefront/app.js", bundled::javascript(SCRIPT))
        .route("/storefront/style.css", bundled::css(STYLE))
}
