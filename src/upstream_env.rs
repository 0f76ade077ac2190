//! envoyproxy/ratelimit's environment variables, so that a Deployment written for it can swap
//! the image and keep its environment.
//!
//! [`translate`] turns the variables this service honours into command-line flags that go in
//! front of the real ones: a flag given on the command line, or its own `RATELIMITER_*`
//! variable, wins over the upstream variable. Every other upstream variable that is set is
//! listed by name with what to use instead, so that nothing is silently ignored; `main.rs`
//! logs them at start-up.
//!
//! Honoured: `RUNTIME_ROOT` + `RUNTIME_SUBDIRECTORY` + `RUNTIME_APPDIRECTORY` (the config
//! directory; `RUNTIME_WATCH_ROOT` and `RUNTIME_IGNOREDOTFILES=true` are what the config watch
//! does anyway), `REDIS_URL` with `REDIS_SOCKET_TYPE`, `REDIS_TYPE`, `REDIS_AUTH` and
//! `REDIS_TLS` (one `--redis-url`), `REDIS_POOL_SIZE`,
//! `CACHE_KEY_PREFIX`, `GRPC_HOST`/`GRPC_PORT`, `GRPC_UDS` (served beside the TCP port), `HOST`/`PORT`, `LOG_LEVEL`, `LOG_FORMAT`,
//! `SHADOW_MODE`, `QUOTA_MODE`, `RESPONSE_DYNAMIC_METADATA`, `GRPC_MAX_CONNECTION_AGE` and
//! `GRPC_MAX_CONNECTION_AGE_GRACE`, and `TRACING_ENABLED` with
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, `TRACING_SAMPLING_RATE` and `TRACING_SERVICE_NAME`.

/// What the environment says, as flags, and what it sets that is not honoured.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Translation {
    /// Flags (and values) to put in front of the command line's own.
    pub args: Vec<String>,
    /// The log filter `LOG_LEVEL` asks for, unless `RATELIMITER_LOG` is set.
    pub log_filter: Option<String>,
    /// Upstream variables that are set and not honoured: the name, and what to do instead.
    pub ignored: Vec<(&'static str, &'static str)>,
    /// Variables honoured but unreadable: the message says which and why.
    pub errors: Vec<String>,
}

/// Reads the environment through `var` (a variable's value, if set).
pub fn translate(var: impl Fn(&str) -> Option<String>) -> Translation {
    let mut t = Translation::default();
    let ours = |name: &str| var(name).is_some();
    let mut flag = |own: &str, flag: &str, value: Option<String>| {
        if let Some(value) = value.filter(|_| !ours(own)) {
            t.args.push(flag.to_owned());
            t.args.push(value);
        }
    };
    flag("RATELIMITER_CONFIG", "--config", config_dir(&var));
    let grpc = address(&var, "GRPC_HOST", "GRPC_PORT", "8081");
    flag("RATELIMITER_GRPC_ADDR", "--grpc-addr", grpc);
    flag(
        "RATELIMITER_HTTP_ADDR",
        "--http-addr",
        address(&var, "HOST", "PORT", "8080"),
    );
    for (name, own, flag_name) in DIRECT {
        flag(own, flag_name, var(name));
    }
    let format = var("LOG_FORMAT").map(|f| f.to_ascii_lowercase());
    flag("RATELIMITER_LOG_FORMAT", "--log-format", format);
    let mut errors = Vec::new();
    for (name, own, flag_name) in AGES {
        match var(name).map(|v| seconds(&v)) {
            Some(Ok(secs)) => flag(own, flag_name, Some(secs.to_string())),
            Some(Err(e)) => errors.push(format!("{name}: {e}")),
            None => {}
        }
    }
    match redis_url(&var) {
        Ok(url) => flag("RATELIMITER_REDIS_URL", "--redis-url", url),
        Err(e) => errors.push(e),
    }
    if var("REDIS_TLS").and_then(|v| parse_bool(&v)) == Some(true) {
        for (name, own, flag_name) in REDIS_TLS_FILES {
            flag(own, flag_name, var(name));
        }
    }
    if var("TRACING_ENABLED").and_then(|v| parse_bool(&v)) == Some(true) {
        let endpoint = var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_else(|| OTLP_DEFAULT.into());
        flag(
            "RATELIMITER_TRACING_OTLP_ENDPOINT",
            "--tracing-otlp-endpoint",
            Some(endpoint),
        );
        for (name, own, flag_name) in TRACING {
            flag(own, flag_name, var(name));
        }
    }
    modes(&mut t, &var, &mut errors);
    t.errors.extend(errors);
    if !ours("RATELIMITER_LOG") {
        t.log_filter = var("LOG_LEVEL").map(|l| l.to_ascii_lowercase());
    }
    t.ignored = NOT_HONOURED
        .iter()
        .filter(|(name, _)| var(name).is_some())
        .copied()
        .collect();
    t
}

