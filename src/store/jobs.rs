//! Jobs: insertion with idempotency keys, lookups scoped to their partner, and listing.

use chrono::Utc;
use entity::job::{self, JobStatus};
use sea_orm::{prelude::*, ActiveValue::Set, QueryOrder, QuerySelect, SqlErr};

use super::{Db, StoreError};

/// Everything enqueue knows about a new job.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub partner_id: Uuid,
    pub image: NewJobImage,
    pub webhook_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub model_id: Option<String>,
    /// Canonical diet tags (sorted, comma-separated), if any.
    pub diets: Option<String>,
    pub lang: Option<String>,
    pub idempotency_key: Option<String>,
    pub request_fingerprint: String,
}

#[derive(Debug, Clone)]
pub enum NewJobImage {
    Url(String),
    Stored {
        key: String,
        sha256: String,
        bytes: i64,
        format: String,
        width: i32,
        height: i32,
    },
}

#[derive(Debug)]
pub enum InsertOutcome {
    Created(job::Model),
    /// The idempotency key was used before with the same request: here is that job.
    Replayed(job::Model),
    /// The idempotency key was used before with a different request.
    KeyReused,
}

pub async fn insert(db: &Db, new: NewJob) -> Result<InsertOutcome, StoreError> {
    if let Some(key) = &new.idempotency_key {
        if let Some(existing) = find_by_idempotency_key(db, new.partner_id, key).await? {
            return Ok(replay_or_conflict(existing, &new.request_fingerprint));
        }
    }
    let now = Utc::now();
    let (image_url, image_key, image_sha256, image_bytes, image_format, image_width, image_height) =
        match new.image {
            NewJobImage::Url(url) => (Some(url), None, None, None, None, None, None),
            NewJobImage::Stored {
                key,
                sha256,
                bytes,
                format,
                width,
                height,
            } => (
                None,
                Some(key),
                Some(sha256),
                Some(bytes),
                Some(format),
                Some(width),
                Some(height),
            ),
        };
    let model = job::ActiveModel {
        id: Set(Uuid::now_v7()),
        partner_id: Set(new.partner_id),
        status: Set(JobStatus::Queued),
        image_url: Set(image_url),
        image_key: Set(image_key),
        image_sha256: Set(image_sha256),
        image_bytes: Set(image_bytes),
        image_format: Set(image_format),
        image_width: Set(image_width),
        image_height: Set(image_height),
        webhook_url: Set(new.webhook_url),
        metadata: Set(new.metadata),
        model_id: Set(new.model_id),
        idempotency_key: Set(new.idempotency_key.clone()),
        request_fingerprint: Set(new.request_fingerprint.clone()),
        result: Set(None),
        error_code: Set(None),
        error_message: Set(None),
        attempts: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
        started_at: Set(None),
        finished_at: Set(None),
        processing_time_ms: Set(None),
        run_at: Set(Some(now)),
        lease_token: Set(None),
        lease_expires_at: Set(None),
        model_version: Set(None),
        diets: Set(new.diets),
        lang: Set(new.lang),
    };
    match model.insert(db.writer()).await {
        Ok(created) => Ok(InsertOutcome::Created(created)),
        // Two requests with one key raced; the other one won.
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            let key = new.idempotency_key.as_deref().ok_or(StoreError::Db(err))?;
            let existing = find_by_idempotency_key(db, new.partner_id, key)
                .await?
                .ok_or_else(|| StoreError::Setup("idempotency row vanished".into()))?;
            Ok(replay_or_conflict(existing, &new.request_fingerprint))
        }
        Err(err) => Err(err.into()),
    }
}

fn replay_or_conflict(existing: job::Model, fingerprint: &str) -> InsertOutcome {
    if existing.request_fingerprint == fingerprint {
        InsertOutcome::Replayed(existing)
    } else {
        InsertOutcome::KeyReused
    }
}

pub async fn find_by_idempotency_key(
    db: &Db,
    partner_id: Uuid,
    key: &str,
) -> Result<Option<job::Model>, StoreError> {
    Ok(job::Entity::find()
        .filter(job::Column::PartnerId.eq(partner_id))
        .filter(job::Column::IdempotencyKey.eq(key))
        .one(db.writer())
        .await?)
}

