//! Connections to Redis: one pool for a single server, a Cluster, or a Sentinel-managed
//! primary, behind one `invoke`.
//!
//! URLs:
//! - `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS): one server. Over TLS the
//!   server's certificate is checked against the system's CAs, or against those of a CA file
//!   ([`TlsFiles`]) instead; `rediss://…/#insecure` checks nothing (a
//!   warning says so). TLS is rustls with the ring provider, installed for the process here;
//! - `redis+cluster://[user:pass@]h1:p1,h2:p2,…`: Redis Cluster, seeded from those nodes;
//!   `rediss+cluster://…`: every node over TLS;
//! - `redis+sentinel://[user:pass@]h1:p1,h2:p2,…/master-name[/db]`: the primary that the
//!   sentinels name, found again through them after a failover. The credentials are the
//!   primary's; the sentinels are sent them too, as the user `default` when the URL names no
//!   user, which a sentinel requiring that password accepts and so does one requiring none.
//!   `rediss+sentinel://…`: the sentinels and the primary over TLS.
//!
//! Over TLS, whatever the form, the same CA file and client certificate ([`TlsFiles`]) serve
//! every connection: each server, node, sentinel and primary.
//!
//! A pooled connection stays with the primary it was opened to. After a failover that killed
//! the primary it breaks, and the pool opens the next one through the sentinels. After a
//! planned one (`SENTINEL FAILOVER`) the old primary lives on and keeps taking writes until
//! the sentinels demote it, seconds later, and its demotion discards them: so the sentinels
//! are asked every [`SENTINEL_POLL`] which primary they name, and when that changes the
//! connections opened before are closed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_redis::redis::{self, FromRedisValue, ScriptInvocation, Value};
use deadpool_redis::{PoolConfig, Runtime, Timeouts};

use super::connectors::{ClusterConnector, SentinelConnector, SentinelTarget};
use super::tls::TlsFiles;
use crate::store::StoreError;

/// A parsed `--redis-url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisUrl {
    Single(String),
    Cluster(Vec<String>),
    Sentinel {
        /// `redis://[user:pass@]host:port` of each sentinel.
        sentinels: Vec<String>,
        master: String,
        db: Option<i64>,
        /// The primary's credentials, as the URL gave them (percent-decoded).
        username: Option<String>,
        password: Option<String>,
    },
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let bad = |why: &str| format!("--redis-url {:?}: {why}", redact(url));
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return Ok(RedisUrl::Single(url.to_owned()));
        }
        for (scheme, node_scheme) in [("redis+", "redis"), ("rediss+", "rediss")] {
            let Some(rest) = url.strip_prefix(scheme) else {
                continue;
            };
            if let Some(rest) = rest.strip_prefix("cluster://") {
                return parse_cluster(rest, node_scheme).map_err(&bad);
            }
            if let Some(rest) = rest.strip_prefix("sentinel://") {
                return parse_sentinel(rest, node_scheme).map_err(|why| bad(&why));
            }
        }
        Err(bad(
            "expected redis://, rediss://, redis[s]+cluster:// or redis[s]+sentinel://",
        ))
    }

    /// Whether the connections are TLS: `rediss://`, `rediss+cluster://`, `rediss+sentinel://`.
    pub fn is_tls(&self) -> bool {
        match self {
            RedisUrl::Single(url) => url.starts_with("rediss://"),
            RedisUrl::Cluster(urls) => urls.first().is_some_and(|u| u.starts_with("rediss://")),
            RedisUrl::Sentinel { sentinels, .. } => sentinels
                .first()
                .is_some_and(|u| u.starts_with("rediss://")),
        }
    }
}

/// The node URLs (`{node_scheme}://[user:pass@]host:port`) of a Cluster URL's `rest`.
fn parse_cluster(rest: &str, node_scheme: &str) -> Result<RedisUrl, &'static str> {
    let (auth, hosts) = split_auth(rest);
    let hosts = hosts.trim_end_matches('/');
    if hosts.is_empty() {
        return Err("names no cluster node");
    }
    Ok(RedisUrl::Cluster(
        hosts
            .split(',')
            .map(|h| format!("{node_scheme}://{auth}{h}"))
            .collect(),
    ))
}

