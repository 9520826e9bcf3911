//! Step 1 of 14: Order intake: `POST /api/order` (the seed's `order_create_api`).
//!
//! Validates the body field by field, prices it from the store's catalogue,
//! honours an `Idempotency-Key`, and creates the order `pending` together with
//! its `order.created` event, in one commit (SEED_SPEC §8.5: no order without
//! its event, no event without its order).

use serde_json::{json, Value};

use super::seed_database::MAX_PRODUCT_FIELD_LEN;
use super::Deps;
use crate::api::{ApiRequest, ApiResponse, Method};
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::orderflow::dice;
use crate::orderflow::events::OrderCreated;
use crate::orderflow::http;
use crate::orderflow::model::{keys, Order, StockHold, StoredResponse};
use crate::orderflow::stats;
use crate::orderflow::status::OrderStatus;
use crate::orderflow::validate::{
    parse_order, price_order, OrderRequest, PricedOrder, ProductRef, ValidationError,
};
use crate::orderflow::Product;

/// The longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

pub(crate) fn step(deps: &Deps) -> Step {
    let mut step =
        Step::api("order_create_api", Method::Post, "/api/order").emits::<OrderCreated>();
    if let Some(limit) = deps.limits.intake_limit() {
        step = step.limit(limit);
    }
    step.handle(|ctx: StepContext, request: ApiRequest| async move {
        let outcome = match idempotency_key(&request) {
            Err(response) => return Ok(response),
            Ok(key) => accept(&ctx, &request, key, parse_order, created).await?,
        };
        Ok(match outcome {
            Intake::Created(response) | Intake::Replayed(response) => response,
            Intake::Exists(order) => ApiResponse::error(
                409,
                "order_exists",
                format!(
                    "order {:?} already exists ({}); send an Idempotency-Key to retry safely",
                    order.order_id, order.status
                ),
            ),
            Intake::Refused(response) => response,
        })
    })
}

/// The 201 answer for a new order.
fn created(order: &Order) -> ApiResponse {
    ApiResponse::json(
        201,
        &json!({
            "orderId": order.order_id,
            "status": order.status,
            "customerName": order.customer,
            "items": order.lines,
            "total": order.total,
            "createdAt": order.created_at,
        }),
    )
}

/// What intake did with a request.
pub(crate) enum Intake {
    /// A new order, committed with its event: the answer made for it.
    Created(ApiResponse),
    /// The same Idempotency-Key and body as before: the first answer.
    Replayed(ApiResponse),
    /// No key, and the store already has an order with this id.
    Exists(Box<Order>),
    /// Refused with this answer (unknown store, invalid body, key conflict).
    Refused(ApiResponse),
}

/// The request's Idempotency-Key, if it sent one, or a 400 for a bad one.
pub(crate) fn idempotency_key(request: &ApiRequest) -> Result<Option<String>, ApiResponse> {
    let Some(key) = request.header_value("Idempotency-Key") else {
        return Ok(None);
    };
    let ok = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(Some(key.to_string()))
    } else {
        Err(ApiResponse::error(
            400,
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ),
        ))
    }
}

/// The shared intake path of both order APIs: store check, idempotency, parse,
/// price, create. Each API has its own shapes: `parse` reads the body and
/// `respond` answers a new order. A replay gives back what `respond` answered,
/// and a key is bound to its API as well as its body.
pub(crate) async fn accept(
    ctx: &StepContext,
    request: &ApiRequest,
    key: Option<String>,
    parse: impl FnOnce(&Value) -> Result<OrderRequest, ValidationError>,
    respond: fn(&Order) -> ApiResponse,
) -> Result<Intake, StepError> {
    let body = &request.body;
    if let Err(response) = http::settings(ctx).await? {
        return Ok(Intake::Refused(response));
    }
    // Printed only when a key asks for it: serde_json's maps are sorted, so
    // equal bodies print equal.
    let keyed = key.map(|key| {
        let fingerprint = dice::hash(0, &[request.path.as_bytes(), body.to_string().as_bytes()]);
        (key, fingerprint)
    });
    if let Some((key, fingerprint)) = &keyed {
        if let Some(stored) = ctx.get::<StoredResponse>(&keys::idempotency(key)).await? {
            return Ok(if stored.fingerprint == *fingerprint {
                let mut response = ApiResponse::json(stored.status, &stored.body);
                response
                    .headers
                    .push(("Idempotent-Replayed".into(), "true".into()));
                Intake::Replayed(response)
            } else {
                Intake::Refused(ApiResponse::error(
                    409,
                    "idempotency_conflict",
                    "this Idempotency-Key was used with a different request body",
                ))
            });
        }
    }
    let request = match parse(body) {
        Ok(request) => request,
        Err(err) => return Ok(Intake::Refused(http::invalid(&err))),
    };
    if let Some(order) = super::load_order(ctx, &request.order_id).await? {
        return Ok(Intake::Exists(Box::new(order)));
    }
    let priced = match price_order(&request, &catalogue_for(ctx, &request).await?) {
        Ok(priced) => priced,
        Err(err) => return Ok(Intake::Refused(http::invalid(&err))),
    };
    let answer = respond(&create(ctx, priced)?);
    if let Some((key, fingerprint)) = keyed {
        let stored = StoredResponse {
            fingerprint,
            status: answer.status,
            body: answer.body.clone(),
        };
        ctx.put(&keys::idempotency(&key), &stored)?;
    }
    Ok(Intake::Created(answer))
}

/// The products a request names, looked up one by one (by id, or through the
/// name index for lines that give a name).
async fn catalogue_for(
    ctx: &StepContext,
    request: &OrderRequest,
) -> Result<Vec<Product>, StepError> {
    let mut products = Vec::with_capacity(request.lines.len());
    for line in &request.lines {
        // Longer than any key we write: no such product (priced as unknown, 422).
        let named = match &line.product {
            ProductRef::Id(s) | ProductRef::Name(s) => s,
        };
        if named.len() > MAX_PRODUCT_FIELD_LEN {
            continue;
        }
        let id = match &line.product {
            ProductRef::Id(id) => Some(id.clone()),
            ProductRef::Name(name) => ctx.get::<String>(&keys::product_name(name)).await?,
        };
        if let Some(id) = id {
            if let Some(product) = ctx.get::<Product>(&keys::product(&id)).await? {
                products.push(product);
            }
        }
    }
    Ok(products)
}

/// Writes the new order, its place in the recent-orders list and the counters,
/// and emits `order.created`: all in this step's one commit.
fn create(ctx: &StepContext, priced: PricedOrder) -> Result<Order, StepError> {
    let now = ctx.now();
    let mut order = Order {
        order_id: priced.order_id,
        customer: priced.customer,
        lines: priced.lines,
        total: priced.total,
        status: OrderStatus::Pending,
        created_at: now,
        milestones: 0,
        noted: Vec::new(),
        stock: StockHold::None,
        indicators: Vec::new(),
        review: None,
        failure: None,
        invoice: None,
        tracking_number: None,
        carrier: None,
        delivery: None,
        delivery_attempts: 0,
    };
    order.note("ORDER_CREATED", now, None);
    super::save_order(ctx, &mut order)?;
    ctx.put(
        &keys::newest_first(keys::RECENT_ORDERS, now, &order.order_id),
        &order.order_id,
    )?;
    stats::order_created(ctx)?;
    ctx.emit(&OrderCreated {
        order_id: order.order_id.clone(),
        customer: order.customer.clone(),
        lines: order.lines.clone(),
        total: order.total,
        created_at: now,
    })?;
    Ok(order)
}
