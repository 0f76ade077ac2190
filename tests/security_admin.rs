//! The admin API (issue 12, point 5), against the real binary: its own listener, a bearer
//! token when one is configured (and required off loopback), the configuration redacted to
//! key digests, a reload trigger, every call logged without the token, and nothing of it on
//! the public HTTP port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{BASIC, Service, config_dir, post_status, temp_dir};
use sha2::{Digest, Sha256};

const TOKEN: &str = "admin-token-0123456789";

/// The admin API's address, from the service's "admin API listening" log line.
fn admin_addr(svc: &Service) -> SocketAddr {
    let started = Instant::now();
    loop {
        let found = svc.logs().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "admin API listening")
                .then(|| v["fields"]["admin"].as_str()?.parse().ok())?
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no admin address: {}",
            svc.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A service with its admin API on a free loopback port, behind [`TOKEN`].
fn with_admin(dir: &std::path::Path) -> (Service, SocketAddr) {
    with_admin_and(dir, &[])
}

/// [`with_admin`] with more flags.
fn with_admin_and(dir: &std::path::Path, extra: &[&str]) -> (Service, SocketAddr) {
    let token = temp_dir("sec-admin-token").join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut args = vec![
        "--admin-addr",
        "127.0.0.1:0",
        "--admin-token-file",
        token.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let svc = Service::start(dir, &args);
    let addr = admin_addr(&svc);
    (svc, addr)
}

async fn call(method: reqwest::Method, url: String, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn the_admin_api_needs_its_token_and_redacts_keys() {
    let dir = config_dir("sec-admin", &[("service.yaml", BASIC)]);
    let (svc, admin) = with_admin(&dir);
    let config = format!("http://{admin}/admin/config");
    assert_eq!(
        call(reqwest::Method::GET, config.clone(), None).await.0,
        401
    );
    assert_eq!(
        call(
            reqwest::Method::GET,
            config.clone(),
            Some("wrong-token-0123456789")
        )
        .await
        .0,
        401
    );
    let (status, body) = call(reqwest::Method::GET, config, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    let keys = shown["service.yaml"]["clients"]["keys"].as_array().unwrap();
    assert_eq!(
        keys[0]["sha256"],
        hex::encode(Sha256::digest(b"k1")),
        "{body}"
    );
    assert_eq!(keys[0]["tier"], "small");
    assert!(
        keys.iter().all(|k| k.get("key").is_none()),
        "a raw key is shown: {body}"
    );

    // The log is read by another thread: wait until the calls are in it.
    let logged = |logs: &str| {
        logs.contains("admin call refused") && logs.lines().any(|l| l.contains("\"admin call\""))
    };
    let started = Instant::now();
    while !logged(&svc.logs()) && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = svc.logs();
    assert!(logs.contains("admin call refused"), "{logs}");
    assert!(
        logs.lines().any(|l| l.contains("\"admin call\"")
            && l.contains("/admin/config")
            && l.contains("127.0.0.1")),
        "{logs}"
    );
    assert!(
        !logs.contains(TOKEN) && !logs.contains("wrong-token"),
        "a token was logged: {logs}"
    );
}

#[tokio::test]
async fn the_admin_api_is_absent_from_the_public_port() {
    let dir = config_dir("sec-admin-public", &[("service.yaml", BASIC)]);
    let (svc, _) = with_admin(&dir);
    for (method, path) in [
        (reqwest::Method::GET, "/admin/config"),
        (reqwest::Method::POST, "/admin/reload"),
    ] {
        let (status, _) = call(method, svc.url(path), Some(TOKEN)).await;
        assert_eq!(status, 404, "{path} on the public HTTP port");
    }
}

#[tokio::test]
async fn the_admin_api_reloads_the_configuration() {
    let dir = config_dir("sec-admin-reload", &[("service.yaml", BASIC)]);
    let (svc, admin) = with_admin(&dir);
    let reload = format!("http://{admin}/admin/reload");
    std::fs::write(
        dir.join("service.yaml"),
        BASIC.replace("{ key: k1, tier: small }", "{ key: k1, tier: big }"),
    )
    .unwrap();
    assert_eq!(
        call(reqwest::Method::POST, reload.clone(), None).await.0,
        401
    );
    let (status, body) = call(reqwest::Method::POST, reload.clone(), Some(TOKEN)).await;
    assert_eq!((status, body.as_str()), (200, "reloaded\n"));
    let r = reqwest::Client::new()
        .post(svc.url("/check"))
        .header("x-api-key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["limit"], 1000);
    // A configuration that does not load is refused, with its problems; the old one stays.
    std::fs::write(dir.join("service.yaml"), "clients: [not, a, table]\n").unwrap();
    let (status, body) = call(reqwest::Method::POST, reload, Some(TOKEN)).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("service.yaml"), "{body}");
    let r = reqwest::Client::new()
        .post(svc.url("/check"))
        .header("x-api-key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["limit"], 1000);
}

#[test]
fn an_exposed_admin_api_without_a_token_stops_start_up() {
    let dir = config_dir("sec-admin-exposed", &[("service.yaml", BASIC)]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ratelimiter"))
        .args([
            "--config",
            dir.to_str().unwrap(),
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .args(["--admin-addr", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to serve the admin API on 0.0.0.0:0 without --admin-token-file"),
        "{stderr}"
    );
}

/// A client table where one key has a name, two share their tier's label, and one is known
/// only by its digest (the key `dave-key-0003`).
const NAMED: &str = r#"
settings:
  default_domain: ratelimiter
clients:
  tiers:
    small:
      - { name: per-hour, algorithm: token_bucket, limit: 5, window: 1h }
      - { name: per-day, algorithm: fixed_window, limit: 50, window: 1d }
  keys:
    - { key: alice-key-0001, tier: small, name: alice }
    - { key: k1, tier: small }
    - { key: k2, tier: small }
    - { sha256: DAVE, tier: small, name: dave }
"#;

/// `(used, remaining)` of each limit of the one client `GET /admin/clients/{name}` shows.
async fn usage(admin: SocketAddr, name: &str) -> Vec<(String, u64, u64)> {
    let url = format!("http://{admin}/admin/clients/{name}");
    let (status, body) = call(reqwest::Method::GET, url, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("alice-key"), "a raw key is shown: {body}");
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    let clients = shown["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{body}");
    let limits = clients[0]["limits"].as_array().unwrap().iter();
    let of = |l: &serde_json::Value| {
        let n = |f: &str| l[f].as_u64().unwrap();
        (
            l["name"].as_str().unwrap().to_owned(),
            n("used"),
            n("remaining"),
        )
    };
    limits.map(of).collect()
}

fn spent(hour: u64, day: u64) -> Vec<(String, u64, u64)> {
    vec![
        ("per-hour".to_owned(), hour, 5 - hour),
        ("per-day".to_owned(), day, 50 - day),
    ]
}

/// Spends alice's hour, reads her usage, resets her, and checks that her next request starts
/// afresh while the other clients' counters stay, on the store `extra` selects.
async fn usage_and_reset(name: &str, extra: &[&str]) -> Service {
    let dave = hex::encode(Sha256::digest(b"dave-key-0003"));
    let dir = config_dir(name, &[("service.yaml", &NAMED.replace("DAVE", &dave))]);
    let (svc, admin) = with_admin_and(&dir, extra);
    let http = reqwest::Client::new();
    let check = || post_status(&http, svc.url("/check"), "alice-key-0001");
    for _ in 0..5 {
        assert_eq!(check().await, 200);
    }
    assert_eq!(check().await, 429);
    assert_eq!(
        post_status(&http, svc.url("/check"), "dave-key-0003").await,
        200
    );
    assert_eq!(post_status(&http, svc.url("/check"), "k1").await, 200);
    assert_eq!(usage(admin, "alice").await, spent(5, 5));
    assert_eq!(
        usage(admin, "alice").await,
        spent(5, 5),
        "reading spent nothing"
    );
    assert_eq!(usage(admin, &format!("sha256:{dave}")).await, spent(1, 1));

    let clients = |path: &str| format!("http://{admin}/admin/clients/{path}");
    let (status, body) = call(reqwest::Method::DELETE, clients("alice"), Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&hex::encode(Sha256::digest(b"alice-key-0001"))),
        "{body}"
    );
    assert_eq!(
        check().await,
        200,
        "a reset client starts from a full quota"
    );
    assert_eq!(usage(admin, "alice").await, spent(1, 1));
    assert_eq!(
        usage(admin, "dave").await,
        spent(1, 1),
        "another client's counters stay"
    );

    // `small` labels k1 and k2: a reset must name one of them by its digest.
    let (status, body) = call(reqwest::Method::DELETE, clients("small"), Some(TOKEN)).await;
    assert_eq!(status, 409, "{body}");
    let k1 = hex::encode(Sha256::digest(b"k1"));
    assert!(body.contains(&k1), "{body}");
    let (status, _) = call(reqwest::Method::DELETE, clients(&k1), Some(TOKEN)).await;
    assert_eq!(status, 200);
    for (method, path, want) in [
        (reqwest::Method::GET, "nobody", 404),
        (reqwest::Method::DELETE, "nobody", 404),
        (reqwest::Method::GET, "alice", 401),
        (reqwest::Method::DELETE, "alice", 401),
    ] {
        let token = (want != 401).then_some(TOKEN);
        let (status, body) = call(method.clone(), clients(path), token).await;
        assert_eq!(status, want, "{method} {path}: {body}");
    }
    let (status, _) = call(
        reqwest::Method::GET,
        svc.url("/admin/clients/alice"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 404, "the admin API is absent from the public port");
    let logs = svc.logs();
    assert!(
        !logs.contains("alice-key") && !logs.contains(&dave),
        "{logs}"
    );
    svc
}

#[tokio::test]
async fn a_clients_usage_is_shown_and_reset_in_memory() {
    usage_and_reset("sec-admin-clients", &[]).await;
}

#[tokio::test]
async fn a_clients_usage_is_shown_and_reset_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    usage_and_reset("sec-admin-clients-redis", &["--redis-url", &url]).await;
    // k1 was reset and not used again: only alice's and dave's counters are left, two limits
    // under one tag each.
    let left = redis.keys("rl:*");
    let mut tags: Vec<&str> = left.iter().map(|k| &k[..k.find('}').unwrap()]).collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!((left.len(), tags.len()), (4, 2), "{left:?}");
}
