//! Where a signed attempt goes: over HTTP (reqwest) by default, or through a
//! transport of the host's own (a test double, a simulated receiver).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

/// One signed POST, as the sender puts it on the wire.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WebhookRequest {
    /// The endpoint's URL, checked against the allowed destinations.
    pub url: reqwest::Url,
    /// The headers: `content-type`, `user-agent`, `webhook-id`,
    /// `webhook-timestamp` and `webhook-signature`.
    pub headers: Vec<(&'static str, String)>,
    /// The body, the same on every attempt of a message.
    pub body: String,
    /// How long the attempt may take in all; past it, answer
    /// [`TransportError::TimedOut`].
    pub timeout: Duration,
    /// How much of the answer's body to read at most (the log keeps no more).
    pub body_limit: usize,
}

impl WebhookRequest {
    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What an endpoint answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebhookResponse {
    /// The HTTP status.
    pub status: u16,
    /// The `Retry-After` header, as sent (seconds or an HTTP date).
    pub retry_after: Option<String>,
    /// The start of the body, at most the request's `body_limit` bytes.
    pub body: String,
}

impl WebhookResponse {
    /// An answer with `status` and no body.
    pub fn status(status: u16) -> Self {
        WebhookResponse {
            status,
            ..WebhookResponse::default()
        }
    }

    /// The same answer, asking for the next attempt no sooner than `value`
    /// (seconds or an HTTP date).
    pub fn retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }
}

/// Why no answer came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No answer within the request's timeout.
    #[error("timed out")]
    TimedOut,
    /// No connection could be made.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The request failed otherwise (the connection dropped mid-answer).
    #[error("request failed: {0}")]
    Failed(String),
}

/// Carries the sender's signed POSTs. [`Webhooks`](super::Webhooks) uses
/// HTTP unless given another with [`Webhooks::transport`](super::Webhooks::transport).
///
/// A transport of your own sends where it likes: the guard against private
/// destinations at connection time is the HTTP transport's (URLs are still
/// checked before any transport sees them).
///
/// ```
/// use async_trait::async_trait;
/// use flowline::webhooks::{TransportError, WebhookRequest, WebhookResponse, WebhookTransport};
///
/// /// Accepts every message, as a receiver that is always up would.
/// #[derive(Debug)]
/// struct AlwaysUp;
///
/// #[async_trait]
/// impl WebhookTransport for AlwaysUp {
///     async fn send(&self, request: WebhookRequest) -> Result<WebhookResponse, TransportError> {
///         assert!(request.header("webhook-signature").is_some());
///         Ok(WebhookResponse::status(204))
///     }
/// }
/// ```
#[async_trait]
pub trait WebhookTransport: Send + Sync + std::fmt::Debug + 'static {
    /// Sends `request` and waits for the answer, at most its timeout.
    async fn send(&self, request: WebhookRequest) -> Result<WebhookResponse, TransportError>;
}

/// The default transport: reqwest, with the options' timeouts, no
/// redirects, and the resolver that keeps deliveries to allowed addresses.
#[derive(Debug)]
pub(super) struct HttpTransport(pub(super) reqwest::Client);

#[async_trait]
impl WebhookTransport for HttpTransport {
    async fn send(&self, request: WebhookRequest) -> Result<WebhookResponse, TransportError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(*name, value);
            }
        }
        let mut response = self
            .0
            .post(request.url)
            .headers(headers)
            .body(request.body)
            .send()
            .await
            .map_err(|err| describe(&err))?;
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Read only what the log keeps: a receiver that answers with a
        // flood (or never ends its body) costs nothing more.
        let mut kept = Vec::new();
        while kept.len() < request.body_limit {
            match response.chunk().await {
                Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                _ => break,
            }
        }
        Ok(WebhookResponse {
            status: response.status().as_u16(),
            retry_after,
            body: String::from_utf8_lossy(&kept).into_owned(),
        })
    }
}

/// A failed request as a transport error: a timeout, a refused connection,
/// a refused destination, with their causes.
fn describe(err: &reqwest::Error) -> TransportError {
    let mut causes = String::new();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        if !causes.is_empty() {
            causes.push_str(": ");
        }
        causes.push_str(&inner.to_string());
        source = inner.source();
    }
    if causes.is_empty() {
        causes = err.to_string();
    }
    if err.is_timeout() {
        TransportError::TimedOut
    } else if err.is_connect() {
        TransportError::Connect(causes)
    } else {
        TransportError::Failed(causes)
    }
}
