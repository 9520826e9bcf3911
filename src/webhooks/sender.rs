//! One attempt at one endpoint: the signed POST, and what came of it.

use std::time::Duration;

use tracing::Instrument;

use super::destination::CheckedResolver;
use super::log::capped;
use super::options::WebhookOptions;
use super::signing::{signature_header, WebhookSecret};
use super::transport::{WebhookRequest, WebhookTransport};
use crate::engine::trace_link;
use crate::trace_context::TraceParent;

/// The longest `Retry-After` honoured: a day.
const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The client every attempt goes through: timeouts, no redirects, and the
/// resolver that keeps deliveries to allowed addresses.
pub(super) fn client(options: &WebhookOptions) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .timeout(options.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(CheckedResolver::shared(options.destinations))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
}

/// What an attempt came to.
pub(super) struct Answer {
    /// The status, if the endpoint answered.
    pub status: Option<u16>,
    /// How long the attempt took.
    pub latency: Duration,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The start of the answer's body.
    pub body: Option<String>,
    /// The least wait the endpoint asked for before the next attempt.
    pub retry_after: Option<Duration>,
}

impl Answer {
    pub(super) fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The three headers of a message, as sent.
pub(super) struct Message<'a> {
    pub id: &'a str,
    pub timestamp: i64,
    pub body: &'a str,
}

/// POSTs `message` to `url` through `transport`, signed with every one of
/// `secrets`.
pub(super) async fn attempt(
    transport: &dyn WebhookTransport,
    url: reqwest::Url,
    secrets: &[WebhookSecret],
    message: &Message<'_>,
    options: &WebhookOptions,
    trace: Option<&TraceParent>,
) -> Answer {
    let signature = signature_header(
        secrets,
        message.id,
        message.timestamp,
        message.body.as_bytes(),
    );
    let span = tracing::info_span!(
        "webhook.deliver",
        otel.kind = "client",
        webhook.id = message.id,
        http.response.status_code = tracing::field::Empty,
    );
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("user-agent", "flowline-webhooks".to_string()),
        ("webhook-id", message.id.to_string()),
        ("webhook-timestamp", message.timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    // The receiver joins the trace of the event the message is about: as a
    // child of this client span when an exporter links spans, else of the
    // sender's execution.
    if let Some(parent) = trace_link::context_of(&span).or_else(|| trace.cloned()) {
        headers.extend(parent.header_pairs());
    }
    let request = WebhookRequest {
        url,
        headers,
        body: message.body.to_string(),
        timeout: options.timeout,
        body_limit: options.logged_body,
    };
    // On tokio's clock: a simulation's paused clock measures it too.
    let started = tokio::time::Instant::now();
    let sent = transport.send(request).instrument(span.clone()).await;
    let latency = started.elapsed();
    if let Ok(response) = &sent {
        span.record("http.response.status_code", response.status);
    }
    match sent {
        Err(err) => Answer {
            status: None,
            latency,
            error: Some(capped(&err.to_string(), 300)),
            body: None,
            retry_after: None,
        },
        Ok(response) => {
            let status = response.status;
            let body = capped(&response.body, options.logged_body);
            Answer {
                status: Some(status),
                latency,
                error: (!(200..300).contains(&status)).then(|| format!("answered {status}")),
                body: (!body.is_empty()).then_some(body),
                retry_after: response.retry_after.as_deref().and_then(parse_retry_after),
            }
        }
    }
}

/// `Retry-After` as seconds or an HTTP date; capped at a day.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            let from_now = at.signed_duration_since(chrono::Utc::now());
            from_now.to_std().unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(LONGEST_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::parse_retry_after;
    use std::time::Duration;

    #[test]
    fn retry_after_is_seconds_or_a_date_and_capped() {
        assert_eq!(parse_retry_after("30"), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_retry_after("99999999"),
            Some(Duration::from_secs(24 * 3600))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-5"), None);
    }
}
