//! Test harness: runs the real `ratelimiter` binary on free ports, or the service in-process.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod chaos_proxy;
pub mod envoy;
pub mod envoy_replicas;
pub mod jaeger;
pub mod prometheus;
pub mod redis;
pub mod redis_cluster_replicas;
pub mod redis_server;

use ratelimiter::api::AppState;
use ratelimiter::app::{self, AppOptions};
use ratelimiter::server::{self, Listeners, ServeOptions};
use tonic::transport::Channel;

/// A fresh directory under Cargo's per-target temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `files` (name, YAML text) into a fresh config directory.
pub fn config_dir(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = temp_dir(name);
    for (file, text) in files {
        std::fs::write(dir.join(file), text).unwrap();
    }
    dir
}

/// A running `ratelimiter` process; killed on drop.
pub struct Service {
    pub child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// Everything the process logged so far (JSON lines), collected by a reader thread.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Service {
    /// Starts the binary with `--config dir` on free loopback ports, plus `extra` arguments,
    /// and waits for its "listening" line.
    pub fn start(config: &Path, extra: &[&str]) -> Service {
        Self::start_with_log_filter(config, extra, "info")
    }

    /// The same with another `RATELIMITER_LOG` filter (e.g. `debug`).
    pub fn start_with_log_filter(config: &Path, extra: &[&str], filter: &str) -> Service {
        Self::start_command(
            Command::new(env!("CARGO_BIN_EXE_ratelimiter")),
            config,
            extra,
            filter,
        )
    }

    /// The same through a prepared `command` (e.g. a shell that lowers `ulimit -n` first and
    /// `exec`s the binary, or one with environment variables set).
    pub fn start_command(
        mut command: Command,
        config: &Path,
        extra: &[&str],
        filter: &str,
    ) -> Service {
        command
            .args(["--config", config.to_str().unwrap()])
            .args(extra)
            .env("RATELIMITER_LOG", filter);
        Self::spawn(command)
    }

    /// Runs `cmd` (the binary, or a wrapper that execs it, such as `chroot`) on free loopback
    /// ports with JSON logs, and waits for its "listening" line.
    pub fn spawn(mut cmd: Command) -> Service {
        cmd.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
        // The admin API's default port is fixed (6070): a test that does not name one gets a
        // free port too, so that services started side by side never contend for it.
        if !cmd.get_args().any(|a| a == "--admin-addr") {
            cmd.args(["--admin-addr", "127.0.0.1:0"]);
        }
        Self::spawn_as_is(cmd)
    }

    /// The same with the addresses `cmd` names itself (`--http-addr`, `--grpc-addr`).
    pub fn spawn_as_is(mut cmd: Command) -> Service {
        let mut child = cmd
            .args(["--log-format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ratelimiter");
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["fields"]["message"] == "listening"
                    {
                        let _ = tx.send((
                            v["fields"]["http"].as_str().unwrap().parse().unwrap(),
                            v["fields"]["grpc"].as_str().unwrap().parse().unwrap(),
                        ));
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let stderr = child.stderr.take().unwrap();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let (http, grpc) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                panic!("ratelimiter did not start: {:?}", log.lock().unwrap());
            }
        };
        Service {
            child,
            http,
            grpc,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Sends a signal with the `kill` command (no libc dependency in tests).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, up to `limit`; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The service running in this test process on free ports; stopped when dropped.
pub struct InProcess {
    pub state: Arc<AppState>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), server::ServeError>>,
}

impl InProcess {
    pub async fn start(config: &Path) -> InProcess {
        let state = app::build(&AppOptions::new(config)).unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::run(
            state.clone(),
            Listeners {
                http,
                grpc,
                grpc_uds: None,
            },
            ServeOptions::default(),
            async move {
                let _ = rx.await;
            },
        ));
        InProcess {
            state,
            http: http_addr,
            grpc: grpc_addr,
            stop: Some(tx),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

/// `POST url` with `x-api-key: key`; the status code.
pub async fn post_status(client: &reqwest::Client, url: String, key: &str) -> u16 {
    client
        .post(url)
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Every replica's log, each under a `--- replica i ---` heading.
pub fn all_logs(services: &[Service]) -> String {
    services
        .iter()
        .enumerate()
        .map(|(i, s)| format!("--- replica {i} ---\n{}", s.logs()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A gRPC channel to `url` (`http://host:port`), connected.
pub async fn grpc_channel(url: String) -> Channel {
    tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// One gRPC health call on `channel`, so that the server's HTTP/2 settings (its stream limit
/// among them) are known before many streams open on it.
pub async fn warm_up(channel: &Channel) {
    tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
}

/// A gRPC channel to each of `services`, with a 30 s limit on every call, each warmed up
/// ([`warm_up`]) before it is returned.
pub async fn warm_grpc_channels(services: &[Service]) -> Vec<Channel> {
    let mut channels = Vec::with_capacity(services.len());
    for svc in services {
        let channel = tonic::transport::Endpoint::from_shared(svc.grpc_url())
            .unwrap()
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .unwrap();
        warm_up(&channel).await;
        channels.push(channel);
    }
    channels
}

/// The Prometheus text that `GET url` (a service's `/metrics`) answers, fetched with `client`.
pub async fn metrics(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// The value of the unlabelled metric `name` in a `/metrics` text; panics when it is not there.
pub fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{metrics}"))
}

/// The own-format config most tests use: `k1`..`k3` on a 5-per-hour token bucket, `big` on a
/// 1000-per-day token bucket (no refill within a test), unknown keys rejected.
pub const BASIC: &str = r#"
settings:
  default_domain: ratelimiter
  max_cost: 1000
clients:
  unknown_key: reject
  tiers:
    small:
      - { name: small, algorithm: token_bucket, limit: 5, window: 1h }
    big:
      - { name: per-day, algorithm: token_bucket, limit: 1000, window: 1d }
  keys:
    - { key: k1, tier: small }
    - { key: k2, tier: small }
    - { key: k3, tier: small }
    - { key: big, tier: big }
"#;

/// Whether `GET url` answers 2xx within `within` (asked every 100 ms): for test harnesses
/// waiting on a server they started.
pub async fn answers_ok(url: &str, within: Duration) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        if reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
