//! tract: pure Rust, no native library. It runs fastest at batch 1 with one worker per core,
//! so a batch is run image by image.

use std::{path::Path, sync::Arc, time::Duration};

use tract_onnx::prelude::*;

use super::{BatchingDefaults, Runtime, RuntimeError};

pub struct TractRuntime {
    plan: Arc<TypedRunnableModel>,
    input_len: usize,
    workers: usize,
}

impl TractRuntime {
    pub fn load(model: &Path, input_size: u32, workers: usize) -> Result<Self, RuntimeError> {
        let size = input_size as usize;
        let plan = tract_onnx::onnx()
            .model_for_path(model)
            .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, size, size]).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| RuntimeError::Load(format!("{e:#}")))?;
        Ok(Self {
            plan,
            input_len: 3 * size * size,
            workers: workers.max(1),
        })
    }
}

impl Runtime for TractRuntime {
    fn name(&self) -> &str {
        "tract"
    }

    fn run(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, RuntimeError> {
        if input.len() != batch * self.input_len {
            return Err(RuntimeError::Run(format!(
                "{} values for a batch of {batch}",
                input.len()
            )));
        }
        let side = ((self.input_len / 3) as f64).sqrt() as usize;
        let mut logits = Vec::new();
        for image in input.chunks_exact(self.input_len) {
            let tensor = tract_ndarray::Array4::from_shape_vec((1, 3, side, side), image.to_vec())
                .map_err(|e| RuntimeError::Run(e.to_string()))?;
            let outputs = self
                .plan
                .run(tvec!(Tensor::from(tensor).into()))
                .map_err(|e| RuntimeError::Run(format!("{e:#}")))?;
            let view = outputs[0]
                .to_plain_array_view::<f32>()
                .map_err(|e| RuntimeError::Run(e.to_string()))?;
            logits.extend(view.iter().copied());
        }
        Ok(logits)
    }

    fn batching(&self) -> BatchingDefaults {
        BatchingDefaults {
            max_batch: 1,
            max_wait: Duration::ZERO,
            workers: self.workers,
        }
    }
}
