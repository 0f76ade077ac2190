//! envoyproxy/ratelimit files: upstream's README examples load unchanged, upstream's loader
//! errors are reported, and our extension keys work.

use super::{TempDir, assert_err, assert_err_at, errs, ok, one_err};
use crate::algorithm::{Algorithm, Quota};
use crate::config::{DescriptorDef, LimitDef, load, parse_str};

const SECOND: u64 = 1_000_000;
const DAY: u64 = 86_400 * SECOND;

pub(super) const README_EXAMPLE_1: &str = "\
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: second
      requests_per_unit: 500

  - key: database
    value: default
    rate_limit:
      unit: second
      requests_per_unit: 500
";

pub(super) const README_EXAMPLE_2: &str = "\
domain: messaging
descriptors:
  # Only allow 5 marketing messages a day
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5

  # Only allow 100 messages a day to any unique phone number
  - key: to_number
    rate_limit:
      unit: day
      requests_per_unit: 100
";

pub(super) const README_EXAMPLE_3: &str = "\
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 10

  # Black list IP
  - key: remote_address
    value: 50.0.0.5
    rate_limit:
      unit: second
      requests_per_unit: 0
";

pub(super) const README_EXAMPLE_4: &str = "\
domain: example4
descriptors:
  - key: key
    value: value
    descriptors:
      - key: subkey
        rate_limit:
          requests_per_unit: 300
          unit: second
";

pub(super) const README_EXAMPLE_5: &str = "\
domain: internal
descriptors:
  - key: ldap
    rate_limit:
      unlimited: true

  - key: azure
    rate_limit:
      unit: minute
      requests_per_unit: 100
";

pub(super) const README_EXAMPLE_6: &str = "\
domain: example6
descriptors:
  - key: service
    descriptors:
      - key: user
        value: user-a
        rate_limit:
          requests_per_unit: 10
          unit: second
        shadow_mode: true
      - key: user
        value: user-b
        rate_limit:
          requests_per_unit: 20
          unit: second
";

pub(super) const README_EXAMPLE_7: &str = "\
domain: example7
descriptors:
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          name: specific_limit
          requests_per_unit: 5
          unit: second
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces:
            - name: specific_limit
          requests_per_unit: 10
          unit: second
";

pub(super) const README_EXAMPLE_8: &str = "\
domain: example8
descriptors:
  - key: key1
    detailed_metric: true
    rate_limit:
      unit: minute
      requests_per_unit: 10
  - key: key1
    value: value1
    rate_limit:
      unit: minute
      requests_per_unit: 20
";

pub(super) const README_EXAMPLE_9: &str = "\
domain: example9
descriptors:
  - key: key1
    value: value*
    rate_limit:
      unit: minute
      requests_per_unit: 20
";

fn fixed(name: &str, limit: u64, window: u64) -> LimitDef {
    LimitDef {
        name: name.into(),
        algorithm: Algorithm::FixedWindow,
        quota: Quota::new(limit, window),
        shadow_mode: false,
        source: Default::default(),
    }
}

fn leaf(key: &str, value: Option<&str>, limits: Vec<LimitDef>) -> DescriptorDef {
    DescriptorDef {
        key: key.into(),
        value: value.map(Into::into),
        limits,
        unlimited: false,
        shadow_mode: false,
        replaces: vec![],
        detailed_metric: false,
        post_paid: false,
        quota_mode: false,
        metadata: None,
        share_threshold: false,
        value_to_metric: false,
        descriptors: vec![],
    }
}

/// The only descriptor at the top of the only domain.
fn first(text: &str) -> DescriptorDef {
    ok(text).domains[0].descriptors[0].clone()
}

fn with_rate_limit(extra: &str) -> String {
    format!(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: second, requests_per_unit: 10}}\n{extra}"
    )
}

