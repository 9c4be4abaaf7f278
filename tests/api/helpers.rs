//! The test harness: each test gets its own server on a random port, with its own data
//! folder and database, and talks HTTP to it.
//!
//! - `PLATESCORE_TEST_DATABASE_URL=postgres://…/postgres` runs the suite on PostgreSQL:
//!   each test creates a fresh database there, and drops it afterwards.
//! - `PLATESCORE_TEST_OBJECT_STORE=s3` runs it against an in-process S3 server (s3s-fs).

use std::{net::SocketAddr, path::PathBuf};

use platescore::{
    config::Config,
    startup::{Application, Role},
    store::partners,
};
use reqwest::multipart::{Form, Part};
use s3s::{auth::SimpleAuth, service::S3ServiceBuilder};
use serde_json::Value;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub const S3_ACCESS_KEY: &str = "platescore-test";
pub const S3_SECRET_KEY: &str = "platescore-test-secret";
pub const S3_BUCKET: &str = "meals";

pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectBackend {
    Folder,
    S3,
}

impl ObjectBackend {
    pub fn from_env() -> Self {
        match std::env::var("PLATESCORE_TEST_OBJECT_STORE").as_deref() {
            Ok("s3") => Self::S3,
            _ => Self::Folder,
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub db: platescore::store::Db,
    /// The first partner's key.
    pub key: String,
    /// Where objects end up on disk (the folder store, or the S3 server's root).
    pub objects_root: PathBuf,
    /// The configuration the app was built with.
    pub config: Config,
    shutdown: CancellationToken,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    postgres: Option<PostgresDatabase>,
    _dir: TempDir,
}

pub struct TestOptions {
    pub backend: ObjectBackend,
    /// `Api` by default, so jobs stay where tests put them; lifecycle tests run workers.
    pub role: Role,
    pub configure: Box<dyn FnOnce(&mut Config)>,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            backend: ObjectBackend::from_env(),
            role: Role::Api,
            configure: Box::new(|_| {}),
        }
    }
}

impl TestOptions {
    /// Workers on, loopback reachable (receivers and image hosts live there), quick polls.
    pub fn with_workers(configure: impl FnOnce(&mut Config) + 'static) -> Self {
        Self {
            role: Role::All,
            configure: Box::new(move |config| {
                config.outbound_allow_cidrs = "127.0.0.0/8".into();
                config.runtime = platescore::inference::RuntimeChoice::Auto;
                config.poll_interval_ms = 100;
                config.webhook_retry_schedule = "20ms,20ms,20ms".into();
                config.webhook_retry_jitter = 0.0;
                config.webhook_timeout_ms = 2_000;
                configure(config);
            }),
            ..Self::default()
        }
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(TestOptions::default()).await
    }

    pub async fn spawn_with(options: TestOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let postgres = match std::env::var("PLATESCORE_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => {
                let database = PostgresDatabase::create(&url).await;
                config.database_url = Some(database.url.clone());
                config.database_max_connections = 4;
                Some(database)
            }
            _ => None,
        };
        let objects_root = match options.backend {
            ObjectBackend::Folder => config.data_dir.join("objects"),
            ObjectBackend::S3 => {
                let root = dir.path().join("s3");
                let endpoint = start_s3_server(&root).await;
                config.object_store = Some(format!("s3://{S3_BUCKET}/platescore"));
                config.s3_endpoint_url = Some(format!("http://{endpoint}"));
                config.s3_force_path_style = true;
                config.s3_access_key_id = Some(S3_ACCESS_KEY.into());
                config.s3_secret_access_key = Some(S3_SECRET_KEY.into());
                root.join(S3_BUCKET).join("platescore")
            }
        };
        // Tests stop at once; the drain test sets its own.
        config.shutdown_drain_ms = 0;
        (options.configure)(&mut config);

