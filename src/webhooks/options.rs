//! How deliveries are made: timeouts, retries, when an endpoint is given
//! up on, how many go to one endpoint at once, where they may go.

use std::time::Duration;

use super::destination::Destinations;

/// The settings of [`Webhooks`](super::Webhooks); every one has a default.
///
/// ```
/// use std::time::Duration;
/// use flowline::webhooks::{Destinations, WebhookOptions};
/// let options = WebhookOptions::default()
///     .timeout(Duration::from_secs(5))
///     .destinations(Destinations::public_only().allow_loopback());
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    pub(super) connect_timeout: Duration,
    pub(super) timeout: Duration,
    pub(super) first_retry: Duration,
    pub(super) longest_retry: Duration,
    pub(super) max_attempts: u32,
    pub(super) max_age: Duration,
    pub(super) disable_after: Duration,
    pub(super) per_endpoint: u32,
    pub(super) destinations: Destinations,
    pub(super) logged_body: usize,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
            first_retry: Duration::from_secs(5),
            longest_retry: Duration::from_secs(3600),
            max_attempts: 15,
            max_age: Duration::from_secs(3 * 24 * 3600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            per_endpoint: 4,
            destinations: Destinations::public_only(),
            logged_body: 1024,
        }
    }
}

impl WebhookOptions {
    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a whole attempt may take, answer included (default 15 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries back off exponentially from `first` to `longest`, with
    /// jitter (default 5 s to 1 h); a `Retry-After` in the answer is the
    /// least wait.
    pub fn backoff(mut self, first: Duration, longest: Duration) -> Self {
        self.first_retry = first;
        self.longest_retry = longest.max(first);
        self
    }

    /// A delivery is dead-lettered after this many attempts (default 15)
    /// or once it is older than `max_age` (default 3 days), whichever comes
    /// first; replaying it from the dead letters tries again.
    pub fn give_up_after(mut self, attempts: u32, max_age: Duration) -> Self {
        self.max_attempts = attempts.max(1);
        self.max_age = max_age;
        self
    }

    /// An endpoint whose deliveries all failed for this long is disabled,
    /// with an alert (`webhook.endpoint_disabled`); default 5 days.
    pub fn disable_after(mut self, failing_for: Duration) -> Self {
        self.disable_after = failing_for;
        self
    }

    /// At most this many deliveries in flight per endpoint (default 4): a
    /// slow or hanging endpoint holds that many, never the others' share.
    pub fn per_endpoint(mut self, in_flight: u32) -> Self {
        self.per_endpoint = in_flight.clamp(1, 1000);
        self
    }

    /// Where deliveries may go (default: public addresses only).
    pub fn destinations(mut self, destinations: Destinations) -> Self {
        self.destinations = destinations;
        self
    }

    /// How much of an answer's body the delivery log keeps (default 1 KiB).
    pub fn logged_body(mut self, bytes: usize) -> Self {
        self.logged_body = bytes.min(64 * 1024);
        self
    }
}
