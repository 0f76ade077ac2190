//! Wiring: from options to a running service. `main.rs` parses the command line and calls
//! [`build`] and [`server::run`](crate::server::run); tests call the same functions. Reloads
//! (SIGHUP, the config watch) are in [`reload`](crate::reload).

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::AppState;
use crate::api::admin::redacted_config;
use crate::config::{self, ConfigErrors, ForcedSettings};
use crate::limiter::{Limiter, LocalFallback, Rules, TagKey, TagSecret};
use prometheus::Opts;

use crate::metrics::Metrics;
use crate::reload;
use crate::store::{Backend, Clock, MemoryStore, RedisOptions, RedisStore};

/// What the service needs to start, besides its listeners.
#[derive(Clone, Debug)]
pub struct AppOptions {
    pub config: PathBuf,
    /// Redis to share counters across replicas; `None`: the memory store.
    pub redis: Option<RedisOptions>,
    /// The memory store's capacity in counters.
    pub max_counters: usize,
    /// How many replicas share each quota while the `local` failure policy is in force.
    pub replicas: NonZeroU64,
    /// Settings forced on over every loaded configuration (`--shadow-mode`, …).
    pub forced: ForcedSettings,
    /// The secret counter tags and log fingerprints are keyed with (`limiter::TagKey`).
    pub tag_secret: Option<TagSecret>,
}

impl AppOptions {
    /// The defaults of the command line's flags, the one place they are written.
    pub const DEFAULT_MAX_COUNTERS: usize = 1_000_000;
    pub const DEFAULT_REPLICAS: NonZeroU64 = NonZeroU64::MIN;

