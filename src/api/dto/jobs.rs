//! Jobs: the enqueue request, the job as `GET /status` shows it, its result, and the
//! webhook events that carry it.

use entity::{
    delivery,
    job::{self, JobStatus},
};
use poem_openapi::{
    types::{ParseFromJSON, ToJSON},
    Enum, Object,
};
use serde_json::Value;
use uuid::Uuid;

use super::{round4, DeliverySummary, HttpUrl, Timestamp};
use crate::inference::DietTag;

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

/// The image's format, from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
}

/// The image a job scores.
#[derive(Debug, Clone, Object)]
pub struct JobImage {
    pub source: ImageSourceKind,
    /// The URL given at enqueue, for `source: url`.
    #[oai(nullable)]
    pub url: Option<HttpUrl>,
    /// Lowercase hex SHA-256 of the image bytes; for `source: url`, known once fetched.
    #[oai(nullable, validator(pattern = "^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
    /// Size of the image file in bytes.
    #[oai(nullable)]
    pub bytes: Option<i64>,
    #[oai(nullable)]
    pub format: Option<ImageFormat>,
    #[oai(nullable)]
    pub width: Option<i32>,
    #[oai(nullable)]
    pub height: Option<i32>,
}

/// A diet the tips respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum Diet {
    LowSodium,
    LowSugar,
    Vegetarian,
    Vegan,
    Halal,
    Pregnancy,
    LowFiber,
    IodineRestricted,
}

impl From<Diet> for DietTag {
    fn from(diet: Diet) -> Self {
        match diet {
            Diet::LowSodium => Self::LowSodium,
            Diet::LowSugar => Self::LowSugar,
            Diet::Vegetarian => Self::Vegetarian,
            Diet::Vegan => Self::Vegan,
            Diet::Halal => Self::Halal,
            Diet::Pregnancy => Self::Pregnancy,
            Diet::LowFiber => Self::LowFiber,
            Diet::IodineRestricted => Self::IodineRestricted,
        }
    }
}

impl From<DietTag> for Diet {
    fn from(tag: DietTag) -> Self {
        match tag {
            DietTag::LowSodium => Self::LowSodium,
            DietTag::LowSugar => Self::LowSugar,
            DietTag::Vegetarian => Self::Vegetarian,
            DietTag::Vegan => Self::Vegan,
            DietTag::Halal => Self::Halal,
            DietTag::Pregnancy => Self::Pregnancy,
            DietTag::LowFiber => Self::LowFiber,
            DietTag::IodineRestricted => Self::IodineRestricted,
        }
    }
}

/// A JSON object of the partner's.
pub type JsonObject = std::collections::BTreeMap<String, Value>;

/// A language tag such as `en`, `de` or `pt-BR`.
pub const LANG_PATTERN: &str = "^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$";
/// The longest language tag.
pub const MAX_LANG_LENGTH: usize = 16;
/// A partner's id for a job.
pub const CLIENT_REFERENCE_PATTERN: &str = "^[A-Za-z0-9._:/-]{1,128}$";
/// A model id.
pub const MODEL_ID_PATTERN: &str = "^[A-Za-z0-9._:@-]{1,100}$";

/// What the partner asked for.
#[derive(Debug, Clone, Object)]
pub struct JobRequest {
    pub image: JobImage,
    #[oai(nullable)]
    pub webhook_url: Option<HttpUrl>,
    /// The partner's own JSON object, returned as given.
    #[oai(nullable)]
    pub metadata: Option<JsonObject>,
    #[oai(nullable)]
    pub model_id: Option<String>,
    /// Diet tags the tips respect, sorted.
    pub diets: Vec<Diet>,
    /// Language of the tips; null means `en`.
    #[oai(
        nullable,
        validator(pattern = "^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$", max_length = 16)
    )]
    pub lang: Option<String>,
    /// The partner's own id for the job, unique per partner.
    #[oai(nullable)]
    pub client_reference: Option<String>,
}

/// Stable codes of why a job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum JobErrorCode {
    /// The image's header or pixels cannot be decoded.
    ImageCorrupt,
    /// The image cannot be read at all.
    ImageUnreadable,
    /// Not JPEG, PNG or WebP.
    UnsupportedImageFormat,
    /// Too many pixels, too many bytes, or too much memory to decode.
    ImageTooLarge,
    /// The job's image is gone from the store.
    ImageMissing,
    /// `image_url` answered with an error, or not at all, on every attempt.
    ImageFetchFailed,
    /// `image_url` took too long on every attempt.
    ImageFetchTimeout,
    /// `image_url` resolved to a private, loopback or metadata address.
    UrlForbiddenHost,
    /// The model failed on every attempt.
    InferenceFailed,
    /// The job's `model_id` names a model no longer offered: its folder was taken away
    /// after the job was enqueued.
    ModelUnknown,
    /// The image store was unavailable on every attempt.
    StorageUnavailable,
    /// The database was unavailable on every attempt.
    DatabaseUnavailable,
    /// The worker holding the job stopped answering on every attempt.
    WorkerLost,
    /// Queued for longer than the daily reconciliation allows.
    Stale,
}

