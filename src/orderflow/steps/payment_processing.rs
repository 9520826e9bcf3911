//! Step 5 of 14: Payment (the seed's `payment_processing`): charge a reserved order
//! through the [`PaymentGateway`](crate::orderflow::PaymentGateway), refund it
//! when the order unwinds after the charge.
//!
//! The idempotency key is derived from the store and the order, so no retry,
//! re-run or replay charges twice (SEED_SPEC §8.1). A decline is final:
//! `payment.failed`, then compensation (stock released, order failed). A
//! timeout, 5xx or outage is not: the attempt is recorded, `payment.retrying`
//! announced, and a durable timer (`payment.retry_due`, a delayed event keyed
//! by the order) brings the next attempt after the policy's backoff; a charge
//! settled by another delivery (a replay) cancels the timer still waiting. No
//! worker sleeps, and a restart loses no timer. When the policy is spent, the
//! timer dead-letters: the order stays reserved, visible, and a replay tries
//! again. Whenever the engine gives up on a delivery of this step, its failure
//! hook announces `order.stalled` with the dead letter, and an alert is raised.

use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::event::EmitOptions;
use crate::orderflow::events::{
    DeliveryReturned, InventoryReserved, OrderCancelled, OrderFailed, OrderStalled, PaymentFailed,
    PaymentProcessed, PaymentRecovered, PaymentRetryDue, PaymentRetrying,
};
use crate::orderflow::gateway::{ChargeRequest, GatewayError};
use crate::orderflow::model::{keys, PaymentRecord};
use crate::orderflow::stats;
use crate::orderflow::status::OrderStatus;

use super::{announce_stall, classify, expect_order, move_order, save_order, Deps};
use crate::inbound;

inbound! {
    /// What makes the payment step charge or refund.
    pub(crate) enum PaymentInput {
        Reserved(InventoryReserved),
        RetryDue(PaymentRetryDue),
        Failed(OrderFailed),
        Returned(DeliveryReturned),
        Cancelled(OrderCancelled),
    }
}

pub(crate) fn step(deps: &Deps) -> Step {
    let deps = deps.clone();
    let mut step = Step::event::<PaymentInput>("payment_processing")
        .emits::<PaymentProcessed>()
        .emits::<PaymentRecovered>()
        .emits::<PaymentFailed>()
        .emits::<PaymentRetrying>()
        .emits::<PaymentRetryDue>()
        .emits::<OrderStalled>();
    for limit in deps.limits.payment_limits() {
        step = step.limit(limit);
    }
    step.handle(move |ctx: StepContext, input: PaymentInput| {
        let deps = deps.clone();
        async move {
            match input {
                PaymentInput::Reserved(e) => charge(&ctx, &deps, &e.order_id).await,
                PaymentInput::RetryDue(e) => charge(&ctx, &deps, &e.order_id).await,
                PaymentInput::Failed(e) => refund(&ctx, &deps, &e.order_id).await,
                PaymentInput::Returned(e) => refund(&ctx, &deps, &e.order_id).await,
                PaymentInput::Cancelled(e) => refund(&ctx, &deps, &e.order_id).await,
            }
        }
    })
    .on_failure(announce_stall("payment_processing", PaymentInput::order_id))
}

impl PaymentInput {
    fn order_id(self) -> String {
        match self {
            PaymentInput::Reserved(e) => e.order_id,
            PaymentInput::RetryDue(e) => e.order_id,
            PaymentInput::Failed(e) => e.order_id,
            PaymentInput::Returned(e) => e.order_id,
            PaymentInput::Cancelled(e) => e.order_id,
        }
    }
}

