//! The limiter over the memory store with a manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::algorithm::Quota;
use crate::config;
use crate::store::{Clock, MemoryStore};

const SEC: u64 = 1_000_000;
const T0: u64 = 1_700_000_000 * SEC;

/// A limiter over one config file (read by the loader's own `parse_str`) and a memory store
/// on a manual clock.
fn limiter(name: &str, text: &str) -> (Limiter, Arc<AtomicU64>) {
    let rules = Rules::compile(&config::parse_str(name, text).unwrap()).unwrap();
    let (clock, now) = Clock::manual(T0);
    let store = Backend::Memory(MemoryStore::new(clock, 10_000));
    (Limiter::new(rules, store, None), now)
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

const CLIENTS: &str = r#"
clients:
  tiers:
    t: [ { name: per-10s, limit: 2, window: 10s } ]
  keys:
    - { key: alice, tier: t }
"#;

#[test]
fn unknown_key_is_rejected_and_known_key_limited() {
    let (l, now) = limiter("c.yaml", CLIENTS);
    run(async {
        let r = LimitRequest::for_api_key("ratelimiter", "mallory", 1);
        assert!(matches!(l.decide(&r).await, Err(LimitError::UnknownClient)));
        let r = LimitRequest::for_api_key("ratelimiter", "alice", 1);
        assert!(l.decide(&r).await.unwrap().allowed);
        assert!(l.decide(&r).await.unwrap().allowed);
        let d = l.decide(&r).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after, crate::algorithm::RetryAfter::After(5 * SEC));
        now.fetch_add(5 * SEC, Ordering::AcqRel);
        assert!(
            l.decide(&r).await.unwrap().allowed,
            "a token came back after 5 s"
        );
    });
}

const EDGE: &str = r#"
domain: edge
descriptors:
  - key: remote_address
    rate_limit: { unit: minute, requests_per_unit: 2 }
  - key: path
    value: /admin*
    rate_limit: { unit: minute, requests_per_unit: 1, name: admin }
  - key: path
    rate_limit: { unit: minute, requests_per_unit: 100, name: paths }
    shadow_mode: true
  - key: user
    descriptors:
      - key: plan
        value: free
        rate_limit: { unit: minute, requests_per_unit: 1, name: free }
      - key: plan
        value: vip
        rate_limit: { unit: minute, requests_per_unit: 3, name: vip, replaces: [ { name: free } ] }
"#;

fn edge<'a>(entries: &[(&'a str, &'a str)]) -> Descriptor<'a> {
    Descriptor {
        entries: entries.iter().map(|&(k, v)| Entry::new(k, v)).collect(),
        hits: None,
        limit_override: None,
    }
}

#[test]
fn envoy_matching_exact_wildcard_key_only_and_nesting() {
    let (l, _) = limiter("edge.yaml", EDGE);
    run(async {
        let ip = |v: &'static str| LimitRequest {
            domain: "edge",
            descriptors: vec![edge(&[("remote_address", v)])],
            hits: 1,
            client_required: false,
            post_paid: false,
        };
        // Key-only: each value has its own counter.
        assert!(l.decide(&ip("1.1.1.1")).await.unwrap().allowed);
        assert!(l.decide(&ip("1.1.1.1")).await.unwrap().allowed);
        assert!(!l.decide(&ip("1.1.1.1")).await.unwrap().allowed);
        assert!(l.decide(&ip("2.2.2.2")).await.unwrap().allowed);
        // Wildcard beats key-only.
        let path = |v: &'static str| LimitRequest {
            domain: "edge",
            descriptors: vec![edge(&[("path", v)])],
            hits: 1,
            client_required: false,
            post_paid: false,
        };
        let d = l.decide(&path("/admin/users")).await.unwrap();
        assert_eq!(&*d.limits[0].name, "admin");
        // Key-only, shadow mode: reported, never rejecting.
        let d = l.decide(&path("/public")).await.unwrap();
        assert_eq!(&*d.limits[0].name, "paths");
        assert!(d.limits[0].shadow);
        // Nested: the limit applies only where the last entry lands.
        let r = LimitRequest {
            domain: "edge",
            descriptors: vec![edge(&[("user", "u")])],
            hits: 1,
            client_required: false,
            post_paid: false,
        };
        assert!(l.decide(&r).await.unwrap().limits.is_empty());
        let r = LimitRequest {
            domain: "edge",
            descriptors: vec![edge(&[("user", "u"), ("plan", "free")])],
            hits: 1,
            client_required: false,
            post_paid: false,
        };
        assert_eq!(&*l.decide(&r).await.unwrap().limits[0].name, "free");
        // Unknown domain or entry: no limit.
        let r = LimitRequest {
            domain: "nope",
            descriptors: vec![edge(&[("user", "u")])],
            hits: 1,
            client_required: false,
            post_paid: false,
        };
        assert!(l.decide(&r).await.unwrap().allowed);
    });
}

