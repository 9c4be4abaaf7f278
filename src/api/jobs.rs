//! Enqueue, status and listing of jobs. Every lookup is scoped to the calling partner:
//! another partner's job is indistinguishable from a missing one.

use std::{collections::HashMap, sync::Arc};

use poem::web::Data;
use poem_openapi::{
    param::{Header, Path, Query},
    payload::Json,
    ApiRequest, ApiResponse, OpenApi,
};
use serde_json::Value;
use uuid::Uuid;

use super::{
    auth::PartnerAuth,
    dto::{
        DeliveryDetail, DeliveryList, DeliveryState, EnqueueUrlRequest, Job, JobPage, JobState,
        Redelivery, StatusBatchRequest, StatusBatchResponse,
    },
    limits::{too_many_requests, EnqueueAuth, RateLimitFields, QUEUE_FULL_RETRY_AFTER_SECONDS},
    payload::{JsonBody, UploadForm},
    problem::{ApiProblem, ApiResult, Problem, ProblemCode},
    ApiTags, AppState,
};
use crate::{
    inference::DietTag,
    intake::{EnqueueRequest, Enqueued, ImageSource, IntakeError},
    store::{
        deliveries,
        jobs::{self, JobFilter, PageOrder},
        Db, StoreError,
    },
};

pub struct JobsApi;

/// An enqueue request: JSON with an `image_url`, or a multipart upload.
#[derive(ApiRequest)]
pub enum EnqueueBody {
    Json(JsonBody<EnqueueUrlRequest>),
    Multipart(UploadForm),
}

// Built once per request and sent at once: the size of the rarer 429 does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(ApiResponse)]
pub enum EnqueueResponse {
    /// Accepted: the job is queued. A repeat with the same `Idempotency-Key` or
    /// `client_reference` and the same body returns the same job, with
    /// `Idempotent-Replayed: true`.
    #[oai(status = 202)]
    Accepted(
        Json<Job>,
        /// `/status/{job_id}`.
        #[oai(header = "Location")]
        String,
        /// `true` when this answer replays an earlier request's job; absent otherwise.
        #[oai(header = "Idempotent-Replayed")]
        Option<bool>,
        /// The limits that apply to you (draft-ietf-httpapi-ratelimit-headers):
        /// `"rate";q=<requests>;w=<seconds>`, `"queue";q=<jobs>;qu="concurrent-requests"`.
        /// Absent when none does.
        #[oai(header = "RateLimit-Policy")]
        Option<String>,
        /// What is left of each limit: `"rate";r=<requests>;t=<seconds until refilled>`,
        /// `"queue";r=<jobs>`. Absent when none applies.
        #[oai(header = "RateLimit")]
        Option<String>,
    ),
    /// Over a limit: `rate_limited` (your enqueue rate) or `queue_full` (your jobs queued or
    /// in progress). Nothing was written; retry after `Retry-After` seconds.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(
        Json<Problem>,
        /// Seconds to wait before enqueuing again.
        #[oai(header = "Retry-After")]
        u64,
        /// The limits that apply to you, as on `202`.
        #[oai(header = "RateLimit-Policy")]
        String,
        /// What is left of each limit, as on `202`.
        #[oai(header = "RateLimit")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum JobResponse {
    /// The job.
    #[oai(status = 200)]
    Ok(Json<Job>),
}

#[derive(ApiResponse)]
pub enum ErasedResponse {
    /// Erased: the job, its result, its deliveries and its photo (unless another job uses
    /// the same photo) are gone. It answers `404 job_erased` from now on.
    #[oai(status = 204)]
    Erased,
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
    /// A page of jobs: newest first, or oldest change first with `updated_since`.
    #[oai(status = 200)]
    Ok(Json<JobPage>),
}

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