/// A Sentinel URL's `rest` (`[user:pass@]h1:p1,h2:p2/master[/db]`); every sentinel's URL is
/// `{node_scheme}://…`, and the primary is reached the same way.
fn parse_sentinel(rest: &str, node_scheme: &str) -> Result<RedisUrl, String> {
    let (auth, rest) = split_auth(rest);
    let mut parts = rest.splitn(3, '/');
    let hosts = parts.next().unwrap_or("");
    let master = parts.next().unwrap_or("");
    if hosts.is_empty() || master.is_empty() {
        return Err("expected redis+sentinel://host:port[,host:port…]/master-name[/db]".into());
    }
    let db = match parts.next() {
        None | Some("") => None,
        Some(d) => Some(
            d.parse()
                .map_err(|_| "the database must be a number".to_owned())?,
        ),
    };
    // `AUTH password` is refused by a server that requires no password, while
    // `AUTH default password` is accepted by it (Redis ≥ 6): so a sentinel gets the
    // user `default` when the URL names none, and works whether or not it requires the
    // primary's password.
    let sentinel_auth = if auth.starts_with(':') {
        format!("default{auth}")
    } else {
        auth.to_owned()
    };
    let sentinels: Vec<String> = hosts
        .split(',')
        .map(|h| format!("{node_scheme}://{sentinel_auth}{h}"))
        .collect();
    // The redis crate's own parser, for its percent-decoding of the user and password.
    let credentials = redis::IntoConnectionInfo::into_connection_info(format!(
        "redis://{auth}{}",
        hosts.split(',').next().unwrap_or("")
    ))
    .map_err(|_| "a sentinel's address or the credentials do not parse".to_owned())?;
    let credentials = credentials.redis_settings();
    Ok(RedisUrl::Sentinel {
        sentinels,
        master: master.to_owned(),
        db,
        username: credentials.username().map(str::to_owned),
        password: credentials.password().map(str::to_owned),
    })
}

/// `url` with the credentials given apart from it (a password from a file or the
/// environment, so it is not on the command line, and an ACL user) written into it,
/// percent-encoded, for every URL form. A URL that holds credentials already is refused.
pub fn with_credentials(
    url: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<String, String> {
    if username.is_none() && password.is_none() {
        return Ok(url.to_owned());
    }
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return Err(format!("--redis-url {:?} names no scheme", redact(url)));
    };
    let rest = &url[scheme_end..];
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(
            "--redis-url holds credentials already; give them either in it or apart, not both"
                .into(),
        );
    }
    let user = username.map_or_else(String::new, percent_encode);
    let auth = match password {
        Some(p) => format!("{user}:{}@", percent_encode(p)),
        None => format!("{user}@"),
    };
    Ok(format!("{}{auth}{rest}", &url[..scheme_end]))
}

/// Every byte but RFC 3986's unreserved ones as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `user:pass@` (with the `@`) and the rest.
fn split_auth(s: &str) -> (&str, &str) {
    match s.rfind('@') {
        Some(at) => (&s[..=at], &s[at + 1..]),
        None => ("", s),
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

pub struct Connections {
    pool: Pool,
    /// Calls sent to Redis (a pipeline counts once): the round trips.
    round_trips: prometheus::IntCounter,
    /// How long decision calls (pipelines, script runs) take, reply included.
    call_duration: prometheus::Histogram,
    /// Sentinel only: when the sentinels last named another primary.
    switched: Option<Arc<Mutex<Option<Instant>>>>,
}

/// A connection a batch worker keeps across batches. Taking a connection out of a deadpool
/// pool costs a `PING` round trip (its recycle check), so a worker takes one once and keeps
/// it until it fails or, behind Sentinel, until another primary is named.
pub struct Held {
    conn: Conn,
    taken_at: Instant,
}

enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool::managed::Pool<ClusterConnector>),
    Sentinel(deadpool::managed::Pool<SentinelConnector>),
}

/// A connection taken from whichever pool: one type, so every call is written once.
enum Conn {
    Single(deadpool_redis::Connection),
    Cluster(deadpool::managed::Object<ClusterConnector>),
    Sentinel(deadpool::managed::Object<SentinelConnector>),
}

