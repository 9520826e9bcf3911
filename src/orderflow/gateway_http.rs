//! [`HttpGateway`]: a [`PaymentGateway`] that charges a remote gateway over HTTP
//! (feature `http-gateway`), speaking the JSON of
//! [`gateway_router`](super::gateway_router).
//!
//! What the payment step sees for each thing that can happen on the wire:
//!
//! | on the wire | [`GatewayError`] | why |
//! |---|---|---|
//! | `2xx` with a readable body | `Ok` | |
//! | `2xx` whose body is not the expected JSON | `ServerError { status }` (the 2xx status) | the charge may be captured; the retry with the same key reads it again |
//! | no connection (refused, unreachable, connect timeout) | `Unavailable` | the request never left: nothing was charged |
//! | no answer in time, connection reset or closed after sending, body cut off | `Timeout` | the request may have reached the server: the retry with the same key finds out, no double charge |
//! | `402` | `Declined { reason }` (the body's `message`) | final |
//! | `409` | `KeyReused { key }` | final: a bug, never retried into |
//! | `404` on a refund | `UnknownTransaction` | final |
//! | `503` | `Unavailable`, or `ServerError { status: 503 }` if the body's code is `server_error` | retried |
//! | `504` | `Timeout` | the outcome is unknown |
//! | `429` | `Unavailable` | retried later |
//! | any other status (`5xx`, or a `3xx`/`4xx` the protocol does not use) | `ServerError { status }` | retried; a misconfigured URL dead-letters the payment for a replay once fixed and never fails an order |

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Client, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tracing::Instrument;

use super::gateway::{Charge, ChargeRequest, GatewayError, PaymentGateway, Refund};
use crate::engine::trace_link;
use crate::BoxError;

/// The [`HttpGateway`] URL or client could not be set up.
///
/// ```
/// use flowline::orderflow::{HttpGateway, HttpGatewayError};
///
/// let err = HttpGateway::new("https://bank.example").unwrap_err();
/// assert!(matches!(err, HttpGatewayError::UnsupportedScheme { .. }));
/// assert!(matches!(HttpGateway::new("not a url"), Err(HttpGatewayError::InvalidUrl { .. })));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpGatewayError {
    /// The base URL does not parse, has no host, or carries a query or fragment.
    #[error("invalid payment gateway URL {url:?}: {source}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        #[source]
        source: BoxError,
    },
    /// The URL's scheme is not `http` (this build has no TLS).
    #[error("payment gateway URL {url:?}: scheme {scheme:?} is not supported, only http")]
    UnsupportedScheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The HTTP client could not be built.
    #[error("could not build the HTTP client: {0}")]
    Client(#[source] BoxError),
}

/// A [`PaymentGateway`] over HTTP, for a gateway served by
/// [`gateway_router`](super::gateway_router) (the `mock_gateway` example) or
/// anything speaking the same JSON. The module docs list how each answer maps to
/// a [`GatewayError`].
///
/// Each call is bounded by [`timeout`](Self::timeout) (2 s unless set), connect
/// included. Proxy environment variables are ignored: a payment call goes
/// straight to the gateway. The idempotency key travels in the JSON body, and
/// also in an `Idempotency-Key` header for proxies and logs. Clones share one
/// connection pool.
///
/// ```no_run
/// use std::time::Duration;
/// use flowline::orderflow::{HttpGateway, MockCarrier, Orderflow};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // With `cargo run --example mock_gateway --features axum` listening:
/// let gateway = HttpGateway::new("http://127.0.0.1:4100")?.timeout(Duration::from_millis(500));
/// let flow = Orderflow::new(gateway, MockCarrier::new(1)).flow()?;
/// # let _ = flow;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct HttpGateway {
    client: Client,
    base: Url,
    timeout: Duration,
}

