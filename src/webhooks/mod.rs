//! Signed webhooks (feature `webhooks`): every event a tenant's endpoints
//! want becomes a durable delivery, signed per the [Standard Webhooks]
//! specification, retried with exponential backoff and jitter per endpoint
//! (honouring `Retry-After`), dead-lettered after a bounded time and number
//! of attempts, and logged per endpoint.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/
//!
//! | file | its one job |
//! |---|---|
//! | `signing.rs` | `whsec_` secrets, `v1` signatures, verification for receivers |
//! | `destination.rs` | which addresses deliveries may go to (no loopback, private or link-local unless allowed) |
//! | `endpoint.rs` | an endpoint's URL, topic patterns and secrets, checked |
//! | `records.rs` | where endpoints and their failing stretches live in a tenant's state |
//! | `registry.rs` | registering, listing, rotating, enabling, removing endpoints ([`WebhookEndpoints`]) |
//! | `options.rs` | timeouts, retries, giving up, disabling, per-endpoint concurrency ([`WebhookOptions`]) |
//! | `steps.rs` | the dispatcher (event -> one delivery per endpoint) and the sender (one attempt) |
//! | `sender.rs` | the signed POST and what came of it |
//! | `transport.rs` | what carries the POST: HTTP, or a transport of the host's own ([`WebhookTransport`]) |
//! | `log.rs` | the delivery log per endpoint |
//! | `stats.rs` | attempts counted per endpoint and outcome, for metrics |
//!
//! How it holds up:
//! - **Durable**: a delivery is an event of the engine, committed with the
//!   event that caused it; a process that dies mid-attempt leaves it to be
//!   tried again.
//! - **The same `webhook-id` on every attempt**, and the same body, so a
//!   receiver de-duplicates; an attempt whose answer was lost is sent again
//!   (at least once), never dropped.
//! - **No endpoint slows another**: each attempt runs and commits alone
//!   ([`StepBuilder::solo`](crate::engine::StepBuilder::solo)), and a
//!   flow-control limit keeps at most [`WebhookOptions::per_endpoint`]
//!   attempts in flight per endpoint, so a hanging endpoint holds its own
//!   share and nothing else.
//! - **Bounded**: connect and total timeouts; only the start of an answer's
//!   body is read; no redirects; an endpoint failing for long is disabled,
//!   with a [`WebhookEndpointDisabled`] event for the host's alerts.
//!
//! ```
//! use flowline::webhooks::{Destinations, EndpointSpec, WebhookOptions, Webhooks};
//! use flowline::{Engine, Flow, MemoryBackend, TenantId};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let webhooks = Webhooks::new(["order.created", "order.cancelled"])
//!     .options(WebhookOptions::default().destinations(Destinations::public_only()));
//! let flow = Flow::builder().steps(webhooks.steps()?).build()?;
//! let engine = Engine::builder(flow).backend(MemoryBackend::new()).start().await?;
//! let store = TenantId::new("X")?;
//! let registered = webhooks
//!     .endpoints(engine)
//!     .register(&store, EndpointSpec::new("https://erp.example.com/hooks", ["order.*"]))
//!     .await?;
//! assert!(registered.secret().starts_with("whsec_"));
//! # Ok(())
//! # }
//! ```

mod destination;
mod endpoint;
mod log;
mod options;
mod records;
mod registry;
mod sender;
mod signing;
mod stats;
mod steps;
mod transport;

use std::sync::Arc;

pub use destination::{Destinations, RefusedDestination};
pub use endpoint::{
    Endpoint, TopicFilter, WebhookError, MAX_DESCRIPTION, MAX_PATTERNS, MAX_URL_LEN,
};
pub use log::{Attempt, DeliveryRecord, DeliveryState, LOG_CAP};
pub use options::WebhookOptions;
pub use records::MAX_ENDPOINTS;
pub use registry::{EndpointSpec, Registered, WebhookEndpoints, MAX_SECRET_OVERLAP};
pub use signing::{
    signature_header, verify, SignatureError, Signed, WebhookSecret, MAX_SECRET_BYTES,
    MIN_SECRET_BYTES, SECRET_PREFIX, TOLERANCE_SECONDS,
};
pub use stats::{DeliveryOutcome, EndpointDeliveries, ENDPOINTS_COUNTED};
pub use steps::{WebhookDue, WebhookEndpointDisabled, WebhookGaveUp};
pub use transport::{TransportError, WebhookRequest, WebhookResponse, WebhookTransport};

use crate::engine::{Engine, Step};

/// The name of the dispatcher step.
pub const DISPATCHER: &str = "webhook.dispatcher";
/// The name of the sender step.
pub const SENDER: &str = "webhook.sender";
/// The name of the step that logs messages given up on.
pub const LOGGER: &str = "webhook.log";

/// Webhooks for the events on a set of topics: the two steps to add to a
/// flow ([`Webhooks::steps`]) and, once the engine runs, the tenants'
/// endpoints ([`Webhooks::endpoints`]).
#[derive(Clone, Debug)]
pub struct Webhooks {
    topics: Arc<Vec<String>>,
    options: Arc<WebhookOptions>,
    transport: Option<Arc<dyn WebhookTransport>>,
    stats: Arc<stats::DeliveryStats>,
}

/// Why the webhook steps could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookSetupError {
    /// The HTTP client could not be built (its TLS roots, say).
    #[error("the webhooks' HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl Webhooks {
    /// Webhooks for events on `topics`: the topics an endpoint may ask for.
    pub fn new<T: Into<String>>(topics: impl IntoIterator<Item = T>) -> Self {
        let mut topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        topics.sort();
        topics.dedup();
        Webhooks {
            topics: Arc::new(topics),
            options: Arc::new(WebhookOptions::default()),
            transport: None,
            stats: Arc::default(),
        }
    }

    /// Replaces the options.
    pub fn options(mut self, options: WebhookOptions) -> Self {
        self.options = Arc::new(options);
        self
    }

    /// Sends the attempts through `transport` instead of HTTP: a test
    /// double, or a simulated receiver with faults of its own.
    pub fn transport(mut self, transport: impl WebhookTransport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// The topics webhooks are sent for.
    pub fn topics(&self) -> Vec<String> {
        self.topics.to_vec()
    }

    /// The dispatcher ([`DISPATCHER`], on the topics), the sender
    /// ([`SENDER`]) and the step logging what was given up on ([`LOGGER`]),
    /// to add to the flow.
    ///
    /// # Errors
    /// [`WebhookSetupError::Client`] if the HTTP client cannot be built.
    pub fn steps(&self) -> Result<Vec<Step>, WebhookSetupError> {
        let transport = match &self.transport {
            Some(transport) => transport.clone(),
            None => Arc::new(transport::HttpTransport(sender::client(&self.options)?)),
        };
        Ok(vec![
            steps::dispatcher(DISPATCHER, &self.topics),
            steps::sender(SENDER, self.options.clone(), transport, self.stats.clone()),
            steps::logger(LOGGER, self.options.clone()),
        ])
    }

    /// Attempts this process made with the steps of these webhooks (and of
    /// their clones), per endpoint and outcome, since it started.
    pub fn delivery_counts(&self) -> Vec<EndpointDeliveries> {
        self.stats.snapshot()
    }

    /// The tenants' endpoints on `engine`, whose flow has [`Webhooks::steps`].
    pub fn endpoints(&self, engine: Engine) -> WebhookEndpoints {
        WebhookEndpoints {
            engine,
            topics: self.topics.clone(),
            destinations: self.options.destinations,
        }
    }
}