impl Pool {
    async fn get(&self) -> Result<Conn, StoreError> {
        Ok(match self {
            Pool::Single(p) => Conn::Single(p.get().await.map_err(pool_error)?),
            Pool::Cluster(p) => Conn::Cluster(p.get().await.map_err(pool_error)?),
            Pool::Sentinel(p) => Conn::Sentinel(p.get().await.map_err(pool_error)?),
        })
    }

    fn max_size(&self) -> usize {
        match self {
            Pool::Single(p) => p.status().max_size,
            Pool::Cluster(p) => p.status().max_size,
            Pool::Sentinel(p) => p.status().max_size,
        }
    }
}

impl Conn {
    /// Closes the connection instead of returning it to its pool.
    fn discard(self) {
        match self {
            Conn::Single(c) => drop(deadpool_redis::Connection::take(c)),
            Conn::Cluster(c) => drop(deadpool::managed::Object::take(c)),
            Conn::Sentinel(c) => drop(deadpool::managed::Object::take(c)),
        }
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

/// Bounds on the pool's parts, so nothing waits without end: waiting for a free connection
/// counts against the call's own time limit.
fn pool_config(size: usize, timeout: Duration) -> PoolConfig {
    let mut config = PoolConfig::new(size.max(1));
    config.timeouts = Timeouts {
        wait: Some(timeout),
        create: Some(timeout.max(Duration::from_millis(500))),
        recycle: Some(timeout),
    };
    config
}

fn config_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Config(format!("Redis pool: {e}"))
}

/// A pool for one server, over TLS for `rediss://` (with `certs` when given: a CA instead of
/// the system's, a client certificate).
fn single_pool(
    url: &str,
    certs: Option<redis::TlsCertificates>,
    config: PoolConfig,
) -> Result<Pool, StoreError> {
    if url.starts_with("rediss://") && url.ends_with("#insecure") {
        tracing::warn!("--redis-url …#insecure: the Redis server's certificate is not checked");
    }
    let info = match certs {
        None => redis::IntoConnectionInfo::into_connection_info(url).map_err(config_error)?,
        Some(certs) => redis::Client::build_with_tls(url, certs)
            .map_err(config_error)?
            .get_connection_info()
            .clone(),
    };
    let manager = deadpool_redis::Manager::new(info).map_err(config_error)?;
    let pool = deadpool_redis::Pool::builder(manager)
        .config(config)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(config_error)?;
    Ok(Pool::Single(pool))
}

fn cluster_pool(
    urls: &[String],
    certs: Option<redis::TlsCertificates>,
    config: PoolConfig,
) -> Result<Pool, StoreError> {
    let connector = ClusterConnector::new(urls, certs).map_err(config_error)?;
    let pool = deadpool::managed::Pool::builder(connector)
        .config(config)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(config_error)?;
    Ok(Pool::Cluster(pool))
}

/// A pool for the primary the sentinels name, following them: connections opened before the
/// sentinels named another primary (noted in `switched`) are closed, idle ones at once.
fn sentinel_pool(
    url: &RedisUrl,
    certs: Option<redis::TlsCertificates>,
    config: PoolConfig,
    switched: &Arc<Mutex<Option<Instant>>>,
) -> Result<Pool, StoreError> {
    let RedisUrl::Sentinel {
        sentinels,
        master,
        db,
        username,
        password,
    } = url
    else {
        return Err(StoreError::Config("not a Sentinel URL".into()));
    };
    // What the primary is connected with: the sentinels' answer gives only its address.
    let target = SentinelTarget {
        sentinels,
        master,
        db: *db,
        username: username.as_deref(),
        password: password.as_deref(),
    };
    let connector = SentinelConnector::new(&target, certs.clone()).map_err(config_error)?;
    let stale = switched.clone();
    let pool = deadpool::managed::Pool::builder(connector)
        .config(config)
        .runtime(Runtime::Tokio1)
        .pre_recycle(deadpool::managed::Hook::sync_fn(
            move |_, metrics| match *stale.lock().unwrap_or_else(PoisonError::into_inner) {
                Some(at) if metrics.created < at => Err(deadpool::managed::HookError::message(
                    "opened to the previous primary",
                )),
                _ => Ok(()),
            },
        ))
        .build()
        .map_err(config_error)?;
    let weak = pool.weak();
    let clients = sentinel_clients(sentinels, certs)?;
    follow_sentinels(clients, master, switched.clone(), move |close_idle| {
        let Some(pool) = weak.upgrade() else {
            return false;
        };
        if close_idle {
            pool.retain(|_, _| false);
        }
        true
    });
    Ok(Pool::Sentinel(pool))
}

/// A client for each sentinel URL, over TLS with `certs` for `rediss://` ones.
fn sentinel_clients(
    urls: &[String],
    certs: Option<redis::TlsCertificates>,
) -> Result<Vec<redis::Client>, StoreError> {
    urls.iter()
        .map(|u| match &certs {
            Some(certs) if u.starts_with("rediss://") => {
                redis::Client::build_with_tls(u.as_str(), certs.clone())
            }
            _ => redis::Client::open(u.as_str()),
        })
        .collect::<Result<_, _>>()
        .map_err(config_error)
}

impl Connections {
    /// Connections for `url`, `size` at most; over TLS with the CA certificates and the client
    /// certificate of `tls` (for a TLS URL only). The files are read now, so a missing or
    /// unreadable one stops the start-up. Connections open lazily.
    pub fn new(
        url: &RedisUrl,
        tls: &TlsFiles,
        size: usize,
        timeout: Duration,
        round_trips: prometheus::IntCounter,
        call_duration: prometheus::Histogram,
    ) -> Result<Self, StoreError> {
        let config = pool_config(size, timeout);
        let certs = tls.load()?;
        if url.is_tls() {
            install_crypto_provider();
        } else if let Some(flag) = tls.first_flag() {
            return Err(StoreError::Config(format!(
                "{flag} needs a rediss:// URL (or rediss+cluster://, rediss+sentinel://)"
            )));
        }
        let mut switched = None;
        let pool = match url {
            RedisUrl::Single(u) => single_pool(u, certs, config)?,
            RedisUrl::Cluster(urls) => cluster_pool(urls, certs, config)?,
            RedisUrl::Sentinel { .. } => {
                let at: Arc<Mutex<Option<Instant>>> = Arc::default();
                let pool = sentinel_pool(url, certs, config, &at)?;
                switched = Some(at);
                pool
            }
        };
        Ok(Connections {
            pool,
            round_trips,
            call_duration,
            switched,
        })
    }

