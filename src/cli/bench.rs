//! `platescore bench`: measures this machine with the shipped model. Not a test; the
//! figures go into docs/benchmarks.md.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    config::Config,
    inference::{
        self,
        preprocess::{self, DecodeLimits},
        runtime, Scorer,
    },
    startup,
};

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The `p` quantile (0 to 1) of samples sorted ascending, nearest rank.
pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Images per second of the runtime alone at each batch size, one caller, with the latency
/// of one batch.
pub fn runtime_throughput(config: &Config, batches: &[usize], seconds: f64) -> anyhow::Result<()> {
    let settings = startup::settings::scorer(config);
    let model = inference::load_model(&settings)?;
    let runtime = runtime::load(model.file(), &settings.runtime, settings.max_batch)?;
    println!(
        "runtime {} model {} threads {}",
        runtime.name(),
        model.precision.as_str(),
        settings.runtime.threads
    );
    let image = vec![0.1f32; model.input.tensor_len()];
    for &batch in batches {
        let input: Vec<f32> = image
            .iter()
            .copied()
            .cycle()
            .take(image.len() * batch)
            .collect();
        runtime.run(&input, batch)?; // warm-up
        let started = Instant::now();
        let mut calls = Vec::new();
        while started.elapsed().as_secs_f64() < seconds {
            let call = Instant::now();
            runtime.run(&input, batch)?;
            calls.push(call.elapsed().as_secs_f64() * 1000.0);
        }
        let rate = (calls.len() * batch) as f64 / started.elapsed().as_secs_f64();
        calls.sort_by(f64::total_cmp);
        println!(
            "batch {batch:>2}: {rate:>7.1} img/s, per batch p50 {:.2} ms p99 {:.2} ms",
            percentile(&calls, 0.50),
            percentile(&calls, 0.99)
        );
    }
    Ok(())
}

/// Milliseconds to decode and to resize+normalise one file, median of `iterations`.
pub fn preprocess_time(config: &Config, file: &Path, iterations: usize) -> anyhow::Result<()> {
    let model = inference::load_model(&startup::settings::scorer(config))?;
    let bytes = std::fs::read(file)?;
    let limits = DecodeLimits::default();
    let (mut decode, mut resize) = (Vec::new(), Vec::new());
    let mut dims = None;
    for _ in 0..iterations.max(1) {
        let started = Instant::now();
        let decoded = preprocess::decode(&bytes, model.input.resize_shorter, &limits)?;
        let decoded_at = Instant::now();
        preprocess::resize_crop_normalise(&decoded.rgb, &model.input)?;
        decode.push((decoded_at - started).as_secs_f64() * 1000.0);
        resize.push(decoded_at.elapsed().as_secs_f64() * 1000.0);
        dims = Some((
            decoded.original,
            decoded.rgb.dimensions(),
            decoded.dct_scale_denominator,
        ));
    }
    let ((w, h), (dw, dh), scale) = dims.unwrap_or_default();
    let (d, r) = (median(decode), median(resize));
    println!(
        "{}: {w}×{h}, decoded at 1/{scale} to {dw}×{dh}: decode {d:.2} ms + resize/crop/normalise {r:.2} ms = {:.2} ms (median of {iterations})",
        file.display(),
        d + r
    );
    Ok(())
}

/// Throughput at saturation through the batcher, against the runtime alone at the same
/// batch size, on ready tensors (preprocessing excluded).
pub async fn batcher_overhead(config: &Config, seconds: f64) -> anyhow::Result<()> {
    let settings = startup::settings::scorer(config);
    let model = Arc::new(inference::load_model(&settings)?);
    let runtime = runtime::load(model.file(), &settings.runtime, settings.max_batch)?;
    let scorer = Scorer::with_runtime(model.clone(), runtime.clone(), &settings, None);
    let batching = scorer.batcher_settings();
    let image = vec![0.1f32; model.input.tensor_len()];

    // The runtime alone, full batches back to back on `workers` threads.
    let input: Vec<f32> = image
        .iter()
        .copied()
        .cycle()
        .take(image.len() * batching.max_batch)
        .collect();
    runtime.run(&input, batching.max_batch)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let raw_images: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..batching.workers)
            .map(|_| {
                let (runtime, input) = (runtime.clone(), &input);
                scope.spawn(move || {
                    let mut n = 0;
                    while Instant::now() < deadline {
                        if runtime.run(input, batching.max_batch).is_ok() {
                            n += batching.max_batch;
                        }
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let raw = raw_images as f64 / started.elapsed().as_secs_f64();

    // Through the batcher, with enough callers to keep every batch full.
    let callers = batching.max_batch * batching.workers * 4;
    let batcher = scorer.batcher_handle();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (batcher, image) = (batcher.clone(), image.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < deadline {
                if batcher.infer(image.clone()).await.is_ok() {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut batched_images = 0;
    for task in tasks {
        batched_images += task.await?;
    }
    let batched = batched_images as f64 / started.elapsed().as_secs_f64();
    println!(
        "runtime {} max_batch {} workers {}: raw {raw:.1} img/s, through the batcher {batched:.1} img/s ({:+.1}%)",
        runtime.name(),
        batching.max_batch,
        batching.workers,
        (batched / raw - 1.0) * 100.0
    );
    Ok(())
}