#[test]
fn readme_example_1_two_values_of_one_key() {
    let config = ok(README_EXAMPLE_1);
    assert_eq!(config.domains.len(), 1);
    let domain = &config.domains[0];
    assert_eq!(domain.domain, "mongo_cps");
    assert_eq!(domain.file, "t.yaml");
    assert_eq!(
        domain.descriptors,
        vec![
            leaf(
                "database",
                Some("users"),
                vec![fixed("500-per-1s", 500, SECOND)]
            ),
            leaf(
                "database",
                Some("default"),
                vec![fixed("500-per-1s", 500, SECOND)]
            ),
        ]
    );
    // Envoy files configure no clients and leave the settings at their defaults.
    assert!(config.clients.keys.is_empty());
    assert_eq!(config.settings.default_domain, "ratelimiter");
}

#[test]
fn readme_example_2_nested_descriptors() {
    let config = ok(README_EXAMPLE_2);
    let d = &config.domains[0].descriptors;
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].key, "message_type");
    assert_eq!(d[0].value.as_deref(), Some("marketing"));
    assert!(d[0].limits.is_empty());
    assert_eq!(
        d[0].descriptors,
        vec![leaf("to_number", None, vec![fixed("5-per-1d", 5, DAY)])]
    );
    assert_eq!(
        d[1],
        leaf("to_number", None, vec![fixed("100-per-1d", 100, DAY)])
    );
}

#[test]
fn readme_example_3_zero_requests_blocks_everything() {
    let config = ok(README_EXAMPLE_3);
    let d = &config.domains[0].descriptors;
    assert_eq!(d[0].limits, vec![fixed("10-per-1s", 10, SECOND)]);
    assert_eq!(d[1].value.as_deref(), Some("50.0.0.5"));
    let block = &d[1].limits[0];
    assert_eq!(block.quota.limit, 0);
    assert_eq!(block.quota.burst, 0);
    assert_eq!(block.name, "0-per-1s");
}

#[test]
fn readme_example_4_and_6_nesting_and_shadow_mode() {
    let config = ok(README_EXAMPLE_4);
    let top = &config.domains[0].descriptors[0];
    assert!(top.limits.is_empty());
    assert_eq!(
        top.descriptors[0].limits,
        vec![fixed("300-per-1s", 300, SECOND)]
    );

    let config = ok(README_EXAMPLE_6);
    let users = &config.domains[0].descriptors[0].descriptors;
    assert!(users[0].shadow_mode);
    assert!(
        users[0].limits[0].shadow_mode,
        "a rate_limit inherits shadow_mode"
    );
    assert!(!users[1].shadow_mode);
    assert!(!users[1].limits[0].shadow_mode);
}

#[test]
fn readme_example_5_unlimited() {
    let config = ok(README_EXAMPLE_5);
    let d = &config.domains[0].descriptors;
    assert!(d[0].unlimited);
    assert!(d[0].limits.is_empty());
    assert!(!d[1].unlimited);
    assert_eq!(d[1].limits, vec![fixed("100-per-1m", 100, 60 * SECOND)]);
}

#[test]
fn readme_example_7_replaces() {
    let config = ok(README_EXAMPLE_7);
    let d = &config.domains[0].descriptors;
    let named = &d[0].descriptors[0];
    assert_eq!(named.limits[0].name, "specific_limit");
    assert!(named.replaces.is_empty());
    let replacing = &d[1].descriptors[0];
    assert_eq!(replacing.replaces, vec!["specific_limit".to_owned()]);
    assert_eq!(replacing.limits[0].name, "10-per-1s");
}

#[test]
fn readme_example_8_and_9_detailed_metric_and_wildcards() {
    let config = ok(README_EXAMPLE_8);
    let d = &config.domains[0].descriptors;
    assert!(d[0].detailed_metric);
    assert!(!d[1].detailed_metric);

    let config = ok(README_EXAMPLE_9);
    assert_eq!(
        config.domains[0].descriptors[0].value.as_deref(),
        Some("value*")
    );
    // Upstream's test file also has a `*` inside a value: kept as written.
    let d = first("domain: d\ndescriptors:\n  - key: midWild\n    value: bar*b\n");
    assert_eq!(d.value.as_deref(), Some("bar*b"));
}

