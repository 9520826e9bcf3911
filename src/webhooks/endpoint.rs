//! An endpoint as a merchant registers it: a URL, the topics it wants, its
//! secrets; and the checks a registration passes before anything is kept.

use serde::{Deserialize, Serialize};

use super::destination::{Destinations, RefusedDestination};
use super::signing::{SignatureError, WebhookSecret};
use crate::time::Timestamp;

/// The longest URL an endpoint may have, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// The most topic patterns one endpoint may list.
pub const MAX_PATTERNS: usize = 64;
/// The longest description, in bytes.
pub const MAX_DESCRIPTION: usize = 500;

/// Why a registration or a change was refused: each a `4xx` over HTTP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// Not a URL, or longer than [`MAX_URL_LEN`].
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A scheme other than `http` or `https`.
    #[error("deliveries go over http or https, not {0:?}")]
    UnsupportedScheme(String),
    /// The URL names a loopback, private or link-local address the host
    /// does not allow.
    #[error(transparent)]
    Destination(#[from] RefusedDestination),
    /// A topic pattern that is not a topic, `prefix.*` or `*`.
    #[error("topic pattern {0:?}: a topic, `prefix.*` or `*`")]
    InvalidPattern(String),
    /// A pattern that matches none of the topics webhooks are sent for.
    #[error("topic pattern {0:?} matches none of the topics webhooks are sent for")]
    UnknownTopic(String),
    /// No pattern, or more than [`MAX_PATTERNS`].
    #[error("an endpoint lists 1 to {MAX_PATTERNS} topic patterns")]
    PatternCount,
    /// The description is longer than [`MAX_DESCRIPTION`].
    #[error("a description is at most {MAX_DESCRIPTION} bytes")]
    DescriptionTooLong,
    /// A bad secret.
    #[error(transparent)]
    Secret(#[from] SignatureError),
    /// The tenant has as many endpoints as it may.
    #[error("a store has at most {0} endpoints")]
    TooMany(usize),
    /// No endpoint with that id in this store.
    #[error("no endpoint {0}")]
    NotFound(String),
    /// The record changed under the update; try again.
    #[error("endpoint {0} changed meanwhile; try again")]
    Busy(String),
    /// The backend failed.
    #[error(transparent)]
    Storage(#[from] crate::engine::EngineError),
}

/// Which topics an endpoint wants: exact topics, `prefix.*` (every topic
/// under the prefix) or `*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TopicFilter(Vec<String>);

impl TopicFilter {
    /// The filter of `patterns`, each checked against the topics webhooks
    /// are sent for (`known`): a pattern matching none of them is refused.
    ///
    /// # Errors
    /// [`WebhookError::InvalidPattern`], [`WebhookError::UnknownTopic`] or
    /// [`WebhookError::PatternCount`].
    pub fn new<S: AsRef<str>>(patterns: &[S], known: &[String]) -> Result<Self, WebhookError> {
        if patterns.is_empty() || patterns.len() > MAX_PATTERNS {
            return Err(WebhookError::PatternCount);
        }
        let mut kept = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let pattern = pattern.as_ref().trim();
            let stem = pattern.strip_suffix(".*").unwrap_or(pattern);
            let valid = pattern == "*"
                || (!stem.is_empty()
                    && stem.len() <= 128
                    && stem.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    }));
            if !valid {
                return Err(WebhookError::InvalidPattern(
                    pattern.chars().take(130).collect(),
                ));
            }
            if !known.iter().any(|topic| matches(pattern, topic)) {
                return Err(WebhookError::UnknownTopic(pattern.to_string()));
            }
            kept.push(pattern.to_string());
        }
        kept.sort();
        kept.dedup();
        Ok(TopicFilter(kept))
    }

    /// Whether `topic` is wanted.
    pub fn matches(&self, topic: &str) -> bool {
        self.0.iter().any(|pattern| matches(pattern, topic))
    }

    /// The patterns.
    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

fn matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

