//! Prometheus metrics. Handles for every label combination are resolved once, at start-up,
//! so recording a decision is a few atomic adds: no label lookup, no lock on the hot path.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The front doors, as metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    Http = 0,
    Grpc = 1,
    RateLimitService = 2,
    ExtAuthz = 3,
}

impl Door {
    const ALL: [Door; 4] = [
        Door::Http,
        Door::Grpc,
        Door::RateLimitService,
        Door::ExtAuthz,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Door::Http => "http",
            Door::Grpc => "grpc",
            Door::RateLimitService => "ratelimit_service",
            Door::ExtAuthz => "ext_authz",
        }
    }
}

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed = 0,
    Rejected = 1,
    /// Bad input, unknown client or store failure.
    Error = 2,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Allowed, Outcome::Rejected, Outcome::Error];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Rejected => "rejected",
            Outcome::Error => "error",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    decisions: [[IntCounter; 3]; 4],
    latency: [Histogram; 4],
    store_errors: IntCounterVec,
    degraded: IntCounterVec,
    detailed: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let decisions_vec = IntCounterVec::new(
            Opts::new(
                "ratelimiter_decisions_total",
                "Decisions by front door and outcome.",
            ),
            &["door", "outcome"],
        )?;
        let latency_vec = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "ratelimiter_decision_duration_seconds",
                "Time to decide one request, from the front door's view.",
            )
            .buckets(vec![
                0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
                0.025, 0.05, 0.1, 0.25,
            ]),
            &["door"],
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new("ratelimiter_store_errors_total", "Store failures by kind."),
            &["kind"],
        )?;
        let degraded = IntCounterVec::new(
            Opts::new(
                "ratelimiter_degraded_decisions_total",
                "Decisions taken by the failure policy instead of the store.",
            ),
            &["policy"],
        )?;
        // Labelled by configured names only (never by request values), so cardinality is
        // bounded by the configuration.
        let detailed = IntCounterVec::new(
            Opts::new(
                "ratelimiter_limit_decisions_total",
                "Per-limit verdicts, for descriptors with detailed_metric: true.",
            ),
            &["domain", "limit", "outcome"],
        )?;
        registry.register(Box::new(detailed.clone()))?;
        registry.register(Box::new(decisions_vec.clone()))?;
        registry.register(Box::new(latency_vec.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        registry.register(Box::new(degraded.clone()))?;
        let decisions = Door::ALL.map(|d| {
            Outcome::ALL.map(|o| decisions_vec.with_label_values(&[d.as_str(), o.as_str()]))
        });
        let latency = Door::ALL.map(|d| latency_vec.with_label_values(&[d.as_str()]));
        Ok(Metrics {
            registry,
            decisions,
            latency,
            store_errors,
            degraded,
            detailed,
        })
    }

    /// Adds collectors owned elsewhere (a store's own counters) to `/metrics`.
    pub fn register(
        &self,
        c: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), prometheus::Error> {
        self.registry.register(c)
    }

    pub fn record(&self, door: Door, outcome: Outcome, seconds: f64) {
        self.decisions[door as usize][outcome as usize].inc();
        self.latency[door as usize].observe(seconds);
    }

    /// Records one limit's verdict for a descriptor with `detailed_metric: true`.
    pub fn detailed(&self, domain: &str, limit: &str, allowed: bool) {
        let outcome = if allowed { "allowed" } else { "rejected" };
        self.detailed
            .with_label_values(&[domain, limit, outcome])
            .inc();
    }

    pub fn store_error(&self, kind: &str) {
        self.store_errors.with_label_values(&[kind]).inc();
    }

    pub fn degraded(&self, policy: &str) {
        self.degraded.with_label_values(&[policy]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
