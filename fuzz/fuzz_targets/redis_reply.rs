//! The decide script's reply decoder: any RESP reply is decoded into verdicts or refused as a
//! protocol error, never a panic; a decoded plan has every check decided.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratelimiter::algorithm::{Algorithm, Quota};
use ratelimiter::store::redis::script;
use ratelimiter::store::{Check, CounterKey};

fn check(limit: u64, algorithm: Algorithm) -> Check {
    Check {
        key: CounterKey { tag: 7, limit },
        algorithm,
        quota: Quota::new(10, 1_000_000),
        cost: 1,
        enforce: true,
        post_paid: false,
        verdict: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, resp)) = data.split_first() else {
        return;
    };
    let Ok(reply) = redis::parse_redis_value(resp) else {
        return;
    };
    let algorithms = [Algorithm::TokenBucket, Algorithm::FixedWindow, Algorithm::SlidingWindow];
    let mut checks: Vec<Check> = (0..(n % 4) as u64)
        .map(|i| check(i, algorithms[i as usize % 3]))
        .collect();
    if script::decode(&reply, &mut checks).is_ok() {
        assert!(checks.iter().all(|c| c.verdict.is_some()), "{reply:?}");
    }
});
