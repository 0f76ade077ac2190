//! The `ratelimiter` binary: parses the command line, then hands over to the library.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ratelimiter::api::admin::{self, Admin};
use ratelimiter::app::{self, AppOptions};
use ratelimiter::config::ForcedSettings;
use ratelimiter::limiter::TagSecret;
use ratelimiter::listener::{self, ConnectionLimits, Incoming};
use ratelimiter::reload;
use ratelimiter::server::{self, GrpcConnections, Listeners, ServeOptions};
use ratelimiter::store::RedisOptions;
use ratelimiter::store::redis::{TlsFiles as RedisTlsFiles, with_credentials};
use ratelimiter::telemetry::{self, TracingOptions};
use ratelimiter::tls::{ServerTls, TlsFiles};
use ratelimiter::upstream_env;
use tokio::net::TcpListener;

/// Exit code for a configuration that does not load (EX_CONFIG would be 78; EX_USAGE-style
/// 64 is what linkerd and others use for bad input at start-up).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "ratelimiter",
    version,
    about = "Rate limiting for Envoy, Istio, HTTP and gRPC",
    // envoyproxy/ratelimit's environment arrives as flags in front of the command line's
    // own (`upstream_env`): the later one wins.
    args_override_self = true
)]
struct Cli {
    /// A config file, or a directory of YAML files.
    #[arg(
        long,
        env = "RATELIMITER_CONFIG",
        default_value = "config",
        global = true
    )]
    config: PathBuf,
    /// Where `POST /check`, `/metrics`, `/healthz` and `/readyz` listen.
    #[arg(long, env = "RATELIMITER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Where the gRPC services listen.
    #[arg(long, env = "RATELIMITER_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    grpc_addr: SocketAddr,
    /// Redis to share counters across replicas; absent = the in-memory store.
    #[arg(long, env = "RATELIMITER_REDIS_URL")]
    redis_url: Option<String>,
    #[arg(long, env = "RATELIMITER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Seconds to keep serving after readiness turns false on SIGTERM.
    #[arg(long, env = "RATELIMITER_SHUTDOWN_DELAY", default_value_t = 0)]
    shutdown_delay: u64,
    /// Seconds in-flight requests get to finish during shutdown.
    #[arg(long, env = "RATELIMITER_DRAIN_TIMEOUT", default_value_t = 10)]
    drain_timeout: u64,
    /// The longest one decision waits on Redis, in milliseconds, counted from the moment it
    /// reaches the store: the wait for a free batch worker, opening a connection if the
    /// worker has none, the round trip, a NOSCRIPT reload and resend, and a resend on a new
    /// connection after a lost one all fall within it. Past it the failure policy answers; a
    /// decision already sent may still be charged by Redis (under-admission, never over).
    /// `/readyz` pings get 4 times it; start-up warm-up (at most 5 s) is not bounded by it.
    #[arg(long, env = "RATELIMITER_REDIS_TIMEOUT_MS",
          default_value_t = RedisOptions::DEFAULT_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    redis_timeout_ms: u64,
    /// Connections to Redis.
    #[arg(long, env = "RATELIMITER_REDIS_POOL_SIZE",
          default_value_t = RedisOptions::DEFAULT_POOL_SIZE,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    redis_pool_size: u64,
    /// Prefix of every Redis key the service writes.
    #[arg(long, env = "RATELIMITER_REDIS_PREFIX", default_value = RedisOptions::DEFAULT_PREFIX)]
    redis_prefix: String,
    /// CA certificates (PEM) that the certificates of a TLS Redis (`rediss://`,
    /// `rediss+cluster://`, `rediss+sentinel://`: every node and sentinel) must chain to,
    /// instead of the system's.
    #[arg(long, env = "RATELIMITER_REDIS_CA_FILE", requires = "redis_url")]
    redis_ca_file: Option<PathBuf>,
    /// A client certificate (PEM, the chain) shown to a TLS Redis that asks for one
    /// (`tls-auth-clients yes`); needs --redis-client-key-file.
    #[arg(long, env = "RATELIMITER_REDIS_CLIENT_CERT_FILE", requires_all = ["redis_url", "redis_client_key_file"])]
    redis_client_cert_file: Option<PathBuf>,
    /// The private key (PEM, unencrypted) of --redis-client-cert-file.
    #[arg(long, env = "RATELIMITER_REDIS_CLIENT_KEY_FILE", requires_all = ["redis_url", "redis_client_cert_file"])]
    redis_client_key_file: Option<PathBuf>,
    /// The Redis ACL user, when `--redis-url` names none.
    #[arg(long, env = "RATELIMITER_REDIS_USERNAME", requires = "redis_url")]
    redis_username: Option<String>,
    /// A file holding the Redis password, so that it is not on the command line (`ps`); the
    /// environment variable RATELIMITER_REDIS_PASSWORD may hold it instead.
    #[arg(long, env = "RATELIMITER_REDIS_PASSWORD_FILE", requires = "redis_url")]
    redis_password_file: Option<PathBuf>,
    /// Replicas sharing each quota: with `on_store_failure: local`, each enforces quota ÷ N
    /// while Redis is down.
    #[arg(long, env = "RATELIMITER_REPLICAS", default_value_t = AppOptions::DEFAULT_REPLICAS)]
    replicas: NonZeroU64,
    /// How often, in milliseconds, the files under `--config` are checked for changes (a
    /// ConfigMap's `..data` symlink swap, an edit); a change is loaded like a SIGHUP. 0 turns
    /// the watch off (SIGHUP still reloads).
    #[arg(
        long,
        env = "RATELIMITER_CONFIG_WATCH_INTERVAL_MS",
        default_value_t = 1000
    )]
    config_watch_interval_ms: u64,
    /// Serve the gRPC services on this Unix socket too (envoyproxy/ratelimit's GRPC_UDS), for
    /// a sidecar beside Envoy; a socket left there by an earlier run is replaced.
    #[arg(long, env = "RATELIMITER_GRPC_UDS")]
    grpc_uds: Option<PathBuf>,
    /// Global shadow mode, whatever the config files say: every refusal is answered as an
    /// admission (envoyproxy/ratelimit's SHADOW_MODE).
    #[arg(long, env = "RATELIMITER_SHADOW_MODE")]
    shadow_mode: bool,
    /// Global quota mode, whatever the config files say (envoyproxy/ratelimit's QUOTA_MODE).
    #[arg(long, env = "RATELIMITER_QUOTA_MODE")]
    quota_mode: bool,
    /// Envoy's rate-limit answers carry dynamic metadata, whatever the config files say
    /// (envoyproxy/ratelimit's RESPONSE_DYNAMIC_METADATA).
    #[arg(long, env = "RATELIMITER_RESPONSE_DYNAMIC_METADATA")]
    response_dynamic_metadata: bool,
    /// The in-memory store's capacity, in counters.
    #[arg(long, env = "RATELIMITER_MAX_COUNTERS", default_value_t = AppOptions::DEFAULT_MAX_COUNTERS)]
    max_counters: usize,
    /// OpenTelemetry traces: the OTLP/HTTP endpoint's base URL (e.g. http://jaeger:4318;
    /// spans go to <URL>/v1/traces). Absent: no traces.
    #[arg(long, env = "RATELIMITER_TRACING_OTLP_ENDPOINT")]
    tracing_otlp_endpoint: Option<String>,
    /// The share of new traces sampled (0 to 1); a caller's `traceparent` sampled flag is
    /// followed.
    #[arg(long, env = "RATELIMITER_TRACING_SAMPLING_RATE", default_value_t = 1.0)]
    tracing_sampling_rate: f64,
    /// The `service.name` of the spans.
    #[arg(
        long,
        env = "RATELIMITER_TRACING_SERVICE_NAME",
        default_value = "ratelimiter"
    )]
    tracing_service_name: String,
    /// Connections each listener (HTTP, gRPC) holds open at once; more are closed as soon as
    /// they are accepted. Default: 10,000, or less to fit the open-file limit (`ulimit -n`);
    /// a value given is lowered, with a warning, when it does not fit.
    #[arg(long, env = "RATELIMITER_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: Option<u64>,
    /// Requests each listener serves at once; past it 503 / RESOURCE_EXHAUSTED (health probes
    /// are never refused).
    #[arg(long, env = "RATELIMITER_MAX_CONCURRENT_REQUESTS",
          default_value_t = ServeOptions::DEFAULT_MAX_CONCURRENT_REQUESTS as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_concurrent_requests: u64,
    /// Seconds a new connection gets to start its first request (24 bytes), and an HTTP/1
    /// request to send its whole head; past it the connection is closed.
    #[arg(long, env = "RATELIMITER_HEADER_READ_TIMEOUT",
          default_value_t = ConnectionLimits::DEFAULT_HEADER_READ_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout: u64,
    /// Seconds a connection may go without reading or writing a byte before it is closed.
    #[arg(long, env = "RATELIMITER_IDLE_TIMEOUT",
          default_value_t = ConnectionLimits::DEFAULT_IDLE_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Seconds without frames from a gRPC client after which an HTTP/2 PING is sent.
    #[arg(long, env = "RATELIMITER_GRPC_KEEPALIVE_INTERVAL",
          default_value_t = GrpcConnections::DEFAULT_KEEPALIVE_INTERVAL.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    grpc_keepalive_interval: u64,
    /// Seconds a gRPC client gets to answer that PING before its connection is closed.
    #[arg(long, env = "RATELIMITER_GRPC_KEEPALIVE_TIMEOUT",
          default_value_t = GrpcConnections::DEFAULT_KEEPALIVE_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    grpc_keepalive_timeout: u64,
    /// Seconds after which a gRPC connection is sent GOAWAY, so clients reconnect and spread
    /// over replicas.
    #[arg(long, env = "RATELIMITER_GRPC_MAX_CONNECTION_AGE",
          default_value_t = GrpcConnections::DEFAULT_MAX_CONNECTION_AGE.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    grpc_max_connection_age: u64,
    /// Seconds a gRPC connection past its age gets to finish its requests before it is closed.
    #[arg(long, env = "RATELIMITER_GRPC_MAX_CONNECTION_AGE_GRACE",
          default_value_t = GrpcConnections::DEFAULT_MAX_CONNECTION_AGE_GRACE.as_secs())]
    grpc_max_connection_age_grace: u64,
    /// A file holding the secret (at least 16 bytes) that counter tags and log fingerprints
    /// are keyed with (HMAC-SHA256); the same on every replica sharing a Redis. The
    /// environment variable RATELIMITER_TAG_SECRET may hold the secret itself instead.
    #[arg(long, env = "RATELIMITER_TAG_SECRET_FILE")]
    tag_secret_file: Option<PathBuf>,
    /// Where the admin API listens (default 127.0.0.1:6070; when the default is taken, the
    /// service runs without it and says so). A non-loopback address needs --admin-token-file.
    #[arg(long, env = "RATELIMITER_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// A file holding the admin API's bearer token (at least 16 characters); with it, every
    /// admin call must send `Authorization: Bearer <token>`.
    #[arg(long, env = "RATELIMITER_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// The certificate chain (PEM, leaf first) the HTTP and gRPC listeners serve TLS with;
    /// needs --tls-key-file. The files are watched like the config (a change is loaded for
    /// new connections; a pair that does not load is refused and the old one stays).
    #[arg(long, env = "RATELIMITER_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert-file.
    #[arg(long, env = "RATELIMITER_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM): given, every client of the HTTP and gRPC listeners must present
    /// a certificate chaining to one of them (mTLS). Needs --tls-cert-file.
    #[arg(long, env = "RATELIMITER_TLS_CLIENT_CA_FILE")]
    tls_client_ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// The TLS files the command line names: both or neither of the pair, and a client CA only
