//! Configuration: one typed struct. Values come from the defaults below, then an optional
//! TOML file, then environment variables (`PLATESCORE_<FIELD>`, plus `DATABASE_URL`).
//! Every field is documented in `docs/configuration.md`. This module depends on nothing
//! of ours: each part's settings are made from it by `startup::settings`.

use std::{net::SocketAddr, path::PathBuf};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// `host:port` the HTTP API listens on.
    pub listen: String,
    /// Folder for the embedded defaults: the SQLite database and the local object store.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; default: `sqlite://<data_dir>/platescore.db`.
    pub database_url: Option<String>,
    /// Pool size for PostgreSQL, and for SQLite readers (SQLite has one writer).
    pub database_max_connections: u32,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
    /// On an empty database, create an admin partner and print its key on stderr. Unset:
    /// yes on SQLite (one node, whose terminal is the operator's), no on PostgreSQL, where
    /// logs are shared and `platescore partners create NAME --admin` makes the first key.
    pub create_first_partner: Option<bool>,
    /// `file:///path` or `s3://bucket/prefix`; default: `file://<data_dir>/objects`.
    pub object_store: Option<String>,
    /// Endpoint of an S3-compatible server (MinIO, R2, Ceph…); AWS when unset.
    pub s3_endpoint_url: Option<String>,
    pub s3_region: String,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    pub s3_force_path_style: bool,
    /// Static credentials for S3-compatible servers; when unset, the AWS chain
    /// (`AWS_ACCESS_KEY_ID`…, profiles, instance roles) applies.
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_upload_bytes: u64,
    /// Request bodies held in memory at once, in bytes: each is counted by its
    /// `Content-Length` (as `max_upload_bytes` without one) before it is read, and waits
    /// while the budget is spent. At least `max_upload_bytes`.
    pub upload_memory_budget_bytes: u64,
    /// How long a client may take to send a request's head, from its first byte.
    pub http_header_timeout_seconds: u64,
    /// How long a client may take to send a request's body, counted from when the server
    /// starts reading it. Over it: `408 request_timeout`, and the connection is closed.
    pub http_body_timeout_seconds: u64,
    /// A connection with no request in flight for this long is closed (kept-alive ones
    /// included), as is one whose client has taken no byte of a response for this long.
    /// Longer than the 60 s idle timeout of common load balancers, so that they close first.
    pub http_idle_timeout_seconds: u64,
    /// Largest accepted image, in pixels (width × height, read from the header).
    pub max_image_pixels: u64,
    /// Largest accepted `metadata` object, in bytes of JSON.
    pub max_metadata_bytes: usize,
    /// How long a verified API key is remembered; a revoked key works at most this long. 0: never.
    pub auth_cache_seconds: u64,
    /// After `POST /keys/rotate`, how long the previous API key keeps working, in hours.
    pub key_rotation_overlap_hours: u32,
    /// Enqueue requests per second each partner may make, per API node; unlimited when
    /// unset. A partner's own limit (`platescore partners set-limit`) overrides it.
    pub partner_rate_limit_per_second: Option<u32>,
    /// Enqueue requests a partner may make at once above its rate; default: one second's
    /// worth (the rate).
    pub partner_rate_limit_burst: Option<u32>,
    /// Jobs each partner may have queued or in progress; unlimited when unset. A partner's
    /// own cap overrides it.
    pub partner_max_queued_jobs: Option<u32>,
    /// When set, `GET /metrics` needs `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
    /// Comma-separated CIDRs that outbound URLs may reach although they are private.
    pub outbound_allow_cidrs: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Folder of the model folders: each subfolder with a `manifest.json` is a model, its
    /// name the `model_id` jobs select it by (`models/README.md`).
    pub models_dir: PathBuf,
    /// The model jobs run when they name none.
    pub default_model: String,
    /// Load every model at start, not only the default (the others load on their first
    /// job otherwise).
    pub preload_models: bool,
    /// `auto` (ONNX Runtime when its library loads, else tract), `ort` or `tract`.
    pub runtime: RuntimeChoice,
    /// Which of the model folder's files runs: `auto` (INT8 on ONNX Runtime's CPU provider
    /// where the manifest makes it the CPU default, FP32 elsewhere), `fp32` or `int8`.
    pub model_precision: ModelPrecision,
    /// Path of `libonnxruntime.so…`; when unset, `ORT_DYLIB_PATH`, then the library the
    /// build bundled (beside the executable, or where the build cached it).
    pub ort_library: Option<PathBuf>,
    /// ONNX Runtime provider: `cpu`, `cuda`, or `tensorrt` (CUDA runs what TensorRT cannot).
    pub execution_provider: ExecutionProvider,
    /// When the GPU provider cannot start, serve on the next one (TensorRT → CUDA → CPU)
    /// instead of refusing to start.
    pub execution_provider_fallback: bool,
    /// Threads for one inference (ONNX Runtime) or inference workers (tract). 0: all cores.
    pub inference_threads: usize,
    /// Largest batch; default per runtime (tract 1, ort CPU 8, GPU 32).
    pub max_batch: Option<usize>,
    /// Longest a request waits for its batch to fill, in ms; default per runtime.
    pub max_batch_wait_ms: Option<u64>,
    /// Batches run at once; default per runtime.
    pub inference_workers: Option<usize>,
    /// Requests that may wait for a batch before callers are made to wait.
    pub batch_queue_capacity: usize,
    /// Memory the decode of one image may take, as estimated from its header.
    pub max_decode_bytes: u64,
    /// Memory all images decoded at once on this node may take, as estimated from their
    /// headers. An image waits for its share; one over the whole budget fails
    /// `image_too_large`.
    pub decode_memory_budget_bytes: u64,
    /// TensorRT: build FP16 engines.
    pub tensorrt_fp16: bool,
    /// TensorRT: folder for built engines, so restarts skip the build; default `<data_dir>/tensorrt`.
    pub tensorrt_cache_dir: Option<PathBuf>,
    /// Jobs worked on at once per node; default: enough to keep every batch full.
    pub worker_concurrency: Option<usize>,
    /// How long a claimed job is held without a heartbeat before another worker may take it.
    pub job_lease_seconds: u64,
    /// Attempts before a job that keeps failing transiently fails for good.
    pub job_max_attempts: i32,
    /// First retry delay of a job after a transient failure, doubled per attempt (capped at 10 min).
    pub job_retry_delay_ms: u64,
    /// Fallback poll of the queues, for lost wake-ups.
    pub poll_interval_ms: u64,
    /// On shutdown, how long in-flight jobs may finish before they are released to the queue.
    pub shutdown_grace_seconds: u64,
    /// On shutdown, how long readiness reports `draining` while requests are still served.
    pub shutdown_drain_ms: u64,
    /// Timeout of one webhook attempt.
    pub webhook_timeout_ms: u64,
    /// Delays between webhook attempts: comma-separated, with units ms, s, m, h.
    pub webhook_retry_schedule: String,
    /// Random spread of each webhook retry delay, as a fraction (0.2 = ±20%).
    pub webhook_retry_jitter: f64,
    /// Webhook attempts in flight at once per node.
    pub webhook_concurrency: usize,
    /// Webhook attempts in flight at once per receiver URL per node, so a slow receiver
    /// holds no more than this many of the node's `webhook_concurrency` slots.
    pub webhook_receiver_concurrency: usize,
    /// When reconciliation runs: 6 fields, seconds first.
    pub reconcile_cron: String,
    /// IANA timezone the cron expression is read in.
    pub reconcile_timezone: String,
    /// A job queued and due, or in progress without progress, for this long is reconciled.
    pub stale_job_minutes: u64,
    /// Endpoints failing continuously for this many days are disabled.
    pub disable_failing_endpoint_days: u64,
    /// Jobs, results and images older than this many days are deleted.
    pub retention_days: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("data"),
            database_url: None,
            database_max_connections: 16,
            migrate_on_start: true,
            create_first_partner: None,
            object_store: None,
            s3_endpoint_url: None,
            s3_region: "us-east-1".into(),
            s3_force_path_style: false,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            max_upload_bytes: 20 * 1024 * 1024,
            upload_memory_budget_bytes: 128 * 1024 * 1024,
            http_header_timeout_seconds: 30,
            http_body_timeout_seconds: 60,
            http_idle_timeout_seconds: 75,
            max_image_pixels: 50_000_000,
            max_metadata_bytes: 16 * 1024,
            auth_cache_seconds: 10,
            key_rotation_overlap_hours: 24,
            partner_rate_limit_per_second: None,
            partner_rate_limit_burst: None,
            partner_max_queued_jobs: None,
            metrics_token: None,
            outbound_allow_cidrs: String::new(),
            log_format: LogFormat::Text,
            models_dir: PathBuf::from("models"),
            default_model: "food-scorer".into(),
            preload_models: false,
            runtime: RuntimeChoice::Auto,
            model_precision: ModelPrecision::Auto,
            ort_library: None,
            execution_provider: ExecutionProvider::Cpu,
            execution_provider_fallback: false,
            inference_threads: 0,
            max_batch: None,
            max_batch_wait_ms: None,
            inference_workers: None,
            batch_queue_capacity: 256,
            max_decode_bytes: 512 * 1024 * 1024,
            decode_memory_budget_bytes: 384 * 1024 * 1024,
            tensorrt_fp16: true,
            tensorrt_cache_dir: None,
            worker_concurrency: None,
            job_lease_seconds: 60,
            job_max_attempts: 5,
            job_retry_delay_ms: 10_000,
            poll_interval_ms: 1_000,
            shutdown_grace_seconds: 20,
            shutdown_drain_ms: 3_000,
            webhook_timeout_ms: 15_000,
            webhook_retry_schedule: "5s,5m,30m,2h,5h,10h,10h".into(),
            webhook_retry_jitter: 0.2,
            webhook_concurrency: 64,
            webhook_receiver_concurrency: 4,
            reconcile_cron: "0 0 3 * * *".into(),
            reconcile_timezone: "UTC".into(),
            stale_job_minutes: 60,
            disable_failing_endpoint_days: 5,
            retention_days: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeChoice {
    /// ONNX Runtime when its library loads, else tract.
    Auto,
    Ort,
    Tract,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelPrecision {
    /// INT8 where ONNX Runtime runs on the CPU and the manifest makes its INT8 file the CPU
    /// default (`default_on_cpu`); FP32 elsewhere (tract, and GPUs, where TensorRT builds
    /// FP16 engines from the FP32 file).
    Auto,
    Fp32,
    Int8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
    /// TensorRT, with CUDA for any node TensorRT cannot run.
    Tensorrt,
}

impl ExecutionProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Tensorrt => "tensorrt",
        }
    }

    pub fn is_gpu(self) -> bool {
        self != Self::Cpu
    }
}

