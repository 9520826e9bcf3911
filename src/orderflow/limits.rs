//! [`OrderLimits`]: flow control in the order flow. Per-store "fair use"
//! intake throttling (SEED_SPEC TR-5.2: one viral store cannot slow the
//! others), a per-store cap on payments in flight, and the gateway's own rate.

use std::time::Duration;

use crate::engine::flow_control::{Limit, LimitKey, Quota};
use crate::engine::{Engine, EngineError};
use crate::event::TenantId;

/// The name of the intake limit on both intake steps.
pub const INTAKE_LIMIT: &str = "intake";

/// The steps that take orders in: each has its own intake budget per store.
pub const INTAKE_STEPS: [&str; 2] = ["order_create_api", "order_submission_api"];

/// The name of the per-store limit on `payment_processing`.
pub const PAYMENTS_LIMIT: &str = "payments";

/// The name of the gateway's limit on `payment_processing`.
pub const GATEWAY_LIMIT: &str = "gateway";

/// How much of the order flow one store, or all of them, may use.
///
/// | field | default |
/// |---|---|
/// | `intake` | none: stores are not throttled |
/// | `payments_in_flight` | 16 payment executions per store |
/// | `gateway` | none: the gateway takes what comes |
///
/// ```
/// use std::time::Duration;
/// use flowline::flow_control::Quota;
/// use flowline::orderflow::{MockCarrier, MockGateway, OrderLimits, Orderflow};
/// use flowline::Clock;
///
/// let limits = OrderLimits::default()
///     // 20 orders a second per store, 40 at once.
///     .intake_rate(20, Duration::from_secs(1), 40)
///     // The gateway's contract: 100 calls a second from us in all.
///     .gateway_rate(100, Duration::from_secs(1), 1);
/// assert_eq!(limits.gateway, Some(Quota::rate(100, Duration::from_secs(1))));
/// let gateway = MockGateway::builder().build(Clock::system())?;
/// let flow = Orderflow::new(gateway, MockCarrier::new(1)).limits(limits).flow()?;
/// # let _ = flow;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OrderLimits {
    /// Orders one store may place through each intake route
    /// ([`INTAKE_STEPS`]); beyond it the route answers `429` with
    /// `Retry-After`, and the store's dashboard says `Throttled`. A store's
    /// own rate is set at run time with [`set_intake_rate`].
    pub intake: Option<Quota>,
    /// Payment executions (charges and refunds) one store may have in
    /// flight; the rest wait their turn, unrun and with no attempt counted.
    pub payments_in_flight: Option<u32>,
    /// Gateway calls all stores together may make.
    pub gateway: Option<Quota>,
}

impl Default for OrderLimits {
    fn default() -> Self {
        OrderLimits {
            intake: None,
            payments_in_flight: Some(16),
            gateway: None,
        }
    }
}

impl OrderLimits {
    /// No limits at all.
    pub fn none() -> Self {
        OrderLimits {
            intake: None,
            payments_in_flight: None,
            gateway: None,
        }
    }

    /// Throttles each store's intake to `count` orders per `period`, with a
    /// burst of `burst`.
    #[must_use]
    pub fn intake_rate(mut self, count: u32, period: Duration, burst: u32) -> Self {
        self.intake = Some(Quota::Rate {
            count,
            period,
            burst,
        });
        self
    }

    /// Limits the gateway calls of all stores together to `count` per
    /// `period`, with a burst of `burst`.
    #[must_use]
    pub fn gateway_rate(mut self, count: u32, period: Duration, burst: u32) -> Self {
        self.gateway = Some(Quota::Rate {
            count,
            period,
            burst,
        });
        self
    }

    /// Lets each store have `max` payment executions in flight (`None`: no cap).
    #[must_use]
    pub fn payments_in_flight(mut self, max: Option<u32>) -> Self {
        self.payments_in_flight = max;
        self
    }

    pub(crate) fn intake_limit(&self) -> Option<Limit> {
        self.intake
            .map(|quota| limit_of(quota, INTAKE_LIMIT, LimitKey::tenant()))
    }

    pub(crate) fn payment_limits(&self) -> Vec<Limit> {
        let mut limits = Vec::new();
        if let Some(max) = self.payments_in_flight {
            limits.push(Limit::concurrency(max).named(PAYMENTS_LIMIT));
        }
        if let Some(quota) = self.gateway {
            limits.push(limit_of(quota, GATEWAY_LIMIT, LimitKey::global()));
        }
        limits
    }
}

fn limit_of(quota: Quota, name: &str, key: LimitKey) -> Limit {
    let limit = match quota {
        Quota::Rate {
            count,
            period,
            burst,
        } => Limit::rate(count, period).burst(burst),
        Quota::Concurrency { max } => Limit::concurrency(max),
    };
    limit.named(name).per(key)
}

/// Sets one store's intake rate on both intake routes, for every engine
/// sharing the backend; kept in the store (a store upgrades its plan). The
/// flow must declare an intake limit ([`OrderLimits::intake`]).
///
/// # Errors
/// [`EngineError::Limit`] if the flow declares no intake limit or the quota
/// is not a valid rate; a backend error.
pub async fn set_intake_rate(
    engine: &Engine,
    store: &TenantId,
    quota: Quota,
) -> Result<(), EngineError> {
    for step in INTAKE_STEPS {
        engine
            .set_limit(step, INTAKE_LIMIT, store.as_str(), quota)
            .await?;
    }
    Ok(())
}

/// Puts one store back on the declared intake rate.
///
/// # Errors
/// As [`set_intake_rate`].
pub async fn clear_intake_rate(engine: &Engine, store: &TenantId) -> Result<(), EngineError> {
    for step in INTAKE_STEPS {
        engine
            .clear_limit(step, INTAKE_LIMIT, store.as_str())
            .await?;
    }
    Ok(())
}
