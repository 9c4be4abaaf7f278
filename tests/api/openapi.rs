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

/// The problem codes are one enum; the spec publishes it, and `docs/api.md` lists each code
/// with its status.
#[test]
fn every_problem_code_is_in_the_spec_and_the_docs_with_its_status() {
    let spec: serde_json::Value = serde_json::from_str(&platescore::api::spec_json()).unwrap();
    let codes = spec["components"]["schemas"]["ProblemCode"]["enum"]
        .as_array()
        .expect("ProblemCode is an enum in the spec");
    assert!(codes.len() > 20);
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md"))
        .expect("docs/api.md exists");
    for code in codes {
        let code = code.as_str().unwrap();
        let parsed: platescore::api::problem::ProblemCode =
            poem_openapi::types::ParseFromJSON::parse_from_json(Some(code.into())).unwrap();
        let row = format!("| {} | `{code}` |", parsed.status().as_u16());
        assert!(docs.contains(&row), "docs/api.md lacks the row `{row}`");
    }
}
