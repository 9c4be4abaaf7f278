//! The operators' overview of the whole service: the last minutes per minute (jobs enqueued
//! and finished, the backlog, latency), the latest failures, failing webhook endpoints and
//! reconciliation runs.
//!
//! Per-minute figures are grouped by the database (one row per minute, status and latency
//! bucket), which still reads every job of the minutes it groups. Minutes that can no longer
//! change are kept in a [`MinuteCache`] per node, so a refresh reads only the last few.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{LazyLock, Mutex},
};

use chrono::{DateTime, Duration, Utc};
use entity::{
    delivery::{self, DeliveryStatus},
    delivery_attempt,
    job::{self, JobStatus},
    partner, reconcile_run, webhook_endpoint,
};
use sea_orm::{
    prelude::*, Condition, DbBackend, FromQueryResult, QueryOrder, QuerySelect, Statement, Value,
};

use super::{
    jobs::{self, QueueStats},
    reconcile_runs, Db, StoreError,
};

/// How many failed jobs, failing endpoints and reconciliation runs the overview lists.
const LISTED: u64 = 20;
/// The longest window asked for; older cached minutes are dropped.
pub const MAX_MINUTES: u32 = 180;
/// A minute is final this long after it ended: outcomes carry the worker's clock and are
/// committed a moment after.
const SETTLE_SECONDS: i64 = 30;

