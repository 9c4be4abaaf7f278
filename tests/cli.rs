//! The binary as a user runs it: first start, partner management, the spec, and the model
//! runtime it picks with no variable set.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The binary with a fresh data folder, and nothing inherited from the caller's environment
/// that would change what a user gets: no database or store, no runtime or library setting.
fn platescore(data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_platescore"));
    for var in [
        "DATABASE_URL",
        "PLATESCORE_OBJECT_STORE",
        "PLATESCORE_CONFIG",
        "ORT_DYLIB_PATH",
        "PLATESCORE_ORT_LIBRARY",
        "PLATESCORE_RUNTIME",
        "PLATESCORE_EXECUTION_PROVIDER",
        "PLATESCORE_EXECUTION_PROVIDER_FALLBACK",
        "PLATESCORE_MAX_BATCH",
        "PLATESCORE_MIGRATE_ON_START",
        "PLATESCORE_CREATE_FIRST_PARTNER",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command
        .env("PLATESCORE_DATA_DIR", data_dir)
        .env("PLATESCORE_LISTEN", "127.0.0.1:0");
    command
}

#[test]
fn partners_create_prints_only_the_key_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let output = platescore(dir.path())
        .args(["partners", "create", "Diary App"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = stdout.trim_end_matches('\n');
    assert!(!key.contains('\n'), "stdout is only the key: {stdout:?}");
    assert!(key.starts_with("psk_") && key.len() >= 4 + 43, "{key}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("Diary App"));

    let listing = platescore(dir.path())
        .args(["partners", "list"])
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(
        listing.contains("Diary App") && listing.contains("active"),
        "{listing}"
    );
    assert!(!listing.contains(key), "the listing must not show the key");
    let id = listing
        .lines()
        .find(|l| l.contains("Diary App"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();

    let revoke = platescore(dir.path())
        .args(["partners", "revoke", id])
        .output()
        .unwrap();
    assert!(revoke.status.success());
    let listing = platescore(dir.path())
        .args(["partners", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8(listing.stdout)
        .unwrap()
        .contains("revoked"));

    let missing = platescore(dir.path())
        .args(["partners", "revoke", "00000000-0000-0000-0000-000000000000"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
}

/// `partners set-limit` sets a partner's own limits (a number, `unlimited` or `default`
/// each), leaves the ones not named as they are, and prints them.
#[test]
fn partners_set_limit_sets_and_clears_a_partners_own_limits() {
    let dir = tempfile::tempdir().unwrap();
    let created = platescore(dir.path())
        .args(["partners", "create", "Diary App"])
        .output()
        .unwrap();
    assert!(created.status.success());
    let listing = platescore(dir.path())
        .args(["partners", "list"])
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    let id = listing
        .lines()
        .find(|l| l.contains("Diary App"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let set_limit = |args: &[&str]| {
        let output = platescore(dir.path())
            .args(["partners", "set-limit", &id])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let (ok, stdout, stderr) = set_limit(&["--per-second", "5", "--max-queued", "100"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "per_second=5 burst=default max_queued=100\n");
    assert!(stderr.contains("auth_cache_seconds"), "{stderr}");
    let listing = platescore(dir.path())
        .args(["partners", "list"])
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(
        listing.contains("active, per_second=5, max_queued=100"),
        "the listing shows a partner's own limits: {listing}"
    );
    let (ok, stdout, _) = set_limit(&["--burst", "20", "--max-queued", "unlimited"]);
    assert!(ok);
    assert_eq!(stdout, "per_second=5 burst=20 max_queued=unlimited\n");
    let (ok, stdout, _) = set_limit(&["--per-second", "default", "--burst", "default"]);
    assert!(ok);
    assert_eq!(
        stdout,
        "per_second=default burst=default max_queued=unlimited\n"
    );

    for refused in [
        &[][..],
        &["--per-second", "0"],
        &["--per-second", "fast"],
        &["--burst", "unlimited"],
    ] {
        let (ok, _, stderr) = set_limit(refused);
        assert!(!ok, "{refused:?} is refused");
        assert!(!stderr.is_empty());
    }
    let missing = platescore(dir.path())
        .args([
            "partners",
            "set-limit",
            "00000000-0000-0000-0000-000000000000",
            "--per-second",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no partner"));
}

#[test]
fn openapi_prints_the_committed_spec() {
    let dir = tempfile::tempdir().unwrap();
    let output = platescore(dir.path()).arg("openapi").output().unwrap();
    assert!(output.status.success());
    let committed =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    assert_eq!(output.stdout, committed);
}

#[test]
fn a_bad_setting_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let output = platescore(dir.path())
        .env("PLATESCORE_OBJECT_STORE", "ftp://nowhere")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("object_store"), "{stderr}");
}

#[test]
fn the_first_start_creates_a_partner_and_serves_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = platescore(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());

    // Read until the curl line, which carries both the key and the address.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut key, mut url) = (None, None);
    let mut line = String::new();
    while url.is_none() && Instant::now() < deadline {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(start) = line.find("Bearer psk_") {
            let rest = &line[start + "Bearer ".len()..];
            key = Some(rest[..rest.find('\'').unwrap()].to_string());
            url = line
                .split_whitespace()
                .find(|w| w.starts_with("http://"))
                .map(str::to_string);
        }
    }
    let (key, url) = (
        key.expect("a key is printed"),
        url.expect("a curl line is printed"),
    );
    assert!(dir.path().join("platescore.db").exists());
    assert!(dir.path().join("objects").is_dir());

    let base = url.trim_end_matches("/enqueue").to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let ready = client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
        let form = reqwest::multipart::Form::new().part(
            "image",
            reqwest::multipart::Part::bytes(std::fs::read("tests/fixtures/apple.jpg").unwrap())
                .file_name("a.jpg"),
        );
        let response = client
            .post(&url)
            .bearer_auth(&key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    });

    // SIGTERM: a clean exit.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    // A second start creates no second partner.
    let output = platescore(dir.path())
        .args(["partners", "list"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().lines().count(),
        2,
        "header plus one partner"
    );
}

#[test]
fn score_prints_one_json_line_per_image_path_first() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(photos.join("nested")).unwrap();
    for (from, to) in [
        ("lemon.jpg", "photos/lemon.jpg"),
        ("cat.jpg", "photos/nested/cat.jpg"),
        ("awkward/truncated_progressive.jpg", "photos/broken.jpg"),
    ] {
        std::fs::copy(format!("tests/fixtures/{from}"), dir.path().join(to)).unwrap();
    }
    std::fs::write(photos.join("notes.txt"), "not an image").unwrap();
    let output = platescore(dir.path())
        .env("PLATESCORE_RUNTIME", "tract")
        .env(
            "PLATESCORE_MODELS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/models"),
        )
        .args(["score", "--diet", "vegetarian"])
        .arg(&photos)
        .output()
        .unwrap();
    // One image failed, so the exit status says so; the others are still scored.
    assert!(!output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for line in stdout.lines() {
        assert!(line.starts_with("{\"path\":"), "{line}");
    }
    let by_name = |name: &str| {
        lines
            .iter()
            .find(|l| l["path"].as_str().unwrap().ends_with(name))
            .unwrap()
    };
    let lemon = by_name("lemon.jpg");
    assert_eq!(lemon["is_food"], true);
    assert!(lemon["score"].as_f64().unwrap() >= 4.0);
    assert_eq!(lemon["labels"][0]["label"], "lemon");
    assert!(!lemon["tips"].as_array().unwrap().is_empty());
    assert!(lemon["timings"]["total_ms"].as_f64().unwrap() > 0.0);
    assert!(lemon["model_version"]
        .as_str()
        .unwrap()
        .starts_with("efficientnet-lite0"));
    assert_eq!(by_name("cat.jpg")["is_food"], false);
    assert_eq!(by_name("broken.jpg")["error"]["code"], "image_corrupt");

    let bad_tag = platescore(dir.path())
        .args(["score", "--diet", "carnivore"])
        .arg(&photos)
        .output()
        .unwrap();
    assert!(!bad_tag.status.success());
    assert!(String::from_utf8_lossy(&bad_tag.stderr).contains("carnivore"));
}

/// Reads the child's stderr on a thread (so it never blocks on a full pipe) and returns the
/// first partner's key from the first-start banner.
fn key_from_banner(child: &mut std::process::Child) -> String {
    let stderr = child.stderr.take().unwrap();
    let (found, key) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let (false, Some(start)) = (sent, line.find("Bearer psk_")) {
                let rest = &line[start + "Bearer ".len()..];
                let _ = found.send(rest[..rest.find('\'').unwrap()].to_string());
                sent = true;
            }
        }
    });
    key.recv_timeout(Duration::from_secs(60))
        .expect("a key is printed")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn after_a_crash_every_job_succeeds_and_every_webhook_arrives_with_a_stable_id() {
    use std::sync::{Arc, Mutex};
    const JOBS: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let start = || {
        platescore(dir.path())
            .env("PLATESCORE_LISTEN", format!("127.0.0.1:{port}"))
            .env("PLATESCORE_OUTBOUND_ALLOW_CIDRS", "127.0.0.0/8")
            .env("PLATESCORE_JOB_LEASE_SECONDS", "2")
            .env("PLATESCORE_POLL_INTERVAL_MS", "100")
            .env("PLATESCORE_WORKER_CONCURRENCY", "2")
            .env("PLATESCORE_RUNTIME", "tract")
            .env("PLATESCORE_WEBHOOK_RETRY_SCHEDULE", "100ms,100ms,100ms")
            .env("PLATESCORE_WEBHOOK_TIMEOUT_MS", "1000")
            .env(
                "PLATESCORE_MODELS_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/models"),
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // A receiver on loopback that records (webhook-id, job_id) pairs.
    type Seen = Arc<Mutex<Vec<(String, String)>>>;
    let received: Seen = Arc::default();
    let receiver_addr = runtime.block_on(async {
        use poem::{
            handler,
            http::HeaderMap,
            listener::{Acceptor, Listener},
            web::Data,
            EndpointExt,
        };
        #[handler]
        async fn hook(
            seen: Data<&Seen>,
            headers: &HeaderMap,
            body: poem::web::Json<serde_json::Value>,
        ) -> &'static str {
            let id = headers
                .get("webhook-id")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let job = body["job_id"].as_str().unwrap().to_string();
            seen.lock().unwrap().push((id, job));
            "ok"
        }
        let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let addr = *acceptor.local_addr()[0].as_socket_addr().unwrap();
        let app = poem::Route::new()
            .at("/hook", poem::post(hook))
            .data(received.clone());
        tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
        addr
    });

    let mut first = start();
    let key = key_from_banner(&mut first);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let job_ids: Vec<String> = runtime.block_on(async {
        let response = client
            .post(format!("{base}/webhooks"))
            .bearer_auth(&key)
            .json(&serde_json::json!({ "url": format!("http://{receiver_addr}/hook") }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let mut ids = Vec::new();
        let photos = ["apple.jpg", "lemon.jpg", "pizza.jpg", "cabbage.jpg"];
        for i in 0..JOBS {
            let mut bytes = std::fs::read(format!("tests/fixtures/{}", photos[i % 4])).unwrap();
            bytes.extend_from_slice(format!("job {i}").as_bytes());
            let form = reqwest::multipart::Form::new().part(
                "image",
                reqwest::multipart::Part::bytes(bytes).file_name("m.jpg"),
            );
            let response = client
                .post(format!("{base}/enqueue"))
                .bearer_auth(&key)
                .multipart(form)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            let job: serde_json::Value = response.json().await.unwrap();
            ids.push(job["job_id"].as_str().unwrap().to_string());
        }
        ids
    });

    // Kill it mid-flight: once some webhooks arrived, before all could.
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no webhook before the crash");
        std::thread::sleep(Duration::from_millis(10));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let before_restart = received.lock().unwrap().len();
    assert!(before_restart < JOBS, "everything finished before the kill");

    let mut second = start();
    std::thread::spawn({
        let stderr = second.stderr.take().unwrap();
        move || for _ in BufReader::new(stderr).lines() {}
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let statuses = loop {
        let statuses: Vec<serde_json::Value> = runtime.block_on(async {
            let Ok(response) = client
                .post(format!("{base}/status"))
                .bearer_auth(&key)
                .json(&serde_json::json!({ "job_ids": job_ids }))
                .send()
                .await
            else {
                return Vec::new();
            };
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            body["jobs"].as_array().cloned().unwrap_or_default()
        });
        let delivered = |job: &serde_json::Value| job["deliveries"][0]["status"] == "delivered";
        if statuses.len() == JOBS && statuses.iter().all(delivered) {
            break statuses;
        }
        assert!(
            Instant::now() < deadline,
            "jobs never all settled: {statuses:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    second.kill().unwrap();
    second.wait().unwrap();

    let received = received.lock().unwrap().clone();
    for job in &statuses {
        assert_eq!(job["status"], "succeeded", "{job}");
        let id = job["job_id"].as_str().unwrap();
        let webhook_ids: Vec<&String> = received
            .iter()
            .filter(|(_, job)| job == id)
            .map(|(webhook_id, _)| webhook_id)
            .collect();
        assert!(!webhook_ids.is_empty(), "no webhook for {id}");
        assert!(
            webhook_ids.iter().all(|w| *w == webhook_ids[0]),
            "webhook ids differ for {id}: {webhook_ids:?}"
        );
        assert_eq!(job["deliveries"][0]["webhook_id"], webhook_ids[0].as_str());
    }
}

#[test]
fn reconcile_now_runs_once_and_prints_its_counts() {
    let dir = tempfile::tempdir().unwrap();
    // Create the database first.
    let created = platescore(dir.path())
        .args(["partners", "create", "ops", "--admin"])
        .output()
        .unwrap();
    assert!(created.status.success());
    let output = platescore(dir.path())
        .args(["reconcile", "--now"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let counts: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(counts["jobs_requeued"], 0);
    assert_eq!(counts["jobs_deleted"], 0);
    let listing = platescore(dir.path())
        .args(["partners", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8(listing.stdout).unwrap().contains("admin"));
}

// The model runtime.

/// Why the build has no bundled library (empty when it has one).
const UNBUNDLED: &str = env!("PLATESCORE_BUNDLED_ORT_NOTE");

/// The runtime the default build must load: ONNX Runtime on CPU, unless this build could
/// not bundle it, which CI never accepts.
fn expected_cpu_runtime() -> &'static str {
    if UNBUNDLED.is_empty() {
        return "ort-cpu";
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must build with ONNX Runtime bundled: {UNBUNDLED}"
    );
    eprintln!("ONNX Runtime is not bundled in this build ({UNBUNDLED}): expecting tract");
    "tract"
}

/// `platescore serve` on `port`, its log on a pipe.
fn serve(data_dir: &std::path::Path, port: u16) -> Command {
    let mut command = platescore(data_dir);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PLATESCORE_LISTEN", format!("127.0.0.1:{port}"))
        .env("PLATESCORE_LOG_FORMAT", "text")
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// A log line without its terminal colours.
fn plain(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Reads the child's stderr on a thread; lines arrive on the channel, without colours,
/// until it closes.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if send.send(plain(&line)).is_err() {
                break;
            }
        }
    });
    lines
}

/// Waits for the "platescore ready" log line; returns it and everything logged before.
fn wait_until_ready(lines: &mpsc::Receiver<String>) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut log = String::new();
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("platescore ready") {
            return (line, log);
        }
    }
    panic!("the server never became ready:\n{log}");
}

fn get(url: &str) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::get(url).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_default_build_serves_with_onnx_runtime_and_no_variable_set() {
    let expected = expected_cpu_runtime();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = serve(dir.path(), port).spawn().unwrap();
    let lines = stderr_lines(&mut child);
    let (ready_line, log) = wait_until_ready(&lines);
    assert!(
        ready_line.contains(&format!("runtime={expected}")),
        "{ready_line}"
    );
    assert!(
        ready_line.contains("model=efficientnet-lite0"),
        "{ready_line}"
    );
    if expected == "ort-cpu" {
        assert!(log.contains("ONNX Runtime library loaded"), "{log}");
        assert!(log.contains("model warmed up"), "{log}");
    }

    let (status, body) = get(&format!("http://127.0.0.1:{port}/health/ready"));
    assert_eq!(status, 200, "{body}");
    let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(readiness["runtime"], expected, "{body}");
    assert!(
        readiness["model_version"]
            .as_str()
            .unwrap()
            .starts_with("efficientnet-lite0"),
        "{body}"
    );

    let (_, metrics) = get(&format!("http://127.0.0.1:{port}/metrics"));
    let info = metrics
        .lines()
        .find(|l| l.starts_with("platescore_model_info{"))
        .unwrap_or_else(|| panic!("no model info series:\n{metrics}"));
    assert!(info.contains(&format!("runtime=\"{expected}\"")), "{info}");
    assert!(info.ends_with(" 1"), "{info}");
    stop(child);
}

#[test]
fn tensorrt_without_a_gpu_refuses_to_start_and_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let output = serve(dir.path(), free_port())
        .env("PLATESCORE_EXECUTION_PROVIDER", "tensorrt")
        .output()
        .unwrap();
    let stderr = plain(&String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "it started:\n{stderr}");
    assert!(stderr.contains("`tensorrt` cannot be used"), "{stderr}");
    if UNBUNDLED.is_empty() {
        // The bundled library is a CPU build; and on a machine without a GPU, that is
        // missing too.
        assert!(stderr.contains("built without TensorRT"), "{stderr}");
        if !std::path::Path::new("/dev/nvidia0").exists() {
            assert!(
                stderr.contains("no NVIDIA GPU device is visible"),
                "{stderr}"
            );
        }
    } else {
        assert!(
            stderr.contains("needs the ONNX Runtime library"),
            "{stderr}"
        );
    }
    assert!(
        stderr.contains("PLATESCORE_EXECUTION_PROVIDER_FALLBACK=true"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("platescore ready"),
        "it must not serve: {stderr}"
    );
}

#[test]
fn with_fallback_allowed_tensorrt_serves_on_the_cpu_and_says_so() {
    let expected = expected_cpu_runtime();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = serve(dir.path(), port)
        .env("PLATESCORE_EXECUTION_PROVIDER", "tensorrt")
        .env("PLATESCORE_EXECUTION_PROVIDER_FALLBACK", "true")
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    let (_, log) = wait_until_ready(&lines);
    if expected == "ort-cpu" {
        assert!(log.contains("execution provider fallback"), "{log}");
        assert!(log.contains("tensorrt: "), "the reason is logged: {log}");
    }
    let (status, body) = get(&format!("http://127.0.0.1:{port}/health/ready"));
    assert_eq!(status, 200, "{body}");
    let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(readiness["runtime"], expected, "{body}");
    stop(child);
}

/// `platescore healthcheck` with the node's own settings: green while it serves, red after.
#[test]
fn healthcheck_follows_the_node_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let healthcheck = || {
        platescore(dir.path())
            .env("PLATESCORE_LISTEN", &listen)
            .arg("healthcheck")
            .output()
            .unwrap()
    };
    let mut child = serve(dir.path(), port)
        .args(["--role", "api"])
        .env("PLATESCORE_CREATE_FIRST_PARTNER", "false")
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    wait_until_ready(&lines);

    let green = healthcheck();
    assert!(
        green.status.success(),
        "{}",
        String::from_utf8_lossy(&green.stderr)
    );
    assert!(String::from_utf8_lossy(&green.stdout).contains("\"status\":\"ok\""));
    stop(child);

    let red = healthcheck();
    assert!(!red.status.success());
    assert!(
        String::from_utf8_lossy(&red.stderr).contains("/health/ready"),
        "{}",
        String::from_utf8_lossy(&red.stderr)
    );
    // Told not to, the first start created no partner.
    let listing = platescore(dir.path())
        .args(["partners", "list"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listing.stdout).lines().count(), 1);
}

/// Four API nodes start at the same moment on one fresh PostgreSQL database, all asked to
/// create the first partner: the schema is migrated once, one partner exists, and every
/// node is healthy. Runs under `.ci/with-postgres` (PLATESCORE_TEST_DATABASE_URL).
#[test]
fn four_nodes_starting_together_migrate_once_and_create_one_partner() {
    let Ok(admin_url) = std::env::var("PLATESCORE_TEST_DATABASE_URL") else {
        eprintln!("skipped: needs PLATESCORE_TEST_DATABASE_URL (run under .ci/with-postgres)");
        return;
    };
    let database_url = fresh_postgres_database(&admin_url);
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let start = std::sync::Arc::new(std::sync::Barrier::new(ports.len()));
    let nodes: Vec<(Child, mpsc::Receiver<String>)> = std::thread::scope(|scope| {
        let spawned: Vec<_> = ports
            .iter()
            .map(|&port| {
                let mut command = serve(dir.path(), port);
                command
                    .args(["--role", "api"])
                    .env("DATABASE_URL", &database_url)
                    .env("PLATESCORE_CREATE_FIRST_PARTNER", "true");
                let start = start.clone();
                scope.spawn(move || {
                    start.wait();
                    let mut child = command.spawn().unwrap();
                    let lines = stderr_lines(&mut child);
                    (child, lines)
                })
            })
            .collect();
        spawned.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut applied = 0;
    let mut banners = 0;
    for ((child, lines), port) in nodes.into_iter().zip(&ports) {
        let (_, log) = wait_until_ready(&lines);
        applied += log
            .lines()
            .find(|l| l.contains("database schema up to date"))
            .and_then(|l| l.split("applied=").nth(1))
            .and_then(|n| n.split_whitespace().next()?.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no migration count logged:\n{log}"));
        let (status, body) = get(&format!("http://127.0.0.1:{port}/health/ready"));
        assert_eq!(status, 200, "{body}");
        // The banner follows the ready line; give the node a moment to print it.
        let mut rest = String::new();
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
            rest.push_str(&line);
        }
        banners += usize::from(rest.contains("Created a first partner"));
        stop(child);
    }
    let migrations = migration_count();
    assert_eq!(applied, migrations, "each migration applied exactly once");
    assert_eq!(banners, 1, "one node printed a first key");
    let listing = platescore(dir.path())
        .env("DATABASE_URL", &database_url)
        .args(["partners", "list"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout).lines().count(),
        2,
        "header plus one partner"
    );
}

/// Creates an empty database beside the one `admin_url` names; returns its URL.
fn fresh_postgres_database(admin_url: &str) -> String {
    use sea_orm::ConnectionTrait;
    let name = format!("platescore_cli_{}", uuid::Uuid::new_v4().simple());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let admin = sea_orm::Database::connect(admin_url).await.unwrap();
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            admin.close().await.unwrap();
        });
    let mut url = url::Url::parse(admin_url).unwrap();
    url.set_path(&name);
    url.to_string()
}

/// A node started with `migrate_on_start = false` refuses a schema that lacks a migration it
/// knows, without writing to it, and starts on a newer release's schema (a rolling upgrade, a
/// rollback), whose migrations it does not know.
#[test]
fn a_node_refuses_an_older_schema_and_starts_on_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let api_node = || {
        let mut command = serve(dir.path(), port);
        command
            .args(["--role", "api"])
            .env("PLATESCORE_MIGRATE_ON_START", "false");
        command
    };
    let refused = api_node().output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let migrations = migration_count();
    assert!(
        stderr.contains(&format!("{migrations} migration(s) pending")),
        "{stderr}"
    );

    let migrate = || platescore(dir.path()).arg("migrate").output().unwrap();
    let first = migrate();
    assert!(first.status.success());
    assert!(String::from_utf8_lossy(&first.stderr)
        .contains(&format!("{migrations} migration(s) applied")));

    // The next release's migration, applied by its migrate job.
    let database = format!("sqlite://{}", dir.path().join("platescore.db").display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sea_orm::ConnectionTrait;
            let db = sea_orm::Database::connect(&database).await.unwrap();
            db.execute_unprepared(
                "INSERT INTO seaql_migrations (version, applied_at) \
                 VALUES ('m20991231_000001_from_the_next_release', 0)",
            )
            .await
            .unwrap();
            db.close().await.unwrap();
        });
    let mut child = api_node().spawn().unwrap();
    let lines = stderr_lines(&mut child);
    wait_until_ready(&lines);
    let (status, body) = get(&format!("http://127.0.0.1:{port}/health/ready"));
    assert_eq!(status, 200, "{body}");
    stop(child);
    let again = migrate();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 migration(s) applied"));
}

/// The migrations in `migration/src` (files named `m<date>_…`).
fn migration_count() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migration/src"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("m20")
        })
        .count()
}

#[test]
fn eval_reports_food_accuracy_label_scores_the_gap_and_one_row_per_photo() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    for (from, to) in [
        ("lemon.jpg", "food/fruit_lemon/lemon.jpg"),
        ("apple.jpg", "food/fruit_apple/apple.jpg"),
        ("pizza.jpg", "food/pizza/pizza.jpg"),
        ("awkward/truncated_progressive.jpg", "food/pizza/broken.jpg"),
        ("cat.jpg", "nonfood/animal/cat.jpg"),
        ("document.png", "nonfood/document/page.png"),
    ] {
        let to = photos.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(format!("tests/fixtures/{from}"), to).unwrap();
    }
    let labels = dir.path().join("labels.toml");
    std::fs::write(
        &labels,
        "healthy = [\"fruit_*\"]\nindulgent = [\"pizza\"]\n",
    )
    .unwrap();
    let csv = dir.path().join("rows.csv");
    let eval = |extra: &[&str]| {
        platescore(dir.path())
            .env(
                "PLATESCORE_MODELS_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/models"),
            )
            .args(["eval", "--model", "food-scorer", "--labels"])
            .arg(&labels)
            .arg("--csv")
            .arg(&csv)
            .args(extra)
            .arg(&photos)
            .output()
            .unwrap()
    };
    let output = eval(&["--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["model"], "food-scorer");
    assert_eq!(report["photos"], 6);
    assert_eq!(report["errors"], 1);
    let rows = report["rows"].as_array().unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["path"].as_str().unwrap().ends_with(name))
            .unwrap()
    };
    assert!(row("broken.jpg")["error"]
        .as_str()
        .unwrap()
        .starts_with("image_corrupt"));
    // The figures follow from the rows.
    assert_eq!(report["food_recall"], 1.0, "{report}");
    assert_eq!(report["specificity"], 1.0, "{report}");
    assert_eq!(report["balanced_accuracy"], 1.0, "{report}");
    let score = |name: &str| row(name)["score"].as_f64().unwrap();
    let healthy = (score("lemon.jpg") + score("apple.jpg")) / 2.0;
    let gap = report["gap"]["gap"].as_f64().unwrap();
    assert!(
        (gap - (healthy - score("pizza.jpg"))).abs() < 1e-3,
        "{report}"
    );
    assert!(gap > 1.0, "{report}");
    assert_eq!(report["gap"]["indulgent_scored"], 1);
    assert_eq!(report["confusion"]["pizza"]["pizza"], 1, "{report}");
    let pizza = report["labels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["label"] == "pizza")
        .unwrap();
    assert_eq!(pizza["photos"], 1);
    assert_eq!(pizza["mean_score"].as_f64().unwrap(), score("pizza.jpg"));
    let lines = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(lines.lines().count(), 7, "{lines}");
    assert!(lines.starts_with("path,kind,label,is_food,score,"));

    let output = eval(&[]);
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("balanced accuracy 1.000"), "{table}");
    assert!(table.contains("not scored:"), "{table}");

    let unknown = platescore(dir.path())
        .args(["eval", "--model", "no-such-model"])
        .arg(&photos)
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no model \"no-such-model\""));
}
