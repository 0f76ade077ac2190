//! `POST /check` and the HTTP endpoints, against the real binary on free ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{BASIC, Service, config_dir, metrics};
use reqwest::StatusCode;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn check(svc: &Service, key: Option<&str>, query: &str) -> reqwest::Response {
    let mut req = client().post(svc.url(&format!("/check{query}")));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn quota_then_429_with_headers_and_body() {
    let dir = config_dir("http-quota", &[("service.yaml", BASIC)]);
    let svc = Service::start(&dir, &[]);
    for i in 0..5 {
        let r = check(&svc, Some("k1"), "").await;
        assert_eq!(r.status(), StatusCode::OK, "request {i}");
        let policy = r.headers()["ratelimit-policy"].to_str().unwrap().to_owned();
        assert_eq!(policy, r#""small";q=5;w=3600"#);
        let rl = r.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            rl.starts_with(&format!(r#""small";r={};t="#, 4 - i)),
            "{rl}"
        );
        assert!(r.headers().get("retry-after").is_none());
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["allowed"], true);
        assert_eq!(body["limit"], 5);
        assert_eq!(body["remaining"], 4 - i);
        assert_eq!(body["policy"], "small");
        assert_eq!(body["retry_after"], 0.0);
    }
    let r = check(&svc, Some("k1"), "").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // One token comes back every 720 s.
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((700..=720).contains(&retry), "retry-after {retry}");
    assert!(r.headers()["ratelimit"].to_str().unwrap().contains(";r=0;"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["allowed"], false);
    assert_eq!(body["remaining"], 0);
    let retry = body["retry_after"].as_f64().unwrap();
    assert!(retry > 700.0 && retry <= 720.0, "{retry}");
    // Another key has its own counter.
    assert_eq!(check(&svc, Some("k2"), "").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn cost_from_header_and_query() {
    let dir = config_dir("http-cost", &[("service.yaml", BASIC)]);
    let svc = Service::start(&dir, &[]);
    let r = check(&svc, Some("k1"), "?cost=3").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["remaining"], 2);
    let r = client()
        .post(svc.url("/check"))
        .header("x-api-key", "k1")
        .header("x-ratelimit-cost", "3")
        .send()
        .await
        .unwrap();
    // 2 left, cost 3: rejected and nothing consumed.
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = check(&svc, Some("k1"), "?cost=2").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["remaining"], 0);
}

#[tokio::test]
async fn cost_above_capacity_is_never_admitted() {
    let dir = config_dir("http-capacity", &[("service.yaml", BASIC)]);
    let svc = Service::start(&dir, &[]);
    let r = check(&svc, Some("k1"), "?cost=6").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        r.headers().get("retry-after").is_none(),
        "no retry can help"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["retry_after"], serde_json::Value::Null);
    assert!(body["reason"].as_str().unwrap().contains("exceeds"));
    // Nothing was consumed.
    let r = check(&svc, Some("k1"), "?cost=5").await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_inputs_get_clear_errors() {
    let dir = config_dir("http-bad", &[("service.yaml", BASIC)]);
    let svc = Service::start(&dir, &[]);
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            client().post(svc.url("/check")),
            StatusCode::BAD_REQUEST,
            "missing X-API-Key",
        ),
        (
            client().post(svc.url("/check")).header("x-api-key", ""),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            client()
                .post(svc.url("/check"))
                .header("x-api-key", "a".repeat(300)),
            StatusCode::BAD_REQUEST,
            "longer than 256",
        ),
        (
            client()
                .post(svc.url("/check"))
                .header("x-api-key", "with space"),
            StatusCode::BAD_REQUEST,
            "visible ASCII",
        ),
        (
            client()
                .post(svc.url("/check"))
                .header("x-api-key", "k1")
                .header("x-api-key", "k2"),
            StatusCode::BAD_REQUEST,
            "more than one",
        ),
        (
            client().post(svc.url("/check")).header("x-api-key", "nope"),
            StatusCode::UNAUTHORIZED,
            "unknown API key",
        ),
        (
            client()
                .post(svc.url("/check?cost=0"))
                .header("x-api-key", "k1"),
            StatusCode::BAD_REQUEST,
            "at least 1",
        ),
        (
            client()
                .post(svc.url("/check?cost=-1"))
                .header("x-api-key", "k1"),
            StatusCode::BAD_REQUEST,
            "positive whole number",
        ),
        (
            client()
                .post(svc.url("/check?cost=abc"))
                .header("x-api-key", "k1"),
            StatusCode::BAD_REQUEST,
            "positive whole number",
        ),
        (
            client()
                .post(svc.url("/check?cost=1.5"))
                .header("x-api-key", "k1"),
            StatusCode::BAD_REQUEST,
            "positive whole number",
        ),
        (
            client()
                .post(svc.url("/check?cost=99999999999999999999999"))
                .header("x-api-key", "k1"),
            StatusCode::BAD_REQUEST,
            "too large",
        ),
        (
            client()
                .post(svc.url("/check?cost=1001"))
                .header("x-api-key", "k1"),
            StatusCode::BAD_REQUEST,
            "exceeds the maximum of 1000",
        ),
        (
            client()
                .post(svc.url("/check?cost=2"))
                .header("x-api-key", "k1")
                .header("x-ratelimit-cost", "3"),
            StatusCode::BAD_REQUEST,
            "disagree",
        ),
        (
            client()
                .post(svc.url("/check"))
                .header("x-api-key", "k1")
                .body(vec![b'x'; 100 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
    ];
    for (req, status, message) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status, "expected {status} for {message}");
        let body: serde_json::Value = r.json().await.unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(message),
            "{error:?} should mention {message:?}"
        );
    }
    // A huge header is refused by the HTTP layer without harming the server.
    let r = client()
        .post(svc.url("/check"))
        .header("x-api-key", "k1")
        .header("x-junk", "j".repeat(1024 * 1024))
        .send()
        .await;
    if let Ok(r) = r {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    // Wrong method and unknown path.
    assert_eq!(
        client()
            .get(svc.url("/check"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        client()
            .post(svc.url("/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    // None of the bad requests consumed quota, and the server is still fine.
    let r = check(&svc, Some("k1"), "").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["remaining"], 4);
}

#[tokio::test]
async fn unknown_keys_can_get_a_default_tier() {
    let cfg = r#"
clients:
  unknown_key: guest
  tiers:
    guest: [ { name: guest, limit: 2, window: 1h } ]
  keys: []
"#;
    let dir = config_dir("http-guest", &[("service.yaml", cfg)]);
    let svc = Service::start(&dir, &[]);
    for _ in 0..2 {
        assert_eq!(
            check(&svc, Some("stranger"), "").await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        check(&svc, Some("stranger"), "").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Each unknown key gets its own guest counter.
    assert_eq!(
        check(&svc, Some("another"), "").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn several_limits_on_one_key_are_all_or_nothing() {
    let cfg = r#"
clients:
  tiers:
    two:
      - { name: per-hour, limit: 3, window: 1h }
      - { name: per-day, limit: 4, window: 1d }
  keys:
    - { key: k, tier: two }
"#;
    let dir = config_dir("http-two", &[("service.yaml", cfg)]);
    let svc = Service::start(&dir, &[]);
    let r = check(&svc, Some("k"), "?cost=2").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["ratelimit-policy"].to_str().unwrap(),
        r#""per-hour";q=3;w=3600, "per-day";q=4;w=86400"#
    );
    // The tightest is per-hour (1 left).
    assert!(
        r.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(r#""per-hour";r=1;"#)
    );
    // Cost 2: per-hour has 1 left, so it rejects, and per-day must not be charged either.
    assert_eq!(
        check(&svc, Some("k"), "?cost=2").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let r = check(&svc, Some("k"), "").await;
    assert_eq!(r.status(), StatusCode::OK);
    // per-day: 4 - 2 - 1 = 1 left; a rejected request consumed nothing.
    let r2 = check(&svc, Some("k"), "").await;
    assert_eq!(r2.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = r2.json().await.unwrap();
    assert_eq!(body["policy"], "per-hour");
}

#[tokio::test]
async fn x_ratelimit_headers_behind_a_switch() {
    let cfg = BASIC.replace("max_cost: 1000", "max_cost: 1000\n  headers: x-ratelimit");
    let dir = config_dir("http-x", &[("service.yaml", &cfg)]);
    let svc = Service::start(&dir, &[]);
    let r = check(&svc, Some("k1"), "").await;
    assert_eq!(r.headers()["x-ratelimit-limit"], "5");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "4");
    assert!(r.headers().get("x-ratelimit-reset").is_some());
    assert!(r.headers().get("ratelimit").is_none());
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let dir = config_dir("http-meta", &[("service.yaml", BASIC)]);
    // At debug level a rejection is logged, so the check below that the key is absent from
    // the logs has lines about this very key to look at.
    let svc = Service::start_with_log_filter(&dir, &[], "ratelimiter=debug");
    assert_eq!(
        client()
            .get(svc.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        client()
            .get(svc.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    for _ in 0..6 {
        check(&svc, Some("k1"), "").await;
    }
    check(&svc, None, "").await;
    let text = metrics(&client(), &svc.url("/metrics")).await;
    assert!(
        text.contains(r#"ratelimiter_decisions_total{door="http",outcome="allowed"} 5"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ratelimiter_decisions_total{door="http",outcome="rejected"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ratelimiter_decision_duration_seconds_count{door="http"} 6"#),
        "{text}"
    );
    // API keys never appear in metrics or logs.
    assert!(!text.contains("k1"));
    let mut logs = String::new();
    for _ in 0..250 {
        logs = svc.logs();
        if logs.contains("\"rejected\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        logs.contains("\"rejected\""),
        "k1's rejection was logged:\n{logs}"
    );
    assert!(!logs.contains("k1"), "{logs}");
}

#[tokio::test]
async fn cost_is_digits_only_given_once_and_percent_decoded() {
    let dir = config_dir("http-cost-edges", &[("service.yaml", BASIC)]);
    let svc = Service::start(&dir, &[]);
    for query in ["?cost=+5", "?cost=%2B5", "?cost=5%20", "?cost=-1"] {
        let r = check(&svc, Some("k1"), query).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{query}");
        let body = r.json::<serde_json::Value>().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("cost"), "{body}");
    }
    let r = client()
        .post(svc.url("/check"))
        .header("x-api-key", "k1")
        .header("x-ratelimit-cost", "1")
        .header("x-ratelimit-cost", "4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "two cost headers");
    // `%33` is `3`: the query is decoded as any HTTP framework decodes it.
    let r = check(&svc, Some("k1"), "?cost=%33").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["remaining"], 2);
    // Nothing above was charged but that one request of cost 3.
    let r = check(&svc, Some("k1"), "?cost=2").await;
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["remaining"], 0);
}

#[tokio::test]
async fn without_a_client_table_every_key_gets_401() {
    let envoy_only = "domain: ratelimiter\ndescriptors:\n  - key: generic_key\n    value: g\n    rate_limit: { unit: hour, requests_per_unit: 10 }\n";
    let dir = config_dir("http-no-clients", &[("edge.yaml", envoy_only)]);
    let svc = Service::start(&dir, &[]);
    for key in ["k1", "anything"] {
        let r = check(&svc, Some(key), "").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{key}");
    }
}

async fn report(svc: &Service, key: &str, query: &str) -> reqwest::Response {
    client()
        .post(svc.url(&format!("/report{query}")))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn report_records_usage_past_the_limit_and_later_checks_wait_for_the_debt() {
    let dir = config_dir("http-report", &[("service.yaml", BASIC)]);
    let svc = Service::start(&dir, &[]);
    // Within the limit: recorded, allowed, the same body and headers as /check.
    let r = report(&svc, "k1", "?cost=3").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["ratelimit-policy"], r#""small";q=5;w=3600"#);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["allowed"], true);
    assert_eq!(body["remaining"], 2);
    // Past it (4 with 2 left): still 200 and recorded, but the client is now over its limit.
    let r = client()
        .post(svc.url("/report"))
        .header("x-api-key", "k1")
        .header("x-ratelimit-cost", "4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["ratelimit"].to_str().unwrap().contains(";r=0;"));
    // Back within the limit once the debt of 2 is repaid: 2 × 720 s.
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1400..=1440).contains(&retry), "retry-after {retry}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["allowed"], false);
    assert_eq!(body["remaining"], 0, "charged anyway: nothing remains");
    // 7 used of a 5-per-hour bucket (one back every 720 s): a request of 1 fits once the debt
    // of 2 and its own token are back, 3 × 720 s = 2160 s from now.
    let r = check(&svc, Some("k1"), "").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((2100..=2160).contains(&retry), "retry-after {retry}");
    // A report is validated as /check is.
    assert_eq!(
        report(&svc, "k1", "?cost=0").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        report(&svc, "nope", "").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = client().post(svc.url("/report")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// Upstream README's `/json` example domain: `one_per_day` and `two_per_minute`.
const JSON_DOMAIN: &str = r#"
domain: dummy
descriptors:
  - key: one_per_minute
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: two_per_minute
    rate_limit: { unit: minute, requests_per_unit: 2 }
"#;

/// envoyproxy/ratelimit's `POST /json`: the request and answer in protobuf's JSON mapping,
/// 200 or 429, and its `GET /healthcheck`.
#[tokio::test]
async fn upstream_json_door_answers_as_upstream_does() {
    let dir = config_dir(
        "http-json",
        &[("service.yaml", BASIC), ("dummy.yaml", JSON_DOMAIN)],
    );
    let svc = Service::start(&dir, &[]);
    let post = |body: &str| {
        client()
            .post(svc.url("/json"))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    let both = r#"{"domain": "dummy", "descriptors": [
        {"entries": [{"key": "one_per_minute", "value": "something"}]},
        {"entries": [{"key": "two_per_minute", "value": "something"}]}]}"#;
    let r = post(both).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["overallCode"], "OK");
    assert_eq!(
        body["statuses"][0]["currentLimit"],
        serde_json::json!({"name": "1-per-1m", "requestsPerUnit": 1, "unit": "MINUTE"})
    );
    assert_eq!(body["statuses"][1]["limitRemaining"], 1);
    assert_eq!(
        body["statuses"][0].get("limitRemaining"),
        None,
        "0 is left out"
    );
    assert!(
        body["statuses"][0]["durationUntilReset"]
            .as_str()
            .unwrap()
            .ends_with('s')
    );

    let r = post(both).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["overallCode"], "OVER_LIMIT");
    assert_eq!(body["statuses"][0]["code"], "OVER_LIMIT");
    assert_eq!(body["statuses"][1]["code"], "OK");

    // Proto field names are accepted too; unknown fields and bad shapes are 400 with a reason.
    let snake = r#"{"domain": "dummy", "hits_addend": 1, "descriptors": [{"entries": [{"key": "two_per_minute", "value": "other"}]}]}"#;
    assert_eq!(post(snake).await.unwrap().status(), StatusCode::OK);
    for bad in [
        r#"{"domain": "dummy", "descriptors": [], "colour": 1}"#,
        r#"{"domain": "dummy", "descriptors": []}"#,
        r#"{"descriptors": [{"entries": [{"key": "a", "value": "b"}]}]}"#,
        "not json",
    ] {
        let r = post(bad).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(!body["error"].as_str().unwrap().is_empty(), "{bad}: {body}");
    }
    let huge = format!(r#"{{"domain": "{}"}}"#, "x".repeat(100_000));
    assert_eq!(
        post(&huge).await.unwrap().status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );

    let r = client().get(svc.url("/healthcheck")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
