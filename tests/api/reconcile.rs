//! The daily reconciliation over seeded stuck states. Time is injected: the run is told
//! what "now" is, and the seeds are placed relative to it.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use entity::{delivery, job, webhook_endpoint};
use platescore::{
    api,
    scheduling::{ReconcileSettings, Reconciler},
    store::{endpoints, queue},
};
use sea_orm::{sea_query::Expr, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{fixture, TestApp};

fn settings() -> ReconcileSettings {
    ReconcileSettings {
        stale_after: std::time::Duration::from_secs(3600),
        max_attempts: 3,
        disable_failing_endpoints_after: std::time::Duration::from_secs(5 * 86400),
        retention: std::time::Duration::from_secs(30 * 86400),
    }
}

async fn reconciler(app: &TestApp) -> Arc<Reconciler> {
    Reconciler::new(
        app.db.clone(),
        platescore::objects::open(&app.config).await.unwrap(),
        api::webhook_payload_renderer(),
        settings(),
    )
}

async fn enqueue(app: &TestApp, image: &str, salt: &str, webhook: Option<&str>) -> Uuid {
    let mut bytes = fixture(image);
    bytes.extend_from_slice(salt.as_bytes());
    let response = match webhook {
        Some(url) => app.upload_with_webhook(&app.key, bytes, url).await,
        None => app.upload(&app.key, bytes, image).await,
    };
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    body["job_id"].as_str().unwrap().parse().unwrap()
}

async fn set(app: &TestApp, id: Uuid, column: job::Column, value: impl Into<sea_orm::Value>) {
    job::Entity::update_many()
        .col_expr(column, Expr::value(value))
        .filter(job::Column::Id.eq(id))
        .exec(app.db.writer())
        .await
        .unwrap();
}

async fn load(app: &TestApp, id: Uuid) -> Option<job::Model> {
    job::Entity::find_by_id(id)
        .one(app.db.reader())
        .await
        .unwrap()
}

async fn seed_endpoint(app: &TestApp, url: &str, failing_since: Option<DateTime<Utc>>) -> Uuid {
    let partner = platescore::store::partners::authenticate(&app.db, &app.key)
        .await
        .unwrap()
        .unwrap();
    let endpoint = endpoints::create(
        &app.db,
        partner.id,
        url.into(),
        None,
        "whsec_AAAA".into(),
        20,
    )
    .await
    .unwrap()
    .created()
    .unwrap();
    webhook_endpoint::Entity::update_many()
        .col_expr(
            webhook_endpoint::Column::FailingSince,
            Expr::value(failing_since),
        )
        .filter(webhook_endpoint::Column::Id.eq(endpoint.id))
        .exec(app.db.writer())
        .await
        .unwrap();
    endpoint.id
}

#[tokio::test]
async fn reconciliation_fixes_seeded_stale_states_once_per_slot() {
    let app = TestApp::spawn_with(crate::helpers::TestOptions {
        configure: Box::new(|config| config.outbound_allow_cidrs = "127.0.0.0/8".into()),
        ..Default::default()
    })
    .await;
    let now: DateTime<Utc> = "2026-11-24T03:00:00Z".parse().unwrap();
    let hours_ago = |h: i64| now - Duration::hours(h);
    let lease = std::time::Duration::from_secs(60);

    // Queued two hours past due, with attempts left: left where it is in the queue.
    let waiting = enqueue(&app, "apple.jpg", "a", None).await;
    set(&app, waiting, job::Column::RunAt, hours_ago(2)).await;
    set(&app, waiting, job::Column::CreatedAt, hours_ago(2)).await;
    // In progress since two hours, its worker gone: requeued.
    let abandoned = enqueue(&app, "lemon.jpg", "b", None).await;
    set(&app, abandoned, job::Column::RunAt, hours_ago(3)).await;
    set(&app, abandoned, job::Column::CreatedAt, hours_ago(3)).await;
    let claimed = queue::claim(&app.db, hours_ago(2) - Duration::minutes(30), 1, lease)
        .await
        .unwrap();
    assert_eq!(claimed[0].job.id, abandoned);
    // Stuck with no attempts left: failed `stale`, and its webhook written to the outbox.
    let exhausted = enqueue(&app, "pizza.jpg", "c", Some("http://127.0.0.1:9/hook")).await;
    set(&app, exhausted, job::Column::Attempts, 3).await;
    set(&app, exhausted, job::Column::RunAt, hours_ago(5)).await;
    set(&app, exhausted, job::Column::CreatedAt, hours_ago(5)).await;
    // Fresh: untouched.
    let fresh = enqueue(&app, "cabbage.jpg", "d", None).await;
    set(&app, fresh, job::Column::RunAt, now - Duration::minutes(5)).await;
    set(
        &app,
        fresh,
        job::Column::CreatedAt,
        now - Duration::minutes(5),
    )
    .await;

    // Endpoints failing for six days (disabled) and for one (kept).
    let dead = seed_endpoint(&app, "http://127.0.0.1:9/dead", Some(hours_ago(6 * 24))).await;
    let flaky = seed_endpoint(&app, "http://127.0.0.1:9/flaky", Some(hours_ago(24))).await;
    // A finished job whose deliveries ran out of retries, to each of them.
    let finished = enqueue(&app, "cat.jpg", "e", None).await;
    set(&app, finished, job::Column::CreatedAt, hours_ago(1)).await;
    set(
        &app,
        finished,
        job::Column::Status,
        job::JobStatus::Succeeded,
    )
    .await;
    for endpoint in [dead, flaky] {
        delivery::Entity::insert(delivery::ActiveModel {
            id: sea_orm::Set(Uuid::now_v7()),
            job_id: sea_orm::Set(finished),
            partner_id: sea_orm::Set(load(&app, finished).await.unwrap().partner_id),
            endpoint_id: sea_orm::Set(Some(endpoint)),
            url: sea_orm::Set("http://127.0.0.1:9/x".into()),
            event_type: sea_orm::Set("job.succeeded".into()),
            payload: sea_orm::Set("{}".into()),
            status: sea_orm::Set(delivery::DeliveryStatus::Failed),
            attempts: sea_orm::Set(8),
            next_attempt_at: sea_orm::Set(None),
            lease_token: sea_orm::Set(None),
            lease_expires_at: sea_orm::Set(None),
            last_status_code: sea_orm::Set(Some(500)),
            last_error: sea_orm::Set(Some("HTTP 500".into())),
            delivered_at: sea_orm::Set(None),
            created_at: sea_orm::Set(hours_ago(1)),
            updated_at: sea_orm::Set(hours_ago(1)),
            turn: sea_orm::Set(0),
        })
        .exec(app.db.writer())
        .await
        .unwrap();
    }

    // Past retention: two jobs, one with the same bytes as a recent job. Each job has its
    // own image: both expired jobs' go, the recent job's stays.
    let expired_alone = enqueue(&app, "pineapple.jpg", "f", None).await;
    let expired_shared = enqueue(&app, "bell_pepper.jpg", "g", None).await;
    let recent_shared = enqueue(&app, "bell_pepper.jpg", "g", None).await;
    for id in [expired_alone, expired_shared] {
        set(&app, id, job::Column::CreatedAt, hours_ago(31 * 24)).await;
        set(&app, id, job::Column::Status, job::JobStatus::Succeeded).await;
    }
    set(
        &app,
        recent_shared,
        job::Column::Status,
        job::JobStatus::Succeeded,
    )
    .await;
    let alone_key = load(&app, expired_alone).await.unwrap().image_key.unwrap();
    let shared_key = load(&app, expired_shared).await.unwrap().image_key.unwrap();
    let recent_key = load(&app, recent_shared).await.unwrap().image_key.unwrap();
    assert_ne!(shared_key, recent_key);
    let objects_before = app.stored_objects().len();

    let reconciler = reconciler(&app).await;
    // Counters are per process, shared with tests running beside this one.
    let stale_failures = || {
        platescore::metrics::get()
            .jobs_finished
            .with_label_values(&["failed", "stale"])
            .get()
    };
    let stale_before = stale_failures();
    let counts = reconciler
        .run_slot(now, "schedule", now)
        .await
        .unwrap()
        .expect("the slot was free");
    assert_eq!(counts.jobs_requeued, 1, "{counts:?}");
    assert_eq!(counts.jobs_failed_stale, 1, "{counts:?}");
    assert!(
        stale_failures() > stale_before,
        "stale failures are counted"
    );
    assert_eq!(counts.endpoints_disabled, 1, "{counts:?}");
    assert_eq!(counts.deliveries_rescheduled, 1, "{counts:?}");
    assert_eq!(counts.jobs_deleted, 2, "{counts:?}");
    assert_eq!(counts.objects_deleted, 2, "{counts:?}");

    let job = load(&app, abandoned).await.unwrap();
    assert_eq!(job.status, job::JobStatus::Queued);
    assert_eq!(job.run_at, Some(now));
    assert!(job.lease_token.is_none());
    let job = load(&app, waiting).await.unwrap();
    assert_eq!(job.status, job::JobStatus::Queued);
    assert_eq!(
        job.run_at,
        Some(hours_ago(2)),
        "its place in the queue is kept"
    );
    // The old lease holder can no longer finish the requeued job.
    let late = queue::finish(
        &app.db,
        &claimed[0],
        now,
        queue::Outcome::Failed {
            code: "x".into(),
            message: "x".into(),
            processing_time_ms: 1,
        },
        &api::webhook_payload_renderer(),
    )
    .await
    .unwrap();
    assert!(late.is_none());

    let stale = load(&app, exhausted).await.unwrap();
    assert_eq!(stale.status, job::JobStatus::Failed);
    assert_eq!(stale.error_code.as_deref(), Some("stale"));
    let outbox = delivery::Entity::find()
        .filter(delivery::Column::JobId.eq(exhausted))
        .all(app.db.reader())
        .await
        .unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].status, delivery::DeliveryStatus::Pending);
    let payload: Value = serde_json::from_str(&outbox[0].payload).unwrap();
    assert_eq!(payload["type"], "job.failed");
    assert_eq!(payload["error"]["code"], "stale");

    let fresh_job = load(&app, fresh).await.unwrap();
    assert_eq!(fresh_job.run_at, Some(now - Duration::minutes(5)));

    let dead_endpoint = endpoints::find_many(&app.db, &[dead])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(dead_endpoint.disabled_reason.as_deref(), Some("failing"));
    assert!(endpoints::find_many(&app.db, &[flaky])
        .await
        .unwrap()
        .remove(0)
        .disabled_at
        .is_none());
    let deliveries = delivery::Entity::find()
        .filter(delivery::Column::JobId.eq(finished))
        .all(app.db.reader())
        .await
        .unwrap();
    for d in deliveries {
        if d.endpoint_id == Some(flaky) {
            assert_eq!(d.status, delivery::DeliveryStatus::Pending);
            assert_eq!(d.attempts, 0);
            assert_eq!(d.next_attempt_at, Some(now));
        } else {
            assert_eq!(d.status, delivery::DeliveryStatus::Failed);
        }
    }

    assert!(load(&app, expired_alone).await.is_none());
    assert!(load(&app, expired_shared).await.is_none());
    assert!(load(&app, recent_shared).await.is_some());
    let remaining: Vec<String> = app
        .stored_objects()
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(remaining.len(), objects_before - 2);
    let name = |key: &str| key.rsplit('/').next().unwrap().to_string();
    assert!(!remaining.iter().any(|p| p.contains(&name(&alone_key))));
    assert!(!remaining.iter().any(|p| p.contains(&name(&shared_key))));
    assert!(remaining.iter().any(|p| p.contains(&name(&recent_key))));

    // The same slot does not run twice (another node, or a second scheduler, gets None).
    assert!(reconciler
        .run_slot(now, "schedule", now)
        .await
        .unwrap()
        .is_none());

    // The run is on record for admins only.
    let admin = app.new_admin("ops").await;
    let runs = app.get_json(&admin, "/admin/reconcile-runs").await;
    let run = &runs["runs"][0];
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
    assert_eq!(run["slot"], "2026-11-24T03:00:00.000Z");
    assert_eq!(run["trigger"], "schedule");
    assert_eq!(run["jobs_requeued"], 1);
    assert_eq!(run["jobs_failed_stale"], 1);
    assert_eq!(run["objects_deleted"], 2);
    assert_eq!(run["error"], Value::Null);
    assert!(run["finished_at"].is_string());
    let response = app
        .client
        .get(app.url("/admin/reconcile-runs"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    crate::helpers::assert_problem(response, 403, "admin_required").await;
    let _ = json!({});
}

#[tokio::test]
async fn the_schedule_fires_and_each_slot_runs_on_one_node_only() {
    // Two worker nodes on one database, both scheduling every second.
    let every_second = |config: &mut platescore::config::Config| {
        config.reconcile_cron = "* * * * * *".into();
    };
    let app = TestApp::spawn_with(crate::helpers::TestOptions::with_workers(every_second)).await;
    let mut second = app.config.clone();
    every_second(&mut second);
    let other = platescore::startup::Application::build(&second, platescore::startup::Role::Worker)
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(other.run_until(stop.clone()));

    let admin = app.new_admin("ops").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let runs = loop {
        let runs = app.get_json(&admin, "/admin/reconcile-runs").await["runs"]
            .as_array()
            .unwrap()
            .clone();
        if runs.len() >= 3 {
            break runs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the schedule never fired: {runs:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    stop.cancel();
    running.await.unwrap().unwrap();
    let mut slots: Vec<&str> = runs.iter().map(|r| r["slot"].as_str().unwrap()).collect();
    assert!(runs.iter().all(|r| r["trigger"] == "schedule"));
    // Slots are whole seconds of the schedule, and none ran twice.
    assert!(slots.iter().all(|s| s.ends_with(".000Z")), "{slots:?}");
    let total = slots.len();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(slots.len(), total);
}
