//! Requests whose counters live in different Redis Cluster slots, end to end.
//!
//! A 3-master Redis Cluster, three processes of the real binary on it, and `AllowRequest`s
//! that carry, besides the API key, the route descriptor `route = /expensive` of an
//! envoyproxy/ratelimit file. The per-key counter's hash tag hashes the key, the route
//! counter's hashes the route, so the two live in different slots (the keys are picked so
//! they also live on different masters) and the store reserves slot by slot in ascending tag
//! order, refunding the earlier slot when the later one rejects (`docs/tradeoffs.md` §7).
//!
//! - `global_limit_binds_and_keys_are_refunded`: every key's tag sorts before the route's, so
//!   the key slot is reserved first and the route decides last. The route's limit G is below
//!   what the keys could admit together and no key can run out on its own: exactly G requests
//!   are admitted, and each key's counter holds only its admitted requests (every reservation
//!   of a request the route rejected was refunded), read back with a request carrying only the
//!   key.
//! - `key_limit_binds_and_the_route_is_refunded`: every key's tag sorts after the route's, so
//!   the route is reserved first and the key decides last. Each key runs out of its own quota
//!   while the route has plenty of room: each key admits exactly its quota, and the route
//!   counter holds only the admitted requests (every reservation of a request a key rejected
//!   was refunded).
//! - `a_timeout_mid_plan_strands_nothing`: the route's master is paused (`CLIENT PAUSE`) so a
//!   replica with `--redis-timeout-ms 20` times out after the key's slot was reserved and
//!   while the route's decide waits: after the pause, both the key's reservation and the
//!   route's (whose reply was lost) are refunded, the refunds are counted in `/metrics`, and
//!   the key then gets its full quota.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{RedisCluster, start_replicas};
use common::{Service, all_logs, config_dir, counter, metrics, warm_grpc_channels};
use ratelimiter::api::grpc::pb::rate_limiter_client::RateLimiterClient;
use ratelimiter::api::grpc::pb::{
    AllowRequestRequest, AllowRequestResponse, Descriptor, descriptor::Entry,
};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

const DOMAIN: &str = "ratelimiter";
const ROUTE: (&str, &str) = ("route", "/expensive");
const ROUTE_LIMIT_NAME: &str = "route-daily";
const PREFIX: &str = "rl:";
const REPLICAS: usize = 3;
/// Requests in flight at once, over all replicas.
const IN_FLIGHT: usize = 192;
/// The key counters' algorithms, one tier per key, in turn.
const ALGORITHMS: [&str; 4] = [
    "token_bucket",
    "sliding_window",
    "fixed_window",
    "token_bucket",
];
const DAY_US: u64 = 86_400_000_000;

/// The hash tag the limiter gives a descriptor of the default domain (`counter_tag` in
/// `src/limiter/mod.rs`: SHA-256 over the domain and every entry, the first 128 bits). The
/// keys found in the cluster after a storm confirm it.
fn tag(entries: &[(&str, &str)]) -> u128 {
    let mut h = Sha256::new();
    h.update(DOMAIN.as_bytes());
    for (k, v) in entries {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
    }
    let digest = h.finalize();
    u128::from_be_bytes(digest[..16].try_into().unwrap())
}

/// A key of the client table has its counters named by its digest (`rules.rs`), not by the
/// key itself.
fn key_tag(api_key: &str) -> u128 {
    let named = format!("sha256:{}", hex::encode(Sha256::digest(api_key.as_bytes())));
    tag(&[("api_key", &named)])
}

/// The part of a counter key's name that its tag fixes: `rl:{<32 hex>}`.
fn tagged(tag: u128) -> String {
    format!("{PREFIX}{{{tag:032x}}}")
}

/// Where a tag's counters live: the slot and the master (index into `cluster.nodes()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Place {
    slot: i64,
    node: usize,
}

/// A plain connection to every master, to ask where a key lives.
struct Probe {
    nodes: Vec<redis::Connection>,
}

impl Probe {
    fn new(cluster: &RedisCluster) -> Probe {
        let nodes = cluster
            .nodes()
            .iter()
            .map(|n| {
                let client = redis::Client::open(format!("redis://127.0.0.1:{}/", n.port()))
                    .expect("client");
                client
                    .get_connection_with_timeout(Duration::from_secs(2))
                    .expect("connect to a cluster node")
            })
            .collect();
        Probe { nodes }
    }

