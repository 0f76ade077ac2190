//! Rate-limiting algorithms as pure functions of `(state, now, cost)`.
//!
//! Nothing here does I/O or reads a clock: the caller passes `now` (microseconds since the
//! UNIX epoch, taken from the store's one clock), so the same sequence of `(now, cost)` gives
//! the same decisions in tests, in the memory store and in the Redis Lua scripts, which mirror
//! these functions line for line.
//!
//! Every algorithm is split in two steps so a store can decide several limits all-or-nothing:
//! [`CounterState::check`] says what would happen without changing anything, and
//! [`CounterState::commit`] applies a cost. All arithmetic is integer microseconds.
//!
//! # Debt
//!
//! A commit is unconditional: a post-paid charge (usage that already happened) is committed
//! even when it did not fit, putting the counter past its limit, *in debt* (GCRA: the TAT runs
//! beyond the tolerance; windows: the count beyond the limit). A counter in debt rejects every
//! cost, check-only (cost 0) included, until the debt is paid off; at exactly the limit a
//! check-only is still allowed (envoyproxy/ratelimit's `limitAfterIncrease >
//! overLimitThreshold` with an increase of 0). Debt is bounded by [`USAGE_MAX`] so every figure
//! stays exact in the Lua scripts' doubles.

pub mod fixed_window;
pub mod gcra;
pub mod sliding_window;

#[cfg(test)]
mod reference;

/// Microseconds. Time since the UNIX epoch for instants, a length for durations.
pub type Micros = u64;

/// The most usage a counter records, in units of cost (fixed and sliding windows) or in µs
/// of TAT ahead of `now` (token bucket): 2^51, twice the largest limit (2^50). A post-paid
/// charge beyond it is recorded as reaching it, a debt the limit repays at its own rate for
/// longer than anyone waits. Any cost of at least 2^51 reaches it, which is why the Redis
/// store may send costs capped at 2^51 and agree with this one.
pub const USAGE_MAX: u64 = 1 << 51;

/// Which algorithm a limit uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Generic cell rate algorithm: a token bucket kept as one timestamp.
    TokenBucket,
    /// An exact sliding window: a log of admitted costs, bounded by the limit.
    SlidingWindow,
    /// A window aligned to multiples of its length since the epoch (envoyproxy/ratelimit's).
    FixedWindow,
}

impl Algorithm {
    pub const ALL: [Algorithm; 3] = [
        Algorithm::TokenBucket,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
    ];

    /// The name used in config files, metrics and Redis keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::FixedWindow => "fixed_window",
        }
    }
}

/// A name that is not an algorithm's.
#[derive(Debug, thiserror::Error)]
#[error("unknown algorithm '{0}' (expected token_bucket, sliding_window or fixed_window)")]
pub struct UnknownAlgorithm(pub String);

impl std::str::FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    /// The inverse of [`Algorithm::as_str`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAlgorithm(s.to_owned()))
    }
}

/// How much a limit admits: `limit` units of cost per `window`.
///
/// Invariants (enforced by the config loader): `limit >= 1`, `window >= 1`,
/// `burst >= 1`. `burst` is used by the token bucket only and defaults to `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    pub limit: u64,
    pub window: Micros,
    pub burst: u64,
}

impl Quota {
    /// A quota whose burst equals its limit.
    pub fn new(limit: u64, window: Micros) -> Self {
        Quota {
            limit,
            window,
            burst: limit,
        }
    }
}

/// When a rejected request could succeed if retried unchanged. Ordered by how long a client
/// waits: `Now` < `After(shorter)` < `After(longer)` < `Never`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RetryAfter {
    /// The request was admitted.
    Now,
    /// After this many microseconds the same cost fits.
    After(Micros),
    /// The cost exceeds what the limit can ever admit at once; retrying cannot help.
    Never,
}

/// What one limit says about one cost at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Units left after this request (after consuming it, if it was admitted).
    pub remaining: u64,
    /// Time until the whole quota is available again.
    pub reset_after: Micros,
    pub retry_after: RetryAfter,
}

/// The state one counter keeps, per algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterState {
    Gcra(gcra::Tat),
    FixedWindow(fixed_window::Window),
    SlidingWindow(sliding_window::Log),
}

impl CounterState {
    /// The empty state for an algorithm: what a counter that was never hit holds.
    pub fn empty(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::TokenBucket => CounterState::Gcra(gcra::Tat::default()),
            Algorithm::FixedWindow => CounterState::FixedWindow(fixed_window::Window::default()),
            Algorithm::SlidingWindow => CounterState::SlidingWindow(sliding_window::Log::default()),
        }
    }

    /// Whether this state belongs to `algorithm` (a config reload may change a limit's algorithm).
    pub fn is(&self, algorithm: Algorithm) -> bool {
        matches!(
            (self, algorithm),
            (CounterState::Gcra(_), Algorithm::TokenBucket)
                | (CounterState::FixedWindow(_), Algorithm::FixedWindow)
                | (CounterState::SlidingWindow(_), Algorithm::SlidingWindow)
        )
    }

    /// What admitting `cost` at `now` would give, without changing the state.
    pub fn check(&self, quota: &Quota, now: Micros, cost: u64) -> Verdict {
        match self {
            CounterState::Gcra(s) => gcra::check(s, quota, now, cost),
            CounterState::FixedWindow(s) => fixed_window::check(s, quota, now, cost),
            CounterState::SlidingWindow(s) => sliding_window::check(s, quota, now, cost),
        }
    }

    /// Consumes `cost` at `now`: after [`check`](Self::check) admitted it, or whatever the
    /// verdict for a post-paid charge (into debt, bounded by [`USAGE_MAX`]).
    pub fn commit(&mut self, quota: &Quota, now: Micros, cost: u64) {
        match self {
            CounterState::Gcra(s) => gcra::commit(s, quota, now, cost),
            CounterState::FixedWindow(s) => fixed_window::commit(s, quota, now, cost),
            CounterState::SlidingWindow(s) => sliding_window::commit(s, quota, now, cost),
        }
    }

    /// The instant from which this state is equivalent to the empty state, so a store may
    /// forget it (the memory store's eviction, a Redis key's expiry).
    pub fn expires_at(&self, quota: &Quota) -> Micros {
        match self {
            CounterState::Gcra(s) => s.0,
            CounterState::FixedWindow(s) => s.start.saturating_add(quota.window),
            CounterState::SlidingWindow(s) => {
                s.newest().map_or(0, |t| t.saturating_add(quota.window))
            }
        }
    }
}
