//! The daily reconciliation: requeue or fail stuck jobs, reschedule undelivered webhooks,
//! disable endpoints that keep failing, and delete what is past retention. Each run claims
//! its slot first, so one node runs it, holds the slot under a lease that it renews while it
//! runs, and records what it did. A slot whose node died is taken over once its lease has
//! lapsed; every step is a conditional change of what is still stale, so running a slot
//! again (or beside a node that lost its lease) only does what is left.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    objects::{ObjectStore, ObjectStoreError},
    store::{
        deliveries::{self, PayloadRenderer},
        endpoints, jobs, queue,
        reconcile_runs::{self, ReconcileCounts, SlotClaim, SlotLease},
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
    /// A run's hold on its slot, renewed every third of it while it runs: a slot whose node
    /// died is taken over once this has passed since the last renewal.
    pub lease: Duration,
}

/// How a node's attempt at a slot ended.
#[derive(Debug)]
pub enum SlotOutcome {
    /// This node ran the slot (`taken_over`: after another node's lease lapsed) and recorded
    /// its counts, or its error.
    Ran {
        counts: ReconcileCounts,
        error: Option<ReconcileError>,
        taken_over: bool,
    },
    /// The slot's run had finished already, here or on another node.
    Finished,
    /// Another node runs it under a live lease, which ends then unless renewed.
    Held { lease_expires_at: DateTime<Utc> },
    /// `stop` fired mid-run: the lease was released for another node to take over.
    Released,
    /// This node's lease lapsed mid-run and another node took the slot over; this run
    /// stopped and recorded nothing.
    LeaseLost,
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

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn settings(&self) -> &ReconcileSettings {
        &self.settings
    }

    /// One attempt at a slot: claims it (or takes it over if its lease lapsed) and runs it,
    /// renewing the lease every third of it, unless it has finished or another node holds
    /// it. `now` is the database's time (`Db::now`), which the claim and the run reason
    /// with; tests pass their own. When `stop` fires mid-run, the run stops and its lease is
    /// released, so another node (or this one, at its next start) takes it over: every step
    /// is safe to run again. Errors are the claim's or the record's; the run's own error is
    /// recorded and returned in [`SlotOutcome::Ran`].
    pub async fn run_slot(
        &self,
        slot: DateTime<Utc>,
        trigger: &str,
        now: DateTime<Utc>,
        stop: &CancellationToken,
    ) -> Result<SlotOutcome, ReconcileError> {
        let runs = &crate::metrics::get().reconcile_runs;
        let claim = reconcile_runs::claim_slot(&self.db, slot, trigger, now, self.settings.lease)
            .await
            .inspect_err(|_| runs.with_label_values(&["error"]).inc())?;
        let mut lease = match claim {
            SlotClaim::Claimed(lease) => lease,
            SlotClaim::Finished => {
                runs.with_label_values(&["skipped"]).inc();
                return Ok(SlotOutcome::Finished);
            }
            SlotClaim::Held { lease_expires_at } => {
                return Ok(SlotOutcome::Held { lease_expires_at })
            }
        };
        if lease.taken_over {
            runs.with_label_values(&["taken_over"]).inc();
            tracing::warn!(%slot, "taking over a reconciliation whose node stopped renewing its lease");
        }
        let mut counts = ReconcileCounts::default();
        let outcome = tokio::select! {
            biased;
            () = stop.cancelled() => None,
            () = self.keep_lease(&mut lease) => {
                tracing::warn!(%slot, "lost the reconciliation's lease to another node; stopping");
                return Ok(SlotOutcome::LeaseLost);
            }
            outcome = self.reconcile(now, &mut counts) => Some(outcome),
        };
        let Some(outcome) = outcome else {
            if !reconcile_runs::release(&self.db, &lease).await? {
                return Ok(SlotOutcome::LeaseLost);
            }
            return Ok(SlotOutcome::Released);
        };
        let error = outcome.err();
        let message = error.as_ref().map(ToString::to_string);
        let finished_at = self.db.now().await.max(now);
        let recorded =
            reconcile_runs::record_finish(&self.db, &lease, counts, message, finished_at)
                .await
                .inspect_err(|_| runs.with_label_values(&["error"]).inc())?;
        if !recorded {
            return Ok(SlotOutcome::LeaseLost);
        }
        runs.with_label_values(&[if error.is_some() { "error" } else { "ran" }])
            .inc();
        Ok(SlotOutcome::Ran {
            counts,
            error,
            taken_over: lease.taken_over,
        })
    }

    /// Renews the lease every third of it, by the database's clock; returns when another
    /// node has taken the run over. A failed renewal is tried again at the next beat.
    async fn keep_lease(&self, lease: &mut SlotLease) {
        let beat = self.settings.lease / 3;
        loop {
            tokio::time::sleep(beat).await;
            match reconcile_runs::renew_lease(
                &self.db,
                lease,
                self.db.now().await,
                self.settings.lease,
            )
            .await
            {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => tracing::warn!(error = %err, "renewing the reconciliation's lease"),
            }
        }
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
