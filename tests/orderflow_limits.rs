//! Flow control in the order flow (SEED_SPEC TR-5.2): a store over its intake
//! rate gets `429 Too Many Requests` with `Retry-After` and a JSON error, its
//! dashboard says `Throttled`, other stores are not affected, and a store's
//! own rate is raised at run time. Payments carry a per-store concurrency key.

use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use flowline::flow_control::Quota;
use flowline::http::{api_router, HttpOptions};
use flowline::orderflow::{
    self, MockCarrier, MockGateway, OrderLimits, Orderflow, PAYMENTS_LIMIT, STORE_HEADER,
};
use flowline::{Clock, Engine, TenantId};
use serde_json::{json, Value};
use tower::ServiceExt;

#[path = "support/orderflow_demo.rs"]
mod demo;
use demo::demo_engine;

/// Two orders a second per store, two at once.
async fn throttled_shop() -> Engine {
    let gateway = MockGateway::builder().build(Clock::system()).unwrap();
    let limits = OrderLimits::default().intake_rate(2, Duration::from_secs(1), 2);
    let flow = Orderflow::new(gateway, MockCarrier::new(1))
        .limits(limits)
        .flow()
        .unwrap();
    demo_engine(flow).await
}

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

async fn send(engine: &Engine, request: Request<Body>) -> Answer {
    let app = api_router(
        engine.clone(),
        HttpOptions::new().tenant_header(STORE_HEADER),
    );
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        body,
    }
}

async fn place(engine: &Engine, store: &str, id: &str) -> Answer {
    let order = json!({
        "orderId": id,
        "customerName": "Ada Lovelace",
        "items": [{ "productId": format!("prod-{}-001", store.to_lowercase()), "quantity": 1 }],
    });
    let request = Request::post("/api/order")
        .header(STORE_HEADER, store)
        .header("content-type", "application/json")
        .body(Body::from(order.to_string()))
        .unwrap();
    send(engine, request).await
}

async fn dashboard(engine: &Engine, store: &str) -> Value {
    let request = Request::get("/api/dashboard/stats")
        .header(STORE_HEADER, store)
        .body(Body::empty())
        .unwrap();
    let answer = send(engine, request).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body
}

#[tokio::test]
async fn a_store_over_its_intake_rate_gets_429_and_the_others_do_not() {
    let engine = throttled_shop().await;
    for n in 0..2 {
        let placed = place(&engine, "X", &format!("x-{n}")).await;
        assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
    }
    let refused = place(&engine, "X", "x-2").await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert_eq!(refused.body["code"], "throttled");
    let wait: u64 = refused
        .retry_after
        .as_deref()
        .expect("a Retry-After header")
        .parse()
        .expect("whole seconds");
    assert!((1..=2).contains(&wait), "Retry-After: {wait}");
    assert_eq!(dashboard(&engine, "X").await["status"], "Throttled");

    // Store Y is not slowed by store X.
    for n in 0..2 {
        let placed = place(&engine, "Y", &format!("y-{n}")).await;
        assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.body);
    }
    assert_eq!(dashboard(&engine, "Y").await["status"], "Healthy");

    // Nothing of the refused order was kept: retried later, it is created.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let again = place(&engine, "X", "x-2").await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    engine.wait_idle().await;
    assert_eq!(dashboard(&engine, "X").await["totalOrders"], 3);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_store_upgraded_at_run_time_may_place_more() {
    let engine = throttled_shop().await;
    let store = TenantId::new("X").unwrap();
    let plan = Quota::Rate {
        count: 100,
        period: Duration::from_secs(1),
        burst: 10,
    };
    orderflow::set_intake_rate(&engine, &store, plan)
        .await
        .unwrap();
    for n in 0..10 {
        let placed = place(&engine, "X", &format!("x-{n}")).await;
        assert_eq!(
            placed.status,
            StatusCode::CREATED,
            "order {n}: {}",
            placed.body
        );
    }
    // Store Z still has the declared two.
    place(&engine, "Z", "z-0").await;
    place(&engine, "Z", "z-1").await;
    assert_eq!(
        place(&engine, "Z", "z-2").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Back on the declared rate, X is throttled again.
    orderflow::clear_intake_rate(&engine, &store).await.unwrap();
    place(&engine, "X", "x-10").await;
    place(&engine, "X", "x-11").await;
    assert_eq!(
        place(&engine, "X", "x-12").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn payments_carry_a_per_store_concurrency_key() {
    let engine = throttled_shop().await;
    let placed = place(&engine, "X", "x-0").await;
    assert_eq!(placed.status, StatusCode::CREATED);
    engine.wait_idle().await;
    let status = engine
        .limit_status("payment_processing", PAYMENTS_LIMIT, "X")
        .await
        .unwrap();
    assert_eq!(status.quota, Quota::concurrency(16));
    assert_eq!(status.running, 0, "the slot was given back");
    engine.shutdown(Duration::from_secs(1)).await;
}
