//! Logs and traces: the `tracing` subscriber (text or JSON logs filtered by
//! `RATELIMITER_LOG`) and, when an OTLP endpoint is given, OpenTelemetry traces: a span per
//! decision (a child of the caller's `traceparent`) and a child span per Redis call,
//! exported over OTLP/HTTP in batches from a thread of their own.
//!
//! The spans are `tracing` spans of the target [`SPAN_TARGET`], which the log layer never
//! records: without an OTLP endpoint no layer wants them, so creating one is a no-op on the
//! hot path.

mod context;
mod throttle;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::prelude::*;

pub use context::{MAX_REQUEST_ID_LEN, TraceContext, Traceparent, traceparent};
pub use throttle::LogThrottle;

/// The target of the spans exported as traces (never logged).
pub const SPAN_TARGET: &str = "ratelimiter::span";

/// Where and how much to trace.
#[derive(Clone, Debug)]
pub struct TracingOptions {
    /// The OTLP/HTTP endpoint's base URL (`http://collector:4318`); `None`: no traces.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces sampled, 0 to 1; a caller's sampled flag is followed.
    pub sampling_rate: f64,
    /// The `service.name` of the spans.
    pub service_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("tracing: the sampling rate must be between 0 and 1, not {0}")]
    SamplingRate(f64),
    #[error("tracing: cannot set up the OTLP exporter: {0}")]
    Exporter(String),
    #[error("logging: {0}")]
    Filter(String),
}

/// Flushes and stops the trace exporter when dropped (at exit).
pub struct TracesGuard(Option<SdkTracerProvider>);

impl Drop for TracesGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("tracing: shutdown: {e}");
        }
    }
}

/// Installs the global subscriber: logs (JSON when `json`) and, if configured, traces. Must
/// run outside the Tokio runtime (the exporter's HTTP client blocks on a thread of its own).
pub fn init(
    json: bool,
    fallback_filter: Option<&str>,
    tracing: &TracingOptions,
) -> Result<TracesGuard, TelemetryError> {
    let provider = tracing
        .otlp_endpoint
        .as_deref()
        .map(|endpoint| tracer_provider(endpoint, tracing))
        .transpose()?;
    subscriber(json, fallback_filter, provider.as_ref())?.init();
    Ok(TracesGuard(provider))
}

/// The logs layer, and the traces layer, which wants the spans of [`SPAN_TARGET`] only when
/// there is a `provider`: without one, no layer wants them and they are never created.
/// Logs are filtered by `RATELIMITER_LOG`, else `fallback_filter` (envoyproxy/ratelimit's
/// `LOG_LEVEL`), else `info`.
fn subscriber(
    json: bool,
    fallback_filter: Option<&str>,
    provider: Option<&SdkTracerProvider>,
) -> Result<impl tracing::Subscriber + Send + Sync, TelemetryError> {
    let fallback = || fallback_filter.and_then(|f| EnvFilter::try_new(f).ok());
    let filter = EnvFilter::try_from_env("RATELIMITER_LOG")
        .ok()
        .or_else(fallback)
        .unwrap_or_else(|| EnvFilter::new("info"))
        .add_directive(
            format!("{SPAN_TARGET}=off")
                .parse()
                .map_err(|e| TelemetryError::Filter(format!("{e}")))?,
        );
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_filter(filter).boxed()
    };
    let spans = match provider {
        Some(_) => Targets::new().with_target(SPAN_TARGET, tracing::Level::INFO),
        None => Targets::new(),
    };
    let traces = provider
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("ratelimiter")))
        .with_filter(spans);
    Ok(tracing_subscriber::registry().with(logs).with(traces))
}

fn tracer_provider(
    endpoint: &str,
    options: &TracingOptions,
) -> Result<SdkTracerProvider, TelemetryError> {
    let rate = options.sampling_rate;
    if !(0.0..=1.0).contains(&rate) {
        return Err(TelemetryError::SamplingRate(rate));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(options.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            rate,
        ))))
        .with_resource(resource)
        .build())
}

/// The OpenTelemetry context of the caller's span, from its `traceparent`.
pub fn remote_parent(t: &Traceparent<'_>) -> Option<opentelemetry::Context> {
    let trace_id = TraceId::from_hex(t.trace_id).ok()?;
    let span_id = SpanId::from_hex(t.parent_id).ok()?;
    let span = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(t.flags),
        true,
        TraceState::default(),
    );
    Some(opentelemetry::Context::new().with_remote_span_context(span))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn decision_span_enabled(provider: Option<&SdkTracerProvider>) -> bool {
        let subscriber = subscriber(true, None, provider).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            !tracing::info_span!(target: SPAN_TARGET, "ratelimiter.decide").is_disabled()
        })
    }

    #[test]
    fn spans_exist_only_when_traces_are_exported() {
        assert!(
            !decision_span_enabled(None),
            "a span without an OTLP endpoint"
        );
        let provider = SdkTracerProvider::builder().build();
        assert!(decision_span_enabled(Some(&provider)));
    }
}
