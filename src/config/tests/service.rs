//! The service's own format: settings and the clients table.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::{TempDir, assert_err, assert_err_at, errs, ok, one_err, parse_str};
use crate::algorithm::{Algorithm, Quota};
use crate::config::{ClientKey, FailurePolicy, HeaderStyle, LimitDef, Settings, UnknownKey, load};

const SECOND: u64 = 1_000_000;

pub(super) const BRIEF_EXAMPLE: &str = r#"
settings: { default_domain: ratelimiter, headers: ietf, on_store_failure: fail_closed, max_cost: 1000 }
clients:
  unknown_key: reject            # or the name of a tier
  tiers:
    demo:     [ { name: demo, algorithm: token_bucket, limit: 5, window: 10s } ]
    standard: [ { name: per-second, limit: 10, window: 1s, burst: 20 }, { name: per-day, algorithm: fixed_window, limit: 10000, window: 1d } ]
  keys:
    - { key: my-key, tier: demo }                         # plain key (demos)
    - { sha256: "9574b112f6ddd7deba5f845a015bb880e0fdc9dc1b6f50e979b5cfd0cb73a7d7", tier: standard, name: acme }
    - { key: special, limits: [ { limit: 100, window: 1m } ] }
"#;

fn sha(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn tb(name: &str, limit: u64, window: u64, burst: u64) -> LimitDef {
    LimitDef {
        name: name.into(),
        algorithm: Algorithm::TokenBucket,
        quota: Quota {
            limit,
            window,
            burst,
        },
        shadow_mode: false,
        source: Default::default(),
    }
}

fn demo_tier() -> Vec<LimitDef> {
    vec![tb("demo", 5, 10 * SECOND, 5)]
}

fn standard_tier() -> Vec<LimitDef> {
    vec![
        tb("per-second", 10, SECOND, 20),
        LimitDef {
            name: "per-day".into(),
            algorithm: Algorithm::FixedWindow,
            quota: Quota::new(10_000, 86_400 * SECOND),
            shadow_mode: false,
            source: Default::default(),
        },
    ]
}

/// A clients table with `tiers` and `keys` (YAML flow or block text, indented for `clients:`).
fn clients(tiers: &str, keys: &str) -> String {
    format!("clients:\n  tiers:\n{tiers}  keys:\n{keys}")
}

const DEMO: &str = "    demo: [ { limit: 5, window: 10s } ]\n";

#[test]
fn the_shipped_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ratelimiter.yaml");
    let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.settings, Settings::default());
    assert!(config.domains.is_empty());
    let table = &config.clients;
    assert_eq!(table.unknown_key, UnknownKey::Reject);
    assert_eq!(table.tiers.len(), 2);
    assert_eq!(table.tiers["demo"], demo_tier());
    assert_eq!(table.tiers["standard"], standard_tier());
    assert_eq!(
        table.keys,
        vec![
            ClientKey {
                digest: sha("my-key"),
                label: "demo".into(),
                limits: demo_tier(),
            },
            ClientKey {
                digest: sha("standard-key"),
                label: "standard-example".into(),
                limits: standard_tier(),
            },
        ]
    );
}

#[test]
fn the_example_from_the_design_loads() {
    let config = ok(BRIEF_EXAMPLE);
    assert_eq!(config.settings, Settings::default());
    let keys = &config.clients.keys;
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[0].label, "demo");
    assert_eq!(keys[1].digest, sha("standard-key"));
    assert_eq!(keys[1].label, "acme");
    assert_eq!(keys[1].limits, standard_tier());
    // A key with its own limits: token bucket by default, a default name, a neutral label.
    assert_eq!(keys[2].digest, sha("special"));
    assert_eq!(keys[2].label, "custom");
    assert_eq!(
        keys[2].limits,
        vec![tb("100-per-1m", 100, 60 * SECOND, 100)]
    );
}

