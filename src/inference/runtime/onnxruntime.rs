//! ONNX Runtime through `ort`, with the library loaded at run time (`load-dynamic`): the
//! bundled CPU library by default (see `library.rs`), onnxruntime-gpu's on GPU nodes.
//!
//! Providers are truthful: a GPU provider that cannot be registered is an error naming what
//! is missing, unless fallback is allowed; then the runtime's name says what really runs.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use ort::{
    environment::Environment,
    ep::{self, ExecutionProvider as _},
    session::{builder::GraphOptimizationLevel, Session},
    value::TensorRef,
};

use super::{
    gpu::{self, GpuProbe},
    BatchingDefaults, ExecutionProvider, ModelFile, OrtLibrary, Runtime, RuntimeError,
    RuntimeSettings,
};

/// The library can be loaded once per process; remember how that went, and from where.
static ENVIRONMENT: OnceLock<Result<(Environment, PathBuf), String>> = OnceLock::new();

fn environment(
    configured: Option<&Path>,
) -> Result<(&'static Environment, &'static Path), RuntimeError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let library = OrtLibrary::locate(configured);
        let environment = ort::init_from(library.path())
            .map_err(|e| e.to_string())
            .and_then(|builder| {
                builder
                    .with_name("platescore")
                    .build()
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| library.explain_failure(&e))?;
        tracing::info!(library = %library.path().display(), source = ?library, "ONNX Runtime library loaded");
        Ok((environment, library.path().to_path_buf()))
    });
    match result {
        Ok((environment, path)) => Ok((environment, path.as_path())),
        Err(e) => Err(RuntimeError::Library(e.clone())),
    }
}

/// Whether the library these settings point at loads (once per process, as every load).
pub(super) fn library_loads(settings: &RuntimeSettings) -> bool {
    environment(settings.ort_library.as_deref()).is_ok()
}

pub struct OrtRuntime {
    session: Mutex<Session>,
    provider: ExecutionProvider,
    batching: BatchingDefaults,
}

/// Batching per provider. The GPU figures are starting points, not yet measured on a GPU:
/// `deploy/gpu/check.sh` measures them (docs/benchmarks.md).
fn batching_defaults(provider: ExecutionProvider) -> BatchingDefaults {
    match provider {
        ExecutionProvider::Cpu => BatchingDefaults {
            max_batch: 8,
            max_wait: Duration::from_millis(2),
            workers: 1,
        },
        ExecutionProvider::Cuda | ExecutionProvider::Tensorrt => BatchingDefaults {
            max_batch: 32,
            max_wait: Duration::from_millis(5),
            workers: 1,
        },
    }
}

fn runtime_name(provider: ExecutionProvider) -> &'static str {
    match provider {
        ExecutionProvider::Cpu => "ort-cpu",
        ExecutionProvider::Cuda => "ort-cuda",
        ExecutionProvider::Tensorrt => "ort-tensorrt",
    }
}

