//! Model runtimes behind one small trait: ONNX Runtime (`ort`, loaded at run time, CPU,
//! CUDA or TensorRT) and `tract` (pure Rust, always compiled).

mod onnxruntime;
mod tract;

use std::{path::PathBuf, sync::Arc, time::Duration};

pub use onnxruntime::OrtRuntime;
pub use tract::TractRuntime;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("loading the ONNX Runtime library: {0}")]
    Library(String),
    #[error("loading the model: {0}")]
    Load(String),
    #[error("running the model: {0}")]
    Run(String),
}

/// Runs the model on a batch: `input` holds `batch` CHW images back to back; the result
/// holds `batch` rows of logits.
pub trait Runtime: Send + Sync + 'static {
    /// `tract`, `ort-cpu`, `ort-cuda` or `ort-tensorrt`.
    fn name(&self) -> &str;
    fn run(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, RuntimeError>;
    /// Batching that suits this runtime.
    fn batching(&self) -> BatchingDefaults;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchingDefaults {
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Batches run at the same time.
    pub workers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeChoice {
    /// ONNX Runtime when its library loads, else tract.
    Auto,
    Ort,
    Tract,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
    /// TensorRT, falling back to CUDA, then CPU, for what TensorRT cannot run.
    Tensorrt,
}

#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub choice: RuntimeChoice,
    /// `libonnxruntime.so…`; when `None`, `ORT_DYLIB_PATH`, then the loader's search path.
    pub ort_library: Option<PathBuf>,
    pub provider: ExecutionProvider,
    /// Threads for one inference (ort intra-op; tract runs one per worker).
    pub threads: usize,
    pub tensorrt_fp16: bool,
    pub tensorrt_cache_dir: Option<PathBuf>,
}

/// Loads the runtime the settings ask for; `auto` logs which one it took and why.
pub fn load(
    model: &std::path::Path,
    input_size: u32,
    settings: &RuntimeSettings,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    match settings.choice {
        RuntimeChoice::Tract => Ok(Arc::new(TractRuntime::load(
            model,
            input_size,
            settings.threads,
        )?)),
        RuntimeChoice::Ort => Ok(Arc::new(OrtRuntime::load(model, settings)?)),
        RuntimeChoice::Auto => match OrtRuntime::load(model, settings) {
            Ok(ort) => {
                tracing::info!(runtime = ort.name(), "model runtime: ONNX Runtime");
                Ok(Arc::new(ort))
            }
            Err(err) => {
                tracing::info!(reason = %err, "model runtime: tract (ONNX Runtime unavailable)");
                Ok(Arc::new(TractRuntime::load(
                    model,
                    input_size,
                    settings.threads,
                )?))
            }
        },
    }
}