#[test]
fn replaces_drops_the_named_limit() {
    let (l, _) = limiter("edge.yaml", EDGE);
    run(async {
        let r = LimitRequest {
            domain: "edge",
            descriptors: vec![
                edge(&[("user", "u"), ("plan", "free")]),
                edge(&[("user", "u"), ("plan", "vip")]),
            ],
            hits: 1,
            client_required: false,
            post_paid: false,
        };
        for _ in 0..3 {
            let d = l.decide(&r).await.unwrap();
            assert!(d.allowed);
            assert_eq!(d.limits.len(), 1);
            assert_eq!(&*d.limits[0].name, "vip");
        }
        assert!(!l.decide(&r).await.unwrap().allowed);
    });
}

#[test]
fn shadow_mode_never_rejects() {
    let (l, _) = limiter("edge.yaml", EDGE);
    run(async {
        let r = LimitRequest {
            domain: "edge",
            descriptors: vec![edge(&[("path", "/x")])],
            hits: 60,
            client_required: false,
            post_paid: false,
        };
        let d = l.decide(&r).await.unwrap();
        assert!(d.allowed);
        let d = l.decide(&r).await.unwrap();
        assert!(d.allowed, "over the shadow limit, still allowed");
        assert!(!d.limits[0].verdict.allowed, "…but reported as over");
        assert!(!d.over_limit[0]);
    });
}

#[test]
fn the_same_descriptor_twice_in_one_request_is_charged_twice() {
    let (l, _) = limiter("edge.yaml", EDGE);
    run(async {
        let r = LimitRequest {
            domain: "edge",
            descriptors: vec![
                edge(&[("remote_address", "9.9.9.9")]),
                edge(&[("remote_address", "9.9.9.9")]),
            ],
            hits: 1,
            client_required: false,
            post_paid: false,
        };
        let d = l.decide(&r).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.limits[0].verdict.remaining, 0);
        assert!(!l.decide(&r).await.unwrap().allowed);
    });
}

#[test]
fn per_descriptor_hits_and_zero_hits() {
    let (l, _) = limiter("edge.yaml", EDGE);
    run(async {
        let mut d = edge(&[("remote_address", "3.3.3.3")]);
        d.hits = Some(0);
        let peek = LimitRequest {
            domain: "edge",
            descriptors: vec![d.clone()],
            hits: 1,
            client_required: false,
            post_paid: false,
        };
        for _ in 0..5 {
            let dec = l.decide(&peek).await.unwrap();
            assert!(dec.allowed);
            assert_eq!(
                dec.limits[0].verdict.remaining, 2,
                "hits 0 consumes nothing"
            );
        }
        d.hits = Some(2);
        let spend = LimitRequest {
            domain: "edge",
            descriptors: vec![d],
            hits: 1,
            client_required: false,
            post_paid: false,
        };
        assert!(l.decide(&spend).await.unwrap().allowed);
        assert_eq!(
            l.decide(&peek).await.unwrap().limits[0].verdict.remaining,
            0
        );
    });
}

