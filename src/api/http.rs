//! The HTTP front door (axum): `POST /check`, `POST /report`, `GET /metrics`, `GET /healthz`,
//! `GET /readyz`, and envoyproxy/ratelimit's `POST /json` (`json.rs`) and `GET /healthcheck`
//! (the same answer as `/readyz`).
//!
//! `POST /check` takes the API key from `X-API-Key` and an optional cost from the
//! `X-RateLimit-Cost` header or the `cost` query parameter, and answers 200 (allowed) or 429
//! (rejected) with a small JSON body and the rate-limit headers. `POST /report` takes the same
//! inputs for usage that already happened (limitador's `report`): the cost is recorded
//! whatever the verdict, into debt if need be, and the answer is 200 with the same body and
//! headers, `allowed: false` when the client is now over its limit. Every error is mapped to
//! a status by [`Refusal`](super::response::Refusal), the one place that does so.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::response::{self, Answer, Refusal};
use super::{AppState, validate_api_key};
use crate::config::FailurePolicy;
use crate::limiter::{Decision, LimitRequest};
use crate::metrics::Door;
use crate::telemetry::TraceContext;

/// Bodies are not read by `/check`; one announced as larger than this is refused with 413,
/// as is a larger `/json` body.
const MAX_BODY: u64 = 64 * 1024;

/// The HTTP router over shared state.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/check", post(check))
        .route("/report", post(report))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // envoyproxy/ratelimit's paths: its HTTP door and its health check (ready or not).
        .route(
            "/json",
            post(super::json::json).layer(DefaultBodyLimit::max(MAX_BODY as usize)),
        )
        .route("/healthcheck", get(readyz))
        .with_state(state)
}

async fn check(State(state): State<Arc<AppState>>, uri: Uri, headers: HeaderMap) -> Response {
    match decide(&state, &uri, &headers, Answer::Check).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn report(State(state): State<Arc<AppState>>, uri: Uri, headers: HeaderMap) -> Response {
    match decide(&state, &uri, &headers, Answer::Report).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// `POST /check` or `POST /report`: the key and cost from the request, one decision, the
/// answer for its kind.
async fn decide(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    answer: Answer,
) -> Result<Response, Refusal> {
    if let Some(len) = headers.get("content-length") {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        if len > MAX_BODY {
            return Err(Refusal::PayloadTooLarge(format!(
                "request body larger than {MAX_BODY} bytes"
            )));
        }
    }
    let key = api_key(headers)?;
    let cost = cost(uri, headers)?;
    let trace = TraceContext::from_headers(|n| headers.get(n).and_then(|v| v.to_str().ok()));

    let rules = state.limiter.rules();
    let mut req = LimitRequest::for_api_key(&rules.settings.default_domain, key, cost);
    req.post_paid = answer == Answer::Report;
    let decision = state
        .decide(Door::Http, &rules, &req, trace)
        .await
        .map_err(Refusal::from)?;
    Ok(render(&decision, answer, rules.settings.headers))
}

/// The one `X-API-Key` header, validated.
fn api_key(headers: &HeaderMap) -> Result<&str, Refusal> {
    let mut keys = headers.get_all("x-api-key").iter();
    let key = keys
        .next()
        .ok_or_else(|| Refusal::BadRequest("missing X-API-Key header".into()))?;
    if keys.next().is_some() {
        return Err(Refusal::BadRequest("more than one X-API-Key header".into()));
    }
    let key = key
        .to_str()
        .map_err(|_| Refusal::BadRequest("malformed X-API-Key header: not visible ASCII".into()))?;
    validate_api_key(key)
        .map_err(|m| Refusal::BadRequest(format!("malformed X-API-Key header: {m}")))?;
    Ok(key)
}

/// The request's cost: `X-RateLimit-Cost` or `?cost=` (percent-decoded), 1 when neither is
/// given. Each may be given once; when both are, they must agree.
fn cost(uri: &Uri, headers: &HeaderMap) -> Result<u64, Refusal> {
    let mut values = headers.get_all("x-ratelimit-cost").iter();
    let from_header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(Refusal::BadRequest(
                "more than one X-RateLimit-Cost header".into(),
            ));
        }
        (Some(v), None) => Some(parse_cost(v.to_str().unwrap_or("?"))?),
    };
    let query: Query<Vec<(String, String)>> = Query::try_from_uri(uri)
        .map_err(|e| Refusal::BadRequest(format!("malformed query string: {e}")))?;
    let mut costs = query.0.into_iter().filter(|(k, _)| k == "cost");
    let from_query = match (costs.next(), costs.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(Refusal::BadRequest("`cost` given more than once".into()));
        }
        (Some((_, v)), None) => Some(parse_cost(&v)?),
    };
    match (from_header, from_query) {
        (Some(h), Some(q)) if h != q => Err(Refusal::BadRequest(
            "X-RateLimit-Cost and ?cost= disagree".into(),
        )),
        (h, q) => Ok(h.or(q).unwrap_or(1)),
    }
}

/// A cost: decimal digits only (no sign, no space), at least 1.
fn parse_cost(s: &str) -> Result<u64, Refusal> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::BadRequest(format!(
            "cost must be a positive whole number, got {:?}",
            s.chars().take(32).collect::<String>()
        )));
    }
    match s.parse::<u64>() {
        Ok(0) => Err(Refusal::BadRequest("cost must be at least 1".into())),
        Ok(n) => Ok(n),
        Err(_) => Err(Refusal::BadRequest(format!("cost {s} is too large"))),
    }
}

fn render(decision: &Decision, answer: Answer, style: crate::config::HeaderStyle) -> Response {
    let status = response::http_status(decision, answer);
    let mut resp = (status, axum::Json(response::body(decision))).into_response();
    let h = resp.headers_mut();
    for (name, value) in response::headers(decision, style) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    resp
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    use crate::store::Store;
    if !state.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or shutting down\n",
        )
            .into_response();
    }
    // A replica whose store is down is still useful unless its policy is to refuse: with
    // fail_open or local it answers meaningfully, and taking every replica out of the load
    // balancer at once would turn a Redis outage into a total one.
    // The answer is a status word: the store's error text (addresses, the driver's wording)
    // goes to the log only.
    match state.limiter.store().ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readyz: the store did not answer its ping");
            let kind = e.kind();
            match state.limiter.rules().settings.on_store_failure {
                FailurePolicy::FailClosed => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: store {kind}\n"),
                )
                    .into_response(),
                FailurePolicy::FailOpen | FailurePolicy::Local => {
                    (StatusCode::OK, format!("ready (degraded: store {kind})\n")).into_response()
                }
            }
        }
    }
}

/// A refusal as an HTTP response: its status, `{"error": "…"}` and its headers.
impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut resp = (
            self.http_status(),
            [("content-type", "application/json")],
            self.body(),
        )
            .into_response();
        for (name, value) in self.headers() {
            resp.headers_mut()
                .insert(*name, HeaderValue::from_static(value));
        }
        resp
    }
}

/// The answer past the listener's cap on concurrent requests (`request_limit.rs`).
pub fn overloaded() -> Response {
    Refusal::Overloaded.into_response()
}
