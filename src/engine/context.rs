//! `StepContext`: what a handler can see and do.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::app_data::{AppData, MissingData};
use super::txn::Txn;
use crate::backend::{Backend, Claimed, StoreError, Value};
use crate::event::{
    build_envelope, validate_options, EmitOptions, Event, EventId, InvalidName, Payload, Priority,
    StepName, TenantId, Topic, TraceId,
};
use crate::time::{Clock, Timestamp};
use crate::trace_context::TraceParent;

/// The longest state key, in bytes.
pub const MAX_KEY_LEN: usize = 512;

/// Reading or writing state failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The storage backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A value could not be serialized.
    #[error("cannot serialize the value for key {key:?}: {source}")]
    Encode {
        /// The key.
        key: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored value does not deserialize into the requested type.
    #[error("stored value of key {key:?} does not match the requested type: {source}")]
    Decode {
        /// The key.
        key: String,
        /// The deserializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The key is empty, longer than [`MAX_KEY_LEN`] bytes, or holds NUL.
    #[error("invalid state key {0:?}: must be 1 to 512 bytes, without NUL")]
    InvalidKey(String),
    /// One execution both added to a key ([`StepContext::add`]) and wrote or
    /// deleted it ([`StepContext::put`], [`StepContext::delete`]). A key is a
    /// counter or a value within one execution, not both.
    #[error("state key {key:?} is both added to and written in one execution: use add or put/delete, not both")]
    AddAndWrite {
        /// The key.
        key: String,
    },
    /// The adds of one execution to a key sum to more than an `i64` holds.
    #[error("the adds to state key {key:?} in this execution overflow i64")]
    AddOverflow {
        /// The key.
        key: String,
    },
}

/// Emitting an event failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The step did not declare that it emits this topic.
    #[error("step {step} emits {topic}, which it did not declare (add .emits::<T>() to the step)")]
    Undeclared {
        /// The emitting step.
        step: StepName,
        /// The topic.
        topic: String,
    },
    /// The topic name or a header is invalid.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The payload could not be serialized.
    #[error("cannot serialize the payload: {0}")]
    Encode(#[from] serde_json::Error),
    /// A step of one tenant addressed an event to another tenant. Only steps
    /// running as [`TenantId::system`] may fan work out to tenants.
    #[error("a step of tenant {from} cannot emit to tenant {to}: only system steps address other tenants")]
    CrossTenant {
        /// The tenant of the emitting execution.
        from: TenantId,
        /// The tenant the event was addressed to.
        to: TenantId,
    },
}

/// What a context needs of the engine that runs it. A trait, so that contexts
/// do not depend on the engine's shared state: that state holds the flow, whose
/// steps name [`StepContext`] in their handlers.
pub(crate) trait Host: Send + Sync + 'static {
    /// The engine's clock.
    fn clock(&self) -> Clock;
    /// The backend state is read from.
    fn backend(&self) -> &dyn Backend;
    /// The topic `topic`, if step number `step` declared that it emits it.
    fn declared_emit(&self, step: usize, topic: &str) -> Option<Topic>;
    /// What the host gave the handlers.
    fn data(&self) -> &AppData;
    /// The wait step named `name`, if the flow has one.
    fn wait_step(&self, name: &str) -> Option<StepName>;
    /// The steps that subscribe to `topic`.
    fn subscribers(&self, topic: &str) -> Vec<StepName>;
}

pub(crate) struct ContextInfo {
    pub(crate) tenant: TenantId,
    pub(crate) step: StepName,
    pub(crate) step_index: usize,
    pub(crate) trace_id: TraceId,
    pub(crate) event_id: Option<EventId>,
    pub(crate) attempt: u32,
    pub(crate) deadline: Timestamp,
    /// The handled event's priority: what its handler's emits inherit.
    pub(crate) priority: Priority,
    /// Where the execution sits in a distributed trace: what its emits carry.
    pub(crate) trace_parent: Option<Box<TraceParent>>,
}

impl ContextInfo {
    /// The facts of an execution of `claimed`, a delivery of the step `step`
    /// (at `step_index` in the flow), that must finish by `deadline`.
    pub(crate) fn of_delivery(
        claimed: &Claimed,
        step: &StepName,
        step_index: usize,
        deadline: Timestamp,
    ) -> Self {
        ContextInfo {
            tenant: claimed.event.tenant.clone(),
            step: step.clone(),
            step_index,
            trace_id: claimed.event.trace_id,
            event_id: Some(claimed.event.id),
            attempt: claimed.attempt,
            deadline,
            priority: claimed.event.priority,
            trace_parent: None,
        }
    }
}

