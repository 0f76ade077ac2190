//! Redis credentials out of `ps` (issue 12, point 2, the Redis part), against the real binary
//! and a real Redis that requires a password: the password comes from
//! `RATELIMITER_REDIS_PASSWORD` or `--redis-password-file` with a `--redis-url` that holds
//! none, and the process's command line never shows it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::{BASIC, Service, config_dir, temp_dir};

const PASSWORD: &str = "redis-pass-7f3a9c";

/// `POST /check` for `big` until it is decided (200) or 10 s pass; the last status.
async fn decided(svc: &Service) -> u16 {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let status = client
            .post(svc.url("/check"))
            .header("x-api-key", "big")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 200 || started.elapsed() > Duration::from_secs(10) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The process's command line, as `ps` shows it.
fn command_line(svc: &Service) -> String {
    std::fs::read_to_string(format!("/proc/{}/cmdline", svc.child.id()))
        .unwrap()
        .replace('\0', " ")
}

#[tokio::test]
async fn the_redis_password_comes_from_the_environment_or_a_file_not_the_command_line() {
    let redis = RedisServer::start_with_password(PASSWORD, &[]);
    let url = format!("redis://127.0.0.1:{}", redis.port());
    let dir = config_dir("sec-redis-auth", &[("service.yaml", BASIC)]);

    let mut with_env = Command::new(env!("CARGO_BIN_EXE_ratelimiter"));
    with_env.env("RATELIMITER_REDIS_PASSWORD", PASSWORD);
    let svc = Service::start_command(with_env, &dir, &["--redis-url", &url], "info");
    assert_eq!(decided(&svc).await, 200, "{}", svc.logs());
    assert!(!command_line(&svc).contains(PASSWORD));
    assert!(!svc.logs().contains(PASSWORD), "the password was logged");

    let file = temp_dir("sec-redis-pass").join("password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let args = [
        "--redis-url",
        &url,
        "--redis-password-file",
        file.to_str().unwrap(),
    ];
    let svc = Service::start(&dir, &args);
    assert_eq!(decided(&svc).await, 200, "{}", svc.logs());
    assert!(!command_line(&svc).contains(PASSWORD));
}
