//! The HTTP API: poem-openapi operations, the spec at `/openapi.json` and its docs at `/docs`.

mod admin;
pub mod auth;
mod dashboard;
pub mod dto;
mod health;
mod jobs;
mod keys;
mod limits;
pub mod listener;
mod models;
mod observe;
mod openapi;
mod payload;
pub mod problem;
mod request_limits;
pub mod schema_check;
mod webhooks;

use std::{sync::Arc, time::Duration};

use poem::{get, Endpoint, EndpointExt, Route};
use poem_openapi::{OpenApiService, Tags};
use tokio_util::sync::CancellationToken;

use crate::{
    budget::MemoryBudget,
    inference::{ModelCatalogue, Scorers},
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
    /// How long the previous API key keeps working after a rotation.
    pub key_rotation_overlap: chrono::Duration,
    /// Sends the test events of `POST /webhooks/{id}/test`.
    pub webhook_client: crate::outbound::GuardedClient,
    /// Cancelled when the node begins shutting down: readiness turns false.
    pub draining: CancellationToken,
    /// The overview's final minutes, so a dashboard refresh reads only the last few.
    pub overview_minutes: crate::store::overview::MinuteCache,
    /// When set, `/metrics` needs it as a bearer token.
    pub metrics_token: Option<String>,
    /// What this node scores with; `None` on API-only nodes.
    pub scoring: Option<ScoringInfo>,
    /// The models jobs may name.
    pub models: Arc<ModelCatalogue>,
    /// Partners' enqueue limits, and this node's rate buckets.
    pub limits: crate::limits::PartnerLimits,
}

/// The model runtime and model version a worker node scores with.
#[derive(Clone)]
pub struct ScoringInfo {
    /// The default model's runtime: `tract`, `ort-cpu`, `ort-cuda` or `ort-tensorrt`.
    pub runtime: String,
    /// The default model's version, as results carry it.
    pub model_version: String,
    /// Every model's scorer, once loaded.
    pub scorers: Arc<Scorers>,
}

impl ScoringInfo {
    pub fn of(scorers: Arc<Scorers>) -> Self {
        let default = scorers.default_scorer();
        Self {
            runtime: default.runtime_name().to_string(),
            model_version: default.model().version.clone(),
            scorers,
        }
    }
}

#[derive(Tags)]
enum ApiTags {
    /// Enqueue photos and read jobs back.
    Jobs,
    /// Webhook endpoints and their signing secrets.
    Webhooks,
    /// Your API keys.
    Keys,
    /// The models jobs can choose.
    Models,
    /// Operator endpoints; they need an admin key.
    Admin,
    /// Probes for load balancers and orchestrators.
    Health,
}

pub type Apis = (
    jobs::JobsApi,
    webhooks::WebhooksApi,
    keys::KeysApi,
    models::ModelsApi,
    admin::AdminApi,
    health::HealthApi,
);

pub fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            jobs::JobsApi,
            webhooks::WebhooksApi,
            keys::KeysApi,
            models::ModelsApi,
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

/// The OpenAPI document, as served and as committed in `docs/openapi.json`.
pub fn spec_json() -> String {
    to_text(&openapi::document(&service()))
}

fn to_text(document: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(document).expect("a JSON value serialises");
    text.push('\n');
    text
}

/// What the app holds each request's body to.
pub struct RequestLimits {
    /// Largest body (`413`).
    pub max_body_bytes: u64,
    /// Bodies held in memory at once; at least `max_body_bytes`.
    pub upload_memory: Arc<MemoryBudget>,
    /// How long a body may take to arrive once the server reads it (`408`).
    pub body_timeout: Duration,
}

/// The whole HTTP app: API, spec, docs, the dashboard, the request limits and
/// problem-details errors.
pub fn app(state: Arc<AppState>, limits: RequestLimits) -> impl Endpoint {
    let service = service();
    let document = openapi::document(&service);
    let allowed = Arc::new(openapi::AllowedMethods::from_document(&document));
    let spec = to_text(&document);
    // poem's Swagger UI embeds its own document; it shows the published one instead.
    let docs_html = Arc::new(service.swagger_ui_html().replace(&service.spec(), &spec));
    let docs = || {
        let html = docs_html.clone();
        get(poem::endpoint::make_sync(move |_| {
            poem::web::Html(html.as_str().to_string())
        }))
    };
    Route::new()
        .at(
            "/openapi.json",
            get(poem::endpoint::make_sync(move |_| {
                poem::Response::builder()
                    .content_type("application/json")
                    .body(spec.clone())
            })),
        )
        .at("/metrics", get(observe::metrics_text))
        .nest("/dashboard", dashboard::routes())
        .at("/docs", docs())
        .at("/docs/", docs())
        .nest(
            "/",
            service
                .with(payload::BodyLimit::new(limits.max_body_bytes))
                .with(request_limits::UploadMemory::new(
                    limits.upload_memory,
                    limits.max_body_bytes,
                )),
        )
        .data(state)
        .catch_all_error(|err| async move { problem::any_error_to_problem(err) })
        .with(request_limits::BodyTimeout::new(limits.body_timeout))
        .with(openapi::AllowOn405(allowed))
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

/// The webhook body of a finished job: a `job.succeeded` or `job.failed` event, as the spec
/// publishes them.
pub fn webhook_payload_renderer() -> PayloadRenderer {
    Arc::new(|job| {
        let event = dto::Job::from(job.clone()).into_event();
        if event.is_none() {
            // Only a stored result this version cannot read; the job's own row says more.
            tracing::error!(job_id = %job.id, "no event for a finished job; sending null");
        }
        event.unwrap_or_default().to_string()
    })
}
