//! The OTLP exporter's HTTP client: the crate's own reqwest, so the
//! `otel` feature adds no second HTTP stack.

use async_trait::async_trait;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

/// Sends the exporter's requests with reqwest, bounded by `timeout`.
#[derive(Debug, Clone)]
pub(super) struct ReqwestClient(pub(super) reqwest::Client);

#[async_trait]
impl HttpClient for ReqwestClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let response = self.0.execute(request).await?;
        let mut answer = Response::builder().status(response.status().as_u16());
        for (name, value) in response.headers() {
            answer = answer.header(name, value);
        }
        Ok(answer.body(response.bytes().await?)?)
    }
}
