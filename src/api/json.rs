//! `POST /json`: envoyproxy/ratelimit's HTTP door, so clients written for it keep working.
//!
//! The body is a `RateLimitRequest` in protobuf's JSON mapping (`domain`, `descriptors` with
//! `entries` of `{key, value}`, an optional `limit` and `hitsAddend`, and the request's
//! `hitsAddend`; field names in lowerCamel or as in the proto, unknown fields refused). The
//! answer is the `RateLimitResponse` the gRPC door gives, in the same mapping (fields at their
//! default left out): 200 when the overall code is OK, 429 when OVER_LIMIT. A body that is not
//! such a request, or that the door refuses, is 400 with a message; a store failure is 503
//! (upstream answers 400 for both).

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, UInt64Value};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

use super::AppState;
use super::ratelimit_service::answer;
use crate::telemetry::TraceContext;

/// The request body, as protobuf's JSON mapping writes a `RateLimitRequest`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    #[serde(default)]
    domain: String,
    #[serde(default)]
    descriptors: Vec<JsonDescriptor>,
    #[serde(default, alias = "hits_addend", rename = "hitsAddend")]
    hits_addend: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDescriptor {
    #[serde(default)]
    entries: Vec<JsonEntry>,
    limit: Option<JsonLimit>,
    #[serde(default, alias = "hits_addend", rename = "hitsAddend")]
    hits_addend: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEntry {
    key: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLimit {
    #[serde(alias = "requests_per_unit", rename = "requestsPerUnit")]
    requests_per_unit: u32,
    unit: Value,
}

/// `POST /json`.
pub async fn json(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let msg = match serde_json::from_slice::<JsonRequest>(&body) {
        Ok(req) => match request(req) {
            Ok(msg) => msg,
            Err(message) => return bad_request(&message),
        },
        Err(e) => return bad_request(&format!("not a RateLimitRequest in JSON: {e}")),
    };
    let trace = TraceContext::from_headers(|n| headers.get(n).and_then(|v| v.to_str().ok()));
    match answer(&state, &msg, trace).await {
        Ok(resp) => {
            let status = if resp.overall_code == Code::OverLimit as i32 {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::OK
            };
            (status, Json(response(&resp))).into_response()
        }
        Err(s) if s.code() == tonic::Code::Unavailable => {
            error(StatusCode::SERVICE_UNAVAILABLE, s.message())
        }
        Err(s) => bad_request(s.message()),
    }
}

fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, message)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The protobuf request the body stands for.
fn request(req: JsonRequest) -> Result<RateLimitRequest, String> {
    let mut descriptors = Vec::with_capacity(req.descriptors.len());
    for (i, d) in req.descriptors.into_iter().enumerate() {
        let limit = match d.limit {
            None => None,
            Some(l) => Some(RateLimitOverride {
                requests_per_unit: l.requests_per_unit,
                unit: unit_number(&l.unit)
                    .ok_or_else(|| format!("descriptors[{i}].limit.unit is not a unit"))?,
            }),
        };
        descriptors.push(RateLimitDescriptor {
            entries: d
                .entries
                .into_iter()
                .map(|e| Entry {
                    key: e.key,
                    value: e.value,
                })
                .collect(),
            limit,
            hits_addend: d.hits_addend.map(|value| UInt64Value { value }),
            ..Default::default()
        });
    }
    Ok(RateLimitRequest {
        domain: req.domain,
        descriptors,
        hits_addend: req.hits_addend,
    })
}

/// A unit by name (`"MINUTE"`) or number, as the JSON mapping allows.
fn unit_number(unit: &Value) -> Option<i32> {
    match unit {
        Value::String(name) => Unit::from_str_name(name).map(|u| u as i32),
        Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        _ => None,
    }
}

/// The response in protobuf's JSON mapping: fields at their default are left out.
fn response(resp: &RateLimitResponse) -> Value {
    let mut out = serde_json::Map::new();
    if let Ok(code) = Code::try_from(resp.overall_code)
        && code != Code::Unknown
    {
        out.insert("overallCode".into(), json!(code.as_str_name()));
    }
    if !resp.statuses.is_empty() {
        let statuses: Vec<Value> = resp.statuses.iter().map(status).collect();
        out.insert("statuses".into(), Value::Array(statuses));
    }
    if !resp.response_headers_to_add.is_empty() {
        let headers: Vec<Value> = resp
            .response_headers_to_add
            .iter()
            .map(|h| json!({ "key": h.key, "value": h.value }))
            .collect();
        out.insert("responseHeadersToAdd".into(), Value::Array(headers));
    }
    if !resp.raw_body.is_empty() {
        out.insert("rawBody".into(), json!(base64(&resp.raw_body)));
    }
    if let Some(metadata) = &resp.dynamic_metadata {
        out.insert("dynamicMetadata".into(), struct_json(metadata));
    }
    Value::Object(out)
}

fn status(s: &DescriptorStatus) -> Value {
    let mut out = serde_json::Map::new();
    if let Ok(code) = Code::try_from(s.code)
        && code != Code::Unknown
    {
        out.insert("code".into(), json!(code.as_str_name()));
    }
    if let Some(limit) = &s.current_limit {
        let mut l = serde_json::Map::new();
        if !limit.name.is_empty() {
            l.insert("name".into(), json!(limit.name));
        }
        if limit.requests_per_unit != 0 {
            l.insert("requestsPerUnit".into(), json!(limit.requests_per_unit));
        }
        if let Ok(unit) = Unit::try_from(limit.unit)
            && unit != Unit::Unknown
        {
            l.insert("unit".into(), json!(unit.as_str_name()));
        }
        out.insert("currentLimit".into(), Value::Object(l));
    }
    if s.limit_remaining != 0 {
        out.insert("limitRemaining".into(), json!(s.limit_remaining));
    }
    if let Some(d) = &s.duration_until_reset {
        out.insert(
            "durationUntilReset".into(),
            json!(duration(d.seconds, d.nanos)),
        );
    }
    Value::Object(out)
}

/// A `google.protobuf.Duration` as its JSON string: `"3600s"`, `"1.500s"`.
fn duration(seconds: i64, nanos: i32) -> String {
    if nanos == 0 {
        return format!("{seconds}s");
    }
    let frac = format!("{:09}", nanos.unsigned_abs());
    let frac = frac.trim_end_matches('0');
    format!("{seconds}.{frac}s")
}

fn struct_json(s: &Struct) -> Value {
    let fields: HashMap<&String, Value> = s
        .fields
        .iter()
        .map(|(k, v)| (k, value_json(v.kind.as_ref())))
        .collect();
    json!(fields)
}

fn value_json(kind: Option<&Kind>) -> Value {
    match kind {
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => l
            .values
            .iter()
            .map(|v| value_json(v.kind.as_ref()))
            .collect(),
        Some(Kind::NullValue(_)) | None => Value::Null,
    }
}

/// Standard base64 with padding, as the JSON mapping writes `bytes`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_the_json_mapping_writes_bytes() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"too many"), "dG9vIG1hbnk=");
    }

    #[test]
    fn durations_as_the_json_mapping_writes_them() {
        assert_eq!(duration(3600, 0), "3600s");
        assert_eq!(duration(1, 500_000_000), "1.5s");
        assert_eq!(duration(0, 1_000), "0.000001s");
    }
}
