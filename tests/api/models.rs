//! Several models, chosen per job: `GET /models`, `model_id` at enqueue, and results that say
//! which model ran.

use std::collections::BTreeMap;

use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

use crate::helpers::{assert_problem, fixture, TestApp, TestOptions};

/// The model folders shipped under `models/`, by name.
fn shipped_model_ids() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("manifest.json").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

const CARROTS: &str = "agreement/food/vegetable_carrots/grocerystore_Carrots_017.jpg";

fn carrots_form(model_id: Option<&str>) -> Form {
    let form = Form::new().part(
        "image",
        Part::bytes(fixture(CARROTS)).file_name("carrots.jpg"),
    );
    match model_id {
        Some(id) => form.text("model_id", id.to_string()),
        None => form,
    }
}

#[tokio::test]
async fn models_lists_every_model_folder_and_marks_the_default() {
    let app = TestApp::spawn().await;
    let listed = app.get_json(&app.key, "/models").await;
    let models = listed["models"].as_array().unwrap();
    let ids: Vec<&str> = models.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, shipped_model_ids(), "{listed}");
    assert!(ids.len() >= 2, "{listed}");

    let defaults: Vec<&Value> = models.iter().filter(|m| m["default"] == true).collect();
    assert_eq!(defaults.len(), 1, "{listed}");
    assert_eq!(defaults[0]["id"], app.config.default_model.as_str());
    assert_eq!(listed["default"], app.config.default_model.as_str());
    for model in models {
        let classes = model["classes"].as_u64().unwrap();
        assert!(classes >= 1000, "{model}");
        match model["trained_classes"].as_u64() {
            Some(trained) => assert_eq!(classes, 1000 + trained, "{model}"),
            None => assert_eq!(classes, 1000, "{model}"),
        }
        assert!(model["food_classes"].as_u64().unwrap() > 0, "{model}");
        assert!(model["version"]
            .as_str()
            .unwrap()
            .starts_with("efficientnet-lite0"));
        assert!(!model["licence"].as_str().unwrap().is_empty(), "{model}");
        // An API-only node does not score: it cannot say what runs.
        assert_eq!(model["runtime"], Value::Null, "{model}");
    }

    let anonymous = app.client.get(app.url("/models")).send().await.unwrap();
    assert_problem(anonymous, 401, "unauthorized").await;
}

/// Each model's runtime and the version it produces on this node; null until loaded.
async fn loaded_versions(app: &TestApp) -> BTreeMap<String, Option<String>> {
    let listed = app.get_json(&app.key, "/models").await;
    listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(
                m["runtime"].is_null(),
                m["runtime_version"].is_null(),
                "{m}"
            );
            (
                m["id"].as_str().unwrap().to_string(),
                m["runtime_version"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[tokio::test]
async fn model_id_selects_the_model_that_scores_the_job() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|_| {})).await;
    let default = app.config.default_model.clone();
    // Only the default is loaded at start; the others load on their first job.
    let before = loaded_versions(&app).await;
    for (id, version) in &before {
        assert_eq!(version.is_some(), *id == default, "{before:?}");
    }

    // The same photo once per model, and once naming none: one result each, no reuse of
    // another model's result.
    let mut jobs = Vec::new();
    for id in shipped_model_ids() {
        let response = app.enqueue_form(&app.key, carrots_form(Some(&id))).await;
        assert_eq!(response.status(), 202);
        let job: Value = response.json().await.unwrap();
        jobs.push((Some(id), job["job_id"].as_str().unwrap().to_string()));
    }
    let response = app.enqueue_form(&app.key, carrots_form(None)).await;
    let job: Value = response.json().await.unwrap();
    jobs.push((None, job["job_id"].as_str().unwrap().to_string()));

    let mut results = Vec::new();
    for (id, job_id) in jobs {
        let job = app.wait_until_settled(&app.key, &job_id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["request"]["model_id"], json!(id));
        results.push((id.unwrap_or_else(|| default.clone()), job["result"].clone()));
    }
    let after = loaded_versions(&app).await;
    for (ran, result) in &results {
        let version = after[ran].as_deref().expect("loaded by its job");
        assert_eq!(result["model_version"], version, "{ran}: {result}");
    }
    let mut versions: Vec<&Value> = results.iter().map(|(_, r)| &r["model_version"]).collect();
    versions.sort_by_key(|v| v.to_string());
    versions.dedup();
    assert_eq!(versions.len(), shipped_model_ids().len(), "{versions:?}");

    // The grocery head sees the carrots that ImageNet's classes miss.
    let grocery = &results
        .iter()
        .find(|(id, _)| id == "grocery-scorer")
        .unwrap()
        .1;
    assert_eq!(grocery["labels"][0]["label"], "Carrots", "{grocery}");
    assert_eq!(grocery["food_group"], "vegetable", "{grocery}");
    assert!(grocery["score"].as_f64().unwrap() >= 4.0, "{grocery}");
}

#[tokio::test]
async fn preload_models_loads_every_model_at_start() {
    let app = TestApp::spawn_with(TestOptions::with_workers(|config| {
        config.preload_models = true;
    }))
    .await;
    let loaded = loaded_versions(&app).await;
    assert!(loaded.values().all(Option::is_some), "{loaded:?}");
}

#[tokio::test]
async fn an_unknown_model_id_is_refused_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let response = app
        .enqueue_form(&app.key, carrots_form(Some("no-such-model")))
        .await;
    let problem = assert_problem(response, 422, "model_unknown").await;
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("no-such-model"));
    let response = app
        .enqueue_json(
            &app.key,
            json!({"image_url": "https://cdn.example.com/a.jpg", "model_id": "food-scorer2"}),
        )
        .await;
    assert_problem(response, 422, "model_unknown").await;

    assert_eq!(app.list_jobs(&app.key, "").await["jobs"], json!([]));
    assert_eq!(app.stored_objects(), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn an_idempotency_key_and_a_client_reference_keep_the_model_in_their_key() {
    let app = TestApp::spawn().await;
    let ids = shipped_model_ids();
    let send = |model_id: &str, reference: &str| {
        app.client
            .post(app.url("/enqueue"))
            .bearer_auth(&app.key)
            .header("Idempotency-Key", format!("key-{reference}"))
            .json(&json!({
                "image_url": "https://cdn.example.com/a.jpg",
                "model_id": model_id,
                "client_reference": reference,
            }))
            .send()
    };
    let first = send(&ids[0], "meal-1").await.unwrap();
    assert_eq!(first.status(), 202);
    let replay = send(&ids[0], "meal-1").await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let other_model = send(&ids[1], "meal-1").await.unwrap();
    assert_problem(other_model, 409, "idempotency_key_reused").await;
    assert_eq!(
        app.list_jobs(&app.key, "").await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
