//! Cross-origin access for browsers (CORS): which pages on other origins may
//! call the API steps, with which methods and headers. Nothing is allowed
//! until an origin is named.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The response headers a script on an allowed origin may read, beside the
/// ones every browser shows: the wait a `429` asks for, the request's trace,
/// and the idempotency headers of a replayed answer.
pub const EXPOSED_HEADERS: [&str; 4] = [
    "retry-after",
    "x-trace-id",
    "idempotency-key",
    "idempotent-replayed",
];

/// The request headers allowed by default once an origin is: the API key's
/// `Authorization`, a JSON body's `Content-Type`, an `Idempotency-Key`, a
/// stream's `Last-Event-ID` (a page reading it with `fetch` resumes with it)
/// and an `X-Trace-Id`. The tenant header of
/// [`HttpOptions`](super::HttpOptions) is added to them.
pub const DEFAULT_ALLOWED_HEADERS: [&str; 5] = [
    "authorization",
    "content-type",
    "idempotency-key",
    "last-event-id",
    "x-trace-id",
];

/// Why a CORS setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorsError {
    /// An origin is `scheme://host[:port]`, with nothing after it.
    #[error("invalid origin {origin:?}: {reason}")]
    Origin {
        /// The origin as given (cut to 200 characters).
        origin: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A header name with characters HTTP does not allow.
    #[error("invalid header name {0:?}")]
    Header(String),
    /// A method name HTTP does not allow.
    #[error("invalid method {0:?}")]
    Method(String),
}

/// Which other origins may call the API steps from a browser, for
/// [`HttpOptions::cors`](super::HttpOptions::cors).
///
/// Once an origin is allowed, the browser's preflight (`OPTIONS`) is answered
/// on every path, and answers carry `Access-Control-Allow-Origin` for that
/// origin only. Methods default to `GET`, `POST`, `PUT`, `PATCH` and
/// `DELETE`; request headers to [`DEFAULT_ALLOWED_HEADERS`] and the tenant
/// header; scripts may read [`EXPOSED_HEADERS`]. Credentials (cookies) are
/// not allowed: the API is called with headers.
///
/// ```
/// use flowline::http::{Cors, HttpOptions};
/// let options = HttpOptions::new()
///     .tenant_header("X-Store-ID")
///     .cors(Cors::new().allow_origin("http://127.0.0.1:5173")?);
/// assert!(options.cors_settings().allows("http://127.0.0.1:5173"));
/// assert!(!options.cors_settings().allows("http://evil.example"));
///
/// assert!(Cors::new().allow_origin("http://127.0.0.1:5173/shop").is_err());
/// # Ok::<(), flowline::http::CorsError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Cors {
    origins: Vec<HeaderValue>,
    methods: Vec<Method>,
    headers: Vec<HeaderName>,
    max_age: Duration,
}

impl Default for Cors {
    fn default() -> Self {
        Cors {
            origins: Vec::new(),
            methods: vec![
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ],
            headers: DEFAULT_ALLOWED_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            max_age: Duration::from_secs(600),
        }
    }
}

impl Cors {
    /// No origin allowed yet; the default methods and headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows the page at `origin` (`http://127.0.0.1:5173`,
    /// `https://shop.example.com`), compared exactly, as browsers send it.
    ///
    /// # Errors
    /// [`CorsError::Origin`] for anything but `http` or `https`, a host and
    /// an optional port: a path, a trailing slash, a wildcard or `null`.
    pub fn allow_origin(mut self, origin: &str) -> Result<Self, CorsError> {
        self.origins.push(parse_origin(origin)?);
        Ok(self)
    }

