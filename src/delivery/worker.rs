//! Delivery workers: claim due deliveries from the outbox, sign and POST them, and record
//! each attempt and what comes next (delivered, retry later, or give up).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use entity::{delivery, webhook_endpoint};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    schedule::{parse_retry_after, RetrySchedule},
    signing::{signature_header, WebhookSecret},
};
use crate::{
    metrics,
    outbound::{FetchError, GuardedClient},
    queue_pool::{self, CommitBatch, GroupCommit, LeasedWork, PoolSettings, Unrecorded},
    store::{
        deliveries::{self, AttemptOutcome, AttemptRecord, DeliveryLease, NextStep},
        endpoints::{self, EndpointHealth},
        partners,
        wakeups::{Wakeups, Work},
        Db, StoreError,
    },
};

/// Bytes of a receiver's response kept with the attempt.
const RESPONSE_EXCERPT: usize = 1024;

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub schedule: RetrySchedule,
    /// Deliveries in flight at once on this node.
    pub concurrency: usize,
    /// Deliveries in flight at once per receiver URL on this node.
    pub receiver_concurrency: usize,
    pub lease: Duration,
    pub poll_interval: Duration,
}

pub struct DeliveryWorker {
    db: Db,
    client: GuardedClient,
    wakeups: Arc<Wakeups>,
    receivers: Arc<ReceiverSlots>,
    settings: DeliverySettings,
}

/// Deliveries in flight per receiver URL on this node, each URL held to a cap.
#[derive(Debug)]
struct ReceiverSlots {
    cap: usize,
    busy: Mutex<HashMap<String, usize>>,
}

/// One delivery's place at its receiver; given back when dropped.
struct ReceiverSlot {
    slots: Arc<ReceiverSlots>,
    url: String,
}

impl ReceiverSlots {
    /// The URLs at their cap, for the claim to skip.
    fn saturated(&self) -> Vec<String> {
        let busy = self.busy.lock().expect("never poisoned");
        busy.iter()
            .filter(|(_, &n)| n >= self.cap)
            .map(|(url, _)| url.clone())
            .collect()
    }

    fn try_take(self: &Arc<Self>, url: &str) -> Option<ReceiverSlot> {
        let mut busy = self.busy.lock().expect("never poisoned");
        let n = busy.entry(url.to_string()).or_default();
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(ReceiverSlot {
            slots: self.clone(),
            url: url.to_string(),
        })
    }
}

impl Drop for ReceiverSlot {
    fn drop(&mut self) {
        let mut busy = self.slots.busy.lock().expect("never poisoned");
        if let Some(n) = busy.get_mut(&self.url) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.url);
            }
        }
    }
}

/// Why an attempt was not carried out or not recorded. Either way its lease expires and
/// the delivery is attempted again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The endpoint was not among those loaded for the batch (loading them failed).
    #[error("endpoint {0} could not be loaded")]
    EndpointNotLoaded(Uuid),
    #[error("the delivery recorder stopped")]
    RecorderStopped,
    /// Recording failed; the recorder logged why.
    #[error("recording the attempt failed")]
    NotRecorded,
}

/// What one HTTP attempt came to.
enum Verdict {
    Delivered,
    Gone,
    Failed { retry_after: Option<Duration> },
}

