//! Wake-ups for workers, so new work starts at once instead of at the next poll: a
//! `Notify` within the process, and on PostgreSQL `NOTIFY`/`LISTEN` across nodes. Workers
//! still poll (about once a second) in case a wake-up is lost.

use std::{sync::Arc, time::Duration};

use sea_orm::{sqlx::postgres::PgListener, ConnectionTrait};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Db;

const JOBS_CHANNEL: &str = "platescore_jobs";
const DELIVERIES_CHANNEL: &str = "platescore_deliveries";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Jobs,
    Deliveries,
}

impl Work {
    fn channel(self) -> &'static str {
        match self {
            Self::Jobs => JOBS_CHANNEL,
            Self::Deliveries => DELIVERIES_CHANNEL,
        }
    }
}

pub struct Wakeups {
    db: Db,
    jobs: Notify,
    deliveries: Notify,
}

impl Wakeups {
    pub fn new(db: Db) -> Arc<Self> {
        Arc::new(Self {
            db,
            jobs: Notify::new(),
            deliveries: Notify::new(),
        })
    }

    fn notify(&self, work: Work) -> &Notify {
        match work {
            Work::Jobs => &self.jobs,
            Work::Deliveries => &self.deliveries,
        }
    }

    /// Tells this node's workers, and on PostgreSQL every node's, that work is due.
    pub async fn announce(&self, work: Work) {
        self.notify(work).notify_one();
        if self.db.is_postgres() {
            let sql = format!("SELECT pg_notify('{}', '')", work.channel());
            if let Err(err) = self.db.writer().execute_unprepared(&sql).await {
                tracing::debug!(error = %err, "pg_notify failed; workers will poll");
            }
        }
    }

    /// Waits for an announcement, or at most `poll`.
    pub async fn wait(&self, work: Work, poll: Duration) {
        let _ = tokio::time::timeout(poll, self.notify(work).notified()).await;
    }

    /// On PostgreSQL, relays other nodes' announcements to this node's workers until
    /// `shutdown`; reconnects after errors. Does nothing on SQLite (one process).
    pub fn spawn_listener(self: &Arc<Self>, shutdown: CancellationToken) {
        if !self.db.is_postgres() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                if let Err(err) = this.listen(&shutdown).await {
                    tracing::warn!(error = %err, "LISTEN failed; retrying in 1 s");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        });
    }

    async fn listen(&self, shutdown: &CancellationToken) -> Result<(), sea_orm::sqlx::Error> {
        let pool = self.db.writer().get_postgres_connection_pool();
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all([JOBS_CHANNEL, DELIVERIES_CHANNEL])
            .await?;
        loop {
            let notification = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                n = listener.recv() => n?,
            };
            match notification.channel() {
                JOBS_CHANNEL => self.jobs.notify_one(),
                DELIVERIES_CHANNEL => self.deliveries.notify_one(),
                _ => {}
            }
        }
    }
}