#[test]
fn settings_parse_every_value() {
    let config = ok(
        "settings:\n  default_domain: api\n  headers: x-ratelimit\n  on_store_failure: local\n  max_cost: 5\n",
    );
    assert_eq!(
        config.settings,
        Settings {
            default_domain: "api".into(),
            headers: HeaderStyle::XRateLimit,
            on_store_failure: FailurePolicy::Local,
            max_cost: 5,
            ..Settings::default()
        }
    );
    for (text, style) in [
        ("ietf", HeaderStyle::Ietf),
        ("x-ratelimit", HeaderStyle::XRateLimit),
        ("both", HeaderStyle::Both),
        ("none", HeaderStyle::None),
    ] {
        assert_eq!(
            ok(&format!("settings: {{headers: {text}}}\n"))
                .settings
                .headers,
            style
        );
    }
    for (text, policy) in [
        ("fail_open", FailurePolicy::FailOpen),
        ("fail_closed", FailurePolicy::FailClosed),
        ("local", FailurePolicy::Local),
    ] {
        assert_eq!(
            ok(&format!("settings: {{on_store_failure: {text}}}\n"))
                .settings
                .on_store_failure,
            policy
        );
    }
    // Anything left out keeps its default.
    let config = ok("settings:\n  max_cost: 7\n");
    assert_eq!(config.settings.default_domain, "ratelimiter");
    assert_eq!(config.settings.headers, HeaderStyle::Ietf);
    assert_eq!(config.settings.on_store_failure, FailurePolicy::FailClosed);
    assert_eq!(config.settings.max_cost, 7);
}

#[test]
fn bad_settings_are_errors() {
    assert_err_at(
        "settings:\n  headers: rfc\n",
        2,
        12,
        "settings.headers: unknown header style 'rfc' (expected ietf, x-ratelimit, both or none)",
    );
    assert_err(
        "settings: {on_store_failure: retry}\n",
        "unknown policy 'retry' (expected fail_open, fail_closed or local)",
    );
    assert_err_at(
        "settings:\n  max_cost: 0\n",
        2,
        13,
        "settings.max_cost: must be at least 1",
    );
    assert_err_at(
        "settings:\n  default_domain: \"\"\n",
        2,
        19,
        "settings.default_domain: must not be empty",
    );
    assert_err_at(
        "settings:\n  colour: blue\n",
        2,
        3,
        "settings: unknown key 'colour'",
    );
    assert_err(
        "settings: [a]\n",
        "settings: expected a mapping, found a list",
    );
}

#[test]
fn settings_may_appear_in_one_file_only() {
    let dir = TempDir::new("two-settings");
    dir.write("a.yaml", "settings: {max_cost: 5}\n");
    dir.write("b.yaml", "settings: {max_cost: 6}\n");
    let errors = load(dir.path()).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    let e = &errors.0[0];
    assert!(e.file.ends_with("b.yaml"));
    assert_eq!((e.line, e.column), (Some(1), Some(1)));
    assert!(
        e.message
            .starts_with("settings: settings may appear in one file only (first in ")
    );
}

#[test]
fn only_settings_and_clients_at_the_top() {
    assert_err_at(
        "settings: {}\nlimits: []\n",
        2,
        1,
        "unknown key 'limits' (this file has no domain:, so it is in the service's own format: settings, clients)",
    );
    assert_err(
        "descriptors: []\n",
        "descriptors belong in an envoyproxy/ratelimit file, which has a domain:",
    );
    assert_err("clients:\n  tier: {}\n", "clients: unknown key 'tier'");
}

#[test]
fn own_format_limits_default_to_token_bucket_and_can_switch() {
    let config = ok(&clients(
        "    t:\n      - { limit: 10, window: 1s }\n      - { limit: 100, window: 1m, algorithm: sliding_window }\n      - { limit: 1000, window: 1h, algorithm: fixed_window, shadow_mode: true }\n      - { name: burst, limit: 10, window: 1s, burst: 50 }\n",
        "    - { key: a, tier: t }\n",
    ));
    let limits = &config.clients.tiers["t"];
    assert_eq!(limits[0], tb("10-per-1s", 10, SECOND, 10));
    assert_eq!(limits[1].algorithm, Algorithm::SlidingWindow);
    assert_eq!(limits[1].name, "100-per-1m");
    assert_eq!(limits[2].algorithm, Algorithm::FixedWindow);
    assert!(limits[2].shadow_mode);
    assert_eq!(limits[3], tb("burst", 10, SECOND, 50));
}

