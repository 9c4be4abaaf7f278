//! What the API sends and receives. These are not entities: `From<job::Model>` builds them.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use entity::{
    delivery::{self, DeliveryStatus},
    delivery_attempt,
    job::{self, JobStatus},
    reconcile_run, webhook_endpoint,
};
use poem_openapi::{
    registry::{MetaSchema, MetaSchemaRef},
    types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type},
    Enum, Object,
};
use serde_json::Value;
use uuid::Uuid;

/// An instant in RFC 3339, always UTC with a `Z`, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

impl Type for Timestamp {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string_date-time".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format("string", "date-time")))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ToJSON for Timestamp {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(
            self.0.to_rfc3339_opts(SecondsFormat::Millis, true),
        ))
    }
}

impl ParseFromJSON for Timestamp {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(s)) => {
                Ok(Self(DateTime::parse_from_rfc3339(&s)?.with_timezone(&Utc)))
            }
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    InProgress,
    Succeeded,
    Failed,
}

impl From<JobStatus> for JobState {
    fn from(status: JobStatus) -> Self {
        match status {
            JobStatus::Queued => Self::Queued,
            JobStatus::InProgress => Self::InProgress,
            JobStatus::Succeeded => Self::Succeeded,
            JobStatus::Failed => Self::Failed,
        }
    }
}

