//! Records of reconciliation runs, one row per slot (`slot` is unique). A run holds its row
//! under a lease: a token and an expiry that the running node renews. Whoever inserts the
//! row runs the slot; once a run's lease has lapsed unfinished (its node died), one other
//! node takes it over with a conditional UPDATE on the expiry, so exactly one taker wins.
//! Every time here is the caller's `now`, the database's clock (`Db::now`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::reconcile_run;
use sea_orm::{
    prelude::*,
    sea_query::{Expr, ExprTrait},
    ActiveValue::Set,
    Condition, QueryOrder, QuerySelect, TryInsertResult,
};

use super::{lease_end, Db, StoreError};

/// What a run fixed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileCounts {
    pub jobs_requeued: u64,
    pub jobs_failed_stale: u64,
    pub deliveries_rescheduled: u64,
    pub endpoints_disabled: u64,
    pub jobs_deleted: u64,
    pub objects_deleted: u64,
}

/// A node's hold on a slot's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLease {
    pub run_id: Uuid,
    pub token: Uuid,
    pub expires_at: DateTime<Utc>,
    /// Taken over from a node whose lease lapsed (rather than inserted).
    pub taken_over: bool,
}

/// The answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotClaim {
    /// This node runs the slot now.
    Claimed(SlotLease),
    /// The slot's run has finished (here or elsewhere).
    Finished,
    /// Another node runs it, under a lease that ends at `lease_expires_at` unless renewed.
    Held { lease_expires_at: DateTime<Utc> },
}

/// Claims a slot for `lease_for` from `now`: inserts its row, or takes over its unfinished
/// run whose lease has lapsed or was released (no lease; so do rows from before leases).
pub async fn claim_slot(
    db: &Db,
    slot: DateTime<Utc>,
    trigger: &str,
    now: DateTime<Utc>,
    lease_for: Duration,
) -> Result<SlotClaim, StoreError> {
    let id = Uuid::now_v7();
    let token = Uuid::new_v4();
    let expires_at = lease_end(now, lease_for);
    let row = reconcile_run::ActiveModel {
        id: Set(id),
        slot: Set(slot),
        trigger: Set(trigger.to_string()),
        started_at: Set(now),
        finished_at: Set(None),
        jobs_requeued: Set(0),
        jobs_failed_stale: Set(0),
        deliveries_rescheduled: Set(0),
        endpoints_disabled: Set(0),
        jobs_deleted: Set(0),
        objects_deleted: Set(0),
        error: Set(None),
        lease_token: Set(Some(token)),
        lease_expires_at: Set(Some(expires_at)),
        takeovers: Set(0),
    };
    let inserted = reconcile_run::Entity::insert(row)
        .on_conflict_do_nothing_on([reconcile_run::Column::Slot])
        .exec(db.writer())
        .await?;
    if let TryInsertResult::Inserted(_) = inserted {
        return Ok(SlotClaim::Claimed(SlotLease {
            run_id: id,
            token,
            expires_at,
            taken_over: false,
        }));
    }
    // The counts restart with the new run: they are what the run that finishes did.
    let n = |v: i64| Expr::value(v);
    let taken = reconcile_run::Entity::update_many()
        .col_expr(reconcile_run::Column::LeaseToken, Expr::value(token))
        .col_expr(
            reconcile_run::Column::LeaseExpiresAt,
            Expr::value(expires_at),
        )
        .col_expr(
            reconcile_run::Column::Takeovers,
            Expr::col(reconcile_run::Column::Takeovers).add(1),
        )
        .col_expr(reconcile_run::Column::StartedAt, Expr::value(now))
        .col_expr(reconcile_run::Column::JobsRequeued, n(0))
        .col_expr(reconcile_run::Column::JobsFailedStale, n(0))
        .col_expr(reconcile_run::Column::DeliveriesRescheduled, n(0))
        .col_expr(reconcile_run::Column::EndpointsDisabled, n(0))
        .col_expr(reconcile_run::Column::JobsDeleted, n(0))
        .col_expr(reconcile_run::Column::ObjectsDeleted, n(0))
        .filter(reconcile_run::Column::Slot.eq(slot))
        .filter(reconcile_run::Column::FinishedAt.is_null())
        .filter(
            Condition::any()
                .add(reconcile_run::Column::LeaseExpiresAt.is_null())
                .add(reconcile_run::Column::LeaseExpiresAt.lt(now)),
        )
        .exec_with_returning(db.writer())
        .await?;
    if let Some(run) = taken.into_iter().next() {
        return Ok(SlotClaim::Claimed(SlotLease {
            run_id: run.id,
            token,
            expires_at,
            taken_over: true,
        }));
    }
    let run = find_slot(db, slot)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("the reconciliation run of {slot}")))?;
    Ok(match (run.finished_at, run.lease_expires_at) {
        (Some(_), _) => SlotClaim::Finished,
        // Lapsed between the UPDATE and this read: the caller may try again at once.
        (None, expires) => SlotClaim::Held {
            lease_expires_at: expires.unwrap_or(now),
        },
    })
}

