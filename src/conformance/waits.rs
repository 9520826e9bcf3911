//! Durable waits: woken once, by the correlated events or by the timeout, on
//! every backend and across a restart.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{advance, drain, epoch_clock, settle, start, tenant};
use crate::backend::Backend;
use crate::engine::{Flow, Late, Step, StepContext, StepError, WaitFor, Wake};
use crate::event::{EmitOptions, Event};

/// Starts a wait for `key`, for `count` pings, at most `timeout_secs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StartWait {
    key: String,
    count: u32,
    timeout_secs: u64,
}

impl Event for StartWait {
    const TOPIC: &'static str = "conformance.wait.start";
}

/// An event correlated by `key`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Ping {
    key: String,
    n: u32,
}

impl Event for Ping {
    const TOPIC: &'static str = "conformance.wait.ping";
}

/// (wake, key, the pings' numbers, the context's key)
type Woken = (String, String, Vec<u32>, Option<String>);

/// The state key of the wakes, in commit order.
const WOKEN: &str = "woken";

fn waits_flow() -> Flow {
    let starter =
        Step::event::<StartWait>("starter").handle(|ctx: StepContext, s: StartWait| async move {
            let wait = WaitFor::new("waiter", &s.key, Duration::from_secs(s.timeout_secs))
                .count(s.count)
                .context(&s.key);
            ctx.start_wait(wait).await?;
            Ok(())
        });
    // The wakes are logged in the state, in the wake's commit: a handler
    // may run again after a commit conflict, but commits once.
    let waiter = Step::wait::<Ping>("waiter")
        .correlate(|p: &Ping| p.key.clone())
        .late(Late::Deliver)
        .handle(move |ctx: StepContext, wake: Wake<Ping>| async move {
            let numbers = |pings: &[Ping]| pings.iter().map(|p| p.n).collect::<Vec<u32>>();
            let context =
                |c: Option<crate::Payload>| c.map(|p| p.decode::<String>().expect("the context"));
            let woken: Woken = match wake {
                Wake::Arrived {
                    key,
                    events,
                    context: c,
                } => ("arrived".into(), key, numbers(&events), context(c)),
                Wake::TimedOut {
                    key,
                    events,
                    context: c,
                } => ("timed out".into(), key, numbers(&events), context(c)),
                Wake::Late { key, event } => ("late".into(), key, vec![event.n], None),
            };
            let mut all: Vec<Woken> = ctx.get(WOKEN).await?.unwrap_or_default();
            all.push(woken);
            ctx.put(WOKEN, &all)?;
            Ok::<_, StepError>(())
        });
    Flow::builder()
        .external::<StartWait>()
        .external::<Ping>()
        .step(starter)
        .step(waiter)
        .build()
        .expect("valid flow")
}

fn wait_for(key: &str, count: u32, timeout_secs: u64) -> StartWait {
    StartWait {
        key: key.into(),
        count,
        timeout_secs,
    }
}

fn ping(key: &str, n: u32) -> Ping {
    Ping { key: key.into(), n }
}

/// **Durable waits.** A wait started by a handler wakes its wait step exactly
/// once: with the events when as many as it wants came (fan-in), or at its
/// timeout with those that did; its timer is cancelled when the events come,
/// so nothing is left queued. An event for no pending wait follows the
/// step's rule (here: handed over as late). An event and the timeout due at
/// the same instant still wake it once. A pending wait survives a restart.
pub async fn waits_wake_once_by_events_or_timeout<B: Backend + Clone>(backend: B) {
    let acme = tenant("acme");
    let clock = epoch_clock();
    let h = start(waits_flow(), backend.clone(), clock).await;
    let wait = |key, count, secs| {
        let h = &h;
        let acme = acme.clone();
        async move {
            h.emit(&acme, &wait_for(key, count, secs))
                .await
                .expect("emit");
            settle(h).await;
        }
    };
    wait("one", 1, 60).await;
    wait("two", 2, 60).await;
    wait("slow", 2, 60).await;
    wait("tie", 1, 10).await;
    h.engine()
        .emit_with(
            &acme,
            &ping("tie", 9),
            EmitOptions::new().delay(Duration::from_secs(10)),
        )
        .await
        .expect("emit");
    for p in [
        ping("one", 1),
        ping("two", 1),
        ping("slow", 1),
        ping("two", 2),
        ping("nobody", 5),
    ] {
        h.emit(&acme, &p).await.expect("emit");
    }
    advance(&h, Duration::from_secs(11)).await;
    assert_eq!(
        h.dead_letters().await.len(),
        0,
        "no wake failed: {:?}",
        h.dead_letters().await
    );
    let mut woken: Vec<Woken> = h.state(&acme, WOKEN).await.unwrap_or_default();
    let tie: Vec<Woken> = woken.iter().filter(|w| w.1 == "tie").cloned().collect();
    woken.retain(|w| w.1 != "tie");
    woken.sort();
    assert_eq!(
        woken,
        vec![
            ("arrived".into(), "one".into(), vec![1], Some("one".into())),
            (
                "arrived".into(),
                "two".into(),
                vec![1, 2],
                Some("two".into())
            ),
            ("late".into(), "nobody".into(), vec![5], None),
        ]
    );
    let tie_wakes: Vec<&str> = tie
        .iter()
        .map(|w| w.0.as_str())
        .filter(|w| *w != "late")
        .collect();
    assert_eq!(
        tie_wakes.len(),
        1,
        "an event and a timeout at one instant wake once: {tie:?}"
    );

    // "slow" has one ping of two; its timer survives a restart.
    h.shutdown().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = woken.len() + tie.len();
    let h = start(waits_flow(), backend, clock).await;
    advance(&h, Duration::from_secs(60)).await;
    h.emit(&acme, &ping("slow", 2)).await.expect("emit");
    drain(&h).await;
    let all: Vec<Woken> = h.state(&acme, WOKEN).await.unwrap_or_default();
    let after = all[before..].to_vec();
    assert_eq!(
        after,
        vec![
            (
                "timed out".into(),
                "slow".into(),
                vec![1],
                Some("slow".into())
            ),
            ("late".into(), "slow".into(), vec![2], None),
        ]
    );
    let queue = h.engine().metrics().await.expect("metrics").queue;
    assert_eq!(queue.pending(), 0, "no timer is left queued: {queue:?}");
    h.shutdown().await;
}
