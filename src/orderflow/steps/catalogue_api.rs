//! Step 14 of 14, continued: the store's catalogue with its stock,
//! `GET /api/catalogue`: what a store front offers (the seed's front end
//! listed products from its mock-ups, with no API behind them).
//!
//! Each product as seeded (`id`, `name`, `price`, `threshold`) with
//! `available`: the units free to order now. The units are read without a
//! read check, as a hint: the reservation at intake is what decides.

use serde_json::json;

use crate::api::{ApiRequest, ApiResponse, Method};
use crate::engine::StepContext;
use crate::engine::{Step, StepError};
use crate::orderflow::catalogue::Product;
use crate::orderflow::http;
use crate::orderflow::model::keys;

use super::shelf::{self, Read};

/// The most products one listing holds.
const MAX_PRODUCTS: usize = 500;

pub(crate) fn step() -> Step {
    Step::api("catalogue_api", Method::Get, "/api/catalogue").handle(
        |ctx: StepContext, _request: ApiRequest| async move {
            let settings = match http::settings(&ctx).await? {
                Ok(settings) => settings,
                Err(response) => return Ok(response),
            };
            let mut products = Vec::new();
            for (_, product) in ctx.scan::<Product>(keys::PRODUCTS, MAX_PRODUCTS).await? {
                let available = shelf::shelf(&ctx, &product.id, Read::Peek).await?.max(0);
                products.push(json!({
                    "id": product.id,
                    "name": product.name,
                    "price": product.price,
                    "threshold": product.threshold,
                    "available": available,
                }));
            }
            Ok::<_, StepError>(ApiResponse::ok(&json!({
                "store": ctx.tenant(),
                "name": settings.name,
                "currency": settings.currency,
                "products": products,
            })))
        },
    )
}
