//! The daily reconciliation over seeded stuck states, and its slots: one run per slot,
//! taken over when its node dies, caught up at start, released at shutdown. Time is
//! injected: the run is told what "now" is (the database's clock in production), and the
//! seeds are placed relative to it.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use entity::{delivery, job, webhook_endpoint};
use platescore::{
    api,
    scheduling::{self, ReconcileError, ReconcileSettings, Reconciler, Schedule, SlotOutcome},
    store::{
        endpoints, queue,
        reconcile_runs::{self, ReconcileCounts, SlotClaim, SlotLease},
    },
};
use sea_orm::{sea_query::Expr, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{json, Value};
use uuid::Uuid;

use tokio_util::sync::CancellationToken;

use crate::helpers::{fixture, TestApp};

/// The slot lease the reconcilers of these tests hold.
const LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// A stop signal that never fires: the node keeps running.
fn running() -> CancellationToken {
    CancellationToken::new()
}

/// The counts of a run that went through without an error.
fn ran(outcome: Result<SlotOutcome, ReconcileError>) -> ReconcileCounts {
    match outcome {
        Ok(SlotOutcome::Ran {
            counts,
            error: None,
            ..
        }) => counts,
        other => panic!("expected a clean run, got {other:?}"),
    }
}

fn settings() -> ReconcileSettings {
    ReconcileSettings {
        stale_after: std::time::Duration::from_secs(3600),
        max_attempts: 3,
        disable_failing_endpoints_after: std::time::Duration::from_secs(5 * 86400),
        retention: std::time::Duration::from_secs(30 * 86400),
        lease: LEASE,
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
    let counts = ran(reconciler.run_slot(now, "schedule", now, &running()).await);
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

    // The same slot does not run twice (another node, or a second scheduler, finds it done).
    assert!(matches!(
        reconciler.run_slot(now, "schedule", now, &running()).await,
        Ok(SlotOutcome::Finished)
    ));

    // Every step is a conditional change of what is still stale, so a second run over the
    // same state (a node taking over a slot, or beside one that lost its lease) finds
    // nothing left to do, and writes no second webhook.
    let again = now + Duration::seconds(1);
    assert_eq!(
        ran(reconciler
            .run_slot(again, "manual", again, &running())
            .await),
        ReconcileCounts::default()
    );
    assert_eq!(
        delivery::Entity::find()
            .filter(delivery::Column::JobId.eq(exhausted))
            .all(app.db.reader())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        load(&app, abandoned).await.unwrap().run_at,
        Some(now),
        "the requeued job keeps its place"
    );

    // The run is on record for admins only.
    let admin = app.new_admin("ops").await;
    let runs = app.get_json(&admin, "/admin/reconcile-runs").await;
    let run = &runs["runs"][1];
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2);
    assert_eq!(runs["runs"][0]["trigger"], "manual");
    assert_eq!(run["slot"], "2026-11-24T03:00:00.000Z");
    assert_eq!(run["trigger"], "schedule");
    assert_eq!(run["jobs_requeued"], 1);
    assert_eq!(run["jobs_failed_stale"], 1);
    assert_eq!(run["objects_deleted"], 2);
    assert_eq!(run["error"], Value::Null);
    assert_eq!(run["takeovers"], 0);
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
    // The nodes took turns without ever waiting out a lease.
    assert!(runs.iter().all(|r| r["takeovers"] == 0), "{runs:?}");
    // Slots are whole seconds of the schedule, and none ran twice.
    assert!(slots.iter().all(|s| s.ends_with(".000Z")), "{slots:?}");
    let total = slots.len();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(slots.len(), total);
}

/// A slot row as a node leaves it when it dies right after claiming: leased, never renewed,
/// never finished.
async fn crashed_run(app: &TestApp, slot: DateTime<Utc>, at: DateTime<Utc>) -> SlotLease {
    match reconcile_runs::claim_slot(&app.db, slot, "schedule", at, LEASE)
        .await
        .unwrap()
    {
        SlotClaim::Claimed(lease) => lease,
        other => panic!("the slot was free: {other:?}"),
    }
}

async fn run_of(app: &TestApp, slot: DateTime<Utc>) -> entity::reconcile_run::Model {
    reconcile_runs::find_slot(&app.db, slot)
        .await
        .unwrap()
        .expect("the slot has a run")
}

#[tokio::test]
async fn a_slot_whose_node_died_is_taken_over_once_its_lease_lapses() {
    let app = TestApp::spawn().await;
    let slot: DateTime<Utc> = "2026-11-24T03:00:00Z".parse().unwrap();
    let dead = seed_endpoint(
        &app,
        "http://127.0.0.1:9/dead",
        Some(slot - Duration::days(6)),
    )
    .await;
    // The dead node got as far as deleting an expired job's image, not its row.
    let expired = enqueue(&app, "apple.jpg", "died", None).await;
    set(
        &app,
        expired,
        job::Column::CreatedAt,
        slot - Duration::days(31),
    )
    .await;
    set(
        &app,
        expired,
        job::Column::Status,
        job::JobStatus::Succeeded,
    )
    .await;
    let key = load(&app, expired).await.unwrap().image_key.unwrap();
    let objects = platescore::objects::open(&app.config).await.unwrap();
    objects.delete(&key).await.unwrap();
    let mut died = crashed_run(&app, slot, slot).await;
    // Its one heartbeat, ten seconds in, before it died.
    assert!(
        reconcile_runs::renew_lease(&app.db, &mut died, slot + Duration::seconds(10), LEASE)
            .await
            .unwrap()
    );
    let lapses = slot + Duration::seconds(70);
    assert_eq!(died.expires_at, lapses);

    // While its lease lives, the slot is the dead node's: nobody can tell it from a slow one.
    let live = reconciler(&app).await;
    let held = live
        .run_slot(slot, "schedule", lapses - Duration::seconds(1), &running())
        .await
        .unwrap();
    assert!(
        matches!(held, SlotOutcome::Held { lease_expires_at } if lease_expires_at == lapses),
        "{held:?}"
    );
    assert!(endpoints::find_many(&app.db, &[dead]).await.unwrap()[0]
        .disabled_at
        .is_none());

    // Once it has lapsed, a live node takes the slot over and runs it to the end, the
    // half-done retention included.
    let later = lapses + Duration::seconds(1);
    let outcome = live
        .run_slot(slot, "schedule", later, &running())
        .await
        .unwrap();
    let SlotOutcome::Ran {
        counts,
        error: None,
        taken_over: true,
    } = outcome
    else {
        panic!("expected a takeover, got {outcome:?}");
    };
    assert_eq!(counts.endpoints_disabled, 1, "{counts:?}");
    assert_eq!(counts.jobs_deleted, 1, "{counts:?}");
    assert!(load(&app, expired).await.is_none());
    let run = run_of(&app, slot).await;
    assert_eq!(run.takeovers, 1);
    assert_eq!(run.started_at, later);
    assert!(run.finished_at.is_some());
    assert_eq!(run.endpoints_disabled, 1);
    assert!(run.error.is_none());

    // Were the dead node only slow, it can neither renew, release nor finish the run now.
    assert!(
        !reconcile_runs::renew_lease(&app.db, &mut died, later, LEASE)
            .await
            .unwrap()
    );
    assert!(!reconcile_runs::release(&app.db, &died).await.unwrap());
    let bogus = ReconcileCounts {
        jobs_requeued: 99,
        ..Default::default()
    };
    assert!(
        !reconcile_runs::record_finish(&app.db, &died, bogus, None, later)
            .await
            .unwrap()
    );
    assert_eq!(run_of(&app, slot).await, run);
    // And the finished slot is not run again.
    assert!(matches!(
        live.run_slot(slot, "schedule", later + Duration::hours(1), &running())
            .await,
        Ok(SlotOutcome::Finished)
    ));
}

#[tokio::test]
async fn a_lapsed_slot_has_exactly_one_taker_among_concurrent_ones() {
    let app = TestApp::spawn().await;
    let slot: DateTime<Utc> = "2026-11-24T03:00:00Z".parse().unwrap();
    let lapsed = slot + Duration::seconds(61);

    // Eight claims at once on the database: one conditional UPDATE wins.
    crashed_run(&app, slot, slot).await;
    let claims = futures_util::future::join_all(
        (0..8).map(|_| reconcile_runs::claim_slot(&app.db, slot, "schedule", lapsed, LEASE)),
    )
    .await;
    let winners: Vec<&SlotLease> = claims
        .iter()
        .filter_map(|claim| match claim.as_ref().unwrap() {
            SlotClaim::Claimed(lease) => Some(lease),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{claims:?}");
    assert!(winners[0].taken_over);
    let renewed_until = lapsed + Duration::seconds(60);
    for claim in &claims {
        match claim.as_ref().unwrap() {
            SlotClaim::Claimed(_) => {}
            SlotClaim::Held { lease_expires_at } => assert_eq!(*lease_expires_at, renewed_until),
            SlotClaim::Finished => panic!("nobody finished it"),
        }
    }
    assert_eq!(run_of(&app, slot).await.takeovers, 1);

    // Two live nodes going for the same lapsed slot: one runs it, the other does not.
    let other_slot = slot + Duration::days(1);
    crashed_run(&app, other_slot, other_slot).await;
    let (a, b) = (reconciler(&app).await, reconciler(&app).await);
    let at = other_slot + Duration::seconds(61);
    let keep_running = running();
    let (first, second) = tokio::join!(
        a.run_slot(other_slot, "schedule", at, &keep_running),
        b.run_slot(other_slot, "schedule", at, &keep_running),
    );
    let outcomes = [first.unwrap(), second.unwrap()];
    let runs = outcomes
        .iter()
        .filter(|o| matches!(o, SlotOutcome::Ran { .. }))
        .count();
    assert_eq!(runs, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, SlotOutcome::Held { .. } | SlotOutcome::Finished)),
        "{outcomes:?}"
    );
    let run = run_of(&app, other_slot).await;
    assert_eq!(run.takeovers, 1);
    assert!(run.finished_at.is_some());
}

#[tokio::test]
async fn a_node_that_stops_mid_run_leaves_the_slot_to_be_taken_over_at_once() {
    let app = TestApp::spawn().await;
    let slot: DateTime<Utc> = "2026-11-24T03:00:00Z".parse().unwrap();
    let dead = seed_endpoint(
        &app,
        "http://127.0.0.1:9/dead",
        Some(slot - Duration::days(6)),
    )
    .await;

    // Shutdown fires as the run starts: it stops and releases its lease, unfinished.
    let stopping = reconciler(&app).await;
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let outcome = stopping
        .run_slot(slot, "schedule", slot, &shutdown)
        .await
        .unwrap();
    assert!(matches!(outcome, SlotOutcome::Released), "{outcome:?}");
    let run = run_of(&app, slot).await;
    assert!(run.finished_at.is_none());
    assert_eq!(run.lease_expires_at, None, "released, not left to lapse");
    assert!(endpoints::find_many(&app.db, &[dead]).await.unwrap()[0]
        .disabled_at
        .is_none());

    // Another node takes it over at once, long before the lease would have lapsed.
    let soon = slot + Duration::seconds(1);
    let outcome = reconciler(&app)
        .await
        .run_slot(slot, "schedule", soon, &running())
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            SlotOutcome::Ran {
                error: None,
                taken_over: true,
                counts: ReconcileCounts {
                    endpoints_disabled: 1,
                    ..
                }
            }
        ),
        "{outcome:?}"
    );
    let run = run_of(&app, slot).await;
    assert!(run.finished_at.is_some());
    assert_eq!(run.takeovers, 1);
}