struct Inner {
    info: ContextInfo,
    host: Arc<dyn Host>,
    txn: Mutex<Txn>,
}

/// What a handler gets: its tenant's state as a transaction, an emit buffer, and
/// facts about this execution.
///
/// Everything a handler writes or emits is buffered and commits atomically with
/// the acknowledgement of its input when the handler returns `Ok`; on `Err`,
/// nothing of it is kept. The context is bound to the tenant of the event being
/// handled: there is no way to name another tenant's keys.
///
/// Cloning is cheap; clones share one transaction.
#[derive(Clone)]
pub struct StepContext {
    inner: Arc<Inner>,
}

impl fmt::Debug for StepContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = &self.inner.info;
        f.debug_struct("StepContext")
            .field("tenant", &info.tenant)
            .field("step", &info.step)
            .field("trace_id", &info.trace_id)
            .field("attempt", &info.attempt)
            .finish_non_exhaustive()
    }
}

pub(super) fn check_key(key: &str) -> Result<(), StateError> {
    // NUL too: PostgreSQL's text cannot hold it.
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.contains('\0') {
        return Err(StateError::InvalidKey(key.chars().take(80).collect()));
    }
    Ok(())
}

impl StepContext {
    pub(crate) fn new(info: ContextInfo, host: Arc<dyn Host>) -> Self {
        StepContext {
            inner: Arc::new(Inner {
                info,
                host,
                txn: Mutex::new(Txn::default()),
            }),
        }
    }

