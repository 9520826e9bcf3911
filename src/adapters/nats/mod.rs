//! The NATS JetStream transport: deliveries on a JetStream stream, state in a
//! store beside it (a [`SplitBackend`](crate::SplitBackend)).
//!
//! One stream per flow ([`NatsOptions::stream`]) holds every delivery not yet
//! done, with work-queue retention: a message leaves the stream when it is
//! acknowledged. A message is a *parcel*: the deliveries of one step that one
//! relay pass sent, under the subject `<prefix>.d.<step>.<tenant>` (or
//! `<prefix>.d.<step>.+` when they are several tenants'), so the server
//! stores, hands out and forgets one message for hundreds of deliveries. It
//! is acknowledged when the last of its deliveries is done; a process that
//! dies holding it leaves all of it to the next one, whose copies of the
//! deliveries already done apply nothing (the store's markers drop them).
//! Each step has a durable pull consumer (explicit acks, unlimited
//! redeliveries: the engine's retry policy, not the server, decides when to
//! give up). A parcel is sent with a `Nats-Msg-Id` made of its deliveries'
//! keys, so the server drops a copy the relay sends again within
//! [`NatsOptions::duplicate_window`].
//!
//! This process keeps what it fetched in memory (`held.rs`): leases on the
//! engine's clock and fairness across tenants. While it holds a
//! message it tells the server it is in progress every third of the ack wait;
//! a process that dies stops doing so, and the server hands its messages to
//! another process after [`NatsOptions::ack_wait`], each such redelivery
//! counting as an attempt.
//!
//! FIFO groups never come here: the split backend runs them from the store,
//! which keeps each group's order across processes.
//!
//! Limits, plainly: tenant turns are taken among the messages one process
//! holds (the relay sends them in the store's fair order, no more than a claim
//! asks for, so that is a short window). A process that shuts down leaves the
//! messages it fetched but did not start to the server, which hands them on
//! after the ack wait, counting one attempt each.

mod held;
mod options;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream, AckKind};
use async_trait::async_trait;
use futures::StreamExt;

use crate::backend::{
    AdapterRuntime, Broker, ClaimRequest, LeaseRef, Outgoing, QueueDepth, ReceivedBatch,
    StoreError, WakeUp,
};
use crate::event::StepName;
use crate::time::Timestamp;

use held::Held;
pub use options::{NatsError, NatsOptions};

/// How long one pull from a step's consumer may take.
const FETCH_DEADLINE: Duration = Duration::from_secs(5);

/// A parcel's payload stays this far under the server's `max_payload`, for
/// its headers and framing.
const PARCEL_HEADROOM: usize = 4 * 1024;

/// The largest parcel payload, whatever the server allows: a fetch brings a
/// few of them into memory at once.
const MAX_PARCEL_BYTES: usize = 1024 * 1024;

/// A [`Broker`] on NATS JetStream: see the [module docs](self).
///
/// Clones share the connection and what this process holds.
///
/// ```no_run
/// # async fn wire() -> Result<(), Box<dyn std::error::Error>> {
/// use flowline::{NatsOptions, NatsTransport};
/// let nats = NatsTransport::connect_with(
///     NatsOptions::new("nats://127.0.0.1:4222").stream("ORDERS").subject_prefix("orders"),
/// )
/// .await?;
/// # let _ = nats; Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsTransport {
    inner: Arc<Inner>,
    // Outside `Inner`: the tasks on the runtime hold `Inner`, never the runtime.
    runtime: Arc<AdapterRuntime>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    options: NatsOptions,
    /// The transport's runtime, for the tasks it starts.
    runtime: tokio::runtime::Handle,
    consumers: tokio::sync::Mutex<HashMap<StepName, jetstream::consumer::PullConsumer>>,
    held: Mutex<Held<Arc<jetstream::message::Acker>>>,
    /// Acks sent and not yet answered by the server.
    acks: Mutex<tokio::task::JoinSet<()>>,
    wakes: Mutex<Option<Vec<WakeUp>>>,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

fn backend_error(err: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(err))
}

impl NatsTransport {
    /// Connects to the server at `url` with the default [`NatsOptions`].
    ///
    /// # Errors
    /// [`NatsError::Connect`] if the server cannot be reached,
    /// [`NatsError::Stream`] if JetStream refuses the stream.
    pub async fn connect(url: impl Into<String>) -> Result<Self, NatsError> {
        Self::connect_with(NatsOptions::new(url)).await
    }