#[test]
fn request_shape_errors() {
    let (l, _) = limiter("c.yaml", CLIENTS);
    run(async {
        let r = LimitRequest {
            domain: "",
            descriptors: vec![edge(&[("a", "b")])],
            hits: 1,
            client_required: false,
            post_paid: false,
        };
        assert!(matches!(l.decide(&r).await, Err(LimitError::NoDomain)));
        let r = LimitRequest {
            domain: "d",
            descriptors: vec![],
            hits: 1,
            client_required: false,
            post_paid: false,
        };
        assert!(matches!(l.decide(&r).await, Err(LimitError::NoDescriptors)));
        let r = LimitRequest {
            domain: "d",
            descriptors: vec![edge(&[])],
            hits: 1,
            client_required: false,
            post_paid: false,
        };
        assert!(matches!(
            l.decide(&r).await,
            Err(LimitError::EmptyDescriptor(0))
        ));
        let r = LimitRequest::for_api_key("ratelimiter", "alice", 1001);
        assert!(matches!(
            l.decide(&r).await,
            Err(LimitError::CostTooHigh {
                cost: 1001,
                max: 1000
            })
        ));
    });
}

#[test]
fn limits_too_large_to_count_exactly_are_config_errors() {
    let cfg = r#"
clients:
  tiers:
    huge: [ { name: huge, limit: 1, burst: 1000000000000, window: 1d } ]
  keys:
    - { key: k, tier: huge }
"#;
    let config = config::parse_str("huge.yaml", cfg).unwrap();
    let err = Rules::compile(&config).unwrap_err().to_string();
    assert!(err.contains("huge") && err.contains("too large"), "{err}");
    // Located where the limit is written, like every other config problem.
    assert!(
        err.starts_with("huge.yaml:4:13: clients.tiers.huge[0]: limit `huge`: "),
        "{err}"
    );
}

/// An envoyproxy/ratelimit file alone: no client table.
const ENVOY_ONLY: &str = r#"
domain: ratelimiter
descriptors:
  - key: generic_key
    value: g
    rate_limit: { unit: hour, requests_per_unit: 100 }
"#;

#[test]
fn without_a_client_table_every_api_key_is_unknown() {
    let (l, _) = limiter("edge.yaml", ENVOY_ONLY);
    run(async {
        let r = LimitRequest::for_api_key("ratelimiter", "anyone", 1);
        assert!(matches!(l.decide(&r).await, Err(LimitError::UnknownClient)));
        // Envoy's own traffic keeps upstream's meaning: an unmatched descriptor is unlimited.
        let r = LimitRequest {
            client_required: false,
            post_paid: false,
            ..LimitRequest::for_api_key("ratelimiter", "anyone", 1)
        };
        assert!(l.decide(&r).await.unwrap().allowed);
    });
    assert_eq!(l.rules().warnings().len(), 1, "validate warns about it");
    let (l, _) = limiter("c.yaml", CLIENTS);
    assert!(l.rules().warnings().is_empty());
}

#[test]
fn a_door_decides_on_the_snapshot_it_read_not_a_later_one() {
    let (l, _) = limiter("c.yaml", CLIENTS);
    let before = l.rules();
    let renamed = CLIENTS.replace("clients:", "settings: { default_domain: other }\nclients:");
    l.reload(Rules::compile(&config::parse_str("c.yaml", &renamed).unwrap()).unwrap());
    run(async {
        let r = LimitRequest::for_api_key(&before.settings.default_domain, "alice", 1);
        let d = l.decide_with(&before, &r).await.unwrap();
        assert_eq!(
            d.limits.len(),
            1,
            "decided with the snapshot the request was built from"
        );
        assert!(matches!(l.decide(&r).await, Err(LimitError::UnknownClient)));
    });
}