fn not_found(id: &str) -> ApiProblem {
    ApiProblem::new(ProblemCode::JobNotFound, format!("no job `{id}`"))
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
        auth: EnqueueAuth,
        raw: &poem::Request,
        body: EnqueueBody,
        /// Makes retries safe: the same key with the same body returns the same job.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<EnqueueResponse> {
        let idempotency_key = readable_idempotency_key(raw, idempotency_key.0)?;
        let request = match body {
            EnqueueBody::Json(JsonBody(body)) => EnqueueRequest {
                image: Some(ImageSource::Url(body.image_url.0)),
                webhook_url: body.webhook_url.map(|url| url.0),
                metadata: body
                    .metadata
                    .map(|m| Value::Object(m.into_iter().collect())),
                model_id: body.model_id,
                diets: body
                    .diets
                    .unwrap_or_default()
                    .into_iter()
                    .map(|diet| DietTag::from(diet).as_str().to_string())
                    .collect(),
                lang: body.lang,
                idempotency_key,
                client_reference: body.client_reference,
            },
            EnqueueBody::Multipart(form) => form.into_request(idempotency_key),
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
        auth: EnqueueAuth,
        raw: &poem::Request,
        form: UploadForm,
        /// Makes retries safe: the same key with the same body returns the same job.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<EnqueueResponse> {
        let idempotency_key = readable_idempotency_key(raw, idempotency_key.0)?;
        enqueue(&state, &auth, form.into_request(idempotency_key)).await
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

    /// Erase a job: its result, its deliveries and its stored photo.
    ///
    /// The photo's bytes stay only while another job (of any partner) uses the same photo.
    /// A tombstone keeps the job id and when it was erased, nothing else. A job still being
    /// scored is erased too: its result is dropped, and no webhook is sent.
    #[oai(path = "/jobs/:job_id", method = "delete", operation_id = "erase_job")]
    async fn erase(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        job_id: Path<String>,
    ) -> ApiResult<ErasedResponse> {
        let erased = match Uuid::parse_str(&job_id.0) {
            Ok(id) => state.intake.erase(auth.partner().id, id).await?,
            Err(_) => false,
        };
        if erased {
            Ok(ErasedResponse::Erased)
        } else {
            Err(missing(&state, &auth, &job_id.0).await.into())
        }
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
                ProblemCode::JobNotFinished,
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

    /// List your jobs: newest first, or, with `updated_since`, oldest change first.
    ///
    /// With `updated_since`, paging with `next_cursor` visits every job that changed since
    /// then, once, even while jobs keep changing: a job that changes again comes back later,
    /// in its new place. A change is listed once it is 5 seconds old, so that one committed
    /// late is never skipped. This is what a nightly reconciliation asks: "what changed since
    /// my last run?"
    #[oai(path = "/jobs", method = "get", operation_id = "list_jobs")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: Data<&Arc<AppState>>,
        auth: PartnerAuth,
        /// Only jobs in this state.
        status: Query<Option<JobState>>,
        /// Only jobs with a webhook delivery in this state, e.g. `failed`.
        delivery: Query<Option<DeliveryState>>,
        /// Only the job with this reference of yours.
        #[oai(validator(pattern = "^[A-Za-z0-9._:/-]{1,128}$"))]
        client_reference: Query<Option<String>>,
        /// Only jobs changed at or after this instant (RFC 3339), oldest change first.
        updated_since: Query<Option<chrono::DateTime<chrono::Utc>>>,
        /// Page size, 1 to 200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<u32>>,
        /// The `next_cursor` of the previous page, with the same other parameters.
        cursor: Query<Option<String>>,
    ) -> ApiResult<JobPageResult> {
        let limit = limit.0.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let cursor = cursor.0.as_deref().map(PageCursor::parse).transpose()?;
        let order = match updated_since.0 {
            Some(since) => PageOrder::ChangedSince {
                since,
                after: cursor.map(|c| (c.updated_at, c.job_id)),
                until: state.db.now().await - CHANGE_SETTLING,
            },
            None => PageOrder::NewestFirst {
                before: cursor.map(|c| c.job_id),
            },
        };
        let filter = JobFilter {
            status: status.0.map(Into::into),
            delivery: delivery.0.map(Into::into),
            client_reference: client_reference.0,
        };
        let mut page = jobs::list(
            &state.db,
            auth.partner().id,
            &filter,
            order,
            u64::from(limit) + 1,
        )
        .await?;
        let next_cursor = if page.len() > limit as usize {
            page.truncate(limit as usize);
            page.last().map(|job| PageCursor::after(job).to_string())
        } else {
            None
        };
        Ok(JobPageResult::Ok(Json(JobPage {
            jobs: with_deliveries(&state.db, page).await?,
            next_cursor,
        })))
    }
}

/// How old a change must be before `updated_since` lists it: longer than any write takes
/// to commit, so a change stamped earlier but committed later is never paged past.
const CHANGE_SETTLING: chrono::Duration = chrono::Duration::seconds(5);

/// A `next_cursor`: `<seconds>.<nanoseconds>_<job id>`.
pub(super) const CURSOR_PATTERN: &str = concat!(
    r"^[0-9]{1,11}\.[0-9]{9}_",
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
);

/// Where a page ends: the last job's `updated_at` (to the nanosecond, as stored) and id,
/// written `<seconds>.<nanoseconds>_<job id>`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PageCursor {
    updated_at: chrono::DateTime<chrono::Utc>,
    job_id: Uuid,
}

