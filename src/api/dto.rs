//! What the API sends and receives. These are not entities: `From<job::Model>` builds them.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use entity::job::{self, JobStatus};
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
            },
            result: job.result,
            error,
            processing_time_ms: job.processing_time_ms,
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
    /// `ok` or `unavailable`.
    pub status: String,
    pub database: String,
    pub object_store: String,
}