impl OrtRuntime {
    /// Loads the model on the configured provider; with fallback allowed, on the next one
    /// that works (TensorRT → CUDA → CPU).
    pub fn load(
        model: ModelFile<'_>,
        settings: &RuntimeSettings,
        max_batch: Option<usize>,
    ) -> Result<Self, RuntimeError> {
        let (environment, library) = environment(settings.ort_library.as_deref())?;
        let chain: &[ExecutionProvider] = match settings.provider {
            ExecutionProvider::Cpu => &[ExecutionProvider::Cpu],
            ExecutionProvider::Cuda => &[ExecutionProvider::Cuda, ExecutionProvider::Cpu],
            ExecutionProvider::Tensorrt => &[
                ExecutionProvider::Tensorrt,
                ExecutionProvider::Cuda,
                ExecutionProvider::Cpu,
            ],
        };
        let mut refusals = Vec::new();
        for &provider in chain {
            let mut batching = batching_defaults(provider);
            batching.max_batch = max_batch.unwrap_or(batching.max_batch).max(1);
            let attempt = Attempt {
                model,
                settings,
                library,
                provider,
                max_batch: batching.max_batch,
            };
            match attempt.session(environment) {
                Ok(session) => {
                    let name = runtime_name(provider);
                    if !refusals.is_empty() {
                        tracing::warn!(
                            wanted = %settings.provider.as_str(),
                            runtime = %name,
                            "execution provider fallback (allowed by execution_provider_fallback): {}",
                            refusals.join("; ")
                        );
                    }
                    tracing::info!(runtime = %name, "ONNX Runtime session ready");
                    return Ok(Self {
                        session: Mutex::new(session),
                        provider,
                        batching,
                    });
                }
                Err(RuntimeError::Provider { provider, reason }) if settings.provider_fallback => {
                    refusals.push(format!("{provider}: {reason}"));
                }
                Err(RuntimeError::Provider { provider, reason }) => {
                    return Err(RuntimeError::Provider {
                        provider,
                        reason: format!(
                            "{reason}. To serve on the next provider instead, set \
                             PLATESCORE_EXECUTION_PROVIDER_FALLBACK=true"
                        ),
                    })
                }
                Err(other) if refusals.is_empty() => return Err(other),
                Err(other) => {
                    return Err(RuntimeError::Load(format!(
                        "{other} (after {})",
                        refusals.join("; ")
                    )))
                }
            }
        }
        // The chain ends with the CPU, which has no provider to refuse.
        Err(RuntimeError::Load(refusals.join("; ")))
    }
}

/// One try at a session on one provider.
struct Attempt<'a> {
    model: ModelFile<'a>,
    settings: &'a RuntimeSettings,
    library: &'a Path,
    provider: ExecutionProvider,
    max_batch: usize,
}