    /// Connects with `options`, creating the stream if it is missing.
    ///
    /// # Errors
    /// [`NatsError::InvalidOption`] for a bad name or duration (nothing is
    /// contacted), [`NatsError::Connect`], [`NatsError::Stream`].
    pub async fn connect_with(options: NatsOptions) -> Result<Self, NatsError> {
        options.validate()?;
        let runtime =
            AdapterRuntime::start("nats").map_err(|e| NatsError::Runtime(e.to_string()))?;
        let handle = runtime.handle().clone();
        let inner = runtime.run(Inner::connect(options, handle)).await?;
        Ok(NatsTransport {
            inner,
            runtime: Arc::new(runtime),
        })
    }

    /// Runs `work` on the transport's runtime.
    async fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.runtime.run(work).await
    }
}

impl Inner {
    /// Connects and opens the stream; runs on the transport's runtime, where
    /// the client's connection task then lives.
    async fn connect(
        options: NatsOptions,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, NatsError> {
        let client = async_nats::ConnectOptions::new()
            // A server restart is survived: the client reconnects for as long
            // as it takes, and requests fail meanwhile (the dispatcher backs off).
            .max_reconnects(None)
            .connect(options.url.as_str())
            .await
            .map_err(NatsError::Connect)?;
        let js = jetstream::new(client.clone());
        let stream = js
            .get_or_create_stream(stream::Config {
                name: options.stream.clone(),
                subjects: vec![format!("{}.d.>", options.subject_prefix)],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: options.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError::Stream {
                stream: options.stream.clone(),
                source: Box::new(e),
            })?;
        let inner = Arc::new(Inner {
            client,
            js,
            stream,
            options,
            runtime,
            consumers: tokio::sync::Mutex::new(HashMap::new()),
            held: Mutex::new(Held::default()),
            acks: Mutex::new(tokio::task::JoinSet::new()),
            wakes: Mutex::new(None),
        });
        tokio::spawn(keep_alive(Arc::downgrade(&inner)));
        Ok(inner)
    }
}

impl NatsTransport {
    /// The settings this transport runs with.
    pub fn options(&self) -> &NatsOptions {
        &self.inner.options
    }

    /// Deletes the stream and everything in it (for tests and teardown).
    ///
    /// # Errors
    /// The server refused or could not be reached.
    pub async fn delete_stream(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        self.run(async move {
            inner
                .js
                .delete_stream(&inner.options.stream)
                .await
                .map(drop)
                .map_err(backend_error)
        })
        .await
    }
}

impl Inner {
    fn held(&self) -> std::sync::MutexGuard<'_, Held<Arc<jetstream::message::Acker>>> {
        // Every update completes before the guard drops: a poisoned table is whole.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The step's durable consumer, created on first use.
    async fn consumer(
        &self,
        step: &StepName,
    ) -> Result<jetstream::consumer::PullConsumer, StoreError> {
        let mut consumers = self.consumers.lock().await;
        if let Some(c) = consumers.get(step) {
            return Ok(c.clone());
        }
        let name = format!("step-{}", wire::token(step.as_str()));
        let consumer = self
            .stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: wire::step_filter(&self.options.subject_prefix, step),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.options.ack_wait,
                    max_deliver: -1,
                    max_ack_pending: self.options.max_ack_pending,
                    ..Default::default()
                },
            )
            .await
            .map_err(backend_error)?;
        consumers.insert(step.clone(), consumer.clone());
        Ok(consumer)
    }

