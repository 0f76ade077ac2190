//! OpenTelemetry traces against a REAL collector: the binary with `--tracing-otlp-endpoint`
//! sends its spans to a real Jaeger v2 over OTLP/HTTP, and Jaeger's query API gives them
//! back. A decision's span is a child of the caller's span (from `traceparent`), a Redis call
//! a child of the decision; a caller that did not sample its trace gets none recorded; and
//! no span carries the API key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::jaeger::Jaeger;
use common::redis::RedisServer;
use common::{Service, config_dir, temp_dir};

const KEY: &str = "SeCrEt-trace-key-91ab";

const CONFIG: &str = r#"
clients:
  tiers:
    t: [ { name: per-hour, limit: 100, window: 1h } ]
  keys:
    - { key: SeCrEt-trace-key-91ab, tier: t }
"#;

const SAMPLED: &str = "0af7651916cd43dd8448eb211c80319c";
const NOT_SAMPLED: &str = "1bf7651916cd43dd8448eb211c80319d";
const CALLER_SPAN: &str = "b7ad6b7169203331";

/// The spans of `trace_id`, once Jaeger has `n` of them (or after `within`).
async fn spans(
    jaeger: &Jaeger,
    trace_id: &str,
    n: usize,
    within: Duration,
) -> Vec<serde_json::Value> {
    let started = Instant::now();
    loop {
        let spans = jaeger.spans(trace_id).await;
        if spans.len() >= n || started.elapsed() > within {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn named<'a>(spans: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    spans
        .iter()
        .find(|s| s["operationName"] == name)
        .unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
}

fn parent_of(span: &serde_json::Value) -> &str {
    span["references"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
        .and_then(|r| r["spanID"].as_str())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_and_redis_spans_reach_a_real_jaeger_under_the_callers_span() {
    let jaeger = Jaeger::start(&temp_dir("obs-jaeger")).await;
    let redis = RedisServer::start();
    let dir = config_dir("obs-traces", &[("service.yaml", CONFIG)]);
    let endpoint = jaeger.otlp_endpoint();
    let svc = Service::start(
        &dir,
        &[
            "--redis-url",
            &redis.url(),
            "--tracing-otlp-endpoint",
            &endpoint,
            "--tracing-sampling-rate",
            "1",
        ],
    );
    let client = reqwest::Client::new();
    for (trace_id, flags) in [(SAMPLED, "01"), (NOT_SAMPLED, "00")] {
        let status = client
            .post(svc.url("/check"))
            .header("x-api-key", KEY)
            .header(
                "traceparent",
                format!("00-{trace_id}-{CALLER_SPAN}-{flags}"),
            )
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }

    // The batch exporter sends every 5 s by default.
    let got = spans(&jaeger, SAMPLED, 2, Duration::from_secs(30)).await;
    let decision = named(&got, "ratelimiter.decide");
    let redis_call = named(&got, "redis.decide");
    assert_eq!(parent_of(decision), CALLER_SPAN, "{decision:#}");
    assert_eq!(parent_of(redis_call), decision["spanID"], "{redis_call:#}");
    let text = serde_json::to_string(&got).unwrap();
    assert!(
        text.contains(r#""door""#) && text.contains(r#""outcome""#),
        "{text}"
    );
    assert!(!text.contains(KEY), "a span carries the key: {text}");

    // Both requests were answered before the export that brought the sampled trace, so an
    // unsampled span would have come with it.
    let unsampled = spans(&jaeger, NOT_SAMPLED, 1, Duration::from_secs(2)).await;
    assert!(
        unsampled.is_empty(),
        "an unsampled caller's trace was recorded: {unsampled:#?}"
    );
}
