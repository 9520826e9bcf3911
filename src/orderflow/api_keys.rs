//! The scopes of orderflow's routes, for API keys ([`ApiKeys`]): reads
//! (tracking, alerts, the dashboard, the catalogue, the live streams) need
//! `orders:read`, everything else (placing, cancelling, reviewing orders,
//! acknowledging alerts) `orders:write`; a store's `admin` key may do both.

use crate::http::{ApiKeys, AuthOptions, Scope};

/// `orders:read`.
pub fn read_scope() -> Scope {
    Scope::new("orders:read").unwrap_or_else(|_| Scope::admin())
}

/// `orders:write`.
pub fn write_scope() -> Scope {
    Scope::new("orders:write").unwrap_or_else(|_| Scope::admin())
}

/// Keys checked on orderflow's routes with its two scopes.
///
/// ```
/// # use flowline::{Engine, Flow, MemoryBackend};
/// use flowline::http::{ApiKeys, HttpOptions};
/// use flowline::orderflow::{auth_options, STORE_HEADER};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let engine = Engine::builder(Flow::builder().build()?).backend(MemoryBackend::new()).start().await?;
/// let options = HttpOptions::new()
///     .tenant_header(STORE_HEADER)
///     .api_keys(auth_options(ApiKeys::new(engine.clone())));
/// # let _ = options;
/// # Ok(())
/// # }
/// ```
pub fn auth_options(keys: ApiKeys) -> AuthOptions {
    AuthOptions::new(keys).scopes(read_scope(), write_scope())
}
