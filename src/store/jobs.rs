//! Jobs: insertion with idempotency keys, lookups scoped to their partner, and listing.

use chrono::Utc;
use entity::{
    delivery::{self, DeliveryStatus},
    erased_job,
    job::{self, JobStatus},
};
use sea_orm::{
    prelude::*, ActiveValue::Set, Condition, QueryOrder, QuerySelect, SqlErr, TransactionTrait,
};

use super::{fair, leased::JOBS, Db, StoreError};

/// Everything enqueue knows about a new job.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// A UUIDv7, so ids sort by creation time; chosen before the insert because the image's
    /// key holds it.
    pub id: Uuid,
    pub partner_id: Uuid,
    pub image: NewJobImage,
    pub webhook_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub model_id: Option<String>,
    /// Canonical diet tags (sorted, comma-separated), if any.
    pub diets: Option<String>,
    pub lang: Option<String>,
    pub idempotency_key: Option<String>,
    pub client_reference: Option<String>,
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
    Created(Box<job::Model>),
    /// An earlier request with the same idempotency key or client reference.
    Earlier(Earlier),
    /// The partner has as many jobs queued or in progress as allowed (see [`insert_within`]).
    QueueFull,
}

/// What an earlier request with the same idempotency key (or else client reference) made.
#[derive(Debug)]
pub enum Earlier {
    /// The same request: here is its job.
    Replayed(Box<job::Model>),
    /// The idempotency key was used with a different request.
    KeyReused,
    /// The client reference names a job asked for with a different request.
    ReferenceReused,
}

/// Inserts the job, unless an earlier request took its idempotency key or client reference
/// (also when one races this one: the unique indexes decide).
pub async fn insert(db: &Db, new: NewJob) -> Result<InsertOutcome, StoreError> {
    let turn = fair::next_turn(db.reader(), &JOBS, new.partner_id).await?;
    let row = new_row(&new, db.now().await, turn);
    // In a transaction of its own, committed by a statement of its own: on SQLite an
    // `INSERT … RETURNING` outside a transaction commits as the statement ends, after the
    // driver has taken the row it returned, and a commit that fails then (a full disk) is
    // not reported: the job would be answered as created, and be gone.
    let txn = db.writer().begin().await?;
    match row.insert(&txn).await {
        Ok(created) => {
            txn.commit().await?;
            Ok(InsertOutcome::Created(Box::new(created)))
        }
        Err(err) => {
            // The insert's error is the one to report: a rollback may fail too, where SQLite
            // has rolled the transaction back already.
            let _ = txn.rollback().await;
            lost_race(db, &new, err).await
        }
    }
}

/// Inserts many jobs in one transaction, one statement: enqueue's group commit. Fails as a
/// whole when any row fails (a lost race on an idempotency key or client reference
/// included); the caller then inserts them one by one with [`insert`], which tells races
/// apart. Each partner's turns are read once and counted up, as consecutive inserts get them.
pub async fn insert_all(db: &Db, jobs: &[NewJob]) -> Result<Vec<job::Model>, StoreError> {
    let now = db.now().await;
    let txn = db.begin_write().await?;
    let inserted = async {
        let mut turns = fair::Turns::new(&JOBS);
        let mut rows = Vec::with_capacity(jobs.len());
        for new in jobs {
            rows.push(new_row(new, now, turns.take(&txn, new.partner_id).await?));
        }
        let mut created = job::Entity::insert_many(rows)
            .exec_with_returning(&txn)
            .await?;
        // RETURNING's row order is not promised: give them back in the order asked.
        let order: std::collections::HashMap<Uuid, usize> =
            jobs.iter().enumerate().map(|(i, j)| (j.id, i)).collect();
        created.sort_by_key(|job| order.get(&job.id).copied());
        Ok::<_, StoreError>(created)
    }
    .await;
    match inserted {
        Ok(created) => {
            txn.commit().await?;
            Ok(created)
        }
        Err(err) => {
            let _ = txn.rollback().await;
            Err(err)
        }
    }
}

