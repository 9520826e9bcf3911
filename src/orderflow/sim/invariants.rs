//! The order system's invariants: those that hold at every instant, and
//! those that hold once the faults stop and the flow settles.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{call, request};
use super::{OrderScenario, INTAKE_BURST, INTAKE_PER_SECOND, PAYMENTS_IN_FLIGHT};
use crate::api::Method;
use crate::backend::DeadLetterQuery;
use crate::orderflow::{self, OrderStatus, Stock, StockReadError};
use crate::sim::{ensure, Sim, SimError};

/// Rounds of settling at the end: each waits, replays what permanent faults
/// dead-lettered and decides the held orders.
const SETTLE_ROUNDS: usize = 6;

impl OrderScenario {
    /// A product's counts, refusing counts that do not add up.
    async fn stock(&self, sim: &Sim, store: usize, product: &str) -> Result<Stock, SimError> {
        match orderflow::stock_counts(sim.engine(), &self.stores[store], product).await {
            Ok(Some((_, counts))) => {
                ensure(counts.is_balanced(), || {
                    format!(
                        "{}/{product}: counts do not add up: {counts:?}",
                        self.stores[store]
                    )
                })?;
                Ok(counts)
            }
            Ok(None) => Err(SimError::violated(format!(
                "{}/{product} has no stock record",
                self.stores[store]
            ))),
            Err(StockReadError::Inconsistent(err)) => Err(SimError::violated(format!(
                "{}/{product}: {err}",
                self.stores[store]
            ))),
            Err(err) => Err(SimError::Other(Box::new(err))),
        }
    }

    /// The invariants of every instant (faults are held off while they read).
    pub(super) async fn check_now(&self, sim: &Sim) -> Result<(), SimError> {
        for store in 0..self.stores.len() {
            for product in self.products(store) {
                let counts = self.stock(sim, store, &product).await?;
                let initial = self.initial.get(&(store, product.clone())).copied();
                ensure(initial == Some(counts.initial), || {
                    format!(
                        "{product}: started with {initial:?}, now says {}",
                        counts.initial
                    )
                })?;
            }
            let most = self.gateway.most_in_flight(&self.stores[store]);
            ensure(most <= PAYMENTS_IN_FLIGHT, || {
                format!(
                    "{} had {most} payments at the gateway at once (limit {PAYMENTS_IN_FLIGHT})",
                    self.stores[store]
                )
            })?;
        }
        #[cfg(feature = "webhooks")]
        if let Some(hooks) = &self.hooks {
            hooks.check_now(&self.stores)?;
        }
        let dead = sim
            .engine()
            .dead_letters(&DeadLetterQuery::default())
            .await?;
        if let Some(unexpected) = dead.iter().find(|d| !self.expected(sim, d)) {
            return Err(SimError::violated(format!(
                "dead letter of {} ({} {} {} of {}) no fault made, after {} attempts from {} to {}: {}",
                unexpected.step,
                unexpected.event.topic,
                unexpected.event.id,
                unexpected.event.payload.as_json(),
                unexpected.event.tenant,
                unexpected.attempts,
                unexpected.first_attempt_at,
                unexpected.failed_at,
                unexpected.last_error
            )));
        }
        Ok(())
    }

