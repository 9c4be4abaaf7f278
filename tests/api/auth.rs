use serde_json::json;

use crate::helpers::{assert_problem, fixture, TestApp, TestOptions};

#[tokio::test]
async fn a_missing_key_is_401() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/jobs")).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_problem(response, 401, "unauthorized").await;
}

#[tokio::test]
async fn a_wrong_key_is_401_and_enqueues_nothing() {
    let app = TestApp::spawn().await;
    let forged = format!("psk_{}", "A".repeat(43));
    let response = app.upload(&forged, fixture("apple.jpg"), "apple.jpg").await;
    assert_problem(response, 401, "unauthorized").await;
    let response = app
        .client
        .get(app.url("/jobs"))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_problem(response, 401, "unauthorized").await;
    assert!(app.stored_objects().is_empty());
    assert_eq!(
        app.list_jobs(&app.key, "").await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test]
async fn the_x_api_key_header_works_too() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/jobs"))
        .header("X-API-Key", &app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_revoked_key_is_401() {
    // With the key cache off; with it on, revocation takes up to `auth_cache_seconds`.
    let app = TestApp::spawn_with(TestOptions {
        configure: Box::new(|config| config.auth_cache_seconds = 0),
        ..TestOptions::default()
    })
    .await;
    let key = app.new_partner("leaving").await;
    assert_eq!(
        app.client
            .get(app.url("/jobs"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let partner = platescore::store::partners::list(&app.db)
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.name == "leaving")
        .unwrap();
    assert!(platescore::store::partners::revoke(&app.db, partner.id)
        .await
        .unwrap());
    let response = app
        .client
        .get(app.url("/jobs"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_problem(response, 401, "unauthorized").await;
}

#[tokio::test]
async fn keys_are_stored_only_as_hashes() {
    let app = TestApp::spawn().await;
    let stored = platescore::store::partners::list(&app.db).await.unwrap();
    assert_eq!(stored.len(), 1);
    let partner = &stored[0];
    assert_ne!(partner.key_hash, app.key);
    assert!(!partner.key_hash.contains(&app.key[4..]));
    assert_eq!(partner.key_hash.len(), 64);
    assert!(app.key.starts_with(&partner.key_prefix));
    assert!(partner.key_prefix.len() < app.key.len() / 2);
}

#[tokio::test]
async fn a_partner_never_sees_another_partners_jobs() {
    let app = TestApp::spawn().await;
    let other = app.new_partner("other").await;
    let response = app
        .enqueue_json(
            &app.key,
            json!({"image_url": "https://images.example.com/a.jpg"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let job: serde_json::Value = response.json().await.unwrap();
    let id = job["job_id"].as_str().unwrap();

    assert_problem(app.status(&other, id).await, 404, "job_not_found").await;
    assert_eq!(
        app.list_jobs(&other, "").await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let batch: serde_json::Value = app
        .client
        .post(app.url("/status"))
        .bearer_auth(&other)
        .json(&json!({"job_ids": [id]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(batch["jobs"].as_array().unwrap().len(), 0);
    assert_eq!(batch["not_found"], json!([id]));
    // The owner still sees it.
    assert_eq!(app.status(&app.key, id).await.status(), 200);
}
