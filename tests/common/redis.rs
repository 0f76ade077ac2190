//! The client side the Redis tests share: one `POST /check` with its answer classified (a
//! normal decision, or one of the failure policies' documented answers), replicas and storms;
//! and, re-exported, the servers of [`super::redis_server`].

pub use super::redis_server::*;

use std::path::Path;
use std::time::{Duration, Instant};

use super::Service;

/// One `POST /check` answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    /// The `x-ratelimit-degraded` header.
    pub degraded: Option<String>,
    pub body: serde_json::Value,
    /// Wall clock (µs since the epoch) just before sending and just after the answer.
    pub sent_us: u64,
    pub received_us: u64,
    pub elapsed: Duration,
}

/// What kind of answer a reply is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A decision by the store: 200 or 429, not marked degraded.
    Normal { allowed: bool },
    /// `fail_open`: 200, header and body say `fail_open`.
    FailOpen,
    /// `fail_closed`: 503 with a JSON error.
    FailClosed,
    /// `local`: 200 or 429 decided in-process, header and body say `local`.
    Local { allowed: bool },
    /// Anything else, described.
    Other(String),
}

impl Reply {
    pub fn kind(&self) -> Kind {
        let body_degraded = self.body.get("degraded").and_then(|d| d.as_str());
        let allowed = self
            .body
            .get("allowed")
            .and_then(serde_json::Value::as_bool);
        match (
            self.status,
            self.degraded.as_deref(),
            body_degraded,
            allowed,
        ) {
            (200, None, None, Some(true)) => Kind::Normal { allowed: true },
            (429, None, None, Some(false)) => Kind::Normal { allowed: false },
            (200, Some("fail_open"), Some("fail_open"), Some(true)) => Kind::FailOpen,
            (503, None, None, None) if self.body.get("error").is_some_and(|e| e.is_string()) => {
                Kind::FailClosed
            }
            (200, Some("local"), Some("local"), Some(true)) => Kind::Local { allowed: true },
            (429, Some("local"), Some("local"), Some(false)) => Kind::Local { allowed: false },
            _ => Kind::Other(format!("{self:?}")),
        }
    }

    pub fn is_normal(&self) -> bool {
        matches!(self.kind(), Kind::Normal { .. })
    }

    pub fn allowed(&self) -> bool {
        self.body
            .get("allowed")
            .and_then(serde_json::Value::as_bool)
            == Some(true)
    }

    pub fn remaining(&self) -> Option<u64> {
        self.body
            .get("remaining")
            .and_then(serde_json::Value::as_u64)
    }

    /// `retry_after` of the body, in seconds.
    pub fn retry_after(&self) -> Option<f64> {
        self.body
            .get("retry_after")
            .and_then(serde_json::Value::as_f64)
    }
}

/// An HTTP client for these tests: every request gives up after `timeout` (a hang is then an
/// error, not a stuck test).
pub fn http_client(timeout: Duration, pool: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(pool)
        .build()
        .unwrap()
}

/// `POST {base}/check?cost=N` with `X-API-Key: key`; an error when no answer came (a refused
/// connection or the client's timeout).
pub async fn check(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    cost: u64,
) -> Result<Reply, String> {
    let sent_us = wall_us();
    let started = Instant::now();
    let resp = client
        .post(format!("{base}/check?cost={cost}"))
        .header("x-api-key", key)
        .send()
        .await
        .map_err(|e| format!("no answer after {:?}: {e}", started.elapsed()))?;
    let status = resp.status().as_u16();
    let degraded = resp
        .headers()
        .get("x-ratelimit-degraded")
        .map(|v| v.to_str().unwrap_or("<not ascii>").to_owned());
    let text = resp
        .text()
        .await
        .map_err(|e| format!("body cut after {:?}: {e}", started.elapsed()))?;
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Ok(Reply {
        status,
        degraded,
        body,
        sent_us,
        received_us: wall_us(),
        elapsed: started.elapsed(),
    })
}

/// `GET {base}/readyz`: the status, or an error when no answer came.
pub async fn readyz(client: &reqwest::Client, base: &str) -> Result<u16, String> {
    client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// `n` replicas of the service on the config in `dir`, all on the Redis at `url` with
/// `--redis-timeout-ms timeout_ms`.
pub fn start_replicas(dir: &Path, url: &str, timeout_ms: &str, n: usize) -> Vec<Service> {
    (0..n)
        .map(|_| Service::start(dir, &["--redis-url", url, "--redis-timeout-ms", timeout_ms]))
        .collect()
}

/// `n` concurrent `POST /check` for `key` on `svc` (at most `in_flight` at once); how many were
/// admitted. Panics, with the service's log, if any answer is not a normal decision.
pub async fn storm(svc: &Service, key: &'static str, n: usize, in_flight: usize) -> usize {
    let client = http_client(Duration::from_secs(30), in_flight);
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, base, gate) = (client.clone(), svc.url(""), gate.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.unwrap();
                check(&client, &base, key, 1).await
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        let reply = t.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        match reply.kind() {
            Kind::Normal { allowed } => admitted += usize::from(allowed),
            other => panic!("not a normal decision: {other:?}\n{}", svc.logs()),
        }
    }
    admitted
}

