//! Every request gets an id (the caller's `x-request-id` when it is sane, else a new one),
//! returned as `x-request-id` and carried by the request's tracing span; and is counted
//! and timed in the metrics by its OpenAPI operation id, never by its URL. `GET /metrics`
//! serves them.

use std::{sync::Arc, time::Instant};

use poem::{
    http::header, web::Data, Endpoint, IntoResponse, Middleware, Request, Response, Result,
};
use poem_openapi::OperationId;
use subtle::ConstantTimeEq;
use tracing::Instrument;

use super::{
    problem::{ApiProblem, ProblemCode},
    AppState,
};
use crate::{metrics, store::jobs};

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

/// `GET /metrics`: the Prometheus text format, behind `metrics_token` when one is set.
/// The queue gauges are read from the database now.
#[poem::handler]
pub async fn metrics_text(state: Data<&Arc<AppState>>, request: &Request) -> Result<Response> {
    if let Some(token) = &state.metrics_token {
        let presented = request
            .header(header::AUTHORIZATION)
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
            return Err(ApiProblem::new(
                ProblemCode::Unauthorized,
                "the metrics token is required: `Authorization: Bearer <token>`",
            )
            .into());
        }
    }
    let metrics = metrics::get();
    match jobs::queue_stats(&state.db, chrono::Utc::now()).await {
        Ok(queue) => metrics.set_queue(Some((
            queue.queued,
            queue.in_progress,
            queue.oldest_due_age_seconds,
        ))),
        Err(err) => {
            tracing::warn!(error = %err, "metrics: reading the queue depth failed");
            metrics.set_queue(None);
        }
    }
    Ok(Response::builder()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render()))
}