    /// Takes a connection out of the pool for a worker to keep (see [`Held`]). Not for a
    /// Cluster, whose decisions are not batched.
    pub async fn hold(&self) -> Result<Held, StoreError> {
        if self.is_cluster() {
            return Err(StoreError::Config(
                "a Cluster connection cannot be held by a batch worker".into(),
            ));
        }
        Ok(Held {
            conn: self.pool.get().await?,
            taken_at: Instant::now(),
        })
    }

    /// Whether a held connection must be given up: the sentinels have named another primary
    /// since it was taken.
    pub fn is_stale(&self, held: &Held) -> bool {
        self.switched.as_ref().is_some_and(|s| {
            s.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|at| at > held.taken_at)
        })
    }

    /// Sends a pipeline on a held connection and returns every reply (errors included, when
    /// the pipeline ignores errors): one round trip. The error is Redis's own, so that the
    /// caller can tell a lost connection ([`connection_lost`]) from the rest.
    pub async fn pipeline_on(
        &self,
        held: &mut Held,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<Value>, redis::RedisError> {
        self.round_trips.inc();
        let _timer = self.call_duration.start_timer();
        pipe.query_async(&mut held.conn).await
    }

    /// Loads a script into the script cache (`SCRIPT LOAD`) on a held connection.
    pub async fn load_on(
        &self,
        held: &mut Held,
        script: &redis::Script,
    ) -> Result<(), redis::RedisError> {
        self.round_trips.inc();
        script.load_async(&mut held.conn).await.map(drop)
    }

    /// Loads `script` into the script cache of every primary: the single server, the
    /// Sentinel's primary, or every Cluster master (the cluster client sends `SCRIPT LOAD`
    /// to every node).
    pub async fn load_everywhere(&self, script: &redis::Script) -> Result<(), StoreError> {
        self.round_trips.inc();
        let mut conn = self.pool.get().await?;
        script
            .load_async(&mut conn)
            .await
            .map(drop)
            .map_err(redis_error)
    }

    /// Opens pooled connections until `n` are idle in the pool (or the pool is full), so
    /// that the first decisions do not pay for connecting.
    pub async fn open_idle(&self, n: usize) -> Result<(), StoreError> {
        // Taken out all at once (opening those the pool lacks), then given back together.
        let mut taken = Vec::with_capacity(n);
        for _ in 0..n.min(self.pool.max_size()) {
            taken.push(self.pool.get().await?);
        }
        Ok(())
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.pool, Pool::Cluster(_))
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT) on a pooled connection.
    ///
    /// # Cancel safety
    /// Dropping the future drops the connection's claim; the script may or may not have run.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.round_trips.inc();
        let mut conn = self.pool.get().await?;
        let _timer = self.call_duration.start_timer();
        let reply = inv.invoke_async(&mut conn).await;
        if reply.as_ref().is_err_and(connection_lost) {
            conn.discard();
        }
        reply.map_err(redis_error)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.round_trips.inc();
        let mut conn = self.pool.get().await?;
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)
    }
}

