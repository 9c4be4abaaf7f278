//! The job lifecycle end to end: workers score with the real model, and results reach real
//! webhook receivers on loopback, signed, retried and recorded.

use platescore::startup::Role;
use serde_json::{json, Value};

use crate::{
    helpers::{fixture, TestApp, TestOptions},
    receiver::{image_host, Receiver, Reply},
};

async fn register_endpoint(app: &TestApp, url: &str) -> Value {
    let response = app
        .post_json(
            &app.key,
            "/webhooks",
            json!({ "url": url, "description": "test" }),
        )
        .await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn upload(app: &TestApp, image: &str) -> String {
    let response = app.upload(&app.key, fixture(image), image).await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    job["job_id"].as_str().unwrap().to_string()
}

async fn attempt_codes(app: &TestApp, job_id: &str) -> Vec<Value> {
    let deliveries = app
        .get_json(&app.key, &format!("/jobs/{job_id}/deliveries"))
        .await;
    deliveries["deliveries"][0]["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect()
}

#[tokio::test]
async fn an_uploaded_meal_is_scored_and_its_signed_result_delivered() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let receiver = Receiver::start().await;
    let endpoint = register_endpoint(&app, &receiver.url("/hooks/meals")).await;
    let secret = endpoint["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));

    let job_id = upload(&app, "pizza.jpg").await;
    let webhook = receiver.wait_for(1).await.remove(0);

    assert!(webhook.signed_with(secret), "signature does not verify");
    assert!(webhook.header("webhook-id").starts_with("msg_"));
    let sent_at: i64 = webhook.header("webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - sent_at).abs() < 60);
    assert_eq!(webhook.header("content-type"), "application/json");

    let payload = webhook.json();
    assert_eq!(payload["type"], "job.succeeded");
    assert_eq!(payload["job_id"], job_id.as_str());
    assert_eq!(payload["status"], "succeeded");
    let result = &payload["result"];
    assert_eq!(result["is_food"], true, "{result}");
    let score = result["score"].as_f64().unwrap();
    assert!((1.0..=5.0).contains(&score), "{score}");
    assert_eq!(result["labels"][0]["label"], "pizza", "{result}");
    assert!(!result["tips"].as_array().unwrap().is_empty());
    assert!(result["model_version"]
        .as_str()
        .unwrap()
        .starts_with("efficientnet-lite0"));
    assert_eq!(payload.get("deliveries"), None);

    let job = app.wait_until_settled(&app.key, &job_id).await;
    assert_eq!(job["result"], payload["result"]);
    assert_eq!(
        job["request"]["image"]["sha256"].as_str().unwrap().len(),
        64
    );
    let delivery = &job["deliveries"][0];
    assert_eq!(delivery["status"], "delivered");
    assert_eq!(
        delivery["webhook_id"],
        webhook.header("webhook-id").as_str()
    );
    assert_eq!(delivery["endpoint_id"], endpoint["id"]);
    assert_eq!(attempt_codes(&app, &job_id).await, vec![json!(200)]);
    let log = app
        .get_json(&app.key, &format!("/jobs/{job_id}/deliveries"))
        .await;
    assert_eq!(
        log["deliveries"][0]["attempt_log"][0]["response_body"],
        "thanks"
    );
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_third_attempt_with_the_same_id() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(500), Reply::Status(503)]);
    register_endpoint(&app, &receiver.url("/hook")).await;

    let job_id = upload(&app, "apple.jpg").await;
    let received = receiver.wait_for(3).await;
    let ids: Vec<String> = received.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(received[0].body, received[2].body);

    let job = app.wait_until_settled(&app.key, &job_id).await;
    assert_eq!(job["deliveries"][0]["status"], "delivered");
    assert_eq!(
        attempt_codes(&app, &job_id).await,
        vec![json!(500), json!(503), json!(200)]
    );
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test]
async fn a_hanging_receiver_times_out_and_is_retried() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|config| {
        config.webhook_timeout_ms = 300;
    }))
    .await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::Hang]);
    register_endpoint(&app, &receiver.url("/hook")).await;

    let job_id = upload(&app, "lemon.jpg").await;
    receiver.wait_for(2).await;
    let job = app.wait_until_settled(&app.key, &job_id).await;
    assert_eq!(job["deliveries"][0]["status"], "delivered");
    let log = app
        .get_json(&app.key, &format!("/jobs/{job_id}/deliveries"))
        .await;
    let attempts = log["deliveries"][0]["attempt_log"].as_array().unwrap();
    assert_eq!(attempts[0]["status_code"], Value::Null);
    assert_eq!(attempts[0]["error"], "timed out");
    assert!(attempts[0]["latency_ms"].as_i64().unwrap() >= 300);
    assert_eq!(attempts[1]["status_code"], 200);
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_redirects_count_as_failures() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|config| {
        config.webhook_retry_schedule = "20ms".into();
    }))
    .await;
    let gone = Receiver::start().await;
    gone.script([Reply::Status(410)]);
    let moved = Receiver::start().await;
    moved.script([
        Reply::Redirect(gone.url("/elsewhere")),
        Reply::Redirect(gone.url("/elsewhere")),
    ]);
    let gone_endpoint = register_endpoint(&app, &gone.url("/hook")).await;
    register_endpoint(&app, &moved.url("/hook")).await;

    let first = upload(&app, "cabbage.jpg").await;
    let job = app.wait_until_settled(&app.key, &first).await;
    let by_url = |url: String| {
        job["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["url"] == url.as_str())
            .cloned()
            .unwrap()
    };
    let to_gone = by_url(gone.url("/hook"));
    assert_eq!(to_gone["status"], "failed");
    assert_eq!(to_gone["attempts"], 1);
    assert_eq!(to_gone["last_status_code"], 410);
    // Two redirects, out of attempts (schedule of one retry): failed, never followed.
    let to_moved = by_url(moved.url("/hook"));
    assert_eq!(to_moved["status"], "failed");
    assert_eq!(to_moved["last_status_code"], 302);
    assert_eq!(gone.received().len(), 1, "the redirect was followed");

    let endpoints = app.get_json(&app.key, "/webhooks").await;
    let listed = endpoints["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == gone_endpoint["id"])
        .cloned()
        .unwrap();
    assert_eq!(listed["enabled"], false);
    assert_eq!(listed["disabled_reason"], "gone");

    // Later jobs no longer go there.
    let second = upload(&app, "pineapple.jpg").await;
    let job = app.wait_until_settled(&app.key, &second).await;
    let urls: Vec<&str> = job["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls, vec![moved.url("/hook").as_str()]);
    assert_eq!(gone.received().len(), 1);
}

#[tokio::test]
async fn a_per_job_webhook_url_is_signed_with_the_partner_secret() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let receiver = Receiver::start().await;
    let response = app
        .upload_with_webhook(&app.key, fixture("cat.jpg"), &receiver.url("/job-hook"))
        .await;
    assert_eq!(response.status(), 202);
    let webhook = receiver.wait_for(1).await.remove(0);
    let secret = app.get_json(&app.key, "/webhook-secret").await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(webhook.signed_with(&secret));
    let payload = webhook.json();
    assert_eq!(payload["type"], "job.succeeded");
    assert_eq!(payload["result"]["is_food"], false, "{payload}");
    assert_eq!(payload["result"]["score"], Value::Null);
}

#[tokio::test]
async fn image_urls_are_fetched_and_permanent_failures_fail_at_once() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let receiver = Receiver::start().await;
    let host = image_host(vec![
        ("meal.jpg", Reply::Status(200), fixture("bell_pepper.jpg")),
        (
            "moved.jpg",
            Reply::Redirect("/images/meal.jpg".into()),
            vec![],
        ),
        (
            "metadata.jpg",
            Reply::Redirect("http://169.254.169.254/latest/meta-data/".into()),
            vec![],
        ),
        (
            "text.jpg",
            Reply::Status(200),
            b"not an image at all".to_vec(),
        ),
    ])
    .await;
    register_endpoint(&app, &receiver.url("/hook")).await;
    let app = &app;
    let enqueue = |name: &str| {
        let url = format!("http://{host}/images/{name}");
        async move {
            let response = app
                .enqueue_json(&app.key, json!({ "image_url": url }))
                .await;
            assert_eq!(response.status(), 202);
            let job: Value = response.json().await.unwrap();
            job["job_id"].as_str().unwrap().to_string()
        }
    };
    let fetched = enqueue("moved.jpg").await;
    let missing = enqueue("nothing-here.jpg").await;
    let forbidden = enqueue("metadata.jpg").await;
    let text = enqueue("text.jpg").await;

    let job = app.wait_until_settled(&app.key, &fetched).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let image = &job["request"]["image"];
    assert_eq!(image["source"], "url");
    assert_eq!(image["format"], "jpeg");
    assert_eq!(image["bytes"], fixture("bell_pepper.jpg").len());
    assert_eq!(image["sha256"].as_str().unwrap().len(), 64);

    for (job_id, code) in [
        (missing, "image_fetch_failed"),
        (forbidden, "url_forbidden_host"),
        (text, "unsupported_image_format"),
    ] {
        let job = app.wait_until_settled(&app.key, &job_id).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["code"], code, "{job}");
        let row = platescore::store::jobs::find(
            &app.db,
            job_id_partner(app, &job_id).await,
            job_id.parse().unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(row.attempts, 1, "a permanent failure is not retried");
    }
    // Failed jobs are announced too.
    let received = receiver.wait_for(4).await;
    let failed = received
        .iter()
        .filter(|r| r.json()["type"] == "job.failed")
        .count();
    assert_eq!(failed, 3);
}

