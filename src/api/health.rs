//! Liveness and readiness probes. Neither needs an API key.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::{payload::Json, ApiResponse, OpenApi};

use super::{
    dto::{Readiness, ReadinessState},
    ApiTags, AppState,
};

pub struct HealthApi;

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Ready: the database and the object store answer.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// Not ready: see which dependency failed.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// The process is up.
    #[oai(path = "/health/live", method = "get", operation_id = "health_live")]
    async fn live(&self) -> poem_openapi::payload::PlainText<&'static str> {
        poem_openapi::payload::PlainText("ok")
    }

    /// The process can serve: the database and the object store are reachable, and it is
    /// not shutting down. Nodes that score also name their model runtime and model version
    /// (the model is loaded and warmed up before the listener opens).
    #[oai(path = "/health/ready", method = "get", operation_id = "health_ready")]
    async fn ready(&self, state: Data<&Arc<AppState>>) -> ReadyResponse {
        let (db, objects) = tokio::join!(state.db.ping(), state.objects.health_check());
        let verdict = |ok: bool| {
            if ok {
                ReadinessState::Ok
            } else {
                ReadinessState::Unavailable
            }
        };
        if let Err(err) = &db {
            tracing::warn!(error = %err, "readiness: database unavailable");
        }
        if let Err(err) = &objects {
            tracing::warn!(error = %err, "readiness: object store unavailable");
        }
        let draining = state.draining.is_cancelled();
        let ready = db.is_ok() && objects.is_ok() && !draining;
        let body = Json(Readiness {
            status: if draining {
                ReadinessState::Draining
            } else {
                verdict(ready)
            },
            database: verdict(db.is_ok()),
            object_store: verdict(objects.is_ok()),
            runtime: state.scoring.as_ref().map(|s| s.runtime.clone()),
            model_version: state.scoring.as_ref().map(|s| s.model_version.clone()),
        });
        if ready {
            ReadyResponse::Ready(body)
        } else {
            ReadyResponse::NotReady(body)
        }
    }
}
