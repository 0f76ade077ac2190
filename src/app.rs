//! Wiring: from options to a running service. `main.rs` parses the command line and calls
//! [`build`] and [`server::run`](crate::server::run); tests call the same functions.

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::AppState;
use crate::api::admin::redacted_config;
use crate::config::{self, ConfigErrors};
use crate::limiter::{Limiter, LocalFallback, Rules, TagKey, TagSecret};
use crate::metrics::Metrics;
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
    let tags = tag_key(options.tag_secret.as_ref(), &store)?;
    let limiter = Arc::new(Limiter::new(rules, store, fallback).with_tag_key(tags));
    let state = AppState::new(limiter, Arc::new(metrics));
    state.set_loaded_config(redacted_config(&options.config));
    Ok(Arc::new(state))
}

/// Loads the configuration at `path` and puts it in force; a configuration that does not
/// load is refused with every problem and the old one stays. SIGHUP and the admin API's
/// reload both come here.
pub fn reload(state: &AppState, path: &Path) -> Result<(), ConfigErrors> {
    match load_rules(path) {
        Ok(rules) => {
            log_warnings(&rules, path);
            state.limiter.reload(rules);
            state.set_loaded_config(redacted_config(path));
            tracing::info!(config = %path.display(), "configuration reloaded");
            Ok(())
        }
        Err(e) => {
            tracing::error!(config = %path.display(), "reload refused, keeping the old configuration:\n{e}");
            Err(e)
        }
    }
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

/// Reloads the configuration on SIGHUP. A configuration that does not load is logged with
/// every problem and the old one stays in force.
pub async fn reload_on_sighup(state: Arc<AppState>, path: PathBuf) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload disabled");
                return;
            }
        };
        while hup.recv().await.is_some() {
            // A refusal is logged by `reload`.
            let _ = reload(&state, &path);
        }
    }
    #[cfg(not(unix))]
    let _ = (state, path);
}
