//! The model runtime a user gets from the binary as built, with no variable set: ONNX
//! Runtime's bundled CPU library by default, and GPU providers that refuse to start rather
//! than pretend, unless fallback is allowed.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

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

/// `platescore serve` on a free port with a fresh data folder, and no runtime variable
/// inherited from the caller's environment.
fn serve(data_dir: &std::path::Path, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_platescore"));
    for var in [
        "ORT_DYLIB_PATH",
        "PLATESCORE_ORT_LIBRARY",
        "PLATESCORE_RUNTIME",
        "PLATESCORE_EXECUTION_PROVIDER",
        "PLATESCORE_EXECUTION_PROVIDER_FALLBACK",
        "PLATESCORE_MAX_BATCH",
        "PLATESCORE_CONFIG",
        "DATABASE_URL",
        "PLATESCORE_OBJECT_STORE",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PLATESCORE_DATA_DIR", data_dir)
        .env("PLATESCORE_LISTEN", format!("127.0.0.1:{port}"))
        .env("PLATESCORE_LOG_FORMAT", "text")
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