#[test]
fn a_full_memory_store_refuses_new_counters_under_every_policy() {
    for policy in ["fail_open", "fail_closed", "local"] {
        let cfg = format!(
            "settings: {{ on_store_failure: {policy} }}\nclients:\n  unknown_key: anon\n  tiers:\n    anon: [ {{ name: anon, limit: 2, window: 1h }} ]\n"
        );
        let rules = Rules::compile(&config::parse_str("c.yaml", &cfg).unwrap()).unwrap();
        let (clock, _) = Clock::manual(T0);
        let store = Backend::Memory(MemoryStore::with_shards(clock, 8, 1));
        let l = Limiter::new(rules, store, None);
        run(async {
            let mut full = 0;
            for i in 0..30 {
                let key = format!("client-{i}");
                let r = LimitRequest::for_api_key("ratelimiter", &key, 1);
                for _ in 0..3 {
                    match l.decide(&r).await {
                        Ok(d) => assert!(d.degraded.is_none(), "{policy}: {d:?}"),
                        Err(LimitError::Store(StoreError::Full { .. })) => full += 1,
                        Err(e) => panic!("{policy}: {e}"),
                    }
                }
            }
            assert!(full > 0, "{policy}: the store filled up");
            // The clients that have counters are still limited exactly.
            let r = LimitRequest::for_api_key("ratelimiter", "client-0", 1);
            assert!(!l.decide(&r).await.unwrap().allowed, "{policy}");
        });
    }
}

/// A descriptor with two configured limits, one in shadow mode, and the override.
const OVERRIDDEN: &str = r#"
domain: edge
descriptors:
  - key: tenant
    rate_limit: { unit: second, requests_per_unit: 1000 }
    limits:
      - { name: per-minute, algorithm: fixed_window, limit: 1000, window: 1m }
  - key: shadowed
    rate_limit: { unit: second, requests_per_unit: 1000 }
    shadow_mode: true
"#;

fn overridden<'a>(entries: &[(&'a str, &'a str)], limit: u64) -> LimitRequest<'a> {
    let mut d = edge(entries);
    d.limit_override = Some(QuotaOverride {
        quota: Quota::new(limit, 60 * SEC),
    });
    LimitRequest {
        domain: "edge",
        descriptors: vec![d],
        hits: 1,
        client_required: false,
        post_paid: false,
    }
}

#[test]
fn a_limit_override_is_one_enforced_limit_on_any_descriptor_of_a_known_domain() {
    let (l, _) = limiter("edge.yaml", OVERRIDDEN);
    run(async {
        for entries in [
            &[("tenant", "t1")][..],   // matched, with two configured limits
            &[("shadowed", "s1")][..], // matched, shadow mode
            &[("nothing", "n1")][..],  // not matched at all
        ] {
            let r = overridden(entries, 5);
            for i in 0..5 {
                let d = l.decide(&r).await.unwrap();
                assert!(d.allowed, "{entries:?}: request {i}");
                assert_eq!(d.limits.len(), 1, "{entries:?}");
                assert_eq!(&*d.limits[0].name, OVERRIDE_NAME);
            }
            let d = l.decide(&r).await.unwrap();
            assert!(!d.allowed, "{entries:?}: the 6th of 5/minute");
            assert!(d.over_limit[0]);
        }
        // An unknown domain has no limits, override or not.
        let mut r = overridden(&[("tenant", "t1")], 1);
        r.domain = "unknown";
        for _ in 0..3 {
            assert!(l.decide(&r).await.unwrap().allowed);
        }
    });
}

const BUDGETS: &str = r#"
domain: llm
descriptors:
  - key: tenant
    value: gcra
    rate_limit: { unit: minute, requests_per_unit: 1000 }
    algorithm: token_bucket
  - key: tenant
    value: fixed
    rate_limit: { unit: minute, requests_per_unit: 1000 }
    algorithm: fixed_window
  - key: tenant
    value: sliding
    rate_limit: { unit: minute, requests_per_unit: 500 }
    algorithm: sliding_window