/// The run of `slot`'s row filtered to `lease`'s holder, unfinished.
fn held(lease: &SlotLease) -> Condition {
    Condition::all()
        .add(reconcile_run::Column::Id.eq(lease.run_id))
        .add(reconcile_run::Column::LeaseToken.eq(lease.token))
        .add(reconcile_run::Column::FinishedAt.is_null())
}

/// Extends the lease to `lease_for` from `now`. False when the run is no longer this
/// holder's: another node took it over after the lease lapsed.
pub async fn renew_lease(
    db: &Db,
    lease: &mut SlotLease,
    now: DateTime<Utc>,
    lease_for: Duration,
) -> Result<bool, StoreError> {
    let expires_at = lease_end(now, lease_for);
    let renewed = reconcile_run::Entity::update_many()
        .col_expr(
            reconcile_run::Column::LeaseExpiresAt,
            Expr::value(expires_at),
        )
        .filter(held(lease))
        .exec(db.writer())
        .await?
        .rows_affected
        == 1;
    if renewed {
        lease.expires_at = expires_at;
    }
    Ok(renewed)
}

/// Gives the run up unfinished, without a lease, so another node takes it over at once (a
/// node that stops mid-run). False when it was no longer this holder's.
pub async fn release(db: &Db, lease: &SlotLease) -> Result<bool, StoreError> {
    Ok(reconcile_run::Entity::update_many()
        .col_expr(
            reconcile_run::Column::LeaseExpiresAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(held(lease))
        .exec(db.writer())
        .await?
        .rows_affected
        == 1)
}

/// Records the outcome and ends the run. False (and nothing written) when the run was no
/// longer this holder's: the node that took it over records its own.
pub async fn record_finish(
    db: &Db,
    lease: &SlotLease,
    counts: ReconcileCounts,
    error: Option<String>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let n = |v: u64| Expr::value(v as i64);
    Ok(reconcile_run::Entity::update_many()
        .col_expr(reconcile_run::Column::FinishedAt, Expr::value(now))
        .col_expr(reconcile_run::Column::JobsRequeued, n(counts.jobs_requeued))
        .col_expr(
            reconcile_run::Column::JobsFailedStale,
            n(counts.jobs_failed_stale),
        )
        .col_expr(
            reconcile_run::Column::DeliveriesRescheduled,
            n(counts.deliveries_rescheduled),
        )
        .col_expr(
            reconcile_run::Column::EndpointsDisabled,
            n(counts.endpoints_disabled),
        )
        .col_expr(reconcile_run::Column::JobsDeleted, n(counts.jobs_deleted))
        .col_expr(
            reconcile_run::Column::ObjectsDeleted,
            n(counts.objects_deleted),
        )
        .col_expr(reconcile_run::Column::Error, Expr::value(error))
        .col_expr(
            reconcile_run::Column::LeaseExpiresAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(held(lease))
        .exec(db.writer())
        .await?
        .rows_affected
        == 1)
}

/// The run of one slot, if any.
pub async fn find_slot(
    db: &Db,
    slot: DateTime<Utc>,
) -> Result<Option<reconcile_run::Model>, StoreError> {
    Ok(reconcile_run::Entity::find()
        .filter(reconcile_run::Column::Slot.eq(slot))
        .one(db.reader())
        .await?)
}

/// The latest runs, newest first.
pub async fn list(db: &Db, limit: u64) -> Result<Vec<reconcile_run::Model>, StoreError> {
    Ok(reconcile_run::Entity::find()
        .order_by_desc(reconcile_run::Column::Slot)
        .limit(limit)
        .all(db.reader())
        .await?)
}
