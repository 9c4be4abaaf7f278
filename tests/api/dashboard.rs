//! The operators' overview and the dashboard that draws it, over seeded history: the JSON
//! exactly, and the page in a real headless Chromium (Debian's `chromium`).
//!
//! Chromium is looked up as `PLATESCORE_TEST_CHROMIUM`, else `chromium`, `chromium-browser`
//! or `google-chrome` on `PATH`. Without one the browser tests are skipped with a notice,
//! except under `CI`, where they fail. The screenshot goes to `PLATESCORE_TEST_ARTIFACTS`
//! (else `target/tmp/artifacts`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use chrono::{DateTime, DurationRound, Utc};
use entity::{delivery, delivery_attempt, job, webhook_endpoint};
use platescore::store::{endpoints, partners, reconcile_runs};
use sea_orm::{
    sea_query::Expr, ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter,
};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{assert_problem, fixture, TestApp};

/// A seeded job: when it was enqueued, when it finished (if it did) and how.
struct SeededJob {
    created: DateTime<Utc>,
    finished: Option<DateTime<Utc>>,
    status: job::JobStatus,
}

/// What was seeded, minute by minute from `base` (ten minutes ago, on the minute):
/// - base+0: three jobs enqueued and succeeded, each 1 s after enqueue; one more enqueued
///   that finishes at base+3 (3 min later);
/// - base+1: one enqueued 1 ms before base+2 and finished exactly at base+2;
/// - base+2: one enqueued and failed (`image_corrupt`) 500 ms later;
/// - base+5: two enqueued, still queued; base+6: one enqueued, in progress.
struct Seeded {
    base: DateTime<Utc>,
    admin: String,
    jobs: Vec<SeededJob>,
    failed_job: Uuid,
    failing_url: String,
    gone_url: String,
}

/// A message with markup: the page must show it as text.
const FAILURE_MESSAGE: &str = "the image is corrupt <img src=x onerror=alert(1)>";

fn minute(base: DateTime<Utc>, offset: i64) -> String {
    stamp(base + chrono::Duration::minutes(offset))
}

fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn seed(app: &TestApp) -> Seeded {
    use job::JobStatus::{Failed, InProgress, Queued, Succeeded};
    let now = Utc::now();
    let base =
        now.duration_trunc(chrono::Duration::minutes(1)).unwrap() - chrono::Duration::minutes(10);
    let at = |minutes: i64, ms: i64| {
        base + chrono::Duration::minutes(minutes) + chrono::Duration::milliseconds(ms)
    };
    let admin = app.new_admin("ops").await;
    let plan = [
        (at(0, 1_000), Some(at(0, 2_000)), Succeeded),
        (at(0, 2_000), Some(at(0, 3_000)), Succeeded),
        (at(0, 3_000), Some(at(0, 4_000)), Succeeded),
        (at(0, 30_000), Some(at(3, 30_000)), Succeeded),
        (at(1, 59_999), Some(at(2, 0)), Succeeded),
        (at(2, 1_000), Some(at(2, 1_500)), Failed),
        (at(5, 0), None, Queued),
        (at(5, 1_000), None, Queued),
        (at(6, 0), None, InProgress),
    ];
    let mut failed_job = Uuid::nil();
    for (i, (created, finished, status)) in plan.iter().enumerate() {
        let mut bytes = fixture("apple.jpg");
        bytes.extend_from_slice(format!("seed {i}").as_bytes());
        let response = app.upload(&app.key, bytes, "meal.jpg").await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        let id: Uuid = body["job_id"].as_str().unwrap().parse().unwrap();
        let mut update = job::Entity::update_many()
            .filter(job::Column::Id.eq(id))
            .col_expr(job::Column::Status, Expr::value(*status))
            .col_expr(job::Column::CreatedAt, Expr::value(*created))
            .col_expr(job::Column::RunAt, Expr::value(*created))
            .col_expr(job::Column::FinishedAt, Expr::value(*finished));
        if *status != Queued {
            update = update
                .col_expr(job::Column::Attempts, Expr::value(1))
                .col_expr(job::Column::StartedAt, Expr::value(*created));
        }
        if *status == Failed {
            failed_job = id;
            update = update
                .col_expr(job::Column::ErrorCode, Expr::value("image_corrupt"))
                .col_expr(job::Column::ErrorMessage, Expr::value(FAILURE_MESSAGE));
        }
        update.exec(app.db.writer()).await.unwrap();
    }

    // A failing endpoint with one delivery waiting after three failed attempts (its count
    // reset by a reconciliation, as it does), and one disabled after a 410.
    let partner = partners::authenticate(&app.db, &app.key)
        .await
        .unwrap()
        .unwrap();
    let failing_url = "https://hooks.example.net/platescore?tenant=<b>42</b>".to_string();
    let gone_url = "https://old.example.net/hook".to_string();
    let failing = endpoints::create(
        &app.db,
        partner.id,
        failing_url.clone(),
        None,
        "whsec_x".into(),
        20,
    )
    .await
    .unwrap()
    .created()
    .unwrap();
    let gone = endpoints::create(
        &app.db,
        partner.id,
        gone_url.clone(),
        None,
        "whsec_y".into(),
        20,
    )
    .await
    .unwrap()
    .created()
    .unwrap();
    let failing_id = failing.id;
    let mut failing: webhook_endpoint::ActiveModel = failing.into();
    failing.failing_since = Set(Some(at(2, 5_000)));
    failing.update(app.db.writer()).await.unwrap();
    let mut gone: webhook_endpoint::ActiveModel = gone.into();
    gone.disabled_at = Set(Some(at(1, 0)));
    gone.disabled_reason = Set(Some("gone".into()));
    gone.update(app.db.writer()).await.unwrap();
    let delivery_id = Uuid::now_v7();
    delivery::ActiveModel {
        id: Set(delivery_id),
        job_id: Set(failed_job),
        partner_id: Set(partner.id),
        endpoint_id: Set(Some(failing_id)),
        url: Set(failing_url.clone()),
        event_type: Set("job.failed".into()),
        payload: Set("{}".into()),
        status: Set(delivery::DeliveryStatus::Pending),
        attempts: Set(0),
        next_attempt_at: Set(Some(now + chrono::Duration::hours(1))),
        lease_token: Set(None),
        lease_expires_at: Set(None),
        last_status_code: Set(Some(503)),
        last_error: Set(None),
        delivered_at: Set(None),
        created_at: Set(at(2, 2_000)),
        // Touched after its last attempt (by the reconciliation).
        updated_at: Set(at(4, 0)),
        turn: Set(0),
    }
    .insert(app.db.writer())
    .await
    .unwrap();
    for (n, status) in [(0, 500), (1, 502), (2, 503)] {
        delivery_attempt::ActiveModel {
            id: Set(Uuid::now_v7()),
            delivery_id: Set(delivery_id),
            attempted_at: Set(at(2, 10_000 + n * 5_000)),
            status_code: Set(Some(status)),
            latency_ms: Set(12),
            error: Set(None),
            response_body: Set(None),
        }
        .insert(app.db.writer())
        .await
        .unwrap();
    }

    // Two reconciliation runs: a clean one and one that stopped on an error.
    for (slot, requeued, error) in [
        (base - chrono::Duration::days(1), 2, None),
        (base, 0, Some("database: connection reset".to_string())),
    ] {
        let reconcile_runs::SlotClaim::Claimed(lease) = reconcile_runs::claim_slot(
            &app.db,
            slot,
            "schedule",
            slot,
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap() else {
            panic!("the slot was free");
        };
        let counts = reconcile_runs::ReconcileCounts {
            jobs_requeued: requeued,
            jobs_failed_stale: 1,
            ..Default::default()
        };
        reconcile_runs::record_finish(
            &app.db,
            &lease,
            counts,
            error,
            slot + chrono::Duration::seconds(2),
        )
        .await
        .unwrap();
    }
    Seeded {
        base,
        admin,
        jobs: plan
            .into_iter()
            .map(|(created, finished, status)| SeededJob {
                created,
                finished,
                status,
            })
            .collect(),
        failed_job,
        failing_url,
        gone_url,
    }
}

/// The figures of the minute starting at `start`, from the seeded jobs by definition:
/// (enqueued, succeeded, failed, backlog at the minute's end).
fn expected(jobs: &[SeededJob], start: DateTime<Utc>) -> (u64, u64, u64, u64) {
    let end = start + chrono::Duration::minutes(1);
    let within = |t: DateTime<Utc>| t >= start && t < end;
    let count = |f: &dyn Fn(&SeededJob) -> bool| jobs.iter().filter(|j| f(j)).count() as u64;
    (
        count(&|j| within(j.created)),
        count(&|j| j.status == job::JobStatus::Succeeded && j.finished.is_some_and(within)),
        count(&|j| j.status == job::JobStatus::Failed && j.finished.is_some_and(within)),
        count(&|j| j.created < end && j.finished.is_none_or(|f| f >= end)),
    )
}

/// Every minute of an overview against [`expected`].
fn assert_minutes_match(overview: &Value, jobs: &[SeededJob]) {
    for entry in overview["minutes"].as_array().unwrap() {
        let start = DateTime::parse_from_rfc3339(entry["start"].as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc);
        let actual = (
            entry["enqueued"].as_u64().unwrap(),
            entry["succeeded"].as_u64().unwrap(),
            entry["failed"].as_u64().unwrap(),
            entry["backlog"].as_u64().unwrap(),
        );
        assert_eq!(actual, expected(jobs, start), "minute {start}");
    }
}

fn minute_entry<'a>(overview: &'a Value, start: &str) -> &'a Value {
    overview["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["start"] == start)
        .unwrap_or_else(|| panic!("no minute {start}"))
}

