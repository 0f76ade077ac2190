//! Limits on every connection (issue 12, point 1), against the real binary: a flood of silent
//! gRPC connections under a low `ulimit -n`, and a slow-header HTTP flood, leave `/healthz`
//! and real decisions answering, and the server closes the flood's connections itself.
//!
//! The timeouts are set through environment variables rather than flags, so the same test
//! runs (and fails) against a binary that does not know them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::{BASIC, Service, config_dir};
use ratelimiter::api::grpc::pb::AllowRequestRequest;
use ratelimiter::api::grpc::pb::rate_limiter_client::RateLimiterClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// The header-read timeout the tests run with, in seconds.
const HEADER_READ_TIMEOUT: u64 = 2;
/// How long past that timeout a flood connection may stay open: generous, the machine is shared.
const SLACK: Duration = Duration::from_secs(15);
/// How long one `/healthz` or `/check` may take while a flood runs: generous too.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// The binary under `ulimit -n limit`, with a short header-read timeout.
fn binary(fd_limit: Option<u32>) -> Command {
    let mut command = match fd_limit {
        Some(n) => {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                env!("CARGO_BIN_EXE_ratelimiter"),
            ]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_ratelimiter")),
    };
    command.env(
        "RATELIMITER_HEADER_READ_TIMEOUT",
        HEADER_READ_TIMEOUT.to_string(),
    );
    command
}

/// `n` TCP connections to `addr`, connected.
async fn open(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(TcpStream::connect(addr).await.unwrap());
    }
    conns
}

