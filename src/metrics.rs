//! Prometheus metrics, in the text format at `GET /metrics`. One registry per process;
//! subsystems record into it, and queue depth is read from the database at each scrape.
//! Labels are bounded: operation ids and route patterns, outcomes and error codes, never a
//! job id.

use std::sync::LazyLock;

use prometheus::{
    core::Collector, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub jobs_enqueued: IntCounter,
    pub jobs_finished: IntCounterVec,
    pub jobs_retried: IntCounterVec,
    pub queue_depth: GaugeVec,
    pub oldest_queued_age: Gauge,
    /// 1 when this node read the queue from the database at the last scrape, else 0.
    pub database_up: Gauge,
    pub batch_size: Histogram,
    pub preprocess_seconds: Histogram,
    pub inference_seconds: Histogram,
    pub job_seconds: Histogram,
    pub webhook_attempts: IntCounterVec,
    pub webhook_seconds: Histogram,
    pub reconcile_runs: IntCounterVec,
    /// 1 for the model runtime and model version this node scores with.
    pub model_info: GaugeVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Enqueue to outcome includes queue waits and retry delays: up to an hour.
const JOB_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Registers a metric and returns it. Names and options are constants: an error here is a
/// bug, and any test that touches the metrics finds it.
fn registered<C: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<C>,
) -> C {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            registered(
                &registry,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())),
            )
        };
        let metrics = Self {
            http_requests: counter(
                "platescore_http_requests_total",
                "HTTP requests, by operation and status.",
                &["operation", "status"],
            ),
            http_duration: registered(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "platescore_http_request_duration_seconds",
                        "Time to answer an HTTP request, by operation.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["operation"],
                ),
            ),
            jobs_enqueued: registered(
                &registry,
                IntCounter::new(
                    "platescore_jobs_enqueued_total",
                    "Jobs accepted by POST /enqueue (idempotent replays excluded).",
                ),
            ),
            jobs_finished: counter(
                "platescore_jobs_finished_total",
                "Jobs finished, by status (succeeded, failed) and error code (none on \
                 success).",
                &["status", "code"],
            ),
            jobs_retried: counter(
                "platescore_jobs_retried_total",
                "Job attempts that failed transiently and were queued again, by code.",
                &["code"],
            ),
            queue_depth: registered(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "platescore_queue_depth",
                        "Jobs queued or in progress, by state, read from the database at \
                         scrape time.",
                    ),
                    &["state"],
                ),
            ),
            oldest_queued_age: registered(
                &registry,
                Gauge::new(
                    "platescore_queue_oldest_age_seconds",
                    "Age of the oldest job that is due and still queued; 0 when none.",
                ),
            ),
            database_up: registered(
                &registry,
                Gauge::new(
                    "platescore_database_up",
                    "1 when the queue was read from the database at this scrape, else 0 (the \
                     queue gauges are then NaN).",
                ),
            ),
            batch_size: histogram(
                "platescore_batch_size",
                "Images per inference batch.",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            ),
            preprocess_seconds: histogram(
                "platescore_preprocess_seconds",
                "Decoding and resizing one image.",
                LATENCY_BUCKETS,
            ),
            inference_seconds: histogram(
                "platescore_inference_seconds",
                "Waiting for a batch and running it, per image.",
                LATENCY_BUCKETS,
            ),
            job_seconds: histogram(
                "platescore_job_duration_seconds",
                "From enqueue to the job's outcome (end to end).",
                JOB_BUCKETS,
            ),
            webhook_attempts: counter(
                "platescore_webhook_attempts_total",
                "Webhook attempts, by outcome: delivered, failed, timeout, gone, skipped.",
                &["outcome"],
            ),
            webhook_seconds: histogram(
                "platescore_webhook_attempt_duration_seconds",
                "Time of one webhook attempt, until the receiver's answer or the failure.",
                LATENCY_BUCKETS,
            ),
            reconcile_runs: counter(
                "platescore_reconcile_runs_total",
                "Reconciliation slots, by result: ran, skipped (found finished: another node ran it), \
                 error; taken_over when this node took over a slot whose node had stopped \
                 renewing its lease (the run also counts as ran or error).",
                &["result"],
            ),
            model_info: registered(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "platescore_model_info",
                        "1 for the runtime (tract, ort-cpu, ort-cuda, ort-tensorrt) and model \
                         version this node scores with; absent on API-only nodes.",
                    ),
                    &["runtime", "model_version"],
                ),
            ),
            registry,
        };
        // Known series start at 0, so a first increment is a visible step for `increase()`.
        for result in ["ran", "skipped", "error", "taken_over"] {
            metrics.reconcile_runs.with_label_values(&[result]);
        }
        for outcome in ["delivered", "failed", "timeout", "gone", "skipped"] {
            metrics.webhook_attempts.with_label_values(&[outcome]);
        }
        metrics.jobs_finished.with_label_values(&["succeeded", ""]);
        metrics
    }

    /// Jobs a sweep (`code`: `worker_lost` for expired leases, `stale` for the
    /// reconciliation) put back in the queue or failed.
    pub fn jobs_swept(&self, code: &str, requeued: u64, failed: u64) {
        self.jobs_retried
            .with_label_values(&[code])
            .inc_by(requeued);
        self.jobs_finished
            .with_label_values(&["failed", code])
            .inc_by(failed);
    }

    /// The queue as read from the database now: (queued, in progress, oldest due job's age
    /// in seconds), or None when it could not be read.
    pub fn set_queue(&self, queue: Option<(u64, u64, f64)>) {
        let (queued, in_progress, oldest, up) = match queue {
            Some((queued, in_progress, oldest)) => (queued as f64, in_progress as f64, oldest, 1.0),
            None => (f64::NAN, f64::NAN, f64::NAN, 0.0),
        };
        self.queue_depth.with_label_values(&["queued"]).set(queued);
        self.queue_depth
            .with_label_values(&["in_progress"])
            .set(in_progress);
        self.oldest_queued_age.set(oldest);
        self.database_up.set(up);
    }

    /// The model runtime and model version this node scores with.
    pub fn set_model_info(&self, runtime: &str, model_version: &str) {
        self.model_info
            .with_label_values(&[runtime, model_version])
            .set(1.0);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