#[tokio::test]
async fn the_latest_slot_is_caught_up_at_start_when_no_node_ran_it() {
    let app = TestApp::spawn().await;
    let daily = Schedule::parse("0 0 3 * * *", "Europe/Berlin").unwrap();
    let now: DateTime<Utc> = "2026-11-24T15:00:00Z".parse().unwrap();
    let today = "2026-11-24T02:00:00Z".parse().unwrap();
    let catch_up = || scheduling::slot_to_catch_up(&app.db, &daily, now);

    // A new installation missed nothing.
    assert_eq!(catch_up().await.unwrap(), None);
    // Runs on record up to three days ago, none since: the cluster was down at 03:00. Only
    // today's slot is caught up; it handles everything stale up to now.
    let lease = crashed_run(&app, today - Duration::days(3), today - Duration::days(3)).await;
    reconcile_runs::record_finish(&app.db, &lease, ReconcileCounts::default(), None, now)
        .await
        .unwrap();
    assert_eq!(catch_up().await.unwrap(), Some(today));
    // Today's run is unfinished (its node died, or stopped): seen through at start.
    let lease = crashed_run(&app, today, today).await;
    assert_eq!(catch_up().await.unwrap(), Some(today));
    // Finished: nothing to catch up.
    reconcile_runs::record_finish(&app.db, &lease, ReconcileCounts::default(), None, now)
        .await
        .unwrap();
    assert_eq!(catch_up().await.unwrap(), None);
    // A manual run after a missed slot did its work.
    let tomorrow_evening = now + Duration::days(1);
    let manual = tomorrow_evening - Duration::hours(2);
    let lease = match reconcile_runs::claim_slot(&app.db, manual, "manual", manual, LEASE)
        .await
        .unwrap()
    {
        SlotClaim::Claimed(lease) => lease,
        other => panic!("{other:?}"),
    };
    reconcile_runs::record_finish(&app.db, &lease, ReconcileCounts::default(), None, manual)
        .await
        .unwrap();
    assert_eq!(
        scheduling::slot_to_catch_up(&app.db, &daily, tomorrow_evening)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn several_nodes_starting_together_catch_up_the_missed_slot_once() {
    // A yearly slot, so no slot falls due while the test runs.
    let yearly = |config: &mut platescore::config::Config| {
        config.reconcile_cron = "0 0 3 1 1 *".into();
        config.runtime = platescore::inference::RuntimeChoice::Auto;
    };
    let app = TestApp::spawn_with(crate::helpers::TestOptions {
        configure: Box::new(yearly),
        ..Default::default()
    })
    .await;
    let schedule = platescore::startup::settings::reconcile_schedule(&app.config).unwrap();
    let latest = schedule.latest_at_or_before(app.db.now().await).unwrap();
    let before_last = schedule
        .latest_at_or_before(latest - Duration::seconds(1))
        .unwrap();
    let two_back = schedule
        .latest_at_or_before(before_last - Duration::seconds(1))
        .unwrap();
    // The cluster last ran two slots ago; it was down for the last two.
    let lease = crashed_run(&app, two_back, two_back).await;
    reconcile_runs::record_finish(&app.db, &lease, ReconcileCounts::default(), None, two_back)
        .await
        .unwrap();

    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(
            platescore::startup::Application::build(&app.config, platescore::startup::Role::Worker)
                .await
                .unwrap(),
        );
    }
    let stop = CancellationToken::new();
    let running: Vec<_> = nodes
        .into_iter()
        .map(|node| tokio::spawn(node.run_until(stop.clone())))
        .collect();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let run = loop {
        match reconcile_runs::find_slot(&app.db, latest).await.unwrap() {
            Some(run) if run.finished_at.is_some() => break run,
            run => assert!(
                std::time::Instant::now() < deadline,
                "the missed slot was not caught up: {run:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // The nodes that lost the claim watch the winner's lease; shutdown ends their wait.
    stop.cancel();
    for node in running {
        node.await.unwrap().unwrap();
    }
    assert_eq!(run.trigger, "schedule");
    assert_eq!(run.error, None);
    assert_eq!(run.takeovers, 0, "run once, never taken over");
    let slots: Vec<DateTime<Utc>> = reconcile_runs::list(&app.db, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.slot)
        .collect();
    assert_eq!(
        slots,
        vec![latest, two_back],
        "only the latest missed slot runs"
    );
}
