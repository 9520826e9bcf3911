//! What every orderflow API step shares: JSON errors with a machine-readable
//! code, the store (tenant) check, and query strings.

use crate::api::ApiResponse;
use crate::engine::StepContext;
use crate::engine::StepError;
use crate::event::TenantId;

use super::model::keys;
use super::store::StoreSettings;
use super::validate::ValidationError;

/// The header that names the store, as the seed's front end sends it.
pub const STORE_HEADER: &str = "X-Store-ID";

/// 422 naming the field: `{"code": "validation_failed", "field", "message"}`.
pub(crate) fn invalid(err: &ValidationError) -> ApiResponse {
    invalid_field(&err.field, &err.message)
}

/// 422 naming `field`, for a check made outside [`validate`](super::validate).
pub(crate) fn invalid_field(field: &str, message: &str) -> ApiResponse {
    ApiResponse::json(
        422,
        &serde_json::json!({
            "code": "validation_failed",
            "field": field,
            "message": message,
        }),
    )
}

/// 404 for an order this store does not have (whether or not another store has
/// one with that id).
pub(crate) fn order_not_found(order_id: &str) -> ApiResponse {
    ApiResponse::error(
        404,
        "order_not_found",
        format!("order {order_id:?} not found"),
    )
}

/// Resolves the store a request acts for from its `X-Store-ID` header, for hosts
/// that route HTTP requests into [`Engine::call`](crate::Engine::call).
///
/// The header is matched case-insensitively and the first one wins. The store
/// must still be registered: the steps answer `400 unknown_store` otherwise.
///
/// ```
/// use flowline::orderflow::store_from_headers;
/// let headers = vec![("x-store-id".to_string(), "Y".to_string())];
/// assert_eq!(store_from_headers(&headers).unwrap().as_str(), "Y");
/// assert_eq!(store_from_headers(&[]).unwrap_err().status, 400);
/// ```
///
/// # Errors
/// A `400` response with code `missing_store` or `invalid_store`.
pub fn store_from_headers(headers: &[(String, String)]) -> Result<TenantId, ApiResponse> {
    let value = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(STORE_HEADER))
        .map(|(_, value)| value.trim())
        .ok_or_else(|| {
            ApiResponse::error(400, "missing_store", "the X-Store-ID header is required")
        })?;
    TenantId::new(value)
        .map_err(|e| ApiResponse::error(400, "invalid_store", format!("X-Store-ID: {e}")))
}

/// The store's settings, or `400 unknown_store` if it was never registered.
pub(crate) async fn settings(
    ctx: &StepContext,
) -> Result<Result<StoreSettings, ApiResponse>, StepError> {
    Ok(match ctx.get::<StoreSettings>(keys::SETTINGS).await? {
        Some(settings) => Ok(settings),
        None => Err(ApiResponse::error(
            400,
            "unknown_store",
            format!("store {:?} is not registered", ctx.tenant().as_str()),
        )),
    })
}

/// The `name=value` pairs of a path's query string. Values are taken as they
/// are: the filters they feed accept only plain words.
pub(crate) fn query(path: &str) -> Vec<(&str, &str)> {
    path.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_split_into_pairs() {
        assert_eq!(
            query("/api/alerts?type=warning&state=open&x"),
            vec![("type", "warning"), ("state", "open"), ("x", "")]
        );
        assert!(query("/api/alerts").is_empty());
    }

    #[test]
    fn the_store_header_is_required_and_checked() {
        let bad = vec![("X-STORE-ID".to_string(), "no spaces allowed".to_string())];
        assert_eq!(
            store_from_headers(&bad).unwrap_err().body["code"],
            "invalid_store"
        );
        assert_eq!(
            store_from_headers(&[]).unwrap_err().body["code"],
            "missing_store"
        );
    }
}
