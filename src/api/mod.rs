//! The front doors. Each one only translates its wire format into one
//! [`Limiter::decide_with`](crate::limiter::Limiter::decide_with) call and the answer back.
//! What an answer holds (headers, body, the status of each kind of refusal) is decided once,
//! in [`response`]; each door only writes it in its wire format.

pub mod admin;
mod dynamic_metadata;
pub mod ext_authz;
pub mod grpc;
pub mod http;
mod json;
pub mod ratelimit_service;
pub mod response;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::FailurePolicy;
use crate::limiter::{
    Decision, Degraded, Descriptor, Entry, LimitError, LimitRequest, Limiter, MetricLevel, Rules,
};
use crate::metrics::{Door, LimitOutcome, Metrics, Outcome, PolicyUsed};
use crate::telemetry::{LogThrottle, SPAN_TARGET, TraceContext, remote_parent};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// What every front door shares.
pub struct AppState {
    pub limiter: Arc<Limiter>,
    pub metrics: Arc<Metrics>,
    /// False until the servers run, and again from the moment shutdown begins.
    pub ready: AtomicBool,
    /// The configuration in force, redacted (`admin::redacted_config`), for the admin API.
    loaded_config: ArcSwap<serde_json::Value>,
    /// Store-failure warnings: at most one a second during an outage.
    store_failures: LogThrottle,
}

impl AppState {
    pub fn new(limiter: Arc<Limiter>, metrics: Arc<Metrics>) -> Self {
        AppState {
            limiter,
            metrics,
            ready: AtomicBool::new(false),
            loaded_config: ArcSwap::from_pointee(serde_json::Value::Null),
            store_failures: LogThrottle::new(std::time::Duration::from_secs(1)),
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
        trace: TraceContext<'_>,
    ) -> Result<Decision, LimitError> {
        let in_flight = self.metrics.in_flight();
        let started = Instant::now();
        let span = decision_span(door, trace);
        let decided = self.limiter.decide_with(rules, req);
        // Without tracing the span is disabled: no wrapper around the decision then.
        let result = if span.is_disabled() {
            decided.await
        } else {
            decided.instrument(span.clone()).await
        };
        drop(in_flight);
        let outcome = outcome(&result);
        self.metrics
            .record(door, outcome, started.elapsed().as_secs_f64());
        span.record("outcome", outcome.as_str());
        match &result {
            Ok(d) => self.record_decision(door, req, d, trace),
            Err(LimitError::Store(e)) => {
                self.metrics.store_error(e.kind());
                if e.is_transient() && rules.settings.on_store_failure == FailurePolicy::FailClosed
                {
                    self.metrics.failure_policy(PolicyUsed::FailClosed);
                }
                if let Some(held_back) = self.store_failures.admit() {
                    tracing::warn!(
                        door = door.as_str(),
                        request_id = trace.request_id(),
                        trace_id = trace.trace_id(),
                        error = %e,
                        held_back,
                        "store failed"
                    );
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Per-limit counters, the failure policy's use, and a debug line per rejection.
    fn record_decision(
        &self,
        door: Door,
        req: &LimitRequest<'_>,
        d: &Decision,
        trace: TraceContext<'_>,
    ) {
        for l in &d.limits {
            let outcome = match (l.verdict.allowed, l.shadow) {
                (true, _) => LimitOutcome::Allowed,
                (false, false) => LimitOutcome::Rejected,
                (false, true) => LimitOutcome::Shadow,
            };
            self.metrics.limit(door, req.domain, &l.name, outcome);
            if let (Some(levels), Some(d)) = (&l.metric_levels, req.descriptors.get(l.descriptor)) {
                let label = metric_descriptor(d, levels);
                self.metrics
                    .descriptor_value(req.domain, &l.name, &label, outcome);
            }
        }
        match d.degraded {
            Some(Degraded::FailOpen) => self.metrics.failure_policy(PolicyUsed::FailOpen),
            Some(Degraded::LocalFallback) => self.metrics.failure_policy(PolicyUsed::Local),
            None => {}
        }
        if !d.allowed && tracing::enabled!(tracing::Level::DEBUG) {
            let limit = d.tightest().map(|l| &*l.name).unwrap_or("");
            tracing::debug!(
                door = door.as_str(),
                domain = req.domain,
                client = %fingerprint(&self.limiter, req),
                limit,
                request_id = trace.request_id(),
                trace_id = trace.trace_id(),
                "rejected"
            );
        }
    }
}

/// The span of one decision (exported only when tracing is on), a child of the caller's
/// span when the request carried a `traceparent`.
fn decision_span(door: Door, trace: TraceContext<'_>) -> tracing::Span {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "ratelimiter.decide",
        otel.kind = "server",
        door = door.as_str(),
        outcome = tracing::field::Empty,
    );
    if !span.is_disabled()
        && let Some(parent) = trace.traceparent.as_ref().and_then(remote_parent)
    {
        let _ = span.set_parent(parent);
    }
    span
}

/// The outcome label of a decision.
fn outcome(result: &Result<Decision, LimitError>) -> Outcome {
    match result {
        Ok(d) if d.degraded.is_some() => Outcome::Degraded,
        Ok(d)
            if d.shadowed
                || d.allowed && d.limits.iter().any(|l| l.shadow && !l.verdict.allowed) =>
        {
            Outcome::Shadow
        }
        Ok(d) if d.allowed => Outcome::Allowed,
        Ok(_) => Outcome::Rejected,
        Err(_) => Outcome::Error,
    }
}

/// The request id and trace id of a gRPC call, from its metadata.
pub fn trace_of(metadata: &tonic::metadata::MetadataMap) -> TraceContext<'_> {
    TraceContext::from_headers(|name| metadata.get(name).and_then(|v| v.to_str().ok()))
}

/// A descriptor as envoyproxy/ratelimit's `value_to_metric` writes it in a stats key:
/// `key_value` or `key` per level, joined by dots.
fn metric_descriptor(d: &Descriptor<'_>, levels: &[MetricLevel]) -> String {
    let parts = d.entries.iter().zip(levels).map(|(e, level)| match level {
        MetricLevel::Key => e.key.to_owned(),
        MetricLevel::KeyValue => format!("{}_{}", e.key, e.value),
        MetricLevel::KeyPattern(pattern) => format!("{}_{pattern}", e.key),
    });
    parts.collect::<Vec<_>>().join(".")
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
