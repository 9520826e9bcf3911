//! What a handler can do through its `StepContext`: scans with its own writes,
//! deletes, idempotency keys, deadlines, delayed emits and multi-topic steps.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowline::prelude::*;
use flowline::testing::TestHarness;
use flowline::{DecodeError, EmitOptions, Envelope, Inbound, Timestamp};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Put {
    key: String,
    value: u32,
}
impl Event for Put {
    const TOPIC: &'static str = "kv.put";
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Remove {
    key: String,
}
impl Event for Remove {
    const TOPIC: &'static str = "kv.remove";
}

/// One step subscribes to both topics through this enum.
enum KvCommand {
    Put(Put),
    Remove(Remove),
}

impl Inbound for KvCommand {
    fn topics() -> Vec<&'static str> {
        vec![Put::TOPIC, Remove::TOPIC]
    }
    fn decode(envelope: &Envelope) -> Result<Self, DecodeError> {
        match envelope.topic.as_str() {
            Put::TOPIC => envelope.decode().map(KvCommand::Put),
            _ => envelope.decode().map(KvCommand::Remove),
        }
    }
}

/// What each handler run recorded, shared with the test.
type Log<T> = Arc<Mutex<Vec<T>>>;

fn tenant() -> TenantId {
    TenantId::new("t").unwrap()
}

#[tokio::test(start_paused = true)]
async fn one_step_handles_several_topics_and_scans_see_its_own_writes() {
    let listings: Log<Vec<(String, u32)>> = Arc::default();
    let seen = listings.clone();
    let flow = Flow::builder()
        .external::<Put>()
        .external::<Remove>()
        .step(
            Step::event::<KvCommand>("kv").handle(move |ctx: StepContext, cmd: KvCommand| {
                let seen = seen.clone();
                async move {
                    match cmd {
                        KvCommand::Put(p) => ctx.put(&format!("kv/{}", p.key), &p.value)?,
                        KvCommand::Remove(r) => ctx.delete(&format!("kv/{}", r.key))?,
                    }
                    // Other keys under another prefix must not show up.
                    ctx.put("other/x", &0u32)?;
                    let listing: Vec<(String, u32)> = ctx.scan("kv/", 10).await?;
                    seen.lock().unwrap().push(listing);
                    Ok::<_, StepError>(())
                }
            }),
        )
        .build()
        .unwrap();
    let h = TestHarness::start(flow).await.unwrap();
    for (key, value) in [("b", 2), ("a", 1), ("c", 3)] {
        h.emit(
            &tenant(),
            &Put {
                key: key.into(),
                value,
            },
        )
        .await
        .unwrap();
        h.settle().await;
    }
    h.emit(&tenant(), &Remove { key: "b".into() })
        .await
        .unwrap();
    h.settle().await;
    let listings = listings.lock().unwrap().clone();
    let keys = |i: usize| {
        listings[i]
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(0), ["kv/b=2"]);
    assert_eq!(
        keys(2),
        ["kv/a=1", "kv/b=2", "kv/c=3"],
        "in key order, with this execution's write"
    );
    assert_eq!(
        keys(3),
        ["kv/a=1", "kv/c=3"],
        "the delete is visible to the scan that follows it"
    );
    assert_eq!(h.state::<u32>(&tenant(), "kv/b").await, None);
    assert_eq!(h.state::<u32>(&tenant(), "kv/c").await, Some(3));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn idempotency_keys_are_stable_across_attempts_and_distinct_otherwise() {
    let keys: Log<(u32, u32, String, String)> = Arc::default();
    let seen = keys.clone();
    let flow = Flow::builder()
        .external::<Put>()
        .step(
            Step::event::<Put>("charge")
                .retry(RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(3))
                .handle(move |ctx: StepContext, p: Put| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push((
                            p.value,
                            ctx.attempt(),
                            ctx.idempotency_key("charge"),
                            ctx.idempotency_key("refund"),
                        ));
                        if ctx.attempt() < 3 {
                            return Err(StepError::retryable(std::io::Error::other(
                                "gateway timeout",
                            )));
                        }
                        Ok(())
                    }
                }),
        )
        .build()
        .unwrap();
    let h = TestHarness::start(flow).await.unwrap();
    h.emit(
        &tenant(),
        &Put {
            key: "o".into(),
            value: 1,
        },
    )
    .await
    .unwrap();
    h.emit(
        &tenant(),
        &Put {
            key: "o".into(),
            value: 2,
        },
    )
    .await
    .unwrap();
    h.advance(Duration::from_secs(5)).await;
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 6, "two events, three attempts each");
    for event in [1, 2] {
        let mine: Vec<_> = keys.iter().filter(|k| k.0 == event).collect();
        assert_eq!(mine.iter().map(|k| k.1).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(
            mine.iter().all(|k| k.2 == mine[0].2),
            "same key on every attempt"
        );
        assert_ne!(mine[0].2, mine[0].3, "another purpose, another key");
    }
    let first = keys.iter().find(|k| k.0 == 1).unwrap();
    let second = keys.iter().find(|k| k.0 == 2).unwrap();
    assert_ne!(first.2, second.2, "another event, another key");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_delayed_emit_arrives_at_its_time_and_deadlines_follow_the_timeout() {
    let arrivals: Log<(Timestamp, Timestamp)> = Arc::default();
    let seen = arrivals.clone();
    let flow = Flow::builder()
        .external::<Put>()
        .step(Step::event::<Put>("schedule").emits::<Remove>().handle(
            |ctx: StepContext, p: Put| async move {
                ctx.emit_with(
                    &Remove { key: p.key },
                    EmitOptions::new().delay(Duration::from_secs(90)),
                )?;
                Ok::<_, StepError>(())
            },
        ))
        .step(
            Step::event::<Remove>("expire")
                .timeout(Duration::from_secs(7))
                .handle(move |ctx: StepContext, _r: Remove| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push((ctx.now(), ctx.deadline()));
                        Ok::<_, StepError>(())
                    }
                }),
        )
        .build()
        .unwrap();
    let h = TestHarness::start(flow).await.unwrap();
    let emitted_at = h.now();
    h.emit(
        &tenant(),
        &Put {
            key: "session".into(),
            value: 0,
        },
    )
    .await
    .unwrap();
    h.advance(Duration::from_secs(89)).await;
    assert!(arrivals.lock().unwrap().is_empty(), "not before its time");
    h.advance(Duration::from_secs(2)).await;
    let arrivals = arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 1);
    let (ran_at, deadline) = arrivals[0];
    assert_eq!(ran_at, emitted_at + Duration::from_secs(90));
    assert_eq!(deadline, ran_at + Duration::from_secs(7));
    h.shutdown().await;
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Broadcast {
    to: Vec<String>,
}
impl Event for Broadcast {
    const TOPIC: &'static str = "platform.broadcast";
}

