//! The workload a seed draws: one action at a time, each as a customer, an
//! operator or time itself would act.

use std::time::Duration;

use rand::seq::IndexedRandom;
use rand::Rng;
use serde_json::{json, Value};

use super::client::{call, request, retried, timed_call};
use super::{OrderScenario, Placed};
use crate::api::Method;
use crate::backend::DeadLetterQuery;
use crate::orderflow;
use crate::sim::{ensure, Sim, SimError};

impl OrderScenario {
    /// The `index`-th action, drawn from the seed: one order placed, then
    /// what else happens before the next (repeats, cancellations, reviews,
    /// restocks, time passing, the clock jumping, replays).
    pub(super) async fn act_once(&mut self, sim: &mut Sim, index: usize) -> Result<(), SimError> {
        let acted = async {
            if sim.rng().random_bool(0.08) {
                self.place_big(sim).await?;
            } else {
                self.place_small(sim).await?;
            }
            while sim.rng().random_bool(0.55) {
                self.something_else(sim).await?;
            }
            Ok(())
        }
        .await;
        acted.map_err(|err: SimError| {
            sim.note(format_args!("action {index} failed: {err}"));
            err
        })
    }

    async fn something_else(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        match sim.rng().random_range(0..100u32) {
            0..=14 => self.repeat_an_order(sim).await,
            15..=29 => self.cancel_one(sim).await,
            30..=37 => self.review_held(sim, 3).await,
            38..=49 => self.restock(sim).await,
            50..=79 => {
                let seconds = sim.rng().random_range(1..=90);
                sim.advance(Duration::from_secs(seconds)).await
            }
            80..=81 => {
                let minutes = sim.rng().random_range(10..=180);
                sim.jump(Duration::from_secs(minutes * 60)).await
            }
            82..=85 => self.replay_dead_letters(sim).await.map(drop),
            _ => {
                let millis = sim.rng().random_range(0..=2_000);
                sim.advance(Duration::from_millis(millis)).await
            }
        }
    }

    async fn place_small(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        let store = sim.rng().random_range(0..self.stores.len());
        let count = sim.rng().random_range(1..=3);
        let mut lines: Vec<(String, u32)> = Vec::new();
        let products = self.products(store);
        for _ in 0..count {
            let product = products[sim.rng().random_range(0..4)].clone();
            let quantity = sim.rng().random_range(1..=6);
            if !lines.iter().any(|(p, _)| *p == product) {
                lines.push((product, quantity));
            }
        }
        self.place(sim, store, lines).await
    }

    async fn place_big(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        let store = sim.rng().random_range(0..self.stores.len());
        let quantity = sim.rng().random_range(102..=150);
        let bulk = self.products(store)[4].clone();
        self.place(sim, store, vec![(bulk, quantity)]).await
    }

    /// Places an order with an `Idempotency-Key`, sending it again (the same
    /// key and body) after a `503`, and sometimes once more as a client that
    /// lost the answer would.
    async fn place(
        &mut self,
        sim: &mut Sim,
        store: usize,
        lines: Vec<(String, u32)>,
    ) -> Result<(), SimError> {
        self.placed += 1;
        let id = format!("o-{}", self.placed);
        let key = format!("k-{}-{}", self.seed, self.placed);
        let customer = sim.rng().random_range(0..5);
        let items: Vec<Value> = lines
            .iter()
            .map(|(p, q)| json!({ "productId": p, "quantity": q }))
            .collect();
        let body = json!({ "orderId": id, "customerName": format!("customer-{customer}"), "items": items });
        let tenant = self.stores[store].clone();
        let (answer, sent) = timed_call(sim, "an order", || {
            request(Method::Post, "/api/order", &tenant, body.clone())
                .header("Idempotency-Key", key.clone())
        })
        .await?;
        ensure(answer.status == 201, || {
            format!("order {id} answered {}: {}", answer.status, answer.body)
        })?;
        ensure(answer.body["orderId"] == json!(id), || {
            format!("order {id} answered for another order: {}", answer.body)
        })?;
        sim.note(format_args!(
            "{} placed {}/{id}",
            sim.now().as_millis(),
            tenant
        ));
        let placed = Placed {
            lines,
            key,
            body,
            answer: answer.body,
            sent,
        };
        self.orders.insert((store, id.clone()), placed);
        if sim.rng().random_bool(0.1) {
            self.repeat(sim, (store, id)).await?;
        }
        Ok(())
    }

