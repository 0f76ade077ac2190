//! The HTTP front door (axum): `POST /check`, `GET /metrics`, `GET /healthz`, `GET /readyz`.
//!
//! `POST /check` takes the API key from `X-API-Key` and an optional cost from the
//! `X-RateLimit-Cost` header or the `cost` query parameter, and answers 200 (allowed) or 429
//! (rejected) with a small JSON body and the rate-limit headers. Every error is mapped to a
//! status in [`ApiError::into_response`], the one place that does so.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;

use super::{AppState, headers, validate_api_key};
use crate::algorithm::{Micros, RetryAfter};
use crate::config::FailurePolicy;
use crate::limiter::{Decision, LimitError, LimitRequest};
use crate::metrics::Door;
use crate::store::StoreError;

/// Bodies are not read by `/check`; one announced as larger than this is refused with 413.
const MAX_BODY: u64 = 64 * 1024;

/// The HTTP router over shared state.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/check", post(check))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// What `/check` answers, allowed or not (and ext_authz's denied body).
#[derive(Serialize)]
pub(crate) struct CheckBody<'a> {
    allowed: bool,
    /// The tightest limit's size, what is left of it, and its name.
    limit: Option<u64>,
    remaining: Option<u64>,
    /// Seconds (with millisecond precision) until the tightest limit is whole again.
    reset_after: f64,
    /// Seconds until the same request can succeed: 0 when allowed, null when never.
    retry_after: Option<f64>,
    policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

async fn check(State(state): State<Arc<AppState>>, uri: Uri, headers: HeaderMap) -> Response {
    match check_inner(&state, &uri, &headers).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn check_inner(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(len) = headers.get("content-length") {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        if len > MAX_BODY {
            return Err(ApiError::PayloadTooLarge);
        }
    }
    let mut keys = headers.get_all("x-api-key").iter();
    let key = keys
        .next()
        .ok_or_else(|| ApiError::BadRequest("missing X-API-Key header".into()))?;
    if keys.next().is_some() {
        return Err(ApiError::BadRequest(
            "more than one X-API-Key header".into(),
        ));
    }
    let key = key.to_str().map_err(|_| {
        ApiError::BadRequest("malformed X-API-Key header: not visible ASCII".into())
    })?;
    validate_api_key(key)
        .map_err(|m| ApiError::BadRequest(format!("malformed X-API-Key header: {m}")))?;
    let cost = cost(uri, headers)?;

    let rules = state.limiter.rules();
    let req = LimitRequest::for_api_key(&rules.settings.default_domain, key, cost);
    let decision = state.decide(Door::Http, &rules, &req).await?;
    Ok(render(&decision, rules.settings.headers))
}

/// The request's cost: `X-RateLimit-Cost` or `?cost=` (percent-decoded), 1 when neither is
/// given. Each may be given once; when both are, they must agree.
fn cost(uri: &Uri, headers: &HeaderMap) -> Result<u64, ApiError> {
    let mut values = headers.get_all("x-ratelimit-cost").iter();
    let from_header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "more than one X-RateLimit-Cost header".into(),
            ));
        }
        (Some(v), None) => Some(parse_cost(v.to_str().unwrap_or("?"))?),
    };
    let query: Query<Vec<(String, String)>> = Query::try_from_uri(uri)
        .map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))?;
    let mut costs = query.0.into_iter().filter(|(k, _)| k == "cost");
    let from_query = match (costs.next(), costs.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest("`cost` given more than once".into()));
        }
        (Some((_, v)), None) => Some(parse_cost(&v)?),
    };
    match (from_header, from_query) {
        (Some(h), Some(q)) if h != q => Err(ApiError::BadRequest(
            "X-RateLimit-Cost and ?cost= disagree".into(),
        )),
        (h, q) => Ok(h.or(q).unwrap_or(1)),
    }
}

/// A cost: decimal digits only (no sign, no space), at least 1.
fn parse_cost(s: &str) -> Result<u64, ApiError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest(format!(
            "cost must be a positive whole number, got {:?}",
            s.chars().take(32).collect::<String>()
        )));
    }
    match s.parse::<u64>() {
        Ok(0) => Err(ApiError::BadRequest("cost must be at least 1".into())),
        Ok(n) => Ok(n),
        Err(_) => Err(ApiError::BadRequest(format!("cost {s} is too large"))),
    }
}

/// Seconds with millisecond precision, rounded up as the headers and gRPC round: a client
/// that waits what it is told never comes back early.
fn secs(us: Micros) -> f64 {
    us.div_ceil(1_000) as f64 / 1_000.0
}

/// The JSON body for a decision.
pub(crate) fn body(decision: &Decision) -> CheckBody<'_> {
    let tightest = decision.tightest();
    CheckBody {
        allowed: decision.allowed,
        limit: tightest.map(|l| l.quota.limit),
        remaining: tightest.map(|l| l.verdict.remaining),
        reset_after: tightest.map_or(0.0, |l| secs(l.verdict.reset_after)),
        retry_after: match decision.retry_after {
            RetryAfter::Now => Some(0.0),
            RetryAfter::After(us) => Some(secs(us)),
            RetryAfter::Never => None,
        },
        policy: tightest.map(|l| &*l.name),
        degraded: decision.degraded.map(super::degraded_label),
        reason: (decision.retry_after == RetryAfter::Never)
            .then_some("the cost exceeds what the limit can ever admit at once"),
    }
}

fn render(decision: &Decision, style: crate::config::HeaderStyle) -> Response {
    let body = body(decision);
    let status = if decision.allowed {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    let mut resp = (status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    for (name, value) in headers::render(decision, style) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    if let Some(d) = decision.degraded {
        h.insert(
            "x-ratelimit-degraded",
            HeaderValue::from_static(super::degraded_label(d)),
        );
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
    match state.limiter.store().ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => match state.limiter.rules().settings.on_store_failure {
            FailurePolicy::FailClosed => {
                (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response()
            }
            FailurePolicy::FailOpen | FailurePolicy::Local => {
                (StatusCode::OK, format!("ready (degraded: {e})\n")).into_response()
            }
        },
    }
}

/// Everything `/check` can fail with. The one place HTTP statuses are chosen.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    PayloadTooLarge,
    Limit(LimitError),
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        ApiError::Limit(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_BODY} bytes"),
            ),
            ApiError::Limit(e) => match e {
                LimitError::UnknownClient => (StatusCode::UNAUTHORIZED, e.to_string()),
                LimitError::CostTooHigh { .. }
                | LimitError::NoDescriptors
                | LimitError::NoDomain
                | LimitError::EmptyDescriptor(_) => (StatusCode::BAD_REQUEST, e.to_string()),
                // A full memory store refuses only the requests that need a new counter.
                LimitError::Store(StoreError::Full { .. }) => {
                    (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                }
                // The detail went to the log; clients learn only that they may retry.
                LimitError::Store(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate limit store unavailable".to_owned(),
                ),
            },
        };
        let mut resp =
            (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_seconds_round_up_to_the_millisecond() {
        // A client told to wait 0.001 s for a 1.5 ms wait would come back early.
        assert_eq!(secs(1_500), 0.002);
        assert_eq!(secs(1_920_001), 1.921);
        assert_eq!(secs(2_000), 0.002);
        assert_eq!(secs(0), 0.0);
    }
}