#[test]
fn bad_limits_are_errors() {
    for (limit, needle) in [
        ("{ limit: 0, window: 1s }", "t[0].limit: must be at least 1"),
        (
            "{ limit: 1, window: 1s, burst: 0 }",
            "t[0].burst: must be at least 1",
        ),
        (
            "{ limit: 1, window: 1s, algorithm: fixed_window, burst: 2 }",
            "t[0].burst: burst applies to token_bucket only (this limit is fixed_window)",
        ),
        ("{ window: 1s }", "t[0]: missing 'limit'"),
        ("{ limit: 1 }", "t[0]: missing 'window'"),
        (
            "{ limit: 1, window: 10 }",
            "t[0].window: invalid duration '10': '10' needs a unit",
        ),
        (
            "{ limit: 1, window: 0s }",
            "t[0].window: duration '0s' must be more than zero",
        ),
        (
            "{ limit: 1, window: 400d }",
            "t[0].window: duration '400d' is longer than 366 days",
        ),
        (
            "{ limit: 1, window: 1s, algorithm: gcra }",
            "t[0].algorithm: unknown algorithm 'gcra'",
        ),
        (
            "{ limit: 1, window: 1s, name: \"\" }",
            "t[0].name: must not be empty",
        ),
        (
            "{ limit: 1, window: 1s, shadow_mode: 1 }",
            "t[0].shadow_mode: expected true or false",
        ),
        (
            "{ limit: 1, window: 1s, unit: second }",
            "t[0]: unknown key 'unit'",
        ),
        ("just-text", "t[0]: expected a mapping, found a string"),
    ] {
        assert_err(
            &format!("clients:\n  tiers:\n    t: [ {limit} ]\n"),
            &format!("clients.tiers.{needle}"),
        );
    }
    assert_err_at(
        "clients:\n  tiers:\n    t:\n      - limit: 1\n        window: 2x\n",
        5,
        17,
        "clients.tiers.t[0].window: invalid duration '2x': unknown unit 'x'",
    );
}

#[test]
fn limit_names_are_unique_within_a_tier_and_a_key() {
    assert_err_at(
        "clients:\n  tiers:\n    t:\n      - { name: a, limit: 1, window: 1s }\n      - { name: a, limit: 2, window: 1m }\n",
        5,
        17,
        "clients.tiers.t[1]: duplicate limit name 'a' (names must be unique within one tier)",
    );
    assert_err(
        &clients(
            "",
            "    - { key: k, limits: [ { limit: 1, window: 1s }, { limit: 1, window: 1s } ] }\n",
        ),
        "duplicate limit name '1-per-1s' (names must be unique within one key)",
    );
}

#[test]
fn tiers_must_hold_limits() {
    assert_err(
        "clients:\n  tiers:\n    t: []\n",
        "clients.tiers.t: a tier needs at least one limit",
    );
    assert_err(
        "clients:\n  tiers:\n    t: {limit: 1}\n",
        "clients.tiers.t: expected a list of limits",
    );
    assert_err(
        "clients:\n  tiers:\n    t:\n",
        "clients.tiers.t: expected a list of limits, found nothing",
    );
    assert_err(
        "clients:\n  tiers: [a]\n",
        "clients.tiers: expected a mapping of tier names to limits",
    );
    assert_err(
        "clients:\n  tiers:\n    reject: [ {limit: 1, window: 1s} ]\n",
        "a tier cannot be named 'reject'",
    );
    assert_err(
        "clients:\n  tiers:\n    1: [ {limit: 1, window: 1s} ]\n",
        "tier name is not a string: 1",
    );
}

#[test]
fn a_key_names_exactly_one_of_key_and_sha256() {
    let both = clients(
        DEMO,
        "    - { key: a, sha256: \"9574b112f6ddd7deba5f845a015bb880e0fdc9dc1b6f50e979b5cfd0cb73a7d7\", tier: demo }\n",
    );
    assert_err(
        &both,
        "clients.keys[0]: give either key or sha256, not both",
    );
    assert_err_at(
        &clients(DEMO, "    - { tier: demo }\n"),
        5,
        7,
        "clients.keys[0]: each key needs key: (the key) or sha256: (its SHA-256)",
    );
    assert_err(
        &clients(DEMO, "    - { key: \"\", tier: demo }\n"),
        "clients.keys[0].key: must not be empty",
    );
    assert_err(
        &clients(DEMO, "    - { key: [a], tier: demo }\n"),
        "expected a string, found a list",
    );
}

