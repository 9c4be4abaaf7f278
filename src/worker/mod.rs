//! The job worker pool: claims due jobs, gets their image (from the object store, or from
//! the partner's URL behind the outbound guard), reuses an earlier result for the same
//! bytes and model version or runs the scorer, and records the outcome together with the
//! job's webhook deliveries. Leases are kept alive by heartbeats while a job is worked on.

mod failure;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use failure::JobFailure;

use crate::{
    imaging,
    inference::{tips, DietTag, Scorers},
    metrics,
    objects::{self, ObjectStore},
    outbound::GuardedClient,
    queue_pool::{self, CommitBatch, GroupCommit, LeasedWork, PoolSettings, Unrecorded},
    store::{
        deliveries::PayloadRenderer,
        jobs,
        queue::{self, FetchedImage, Lease, Outcome},
        wakeups::{Wakeups, Work},
        Db, StoreError,
    },
};

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Jobs worked on at once by this node.
    pub concurrency: usize,
    /// How long a claim holds a job without a heartbeat.
    pub lease: Duration,
    /// Attempts before a transiently failing job fails for good.
    pub max_attempts: i32,
    /// Delay before the first retry; doubled for each further attempt, up to `retry_max_delay`.
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// Fallback poll interval, for wake-ups that were lost.
    pub poll_interval: Duration,
    /// On shutdown, how long in-flight jobs may run before they are released.
    pub shutdown_grace: Duration,
    /// Largest image fetched from a URL, in bytes.
    pub max_image_bytes: usize,
    pub max_image_pixels: u64,
}

pub struct JobWorker {
    db: Db,
    objects: Arc<dyn ObjectStore>,
    scorers: Arc<Scorers>,
    fetcher: GuardedClient,
    wakeups: Arc<Wakeups>,
    render: PayloadRenderer,
    settings: WorkerSettings,
}

/// What the metrics count of an outcome, once it is written.
enum Counted {
    Finished { status: &'static str, code: String },
    Retried { code: String },
}

impl Counted {
    fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Succeeded { .. } => Self::Finished {
                status: "succeeded",
                code: String::new(),
            },
            Outcome::Failed { code, .. } => Self::Finished {
                status: "failed",
                code: code.clone(),
            },
            Outcome::Retry { code, .. } => Self::Retried { code: code.clone() },
        }
    }

    /// Counts it; an outcome dropped with its lease is counted when the job runs again.
    /// A finished job's age (enqueue to outcome) goes to the end-to-end histogram.
    fn record(self, created_at: chrono::DateTime<Utc>, now: chrono::DateTime<Utc>) {
        let metrics = metrics::get();
        match self {
            Self::Retried { code } => metrics.jobs_retried.with_label_values(&[&code]).inc(),
            Self::Finished { status, code } => {
                metrics
                    .jobs_finished
                    .with_label_values(&[status, &code])
                    .inc();
                let age = (now - created_at).num_milliseconds().max(0) as f64 / 1000.0;
                metrics.job_seconds.observe(age);
            }
        }
    }
}

/// Records outcomes in group commits; each says how many deliveries it wrote, or None when
/// the lease was lost.
type Recorder = GroupCommit<(Lease, Outcome), Option<usize>>;

/// Most outcomes per commit.
const RECORD_BATCH: usize = 64;

/// What processing a job produced.
struct Scored {
    result: serde_json::Value,
    model_version: String,
}

