//! Engine-wide settings.

use std::time::Duration;

/// Engine-wide settings.
///
/// | setting | default | meaning |
/// |---|---|---|
/// | `batch_size` | 256 | deliveries run and committed together |
/// | `max_in_flight` | 4096 | deliveries claimed and not yet completed, all steps |
/// | `tenant_quantum` | 16 | deliveries taken from one tenant before the next |
/// | `poll_interval` | 200 ms | longest idle wait before claiming again (other processes may have published) |
/// | `max_conflict_reruns` | 1000 | re-runs of one execution after commit conflicts before its lease is left to expire |
/// | `recent_executions` | 256 | finished executions kept in memory for [`Engine::recent_executions`](crate::Engine::recent_executions) (0: none) |
/// | `tenant_metrics` | 0 | tenants counted on their own in [`Engine::tenant_metrics`](crate::Engine::tenant_metrics); later ones count together as "other" (0: no per-tenant counts) |
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Deliveries run and committed together.
    pub batch_size: usize,
    /// Deliveries in flight at once, across steps.
    pub max_in_flight: usize,
    /// Deliveries taken from one tenant per round while others wait.
    pub tenant_quantum: usize,
    /// Longest idle wait between claims.
    pub poll_interval: Duration,
    /// Re-runs after commit conflicts before giving up on this lease.
    pub max_conflict_reruns: u32,
    /// Finished executions kept in memory for `Engine::recent_executions`.
    pub recent_executions: usize,
    /// Tenants counted on their own by `Engine::tenant_metrics` (the first
    /// seen); the rest are counted together. 0 turns per-tenant counting
    /// off: it costs a little per execution, and a label per tenant.
    pub tenant_metrics: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            batch_size: 256,
            max_in_flight: 4096,
            tenant_quantum: 16,
            poll_interval: Duration::from_millis(200),
            max_conflict_reruns: 1000,
            recent_executions: 256,
            tenant_metrics: 0,
        }
    }
}
