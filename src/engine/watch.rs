//! Watching what an engine commits, as it commits: the feed live views (a
//! page following an order, a store's alerts) wake on.
//!
//! Every watcher reads one shared ring of the last [`WATCH_CAPACITY`]
//! events, so a slow watcher costs the engine no memory: when it falls
//! behind, the oldest events are gone for it and it is told how many it
//! missed ([`Watched::Missed`]), and re-reads what it shows from the store.
//! Nothing is kept when nobody watches. A watcher hears this process's
//! commits only; a view shared by many processes re-reads on a timer too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::event::Envelope;

/// How many committed events the watch ring holds for a watcher that lags.
pub const WATCH_CAPACITY: usize = 1024;

/// What a [`Watch`] hears next.
#[derive(Clone, Debug)]
pub enum Watched {
    /// An event that committed.
    Event(Arc<Envelope>),
    /// This many events went by while the watcher was behind: what it shows
    /// must be read again from the store.
    Missed(u64),
}

/// The events an engine commits, from the moment of [`Engine::watch`](crate::Engine::watch).
///
/// ```
/// use flowline::{Engine, Event, Flow, MemoryBackend, Step, StepContext, StepError, TenantId, Watched};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Ping { n: u32 }
/// # impl Event for Ping { const TOPIC: &'static str = "ping"; }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let flow = Flow::builder()
///     .step(Step::event::<Ping>("pong").handle(|_ctx: StepContext, _ping: Ping| async { Ok::<_, StepError>(()) }))
///     .build()?;
/// let engine = Engine::builder(flow).backend(MemoryBackend::new()).start().await?;
/// let mut watch = engine.watch();
/// engine.emit(&TenantId::new("acme")?, &Ping { n: 1 }).await?;
/// match watch.recv().await {
///     Some(Watched::Event(event)) => assert_eq!(event.topic.as_str(), "ping"),
///     other => panic!("{other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Watch {
    rx: broadcast::Receiver<Arc<Envelope>>,
    /// The engine's count of watchers, given back on drop.
    count: Arc<AtomicUsize>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Watch {
    /// The next committed event, or how many went by unseen; `None` once the
    /// engine is gone.
    pub async fn recv(&mut self) -> Option<Watched> {
        match self.rx.recv().await {
            Ok(event) => Some(Watched::Event(event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Watched::Missed(missed)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// The sending side, in the engine's shared state.
pub(crate) struct Watchers {
    tx: broadcast::Sender<Arc<Envelope>>,
    /// Watches alive: read on every commit, so an atomic rather than the
    /// channel's own count, which takes a lock.
    count: Arc<AtomicUsize>,
}

impl Default for Watchers {
    fn default() -> Self {
        Watchers {
            tx: broadcast::channel(WATCH_CAPACITY).0,
            count: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Watchers {
    /// True when someone watches, so committed events are worth keeping.
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn watch(&self) -> Watch {
        self.count.fetch_add(1, Ordering::Relaxed);
        Watch {
            rx: self.tx.subscribe(),
            count: self.count.clone(),
        }
    }

    pub(crate) fn tell(&self, committed: &[Arc<Envelope>]) {
        if !self.any() {
            return;
        }
        for envelope in committed {
            // No receiver left since the check: nothing to tell.
            let _ = self.tx.send(envelope.clone());
        }
    }
}
