//! What matching one descriptor costs against a large envoyproxy/ratelimit configuration:
//! `Rules::lookup` on 20 generated domains of 280 descriptors each (5,600 in all: exact
//! values, descriptors nested three deep, wildcard values, keys without a value), written as
//! a config directory and read by the crate's loader (`config::load`), as the service reads
//! one. Measured: a hit at depth 1, 2 and 3, a wildcard hit (on the last of a level's 30
//! patterns, so every pattern is tried first) and a miss.
//!
//! Run with `cargo bench --bench matching` (about 20 s once built).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ratelimiter::config;
use ratelimiter::limiter::{Match, Rules};

const DOMAINS: usize = 20;
/// Depth 1: `route = r<n>`.
const ROUTES: usize = 40;
/// Depth 2: `tenant = t<n>`, then `plan = p<n>`.
const TENANTS: usize = 20;
const PLANS: usize = 5;
/// Depth 3: `org = o<n>`, then `team = m<n>`, then `user` with any value.
const ORGS: usize = 10;
const TEAMS: usize = 4;
/// Wildcards: `path = /api/v<n>/*`.
const PATHS: usize = 30;

const LIMIT: &str = "rate_limit: { unit: second, requests_per_unit: 100 }";

/// The envoyproxy/ratelimit file of domain `bench-<d>`.
fn domain_file(d: usize) -> String {
    let mut out = format!("domain: bench-{d:02}\ndescriptors:\n");
    for r in 0..ROUTES {
        writeln!(out, "  - key: route\n    value: r{r}\n    {LIMIT}").unwrap();
    }
    for t in 0..TENANTS {
        writeln!(out, "  - key: tenant\n    value: t{t}\n    descriptors:").unwrap();
        for p in 0..PLANS {
            writeln!(
                out,
                "      - key: plan\n        value: p{p}\n        {LIMIT}"
            )
            .unwrap();
        }
    }
    for o in 0..ORGS {
        writeln!(out, "  - key: org\n    value: o{o}\n    descriptors:").unwrap();
        for m in 0..TEAMS {
            writeln!(
                out,
                "      - key: team\n        value: m{m}\n        descriptors:\n          \
                 - key: user\n            {LIMIT}"
            )
            .unwrap();
        }
    }
    for p in 0..PATHS {
        writeln!(
            out,
            "  - key: path\n    value: \"/api/v{p}/*\"\n    {LIMIT}"
        )
        .unwrap();
    }
    out
}

/// The generated configuration, written to a fresh directory, loaded and compiled.
fn rules() -> Rules {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("ratelimiter-bench-matching-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for d in 0..DOMAINS {
        std::fs::write(dir.join(format!("bench-{d:02}.yaml")), domain_file(d)).unwrap();
    }
    let loaded = config::load(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let loaded = loaded.unwrap_or_else(|e| panic!("the generated config: {e}"));
    assert_eq!(loaded.domains.len(), DOMAINS);
    Rules::compile(&loaded).unwrap()
}

/// One measured descriptor: its name, its entries, and whether it must find limits.
type Case = (&'static str, &'static [(&'static str, &'static str)], bool);

const CASES: [Case; 5] = [
    ("depth_1", &[("route", "r39")], true),
    ("depth_2", &[("tenant", "t19"), ("plan", "p4")], true),
    (
        "depth_3",
        &[("org", "o9"), ("team", "m3"), ("user", "u-1234")],
        true,
    ),
    ("wildcard", &[("path", "/api/v29/users")], true),
    ("miss", &[("route", "r-unknown")], false),
];

const DOMAIN: &str = "bench-10";

fn bench(c: &mut Criterion) {
    let rules = rules();
    for (name, entries, hit) in CASES {
        // A case that does not find what it claims would measure something else.
        let found = rules.lookup(DOMAIN, entries.iter().copied());
        match &found {
            Match::Node(node) => assert!(hit && !node.limits.is_empty(), "{name}: {found:?}"),
            _ => assert!(!hit && matches!(found, Match::None), "{name}: {found:?}"),
        }
        c.bench_function(&format!("matching/{name}"), |b| {
            b.iter(|| {
                let found = rules.lookup(black_box(DOMAIN), black_box(entries).iter().copied());
                matches!(black_box(found), Match::Node(_))
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
