//! Step 12 of 14: Dashboard stats: `GET /api/dashboard/stats` (the seed's
//! `dashboard_stats_api`).
//!
//! The seed's metrics (`totalOrders`, `revenue`, `activeAlerts`,
//! `fulfillmentRate`, `recentOrders`) plus counts per status, read from
//! counters the steps keep up to date, so a read costs the same for ten orders
//! or ten million. Revenue is what was captured minus what was refunded
//! (SEED_SPEC §8.11), in the store's currency. The counters cover the store's
//! whole life; `recentOrders` holds the newest 10. `status` is `Throttled`
//! while the store's intake is out of budget (TR-5.2, until `throttledUntil`),
//! else `Healthy`.

use serde_json::{json, Map, Value};

use crate::api::{ApiRequest, ApiResponse, Method};
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::orderflow::http;
use crate::orderflow::limits::{INTAKE_LIMIT, INTAKE_STEPS};
use crate::orderflow::model::keys;
use crate::orderflow::money::Money;
use crate::orderflow::stats;
use crate::orderflow::status::OrderStatus;
use crate::time::Timestamp;

use super::load_order;

/// How many orders `recentOrders` lists.
pub(crate) const RECENT_ORDERS: usize = 10;

pub(crate) fn step() -> Step {
    Step::api("dashboard_stats_api", Method::Get, "/api/dashboard/stats").handle(
        |ctx: StepContext, _request: ApiRequest| async move {
            let settings = match http::settings(&ctx).await? {
                Ok(settings) => settings,
                Err(response) => return Ok(response),
            };
            let counters = stats::read(&ctx).await?;
            let fulfilled = [
                OrderStatus::Fulfilled,
                OrderStatus::Shipped,
                OrderStatus::Delivered,
            ]
            .into_iter()
            .map(|s| counters.count(s))
            .sum::<i64>();
            #[allow(clippy::cast_precision_loss)]
            let rate = if counters.orders == 0 {
                100.0
            } else {
                (fulfilled as f64 * 1000.0 / counters.orders as f64).round() / 10.0
            };
            let by_status: Map<String, Value> = counters
                .by_status
                .iter()
                .map(|(s, n)| (s.as_str().to_string(), json!(n)))
                .collect();
            let now = ctx.now();
            let mut recent = Vec::with_capacity(RECENT_ORDERS);
            for (_, order_id) in ctx
                .scan::<String>(keys::RECENT_ORDERS, RECENT_ORDERS)
                .await?
            {
                if let Some(order) = load_order(&ctx, &order_id).await? {
                    recent.push(json!({
                        "id": order.order_id.chars().take(8).collect::<String>().to_uppercase(),
                        "orderId": order.order_id,
                        "customer": order.customer,
                        "amount": order.total,
                        "status": order.status.display_group(),
                        "rawStatus": order.status,
                        "time": relative_time(now, order.created_at),
                    }));
                }
            }
            let currency = settings.currency;
            let throttled_until = throttled_until(&ctx).await?;
            Ok::<_, StepError>(ApiResponse::ok(&json!({
                "status": if throttled_until.is_some() { "Throttled" } else { "Healthy" },
                "throttledUntil": throttled_until,
                "totalOrders": counters.orders,
                "revenue": Money::new(counters.captured - counters.refunded, currency),
                "captured": Money::new(counters.captured, currency),
                "refunded": Money::new(counters.refunded, currency),
                "activeAlerts": counters.active_alerts,
                "fulfillmentRate": rate,
                "ordersByStatus": by_status,
                "recentOrders": recent,
            })))
        },
    )
}

/// Until when the store's intake is throttled (TR-5.2), if it is now: the
/// later of its two intake routes.
async fn throttled_until(ctx: &StepContext) -> Result<Option<Timestamp>, StepError> {
    let mut until = None;
    for step in INTAKE_STEPS {
        until = until.max(ctx.throttled_until(step, INTAKE_LIMIT).await?);
    }
    Ok(until)
}

/// The seed's relative times: `Just now`, `1 min ago`, `5 mins ago`, `2 hours ago`, `3 days ago`.
pub(crate) fn relative_time(now: Timestamp, then: Timestamp) -> String {
    let minutes = now.saturating_since(then).as_secs() / 60;
    let plural = |n: u64, unit: &str| format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" });
    match minutes {
        0 => "Just now".to_string(),
        1..=59 => plural(minutes, "min"),
        _ if minutes < 24 * 60 => plural(minutes / 60, "hour"),
        _ => plural(minutes / (24 * 60), "day"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_read_like_the_seed() {
        let t = Timestamp::from_millis(1_000_000_000);
        let later = |secs: i64| Timestamp::from_millis(1_000_000_000 + secs * 1000);
        assert_eq!(relative_time(later(59), t), "Just now");
        assert_eq!(relative_time(later(60), t), "1 min ago");
        assert_eq!(relative_time(later(300), t), "5 mins ago");
        assert_eq!(relative_time(later(7_200), t), "2 hours ago");
        assert_eq!(relative_time(later(86_400), t), "1 day ago");
    }
}