#[test]
fn readme_examples_load_together_from_one_directory() {
    let dir = TempDir::new("readme");
    for (i, text) in [
        README_EXAMPLE_1,
        README_EXAMPLE_2,
        README_EXAMPLE_3,
        README_EXAMPLE_4,
        README_EXAMPLE_5,
        README_EXAMPLE_6,
        README_EXAMPLE_7,
        README_EXAMPLE_8,
        README_EXAMPLE_9,
    ]
    .iter()
    .enumerate()
    {
        dir.write(&format!("example{}.yaml", i + 1), text);
    }
    let config = load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let domains: Vec<_> = config.domains.iter().map(|d| d.domain.as_str()).collect();
    assert_eq!(
        domains,
        [
            "mongo_cps",
            "messaging",
            "edge_proxy_per_ip",
            "example4",
            "internal",
            "example6",
            "example7",
            "example8",
            "example9"
        ]
    );
    assert!(config.domains[1].file.ends_with("example2.yaml"));
}

#[test]
fn every_upstream_unit_is_a_fixed_window_of_fixed_length() {
    for (unit, window, name) in [
        ("second", SECOND, "1-per-1s"),
        ("minute", 60 * SECOND, "1-per-1m"),
        ("hour", 3_600 * SECOND, "1-per-1h"),
        ("day", DAY, "1-per-1d"),
        ("week", 7 * DAY, "1-per-1w"),
        ("month", 30 * DAY, "1-per-30d"),
        ("year", 365 * DAY, "1-per-365d"),
        ("SECOND", SECOND, "1-per-1s"),
        ("Minute", 60 * SECOND, "1-per-1m"),
    ] {
        let d = first(&format!(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: {unit}, requests_per_unit: 1}}\n"
        ));
        assert_eq!(d.limits, vec![fixed(name, 1, window)], "{unit}");
    }
}

#[test]
fn unit_multiplier_scales_the_window() {
    let d = first(
        "domain: d\ndescriptors:\n  - key: key1\n    rate_limit:\n      unit: minute\n      requests_per_unit: 20\n      unit_multiplier: 5\n",
    );
    assert_eq!(d.limits, vec![fixed("20-per-5m", 20, 300 * SECOND)]);
    let d = first(
        "domain: d\ndescriptors:\n  - key: key1\n    rate_limit: {unit: second, requests_per_unit: 5, unit_multiplier: 1}\n",
    );
    assert_eq!(d.limits[0].quota.window, SECOND);

    assert_err_at(
        "domain: d\ndescriptors:\n  - key: key1\n    rate_limit:\n      unit: second\n      requests_per_unit: 5\n      unit_multiplier: 0\n",
        7,
        24,
        "rate_limit.unit_multiplier: must be at least 1",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: day, requests_per_unit: 5, unit_multiplier: 400}\n",
        "longer than 366 days",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: year, requests_per_unit: 5, unit_multiplier: 18446744073709551615}\n",
        "longer than 366 days",
    );
}

#[test]
fn empty_domain_is_an_error() {
    let e = one_err("domain: \"\"\ndescriptors: []\n");
    assert_eq!(e.message, "domain: config file cannot have empty domain");
    assert_eq!((e.line, e.column), (Some(1), Some(9)));
    assert_err(
        "domain:\ndescriptors: []\n",
        "config file cannot have empty domain",
    );
    assert_err("domain: [a]\n", "expected a string, found a list");
}

#[test]
fn a_domain_without_descriptors_is_fine() {
    let config = ok("domain: quiet\n");
    assert_eq!(config.domains[0].domain, "quiet");
    assert!(config.domains[0].descriptors.is_empty());
}

#[test]
fn empty_key_is_an_error() {
    assert_err_at(
        "domain: d\ndescriptors:\n  - value: v\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
        3,
        5,
        "descriptors[0]: descriptor has empty key",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: \"\"\n",
        "descriptor has empty key",
    );
}

