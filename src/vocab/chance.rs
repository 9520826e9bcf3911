//! Where the crate's own randomness comes from: retry jitter, backoff jitter,
//! window ticks and new ids.
//!
//! By default, the thread's generator and time-ordered UUIDv7s, as everywhere.
//! A deterministic simulation seeds the thread it runs on instead
//! ([`seed_thread`]): every draw and every new id then follows from the seed, so
//! one seed replays the same run bit for bit. The seed is per thread because a
//! simulation runs the whole engine on one (a current-thread runtime); other
//! threads, and other simulations on other threads, are untouched.
#![cfg_attr(not(feature = "test-util"), allow(dead_code))]

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// The seeded source of one thread: its generator, and the clock of its ids.
struct Seeded {
    rng: StdRng,
    /// The millisecond stamped in the next id: ids stay ordered as they are
    /// made, as UUIDv7s are, without reading the system clock.
    id_millis: u64,
}

thread_local! {
    static SEEDED: RefCell<Option<Seeded>> = const { RefCell::new(None) };
}

/// The millisecond the ids of a seeded thread start at (2026-01-01T00:00:00Z).
const SEEDED_ID_EPOCH: u64 = 1_767_225_600_000;

/// Makes this thread's draws and ids follow from `seed` until the returned
/// guard is dropped (which restores what the thread had before).
pub(crate) fn seed_thread(seed: u64) -> SeededThread {
    let seeded = Seeded {
        rng: StdRng::seed_from_u64(seed),
        id_millis: SEEDED_ID_EPOCH,
    };
    SeededThread {
        previous: SEEDED.with(|s| s.replace(Some(seeded))),
    }
}

/// Keeps a thread seeded; see [`seed_thread`].
pub(crate) struct SeededThread {
    previous: Option<Seeded>,
}

impl Drop for SeededThread {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SEEDED.with(|s| s.replace(previous));
    }
}

/// Runs `f` with this thread's source of randomness. `f` must not draw again
/// through this module (the seeded source is borrowed while it runs).
pub(crate) fn with_rng<T>(f: impl FnOnce(&mut dyn RngCore) -> T) -> T {
    SEEDED.with(|s| match s.borrow_mut().as_mut() {
        Some(seeded) => f(&mut seeded.rng),
        None => f(&mut rand::rng()),
    })
}

/// A random `u64`.
pub(crate) fn next_u64() -> u64 {
    with_rng(|rng| rng.next_u64())
}

/// A random fraction in `[0, 1)`.
pub(crate) fn fraction() -> f64 {
    with_rng(|rng| rng.random::<f64>())
}

/// A new time-ordered id: a UUIDv7 of the system clock, or, on a seeded
/// thread, of the seeded source (one millisecond apart, in order of making).
pub(crate) fn uuid_v7() -> uuid::Uuid {
    SEEDED.with(|s| match s.borrow_mut().as_mut() {
        Some(seeded) => {
            let mut random = [0u8; 10];
            seeded.rng.fill_bytes(&mut random);
            seeded.id_millis += 1;
            uuid::Builder::from_unix_timestamp_millis(seeded.id_millis, &random).into_uuid()
        }
        None => uuid::Uuid::now_v7(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_thread_draws_the_same_values_and_ids_again() {
        let draw = || {
            let _seeded = seed_thread(7);
            (next_u64(), fraction(), uuid_v7(), uuid_v7())
        };
        let (a, b) = (draw(), draw());
        assert_eq!(a, b);
        assert!(a.2 < a.3, "ids are made in order");
        assert_eq!(a.2.get_version_num(), 7);
    }

    #[test]
    fn the_guard_gives_the_thread_back_its_own_randomness() {
        {
            let _seeded = seed_thread(7);
        }
        let ids: Vec<_> = (0..2).map(|_| uuid_v7()).collect();
        let _seeded = seed_thread(7);
        assert_ne!(ids[0], uuid_v7(), "unseeded ids come from the system");
    }
}