/// Upstream's global switches, as our flags when true.
fn modes(t: &mut Translation, var: &impl Fn(&str) -> Option<String>, errors: &mut Vec<String>) {
    for (name, own, switch) in MODES {
        match var(name).map(|v| parse_bool(&v)) {
            Some(Some(true)) if var(own).is_none() => t.args.push(switch.to_owned()),
            Some(None) => errors.push(format!("{name} must be true or false")),
            _ => {}
        }
    }
}

/// Where traces go when `TRACING_ENABLED` names no endpoint (the OTLP/HTTP default).
const OTLP_DEFAULT: &str = "http://localhost:4318";

/// Upstream variables that are one of our flags as they are: (variable, our own variable,
/// our flag).
#[rustfmt::skip]
const DIRECT: [(&str, &str, &str); 3] = [
    ("GRPC_UDS", "RATELIMITER_GRPC_UDS", "--grpc-uds"),
    ("REDIS_POOL_SIZE", "RATELIMITER_REDIS_POOL_SIZE", "--redis-pool-size"),
    ("CACHE_KEY_PREFIX", "RATELIMITER_REDIS_PREFIX", "--redis-prefix"),
];

/// Upstream's Redis TLS files, used as upstream uses them: only when `REDIS_TLS` is true.
#[rustfmt::skip]
const REDIS_TLS_FILES: [(&str, &str, &str); 3] = [
    ("REDIS_TLS_CACERT", "RATELIMITER_REDIS_CA_FILE", "--redis-ca-file"),
    ("REDIS_TLS_CLIENT_CERT", "RATELIMITER_REDIS_CLIENT_CERT_FILE", "--redis-client-cert-file"),
    ("REDIS_TLS_CLIENT_KEY", "RATELIMITER_REDIS_CLIENT_KEY_FILE", "--redis-client-key-file"),
];

/// Upstream's tracing settings besides the endpoint, when `TRACING_ENABLED` is true.
#[rustfmt::skip]
const TRACING: [(&str, &str, &str); 2] = [
    ("TRACING_SAMPLING_RATE", "RATELIMITER_TRACING_SAMPLING_RATE", "--tracing-sampling-rate"),
    ("TRACING_SERVICE_NAME", "RATELIMITER_TRACING_SERVICE_NAME", "--tracing-service-name"),
];

/// Upstream's global switches: (variable, our own variable, our flag).
const MODES: [(&str, &str, &str); 3] = [
    ("SHADOW_MODE", "RATELIMITER_SHADOW_MODE", "--shadow-mode"),
    ("QUOTA_MODE", "RATELIMITER_QUOTA_MODE", "--quota-mode"),
    (
        "RESPONSE_DYNAMIC_METADATA",
        "RATELIMITER_RESPONSE_DYNAMIC_METADATA",
        "--response-dynamic-metadata",
    ),
];

/// Upstream's gRPC connection ages (Go durations): (variable, our own variable, our flag).
const AGES: [(&str, &str, &str); 2] = [
    (
        "GRPC_MAX_CONNECTION_AGE",
        "RATELIMITER_GRPC_MAX_CONNECTION_AGE",
        "--grpc-max-connection-age",
    ),
    (
        "GRPC_MAX_CONNECTION_AGE_GRACE",
        "RATELIMITER_GRPC_MAX_CONNECTION_AGE_GRACE",
        "--grpc-max-connection-age-grace",
    ),
];

/// A Go duration such as `24h` or `1h30m` in whole seconds (at least 1).
fn seconds(text: &str) -> Result<u64, String> {
    let micros = crate::config::parse_duration(text)?;
    Ok((micros / 1_000_000).max(1))
}

