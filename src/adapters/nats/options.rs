//! Settings of a [`NatsTransport`](super::NatsTransport), and its errors.

use std::time::Duration;

/// Settings of a [`NatsTransport`](super::NatsTransport).
///
/// ```
/// use std::time::Duration;
/// use flowline::NatsOptions;
/// let options = NatsOptions::new("nats://127.0.0.1:4222")
///     .stream("ORDERS")
///     .subject_prefix("orders")
///     .ack_wait(Duration::from_secs(60));
/// assert_eq!(options.stream, "ORDERS");
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NatsOptions {
    /// The server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The JetStream stream that carries the deliveries (default `FLOWLINE`),
    /// created if missing. One stream per flow: flows sharing a server pick
    /// different streams and prefixes.
    pub stream: String,
    /// The first token of every subject (default `flowline`): deliveries go
    /// to `<prefix>.d.<step>.<tenant>`, wake-ups to `<prefix>.wake`.
    pub subject_prefix: String,
    /// How long the server waits for an acknowledgement before it delivers a
    /// message again (default 30 s). This process keeps the messages it holds
    /// alive with progress acknowledgements, so it only matters when a
    /// process dies holding messages: they go to another process after this.
    pub ack_wait: Duration,
    /// The server's de-duplication window (default 2 min): a message sent
    /// again with the same key within it is dropped. Keep it longer than the
    /// split backend's relay lease.
    pub duplicate_window: Duration,
    /// At most this many messages of one step held unacknowledged across all
    /// processes (default 20,000; JetStream's `max_ack_pending`).
    pub max_ack_pending: i64,
}

impl NatsOptions {
    /// Settings for the server at `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        NatsOptions {
            url: url.into(),
            stream: "FLOWLINE".into(),
            subject_prefix: "flowline".into(),
            ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(120),
            max_ack_pending: 20_000,
        }
    }

    /// Sets [`stream`](Self::stream).
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = stream.into();
        self
    }

    /// Sets [`subject_prefix`](Self::subject_prefix).
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// Sets [`ack_wait`](Self::ack_wait).
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Sets [`duplicate_window`](Self::duplicate_window).
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Sets [`max_ack_pending`](Self::max_ack_pending).
    pub fn max_ack_pending(mut self, max: i64) -> Self {
        self.max_ack_pending = max;
        self
    }

    /// Checks the names and durations before anything connects.
    pub(super) fn validate(&self) -> Result<(), NatsError> {
        let plain = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        };
        if !plain(&self.stream) {
            return Err(NatsError::InvalidOption(format!(
                "stream name {:?}: 1-128 of A-Z, a-z, 0-9, '-' and '_'",
                self.stream
            )));
        }
        if !plain(&self.subject_prefix) {
            return Err(NatsError::InvalidOption(format!(
                "subject prefix {:?}: 1-128 of A-Z, a-z, 0-9, '-' and '_'",
                self.subject_prefix
            )));
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err(NatsError::InvalidOption(
                "ack_wait must be at least 1 s".into(),
            ));
        }
        if self.duplicate_window.is_zero() {
            return Err(NatsError::InvalidOption(
                "duplicate_window must be above zero".into(),
            ));
        }
        if self.max_ack_pending < 1 {
            return Err(NatsError::InvalidOption(
                "max_ack_pending must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Connecting a [`NatsTransport`](super::NatsTransport) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// A setting is out of range or a name is not allowed.
    #[error("invalid NATS transport option: {0}")]
    InvalidOption(String),
    /// The transport's own runtime could not start.
    #[error("could not start the NATS transport's runtime: {0}")]
    Runtime(String),
    /// The server could not be reached, or refused the connection.
    #[error("could not connect to NATS: {0}")]
    Connect(#[source] async_nats::ConnectError),
    /// The server refused to create or open the stream (is JetStream on?).
    #[error("could not open the JetStream stream {stream:?}: {source}")]
    Stream {
        /// The stream.
        stream: String,
        /// What the server said.
        #[source]
        source: crate::BoxError,
    },
}

impl From<crate::backend::RuntimeStopped> for NatsError {
    fn from(stopped: crate::backend::RuntimeStopped) -> Self {
        NatsError::Runtime(stopped.to_string())
    }
}
