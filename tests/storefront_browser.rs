//! The store front in a real browser, from another origin: the page is
//! served on one loopback port and the API on another, which allows the
//! page's origin (CORS). In headless Chromium the page lists store X's
//! catalogue, places an order, follows it live to delivered over server-sent
//! events, shows it on the dashboard with an alert pop-up, and, switched to
//! store Y, shows none of X's data. Then the same with API keys required,
//! the page holding each store's key.
//!
//! The screenshot is written to `storefront.png` in the target directory
//! (`FLOWLINE_STOREFRONT_SCREENSHOT` for another path). See
//! `support/browser.rs` for what the browser needs.

use std::net::SocketAddr;
use std::time::Duration;

use fantoccini::Locator;
use flowline::http::{api_router, ApiKeys, Cors, HttpOptions, KeyOwner};
use flowline::orderflow::{
    self, live_router, storefront_router, MockCarrier, MockGateway, Orderflow, Timings,
    STORE_HEADER,
};
use flowline::{Clock, TenantId};

#[path = "support/browser.rs"]
mod browser;
use browser::{browser, eventually, text};

#[path = "support/orderflow_demo.rs"]
mod demo;
use demo::demo_engine;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_places_and_tracks_an_order_live() {
    places_and_tracks_an_order(false).await;
}

/// The same with API keys required: the page has each store's key from its
/// URL's fragment and reads the live streams with `fetch`, as an
/// `EventSource` cannot send the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_the_page_acts_with_each_store_s_key() {
    places_and_tracks_an_order(true).await;
}

async fn places_and_tracks_an_order(with_keys: bool) {
    let gateway = MockGateway::builder().build(Clock::system()).unwrap();
    let timings = Timings {
        ship_after: Duration::from_millis(300),
        in_transit_after: Duration::from_millis(300),
        out_for_delivery_after: Duration::from_millis(300),
        redeliver_after: Duration::from_millis(300),
        ..Timings::default()
    };
    let flow = Orderflow::new(gateway, MockCarrier::new(1))
        .timings(timings)
        .flow()
        .unwrap();
    let engine = demo_engine(flow).await;

    // The page's origin, then the API that allows it.
    let pages = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", pages.local_addr().unwrap());
    let mut options = HttpOptions::new()
        .tenant_header(STORE_HEADER)
        .cors(Cors::new().allow_origin(&page_origin).unwrap());
    let mut fragment = String::new();
    if with_keys {
        let keys = ApiKeys::new(engine.clone());
        let scopes = [orderflow::read_scope(), orderflow::write_scope()];
        let mut given = Vec::new();
        for id in ["X", "Y"] {
            let store = KeyOwner::Store(TenantId::new(id).unwrap());
            let key = keys.create(store, &scopes, "page").await.unwrap();
            given.push(format!("{id}:{}", key.secret()));
        }
        options = options.api_keys(orderflow::auth_options(keys));
        fragment = format!("#keys={}", given.join(","));
    }
    let api = live_router(engine.clone(), &options).merge(api_router(engine.clone(), options));
    let apis = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_origin = format!("http://{}", apis.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(
            apis,
            api.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    tokio::spawn(async move { axum::serve(pages, storefront_router()).await });

    let (_driver, client) = browser(1400, 1200).await;
    client
        .goto(&format!(
            "{page_origin}/?api={api_origin}&store=X{fragment}"
        ))
        .await
        .unwrap();

    // The catalogue, read across origins.
    let quantity = client
        .wait()
        .for_element(Locator::Css("#products input[data-product=\"prod-x-001\"]"))
        .await
        .expect("store X's catalogue");
    eventually("the store's name", || {
        let c = client.clone();
        async move { text(&c, "#store-name").await != "Store" }
    })
    .await;
    quantity.clear().await.unwrap();
    quantity.send_keys("2").await.unwrap();
    client
        .find(Locator::Css("#place"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Placed, then followed live to the end.
    eventually("the order placed", || {
        let c = client.clone();
        async move { text(&c, "#order-message").await.contains("placed") }
    })
    .await;
    eventually("the order delivered", || {
        let c = client.clone();
        async move {
            text(&c, "#tracking-status")
                .await
                .eq_ignore_ascii_case("delivered")
        }
    })
    .await;
    let timeline = text(&client, "#timeline").await.to_lowercase();
    for milestone in ["order created", "payment received", "shipped", "delivered"] {
        assert!(timeline.contains(milestone), "{milestone} in {timeline}");
    }
    let order_id = text(&client, "#tracking-id").await;
    assert!(order_id.starts_with("web-"), "{order_id}");

    // The dashboard and the alert pop-up.
    eventually("the order on the dashboard", || {
        let (c, id) = (client.clone(), order_id.clone());
        async move { text(&c, "#recent").await.contains(&id) }
    })
    .await;
    assert_eq!(text(&client, "#total-orders").await, "1");
    eventually("an alert pop-up", || {
        let c = client.clone();
        async move { text(&c, "#toasts").await.contains("New Order Created") }
    })
    .await;
    assert_eq!(text(&client, "#live").await, "live");

    if with_keys {
        assert!(
            !client
                .current_url()
                .await
                .unwrap()
                .as_str()
                .contains("flk_"),
            "the keys leave the address bar"
        );
    }
    let png = client.screenshot().await.unwrap();
    let name = if with_keys {
        "storefront-keys.png"
    } else {
        "storefront.png"
    };
    let path = std::env::var("FLOWLINE_STOREFRONT_SCREENSHOT")
        .map(|path| path.replace("storefront.png", name))
        .unwrap_or_else(|_| format!("{}/../{name}", env!("CARGO_TARGET_TMPDIR")));
    std::fs::write(&path, png).unwrap();
    println!("store front screenshot: {path}");

    // Store Y sees its own data only.
    client
        .find(Locator::Css("nav button[data-store=\"Y\"]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("store Y's catalogue", || {
        let c = client.clone();
        async move {
            c.find(Locator::Css("#products input[data-product=\"prod-y-001\"]"))
                .await
                .is_ok()
        }
    })
    .await;
    eventually("store Y's empty dashboard", || {
        let c = client.clone();
        async move { text(&c, "#total-orders").await == "0" }
    })
    .await;
    assert!(!text(&client, "#recent").await.contains(&order_id));
    assert!(!text(&client, "#products").await.contains("prod-x-001"));
    client.close().await.unwrap();
}
