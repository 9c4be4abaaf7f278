//! Failure drills: the real server loses a dependency under load, and the drill counts what
//! it promised once the dependency is back. What each one proves, and how to run them:
//! docs/drills.md.
//!
//! - `postgres_restarted_mid_load` restarts the PostgreSQL of `.ci/with-postgres` (through
//!   `PLATESCORE_TEST_PG_CTL`); without PostgreSQL it is skipped, with a message.
//! - `a_full_disk` starts the `platescore` binary on a small tmpfs of its own, mounted with
//!   `unshare`; where that is not allowed it is skipped, loudly, and with
//!   `PLATESCORE_DRILLS_REQUIRED=1` (as in CI) it fails instead.
//! - The others run in this process on SQLite, whatever `PLATESCORE_TEST_DATABASE_URL` says
//!   (a restart drill may be running on that PostgreSQL).

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "api/receiver.rs"]
#[allow(dead_code)]
mod receiver;

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    future::Future,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use entity::job;
use helpers::{assert_problem, fixture, PostgresDatabase, S3_ACCESS_KEY, S3_BUCKET, S3_SECRET_KEY};
use platescore::{
    config::Config,
    inference::RuntimeChoice,
    startup::{Application, Role},
    store::{partners, Db},
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use receiver::{image_host, Receiver, Reply};
use reqwest::multipart::{Form, Part};
use sea_orm::EntityTrait;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------
// The harness: nodes in this process, a stoppable S3 server, polling with a deadline.

/// Settings every drill starts from: loopback reachable (receivers and image hosts live
/// there), quick polls, the model runtime this build has.
fn drill_config(data_dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_path_buf(),
        outbound_allow_cidrs: "127.0.0.0/8".into(),
        runtime: RuntimeChoice::Auto,
        poll_interval_ms: 100,
        webhook_retry_jitter: 0.0,
        webhook_timeout_ms: 2_000,
        shutdown_drain_ms: 0,
        ..Config::default()
    }
}