/// `GET /readyz` keeps answering 503 for `within` (the warm-up gives up after 5 s and the
/// readiness ping then fails); panics on any other answer.
pub async fn never_ready(svc: &Service, within: Duration) {
    let client = http_client(Duration::from_secs(10), 1);
    let started = Instant::now();
    while started.elapsed() < within {
        let status = readyz(&client, &svc.url("")).await;
        assert_eq!(status, Ok(503), "/readyz\n{}", svc.logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The log says why the service is not ready: the readiness ping's warning carries the
/// server's TLS alert; and nothing panicked.
pub fn says_a_certificate_is_required(svc: &Service) {
    let logs = svc.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("readyz: the store did not answer its ping")
                && l.contains("CertificateRequired")),
        "the log does not say why it is not ready:\n{logs}"
    );
    assert!(!logs.contains("panicked"), "{logs}");
}

/// Waits until `GET /readyz` answers 200 (the store warmed up: every batch worker holds a
/// connection), for at most `within`; panics with the log otherwise.
pub async fn wait_ready(svc: &Service, within: Duration) {
    let client = http_client(Duration::from_secs(10), 1);
    let started = Instant::now();
    while readyz(&client, &svc.url("")).await != Ok(200) {
        assert!(
            started.elapsed() < within,
            "not ready after {within:?}\n{}",
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `key` with `POST /check` until Redis decides it (a normal answer): how long that
/// took, or None after `within`.
pub async fn until_normal(svc: &Service, key: &str, within: Duration) -> Option<Duration> {
    let client = http_client(Duration::from_secs(5), 1);
    let started = Instant::now();
    while started.elapsed() < within {
        if let Ok(r) = check(&client, &svc.url(""), key, 1).await
            && r.is_normal()
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// The same, panicking with the log when Redis has decided nothing within `within`.
pub async fn wait_normal(svc: &Service, key: &str, within: Duration) {
    if until_normal(svc, key, within).await.is_none() {
        panic!("no decision by Redis within {within:?}\n{}", svc.logs());
    }
}

/// A failure policy (`on_store_failure`), for tests that run once per policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    FailOpen,
    FailClosed,
    Local,
}

impl Policy {
    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Policy::FailOpen => "fail_open",
            Policy::FailClosed => "fail_closed",
            Policy::Local => "local",
        }
    }

    /// Whether `kind` is this policy's documented answer (for a key well within its limit).
    pub fn answered(self, kind: &Kind) -> bool {
        match self {
            Policy::FailOpen => *kind == Kind::FailOpen,
            Policy::FailClosed => *kind == Kind::FailClosed,
            Policy::Local => *kind == Kind::Local { allowed: true },
        }
    }

    /// Reply `i` of a load under this policy: answered within `within`, and either admitted
    /// by Redis (true) or this policy's answer (false); panics, with the log, otherwise.
    pub fn judge<'a>(
        self,
        i: usize,
        reply: &'a Result<Reply, String>,
        within: Duration,
        svc: &Service,
    ) -> (&'a Reply, bool) {
        let r = reply
            .as_ref()
            .unwrap_or_else(|e| panic!("request {i} got no answer: {e}\n{}", svc.logs()));
        assert!(
            r.elapsed < within,
            "request {i} took {:?}: {r:?}",
            r.elapsed
        );
        match r.kind() {
            Kind::Normal { allowed: true } => (r, true),
            k if self.answered(&k) => (r, false),
            other => panic!("request {i} under {self:?}: {other:?}\n{}", svc.logs()),
        }
    }
}

/// Workers sending `POST /check` for one key, 5 ms apart, until stopped; every answer kept
/// (an unanswered request is an `Err`). Enough to be "under load", not so much that a 2-core
/// machine starves the service of CPU.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Result<Reply, String>>>>,
}

impl Load {
    pub fn start(svc: &Service, key: &'static str, workers: usize) -> Load {
        Self::start_at(svc.url(""), key, workers)
    }

    /// The same against any base URL (a service, or a proxy in front of services).
    pub fn start_at(base: String, key: &'static str, workers: usize) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = http_client(Duration::from_secs(5), workers);
        let tasks = (0..workers)
            .map(|_| {
                let (stop, client, base) = (stop.clone(), client.clone(), base.clone());
                tokio::spawn(async move {
                    let mut replies = Vec::new();
                    while !stop.load(Ordering::Relaxed) && replies.len() < 20_000 {
                        replies.push(check(&client, &base, key, 1).await);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    replies
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the workers; every answer, in no particular order.
    pub async fn finish(self) -> Vec<Result<Reply, String>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}