/// A job, if it exists and belongs to this partner.
pub async fn find(db: &Db, partner_id: Uuid, id: Uuid) -> Result<Option<job::Model>, StoreError> {
    Ok(job::Entity::find_by_id(id)
        .filter(job::Column::PartnerId.eq(partner_id))
        .one(db.reader())
        .await?)
}

/// Those of `ids` that exist and belong to this partner, in no particular order.
pub async fn find_many(
    db: &Db,
    partner_id: Uuid,
    ids: &[Uuid],
) -> Result<Vec<job::Model>, StoreError> {
    let mut found = Vec::with_capacity(ids.len());
    // Chunked to stay far below SQLite's bound-parameter limit.
    for chunk in ids.chunks(500) {
        found.extend(
            job::Entity::find()
                .filter(job::Column::PartnerId.eq(partner_id))
                .filter(job::Column::Id.is_in(chunk.iter().copied()))
                .all(db.reader())
                .await?,
        );
    }
    Ok(found)
}

/// A page of a partner's jobs, newest first, strictly older than `before` when given.
pub async fn list(
    db: &Db,
    partner_id: Uuid,
    status: Option<JobStatus>,
    before: Option<Uuid>,
    limit: u64,
) -> Result<Vec<job::Model>, StoreError> {
    let mut query = job::Entity::find().filter(job::Column::PartnerId.eq(partner_id));
    if let Some(status) = status {
        query = query.filter(job::Column::Status.eq(status));
    }
    if let Some(before) = before {
        query = query.filter(job::Column::Id.lt(before));
    }
    Ok(query
        .order_by_desc(job::Column::Id)
        .limit(limit)
        .all(db.reader())
        .await?)
}

/// Up to `limit` jobs created before `cutoff`, oldest first: the retention sweep's next batch.
pub async fn expired(
    db: &Db,
    cutoff: chrono::DateTime<Utc>,
    limit: u64,
) -> Result<Vec<job::Model>, StoreError> {
    Ok(job::Entity::find()
        .filter(job::Column::CreatedAt.lt(cutoff))
        .order_by_asc(job::Column::Id)
        .limit(limit)
        .all(db.reader())
        .await?)
}

/// Whether a job other than those in `except` points at this object.
pub async fn object_is_referenced(
    db: &Db,
    image_key: &str,
    except: &[Uuid],
) -> Result<bool, StoreError> {
    Ok(job::Entity::find()
        .filter(job::Column::ImageKey.eq(image_key))
        .filter(job::Column::Id.is_not_in(except.iter().copied()))
        .count(db.writer())
        .await?
        > 0)
}

/// Deletes jobs (their deliveries and attempts go with them); returns how many.
pub async fn delete(db: &Db, ids: &[Uuid]) -> Result<u64, StoreError> {
    Ok(job::Entity::delete_many()
        .filter(job::Column::Id.is_in(ids.iter().copied()))
        .exec(db.writer())
        .await?
        .rows_affected)
}

/// The queue at a glance: jobs waiting or being worked on, and the age of the oldest due
/// queued job. Finished jobs are not counted: their number grows with retention, and these
/// are read at every scrape and dashboard refresh.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub queued: u64,
    pub in_progress: u64,
    pub oldest_due_age_seconds: f64,
}

pub async fn queue_stats(db: &Db, now: chrono::DateTime<Utc>) -> Result<QueueStats, StoreError> {
    let count = |status: JobStatus| {
        job::Entity::find()
            .filter(job::Column::Status.eq(status))
            .count(db.reader())
    };
    let queued = count(JobStatus::Queued).await?;
    let in_progress = count(JobStatus::InProgress).await?;
    let oldest = job::Entity::find()
        .filter(job::Column::Status.eq(JobStatus::Queued))
        .filter(job::Column::RunAt.lte(now))
        .order_by_asc(job::Column::RunAt)
        .one(db.reader())
        .await?;
    let oldest_due_age_seconds = oldest
        .and_then(|j| j.run_at)
        .map(|at| (now - at).num_milliseconds().max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    Ok(QueueStats {
        queued,
        in_progress,
        oldest_due_age_seconds,
    })
}
