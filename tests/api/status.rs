use serde_json::{json, Value};

use crate::helpers::{assert_problem, TestApp};

async fn enqueue_urls(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let response = app
            .enqueue_json(
                &app.key,
                json!({"image_url": format!("https://cdn.example.com/{i}.jpg")}),
            )
            .await;
        assert_eq!(response.status(), 202);
        let job: Value = response.json().await.unwrap();
        ids.push(job["job_id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test]
async fn jobs_list_newest_first_across_pages() {
    let app = TestApp::spawn().await;
    let ids = enqueue_urls(&app, 7).await;
    let mut seen = Vec::new();
    let mut query = "?limit=3".to_string();
    let mut pages = 0;
    loop {
        let page = app.list_jobs(&app.key, &query).await;
        pages += 1;
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 3);
        seen.extend(
            jobs.iter()
                .map(|j| j["job_id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<_> = ids.into_iter().rev().collect();
    assert_eq!(seen, newest_first);
}

#[tokio::test]
async fn jobs_filter_by_status_and_validate_their_parameters() {
    let app = TestApp::spawn().await;
    enqueue_urls(&app, 2).await;
    assert_eq!(
        app.list_jobs(&app.key, "?status=queued").await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        app.list_jobs(&app.key, "?status=succeeded").await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    for query in ["?status=exploded", "?limit=0", "?limit=5000"] {
        let response = app
            .client
            .get(app.url(&format!("/jobs{query}")))
            .bearer_auth(&app.key)
            .send()
            .await
            .unwrap();
        assert_problem(response, 400, "invalid_parameter").await;
    }
    let response = app
        .client
        .get(app.url("/jobs?cursor=zzz"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "invalid_cursor").await;
}

#[tokio::test]
async fn many_jobs_at_once_in_the_order_asked() {
    let app = TestApp::spawn().await;
    let ids = enqueue_urls(&app, 3).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let asked = vec![
        ids[2].clone(),
        unknown.clone(),
        ids[0].clone(),
        ids[2].clone(),
    ];
    let response = app
        .client
        .post(app.url("/status"))
        .bearer_auth(&app.key)
        .json(&json!({"job_ids": asked}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let got: Vec<_> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[0].as_str()]);
    assert_eq!(body["not_found"], json!([unknown]));
}

#[tokio::test]
async fn a_batch_is_at_most_1000_ids() {
    let app = TestApp::spawn().await;
    let ids: Vec<String> = (0..1001)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let response = app
        .client
        .post(app.url("/status"))
        .bearer_auth(&app.key)
        .json(&json!({"job_ids": ids}))
        .send()
        .await
        .unwrap();
    assert_problem(response, 422, "validation_failed").await;
    let response = app
        .client
        .post(app.url("/status"))
        .bearer_auth(&app.key)
        .json(&json!({"job_ids": ids[..1000]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["not_found"].as_array().unwrap().len(), 1000);
}