/// rustls needs one crypto provider for the process: ring, the one this build carries. The
/// first one installed stays, so a second call changes nothing.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How often the sentinels are asked which primary they name.
pub const SENTINEL_POLL: Duration = Duration::from_millis(500);

/// Asks the sentinels every [`SENTINEL_POLL`] which primary they name (the first one that
/// answers is believed). When that changes, notes the instant in `switched`, which the pool's
/// `pre_recycle` hook compares with each connection's creation, and has `pool(true)` close the
/// idle connections at once. Runs until `pool(false)` says the pool is gone; does nothing
/// outside a Tokio runtime.
fn follow_sentinels(
    clients: Vec<redis::Client>,
    master: &str,
    switched: Arc<Mutex<Option<Instant>>>,
    pool: impl Fn(bool) -> bool + Send + 'static,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let master = master.to_owned();
    runtime.spawn(async move {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)));
        let mut connections: Vec<Option<redis::aio::MultiplexedConnection>> =
            vec![None; clients.len()];
        let mut named: Option<(String, u16)> = None;
        let mut tick = tokio::time::interval(SENTINEL_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = primary_named(&clients, &mut connections, &config, &master).await;
            let changed = match (&named, &now) {
                (Some(before), Some(now)) => before != now,
                _ => false,
            };
            if changed {
                *switched.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            }
            if !pool(changed) {
                return;
            }
            let Some(now) = now else {
                continue;
            };
            if changed {
                tracing::warn!(
                    master = %master,
                    primary = %format!("{}:{}", now.0, now.1),
                    "the sentinels name another Redis primary; reconnecting"
                );
            }
            named = Some(now);
        }
    });
}

/// `SENTINEL get-master-addr-by-name`, from the first sentinel that knows `master`; each
/// sentinel's connection is kept for the next time, and opened again after an error.
async fn primary_named(
    clients: &[redis::Client],
    connections: &mut [Option<redis::aio::MultiplexedConnection>],
    config: &redis::AsyncConnectionConfig,
    master: &str,
) -> Option<(String, u16)> {
    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg("get-master-addr-by-name").arg(master);
    for (client, slot) in clients.iter().zip(connections.iter_mut()) {
        if slot.is_none() {
            *slot = client
                .get_multiplexed_async_connection_with_config(config)
                .await
                .ok();
        }
        let Some(connection) = slot else {
            continue;
        };
        match cmd.query_async::<Option<(String, u16)>>(connection).await {
            Ok(Some(addr)) => return Some(addr),
            Ok(None) => {}
            Err(_) => *slot = None,
        }
    }
    None
}

/// Whether `e` says the connection itself is gone (closed by a restart, a failover, a
/// network cut): the connection must be replaced, and a command on it may or may not have
/// reached Redis. A reply from Redis, even an error, is never that.
pub fn connection_lost(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped()
}

fn pool_error(e: deadpool_redis::PoolError) -> StoreError {
    StoreError::Unavailable(format!("no Redis connection: {e}"))
}

