//! The admin API (issue 12, point 5), against the real binary: its own listener, a bearer
//! token when one is configured (and required off loopback), the configuration redacted to
//! key digests, a reload trigger, every call logged without the token, and nothing of it on
//! the public HTTP port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{BASIC, Service, config_dir, temp_dir};
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
    let token = temp_dir("sec-admin-token").join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let svc = Service::start(
        dir,
        &[
            "--admin-addr",
            "127.0.0.1:0",
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
    );
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
