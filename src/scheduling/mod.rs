//! Scheduled work: the daily reconciliation. Each slot is computed in the IANA timezone
//! (croner over chrono-tz, DST-aware: cron libraries that keep a fixed UTC offset, such as
//! tokio-cron-scheduler's cron jobs, drift by an hour across DST), and each worker node
//! sleeps until it, by the database's clock, then sees the slot through: runs it, or
//! watches the node that does and takes over if that node's lease lapses.

pub mod reconcile;

use std::{str::FromStr, sync::Arc, time::Duration};

use chrono::{DateTime, Timelike, Utc};
use croner::{parser::CronParser, Cron};
use tokio_util::sync::CancellationToken;

pub use reconcile::{ReconcileError, ReconcileSettings, Reconciler, SlotOutcome};

use crate::store::{reconcile_runs, Db, StoreError};

/// A 6-field cron expression (seconds first) read in an IANA timezone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    timezone: chrono_tz::Tz,
}

impl Schedule {
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, String> {
        if expression.split_whitespace().count() != 6 {
            return Err(format!(
                "`{expression}`: a cron expression here has 6 fields, seconds first (`0 0 3 * * *`)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(expression)
            .map_err(|e| format!("`{expression}`: {e}"))?;
        let timezone = chrono_tz::Tz::from_str(timezone)
            .map_err(|_| format!("`{timezone}` is not an IANA timezone such as Europe/Berlin"))?;
        Ok(Self { cron, timezone })
    }

    /// The first slot strictly after `after`, in whole seconds (so every node computes the
    /// same instant for a slot, which is what makes the slot row unique).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = after.with_nanosecond(0)?;
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.timezone), false)
            .ok()
            .map(|local| local.with_timezone(&Utc))
    }

    /// The last slot at or before `at`: the one that is due then.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let at = at.with_nanosecond(0)?;
        self.cron
            .find_previous_occurrence(&at.with_timezone(&self.timezone), true)
            .ok()
            .map(|local| local.with_timezone(&Utc))
    }
}

/// The longest a node sleeps before it reads the clock again, so a sleep follows the
/// database's clock rather than drifting with this node's.
const MAX_NAP: Duration = Duration::from_secs(60);

/// Runs the reconciliation at every slot of `schedule` until `shutdown`. Every worker node
/// runs this; the slot's row in the database lets exactly one of them run each slot. At
/// start, the latest slot is caught up when no node ran it ([`slot_to_catch_up`]). At
/// shutdown a run in progress stops and releases its slot, which another node takes over
/// at once (or, with no other node up, this one at its next start).
pub async fn run(reconciler: Arc<Reconciler>, schedule: Schedule, shutdown: CancellationToken) {
    let db = reconciler.db().clone();
    let started = db.now().await;
    let mut handled = schedule.latest_at_or_before(started);
    match slot_to_catch_up(&db, &schedule, started).await {
        Ok(Some(slot)) => {
            tracing::info!(%slot, "catching up the latest reconciliation, which no node ran");
            see_slot_through(&reconciler, &schedule, slot, &shutdown).await;
        }
        Ok(None) => {}
        Err(err) => tracing::error!(error = %err, "checking for a missed reconciliation"),
    }
    while !shutdown.is_cancelled() {
        let now = db.now().await;
        let slot = match schedule.latest_at_or_before(now) {
            // Due while this node was busy with the one before: run it now.
            Some(due) if handled.is_none_or(|h| due > h) => due,
            _ => match schedule.next_after(now) {
                Some(next) => next,
                None => {
                    tracing::error!("the reconcile schedule never fires again");
                    return;
                }
            },
        };
        tracing::info!(%slot, "next reconciliation");
        if !sleep_until(&db, slot, &shutdown).await {
            return;
        }
        see_slot_through(&reconciler, &schedule, slot, &shutdown).await;
        handled = Some(slot);
    }
}

/// The slot to catch up at start, if any: the latest slot at or before `now` when its run
/// is unfinished (its node died, or stopped) or absent. Only the latest: each run handles
/// everything stale up to its own time, so earlier missed slots would find nothing more to
/// do. Absent counts as missed only when an earlier run is on record: a new installation
/// missed nothing, and a manual run after the slot has done its work.
pub async fn slot_to_catch_up(
    db: &Db,
    schedule: &Schedule,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let Some(latest) = schedule.latest_at_or_before(now) else {
        return Ok(None);
    };
    if let Some(run) = reconcile_runs::find_slot(db, latest).await? {
        return Ok(run.finished_at.is_none().then_some(latest));
    }
    let newest = reconcile_runs::list(db, 1).await?.into_iter().next();
    Ok(newest.filter(|run| run.slot < latest).map(|_| latest))
}

