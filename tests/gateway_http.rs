//! The mock payment gateway over HTTP: [`gateway_router`] serving a
//! [`MockGateway`] on a loopback port and [`HttpGateway`] charging it, first call
//! by call (every status and what the client makes of it, bad input, broken
//! connections), then end to end: a few hundred orders through the order flow
//! while the gateway declines, fails, loses answers and goes down, each order
//! ending terminal and charged at most once. Real time throughout: the point is
//! the wire, its timeouts included.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use flowline::orderflow::{
    self, gateway_router, ChargeRequest, Currency, GatewayError, HttpGateway, HttpGatewayError,
    LedgerEntry, MockCarrier, MockGateway, MockGatewayBuilder, Money, OrderStatus, Orderflow,
    PaymentGateway, PaymentProcessed, PaymentRetrying, Timings,
};
use flowline::{ApiRequest, Clock, Engine, MemoryBackend, Method, RetryPolicy, TenantId};
use serde_json::{json, Value};

/// Serves `router` on a fresh loopback port.
async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// A mock gateway behind a server, and a client pointed at it.
async fn mock(builder: MockGatewayBuilder) -> (MockGateway, HttpGateway, SocketAddr) {
    let gateway = builder.build(Clock::system()).unwrap();
    let addr = serve(gateway_router(gateway.clone())).await;
    let client = HttpGateway::new(format!("http://{addr}")).unwrap();
    (gateway, client, addr)
}

fn x() -> TenantId {
    TenantId::new("X").unwrap()
}

fn request(order: &str, cents: i64) -> ChargeRequest {
    ChargeRequest {
        store: x(),
        order_id: order.to_string(),
        amount: Money::new(cents, Currency::USD),
        idempotency_key: format!("X:{order}:charge"),
    }
}

/// A plain client for raw requests.
fn raw() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Status and JSON body of an answer, checking it is declared JSON.
async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{status}: content type {content_type:?}"
    );
    (status, response.json().await.unwrap())
}

/// `GET http://{addr}{path}`, its status and JSON body.
async fn get(addr: SocketAddr, path: &str) -> (StatusCode, Value) {
    answer(
        raw()
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// `POST http://{addr}{path}` with `body` as JSON, if any.
async fn post(addr: SocketAddr, path: &str, body: Option<&ChargeRequest>) -> (StatusCode, Value) {
    let mut call = raw().post(format!("http://{addr}{path}"));
    if let Some(body) = body {
        call = call.json(body);
    }
    answer(call.send().await.unwrap()).await
}

#[tokio::test]
async fn a_charge_is_captured_once_per_key_and_the_ledger_says_so() {
    let (gateway, client, addr) = mock(MockGateway::builder().seed(3)).await;
    let first = client.charge(&request("o-1", 2_500)).await.unwrap();
    assert!(first.transaction_id.starts_with("TXN-"), "{first:?}");
    assert_eq!(first.amount, Money::new(2_500, Currency::USD));
    let again = client.charge(&request("o-1", 2_500)).await.unwrap();
    assert_eq!(first, again, "the same key answers the same charge");
    assert_eq!(gateway.captures_for(&x(), "o-1"), 1);

    let (status, body) = get(addr, "/ledger").await;
    assert_eq!(status, StatusCode::OK);
    let ledger: Vec<LedgerEntry> = serde_json::from_value(body).unwrap();
    assert_eq!(ledger, gateway.ledger());
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].calls, 2);
    assert_eq!(
        ledger[0].transaction_id.as_deref(),
        Some(first.transaction_id.as_str())
    );

    let (status, body) = get(addr, "/health").await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "status": "ok" })));
}

#[tokio::test]
async fn a_decline_is_a_402_and_stays_declined() {
    let (gateway, client, addr) = mock(MockGateway::builder().approval_rate(0.0)).await;
    for _ in 0..2 {
        let err = client.charge(&request("o-2", 900)).await.unwrap_err();
        assert_eq!(
            err,
            GatewayError::Declined {
                reason: "insufficient funds".into()
            }
        );
        assert!(!err.is_retryable());
    }
    let (status, body) = post(addr, "/charges", Some(&request("o-2", 900))).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        body,
        json!({ "code": "declined", "message": "insufficient funds" })
    );
    assert_eq!(gateway.captures_for(&x(), "o-2"), 0);
    assert_eq!(gateway.ledger()[0].calls, 3);
}

