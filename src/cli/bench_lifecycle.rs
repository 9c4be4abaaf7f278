//! `platescore bench pipeline` and `bench delivery`: the whole lifecycle on this machine,
//! in-process, with a webhook receiver on loopback. Not tests; the figures go into
//! docs/benchmarks.md.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use poem::{
    handler,
    listener::{Acceptor, Listener, TcpListener},
    post,
    web::{Data, Json},
    EndpointExt, Route, Server,
};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::bench::percentile;
use crate::{
    api,
    config::Config,
    inference::Scorer,
    startup::{self, Application, Role},
    store::{
        endpoints,
        jobs::{self, InsertOutcome, NewJob, NewJobImage},
        partners,
        queue::{self, Outcome},
        Db,
    },
};

/// Webhook arrivals by job id, as the receiver saw them.
#[derive(Default)]
pub(super) struct Arrivals {
    at: Mutex<HashMap<String, Instant>>,
    count: Mutex<usize>,
    changed: Notify,
}

impl Arrivals {
    /// When the latest first delivery of a job arrived.
    pub(super) fn last(&self) -> Option<Instant> {
        self.at.lock().unwrap().values().max().copied()
    }

    pub(super) async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if *self.count.lock().unwrap() >= n {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            anyhow::anyhow!(
                "only {} of {n} webhooks arrived",
                *self.count.lock().unwrap()
            )
        })
    }
}

#[handler]
async fn receive(arrivals: Data<&Arc<Arrivals>>, body: Json<serde_json::Value>) -> &'static str {
    let now = Instant::now();
    if let Some(id) = body["job_id"].as_str() {
        arrivals
            .at
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert(now);
    }
    *arrivals.count.lock().unwrap() += 1;
    arrivals.changed.notify_waiters();
    "ok"
}

pub(super) async fn start_receiver(arrivals: Arc<Arrivals>) -> anyhow::Result<SocketAddr> {
    let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await?;
    let addr = *acceptor.local_addr()[0]
        .as_socket_addr()
        .ok_or_else(|| anyhow::anyhow!("no address"))?;
    tokio::spawn(
        Server::new_with_acceptor(acceptor)
            .run(Route::new().at("/hook", post(receive)).data(arrivals)),
    );
    Ok(addr)
}

/// A node with workers on a fresh data folder (the configured database if one was given),
/// a partner, and an endpoint pointing at a new receiver.
struct Bench {
    base: String,
    key: String,
    db: Db,
    arrivals: Arc<Arrivals>,
    partner_id: Uuid,
    shutdown: CancellationToken,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    app: Option<Application>,
    /// A scratch data folder, removed by [`Bench::stop`].
    dir: PathBuf,
}

impl Bench {
    async fn start(config: &Config) -> anyhow::Result<Self> {
        let mut bench = Self::build(config).await?;
        bench.run();
        Ok(bench)
    }

