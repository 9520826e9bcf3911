//! Event payload versions: work queued by an older build runs on the new
//! type through its upcaster; a payload from a newer build, or one the
//! upcaster refuses, dead-letters as undecodable.

use std::time::Duration;

use flowline::prelude::*;
use flowline::testing::{TestHarness, TEST_EPOCH};
use flowline::{BoxError, EmitOptions, FailureKind, MemoryBackend, Payload, VERSION_HEADER};
use serde::{Deserialize, Serialize};

/// Version 1: one `name`.
#[derive(Serialize, Deserialize)]
struct SignedUpV1 {
    name: String,
}
impl Event for SignedUpV1 {
    const TOPIC: &'static str = "user.signed_up";
}

/// Version 2: the name split in two.
#[derive(Serialize, Deserialize)]
struct SignedUp {
    first: String,
    last: String,
}
impl Event for SignedUp {
    const TOPIC: &'static str = "user.signed_up";
    const VERSION: u32 = 2;
    fn upcast(version: u32, old: serde_json::Value) -> Result<serde_json::Value, BoxError> {
        match version {
            1 => {
                let name = old["name"].as_str().ok_or("version 1 without a name")?;
                let (first, last) = name.split_once(' ').ok_or("a name without a space")?;
                Ok(serde_json::json!({ "first": first, "last": last }))
            }
            _ => Ok(old),
        }
    }
}

fn v1_flow() -> Flow {
    let step = Step::event::<SignedUpV1>("welcome").handle(|_ctx, _s: SignedUpV1| async { Ok(()) });
    Flow::builder()
        .external::<SignedUpV1>()
        .step(step)
        .build()
        .unwrap()
}

fn v2_flow() -> Flow {
    let step =
        Step::event::<SignedUp>("welcome").handle(|ctx: StepContext, s: SignedUp| async move {
            ctx.put(&format!("users/{}", s.last), &s.first)?;
            Ok(())
        });
    Flow::builder()
        .external::<SignedUp>()
        .step(step)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn payloads_queued_by_an_older_build_are_upcast() {
    let backend = MemoryBackend::new();
    let acme = TenantId::new("acme").unwrap();
    let old = TestHarness::start_with(v1_flow(), backend.clone(), TEST_EPOCH)
        .await
        .unwrap();
    let later = EmitOptions::new().delay(Duration::from_secs(60));
    for name in ["Ada Lovelace", "Prince"] {
        let event = SignedUpV1 { name: name.into() };
        old.engine()
            .emit_with(&acme, &event, later.clone())
            .await
            .unwrap();
    }
    old.shutdown().await;

    let new = TestHarness::start_with(v2_flow(), backend, TEST_EPOCH)
        .await
        .unwrap();
    // A new payload carries its version; so does one from a build after this one.
    let current = SignedUp {
        first: "Alan".into(),
        last: "Turing".into(),
    };
    new.engine().emit(&acme, &current).await.unwrap();
    assert_eq!(new.envelopes()[0].header(VERSION_HEADER), Some("2"));
    let future =
        Payload::encode(&serde_json::json!({ "first": "Grace", "last": "Hopper" })).unwrap();
    let from_the_future = EmitOptions::new().header(VERSION_HEADER, "3");
    new.engine()
        .emit_json(&acme, "user.signed_up", future, from_the_future)
        .await
        .unwrap();
    new.advance(Duration::from_secs(61)).await;

    assert_eq!(
        new.state::<String>(&acme, "users/Lovelace")
            .await
            .as_deref(),
        Some("Ada")
    );
    assert_eq!(
        new.state::<String>(&acme, "users/Turing").await.as_deref(),
        Some("Alan")
    );
    let dead = new.dead_letters().await;
    let mut errors: Vec<&str> = dead.iter().map(|d| d.last_error.as_str()).collect();
    errors.sort();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("is version 1, which the event type (version 2) cannot read"),
        "{errors:?}"
    );
    assert!(errors[1].contains("is version 3"), "{errors:?}");
    assert!(dead.iter().all(|d| d.kind == FailureKind::Undecodable));
}