impl PageCursor {
    fn after(job: &entity::job::Model) -> Self {
        Self {
            updated_at: job.updated_at,
            job_id: job.id,
        }
    }

    fn parse(text: &str) -> Result<Self, ApiProblem> {
        let invalid = || {
            ApiProblem::new(
                ProblemCode::InvalidCursor,
                "`cursor` is not a `next_cursor` from a previous page",
            )
        };
        static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(CURSOR_PATTERN).expect("the cursor pattern compiles")
        });
        if !PATTERN.is_match(text) {
            return Err(invalid());
        }
        let (instant, id) = text.split_once('_').ok_or_else(invalid)?;
        let (seconds, nanos) = instant.split_once('.').ok_or_else(invalid)?;
        let seconds: i64 = seconds.parse().map_err(|_| invalid())?;
        let nanos: u32 = nanos.parse().map_err(|_| invalid())?;
        Ok(Self {
            updated_at: chrono::DateTime::from_timestamp(seconds, nanos).ok_or_else(invalid)?,
            job_id: Uuid::parse_str(id).map_err(|_| invalid())?,
        })
    }
}

impl std::fmt::Display for PageCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{:09}_{}",
            self.updated_at.timestamp(),
            self.updated_at.timestamp_subsec_nanos(),
            self.job_id
        )
    }
}

async fn enqueue(
    state: &AppState,
    auth: &EnqueueAuth,
    request: EnqueueRequest,
) -> ApiResult<EnqueueResponse> {
    let partner = auth.partner();
    let max_queued = state.limits.max_queued_jobs(partner);
    let mut fields = RateLimitFields::default();
    if let Some(rate) = auth.rate() {
        fields = fields.with_rate(rate);
    }
    let (job, replayed) = match state.intake.enqueue(partner.id, request, max_queued).await {
        Ok(Enqueued::Created { job, unfinished }) => {
            if let (Some(max), Some(unfinished)) = (max_queued, unfinished) {
                fields = fields.with_queue(max, unfinished);
            }
            (Job::from(job), None)
        }
        Ok(Enqueued::Replayed(job)) => (Job::from(job), Some(true)),
        Err(err @ IntakeError::QueueFull { max }) => {
            let fields = fields.with_queue(max, u64::from(max));
            return Ok(too_many_requests(
                ApiProblem::from(err),
                QUEUE_FULL_RETRY_AFTER_SECONDS,
                fields,
            ));
        }
        Err(err) => return Err(err.into()),
    };
    let location = format!("/status/{}", job.job_id);
    Ok(EnqueueResponse::Accepted(
        Json(job),
        location,
        replayed,
        fields.policy(),
        fields.limit(),
    ))
}

/// poem reads a header that is not visible ASCII as absent; such a key is refused, not
/// ignored.
fn readable_idempotency_key(
    raw: &poem::Request,
    parsed: Option<String>,
) -> Result<Option<String>, ApiProblem> {
    if parsed.is_none() && raw.headers().contains_key("idempotency-key") {
        return Err(ApiProblem::new(
            ProblemCode::IdempotencyKeyInvalid,
            "Idempotency-Key: 1 to 255 printable ASCII characters",
        ));
    }
    Ok(parsed)
}

async fn find_job(
    state: &AppState,
    auth: &PartnerAuth,
    job_id: &str,
) -> Result<entity::job::Model, ApiProblem> {
    let id = Uuid::parse_str(job_id).map_err(|_| not_found(job_id))?;
    match jobs::find(&state.db, auth.partner().id, id).await? {
        Some(job) => Ok(job),
        None => Err(missing(state, auth, job_id).await),
    }
}

/// Why a job the partner names is not there: erased, or never theirs.
async fn missing(state: &AppState, auth: &PartnerAuth, job_id: &str) -> ApiProblem {
    let erased = match Uuid::parse_str(job_id) {
        Ok(id) => jobs::erased(&state.db, auth.partner().id, id).await,
        Err(_) => Ok(None),
    };
    match erased {
        Ok(Some(tombstone)) => ApiProblem::new(
            ProblemCode::JobErased,
            format!(
                "job `{job_id}` was erased at {}",
                tombstone.erased_at.to_rfc3339()
            ),
        ),
        Ok(None) => not_found(job_id),
        Err(err) => err.into(),
    }
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
