//! The food scorer: image bytes in, scored result out. It knows nothing of HTTP or the
//! database. Preprocessing runs on the blocking pool, each image once the memory its decode
//! needs is reserved from the node's decode budget; inference goes through the dynamic
//! batcher to whichever runtime was loaded.

pub mod batcher;
pub mod catalogue;
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

use crate::budget::MemoryBudget;

pub use batcher::{BatchObserver, Batcher, BatcherSettings};
pub use catalogue::{ModelCatalogue, ModelEntry};
pub use model::{FoodModel, Precision};
pub use preprocess::{DecodeLimits, ImageError};
pub use runtime::{ExecutionProvider, ModelPrecision, Runtime, RuntimeChoice, RuntimeSettings};
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
    pub precision: ModelPrecision,
    pub runtime: RuntimeSettings,
    /// Overrides of the runtime's batching defaults.
    pub max_batch: Option<usize>,
    pub max_wait: Option<Duration>,
    pub workers: Option<usize>,
    pub queue_capacity: usize,
    pub limits: DecodeLimits,
    /// Memory all images being decoded at once may take, as `preprocess::memory_needed`
    /// estimates it. An image waits until its share is free; one over the whole budget is
    /// refused (`image_too_large`).
    pub decode_budget_bytes: u64,
}

/// Loads the model folder's file that these settings run (see [`ModelPrecision`]).
pub fn load_model(settings: &ScorerSettings) -> Result<FoodModel, InferenceError> {
    let precision = match settings.precision {
        ModelPrecision::Fp32 => Precision::Fp32,
        ModelPrecision::Int8 => Precision::Int8,
        ModelPrecision::Auto
            if runtime::runs_on_ort_cpu(&settings.runtime)
                && FoodModel::int8_is_cpu_default(&settings.model_dir)? =>
        {
            Precision::Int8
        }
        ModelPrecision::Auto => Precision::Fp32,
    };
    FoodModel::load(&settings.model_dir, precision)
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
    decode_budget: Arc<MemoryBudget>,
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
        let budget = Arc::new(MemoryBudget::new(settings.decode_budget_bytes));
        Self::load_sharing(settings, observer, budget)
    }

    /// [`Scorer::load`], decoding within a budget other scorers share.
    fn load_sharing(
        settings: &ScorerSettings,
        observer: Option<BatchObserver>,
        decode_budget: Arc<MemoryBudget>,
    ) -> Result<Self, InferenceError> {
        let model = Arc::new(load_model(settings)?);
        let runtime = runtime::load(model.file(), &settings.runtime, settings.max_batch)?;
        let mut scorer = Self::with_runtime(model, runtime.clone(), settings, observer);
        scorer.decode_budget = decode_budget;
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
            decode_budget: Arc::new(MemoryBudget::new(settings.decode_budget_bytes)),
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

    /// The decode budget, shared by every image this scorer decodes.
    pub fn decode_budget(&self) -> &MemoryBudget {
        &self.decode_budget
    }

    /// Scores one photo for these diets, with tips in `lang` (English where missing). The
    /// decode waits for its memory in the decode budget; `preprocess_ms` does not count
    /// the wait, `total_ms` does.
    pub async fn score(
        &self,
        bytes: bytes::Bytes,
        diets: &[DietTag],
        lang: &str,
    ) -> Result<Scored, InferenceError> {
        let started = Instant::now();
        let spec = self.model.input.clone();
        let limits = self.limits;
        let (bytes, needed) = tokio::task::spawn_blocking(move || {
            let needed = preprocess::memory_needed(&bytes, spec.resize_shorter, &limits);
            (bytes, needed)
        })
        .await
        .map_err(|e| InferenceError::Model(format!("preprocessing task failed: {e}")))?;
        let needed = needed?;
        let reservation =
            self.decode_budget
                .reserve(needed)
                .await
                .map_err(|over| ImageError::TooMuchMemory {
                    needed: over.needed,
                    limit: over.total,
                })?;
        let decoding = Instant::now();
        let spec = self.model.input.clone();
        // The reservation is held until the decode ends, even when this future is dropped.
        let prepared = tokio::task::spawn_blocking(move || {
            let prepared = preprocess::prepare(&bytes, &spec, &limits);
            drop(reservation);
            prepared
        })
        .await
        .map_err(|e| InferenceError::Model(format!("preprocessing task failed: {e}")))??;
        let preprocessed = Instant::now();
        let outputs = self.batcher.infer(prepared.tensor).await?;
        let inferred = Instant::now();
        if outputs.len() != self.model.outputs {
            return Err(InferenceError::Model(format!(
                "the runtime returned {} values, the manifest promises {}",
                outputs.len(),
                self.model.outputs
            )));
        }
        let result = scoring::interpret(&self.model, &outputs, diets, lang);
        Ok(Scored {
            result,
            timings: Timings {
                preprocess_ms: ms(preprocessed - decoding),
                inference_ms: ms(inferred - preprocessed),
                total_ms: ms(started.elapsed()),
            },
        })
    }
}