"#;

/// A request on `tenant` of the budgets domain: `hits` tokens, reported (post-paid) or not.
fn tokens(tenant: &str, hits: u64, post_paid: bool) -> LimitRequest<'_> {
    LimitRequest {
        domain: "llm",
        descriptors: vec![edge(&[("tenant", tenant)])],
        hits,
        client_required: false,
        post_paid,
    }
}

/// Token bucket: 1,000 tokens a minute (T = 60 ms a token). 700 spent, then a report of 700
/// against the 300 left is recorded whole: a debt of 400 tokens (24 s). A check-only request
/// and a pre-paid one are refused with that retry-after until the debt is paid off.
#[test]
fn a_post_paid_report_past_the_budget_is_recorded_as_debt_token_bucket() {
    let (l, now) = limiter("llm.yaml", BUDGETS);
    run(async {
        assert!(l.decide(&tokens("gcra", 700, false)).await.unwrap().allowed);
        let report = l.decide(&tokens("gcra", 700, true)).await.unwrap();
        assert!(!report.allowed, "700 did not fit in the 300 left");
        let peek = l.decide(&tokens("gcra", 0, false)).await.unwrap();
        assert!(
            !peek.allowed,
            "a check-only request is refused while in debt"
        );
        assert_eq!(peek.limits[0].verdict.remaining, 0);
        assert_eq!(peek.retry_after, RetryAfter::After(400 * 60_000));
        let one = l.decide(&tokens("gcra", 1, false)).await.unwrap();
        assert_eq!(one.retry_after, RetryAfter::After(401 * 60_000));
        now.fetch_add(400 * 60_000 - 1, Ordering::AcqRel);
        assert!(!l.decide(&tokens("gcra", 0, false)).await.unwrap().allowed);
        now.fetch_add(1, Ordering::AcqRel);
        let paid = l.decide(&tokens("gcra", 0, false)).await.unwrap();
        assert!(paid.allowed, "at exactly the limit a check-only is OK");
        assert!(!l.decide(&tokens("gcra", 1, false)).await.unwrap().allowed);
        now.fetch_add(60_000, Ordering::AcqRel);
        assert!(l.decide(&tokens("gcra", 1, false)).await.unwrap().allowed);
    });
}

/// Fixed window: the count runs past the limit and the debt lasts until the window ends.
#[test]
fn a_post_paid_report_past_the_budget_is_recorded_as_debt_fixed_window() {
    let (l, now) = limiter("llm.yaml", BUDGETS);
    // Start of a minute, so the window has a whole minute to run.
    now.store(T0 - T0 % (60 * SEC), Ordering::Release);
    run(async {
        assert!(
            l.decide(&tokens("fixed", 700, false))
                .await
                .unwrap()
                .allowed
        );
        assert!(!l.decide(&tokens("fixed", 700, true)).await.unwrap().allowed);
        now.fetch_add(10 * SEC, Ordering::AcqRel);
        let peek = l.decide(&tokens("fixed", 0, false)).await.unwrap();
        assert!(!peek.allowed);
        assert_eq!(peek.retry_after, RetryAfter::After(50 * SEC));
        assert!(!l.decide(&tokens("fixed", 1, false)).await.unwrap().allowed);
        now.fetch_add(50 * SEC, Ordering::AcqRel);
        assert!(
            l.decide(&tokens("fixed", 1000, false))
                .await
                .unwrap()
                .allowed
        );
    });
}

