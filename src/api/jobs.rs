//! Enqueue, status and listing of jobs. Every lookup is scoped to the calling partner:
//! another partner's job is indistinguishable from a missing one.

use std::{collections::HashMap, sync::Arc};

use poem::{http::StatusCode, web::Data};
use poem_openapi::{
    param::{Header, Path, Query},
    payload::Json,
    ApiRequest, ApiResponse, OpenApi,
};
use uuid::Uuid;

use super::{
    auth::PartnerAuth,
    dto::{
        DeliveryDetail, DeliveryList, EnqueueUrlRequest, Job, JobPage, JobState, Redelivery,
        StatusBatchRequest, StatusBatchResponse,
    },
    payload::{JsonBody, UploadForm},
    problem::{ApiProblem, ApiResult},
    ApiTags, AppState,
};
use crate::{
    intake::{EnqueueRequest, Enqueued},
    store::{deliveries, jobs, Db, StoreError},
};

pub struct JobsApi;

/// An enqueue request: JSON with an `image_url`, or a multipart upload.
#[derive(ApiRequest)]
pub enum EnqueueBody {
    Json(JsonBody<EnqueueUrlRequest>),
    Multipart(UploadForm),
}

#[derive(ApiResponse)]
pub enum EnqueueResponse {
    /// Accepted: the job is queued. The same job comes back for a repeated `Idempotency-Key`.
    #[oai(status = 202)]
    Accepted(Json<Job>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
pub enum JobResponse {
    /// The job.
    #[oai(status = 200)]
    Ok(Json<Job>),
}

#[derive(ApiResponse)]
pub enum DeliveriesResponse {
    /// The job's deliveries, oldest first, each with its attempts.
    #[oai(status = 200)]
    Ok(Json<DeliveryList>),
}

#[derive(ApiResponse)]
pub enum RedeliverResponse {
    /// Accepted: the deliveries are due now.
    #[oai(status = 202)]
    Accepted(Json<Redelivery>),
}

#[derive(ApiResponse)]
pub enum StatusBatchResult {
    /// The jobs found, and the ids that were not.
    #[oai(status = 200)]
    Ok(Json<StatusBatchResponse>),
}

#[derive(ApiResponse)]
pub enum JobPageResult {
    /// A page of jobs, newest first.
    #[oai(status = 200)]
    Ok(Json<JobPage>),
}

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

fn not_found(id: &str) -> ApiProblem {
    ApiProblem::new(
        StatusCode::NOT_FOUND,
        "job_not_found",
        format!("no job `{id}`"),
    )
}

#[OpenApi(tag = "ApiTags::Jobs")]
impl JobsApi {
    /// Enqueue a photo for scoring.
    ///
    /// Send either JSON with an `image_url`, or `multipart/form-data` with the image bytes
    /// in an `image` part. Returns at once with the queued job; the result arrives at the
    /// webhook, or through `GET /status/{job_id}`.
    #[oai(path = "/enqueue", method = "post", operation_id = "enqueue")]
    async fn enqueue(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        body: EnqueueBody,
        /// Makes retries safe: the same key with the same body returns the same job.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<EnqueueResponse> {
        let request = match body {
            EnqueueBody::Json(JsonBody(body)) => EnqueueRequest {
                image: None,
                image_url: Some(body.image_url),
                webhook_url: body.webhook_url,
                metadata: body.metadata,
                model_id: body.model_id,
                diets: body.diets.unwrap_or_default(),
                lang: body.lang,
                idempotency_key: idempotency_key.0,
            },
            EnqueueBody::Multipart(form) => form.into_request(idempotency_key.0),
        };
        enqueue(&state, &auth, request).await
    }

    /// Enqueue an uploaded photo for scoring.
    ///
    /// The same as `POST /enqueue` with `multipart/form-data`, as an operation of its own
    /// for client generators that take one media type per operation.
    #[oai(
        path = "/enqueue/upload",
        method = "post",
        operation_id = "enqueue_upload"
    )]
    async fn enqueue_upload(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        form: UploadForm,
        /// Makes retries safe: the same key with the same body returns the same job.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<EnqueueResponse> {
        enqueue(&state, &auth, form.into_request(idempotency_key.0)).await
    }

    /// Get a job: its state, and its result once done.
    #[oai(path = "/status/:job_id", method = "get", operation_id = "get_status")]
    async fn status(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        job_id: Path<String>,
    ) -> ApiResult<JobResponse> {
        let job = find_job(&state, &auth, &job_id.0).await?;
        let mut views = with_deliveries(&state.db, vec![job]).await?;
        Ok(JobResponse::Ok(Json(views.remove(0))))
    }