/// with them.
fn tls_files(cli: &Cli) -> Result<Option<TlsFiles>, String> {
    match (&cli.tls_cert_file, &cli.tls_key_file) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: cli.tls_client_ca_file.clone(),
        })),
        (Some(_), None) => Err("--tls-cert-file needs --tls-key-file".to_owned()),
        (None, Some(_)) => Err("--tls-key-file needs --tls-cert-file".to_owned()),
        (None, None) if cli.tls_client_ca_file.is_some() => {
            Err("--tls-client-ca-file needs --tls-cert-file and --tls-key-file".to_owned())
        }
        (None, None) => Ok(None),
    }
}

/// The TLS side of the listeners, loaded, and the fingerprint of its files taken before
/// the load (for the watch).
type LoadedTls = Option<(Arc<ServerTls>, [reload::Fingerprint; 3])>;

fn load_tls(cli: &Cli, metrics: Arc<ratelimiter::metrics::Metrics>) -> Result<LoadedTls, String> {
    let Some(files) = tls_files(cli)? else {
        return Ok(None);
    };
    let seen = files.fingerprint();
    let tls = ServerTls::load(files, metrics).map_err(|e| format!("TLS: {e}"))?;
    tracing::info!(
        client_certificate_required = tls.requires_client_certificate(),
        "TLS on the HTTP and gRPC listeners"
    );
    Ok(Some((Arc::new(tls), seen)))
}

