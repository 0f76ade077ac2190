//! Envoy's external authorization: `envoy.service.auth.v3.Authorization/Check`.
//!
//! Descriptors are built from the `CheckRequest` by the rules in `settings.ext_authz`
//! (by default one descriptor, `api_key` = the `x-api-key` header, exactly what `POST /check`
//! builds, so both share counters); the domain is `context_extensions["domain"]` or the default
//! domain. A descriptor whose source is missing is left out, except the API key: a request
//! without one is decided as the anonymous client (the empty key), which the client table
//! rejects with 401 unless `unknown_key` names a tier.
//!
//! Answers: allowed → OK, with the RateLimit headers added to the upstream's response and
//! the client's limit handed to Envoy as dynamic metadata (below);
//! over limit → denied 429 with `Retry-After`, `RateLimit-Policy`, `RateLimit` and the same
//! JSON body as `POST /check`; unknown key → 401; bad input → 400; store down under
//! `fail_closed` → 503 with `Retry-After: 1`. Every denial is a `CheckResponse`, never a gRPC
//! error, so Envoy's own `failure_mode_allow` only decides when this service is unreachable.
//!
//! The budget: an allowed answer carries `dynamic_metadata.<key> = {requests_per_unit: N,
//! unit: "MINUTE"}` (`key` is `settings.ext_authz_budget_metadata_key`, default
//! `ratelimit_budget`; empty turns it off), the client's tightest limit in the shape a route's
//! rate-limit `limit: {dynamic_metadata: {metadata_key: {key: envoy.filters.http.ext_authz,
//! path: [{key: ratelimit_budget}]}}}` override reads, so a token budget per tenant can be
//! enforced by the rate-limit filter. Only a limit whose window is exactly one Envoy unit
//! (second, minute, hour, day, week, 30-day month, 365-day year) has that shape; otherwise
//! no metadata is sent and the route's own limit applies.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use tonic::{Request, Response, Status};

use super::response::{self, Refusal};
use super::{AppState, validate_api_key};
use crate::config::{ExtAuthzDescriptor, ValueSource};
use crate::limiter::{API_KEY, Decision, Descriptor, Entry, LimitError, LimitRequest};
use crate::metrics::Door;
use crate::telemetry::TraceContext;

pub struct ExtAuthzDoor {
    state: Arc<AppState>,
}

impl ExtAuthzDoor {
    /// The door alone, to call its method in process (the fuzz targets do).
    pub fn new(state: Arc<AppState>) -> Self {
        ExtAuthzDoor { state }
    }

    pub fn server(state: Arc<AppState>) -> AuthorizationServer<Self> {
        AuthorizationServer::new(Self::new(state))
    }
}

/// The parts of a `CheckRequest` descriptor values come from.
struct Attributes<'a> {
    headers: Option<&'a HashMap<String, String>>,
    path: &'a str,
    method: &'a str,
    host: &'a str,
    context: Option<&'a HashMap<String, String>>,
}

impl<'a> Attributes<'a> {
    fn of(req: &'a CheckRequest) -> Self {
        let attrs = req.attributes.as_ref();
        let http = attrs
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        Attributes {
            headers: http.map(|h| &h.headers),
            path: http.map_or("", |h| h.path.as_str()),
            method: http.map_or("", |h| h.method.as_str()),
            host: http.map_or("", |h| h.host.as_str()),
            context: attrs.map(|a| &a.context_extensions),
        }
    }

    /// The descriptors `rules` build from the request: a rule with a value missing is left
    /// out, except a missing API key, which is the anonymous client's empty one. A malformed
    /// API key is refused.
    fn descriptors(&self, rules: &'a [ExtAuthzDescriptor]) -> Result<Vec<Descriptor<'a>>, Refusal> {
        let mut descriptors = Vec::with_capacity(rules.len());
        'rules: for rule in rules {
            let mut entries = Vec::with_capacity(rule.entries.len());
            for e in &rule.entries {
                let value = match self.value(&e.from) {
                    Some(v) => v,
                    None if e.key == API_KEY => "",
                    None => continue 'rules,
                };
                if e.key == API_KEY && !value.is_empty() {
                    validate_api_key(value)
                        .map_err(|m| Refusal::BadRequest(format!("malformed API key: {m}")))?;
                }
                entries.push(Entry::new(&e.key, value));
            }
            descriptors.push(Descriptor {
                entries,
                hits: None,
                limit_override: None,
            });
        }
        Ok(descriptors)
    }

