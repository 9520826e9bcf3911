//! The check on a request: the key from `Authorization` (`Bearer <key>`, or
//! HTTP Basic with the key as the password, which browsers prompt for), then
//! whether it may act in the request's store with the route's scope.
//!
//! Nothing tells a caller whether a store exists: a missing or wrong key is
//! `401` whatever the store, and a good key for another store is `403`
//! whether that store exists or not.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::error::AuthError;
use super::scope::Scope;
use super::store::{ApiKey, ApiKeys};
use crate::api::ApiResponse;
use crate::event::TenantId;
use crate::http::answer::from_api_response;
use crate::http::error::HttpError;

/// Keys on the API routes: which keys, and the scope a read (`GET`) and a
/// write (any other method) need; `read` and `write` unless set.
///
/// ```
/// # use flowline::{Engine, Flow, MemoryBackend};
/// use flowline::http::{ApiKeys, AuthOptions, HttpOptions, Scope};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let engine = Engine::builder(Flow::builder().build()?).backend(MemoryBackend::new()).start().await?;
/// let auth = AuthOptions::new(ApiKeys::new(engine.clone()))
///     .scopes(Scope::new("orders:read")?, Scope::new("orders:write")?);
/// let options = HttpOptions::new().tenant_header("X-Store-ID").api_keys(auth);
/// let app = flowline::http::api_router(engine, options);
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct AuthOptions {
    keys: ApiKeys,
    read: Scope,
    write: Scope,
}

impl AuthOptions {
    /// `keys`, with the scopes `read` and `write`.
    pub fn new(keys: ApiKeys) -> Self {
        AuthOptions {
            keys,
            read: Scope::known("read"),
            write: Scope::known("write"),
        }
    }

    /// The scopes a read and a write need.
    pub fn scopes(mut self, read: Scope, write: Scope) -> Self {
        self.read = read;
        self.write = write;
        self
    }

    /// The keys checked.
    pub fn keys(&self) -> &ApiKeys {
        &self.keys
    }

    /// The scope a request with `method` needs.
    pub fn scope_for(&self, method: &Method) -> &Scope {
        if method == Method::GET || method == Method::HEAD {
            &self.read
        } else {
            &self.write
        }
    }
}

/// Why a request was turned away.
pub(crate) enum Denied {
    /// No live key: `401`.
    Unauthenticated,
    /// A key that may not act here: `403`.
    Forbidden,
    /// The request's own fault, found on the way (a bad store header).
    Bad(HttpError),
    /// The backend failed: `503`.
    Unavailable(String),
}

impl Denied {
    /// The answer; `challenge` is the `WWW-Authenticate` of a `401`.
    pub(crate) fn into_response(self, challenge: &'static str) -> Response {
        match self {
            Denied::Unauthenticated => {
                let mut response = HttpError::Unauthorized.into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
                response
            }
            Denied::Forbidden => HttpError::Forbidden.into_response(),
            Denied::Bad(err) => err.into_response(),
            Denied::Unavailable(message) => {
                from_api_response(ApiResponse::error(503, "storage_unavailable", message))
            }
        }
    }
}

/// The challenge of the API routes' `401`.
pub(crate) const BEARER: &str = "Bearer realm=\"flowline\"";
/// The challenge of the operator's pages: browsers ask for the key.
const BASIC: &str = "Basic realm=\"flowline operator\", charset=\"UTF-8\"";

/// The key in `Authorization`, if any: a bearer token, or Basic's password
/// (its user name when the password is empty).
fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = String::from_utf8(STANDARD.decode(rest).ok()?).ok()?;
        let (user, password) = decoded.split_once(':')?;
        return Some(if password.is_empty() { user } else { password }.to_string());
    }
    None
}

async fn authenticated(keys: &ApiKeys, headers: &HeaderMap) -> Result<ApiKey, Denied> {
    let presented = presented(headers).ok_or(Denied::Unauthenticated)?;
    keys.authenticate(&presented)
        .await
        .map_err(|err| match err {
            AuthError::Unauthenticated => Denied::Unauthenticated,
            AuthError::Storage(err) => Denied::Unavailable(err.to_string()),
        })
}

/// Checks a request to a store's route: a live key (`401`), then the store
/// (`store`, as the route read it: its error answers next), then that the
/// key may act there with the method's scope (`403`).
pub(crate) async fn check_store_key(
    auth: &AuthOptions,
    headers: &HeaderMap,
    method: &Method,
    store: Result<TenantId, HttpError>,
) -> Result<ApiKey, Denied> {
    let key = authenticated(&auth.keys, headers).await?;
    let store = store.map_err(Denied::Bad)?;
    if key.allows(&store, auth.scope_for(method)) {
        Ok(key)
    } else {
        tracing::debug!(key = %key.id, %store, "API key refused for this store or scope");
        Err(Denied::Forbidden)
    }
}

/// `router` behind an operator key: any other request is `401` (with a
/// Basic challenge, so a browser asks for the key; give it as the password)
/// or, for a store's key, `403`. For the workbench and the admin API.
///
/// ```
/// # use flowline::{Engine, Flow, MemoryBackend};
/// use flowline::http::{operator_only, workbench_router, ApiKeys};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let engine = Engine::builder(Flow::builder().build()?).backend(MemoryBackend::new()).start().await?;
/// let app = operator_only(workbench_router(engine.clone()), ApiKeys::new(engine));
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
pub fn operator_only(router: Router, keys: ApiKeys) -> Router {
    router.layer(from_fn_with_state(keys, require_operator))
}

async fn require_operator(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    match authenticated(&keys, request.headers()).await {
        Ok(key) if key.is_operator() => next.run(request).await,
        Ok(_) => Denied::Forbidden.into_response(BASIC),
        Err(denied) => denied.into_response(BASIC),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn keys_come_as_bearer_tokens_or_basic_passwords() {
        assert_eq!(presented(&with("Bearer flk_a")).as_deref(), Some("flk_a"));
        assert_eq!(presented(&with("bearer  flk_a ")).as_deref(), Some("flk_a"));
        let basic = format!("Basic {}", STANDARD.encode("operator:flk_b"));
        assert_eq!(presented(&with(&basic)).as_deref(), Some("flk_b"));
        let user_only = format!("Basic {}", STANDARD.encode("flk_c:"));
        assert_eq!(presented(&with(&user_only)).as_deref(), Some("flk_c"));
        for bad in ["Bearer", "Token flk_a", "Basic !!!", "Basic Zm9v"] {
            assert_eq!(presented(&with(bad)), None, "{bad}");
        }
        assert_eq!(presented(&HeaderMap::new()), None);
    }
}
