//! Keyed counter tags (issue 12, point 3), against the real binary and a real Redis: with a
//! secret, Redis key names are HMAC-SHA256 tags, not the SHA-256 of the key; replicas with
//! the same secret (from a file or the environment) share counters; a new secret names new
//! counters (rotation starts quotas afresh); no secret on Redis warns at start-up; a short
//! secret stops start-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::redis_server::RedisServer;
use common::{BASIC, Service, config_dir, temp_dir};
use sha2::{Digest, Sha256};

const SECRET: &str = "first secret, long enough";
const OTHER_SECRET: &str = "second secret, long enough";

/// The binary with `RATELIMITER_TAG_SECRET` set to `secret`.
fn with_secret_env(secret: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ratelimiter"));
    c.env("RATELIMITER_TAG_SECRET", secret);
    c
}

/// The unkeyed tag of a client-table key in the default domain, as 32 hex digits: the
/// SHA-256 of the domain and the `api_key` entry, whose value is written as the key's digest.
fn unkeyed_tag(api_key: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"ratelimiter\0api_key\0sha256:");
    h.update(hex::encode(Sha256::digest(api_key.as_bytes())).as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// The tags (the part in braces) of every counter key in Redis.
fn tags(redis: &RedisServer) -> BTreeSet<String> {
    redis
        .keys("rl:*")
        .iter()
        .filter_map(|k| Some(k.split_once('{')?.1.split_once('}')?.0.to_owned()))
        .collect()
}

/// `POST /check` for `key`: the `remaining` figure.
async fn remaining(svc: &Service, key: &str) -> u64 {
    let r = reqwest::Client::new()
        .post(svc.url("/check"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", svc.logs());
    r.json::<serde_json::Value>().await.unwrap()["remaining"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn redis_key_names_are_keyed_by_the_secret() {
    let redis = RedisServer::start();
    let dir = config_dir("sec-tags", &[("service.yaml", BASIC)]);
    let url = redis.url();
    let args = ["--redis-url", url.as_str()];
    let env_replica = Service::start_command(with_secret_env(SECRET), &dir, &args, "info");
    assert_eq!(remaining(&env_replica, "k1").await, 4);
    let after_one = tags(&redis);
    assert_eq!(after_one.len(), 1, "{after_one:?}");
    let plain = unkeyed_tag("k1");
    let key_sha = hex::encode(Sha256::digest(b"k1"));
    for key in redis.keys("rl:*") {
        assert!(
            !key.contains(&plain),
            "{key} is named by the unkeyed SHA-256 tag"
        );
        assert!(
            !key.contains(&key_sha[..16]),
            "{key} holds the key's SHA-256"
        );
    }

    // The same secret from a file (with a final newline): the same counter.
    let file = temp_dir("sec-tags-secret").join("tag-secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let file_replica = Service::start(
        &dir,
        &[&args[..], &["--tag-secret-file", file.to_str().unwrap()]].concat(),
    );
    assert_eq!(remaining(&file_replica, "k1").await, 3);
    assert_eq!(tags(&redis), after_one);

    // Another secret (a rotation): another tag, a fresh counter.
    let rotated = Service::start_command(with_secret_env(OTHER_SECRET), &dir, &args, "info");
    assert_eq!(remaining(&rotated, "k1").await, 4);
    assert_eq!(tags(&redis).len(), 2, "{:?}", tags(&redis));
    assert!(
        !env_replica.logs().contains(SECRET),
        "the secret was logged"
    );
}

#[tokio::test]
async fn without_a_secret_redis_warns_and_keeps_the_unkeyed_tags() {
    let redis = RedisServer::start();
    let dir = config_dir("sec-tags-none", &[("service.yaml", BASIC)]);
    let svc = Service::start(&dir, &["--redis-url", &redis.url()]);
    assert_eq!(remaining(&svc, "k1").await, 4);
    assert_eq!(tags(&redis), BTreeSet::from([unkeyed_tag("k1")]));
    assert!(
        svc.logs().contains("no counter-tag secret"),
        "{}",
        svc.logs()
    );
}

/// Runs `command` to its exit, killing it after 10 s (a binary that ignores the secret would
/// serve forever); its output.
fn run_to_exit(command: &mut Command) -> std::process::Output {
    use std::process::Stdio;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[test]
fn a_short_or_doubled_secret_stops_start_up() {
    let dir = config_dir("sec-tags-short", &[("service.yaml", BASIC)]);
    let config = ["--config", dir.to_str().unwrap()];
    let ports = ["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"];
    let out = run_to_exit(with_secret_env("short").args(config).args(ports));
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("RATELIMITER_TAG_SECRET: the tag secret is 5 bytes long"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("short"),
        "the secret was printed: {stderr}"
    );

    let file = temp_dir("sec-tags-doubled").join("tag-secret");
    std::fs::write(&file, SECRET).unwrap();
    let with_file = ["--tag-secret-file", file.to_str().unwrap()];
    let out = run_to_exit(
        with_secret_env(SECRET)
            .args(config)
            .args(ports)
            .args(with_file),
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not both"));
}
