//! A split backend: state and the outbox in a store, deliveries on a broker.
//!
//! [`SplitBackend`] pairs a store (anything that is a [`Backend`]: SQLite,
//! PostgreSQL, memory) with a [`Broker`] (NATS JetStream, say) and is itself a
//! `Backend`, so the engine runs on it unchanged. The store's own queue serves
//! as the transactional outbox:
//!
//! * a completion's emits go into the store's queue in the completion's own
//!   commit, with its state changes and a [`Marker::Delivery`] for the input;
//! * before every claim the backend *relays*: it claims the store's due
//!   deliveries, sends them to the broker, and only then settles them in the
//!   store (a crash in between sends them again with the same key, which the
//!   broker and the markers both drop);
//! * the claim itself is the broker's; an input's completion is acknowledged
//!   in the broker after the store committed it. Deliveries of FIFO groups
//!   are the exception: they never leave the store, which runs them from its
//!   own queue and keeps each group's order across processes; A retry goes back into the
//!   store's queue with its history ([`Action::Requeue`]), a dead letter into
//!   the store's dead letters ([`Action::Bury`]), so due times, dead letters
//!   and replays are the store's, as they are without a broker.
//!
//! See `docs/ADAPTERS.md`, "A transport that is not the store's database",
//! for why every effect applies exactly once.

mod leases;

use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::{
    Action, Backend, Broker, ClaimBatch, ClaimRequest, Claimed, Completion, DeadLetter,
    DeadLetterQuery, LeaseRef, Marker, NewDelivery, Outcome, Outgoing, QueueDepth, Store,
    StoreError, Transport, Versioned, WakeUp,
};
use crate::event::{StepName, TenantId};
use crate::time::Timestamp;

use leases::Leases;

/// Settings of a [`SplitBackend`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SplitOptions {
    /// At most this many due deliveries of each step one relay pass moves
    /// from the store to the broker (default 512). A pass moves no more than
    /// the claim it precedes asks for, so the store's fair order across
    /// tenants is the order the broker sees.
    pub relay_batch: usize,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions { relay_batch: 512 }
    }
}

impl SplitOptions {
    /// Sets [`relay_batch`](Self::relay_batch) (at least 1).
    pub fn relay_batch(mut self, batch: usize) -> Self {
        self.relay_batch = batch.max(1);
        self
    }
}

/// A store and a broker as one [`Backend`]: see the [module docs](self).
///
/// Clones share the store, the broker and the leases handed out, the way
/// engines of one process share a backend.
///
/// ```no_run
/// # #[cfg(all(feature = "sqlite", feature = "nats"))]
/// # async fn wire() -> Result<(), Box<dyn std::error::Error>> {
/// use flowline::{Engine, Flow, NatsTransport, SqliteBackend};
///
/// let engine = Engine::builder(Flow::builder().build()?)
///     .store(SqliteBackend::open("flowline.db")?)
///     .transport(NatsTransport::connect("nats://127.0.0.1:4222").await?)
///     .start()
///     .await?;
/// # engine.shutdown(std::time::Duration::from_secs(5)).await; Ok(()) }
/// ```
pub struct SplitBackend<S: ?Sized, B: ?Sized> {
    store: Arc<S>,
    broker: Arc<B>,
    leases: Arc<Leases>,
    options: SplitOptions,
}

impl<S: ?Sized, B: ?Sized> Clone for SplitBackend<S, B> {
    fn clone(&self) -> Self {
        SplitBackend {
            store: self.store.clone(),
            broker: self.broker.clone(),
            leases: self.leases.clone(),
            options: self.options.clone(),
        }
    }
}

impl<S: ?Sized, B: ?Sized> std::fmt::Debug for SplitBackend<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitBackend")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<S: Backend, B: Broker> SplitBackend<S, B> {
    /// Pairs `store` with `broker`, with the default [`SplitOptions`].
    pub fn new(store: S, broker: B) -> Self {
        Self::with_options(store, broker, SplitOptions::default())
    }

    /// Pairs `store` with `broker`.
    pub fn with_options(store: S, broker: B, options: SplitOptions) -> Self {
        Self::shared(Arc::new(store), Arc::new(broker), options)
    }
}

