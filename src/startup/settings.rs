//! Each part's settings, from the configuration. The parts know only their own settings
//! and `config` knows none of the parts, so the mapping lives here in the composition root
//! (the CLI commands that build parts themselves use it too).

use std::time::Duration;

use crate::{
    config::{Config, ConfigError},
    delivery::{DeliverySettings, RetrySchedule},
    inference::{
        model::is_model_id, DecodeLimits, InferenceError, ModelCatalogue, RuntimeSettings, Scorer,
        ScorerSettings,
    },
    scheduling::{ReconcileSettings, Schedule},
    worker::WorkerSettings,
};

/// Checks the settings that the parts parse themselves, so a bad one fails at start-up
/// like the rest of [`Config::validate`].
pub fn check(config: &Config) -> Result<(), ConfigError> {
    retry_schedule(config)?;
    reconcile_schedule(config)?;
    Ok(())
}

pub fn retry_schedule(config: &Config) -> Result<RetrySchedule, ConfigError> {
    let parsed: RetrySchedule =
        config
            .webhook_retry_schedule
            .parse()
            .map_err(|message| ConfigError::Invalid {
                field: "webhook_retry_schedule",
                message,
            })?;
    Ok(parsed.with_jitter(config.webhook_retry_jitter))
}

pub fn reconcile_schedule(config: &Config) -> Result<Schedule, ConfigError> {
    Schedule::parse(&config.reconcile_cron, &config.reconcile_timezone).map_err(|message| {
        ConfigError::Invalid {
            field: "reconcile_cron",
            message,
        }
    })
}

pub fn worker(config: &Config, scorer: &Scorer) -> WorkerSettings {
    let batching = scorer.batcher_settings();
    WorkerSettings {
        // Enough jobs in flight that preprocessing overlaps inference and batches fill.
        concurrency: config
            .worker_concurrency
            .unwrap_or((batching.max_batch * batching.workers * 2).max(4)),
        lease: Duration::from_secs(config.job_lease_seconds),
        max_attempts: config.job_max_attempts,
        retry_base_delay: Duration::from_millis(config.job_retry_delay_ms),
        retry_max_delay: Duration::from_secs(600),
        poll_interval: Duration::from_millis(config.poll_interval_ms),
        shutdown_grace: Duration::from_secs(config.shutdown_grace_seconds),
        max_image_bytes: usize::try_from(config.max_upload_bytes).unwrap_or(usize::MAX),
        max_image_pixels: config.max_image_pixels,
    }
}

pub fn delivery(config: &Config) -> Result<DeliverySettings, ConfigError> {
    Ok(DeliverySettings {
        schedule: retry_schedule(config)?,
        concurrency: config.webhook_concurrency,
        receiver_concurrency: config.webhook_receiver_concurrency,
        // An attempt ends within its timeout; the rest covers loading its endpoint,
        // waiting for the group commit, and clock skew between nodes.
        lease: Duration::from_millis(config.webhook_timeout_ms * 2 + 10_000),
        poll_interval: Duration::from_millis(config.poll_interval_ms),
    })
}

pub fn reconcile(config: &Config) -> ReconcileSettings {
    const DAY: u64 = 24 * 3600;
    ReconcileSettings {
        stale_after: Duration::from_secs(config.stale_job_minutes * 60),
        max_attempts: config.job_max_attempts,
        disable_failing_endpoints_after: Duration::from_secs(
            config.disable_failing_endpoint_days * DAY,
        ),
        retention: Duration::from_secs(config.retention_days * DAY),
        lease: Duration::from_secs(60),
    }
}

/// The model folders under `models_dir`, checked, with the configured default.
pub fn catalogue(config: &Config) -> Result<ModelCatalogue, InferenceError> {
    ModelCatalogue::scan(&config.models_dir, &config.default_model)
}

/// [`scorer`] for the model with this id (the default when `None`).
pub fn scorer_for(config: &Config, model: Option<&str>) -> Result<ScorerSettings, InferenceError> {
    let id = model.unwrap_or(&config.default_model);
    let dir = config.models_dir.join(id);
    if !is_model_id(id) || !dir.join("manifest.json").is_file() {
        return Err(InferenceError::Model(format!(
            "no model {id:?}: {} has no such model folder",
            config.models_dir.display()
        )));
    }
    Ok(ScorerSettings {
        model_dir: dir,
        ..scorer(config)
    })
}

/// What the food scorer needs from the configuration: the default model's folder, and the
/// settings every model's scorer shares.
pub fn scorer(config: &Config) -> ScorerSettings {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = if config.inference_threads == 0 {
        cores
    } else {
        config.inference_threads
    };
    ScorerSettings {
        model_dir: config.models_dir.join(&config.default_model),
        precision: config.model_precision,
        runtime: RuntimeSettings {
            choice: config.runtime,
            ort_library: config.ort_library.clone(),
            provider: config.execution_provider,
            provider_fallback: config.execution_provider_fallback,
            threads,
            tensorrt_fp16: config.tensorrt_fp16,
            tensorrt_cache_dir: Some(
                config
                    .tensorrt_cache_dir
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("tensorrt")),
            ),
        },
        max_batch: config.max_batch,
        max_wait: config.max_batch_wait_ms.map(Duration::from_millis),
        workers: config.inference_workers,
        queue_capacity: config.batch_queue_capacity.max(1),
        limits: DecodeLimits {
            max_pixels: config.max_image_pixels,
            max_decode_bytes: config.max_decode_bytes,
        },
        decode_budget_bytes: config.decode_memory_budget_bytes,
    }
}