    /// Sends an accepted order's request again: the first answer comes back
    /// and no second order is made.
    async fn repeat_an_order(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        if self.orders.is_empty() {
            return Ok(());
        }
        let nth = sim.rng().random_range(0..self.orders.len());
        match self.orders.keys().nth(nth).cloned() {
            Some(order) => self.repeat(sim, order).await,
            None => Ok(()),
        }
    }

    async fn repeat(
        &mut self,
        sim: &mut Sim,
        (store, id): (usize, String),
    ) -> Result<(), SimError> {
        let Some(placed) = self.orders.get(&(store, id.clone())).cloned() else {
            return Ok(());
        };
        let tenant = self.stores[store].clone();
        let again = call(sim, "a repeated order", || {
            request(Method::Post, "/api/order", &tenant, placed.body.clone())
                .header("Idempotency-Key", placed.key.clone())
        })
        .await?;
        ensure(again.status == 201 && again.body == placed.answer, || {
            format!(
                "order {id} sent again answered {}: {} (first: {})",
                again.status, again.body, placed.answer
            )
        })?;
        ensure(
            again.header_value("Idempotent-Replayed") == Some("true"),
            || format!("order {id} sent again was not marked as replayed"),
        )
    }

    async fn cancel_one(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        if self.orders.is_empty() {
            return Ok(());
        }
        let nth = sim.rng().random_range(0..self.orders.len());
        let Some((store, id)) = self.orders.keys().nth(nth).cloned() else {
            return Ok(());
        };
        let tenant = self.stores[store].clone();
        let path = format!("/api/order/{id}/cancel");
        let answer = call(sim, "a cancellation", || {
            request(Method::Post, &path, &tenant, Value::Null)
        })
        .await?;
        ensure(matches!(answer.status, 200 | 409), || {
            format!(
                "cancelling {id} answered {}: {}",
                answer.status, answer.body
            )
        })
    }

    /// Decides up to `most` orders of each store's review queue (or all, with
    /// `usize::MAX`): released or rejected, as the seed says.
    pub(super) async fn review_held(&mut self, sim: &mut Sim, most: usize) -> Result<(), SimError> {
        for tenant in self.stores.clone() {
            let queue = call(sim, "the review queue", || {
                request(Method::Get, "/api/order/held", &tenant, Value::Null)
            })
            .await?;
            let held: Vec<String> = queue.body["held"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o["orderId"].as_str().map(str::to_string))
                .take(most)
                .collect();
            for id in held {
                let decision = *["release", "reject"]
                    .choose(sim.rng())
                    .unwrap_or(&"release");
                let path = format!("/api/order/{id}/review");
                let answer = call(sim, "a review", || {
                    request(
                        Method::Post,
                        &path,
                        &tenant,
                        json!({ "decision": decision }),
                    )
                })
                .await?;
                ensure(matches!(answer.status, 202 | 409), || {
                    format!("reviewing {id} answered {}: {}", answer.status, answer.body)
                })?;
            }
        }
        Ok(())
    }

    async fn restock(&mut self, sim: &mut Sim) -> Result<(), SimError> {
        let store = sim.rng().random_range(0..self.stores.len());
        let product = self.products(store)[sim.rng().random_range(0..5)].clone();
        let quantity = sim.rng().random_range(1..=40);
        let tenant = self.stores[store].clone();
        retried(sim, "a restock", async |sim: &Sim| {
            orderflow::restock(sim.engine(), &tenant, &product, quantity).await
        })
        .await
    }

    /// Replays the dead letters the world made; how many.
    pub(super) async fn replay_dead_letters(&mut self, sim: &mut Sim) -> Result<usize, SimError> {
        let query = DeadLetterQuery::default();
        let dead = retried(sim, "reading the dead letters", async |sim: &Sim| {
            sim.engine().dead_letters(&query).await
        })
        .await?;
        let ids: Vec<u64> = dead
            .iter()
            .filter(|d| self.expected(sim, d))
            .map(|d| d.id)
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let replayed = retried(sim, "replaying dead letters", async |sim: &Sim| {
            sim.engine().replay_dead_letters(&ids).await
        })
        .await?;
        sim.note(format_args!(
            "{} replayed {replayed}",
            sim.now().as_millis()
        ));
        Ok(replayed)
    }
}
