//! What the intake API accepts: the request body checked field by field, then
//! priced from the store's catalogue (SEED_SPEC §8.5: no empty orders, integer
//! quantities, known products, totals computed by us).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::catalogue::Product;
use super::money::{Currency, Money};

/// Longest order id accepted.
pub const MAX_ORDER_ID_LEN: usize = 64;
/// Most lines in one order.
pub const MAX_LINES: usize = 100;
/// Most units of one product in one line.
pub const MAX_QUANTITY: u64 = 10_000;
/// Longest customer name accepted.
pub const MAX_CUSTOMER_LEN: usize = 200;

/// A request field is missing or wrong. The API answers 422 with `field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Where, as a path into the body: `items[1].quantity`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

/// Which product a line names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductRef {
    /// By id (`prod-x-001`), as the intake API takes it.
    Id(String),
    /// By name, as the legacy submission API took it.
    Name(String),
}

/// One requested line, before pricing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestedLine {
    /// The product.
    pub product: ProductRef,
    /// Units, at least 1.
    pub quantity: u32,
}

/// A well-formed order request, before pricing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    /// The client's order id.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// What, at least one line.
    pub lines: Vec<RequestedLine>,
    /// The total the client expects, if it sent one.
    pub client_total: Option<Money>,
}

/// A priced line. Its keys are camelCase in JSON, as every answer's are;
/// the snake_case keys earlier builds stored still read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    /// The product's id.
    #[serde(alias = "product_id")]
    pub product_id: String,
    /// The product's name.
    #[serde(alias = "product_name")]
    pub product_name: String,
    /// Units.
    pub quantity: u32,
    /// The catalogue price per unit.
    #[serde(alias = "unit_price")]
    pub unit_price: Money,
    /// `unit_price × quantity`.
    #[serde(alias = "line_total")]
    pub line_total: Money,
}

/// An order that passed validation and was priced from the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedOrder {
    /// The client's order id.
    pub order_id: String,
    /// Who ordered.
    pub customer: String,
    /// The lines, in request order.
    pub lines: Vec<OrderLine>,
    /// The sum of the lines.
    pub total: Money,
}

/// Reads an intake body:
/// `{"orderId", "customerName", "items": [{"productId", "quantity"}], "total"?: {"minor", "currency"}}`.
///
/// A line may name its product by `productName` instead of `productId`.
///
/// ```
/// use flowline::orderflow::parse_order;
/// let body = serde_json::json!({
///     "orderId": "o-1",
///     "customerName": "Ada",
///     "items": [{ "productId": "prod-x-001", "quantity": 2 }],
/// });
/// let request = parse_order(&body)?;
/// assert_eq!(request.lines[0].quantity, 2);
///
/// let bad = serde_json::json!({ "orderId": "o-1", "customerName": "Ada", "items": [] });
/// assert_eq!(parse_order(&bad).unwrap_err().field, "items");
/// # Ok::<(), flowline::orderflow::ValidationError>(())
/// ```
///
/// # Errors
/// [`ValidationError`] naming the first field that is wrong.
pub fn parse_order(body: &Value) -> Result<OrderRequest, ValidationError> {
    let body = body
        .as_object()
        .ok_or_else(|| invalid("body", "must be a JSON object"))?;
    let order_id = match body.get("orderId") {
        Some(Value::String(id)) => id.clone(),
        Some(_) => return Err(invalid("orderId", "must be a string")),
        None => return Err(invalid("orderId", "is required")),
    };
    let id_ok = !order_id.is_empty()
        && order_id.len() <= MAX_ORDER_ID_LEN
        && order_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !id_ok {
        return Err(invalid(
            "orderId",
            format!("must be 1 to {MAX_ORDER_ID_LEN} ASCII letters, digits, '-', '_', '.' or ':'"),
        ));
    }
    let customer = match body.get("customerName") {
        Some(Value::String(name)) => name.trim().to_string(),
        Some(_) => return Err(invalid("customerName", "must be a string")),
        None => return Err(invalid("customerName", "is required")),
    };
    if customer.is_empty() || customer.chars().count() > MAX_CUSTOMER_LEN {
        return Err(invalid(
            "customerName",
            format!("must be 1 to {MAX_CUSTOMER_LEN} characters, not only spaces"),
        ));
    }
    let items = match body.get("items") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("items", "must be an array")),
        None => return Err(invalid("items", "is required")),
    };
    if items.is_empty() || items.len() > MAX_LINES {
        return Err(invalid(
            "items",
            format!("must hold 1 to {MAX_LINES} lines"),
        ));
    }
    let mut lines: Vec<RequestedLine> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let line = parse_line(i, item)?;
        if lines.iter().any(|l| l.product == line.product) {
            let field = match line.product {
                ProductRef::Id(_) => format!("items[{i}].productId"),
                ProductRef::Name(_) => format!("items[{i}].productName"),
            };
            return Err(invalid(
                field,
                "product listed twice; give one line per product",
            ));
        }
        lines.push(line);
    }
    let client_total = match body.get("total") {
        None | Some(Value::Null) => None,
        Some(total) => Some(parse_money(total).map_err(|message| invalid("total", message))?),
    };
    Ok(OrderRequest {
        order_id,
        customer,
        lines,
        client_total,
    })
}