    /// Options for a config path with every other setting at its default (the memory store).
    pub fn new(config: impl Into<PathBuf>) -> Self {
        AppOptions {
            config: config.into(),
            redis: None,
            max_counters: Self::DEFAULT_MAX_COUNTERS,
            replicas: Self::DEFAULT_REPLICAS,
            forced: ForcedSettings::default(),
            tag_secret: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigErrors),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Store(String),
}

/// Loads and compiles a configuration file or directory, listing every problem.
pub fn load_rules(path: &Path) -> Result<Rules, ConfigErrors> {
    let config = config::load(path)?;
    Rules::compile(&config)
}

/// Logs what [`Rules::warnings`] finds in a configuration about to be used.
fn log_warnings(rules: &Rules, path: &Path) {
    for w in rules.warnings() {
        tracing::warn!(config = %path.display(), "{w}");
    }
}

/// Builds the shared state every front door uses.
pub fn build(options: &AppOptions) -> Result<Arc<AppState>, BuildError> {
    let rules = load_rules(&options.config)?;
    log_warnings(&rules, &options.config);
    let store = match &options.redis {
        None => Backend::Memory(MemoryStore::new(Clock::system(), options.max_counters)),
        Some(redis) => Backend::Redis(
            RedisStore::new(redis.clone()).map_err(|e| BuildError::Store(e.to_string()))?,
        ),
    };
    // Built whatever the policy at start-up: a reload may switch to `local` later. Empty
    // until first used, it costs nothing meanwhile.
    let fallback = matches!(store, Backend::Redis(_)).then(|| LocalFallback {
        store: MemoryStore::new(Clock::system(), options.max_counters),
        replicas: options.replicas,
    });
    let metrics = Metrics::new()?;
    if let Backend::Redis(redis) = &store {
        for c in redis.stats.collectors() {
            metrics.register(c)?;
        }
    }
    metrics.config_loaded(&reload::digest(&options.config), reload::unix_now(), None);
    let tags = tag_key(options.tag_secret.as_ref(), &store)?;
    let limiter = Limiter::new(rules, store, fallback)
        .with_forced_settings(options.forced)
        .with_tag_key(tags);
    let limiter = Arc::new(limiter);
    register_store_gauges(&metrics, &limiter, options.max_counters)?;
    let state = Arc::new(AppState::new(limiter, Arc::new(metrics)));
    state.set_loaded_config(redacted_config(&options.config));
    let weak = Arc::downgrade(&state);
    state.metrics.register_gauge(
        Opts::new(
            "ratelimiter_ready",
            "1 while the replica says ready (/readyz, gRPC health), 0 while starting or \
             shutting down.",
        ),
        Box::new(move || f64::from(weak.upgrade().is_some_and(|s| s.is_ready()))),
    )?;
    Ok(state)
}

/// Gauges read from the store at scrape time: the memory stores' counters and capacity, the
/// Redis breaker's state and the batch queue's depth.
fn register_store_gauges(
    metrics: &Metrics,
    limiter: &Arc<Limiter>,
    max_counters: usize,
) -> Result<(), prometheus::Error> {
    let memory = |store: &str| {
        let counters = Opts::new(
            "ratelimiter_memory_store_counters",
            "Counters held by an in-process store (primary: the memory store; fallback: the \
             local failure policy's), expired ones not yet swept included.",
        );
        let capacity = Opts::new(
            "ratelimiter_memory_store_capacity_counters",
            "The most counters an in-process store holds (--max-counters).",
        );
        (
            counters.const_label("store", store),
            capacity.const_label("store", store),
        )
    };
    let (counters, capacity) = match limiter.store() {
        Backend::Memory(_) => memory("primary"),
        Backend::Redis(_) => memory("fallback"),
    };
    let l = limiter.clone();
    metrics.register_gauge(
        counters,
        Box::new(move || match l.store() {
            Backend::Memory(m) => m.len() as f64,
            Backend::Redis(_) => l.fallback_store().map_or(0.0, |m| m.len() as f64),
        }),
    )?;
    metrics.register_gauge(capacity, Box::new(move || max_counters as f64))?;
    if matches!(limiter.store(), Backend::Redis(_)) {
        register_redis_gauges(metrics, limiter)?;
    }
    Ok(())
}

fn register_redis_gauges(
    metrics: &Metrics,
    limiter: &Arc<Limiter>,
) -> Result<(), prometheus::Error> {
    let redis = |l: &Limiter| match l.store() {
        Backend::Redis(r) => Some((r.breaker_open(), r.queue())),
        Backend::Memory(_) => None,
    };
    let l = limiter.clone();
    metrics.register_gauge(
        Opts::new(
            "ratelimiter_redis_breaker_open",
            "1 while calls to Redis fail fast (the circuit breaker is open or probing), else 0.",
        ),
        Box::new(move || f64::from(redis(&l).is_some_and(|(open, _)| open))),
    )?;
    let l = limiter.clone();
    metrics.register_gauge(
        Opts::new(
            "ratelimiter_redis_queue_depth",
            "Decisions waiting for a Redis batch worker.",
        ),
        Box::new(move || {
            redis(&l)
                .and_then(|(_, q)| q)
                .map_or(0.0, |(d, _)| d as f64)
        }),
    )?;
    let l = limiter.clone();
    metrics.register_gauge(
        Opts::new(
            "ratelimiter_redis_queue_capacity",
            "The most decisions that may wait for a Redis batch worker; past it, the failure \
             policy answers.",
        ),
        Box::new(move || {
            redis(&l)
                .and_then(|(_, q)| q)
                .map_or(0.0, |(_, m)| m as f64)
        }),
    )
}

/// How counters are named: keyed by the secret if one is given; otherwise a random key for
/// the memory store (its counters die with the process anyway) and, with a warning, the
/// unkeyed SHA-256 for Redis (replicas must agree, and earlier versions' counters stay).
fn tag_key(secret: Option<&TagSecret>, store: &Backend) -> Result<TagKey, BuildError> {
    match (secret, store) {
        (Some(secret), _) => Ok(TagKey::keyed(secret)),
        (None, Backend::Memory(_)) => TagKey::random().ok_or_else(|| {
            BuildError::Store("cannot draw a random counter-tag key from the system".into())
        }),
        (None, Backend::Redis(_)) => {
            tracing::warn!(
                "no counter-tag secret (--tag-secret-file or RATELIMITER_TAG_SECRET): Redis key names are the unkeyed SHA-256 of each descriptor, from which a weak API key can be guessed offline; give every replica the same secret"
            );
            Ok(TagKey::Unkeyed)
        }
    }
}
