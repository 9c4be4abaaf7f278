//! Liveness and readiness probes. Neither needs an API key.

use std::{future::Future, sync::Arc, time::Duration};

use poem::web::Data;
use poem_openapi::{payload::Json, ApiResponse, OpenApi};

use super::{
    dto::{Readiness, ReadinessState},
    ApiTags, AppState,
};

pub struct HealthApi;

/// How long readiness waits for a dependency: one that has not answered by then (a database
/// that is down makes the pool wait 10 s for a connection) counts as unavailable, so the probe
/// answers within its timeout (3 s in deploy/k8s).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn within_timeout<E: std::fmt::Display>(
    check: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
    }
}

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

    /// The process can serve: the database and the object store are reachable (each answers
    /// within 2 s), and it is not shutting down. Nodes that score also name their model runtime and model version
    /// (the model is loaded and warmed up before the listener opens).
    #[oai(path = "/health/ready", method = "get", operation_id = "health_ready")]
    async fn ready(&self, state: Data<&Arc<AppState>>) -> ReadyResponse {
        let (db, objects) = tokio::join!(
            within_timeout(state.db.ping()),
            within_timeout(state.objects.health_check())
        );
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
