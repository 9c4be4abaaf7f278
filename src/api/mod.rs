//! The HTTP API: poem-openapi operations, the spec at `/openapi.json` and its docs at `/docs`.

mod admin;
pub mod auth;
mod dashboard;
pub mod dto;
mod health;
mod jobs;
mod observe;
mod payload;
pub mod problem;
mod webhooks;

use std::sync::Arc;

use poem::{get, Endpoint, EndpointExt, Route};
use poem_openapi::{types::ToJSON, OpenApiService, Tags};
use tokio_util::sync::CancellationToken;

use crate::{
    intake::Intake,
    objects::ObjectStore,
    store::{deliveries::PayloadRenderer, Db},
};

/// What the handlers share.
pub struct AppState {
    pub db: Db,
    pub objects: Arc<dyn ObjectStore>,
    pub intake: Intake,
    pub key_cache: auth::KeyCache,
    /// Renders webhook bodies (for redelivery of jobs that had no destination).
    pub render: PayloadRenderer,
    /// Cancelled when the node begins shutting down: readiness turns false.
    pub draining: CancellationToken,
    /// The overview's final minutes, so a dashboard refresh reads only the last few.
    pub overview_minutes: crate::store::overview::MinuteCache,
    /// When set, `/metrics` needs it as a bearer token.
    pub metrics_token: Option<String>,
    /// What this node scores with; `None` on API-only nodes.
    pub scoring: Option<ScoringInfo>,
}

/// The model runtime and model version a worker node scores with.
#[derive(Debug, Clone)]
pub struct ScoringInfo {
    /// `tract`, `ort-cpu`, `ort-cuda` or `ort-tensorrt`.
    pub runtime: String,
    pub model_version: String,
}

#[derive(Tags)]
enum ApiTags {
    /// Enqueue photos and read jobs back.
    Jobs,
    /// Webhook endpoints and their signing secrets.
    Webhooks,
    /// Operator endpoints; they need an admin key.
    Admin,
    /// Probes for load balancers and orchestrators.
    Health,
}

pub type Apis = (
    jobs::JobsApi,
    webhooks::WebhooksApi,
    admin::AdminApi,
    health::HealthApi,
);

pub fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            jobs::JobsApi,
            webhooks::WebhooksApi,
            admin::AdminApi,
            health::HealthApi,
        ),
        "platescore",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Scores food photos for nutrition apps. Enqueue a photo, then receive its \
             healthiness score (1–5), what the model saw and short tips at your webhook, or \
             poll its status. Errors are RFC 9457 problem details with a stable `code`.",
    )
    .server("/")
}

/// The OpenAPI document, as committed in `docs/openapi.json`.
pub fn spec_json() -> String {
    let mut spec = service().spec();
    spec.push('\n');
    spec
}

/// The whole HTTP app: API, spec, docs, the dashboard, the body limit and problem-details
/// errors.
pub fn app(state: Arc<AppState>, max_body_bytes: u64) -> impl Endpoint {
    let service = service();
    let spec = service.spec_endpoint();
    let docs = service.swagger_ui();
    Route::new()
        .at("/openapi.json", get(spec))
        .at("/metrics", get(observe::metrics_text))
        .nest("/dashboard", dashboard::routes())
        .nest("/docs", docs)
        .nest("/", service.with(payload::BodyLimit::new(max_body_bytes)))
        .data(state)
        .catch_all_error(|err| async move { problem::any_error_to_problem(err) })
        .with(observe::Observe)
}

/// A worker node's HTTP: the health probes only.
pub fn probes_app(state: Arc<AppState>) -> impl Endpoint {
    Route::new()
        .at("/metrics", get(observe::metrics_text))
        .nest(
            "/",
            OpenApiService::new(health::HealthApi, "platescore", ""),
        )
        .data(state)
        .catch_all_error(|err| async move { problem::any_error_to_problem(err) })
        .with(observe::Observe)
}

/// The webhook body of a finished job: the job as `GET /status` shows it, plus `type`.
pub fn webhook_payload_renderer() -> PayloadRenderer {
    Arc::new(|job, event_type| {
        let mut body = dto::Job::from(job.clone())
            .to_json()
            .unwrap_or(serde_json::Value::Null);
        if let Some(fields) = body.as_object_mut() {
            fields.remove("deliveries");
            fields.insert("type".into(), event_type.into());
        }
        body.to_string()
    })
}
