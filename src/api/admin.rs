//! Operator endpoints: they need an admin key (`platescore partners create NAME --admin`).

use std::sync::Arc;

use poem::{http::StatusCode, web::Data};
use poem_openapi::{param::Query, payload::Json, ApiResponse, OpenApi};

use super::{
    auth::PartnerAuth,
    dto::{ReconcileRun, ReconcileRunList},
    problem::{ApiProblem, ApiResult},
    ApiTags, AppState,
};
use crate::store::reconcile_runs;

pub struct AdminApi;

#[derive(ApiResponse)]
pub enum RunsResponse {
    #[oai(status = 200)]
    Ok(Json<ReconcileRunList>),
}

fn require_admin(auth: &PartnerAuth) -> Result<(), ApiProblem> {
    if auth.partner().is_admin {
        Ok(())
    } else {
        Err(ApiProblem::new(
            StatusCode::FORBIDDEN,
            "admin_required",
            "this endpoint needs an admin key",
        ))
    }
}

#[OpenApi(tag = "ApiTags::Admin")]
impl AdminApi {
    /// The latest reconciliation runs, newest first, with what each fixed.
    #[oai(
        path = "/admin/reconcile-runs",
        method = "get",
        operation_id = "list_reconcile_runs"
    )]
    async fn reconcile_runs(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        /// How many, 1 to 200 (default 30).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<u32>>,
    ) -> ApiResult<RunsResponse> {
        require_admin(&auth)?;
        let runs = reconcile_runs::list(&state.db, u64::from(limit.0.unwrap_or(30))).await?;
        Ok(RunsResponse::Ok(Json(ReconcileRunList {
            runs: runs.into_iter().map(ReconcileRun::from).collect(),
        })))
    }
}
