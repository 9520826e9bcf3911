//! [`SimReceiver`]: the stores' webhook receiver (feature `webhooks`), a
//! [`WebhookTransport`] that answers as the seed says (delivered, `5xx`,
//! `429` with `Retry-After`, an answer lost after the message arrived, an
//! answer later than the timeout), checks every message's signature, and
//! remembers what arrived, for the invariants.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::in_flight::InFlight;
use crate::time::Clock;
use crate::webhooks::{
    verify, Signed, TransportError, WebhookRequest, WebhookResponse, WebhookSecret,
    WebhookTransport,
};

/// The longest a message takes to arrive when it is on time.
const MAX_LATENCY: Duration = Duration::from_millis(1_500);

/// How a seed's receiver misbehaves: the share of attempts answered `5xx`,
/// answered `429`, whose answer is lost after the message arrived, and
/// answered after the sender's timeout.
#[derive(Clone, Copy, Debug)]
pub(super) struct Manners {
    pub(super) server_errors: f64,
    pub(super) throttled: f64,
    pub(super) lost_answers: f64,
    pub(super) late: f64,
}

impl Manners {
    pub(super) fn draw(rng: &mut StdRng) -> Manners {
        Manners {
            server_errors: rng.random_range(0.0..=0.2),
            throttled: rng.random_range(0.0..=0.05),
            lost_answers: rng.random_range(0.0..=0.05),
            late: rng.random_range(0.0..=0.02),
        }
    }
}

/// One message (`webhook-id`) as the receiver saw it.
#[derive(Clone, Debug, Default)]
pub(super) struct Arrival {
    /// The endpoint it came to.
    pub(super) url: String,
    /// Its body, the same on every attempt.
    pub(super) body: String,
    /// Whether the receiver took it in at least once (it answered `2xx`, or
    /// its answer was lost or late after it arrived).
    pub(super) taken: bool,
    /// How many of its attempts failed as the sender saw them: refused
    /// (`5xx`, `429`), or taken in with the answer lost or late.
    pub(super) failed: u32,
}

#[derive(Default)]
struct Seen {
    /// Each endpoint's signing secret, by URL.
    secrets: BTreeMap<String, WebhookSecret>,
    messages: BTreeMap<String, Arrival>,
    /// What no receiver should ever get: a bad signature, a message id sent
    /// again with another body.
    wrong: Vec<String>,
}

/// The stores' webhook receiver ([`OrderScenario::with_webhooks`]): a
/// [`WebhookTransport`] that answers as the seed says (delivered, `5xx`,
/// `429` with `Retry-After`, an answer lost after the message arrived, an
/// answer later than the timeout), checks every message's signature, and
/// remembers what arrived, for the invariants.
///
/// [`OrderScenario::with_webhooks`]: super::OrderScenario::with_webhooks
#[derive(Clone)]
pub struct SimReceiver {
    manners: Manners,
    rng: Arc<Mutex<StdRng>>,
    seen: Arc<Mutex<Seen>>,
    in_flight: InFlight<String>,
    clock: Clock,
}

impl std::fmt::Debug for SimReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimReceiver")
            .field("manners", &self.manners)
            .finish_non_exhaustive()
    }
}

/// What the receiver does with one attempt.
enum Answer {
    Delivered,
    ServerError,
    Throttled(u64),
    Lost,
    Late,
}