#[derive(Debug, Clone)]
pub struct Overview {
    pub now: DateTime<Utc>,
    /// One entry per minute, oldest first; the last is the current, unfinished minute.
    pub minutes: Vec<MinuteStats>,
    pub queue: QueueStats,
    pub recent_failures: Vec<FailedJob>,
    pub failing_endpoints: Vec<FailingEndpoint>,
    pub reconcile_runs: Vec<reconcile_run::Model>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinuteStats {
    pub start: DateTime<Utc>,
    pub enqueued: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Jobs enqueued and not finished (queued or in progress) at the minute's end.
    pub backlog: u64,
    /// Enqueue-to-finish time of the jobs that finished in the minute, estimated from
    /// latency buckets 25% wide.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct FailedJob {
    pub job: job::Model,
    pub partner_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct FailingEndpoint {
    pub endpoint: webhook_endpoint::Model,
    pub partner_name: Option<String>,
    /// Deliveries waiting for a retry to this endpoint.
    pub retrying: u64,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
}

/// Per-minute aggregates of final minutes, by epoch minute.
#[derive(Debug, Default)]
pub struct MinuteCache {
    finals: Mutex<BTreeMap<i64, MinuteAggregate>>,
}

/// One minute's jobs: enqueued, finished, and finished per latency bucket.
#[derive(Debug, Clone, Default, PartialEq)]
struct MinuteAggregate {
    enqueued: u64,
    succeeded: u64,
    failed: u64,
    latency: Vec<u64>,
}

/// The overview over the `minutes` minutes up to `now` (the current one included).
pub async fn compute(
    db: &Db,
    cache: &MinuteCache,
    now: DateTime<Utc>,
    minutes: u32,
) -> Result<Overview, StoreError> {
    let minutes = i64::from(minutes.clamp(1, MAX_MINUTES));
    let current = now.timestamp().div_euclid(60);
    let first = current - minutes + 1;
    let last_final = (now.timestamp() - SETTLE_SECONDS).div_euclid(60) - 1;
    let mut aggregates = cache.get(first, last_final);
    // Read from the first minute not cached; the database bounds both reads by `now`.
    let read_from = (first..=last_final)
        .find(|m| !aggregates.contains_key(m))
        .unwrap_or(last_final + 1)
        .max(first);
    let queue = jobs::queue_stats(db, now).await?;
    let since = DateTime::from_timestamp(read_from * 60, 0).unwrap_or(now);
    let enqueued = per_minute(db, enqueued_sql(db.backend()), since, now).await?;
    let finished = per_minute(db, finished_sql(db.backend()), since, now).await?;
    let read = fold(&enqueued, &finished);
    cache.keep(&read, read_from, last_final, current);
    for minute in read_from..=current {
        aggregates.insert(minute, read.get(&minute).cloned().unwrap_or_default());
    }
    let start = DateTime::from_timestamp(first * 60, 0).unwrap_or(now);
    let ordered: Vec<MinuteAggregate> = (first..=current)
        .map(|m| aggregates.remove(&m).unwrap_or_default())
        .collect();
    let minutes = assemble(start, &ordered, queue.queued + queue.in_progress);
    Ok(Overview {
        now,
        minutes,
        queue,
        recent_failures: recent_failures(db).await?,
        failing_endpoints: failing_endpoints(db).await?,
        reconcile_runs: reconcile_runs::list(db, LISTED).await?,
    })
}

impl MinuteCache {
    /// The cached minutes in `first..=last`.
    fn get(&self, first: i64, last: i64) -> BTreeMap<i64, MinuteAggregate> {
        let finals = self.finals.lock().unwrap_or_else(|e| e.into_inner());
        finals
            .range(first..=last.max(first - 1))
            .map(|(m, a)| (*m, a.clone()))
            .collect()
    }

    /// Keeps the final minutes of a read (empty ones too), and forgets those too old for
    /// any window.
    fn keep(
        &self,
        read: &BTreeMap<i64, MinuteAggregate>,
        from: i64,
        last_final: i64,
        current: i64,
    ) {
        let mut finals = self.finals.lock().unwrap_or_else(|e| e.into_inner());
        for minute in from..=last_final {
            finals.insert(minute, read.get(&minute).cloned().unwrap_or_default());
        }
        finals.retain(|m, _| *m > current - i64::from(MAX_MINUTES));
    }
}

/// Upper bounds (ms) of the latency buckets: 10 ms growing by 25% to about an hour; one
/// more bucket holds everything slower.
static LATENCY_BOUNDS: LazyLock<Vec<f64>> = LazyLock::new(|| {
    let mut bounds = Vec::new();
    let mut bound = 10.0f64;
    while bound < 3_600_000.0 {
        bounds.push(bound.round());
        bound *= 1.25;
    }
    bounds
});

/// `CASE` that maps a latency in ms (`expr`) to its bucket's index.
fn bucket_case(expr: &str) -> String {
    let mut case = String::from("CASE");
    for (i, bound) in LATENCY_BOUNDS.iter().enumerate() {
        case.push_str(&format!(" WHEN {expr} <= {bound} THEN {i}"));
    }
    case.push_str(&format!(" ELSE {} END", LATENCY_BOUNDS.len()));
    case
}

/// Epoch minute of a timestamp column.
fn minute_of(backend: DbBackend, column: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("CAST(floor(extract(epoch FROM {column}) / 60) AS BIGINT)"),
        _ => format!("CAST(strftime('%s', {column}) AS INTEGER) / 60"),
    }
}

fn enqueued_sql(backend: DbBackend) -> String {
    format!(
        "SELECT {minute} AS minute, '' AS status, 0 AS bucket, COUNT(*) AS jobs
         FROM jobs WHERE created_at >= $1 AND created_at < $2 GROUP BY 1",
        minute = minute_of(backend, "created_at"),
    )
}

fn finished_sql(backend: DbBackend) -> String {
    let latency_ms = match backend {
        DbBackend::Postgres => "extract(epoch FROM (finished_at - created_at)) * 1000",
        _ => "(julianday(finished_at) - julianday(created_at)) * 86400000.0",
    };
    format!(
        "SELECT minute, status, bucket, COUNT(*) AS jobs FROM (
             SELECT {minute} AS minute, status, {bucket} AS bucket FROM jobs
             WHERE status IN ('succeeded', 'failed') AND finished_at >= $1 AND finished_at < $2)
             AS finished
         GROUP BY minute, status, bucket",
        minute = minute_of(backend, "finished_at"),
        bucket = bucket_case(latency_ms),
    )
}

#[derive(Debug, FromQueryResult)]
struct MinuteCount {
    minute: i64,
    status: String,
    bucket: i32,
    jobs: i64,
}

