//! The dispatcher (claims due deliveries fairly, within concurrency limits) and the
//! batch runner (runs handlers, turns results into completions, commits them together).

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::backend::{Action, AddError, Completion, Outcome, ReadCheck};
use crate::backend::{ClaimRequest, Claimed, StepClaim};
use crate::engine::context::{ContextInfo, StepContext};
use crate::engine::flow::StepRuntime;
use crate::engine::metrics::BatchStats;
use crate::engine::shared::Shared;
use crate::engine::step::Handler;
use crate::engine::step_error::{catch_panic, panicked, ErrorClass, StepError};
use crate::event::{StepName, TenantId};
use crate::time::Timestamp;

/// An attempt ran past its step's timeout.
#[derive(Debug, thiserror::Error)]
#[error("attempt timed out after {0:?}")]
pub struct TimedOut(pub Duration);

/// A delivery's lease expired more often than its retry policy allows attempts.
#[derive(Debug, thiserror::Error)]
#[error("attempts exhausted: {attempts} attempts started, last error: {last_error}")]
pub struct LeaseExhausted {
    attempts: u32,
    last_error: String,
}

pub(crate) async fn run(shared: Arc<Shared>, batches: Arc<Mutex<JoinSet<()>>>) {
    let mut rotation = 0usize;
    let claimable: Vec<usize> = shared
        .flow
        .steps()
        .iter()
        .enumerate()
        .filter(|(_, s)| !matches!(s.handler, Handler::Api(_)))
        .map(|(i, _)| i)
        .collect();
    loop {
        if shared.is_stopping() {
            return;
        }
        {
            let mut set = batches.lock().unwrap_or_else(|p| p.into_inner());
            while set.try_join_next().is_some() {}
        }
        let room = shared
            .config
            .max_in_flight
            .saturating_sub(shared.in_flight_total.load(Ordering::Acquire));
        let mut wants = Vec::new();
        if room > 0 && !claimable.is_empty() {
            rotation = (rotation + 1) % claimable.len();
            for k in 0..claimable.len() {
                let index = claimable[(rotation + k) % claimable.len()];
                let step = &shared.flow.steps()[index];
                let free = step
                    .config
                    .concurrency
                    .saturating_sub(shared.in_flight[index].load(Ordering::Acquire))
                    .min(room);
                if free > 0 {
                    wants.push(StepClaim {
                        step: step.name.clone(),
                        max: free,
                        lease: step.config.lease,
                    });
                }
            }
        }
        let wait = tokio::time::sleep(shared.config.poll_interval);
        let notified = shared.wake.notified();
        let mut next_due = None;
        if !wants.is_empty() {
            let now = shared.clock.now();
            let request = ClaimRequest {
                now,
                steps: wants,
                tenant_quantum: shared.config.tenant_quantum,
            };
            match shared.backend.claim(request).await {
                Ok(batch) => {
                    shared
                        .metrics
                        .dispatch_rounds
                        .fetch_add(1, Ordering::Relaxed);
                    // A due time that had passed when the claim found nothing is no
                    // reason to claim again at once (that would spin); a completion
                    // or the poll interval wakes the loop instead.
                    next_due = batch.next_due.filter(|at| *at > now);
                    if !batch.deliveries.is_empty() {
                        launch(&shared, &batches, batch.deliveries);
                        continue;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "claim failed; retrying after the poll interval")
                }
            }
        }
        let until_due = async {
            match next_due {
                Some(at) => shared.clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = notified => {}
            _ = wait => {}
            _ = until_due => {}
            _ = shared.stop.notified() => {}
        }
    }
}

fn launch(shared: &Arc<Shared>, batches: &Mutex<JoinSet<()>>, deliveries: Vec<Claimed>) {
    let mut set = batches.lock().unwrap_or_else(|p| p.into_inner());
    let mut deliveries = deliveries.into_iter();
    // Claims come grouped by step: look each step's index up once per run.
    let mut last: Option<(StepName, usize)> = None;
    while deliveries.len() > 0 {
        let mut chunk: Vec<(usize, Claimed)> =
            Vec::with_capacity(deliveries.len().min(shared.config.batch_size));
        for c in deliveries.by_ref().take(shared.config.batch_size) {
            let index = match &last {
                Some((name, index)) if *name == c.step => *index,
                _ => {
                    let Some(index) = shared.flow.step_index(c.step.as_str()) else {
                        continue;
                    };
                    last = Some((c.step.clone(), index));
                    index
                }
            };
            chunk.push((index, c));
        }
        for_each_run(chunk.iter().map(|(index, _)| *index), |index, n| {
            shared.in_flight[index].fetch_add(n, Ordering::AcqRel);
        });
        shared
            .in_flight_total
            .fetch_add(chunk.len(), Ordering::AcqRel);
        let batch_id = shared.next_batch.fetch_add(1, Ordering::Relaxed);
        shared
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(batch_id, chunk.iter().map(|(_, c)| c.lease).collect());
        set.spawn(run_batch(shared.clone(), batch_id, chunk));
    }
}

/// Calls `f(item, n)` for each run of `n` equal consecutive items.
fn for_each_run(items: impl Iterator<Item = usize>, mut f: impl FnMut(usize, usize)) {
    let mut run: Option<(usize, usize)> = None;
    for item in items {
        match &mut run {
            Some((current, n)) if *current == item => *n += 1,
            _ => {
                if let Some((current, n)) = run {
                    f(current, n);
                }
                run = Some((item, 1));
            }
        }
    }
    if let Some((current, n)) = run {
        f(current, n);
    }
}

/// What a finished execution asks the backend to do, for the batch's statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Commit,
    Retry,
    DeadLetter,
}