/// The environment variable that may hold the counter-tag secret itself (never a flag, so it
/// is not visible in `ps`).
const TAG_SECRET_ENV: &str = "RATELIMITER_TAG_SECRET";

/// The counter-tag secret from `--tag-secret-file` or [`TAG_SECRET_ENV`] (not both).
fn tag_secret(cli: &Cli) -> Result<Option<TagSecret>, String> {
    let from_env = std::env::var_os(TAG_SECRET_ENV).filter(|v| !v.is_empty());
    match (&cli.tag_secret_file, from_env) {
        (Some(_), Some(_)) => Err(format!(
            "give the counter-tag secret either in --tag-secret-file or in {TAG_SECRET_ENV}, not both"
        )),
        (Some(path), None) => TagSecret::from_file(path)
            .map(Some)
            .map_err(|e| format!("--tag-secret-file: {e}")),
        (None, Some(value)) => TagSecret::new(value.into_encoded_bytes())
            .map(Some)
            .map_err(|e| format!("{TAG_SECRET_ENV}: {e}")),
        (None, None) => Ok(None),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Checks a config file or directory and lists every problem; exits non-zero if any.
    Validate {
        /// The file or directory to check (default: the `--config` path, as the service
        /// would load it).
        path: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let upstream = upstream_env::translate(|name| std::env::var(name).ok());
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    let at = argv.len().min(1);
    argv.splice(at..at, upstream.args.iter().map(OsString::from));
    let cli = Cli::parse_from(argv);
    let validating = matches!(cli.command, Some(Command::Validate { .. }));
    let tracing = TracingOptions {
        // `validate` decides nothing: no traces.
        otlp_endpoint: cli.tracing_otlp_endpoint.clone().filter(|_| !validating),
        sampling_rate: cli.tracing_sampling_rate,
        service_name: cli.tracing_service_name.clone(),
    };
    let json = matches!(cli.log_format, LogFormat::Json);
    // Dropped last, after the runtime: flushes the spans still to be exported.
    let _traces = match telemetry::init(json, upstream.log_filter.as_deref(), &tracing) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(code) = report_upstream_env(&upstream) {
        return code;
    }
    if let Some(Command::Validate { path }) = &cli.command {
        let path = path.as_ref().unwrap_or(&cli.config);
        return match app::load_rules(path) {
            Ok(rules) => {
                for w in rules.warnings() {
                    eprintln!("warning: {w}");
                }
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(cli))
}

async fn serve(cli: Cli) -> ExitCode {
    let tag_secret = match tag_secret(&cli) {
        Ok(secret) => secret,
        Err(e) => return config_failure(e),
    };
    let redis_url = match redis_url(&cli) {
        Ok(url) => url,
        Err(e) => return config_failure(e),
    };
    // Before the load: a change after this point is seen by the config watch.
    let loaded = reload::fingerprint(&cli.config);
    // Bad config stops the process before any port is bound.
    let state = match app::build(&app_options(&cli, redis_url, tag_secret)) {
        Ok(s) => s,
        Err(e) => return config_failure(e),
    };
    let tls = match load_tls(&cli, state.metrics.clone()) {
        Ok(tls) => tls,
        Err(e) => return config_failure(e),
    };
    // The admin listener first: exposing it without a token stops start-up like a bad config.
    let admin = match admin_listener(&cli).await {
        Ok(admin) => admin,
        Err(e) => return config_failure(e),
    };
    // Before the service says it listens: a signal from then on finds its handler.
    let shutdown = server::shutdown_signal();
    let listeners = match bind(&cli).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some((listener, token)) = admin {
        let admin = Admin::new(state.clone(), cli.config.clone(), token.as_deref());
        let incoming = Incoming::new(listener, ADMIN_CONNECTIONS, "admin");
        tokio::spawn(admin::serve(incoming, Arc::new(admin)));
    }
    let watch = (cli.config_watch_interval_ms > 0)
        .then(|| Duration::from_millis(cli.config_watch_interval_ms));
    reload::start(state.clone(), cli.config.clone(), watch, loaded);
    let mut options = serve_options(&cli);
    if let Some((tls, seen)) = tls {
        #[cfg(unix)]
        ratelimiter::tls::reload_on_sighup(tls.clone());
        if let Some(every) = watch {
            tokio::spawn(ratelimiter::tls::watch(tls.clone(), every, seen));
        }
        options.tls = Some(tls);
    }
    match server::run(state, listeners, options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The environment variable that may hold the Redis password.
const REDIS_PASSWORD_ENV: &str = "RATELIMITER_REDIS_PASSWORD";

/// `--redis-url` with the user and password given apart from it (`--redis-username`,
/// `--redis-password-file` or [`REDIS_PASSWORD_ENV`]).
fn redis_url(cli: &Cli) -> Result<Option<String>, String> {
    let Some(url) = &cli.redis_url else {
        return Ok(None);
    };
    let from_env = std::env::var(REDIS_PASSWORD_ENV)
        .ok()
        .filter(|p| !p.is_empty());
    let password = match (&cli.redis_password_file, from_env) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "give the Redis password either in --redis-password-file or in {REDIS_PASSWORD_ENV}, not both"
            ));
        }
        (Some(path), None) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--redis-password-file {}: {e}", path.display()))?
                .trim_end()
                .to_owned(),
        ),
        (None, from_env) => from_env,
    };
    with_credentials(url, cli.redis_username.as_deref(), password.as_deref()).map(Some)
}

/// Logs and prints a start-up error in the configuration; the exit code for it.
fn config_failure(e: impl std::fmt::Display) -> ExitCode {
    tracing::error!("{e}");
    eprintln!("{e}");
    ExitCode::from(EXIT_CONFIG)
}

/// What the service is built from, from the command line.
fn app_options(cli: &Cli, redis_url: Option<String>, tag_secret: Option<TagSecret>) -> AppOptions {
    AppOptions {
        config: cli.config.clone(),
        redis: redis_url.map(|url| RedisOptions {
            url,
            timeout: Duration::from_millis(cli.redis_timeout_ms),
            pool_size: usize::try_from(cli.redis_pool_size).unwrap_or(usize::MAX),
            prefix: cli.redis_prefix.clone(),
            tls: RedisTlsFiles {
                ca_file: cli.redis_ca_file.clone(),
                client_cert_file: cli.redis_client_cert_file.clone(),
                client_key_file: cli.redis_client_key_file.clone(),
            },
        }),
        max_counters: cli.max_counters,
        replicas: cli.replicas,
        forced: ForcedSettings {
            shadow_mode: cli.shadow_mode,
            quota_mode: cli.quota_mode,
            response_dynamic_metadata: cli.response_dynamic_metadata,
        },
        tag_secret,
    }
}

/// The admin API's address when `--admin-addr` is not given: envoyproxy/ratelimit's debug
/// port (6070), on loopback (its 8081 is the gRPC port, which an upstream environment keeps).
const DEFAULT_ADMIN_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6070);

