//! Step 3 of 14: Fraud guard (the seed's `fraudGuard`), and the review queue of
//! held orders.
//!
//! The seed's rules and numbers, counted per store: amount above 10,000.00,
//! more than 100 units, 5 orders by one customer within an hour, 3 failed
//! payments within a day. Two indicators hold the order (`flagged`) and start
//! a durable wait for its review ([`fraud_review`](super::fraud_review)):
//! `fraud.verified` releases or rejects it, and no review within
//! [`Timings::review_timeout`](crate::orderflow::Timings) rejects it. Fewer
//! indicators clear it.
//! A store with screening off clears every order at once. Either way nothing
//! is reserved or charged before clearance (SEED_SPEC §8.6).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{ApiRequest, ApiResponse, Method};
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::orderflow::events::{OrderCleared, OrderCreated, OrderFlagged, PaymentFailed};
use crate::orderflow::fraud::{screen, Screening, FAILED_WINDOW, RAPID_WINDOW};
use crate::orderflow::http;
use crate::orderflow::model::keys;
use crate::orderflow::status::OrderStatus;
use crate::orderflow::store::StoreSettings;
use crate::time::Timestamp;

use super::fraud_review::start_hold;
use super::{move_order, save_order, Deps};
use crate::inbound;

inbound! {
    /// What the fraud guard hears: new orders, and failed payments to count.
    pub(crate) enum FraudInput {
        Created(OrderCreated),
        PaymentFailed(PaymentFailed),
    }
}

/// One customer's recent activity in one store.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CustomerHistory {
    orders: Vec<Timestamp>,
    failures: Vec<Timestamp>,
}

/// The most order times, and the most failure times, a customer's history
/// keeps: the newest. The rules count up to `RAPID_ORDERS` and
/// `FAILED_PAYMENTS` of them, so the newest `KEPT` give the verdict the
/// whole window would, unless more than `KEPT - RAPID_ORDERS` of the times
/// kept are later than the order being screened (orders placed after it, yet
/// screened before it). Without the bound a regular customer's history grew
/// by one time per order for the whole window (an hour of orders, a day of
/// failures), and it is read and rewritten at every order: 1.9 KB per key
/// after 2,000,000 orders over 15,000 customers in `orderflow_soak`.
const KEPT: usize = 64;

impl CustomerHistory {
    /// Keeps what a rule can still count: the times within its window, at
    /// most the newest [`KEPT`].
    fn prune(&mut self, now: Timestamp) {
        let keep = |times: &mut Vec<Timestamp>, window: Duration| {
            let since = now - window;
            times.retain(|t| *t > since);
            if times.len() > KEPT {
                times.sort_unstable();
                times.drain(..times.len() - KEPT);
            }
        };
        keep(&mut self.orders, RAPID_WINDOW);
        keep(&mut self.failures, FAILED_WINDOW);
    }
}

/// An order waiting for review, in the review queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Held {
    order_id: String,
    customer: String,
    total: crate::orderflow::Money,
    reason: String,
    flagged_at: Timestamp,
}

/// The most held orders one listing returns.
const MAX_HELD: usize = 500;

pub(crate) fn steps(deps: &Deps) -> Vec<Step> {
    vec![guard(deps), held()]
}

fn guard(deps: &Deps) -> Step {
    let deps = deps.clone();
    Step::event::<FraudInput>("fraud_guard")
        .emits::<OrderFlagged>()
        .emits::<OrderCleared>()
        .handle(move |ctx: StepContext, input: FraudInput| {
            let deps = deps.clone();
            async move {
                match input {
                    FraudInput::Created(created) => on_created(&ctx, &deps, created).await,
                    FraudInput::PaymentFailed(failed) => {
                        let key = keys::customer(&failed.customer);
                        let mut history: CustomerHistory = ctx.get(&key).await?.unwrap_or_default();
                        history.failures.push(ctx.now());
                        history.prune(ctx.now());
                        ctx.put(&key, &history)?;
                        Ok(())
                    }
                }
            }
        })
}