    /// Everything but the node's workers and listener, which [`Bench::run`] starts.
    async fn build(config: &Config) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("platescore-bench-{}", Uuid::new_v4()));
        let mut config = config.clone();
        config.data_dir = dir.clone();
        config.listen = "127.0.0.1:0".into();
        config.outbound_allow_cidrs = "127.0.0.0/8".into();
        config.object_store = None;
        let app = Application::build(&config, Role::All).await?;
        let db = app.db().clone();
        let (partner, key) = partners::create(&db, "bench", false).await?;
        let arrivals = Arc::new(Arrivals::default());
        let receiver = start_receiver(arrivals.clone()).await?;
        endpoints::create(
            &db,
            partner.id,
            format!("http://{receiver}/hook"),
            None,
            crate::delivery::signing::WebhookSecret::generate().expose(),
            1,
        )
        .await?
        .created()
        .context("the bench partner has an endpoint already")?;
        Ok(Self {
            base: format!("http://{}", app.addr()),
            key: key.expose().to_string(),
            db,
            arrivals,
            partner_id: partner.id,
            shutdown: CancellationToken::new(),
            running: None,
            app: Some(app),
            dir,
        })
    }

    fn run(&mut self) {
        if let Some(app) = self.app.take() {
            self.running = Some(tokio::spawn(app.run_until(self.shutdown.clone())));
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(running) = self.running {
            running.await??;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// The files named, and the JPEGs in the folders named and their subfolders.
pub(super) fn photos(paths: &[PathBuf]) -> anyhow::Result<Vec<Bytes>> {
    let mut found = Vec::new();
    let mut folders = Vec::new();
    for path in paths {
        if path.is_dir() {
            folders.push(path.clone());
        } else {
            found.push(Bytes::from(std::fs::read(path)?));
        }
    }
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder)? {
            let p = entry?.path();
            if p.is_dir() {
                folders.push(p);
            } else if p
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
            {
                found.push(Bytes::from(std::fs::read(p)?));
            }
        }
    }
    anyhow::ensure!(!found.is_empty(), "no .jpg photos found");
    Ok(found)
}

/// Distinct bytes per job (a JPEG ignores what follows its end marker), so no job reuses
/// another's result.
pub(super) fn salted(photo: &Bytes, i: usize) -> Bytes {
    let mut bytes = photo.to_vec();
    bytes.extend_from_slice(format!("bench {i} {}", Uuid::new_v4()).as_bytes());
    Bytes::from(bytes)
}

const BOUNDARY: &str = "platescore-bench-boundary";

/// A `multipart/form-data` body with an `image` part and, when given, a `webhook_url`.
fn upload_body(image: &[u8], webhook_url: Option<&str>) -> Vec<u8> {
    let mut body = Vec::with_capacity(image.len() + 512);
    if let Some(url) = webhook_url {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"webhook_url\"\r\n\r\n{url}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"meal.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(image);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn enqueue(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    image: Bytes,
) -> anyhow::Result<String> {
    enqueue_with_webhook(client, base, key, image, None).await
}

/// Uploads `image` as a new job; returns its id.
pub(super) async fn enqueue_with_webhook(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    image: Bytes,
    webhook_url: Option<&str>,
) -> anyhow::Result<String> {
    let response = client
        .post(format!("{base}/enqueue"))
        .bearer_auth(key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(upload_body(&image, webhook_url))
        .send()
        .await?;
    anyhow::ensure!(response.status() == 202, "enqueue: {}", response.status());
    let job: serde_json::Value = response.json().await?;
    Ok(job["job_id"].as_str().unwrap_or_default().to_string())
}

/// Preprocessing + inference alone, in this process: the scorer with as many callers as
/// the node's workers use, over `jobs` photos. Prints and returns images per second.
pub(super) async fn scoring_alone(
    config: &Config,
    photos: &[Bytes],
    jobs: usize,
) -> anyhow::Result<f64> {
    let scorer = Arc::new(Scorer::load(&startup::settings::scorer(config), None)?);
    let concurrency = startup::settings::worker(config, &scorer).concurrency;
    scorer.score(photos[0].clone(), &[], "en").await?; // warm-up
    let slots = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..jobs {
        let permit = slots.clone().acquire_owned().await?;
        let (scorer, bytes) = (scorer.clone(), photos[i % photos.len()].clone());
        tasks.push(tokio::spawn(async move {
            let scored = scorer.score(bytes, &[], "en").await;
            drop(permit);
            scored.is_ok()
        }));
    }
    for task in tasks {
        anyhow::ensure!(task.await?, "scoring failed");
    }
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    println!(
        "preprocess + inference alone ({} {}, {concurrency} in flight): {rate:.1} img/s",
        scorer.runtime_name(),
        scorer.model().precision.as_str()
    );
    Ok(rate)
}

/// End to end against preprocessing plus inference alone, then latency at half load.
pub async fn pipeline(config: &Config, images: &[PathBuf], jobs: usize) -> anyhow::Result<()> {
    let photos = photos(images)?;

    let raw_rate = scoring_alone(config, &photos, jobs).await?;

    // 2. Saturation: enqueue every job at once; time until the last webhook.
    let bench = Bench::start(config).await?;
    let client = reqwest::Client::new();
    enqueue(
        &client,
        &bench.base,
        &bench.key,
        salted(&photos[0], usize::MAX),
    )
    .await?;
    bench.arrivals.wait_for(1, Duration::from_secs(60)).await?;
    let bodies: Vec<Bytes> = (0..jobs)
        .map(|i| salted(&photos[i % photos.len()], i))
        .collect();
    let started = Instant::now();
    let uploads = Arc::new(Semaphore::new(8));
    let mut tasks = Vec::new();
    for body in bodies {
        let permit = uploads.clone().acquire_owned().await?;
        let (client, base, key) = (client.clone(), bench.base.clone(), bench.key.clone());
        tasks.push(tokio::spawn(async move {
            let ok = enqueue(&client, &base, &key, body).await.is_ok();
            drop(permit);
            ok
        }));
    }
    for task in tasks {
        anyhow::ensure!(task.await?, "an enqueue failed");
    }
    bench
        .arrivals
        .wait_for(jobs + 1, Duration::from_secs(3600))
        .await?;
    let saturated = jobs as f64 / started.elapsed().as_secs_f64();
    println!(
        "end to end at saturation ({jobs} jobs, enqueue → webhook): {saturated:.1} jobs/s = {:.2} × preprocess + inference alone",
        saturated / raw_rate
    );

    // 3. Half of that, open loop: a job every 1/rate seconds, latency to its webhook.
    let rate = saturated / 2.0;
    let half_jobs = jobs.max(20);
    let mut sent: Vec<(Instant, tokio::task::JoinHandle<anyhow::Result<String>>)> = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let bench = Arc::new(bench);
    let already = *bench.arrivals.count.lock().unwrap();
    for i in 0..half_jobs {
        ticker.tick().await;
        let body = salted(&photos[i % photos.len()], jobs + i);
        let (client, base, key) = (client.clone(), bench.base.clone(), bench.key.clone());
        let at = Instant::now();
        sent.push((
            at,
            tokio::spawn(async move { enqueue(&client, &base, &key, body).await }),
        ));
    }
    let mut started_at = HashMap::new();
    for (at, task) in sent {
        started_at.insert(task.await??, at);
    }
    bench
        .arrivals
        .wait_for(already + half_jobs, Duration::from_secs(600))
        .await?;
    let mut latencies: Vec<f64> = {
        let arrived = bench.arrivals.at.lock().unwrap();
        started_at
            .iter()
            .filter_map(|(id, at)| arrived.get(id).map(|t| (*t - *at).as_secs_f64() * 1000.0))
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    println!(
        "at half load ({rate:.1} jobs/s, {half_jobs} jobs): enqueue → webhook p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99)
    );
    let bench = Arc::try_unwrap(bench).map_err(|_| anyhow::anyhow!("bench still shared"))?;
    bench.stop().await
}

/// Webhook delivery alone: the outbox rows of `count` finished jobs are written first, then
/// the node starts and its delivery workers drain them to a loopback receiver.
pub async fn delivery(config: &Config, count: usize) -> anyhow::Result<()> {
    let mut bench = Bench::build(config).await?;
    let render = api::webhook_payload_renderer();
    let lease = Duration::from_secs(3600);
    let mut seeded = 0;
    while seeded < count {
        for i in seeded..count.min(seeded + 500) {
            let created = jobs::insert(
                &bench.db,
                NewJob {
                    id: uuid::Uuid::now_v7(),
                    partner_id: bench.partner_id,
                    image: NewJobImage::Url(format!("https://example.com/{i}.jpg")),
                    webhook_url: None,
                    metadata: None,
                    model_id: None,
                    diets: None,
                    lang: None,
                    idempotency_key: None,
                    client_reference: None,
                    request_fingerprint: format!("{i:064}"),
                },
            )
            .await?;
            anyhow::ensure!(matches!(created, InsertOutcome::Created(_)));
        }
        for lease in queue::claim(&bench.db, chrono::Utc::now(), 500, lease).await? {
            let failed = Outcome::Failed {
                code: "bench".into(),
                message: "seeded for the delivery benchmark".into(),
                processing_time_ms: 0,
            };
            queue::finish(&bench.db, &lease, chrono::Utc::now(), failed, &render).await?;
            seeded += 1;
        }
    }
    let started = Instant::now();
    bench.run();
    bench
        .arrivals
        .wait_for(count, Duration::from_secs(3600))
        .await?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "webhook delivery alone: {count} deliveries in {elapsed:.2} s = {:.0} deliveries/s",
        count as f64 / elapsed
    );
    bench.stop().await
}