#[test]
fn a_key_names_exactly_one_of_tier_and_limits() {
    assert_err(
        &clients(
            DEMO,
            "    - { key: a, tier: demo, limits: [ {limit: 1, window: 1s} ] }\n",
        ),
        "clients.keys[0]: give either tier or limits, not both",
    );
    assert_err(
        &clients(DEMO, "    - { key: a }\n"),
        "each key needs tier: (a tier's name) or limits:",
    );
    assert_err(
        &clients(DEMO, "    - { key: a, limits: [] }\n"),
        "a key needs at least one limit",
    );
    assert_err(
        &clients(DEMO, "    - { key: a, limit: 1, window: 1s }\n"),
        "a key's own limits go in a list under limits:",
    );
}

#[test]
fn keys_may_name_only_existing_tiers() {
    let e = one_err(&clients(DEMO, "    - { key: a, tier: gold }\n"));
    assert_eq!(e.message, "clients.keys[0].tier: unknown tier 'gold'");
    assert_eq!((e.line, e.column), (Some(5), Some(23)));
    // A tier that exists but has problems is reported once, not again at each key.
    let errors = errs(&clients(
        "    bad: [ { limit: 0, window: 1s } ]\n",
        "    - { key: a, tier: bad }\n",
    ));
    assert_eq!(errors.0.len(), 1, "{errors}");
}

#[test]
fn sha256_must_be_64_hex_digits() {
    let good = "9574B112F6DDD7DEBA5F845A015BB880E0FDC9DC1B6F50E979B5CFD0CB73A7D7";
    let config = ok(&clients(
        DEMO,
        &format!("    - {{ sha256: \"{good}\", tier: demo }}\n"),
    ));
    assert_eq!(
        config.clients.keys[0].digest,
        sha("standard-key"),
        "either case"
    );
    for bad in [
        &good[..63],
        &format!("{good}0"),
        &format!("{}g", &good[..63]),
        "not-hex",
    ] {
        assert_err_at(
            &clients(
                DEMO,
                &format!("    - {{ sha256: \"{bad}\", tier: demo }}\n"),
            ),
            5,
            17,
            "clients.keys[0].sha256: must be 64 hexadecimal characters (the SHA-256 of the key)",
        );
    }
}

#[test]
fn duplicate_keys_are_errors_and_never_quote_the_key() {
    let secret = "correct-horse-battery-staple";
    let digest = hex::encode(sha(secret));
    let errors = errs(&clients(
        DEMO,
        &format!(
            "    - {{ key: {secret}, tier: demo }}\n    - {{ sha256: \"{digest}\", tier: demo }}\n"
        ),
    ));
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(
        errors.0[0].message,
        "clients.keys[1]: duplicate key: the same key as clients.keys[0] in t.yaml"
    );
    assert_eq!(errors.0[0].line, Some(6));

    // No message about a key ever contains the key.
    let errors = errs(&clients(
        DEMO,
        &format!(
            "    - {{ key: {secret}, tier: nope, name: \"\" }}\n    - {{ key: {secret}, tier: demo, extra: 1 }}\n"
        ),
    ));
    assert_eq!(errors.0.len(), 4, "{errors}");
    assert!(errors.contains("unknown tier 'nope'"));
    assert!(errors.contains("duplicate key"));
    assert!(!errors.to_string().contains(secret), "{errors}");
}

