//! What the service does when its Redis fails, for each failure policy (`fail_open`,
//! `fail_closed`, `local`), against the real binary and a real `redis-server`: Redis killed
//! mid-load, restarted on the same port, `SCRIPT FLUSH`ed mid-load, paused with
//! `CLIENT PAUSE` past the per-call timeout; `/readyz` per policy; `local` with
//! `--replicas 2` enforcing half the quota on each replica while Redis is down.
//!
//! Bounds on time are generous on purpose ("answers at all, within a few seconds"): a hang is
//! a failure, slowness is for the benchmarks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::redis::{
    Kind, Load, Policy, RedisServer, check, http_client, readyz, until_normal, wall_us,
};
use common::{Service, config_dir};
use ratelimiter::api::grpc::pb::AllowRequestRequest;
use ratelimiter::api::grpc::pb::rate_limiter_client::RateLimiterClient;

/// The tests here are about timing under failure: one at a time, so that a busy machine
/// does not turn a healthy 50 ms call into a timeout.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// No answer may take longer than this, whatever Redis does.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// The HTTP client gives up after this: a request that gets no answer is a hang.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the service gets to use a restarted or resumed Redis again.
const RECOVER_WITHIN: Duration = Duration::from_secs(5);
/// The per-call timeout the tests run with (the default, given explicitly).
const TIMEOUT_MS: &str = "50";

/// `/readyz` while Redis is unreachable: only fail_closed makes the replica useless.
fn ready_while_down(policy: Policy) -> u16 {
    if policy == Policy::FailClosed {
        503
    } else {
        200
    }
}

/// `load` and `probe` never run out during a test; `small`, `shared` (10) and `flush` (1000)
/// are for counting.
fn config(policy: Policy) -> String {
    format!(
        r#"
settings:
  default_domain: ratelimiter
  on_store_failure: {}
  max_cost: 1000
clients:
  unknown_key: reject
  tiers:
    load:
      - {{ name: load, algorithm: token_bucket, limit: 1000000, window: 1d }}
    small:
      - {{ name: small, algorithm: token_bucket, limit: 10, window: 1d }}
    thousand:
      - {{ name: per-day, algorithm: token_bucket, limit: 1000, window: 1d }}
  keys:
    - {{ key: load, tier: load }}
    - {{ key: probe, tier: load }}
    - {{ key: small, tier: small }}
    - {{ key: shared, tier: small }}
    - {{ key: flush, tier: thousand }}
"#,
        policy.name()
    )
}

fn start(name: &str, policy: Policy, redis: &RedisServer, extra: &[&str]) -> Service {
    let dir = config_dir(name, &[("service.yaml", &config(policy))]);
    let url = redis.url();
    let mut args = vec!["--redis-url", &url, "--redis-timeout-ms", TIMEOUT_MS];
    args.extend_from_slice(extra);
    Service::start(&dir, &args)
}

