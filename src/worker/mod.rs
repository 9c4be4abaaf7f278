//! The job worker pool: claims due jobs, gets their image (from the object store, or from
//! the partner's URL behind the outbound guard), reuses an earlier result for the same
//! bytes and model version or runs the scorer, and records the outcome together with the
//! job's webhook deliveries. Leases are kept alive by heartbeats while a job is worked on.

mod failure;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::{
    sync::{mpsc, oneshot, Semaphore},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use failure::JobFailure;

use crate::{
    imaging,
    inference::{tips, DietTag, Scorer},
    metrics,
    objects::{self, ObjectStore},
    outbound::GuardedClient,
    store::{
        deliveries::PayloadRenderer,
        jobs,
        queue::{self, FetchedImage, Lease, Outcome},
        wakeups::{Wakeups, Work},
        Db,
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
    scorer: Arc<Scorer>,
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

/// A job's outcome on its way to the recorder, with where to say whether it was written.
type Finishing = (Lease, Outcome, oneshot::Sender<Option<usize>>);

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
        scorer: Arc<Scorer>,
        fetcher: GuardedClient,
        wakeups: Arc<Wakeups>,
        render: PayloadRenderer,
        settings: WorkerSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            objects,
            scorer,
            fetcher,
            wakeups,
            render,
            settings,
        })
    }

    /// Claims and works on jobs until `shutdown`; then stops claiming, lets in-flight jobs
    /// finish within the grace period, and releases the rest back to the queue.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut in_flight = JoinSet::new();
        let (recorder, outcomes) = mpsc::channel(self.settings.concurrency.max(1));
        let recording = tokio::spawn(self.clone().record_outcomes(outcomes));
        let release = CancellationToken::new();
        let mut last_rescue: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            while in_flight.try_join_next().is_some() {}
            if last_rescue.is_none_or(|at| at.elapsed() >= self.settings.lease / 2) {
                last_rescue = Some(Instant::now());
                let rescued = queue::rescue_expired(
                    &self.db,
                    self.db.now().await,
                    self.settings.max_attempts,
                    &self.render,
                )
                .await;
                match rescued {
                    Ok((0, 0)) => {}
                    Ok((requeued, failed)) => {
                        tracing::info!(requeued, failed, "rescued jobs whose lease expired");
                        metrics::get().jobs_swept("worker_lost", requeued, failed);
                    }
                    Err(err) => tracing::warn!(error = %err, "rescuing expired leases failed"),
                }
            }
            // Wait for a free slot before claiming, so claimed jobs never wait on us.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            };
            let free = slots.available_permits() + 1;
            let claimed = match queue::claim(
                &self.db,
                self.db.now().await,
                free as u64,
                self.settings.lease,
            )
            .await
            {
                Ok(claimed) => claimed,
                Err(err) => {
                    tracing::warn!(error = %err, "claiming jobs failed");
                    Vec::new()
                }
            };
            let idle = claimed.is_empty();
            let mut permit = Some(permit);
            for lease in claimed {
                let permit = match permit.take() {
                    Some(p) => p,
                    None => slots.clone().acquire_owned().await.expect("never closed"),
                };
                let worker = self.clone();
                let release = release.clone();
                let recorder = recorder.clone();
                let span = tracing::info_span!("job", job_id = %lease.job.id, partner_id = %lease.job.partner_id);
                in_flight.spawn(
                    async move {
                        worker.process(lease, release, recorder).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            drop(permit);
            if idle {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.wakeups.wait(Work::Jobs, self.settings.poll_interval) => {}
                }
            }
        }
        if !in_flight.is_empty() {
            tracing::info!(jobs = in_flight.len(), "waiting for in-flight jobs");
            let deadline = tokio::time::sleep(self.settings.shutdown_grace);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    next = in_flight.join_next() => if next.is_none() { break },
                    _ = &mut deadline, if !release.is_cancelled() => {
                        tracing::warn!(jobs = in_flight.len(), "grace period over: releasing in-flight jobs");
                        release.cancel();
                    }
                }
            }
        }
        drop(recorder);
        let _ = recording.await;
    }

    /// Commits outcomes as they come: whatever queued up while the last commit ran goes
    /// into the next one. Ends when every sender is gone.
    async fn record_outcomes(self: Arc<Self>, mut outcomes: mpsc::Receiver<Finishing>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        while outcomes.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            let (pending, replies): (Vec<_>, Vec<_>) =
                batch.drain(..).map(|(l, o, r)| ((l, o), r)).unzip();
            let results = match queue::finish_many(
                &self.db,
                pending.clone(),
                self.db.now().await,
                &self.render,
            )
            .await
            {
                Ok(results) => results.into_iter().map(Some).collect(),
                // One bad outcome must not sink the others: try them one by one.
                Err(err) if pending.len() > 1 => {
                    tracing::warn!(error = %err, jobs = pending.len(), "recording job outcomes together failed; recording them one by one");
                    let mut results = Vec::with_capacity(pending.len());
                    for one in pending {
                        results.push(self.finish_one(one).await);
                    }
                    results
                }
                Err(err) => {
                    tracing::warn!(error = %err, "recording a job outcome failed; the lease will expire and the job be retried");
                    vec![None]
                }
            };
            if results.iter().any(|r| r.flatten().is_some_and(|n| n > 0)) {
                self.wakeups.announce(Work::Deliveries).await;
            }
            // A reply dropped (None) reports the failure; the lease will expire.
            for (reply, result) in replies.into_iter().zip(results) {
                if let Some(result) = result {
                    let _ = reply.send(result);
                }
            }
        }
    }

    async fn finish_one(&self, outcome: (Lease, Outcome)) -> Option<Option<usize>> {
        match queue::finish_many(&self.db, vec![outcome], self.db.now().await, &self.render).await {
            Ok(mut results) => results.pop(),
            Err(err) => {
                tracing::warn!(error = %err, "recording a job outcome failed; the lease will expire and the job be retried");
                None
            }
        }
    }

    /// Works on one claimed job and records its outcome, heartbeating meanwhile. When
    /// `release` fires first, the job goes back to the queue untouched.
    async fn process(
        &self,
        lease: Lease,
        release: CancellationToken,
        recorder: mpsc::Sender<Finishing>,
    ) {
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
        let (done, recorded) = oneshot::channel();
        if recorder.send((lease, outcome, done)).await.is_err() {
            tracing::warn!("the outcome recorder stopped; the lease will expire");
            return;
        }
        match recorded.await {
            Ok(Some(_)) => counted.record(created_at, now),
            Ok(None) => tracing::warn!("the lease expired before the job finished; result dropped"),
            Err(_) => tracing::warn!(
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
        let model_version = self.scorer.model().version.clone();
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
        let scored = self.scorer.score(bytes, &diets, lang).await?;
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