impl HttpGateway {
    /// The timeout unless [`timeout`](Self::timeout) says otherwise.
    ///
    /// ```
    /// use flowline::orderflow::HttpGateway;
    /// let gateway = HttpGateway::new("http://127.0.0.1:4100")?;
    /// assert_eq!(gateway.get_timeout(), HttpGateway::DEFAULT_TIMEOUT);
    /// # Ok::<(), flowline::orderflow::HttpGatewayError>(())
    /// ```
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// A gateway at `base_url` (`http://host:port`, optionally with a path
    /// prefix: `http://host/pay` charges at `http://host/pay/charges`). Nothing
    /// is sent until the first call.
    ///
    /// ```
    /// use flowline::orderflow::HttpGateway;
    ///
    /// let gateway = HttpGateway::new("http://127.0.0.1:4100/pay")?;
    /// assert_eq!(gateway.base_url(), "http://127.0.0.1:4100/pay/");
    /// # Ok::<(), flowline::orderflow::HttpGatewayError>(())
    /// ```
    ///
    /// # Errors
    /// [`HttpGatewayError::InvalidUrl`] for a URL that does not parse, has no
    /// host, or has a query or fragment; [`HttpGatewayError::UnsupportedScheme`]
    /// for anything but `http`; [`HttpGatewayError::Client`] if the HTTP client
    /// cannot be built.
    pub fn new(base_url: impl AsRef<str>) -> Result<Self, HttpGatewayError> {
        let given = base_url.as_ref();
        let invalid = |source: BoxError| HttpGatewayError::InvalidUrl {
            url: given.to_string(),
            source,
        };
        let mut base = Url::parse(given).map_err(|e| invalid(Box::new(e)))?;
        if base.scheme() != "http" {
            return Err(HttpGatewayError::UnsupportedScheme {
                url: given.to_string(),
                scheme: base.scheme().to_string(),
            });
        }
        if base.host_str().is_none_or(str::is_empty) || base.cannot_be_a_base() {
            return Err(invalid("the URL has no host".into()));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("a base URL takes no query or fragment".into()));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let client = client(Self::DEFAULT_TIMEOUT).map_err(HttpGatewayError::Client)?;
        Ok(HttpGateway {
            client,
            base,
            timeout: Self::DEFAULT_TIMEOUT,
        })
    }

    /// Bounds each call, from connecting to the last byte of the answer (the
    /// connect timeout is set to it too). A charge that runs out of time is a
    /// [`GatewayError::Timeout`]; a zero timeout fails every call so.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flowline::orderflow::HttpGateway;
    ///
    /// let gateway = HttpGateway::new("http://127.0.0.1:4100")?.timeout(Duration::from_millis(300));
    /// assert_eq!(gateway.get_timeout(), Duration::from_millis(300));
    /// # Ok::<(), flowline::orderflow::HttpGatewayError>(())
    /// ```
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        match client(timeout) {
            Ok(client) => self.client = client,
            // The same settings built a client in `new`; should this one fail
            // anyway, the per-request timeout below still bounds the connect.
            Err(err) => {
                tracing::warn!(error = %err, "HttpGateway keeps its previous connect timeout")
            }
        }
        self.timeout = timeout;
        self
    }

    /// The per-call timeout.
    ///
    /// ```
    /// use flowline::orderflow::HttpGateway;
    /// assert_eq!(HttpGateway::new("http://127.0.0.1:4100")?.get_timeout().as_secs(), 2);
    /// # Ok::<(), flowline::orderflow::HttpGatewayError>(())
    /// ```
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    /// The base URL the routes are joined to, with a trailing `/`.
    ///
    /// ```
    /// use flowline::orderflow::HttpGateway;
    /// assert_eq!(HttpGateway::new("http://127.0.0.1:4100")?.base_url(), "http://127.0.0.1:4100/");
    /// # Ok::<(), flowline::orderflow::HttpGatewayError>(())
    /// ```
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `base` + the path segments, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }
}

fn client(timeout: Duration) -> Result<Client, BoxError> {
    Ok(Client::builder()
        .connect_timeout(timeout)
        .no_proxy()
        .build()?)
}

