//! Scheduled work: the daily reconciliation. tokio-cron-scheduler runs it, but its cron
//! jobs keep the timezone as the UTC offset of the day they were created, so they drift by
//! an hour across DST. Instead each slot is computed here in the IANA timezone (croner over
//! chrono-tz, DST-aware) and registered as a one-shot job, which schedules the next slot
//! when it has run.

pub mod reconcile;

use std::{str::FromStr, sync::Arc};

use chrono::{DateTime, Timelike, Utc};
use croner::{parser::CronParser, Cron};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

pub use reconcile::{ReconcileSettings, Reconciler};

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
}

/// Runs reconciliation at every slot of `schedule` until `shutdown`. Every node may run
/// this: the slot row in the database lets exactly one of them do the work.
pub async fn start(
    reconciler: Arc<Reconciler>,
    schedule: Schedule,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut scheduler = JobScheduler::new().await?;
    register_next(&scheduler, reconciler, schedule).await?;
    scheduler.start().await?;
    tokio::spawn(async move {
        shutdown.cancelled().await;
        if let Err(err) = scheduler.shutdown().await {
            tracing::debug!(error = %err, "stopping the scheduler");
        }
    });
    Ok(())
}

fn register_next(
    scheduler: &JobScheduler,
    reconciler: Arc<Reconciler>,
    schedule: Schedule,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + '_>> {
    Box::pin(async move {
        let slot = schedule
            .next_after(Utc::now())
            .ok_or_else(|| anyhow::anyhow!("the reconcile schedule never fires"))?;
        let wait = (slot - Utc::now()).to_std().unwrap_or_default();
        tracing::info!(%slot, "next reconciliation");
        let job = Job::new_one_shot_at_instant_async(
            std::time::Instant::now() + wait,
            move |_id, scheduler| {
                let reconciler = reconciler.clone();
                let schedule = schedule.clone();
                Box::pin(async move {
                    match reconciler.run_slot(slot, "schedule", Utc::now()).await {
                        Ok(Some(counts)) => tracing::info!(%slot, ?counts, "reconciliation done"),
                        Ok(None) => tracing::info!(%slot, "another node ran this reconciliation"),
                        Err(err) => tracing::error!(%slot, error = %err, "reconciliation failed"),
                    }
                    if let Err(err) = register_next(&scheduler, reconciler, schedule).await {
                        tracing::error!(error = %err, "could not schedule the next reconciliation");
                    }
                })
            },
        )?;
        scheduler.add(job).await?;
        Ok(())
    })
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
    fn bad_expressions_and_zones_are_refused() {
        assert!(Schedule::parse("0 3 * * *", "UTC").is_err());
        assert!(Schedule::parse("0 0 25 * * *", "UTC").is_err());
        assert!(Schedule::parse("0 0 3 * * *", "Mars/Olympus").is_err());
    }
}
