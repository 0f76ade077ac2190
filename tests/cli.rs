//! The binary's command line: `validate`, start-up on a bad config, and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{BASIC, Service, config_dir};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ratelimiter"))
}

const BROKEN: &str = r#"
settings:
  default_domain: ratelimiter
  colour: blue
clients:
  tiers:
    demo:
      - { name: demo, limit: 0, window: 10s }
  keys:
    - { key: a, tier: missing }
"#;

#[test]
fn validate_accepts_the_shipped_config() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let out = bin().args(["validate", shipped]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

/// Without a path, `validate` checks the config the service would load: `--config`, or
/// `RATELIMITER_CONFIG`.
#[test]
fn validate_without_a_path_checks_the_configured_one() {
    let broken = config_dir("cli-validate-configured", &[("bad.yaml", BROKEN)]);
    let broken = broken.to_str().unwrap();
    let out = bin()
        .args(["validate", "--config", broken])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("unknown key 'colour'"), "{stderr}");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let out = bin()
        .arg("validate")
        .env("RATELIMITER_CONFIG", shipped)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("{shipped}: ok")), "{stdout}");
}

#[test]
fn validate_warns_when_no_client_table_is_loaded() {
    let envoy_only = "domain: ratelimiter\ndescriptors:\n  - key: generic_key\n    rate_limit: { unit: hour, requests_per_unit: 10 }\n";
    let dir = config_dir("cli-no-clients", &[("edge.yaml", envoy_only)]);
    let out = bin()
        .args(["validate", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "a warning, not an error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: no client table") && stderr.contains("401"),
        "{stderr}"
    );
    // The shipped config has a client table: no warning.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let out = bin().args(["validate", shipped]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

#[test]
fn validate_lists_every_problem_with_its_file() {
    let dir = config_dir(
        "cli-broken",
        &[
            ("a.yaml", BROKEN),
            (
                "b.yaml",
                "domain: edge\ndescriptors:\n  - key: k\n    rate_limit: { unit: fortnight, requests_per_unit: 1 }\n",
            ),
            ("c.yaml", "clients: [unclosed\n"),
        ],
    );
    let out = bin()
        .args(["validate", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "a.yaml",
        "colour",
        "missing",
        "b.yaml",
        "fortnight",
        "c.yaml",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
    // The limit of 0 is reported too, not only the first problem of a.yaml.
    assert!(
        err.lines().filter(|l| l.contains("a.yaml")).count() >= 3,
        "{err}"
    );
    // YAML syntax errors come with a line number.
    assert!(
        err.lines()
            .any(|l| l.contains("c.yaml:1:") || l.contains("c.yaml:2:")),
        "{err}"
    );
}

#[test]
fn bad_config_stops_start_up_before_binding() {
    let dir = config_dir("cli-start", &[("a.yaml", BROKEN)]);
    let out = bin()
        .args([
            "--config",
            dir.to_str().unwrap(),
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("colour") && err.contains("missing"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

#[test]
fn missing_config_is_a_clear_error() {
    let out = bin()
        .args(["validate", "/nonexistent/ratelimiter.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ratelimiter.yaml"));
}

#[tokio::test]
async fn sigterm_turns_readiness_off_then_exits_cleanly() {
    let dir = config_dir("cli-term", &[("service.yaml", BASIC)]);
    let mut svc = Service::start(&dir, &["--shutdown-delay", "2"]);
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(svc.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    svc.signal("TERM");
    // During the shutdown delay: not ready, but still deciding.
    let mut saw_unready = false;
    for _ in 0..50 {
        let r = client.get(svc.url("/readyz")).send().await.unwrap();
        if r.status() == 503 {
            saw_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_unready, "readiness never turned false");
    let r = client
        .post(svc.url("/check"))
        .header("x-api-key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "requests are still served while draining");
    assert_eq!(svc.wait_exit(Duration::from_secs(15)), Some(0));
    let logs = svc.logs();
    assert!(
        logs.contains("SIGTERM received") && logs.contains("stopped"),
        "{logs}"
    );
}

#[tokio::test]
async fn sighup_reloads_and_a_bad_reload_keeps_the_old_config() {
    let dir = config_dir("cli-hup", &[("service.yaml", BASIC)]);
    let svc = Service::start(&dir, &[]);
    let client = reqwest::Client::new();
    let check = |key: &'static str| {
        client
            .post(svc.url("/check"))
            .header("x-api-key", key)
            .send()
    };
    assert_eq!(check("k1").await.unwrap().status(), 200);
    assert_eq!(check("newkey").await.unwrap().status(), 401);
    // A broken file: refused, old config stays.
    std::fs::write(dir.join("service.yaml"), BROKEN).unwrap();
    svc.signal("HUP");
    wait_for_log(&svc, "reload refused").await;
    assert_eq!(check("k1").await.unwrap().status(), 200);
    // A good one: swapped in, counters of unchanged limits kept.
    std::fs::write(
        dir.join("service.yaml"),
        BASIC.replace(
            "- { key: k3, tier: small }",
            "- { key: newkey, tier: small }",
        ),
    )
    .unwrap();
    svc.signal("HUP");
    wait_for_log(&svc, "configuration reloaded").await;
    assert_eq!(check("newkey").await.unwrap().status(), 200);
    let body: serde_json::Value = check("k1").await.unwrap().json().await.unwrap();
    assert_eq!(
        body["remaining"], 2,
        "k1 keeps its counter across the reload"
    );
}

async fn wait_for_log(svc: &Service, needle: &str) {
    for _ in 0..250 {
        if svc.logs().contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{needle:?} never logged:\n{}", svc.logs());
}

#[tokio::test]
async fn each_rejection_is_logged_at_debug_without_the_key() {
    let dir = config_dir("cli-debug", &[("service.yaml", BASIC)]);
    let svc = Service::start_with_log_filter(&dir, &[], "ratelimiter=debug");
    let client = reqwest::Client::new();
    for _ in 0..7 {
        client
            .post(svc.url("/check"))
            .header("x-api-key", "k1")
            .send()
            .await
            .unwrap();
    }
    // The log is read by a thread: wait until both lines have arrived (the responses were
    // sent after logging, so they are on their way).
    let mut logs = String::new();
    for _ in 0..250 {
        logs = svc.logs();
        if logs.matches("\"rejected\"").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rejections: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"rejected\""))
        .collect();
    assert_eq!(
        rejections.len(),
        2,
        "one line per rejected request:\n{logs}"
    );
    for line in rejections {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["level"], "DEBUG");
        assert_eq!(v["fields"]["door"], "http");
        assert_eq!(v["fields"]["limit"], "small");
        // A short fingerprint tells clients apart; the key itself never appears.
        assert_eq!(v["fields"]["client"].as_str().unwrap().len(), 8, "{line}");
        assert!(!line.contains("k1"), "{line}");
    }
}

#[test]
fn out_of_range_flags_are_refused_with_the_flag_named() {
    for (args, flag) in [
        (&["--replicas", "0"][..], "--replicas"),
        (&["--redis-timeout-ms", "0"][..], "--redis-timeout-ms"),
        (&["--redis-pool-size", "0"][..], "--redis-pool-size"),
        (&["--redis-ca-file", "/x.pem"][..], "--redis-url"),
    ] {
        let out = bin().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}
