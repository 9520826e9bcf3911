//! What the HTTP front end checks: the tenant header, the body size, the
//! API keys, and which other origins browsers may call it from.

use super::cors::Cors;
use super::keys::AuthOptions;

/// Options for [`api_router`](super::api_router).
///
/// ```
/// let options = flowline::http::HttpOptions::new()
///     .tenant_header("X-Store-ID")
///     .body_limit(64 * 1024);
/// assert_eq!(options.tenant_header_name(), "X-Store-ID");
/// ```
#[derive(Clone, Debug)]
pub struct HttpOptions {
    tenant_header: String,
    body_limit: usize,
    cors: Cors,
    auth: Option<AuthOptions>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            tenant_header: "X-Tenant-ID".to_string(),
            body_limit: 1024 * 1024,
            cors: Cors::new(),
            auth: None,
        }
    }
}

impl HttpOptions {
    /// The tenant from `X-Tenant-ID`, bodies up to 1 MiB, no other origin.
    pub fn new() -> Self {
        Self::default()
    }

    /// The header that names the tenant a request acts for (matched without
    /// regard to case). A request without it, or with a value that is not a
    /// valid tenant id, is refused with `400` before any step runs.
    pub fn tenant_header(mut self, name: impl Into<String>) -> Self {
        self.tenant_header = name.into();
        self
    }

    /// The largest request body accepted, in bytes; larger ones get `413`.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Which pages on other origins may call from a browser; none by default.
    /// See [`Cors`].
    pub fn cors(mut self, cors: Cors) -> Self {
        self.cors = cors;
        self
    }

    /// Requires an API key on every API route ([`AuthOptions`]): checked
    /// before any step runs, `401` without a live key, `403` for a key of
    /// another store or without the route's scope. None by default.
    pub fn api_keys(mut self, auth: AuthOptions) -> Self {
        self.auth = Some(auth);
        self
    }

    /// The key checks, if any.
    pub fn auth(&self) -> Option<&AuthOptions> {
        self.auth.as_ref()
    }

    /// The CORS settings.
    pub fn cors_settings(&self) -> &Cors {
        &self.cors
    }

    /// The tenant header's name.
    pub fn tenant_header_name(&self) -> &str {
        &self.tenant_header
    }

    /// The body limit in bytes.
    pub fn body_limit_bytes(&self) -> usize {
        self.body_limit
    }
}
