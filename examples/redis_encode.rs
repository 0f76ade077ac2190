//! What building one plan's `EVALSHA` for a Redis pipeline costs in the service, before and
//! after the batch workers took the command from `script::decide_cmd` (part of the service's
//! CPU per Redis-backed decision). Both variants end in the bytes the connection writes.
//!
//! - `invocation`: what a decision cost until then: the plan's checks copied for the worker, a
//!   `ScriptInvocation` (a `String` per key, a `Vec` per argument), copied again into the
//!   pipeline's command.
//! - `cmd`: the command written once, straight into its buffer, and moved into the pipeline.
//!
//! Pure CPU, no Redis. Run with `cargo run --release --example redis_encode -- --bench`
//! (criterion's report on stdout; add `--quick` for a shorter run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ratelimiter::algorithm::{Algorithm, Quota};
use ratelimiter::store::redis::script;
use ratelimiter::store::{Check, CounterKey};

const PREFIX: &str = "rl:";

/// A plan as the benchmarks' config (k6/bench-config) makes them: one `user` limit, or two
/// limits of one descriptor.
fn plan(checks: u64) -> Vec<Check> {
    (0..checks)
        .map(|i| Check {
            key: CounterKey {
                tag: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
                limit: i,
            },
            algorithm: Algorithm::TokenBucket,
            quota: Quota::new(1_000_000_000, 1_000_000),
            cost: 1,
            enforce: true,
            post_paid: false,
            verdict: None,
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    for n in [1, 2] {
        let checks = plan(n);
        c.bench_function(&format!("invocation, {n} check(s)"), |b| {
            b.iter(|| {
                let copy = black_box(&checks).clone();
                let inv = script::decide_invocation(script::decide_script(), PREFIX, &copy, None);
                let mut pipe = redis::pipe();
                pipe.invoke_script(&inv);
                black_box(pipe.get_packed_pipeline())
            })
        });
        c.bench_function(&format!("cmd, {n} check(s)"), |b| {
            b.iter(|| {
                let cmd = script::decide_cmd(PREFIX, black_box(&checks));
                let mut pipe = redis::Pipeline::with_capacity(1);
                pipe.add_command(cmd);
                black_box(pipe.get_packed_pipeline())
            })
        });
    }
}

criterion_group!(benches, encode);
criterion_main!(benches);
