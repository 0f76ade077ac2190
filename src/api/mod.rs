//! The front doors. Each one only translates its wire format into one
//! [`Limiter::decide_with`](crate::limiter::Limiter::decide_with) call and the answer back.
//! What an answer holds (headers, body, the status of each kind of refusal) is decided once,
//! in [`response`]; each door only writes it in its wire format.

pub mod admin;
pub mod ext_authz;
pub mod grpc;
pub mod http;
pub mod ratelimit_service;
pub mod response;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::limiter::{Decision, Degraded, Entry, LimitError, LimitRequest, Limiter, Rules};
use crate::metrics::{Door, Metrics, Outcome};

/// What every front door shares.
pub struct AppState {
    pub limiter: Arc<Limiter>,
    pub metrics: Arc<Metrics>,
    /// False until the servers run, and again from the moment shutdown begins.
    pub ready: AtomicBool,
    /// The configuration in force, redacted (`admin::redacted_config`), for the admin API.
    loaded_config: ArcSwap<serde_json::Value>,
}

impl AppState {
    pub fn new(limiter: Arc<Limiter>, metrics: Arc<Metrics>) -> Self {
        AppState {
            limiter,
            metrics,
            ready: AtomicBool::new(false),
            loaded_config: ArcSwap::from_pointee(serde_json::Value::Null),
        }
    }

    /// The configuration in force, redacted; `null` until one is recorded.
    pub fn loaded_config(&self) -> Arc<serde_json::Value> {
        self.loaded_config.load_full()
    }

    /// Records the (redacted) configuration now in force.
    pub fn set_loaded_config(&self, config: serde_json::Value) {
        self.loaded_config.store(Arc::new(config));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Decides a request against `rules`, the snapshot the door built the request from, and
    /// records it: metrics, and a debug line per rejection.
    pub async fn decide(
        &self,
        door: Door,
        rules: &Rules,
        req: &LimitRequest<'_>,
    ) -> Result<Decision, LimitError> {
        let started = Instant::now();
        let result = self.limiter.decide_with(rules, req).await;
        let outcome = match &result {
            Ok(d) if d.allowed => Outcome::Allowed,
            Ok(_) => Outcome::Rejected,
            Err(_) => Outcome::Error,
        };
        self.metrics
            .record(door, outcome, started.elapsed().as_secs_f64());
        match &result {
            Ok(d) => {
                for l in d.limits.iter().filter(|l| l.detailed_metric) {
                    self.metrics
                        .detailed(req.domain, &l.name, l.verdict.allowed);
                }
                match d.degraded {
                    Some(Degraded::FailOpen) => self.metrics.degraded("fail_open"),
                    Some(Degraded::LocalFallback) => self.metrics.degraded("local"),
                    None => {}
                }
                if !d.allowed && tracing::enabled!(tracing::Level::DEBUG) {
                    let limit = d.tightest().map(|l| &*l.name).unwrap_or("");
                    tracing::debug!(
                        door = door.as_str(),
                        domain = req.domain,
                        client = %fingerprint(&self.limiter, req),
                        limit,
                        "rejected"
                    );
                }
            }
            Err(LimitError::Store(e)) => {
                self.metrics.store_error(e.kind());
                tracing::warn!(door = door.as_str(), error = %e, "store failed");
            }
            Err(_) => {}
        }
        result
    }
}

/// A short, one-way fingerprint of a request's first descriptor for logs: enough to tell
/// clients apart, never the key itself (keyed like the counter tags, `limiter::TagKey`).
fn fingerprint(limiter: &Limiter, req: &LimitRequest<'_>) -> String {
    hex::encode(limiter.tag_key().fingerprint(req.descriptors.first()))
}

/// Bounds on what one descriptor may carry, so a message cannot make the limiter do unbounded
/// work.
pub const MAX_ENTRIES: usize = 32;
pub const MAX_ENTRY_LEN: usize = 1024;

/// Checks the entries of request descriptor `i` (at least one, at most [`MAX_ENTRIES`], keys
/// not empty, keys and values at most [`MAX_ENTRY_LEN`] bytes) and borrows them. The message
/// names the offending field, for an INVALID_ARGUMENT.
pub fn descriptor_entries<'a>(
    i: usize,
    entries: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Entry<'a>>, String> {
    if entries.len() == 0 {
        return Err(format!("descriptors[{i}] has no entries"));
    }
    if entries.len() > MAX_ENTRIES {
        return Err(format!(
            "descriptors[{i}] has more than {MAX_ENTRIES} entries"
        ));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (j, (key, value)) in entries.enumerate() {
        if key.is_empty() {
            return Err(format!("descriptors[{i}].entries[{j}].key is empty"));
        }
        if key.len() > MAX_ENTRY_LEN || value.len() > MAX_ENTRY_LEN {
            return Err(format!(
                "descriptors[{i}].entries[{j}] is longer than {MAX_ENTRY_LEN} bytes"
            ));
        }
        out.push(Entry::new(key, value));
    }
    Ok(out)
}

/// Checks an API key's shape: 1 to 256 visible ASCII characters.
pub fn validate_api_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the API key is empty".into());
    }
    if key.len() > MAX_API_KEY_LEN {
        return Err(format!(
            "the API key is longer than {MAX_API_KEY_LEN} characters"
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the API key must be visible ASCII characters only".into());
    }
    Ok(())
}

pub const MAX_API_KEY_LEN: usize = 256;
