//! Every request gets an id (the caller's `x-request-id` when it is sane, else a new one),
//! returned as `x-request-id` and carried by the request's tracing span; and is counted
//! and timed in the metrics by its OpenAPI operation id, never by its URL.

use std::time::Instant;

use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};
use poem_openapi::OperationId;
use tracing::Instrument;

use crate::metrics;

const REQUEST_ID: &str = "x-request-id";

pub struct Observe;

impl<E: Endpoint> Middleware<E> for Observe {
    type Output = ObserveEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        ObserveEndpoint { inner }
    }
}

pub struct ObserveEndpoint<E> {
    inner: E,
}

fn request_id(request: &Request) -> String {
    request
        .header(REQUEST_ID)
        .filter(|id| (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

impl<E: Endpoint> Endpoint for ObserveEndpoint<E> {
    type Output = Response;

    async fn call(&self, request: Request) -> Result<Self::Output> {
        let id = request_id(&request);
        let span = tracing::info_span!("request", request_id = %id, method = %request.method());
        let started = Instant::now();
        let mut response = match self.inner.call(request).instrument(span).await {
            Ok(output) => output.into_response(),
            Err(err) => err.into_response(),
        };
        let operation = response
            .data::<OperationId>()
            .map(|op| op.0)
            .unwrap_or("other");
        let metrics = metrics::get();
        metrics
            .http_requests
            .with_label_values(&[operation, response.status().as_str()])
            .inc();
        metrics
            .http_duration
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
        if let Ok(value) = id.parse() {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        Ok(response)
    }
}