impl DeliveryWorker {
    /// `client` must refuse redirects and time out each attempt (15 s by default).
    pub fn new(
        db: Db,
        client: GuardedClient,
        wakeups: Arc<Wakeups>,
        settings: DeliverySettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            db,
            client,
            wakeups,
            receivers: Arc::new(ReceiverSlots {
                cap: settings.receiver_concurrency.max(1),
                busy: Mutex::default(),
            }),
            settings,
        })
    }

    /// Sends due deliveries until `shutdown`, then waits for the attempts in flight (each
    /// ends within the attempt timeout).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let settings = PoolSettings {
            concurrency: self.settings.concurrency,
            rescue_every: self.settings.lease / 2,
            shutdown_grace: None,
        };
        let (recorder, recording) =
            GroupCommit::start(self.clone(), RECORD_BATCH, self.settings.concurrency);
        let running = Arc::new(Running {
            worker: self,
            recorder,
            held_back: AtomicBool::new(false),
        });
        queue_pool::run(running, settings, shutdown).await;
        let _ = recording.await;
    }

    /// The endpoints of a claimed batch, in one query.
    async fn endpoints_of<'a>(
        &self,
        claimed: impl Iterator<Item = &'a DeliveryLease>,
    ) -> HashMap<Uuid, webhook_endpoint::Model> {
        let ids: Vec<Uuid> = claimed.filter_map(|l| l.delivery.endpoint_id).collect();
        match endpoints::find_many(&self.db, &ids).await {
            Ok(found) => found.into_iter().map(|e| (e.id, e)).collect(),
            Err(err) => {
                tracing::warn!(error = %err, "loading endpoints failed");
                HashMap::new()
            }
        }
    }

    /// One attempt of one delivery. A delivery to an endpoint that could not be loaded
    /// (deleted meanwhile, or a database error) is left to its lease.
    async fn deliver(
        &self,
        lease: DeliveryLease,
        endpoint: Option<webhook_endpoint::Model>,
        recorder: &Recorder,
    ) -> Result<(), DeliveryError> {
        let now = self.db.now().await;
        if let (Some(id), None) = (lease.delivery.endpoint_id, &endpoint) {
            return Err(DeliveryError::EndpointNotLoaded(id));
        }
        if let Some(endpoint) = endpoint.as_ref().filter(|e| !endpoints::is_active(e)) {
            let reason = if endpoint.deleted_at.is_some() {
                "the endpoint was deleted"
            } else {
                "the endpoint is disabled"
            };
            metrics::get()
                .webhook_attempts
                .with_label_values(&["skipped"])
                .inc();
            let outcome = AttemptOutcome {
                lease,
                attempt: None,
                next: NextStep::GiveUp,
                reason: Some(reason.into()),
            };
            record(recorder, outcome).await?;
            return Ok(());
        }
        let secrets = self
            .secrets(&lease.delivery, endpoint.as_ref(), now)
            .await?;
        let (attempt, verdict) = self.send(&lease.delivery, &secrets).await;

        let outcome_label = match verdict {
            Verdict::Delivered => "delivered",
            Verdict::Gone => "gone",
            Verdict::Failed { .. } if attempt.error.as_deref() == Some("timed out") => "timeout",
            Verdict::Failed { .. } => "failed",
        };
        let metrics = metrics::get();
        metrics
            .webhook_attempts
            .with_label_values(&[outcome_label])
            .inc();
        metrics
            .webhook_seconds
            .observe(attempt.latency_ms as f64 / 1000.0);
        let attempts_made = lease.delivery.attempts as usize + 1;
        let next = match verdict {
            Verdict::Delivered => NextStep::Delivered,
            Verdict::Gone => NextStep::GiveUp,
            Verdict::Failed { retry_after } => self
                .settings
                .schedule
                .next_attempt(attempts_made, retry_after, self.db.now().await)
                .map_or(NextStep::GiveUp, NextStep::RetryAt),
        };
        let health = match verdict {
            Verdict::Delivered => EndpointHealth::Succeeded,
            Verdict::Gone => EndpointHealth::Gone,
            Verdict::Failed { .. } => EndpointHealth::Failed,
        };
        let reason =
            matches!(verdict, Verdict::Gone).then(|| "the receiver answered 410 Gone".to_string());
        let id = lease.delivery.id;
        tracing::debug!(delivery_id = %id, status = ?attempt.status_code, ?next, "delivery attempt");
        let outcome = AttemptOutcome {
            lease,
            attempt: Some(attempt),
            next,
            reason,
        };
        if !record(recorder, outcome).await? {
            tracing::warn!(delivery_id = %id, "the delivery's lease expired during the attempt");
        }
        // Only changes are written: a healthy endpoint's success costs no write.
        if let Some(endpoint) = endpoint {
            let changes = match health {
                EndpointHealth::Succeeded => endpoint.failing_since.is_some(),
                EndpointHealth::Failed => endpoint.failing_since.is_none(),
                EndpointHealth::Gone => true,
            };
            if changes {
                endpoints::record_health(&self.db, endpoint.id, health, Utc::now()).await?;
            }
        }
        Ok(())
    }

    /// The secrets to sign with: the endpoint's (and its previous one during a rotation's
    /// overlap), or the partner's for a per-job URL.
    async fn secrets(
        &self,
        delivery: &delivery::Model,
        endpoint: Option<&webhook_endpoint::Model>,
        now: DateTime<Utc>,
    ) -> Result<Vec<WebhookSecret>, StoreError> {
        let texts = match endpoint {
            Some(e) => {
                let mut texts = vec![e.secret.clone()];
                if let (Some(previous), Some(until)) =
                    (&e.previous_secret, e.previous_secret_expires_at)
                {
                    if until > now {
                        texts.push(previous.clone());
                    }
                }
                texts
            }
            None => vec![
                partners::webhook_secret(
                    &self.db,
                    delivery.partner_id,
                    WebhookSecret::generate().expose(),
                )
                .await?,
            ],
        };
        Ok(texts
            .iter()
            .filter_map(|t| WebhookSecret::parse(t).ok())
            .collect())
    }

    async fn send(
        &self,
        delivery: &delivery::Model,
        secrets: &[WebhookSecret],
    ) -> (AttemptRecord, Verdict) {
        let body = delivery.payload.clone().into_bytes();
        post_signed(
            &self.client,
            &delivery.url,
            &message_id(delivery),
            body,
            secrets,
        )
        .await
    }
}