#[test]
fn duplicate_composite_keys_among_siblings_are_errors() {
    let e = one_err(
        "domain: test-domain\ndescriptors:\n  - key: key1\n    value: value1\n  - key: key1\n    value: value1\n",
    );
    assert_eq!(
        e.message,
        "descriptors[1]: duplicate descriptor composite key 'test-domain.key1_value1'"
    );
    assert_eq!((e.line, e.column), (Some(5), Some(10)));

    // Nested: the composite key names the whole path.
    assert_err(
        "domain: d\ndescriptors:\n  - key: a\n    value: x\n    descriptors:\n      - key: b\n      - key: b\n",
        "duplicate descriptor composite key 'd.a_x.b'",
    );
    // The same key with different values, or at different levels, is fine.
    ok("domain: d\ndescriptors:\n  - key: a\n  - key: a\n    value: x\n  - key: a\n    value: y\n");
    ok("domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: a\n");
    // An empty value is no value.
    assert_err(
        "domain: d\ndescriptors:\n  - key: a\n  - key: a\n    value: \"\"\n",
        "duplicate descriptor composite key 'd.a'",
    );
}

#[test]
fn invalid_units_are_errors() {
    assert_err_at(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: foo\n      requests_per_unit: 1\n",
        5,
        13,
        "invalid rate limit unit 'foo'",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: unknown, requests_per_unit: 1}\n",
        "invalid rate limit unit 'unknown'",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {requests_per_unit: 1}\n",
        "invalid rate limit unit ''",
    );
}

#[test]
fn requests_per_unit_is_required_and_fits_32_bits() {
    assert_err_at(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n",
        5,
        7,
        "rate_limit: missing requests_per_unit (or unlimited: true)",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 4294967296}\n",
        "requests_per_unit: must be at most 4294967295",
    );
    assert_eq!(
        first("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 4294967295}\n")
            .limits[0]
            .quota
            .limit,
        4_294_967_295
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: -1}\n",
        "must not be negative",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: \"10\"}\n",
        "expected a whole number, found a string",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 2.5}\n",
        "expected a whole number, found 2.5",
    );
}

#[test]
fn unlimited_takes_no_unit_or_requests() {
    assert_err_at(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unlimited: true\n      unit: second\n",
        6,
        13,
        "should not specify rate limit unit when unlimited",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, requests_per_unit: 5}\n",
        "should not specify requests_per_unit when unlimited",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit_multiplier: 5}\n",
        "should not specify unit_multiplier when unlimited",
    );
    // `unlimited: false` is an ordinary limit.
    let d = first(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: false, unit: hour, requests_per_unit: 7}\n",
    );
    assert!(!d.unlimited);
    assert_eq!(d.limits[0].quota, Quota::new(7, 3_600 * SECOND));
}

#[test]
fn replaces_entries_need_a_name_other_than_their_own() {
    assert_err_at(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      replaces:\n        - name: \"\"\n",
        8,
        11,
        "should not have an empty replaces entry",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      name: mine\n      unit: second\n      requests_per_unit: 1\n      replaces:\n        - name: mine\n",
        "replaces should not contain name of same descriptor",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      replaces: [ {} ]\n",
        "should not have an empty replaces entry",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      replaces: [ other ]\n",
        "replaces[0]: expected a mapping, found a string",
    );
    // A replaces entry may not name another limit of the same descriptor either.
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      replaces: [ {name: extra} ]\n    limits: [ {name: extra, limit: 1, window: 1m} ]\n",
        "replaces should not contain name of same descriptor",
    );
}

