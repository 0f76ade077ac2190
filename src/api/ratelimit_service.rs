//! Envoy's global rate-limit service: `envoy.service.ratelimit.v3.RateLimitService`.
//!
//! Semantics follow envoyproxy/ratelimit so its users can switch: the request's domain and
//! descriptors go to the limiter as they are; request-level `hits_addend` 0 means 1, a
//! descriptor's own `hits_addend` overrides it (0 = check without consuming); a descriptor's
//! `limit` replaces the configured limit for that descriptor. A descriptor configured
//! `post_paid: true` (token budgets: Envoy's stream-done charge of the tokens a response used)
//! is charged whatever the verdict, into debt if need be, and so is a `limit` that replaces
//! its limits; a check of it (`hits_addend` 0) is OVER_LIMIT while it is in debt. This door
//! needs nothing else for it: the limiter reads the flag from the rule.
//!
//! The answer has one status per descriptor (the tightest limit that matched it, what
//! remains, and the time until reset; OVER_LIMIT for a quota-mode descriptor over its limit
//! even when the request passes), the overall code, the RateLimit headers for every limit
//! that applied, on OVER_LIMIT the configured `raw_body`, and with
//! `settings.response_dynamic_metadata` upstream's dynamic metadata (`dynamic_metadata.rs`).
//!
//! Errors: an empty domain, no descriptors or an unusable override → INVALID_ARGUMENT; a store
//! failure → UNAVAILABLE (never UNKNOWN, which Envoy treats as OK), per the failure policy.
//! An unknown API key under `unknown_key: reject` is OVER_LIMIT: this door has no 401 (use
//! ext_authz for that).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use tonic::{Request, Response, Status};

use super::dynamic_metadata::rate_limit_metadata;
use super::grpc::status_of;
use super::response;
use super::{AppState, descriptor_entries};
use crate::algorithm::{Micros, Quota};
use crate::config::Settings;
use crate::limiter::{Decision, Descriptor, LimitError, LimitRequest, QuotaOverride};
use crate::metrics::Door;
use crate::telemetry::TraceContext;

/// Descriptors one request may carry, so a message cannot make the limiter do unbounded work.
pub const MAX_DESCRIPTORS: usize = 64;

const SECOND: Micros = 1_000_000;

pub struct RateLimitDoor {
    state: Arc<AppState>,
}

impl RateLimitDoor {
    /// The door alone, to call its method in process (the fuzz targets do).
    pub fn new(state: Arc<AppState>) -> Self {
        RateLimitDoor { state }
    }

    pub fn server(state: Arc<AppState>) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(Self::new(state))
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitDoor {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let trace = super::trace_of(request.metadata());
        answer(&self.state, request.get_ref(), trace)
            .await
            .map(Response::new)
    }
}

/// The answer to one `ShouldRateLimit` request (for gRPC here, and for upstream's `POST /json`).
pub async fn answer(
    state: &AppState,
    msg: &RateLimitRequest,
    trace: TraceContext<'_>,
) -> Result<RateLimitResponse, Status> {
    if msg.domain.is_empty() {
        return Err(Status::invalid_argument("domain must not be empty"));
    }
    if msg.descriptors.is_empty() {
        return Err(Status::invalid_argument(
            "at least one descriptor is required",
        ));
    }
    if msg.descriptors.len() > MAX_DESCRIPTORS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_DESCRIPTORS} descriptors per request"
        )));
    }
    let mut descriptors = Vec::with_capacity(msg.descriptors.len());
    for (i, d) in msg.descriptors.iter().enumerate() {
        descriptors.push(descriptor(i, d)?);
    }
    let req = LimitRequest {
        domain: &msg.domain,
        descriptors,
        // envoyproxy/ratelimit: 0 (unset) means one hit.
        hits: u64::from(msg.hits_addend.max(1)),
        client_required: false,
        post_paid: false,
    };
    let rules = state.limiter.rules();
    let decision = match state
        .decide(Door::RateLimitService, &rules, &req, trace)
        .await
    {
        Ok(d) => d,
        Err(LimitError::UnknownClient) => return Ok(unknown_client(&req)),
        Err(e) => return Err(status_of(e)),
    };
    Ok(response_of(msg, &decision, &rules.settings))
}

/// The answer for a decision: the overall code, one status per descriptor, headers, body and
/// dynamic metadata as the settings ask.
fn response_of(
    msg: &RateLimitRequest,
    decision: &Decision,
    settings: &Settings,
) -> RateLimitResponse {
    let mut response = RateLimitResponse {
        overall_code: if decision.allowed {
            Code::Ok
        } else {
            Code::OverLimit
        } as i32,
        statuses: statuses(decision, msg.descriptors.len()),
        response_headers_to_add: response::headers(decision, settings.headers)
            .into_iter()
            .map(|(key, value)| header(key, value))
            .collect(),
        ..Default::default()
    };
    if !decision.allowed && !settings.over_limit_body.is_empty() {
        response.raw_body = settings.over_limit_body.as_bytes().to_vec();
    }
    if settings.response_dynamic_metadata {
        response.dynamic_metadata = Some(rate_limit_metadata(msg, decision));
    }
    response
}

