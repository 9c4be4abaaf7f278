//! The food scorer: image bytes in, scored result out. It knows nothing of HTTP or the
//! database. Preprocessing runs on the blocking pool; inference goes through the dynamic
//! batcher to whichever runtime was loaded.

pub mod batcher;
pub mod model;
pub mod preprocess;
pub mod runtime;
pub mod scoring;
pub mod tips;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

pub use batcher::{BatchObserver, Batcher, BatcherSettings};
pub use model::FoodModel;
pub use preprocess::{DecodeLimits, ImageError};
pub use runtime::{ExecutionProvider, Runtime, RuntimeChoice, RuntimeSettings};
pub use scoring::ScoreResult;
pub use tips::DietTag;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("model files: {0}")]
    Model(String),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error(transparent)]
    Batch(#[from] batcher::BatchError),
}

impl InferenceError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Image(e) => e.code(),
            Self::Model(_) | Self::Runtime(_) | Self::Batch(_) => "inference_failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScorerSettings {
    pub model_dir: PathBuf,
    pub runtime: RuntimeSettings,
    /// Overrides of the runtime's batching defaults.
    pub max_batch: Option<usize>,
    pub max_wait: Option<Duration>,
    pub workers: Option<usize>,
    pub queue_capacity: usize,
    pub limits: DecodeLimits,
}

/// How long each stage took, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timings {
    pub preprocess_ms: f64,
    /// Waiting for a batch plus running it.
    pub inference_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    #[serde(flatten)]
    pub result: ScoreResult,
    pub timings: Timings,
}

pub struct Scorer {
    model: Arc<FoodModel>,
    batcher: Batcher,
    runtime_name: String,
    limits: DecodeLimits,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

impl Scorer {
    /// Loads the model folder and the runtime, starts the batcher (needs a tokio runtime),
    /// and warms the runtime up (`runtime::warm_up`).
    pub fn load(
        settings: &ScorerSettings,
        observer: Option<BatchObserver>,
    ) -> Result<Self, InferenceError> {
        let model = Arc::new(FoodModel::load(&settings.model_dir)?);
        let runtime = runtime::load(model.file(), &settings.runtime, settings.max_batch)?;
        let scorer = Self::with_runtime(model, runtime.clone(), settings, observer);
        runtime::warm_up(
            &*runtime,
            scorer.model.input.tensor_len(),
            scorer.batcher_settings().max_batch,
        )?;
        Ok(scorer)
    }

    pub fn with_runtime(
        model: Arc<FoodModel>,
        runtime: Arc<dyn Runtime>,
        settings: &ScorerSettings,
        observer: Option<BatchObserver>,
    ) -> Self {
        let defaults = runtime.batching();
        let batcher_settings = BatcherSettings {
            max_batch: settings.max_batch.unwrap_or(defaults.max_batch),
            max_wait: settings.max_wait.unwrap_or(defaults.max_wait),
            workers: settings.workers.unwrap_or(defaults.workers),
            queue_capacity: settings.queue_capacity,
        };
        let runtime_name = runtime.name().to_string();
        Self {
            model,
            batcher: Batcher::start(runtime, batcher_settings, observer),
            runtime_name,
            limits: settings.limits,
        }
    }

    pub fn model(&self) -> &FoodModel {
        &self.model
    }

    pub fn runtime_name(&self) -> &str {
        &self.runtime_name
    }

    pub fn batcher_settings(&self) -> BatcherSettings {
        self.batcher.settings()
    }

    /// The batcher alone, for callers that bring ready tensors (benchmarks).
    pub fn batcher_handle(&self) -> Batcher {
        self.batcher.clone()
    }

    /// Scores one photo for these diets, with tips in `lang` (English where missing).
    pub async fn score(
        &self,
        bytes: bytes::Bytes,
        diets: &[DietTag],
        lang: &str,
    ) -> Result<Scored, InferenceError> {
        let started = Instant::now();
        let spec = self.model.input.clone();
        let limits = self.limits;
        let prepared =
            tokio::task::spawn_blocking(move || preprocess::prepare(&bytes, &spec, &limits))
                .await
                .map_err(|e| InferenceError::Model(format!("preprocessing task failed: {e}")))??;
        let preprocessed = Instant::now();
        let logits = self.batcher.infer(prepared.tensor).await?;
        let inferred = Instant::now();
        let result = scoring::interpret(&self.model, &logits, diets, lang);
        Ok(Scored {
            result,
            timings: Timings {
                preprocess_ms: ms(preprocessed - started),
                inference_ms: ms(inferred - preprocessed),
                total_ms: ms(started.elapsed()),
            },
        })
    }
}
