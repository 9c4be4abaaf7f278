//! What operators see: the Prometheus exposition and request ids.

use std::collections::HashMap;

use serde_json::Value;

use crate::helpers::{fixture, TestApp, TestOptions};

/// Parses the text exposition strictly enough to catch a malformed line: every sample is
/// `name{labels} value`, with a known name and a number.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "{line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "{line}");
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

async fn scrape(app: &TestApp) -> (String, HashMap<String, f64>) {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

fn get(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn the_metrics_parse_and_move_as_jobs_flow() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let (_, before) = scrape(&app).await;

    let mut ids = Vec::new();
    for (name, bytes) in [
        ("apple.jpg", fixture("apple.jpg")),
        ("broken.jpg", fixture("awkward/truncated_progressive.jpg")),
    ] {
        let response = app.upload(&app.key, bytes, name).await;
        assert_eq!(response.status(), 202);
        let job: Value = response.json().await.unwrap();
        ids.push(job["job_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        app.wait_until_settled(&app.key, id).await;
    }
    let (text, after) = scrape(&app).await;
    let delta = |series: &str| get(&after, series) - get(&before, series);

    // Counters are per process (other tests run beside this one): they move at least this much.
    assert!(delta("platescore_jobs_enqueued_total") >= 2.0);
    assert!(delta(r#"platescore_jobs_finished_total{code="",status="succeeded"}"#) >= 1.0);
    assert!(
        delta(r#"platescore_jobs_finished_total{code="image_corrupt",status="failed"}"#) >= 1.0,
        "{text}"
    );
    assert!(delta(r#"platescore_http_requests_total{operation="enqueue",status="202"}"#) >= 2.0);
    assert!(delta("platescore_batch_size_count") >= 1.0);
    assert!(delta("platescore_preprocess_seconds_count") >= 1.0);
    assert!(delta("platescore_job_duration_seconds_count") >= 2.0);
    // The queue depth is this node's database, read at the scrape: exact (the seeded queue
    // of the dashboard's test checks non-zero depths).
    for state in ["queued", "in_progress"] {
        let series = format!(r#"platescore_queue_depth{{state="{state}"}}"#);
        assert_eq!(after.get(&series), Some(&0.0), "{series}");
    }
    assert!(!text.contains(r#"platescore_queue_depth{state="succeeded"}"#));
    assert_eq!(get(&after, "platescore_queue_oldest_age_seconds"), 0.0);
    assert_eq!(get(&after, "platescore_database_up"), 1.0);
    // Known series exist before their first event, so alerts see the first step.
    assert!(after.contains_key(r#"platescore_reconcile_runs_total{result="error"}"#));
    assert!(after.contains_key(r#"platescore_webhook_attempts_total{outcome="timeout"}"#));
    // Labels are operations, never URLs or ids.
    for id in &ids {
        assert!(!text.contains(id.as_str()));
    }
    assert!(!text.contains("/status/"));
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = TestApp::spawn().await;
    let id = |response: &reqwest::Response| {
        response
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let fresh = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    let generated = id(&fresh).expect("an id is generated");
    assert!(uuid::Uuid::parse_str(&generated).is_ok());

    let given = app
        .client
        .get(app.url("/status/nope"))
        .header("x-request-id", "trace-abc-123")
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(given.status(), 404);
    assert_eq!(id(&given).as_deref(), Some("trace-abc-123"));

    let unfit = app
        .client
        .get(app.url("/health/live"))
        .header("x-request-id", "x".repeat(500))
        .send()
        .await
        .unwrap();
    assert_ne!(id(&unfit).unwrap(), "x".repeat(500));
}

#[tokio::test]
async fn stats_are_right_on_seeded_data_per_partner_and_for_admins() {
    use sea_orm::{sea_query::Expr, ColumnTrait, EntityTrait, QueryFilter};
    let app = TestApp::spawn().await;
    let other = app.new_partner("other").await;
    let admin = app.new_admin("ops").await;
    // Mine: three succeeded (ratings 5, 5 and not food), one failed, one queued.
    let seeds = [
        (
            &app.key,
            "succeeded",
            serde_json::json!({"is_food": true, "rating": 5, "labels": [{"label": "lemon"}]}),
            100,
        ),
        (
            &app.key,
            "succeeded",
            serde_json::json!({"is_food": true, "rating": 5, "labels": [{"label": "lemon"}]}),
            200,
        ),
        (
            &app.key,
            "succeeded",
            serde_json::json!({"is_food": false, "rating": null, "labels": [{"label": "tabby"}]}),
            300,
        ),
        (&app.key, "failed", Value::Null, 400),
        (&app.key, "queued", Value::Null, 0),
        (
            &other,
            "succeeded",
            serde_json::json!({"is_food": true, "rating": 2, "labels": [{"label": "pizza"}]}),
            1000,
        ),
    ];
    let mut ids = Vec::new();
    for (i, (key, status, result, ms)) in seeds.iter().enumerate() {
        let mut bytes = fixture("apple.jpg");
        bytes.extend_from_slice(format!("{i}").as_bytes());
        let job: Value = app.upload(key, bytes, "a.jpg").await.json().await.unwrap();
        let id: uuid::Uuid = job["job_id"].as_str().unwrap().parse().unwrap();
        ids.push(id);
        let status = match *status {
            "succeeded" => entity::job::JobStatus::Succeeded,
            "failed" => entity::job::JobStatus::Failed,
            _ => entity::job::JobStatus::Queued,
        };
        let mut update = entity::job::Entity::update_many()
            .col_expr(entity::job::Column::Status, Expr::value(status))
            .filter(entity::job::Column::Id.eq(id));
        if status != entity::job::JobStatus::Queued {
            update = update.col_expr(
                entity::job::Column::ProcessingTimeMs,
                Expr::value(*ms as i64),
            );
        }
        if !result.is_null() {
            update = update.col_expr(entity::job::Column::Result, Expr::value(result.clone()));
        }
        update.exec(app.db.writer()).await.unwrap();
    }
    // The queued one was enqueued yesterday (UTC); one dated tomorrow (a skewed clock) is
    // outside the window.
    let set_created = |id: uuid::Uuid, at: chrono::DateTime<chrono::Utc>| {
        entity::job::Entity::update_many()
            .col_expr(entity::job::Column::CreatedAt, Expr::value(at))
            .filter(entity::job::Column::Id.eq(id))
            .exec(app.db.writer())
    };
    set_created(ids[4], chrono::Utc::now() - chrono::Duration::days(1))
        .await
        .unwrap();
    let mut bytes = fixture("apple.jpg");
    bytes.extend_from_slice(b"tomorrow");
    let job: Value = app
        .upload(&app.key, bytes, "a.jpg")
        .await
        .json()
        .await
        .unwrap();
    let tomorrow: uuid::Uuid = job["job_id"].as_str().unwrap().parse().unwrap();
    set_created(tomorrow, chrono::Utc::now() + chrono::Duration::days(1))
        .await
        .unwrap();
    // Deliveries of my first job: one delivered, one failed, one still pending.
    let partner_id = platescore::store::partners::authenticate(&app.db, &app.key)
        .await
        .unwrap()
        .unwrap()
        .id;
    for status in [
        entity::delivery::DeliveryStatus::Delivered,
        entity::delivery::DeliveryStatus::Failed,
        entity::delivery::DeliveryStatus::Pending,
    ] {
        use sea_orm::{ActiveModelTrait, ActiveValue::Set};
        let now = chrono::Utc::now();
        entity::delivery::ActiveModel {
            id: Set(uuid::Uuid::now_v7()),
            job_id: Set(ids[0]),
            partner_id: Set(partner_id),
            endpoint_id: Set(None),
            url: Set("https://hooks.example.net/x".into()),
            event_type: Set("job.succeeded".into()),
            payload: Set("{}".into()),
            status: Set(status),
            attempts: Set(1),
            next_attempt_at: Set(None),
            lease_token: Set(None),
            lease_expires_at: Set(None),
            last_status_code: Set(None),
            last_error: Set(None),
            delivered_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            turn: Set(0),
        }
        .insert(app.db.writer())
        .await
        .unwrap();
    }

    let mine = app.get_json(&app.key, "/admin/stats?days=7").await;
    assert_eq!(mine["scope"], "partner");
    let per_day = mine["jobs_per_day"].as_array().unwrap();
    assert_eq!(per_day.len(), 7);
    assert_eq!(
        per_day[6]["day"],
        chrono::Utc::now().format("%Y-%m-%d").to_string()
    );
    assert_eq!(per_day[6]["jobs"], 4);
    assert_eq!(per_day[5]["jobs"], 1);
    assert_eq!(per_day[0]["jobs"], 0);
    assert_eq!(mine["succeeded"], 3);
    assert_eq!(mine["failed"], 1);
    let ratings: Vec<u64> = mine["score_distribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["jobs"].as_u64().unwrap())
        .collect();
    assert_eq!(ratings, vec![0, 0, 0, 0, 2]);
    assert_eq!(
        mine["top_labels"][0],
        serde_json::json!({"label": "lemon", "jobs": 2})
    );
    assert_eq!(
        mine["top_labels"][1],
        serde_json::json!({"label": "tabby", "jobs": 1})
    );
    assert!((mine["not_food_share"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    // Succeeded jobs only (100, 200, 300 ms; the failed one's 400 ms is left out).
    assert_eq!(mine["processing_ms_p50"], 200);
    assert_eq!(mine["processing_ms_p95"], 300);
    assert_eq!(mine["delivery_success_rate"], 0.5);

    let all = app.get_json(&admin, "/admin/stats").await;
    assert_eq!(all["scope"], "all");
    assert_eq!(all["jobs_per_day"].as_array().unwrap().len(), 30);
    assert_eq!(all["succeeded"], 4);
    assert_eq!(all["score_distribution"][1]["jobs"], 1);
    // A partner cannot ask for another's.
    let partner_id = platescore::store::partners::authenticate(&app.db, &other)
        .await
        .unwrap()
        .unwrap()
        .id;
    let response = app
        .client
        .get(app.url(&format!("/admin/stats?partner_id={partner_id}")))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    crate::helpers::assert_problem(response, 403, "admin_required").await;
    let theirs = app
        .get_json(&admin, &format!("/admin/stats?partner_id={partner_id}"))
        .await;
    assert_eq!(theirs["succeeded"], 1);
    assert_eq!(theirs["top_labels"][0]["label"], "pizza");
}

#[tokio::test]
async fn refused_requests_are_counted_under_their_operation() {
    let app = TestApp::spawn().await;
    let series = r#"platescore_http_requests_total{operation="get_status",status="401"}"#;
    let (_, before) = scrape(&app).await;
    let response = app
        .client
        .get(app.url("/status/01a209b2-fd93-7244-9c7b-8b8d352119f9"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let (_, after) = scrape(&app).await;
    assert!(get(&after, series) > get(&before, series), "{series}");
}

#[tokio::test]
async fn a_metrics_token_guards_the_exposition() {
    let app = TestApp::spawn_with(crate::helpers::TestOptions {
        configure: Box::new(|config| config.metrics_token = Some("scrape-secret".into())),
        ..Default::default()
    })
    .await;
    for token in [None, Some("wrong")] {
        let mut request = app.client.get(app.url("/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        crate::helpers::assert_problem(response, 401, "unauthorized").await;
    }
    let response = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("platescore_database_up 1"));
}
