//! Leased queues: the jobs and the deliveries tables are both worked this way. A claim moves
//! due waiting rows to the working status under a fresh lease token, lowest fair turn first
//! (see `fair`); only the token's holder may then change the row, and rows whose lease
//! expires go back. No transaction is held while an item is worked on: the status and lease
//! columns are the lock.
//!
//! PostgreSQL claims with `FOR UPDATE SKIP LOCKED` inside a materialised CTE, so concurrent
//! workers never take the same row; SQLite has one writer, so a plain
//! `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING *` is atomic. Both pick rows by one
//! range scan of the `(status, turn, <due>, id)` index.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement, Value};
use uuid::Uuid;

use super::{lease_end, Db, StoreError};

/// A table worked as a leased, fair queue.
#[derive(Debug)]
pub(crate) struct LeasedTable {
    pub(crate) name: &'static str,
    /// The status of rows waiting to be claimed.
    pub(crate) waiting: &'static str,
    /// The status of claimed rows.
    pub(crate) working: &'static str,
    /// The statuses of rows done with (succeeded or failed for good).
    pub(crate) finished: [&'static str; 2],
    /// The column that says when a waiting row is due.
    due: &'static str,
    /// What a claim sets besides the status, the lease and `updated_at` (`$1` is now).
    claim_sets: &'static str,
}

pub(crate) const JOBS: LeasedTable = LeasedTable {
    name: "jobs",
    waiting: "queued",
    working: "in_progress",
    finished: ["succeeded", "failed"],
    due: "run_at",
    claim_sets: "attempts = attempts + 1, started_at = COALESCE(started_at, $1),",
};

pub(crate) const DELIVERIES: LeasedTable = LeasedTable {
    name: "deliveries",
    waiting: "pending",
    working: "sending",
    finished: ["delivered", "failed"],
    due: "next_attempt_at",
    claim_sets: "",
};

/// Rows a claim passes over: those whose `column` holds one of `values`.
pub(crate) struct Excluding<'a> {
    pub(crate) column: &'static str,
    pub(crate) values: &'a [&'a str],
}

/// Claims up to `limit` due rows of `table` under one fresh lease token, lowest turn first.
/// Returns the rows as they are after the claim, and the token.
pub(crate) async fn claim<M: FromQueryResult>(
    db: &Db,
    table: &LeasedTable,
    now: DateTime<Utc>,
    limit: u64,
    lease_for: Duration,
    excluding: Option<Excluding<'_>>,
) -> Result<(Vec<M>, Uuid), StoreError> {
    let token = Uuid::new_v4();
    let backend = db.backend();
    let LeasedTable {
        name,
        waiting,
        working,
        due,
        claim_sets,
        ..
    } = table;
    let mut values: Vec<Value> = vec![
        now.into(),
        (limit as i64).into(),
        token.into(),
        lease_end(now, lease_for).into(),
    ];
    let filter = match &excluding {
        None => String::new(),
        Some(Excluding {
            column,
            values: excluded,
        }) => {
            values.push(
                serde_json::to_string(excluded)
                    .unwrap_or_else(|_| "[]".into())
                    .into(),
            );
            match backend {
                DbBackend::Postgres => {
                    format!(" AND {column} NOT IN (SELECT jsonb_array_elements_text($5::jsonb))")
                }
                _ => format!(" AND {column} NOT IN (SELECT value FROM json_each($5))"),
            }
        }
    };
    let pick = format!(
        "SELECT id FROM {name} WHERE status = '{waiting}' AND {due} <= $1{filter}
         ORDER BY turn, {due}, id LIMIT $2"
    );
    let set = format!(
        "SET status = '{working}', lease_token = $3, lease_expires_at = $4, {claim_sets}
         updated_at = $1"
    );
    let sql = match backend {
        DbBackend::Postgres => format!(
            "WITH picked AS MATERIALIZED ({pick} FOR UPDATE SKIP LOCKED)
             UPDATE {name} {set} FROM picked WHERE {name}.id = picked.id RETURNING {name}.*"
        ),
        _ => format!("UPDATE {name} {set} WHERE id IN ({pick}) RETURNING *"),
    };
    let rows = db
        .writer()
        .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    let claimed = rows
        .iter()
        .map(|row| M::from_query_result(row, ""))
        .collect::<Result<_, _>>()?;
    Ok((claimed, token))
}
