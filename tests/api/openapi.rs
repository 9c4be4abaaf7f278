use crate::helpers::TestApp;

/// `docs/openapi.json` is generated from the code; regenerate it with
/// `cargo run -- openapi --output docs/openapi.json` when this fails.
#[test]
fn the_committed_spec_matches_the_code() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .expect("docs/openapi.json exists");
    assert!(
        committed == platescore::api::spec_json(),
        "docs/openapi.json is stale: run `cargo run -- openapi --output docs/openapi.json`"
    );
}

#[tokio::test]
async fn the_spec_and_docs_are_served_without_a_cdn() {
    let app = TestApp::spawn().await;
    let spec: serde_json::Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec["openapi"], "3.0.0");
    for path in [
        "/enqueue",
        "/status/{job_id}",
        "/status",
        "/jobs",
        "/health/ready",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the spec"
        );
    }
    let enqueue = &spec["paths"]["/enqueue"]["post"];
    assert_eq!(enqueue["operationId"], "enqueue");
    let media: Vec<_> = enqueue["requestBody"]["content"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(
        media.contains(&"application/json".to_string())
            && media.contains(&"multipart/form-data".to_string())
    );

    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger") || html.contains("Swagger"));
    assert!(
        !html.contains("cdn.") && !html.contains("unpkg.com"),
        "docs must not load assets from a CDN"
    );
}
