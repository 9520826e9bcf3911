//! Step 2 of 14: Legacy submission: `POST /api/order/submit` (the seed's
//! `order_submision_api`).
//!
//! Takes the seed's payload (`items[].productName`, a client `totalAmount` in
//! major units) and answers in the seed's shape, through the same intake path
//! as the order API: the same checks, prices from the catalogue, and a client
//! total that disagrees is refused instead of trusted.

use serde_json::{json, Map, Value};

use crate::api::{ApiRequest, ApiResponse, Method};
use crate::engine::Step;
use crate::engine::StepContext;
use crate::orderflow::events::OrderCreated;
use crate::orderflow::money::{Currency, Money};
use crate::orderflow::validate::{parse_order, OrderRequest, ValidationError};

use super::order_create_api::{accept, idempotency_key, Intake};
use super::Deps;
use crate::orderflow::model::Order;

pub(crate) fn step(deps: &Deps) -> Step {
    let mut step = Step::api("order_submission_api", Method::Post, "/api/order/submit")
        .emits::<OrderCreated>();
    if let Some(limit) = deps.limits.intake_limit() {
        step = step.limit(limit);
    }
    step.handle(|ctx: StepContext, request: ApiRequest| async move {
        let key = match idempotency_key(&request) {
            Ok(key) => key,
            Err(response) => return Ok(legacy_error(&response)),
        };
        let currency = match crate::orderflow::http::settings(&ctx).await? {
            Ok(settings) => settings.currency,
            Err(response) => return Ok(legacy_error(&response)),
        };
        let parse = |body: &Value| parse_legacy(body, currency);
        let received = |_: &Order| ok("Order received successfully");
        Ok(match accept(&ctx, &request, key, parse, received).await? {
            Intake::Created(response) | Intake::Replayed(response) => response,
            Intake::Exists(_) => ok("Order already exists"),
            Intake::Refused(response) => legacy_error(&response),
        })
    })
}

fn ok(message: &str) -> ApiResponse {
    ApiResponse::ok(&json!({ "success": true, "message": message, "status": "success" }))
}

/// The seed's error shape, `{"message", "status": "error"}`, keeping our status
/// code, machine-readable code and field.
fn legacy_error(response: &ApiResponse) -> ApiResponse {
    let mut body = Map::new();
    body.insert("status".into(), json!("error"));
    for field in ["code", "message", "field"] {
        if let Some(value) = response.body.get(field) {
            body.insert(field.into(), value.clone());
        }
    }
    ApiResponse::json(response.status, &Value::Object(body))
}

/// Reads the seed's body: its lines name products, and `totalAmount` is a
/// number of major units (e.g. `198` or `198.5`).
fn parse_legacy(body: &Value, currency: Currency) -> Result<OrderRequest, ValidationError> {
    let mut request = parse_order(body)?;
    let invalid = |message: String| ValidationError {
        field: "totalAmount".into(),
        message,
    };
    let total = body
        .get("totalAmount")
        .ok_or_else(|| invalid("is required".into()))?;
    let amount = total
        .as_f64()
        .filter(|a| a.is_finite() && *a >= 0.0)
        .ok_or_else(|| invalid("must be a number of at least 0".into()))?;
    let scale = 10f64.powi(i32::try_from(currency.exponent()).unwrap_or(0));
    let minor = (amount * scale).round();
    // More decimals than the currency has, or beyond what i64 holds exactly.
    if (minor / scale - amount).abs() > 1e-9 || minor > 9.0e15 {
        return Err(invalid(format!(
            "must have at most {} decimals",
            currency.exponent()
        )));
    }
    #[allow(clippy::cast_possible_truncation)]
    let minor = minor as i64;
    request.client_total = Some(Money::new(minor, currency));
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_totals_are_major_units_in_the_store_currency() {
        let body = json!({
            "orderId": "o-1", "customerName": "Ada", "totalAmount": 198,
            "items": [{ "productName": "Motia Smartwatch V2", "quantity": 2 }],
        });
        let request = parse_legacy(&body, Currency::USD).unwrap();
        assert_eq!(
            request.client_total,
            Some(Money::new(19_800, Currency::USD))
        );

        let mut cents = body.clone();
        cents["totalAmount"] = json!(198.123);
        assert_eq!(
            parse_legacy(&cents, Currency::USD).unwrap_err().field,
            "totalAmount"
        );
        let mut negative = body.clone();
        negative["totalAmount"] = json!(-1);
        assert!(parse_legacy(&negative, Currency::USD).is_err());
        let mut missing = body;
        missing.as_object_mut().unwrap().remove("totalAmount");
        assert!(parse_legacy(&missing, Currency::USD).is_err());
    }
}
