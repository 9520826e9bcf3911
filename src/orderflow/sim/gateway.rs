//! [`SimGateway`]: the mock gateway, slow by a seeded amount on the virtual
//! clock, counting the charges each store has in flight.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::in_flight::InFlight;
use crate::event::TenantId;
use crate::orderflow::gateway::{
    Charge, ChargeRequest, GatewayError, MockGateway, PaymentGateway, Refund,
};
use crate::sim::Trace;

/// A [`MockGateway`] whose calls take a seeded time of up to `max_latency`
/// (so that payments overlap), and that remembers the most charges and
/// refunds each store ever had in flight at once.
#[derive(Clone)]
pub struct SimGateway {
    inner: MockGateway,
    max_latency: Duration,
    rng: Arc<Mutex<StdRng>>,
    in_flight: InFlight<TenantId>,
    trace: Arc<Mutex<Option<Trace>>>,
}

impl std::fmt::Debug for SimGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimGateway")
            .field("max_latency", &self.max_latency)
            .finish_non_exhaustive()
    }
}

impl SimGateway {
    /// `inner`, each call taking up to `max_latency`, drawn from `seed`.
    pub fn new(inner: MockGateway, max_latency: Duration, seed: u64) -> Self {
        SimGateway {
            inner,
            max_latency,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            in_flight: InFlight::default(),
            trace: Arc::new(Mutex::new(None)),
        }
    }

    /// Notes every charge's start and end in `trace`.
    pub fn trace_to(&self, trace: Trace) {
        *self.trace.lock().unwrap_or_else(|p| p.into_inner()) = Some(trace);
    }

    fn note(&self, line: std::fmt::Arguments<'_>) {
        if let Some(trace) = &*self.trace.lock().unwrap_or_else(|p| p.into_inner()) {
            trace.note(line);
        }
    }

    /// The gateway behind, with its ledger.
    pub fn mock(&self) -> &MockGateway {
        &self.inner
    }

    /// The most calls `store` ever had in flight at once.
    pub fn most_in_flight(&self, store: &TenantId) -> u32 {
        self.in_flight.most(store)
    }

    async fn wait(&self) {
        let millis = self.max_latency.as_millis() as u64;
        let delay = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            rng.random_range(0..=millis)
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
}

#[async_trait]
impl PaymentGateway for SimGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        let _flying = self.in_flight.take_off(&request.store);
        self.note(format_args!(
            "charge {}/{} starts",
            request.store, request.order_id
        ));
        self.wait().await;
        let charged = self.inner.charge(request).await;
        self.note(format_args!(
            "charge {}/{} ends: {}",
            request.store,
            request.order_id,
            charged.is_ok()
        ));
        charged
    }

    async fn refund(&self, transaction_id: &str) -> Result<Refund, GatewayError> {
        self.wait().await;
        self.inner.refund(transaction_id).await
    }
}