impl Attempt<'_> {
    fn session(&self, environment: &Environment) -> Result<Session, RuntimeError> {
        // Read only for GPU providers: it explains a refusal and names the TensorRT cache.
        let probe = self.provider.is_gpu().then(GpuProbe::read);
        let providers = self.providers(probe.as_ref())?;
        let load = |e: ort::Error| RuntimeError::Load(e.to_string());
        let refuse = |e: ort::Error| {
            self.refusal(
                format!("ONNX Runtime could not start it, or load the model on it: {e}"),
                probe.as_ref(),
            )
        };
        let mut builder = Session::builder(environment)
            .map_err(load)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load(e.into()))?
            .with_intra_threads(self.settings.threads.max(1))
            .map_err(|e| load(e.into()))?
            // Idle intra-op threads sleep instead of spinning: in a service the cores they
            // would burn decode images, serve HTTP and write the database.
            .with_intra_op_spinning(false)
            .map_err(|e| load(e.into()))?
            .with_execution_providers(providers)
            .map_err(|e| refuse(e.into()))?;
        builder.commit_from_file(self.model.path).map_err(|e| {
            if self.provider.is_gpu() {
                refuse(e)
            } else {
                load(e)
            }
        })
    }

    /// The provider cannot run, for `first` and for whatever the probe finds missing.
    fn refusal(&self, first: String, probe: Option<&GpuProbe>) -> RuntimeError {
        let mut reasons = vec![first];
        reasons.extend(probe.map(GpuProbe::missing).unwrap_or_default());
        RuntimeError::Provider {
            provider: self.provider.as_str(),
            reason: reasons.join("; "),
        }
    }

    /// The providers to register, each made to fail loudly. A library built without the
    /// provider is refused here, since registering would only say "not available".
    fn providers(
        &self,
        probe: Option<&GpuProbe>,
    ) -> Result<Vec<ep::ExecutionProviderDispatch>, RuntimeError> {
        let (compiled_in, what) = match self.provider {
            ExecutionProvider::Cpu => return Ok(Vec::new()),
            ExecutionProvider::Tensorrt => (ep::TensorRT::is_available(), "TensorRT"),
            ExecutionProvider::Cuda => (ep::CUDA::is_available(), "CUDA"),
        };
        if !compiled_in.unwrap_or(false) {
            return Err(self.refusal(
                format!(
                    "the ONNX Runtime library {} is built without {what} (use the \
                     onnxruntime-gpu wheel's library, with its provider libraries beside it; \
                     see deploy/gpu/)",
                    self.library.display()
                ),
                probe,
            ));
        }
        let cuda = ep::CUDA::default()
            .with_device_id(0)
            .build()
            .error_on_failure();
        if self.provider == ExecutionProvider::Cuda {
            return Ok(vec![cuda]);
        }
        let cache = self.tensorrt_cache(probe)?;
        let shape = |batch: usize| {
            let side = self.model.input_size;
            format!("{}:{batch}x3x{side}x{side}", self.model.input_name)
        };
        let mut tensorrt = ep::TensorRT::default()
            .with_device_id(0)
            .with_fp16(self.settings.tensorrt_fp16)
            // One optimisation profile for every batch the batcher forms.
            .with_profile_min_shapes(shape(1))
            .with_profile_opt_shapes(shape(self.max_batch))
            .with_profile_max_shapes(shape(self.max_batch));
        if let Some(dir) = cache {
            let dir = dir.display();
            tensorrt = tensorrt
                .with_engine_cache(true)
                .with_engine_cache_path(&dir)
                .with_timing_cache(true)
                .with_timing_cache_path(&dir);
        }
        // CUDA runs whatever TensorRT cannot.
        Ok(vec![tensorrt.build().error_on_failure(), cuda])
    }

    /// The engine and timing cache folder for this model, GPU, TensorRT and ONNX Runtime
    /// versions, profile and precision: an engine built for one of them never loads for
    /// another.
    fn tensorrt_cache(&self, probe: Option<&GpuProbe>) -> Result<Option<PathBuf>, RuntimeError> {
        let Some(root) = &self.settings.tensorrt_cache_dir else {
            return Ok(None);
        };
        let tensorrt =
            gpu::tensorrt_version(&gpu::library_dirs(self.library)).unwrap_or_else(|| {
                tracing::warn!(
                "TensorRT's version is unknown (no libnvinfer.so.* on LD_LIBRARY_PATH or beside \
                 ONNX Runtime): after a TensorRT upgrade, empty the engine cache by hand"
            );
                "unknown".into()
            });
        let key = format!(
            "{}-{}-trt{}-ort{}-b{}-{}",
            &self.model.sha256[..self.model.sha256.len().min(16)],
            gpu::slug(
                probe
                    .and_then(|p| p.model.as_deref())
                    .unwrap_or("unknown-gpu")
            ),
            tensorrt,
            onnxruntime_build(),
            self.max_batch,
            if self.settings.tensorrt_fp16 {
                "fp16"
            } else {
                "fp32"
            },
        );
        let dir = root.join(key);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::Load(format!("TensorRT cache {}: {e}", dir.display())))?;
        tracing::info!(cache = %dir.display(), "TensorRT engine cache");
        Ok(Some(dir))
    }
}

/// The loaded ONNX Runtime's release and commit, from its build info
/// (`git-branch=rel-1.31.1, git-commit-id=…`): `1.31.1-0a1b2c3`.
fn onnxruntime_build() -> String {
    let info = ort::info();
    let field = |name: &str| {
        info.split([',', ' '])
            .find_map(|part| part.trim().strip_prefix(name))
            .map(str::to_string)
    };
    let release = field("git-branch=").map(|b| b.trim_start_matches("rel-").to_string());
    let commit = field("git-commit-id=");
    match (release, commit) {
        (Some(release), Some(commit)) => gpu::slug(&format!("{release}-{commit}")),
        (Some(one), None) | (None, Some(one)) => gpu::slug(&one),
        (None, None) => "unknown".into(),
    }
}

impl Runtime for OrtRuntime {
    fn name(&self) -> &str {
        runtime_name(self.provider)
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

    /// cuDNN and TensorRT pick kernels per input shape on first use: on a GPU, every batch
    /// size is run once.
    fn warm_up_sizes(&self, max_batch: usize) -> Vec<usize> {
        if self.provider.is_gpu() {
            (1..=max_batch.max(1)).collect()
        } else {
            vec![1, max_batch.max(1)]
        }
    }
}
