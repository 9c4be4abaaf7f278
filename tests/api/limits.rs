//! Per-partner enqueue limits: the request rate and the cap on unfinished jobs. Over either,
//! `429` with `Retry-After` and the RateLimit fields, and nothing written.

use platescore::store::partners::{self, LimitChanges, LimitOverride};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::helpers::{assert_problem, fixture, TestApp, TestOptions};

fn limited(configure: impl FnOnce(&mut platescore::config::Config) + 'static) -> TestOptions {
    TestOptions {
        configure: Box::new(configure),
        ..TestOptions::default()
    }
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

async fn partner_id(app: &TestApp, key: &str) -> uuid::Uuid {
    let keys = app.get_json(key, "/keys").await;
    let prefix = keys["keys"][0]["prefix"].as_str().unwrap().to_string();
    partners::list(&app.db)
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.key_prefix == prefix)
        .unwrap()
        .id
}

async fn set_limits(app: &TestApp, key: &str, changes: LimitChanges) {
    let id = partner_id(app, key).await;
    partners::set_limits(&app.db, id, changes)
        .await
        .unwrap()
        .expect("the partner exists");
}

fn by_url(n: usize) -> Value {
    json!({"image_url": format!("https://images.example.com/meal-{n}.jpg")})
}

async fn job_count(app: &TestApp, key: &str) -> usize {
    app.list_jobs(key, "?limit=200").await["jobs"]
        .as_array()
        .unwrap()
        .len()
}

/// A partner over its rate (1 a second, bursts of 2) is refused with `429 rate_limited`,
/// `Retry-After` and the RateLimit fields, by URL and by upload alike; nothing of a refused
/// request is written; another partner is not affected; after `Retry-After` it is accepted.
#[tokio::test]
async fn a_partner_over_its_rate_is_refused_until_its_bucket_refills() {
    let app = TestApp::spawn_with(limited(|config| {
        config.partner_rate_limit_per_second = Some(1);
        config.partner_rate_limit_burst = Some(2);
    }))
    .await;
    let photos = [
        "apple.jpg",
        "cabbage.jpg",
        "lemon.jpg",
        "pizza.jpg",
        "flower.webp",
    ];
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    // Six at once: more than the burst plus whatever refills while they are sent.
    for n in 0..6 {
        let response = if n % 2 == 0 {
            app.enqueue_json(&app.key, by_url(n)).await
        } else {
            app.upload(&app.key, fixture(photos[n / 2]), photos[n / 2])
                .await
        };
        match response.status().as_u16() {
            202 => accepted.push((n, response)),
            429 => refused.push((n, response)),
            other => panic!("enqueue {n}: {other}"),
        }
    }
    assert!(accepted.len() >= 2, "the burst of 2 is accepted");
    assert!(!refused.is_empty(), "over the rate is refused");
    assert_eq!(
        accepted.iter().map(|(n, _)| *n).collect::<Vec<_>>()[..2],
        [0, 1],
        "the first two are accepted"
    );

    let (_, first) = &accepted[0];
    assert_eq!(
        header(first, "ratelimit-policy").as_deref(),
        Some("\"rate\";q=2;w=2")
    );
    assert_eq!(
        header(first, "ratelimit").as_deref(),
        Some("\"rate\";r=1;t=1")
    );

    let (_, refusal) = refused.remove(0);
    let retry_after: u64 = header(&refusal, "retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(
        header(&refusal, "ratelimit-policy").as_deref(),
        Some("\"rate\";q=2;w=2")
    );
    let remaining = header(&refusal, "ratelimit").unwrap();
    assert!(remaining.starts_with("\"rate\";r=0;t="), "{remaining}");
    let problem = assert_problem(refusal, 429, "rate_limited").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("1 a second"),
        "{problem}"
    );

    // Nothing of the refused requests was written: no job, no image.
    assert_eq!(job_count(&app, &app.key).await, accepted.len());
    // One image per accepted upload (the odd requests are uploads), none for the refused.
    let accepted_uploads = accepted.iter().filter(|(n, _)| n % 2 == 1).count();
    assert!(accepted_uploads > 0);
    assert_eq!(app.stored_objects().len(), accepted_uploads);

    // Another partner has its own bucket.
    let other = app.new_partner("other").await;
    assert_eq!(app.enqueue_json(&other, by_url(100)).await.status(), 202);

    // Refusals are counted by operation, as operators watch them.
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("platescore_http_requests_total")
                && l.contains("operation=\"enqueue")
                && l.contains("status=\"429\"")),
        "{metrics}"
    );

    // Once `Retry-After` has passed, a request is accepted again.
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    let again = app.enqueue_json(&app.key, by_url(101)).await;
    assert_eq!(again.status(), 202);
}

