//! The work queue over the jobs table, a leased queue (see `leased`): a claim moves due
//! `queued` jobs to `in_progress` under a fresh lease token; only the token's holder may
//! finish the job, and leases that expire (a crashed or stuck worker) are rescued back to
//! `queued`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::job::{self, JobStatus};
use sea_orm::{
    prelude::*,
    sea_query::{Expr, ExprTrait},
    TransactionTrait,
};

use super::{
    deliveries::{self, PayloadRenderer},
    fair::Turns,
    lease_end,
    leased::{self, DELIVERIES, JOBS},
    Db, StoreError,
};

/// A job held by a worker.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job: job::Model,
    pub token: Uuid,
}

/// Claims up to `limit` due jobs, lowest turn first (fair between partners: see `fair`).
pub async fn claim(
    db: &Db,
    now: DateTime<Utc>,
    limit: u64,
    lease_for: Duration,
) -> Result<Vec<Lease>, StoreError> {
    let (jobs, token) = leased::claim(db, &JOBS, now, limit, lease_for, None).await?;
    Ok(jobs.into_iter().map(|job| Lease { job, token }).collect())
}

/// Extends a lease; false when the lease is no longer ours.
pub async fn heartbeat(
    db: &Db,
    lease: &Lease,
    now: DateTime<Utc>,
    lease_for: Duration,
) -> Result<bool, StoreError> {
    let result = job::Entity::update_many()
        .col_expr(
            job::Column::LeaseExpiresAt,
            Expr::value(lease_end(now, lease_for)),
        )
        .filter(held(lease))
        .exec(db.writer())
        .await?;
    Ok(result.rows_affected == 1)
}

fn held(lease: &Lease) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(job::Column::Id.eq(lease.job.id))
        .add(job::Column::Status.eq(JobStatus::InProgress))
        .add(job::Column::LeaseToken.eq(lease.token))
}

/// How a worker finished with a job.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded {
        result: serde_json::Value,
        model_version: String,
        processing_time_ms: i64,
    },
    Failed {
        code: String,
        message: String,
        processing_time_ms: i64,
    },
    /// Back to the queue, due at `run_at` (a transient failure, or a worker shutting down).
    Retry {
        run_at: DateTime<Utc>,
        code: String,
        message: String,
    },
}

/// Records the outcome if the lease is still ours, and for a final outcome writes the job's
/// webhook deliveries in the same transaction (the outbox). Returns the number of deliveries
/// written, or None when the lease is no longer ours (it expired and another worker may
/// hold the job now), in which case nothing is written.
pub async fn finish(
    db: &Db,
    lease: &Lease,
    now: DateTime<Utc>,
    outcome: Outcome,
    render: &PayloadRenderer,
) -> Result<Option<usize>, StoreError> {
    let mut finished = finish_many(db, vec![(lease.clone(), outcome)], now, render).await?;
    Ok(finished.pop().flatten())
}

/// [`finish`] for many jobs in one transaction (a group commit: under load one commit
/// serves many jobs). Returns, per job in order, what `finish` would.
pub async fn finish_many(
    db: &Db,
    outcomes: Vec<(Lease, Outcome)>,
    now: DateTime<Utc>,
    render: &PayloadRenderer,
) -> Result<Vec<Option<usize>>, StoreError> {
    let txn = db.writer().begin().await?;
    let mut results = Vec::with_capacity(outcomes.len());
    let mut rows = Vec::new();
    let mut endpoints_of: std::collections::HashMap<Uuid, deliveries::Destinations> =
        std::collections::HashMap::new();
    let mut turns = Turns::new(&DELIVERIES);
    for (lease, outcome) in outcomes {
        let is_final = !matches!(outcome, Outcome::Retry { .. });
        let updated = outcome_update(outcome, now)
            .filter(held(&lease))
            .exec_with_returning(&txn)
            .await?;
        let Some(job) = updated.into_iter().next() else {
            results.push(None);
            continue;
        };
        if !is_final {
            results.push(Some(0));
            continue;
        }
        if job.webhook_url.is_none() && !endpoints_of.contains_key(&job.partner_id) {
            let found = deliveries::partner_destinations(&txn, job.partner_id).await?;
            endpoints_of.insert(job.partner_id, found);
        }
        let empty = Vec::new();
        let endpoints = endpoints_of.get(&job.partner_id).unwrap_or(&empty);
        let turn = turns.take(&txn, job.partner_id).await?;
        let job_rows = deliveries::rows_for_job(&job, endpoints, render, now, turn);
        results.push(Some(job_rows.len()));
        rows.extend(job_rows);
    }
    deliveries::insert_rows(&txn, rows).await?;
    txn.commit().await?;
    Ok(results)
}