impl Kind {
    fn of(action: &Action) -> Self {
        match action {
            Action::Commit { .. } => Kind::Commit,
            Action::Retry { .. } => Kind::Retry,
            Action::DeadLetter { .. } => Kind::DeadLetter,
        }
    }
}

struct Execution {
    index: usize,
    claimed: Claimed,
    kind: Kind,
    ran_for: Option<Duration>,
    timed_out: bool,
}

/// The state keys one commit read, and the keys it changed (writes and adds), as
/// hashes of (tenant, key), in 64 bytes: see [`KeySet`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Footprint {
    reads: KeySet,
    changes: KeySet,
}

/// The read checks of a completion, if it is a commit.
fn reads_of(action: &Action) -> &[ReadCheck] {
    match action {
        Action::Commit { reads, .. } => reads,
        _ => &[],
    }
}

impl Footprint {
    /// The footprint of a commit whose tenant's keys hash from `seed`. Only a
    /// commit with reads can conflict: any other has an empty footprint.
    fn of(seed: u64, action: &Action) -> Self {
        let mut footprint = Footprint::default();
        let Action::Commit {
            reads,
            writes,
            adds,
            ..
        } = action
        else {
            return footprint;
        };
        if reads.is_empty() {
            return footprint;
        }
        for read in reads {
            footprint.reads.insert(key_hash(seed, &read.key));
        }
        for write in writes {
            footprint.changes.insert(key_hash(seed, &write.key));
        }
        for add in adds {
            footprint.changes.insert(key_hash(seed, &add.key));
        }
        footprint
    }
}

/// The seed of a tenant's key hashes: tenants' keys are apart, the same name in
/// two tenants is two keys.
fn tenant_seed(tenant: &TenantId) -> u64 {
    key_hash(0, tenant.as_str())
}

thread_local! {
    /// A spare buffer for [`footprints_of`], so that batches without conflicts
    /// allocate nothing for it once each worker thread has one.
    static SPARE_FOOTPRINTS: Cell<Vec<Footprint>> = const { Cell::new(Vec::new()) };
}

/// The footprint of each completion, in order, in case it conflicts; empty (and
/// nothing computed) when no completion reads anything, so none can conflict.
/// Give the buffer back with [`recycle`].
fn footprints_of(completions: &[Completion]) -> Vec<Footprint> {
    if completions.iter().all(|c| reads_of(&c.action).is_empty()) {
        return Vec::new();
    }
    let mut footprints = SPARE_FOOTPRINTS.with(Cell::take);
    footprints.reserve(completions.len());
    let mut last: Option<(&TenantId, u64)> = None;
    for c in completions {
        if reads_of(&c.action).is_empty() {
            footprints.push(Footprint::default());
            continue;
        }
        // Completions come in runs of one tenant: hash its name once a run.
        let seed = match last {
            Some((tenant, seed)) if *tenant == c.tenant => seed,
            _ => tenant_seed(&c.tenant),
        };
        last = Some((&c.tenant, seed));
        footprints.push(Footprint::of(seed, &c.action));
    }
    footprints
}

/// Keeps a footprint buffer for the next batch on this thread.
fn recycle(mut footprints: Vec<Footprint>) {
    if footprints.capacity() > 0 {
        footprints.clear();
        SPARE_FOOTPRINTS.with(|spare| spare.set(footprints));
    }
}

/// How many keys of each kind a [`Footprint`] keeps exactly.
const EXACT: usize = 5;

