//! The job store: partners and jobs in SQLite (embedded default) or PostgreSQL.
//!
//! SQLite allows one writer at a time, so it gets a one-connection writer pool beside a
//! reader pool (WAL lets readers run while the writer writes). PostgreSQL uses one pool for both.

pub mod deliveries;
pub mod endpoints;
mod fair;
pub mod jobs;
mod leased;
pub mod overview;
pub mod partners;
pub mod queue;
pub mod reconcile_runs;
pub mod stats;
pub mod wakeups;

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use migration::MigratorTrait;
use sea_orm::{
    sqlx::{
        self,
        sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
    },
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, RuntimeErr, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    /// The database lacks migrations this build needs (and is not to migrate it itself).
    #[error("{count} migration(s) pending: run `platescore migrate`")]
    MigrationsPending { count: usize },
    /// The folder of the SQLite database file could not be created.
    #[error("creating the database folder {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A partner the caller had in hand is not in the database (partners are never deleted,
    /// so this is a database edited by hand).
    #[error("partner {0} is not in the database")]
    PartnerNotFound(Uuid),
}

impl StoreError {
    /// The database cannot be reached now (down, restarting, refusing connections, or no
    /// connection free within the pool's wait): the same request may succeed later.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Db(err) = self else {
            return false;
        };
        if matches!(err, DbErr::ConnectionAcquire(_)) {
            return true;
        }
        match driver_error(err) {
            Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => true,
            Some(sqlx::Error::Database(db)) => db.code().is_some_and(|code| {
                // PostgreSQL: connection exceptions (class 08), the server shutting down or
                // starting (57P01-57P03), no connection slot (53300).
                code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
            }),
            _ => false,
        }
    }

    /// The database's disk is full: SQLite's `SQLITE_FULL`, PostgreSQL's `disk_full`
    /// (53100). Nothing was written; it may succeed once space is freed.
    pub fn is_full(&self) -> bool {
        let StoreError::Db(err) = self else {
            return false;
        };
        let Some(sqlx::Error::Database(db)) = driver_error(err) else {
            return false;
        };
        let Some(code) = db.code() else {
            return false;
        };
        const SQLITE_FULL: i32 = 13;
        match db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
            // An extended result code: the primary code is its low byte.
            Some(_) => code.parse::<i32>().is_ok_and(|c| c & 0xff == SQLITE_FULL),
            None => code == "53100",
        }
    }
}

