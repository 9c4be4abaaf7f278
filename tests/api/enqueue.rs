use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{fixture, ObjectBackend, TestApp, TestOptions};

fn is_utc_rfc3339(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

async fn assert_upload_is_stored(app: &TestApp) {
    let image = fixture("apple.jpg");
    let form = Form::new()
        .part(
            "image",
            Part::bytes(image.clone())
                .file_name("apple.jpg")
                .mime_str("image/jpeg")
                .unwrap(),
        )
        .text(
            "webhook_url",
            "https://partner.example.com/hooks/platescore",
        )
        .text("metadata", r#"{"user_id": "u-42", "meal": "lunch"}"#)
        .text("model_id", "food-scorer");
    let response = app.enqueue_form(&app.key, form).await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job: Value = response.json().await.unwrap();

    let id = job["job_id"].as_str().unwrap();
    assert_eq!(location, format!("/status/{id}"));
    assert_eq!(job["status"], "queued");
    assert!(
        is_utc_rfc3339(&job["created_at"]) && is_utc_rfc3339(&job["updated_at"]),
        "{job}"
    );
    assert_eq!(job["result"], Value::Null);
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["processing_time_ms"], Value::Null);

    let sha = hex::encode(Sha256::digest(&image));
    let request = &job["request"];
    assert_eq!(request["image"]["source"], "upload");
    assert_eq!(request["image"]["sha256"], sha);
    assert_eq!(request["image"]["bytes"], image.len());
    assert_eq!(request["image"]["format"], "jpeg");
    assert_eq!(
        (
            request["image"]["width"].as_i64(),
            request["image"]["height"].as_i64()
        ),
        (Some(348), Some(348))
    );
    assert_eq!(
        request["webhook_url"],
        "https://partner.example.com/hooks/platescore"
    );
    assert_eq!(
        request["metadata"],
        json!({"user_id": "u-42", "meal": "lunch"})
    );
    assert_eq!(request["model_id"], "food-scorer");

    // The bytes are in the store under the job's own key, whole.
    let objects = app.stored_objects();
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(objects[0].ends_with(id), "{objects:?}");
    assert_eq!(std::fs::read(&objects[0]).unwrap(), image);

    // And the job reads back the same.
    let read: Value = app.status(&app.key, id).await.json().await.unwrap();
    assert_eq!(read, job);
}

#[tokio::test]
async fn an_upload_is_hashed_stored_and_queued() {
    let app = TestApp::spawn().await;
    assert_upload_is_stored(&app).await;
}

#[tokio::test]
async fn an_upload_is_stored_in_s3() {
    let app = TestApp::spawn_with(TestOptions {
        backend: ObjectBackend::S3,
        ..TestOptions::default()
    })
    .await;
    assert_upload_is_stored(&app).await;
}

#[tokio::test]
async fn the_same_image_twice_is_two_jobs_each_with_its_own_copy() {
    let app = TestApp::spawn().await;
    let first: Value = app
        .upload(&app.key, fixture("apple.jpg"), "a.jpg")
        .await
        .json()
        .await
        .unwrap();
    let second: Value = app
        .upload(&app.key, fixture("apple.jpg"), "b.jpg")
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(first["job_id"], second["job_id"]);
    assert_eq!(
        first["request"]["image"]["sha256"],
        second["request"]["image"]["sha256"]
    );
    // A copy per job: deleting one job's image can never take the other's.
    assert_eq!(app.stored_objects().len(), 2);
}

#[tokio::test]
async fn webp_is_sniffed_from_the_bytes_not_the_name() {
    let app = TestApp::spawn().await;
    let form = Form::new().part(
        "image",
        Part::bytes(fixture("flower.webp"))
            .file_name("photo.jpg")
            .mime_str("image/jpeg")
            .unwrap(),
    );
    let response = app.enqueue_form(&app.key, form).await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["request"]["image"]["format"], "webp");
    assert_eq!(job["request"]["image"]["width"], 480);
}

#[tokio::test]
async fn an_image_url_is_accepted_as_json_and_not_fetched_yet() {
    let app = TestApp::spawn().await;
    let response = app
        .enqueue_json(
            &app.key,
            json!({
                "image_url": "https://cdn.example.com/meals/123.jpg",
                "webhook_url": "https://partner.example.com/hook",
                "metadata": {"diary_entry": 7},
                "model_id": "food-scorer"
            }),
        )
        .await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["status"], "queued");
    assert_eq!(job["request"]["image"]["source"], "url");
    assert_eq!(
        job["request"]["image"]["url"],
        "https://cdn.example.com/meals/123.jpg"
    );
    assert_eq!(job["request"]["image"]["sha256"], Value::Null);
    assert_eq!(job["request"]["metadata"], json!({"diary_entry": 7}));
    assert!(app.stored_objects().is_empty());
}

