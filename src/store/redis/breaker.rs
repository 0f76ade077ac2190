//! A circuit breaker: after `threshold` consecutive transient failures, calls fail fast for
//! `cooldown`, then the next call probes Redis again. A success closes it.
//!
//! Fail-fast matters twice over: a dead Redis costs each request the whole timeout, and a
//! struggling one should not get a retry storm from every replica. The state is two atomics;
//! there is no lock on the hot path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::StoreError;

pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    /// Microseconds since `epoch` until which calls fail fast; 0 when closed.
    open_until: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go ahead; `Err` while the breaker is open.
    pub fn admit(&self) -> Result<(), StoreError> {
        self.admit_at(self.now())
    }

    fn admit_at(&self, now: u64) -> Result<(), StoreError> {
        let until = self.open_until.load(Ordering::Acquire);
        if until != 0 && now < until {
            return Err(StoreError::Unavailable(
                "circuit open: Redis failed repeatedly".into(),
            ));
        }
        Ok(())
    }

    /// Whether the breaker is open now.
    pub fn is_open(&self) -> bool {
        self.admit().is_err()
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until.store(0, Ordering::Release);
    }

    pub fn failure(&self) {
        self.failure_at(self.now());
    }

    fn failure_at(&self, now: u64) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.threshold {
            let until =
                now.saturating_add(u64::try_from(self.cooldown.as_micros()).unwrap_or(u64::MAX));
            self.open_until.store(until.max(1), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        // Time is passed in explicitly (microseconds), so the test cannot race the clock.
        let b = Breaker::new(3, Duration::from_micros(1000));
        b.failure_at(10);
        b.failure_at(20);
        assert!(b.admit_at(30).is_ok(), "two failures keep it closed");
        b.failure_at(30);
        assert!(b.admit_at(31).is_err(), "the third opens it");
        assert!(
            b.admit_at(1029).is_err(),
            "still open just before the cooldown ends"
        );
        assert!(
            b.admit_at(1030).is_ok(),
            "after the cooldown a probe may go"
        );
        b.failure_at(1030);
        assert!(b.admit_at(1031).is_err(), "a failed probe opens it again");
        b.success();
        assert!(b.admit_at(1032).is_ok(), "a success closes it");
        b.failure_at(1033);
        assert!(b.admit_at(1034).is_ok(), "and resets the count");
    }
}
