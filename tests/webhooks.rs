//! Webhooks against real receivers on loopback: every event reaches a
//! receiver that fails half of the time, signed and, after de-duplication by
//! `webhook-id`, exactly once; a hanging endpoint of one store does not hold
//! up another store's deliveries; a failing endpoint is dead-lettered, logged
//! and replayable, and one failing for too long is disabled with an event;
//! bad registrations are typed errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use flowline::webhooks::{
    verify, DeliveryOutcome, DeliveryRecord, DeliveryState, Destinations, EndpointSpec, Signed,
    WebhookEndpointDisabled, WebhookEndpoints, WebhookError, WebhookOptions, WebhookSecret,
    Webhooks, SENDER,
};
use flowline::{
    DeadLetterQuery, EmitOptions, Engine, Event, Flow, MemoryBackend, Step, StepContext, StepError,
    StepName, TenantId,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct OrderCreated {
    order: u32,
}
impl Event for OrderCreated {
    const TOPIC: &'static str = "order.created";
}

/// How a receiver answers.
#[derive(Clone, Copy, PartialEq)]
enum Mood {
    /// 2xx.
    Fine,
    /// 500 every other request.
    Flaky,
    /// 500 with `Retry-After: 0`.
    Broken,
    /// Never answers.
    Hanging,
}

#[derive(Default)]
struct Inbox {
    /// Verified bodies by `webhook-id`.
    by_id: HashMap<String, Vec<String>>,
    requests: usize,
    bad_signatures: usize,
    signatures_seen: Vec<String>,
    /// The `traceparent` of each request that had one.
    traceparents: Vec<String>,
}

#[derive(Clone)]
struct Receiver {
    mood: Arc<Mutex<Mood>>,
    secrets: Arc<Mutex<Vec<WebhookSecret>>>,
    inbox: Arc<Mutex<Inbox>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mood = *r.mood.lock().unwrap();
    if mood == Mood::Hanging {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (id, timestamp, signatures) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let secrets = r.secrets.lock().unwrap().clone();
    let signed = Signed {
        id: &id,
        timestamp: &timestamp,
        signatures: &signatures,
    };
    let mut inbox = r.inbox.lock().unwrap();
    inbox.requests += 1;
    inbox.signatures_seen.push(signatures.clone());
    if let Some(parent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        inbox.traceparents.push(parent.to_string());
    }
    if verify(&secrets, &signed, &body, now).is_err() {
        inbox.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let fail = match mood {
        Mood::Fine | Mood::Hanging => false,
        Mood::Flaky => inbox.requests % 2 == 0,
        Mood::Broken => true,
    };
    if fail {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    inbox
        .by_id
        .entry(id)
        .or_default()
        .push(String::from_utf8_lossy(&body).to_string());
    StatusCode::NO_CONTENT
}

async fn receiver(mood: Mood) -> (Receiver, String) {
    let r = Receiver {
        mood: Arc::new(Mutex::new(mood)),
        secrets: Arc::new(Mutex::new(Vec::new())),
        inbox: Arc::new(Mutex::new(Inbox::default())),
    };
    let app = Router::new()
        .route("/hooks", post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

struct Setup {
    engine: Engine,
    webhooks: Webhooks,
    endpoints: WebhookEndpoints,
    disabled: Arc<Mutex<Vec<WebhookEndpointDisabled>>>,
}

async fn setup(options: WebhookOptions) -> Setup {
    let webhooks = Webhooks::new(["order.created"])
        .options(options.destinations(Destinations::public_only().allow_loopback()));
    let disabled = Arc::new(Mutex::new(Vec::new()));
    let seen = disabled.clone();
    let alerts = Step::event::<WebhookEndpointDisabled>("alerts").handle(
        move |_ctx: StepContext, event: WebhookEndpointDisabled| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(event);
                Ok::<_, StepError>(())
            }
        },
    );
    let flow = Flow::builder()
        .steps(webhooks.steps().unwrap())
        .step(alerts)
        .build()
        .unwrap();
    let engine = Engine::builder(flow)
        .backend(MemoryBackend::new())
        .start()
        .await
        .unwrap();
    Setup {
        endpoints: webhooks.endpoints(engine.clone()),
        webhooks,
        engine,
        disabled,
    }
}

impl Setup {
    /// Store X's log of `endpoint` once its newest message is in `state`.
    async fn log_until(&self, endpoint: &str, state: DeliveryState) -> Vec<DeliveryRecord> {
        for _ in 0..600 {
            let log = self
                .endpoints
                .deliveries(&store("X"), endpoint, 10)
                .await
                .unwrap();
            if log.first().is_some_and(|r| r.state == state) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the log never said {state:?}");
    }
}

fn fast() -> WebhookOptions {
    WebhookOptions::default()
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .timeout(Duration::from_secs(5))
}

fn store(id: &str) -> TenantId {
    TenantId::new(id).unwrap()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn register(setup: &Setup, tenant: &str, url: &str, r: &Receiver) -> String {
    let registered = setup
        .endpoints
        .register(&store(tenant), EndpointSpec::new(url, ["order.*"]))
        .await
        .unwrap();
    r.secrets
        .lock()
        .unwrap()
        .push(WebhookSecret::parse(registered.secret()).unwrap());
    registered.endpoint.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_a_flaky_receiver_signed_and_once_after_dedup() {
    let setup = setup(fast()).await;
    let (r, url) = receiver(Mood::Flaky).await;
    register(&setup, "X", &url, &r).await;
    for order in 0..40 {
        setup
            .engine
            .emit(&store("X"), &OrderCreated { order })
            .await
            .unwrap();
    }
    until("40 messages", || r.inbox.lock().unwrap().by_id.len() == 40).await;
    setup.engine.wait_idle().await;
    let inbox = r.inbox.lock().unwrap();
    assert_eq!(inbox.bad_signatures, 0);
    assert!(
        inbox.requests > 40,
        "half failed and were retried: {}",
        inbox.requests
    );
    let mut orders: Vec<u64> = inbox
        .by_id
        .values()
        .map(|bodies| {
            assert!(
                bodies.windows(2).all(|w| w[0] == w[1]),
                "a retry sends the same body"
            );
            let body: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
            assert_eq!(body["type"], "order.created");
            body["data"]["order"].as_u64().unwrap()
        })
        .collect();
    orders.sort_unstable();
    assert_eq!(orders, (0..40).collect::<Vec<_>>(), "every event once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_carries_its_events_trace_and_attempts_are_counted_by_outcome() {
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let setup = setup(fast()).await;
    let (r, url) = receiver(Mood::Flaky).await;
    let endpoint = register(&setup, "X", &url, &r).await;
    for order in 0..4 {
        let traced = EmitOptions::new().header("traceparent", PARENT);
        setup
            .engine
            .emit_with(&store("X"), &OrderCreated { order }, traced)
            .await
            .unwrap();
    }
    until("4 messages", || r.inbox.lock().unwrap().by_id.len() == 4).await;
    setup.engine.wait_idle().await;
    let inbox = r.inbox.lock().unwrap();
    assert_eq!(inbox.traceparents.len(), inbox.requests, "every attempt");
    assert!(
        inbox.traceparents.iter().all(|p| p == PARENT),
        "the event's trace, passed on (no exporter here): {:?}",
        inbox.traceparents
    );
    let counts = setup.webhooks.delivery_counts();
    assert_eq!(counts.len(), 1);
    assert_eq!(counts[0].endpoint, Some((store("X"), endpoint)));
    let delivered = counts[0]
        .outcomes
        .iter()
        .find(|(o, _)| *o == DeliveryOutcome::Delivered)
        .map(|(_, n)| *n);
    let attempts: u64 = counts[0].outcomes.iter().map(|(_, n)| n).sum();
    assert_eq!(delivered, Some(4));
    assert_eq!(attempts, inbox.requests as u64, "each attempt counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_of_one_store_does_not_hold_up_another_store() {
    let setup = setup(fast().timeout(Duration::from_secs(20)).per_endpoint(2)).await;
    let (hanging, hanging_url) = receiver(Mood::Hanging).await;
    let (fine, fine_url) = receiver(Mood::Fine).await;
    register(&setup, "X", &hanging_url, &hanging).await;
    register(&setup, "Y", &fine_url, &fine).await;
    for order in 0..20 {
        setup
            .engine
            .emit(&store("X"), &OrderCreated { order })
            .await
            .unwrap();
        setup
            .engine
            .emit(&store("Y"), &OrderCreated { order })
            .await
            .unwrap();
    }
    // Y's twenty arrive while X's first attempts still hang (they would
    // time out only after 20 s): X holds two slots, not the sender.
    until("Y's deliveries", || {
        fine.inbox.lock().unwrap().by_id.len() == 20
    })
    .await;
    let x = hanging.inbox.lock().unwrap();
    assert_eq!(x.by_id.len(), 0);
    assert!(
        x.requests <= 2,
        "X has at most its two in flight: {}",
        x.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_dead_lettered_logged_and_replayable() {
    let setup = setup(fast().give_up_after(3, Duration::from_secs(3600))).await;
    let (r, url) = receiver(Mood::Broken).await;
    let endpoint = register(&setup, "X", &url, &r).await;
    setup
        .engine
        .emit(&store("X"), &OrderCreated { order: 7 })
        .await
        .unwrap();
    // Retries are delayed deliveries: wait for the log to say it gave up.
    let log = setup
        .log_until(&endpoint, DeliveryState::DeadLettered)
        .await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].state, DeliveryState::DeadLettered);
    let statuses: Vec<_> = log[0].attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(500); 3]);
    let dead = setup
        .engine
        .dead_letters(&DeadLetterQuery::default().step(StepName::new(SENDER).unwrap()))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);

    // The receiver is mended; the replay delivers, under the same id.
    *r.mood.lock().unwrap() = Mood::Fine;
    setup
        .engine
        .replay_dead_letters(&[dead[0].id])
        .await
        .unwrap();
    let log = setup.log_until(&endpoint, DeliveryState::Delivered).await;
    assert_eq!(
        r.inbox.lock().unwrap().by_id.keys().collect::<Vec<_>>(),
        [&log[0].message_id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_too_long_is_disabled_with_an_event_and_enabled_again() {
    let setup = setup(
        fast()
            .disable_after(Duration::ZERO)
            .give_up_after(1, Duration::from_secs(60)),
    )
    .await;
    let (r, url) = receiver(Mood::Broken).await;
    let endpoint = register(&setup, "X", &url, &r).await;
    setup
        .engine
        .emit(&store("X"), &OrderCreated { order: 1 })
        .await
        .unwrap();
    setup.engine.wait_idle().await;
    let listed = setup.endpoints.get(&store("X"), &endpoint).await.unwrap();
    assert!(!listed.enabled);
    assert!(listed.disabled_reason.unwrap().contains("failed since"));
    assert_eq!(setup.disabled.lock().unwrap().len(), 1);

    // Disabled: the next event is not sent.
    setup
        .engine
        .emit(&store("X"), &OrderCreated { order: 2 })
        .await
        .unwrap();
    setup.engine.wait_idle().await;
    assert_eq!(r.inbox.lock().unwrap().requests, 1);

    *r.mood.lock().unwrap() = Mood::Fine;
    assert!(
        setup
            .endpoints
            .set_enabled(&store("X"), &endpoint, true)
            .await
            .unwrap()
            .enabled
    );
    setup
        .engine
        .emit(&store("X"), &OrderCreated { order: 3 })
        .await
        .unwrap();
    until("the delivery after re-enabling", || {
        r.inbox.lock().unwrap().by_id.len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_new_one_during_its_overlap() {
    let setup = setup(fast()).await;
    let (r, url) = receiver(Mood::Fine).await;
    let endpoint = register(&setup, "X", &url, &r).await;
    let new = setup
        .endpoints
        .rotate_secret(&store("X"), &endpoint, Duration::from_secs(3600))
        .await
        .unwrap();
    setup
        .engine
        .emit(&store("X"), &OrderCreated { order: 1 })
        .await
        .unwrap();
    until("the delivery", || r.inbox.lock().unwrap().by_id.len() == 1).await;
    let inbox = r.inbox.lock().unwrap();
    let signatures = inbox.signatures_seen.last().unwrap();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    // A receiver that holds only the new secret verifies too.
    assert!(WebhookSecret::parse(&new).is_ok());
}

#[tokio::test]
async fn bad_registrations_are_typed_errors_and_keep_nothing() {
    let webhooks = Webhooks::new(["order.created"]);
    let flow = Flow::builder()
        .steps(webhooks.steps().unwrap())
        .build()
        .unwrap();
    let engine = Engine::builder(flow)
        .backend(MemoryBackend::new())
        .start()
        .await
        .unwrap();
    let endpoints = webhooks.endpoints(engine);
    let x = store("X");
    let spec = |url: &str, topics: &[&str]| EndpointSpec::new(url, topics.iter().copied());
    type Expected = fn(&WebhookError) -> bool;
    let cases: Vec<(EndpointSpec, Expected)> = vec![
        (spec("http://127.0.0.1:9/", &["order.*"]), |e| {
            matches!(e, WebhookError::Destination(_))
        }),
        (spec("http://169.254.169.254/", &["order.*"]), |e| {
            matches!(e, WebhookError::Destination(_))
        }),
        (spec("ftp://example.com/", &["order.*"]), |e| {
            matches!(e, WebhookError::UnsupportedScheme(_))
        }),
        (spec("not a url", &["order.*"]), |e| {
            matches!(e, WebhookError::InvalidUrl(_))
        }),
        (spec("https://example.com/", &["refund.*"]), |e| {
            matches!(e, WebhookError::UnknownTopic(_))
        }),
        (spec("https://example.com/", &["Order"]), |e| {
            matches!(e, WebhookError::InvalidPattern(_))
        }),
        (spec("https://example.com/", &[]), |e| {
            matches!(e, WebhookError::PatternCount)
        }),
        (
            EndpointSpec {
                secret: Some(format!("whsec_{}", "A".repeat(200))),
                ..spec("https://example.com/", &["order.*"])
            },
            |e| matches!(e, WebhookError::Secret(_)),
        ),
        (
            EndpointSpec {
                secret: Some("whsec_short".into()),
                ..spec("https://example.com/", &["order.*"])
            },
            |e| matches!(e, WebhookError::Secret(_)),
        ),
    ];
    for (spec, expected) in cases {
        let err = endpoints.register(&x, spec.clone()).await.unwrap_err();
        assert!(expected(&err), "{spec:?}: {err}");
    }
    assert!(endpoints.list(&x).await.unwrap().is_empty());
    assert!(matches!(
        endpoints.get(&x, "ep_nope").await,
        Err(WebhookError::NotFound(_))
    ));
}
