//! The webhook outbox. A finished job's delivery rows are written in the same transaction
//! as its result ([`super::queue::finish`]); delivery workers claim due rows under a lease
//! (a leased queue, like jobs: see `leased`) and record each attempt.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use entity::{
    delivery::{self, DeliveryStatus},
    delivery_attempt, job, webhook_endpoint,
};
use sea_orm::{
    prelude::*,
    sea_query::{Expr, ExprTrait, LockType},
    ActiveValue::Set,
    ConnectionTrait, QueryOrder, QuerySelect, QueryTrait, TransactionTrait,
};

use super::{
    fair,
    leased::{self, DELIVERIES},
    Db, StoreError,
};

/// Renders the webhook body of a finished job: the job as the API shows it, plus its event
/// `type`. Given by the composition root, so the store knows nothing of the API.
pub type PayloadRenderer = Arc<dyn Fn(&job::Model) -> String + Send + Sync>;

/// The event a finished job announces.
pub fn event_type(job: &job::Model) -> &'static str {
    match job.status {
        job::JobStatus::Failed => "job.failed",
        _ => "job.succeeded",
    }
}

/// Rows per multi-row INSERT (17 parameters each).
const INSERT_CHUNK: usize = 500;

/// Where a finished job goes: (endpoint, url) pairs.
pub(super) type Destinations = Vec<(Option<Uuid>, String)>;

/// The active endpoints of a partner, as destinations.
pub(super) async fn partner_destinations<C: ConnectionTrait>(
    conn: &C,
    partner_id: Uuid,
) -> Result<Destinations, StoreError> {
    Ok(webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::PartnerId.eq(partner_id))
        .filter(webhook_endpoint::Column::DisabledAt.is_null())
        .filter(webhook_endpoint::Column::DeletedAt.is_null())
        .all(conn)
        .await?
        .into_iter()
        .map(|e| (Some(e.id), e.url))
        .collect())
}

/// One pending delivery per destination of a finished job: its `webhook_url`, or else the
/// partner's active endpoints (`endpoints`).
pub(super) fn rows_for_job(
    job: &job::Model,
    endpoints: &Destinations,
    render: &PayloadRenderer,
    now: DateTime<Utc>,
    turn: i64,
) -> Vec<delivery::ActiveModel> {
    let destinations = match &job.webhook_url {
        Some(url) => vec![(None, url.clone())],
        None => endpoints.clone(),
    };
    if destinations.is_empty() {
        return Vec::new();
    }
    let event = event_type(job);
    let payload = render(job);
    destinations
        .into_iter()
        .map(|(endpoint_id, url)| delivery::ActiveModel {
            id: Set(Uuid::now_v7()),
            job_id: Set(job.id),
            partner_id: Set(job.partner_id),
            endpoint_id: Set(endpoint_id),
            url: Set(url),
            event_type: Set(event.to_string()),
            payload: Set(payload.clone()),
            status: Set(DeliveryStatus::Pending),
            attempts: Set(0),
            next_attempt_at: Set(Some(now)),
            lease_token: Set(None),
            lease_expires_at: Set(None),
            last_status_code: Set(None),
            last_error: Set(None),
            delivered_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            turn: Set(turn),
        })
        .collect()
}

pub(super) async fn insert_rows<C: ConnectionTrait>(
    conn: &C,
    rows: Vec<delivery::ActiveModel>,
) -> Result<usize, StoreError> {
    let count = rows.len();
    // Chunks keep each statement far below the databases' bound-parameter limits.
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<_> = rows.by_ref().take(INSERT_CHUNK).collect();
        delivery::Entity::insert_many(chunk).exec(conn).await?;
    }
    Ok(count)
}

/// Writes one pending delivery per destination of a finished job. Returns how many.
pub(super) async fn enqueue_for_job<C: ConnectionTrait>(
    conn: &C,
    job: &job::Model,
    render: &PayloadRenderer,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let endpoints = match job.webhook_url {
        Some(_) => Vec::new(),
        None => partner_destinations(conn, job.partner_id).await?,
    };
    let turn = fair::next_turn(conn, &DELIVERIES, job.partner_id).await?;
    insert_rows(conn, rows_for_job(job, &endpoints, render, now, turn)).await
}

/// A delivery held by a delivery worker.
#[derive(Debug, Clone)]
pub struct DeliveryLease {
    pub delivery: delivery::Model,
    pub token: Uuid,
}

