//! Per-partner limits on enqueue: a request rate and a cap on unfinished jobs. Each is the
//! partner's own when set (`platescore partners set-limit`), else the configured default;
//! with neither, there is no limit.
//!
//! The rate is a token bucket per partner (`governor`'s GCRA), held in memory by each API
//! node: a cluster of N API nodes admits up to N times the rate. The cap on jobs queued or
//! in progress is counted in the database when a job is inserted (`store::jobs::insert_within`),
//! so it holds for the whole cluster.

use std::{collections::HashMap, num::NonZeroU32, sync::Mutex, time::Duration};

use entity::partner;
use governor::{
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::{InMemoryState, NotKeyed},
    Quota, RateLimiter,
};
use uuid::Uuid;

use crate::store::partners::LimitOverride;

/// The configured defaults; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitDefaults {
    pub rate_per_second: Option<u32>,
    /// Default: the rate (one second's worth).
    pub burst: Option<u32>,
    pub max_queued_jobs: Option<u32>,
}

/// A request rate: `per_second` on average, and up to `burst` at once after a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePolicy {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl RatePolicy {
    /// Seconds an emptied bucket takes to fill again, rounded up (at least 1).
    pub fn window_seconds(&self) -> u64 {
        u64::from(self.burst.get()).div_ceil(u64::from(self.per_second.get()))
    }

    fn quota(&self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.per_second.get()
    }
}

/// Where a partner's bucket stands after a request was counted (or refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    pub policy: RatePolicy,
    /// Requests that may be made now, without waiting.
    pub remaining: u32,
    /// Until the bucket is full again, rounded up to whole seconds.
    pub full_in_seconds: u64,
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// No rate applies to this partner.
    Unlimited,
    Allowed(RateState),
    /// Over the rate; a request is allowed again in `retry_after_seconds` (at least 1).
    Refused {
        state: RateState,
        retry_after_seconds: u64,
    },
}

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// Bounds memory: buckets are kept per partner that enqueued; partners are few, but if this
/// many ever were, the buckets start over full.
const MAX_BUCKETS: usize = 10_000;

/// The limits of every partner, and this node's rate buckets.
pub struct PartnerLimits<C: Clock = DefaultClock> {
    defaults: LimitDefaults,
    clock: C,
    buckets: Mutex<HashMap<Uuid, (RatePolicy, Bucket<C>)>>,
}

impl PartnerLimits {
    pub fn new(defaults: LimitDefaults) -> Self {
        Self::with_clock(defaults, DefaultClock::default())
    }
}

impl<C: Clock + Clone> PartnerLimits<C> {
    pub fn with_clock(defaults: LimitDefaults, clock: C) -> Self {
        Self {
            defaults,
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The partner's rate: its own, else the default; `None` when unlimited. The burst is the
    /// partner's own, else the configured one, else the rate.
    pub fn rate_policy(&self, partner: &partner::Model) -> Option<RatePolicy> {
        let per_second = match LimitOverride::of(partner.rate_limit_per_second) {
            LimitOverride::Default => self.defaults.rate_per_second,
            LimitOverride::Unlimited => None,
            LimitOverride::Exactly(n) => Some(n),
        }
        .and_then(NonZeroU32::new)?;
        let burst = match LimitOverride::of(partner.rate_limit_burst) {
            LimitOverride::Exactly(n) => Some(n),
            LimitOverride::Default | LimitOverride::Unlimited => self.defaults.burst,
        }
        .and_then(NonZeroU32::new)
        .unwrap_or(per_second);
        Some(RatePolicy { per_second, burst })
    }

    /// The most jobs the partner may have queued or in progress; `None` when unlimited.
    pub fn max_queued_jobs(&self, partner: &partner::Model) -> Option<u32> {
        match LimitOverride::of(partner.max_queued_jobs) {
            LimitOverride::Default => self.defaults.max_queued_jobs,
            LimitOverride::Unlimited => None,
            LimitOverride::Exactly(n) => Some(n),
        }
        .filter(|&n| n > 0)
    }

    /// Counts one request against the partner's rate. A partner whose rate changed gets a
    /// new, full bucket.
    pub fn check_rate(&self, partner: &partner::Model) -> RateDecision {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(policy) = self.rate_policy(partner) else {
            buckets.remove(&partner.id);
            return RateDecision::Unlimited;
        };
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&partner.id) {
            buckets.clear();
        }
        let (current, bucket) = buckets.entry(partner.id).or_insert_with(|| {
            (
                policy,
                RateLimiter::direct_with_clock(policy.quota(), self.clock.clone())
                    .with_middleware::<StateInformationMiddleware>(),
            )
        });
        if *current != policy {
            *current = policy;
            *bucket = RateLimiter::direct_with_clock(policy.quota(), self.clock.clone())
                .with_middleware::<StateInformationMiddleware>();
        }
        let interval = policy.interval();
        match bucket.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                RateDecision::Allowed(RateState {
                    policy,
                    remaining,
                    full_in_seconds: whole_seconds(interval * (policy.burst.get() - remaining)),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                RateDecision::Refused {
                    state: RateState {
                        policy,
                        remaining: 0,
                        full_in_seconds: whole_seconds(wait + interval * (policy.burst.get() - 1)),
                    },
                    retry_after_seconds: whole_seconds(wait).max(1),
                }
            }
        }
    }
}

/// Rounded up: a client that waits this long is not early.
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner(rate: Option<i32>, burst: Option<i32>, queued: Option<i32>) -> partner::Model {
        partner::Model {
            id: Uuid::new_v4(),
            name: "p".into(),
            key_prefix: "psk_abcdefgh".into(),
            key_hash: "0".repeat(64),
            created_at: chrono::Utc::now(),
            revoked_at: None,
            webhook_secret: None,
            is_admin: false,
            previous_key_prefix: None,
            previous_key_hash: None,
            previous_key_expires_at: None,
            rate_limit_per_second: rate,
            rate_limit_burst: burst,
            max_queued_jobs: queued,
        }
    }