/// Why a job failed.
#[derive(Debug, Clone, Object)]
pub struct JobError {
    pub code: JobErrorCode,
    pub message: String,
}

/// One of the model's most probable classes.
#[derive(Debug, Clone, Object, serde::Deserialize)]
pub struct LabelProbability {
    /// The class's index in the model's output.
    pub index: u32,
    pub label: String,
    #[oai(validator(minimum(value = "0"), maximum(value = "1")))]
    pub probability: f64,
    /// The food group, when this class is food.
    #[oai(nullable)]
    pub food_group: Option<String>,
}

/// A short tip for the person who ate the meal.
#[derive(Debug, Clone, Object, serde::Deserialize)]
pub struct Tip {
    /// A stable id, e.g. `add_vegetables`.
    pub id: String,
    /// The tip in the job's `lang` (English where it has no translation).
    pub text: String,
}

/// What the model saw and how healthy the meal is.
#[derive(Debug, Clone, Object, serde::Deserialize)]
pub struct ScoreResult {
    /// Whether the photo shows food. When false, `score`, `rating` and `food_group` are
    /// null and there are no tips.
    pub is_food: bool,
    /// Healthiness from 1.0 (least) to 5.0 (most): the food classes' scores weighted by
    /// their probabilities.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "5")))]
    pub score: Option<f64>,
    /// `score` rounded to a whole 1 to 5.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "5")))]
    pub rating: Option<u8>,
    /// The probability mass behind the score, 0 to 1.
    #[oai(validator(minimum(value = "0"), maximum(value = "1")))]
    pub confidence: f64,
    /// The evidence for food (food classes plus tableware), 0 to 1, compared with a
    /// threshold to decide `is_food`.
    #[oai(validator(minimum(value = "0"), maximum(value = "1")))]
    pub food_evidence: f64,
    /// The food group with the most probability, e.g. `fruit`.
    #[oai(nullable)]
    pub food_group: Option<String>,
    /// The five most probable classes, most probable first.
    pub labels: Vec<LabelProbability>,
    /// Up to three tips, shaped by the job's diets.
    pub tips: Vec<Tip>,
    /// The language of the tips.
    pub lang: String,
    /// The model version that scored the photo.
    pub model_version: String,
}

impl ScoreResult {
    /// The stored result, as the API shows it: `None` (and an error logged) if it does not
    /// have the documented shape.
    fn from_stored(job_id: Uuid, stored: Value) -> Option<Self> {
        match serde_json::from_value::<Self>(stored) {
            Ok(mut result) => {
                result.score = result.score.map(round4);
                result.confidence = round4(result.confidence);
                result.food_evidence = round4(result.food_evidence);
                for label in &mut result.labels {
                    label.probability = round4(label.probability);
                }
                Some(result)
            }
            Err(err) => {
                tracing::error!(%job_id, error = %err, "a stored result does not parse");
                None
            }
        }
    }
}

/// A scoring job.
#[derive(Debug, Clone, Object)]
pub struct Job {
    pub job_id: Uuid,
    pub status: JobState,
    pub created_at: Timestamp,
    /// The job's last change; `GET /jobs?updated_since=` lists by it.
    pub updated_at: Timestamp,
    pub request: JobRequest,
    /// The scoring result; null until the job has succeeded.
    #[oai(nullable)]
    pub result: Option<ScoreResult>,
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
            code: parse_stored(job.id, code, JobErrorCode::InferenceFailed),
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
                    url: job.image_url.map(HttpUrl),
                    sha256: job.image_sha256,
                    bytes: job.image_bytes,
                    format: job
                        .image_format
                        .map(|f| parse_stored(job.id, f, ImageFormat::Jpeg)),
                    width: job.image_width,
                    height: job.image_height,
                },
                webhook_url: job.webhook_url.map(HttpUrl),
                metadata: job.metadata.and_then(|m| match m {
                    Value::Object(fields) => Some(fields.into_iter().collect()),
                    _ => None,
                }),
                model_id: job.model_id,
                diets: job
                    .diets
                    .iter()
                    .flat_map(|d| d.split(','))
                    .filter_map(|d| d.parse::<DietTag>().ok())
                    .map(Diet::from)
                    .collect(),
                lang: job.lang,
                client_reference: job.client_reference,
            },
            result: job
                .result
                .and_then(|stored| ScoreResult::from_stored(job.id, stored)),
            error,
            processing_time_ms: job.processing_time_ms,
            deliveries: Vec::new(),
        }
    }
}

