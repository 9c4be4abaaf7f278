//! ONNX Runtime through `ort`, with the library loaded at run time (`load-dynamic`): the
//! build downloads nothing. On NVIDIA GPUs the TensorRT provider (FP16, engine cache) is
//! tried first, then CUDA, then CPU.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use ort::{
    environment::Environment,
    ep,
    session::{builder::GraphOptimizationLevel, Session},
    value::TensorRef,
};

use super::{BatchingDefaults, ExecutionProvider, Runtime, RuntimeError, RuntimeSettings};

/// The library can be loaded once per process; remember how that went.
static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

fn environment(configured: Option<&Path>) -> Result<&'static Environment, RuntimeError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let path = configured
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
            .unwrap_or_else(|| {
                PathBuf::from(if cfg!(windows) {
                    "onnxruntime.dll"
                } else {
                    "libonnxruntime.so"
                })
            });
        ort::init_from(&path)
            .map_err(|e| e.to_string())
            .and_then(|builder| {
                builder
                    .with_name("platescore")
                    .build()
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| format!("{}: {e}", path.display()))
    });
    result
        .as_ref()
        .map_err(|e| RuntimeError::Library(e.clone()))
}

pub struct OrtRuntime {
    session: Mutex<Session>,
    name: &'static str,
    batching: BatchingDefaults,
}

impl OrtRuntime {
    pub fn load(model: &Path, settings: &RuntimeSettings) -> Result<Self, RuntimeError> {
        let environment = environment(settings.ort_library.as_deref())?;
        let load = |e: ort::Error| RuntimeError::Load(e.to_string());
        let mut providers = Vec::new();
        if settings.provider == ExecutionProvider::Tensorrt {
            let mut trt = ep::TensorRT::default().with_fp16(settings.tensorrt_fp16);
            if let Some(dir) = &settings.tensorrt_cache_dir {
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display());
            }
            providers.push(trt.build());
        }
        if matches!(
            settings.provider,
            ExecutionProvider::Tensorrt | ExecutionProvider::Cuda
        ) {
            providers.push(ep::CUDA::default().build());
        }
        let session = Session::builder(environment)
            .map_err(load)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load(e.into()))?
            .with_intra_threads(settings.threads.max(1))
            .map_err(|e| load(e.into()))?
            // Idle intra-op threads sleep instead of spinning: in a service the cores they
            // would burn decode images, serve HTTP and write the database.
            .with_intra_op_spinning(false)
            .map_err(|e| load(e.into()))?
            .with_execution_providers(providers)
            .map_err(|e| load(e.into()))?
            .commit_from_file(model)
            .map_err(load)?;
        let (name, batching) = match settings.provider {
            ExecutionProvider::Cpu => (
                "ort-cpu",
                BatchingDefaults {
                    max_batch: 8,
                    max_wait: Duration::from_millis(2),
                    workers: 1,
                },
            ),
            ExecutionProvider::Cuda => (
                "ort-cuda",
                BatchingDefaults {
                    max_batch: 32,
                    max_wait: Duration::from_millis(5),
                    workers: 1,
                },
            ),
            ExecutionProvider::Tensorrt => (
                "ort-tensorrt",
                BatchingDefaults {
                    max_batch: 32,
                    max_wait: Duration::from_millis(5),
                    workers: 1,
                },
            ),
        };
        Ok(Self {
            session: Mutex::new(session),
            name,
            batching,
        })
    }
}

impl Runtime for OrtRuntime {
    fn name(&self) -> &str {
        self.name
    }

    fn run(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, RuntimeError> {
        let side = ((input.len() / batch.max(1) / 3) as f64).sqrt() as usize;
        let run = |e: ort::Error| RuntimeError::Run(e.to_string());
        let tensor = TensorRef::from_array_view(([batch, 3, side, side], input)).map_err(run)?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run(ort::inputs![tensor]).map_err(run)?;
        let (_, logits) = outputs[0].try_extract_tensor::<f32>().map_err(run)?;
        Ok(logits.to_vec())
    }

    fn batching(&self) -> BatchingDefaults {
        self.batching
    }
}
