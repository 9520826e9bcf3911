//! The OpenAPI document and the routes agree: every route of the orderflow
//! (its API steps and its live streams) is in the document with its method,
//! and every operation in the document is a route.

use std::collections::BTreeSet;

use flowline::orderflow::{MockCarrier, MockGateway, Orderflow, OPENAPI};
use flowline::Clock;
use serde_json::Value;

/// The live routes, served beside the API steps.
const LIVE: [(&str, &str); 2] = [
    ("get", "/api/order/{orderId}/events"),
    ("get", "/api/alerts/stream"),
];

#[test]
fn every_route_is_documented_and_every_operation_is_a_route() {
    let spec: Value = serde_json::from_str(OPENAPI).expect("the document is JSON");
    assert_eq!(spec["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let gateway = MockGateway::builder().build(Clock::system()).unwrap();
    let flow = Orderflow::new(gateway, MockCarrier::new(1)).flow().unwrap();
    let mut routes: BTreeSet<(String, String)> = flow
        .api_routes()
        .into_iter()
        .map(|(_, method, pattern)| (method.to_string().to_lowercase(), pattern.to_string()))
        .collect();
    routes.extend(LIVE.iter().map(|(m, p)| (m.to_string(), p.to_string())));
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty(),
        "routes not in the document: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "operations no route serves: {unserved:?}"
    );
}

#[test]
fn every_operation_names_the_store_and_every_reference_resolves() {
    let spec: Value = serde_json::from_str(OPENAPI).unwrap();
    let text = OPENAPI;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let parameters = operation["parameters"].to_string();
            assert!(
                parameters.contains("Store"),
                "{method} {path} does not name the store"
            );
            assert!(
                operation["responses"]
                    .as_object()
                    .is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
        }
    }
    // Every `$ref` points at something the components hold.
    for piece in text.split("\"$ref\": \"#/components/").skip(1) {
        let target = piece.split('"').next().unwrap();
        let mut node = &spec["components"];
        for part in target.split('/') {
            node = &node[part];
        }
        assert!(!node.is_null(), "dangling $ref {target}");
    }
}
