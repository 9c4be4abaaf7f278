//! Bounds the request bodies held in memory at once. Bodies are read whole (an upload is
//! hashed, checked and stored from memory), so each request reserves its size from a
//! budget before its body is read: its `Content-Length`, or the body limit when it has
//! none. While the budget is spent, requests wait their turn; none is refused for it.

use std::sync::Arc;

use poem::{http::header, Endpoint, Middleware, Request, Result};

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