    fn value(&self, source: &'a ValueSource) -> Option<&'a str> {
        let nonempty = |s: &'a str| (!s.is_empty()).then_some(s);
        match source {
            ValueSource::Header(name) => self.headers?.get(name).map(String::as_str),
            ValueSource::Path => nonempty(self.path),
            ValueSource::Method => nonempty(self.method),
            ValueSource::Host => nonempty(self.host),
            ValueSource::ContextExtension(name) => self.context?.get(name).map(String::as_str),
            ValueSource::Literal(v) => Some(v.as_str()),
        }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzDoor {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let msg = request.get_ref();
        let attrs = Attributes::of(msg);
        let rules = self.state.limiter.rules();
        let settings = &rules.settings;
        let domain = attrs
            .context
            .and_then(|c| c.get("domain"))
            .filter(|d| !d.is_empty())
            .map_or(settings.default_domain.as_str(), String::as_str);

        let descriptors = match attrs.descriptors(&settings.ext_authz) {
            Ok(descriptors) => descriptors,
            Err(bad) => return Ok(Response::new(deny(&bad))),
        };
        if descriptors.is_empty() {
            return Ok(Response::new(allow(None, settings.headers)));
        }
        let anonymous = descriptors.iter().any(|d| {
            d.entries
                .iter()
                .any(|e| e.key == API_KEY && e.value.is_empty())
        });
        let req = LimitRequest {
            domain,
            descriptors,
            hits: 1,
            client_required: false,
            post_paid: false,
        };
        // The request's own headers first (what Envoy saw), then the call's metadata.
        let headers = attrs.headers;
        let trace = TraceContext::from_headers(|n| headers?.get(n).map(String::as_str))
            .or(super::trace_of(request.metadata()));
        let response = match self.state.decide(Door::ExtAuthz, &rules, &req, trace).await {
            Ok(d) if d.allowed => {
                let mut ok = allow(Some(&d), settings.headers);
                ok.dynamic_metadata = budget_metadata(&d, &settings.ext_authz_budget_metadata_key);
                ok
            }
            Ok(d) => over_limit(&d, settings.headers),
            Err(LimitError::UnknownClient) if anonymous => {
                deny(&Refusal::Unauthenticated("missing API key".into()))
            }
            Err(e) => deny(&Refusal::from(e)),
        };
        Ok(Response::new(response))
    }
}

fn allow(decision: Option<&Decision>, style: crate::config::HeaderStyle) -> CheckResponse {
    let mut ok = OkHttpResponseBuilder::new();
    for (name, value) in decision.map_or_else(Vec::new, |d| response::headers(d, style)) {
        ok.add_response_header(name, value, None, false);
    }
    let mut r = CheckResponse::with_status(Status::ok(""));
    r.set_http_response(ok);
    r
}

/// `{<key>: {requests_per_unit, unit}}` for a decision with a [`response::budget`]; `None`
/// without one or when `key` is empty.
fn budget_metadata(decision: &Decision, key: &str) -> Option<Struct> {
    if key.is_empty() {
        return None;
    }
    let budget = response::budget(decision)?;
    let value = |kind| Value { kind: Some(kind) };
    let limit = Struct {
        fields: HashMap::from([
            (
                "requests_per_unit".to_owned(),
                value(Kind::NumberValue(budget.requests_per_unit as f64)),
            ),
            (
                "unit".to_owned(),
                value(Kind::StringValue(budget.unit.to_owned())),
            ),
        ]),
    };
    Some(Struct {
        fields: HashMap::from([(key.to_owned(), value(Kind::StructValue(limit)))]),
    })
}

fn over_limit(decision: &Decision, style: crate::config::HeaderStyle) -> CheckResponse {
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(HttpStatusCode::TooManyRequests);
    for (name, value) in response::headers(decision, style) {
        denied.add_header(name, value, None, false);
    }
    denied.add_header("content-type", "application/json", None, false);
    denied.set_body(serde_json::to_string(&response::body(decision)).unwrap_or_default());
    let mut r = CheckResponse::with_status(Status::resource_exhausted("over limit"));
    r.set_http_response(denied);
    r
}

/// A refusal as Envoy's denied response: its status, headers and `{"error": "…"}`.
fn deny(refusal: &Refusal) -> CheckResponse {
    let mut denied = DeniedHttpResponseBuilder::new();
    let status = HttpStatusCode::try_from(i32::from(refusal.http_status().as_u16()))
        .unwrap_or(HttpStatusCode::ServiceUnavailable);
    denied.set_http_status(status);
    denied.add_header("content-type", "application/json", None, false);
    for (name, value) in refusal.headers() {
        denied.add_header(*name, *value, None, false);
    }
    denied.set_body(refusal.body());
    let mut r = CheckResponse::with_status(refusal.grpc_status());
    r.set_http_response(denied);
    r
}