/// `RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY`, upstream's config directory,
/// when the root or the subdirectory is set.
fn config_dir(var: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let root = var("RUNTIME_ROOT");
    let sub = var("RUNTIME_SUBDIRECTORY");
    if root.is_none() && sub.is_none() {
        return None;
    }
    let root = root.unwrap_or_else(|| "/srv/runtime_data/current".to_owned());
    let app = var("RUNTIME_APPDIRECTORY").unwrap_or_else(|| "config".to_owned());
    let parts = [root, sub.unwrap_or_default(), app];
    let parts: Vec<&str> = parts
        .iter()
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .collect();
    Some(parts.join("/").replace("//", "/"))
}

/// `host:port` from upstream's pair, when either is set.
fn address(
    var: &impl Fn(&str) -> Option<String>,
    host: &str,
    port: &str,
    default_port: &str,
) -> Option<String> {
    let (h, p) = (var(host), var(port));
    if h.is_none() && p.is_none() {
        return None;
    }
    let h = h.unwrap_or_else(|| "0.0.0.0".to_owned());
    let p = p.unwrap_or_else(|| default_port.to_owned());
    Some(if h.contains(':') {
        format!("[{h}]:{p}")
    } else {
        format!("{h}:{p}")
    })
}

/// One `--redis-url` from upstream's `REDIS_*` variables, when `REDIS_URL` is set.
fn redis_url(var: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    let Some(url) = var("REDIS_URL") else {
        return Ok(None);
    };
    let tls = match var("REDIS_TLS").map(|v| parse_bool(&v)) {
        None | Some(Some(false)) => false,
        Some(Some(true)) => true,
        Some(None) => return Err("REDIS_TLS must be true or false".to_owned()),
    };
    let auth = var("REDIS_AUTH").map(|a| userinfo(&a)).unwrap_or_default();
    let kind = var("REDIS_TYPE").unwrap_or_else(|| "single".to_owned());
    let socket = var("REDIS_SOCKET_TYPE").unwrap_or_else(|| "unix".to_owned());
    match kind.to_ascii_lowercase().as_str() {
        "single" if socket.eq_ignore_ascii_case("unix") => Err(
            "REDIS_SOCKET_TYPE=unix (upstream's default) is not offered: set \
             REDIS_SOCKET_TYPE=tcp and REDIS_URL=host:port"
                .to_owned(),
        ),
        "single" => Ok(Some(format!("{}://{auth}{url}", scheme(tls, "")))),
        "cluster" => Ok(Some(format!("{}://{auth}{url}", scheme(tls, "+cluster")))),
        "sentinel" => sentinel_url(&url, tls, &auth).map(Some),
        other => Err(format!(
            "REDIS_TYPE '{other}' is not one of single, sentinel, cluster"
        )),
    }
}

/// Upstream's sentinel form, `master,host:port,host:port`, as ours.
fn sentinel_url(url: &str, tls: bool, auth: &str) -> Result<String, String> {
    let (master, sentinels) = url
        .split_once(',')
        .ok_or("REDIS_URL for REDIS_TYPE=sentinel must be master,host:port[,host:port…]")?;
    Ok(format!(
        "{}://{auth}{sentinels}/{master}",
        scheme(tls, "+sentinel")
    ))
}

fn scheme(tls: bool, kind: &str) -> String {
    format!("{}{kind}", if tls { "rediss" } else { "redis" })
}