/// POSTs a body signed per Standard Webhooks, and records how it went. Sends the test
/// events of `POST /webhooks/{id}/test`, too, so they travel exactly as deliveries do.
pub async fn send_signed(
    client: &GuardedClient,
    url: &str,
    msg_id: &str,
    body: Vec<u8>,
    secrets: &[WebhookSecret],
) -> AttemptRecord {
    post_signed(client, url, msg_id, body, secrets).await.0
}

async fn post_signed(
    client: &GuardedClient,
    url: &str,
    msg_id: &str,
    body: Vec<u8>,
    secrets: &[WebhookSecret],
) -> (AttemptRecord, Verdict) {
    let attempted_at = Utc::now();
    let started = Instant::now();
    let timestamp = attempted_at.timestamp();
    let signature = signature_header(
        &secrets.iter().collect::<Vec<_>>(),
        msg_id,
        timestamp,
        &body,
    );
    let request = client.request(reqwest::Method::POST, url).map(|r| {
        r.header("content-type", "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
    });
    let response = match request {
        Ok(request) => client.send(request).await,
        Err(err) => Err(err),
    };
    let mut record = AttemptRecord {
        attempted_at,
        status_code: None,
        latency_ms: 0,
        error: None,
        response_body: None,
    };
    let verdict = match response {
        Ok(response) => {
            let status = response.status();
            record.status_code = Some(status.as_u16());
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, Utc::now()));
            record.response_body = Some(excerpt(response).await);
            if status.is_success() {
                Verdict::Delivered
            } else {
                record.error = Some(if status.is_redirection() {
                    format!("HTTP {status}: redirects are not followed")
                } else {
                    format!("HTTP {status}")
                });
                if status == reqwest::StatusCode::GONE {
                    Verdict::Gone
                } else {
                    Verdict::Failed { retry_after }
                }
            }
        }
        Err(err) => {
            record.error = Some(match err {
                FetchError::Timeout => "timed out".to_string(),
                other => storable(other.to_string()),
            });
            Verdict::Failed { retry_after: None }
        }
    };
    record.latency_ms = started.elapsed().as_millis() as i64;
    (record, verdict)
}

/// Hands an outcome to the recorder and waits until it is committed; true if the lease
/// was still held.
async fn record(recorder: &Recorder, outcome: AttemptOutcome) -> Result<bool, DeliveryError> {
    recorder.submit(outcome).await.map_err(|e| match e {
        Unrecorded::Stopped => DeliveryError::RecorderStopped,
        Unrecorded::Failed => DeliveryError::NotRecorded,
    })
}

/// Records attempts in group commits; each says whether the lease was still held.
type Recorder = GroupCommit<AttemptOutcome, bool>;

/// Most outcomes waiting per commit.
const RECORD_BATCH: usize = 256;

/// Attempts are committed together (`deliveries::record_attempts`).
impl CommitBatch for DeliveryWorker {
    type Item = AttemptOutcome;
    type Reply = bool;
    type Error = StoreError;
    const ITEM: &'static str = "delivery attempt";

    fn worth_retrying_singly(error: &StoreError) -> bool {
        !error.is_unavailable()
    }

