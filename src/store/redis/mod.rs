//! The Redis store: exact decisions shared by every replica.
//!
//! Every plan is decided by one Lua script call (`lua/decide.lua`) that reads Redis's own
//! `TIME`, checks every limit of the plan and commits all or none. Redis runs a script
//! atomically, so decisions from any number of replicas are linearizable: each is as if it
//! ran alone at the instant of its script. That is one round trip per decision.
//!
//! Around the script:
//! - a deadpool pool of connections, and a time limit on every call (pool wait included),
//!   so no request waits on Redis longer than `timeout`;
//! - `EVALSHA`, falling back to loading the script on `NOSCRIPT` (a restart, a failover or
//!   `SCRIPT FLUSH` empties the script cache);
//! - a [`Breaker`] that stops calling a Redis that keeps failing and probes it back;
//! - an [`OverLimitCache`]: a counter that rejected a cost until `T` keeps rejecting that cost
//!   until `T` whatever happens meanwhile (others can only consume more), so replicas answer
//!   those rejections without asking Redis, and an abusive client cannot saturate it;
//! - on Redis Cluster, a plan whose descriptors live in different slots is reserved slot by
//!   slot in a fixed order and refunded if a later slot rejects, fails or times out
//!   (`cross_slot`; see `docs/tradeoffs.md`).

mod batch;
mod breaker;
mod connection;
mod connectors;
mod cross_slot;
mod over_limit;
pub mod script;
mod stats;
mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_redis::redis;
use tracing::Instrument;

pub use batch::Batcher;
pub use breaker::Breaker;
pub use connection::{Connections, RedisUrl, with_credentials};
pub use over_limit::OverLimitCache;
pub use stats::RedisStats;
pub use tls::TlsFiles;

use super::{Capacity, CounterKey, Plan, Store, StoreError};

/// Connections beyond the batch workers' own, for health checks.
const HEALTH_CONNECTIONS: usize = 2;

/// How the Redis store is set up.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub url: String,
    /// The longest a decision may wait on Redis (see `--redis-timeout-ms`).
    pub timeout: Duration,
    /// Connections: one per batch worker (each keeps its own), plus a few for health checks.
    pub pool_size: usize,
    /// Prefix of every key the service writes.
    pub prefix: String,
    /// Over TLS: CA certificates trusted instead of the system's (`--redis-ca-file`), a client
    /// certificate and its key (`--redis-client-cert-file`, `--redis-client-key-file`).
    pub tls: TlsFiles,
}

impl RedisOptions {
    /// The defaults of the command line's flags, the one place they are written.
    pub const DEFAULT_TIMEOUT_MS: u64 = 50;
    pub const DEFAULT_POOL_SIZE: u64 = 32;
    pub const DEFAULT_PREFIX: &str = "rl:";

    /// Options for `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            timeout: Duration::from_millis(Self::DEFAULT_TIMEOUT_MS),
            pool_size: Self::DEFAULT_POOL_SIZE as usize,
            prefix: Self::DEFAULT_PREFIX.into(),
            tls: TlsFiles::default(),
        }
    }
}

pub struct RedisStore {
    pub stats: Arc<RedisStats>,
    connections: Arc<Connections>,
    /// Pipelines concurrent decisions; absent on a Cluster, where a pipeline would span nodes.
    batcher: Option<Batcher>,
    options: RedisOptions,
    breaker: Arc<Breaker>,
    over_limit: OverLimitCache,
}

impl RedisStore {
    /// Builds the pool and starts the batch workers (so it must run inside a Tokio runtime).
    /// Connections are opened lazily, so a Redis that is down at start-up is not fatal: the
    /// failure policy answers until it comes up.
    pub fn new(options: RedisOptions) -> Result<Self, StoreError> {
        let url = RedisUrl::parse(&options.url).map_err(StoreError::Config)?;
        let stats = RedisStats::new().map_err(|e| StoreError::Config(e.to_string()))?;
        // Workers keep their connections; the pool holds a few more for `/readyz` pings.
        let connections = Arc::new(Connections::new(
            &url,
            &options.tls,
            options.pool_size + HEALTH_CONNECTIONS,
            options.timeout,
            stats.round_trips.clone(),
            stats.call_duration.clone(),
        )?);
        let breaker = Arc::new(Breaker::new(5, Duration::from_millis(200)));
        let batcher = (!connections.is_cluster()).then(|| {
            Batcher::start(
                connections.clone(),
                breaker.clone(),
                options.timeout,
                options.pool_size,
                options.pool_size * batch::MAX_BATCH,
                stats.batch_size.clone(),
            )
        });
        Ok(RedisStore {
            stats: Arc::new(stats),
            connections,
            batcher,
            options,
            breaker,
            over_limit: OverLimitCache::new(100_000),
        })
    }

