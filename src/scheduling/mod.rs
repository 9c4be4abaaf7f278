//! Scheduled work: the daily reconciliation. tokio-cron-scheduler fires it, but its cron
//! jobs keep the timezone as the UTC offset of the day they were created, so they drift by
//! an hour across DST. Instead each slot is computed here in the IANA timezone (croner over
//! chrono-tz, DST-aware) and registered as a one-shot job at its instant, by the database's
//! clock. Each job sees its slot through on this node: it runs it, or, while another node
//! holds it, registers a one-shot job for when that node's lease would end, to take over if
//! it lapsed; then it registers the next slot's job.

pub mod reconcile;

use std::{pin::Pin, str::FromStr, sync::Arc, time::Duration};

use chrono::{DateTime, Timelike, Utc};
use croner::{parser::CronParser, Cron};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

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

/// Starts the reconciliation's schedule on this node: every worker node runs one, and the
/// slot's row in the database lets exactly one of them run each slot. The first job is the
/// latest slot when no node ran it ([`slot_to_catch_up`]), at once, or else the next slot.
/// [`SlotScheduler::stopped`] stops it at `shutdown`.
pub async fn start(
    reconciler: Arc<Reconciler>,
    schedule: Schedule,
    shutdown: CancellationToken,
) -> anyhow::Result<SlotScheduler> {
    let scheduler = JobScheduler::new().await?;
    let slots = Arc::new(Slots {
        reconciler,
        schedule,
        shutdown,
        attempts: TaskTracker::new(),
    });
    let db = slots.reconciler.db();
    let started = db.now().await;
    let first = match slot_to_catch_up(db, &slots.schedule, started).await {
        Ok(Some(slot)) => {
            tracing::info!(%slot, "catching up the latest reconciliation, which no node ran");
            Some(Wake { slot, at: started })
        }
        Ok(None) => slots.next_slot(started),
        Err(err) => {
            tracing::error!(error = %err, "checking for a missed reconciliation");
            slots.next_slot(started)
        }
    };
    if let Some(first) = first {
        slots.register(&scheduler, first).await?;
    }
    scheduler.start().await?;
    Ok(SlotScheduler { scheduler, slots })
}

/// The reconciliation's schedule on a node, from [`start`].
pub struct SlotScheduler {
    scheduler: JobScheduler,
    slots: Arc<Slots>,
}

impl SlotScheduler {
    /// Waits for shutdown, then stops the scheduler (dropping the jobs yet to fire) and
    /// waits for an attempt in progress, which stops its run and releases the slot for
    /// another node to take over (or this one, at its next start).
    pub async fn stopped(mut self) {
        self.slots.shutdown.cancelled().await;
        if let Err(err) = self.scheduler.shutdown().await {
            tracing::debug!(error = %err, "stopping the scheduler");
        }
        self.slots.attempts.close();
        self.slots.attempts.wait().await;
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

/// A one-shot job: attempt `slot` at `at` (by the database's clock): the slot itself, or
/// when the lease of the node holding it would end.
#[derive(Debug, Clone, Copy)]
struct Wake {
    slot: DateTime<Utc>,
    at: DateTime<Utc>,
}

struct Slots {
    reconciler: Arc<Reconciler>,
    schedule: Schedule,
    shutdown: CancellationToken,
    /// Attempts in progress, which shutdown waits for: the scheduler does not.
    attempts: TaskTracker,
}

type Registering<'a> = Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + 'a>>;

impl Slots {
    /// Registers `wake` as a one-shot job, which registers the job after it when it has run.
    fn register<'a>(
        self: &'a Arc<Self>,
        scheduler: &'a JobScheduler,
        wake: Wake,
    ) -> Registering<'a> {
        Box::pin(async move {
            let db_now = self.reconciler.db().now().await;
            let wait = scheduler_wait(wake.at, db_now, Utc::now());
            let slots = self.clone();
            let job = Job::new_one_shot_at_instant_async(
                std::time::Instant::now() + wait,
                move |_id, scheduler| {
                    let slots = slots.clone();
                    Box::pin(async move { slots.fire(scheduler, wake).await })
                },
            )?;
            scheduler.add(job).await?;
            Ok(())
        })
    }

    /// A job's run: attempts its slot, then registers what comes next unless the node is
    /// stopping. Tracked before it looks at `shutdown`, so [`SlotScheduler::stopped`] either
    /// waits for it or it does nothing.
    async fn fire(self: Arc<Self>, scheduler: JobScheduler, wake: Wake) {
        let _attempting = self.attempts.token();
        if self.shutdown.is_cancelled() {
            return;
        }
        let Some(next) = self.attempt(wake).await else {
            return;
        };
        if self.shutdown.is_cancelled() {
            return;
        }
        if next.slot != wake.slot {
            tracing::info!(slot = %next.slot, "next reconciliation");
        }
        if let Err(err) = self.register(&scheduler, next).await {
            tracing::error!(error = %err, "could not schedule the next reconciliation");
        }
    }

