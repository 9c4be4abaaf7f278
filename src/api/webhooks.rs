//! Webhook endpoints: register, list, delete, rotate their secrets; and the partner's
//! secret for per-job `webhook_url`s.

use std::sync::Arc;

use chrono::Utc;
use poem::web::Data;
use poem_openapi::{
    param::Path,
    payload::Json,
    types::{MaybeUndefined, ToJSON},
    ApiResponse, OpenApi,
};
use uuid::Uuid;

use super::{
    auth::PartnerAuth,
    dto::{
        CreateWebhookEndpoint, CreatedWebhookEndpoint, DeliveryAttempt, SigningSecret, Timestamp,
        UpdateWebhookEndpoint, WebhookEndpoint, WebhookEndpointList, WebhookTestEvent,
        WebhookTestResult, WebhookTestType,
    },
    payload::JsonBody,
    problem::{ApiProblem, ApiResult, ProblemCode},
    ApiTags, AppState,
};
use crate::{
    delivery::signing::WebhookSecret,
    store::{
        endpoints::{self, CreateOutcome, EndpointChanges},
        partners,
    },
};

/// After a rotation, the previous secret keeps signing for this long.
const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);

/// Endpoints per partner; every finished job is sent to each of them.
const MAX_ENDPOINTS: u64 = 20;

pub struct WebhooksApi;

#[derive(ApiResponse)]
pub enum CreatedResponse {
    /// Created. Keep the secret: it is not shown again.
    #[oai(status = 201)]
    Created(Json<CreatedWebhookEndpoint>),
}

#[derive(ApiResponse)]
pub enum ListResponse {
    #[oai(status = 200)]
    Ok(Json<WebhookEndpointList>),
}

#[derive(ApiResponse)]
pub enum DeletedResponse {
    /// Deleted; pending deliveries to it are dropped.
    #[oai(status = 204)]
    Deleted,
}

#[derive(ApiResponse)]
pub enum UpdatedResponse {
    /// The endpoint as it now is.
    #[oai(status = 200)]
    Ok(Json<WebhookEndpoint>),
}

#[derive(ApiResponse)]
pub enum TestResponse {
    /// The test event was sent; `delivered` says whether the receiver took it.
    #[oai(status = 200)]
    Ok(Json<WebhookTestResult>),
}

#[derive(ApiResponse)]
pub enum SecretResponse {
    #[oai(status = 200)]
    Ok(Json<SigningSecret>),
}

fn endpoint_not_found(id: &str) -> ApiProblem {
    ApiProblem::new(
        ProblemCode::WebhookNotFound,
        format!("no webhook endpoint `{id}`"),
    )
}

/// An endpoint id from the path; one that is not a UUID names no endpoint.
fn endpoint_id(id: &str) -> Result<Uuid, ApiProblem> {
    Uuid::parse_str(id).map_err(|_| endpoint_not_found(id))
}

#[OpenApi(tag = "ApiTags::Webhooks")]
impl WebhooksApi {
    /// Register a webhook endpoint.
    ///
    /// Finished jobs enqueued without a `webhook_url` are POSTed to every enabled endpoint,
    /// signed per Standard Webhooks with the endpoint's secret.
    #[oai(path = "/webhooks", method = "post", operation_id = "create_webhook")]
    async fn create(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        body: JsonBody<CreateWebhookEndpoint>,
    ) -> ApiResult<CreatedResponse> {
        let body = body.0;
        let url = state.intake.check_webhook_url(&body.url.0)?;
        let secret = WebhookSecret::generate().expose();
        match endpoints::create(
            &state.db,
            auth.partner().id,
            url,
            body.description,
            secret.clone(),
            MAX_ENDPOINTS,
        )
        .await?
        {
            CreateOutcome::Created(endpoint) => {
                Ok(CreatedResponse::Created(Json(CreatedWebhookEndpoint {
                    endpoint: (*endpoint).into(),
                    secret,
                })))
            }
            CreateOutcome::LimitReached => Err(ApiProblem::new(
                ProblemCode::WebhookLimitReached,
                format!("a partner may have {MAX_ENDPOINTS} webhook endpoints; delete one first"),
            )
            .into()),
        }
    }