#[tokio::test]
async fn a_multipart_form_takes_an_image_and_refuses_parts_it_does_not_know() {
    let app = TestApp::spawn().await;
    // A URL is enqueued as JSON; in a form it is an unknown part, named in the problem.
    let form = Form::new()
        .part(
            "image",
            Part::bytes(fixture("apple.jpg")).file_name("apple.jpg"),
        )
        .text("image_url", "https://cdn.example.com/meals/9.png");
    let problem = crate::helpers::assert_problem(
        app.enqueue_form(&app.key, form).await,
        422,
        "validation_failed",
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("image_url"));
    let form = Form::new()
        .part(
            "image",
            Part::bytes(fixture("apple.jpg")).file_name("apple.jpg"),
        )
        .text("webhookUrl", "https://hooks.example.com/x");
    let problem = crate::helpers::assert_problem(
        app.enqueue_form(&app.key, form).await,
        422,
        "validation_failed",
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("webhookUrl"));
    // JSON, too, names a field it does not know rather than ignoring it.
    let response = app
        .enqueue_json(
            &app.key,
            json!({"image_url": "https://cdn.example.com/a.jpg", "webhookUrl": "https://hooks.example.com/x"}),
        )
        .await;
    let problem = crate::helpers::assert_problem(response, 422, "validation_failed").await;
    assert!(problem["detail"].as_str().unwrap().contains("webhookUrl"));
    assert_eq!(app.list_jobs(&app.key, "").await["jobs"], json!([]));
}

#[tokio::test]
async fn an_idempotency_key_replays_the_same_job() {
    let app = TestApp::spawn().await;
    let send = |body: Value| {
        app.client
            .post(app.url("/enqueue"))
            .bearer_auth(&app.key)
            .header("Idempotency-Key", "order-1234")
            .json(&body)
            .send()
    };
    let body = json!({"image_url": "https://cdn.example.com/a.jpg", "metadata": {"a": 1, "b": 2}});
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    // Same body, keys in another order: the same job.
    let again =
        send(json!({"metadata": {"b": 2, "a": 1}, "image_url": "https://cdn.example.com/a.jpg"}))
            .await
            .unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["job_id"], first["job_id"]);

    let other = send(json!({"image_url": "https://cdn.example.com/b.jpg"}))
        .await
        .unwrap();
    crate::helpers::assert_problem(other, 409, "idempotency_key_reused").await;
    assert_eq!(
        app.list_jobs(&app.key, "").await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Keys are per partner: another partner may use the same one.
    let other_partner = app.new_partner("other").await;
    let theirs = app
        .client
        .post(app.url("/enqueue"))
        .bearer_auth(&other_partner)
        .header("Idempotency-Key", "order-1234")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 202);
    let theirs: Value = theirs.json().await.unwrap();
    assert_ne!(theirs["job_id"], first["job_id"]);
}

#[tokio::test]
async fn concurrent_retries_with_one_idempotency_key_make_one_job() {
    let app = TestApp::spawn().await;
    let image = fixture("apple.jpg");
    let requests = (0..8).map(|_| {
        app.client
            .post(app.url("/enqueue"))
            .bearer_auth(&app.key)
            .header("Idempotency-Key", "burst")
            .multipart(Form::new().part("image", Part::bytes(image.clone()).file_name("a.jpg")))
            .send()
    });
    let responses = futures_util::future::join_all(requests).await;
    let mut ids = std::collections::HashSet::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), 202);
        let job: Value = response.json().await.unwrap();
        ids.insert(job["job_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(
        app.list_jobs(&app.key, "").await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(app.stored_objects().len(), 1);
}

/// Concurrent enqueues are inserted together (a group commit); a burst that mixes distinct
/// uploads with retries of one key still makes one job per upload and one for the key, each
/// on its own turn.
#[tokio::test]
async fn a_burst_of_uploads_and_retries_makes_one_job_each_on_its_own_turn() {
    use sea_orm::EntityTrait;
    let app = TestApp::spawn().await;
    let image = fixture("apple.jpg");
    let requests = (0..24).map(|n| {
        let mut bytes = image.clone();
        let mut request = app.client.post(app.url("/enqueue")).bearer_auth(&app.key);
        if n % 3 == 0 {
            request = request.header("Idempotency-Key", "burst");
        } else {
            bytes.extend_from_slice(format!("distinct {n}").as_bytes());
        }
        request
            .multipart(Form::new().part("image", Part::bytes(bytes).file_name("a.jpg")))
            .send()
    });
    let responses = futures_util::future::join_all(requests).await;
    let mut keyed = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    for (n, response) in responses.into_iter().enumerate() {
        let response = response.unwrap();
        assert_eq!(response.status(), 202);
        let job: Value = response.json().await.unwrap();
        let id = job["job_id"].as_str().unwrap().to_string();
        if n % 3 == 0 {
            keyed.insert(id.clone());
        }
        ids.insert(id);
    }
    assert_eq!(keyed.len(), 1);
    assert_eq!(ids.len(), 17);
    // The app's one partner.
    let mut turns: Vec<i64> = entity::job::Entity::find()
        .all(app.db.reader())
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.turn)
        .collect();
    turns.sort();
    assert_eq!(turns, (1..=17).collect::<Vec<i64>>());
    assert_eq!(app.stored_objects().len(), 17);
}

#[tokio::test]
async fn the_upload_operation_takes_multipart_only() {
    let app = TestApp::spawn().await;
    let form = Form::new()
        .part(
            "image",
            Part::bytes(fixture("apple.jpg")).file_name("apple.jpg"),
        )
        .text("metadata", r#"{"via": "generated client"}"#);
    let response = app
        .client
        .post(app.url("/enqueue/upload"))
        .bearer_auth(&app.key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["request"]["image"]["source"], "upload");
    assert_eq!(
        job["request"]["metadata"],
        json!({"via": "generated client"})
    );

    let response = app
        .client
        .post(app.url("/enqueue/upload"))
        .bearer_auth(&app.key)
        .json(&json!({"image_url": "https://cdn.example.com/a.jpg"}))
        .send()
        .await
        .unwrap();
    crate::helpers::assert_problem(response, 415, "unsupported_content_type").await;
}