    /// `CLUSTER KEYSLOT name`, and the master that serves it: the one node that answers
    /// `EXISTS name` rather than redirecting with MOVED.
    fn place(&mut self, name: &str) -> Place {
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(name)
            .query(&mut self.nodes[0])
            .expect("CLUSTER KEYSLOT");
        let mut owners = Vec::new();
        for (i, con) in self.nodes.iter_mut().enumerate() {
            if redis::cmd("EXISTS").arg(name).query::<i64>(con).is_ok() {
                owners.push(i);
            }
        }
        assert_eq!(owners.len(), 1, "{name}: served by {owners:?}");
        Place {
            slot,
            node: owners[0],
        }
    }
}

/// `count` API keys named `<stem>-<i>` whose tag sorts before (`before`) or after the route's
/// and whose counters live in another slot on another master than the route counter.
fn pick_keys(probe: &mut Probe, stem: &str, count: usize, before: bool) -> Vec<String> {
    let route_tag = tag(&[ROUTE]);
    let route = probe.place(&format!("{}:x", tagged(route_tag)));
    let mut keys = Vec::new();
    for i in 0..5000 {
        let name = format!("{stem}-{i}");
        let t = key_tag(&name);
        if (t < route_tag) != before {
            continue;
        }
        let at = probe.place(&format!("{}:x", tagged(t)));
        if at.slot != route.slot && at.node != route.node {
            keys.push(name);
            if keys.len() == count {
                return keys;
            }
        }
    }
    panic!("not {count} suitable key names among 5000 candidates");
}

/// The service config: one tier per key (`quota` per day, algorithms in turn), a probe key
/// with a huge quota, and the route's limit `route_limit` per day in an envoyproxy file.
fn config(name: &str, keys: &[String], quota: u64, route_limit: u64) -> std::path::PathBuf {
    let mut service = String::from(
        "settings:\n  default_domain: ratelimiter\n  on_store_failure: fail_closed\n\
         \x20 allow_request_descriptors: [route]\n\
         clients:\n  unknown_key: reject\n  tiers:\n    \
         probe:\n      - { name: probe, algorithm: token_bucket, limit: 1000000, window: 1d }\n",
    );
    for (i, _) in keys.iter().enumerate() {
        let algorithm = ALGORITHMS[i % ALGORITHMS.len()];
        service.push_str(&format!(
            "    t{i}:\n      - {{ name: own-{i}, algorithm: {algorithm}, limit: {quota}, \
             window: 1d }}\n"
        ));
    }
    service.push_str("  keys:\n    - { key: probe, tier: probe }\n");
    for (i, k) in keys.iter().enumerate() {
        service.push_str(&format!("    - {{ key: {k}, tier: t{i} }}\n"));
    }
    let routes = format!(
        "domain: ratelimiter\ndescriptors:\n  - key: {}\n    value: {}\n    rate_limit: \
         {{ unit: day, requests_per_unit: {route_limit}, name: {ROUTE_LIMIT_NAME} }}\n",
        ROUTE.0, ROUTE.1
    );
    config_dir(
        name,
        &[("service.yaml", &service), ("routes.yaml", &routes)],
    )
}

fn request(api_key: &str, with_route: bool) -> AllowRequestRequest {
    AllowRequestRequest {
        api_key: api_key.into(),
        descriptors: if with_route {
            vec![Descriptor {
                entries: vec![Entry {
                    key: ROUTE.0.into(),
                    value: ROUTE.1.into(),
                }],
            }]
        } else {
            vec![]
        },
        cost: None,
        report: false,
    }
}

/// One `AllowRequest` through `channel`; panics unless it is a normal (not degraded) answer.
async fn allow(channel: &Channel, api_key: &str, with_route: bool) -> AllowRequestResponse {
    let r = RateLimiterClient::new(channel.clone())
        .allow_request(request(api_key, with_route))
        .await
        .unwrap_or_else(|s| panic!("{api_key}: {s}"))
        .into_inner();
    assert!(r.degraded.is_empty(), "{api_key}: degraded answer {r:?}");
    r
}