    /// One attempt at `wake.slot` on this node; returns the job to register next. Gives up
    /// on the slot when the slot after it is due (that run covers whatever this one left).
    async fn attempt(&self, wake: Wake) -> Option<Wake> {
        let Wake { slot, at } = wake;
        let db = self.reconciler.db();
        let now = db.now().await;
        if now < at {
            // Fired early by the database's clock (this node's clock differs, or moved).
            return Some(wake);
        }
        let next_slot = self.schedule.next_after(slot);
        if next_slot.is_some_and(|next| now >= next) {
            tracing::warn!(%slot, "the next reconciliation is due; no longer seeing this one through");
            return self.after(slot).await;
        }
        let check_again = match self
            .reconciler
            .run_slot(slot, "schedule", now, &self.shutdown)
            .await
        {
            Ok(SlotOutcome::Ran {
                counts,
                error: None,
                taken_over,
            }) => {
                tracing::info!(%slot, ?counts, taken_over, "reconciliation done");
                return self.after(slot).await;
            }
            Ok(SlotOutcome::Ran {
                error: Some(err), ..
            }) => {
                tracing::error!(%slot, error = %err, "reconciliation failed");
                return self.after(slot).await;
            }
            Ok(SlotOutcome::Finished) => {
                tracing::info!(%slot, "reconciliation finished (by another node)");
                return self.after(slot).await;
            }
            Ok(SlotOutcome::Released) => {
                tracing::info!(%slot, "shutting down: the reconciliation is left to another node");
                return None;
            }
            Ok(SlotOutcome::LeaseLost) => return self.after(slot).await,
            // Another node runs it: look again when its lease would lapse.
            Ok(SlotOutcome::Held { lease_expires_at }) => {
                lease_expires_at + chrono::Duration::seconds(1)
            }
            Err(err) => {
                tracing::error!(%slot, error = %err, "claiming or recording the reconciliation; trying again");
                now + chrono::Duration::from_std(self.reconciler.settings().lease)
                    .unwrap_or(chrono::Duration::seconds(60))
            }
        };
        Some(Wake {
            slot,
            at: next_slot.map_or(check_again, |next| check_again.min(next)),
        })
    }

    /// The job after `handled`: a slot that fell due meanwhile, at once, or the next slot.
    async fn after(&self, handled: DateTime<Utc>) -> Option<Wake> {
        let now = self.reconciler.db().now().await;
        match self.schedule.latest_at_or_before(now) {
            Some(due) if due > handled => Some(Wake { slot: due, at: now }),
            _ => self.next_slot(now),
        }
    }

    fn next_slot(&self, now: DateTime<Utc>) -> Option<Wake> {
        let Some(slot) = self.schedule.next_after(now) else {
            tracing::error!("the reconcile schedule never fires again");
            return None;
        };
        Some(Wake { slot, at: slot })
    }
}

/// How long from now to tell tokio-cron-scheduler to wait for a job due at `at` by the
/// database's clock (`db_now`, read just before this node's `local_now`). The scheduler
/// keeps a job's time as whole seconds of this node's clock, truncating both the clock and
/// the wait, and looks every half second; so the due time is rounded up to the whole second
/// and half a second of slack absorbs its truncation of the wait. A job thus never fires
/// before `at` while the clocks agree; one that does anyway is registered again.
fn scheduler_wait(at: DateTime<Utc>, db_now: DateTime<Utc>, local_now: DateTime<Utc>) -> Duration {
    // Whole milliseconds, so the microseconds between reading the two clocks do not push a
    // whole-second slot into the next second.
    let due_ms = (local_now + (at - db_now)).timestamp_millis();
    let due_secs = due_ms.div_euclid(1000) + i64::from(due_ms.rem_euclid(1000) > 0);
    let whole_seconds = u64::try_from(due_secs - local_now.timestamp()).unwrap_or(0);
    Duration::from_secs(whole_seconds) + Duration::from_millis(500)
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
    fn the_scheduler_is_never_told_a_time_before_the_slot() {
        let slot = utc("2026-11-24T02:00:00Z");
        let wait =
            |at, db_now: &str, local_now: &str| scheduler_wait(at, utc(db_now), utc(local_now));
        // The scheduler's own arithmetic: its clock's whole second plus the wait's.
        let fires_at = |at, db_now: &str, local_now: &str| {
            utc(local_now).timestamp() + wait(at, db_now, local_now).as_secs() as i64
        };
        // Just before the slot: the whole second after, not the one before.
        let (db, local) = ("2026-11-24T01:59:59.700Z", "2026-11-24T01:59:59.700010Z");
        assert_eq!(wait(slot, db, local), Duration::from_millis(1500));
        assert_eq!(fires_at(slot, db, local), slot.timestamp());
        // Microseconds between reading the two clocks do not cost a second.
        let (db, local) = ("2026-11-24T01:59:50Z", "2026-11-24T01:59:50.000040Z");
        assert_eq!(fires_at(slot, db, local), slot.timestamp());
        // A lease that ends mid-second: the next whole second.
        let lease_end = utc("2026-11-24T02:00:41.250Z");
        assert_eq!(
            fires_at(lease_end, "2026-11-24T02:00:05Z", "2026-11-24T02:00:05Z"),
            utc("2026-11-24T02:00:42Z").timestamp()
        );
        // The database's clock 2 s ahead of this node's: the slot by the database's clock.
        assert_eq!(
            fires_at(slot, "2026-11-24T01:59:50Z", "2026-11-24T01:59:48Z"),
            slot.timestamp() - 2
        );
        // Due already: at the scheduler's next look.
        let late = "2026-11-24T02:00:03.400Z";
        assert_eq!(wait(slot, late, late), Duration::from_millis(500));
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        assert!(Schedule::parse("0 3 * * *", "UTC").is_err());
        assert!(Schedule::parse("0 0 25 * * *", "UTC").is_err());
        assert!(Schedule::parse("0 0 3 * * *", "Mars/Olympus").is_err());
    }
}
