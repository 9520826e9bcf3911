//! The conformance suite: the contract every backend passes.
//!
//! Each check is a public async function that takes a fresh backend (anything that
//! implements [`Backend`] and [`Clone`]; clones must share their data, the way two
//! processes share one database), runs a scenario on it, and panics with a message
//! saying what broke. The [`conformance_tests!`](crate::conformance_tests) macro
//! expands to one `#[tokio::test]` per check, so a backend crate runs the whole
//! suite with one line:
//!
//! ```ignore
//! // tests/conformance_sqlite.rs
//! flowline::conformance_tests!(my_backend::SqliteBackend::open_in_memory().await.unwrap());
//! ```
//!
//! The expression is evaluated once per test, inside the async test function, so it
//! may `.await`. The test crate needs `tokio` with the `macros`, `rt-multi-thread`
//! and `test-util` features.
//!
//! ## Two kinds of check
//!
//! * **Real-time checks** never wait on the clock: they run on an ordinary tokio
//!   runtime and give explicit timestamps where time matters. They suit every
//!   backend, including ones with connection pools and I/O timeouts.
//! * **Virtual-time checks** measure delays (backoff, timeouts, cron instants,
//!   leases) on tokio's paused clock, where a simulated day takes milliseconds and
//!   every delay is exact. Under a paused clock tokio jumps time forward whenever
//!   the runtime is idle, which can fire a backend's own I/O or pool timeouts
//!   early; a backend for which that is a problem runs only the real-time checks.
//!
//! ```ignore
//! flowline::conformance_tests!(make_backend());                // both kinds
//! flowline::conformance_tests!(real_time: make_backend());     // only real-time checks
//! flowline::conformance_tests!(virtual_time: make_backend());  // only virtual-time checks
//! ```
//!
//! ## What the checks expect of a backend
//!
//! * Each check gets a fresh, empty backend from the expression.
//! * Time comes from the engine, never from the backend's own clock: a claim's
//!   [`ClaimRequest::now`](crate::backend::ClaimRequest), the `at` of a retry or
//!   dead letter, an envelope's `emitted_at`. The checks' clocks start at
//!   [`TEST_EPOCH`] (2026-01-01T00:00:00Z), whatever the system time is.
//! * A failing check panics with what it expected and what it saw; a backend that
//!   leaves work stuck fails after a minute of (virtual) time instead of hanging.
//!
//! ## What is checked
//!
//! | contract item (DESIGN.md) | real-time checks | virtual-time checks |
//! |---|---|---|
//! | 1–2 no lost events, effects exactly once | [`completion_is_atomic`], [`failed_handler_leaves_no_trace`], [`fan_out_reaches_every_subscriber_once`], [`broker_deliveries_apply_once`] (a split's store) | [`shutdown_finishes_in_flight_work`], [`shutdown_releases_unfinished_work`] |
//! | 3 optimistic isolation | [`hot_key_increments_are_isolated`] | |
//! | 3 scans | [`scans_page_through_a_prefix`] | |
//! | 3 commutative counters (adds) | [`adds_apply_with_the_commit`], [`adds_keep_their_order_within_a_batch`], [`adds_never_conflict`] | |
//! | 3 bounded adds (escrow) | [`bounded_adds_hold_their_floor`], [`takes_never_oversell_across_engines`] | |
//! | 4 durable retries, dead letters | [`permanent_error_dead_letters_at_once`], [`dead_letters_can_be_listed_replayed_and_purged`], [`dead_letters_keep_their_kind_and_hook_emits`], [`dead_letters_are_queried_and_corrected`] | [`retries_follow_the_policy`], [`retry_after_sets_a_floor`], [`retries_stop_at_max_elapsed`], [`pending_retry_survives_restart`], [`exhausted_retries_dead_letter_once`], [`failure_hooks_emit_with_the_dead_letter`] |
//! | 5 leases and timeouts | [`expired_lease_redelivers_and_fences_the_old_worker`], [`deliveries_wait_until_due`], [`keyed_deliveries_are_cancelled_while_they_wait`] | [`slow_handler_times_out_and_is_retried`] |
//! | 6 cron exactly once per fire | | [`cron_fires_each_instant_once_over_a_day`], [`cron_fires_once_across_engines`], [`missed_fires_skip`], [`missed_fires_fire_once`], [`missed_fires_fire_all_up_to_a_bound`] |
//! | 7 tenancy and fairness | [`tenant_state_is_isolated`], [`claims_are_fair_across_tenants`] | [`dispatch_is_fair_across_tenants`] |
//! | 8 ordering when asked | [`fifo_groups_hold_back_successors`] | [`fifo_groups_run_one_at_a_time_in_order`] |
//! | 9 graceful shutdown | | [`shutdown_finishes_in_flight_work`], [`shutdown_releases_unfinished_work`] |
//! | 10 bad input | [`undecodable_payload_dead_letters_without_blocking`], [`invalid_input_is_a_typed_error`], [`undeclared_emit_is_an_error`] | |
//! | 11 flow control | [`deferred_deliveries_keep_their_attempts`], [`claims_take_higher_priorities_first`] | [`rate_limits_hold_across_engines`], [`concurrency_keys_hold_across_engines`], [`limits_survive_a_restart`], [`unkeyable_deliveries_dead_letter`], [`debounced_events_run_once_together`], [`batches_close_when_full_or_late`], [`priorities_order_work_across_engines`] |
//! | durable waits | [`keyed_deliveries_are_cancelled_while_they_wait`] | [`waits_wake_once_by_events_or_timeout`] |
//! | deploys | | [`orphaned_deliveries_are_reported_and_moved`] |
//! | observability | | [`metrics_count_a_known_scenario`] |

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::engine::EngineConfig;
use crate::engine::Flow;
use crate::engine::StepError;
use crate::event::{Event, TenantId};
use crate::testing::{test_config, TestHarness, TEST_EPOCH};
use crate::time::Clock;