/// `/healthz` answers 200 and a decision for `key` answers 200 or 429, each within
/// [`ANSWER_WITHIN`]; `rounds` times, a few hundred milliseconds apart.
async fn keeps_answering(svc: &Service, key: &str, rounds: usize, during: &str) {
    let client = reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for round in 0..rounds {
        let health = client.get(svc.url("/healthz")).send().await;
        let health = health.map(|r| r.status().as_u16());
        assert!(
            matches!(health, Ok(200)),
            "round {round} during {during}: /healthz did not answer within {ANSWER_WITHIN:?}: {health:?}"
        );
        let check = client
            .post(svc.url("/check"))
            .header("x-api-key", key)
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert!(
            matches!(check, Ok(200 | 429)),
            "round {round} during {during}: POST /check did not answer within {ANSWER_WITHIN:?}: {check:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until the server has closed every one of `conns` (a read returns end of file or an
/// error); `trickle` writes one header byte every 500 ms meanwhile (a slow-header client).
/// Returns how many were still open after `limit`.
async fn closed_by_server(conns: Vec<TcpStream>, limit: Duration, trickle: bool) -> usize {
    let mut waiting = JoinSet::new();
    for mut conn in conns {
        waiting.spawn(async move {
            let deadline = tokio::time::Instant::now() + limit;
            let mut buf = [0u8; 512];
            loop {
                let tick = tokio::time::sleep(Duration::from_millis(500));
                tokio::select! {
                    read = conn.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return true,
                        Ok(_) => {} // e.g. a 408 before the close
                    },
                    () = tick => {
                        if trickle && conn.write_all(b"x").await.is_err() {
                            return true;
                        }
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
            }
        });
    }
    let mut open = 0;
    while let Some(closed) = waiting.join_next().await {
        if !closed.unwrap() {
            open += 1;
        }
    }
    open
}

#[tokio::test]
async fn silent_grpc_connections_under_a_low_fd_limit_leave_decisions_answering() {
    let dir = config_dir("sec-silent-grpc", &[("service.yaml", BASIC)]);
    let svc = Service::start_command(binary(Some(256)), &dir, &[], "info");
    let started = Instant::now();
    let silent = open(svc.grpc, 300).await;
    keeps_answering(&svc, "big", 5, "300 silent gRPC connections").await;
    let open_after = closed_by_server(
        silent,
        Duration::from_secs(HEADER_READ_TIMEOUT) + SLACK,
        false,
    )
    .await;
    assert_eq!(
        open_after,
        0,
        "silent gRPC connections still open {:?} after they were opened",
        started.elapsed()
    );
    // Once they are gone, gRPC decisions answer again.
    let mut client = RateLimiterClient::connect(svc.grpc_url()).await.unwrap();
    let r = client
        .allow_request(AllowRequestRequest {
            api_key: "big".into(),
            descriptors: vec![],
            cost: None,
            report: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.allowed);
}

#[tokio::test]
async fn a_slow_header_flood_is_closed_and_decisions_keep_answering() {
    let dir = config_dir("sec-slow-header", &[("service.yaml", BASIC)]);
    let svc = Service::start_command(binary(None), &dir, &[], "info");
    let mut flood = open(svc.http, 200).await;
    for conn in &mut flood {
        conn.write_all(b"POST /check HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
    }
    let started = Instant::now();
    let (open_after, ()) = tokio::join!(
        closed_by_server(
            flood,
            Duration::from_secs(HEADER_READ_TIMEOUT) + SLACK,
            true
        ),
        keeps_answering(&svc, "big", 5, "200 slow-header HTTP connections"),
    );
    assert_eq!(
        open_after,
        0,
        "slow-header connections still open {:?} after they started",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_connection_past_the_cap_is_closed_at_once() {
    let dir = config_dir("sec-conn-cap", &[("service.yaml", BASIC)]);
    let svc = Service::start(
        &dir,
        &["--max-connections", "4", "--header-read-timeout", "60"],
    );
    let held = open(svc.http, 4).await;
    let past = open(svc.http, 1).await;
    let open_after = closed_by_server(past, Duration::from_secs(5), false).await;
    assert_eq!(open_after, 0, "the fifth connection was not closed");
    // The four held ones still work, and once they close there is room again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    keeps_answering(&svc, "big", 1, "nothing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_concurrency_cap_are_refused_at_once() {
    let redis = RedisServer::start();
    let dir = config_dir("sec-request-cap", &[("service.yaml", BASIC)]);
    let svc = Service::start(
        &dir,
        &[
            "--redis-url",
            &redis.url(),
            "--redis-timeout-ms",
            "10000",
            "--max-concurrent-requests",
            "2",
        ],
    );
    let client = reqwest::Client::new();
    // Warm up (the first decision loads the script), then hold two decisions in Redis.
    assert_eq!(
        post_status(client.clone(), svc.url("/check"), "big").await,
        200
    );
    // Hold two decisions on each listener in a paused Redis; a third is refused at once.
    tokio::task::block_in_place(|| redis.pause(1000));
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(post_status(client.clone(), svc.url("/check"), "big")))
        .collect();
    let mut grpc = RateLimiterClient::connect(svc.grpc_url()).await.unwrap();
    let held_grpc: Vec<_> = (0..2)
        .map(|_| {
            let mut c = grpc.clone();
            tokio::spawn(async move { c.allow_request(allow("big")).await.map(|_| ()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = client
        .post(svc.url("/check"))
        .header("x-api-key", "big")
        .send()
        .await
        .unwrap();
    assert_eq!(third.status().as_u16(), 503);
    assert_eq!(third.headers()["retry-after"], "1");
    let body: serde_json::Value = third.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("too many requests in progress")
    );
    let health = client.get(svc.url("/healthz")).send().await.unwrap();
    assert_eq!(
        health.status().as_u16(),
        200,
        "health probes are never refused"
    );
    let refused = grpc.allow_request(allow("big")).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("too many requests in progress"),
        "{refused:?}"
    );
    // Refused while the held ones still wait: a refusal does not queue behind them.
    assert!(
        held.iter().all(|h| !h.is_finished()) && held_grpc.iter().all(|h| !h.is_finished()),
        "the held requests finished before the refusals: the pause was too short for this machine"
    );
    for h in held {
        assert_eq!(
            h.await.unwrap(),
            200,
            "a held request failed: {}",
            svc.logs()
        );
    }
    for h in held_grpc {
        h.await.unwrap().unwrap();
    }
}

fn allow(key: &str) -> AllowRequestRequest {
    AllowRequestRequest {
        api_key: key.into(),
        descriptors: vec![],
        cost: None,
        report: false,
    }
}

/// `POST url` with `x-api-key: key`; the status code (owned arguments, for spawning).
async fn post_status(client: reqwest::Client, url: String, key: &'static str) -> u16 {
    common::post_status(&client, url, key).await
}

/// The HTTP/2 frame types a server sends on a raw connection that opens with the preface and
/// an empty SETTINGS frame and then stays silent, until the server closes it (or `limit`).
/// The second value says whether the server closed it.
async fn frames_on_a_silent_http2_connection(addr: SocketAddr, limit: Duration) -> (Vec<u8>, bool) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        types.push(bytes[at + 3]);
        at += 9 + len;
    }
    (types, closed)
}

const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

#[tokio::test]
async fn a_grpc_client_that_does_not_answer_pings_is_closed() {
    let dir = config_dir("sec-keepalive", &[("service.yaml", BASIC)]);
    let svc = Service::start(
        &dir,
        &[
            "--grpc-keepalive-interval",
            "1",
            "--grpc-keepalive-timeout",
            "1",
        ],
    );
    let (frames, closed) = frames_on_a_silent_http2_connection(svc.grpc, SLACK).await;
    assert!(frames.contains(&PING), "no PING: {frames:?}");
    assert!(closed, "still open after {SLACK:?}; frames {frames:?}");
}

#[tokio::test]
async fn a_grpc_connection_past_its_age_is_sent_goaway_and_closed() {
    let dir = config_dir("sec-age", &[("service.yaml", BASIC)]);
    let svc = Service::start(
        &dir,
        &[
            "--grpc-max-connection-age",
            "1",
            "--grpc-max-connection-age-grace",
            "1",
        ],
    );
    let (frames, closed) = frames_on_a_silent_http2_connection(svc.grpc, SLACK).await;
    assert!(frames.contains(&GOAWAY), "no GOAWAY: {frames:?}");
    assert!(closed, "still open after {SLACK:?}; frames {frames:?}");
}