/// A set of keys in 32 bytes: the first [`EXACT`] as 32-bit hashes, any more
/// as bits of a 64-bit filter (one bit per key). Keys that only look alike (a
/// shared hash or filter bit) can only put an execution off to a later round,
/// never risk correctness: the backend's read checks decide conflicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct KeySet {
    exact: [u32; EXACT],
    len: u8,
    spill: u64,
}

impl KeySet {
    fn insert(&mut self, hash: u64) {
        let (exact, bit) = split(hash);
        let len = usize::from(self.len);
        if self.exact[..len].contains(&exact) {
            return;
        }
        if len < EXACT {
            self.exact[len] = exact;
            self.len += 1;
        } else {
            self.spill |= bit;
        }
    }

    fn exact(&self) -> &[u32] {
        &self.exact[..usize::from(self.len)]
    }
}

/// A key hash's exact part (its high half) and its filter bit.
fn split(hash: u64) -> (u32, u64) {
    let exact = (hash >> 32) as u32;
    (exact, bit_of(exact))
}

/// The filter bit of a key, from its exact part, so that a key kept exactly in
/// one set and spilled in another is still seen as one key.
fn bit_of(exact: u32) -> u64 {
    1 << (exact & 63)
}

/// A fast 64-bit hash of a key (FxHash-style words, then a murmur3 finaliser so
/// the low bits the filter uses depend on every byte), starting from `seed`.
fn key_hash(seed: u64, key: &str) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let bytes = key.as_bytes();
    let mut hash = seed ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(word).unwrap_or_default());
        hash = (hash.rotate_left(5) ^ word).wrapping_mul(K);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut tail = [0u8; 8];
        tail[..rest.len()].copy_from_slice(rest);
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash
}

/// The keys of the executions taken into a round of re-runs so far.
#[derive(Debug, Default)]
struct Round {
    reads: RoundKeys,
    changes: RoundKeys,
}

impl Round {
    /// Whether an execution with this footprint, committed in the same batch as
    /// those taken, could fail a read check on their changes or fail theirs.
    fn clashes_with(&self, footprint: &Footprint) -> bool {
        self.changes.meets(&footprint.reads) || self.reads.meets(&footprint.changes)
    }

    fn take(&mut self, footprint: &Footprint) {
        self.reads.add(&footprint.reads);
        self.changes.add(&footprint.changes);
    }
}

/// Keys of one kind gathered over a round (re-runs only: may allocate).
#[derive(Debug, Default)]
struct RoundKeys {
    exact: HashSet<u32>,
    /// The filter bits of the spilled keys.
    spill: u64,
    /// The filter bits of the exact keys, for spilled keys to meet them.
    exact_bits: u64,
}

impl RoundKeys {
    fn add(&mut self, keys: &KeySet) {
        for &exact in keys.exact() {
            self.exact.insert(exact);
            self.exact_bits |= bit_of(exact);
        }
        self.spill |= keys.spill;
    }

    /// Whether `keys` may share a key with these.
    fn meets(&self, keys: &KeySet) -> bool {
        keys.exact()
            .iter()
            .any(|&exact| self.exact.contains(&exact) || self.spill & bit_of(exact) != 0)
            || keys.spill & (self.spill | self.exact_bits) != 0
    }
}

/// Takes the next round of re-runs out of `pending`, greedily in order: every
/// execution whose footprint (from the run that conflicted) does not clash with
/// those already taken. The first is always taken, so each round makes progress
/// and an execution put off moves up until it is first; the rest keep their order.
fn next_round(
    pending: &mut Vec<(usize, Claimed)>,
    reruns: &HashMap<u64, Rerun>,
) -> Vec<(usize, Claimed)> {
    let mut taken = Round::default();
    let mut round = Vec::new();
    let mut rest = Vec::with_capacity(pending.len());
    for (i, item) in pending.drain(..).enumerate() {
        let footprint = reruns
            .get(&item.1.lease.id)
            .map(|r| r.footprint)
            .unwrap_or_default();
        if i == 0 || !taken.clashes_with(&footprint) {
            taken.take(&footprint);
            round.push(item);
        } else {
            rest.push(item);
        }
    }
    *pending = rest;
    round
}

/// What a batch remembers of an execution that conflicted.
#[derive(Debug, Default)]
struct Rerun {
    /// How many times it conflicted.
    conflicts: u32,
    /// Its footprint in the run that last conflicted.
    footprint: Footprint,
}