fn parse_line(i: usize, item: &Value) -> Result<RequestedLine, ValidationError> {
    let item = item
        .as_object()
        .ok_or_else(|| invalid(format!("items[{i}]"), "must be an object"))?;
    let text = |key: &str| -> Result<Option<String>, ValidationError> {
        match item.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Some(_) => Err(invalid(
                format!("items[{i}].{key}"),
                "must be a non-empty string",
            )),
        }
    };
    let product = match (text("productId")?, text("productName")?) {
        (Some(id), None) => ProductRef::Id(id),
        (None, Some(name)) => ProductRef::Name(name),
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("items[{i}]"),
                "give productId or productName, not both",
            ))
        }
        (None, None) => return Err(invalid(format!("items[{i}].productId"), "is required")),
    };
    let field = format!("items[{i}].quantity");
    let quantity = match item.get("quantity") {
        Some(Value::Number(n)) => n.as_u64().filter(|q| (1..=MAX_QUANTITY).contains(q)),
        Some(_) => return Err(invalid(field, "must be a number")),
        None => return Err(invalid(field, "is required")),
    };
    let quantity = quantity
        .and_then(|q| u32::try_from(q).ok())
        .ok_or_else(|| {
            invalid(
                field,
                format!("must be a whole number from 1 to {MAX_QUANTITY}"),
            )
        })?;
    Ok(RequestedLine { product, quantity })
}

fn parse_money(value: &Value) -> Result<Money, String> {
    let minor = value
        .get("minor")
        .and_then(Value::as_i64)
        .ok_or("must be {\"minor\": whole minor units, \"currency\": \"USD\"}")?;
    let currency = value
        .get("currency")
        .and_then(Value::as_str)
        .ok_or("must name its currency")?;
    let currency = Currency::new(currency).map_err(|e| e.to_string())?;
    Ok(Money::new(minor, currency))
}

