//! Prometheus metrics. Handles for every label combination are resolved once (at start-up,
//! or the first time a configured limit is seen), so recording a decision is a few atomic
//! adds: no label lookup under a lock, no allocation on the hot path.
//!
//! Every label value is either fixed here (door, outcome, policy, error kind) or comes from
//! the configuration (domain, limit name, the config's digest); none comes from a request.
//! `docs/operations.md` lists each metric and bounds its series.

mod limits;
mod scrape;
mod values;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub use limits::LimitOutcome;
pub use scrape::{ReadValue, ScrapeGauge};

/// Latency buckets, in seconds: 50 µs to 1 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// The kinds of `ratelimiter_store_errors_total`: those of `StoreError::kind`, and `other`.
const STORE_ERROR_KINDS: [&str; 5] = ["full", "timeout", "unavailable", "protocol", "other"];

/// The front doors, as metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    Http = 0,
    Grpc = 1,
    RateLimitService = 2,
    ExtAuthz = 3,
}

impl Door {
    pub const ALL: [Door; 4] = [
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
    /// Allowed, but a shadow-mode limit would have rejected it.
    Shadow = 2,
    /// The store failed and the failure policy answered (`fail_open` or `local`).
    Degraded = 3,
    /// Bad input, unknown client, or a store failure answered with an error.
    Error = 4,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Allowed,
        Outcome::Rejected,
        Outcome::Shadow,
        Outcome::Degraded,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Rejected => "rejected",
            Outcome::Shadow => "shadow",
            Outcome::Degraded => "degraded",
            Outcome::Error => "error",
        }
    }
}

/// Which failure policy answered while the store was failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyUsed {
    FailOpen = 0,
    Local = 1,
    FailClosed = 2,
}

impl PolicyUsed {
    const ALL: [PolicyUsed; 3] = [
        PolicyUsed::FailOpen,
        PolicyUsed::Local,
        PolicyUsed::FailClosed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            PolicyUsed::FailOpen => "fail_open",
            PolicyUsed::Local => "local",
            PolicyUsed::FailClosed => "fail_closed",
        }
    }
}

/// The counters of configuration loads.
struct ConfigMetrics {
    /// `[trigger][success, failure]`.
    reloads: [[IntCounter; 2]; 3],
    last_success: Gauge,
    /// One series, labelled with the digest of the configuration in force.
    info: IntGaugeVec,
}

/// What asked for a reload, as the `trigger` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// SIGHUP.
    Signal = 0,
    /// The config watch saw the files change.
    Watch = 1,
    /// `POST /admin/reload`.
    Admin = 2,
}

impl ReloadTrigger {
    pub const ALL: [ReloadTrigger; 3] = [
        ReloadTrigger::Signal,
        ReloadTrigger::Watch,
        ReloadTrigger::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReloadTrigger::Signal => "sighup",
            ReloadTrigger::Watch => "watch",
            ReloadTrigger::Admin => "admin",
        }
    }
}

/// What happened on the TLS side of the public listeners, as the `event` label of
/// `ratelimiter_tls_events_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsEvent {
    /// A client's handshake failed (no certificate, one from another CA, not TLS at all…).
    HandshakeFailure = 0,
    /// A client did not finish its handshake within the header-read timeout.
    HandshakeTimeout = 1,
    /// New certificate files were put in force.
    ReloadSuccess = 2,
    /// Changed certificate files did not load; the old ones stay in force.
    ReloadFailure = 3,
}