impl From<JobState> for JobStatus {
    fn from(state: JobState) -> Self {
        match state {
            JobState::Queued => Self::Queued,
            JobState::InProgress => Self::InProgress,
            JobState::Succeeded => Self::Succeeded,
            JobState::Failed => Self::Failed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ImageSourceKind {
    /// The image bytes were uploaded with the request.
    Upload,
    /// The image is fetched from `url` by a worker.
    Url,
}

/// The image a job scores.
#[derive(Debug, Clone, Object)]
pub struct JobImage {
    pub source: ImageSourceKind,
    /// The URL given at enqueue, for `source: url`.
    #[oai(nullable)]
    pub url: Option<String>,
    /// Lowercase hex SHA-256 of the image bytes; for `source: url`, known once fetched.
    #[oai(nullable)]
    pub sha256: Option<String>,
    /// Size of the image file in bytes.
    #[oai(nullable)]
    pub bytes: Option<i64>,
    /// `jpeg`, `png` or `webp`, from the bytes themselves.
    #[oai(nullable)]
    pub format: Option<String>,
    #[oai(nullable)]
    pub width: Option<i32>,
    #[oai(nullable)]
    pub height: Option<i32>,
}

/// What the partner asked for.
#[derive(Debug, Clone, Object)]
pub struct JobRequest {
    pub image: JobImage,
    #[oai(nullable)]
    pub webhook_url: Option<String>,
    /// The partner's own JSON object, returned as given.
    #[oai(nullable)]
    pub metadata: Option<Value>,
    #[oai(nullable)]
    pub model_id: Option<String>,
    /// Diet tags the tips respect, sorted.
    pub diets: Vec<String>,
    /// Language of the tips; null means `en`.
    #[oai(nullable)]
    pub lang: Option<String>,
}

/// Why a job failed.
#[derive(Debug, Clone, Object)]
pub struct JobError {
    /// Stable machine-readable code, e.g. `image_corrupt`.
    pub code: String,
    pub message: String,
}

/// A scoring job.
#[derive(Debug, Clone, Object)]
pub struct Job {
    pub job_id: Uuid,
    pub status: JobState,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub request: JobRequest,
    /// The scoring result; null until the job has succeeded.
    #[oai(nullable)]
    pub result: Option<Value>,
    /// Why the job failed; null unless it has.
    #[oai(nullable)]
    pub error: Option<JobError>,
    /// Time from the start of processing to its end; null until finished.
    #[oai(nullable)]
    pub processing_time_ms: Option<i64>,
    /// Webhook deliveries of the result: one per destination, once the job has finished.
    /// Empty when there is no webhook (poll instead). Not part of webhook payloads.
    pub deliveries: Vec<DeliverySummary>,
}

impl Job {
    pub fn with_deliveries(job: job::Model, deliveries: Vec<delivery::Model>) -> Self {
        let mut view = Self::from(job);
        view.deliveries = deliveries.into_iter().map(Into::into).collect();
        view
    }
}

impl From<job::Model> for Job {
    fn from(job: job::Model) -> Self {
        let source = if job.image_url.is_some() {
            ImageSourceKind::Url
        } else {
            ImageSourceKind::Upload
        };
        let error = job.error_code.map(|code| JobError {
            code,
            message: job.error_message.unwrap_or_default(),
        });
        Self {
            job_id: job.id,
            status: job.status.into(),
            created_at: Timestamp(job.created_at),
            updated_at: Timestamp(job.updated_at),
            request: JobRequest {
                image: JobImage {
                    source,
                    url: job.image_url,
                    sha256: job.image_sha256,
                    bytes: job.image_bytes,
                    format: job.image_format,
                    width: job.image_width,
                    height: job.image_height,
                },
                webhook_url: job.webhook_url,
                metadata: job.metadata,
                model_id: job.model_id,
                diets: job
                    .diets
                    .map(|d| d.split(',').map(String::from).collect())
                    .unwrap_or_default(),
                lang: job.lang,
            },
            result: job.result,
            error,
            processing_time_ms: job.processing_time_ms,
            deliveries: Vec::new(),
        }
    }
}

/// Enqueue by URL: the worker fetches the image.
#[derive(Debug, Clone, Object)]
pub struct EnqueueUrlRequest {
    /// `http` or `https` URL of a JPEG, PNG or WebP image on a public host.
    pub image_url: String,
    /// Where to POST the result. Optional: without it, poll `GET /status/{job_id}`.
    pub webhook_url: Option<String>,
    /// Any JSON object of yours (at most 16 KiB by default), returned with the job.
    pub metadata: Option<Value>,
    /// The model to score with; the current default when absent.
    pub model_id: Option<String>,
    /// Diet tags that shape the tips: `low_sodium`, `low_sugar`, `vegetarian`, `vegan`,
    /// `halal`, `pregnancy`, `low_fiber`, `iodine_restricted`.
    pub diets: Option<Vec<String>>,
    /// Language of the tips, e.g. `en` (English where a tip has no translation).
    pub lang: Option<String>,
}

/// Many job ids, for reconciliation.
#[derive(Debug, Clone, Object)]
pub struct StatusBatchRequest {
    /// 1 to 1000 job ids.
    #[oai(validator(min_items = 1, max_items = 1000))]
    pub job_ids: Vec<Uuid>,
}

#[derive(Debug, Clone, Object)]
pub struct StatusBatchResponse {
    /// The jobs found, in the order asked.
    pub jobs: Vec<Job>,
    /// Ids that are unknown, or not this partner's.
    pub not_found: Vec<Uuid>,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, Object)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// Readiness of each dependency.
#[derive(Debug, Clone, Object)]
pub struct Readiness {
    /// `ok`, `unavailable` or `draining` (shutting down).
    pub status: String,
    pub database: String,
    pub object_store: String,
    /// The model runtime in use: `ort-cpu`, `ort-cuda`, `ort-tensorrt` or `tract`; only on
    /// nodes that score.
    #[oai(skip_serializing_if_is_none)]
    pub runtime: Option<String>,
    /// The model version scored with; only on nodes that score.
    #[oai(skip_serializing_if_is_none)]
    pub model_version: Option<String>,
}

/// Where a webhook delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// An attempt is under way.
    Sending,
    Delivered,
    /// Out of attempts, or its endpoint was disabled or deleted; reconciliation retries
    /// deliveries to active destinations once a day, and `POST /jobs/{job_id}/redeliver` at once.
    Failed,
}

impl From<DeliveryStatus> for DeliveryState {
    fn from(status: DeliveryStatus) -> Self {
        match status {
            DeliveryStatus::Pending => Self::Pending,
            DeliveryStatus::Sending => Self::Sending,
            DeliveryStatus::Delivered => Self::Delivered,
            DeliveryStatus::Failed => Self::Failed,
        }
    }
}

/// A webhook delivery of a job's result to one destination.
#[derive(Debug, Clone, Object)]
pub struct DeliverySummary {
    pub delivery_id: Uuid,
    /// The `webhook-id` header: the same on every attempt, for deduplication.
    pub webhook_id: String,
    /// The endpoint delivered to; null for the job's own `webhook_url`.
    #[oai(nullable)]
    pub endpoint_id: Option<Uuid>,
    pub url: String,
    /// `job.succeeded` or `job.failed`.
    pub event_type: String,
    pub status: DeliveryState,
    /// Attempts in the current round of retries.
    pub attempts: i32,
    #[oai(nullable)]
    pub next_attempt_at: Option<Timestamp>,
    #[oai(nullable)]
    pub delivered_at: Option<Timestamp>,
    #[oai(nullable)]
    pub last_status_code: Option<i32>,
    #[oai(nullable)]
    pub last_error: Option<String>,
}

impl From<delivery::Model> for DeliverySummary {
    fn from(d: delivery::Model) -> Self {
        Self {
            webhook_id: crate::delivery::message_id(&d),
            delivery_id: d.id,
            endpoint_id: d.endpoint_id,
            url: d.url,
            event_type: d.event_type,
            status: d.status.into(),
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at.map(Timestamp),
            delivered_at: d.delivered_at.map(Timestamp),
            last_status_code: d.last_status_code,
            last_error: d.last_error,
        }
    }
}

/// One HTTP attempt of a delivery.
#[derive(Debug, Clone, Object)]
pub struct DeliveryAttempt {
    pub attempted_at: Timestamp,
    /// The receiver's status; null when no response came (timeout, refused connection).
    #[oai(nullable)]
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    #[oai(nullable)]
    pub error: Option<String>,
    /// The first 1 KiB of the receiver's response.
    #[oai(nullable)]
    pub response_body: Option<String>,
}

impl From<delivery_attempt::Model> for DeliveryAttempt {
    fn from(a: delivery_attempt::Model) -> Self {
        Self {
            attempted_at: Timestamp(a.attempted_at),
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error: a.error,
            response_body: a.response_body,
        }
    }
}

/// A delivery with every attempt, oldest first.
#[derive(Debug, Clone, Object)]
pub struct DeliveryDetail {
    #[oai(flatten)]
    pub delivery: DeliverySummary,
    pub attempt_log: Vec<DeliveryAttempt>,
}

#[derive(Debug, Clone, Object)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryDetail>,
}

/// Register a webhook endpoint.
#[derive(Debug, Clone, Object)]
pub struct CreateWebhookEndpoint {
    /// `http` or `https` URL on a public host; it receives `job.succeeded` and `job.failed`.
    pub url: String,
    /// A note for yourself, up to 500 characters.
    #[oai(validator(max_length = 500))]
    pub description: Option<String>,
}

/// A webhook endpoint. Its secret is shown only when created or rotated.
#[derive(Debug, Clone, Object)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub url: String,
    #[oai(nullable)]
    pub description: Option<String>,
    /// False once disabled: after a `410 Gone`, or after failing for days.
    pub enabled: bool,
    /// `gone` or `failing`.
    #[oai(nullable)]
    pub disabled_reason: Option<String>,
    #[oai(nullable)]
    pub disabled_at: Option<Timestamp>,
    /// Since when every attempt has failed; null while healthy.
    #[oai(nullable)]
    pub failing_since: Option<Timestamp>,
    pub created_at: Timestamp,
}

