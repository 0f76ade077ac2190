//! Fixed window, aligned to multiples of the window length since the UNIX epoch.
//!
//! This is envoyproxy/ratelimit's algorithm: a per-minute limit resets at every whole minute
//! (UTC), a per-day limit at midnight UTC. Its known weakness is the boundary: up to twice the
//! limit can pass in one window's length that straddles a boundary. The contract the property
//! tests check is exactly that: in each aligned window, at most `limit` is admitted.
//!
//! A post-paid charge may take the count past the limit (debt): every cost, 0 included, is
//! then refused until the window ends (a cost is allowed iff `count + cost <= limit`).

use super::{Micros, Quota, RetryAfter, USAGE_MAX, Verdict};

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
    if count.saturating_add(cost) <= quota.limit {
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

/// Adds `cost` to the current window's count, whatever the verdict (a post-paid charge may
/// take it past the limit), up to [`USAGE_MAX`].
pub fn commit(state: &mut Window, quota: &Quota, now: Micros, cost: u64) {
    let (start, count) = count_at(state, quota, now);
    *state = Window {
        start,
        count: count.saturating_add(cost).min(count.max(USAGE_MAX)),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A post-paid charge takes the count past the limit; the debt lasts until the window ends.
    #[test]
    fn debt_lasts_until_the_window_ends() {
        let quota = Quota::new(10, 100);
        let mut w = Window::default();
        commit(&mut w, &quota, 1_010, 25);
        assert_eq!(
            w,
            Window {
                start: 1_000,
                count: 25
            }
        );
        let look = check(&w, &quota, 1_050, 0);
        assert_eq!((look.allowed, look.remaining), (false, 0));
        assert_eq!(look.retry_after, RetryAfter::After(50));
        assert!(check(&w, &quota, 1_100, 10).allowed);
        commit(&mut w, &quota, 1_020, u64::MAX);
        assert_eq!(w.count, USAGE_MAX);
        let full = Window {
            start: 1_000,
            count: 10,
        };
        assert!(
            check(&full, &quota, 1_050, 0).allowed,
            "at exactly the limit: OK"
        );
    }
}