#[test]
fn unknown_keys_are_errors_where_they_stand() {
    let e = one_err(
        "domain: d\ndescriptors:\n  - key: k\n    ratelimit:\n      unit: second\n      requests_per_unit: 1\n",
    );
    assert_eq!(
        e.message,
        "descriptors[0]: unknown key 'ratelimit' (did you mean rate_limit?)"
    );
    assert_eq!((e.line, e.column), (Some(4), Some(5)));
    assert_err_at(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requestsperunit: 1\n",
        6,
        7,
        "descriptors[0].rate_limit: unknown key 'requestsperunit'",
    );
    assert_err("domain: d\nsomething: 1\n", "unknown key 'something'");
    assert_err(
        "domain: d\nsettings: {max_cost: 5}\n",
        "a file with domain: is an envoyproxy/ratelimit file",
    );
    // Known upstream keys in the wrong place get a pointer to the right one.
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    replaces: [ {name: x} ]\n",
        "replaces goes inside rate_limit",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, shadow_mode: true}\n",
        "shadow_mode goes on the descriptor",
    );
}

#[test]
fn share_threshold_needs_a_wildcard_value_as_upstream_says() {
    assert!(
        first("domain: d\ndescriptors:\n  - key: k\n    value: v*\n    share_threshold: true\n")
            .share_threshold
    );
    assert!(!first("domain: d\ndescriptors:\n  - key: k\n    value: v*\n").share_threshold);
    assert_err_at(
        "domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n",
        5,
        22,
        "descriptors[0].share_threshold: share_threshold can only be used with wildcard values (containing '*'), but found key 'k_v'",
    );
}

#[test]
fn quota_mode_and_metadata_are_read_as_upstream_writes_them() {
    let config = ok(
        "domain: d\ndescriptors:\n  - key: k\n    quota_mode: true\n    rate_limit: {unit: second, requests_per_unit: 1}\n    metadata:\n      team: a\n      cost: {weight: 2, tags: [x, 1]}\n",
    );
    let d = &config.domains[0].descriptors[0];
    assert!(d.quota_mode);
    let metadata = serde_json::Value::Object(d.metadata.clone().unwrap());
    assert_eq!(
        metadata,
        serde_json::json!({"team": "a", "cost": {"weight": 2, "tags": ["x", 1]}})
    );
    let plain = ok("domain: d\ndescriptors:\n  - key: k\n");
    assert!(!plain.domains[0].descriptors[0].quota_mode);
    assert_eq!(plain.domains[0].descriptors[0].metadata, None);
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    metadata: [a]\n",
        "descriptors[0].metadata: expected a mapping, found a list",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    quota_mode: sometimes\n",
        "descriptors[0].quota_mode: expected true or false",
    );
}

#[test]
fn non_string_keys_and_lists_of_non_mappings_are_errors() {
    assert_err_at(
        "domain: d\ndescriptors:\n  - key: k\n    0.25: x\n",
        4,
        5,
        "key is not a string: 0.25",
    );
    assert_err_at(
        "domain: d\ndescriptors:\n  - a\n",
        3,
        5,
        "descriptors[0]: expected a mapping, found a string",
    );
    assert_err(
        "domain: d\ndescriptors: {key: k}\n",
        "descriptors: expected a list, found a mapping",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: [second, 5]\n",
        "rate_limit: expected a mapping, found a list",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: {a: b}\n",
        "key: expected a string, found a mapping",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    shadow_mode: \"true\"\n",
        "shadow_mode: expected true or false, found a string",
    );
    // YAML 1.1 booleans are not booleans.
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    shadow_mode: yes\n",
        "expected true or false",
    );
}

#[test]
fn values_are_text_as_written() {
    for (written, read) in [
        ("10", "10"),
        ("2.10", "2.10"),
        ("no", "no"),
        ("on", "on"),
        ("true", "true"),
        ("0x1F", "0x1F"),
        ("007", "007"),
        ("50.0.0.5", "50.0.0.5"),
        ("\"quoted: yes\"", "quoted: yes"),
        ("'*'", "*"),
    ] {
        let d = first(&format!(
            "domain: d\ndescriptors:\n  - key: k\n    value: {written}\n"
        ));
        assert_eq!(d.value.as_deref(), Some(read), "{written}");
    }
    // A numeric domain and key are text too.
    let config = ok("domain: 42\ndescriptors:\n  - key: 7\n");
    assert_eq!(config.domains[0].domain, "42");
    assert_eq!(config.domains[0].descriptors[0].key, "7");
}