    /// List your webhook endpoints.
    #[oai(path = "/webhooks", method = "get", operation_id = "list_webhooks")]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
    ) -> ApiResult<ListResponse> {
        let endpoints = endpoints::list(&state.db, auth.partner().id).await?;
        Ok(ListResponse::Ok(Json(WebhookEndpointList {
            endpoints: endpoints.into_iter().map(WebhookEndpoint::from).collect(),
        })))
    }

    /// Delete a webhook endpoint.
    #[oai(
        path = "/webhooks/:id",
        method = "delete",
        operation_id = "delete_webhook"
    )]
    async fn delete(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        id: Path<String>,
    ) -> ApiResult<DeletedResponse> {
        let uuid = endpoint_id(&id.0)?;
        if endpoints::delete(&state.db, auth.partner().id, uuid).await? {
            Ok(DeletedResponse::Deleted)
        } else {
            Err(endpoint_not_found(&id.0).into())
        }
    }

    /// Change an endpoint's URL, description, or whether it is enabled.
    ///
    /// Re-enabling a disabled endpoint makes its undelivered deliveries due now, with a
    /// fresh retry schedule.
    #[oai(
        path = "/webhooks/:id",
        method = "patch",
        operation_id = "update_webhook"
    )]
    async fn update(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        id: Path<String>,
        body: JsonBody<UpdateWebhookEndpoint>,
    ) -> ApiResult<UpdatedResponse> {
        let uuid = endpoint_id(&id.0)?;
        let body = body.0;
        let url = body
            .url
            .map(|url| state.intake.check_webhook_url(&url.0))
            .transpose()?;
        let changes = EndpointChanges {
            url,
            description: match body.description {
                MaybeUndefined::Undefined => None,
                MaybeUndefined::Null => Some(None),
                MaybeUndefined::Value(text) => Some(Some(text)),
            },
            enabled: body.enabled,
        };
        let updated = endpoints::update(&state.db, auth.partner().id, uuid, changes, Utc::now())
            .await?
            .ok_or_else(|| endpoint_not_found(&id.0))?;
        Ok(UpdatedResponse::Ok(Json(updated.into())))
    }

    /// Send a signed `webhook.test` event to an endpoint now, and see how it went.
    ///
    /// It is signed with the endpoint's secret like every event, and sent even when the
    /// endpoint is disabled, so a fix can be checked before re-enabling it. Nothing is
    /// retried or recorded.
    #[oai(
        path = "/webhooks/:id/test",
        method = "post",
        operation_id = "test_webhook"
    )]
    async fn test(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        id: Path<String>,
    ) -> ApiResult<TestResponse> {
        let uuid = endpoint_id(&id.0)?;
        let endpoint = endpoints::list(&state.db, auth.partner().id)
            .await?
            .into_iter()
            .find(|e| e.id == uuid)
            .ok_or_else(|| endpoint_not_found(&id.0))?;
        let secret = WebhookSecret::parse(&endpoint.secret)
            .map_err(|_| ApiProblem::internal("an endpoint's secret does not parse"))?;
        let event = WebhookTestEvent {
            event_type: WebhookTestType::WebhookTest,
            endpoint_id: endpoint.id,
            sent_at: Timestamp(Utc::now()),
        };
        let body = event.to_json().unwrap_or_default().to_string().into_bytes();
        let webhook_id = format!("msg_test_{}", Uuid::now_v7().simple());
        let attempt = crate::delivery::send_signed(
            &state.webhook_client,
            &endpoint.url,
            &webhook_id,
            body,
            &[secret],
        )
        .await;
        let delivered = attempt
            .status_code
            .is_some_and(|code| (200..300).contains(&code));
        Ok(TestResponse::Ok(Json(WebhookTestResult {
            delivered,
            webhook_id,
            attempt: DeliveryAttempt {
                attempted_at: Timestamp(attempt.attempted_at),
                status_code: attempt.status_code.map(i32::from),
                latency_ms: attempt.latency_ms,
                error: attempt.error,
                response_body: attempt.response_body,
            },
        })))
    }

    /// Rotate an endpoint's signing secret.
    ///
    /// Returns the new secret. For 24 hours, deliveries carry signatures with both the new
    /// and the previous secret, so receivers can switch without losing a message.
    #[oai(
        path = "/webhooks/:id/rotate-secret",
        method = "post",
        operation_id = "rotate_webhook_secret"
    )]
    async fn rotate_secret(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        id: Path<String>,
    ) -> ApiResult<SecretResponse> {
        let uuid = endpoint_id(&id.0)?;
        let secret = WebhookSecret::generate().expose();
        let rotated = endpoints::rotate_secret(
            &state.db,
            auth.partner().id,
            uuid,
            secret.clone(),
            Utc::now() + ROTATION_OVERLAP,
        )
        .await?
        .ok_or_else(|| endpoint_not_found(&id.0))?;
        Ok(SecretResponse::Ok(Json(SigningSecret {
            secret,
            previous_secret_expires_at: rotated.previous_secret_expires_at.map(Timestamp),
        })))
    }

    /// The secret that signs deliveries to per-job `webhook_url`s.
    #[oai(
        path = "/webhook-secret",
        method = "get",
        operation_id = "get_webhook_secret"
    )]
    async fn partner_secret(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
    ) -> ApiResult<SecretResponse> {
        let secret = partners::webhook_secret(
            &state.db,
            auth.partner().id,
            WebhookSecret::generate().expose(),
        )
        .await?;
        Ok(SecretResponse::Ok(Json(SigningSecret {
            secret,
            previous_secret_expires_at: None,
        })))
    }
}
