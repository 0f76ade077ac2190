//! Real `redis-server` processes, the one harness for every Redis test (the integration
//! tests include it as `common::redis_server`, the script tests in `src/store/redis/` by
//! path): one server (plain, with a password, or TLS-only with a throwaway CA made by
//! `openssl`, asking clients for a certificate or not), a primary with its replica and
//! Sentinels, or a 3-master Redis Cluster (plain or TLS-only), each on free loopback ports
//! with its own work directory. Never a fixed port, never the system
//! Redis on 6379. `redis-server`, `redis-cli` and `openssl` must be on PATH (`make setup` /
//! `scripts/setup.sh` installs them). It depends on nothing else of the test harness.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A fresh work directory for one server.
fn temp_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ratelimiter-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How long a freshly started server gets to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting a server on a fresh free port before giving up.
const START_ATTEMPTS: usize = 5;

/// A port nobody listens on right now: bind port 0, note the port, release it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// What the harness needs besides the port to talk to a server: the password it requires
/// (`requirepass`; letters and digits only, it goes into a URL as it is), and for a server that
/// speaks only TLS its certificates.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub password: Option<String>,
    /// `Some` = TLS only.
    pub tls: Option<TlsSetup>,
}

/// How a TLS-only server runs: with the server certificate of `certs` (also shown as a client
/// certificate to its primary, the other Cluster nodes and sentinels), and asking its clients
/// for a certificate signed by the CA when `client_auth`.
#[derive(Clone, Debug)]
pub struct TlsSetup {
    pub certs: TestCerts,
    pub client_auth: bool,
}

impl TlsSetup {
    /// The `redis-server` arguments (and, without their `--`, sentinel config lines).
    pub fn server_args(&self) -> Vec<String> {
        let path = |p: PathBuf| p.to_str().unwrap().to_owned();
        let auth = if self.client_auth { "yes" } else { "no" };
        [
            ("--tls-cert-file", path(self.certs.server_cert())),
            ("--tls-key-file", path(self.certs.server_key())),
            ("--tls-ca-cert-file", path(self.certs.ca())),
            ("--tls-auth-clients", auth.to_owned()),
            ("--tls-replication", "yes".to_owned()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_owned(), v])
        .collect()
    }

    /// What the harness's own clients trust and show: the CA, and the client certificate when
    /// the server asks for one.
    pub fn client_certs(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.client_auth.then(|| redis::ClientTlsConfig {
                client_cert: std::fs::read(self.certs.client_cert()).unwrap(),
                client_key: std::fs::read(self.certs.client_key()).unwrap(),
            }),
            root_cert: Some(std::fs::read(self.certs.ca()).unwrap()),
        }
    }

    /// `redis-cli` arguments to reach such a server.
    pub fn cli_args(&self) -> Vec<String> {
        let path = |p: PathBuf| p.to_str().unwrap().to_owned();
        let mut args = vec!["--tls".to_owned(), "--cacert".into(), path(self.certs.ca())];
        if self.client_auth {
            args.extend([
                "--cert".to_owned(),
                path(self.certs.client_cert()),
                "--key".into(),
                path(self.certs.client_key()),
            ]);
        }
        args
    }
}

/// A synchronous connection to `port`, with timeouts so that a test never hangs on it.
fn connect(port: u16, access: &Access, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let auth = access
        .password
        .as_ref()
        .map_or(String::new(), |p| format!(":{p}@"));
    let client = match &access.tls {
        None => redis::Client::open(format!("redis://{auth}127.0.0.1:{port}/"))?,
        Some(tls) => {
            // rustls needs a process-wide crypto provider; the first one installed stays.
            let _ = rustls::crypto::ring::default_provider().install_default();
            redis::Client::build_with_tls(
                format!("rediss://{auth}127.0.0.1:{port}/"),
                tls.client_certs(),
            )?
        }
    };
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(Duration::from_secs(10)))?;
    con.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(con)
}

/// Runs one command on a fresh connection to `port`.
fn run<T: redis::FromRedisValue>(
    port: u16,
    access: &Access,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    let mut con = connect(port, access, Duration::from_secs(2))?;
    cmd.query(&mut con)
}

