//! TLS to Redis (`rediss://`), against a real `redis-server` that speaks only TLS (`--port 0
//! --tls-port P`), with a throwaway CA and server certificate made by `openssl`, and the real
//! binary:
//!
//! - with the CA trusted (`--redis-ca-file`), a storm admits exactly the quota and the
//!   counters land on that server;
//! - `rediss://…/#insecure` decides without checking the certificate;
//! - the certificate is really checked: against the system's CAs alone (which do not know the
//!   throwaway CA) no decision is made, and neither over plain TCP to the TLS port; a plain
//!   client gets nothing from that port;
//! - a server asking for client certificates (`tls-auth-clients yes`): without one the service
//!   is not ready and its log says why; with `--redis-client-cert-file` and
//!   `--redis-client-key-file` it decides exactly;
//! - bad TLS files or flags stop the start-up, naming the flag or the file.
//!
//! The storms wait for readiness first (every batch worker has its TLS connection) and give
//! each decision a generous Redis time limit: a debug build doing many TLS handshakes at once
//! on a loaded machine once took over the former 1 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::redis::{
    Kind, RedisServer, TestCerts, check, http_client, never_ready, says_a_certificate_is_required,
    storm, wait_ready,
};
use common::{Service, config_dir};

/// Generous: these tests check TLS, not latency (a handshake is a few round trips, slow in a
/// debug build on a loaded machine).
const TIMEOUT_MS: &str = "5000";
/// How long a service gets to warm up (its warm-up gives up after 5 s).
const READY_WITHIN: Duration = Duration::from_secs(30);

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
    wait_ready(&svc, READY_WITHIN).await;
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
    wait_ready(&svc, READY_WITHIN).await;
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

/// Runs the binary with `args` (besides the config and free ports), which must stop it
/// before it serves: its stderr, once it exited non-zero.
fn start_up_error(dir: &std::path::Path, args: &[&str]) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ratelimiter"))
        .args(["--config", dir.to_str().unwrap()])
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(args)
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
            panic!("{args:?}: still running after 10 s");
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
    assert!(!status.success(), "{args:?} exited 0");
    stderr
}

/// `--redis-ca-file` is read at start-up: a missing file, one without a certificate, or a URL
/// that is not a TLS one stops the service before it serves, saying why.
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
        let args = [
            "--redis-url",
            url,
            "--redis-ca-file",
            ca_file.to_str().unwrap(),
        ];
        let stderr = start_up_error(&dir, &args);
        assert!(stderr.contains(says), "{url} {ca_file:?}: {stderr}");
    }
}

/// The client certificate and key go together (one alone stops the start-up naming the other
/// flag), are read at start-up (a missing or wrong file is named), and need a TLS URL.
#[test]
fn bad_client_certificate_flags_stop_the_start_up() {
    let dir = config_dir("tls-bad-client-cert", &[("service.yaml", CONFIG)]);
    let certs = TestCerts::generate();
    let p = |p: std::path::PathBuf| p.to_str().unwrap().to_owned();
    let (cert, key, missing) = (
        p(certs.client_cert()),
        p(certs.client_key()),
        p(dir.join("absent-key.pem")),
    );
    let cert_flag = "--redis-client-cert-file";
    let key_flag = "--redis-client-key-file";
    let tls = "rediss://127.0.0.1:1";
    for (url, files, says) in [
        (tls, vec![(cert_flag, &cert)], key_flag),
        (tls, vec![(key_flag, &key)], cert_flag),
        (
            tls,
            vec![(cert_flag, &cert), (key_flag, &missing)],
            "absent-key.pem",
        ),
        // The key where the certificate belongs, and the other way round.
        (
            tls,
            vec![(cert_flag, &key), (key_flag, &cert)],
            "holds no PEM certificate",
        ),
        (
            "redis://127.0.0.1:1",
            vec![(cert_flag, &cert), (key_flag, &key)],
            "needs a rediss:// URL",
        ),
    ] {
        let mut args = vec!["--redis-url", url];
        for (flag, file) in &files {
            args.extend([*flag, file.as_str()]);
        }
        let stderr = start_up_error(&dir, &args);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// A server that asks for client certificates: without one, no decision, `/readyz` 503 and the
/// log says why; with one, exact decisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_asking_for_a_client_certificate_gets_one() {
    let certs = TestCerts::generate();
    let server = RedisServer::start_tls_with(&certs, true, &[]);
    let ca_only = certs.service_flags(false);
    let ca_only: Vec<&str> = ca_only.iter().map(String::as_str).collect();
    let without = start("tls-no-client-cert", &server.url(), &ca_only);
    never_ready(&without, Duration::from_secs(7)).await;
    let client = http_client(Duration::from_secs(10), 1);
    let r = check(&client, &without.url(""), "probe", 1).await.unwrap();
    assert_eq!(r.kind(), Kind::FailClosed, "{r:?}");
    says_a_certificate_is_required(&without);
    drop(without);
    assert!(server.keys("rl:*").is_empty());

    let args = certs.service_flags(true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let with = start("tls-client-cert", &server.url(), &args);
    wait_ready(&with, READY_WITHIN).await;
    assert_eq!(storm(&with, "storm", 150, 16).await, 100, "{}", with.logs());
    assert!(!server.keys("rl:*").is_empty());
}
