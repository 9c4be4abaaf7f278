//! Bad input: each case gets its status, a problem body with a stable code, and leaves no
//! trace (no job row, no object).

use reqwest::multipart::{Form, Part};
use serde_json::json;

use crate::helpers::{assert_problem, fixture, TestApp, TestOptions};

async fn assert_nothing_written(app: &TestApp) {
    assert_eq!(
        app.list_jobs(&app.key, "").await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert!(
        app.stored_objects().is_empty(),
        "{:?}",
        app.stored_objects()
    );
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG with no pixel data, only a valid header declaring `width`×`height`.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (len, chunk) in [(13u32, ihdr), (0, b"IDAT".to_vec()), (0, b"IEND".to_vec())] {
        png.extend(len.to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
    }
    png
}

#[tokio::test]
async fn no_image_and_no_url_is_422() {
    let app = TestApp::spawn().await;
    let form = Form::new().text("webhook_url", "https://partner.example.com/hook");
    assert_problem(app.enqueue_form(&app.key, form).await, 422, "image_missing").await;
    let response = app
        .enqueue_json(
            &app.key,
            json!({"webhook_url": "https://partner.example.com/hook"}),
        )
        .await;
    let body = assert_problem(response, 422, "validation_failed").await;
    assert!(
        body["detail"].as_str().unwrap().contains("image_url"),
        "{body}"
    );
    assert_nothing_written(&app).await;
}

fn small_limit() -> TestOptions {
    TestOptions {
        configure: Box::new(|config| config.max_upload_bytes = 64 * 1024),
        ..TestOptions::default()
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_by_its_declared_length() {
    let app = TestApp::spawn_with(small_limit()).await;
    let response = app
        .upload(&app.key, vec![0xFF; 100 * 1024], "big.jpg")
        .await;
    assert_problem(response, 413, "payload_too_large").await;
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_413_without_reading_it_all() {
    let app = TestApp::spawn_with(small_limit()).await;
    // No Content-Length: a chunked body that would go on for 64 MiB.
    let boundary = "XbOuNdArY";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n\u{0}"
    );
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let chunks = futures_util::stream::iter(
        std::iter::once(head.into_bytes()).chain(std::iter::repeat_n(vec![0xAB; 64 * 1024], 1024)),
    )
    .map(move |chunk| {
        counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
        Ok::<_, std::io::Error>(chunk)
    });
    let response = app
        .client
        .post(app.url("/enqueue"))
        .bearer_auth(&app.key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    match response {
        Ok(response) => {
            assert_problem(response, 413, "payload_too_large").await;
        }
        // The server may answer and close before the client has finished sending.
        Err(err) => assert!(err.is_request() || err.is_body(), "{err}"),
    }
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < 32 * 1024 * 1024,
        "the client sent {sent} bytes before the refusal"
    );
    assert_nothing_written(&app).await;
}

use futures_util::StreamExt;

#[tokio::test]
async fn bytes_that_are_not_an_image_are_415_whatever_their_declared_type() {
    let app = TestApp::spawn().await;
    for (bytes, name) in [
        (b"%PDF-1.7 not an image at all".to_vec(), "menu.jpg"),
        (b"GIF89a\x01\x00\x01\x00".to_vec(), "anim.gif"),
        (
            b"<svg xmlns='http://www.w3.org/2000/svg'/>".to_vec(),
            "logo.png",
        ),
    ] {
        let form = Form::new().part(
            "image",
            Part::bytes(bytes)
                .file_name(name)
                .mime_str("image/jpeg")
                .unwrap(),
        );
        assert_problem(
            app.enqueue_form(&app.key, form).await,
            415,
            "unsupported_image_format",
        )
        .await;
    }
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn an_unparseable_image_header_is_422() {
    let app = TestApp::spawn().await;
    let response = app
        .upload(&app.key, b"\xFF\xD8\xFF\xE0garbage".to_vec(), "broken.jpg")
        .await;
    assert_problem(response, 422, "image_unreadable").await;
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn a_header_declaring_too_many_pixels_is_422() {
    let app = TestApp::spawn().await;
    // 10,000 × 10,000 = 100 MP against the default 50 MP, in a 57-byte file.
    let response = app
        .upload(&app.key, png_header(10_000, 10_000), "huge.png")
        .await;
    let body = assert_problem(response, 422, "image_too_large").await;
    assert!(
        body["detail"].as_str().unwrap().contains("10000×10000"),
        "{body}"
    );
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn the_pixel_limit_is_configurable() {
    let app = TestApp::spawn_with(TestOptions {
        configure: Box::new(|config| config.max_image_pixels = 100_000),
        ..TestOptions::default()
    })
    .await;
    // 348 × 348 = 121,104 pixels.
    assert_problem(
        app.upload(&app.key, fixture("apple.jpg"), "a.jpg").await,
        422,
        "image_too_large",
    )
    .await;
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/enqueue"))
        .bearer_auth(&app.key)
        .header("content-type", "application/json")
        .body(r#"{"image_url": "https://cdn.example.com/a.jpg""#)
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "malformed_json").await;
    let form = Form::new()
        .part(
            "image",
            Part::bytes(fixture("apple.jpg")).file_name("a.jpg"),
        )
        .text("metadata", "{not json");
    assert_problem(
        app.enqueue_form(&app.key, form).await,
        400,
        "malformed_json",
    )
    .await;
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn json_of_the_wrong_shape_is_422() {
    let app = TestApp::spawn().await;
    let response = app
        .enqueue_json(
            &app.key,
            json!({"image_url": {"href": "https://cdn.example.com/a.jpg"}}),
        )
        .await;
    assert_problem(response, 422, "url_invalid").await;
    // A number where the schema wants a string is refused, not turned into one.
    let response = app
        .enqueue_json(
            &app.key,
            json!({"image_url": "https://cdn.example.com/a.jpg", "model_id": 7}),
        )
        .await;
    assert_problem(response, 422, "model_id_invalid").await;
    // `null` where the schema does not allow it is refused, not read as absent.
    let response = app
        .enqueue_json(
            &app.key,
            json!({"image_url": "https://cdn.example.com/a.jpg", "diets": null}),
        )
        .await;
    assert_problem(response, 422, "diet_invalid").await;
    // U+0000 is refused where a database could not keep it.
    let response = app
        .enqueue_json(
            &app.key,
            json!({"image_url": "https://cdn.example.com/a.jpg", "metadata": {"note": "a\u{0}b"}}),
        )
        .await;
    assert_problem(response, 422, "metadata_invalid").await;
    let response = app
        .post_json(
            &app.key,
            "/webhooks",
            json!({"url": "https://hooks.example.com/x", "description": "a\u{0}b"}),
        )
        .await;
    assert_problem(response, 422, "validation_failed").await;
    let response = app
        .enqueue_json(
            &app.key,
            json!({"image_url": "https://cdn.example.com/a.jpg", "metadata": [1, 2]}),
        )
        .await;
    assert_problem(response, 422, "metadata_invalid").await;
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn bad_url_schemes_and_private_hosts_are_422() {
    let app = TestApp::spawn().await;
    for (url, code) in [
        ("ftp://cdn.example.com/a.jpg", "url_invalid"),
        ("file:///etc/passwd", "url_invalid"),
        ("not a url", "url_invalid"),
        ("http://127.0.0.1:8080/a.jpg", "url_forbidden_host"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "url_forbidden_host",
        ),
        ("http://10.0.0.8/a.jpg", "url_forbidden_host"),
        // IPv6 literals are not in the published URL pattern.
        ("http://[::1]/a.jpg", "url_invalid"),
        ("http://localhost/a.jpg", "url_forbidden_host"),
    ] {
        let response = app.enqueue_json(&app.key, json!({"image_url": url})).await;
        assert_problem(response, 422, code).await;
        let response = app
            .enqueue_json(
                &app.key,
                json!({"image_url": "https://cdn.example.com/a.jpg", "webhook_url": url}),
            )
            .await;
        let body = assert_problem(response, 422, code).await;
        assert!(
            body["detail"].as_str().unwrap().starts_with("webhook_url"),
            "{body}"
        );
    }
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn the_outbound_allow_list_admits_listed_ranges() {
    let app = TestApp::spawn_with(TestOptions {
        configure: Box::new(|config| config.outbound_allow_cidrs = "127.0.0.0/8".into()),
        ..TestOptions::default()
    })
    .await;
    let response = app
        .enqueue_json(&app.key, json!({"image_url": "http://127.0.0.1:9/a.jpg"}))
        .await;
    assert_eq!(response.status(), 202);
    let response = app
        .enqueue_json(&app.key, json!({"image_url": "http://10.0.0.8/a.jpg"}))
        .await;
    assert_problem(response, 422, "url_forbidden_host").await;
}

#[tokio::test]
async fn an_unknown_job_is_404() {
    let app = TestApp::spawn().await;
    let response = app
        .status(&app.key, &uuid::Uuid::now_v7().to_string())
        .await;
    assert_problem(response, 404, "job_not_found").await;
    assert_problem(
        app.status(&app.key, "not-a-uuid").await,
        404,
        "job_not_found",
    )
    .await;
}

#[tokio::test]
async fn unsupported_content_types_and_unknown_routes_are_problems_too() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/enqueue"))
        .bearer_auth(&app.key)
        .header("content-type", "image/jpeg")
        .body(fixture("apple.jpg"))
        .send()
        .await
        .unwrap();
    assert_problem(response, 415, "unsupported_content_type").await;
    let response = app
        .client
        .get(app.url("/nope"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_problem(response, 404, "not_found").await;
    let response = app
        .client
        .delete(app.url("/enqueue"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_problem(response, 405, "method_not_allowed").await;
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn bad_idempotency_keys_and_model_ids_are_422() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/enqueue"))
        .bearer_auth(&app.key)
        .header("Idempotency-Key", "x".repeat(300))
        .json(&json!({"image_url": "https://cdn.example.com/a.jpg"}))
        .send()
        .await
        .unwrap();
    assert_problem(response, 422, "idempotency_key_invalid").await;
    let response = app
        .enqueue_json(
            &app.key,
            json!({"image_url": "https://cdn.example.com/a.jpg", "model_id": "../etc"}),
        )
        .await;
    assert_problem(response, 422, "model_id_invalid").await;
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn oversized_metadata_is_422() {
    let app = TestApp::spawn().await;
    let response = app
        .enqueue_json(
            &app.key,
            json!({"image_url": "https://cdn.example.com/a.jpg", "metadata": {"notes": "x".repeat(20_000)}}),
        )
        .await;
    assert_problem(response, 422, "metadata_invalid").await;
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn unknown_diet_tags_and_malformed_languages_are_422() {
    let app = TestApp::spawn().await;
    for (body, code) in [
        (
            serde_json::json!({"image_url": "https://example.com/a.jpg", "diets": ["carnivore"]}),
            "diet_invalid",
        ),
        (
            serde_json::json!({"image_url": "https://example.com/a.jpg", "lang": "English!"}),
            "lang_invalid",
        ),
    ] {
        let response = app.enqueue_json(&app.key, body).await;
        let problem = assert_problem(response, 422, code).await;
        assert!(problem["detail"]
            .as_str()
            .unwrap()
            .contains(if code == "diet_invalid" {
                "carnivore"
            } else {
                "English!"
            }));
    }
    assert!(app.list_jobs(&app.key, "").await["jobs"]
        .as_array()
        .unwrap()
        .is_empty());
}