impl From<webhook_endpoint::Model> for WebhookEndpoint {
    fn from(e: webhook_endpoint::Model) -> Self {
        Self {
            id: e.id,
            url: e.url,
            description: e.description,
            enabled: e.disabled_at.is_none(),
            disabled_reason: e.disabled_reason,
            disabled_at: e.disabled_at.map(Timestamp),
            failing_since: e.failing_since.map(Timestamp),
            created_at: Timestamp(e.created_at),
        }
    }
}

/// A new endpoint, with its signing secret (shown only now).
#[derive(Debug, Clone, Object)]
pub struct CreatedWebhookEndpoint {
    #[oai(flatten)]
    pub endpoint: WebhookEndpoint,
    /// `whsec_…`: verify `webhook-signature` with it (Standard Webhooks).
    pub secret: String,
}

#[derive(Debug, Clone, Object)]
pub struct WebhookEndpointList {
    pub endpoints: Vec<WebhookEndpoint>,
}

/// A signing secret.
#[derive(Debug, Clone, Object)]
pub struct SigningSecret {
    /// `whsec_…`.
    pub secret: String,
    /// Until then the previous secret signs too (a second signature in `webhook-signature`).
    #[oai(nullable)]
    pub previous_secret_expires_at: Option<Timestamp>,
}

/// One run of the daily reconciliation.
#[derive(Debug, Clone, Object)]
pub struct ReconcileRun {
    pub id: Uuid,
    /// The scheduled instant (or the moment of a manual run).
    pub slot: Timestamp,
    /// `schedule` or `manual`.
    pub trigger: String,
    pub started_at: Timestamp,
    #[oai(nullable)]
    pub finished_at: Option<Timestamp>,
    pub jobs_requeued: i64,
    pub jobs_failed_stale: i64,
    pub deliveries_rescheduled: i64,
    pub endpoints_disabled: i64,
    pub jobs_deleted: i64,
    pub objects_deleted: i64,
    #[oai(nullable)]
    pub error: Option<String>,
}