/// The admin listener's connections: few, and short-lived.
const ADMIN_CONNECTIONS: ConnectionLimits = ConnectionLimits {
    max_connections: 64,
    header_read_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
    close_after: None,
};

/// The admin listener, bound, and its token. Refuses a non-loopback address without a token;
/// `None` when the default address is taken (logged).
async fn admin_listener(cli: &Cli) -> Result<Option<(TcpListener, Option<String>)>, String> {
    let token = match &cli.admin_token_file {
        Some(path) => {
            Some(Admin::read_token(path).map_err(|e| format!("--admin-token-file: {e}"))?)
        }
        None => None,
    };
    let addr = cli.admin_addr.unwrap_or(DEFAULT_ADMIN_ADDR);
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to serve the admin API on {addr} without --admin-token-file (only a loopback address may go without a token)"
        ));
    }
    match TcpListener::bind(addr).await {
        Ok(listener) => {
            let shown = listener.local_addr().map_or(addr, |a| a);
            tracing::info!(admin = %shown, token = token.is_some(), "admin API listening");
            Ok(Some((listener, token)))
        }
        Err(e) if cli.admin_addr.is_none() => {
            tracing::warn!(admin = %addr, error = %e, "the admin API's default address is taken; running without the admin API (give --admin-addr)");
            Ok(None)
        }
        Err(e) => Err(format!("cannot listen on {addr} (--admin-addr): {e}")),
    }
}

