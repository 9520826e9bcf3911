//! The workbench in a real browser: Debian's headless Chromium, driven through
//! chromedriver (WebDriver, `fantoccini`), against the orderflow served on a
//! loopback port. Orders are placed through the HTTP API; the page must draw
//! the flow graph from the wiring, show the counts moving, list a dead letter
//! whose Replay button, clicked, replays it, and show one tenant's own view
//! when it is picked.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages
//! `chromium` and `chromium-driver`; `.ci/run` installs them), or
//! `FLOWLINE_CHROMEDRIVER` / `FLOWLINE_CHROMIUM`. The final screenshot is
//! written to `target/workbench.png` (`FLOWLINE_SCREENSHOT` for another path).
//! Run with `cargo test --features axum --test workbench_browser`.

use std::time::Duration;

use fantoccini::Locator;
use flowline::flow_control::Quota;
use flowline::http::{api_router, workbench_router, HttpOptions};
use flowline::orderflow::{
    self, MockCarrier, MockGateway, OrderLimits, Orderflow, Timings, STORE_HEADER,
};
use flowline::TenantId;
use flowline::{Clock, Engine, RetryPolicy};
use serde_json::json;

#[path = "support/browser.rs"]
mod browser;
use browser::{browser, eventually, text};

#[path = "support/orderflow_demo.rs"]
mod demo;
use demo::demo_engine;

/// The orderflow with a gateway that refuses every charge, so that payments
/// are retried twice and then dead-lettered.
async fn engine() -> Engine {
    let gateway = MockGateway::builder()
        .server_error_rate(1.0)
        .build(Clock::system())
        .unwrap();
    let timings = Timings {
        payment_retry: RetryPolicy::fixed(Duration::from_millis(50)).max_attempts(2),
        ..Timings::default()
    };
    // Stores may place 1,000 orders a second: the test throttles store X
    // itself, at run time.
    let limits = OrderLimits::default().intake_rate(1_000, Duration::from_secs(1), 1_000);
    let flow = Orderflow::new(gateway, MockCarrier::new(3))
        .timings(timings)
        .limits(limits)
        .flow()
        .unwrap();
    demo_engine(flow).await
}

/// Places `n` orders for store X over HTTP, numbered from `first`.
async fn place_orders(base: &str, first: usize, n: usize) {
    for i in first..first + n {
        assert_eq!(post_order(base, i).await, 201, "order b-{i}");
    }
}