#[test]
fn a_star_in_a_key_is_refused() {
    assert_err(
        "domain: d\ndescriptors:\n  - key: a*\n",
        "a descriptor key cannot contain '*'",
    );
}

#[test]
fn duplicate_domains_across_files_are_errors() {
    let dir = TempDir::new("dup-domain");
    dir.write("a.yaml", "domain: shared\ndescriptors: []\n");
    dir.write("b.yaml", "domain: shared\ndescriptors: []\n");
    let errors = load(dir.path()).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    let e = &errors.0[0];
    assert!(e.file.ends_with("b.yaml"), "{e}");
    assert_eq!((e.line, e.column), (Some(1), Some(9)));
    assert!(
        e.message
            .starts_with("domain: duplicate domain 'shared' in config file (first in ")
    );
    assert!(e.message.ends_with("a.yaml)"), "{e}");
}

#[test]
fn descriptors_nest_at_most_16_levels() {
    fn nested(levels: usize) -> String {
        let mut text = String::from("domain: d\ndescriptors:\n");
        for level in 0..levels {
            let pad = "  ".repeat(2 * level);
            text.push_str(&format!("{pad}  - key: k{level}\n"));
            if level + 1 < levels {
                text.push_str(&format!("{pad}    descriptors:\n"));
            }
        }
        text
    }
    let config = ok(&nested(16));
    let mut d = &config.domains[0].descriptors[0];
    let mut depth = 1;
    while let Some(child) = d.descriptors.first() {
        d = child;
        depth += 1;
    }
    assert_eq!(depth, 16);
    assert_eq!(d.key, "k15");

    let e = one_err(&nested(17));
    assert!(
        e.message
            .ends_with("descriptors nested deeper than 16 levels"),
        "{e}"
    );
    assert_eq!(e.line, Some(2 + 2 * 16 + 1));
    // Far deeper: one message, no stack trouble.
    assert_err(&nested(40), "invalid YAML: nested deeper than 48 levels");
}

#[test]
fn algorithm_extension_applies_to_the_rate_limit() {
    let d = first(&with_rate_limit("    algorithm: token_bucket\n"));
    assert_eq!(d.limits[0].algorithm, Algorithm::TokenBucket);
    assert_eq!(d.limits[0].quota, Quota::new(10, SECOND));
    let d = first(&with_rate_limit("    algorithm: sliding_window\n"));
    assert_eq!(d.limits[0].algorithm, Algorithm::SlidingWindow);
    let d = first(&with_rate_limit("    algorithm: fixed_window\n"));
    assert_eq!(d.limits[0].algorithm, Algorithm::FixedWindow);

    assert_err_at(
        &with_rate_limit("    algorithm: leaky\n"),
        5,
        16,
        "unknown algorithm 'leaky' (expected token_bucket, sliding_window or fixed_window)",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    algorithm: token_bucket\n",
        "algorithm applies to this descriptor's rate_limit, and it has none",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true}\n    algorithm: token_bucket\n",
        "algorithm does not apply to an unlimited rate_limit",
    );
}

#[test]
fn burst_extension_is_for_token_buckets_only() {
    let d = first(&with_rate_limit(
        "    algorithm: token_bucket\n    burst: 20\n",
    ));
    assert_eq!(
        d.limits[0].quota,
        Quota {
            limit: 10,
            window: SECOND,
            burst: 20
        }
    );
    assert_err_at(
        &with_rate_limit("    burst: 20\n"),
        5,
        12,
        "burst applies to token_bucket only (this rate_limit is fixed_window; add algorithm: token_bucket)",
    );
    assert_err(
        &with_rate_limit("    algorithm: sliding_window\n    burst: 20\n"),
        "burst applies to token_bucket only",
    );
    assert_err(
        &with_rate_limit("    algorithm: token_bucket\n    burst: 0\n"),
        "burst: must be at least 1",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    burst: 5\n",
        "burst applies to this descriptor's rate_limit, and it has none",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 0}\n    algorithm: token_bucket\n    burst: 5\n",
        "burst cannot be used with requests_per_unit: 0",
    );
}

