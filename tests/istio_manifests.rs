//! The Istio manifests in `envoy/istio/` cannot rot: the Envoy configuration inside the
//! EnvoyFilter's patches (the `value:` blocks) is applied to a minimal static bootstrap the
//! way istiod applies it (the HTTP filter inserted before the router, the virtual-host patch
//! merged into the virtual host) and the real Envoy 1.40 validates it (`envoy --mode
//! validate`). The ext_authz provider is rendered into the ext_authz filter istiod would build
//! and validated the same way, and the provider, the AuthorizationPolicy and the EnvoyFilter
//! are checked to agree with each other. Also the shipped `envoy/*.yaml` configs are
//! validated as they are.
//!
//! Needs Envoy: `make setup`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::envoy::{repo, validate};
use common::temp_dir;
use serde_json::{Value, json};

/// Every YAML document of `envoy/istio/<name>`.
fn manifests(name: &str) -> Vec<Value> {
    let path = repo().join("envoy/istio").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes `bootstrap` to a fresh file and runs `envoy --mode validate` on it.
fn validate_bootstrap(name: &str, bootstrap: &Value) -> Result<String, String> {
    let file = temp_dir(name).join("bootstrap.json");
    std::fs::write(&file, serde_json::to_string_pretty(bootstrap).unwrap()).unwrap();
    validate(&file)
}

/// Istio's MERGE, as far as these patches need it: objects merge key by key, lists append,
/// anything else is replaced.
fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (k, v) in patch {
                match into.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        into.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(into), Value::Array(patch)) => into.extend(patch.iter().cloned()),
        (into, patch) => *into = patch.clone(),
    }
}

/// Every `cluster_name` string anywhere in `v`.
fn cluster_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "cluster_name"
                    && let Some(name) = v.as_str()
                {
                    out.push(name.to_owned());
                }
                cluster_names(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| cluster_names(v, out)),
        _ => {}
    }
}

/// A static HTTP/2 cluster (what Istio builds for a gRPC port), with nothing behind it.
fn grpc_cluster(name: &str) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": 1 }
            } } }] }]
        }
    })
}

/// A gateway-like bootstrap: one listener whose HTTP connection manager has `http_filters`
/// (the router is appended) and one virtual host `vhost` routing to `upstream`, plus a
/// cluster for every `cluster_name` the filters mention.
fn bootstrap(http_filters: Vec<Value>, vhost: Value) -> Value {
    let mut names = vec![];
    cluster_names(&Value::Array(http_filters.clone()), &mut names);
    let mut clusters: Vec<Value> = names.iter().map(|n| grpc_cluster(n)).collect();
    clusters.push(grpc_cluster("upstream"));
    let mut filters = http_filters;
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    }));
    json!({
        "static_resources": {
            "listeners": [{
                "name": "gateway",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "gateway",
                        "route_config": { "name": "gateway", "virtual_hosts": [vhost] },
                        "http_filters": filters
                    }
                }] }]
            }],
            "clusters": clusters
        }
    })
}

fn plain_vhost() -> Value {
    json!({
        "name": "gateway",
        "domains": ["*"],
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "upstream" } }]
    })
}

