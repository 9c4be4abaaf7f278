//! Webhook delivery to partners: Standard Webhooks signing, the retry schedule, and the
//! workers that send the outbox's deliveries. It knows the store, never the API.

pub mod schedule;
pub mod signing;
mod worker;

pub use schedule::RetrySchedule;
pub use worker::{message_id, send_signed, DeliverySettings, DeliveryWorker};
