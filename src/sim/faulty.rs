//! [`FaultyBackend`]: any backend, with the faults a [`Faults`] decides struck
//! at its calls.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::faults::{Call, Fault};
use super::injector::Faults;
use super::lockstep::block_on;
use crate::backend::{
    Action, Backend, ClaimBatch, ClaimRequest, Completion, DeadLetter, DeadLetterQuery,
    FailureKind, LeaseRef, NewDelivery, Outcome, QueueDepth, StepWork, Store, StoreError,
    Transport, Versioned, WakeUp,
};
use crate::event::{Payload, StepName, TenantId};
use crate::time::{Clock, Timestamp};

/// What the error of every struck fault says first.
pub const STRUCK: &str = "simulated fault";

/// The error of a struck fault.
#[derive(Debug, thiserror::Error)]
#[error("{STRUCK}: {0}")]
struct Struck(&'static str);

fn struck(what: &'static str) -> StoreError {
    StoreError::Backend(Box::new(Struck(what)))
}

/// The error every dead-lettered delivery of a [`Fault::Permanent`] carries.
pub const PERMANENT_FAULT: &str = "simulated permanent failure";

/// A backend that strikes faults at its calls: errors, slow calls, lost
/// acknowledgements, permanent failures and crashes, as its [`Faults`] decide.
///
/// After a crash every call fails, as the calls of a dead process would, until
/// the one who started the engine on it drops that engine and starts another
/// on a new `FaultyBackend` over the same data ([`Simulation`](super::Simulation)
/// does all this). Slow calls wait on tokio's clock: under a paused clock they
/// cost no real time.
///
/// In lockstep ([`lockstep`](Self::lockstep)) each call of the inner backend
/// runs to its end before anything else of the runtime does, and the clock
/// cannot move meanwhile, so that a backend answering from another thread
/// (SQLite's writer) answers at the same point of every run. Only for backends
/// that need no runtime to answer: not PostgreSQL, whose I/O runs on the
/// runtime that would be blocked.
///
/// ```
/// use std::sync::Arc;
/// use flowline::sim::{Call, FaultPlan, Faults, FaultyBackend};
/// use flowline::{Clock, MemoryBackend};
///
/// let faults = Faults::from_plan(FaultPlan::none().errors(Call::Claim, 0.1), 42);
/// let backend = FaultyBackend::new(Arc::new(MemoryBackend::new()), faults, Clock::system());
/// assert!(!backend.is_down());
/// # let _ = backend;
/// ```
#[derive(Clone)]
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Faults,
    clock: Clock,
    down: Arc<AtomicBool>,
    lockstep: bool,
}

impl std::fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("faults", &self.faults)
            .field("down", &self.is_down())
            .finish_non_exhaustive()
    }
}

impl FaultyBackend {
    /// `inner`, with faults from `faults`; `clock` stamps the dead letters of
    /// permanent faults.
    pub fn new(inner: Arc<dyn Backend>, faults: Faults, clock: Clock) -> Self {
        FaultyBackend {
            inner,
            faults,
            clock,
            down: Arc::new(AtomicBool::new(false)),
            lockstep: false,
        }
    }

    /// Runs each inner call to its end before anything else runs (see above).
    #[must_use]
    pub fn lockstep(mut self, lockstep: bool) -> Self {
        self.lockstep = lockstep;
        self
    }

    /// Whether a crash struck: every call fails from now on.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// The backend the faults are struck in front of.
    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }

    async fn forward<T>(&self, call: impl Future<Output = T> + Send) -> T {
        if self.lockstep {
            block_on(call)
        } else {
            call.await
        }
    }

    fn alive(&self) -> Result<(), StoreError> {
        if self.is_down() {
            Err(struck("the process crashed"))
        } else {
            Ok(())
        }
    }

    /// Checks the process is alive, decides the call's fault and waits out a
    /// slow one; the fault left for the caller to act on, if any.
    async fn enter(&self, call: Call) -> Result<Option<Fault>, StoreError> {
        self.alive()?;
        match self.faults.decide(call) {
            None => Ok(None),
            Some(Fault::Error) => Err(struck("the call failed")),
            Some(Fault::Slow(delay)) => {
                tokio::time::sleep(delay).await;
                self.alive()?;
                Ok(None)
            }
            Some(Fault::Crash { committed }) => {
                self.down.store(true, Ordering::Release);
                if committed {
                    Ok(Some(Fault::Crash { committed }))
                } else {
                    Err(struck("the process crashed"))
                }
            }
            Some(other) => Ok(Some(other)),
        }
    }

    /// A read: alive, maybe failed or slow, then forwarded.
    async fn read<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        self.enter(Call::Read).await?;
        self.forward(call).await
    }

    /// A call faults are not struck at, but that a dead process cannot make.
    async fn plain<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        self.alive()?;
        self.forward(call).await
    }
}

