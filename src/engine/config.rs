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
        }
    }
}
