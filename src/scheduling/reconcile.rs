//! The daily reconciliation: requeue or fail stuck jobs, reschedule undelivered webhooks,
//! disable endpoints that keep failing, and delete what is past retention. Each run claims
//! its slot first, so one node runs it, and records what it did.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    objects::{ObjectStore, ObjectStoreError},
    store::{
        deliveries::{self, PayloadRenderer},
        endpoints, jobs, queue,
        reconcile_runs::{self, ReconcileCounts},
        Db, StoreError,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("deleting an expired image: {0}")]
    Objects(#[from] ObjectStoreError),
}

#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// A job queued (and due) or in progress without progress for this long is stuck.
    pub stale_after: Duration,
    /// Attempts a stuck job may have had and still be requeued.
    pub max_attempts: i32,
    /// Endpoints failing continuously for this long are disabled.
    pub disable_failing_endpoints_after: Duration,
    /// Jobs, their results and images older than this are deleted.
    pub retention: Duration,
}

pub struct Reconciler {
    db: Db,
    objects: Arc<dyn ObjectStore>,
    render: PayloadRenderer,
    settings: ReconcileSettings,
}

/// Jobs deleted per round of the retention sweep.
const RETENTION_BATCH: u64 = 200;

fn before(now: DateTime<Utc>, span: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(span)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl Reconciler {
    pub fn new(
        db: Db,
        objects: Arc<dyn ObjectStore>,
        render: PayloadRenderer,
        settings: ReconcileSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            objects,
            render,
            settings,
        })
    }

    /// Runs the slot unless another node (or an earlier run) claimed it: None then.
    /// `now` is the clock the run reasons with; tests pass their own.
    pub async fn run_slot(
        &self,
        slot: DateTime<Utc>,
        trigger: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ReconcileCounts>, ReconcileError> {
        let runs = &crate::metrics::get().reconcile_runs;
        let claimed = reconcile_runs::claim_slot(&self.db, slot, trigger, now).await;
        let Some(run_id) = claimed.inspect_err(|_| runs.with_label_values(&["error"]).inc())?
        else {
            runs.with_label_values(&["skipped"]).inc();
            return Ok(None);
        };
        let mut counts = ReconcileCounts::default();
        let outcome = self.reconcile(now, &mut counts).await;
        let error = outcome.as_ref().err().map(ToString::to_string);
        runs.with_label_values(&[if error.is_some() { "error" } else { "ran" }])
            .inc();
        reconcile_runs::record_finish(&self.db, run_id, counts, error, Utc::now()).await?;
        outcome.map(|()| Some(counts))
    }

    async fn reconcile(
        &self,
        now: DateTime<Utc>,
        counts: &mut ReconcileCounts,
    ) -> Result<(), ReconcileError> {
        let (requeued, failed) = queue::reconcile_stale(
            &self.db,
            before(now, self.settings.stale_after),
            self.settings.max_attempts,
            now,
            &self.render,
        )
        .await?;
        counts.jobs_requeued = requeued;
        counts.jobs_failed_stale = failed;
        crate::metrics::get().jobs_swept("stale", requeued, failed);
        counts.endpoints_disabled = endpoints::disable_failing_since(
            &self.db,
            before(now, self.settings.disable_failing_endpoints_after),
            now,
        )
        .await?;
        counts.deliveries_rescheduled = deliveries::reschedule_undelivered(
            &self.db,
            now,
            before(now, self.settings.disable_failing_endpoints_after),
        )
        .await?;
        self.sweep_retention(before(now, self.settings.retention), counts)
            .await
    }

    /// Deletes expired jobs batch by batch: first the images no other job uses, then the
    /// rows. A crash in between leaves rows whose images are gone, which the next run deletes.
    async fn sweep_retention(
        &self,
        cutoff: DateTime<Utc>,
        counts: &mut ReconcileCounts,
    ) -> Result<(), ReconcileError> {
        loop {
            let batch = jobs::expired(&self.db, cutoff, RETENTION_BATCH).await?;
            if batch.is_empty() {
                return Ok(());
            }
            let ids: Vec<Uuid> = batch.iter().map(|j| j.id).collect();
            let mut keys: Vec<&str> = batch
                .iter()
                .filter_map(|j| j.image_key.as_deref())
                .collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                if jobs::object_is_referenced(&self.db, key, &ids).await? {
                    continue;
                }
                self.objects.delete(key).await?;
                counts.objects_deleted += 1;
            }
            counts.jobs_deleted += jobs::delete(&self.db, &ids).await?;
            if (batch.len() as u64) < RETENTION_BATCH {
                return Ok(());
            }
        }
    }
}