impl JobWorker {
    pub fn new(
        db: Db,
        objects: Arc<dyn ObjectStore>,
        scorers: Arc<Scorers>,
        fetcher: GuardedClient,
        wakeups: Arc<Wakeups>,
        render: PayloadRenderer,
        settings: WorkerSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            objects,
            scorers,
            fetcher,
            wakeups,
            render,
            settings,
        })
    }

    /// Claims and works on jobs until `shutdown`; then stops claiming, lets in-flight jobs
    /// finish within the grace period, and releases the rest back to the queue.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let settings = PoolSettings {
            concurrency: self.settings.concurrency,
            rescue_every: self.settings.lease / 2,
            shutdown_grace: Some(self.settings.shutdown_grace),
        };
        let (recorder, recording) =
            GroupCommit::start(self.clone(), RECORD_BATCH, self.settings.concurrency);
        let running = Arc::new(Running {
            worker: self,
            recorder,
        });
        queue_pool::run(running, settings, shutdown).await;
        let _ = recording.await;
    }

    /// Works on one claimed job and records its outcome, heartbeating meanwhile. When
    /// `release` fires first, the job goes back to the queue untouched.
    async fn process(&self, lease: Lease, release: CancellationToken, recorder: &Recorder) {
        let started = Instant::now();
        let worked = {
            let work = self.work(&lease);
            tokio::pin!(work);
            let mut heartbeat = tokio::time::interval(self.settings.lease / 3);
            heartbeat.tick().await;
            loop {
                tokio::select! {
                    worked = &mut work => break Some(worked),
                    _ = release.cancelled() => break None,
                    _ = heartbeat.tick() => {
                        match queue::heartbeat(&self.db, &lease, self.db.now().await, self.settings.lease).await {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::warn!("lost the lease; another worker has the job");
                                return;
                            }
                            Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
                        }
                    }
                }
            }
        };
        let now = self.db.now().await;
        let Some(worked) = worked else {
            if let Err(err) = queue::release(&self.db, &lease, now).await {
                tracing::warn!(error = %err, "releasing the job failed; its lease will expire");
            }
            return;
        };
        let processing_time_ms = started.elapsed().as_millis() as i64;
        let outcome = match worked {
            Ok(scored) => Outcome::Succeeded {
                result: scored.result,
                model_version: scored.model_version,
                processing_time_ms,
            },
            Err(failure) => {
                let attempts = lease.job.attempts;
                if failure.transient && attempts < self.settings.max_attempts {
                    let delay = self.retry_delay(attempts);
                    tracing::info!(code = failure.code, error = %failure.message, attempts, ?delay, "transient failure; will retry");
                    Outcome::Retry {
                        run_at: now + chrono::Duration::from_std(delay).unwrap_or_default(),
                        code: failure.code.to_string(),
                        message: failure.message,
                    }
                } else {
                    tracing::info!(code = failure.code, error = %failure.message, attempts, "job failed");
                    Outcome::Failed {
                        code: failure.code.to_string(),
                        message: failure.message,
                        processing_time_ms,
                    }
                }
            }
        };
        let created_at = lease.job.created_at;
        let counted = Counted::of(&outcome);
        match recorder.submit((lease, outcome)).await {
            Ok(Some(_)) => counted.record(created_at, now),
            Ok(None) => tracing::warn!("the lease expired before the job finished; result dropped"),
            Err(Unrecorded::Stopped) => {
                tracing::warn!("the outcome recorder stopped; the lease will expire")
            }
            Err(Unrecorded::Failed) => tracing::warn!(
                "recording the outcome failed; the lease will expire and the job be retried"
            ),
        }
    }

    fn retry_delay(&self, attempts: i32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).max(0) as u32);
        self.settings
            .retry_base_delay
            .saturating_mul(factor)
            .min(self.settings.retry_max_delay)
    }

    async fn work(&self, lease: &Lease) -> Result<Scored, JobFailure> {
        let job = &lease.job;
        let (bytes, sha256) = match (&job.image_key, &job.image_sha256) {
            (Some(key), Some(sha)) => (self.objects.get(key).await?, sha.clone()),
            _ => {
                let url = job.image_url.as_deref().ok_or_else(|| {
                    JobFailure::permanent("image_missing", "the job has no image")
                })?;
                self.fetch(lease, url).await?
            }
        };
        // Intake checked the id; a model taken away since fails the job.
        let scorer = self
            .scorers
            .get(job.model_id.as_deref())
            .await
            .ok_or_else(|| {
                JobFailure::permanent(
                    "model_unknown",
                    format!(
                        "this node has no model {:?}",
                        job.model_id.as_deref().unwrap_or_default()
                    ),
                )
            })??;
        let model_version = scorer.model().version.clone();
        if let Some(result) = queue::reusable_result(&self.db, job, &sha256, &model_version).await?
        {
            tracing::debug!("reusing the result of an earlier job with the same image");
            return Ok(Scored {
                result,
                model_version,
            });
        }
        // Intake checked the tags; one it no longer knows is ignored rather than failing.
        let diets: Vec<DietTag> = job
            .diets
            .iter()
            .flat_map(|d| d.split(','))
            .filter_map(|d| d.parse().ok())
            .collect();
        let lang = job.lang.as_deref().unwrap_or(tips::DEFAULT_LANG);
        let scored = scorer.score(bytes, &diets, lang).await?;
        let metrics = metrics::get();
        metrics
            .preprocess_seconds
            .observe(scored.timings.preprocess_ms / 1000.0);
        metrics
            .inference_seconds
            .observe(scored.timings.inference_ms / 1000.0);
        let result = serde_json::to_value(&scored.result)
            .map_err(|e| JobFailure::permanent("inference_failed", e.to_string()))?;
        Ok(Scored {
            result,
            model_version,
        })
    }

    /// Fetches a URL job's image, checks it like an upload, stores it and records it on the job.
    async fn fetch(&self, lease: &Lease, url: &str) -> Result<(Bytes, String), JobFailure> {
        let bytes = self
            .fetcher
            .get_bytes(url, self.settings.max_image_bytes)
            .await?;
        let header = imaging::inspect(&bytes, self.settings.max_image_pixels)?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let image = FetchedImage {
            key: objects::image_key(lease.job.partner_id, lease.job.id),
            sha256: sha256.clone(),
            bytes: bytes.len() as i64,
            format: header.format.as_str().to_string(),
            width: header.width as i32,
            height: header.height as i32,
        };
        self.objects
            .put(&image.key, bytes.clone(), header.format.mime())
            .await?;
        if !queue::record_fetched_image(&self.db, lease, &image).await?
            && jobs::find(&self.db, lease.job.partner_id, lease.job.id)
                .await?
                .is_none()
        {
            // The job was erased meanwhile: keep no image only it had.
            crate::intake::remove_if_orphaned(&self.db, self.objects.as_ref(), &image.key).await;
        }
        Ok((bytes, sha256))
    }
}