async fn run_batch(shared: Arc<Shared>, batch_id: u64, chunk: Vec<(usize, Claimed)>) {
    let mut stats = BatchStats::default();
    let count = chunk.len();
    let mut indexes: Vec<usize> = Vec::with_capacity(count);
    let mut pending: Vec<(usize, Claimed)> = chunk;
    // Only executions that conflicted are remembered: nothing is allocated while
    // none does.
    let mut reruns: HashMap<u64, Rerun> = HashMap::new();
    while !pending.is_empty() {
        // After a conflict, re-runs go in rounds of executions whose last runs
        // touched no key in common (one reading what another changed), each
        // round committing before the next starts. Run all together they would
        // read the same versions again, and n executions contending for a hot
        // key would take n²/2 runs, not 2n; run one at a time, executions on
        // different hot keys would wait for each other for nothing.
        let mut round: Vec<(usize, Claimed)> = if reruns.is_empty() {
            std::mem::take(&mut pending)
        } else {
            next_round(&mut pending, &reruns)
        };
        let Done {
            executions,
            completions,
        } = run_all(&shared, &mut round).await;
        // Computed before the backend takes the completions: the read keys of
        // those that conflict decide how their re-runs are grouped.
        let footprints = footprints_of(&completions);
        let outcomes = match shared.backend.complete(completions).await {
            Ok(outcomes) => outcomes,
            Err(err) => {
                recycle(footprints);
                // Nothing applied; the leases expire and the deliveries come back.
                tracing::error!(error = %err, deliveries = executions.len(), "commit failed; deliveries return after their lease");
                for e in &executions {
                    indexes.push(e.index);
                }
                break;
            }
        };
        let now = shared.clock.now();
        let mut rejected = Vec::new();
        for (i, (e, outcome)) in executions.into_iter().zip(outcomes).enumerate() {
            match outcome {
                Outcome::Conflict => {
                    let rerun = reruns.entry(e.claimed.lease.id).or_default();
                    rerun.conflicts += 1;
                    rerun.footprint = footprints.get(i).copied().unwrap_or_default();
                    if rerun.conflicts <= shared.config.max_conflict_reruns {
                        stats.conflicts += 1;
                        pending.push((e.index, e.claimed));
                        continue;
                    }
                    tracing::warn!(step = %e.claimed.step, "giving up after repeated conflicts; the lease will expire");
                }
                Outcome::Applied => {
                    record(&mut stats, &e, now);
                }
                Outcome::Stale | Outcome::Duplicate => stats.stale += 1,
                Outcome::Rejected(err) => {
                    rejected.push((e, err));
                    continue;
                }
            }
            indexes.push(e.index);
        }
        recycle(footprints);
        if !rejected.is_empty() {
            settle_rejected(&shared, rejected, &mut stats, &mut indexes).await;
        }
    }
    for_each_run(indexes.into_iter(), |index, n| {
        shared.in_flight[index].fetch_sub(n, Ordering::AcqRel);
    });
    shared
        .leases
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&batch_id);
    shared.in_flight_total.fetch_sub(count, Ordering::AcqRel);
    shared.metrics.merge(&stats);
    shared.wake.notify_one();
    shared.idle.notify_waiters();
}

/// Fails the executions whose commits the backend rejected (an add could not
/// apply): nothing of them applied, so each dead-letters now with the reason.
async fn settle_rejected(
    shared: &Arc<Shared>,
    rejected: Vec<(Execution, AddError)>,
    stats: &mut BatchStats,
    indexes: &mut Vec<usize>,
) {
    let mut executions = Vec::with_capacity(rejected.len());
    let mut completions = Vec::with_capacity(rejected.len());
    for (mut e, err) in rejected {
        let span = tracing::info_span!(
            "step",
            step = %e.claimed.step,
            tenant = %e.claimed.event.tenant,
            event_id = %e.claimed.event.id,
            attempt = e.claimed.attempt,
        );
        let action = failure(
            shared,
            e.index,
            &e.claimed,
            StepError::permanent(err),
            &span,
        );
        e.kind = Kind::of(&action);
        completions.push(Completion {
            tenant: e.claimed.event.tenant.clone(),
            input: Some(e.claimed.lease),
            marker: None,
            action,
        });
        executions.push(e);
    }
    let outcomes = match shared.backend.complete(completions).await {
        Ok(outcomes) => outcomes,
        Err(err) => {
            tracing::error!(error = %err, deliveries = executions.len(), "commit failed; deliveries return after their lease");
            indexes.extend(executions.iter().map(|e| e.index));
            return;
        }
    };
    let now = shared.clock.now();
    for (e, outcome) in executions.into_iter().zip(outcomes) {
        match outcome {
            Outcome::Applied => record(stats, &e, now),
            _ => stats.stale += 1,
        }
        indexes.push(e.index);
    }
}