/// `batch` with every commit of a claimed delivery turned into a dead letter.
fn made_permanent(batch: Vec<Completion>, at: Timestamp) -> Vec<Completion> {
    batch
        .into_iter()
        .map(|mut completion| {
            if completion.input.is_some() && matches!(completion.action, Action::Commit { .. }) {
                completion.action = Action::DeadLetter {
                    error: PERMANENT_FAULT.to_string(),
                    at,
                    kind: FailureKind::Permanent,
                    emits: Vec::new(),
                };
            }
            completion
        })
        .collect()
}

#[async_trait]
impl Store for FaultyBackend {
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.read(self.inner.get(tenant, key)).await
    }

    async fn get_many(
        &self,
        tenant: &TenantId,
        keys: &[String],
    ) -> Result<Vec<Option<Versioned>>, StoreError> {
        self.read(self.inner.get_many(tenant, keys)).await
    }

    async fn scan(
        &self,
        tenant: &TenantId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.read(self.inner.scan(tenant, prefix, limit)).await
    }

    async fn scan_after(
        &self,
        tenant: &TenantId,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.read(self.inner.scan_after(tenant, prefix, after, limit))
            .await
    }

    async fn complete(&self, batch: Vec<Completion>) -> Result<Vec<Outcome>, StoreError> {
        match self.enter(Call::Complete).await? {
            None => self.forward(self.inner.complete(batch)).await,
            Some(Fault::Permanent) => {
                let batch = made_permanent(batch, self.clock.now());
                self.forward(self.inner.complete(batch)).await
            }
            // Lost acknowledgements and crashes after the commit: it applies,
            // and the engine hears it failed.
            Some(_) => {
                self.forward(self.inner.complete(batch)).await?;
                Err(struck("the acknowledgement was lost"))
            }
        }
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(self.inner.dead_letters(query)).await
    }

    async fn replay_dead_letters(&self, ids: &[u64], now: Timestamp) -> Result<usize, StoreError> {
        self.plain(self.inner.replay_dead_letters(ids, now)).await
    }

    async fn amend_dead_letter(&self, id: u64, payload: Payload) -> Result<bool, StoreError> {
        self.plain(self.inner.amend_dead_letter(id, payload)).await
    }

    async fn purge_dead_letters(&self, ids: &[u64]) -> Result<usize, StoreError> {
        self.plain(self.inner.purge_dead_letters(ids)).await
    }

    async fn last_cron_fire(&self, schedule: &StepName) -> Result<Option<Timestamp>, StoreError> {
        self.read(self.inner.last_cron_fire(schedule)).await
    }
}

#[async_trait]
impl Transport for FaultyBackend {
    async fn publish(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        self.enter(Call::Publish).await?;
        self.forward(self.inner.publish(deliveries)).await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<ClaimBatch, StoreError> {
        match self.enter(Call::Claim).await? {
            None => self.forward(self.inner.claim(request)).await,
            // A crash after the claim: the leases die with the process.
            Some(_) => {
                self.forward(self.inner.claim(request)).await?;
                Err(struck("the process crashed"))
            }
        }
    }

    async fn release(&self, leases: &[LeaseRef]) -> Result<(), StoreError> {
        self.plain(self.inner.release(leases)).await
    }

    async fn depth(&self, now: Timestamp) -> Result<QueueDepth, StoreError> {
        self.read(self.inner.depth(now)).await
    }

    async fn is_drained(&self, now: Timestamp) -> Result<bool, StoreError> {
        self.read(self.inner.is_drained(now)).await
    }

    async fn steps_with_work(&self, now: Timestamp) -> Result<Vec<StepWork>, StoreError> {
        self.read(self.inner.steps_with_work(now)).await
    }

    async fn move_deliveries(
        &self,
        from: &StepName,
        to: Option<&StepName>,
    ) -> Result<u64, StoreError> {
        self.plain(self.inner.move_deliveries(from, to)).await
    }

    fn on_new_work(&self, wake: WakeUp) {
        self.inner.on_new_work(wake);
    }
}