async fn job_id_partner(app: &TestApp, job_id: &str) -> uuid::Uuid {
    use sea_orm::EntityTrait;
    entity::job::Entity::find_by_id(job_id.parse::<uuid::Uuid>().unwrap())
        .one(app.db.reader())
        .await
        .unwrap()
        .unwrap()
        .partner_id
}

#[tokio::test]
async fn outbound_requests_to_private_and_metadata_addresses_are_refused() {
    // No allow-list: the defaults.
    let app = TestApp::spawn_with(TestOptions {
        role: Role::All,
        ..TestOptions::default()
    })
    .await;
    for url in [
        "http://127.0.0.1:9/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/a.jpg",
        "http://metadata.google.internal/computeMetadata/v1/",
    ] {
        let response = app
            .enqueue_json(&app.key, json!({ "image_url": url }))
            .await;
        crate::helpers::assert_problem(response, 422, "url_forbidden_host").await;
        let response = app
            .post_json(&app.key, "/webhooks", json!({ "url": url }))
            .await;
        crate::helpers::assert_problem(response, 422, "url_forbidden_host").await;
    }
    // A receiver on loopback is refused when it is not allow-listed.
    let receiver = Receiver::start().await;
    let response = app
        .upload_with_webhook(&app.key, fixture("apple.jpg"), &receiver.url("/hook"))
        .await;
    crate::helpers::assert_problem(response, 422, "url_forbidden_host").await;
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn the_same_image_reuses_the_stored_result_without_inference() {
    use sea_orm::{sea_query::Expr, ColumnTrait, EntityTrait, QueryFilter};
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let first = upload(&app, "pizza.jpg").await;
    let done = app.wait_until_settled(&app.key, &first).await;
    assert_eq!(done["status"], "succeeded");
    // Mark the stored result: a second job can only return the mark by reusing it.
    let mut marked = done["result"].clone();
    marked["tips"][0]["text"] = json!("reused");
    entity::job::Entity::update_many()
        .col_expr(entity::job::Column::Result, Expr::value(marked.clone()))
        .filter(entity::job::Column::Id.eq(first.parse::<uuid::Uuid>().unwrap()))
        .exec(app.db.writer())
        .await
        .unwrap();

    let second = upload(&app, "pizza.jpg").await;
    assert_ne!(first, second);
    let job = app.wait_until_settled(&app.key, &second).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"], marked);
    // A different image is scored afresh.
    let third = upload(&app, "lemon.jpg").await;
    let job = app.wait_until_settled(&app.key, &third).await;
    assert_ne!(job["result"]["tips"][0]["text"], "reused");
    // So is another partner's identical photo: reuse never crosses partners, so no partner
    // learns from a result's speed that someone else sent the same photo.
    let other = app.new_partner("other").await;
    let response = app.upload(&other, fixture("pizza.jpg"), "pizza.jpg").await;
    assert_eq!(response.status(), 202);
    let theirs: Value = response.json().await.unwrap();
    let job = app
        .wait_until_settled(&other, theirs["job_id"].as_str().unwrap())
        .await;
    assert_eq!(job["status"], "succeeded");
    assert_ne!(job["result"], marked);
    assert_eq!(job["result"]["labels"], marked["labels"]);
}

#[tokio::test]
async fn redeliver_sends_a_finished_job_again_with_the_same_id() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let receiver = Receiver::start().await;
    register_endpoint(&app, &receiver.url("/hook")).await;
    let job_id = upload(&app, "apple.jpg").await;
    app.wait_until_settled(&app.key, &job_id).await;
    let response = app
        .post_json(&app.key, &format!("/jobs/{job_id}/redeliver"), json!({}))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["deliveries"], 1);
    let received = receiver.wait_for(2).await;
    assert_eq!(
        received[0].header("webhook-id"),
        received[1].header("webhook-id")
    );
    // Another partner cannot see or redeliver it.
    let other = app.new_partner("other").await;
    let response = app
        .post_json(&other, &format!("/jobs/{job_id}/redeliver"), json!({}))
        .await;
    crate::helpers::assert_problem(response, 404, "job_not_found").await;
}