mod cancels;
mod counters;
mod cron;
mod dead_letters;
mod deferral;
mod delivery;
mod deploys;
mod effects;
mod escrow;
mod flow_control;
mod input;
mod lifecycle;
mod priorities;
mod relayed;
mod retries;
mod scan;
mod trace;
mod waits;
mod windows;

pub use cancels::keyed_deliveries_are_cancelled_while_they_wait;
pub use counters::{
    adds_apply_with_the_commit, adds_keep_their_order_within_a_batch, adds_never_conflict,
};
pub use cron::{
    cron_fires_each_instant_once_over_a_day, cron_fires_once_across_engines,
    missed_fires_fire_all_up_to_a_bound, missed_fires_fire_once, missed_fires_skip,
};
pub use dead_letters::{
    dead_letters_are_queried_and_corrected, dead_letters_keep_their_kind_and_hook_emits,
    failure_hooks_emit_with_the_dead_letter,
};
pub use deferral::deferred_deliveries_keep_their_attempts;
pub use delivery::{
    claims_are_fair_across_tenants, deliveries_wait_until_due, dispatch_is_fair_across_tenants,
    expired_lease_redelivers_and_fences_the_old_worker, fifo_groups_hold_back_successors,
    fifo_groups_run_one_at_a_time_in_order,
};
pub use deploys::orphaned_deliveries_are_reported_and_moved;
pub use effects::{
    completion_is_atomic, failed_handler_leaves_no_trace, fan_out_reaches_every_subscriber_once,
    hot_key_increments_are_isolated, tenant_state_is_isolated,
};
pub use escrow::{bounded_adds_hold_their_floor, takes_never_oversell_across_engines};
pub use flow_control::{
    concurrency_keys_hold_across_engines, limits_survive_a_restart,
    rate_limits_hold_across_engines, unkeyable_deliveries_dead_letter,
};
pub use input::{
    invalid_input_is_a_typed_error, undeclared_emit_is_an_error,
    undecodable_payload_dead_letters_without_blocking,
};
pub use lifecycle::{
    metrics_count_a_known_scenario, shutdown_finishes_in_flight_work,
    shutdown_releases_unfinished_work,
};
pub use priorities::{claims_take_higher_priorities_first, priorities_order_work_across_engines};
pub use relayed::broker_deliveries_apply_once;
pub use retries::{
    dead_letters_can_be_listed_replayed_and_purged, exhausted_retries_dead_letter_once,
    pending_retry_survives_restart, permanent_error_dead_letters_at_once,
    retries_follow_the_policy, retries_stop_at_max_elapsed, retry_after_sets_a_floor,
    slow_handler_times_out_and_is_retried,
};
pub use scan::scans_page_through_a_prefix;
pub use trace::trace_context_travels_with_each_event;
pub use waits::waits_wake_once_by_events_or_timeout;
pub use windows::{batches_close_when_full_or_late, debounced_events_run_once_together};