#[test]
fn limits_extension_adds_limits_after_the_rate_limit() {
    let d = first(&with_rate_limit(
        "    limits:\n      - { name: per-day, limit: 10000, window: 1d }\n      - { limit: 5, window: 10s, algorithm: token_bucket, burst: 8 }\n      - { limit: 3, window: 1m, algorithm: sliding_window, shadow_mode: true }\n",
    ));
    assert_eq!(
        d.limits,
        vec![
            fixed("10-per-1s", 10, SECOND),
            fixed("per-day", 10_000, DAY),
            LimitDef {
                name: "5-per-10s".into(),
                algorithm: Algorithm::TokenBucket,
                quota: Quota {
                    limit: 5,
                    window: 10 * SECOND,
                    burst: 8
                },
                shadow_mode: false,
                source: Default::default(),
            },
            LimitDef {
                name: "3-per-1m".into(),
                algorithm: Algorithm::SlidingWindow,
                quota: Quota::new(3, 60 * SECOND),
                shadow_mode: true,
                source: Default::default(),
            },
        ]
    );
    // Without a rate_limit, and inheriting the descriptor's shadow_mode.
    let d = first(
        "domain: d\ndescriptors:\n  - key: k\n    shadow_mode: true\n    limits: [ {limit: 1, window: 1s} ]\n",
    );
    assert_eq!(d.limits.len(), 1);
    assert!(d.limits[0].shadow_mode);
}

#[test]
fn limit_names_are_unique_within_a_descriptor() {
    assert_err_at(
        &with_rate_limit("    limits:\n      - { limit: 10, window: 1s }\n"),
        6,
        9,
        "duplicate limit name '10-per-1s' (names must be unique within one descriptor)",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {name: a, unit: second, requests_per_unit: 1}\n    limits: [ {name: a, limit: 2, window: 1m} ]\n",
        "duplicate limit name 'a'",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    limits: [ {name: a, limit: 1, window: 1s}, {name: a, limit: 2, window: 1m} ]\n",
        "duplicate limit name 'a'",
    );
    // The same name on different descriptors is fine.
    ok(
        "domain: d\ndescriptors:\n  - key: a\n    limits: [ {name: x, limit: 1, window: 1s} ]\n  - key: b\n    limits: [ {name: x, limit: 1, window: 1s} ]\n",
    );
}

#[test]
fn limits_extension_entries_are_checked() {
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true}\n    limits: [ {limit: 1, window: 1s} ]\n",
        "an unlimited descriptor cannot have limits",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    limits: []\n",
        "limits: must not be empty",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    limits: [ {limit: 0, window: 1s} ]\n",
        "limits[0].limit: must be at least 1",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    limits: [ {limit: 1, window: 1.5s} ]\n",
        "limits[0].window: invalid duration '1.5s': whole numbers only",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    limits: [ {limit: 1, window: 1s, burst: 2} ]\n",
        "burst applies to token_bucket only (this limit is fixed_window)",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    limits: [ {unit: second, requests_per_unit: 1} ]\n",
        "a limit here is written as limit: N, window: 1s",
    );
}

