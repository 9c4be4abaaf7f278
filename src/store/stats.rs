//! Usage statistics over the last days, for a partner or for everyone (admins).
//! Aggregated here from the jobs' stored results, so SQLite and PostgreSQL agree.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use entity::{
    delivery::{self, DeliveryStatus},
    job::{self, JobStatus},
};
use sea_orm::{prelude::*, FromQueryResult, QuerySelect};

use super::{Db, StoreError};

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Jobs created per UTC day, oldest first, every day of the window present.
    pub jobs_per_day: Vec<(String, u64)>,
    /// Succeeded food photos per rating 1–5.
    pub ratings: [u64; 5],
    /// The most frequent top labels of succeeded jobs, most frequent first.
    pub top_labels: Vec<(String, u64)>,
    pub succeeded: u64,
    pub failed: u64,
    /// Share of succeeded jobs that were not food; 0 when none succeeded.
    pub not_food_share: f64,
    /// Processing time of finished jobs, in ms.
    pub processing_ms_p50: Option<i64>,
    pub processing_ms_p95: Option<i64>,
    /// Delivered / (delivered + failed) deliveries; None when none settled.
    pub delivery_success_rate: Option<f64>,
}

#[derive(FromQueryResult)]
struct JobRow {
    created_at: DateTime<Utc>,
    status: JobStatus,
    result: Option<Json>,
    processing_time_ms: Option<i64>,
}

#[derive(FromQueryResult)]
struct DeliveryRow {
    status: DeliveryStatus,
}

/// Statistics of the jobs created in the `days` days up to `now`, for one partner or, with
/// `None`, for all.
pub async fn compute(
    db: &Db,
    partner: Option<Uuid>,
    now: DateTime<Utc>,
    days: u32,
) -> Result<Stats, StoreError> {
    let first_day = (now - chrono::Duration::days(i64::from(days) - 1)).date_naive();
    let since = first_day
        .and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc())
        .unwrap_or(now);
    let mut jobs = job::Entity::find()
        .select_only()
        .column(job::Column::CreatedAt)
        .column(job::Column::Status)
        .column(job::Column::Result)
        .column(job::Column::ProcessingTimeMs)
        .filter(job::Column::CreatedAt.gte(since));
    let mut deliveries = delivery::Entity::find()
        .select_only()
        .column(delivery::Column::Status)
        .filter(delivery::Column::CreatedAt.gte(since));
    if let Some(partner) = partner {
        jobs = jobs.filter(job::Column::PartnerId.eq(partner));
        deliveries = deliveries.filter(delivery::Column::PartnerId.eq(partner));
    }
    let jobs = jobs.into_model::<JobRow>().all(db.reader()).await?;
    let deliveries = deliveries
        .into_model::<DeliveryRow>()
        .all(db.reader())
        .await?;

    let mut per_day: BTreeMap<String, u64> = (0..days)
        .map(|d| {
            let day = first_day + chrono::Duration::days(i64::from(d));
            (day.format("%Y-%m-%d").to_string(), 0)
        })
        .collect();
    let mut stats = Stats::default();
    let mut labels: HashMap<String, u64> = HashMap::new();
    let mut not_food = 0u64;
    let mut times = Vec::new();
    for job in &jobs {
        *per_day
            .entry(job.created_at.format("%Y-%m-%d").to_string())
            .or_default() += 1;
        match job.status {
            JobStatus::Succeeded => stats.succeeded += 1,
            JobStatus::Failed => stats.failed += 1,
            _ => continue,
        }
        if let Some(ms) = job.processing_time_ms {
            times.push(ms);
        }
        let Some(result) = &job.result else { continue };
        if result["is_food"] == false {
            not_food += 1;
        }
        if let Some(rating) = result["rating"].as_u64().filter(|r| (1..=5).contains(r)) {
            stats.ratings[rating as usize - 1] += 1;
        }
        if let Some(label) = result["labels"][0]["label"].as_str() {
            *labels.entry(label.to_string()).or_default() += 1;
        }
    }
    stats.jobs_per_day = per_day.into_iter().collect();
    let mut top: Vec<(String, u64)> = labels.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(10);
    stats.top_labels = top;
    if stats.succeeded > 0 {
        stats.not_food_share = not_food as f64 / stats.succeeded as f64;
    }
    times.sort_unstable();
    let pick = |q: f64| {
        times
            .get(((times.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    if !times.is_empty() {
        stats.processing_ms_p50 = pick(0.50);
        stats.processing_ms_p95 = pick(0.95);
    }
    let delivered = deliveries
        .iter()
        .filter(|d| d.status == DeliveryStatus::Delivered)
        .count();
    let failed = deliveries
        .iter()
        .filter(|d| d.status == DeliveryStatus::Failed)
        .count();
    if delivered + failed > 0 {
        stats.delivery_success_rate = Some(delivered as f64 / (delivered + failed) as f64);
    }
    Ok(stats)
}
