//! `grafana/`: the dashboard's queries against a REAL Prometheus scraping two real replicas
//! that share a real Redis under a short load (allowed and rejected requests), and the
//! alerting rules through `promtool check rules` and `promtool test rules`.
//!
//! Every expression of `grafana/ratelimiter.json` is read from the file (Grafana's
//! variables substituted: `$instance` → `.*`, `$__rate_interval` → `15s`), checked by
//! promtool as a recording rule, and asked of Prometheus: each must return data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::prometheus::{Prometheus, promtool};
use common::redis::RedisServer;
use common::{Service, config_dir, temp_dir};

const CONFIG: &str = r#"
clients:
  tiers:
    roomy: [ { name: roomy-per-minute, limit: 100000, window: 1m } ]
    tight: [ { name: tight-per-hour, limit: 5, window: 1h } ]
  keys:
    - { key: load-roomy, tier: roomy }
    - { key: load-tight, tier: tight }
"#;

fn grafana() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana")
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(grafana().join("ratelimiter.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every panel's title and query expressions, rows' nested panels included.
fn panel_queries(dashboard: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = panels.pop() {
        if let Some(nested) = p["panels"].as_array() {
            panels.extend(nested);
        }
        let Some(targets) = p["targets"].as_array() else {
            continue;
        };
        let exprs = targets
            .iter()
            .map(|t| t["expr"].as_str().unwrap().to_string())
            .collect();
        out.push((p["title"].as_str().unwrap().to_string(), exprs));
    }
    out
}

/// Grafana's variables, as a query for every replica would have them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "15s")
        .replace("$instance", ".*")
}

#[test]
fn the_dashboard_has_a_datasource_variable_and_a_replica_filter() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("instance")["multi"], true);
    let panels = panel_queries(&d);
    assert!(panels.len() >= 10, "{panels:?}");
    for (title, exprs) in panels {
        assert!(!exprs.is_empty(), "{title}: no query");
        for e in exprs {
            assert!(
                e.contains("instance=~\"$instance\""),
                "{title}: no replica filter: {e}"
            );
        }
    }
}

#[test]
fn alerts_pass_promtool_check_and_their_unit_tests() {
    let dir = grafana();
    promtool(&["check", "rules", "alerts.yaml"], None, &dir)
        .unwrap_or_else(|e| panic!("promtool check rules:\n{e}"));
    promtool(&["test", "rules", "alerts.test.yaml"], None, &dir)
        .unwrap_or_else(|e| panic!("promtool test rules:\n{e}"));
}

/// Keeps both replicas busy until `stop`: allowed requests on one key, rejections on another.
fn drive_load(services: &[&Service], stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let urls: Vec<String> = services.iter().map(|s| s.url("/check")).collect();
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let key = if (i / 2).is_multiple_of(4) {
                "load-tight"
            } else {
                "load-roomy"
            };
            let _ = client
                .post(&urls[i % urls.len()])
                .header("x-api-key", key)
                .send()
                .await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let redis = RedisServer::start();
    let dir = config_dir("obs-dashboard", &[("service.yaml", CONFIG)]);
    let a = Service::start(&dir, &["--redis-url", &redis.url()]);
    let b = Service::start(&dir, &["--redis-url", &redis.url()]);
    let prom_dir = temp_dir("obs-prometheus");
    let prometheus = Prometheus::start(&prom_dir, &[a.http, b.http]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = drive_load(&[&a, &b], stop.clone());

    // Both replicas scraped several times under load, rejections included.
    let started = Instant::now();
    let ready = "count(increase(ratelimiter_decisions_total{outcome=\"rejected\"}[15s]) > 0)";
    loop {
        let r = prometheus.query(ready).await;
        if r.first().and_then(|s| s["value"][1].as_str()) == Some("2") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "Prometheus never saw both replicas reject:\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let series = prometheus.query("ratelimiter_build_info").await;
    assert_eq!(series.len(), 2, "the replica variable's source: {series:?}");

    let panels = panel_queries(&dashboard());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut empty = Vec::new();
    for (n, (title, exprs)) in panels.iter().enumerate() {
        for (m, expr) in exprs.iter().enumerate() {
            let expr = substitute(expr);
            rules += &format!(
                "      - record: dashboard:panel_{n}_{m}\n        expr: {}\n",
                serde_json::to_string(&expr).unwrap()
            );
            if prometheus.query(&expr).await.is_empty() {
                empty.push(format!("{title}: {expr}"));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );
    std::fs::write(prom_dir.join("dashboard.rules.yaml"), &rules).unwrap();
    promtool(&["check", "rules", "dashboard.rules.yaml"], None, &prom_dir)
        .unwrap_or_else(|e| panic!("promtool check rules on the dashboard's queries:\n{e}"));
}