#[test]
fn keys_and_tiers_merge_across_files() {
    let dir = TempDir::new("merge");
    dir.write(
        "a-tiers.yaml",
        "clients:\n  tiers:\n    demo: [ { limit: 5, window: 10s } ]\n",
    );
    dir.write(
        "b-keys.yaml",
        "clients:\n  keys:\n    - { key: k1, tier: demo }\n",
    );
    dir.write(
        "c-more.yml",
        "clients:\n  unknown_key: demo\n  keys:\n    - { key: k2, tier: demo, name: second }\n",
    );
    let config = load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.clients.unknown_key, UnknownKey::Tier("demo".into()));
    let labels: Vec<_> = config
        .clients
        .keys
        .iter()
        .map(|k| k.label.as_str())
        .collect();
    assert_eq!(labels, ["demo", "second"]);
    assert_eq!(config.clients.keys[1].digest, sha("k2"));

    // The same key in two files.
    dir.write(
        "d-dup.yaml",
        "clients:\n  keys:\n    - { key: k1, tier: demo }\n",
    );
    let errors = load(dir.path()).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert!(errors.0[0].file.ends_with("d-dup.yaml"));
    assert!(
        errors.0[0]
            .message
            .contains("the same key as clients.keys[0] in ")
    );
    assert!(errors.0[0].message.ends_with("b-keys.yaml"));
    std::fs::remove_file(dir.path().join("d-dup.yaml")).unwrap();

    // The same tier in two files.
    dir.write(
        "e-dup.yaml",
        "clients:\n  tiers:\n    demo: [ { limit: 1, window: 1s } ]\n",
    );
    let errors = load(dir.path()).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!((errors.0[0].line, errors.0[0].column), (Some(3), Some(5)));
    assert!(
        errors.0[0]
            .message
            .starts_with("clients.tiers: tier 'demo' is already defined in ")
    );
    std::fs::remove_file(dir.path().join("e-dup.yaml")).unwrap();

    // unknown_key set in two files.
    dir.write("f-dup.yaml", "clients:\n  unknown_key: reject\n");
    let errors = load(dir.path()).unwrap_err();
    assert!(
        errors.contains("unknown_key may be set in one file only"),
        "{errors}"
    );
}

#[test]
fn unknown_key_is_reject_or_an_existing_tier() {
    assert_eq!(
        ok("clients: {unknown_key: reject}\n").clients.unknown_key,
        UnknownKey::Reject
    );
    assert_eq!(ok("clients: {}\n").clients.unknown_key, UnknownKey::Reject);
    let config = ok(&format!("clients:\n  unknown_key: demo\n  tiers:\n{DEMO}"));
    assert_eq!(config.clients.unknown_key, UnknownKey::Tier("demo".into()));
    assert_err_at(
        "clients:\n  unknown_key: gold\n",
        2,
        16,
        "clients.unknown_key: names tier 'gold', which does not exist (or use reject)",
    );
    assert_err(
        "clients: {unknown_key: \"\"}\n",
        "must be reject or the name of a tier",
    );
}

#[test]
fn a_directory_mixing_both_shapes_loads() {
    let dir = TempDir::new("mixed");
    dir.write(
        "edge.yaml",
        "domain: edge\ndescriptors:\n  - key: remote_address\n    rate_limit: { unit: second, requests_per_unit: 10 }\n    algorithm: token_bucket\n",
    );
    dir.write(
        "ratelimiter.yaml",
        include_str!("../../../config/ratelimiter.yaml"),
    );
    dir.write("api.yml", "domain: api\ndescriptors:\n  - key: path\n    value: /v1/*\n    rate_limit: { unit: minute, requests_per_unit: 60 }\n");
    // Ignored: hidden, other extensions, subdirectories (even if named *.yaml), nested files.
    dir.write(".hidden.yaml", "domain: hidden\n");
    dir.write("notes.txt", "not yaml");
    dir.write("backup.yaml~", "domain: backup\n");
    std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    dir.write("nested/inner.yaml", "domain: inner\n");

    let config = load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let domains: Vec<_> = config.domains.iter().map(|d| d.domain.as_str()).collect();
    assert_eq!(domains, ["api", "edge"], "sorted by file name");
    let edge = &config.domains[1].descriptors[0];
    assert_eq!(edge.limits[0].algorithm, Algorithm::TokenBucket);
    assert_eq!(config.clients.keys.len(), 2);
    assert_eq!(config.clients.tiers.len(), 2);
    assert_eq!(config.settings, Settings::default());
}