/// Executions and the completions that carry their actions, in matching order.
struct Done {
    executions: Vec<Execution>,
    completions: Vec<Completion>,
}

impl Done {
    fn with_capacity(n: usize) -> Self {
        Done {
            executions: Vec::with_capacity(n),
            completions: Vec::with_capacity(n),
        }
    }
}

/// Runs every delivery of `chunk` (draining it) concurrently; returns the executions
/// and their completions, both in the order of `chunk`.
///
/// Each handler is started and polled once, in place. Handlers that finish on that
/// poll (no I/O, or I/O that was ready) need no task, no allocation and no timer;
/// the others go on together, each under its step's timeout.
async fn run_all(shared: &Arc<Shared>, chunk: &mut Vec<(usize, Claimed)>) -> Done {
    let now = shared.clock.now();
    let (done, unfinished) = std::future::poll_fn(|cx| {
        let mut done = Done::with_capacity(chunk.len());
        let mut unfinished = None;
        let mut mark = tokio::time::Instant::now();
        let mut spare = None;
        for (slot, (index, claimed)) in chunk.drain(..).enumerate() {
            let started = start(
                &mut done, &mut spare, shared, index, claimed, now, &mut mark, cx,
            );
            if let Some(rest) = started {
                unfinished
                    .get_or_insert_with(FuturesUnordered::new)
                    .push(async move { (slot, rest.await) });
            }
        }
        Poll::Ready((done, unfinished))
    })
    .await;
    let Some(mut unfinished) = unfinished else {
        return done;
    };
    let mut late = Vec::with_capacity(unfinished.len());
    while let Some(finished) = unfinished.next().await {
        late.push(finished);
    }
    late.sort_unstable_by_key(|(slot, _)| *slot);
    // Put the late ones back in their slots between the ones that finished at once.
    let n = done.executions.len() + late.len();
    let mut merged = Done::with_capacity(n);
    let mut early = done.executions.into_iter().zip(done.completions);
    let mut late = late.into_iter().peekable();
    for slot in 0..n {
        let next = match late.next_if(|(at, _)| *at == slot) {
            Some((_, one)) => one.executions.into_iter().zip(one.completions).next(),
            None => early.next(),
        };
        if let Some((e, c)) = next {
            merged.executions.push(e);
            merged.completions.push(c);
        }
    }
    merged
}

fn record(stats: &mut BatchStats, e: &Execution, now: Timestamp) {
    if let Some(ran_for) = e.ran_for {
        stats.handler.record(ran_for);
    }
    if e.timed_out {
        stats.timeouts += 1;
    }
    match e.kind {
        Kind::Commit => {
            stats.processed += 1;
            stats
                .end_to_end
                .record(now.saturating_since(e.claimed.event.due_at()));
        }
        Kind::Retry => {
            stats.failed += 1;
            stats.retried += 1;
        }
        Kind::DeadLetter => {
            stats.failed += 1;
            stats.dead_lettered += 1;
        }
    }
}

/// Pairs an execution with the completion that carries its action, and adds them
/// to `done`.
fn finish(
    done: &mut Done,
    index: usize,
    claimed: Claimed,
    action: Action,
    ran_for: Option<Duration>,
    timed_out: bool,
) {
    let kind = Kind::of(&action);
    done.completions.push(Completion {
        tenant: claimed.event.tenant.clone(),
        input: Some(claimed.lease),
        marker: None,
        action,
    });
    done.executions.push(Execution {
        index,
        claimed,
        kind,
        ran_for,
        timed_out,
    });
}