/// `per_key` concurrent requests for every key, all with the route descriptor, interleaved
/// over the keys and spread round-robin over the replicas. Returns the admitted count per key;
/// panics, with every replica's log, if any answer is not a normal decision.
async fn storm(
    services: &[Service],
    channels: &[Channel],
    keys: &[String],
    per_key: usize,
) -> HashMap<String, usize> {
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = Vec::with_capacity(keys.len() * per_key);
    for i in 0..keys.len() * per_key {
        let key = keys[i % keys.len()].clone();
        let mut client = RateLimiterClient::new(channels[i % channels.len()].clone());
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            match client.allow_request(request(&key, true)).await {
                Ok(r) if r.get_ref().degraded.is_empty() => Ok((key, r.get_ref().allowed)),
                Ok(r) => Err(format!("{key}: degraded {:?}", r.get_ref())),
                Err(s) => Err(format!("{key}: {s}")),
            }
        }));
    }
    let mut admitted: HashMap<String, usize> = keys.iter().map(|k| (k.clone(), 0)).collect();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok((key, allowed)) => *admitted.get_mut(&key).unwrap() += usize::from(allowed),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} answers were not normal decisions; the first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        all_logs(services)
    );
    admitted
}

/// Decisions the replicas sent to Redis (not answered by their over-limit caches), from
/// `/metrics`.
async fn decisions_sent(services: &[Service]) -> u64 {
    let client = reqwest::Client::new();
    let mut total = 0;
    for svc in services {
        let text = metrics(&client, &svc.url("/metrics")).await;
        total += counter(&text, "ratelimiter_redis_decisions_total");
    }
    total
}

/// Waits (up to 30 s) until the replicas count `expected` refunds, each rejection that reached
/// Redis having given back the one slot reserved before it; refunds run in the background,
/// after the rejection is answered. Panics if they count more, or any refund failed.
async fn wait_for_refunds(services: &[Service], expected: u64) {
    let started = Instant::now();
    loop {
        let done = metric_sum(services, "ratelimiter_redis_refunds_total").await;
        assert!(done <= expected, "{done} refunds for {expected} rejections");
        if done == expected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{done} of {expected} refunds after 30 s\n{}",
            all_logs(services)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = metric_sum(services, "ratelimiter_redis_refund_failures_total").await;
    assert_eq!(failed, 0, "refunds failed\n{}", all_logs(services));
}

/// Waits out the last minute of a UTC day by Redis's clock, so that the day-long fixed
/// windows cannot roll over during the test; returns the day.
async fn settled_day(cluster: &RedisCluster) -> u64 {
    let now = cluster.nodes()[0].time_us();
    let left = DAY_US - now % DAY_US;
    if left < 60_000_000 {
        tokio::time::sleep(Duration::from_micros(left + 100_000)).await;
    }
    cluster.nodes()[0].time_us() / DAY_US
}

/// Every counter key in the cluster whose tag is `tag`, with the master holding it.
fn counters_of(cluster: &RedisCluster, tag: u128) -> Vec<(String, usize)> {
    let pattern = format!("{}:*", tagged(tag));
    cluster
        .nodes()
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.keys(&pattern).into_iter().map(move |k| (k, i)))
        .collect()
}

/// The one counter key of `tag`, checked to live where `pick_keys` expected; its name and
/// place.
fn one_counter(cluster: &RedisCluster, probe: &mut Probe, tag: u128) -> (String, Place) {
    let found = counters_of(cluster, tag);
    assert_eq!(
        found.len(),
        1,
        "counters with tag {tag:032x}: {found:?}; every key in the cluster: {:?}",
        cluster.keys("*")
    );
    let (name, node) = found.into_iter().next().unwrap();
    let place = probe.place(&name);
    assert_eq!(place.node, node, "{name}");
    (name, place)
}

/// The count of a fixed-window counter's value `start:count`.
fn fixed_window_count(cluster: &RedisCluster, place: Place, name: &str) -> u64 {
    let value: String = cluster.nodes()[place.node].cmd(redis::cmd("GET").arg(name));
    let (_, count) = value
        .split_once(':')
        .unwrap_or_else(|| panic!("{name} = {value:?} is not a fixed window"));
    count.parse().unwrap()
}

/// The route counter and every key's counter exist, each once, in different slots on
/// different masters, with the tag order the test relies on; returns the route counter.
fn check_placement(
    cluster: &RedisCluster,
    probe: &mut Probe,
    keys: &[String],
    keys_first: bool,
) -> (String, Place) {
    let route_tag = tag(&[ROUTE]);
    let (route_name, route) = one_counter(cluster, probe, route_tag);
    for k in keys {
        let (name, at) = one_counter(cluster, probe, key_tag(k));
        assert_ne!(at.slot, route.slot, "{name} and {route_name} share a slot");
        assert_ne!(
            at.node, route.node,
            "{name} and {route_name} share a master"
        );
        assert_eq!(
            name < route_name,
            keys_first,
            "{name} vs {route_name}: the key should be reserved {}",
            if keys_first { "first" } else { "last" }
        );
    }
    (route_name, route)
}

