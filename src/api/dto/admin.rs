//! The operators' views: usage statistics, reconciliation runs and the service overview.

use entity::reconcile_run;
use poem_openapi::{Enum, Object};
use uuid::Uuid;

use super::{jobs::parse_stored, JobErrorCode, Timestamp, WebhookEndpoint};

/// What started a reconciliation run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum RunTrigger {
    /// The daily schedule.
    Schedule,
    /// `platescore reconcile`, by an operator.
    Manual,
}

/// Whose jobs statistics cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum StatsScope {
    /// One partner's jobs.
    Partner,
    /// Every partner's (admin keys only).
    All,
}

/// One run of the daily reconciliation.
#[derive(Debug, Clone, Object)]
pub struct ReconcileRun {
    pub id: Uuid,
    /// The scheduled instant (or the moment of a manual run).
    pub slot: Timestamp,
    pub trigger: RunTrigger,
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
    /// How many times another node took the run over because the node running it stopped
    /// renewing its lease (it died, or shut down mid-run). The counts are those of the run
    /// that finished.
    pub takeovers: i32,
}

impl From<reconcile_run::Model> for ReconcileRun {
    fn from(r: reconcile_run::Model) -> Self {
        Self {
            id: r.id,
            slot: Timestamp(r.slot),
            trigger: if r.trigger == "manual" {
                RunTrigger::Manual
            } else {
                RunTrigger::Schedule
            },
            started_at: Timestamp(r.started_at),
            finished_at: r.finished_at.map(Timestamp),
            jobs_requeued: r.jobs_requeued,
            jobs_failed_stale: r.jobs_failed_stale,
            deliveries_rescheduled: r.deliveries_rescheduled,
            endpoints_disabled: r.endpoints_disabled,
            jobs_deleted: r.jobs_deleted,
            objects_deleted: r.objects_deleted,
            error: r.error,
            takeovers: r.takeovers,
        }
    }
}

#[derive(Debug, Clone, Object)]
pub struct ReconcileRunList {
    pub runs: Vec<ReconcileRun>,
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
    pub scope: StatsScope,
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
    pub fn new(scope: StatsScope, days: u32, stats: crate::store::stats::Stats) -> Self {
        Self {
            scope,
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
    pub code: JobErrorCode,
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
            code: parse_stored(
                job.id,
                job.error_code.unwrap_or_default(),
                JobErrorCode::InferenceFailed,
            ),
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
