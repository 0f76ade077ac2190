//! A circuit breaker: after `threshold` consecutive transient failures, calls fail fast for
//! `cooldown`; then exactly one call, the probe, goes to Redis while the others keep failing
//! fast. The probe's success closes the breaker; its failure opens it for another cooldown.
//! A probe that never reports (its caller was cancelled) is replaced by another one a
//! cooldown later, so the breaker cannot stay half-open for ever.
//!
//! Fail-fast matters twice over: a dead Redis costs each request the whole timeout, and a
//! struggling one should not get a retry storm from every replica. The state is two atomics;
//! there is no lock on the hot path: the probe is whoever moves `open_until` one cooldown on
//! (compare-and-swap), which only one caller can do.

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

    fn cooldown_micros(&self) -> u64 {
        u64::try_from(self.cooldown.as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go ahead; `Err` while the breaker is open. After the cooldown the
    /// first caller is admitted as the probe: it must report [`Breaker::success`] or
    /// [`Breaker::failure`].
    pub fn admit(&self) -> Result<(), StoreError> {
        self.admit_at(self.now())
    }

    fn admit_at(&self, now: u64) -> Result<(), StoreError> {
        let mut until = self.open_until.load(Ordering::Acquire);
        loop {
            if until == 0 {
                return Ok(());
            }
            if now < until {
                return Err(open_error());
            }
            // The cooldown is over: whoever pushes it one cooldown on is the probe.
            let next = now.saturating_add(self.cooldown_micros()).max(1);
            match self
                .open_until
                .compare_exchange(until, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(seen) => until = seen,
            }
        }
    }

    /// `Err` while calls fail fast (open, or a probe is out); claims no probe.
    pub fn fail_fast(&self) -> Result<(), StoreError> {
        if self.is_open() {
            return Err(open_error());
        }
        Ok(())
    }

    /// Whether calls fail fast now (open, or a probe is out); claims no probe.
    pub fn is_open(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        until != 0 && self.now() < until
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
            let until = now.saturating_add(self.cooldown_micros());
            self.open_until.store(until.max(1), Ordering::Release);
        }
    }
}

/// What a call gets while the breaker is open.
fn open_error() -> StoreError {
    StoreError::Unavailable("circuit open: Redis failed repeatedly".into())
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

    /// Opens `b` (threshold 2, cooldown 1000 µs) at t=10: open until 1010.
    fn opened() -> Breaker {
        let b = Breaker::new(2, Duration::from_micros(1000));
        b.failure_at(0);
        b.failure_at(10);
        b
    }

    #[test]
    fn after_the_cooldown_exactly_one_call_probes_until_it_succeeds() {
        let b = opened();
        assert!(
            b.admit_at(1010).is_ok(),
            "the first call after the cooldown probes"
        );
        for t in [1011, 1500, 2009] {
            assert!(
                b.admit_at(t).is_err(),
                "t={t}: a second call while the probe runs"
            );
        }
        b.success();
        assert!(b.admit_at(2010).is_ok(), "the probe succeeded: closed");
        assert!(b.admit_at(2011).is_ok(), "closed for everyone");
    }

    #[test]
    fn of_many_concurrent_calls_after_the_cooldown_one_probes() {
        let b = std::sync::Arc::new(opened());
        let admitted: usize = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..100).filter(|_| b.admit_at(1010).is_ok()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap_or(usize::MAX))
            .sum();
        assert_eq!(
            admitted, 1,
            "800 calls at the same instant after the cooldown"
        );
    }

    #[test]
    fn a_failed_probe_opens_the_breaker_for_another_cooldown() {
        let b = opened();
        assert!(b.admit_at(1010).is_ok(), "the probe");
        assert!(b.admit_at(1020).is_err(), "others fail fast meanwhile");
        b.failure_at(1030);
        assert!(
            b.admit_at(1500).is_err(),
            "open again after the failed probe"
        );
        assert!(b.admit_at(2029).is_err(), "for a whole cooldown");
        assert!(b.admit_at(2030).is_ok(), "then one more probe");
        assert!(b.admit_at(2031).is_err(), "and only one");
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_a_cooldown() {
        // A probe whose caller was cancelled reports nothing: the breaker must not stay
        // half-open for ever.
        let b = opened();
        assert!(b.admit_at(1010).is_ok(), "the probe, which then vanishes");
        assert!(b.admit_at(2009).is_err(), "still waiting for it");
        assert!(b.admit_at(2010).is_ok(), "a cooldown later, another probe");
        assert!(b.admit_at(2011).is_err(), "and only one");
    }
}
