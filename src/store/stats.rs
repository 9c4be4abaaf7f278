//! Usage statistics over the last days, for a partner or for everyone (admins).
//! Aggregated by the database (grouped counts, one row per value), so a request costs the
//! same memory for a day as for 90; the few expressions that differ between SQLite and
//! PostgreSQL (day of a timestamp, fields of the stored result) are spelled per backend.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::{DbBackend, FromQueryResult, Statement, Value};

use super::{Db, StoreError};

use sea_orm::prelude::Uuid;

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
    /// Processing time of succeeded jobs, in ms (nearest rank).
    pub processing_ms_p50: Option<i64>,
    pub processing_ms_p95: Option<i64>,
    /// Delivered / (delivered + failed) deliveries; None when none settled.
    pub delivery_success_rate: Option<f64>,
}

/// The window's jobs and deliveries, as SQL conditions on `created_at` (and `partner_id`):
/// `$1` ≤ created_at < `$2`, `$3` the partner when there is one.
fn window(partner: Option<Uuid>) -> &'static str {
    if partner.is_some() {
        "created_at >= $1 AND created_at < $2 AND partner_id = $3"
    } else {
        "created_at >= $1 AND created_at < $2"
    }
}

fn day_of(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        _ => "strftime('%Y-%m-%d', created_at)",
    }
}

/// (rating, top label, not food) of a stored result.
fn result_fields(backend: DbBackend) -> [&'static str; 3] {
    match backend {
        DbBackend::Postgres => [
            "CAST(result->>'rating' AS BIGINT)",
            "result->'labels'->0->>'label'",
            "CASE WHEN result->>'is_food' = 'false' THEN 1 ELSE 0 END",
        ],
        _ => [
            "CAST(json_extract(result, '$.rating') AS INTEGER)",
            "json_extract(result, '$.labels[0].label')",
            "CASE WHEN json_extract(result, '$.is_food') = 0 THEN 1 ELSE 0 END",
        ],
    }
}

#[derive(FromQueryResult)]
struct Counted {
    key: Option<String>,
    n: i64,
}

#[derive(FromQueryResult)]
struct ResultGroup {
    rating: Option<i64>,
    label: Option<String>,
    not_food: i32,
    n: i64,
}

#[derive(FromQueryResult)]
struct Total {
    n: i64,
}

#[derive(FromQueryResult)]
struct Millis {
    ms: i64,
}

struct Query<'a> {
    db: &'a Db,
    values: Vec<Value>,
    partner: Option<Uuid>,
}

impl Query<'_> {
    fn statement(&self, sql: String) -> Statement {
        Statement::from_sql_and_values(self.db.backend(), sql, self.values.clone())
    }

    /// `COUNT(*)` over the window of `table`.
    async fn count(&self, table: &str, also: &str) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT COUNT(*) AS n FROM {table} WHERE {window}{also}",
            window = window(self.partner),
        );
        Ok(Total::find_by_statement(self.statement(sql))
            .one(self.db.reader())
            .await?
            .map_or(0, |t| t.n as u64))
    }

    /// `SELECT <key>, COUNT(*)` over the window of `table`, grouped by the key.
    async fn count_by(
        &self,
        table: &str,
        key: &str,
        also: &str,
    ) -> Result<Vec<(Option<String>, u64)>, StoreError> {
        let sql = format!(
            "SELECT {key} AS key, COUNT(*) AS n FROM {table} WHERE {window}{also} GROUP BY 1",
            window = window(self.partner),
        );
        Ok(Counted::find_by_statement(self.statement(sql))
            .all(self.db.reader())
            .await?
            .into_iter()
            .map(|c| (c.key, c.n as u64))
            .collect())
    }
}