/// Sees `slot` through on this node: runs it, or, while another node holds it, waits for
/// that node's lease and takes over if it lapses. Gives up when the slot after it is due
/// (that run covers whatever this one left) or at shutdown.
async fn see_slot_through(
    reconciler: &Reconciler,
    schedule: &Schedule,
    slot: DateTime<Utc>,
    shutdown: &CancellationToken,
) {
    let db = reconciler.db();
    let next_slot = schedule.next_after(slot);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let now = db.now().await;
        if next_slot.is_some_and(|next| now >= next) {
            tracing::warn!(%slot, "the next reconciliation is due; no longer seeing this one through");
            return;
        }
        let check_again = match reconciler.run_slot(slot, "schedule", now, shutdown).await {
            Ok(SlotOutcome::Ran {
                counts,
                error: None,
                taken_over,
            }) => {
                tracing::info!(%slot, ?counts, taken_over, "reconciliation done");
                return;
            }
            Ok(SlotOutcome::Ran {
                error: Some(err), ..
            }) => {
                tracing::error!(%slot, error = %err, "reconciliation failed");
                return;
            }
            Ok(SlotOutcome::Finished) => {
                tracing::info!(%slot, "reconciliation finished (by another node)");
                return;
            }
            Ok(SlotOutcome::Released) => {
                tracing::info!(%slot, "shutting down: the reconciliation is left to another node");
                return;
            }
            Ok(SlotOutcome::LeaseLost) => return,
            // Another node runs it: look again when its lease would lapse.
            Ok(SlotOutcome::Held { lease_expires_at }) => {
                lease_expires_at + chrono::Duration::seconds(1)
            }
            Err(err) => {
                tracing::error!(%slot, error = %err, "claiming or recording the reconciliation; trying again");
                now + chrono::Duration::from_std(reconciler.settings().lease)
                    .unwrap_or(chrono::Duration::seconds(60))
            }
        };
        let wake = next_slot.map_or(check_again, |next| check_again.min(next));
        if !sleep_until(db, wake, shutdown).await {
            return;
        }
    }
}

/// Sleeps until `at` by the database's clock. False when `shutdown` came first.
async fn sleep_until(db: &Db, at: DateTime<Utc>, shutdown: &CancellationToken) -> bool {
    loop {
        let Ok(left) = (at - db.now().await).to_std() else {
            return true;
        };
        if left.is_zero() {
            return true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(left.min(MAX_NAP)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn daily_three_am_follows_dst_in_berlin() {
        let schedule = Schedule::parse("0 0 3 * * *", "Europe/Berlin").unwrap();
        // Winter (UTC+1): 03:00 local is 02:00Z.
        assert_eq!(
            schedule.next_after(utc("2026-03-27T12:00:00Z")),
            Some(utc("2026-03-28T02:00:00Z"))
        );
        // The night clocks go forward (29 March 2026, 02:00 → 03:00): 03:00 is 01:00Z.
        assert_eq!(
            schedule.next_after(utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        // Summer (UTC+2).
        assert_eq!(
            schedule.next_after(utc("2026-07-01T12:00:00Z")),
            Some(utc("2026-07-02T01:00:00Z"))
        );
        // The night clocks go back (25 October 2026, 03:00 → 02:00): 03:00 happens once, at 02:00Z.
        assert_eq!(
            schedule.next_after(utc("2026-10-24T12:00:00Z")),
            Some(utc("2026-10-25T02:00:00Z"))
        );
        assert_eq!(
            schedule.next_after(utc("2026-10-25T02:00:00Z")),
            Some(utc("2026-10-26T02:00:00Z"))
        );
    }

    #[test]
    fn slots_are_whole_seconds_whatever_the_clock_says() {
        let every_second = Schedule::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(
            every_second.next_after(utc("2026-11-23T16:22:15.397Z")),
            Some(utc("2026-11-23T16:22:16Z"))
        );
        let daily = Schedule::parse("0 0 3 * * *", "UTC").unwrap();
        assert_eq!(
            daily.next_after(utc("2026-11-23T03:00:00.250Z")),
            Some(utc("2026-11-24T03:00:00Z"))
        );
    }

    #[test]
    fn new_york_and_utc() {
        let ny = Schedule::parse("0 0 3 * * *", "America/New_York").unwrap();
        assert_eq!(
            ny.next_after(utc("2026-11-01T00:00:00Z")),
            Some(utc("2026-11-01T08:00:00Z"))
        );
        assert_eq!(
            ny.next_after(utc("2026-11-01T08:00:00Z")),
            Some(utc("2026-11-02T08:00:00Z"))
        );
        let plain = Schedule::parse("0 0 3 * * *", "UTC").unwrap();
        assert_eq!(
            plain.next_after(utc("2026-11-23T03:00:00Z")),
            Some(utc("2026-11-24T03:00:00Z"))
        );
    }

    #[test]
    fn the_latest_slot_is_the_one_due_and_follows_dst() {
        let berlin = Schedule::parse("0 0 3 * * *", "Europe/Berlin").unwrap();
        // Exactly at a slot, that slot is due; a second before, the previous day's.
        let slot = utc("2026-11-24T02:00:00Z");
        assert_eq!(berlin.latest_at_or_before(slot), Some(slot));
        assert_eq!(
            berlin.latest_at_or_before(utc("2026-11-24T02:00:00.750Z")),
            Some(slot)
        );
        assert_eq!(
            berlin.latest_at_or_before(utc("2026-11-24T01:59:59Z")),
            Some(utc("2026-11-23T02:00:00Z"))
        );
        // Across the spring-forward and fall-back nights, as next_after computes them.
        for (at, latest) in [
            ("2026-03-29T12:00:00Z", "2026-03-29T01:00:00Z"),
            ("2026-03-29T00:59:59Z", "2026-03-28T02:00:00Z"),
            ("2026-10-25T12:00:00Z", "2026-10-25T02:00:00Z"),
            ("2026-10-25T01:59:59Z", "2026-10-24T01:00:00Z"),
        ] {
            let latest = utc(latest);
            assert_eq!(berlin.latest_at_or_before(utc(at)), Some(latest), "{at}");
            assert_eq!(
                berlin.next_after(latest - chrono::Duration::seconds(1)),
                Some(latest)
            );
        }
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        assert!(Schedule::parse("0 3 * * *", "UTC").is_err());
        assert!(Schedule::parse("0 0 25 * * *", "UTC").is_err());
        assert!(Schedule::parse("0 0 3 * * *", "Mars/Olympus").is_err());
    }
}
