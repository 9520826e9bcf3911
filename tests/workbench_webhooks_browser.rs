//! The workbench's webhooks card in a real browser: a tenant's endpoint
//! with its deliveries; a message given up on shows as dead-lettered with
//! its failed attempts, and its Replay button, clicked once the receiver
//! works again, delivers it. The screenshot is written to
//! `workbench-webhooks.png` in the target directory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use fantoccini::Locator;
use flowline::http::{workbench_router, workbench_webhooks_router};
use flowline::webhooks::{Destinations, EndpointSpec, WebhookOptions, Webhooks};
use flowline::{Engine, Event, Flow, MemoryBackend, TenantId};
use serde::{Deserialize, Serialize};

#[path = "support/browser.rs"]
mod browser;
use browser::{browser, eventually, text};

#[derive(Serialize, Deserialize)]
struct OrderCreated {
    order_id: String,
}
impl Event for OrderCreated {
    const TOPIC: &'static str = "order.created";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_message_shows_in_the_card_and_its_replay_delivers_it() {
    // A receiver that fails until it is mended.
    let working = Arc::new(AtomicBool::new(false));
    let flag = working.clone();
    let receiver = Router::new().route(
        "/hooks",
        post(move || {
            let flag = flag.clone();
            async move {
                if flag.load(Ordering::SeqCst) {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let hooks = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hooks_url = format!("http://{}/hooks", hooks.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(hooks, receiver).await });

    let webhooks = Webhooks::new([OrderCreated::TOPIC]).options(
        WebhookOptions::default()
            .destinations(Destinations::public_only().allow_loopback())
            .backoff(Duration::from_millis(10), Duration::from_millis(20))
            .give_up_after(2, Duration::from_secs(60)),
    );
    let flow = Flow::builder()
        .steps(webhooks.steps().unwrap())
        .build()
        .unwrap();
    let engine = Engine::builder(flow)
        .backend(MemoryBackend::new())
        .start()
        .await
        .unwrap();
    let store = TenantId::new("X").unwrap();
    webhooks
        .endpoints(engine.clone())
        .register(&store, EndpointSpec::new(&hooks_url, ["order.*"]))
        .await
        .unwrap();
    let order = OrderCreated {
        order_id: "o-1".into(),
    };
    engine.emit(&store, &order).await.unwrap();

    let app = workbench_router(engine.clone()).merge(workbench_webhooks_router(
        webhooks.endpoints(engine.clone()),
    ));
    let pages = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", pages.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(pages, app).await });

    let (_driver, client) = browser(1500, 1400).await;
    client.goto(&format!("{base}/_flowline")).await.unwrap();
    // The dead letter names tenant X, which then appears in the list.
    eventually("tenant X in the list", || {
        let c = client.clone();
        async move { text(&c, "#tenant").await.contains('X') }
    })
    .await;
    client
        .find(Locator::Css("#tenant"))
        .await
        .unwrap()
        .select_by_value("X")
        .await
        .unwrap();
    eventually("the message dead-lettered in the card", || {
        let (c, hooks_url) = (client.clone(), hooks_url.clone());
        async move {
            let card = text(&c, "#webhooks-card").await;
            card.contains("deadLettered") && card.contains(&hooks_url) && card.contains("503")
        }
    })
    .await;

    client
        .execute(
            "document.getElementById('webhooks-card').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
    let png = client.screenshot().await.unwrap();
    let path = std::env::var("FLOWLINE_WEBHOOKS_SCREENSHOT")
        .unwrap_or_else(|_| format!("{}/../workbench-webhooks.png", env!("CARGO_TARGET_TMPDIR")));
    std::fs::write(&path, png).unwrap();
    println!("webhooks screenshot: {path}");

    working.store(true, Ordering::SeqCst);
    client
        .find(Locator::Css("#webhooks-card button.replay"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the replayed message delivered", || {
        let c = client.clone();
        async move {
            let card = text(&c, "#webhooks-card").await;
            card.contains("delivered") && !card.contains("deadLettered")
        }
    })
    .await;
    client.close().await.unwrap();
}
