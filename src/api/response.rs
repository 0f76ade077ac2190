//! What every door answers, decided in one place: the headers and JSON body of a
//! [`Decision`], and the class of a [`Refusal`] with its HTTP status, gRPC code and message.
//! A door only puts these into its wire format: a new response header goes in [`headers`],
//! a new error in [`Refusal`].
//!
//! Headers follow the IETF draft (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy`
//! lists every limit that applied, `RateLimit` reports the tightest, both as structured-field
//! lists: `RateLimit-Policy: "per-minute";q=100;w=60` and `RateLimit: "per-minute";r=42;t=17`.
//! `Retry-After` (seconds) accompanies a rejection that a retry can cure;
//! `x-ratelimit-degraded` marks an answer the store did not give (`fail_open`, `local`). The
//! older `X-RateLimit-Limit/Remaining/Reset` trio is available behind `settings.headers`.

use std::fmt::Write;

use axum::http::StatusCode;
use serde::Serialize;

use crate::algorithm::{Micros, RetryAfter};
use crate::config::HeaderStyle;
use crate::limiter::{Decision, Degraded, LimitError};
use crate::store::StoreError;

/// Whole seconds, rounded up: a client that waits this long is never early.
pub fn ceil_secs(us: Micros) -> u64 {
    us.div_ceil(1_000_000)
}

/// Seconds with millisecond precision, rounded up as the headers and gRPC round: a client
/// that waits what it is told never comes back early.
fn secs(us: Micros) -> f64 {
    us.div_ceil(1_000) as f64 / 1_000.0
}

/// How a degraded decision is labelled in headers and bodies.
pub fn degraded_label(d: Degraded) -> &'static str {
    match d {
        Degraded::FailOpen => "fail_open",
        Degraded::LocalFallback => "local",
    }
}

/// What a decision answers: a request asking to go ahead, or a report of usage that already
/// happened (recorded whatever the verdict).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Check,
    Report,
}

/// The HTTP status of a decision: a check is 200 or 429; a report is always 200 (it was
/// recorded), its body saying whether the client is still within its limits.
pub fn http_status(decision: &Decision, answer: Answer) -> StatusCode {
    match answer {
        Answer::Check if !decision.allowed => StatusCode::TOO_MANY_REQUESTS,
        Answer::Check | Answer::Report => StatusCode::OK,
    }
}

/// Every header of a decision, as `(name, value)` pairs.
pub fn headers(decision: &Decision, style: HeaderStyle) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(5);
    if let (false, RetryAfter::After(us)) = (decision.allowed, decision.retry_after) {
        out.push(("retry-after", ceil_secs(us).max(1).to_string()));
    }
    if let Some(d) = decision.degraded {
        out.push(("x-ratelimit-degraded", degraded_label(d).to_owned()));
    }
    let Some(tightest) = decision.tightest() else {
        return out;
    };
    if matches!(style, HeaderStyle::Ietf | HeaderStyle::Both) {
        let mut policy = String::new();
        let mut seen: Vec<&str> = Vec::new();
        for l in &decision.limits {
            if seen.contains(&&*l.name) {
                continue;
            }
            seen.push(&l.name);
            if !policy.is_empty() {
                policy.push_str(", ");
            }
            push_sf_string(&mut policy, &l.name);
            let _ = write!(
                policy,
                ";q={};w={}",
                l.quota.limit,
                ceil_secs(l.quota.window).max(1)
            );
        }
        out.push(("ratelimit-policy", policy));
        let mut current = String::new();
        push_sf_string(&mut current, &tightest.name);
        let _ = write!(
            current,
            ";r={};t={}",
            tightest.verdict.remaining,
            ceil_secs(tightest.verdict.reset_after)
        );
        out.push(("ratelimit", current));
    }
    if matches!(style, HeaderStyle::XRateLimit | HeaderStyle::Both) {
        out.push(("x-ratelimit-limit", tightest.quota.limit.to_string()));
        out.push((
            "x-ratelimit-remaining",
            tightest.verdict.remaining.to_string(),
        ));
        out.push((
            "x-ratelimit-reset",
            ceil_secs(tightest.verdict.reset_after).to_string(),
        ));
    }
    out
}

/// The client's limit as Envoy's rate-limit `limit` override reads it from dynamic metadata
/// (`RateLimit.Override.DynamicMetadata`): `requests_per_unit` per `unit`, a
/// `envoy.type.v3.RateLimitUnit` name such as `MINUTE`. Envoy holds the number in 32 bits, so
/// a larger limit is handed over as `u32::MAX`.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub requests_per_unit: u64,
    pub unit: &'static str,
}

