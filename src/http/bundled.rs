//! Files compiled into the crate (the workbench's, the store front's), served
//! with their content type and nothing else to configure.

use axum::http::header;
use axum::routing::{get, MethodRouter};

/// A `GET` route answering `body` as `content_type`.
fn bundled<S: Clone + Send + Sync + 'static>(
    content_type: &'static str,
    body: &'static str,
) -> MethodRouter<S> {
    get(move || async move { ([(header::CONTENT_TYPE, content_type)], body) })
}

/// An HTML page.
pub(crate) fn html<S: Clone + Send + Sync + 'static>(body: &'static str) -> MethodRouter<S> {
    bundled("text/html; charset=utf-8", body)
}

/// A script.
pub(crate) fn javascript<S: Clone + Send + Sync + 'static>(body: &'static str) -> MethodRouter<S> {
    bundled("text/javascript; charset=utf-8", body)
}

/// A style sheet.
pub(crate) fn css<S: Clone + Send + Sync + 'static>(body: &'static str) -> MethodRouter<S> {
    bundled("text/css; charset=utf-8", body)
}
