//! One JSON convention in every answer: keys are camelCase. Every API route of
//! orderflow is called (a route the table below misses fails the test), with
//! good requests and bad ones, and so is every read of the workbench; every
//! key of every answer, however deep, is checked, but for maps whose keys
//! are data (step names, a payload).

use std::collections::BTreeSet;

use flowline::orderflow::{self, MockCarrier, MockGateway, Orderflow, Timings};
use flowline::testing::TestHarness;
use flowline::{ApiRequest, Clock, Method, TenantId};
use serde_json::{json, Value};

#[path = "support/orderflow_demo.rs"]
mod demo;

/// `camelCase`: a lowercase letter, then letters and digits.
fn is_camel_case(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

/// Keys whose values are maps keyed by data (step names) or data
/// themselves (an event's payload): their inner keys are not checked.
const DATA: [&str; 3] = ["recentByStep", "deadLettersByStep", "payload"];

/// Every key in `value` that is not camelCase, with its path.
fn offenders(value: &Value, path: &str, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if !is_camel_case(key) {
                    found.push(format!("{path}.{key}"));
                }
                if !DATA.contains(&key.as_str()) {
                    offenders(inner, &format!("{path}.{key}"), found);
                }
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                offenders(inner, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn the_key_check_tells_camel_case_from_the_rest() {
    for good in ["orderId", "status", "items", "lineTotal", "p99"] {
        assert!(is_camel_case(good), "{good}");
    }
    for bad in ["line_total", "OrderId", "order-id", "", "1st", "order id"] {
        assert!(!is_camel_case(bad), "{bad}");
    }
    let mut found = Vec::new();
    offenders(
        &json!({ "items": [{ "line_total": 1 }], "ok": { "fine": true } }),
        "",
        &mut found,
    );
    assert_eq!(found, [".items[0].line_total"]);
}

#[tokio::test(start_paused = true)]
async fn every_orderflow_answer_has_camel_case_keys() {
    let gateway = MockGateway::builder().build(Clock::system()).unwrap();
    let flow = Orderflow::new(gateway, MockCarrier::new(1))
        .timings(Timings::default().instant_delivery())
        .flow()
        .unwrap();
    let route_list: Vec<(Method, String)> = flow
        .api_routes()
        .into_iter()
        .map(|(_, method, pattern)| (method, pattern.to_string()))
        .collect();
    let routes: BTreeSet<(String, String)> = route_list
        .iter()
        .map(|(method, pattern)| (method.to_string(), pattern.clone()))
        .collect();
    let h = TestHarness::start(flow).await.unwrap();
    orderflow::bootstrap(h.engine(), &orderflow::demo_stores())
        .await
        .unwrap();
    orderflow::seed_demo(h.engine()).await.unwrap();
    h.settle().await;

    let x = TenantId::new("X").unwrap();
    let order = |id: &str, quantity: u32| {
        json!({
            "orderId": id,
            "customerName": "Ada",
            "items": [{ "productId": "prod-x-001", "quantity": quantity }],
        })
    };
    let legacy = json!({
        "customer": { "name": "Bo", "email": "bo@example.com" },
        "items": [{ "productId": "prod-x-002", "quantity": 1 }],
    });
    // (method, pattern, path, body): at least one call per route; bad ones too.
    let mut calls: Vec<(Method, &str, String, Value)> = vec![
        (
            Method::Post,
            "/api/order",
            "/api/order".into(),
            order("j-1", 1),
        ),
        (
            Method::Post,
            "/api/order",
            "/api/order".into(),
            order("j-2", 2),
        ),
        (
            Method::Post,
            "/api/order",
            "/api/order".into(),
            json!({ "items": [] }),
        ),
        (
            Method::Post,
            "/api/order/submit",
            "/api/order/submit".into(),
            legacy,
        ),
        (
            Method::Post,
            "/api/order/submit",
            "/api/order/submit".into(),
            json!({}),
        ),
    ];
    let mut answers = Vec::new();
    for (method, pattern, path, body) in calls.drain(..) {
        let answer = h
            .engine()
            .call(ApiRequest::new(method, path.clone(), x.clone()).json(body))
            .await;
        answers.push((method, pattern.to_string(), path, answer));
    }
    h.settle().await;
    let alert_id = {
        let listed = h
            .engine()
            .call(ApiRequest::new(Method::Get, "/api/alerts", x.clone()))
            .await;
        listed.body["alerts"][0]["id"]
            .as_str()
            .expect("an alert for the new orders")
            .to_string()
    };
    let later: Vec<(Method, &str, String, Value)> = vec![
        (
            Method::Get,
            "/api/order/tracking/{orderId}",
            "/api/order/tracking/j-1".into(),
            Value::Null,
        ),
        (
            Method::Get,
            "/api/order/tracking/{orderId}",
            "/api/order/tracking/nope".into(),
            Value::Null,
        ),
        (
            Method::Get,
            "/api/order/held",
            "/api/order/held".into(),
            Value::Null,
        ),
        (
            Method::Post,
            "/api/order/{orderId}/review",
            "/api/order/j-1/review".into(),
            json!({ "decision": "release" }),
        ),
        (
            Method::Post,
            "/api/order/{orderId}/review",
            "/api/order/j-1/review".into(),
            json!({ "decision": "maybe" }),
        ),
        (
            Method::Post,
            "/api/order/{orderId}/cancel",
            "/api/order/j-2/cancel".into(),
            json!({}),
        ),
        (
            Method::Post,
            "/api/order/{orderId}/cancel",
            "/api/order/nope/cancel".into(),
            json!({}),
        ),
        (
            Method::Get,
            "/api/alerts",
            "/api/alerts".into(),
            Value::Null,
        ),
        (
            Method::Get,
            "/api/alerts",
            "/api/alerts?type=bogus".into(),
            Value::Null,
        ),
        (
            Method::Post,
            "/api/alerts/{id}/acknowledge",
            format!("/api/alerts/{alert_id}/acknowledge"),
            Value::Null,
        ),
        (
            Method::Post,
            "/api/alerts/{id}/resolve",
            format!("/api/alerts/{alert_id}/resolve"),
            Value::Null,
        ),
        (
            Method::Post,
            "/api/alerts/{id}/resolve",
            "/api/alerts/nope/resolve".into(),
            Value::Null,
        ),
        (
            Method::Get,
            "/api/dashboard/stats",
            "/api/dashboard/stats".into(),
            Value::Null,
        ),
    ];
    for (method, pattern, path, body) in later {
        let answer = h
            .engine()
            .call(ApiRequest::new(method, path.clone(), x.clone()).json(body))
            .await;
        answers.push((method, pattern.to_string(), path, answer));
    }
    // An unknown store, on every route.
    let nowhere = TenantId::new("nowhere").unwrap();
    for (method, pattern) in &route_list {
        let method = *method;
        let path = pattern.replace("{orderId}", "j-1").replace("{id}", "a-1");
        let answer = h
            .engine()
            .call(ApiRequest::new(method, path.clone(), nowhere.clone()).json(json!({})))
            .await;
        answers.push((method, pattern.clone(), path, answer));
    }

    let called: BTreeSet<(String, String)> = answers
        .iter()
        .map(|(method, pattern, _, _)| (method.to_string(), pattern.clone()))
        .collect();
    let missed: Vec<_> = routes.difference(&called).collect();
    assert!(missed.is_empty(), "routes no call here covers: {missed:?}");

    let mut found = Vec::new();
    for (method, _, path, answer) in &answers {
        offenders(
            &answer.body,
            &format!("{method} {path} ({})", answer.status),
            &mut found,
        );
    }
    assert!(
        found.is_empty(),
        "keys that are not camelCase:\n{}",
        found.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workbench_answer_has_camel_case_keys() {
    use axum::body::{to_bytes, Body};
    use axum::http::Request;
    use flowline::http::workbench_router;
    use flowline::RetryPolicy;
    use std::time::Duration;
    use tower::ServiceExt;

    // A gateway that always fails: payments dead-letter, so the dead-letter
    // answers have rows.
    let gateway = MockGateway::builder()
        .server_error_rate(1.0)
        .build(Clock::system())
        .unwrap();
    let timings = Timings {
        payment_retry: RetryPolicy::fixed(Duration::from_millis(10)).max_attempts(1),
        ..Timings::default().instant_delivery()
    };
    let flow = Orderflow::new(gateway, MockCarrier::new(1))
        .timings(timings)
        .flow()
        .unwrap();
    let engine = demo::demo_engine(flow).await;
    let x = TenantId::new("X").unwrap();
    let order = json!({
        "orderId": "w-1",
        "customerName": "Ada",
        "items": [{ "productId": "prod-x-001", "quantity": 1 }],
    });
    let placed = engine
        .call(ApiRequest::new(Method::Post, "/api/order", x).json(order))
        .await;
    assert_eq!(placed.status, 201);
    engine.wait_idle().await;

    let app = workbench_router(engine.clone());
    let mut found = Vec::new();
    for path in [
        "/_flowline/api/flow",
        "/_flowline/api/stats",
        "/_flowline/api/stats?tenant=X",
        "/_flowline/api/executions?limit=50",
        "/_flowline/api/dead-letters",
        "/_flowline/api/dead-letters?limit=1",
        "/_flowline/api/dead-letters?step=no%20such",
        "/_flowline/api/orphans",
        "/_flowline/api/schedules",
        "/_flowline/api/limits",
    ] {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        if path == "/_flowline/api/dead-letters" {
            assert!(
                !body["deadLetters"].as_array().unwrap().is_empty(),
                "a dead letter to check: {body}"
            );
        }
        offenders(&body, &format!("GET {path} ({status})"), &mut found);
    }
    assert!(
        found.is_empty(),
        "keys that are not camelCase:\n{}",
        found.join("\n")
    );
}