/// The driver's error inside a database error, if it came from the driver.
fn driver_error(err: &DbErr) -> Option<&sqlx::Error> {
    match err {
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

/// When a lease taken at `now` ends.
pub(crate) fn lease_end(now: DateTime<Utc>, lease_for: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(lease_for)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[derive(Clone, Debug)]
pub struct Db {
    read: DatabaseConnection,
    write: DatabaseConnection,
    clock: Arc<DbClock>,
}

/// How long a reading of PostgreSQL's clock is trusted before it is read again.
const CLOCK_REFRESH: Duration = Duration::from_secs(30);

/// The database's clock, which leases and due times are compared against: nodes' clocks may
/// drift apart, the database has one. PostgreSQL's is read at most every [`CLOCK_REFRESH`]
/// and kept as an offset from this node's clock; SQLite lives on this node, so its clock is
/// this node's.
#[derive(Debug, Default)]
struct DbClock {
    /// (database time minus local time, when it was measured).
    offset: Mutex<Option<(chrono::Duration, Instant)>>,
}

impl Db {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            create_sqlite_parent(url)?;
            let sqlite = |max: u32| {
                let mut options = ConnectOptions::new(url.to_string());
                options
                    .max_connections(max)
                    .min_connections(1)
                    .sqlx_logging(false)
                    .map_sqlx_sqlite_opts(|o: SqliteConnectOptions| {
                        o.journal_mode(SqliteJournalMode::Wal)
                            .synchronous(SqliteSynchronous::Normal)
                            .busy_timeout(Duration::from_secs(10))
                            .foreign_keys(true)
                            .create_if_missing(true)
                    })
                    .map_sqlx_sqlite_pool_opts(|pool| {
                        pool.after_release(|conn, _| {
                            Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
                        })
                    });
                options
            };
            // A connection still in a transaction when it comes back to the pool is closed.
            // A COMMIT that fails for a full disk makes SQLite roll back by itself; the
            // driver's own ROLLBACK then fails and it keeps counting the transaction as open,
            // so it would make each later transaction a savepoint inside one that is never
            // committed, and every later write would be lost. (A transaction dropped without
            // its end may be closed too, harmlessly: its rollback is queued behind.)
            let write = Database::connect(sqlite(1)).await?;
            let read = Database::connect(sqlite(max_connections)).await?;
            Ok(Self {
                read,
                write,
                clock: Arc::default(),
            })
        } else {
            let mut options = ConnectOptions::new(url.to_string());
            options
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .sqlx_logging(false);
            let pool = Database::connect(options).await?;
            Ok(Self {
                read: pool.clone(),
                write: pool,
                clock: Arc::default(),
            })
        }
    }

    /// The connection for reads; on SQLite it never blocks the writer.
    pub fn reader(&self) -> &DatabaseConnection {
        &self.read
    }

    /// The connection for writes; on SQLite the single writer.
    pub fn writer(&self) -> &DatabaseConnection {
        &self.write
    }

    /// A transaction on the writer that holds the write lock from its start: on SQLite
    /// `BEGIN IMMEDIATE`, so reads inside it (a count before an insert) cannot be overtaken
    /// by another writer, in this process or another; on PostgreSQL a plain `BEGIN` (lock
    /// what the reads decide on, e.g. [`partners::lock_for_update`]).
    pub async fn begin_write(&self) -> Result<DatabaseTransaction, StoreError> {
        Ok(self
            .write
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await?)
    }

    /// The database's current time (see [`DbClock`]). When PostgreSQL cannot be read, the
    /// last known offset is kept (or none, at first), so callers always get a time.
    pub async fn now(&self) -> DateTime<Utc> {
        if !self.is_postgres() {
            return Utc::now();
        }
        let known = *self.clock.offset.lock().expect("never poisoned");
        let offset = match known {
            Some((offset, at)) if at.elapsed() < CLOCK_REFRESH => offset,
            _ => match self.read_clock_offset().await {
                Ok(offset) => {
                    *self.clock.offset.lock().expect("never poisoned") =
                        Some((offset, Instant::now()));
                    offset
                }
                Err(err) => {
                    tracing::debug!(error = %err, "reading the database clock failed");
                    // Kept as if read now, so callers do not each wait on a database
                    // that is down; it is read again after CLOCK_REFRESH.
                    let offset = known.map(|(offset, _)| offset).unwrap_or_default();
                    *self.clock.offset.lock().expect("never poisoned") =
                        Some((offset, Instant::now()));
                    offset
                }
            },
        };
        Utc::now() + offset
    }

    /// PostgreSQL's clock minus this node's, taken at the middle of the round trip.
    async fn read_clock_offset(&self) -> Result<chrono::Duration, StoreError> {
        let before = Utc::now();
        let row = self
            .read
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT clock_timestamp() AS now",
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("clock_timestamp()".into()))?;
        let database: DateTime<Utc> = row.try_get("", "now")?;
        let after = Utc::now();
        Ok(database - (before + (after - before) / 2))
    }

    pub fn is_postgres(&self) -> bool {
        self.backend() == DbBackend::Postgres
    }

    pub fn backend(&self) -> DbBackend {
        self.write.get_database_backend()
    }

    /// Applies pending migrations and returns how many it applied. On PostgreSQL they run in
    /// one transaction under an advisory lock: nodes that start together wait for the first,
    /// then find nothing to do, and a release's migrations apply all or not at all (so they
    /// must be transactional: no `CREATE INDEX CONCURRENTLY`).
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        if !self.is_postgres() {
            let pending = pending_migrations(&self.write).await?.len();
            if pending > 0 {
                migration::Migrator::up(&self.write, None).await?;
            }
            return Ok(pending);
        }
        let txn = self.write.begin().await?;
        lock_for_transaction(&txn, AdvisoryLock::Migrations).await?;
        let pending = pending_migrations(&txn).await?.len();
        if pending > 0 {
            migration::Migrator::up(&txn, None).await?;
        }
        txn.commit().await?;
        Ok(pending)
    }

    /// Fails unless every migration this build knows has been applied. Reads only.
    pub async fn check_migrated(&self) -> Result<(), StoreError> {
        match pending_migrations(&self.read).await?.len() {
            0 => Ok(()),
            count => Err(StoreError::MigrationsPending { count }),
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read.ping().await?;
        Ok(())
    }

    pub async fn close(self) {
        let _ = self.read.close().await;
        let _ = self.write.close().await;
    }
}