/// Descriptors kept free for everything but the two listeners' connections: Redis
/// connections, config files, the runtime's own.
const RESERVED_DESCRIPTORS: u64 = 64;

/// How the servers run, from the command line; the connection cap fitted to the open-file
/// limit.
fn serve_options(cli: &Cli) -> ServeOptions {
    let asked = ConnectionLimits {
        max_connections: cli
            .max_connections
            .map_or(ConnectionLimits::DEFAULT_MAX_CONNECTIONS, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
        header_read_timeout: Duration::from_secs(cli.header_read_timeout),
        idle_timeout: Duration::from_secs(cli.idle_timeout),
        close_after: None,
    };
    let reserve = RESERVED_DESCRIPTORS + cli.redis_url.as_ref().map_or(0, |_| cli.redis_pool_size);
    let fd_limit = listener::open_file_limit();
    let (connections, lowered) = asked.fitted_to(fd_limit, reserve);
    if lowered && cli.max_connections.is_none() {
        tracing::info!(
            max_connections = connections.max_connections,
            open_file_limit = fd_limit,
            "connections per listener fitted to the open-file limit"
        );
    } else if lowered {
        tracing::warn!(
            asked = asked.max_connections,
            max_connections = connections.max_connections,
            open_file_limit = fd_limit,
            "--max-connections lowered to fit two listeners in the open-file limit (raise `ulimit -n` to allow more)"
        );
    }
    ServeOptions {
        shutdown_delay: Duration::from_secs(cli.shutdown_delay),
        drain_timeout: Duration::from_secs(cli.drain_timeout),
        connections,
        max_concurrent_requests: usize::try_from(cli.max_concurrent_requests).unwrap_or(usize::MAX),
        grpc: GrpcConnections {
            keepalive_interval: Duration::from_secs(cli.grpc_keepalive_interval),
            keepalive_timeout: Duration::from_secs(cli.grpc_keepalive_timeout),
            max_connection_age: Duration::from_secs(cli.grpc_max_connection_age),
            max_connection_age_grace: Duration::from_secs(cli.grpc_max_connection_age_grace),
        },
        tls: None,
    }
}

async fn bind(cli: &Cli) -> Result<Listeners, String> {
    let (http, grpc) = (cli.http_addr, cli.grpc_addr);
    let h = TcpListener::bind(http)
        .await
        .map_err(|e| format!("cannot listen on {http} (--http-addr): {e}"))?;
    let g = TcpListener::bind(grpc)
        .await
        .map_err(|e| format!("cannot listen on {grpc} (--grpc-addr): {e}"))?;
    let grpc_uds = match &cli.grpc_uds {
        Some(path) => Some(bind_uds(path)?),
        None => None,
    };
    Ok(Listeners {
        http: h,
        grpc: g,
        grpc_uds,
    })
}

/// Listens on the Unix socket at `path`, replacing a socket left there by an earlier run
/// (never any other kind of file).
fn bind_uds(path: &Path) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!("--grpc-uds {shown}: exists and is not a socket"));
        }
        std::fs::remove_file(path).map_err(|e| format!("--grpc-uds {shown}: {e}"))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {shown} (--grpc-uds): {e}"))?;
    tracing::info!(grpc_uds = %shown, "gRPC also listening on a Unix socket");
    Ok(listener)
}

/// Logs the envoyproxy/ratelimit variables that change nothing here, by name; refuses to start
/// on one that is set but unusable.
fn report_upstream_env(upstream: &upstream_env::Translation) -> Result<(), ExitCode> {
    for (name, instead) in &upstream.ignored {
        tracing::warn!(
            variable = name,
            "an envoyproxy/ratelimit setting that changes nothing here: {instead}"
        );
    }
    if upstream.errors.is_empty() {
        return Ok(());
    }
    for e in &upstream.errors {
        tracing::error!("{e}");
        eprintln!("{e}");
    }
    Err(ExitCode::from(EXIT_CONFIG))
}
