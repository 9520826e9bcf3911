//! The HTTP face (feature `axum`): a flow's API steps as an axum
//! [`Router`](axum::Router) ([`api_router`]), and the workbench, a page an
//! operator keeps open to watch the engine ([`workbench_router`]).
//!
//! | file | its one job |
//! |---|---|
//! | `answer.rs` | an API step's answer as an HTTP response |
//! | `api.rs` | requests to [`ApiRequest`](crate::ApiRequest)s for [`Engine::call`](crate::Engine::call), and back |
//! | `options.rs` | the tenant header, the body limit, the CORS settings |
//! | `cors.rs` | which other origins browsers may call from ([`Cors`]) |
//! | `error.rs` | the `4xx` answers to requests refused before a step runs |
//! | `keys/` | API keys per store and the operator's, checked before a step runs ([`ApiKeys`], [`admin_router`]) |
//! | `webhooks.rs` | a store's webhook endpoints and their delivery log (feature `webhooks`, [`webhooks_router`]) |
//! | `metrics.rs` | `GET /metrics` for Prometheus (feature `prometheus`, [`metrics_router`]) |
//! | `bundled.rs` | the pages' files compiled into the crate, served |
//! | `workbench/` | the workbench page and the JSON endpoints behind it |
//!
//! ```no_run
//! # async fn serve(engine: flowline::Engine) -> std::io::Result<()> {
//! use flowline::http::{api_router, workbench_router, HttpOptions};
//! let app = workbench_router(engine.clone())
//!     .merge(api_router(engine, HttpOptions::new().tenant_header("X-Store-ID")));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

mod answer;
mod api;
pub(crate) mod bundled;
mod cors;
mod error;
mod keys;
#[cfg(feature = "prometheus")]
mod metrics;
mod options;
#[cfg(feature = "webhooks")]
mod webhooks;
mod workbench;

#[cfg(feature = "orderflow")]
pub(crate) use answer::from_api_response;
pub use api::{api_router, TRACE_HEADER};
pub use cors::{Cors, CorsError, DEFAULT_ALLOWED_HEADERS, EXPOSED_HEADERS};
pub use error::HttpError;
pub use keys::{
    admin_router, operator_only, ApiKey, ApiKeys, AuthError, AuthOptions, KeyError, KeyOwner,
    NewApiKey, Scope,
};
#[cfg(any(feature = "orderflow", feature = "webhooks"))]
pub(crate) use keys::{check_store_key, BEARER};
#[cfg(feature = "prometheus")]
pub use metrics::metrics_router;
pub use options::HttpOptions;
#[cfg(feature = "webhooks")]
pub use webhooks::webhooks_router;
#[cfg(feature = "webhooks")]
pub use workbench::workbench_webhooks_router;
pub use workbench::{workbench_router, WORKBENCH_PATH};