/// Claims up to `limit` due deliveries, lowest turn first (fair between partners: see
/// `fair`), except those to the URLs in `skip` (receivers at their concurrency cap).
pub async fn claim_due(
    db: &Db,
    now: DateTime<Utc>,
    limit: u64,
    lease_for: Duration,
    skip: &[&str],
) -> Result<Vec<DeliveryLease>, StoreError> {
    let excluding = leased::Excluding {
        column: "url",
        values: skip,
    };
    let (deliveries, token) =
        leased::claim(db, &DELIVERIES, now, limit, lease_for, Some(excluding)).await?;
    Ok(deliveries
        .into_iter()
        .map(|delivery| DeliveryLease { delivery, token })
        .collect())
}

/// Puts claimed deliveries back, untried, due when they were (their receiver is at its
/// concurrency cap on this node).
pub async fn release(
    db: &Db,
    leases: &[DeliveryLease],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if leases.is_empty() {
        return Ok(());
    }
    delivery::Entity::update_many()
        .col_expr(
            delivery::Column::Status,
            Expr::value(DeliveryStatus::Pending),
        )
        .col_expr(
            delivery::Column::LeaseToken,
            Expr::value(Option::<Uuid>::None),
        )
        .col_expr(
            delivery::Column::LeaseExpiresAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(delivery::Column::UpdatedAt, Expr::value(now))
        .filter(delivery::Column::Status.eq(DeliveryStatus::Sending))
        .filter(leases.iter().fold(sea_orm::Condition::any(), |any, lease| {
            any.add(
                sea_orm::Condition::all()
                    .add(delivery::Column::Id.eq(lease.delivery.id))
                    .add(delivery::Column::LeaseToken.eq(lease.token)),
            )
        }))
        .exec(db.writer())
        .await?;
    Ok(())
}

/// What one attempt saw.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    RetryAt(DateTime<Utc>),
    /// No more attempts: out of retries, or the endpoint is gone.
    GiveUp,
}

/// One delivery's attempt and what comes next. `attempt` is None when nothing was sent
/// (a disabled or deleted endpoint).
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    pub lease: DeliveryLease,
    pub attempt: Option<AttemptRecord>,
    pub next: NextStep,
    /// Why it failed, when not the attempt's own error.
    pub reason: Option<String>,
}

/// Records many outcomes in one transaction (a group commit: under load, one commit
/// serves many deliveries). Each is written only if its lease is still held; the result
/// says, per outcome, whether it was.
pub async fn record_attempts(
    db: &Db,
    outcomes: &[AttemptOutcome],
    now: DateTime<Utc>,
) -> Result<Vec<bool>, StoreError> {
    // Outcomes that set the same values share one UPDATE: typically every delivery that
    // got a 200 since the last commit.
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|(first, _)| same_columns(&outcomes[*first], outcome))
        {
            Some((_, members)) => members.push(i),
            None => groups.push((i, vec![i])),
        }
    }
    let txn = db.writer().begin().await?;
    let mut held = vec![false; outcomes.len()];
    for (first, members) in &groups {
        let template = &outcomes[*first];
        let held_rows = outcome_update(template, now)
            .filter(members.iter().fold(sea_orm::Condition::any(), |any, &i| {
                any.add(
                    sea_orm::Condition::all()
                        .add(delivery::Column::Id.eq(outcomes[i].lease.delivery.id))
                        .add(delivery::Column::LeaseToken.eq(outcomes[i].lease.token)),
                )
            }))
            .filter(delivery::Column::Status.eq(DeliveryStatus::Sending))
            .exec_with_returning(&txn)
            .await?;
        for row in held_rows {
            if let Some(&i) = members
                .iter()
                .find(|&&i| outcomes[i].lease.delivery.id == row.id)
            {
                held[i] = true;
            }
        }
    }
    let attempts: Vec<delivery_attempt::ActiveModel> = outcomes
        .iter()
        .zip(&held)
        .filter(|(_, held)| **held)
        .filter_map(|(o, _)| {
            let a = o.attempt.clone()?;
            Some(delivery_attempt::ActiveModel {
                id: Set(Uuid::now_v7()),
                delivery_id: Set(o.lease.delivery.id),
                attempted_at: Set(a.attempted_at),
                status_code: Set(a.status_code.map(i32::from)),
                latency_ms: Set(a.latency_ms),
                error: Set(a.error),
                response_body: Set(a.response_body),
            })
        })
        .collect();
    if !attempts.is_empty() {
        delivery_attempt::Entity::insert_many(attempts)
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(held)
}

/// Whether two outcomes write the same values (and so can share an UPDATE).
fn same_columns(a: &AttemptOutcome, b: &AttemptOutcome) -> bool {
    let code = |o: &AttemptOutcome| o.attempt.as_ref().map(|a| a.status_code);
    a.next == b.next
        && a.attempt.is_some() == b.attempt.is_some()
        && code(a) == code(b)
        && last_error(a) == last_error(b)
}