/// Over its rate, an upload is refused before its body is read: the answer comes while the
/// body is still being sent (here: a body that never ends).
#[tokio::test]
async fn over_the_rate_an_upload_is_refused_before_its_body_is_read() {
    let app = TestApp::spawn_with(limited(|config| {
        config.partner_rate_limit_per_second = Some(1);
        config.partner_rate_limit_burst = Some(1);
    }))
    .await;
    assert_eq!(app.enqueue_json(&app.key, by_url(0)).await.status(), 202);
    let start = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(
        b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"m.jpg\"\r\n\r\n",
    ))]);
    let endless = futures_util::StreamExt::chain(start, futures_util::stream::pending());
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        app.client
            .post(app.url("/enqueue/upload"))
            .bearer_auth(&app.key)
            .header("content-type", "multipart/form-data; boundary=b")
            .body(reqwest::Body::wrap_stream(endless))
            .send(),
    )
    .await
    .expect("answered without waiting for the body")
    .unwrap();
    assert_problem(response, 429, "rate_limited").await;
}

/// A partner's own rate, set in the store (as `platescore partners set-limit` does),
/// overrides the default; `unlimited` lifts it, `default` restores it. With
/// `auth_cache_seconds = 0` each request reads the partner afresh.
#[tokio::test]
async fn a_partners_own_rate_overrides_the_default() {
    let app = TestApp::spawn_with(limited(|config| {
        config.partner_rate_limit_per_second = Some(1);
        config.partner_rate_limit_burst = Some(1);
        config.auth_cache_seconds = 0;
    }))
    .await;
    let other = app.new_partner("other").await;
    set_limits(
        &app,
        &app.key,
        LimitChanges {
            rate_per_second: Some(LimitOverride::Exactly(50)),
            burst: Some(LimitOverride::Exactly(50)),
            ..LimitChanges::default()
        },
    )
    .await;
    for n in 0..5 {
        let response = app.enqueue_json(&app.key, by_url(n)).await;
        assert_eq!(response.status(), 202, "enqueue {n} under the raised rate");
        assert_eq!(
            header(&response, "ratelimit-policy").as_deref(),
            Some("\"rate\";q=50;w=1")
        );
    }

    // The other partner has the default: 1 a second, no burst.
    assert_eq!(app.enqueue_json(&other, by_url(10)).await.status(), 202);
    let refused = app.enqueue_json(&other, by_url(11)).await;
    assert_problem(refused, 429, "rate_limited").await;

    set_limits(
        &app,
        &other,
        LimitChanges {
            rate_per_second: Some(LimitOverride::Unlimited),
            ..LimitChanges::default()
        },
    )
    .await;
    for n in 12..15 {
        let response = app.enqueue_json(&other, by_url(n)).await;
        assert_eq!(response.status(), 202, "enqueue {n} without a rate");
        assert_eq!(header(&response, "ratelimit-policy"), None);
        assert_eq!(header(&response, "ratelimit"), None);
    }

    set_limits(
        &app,
        &other,
        LimitChanges {
            rate_per_second: Some(LimitOverride::Default),
            ..LimitChanges::default()
        },
    )
    .await;
    let first = app.enqueue_json(&other, by_url(20)).await;
    assert_eq!(first.status(), 202);
    assert_eq!(
        header(&first, "ratelimit-policy").as_deref(),
        Some("\"rate\";q=1;w=1")
    );
    assert_problem(
        app.enqueue_json(&other, by_url(21)).await,
        429,
        "rate_limited",
    )
    .await;
    assert_eq!(job_count(&app, &other).await, 1 + 3 + 1);
}