/// One node, as `platescore serve --role …` runs it, in this process.
struct Node {
    addr: SocketAddr,
    db: Db,
    shutdown: CancellationToken,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Node {
    async fn start(config: &Config, role: Role) -> Self {
        let app = Application::build(config, role).await.expect("node builds");
        let shutdown = CancellationToken::new();
        Self {
            addr: app.addr(),
            db: app.db().clone(),
            running: Some(tokio::spawn(app.run_until(shutdown.clone()))),
            shutdown,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A partner's key, made directly in the database.
    async fn new_partner(&self) -> String {
        let (_, key) = partners::create(&self.db, "drill partner", false)
            .await
            .unwrap();
        key.expose().to_string()
    }

    /// Stops it as SIGTERM would; it must stop cleanly.
    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.await.unwrap().expect("the node stops cleanly");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `check` every 100 ms until it gives a value; fails after `limit`, saying `what`.
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /health/ready`: its status and body (a probe gives up after 3 s; this after 5 s).
async fn readiness(client: &reqwest::Client, base: &str) -> Option<(u16, Value)> {
    let response = client
        .get(format!("{base}/health/ready"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

/// Waits until readiness answers `status`; returns its body.
async fn wait_for_readiness(client: &reqwest::Client, base: &str, status: u16) -> Value {
    eventually(
        &format!("{base}/health/ready answering {status}"),
        Duration::from_secs(60),
        || async move {
            readiness(client, base)
                .await
                .filter(|(s, _)| *s == status)
                .map(|(_, body)| body)
        },
    )
    .await
}

/// A photo of its own (distinct bytes, so distinct jobs store distinct objects).
fn photo(n: usize) -> Vec<u8> {
    let mut bytes = fixture("apple.jpg");
    bytes.extend_from_slice(format!("drill photo {n}").as_bytes());
    bytes
}

fn photo_form(bytes: Vec<u8>) -> Form {
    Form::new().part("image", Part::bytes(bytes).file_name("meal.jpg"))
}

fn upload_form(bytes: Vec<u8>, webhook_url: &str) -> Form {
    photo_form(bytes).text("webhook_url", webhook_url.to_string())
}

async fn enqueue(client: &reqwest::Client, base: &str, key: &str, form: Form) -> reqwest::Response {
    client
        .post(format!("{base}/enqueue"))
        .bearer_auth(key)
        .multipart(form)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("the API answers")
}

async fn accepted_job_id(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    let job: Value = response.json().await.unwrap();
    job["job_id"].as_str().unwrap().to_string()
}

fn retry_after(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string())
}

async fn jobs_in(db: &Db) -> Vec<job::Model> {
    job::Entity::find().all(db.reader()).await.unwrap()
}

/// Object keys under `root` (dot files are the stores' own: staging files, S3 metadata).
fn object_keys(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let key = path.strip_prefix(root).unwrap().to_string_lossy();
                out.insert(key.into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// Files anywhere under `root` whose name starts with one of `prefixes`: partial writes.
fn leftovers(root: &Path, prefixes: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                dirs.push(path);
            } else if prefixes.iter().any(|p| name.starts_with(p)) {
                found.push(path);
            }
        }
    }
    found
}

/// Nothing half-written: every job's stored photo is in the store, and every object in the
/// store is a job's photo.
async fn assert_rows_match_objects(db: &Db, objects_root: &Path) -> usize {
    let rows: BTreeSet<String> = jobs_in(db)
        .await
        .into_iter()
        .filter_map(|job| job.image_key)
        .collect();
    let objects = object_keys(objects_root);
    let rows_without_object: Vec<_> = rows.difference(&objects).collect();
    let objects_without_row: Vec<_> = objects.difference(&rows).collect();
    assert!(
        rows_without_object.is_empty() && objects_without_row.is_empty(),
        "half-written: jobs without their object {rows_without_object:?}, objects without a job {objects_without_row:?}"
    );
    rows.len()
}

/// The in-process S3 server of tests/api/helpers.rs (s3s over a folder), which can be
/// stopped, connections and all, and started again on the same port over the same folder.
struct S3Server {
    root: PathBuf,
    addr: SocketAddr,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl S3Server {
    async fn start(root: PathBuf) -> Self {
        std::fs::create_dir_all(root.join(S3_BUCKET)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = Some(Self::serve(listener, &root));
        Self {
            root,
            addr,
            serving,
        }
    }

    fn serve(listener: tokio::net::TcpListener, root: &Path) -> tokio::task::JoinHandle<()> {
        use s3s::{auth::SimpleAuth, service::S3ServiceBuilder};
        let mut builder = S3ServiceBuilder::new(s3s_fs::FileSystem::new(root).unwrap());
        builder.set_auth(SimpleAuth::from_single(S3_ACCESS_KEY, S3_SECRET_KEY));
        let service = builder.build();
        tokio::spawn(async move {
            let http =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            // Connections live in this task: aborting it closes them all.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                let connection = http
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                    .into_owned();
                connections.spawn(async move {
                    let _ = connection.await;
                });
            }
        })
    }

    /// Closes the listener and every connection: clients get "connection refused".
    async fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
            let _ = serving.await;
        }
    }

    async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("the S3 port is free again");
        self.serving = Some(Self::serve(listener, &self.root));
    }

    fn configure(&self, config: &mut Config) {
        config.object_store = Some(format!("s3://{S3_BUCKET}/platescore"));
        config.s3_endpoint_url = Some(format!("http://{}", self.addr));
        config.s3_force_path_style = true;
        config.s3_access_key_id = Some(S3_ACCESS_KEY.into());
        config.s3_secret_access_key = Some(S3_SECRET_KEY.into());
    }

    fn objects_root(&self) -> PathBuf {
        self.root.join(S3_BUCKET).join("platescore")
    }
}

/// Whether drills may be skipped here; CI sets `PLATESCORE_DRILLS_REQUIRED=1`.
fn drills_required() -> bool {
    std::env::var("PLATESCORE_DRILLS_REQUIRED").is_ok_and(|v| v == "1")
}

/// Says that a drill did not run, on the terminal: past the test harness's capture, which
/// would hide it for a test that passes.
fn skip_loudly(drill: &str, why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! DRILL SKIPPED: {drill}: {why}\n"
    );
}

// ---------------------------------------------------------------------------------------
// 1. PostgreSQL restarted mid-load.

/// What the load saw: the jobs accepted, and every other answer.
#[derive(Default)]
struct Answers {
    accepted: Vec<String>,
    refused: Vec<Refusal>,
}

#[derive(Debug)]
struct Refusal {
    status: u16,
    content_type: String,
    code: String,
    retry_after: Option<String>,
}

/// Clients enqueuing photos back to back until stopped.
struct Load {
    answers: Arc<Mutex<Answers>>,
    stop: CancellationToken,
    running: tokio::task::JoinSet<()>,
}

impl Load {
    fn start(clients: usize, base: String, key: String, webhook_url: String) -> Self {
        let answers = Arc::new(Mutex::new(Answers::default()));
        let stop = CancellationToken::new();
        let mut running = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (answers, stop) = (answers.clone(), stop.clone());
            let (base, key, webhook_url) = (base.clone(), key.clone(), webhook_url.clone());
            running.spawn(async move {
                let client = reqwest::Client::new();
                while !stop.is_cancelled() {
                    // The same photo each time: its result is reused, so the worker keeps up.
                    let form = upload_form(fixture("apple.jpg"), &webhook_url);
                    let response = enqueue(&client, &base, &key, form).await;
                    let status = response.status().as_u16();
                    if status == 202 {
                        let id = accepted_job_id(response).await;
                        answers.lock().unwrap().accepted.push(id);
                    } else {
                        let retry_after = retry_after(&response);
                        let content_type = response
                            .headers()
                            .get("content-type")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let body: Value = response.json().await.unwrap_or_default();
                        answers.lock().unwrap().refused.push(Refusal {
                            status,
                            content_type,
                            code: body["code"].as_str().unwrap_or_default().to_string(),
                            retry_after,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        Self {
            answers,
            stop,
            running,
        }
    }

    fn counts(&self) -> (usize, usize) {
        let answers = self.answers.lock().unwrap();
        (answers.accepted.len(), answers.refused.len())
    }

    async fn stop(self) -> Answers {
        self.stop.cancel();
        self.running.join_all().await;
        Arc::try_unwrap(self.answers)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

/// Runs `.ci/with-postgres`'s control script: `stop` (fast: clients are cut off) or `start`.
async fn postgres(ctl: &str, action: &'static str) {
    let ctl = ctl.to_string();
    let status = tokio::task::spawn_blocking(move || Command::new(ctl).arg(action).status())
        .await
        .unwrap()
        .expect("the PostgreSQL control script runs");
    assert!(status.success(), "PostgreSQL {action}: {status}");
}

/// An API node and a worker node on one PostgreSQL database, under a steady enqueue load;
/// PostgreSQL is stopped (fast shutdown: every connection cut) and started again. Both
/// nodes' readiness reports the outage, enqueues during it are refused with `503
/// database_unavailable` (never a 500), both nodes reconnect without a restart, and every
/// job that was accepted is scored and its webhook delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_mid_load() {
    let Some(admin_url) = std::env::var("PLATESCORE_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        skip_loudly(
            "postgres_restarted_mid_load",
            "it needs a PostgreSQL it may restart: run `.ci/with-postgres cargo test --test drills postgres`",
        );
        return;
    };
    let ctl = std::env::var("PLATESCORE_TEST_PG_CTL").expect(
        "PLATESCORE_TEST_PG_CTL is not set: run the drill under .ci/with-postgres, which sets it",
    );
    let database = PostgresDatabase::create(&admin_url).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = drill_config(dir.path());
    config.database_url = Some(database.url.clone());
    config.database_max_connections = 8;
    // Jobs whose outcome could not be written get back to the queue quickly.
    config.job_lease_seconds = 2;
    config.webhook_timeout_ms = 1_000;
    config.webhook_retry_schedule = "100ms,200ms,400ms,800ms,1s".into();
    let api = Node::start(&config, Role::Api).await;
    let worker = Node::start(&config, Role::Worker).await;
    let key = api.new_partner().await;
    let receiver = Receiver::start().await;
    let client = reqwest::Client::new();
    let (api_url, worker_url) = (api.url(""), worker.url(""));

    let load = Load::start(4, api_url.clone(), key.clone(), receiver.url("/hook"));
    // Mid-load: jobs are being accepted, scored and delivered.
    receiver.wait_for(5).await;

    postgres(&ctl, "stop").await;
    let (_, refused_before) = load.counts();
    for base in [&api_url, &worker_url] {
        let body = wait_for_readiness(&client, base, 503).await;
        assert_eq!(body["status"], "unavailable", "{body}");
        assert_eq!(body["database"], "unavailable", "{body}");
        assert_eq!(body["object_store"], "ok", "{body}");
    }
    // An enqueue fails while it is down (after the pool's 10 s wait for a connection).
    eventually(
        "an enqueue refused while PostgreSQL is down",
        Duration::from_secs(60),
        || async { (load.counts().1 > refused_before).then_some(()) },
    )
    .await;

    postgres(&ctl, "start").await;
    for base in [&api_url, &worker_url] {
        let body = wait_for_readiness(&client, base, 200).await;
        assert_eq!(body["database"], "ok", "{body}");
    }
    // The API node takes jobs again, on connections of its old pool.
    let (accepted_at_restart, _) = load.counts();
    eventually(
        "10 jobs accepted after the restart",
        Duration::from_secs(60),
        || async { (load.counts().0 >= accepted_at_restart + 10).then_some(()) },
    )
    .await;
    let answers = load.stop().await;

    // Every refusal was a 503 problem that says what is wrong and when to come back.
    assert!(!answers.refused.is_empty());
    for refusal in &answers.refused {
        assert_eq!(refusal.status, 503, "{refusal:?}");
        assert_eq!(
            refusal.content_type, "application/problem+json",
            "{refusal:?}"
        );
        assert_eq!(refusal.code, "database_unavailable", "{refusal:?}");
        assert_eq!(refusal.retry_after.as_deref(), Some("5"), "{refusal:?}");
    }
    // Every accepted job was scored and delivered: the worker node reconnected too.
    let accepted: HashSet<String> = answers.accepted.iter().cloned().collect();
    let delivered = all_delivered(
        &receiver,
        &accepted,
        "every accepted job delivered",
        Duration::from_secs(120),
    )
    .await;
    for id in &accepted {
        assert_eq!(delivered[id]["status"], "succeeded", "{}", delivered[id]);
    }
    eprintln!(
        "postgres_restarted_mid_load: {} jobs accepted and delivered, {} enqueues refused during the outage",
        accepted.len(),
        answers.refused.len()
    );
    api.stop().await;
    worker.stop().await;
    database.drop_blocking();
}

// ---------------------------------------------------------------------------------------
// 2. The S3 server stopped for 30 s.

const S3_OUTAGE: Duration = Duration::from_secs(30);

/// An API node takes uploads; the S3 server stops for 30 s. During it, readiness reports the
/// object store down, uploads are refused with `503 storage_unavailable` and write nothing,
/// URL jobs are still accepted; a worker node that starts meanwhile tries every job and fails
/// to get (or store) its photo, a transient failure. Once S3 is back every job is scored
/// and delivered, and no job lacks its object nor any object its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn object_store_down_for_30_s() {
    const UPLOADS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = S3Server::start(dir.path().join("s3")).await;
    let mut config = drill_config(&dir.path().join("data"));
    s3.configure(&mut config);
    // Retries after 1, 2, 4, 8, 16 s…: the first one after the outage succeeds.
    config.job_retry_delay_ms = 1_000;
    config.job_max_attempts = 10;
    let api = Node::start(&config, Role::Api).await;
    let key = api.new_partner().await;
    let receiver = Receiver::start().await;
    let photos = image_host(vec![(
        "lemon.jpg",
        Reply::Status(200),
        fixture("lemon.jpg"),
    )])
    .await;
    let client = reqwest::Client::new();
    let base = api.url("");
    let hook = receiver.url("/hook");

    let mut job_ids = Vec::new();
    for n in 0..UPLOADS {
        let response = enqueue(&client, &base, &key, upload_form(photo(n), &hook)).await;
        job_ids.push(accepted_job_id(response).await);
    }
    assert_eq!(
        assert_rows_match_objects(&api.db, &s3.objects_root()).await,
        UPLOADS
    );

    s3.stop().await;
    let outage = Instant::now();
    let body = wait_for_readiness(&client, &base, 503).await;
    assert_eq!(body["object_store"], "unavailable", "{body}");
    assert_eq!(body["database"], "ok", "{body}");
    // Uploads are refused, as a 503 problem with Retry-After; nothing is written.
    for n in 0..2 {
        let response = enqueue(&client, &base, &key, upload_form(photo(100 + n), &hook)).await;
        assert_eq!(retry_after(&response).as_deref(), Some("5"));
        assert_problem(response, 503, "storage_unavailable").await;
    }
    // A URL job needs no store to be accepted: the worker stores its photo.
    for _ in 0..2 {
        let response = client
            .post(format!("{base}/enqueue"))
            .bearer_auth(&key)
            .json(&json!({
                "image_url": format!("http://{photos}/images/lemon.jpg"),
                "webhook_url": hook,
            }))
            .send()
            .await
            .unwrap();
        job_ids.push(accepted_job_id(response).await);
    }
    assert_eq!(jobs_in(&api.db).await.len(), UPLOADS + 2);

    // A worker node starting during the outage tries every job, and each attempt fails as
    // a transient failure, to be retried.
    let worker = Node::start(&config, Role::Worker).await;
    eventually(
        "every job tried, and failed transiently, during the outage",
        S3_OUTAGE,
        || async {
            jobs_in(&api.db)
                .await
                .iter()
                .all(|job| {
                    job.status == job::JobStatus::Queued
                        && job.error_code.as_deref() == Some("storage_unavailable")
                })
                .then_some(())
        },
    )
    .await;
    assert!(
        outage.elapsed() < S3_OUTAGE,
        "the jobs' first attempts took longer than the outage"
    );
    tokio::time::sleep_until(outage + S3_OUTAGE).await;
    assert_eq!(
        assert_rows_match_objects(&api.db, &s3.objects_root()).await,
        UPLOADS
    );

    s3.restart().await;
    wait_for_readiness(&client, &base, 200).await;
    let response = enqueue(&client, &base, &key, upload_form(photo(200), &hook)).await;
    job_ids.push(accepted_job_id(response).await);

    // Every job completes, delivered: those tried during the outage on a later attempt.
    let received = all_delivered(
        &receiver,
        &job_ids,
        "every job delivered after the outage",
        Duration::from_secs(90),
    )
    .await;
    let jobs: HashMap<String, job::Model> = jobs_in(&api.db)
        .await
        .into_iter()
        .map(|job| (job.id.to_string(), job))
        .collect();
    for (n, id) in job_ids.iter().enumerate() {
        assert_eq!(received[id]["status"], "succeeded", "{}", received[id]);
        let job = &jobs[id];
        assert_eq!(job.status, job::JobStatus::Succeeded);
        if n < job_ids.len() - 1 {
            assert!(job.attempts >= 2, "job {id} was not retried: {job:?}");
        }
    }
    // The URL jobs' photos are stored now; still nothing half-written, no partial upload.
    assert_eq!(
        assert_rows_match_objects(&api.db, &s3.objects_root()).await,
        job_ids.len()
    );
    let partial = leftovers(&s3.root, &[".tmp."]);
    assert!(partial.is_empty(), "partial uploads left: {partial:?}");
    worker.stop().await;
    api.stop().await;
    s3.stop().await;
}

// ---------------------------------------------------------------------------------------
// 3. A full local disk.

/// Size of the drill's tmpfs: the SQLite database, its WAL and a few photos fit.
const TMPFS_SIZE: &str = "4m";
/// Mounts a tmpfs on the folder given as `$0`, then runs the command that follows.
const MOUNT_THEN_RUN: &str =
    "mount -t tmpfs -o size=$1 platescore-drill \"$0\" && shift && exec \"$@\"";

/// The first way this machine allows to give a process a tmpfs of its own: a user and mount
/// namespace (`unshare -rm`, no privileges needed where user namespaces are allowed), or a
/// mount namespace (`unshare -m`, as root). The mount is gone when the process is.
fn tmpfs_namespace() -> Option<&'static [&'static str]> {
    let probe = tempfile::tempdir().ok()?;
    [&["-rm"][..], &["-m"][..]].into_iter().find(|flags| {
        Command::new("unshare")
            .args(*flags)
            .args(["sh", "-c", MOUNT_THEN_RUN])
            .arg(probe.path())
            .args(["1m", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// `platescore serve` whose data folder is a small tmpfs only it sees: its files are
/// reached through `/proc/<pid>/root`.
struct ServerOnTmpfs {
    child: Child,
    base: String,
    data_dir: PathBuf,
    log: Arc<Mutex<String>>,
}

impl ServerOnTmpfs {
    fn start(flags: &[&str], data_dir: &Path) -> (Self, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new("unshare");
        command
            .args(flags)
            .args(["sh", "-c", MOUNT_THEN_RUN])
            .arg(data_dir)
            .arg(TMPFS_SIZE)
            .arg(env!("CARGO_BIN_EXE_platescore"))
            .arg("serve")
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // Nothing from the caller's environment that would change the server's settings.
        for (var, _) in std::env::vars_os() {
            let name = var.to_string_lossy();
            if name.starts_with("PLATESCORE_") || name == "DATABASE_URL" || name == "RUST_LOG" {
                command.env_remove(&var);
            }
        }
        command
            .env("PLATESCORE_DATA_DIR", data_dir)
            .env("PLATESCORE_LISTEN", format!("127.0.0.1:{port}"))
            .env("PLATESCORE_LOG_FORMAT", "text")
            .env("PLATESCORE_OUTBOUND_ALLOW_CIDRS", "127.0.0.0/8")
            .env("PLATESCORE_POLL_INTERVAL_MS", "100")
            .env("PLATESCORE_SHUTDOWN_DRAIN_MS", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("unshare runs");
        // The log, kept for failure messages; the first start's banner has the key.
        let log = Arc::new(Mutex::new(String::new()));
        let (found, key) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(start) = line.find("Bearer psk_") {
                        let rest = &line[start + "Bearer ".len()..];
                        let _ = found.send(rest[..rest.find('\'').unwrap()].to_string());
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
            log,
        };
        let key = key
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no key printed:\n{}", server.log()));
        (server, key)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The data folder as the server sees it: on its tmpfs.
    fn data(&self) -> PathBuf {
        let inside = self.data_dir.strip_prefix("/").unwrap();
        PathBuf::from(format!("/proc/{}/root", self.child.id())).join(inside)
    }

    /// Stops it with SIGTERM; it must exit cleanly.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}:\n{}", self.log());
    }
}

impl Drop for ServerOnTmpfs {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Fills the filesystem of `path` with one file, until the write fails for want of space.
/// Gives up (and fails) past `most` bytes: `path` must be on the small tmpfs.
fn fill(path: &Path, most: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(err) if err.kind() == std::io::ErrorKind::StorageFull => return,
            Err(err) => panic!("filling {}: {err}", path.display()),
        }
        assert!(
            written <= most,
            "{} is not on a small tmpfs: {written} bytes written without filling it",
            path.display()
        );
    }
}

async fn wait_until_scored(client: &reqwest::Client, base: &str, key: &str, id: &str) {
    eventually(
        &format!("job {id} scored"),
        Duration::from_secs(60),
        || async move {
            let response = client
                .get(format!("{base}/status/{id}"))
                .bearer_auth(key)
                .send()
                .await
                .ok()?;
            let job: Value = response.json().await.ok()?;
            (job["status"] == "succeeded").then_some(())
        },
    )
    .await
}

/// Nothing half-written on the full disk: the jobs listed are those accepted, each job
/// that stored a photo has its object and no object is not a job's (with `all_stored`,
/// every job stored its photo), and no partial file is left.
async fn assert_jobs_match_objects(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    accepted: &[String],
    objects_dir: &Path,
    all_stored: bool,
) {
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = cursor.map_or(String::new(), |c| format!("&cursor={c}"));
        let page: Value = client
            .get(format!("{base}/jobs?limit=200{query}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        listed.extend(page["jobs"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let ids: BTreeSet<&str> = listed
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    let expected: BTreeSet<&str> = accepted.iter().map(String::as_str).collect();
    assert_eq!(ids, expected);
    let stored: BTreeSet<&str> = listed
        .iter()
        .filter(|j| !j["request"]["image"]["sha256"].is_null())
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    if all_stored {
        assert_eq!(stored, expected);
    }
    let objects: BTreeSet<String> = object_keys(objects_dir)
        .into_iter()
        .map(|key| key.rsplit('/').next().unwrap().to_string())
        .collect();
    let objects: BTreeSet<&str> = objects.iter().map(String::as_str).collect();
    assert_eq!(objects, stored, "objects, and the jobs that stored a photo");
    let partial = leftovers(objects_dir, &[".staging-"]);
    assert!(partial.is_empty(), "partial writes left: {partial:?}");
}

/// `platescore serve` with its data folder (the SQLite database and the objects) on a 4 MiB
/// tmpfs, which a file fills. An upload (its photo cannot be stored) and a URL job (its row
/// cannot be committed) are refused with `507 storage_full`; readiness reports the object
/// store unusable; nothing is half-written (the jobs listed are those accepted, every job
/// that stored a photo has its object and every object is a job's, no partial file); once
/// the file is deleted the same server, not restarted, takes and scores jobs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk() {
    let Some(flags) = tmpfs_namespace() else {
        let why = "neither `unshare -rm` nor `unshare -m` may mount a tmpfs here";
        assert!(!drills_required(), "a_full_disk cannot run: {why}");
        skip_loudly("a_full_disk", why);
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let (server, key) = ServerOnTmpfs::start(flags, &data_dir);
    let client = reqwest::Client::new();
    let base = server.base.clone();
    wait_for_readiness(&client, &base, 200).await;
    // The database is on the tmpfs, not in the folder beneath it.
    assert!(server.data().join("platescore.db").is_file());
    assert!(!data_dir.join("platescore.db").exists());

    let photos = image_host(vec![(
        "lemon.jpg",
        Reply::Status(200),
        fixture("lemon.jpg"),
    )])
    .await;
    let first = accepted_job_id(enqueue(&client, &base, &key, photo_form(photo(0))).await).await;
    wait_until_scored(&client, &base, &key, &first).await;

    let filler = server.data().join("filler");
    fill(&filler, 64 << 20);

    // An upload cannot be stored.
    let response = enqueue(&client, &base, &key, photo_form(photo(1))).await;
    assert_problem(response, 507, "storage_full").await;
    let (status, body) = readiness(&client, &base).await.expect("readiness answers");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["object_store"], "unavailable", "{body}");
    // A URL job needs only its row, and SQLite cannot commit it: its log (a fresh one,
    // never checkpointed, so with no room of its own to reuse) cannot grow. Refused too,
    // every time: a failed commit leaves nothing behind that would swallow later writes.
    let mut accepted = vec![first.clone()];
    for _ in 0..3 {
        let response = client
            .post(format!("{base}/enqueue"))
            .bearer_auth(&key)
            .json(&json!({ "image_url": format!("http://{photos}/images/lemon.jpg") }))
            .send()
            .await
            .unwrap();
        assert_problem(response, 507, "storage_full").await;
    }
    let objects_dir = server.data().join("objects");
    assert_jobs_match_objects(&client, &base, &key, &accepted, &objects_dir, false).await;

    // Space returns: the same server takes photos and URL jobs again, and scores them.
    std::fs::remove_file(&filler).unwrap();
    wait_for_readiness(&client, &base, 200).await;
    let upload = enqueue(&client, &base, &key, photo_form(photo(1))).await;
    accepted.push(accepted_job_id(upload).await);
    let url_job = client
        .post(format!("{base}/enqueue"))
        .bearer_auth(&key)
        .json(&json!({ "image_url": format!("http://{photos}/images/lemon.jpg") }))
        .send()
        .await
        .unwrap();
    accepted.push(accepted_job_id(url_job).await);
    for id in &accepted {
        wait_until_scored(&client, &base, &key, id).await;
    }
    assert_jobs_match_objects(&client, &base, &key, &accepted, &objects_dir, true).await;
    server.stop();
}

/// The database's half of a full disk, made certain: SQLite capped at the pages it has
/// (`max_page_count`, on the one writer connection) fails writes as a full disk does. URL
/// enqueues (a row, no object) are refused with `507 storage_full` once the cap is reached,
/// nothing is written for them, and lifting the cap is all it takes to recover.
#[tokio::test]
async fn a_full_database_refuses_enqueues_and_recovers() {
    use sea_orm::ConnectionTrait;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&drill_config(dir.path()), Role::Api).await;
    let key = node.new_partner().await;
    let client = reqwest::Client::new();
    let base = node.url("");
    let enqueue_url = || {
        client
            .post(format!("{base}/enqueue"))
            .bearer_auth(&key)
            .json(&json!({ "image_url": "http://127.0.0.1:9/meal.jpg" }))
            .send()
    };
    let writer = node.db.writer();
    writer
        .execute_unprepared("PRAGMA max_page_count = 1")
        .await
        .unwrap();
    let mut accepted = 0;
    let refused = loop {
        assert!(accepted < 500, "the capped database never filled");
        let response = enqueue_url().await.unwrap();
        if response.status() != 202 {
            break response;
        }
        accepted += 1;
    };
    assert_problem(refused, 507, "storage_full").await;
    assert_eq!(jobs_in(&node.db).await.len(), accepted);

    writer
        .execute_unprepared("PRAGMA max_page_count = 1073741823")
        .await
        .unwrap();
    assert_eq!(enqueue_url().await.unwrap().status(), 202);
    assert_eq!(jobs_in(&node.db).await.len(), accepted + 1);
    node.stop().await;
}

// ---------------------------------------------------------------------------------------
// 4. Receivers failing half the time.

/// The retry schedule: 5 retries, 6 attempts in all.
const SCHEDULE: &str = "50ms,100ms,200ms,400ms,800ms";
const RETRIES: usize = 5;
const WEBHOOK_TIMEOUT_MS: u64 = 300;

/// How a failing attempt fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Status(u16),
    /// Answers only after the sender gave up.
    TooSlow,
    Delivered,
}

const FAILURES: [Answer; 5] = [
    Answer::Status(500),
    Answer::Status(502),
    Answer::Status(503),
    Answer::Status(429),
    Answer::TooSlow,
];

#[derive(Debug)]
struct Planned {
    job_id: String,
    failures: usize,
    answers: Vec<Answer>,
}

struct Flaky {
    /// How many times each new delivery fails before it succeeds, in order of arrival.
    plans: Mutex<VecDeque<usize>>,
    /// Which failure each failing attempt is.
    kinds: Mutex<StdRng>,
    /// By `webhook-id`, the same on every attempt of a delivery.
    deliveries: Mutex<HashMap<String, Planned>>,
}

#[poem::handler]
async fn flaky_receiver(
    state: poem::web::Data<&Arc<Flaky>>,
    headers: &poem::http::HeaderMap,
    body: poem::Body,
) -> poem::Response {
    let body: Value = serde_json::from_slice(&body.into_vec().await.unwrap()).unwrap();
    let webhook_id = headers["webhook-id"].to_str().unwrap().to_string();
    let answer = {
        let mut deliveries = state.deliveries.lock().unwrap();
        let delivery = deliveries.entry(webhook_id).or_insert_with(|| Planned {
            job_id: body["job_id"].as_str().unwrap().to_string(),
            failures: state.plans.lock().unwrap().pop_front().expect("a plan"),
            answers: Vec::new(),
        });
        let answer = if delivery.answers.len() < delivery.failures {
            let mut kinds = state.kinds.lock().unwrap();
            FAILURES[kinds.random_range(0..FAILURES.len())]
        } else {
            Answer::Delivered
        };
        delivery.answers.push(answer);
        answer
    };
    let status = match answer {
        Answer::Status(code) => code,
        Answer::TooSlow => {
            tokio::time::sleep(Duration::from_millis(WEBHOOK_TIMEOUT_MS * 3)).await;
            200
        }
        Answer::Delivered => 204,
    };
    poem::Response::builder()
        .status(poem::http::StatusCode::from_u16(status).unwrap())
        .finish()
}

/// Each delivery fails a number of times drawn from a seeded geometric distribution (each
/// attempt fails with probability 1/2), capped at the schedule's retries: half the
/// attempts fail, as 500, 502, 503, 429 or a timeout. Every job's webhook is delivered,
/// none takes more attempts than the schedule has, none is sent again once delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receivers_failing_half_the_time() {
    const JOBS: usize = 40;
    const SEED: u64 = 2026;
    let mut rng = StdRng::seed_from_u64(SEED);
    let plans: Vec<usize> = (0..JOBS)
        .map(|_| {
            let mut failures = 0;
            while failures < RETRIES && rng.random_bool(0.5) {
                failures += 1;
            }
            failures
        })
        .collect();
    let failing: usize = plans.iter().sum();
    let attempts = failing + JOBS;
    // The seed's draw, checked once: about half the attempts fail, and some deliveries
    // need the whole schedule.
    assert!(
        (0.4..=0.6).contains(&(failing as f64 / attempts as f64)),
        "{plans:?}"
    );
    assert!(plans.contains(&RETRIES), "{plans:?}");

    let state = Arc::new(Flaky {
        plans: Mutex::new(plans.iter().copied().collect()),
        kinds: Mutex::new(StdRng::seed_from_u64(SEED + 1)),
        deliveries: Mutex::default(),
    });
    let receiver_addr = {
        use poem::{
            listener::{Acceptor, Listener, TcpListener},
            EndpointExt,
        };
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
        let app = poem::Route::new()
            .at("/hook", poem::post(flaky_receiver))
            .data(state.clone());
        tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
        addr
    };

    let dir = tempfile::tempdir().unwrap();
    let mut config = drill_config(dir.path());
    config.webhook_retry_schedule = SCHEDULE.into();
    config.webhook_timeout_ms = WEBHOOK_TIMEOUT_MS;
    let node = Node::start(&config, Role::All).await;
    let key = node.new_partner().await;
    let client = reqwest::Client::new();
    let base = node.url("");
    let hook = format!("http://{receiver_addr}/hook");
    let mut job_ids = Vec::new();
    for _ in 0..JOBS {
        let form = upload_form(fixture("apple.jpg"), &hook);
        job_ids.push(accepted_job_id(enqueue(&client, &base, &key, form).await).await);
    }

    let jobs: Vec<Value> = eventually(
        "every webhook settled",
        Duration::from_secs(120),
        || async {
            let response = client
                .post(format!("{base}/status"))
                .bearer_auth(&key)
                .json(&json!({ "job_ids": job_ids }))
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
            let settled = |job: &Value| {
                job["deliveries"].as_array().is_some_and(|d| {
                    !d.is_empty()
                        && d.iter()
                            .all(|d| matches!(d["status"].as_str(), Some("delivered" | "failed")))
                })
            };
            (jobs.len() == JOBS && jobs.iter().all(settled)).then_some(jobs)
        },
    )
    .await;

    let deliveries: HashMap<String, Planned> =
        std::mem::take(&mut *state.deliveries.lock().unwrap());
    assert_eq!(deliveries.len(), JOBS, "one delivery per job");
    let by_job: HashMap<&str, &Planned> = deliveries
        .values()
        .map(|d| (d.job_id.as_str(), d))
        .collect();
    for job in &jobs {
        let id = job["job_id"].as_str().unwrap();
        assert_eq!(job["status"], "succeeded", "{job}");
        let delivery = &job["deliveries"][0];
        assert_eq!(delivery["status"], "delivered", "{job}");
        let planned = by_job[id];
        // Delivered on the attempt after its last failure, within the schedule, and never
        // sent again.
        assert_eq!(
            delivery["attempts"],
            planned.failures + 1,
            "{job} {planned:?}"
        );
        assert!(planned.failures <= RETRIES);
        assert_eq!(
            planned.answers.last(),
            Some(&Answer::Delivered),
            "{planned:?}"
        );
        assert_eq!(
            planned
                .answers
                .iter()
                .filter(|a| **a == Answer::Delivered)
                .count(),
            1,
            "{planned:?}"
        );
    }
    let answered: usize = deliveries.values().map(|d| d.answers.len()).sum();
    assert_eq!(answered, attempts, "every planned attempt, and no more");
    eprintln!(
        "receivers_failing_half_the_time: {JOBS} webhooks delivered in {attempts} attempts, {failing} of them failed"
    );
    node.stop().await;
}

/// Waits until the receiver has a webhook for each of `ids`; returns the bodies by job id.
async fn all_delivered<'a>(
    receiver: &Receiver,
    ids: impl IntoIterator<Item = &'a String> + Clone,
    what: &str,
    within: Duration,
) -> HashMap<String, Value> {
    eventually(what, within, || async {
        let received: HashMap<String, Value> = receiver
            .received()
            .iter()
            .map(|r| r.json())
            .map(|body| (body["job_id"].as_str().unwrap().to_string(), body))
            .collect();
        ids.clone()
            .into_iter()
            .all(|id| received.contains_key(id))
            .then_some(received)
    })
    .await
}
