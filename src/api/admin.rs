//! Operator endpoints: they need an admin key (`platescore partners create NAME --admin`).

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::{param::Query, payload::Json, ApiResponse, OpenApi};

use super::{
    auth::PartnerAuth,
    dto::{ReconcileRun, ReconcileRunList, ServiceOverview, StatsScope, UsageStats},
    problem::{ApiProblem, ApiResult, ProblemCode},
    ApiTags, AppState,
};
use crate::store::{overview, reconcile_runs, stats};

pub struct AdminApi;

#[derive(ApiResponse)]
pub enum StatsResponse {
    #[oai(status = 200)]
    Ok(Json<UsageStats>),
}

#[derive(ApiResponse)]
pub enum OverviewResponse {
    #[oai(status = 200)]
    Ok(Json<ServiceOverview>),
}

#[derive(ApiResponse)]
pub enum RunsResponse {
    #[oai(status = 200)]
    Ok(Json<ReconcileRunList>),
}

fn admin_required() -> ApiProblem {
    ApiProblem::new(ProblemCode::AdminRequired, "this needs an admin key")
}

fn require_admin(auth: &PartnerAuth) -> Result<(), ApiProblem> {
    if auth.partner().is_admin {
        Ok(())
    } else {
        Err(admin_required())
    }
}

#[OpenApi(tag = "ApiTags::Admin")]
impl AdminApi {
    /// Usage statistics: jobs per day, the score distribution, top labels, the not-food
    /// share, processing time percentiles and the webhook success rate.
    ///
    /// Any key gets its own partner's; an admin key gets every partner's, or one partner's
    /// with `partner_id`.
    #[oai(path = "/admin/stats", method = "get", operation_id = "get_stats")]
    async fn stats(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        /// Days back from today (UTC), 1 to 90 (default 30).
        #[oai(validator(minimum(value = "1"), maximum(value = "90")))]
        days: Query<Option<u32>>,
        /// Admin keys: only this partner's jobs.
        partner_id: Query<Option<uuid::Uuid>>,
    ) -> ApiResult<StatsResponse> {
        let me = auth.partner();
        let days = days.0.unwrap_or(30);
        let (scope, partner) = match (me.is_admin, partner_id.0) {
            (true, None) => (StatsScope::All, None),
            (true, Some(id)) => (StatsScope::Partner, Some(id)),
            (false, None) => (StatsScope::Partner, Some(me.id)),
            (false, Some(id)) if id == me.id => (StatsScope::Partner, Some(me.id)),
            (false, Some(_)) => return Err(admin_required().into()),
        };
        let computed = stats::compute(&state.db, partner, chrono::Utc::now(), days).await?;
        Ok(StatsResponse::Ok(Json(UsageStats::new(
            scope, days, computed,
        ))))
    }

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

    /// The whole service at a glance, for the dashboard: jobs per state, the last minutes
    /// per minute (enqueued, finished, backlog, latency), the latest failed jobs, failing
    /// endpoints and reconciliation runs.
    #[oai(
        path = "/admin/overview",
        method = "get",
        operation_id = "get_overview"
    )]
    async fn overview(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        /// How many minutes back, the current one included: 5 to 180 (default 60).
        #[oai(validator(minimum(value = "5"), maximum(value = "180")))]
        minutes: Query<Option<u32>>,
    ) -> ApiResult<OverviewResponse> {
        require_admin(&auth)?;
        let computed = overview::compute(
            &state.db,
            &state.overview_minutes,
            chrono::Utc::now(),
            minutes.0.unwrap_or(60),
        )
        .await?;
        Ok(OverviewResponse::Ok(Json(computed.into())))
    }
}