    /// Replaces the allowed methods.
    ///
    /// # Errors
    /// [`CorsError::Method`] for a name HTTP does not allow.
    pub fn allow_methods<'a>(
        mut self,
        methods: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, CorsError> {
        self.methods = methods
            .into_iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| CorsError::Method(m.into())))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// Allows one more request header.
    ///
    /// # Errors
    /// [`CorsError::Header`] for a name HTTP does not allow.
    pub fn allow_header(mut self, name: &str) -> Result<Self, CorsError> {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| CorsError::Header(name.chars().take(200).collect()))?;
        if !self.headers.contains(&header) {
            self.headers.push(header);
        }
        Ok(self)
    }

    /// How long a browser may keep a preflight's answer (10 minutes by default).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Whether a page at `origin` may call.
    pub fn allows(&self, origin: &str) -> bool {
        self.origins
            .iter()
            .any(|o| o.as_bytes() == origin.as_bytes())
    }

    /// True when no origin is allowed: the router adds no CORS layer at all.
    pub fn is_disabled(&self) -> bool {
        self.origins.is_empty()
    }

    /// The layer, with the tenant header allowed too; `None` when no origin is.
    pub(crate) fn layer(&self, tenant_header: &str) -> Option<CorsLayer> {
        if self.is_disabled() {
            return None;
        }
        let mut headers = self.headers.clone();
        if let Ok(tenant) = HeaderName::from_bytes(tenant_header.as_bytes()) {
            if !headers.contains(&tenant) {
                headers.push(tenant);
            }
        }
        let exposed: Vec<HeaderName> = EXPOSED_HEADERS
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect();
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(self.origins.clone()))
                .allow_methods(self.methods.clone())
                .allow_headers(headers)
                .expose_headers(exposed)
                .max_age(self.max_age),
        )
    }
}

/// `scheme://host[:port]`, lowercased scheme and host, as a browser's
/// `Origin` header has it.
fn parse_origin(origin: &str) -> Result<HeaderValue, CorsError> {
    let refuse = |reason| CorsError::Origin {
        origin: origin.chars().take(200).collect(),
        reason,
    };
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or_else(|| refuse("must start with http:// or https://"))?;
    if rest.is_empty() {
        return Err(refuse("has no host"));
    }
    if rest.contains(['/', '?', '#', '*', '@']) {
        return Err(refuse(
            "must be scheme://host[:port] with no path, query, wildcard or user",
        ));
    }
    if rest.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(refuse("must be lowercase, as browsers send it"));
    }
    if !rest
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return Err(refuse("has a character a host or port cannot have"));
    }
    if let Some((_, port)) = rest.rsplit_once(':').filter(|_| !rest.ends_with(']')) {
        if port.parse::<u16>().is_err() {
            return Err(refuse("has a port that is not a number from 0 to 65535"));
        }
    }
    HeaderValue::from_str(origin).map_err(|_| refuse("is not a valid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        for good in [
            "http://127.0.0.1:5173",
            "https://shop.example.com",
            "http://localhost",
            "http://[::1]:8080",
        ] {
            assert!(Cors::new().allow_origin(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "*",
            "null",
            "127.0.0.1:5173",
            "ftp://example.com",
            "http://",
            "http://example.com/",
            "http://example.com/shop",
            "http://*.example.com",
            "http://Example.com",
            "http://example.com:http",
            "http://example.com:70000",
            "http://user@example.com",
            "http://exa mple.com",
        ] {
            assert!(
                matches!(Cors::new().allow_origin(bad), Err(CorsError::Origin { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn nothing_is_allowed_until_an_origin_is() {
        let cors = Cors::new();
        assert!(cors.is_disabled());
        assert!(cors.layer("x-store-id").is_none());
        assert!(!cors.allows("http://127.0.0.1:5173"));
    }

    #[test]
    fn bad_methods_and_headers_are_typed_errors() {
        assert!(matches!(
            Cors::new().allow_methods(["GET", "PO ST"]),
            Err(CorsError::Method(_))
        ));
        assert!(matches!(
            Cors::new().allow_header("x store"),
            Err(CorsError::Header(_))
        ));
    }
}