/// Sliding window: 400 spent at 0 s, a report of 300 (of which 100 fit) at 10 s: 700 of 500,
/// in debt until the 400 leave at 60 s; the 300 leave at 70 s.
#[test]
fn a_post_paid_report_past_the_budget_is_recorded_as_debt_sliding_window() {
    let (l, now) = limiter("llm.yaml", BUDGETS);
    run(async {
        assert!(
            l.decide(&tokens("sliding", 400, false))
                .await
                .unwrap()
                .allowed
        );
        now.fetch_add(10 * SEC, Ordering::AcqRel);
        assert!(
            !l.decide(&tokens("sliding", 300, true))
                .await
                .unwrap()
                .allowed
        );
        let peek = l.decide(&tokens("sliding", 0, false)).await.unwrap();
        assert!(!peek.allowed);
        assert_eq!(peek.retry_after, RetryAfter::After(50 * SEC));
        now.fetch_add(50 * SEC, Ordering::AcqRel);
        assert!(
            l.decide(&tokens("sliding", 0, false))
                .await
                .unwrap()
                .allowed
        );
        assert!(
            l.decide(&tokens("sliding", 200, false))
                .await
                .unwrap()
                .allowed
        );
        assert!(
            !l.decide(&tokens("sliding", 1, false))
                .await
                .unwrap()
                .allowed
        );
    });
}

/// A report that fits is an ordinary charge; a report of 0 records nothing.
#[test]
fn a_post_paid_report_that_fits_is_an_ordinary_charge() {
    let (l, _) = limiter("llm.yaml", BUDGETS);
    run(async {
        let d = l.decide(&tokens("gcra", 300, true)).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.limits[0].verdict.remaining, 700);
        assert!(l.decide(&tokens("gcra", 0, true)).await.unwrap().allowed);
        assert!(l.decide(&tokens("gcra", 700, false)).await.unwrap().allowed);
        assert!(!l.decide(&tokens("gcra", 1, false)).await.unwrap().allowed);
    });
}

/// A recorded report answers with the counter as it is after the charge: nothing left and the
/// wait until the debt is paid — never "retrying cannot help", even for usage larger than the
/// whole limit (it is recorded all the same).
#[test]
fn a_report_answers_with_the_counter_after_the_charge() {
    let (l, _) = limiter("llm.yaml", BUDGETS);
    run(async {
        // 300 of 1,000 used, then a report of 700 more: exactly at the limit, it fits.
        assert!(l.decide(&tokens("gcra", 300, false)).await.unwrap().allowed);
        let fits = l.decide(&tokens("gcra", 700, true)).await.unwrap();
        assert!(fits.allowed);
        assert_eq!(fits.limits[0].verdict.remaining, 0);
        assert_eq!(fits.retry_after, RetryAfter::Now);
        // 800 tokens against a sliding window of 500 a minute, more than it can ever admit at
        // once: recorded all the same, so the answer is the wait for it to leave the window.
        let over = l.decide(&tokens("sliding", 800, true)).await.unwrap();
        assert!(!over.allowed);
        let v = over.limits[0].verdict;
        assert_eq!(v.remaining, 0);
        assert_eq!(v.retry_after, RetryAfter::After(60 * SEC));
        assert_eq!(over.retry_after, RetryAfter::After(60 * SEC));
        assert_eq!(v.reset_after, 60 * SEC);
    });
}

const QUOTA: &str = r#"
domain: q
descriptors:
  - key: a
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: b
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 5 }
  - key: c
    rate_limit: { unit: minute, requests_per_unit: 5 }
"#;

fn quota_request<'a>(keys: &[&'a str]) -> LimitRequest<'a> {
    LimitRequest {
        domain: "q",
        descriptors: keys.iter().map(|k| edge(&[(k, "v")])).collect(),
        hits: 1,
        client_required: false,
        post_paid: false,
    }
}

/// A limiter over `QUOTA` with the global settings changed by `set`.
fn quota_limiter(set: impl FnOnce(&mut config::Settings)) -> Limiter {
    let mut config = config::parse_str("q.yaml", QUOTA).unwrap();
    set(&mut config.settings);
    let (clock, _) = Clock::manual(T0);
    let store = Backend::Memory(MemoryStore::new(clock, 10_000));
    Limiter::new(Rules::compile(&config).unwrap(), store, None)
}