impl<S: Backend + ?Sized, B: Broker + ?Sized> SplitBackend<S, B> {
    /// Pairs a shared store with a shared broker (`Arc<dyn Backend>` and
    /// `Arc<dyn Broker>` included).
    pub fn shared(store: Arc<S>, broker: Arc<B>, options: SplitOptions) -> Self {
        SplitBackend {
            store,
            broker,
            leases: Arc::new(Leases::default()),
            options,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The broker.
    pub fn broker(&self) -> &B {
        &self.broker
    }

    /// Claims the store's due deliveries for the request: those of FIFO
    /// groups are returned to run as they are (the store keeps a group's order
    /// across processes, which a broker's consumers cannot), the others are
    /// relayed to the broker and settled in the store once it holds them.
    /// Returns the direct ones and when the store's next delivery is due.
    async fn relay(
        &self,
        request: &ClaimRequest,
    ) -> Result<(Vec<Claimed>, Option<Timestamp>), StoreError> {
        let mut outbox = request.clone();
        for step in &mut outbox.steps {
            step.max = step.max.min(self.options.relay_batch);
        }
        let due = self.store.claim(outbox).await?;
        let (direct, relayed): (Vec<Claimed>, Vec<Claimed>) =
            due.deliveries.into_iter().partition(|c| c.group.is_some());
        if relayed.is_empty() {
            return Ok((direct, due.next_due));
        }
        let outgoing = relayed.iter().map(outgoing).collect();
        if let Err(err) = self.broker.send(outgoing).await {
            let leases: Vec<LeaseRef> = relayed.iter().chain(&direct).map(|c| c.lease).collect();
            if let Err(release) = self.store.release(&leases).await {
                tracing::warn!(%release, "could not give back deliveries the broker refused");
            }
            return Err(err);
        }
        let sent = relayed.iter().map(sent).collect();
        // A stale outcome means another relay took the row over meanwhile and
        // sends it again: the broker drops the copy by its key.
        self.store.complete(sent).await?;
        tracing::trace!(relayed = relayed.len(), "outbox relayed");
        Ok((direct, due.next_due))
    }
}

/// The message the relay sends for a store delivery.
fn outgoing(c: &Claimed) -> Outgoing {
    Outgoing {
        key: delivery_key(c),
        step: c.step.clone(),
        event: c.event.clone(),
        attempt: c.attempt,
        first_attempt_at: c.first_attempt_at,
        last_error: c.last_error.clone(),
    }
}

/// A delivery's key: its event, its step and its row in the store's queue. The
/// row id alone would do within one store; the event id keeps keys apart
/// between stores that share a broker's window (a store recreated, say).
fn delivery_key(c: &Claimed) -> Arc<str> {
    Arc::from(format!("{}.{}.{}", c.event.id, c.step, c.lease.id))
}

/// Settles a relayed delivery in the store: it now lives in the broker.
fn sent(c: &Claimed) -> Completion {
    Completion {
        tenant: c.event.tenant.clone(),
        input: Some(c.lease),
        marker: None,
        action: Action::Commit {
            reads: Vec::new(),
            writes: Vec::new(),
            adds: Vec::new(),
            emits: Vec::new(),
        },
    }
}

/// What the store is asked to do for a completion of a broker delivery.
fn translate(c: Completion, input: &crate::backend::Received) -> Completion {
    let claimed = &input.claimed;
    let delivery = |due_at| NewDelivery {
        step: claimed.step.clone(),
        event: claimed.event.clone(),
        // Only deliveries outside FIFO groups travel on the broker.
        group: None,
        due_at,
    };
    let action = match c.action {
        commit @ Action::Commit { .. } => commit,
        Action::Retry { at, error } => Action::Requeue {
            delivery: delivery(at),
            attempts: claimed.attempt,
            first_attempt_at: claimed.first_attempt_at,
            error,
        },
        // A deferral gives the delivery back to the store's queue with the
        // attempts it had before this claim: none, as a fresh delivery (so
        // its first attempt is still to come), else as a retry that ran them.
        Action::Defer { at } => match claimed.attempt.saturating_sub(1) {
            0 => Action::Commit {
                reads: Vec::new(),
                writes: Vec::new(),
                adds: Vec::new(),
                emits: vec![delivery(at)],
            },
            attempts => Action::Requeue {
                delivery: delivery(at),
                attempts,
                first_attempt_at: claimed.first_attempt_at,
                error: claimed
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the lease of an earlier attempt expired".to_string()),
            },
        },
        Action::DeadLetter { error, at } => Action::Bury {
            delivery: delivery(at),
            attempts: claimed.attempt,
            first_attempt_at: claimed.first_attempt_at,
            error,
            at,
        },
        // Only a split backend sends these, and not through itself.
        other @ (Action::Requeue { .. } | Action::Bury { .. }) => other,
    };
    Completion {
        tenant: c.tenant,
        input: None,
        marker: Some(Marker::Delivery {
            key: input.key.clone(),
        }),
        action,
    }
}

#[async_trait]
impl<S: Backend + ?Sized, B: Broker + ?Sized> Store for SplitBackend<S, B> {
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.store.get(tenant, key).await
    }

    async fn get_many(
        &self,
        tenant: &TenantId,
        keys: &[String],
    ) -> Result<Vec<Option<Versioned>>, StoreError> {
        self.store.get_many(tenant, keys).await
    }

    async fn scan(
        &self,
        tenant: &TenantId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.store.scan(tenant, prefix, limit).await
    }

    async fn complete(&self, batch: Vec<Completion>) -> Result<Vec<Outcome>, StoreError> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let mut forwarded = Vec::with_capacity(batch.len());
        // Per forwarded completion: its place in the batch and its input.
        let mut places = Vec::with_capacity(batch.len());
        for (i, c) in batch.into_iter().enumerate() {
            match c.input {
                // API calls, cron fires, and the store's own deliveries.
                None => {
                    forwarded.push(c);
                    places.push((i, None));
                }
                Some(lease) if !Leases::is_brokered(&lease) => {
                    forwarded.push(c);
                    places.push((i, None));
                }
                Some(lease) => match self.leases.get(&lease) {
                    Some(input) => {
                        forwarded.push(translate(c, &input));
                        places.push((i, Some(lease)));
                    }
                    None => outcomes[i] = Some(Outcome::Stale),
                },
            }
        }
        let applied = self.store.complete(forwarded).await?;
        let mut done = Vec::new();
        for ((i, lease), outcome) in places.into_iter().zip(applied) {
            if let Some(lease) = lease {
                // Applied now or by an earlier copy: either way the broker's
                // message has done its work.
                if matches!(outcome, Outcome::Applied | Outcome::Duplicate) {
                    done.push(lease);
                }
            }
            outcomes[i] = Some(outcome);
        }
        if !done.is_empty() {
            let done = self.leases.remove(&done);
            // The store committed: an ack that does not arrive only means the
            // broker delivers the message again, and its marker makes that copy
            // a duplicate. So a failed ack is not the completion's failure.
            if let Err(err) = self.broker.ack(&done).await {
                tracing::warn!(%err, unacked = done.len(), "broker ack failed; the deliveries will come back as duplicates");
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Stale))
            .collect())
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        self.store.dead_letters(query).await
    }

    async fn replay_dead_letters(&self, ids: &[u64], now: Timestamp) -> Result<usize, StoreError> {
        self.store.replay_dead_letters(ids, now).await
    }

    async fn purge_dead_letters(&self, ids: &[u64]) -> Result<usize, StoreError> {
        self.store.purge_dead_letters(ids).await
    }

    async fn last_cron_fire(&self, schedule: &StepName) -> Result<Option<Timestamp>, StoreError> {
        self.store.last_cron_fire(schedule).await
    }
}