    /// Fetches up to `want` messages of a step that are there now. A pull
    /// whose answer was lost (the connection dropped under it) would wait
    /// forever, so the whole fetch has a deadline: a claim that misses it
    /// fails, and the dispatcher backs off and claims again.
    async fn fetch(&self, step: &StepName, want: usize) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let done = tokio::time::timeout(FETCH_DEADLINE, self.fetch_now(step, want)).await;
        tracing::debug!(step = %step, want, took = ?started.elapsed(), "JetStream pull");
        match done {
            Ok(done) => done,
            Err(_) => Err(StoreError::Backend(
                format!("no answer to a JetStream pull within {FETCH_DEADLINE:?}").into(),
            )),
        }
    }

    async fn fetch_now(&self, step: &StepName, want: usize) -> Result<(), StoreError> {
        let consumer = self.consumer(step).await?;
        let mut batch = consumer
            .fetch()
            .max_messages(want)
            .messages()
            .await
            .map_err(backend_error)?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(StoreError::Backend)?;
            let (seq, delivered) = match message.info() {
                Ok(info) => (
                    info.stream_sequence,
                    u32::try_from(info.delivered).unwrap_or(u32::MAX),
                ),
                Err(err) => {
                    tracing::warn!(%err, "a JetStream message without delivery info; skipped");
                    continue;
                }
            };
            match wire::unpack(&message.payload) {
                Ok(bodies) if !bodies.is_empty() => {
                    let (_, acker) = message.split();
                    self.held().insert(seq, bodies, delivered, Arc::new(acker));
                }
                Ok(_) => {
                    // Nothing to run: done at once.
                    if let Err(err) = message.ack_with(AckKind::Term).await {
                        tracing::warn!(%err, "could not settle an empty parcel");
                    }
                }
                Err(err) => {
                    // Not ours to run (another writer's message on our subject):
                    // terminated, so it never blocks the step.
                    tracing::warn!(%err, seq, subject = %message.subject, "undecodable message on a delivery subject; terminated");
                    if let Err(err) = message.ack_with(AckKind::Term).await {
                        tracing::warn!(%err, "could not terminate an undecodable message");
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether wake-ups from other connections are heard (an engine
    /// registered for them).
    fn listening(&self) -> bool {
        self.wakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn wake_subject(&self) -> String {
        format!("{}.wake", self.options.subject_prefix)
    }
}

/// Tells the server, every third of the ack wait, that what this process
/// holds is in progress; ends when the transport is dropped.
async fn keep_alive(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(inner) => inner.options.ack_wait / 3,
        None => return,
    };
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let ackers: Vec<_> = inner.held().ackers().cloned().collect();
        for acker in ackers {
            if let Err(err) = acker.ack_with(AckKind::Progress).await {
                tracing::debug!(%err, "progress ack not sent");
            }
        }
    }
}

impl Inner {
    async fn send(&self, messages: Vec<Outgoing>) -> Result<(), StoreError> {
        let max_bytes = self
            .client
            .server_info()
            .max_payload
            .clamp(PARCEL_HEADROOM * 2, MAX_PARCEL_BYTES)
            - PARCEL_HEADROOM;
        let parcels =
            wire::pack(&self.options.subject_prefix, messages, max_bytes).map_err(backend_error)?;
        let mut acks = Vec::with_capacity(parcels.len());
        // Published back to back, then confirmed: one round trip per batch.
        for parcel in parcels {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", parcel.id.as_str());
            tracing::trace!(subject = %parcel.subject, parts = parcel.parts, "parcel sent");
            let ack = self
                .js
                .publish_with_headers(parcel.subject, headers, parcel.payload.into())
                .await
                .map_err(backend_error)?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(backend_error)?;
        }
        if self.listening() {
            // Other processes' engines claim at once instead of at their next poll.
            if let Err(err) = self.client.publish(self.wake_subject(), "".into()).await {
                tracing::debug!(%err, "wake-up not sent");
            }
        }
        Ok(())
    }

    async fn receive(&self, request: ClaimRequest) -> Result<ReceivedBatch, StoreError> {
        // The steps' pulls go out together: a claim waits one round trip,
        // not one per step.
        let pulls = request.steps.iter().filter_map(|claim| {
            let held = self.held();
            let available = held.available(claim, request.now);
            (available < claim.max).then(|| {
                let messages = held.messages_for(&claim.step, claim.max - available);
                self.fetch(&claim.step, messages)
            })
        });
        let pulls: Vec<_> = pulls.collect();
        futures::future::try_join_all(pulls).await?;
        let mut deliveries = Vec::new();
        for claim in request.steps.iter().filter(|c| c.max > 0) {
            let picked = self.held().pick(claim, request.now, request.tenant_quantum);
            deliveries.extend(picked);
        }
        let next_due = self.held().next_lease_end(request.now);
        Ok(ReceivedBatch {
            deliveries,
            next_due,
        })
    }

    /// Settles the deliveries here at once (none is handed out again) and
    /// acknowledges the messages that are now done in the background: the
    /// store has committed them, so a completion need not wait a round trip
    /// for the server. An ack that is lost only means the server hands the
    /// message out again, and the store's markers make each copy a duplicate.
    fn ack(&self, leases: &[LeaseRef]) {
        let ackers: Vec<_> = {
            let mut held = self.held();
            leases.iter().filter_map(|l| held.settle(l)).collect()
        };
        if ackers.is_empty() {
            return;
        }
        let mut under_way = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        // Finished acks leave the set here, so it holds only those under way.
        while under_way.try_join_next().is_some() {}
        under_way.spawn_on(
            async move {
                // A confirmed ack: until the server has it, the consumer
                // counts the message as pending (see `acks_answered`).
                let acked = futures::future::try_join_all(ackers.iter().map(|a| a.double_ack()));
                if let Err(err) = acked.await {
                    tracing::warn!(%err, "JetStream ack failed; the message will come back and its copies apply nothing");
                }
            },
            &self.runtime,
        );
    }

    /// Waits until the server has answered every ack sent before the call:
    /// until then it counts finished messages as pending, and a drained queue
    /// would look busy.
    async fn acks_answered(&self) {
        let mut under_way =
            std::mem::take(&mut *self.acks.lock().unwrap_or_else(|p| p.into_inner()));
        while under_way.join_next().await.is_some() {}
    }

    /// How many messages are not yet acknowledged: by the steps' consumers
    /// once this process has opened them, else by the stream. (After a
    /// server that was killed comes back, its stream can hold messages that
    /// its consumers had already seen acknowledged; they are never delivered
    /// again, so the consumers are the ones to ask.)
    async fn unacknowledged(&self) -> Result<u64, StoreError> {
        self.acks_answered().await;
        let consumers: Vec<_> = self.consumers.lock().await.values().cloned().collect();
        if consumers.is_empty() {
            let mut stream = self.stream.clone();
            let info = stream.info().await.map_err(backend_error)?;
            return Ok(info.state.messages);
        }
        let mut total = 0;
        for mut consumer in consumers {
            let info = consumer.info().await.map_err(backend_error)?;
            total += info.num_pending + info.num_ack_pending as u64;
        }
        Ok(total)
    }
}

#[async_trait]
impl Broker for NatsTransport {
    async fn send(&self, messages: Vec<Outgoing>) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        self.run(async move { inner.send(messages).await }).await
    }

    async fn receive(&self, request: ClaimRequest) -> Result<ReceivedBatch, StoreError> {
        let inner = self.inner.clone();
        self.run(async move { inner.receive(request).await }).await
    }

    async fn ack(&self, leases: &[LeaseRef]) -> Result<(), StoreError> {
        self.inner.ack(leases);
        Ok(())
    }

    async fn release(&self, leases: &[LeaseRef]) -> Result<(), StoreError> {
        let mut held = self.inner.held();
        for lease in leases {
            held.release(lease);
        }
        Ok(())
    }

    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError> {
        let inner = self.inner.clone();
        let messages = self
            .run(async move { inner.unacknowledged().await })
            .await?;
        let (leased, (waiting_here, held_messages)) = {
            let held = self.inner.held();
            (held.leased(now), held.waiting(now))
        };
        Ok(QueueDepth {
            // What this process leased is in flight, and what it holds
            // otherwise is ready. A message it does not hold (not fetched,
            // or another process's) counts as one: its deliveries are not
            // known until it is read.
            ready: waiting_here + messages.saturating_sub(held_messages),
            in_flight: leased,
            ..QueueDepth::default()
        })
    }

    async fn is_drained(&self, _now: Timestamp) -> Result<bool, StoreError> {
        if !self.inner.held().is_empty() {
            return Ok(false);
        }
        let inner = self.inner.clone();
        Ok(self
            .run(async move { inner.unacknowledged().await })
            .await?
            == 0)
    }

    fn on_new_work(&self, wake: WakeUp) {
        let first = {
            let mut wakes = self.inner.wakes.lock().unwrap_or_else(|p| p.into_inner());
            let first = wakes.is_none();
            wakes.get_or_insert_with(Vec::new).push(wake);
            first
        };
        if first {
            self.inner
                .runtime
                .spawn(listen_for_wakes(Arc::downgrade(&self.inner)));
        }
    }
}

/// Calls the registered wake-ups whenever any process sent messages.
async fn listen_for_wakes(inner: Weak<Inner>) {
    let (client, subject) = match inner.upgrade() {
        Some(inner) => (inner.client.clone(), inner.wake_subject()),
        None => return,
    };
    let mut wakes = match client.subscribe(subject).await {
        Ok(sub) => sub,
        Err(err) => {
            tracing::warn!(%err, "no NATS wake-ups: engines claim at their poll interval");
            return;
        }
    };
    while wakes.next().await.is_some() {
        let Some(inner) = inner.upgrade() else { return };
        let mut registered = inner.wakes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = registered.as_mut() {
            list.retain(|wake| wake());
        }
    }
}
