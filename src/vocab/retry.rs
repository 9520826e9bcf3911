//! Retry policies: how long to wait before the next attempt, and when to give up.

use std::time::Duration;

use rand::Rng;

/// How the delay between attempts grows.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Backoff {
    /// `initial * factor^(n-1)`, capped at `max`, then jittered: the delay is drawn
    /// uniformly from `[d * (1 - jitter), d]` ("equal jitter" for `jitter = 0.5`),
    /// so retries of many failed deliveries spread out instead of stampeding.
    Exponential {
        /// The delay after the first failure, before jitter.
        initial: Duration,
        /// Growth per attempt (at least 1.0).
        factor: f64,
        /// Cap on the delay before jitter.
        max: Duration,
        /// The share of the delay that is randomised, from 0.0 (none) to 1.0 (full jitter).
        jitter: f64,
    },
    /// The same delay after every failure.
    Fixed(Duration),
    /// Retry at once.
    Immediate,
}

/// When and how often a failed step execution is retried.
///
/// Defaults (`RetryPolicy::default()`):
///
/// | setting | default |
/// |---|---|
/// | backoff | exponential from 1 s, factor 2, capped at 5 min, jitter 0.5 |
/// | max attempts | 8 (the first run counts) |
/// | max elapsed | 24 h from the first attempt |
///
/// A permanent error dead-letters at once, whatever the policy. A retry-after
/// error waits at least as long as it asks.
///
/// ```
/// use std::time::Duration;
/// use flowline::RetryPolicy;
///
/// let policy = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(10))
///     .max_attempts(5)
///     .max_elapsed(Duration::from_secs(60));
/// let (low, high) = policy.delay_bounds(3);
/// assert!(low <= high && high <= Duration::from_millis(400));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    backoff: Backoff,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            backoff: Backoff::Exponential {
                initial: Duration::from_secs(1),
                factor: 2.0,
                max: Duration::from_secs(300),
                jitter: 0.5,
            },
            max_attempts: 8,
            max_elapsed: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff (factor 2, jitter 0.5) from `initial`, capped at `max`,
    /// with the default attempt and time limits.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        RetryPolicy {
            backoff: Backoff::Exponential {
                initial,
                factor: 2.0,
                max: max.max(initial),
                jitter: 0.5,
            },
            ..Self::default()
        }
    }

    /// A fixed delay between attempts, with the default attempt and time limits.
    pub fn fixed(delay: Duration) -> Self {
        RetryPolicy {
            backoff: Backoff::Fixed(delay),
            ..Self::default()
        }
    }

    /// Never retry: the first failure dead-letters.
    pub fn none() -> Self {
        RetryPolicy {
            backoff: Backoff::Immediate,
            max_attempts: 1,
            max_elapsed: None,
        }
    }

    /// Sets the backoff.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = sanitize(backoff);
        self
    }

    /// Sets the total number of attempts, the first included (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Gives up once this much time has passed since the first attempt.
    #[must_use]
    pub fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = Some(elapsed);
        self
    }

    /// Removes the elapsed-time limit.
    #[must_use]
    pub fn unlimited_elapsed(mut self) -> Self {
        self.max_elapsed = None;
        self
    }

    /// The configured backoff.
    pub fn get_backoff(&self) -> Backoff {
        self.backoff
    }

    /// The configured number of attempts.
    pub fn get_max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The configured elapsed-time limit.
    pub fn get_max_elapsed(&self) -> Option<Duration> {
        self.max_elapsed
    }

    /// The smallest and largest delay after failed attempt number `attempt` (1-based).
    pub fn delay_bounds(&self, attempt: u32) -> (Duration, Duration) {
        match self.backoff {
            Backoff::Immediate => (Duration::ZERO, Duration::ZERO),
            Backoff::Fixed(d) => (d, d),
            Backoff::Exponential {
                initial,
                factor,
                max,
                jitter,
            } => {
                let exp = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
                let raw = initial.as_secs_f64() * factor.powi(exp);
                let capped = if raw.is_finite() {
                    raw.min(max.as_secs_f64())
                } else {
                    max.as_secs_f64()
                };
                let high = Duration::from_secs_f64(capped);
                let low = Duration::from_secs_f64(capped * (1.0 - jitter));
                (low, high)
            }
        }
    }

    /// The delay before the next attempt after failed attempt `attempt` (1-based),
    /// or `None` when the policy is exhausted.
    ///
    /// `elapsed` is the time since the first attempt; `at_least` is a floor asked
    /// for by the error (retry-after).
    pub fn next_delay(
        &self,
        attempt: u32,
        elapsed: Duration,
        at_least: Option<Duration>,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let (low, high) = self.delay_bounds(attempt);
        let mut delay = if high > low {
            super::chance::with_rng(|rng| rng.random_range(low..=high))
        } else {
            high
        };
        if let Some(floor) = at_least {
            delay = delay.max(floor);
        }
        match self.max_elapsed {
            Some(limit) if elapsed + delay > limit => None,
            _ => Some(delay),
        }
    }
}