async fn charge(ctx: &StepContext, deps: &Deps, order_id: &str) -> Result<(), StepError> {
    let mut order = expect_order(ctx, order_id).await?;
    if order.status != OrderStatus::Reserved {
        return Ok(()); // paid or unwound already
    }
    let key = keys::payment(order_id);
    let mut record = ctx
        .get::<PaymentRecord>(&key)
        .await?
        .unwrap_or_else(|| PaymentRecord {
            idempotency_key: format!("{}:{}:charge", ctx.tenant(), order_id),
            retries: 0,
            transaction_id: None,
            captured: None,
            declined: None,
            refunded: None,
        });
    let request = ChargeRequest {
        store: ctx.tenant().clone(),
        order_id: order_id.to_string(),
        amount: order.total,
        idempotency_key: record.idempotency_key.clone(),
    };
    let now = ctx.now();
    match deps.gateway.charge(&request).await {
        Ok(charge) => {
            move_order(
                ctx,
                &mut order,
                OrderStatus::Paid,
                "PAYMENT_RECEIVED",
                now,
                Some(charge.transaction_id.clone()),
            )?;
            record.transaction_id = Some(charge.transaction_id.clone());
            record.captured = Some(charge.amount);
            stats::captured(ctx, charge.amount)?;
            ctx.emit(&PaymentProcessed {
                order_id: order_id.to_string(),
                transaction_id: charge.transaction_id,
                amount: charge.amount,
                retries: record.retries,
            })?;
            if record.retries > 0 {
                ctx.emit(&PaymentRecovered {
                    order_id: order_id.to_string(),
                    retries: record.retries,
                })?;
            }
        }
        Err(GatewayError::Declined { reason }) => {
            move_order(
                ctx,
                &mut order,
                OrderStatus::Failed,
                "PAYMENT_DECLINED",
                now,
                Some(reason.clone()),
            )?;
            order.failure = Some(format!("payment declined: {reason}"));
            record.declined = Some(reason.clone());
            ctx.emit(&PaymentFailed {
                order_id: order_id.to_string(),
                customer: order.customer.clone(),
                amount: order.total,
                reason,
                retries: record.retries,
            })?;
        }
        Err(err) if err.is_retryable() => {
            let attempt = record.retries + 1;
            let policy = &deps.timings.payment_retry;
            let Some(delay) = policy.next_delay(attempt, std::time::Duration::ZERO, None) else {
                return Err(StepError::permanent(format!(
                    "payment gateway still failing after {attempt} attempts ({err}); replay to try again"
                )));
            };
            record.retries = attempt;
            let next_attempt_at = now + delay;
            order.note(
                "PAYMENT_RETRYING",
                now,
                Some(format!("attempt {attempt}: {err}")),
            );
            ctx.emit(&PaymentRetrying {
                order_id: order_id.to_string(),
                attempt,
                next_attempt_at,
                error: err.to_string(),
            })?;
            ctx.emit_with(
                &PaymentRetryDue {
                    order_id: order_id.to_string(),
                },
                EmitOptions::new()
                    .delay(delay)
                    .cancel_key(keys::payment_retry(order_id)),
            )?;
        }
        // A reused key means two different charges share one key: a bug, never
        // something to retry into.
        Err(err) => return Err(StepError::permanent(err)),
    }
    if record.retries > 0 && (record.captured.is_some() || record.declined.is_some()) {
        // Settled by another delivery than the timer (a replay, a duplicate):
        // the timer still waiting would only find the order settled.
        ctx.cancel_emit::<PaymentRetryDue>(&keys::payment_retry(order_id));
    }
    ctx.put(&key, &record)?;
    save_order(ctx, &mut order)
}

async fn refund(ctx: &StepContext, deps: &Deps, order_id: &str) -> Result<(), StepError> {
    let key = keys::payment(order_id);
    let Some(mut record) = ctx.get::<PaymentRecord>(&key).await? else {
        return Ok(()); // never charged
    };
    let (Some(transaction_id), Some(_), None) =
        (&record.transaction_id, record.captured, record.refunded)
    else {
        return Ok(()); // not captured, or refunded already
    };
    let refund = deps
        .gateway
        .refund(transaction_id)
        .await
        .map_err(classify)?;
    record.refunded = Some(refund.amount);
    stats::refunded(ctx, refund.amount)?;
    let mut order = expect_order(ctx, order_id).await?;
    order.note("REFUNDED", ctx.now(), Some(refund.transaction_id));
    save_order(ctx, &mut order)?;
    ctx.put(&key, &record)?;
    Ok(())
}