    /// List a job's webhook deliveries and every attempt: time, status code, latency,
    /// error and the start of the response.
    #[oai(
        path = "/jobs/:job_id/deliveries",
        method = "get",
        operation_id = "list_deliveries"
    )]
    async fn deliveries(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        job_id: Path<String>,
    ) -> ApiResult<DeliveriesResponse> {
        let job = find_job(&state, &auth, &job_id.0).await?;
        let deliveries = deliveries::list_for_job(&state.db, job.id)
            .await?
            .into_iter()
            .map(|(delivery, attempts)| DeliveryDetail {
                delivery: delivery.into(),
                attempt_log: attempts.into_iter().map(Into::into).collect(),
            })
            .collect();
        Ok(DeliveriesResponse::Ok(Json(DeliveryList { deliveries })))
    }

    /// Send a finished job's webhook again, now, with a fresh retry schedule.
    ///
    /// The same `webhook-id` is used, so receivers can deduplicate. A job that had no
    /// destination when it finished is sent to your current endpoints.
    #[oai(
        path = "/jobs/:job_id/redeliver",
        method = "post",
        operation_id = "redeliver"
    )]
    async fn redeliver(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        job_id: Path<String>,
    ) -> ApiResult<RedeliverResponse> {
        let job = find_job(&state, &auth, &job_id.0).await?;
        if !matches!(
            job.status,
            entity::job::JobStatus::Succeeded | entity::job::JobStatus::Failed
        ) {
            return Err(ApiProblem::new(
                StatusCode::CONFLICT,
                "job_not_finished",
                "the job has not finished; its webhook is sent when it does",
            )
            .into());
        }
        let count =
            deliveries::redeliver(&state.db, &job, &state.render, chrono::Utc::now()).await?;
        Ok(RedeliverResponse::Accepted(Json(Redelivery {
            deliveries: count as u32,
        })))
    }

    /// Get up to 1,000 jobs at once, for reconciliation.
    #[oai(path = "/status", method = "post", operation_id = "get_status_batch")]
    async fn status_batch(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        body: JsonBody<StatusBatchRequest>,
    ) -> ApiResult<StatusBatchResult> {
        let ids = body.0.job_ids;
        let found = jobs::find_many(&state.db, auth.partner().id, &ids).await?;
        let mut found: HashMap<Uuid, Job> = with_deliveries(&state.db, found)
            .await?
            .into_iter()
            .map(|job| (job.job_id, job))
            .collect();
        let mut response = StatusBatchResponse {
            jobs: Vec::with_capacity(found.len()),
            not_found: Vec::new(),
        };
        for id in ids {
            match found.remove(&id) {
                Some(job) => response.jobs.push(job),
                None if !response.jobs.iter().any(|j| j.job_id == id) => {
                    response.not_found.push(id)
                }
                None => {}
            }
        }
        Ok(StatusBatchResult::Ok(Json(response)))
    }

    /// List your jobs, newest first.
    #[oai(path = "/jobs", method = "get", operation_id = "list_jobs")]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        /// Only jobs in this state.
        status: Query<Option<JobState>>,
        /// Page size, 1 to 200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<u32>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> ApiResult<JobPageResult> {
        let limit = limit.0.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let before = cursor
            .0
            .as_deref()
            .map(|c| {
                Uuid::parse_str(c).map_err(|_| {
                    ApiProblem::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_cursor",
                        "`cursor` is not a cursor from a previous page",
                    )
                })
            })
            .transpose()?;
        let mut page = jobs::list(
            &state.db,
            auth.partner().id,
            status.0.map(Into::into),
            before,
            u64::from(limit) + 1,
        )
        .await?;
        let next_cursor = if page.len() > limit as usize {
            page.truncate(limit as usize);
            page.last().map(|job| job.id.to_string())
        } else {
            None
        };
        Ok(JobPageResult::Ok(Json(JobPage {
            jobs: with_deliveries(&state.db, page).await?,
            next_cursor,
        })))
    }
}

async fn enqueue(
    state: &AppState,
    auth: &PartnerAuth,
    request: EnqueueRequest,
) -> ApiResult<EnqueueResponse> {
    let job = match state.intake.enqueue(auth.partner().id, request).await? {
        Enqueued::Created(job) | Enqueued::Replayed(job) => Job::from(job),
    };
    let location = format!("/status/{}", job.job_id);
    Ok(EnqueueResponse::Accepted(Json(job), location))
}

async fn find_job(
    state: &AppState,
    auth: &PartnerAuth,
    job_id: &str,
) -> Result<entity::job::Model, ApiProblem> {
    let id = Uuid::parse_str(job_id).map_err(|_| not_found(job_id))?;
    jobs::find(&state.db, auth.partner().id, id)
        .await?
        .ok_or_else(|| not_found(job_id))
}

/// The jobs as the API shows them, with their deliveries.
async fn with_deliveries(db: &Db, jobs: Vec<entity::job::Model>) -> Result<Vec<Job>, StoreError> {
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    let mut by_job = deliveries::for_jobs(db, &ids).await?;
    Ok(jobs
        .into_iter()
        .map(|job| {
            let deliveries = by_job.remove(&job.id).unwrap_or_default();
            Job::with_deliveries(job, deliveries)
        })
        .collect())
}
