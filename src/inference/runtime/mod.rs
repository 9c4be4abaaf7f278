//! Model runtimes behind one small trait: ONNX Runtime (`ort`, loaded at run time, CPU,
//! CUDA or TensorRT) and `tract` (pure Rust, always compiled).

mod gpu;
mod library;
mod onnxruntime;
mod tract;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

/// Which runtime and provider to load: values of the configuration, defined there.
pub use crate::config::{ExecutionProvider, ModelPrecision, RuntimeChoice};
pub use library::{bundled_library, OrtLibrary};
pub use onnxruntime::OrtRuntime;
pub use tract::TractRuntime;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("loading the ONNX Runtime library: {0}")]
    Library(String),
    /// A GPU execution provider was asked for and cannot run; the text names what is missing.
    #[error("execution provider `{provider}` cannot be used: {reason}")]
    Provider {
        provider: &'static str,
        reason: String,
    },
    #[error("loading the model: {0}")]
    Load(String),
    #[error("running the model: {0}")]
    Run(String),
}

/// Runs the model on a batch: `input` holds `batch` CHW images back to back; the result
/// holds `batch` rows of logits.
pub trait Runtime: Send + Sync + 'static {
    /// `tract`, `ort-cpu`, `ort-cuda` or `ort-tensorrt`: what really runs.
    fn name(&self) -> &str;
    fn run(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, RuntimeError>;
    /// Batching that suits this runtime.
    fn batching(&self) -> BatchingDefaults;
    /// The batch sizes to run once before serving: by default the smallest and the largest.
    fn warm_up_sizes(&self, max_batch: usize) -> Vec<usize> {
        vec![1, max_batch.max(1)]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchingDefaults {
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Batches run at the same time.
    pub workers: usize,
}

#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub choice: RuntimeChoice,
    /// `libonnxruntime.so…`; when `None`, `ORT_DYLIB_PATH`, then the bundled library.
    pub ort_library: Option<PathBuf>,
    pub provider: ExecutionProvider,
    /// When the GPU provider cannot run, serve on the next one (TensorRT → CUDA → CPU, and
    /// tract with `auto` when ONNX Runtime itself is missing) instead of failing.
    pub provider_fallback: bool,
    /// Threads for one inference (ort intra-op; tract runs one per worker).
    pub threads: usize,
    pub tensorrt_fp16: bool,
    /// Engine and timing caches live in a subfolder per model, GPU and TensorRT version.
    pub tensorrt_cache_dir: Option<PathBuf>,
}

/// What a runtime needs to know of the model file.
#[derive(Debug, Clone, Copy)]
pub struct ModelFile<'a> {
    pub path: &'a Path,
    pub sha256: &'a str,
    pub input_name: &'a str,
    /// Side of the square input, in pixels.
    pub input_size: u32,
}

/// Whether these settings run ONNX Runtime on the CPU: asked for, and its library loads.
pub fn runs_on_ort_cpu(settings: &RuntimeSettings) -> bool {
    settings.choice != RuntimeChoice::Tract
        && settings.provider == ExecutionProvider::Cpu
        && onnxruntime::library_loads(settings)
}

/// Loads the runtime the settings ask for. `max_batch` overrides the runtime's default
/// largest batch (TensorRT builds its optimisation profile for 1..=max_batch).
pub fn load(
    model: ModelFile<'_>,
    settings: &RuntimeSettings,
    max_batch: Option<usize>,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    let tract = || -> Result<Arc<dyn Runtime>, RuntimeError> {
        Ok(Arc::new(TractRuntime::load(
            model.path,
            model.input_size,
            settings.threads,
        )?))
    };
    if settings.choice == RuntimeChoice::Tract {
        return tract();
    }
    match OrtRuntime::load(model, settings, max_batch) {
        Ok(ort) => Ok(Arc::new(ort)),
        // A GPU provider never turns silently into tract.
        Err(RuntimeError::Library(reason))
            if settings.provider.is_gpu() && !settings.provider_fallback =>
        {
            Err(RuntimeError::Provider {
                provider: settings.provider.as_str(),
                reason: format!(
                    "it needs the ONNX Runtime library, which did not load: {reason}. To serve \
                     on tract instead, set PLATESCORE_EXECUTION_PROVIDER_FALLBACK=true"
                ),
            })
        }
        Err(RuntimeError::Library(reason)) if settings.choice == RuntimeChoice::Auto => {
            tracing::warn!(
                "ONNX Runtime unavailable, serving with tract (inference about 5× slower): {reason}"
            );
            tract()
        }
        Err(err) => Err(err),
    }
}

/// Runs the batch sizes the runtime asks for once, so that lazy work (TensorRT builds its
/// engine on the first run, cuDNN picks kernels per shape) is done before the node serves.
pub fn warm_up(
    runtime: &dyn Runtime,
    input_len: usize,
    max_batch: usize,
) -> Result<(), RuntimeError> {
    let started = Instant::now();
    let mut sizes = runtime.warm_up_sizes(max_batch);
    sizes.dedup();
    for &batch in &sizes {
        runtime.run(&vec![0.0; input_len * batch], batch)?;
    }
    tracing::info!(
        runtime = %runtime.name(),
        batches = ?sizes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "model warmed up"
    );
    Ok(())
}