#[async_trait]
impl<S: Backend + ?Sized, B: Broker + ?Sized> Transport for SplitBackend<S, B> {
    /// Publishes into the store's queue (the outbox): accepted once the store
    /// committed, whether the broker is up or not.
    async fn publish(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        self.store.publish(deliveries).await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<ClaimBatch, StoreError> {
        let (mut deliveries, store_due) = self.relay(&request).await?;
        // The broker fills what the store's own deliveries did not.
        let mut rest = request;
        for step in &mut rest.steps {
            let direct = deliveries.iter().filter(|c| c.step == step.step).count();
            step.max = step.max.saturating_sub(direct);
        }
        let received = self.broker.receive(rest).await?;
        let next_due = store_due.into_iter().chain(received.next_due).min();
        deliveries.extend(self.leases.hold(received.deliveries));
        Ok(ClaimBatch {
            deliveries,
            next_due,
        })
    }

    async fn release(&self, leases: &[LeaseRef]) -> Result<(), StoreError> {
        let (brokered, own): (Vec<LeaseRef>, Vec<LeaseRef>) =
            leases.iter().partition(|l| Leases::is_brokered(l));
        if !own.is_empty() {
            self.store.release(&own).await?;
        }
        let held = self.leases.remove(&brokered);
        self.broker.release(&held).await
    }

    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError> {
        let outbox = self.store.depth(now).await?;
        let broker = self.broker.depth(now).await?;
        Ok(QueueDepth {
            ready: outbox.ready + broker.ready,
            delayed: outbox.delayed + broker.delayed,
            waiting: outbox.waiting + broker.waiting,
            in_flight: outbox.in_flight + broker.in_flight,
            dead: outbox.dead,
        })
    }

    async fn is_drained(&self, now: Timestamp) -> Result<bool, StoreError> {
        Ok(self.store.is_drained(now).await? && self.broker.is_drained(now).await?)
    }

    fn on_new_work(&self, wake: WakeUp) {
        self.store.on_new_work(wake.clone());
        self.broker.on_new_work(wake);
    }
}