/// Inserts the job as [`insert`] does, unless the partner has `max_unfinished` jobs queued
/// or in progress already. The count and the insert are one transaction that holds the
/// partner's row, so concurrent requests take turns and never pass the cap together.
/// Returns the partner's unfinished jobs before this one, as counted.
pub async fn insert_within(
    db: &Db,
    new: NewJob,
    max_unfinished: u64,
) -> Result<(InsertOutcome, u64), StoreError> {
    // Read before the transaction: inside it, a pool exhausted by requests waiting on the
    // partner's row could not lend the clock a connection.
    let now = db.now().await;
    let txn = db.begin_write().await?;
    super::partners::lock_for_update(&txn, new.partner_id).await?;
    let unfinished = count_unfinished(&txn, new.partner_id).await?;
    if unfinished >= max_unfinished {
        txn.rollback().await?;
        return Ok((InsertOutcome::QueueFull, unfinished));
    }
    let turn = fair::next_turn(&txn, &JOBS, new.partner_id).await?;
    let row = new_row(&new, now, turn);
    match row.insert(&txn).await {
        Ok(created) => {
            txn.commit().await?;
            Ok((InsertOutcome::Created(Box::new(created)), unfinished))
        }
        Err(err) => {
            // Ended first: on SQLite the transaction holds the one writer connection that
            // the lookup of the earlier request reads from. The insert's error is the one to
            // report (SQLite may have rolled back already, and then the rollback fails too).
            let _ = txn.rollback().await;
            Ok((lost_race(db, &new, err).await?, unfinished))
        }
    }
}

/// The partner's jobs that are queued or in progress (read from the index on
/// `(partner_id, status, id)` alone).
pub async fn count_unfinished(
    conn: &impl ConnectionTrait,
    partner_id: Uuid,
) -> Result<u64, StoreError> {
    let count: Option<i64> = job::Entity::find()
        .select_only()
        .column_as(job::Column::Id.count(), "unfinished")
        .filter(job::Column::PartnerId.eq(partner_id))
        .filter(job::Column::Status.is_in([JobStatus::Queued, JobStatus::InProgress]))
        .into_tuple()
        .one(conn)
        .await?;
    Ok(count.unwrap_or(0).max(0) as u64)
}

/// What a failed insert means: another request with the same key or reference raced this
/// one and won, or a real error.
async fn lost_race(db: &Db, new: &NewJob, err: DbErr) -> Result<InsertOutcome, StoreError> {
    if !matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        return Err(err.into());
    }
    let earlier = find_earlier(db, new).await?.ok_or(StoreError::Db(err))?;
    Ok(InsertOutcome::Earlier(earlier))
}

