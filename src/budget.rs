//! A memory budget: a semaphore counted in bytes. Whoever is about to hold memory reserves
//! it first and waits, first come first served, while the budget is spent; the reservation
//! is given back when dropped. Internally counted in KiB, so that any budget fits the
//! semaphore's `u32` requests.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_kib: u32,
    total_bytes: u64,
}

/// A request for more than the whole budget: it would wait forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{needed} bytes is more than the whole budget of {total}")]
pub struct OverBudget {
    pub needed: u64,
    pub total: u64,
}

/// Bytes held from a budget until this is dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

const KIB: u64 = 1024;

impl MemoryBudget {
    /// A budget of `total_bytes`, at most 4 TiB.
    pub fn new(total_bytes: u64) -> Self {
        let total_kib = u32::try_from(total_bytes / KIB).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            total_bytes: u64::from(total_kib) * KIB,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Bytes reserved now.
    pub fn reserved_bytes(&self) -> u64 {
        (u64::from(self.total_kib) - self.permits.available_permits() as u64) * KIB
    }

    /// Waits until `bytes` are free and holds them. More than the whole budget is refused at
    /// once.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation, OverBudget> {
        if bytes > self.total_bytes {
            return Err(OverBudget {
                needed: bytes,
                total: self.total_bytes,
            });
        }
        let kib = u32::try_from(bytes.div_ceil(KIB)).unwrap_or(u32::MAX);
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(kib.min(self.total_kib))
            .await
            .expect("the semaphore is never closed");
        Ok(Reservation { _permit: permit })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_and_give_it_back_when_dropped() {
        let budget = Arc::new(MemoryBudget::new(10 * KIB));
        let first = budget.reserve(6 * KIB).await.unwrap();
        assert_eq!(budget.reserved_bytes(), 6 * KIB);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(5 * KIB + 1).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "6 + 6 KiB must not fit in 10");
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(budget.reserved_bytes(), 0);
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once() {
        let budget = MemoryBudget::new(10 * KIB);
        assert_eq!(
            budget.reserve(10 * KIB + 1).await.unwrap_err(),
            OverBudget {
                needed: 10 * KIB + 1,
                total: 10 * KIB
            }
        );
        budget.reserve(10 * KIB).await.unwrap();
    }
}
