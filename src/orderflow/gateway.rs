//! Payments: the [`PaymentGateway`] trait the payment step charges through, and
//! [`MockGateway`], a seeded stand-in with declines, latency, 5xx answers, lost
//! responses and outage windows, idempotent on its key, with a ledger a test can
//! read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::dice;
use super::money::Money;
use crate::event::TenantId;
use crate::time::{Clock, Timestamp};

/// A charge to make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRequest {
    /// The store (tenant) the order belongs to.
    pub store: TenantId,
    /// The order.
    pub order_id: String,
    /// How much.
    pub amount: Money,
    /// The same on every attempt for one order, so no retry charges twice.
    pub idempotency_key: String,
}

/// A captured charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// The gateway's id for it.
    pub transaction_id: String,
    /// The amount captured.
    pub amount: Money,
}

/// A refund of a captured charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// The charge refunded.
    pub transaction_id: String,
    /// The amount given back.
    pub amount: Money,
}

/// The gateway did not capture (or refund).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The bank said no: final for this order.
    #[error("payment declined: {reason}")]
    Declined {
        /// Why.
        reason: String,
    },
    /// No answer in time. The charge may or may not have been captured; retrying
    /// with the same idempotency key finds out without charging twice.
    #[error("the payment gateway did not answer in time")]
    Timeout,
    /// The gateway answered with a server error (5xx).
    #[error("the payment gateway answered {status}")]
    ServerError {
        /// The HTTP status.
        status: u16,
    },
    /// The gateway is down.
    #[error("the payment gateway is unavailable")]
    Unavailable,
    /// The idempotency key was used before for a different charge.
    #[error("idempotency key {key:?} was used for a different charge")]
    KeyReused {
        /// The key.
        key: String,
    },
    /// No such charge to refund.
    #[error("unknown transaction {0:?}")]
    UnknownTransaction(String),
}

impl GatewayError {
    /// Worth trying again later (timeouts, 5xx, outages); the rest are final.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::Timeout | GatewayError::ServerError { .. } | GatewayError::Unavailable
        )
    }
}

/// Where charges are made. Implement it over your payment provider's API.
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges once per idempotency key: a second call with the same key and
    /// amount returns the first call's outcome instead of charging again.
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError>;

    /// Refunds a captured charge; refunding it again is a no-op that returns the
    /// same refund.
    async fn refund(&self, transaction_id: &str) -> Result<Refund, GatewayError>;
}

/// A window of time in which the mock gateway is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outage {
    /// From this instant...
    pub from: Timestamp,
    /// ...until just before this one.
    pub until: Timestamp,
}

/// A setting of the mock gateway is out of range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("mock gateway: {field} must be between 0 and 1, got {value}")]
pub struct MockGatewayError {
    /// The setting.
    pub field: &'static str,
    /// Its value.
    pub value: f64,
}

/// How the mock gateway behaves.
///
/// ```
/// use std::time::Duration;
/// use flowline::orderflow::MockGateway;
///
/// let gateway = MockGateway::builder()
///     .seed(7)
///     .approval_rate(0.9)
///     .server_error_rate(0.05)
///     .latency(Duration::from_millis(20))
///     .build(flowline::Clock::system())?;
/// # let _ = gateway;
/// # Ok::<(), flowline::orderflow::MockGatewayError>(())
/// ```
#[derive(Clone, Debug)]
pub struct MockGatewayBuilder {
    seed: u64,
    approval_rate: f64,
    server_error_rate: f64,
    lost_response_rate: f64,
    latency: Duration,
    outages: Vec<Outage>,
    ledger_capacity: Option<usize>,
}

impl MockGatewayBuilder {
    /// The seed: the same seed gives the same decisions for the same keys.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The share of charges approved (1.0 by default). A key's decision is fixed
    /// by the seed, so retries of a declined charge stay declined.
    pub fn approval_rate(mut self, rate: f64) -> Self {
        self.approval_rate = rate;
        self
    }

    /// The share of calls answered with a 503 before anything is captured.
    pub fn server_error_rate(mut self, rate: f64) -> Self {
        self.server_error_rate = rate;
        self
    }

    /// The share of captured charges whose answer is lost (the caller sees a
    /// timeout, the money is taken): what idempotency keys exist for.
    pub fn lost_response_rate(mut self, rate: f64) -> Self {
        self.lost_response_rate = rate;
        self
    }