/// Expands to one `#[tokio::test]` per conformance check, each given a fresh
/// backend from the expression.
///
/// ```ignore
/// flowline::conformance_tests!(flowline::MemoryBackend::new());
/// flowline::conformance_tests!(real_time: connect().await);
/// flowline::conformance_tests!(virtual_time: connect().await);
/// ```
///
/// Without a label it expands both kinds. To run the suite against two backends in
/// one file, call it inside two modules.
#[macro_export]
macro_rules! conformance_tests {
    (real_time: $make:expr $(,)?) => {
        $crate::__conformance_tests!(
            { $make },
            [::tokio::test],
            completion_is_atomic,
            failed_handler_leaves_no_trace,
            fan_out_reaches_every_subscriber_once,
            tenant_state_is_isolated,
            expired_lease_redelivers_and_fences_the_old_worker,
            deliveries_wait_until_due,
            fifo_groups_hold_back_successors,
            keyed_deliveries_are_cancelled_while_they_wait,
            scans_page_through_a_prefix,
            claims_are_fair_across_tenants,
            permanent_error_dead_letters_at_once,
            dead_letters_can_be_listed_replayed_and_purged,
            dead_letters_keep_their_kind_and_hook_emits,
            dead_letters_are_queried_and_corrected,
            undecodable_payload_dead_letters_without_blocking,
            invalid_input_is_a_typed_error,
            undeclared_emit_is_an_error,
            adds_apply_with_the_commit,
            adds_keep_their_order_within_a_batch,
            broker_deliveries_apply_once,
            deferred_deliveries_keep_their_attempts,
            claims_take_higher_priorities_first,
            bounded_adds_hold_their_floor,
            trace_context_travels_with_each_event,
        );
        $crate::__conformance_tests!(
            { $make },
            [::tokio::test(flavor = "multi_thread", worker_threads = 2)],
            hot_key_increments_are_isolated,
            adds_never_conflict,
            takes_never_oversell_across_engines,
        );
    };
    (virtual_time: $make:expr $(,)?) => {
        $crate::__conformance_tests!(
            { $make },
            [::tokio::test(start_paused = true)],
            retries_follow_the_policy,
            retry_after_sets_a_floor,
            retries_stop_at_max_elapsed,
            pending_retry_survives_restart,
            exhausted_retries_dead_letter_once,
            failure_hooks_emit_with_the_dead_letter,
            waits_wake_once_by_events_or_timeout,
            orphaned_deliveries_are_reported_and_moved,
            slow_handler_times_out_and_is_retried,
            cron_fires_each_instant_once_over_a_day,
            cron_fires_once_across_engines,
            missed_fires_skip,
            missed_fires_fire_once,
            missed_fires_fire_all_up_to_a_bound,
            fifo_groups_run_one_at_a_time_in_order,
            dispatch_is_fair_across_tenants,
            metrics_count_a_known_scenario,
            shutdown_finishes_in_flight_work,
            shutdown_releases_unfinished_work,
            rate_limits_hold_across_engines,
            concurrency_keys_hold_across_engines,
            limits_survive_a_restart,
            unkeyable_deliveries_dead_letter,
            debounced_events_run_once_together,
            batches_close_when_full_or_late,
            priorities_order_work_across_engines,
        );
    };
    ($make:expr $(,)?) => {
        $crate::conformance_tests!(real_time: $make);
        $crate::conformance_tests!(virtual_time: $make);
    };
}