impl SimReceiver {
    /// A receiver with `manners`, drawing from `seed`, on `clock` (to check
    /// the messages' timestamps).
    pub(super) fn new(manners: Manners, seed: u64, clock: Clock) -> Self {
        SimReceiver {
            manners,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            seen: Arc::new(Mutex::new(Seen::default())),
            in_flight: InFlight::default(),
            clock,
        }
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new `whsec_` secret for the endpoint at `url`, drawn from the seed:
    /// the receiver checks every message to `url` against it.
    pub(super) fn secret_for(&self, url: &str) -> String {
        let key: [u8; 32] = self.rng.lock().unwrap_or_else(|p| p.into_inner()).random();
        let text = format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        if let Ok(secret) = WebhookSecret::parse(&text) {
            self.seen().secrets.insert(url.to_string(), secret);
        }
        text
    }

    /// Every message that arrived, by `webhook-id`.
    pub(super) fn arrivals(&self) -> BTreeMap<String, Arrival> {
        self.seen().messages.clone()
    }

    /// How many attempts at message `id` failed as the sender saw them.
    pub(super) fn failures(&self, id: &str) -> u32 {
        self.seen().messages.get(id).map_or(0, |a| a.failed)
    }

    /// The most attempts the endpoint at `url` ever had in flight at once.
    pub(super) fn most_in_flight(&self, url: &str) -> u32 {
        self.in_flight.most(&url.to_string())
    }

    /// The first thing a receiver should never have got, if any.
    pub(super) fn first_wrong(&self) -> Option<String> {
        self.seen().wrong.first().cloned()
    }

    fn draw(&self) -> (Duration, Answer) {
        let m = self.manners;
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let latency = Duration::from_millis(rng.random_range(0..=MAX_LATENCY.as_millis() as u64));
        let roll: f64 = rng.random();
        let answer = if roll < m.server_errors {
            Answer::ServerError
        } else if roll < m.server_errors + m.throttled {
            Answer::Throttled(rng.random_range(1..=30))
        } else if roll < m.server_errors + m.throttled + m.lost_answers {
            Answer::Lost
        } else if roll < m.server_errors + m.throttled + m.lost_answers + m.late {
            Answer::Late
        } else {
            Answer::Delivered
        };
        (latency, answer)
    }

    /// Checks and records a message that arrived, whether it was taken in,
    /// and whether the sender hears of a failure.
    fn arrive(&self, request: &WebhookRequest, taken: bool, failed: bool) {
        let url = request.url.to_string();
        let id = request.header("webhook-id").unwrap_or_default().to_string();
        let signed = Signed {
            id: &id,
            timestamp: request.header("webhook-timestamp").unwrap_or_default(),
            signatures: request.header("webhook-signature").unwrap_or_default(),
        };
        let now = self.clock.now().as_millis() / 1000;
        let mut seen = self.seen();
        let checked = match seen.secrets.get(&url) {
            Some(secret) => verify(
                std::slice::from_ref(secret),
                &signed,
                request.body.as_bytes(),
                now,
            )
            .map_err(|e| e.to_string()),
            None => Err("no endpoint was registered at this URL".to_string()),
        };
        if let Err(err) = checked {
            seen.wrong.push(format!("message {id} to {url}: {err}"));
        }
        let arrival = seen.messages.entry(id.clone()).or_insert_with(|| Arrival {
            url: url.clone(),
            body: request.body.clone(),
            ..Arrival::default()
        });
        if arrival.body != request.body || arrival.url != url {
            let wrong = format!("message {id} came again with another body or to another URL");
            seen.wrong.push(wrong);
            return;
        }
        arrival.taken |= taken;
        arrival.failed += u32::from(failed);
    }
}

#[async_trait]
impl WebhookTransport for SimReceiver {
    async fn send(&self, request: WebhookRequest) -> Result<WebhookResponse, TransportError> {
        let _flying = self.in_flight.take_off(&request.url.to_string());
        let (latency, answer) = self.draw();
        let arrives_after = match answer {
            Answer::Late => request.timeout / 2,
            _ => latency.min(request.timeout),
        };
        tokio::time::sleep(arrives_after).await;
        match answer {
            Answer::Delivered => {
                self.arrive(&request, true, false);
                Ok(WebhookResponse::status(200))
            }
            Answer::Lost => {
                self.arrive(&request, true, true);
                Err(TransportError::Failed("connection reset".into()))
            }
            Answer::ServerError => {
                self.arrive(&request, false, true);
                Ok(WebhookResponse::status(503))
            }
            Answer::Throttled(seconds) => {
                self.arrive(&request, false, true);
                Ok(WebhookResponse::status(429).retry_after(seconds.to_string()))
            }
            Answer::Late => {
                // Taken in, but the answer comes after the timeout.
                self.arrive(&request, true, true);
                tokio::time::sleep(request.timeout - arrives_after).await;
                Err(TransportError::TimedOut)
            }
        }
    }
}