/// One run of the job pool: the worker and its outcome recorder, which stops when the
/// pool is done with it.
struct Running {
    worker: Arc<JobWorker>,
    recorder: Recorder,
}

impl LeasedWork for Running {
    type Item = Lease;

    async fn rescue(&self) {
        let JobWorker {
            db,
            render,
            settings,
            ..
        } = self.worker.as_ref();
        match queue::rescue_expired(db, db.now().await, settings.max_attempts, render).await {
            Ok((0, 0)) => {}
            Ok((requeued, failed)) => {
                tracing::info!(requeued, failed, "rescued jobs whose lease expired");
                metrics::get().jobs_swept("worker_lost", requeued, failed);
            }
            Err(err) => tracing::warn!(error = %err, "rescuing expired leases failed"),
        }
    }

    async fn claim(&self, limit: usize) -> Vec<Lease> {
        let JobWorker { db, settings, .. } = self.worker.as_ref();
        match queue::claim(db, db.now().await, limit as u64, settings.lease).await {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(error = %err, "claiming jobs failed");
                Vec::new()
            }
        }
    }

    async fn process(self: Arc<Self>, lease: Lease, release: CancellationToken) {
        let span =
            tracing::info_span!("job", job_id = %lease.job.id, partner_id = %lease.job.partner_id);
        self.worker
            .process(lease, release, &self.recorder)
            .instrument(span)
            .await;
    }

    async fn idle(&self) {
        let JobWorker {
            wakeups, settings, ..
        } = self.worker.as_ref();
        wakeups.wait(Work::Jobs, settings.poll_interval).await;
    }
}

/// Outcomes are committed together (`queue::finish_many`), with their outbox rows.
impl CommitBatch for JobWorker {
    type Item = (Lease, Outcome);
    type Reply = Option<usize>;
    type Error = StoreError;
    const ITEM: &'static str = "job outcome";

    fn worth_retrying_singly(error: &StoreError) -> bool {
        !error.is_unavailable()
    }

    async fn commit(&self, batch: &[(Lease, Outcome)]) -> Result<Vec<Option<usize>>, StoreError> {
        let now = self.db.now().await;
        queue::finish_many(&self.db, batch.to_vec(), now, &self.render).await
    }

    async fn committed(&self, replies: &[Option<Option<usize>>]) {
        if replies.iter().any(|r| r.flatten().is_some_and(|n| n > 0)) {
            self.wakeups.announce(Work::Deliveries).await;
        }
    }
}