/// Where uploaded images are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectStoreLocation {
    Folder(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Config {
    /// Defaults, then the TOML file (if given), then the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        if std::env::var_os("PLATESCORE_MODEL_DIR").is_some() {
            return Err(invalid(
                "model_dir",
                "PLATESCORE_MODEL_DIR is gone: set PLATESCORE_MODELS_DIR to the folder of model \
                 folders and PLATESCORE_DEFAULT_MODEL to the default's folder name",
            ));
        }
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let config: Config = figment
            .merge(Env::prefixed("PLATESCORE_").filter(|key| key != "config"))
            .merge(Env::raw().only(&["DATABASE_URL"]))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field that can be wrong, so a bad setting fails at start-up; the formats
    /// that other parts parse (the retry schedule, the cron) by `startup::settings::check`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.object_store_location()?;
        self.outbound_allow_list()?;
        let url = self.database_url();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return Err(invalid(
                "database_url",
                "must start with sqlite:// or postgres://",
            ));
        }
        if self.max_upload_bytes < 1024 {
            return Err(invalid("max_upload_bytes", "must be at least 1024"));
        }
        if self.upload_memory_budget_bytes < self.max_upload_bytes {
            return Err(invalid(
                "upload_memory_budget_bytes",
                "must be at least max_upload_bytes",
            ));
        }
        if self.decode_memory_budget_bytes < 1024 * 1024 {
            return Err(invalid(
                "decode_memory_budget_bytes",
                "must be at least 1 MiB",
            ));
        }
        if self.max_image_pixels == 0 {
            return Err(invalid("max_image_pixels", "must be positive"));
        }
        if self.database_max_connections == 0 {
            return Err(invalid("database_max_connections", "must be positive"));
        }
        for (field, value) in [
            ("job_lease_seconds", self.job_lease_seconds),
            ("poll_interval_ms", self.poll_interval_ms),
            ("webhook_timeout_ms", self.webhook_timeout_ms),
            ("webhook_concurrency", self.webhook_concurrency as u64),
            (
                "webhook_receiver_concurrency",
                self.webhook_receiver_concurrency as u64,
            ),
            ("retention_days", self.retention_days),
            (
                "http_header_timeout_seconds",
                self.http_header_timeout_seconds,
            ),
            ("http_body_timeout_seconds", self.http_body_timeout_seconds),
            ("http_idle_timeout_seconds", self.http_idle_timeout_seconds),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be positive"));
            }
        }
        for (field, value) in [
            (
                "partner_rate_limit_per_second",
                self.partner_rate_limit_per_second,
            ),
            ("partner_rate_limit_burst", self.partner_rate_limit_burst),
            ("partner_max_queued_jobs", self.partner_max_queued_jobs),
        ] {
            if value == Some(0) {
                return Err(invalid(
                    field,
                    "must be positive; leave it unset for no limit",
                ));
            }
        }
        if self.job_max_attempts < 1 {
            return Err(invalid("job_max_attempts", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.webhook_retry_jitter) {
            return Err(invalid("webhook_retry_jitter", "must be between 0 and 1"));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|e| invalid("listen", format!("`{}`: {e}", self.listen)))
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) if !url.is_empty() => url.clone(),
            _ => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("platescore.db").display()
            ),
        }
    }

    pub fn creates_first_partner(&self) -> bool {
        self.create_first_partner
            .unwrap_or_else(|| self.is_sqlite())
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url().starts_with("sqlite:")
    }

    pub fn object_store_location(&self) -> Result<ObjectStoreLocation, ConfigError> {
        let Some(spec) = self.object_store.as_deref().filter(|s| !s.is_empty()) else {
            return Ok(ObjectStoreLocation::Folder(self.data_dir.join("objects")));
        };
        if let Some(path) = spec.strip_prefix("file://") {
            if path.is_empty() {
                return Err(invalid("object_store", "file:// needs a path"));
            }
            return Ok(ObjectStoreLocation::Folder(PathBuf::from(path)));
        }
        if let Some(rest) = spec.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("object_store", "s3:// needs a bucket"));
            }
            return Ok(ObjectStoreLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        Err(invalid(
            "object_store",
            format!("`{spec}`: expected file:///path or s3://bucket/prefix"),
        ))
    }

    pub fn outbound_allow_list(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.outbound_allow_cidrs
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|cidr| {
                cidr.parse::<IpNet>()
                    .map_err(|e| invalid("outbound_allow_cidrs", format!("`{cidr}`: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_into_the_data_dir() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(
            config.database_url(),
            "sqlite://data/platescore.db?mode=rwc"
        );
        assert_eq!(
            config.object_store_location().unwrap(),
            ObjectStoreLocation::Folder(PathBuf::from("data/objects"))
        );
    }

    #[test]
    fn object_store_urls_parse() {
        let mut config = Config {
            object_store: Some("s3://meals/prod/images/".into()),
            ..Config::default()
        };
        assert_eq!(
            config.object_store_location().unwrap(),
            ObjectStoreLocation::S3 {
                bucket: "meals".into(),
                prefix: "prod/images".into()
            }
        );
        config.object_store = Some("file:///var/lib/platescore".into());
        assert_eq!(
            config.object_store_location().unwrap(),
            ObjectStoreLocation::Folder(PathBuf::from("/var/lib/platescore"))
        );
        config.object_store = Some("ftp://x".into());
        assert!(config.validate().is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        for config in [
            Config {
                listen: "nonsense".into(),
                ..Config::default()
            },
            Config {
                outbound_allow_cidrs: "10.0.0.0/8, bogus".into(),
                ..Config::default()
            },
            Config {
                database_url: Some("mysql://x".into()),
                ..Config::default()
            },
            // Every body must fit the upload memory budget, or it would wait forever.
            Config {
                upload_memory_budget_bytes: Config::default().max_upload_bytes - 1,
                ..Config::default()
            },
            Config {
                http_body_timeout_seconds: 0,
                ..Config::default()
            },
        ] {
            assert!(config.validate().is_err(), "{config:?}");
        }
        let ok = Config {
            outbound_allow_cidrs: "10.0.0.0/8, 127.0.0.1/32".into(),
            ..Config::default()
        };
        assert_eq!(ok.outbound_allow_list().unwrap().len(), 2);
    }
}
