//! Batching: decisions waiting for Redis at the same moment share one round trip.
//!
//! Callers put their plan's `EVALSHA` (built once, by [`script::decide_cmd`]) on a bounded
//! queue and wait for Redis's reply, which they decode themselves. A fixed set of workers, one
//! per pooled connection, each takes whatever is queued (up to [`MAX_BATCH`] plans) and sends
//! it as one pipeline. Each plan is still its own script run, atomic on its own; the pipeline
//! only saves round trips and system calls. Under light load a batch is one plan and nothing
//! waits for company: a worker never delays a plan to fill a batch.
//!
//! A full queue refuses at once ([`StoreError::Unavailable`], handled by the failure
//! policy): explicit backpressure, never an unbounded queue. `NOSCRIPT` replies (a restart, a
//! failover, `SCRIPT FLUSH`) are answered by loading the script and resending only those
//! plans: the others ran already and must not run twice.

use std::collections::VecDeque;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::{Instant, Sleep};

use super::breaker::Breaker;
use super::connection::{Connections, Held, connection_lost, redis_error};
use super::script;
use crate::store::StoreError;

/// The most plans one pipeline carries.
pub const MAX_BATCH: usize = 64;

/// How soon an idle worker without a connection tries again to open one, at first; each
/// failure doubles it, up to [`RECONNECT_AT_MOST`].
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_AT_MOST: Duration = Duration::from_secs(2);

/// Redis's reply to one plan's script run (an error reply already turned into the error).
type Reply = Result<Value, StoreError>;

struct Job {
    /// The plan's `EVALSHA`; moved into the pipeline while it is in flight, and put back
    /// when it must be sent again.
    call: redis::Cmd,
    reply: oneshot::Sender<Reply>,
}

/// The plans waiting for a worker: a bounded FIFO with one semaphore permit per plan, so a
/// new plan wakes exactly one idle worker, and a worker that takes plans wakes nobody (a
/// `Mutex` around a channel's receiver would hand the lock on, waking the next worker for
/// nothing, once per batch).
struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    capacity: usize,
    /// As many permits as `jobs` holds plans (a plan is queued before its permit is added);
    /// closed when the [`Batcher`] goes, which stops the workers.
    ready: Semaphore,
}

impl Queue {
    fn new(capacity: usize) -> Self {
        Queue {
            jobs: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
            ready: Semaphore::new(0),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a plan, or gives it back when `capacity` plans wait already.
    fn push(&self, job: Job) -> Result<(), Job> {
        {
            let mut jobs = self.jobs();
            if jobs.len() >= self.capacity {
                return Err(job);
            }
            jobs.push_back(job);
        }
        self.ready.add_permits(1);
        Ok(())
    }

    /// Waits for a plan and takes whatever else is queued, up to [`MAX_BATCH`] in `batch`;
    /// false once the queue is closed. Cancel-safe: nothing is taken until a permit is.
    async fn take(&self, batch: &mut Vec<Option<Job>>) -> bool {
        let Ok(first) = self.ready.acquire().await else {
            return false;
        };
        first.forget();
        let mut jobs = self.jobs();
        batch.extend(jobs.pop_front().map(Some));
        while batch.len() < MAX_BATCH {
            let Ok(more) = self.ready.try_acquire() else {
                break;
            };
            more.forget();
            batch.extend(jobs.pop_front().map(Some));
        }
        true
    }

    /// Puts plans taken by a worker that cannot send them back in front, in their order, for
    /// another worker (the queue may briefly hold more than `capacity`).
    fn give_back(&self, batch: &mut Vec<Option<Job>>) {
        let mut given = 0;
        {
            let mut jobs = self.jobs();
            for job in batch.drain(..).rev().flatten() {
                jobs.push_front(job);
                given += 1;
            }
        }
        self.ready.add_permits(given);
    }
}

pub struct Batcher {
    queue: Arc<Queue>,
    workers: usize,
    /// How many workers hold a connection on which the decide script was loaded.
    connected: Arc<AtomicUsize>,
}

impl Batcher {
    /// Starts `workers` workers over `connections`, with room for `queue` waiting plans.
    pub fn start(
        connections: Arc<Connections>,
        breaker: Arc<Breaker>,
        timeout: Duration,
        workers: usize,
        queue: usize,
        batch_size: prometheus::Histogram,
    ) -> Self {
        let queue = Arc::new(Queue::new(queue.max(1)));
        let worker = Worker {
            queue: queue.clone(),
            connections,
            breaker,
            timeout,
            connected: Arc::new(AtomicUsize::new(0)),
            batch_size,
        };
        let workers = workers.max(1);
        for _ in 0..workers {
            tokio::spawn(worker.clone().work());
        }
        Batcher {
            queue,
            workers,
            connected: worker.connected,
        }
    }

    /// Whether every worker holds an open connection with the decide script loaded on it.
    pub fn all_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) >= self.workers
    }