/// Starts `redis-server` on `port` (its TLS port when `access` has TLS: then it has no plain
/// port) with `extra` arguments, logging to `dir`, and waits until it answers PING. Errors (the
/// port was taken, the binary is missing) come back with the log.
fn spawn(port: u16, dir: &Path, extra: &[String], access: &Access) -> Result<Child, String> {
    let mut command = Command::new("redis-server");
    if let Some(tls) = &access.tls {
        command.args(["--port", "0", "--tls-port", &port.to_string()]);
        command.args(tls.server_args());
    } else {
        command.args(["--port", &port.to_string()]);
    }
    command
        .args(["--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra);
    launch(command, port, dir, || answers_ping(port, access))
}

/// Whether the server on `port` answers PONG.
fn answers_ping(port: u16, access: &Access) -> bool {
    connect(port, access, Duration::from_millis(200)).is_ok_and(|mut con| {
        redis::cmd("PING").query::<String>(&mut con).ok().as_deref() == Some("PONG")
    })
}

/// Runs `command` (a `redis-server` listening on `port`) with its output in
/// `dir/redis-{port}.log`, and waits until `ready` says it serves. Errors (the port was
/// taken, the binary is missing) come back with the log.
fn launch(
    mut command: Command,
    port: u16,
    dir: &Path,
    ready: impl Fn() -> bool,
) -> Result<Child, String> {
    let log_path = dir.join(format!("redis-{port}.log"));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run redis-server ({e}); install it with `make setup` (scripts/setup.sh)"
            )
        })?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "redis-server on port {port} exited with {status}:\n{log}"
            ));
        }
        if ready() {
            return Ok(child);
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "redis-server on port {port} did not answer PING within {START_TIMEOUT:?}:\n{log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sum of the `calls=` of the commands named in `names` in an `INFO commandstats` text.
fn calls_in(info: &str, names: &[&str]) -> u64 {
    let mut total = 0;
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, stats)) = rest.split_once(':') else {
            continue;
        };
        if !names.contains(&name) {
            continue;
        }
        for field in stats.split(',') {
            if let Some(n) = field.strip_prefix("calls=") {
                total += n.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// Every way a client can run a script: what the over-limit cache must not call.
pub const SCRIPT_COMMANDS: [&str; 6] = [
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
];

/// One `redis-server` on a free port; killed on drop.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    access: Access,
    child: Option<Child>,
}

impl RedisServer {
    /// A standalone server without persistence.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A server with extra `redis-server` arguments; a fresh free port on each attempt.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        Self::start_as(extra, Access::default())
    }

    /// A server that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str, extra: &[&str]) -> RedisServer {
        let mut args = vec!["--requirepass", password];
        args.extend_from_slice(extra);
        Self::start_as(
            &args,
            Access {
                password: Some(password.to_owned()),
                tls: None,
            },
        )
    }

    /// A server that speaks only TLS, with the server certificate of `certs`, and does not
    /// ask clients for certificates.
    pub fn start_tls(certs: &TestCerts) -> RedisServer {
        Self::start_tls_with(certs, false, &[])
    }

    /// A server that speaks only TLS, asking clients for a certificate when `client_auth`,
    /// with `extra` arguments.
    pub fn start_tls_with(certs: &TestCerts, client_auth: bool, extra: &[&str]) -> RedisServer {
        Self::start_as(
            extra,
            Access {
                password: None,
                tls: Some(TlsSetup {
                    certs: certs.clone(),
                    client_auth,
                }),
            },
        )
    }

    fn start_as(extra: &[&str], access: Access) -> RedisServer {
        let dir = temp_dir("redis");
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn(port, &dir, &extra, &access) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        dir,
                        extra,
                        access,
                        child: Some(child),
                    };
                }
                Err(e) => errors.push(e),
            }
        }
        panic!("could not start redis-server:\n{}", errors.join("\n---\n"));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:P`, for `--redis-url` (`rediss://` for a TLS server, with
    /// `:password@` for one that requires a password).
    pub fn url(&self) -> String {
        let scheme = if self.access.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let auth = self
            .access
            .password
            .as_ref()
            .map_or(String::new(), |p| format!(":{p}@"));
        format!("{scheme}://{auth}127.0.0.1:{}", self.port)
    }

    /// An async connection to a plain server (the script tests drive scripts through it).
    pub async fn connect(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no goodbye to the clients, no save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new server on the same port (empty: nothing was saved). Retries for a few seconds
    /// in case the port is not free again at once.
    pub fn restart(&mut self) {
        self.kill();
        let started = Instant::now();
        loop {
            match spawn(self.port, &self.dir, &self.extra, &self.access) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if started.elapsed() > Duration::from_secs(5) => {
                    panic!("could not restart redis-server on {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Runs one command on a fresh connection.
    pub fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        run(self.port, &self.access, cmd)
            .unwrap_or_else(|e| panic!("redis {:?}: {e}", cmd.args_iter().next()))
    }

    /// `CLIENT PAUSE ms` (mode ALL): every client's commands wait until the pause ends.
    pub fn pause(&self, ms: u64) {
        let () = self.cmd(redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg("ALL"));
    }

    /// `SCRIPT FLUSH`: the next `EVALSHA` of every script gets NOSCRIPT.
    pub fn script_flush(&self) {
        let () = self.cmd(redis::cmd("SCRIPT").arg("FLUSH"));
    }

    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.cmd(redis::cmd("KEYS").arg(pattern))
    }

    pub fn flushall(&self) {
        let () = self.cmd(&redis::cmd("FLUSHALL"));
    }

    /// `INFO section` as text.
    pub fn info(&self, section: &str) -> String {
        self.cmd(redis::cmd("INFO").arg(section))
    }

    /// How many script calls (`EVAL`, `EVALSHA`, `FCALL`, …) the server has run.
    pub fn script_calls(&self) -> u64 {
        calls_in(&self.info("commandstats"), &SCRIPT_COMMANDS)
    }

    /// `calls=` of one command in `INFO commandstats` (lower-case name, e.g. `evalsha`).
    pub fn command_calls(&self, name: &str) -> u64 {
        calls_in(&self.info("commandstats"), &[name])
    }

    /// How many replies carried the error `prefix` (e.g. `NOSCRIPT`), from `INFO errorstats`.
    pub fn error_count(&self, prefix: &str) -> u64 {
        let info = self.info("errorstats");
        let wanted = format!("errorstat_{prefix}:count=");
        info.lines()
            .find_map(|l| l.strip_prefix(&wanted))
            .map_or(0, |n| n.trim().parse().unwrap_or(0))
    }

    /// Redis's clock (`TIME`) in microseconds since the epoch.
    pub fn time_us(&self) -> u64 {
        let (secs, micros): (u64, u64) = self.cmd(&redis::cmd("TIME"));
        secs * 1_000_000 + micros
    }

    /// A replica of `primary` (`--replicaof`), returned once its link to the primary is up
    /// (which sets the primary's `repl-diskless-sync-delay` to 0). It requires the primary's
    /// password, if any, and uses it to replicate.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        // The primary would otherwise wait 5 s for more replicas before a diskless full sync.
        let () = primary.cmd(
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("repl-diskless-sync-delay")
                .arg(0),
        );
        let port = primary.port.to_string();
        let mut args = vec!["--replicaof", "127.0.0.1", &port];
        if let Some(pw) = &primary.access.password {
            args.extend(["--requirepass", pw, "--masterauth", pw]);
        }
        // The same password and TLS as the primary's.
        let replica = Self::start_as(&args, primary.access.clone());
        wait_until(
            &format!("replica {} linked to {}", replica.port, primary.port),
            START_TIMEOUT,
            || {
                replica
                    .info("replication")
                    .contains("master_link_status:up")
            },
        );
        replica
    }

    /// `role:` of `INFO replication`: `master` or `slave`.
    pub fn role(&self) -> String {
        self.info("replication")
            .lines()
            .find_map(|l| l.strip_prefix("role:"))
            .unwrap_or("")
            .trim()
            .to_owned()
    }

    /// `WAIT replicas ms`: how many replicas acknowledged every write so far.
    pub fn wait_for_replicas(&self, replicas: u64, within: Duration) -> u64 {
        self.cmd(
            redis::cmd("WAIT")
                .arg(replicas)
                .arg(u64::try_from(within.as_millis()).unwrap()),
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of masters only, every slot assigned; every node killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `masters` (≥ 3) nodes on free ports (client and cluster-bus ports both picked free),
    /// joined with `redis-cli --cluster create`; returns once every node says
    /// `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        Self::start_as(masters, &Access::default())
    }

    /// The same, every node speaking only TLS (`port 0`, `tls-port`), its bus too
    /// (`tls-cluster yes`), asking clients for a certificate when `client_auth`.
    pub fn start_tls(masters: usize, certs: &TestCerts, client_auth: bool) -> RedisCluster {
        let tls = TlsSetup {
            certs: certs.clone(),
            client_auth,
        };
        Self::start_as(
            masters,
            &Access {
                password: None,
                tls: Some(tls),
            },
        )
    }

    fn start_as(masters: usize, access: &Access) -> RedisCluster {
        assert!(masters >= 3, "Redis Cluster needs at least 3 masters");
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(masters, access) {
                Ok(cluster) => return cluster,
                Err(e) => errors.push(e),
            }
        }
        panic!(
            "could not start a Redis Cluster:\n{}",
            errors.join("\n---\n")
        );
    }

    fn try_start(masters: usize, access: &Access) -> Result<RedisCluster, String> {
        let dir = temp_dir("redis-cluster");
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            // The cluster bus defaults to port + 10000, which may be taken or past 65535: pick
            // it free as well.
            let (port, bus) = (free_port(), free_port());
            let mut extra = vec![
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                dir.join(format!("nodes-{port}.conf"))
                    .to_str()
                    .unwrap()
                    .to_owned(),
                "--cluster-port".to_owned(),
                bus.to_string(),
                "--cluster-node-timeout".to_owned(),
                "5000".to_owned(),
            ];
            if access.tls.is_some() {
                extra.extend(["--tls-cluster".to_owned(), "yes".to_owned()]);
            }
            let child = spawn(port, &dir, &extra, access)?;
            nodes.push(RedisServer {
                port,
                dir: dir.clone(),
                extra,
                access: access.clone(),
                child: Some(child),
            });
        }
        let cluster = RedisCluster { nodes };
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let tls_args = access.tls.as_ref().map(TlsSetup::cli_args);
        let out = Command::new("redis-cli")
            .args(tls_args.unwrap_or_default())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let started = Instant::now();
        loop {
            let states: Vec<String> = cluster
                .nodes
                .iter()
                .map(|n| {
                    run::<String>(n.port, &n.access, redis::cmd("CLUSTER").arg("INFO"))
                        .map(|info| {
                            info.lines()
                                .find(|l| l.starts_with("cluster_state:"))
                                .unwrap_or("")
                                .trim()
                                .to_owned()
                        })
                        .unwrap_or_else(|e| e.to_string())
                })
                .collect();
            if states.iter().all(|s| s == "cluster_state:ok") {
                return Ok(cluster);
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("cluster not ok after 30 s: {states:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…` (`rediss+cluster://` over TLS).
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let tls = self.nodes.first().is_some_and(|n| n.access.tls.is_some());
        let scheme = if tls { "rediss" } else { "redis" };
        format!("{scheme}+cluster://{}", addrs.join(","))
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `KEYS pattern` on every node (each holds only its own slots).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.nodes.iter().flat_map(|n| n.keys(pattern)).collect()
    }

    /// Script calls summed over every node.
    pub fn script_calls(&self) -> u64 {
        self.nodes.iter().map(RedisServer::script_calls).sum()
    }
}

/// One Redis Sentinel (`redis-server <conf> --sentinel`) on a free port, watching one primary
/// under a master name with short timeouts (down after 1 s, failover timeout 3 s), so that a
/// failover takes seconds. Its config file, which Sentinel rewrites as it learns, lives in its
/// own temp dir. Killed on drop.
pub struct RedisSentinel {
    port: u16,
    dir: PathBuf,
    access: Access,
    child: Option<Child>,
}

impl RedisSentinel {
    /// A sentinel monitoring `primary` as `master` (with the primary's password, if any),
    /// which `quorum` sentinels must agree is down before a failover.
    pub fn start(master: &str, primary: &RedisServer, quorum: usize) -> RedisSentinel {
        Self::start_as(master, primary, quorum, None)
    }

    /// The same, itself requiring `password` (`requirepass`; it also authenticates to the
    /// other sentinels with it).
    pub fn start_with_password(
        master: &str,
        primary: &RedisServer,
        quorum: usize,
        password: &str,
    ) -> RedisSentinel {
        Self::start_as(master, primary, quorum, Some(password))
    }

    fn start_as(
        master: &str,
        primary: &RedisServer,
        quorum: usize,
        requirepass: Option<&str>,
    ) -> RedisSentinel {
        let dir = temp_dir("redis-sentinel");
        // Over TLS when the primary is: its port, its links to the primary, replicas and
        // other sentinels, and asking clients for a certificate as the primary does.
        let access = Access {
            password: requirepass.map(str::to_owned),
            tls: primary.access.tls.clone(),
        };
        let mut more = String::new();
        if let Some(tls) = &access.tls {
            for pair in tls.server_args().chunks(2) {
                more.push_str(&format!(
                    "{} {}\n",
                    pair[0].trim_start_matches("--"),
                    pair[1]
                ));
            }
        }
        if let Some(pw) = requirepass {
            more.push_str(&format!("requirepass {pw}\n"));
        }
        if let Some(pw) = &primary.access.password {
            more.push_str(&format!("sentinel auth-pass {master} {pw}\n"));
        }
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "{port_lines}\
                     bind 127.0.0.1\n\
                     daemonize no\n\
                     dir {dir}\n\
                     sentinel monitor {master} 127.0.0.1 {primary} {quorum}\n\
                     sentinel down-after-milliseconds {master} 1000\n\
                     sentinel failover-timeout {master} 3000\n\
                     sentinel parallel-syncs {master} 1\n\
                     {more}",
                    dir = dir.display(),
                    primary = primary.port,
                    port_lines = if access.tls.is_some() {
                        format!("port 0\ntls-port {port}\n")
                    } else {
                        format!("port {port}\n")
                    },
                ),
            )
            .unwrap();
            let mut command = Command::new("redis-server");
            command.arg(&conf).arg("--sentinel");
            match launch(command, port, &dir, || answers_ping(port, &access)) {
                Ok(child) => {
                    return RedisSentinel {
                        port,
                        dir,
                        access,
                        child: Some(child),
                    };
                }
                Err(e) => errors.push(e),
            }
        }
        panic!("could not start a sentinel:\n{}", errors.join("\n---\n"));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:P`, for a `redis+sentinel://` URL.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs one command on a fresh connection.
    pub fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        run(self.port, &self.access, cmd)
            .unwrap_or_else(|e| panic!("sentinel {:?}: {e}", cmd.args_iter().nth(1)))
    }

    /// `SENTINEL get-master-addr-by-name`: the port of the primary this sentinel names now.
    pub fn primary_port(&self, master: &str) -> Option<u16> {
        let addr: Option<(String, String)> = self.cmd(
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master),
        );
        addr.map(|(ip, port)| {
            assert_eq!(ip, "127.0.0.1", "sentinel names a primary off loopback");
            port.parse().unwrap()
        })
    }

    /// `SENTINEL MASTER master`: its fields (`flags`, `num-slaves`, `num-other-sentinels`, …).
    pub fn master_info(&self, master: &str) -> std::collections::HashMap<String, String> {
        self.cmd(redis::cmd("SENTINEL").arg("MASTER").arg(master))
    }

    /// How many replicas of `master` and other sentinels this sentinel knows of.
    pub fn knows(&self, master: &str) -> (usize, usize) {
        let info = self.master_info(master);
        let n = |field: &str| info.get(field).map_or(0, |v| v.parse().unwrap_or(0));
        (n("num-slaves"), n("num-other-sentinels"))
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throwaway CA, a server certificate it signed for `127.0.0.1` and `localhost` (for client
/// use too: a Redis node shows it to the nodes it connects to) and a client certificate it
/// signed (ECDSA P-256, valid for two days), made with the `openssl` command in a fresh temp
/// dir.
#[derive(Clone, Debug)]
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    pub fn generate() -> TestCerts {
        let dir = temp_dir("redis-tls");
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = serverAuth, clientAuth\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = clientAuth\n",
        )
        .unwrap();
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2";
        openssl(
            &dir,
            &format!("req -x509 {ec} -keyout ca.key -out ca.crt"),
            &[
                "-subj",
                "/CN=ratelimiter test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        openssl(
            &dir,
            &format!("req {ec} -keyout server.key -out server.csr"),
            &["-subj", "/CN=127.0.0.1"],
        );
        openssl(
            &dir,
            "x509 -req -days 2 -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
             -extfile server.ext -out server.crt",
            &[],
        );
        openssl(
            &dir,
            &format!("req {ec} -keyout client.key -out client.csr"),
            &["-subj", "/CN=ratelimiter"],
        );
        openssl(
            &dir,
            "x509 -req -days 2 -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
             -extfile client.ext -out client.crt",
            &[],
        );
        TestCerts { dir }
    }

    /// The CA certificate (PEM): what a client trusts.
    /// The service's flags for these certificates: the CA, and the client certificate and
    /// key when `client` (for a Redis with `tls-auth-clients yes`).
    pub fn service_flags(&self, client: bool) -> Vec<String> {
        let path = |p: PathBuf| p.to_str().unwrap().to_owned();
        let mut flags = vec!["--redis-ca-file".to_owned(), path(self.ca())];
        if client {
            flags.extend([
                "--redis-client-cert-file".to_owned(),
                path(self.client_cert()),
                "--redis-client-key-file".to_owned(),
                path(self.client_key()),
            ]);
        }
        flags
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// A client certificate (PEM) the CA signed, for servers that ask for one.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.crt")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
}

/// Runs `openssl` in `dir` with `args` (split on spaces) and then `more` (taken whole);
/// panics with its output if it fails.
fn openssl(dir: &Path, args: &str, more: &[&str]) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .args(more)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); it must be on PATH"));
    assert!(
        out.status.success(),
        "openssl {args} {more:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `done` every 50 ms until it holds, for at most `within`; how long it took. Panics,
/// naming `what`, when time runs out.
pub fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if done() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Microseconds since the epoch by this machine's clock (the one Redis reads, too).
pub fn wall_us() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}