/// The EnvoyFilter's patches applied to the minimal gateway bootstrap; `tamper` may change the
/// EnvoyFilter first.
fn ratelimit_bootstrap(tamper: impl FnOnce(&mut Value)) -> Value {
    let mut docs = manifests("envoyfilter-ratelimit.yaml");
    assert_eq!(docs.len(), 1, "one EnvoyFilter");
    let filter = &mut docs[0];
    assert_eq!(filter["apiVersion"], "networking.istio.io/v1alpha3");
    assert_eq!(filter["kind"], "EnvoyFilter");
    assert!(
        filter["spec"]["workloadSelector"]["labels"].is_object(),
        "select the gateway's workloads"
    );
    tamper(filter);
    let patches = filter["spec"]["configPatches"].as_array().unwrap();
    let mut http_filters = vec![];
    let mut vhost = plain_vhost();
    let (mut filter_patches, mut route_patches) = (0, 0);
    for p in patches {
        let op = p["patch"]["operation"].as_str().unwrap();
        let value = &p["patch"]["value"];
        assert!(value.is_object(), "patch without a value: {p}");
        match p["applyTo"].as_str().unwrap() {
            "HTTP_FILTER" => {
                // Before the router of the HTTP connection manager: what `bootstrap` builds.
                assert_eq!(op, "INSERT_BEFORE", "{p}");
                let at = &p["match"]["listener"]["filterChain"]["filter"];
                assert_eq!(at["name"], "envoy.filters.network.http_connection_manager");
                assert_eq!(at["subFilter"]["name"], "envoy.filters.http.router");
                http_filters.push(value.clone());
                filter_patches += 1;
            }
            "VIRTUAL_HOST" => {
                assert_eq!(op, "MERGE", "{p}");
                merge(&mut vhost, value);
                route_patches += 1;
            }
            "HTTP_ROUTE" => {
                assert_eq!(op, "MERGE", "{p}");
                for route in vhost["routes"].as_array_mut().unwrap() {
                    merge(route, value);
                }
                route_patches += 1;
            }
            other => panic!("this test does not apply {other} patches: {p}"),
        }
    }
    assert_eq!(filter_patches, 1, "one HTTP_FILTER patch");
    assert!(
        route_patches >= 1,
        "a VIRTUAL_HOST or HTTP_ROUTE patch with rate_limits"
    );
    bootstrap(http_filters, vhost)
}

#[test]
fn envoyfilter_patches_are_valid_envoy_config() {
    let config = ratelimit_bootstrap(|_| {});
    // The patches landed where Envoy will look for them.
    let hcm = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(
        hcm["http_filters"][0]["name"],
        "envoy.filters.http.ratelimit"
    );
    let typed = &hcm["http_filters"][0]["typed_config"];
    assert_eq!(
        typed["domain"], "edge",
        "the domain of envoy/config/edge.yaml"
    );
    assert_eq!(typed["rate_limit_service"]["transport_api_version"], "V3");
    let actions: Vec<String> = hcm["route_config"]["virtual_hosts"][0]["rate_limits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["actions"].as_array().unwrap())
        .flat_map(|a| a.as_object().unwrap().keys().cloned())
        .collect();
    assert_eq!(
        actions,
        ["request_headers", "generic_key", "remote_address"],
        "the descriptors envoy/config/edge.yaml has limits for"
    );
    if let Err(out) = validate_bootstrap("istio-ratelimit", &config) {
        panic!(
            "Envoy rejects the EnvoyFilter's patches:\n{out}\n{}",
            serde_json::to_string_pretty(&config).unwrap()
        );
    }
}

/// The check above can fail: a broken patch is refused by Envoy.
#[test]
fn a_broken_patch_is_caught() {
    let config = ratelimit_bootstrap(|f| {
        f["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["no_such_field"] =
            json!(true);
    });
    let out = validate_bootstrap("istio-broken-filter", &config)
        .expect_err("Envoy accepted an unknown field in the ratelimit filter");
    assert!(out.contains("no_such_field"), "{out}");

    let config = ratelimit_bootstrap(|f| {
        let patches = f["spec"]["configPatches"].as_array_mut().unwrap();
        let vhost = patches
            .iter_mut()
            .find(|p| p["applyTo"] != "HTTP_FILTER")
            .unwrap();
        vhost["patch"]["value"]["rate_limits"][0]["actions"][0] = json!({ "remote_adress": {} });
    });
    let out = validate_bootstrap("istio-broken-route", &config)
        .expect_err("Envoy accepted an unknown rate-limit action");
    assert!(out.contains("remote_adress"), "{out}");
}

/// `outbound|<port>||<service>`: the cluster istiod builds for a Kubernetes service port.
fn istio_cluster(service: &str, port: u64) -> String {
    format!("outbound|{port}||{service}")
}

#[test]
fn ext_authz_provider_renders_to_valid_envoy_config() {
    let docs = manifests("ext-authz-provider.yaml");
    assert_eq!(docs.len(), 1);
    let providers = docs[0]["meshConfig"]["extensionProviders"]
        .as_array()
        .unwrap();
    assert_eq!(providers.len(), 1);
    let provider = &providers[0];
    let grpc = provider["envoyExtAuthzGrpc"].as_object().unwrap();
    // The fields of Istio's MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider.
    const KNOWN: [&str; 7] = [
        "service",
        "port",
        "timeout",
        "failOpen",
        "clearRouteCache",
        "statusOnError",
        "includeRequestBodyInCheck",
    ];
    for key in grpc.keys() {
        assert!(
            KNOWN.contains(&key.as_str()),
            "unknown provider field `{key}`"
        );
    }
    let service = grpc["service"].as_str().unwrap();
    let port = grpc["port"].as_u64().expect("port is a number");
    assert!(service.ends_with(".svc.cluster.local"), "{service}");
    // What istiod renders from it (pilot/pkg/security/authz/builder/extauthz.go).
    let mut typed = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "grpc_service": {
            "envoy_grpc": { "cluster_name": istio_cluster(service, port), "authority": service },
        },
        "failure_mode_allow": grpc.get("failOpen").cloned().unwrap_or(json!(false)),
    });
    if let Some(timeout) = grpc.get("timeout") {
        typed["grpc_service"]["timeout"] = timeout.clone();
    }
    if let Some(status) = grpc.get("statusOnError") {
        let code: u64 = status.as_str().unwrap().parse().unwrap();
        typed["status_on_error"] = json!({ "code": code });
    }
    let config = bootstrap(
        vec![json!({ "name": "envoy.filters.http.ext_authz", "typed_config": typed })],
        plain_vhost(),
    );
    if let Err(out) = validate_bootstrap("istio-ext-authz", &config) {
        panic!(
            "Envoy rejects the ext_authz filter rendered from the provider:\n{out}\n{}",
            serde_json::to_string_pretty(&config).unwrap()
        );
    }
}