/// A scorer for each model of the catalogue, each with its own runtime session and batcher,
/// all decoding within one budget. The default model loads at start; the others at start
/// too with `preload`, else on their first job, so a model nobody uses costs no memory.
pub struct Scorers {
    slots: Vec<ModelSlot>,
    default: Arc<Scorer>,
    settings: ScorerSettings,
    observer: Option<BatchObserver>,
    decode_budget: Arc<MemoryBudget>,
}

struct ModelSlot {
    id: String,
    dir: PathBuf,
    scorer: tokio::sync::OnceCell<Arc<Scorer>>,
}

impl Scorers {
    /// Loads the default model (and, with `preload`, every other) with these settings, their
    /// `model_dir` aside. Needs a tokio runtime.
    pub fn load(
        catalogue: &ModelCatalogue,
        settings: &ScorerSettings,
        observer: Option<BatchObserver>,
        preload: bool,
    ) -> Result<Self, InferenceError> {
        let decode_budget = Arc::new(MemoryBudget::new(settings.decode_budget_bytes));
        let load = |dir: &PathBuf| {
            let settings = ScorerSettings {
                model_dir: dir.clone(),
                ..settings.clone()
            };
            Scorer::load_sharing(&settings, observer.clone(), decode_budget.clone()).map(Arc::new)
        };
        let default_id = &catalogue.default_entry().id;
        let mut default = None;
        let mut slots = Vec::new();
        for entry in catalogue.entries() {
            let scorer = if entry.id == *default_id || preload {
                let scorer = load(&entry.dir)?;
                if entry.id == *default_id {
                    default = Some(scorer.clone());
                }
                tokio::sync::OnceCell::new_with(Some(scorer))
            } else {
                tokio::sync::OnceCell::new()
            };
            slots.push(ModelSlot {
                id: entry.id.clone(),
                dir: entry.dir.clone(),
                scorer,
            });
        }
        Ok(Self {
            slots,
            default: default.expect("the catalogue's default is one of its entries"),
            settings: settings.clone(),
            observer,
            decode_budget,
        })
    }

    /// The scorer of the model a job names, or the default's, loading it on first use;
    /// `None` for an unknown id. Callers asking while it loads wait for the same load.
    pub async fn get(&self, model_id: Option<&str>) -> Option<Result<Arc<Scorer>, InferenceError>> {
        let Some(id) = model_id else {
            return Some(Ok(self.default.clone()));
        };
        let slot = self.slots.iter().find(|s| s.id == id)?;
        let loaded = slot
            .scorer
            .get_or_try_init(|| async {
                let settings = ScorerSettings {
                    model_dir: slot.dir.clone(),
                    ..self.settings.clone()
                };
                let (observer, budget) = (self.observer.clone(), self.decode_budget.clone());
                tracing::info!(model = %slot.id, "loading a model for its first job");
                tokio::task::spawn_blocking(move || {
                    Scorer::load_sharing(&settings, observer, budget).map(Arc::new)
                })
                .await
                .map_err(|e| InferenceError::Model(format!("loading the model failed: {e}")))?
            })
            .await;
        Some(loaded.cloned())
    }

    pub fn default_scorer(&self) -> &Arc<Scorer> {
        &self.default
    }

    /// The model's scorer if this node has loaded it.
    pub fn loaded(&self, model_id: &str) -> Option<&Arc<Scorer>> {
        self.slots
            .iter()
            .find(|s| s.id == model_id)
            .and_then(|s| s.scorer.get())
    }
}
