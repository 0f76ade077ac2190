//! Connections to Redis: one pool for a single server, a Cluster, or a Sentinel-managed
//! primary, behind one `invoke`.
//!
//! URLs:
//! - `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS): one server;
//! - `redis+cluster://[user:pass@]h1:p1,h2:p2,…`: Redis Cluster, seeded from those nodes;
//! - `redis+sentinel://[user:pass@]h1:p1,h2:p2,…/master-name[/db]`: the primary that the
//!   sentinels name.

use std::time::Duration;

use deadpool_redis::redis::{self, FromRedisValue, ScriptInvocation};
use deadpool_redis::{PoolConfig, Runtime, Timeouts};

use crate::store::StoreError;

/// A parsed `--redis-url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisUrl {
    Single(String),
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        db: Option<i64>,
    },
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let bad = |why: &str| format!("--redis-url {:?}: {why}", redact(url));
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return Ok(RedisUrl::Single(url.to_owned()));
        }
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let (auth, hosts) = split_auth(rest);
            let hosts = hosts.trim_end_matches('/');
            if hosts.is_empty() {
                return Err(bad("names no cluster node"));
            }
            return Ok(RedisUrl::Cluster(
                hosts
                    .split(',')
                    .map(|h| format!("redis://{auth}{h}"))
                    .collect(),
            ));
        }
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (auth, rest) = split_auth(rest);
            let mut parts = rest.splitn(3, '/');
            let hosts = parts.next().unwrap_or("");
            let master = parts.next().unwrap_or("");
            if hosts.is_empty() || master.is_empty() {
                return Err(bad(
                    "expected redis+sentinel://host:port[,host:port…]/master-name[/db]",
                ));
            }
            let db = match parts.next() {
                None | Some("") => None,
                Some(d) => Some(
                    d.parse()
                        .map_err(|_| bad("the database must be a number"))?,
                ),
            };
            return Ok(RedisUrl::Sentinel {
                sentinels: hosts
                    .split(',')
                    .map(|h| format!("redis://{auth}{h}"))
                    .collect(),
                master: master.to_owned(),
                db,
            });
        }
        Err(bad(
            "expected redis://, rediss://, redis+cluster:// or redis+sentinel://",
        ))
    }
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
}

enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
}

impl Connections {
    pub fn new(
        url: &RedisUrl,
        size: usize,
        timeout: Duration,
        round_trips: prometheus::IntCounter,
    ) -> Result<Self, StoreError> {
        let mut pool_config = PoolConfig::new(size.max(1));
        // Waiting for a free connection counts against the call's own time limit; these
        // bound the pool's parts so nothing waits without end.
        pool_config.timeouts = Timeouts {
            wait: Some(timeout),
            create: Some(timeout.max(Duration::from_millis(500))),
            recycle: Some(timeout),
        };
        let config_err = |e: &dyn std::fmt::Display| StoreError::Config(format!("Redis pool: {e}"));
        let pool = match url {
            RedisUrl::Single(u) => {
                let mut cfg = deadpool_redis::Config::from_url(u.clone());
                cfg.pool = Some(pool_config);
                Pool::Single(
                    cfg.create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| config_err(&e))?,
                )
            }
            RedisUrl::Cluster(urls) => {
                let mut cfg = deadpool_redis::cluster::Config::from_urls(urls.clone());
                cfg.pool = Some(pool_config);
                Pool::Cluster(
                    cfg.create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| config_err(&e))?,
                )
            }
            RedisUrl::Sentinel {
                sentinels,
                master,
                db,
            } => {
                let mut cfg = deadpool_redis::sentinel::Config::from_urls(
                    sentinels.clone(),
                    master.clone(),
                    deadpool_redis::sentinel::SentinelServerType::Master,
                );
                if let Some(db) = db {
                    cfg = cfg.with_node_connection_info(Some(
                        deadpool_redis::sentinel::SentinelNodeConnectionInfo {
                            tls_mode: None,
                            redis_connection_info: Some(deadpool_redis::RedisConnectionInfo {
                                db: *db,
                                ..Default::default()
                            }),
                        },
                    ));
                }
                cfg.pool = Some(pool_config);
                Pool::Sentinel(
                    cfg.create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| config_err(&e))?,
                )
            }
        };
        Ok(Connections { pool, round_trips })
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
        match &self.pool {
            Pool::Single(p) => {
                let mut c = p.get().await.map_err(pool_error)?;
                inv.invoke_async(&mut c).await.map_err(redis_error)
            }
            Pool::Cluster(p) => {
                let mut c = p.get().await.map_err(pool_error)?;
                inv.invoke_async(&mut c).await.map_err(redis_error)
            }
            Pool::Sentinel(p) => {
                let mut c = p.get().await.map_err(pool_error)?;
                inv.invoke_async(&mut c).await.map_err(redis_error)
            }
        }
    }

    /// Sends a pipeline on one pooled connection and returns every reply (errors included,
    /// when the pipeline ignores errors).
    pub async fn pipeline(&self, pipe: &redis::Pipeline) -> Result<Vec<redis::Value>, StoreError> {
        self.round_trips.inc();
        match &self.pool {
            Pool::Single(p) => {
                let mut c = p.get().await.map_err(pool_error)?;
                pipe.query_async(&mut c).await.map_err(redis_error)
            }
            Pool::Cluster(p) => {
                let mut c = p.get().await.map_err(pool_error)?;
                pipe.query_async(&mut c).await.map_err(redis_error)
            }
            Pool::Sentinel(p) => {
                let mut c = p.get().await.map_err(pool_error)?;
                pipe.query_async(&mut c).await.map_err(redis_error)
            }
        }
    }

    /// Loads a script into the script cache (`SCRIPT LOAD`).
    pub async fn load(&self, script: &redis::Script) -> Result<(), StoreError> {
        self.round_trips.inc();
        let loaded = match &self.pool {
            Pool::Single(p) => {
                script
                    .load_async(&mut p.get().await.map_err(pool_error)?)
                    .await
            }
            Pool::Cluster(p) => {
                script
                    .load_async(&mut p.get().await.map_err(pool_error)?)
                    .await
            }
            Pool::Sentinel(p) => {
                script
                    .load_async(&mut p.get().await.map_err(pool_error)?)
                    .await
            }
        };
        loaded.map(drop).map_err(redis_error)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("PING");
        let cmd = &mut cmd;
        self.round_trips.inc();
        match &self.pool {
            Pool::Single(p) => {
                let mut c = p.get().await.map_err(pool_error)?;
                cmd.query_async::<()>(&mut c).await.map_err(redis_error)
            }
            Pool::Cluster(p) => {
                let mut c = p.get().await.map_err(pool_error)?;
                cmd.query_async::<()>(&mut c).await.map_err(redis_error)
            }
            Pool::Sentinel(p) => {
                let mut c = p.get().await.map_err(pool_error)?;
                cmd.query_async::<()>(&mut c).await.map_err(redis_error)
            }
        }
    }
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
                db: Some(3)
            }
        );
        for bad in [
            "http://x",
            "redis+cluster://",
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