/// Sorts Redis errors into transient (Redis down, loading, busy, failing over, a cluster
/// resharding: the failure policy decides) and the rest (a script error, a reply we do not
/// understand, a cross-slot call: a bug, reported as such and never papered over).
pub fn redis_error(e: redis::RedisError) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        ErrorKind::Parse
        | ErrorKind::UnexpectedReturnType
        | ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::CrossSlot) => {
            StoreError::Protocol(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            RedisUrl::parse("redis://127.0.0.1:6379/2").unwrap(),
            RedisUrl::Single("redis://127.0.0.1:6379/2".into())
        );
        assert_eq!(
            RedisUrl::parse("redis+cluster://u:p@a:1,b:2").unwrap(),
            RedisUrl::Cluster(vec!["redis://u:p@a:1".into(), "redis://u:p@b:2".into()])
        );
        assert_eq!(
            RedisUrl::parse("redis+sentinel://a:1,b:2/mymaster/3").unwrap(),
            RedisUrl::Sentinel {
                sentinels: vec!["redis://a:1".into(), "redis://b:2".into()],
                master: "mymaster".into(),
                db: Some(3),
                username: None,
                password: None,
            }
        );
        // The credentials are the primary's, percent-decoded; the sentinels get them as the
        // user `default` when the URL names no user.
        assert_eq!(
            RedisUrl::parse("redis+sentinel://:p%40ss@a:1,b:2/m").unwrap(),
            RedisUrl::Sentinel {
                sentinels: vec![
                    "redis://default:p%40ss@a:1".into(),
                    "redis://default:p%40ss@b:2".into()
                ],
                master: "m".into(),
                db: None,
                username: None,
                password: Some("p@ss".into()),
            }
        );
        assert_eq!(
            RedisUrl::parse("redis+sentinel://u:p@a:1/m").unwrap(),
            RedisUrl::Sentinel {
                sentinels: vec!["redis://u:p@a:1".into()],
                master: "m".into(),
                db: None,
                username: Some("u".into()),
                password: Some("p".into()),
            }
        );
        // Over TLS: every node, or the sentinels and (by `is_tls`) the primary.
        let tls_cluster = RedisUrl::parse("rediss+cluster://u:p@a:1,b:2").unwrap();
        assert_eq!(
            tls_cluster,
            RedisUrl::Cluster(vec!["rediss://u:p@a:1".into(), "rediss://u:p@b:2".into()])
        );
        let tls_sentinel = RedisUrl::parse("rediss+sentinel://a:1,b:2/m").unwrap();
        assert!(matches!(&tls_sentinel, RedisUrl::Sentinel { sentinels, .. }
            if sentinels == &["rediss://a:1", "rediss://b:2"]));
        assert!(tls_cluster.is_tls() && tls_sentinel.is_tls());
        assert!(RedisUrl::parse("rediss://a:1").unwrap().is_tls());
        for plain in [
            "redis://a:1",
            "redis+cluster://a:1",
            "redis+sentinel://a:1/m",
        ] {
            assert!(!RedisUrl::parse(plain).unwrap().is_tls(), "{plain}");
        }
        for bad in [
            "http://x",
            "redis+cluster://",
            "rediss+cluster://",
            "rediss+sentinel://a:1",
            "rediss+memcached://a:1",
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/m/x",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
        let e = RedisUrl::parse("memcached://u:secret@h:1").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert_eq!(redact("redis://u:secret@h:1"), "redis://u:***@h:1");
    }
}

#[cfg(test)]
mod credential_tests {
    use super::{RedisUrl, with_credentials};

    #[test]
    fn credentials_given_apart_reach_every_url_form() {
        assert_eq!(
            with_credentials("redis://h:6379/2", None, Some("p@ss w")).as_deref(),
            Ok("redis://:p%40ss%20w@h:6379/2")
        );
        assert_eq!(
            with_credentials("redis+cluster://a:1,b:2", Some("app"), Some("pw")).as_deref(),
            Ok("redis+cluster://app:pw@a:1,b:2")
        );
        let sentinel = with_credentials(
            "redis+sentinel://s1:26379,s2:26379/main",
            None,
            Some("p@ss"),
        );
        match RedisUrl::parse(&sentinel.unwrap_or_default()) {
            Ok(RedisUrl::Sentinel {
                password, username, ..
            }) => {
                assert_eq!(password.as_deref(), Some("p@ss"));
                assert_eq!(username, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(with_credentials("redis://u:p@h", None, Some("x")).is_err());
        assert_eq!(
            with_credentials("redis://h", None, None).as_deref(),
            Ok("redis://h")
        );
    }
}
