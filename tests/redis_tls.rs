//! TLS to Redis (`rediss://`), against a real `redis-server` that speaks only TLS (`--port 0
//! --tls-port P`), with a throwaway CA and server certificate made by `openssl`, and the real
//! binary:
//!
//! - with the CA trusted (`--redis-ca-file`), a storm admits exactly the quota and the
//!   counters land on that server;
//! - `rediss://…/#insecure` decides without checking the certificate;
//! - the certificate is really checked: against the system's CAs alone (which do not know the
//!   throwaway CA) no decision is made, and neither over plain TCP to the TLS port; a plain
//!   client gets nothing from that port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::redis::{Kind, RedisServer, TestCerts, check, http_client, storm};
use common::{Service, config_dir};

/// Generous: these tests check TLS, not latency (a handshake is a few round trips).
const TIMEOUT_MS: &str = "1000";

/// fail_closed, so that a connection that fails shows as a 503, never as a silent "allow".
const CONFIG: &str = r#"
settings:
  default_domain: ratelimiter
  on_store_failure: fail_closed
clients:
  unknown_key: reject
  tiers:
    hundred:
      - { name: per-day, algorithm: token_bucket, limit: 100, window: 1d }
  keys:
    - { key: storm, tier: hundred }
    - { key: probe, tier: hundred }
"#;

fn start(name: &str, url: &str, extra: &[&str]) -> Service {
    let dir = config_dir(name, &[("service.yaml", CONFIG)]);
    let mut args = vec!["--redis-url", url, "--redis-timeout-ms", TIMEOUT_MS];
    args.extend_from_slice(extra);
    Service::start(&dir, &args)
}

/// Whether a plain-TCP client gets any answer to PING from `port`.
fn plain_ping(port: u16) -> Result<String, String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    con.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    redis::cmd("PING")
        .query::<String>(&mut con)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_with_the_ca_trusted_a_storm_admits_exactly_the_quota() {
    let certs = TestCerts::generate();
    let server = RedisServer::start_tls(&certs);
    // The port speaks only TLS.
    let plain = plain_ping(server.port());
    assert!(plain.is_err(), "a plain client got {plain:?}");

    let ca = certs.ca();
    let svc = start(
        "tls-ca",
        &server.url(),
        &["--redis-ca-file", ca.to_str().unwrap()],
    );
    let admitted = storm(&svc, "storm", 200, 32).await;
    assert_eq!(admitted, 100, "the quota is 100\n{}", svc.logs());
    assert!(
        !server.keys("rl:*").is_empty(),
        "no counter on the TLS server"
    );
    assert!(server.script_calls() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn insecure_decides_over_tls_without_checking_the_certificate() {
    let certs = TestCerts::generate();
    let server = RedisServer::start_tls(&certs);
    let url = format!("rediss://127.0.0.1:{}/#insecure", server.port());
    let svc = start("tls-insecure", &url, &[]);
    let admitted = storm(&svc, "storm", 150, 16).await;
    assert_eq!(admitted, 100, "the quota is 100\n{}", svc.logs());
    assert!(!server.keys("rl:*").is_empty());
    assert!(
        svc.logs().contains("certificate is not checked"),
        "no warning about #insecure:\n{}",
        svc.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_untrusted_certificate_or_plain_tcp_gets_no_decision() {
    let certs = TestCerts::generate();
    let server = RedisServer::start_tls(&certs);
    let client = http_client(Duration::from_secs(10), 1);
    for (name, url) in [
        // The system's CAs do not know the throwaway CA.
        ("tls-untrusted", server.url()),
        ("tls-plain", format!("redis://127.0.0.1:{}", server.port())),
    ] {
        let svc = start(name, &url, &[]);
        for _ in 0..3 {
            let r = check(&client, &svc.url(""), "probe", 1).await.unwrap();
            assert_eq!(r.kind(), Kind::FailClosed, "{url}: {r:?}\n{}", svc.logs());
        }
    }
    assert!(
        server.keys("rl:*").is_empty(),
        "a counter was written without a trusted TLS connection"
    );
    assert_eq!(server.script_calls(), 0);
}

/// `--redis-ca-file` is read at start-up: a missing file, one without a certificate, or a URL
/// that is not `rediss://` stops the service before it serves, saying why.
#[test]
fn a_bad_ca_file_stops_the_start_up() {
    let dir = config_dir("tls-bad-ca", &[("service.yaml", CONFIG)]);
    let not_pem = dir.join("service.yaml");
    let certs = TestCerts::generate();
    let ca = certs.ca();
    for (url, ca_file, says) in [
        (
            "rediss://127.0.0.1:1",
            dir.join("missing.pem"),
            "missing.pem",
        ),
        ("rediss://127.0.0.1:1", not_pem, "holds no PEM certificate"),
        ("redis://127.0.0.1:1", ca.clone(), "needs a rediss:// URL"),
        ("redis+cluster://127.0.0.1:1", ca, "needs a rediss:// URL"),
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ratelimiter"))
            .args(["--config", dir.to_str().unwrap()])
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .args([
                "--redis-url",
                url,
                "--redis-ca-file",
                ca_file.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{url} {ca_file:?}: still running after 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(!status.success(), "{url} {ca_file:?} exited 0");
        assert!(stderr.contains(says), "{url} {ca_file:?}: {stderr}");
    }
}
