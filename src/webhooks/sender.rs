//! One attempt at one endpoint: the signed POST, and what came of it.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};

use super::destination::CheckedResolver;
use super::log::capped;
use super::options::WebhookOptions;
use super::signing::{signature_header, WebhookSecret};

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

/// POSTs `message` to `url`, signed with every one of `secrets`.
pub(super) async fn attempt(
    client: &reqwest::Client,
    url: reqwest::Url,
    secrets: &[WebhookSecret],
    message: &Message<'_>,
    logged_body: usize,
) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(USER_AGENT, HeaderValue::from_static("flowline-webhooks"));
    let signature = signature_header(
        secrets,
        message.id,
        message.timestamp,
        message.body.as_bytes(),
    );
    for (name, value) in [
        ("webhook-id", message.id.to_string()),
        ("webhook-timestamp", message.timestamp.to_string()),
        ("webhook-signature", signature),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    let started = Instant::now();
    let sent = client
        .post(url)
        .headers(headers)
        .body(message.body.to_string())
        .send()
        .await;
    match sent {
        Err(err) => Answer {
            status: None,
            latency: started.elapsed(),
            error: Some(describe(&err)),
            body: None,
            retry_after: None,
        },
        Ok(mut response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            // Read only what the log keeps: a receiver that answers with a
            // flood (or never ends its body) costs nothing more.
            let mut kept = Vec::new();
            while kept.len() < logged_body {
                match response.chunk().await {
                    Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            let text = String::from_utf8_lossy(&kept);
            Answer {
                status: Some(status),
                latency: started.elapsed(),
                error: (!(200..300).contains(&status)).then(|| format!("answered {status}")),
                body: (!text.is_empty()).then(|| capped(&text, logged_body)),
                retry_after,
            }
        }
    }
}

/// A short reason for a failed request: a timeout, a refused connection, a
/// refused destination.
fn describe(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "timed out".to_string()
    } else if err.is_connect() {
        "could not connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    capped(&text, 300)
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
