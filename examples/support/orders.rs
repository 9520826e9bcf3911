//! The order load of `examples/orderflow_throughput.rs` and
//! `examples/orderflow_soak.rs`: three stores with their catalogues, order `n`
//! of the sequence, a wave of orders placed through the order API by
//! concurrent callers, and the count of delivered orders.
//!
//! Included from both with `#[path = "support/orders.rs"] mod orders;`. It is
//! not an example of its own: cargo only discovers `examples/*.rs` and
//! `examples/*/main.rs`.

use std::ops::Range;

use flowline::orderflow::{Product, SeedCatalogue, SeedProduct, DEMO_PRICE};
use flowline::{ApiRequest, Engine, Method, TenantId};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

/// The stores orders go to, in turn.
pub(crate) const STORES: [&str; 3] = ["X", "Y", "Z"];

/// `products` products of `store`, each with stock that no run uses up.
pub(crate) fn catalogue(store: &str, products: usize) -> SeedCatalogue {
    let s = store.to_lowercase();
    SeedCatalogue {
        products: (1..=products)
            .map(|i| SeedProduct {
                product: Product {
                    id: format!("p-{s}-{i:04}"),
                    name: format!("Product {i} of {store}"),
                    price: DEMO_PRICE,
                    threshold: 5,
                },
                stock: 10_000_000,
            })
            .collect(),
    }
}

/// Order `n`: its store and the body of its `POST /api/order`. One or two
/// lines, of the store's products in turn.
pub(crate) fn order(n: usize, products: usize) -> (&'static str, Value) {
    let store = STORES[n % STORES.len()];
    let s = store.to_lowercase();
    let first = (n / STORES.len()) % products;
    let mut items =
        vec![json!({ "productId": format!("p-{s}-{:04}", first + 1), "quantity": 1 + n % 3 })];
    if n.is_multiple_of(2) && products > 1 {
        let second = (first + 1 + n % (products - 1)) % products;
        items.push(json!({ "productId": format!("p-{s}-{:04}", second + 1), "quantity": 1 }));
    }
    let body = json!({
        "orderId": format!("o-{n}"),
        // Many customers: the fraud rules run, and hold nobody.
        "customerName": format!("customer-{}", n % 5_000),
        "items": items,
    });
    (store, body)
}

/// Places orders `range` through `POST /api/order`, `concurrency` callers at
/// once; returns how many the API refused (any answer but `201`).
pub(crate) async fn place(
    engine: &Engine,
    range: Range<usize>,
    products: usize,
    concurrency: usize,
) -> usize {
    stream::iter(range)
        .map(|n| {
            let (store, body) = order(n, products);
            async move {
                let request = ApiRequest::new(
                    Method::Post,
                    "/api/order",
                    TenantId::new(store).expect("store id"),
                )
                .json(body);
                engine.call(request).await.status != 201
            }
        })
        .buffer_unordered(concurrency)
        .filter(|refused| std::future::ready(*refused))
        .count()
        .await
}

/// Orders delivered so far, over every store (the dashboards' counters).
pub(crate) async fn delivered(engine: &Engine) -> i64 {
    let mut sum = 0;
    for store in STORES {
        let request = ApiRequest::new(
            Method::Get,
            "/api/dashboard/stats",
            TenantId::new(store).expect("store id"),
        );
        sum += engine.call(request).await.body["ordersByStatus"]["delivered"]
            .as_i64()
            .unwrap_or(0);
    }
    sum
}