/// A stored string as one of the API's enums; `fallback` (and an error logged) for a value
/// this version does not know.
pub(super) fn parse_stored<T: ParseFromJSON>(job_id: Uuid, value: String, fallback: T) -> T {
    T::parse_from_json(Some(Value::String(value.clone()))).unwrap_or_else(|_| {
        tracing::error!(%job_id, %value, "a stored value is not one the API documents");
        fallback
    })
}

/// Enqueue by URL: the worker fetches the image.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct EnqueueUrlRequest {
    /// `http` or `https` URL of a JPEG, PNG or WebP image on a public host.
    pub image_url: HttpUrl,
    /// Where to POST the result. Optional: without it, poll `GET /status/{job_id}`.
    pub webhook_url: Option<HttpUrl>,
    /// Any JSON object of yours (at most 16 KiB by default), returned with the job.
    pub metadata: Option<JsonObject>,
    /// The model to score with (`GET /models` lists them; another id is `422
    /// model_unknown`); the default model when absent.
    #[oai(validator(pattern = "^[A-Za-z0-9._:@-]{1,100}$"))]
    pub model_id: Option<String>,
    /// Diet tags that shape the tips.
    #[oai(validator(max_items = 8))]
    pub diets: Option<Vec<Diet>>,
    /// Language of the tips, e.g. `en` (English where a tip has no translation).
    #[oai(validator(pattern = "^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$", max_length = 16))]
    pub lang: Option<String>,
    /// Your own id for the job, unique among your jobs: a repeat with the same body returns
    /// the same job; with a different body, `409 client_reference_reused`.
    #[oai(validator(pattern = "^[A-Za-z0-9._:/-]{1,128}$"))]
    pub client_reference: Option<String>,
}

/// Many job ids, for reconciliation.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
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

/// A page of jobs: newest first, or oldest change first with `updated_since`.
#[derive(Debug, Clone, Object)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// What `redeliver` scheduled.
#[derive(Debug, Clone, Object)]
pub struct Redelivery {
    /// Deliveries now due; 0 when the job has no webhook destination.
    pub deliveries: u32,
}

/// `type` of a `job.succeeded` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum JobSucceededType {
    #[oai(rename = "job.succeeded")]
    JobSucceeded,
}

/// `type` of a `job.failed` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum JobFailedType {
    #[oai(rename = "job.failed")]
    JobFailed,
}

/// POSTed to your webhook when a job has its result: the job as `GET /status` shows it,
/// without `deliveries`, plus `type`. Signed per Standard Webhooks; deduplicate by the
/// `webhook-id` header.
#[derive(Debug, Clone, Object)]
pub struct JobSucceededEvent {
    #[oai(rename = "type")]
    pub event_type: JobSucceededType,
    pub job_id: Uuid,
    pub status: JobState,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub request: JobRequest,
    pub result: ScoreResult,
    /// Always null in this event.
    #[oai(nullable)]
    pub error: Option<JobError>,
    pub processing_time_ms: i64,
}

/// POSTed to your webhook when a job has failed for good: the job as `GET /status` shows
/// it, without `deliveries`, plus `type`. Signed per Standard Webhooks; deduplicate by the
/// `webhook-id` header.
#[derive(Debug, Clone, Object)]
pub struct JobFailedEvent {
    #[oai(rename = "type")]
    pub event_type: JobFailedType,
    pub job_id: Uuid,
    pub status: JobState,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub request: JobRequest,
    /// Always null in this event.
    #[oai(nullable)]
    pub result: Option<ScoreResult>,
    pub error: JobError,
    #[oai(nullable)]
    pub processing_time_ms: Option<i64>,
}

impl Job {
    /// The webhook body announcing this finished job; `None` for a job that has not
    /// finished (or a succeeded one without a readable result).
    pub fn into_event(self) -> Option<Value> {
        match (self.status, self.result, self.error) {
            (JobState::Succeeded, Some(result), _) => JobSucceededEvent {
                event_type: JobSucceededType::JobSucceeded,
                job_id: self.job_id,
                status: self.status,
                created_at: self.created_at,
                updated_at: self.updated_at,
                request: self.request,
                result,
                error: None,
                processing_time_ms: self.processing_time_ms.unwrap_or_default(),
            }
            .to_json(),
            (JobState::Failed, _, Some(error)) => JobFailedEvent {
                event_type: JobFailedType::JobFailed,
                job_id: self.job_id,
                status: self.status,
                created_at: self.created_at,
                updated_at: self.updated_at,
                request: self.request,
                result: None,
                error,
                processing_time_ms: self.processing_time_ms,
            }
            .to_json(),
            _ => None,
        }
    }
}