async fn on_created(
    ctx: &StepContext,
    deps: &Deps,
    created: OrderCreated,
) -> Result<(), StepError> {
    // The order is read only to hold it: a cleared order is not written, and a
    // second clearance of one (a replay) is ignored by the inventory step.
    let screening_on = ctx
        .get::<StoreSettings>(keys::SETTINGS)
        .await?
        .is_none_or(|s| s.fraud_screening);
    if !screening_on {
        ctx.emit(&OrderCleared {
            order_id: created.order_id,
            screened: false,
            reviewed: false,
        })?;
        return Ok(());
    }
    let key = keys::customer(&created.customer);
    let mut history: CustomerHistory = ctx.get(&key).await?.unwrap_or_default();
    history.orders.push(created.created_at);
    history.prune(ctx.now());
    ctx.put(&key, &history)?;
    let verdict = screen(&Screening {
        amount: created.total,
        quantity: created.lines.iter().map(|l| u64::from(l.quantity)).sum(),
        at: created.created_at,
        recent_orders: &history.orders,
        recent_failures: &history.failures,
    });
    if verdict.flagged() {
        let mut order = super::expect_order(ctx, &created.order_id).await?;
        if order.status != OrderStatus::Pending {
            return Ok(()); // screened already
        }
        let reason = verdict.reason();
        move_order(
            ctx,
            &mut order,
            OrderStatus::Flagged,
            "FLAGGED",
            ctx.now(),
            Some(reason.clone()),
        )?;
        order.indicators = verdict.indicators.clone();
        save_order(ctx, &mut order)?;
        let queued = Held {
            order_id: created.order_id.clone(),
            customer: created.customer.clone(),
            total: created.total,
            reason: reason.clone(),
            flagged_at: ctx.now(),
        };
        ctx.put(&keys::held(&created.order_id), &queued)?;
        start_hold(ctx, deps, &created.order_id).await?;
        ctx.emit(&OrderFlagged {
            order_id: created.order_id,
            reason,
            indicators: verdict.indicators,
        })?;
    } else {
        ctx.emit(&OrderCleared {
            order_id: created.order_id,
            screened: true,
            reviewed: false,
        })?;
    }
    Ok(())
}

/// `GET /api/order/held`: the review queue, oldest order id first (at most 500).
fn held() -> Step {
    Step::api("fraud_review_queue_api", Method::Get, "/api/order/held").handle(
        |ctx: StepContext, _request: ApiRequest| async move {
            if let Err(response) = http::settings(&ctx).await? {
                return Ok(response);
            }
            let held: Vec<Held> = ctx
                .scan::<Held>(keys::HELD, MAX_HELD)
                .await?
                .into_iter()
                .map(|(_, held)| held)
                .collect();
            Ok::<_, StepError>(ApiResponse::ok(&json!({ "held": held })))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orderflow::fraud::{Indicator, RAPID_ORDERS};
    use crate::orderflow::{Currency, Money};

    fn rapid(recent_orders: &[Timestamp], at: Timestamp) -> bool {
        screen(&Screening {
            amount: Money::new(9_900, Currency::USD),
            quantity: 1,
            at,
            recent_orders,
            recent_failures: &[],
        })
        .indicators
        .contains(&Indicator::RapidOrders)
    }

    #[test]
    fn a_customer_history_keeps_at_most_the_newest_times_of_its_window() {
        let start = Timestamp::from_millis(1_767_225_600_000);
        let mut history = CustomerHistory::default();
        // 10,000 orders and failures 100 ms apart: all within both windows.
        for i in 0..10_000 {
            let at = start + Duration::from_millis(i * 100);
            history.orders.push(at);
            history.failures.push(at);
            history.prune(at);
            assert!(history.orders.len() <= KEPT && history.failures.len() <= KEPT);
        }
        let newest = start + Duration::from_millis(9_999 * 100);
        assert_eq!(history.orders.len(), KEPT);
        assert_eq!(history.orders.last(), Some(&newest));
        assert_eq!(
            history.failures.first(),
            Some(&(newest - Duration::from_millis(6_300)))
        );
        assert!(
            rapid(&history.orders, newest),
            "a rapid customer stays rapid"
        );
        // Out of the window, out of the history.
        history.prune(newest + RAPID_WINDOW);
        assert!(history.orders.is_empty());
        assert_eq!(history.failures.len(), KEPT);
    }

    #[test]
    fn a_late_screening_sees_what_the_whole_window_shows() {
        let start = Timestamp::from_millis(1_767_225_600_000);
        let every: Vec<Timestamp> = (0..200).map(|i| start + Duration::from_secs(i)).collect();
        let mut history = CustomerHistory::default();
        // Recorded out of order: the newest first.
        for at in every.iter().rev() {
            history.orders.push(*at);
        }
        history.prune(every[199]);
        assert_eq!(history.orders, every[200 - KEPT..]);
        // The latest order with `KEPT - RAPID_ORDERS` later ones kept still
        // has RAPID_ORDERS in its window, as with the whole history.
        let late = every[199 - (KEPT - RAPID_ORDERS)];
        assert!(rapid(&every, late));
        assert!(rapid(&history.orders, late));
    }
}