/// The budget of a decision: its tightest limit, when that limit's window is exactly one
/// Envoy unit (a limit per 10 s or per 2 h has no such shape, and gets none).
pub fn budget(decision: &Decision) -> Option<Budget> {
    let tightest = decision.tightest()?;
    let unit = super::ratelimit_service::whole_unit(tightest.quota.window)?;
    Some(Budget {
        requests_per_unit: tightest.quota.limit.min(u64::from(u32::MAX)),
        unit: unit.as_str_name(),
    })
}

/// The JSON body of a decision (`POST /check`, ext_authz's 429).
#[derive(Serialize)]
pub struct Body<'a> {
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

/// The JSON body for a decision.
pub fn body(decision: &Decision) -> Body<'_> {
    let tightest = decision.tightest();
    Body {
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
        degraded: decision.degraded.map(degraded_label),
        reason: (decision.retry_after == RetryAfter::Never)
            .then_some("the cost exceeds what the limit can ever admit at once"),
    }
}

/// Why a request gets no decision, by class: what every door maps to its own status.
#[derive(Debug)]
pub enum Refusal {
    /// Malformed input (400, `INVALID_ARGUMENT`).
    BadRequest(String),
    /// A body larger than a door reads (413).
    PayloadTooLarge(String),
    /// An unknown or missing API key (401, `UNAUTHENTICATED`).
    Unauthenticated(String),
    /// The memory store has no room for this request's new counter (503,
    /// `RESOURCE_EXHAUSTED`): this request only, whatever the failure policy.
    StoreFull(String),
    /// The store could not decide (503 with `Retry-After: 1`, `UNAVAILABLE`, which lets
    /// Envoy's `failure_mode_deny` decide). The detail goes to the log, not the client.
    Unavailable,
    /// Past a listener's cap on concurrent requests (`request_limit.rs`): 503 with
    /// `Retry-After: 1`, like a store that cannot decide, or `RESOURCE_EXHAUSTED`.
    Overloaded,
}

impl From<LimitError> for Refusal {
    fn from(e: LimitError) -> Self {
        match e {
            LimitError::UnknownClient => Refusal::Unauthenticated(e.to_string()),
            LimitError::CostTooHigh { .. }
            | LimitError::NoDescriptors
            | LimitError::NoDomain
            | LimitError::EmptyDescriptor(_) => Refusal::BadRequest(e.to_string()),
            LimitError::Store(full @ StoreError::Full { .. }) => {
                Refusal::StoreFull(full.to_string())
            }
            LimitError::Store(_) => Refusal::Unavailable,
        }
    }
}

impl Refusal {
    pub fn http_status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::StoreFull(_) | Refusal::Unavailable | Refusal::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Refusal::BadRequest(_) | Refusal::PayloadTooLarge(_) => tonic::Code::InvalidArgument,
            Refusal::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Refusal::StoreFull(_) | Refusal::Overloaded => tonic::Code::ResourceExhausted,
            // UNAVAILABLE, not UNKNOWN: Envoy treats UNKNOWN as OK.
            Refusal::Unavailable => tonic::Code::Unavailable,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::BadRequest(m)
            | Refusal::PayloadTooLarge(m)
            | Refusal::Unauthenticated(m)
            | Refusal::StoreFull(m) => m,
            Refusal::Unavailable => "rate limit store unavailable",
            Refusal::Overloaded => "too many requests in progress; retry shortly",
        }
    }

    /// The headers of a refusal besides its JSON content type.
    pub fn headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Refusal::Unavailable | Refusal::Overloaded => &[("retry-after", "1")],
            _ => &[],
        }
    }

    /// The JSON body of a refusal: `{"error": "…"}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.message() }).to_string()
    }

    /// The gRPC status of a refusal.
    pub fn grpc_status(&self) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), self.message())
    }
}

/// Appends `s` as a structured-field string (RFC 8941): quoted, with `"` and `\` escaped and
/// anything outside printable ASCII replaced, so a limit name can never break the header.
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sf_strings_are_escaped() {
        let mut s = String::new();
        push_sf_string(&mut s, "a\"b\\c\né");
        assert_eq!(s, r#""a\"b\\c??""#);
    }

    #[test]
    fn body_seconds_round_up_to_the_millisecond() {
        // A client told to wait 0.001 s for a 1.5 ms wait would come back early.
        assert_eq!(secs(1_500), 0.002);
        assert_eq!(secs(1_920_001), 1.921);
        assert_eq!(secs(2_000), 0.002);
        assert_eq!(secs(0), 0.0);
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(0), 0);
        assert_eq!(ceil_secs(1), 1);
        assert_eq!(ceil_secs(1_000_000), 1);
        assert_eq!(ceil_secs(1_000_001), 2);
    }
}