/// A 3-master cluster; one key per algorithm, named after `stem`, picked with its tag before
/// the route's when `keys_first` (else after), each with its own `quota`, and the route
/// limited to `global`; `REPLICAS` replicas on that config, each with a warmed gRPC channel;
/// then [`settled_day`]. Returns the cluster, its probe, the keys, the replicas, their
/// channels and the UTC day (by Redis's clock) the test runs in.
async fn set_up(
    name: &str,
    stem: &str,
    keys_first: bool,
    quota: u64,
    global: u64,
) -> (
    RedisCluster,
    Probe,
    Vec<String>,
    Vec<Service>,
    Vec<Channel>,
    u64,
) {
    let cluster = RedisCluster::start(3);
    let mut probe = Probe::new(&cluster);
    let keys = pick_keys(&mut probe, stem, ALGORITHMS.len(), keys_first);
    let dir = config(name, &keys, quota, global);
    let services = start_replicas(&dir, &cluster.url(), "2000", REPLICAS);
    let channels = warm_grpc_channels(&services).await;
    let day = settled_day(&cluster).await;
    (cluster, probe, keys, services, channels, day)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn global_limit_binds_and_keys_are_refunded() {
    /// Each key's own quota, and how many requests each key sends: no key can run out.
    const QUOTA: u64 = 200;
    const PER_KEY: usize = 150;
    /// The route's limit: less than the 4 × 150 requests sent, so it binds.
    const GLOBAL: u64 = 250;
    let started = Instant::now();
    let (cluster, mut probe, keys, services, channels, day) =
        set_up("cluster-slots-global", "first", true, QUOTA, GLOBAL).await;

    let admitted = storm(&services, &channels, &keys, PER_KEY).await;
    let total: usize = admitted.values().sum();
    assert_eq!(
        total as u64, GLOBAL,
        "admitted per key {admitted:?}: the route's limit must bind exactly"
    );
    let (route_name, route) = check_placement(&cluster, &mut probe, &keys, true);
    assert_eq!(
        fixed_window_count(&cluster, route, &route_name),
        GLOBAL,
        "the route counter holds the admitted requests"
    );
    // Every decision Redis rejected reserved a key slot first and refunded it: make sure
    // there were some (the rest were answered by the replicas' over-limit caches).
    let refunded = decisions_sent(&services).await - GLOBAL;
    assert!(
        refunded > 0,
        "no rejection reached Redis: nothing was refunded"
    );
    wait_for_refunds(&services, refunded).await;

    // Each key's counter was charged for its admitted requests only: a request with the key
    // alone (no route) sees QUOTA - admitted, minus itself.
    for (i, k) in keys.iter().enumerate() {
        let r = allow(&channels[i % REPLICAS], k, false).await;
        let a = admitted[k] as u64;
        assert!(r.allowed, "{k}: {r:?}");
        assert_eq!(r.policy, format!("own-{i}"), "{k}: {r:?}");
        assert_eq!(
            r.remaining,
            QUOTA - a - 1,
            "{k} ({}): admitted {a} of {PER_KEY}, so its counter should hold {a}, not more: \
             rejected requests were not refunded",
            ALGORITHMS[i]
        );
    }
    assert_eq!(
        cluster.nodes()[0].time_us() / DAY_US,
        day,
        "a UTC day boundary passed mid-test"
    );
    eprintln!(
        "global limit: admitted {admitted:?} (total {total}), {refunded} Redis rejections \
         refunded a key; {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_limit_binds_and_the_route_is_refunded() {
    /// Each key's own quota, and how many requests each key sends: every key runs out.
    const QUOTA: u64 = 40;
    const PER_KEY: usize = 120;
    /// The route's limit: more than every request sent, so it never binds.
    const GLOBAL: u64 = 1000;
    let started = Instant::now();
    let (cluster, mut probe, keys, services, channels, day) =
        set_up("cluster-slots-key", "last", false, QUOTA, GLOBAL).await;

    let admitted = storm(&services, &channels, &keys, PER_KEY).await;
    for (k, a) in &admitted {
        assert_eq!(*a as u64, QUOTA, "{k}: admitted per key {admitted:?}");
    }
    let total: u64 = admitted.values().map(|&a| a as u64).sum();
    let refunded = decisions_sent(&services).await - total;
    assert!(
        refunded > 0,
        "no rejection reached Redis: nothing was refunded"
    );
    wait_for_refunds(&services, refunded).await;
    let (route_name, route) = check_placement(&cluster, &mut probe, &keys, false);
    // The route was reserved by every request that reached Redis, and refunded for each one
    // a key rejected: it holds the admitted requests only.
    assert_eq!(
        fixed_window_count(&cluster, route, &route_name),
        total,
        "the route counter was charged for requests the key limits rejected"
    );

    // Through the service: a fresh request on the route (with a key of huge quota, so the
    // route is the tightest limit) sees GLOBAL - admitted, minus itself.
    let r = allow(&channels[0], "probe", true).await;
    assert!(r.allowed, "{r:?}");
    assert_eq!(r.policy, ROUTE_LIMIT_NAME, "{r:?}");
    assert_eq!(r.limit, GLOBAL, "{r:?}");
    assert_eq!(
        r.remaining,
        GLOBAL - total - 1,
        "the route's remaining after {total} admitted requests: {r:?}"
    );
    assert_eq!(
        cluster.nodes()[0].time_us() / DAY_US,
        day,
        "a UTC day boundary passed mid-test"
    );
    eprintln!(
        "key limits: admitted {admitted:?} (total {total}), {refunded} Redis rejections \
         refunded the route; {:?}",
        started.elapsed()
    );
}

/// The sum of the metric `name` over `services`.
async fn metric_sum(services: &[Service], name: &str) -> u64 {
    let client = reqwest::Client::new();
    let mut total = 0;
    for svc in services {
        total += counter(&metrics(&client, &svc.url("/metrics")).await, name);
    }
    total
}

/// `request` answered normally on `channel`, retried (up to 50 times) while it is not: the
/// tight replica's 20 ms may be too short for a first call on a busy machine. Only for
/// requests whose charge does not matter.
async fn allow_eventually(channel: &Channel, api_key: &str) -> AllowRequestResponse {
    for _ in 0..50 {
        let r = RateLimiterClient::new(channel.clone())
            .allow_request(request(api_key, true))
            .await;
        if let Ok(r) = r
            && r.get_ref().degraded.is_empty()
        {
            return r.into_inner();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{api_key}: no normal answer in 50 tries");
}

/// The key's own quota per day in the timeout tests (a fixed window: its count is read back
/// from Redis).
const TIGHT_QUOTA: u64 = 4;

/// The timeout tests' stage: a 3-master cluster, one key (a fixed window of [`TIGHT_QUOTA`]
/// a day, its tag before the route's, on another master), a replica with
/// `--redis-timeout-ms 20` (`channels[0]`) and one with 2 s (`channels[1]`). Every master has
/// the scripts and the key has been charged once.
struct Tight {
    cluster: RedisCluster,
    key: String,
    services: Vec<Service>,
    channels: Vec<Channel>,
    route: Place,
    route_name: String,
    key_place: Place,
    key_name: String,
}

impl Tight {
    async fn set_up(name: &str, stem: &str) -> Tight {
        const FIXED: usize = 2;
        assert_eq!(ALGORITHMS[FIXED], "fixed_window");
        let cluster = RedisCluster::start(3);
        let mut probe = Probe::new(&cluster);
        let keys = pick_keys(&mut probe, stem, ALGORITHMS.len(), true);
        let key = keys[FIXED].clone();
        let route_tag = tag(&[ROUTE]);
        let route = probe.place(&format!("{}:x", tagged(route_tag)));
        let dir = config(name, &keys, TIGHT_QUOTA, 1000);
        let tight = start_replicas(&dir, &cluster.url(), "20", 1);
        let calm = start_replicas(&dir, &cluster.url(), "2000", 1);
        let services: Vec<Service> = tight.into_iter().chain(calm).collect();
        let channels = warm_grpc_channels(&services).await;
        settled_day(&cluster).await;
        // Connections and scripts on every master: the tight replica asks the route's master
        // (retried until it answers in time), the calm one charges the key once.
        allow_eventually(&channels[0], "probe").await;
        assert!(allow(&channels[1], &key, false).await.allowed);
        let (route_name, _) = one_counter(&cluster, &mut probe, route_tag);
        let (key_name, key_place) = one_counter(&cluster, &mut probe, key_tag(&key));
        let stage = Tight {
            cluster,
            key,
            services,
            channels,
            route,
            route_name,
            key_place,
            key_name,
        };
        assert_eq!(stage.key_count(), 1);
        stage
    }

    fn key_count(&self) -> u64 {
        fixed_window_count(&self.cluster, self.key_place, &self.key_name)
    }

    fn route_count(&self) -> u64 {
        fixed_window_count(&self.cluster, self.route, &self.route_name)
    }

    /// Pauses the route's master for `ms` (WRITE mode: scripts wait, PING does not; deadpool's
    /// recycle PINGs every master, so with ALL no request would even get a connection), then
    /// sends `n` requests with the key and the route to the tight replica: each reserves the
    /// key's slot and times out waiting for the route's. Each must fail.
    async fn time_out(&self, ms: u64, n: usize) {
        let () = self.cluster.nodes()[self.route.node]
            .cmd(redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg("WRITE"));
        for i in 0..n {
            let r = RateLimiterClient::new(self.channels[0].clone())
                .allow_request(request(&self.key, true))
                .await;
            assert!(
                !matches!(&r, Ok(r) if r.get_ref().allowed && r.get_ref().degraded.is_empty()),
                "request {i} was decided although the route's master is paused: {r:?}"
            );
        }
    }

    /// Waits (up to 30 s) until `count()` is `expected`.
    async fn wait_until(&self, what: &str, expected: u64, count: impl Fn(&Self) -> u64) {
        let started = Instant::now();
        while count(self) != expected {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what} still {} instead of {expected} after 30 s\n{}",
                count(self),
                all_logs(&self.services)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timeout_mid_plan_strands_nothing() {
    /// Requests that time out while the route's master is paused (fewer than the breaker's
    /// 5 consecutive failures, so each of them reaches Redis).
    const TIMED_OUT: usize = 3;
    let stage = Tight::set_up("cluster-slots-timeout", "strand").await;
    let route_before = stage.route_count();
    stage.time_out(1500, TIMED_OUT).await;
    // The key's counter lives on another master, which answers at once: its reservations
    // are given back.
    stage
        .wait_until("the key's count (reservations held)", 1, Tight::key_count)
        .await;
    // The route's decides ran once the pause ended; their replies were lost, so they are
    // refunded too.
    stage
        .wait_until("the route's count", route_before, Tight::route_count)
        .await;
    // Each timed-out request holds the key's slot, and the route's if its decide was sent:
    // every reservation given back is counted once.
    let services = &stage.services;
    let refunds = metric_sum(services, "ratelimiter_redis_refunds_total").await;
    assert!(
        (1..=2 * TIMED_OUT as u64).contains(&refunds),
        "{refunds} refunds counted for {TIMED_OUT} timed-out requests"
    );
    assert_eq!(
        metric_sum(services, "ratelimiter_redis_refund_failures_total").await,
        0
    );

    // The key has its whole quota back (one was used by the warm-up).
    for i in 1..TIGHT_QUOTA {
        let r = allow(&stage.channels[1], &stage.key, true).await;
        assert!(
            r.allowed,
            "request {i} of a fresh quota of {TIGHT_QUOTA}: {r:?}"
        );
    }
    let r = allow(&stage.channels[1], &stage.key, true).await;
    assert!(!r.allowed, "one past a quota of {TIGHT_QUOTA}: {r:?}");
}

/// The route's master stays paused longer than every refund attempt: the route's refund
/// fails, is counted and logged without a key, and the key's is still done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_that_keeps_failing_is_counted_and_logged() {
    let stage = Tight::set_up("cluster-slots-refund-fails", "failing").await;
    stage.time_out(15_000, 1).await;
    stage
        .wait_until("the key's count (reservations held)", 1, Tight::key_count)
        .await;
    let failures =
        async || metric_sum(&stage.services, "ratelimiter_redis_refund_failures_total").await;
    let started = Instant::now();
    while failures().await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(14),
            "no refund failure counted\n{}",
            all_logs(&stage.services)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failures().await, 1);
    let log = stage.services[0].logs();
    assert!(
        log.contains("refund of a cross-slot reservation failed"),
        "{log}"
    );
    for secret in [
        stage.key.as_str(),
        &stage.key_name,
        &stage.route_name,
        "rl:{",
        "rl:res:",
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    let () = stage.cluster.nodes()[stage.route.node].cmd(redis::cmd("CLIENT").arg("UNPAUSE"));
}
