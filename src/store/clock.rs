//! The memory store's one clock: microseconds since the UNIX epoch, never going backwards.
//!
//! `System` anchors a monotonic `Instant` to the wall clock once, at start-up, so a wall-clock
//! step (NTP, a VM resume) cannot make a counter go back in time, while fixed windows still
//! align to whole seconds, minutes and days of the epoch. `Manual` lets tests drive time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::algorithm::Micros;

#[derive(Clone, Debug)]
pub enum Clock {
    System {
        epoch_at_start: Micros,
        start: Instant,
    },
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn system() -> Self {
        let epoch_at_start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Clock::System {
            epoch_at_start,
            start: Instant::now(),
        }
    }

    /// A clock that only moves when told to; returns the handle that moves it.
    pub fn manual(start: Micros) -> (Self, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(start));
        (Clock::Manual(now.clone()), now)
    }

    pub fn now(&self) -> Micros {
        match self {
            Clock::System {
                epoch_at_start,
                start,
            } => {
                let elapsed = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                epoch_at_start.saturating_add(elapsed)
            }
            Clock::Manual(now) => now.load(Ordering::Acquire),
        }
    }
}