    /// How long each call takes (on the tokio clock, so tests can pause it).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Keeps only the `keys` most recently decided idempotency keys (at least
    /// 1); by default it keeps every one. A long-running server needs a bound:
    /// each key costs a few hundred bytes. A key forgotten is like one a real
    /// gateway let expire: a retry with it is charged again, so keep enough to
    /// outlast the payment step's retries (`orderflow_server` keeps 200,000).
    ///
    /// ```
    /// use flowline::orderflow::MockGateway;
    /// let gateway = MockGateway::builder().ledger_capacity(200_000).build(flowline::Clock::system())?;
    /// # let _ = gateway;
    /// # Ok::<(), flowline::orderflow::MockGatewayError>(())
    /// ```
    pub fn ledger_capacity(mut self, keys: usize) -> Self {
        self.ledger_capacity = Some(keys.max(1));
        self
    }

    /// A window in which every call fails with [`GatewayError::Unavailable`].
    pub fn outage(mut self, from: Timestamp, until: Timestamp) -> Self {
        self.outages.push(Outage { from, until });
        self
    }

    /// Builds the gateway; `clock` tells it when outages are.
    ///
    /// # Errors
    /// [`MockGatewayError`] for a rate outside 0..=1.
    pub fn build(self, clock: Clock) -> Result<MockGateway, MockGatewayError> {
        for (field, value) in [
            ("approval_rate", self.approval_rate),
            ("server_error_rate", self.server_error_rate),
            ("lost_response_rate", self.lost_response_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(MockGatewayError { field, value });
            }
        }
        Ok(MockGateway {
            config: self,
            clock,
            books: Arc::new(Mutex::new(Books::default())),
        })
    }
}

/// What the mock gateway did with one idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LedgerEntry {
    /// The key.
    pub idempotency_key: String,
    /// The store.
    pub store: TenantId,
    /// The order.
    pub order_id: String,
    /// The amount asked for.
    pub amount: Money,
    /// The charge, if captured.
    pub transaction_id: Option<String>,
    /// Why it was declined, if it was.
    pub declined: Option<String>,
    /// Whether the capture was refunded.
    pub refunded: bool,
    /// Calls made with this key, retries included.
    pub calls: u32,
}

#[derive(Debug, Default)]
struct Books {
    by_key: HashMap<String, LedgerEntry>,
    /// Calls per key, those that failed before deciding included.
    calls: HashMap<String, u32>,
    /// In the order keys were first decided.
    order: VecDeque<String>,
}

impl Books {
    /// Forgets the oldest decided keys beyond `capacity`, and the call counts
    /// of keys never decided once they are many.
    fn trim(&mut self, capacity: Option<usize>) {
        let Some(capacity) = capacity else {
            return;
        };
        while self.order.len() > capacity {
            if let Some(key) = self.order.pop_front() {
                self.by_key.remove(&key);
                self.calls.remove(&key);
            }
        }
        // Keys that only ever met a 5xx or an outage have a count and no
        // entry; a sweep now and then keeps them few (amortised O(1) a call).
        if self.calls.len() > 2 * capacity + 1024 {
            let by_key = &self.by_key;
            self.calls.retain(|key, _| by_key.contains_key(key));
        }
    }
}

/// A seeded stand-in payment gateway. Clones share one ledger.
#[derive(Clone, Debug)]
pub struct MockGateway {
    config: MockGatewayBuilder,
    clock: Clock,
    books: Arc<Mutex<Books>>,
}

