//! Order JSON validation: `parse_order` then `price_order`, on any bytes.
//!
//! The body is read as the intake API reads it (JSON first: what is not JSON
//! is a `400` before validation). An accepted request must meet every limit
//! the docs state, and a priced one must add up.

use flowline::orderflow::{
    parse_order, price_order, Currency, Money, OrderRequest, Product, ProductRef, MAX_CUSTOMER_LEN,
    MAX_LINES, MAX_ORDER_ID_LEN, MAX_QUANTITY,
};

/// Validates and prices `data` as an order body.
pub fn check(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let request = match parse_order(&body) {
        Ok(request) => request,
        Err(err) => {
            assert!(!err.field.is_empty(), "an error names its field: {err:?}");
            return;
        }
    };
    accepted_within_limits(&request);
    for catalogue in [catalogue(1_999), catalogue(i64::MAX / 3)] {
        match price_order(&request, &catalogue) {
            Ok(priced) => {
                let mut sum: Option<Money> = None;
                for line in &priced.lines {
                    let line_total = line.unit_price.times(line.quantity).expect("priced once");
                    assert_eq!(line.line_total, line_total, "{line:?}");
                    sum = Some(match sum {
                        None => line_total,
                        Some(s) => s.plus(line_total).expect("summed once"),
                    });
                }
                assert_eq!(Some(priced.total), sum, "the total is the sum of the lines");
                assert_eq!(priced.lines.len(), request.lines.len());
            }
            Err(err) => assert!(!err.field.is_empty(), "{err:?}"),
        }
    }
}

fn accepted_within_limits(request: &OrderRequest) {
    let id = &request.order_id;
    assert!(!id.is_empty() && id.len() <= MAX_ORDER_ID_LEN, "{id:?}");
    assert!(
        id.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')),
        "{id:?}"
    );
    let customer = &request.customer;
    assert!(!customer.trim().is_empty(), "{customer:?}");
    assert!(customer.chars().count() <= MAX_CUSTOMER_LEN);
    assert!((1..=MAX_LINES).contains(&request.lines.len()));
    for (i, line) in request.lines.iter().enumerate() {
        assert!(
            (1..=MAX_QUANTITY).contains(&u64::from(line.quantity)),
            "{line:?}"
        );
        let (ProductRef::Id(name) | ProductRef::Name(name)) = &line.product;
        assert!(!name.trim().is_empty(), "{line:?}");
        assert!(
            !request.lines[..i].iter().any(|l| l.product == line.product),
            "a product listed twice was accepted: {request:?}"
        );
    }
}

/// The demo store's products, priced at `unit` minor units (a huge one
/// makes a line or the total overflow).
fn catalogue(unit: i64) -> Vec<Product> {
    let usd = Currency::new("USD").expect("a valid currency");
    ["prod-x-001", "prod-x-002", "prod-x-003"]
        .iter()
        .enumerate()
        .map(|(i, id)| Product {
            id: id.to_string(),
            name: format!("Product {}", i + 1),
            price: Money::new(unit, usd),
            threshold: 5,
        })
        .collect()
}