/// `password` or `user:password` as a URL's userinfo (`user:password@`), percent-encoded.
fn userinfo(auth: &str) -> String {
    let (user, password) = auth.split_once(':').unwrap_or(("", auth));
    format!("{}:{}@", encode(user), encode(password))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Go's `strconv.ParseBool`, which upstream's settings use.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Upstream variables honoured here (turned into flags, or what the service does anyway).
#[rustfmt::skip]
pub const HONOURED: &[&str] = &[
    "HOST", "PORT", "GRPC_HOST", "GRPC_PORT", "GRPC_UDS", "GRPC_MAX_CONNECTION_AGE",
    "GRPC_MAX_CONNECTION_AGE_GRACE", "LOG_LEVEL", "LOG_FORMAT", "RUNTIME_ROOT",
    "RUNTIME_SUBDIRECTORY", "RUNTIME_APPDIRECTORY", "RUNTIME_WATCH_ROOT", "CACHE_KEY_PREFIX",
    "REDIS_SOCKET_TYPE", "REDIS_TYPE", "REDIS_URL", "REDIS_POOL_SIZE", "REDIS_AUTH", "REDIS_TLS",
    "REDIS_TLS_CACERT", "REDIS_TLS_CLIENT_CERT", "REDIS_TLS_CLIENT_KEY", "SHADOW_MODE", "QUOTA_MODE", "RESPONSE_DYNAMIC_METADATA", "TRACING_ENABLED",
    "TRACING_SERVICE_NAME", "TRACING_SAMPLING_RATE", "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Upstream variables that change nothing here, and what to do instead.
#[rustfmt::skip]
const NOT_HONOURED: &[(&str, &str)] = &[
    ("REDIS_TIMEOUT", "a dial timeout upstream; --redis-timeout-ms bounds a whole decision (default 50 ms)"),
    ("REDIS_PERSECOND", "one store here: per-second limits share --redis-url"),
    ("REDIS_PERSECOND_URL", "one store here: per-second limits share --redis-url"),
    ("REDIS_PIPELINE_WINDOW", "concurrent decisions always share a pipeline, with no added wait"),
    ("REDIS_PIPELINE_LIMIT", "concurrent decisions always share a pipeline (up to 64)"),
    ("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", "not offered: the server's name is always verified"),
    ("REDIS_HEALTH_CHECK_ACTIVE_CONNECTION", "/readyz pings Redis"),
    ("LOCAL_CACHE_SIZE_IN_BYTES", "the over-limit cache is always on and exact"),
    ("NEAR_LIMIT_RATIO", "not offered: per-limit verdicts are in /metrics"),
    ("EXPIRATION_JITTER_MAX_SECONDS", "keys expire exactly when their state is empty"),
    ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "a refused request is never counted here"),
    ("BACKEND_TYPE", "Redis with --redis-url, else the in-memory store; memcache is not offered"),
    ("MEMCACHE_HOST_PORT", "memcache is not offered"),
    ("LIMIT_RESPONSE_HEADERS_ENABLED", "settings.headers (ietf, x-ratelimit, both, none) in the config"),
    ("LIMIT_LIMIT_HEADER", "header names follow settings.headers"),
    ("LIMIT_REMAINING_HEADER", "header names follow settings.headers"),
    ("LIMIT_RESET_HEADER", "header names follow settings.headers"),
    ("MERGE_DOMAIN_CONFIG", "not offered: a domain lives in one file"),
    ("CONFIG_TYPE", "files only: xDS config loading is not offered"),
    ("FORCE_START_WITHOUT_INITIAL_CONFIG", "a config is required to start"),
    ("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "always: the service starts only with a valid config"),
    ("USE_STATSD", "metrics are Prometheus at GET /metrics"),
    ("USE_DOG_STATSD", "metrics are Prometheus at GET /metrics"),
    ("USE_PROMETHEUS", "metrics are Prometheus at GET /metrics on the HTTP port"),
    ("PROMETHEUS_ADDR", "metrics are served on the HTTP port (GET /metrics)"),
    ("STATSD_HOST", "metrics are Prometheus at GET /metrics"),
    ("EXTRA_TAGS", "not offered"),
    ("DISABLE_STATS", "not offered"),
    ("DEBUG_HOST", "the admin API (--admin-addr, default 127.0.0.1:6070) serves the loaded config"),
    ("DEBUG_PORT", "the admin API (--admin-addr, default 127.0.0.1:6070) serves the loaded config"),
    ("GRPC_SERVER_USE_TLS", "use --tls-cert-file and --tls-key-file: TLS on both public ports (so mind HTTP probes)"),
    ("TRACING_EXPORTER_PROTOCOL", "traces are exported over OTLP/HTTP only"),
    ("TRACING_SERVICE_NAMESPACE", "not offered: --tracing-service-name only"),
    ("TRACING_SERVICE_INSTANCE_ID", "not offered: --tracing-service-name only"),
    ("RUNTIME_IGNOREDOTFILES", "hidden files are always ignored"),
    ("REDIS_SENTINEL_AUTH", "the sentinels are asked with REDIS_AUTH's credentials"),
    ("REDIS_POOL_ON_EMPTY_BEHAVIOR", "a decision waits for a connection within --redis-timeout-ms"),
    ("REDIS_STARTUP_INITIAL_INTERVAL", "start-up never blocks on Redis: readiness waits at most 5 s, then the failure policy answers"),
    ("REDIS_STARTUP_MAX_INTERVAL", "start-up never blocks on Redis"),
    ("REDIS_STARTUP_MAX_ELAPSED_TIME", "start-up never blocks on Redis"),
    ("REDIS_CLUSTER_PIPELINE_PARALLELISM", "a Cluster's slots are asked in parallel"),
    ("REDIS_PERSECOND_TYPE", "one store here"),
    ("REDIS_PERSECOND_SOCKET_TYPE", "one store here"),
    ("REDIS_PERSECOND_POOL_SIZE", "one store here"),
    ("REDIS_PERSECOND_AUTH", "one store here"),
    ("REDIS_PERSECOND_TLS", "one store here"),
    ("REDIS_PERSECOND_TIMEOUT", "one store here"),
    ("REDIS_PERSECOND_SENTINEL_AUTH", "one store here"),
    ("MEMCACHE_SRV", "memcache is not offered"),
    ("MEMCACHE_MAX_IDLE_CONNS", "memcache is not offered"),
    ("MEMCACHE_TLS", "memcache is not offered"),
    ("GRPC_SERVER_TLS_CERT", "use --tls-cert-file (both public ports)"),
    ("GRPC_SERVER_TLS_KEY", "use --tls-key-file (both public ports)"),
    ("GRPC_CLIENT_TLS_CACERT", "use --tls-client-ca-file (both public ports)"),
    ("GRPC_CLIENT_TLS_SAN", "not offered: any certificate the client CA signed is accepted"),
    ("CONFIG_GRPC_XDS_SERVER_URL", "files only: xDS config loading is not offered"),
    ("CONFIG_GRPC_XDS_NODE_ID", "files only: xDS config loading is not offered"),
    ("USE_DOG_STATSD_MOGRIFIERS", "metrics are Prometheus at GET /metrics"),
    ("STATSD_PORT", "metrics are Prometheus at GET /metrics"),
    ("STATS_FLUSH_INTERVAL", "metrics are Prometheus at GET /metrics"),
    ("PROMETHEUS_PATH", "metrics are served at GET /metrics on the HTTP port"),
    ("PROMETHEUS_MAPPER_YAML", "metric names are fixed: see docs/operations.md"),
    ("PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS", "latencies are in seconds"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Translation {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        translate(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    fn arg<'t>(t: &'t Translation, flag: &str) -> Option<&'t str> {
        let at = t.args.iter().position(|a| a == flag)?;
        t.args.get(at + 1).map(String::as_str)
    }

    #[test]
    fn an_upstream_deployment_environment_becomes_flags() {
        let t = with(&[
            ("RUNTIME_ROOT", "/data"),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "redis:6379"),
            ("REDIS_AUTH", "user:p@ss"),
            ("GRPC_PORT", "8081"),
            ("PORT", "8080"),
            ("LOG_LEVEL", "DEBUG"),
            ("SHADOW_MODE", "true"),
            ("USE_STATSD", "false"),
        ]);
        assert_eq!(arg(&t, "--config"), Some("/data/ratelimit/config"));
        assert_eq!(
            arg(&t, "--redis-url"),
            Some("redis://user:p%40ss@redis:6379")
        );
        assert_eq!(arg(&t, "--grpc-addr"), Some("0.0.0.0:8081"));
        assert_eq!(arg(&t, "--http-addr"), Some("0.0.0.0:8080"));
        assert!(t.args.iter().any(|a| a == "--shadow-mode"));
        assert_eq!(t.log_filter.as_deref(), Some("debug"));
        assert_eq!(
            t.ignored.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["USE_STATSD"]
        );
        assert!(t.errors.is_empty());
    }

    #[test]
    fn a_unix_socket_for_grpc_becomes_the_flag() {
        assert_eq!(
            arg(&with(&[("GRPC_UDS", "/run/rl.sock")]), "--grpc-uds"),
            Some("/run/rl.sock")
        );
    }

    #[test]
    fn redis_tls_files_become_the_flags_only_with_redis_tls() {
        let files = [
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "redis:6379"),
            ("REDIS_TLS_CACERT", "/tls/ca.pem"),
            ("REDIS_TLS_CLIENT_CERT", "/tls/client.pem"),
            ("REDIS_TLS_CLIENT_KEY", "/tls/client.key"),
        ];
        let t = with(&[&files[..], &[("REDIS_TLS", "true")]].concat());
        assert_eq!(arg(&t, "--redis-ca-file"), Some("/tls/ca.pem"));
        assert_eq!(arg(&t, "--redis-client-cert-file"), Some("/tls/client.pem"));
        assert_eq!(arg(&t, "--redis-client-key-file"), Some("/tls/client.key"));
        assert_eq!(arg(&t, "--redis-url"), Some("rediss://redis:6379"));
        let plain = with(&files);
        assert_eq!(arg(&plain, "--redis-ca-file"), None);
        assert_eq!(arg(&plain, "--redis-client-cert-file"), None);
    }

    #[test]
    fn tracing_variables_become_the_tracing_flags() {
        let t = with(&[
            ("TRACING_ENABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
            ("TRACING_SAMPLING_RATE", "0.1"),
        ]);
        assert_eq!(arg(&t, "--tracing-otlp-endpoint"), Some("http://otel:4318"));
        assert_eq!(arg(&t, "--tracing-sampling-rate"), Some("0.1"));
        assert_eq!(
            arg(
                &with(&[("TRACING_SAMPLING_RATE", "0.1")]),
                "--tracing-sampling-rate"
            ),
            None
        );
    }

    #[test]
    fn connection_ages_are_go_durations_in_seconds() {
        let t = with(&[
            ("GRPC_MAX_CONNECTION_AGE", "24h"),
            ("GRPC_MAX_CONNECTION_AGE_GRACE", "1h30m"),
        ]);
        assert_eq!(arg(&t, "--grpc-max-connection-age"), Some("86400"));
        assert_eq!(arg(&t, "--grpc-max-connection-age-grace"), Some("5400"));
        assert!(
            with(&[("GRPC_MAX_CONNECTION_AGE", "soon")]).errors[0]
                .starts_with("GRPC_MAX_CONNECTION_AGE: ")
        );
    }

    #[test]
    fn redis_types_map_to_our_url_schemes() {
        let url = |vars: &[(&str, &str)]| arg(&with(vars), "--redis-url").map(str::to_owned);
        let unix = with(&[("REDIS_URL", "/run/redis.sock")]);
        assert!(
            unix.errors[0].contains("REDIS_SOCKET_TYPE=unix"),
            "{:?}",
            unix.errors
        );
        assert_eq!(
            url(&[
                ("REDIS_URL", "a:1,b:2"),
                ("REDIS_TYPE", "CLUSTER"),
                ("REDIS_SOCKET_TYPE", "tcp"),
                ("REDIS_TLS", "true")
            ])
            .as_deref(),
            Some("rediss+cluster://a:1,b:2")
        );
        assert_eq!(
            url(&[
                ("REDIS_URL", "mymaster,s1:26379,s2:26379"),
                ("REDIS_TYPE", "sentinel"),
                ("REDIS_AUTH", "pw")
            ])
            .as_deref(),
            Some("redis+sentinel://:pw@s1:26379,s2:26379/mymaster")
        );
        let t = with(&[("REDIS_URL", "x"), ("REDIS_TYPE", "ring")]);
        assert!(t.errors[0].contains("REDIS_TYPE 'ring'"), "{:?}", t.errors);
    }

    #[test]
    fn our_own_variables_win() {
        let t = with(&[
            ("GRPC_PORT", "9000"),
            ("RATELIMITER_GRPC_ADDR", "127.0.0.1:1"),
            ("SHADOW_MODE", "1"),
            ("RATELIMITER_SHADOW_MODE", "false"),
        ]);
        assert_eq!(arg(&t, "--grpc-addr"), None);
        assert!(!t.args.iter().any(|a| a == "--shadow-mode"));
        assert_eq!(
            with(&[("SHADOW_MODE", "maybe")]).errors,
            ["SHADOW_MODE must be true or false"]
        );
    }

    /// Every variable of envoyproxy/ratelimit's `src/settings/settings.go` at its HEAD of July
    /// 2026 (commit f2fb157), as listed from its source.
    #[rustfmt::skip]
    const UPSTREAM_SETTINGS: &[&str] = &[
        "HOST", "PORT", "DEBUG_HOST", "DEBUG_PORT", "GRPC_UDS", "GRPC_HOST", "GRPC_PORT",
        "GRPC_MAX_CONNECTION_AGE", "GRPC_MAX_CONNECTION_AGE_GRACE", "GRPC_SERVER_USE_TLS",
        "GRPC_SERVER_TLS_CERT", "GRPC_SERVER_TLS_KEY", "GRPC_CLIENT_TLS_CACERT",
        "GRPC_CLIENT_TLS_SAN", "LOG_LEVEL", "LOG_FORMAT", "CONFIG_TYPE",
        "FORCE_START_WITHOUT_INITIAL_CONFIG", "CONFIG_GRPC_XDS_NODE_ID",
        "CONFIG_GRPC_XDS_SERVER_URL", "USE_DOG_STATSD", "USE_DOG_STATSD_MOGRIFIERS", "USE_STATSD",
        "STATSD_HOST", "STATSD_PORT", "EXTRA_TAGS", "STATS_FLUSH_INTERVAL", "DISABLE_STATS",
        "USE_PROMETHEUS", "PROMETHEUS_ADDR", "PROMETHEUS_PATH", "PROMETHEUS_MAPPER_YAML",
        "PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS", "RUNTIME_ROOT", "RUNTIME_SUBDIRECTORY",
        "RUNTIME_APPDIRECTORY", "RUNTIME_IGNOREDOTFILES", "RUNTIME_WATCH_ROOT",
        "EXPIRATION_JITTER_MAX_SECONDS", "LOCAL_CACHE_SIZE_IN_BYTES", "NEAR_LIMIT_RATIO",
        "CACHE_KEY_PREFIX", "BACKEND_TYPE", "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT",
        "LIMIT_RESPONSE_HEADERS_ENABLED", "LIMIT_LIMIT_HEADER", "LIMIT_REMAINING_HEADER",
        "LIMIT_RESET_HEADER", "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "REDIS_SOCKET_TYPE",
        "REDIS_TYPE", "REDIS_URL", "REDIS_POOL_SIZE", "REDIS_AUTH", "REDIS_TLS",
        "REDIS_TLS_CLIENT_CERT", "REDIS_TLS_CLIENT_KEY", "REDIS_TLS_CACERT",
        "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", "REDIS_PIPELINE_WINDOW", "REDIS_PIPELINE_LIMIT",
        "REDIS_CLUSTER_PIPELINE_PARALLELISM", "REDIS_PERSECOND", "REDIS_PERSECOND_SOCKET_TYPE",
        "REDIS_PERSECOND_TYPE", "REDIS_PERSECOND_URL", "REDIS_PERSECOND_POOL_SIZE",
        "REDIS_PERSECOND_AUTH", "REDIS_PERSECOND_TLS", "REDIS_SENTINEL_AUTH",
        "REDIS_PERSECOND_SENTINEL_AUTH", "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION", "REDIS_TIMEOUT",
        "REDIS_PERSECOND_TIMEOUT", "REDIS_POOL_ON_EMPTY_BEHAVIOR",
        "REDIS_STARTUP_INITIAL_INTERVAL", "REDIS_STARTUP_MAX_INTERVAL",
        "REDIS_STARTUP_MAX_ELAPSED_TIME", "MEMCACHE_HOST_PORT", "MEMCACHE_MAX_IDLE_CONNS",
        "MEMCACHE_SRV", "MEMCACHE_TLS", "SHADOW_MODE", "QUOTA_MODE", "RESPONSE_DYNAMIC_METADATA",
        "MERGE_DOMAIN_CONFIG", "TRACING_ENABLED", "TRACING_SERVICE_NAME",
        "TRACING_SERVICE_NAMESPACE", "TRACING_SERVICE_INSTANCE_ID", "TRACING_EXPORTER_PROTOCOL",
        "TRACING_SAMPLING_RATE",
    ];

    #[test]
    fn every_upstream_setting_is_honoured_or_named() {
        let named = |v: &&str| NOT_HONOURED.iter().any(|(n, _)| n == v);
        let silent: Vec<&&str> = UPSTREAM_SETTINGS
            .iter()
            .filter(|v| !HONOURED.contains(v) && !named(v))
            .collect();
        assert!(silent.is_empty(), "neither honoured nor named: {silent:?}");
    }

    #[test]
    fn nothing_set_means_nothing_added() {
        assert_eq!(with(&[]), Translation::default());
    }
}