#[test]
fn ext_authz_rules_and_over_limit_body() {
    use crate::config::{ExtAuthzEntry, ValueSource};
    let config = ok(concat!(
        "settings:\n  over_limit_body: slow down\n  ext_authz:\n    descriptors:\n",
        "      - [ { key: route, from: path }, { key: tenant, from: \"context:tenant\" } ]\n",
        "      - [ { key: k, from: \"header:X-Key\" }, { key: c, from: \"value:fixed\" } ]\n",
    ));
    assert_eq!(config.settings.over_limit_body, "slow down");
    let rules = &config.settings.ext_authz;
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0].entries[1],
        ExtAuthzEntry {
            key: "tenant".into(),
            from: ValueSource::ContextExtension("tenant".into())
        }
    );
    assert_eq!(
        rules[1].entries[0].from,
        ValueSource::Header("x-key".into()),
        "header names are lower-cased"
    );
    assert_eq!(
        rules[1].entries[1].from,
        ValueSource::Literal("fixed".into())
    );
    for (bad, message) in [
        (
            "settings:\n  ext_authz:\n    descriptors:\n      - [ { key: a, from: cookie } ]\n",
            "unknown value source",
        ),
        (
            "settings:\n  ext_authz:\n    descriptors:\n      - [ { key: a, from: \"header:\" } ]\n",
            "needs a name",
        ),
        (
            "settings:\n  ext_authz:\n    descriptors:\n      - []\n",
            "at least one entry",
        ),
        (
            "settings:\n  ext_authz:\n    descriptors:\n      - [ { key: a } ]\n",
            "needs `key` and `from`",
        ),
        (
            "settings:\n  ext_authz:\n    rules: []\n",
            "unknown key 'rules'",
        ),
        (
            "settings:\n  ext_authz:\n    descriptors:\n      - [ { key: \"\", from: path } ]\n",
            "settings.ext_authz.descriptors[0][0].key: expected a descriptor key",
        ),
    ] {
        let err = crate::config::parse_str("s.yaml", bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains(message), "{err}");
    }
}

/// What loading `text` and compiling it into rules (as start-up and `ratelimiter validate`
/// do) says about it.
fn compile_errors(text: &str) -> Option<String> {
    match parse_str("t.yaml", text) {
        Ok(config) => crate::limiter::Rules::compile(&config)
            .err()
            .map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    }
}

#[test]
fn sliding_windows_above_the_cap_are_refused_naming_it_and_the_alternatives() {
    use crate::algorithm::sliding_window::MAX_LIMIT;
    let tier = |limit: u64, algorithm: &str| {
        clients(
            &format!(
                "    t: [ {{ name: big, limit: {limit}, window: 1h, algorithm: {algorithm} }} ]\n"
            ),
            "    - { key: k, tier: t }\n",
        )
    };
    assert_eq!(compile_errors(&tier(MAX_LIMIT, "sliding_window")), None);
    let err = compile_errors(&tier(MAX_LIMIT + 1, "sliding_window")).expect("refused");
    assert!(
        err.contains("limit `big`")
            && err.contains(&format!("sliding_window limit is at most {MAX_LIMIT}"))
            && err.contains("token_bucket or fixed_window"),
        "{err}"
    );
    // The same limit with a constant-size state is fine.
    for algorithm in ["token_bucket", "fixed_window"] {
        assert_eq!(compile_errors(&tier(1_000_000, algorithm)), None);
    }
    // Per-key limits too.
    let per_key = clients(
        DEMO,
        &format!(
            "    - {{ key: k, limits: [ {{ name: mine, limit: {}, window: 1m, algorithm: sliding_window }} ] }}\n",
            MAX_LIMIT + 1
        ),
    );
    let err = compile_errors(&per_key).expect("refused");
    assert!(
        err.contains("limit `mine`") && err.contains("at most"),
        "{err}"
    );
}

#[test]
fn global_shadow_quota_and_metadata_settings_default_off() {
    let defaults = Settings::default();
    assert!(!defaults.shadow_mode && !defaults.quota_mode && !defaults.response_dynamic_metadata);
    let config = ok(
        "settings:\n  shadow_mode: true\n  quota_mode: true\n  response_dynamic_metadata: true\n",
    );
    let s = &config.settings;
    assert!(s.shadow_mode && s.quota_mode && s.response_dynamic_metadata);
}

#[test]
fn ext_authz_budget_metadata_key_defaults_and_can_be_set_or_turned_off() {
    assert_eq!(
        Settings::default().ext_authz_budget_metadata_key,
        "ratelimit_budget"
    );
    let config = ok("settings:\n  ext_authz_budget_metadata_key: tenant_budget\n");
    assert_eq!(
        config.settings.ext_authz_budget_metadata_key,
        "tenant_budget"
    );
    let config = ok("settings:\n  ext_authz_budget_metadata_key: \"\"\n");
    assert_eq!(config.settings.ext_authz_budget_metadata_key, "");
    let err = crate::config::parse_str(
        "s.yaml",
        "settings:\n  ext_authz_budget_metadata_key: [a]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("ext_authz_budget_metadata_key"), "{err}");
}