/// Statistics of the jobs created in the `days` days up to `now` (UTC days, today
/// included), for one partner or, with `None`, for all.
pub async fn compute(
    db: &Db,
    partner: Option<Uuid>,
    now: DateTime<Utc>,
    days: u32,
) -> Result<Stats, StoreError> {
    let backend = db.backend();
    let days = days.max(1);
    let first_day = (now - chrono::Duration::days(i64::from(days) - 1)).date_naive();
    let midnight = |day: chrono::NaiveDate| day.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    let since = midnight(first_day).unwrap_or(now);
    let until = midnight(now.date_naive() + chrono::Duration::days(1)).unwrap_or(now);
    let mut values = vec![Value::from(since), Value::from(until)];
    if let Some(partner) = partner {
        values.push(Value::from(partner));
    }
    let query = Query {
        db,
        values,
        partner,
    };

    let mut stats = Stats::default();
    let mut per_day: BTreeMap<String, u64> = (0..days)
        .map(|d| {
            let day = first_day + chrono::Duration::days(i64::from(d));
            (day.format("%Y-%m-%d").to_string(), 0)
        })
        .collect();
    for (day, n) in query.count_by("jobs", day_of(backend), "").await? {
        if let Some(count) = day.and_then(|d| per_day.get_mut(&d)) {
            *count += n;
        }
    }
    stats.jobs_per_day = per_day.into_iter().collect();

    for (status, n) in query
        .count_by("jobs", "status", " AND status IN ('succeeded', 'failed')")
        .await?
    {
        match status.as_deref() {
            Some("succeeded") => stats.succeeded = n,
            Some("failed") => stats.failed = n,
            _ => {}
        }
    }

    let [rating, label, not_food] = result_fields(backend);
    let sql = format!(
        "SELECT {rating} AS rating, {label} AS label, {not_food} AS not_food, COUNT(*) AS n
         FROM jobs WHERE {window} AND status = 'succeeded' GROUP BY 1, 2, 3",
        window = window(partner),
    );
    let mut labels: HashMap<String, u64> = HashMap::new();
    let mut not_food_jobs = 0u64;
    for group in ResultGroup::find_by_statement(query.statement(sql))
        .all(db.reader())
        .await?
    {
        let n = group.n as u64;
        if group.not_food == 1 {
            not_food_jobs += n;
        }
        if let Some(rating) = group.rating.filter(|r| (1..=5).contains(r)) {
            stats.ratings[rating as usize - 1] += n;
        }
        if let Some(label) = group.label {
            *labels.entry(label).or_default() += n;
        }
    }
    let mut top: Vec<(String, u64)> = labels.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(10);
    stats.top_labels = top;
    if stats.succeeded > 0 {
        stats.not_food_share = not_food_jobs as f64 / stats.succeeded as f64;
    }

    // Nearest rank: the value at index round((n - 1) * q) of the sorted times.
    let timed = " AND status = 'succeeded' AND processing_time_ms IS NOT NULL";
    let n = query.count("jobs", timed).await?;
    if n > 0 {
        for (q, slot) in [
            (0.50, &mut stats.processing_ms_p50),
            (0.95, &mut stats.processing_ms_p95),
        ] {
            let rank = ((n as f64 - 1.0) * q).round() as u64;
            let sql = format!(
                "SELECT processing_time_ms AS ms FROM jobs WHERE {window}{timed}
                 ORDER BY processing_time_ms LIMIT 1 OFFSET {rank}",
                window = window(partner),
            );
            *slot = Millis::find_by_statement(query.statement(sql))
                .one(db.reader())
                .await?
                .map(|m| m.ms);
        }
    }

    let mut delivered = 0u64;
    let mut failed = 0u64;
    for (status, n) in query.count_by("deliveries", "status", "").await? {
        match status.as_deref() {
            Some("delivered") => delivered = n,
            Some("failed") => failed = n,
            _ => {}
        }
    }
    if delivered + failed > 0 {
        stats.delivery_success_rate = Some(delivered as f64 / (delivered + failed) as f64);
    }
    Ok(stats)
}