    /// Whether the store can decide at once: every batch worker holds a connection with the
    /// decide script loaded on it (they open them by themselves, and again after a loss);
    /// on a Cluster, the script is loaded on every master and the pool's connections are
    /// open. `Err` says what is missing; the caller retries (see [`Store::warm_up`]).
    pub async fn warm_up(&self) -> Result<(), StoreError> {
        match &self.batcher {
            Some(batcher) if batcher.all_connected() => Ok(()),
            Some(_) => Err(StoreError::Unavailable(
                "not every Redis worker holds a connection yet".into(),
            )),
            None => {
                self.connections
                    .load_everywhere(script::decide_script())
                    .await?;
                self.connections
                    .load_everywhere(script::refund_script())
                    .await?;
                self.connections.open_idle(self.options.pool_size).await
            }
        }
    }

    /// Decides one plan, counting what failed by kind.
    async fn apply_plan(&self, plan: &mut Plan) -> Result<(), StoreError> {
        let result = self.try_plan(plan).await;
        if let Err(e) = &result {
            self.stats.error(e, self.breaker.is_open());
        }
        result
    }

    async fn try_plan(&self, plan: &mut Plan) -> Result<(), StoreError> {
        if plan.checks.is_empty() {
            plan.admitted = true;
            return Ok(());
        }
        if self.over_limit.reject(plan, Instant::now()) {
            self.stats.cached_rejections.inc();
            return Ok(());
        }
        self.stats.decisions.inc();
        if self.batcher.is_some() {
            // The worker that takes the plan asks the breaker (and may be its probe); here
            // only fail fast while it is open.
            self.breaker.fail_fast()?;
        } else {
            self.breaker.admit()?;
        }
        let sent = Instant::now();
        let span = tracing::info_span!(
            target: crate::telemetry::SPAN_TARGET,
            "redis.decide",
            otel.kind = "client",
            db.system = "redis",
        );
        let call = self.decide(plan).instrument(span);
        let result = tokio::time::timeout(self.options.timeout, call).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.options.timeout)),
        };
        if result.is_ok() && !plan.admitted {
            self.over_limit.remember(plan, sent);
        }
        // Batch workers keep the breaker's count themselves, from what Redis did; here a
        // timeout may only mean the decision waited in the queue of a busy replica.
        if self.batcher.is_none() {
            match &result {
                Ok(()) => self.breaker.success(),
                Err(e) if e.is_transient() => self.breaker.failure(),
                Err(_) => {}
            }
        }
        result
    }

    /// Whether calls to Redis fail fast now (the circuit breaker is open or probing).
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Decisions waiting for a batch worker, and the most that may wait; `None` on a
    /// Cluster (no batching).
    pub fn queue(&self) -> Option<(usize, usize)> {
        self.batcher.as_ref().map(Batcher::queue)
    }

    /// One script call, or on a cluster one per slot in a fixed order.
    async fn decide(&self, plan: &mut Plan) -> Result<(), StoreError> {
        if let Some(batcher) = &self.batcher {
            // Only the command's bytes go to the worker: the plan stays here whatever becomes
            // of the call (a timeout drops this future; the failure policy still needs it).
            let call = script::decide_cmd(&self.options.prefix, &plan.checks);
            let reply = batcher.decide(call).await?;
            plan.admitted = script::decode(&reply, &mut plan.checks)?.admitted;
            return Ok(());
        }
        let single_slot = plan
            .checks
            .iter()
            .all(|c| c.key.tag == plan.checks[0].key.tag);
        if single_slot {
            let inv = script::decide_invocation(
                script::decide_script(),
                &self.options.prefix,
                &plan.checks,
                None,
            );
            let reply: redis::Value = self.connections.invoke(&inv).await?;
            plan.admitted = script::decode(&reply, &mut plan.checks)?.admitted;
            return Ok(());
        }
        cross_slot::decide_across_slots(&self.connections, &self.options.prefix, &self.stats, plan)
            .await
    }
}

impl Store for RedisStore {
    /// The scripts compute in Lua's doubles, exact below 2^53 (`lua/common.lua`).
    const CAPACITY: Capacity = Capacity {
        quota: script::QUOTA_MAX,
        span: script::SPAN_MAX,
    };

    /// Forgets every cached rejection (the limits they were computed for may have changed).
    fn forget_derived(&self) {
        self.over_limit.clear();
    }

    async fn apply(&self, batch: &mut [Plan]) -> Result<(), StoreError> {
        for plan in batch.iter_mut() {
            self.apply_plan(plan).await?;
        }
        Ok(())
    }

    /// One script call per hash tag (one slot each), then the cached rejections of `keys`
    /// are forgotten.
    async fn reset(&self, keys: &[CounterKey]) -> Result<(), StoreError> {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        for same_tag in keys.chunk_by(|a, b| a.tag == b.tag) {
            let inv = script::reset_invocation(&self.options.prefix, same_tag);
            let call = self.connections.invoke::<u64>(&inv);
            match tokio::time::timeout(self.options.timeout * 4, call).await {
                Ok(deleted) => deleted?,
                Err(_) => return Err(StoreError::Timeout(self.options.timeout * 4)),
            };
        }
        self.over_limit.forget(&keys);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match tokio::time::timeout(self.options.timeout * 4, self.connections.ping()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.options.timeout * 4)),
        }
    }

    async fn warm_up(&self) -> Result<(), StoreError> {
        RedisStore::warm_up(self).await
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