    fn policy(per_second: u32, burst: u32) -> Option<RatePolicy> {
        Some(RatePolicy {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        })
    }

    #[test]
    fn a_partners_own_limits_override_the_defaults() {
        let none = PartnerLimits::new(LimitDefaults::default());
        assert_eq!(none.rate_policy(&partner(None, None, None)), None);
        assert_eq!(none.max_queued_jobs(&partner(None, None, None)), None);
        assert_eq!(
            none.rate_policy(&partner(Some(3), None, None)),
            policy(3, 3)
        );
        assert_eq!(none.max_queued_jobs(&partner(None, None, Some(7))), Some(7));

        let defaults = PartnerLimits::new(LimitDefaults {
            rate_per_second: Some(10),
            burst: Some(20),
            max_queued_jobs: Some(100),
        });
        assert_eq!(
            defaults.rate_policy(&partner(None, None, None)),
            policy(10, 20)
        );
        assert_eq!(
            defaults.rate_policy(&partner(Some(2), None, None)),
            policy(2, 20)
        );
        assert_eq!(
            defaults.rate_policy(&partner(Some(2), Some(4), None)),
            policy(2, 4)
        );
        // 0 in a column: no limit for this partner, whatever the default.
        assert_eq!(defaults.rate_policy(&partner(Some(0), None, None)), None);
        assert_eq!(
            defaults.max_queued_jobs(&partner(None, None, Some(0))),
            None
        );
        assert_eq!(
            defaults.max_queued_jobs(&partner(None, None, None)),
            Some(100)
        );
    }

    #[test]
    fn a_bucket_lets_its_burst_through_then_refuses_until_it_refills() {
        let clock = governor::clock::FakeRelativeClock::default();
        let limits = PartnerLimits::with_clock(
            LimitDefaults {
                rate_per_second: Some(1),
                burst: Some(2),
                max_queued_jobs: None,
            },
            clock.clone(),
        );
        let p = partner(None, None, None);
        let other = partner(None, None, None);
        let RateDecision::Allowed(first) = limits.check_rate(&p) else {
            panic!("the first request is allowed");
        };
        assert_eq!((first.remaining, first.full_in_seconds), (1, 1));
        assert!(matches!(limits.check_rate(&p), RateDecision::Allowed(s) if s.remaining == 0));
        let RateDecision::Refused {
            state,
            retry_after_seconds,
        } = limits.check_rate(&p)
        else {
            panic!("the third request at once is refused");
        };
        assert_eq!(state.remaining, 0);
        assert_eq!(retry_after_seconds, 1);
        assert_eq!(state.full_in_seconds, 2);
        assert_eq!(state.policy.window_seconds(), 2);
        clock.advance(Duration::from_millis(400));
        assert!(matches!(
            limits.check_rate(&p),
            RateDecision::Refused {
                retry_after_seconds: 1,
                ..
            }
        ));
        clock.advance(Duration::from_millis(600));
        assert!(matches!(limits.check_rate(&p), RateDecision::Allowed(s) if s.remaining == 0));
        // Each partner has its own bucket.
        assert!(matches!(
            limits.check_rate(&other),
            RateDecision::Allowed(_)
        ));
        // A new limit starts a new, full bucket.
        let raised = partner::Model {
            rate_limit_per_second: Some(5),
            ..p.clone()
        };
        assert!(matches!(limits.check_rate(&raised), RateDecision::Allowed(s) if s.remaining == 1));
    }
}