/// A URL deliveries may be sent to: `http` or `https`, a host, no
/// credentials, no fragment; an IP literal must be an allowed destination.
///
/// # Errors
/// [`WebhookError::InvalidUrl`], [`WebhookError::UnsupportedScheme`] or
/// [`WebhookError::Destination`].
pub(super) fn check_url(url: &str, allowed: Destinations) -> Result<reqwest::Url, WebhookError> {
    if url.len() > MAX_URL_LEN {
        return Err(WebhookError::InvalidUrl(format!(
            "longer than {MAX_URL_LEN} bytes"
        )));
    }
    let parsed =
        reqwest::Url::parse(url.trim()).map_err(|e| WebhookError::InvalidUrl(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(WebhookError::UnsupportedScheme(parsed.scheme().to_string()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(WebhookError::InvalidUrl(
            "credentials in the URL would be logged; use the signature".to_string(),
        ));
    }
    if parsed.fragment().is_some() {
        return Err(WebhookError::InvalidUrl(
            "a URL with a fragment".to_string(),
        ));
    }
    match parsed.host() {
        None => return Err(WebhookError::InvalidUrl("no host".to_string())),
        Some(url::Host::Ipv4(ip)) => allowed.check(ip.into())?,
        Some(url::Host::Ipv6(ip)) => allowed.check(ip.into())?,
        Some(url::Host::Domain(_)) => {}
    }
    Ok(parsed)
}

/// One of an endpoint's secrets, and when it stops signing (a rotated one).
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StoredSecret {
    /// `whsec_…`.
    pub secret: String,
    pub expires_at: Option<Timestamp>,
}

/// The stored endpoint.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EndpointRecord {
    pub id: String,
    pub url: String,
    pub topics: TopicFilter,
    #[serde(default)]
    pub description: String,
    pub secrets: Vec<StoredSecret>,
    pub enabled: bool,
    /// Why it was disabled, if it was.
    pub disabled_reason: Option<String>,
    pub created_at: Timestamp,
}

impl EndpointRecord {
    /// The secrets that sign at `now`: the current one and any in its
    /// rotation's overlap.
    pub(super) fn signing_secrets(&self, now: Timestamp) -> Vec<WebhookSecret> {
        self.secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|at| now < at))
            .filter_map(|s| WebhookSecret::parse(&s.secret).ok())
            .collect()
    }

    pub(super) fn view(&self) -> Endpoint {
        Endpoint {
            id: self.id.clone(),
            url: self.url.clone(),
            topics: self.topics.clone(),
            description: self.description.clone(),
            enabled: self.enabled,
            disabled_reason: self.disabled_reason.clone(),
            created_at: self.created_at,
        }
    }
}

/// An endpoint as listed (its secrets are not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Its id, `ep_…`.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// Which topics.
    pub topics: TopicFilter,
    /// A note for people.
    pub description: String,
    /// Whether deliveries go out; a disabled endpoint's events are not sent.
    pub enabled: bool,
    /// Why it was disabled (failing for too long, or by hand).
    pub disabled_reason: Option<String>,
    /// When it was registered.
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        ["order.created", "order.cancelled", "payment.processed"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn patterns_match_topics_exactly_by_prefix_or_all() {
        let filter = TopicFilter::new(&["order.*", "payment.processed"], &known()).unwrap();
        assert!(filter.matches("order.created"));
        assert!(filter.matches("payment.processed"));
        assert!(!filter.matches("payment.failed"));
        assert!(TopicFilter::new(&["*"], &known())
            .unwrap()
            .matches("anything"));
    }

    #[test]
    fn bad_patterns_are_typed_errors() {
        assert!(matches!(
            TopicFilter::new::<&str>(&[], &known()),
            Err(WebhookError::PatternCount)
        ));
        for bad in ["Order.*", "order.**", "", ".*", "order created"] {
            assert!(
                matches!(
                    TopicFilter::new(&[bad], &known()),
                    Err(WebhookError::InvalidPattern(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            TopicFilter::new(&["refund.*"], &known()),
            Err(WebhookError::UnknownTopic(_))
        ));
    }

    #[test]
    fn urls_are_http_with_a_host_and_an_allowed_address() {
        let public = Destinations::public_only();
        assert!(check_url("https://hooks.example.com/flowline?x=1", public).is_ok());
        assert!(matches!(
            check_url("ftp://example.com/", public),
            Err(WebhookError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            check_url("javascript:alert(1)", public),
            Err(WebhookError::UnsupportedScheme(_))
        ));
        for bad in [
            "not a url",
            "https://user:pw@example.com/",
            "https://example.com/#x",
            "https://",
        ] {
            assert!(
                matches!(check_url(bad, public), Err(WebhookError::InvalidUrl(_))),
                "{bad}"
            );
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(matches!(
            check_url(&long, public),
            Err(WebhookError::InvalidUrl(_))
        ));
        for private in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://169.254.169.254/latest",
            "http://10.0.0.8/",
        ] {
            assert!(
                matches!(
                    check_url(private, public),
                    Err(WebhookError::Destination(_))
                ),
                "{private}"
            );
        }
        assert!(check_url("http://127.0.0.1:8080/", public.allow_loopback()).is_ok());
    }
}
