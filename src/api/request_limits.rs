//! What a request's body may take: memory (`UploadMemory`) and time (`BodyTimeout`).
//!
//! Bodies are read whole (an upload is hashed, checked and stored from memory), so each
//! request reserves its size from a budget before its body is read: its `Content-Length`,
//! or the body limit when it has none. While the budget is spent, requests wait their turn;
//! none is refused for it. Once the server starts reading a body, the body must arrive
//! within the body timeout, or the answer is `408 request_timeout` and the connection is
//! closed.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::Poll,
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use poem::{
    http::{header, HeaderValue},
    Body, Endpoint, IntoResponse, Middleware, Request, Response, Result,
};

use super::problem::{ApiProblem, ProblemCode};
use crate::budget::MemoryBudget;

pub struct UploadMemory {
    budget: Arc<MemoryBudget>,
    max_body_bytes: u64,
}

impl UploadMemory {
    /// `budget` must hold at least `max_body_bytes`, so that every body fits.
    pub fn new(budget: Arc<MemoryBudget>, max_body_bytes: u64) -> Self {
        Self {
            budget,
            max_body_bytes,
        }
    }
}

impl<E: Endpoint> Middleware<E> for UploadMemory {
    type Output = UploadMemoryEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        UploadMemoryEndpoint {
            inner,
            budget: self.budget.clone(),
            max_body_bytes: self.max_body_bytes,
        }
    }
}

pub struct UploadMemoryEndpoint<E> {
    inner: E,
    budget: Arc<MemoryBudget>,
    max_body_bytes: u64,
}

impl<E> UploadMemoryEndpoint<E> {
    /// Bytes the request's body will take in memory.
    fn needed(&self, request: &mut Request) -> u64 {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            // Over the limit: refused unread (`BodyLimit`).
            Some(length) if length > self.max_body_bytes => 0,
            Some(length) => length,
            None => {
                let body = request.take_body();
                let empty = body.is_empty();
                request.set_body(body);
                if empty {
                    0
                } else {
                    self.max_body_bytes
                }
            }
        }
    }
}

impl<E: Endpoint> Endpoint for UploadMemoryEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut request: Request) -> Result<Self::Output> {
        let needed = self.needed(&mut request);
        // Held until the answer is ready, when the handler has let go of the body.
        let _reservation = match needed {
            0 => None,
            // Never more than the whole budget, so never refused.
            bytes => self
                .budget
                .reserve(bytes.min(self.budget.total_bytes()))
                .await
                .ok(),
        };
        self.inner.call(request).await
    }
}

/// Answers `408 request_timeout`, and closes the connection, when a request's body has not
/// arrived within `limit` of the server starting to read it.
pub struct BodyTimeout {
    limit: Duration,
}

impl BodyTimeout {
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<E: Endpoint> Middleware<E> for BodyTimeout {
    type Output = BodyTimeoutEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyTimeoutEndpoint {
            inner,
            limit: self.limit,
        }
    }
}

pub struct BodyTimeoutEndpoint<E> {
    inner: E,
    limit: Duration,
}

impl<E: Endpoint> Endpoint for BodyTimeoutEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut request: Request) -> Result<Self::Output> {
        let body = request.take_body();
        if body.is_empty() {
            request.set_body(body);
            return self
                .inner
                .call(request)
                .await
                .map(IntoResponse::into_response);
        }
        let timed_out = Arc::new(AtomicBool::new(false));
        request.set_body(with_deadline(body, self.limit, timed_out.clone()));
        let result = self.inner.call(request).await;
        if !timed_out.load(Ordering::Relaxed) {
            return result.map(IntoResponse::into_response);
        }
        let mut response = ApiProblem::new(
            ProblemCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} s",
                self.limit.as_secs_f64()
            ),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        // Counted under its operation, as the answer it replaces would have been.
        if let Some(operation) = result.ok().and_then(|answer| {
            answer
                .into_response()
                .data::<poem_openapi::OperationId>()
                .copied()
        }) {
            response.set_data(operation);
        }
        Ok(response)
    }
}

/// The body, failing once it has taken longer than `limit` from its first read.
fn with_deadline(body: Body, limit: Duration, timed_out: Arc<AtomicBool>) -> Body {
    let mut chunks = body.into_bytes_stream();
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut ended = false;
    Body::from_bytes_stream(futures_util::stream::poll_fn(
        move |cx| -> Poll<Option<io::Result<Bytes>>> {
            if ended {
                return Poll::Ready(None);
            }
            let deadline = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            match chunks.poll_next_unpin(cx) {
                Poll::Ready(None) => {
                    ended = true;
                    Poll::Ready(None)
                }
                Poll::Ready(chunk) => Poll::Ready(chunk),
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    ended = true;
                    timed_out.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request body did not arrive in time",
                    ))))
                }
                Poll::Pending => Poll::Pending,
            }
        },
    ))
}
