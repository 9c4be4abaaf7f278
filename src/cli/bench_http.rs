//! `platescore bench pipeline --http`: the same photos as the in-process pipeline, sent over
//! HTTP to a separate `platescore serve` (this executable, its defaults, a fresh data folder)
//! the way a partner sends them: distinct uploads, closed loop, webhooks back to a receiver
//! here. Prints the over-the-wire throughput beside the in-process capacity. Not a test.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use uuid::Uuid;

use super::bench_lifecycle::{
    enqueue_with_webhook, photos, salted, scoring_alone, start_receiver, Arrivals,
};
use crate::config::Config;

/// A `platescore serve` child on a free loopback port and a scratch data folder.
struct Server {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Server {
    async fn start() -> anyhow::Result<(Self, String)> {
        let exe = std::env::current_exe()?;
        let dir = std::env::temp_dir().join(format!("platescore-bench-http-{}", Uuid::new_v4()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let command = |args: &[&str]| {
            let mut command = Command::new(&exe);
            command
                .args(args)
                .env("PLATESCORE_DATA_DIR", &dir)
                .env("PLATESCORE_LISTEN", format!("127.0.0.1:{port}"))
                .env("PLATESCORE_OUTBOUND_ALLOW_CIDRS", "127.0.0.0/8")
                .env("RUST_LOG", "warn")
                .env_remove("DATABASE_URL")
                .env_remove("PLATESCORE_OBJECT_STORE");
            command
        };
        let created = command(&["partners", "create", "bench"])
            .stderr(Stdio::null())
            .output()?;
        anyhow::ensure!(created.status.success(), "partners create failed");
        let key = String::from_utf8(created.stdout)?.trim().to_string();
        let child = command(&["serve"]).stderr(Stdio::null()).spawn()?;
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = client
                .get(format!("{}/health/ready", server.base))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok((server, key));
            }
            anyhow::ensure!(Instant::now() < deadline, "the server never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resident and peak memory of the server, in MB.
    fn memory_mb(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map(|kb| kb / 1024)
                .with_context(|| format!("no {name} in /proc/<pid>/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends job `i`: photo `i` (mod the photos), salted so no two uploads share bytes.
struct Sender {
    client: reqwest::Client,
    base: String,
    key: String,
    hook: String,
    photos: Vec<Bytes>,
}

impl Sender {
    async fn send(&self, i: usize) -> anyhow::Result<String> {
        let body = salted(&self.photos[i % self.photos.len()], i);
        enqueue_with_webhook(&self.client, &self.base, &self.key, body, Some(&self.hook)).await
    }
}

/// In-process capacity, then `jobs` distinct uploads over HTTP, `concurrency` at a time.
pub async fn pipeline(
    config: &Config,
    images: &[PathBuf],
    jobs: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let photos = photos(images)?;
    let alone = scoring_alone(config, &photos, jobs).await?;

    let (server, key) = Server::start().await?;
    let arrivals = Arc::new(Arrivals::default());
    let sender = Arc::new(Sender {
        client: reqwest::Client::new(),
        base: server.base.clone(),
        key,
        hook: format!("http://{}/hook", start_receiver(arrivals.clone()).await?),
        photos,
    });
    // Warm-up: one batch's worth, delivered before the clock starts.
    let warm_up = concurrency.max(1);
    for i in 0..warm_up {
        sender.send(jobs + i).await?;
    }
    arrivals.wait_for(warm_up, Duration::from_secs(120)).await?;

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (next, sender) = (next.clone(), sender.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs {
                        return anyhow::Ok(());
                    }
                    sender.send(i).await?;
                }
            })
        })
        .collect();
    for client in clients {
        client.await??;
    }
    let enqueued = started.elapsed().as_secs_f64();
    arrivals
        .wait_for(warm_up + jobs, Duration::from_secs(3600))
        .await?;
    let elapsed = arrivals
        .last()
        .map_or(started.elapsed(), |last| last - started)
        .as_secs_f64();
    let completed = jobs as f64 / elapsed;
    let (rss, peak) = server.memory_mb()?;
    println!(
        "over HTTP to `platescore serve` (c={concurrency}, {jobs} distinct uploads, enqueue → webhook): \
         {completed:.1} jobs/s = {:.2} × preprocess + inference alone; enqueues took {enqueued:.1} s; \
         server RSS after {rss} MB, peak {peak} MB",
        completed / alone
    );
    Ok(())
}
