//! The partner contract: client references, what changed since, webhook endpoints changed
//! and tested, key rotation, erasure, typed results and events, and the spec's own promises
//! (examples that fit their schemas, `Allow` on every 405).

use chrono::{Duration, Utc};
use reqwest::multipart::{Form, Part};
use sea_orm::{sea_query::Expr, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{json, Value};

use crate::{
    helpers::{assert_problem, fixture, TestApp, TestOptions},
    receiver::{image_host, Receiver, Reply},
};

fn reference_form(image: &str, reference: &str) -> Form {
    Form::new()
        .part(
            "image",
            Part::bytes(fixture(image)).file_name(image.to_string()),
        )
        .text("client_reference", reference.to_string())
}

#[tokio::test]
async fn a_client_reference_names_one_job_per_partner() {
    let app = TestApp::spawn().await;
    let first = app
        .enqueue_form(&app.key, reference_form("apple.jpg", "meal-42"))
        .await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["request"]["client_reference"], "meal-42");

    // The same request again: the same job, said to be a replay.
    let again = app
        .enqueue_form(&app.key, reference_form("apple.jpg", "meal-42"))
        .await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["job_id"], first["job_id"]);

    // Another photo under the same reference is a conflict, and writes nothing.
    let other = app
        .enqueue_form(&app.key, reference_form("lemon.jpg", "meal-42"))
        .await;
    assert_problem(other, 409, "client_reference_reused").await;
    assert_eq!(
        app.list_jobs(&app.key, "").await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // As JSON, a malformed reference is refused with its own code.
    let bad = app
        .enqueue_json(
            &app.key,
            json!({"image_url": "https://cdn.example.com/a.jpg", "client_reference": "two words"}),
        )
        .await;
    assert_problem(bad, 422, "client_reference_invalid").await;

    // References are per partner, and the listing finds a job by its reference.
    let theirs = app.new_partner("other").await;
    let response = app
        .enqueue_form(&theirs, reference_form("lemon.jpg", "meal-42"))
        .await;
    assert_eq!(response.status(), 202);
    let found = app.list_jobs(&app.key, "?client_reference=meal-42").await;
    let found: Vec<_> = found["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["job_id"])
        .collect();
    assert_eq!(found, [&first["job_id"]]);
}

/// Sets a job's `updated_at`, as a change at that instant would.
async fn changed_at(app: &TestApp, job_id: &str, at: chrono::DateTime<Utc>) {
    entity::job::Entity::update_many()
        .col_expr(entity::job::Column::UpdatedAt, Expr::value(at))
        .filter(entity::job::Column::Id.eq(job_id.parse::<uuid::Uuid>().unwrap()))
        .exec(app.db.writer())
        .await
        .unwrap();
}

async fn enqueue_url(app: &TestApp, i: usize) -> String {
    let response = app
        .enqueue_json(
            &app.key,
            json!({"image_url": format!("https://cdn.example.com/{i}.jpg")}),
        )
        .await;
    assert_eq!(response.status(), 202);
    response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn updated_since_pages_through_every_change_once_while_jobs_keep_changing() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(enqueue_url(&app, i).await);
    }
    // Changes a minute ago, two of them at the very same instant (ordered by id then).
    let base = Utc::now() - Duration::minutes(1);
    for (i, id) in ids.iter().enumerate() {
        let offset = if i == 4 { 3 } else { i as i64 };
        changed_at(&app, id, base + Duration::milliseconds(offset)).await;
    }
    // A change this very moment is not listed yet: one that committed late could still
    // come before it.
    let fresh = enqueue_url(&app, 99).await;

    let since = (base - Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut query = format!("?limit=2&updated_since={}", urlencode(&since));
    let mut pages = 0;
    loop {
        let page = app.list_jobs(&app.key, &query).await;
        pages += 1;
        for job in page["jobs"].as_array().unwrap() {
            seen.push((
                job["job_id"].as_str().unwrap().to_string(),
                job["updated_at"].as_str().unwrap().to_string(),
            ));
        }
        if pages == 2 {
            // Meanwhile a job already listed changes again: it comes back in its new place.
            changed_at(&app, &ids[0], base + Duration::seconds(10)).await;
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                query = format!(
                    "?limit=2&updated_since={}&cursor={cursor}",
                    urlencode(&since)
                )
            }
            None => break,
        }
    }
    let listed: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    let mut expected: Vec<&str> = vec![
        &ids[0], &ids[1], &ids[2], &ids[3], &ids[4], &ids[5], &ids[6],
    ];
    // ids[3] and ids[4] share an instant: ordered by id, which is creation order.
    expected.push(&ids[0]);
    assert_eq!(listed, expected, "oldest change first, every change once");
    assert!(!listed.contains(&fresh.as_str()));
    let mut changes = seen.clone();
    changes.dedup();
    assert_eq!(changes.len(), seen.len(), "no change listed twice");

    // Filters combine with it, and a cursor is checked.
    let none = app
        .list_jobs(
            &app.key,
            &format!("?updated_since={}&status=succeeded", urlencode(&since)),
        )
        .await;
    assert_eq!(none["jobs"], json!([]));
    let response = app
        .client
        .get(app.url("/jobs?cursor=1.000000000_not-a-job"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "invalid_cursor").await;
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

async fn create_endpoint(app: &TestApp, url: &str) -> Value {
    let response = app
        .post_json(
            &app.key,
            "/webhooks",
            json!({"url": url, "description": "kit"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn patch(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .patch(app.url(path))
        .bearer_auth(&app.key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_test_event_is_signed_and_reports_how_it_went() {
    let app = TestApp::spawn_with(TestOptions {
        configure: Box::new(|config| config.outbound_allow_cidrs = "127.0.0.0/8".into()),
        ..TestOptions::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let endpoint = create_endpoint(&app, &receiver.url("/hook")).await;
    let id = endpoint["id"].as_str().unwrap();
    let result: Value = app
        .post_json(&app.key, &format!("/webhooks/{id}/test"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(result["delivered"], true, "{result}");
    assert_eq!(result["attempt"]["status_code"], 200);
    let received = receiver.wait_for(1).await;
    assert!(received[0].signed_with(endpoint["secret"].as_str().unwrap()));
    assert_eq!(received[0].json()["type"], "webhook.test");
    assert_eq!(received[0].json()["endpoint_id"], id);
    assert_eq!(
        received[0].header("webhook-id"),
        result["webhook_id"].as_str().unwrap()
    );

    // A receiver that refuses it: reported, not retried.
    receiver.script([Reply::Body(500, b"down for maintenance")]);
    let result: Value = app
        .post_json(&app.key, &format!("/webhooks/{id}/test"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(result["delivered"], false);
    assert_eq!(result["attempt"]["status_code"], 500);
    assert_eq!(result["attempt"]["response_body"], "down for maintenance");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 2);

    // Another partner's endpoint is not found.
    let theirs = app.new_partner("other").await;
    let response = app
        .post_json(&theirs, &format!("/webhooks/{id}/test"), json!({}))
        .await;
    assert_problem(response, 404, "webhook_not_found").await;
}

#[tokio::test]
async fn an_endpoint_can_be_moved_disabled_and_re_enabled_and_its_deliveries_follow() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let old = Receiver::start().await;
    let new = Receiver::start().await;
    let endpoint = create_endpoint(&app, &old.url("/hook")).await;
    let id = endpoint["id"].as_str().unwrap();

    // The receiver fails every attempt (one and three retries): the delivery gives up.
    old.script([
        Reply::Status(500),
        Reply::Status(500),
        Reply::Status(500),
        Reply::Status(500),
    ]);
    let response = app
        .upload(&app.key, fixture("apple.jpg"), "apple.jpg")
        .await;
    let job_id = response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.wait_until_settled(&app.key, &job_id).await;
    let deliveries = wait_for_delivery_state(&app, &job_id, "failed").await;
    assert_eq!(deliveries[0]["url"], old.url("/hook"));
    assert_eq!(old.received().len(), 4);
    // The listing finds it by its delivery's state.
    let failed = app.list_jobs(&app.key, "?delivery=failed").await;
    assert_eq!(failed["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(failed["jobs"][0]["job_id"], job_id);
    let delivered = app.list_jobs(&app.key, "?delivery=delivered").await;
    assert_eq!(delivered["jobs"], json!([]));

    // Disabled by the partner.
    let response = patch(&app, &format!("/webhooks/{id}"), json!({"enabled": false})).await;
    assert_eq!(response.status(), 200);
    let disabled: Value = response.json().await.unwrap();
    assert_eq!(disabled["enabled"], false);
    assert_eq!(disabled["disabled_reason"], "manual");

    // Moved and re-enabled in one request: the undelivered delivery goes to the new URL now.
    let response = patch(
        &app,
        &format!("/webhooks/{id}"),
        json!({"url": new.url("/hook"), "description": null, "enabled": true}),
    )
    .await;
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["enabled"], true);
    assert_eq!(updated["disabled_reason"], Value::Null);
    assert_eq!(updated["description"], Value::Null);
    assert_eq!(updated["url"], new.url("/hook"));
    let received = new.wait_for(1).await;
    assert_eq!(received[0].json()["job_id"], job_id);
    assert!(received[0].signed_with(endpoint["secret"].as_str().unwrap()));
    wait_for_delivery_state(&app, &job_id, "delivered").await;
    assert_eq!(old.received().len(), 4);
    let delivered = app.list_jobs(&app.key, "?delivery=delivered").await;
    assert_eq!(delivered["jobs"][0]["job_id"], job_id);
    assert_eq!(
        app.list_jobs(&app.key, "?delivery=failed").await["jobs"],
        json!([])
    );

    // What a PATCH may not say.
    for (body, code) in [
        (json!({"url": null}), "url_invalid"),
        (json!({"url": "ftp://x.example.com/"}), "url_invalid"),
        (json!({"enabled": "yes"}), "validation_failed"),
        (json!({"Enabled": true}), "validation_failed"),
    ] {
        let response = patch(&app, &format!("/webhooks/{id}"), body).await;
        assert_problem(response, 422, code).await;
    }
}

async fn wait_for_delivery_state(app: &TestApp, job_id: &str, state: &str) -> Vec<Value> {
    for _ in 0..200 {
        let list = app
            .get_json(&app.key, &format!("/jobs/{job_id}/deliveries"))
            .await;
        let deliveries = list["deliveries"].as_array().unwrap().clone();
        if deliveries.first().is_some_and(|d| d["status"] == state) {
            return deliveries;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the delivery of {job_id} never became {state}");
}

#[tokio::test]
async fn a_rotated_key_works_alongside_the_old_one_until_the_overlap_ends() {
    // No key cache: a key that stops working stops at once.
    let app = TestApp::spawn_with(TestOptions {
        configure: Box::new(|config| config.auth_cache_seconds = 0),
        ..TestOptions::default()
    })
    .await;
    let old = app.key.clone();
    let listed = app.get_json(&old, "/keys").await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);
    assert_eq!(listed["keys"][0]["role"], "current");
    assert!(old.starts_with(listed["keys"][0]["prefix"].as_str().unwrap()));

    let response = app.post_json(&old, "/keys/rotate", json!({})).await;
    assert_eq!(response.status(), 201);
    let rotated: Value = response.json().await.unwrap();
    let new = rotated["key"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    for key in [&old, &new] {
        assert_eq!(app.list_jobs(key, "").await["jobs"], json!([]));
    }
    let keys = app.get_json(&new, "/keys").await["keys"].clone();
    assert_eq!(keys[0]["role"], "current");
    assert!(new.starts_with(keys[0]["prefix"].as_str().unwrap()));
    assert_eq!(keys[1]["role"], "previous");
    assert!(old.starts_with(keys[1]["prefix"].as_str().unwrap()));
    let expires =
        chrono::DateTime::parse_from_rfc3339(keys[1]["expires_at"].as_str().unwrap()).unwrap();
    let overlap = expires.with_timezone(&Utc) - Utc::now();
    assert!(
        overlap > Duration::hours(23) && overlap <= Duration::hours(24),
        "{overlap}"
    );

    // The previous key cannot rotate: a leaked key cannot take over.
    let response = app.post_json(&old, "/keys/rotate", json!({})).await;
    assert_problem(response, 403, "current_key_required").await;

    // A second rotation ends the first one's overlap.
    let newest: Value = app
        .post_json(&new, "/keys/rotate", json!({}))
        .await
        .json()
        .await
        .unwrap();
    let newest = newest["key"].as_str().unwrap();
    let response = app
        .client
        .get(app.url("/jobs"))
        .bearer_auth(&old)
        .send()
        .await
        .unwrap();
    assert_problem(response, 401, "unauthorized").await;
    for key in [&new, newest] {
        assert_eq!(app.list_jobs(key, "").await["jobs"], json!([]));
    }
}

#[tokio::test]
async fn an_erased_job_is_gone_with_its_photo_and_other_jobs_keep_theirs() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let receiver = Receiver::start().await;
    let theirs = app.new_partner("other").await;
    let upload = |key: String, image: &'static str| {
        let app = &app;
        async move {
            let response = app.upload(&key, fixture(image), image).await;
            assert_eq!(response.status(), 202);
            response.json::<Value>().await.unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let mine = upload(app.key.clone(), "apple.jpg").await;
    let shared = upload(theirs.clone(), "apple.jpg").await;
    let alone = upload(app.key.clone(), "lemon.jpg").await;
    for (key, id) in [(&app.key, &mine), (&theirs, &shared), (&app.key, &alone)] {
        app.wait_until_settled(key, id).await;
    }
    // One image per job, even for the same bytes.
    assert_eq!(app.stored_objects().len(), 3);

    let erase = |key: String, id: String| {
        let app = &app;
        async move {
            app.client
                .delete(app.url(&format!("/jobs/{id}")))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
        }
    };
    // Another partner cannot erase it.
    assert_problem(
        erase(theirs.clone(), mine.clone()).await,
        404,
        "job_not_found",
    )
    .await;
    assert_eq!(erase(app.key.clone(), mine.clone()).await.status(), 204);
    // The other partner's copy of the apple photo stays.
    assert_eq!(app.stored_objects().len(), 2);
    assert_eq!(erase(app.key.clone(), alone.clone()).await.status(), 204);
    assert_eq!(app.stored_objects().len(), 1);
    for id in [&mine, &alone] {
        let problem = assert_problem(app.status(&app.key, id).await, 404, "job_erased").await;
        assert!(problem["detail"].as_str().unwrap().contains("erased at"));
        assert_problem(erase(app.key.clone(), id.clone()).await, 404, "job_erased").await;
    }
    let left = app.list_jobs(&app.key, "").await;
    assert_eq!(left["jobs"], json!([]));
    let theirs_still = app.wait_until_settled(&theirs, &shared).await;
    assert_eq!(theirs_still["status"], "succeeded");

    // A job erased while a worker works on it (fetching its photo, slowly): the photo it
    // fetches is not kept, the result is dropped, and no webhook goes out.
    let host = image_host(vec![("slow.jpg", Reply::Slow(1500), fixture("pizza.jpg"))]).await;
    let response = app
        .enqueue_json(
            &app.key,
            json!({
                "image_url": format!("http://{host}/images/slow.jpg"),
                "webhook_url": receiver.url("/hook"),
            }),
        )
        .await;
    let busy = response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut in_progress = false;
    for _ in 0..100 {
        let job: Value = app.status(&app.key, &busy).await.json().await.unwrap();
        if job["status"] == "in_progress" {
            in_progress = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(in_progress, "the worker never took the job");
    assert_eq!(erase(app.key.clone(), busy.clone()).await.status(), 204);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_problem(app.status(&app.key, &busy).await, 404, "job_erased").await;
    assert!(
        receiver.received().is_empty(),
        "an erased job sent a webhook"
    );
    assert_eq!(
        app.stored_objects().len(),
        1,
        "the erased job's photo was kept"
    );
}

#[tokio::test]
async fn results_and_events_have_the_published_shape_without_float_noise() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let receiver = Receiver::start().await;
    let response = app
        .upload_with_webhook(&app.key, fixture("pizza.jpg"), &receiver.url("/hook"))
        .await;
    let job_id = response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = app.wait_until_settled(&app.key, &job_id).await;
    let event = receiver.wait_for(1).await[0].json();

    let spec: Value = serde_json::from_str(&platescore::api::spec_json()).unwrap();
    let resolve = |name: &str| spec["components"]["schemas"].get(name).cloned();
    let schema = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    platescore::api::schema_check::check(&job, &schema("Job"), &resolve).unwrap();
    platescore::api::schema_check::check(&event, &schema("JobSucceededEvent"), &resolve).unwrap();
    assert_eq!(event["type"], "job.succeeded");
    assert_eq!(event["result"], job["result"]);

    // Four decimals at most: `0.945`, never `0.9449999928474426`.
    let mut numbers = vec![
        &job["result"]["confidence"],
        &job["result"]["food_evidence"],
    ];
    numbers.extend(
        job["result"]["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| &l["probability"]),
    );
    for number in numbers {
        let text = number.to_string();
        let decimals = text.split('.').nth(1).map_or(0, str::len);
        assert!(decimals <= 4, "{text} has float noise");
    }
}

#[tokio::test]
async fn every_schema_has_an_example_that_fits_it() {
    let spec: Value = serde_json::from_str(&platescore::api::spec_json()).unwrap();
    let schemas = spec["components"]["schemas"].as_object().unwrap();
    let resolve = |name: &str| schemas.get(name).cloned();
    for (name, schema) in schemas {
        let example = schema
            .get("example")
            .unwrap_or_else(|| panic!("{name} has no example"));
        platescore::api::schema_check::check(example, schema, &resolve)
            .unwrap_or_else(|why| panic!("the example of {name} does not fit: {why}"));
    }
    // Every operation's JSON bodies, sent and answered, show theirs.
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            let bodies = operation["requestBody"]["content"]
                .as_object()
                .into_iter()
                .chain(
                    responses
                        .iter()
                        .filter(|(status, _)| status.starts_with('2'))
                        .filter_map(|(_, r)| r["content"].as_object()),
                )
                .flat_map(|content| content.iter())
                .filter(|(media, _)| media.contains("json") || media.contains("multipart"));
            for (media, body) in bodies {
                assert!(
                    body.get("example").is_some(),
                    "{method} {path} ({media}): no example"
                );
            }
        }
    }
    // And examples are not decoration: a broken one is caught.
    let job = schemas["Job"].clone();
    let mut broken = job["example"].clone();
    broken["status"] = json!("exploded");
    assert!(platescore::api::schema_check::check(&broken, &job, &resolve).is_err());
}

#[tokio::test]
async fn a_wrong_method_is_405_with_the_methods_that_work() {
    let app = TestApp::spawn().await;
    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/enqueue", "POST"),
        (reqwest::Method::PUT, "/jobs", "GET, HEAD"),
        (
            reqwest::Method::PUT,
            "/webhooks/0193d1a2-7c4e-7b7a-9d0e-4f5a6b7c8d9e",
            "DELETE, PATCH",
        ),
        (reqwest::Method::POST, "/openapi.json", "GET, HEAD"),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(&app.key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
        assert_problem(response, 405, "method_not_allowed").await;
    }
}