#[tokio::test]
async fn a_key_reused_for_another_charge_is_a_409() {
    let (gateway, client, addr) = mock(MockGateway::builder()).await;
    client.charge(&request("o-3", 1_000)).await.unwrap();
    let mut other = request("o-3", 1_001);
    let err = client.charge(&other).await.unwrap_err();
    assert_eq!(
        err,
        GatewayError::KeyReused {
            key: "X:o-3:charge".into()
        }
    );
    other.order_id = "o-4".into();
    other.amount = Money::new(1_000, Currency::USD);
    let (status, body) = post(addr, "/charges", Some(&other)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "key_reused");
    assert_eq!(body["key"], "X:o-3:charge");
    assert_eq!(
        gateway.ledger().len(),
        1,
        "nothing charged under the reused key"
    );
}

#[tokio::test]
async fn refunds_are_idempotent_and_unknown_transactions_are_404() {
    let (gateway, client, addr) = mock(MockGateway::builder()).await;
    let charge = client.charge(&request("o-5", 4_200)).await.unwrap();
    let refund = client.refund(&charge.transaction_id).await.unwrap();
    assert_eq!(refund.transaction_id, charge.transaction_id);
    assert_eq!(refund.amount, charge.amount);
    assert_eq!(client.refund(&charge.transaction_id).await.unwrap(), refund);
    assert!(gateway.ledger()[0].refunded);

    for unknown in ["TXN-nope", "a/../b", "with space?x=1"] {
        assert_eq!(
            client.refund(unknown).await.unwrap_err(),
            GatewayError::UnknownTransaction(unknown.to_string()),
            "{unknown:?}"
        );
    }
    let (status, body) = post(addr, "/refunds/TXN-nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "unknown_transaction");
}

#[tokio::test]
async fn outages_and_server_errors_are_retryable_and_told_apart() {
    let now = Clock::system().now();
    let (down, client, addr) =
        mock(MockGateway::builder().outage(now, now + Duration::from_secs(3600))).await;
    let err = client.charge(&request("o-6", 100)).await.unwrap_err();
    assert_eq!(err, GatewayError::Unavailable);
    assert!(err.is_retryable());
    assert_eq!(
        client.refund("TXN-any").await.unwrap_err(),
        GatewayError::Unavailable
    );
    let (status, body) = post(addr, "/charges", Some(&request("o-6", 100))).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("unavailable"))
    );
    assert!(down.ledger().is_empty());

    let (failing, client, _) = mock(MockGateway::builder().server_error_rate(1.0)).await;
    let err = client.charge(&request("o-7", 100)).await.unwrap_err();
    assert_eq!(err, GatewayError::ServerError { status: 503 });
    assert!(err.is_retryable());
    assert!(
        failing.ledger().is_empty(),
        "a server error captures nothing"
    );
}

#[tokio::test]
async fn a_lost_response_times_out_and_the_retry_finds_the_charge() {
    let (gateway, client, _) = mock(MockGateway::builder().lost_response_rate(1.0)).await;
    let client = client.timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = client.charge(&request("o-8", 700)).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err, GatewayError::Timeout);
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "the client's timeout ended the wait: {waited:?}"
    );
    assert_eq!(gateway.captures_for(&x(), "o-8"), 1, "the money was taken");
    let retry = client.charge(&request("o-8", 700)).await.unwrap();
    assert_eq!(
        gateway.ledger()[0].transaction_id.as_ref(),
        Some(&retry.transaction_id)
    );
    assert_eq!(gateway.captures_for(&x(), "o-8"), 1, "and taken once");
}

#[tokio::test]
async fn nobody_listening_is_unavailable_and_a_dropped_request_is_a_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let client = HttpGateway::new(format!("http://{closed}")).unwrap();
    assert_eq!(
        client.charge(&request("o-9", 1)).await.unwrap_err(),
        GatewayError::Unavailable
    );

    // A server that reads the request, then hangs up without a word: the
    // request may have been acted on, so it is a timeout, not unavailable.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            // Read what arrives first (the request head), then hang up.
            let mut buf = [0u8; 4096];
            while socket.readable().await.is_ok() {
                match socket.try_read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    _ => break,
                }
            }
        }
    });
    let client = HttpGateway::new(format!("http://{addr}")).unwrap();
    assert_eq!(
        client.charge(&request("o-9", 1)).await.unwrap_err(),
        GatewayError::Timeout
    );
    assert_eq!(
        client.refund("TXN-1").await.unwrap_err(),
        GatewayError::Timeout
    );
}

