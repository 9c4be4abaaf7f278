//! Fair queues. Every queued job and every pending delivery carries a `turn`, and claims take
//! the lowest turn first. A partner's new item gets the turn after
//! `max(now serving, the partner's last waiting turn)`, where "now serving" is the highest
//! turn taken so far (being worked on, or finished: it never falls back when the queue goes
//! idle, so a partner's old retry waiting for its time cannot put the partner's new work
//! behind everyone's). A partner's backlog therefore spreads over consecutive turns ahead
//! of the workers, and another partner's first item lands on the next turn: it waits about
//! one claim, not behind the backlog. This is start-time fair queueing with equal weights
//! (round-robin between the partners with work waiting), with no per-partner table, and it
//! keeps each claim one range scan of one index.
//!
//! Items that go back to the queue (a retry, a released or rescued job) keep their turn, so
//! once due they are taken before newer work. Two items given the same turn at once (racing
//! enqueues) are taken in due-time order.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use super::{leased::LeasedTable, StoreError};

/// The turn for a partner's next item: lookups at the ends of index ranges, one per status
/// taken (working, finished) and one for the partner's waiting items.
pub(crate) async fn next_turn<C: ConnectionTrait>(
    conn: &C,
    queue: &LeasedTable,
    partner_id: Uuid,
) -> Result<i64, StoreError> {
    let LeasedTable {
        name: table,
        waiting,
        working,
        finished: [done, failed],
        ..
    } = queue;
    let backend = conn.get_database_backend();
    let greatest = match backend {
        DbBackend::Postgres => "GREATEST",
        _ => "MAX",
    };
    let sql = format!(
        "SELECT {greatest}(
             COALESCE((SELECT MAX(turn) FROM {table} WHERE status = '{working}'), 0),
             COALESCE((SELECT MAX(turn) FROM {table} WHERE status = '{done}'), 0),
             COALESCE((SELECT MAX(turn) FROM {table} WHERE status = '{failed}'), 0),
             COALESCE((SELECT MAX(turn) FROM {table}
                       WHERE partner_id = $1 AND status = '{waiting}'), 0)) + 1 AS turn"
    );
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [partner_id.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<i64>("", "turn")?,
        None => 1,
    })
}

/// Hands out turns for many items written together (one group commit): each partner's
/// next turn is read once, then counted up.
pub(crate) struct Turns {
    queue: &'static LeasedTable,
    next: HashMap<Uuid, i64>,
}

impl Turns {
    pub(crate) fn new(queue: &'static LeasedTable) -> Self {
        Self {
            queue,
            next: HashMap::new(),
        }
    }

    pub(crate) async fn take<C: ConnectionTrait>(
        &mut self,
        conn: &C,
        partner_id: Uuid,
    ) -> Result<i64, StoreError> {
        let turn = match self.next.get(&partner_id) {
            Some(&turn) => turn,
            None => next_turn(conn, self.queue, partner_id).await?,
        };
        self.next.insert(partner_id, turn + 1);
        Ok(turn)
    }
}
