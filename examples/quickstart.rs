//! Quickstart: a three-step flow with a retry, a dead letter and a cron step.
//!
//! ```text
//! cargo run --example quickstart                 # on ./flowline-quickstart.db
//! cargo run --example quickstart -- other.db     # on another file
//! ```
//!
//! It runs on the embedded default, a SQLite file: run it again and the state
//! (revenue, cron fires, dead letters) carries on from the last run.
//!
//! Orders come in; `charge` bills them through a flaky gateway (the first attempt of
//! every third order times out and is retried with backoff; an order of zero cents
//! is refused for good and dead-lettered); `ship` records the shipment; a cron step
//! reports every second. At the end it prints the metrics, the dead letters and the
//! flow graph.

use std::time::Duration;

use flowline::prelude::*;
use flowline::DeadLetterQuery;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct OrderPlaced {
    order: u32,
    cents: i64,
}
impl Event for OrderPlaced {
    const TOPIC: &'static str = "order.placed";
}

#[derive(Serialize, Deserialize, Debug)]
struct PaymentCaptured {
    order: u32,
    cents: i64,
}
impl Event for PaymentCaptured {
    const TOPIC: &'static str = "payment.captured";
}

#[derive(Debug, thiserror::Error)]
enum GatewayError {
    #[error("gateway timed out")]
    Timeout,
    #[error("amount must be positive, got {0} cents")]
    InvalidAmount(i64),
}

/// A stand-in payment gateway: refuses non-positive amounts, and times out on the
/// first try of every third order.
fn gateway_charge(order: u32, cents: i64, attempt: u32) -> Result<(), GatewayError> {
    if cents <= 0 {
        return Err(GatewayError::InvalidAmount(cents));
    }
    if order.is_multiple_of(3) && attempt == 1 {
        return Err(GatewayError::Timeout);
    }
    Ok(())
}

fn charge() -> Step {
    Step::event::<OrderPlaced>("charge")
        .emits::<PaymentCaptured>()
        .retry(
            RetryPolicy::exponential(Duration::from_millis(200), Duration::from_secs(2))
                .max_attempts(4),
        )
        .handle(|ctx: StepContext, placed: OrderPlaced| async move {
            // A real gateway gets `ctx.idempotency_key("charge")`: the same on every
            // attempt and re-run, so the customer is charged once.
            match gateway_charge(placed.order, placed.cents, ctx.attempt()) {
                Ok(()) => {}
                Err(err @ GatewayError::InvalidAmount(_)) => return Err(StepError::permanent(err)),
                Err(err) => {
                    println!(
                        "  charge  order {:>2}: attempt {} failed ({err}); will retry",
                        placed.order,
                        ctx.attempt()
                    );
                    return Err(StepError::retryable(err));
                }
            }
            let revenue: i64 = ctx.get("revenue").await?.unwrap_or(0);
            ctx.put("revenue", &(revenue + placed.cents))?;
            ctx.emit(&PaymentCaptured {
                order: placed.order,
                cents: placed.cents,
            })?;
            Ok(())
        })
}

fn ship() -> Step {
    Step::event::<PaymentCaptured>("ship").handle(
        |ctx: StepContext, paid: PaymentCaptured| async move {
            ctx.put(&format!("shipments/{}", paid.order), &"shipped")?;
            println!(
                "  ship    order {:>2}: {} cents captured, shipped",
                paid.order, paid.cents
            );
            Ok::<_, StepError>(())
        },
    )
}

fn report() -> Step {
    Step::cron("report", "* * * * * *").handle(|ctx: StepContext, tick: CronTick| async move {
        let fires: u32 = ctx.get("fires").await?.unwrap_or(0);
        ctx.put("fires", &(fires + 1))?;
        println!("  report  cron tick for {}", tick.fire_at);
        Ok::<_, StepError>(())
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flow = Flow::builder()
        .external::<OrderPlaced>()
        .steps([charge(), ship(), report()])
        .build()?;
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "flowline-quickstart.db".to_string());
    let backend = flowline::SqliteBackend::open(&path)?;
    println!("database: {path}");
    let engine = Engine::builder(flow).backend(backend).start().await?;
    let shop = TenantId::new("shop-1")?;

    println!("emitting 6 orders (order 0 has no amount and will be dead-lettered)");
    for order in 0..6u32 {
        let cents = i64::from(order) * 1_000;
        engine.emit(&shop, &OrderPlaced { order, cents }).await?;
    }
    // Long enough for the retries' backoff and a couple of cron ticks.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    engine.wait_idle().await;

    let revenue: i64 = engine.state(&shop, "revenue").await?.unwrap_or(0);
    let fires: u32 = engine
        .state(&TenantId::system(), "fires")
        .await?
        .unwrap_or(0);
    let m = engine.metrics().await?;
    println!("\nrevenue of {shop}: {revenue} cents; cron fired {fires} times");
    println!(
        "metrics: processed {}, failed attempts {}, retried {}, dead-lettered {}, queue pending {}",
        m.processed,
        m.failed,
        m.retried,
        m.dead_lettered,
        m.queue.pending()
    );
    for dead in engine.dead_letters(&DeadLetterQuery::default()).await? {
        println!(
            "dead letter #{}: step {} on {} after {} attempt(s): {}",
            dead.id, dead.step, dead.event.topic, dead.attempts, dead.last_error
        );
    }
    println!("\nflow graph (Mermaid):\n{}", engine.flow().to_mermaid());
    let report = engine.shutdown(Duration::from_secs(5)).await;
    println!(
        "shut down: {} finished, {} released",
        report.finished, report.released
    );
    Ok(())
}
