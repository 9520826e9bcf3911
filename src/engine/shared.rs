//! What every task of one engine shares: the flow, the backend, the clock,
//! counters and the signals between the dispatcher, batches and host calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::app_data::AppData;
use super::config::EngineConfig;
use super::context::Host;
use super::flow::Flow;
use super::flow_control::Gate;
use super::journal::Journal;
use super::metrics::{BatchStats, Metrics, StepCounters, TenantCounters};
use super::txn::Parts;
use crate::backend::{Action, Backend, LeaseRef, NewDelivery};
use crate::event::{
    build_envelope, EmitOptions, Envelope, EventId, Payload, StepName, TenantId, Topic, TraceId,
};
use crate::time::Clock;

/// Called with every event the engine commits ([`EngineBuilder::on_emit`](crate::EngineBuilder::on_emit)).
pub(crate) type EmitHook = Arc<dyn Fn(&Envelope) + Send + Sync>;

/// One engine's state, held by its handle, dispatcher, batches and schedulers.
pub(crate) struct Shared {
    pub(crate) flow: Flow,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) clock: Clock,
    pub(crate) config: EngineConfig,
    pub(crate) metrics: Metrics,
    pub(crate) in_flight: Vec<AtomicUsize>,
    pub(crate) in_flight_total: AtomicUsize,
    pub(crate) wake: Notify,
    pub(crate) idle: Notify,
    pub(crate) stopping: AtomicBool,
    pub(crate) stop: Notify,
    pub(crate) leases: Mutex<HashMap<u64, Vec<LeaseRef>>>,
    pub(crate) next_batch: AtomicU64,
    pub(crate) on_emit: Option<EmitHook>,
    /// Who watches committed events ([`Engine::watch`](crate::Engine::watch)).
    pub(crate) watchers: super::watch::Watchers,
    /// What the host gave the handlers.
    pub(crate) data: AppData,
    /// Per step, in flow order.
    pub(crate) step_counters: Vec<StepCounters>,
    /// Per tenant, when counted (`EngineConfig::tenant_metrics`).
    pub(crate) tenant_counters: TenantCounters,
    pub(crate) journal: Journal,
    /// Flow control: the steps' limits, checked against budgets in the store.
    pub(crate) gate: Gate,
}

impl Shared {
    /// Adds a finished batch's statistics to the engine's.
    pub(crate) fn merge_stats(&self, stats: &mut BatchStats) {
        self.metrics.merge(stats);
        for (index, tally) in &stats.by_step {
            if let Some(counters) = self.step_counters.get(*index) {
                counters.merge(tally);
            }
        }
        if let Some(records) = stats.records.take() {
            self.journal.extend(records);
        }
        if let Some(tallies) = &stats.by_tenant {
            self.tenant_counters.merge(tallies);
        }
    }

    pub(crate) fn envelope(
        &self,
        topic: Topic,
        tenant: TenantId,
        trace_id: TraceId,
        causation_id: Option<EventId>,
        payload: Payload,
        options: EmitOptions,
    ) -> Envelope {
        build_envelope(
            self.clock.now(),
            topic,
            tenant,
            trace_id,
            causation_id,
            payload,
            options,
        )
    }

    /// Turns one emitted envelope into deliveries. `subs`
    /// are the subscribers of its topic, if the caller looked them up already.
    pub(crate) fn fan_out_one(
        &self,
        envelope: Envelope,
        subs: Option<&[usize]>,
    ) -> Vec<NewDelivery> {
        let mut out = Vec::new();
        self.fan_out_into(envelope, subs, &mut out);
        out
    }

    /// A copy of `emits` for the emit hook and the watchers, to tell them
    /// once they commit: one copy, shared by both (the watchers' ring holds
    /// the same `Arc`s); `None` (and no copy) when nobody listens.
    pub(crate) fn kept_for_hook(&self, emits: &[Envelope]) -> Option<Vec<Arc<Envelope>>> {
        (self.on_emit.is_some() || self.watchers.any())
            .then(|| emits.iter().cloned().map(Arc::new).collect())
    }

    /// Tells the emit hook and the watchers of committed envelopes.
    pub(crate) fn tell_hook(&self, committed: &[Arc<Envelope>]) {
        if let Some(hook) = &self.on_emit {
            for envelope in committed {
                hook(envelope);
            }
        }
        self.watchers.tell(committed);
    }

    /// The commit of a transaction's parts: its emits fanned out, with its
    /// own deliveries and cancels.
    pub(crate) fn commit_of(&self, parts: Parts) -> Action {
        let mut emits = self.fan_out(parts.emits);
        emits.extend(parts.sends);
        Action::Commit {
            reads: parts.reads,
            writes: parts.writes,
            adds: parts.adds,
            emits,
            cancels: parts.cancels,
        }
    }

    /// Turns emitted envelopes into deliveries.
    pub(crate) fn fan_out(&self, emits: Vec<Envelope>) -> Vec<NewDelivery> {
        let mut out = Vec::with_capacity(emits.len());
        for envelope in emits {
            self.fan_out_into(envelope, None, &mut out);
        }
        out
    }

    fn fan_out_into(&self, envelope: Envelope, subs: Option<&[usize]>, out: &mut Vec<NewDelivery>) {
        let event = Arc::new(envelope);
        match subs {
            Some(subs) => self.flow.fan_out_to(event, subs, out),
            None => self.flow.fan_out(event, out),
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

impl Host for Shared {
    fn clock(&self) -> Clock {
        self.clock
    }

    fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    fn declared_emit(&self, step: usize, topic: &str) -> Option<Topic> {
        self.flow.declared_emit(step, topic)
    }

    fn data(&self) -> &AppData {
        &self.data
    }

    fn wait_step(&self, name: &str) -> Option<StepName> {
        self.flow
            .steps()
            .iter()
            .find(|s| s.wait && s.name.as_str() == name)
            .map(|s| s.name.clone())
    }

    fn subscribers(&self, topic: &str) -> Vec<StepName> {
        self.flow.subscribers_of(topic)
    }
}