async fn per_minute(
    db: &Db,
    sql: String,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<MinuteCount>, StoreError> {
    let statement =
        Statement::from_sql_and_values(db.backend(), sql, [Value::from(since), Value::from(until)]);
    Ok(MinuteCount::find_by_statement(statement)
        .all(db.reader())
        .await?)
}

/// The grouped rows, by epoch minute.
fn fold(enqueued: &[MinuteCount], finished: &[MinuteCount]) -> BTreeMap<i64, MinuteAggregate> {
    fn minute(minutes: &mut BTreeMap<i64, MinuteAggregate>, m: i64) -> &mut MinuteAggregate {
        minutes.entry(m).or_insert_with(|| MinuteAggregate {
            latency: vec![0; LATENCY_BOUNDS.len() + 1],
            ..Default::default()
        })
    }
    let mut minutes = BTreeMap::new();
    for row in enqueued {
        minute(&mut minutes, row.minute).enqueued += row.jobs as u64;
    }
    for row in finished {
        let aggregate = minute(&mut minutes, row.minute);
        let jobs = row.jobs as u64;
        match row.status.as_str() {
            "succeeded" => aggregate.succeeded += jobs,
            _ => aggregate.failed += jobs,
        }
        if let Some(slot) = usize::try_from(row.bucket)
            .ok()
            .and_then(|b| aggregate.latency.get_mut(b))
        {
            *slot += jobs;
        }
    }
    minutes
}

/// Per-minute figures from consecutive minutes' aggregates, the first starting at `start`.
/// The backlog is walked back from now: at the end of a minute it was the backlog at the
/// next minute's end, less that minute's enqueued jobs, plus its finished ones.
fn assemble(
    start: DateTime<Utc>,
    aggregates: &[MinuteAggregate],
    backlog_now: u64,
) -> Vec<MinuteStats> {
    let bounds = LATENCY_BOUNDS.as_slice();
    let mut stats = vec![MinuteStats::default(); aggregates.len()];
    let mut backlog = backlog_now as i64;
    for (i, aggregate) in aggregates.iter().enumerate().rev() {
        stats[i] = MinuteStats {
            start: start + Duration::minutes(i as i64),
            enqueued: aggregate.enqueued,
            succeeded: aggregate.succeeded,
            failed: aggregate.failed,
            backlog: backlog.max(0) as u64,
            latency_p50_ms: quantile(bounds, &aggregate.latency, 0.50),
            latency_p95_ms: quantile(bounds, &aggregate.latency, 0.95),
        };
        backlog =
            backlog - aggregate.enqueued as i64 + (aggregate.succeeded + aggregate.failed) as i64;
    }
    stats
}

/// The `q` quantile of a bucketed distribution, interpolated linearly inside its bucket;
/// the overflow bucket answers its lower bound.
fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let Some(&upper) = bounds.get(i) else {
                return Some(lower);
            };
            return Some(lower + (upper - lower) * ((rank - below as f64) / n as f64));
        }
        below += n;
    }
    bounds.last().copied()
}

async fn partner_names(
    db: &Db,
    ids: impl IntoIterator<Item = Uuid>,
) -> Result<HashMap<Uuid, String>, StoreError> {
    let ids: Vec<Uuid> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(partner::Entity::find()
        .filter(partner::Column::Id.is_in(ids))
        .all(db.reader())
        .await?
        .into_iter()
        .map(|p| (p.id, p.name))
        .collect())
}

async fn recent_failures(db: &Db) -> Result<Vec<FailedJob>, StoreError> {
    let failed = job::Entity::find()
        .filter(job::Column::Status.eq(JobStatus::Failed))
        .order_by_desc(job::Column::FinishedAt)
        .limit(LISTED)
        .all(db.reader())
        .await?;
    let names = partner_names(db, failed.iter().map(|j| j.partner_id)).await?;
    Ok(failed
        .into_iter()
        .map(|job| FailedJob {
            partner_name: names.get(&job.partner_id).cloned(),
            job,
        })
        .collect())
}

#[derive(Debug, FromQueryResult)]
struct Waiting {
    endpoint_id: Uuid,
    deliveries: i64,
}