#[async_trait]
impl PaymentGateway for HttpGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        let call = self
            .client
            .post(self.url(&["charges"]))
            .header("Idempotency-Key", &request.idempotency_key)
            .json(request);
        self.send(call, |status, body| match status {
            StatusCode::PAYMENT_REQUIRED => Some(GatewayError::Declined {
                reason: body.message.unwrap_or_else(|| "declined".to_string()),
            }),
            StatusCode::CONFLICT => Some(GatewayError::KeyReused {
                key: request.idempotency_key.clone(),
            }),
            _ => None,
        })
        .await
    }

    async fn refund(&self, transaction_id: &str) -> Result<Refund, GatewayError> {
        let call = self.client.post(self.url(&["refunds", transaction_id]));
        self.send(call, |status, _| {
            (status == StatusCode::NOT_FOUND)
                .then(|| GatewayError::UnknownTransaction(transaction_id.to_string()))
        })
        .await
    }
}

impl HttpGateway {
    /// Sends `call` with the timeout and reads a `2xx` body as `T`; any other
    /// status is what `specific` makes of it, else [`other_status`]'s answer.
    async fn send<T: DeserializeOwned>(
        &self,
        call: reqwest::RequestBuilder,
        specific: impl FnOnce(StatusCode, ErrorBody) -> Option<GatewayError>,
    ) -> Result<T, GatewayError> {
        let span = tracing::info_span!(
            "gateway.call",
            otel.kind = "client",
            http.response.status_code = tracing::field::Empty,
        );
        let call = with_trace(call, &span);
        async move {
            let response = call.timeout(self.timeout).send().await.map_err(transport)?;
            let status = response.status();
            tracing::Span::current().record("http.response.status_code", status.as_u16());
            if status.is_success() {
                return read(response).await;
            }
            let body = ErrorBody::read(response).await;
            let general = other_status(status, &body);
            Err(specific(status, body).unwrap_or(general))
        }
        .instrument(span)
        .await
    }
}

/// The call with the `traceparent` (and `tracestate`) of its client span,
/// when an exporter links spans to traces: the gateway's own spans then
/// join the payment's trace.
fn with_trace(call: reqwest::RequestBuilder, span: &tracing::Span) -> reqwest::RequestBuilder {
    let Some(parent) = trace_link::context_of(span) else {
        return call;
    };
    parent
        .header_pairs()
        .fold(call, |call, (name, value)| call.header(name, value))
}

/// A call that got no status line: never sent is `Unavailable`, anything after
/// the request may have left is `Timeout`.
fn transport(err: reqwest::Error) -> GatewayError {
    let never_sent = err.is_connect() || err.is_builder();
    tracing::debug!(error = %err, never_sent, "payment gateway call failed");
    if never_sent {
        GatewayError::Unavailable
    } else {
        GatewayError::Timeout
    }
}

/// A status neither call gives a meaning of its own.
fn other_status(status: StatusCode, body: &ErrorBody) -> GatewayError {
    match status {
        StatusCode::SERVICE_UNAVAILABLE if body.code.as_deref() == Some("server_error") => {
            GatewayError::ServerError { status: 503 }
        }
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
            GatewayError::Unavailable
        }
        StatusCode::GATEWAY_TIMEOUT => GatewayError::Timeout,
        _ => GatewayError::ServerError {
            status: status.as_u16(),
        },
    }
}

/// A success body; one cut off is a `Timeout`, one that does not parse a
/// `ServerError` with the success status.
async fn read<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, GatewayError> {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(transport)?;
    serde_json::from_slice(&bytes).map_err(|err| {
        tracing::warn!(status, error = %err, "payment gateway answer does not parse");
        GatewayError::ServerError { status }
    })
}

/// What an error answer says about itself, as far as it can be read.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
}

impl ErrorBody {
    async fn read(response: reqwest::Response) -> ErrorBody {
        match response.bytes().await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => ErrorBody::default(),
        }
    }
}