impl TlsEvent {
    pub const ALL: [TlsEvent; 4] = [
        TlsEvent::HandshakeFailure,
        TlsEvent::HandshakeTimeout,
        TlsEvent::ReloadSuccess,
        TlsEvent::ReloadFailure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsEvent::HandshakeFailure => "handshake_failure",
            TlsEvent::HandshakeTimeout => "handshake_timeout",
            TlsEvent::ReloadSuccess => "reload_success",
            TlsEvent::ReloadFailure => "reload_failure",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    decisions: [[IntCounter; 5]; 4],
    latency: [Histogram; 4],
    limits: limits::LimitCounters,
    values: values::ValueCounters,
    store_errors: [IntCounter; 5],
    failure_policy: [IntCounter; 3],
    in_flight: IntGauge,
    config: ConfigMetrics,
    tls: [IntCounter; 4],
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let decisions_vec = IntCounterVec::new(
            Opts::new(
                "ratelimiter_decisions_total",
                "Decisions by front door and outcome (allowed, rejected, shadow, degraded, \
                 error).",
            ),
            &["door", "outcome"],
        )?;
        let latency_vec = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "ratelimiter_decision_duration_seconds",
                "Time to decide one request, from the front door's view.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["door"],
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "ratelimiter_store_errors_total",
                "Requests answered with an error because the store failed, by kind.",
            ),
            &["kind"],
        )?;
        let policy_vec = IntCounterVec::new(
            Opts::new(
                "ratelimiter_failure_policy_decisions_total",
                "Decisions taken by the failure policy (fail_open, local, fail_closed) \
                 because the store failed.",
            ),
            &["policy"],
        )?;
        let in_flight = IntGauge::new(
            "ratelimiter_in_flight_decisions",
            "Decisions being taken now, over every front door.",
        )?;
        let limits = limits::LimitCounters::new()?;
        let values = values::ValueCounters::new()?;
        let config = ConfigMetrics::new(&registry)?;
        let tls_vec = IntCounterVec::new(
            Opts::new(
                "ratelimiter_tls_events_total",
                "TLS on the public listeners: failed and timed-out client handshakes, and \
                 certificate reloads (success, failure: the old certificate stays).",
            ),
            &["event"],
        )?;
        registry.register(Box::new(tls_vec.clone()))?;
        registry.register(Box::new(decisions_vec.clone()))?;
        registry.register(Box::new(latency_vec.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        registry.register(Box::new(policy_vec.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(limits.collector())?;
        registry.register(values.collector())?;
        registry.register(Box::new(build_info()?))?;
        let decisions = Door::ALL.map(|d| {
            Outcome::ALL.map(|o| decisions_vec.with_label_values(&[d.as_str(), o.as_str()]))
        });
        let latency = Door::ALL.map(|d| latency_vec.with_label_values(&[d.as_str()]));
        let store_errors = STORE_ERROR_KINDS.map(|k| store_errors.with_label_values(&[k]));
        let failure_policy = PolicyUsed::ALL.map(|p| policy_vec.with_label_values(&[p.as_str()]));
        Ok(Metrics {
            registry,
            decisions,
            latency,
            limits,
            values,
            store_errors,
            failure_policy,
            in_flight,
            config,
            tls: TlsEvent::ALL.map(|e| tls_vec.with_label_values(&[e.as_str()])),
        })
    }

    /// Adds collectors owned elsewhere (a store's own counters) to `/metrics`.
    pub fn register(
        &self,
        c: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), prometheus::Error> {
        self.registry.register(c)
    }

    /// Adds a gauge read from `read` at every scrape.
    pub fn register_gauge(&self, opts: Opts, read: ReadValue) -> Result<(), prometheus::Error> {
        self.registry
            .register(Box::new(ScrapeGauge::new(opts, read)?))
    }

    pub fn record(&self, door: Door, outcome: Outcome, seconds: f64) {
        self.decisions[door as usize][outcome as usize].inc();
        self.latency[door as usize].observe(seconds);
    }

    /// Records one configured limit's verdict.
    pub fn limit(&self, door: Door, domain: &str, limit: &str, outcome: LimitOutcome) {
        self.limits.record(door, domain, limit, outcome);
    }

    /// Records a verdict of a limit whose descriptor sets `value_to_metric`, under the
    /// request's `descriptor` (capped per limit: see `values.rs`).
    pub fn descriptor_value(
        &self,
        domain: &str,
        limit: &str,
        descriptor: &str,
        outcome: LimitOutcome,
    ) {
        self.values.record(domain, limit, descriptor, outcome);
    }

    /// Counts a request answered with a store error of `kind` ([`StoreError::kind`]).
    ///
    /// [`StoreError::kind`]: crate::store::StoreError::kind
    pub fn store_error(&self, kind: &str) {
        let i = STORE_ERROR_KINDS.iter().position(|k| *k == kind);
        self.store_errors[i.unwrap_or(STORE_ERROR_KINDS.len() - 1)].inc();
    }

    pub fn failure_policy(&self, policy: PolicyUsed) {
        self.failure_policy[policy as usize].inc();
    }

    /// Counts a decision in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Records a configuration put in force (at start-up, or by a reload and what asked for
    /// it): its digest and the time, `unix_seconds`.
    pub fn config_loaded(&self, digest: &str, unix_seconds: f64, reload: Option<ReloadTrigger>) {
        self.config.loaded(digest, unix_seconds, reload);
    }

    /// Records a reload that was refused (the old configuration stays).
    pub fn reload_failed(&self, trigger: ReloadTrigger) {
        self.config.reloads[trigger as usize][1].inc();
    }

    /// Counts one TLS event.
    pub fn tls_event(&self, event: TlsEvent) {
        self.tls[event as usize].inc();
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

/// Keeps `ratelimiter_in_flight_decisions` up while a decision is taken.
pub struct InFlight<'a>(&'a IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ConfigMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "ratelimiter_config_reloads_total",
                "Configuration reloads by trigger (sighup, watch, admin) and result (success, failure: \
                 the old configuration stays).",
            ),
            &["trigger", "result"],
        )?;
        let last_success = Gauge::new(
            "ratelimiter_config_last_success_timestamp_seconds",
            "When the configuration in force was loaded (start-up or reload), Unix time.",
        )?;
        let info = IntGaugeVec::new(
            Opts::new(
                "ratelimiter_config_info",
                "Always 1; sha256 is the first 16 hex digits of the SHA-256 of the \
                 configuration files in force.",
            ),
            &["sha256"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(info.clone()))?;
        Ok(ConfigMetrics {
            reloads: ReloadTrigger::ALL.map(|t| {
                ["success", "failure"].map(|r| reloads.with_label_values(&[t.as_str(), r]))
            }),
            last_success,
            info,
        })
    }

    fn loaded(&self, digest: &str, unix_seconds: f64, reload: Option<ReloadTrigger>) {
        if let Some(trigger) = reload {
            self.reloads[trigger as usize][0].inc();
        }
        self.last_success.set(unix_seconds);
        // One series only: the digest in force.
        self.info.reset();
        self.info.with_label_values(&[digest]).set(1);
    }
}

/// `ratelimiter_build_info{version} 1`.
fn build_info() -> Result<IntGauge, prometheus::Error> {
    let gauge = IntGauge::with_opts(
        Opts::new(
            "ratelimiter_build_info",
            "Always 1; the version of the running binary.",
        )
        .const_label("version", env!("CARGO_PKG_VERSION")),
    )?;
    gauge.set(1);
    Ok(gauge)
}
