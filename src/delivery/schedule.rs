//! When a failed delivery is tried again: a fixed schedule of delays with jitter, and the
//! receiver's `Retry-After` honoured within bounds.

use std::{str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use rand::Rng;

/// Delays before each retry; the first attempt is immediate.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
    /// ± this fraction of each delay, at random, so retries to one receiver spread out.
    jitter: f64,
}

/// Longest `Retry-After` we wait for: beyond it, the schedule applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * 3600);

impl RetrySchedule {
    pub fn new(delays: Vec<Duration>, jitter: f64) -> Self {
        Self {
            delays,
            jitter: jitter.clamp(0.0, 1.0),
        }
    }

    pub fn with_jitter(self, jitter: f64) -> Self {
        Self::new(self.delays, jitter)
    }

    /// Attempts in all: the first plus one per delay.
    pub fn max_attempts(&self) -> usize {
        self.delays.len() + 1
    }

    /// When to try again after `attempts_made` failed attempts; None when they are used up.
    /// A `Retry-After` longer than the scheduled delay (up to 10 h) postpones the retry.
    pub fn next_attempt(
        &self,
        attempts_made: usize,
        retry_after: Option<Duration>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let base = *self.delays.get(attempts_made.checked_sub(1)?)?;
        let factor = if self.jitter > 0.0 {
            rand::rng().random_range(1.0 - self.jitter..=1.0 + self.jitter)
        } else {
            1.0
        };
        let mut delay = base.mul_f64(factor);
        if let Some(asked) = retry_after {
            delay = delay.max(asked.min(MAX_RETRY_AFTER));
        }
        Some(now + chrono::Duration::from_std(delay).unwrap_or_default())
    }
}

impl FromStr for RetrySchedule {
    type Err = String;

    /// Comma-separated durations such as `5s,5m,30m,2h`, with `ms`, `s`, `m` or `h`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let delays = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(delays, 0.0))
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` needs a unit: ms, s, m or h"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "`{text}`: unknown unit `{unit}`; use ms, s, m or h"
        )),
    }
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    (at - now).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svix() -> RetrySchedule {
        "5s,5m,30m,2h,5h,10h,10h"
            .parse::<RetrySchedule>()
            .unwrap()
            .with_jitter(0.2)
    }

    #[test]
    fn retries_follow_the_schedule_within_the_jitter_then_stop() {
        let schedule = svix();
        let now = Utc::now();
        assert_eq!(schedule.max_attempts(), 8);
        let expected = [5, 300, 1800, 7200, 18000, 36000, 36000];
        for (made, secs) in expected.iter().enumerate() {
            for _ in 0..20 {
                let at = schedule.next_attempt(made + 1, None, now).unwrap();
                let delay = (at - now).num_milliseconds() as f64 / 1000.0;
                let secs = *secs as f64;
                assert!(
                    delay >= secs * 0.8 - 0.001 && delay <= secs * 1.2 + 0.001,
                    "retry {made}: {delay}"
                );
            }
        }
        assert_eq!(schedule.next_attempt(8, None, now), None);
    }

    #[test]
    fn retry_after_postpones_within_bounds() {
        let schedule: RetrySchedule = "5s,5m".parse().unwrap();
        let now = Utc::now();
        let at = |ra| schedule.next_attempt(1, ra, now).unwrap() - now;
        assert_eq!(at(None).num_seconds(), 5);
        assert_eq!(at(Some(Duration::from_secs(1))).num_seconds(), 5);
        assert_eq!(at(Some(Duration::from_secs(120))).num_seconds(), 120);
        assert_eq!(at(Some(Duration::from_secs(86400 * 7))).num_hours(), 10);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Mon, 23 Nov 2026 12:01:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