fn last_error(outcome: &AttemptOutcome) -> Option<String> {
    if outcome.next == NextStep::Delivered {
        return None;
    }
    outcome
        .reason
        .clone()
        .or_else(|| outcome.attempt.as_ref().and_then(|a| a.error.clone()))
}

/// The UPDATE that records an outcome, without its row filter.
fn outcome_update(
    outcome: &AttemptOutcome,
    now: DateTime<Utc>,
) -> sea_orm::UpdateMany<delivery::Entity> {
    let (status, next_attempt_at, delivered_at) = match outcome.next {
        NextStep::Delivered => (DeliveryStatus::Delivered, None, Some(now)),
        NextStep::RetryAt(at) => (DeliveryStatus::Pending, Some(at), None),
        NextStep::GiveUp => (DeliveryStatus::Failed, None, None),
    };
    let mut update = unleased(now)
        .col_expr(delivery::Column::Status, Expr::value(status))
        .col_expr(
            delivery::Column::NextAttemptAt,
            Expr::value(next_attempt_at),
        )
        .col_expr(delivery::Column::DeliveredAt, Expr::value(delivered_at))
        .col_expr(
            delivery::Column::LastError,
            Expr::value(last_error(outcome)),
        );
    if let Some(attempt) = &outcome.attempt {
        update = update
            .col_expr(
                delivery::Column::Attempts,
                Expr::col(delivery::Column::Attempts).add(1),
            )
            .col_expr(
                delivery::Column::LastStatusCode,
                Expr::value(attempt.status_code.map(i32::from)),
            );
    }
    update
}

/// A job's deliveries, oldest first, each with its attempts (oldest first).
pub async fn list_for_job(
    db: &Db,
    job_id: Uuid,
) -> Result<Vec<(delivery::Model, Vec<delivery_attempt::Model>)>, StoreError> {
    Ok(delivery::Entity::find()
        .filter(delivery::Column::JobId.eq(job_id))
        .order_by_asc(delivery::Column::Id)
        .find_with_related(delivery_attempt::Entity)
        .order_by_asc(delivery_attempt::Column::Id)
        .all(db.reader())
        .await?)
}