        let app = Application::build(&config, options.role)
            .await
            .expect("app builds");
        let addr = app.addr();
        let db = app.db().clone();
        let (_, key) = partners::create(&db, "test partner", false).await.unwrap();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(app.run_until(shutdown.clone()));
        Self {
            addr,
            client: reqwest::Client::new(),
            db,
            key: key.expose().to_string(),
            objects_root,
            config,
            shutdown,
            running: Some(running),
            postgres,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A second partner's key.
    pub async fn new_partner(&self, name: &str) -> String {
        partners::create(&self.db, name, false)
            .await
            .unwrap()
            .1
            .expose()
            .to_string()
    }

    pub async fn new_admin(&self, name: &str) -> String {
        partners::create(&self.db, name, true)
            .await
            .unwrap()
            .1
            .expose()
            .to_string()
    }

    /// Shuts the app down as SIGTERM would, and waits until it has stopped.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.await.unwrap().unwrap();
        }
    }

    pub async fn get_json(&self, key: &str, path: &str) -> Value {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    pub async fn post_json(&self, key: &str, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Polls `GET /status` until the job is finished and its deliveries are settled.
    pub async fn wait_until_settled(&self, key: &str, job_id: &str) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let job: Value = self.status(key, job_id).await.json().await.unwrap();
            let finished = matches!(job["status"].as_str(), Some("succeeded" | "failed"));
            let settled = job["deliveries"].as_array().is_some_and(|d| {
                d.iter()
                    .all(|d| matches!(d["status"].as_str(), Some("delivered" | "failed")))
            });
            if finished && settled {
                return job;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job never settled: {job}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub async fn upload(&self, key: &str, image: Vec<u8>, file_name: &str) -> reqwest::Response {
        self.enqueue_form(
            key,
            Form::new().part("image", Part::bytes(image).file_name(file_name.to_string())),
        )
        .await
    }

    pub async fn upload_with_webhook(
        &self,
        key: &str,
        image: Vec<u8>,
        webhook_url: &str,
    ) -> reqwest::Response {
        self.enqueue_form(
            key,
            Form::new()
                .part("image", Part::bytes(image).file_name("meal.jpg"))
                .text("webhook_url", webhook_url.to_string()),
        )
        .await
    }

    pub async fn enqueue_form(&self, key: &str, form: Form) -> reqwest::Response {
        self.client
            .post(self.url("/enqueue"))
            .bearer_auth(key)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn enqueue_json(&self, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/enqueue"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn status(&self, key: &str, job_id: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/status/{job_id}")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    pub async fn list_jobs(&self, key: &str, query: &str) -> Value {
        let response = self
            .client
            .get(self.url(&format!("/jobs{query}")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Every object file in the store, whichever backend.
    pub fn stored_objects(&self) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.objects_root, &mut out);
        out
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(database) = self.postgres.take() {
            database.drop_blocking();
        }
    }
}

/// Asserts a problem-details response and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "status of {}",
        response.url()
    );
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert_eq!(body["type"], format!("urn:platescore:problem:{code}"));
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

/// A throwaway database on the test PostgreSQL server.
pub struct PostgresDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl PostgresDatabase {
    pub async fn create(admin_url: &str) -> Self {
        use sea_orm::{ConnectionTrait, Database};
        let name = format!("platescore_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(admin_url)
            .await
            .expect("connect to test PostgreSQL");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let _ = admin.close().await;
        let mut url = url::Url::parse(admin_url).unwrap();
        url.set_path(&name);
        Self {
            admin_url: admin_url.to_string(),
            name,
            url: url.to_string(),
        }
    }

    /// Drops the database from a thread of its own: `Drop` cannot await.
    pub fn drop_blocking(self) {
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                use sea_orm::{ConnectionTrait, Database};
                if let Ok(admin) = Database::connect(&self.admin_url).await {
                    let _ = admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                            self.name
                        ))
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// Starts an S3 server (s3s over a local folder) on a random loopback port.
pub async fn start_s3_server(root: &std::path::Path) -> SocketAddr {
    std::fs::create_dir_all(root.join(S3_BUCKET)).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(S3_ACCESS_KEY, S3_SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let http =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        while let Ok((socket, _)) = listener.accept().await {
            let connection = http
                .serve_connection(hyper_util::rt::TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    });
    addr
}