    /// Makes this context a fresh one for another execution, reusing its
    /// allocation, if no clone of it is left anywhere (a handler may have kept
    /// one); otherwise gives `info` back.
    pub(crate) fn renew(&mut self, info: ContextInfo) -> Result<(), ContextInfo> {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                inner.info = info;
                let txn = inner.txn.get_mut().unwrap_or_else(|p| p.into_inner());
                if !txn.is_empty() {
                    *txn = Txn::default();
                }
                inner.txn.clear_poison();
                Ok(())
            }
            None => Err(info),
        }
    }

    pub(super) fn host(&self) -> &dyn Host {
        &*self.inner.host
    }

    pub(super) fn txn(&self) -> MutexGuard<'_, Txn> {
        self.inner
            .txn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value of type `T` the host gave the engine with
    /// [`EngineBuilder::data`](crate::EngineBuilder::data), borrowed for this
    /// execution.
    ///
    /// # Errors
    /// [`MissingData`] if the engine was given no `T`: a wiring mistake, so
    /// `?` on it dead-letters at once instead of retrying.
    pub fn data<T: Send + Sync + 'static>(&self) -> Result<&T, MissingData> {
        self.inner.host.data().get::<T>()
    }

    /// The backend this execution reads from, for reads outside its
    /// transaction (flow-control budgets).
    pub(crate) fn backend(&self) -> &dyn Backend {
        self.inner.host.backend()
    }

    /// Takes the buffered reads, writes, adds and emits (leaves an empty transaction).
    pub(crate) fn take_txn(&self) -> Txn {
        std::mem::take(&mut *self.txn())
    }

    /// The tenant this execution belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.inner.info.tenant
    }

    /// The running step's name.
    pub fn step(&self) -> &StepName {
        &self.inner.info.step
    }

    /// The trace this execution is part of.
    pub fn trace_id(&self) -> TraceId {
        self.inner.info.trace_id
    }

    /// Where this execution sits in a distributed trace (W3C Trace Context):
    /// what the events it emits carry. `None` when its event came with no
    /// `traceparent` and no [span link](crate::engine::trace_link) is installed.
    pub fn trace_parent(&self) -> Option<&TraceParent> {
        self.inner.info.trace_parent.as_deref()
    }

    /// The `traceparent` an outbound HTTP call made now should send: the
    /// current span's (a client span the caller opened, say) when a span
    /// link is installed, else this execution's.
    pub fn outbound_trace(&self) -> Option<TraceParent> {
        super::trace_link::context_of(&tracing::Span::current())
            .or_else(|| self.inner.info.trace_parent.as_deref().cloned())
    }

    /// The id of the event being handled (`None` in API steps).
    pub fn event_id(&self) -> Option<EventId> {
        self.inner.info.event_id
    }

    /// Which attempt this is, from 1. Re-runs after a commit conflict keep the number.
    pub fn attempt(&self) -> u32 {
        self.inner.info.attempt
    }

    /// When this attempt times out.
    pub fn deadline(&self) -> Timestamp {
        self.inner.info.deadline
    }

    /// The priority of the event being handled ([`Priority::Normal`] in API
    /// steps): what this handler's emits inherit unless they name their own.
    pub fn priority(&self) -> Priority {
        self.inner.info.priority
    }

    /// The engine clock's current time.
    pub fn now(&self) -> Timestamp {
        self.inner.host.clock().now()
    }

    /// A key for an external call that is the same on every attempt and re-run of
    /// this execution, and different for any other event, step or purpose. Pass it
    /// as the idempotency key of a payment or any call that must not happen twice.
    ///
    /// In API steps, which have no input event, the key derives from the call's
    /// trace id.
    pub fn idempotency_key(&self, purpose: &str) -> String {
        let info = &self.inner.info;
        let origin = info
            .event_id
            .map_or_else(|| info.trace_id.to_string(), |id| id.to_string());
        format!("{}:{}:{}:{}", info.tenant, info.step, origin, purpose)
    }

    /// Reads a key of this tenant's state.
    ///
    /// The first read of a key records its version; the commit fails (and the
    /// handler re-runs) if the key changed before the commit. Later reads of the
    /// same key in this execution see the first read or this execution's own writes.
    /// They do not see this execution's own pending [`add`](Self::add)s, which
    /// apply only at commit.
    ///
    /// # Errors
    /// The backend failed, the key is invalid, or the value is not a `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StateError> {
        decode(key, self.get_raw(key).await?)
    }

    /// Reads a key's raw bytes.
    ///
    /// # Errors
    /// The backend failed or the key is invalid.
    pub async fn get_raw(&self, key: &str) -> Result<Option<Value>, StateError> {
        check_key(key)?;
        {
            let txn = self.txn();
            if let Some(written) = txn.writes.get(key) {
                return Ok(written.clone());
            }
            if let Some((_, value)) = txn.reads.get(key) {
                return Ok(value.clone());
            }
        }
        let found = self.inner.host.backend().get(self.tenant(), key).await?;
        let mut txn = self.txn();
        let entry = txn
            .reads
            .entry(key.to_string())
            .or_insert_with(|| match found {
                Some(v) => (Some(v.version), Some(v.value)),
                None => (None, None),
            });
        Ok(entry.1.clone())
    }

    /// Writes a key of this tenant's state (buffered until commit).
    ///
    /// # Errors
    /// The key is invalid, the value does not serialize, or this execution
    /// already [`add`](Self::add)ed to the key ([`StateError::AddAndWrite`]).
    pub fn put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), StateError> {
        check_key(key)?;
        let bytes = serde_json::to_vec(value).map_err(|source| StateError::Encode {
            key: key.to_string(),
            source,
        })?;
        self.write(key, Some(Arc::from(bytes)))
    }

    /// Deletes a key of this tenant's state (buffered until commit).
    ///
    /// # Errors
    /// The key is invalid, or this execution already [`add`](Self::add)ed to it
    /// ([`StateError::AddAndWrite`]).
    pub fn delete(&self, key: &str) -> Result<(), StateError> {
        check_key(key)?;
        self.write(key, None)
    }

    fn write(&self, key: &str, value: Option<Value>) -> Result<(), StateError> {
        let mut txn = self.txn();
        if txn.adds.contains_key(key) {
            return Err(StateError::AddAndWrite {
                key: key.to_string(),
            });
        }
        txn.writes.insert(key.to_string(), value);
        Ok(())
    }

    /// Reads a key as committed now, without a read check: the commit does not
    /// fail if the key changes meanwhile.
    ///
    /// For a decision that a commit checks another way, such as a
    /// [`take`](Self::take) whose floor is checked at commit, or for a value
    /// that only needs to be recent. Sees this execution's own writes, not its
    /// pending adds. Use [`get`](Self::get) when the commit must rest on the
    /// value read.
    ///
    /// # Errors
    /// The backend failed, the key is invalid, or the value is not a `T`.
    pub async fn peek<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StateError> {
        check_key(key)?;
        let written = self.txn().writes.get(key).cloned();
        let bytes = match written {
            Some(written) => written,
            None => self
                .inner
                .host
                .backend()
                .get(self.tenant(), key)
                .await?
                .map(|v| v.value),
        };
        decode(key, bytes)
    }

    /// Reads up to `limit` keys that start with `prefix`, in key order, with this
    /// execution's own writes applied (not its pending [`add`](Self::add)s).
    ///
    /// Every key returned is checked at commit like a [`get`](Self::get); keys that
    /// another execution adds under the prefix meanwhile are not (no phantom
    /// protection).
    ///
    /// # Errors
    /// The backend failed or a value is not a `T`.
    pub async fn scan<T: DeserializeOwned>(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, T)>, StateError> {
        self.scan_page(prefix, None, limit).await
    }

    /// As [`scan`](Self::scan), the keys after `after`: the next page of a
    /// scan whose last key was `after`.
    ///
    /// ```
    /// # async fn all_users(ctx: &flowline::StepContext) -> Result<usize, flowline::StateError> {
    /// let mut seen = 0;
    /// let mut page: Vec<(String, bool)> = ctx.scan("users/", 100).await?;
    /// while let Some((last, _)) = page.last() {
    ///     seen += page.len();
    ///     let after = last.clone();
    ///     page = ctx.scan_after("users/", &after, 100).await?;
    /// }
    /// # Ok(seen) }
    /// ```
    ///
    /// # Errors
    /// The backend failed or a value is not a `T`.
    pub async fn scan_after<T: DeserializeOwned>(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, T)>, StateError> {
        self.scan_page(prefix, Some(after), limit).await
    }

    async fn scan_page<T: DeserializeOwned>(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, T)>, StateError> {
        let backend = self.inner.host.backend();
        let found = match after {
            Some(after) => {
                backend
                    .scan_after(self.tenant(), prefix, after, limit)
                    .await?
            }
            None => backend.scan(self.tenant(), prefix, limit).await?,
        };
        let mut merged: BTreeMap<String, Option<Value>> = BTreeMap::new();
        {
            let mut txn = self.txn();
            for (key, v) in found {
                let entry = txn
                    .reads
                    .entry(key.clone())
                    .or_insert((Some(v.version), Some(v.value)));
                merged.insert(key, entry.1.clone());
            }
            for (key, value) in txn.writes.range(prefix.to_string()..) {
                if !key.starts_with(prefix) {
                    break;
                }
                if after.is_some_and(|after| key.as_str() <= after) {
                    continue;
                }
                merged.insert(key.clone(), value.clone());
            }
        }
        let mut out = Vec::new();
        for (key, value) in merged.into_iter().filter_map(|(k, v)| Some((k, v?))) {
            if out.len() == limit {
                break;
            }
            let decoded = serde_json::from_slice(&value).map_err(|source| StateError::Decode {
                key: key.clone(),
                source,
            })?;
            out.push((key, decoded));
        }
        Ok(out)
    }

    /// Emits a typed event (buffered until commit).
    ///
    /// # Errors
    /// The step did not declare `E`, or the payload does not serialize.
    pub fn emit<E: Event>(&self, event: &E) -> Result<EventId, EmitError> {
        self.emit_with(event, EmitOptions::default())
    }

    /// Emits a typed event with a delay, FIFO group or headers.
    ///
    /// # Errors
    /// The step did not declare `E`, or the payload does not serialize.
    pub fn emit_with<E: Event>(
        &self,
        event: &E,
        options: EmitOptions,
    ) -> Result<EventId, EmitError> {
        self.emit_json(E::TOPIC, Payload::encode(event)?, options.versioned::<E>())
    }

    /// Emits an already-serialized payload on `topic`.
    ///
    /// # Errors
    /// The topic is invalid or not declared by the step.
    pub fn emit_json(
        &self,
        topic: &str,
        payload: Payload,
        mut options: EmitOptions,
    ) -> Result<EventId, EmitError> {
        let info = &self.inner.info;
        let host = &self.inner.host;
        validate_options(&options)?;
        let tenant = match options.tenant.take() {
            Some(to) if to != info.tenant && !info.tenant.is_system() => {
                return Err(EmitError::CrossTenant {
                    from: info.tenant.clone(),
                    to,
                });
            }
            Some(to) => to,
            None => info.tenant.clone(),
        };
        let topic =
            host.declared_emit(info.step_index, topic)
                .ok_or_else(|| EmitError::Undeclared {
                    step: info.step.clone(),
                    topic: topic.to_string(),
                })?;
        options.priority.get_or_insert(info.priority);
        if let Some(parent) = &info.trace_parent {
            if TraceParent::from_headers(&options.headers).is_none() {
                parent.write_headers(&mut options.headers);
            }
        }
        let envelope = build_envelope(
            host.clock().now(),
            topic,
            tenant,
            info.trace_id,
            info.event_id,
            payload,
            options,
        );
        let id = envelope.id;
        self.txn().emits.push(envelope);
        Ok(id)
    }
}

/// A state value read as a `T`.
fn decode<T: DeserializeOwned>(key: &str, bytes: Option<Value>) -> Result<Option<T>, StateError> {
    bytes
        .map(|bytes| serde_json::from_slice(&bytes))
        .transpose()
        .map_err(|source| StateError::Decode {
            key: key.to_string(),
            source,
        })
}