impl From<reconcile_run::Model> for ReconcileRun {
    fn from(r: reconcile_run::Model) -> Self {
        Self {
            id: r.id,
            slot: Timestamp(r.slot),
            trigger: r.trigger,
            started_at: Timestamp(r.started_at),
            finished_at: r.finished_at.map(Timestamp),
            jobs_requeued: r.jobs_requeued,
            jobs_failed_stale: r.jobs_failed_stale,
            deliveries_rescheduled: r.deliveries_rescheduled,
            endpoints_disabled: r.endpoints_disabled,
            jobs_deleted: r.jobs_deleted,
            objects_deleted: r.objects_deleted,
            error: r.error,
        }
    }
}

#[derive(Debug, Clone, Object)]
pub struct ReconcileRunList {
    pub runs: Vec<ReconcileRun>,
}

/// What `redeliver` scheduled.
#[derive(Debug, Clone, Object)]
pub struct Redelivery {
    /// Deliveries now due; 0 when the job has no webhook destination.
    pub deliveries: u32,
}

#[derive(Debug, Clone, Object)]
pub struct DayCount {
    /// A UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub jobs: u64,
}

#[derive(Debug, Clone, Object)]
pub struct RatingCount {
    pub rating: u8,
    pub jobs: u64,
}

#[derive(Debug, Clone, Object)]
pub struct LabelCount {
    pub label: String,
    pub jobs: u64,
}

/// Usage over the last days.
#[derive(Debug, Clone, Object)]
pub struct UsageStats {
    /// `partner` (your jobs) or `all` (every partner's; admin keys only).
    pub scope: String,
    pub days: u32,
    /// Jobs created per UTC day, oldest first; every day present.
    pub jobs_per_day: Vec<DayCount>,
    /// Succeeded food photos per rating, 1 to 5.
    pub score_distribution: Vec<RatingCount>,
    /// The ten most frequent top labels of succeeded jobs.
    pub top_labels: Vec<LabelCount>,
    pub succeeded: u64,
    pub failed: u64,
    /// Share of succeeded jobs that were not food.
    pub not_food_share: f64,
    /// Median processing time of succeeded jobs (a worker's time on a job), in ms.
    #[oai(nullable)]
    pub processing_ms_p50: Option<i64>,
    /// 95th percentile of the same.
    #[oai(nullable)]
    pub processing_ms_p95: Option<i64>,
    /// Delivered / (delivered + failed) webhook deliveries; null when none settled.
    #[oai(nullable)]
    pub delivery_success_rate: Option<f64>,
}

impl UsageStats {
    pub fn new(scope: &str, days: u32, stats: crate::store::stats::Stats) -> Self {
        Self {
            scope: scope.to_string(),
            days,
            jobs_per_day: stats
                .jobs_per_day
                .into_iter()
                .map(|(day, jobs)| DayCount { day, jobs })
                .collect(),
            score_distribution: stats
                .ratings
                .iter()
                .enumerate()
                .map(|(i, jobs)| RatingCount {
                    rating: i as u8 + 1,
                    jobs: *jobs,
                })
                .collect(),
            top_labels: stats
                .top_labels
                .into_iter()
                .map(|(label, jobs)| LabelCount { label, jobs })
                .collect(),
            succeeded: stats.succeeded,
            failed: stats.failed,
            not_food_share: stats.not_food_share,
            processing_ms_p50: stats.processing_ms_p50,
            processing_ms_p95: stats.processing_ms_p95,
            delivery_success_rate: stats.delivery_success_rate,
        }
    }
}

/// Jobs waiting or being worked on now, and how long the oldest due job has waited.
#[derive(Debug, Clone, Object)]
pub struct QueueDepth {
    /// Waiting for a worker, or for a retry.
    pub queued: u64,
    pub in_progress: u64,
    /// Seconds since the oldest queued job became due; 0 when none waits.
    pub oldest_queued_age_seconds: f64,
}

