//! Wiring: from options to a running service. `main.rs` parses the command line and calls
//! [`build`] and [`server::run`](crate::server::run); tests call the same functions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::AppState;
use crate::config::{self, ConfigErrors};
use crate::limiter::{Limiter, LocalFallback, Rules};
use crate::metrics::Metrics;
use crate::store::{Backend, Clock, MemoryStore, RedisOptions, RedisStore};

/// What the service needs to start, besides its listeners.
#[derive(Clone, Debug)]
pub struct AppOptions {
    pub config: PathBuf,
    pub redis_url: Option<String>,
    /// The memory store's capacity in counters.
    pub max_counters: usize,
    /// Redis settings besides the URL.
    pub redis: RedisOptions,
    /// How many replicas share each quota while the `local` failure policy is in force.
    pub replicas: u64,
}

impl AppOptions {
    /// Options for a config path with every other setting at its default.
    pub fn new(config: impl Into<PathBuf>) -> Self {
        AppOptions {
            config: config.into(),
            redis_url: None,
            max_counters: 1_000_000,
            redis: RedisOptions::default(),
            replicas: 1,
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
    let store = match &options.redis_url {
        None => Backend::Memory(MemoryStore::new(Clock::system(), options.max_counters)),
        Some(url) => Backend::Redis(
            RedisStore::new(RedisOptions {
                url: url.clone(),
                ..options.redis.clone()
            })
            .map_err(|e| BuildError::Store(e.to_string()))?,
        ),
    };
    // Built whatever the policy at start-up: a reload may switch to `local` later. Empty
    // until first used, it costs nothing meanwhile.
    let fallback = matches!(store, Backend::Redis(_)).then(|| LocalFallback {
        store: MemoryStore::new(Clock::system(), options.max_counters),
        replicas: options.replicas.max(1),
    });
    let metrics = Metrics::new()?;
    if let Backend::Redis(redis) = &store {
        for c in redis.stats.collectors() {
            metrics.register(c)?;
        }
    }
    let limiter = Arc::new(Limiter::new(rules, store, fallback));
    Ok(Arc::new(AppState::new(limiter, Arc::new(metrics))))
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
            match load_rules(&path) {
                Ok(rules) => {
                    log_warnings(&rules, &path);
                    state.limiter.reload(rules);
                    tracing::info!(config = %path.display(), "configuration reloaded");
                }
                Err(e) => {
                    tracing::error!(config = %path.display(), "reload refused, keeping the old configuration:\n{e}")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (state, path);
}