/// The new job's row, queued and due at `now`, at its `turn` in the fair queue.
fn new_row(new: &NewJob, now: chrono::DateTime<Utc>, turn: i64) -> job::ActiveModel {
    let (image_url, image_key, image_sha256, image_bytes, image_format, image_width, image_height) =
        match new.image.clone() {
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
    job::ActiveModel {
        id: Set(new.id),
        partner_id: Set(new.partner_id),
        status: Set(JobStatus::Queued),
        image_url: Set(image_url),
        image_key: Set(image_key),
        image_sha256: Set(image_sha256),
        image_bytes: Set(image_bytes),
        image_format: Set(image_format),
        image_width: Set(image_width),
        image_height: Set(image_height),
        webhook_url: Set(new.webhook_url.clone()),
        metadata: Set(new.metadata.clone()),
        model_id: Set(new.model_id.clone()),
        idempotency_key: Set(new.idempotency_key.clone()),
        client_reference: Set(new.client_reference.clone()),
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
        diets: Set(new.diets.clone()),
        lang: Set(new.lang.clone()),
        turn: Set(turn),
    }
}

/// The job an earlier request with the same idempotency key, or else the same client
/// reference, created: replayed when the request is the same, a conflict when not.
pub async fn find_earlier(db: &Db, new: &NewJob) -> Result<Option<Earlier>, StoreError> {
    let fingerprint = &new.request_fingerprint;
    if let Some(key) = &new.idempotency_key {
        if let Some(existing) =
            find_by(db, new.partner_id, job::Column::IdempotencyKey, key).await?
        {
            return Ok(Some(if existing.request_fingerprint == *fingerprint {
                Earlier::Replayed(Box::new(existing))
            } else {
                Earlier::KeyReused
            }));
        }
    }
    if let Some(reference) = &new.client_reference {
        let column = job::Column::ClientReference;
        if let Some(existing) = find_by(db, new.partner_id, column, reference).await? {
            return Ok(Some(if existing.request_fingerprint == *fingerprint {
                Earlier::Replayed(Box::new(existing))
            } else {
                Earlier::ReferenceReused
            }));
        }
    }
    Ok(None)
}

/// A partner's job by its idempotency key or client reference (read from the writer, so a
/// job just created is seen).
async fn find_by(
    db: &Db,
    partner_id: Uuid,
    column: job::Column,
    value: &str,
) -> Result<Option<job::Model>, StoreError> {
    Ok(job::Entity::find()
        .filter(job::Column::PartnerId.eq(partner_id))
        .filter(column.eq(value))
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

/// Which of a partner's jobs a listing shows.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    /// Only jobs with a delivery in this state.
    pub delivery: Option<DeliveryStatus>,
    pub client_reference: Option<String>,
}

/// The order of a listing, and where its page starts.
#[derive(Debug, Clone, Copy)]
pub enum PageOrder {
    /// Newest first, strictly older than `before` when given.
    NewestFirst { before: Option<Uuid> },
    /// Oldest change first (by `updated_at`, then id), from `since`, strictly after
    /// `after`, and no later than `until`.
    ChangedSince {
        since: chrono::DateTime<Utc>,
        after: Option<(chrono::DateTime<Utc>, Uuid)>,
        until: chrono::DateTime<Utc>,
    },
}

/// A page of a partner's jobs.
pub async fn list(
    db: &Db,
    partner_id: Uuid,
    filter: &JobFilter,
    order: PageOrder,
    limit: u64,
) -> Result<Vec<job::Model>, StoreError> {
    let mut query = job::Entity::find().filter(job::Column::PartnerId.eq(partner_id));
    if let Some(status) = filter.status {
        query = query.filter(job::Column::Status.eq(status));
    }
    if let Some(state) = filter.delivery {
        query = query.filter(
            job::Column::Id.in_subquery(
                sea_orm::sea_query::Query::select()
                    .column(delivery::Column::JobId)
                    .from(delivery::Entity)
                    .and_where(delivery::Column::Status.eq(state))
                    .to_owned(),
            ),
        );
    }
    if let Some(reference) = &filter.client_reference {
        query = query.filter(job::Column::ClientReference.eq(reference.as_str()));
    }
    let query = match order {
        PageOrder::NewestFirst { before } => {
            if let Some(before) = before {
                query = query.filter(job::Column::Id.lt(before));
            }
            query.order_by_desc(job::Column::Id)
        }
        PageOrder::ChangedSince {
            since,
            after,
            until,
        } => {
            query = query
                .filter(job::Column::UpdatedAt.gte(since))
                .filter(job::Column::UpdatedAt.lte(until));
            if let Some((at, id)) = after {
                // The first bound alone lets the index range start at the cursor.
                query = query.filter(job::Column::UpdatedAt.gte(at)).filter(
                    Condition::any().add(job::Column::UpdatedAt.gt(at)).add(
                        Condition::all()
                            .add(job::Column::UpdatedAt.eq(at))
                            .add(job::Column::Id.gt(id)),
                    ),
                );
            }
            query
                .order_by_asc(job::Column::UpdatedAt)
                .order_by_asc(job::Column::Id)
        }
    };
    Ok(query.limit(limit).all(db.reader()).await?)
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

/// Deletes a partner's job (its deliveries and attempts go with it) and keeps a tombstone
/// that remembers its image key, in one transaction; the row is locked first, so a worker
/// recording a fetched image either did so before (and the key is in the tombstone) or
/// finds the row gone. Returns the tombstone, or None when the partner has no such job.
pub async fn erase(
    db: &Db,
    partner_id: Uuid,
    id: Uuid,
    now: chrono::DateTime<Utc>,
) -> Result<Option<erased_job::Model>, StoreError> {
    let txn = db.writer().begin().await?;
    let mut query = job::Entity::find_by_id(id).filter(job::Column::PartnerId.eq(partner_id));
    if db.is_postgres() {
        query = query.lock_exclusive();
    }
    let Some(job) = query.one(&txn).await? else {
        return Ok(None);
    };
    job::Entity::delete_by_id(id).exec(&txn).await?;
    let tombstone = erased_job::ActiveModel {
        id: Set(id),
        partner_id: Set(partner_id),
        erased_at: Set(now),
        image_key: Set(job.image_key),
    }
    .insert(&txn)
    .await?;
    txn.commit().await?;
    Ok(Some(tombstone))
}

/// A partner's erased job's tombstone, if it was erased.
pub async fn erased(
    db: &Db,
    partner_id: Uuid,
    id: Uuid,
) -> Result<Option<erased_job::Model>, StoreError> {
    Ok(erased_job::Entity::find_by_id(id)
        .filter(erased_job::Column::PartnerId.eq(partner_id))
        .one(db.writer())
        .await?)
}

/// Records that an erased job's image is taken care of.
pub async fn erased_image_done(db: &Db, id: Uuid) -> Result<(), StoreError> {
    erased_job::Entity::update_many()
        .col_expr(
            erased_job::Column::ImageKey,
            sea_orm::sea_query::Expr::value(Option::<String>::None),
        )
        .filter(erased_job::Column::Id.eq(id))
        .exec(db.writer())
        .await?;
    Ok(())
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