/// Endpoints failing now or disabled, most recently changed first, with their last attempt.
async fn failing_endpoints(db: &Db) -> Result<Vec<FailingEndpoint>, StoreError> {
    let endpoints = webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::DeletedAt.is_null())
        .filter(
            Condition::any()
                .add(webhook_endpoint::Column::FailingSince.is_not_null())
                .add(webhook_endpoint::Column::DisabledAt.is_not_null()),
        )
        .order_by_desc(webhook_endpoint::Column::UpdatedAt)
        .limit(LISTED)
        .all(db.reader())
        .await?;
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = endpoints.iter().map(|e| e.id).collect();
    // Waiting after a failed attempt (reconciliation and redelivery reset `attempts`, not
    // the last outcome).
    let failed_before = Condition::any()
        .add(delivery::Column::LastStatusCode.is_not_null())
        .add(delivery::Column::LastError.is_not_null());
    let waiting: HashMap<Uuid, u64> = delivery::Entity::find()
        .select_only()
        .column(delivery::Column::EndpointId)
        .column_as(delivery::Column::Id.count(), "deliveries")
        .filter(delivery::Column::Status.eq(DeliveryStatus::Pending))
        .filter(failed_before.clone())
        .filter(delivery::Column::EndpointId.is_in(ids))
        .group_by(delivery::Column::EndpointId)
        .into_model::<Waiting>()
        .all(db.reader())
        .await?
        .into_iter()
        .map(|w| (w.endpoint_id, w.deliveries as u64))
        .collect();
    let names = partner_names(db, endpoints.iter().map(|e| e.partner_id)).await?;
    let mut failing = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        // The delivery that failed last, then its last attempt.
        let delivery = delivery::Entity::find()
            .filter(delivery::Column::EndpointId.eq(endpoint.id))
            .filter(failed_before.clone())
            .order_by_desc(delivery::Column::UpdatedAt)
            .one(db.reader())
            .await?;
        let attempt = match &delivery {
            Some(d) => {
                delivery_attempt::Entity::find()
                    .filter(delivery_attempt::Column::DeliveryId.eq(d.id))
                    .order_by_desc(delivery_attempt::Column::AttemptedAt)
                    .one(db.reader())
                    .await?
            }
            None => None,
        };
        failing.push(FailingEndpoint {
            partner_name: names.get(&endpoint.partner_id).cloned(),
            retrying: waiting.get(&endpoint.id).copied().unwrap_or(0),
            last_attempt_at: attempt.as_ref().map(|a| a.attempted_at),
            last_status_code: attempt.as_ref().and_then(|a| a.status_code),
            last_error: attempt.and_then(|a| a.error),
            endpoint,
        });
    }
    Ok(failing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_by_a_quarter_up_to_an_hour() {
        let bounds = &*LATENCY_BOUNDS;
        assert_eq!(bounds[..4], [10.0, 13.0, 16.0, 20.0]);
        assert!(bounds.windows(2).all(|w| w[1] > w[0] && w[1] <= w[0] * 1.3));
        assert!(*bounds.last().unwrap() < 3_600_000.0);
        assert!(bucket_case("d").starts_with("CASE WHEN d <= 10 THEN 0 WHEN d <= 13 THEN 1"));
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let bounds = [10.0, 20.0, 40.0];
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
        // Ten jobs in (10, 20]: the median is halfway.
        assert_eq!(quantile(&bounds, &[0, 10, 0, 0], 0.5), Some(15.0));
        // 90 fast, 10 in (20, 40]: p95 is halfway into the slow bucket.
        assert_eq!(quantile(&bounds, &[90, 0, 10, 0], 0.95), Some(30.0));
        // Beyond the last bound: the bound itself.
        assert_eq!(quantile(&bounds, &[0, 0, 0, 3], 0.5), Some(40.0));
    }

    #[test]
    fn the_backlog_is_walked_back_from_now() {
        let start = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let minute = start.timestamp() / 60;
        let row = |offset: i64, status: &str, jobs: i64| MinuteCount {
            minute: minute + offset,
            status: status.into(),
            bucket: 3,
            jobs,
        };
        // 10:00 enqueued 5, 10:01 finished 3 and enqueued 1, 10:02 finished 2; 4 remain now.
        let enqueued = [row(0, "", 5), row(1, "", 1)];
        let finished = [
            row(1, "succeeded", 2),
            row(1, "failed", 1),
            row(2, "succeeded", 2),
        ];
        let folded = fold(&enqueued, &finished);
        let ordered: Vec<MinuteAggregate> = (0..3)
            .map(|i| folded.get(&(minute + i)).cloned().unwrap_or_default())
            .collect();
        let stats = assemble(start, &ordered, 4);
        let backlog: Vec<u64> = stats.iter().map(|m| m.backlog).collect();
        assert_eq!(backlog, [8, 6, 4]);
        assert_eq!(stats[0].enqueued, 5);
        assert_eq!(stats[1].succeeded, 2);
        assert_eq!(stats[1].failed, 1);
        assert_eq!(stats[0].latency_p50_ms, None);
        // Bucket 3 is (16, 20] ms.
        let p50 = stats[1].latency_p50_ms.unwrap();
        assert!((16.0..=20.0).contains(&p50), "{p50}");
        assert_eq!(stats[2].start, start + Duration::minutes(2));
    }

    #[test]
    fn the_cache_keeps_final_minutes_only_and_forgets_old_ones() {
        let cache = MinuteCache::default();
        let one = MinuteAggregate {
            enqueued: 1,
            ..Default::default()
        };
        let read = BTreeMap::from([(100, one.clone()), (102, one.clone())]);
        // Minutes 100..=102 are final, 103 (current) is not; 101 is kept as empty.
        cache.keep(&read, 100, 102, 103);
        let cached = cache.get(90, 103);
        assert_eq!(cached.keys().copied().collect::<Vec<_>>(), [100, 101, 102]);
        assert_eq!(cached[&101], MinuteAggregate::default());
        // Far later, they are too old for any window.
        cache.keep(&BTreeMap::new(), 400, 400, 401);
        assert_eq!(cache.get(0, 500).keys().copied().collect::<Vec<_>>(), [400]);
    }
}
