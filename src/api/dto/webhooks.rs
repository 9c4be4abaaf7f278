//! Webhook endpoints and signing secrets.

use entity::webhook_endpoint;
use poem_openapi::{types::MaybeUndefined, Enum, Object};
use uuid::Uuid;

use super::{DeliveryAttempt, HttpUrl, Timestamp};

/// Register a webhook endpoint.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct CreateWebhookEndpoint {
    /// `http` or `https` URL on a public host; it receives `job.succeeded` and `job.failed`.
    pub url: HttpUrl,
    /// A note for yourself, up to 500 characters.
    #[oai(validator(max_length = 500, pattern = "^[^\\x00]*$"))]
    pub description: Option<String>,
}

/// Change an endpoint: only the fields given change.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct UpdateWebhookEndpoint {
    /// A new URL; deliveries not yet delivered go there too.
    pub url: Option<HttpUrl>,
    /// A new note, up to 500 characters; `null` removes it.
    #[oai(nullable, validator(max_length = 500, pattern = "^[^\\x00]*$"))]
    pub description: MaybeUndefined<String>,
    /// `false` stops deliveries to it; `true` re-enables it, and its undelivered
    /// deliveries become due now with a fresh schedule.
    pub enabled: Option<bool>,
}

/// Why an endpoint is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum DisabledReason {
    /// Its receiver answered `410 Gone`.
    Gone,
    /// Every attempt failed for days.
    Failing,
    /// You disabled it.
    Manual,
}

/// A webhook endpoint. Its secret is shown only when created or rotated.
#[derive(Debug, Clone, Object)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub url: HttpUrl,
    #[oai(nullable)]
    pub description: Option<String>,
    /// False once disabled: after a `410 Gone`, after failing for days, or by you.
    pub enabled: bool,
    #[oai(nullable)]
    pub disabled_reason: Option<DisabledReason>,
    #[oai(nullable)]
    pub disabled_at: Option<Timestamp>,
    /// Since when every attempt has failed; null while healthy.
    #[oai(nullable)]
    pub failing_since: Option<Timestamp>,
    pub created_at: Timestamp,
}

impl From<webhook_endpoint::Model> for WebhookEndpoint {
    fn from(e: webhook_endpoint::Model) -> Self {
        Self {
            id: e.id,
            url: HttpUrl(e.url),
            description: e.description,
            enabled: e.disabled_at.is_none(),
            disabled_reason: e.disabled_reason.map(|reason| match reason.as_str() {
                "gone" => DisabledReason::Gone,
                "failing" => DisabledReason::Failing,
                _ => DisabledReason::Manual,
            }),
            disabled_at: e.disabled_at.map(Timestamp),
            failing_since: e.failing_since.map(Timestamp),
            created_at: Timestamp(e.created_at),
        }
    }
}

/// A new endpoint, with its signing secret (shown only now).
#[derive(Debug, Clone, Object)]
pub struct CreatedWebhookEndpoint {
    #[oai(flatten)]
    pub endpoint: WebhookEndpoint,
    /// `whsec_…`: verify `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
}

#[derive(Debug, Clone, Object)]
pub struct WebhookEndpointList {
    pub endpoints: Vec<WebhookEndpoint>,
}

/// A signing secret.
#[derive(Debug, Clone, Object)]
pub struct SigningSecret {
    /// `whsec_…`.
    pub secret: String,
    /// Until then the previous secret signs too (a second signature in `webhook-signature`).
    #[oai(nullable)]
    pub previous_secret_expires_at: Option<Timestamp>,
}

/// `type` of a test event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum WebhookTestType {
    #[oai(rename = "webhook.test")]
    WebhookTest,
}

/// Sent by `POST /webhooks/{id}/test`, signed like every event. Answer it with any 2xx.
#[derive(Debug, Clone, Object)]
pub struct WebhookTestEvent {
    #[oai(rename = "type")]
    pub event_type: WebhookTestType,
    pub endpoint_id: Uuid,
    pub sent_at: Timestamp,
}

/// How the test event went.
#[derive(Debug, Clone, Object)]
pub struct WebhookTestResult {
    /// True when the receiver answered 2xx.
    pub delivered: bool,
    /// The `webhook-id` the test event carried.
    pub webhook_id: String,
    pub attempt: DeliveryAttempt,
}
