//! Redis restarted under idle replicas (issue 7, point 1): every connection a batch worker
//! held is dead afterwards, and none of that may reach a client. Three `fail_closed`
//! replicas share one `redis-server`; it is killed and started again on the same port (empty:
//! no data, no scripts); a few seconds later one `POST /check` at each replica must be
//! decided by Redis (200 or 429), never answered 503 by the failure policy. And a reply lost
//! after Redis ran the decision is resent on a new connection (charged twice at most).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::redis::{RedisServer, check, http_client, start_replicas, wait_normal, wait_ready};
use common::{Service, config_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
settings:
  default_domain: ratelimiter
  on_store_failure: fail_closed
clients:
  unknown_key: reject
  tiers:
    t:
      - { name: per-day, algorithm: token_bucket, limit: 1000, window: 1d }
  keys:
    - { key: k, tier: t }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_the_first_request_at_each_idle_replica_is_decided() {
    let mut redis = RedisServer::start();
    let dir = config_dir("redis-restart", &[("service.yaml", CONFIG)]);
    // The default time limit: what an operator runs with.
    let replicas = start_replicas(&dir, &redis.url(), "50", 3);
    for svc in &replicas {
        wait_normal(svc, "k", Duration::from_secs(10)).await;
    }

    // Shut down and started again on the same port; the replicas are idle meanwhile and
    // for a few seconds after, as in a maintenance restart.
    redis.restart();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let client = http_client(Duration::from_secs(5), 1);
    for (i, svc) in replicas.iter().enumerate() {
        let r = check(&client, &svc.url(""), "k", 1).await.unwrap();
        assert!(
            r.is_normal(),
            "replica {i}: the first request after the restart got {r:?}\n{}",
            svc.logs()
        );
    }
}

/// A TCP proxy to Redis that can lose one reply: once `lose_next_reply` is set, the next
/// bytes Redis sends to any client are dropped and that client's connection is closed, as
/// when a connection dies after Redis ran the command and before its reply arrived.
struct LossyProxy {
    port: u16,
    lose_next_reply: Arc<AtomicBool>,
}

impl LossyProxy {
    async fn start(redis_port: u16) -> LossyProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let lose_next_reply = Arc::new(AtomicBool::new(false));
        let lose = lose_next_reply.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", redis_port))
                    .await
                    .unwrap();
                tokio::spawn(relay(client, server, lose.clone()));
            }
        });
        LossyProxy {
            port,
            lose_next_reply,
        }
    }
}

async fn relay(client: TcpStream, server: TcpStream, lose: Arc<AtomicBool>) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server_rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if lose.swap(false, Ordering::SeqCst) {
            break;
        }
        if client_tx.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Dropping both halves closes the client's connection.
    upstream.abort();
}

/// The reply to a decision is lost after Redis ran it: the worker resends the plan on a new
/// connection and the client gets a normal answer (not the failure policy's 503). The plan
/// ran twice, so the key was charged twice: under-admission by one request, never
/// over-admission — the documented choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_whose_reply_is_lost_is_resent_and_charged_at_most_twice() {
    let redis = RedisServer::start();
    let proxy = LossyProxy::start(redis.port()).await;
    let dir = config_dir("redis-lost-reply", &[("service.yaml", CONFIG)]);
    let url = format!("redis://127.0.0.1:{}", proxy.port);
    // A generous time limit: this is about what is resent, not how fast.
    let svc = Service::start(&dir, &["--redis-url", &url, "--redis-timeout-ms", "2000"]);
    wait_ready(&svc, Duration::from_secs(20)).await;
    let client = http_client(Duration::from_secs(5), 1);
    let scripts = redis.command_calls("evalsha");

    proxy.lose_next_reply.store(true, Ordering::SeqCst);
    let r = check(&client, &svc.url(""), "k", 1).await.unwrap();
    assert!(
        !proxy.lose_next_reply.load(Ordering::SeqCst),
        "no reply was lost"
    );
    assert!(r.is_normal(), "{r:?}\n{}", svc.logs());
    assert_eq!(
        redis.command_calls("evalsha") - scripts,
        2,
        "the decision ran once, its reply was lost, and it was resent once"
    );
    assert_eq!(r.remaining(), Some(1000 - 2), "charged twice: {r:?}");
}
