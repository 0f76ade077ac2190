//! The dynamic metadata of Envoy's rate-limit answers (`settings.response_dynamic_metadata`),
//! in envoyproxy/ratelimit's shape, so that access logs and filters written for it read ours:
//!
//! ```text
//! { domain: "<domain>",
//!   descriptors: [ { entries: ["key=value", …], limit: "<override>"?, hitsAddend: n? }, … ],
//!   hitsAddend: n,          (the request's, when not 0)
//!   metadata: { … } }       (the configured `metadata` of every descriptor that passed,
//!                            merged; absent when empty)
//! ```
//!
//! Merging follows upstream: a key already present keeps its value, except that two mappings
//! under one key merge recursively.

use std::collections::HashMap;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value};

use crate::limiter::Decision;

/// The metadata of one answer.
pub fn rate_limit_metadata(msg: &RateLimitRequest, decision: &Decision) -> Struct {
    let mut fields = HashMap::new();
    fields.insert("domain".to_owned(), string(&msg.domain));
    let descriptors = msg.descriptors.iter().map(descriptor).collect();
    fields.insert("descriptors".to_owned(), list(descriptors));
    if msg.hits_addend != 0 {
        fields.insert("hitsAddend".to_owned(), number(msg.hits_addend.into()));
    }
    let passed = decision.limits.iter().filter(|l| {
        !decision
            .over_limit
            .get(l.descriptor)
            .copied()
            .unwrap_or(true)
    });
    let mut merged = Struct::default();
    for metadata in passed.filter_map(|l| l.metadata.as_deref()) {
        merge(&mut merged, metadata);
    }
    if !merged.fields.is_empty() {
        fields.insert("metadata".to_owned(), kind(Kind::StructValue(merged)));
    }
    Struct { fields }
}

fn descriptor(d: &RateLimitDescriptor) -> Value {
    let entries = d
        .entries
        .iter()
        .map(|e| string(&format!("{}={}", e.key, e.value)))
        .collect();
    let mut fields = HashMap::from([("entries".to_owned(), list(entries))]);
    if let Some(limit) = &d.limit {
        let text = format!(
            "requests_per_unit:{} unit:{}",
            limit.requests_per_unit,
            unit_name(limit.unit)
        );
        fields.insert("limit".to_owned(), string(&text));
    }
    if let Some(hits) = &d.hits_addend {
        fields.insert("hitsAddend".to_owned(), number(hits.value as f64));
    }
    kind(Kind::StructValue(Struct { fields }))
}

/// Envoy's `RateLimitUnit` names, by number.
fn unit_name(unit: i32) -> &'static str {
    const NAMES: [&str; 8] = [
        "UNKNOWN", "SECOND", "MINUTE", "HOUR", "DAY", "MONTH", "YEAR", "WEEK",
    ];
    usize::try_from(unit)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// Upstream's merge: new keys are added; for a key present in both, two mappings merge and
/// anything else keeps the value already there.
fn merge(dest: &mut Struct, src: &serde_json::Map<String, serde_json::Value>) {
    for (key, value) in src {
        match (dest.fields.get_mut(key), value) {
            (None, _) => {
                dest.fields.insert(key.clone(), from_json(value));
            }
            (Some(existing), serde_json::Value::Object(inner)) => {
                if let Some(Kind::StructValue(existing)) = existing.kind.as_mut() {
                    merge(existing, inner);
                }
            }
            (Some(_), _) => {}
        }
    }
}

/// A configured value as a protobuf `Value` (numbers become doubles, as in any `Struct`).
fn from_json(value: &serde_json::Value) -> Value {
    kind(match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(from_json).collect(),
        }),
        serde_json::Value::Object(map) => {
            let mut inner = Struct::default();
            merge(&mut inner, map);
            Kind::StructValue(inner)
        }
    })
}

fn kind(kind: Kind) -> Value {
    Value { kind: Some(kind) }
}

fn string(s: &str) -> Value {
    kind(Kind::StringValue(s.to_owned()))
}

fn number(n: f64) -> Value {
    kind(Kind::NumberValue(n))
}

fn list(values: Vec<Value>) -> Value {
    kind(Kind::ListValue(ListValue { values }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_struct(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        match value {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }

    #[test]
    fn merging_keeps_the_first_value_and_merges_mappings() {
        let mut dest = Struct::default();
        merge(
            &mut dest,
            &json_struct(serde_json::json!({"team": "a", "limits": {"x": 1}})),
        );
        merge(
            &mut dest,
            &json_struct(serde_json::json!({"team": "b", "limits": {"x": 2, "y": 3}, "n": [1]})),
        );
        let get = |s: &Struct, k: &str| s.fields.get(k).and_then(|v| v.kind.clone());
        assert_eq!(get(&dest, "team"), Some(Kind::StringValue("a".into())));
        let Some(Kind::StructValue(limits)) = get(&dest, "limits") else {
            panic!("limits is a mapping")
        };
        assert_eq!(get(&limits, "x"), Some(Kind::NumberValue(1.0)));
        assert_eq!(get(&limits, "y"), Some(Kind::NumberValue(3.0)));
        assert!(matches!(get(&dest, "n"), Some(Kind::ListValue(_))));
    }

    #[test]
    fn unit_names_follow_envoys_numbers() {
        assert_eq!(unit_name(2), "MINUTE");
        assert_eq!(unit_name(7), "WEEK");
        assert_eq!(unit_name(99), "UNKNOWN");
    }
}
