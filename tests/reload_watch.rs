//! Reload without restart, the way Kubernetes updates a mounted ConfigMap: the real binary
//! watches a directory of `file -> ..data/file` symlinks, `..data` is swapped atomically to a
//! new `..<timestamp>` directory under steady load, and the new limits take over within the
//! watch interval plus one load, with no request failing; a bad configuration swapped in the
//! same way is refused, counted, and the old limits keep serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Service, counter, metrics, post_status, temp_dir};

/// The documented bound: the default 1 s interval, plus a load, with room for a busy machine.
const IN_FORCE_WITHIN: Duration = Duration::from_secs(10);

/// `steady` never runs out within a test; `probe` has `probe_limit` per hour (an exact
/// sliding window, so a reload that raises it admits exactly the difference).
fn service_yaml(probe_limit: u32) -> String {
    format!(
        "settings: {{ default_domain: ratelimiter }}\n\
         clients:\n  unknown_key: reject\n  tiers:\n\
         \x20   steady: [ {{ name: steady, limit: 1000000, window: 1h }} ]\n\
         \x20   probe: [ {{ name: probe, algorithm: sliding_window, limit: {probe_limit}, window: 1h }} ]\n\
         \x20 keys:\n    - {{ key: steady, tier: steady }}\n    - {{ key: probe, tier: probe }}\n"
    )
}

/// Writes `files` into `dir/..<version>/` and points `dir/..data` at it with one atomic
/// rename, as the kubelet does; on the first call also creates the `name -> ..data/name`
/// links.
fn publish(dir: &Path, version: &str, files: &[(&str, &str)]) {
    let data = format!("..{version}");
    std::fs::create_dir(dir.join(&data)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(&data).join(name), text).unwrap();
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), link).unwrap();
        }
    }
    symlink(&data, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
}

/// Clients sending `POST /check` for `steady` until stopped; counts answers that are not 200.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, sent, failed, url) =
                    (stop.clone(), sent.clone(), failed.clone(), url.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    // Bounded: at most 200,000 requests per client, whatever happens.
                    for _ in 0..200_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let r = client.post(&url).header("x-api-key", "steady").send().await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        match r {
                            Ok(r) if r.status() == 200 => {}
                            Ok(r) => failed.lock().unwrap().push(format!("{}", r.status())),
                            Err(e) => failed.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            tasks,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.sent.load(Ordering::Relaxed), failed)
    }
}

/// Polls `probe` until it is admitted; returns how long that took.
async fn until_probe_admitted(client: &reqwest::Client, svc: &Service) -> Duration {
    let start = Instant::now();
    loop {
        match post_status(client, svc.url("/check"), "probe").await {
            200 => return start.elapsed(),
            429 => {}
            other => panic!("probe answered {other}"),
        }
        assert!(
            start.elapsed() < IN_FORCE_WITHIN,
            "the new limit was not in force within {IN_FORCE_WITHIN:?}:\n{}",
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Admissions of `probe` until the first 429.
async fn spend_probe(client: &reqwest::Client, svc: &Service) -> u32 {
    let mut admitted = 0;
    while post_status(client, svc.url("/check"), "probe").await == 200 {
        admitted += 1;
        assert!(admitted < 100, "probe never ran out");
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_under_load_is_in_force_without_a_failed_request() {
    let dir = temp_dir("reload-watch");
    publish(&dir, "2026_11_30_a", &[("service.yaml", &service_yaml(2))]);
    // The default interval (1 s): what a deployment gets.
    let svc = Service::start(&dir, &[]);
    let client = reqwest::Client::new();
    assert_eq!(spend_probe(&client, &svc).await, 2);
    let load = Load::start(svc.url("/check"), 4);
    tokio::time::sleep(Duration::from_millis(500)).await;

    publish(&dir, "2026_11_30_b", &[("service.yaml", &service_yaml(5))]);
    let took = until_probe_admitted(&client, &svc).await;
    eprintln!("new limit in force {took:?} after the swap");
    assert_eq!(
        1 + spend_probe(&client, &svc).await,
        3,
        "the raised limit admits exactly the difference: the counter survived the reload"
    );

    // A bad configuration: one good file that would raise the limit, one broken file.
    let broken = "clients:\n  tiers:\n    x: [ { limit: 0, window: 1s } ]\n  colour: blue\n";
    publish(
        &dir,
        "2026_11_30_c",
        &[
            ("service.yaml", &service_yaml(50)),
            ("z-broken.yaml", broken),
        ],
    );
    let refused = r#"ratelimiter_config_reloads_total{result="failure",trigger="watch"}"#;
    let start = Instant::now();
    while counter(&metrics(&client, &svc.url("/metrics")).await, refused) == 0 {
        assert!(
            start.elapsed() < IN_FORCE_WITHIN,
            "never refused:\n{}",
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(svc.logs().contains("reload refused"), "{}", svc.logs());
    assert_eq!(
        post_status(&client, svc.url("/check"), "probe").await,
        429,
        "the refused configuration's raised limit must not be in force"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, failed) = load.finish().await;
    assert!(sent > 100, "only {sent} requests under load");
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let m = metrics(&client, &svc.url("/metrics")).await;
    assert_eq!(
        counter(&m, refused),
        1,
        "the same bad contents are not retried"
    );
    assert_eq!(
        counter(
            &m,
            r#"ratelimiter_config_reloads_total{result="success",trigger="watch"}"#
        ),
        1
    );
    eprintln!("{sent} requests under load, none failed");
}

#[tokio::test]
async fn an_interval_of_zero_turns_the_watch_off() {
    let dir = temp_dir("reload-watch-off");
    publish(&dir, "v1", &[("service.yaml", &service_yaml(1))]);
    let svc = Service::start(&dir, &["--config-watch-interval-ms", "0"]);
    let client = reqwest::Client::new();
    assert_eq!(spend_probe(&client, &svc).await, 1);
    publish(&dir, "v2", &[("service.yaml", &service_yaml(3))]);
    // Three default intervals: a watch that was on would have reloaded by then.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(post_status(&client, svc.url("/check"), "probe").await, 429);
    svc.signal("HUP");
    let took = until_probe_admitted(&client, &svc).await;
    eprintln!("SIGHUP reload in force after {took:?}");
}

#[tokio::test]
async fn an_edited_config_file_is_reloaded_too() {
    let dir = temp_dir("reload-watch-file");
    let file = dir.join("ratelimiter.yaml");
    std::fs::write(&file, service_yaml(1)).unwrap();
    let svc = Service::start(&file, &["--config-watch-interval-ms", "100"]);
    let client = reqwest::Client::new();
    assert_eq!(spend_probe(&client, &svc).await, 1);
    std::fs::write(&file, service_yaml(2)).unwrap();
    until_probe_admitted(&client, &svc).await;
}

/// A signal sent the moment the service says it listens is handled, never the default action
/// (which kills the process for both SIGHUP and SIGTERM): the handlers are installed before
/// "listening". Repeated, because a missing handler shows only when the signal wins a race.
#[test]
fn signals_sent_as_soon_as_it_listens_are_handled() {
    let dir = temp_dir("reload-watch-signals");
    std::fs::write(dir.join("service.yaml"), service_yaml(1)).unwrap();
    for round in 0..15 {
        let mut svc = Service::start(&dir, &[]);
        svc.signal("HUP");
        svc.signal("TERM");
        let code = svc.wait_exit(Duration::from_secs(30));
        assert_eq!(
            code,
            Some(0),
            "round {round}: killed by a signal:\n{}",
            svc.logs()
        );
    }
}