/// The deliveries of these jobs, by job.
pub async fn for_jobs(
    db: &Db,
    job_ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<delivery::Model>>, StoreError> {
    let mut by_job: HashMap<Uuid, Vec<delivery::Model>> = HashMap::new();
    for chunk in job_ids.chunks(500) {
        let rows = delivery::Entity::find()
            .filter(delivery::Column::JobId.is_in(chunk.iter().copied()))
            .order_by_asc(delivery::Column::Id)
            .all(db.reader())
            .await?;
        for row in rows {
            by_job.entry(row.job_id).or_default().push(row);
        }
    }
    Ok(by_job)
}

/// Sends a finished job again: its deliveries become due now with a fresh retry schedule;
/// a job that had no destination when it finished gets deliveries to its current ones.
/// Returns the number of deliveries due. Concurrent calls for one job take turns (the job's
/// row is locked on PostgreSQL; SQLite's write lock is taken at `BEGIN`), so deliveries are
/// never created twice.
pub async fn redeliver(
    db: &Db,
    job: &job::Model,
    render: &PayloadRenderer,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let txn = db.begin_write().await?;
    if db.is_postgres()
        && job::Entity::find_by_id(job.id)
            .lock(LockType::NoKeyUpdate)
            .one(&txn)
            .await?
            .is_none()
    {
        return Ok(0); // erased meanwhile
    }
    let existing = delivery::Entity::find()
        .filter(delivery::Column::JobId.eq(job.id))
        .count(&txn)
        .await?;
    if existing == 0 {
        let count = enqueue_for_job(&txn, job, render, now).await?;
        txn.commit().await?;
        return Ok(count);
    }
    // Deliveries being sent right now are left to finish their attempt. The others queue
    // again behind the partner's waiting deliveries, not ahead of everyone.
    let turn = fair::next_turn(&txn, &DELIVERIES, job.partner_id).await?;
    let reset = due_again(now)
        .col_expr(delivery::Column::Attempts, Expr::value(0))
        .col_expr(delivery::Column::Turn, Expr::value(turn))
        .filter(delivery::Column::JobId.eq(job.id))
        .filter(delivery::Column::Status.ne(DeliveryStatus::Sending))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(reset.rows_affected as usize)
}

/// An endpoint's new URL, for its deliveries not yet delivered.
pub(super) async fn retarget_undelivered(
    txn: &impl ConnectionTrait,
    endpoint_id: Uuid,
    url: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    delivery::Entity::update_many()
        .col_expr(delivery::Column::Url, Expr::value(url))
        .col_expr(delivery::Column::UpdatedAt, Expr::value(now))
        .filter(delivery::Column::EndpointId.eq(endpoint_id))
        .filter(delivery::Column::Status.ne(DeliveryStatus::Delivered))
        .exec(txn)
        .await?;
    Ok(())
}

/// A re-enabled endpoint's deliveries that gave up (or never got a schedule): due now,
/// with a fresh schedule.
pub(super) async fn resume_undelivered(
    txn: &impl ConnectionTrait,
    endpoint_id: Uuid,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let result = due_again(now)
        .col_expr(delivery::Column::Attempts, Expr::value(0))
        .filter(delivery::Column::EndpointId.eq(endpoint_id))
        .filter(
            sea_orm::Condition::any()
                .add(delivery::Column::Status.eq(DeliveryStatus::Failed))
                .add(
                    sea_orm::Condition::all()
                        .add(delivery::Column::Status.eq(DeliveryStatus::Pending))
                        .add(delivery::Column::NextAttemptAt.is_null()),
                ),
        )
        .exec(txn)
        .await?;
    Ok(result.rows_affected)
}

/// An UPDATE of deliveries that ends their lease at `now`; callers add the rest.
fn unleased(now: DateTime<Utc>) -> sea_orm::UpdateMany<delivery::Entity> {
    delivery::Entity::update_many()
        .col_expr(delivery::Column::UpdatedAt, Expr::value(now))
        .col_expr(
            delivery::Column::LeaseToken,
            Expr::value(Option::<Uuid>::None),
        )
        .col_expr(
            delivery::Column::LeaseExpiresAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
}

/// An UPDATE that makes deliveries due now, unleased.
fn due_again(now: DateTime<Utc>) -> sea_orm::UpdateMany<delivery::Entity> {
    unleased(now)
        .col_expr(
            delivery::Column::Status,
            Expr::value(DeliveryStatus::Pending),
        )
        .col_expr(delivery::Column::NextAttemptAt, Expr::value(now))
}

/// Returns deliveries whose worker's lease expired to the queue, due now.
pub async fn rescue_expired(db: &Db, now: DateTime<Utc>) -> Result<u64, StoreError> {
    let result = due_again(now)
        .filter(delivery::Column::Status.eq(DeliveryStatus::Sending))
        .filter(delivery::Column::LeaseExpiresAt.lt(now))
        .exec(db.writer())
        .await?;
    Ok(result.rows_affected)
}

/// Reconciliation: deliveries that are neither delivered nor scheduled (they ran out of
/// retries, or lost their worker) start a fresh schedule, unless their endpoint is disabled
/// or deleted, or their receiver answered 410 Gone. Deliveries to per-job URLs, which have
/// no endpoint to disable, are given up once created before `per_job_cutoff`. Returns how
/// many.
pub async fn reschedule_undelivered(
    db: &Db,
    now: DateTime<Utc>,
    per_job_cutoff: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let inactive_endpoints = webhook_endpoint::Entity::find()
        .select_only()
        .column(webhook_endpoint::Column::Id)
        .filter(
            sea_orm::Condition::any()
                .add(webhook_endpoint::Column::DisabledAt.is_not_null())
                .add(webhook_endpoint::Column::DeletedAt.is_not_null()),
        )
        .into_query();
    let result = due_again(now)
        .col_expr(delivery::Column::Attempts, Expr::value(0))
        .filter(
            sea_orm::Condition::any()
                .add(delivery::Column::Status.eq(DeliveryStatus::Failed))
                .add(
                    sea_orm::Condition::all()
                        .add(delivery::Column::Status.eq(DeliveryStatus::Sending))
                        .add(delivery::Column::LeaseExpiresAt.lt(now)),
                )
                .add(
                    sea_orm::Condition::all()
                        .add(delivery::Column::Status.eq(DeliveryStatus::Pending))
                        .add(delivery::Column::NextAttemptAt.is_null()),
                ),
        )
        .filter(
            sea_orm::Condition::any()
                .add(
                    sea_orm::Condition::all()
                        .add(delivery::Column::EndpointId.is_null())
                        .add(delivery::Column::CreatedAt.gte(per_job_cutoff)),
                )
                .add(delivery::Column::EndpointId.not_in_subquery(inactive_endpoints)),
        )
        // A receiver that answered 410 Gone asked us to stop (per-job URLs have no
        // endpoint to disable).
        .filter(
            sea_orm::Condition::any()
                .add(delivery::Column::LastStatusCode.is_null())
                .add(delivery::Column::LastStatusCode.ne(410)),
        )
        .exec(db.writer())
        .await?;
    Ok(result.rows_affected)
}
