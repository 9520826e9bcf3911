//! The workbench: one page, served by the host's router at [`WORKBENCH_PATH`],
//! that shows the flow graph drawn from the real wiring, live counts per
//! step, the recent executions with their causes, the dead letters with
//! replay and purge, the cron schedules with their next fire, and any one
//! tenant alone. It reads the JSON endpoints below when `GET /_flowline/api/live`
//! (server-sent events) says something changed; the page is plain HTML, CSS
//! and JavaScript bundled in the crate (no build step).
//!
//! | endpoint | answers |
//! |---|---|
//! | `GET /_flowline` | the page |
//! | `GET /_flowline/api/live` | server-sent `changed` events: at once, then at most every 500 ms while the engine commits events, at least every 5 s |
//! | `GET /_flowline/api/flow` | the graph: `{"flow": Flow::to_json, "mermaid": Flow::to_mermaid}` |
//! | `GET /_flowline/api/stats[?tenant=T]` | engine counters, the queue, per-step counters (`Engine::step_metrics`); with a tenant, also its dead letters per step and its recent executions per step and outcome |
//! | `GET /_flowline/api/executions[?tenant=T&trace=ID&limit=N]` | recent executions, newest first (`Engine::recent_executions`) |
//! | `GET /_flowline/api/dead-letters[?tenant=T&step=S&kind=K&since=MS&until=MS&after=ID&limit=N]` | dead letters, oldest first, each with its `kind`; `nextAfter` is the cursor of the next page (`null` on the last) |
//! | `POST /_flowline/api/dead-letters/replay` `{"ids": [..]}` or `{"query": {..}}` | `{"replayed": n}`; a query takes the list's filters and acts on every dead letter it matches when the call starts |
//! | `POST /_flowline/api/dead-letters/purge` `{"ids": [..]}` or `{"query": {..}}` | `{"purged": n}` |
//! | `POST /_flowline/api/dead-letters/{id}/replay` `{"payload": {..}}` | replays dead letter `id` with its payload corrected: `{"replayed": 1}`, or `404` |
//! | `GET /_flowline/api/orphans` | deliveries of steps the flow does not have (a step renamed or removed): `{"orphans": [{"step", "pending", "ready", "leased"}]}` |
//! | `POST /_flowline/api/orphans/move` `{"from": S, "to": T}` | hands them to step `T` of the flow: `{"moved": n}`; `409` if `S` is in the flow or `T` is not |
//! | `POST /_flowline/api/orphans/purge` `{"from": S}` | deletes them: `{"purged": n}` |
//! | `GET /_flowline/api/schedules` | cron steps with their expression, zone and next fire |
//!
//! The queue is counted at most once every five seconds however many pages
//! are open (counting it reads every unfinished delivery on PostgreSQL); the
//! counters come from the engine's memory at every read. A
//! bad query (an invalid tenant id or step name, a limit that is not a
//! number) is a `400` JSON error. The workbench shows every tenant's data
//! and can replay and purge: serve it only behind your own authentication.

mod dead_letters;
mod endpoints;
mod live;
mod orphans;
#[cfg(feature = "webhooks")]
mod webhooks;

#[cfg(feature = "webhooks")]
pub use webhooks::workbench_webhooks_router;

use std::sync::Arc;

use axum::extract::FromRef;
use axum::routing::{get, post};
use axum::Router;

use crate::engine::Engine;
use crate::http::bundled;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// What the endpoints share: the engine, and the queue as last counted.
#[derive(Clone)]
struct Workbench {
    engine: Engine,
    queue: Arc<endpoints::QueueCache>,
}

impl FromRef<Workbench> for Engine {
    fn from_ref(workbench: &Workbench) -> Engine {
        workbench.engine.clone()
    }
}

/// Where the workbench is mounted.
pub const WORKBENCH_PATH: &str = "/_flowline";

/// The workbench's page and endpoints, for `engine`, under [`WORKBENCH_PATH`].
///
/// ```no_run
/// # async fn serve(engine: flowline::Engine) -> std::io::Result<()> {
/// let app = flowline::http::workbench_router(engine);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app).await
/// # }
/// ```
pub fn workbench_router(engine: Engine) -> Router {
    Router::new()
        .route("/_flowline", bundled::html(PAGE))
        .route("/_flowline/", bundled::html(PAGE))
        .route("/_flowline/app.js", bundled::javascript(SCRIPT))
        .route("/_flowline/style.css", bundled::css(STYLE))
        .route("/_flowline/api/live", get(live::live))
        .route("/_flowline/api/flow", get(endpoints::flow))
        .route("/_flowline/api/stats", get(endpoints::stats))
        .route("/_flowline/api/executions", get(endpoints::executions))
        .route("/_flowline/api/dead-letters", get(dead_letters::list))
        .route(
            "/_flowline/api/dead-letters/replay",
            post(dead_letters::replay),
        )
        .route(
            "/_flowline/api/dead-letters/purge",
            post(dead_letters::purge),
        )
        .route(
            "/_flowline/api/dead-letters/{id}/replay",
            post(dead_letters::replay_corrected),
        )
        .route("/_flowline/api/orphans", get(orphans::list))
        .route("/_flowline/api/orphans/move", post(orphans::move_to))
        .route("/_flowline/api/orphans/purge", post(orphans::purge))
        .route("/_flowline/api/schedules", get(endpoints::schedules))
        .route("/_flowline/api/limits", get(endpoints::limits))
        .with_state(Workbench {
            engine,
            queue: Arc::default(),
        })
}
