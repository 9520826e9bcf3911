//! Emitting with a de-duplication key: a host's retry of the same request
//! publishes the event once.

use std::sync::Arc;

use super::error::EngineError;
use super::handle::Engine;
use crate::backend::{Action, Completion, Marker, Outcome};
use crate::event::{EmitOptions, Event, EventId, Payload, TenantId};

impl Engine {
    /// Emits `event` unless an emit of `tenant` with the same `key` was
    /// published before: `Some(id)` the first time, `None` for a duplicate.
    /// For a host that may send the same request twice (a webhook the
    /// sender retries, a client that resubmits a form): the key is the
    /// request's own id.
    ///
    /// The key is remembered in the backend, with the event's publication,
    /// in one commit, for at least
    /// [`DELIVERY_MARKER_RETENTION`](crate::backend::DELIVERY_MARKER_RETENTION)
    /// (a week).
    ///
    /// ```
    /// # use flowline::{testing::TestHarness, Flow, Step, Event, StepContext, TenantId};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Paid { order: String }
    /// # impl Event for Paid { const TOPIC: &'static str = "order.paid"; }
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), flowline::EngineError> {
    /// # let flow = Flow::builder().external::<Paid>().step(Step::event::<Paid>("ship")
    /// #     .handle(|_ctx: StepContext, _p: Paid| async { Ok(()) })).build().unwrap();
    /// # let h = TestHarness::start(flow).await?;
    /// # let engine = h.engine();
    /// let store = TenantId::new("store-7")?;
    /// let paid = Paid { order: "o-1".into() };
    /// let first = engine.emit_once(&store, &paid, "stripe-evt-123").await?;
    /// let again = engine.emit_once(&store, &paid, "stripe-evt-123").await?;
    /// assert!(first.is_some());
    /// assert_eq!(again, None, "the retry of the same webhook is not published");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`emit`](Self::emit); on error nothing was published and the key
    /// is not remembered.
    pub async fn emit_once<E: Event>(
        &self,
        tenant: &TenantId,
        event: &E,
        key: &str,
    ) -> Result<Option<EventId>, EngineError> {
        let payload = Payload::encode(event)?;
        let options = EmitOptions::new().versioned::<E>();
        let Some((envelope, subs)) = self.prepare_emit(tenant, E::TOPIC, payload, options)? else {
            return Ok(Some(EventId::new()));
        };
        let id = envelope.id;
        self.admit(1).await?;
        let emitted = self.shared.kept_for_hook(std::slice::from_ref(&envelope));
        let action = Action::Commit {
            reads: Vec::new(),
            writes: Vec::new(),
            adds: Vec::new(),
            emits: self.shared.fan_out_one(envelope, Some(subs)),
            cancels: Vec::new(),
        };
        let completion = Completion {
            tenant: tenant.clone(),
            input: None,
            // Namespaced by tenant, apart from the keys of broker deliveries.
            marker: Some(Marker::Delivery {
                key: Arc::from(format!("emit/{tenant}/{key}")),
            }),
            action,
        };
        let outcome = self.shared.backend.complete(vec![completion]).await?;
        match outcome.first() {
            Some(Outcome::Applied) => {
                self.shared.wake.notify_one();
                if let Some(emitted) = emitted {
                    self.shared.tell_hook(&emitted);
                }
                Ok(Some(id))
            }
            Some(Outcome::Duplicate) => Ok(None),
            other => Err(EngineError::Store(crate::backend::StoreError::Backend(
                format!("an emit with a key came back {other:?}").into(),
            ))),
        }
    }
}
