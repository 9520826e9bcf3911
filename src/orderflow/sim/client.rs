//! How the simulated customers and operators call the order system: as a
//! careful client would, again after a `503` or a `429` (waiting as
//! `Retry-After` says), until the system gives an answer that means something.

use std::time::Duration;

use rand::Rng;
use serde_json::Value;

use crate::api::{ApiRequest, ApiResponse, Method};
use crate::event::TenantId;
use crate::sim::{Sim, SimError};

/// Tries before a request counts as never answered.
const TRIES: u32 = 80;

/// Sends the request `make` builds until it is answered with something other
/// than a `503` or a `429`; a `500` is a violation (the flow never answers
/// one to a good request).
pub(super) async fn call(
    sim: &mut Sim,
    what: &str,
    make: impl Fn() -> ApiRequest,
) -> Result<ApiResponse, SimError> {
    timed_call(sim, what, make).await.map(|(answer, _)| answer)
}

/// As [`call`], also saying when the first and the last try were sent (ms):
/// whatever the answer did, it happened between the two.
pub(super) async fn timed_call(
    sim: &mut Sim,
    what: &str,
    make: impl Fn() -> ApiRequest,
) -> Result<(ApiResponse, (i64, i64)), SimError> {
    let mut last = 0;
    let first_try = sim.now().as_millis();
    for _ in 0..TRIES {
        let sent = sim.now().as_millis();
        let answer = sim.engine().call(make()).await;
        match answer.status {
            429 | 503 => {
                last = answer.status;
                let asked = answer
                    .header_value("Retry-After")
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(Duration::from_secs);
                let jitter = Duration::from_millis(sim.rng().random_range(100..=2_000));
                sim.advance(asked.unwrap_or_default() + jitter).await?;
            }
            500..=599 => {
                return Err(SimError::violated(format!(
                    "{what} answered {}: {}",
                    answer.status, answer.body
                )))
            }
            _ => return Ok((answer, (first_try, sent))),
        }
    }
    Err(SimError::Stuck(format!(
        "{what}: still {last} after {TRIES} tries"
    )))
}

/// A request to the order system of `store`.
pub(super) fn request(method: Method, path: &str, store: &TenantId, body: Value) -> ApiRequest {
    ApiRequest::new(method, path, store.clone()).json(body)
}

/// Calls `attempt` until it succeeds, passing a little time after each
/// failure (an emit or a read the backend refused).
pub(super) async fn retried<T, E: std::fmt::Display>(
    sim: &mut Sim,
    what: &str,
    mut attempt: impl AsyncFnMut(&Sim) -> Result<T, E>,
) -> Result<T, SimError> {
    let mut last = String::new();
    for _ in 0..TRIES {
        match attempt(sim).await {
            Ok(value) => return Ok(value),
            Err(err) => {
                last = err.to_string();
                let pause = Duration::from_millis(sim.rng().random_range(100..=2_000));
                sim.advance(pause).await?;
            }
        }
    }
    Err(SimError::Stuck(format!(
        "{what}: still failing after {TRIES} tries: {last}"
    )))
}