/// Prices a request from the store's catalogue.
///
/// # Errors
/// [`ValidationError`] for a product the store does not sell, a catalogue in
/// mixed currencies, or a client total that differs from the computed one.
pub fn price_order(
    request: &OrderRequest,
    catalogue: &[Product],
) -> Result<PricedOrder, ValidationError> {
    let mut lines = Vec::with_capacity(request.lines.len());
    let mut total: Option<Money> = None;
    for (i, line) in request.lines.iter().enumerate() {
        let (field, product) = match &line.product {
            ProductRef::Id(id) => (
                format!("items[{i}].productId"),
                catalogue.iter().find(|p| &p.id == id),
            ),
            ProductRef::Name(name) => (
                format!("items[{i}].productName"),
                catalogue.iter().find(|p| p.name.eq_ignore_ascii_case(name)),
            ),
        };
        let product = product.ok_or_else(|| {
            let what = match &line.product {
                ProductRef::Id(id) | ProductRef::Name(id) => id,
            };
            invalid(
                field.clone(),
                format!("{what:?} is not in this store's catalogue"),
            )
        })?;
        // The same product named two ways (its id and its name, or its name in
        // another case) is still one product: two lines would reserve it twice.
        if lines.iter().any(|l: &OrderLine| l.product_id == product.id) {
            return Err(invalid(
                field,
                "product listed twice; give one line per product",
            ));
        }
        let line_total = product
            .price
            .times(line.quantity)
            .map_err(|e| invalid(format!("items[{i}].quantity"), e.to_string()))?;
        total = Some(match total {
            None => line_total,
            Some(sum) => sum
                .plus(line_total)
                .map_err(|e| invalid(field.clone(), e.to_string()))?,
        });
        lines.push(OrderLine {
            product_id: product.id.clone(),
            product_name: product.name.clone(),
            quantity: line.quantity,
            unit_price: product.price,
            line_total,
        });
    }
    let total = total.ok_or_else(|| invalid("items", "must hold at least one line"))?;
    if let Some(client) = request.client_total {
        if client != total {
            return Err(invalid(
                "total",
                format!("{client} does not match {total}, the total of the catalogue prices"),
            ));
        }
    }
    Ok(PricedOrder {
        order_id: request.order_id.clone(),
        customer: request.customer.clone(),
        lines,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orderflow::catalogue::demo_catalogue;
    use serde_json::json;

    #[test]
    fn a_line_is_camel_case_and_still_reads_the_snake_case_earlier_builds_stored() {
        let line = OrderLine {
            product_id: "prod-x-001".into(),
            product_name: "Tea".into(),
            quantity: 2,
            unit_price: Money::new(9_900, Currency::USD),
            line_total: Money::new(19_800, Currency::USD),
        };
        let written = serde_json::to_value(&line).unwrap();
        assert_eq!(written["lineTotal"]["minor"], 19_800);
        assert_eq!(written["productId"], "prod-x-001");
        let stored = json!({
            "product_id": "prod-x-001",
            "product_name": "Tea",
            "quantity": 2,
            "unit_price": { "minor": 9_900, "currency": "USD" },
            "line_total": { "minor": 19_800, "currency": "USD" },
        });
        assert_eq!(serde_json::from_value::<OrderLine>(stored).unwrap(), line);
    }

    fn store_x() -> Vec<Product> {
        demo_catalogue()[0]
            .products
            .iter()
            .map(|p| p.product.clone())
            .collect()
    }

    fn body(items: Value) -> Value {
        json!({ "orderId": "o-1", "customerName": "Ada", "items": items })
    }

    fn field_of(body: &Value) -> String {
        parse_order(body).unwrap_err().field
    }

    #[test]
    fn a_good_order_is_priced_from_the_catalogue() {
        let request = parse_order(&json!({
            "orderId": "o-1",
            "customerName": "  Ada  ",
            "items": [
                { "productId": "prod-x-001", "quantity": 2 },
                { "productName": "motia pro headset", "quantity": 1 },
            ],
            "total": { "minor": 29_700, "currency": "USD" },
        }))
        .unwrap();
        assert_eq!(request.customer, "Ada");
        let priced = price_order(&request, &store_x()).unwrap();
        assert_eq!(priced.total.to_string(), "297.00 USD");
        assert_eq!(priced.lines[1].product_id, "prod-x-003");
        assert_eq!(
            priced.lines[0].line_total,
            Money::new(19_800, Currency::USD)
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (json!([]), "body"),
            (json!({ "customerName": "Ada", "items": [] }), "orderId"),
            (
                json!({ "orderId": "o 1", "customerName": "Ada", "items": [] }),
                "orderId",
            ),
            (
                json!({ "orderId": "o-1", "customerName": "   ", "items": [] }),
                "customerName",
            ),
            (body(json!([])), "items"),
            (body(json!("lots")), "items"),
            (body(json!([42])), "items[0]"),
            (body(json!([{ "quantity": 1 }])), "items[0].productId"),
            (
                body(json!([{ "productId": "prod-x-001", "productName": "x", "quantity": 1 }])),
                "items[0]",
            ),
            (
                body(json!([{ "productId": "prod-x-001" }])),
                "items[0].quantity",
            ),
            (
                body(json!([{ "productId": "prod-x-001", "quantity": 0 }])),
                "items[0].quantity",
            ),
            (
                body(json!([{ "productId": "prod-x-001", "quantity": 1.5 }])),
                "items[0].quantity",
            ),
            (
                body(json!([{ "productId": "prod-x-001", "quantity": -2 }])),
                "items[0].quantity",
            ),
            (
                body(json!([{ "productId": "prod-x-001", "quantity": "2" }])),
                "items[0].quantity",
            ),
            (
                body(json!([{ "productId": "prod-x-001", "quantity": 10_001 }])),
                "items[0].quantity",
            ),
            (
                body(json!([
                    { "productId": "prod-x-001", "quantity": 1 },
                    { "productId": "prod-x-001", "quantity": 1 },
                ])),
                "items[1].productId",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(field_of(&body), field, "{body}");
        }
        let with_total = json!({
            "orderId": "o-1", "customerName": "Ada",
            "items": [{ "productId": "prod-x-001", "quantity": 1 }],
            "total": { "minor": 1.5, "currency": "USD" },
        });
        assert_eq!(field_of(&with_total), "total");
    }

    #[test]
    fn one_product_named_two_ways_is_refused_by_pricing() {
        let aliased = parse_order(&body(json!([
            { "productId": "prod-x-001", "quantity": 1 },
            { "productName": "MOTIA SMARTWATCH V2", "quantity": 2 },
        ])))
        .unwrap();
        let err = price_order(&aliased, &store_x()).unwrap_err();
        assert_eq!(err.field, "items[1].productName");
        assert!(err.message.contains("listed twice"), "{err}");
    }

    #[test]
    fn unknown_products_and_wrong_totals_are_refused_by_pricing() {
        let unknown =
            parse_order(&body(json!([{ "productId": "prod-y-001", "quantity": 1 }]))).unwrap();
        let err = price_order(&unknown, &store_x()).unwrap_err();
        assert_eq!(err.field, "items[0].productId");
        assert!(err.message.contains("prod-y-001"), "{err}");
        let wrong_total = parse_order(&json!({
            "orderId": "o-1", "customerName": "Ada",
            "items": [{ "productId": "prod-x-001", "quantity": 1 }],
            "total": { "minor": 100, "currency": "USD" },
        }))
        .unwrap();
        let err = price_order(&wrong_total, &store_x()).unwrap_err();
        assert_eq!(err.field, "total");
        assert_eq!(
            err.to_string(),
            "total: 1.00 USD does not match 99.00 USD, the total of the catalogue prices"
        );
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "[a-z0-9 -]{0,12}".prop_map(Value::from),
            Just(Value::from("prod-x-001")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("orderId".to_string()),
                            Just("customerName".to_string()),
                            Just("items".to_string()),
                            Just("productId".to_string()),
                            Just("productName".to_string()),
                            Just("quantity".to_string()),
                            Just("total".to_string()),
                            "[a-z]{1,6}",
                        ],
                        inner,
                    ),
                    0..6
                )
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_body_gets_an_answer_never_a_panic(body in any_json()) {
            match parse_order(&body) {
                Ok(request) => {
                    proptest::prop_assert!(!request.lines.is_empty());
                    for line in &request.lines {
                        proptest::prop_assert!((1..=MAX_QUANTITY).contains(&u64::from(line.quantity)));
                    }
                    let _ = price_order(&request, &store_x());
                }
                Err(err) => proptest::prop_assert!(!err.field.is_empty()),
            }
        }
    }
}
