//! Fairness between partners: one partner's backlog does not hold up another's jobs, and a
//! slow receiver holds no more than its cap of a node's delivery slots.

use futures_util::{stream, StreamExt};
use platescore::startup::{Application, Role};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{
    helpers::{fixture, TestApp, TestOptions},
    receiver::{Receiver, Reply},
};

/// `image` made distinct by `n`: bytes after the JPEG's end are ignored by decoders, but
/// change the hash, so no job reuses another's result.
fn distinct(image: &[u8], n: usize) -> Vec<u8> {
    let mut bytes = image.to_vec();
    bytes.extend_from_slice(format!("platescore-fairness-{n}").as_bytes());
    bytes
}

async fn job_id(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    let body: Value = response.json().await.unwrap();
    body["job_id"].as_str().unwrap().to_string()
}

fn updated_at(job: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(job["updated_at"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backlog_of_500_jobs_does_not_hold_up_another_partners_job() {
    // The API node takes both partners' jobs before any worker runs: partner A has a 500-job
    // backlog when partner B's single job arrives.
    let app = TestApp::spawn_with(TestOptions {
        configure: Box::new(|config| {
            config.runtime = platescore::inference::RuntimeChoice::Auto;
            config.poll_interval_ms = 100;
        }),
        ..TestOptions::default()
    })
    .await;
    let partner_b = app.new_partner("partner B").await;
    let image = fixture("apple.jpg");
    let backlog: Vec<String> = stream::iter(0..500)
        .map(|n| {
            let (app, image) = (&app, &image);
            async move { job_id(app.upload(&app.key, distinct(image, n), "a.jpg").await).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert_eq!(backlog.len(), 500);
    let single = job_id(app.upload(&partner_b, distinct(&image, 0), "b.jpg").await).await;

    // Then a worker node starts on the same database and objects.
    let mut worker_config = app.config.clone();
    worker_config.listen = "127.0.0.1:0".into();
    let worker = Application::build(&worker_config, Role::Worker)
        .await
        .expect("worker node builds");
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until(stop.clone()));

    let done = app.wait_until_settled(&partner_b, &single).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let finished_at = updated_at(&done);
    stop.cancel();
    running.await.unwrap().unwrap();

    // A's jobs that finished no later than B's (a finished job was last updated when it
    // finished).
    let mut ahead = 0;
    for id in &backlog {
        let job: Value = app.status(&app.key, id).await.json().await.unwrap();
        let finished = matches!(job["status"].as_str(), Some("succeeded" | "failed"));
        if finished && updated_at(&job) <= finished_at {
            ahead += 1;
        }
    }
    eprintln!("partner A's jobs finished no later than partner B's: {ahead} of 500");
    assert!(
        ahead < 50,
        "{ahead} of partner A's jobs finished before partner B's single job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_receiver_holds_at_most_its_cap_while_others_are_delivered() {
    let slow = Receiver::start().await;
    slow.script(std::iter::repeat_n(Reply::Slow(10_000), 100));
    let fast = Receiver::start().await;
    let app = TestApp::spawn_with(TestOptions::with_workers(|config| {
        config.webhook_concurrency = 8;
        config.webhook_receiver_concurrency = 3;
        config.webhook_timeout_ms = 15_000;
    }))
    .await;
    let partner_b = app.new_partner("partner B").await;
    let image = fixture("apple.jpg");

    // Partner A: 12 jobs whose webhooks go to a receiver that takes 10 s to answer, enough
    // to fill every delivery slot of the node without a cap.
    for n in 0..12 {
        job_id(
            app.upload_with_webhook(&app.key, distinct(&image, n), &slow.url("/slow"))
                .await,
        )
        .await;
    }
    slow.wait_for(3).await;
    // Partner B's webhooks arrive while the slow receiver still holds its first requests.
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            job_id(
                app.upload_with_webhook(&partner_b, distinct(&image, 100 + n), &fast.url("/fast"))
                    .await,
            )
            .await,
        );
    }
    let delivered = fast.wait_for(4).await;
    assert_eq!(
        slow.answered(),
        0,
        "partner B's webhooks waited for the slow receiver"
    );
    let mut got: Vec<String> = delivered
        .iter()
        .map(|r| r.json()["job_id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    assert_eq!(
        slow.max_concurrent(),
        3,
        "the slow receiver had more requests at once than its cap"
    );
    slow.release();
}

/// Deliveries held back by a receiver's cap go out as its requests finish, not once per
/// poll interval (set here to a minute, longer than the test may take).
#[tokio::test]
async fn a_backlog_for_one_receiver_drains_as_its_slots_free() {
    let receiver = Receiver::start().await;
    receiver.script(std::iter::repeat_n(Reply::Slow(200), 12));
    let app = TestApp::spawn_with(TestOptions::with_workers(|config| {
        config.webhook_receiver_concurrency = 2;
        config.poll_interval_ms = 60_000;
    }))
    .await;
    let image = fixture("apple.jpg");
    for n in 0..12 {
        job_id(
            app.upload_with_webhook(&app.key, distinct(&image, 200 + n), &receiver.url("/hook"))
                .await,
        )
        .await;
    }
    // Without the wake-up each round of 2 waited for the poll: 6 minutes in all.
    let delivered = receiver.wait_for(12).await;
    assert_eq!(delivered.len(), 12);
    assert_eq!(receiver.max_concurrent(), 2);
}

/// The turn a job got, as the store has it.
async fn turn_of(app: &TestApp, id: &str) -> i64 {
    use sea_orm::EntityTrait;
    entity::job::Entity::find_by_id(id.parse::<uuid::Uuid>().unwrap())
        .one(app.db.reader())
        .await
        .unwrap()
        .unwrap()
        .turn
}

async fn set_job(
    app: &TestApp,
    id: &str,
    status: entity::job::JobStatus,
    turn: i64,
    due_in_hours: i64,
) {
    use sea_orm::{sea_query::Expr, ColumnTrait, EntityTrait, QueryFilter};
    entity::job::Entity::update_many()
        .col_expr(entity::job::Column::Status, Expr::value(status))
        .col_expr(entity::job::Column::Turn, Expr::value(turn))
        .col_expr(
            entity::job::Column::RunAt,
            Expr::value(chrono::Utc::now() + chrono::Duration::hours(due_in_hours)),
        )
        .filter(entity::job::Column::Id.eq(id.parse::<uuid::Uuid>().unwrap()))
        .exec(app.db.writer())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_idle_queue_does_not_put_a_partner_with_an_old_retry_behind_everyone() {
    let app = TestApp::spawn().await;
    let partner_b = app.new_partner("partner B").await;
    let image = fixture("apple.jpg");
    // History: turns were taken up to 1000, and the queue is idle now. Partner A still has
    // a retry waiting for its time, from turn 900.
    let served = job_id(app.upload(&app.key, distinct(&image, 1), "a.jpg").await).await;
    set_job(&app, &served, entity::job::JobStatus::Succeeded, 1000, 0).await;
    let retry = job_id(app.upload(&app.key, distinct(&image, 2), "a.jpg").await).await;
    set_job(&app, &retry, entity::job::JobStatus::Queued, 900, 1).await;

    // Partner B sends three jobs, then partner A one.
    let mut b_turns = Vec::new();
    for n in 0..3 {
        let id = job_id(
            app.upload(&partner_b, distinct(&image, 10 + n), "b.jpg")
                .await,
        )
        .await;
        b_turns.push(turn_of(&app, &id).await);
    }
    let a_new = job_id(app.upload(&app.key, distinct(&image, 3), "a.jpg").await).await;
    let a_turn = turn_of(&app, &a_new).await;
    assert_eq!(b_turns, vec![1001, 1002, 1003]);
    assert_eq!(
        a_turn, 1001,
        "partner A's new job goes with B's first, not after B's all"
    );
}