fn sanitize(backoff: Backoff) -> Backoff {
    match backoff {
        Backoff::Exponential {
            initial,
            factor,
            max,
            jitter,
        } => Backoff::Exponential {
            initial,
            factor: if factor.is_finite() {
                factor.max(1.0)
            } else {
                1.0
            },
            max: max.max(initial),
            jitter: if jitter.is_finite() {
                jitter.clamp(0.0, 1.0)
            } else {
                0.0
            },
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exhausts_after_max_attempts() {
        let policy = RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(3);
        assert!(policy.next_delay(1, Duration::ZERO, None).is_some());
        assert!(policy.next_delay(2, Duration::ZERO, None).is_some());
        assert_eq!(policy.next_delay(3, Duration::ZERO, None), None);
    }

    #[test]
    fn gives_up_past_max_elapsed() {
        let policy =
            RetryPolicy::fixed(Duration::from_secs(10)).max_elapsed(Duration::from_secs(15));
        assert!(policy.next_delay(1, Duration::from_secs(4), None).is_some());
        assert_eq!(policy.next_delay(1, Duration::from_secs(6), None), None);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let policy = RetryPolicy::fixed(Duration::from_secs(1));
        let delay = policy.next_delay(1, Duration::ZERO, Some(Duration::from_secs(30)));
        assert_eq!(delay, Some(Duration::from_secs(30)));
    }

    #[test]
    fn none_never_retries() {
        assert_eq!(
            RetryPolicy::none().next_delay(1, Duration::ZERO, None),
            None
        );
    }

    #[test]
    fn hostile_backoff_settings_are_tamed() {
        let policy = RetryPolicy::default().backoff(Backoff::Exponential {
            initial: Duration::from_secs(1),
            factor: f64::NAN,
            max: Duration::ZERO,
            jitter: 7.0,
        });
        let (low, high) = policy.delay_bounds(50);
        assert!(low <= high);
        assert!(high <= Duration::from_secs(1));
    }

    proptest! {
        #[test]
        fn exponential_delays_stay_in_bounds(attempt in 1u32..40, initial_ms in 1u64..10_000, max_s in 1u64..3_600) {
            let policy = RetryPolicy::exponential(Duration::from_millis(initial_ms), Duration::from_secs(max_s))
                .max_attempts(100)
                .unlimited_elapsed();
            let (low, high) = policy.delay_bounds(attempt);
            prop_assert!(low <= high);
            prop_assert!(high <= Duration::from_secs(max_s).max(Duration::from_millis(initial_ms)));
            let delay = policy.next_delay(attempt, Duration::ZERO, None).unwrap();
            prop_assert!(low <= delay && delay <= high);
        }

        #[test]
        fn exponential_bounds_never_shrink(attempt in 1u32..60) {
            let policy = RetryPolicy::default();
            prop_assert!(policy.delay_bounds(attempt).1 <= policy.delay_bounds(attempt + 1).1);
        }
    }
}
