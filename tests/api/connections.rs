//! The listener's timeouts and the upload memory budget, with raw TCP clients that stall
//! where slow clients do. Timeouts are set to 1 s here; each test asserts that the server
//! closes the connection, within a bound generous enough for a loaded machine.

use std::time::{Duration, Instant};

use platescore::config::Config;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{fixture, TestApp, TestOptions};

/// Far more than the 1 s timeouts these tests set; only a server that never closes fails it.
const GENEROUS: Duration = Duration::from_secs(15);

async fn app_with(configure: impl FnOnce(&mut Config) + 'static) -> TestApp {
    TestApp::spawn_with(TestOptions {
        configure: Box::new(configure),
        ..TestOptions::default()
    })
    .await
}

/// Reads until the server closes the connection; what it sent, and when it closed.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Instant) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout_at((started + GENEROUS).into(), stream.read(&mut buffer))
            .await
            .expect("the server must close the connection");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        Instant::now(),
    )
}

async fn health_is_live(app: &TestApp) {
    let response = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn clients_that_stall_or_trickle_their_request_head_are_cut_off_after_the_header_timeout() {
    let app = app_with(|config| {
        config.http_header_timeout_seconds = 1;
        config.http_idle_timeout_seconds = 60;
    })
    .await;
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    let sent = Instant::now();
    stalled.write_all(b"GET /health/li").await.unwrap();
    // A slow loris: a header byte every 100 ms, never the end of the head.
    let mut trickling = TcpStream::connect(app.addr).await.unwrap();
    trickling
        .write_all(b"GET /health/live HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        while trickling.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Instant::now()
    });
    // Meanwhile the server answers everyone else.
    health_is_live(&app).await;
    let (_, closed) = read_until_closed(&mut stalled).await;
    let after = closed - sent;
    assert!(
        after >= Duration::from_millis(500),
        "closed after {after:?}, before the header timeout"
    );
    let trickle_cut = tokio::time::timeout(GENEROUS, trickle)
        .await
        .expect("the trickling client must be cut off")
        .unwrap();
    assert!(trickle_cut - sent < GENEROUS);
    health_is_live(&app).await;
}

#[tokio::test]
async fn a_client_that_stalls_in_its_body_gets_408_and_is_cut_off_after_the_body_timeout() {
    let app = app_with(|config| {
        config.http_body_timeout_seconds = 1;
    })
    .await;
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /enqueue HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 1000\r\n\r\n",
        app.addr, app.key
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(b"--xyz\r\nCon").await.unwrap();
    let sent = Instant::now();
    let (answer, closed) = read_until_closed(&mut slow).await;
    let after = closed - sent;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(
        after >= Duration::from_millis(500),
        "closed after {after:?}, before the body timeout"
    );
    health_is_live(&app).await;
}

#[tokio::test]
async fn connections_without_a_request_are_closed_after_the_idle_timeout() {
    let app = app_with(|config| {
        config.http_header_timeout_seconds = 60;
        config.http_idle_timeout_seconds = 1;
    })
    .await;
    // One that never sends a byte.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let connected = Instant::now();
    // One kept alive after its answer.
    let mut kept = TcpStream::connect(app.addr).await.unwrap();
    kept.write_all(format!("GET /health/live HTTP/1.1\r\nHost: {}\r\n\r\n", app.addr).as_bytes())
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut kept).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (nothing, closed) = read_until_closed(&mut silent).await;
    assert!(nothing.is_empty(), "{nothing}");
    assert!(closed - connected >= Duration::from_millis(500));
}

/// A multipart upload of `image`, as raw bytes.
fn multipart_upload(image: &[u8]) -> (String, Vec<u8>) {
    let mut body =
        b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"m.jpg\"\r\n\
Content-Type: image/jpeg\r\n\r\n"
            .to_vec();
    body.extend_from_slice(image);
    body.extend_from_slice(b"\r\n--xyz--\r\n");
    ("multipart/form-data; boundary=xyz".into(), body)
}

#[tokio::test]
async fn uploads_over_the_memory_budget_wait_their_turn_and_are_not_refused() {
    // Room for one 50 KB body at a time.
    let app = app_with(|config| {
        config.max_upload_bytes = 64 * 1024;
        config.upload_memory_budget_bytes = 64 * 1024;
    })
    .await;
    let mut first_image = fixture("apple.jpg");
    first_image.extend_from_slice(&[0; 20_000]);
    let (content_type, body) = multipart_upload(&first_image);
    assert!(body.len() > 40 * 1024 && body.len() < 64 * 1024);
    // The first upload holds its share of the budget while its body trickles in.
    let mut first = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /enqueue HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        app.addr,
        app.key,
        body.len()
    );
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&body[..1000]).await.unwrap();

    let second = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/enqueue");
        let key = app.key.clone();
        async move {
            let mut image = fixture("lemon.jpg");
            image.extend_from_slice(&[0; 20_000]);
            let form = reqwest::multipart::Form::new().part(
                "image",
                reqwest::multipart::Part::bytes(image).file_name("l.jpg"),
            );
            client
                .post(url)
                .bearer_auth(key)
                .multipart(form)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "the second upload must wait while the first holds the budget"
    );
    first.write_all(&body[1000..]).await.unwrap();
    let (answer, _) = read_until_closed(&mut first).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(second.await.unwrap(), 202);
}
