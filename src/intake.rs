//! Accepting a job: validate the request, keep the uploaded image, record the job; and
//! erasing one. Nothing heavy happens here; scoring is the workers' job.
//!
//! Write order keeps state whole: the image object is written before its row, and removed
//! again if the row cannot be written and no other job uses the same bytes. Erasure goes
//! the other way: the object first (when no other job uses it), then the row.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use entity::job;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    imaging::{self, HeaderError},
    inference::{DietTag, ModelCatalogue},
    objects::{self, ObjectStore, ObjectStoreError},
    outbound::{OutboundError, OutboundPolicy},
    queue_pool::{CommitBatch, GroupCommit, Unrecorded},
    store::{
        jobs::{self, Earlier, InsertOutcome, NewJob, NewJobImage},
        wakeups::{Wakeups, Work},
        Db, StoreError,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("give an image: an `image` part with the photo's bytes")]
    NoImage,
    #[error(transparent)]
    Image(#[from] HeaderError),
    #[error("image_url: {0}")]
    ImageUrl(OutboundError),
    #[error("webhook_url: {0}")]
    WebhookUrl(OutboundError),
    #[error("metadata: {0}")]
    Metadata(String),
    #[error("model_id: {0}")]
    ModelId(String),
    #[error("model_id: no model {0:?}; GET /models lists them")]
    ModelUnknown(String),
    #[error("diets: {0}")]
    Diets(String),
    #[error("lang: {0}")]
    Lang(String),
    #[error("Idempotency-Key: {0}")]
    IdempotencyKey(String),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("client_reference: {0}")]
    ClientReference(String),
    #[error("this client_reference names another job, asked for with a different request")]
    ClientReferenceReused,
    #[error(
        "you have {max} jobs queued or in progress, as many as allowed; enqueue again once \
         some have finished"
    )]
    QueueFull { max: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The group commit took no answer for the job (the node is stopping).
    #[error("recording the job: {0}")]
    NotRecorded(#[from] Unrecorded),
    #[error(transparent)]
    Objects(#[from] ObjectStoreError),
}

/// An uploaded image, hashed while it was received.
#[derive(Debug, Clone)]
pub struct UploadedImage {
    pub bytes: Bytes,
    pub sha256: [u8; 32],
}

/// Where a job's photo comes from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    Upload(UploadedImage),
    /// Fetched by a worker.
    Url(String),
}

/// An enqueue request, as the API received it.
#[derive(Debug, Clone, Default)]
pub struct EnqueueRequest {
    /// None when a multipart form had no `image` part.
    pub image: Option<ImageSource>,
    pub webhook_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub model_id: Option<String>,
    /// Diet tags that shape the tips (`vegan`, `low_sodium`…).
    pub diets: Vec<String>,
    /// Language of the tips, e.g. `en`.
    pub lang: Option<String>,
    pub idempotency_key: Option<String>,
    /// The partner's own id for the job, unique per partner.
    pub client_reference: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct IntakeLimits {
    pub max_image_pixels: u64,
    pub max_metadata_bytes: usize,
}

pub struct Intake {
    db: Db,
    objects: Arc<dyn ObjectStore>,
    outbound: OutboundPolicy,
    wakeups: Arc<Wakeups>,
    limits: IntakeLimits,
    /// The models a job may name.
    models: Arc<ModelCatalogue>,
    inserts: GroupCommit<NewJob, Result<InsertOutcome, StoreError>>,
}

/// Most jobs written in one transaction.
const INSERT_BATCH: usize = 64;

/// Enqueue's inserts without a queue cap, written together: what queued up while the last
/// transaction ran goes into the next one (one round of statements for all of them, where
/// each insert took four). A batch that fails is written again one job at a time.
struct JobInserts {
    db: Db,
}

impl CommitBatch for JobInserts {
    type Item = NewJob;
    type Reply = Result<InsertOutcome, StoreError>;
    type Error = std::convert::Infallible;
    const ITEM: &'static str = "new job";

    async fn commit(&self, batch: &[NewJob]) -> Result<Vec<Self::Reply>, Self::Error> {
        if batch.len() > 1 {
            match jobs::insert_all(&self.db, batch).await {
                Ok(created) => {
                    let created = created.into_iter().map(Box::new);
                    return Ok(created.map(|job| Ok(InsertOutcome::Created(job))).collect());
                }
                Err(err) => {
                    tracing::debug!(error = %err, jobs = batch.len(), "inserting jobs together failed; one by one");
                }
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        for new in batch {
            replies.push(jobs::insert(&self.db, new.clone()).await);
        }
        Ok(replies)
    }
}

/// What enqueue did: created a job, or found the one this idempotency key made before.
pub enum Enqueued {
    Created {
        job: job::Model,
        /// Under a cap: the partner's jobs queued or in progress, this one included.
        unfinished: Option<u64>,
    },
    Replayed(job::Model),
}

impl Intake {
    pub fn new(
        db: Db,
        objects: Arc<dyn ObjectStore>,
        outbound: OutboundPolicy,
        wakeups: Arc<Wakeups>,
        limits: IntakeLimits,
        models: Arc<ModelCatalogue>,
    ) -> Self {
        // Needs a tokio runtime: the group commit's task starts here.
        let committer = Arc::new(JobInserts { db: db.clone() });
        let (inserts, _) = GroupCommit::start(committer, INSERT_BATCH, 4 * INSERT_BATCH);
        Self {
            db,
            objects,
            outbound,
            wakeups,
            limits,
            models,
            inserts,
        }
    }

    /// Checks the request, stores its image and records the job. With `max_unfinished`, the
    /// partner may have at most that many jobs queued or in progress: a request over it
    /// writes nothing and fails with [`IntakeError::QueueFull`] (a replay of an earlier
    /// request still answers).
    pub async fn enqueue(
        &self,
        partner_id: Uuid,
        request: EnqueueRequest,
        max_unfinished: Option<u32>,
    ) -> Result<Enqueued, IntakeError> {
        // URLs are kept as given (trimmed), once vetted: the job shows what was sent.
        let webhook_url = request
            .webhook_url
            .map(|u| self.vet_url(u).map_err(IntakeError::WebhookUrl))
            .transpose()?;
        let metadata = request
            .metadata
            .map(|m| self.check_metadata(m))
            .transpose()?;
        let model_id = request.model_id.map(check_model_id).transpose()?;
        if let Some(id) = &model_id {
            if self.models.resolve(Some(id)).is_none() {
                return Err(IntakeError::ModelUnknown(id.clone()));
            }
        }
        let diets = check_diets(&request.diets)?;
        let lang = request.lang.map(check_lang).transpose()?;
        let idempotency_key = request
            .idempotency_key
            .map(check_idempotency_key)
            .transpose()?;
        let client_reference = request
            .client_reference
            .map(check_client_reference)
            .transpose()?;

        let job_id = Uuid::now_v7();
        let (image, upload) = match request.image {
            None => return Err(IntakeError::NoImage),
            Some(ImageSource::Url(url)) => {
                let url = self.vet_url(url).map_err(IntakeError::ImageUrl)?;
                (NewJobImage::Url(url), None)
            }
            Some(ImageSource::Upload(upload)) => {
                let header = imaging::inspect(&upload.bytes, self.limits.max_image_pixels)?;
                let sha256 = hex::encode(upload.sha256);
                let image = NewJobImage::Stored {
                    key: objects::image_key(partner_id, job_id),
                    sha256,
                    bytes: upload.bytes.len() as i64,
                    format: header.format.as_str().to_string(),
                    width: header.width as i32,
                    height: header.height as i32,
                };
                (image, Some((upload.bytes, header.format.mime())))
            }
        };

        let new_job = NewJob {
            id: job_id,
            partner_id,
            request_fingerprint: fingerprint(
                &image,
                &webhook_url,
                &metadata,
                &model_id,
                &diets,
                &lang,
                &client_reference,
            ),
            image,
            webhook_url,
            metadata,
            model_id,
            diets,
            lang,
            idempotency_key,
            client_reference,
        };

        // A retry with the same key or reference must not write anything.
        if let Some(earlier) = jobs::find_earlier(&self.db, &new_job).await? {
            return answer(earlier);
        }
        // Checked before the image is stored, so a partner at its cap writes nothing; the
        // insert counts again, under the partner's lock.
        if let Some(max) = max_unfinished {
            if jobs::count_unfinished(self.db.reader(), partner_id).await? >= u64::from(max) {
                return Err(IntakeError::QueueFull { max });
            }
        }

        let stored_key = match (&new_job.image, upload) {
            (NewJobImage::Stored { key, .. }, Some((bytes, mime))) => {
                self.objects.put(key, bytes, mime).await?;
                Some(key.clone())
            }
            _ => None,
        };

        let inserted = match max_unfinished {
            None => match self.inserts.submit(new_job).await {
                Ok(inserted) => inserted.map(|o| (o, None)),
                Err(unrecorded) => {
                    if let Some(key) = stored_key {
                        remove_if_orphaned(&self.db, self.objects.as_ref(), &key).await;
                    }
                    return Err(unrecorded.into());
                }
            },
            Some(max) => jobs::insert_within(&self.db, new_job, u64::from(max))
                .await
                .map(|(outcome, before)| (outcome, Some(before + 1))),
        };
        match inserted {
            Ok((InsertOutcome::Created(job), unfinished)) => {
                crate::metrics::get().jobs_enqueued.inc();
                self.wakeups.announce(Work::Jobs).await;
                Ok(Enqueued::Created {
                    job: *job,
                    unfinished,
                })
            }
            // A request racing this one won, or filled the queue: the image written here is
            // no job's.
            Ok((InsertOutcome::Earlier(earlier), _)) => {
                if let Some(key) = stored_key {
                    remove_if_orphaned(&self.db, self.objects.as_ref(), &key).await;
                }
                answer(earlier)
            }
            Ok((InsertOutcome::QueueFull, _)) => {
                if let Some(key) = stored_key {
                    remove_if_orphaned(&self.db, self.objects.as_ref(), &key).await;
                }
                Err(IntakeError::QueueFull {
                    max: max_unfinished.unwrap_or_default(),
                })
            }
            Err(err) => {
                if let Some(key) = stored_key {
                    remove_if_orphaned(&self.db, self.objects.as_ref(), &key).await;
                }
                Err(err.into())
            }
        }
    }

    /// Erases a partner's job: the job with its result and deliveries (leaving a tombstone),
    /// then its stored image (an image stored by an earlier release under its hash goes only
    /// with the last job using it). A
    /// worker holding the job loses its lease: what it produces is dropped. When deleting the
    /// image fails, the tombstone keeps its key and erasing again finishes the work. Returns
    /// false when there is nothing (left) to erase.
    pub async fn erase(&self, partner_id: Uuid, job_id: Uuid) -> Result<bool, IntakeError> {
        let tombstone = match jobs::erase(&self.db, partner_id, job_id, Utc::now()).await? {
            Some(tombstone) => tombstone,
            None => match jobs::erased(&self.db, partner_id, job_id).await? {
                Some(tombstone) if tombstone.image_key.is_some() => tombstone,
                _ => return Ok(false),
            },
        };
        if let Some(key) = &tombstone.image_key {
            if !jobs::object_is_referenced(&self.db, key, &[]).await? {
                self.objects.delete(key).await?;
            }
            jobs::erased_image_done(&self.db, job_id).await?;
        }
        Ok(true)
    }

    /// Vets a webhook URL by its text (addresses are vetted again when it is called).
    pub fn check_webhook_url(&self, url: &str) -> Result<String, IntakeError> {
        self.vet_url(url.to_string())
            .map_err(IntakeError::WebhookUrl)
    }

    /// A URL as given, trimmed, once the outbound policy accepts it.
    fn vet_url(&self, url: String) -> Result<String, OutboundError> {
        self.outbound.check_url(&url)?;
        Ok(url.trim().to_string())
    }

    fn check_metadata(
        &self,
        metadata: serde_json::Value,
    ) -> Result<serde_json::Value, IntakeError> {
        if !metadata.is_object() {
            return Err(IntakeError::Metadata("must be a JSON object".into()));
        }
        if holds_nul(&metadata) {
            return Err(IntakeError::Metadata(
                "may not hold the character U+0000".into(),
            ));
        }
        let size = serde_json::to_vec(&metadata)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.limits.max_metadata_bytes {
            return Err(IntakeError::Metadata(format!(
                "{size} bytes of JSON, over the limit of {}",
                self.limits.max_metadata_bytes
            )));
        }
        Ok(metadata)
    }
}

/// Best effort: a failure here leaves an orphan object, never a row without its object.
pub async fn remove_if_orphaned(db: &Db, objects: &dyn ObjectStore, key: &str) {
    match jobs::object_is_referenced(db, key, &[]).await {
        Ok(false) => {
            if let Err(err) = objects.delete(key).await {
                tracing::warn!(%key, error = %err, "could not remove an orphaned image");
            }
        }
        Ok(true) => {}
        Err(err) => tracing::warn!(%key, error = %err, "could not check an image's references"),
    }
}

/// What enqueue answers for a request an earlier one already made (or raced to make).
fn answer(earlier: Earlier) -> Result<Enqueued, IntakeError> {
    match earlier {
        Earlier::Replayed(job) => Ok(Enqueued::Replayed(*job)),
        Earlier::KeyReused => Err(IntakeError::IdempotencyKeyReused),
        Earlier::ReferenceReused => Err(IntakeError::ClientReferenceReused),
    }
}

/// Whether a JSON value has U+0000 in a key or a string (PostgreSQL's `jsonb` refuses it).
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(fields) => fields
            .iter()
            .any(|(key, value)| key.contains('\0') || holds_nul(value)),
        _ => false,
    }
}

fn check_model_id(id: String) -> Result<String, IntakeError> {
    let ok = !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'));
    if ok {
        Ok(id)
    } else {
        Err(IntakeError::ModelId(
            "1 to 100 characters of A-Z a-z 0-9 - _ . : @".into(),
        ))
    }
}

/// Known diet tags, canonical: sorted, without repeats, comma-separated. None for no tags.
fn check_diets(tags: &[String]) -> Result<Option<String>, IntakeError> {
    let mut parsed = tags
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<DietTag>().map_err(IntakeError::Diets))
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort_by_key(|t| t.as_str());
    parsed.dedup();
    if parsed.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        parsed
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(","),
    ))
}

