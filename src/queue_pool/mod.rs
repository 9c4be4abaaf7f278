//! The worker pool loop over a leased queue, shared by the job and the delivery workers: wait
//! for a free slot, rescue expired leases now and then, claim up to as many items as there
//! are free slots, work on each in a task of its own, and when nothing was due wait for a
//! wake-up, the poll interval or, where its own limits held items back, an item in flight
//! to finish. On shutdown it stops claiming and drains the items in
//! flight. What an item is and how it is claimed and worked on is the [`LeasedWork`]'s.

mod group_commit;

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

pub use group_commit::{CommitBatch, GroupCommit, Unrecorded};

/// A queue a pool works on.
pub trait LeasedWork: Send + Sync + 'static {
    /// A claimed item, ready to be worked on.
    type Item: Send + 'static;

    /// Puts items whose lease expired (their worker died) back; logs its own errors.
    fn rescue(&self) -> impl Future<Output = ()> + Send;

    /// Claims up to `limit` items; none when claiming fails (logged). It may put back
    /// claimed items it cannot take now (the delivery worker's per-receiver cap).
    fn claim(&self, limit: usize) -> impl Future<Output = Vec<Self::Item>> + Send;

    /// Works on one item. `release` fires when the shutdown grace period is over: the item
    /// goes back to the queue untouched.
    fn process(
        self: Arc<Self>,
        item: Self::Item,
        release: CancellationToken,
    ) -> impl Future<Output = ()> + Send;

    /// Waits until work may be due: a wake-up, or the poll interval.
    fn idle(&self) -> impl Future<Output = ()> + Send;

    /// Whether a claim may have left due items behind for a limit of this pool's own (the
    /// delivery worker's per-receiver cap). Then an item in flight finishing ends the wait
    /// too: it may have freed what held them back.
    fn holds_back(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Items worked on at once.
    pub concurrency: usize,
    /// How often expired leases are rescued.
    pub rescue_every: Duration,
    /// On shutdown, how long items in flight may run before `release` fires; None: as long
    /// as they take.
    pub shutdown_grace: Option<Duration>,
}

/// Claims and works on items until `shutdown`; then stops claiming and waits for the items
/// in flight (releasing them once the grace period is over).
pub async fn run<W: LeasedWork>(work: Arc<W>, settings: PoolSettings, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let mut in_flight = JoinSet::new();
    let release = CancellationToken::new();
    let mut last_rescue: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        while in_flight.try_join_next().is_some() {}
        if last_rescue.is_none_or(|at| at.elapsed() >= settings.rescue_every) {
            last_rescue = Some(Instant::now());
            work.rescue().await;
        }
        // Wait for a free slot before claiming, so claimed items never wait on us.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
        };
        let free = slots.available_permits() + 1;
        let claimed = work.claim(free).await;
        let idle = claimed.is_empty();
        let mut permit = Some(permit);
        for item in claimed {
            let permit = match permit.take() {
                Some(p) => p,
                None => slots.clone().acquire_owned().await.expect("never closed"),
            };
            let work = work.clone();
            let release = release.clone();
            in_flight.spawn(async move {
                work.process(item, release).await;
                drop(permit);
            });
        }
        drop(permit);
        if idle {
            let until_one_finishes = work.holds_back() && !in_flight.is_empty();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = work.idle() => {}
                _ = in_flight.join_next(), if until_one_finishes => {}
            }
        }
    }
    if in_flight.is_empty() {
        return;
    }
    tracing::info!(
        in_flight = in_flight.len(),
        "waiting for the work in flight"
    );
    let Some(grace) = settings.shutdown_grace else {
        while in_flight.join_next().await.is_some() {}
        return;
    };
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = in_flight.join_next() => if next.is_none() { break },
            _ = &mut deadline, if !release.is_cancelled() => {
                tracing::warn!(in_flight = in_flight.len(), "grace period over: releasing the work in flight");
                release.cancel();
            }
        }
    }
}