fn descriptor(i: usize, d: &RateLimitDescriptor) -> Result<Descriptor<'_>, Status> {
    let pairs = d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()));
    let entries = descriptor_entries(i, pairs).map_err(Status::invalid_argument)?;
    let limit_override = match &d.limit {
        None => None,
        Some(o) => {
            // The descriptor's `envoy.type.v3.RateLimitUnit` numbers its units as the
            // response's `Unit` does, WEEK (7) included, which this crate's copy of the
            // former lacks: read it as the latter, as envoyproxy/ratelimit does.
            let unit = Unit::try_from(o.unit)
                .ok()
                .and_then(unit_length)
                .ok_or_else(|| {
                    Status::invalid_argument(format!("descriptors[{i}].limit has an unknown unit"))
                })?;
            Some(QuotaOverride {
                quota: Quota::new(u64::from(o.requests_per_unit), unit),
            })
        }
    };
    // `is_negative_hits` asks to give hits back, which no algorithm here supports: such a
    // descriptor is checked without consuming anything.
    let hits = if d.is_negative_hits {
        Some(0)
    } else {
        d.hits_addend.as_ref().map(|h| h.value)
    };
    Ok(Descriptor {
        entries,
        hits,
        limit_override,
    })
}

/// A unit's length; `None` for UNKNOWN.
fn unit_length(unit: Unit) -> Option<Micros> {
    UNITS.iter().find(|(u, _)| *u == unit).map(|(_, len)| *len)
}

/// Envoy's units and their lengths (a month is 30 days and a year 365, as upstream counts).
const UNITS: [(Unit, Micros); 7] = [
    (Unit::Second, SECOND),
    (Unit::Minute, 60 * SECOND),
    (Unit::Hour, 3600 * SECOND),
    (Unit::Day, 86_400 * SECOND),
    (Unit::Week, 7 * 86_400 * SECOND),
    (Unit::Month, 30 * 86_400 * SECOND),
    (Unit::Year, 365 * 86_400 * SECOND),
];

/// The Envoy unit a window is exactly one of (a minute, an hour…); `None` for any other
/// window (10 s, 2 h).
pub fn whole_unit(window: Micros) -> Option<Unit> {
    UNITS
        .iter()
        .find(|(_, len)| *len == window)
        .map(|(u, _)| *u)
}

/// A limit as Envoy's `RateLimit` can say it: per the smallest unit that is a whole multiple
/// of the window (10 per 10 s is 60 per minute); per the window's own unit when it is one.
pub fn envoy_limit(name: &str, quota: &Quota) -> RateLimit {
    let found = UNITS
        .iter()
        .find(|(_, len)| *len >= quota.window && len % quota.window.max(1) == 0);
    let (unit, per_unit) = match found {
        Some((unit, len)) => (*unit, quota.limit.saturating_mul(len / quota.window.max(1))),
        None => (Unit::Unknown, quota.limit),
    };
    RateLimit {
        name: name.to_owned(),
        requests_per_unit: u32::try_from(per_unit).unwrap_or(u32::MAX),
        unit: unit as i32,
    }
}

/// One status per request descriptor: its tightest limit (the rejecting one that frees up
/// last, or the one with the least remaining).
fn statuses(decision: &Decision, descriptors: usize) -> Vec<DescriptorStatus> {
    (0..descriptors)
        .map(|i| {
            let mine = decision.limits.iter().filter(|l| l.descriptor == i);
            let tightest = if decision.over_limit[i] {
                mine.filter(|l| l.is_over())
                    .max_by_key(|l| l.verdict.retry_after)
            } else {
                mine.min_by_key(|l| l.verdict.remaining)
            };
            match tightest {
                None => DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                },
                Some(l) => DescriptorStatus {
                    code: if decision.over_limit[i] {
                        Code::OverLimit
                    } else {
                        Code::Ok
                    } as i32,
                    current_limit: Some(envoy_limit(&l.name, &l.quota)),
                    limit_remaining: u32::try_from(l.verdict.remaining).unwrap_or(u32::MAX),
                    duration_until_reset: Some(duration(l.verdict.reset_after)),
                    quota: None,
                },
            }
        })
        .collect()
}

fn unknown_client(req: &LimitRequest<'_>) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: (0..req.descriptors.len())
            .map(|_| DescriptorStatus {
                code: Code::OverLimit as i32,
                ..Default::default()
            })
            .collect(),
        response_headers_to_add: vec![header("x-ratelimit-reason", "unknown API key".to_owned())],
        ..Default::default()
    }
}

fn duration(us: Micros) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(us / SECOND).unwrap_or(i64::MAX),
        nanos: i32::try_from((us % SECOND) * 1000).unwrap_or(0),
    }
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.to_owned(),
        value,
        raw_value: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_in_envoy_units() {
        let l = envoy_limit("a", &Quota::new(10, 60 * SECOND));
        assert_eq!((l.requests_per_unit, l.unit), (10, Unit::Minute as i32));
        let l = envoy_limit("a", &Quota::new(5, 10 * SECOND));
        assert_eq!((l.requests_per_unit, l.unit), (30, Unit::Minute as i32));
        let l = envoy_limit("a", &Quota::new(5, 13 * SECOND));
        assert_eq!((l.requests_per_unit, l.unit), (5, Unit::Unknown as i32));
        let l = envoy_limit("a", &Quota::new(3, 500_000));
        assert_eq!((l.requests_per_unit, l.unit), (6, Unit::Second as i32));
    }

    #[test]
    fn whole_units_only() {
        assert_eq!(whole_unit(60 * SECOND), Some(Unit::Minute));
        assert_eq!(whole_unit(7 * 86_400 * SECOND), Some(Unit::Week));
        assert_eq!(whole_unit(10 * SECOND), None);
        assert_eq!(whole_unit(7200 * SECOND), None);
    }
}