#[test]
fn authorization_policy_and_envoyfilter_agree_with_the_provider() {
    let provider = &manifests("ext-authz-provider.yaml")[0]["meshConfig"]["extensionProviders"][0];
    let name = provider["name"].as_str().unwrap();
    let service = provider["envoyExtAuthzGrpc"]["service"].as_str().unwrap();
    let port = provider["envoyExtAuthzGrpc"]["port"].as_u64().unwrap();

    let policies = manifests("authorizationpolicy.yaml");
    assert_eq!(policies.len(), 1);
    let policy = &policies[0];
    assert_eq!(policy["apiVersion"], "security.istio.io/v1");
    assert_eq!(policy["kind"], "AuthorizationPolicy");
    assert_eq!(policy["spec"]["action"], "CUSTOM");
    assert_eq!(policy["spec"]["provider"]["name"], name);
    assert!(policy["spec"]["selector"]["matchLabels"].is_object());

    // The EnvoyFilter talks to the same service and port.
    let filter = &manifests("envoyfilter-ratelimit.yaml")[0];
    let grpc = &filter["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["rate_limit_service"]
        ["grpc_service"]["envoy_grpc"];
    assert_eq!(grpc["cluster_name"], istio_cluster(service, port).as_str());
    assert_eq!(grpc["authority"], service);
    assert_eq!(
        filter["spec"]["workloadSelector"]["labels"], policy["spec"]["selector"]["matchLabels"],
        "both select the same gateway"
    );
}

/// The ready-to-run configs in `envoy/` are valid as shipped.
#[test]
fn shipped_envoy_configs_are_valid() {
    // Every Envoy config at the top of envoy/ (the service's own configs live in
    // envoy/config/, the Istio manifests in envoy/istio/).
    let mut shipped: Vec<_> = std::fs::read_dir(repo().join("envoy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    shipped.sort();
    assert!(shipped.len() >= 3, "{shipped:?}");
    for path in shipped {
        if let Err(out) = validate(Path::new(&path)) {
            panic!("{}:\n{out}", path.display());
        }
    }
}