/// Implementation detail of [`conformance_tests!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ({ $make:expr }, [$attr:meta], $($check:ident),+ $(,)?) => {
        $(
            #[$attr]
            async fn $check() {
                $crate::conformance::$check($make).await;
            }
        )+
    };
}

// === Shared fixtures ===

/// A unit of work the checks emit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) n: u64,
}

impl Event for Job {
    const TOPIC: &'static str = "conformance.job";
}

/// What a step emits after handling a [`Job`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Done {
    pub(crate) n: u64,
}

impl Event for Done {
    const TOPIC: &'static str = "conformance.done";
}

/// A failure a check makes a handler return on purpose.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Injected(pub(crate) String);

/// A retryable failure with this message.
pub(crate) fn injected(message: impl Into<String>) -> StepError {
    StepError::retryable(Injected(message.into()))
}

pub(crate) fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("conformance tenant ids are valid")
}

/// A clock that reads [`TEST_EPOCH`] now; share one value between engines that
/// share a backend.
pub(crate) fn epoch_clock() -> Clock {
    Clock::starting_at(TEST_EPOCH)
}

/// Starts `flow` on `backend` with the test settings.
pub(crate) async fn start<B: Backend>(flow: Flow, backend: B, clock: Clock) -> TestHarness {
    start_with(flow, backend, clock, test_config()).await
}

/// Starts `flow` on `backend` with these settings.
pub(crate) async fn start_with<B: Backend>(
    flow: Flow,
    backend: B,
    clock: Clock,
    config: EngineConfig,
) -> TestHarness {
    TestHarness::start_configured(flow, Arc::new(backend), clock, config)
        .await
        .unwrap_or_else(|err| panic!("the engine did not start: {err}"))
}

/// The longest a check waits for an engine to go idle or a queue to drain before
/// it fails: a guard against hanging on a broken backend, never reached by a
/// conforming one. It is tokio time, so virtual under a paused clock.
pub(crate) const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// Waits until nothing is ready or in flight (as [`TestHarness::settle`]), failing
/// the check if that takes longer than [`SETTLE_LIMIT`].
pub(crate) async fn settle(h: &TestHarness) {
    if tokio::time::timeout(SETTLE_LIMIT, h.settle())
        .await
        .is_err()
    {
        let depth = h.engine().metrics().await.map(|m| m.queue);
        panic!("the engine did not go idle within {SETTLE_LIMIT:?}; queue: {depth:?}");
    }
}

/// Lets `duration` of (virtual) time pass, then settles.
pub(crate) async fn advance(h: &TestHarness, duration: Duration) {
    tokio::time::sleep(duration).await;
    settle(h).await;
}

/// Settles until nothing is pending at all, not even a retry due now; fails the
/// check if the queue does not drain within [`SETTLE_LIMIT`].
pub(crate) async fn drain(h: &TestHarness) {
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    loop {
        settle(h).await;
        let depth = h.engine().metrics().await.expect("metrics").queue;
        if depth.pending() == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue did not drain within {SETTLE_LIMIT:?}: {depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A shared, append-only record of what handlers saw.
#[derive(Debug)]
pub(crate) struct Log<T>(Arc<Mutex<Vec<T>>>);

impl<T> Clone for Log<T> {
    fn clone(&self) -> Self {
        Log(self.0.clone())
    }
}

impl<T: Clone> Log<T> {
    pub(crate) fn new() -> Self {
        Log(Arc::new(Mutex::new(Vec::new())))
    }

    pub(crate) fn push(&self, value: T) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(value);
    }

    pub(crate) fn entries(&self) -> Vec<T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
