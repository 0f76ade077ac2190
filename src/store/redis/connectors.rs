//! What the Cluster and Sentinel pools open their connections with: deadpool connectors
//! (its `Manager` trait) around redis-rs's own clients, built here so that the TLS
//! certificates (a CA, a client certificate) reach every node: the Cluster's nodes found
//! through `CLUSTER SLOTS`, the sentinels, and the primary they name. deadpool-redis's own
//! connectors take URLs only, over which TLS trusts just the system's CAs.
//!
//! A pooled connection is checked before reuse as deadpool-redis checks its own: a `PING`
//! with a fresh number, which must come back. A Cluster connection taken again within
//! [`CLUSTER_RECHECK_AFTER`] of its last use is not: its `PING` goes to every master (one
//! per node per decision, since Cluster decisions are not batched), and redis-rs's Cluster
//! connection replaces a failed node connection and follows slot moves on its own. A call
//! that finds the connection lost discards it (`Connections::invoke`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::managed::{Manager, Metrics, RecycleError, RecycleResult};
use deadpool_redis::redis::{
    self, IntoConnectionInfo, RedisError, RedisResult, TlsCertificates, TlsMode,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};

/// `PING n` on `conn`, which must answer `n`.
async fn ping_back(
    conn: &mut impl ConnectionLike,
    pings: &AtomicUsize,
) -> RecycleResult<RedisError> {
    let n = pings.fetch_add(1, Ordering::Relaxed).to_string();
    let answer: String = redis::cmd("PING").arg(&n).query_async(conn).await?;
    if answer == n {
        Ok(())
    } else {
        Err(RecycleError::message("a wrong PING answer"))
    }
}

/// How long after its last use a pooled Cluster connection is `PING`ed again before reuse.
pub const CLUSTER_RECHECK_AFTER: Duration = Duration::from_secs(1);

/// Connections to a Redis Cluster, seeded from `redis://` or `rediss://` node URLs.
pub struct ClusterConnector {
    client: ClusterClient,
    pings: AtomicUsize,
}

impl ClusterConnector {
    /// `certs`, when given, are used for every node (the URLs must then be `rediss://`).
    pub fn new(urls: &[String], certs: Option<TlsCertificates>) -> RedisResult<Self> {
        let mut builder = ClusterClientBuilder::new(urls.iter().map(String::as_str));
        if let Some(certs) = certs {
            builder = builder.certs(certs);
        }
        Ok(ClusterConnector {
            client: builder.build()?,
            pings: AtomicUsize::new(0),
        })
    }
}

impl Manager for ClusterConnector {
    type Type = ClusterConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ClusterConnection, RedisError> {
        self.client.get_async_connection().await
    }

    async fn recycle(
        &self,
        conn: &mut ClusterConnection,
        metrics: &Metrics,
    ) -> RecycleResult<RedisError> {
        if metrics.last_used() < CLUSTER_RECHECK_AFTER {
            return Ok(());
        }
        ping_back(conn, &self.pings).await
    }
}

/// What a [`SentinelConnector`] is built from: the sentinels, the master name and the
/// primary's database and credentials (the sentinels' come with their URLs).
pub struct SentinelTarget<'a> {
    /// `redis://` or `rediss://` URLs of the sentinels; `rediss://` = the sentinels and the
    /// primary both over TLS.
    pub sentinels: &'a [String],
    pub master: &'a str,
    pub db: Option<i64>,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
}

/// Connections to the primary the sentinels name (asked again for each new connection).
pub struct SentinelConnector {
    client: tokio::sync::Mutex<SentinelClient>,
    pings: AtomicUsize,
}

impl SentinelConnector {
    pub fn new(target: &SentinelTarget<'_>, certs: Option<TlsCertificates>) -> RedisResult<Self> {
        let sentinels = target
            .sentinels
            .iter()
            .map(|u| u.as_str().into_connection_info())
            .collect::<RedisResult<Vec<_>>>()?;
        let tls = sentinels
            .first()
            .is_some_and(|s| matches!(s.addr(), redis::ConnectionAddr::TcpTls { .. }));
        let auth = sentinels.first().map(|s| s.redis_settings().clone());
        let mut builder = SentinelClientBuilder::new(
            sentinels.iter().map(|s| s.addr().clone()),
            target.master,
            SentinelServerType::Master,
        )?;
        if let Some(auth) = auth {
            if let Some(user) = auth.username() {
                builder = builder.set_client_to_sentinel_username(user);
            }
            if let Some(password) = auth.password() {
                builder = builder.set_client_to_sentinel_password(password);
            }
        }
        builder = builder.set_client_to_redis_db(target.db.unwrap_or(0));
        if let Some(user) = target.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = target.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if tls {
            builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
            if let Some(certs) = certs {
                builder = builder
                    .set_client_to_sentinel_certificates(certs.clone())
                    .set_client_to_redis_certificates(certs);
            }
        }
        Ok(SentinelConnector {
            client: tokio::sync::Mutex::new(builder.build()?),
            pings: AtomicUsize::new(0),
        })
    }
}

impl Manager for SentinelConnector {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        self.client.lock().await.get_async_connection().await
    }

    async fn recycle(
        &self,
        conn: &mut MultiplexedConnection,
        _: &Metrics,
    ) -> RecycleResult<RedisError> {
        ping_back(conn, &self.pings).await
    }
}
