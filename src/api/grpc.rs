//! The service's own gRPC door: `ratelimiter.v1.RateLimiter/AllowRequest`.
//!
//! It builds the same request as `POST /check` (the entry `api_key = <key>` of the default
//! domain) plus any extra descriptors, and maps errors to gRPC codes in [`status_of`], the one
//! place that does so. With `report: true` the request reports usage that already happened
//! (as `POST /report`): it is recorded whatever the verdict, and `allowed` says whether the
//! client is still within its limits.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::response::{self, Refusal};
use super::{AppState, descriptor_entries, validate_api_key};
use crate::algorithm::RetryAfter;
use crate::limiter::{API_KEY, Descriptor, LimitError, LimitRequest};
use crate::metrics::Door;

/// Code generated from `proto/ratelimiter.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("ratelimiter.v1");
}

use pb::rate_limiter_server::{RateLimiter, RateLimiterServer};
use pb::{AllowRequestRequest, AllowRequestResponse};

/// Descriptors one `AllowRequest` may carry, its own key's included.
pub const MAX_DESCRIPTORS: usize = 16;

pub struct AllowRequestService {
    state: Arc<AppState>,
}

impl AllowRequestService {
    /// The door alone, to call its method in process (the fuzz targets do).
    pub fn new(state: Arc<AppState>) -> Self {
        AllowRequestService { state }
    }

    pub fn server(state: Arc<AppState>) -> RateLimiterServer<Self> {
        RateLimiterServer::new(Self::new(state))
    }
}

#[tonic::async_trait]
impl RateLimiter for AllowRequestService {
    async fn allow_request(
        &self,
        request: Request<AllowRequestRequest>,
    ) -> Result<Response<AllowRequestResponse>, Status> {
        let msg = request.get_ref();
        validate_api_key(&msg.api_key)
            .map_err(|m| Status::invalid_argument(format!("api_key: {m}")))?;
        let cost = match msg.cost {
            None => 1,
            Some(0) => return Err(Status::invalid_argument("cost must be at least 1")),
            Some(c) => c,
        };
        if msg.descriptors.len() + 1 > MAX_DESCRIPTORS {
            return Err(Status::invalid_argument(format!(
                "at most {} extra descriptors",
                MAX_DESCRIPTORS - 1
            )));
        }
        let rules = self.state.limiter.rules();
        let mut req = LimitRequest::for_api_key(&rules.settings.default_domain, &msg.api_key, cost);
        req.post_paid = msg.report;
        let allowed = &rules.settings.allow_request_descriptors;
        for (i, d) in msg.descriptors.iter().enumerate() {
            req.descriptors.push(extra_descriptor(i, d, allowed)?);
        }
        let decision = self
            .state
            .decide(
                Door::Grpc,
                &rules,
                &req,
                super::trace_of(request.metadata()),
            )
            .await
            .map_err(status_of)?;
        let tightest = decision.tightest();
        Ok(Response::new(AllowRequestResponse {
            allowed: decision.allowed,
            limit: tightest.map_or(0, |l| l.quota.limit),
            remaining: tightest.map_or(0, |l| l.verdict.remaining),
            reset_after_ms: tightest.map_or(0, |l| l.verdict.reset_after.div_ceil(1000)),
            retry_after_ms: match decision.retry_after {
                RetryAfter::After(us) => us.div_ceil(1000),
                RetryAfter::Now | RetryAfter::Never => 0,
            },
            policy: tightest.map(|l| l.name.to_string()).unwrap_or_default(),
            window_ms: tightest.map_or(0, |l| l.quota.window.div_ceil(1000)),
            retry_never: decision.retry_after == RetryAfter::Never,
            degraded: decision
                .degraded
                .map(|d| response::degraded_label(d).to_owned())
                .unwrap_or_default(),
        }))
    }
}

/// Extra descriptor `i`, validated, and refused (`PERMISSION_DENIED`) unless its key is one
/// of `allowed` (`settings.allow_request_descriptors`): a caller must not spend the quotas
/// of descriptors the operator has not opened to it.
fn extra_descriptor<'a>(
    i: usize,
    d: &'a pb::Descriptor,
    allowed: &[String],
) -> Result<Descriptor<'a>, Status> {
    let pairs = d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()));
    let entries = descriptor_entries(i, pairs).map_err(Status::invalid_argument)?;
    if entries.first().is_some_and(|e| e.key == API_KEY) {
        return Err(Status::invalid_argument(format!(
            "descriptors[{i}]: the key `{API_KEY}` is reserved for the request's api_key field"
        )));
    }
    if let Some(first) = entries.first()
        && !allowed.iter().any(|k| k == first.key)
    {
        return Err(Status::permission_denied(format!(
            "descriptors[{i}]: `{}` is not a descriptor callers may add (settings.allow_request_descriptors)",
            first.key.chars().take(64).collect::<String>()
        )));
    }
    Ok(Descriptor {
        entries,
        hits: None,
        limit_override: None,
    })
}

/// A [`LimitError`] as a gRPC status, by its [`Refusal`] class.
pub fn status_of(e: LimitError) -> Status {
    Refusal::from(e).grpc_status()
}