/// Starts one execution and polls its handler once with the batch task's context.
/// If the handler finished, adds the execution to `done`; if not, returns the
/// future that finishes it.
///
/// `spare` is the context of the previous execution that finished at once: when no
/// clone of it is left, this execution's context reuses its allocation.
///
/// `mark` is the latest instant read from the clock. A handler's run time counts
/// from it, and it moves to the end of each handler that finishes on the first poll,
/// so back-to-back handlers cost one clock read each.
#[allow(clippy::too_many_arguments)]
fn start(
    done: &mut Done,
    spare: &mut Option<StepContext>,
    shared: &Arc<Shared>,
    index: usize,
    claimed: Claimed,
    now: Timestamp,
    mark: &mut tokio::time::Instant,
    cx: &mut Context<'_>,
) -> Option<impl Future<Output = Done> + Send + 'static> {
    let step: &Arc<StepRuntime> = &shared.flow.steps()[index];
    if claimed.attempt > step.config.retry.get_max_attempts() {
        let err = LeaseExhausted {
            attempts: claimed.attempt - 1,
            last_error: claimed
                .last_error
                .clone()
                .unwrap_or_else(|| "lease expired before the attempt completed".into()),
        };
        let action = Action::DeadLetter {
            error: err.to_string(),
            at: now,
        };
        finish(done, index, claimed, action, None, false);
        return None;
    }
    let Handler::Event(handler) = &step.handler else {
        let action = Action::DeadLetter {
            error: "delivery addressed to an API step".into(),
            at: now,
        };
        finish(done, index, claimed, action, None, false);
        return None;
    };
    let timeout = step.config.timeout;
    let info = ContextInfo {
        tenant: claimed.event.tenant.clone(),
        step: step.name.clone(),
        step_index: index,
        trace_id: claimed.event.trace_id,
        event_id: Some(claimed.event.id),
        attempt: claimed.attempt,
        deadline: now + timeout,
    };
    let ctx = match spare.take() {
        Some(mut ctx) => match ctx.renew(info) {
            Ok(()) => ctx,
            Err(info) => StepContext::new(info, shared.clone()),
        },
        None => StepContext::new(info, shared.clone()),
    };
    let span = tracing::info_span!(
        "step",
        step = %step.name,
        topic = %claimed.event.topic,
        tenant = %claimed.event.tenant,
        trace_id = %claimed.event.trace_id,
        event_id = %claimed.event.id,
        attempt = claimed.attempt,
    );
    let started = *mark;
    let first = {
        let _entered = span.enter();
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut run = handler(ctx.clone(), &claimed.event);
            let poll = run.as_mut().poll(cx);
            (run, poll)
        }))
    };
    let result = match first {
        Ok((run, Poll::Ready(result))) => {
            drop(run); // its clone of the context, so the context can be reused
            result
        }
        Err(payload) => Err(panicked(payload.as_ref())),
        Ok((run, Poll::Pending)) => {
            let shared = shared.clone();
            return Some(async move {
                let rest = catch_panic(run);
                let result = tokio::time::timeout_at(started + timeout, rest)
                    .instrument(span.clone())
                    .await;
                let ran_for = started.elapsed();
                let (result, timed_out) = match result {
                    Ok(result) => (result, false),
                    Err(_) => (Err(StepError::retryable(TimedOut(timeout))), true),
                };
                let mut done = Done::with_capacity(1);
                conclude(
                    &mut done, &shared, index, claimed, &ctx, result, ran_for, timed_out, &span,
                );
                done
            });
        }
    };
    let end = tokio::time::Instant::now();
    let ran_for = end.saturating_duration_since(started);
    *mark = end;
    conclude(
        done, shared, index, claimed, &ctx, result, ran_for, false, &span,
    );
    *spare = Some(ctx);
    None
}

/// Turns a handler's result into the execution's action: commit its transaction,
/// retry per the step's policy, or dead-letter.
#[allow(clippy::too_many_arguments)]
fn conclude(
    done: &mut Done,
    shared: &Arc<Shared>,
    index: usize,
    claimed: Claimed,
    ctx: &StepContext,
    result: Result<(), StepError>,
    ran_for: Duration,
    timed_out: bool,
    span: &tracing::Span,
) {
    let ran_for = Some(ran_for);
    let error = match result {
        Ok(()) => {
            let parts = ctx.take_txn().into_parts();
            let action = Action::Commit {
                reads: parts.reads,
                writes: parts.writes,
                adds: parts.adds,
                emits: shared.fan_out(parts.emits),
            };
            finish(done, index, claimed, action, ran_for, timed_out);
            return;
        }
        Err(err) => err,
    };
    let action = failure(shared, index, &claimed, error, span);
    finish(done, index, claimed, action, ran_for, timed_out);
}