/// Posts order `b-<i>` for store X over HTTP; the answer's status.
async fn post_order(base: &str, i: usize) -> u16 {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<String>();
    let body = json!({
        "orderId": format!("b-{i}"),
        "customerName": "Grace Hopper",
        "items": [{ "productId": "prod-x-002", "quantity": 1 }],
    });
    let request = axum::http::Request::post(format!("{base}/api/order"))
        .header(STORE_HEADER, "X")
        .header("content-type", "application/json")
        .body(body.to_string())
        .unwrap();
    let response = client.request(request).await.expect("the API answers");
    response.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workbench_shows_the_flow_moving_and_replays_a_dead_letter_on_click() {
    let engine = engine().await;
    let app = workbench_router(engine.clone()).merge(api_router(
        engine.clone(),
        HttpOptions::new().tenant_header(STORE_HEADER),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let (_driver, client) = browser(1500, 1800).await;
    client.goto(&format!("{base}/_flowline")).await.unwrap();

    // The graph, drawn from the real wiring: every step is a node.
    for step in engine.flow().step_names() {
        let css = format!("#graph svg g.node[data-step=\"{step}\"]");
        client
            .wait()
            .for_element(Locator::Css(&css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
    }

    // The counts move as orders arrive.
    let processed = |c: fantoccini::Client| async move {
        text(&c, "#tiles .tile .v")
            .await
            .replace(',', "")
            .parse::<u64>()
            .unwrap_or(0)
    };
    eventually("the first counts", || {
        processed(client.clone()).then_some_nonzero()
    })
    .await;
    let before = processed(client.clone()).await;
    place_orders(&base, 0, 5).await;
    eventually("the counts moving", || {
        let c = client.clone();
        async move { processed(c).await > before }
    })
    .await;
    // The page redraws when the server says something changed: the row
    // counts all 5 calls once the last one's change was told.
    eventually("the steps table counting the 5 API calls", || {
        let c = client.clone();
        async move {
            text(&c, "#steps tr[data-step=\"order_create_api\"]")
                .await
                .contains('5')
        }
    })
    .await;

    // Payments fail for good: dead letters appear; a click replays one.
    eventually("a dead letter", || {
        let c = client.clone();
        async move {
            c.find(Locator::Css("#dead tbody tr[data-dead] button.replay"))
                .await
                .is_ok()
        }
    })
    .await;
    let dead_before = engine
        .dead_letters(&flowline::DeadLetterQuery::default())
        .await
        .unwrap()
        .len();
    let row = client
        .find(Locator::Css("#dead tbody tr[data-dead]"))
        .await
        .unwrap();
    let id: u64 = row
        .attr("data-dead")
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    row.find(Locator::Css("button.replay"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the replay's answer", || {
        let c = client.clone();
        async move { text(&c, "#dead-message").await.contains("replayed 1") }
    })
    .await;
    let still_dead: Vec<u64> = engine
        .dead_letters(&flowline::DeadLetterQuery::default())
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert!(
        !still_dead.contains(&id),
        "dead letter {id} was replayed, yet it is still there"
    );
    assert!(
        still_dead.len() < dead_before + 5,
        "{dead_before} before, {} after",
        still_dead.len()
    );

    // Each dead letter says why it failed, and the kind filter narrows the
    // list: the payment step gave up for good (it counts its own retries);
    // none was undecodable.
    let first_row = text(&client, "#dead tbody tr[data-dead]").await;
    assert!(first_row.contains("permanent"), "{first_row}");
    let kind = client.find(Locator::Css("#dead-kind")).await.unwrap();
    kind.clone().select_by_value("undecodable").await.unwrap();
    eventually("the kind filter applied", || {
        let c = client.clone();
        async move { text(&c, "#dead tbody").await.contains("no dead letters") }
    })
    .await;
    kind.select_by_value("").await.unwrap();

    // Store X is put on one order an hour and places two: the second is
    // refused, and the flow-control table shows X's intake key throttled.
    let x = TenantId::new("X").unwrap();
    orderflow::set_intake_rate(&engine, &x, Quota::rate(1, Duration::from_secs(3600)))
        .await
        .unwrap();
    place_orders(&base, 100, 1).await;
    assert_eq!(
        post_order(&base, 101).await,
        429,
        "the second order of the hour"
    );
    eventually("store X's intake key throttled", || {
        let c = client.clone();
        async move {
            let row = text(&c, "#limits tr[data-key=\"order_create_api/intake/X\"]").await;
            row.contains("throttled") && row.contains("1/h") && row.contains("set at run time")
        }
    })
    .await;

    // One tenant's view: its own steps and dead letters.
    client
        .find(Locator::Css("#tenant"))
        .await
        .unwrap()
        .select_by_value("X")
        .await
        .expect("store X is in the tenant list");
    eventually("store X's own view", || {
        let c = client.clone();
        async move {
            let card = text(&c, "#tenant-card").await;
            (card.contains("TENANT X") || card.contains("Tenant X"))
                && card.contains("payment_processing")
                && card
                    .to_lowercase()
                    .contains("throttled (order_create_api/intake)")
        }
    })
    .await;
    client
        .execute("window.scrollTo(0, 0)", vec![])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await; // one more refresh, drawn
    let png = client.screenshot().await.unwrap();
    let path = std::env::var("FLOWLINE_SCREENSHOT")
        .unwrap_or_else(|_| format!("{}/../workbench.png", env!("CARGO_TARGET_TMPDIR")));
    std::fs::write(&path, png).unwrap();
    println!("workbench screenshot: {path}");
    client
        .execute(
            "document.getElementById('limits').scrollIntoView({ block: 'center' })",
            vec![],
        )
        .await
        .unwrap();
    let png = client.screenshot().await.unwrap();
    let limits = path.replace(".png", "-limits.png");
    std::fs::write(&limits, png).unwrap();
    println!("flow-control screenshot: {limits}");
    client
        .execute(
            "document.getElementById('dead').scrollIntoView({ block: 'center' })",
            vec![],
        )
        .await
        .unwrap();
    let png = client.screenshot().await.unwrap();
    let dead = path.replace(".png", "-dead-letters.png");
    std::fs::write(&dead, png).unwrap();
    println!("dead-letters screenshot: {dead}");

    // The graph fits a 1,500 px window, and an order's happy path (intake,
    // screening, reservation, payment, fulfilment, delivery) reads left to
    // right on one row, though stock and payment form a cycle (payment
    // succeeded -> commit stock -> fulfil; returned -> refund).
    let graph = client
        .execute(
            "const g = document.getElementById('graph');
             const at = (s) => document.querySelector(`#graph g.node[data-step='${s}']`).getBoundingClientRect();
             const path = ['order_create_api', 'fraud_guard', 'inventory_update', 'payment_processing',
                           'order_fulfillment', 'delivery'].map(at);
             return [g.scrollWidth <= g.clientWidth,
                     path.every((r) => Math.abs(r.top - path[0].top) < 1),
                     path.every((r, i) => i === 0 || r.left > path[i - 1].left),
                     Number(g.querySelector('svg').dataset.crossings)];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        graph.as_array().unwrap()[..3],
        [json!(true), json!(true), json!(true)],
        "fits, one row, left to right"
    );
    // The ordering pass keeps crossings down: the order system's wiring is
    // drawn with 21.
    let crossings = graph[3].as_u64().unwrap();
    assert!(crossings <= 24, "{crossings} edge crossings");

    // After a long run the counts still fit their tiles (1.2 million
    // executions overflowed the "processed" tile once): drawn with such
    // counts, no tile's value is wider than its box.
    state_paused(&client).await;
    let overflowing = client
        .execute(
            "tiles({ engine: { processed: 1234567, failed: 98765432, retried: 4321987654, api_calls: 1200000 },
                     queue: { dead: 1200000, ready: 1200000, delayed: 1200000, in_flight: 1200000 } });
             const values = [...document.querySelectorAll('#tiles .tile .v')];
             return [values.filter(v => v.scrollWidth > v.clientWidth).map(v => v.innerText), values[0].innerText];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(overflowing, json!([[], "1.23 M"]));
    client.close().await.unwrap();
    server.abort();
    engine.shutdown(Duration::from_secs(5)).await;
}

/// `async { n > 0 }` for the first-counts wait.
trait NonZero {
    fn then_some_nonzero(self) -> impl std::future::Future<Output = bool>;
}

impl<F: std::future::Future<Output = u64>> NonZero for F {
    async fn then_some_nonzero(self) -> bool {
        self.await > 0
    }
}

/// Pauses the page, so that a redraw does not replace what a check draws.
async fn state_paused(client: &fantoccini::Client) {
    client
        .execute("state.paused = true;", vec![])
        .await
        .unwrap();
}