/// An UPDATE of jobs that ends their lease at `now`; callers add the rest.
fn unleased(now: DateTime<Utc>) -> sea_orm::UpdateMany<job::Entity> {
    job::Entity::update_many()
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .col_expr(job::Column::LeaseToken, Expr::value(Option::<Uuid>::None))
        .col_expr(
            job::Column::LeaseExpiresAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
}

/// The UPDATE that records an outcome, without its row filter.
fn outcome_update(outcome: Outcome, now: DateTime<Utc>) -> sea_orm::UpdateMany<job::Entity> {
    let update = unleased(now);
    match outcome {
        Outcome::Succeeded {
            result,
            model_version,
            processing_time_ms,
        } => finished(update, now, JobStatus::Succeeded, processing_time_ms)
            .col_expr(job::Column::Result, Expr::value(result))
            .col_expr(job::Column::ModelVersion, Expr::value(model_version))
            .col_expr(job::Column::ErrorCode, Expr::value(Option::<String>::None))
            .col_expr(
                job::Column::ErrorMessage,
                Expr::value(Option::<String>::None),
            ),
        Outcome::Failed {
            code,
            message,
            processing_time_ms,
        } => finished(update, now, JobStatus::Failed, processing_time_ms)
            .col_expr(job::Column::ErrorCode, Expr::value(code))
            .col_expr(job::Column::ErrorMessage, Expr::value(message)),
        Outcome::Retry {
            run_at,
            code,
            message,
        } => update
            .col_expr(job::Column::Status, Expr::value(JobStatus::Queued))
            .col_expr(job::Column::RunAt, Expr::value(run_at))
            .col_expr(job::Column::ErrorCode, Expr::value(code))
            .col_expr(job::Column::ErrorMessage, Expr::value(message)),
    }
}

/// Records the image a worker fetched for a URL job, under its lease.
pub async fn record_fetched_image(
    db: &Db,
    lease: &Lease,
    image: &FetchedImage,
) -> Result<bool, StoreError> {
    let result = job::Entity::update_many()
        .col_expr(job::Column::ImageKey, Expr::value(image.key.clone()))
        .col_expr(job::Column::ImageSha256, Expr::value(image.sha256.clone()))
        .col_expr(job::Column::ImageBytes, Expr::value(image.bytes))
        .col_expr(job::Column::ImageFormat, Expr::value(image.format.clone()))
        .col_expr(job::Column::ImageWidth, Expr::value(image.width))
        .col_expr(job::Column::ImageHeight, Expr::value(image.height))
        .filter(held(lease))
        .exec(db.writer())
        .await?;
    Ok(result.rows_affected == 1)
}

/// An image fetched from a job's URL and stored.
#[derive(Debug, Clone)]
pub struct FetchedImage {
    pub key: String,
    pub sha256: String,
    pub bytes: i64,
    pub format: String,
    pub width: i32,
    pub height: i32,
}

/// A result the same model version already produced for the same partner, image bytes, diet tags
/// and tip language (the tips depend on them).
pub async fn reusable_result(
    db: &Db,
    job: &job::Model,
    sha256: &str,
    model_version: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    let same = |column: job::Column, value: &Option<String>| match value {
        Some(v) => column.eq(v.as_str()),
        None => column.is_null(),
    };
    Ok(job::Entity::find()
        // Only the partner's own jobs: reusing another partner's result would tell them,
        // by its speed, that someone else sent the same photo.
        .filter(job::Column::PartnerId.eq(job.partner_id))
        .filter(job::Column::ImageSha256.eq(sha256))
        .filter(job::Column::ModelVersion.eq(model_version))
        .filter(same(job::Column::Diets, &job.diets))
        .filter(same(job::Column::Lang, &job.lang))
        .filter(job::Column::Status.eq(JobStatus::Succeeded))
        .one(db.reader())
        .await?
        .and_then(|job| job.result))
}

/// Returns a job to the queue at once, for a worker that is shutting down.
pub async fn release(db: &Db, lease: &Lease, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let result = unleased(now)
        .col_expr(job::Column::Status, Expr::value(JobStatus::Queued))
        .col_expr(job::Column::RunAt, Expr::value(now))
        // The attempt did not happen; give it back.
        .col_expr(
            job::Column::Attempts,
            Expr::col(job::Column::Attempts).sub(1),
        )
        .filter(held(lease))
        .exec(db.writer())
        .await?;
    Ok(result.rows_affected == 1)
}

/// The columns every final outcome sets.
fn finished(
    update: sea_orm::UpdateMany<job::Entity>,
    now: DateTime<Utc>,
    status: JobStatus,
    processing_time_ms: i64,
) -> sea_orm::UpdateMany<job::Entity> {
    update
        .col_expr(job::Column::Status, Expr::value(status))
        .col_expr(job::Column::FinishedAt, Expr::value(now))
        .col_expr(
            job::Column::ProcessingTimeMs,
            Expr::value(processing_time_ms),
        )
}

/// Jobs whose lease expired before `now` (their worker crashed or hung): back to the queue
/// while attempts remain, else failed with `worker_lost` (with their webhooks), so a job
/// that kills its worker cannot loop forever. The status and expiry are re-checked inside
/// each UPDATE, so a job finished meanwhile is left alone. Returns (requeued, failed).
pub async fn rescue_expired(
    db: &Db,
    now: DateTime<Utc>,
    max_attempts: i32,
    render: &PayloadRenderer,
) -> Result<(u64, u64), StoreError> {
    let expired = || {
        sea_orm::Condition::all()
            .add(job::Column::Status.eq(JobStatus::InProgress))
            .add(job::Column::LeaseExpiresAt.lt(now))
    };
    let requeued = requeue(db, expired(), max_attempts, now).await?;
    let failed = fail_exhausted(
        db,
        expired,
        max_attempts,
        "worker_lost",
        "the worker working on it stopped answering on every attempt",
        now,
        render,
    )
    .await?;
    Ok((requeued, failed))
}

/// Reconciliation of jobs stuck past `cutoff`: in progress without an update since it
/// (a hung worker that still heartbeats, or no worker left to rescue it) are requeued while
/// attempts remain; those, and queued jobs due before `cutoff` that are out of attempts,
/// fail with `stale` (and get their webhooks, like any finished job). Queued jobs with
/// attempts left keep their place in the queue. Each change is conditional on the job still
/// being stuck, so a worker finishing it meanwhile wins. Returns (requeued, failed).
pub async fn reconcile_stale(
    db: &Db,
    cutoff: DateTime<Utc>,
    max_attempts: i32,
    now: DateTime<Utc>,
    render: &PayloadRenderer,
) -> Result<(u64, u64), StoreError> {
    let stuck_in_progress = || {
        sea_orm::Condition::all()
            .add(job::Column::Status.eq(JobStatus::InProgress))
            .add(job::Column::UpdatedAt.lt(cutoff))
    };
    let stuck = || {
        sea_orm::Condition::any()
            .add(
                sea_orm::Condition::all()
                    .add(job::Column::Status.eq(JobStatus::Queued))
                    .add(job::Column::RunAt.lt(cutoff)),
            )
            .add(stuck_in_progress())
    };
    let requeued = requeue(db, stuck_in_progress(), max_attempts, now).await?;
    let failed = fail_exhausted(
        db,
        stuck,
        max_attempts,
        "stale",
        "the job was stuck and out of attempts; given up by reconciliation",
        now,
        render,
    )
    .await?;
    Ok((requeued, failed))
}

/// Back to the queue, due now: the jobs matching `which` that have attempts left.
async fn requeue(
    db: &Db,
    which: sea_orm::Condition,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(unleased(now)
        .col_expr(job::Column::Status, Expr::value(JobStatus::Queued))
        .col_expr(job::Column::RunAt, Expr::value(now))
        .filter(which)
        .filter(job::Column::Attempts.lt(max_attempts))
        .exec(db.writer())
        .await?
        .rows_affected)
}

/// Fails the jobs matching `which` that are out of attempts, each in a transaction with
/// its outbox rows. Returns how many.
async fn fail_exhausted(
    db: &Db,
    which: impl Fn() -> sea_orm::Condition,
    max_attempts: i32,
    code: &str,
    message: &str,
    now: DateTime<Utc>,
    render: &PayloadRenderer,
) -> Result<u64, StoreError> {
    let exhausted = job::Entity::find()
        .filter(which())
        .filter(job::Column::Attempts.gte(max_attempts))
        .all(db.reader())
        .await?;
    let mut failed = 0;
    for stuck in exhausted {
        let txn = db.writer().begin().await?;
        let changed = unleased(now)
            .col_expr(job::Column::Status, Expr::value(JobStatus::Failed))
            .col_expr(job::Column::ErrorCode, Expr::value(code))
            .col_expr(
                job::Column::ErrorMessage,
                Expr::value(format!("{message} ({} attempts)", stuck.attempts)),
            )
            .col_expr(job::Column::FinishedAt, Expr::value(now))
            .filter(job::Column::Id.eq(stuck.id))
            .filter(which())
            .exec_with_returning(&txn)
            .await?;
        if let Some(job) = changed.into_iter().next() {
            deliveries::enqueue_for_job(&txn, &job, render, now).await?;
            failed += 1;
        }
        txn.commit().await?;
    }
    Ok(failed)
}
