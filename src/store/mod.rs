//! Where counters live: one [`Store`] trait, one implementation per backend.
//!
//! The limiter hands a store a batch of [`Plan`]s. Each plan is one request's checks, decided
//! all-or-nothing: either every enforced check is admitted and every admitted check is
//! committed, or nothing is committed at all, except post-paid checks (usage that already
//! happened), which are committed whatever the verdict, into debt (see [`plan`]). Plans in one batch are independent of each
//! other; a batch exists so a networked store can decide many requests in one round trip.
//!
//! Time belongs to the store: the memory store reads one process-wide [`Clock`], the Redis
//! store reads Redis's own `TIME` inside its scripts. Algorithms only ever receive `now`.

pub mod clock;
pub mod memory;
pub mod plan;
pub mod redis;

use std::future::Future;

use crate::algorithm::{Algorithm, Quota, Verdict};

pub use clock::Clock;
pub use memory::MemoryStore;
pub use redis::{RedisOptions, RedisStore};

/// The identity of one counter: the hashed descriptor (`tag`) and the limit on it (`limit`).
///
/// Every limit of one descriptor shares the tag, so a sharded store (or a Redis Cluster
/// slot) keeps them together. Neither half contains a raw descriptor value: the tag is a
/// truncated SHA-256, so an API key never reaches a store key, a log or a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    pub tag: u128,
    pub limit: u64,
}

/// One limit to check for one request.
#[derive(Clone, Debug)]
pub struct Check {
    pub key: CounterKey,
    pub algorithm: Algorithm,
    pub quota: Quota,
    pub cost: u64,
    /// A shadow-mode limit is counted and reported but never rejects the request.
    pub enforce: bool,
    /// Usage that already happened (a token count known after the response): committed
    /// whatever the verdict, even past the limit, into debt. The verdict says whether it fit.
    pub post_paid: bool,
    /// Filled in by the store.
    pub verdict: Option<Verdict>,
}

/// One request's checks. The limiter merges checks on the same counter before building a
/// plan, so a store may assume every `key` in a plan is distinct.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub checks: Vec<Check>,
    /// Filled in by the store: whether the plan was admitted (and committed).
    pub admitted: bool,
}

/// Why a store could not decide.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the memory store holds its maximum of {max} counters")]
    Full { max: usize },
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store returned an unexpected reply: {0}")]
    Protocol(String),
    #[error("{0}")]
    Config(String),
}

impl StoreError {
    /// Whether the store could not be reached (a transient outage, which the failure policy
    /// answers), as opposed to a bug, a misconfiguration or a full memory store. A full store
    /// is not an outage: it refuses the one request that needs a new counter, under every
    /// policy, and keeps deciding for the counters it has.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Timeout(_) | StoreError::Unavailable(_))
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Full { .. } => "full",
            StoreError::Timeout(_) => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Protocol(_) => "protocol",
            StoreError::Config(_) => "config",
        }
    }
}

/// The largest figures a store decides exactly: every limit, window (µs) and burst at most
/// `quota`, a token bucket's tolerance (interval × burst, µs) at most `span`. The config is
/// validated against [`Backend::CAPACITY`], what every store of this binary can decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub quota: u64,
    pub span: u64,
}

impl Capacity {
    /// What both `a` and `b` can decide.
    pub const fn both(a: Capacity, b: Capacity) -> Capacity {
        Capacity {
            quota: if a.quota < b.quota { a.quota } else { b.quota },
            span: if a.span < b.span { a.span } else { b.span },
        }
    }
}

/// A backend that decides plans atomically.
pub trait Store: Send + Sync + 'static {
    /// The largest figures this store decides exactly.
    const CAPACITY: Capacity;

    /// The rules were reloaded: forget whatever was computed from the old ones.
    fn forget_derived(&self) {}

    /// Decides every plan of the batch: fills each check's `verdict` and each plan's
    /// `admitted`, committing admitted plans and every plan's post-paid checks.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes may or may not have committed the batch;
    /// it never commits part of one plan.
    fn apply(&self, batch: &mut [Plan]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets the counters `keys` name, as if they were never hit (the admin API's reset of
    /// a client).
    fn reset(&self, keys: &[CounterKey]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the store can take decisions now (for `/readyz`).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the store is ready to decide at once (connections open, scripts loaded),
    /// doing what it can towards that; `Err` says what is still missing. The server calls it
    /// until it succeeds, for a bounded time, before it says ready. A store with nothing to
    /// prepare is always ready.
    fn warm_up(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(Ok(()))
    }

    /// A name for logs and metrics.
    fn name(&self) -> &'static str;
}

/// The stores this binary can run with, so the limiter holds a concrete type (no boxed
/// future per decision).
pub enum Backend {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store for Backend {
    const CAPACITY: Capacity = Capacity::both(MemoryStore::CAPACITY, RedisStore::CAPACITY);

    fn forget_derived(&self) {
        match self {
            Backend::Memory(s) => s.forget_derived(),
            Backend::Redis(s) => s.forget_derived(),
        }
    }

    async fn apply(&self, batch: &mut [Plan]) -> Result<(), StoreError> {
        match self {
            Backend::Memory(s) => s.apply(batch).await,
            Backend::Redis(s) => s.apply(batch).await,
        }
    }

    async fn reset(&self, keys: &[CounterKey]) -> Result<(), StoreError> {
        match self {
            Backend::Memory(s) => s.reset(keys).await,
            Backend::Redis(s) => s.reset(keys).await,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Backend::Memory(s) => s.ping().await,
            Backend::Redis(s) => s.ping().await,
        }
    }

    async fn warm_up(&self) -> Result<(), StoreError> {
        match self {
            Backend::Memory(s) => s.warm_up().await,
            Backend::Redis(s) => s.warm_up().await,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Memory(s) => s.name(),
            Backend::Redis(s) => s.name(),
        }
    }
}