#[test]
fn quota_mode_refuses_only_when_every_quota_descriptor_is_over() {
    let l = quota_limiter(|_| {});
    run(async {
        assert!(l.decide(&quota_request(&["a"])).await.unwrap().allowed);
        // `a` is over; `b` is a quota-mode descriptor within its limit: admitted, and the
        // status of `a` says OVER_LIMIT.
        let d = l.decide(&quota_request(&["a", "b"])).await.unwrap();
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.over_limit, vec![true, false]);
        assert!(d.limits[0].is_over() && !d.limits[0].rejects());
        // `a` alone: every quota-mode descriptor is over, so refused, with a retry time.
        let d = l.decide(&quota_request(&["a"])).await.unwrap();
        assert!(!d.allowed);
        assert!(matches!(d.retry_after, RetryAfter::After(_)), "{d:?}");
        assert_eq!(d.tightest().map(|t| &*t.name), Some("1-per-1m"));
        // A descriptor not in quota mode does not save it (upstream's rule).
        let d = l.decide(&quota_request(&["a", "c"])).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.over_limit, vec![true, false]);
        // …and, as upstream, that refusal still counted against `c` (5 per minute): this is
        // its second request, which leaves 3.
        let d = l.decide(&quota_request(&["c"])).await.unwrap();
        assert_eq!(d.limits[0].verdict.remaining, 3, "{d:?}");
    });
}

#[test]
fn global_quota_mode_puts_every_descriptor_in_quota_mode() {
    let l = quota_limiter(|s| s.quota_mode = true);
    run(async {
        for _ in 0..5 {
            assert!(l.decide(&quota_request(&["c"])).await.unwrap().allowed);
        }
        assert!(!l.decide(&quota_request(&["c"])).await.unwrap().allowed);
        let d = l.decide(&quota_request(&["c", "b"])).await.unwrap();
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.over_limit, vec![true, false]);
    });
}

#[test]
fn global_shadow_mode_admits_what_the_limits_refuse_and_says_so() {
    let l = quota_limiter(|s| s.shadow_mode = true);
    run(async {
        for _ in 0..5 {
            let d = l.decide(&quota_request(&["c"])).await.unwrap();
            assert!(d.allowed && !d.shadowed);
        }
        let d = l.decide(&quota_request(&["c"])).await.unwrap();
        assert!(d.allowed && d.shadowed, "{d:?}");
        assert_eq!(d.over_limit, vec![true]);
        assert_eq!(d.retry_after, RetryAfter::Now);
    });
}

