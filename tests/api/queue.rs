//! The work queue on the real database (SQLite, or PostgreSQL under .ci/with-postgres):
//! claims, leases, finishing under the lease, rescue of expired leases. Time is injected.

use std::time::Duration;

use chrono::Utc;
use platescore::store::{
    deliveries::PayloadRenderer,
    queue::{self, Outcome},
};
use serde_json::{json, Value};

use crate::helpers::TestApp;

async fn enqueue(app: &TestApp, n: usize) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let job: Value = app
            .enqueue_json(
                &app.key,
                json!({"image_url": format!("https://cdn.example.com/{i}.jpg")}),
            )
            .await
            .json()
            .await
            .unwrap();
        ids.push(job["job_id"].as_str().unwrap().parse().unwrap());
    }
    ids
}

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_claim_takes_due_jobs_oldest_first_and_only_once() {
    let app = TestApp::spawn().await;
    let ids = enqueue(&app, 5).await;
    let now = Utc::now() + chrono::Duration::seconds(1);
    let first = queue::claim(&app.db, now, 3, LEASE).await.unwrap();
    assert_eq!(first.iter().map(|l| l.job.id).collect::<Vec<_>>(), ids[..3]);
    for lease in &first {
        assert_eq!(lease.job.status, entity::job::JobStatus::InProgress);
        assert_eq!(lease.job.lease_token, Some(lease.token));
        assert_eq!(lease.job.attempts, 1);
    }
    let second = queue::claim(&app.db, now, 10, LEASE).await.unwrap();
    assert_eq!(
        second.iter().map(|l| l.job.id).collect::<Vec<_>>(),
        ids[3..]
    );
    assert!(queue::claim(&app.db, now, 10, LEASE)
        .await
        .unwrap()
        .is_empty());
    // The API shows them in progress.
    let status: Value = app
        .status(&app.key, &ids[0].to_string())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "in_progress");
}

/// A result as the scorer stores it.
fn scored() -> serde_json::Value {
    json!({
        "is_food": true, "score": 4.5, "rating": 5, "confidence": 0.9, "food_evidence": 0.95,
        "food_group": "fruit", "labels": [], "tips": [], "lang": "en", "model_version": "test-model",
    })
}

#[tokio::test]
async fn only_the_lease_holder_finishes_a_job() {
    let app = TestApp::spawn().await;
    let ids = enqueue(&app, 1).await;
    let now = Utc::now() + chrono::Duration::seconds(1);
    let lease = queue::claim(&app.db, now, 1, LEASE)
        .await
        .unwrap()
        .remove(0);
    let mut forged = lease.clone();
    forged.token = uuid::Uuid::new_v4();
    let done = Outcome::Succeeded {
        result: scored(),
        model_version: "test-model".into(),
        processing_time_ms: 12,
    };
    assert!(
        queue::finish(&app.db, &forged, now, done.clone(), &no_payload())
            .await
            .unwrap()
            .is_none()
    );
    assert!(queue::heartbeat(&app.db, &lease, now, LEASE).await.unwrap());
    assert!(
        queue::finish(&app.db, &lease, now, done.clone(), &no_payload())
            .await
            .unwrap()
            .is_some()
    );
    // Finishing twice does nothing the second time.
    assert!(queue::finish(&app.db, &lease, now, done, &no_payload())
        .await
        .unwrap()
        .is_none());
    let job: Value = app
        .status(&app.key, &ids[0].to_string())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"], scored());
    assert_eq!(job["processing_time_ms"], 12);
}

#[tokio::test]
async fn expired_leases_are_rescued_and_the_old_holder_cannot_finish() {
    let app = TestApp::spawn().await;
    enqueue(&app, 2).await;
    let t0 = Utc::now() + chrono::Duration::seconds(1);
    let leases = queue::claim(&app.db, t0, 2, LEASE).await.unwrap();
    // Keep the first alive; let the second expire.
    let t1 = t0 + chrono::Duration::seconds(50);
    assert!(queue::heartbeat(&app.db, &leases[0], t1, LEASE)
        .await
        .unwrap());
    let t2 = t0 + chrono::Duration::seconds(61);
    assert_eq!(
        queue::rescue_expired(&app.db, t2, 5, &no_payload())
            .await
            .unwrap(),
        (1, 0)
    );
    let stale = Outcome::Failed {
        code: "image_corrupt".into(),
        message: "late".into(),
        processing_time_ms: 1,
    };
    assert!(queue::finish(&app.db, &leases[1], t2, stale, &no_payload())
        .await
        .unwrap()
        .is_none());
    let again = queue::claim(&app.db, t2, 10, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].job.id, leases[1].job.id);
    assert_eq!(again[0].job.attempts, 2);
}

#[tokio::test]
async fn a_job_that_keeps_losing_its_worker_fails_instead_of_looping() {
    let app = TestApp::spawn().await;
    let ids = enqueue(&app, 1).await;
    let mut now = Utc::now() + chrono::Duration::seconds(1);
    // Three claims whose worker never comes back (a crash, a panic).
    for attempt in 1..=3 {
        let lease = queue::claim(&app.db, now, 1, LEASE).await.unwrap();
        assert_eq!(lease.len(), 1, "attempt {attempt}");
        now += chrono::Duration::seconds(61);
        let rescued = queue::rescue_expired(&app.db, now, 3, &no_payload())
            .await
            .unwrap();
        let expected = if attempt < 3 { (1, 0) } else { (0, 1) };
        assert_eq!(rescued, expected, "attempt {attempt}");
    }
    let job: Value = app
        .status(&app.key, &ids[0].to_string())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "worker_lost");
    assert!(queue::claim(&app.db, now, 1, LEASE)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_retry_waits_until_it_is_due() {
    let app = TestApp::spawn().await;
    enqueue(&app, 1).await;
    let t0 = Utc::now() + chrono::Duration::seconds(1);
    let lease = queue::claim(&app.db, t0, 1, LEASE).await.unwrap().remove(0);
    let due = t0 + chrono::Duration::seconds(30);
    let retry = Outcome::Retry {
        run_at: due,
        code: "image_fetch_timeout".into(),
        message: "timed out".into(),
    };
    assert!(queue::finish(&app.db, &lease, t0, retry, &no_payload())
        .await
        .unwrap()
        .is_some());
    assert!(
        queue::claim(&app.db, due - chrono::Duration::seconds(1), 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(queue::claim(&app.db, due, 1, LEASE).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_never_take_the_same_job() {
    let app = TestApp::spawn().await;
    let ids = enqueue(&app, 60).await;
    let now = Utc::now() + chrono::Duration::seconds(1);
    let claimers: Vec<_> = (0..6)
        .map(|_| {
            let db = app.db.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let batch = queue::claim(&db, now, 4, LEASE).await.unwrap();
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch.into_iter().map(|l| l.job.id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.unwrap());
    }
    all.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(all, expected, "every job claimed exactly once");
}

fn no_payload() -> PayloadRenderer {
    std::sync::Arc::new(|_| String::new())
}