    /// Plans waiting for a worker, and the most that may wait.
    pub fn queue(&self) -> (usize, usize) {
        (self.queue.jobs().len(), self.queue.capacity)
    }

    /// Runs one plan's decide call ([`script::decide_cmd`]) in the next batch and returns
    /// Redis's reply to it.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the answer; the plan may still be decided (and, if
    /// admitted, committed) by a worker.
    pub async fn decide(&self, call: redis::Cmd) -> Reply {
        let (tx, rx) = oneshot::channel();
        self.queue
            .push(Job { call, reply: tx })
            .map_err(|_| StoreError::Unavailable("too many decisions waiting for Redis".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the Redis worker dropped the decision".into()))?
    }
}

impl Drop for Batcher {
    /// Stops the workers (each gives its connection back to the pool).
    fn drop(&mut self) {
        self.queue.ready.close();
    }
}

/// A worker's connection, if it has one, counted in [`Batcher::all_connected`].
struct Slot {
    held: Option<Held>,
    connected: Arc<AtomicUsize>,
}

impl Slot {
    fn set(&mut self, held: Held) {
        if self.held.replace(held).is_none() {
            self.connected.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Gives the connection up (back to the pool, whose recycle check closes a dead one).
    fn clear(&mut self) {
        if self.held.take().is_some() {
            self.connected.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.clear();
    }
}

/// What one worker needs; every worker has a copy.
#[derive(Clone)]
struct Worker {
    queue: Arc<Queue>,
    connections: Arc<Connections>,
    breaker: Arc<Breaker>,
    timeout: Duration,
    connected: Arc<AtomicUsize>,
    /// Plans per pipeline sent.
    batch_size: prometheus::Histogram,
}

impl Worker {
    /// Takes batches until the queue closes. A worker without a connection (Redis down at
    /// start-up, or its connection lost) opens one while idle, backing off, so that a
    /// decision rarely pays for connecting. It takes plans only while no worker holds a
    /// connection (then connecting is the plans' one chance); otherwise it leaves them to the
    /// workers that can send them at once, as connecting may outlast their time limit.
    async fn work(self) {
        let mut jobs: Vec<Option<Job>> = Vec::with_capacity(MAX_BATCH);
        let mut slot = Slot {
            held: None,
            connected: self.connected.clone(),
        };
        let mut backoff = RECONNECT_FIRST;
        // The batches' time limit, reset for each batch (see `send_within`).
        let mut limit = pin!(tokio::time::sleep(self.timeout));
        loop {
            if slot.held.is_none() {
                match tokio::time::timeout(self.timeout * 10, self.connect(&mut slot)).await {
                    Ok(Ok(())) => backoff = RECONNECT_FIRST,
                    _ => backoff = (backoff * 2).min(RECONNECT_AT_MOST),
                }
            }
            let open = if slot.held.is_some() {
                self.queue.take(&mut jobs).await
            } else if self.others_connected() {
                // Another worker can send plans now; this one could not (connecting may take
                // longer than a plan may wait): leave them to it and try again later.
                tokio::time::sleep(backoff).await;
                if self.queue.ready.is_closed() {
                    return;
                }
                continue;
            } else {
                tokio::select! {
                    open = self.queue.take(&mut jobs) => open,
                    () = tokio::time::sleep(backoff) => continue,
                }
            };
            if !open {
                return;
            }
            if slot.held.is_none() && self.others_connected() {
                // Taken while no worker held a connection, and one does now: its plans.
                self.queue.give_back(&mut jobs);
                continue;
            }
            self.decide_batch(&mut slot, &mut jobs, limit.as_mut())
                .await;
        }
    }

    /// Whether any worker holds a connection (this one does not when it asks).
    fn others_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) > 0
    }

    /// Opens a connection and loads the decide script on it, so that a fresh or restarted
    /// Redis answers the first decision without a `NOSCRIPT` round.
    async fn connect(&self, slot: &mut Slot) -> Result<(), StoreError> {
        slot.clear();
        let mut held = self.connections.hold().await?;
        self.connections
            .load_on(&mut held, script::decide_script())
            .await
            .map_err(redis_error)?;
        slot.set(held);
        Ok(())
    }

    /// Decides one batch within the time limit and answers every job.
    async fn decide_batch(
        &self,
        slot: &mut Slot,
        jobs: &mut Vec<Option<Job>>,
        limit: Pin<&mut Sleep>,
    ) {
        drop_abandoned(jobs);
        let failure = if jobs.iter().all(Option::is_none) {
            None
        } else if let Err(e) = self.breaker.admit() {
            Some(e)
        } else {
            let failure = self.send_within(slot, jobs, limit).await.err();
            // The breaker counts what Redis did with a batch, not how long callers queued.
            match &failure {
                None => self.breaker.success(),
                Some(e) if e.is_transient() => self.breaker.failure(),
                Some(_) => {}
            }
            if failure.is_some() {
                // Whatever went wrong, the next batch starts on a new connection (a reply
                // may still be in flight on this one).
                slot.clear();
            }
            failure
        };
        // Every job `run` did not answer gets the batch's error.
        for job in jobs.drain(..).flatten() {
            let e = failure
                .clone()
                .unwrap_or_else(|| StoreError::Protocol("no reply for a plan".into()));
            let _ = job.reply.send(Err(e));
        }
    }

    /// [`Worker::send`] within the time limit, on the worker's own timer `limit`.
    ///
    /// The timer is reset for each batch, not created, and stays armed in between. Tokio wakes
    /// its timer thread (an eventfd write and a context switch) whenever a timer is armed
    /// earlier than the wake-up it planned: a new timer per batch paid that on most decisions
    /// (`perf`: about one eventfd write per decision). A later deadline on an armed timer
    /// never does, and while the workers' timers are armed, neither do the callers' own time
    /// limits nor the connection's reply timeout, which end later. (An idle worker's timer
    /// still fires once, a wake-up for nothing.)
    async fn send_within(
        &self,
        slot: &mut Slot,
        jobs: &mut [Option<Job>],
        mut limit: Pin<&mut Sleep>,
    ) -> Result<(), StoreError> {
        limit.as_mut().reset(Instant::now() + self.timeout);
        tokio::select! {
            biased;
            sent = self.send(slot, jobs) => sent,
            () = limit => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// Sends the batch; when the connection turns out to be lost, sends what is still
    /// unanswered once more on a new one (see `docs/tradeoffs.md`: a plan whose reply was
    /// lost may have run, so the resend may charge it twice: under-admission, never over).
    async fn send(&self, slot: &mut Slot, jobs: &mut [Option<Job>]) -> Result<(), StoreError> {
        let mut resent = false;
        loop {
            let stale = slot
                .held
                .as_ref()
                .is_none_or(|h| self.connections.is_stale(h));
            if stale {
                self.connect(slot).await?;
            }
            let Some(held) = slot.held.as_mut() else {
                return Err(StoreError::Unavailable("no Redis connection".into()));
            };
            match run(&self.connections, held, jobs, &self.batch_size).await {
                Err(RunError::Lost(e)) if !resent => {
                    tracing::debug!(error = %e, "Redis connection lost; resending on a new one");
                    slot.clear();
                    drop_abandoned(jobs);
                    resent = true;
                }
                Err(RunError::Lost(e)) => return Err(redis_error(e)),
                Err(RunError::Failed(e)) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
    }
}

/// A caller that gave up (its own time limit passed) gets no decision: deciding it anyway
/// could consume quota for a request that was answered otherwise.
fn drop_abandoned(jobs: &mut [Option<Job>]) {
    for slot in jobs.iter_mut() {
        if slot.as_ref().is_some_and(|j| j.reply.is_closed()) {
            *slot = None;
        }
    }
}

/// Why [`run`] stopped short.
enum RunError {
    /// The connection is gone; the jobs still in the batch were not answered.
    Lost(redis::RedisError),
    Failed(StoreError),
}

impl From<redis::RedisError> for RunError {
    fn from(e: redis::RedisError) -> Self {
        if connection_lost(&e) {
            RunError::Lost(e)
        } else {
            RunError::Failed(redis_error(e))
        }
    }
}

/// Sends the batch as one pipeline and answers (takes) every job it could decide. The jobs
/// it leaves unanswered keep their calls, so that they can be sent again.
async fn run(
    connections: &Connections,
    held: &mut Held,
    jobs: &mut [Option<Job>],
    batch_size: &prometheus::Histogram,
) -> Result<(), RunError> {
    let mut pending: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].is_some()).collect();
    if pending.is_empty() {
        return Ok(());
    }
    batch_size.observe(pending.len() as f64);
    // At most one reload per batch: NOSCRIPT right after loading the script is an error.
    for attempt in 0..2 {
        let pipe = pipeline(jobs, &pending);
        let replies: Vec<Value> = match connections.pipeline_on(held, &pipe).await {
            Ok(replies) => replies,
            Err(e) => {
                give_back(&pipe, &pending, jobs);
                return Err(e.into());
            }
        };
        if replies.len() != pending.len() {
            return Err(RunError::Failed(StoreError::Protocol(format!(
                "a pipeline of {} plans got {} replies",
                pending.len(),
                replies.len()
            ))));
        }
        let mut again = Vec::new();
        for (&i, reply) in pending.iter().zip(replies) {
            if is_noscript(&reply) && attempt == 0 {
                again.push(i);
            } else if let Some(job) = jobs[i].take() {
                answer(job, reply);
            }
        }
        if again.is_empty() {
            return Ok(());
        }
        give_back(&pipe, &pending, jobs);
        connections.load_on(held, script::decide_script()).await?;
        pending = again;
    }
    Err(RunError::Failed(StoreError::Protocol(
        "the decide script was refused twice (NOSCRIPT)".into(),
    )))
}

/// One pipeline of the `pending` jobs' calls, which it takes (no copy).
fn pipeline(jobs: &mut [Option<Job>], pending: &[usize]) -> redis::Pipeline {
    let mut pipe = redis::Pipeline::with_capacity(pending.len());
    pipe.ignore_errors();
    for &i in pending {
        if let Some(job) = jobs[i].as_mut() {
            pipe.add_command(job.call.take());
        }
    }
    pipe
}

/// Puts the calls of `pipe` back into the jobs still unanswered, to be sent again (after a
/// lost connection or `NOSCRIPT`: rare, so a copy).
fn give_back(pipe: &redis::Pipeline, pending: &[usize], jobs: &mut [Option<Job>]) {
    for (&i, call) in pending.iter().zip(pipe.cmd_iter()) {
        if let Some(job) = jobs[i].as_mut() {
            job.call = call.clone();
        }
    }
}

fn answer(job: Job, reply: Value) {
    let result = match reply {
        Value::ServerError(e) => Err(redis_error(redis::RedisError::from(e))),
        reply => Ok(reply),
    };
    let _ = job.reply.send(result);
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT")
}