#[tokio::test(start_paused = true)]
async fn system_steps_address_tenants_and_tenant_steps_cannot_reach_each_other() {
    let refused: Log<String> = Arc::default();
    let refusals = refused.clone();
    let flow = Flow::builder()
        .external::<Broadcast>()
        .step(Step::event::<Broadcast>("fan_out").emits::<Put>().handle(
            move |ctx: StepContext, b: Broadcast| {
                let refusals = refusals.clone();
                async move {
                    for to in &b.to {
                        let options = EmitOptions::new().tenant(TenantId::new(to).unwrap());
                        let put = Put {
                            key: "hello".into(),
                            value: 1,
                        };
                        match ctx.emit_with(&put, options) {
                            Ok(_) => {}
                            Err(err) => refusals.lock().unwrap().push(err.to_string()),
                        }
                    }
                    Ok::<_, StepError>(())
                }
            },
        ))
        .step(
            Step::event::<Put>("store").handle(|ctx: StepContext, put: Put| async move {
                ctx.put(&put.key, &put.value)?;
                Ok::<_, StepError>(())
            }),
        )
        .build()
        .unwrap();
    let h = TestHarness::start(flow).await.unwrap();
    let (a, b) = (TenantId::new("a").unwrap(), TenantId::new("b").unwrap());
    let to_both = Broadcast {
        to: vec!["a".into(), "b".into()],
    };

    h.emit(&TenantId::system(), &to_both).await.unwrap();
    h.settle().await;
    assert_eq!(h.state::<u32>(&a, "hello").await, Some(1));
    assert_eq!(h.state::<u32>(&b, "hello").await, Some(1));

    // Tenant `c` may address itself, never `b`.
    let c = TenantId::new("c").unwrap();
    h.emit(
        &c,
        &Broadcast {
            to: vec!["c".into(), "b".into()],
        },
    )
    .await
    .unwrap();
    h.settle().await;
    assert_eq!(h.state::<u32>(&c, "hello").await, Some(1));
    let refused = refused.lock().unwrap().clone();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains("cannot emit to tenant b"),
        "{refused:?}"
    );
}
