use crate::helpers::{ObjectBackend, TestApp, TestOptions};

#[tokio::test]
async fn liveness_needs_no_key() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn readiness_reports_each_dependency() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "ok");
    assert_eq!(body["object_store"], "ok");
}

#[tokio::test]
async fn readiness_fails_when_the_object_store_is_gone() {
    // An S3 endpoint with nothing listening: the bucket cannot be reached.
    let unused_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = TestApp::spawn_with(TestOptions {
        backend: ObjectBackend::S3,
        configure: Box::new(move |config| {
            config.s3_endpoint_url = Some(format!("http://{unused_port}"));
        }),
        ..TestOptions::default()
    })
    .await;
    let response = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["database"], "ok");
    assert_eq!(body["object_store"], "unavailable");
}

#[tokio::test]
async fn readiness_reports_draining_while_a_node_shuts_down() {
    let mut app = TestApp::spawn_with(TestOptions {
        configure: Box::new(|config| config.shutdown_drain_ms = 2_000),
        ..TestOptions::default()
    })
    .await;
    let ready = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // The same keep-alive client, as a load balancer's prober would hold.
    let client = app.client.clone();
    let url = app.url("/health/ready");
    let stopping = tokio::spawn(async move { app.stop().await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let body: serde_json::Value = loop {
        let response = client.get(&url).send().await.unwrap();
        if response.status() == 503 {
            break response.json().await.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never turned false"
        );
        tokio::task::yield_now().await;
    };
    assert_eq!(body["status"], "draining");
    assert_eq!(body["database"], "ok");
    stopping.await.unwrap();
}