/// The gRPC answer for `key`, as a word: "normal", the `degraded` field, "unavailable"; or
/// an error for anything else.
async fn grpc_answer(svc: &Service, key: &str) -> Result<(String, bool), String> {
    let channel = tonic::transport::Endpoint::from_shared(svc.grpc_url())
        .unwrap()
        .timeout(CLIENT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let r = RateLimiterClient::new(channel)
        .allow_request(AllowRequestRequest {
            api_key: key.into(),
            descriptors: vec![],
            cost: None,
            report: false,
        })
        .await;
    assert!(
        started.elapsed() < ANSWER_WITHIN,
        "gRPC answered after {:?}",
        started.elapsed()
    );
    match r {
        Ok(r) if r.get_ref().degraded.is_empty() => Ok(("normal".into(), r.get_ref().allowed)),
        Ok(r) => Ok((r.get_ref().degraded.clone(), r.get_ref().allowed)),
        Err(s) if s.code() == tonic::Code::Unavailable => Ok(("unavailable".into(), false)),
        Err(s) => Err(format!("{s:?}")),
    }
}

fn assert_grpc_policy(policy: Policy, answer: &(String, bool)) {
    let expected = match policy {
        Policy::FailOpen => ("fail_open".to_owned(), true),
        Policy::FailClosed => ("unavailable".to_owned(), false),
        Policy::Local => ("local".to_owned(), true),
    };
    assert_eq!(*answer, expected, "gRPC AllowRequest under {policy:?}");
}

/// `/readyz` until it says `want` (a few seconds at most); the last status seen.
async fn readyz_becomes(svc: &Service, want: u16, within: Duration) -> u16 {
    let client = http_client(CLIENT_TIMEOUT, 1);
    let started = Instant::now();
    loop {
        let t = Instant::now();
        let status = readyz(&client, &svc.url("")).await.unwrap_or_else(|e| {
            panic!("/readyz gave no answer: {e}");
        });
        assert!(
            t.elapsed() < ANSWER_WITHIN,
            "/readyz took {:?}",
            t.elapsed()
        );
        if status == want || started.elapsed() > within {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counters work: a fresh key with limit 10 admits exactly 10, with `remaining` counting
/// down 9..0 in order (a reply meant for another call would break the sequence), then 429.
async fn assert_counts_exactly(svc: &Service, key: &str) {
    let client = http_client(CLIENT_TIMEOUT, 1);
    for i in 0..12u64 {
        let r = check(&client, &svc.url(""), key, 1).await.unwrap();
        if i < 10 {
            assert_eq!(
                r.kind(),
                Kind::Normal { allowed: true },
                "request {i} for {key}: {r:?}\n{}",
                svc.logs()
            );
            assert_eq!(r.remaining(), Some(9 - i), "request {i} for {key}: {r:?}");
        } else {
            assert_eq!(
                r.kind(),
                Kind::Normal { allowed: false },
                "request {i} for {key}: {r:?}"
            );
        }
    }
}

/// Kills Redis under load, checks every answer while it is down, restarts it on the same
/// port and checks the service comes back by itself.
async fn killed_and_restarted(policy: Policy) {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let svc = start(
        &format!("rfail-kill-{}", policy.name()),
        policy,
        &redis,
        &[],
    );
    assert!(
        until_normal(&svc, "probe", RECOVER_WITHIN).await.is_some(),
        "no normal decision with Redis up\n{}",
        svc.logs()
    );
    // Ready once every batch worker holds a connection (which may come a little after the
    // first decision).
    assert_eq!(readyz_becomes(&svc, 200, RECOVER_WITHIN).await, 200);

    let load = Load::start(&svc, "load", 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kill_begin = wall_us();
    tokio::task::block_in_place(|| redis.kill());
    let kill_done = wall_us();

    // While Redis is down: let the load run, and ask gRPC and /readyz.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_grpc_policy(policy, &grpc_answer(&svc, "probe").await.unwrap());
    let want = ready_while_down(policy);
    let ready = readyz_becomes(&svc, want, Duration::from_secs(3)).await;
    assert_eq!(ready, want, "/readyz with Redis down under {policy:?}");
    if want == 200 {
        // And it stays ready: fail_open and local replicas can still answer.
        for _ in 0..3 {
            assert_eq!(readyz_becomes(&svc, 200, Duration::ZERO).await, 200);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let restart_begin = wall_us();
    let restarted = Instant::now();
    tokio::task::block_in_place(|| redis.restart());
    let recovered = until_normal(&svc, "probe", RECOVER_WITHIN).await;
    let recovered_after = restarted.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replies = load.finish().await;

    // Every request was answered, in time, with a normal decision or the policy's answer;
    // before the kill only normal ones, and while Redis was surely down only the policy's.
    let mut counts = [0usize; 3];
    for (i, r) in replies.iter().enumerate() {
        let r = r
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} got no answer: {e}\n{}", svc.logs()));
        assert!(
            r.elapsed < ANSWER_WITHIN,
            "request {i} took {:?}: {r:?}",
            r.elapsed
        );
        let kind = r.kind();
        if r.received_us < kill_begin {
            assert!(r.is_normal(), "before the kill, request {i}: {r:?}");
            counts[0] += 1;
        } else if r.sent_us > kill_done && r.received_us < restart_begin {
            assert!(
                policy.answered(&kind),
                "with Redis down, request {i} under {policy:?}: {r:?}"
            );
            counts[1] += 1;
        } else {
            assert!(
                r.is_normal() || policy.answered(&kind),
                "around the kill or restart, request {i} under {policy:?}: {r:?}"
            );
            counts[2] += 1;
        }
    }
    eprintln!(
        "{policy:?}: {} requests: {} before the kill, {} while down, {} around the kill or \
         the restart; recovered {:?} after the restart",
        replies.len(),
        counts[0],
        counts[1],
        counts[2],
        recovered
    );
    assert!(
        counts[0] > 0 && counts[1] > 0,
        "the load was too thin: {counts:?}"
    );

    assert!(
        recovered.is_some(),
        "no normal decision within {RECOVER_WITHIN:?} of restarting Redis (waited {:?})\n{}",
        recovered_after,
        svc.logs()
    );
    // Counters work again, in the restarted Redis, with scripts loaded anew.
    assert_counts_exactly(&svc, "small").await;
    assert!(
        !redis.keys("*").is_empty(),
        "the restarted Redis holds no counters"
    );
    assert_eq!(
        readyz_becomes(&svc, 200, Duration::from_secs(3)).await,
        200,
        "/readyz after recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_fail_open() {
    killed_and_restarted(Policy::FailOpen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_fail_closed() {
    killed_and_restarted(Policy::FailClosed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_local() {
    killed_and_restarted(Policy::Local).await;
}

/// `CLIENT PAUSE` far longer than the per-call timeout: answers per policy, in time, then
/// normal decisions once the pause is over.
async fn paused(policy: Policy) {
    const PAUSE: Duration = Duration::from_millis(4000);
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let svc = start(
        &format!("rfail-pause-{}", policy.name()),
        policy,
        &redis,
        &[],
    );
    assert!(
        until_normal(&svc, "probe", RECOVER_WITHIN).await.is_some(),
        "no normal decision with Redis up\n{}",
        svc.logs()
    );
    // Ready once every batch worker holds a connection (which may come a little after the
    // first decision): the pause must find a replica that was ready.
    assert_eq!(readyz_becomes(&svc, 200, RECOVER_WITHIN).await, 200);

    let paused_at = Instant::now();
    tokio::task::block_in_place(|| redis.pause(u64::try_from(PAUSE.as_millis()).unwrap()));
    let load = Load::start(&svc, "load", 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_grpc_policy(policy, &grpc_answer(&svc, "probe").await.unwrap());
    let want = ready_while_down(policy);
    let ready = readyz_becomes(&svc, want, Duration::from_secs(1)).await;
    assert_eq!(ready, want, "/readyz with Redis paused under {policy:?}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let replies = load.finish().await;
    let load_done = paused_at.elapsed();
    // Every request sent during the pause was answered by the policy, and long before the
    // pause ended: none waited for Redis.
    assert!(
        load_done + Duration::from_millis(500) < PAUSE,
        "{load_done:?}"
    );
    assert!(!replies.is_empty());
    for (i, r) in replies.iter().enumerate() {
        let r = r
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} got no answer: {e}\n{}", svc.logs()));
        assert!(
            r.elapsed < ANSWER_WITHIN,
            "request {i} took {:?}: {r:?}",
            r.elapsed
        );
        assert!(
            policy.answered(&r.kind()),
            "Redis paused, request {i} under {policy:?}: {r:?}"
        );
    }

    // After the pause: normal decisions again, and counting is exact (no reply to a timed-out
    // call may be read as the answer to a later one).
    tokio::time::sleep(PAUSE.saturating_sub(paused_at.elapsed())).await;
    let recovered = until_normal(&svc, "probe", RECOVER_WITHIN).await;
    eprintln!(
        "{policy:?}: {} requests during the pause; normal again {recovered:?} after it ended",
        replies.len()
    );
    assert!(
        recovered.is_some(),
        "no normal decision within {RECOVER_WITHIN:?} after the pause\n{}",
        svc.logs()
    );
    assert_counts_exactly(&svc, "small").await;
    assert_eq!(readyz_becomes(&svc, 200, Duration::from_secs(3)).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_paused_fail_open() {
    paused(Policy::FailOpen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_paused_fail_closed() {
    paused(Policy::FailClosed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_paused_local() {
    paused(Policy::Local).await;
}

/// `SCRIPT FLUSH` every 30 ms under load: scripts are reloaded on NOSCRIPT, no client sees
/// an error, and nothing is lost or charged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn script_flush_mid_load_is_invisible_to_clients() {
    const REQUESTS: usize = 600;
    let _serial = SERIAL.lock().await;
    let redis = Arc::new(RedisServer::start());
    // fail_closed: any failure would be a visible 503. The subject is NOSCRIPT recovery, not
    // latency: a generous time limit keeps a busy machine's scheduling out of the verdict
    // (a reload costs an extra round trip with the whole script).
    let dir = config_dir(
        "rfail-flush",
        &[("service.yaml", &config(Policy::FailClosed))],
    );
    let svc = Service::start(
        &dir,
        &["--redis-url", &redis.url(), "--redis-timeout-ms", "1000"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = {
        let (redis, stop) = (redis.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            let mut flushes = 0;
            while !stop.load(Ordering::Relaxed) && flushes < 10_000 {
                redis.script_flush();
                flushes += 1;
                std::thread::sleep(Duration::from_millis(30));
            }
            flushes
        })
    };
    let client = http_client(CLIENT_TIMEOUT, 8);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (client, base, next) = (client.clone(), svc.url(""), next.clone());
            tokio::spawn(async move {
                let mut replies = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < REQUESTS {
                    replies.push(check(&client, &base, "flush", 1).await);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                replies
            })
        })
        .collect();
    let mut replies = Vec::new();
    for w in workers {
        replies.extend(w.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let flushes = flusher.await.unwrap();
    assert_eq!(replies.len(), REQUESTS);
    for (i, r) in replies.iter().enumerate() {
        let r = r
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} got no answer: {e}"));
        assert_eq!(
            r.kind(),
            Kind::Normal { allowed: true },
            "request {i} with scripts flushed: {r:?}\n{}",
            svc.logs()
        );
    }
    let noscript = redis.error_count("NOSCRIPT");
    eprintln!("{flushes} flushes, {noscript} NOSCRIPT replies, {REQUESTS} requests");
    assert!(
        noscript > 0,
        "no EVALSHA ever met NOSCRIPT: the flushes did not exercise the reload path"
    );
    // Exactly the 600 were charged: neither lost nor charged twice by a retry.
    let r = check(&client, &svc.url(""), "flush", 1).await.unwrap();
    assert_eq!(r.kind(), Kind::Normal { allowed: true }, "{r:?}");
    assert_eq!(r.remaining(), Some(1000 - 600 - 1), "{r:?}");
}

/// `local` with `--replicas 2`: while Redis is up the two replicas share the whole quota;
/// while it is down each one enforces floor(10 / 2) = 5 on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_policy_enforces_a_share_of_the_quota_per_replica() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    let a = start("rfail-local-a", Policy::Local, &redis, &["--replicas", "2"]);
    let b = start("rfail-local-b", Policy::Local, &redis, &["--replicas", "2"]);
    let client = http_client(CLIENT_TIMEOUT, 2);

    // Redis up: one quota of 10 over both replicas.
    let mut admitted = 0;
    for i in 0..12 {
        let svc = if i % 2 == 0 { &a } else { &b };
        let r = check(&client, &svc.url(""), "shared", 1).await.unwrap();
        match r.kind() {
            Kind::Normal { allowed } => admitted += usize::from(allowed),
            other => panic!("request {i} with Redis up: {other:?}\n{}", svc.logs()),
        }
    }
    assert_eq!(admitted, 10, "two replicas sharing Redis, limit 10");

    tokio::task::block_in_place(|| redis.kill());
    for (name, svc) in [("a", &a), ("b", &b)] {
        let mut kinds = Vec::new();
        for _ in 0..8 {
            let r = check(&client, &svc.url(""), "small", 1).await.unwrap();
            assert!(r.elapsed < ANSWER_WITHIN, "{r:?}");
            kinds.push(r.kind());
        }
        let expected: Vec<Kind> = (0..8).map(|i| Kind::Local { allowed: i < 5 }).collect();
        assert_eq!(
            kinds, expected,
            "replica {name} with Redis down: 10 / 2 replicas = 5 admitted locally"
        );
    }
}

/// An outage answers every request with the same store failure; the log says so at most once
/// a second per site (with how many it held back), never once per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_is_logged_at_most_once_a_second_not_per_request() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start();
    for policy in [Policy::FailOpen, Policy::FailClosed] {
        let svc = start(&format!("rfail-log-{}", policy.name()), policy, &redis, &[]);
        assert!(until_normal(&svc, "probe", RECOVER_WITHIN).await.is_some());
        tokio::task::block_in_place(|| redis.kill());
        let started = Instant::now();
        let load = Load::start(&svc, "load", 4);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let replies = load.finish().await;
        let seconds = started.elapsed().as_secs() + 1;
        let lines = svc.logs();
        let warnings = lines
            .lines()
            .filter(|l| l.contains("store failed") && l.contains("WARN"))
            .count() as u64;
        // Two sites may each log once a second (the policy's and the door's).
        assert!(
            warnings >= 1 && warnings <= 2 * (seconds + 1),
            "{policy:?}: {warnings} warnings for {} requests in {seconds} s\n{lines}",
            replies.len()
        );
        assert!(
            replies.len() as u64 > 4 * warnings,
            "the load ran: {}",
            replies.len()
        );
        tokio::task::block_in_place(|| redis.restart());
    }
}
