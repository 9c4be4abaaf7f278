//! Webhook deliveries of a job's result, and their attempts.

use entity::{
    delivery::{self, DeliveryStatus},
    delivery_attempt,
};
use poem_openapi::{Enum, Object};
use uuid::Uuid;

use super::{HttpUrl, Timestamp};

/// Where a webhook delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// An attempt is under way.
    Sending,
    Delivered,
    /// Out of attempts, or its endpoint was disabled or deleted; reconciliation retries
    /// deliveries to active destinations once a day, and `POST /jobs/{job_id}/redeliver` at once.
    Failed,
}

impl From<DeliveryState> for DeliveryStatus {
    fn from(state: DeliveryState) -> Self {
        match state {
            DeliveryState::Pending => Self::Pending,
            DeliveryState::Sending => Self::Sending,
            DeliveryState::Delivered => Self::Delivered,
            DeliveryState::Failed => Self::Failed,
        }
    }
}

impl From<DeliveryStatus> for DeliveryState {
    fn from(status: DeliveryStatus) -> Self {
        match status {
            DeliveryStatus::Pending => Self::Pending,
            DeliveryStatus::Sending => Self::Sending,
            DeliveryStatus::Delivered => Self::Delivered,
            DeliveryStatus::Failed => Self::Failed,
        }
    }
}

/// The events a job's webhook announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum EventType {
    #[oai(rename = "job.succeeded")]
    JobSucceeded,
    #[oai(rename = "job.failed")]
    JobFailed,
}

/// A webhook delivery of a job's result to one destination.
#[derive(Debug, Clone, Object)]
pub struct DeliverySummary {
    pub delivery_id: Uuid,
    /// The `webhook-id` header: the same on every attempt, for deduplication.
    pub webhook_id: String,
    /// The endpoint delivered to; null for the job's own `webhook_url`.
    #[oai(nullable)]
    pub endpoint_id: Option<Uuid>,
    pub url: HttpUrl,
    pub event_type: EventType,
    pub status: DeliveryState,
    /// Attempts in the current round of retries.
    pub attempts: i32,
    #[oai(nullable)]
    pub next_attempt_at: Option<Timestamp>,
    #[oai(nullable)]
    pub delivered_at: Option<Timestamp>,
    #[oai(nullable)]
    pub last_status_code: Option<i32>,
    #[oai(nullable)]
    pub last_error: Option<String>,
}

impl From<delivery::Model> for DeliverySummary {
    fn from(d: delivery::Model) -> Self {
        Self {
            webhook_id: crate::delivery::message_id(&d),
            delivery_id: d.id,
            endpoint_id: d.endpoint_id,
            url: HttpUrl(d.url),
            event_type: if d.event_type == "job.failed" {
                EventType::JobFailed
            } else {
                EventType::JobSucceeded
            },
            status: d.status.into(),
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at.map(Timestamp),
            delivered_at: d.delivered_at.map(Timestamp),
            last_status_code: d.last_status_code,
            last_error: d.last_error,
        }
    }
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, Object)]
pub struct DeliveryAttempt {
    pub attempted_at: Timestamp,
    /// The receiver's status; null when no response came (timeout, refused connection).
    #[oai(nullable)]
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    #[oai(nullable)]
    pub error: Option<String>,
    /// The first 1 KiB of the receiver's response.
    #[oai(nullable)]
    pub response_body: Option<String>,
}

impl From<delivery_attempt::Model> for DeliveryAttempt {
    fn from(a: delivery_attempt::Model) -> Self {
        Self {
            attempted_at: Timestamp(a.attempted_at),
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error: a.error,
            response_body: a.response_body,
        }
    }
}

/// A delivery with every attempt, oldest first.
#[derive(Debug, Clone, Object)]
pub struct DeliveryDetail {
    #[oai(flatten)]
    pub delivery: DeliverySummary,
    pub attempt_log: Vec<DeliveryAttempt>,
}

#[derive(Debug, Clone, Object)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryDetail>,
}
