//! Fixed window, aligned to multiples of the window length since the UNIX epoch.
//!
//! This is envoyproxy/ratelimit's algorithm: a per-minute limit resets at every whole minute
//! (UTC), a per-day limit at midnight UTC. Its known weakness is the boundary: up to twice the
//! limit can pass in one window's length that straddles a boundary. The contract the property
//! tests check is exactly that: in each aligned window, at most `limit` is admitted.

use super::{Micros, Quota, RetryAfter, Verdict};

/// The window a counter is in and what it admitted there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Start of the window, a multiple of the window length.
    pub start: Micros,
    pub count: u64,
}

/// The start of the window that contains `now`.
pub fn window_start(quota: &Quota, now: Micros) -> Micros {
    now - now % quota.window.max(1)
}

fn count_at(state: &Window, quota: &Quota, now: Micros) -> (Micros, u64) {
    let start = window_start(quota, now);
    let count = if state.start == start { state.count } else { 0 };
    (start, count)
}

pub fn check(state: &Window, quota: &Quota, now: Micros, cost: u64) -> Verdict {
    let (start, count) = count_at(state, quota, now);
    let until_next = start + quota.window - now;
    let left = quota.limit.saturating_sub(count);
    if cost > quota.limit {
        return Verdict {
            allowed: false,
            remaining: left,
            reset_after: until_next,
            retry_after: RetryAfter::Never,
        };
    }
    if cost <= left {
        Verdict {
            allowed: true,
            remaining: left - cost,
            reset_after: until_next,
            retry_after: RetryAfter::Now,
        }
    } else {
        Verdict {
            allowed: false,
            remaining: left,
            reset_after: until_next,
            retry_after: RetryAfter::After(until_next),
        }
    }
}

pub fn commit(state: &mut Window, quota: &Quota, now: Micros, cost: u64) {
    let (start, count) = count_at(state, quota, now);
    *state = Window {
        start,
        count: count.saturating_add(cost),
    };
}
