//! Runs a handler until its deadline, checking the deadline *before* each
//! poll: a handler whose deadline passed while it waited (the process was
//! suspended, the clock jumped) is cut where it stands, instead of taking
//! one more step past its lease beside the copy another claim started.

use std::future::Future;
use std::task::Poll;

use tokio::time::Instant;

/// The deadline passed before the future finished.
#[derive(Debug)]
pub(crate) struct Elapsed;

/// `future`'s output, or [`Elapsed`] once `deadline` has passed (the future is
/// not polled again after that, not even once).
pub(crate) async fn within<F: Future>(deadline: Instant, future: F) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    let mut expiry = std::pin::pin!(tokio::time::sleep_until(deadline));
    std::future::poll_fn(|cx| {
        if expiry.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(Elapsed));
        }
        future.as_mut().poll(cx).map(Ok)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_future_ready_after_its_deadline_is_not_polled_again() {
        let woke_late = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(1);
        let handler = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            woke_late.store(true, Ordering::SeqCst);
        };
        let run = within(deadline, handler);
        // Both timers are due when the clock jumps past them.
        let jumped = async {
            tokio::time::advance(Duration::from_secs(10)).await;
        };
        let (result, ()) = tokio::join!(run, jumped);
        assert!(result.is_err());
        assert!(
            !woke_late.load(Ordering::SeqCst),
            "the handler ran past its deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_done_in_time_gives_its_output() {
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(within(deadline, async { 7 }).await.ok(), Some(7));
    }
}
