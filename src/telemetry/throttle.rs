//! At most one log line per interval for an event that repeats with every request: during a
//! store outage every decision fails the same way, and one warning per request (hundreds a
//! second) would bury everything else in the log. The line that gets through says how many
//! were held back since the last one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct LogThrottle {
    origin: Instant,
    interval_ms: u64,
    /// Milliseconds since `origin` from which the next line may be written.
    next_ms: AtomicU64,
    /// Lines held back since the last one written.
    held: AtomicU64,
}

impl LogThrottle {
    pub fn new(interval: Duration) -> Self {
        LogThrottle {
            origin: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when a line may be written now; `None`
    /// (and one more held back) otherwise. Lock-free.
    pub fn admit(&self) -> Option<u64> {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.admit_at(now)
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        let until = now_ms.saturating_add(self.interval_ms);
        let won = now_ms >= next
            && self
                .next_ms
                .compare_exchange(next, until, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if won {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_count_held_back() {
        let t = LogThrottle::new(Duration::from_secs(1));
        assert_eq!(t.admit_at(0), Some(0));
        for ms in [1, 500, 999] {
            assert_eq!(t.admit_at(ms), None);
        }
        assert_eq!(t.admit_at(1_000), Some(3));
        assert_eq!(t.admit_at(1_500), None);
        assert_eq!(t.admit_at(5_000), Some(1));
    }
}
