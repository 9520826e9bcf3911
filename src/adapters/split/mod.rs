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
//!   store, in the next completion's commit (a crash in between sends them
//!   again with the same key, which the broker and the markers both drop);
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
mod outbox_watch;
mod unsettled;

use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::{
    Action, Backend, Broker, ClaimBatch, ClaimRequest, Claimed, Completion, DeadLetter,
    DeadLetterQuery, LeaseRef, Marker, NewDelivery, Outcome, Outgoing, QueueDepth, Received,
    StepWork, Store, StoreError, Transport, Versioned, WakeUp,
};
use crate::event::{Payload, StepName, TenantId};
use crate::time::Timestamp;

use leases::Leases;
use outbox_watch::OutboxWatch;
use unsettled::Unsettled;

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
    unsettled: Arc<Unsettled>,
    outbox: Arc<OutboxWatch>,
    options: SplitOptions,
}

impl<S: ?Sized, B: ?Sized> Clone for SplitBackend<S, B> {
    fn clone(&self) -> Self {
        SplitBackend {
            store: self.store.clone(),
            broker: self.broker.clone(),
            leases: self.leases.clone(),
            unsettled: self.unsettled.clone(),
            outbox: self.outbox.clone(),
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
            unsettled: Arc::new(Unsettled::default()),
            outbox: Arc::new(OutboxWatch::default()),
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
    /// relayed to the broker and settled in the store once it holds them, in
    /// the next commit. Returns the direct ones and when the store's next
    /// delivery is due.
    async fn relay(&self, request: &ClaimRequest) -> Result<Relayed, StoreError> {
        // Settles that found no completion to ride in commit on their own well
        // before the relay's lease on their rows ends.
        if let Some(lease) = request.steps.iter().map(|s| s.lease).min() {
            let due = self.unsettled.take_if_added_by(request.now - lease / 4);
            self.settle(due).await?;
        }
        let Some(pass) = self.outbox.pass_due(request) else {
            return Ok(Relayed {
                direct: Vec::new(),
                sent: 0,
                next_due: self.outbox.next_due(),
            });
        };
        let mut outbox = request.clone();
        for step in &mut outbox.steps {
            step.max = step.max.min(self.options.relay_batch);
        }
        let due = self.store.claim(outbox.clone()).await?;
        let taken = |step: &StepName| due.deliveries.iter().filter(|c| c.step == *step).count();
        self.outbox.passed(pass, &outbox, taken, due.next_due);
        let (direct, relayed): (Vec<Claimed>, Vec<Claimed>) =
            due.deliveries.into_iter().partition(|c| c.group.is_some());
        if relayed.is_empty() {
            return Ok(Relayed {
                direct,
                sent: 0,
                next_due: due.next_due,
            });
        }
        let outgoing = relayed.iter().map(outgoing).collect();
        if let Err(err) = self.broker.send(outgoing).await {
            let leases: Vec<LeaseRef> = relayed.iter().chain(&direct).map(|c| c.lease).collect();
            if let Err(release) = self.store.release(&leases).await {
                tracing::warn!(%release, "could not give back deliveries the broker refused");
            }
            self.outbox.wrote();
            return Err(err);
        }
        self.unsettled.add(relayed.iter().map(sent), request.now);
        tracing::trace!(relayed = relayed.len(), "outbox relayed");
        Ok(Relayed {
            direct,
            sent: relayed.len(),
            next_due: due.next_due,
        })
    }

    /// Commits settles of relayed rows now; a failed commit keeps them for
    /// the next. A stale outcome means another relay took a row over
    /// meanwhile and sends it again: the broker drops the copy by its key.
    async fn settle(&self, settles: Vec<Completion>) -> Result<(), StoreError> {
        if settles.is_empty() {
            return Ok(());
        }
        if let Err(err) = self.store.complete(settles.clone()).await {
            self.unsettled.put_back(settles);
            return Err(err);
        }
        Ok(())
    }

    /// Commits every waiting settle now (before the queue is counted, or
    /// when no completion will come to carry them).
    async fn settle_all(&self) -> Result<(), StoreError> {
        self.settle(self.unsettled.take()).await
    }
}

/// What a relay pass did.
struct Relayed {
    /// The store's deliveries to run as they are (FIFO groups').
    direct: Vec<Claimed>,
    /// How many deliveries it sent to the broker.
    sent: usize,
    /// When the store's next delivery is due.
    next_due: Option<Timestamp>,
}

/// Splits the broker's deliveries into those within each step's room (the
/// request's `max` less the store's direct deliveries of the step) and those
/// past it, keeping the broker's order.
fn within_room(
    request: &ClaimRequest,
    direct: &[Claimed],
    received: Vec<Received>,
) -> (Vec<Received>, Vec<Received>) {
    let mut room: Vec<(&StepName, usize)> = request
        .steps
        .iter()
        .map(|s| {
            let taken = direct.iter().filter(|c| c.step == s.step).count();
            (&s.step, s.max.saturating_sub(taken))
        })
        .collect();
    received.into_iter().partition(|r| {
        match room.iter_mut().find(|(step, _)| **step == r.claimed.step) {
            Some((_, left)) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    })
}

/// What a batch of completions may write into the outbox, for the
/// [`OutboxWatch`] to hear once it committed.
#[derive(Default)]
struct OutboxWrites {
    /// Per step, the earliest due time of what it writes.
    due: Vec<(StepName, Timestamp)>,
    untimed: bool,
}

impl OutboxWrites {
    fn of(batch: &[Completion]) -> Self {
        let mut writes = OutboxWrites::default();
        for c in batch {
            // The store's own deliveries are FIFO groups': finishing one may
            // make the group's next one ready.
            if c.input.is_some_and(|lease| !Leases::is_brokered(&lease)) {
                writes.untimed = true;
            }
            match &c.action {
                Action::Commit { emits, .. } => writes.add(emits),
                Action::Requeue { delivery, .. } => writes.add(std::slice::from_ref(delivery)),
                // The store's own deliveries (FIFO groups'): their step is
                // not named here.
                Action::Retry { .. } | Action::Defer { .. } => writes.untimed = true,
                // What a failure hook emitted.
                Action::DeadLetter { emits, .. } | Action::Bury { emits, .. } => writes.add(emits),
            }
        }
        writes
    }

    fn add(&mut self, deliveries: &[NewDelivery]) {
        for d in deliveries {
            match self.due.iter_mut().find(|(step, _)| *step == d.step) {
                Some((_, at)) => *at = (*at).min(d.due_at),
                None => self.due.push((d.step.clone(), d.due_at)),
            }
        }
    }

    fn tell(self, watch: &OutboxWatch) {
        if self.untimed {
            watch.wrote();
        }
        if !self.due.is_empty() {
            watch.wrote_due(self.due);
        }
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
        action: Action::acknowledge(),
    }
}

/// What the store is asked to do for a completion of a broker delivery.
fn translate(c: Completion, input: &Received) -> Completion {
    let claimed = &input.claimed;
    let delivery = |due_at| NewDelivery {
        step: claimed.step.clone(),
        event: claimed.event.clone(),
        // Only deliveries outside FIFO groups travel on the broker.
        group: None,
        due_at,
        key: None,
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
                cancels: Vec::new(),
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
        Action::DeadLetter {
            error,
            at,
            kind,
            emits,
        } => Action::Bury {
            delivery: delivery(at),
            attempts: claimed.attempt,
            first_attempt_at: claimed.first_attempt_at,
            error,
            at,
            kind,
            emits,
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

    async fn scan_after(
        &self,
        tenant: &TenantId,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.store.scan_after(tenant, prefix, after, limit).await
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
        // The relay's waiting settles ride in this commit; their outcomes are
        // past the end of `places`, so the zip below leaves them out.
        let writes = OutboxWrites::of(&forwarded);
        let settles = self.unsettled.take();
        forwarded.extend(settles.iter().cloned());
        let applied = match self.store.complete(forwarded).await {
            Ok(applied) => applied,
            Err(err) => {
                self.unsettled.put_back(settles);
                return Err(err);
            }
        };
        writes.tell(&self.outbox);
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
        let replayed = self.store.replay_dead_letters(ids, now).await?;
        self.outbox.wrote();
        Ok(replayed)
    }

    async fn amend_dead_letter(&self, id: u64, payload: Payload) -> Result<bool, StoreError> {
        self.store.amend_dead_letter(id, payload).await
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
        let mut writes = OutboxWrites::default();
        writes.add(&deliveries);
        self.store.publish(deliveries).await?;
        writes.tell(&self.outbox);
        Ok(())
    }

    async fn claim(&self, request: ClaimRequest) -> Result<ClaimBatch, StoreError> {
        // The relay and the broker's receive go to different systems, so they
        // run side by side: the receive hands out what earlier passes relayed
        // while this pass relays more.
        let (relayed, received) =
            futures::join!(self.relay(&request), self.broker.receive(request.clone()));
        let relay = relayed?;
        let mut received = received?;
        if received.deliveries.is_empty() && relay.sent > 0 {
            // An idle broker: what this pass just relayed is the work.
            let mut rest = request.clone();
            for step in &mut rest.steps {
                let direct = relay.direct.iter().filter(|c| c.step == step.step).count();
                step.max = step.max.saturating_sub(direct);
            }
            received = self.broker.receive(rest).await?;
        }
        let (kept, over) = within_room(&request, &relay.direct, received.deliveries);
        if !over.is_empty() {
            // The store's own deliveries came with the broker's: what passes a
            // step's room goes back at once, no attempt counted.
            let leases: Vec<LeaseRef> = over.iter().map(|r| r.claimed.lease).collect();
            self.broker.release(&leases).await?;
        }
        let next_due = relay.next_due.into_iter().chain(received.next_due).min();
        let mut deliveries = relay.direct;
        deliveries.extend(self.leases.hold(kept));
        if deliveries.is_empty() {
            // No completion will follow this claim to carry the settles.
            self.settle_all().await?;
        }
        Ok(ClaimBatch {
            deliveries,
            next_due,
        })
    }

    async fn release(&self, leases: &[LeaseRef]) -> Result<(), StoreError> {
        self.settle_all().await?;
        let (brokered, own): (Vec<LeaseRef>, Vec<LeaseRef>) =
            leases.iter().partition(|l| Leases::is_brokered(l));
        if !own.is_empty() {
            self.store.release(&own).await?;
            self.outbox.wrote();
        }
        let held = self.leases.remove(&brokered);
        self.broker.release(&held).await
    }

    /// The store's part only: what the broker holds is not counted by step.
    async fn steps_with_work(&self, now: Timestamp) -> Result<Vec<StepWork>, StoreError> {
        self.store.steps_with_work(now).await
    }

    /// Moves what is still in the store; what the broker holds runs where
    /// it was sent.
    async fn move_deliveries(
        &self,
        from: &StepName,
        to: Option<&StepName>,
    ) -> Result<u64, StoreError> {
        let moved = self.store.move_deliveries(from, to).await?;
        self.outbox.wrote();
        Ok(moved)
    }

    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError> {
        // Rows in the broker are counted there, not also as the relay's leases.
        self.settle_all().await?;
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
        self.settle_all().await?;
        Ok(self.store.is_drained(now).await? && self.broker.is_drained(now).await?)
    }

    fn on_new_work(&self, wake: WakeUp) {
        self.store.on_new_work(wake.clone());
        self.broker.on_new_work(wake);
    }
}
