//! Races between the nightly sweep and new work, played out in a fixed order: the sweep is
//! held at the moment it deletes an image, and the racing request runs then.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{Duration, Utc};
use entity::job;
use platescore::{
    api,
    objects::{ObjectStore, ObjectStoreError},
    scheduling::{ReconcileSettings, Reconciler, SlotOutcome},
};
use sea_orm::{sea_query::Expr, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use uuid::Uuid;

use crate::helpers::{fixture, TestApp};

/// The real object store, except that each delete first reports its key and then waits for
/// the test's go-ahead.
struct HeldDeletes {
    inner: Arc<dyn ObjectStore>,
    deleting: mpsc::UnboundedSender<String>,
    go: Arc<Semaphore>,
}

#[async_trait::async_trait]
impl ObjectStore for HeldDeletes {
    async fn put(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<(), ObjectStoreError> {
        self.inner.put(key, bytes, content_type).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, ObjectStoreError> {
        self.inner.get(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), ObjectStoreError> {
        let _ = self.deleting.send(key.to_string());
        self.go.acquire().await.unwrap().forget();
        self.inner.delete(key).await
    }
    async fn health_check(&self) -> Result<(), ObjectStoreError> {
        self.inner.health_check().await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

async fn upload(app: &TestApp, image: Vec<u8>) -> Uuid {
    let response = app.upload(&app.key, image, "meal.jpg").await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    body["job_id"].as_str().unwrap().parse().unwrap()
}

async fn image_key(app: &TestApp, id: Uuid) -> String {
    job::Entity::find_by_id(id)
        .one(app.db.reader())
        .await
        .unwrap()
        .unwrap()
        .image_key
        .unwrap()
}

#[tokio::test]
async fn retention_never_deletes_the_image_of_a_job_committed_during_the_sweep() {
    let app = TestApp::spawn().await;
    let photo = fixture("apple.jpg");
    let now = Utc::now();

    // An expired job, past retention.
    let expired = upload(&app, photo.clone()).await;
    job::Entity::update_many()
        .col_expr(
            job::Column::CreatedAt,
            Expr::value(now - Duration::days(31)),
        )
        .col_expr(job::Column::Status, Expr::value(job::JobStatus::Succeeded))
        .filter(job::Column::Id.eq(expired))
        .exec(app.db.writer())
        .await
        .unwrap();
    let expired_key = image_key(&app, expired).await;

    let objects = platescore::objects::open(&app.config).await.unwrap();
    let (deleting, mut deletes) = mpsc::unbounded_channel();
    let go = Arc::new(Semaphore::new(0));
    let reconciler = Reconciler::new(
        app.db.clone(),
        Arc::new(HeldDeletes {
            inner: objects.clone(),
            deleting,
            go: go.clone(),
        }),
        api::webhook_payload_renderer(),
        ReconcileSettings {
            stale_after: std::time::Duration::from_secs(3600),
            max_attempts: 3,
            disable_failing_endpoints_after: std::time::Duration::from_secs(5 * 86400),
            retention: std::time::Duration::from_secs(30 * 86400),
            lease: std::time::Duration::from_secs(60),
        },
    );
    let sweep = tokio::spawn(async move {
        let running = tokio_util::sync::CancellationToken::new();
        reconciler.run_slot(now, "manual", now, &running).await
    });

    // The sweep has found the expired job's image unreferenced and is about to delete it...
    assert_eq!(deletes.recv().await.unwrap(), expired_key);
    // ...when the same photo is uploaded again, and its job committed.
    let fresh = upload(&app, photo.clone()).await;
    let fresh_key = image_key(&app, fresh).await;
    go.add_permits(1000);
    let outcome = sweep.await.unwrap().unwrap();
    let SlotOutcome::Ran {
        counts,
        error: None,
        ..
    } = outcome
    else {
        panic!("the sweep did not run cleanly: {outcome:?}");
    };
    assert_eq!(counts.jobs_deleted, 1, "{counts:?}");

    // The new job's image is whole; the expired job's is gone.
    assert_eq!(objects.get(&fresh_key).await.unwrap(), Bytes::from(photo));
    assert!(matches!(
        objects.get(&expired_key).await,
        Err(ObjectStoreError::NotFound(_))
    ));
}