impl MockGateway {
    /// Settings: approves everything at once, no failures, seed 0.
    pub fn builder() -> MockGatewayBuilder {
        MockGatewayBuilder {
            seed: 0,
            approval_rate: 1.0,
            server_error_rate: 0.0,
            lost_response_rate: 0.0,
            latency: Duration::ZERO,
            outages: Vec::new(),
            ledger_capacity: None,
        }
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every decided charge still kept (see
    /// [`ledger_capacity`](MockGatewayBuilder::ledger_capacity)), in the order decided.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        let books = self.books();
        books
            .order
            .iter()
            .filter_map(|key| books.by_key.get(key).cloned())
            .collect()
    }

    /// How many captures (refunded or not) the ledger holds for an order.
    pub fn captures_for(&self, store: &TenantId, order_id: &str) -> usize {
        self.books()
            .by_key
            .values()
            .filter(|e| &e.store == store && e.order_id == order_id)
            .filter(|e| e.transaction_id.is_some())
            .count()
    }

    fn in_outage(&self, now: Timestamp) -> bool {
        self.config
            .outages
            .iter()
            .any(|o| o.from <= now && now < o.until)
    }
}

#[async_trait]
impl PaymentGateway for MockGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        let seed = self.config.seed;
        let key = request.idempotency_key.as_str();
        let mut books = self.books();
        let calls = {
            let calls = books.calls.entry(key.to_string()).or_default();
            *calls += 1;
            *calls
        };
        if self.in_outage(self.clock.now()) {
            return Err(GatewayError::Unavailable);
        }
        if let Some(entry) = books.by_key.get_mut(key) {
            entry.calls = calls;
            if entry.amount != request.amount || entry.order_id != request.order_id {
                return Err(GatewayError::KeyReused {
                    key: key.to_string(),
                });
            }
            return match (&entry.transaction_id, &entry.declined) {
                (Some(id), _) => Ok(Charge {
                    transaction_id: id.clone(),
                    amount: entry.amount,
                }),
                (None, reason) => Err(GatewayError::Declined {
                    reason: reason.clone().unwrap_or_default(),
                }),
            };
        }
        let attempt = calls.to_le_bytes();
        if dice::roll(seed, &[key.as_bytes(), b"5xx", &attempt]) < self.config.server_error_rate {
            return Err(GatewayError::ServerError { status: 503 });
        }
        let approved = dice::roll(seed, &[key.as_bytes(), b"approve"]) < self.config.approval_rate;
        let transaction_id =
            approved.then(|| format!("TXN-{:016x}", dice::hash(seed, &[key.as_bytes(), b"txn"])));
        let declined = (!approved).then(|| "insufficient funds".to_string());
        books.order.push_back(key.to_string());
        books.by_key.insert(
            key.to_string(),
            LedgerEntry {
                idempotency_key: key.to_string(),
                store: request.store.clone(),
                order_id: request.order_id.clone(),
                amount: request.amount,
                transaction_id: transaction_id.clone(),
                declined: declined.clone(),
                refunded: false,
                calls,
            },
        );
        books.trim(self.config.ledger_capacity);
        match transaction_id {
            Some(_)
                if dice::roll(seed, &[key.as_bytes(), b"lost", &attempt])
                    < self.config.lost_response_rate =>
            {
                Err(GatewayError::Timeout)
            }
            Some(transaction_id) => Ok(Charge {
                transaction_id,
                amount: request.amount,
            }),
            None => Err(GatewayError::Declined {
                reason: declined.unwrap_or_default(),
            }),
        }
    }

    async fn refund(&self, transaction_id: &str) -> Result<Refund, GatewayError> {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        if self.in_outage(self.clock.now()) {
            return Err(GatewayError::Unavailable);
        }
        let mut books = self.books();
        let entry = books
            .by_key
            .values_mut()
            .find(|e| e.transaction_id.as_deref() == Some(transaction_id))
            .ok_or_else(|| GatewayError::UnknownTransaction(transaction_id.to_string()))?;
        entry.refunded = true;
        Ok(Refund {
            transaction_id: transaction_id.to_string(),
            amount: entry.amount,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orderflow::money::Currency;

    #[tokio::test]
    async fn a_bounded_ledger_keeps_the_newest_keys_and_forgets_the_rest() {
        let gateway = MockGateway::builder()
            .ledger_capacity(3)
            .build(Clock::system())
            .unwrap();
        for n in 0..5 {
            gateway.charge(&request(&format!("o-{n}"))).await.unwrap();
        }
        let kept: Vec<String> = gateway.ledger().into_iter().map(|e| e.order_id).collect();
        assert_eq!(kept, ["o-2", "o-3", "o-4"]);
        // A kept key is still idempotent; a forgotten one is charged again.
        gateway.charge(&request("o-4")).await.unwrap();
        assert_eq!(gateway.ledger().len(), 3);
        assert_eq!(gateway.captures_for(&TenantId::new("X").unwrap(), "o-4"), 1);
        gateway.charge(&request("o-0")).await.unwrap();
        let kept: Vec<String> = gateway.ledger().into_iter().map(|e| e.order_id).collect();
        assert_eq!(kept, ["o-3", "o-4", "o-0"]);
    }

    fn request(order: &str) -> ChargeRequest {
        ChargeRequest {
            store: TenantId::new("X").unwrap(),
            order_id: order.to_string(),
            amount: Money::new(2_500, Currency::USD),
            idempotency_key: format!("charge/X/{order}"),
        }
    }

    #[tokio::test]
    async fn the_same_key_charges_once() {
        let gateway = MockGateway::builder().build(Clock::system()).unwrap();
        let first = gateway.charge(&request("o-1")).await.unwrap();
        let again = gateway.charge(&request("o-1")).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(gateway.captures_for(&TenantId::new("X").unwrap(), "o-1"), 1);
        assert_eq!(gateway.ledger()[0].calls, 2);
        let mut other_amount = request("o-1");
        other_amount.amount = Money::new(1, Currency::USD);
        assert!(matches!(
            gateway.charge(&other_amount).await,
            Err(GatewayError::KeyReused { .. })
        ));
    }

    #[tokio::test]
    async fn a_lost_response_is_a_timeout_and_the_retry_finds_the_charge() {
        let gateway = MockGateway::builder()
            .lost_response_rate(1.0)
            .build(Clock::system())
            .unwrap();
        let err = gateway.charge(&request("o-2")).await.unwrap_err();
        assert_eq!(err, GatewayError::Timeout);
        assert!(err.is_retryable());
        let retry = gateway.charge(&request("o-2")).await.unwrap();
        assert!(retry.transaction_id.starts_with("TXN-"));
        assert_eq!(gateway.captures_for(&TenantId::new("X").unwrap(), "o-2"), 1);
    }

    #[tokio::test]
    async fn decisions_follow_the_seed_and_the_rate() {
        let decide = |seed| async move {
            let gateway = MockGateway::builder()
                .seed(seed)
                .approval_rate(0.7)
                .build(Clock::system())
                .unwrap();
            let mut approved = Vec::new();
            for n in 0..1_000 {
                approved.push(gateway.charge(&request(&format!("o-{n}"))).await.is_ok());
            }
            approved
        };
        let a = decide(1).await;
        assert_eq!(a, decide(1).await, "same seed, same decisions");
        assert_ne!(a, decide(2).await);
        let share = a.iter().filter(|ok| **ok).count() as f64 / 1_000.0;
        assert!((0.65..0.75).contains(&share), "{share}");
    }

    #[tokio::test]
    async fn a_decline_is_final_and_server_errors_capture_nothing() {
        let declining = MockGateway::builder()
            .approval_rate(0.0)
            .build(Clock::system())
            .unwrap();
        for _ in 0..3 {
            let err = declining.charge(&request("o-3")).await.unwrap_err();
            assert!(matches!(err, GatewayError::Declined { .. }));
            assert!(!err.is_retryable());
        }
        let failing = MockGateway::builder()
            .server_error_rate(1.0)
            .build(Clock::system())
            .unwrap();
        let err = failing.charge(&request("o-4")).await.unwrap_err();
        assert_eq!(err, GatewayError::ServerError { status: 503 });
        assert!(failing.ledger().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_window_refuses_calls_until_it_ends() {
        let start = Timestamp::from_millis(1_767_225_600_000);
        let clock = Clock::starting_at(start);
        let gateway = MockGateway::builder()
            .outage(start, start + Duration::from_secs(60))
            .build(clock)
            .unwrap();
        assert_eq!(
            gateway.charge(&request("o-5")).await,
            Err(GatewayError::Unavailable)
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        let charge = gateway.charge(&request("o-5")).await.unwrap();
        let refund = gateway.refund(&charge.transaction_id).await.unwrap();
        assert_eq!(refund.amount, charge.amount);
        assert!(gateway.ledger()[0].refunded);
        assert!(matches!(
            gateway.refund("TXN-nope").await,
            Err(GatewayError::UnknownTransaction(_))
        ));
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        let err = MockGateway::builder()
            .approval_rate(1.5)
            .build(Clock::system())
            .unwrap_err();
        assert_eq!(err.field, "approval_rate");
        assert!(MockGateway::builder()
            .server_error_rate(f64::NAN)
            .build(Clock::system())
            .is_err());
    }
}