/// `true` when an estimate from 25%-wide buckets can stand for `actual`.
fn within_bucket(estimate: f64, actual: f64) -> bool {
    estimate >= actual / 1.3 && estimate <= actual * 1.3
}

#[tokio::test]
async fn the_overview_is_right_on_seeded_history() {
    let app = TestApp::spawn().await;
    let seeded = seed(&app).await;
    let overview = app.get_json(&seeded.admin, "/admin/overview").await;
    let base = seeded.base;

    assert_eq!(overview["queue"]["queued"], 2);
    assert_eq!(overview["queue"]["in_progress"], 1);
    // The oldest queued job became due at base+5.
    let age = overview["queue"]["oldest_queued_age_seconds"]
        .as_f64()
        .unwrap();
    let expected_age = (Utc::now() - (base + chrono::Duration::minutes(5))).num_seconds() as f64;
    assert!((age - expected_age).abs() < 5.0, "{age} vs {expected_age}");

    let minutes = overview["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    assert_minutes_match(&overview, &seeded.jobs);
    // The same, spelled out: (offset, enqueued, succeeded, failed, backlog at its end).
    let field =
        |offset: i64, name: &str| minute_entry(&overview, &minute(base, offset))[name].clone();
    for (offset, enqueued, succeeded, failed, backlog) in [
        (-1, 0, 0, 0, 0),
        (0, 4, 3, 0, 1),
        (1, 1, 0, 0, 2),
        (2, 1, 1, 1, 1),
        (3, 0, 1, 0, 0),
        (4, 0, 0, 0, 0),
        (5, 2, 0, 0, 2),
        (6, 1, 0, 0, 3),
        (8, 0, 0, 0, 3),
    ] {
        let actual = [
            field(offset, "enqueued"),
            field(offset, "succeeded"),
            field(offset, "failed"),
            field(offset, "backlog"),
        ];
        assert_eq!(actual, [enqueued, succeeded, failed, backlog], "+{offset}");
    }
    assert_eq!(minutes.last().unwrap()["backlog"], 3);
    // Latency: 1 s for base+0's three; base+2 has 1 ms and 500 ms; 3 min at base+3.
    for (offset, quantile, actual) in [
        (0, "latency_p50_ms", 1_000.0),
        (0, "latency_p95_ms", 1_000.0),
        (2, "latency_p95_ms", 500.0),
        (3, "latency_p50_ms", 180_000.0),
    ] {
        let estimate = field(offset, quantile).as_f64().unwrap();
        assert!(
            within_bucket(estimate, actual),
            "{quantile} at +{offset}: {estimate}"
        );
    }
    assert!(field(2, "latency_p50_ms").as_f64().unwrap() <= 10.0);
    assert_eq!(field(1, "latency_p50_ms"), Value::Null);

    let failures = overview["recent_failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["job_id"], seeded.failed_job.to_string());
    assert_eq!(failures[0]["code"], "image_corrupt");
    assert_eq!(failures[0]["message"], FAILURE_MESSAGE);
    assert_eq!(failures[0]["partner_name"], "test partner");
    assert_eq!(failures[0]["attempts"], 1);

    let endpoints = overview["failing_endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    let by_url: HashMap<&str, &Value> = endpoints
        .iter()
        .map(|e| (e["url"].as_str().unwrap(), e))
        .collect();
    let failing = by_url[seeded.failing_url.as_str()];
    assert_eq!(failing["enabled"], true);
    assert_eq!(failing["retrying_deliveries"], 1);
    // The last attempt, not the delivery's last touch.
    assert_eq!(
        failing["last_attempt_at"],
        stamp(base + chrono::Duration::seconds(140))
    );
    assert_eq!(failing["last_status_code"], 503);
    assert_eq!(
        failing["failing_since"],
        stamp(base + chrono::Duration::seconds(125))
    );
    let gone = by_url[seeded.gone_url.as_str()];
    assert_eq!(gone["enabled"], false);
    assert_eq!(gone["disabled_reason"], "gone");
    assert_eq!(gone["retrying_deliveries"], 0);
    assert_eq!(gone["last_attempt_at"], Value::Null);

    let runs = overview["reconcile_runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["slot"], minute(base, 0));
    assert_eq!(runs[0]["error"], "database: connection reset");
    assert_eq!(runs[1]["jobs_requeued"], 2);

    // A window that starts mid-history: jobs enqueued before it but finished inside, and
    // the first minute's backlog, still come out right (from the node's cache, now).
    let short = app
        .get_json(&seeded.admin, "/admin/overview?minutes=9")
        .await;
    assert_eq!(short["minutes"].as_array().unwrap().len(), 9);
    assert_minutes_match(&short, &seeded.jobs);
    // A job that ends in the current minute shows on the next refresh: only final minutes
    // are cached.
    let late = SeededJob {
        created: Utc::now() - chrono::Duration::milliseconds(300),
        finished: Some(Utc::now()),
        status: job::JobStatus::Succeeded,
    };
    let response = app.upload(&app.key, fixture("lemon.jpg"), "late.jpg").await;
    let id: Uuid = response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    job::Entity::update_many()
        .filter(job::Column::Id.eq(id))
        .col_expr(job::Column::Status, Expr::value(late.status))
        .col_expr(job::Column::CreatedAt, Expr::value(late.created))
        .col_expr(job::Column::FinishedAt, Expr::value(late.finished))
        .exec(app.db.writer())
        .await
        .unwrap();
    let mut jobs = seeded.jobs;
    jobs.push(late);
    let again = app.get_json(&seeded.admin, "/admin/overview").await;
    assert_minutes_match(&again, &jobs);

    // What the dashboard shows as queue depth is what /metrics reports.
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let depth = |state: &str| {
        let series = format!("platescore_queue_depth{{state=\"{state}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(depth("queued"), Some(2.0), "{metrics}");
    assert_eq!(depth("in_progress"), Some(1.0));

    // The range is checked; partners and strangers are refused.
    for query in ["?minutes=4", "?minutes=181", "?minutes=soon"] {
        let response = app
            .client
            .get(app.url(&format!("/admin/overview{query}")))
            .bearer_auth(&seeded.admin)
            .send()
            .await
            .unwrap();
        assert_problem(response, 400, "invalid_parameter").await;
    }
    let response = app
        .client
        .get(app.url("/admin/overview"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_problem(response, 403, "admin_required").await;
    let response = app
        .client
        .get(app.url("/admin/overview"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn the_dashboard_is_served_whole_from_the_binary() {
    let app = TestApp::spawn().await;
    let page = app.client.get(app.url("/dashboard")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();

    // Every asset the page names is served here, and none names another host.
    let mut bodies = vec![html.clone()];
    for (path, content_type) in [
        ("/dashboard/dashboard.js", "text/javascript; charset=utf-8"),
        ("/dashboard/dashboard.css", "text/css; charset=utf-8"),
    ] {
        assert!(html.contains(&format!("\"{path}\"")), "{path} is linked");
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type);
        bodies.push(response.text().await.unwrap());
    }
    for body in &bodies {
        let body = body.replace("http://www.w3.org/2000/svg", "");
        for elsewhere in ["http://", "https://", "=\"//", "url(", "@import"] {
            assert!(!body.contains(elsewhere), "{elsewhere} in an asset");
        }
    }
}

// ---- in Chromium ----

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PLATESCORE_TEST_CHROMIUM") {
        return Some(path.into());
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).find_map(|dir| {
            ["chromium", "chromium-browser", "google-chrome"]
                .iter()
                .map(|name| dir.join(name))
                .find(|path| path.is_file())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install Chromium (apt-get install chromium)"
        );
        eprintln!("skipped: no Chromium on PATH (set PLATESCORE_TEST_CHROMIUM)");
    }
    found
}

/// Runs headless Chromium on `url` with `args` (`--dump-dom` or `--screenshot=…`) and returns
/// what it printed. It gets 5 s of virtual time: enough for the first poll, no more.
async fn run_chromium(browser: &Path, args: &[String], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    // Poll rather than block: this test's server runs on the same runtime.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium: {status}");
            break;
        }
        if tokio::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("chromium took over 90 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::read_to_string(out.path()).unwrap()
}

/// The start tags in serialised HTML, as (name, attributes), attribute values unescaped.
fn tags(html: &str) -> Vec<(String, HashMap<String, String>)> {
    let mut found = Vec::new();
    for chunk in html.split('<').skip(1) {
        let Some(end) = chunk.find('>') else { continue };
        let inner = &chunk[..end];
        let name_end = inner.find([' ', '/']).unwrap_or(inner.len());
        let name = inner[..name_end].to_ascii_lowercase();
        let mut attributes = HashMap::new();
        let mut rest = &inner[name_end..];
        while let Some(eq) = rest.find("=\"") {
            let key = rest[..eq].trim().to_string();
            let value_start = eq + 2;
            let Some(len) = rest[value_start..].find('"') else {
                break;
            };
            let value = rest[value_start..value_start + len]
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            attributes.insert(key, value);
            rest = &rest[value_start + len + 1..];
        }
        found.push((name, attributes));
    }
    found
}

/// The text of the element with this id (up to its first child tag).
fn text_of(html: &str, id: &str) -> String {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("#{id} in the page"));
    let open_end = start + html[start..].find('>').unwrap() + 1;
    let len = html[open_end..].find('<').unwrap();
    html[open_end..open_end + len].to_string()
}

/// The rows of a table's body, each as its cells' text.
fn table_rows(html: &str, id: &str) -> Vec<Vec<String>> {
    let start = html.find(&format!("<table id=\"{id}\"")).unwrap();
    let table = &html[start..start + html[start..].find("</table>").unwrap()];
    let body = &table[table.find("<tbody>").unwrap()..];
    body.split("<tr")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let text = &cell[cell.find('>').unwrap() + 1..];
                    text[..text.find("</td>").unwrap()]
                        .replace("&lt;", "<")
                        .replace("&gt;", ">")
                        .replace("&amp;", "&")
                })
                .collect()
        })
        .collect()
}

/// The chart points of one series in one chart: minute → value.
fn series(html: &str, chart: &str, name: &str) -> HashMap<String, f64> {
    let start = html.find(&format!("id=\"{chart}\"")).unwrap();
    let figure = &html[start..start + html[start..].find("</figure>").unwrap()];
    tags(figure)
        .into_iter()
        .filter(|(_, a)| a.get("data-series").map(String::as_str) == Some(name))
        .map(|(_, a)| (a["data-minute"].clone(), a["data-value"].parse().unwrap()))
        .collect()
}

#[tokio::test]
async fn the_dashboard_shows_the_seeded_numbers_in_chromium() {
    let Some(browser) = chromium() else { return };
    let app = TestApp::spawn().await;
    let seeded = seed(&app).await;
    let base = seeded.base;
    let url = app.url(&format!("/dashboard#key={}", seeded.admin));
    let html = run_chromium(&browser, &["--dump-dom".into()], &url).await;

    assert_eq!(
        tags(&html)
            .iter()
            .find(|(_, a)| a.get("id").map(String::as_str) == Some("board"))
            .map(|(_, a)| a.contains_key("hidden")),
        Some(false),
        "the board is shown: {html}"
    );
    assert_eq!(text_of(&html, "tile-queued"), "2");
    assert_eq!(text_of(&html, "tile-in-progress"), "1");
    assert_eq!(text_of(&html, "tile-finished"), "6");
    assert_eq!(text_of(&html, "tile-failed"), "1");

    // Throughput: bars only where jobs finished, with the seeded counts.
    let succeeded = series(&html, "chart-throughput", "succeeded");
    let failed = series(&html, "chart-throughput", "failed");
    assert_eq!(
        succeeded,
        HashMap::from([
            (minute(base, 0), 3.0),
            (minute(base, 2), 1.0),
            (minute(base, 3), 1.0)
        ])
    );
    assert_eq!(failed, HashMap::from([(minute(base, 2), 1.0)]));
    // Enqueued and queue depth: a point every minute, each as the seeded jobs say.
    let enqueued = series(&html, "chart-throughput", "enqueued");
    let backlog = series(&html, "chart-backlog", "backlog");
    assert_eq!(enqueued.len(), 60);
    assert_eq!(backlog.len(), 60);
    for (start, value) in &enqueued {
        let at = DateTime::parse_from_rfc3339(start)
            .unwrap()
            .with_timezone(&Utc);
        let (enqueued, _, _, depth) = expected(&seeded.jobs, at);
        assert_eq!(*value, enqueued as f64, "enqueued at {start}");
        assert_eq!(backlog[start], depth as f64, "backlog at {start}");
    }
    assert_eq!(enqueued.values().sum::<f64>(), 9.0);
    // Latency: only minutes where jobs finished have points.
    let p50 = series(&html, "chart-latency", "p50");
    let p95 = series(&html, "chart-latency", "p95");
    assert_eq!(p50.len(), 3);
    assert_eq!(p95.len(), 3);
    assert!(within_bucket(p50[&minute(base, 0)], 1_000.0));
    assert!(within_bucket(p95[&minute(base, 3)], 180_000.0));

    // Error texts and URLs arrive as text, never as elements.
    let failures = table_rows(&html, "failed-jobs");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0][1], "image_corrupt");
    assert_eq!(failures[0][2], FAILURE_MESSAGE);
    assert_eq!(failures[0][3], "test partner");
    assert_eq!(failures[0][5], seeded.failed_job.to_string());
    assert!(!tags(&html)
        .iter()
        .any(|(name, _)| name == "img" || name == "b"));

    let endpoints = table_rows(&html, "failing-endpoints");
    assert_eq!(endpoints.len(), 2);
    let failing = endpoints
        .iter()
        .find(|row| row[0] == seeded.failing_url)
        .expect("the failing endpoint is listed");
    assert_eq!(failing[2], "failing");
    assert_eq!(failing[4], "1");
    let last_attempt = base + chrono::Duration::seconds(140);
    assert_eq!(
        failing[5],
        format!("{} · 503", last_attempt.format("%Y-%m-%d %H:%M:%SZ"))
    );
    let gone = endpoints
        .iter()
        .find(|row| row[0] == seeded.gone_url)
        .unwrap();
    assert_eq!(gone[2], "disabled (gone)");

    let runs = table_rows(&html, "reconcile-runs");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0][2], "2 s");
    assert_eq!(runs[0][9], "database: connection reset");
    assert_eq!(runs[1][3], "2");
    assert_eq!(runs[1][4], "1");

    // The picture, for people: saved as a CI artifact.
    let folder = std::env::var_os("PLATESCORE_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts"));
    std::fs::create_dir_all(&folder).unwrap();
    let shot = folder.join(format!(
        "dashboard-{}.png",
        if app.db.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        }
    ));
    run_chromium(
        &browser,
        &[
            "--window-size=1280,1000".into(),
            format!("--screenshot={}", shot.display()),
        ],
        &url,
    )
    .await;
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "{}",
        shot.display()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
}

#[tokio::test]
async fn the_dashboard_refuses_a_partner_key_and_asks_for_an_admin_one() {
    let Some(browser) = chromium() else { return };
    let app = TestApp::spawn().await;
    let url = app.url(&format!("/dashboard#key={}", app.key));
    let html = run_chromium(&browser, &["--dump-dom".into()], &url).await;
    assert_eq!(text_of(&html, "sign-in-error"), "this needs an admin key");
    let form_hidden = tags(&html)
        .iter()
        .find(|(_, a)| a.get("id").map(String::as_str) == Some("sign-in"))
        .map(|(_, a)| a.contains_key("hidden"));
    assert_eq!(form_hidden, Some(false));
    assert_eq!(table_rows(&html, "failed-jobs").len(), 0);
}