    async fn commit(&self, batch: &[AttemptOutcome]) -> Result<Vec<bool>, StoreError> {
        deliveries::record_attempts(&self.db, batch, self.db.now().await).await
    }
}

/// A claimed delivery, with its endpoint and its place at the receiver (given back when it
/// is dropped).
struct Claimed {
    lease: DeliveryLease,
    endpoint: Option<webhook_endpoint::Model>,
    _receiver_slot: ReceiverSlot,
}

/// One run of the delivery pool: the worker and its attempt recorder, which stops when the
/// pool is done with it.
struct Running {
    worker: Arc<DeliveryWorker>,
    recorder: Recorder,
    /// Whether the last claim left deliveries behind for a receiver at its cap. Read after
    /// the claim: by then the deliveries that held them back may have finished already.
    held_back: AtomicBool,
}

impl LeasedWork for Running {
    type Item = Claimed;

    async fn rescue(&self) {
        let db = &self.worker.db;
        if let Err(err) = deliveries::rescue_expired(db, db.now().await).await {
            tracing::warn!(error = %err, "rescuing deliveries failed");
        }
    }

    /// Claims due deliveries, except to receivers at their cap; a claim may still hold more
    /// for one receiver than its cap allows, and those go back at once.
    async fn claim(&self, limit: usize) -> Vec<Claimed> {
        let worker = self.worker.as_ref();
        let saturated = worker.receivers.saturated();
        let skip: Vec<&str> = saturated.iter().map(String::as_str).collect();
        let now = worker.db.now().await;
        let claimed = match deliveries::claim_due(
            &worker.db,
            now,
            limit as u64,
            worker.settings.lease,
            &skip,
        )
        .await
        {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(error = %err, "claiming deliveries failed");
                Vec::new()
            }
        };
        let (mut admitted, mut over_cap) = (Vec::new(), Vec::new());
        for lease in claimed {
            match worker.receivers.try_take(&lease.delivery.url) {
                Some(slot) => admitted.push((lease, slot)),
                None => over_cap.push(lease),
            }
        }
        self.held_back
            .store(!skip.is_empty() || !over_cap.is_empty(), Ordering::Relaxed);
        if let Err(err) = deliveries::release(&worker.db, &over_cap, worker.db.now().await).await {
            tracing::warn!(error = %err, "putting back deliveries over their receiver's cap failed; their leases will expire");
        }
        let endpoints = worker
            .endpoints_of(admitted.iter().map(|(lease, _)| lease))
            .await;
        admitted
            .into_iter()
            .map(|(lease, receiver_slot)| {
                let endpoint = lease
                    .delivery
                    .endpoint_id
                    .and_then(|id| endpoints.get(&id).cloned());
                Claimed {
                    lease,
                    endpoint,
                    _receiver_slot: receiver_slot,
                }
            })
            .collect()
    }

    /// An attempt runs to its end: it is bounded by the attempt timeout, so `release`
    /// is not needed.
    async fn process(self: Arc<Self>, claimed: Claimed, _release: CancellationToken) {
        let Claimed {
            lease,
            endpoint,
            _receiver_slot,
        } = claimed;
        let id = lease.delivery.id;
        if let Err(err) = self.worker.deliver(lease, endpoint, &self.recorder).await {
            tracing::warn!(delivery_id = %id, error = %err, "recording a delivery failed; its lease will expire and it be retried");
        }
    }

    async fn idle(&self) {
        let DeliveryWorker {
            wakeups, settings, ..
        } = self.worker.as_ref();
        wakeups.wait(Work::Deliveries, settings.poll_interval).await;
    }

    /// A receiver at its cap may have due deliveries the claim skipped: the next one to
    /// finish frees a slot for them.
    fn holds_back(&self) -> bool {
        self.held_back.load(Ordering::Relaxed)
    }
}

/// `webhook-id`: the same on every attempt of a delivery.
pub fn message_id(delivery: &delivery::Model) -> String {
    format!("msg_{}", delivery.id.simple())
}

/// The first bytes of a response body, as text; the rest is not read.
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < RESPONSE_EXCERPT {
        match tokio::time::timeout(Duration::from_secs(2), response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(RESPONSE_EXCERPT);
    storable(String::from_utf8_lossy(&body).into_owned())
}

/// Text a receiver controls, made safe to store: PostgreSQL `text` refuses NUL.
fn storable(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "")
    } else {
        text
    }
}