    /// Lets every order finish: time passes, permanent faults' dead letters
    /// are replayed, held orders are decided.
    pub(super) async fn settle_everything(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        for _ in 0..SETTLE_ROUNDS {
            sim.advance(Duration::from_secs(30 * 60)).await?;
            let replayed = self.replay_dead_letters(sim).await?;
            self.review_held(sim, usize::MAX).await?;
            let idle = sim.settle(Duration::from_secs(30 * 60)).await?;
            if replayed == 0 && idle && self.nothing_open(sim).await? && self.quiet(sim).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Whether nothing is pending that the invariants of the end wait for:
    /// with webhooks, a message due again later (a retry after a refusal)
    /// is, though the engine is idle until then.
    async fn quiet(&self, sim: &Sim) -> Result<bool, SimError> {
        #[cfg(feature = "webhooks")]
        if self.hooks.is_some() {
            return Ok(sim.engine().metrics().await?.queue.pending() == 0);
        }
        let _ = sim;
        Ok(true)
    }

    /// Whether no order is left in a status other than terminal or held.
    async fn nothing_open(&self, sim: &mut Sim) -> Result<bool, SimError> {
        for (store, id) in self.orders.keys() {
            let status = self.status(sim, *store, id).await?;
            if !settled(&status) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn status(&self, sim: &mut Sim, store: usize, id: &str) -> Result<String, SimError> {
        let tenant = self.stores[store].clone();
        let path = format!("/api/order/tracking/{id}");
        let tracking = call(sim, "tracking", || {
            request(Method::Get, &path, &tenant, Value::Null)
        })
        .await?;
        ensure(tracking.status == 200, || {
            format!(
                "accepted order {tenant}/{id} is not found: {}",
                tracking.body
            )
        })?;
        Ok(tracking.body["status"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The invariants of the end.
    pub(super) async fn check_end(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        self.check_now(sim).await?;
        #[cfg(feature = "webhooks")]
        if let Some(hooks) = &self.hooks {
            hooks.check_end(self)?;
        }
        let ledger = self.gateway.mock().ledger();
        let mut bought: BTreeMap<(usize, String), u32> = BTreeMap::new();
        let mut by_status: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); self.stores.len()];
        for ((store, id), placed) in &self.orders {
            let (store, tenant) = (*store, &self.stores[*store]);
            let status = self.status(sim, store, id).await?;
            sim.note(format_args!("end {tenant}/{id} {status}"));
            ensure(settled(&status), || {
                format!("order {tenant}/{id} ended {status}")
            })?;
            *by_status[store].entry(status.clone()).or_default() += 1;
            let captures = self.gateway.mock().captures_for(tenant, id);
            ensure(captures <= 1, || {
                format!("order {tenant}/{id} was charged {captures} times")
            })?;
            if matches!(status.as_str(), "delivered" | "returned") {
                ensure(captures == 1, || {
                    format!("order {tenant}/{id} is {status} without a charge")
                })?;
            }
            if status == "rejected" {
                ensure(captures == 0, || {
                    format!("rejected order {tenant}/{id} was charged")
                })?;
            }
            let kept = ledger.iter().any(|e| {
                &e.store == tenant && &e.order_id == id && e.transaction_id.is_some() && !e.refunded
            });
            ensure(kept == (status == "delivered"), || {
                format!("order {tenant}/{id} is {status}, and its money kept: {kept}")
            })?;
            if status == "delivered" {
                for (product, quantity) in &placed.lines {
                    *bought.entry((store, product.clone())).or_default() += quantity;
                }
            }
        }
        for (store, by_status) in by_status.iter().enumerate() {
            for product in self.products(store) {
                let counts = self.stock(sim, store, &product).await?;
                ensure(counts.reserved == 0, || {
                    format!("{product}: nothing is open, yet {counts:?}")
                })?;
                let sold = bought.get(&(store, product.clone())).copied().unwrap_or(0);
                ensure(counts.sold == sold, || {
                    format!(
                        "{product}: sold {} but delivered orders bought {sold}",
                        counts.sold
                    )
                })?;
            }
            self.check_dashboard(sim, store, by_status).await?;
            self.check_intake_rate(store)?;
        }
        let dead = sim
            .engine()
            .dead_letters(&DeadLetterQuery::default())
            .await?;
        ensure(dead.is_empty(), || {
            format!(
                "{} dead letters left after replaying: {:?}",
                dead.len(),
                dead.iter().map(|d| &d.last_error).collect::<Vec<_>>()
            )
        })
    }

    /// The dashboard's counters against a recount.
    async fn check_dashboard(
        &self,
        sim: &mut Sim,
        store: usize,
        by_status: &BTreeMap<String, u64>,
    ) -> Result<(), SimError> {
        let tenant = self.stores[store].clone();
        let entries: Vec<_> = self
            .gateway
            .mock()
            .ledger()
            .into_iter()
            .filter(|e| e.store == tenant)
            .collect();
        let captured: i64 = entries
            .iter()
            .filter(|e| e.transaction_id.is_some())
            .map(|e| e.amount.minor)
            .sum();
        let refunded: i64 = entries
            .iter()
            .filter(|e| e.refunded)
            .map(|e| e.amount.minor)
            .sum();
        ensure(refunded <= captured, || {
            format!("{tenant} refunded {refunded} of {captured} captured")
        })?;
        let stats = call(sim, "the dashboard", || {
            request(Method::Get, "/api/dashboard/stats", &tenant, Value::Null)
        })
        .await?;
        let placed = self.orders.keys().filter(|(s, _)| *s == store).count();
        ensure(stats.body["totalOrders"] == json!(placed), || {
            format!(
                "{tenant}: dashboard counts {} orders, {placed} were placed",
                stats.body["totalOrders"]
            )
        })?;
        ensure(
            stats.body["revenue"]["minor"] == json!(captured - refunded),
            || {
                format!(
                    "{tenant}: dashboard revenue {} but the gateway kept {}",
                    stats.body["revenue"],
                    captured - refunded
                )
            },
        )?;
        let counted: BTreeMap<String, u64> = stats.body["ordersByStatus"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(status, n)| Some((status.clone(), n.as_u64()?)))
            .filter(|(_, n)| *n > 0)
            .collect();
        ensure(&counted == by_status, || {
            format!("{tenant}: dashboard by status {counted:?}, recount {by_status:?}")
        })?;
        Ok(())
    }
}

impl OrderScenario {
    /// No stretch of time saw more of a store's orders admitted than the
    /// intake limit lets through: the burst, and one more per interval. An
    /// order was admitted between its first and its last try (a commit whose
    /// answer was lost makes a later try answer from the first); the check
    /// counts, for each stretch, the orders surely admitted within it.
    fn check_intake_rate(&self, store: usize) -> Result<(), SimError> {
        let interval = 1_000 / i64::from(INTAKE_PER_SECOND);
        let sent: Vec<(i64, i64)> = self
            .orders
            .iter()
            .filter(|((s, _), _)| *s == store)
            .map(|(_, placed)| placed.sent)
            .collect();
        for (from, _) in &sent {
            for (_, to) in &sent {
                if to < from {
                    continue;
                }
                let within = sent
                    .iter()
                    .filter(|(lo, hi)| lo >= from && hi <= to)
                    .count() as i64;
                ensure(
                    (within - i64::from(INTAKE_BURST)) * interval <= to - from,
                    || {
                        format!(
                        "{}: {within} orders admitted between {from} and {to} ms, beyond the intake limit",
                        self.stores[store]
                    )
                    },
                )?;
            }
        }
        Ok(())
    }
}

/// Whether an order is done: terminal, or held for a review.
fn settled(status: &str) -> bool {
    status == "flagged"
        || OrderStatus::ALL
            .iter()
            .any(|s| s.is_terminal() && s.as_str() == status)
}
