//! The `ratelimiter` binary: parses the command line, then hands over to the library.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ratelimiter::app::{self, AppOptions};
use ratelimiter::config::ForcedSettings;
use ratelimiter::reload;
use ratelimiter::server::{self, Listeners, ServeOptions};
use ratelimiter::store::RedisOptions;
use ratelimiter::telemetry::{self, TracingOptions};
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
    /// CA certificates (PEM) that a `rediss://` Redis server's certificate must chain to,
    /// instead of the system's.
    #[arg(long, env = "RATELIMITER_REDIS_CA_FILE", requires = "redis_url")]
    redis_ca_file: Option<PathBuf>,
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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Checks a config file or directory and lists every problem; exits non-zero if any.
    Validate { path: PathBuf },
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
    let options = AppOptions {
        config: cli.config.clone(),
        redis: cli.redis_url.as_ref().map(|url| RedisOptions {
            url: url.clone(),
            timeout: Duration::from_millis(cli.redis_timeout_ms),
            pool_size: usize::try_from(cli.redis_pool_size).unwrap_or(usize::MAX),
            prefix: cli.redis_prefix.clone(),
            ca_file: cli.redis_ca_file.clone(),
        }),
        max_counters: cli.max_counters,
        replicas: cli.replicas,
        forced: ForcedSettings {
            shadow_mode: cli.shadow_mode,
            quota_mode: cli.quota_mode,
            response_dynamic_metadata: cli.response_dynamic_metadata,
        },
    };
    // Before the load: a change after this point is seen by the config watch.
    let loaded = reload::fingerprint(&cli.config);
    // Bad config stops the process before any port is bound.
    let state = match app::build(&options) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Before the service says it listens: a signal from then on finds its handler.
    let shutdown = server::shutdown_signal();
    let listeners = match bind(cli.http_addr, cli.grpc_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let watch = (cli.config_watch_interval_ms > 0)
        .then(|| Duration::from_millis(cli.config_watch_interval_ms));
    reload::start(state.clone(), cli.config.clone(), watch, loaded);
    let options = ServeOptions {
        shutdown_delay: Duration::from_secs(cli.shutdown_delay),
        drain_timeout: Duration::from_secs(cli.drain_timeout),
    };
    match server::run(state, listeners, options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn bind(http: SocketAddr, grpc: SocketAddr) -> Result<Listeners, String> {
    let h = TcpListener::bind(http)
        .await
        .map_err(|e| format!("cannot listen on {http} (--http-addr): {e}"))?;
    let g = TcpListener::bind(grpc)
        .await
        .map_err(|e| format!("cannot listen on {grpc} (--grpc-addr): {e}"))?;
    Ok(Listeners { http: h, grpc: g })
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
