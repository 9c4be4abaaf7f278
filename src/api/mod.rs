//! The HTTP API: poem-openapi operations, the spec at `/openapi.json` and its docs at `/docs`.

pub mod auth;
pub mod dto;
mod health;
mod jobs;
mod payload;
pub mod problem;

use std::sync::Arc;

use poem::{get, Endpoint, EndpointExt, Route};
use poem_openapi::{OpenApiService, Tags};

use crate::{intake::Intake, objects::ObjectStore, store::Db};

/// What the handlers share.
pub struct AppState {
    pub db: Db,
    pub objects: Arc<dyn ObjectStore>,
    pub intake: Intake,
    pub key_cache: auth::KeyCache,
}

#[derive(Tags)]
enum ApiTags {
    /// Enqueue photos and read jobs back.
    Jobs,
    /// Probes for load balancers and orchestrators.
    Health,
}

pub type Apis = (jobs::JobsApi, health::HealthApi);

pub fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (jobs::JobsApi, health::HealthApi),
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

/// The whole HTTP app: API, spec, docs, the body limit and problem-details errors.
pub fn app(state: Arc<AppState>, max_body_bytes: u64) -> impl Endpoint {
    let service = service();
    let spec = service.spec_endpoint();
    let docs = service.swagger_ui();
    Route::new()
        .at("/openapi.json", get(spec))
        .nest("/docs", docs)
        .nest("/", service.with(payload::BodyLimit::new(max_body_bytes)))
        .data(state)
        .catch_all_error(|err| async move { problem::any_error_to_problem(err) })
}
