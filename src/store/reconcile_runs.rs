//! Records of reconciliation runs. The unique `slot` makes one node run each scheduled slot:
//! whoever inserts the row runs it; everyone else's insert does nothing.

use chrono::{DateTime, Utc};
use entity::reconcile_run;
use sea_orm::{prelude::*, ActiveValue::Set, QueryOrder, QuerySelect, TryInsertResult};

use super::{Db, StoreError};

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

/// Claims a slot. None when another node (or an earlier run) already has it.
pub async fn claim_slot(
    db: &Db,
    slot: DateTime<Utc>,
    trigger: &str,
    now: DateTime<Utc>,
) -> Result<Option<Uuid>, StoreError> {
    let id = Uuid::now_v7();
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
    };
    let inserted = reconcile_run::Entity::insert(row)
        .on_conflict_do_nothing_on([reconcile_run::Column::Slot])
        .exec(db.writer())
        .await?;
    Ok(match inserted {
        TryInsertResult::Inserted(_) => Some(id),
        _ => None,
    })
}

pub async fn record_finish(
    db: &Db,
    id: Uuid,
    counts: ReconcileCounts,
    error: Option<String>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let n = |v: u64| Set(v as i64);
    reconcile_run::ActiveModel {
        id: Set(id),
        finished_at: Set(Some(now)),
        jobs_requeued: n(counts.jobs_requeued),
        jobs_failed_stale: n(counts.jobs_failed_stale),
        deliveries_rescheduled: n(counts.deliveries_rescheduled),
        endpoints_disabled: n(counts.endpoints_disabled),
        jobs_deleted: n(counts.jobs_deleted),
        objects_deleted: n(counts.objects_deleted),
        error: Set(error),
        ..Default::default()
    }
    .update(db.writer())
    .await?;
    Ok(())
}

/// The latest runs, newest first.
pub async fn list(db: &Db, limit: u64) -> Result<Vec<reconcile_run::Model>, StoreError> {
    Ok(reconcile_run::Entity::find()
        .order_by_desc(reconcile_run::Column::Slot)
        .limit(limit)
        .all(db.reader())
        .await?)
}