/// With a cap of 5 unfinished jobs, 20 concurrent enqueues get exactly 5 jobs; the other 15
/// are `429 queue_full` and write nothing. A replay still answers; the cap counts jobs
/// queued or in progress, so erasing one makes room; a partner's own cap overrides it.
#[tokio::test]
async fn the_queue_cap_holds_under_concurrent_enqueues() {
    let app = TestApp::spawn_with(limited(|config| {
        config.partner_max_queued_jobs = Some(5);
        config.auth_cache_seconds = 0;
    }))
    .await;
    let requests = (0..20).map(|n| {
        let app = &app;
        async move {
            let response = app
                .client
                .post(app.url("/enqueue"))
                .bearer_auth(&app.key)
                .header("Idempotency-Key", format!("meal-{n}"))
                .json(&by_url(n))
                .send()
                .await
                .unwrap();
            (n, response)
        }
    });
    let responses = futures_util::future::join_all(requests).await;
    let mut accepted = Vec::new();
    let mut left = Vec::new();
    for (n, response) in responses {
        match response.status().as_u16() {
            202 => {
                assert_eq!(
                    header(&response, "ratelimit-policy").as_deref(),
                    Some("\"queue\";q=5;qu=\"concurrent-requests\"")
                );
                left.push(header(&response, "ratelimit").unwrap());
                accepted.push(n);
            }
            429 => {
                assert_eq!(header(&response, "retry-after").as_deref(), Some("5"));
                assert_eq!(
                    header(&response, "ratelimit").as_deref(),
                    Some("\"queue\";r=0")
                );
                assert_problem(response, 429, "queue_full").await;
            }
            other => panic!("enqueue {n}: {other}"),
        }
    }
    assert_eq!(
        accepted.len(),
        5,
        "exactly the cap is accepted: {accepted:?}"
    );
    left.sort();
    assert_eq!(
        left,
        (0..5)
            .map(|r| format!("\"queue\";r={r}"))
            .collect::<Vec<_>>(),
        "each accepted enqueue counted the ones before it"
    );
    assert_eq!(job_count(&app, &app.key).await, 5);

    // Full: an upload is refused before its image is stored; a replay still answers.
    let refused = app
        .upload(&app.key, fixture("lemon.jpg"), "lemon.jpg")
        .await;
    assert_problem(refused, 429, "queue_full").await;
    assert!(
        app.stored_objects().is_empty(),
        "{:?}",
        app.stored_objects()
    );
    let replay = app
        .client
        .post(app.url("/enqueue"))
        .bearer_auth(&app.key)
        .header("Idempotency-Key", format!("meal-{}", accepted[0]))
        .json(&by_url(accepted[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    assert_eq!(
        header(&replay, "idempotent-replayed").as_deref(),
        Some("true")
    );

    // Another partner has its own count.
    let other = app.new_partner("other").await;
    assert_eq!(app.enqueue_json(&other, by_url(100)).await.status(), 202);

    // A finished (here: erased) job makes room.
    let job = app.list_jobs(&app.key, "?limit=1").await["jobs"][0]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let erased = app
        .client
        .delete(app.url(&format!("/jobs/{job}")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 204);
    assert_eq!(app.enqueue_json(&app.key, by_url(200)).await.status(), 202);
    assert_problem(
        app.enqueue_json(&app.key, by_url(201)).await,
        429,
        "queue_full",
    )
    .await;

    // The partner's own cap.
    set_limits(
        &app,
        &app.key,
        LimitChanges {
            max_queued_jobs: Some(LimitOverride::Exactly(6)),
            ..LimitChanges::default()
        },
    )
    .await;
    let upload = app
        .enqueue_form(
            &app.key,
            Form::new().part(
                "image",
                Part::bytes(fixture("lemon.jpg")).file_name("l.jpg"),
            ),
        )
        .await;
    assert_eq!(upload.status(), 202);
    assert_eq!(
        header(&upload, "ratelimit").as_deref(),
        Some("\"queue\";r=0")
    );
    assert_problem(
        app.enqueue_json(&app.key, by_url(202)).await,
        429,
        "queue_full",
    )
    .await;
    assert_eq!(job_count(&app, &app.key).await, 6);
}

/// Both enqueue operations publish their `429` with `Retry-After` and the RateLimit fields.
#[test]
fn the_spec_declares_the_429_of_both_enqueue_operations() {
    let spec: Value = serde_json::from_str(&platescore::api::spec_json()).unwrap();
    for path in ["/enqueue", "/enqueue/upload"] {
        let responses = &spec["paths"][path]["post"]["responses"];
        let refused = &responses["429"];
        assert_eq!(
            refused["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem",
            "{path}"
        );
        for name in ["RETRY-AFTER", "RATELIMIT-POLICY", "RATELIMIT"] {
            assert_eq!(refused["headers"][name]["required"], true, "{path} {name}");
        }
        for name in ["RATELIMIT-POLICY", "RATELIMIT"] {
            assert!(
                responses["202"]["headers"][name].is_object(),
                "{path} {name}"
            );
        }
    }
}