#[tokio::test]
async fn concurrent_redeliveries_create_a_jobs_deliveries_once() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let job_id = upload(&app, "apple.jpg").await;
    let job = app.wait_until_settled(&app.key, &job_id).await;
    assert_eq!(
        job["deliveries"],
        json!([]),
        "it finished with no destination"
    );
    let receiver = Receiver::start().await;
    register_endpoint(&app, &receiver.url("/hook")).await;
    let path = format!("/jobs/{job_id}/redeliver");
    let responses =
        futures_util::future::join_all((0..12).map(|_| app.post_json(&app.key, &path, json!({}))))
            .await;
    assert!(responses.iter().all(|r| r.status() == 202));
    receiver.wait_for(1).await;
    let log = app
        .get_json(&app.key, &format!("/jobs/{job_id}/deliveries"))
        .await;
    assert_eq!(log["deliveries"].as_array().unwrap().len(), 1, "{log}");
}

#[tokio::test]
async fn rotating_a_secret_signs_with_both_during_the_overlap() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let receiver = Receiver::start().await;
    let endpoint = register_endpoint(&app, &receiver.url("/hook")).await;
    let old = endpoint["secret"].as_str().unwrap().to_string();
    let response = app
        .post_json(
            &app.key,
            &format!(
                "/webhooks/{}/rotate-secret",
                endpoint["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let rotated: Value = response.json().await.unwrap();
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(old, new);
    upload(&app, "pineapple.jpg").await;
    let webhook = receiver.wait_for(1).await.remove(0);
    assert!(webhook.signed_with(&old) && webhook.signed_with(&new));
    assert_eq!(webhook.header("webhook-signature").split(' ').count(), 2);

    // Deleted endpoints receive nothing more.
    let response = app
        .client
        .delete(app.url(&format!("/webhooks/{}", endpoint["id"].as_str().unwrap())))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let job_id = upload(&app, "lemon.jpg").await;
    let job = app.wait_until_settled(&app.key, &job_id).await;
    assert_eq!(job["deliveries"], json!([]));
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn two_worker_nodes_never_work_on_one_job_at_once() {
    // Two worker-only nodes on one database (PostgreSQL in CI), plus this API node.
    let api = TestApp::spawn_with(TestOptions {
        configure: Box::new(|config| config.outbound_allow_cidrs = "127.0.0.0/8".into()),
        ..TestOptions::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let endpoint = register_endpoint(&api, &receiver.url("/hook")).await;
    let _ = endpoint;
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut config = api.config.clone();
        config.poll_interval_ms = 50;
        let app = platescore::startup::Application::build(&config, Role::Worker)
            .await
            .unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        workers.push((tokio::spawn(app.run_until(stop.clone())), stop));
    }
    let images = [
        "apple.jpg",
        "lemon.jpg",
        "pizza.jpg",
        "cabbage.jpg",
        "bell_pepper.jpg",
        "pineapple.jpg",
        "cat.jpg",
    ];
    let mut ids = Vec::new();
    for round in 0..3 {
        for image in images {
            let mut bytes = fixture(image);
            // Distinct bytes per job (a JPEG ignores what follows its end marker), so no
            // job reuses another's result.
            bytes.extend_from_slice(format!("{round}").as_bytes());
            let response = api.upload(&api.key, bytes, image).await;
            assert_eq!(response.status(), 202);
            let job: Value = response.json().await.unwrap();
            ids.push(job["job_id"].as_str().unwrap().to_string());
        }
    }
    let received = receiver.wait_for(ids.len()).await;
    for id in &ids {
        let job = api.wait_until_settled(&api.key, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    // Each job was claimed once and announced once.
    use sea_orm::EntityTrait;
    for job in entity::job::Entity::find()
        .all(api.db.reader())
        .await
        .unwrap()
    {
        assert_eq!(job.attempts, 1, "job {} was claimed twice", job.id);
    }
    let mut announced: Vec<String> = received
        .iter()
        .map(|r| r.json()["job_id"].as_str().unwrap().to_string())
        .collect();
    announced.sort();
    announced.dedup();
    assert_eq!(announced.len(), ids.len());
    assert_eq!(receiver.received().len(), ids.len());
    for (running, stop) in workers {
        stop.cancel();
        running.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn shutdown_leaves_no_job_in_progress() {
    let mut app = TestApp::spawn_with(TestOptions::with_workers(|config| {
        config.shutdown_grace_seconds = 0;
    }))
    .await;
    for image in ["apple.jpg", "lemon.jpg", "pizza.jpg", "cabbage.jpg"] {
        assert_eq!(
            app.upload(&app.key, fixture(image), image).await.status(),
            202
        );
    }
    app.stop().await;
    use sea_orm::EntityTrait;
    let jobs = entity::job::Entity::find()
        .all(app.db.reader())
        .await
        .unwrap();
    assert_eq!(jobs.len(), 4);
    for job in jobs {
        assert!(
            matches!(
                job.status,
                entity::job::JobStatus::Queued | entity::job::JobStatus::Succeeded
            ),
            "{:?} left {:?}",
            job.id,
            job.status
        );
        assert!(job.lease_token.is_none());
    }
}

#[tokio::test]
async fn diet_tags_shape_the_tips_and_a_result_is_reused_only_for_the_same_tags() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let tip_ids = |job: &Value| -> Vec<String> {
        job["result"]["tips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    let plain = upload(&app, "lemon.jpg").await;
    let plain = app.wait_until_settled(&app.key, &plain).await;
    assert_eq!(plain["request"]["diets"], json!([]));
    assert!(!tip_ids(&plain).iter().any(|id| id.ends_with("-vegan")));

    // The same bytes with a diet: scored for that diet, not the plain result reused.
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(fixture("lemon.jpg")).file_name("lemon.jpg"),
        )
        .text("diets", "vegan, low_sugar,vegan")
        .text("lang", "en");
    let response = app.enqueue_form(&app.key, form).await;
    assert_eq!(response.status(), 202);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["request"]["diets"], json!(["low_sugar", "vegan"]));
    assert_eq!(job["request"]["lang"], "en");
    let vegan = app
        .wait_until_settled(&app.key, job["job_id"].as_str().unwrap())
        .await;
    assert!(
        tip_ids(&vegan).contains(&"fruit-pair-protein-vegan".to_string()),
        "{vegan}"
    );
    assert_eq!(vegan["result"]["score"], plain["result"]["score"]);
}

#[tokio::test]
async fn a_receiver_answering_nul_bytes_is_recorded_without_them() {
    // PostgreSQL text refuses NUL; the attempt must still be recorded (and not sink others).
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let receiver = Receiver::start().await;
    receiver.script([
        Reply::Body(500, b"bad\0 gateway"),
        Reply::Body(200, b"o\0k"),
    ]);
    register_endpoint(&app, &receiver.url("/hook")).await;
    let job_id = upload(&app, "cabbage.jpg").await;
    let job = app.wait_until_settled(&app.key, &job_id).await;
    assert_eq!(job["deliveries"][0]["status"], "delivered");
    let log = app
        .get_json(&app.key, &format!("/jobs/{job_id}/deliveries"))
        .await;
    let attempts = log["deliveries"][0]["attempt_log"].as_array().unwrap();
    assert_eq!(attempts[0]["response_body"], "bad gateway");
    assert_eq!(attempts[1]["response_body"], "ok");
}

#[tokio::test]
async fn the_endpoint_limit_holds_under_concurrent_requests() {
    let app = TestApp::spawn().await;
    for i in 0..15 {
        register_endpoint(&app, &format!("https://hooks.example.com/existing/{i}")).await;
    }
    let other = app.new_partner("neighbour").await;
    let racing = (0..40).map(|i| {
        let app = &app;
        async move {
            app.post_json(
                &app.key,
                "/webhooks",
                json!({ "url": format!("https://hooks.example.com/racing/{i}") }),
            )
            .await
        }
    });
    // Another partner's creations at the same time are neither blocked nor counted.
    let neighbour = (0..5).map(|i| {
        let (app, other) = (&app, &other);
        async move {
            app.post_json(
                other,
                "/webhooks",
                json!({ "url": format!("https://hooks.example.com/neighbour/{i}") }),
            )
            .await
        }
    });
    let (responses, neighbour) = tokio::join!(
        futures_util::future::join_all(racing),
        futures_util::future::join_all(neighbour)
    );
    let mut created = 0;
    for response in responses {
        if response.status() == 201 {
            created += 1;
        } else {
            crate::helpers::assert_problem(response, 409, "webhook_limit_reached").await;
        }
    }
    assert_eq!(created, 5);
    assert!(neighbour.iter().all(|r| r.status() == 201));
    let listed = |key: &str| {
        let key = key.to_string();
        let app = &app;
        async move {
            app.get_json(&key, "/webhooks").await["endpoints"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(listed(&app.key).await, 20);
    assert_eq!(listed(&other).await, 5);
}

#[tokio::test]
async fn a_partner_has_at_most_twenty_endpoints() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    for i in 0..20 {
        register_endpoint(&app, &format!("http://127.0.0.1:9/hook/{i}")).await;
    }
    let response = app
        .post_json(
            &app.key,
            "/webhooks",
            json!({ "url": "http://127.0.0.1:9/one-more" }),
        )
        .await;
    crate::helpers::assert_problem(response, 409, "webhook_limit_reached").await;
    assert_eq!(
        app.get_json(&app.key, "/webhooks").await["endpoints"]
            .as_array()
            .unwrap()
            .len(),
        20
    );
}
