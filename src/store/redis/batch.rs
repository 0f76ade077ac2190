//! Batching: decisions waiting for Redis at the same moment share one round trip.
//!
//! Callers put their plan's checks on a bounded queue and wait for the verdicts. A fixed set
//! of workers, one per pooled connection, each takes whatever is queued (up to
//! [`MAX_BATCH`] plans) and sends it as one pipeline of `EVALSHA`s. Each plan is still its
//! own script run, atomic on its own; the pipeline only saves round trips and system calls.
//! Under light load a batch is one plan and nothing waits for company: a worker never
//! delays a plan to fill a batch.
//!
//! A full queue refuses at once ([`StoreError::Unavailable`], handled by the failure
//! policy): explicit backpressure, never an unbounded queue. `NOSCRIPT` replies (a restart, a
//! failover, `SCRIPT FLUSH`) are answered by loading the script and resending only those
//! plans: the others ran already and must not run twice.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::breaker::Breaker;
use super::connection::{Connections, Held, redis_error};
use super::script::{self, Decoded};
use crate::store::{Check, StoreError};

/// The most plans one pipeline carries.
pub const MAX_BATCH: usize = 64;

type Reply = Result<(Vec<Check>, Decoded), StoreError>;

struct Job {
    checks: Vec<Check>,
    reply: oneshot::Sender<Reply>,
}

pub struct Batcher {
    queue: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts `workers` workers over `connections`, with room for `queue` waiting plans.
    pub fn start(
        connections: Arc<Connections>,
        breaker: Arc<Breaker>,
        prefix: String,
        timeout: Duration,
        workers: usize,
        queue: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let prefix: Arc<str> = prefix.into();
        for _ in 0..workers.max(1) {
            tokio::spawn(work(
                rx.clone(),
                connections.clone(),
                breaker.clone(),
                prefix.clone(),
                timeout,
            ));
        }
        Batcher { queue: tx }
    }

    /// Decides one plan's checks in the next batch.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the answer; the plan may still be decided (and, if
    /// admitted, committed) by a worker.
    pub async fn decide(&self, checks: Vec<Check>) -> Reply {
        let (tx, rx) = oneshot::channel();
        self.queue
            .try_send(Job { checks, reply: tx })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    StoreError::Unavailable("too many decisions waiting for Redis".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    StoreError::Unavailable("the Redis workers stopped".into())
                }
            })?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the Redis worker dropped the decision".into()))?
    }
}

async fn work(
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    connections: Arc<Connections>,
    breaker: Arc<Breaker>,
    prefix: Arc<str>,
    timeout: Duration,
) {
    let mut jobs: Vec<Option<Job>> = Vec::with_capacity(MAX_BATCH);
    // Open this worker's connection now, while the service starts, rather than on the first
    // decision. A Redis that is down is not an error here: the first batch will say so.
    let mut held: Option<Held> = tokio::time::timeout(timeout * 10, connections.hold())
        .await
        .ok()
        .and_then(Result::ok);
    loop {
        {
            // Only the worker holding the lock collects; the others are busy with Redis or
            // wait their turn. The lock is never held across a Redis call.
            let mut rx = queue.lock().await;
            match rx.recv().await {
                Some(job) => jobs.push(Some(job)),
                None => return,
            }
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(Some(job)),
                    Err(_) => break,
                }
            }
        }
        // A caller that gave up (its own time limit passed while queued) gets no decision:
        // deciding it anyway could consume quota for a request that was answered otherwise.
        for slot in jobs.iter_mut() {
            if slot.as_ref().is_some_and(|j| j.reply.is_closed()) {
                *slot = None;
            }
        }
        let failure = if jobs.iter().all(Option::is_none) {
            None
        } else if let Err(e) = breaker.admit() {
            Some(e)
        } else {
            let result = tokio::time::timeout(timeout, async {
                if held.as_ref().is_none_or(|h| connections.is_stale(h)) {
                    held = None;
                    held = Some(connections.hold().await?);
                }
                match held.as_mut() {
                    Some(h) => run(&connections, h, &prefix, &mut jobs).await,
                    None => Err(StoreError::Unavailable("no Redis connection".into())),
                }
            })
            .await;
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(StoreError::Timeout(timeout)),
            };
            // The breaker counts what Redis did with a batch, not how long callers queued.
            match &failure {
                None => breaker.success(),
                Some(e) if e.is_transient() => breaker.failure(),
                Some(_) => {}
            }
            if failure.is_some() {
                // Whatever went wrong, the next batch starts on a connection the pool has
                // checked (a reply may still be in flight on this one).
                held = None;
            }
            failure
        };
        // Every job `run` did not answer gets the batch's error.
        for job in jobs.drain(..).flatten() {
            let e = failure.as_ref().map_or_else(
                || StoreError::Protocol("no reply for a plan".into()),
                clone_error,
            );
            let _ = job.reply.send(Err(e));
        }
    }
}

/// Sends the batch as one pipeline and answers (takes) every job it could decide.
async fn run(
    connections: &Connections,
    held: &mut Held,
    prefix: &str,
    jobs: &mut [Option<Job>],
) -> Result<(), StoreError> {
    let mut pending: Vec<usize> = (0..jobs.len()).collect();
    // At most one reload per batch: NOSCRIPT right after loading the script is an error.
    for attempt in 0..2 {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let invocations: Vec<_> = pending
            .iter()
            .filter_map(|&i| jobs[i].as_ref())
            .map(|j| script::decide_invocation(script::decide_script(), prefix, &j.checks, None))
            .collect();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let replies: Vec<Value> = connections.pipeline_on(held, &pipe).await?;
        if replies.len() != pending.len() {
            return Err(StoreError::Protocol(format!(
                "a pipeline of {} plans got {} replies",
                pending.len(),
                replies.len()
            )));
        }
        let mut again = Vec::new();
        for (&i, reply) in pending.iter().zip(replies) {
            if is_noscript(&reply) && attempt == 0 {
                again.push(i);
            } else if let Some(job) = jobs[i].take() {
                answer(job, &reply);
            }
        }
        if again.is_empty() {
            return Ok(());
        }
        connections.load_on(held, script::decide_script()).await?;
        pending = again;
    }
    Err(StoreError::Protocol(
        "the decide script was refused twice (NOSCRIPT)".into(),
    ))
}

fn answer(mut job: Job, reply: &Value) {
    let result = match reply {
        Value::ServerError(e) => Err(redis_error(redis::RedisError::from(e.clone()))),
        _ => script::decode(reply, &mut job.checks).map(|d| (job.checks, d)),
    };
    let _ = job.reply.send(result);
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}

fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Full { max } => StoreError::Full { max: *max },
        StoreError::Timeout(d) => StoreError::Timeout(*d),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Protocol(m) => StoreError::Protocol(m.clone()),
        StoreError::Config(m) => StoreError::Config(m.clone()),
    }
}