/// The migrations this build knows that the database has not applied, read without writing.
/// Versions the database has and this build lacks (a newer release's) are ignored, so the
/// previous release still starts on the next one's schema, during a roll or after a rollback.
async fn pending_migrations(conn: &impl ConnectionTrait) -> Result<Vec<String>, StoreError> {
    let backend = conn.get_database_backend();
    let table_exists = match backend {
        DbBackend::Postgres => "SELECT to_regclass('seaql_migrations') IS NOT NULL AS present",
        _ => {
            "SELECT EXISTS (SELECT 1 FROM sqlite_master \
             WHERE type = 'table' AND name = 'seaql_migrations') AS present"
        }
    };
    let present = match conn
        .query_one_raw(Statement::from_string(backend, table_exists))
        .await?
    {
        Some(row) => row.try_get::<bool>("", "present")?,
        None => false,
    };
    let mut applied = HashSet::new();
    if present {
        let rows = conn
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT version FROM seaql_migrations",
            ))
            .await?;
        for row in rows {
            applied.insert(row.try_get::<String>("", "version")?);
        }
    }
    Ok(migration::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_string())
        .filter(|name| !applied.contains(name))
        .collect())
}

/// PostgreSQL advisory locks that serialise one-off work across nodes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AdvisoryLock {
    Migrations,
    FirstPartner,
}

impl AdvisoryLock {
    /// Keys in a range of their own: "plat" in ASCII, then the lock's number.
    fn key(self) -> i64 {
        const NAMESPACE: i64 = 0x706c_6174 << 32;
        NAMESPACE
            | match self {
                Self::Migrations => 1,
                Self::FirstPartner => 2,
            }
    }
}

/// Takes `lock` until the transaction ends (PostgreSQL only).
pub(crate) async fn lock_for_transaction(
    txn: &DatabaseTransaction,
    lock: AdvisoryLock,
) -> Result<(), StoreError> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [lock.key().into()],
    ))
    .await?;
    Ok(())
}

fn create_sqlite_parent(url: &str) -> Result<(), StoreError> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn setup_failures_say_which_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let url = format!("sqlite://{}/db/platescore.db", file.display());
        match Db::connect(&url, 1).await {
            Err(StoreError::CreateDir { path, .. }) => assert_eq!(path, file.join("db")),
            other => panic!("{other:?}"),
        }

        let url = format!("sqlite://{}/platescore.db", dir.path().display());
        let db = Db::connect(&url, 1).await.unwrap();
        let all = migration::Migrator::migrations().len();
        match db.check_migrated().await {
            Err(StoreError::MigrationsPending { count }) => assert_eq!(count, all),
            other => panic!("{other:?}"),
        }
        assert_eq!(db.migrate().await.unwrap(), all);
        db.check_migrated().await.unwrap();
    }

    #[tokio::test]
    async fn a_full_database_and_a_closed_pool_say_which_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/platescore.db", dir.path().display());
        let db = Db::connect(&url, 1).await.unwrap();
        let run = |sql: &'static str| db.writer().execute_unprepared(sql);
        run("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
            .await
            .unwrap();
        let taken = run("INSERT INTO t (id) VALUES (1)").await.unwrap();
        assert_eq!(taken.rows_affected(), 1);
        // A clash is the caller's doing, neither an outage nor a full disk.
        let clash = StoreError::from(run("INSERT INTO t (id) VALUES (1)").await.unwrap_err());
        assert!(!clash.is_full() && !clash.is_unavailable(), "{clash}");

        // SQLite's own cap on the file's size fails writes as a full disk would.
        run("PRAGMA max_page_count = 8").await.unwrap();
        let full = StoreError::from(
            run("INSERT INTO t (b) VALUES (zeroblob(1000000))")
                .await
                .unwrap_err(),
        );
        assert!(full.is_full() && !full.is_unavailable(), "{full}");

        let closed = db.clone();
        closed.close().await;
        let gone = StoreError::from(db.reader().ping().await.unwrap_err());
        assert!(gone.is_unavailable() && !gone.is_full(), "{gone}");
    }
}