/// One minute of the whole service.
#[derive(Debug, Clone, Object)]
pub struct MinuteFigures {
    /// The minute's first instant (UTC).
    pub start: Timestamp,
    pub enqueued: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Jobs queued or in progress at the minute's end (now, for the current minute).
    pub backlog: u64,
    /// Median enqueue-to-finish time of the jobs finished in the minute, in ms, estimated
    /// from buckets 25% wide; null when none finished.
    #[oai(nullable)]
    pub latency_p50_ms: Option<f64>,
    #[oai(nullable)]
    pub latency_p95_ms: Option<f64>,
}

/// A failed job, as operators see it.
#[derive(Debug, Clone, Object)]
pub struct FailedJobSummary {
    pub job_id: Uuid,
    pub partner_id: Uuid,
    #[oai(nullable)]
    pub partner_name: Option<String>,
    /// The stable error code, e.g. `image_corrupt`.
    pub code: String,
    pub message: String,
    pub attempts: i32,
    #[oai(nullable)]
    pub finished_at: Option<Timestamp>,
}

impl From<crate::store::overview::FailedJob> for FailedJobSummary {
    fn from(failed: crate::store::overview::FailedJob) -> Self {
        let job = failed.job;
        Self {
            job_id: job.id,
            partner_id: job.partner_id,
            partner_name: failed.partner_name,
            code: job.error_code.unwrap_or_else(|| "unknown".into()),
            message: job.error_message.unwrap_or_default(),
            attempts: job.attempts,
            finished_at: job.finished_at.map(Timestamp),
        }
    }
}

/// A webhook endpoint whose deliveries fail, or that was disabled.
#[derive(Debug, Clone, Object)]
pub struct FailingEndpoint {
    #[oai(flatten)]
    pub endpoint: WebhookEndpoint,
    pub partner_id: Uuid,
    #[oai(nullable)]
    pub partner_name: Option<String>,
    /// Deliveries to it waiting for a retry.
    pub retrying_deliveries: u64,
    #[oai(nullable)]
    pub last_attempt_at: Option<Timestamp>,
    #[oai(nullable)]
    pub last_status_code: Option<i32>,
    #[oai(nullable)]
    pub last_error: Option<String>,
}

impl From<crate::store::overview::FailingEndpoint> for FailingEndpoint {
    fn from(failing: crate::store::overview::FailingEndpoint) -> Self {
        Self {
            partner_id: failing.endpoint.partner_id,
            partner_name: failing.partner_name,
            retrying_deliveries: failing.retrying,
            last_attempt_at: failing.last_attempt_at.map(Timestamp),
            last_status_code: failing.last_status_code,
            last_error: failing.last_error,
            endpoint: failing.endpoint.into(),
        }
    }
}

/// The whole service at a glance, as the dashboard shows it.
#[derive(Debug, Clone, Object)]
pub struct ServiceOverview {
    pub generated_at: Timestamp,
    pub queue: QueueDepth,
    /// One entry per minute, oldest first; the last is the current minute, still running.
    pub minutes: Vec<MinuteFigures>,
    /// The latest failed jobs, newest first (at most 20).
    pub recent_failures: Vec<FailedJobSummary>,
    /// Endpoints failing now or disabled, most recently changed first (at most 20).
    pub failing_endpoints: Vec<FailingEndpoint>,
    /// The latest reconciliation runs, newest first (at most 20).
    pub reconcile_runs: Vec<ReconcileRun>,
}

impl From<crate::store::overview::Overview> for ServiceOverview {
    fn from(overview: crate::store::overview::Overview) -> Self {
        Self {
            generated_at: Timestamp(overview.now),
            queue: QueueDepth {
                queued: overview.queue.queued,
                in_progress: overview.queue.in_progress,
                oldest_queued_age_seconds: overview.queue.oldest_due_age_seconds,
            },
            minutes: overview
                .minutes
                .into_iter()
                .map(|m| MinuteFigures {
                    start: Timestamp(m.start),
                    enqueued: m.enqueued,
                    succeeded: m.succeeded,
                    failed: m.failed,
                    backlog: m.backlog,
                    latency_p50_ms: m.latency_p50_ms,
                    latency_p95_ms: m.latency_p95_ms,
                })
                .collect(),
            recent_failures: overview
                .recent_failures
                .into_iter()
                .map(Into::into)
                .collect(),
            failing_endpoints: overview
                .failing_endpoints
                .into_iter()
                .map(Into::into)
                .collect(),
            reconcile_runs: overview
                .reconcile_runs
                .into_iter()
                .map(Into::into)
                .collect(),
        }
    }
}