/// A language tag such as `en`, `de` or `pt-BR`.
fn check_lang(lang: String) -> Result<String, IntakeError> {
    let mut parts = lang.split('-');
    let primary = parts.next().unwrap_or_default();
    let ok = lang.len() <= 16
        && (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_lowercase())
        && parts
            .all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok {
        Ok(lang)
    } else {
        Err(IntakeError::Lang(
            "a language tag such as `en`, `de` or `pt-BR`, at most 16 characters".into(),
        ))
    }
}

fn check_idempotency_key(key: String) -> Result<String, IntakeError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(IntakeError::IdempotencyKey(
            "1 to 255 printable ASCII characters".into(),
        ));
    }
    Ok(key)
}

fn check_client_reference(reference: String) -> Result<String, IntakeError> {
    let ok = (1..=128).contains(&reference.len())
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'));
    if ok {
        Ok(reference)
    } else {
        Err(IntakeError::ClientReference(
            "1 to 128 characters of A-Z a-z 0-9 - _ . : /".into(),
        ))
    }
}

/// A digest of what the request asks for, to tell a retry from a different request.
fn fingerprint(
    image: &NewJobImage,
    webhook_url: &Option<String>,
    metadata: &Option<serde_json::Value>,
    model_id: &Option<String>,
    diets: &Option<String>,
    lang: &Option<String>,
    client_reference: &Option<String>,
) -> String {
    // URLs in their normal form (`https://Example.com` is `https://example.com/`), as they
    // were stored before URLs were kept as given.
    let normal = |url: &str| {
        url::Url::parse(url)
            .map(String::from)
            .unwrap_or_else(|_| url.to_string())
    };
    let source = match image {
        NewJobImage::Url(url) => serde_json::json!({ "url": normal(url) }),
        NewJobImage::Stored { sha256, .. } => serde_json::json!({ "sha256": sha256 }),
    };
    let mut request = serde_json::json!({
        "image": source,
        "webhook_url": webhook_url.as_deref().map(normal),
        "metadata": metadata,
        "model_id": model_id,
        "diets": diets,
        "lang": lang,
    });
    // Only when given, so the fingerprints of jobs from before references stay the same.
    if let Some(reference) = client_reference {
        request["client_reference"] = reference.as_str().into();
    }
    let mut canonical = String::new();
    write_canonical(&request, &mut canonical);
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// JSON with object keys sorted at every level, so key order never changes the digest.
fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_does_not_change_the_fingerprint() {
        let image = NewJobImage::Url("https://example.com/a.jpg".into());
        let a: serde_json::Value =
            serde_json::from_str(r#"{"user":{"id":1,"tz":"UTC"},"meal":"lunch"}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"meal":"lunch","user":{"tz":"UTC","id":1}}"#).unwrap();
        let c: serde_json::Value =
            serde_json::from_str(r#"{"meal":"dinner","user":{"tz":"UTC","id":1}}"#).unwrap();
        let f = |m: &serde_json::Value| {
            fingerprint(&image, &None, &Some(m.clone()), &None, &None, &None, &None)
        };
        assert_eq!(f(&a), f(&b));
        assert_ne!(f(&a), f(&c));
    }
}
