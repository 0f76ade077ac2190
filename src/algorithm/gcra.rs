//! Token bucket as GCRA (generic cell rate algorithm): one integer of state.
//!
//! The state is the theoretical arrival time (TAT): the instant at which the bucket would be
//! full again. One unit of cost is worth `T = ceil(window / limit)` microseconds (the emission
//! interval, rounded *up* so rounding can only admit less, never more), and the bucket holds
//! `burst` units, a tolerance of `tau = burst * T`.
//!
//! A cost `c` at `now` is admitted when `max(tat, now) + c*T - now <= tau`. Then, for any span
//! `[t1, t2]`, the admitted cost is at most `burst + (t2 - t1) / T`: the contract the property
//! tests check, against a token bucket written the ordinary way. A cost of 0 only looks and is
//! always admitted, even when a config reload shrank `tau` below how far the TAT runs ahead.

use super::{Micros, Quota, RetryAfter, Verdict};

/// Theoretical arrival time in microseconds since the epoch; 0 for a counter never hit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tat(pub Micros);

/// The emission interval: microseconds one unit of cost is worth.
pub fn interval(quota: &Quota) -> Micros {
    quota.window.div_ceil(quota.limit.max(1)).max(1)
}

/// The tolerance: how far ahead of `now` the TAT may run.
pub fn tolerance(quota: &Quota) -> Micros {
    interval(quota).saturating_mul(quota.burst)
}

pub fn check(state: &Tat, quota: &Quota, now: Micros, cost: u64) -> Verdict {
    let t = interval(quota);
    let tau = tolerance(quota);
    let base = state.0.max(now);
    let ahead = base - now; // how far the bucket is from full, before this request
    if cost > quota.burst {
        return Verdict {
            allowed: false,
            remaining: (tau - ahead.min(tau)) / t,
            reset_after: ahead,
            retry_after: RetryAfter::Never,
        };
    }
    let new_ahead = ahead.saturating_add(cost.saturating_mul(t));
    // A cost of 0 only looks, so it is admitted even when a smaller quota (a config reload)
    // left the TAT beyond the tolerance.
    if cost == 0 || new_ahead <= tau {
        Verdict {
            allowed: true,
            remaining: (tau - new_ahead.min(tau)) / t,
            reset_after: new_ahead,
            retry_after: RetryAfter::Now,
        }
    } else {
        Verdict {
            allowed: false,
            remaining: (tau - ahead.min(tau)) / t,
            reset_after: ahead,
            retry_after: RetryAfter::After(new_ahead - tau),
        }
    }
}

pub fn commit(state: &mut Tat, quota: &Quota, now: Micros, cost: u64) {
    let t = interval(quota);
    state.0 = state.0.max(now).saturating_add(cost.saturating_mul(t));
}
