//! Dynamic batching in front of a runtime. Requests wait on a bounded queue; a batch closes
//! when it reaches `max_batch` or when its first request has waited `max_wait` (Triton's
//! `max_queue_delay`). A batch is only formed when a worker is free, so under load the queue
//! fills and batches come out full. When the queue is full, callers wait: backpressure.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::runtime::{Runtime, RuntimeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherSettings {
    pub max_batch: usize,
    pub max_wait: Duration,
    pub queue_capacity: usize,
    pub workers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the batcher has stopped")]
    Stopped,
}

struct Request {
    input: Vec<f32>,
    reply: oneshot::Sender<Result<Vec<f32>, Arc<RuntimeError>>>,
}

/// Called with the size of every batch run; for metrics and tests.
pub type BatchObserver = Arc<dyn Fn(usize) + Send + Sync>;

#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Request>,
    settings: BatcherSettings,
}

impl Batcher {
    /// Starts the batching loop on the current tokio runtime.
    pub fn start(
        runtime: Arc<dyn Runtime>,
        settings: BatcherSettings,
        observer: Option<BatchObserver>,
    ) -> Self {
        let settings = BatcherSettings {
            max_batch: settings.max_batch.max(1),
            queue_capacity: settings.queue_capacity.max(1),
            workers: settings.workers.max(1),
            ..settings
        };
        let (queue, requests) = mpsc::channel(settings.queue_capacity);
        tokio::spawn(batch_loop(runtime, settings, requests, observer));
        Self { queue, settings }
    }

    pub fn settings(&self) -> BatcherSettings {
        self.settings
    }

    /// Runs one image's tensor through the model, batched with others; returns its logits.
    pub async fn infer(&self, input: Vec<f32>) -> Result<Vec<f32>, BatchError> {
        let (reply, response) = oneshot::channel();
        self.queue
            .send(Request { input, reply })
            .await
            .map_err(|_| BatchError::Stopped)?;
        match response.await {
            Ok(Ok(logits)) => Ok(logits),
            Ok(Err(err)) => Err(BatchError::Runtime(RuntimeError::Run(err.to_string()))),
            Err(_) => Err(BatchError::Stopped),
        }
    }
}

async fn batch_loop(
    runtime: Arc<dyn Runtime>,
    settings: BatcherSettings,
    mut requests: mpsc::Receiver<Request>,
    observer: Option<BatchObserver>,
) {
    let free_workers = Arc::new(Semaphore::new(settings.workers));
    loop {
        let Ok(worker) = free_workers.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = requests.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + settings.max_wait;
        while batch.len() < settings.max_batch {
            // Take what is already queued without waiting, then wait out the deadline.
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, requests.recv()).await {
                        Ok(Some(request)) => batch.push(request),
                        _ => break,
                    }
                }
            }
        }
        if let Some(observe) = &observer {
            observe(batch.len());
        }
        let runtime = runtime.clone();
        tokio::task::spawn_blocking(move || {
            let _worker = worker;
            run_batch(runtime.as_ref(), batch);
        });
    }
}

fn fail_all(batch: Vec<Request>, err: RuntimeError) {
    let err = Arc::new(err);
    for request in batch {
        let _ = request.reply.send(Err(err.clone()));
    }
}

fn run_batch(runtime: &dyn Runtime, batch: Vec<Request>) {
    let size = batch.len();
    let per_image = batch[0].input.len();
    if let Some(bad) = batch.iter().position(|r| r.input.len() != per_image) {
        let message = format!("request {bad} has a tensor of another size");
        return fail_all(batch, RuntimeError::Run(message));
    }
    let mut input = Vec::with_capacity(size * per_image);
    for request in &batch {
        input.extend_from_slice(&request.input);
    }
    match runtime.run(&input, size) {
        Ok(logits) if logits.len() % size == 0 => {
            let classes = logits.len() / size;
            for (request, row) in batch.into_iter().zip(logits.chunks_exact(classes)) {
                let _ = request.reply.send(Ok(row.to_vec()));
            }
        }
        Ok(logits) => {
            let message = format!("{} logits for a batch of {size}", logits.len());
            fail_all(batch, RuntimeError::Run(message));
        }
        Err(err) => fail_all(batch, err),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::inference::runtime::BatchingDefaults;

    /// Answers each image with [its first value, batch size], after a pause.
    struct Echo {
        pause: Duration,
    }

    impl Runtime for Echo {
        fn name(&self) -> &str {
            "echo"
        }

        fn run(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, RuntimeError> {
            std::thread::sleep(self.pause);
            let per_image = input.len() / batch;
            Ok(input
                .chunks_exact(per_image)
                .flat_map(|image| [image[0], batch as f32])
                .collect())
        }

        fn batching(&self) -> BatchingDefaults {
            BatchingDefaults {
                max_batch: 4,
                max_wait: Duration::from_millis(5),
                workers: 1,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_makes_callers_wait_and_every_answer_finds_its_caller() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let observed = sizes.clone();
        let batcher = Batcher::start(
            Arc::new(Echo {
                pause: Duration::from_millis(10),
            }),
            BatcherSettings {
                max_batch: 4,
                max_wait: Duration::from_millis(5),
                queue_capacity: 2,
                workers: 1,
            },
            Some(Arc::new(move |n| observed.lock().unwrap().push(n))),
        );
        let calls: Vec<_> = (0..40)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (i, batcher.infer(vec![i as f32, 0.0, 0.0]).await) })
            })
            .collect();
        for call in calls {
            let (i, answer) = call.await.unwrap();
            let answer = answer.expect("a full queue waits, it does not fail");
            assert_eq!(answer[0], i as f32);
            assert!((1.0..=4.0).contains(&answer[1]));
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(sizes.iter().all(|&n| (1..=4).contains(&n)), "{sizes:?}");
        assert!(
            sizes.iter().filter(|&&n| n == 4).count() >= 5,
            "under load batches fill: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_lone_request_waits_at_most_max_wait() {
        let batcher = Batcher::start(
            Arc::new(Echo {
                pause: Duration::ZERO,
            }),
            BatcherSettings {
                max_batch: 32,
                max_wait: Duration::from_millis(20),
                queue_capacity: 8,
                workers: 1,
            },
            None,
        );
        let answer = tokio::time::timeout(Duration::from_secs(5), batcher.infer(vec![7.0]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, vec![7.0, 1.0]);
    }
}