/// envoyproxy/ratelimit README, Example 11: `share_threshold` on a wildcard.
const SHARED: &str = r#"
domain: example11
descriptors:
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: { unit: hour, requests_per_unit: 10 }
  - key: files_no_share
    value: files_no_share/*
    share_threshold: false
    rate_limit: { unit: hour, requests_per_unit: 10 }
  - key: route
    value: api/*
    share_threshold: true
    descriptors:
      - key: method
        rate_limit: { unit: minute, requests_per_unit: 2 }
"#;

fn one(domain: &'static str, entries: &[(&'static str, &'static str)]) -> LimitRequest<'static> {
    LimitRequest {
        domain,
        descriptors: vec![edge(entries)],
        hits: 1,
        client_required: false,
        post_paid: false,
    }
}

#[test]
fn share_threshold_makes_every_match_of_a_wildcard_one_counter() {
    let (l, _) = limiter("example11.yaml", SHARED);
    run(async {
        let allowed = |r: LimitRequest<'static>| {
            let l = &l;
            async move { l.decide(&r).await.unwrap().allowed }
        };
        for _ in 0..5 {
            assert!(allowed(one("example11", &[("files", "files/a.pdf")])).await);
            assert!(allowed(one("example11", &[("files", "files/b.csv")])).await);
        }
        assert!(
            !allowed(one("example11", &[("files", "files/c.txt")])).await,
            "the shared threshold of 10 is reached"
        );
        for _ in 0..10 {
            assert!(
                allowed(one(
                    "example11",
                    &[("files_no_share", "files_no_share/a.pdf")]
                ))
                .await
            );
        }
        assert!(
            !allowed(one(
                "example11",
                &[("files_no_share", "files_no_share/a.pdf")]
            ))
            .await
        );
        assert!(
            allowed(one(
                "example11",
                &[("files_no_share", "files_no_share/b.csv")]
            ))
            .await,
            "without sharing, each match has its own threshold"
        );
        // A shared level above a limit: every api/* route shares, each method apart.
        let route =
            |r: &'static str, m: &'static str| one("example11", &[("route", r), ("method", m)]);
        assert!(allowed(route("api/v1", "GET")).await);
        assert!(allowed(route("api/v2", "GET")).await);
        assert!(!allowed(route("api/v3", "GET")).await);
        assert!(allowed(route("api/v3", "POST")).await);
    });
}

const NAMED_CLIENTS: &str = r#"
clients:
  tiers:
    t: [ { name: per-10s, limit: 3, window: 10s }, { name: per-day, limit: 100, window: 1d, algorithm: fixed_window } ]
  keys:
    - { key: alice, tier: t, name: alice }
    - { sha256: 81b637d8fcd2c6da6359e6963113a1170de795e4b725b84d1e0b4cfd9ec58ce9, tier: t, name: bob }
    - { key: carol, tier: t }
    - { key: dave, tier: t }
"#;

#[test]
fn a_known_clients_usage_is_read_without_spending_and_reset_by_name_or_digest() {
    let (l, _now) = limiter("c.yaml", NAMED_CLIENTS);
    run(async {
        let alice = LimitRequest::for_api_key("ratelimiter", "alice", 1);
        assert!(l.decide(&alice).await.unwrap().allowed);
        assert!(l.decide(&alice).await.unwrap().allowed);
        for _ in 0..2 {
            let usage = l.client_usage("alice").await.unwrap();
            assert_eq!(usage.len(), 1);
            let limits: Vec<(&str, u64, u64)> = usage[0]
                .limits
                .iter()
                .map(|u| (u.name.as_str(), u.used, u.remaining))
                .collect();
            assert_eq!(limits, [("per-10s", 2, 1), ("per-day", 2, 98)]);
        }
        assert!(
            l.decide(&alice).await.unwrap().allowed,
            "reading spent nothing"
        );
        assert!(!l.decide(&alice).await.unwrap().allowed);
        let reset = l.reset_client("alice").await.unwrap();
        assert_eq!(reset.len(), 1);
        assert!(
            l.decide(&alice).await.unwrap().allowed,
            "a reset frees the quota"
        );
        let usage = l.client_usage("alice").await.unwrap();
        assert_eq!(usage[0].limits[0].remaining, 2);

        // A key configured by its digest alone ("bob" is the key whose SHA-256 is given) is
        // found, and its counters are the ones its requests spend.
        let bob = LimitRequest::for_api_key("ratelimiter", "bob", 3);
        assert!(l.decide(&bob).await.unwrap().allowed);
        let usage = l.client_usage("bob").await.unwrap();
        assert_eq!(usage[0].limits[0].remaining, 0);
        let by_digest = format!("sha256:{}", usage[0].client.key_sha256);
        assert_eq!(l.reset_client(&by_digest).await.unwrap().len(), 1);
        assert!(l.decide(&bob).await.unwrap().allowed);

        // Two keys of tier t without a name are both labelled `t`.
        assert_eq!(l.client_usage("t").await.unwrap().len(), 2);
        assert!(l.client_usage("mallory").await.unwrap().is_empty());
    });
}