#[tokio::test]
async fn an_unreadable_success_or_a_wrong_url_is_a_server_error() {
    use axum::routing::post;
    let garbled = axum::Router::new()
        .route(
            "/charges",
            post(|| async { (StatusCode::CREATED, "captured, probably") }),
        )
        .route(
            "/refunds/{id}",
            post(|| async { (StatusCode::OK, "{\"transaction_id\":") }),
        );
    let client = HttpGateway::new(format!("http://{}", serve(garbled).await)).unwrap();
    assert_eq!(
        client.charge(&request("o-10", 1)).await.unwrap_err(),
        GatewayError::ServerError { status: 201 }
    );
    assert_eq!(
        client.refund("TXN-1").await.unwrap_err(),
        GatewayError::ServerError { status: 200 }
    );

    // A base URL with a path the server does not have: retried, never declined.
    let (gateway, _, addr) = mock(MockGateway::builder()).await;
    let lost = HttpGateway::new(format!("http://{addr}/pay")).unwrap();
    let err = lost.charge(&request("o-10", 1)).await.unwrap_err();
    assert_eq!(err, GatewayError::ServerError { status: 404 });
    assert!(err.is_retryable());
    assert!(gateway.ledger().is_empty());
}

#[tokio::test]
async fn bad_input_gets_a_json_4xx_and_charges_nothing() {
    let (gateway, _, addr) = mock(MockGateway::builder()).await;
    let charges = format!("http://{addr}/charges");
    let typed = |content_type: &str, body: String| {
        let call = raw().post(&charges).body(body);
        call.header("content-type", content_type)
    };
    let json = "application/json";
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let cases = [
        (typed(json, "{not json".into()), 400, "invalid_json"),
        (
            typed(json, r#"{"order_id": 1}"#.into()),
            422,
            "invalid_charge",
        ),
        (
            typed("text/plain", "{}".into()),
            415,
            "unsupported_media_type",
        ),
        (
            raw().post(&charges).body("{}"),
            415,
            "unsupported_media_type",
        ),
        (typed(json, big), 413, "body_too_large"),
        (raw().get(format!("http://{addr}/nope")), 404, "not_found"),
        (
            raw().post(format!("http://{addr}/refunds")),
            404,
            "not_found",
        ),
        (raw().get(&charges), 405, "method_not_allowed"),
        (
            raw().delete(format!("http://{addr}/ledger")),
            405,
            "method_not_allowed",
        ),
    ];
    for (n, (call, status, code)) in cases.into_iter().enumerate() {
        let (got, body) = answer(call.send().await.unwrap()).await;
        assert_eq!(
            (got.as_u16(), body["code"].as_str()),
            (status, Some(code)),
            "case {n}: {body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "case {n}: {body}"
        );
    }
    assert!(gateway.ledger().is_empty());
    // And the server still answers.
    let (status, _) = get(addr, "/health").await;
    assert_eq!(status, StatusCode::OK);
}

#[test]
fn bad_urls_are_typed_errors() {
    let invalid = [
        "not a url",
        "http://",
        "http://host/?q=1",
        "http://host/#top",
        "",
    ];
    for url in invalid {
        let err = HttpGateway::new(url).unwrap_err();
        assert!(
            matches!(err, HttpGatewayError::InvalidUrl { .. }),
            "{url:?}: {err}"
        );
    }
    for url in [
        "https://bank.example",
        "ftp://bank.example",
        "mailto:bank@example.com",
    ] {
        let err = HttpGateway::new(url).unwrap_err();
        assert!(
            matches!(err, HttpGatewayError::UnsupportedScheme { .. }),
            "{url:?}: {err}"
        );
    }
    let gateway = HttpGateway::new("http://127.0.0.1:4100/v1/pay").unwrap();
    assert_eq!(gateway.base_url(), "http://127.0.0.1:4100/v1/pay/");
    assert_eq!(gateway.get_timeout(), Duration::from_secs(2));
}

const STORES: [&str; 3] = ["X", "Y", "Z"];
const ORDERS: usize = 300;

/// (store, order id)
type OrderKey = (String, String);

/// What the flow told about payments, from the events it committed.
#[derive(Default)]
struct Seen {
    /// The transaction ids each order's `payment.processed` events carried.
    paid: HashMap<OrderKey, Vec<String>>,
    /// Each gateway error a retry was announced for, counted.
    retried: BTreeMap<String, usize>,
}

fn is_terminal(status: &str) -> bool {
    OrderStatus::ALL
        .into_iter()
        .any(|s| s.as_str() == status && s.is_terminal())
}

fn order_of(entry: &LedgerEntry) -> OrderKey {
    (entry.store.as_str().to_string(), entry.order_id.clone())
}

/// Places the orders in waves of 50, `gap` apart, each order one unit from one
/// of the store's four products, each customer new (nothing for fraud to flag).
async fn place(engine: &Engine, orders: &[OrderKey], gap: Duration) {
    for (wave, chunk) in orders.chunks(50).enumerate() {
        let calls = chunk.iter().enumerate().map(|(i, (store, id))| {
            let n = wave * 50 + i;
            let product = format!("prod-{}-{:03}", store.to_lowercase(), 1 + (n / 3) % 4);
            let body = json!({
                "orderId": id,
                "customerName": format!("customer-{n}"),
                "items": [{ "productId": product, "quantity": 1 }],
            });
            let tenant = TenantId::new(store).unwrap();
            engine.call(ApiRequest::new(Method::Post, "/api/order", tenant).json(body))
        });
        let answers = futures::future::join_all(calls).await;
        for (answer, (store, id)) in answers.into_iter().zip(chunk) {
            assert_eq!(answer.status, 201, "{store}/{id}: {}", answer.body);
        }
        tokio::time::sleep(gap).await;
    }
}

/// Each order's status, as the tracking API tells it.
async fn statuses(engine: &Engine, orders: &[OrderKey]) -> HashMap<OrderKey, String> {
    let mut statuses = HashMap::new();
    for (store, id) in orders {
        let path = format!("/api/order/tracking/{id}");
        let tenant = TenantId::new(store).unwrap();
        let tracking = engine
            .call(ApiRequest::new(Method::Get, path, tenant))
            .await;
        assert_eq!(tracking.status, 200, "{store}/{id}: {}", tracking.body);
        let status = tracking.body["status"].as_str().unwrap().to_string();
        statuses.insert((store.clone(), id.clone()), status);
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_orders_through_a_failing_http_gateway_are_charged_at_most_once() {
    let started = Instant::now();
    let clock = Clock::system();
    let t0 = clock.now();
    let ms = Duration::from_millis;
    let gateway = MockGateway::builder()
        .seed(23)
        .approval_rate(0.85)
        .server_error_rate(0.08)
        .lost_response_rate(0.05)
        .latency(ms(1))
        .outage(t0 + ms(300), t0 + ms(1_300))
        .outage(t0 + ms(2_200), t0 + ms(3_000))
        .build(clock)
        .unwrap();
    let addr = serve(gateway_router(gateway.clone())).await;
    let http = HttpGateway::new(format!("http://{addr}")).unwrap();
    let timings = Timings {
        payment_retry: RetryPolicy::exponential(ms(50), ms(400))
            .max_attempts(60)
            .unlimited_elapsed(),
        ..Timings::default().instant_delivery()
    };
    // Half the delivery attempts fail: an eighth of the parcels go back, and
    // their charges are refunded over HTTP.
    let carrier = MockCarrier::new(23).failed_attempt_rate(0.5);
    let flow = Orderflow::new(http.timeout(ms(400)), carrier).timings(timings);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let hook = seen.clone();
    let engine = Engine::builder(flow.flow().unwrap())
        .backend(MemoryBackend::new())
        .clock(clock)
        .on_emit(move |event| {
            let mut seen = hook.lock().unwrap();
            if let Ok(paid) = event.decode::<PaymentProcessed>() {
                let key = (event.tenant.as_str().to_string(), paid.order_id);
                seen.paid.entry(key).or_default().push(paid.transaction_id);
            } else if let Ok(retrying) = event.decode::<PaymentRetrying>() {
                *seen.retried.entry(retrying.error).or_default() += 1;
            }
        })
        .start()
        .await
        .unwrap();
    let stores = orderflow::demo_stores();
    orderflow::bootstrap(&engine, &stores).await.unwrap();
    orderflow::seed_demo(&engine).await.unwrap();
    engine.wait_idle().await;
    // Enough of every product for every order: each order reaches payment.
    for store in STORES {
        let tenant = TenantId::new(store).unwrap();
        for product in 1..=4 {
            let id = format!("prod-{}-{product:03}", store.to_lowercase());
            orderflow::restock(&engine, &tenant, &id, 30).await.unwrap();
        }
    }
    engine.wait_idle().await;

    // Six waves 400 ms apart, so that payments meet both outages.
    let orders: Vec<OrderKey> = (0..ORDERS)
        .map(|n| (STORES[n % 3].to_string(), format!("o-{n:04}")))
        .collect();
    place(&engine, &orders, ms(400)).await;

    // Until every order is terminal and every returned parcel refunded.
    let deadline = started + Duration::from_secs(45);
    let statuses = loop {
        let statuses = statuses(&engine, &orders).await;
        let terminal = statuses.values().all(|s| is_terminal(s));
        let refunded = gateway
            .ledger()
            .iter()
            .filter(|e| statuses[&order_of(e)] == "returned")
            .all(|e| e.refunded);
        if (terminal && refunded) || Instant::now() > deadline {
            break statuses;
        }
        tokio::time::sleep(ms(250)).await;
    };
    tokio::time::timeout(Duration::from_secs(10), engine.wait_idle())
        .await
        .expect("the engine goes idle");

    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for status in statuses.values() {
        *counts.entry(status.as_str()).or_default() += 1;
    }
    let stuck: Vec<_> = statuses
        .iter()
        .filter(|(_, s)| !is_terminal(s))
        .take(5)
        .collect();
    assert!(
        stuck.is_empty(),
        "not terminal after 45 s: {stuck:?} of {counts:?}"
    );

    // The gateway's books, read over the wire, are the mock's own.
    let (status, wire) = get(addr, "/ledger").await;
    assert_eq!(status, StatusCode::OK);
    let ledger = gateway.ledger();
    assert_eq!(
        serde_json::from_value::<Vec<LedgerEntry>>(wire).unwrap(),
        ledger
    );
    assert!(ledger.iter().all(|e| statuses.contains_key(&order_of(e))));

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut captures: HashMap<OrderKey, Vec<&LedgerEntry>> = HashMap::new();
    for entry in ledger.iter().filter(|e| e.transaction_id.is_some()) {
        captures.entry(order_of(entry)).or_default().push(entry);
    }
    for (order, status) in &statuses {
        let (store, id) = order;
        let taken = captures.get(order).map_or(0, Vec::len);
        assert!(taken <= 1, "{store}/{id} captured {taken} times");
        if let Some(reported) = seen.paid.get(order) {
            assert_eq!(reported.len(), 1, "{store}/{id} reported paid {reported:?}");
            assert_eq!(
                taken, 1,
                "{store}/{id} reported paid, captured {taken} times"
            );
            let entry = captures[order][0];
            assert_eq!(
                entry.transaction_id.as_ref(),
                Some(&reported[0]),
                "{store}/{id}"
            );
            assert!(
                ["delivered", "returned"].contains(&status.as_str()),
                "{store}/{id}: {status}"
            );
            let returned = status == "returned";
            assert_eq!(entry.refunded, returned, "{store}/{id} {status}: refunded?");
        } else {
            // Money taken for an order the flow thinks unpaid would be the
            // double charge in another guise.
            assert_eq!(
                taken, 0,
                "{store}/{id} ({status}) captured, never reported paid"
            );
            assert_eq!(status, "failed", "{store}/{id} never paid, {status}");
            let declined = ledger
                .iter()
                .any(|e| &order_of(e) == order && e.declined.is_some());
            assert!(
                declined,
                "{store}/{id} failed, but the gateway declined nothing"
            );
        }
    }

    // The faults really happened, and the flow rode them out.
    let retried = |what: &str| -> usize {
        let matching = seen
            .retried
            .iter()
            .filter(|(error, _)| error.contains(what));
        matching.map(|(_, n)| n).sum()
    };
    let (outages, lost) = (retried("unavailable"), retried("did not answer"));
    let server_errors = retried("answered 503");
    assert!(
        outages > 0 && lost > 0 && server_errors > 0,
        "retries: {:?}",
        seen.retried
    );
    let declined = ledger.iter().filter(|e| e.declined.is_some()).count();
    let count = |status: &str| counts.get(status).copied().unwrap_or(0);
    assert!(
        declined > 0 && count("delivered") > 0 && count("returned") > 0,
        "{counts:?}"
    );
    let calls: u32 = ledger.iter().map(|e| e.calls).sum();
    println!(
        "{ORDERS} orders in {:.1} s: {counts:?}; {} charges decided in {calls} charge calls; \
         retries after an outage {outages}, a lost answer {lost}, a 5xx {server_errors}",
        started.elapsed().as_secs_f64(),
        ledger.len(),
    );
    engine.shutdown(Duration::from_secs(5)).await;
}