/// The action for an attempt that failed with `error`: retry per the step's
/// policy, or dead-letter. Logs it in `span`.
fn failure(
    shared: &Arc<Shared>,
    index: usize,
    claimed: &Claimed,
    error: StepError,
    span: &tracing::Span,
) -> Action {
    let policy = shared.flow.steps()[index].config.retry;
    let now = shared.clock.now();
    let message = error.chain_message();
    let elapsed = now.saturating_since(claimed.first_attempt_at);
    let next = match error.class() {
        ErrorClass::Permanent => None,
        ErrorClass::Retryable => policy.next_delay(claimed.attempt, elapsed, None),
        ErrorClass::RetryAfter(floor) => policy.next_delay(claimed.attempt, elapsed, Some(floor)),
    };
    let _enter = span.enter();
    match next {
        Some(delay) => {
            tracing::warn!(error = %message, retry_in = ?delay, "attempt failed; will retry");
            Action::Retry {
                at: now + delay,
                error: message,
            }
        }
        None => {
            tracing::error!(error = %message, permanent = error.is_permanent(), "attempt failed; dead-lettering");
            Action::DeadLetter {
                error: message,
                at: now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::{
        footprints_of, for_each_run, next_round, recycle, tenant_seed, Footprint, Rerun, Round,
    };
    use crate::backend::{Action, Add, Completion, ReadCheck, Write};
    use crate::backend::{Claimed, LeaseRef};
    use crate::event::{build_envelope, EmitOptions};
    use crate::event::{Payload, StepName, TenantId, Topic, TraceId};
    use crate::time::Timestamp;

    /// The footprint of a commit of tenant `a` that reads `reads`, writes
    /// `writes` and adds to `adds`.
    fn footprint(reads: &[&str], writes: &[&str], adds: &[&str]) -> Footprint {
        footprint_of("a", reads, writes, adds)
    }

    fn footprint_of(tenant: &str, reads: &[&str], writes: &[&str], adds: &[&str]) -> Footprint {
        let tenant = TenantId::new(tenant).unwrap();
        Footprint::of(
            tenant_seed(&tenant),
            &Action::Commit {
                reads: reads
                    .iter()
                    .map(|key| ReadCheck {
                        key: key.to_string(),
                        version: None,
                    })
                    .collect(),
                writes: writes
                    .iter()
                    .map(|key| Write {
                        key: key.to_string(),
                        value: None,
                    })
                    .collect(),
                adds: adds
                    .iter()
                    .map(|key| Add {
                        key: key.to_string(),
                        delta: 1,
                    })
                    .collect(),
                emits: vec![],
            },
        )
    }

    /// Whether `b` clashes with a round holding `a`, and `a` with one holding `b`
    /// (the answer must not depend on the order).
    fn clash(a: &Footprint, b: &Footprint) -> bool {
        let (mut holding_a, mut holding_b) = (Round::default(), Round::default());
        holding_a.take(a);
        holding_b.take(b);
        let clash = holding_a.clashes_with(b);
        assert_eq!(clash, holding_b.clashes_with(a), "{a:?} {b:?}");
        clash
    }

    #[test]
    fn footprints_clash_only_where_one_changes_what_the_other_read() {
        let stock = |n: u32| {
            let key = format!("stock/{n}");
            footprint(&["settings", &key], &[&key], &[])
        };
        // Read-modify-writes of different keys, sharing a read-only key: no clash.
        for a in 0..50 {
            for b in 0..50 {
                assert_eq!(clash(&stock(a), &stock(b)), a == b, "{a} {b}");
            }
        }
        // Writes and adds without a read of the key: they clash with readers of
        // it, not with each other.
        let blind = footprint(&["settings"], &["stock/3"], &[]);
        assert!(clash(&blind, &stock(3)));
        assert!(!clash(&blind, &blind), "blind writes never conflict");
        let adder = footprint(&["settings"], &[], &["orders"]);
        assert!(!clash(&adder, &adder), "adds never conflict");
        assert!(clash(&footprint(&["orders"], &[], &[]), &adder));
        // A commit that reads nothing cannot conflict and needs no footprint.
        assert_eq!(
            footprint(&[], &["stock/3"], &["orders"]),
            Footprint::default()
        );
        let other_tenant = footprint_of("b", &["stock/3"], &["stock/3"], &[]);
        assert!(!clash(&other_tenant, &stock(3)), "tenants' keys are apart");
        let nothing = Footprint::of(
            tenant_seed(&TenantId::new("a").unwrap()),
            &Action::Retry {
                at: Timestamp::EPOCH,
                error: String::new(),
            },
        );
        assert_eq!(nothing, Footprint::default());
        let mut round = Round::default();
        round.take(&stock(1));
        round.take(&stock(2));
        assert!(round.clashes_with(&stock(2)) && !round.clashes_with(&stock(4)));
    }

    #[test]
    fn a_batch_s_footprints_follow_its_completions_and_reuse_one_buffer() {
        let commit = |tenant: &str, read: Option<&str>| Completion {
            tenant: TenantId::new(tenant).unwrap(),
            input: None,
            marker: None,
            action: Action::Commit {
                reads: read
                    .map(|key| ReadCheck {
                        key: key.to_string(),
                        version: None,
                    })
                    .into_iter()
                    .collect(),
                writes: vec![],
                adds: vec![],
                emits: vec![],
            },
        };
        // Nothing reads: nothing is computed, nothing allocated.
        let blind = vec![commit("a", None), commit("b", None)];
        assert_eq!(footprints_of(&blind).capacity(), 0);
        let batch = vec![
            commit("a", Some("k")),
            commit("a", None),
            commit("a", Some("k")),
            commit("b", Some("k")),
        ];
        let footprints = footprints_of(&batch);
        assert_eq!(footprints[0], footprint(&["k"], &[], &[]));
        assert_eq!(footprints[1], Footprint::default());
        assert_eq!(footprints[2], footprints[0]);
        assert_eq!(footprints[3], footprint_of("b", &["k"], &[], &[]));
        assert_ne!(footprints[3], footprints[0]);
        let buffer = footprints.as_ptr();
        recycle(footprints);
        let again = footprints_of(&batch);
        assert_eq!(again.as_ptr(), buffer, "the buffer is reused");
    }

    #[test]
    fn a_footprint_is_small() {
        // Every execution carries one, conflicted or not.
        assert_eq!(std::mem::size_of::<Footprint>(), 64);
    }

    #[test]
    fn large_footprints_spill_into_a_filter_and_still_clash_where_they_must() {
        // An order of seven lines reads and writes seven stock keys: five are
        // kept exactly, two as filter bits.
        let order = |first: u32| {
            let keys: Vec<String> = (first..first + 7).map(|n| format!("stock/{n}")).collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            footprint(&keys, &keys, &[])
        };
        assert!(order(0).reads.spill != 0 && order(0).changes.spill != 0);
        // Overlapping orders clash, whichever key they share (exact or spilled).
        for shift in 1..7 {
            assert!(clash(&order(0), &order(shift)), "shift {shift}");
        }
        for n in 0..7 {
            let single = footprint(&[&format!("stock/{n}")], &[&format!("stock/{n}")], &[]);
            assert!(clash(&order(0), &single), "stock/{n}");
        }
        // Disjoint orders mostly do not; when spilled bits meet by chance the
        // order only waits a round.
        let apart = (1..=20)
            .filter(|k| !clash(&order(0), &order(7 * k)))
            .count();
        assert!(apart >= 10, "only {apart} of 20 disjoint orders seen apart");
    }

    #[test]
    fn rounds_take_the_first_and_then_whatever_does_not_clash_in_order() {
        let step = StepName::new("s").unwrap();
        let event = Arc::new(build_envelope(
            Timestamp::EPOCH,
            Topic::new("t").unwrap(),
            TenantId::new("a").unwrap(),
            TraceId::new(),
            None,
            Payload::encode(&0).unwrap(),
            EmitOptions::default(),
        ));
        // Eight executions, each a read-modify-write of one of three keys.
        let keys = [0, 1, 0, 2, 1, 0, 2, 2];
        let mut reruns = HashMap::new();
        let mut pending = Vec::new();
        for (id, key) in keys.iter().enumerate() {
            let key = format!("k{key}");
            let id = id as u64;
            let lease = LeaseRef { id, token: 1 };
            let claimed = Claimed::new(
                lease,
                step.clone(),
                event.clone(),
                1,
                Timestamp::EPOCH,
                None,
            );
            pending.push((0, claimed));
            reruns.insert(
                id,
                Rerun {
                    conflicts: 1,
                    footprint: footprint(&[&key], &[&key], &[]),
                },
            );
        }
        let ids = |items: &[(usize, Claimed)]| -> Vec<u64> {
            items.iter().map(|(_, c)| c.lease.id).collect()
        };
        let mut round = next_round(&mut pending, &reruns);
        assert_eq!(ids(&round), [0, 1, 3]);
        assert_eq!(ids(&pending), [2, 4, 5, 6, 7], "the rest keep their order");
        // Execution 0 conflicts again (another batch changed its key): it goes
        // to the back, behind the ones put off.
        pending.push(round.remove(0));
        let round = next_round(&mut pending, &reruns);
        assert_eq!(ids(&round), [2, 4, 6]);
        let round = next_round(&mut pending, &reruns);
        assert_eq!(ids(&round), [5, 7]);
        let round = next_round(&mut pending, &reruns);
        assert_eq!(ids(&round), [0]);
        assert!(pending.is_empty());
    }

    #[test]
    fn runs_are_counted_in_order() {
        let mut runs = Vec::new();
        for_each_run([2, 2, 0, 1, 1, 1, 2].into_iter(), |item, n| {
            runs.push((item, n));
        });
        assert_eq!(runs, [(2, 2), (0, 1), (1, 3), (2, 1)]);
        for_each_run(std::iter::empty(), |_, _| panic!("no items, no runs"));
    }
}
