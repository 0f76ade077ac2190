//! Descriptor matching and one decision over the memory store, for any domain, entries and
//! costs: matching never panics, and a decision is an answer or a typed refusal.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ratelimiter::limiter::{Descriptor, Entry, LimitRequest};

#[derive(Arbitrary, Debug)]
struct Input {
    domain: u8,
    descriptors: Vec<Vec<(String, String)>>,
    hits: u64,
    own_hits: Vec<Option<u64>>,
}

const DOMAINS: [&str; 3] = ["edge", "ratelimiter", "unknown"];

fuzz_target!(|input: Input| {
    let state = &*common::STATE;
    let rules = state.limiter.rules();
    let domain = DOMAINS[input.domain as usize % DOMAINS.len()];
    for entries in &input.descriptors {
        let _ = rules.lookup(domain, entries.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }
    let descriptors = input
        .descriptors
        .iter()
        .enumerate()
        .map(|(i, entries)| Descriptor {
            entries: entries
                .iter()
                .map(|(k, v)| Entry::new(k.as_str(), v.as_str()))
                .collect(),
            hits: input.own_hits.get(i).copied().flatten(),
            limit_override: None,
        })
        .collect();
    let req = LimitRequest {
        domain,
        descriptors,
        hits: input.hits,
        client_required: input.domain % 2 == 1,
        post_paid: false,
    };
    let _ = common::RUNTIME.block_on(state.limiter.decide_with(&rules, &req));
});