#[test]
fn one_bad_file_does_not_hide_problems_in_the_others() {
    let dir = TempDir::new("mixed-errors");
    dir.write("a.yaml", "domain: a\ndescriptors:\n  - key: k\n   broken\n");
    dir.write(
        "b.yaml",
        "domain: b\ndescriptors:\n  - key: k\n    rate_limit: {unit: eon, requests_per_unit: 1}\n",
    );
    dir.write(
        "c.yaml",
        "clients:\n  keys:\n    - { key: x, tier: nope }\n",
    );
    let errors = load(dir.path()).unwrap_err();
    assert_eq!(errors.0.len(), 3, "{errors}");
    assert!(
        errors.0[0].file.ends_with("a.yaml") && errors.0[0].message.starts_with("invalid YAML")
    );
    assert!(errors.0[1].file.ends_with("b.yaml") && errors.0[1].message.contains("'eon'"));
    assert!(
        errors.0[2].file.ends_with("c.yaml") && errors.0[2].message.contains("unknown tier 'nope'")
    );
}

#[test]
fn anchors_and_merges_work_in_envoy_files() {
    let config = ok(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: &per_sec {unit: second, requests_per_unit: 3}\n  - key: b\n    rate_limit: *per_sec\n  - key: c\n    rate_limit:\n      <<: *per_sec\n      requests_per_unit: 4\n",
    );
    let d = &config.domains[0].descriptors;
    assert_eq!(d[0].limits, vec![fixed("3-per-1s", 3, SECOND)]);
    assert_eq!(d[1].limits, d[0].limits);
    assert_eq!(d[2].limits, vec![fixed("4-per-1s", 4, SECOND)]);
    // A problem inside an aliased node is reported where it is used.
    let errors = errs(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: &bad {unit: often, requests_per_unit: 3}\n  - key: b\n    rate_limit: *bad\n",
    );
    assert_eq!(errors.0.len(), 2, "{errors}");
    assert_eq!(errors.0[1].line, Some(6));
}

#[test]
fn parse_str_names_the_file_in_every_problem() {
    let errors = parse_str("edge.yaml", "domain: \"\"\n").unwrap_err();
    assert!(errors.0.iter().all(|e| e.file == "edge.yaml"));
    assert!(errors.to_string().starts_with("edge.yaml:1:9: "));
}

#[test]
fn sliding_windows_above_the_cap_are_refused_in_envoy_files_too() {
    use crate::algorithm::sliding_window::MAX_LIMIT;
    let text = |limit: u64| {
        format!(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: hour, requests_per_unit: {limit}}}\n    algorithm: sliding_window\n"
        )
    };
    ok(&text(MAX_LIMIT));
    // Refused where it is written, at load (and so by `ratelimiter validate`).
    assert_err_at(
        &text(MAX_LIMIT + 1),
        4,
        49,
        &format!(
            "descriptors[0].rate_limit.requests_per_unit: limit `{}-per-1h`: a sliding_window limit is at most {MAX_LIMIT}",
            MAX_LIMIT + 1
        ),
    );
    assert_err(&text(MAX_LIMIT + 1), "token_bucket or fixed_window");
}

#[test]
fn post_paid_extension_marks_the_descriptor() {
    let d = first(&with_rate_limit("    post_paid: true\n"));
    assert!(d.post_paid);
    assert!(!first(&with_rate_limit("")).post_paid);
    assert!(!first(&with_rate_limit("    post_paid: false\n")).post_paid);
    // It applies to that descriptor's limits only: a child is not post-paid.
    let config = ok(
        "domain: d\ndescriptors:\n  - key: tenant\n    post_paid: true\n    limits: [ {limit: 1000, window: 1m} ]\n    descriptors:\n      - key: model\n        rate_limit: {unit: minute, requests_per_unit: 5}\n",
    );
    let tenant = &config.domains[0].descriptors[0];
    assert!(tenant.post_paid);
    assert!(!tenant.descriptors[0].post_paid);

    assert_err_at(
        &with_rate_limit("    post_paid: \"yes\"\n"),
        5,
        16,
        "post_paid: expected true or false, found a string",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    post_paid: true\n",
        "post_paid applies to this descriptor's limits, and it has none",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true}\n    post_paid: true\n",
        "post_paid applies to this descriptor's limits, and it has none",
    );
    assert_err(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, post_paid: true}\n",
        "post_paid goes on the descriptor",
    );
}
