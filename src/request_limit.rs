//! A cap on the requests one listener serves at once: past it a request is refused at once
//! (HTTP 503, gRPC `RESOURCE_EXHAUSTED`) instead of queueing behind the others.
//!
//! A tower layer over both servers' routes. Health probes (`/healthz`, `/readyz`, gRPC
//! health) are never refused, so an overloaded replica is not restarted by its liveness
//! probe. A request holds its slot until its response is ready (every response here is
//! unary); taking a slot is one atomic operation, with no allocation and no lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Paths never refused: health probes on either listener.
const EXEMPT: &[&str] = &[
    "/healthz",
    "/readyz",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// Wraps a service so that at most `max` of its requests run at once; `refuse` builds the
/// answer past that.
pub struct RequestLimitLayer<B> {
    slots: Arc<Semaphore>,
    refuse: fn() -> Response<B>,
}

impl<B> Clone for RequestLimitLayer<B> {
    fn clone(&self) -> Self {
        RequestLimitLayer {
            slots: self.slots.clone(),
            refuse: self.refuse,
        }
    }
}

impl<B> RequestLimitLayer<B> {
    pub fn new(max: usize, refuse: fn() -> Response<B>) -> Self {
        RequestLimitLayer {
            slots: Arc::new(Semaphore::new(max)),
            refuse,
        }
    }
}

impl<S, B> tower_layer::Layer<S> for RequestLimitLayer<B> {
    type Service = RequestLimit<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLimit {
            inner,
            slots: self.slots.clone(),
            refuse: self.refuse,
        }
    }
}

/// The service [`RequestLimitLayer`] makes.
pub struct RequestLimit<S, B> {
    inner: S,
    slots: Arc<Semaphore>,
    refuse: fn() -> Response<B>,
}

impl<S: Clone, B> Clone for RequestLimit<S, B> {
    fn clone(&self) -> Self {
        RequestLimit {
            inner: self.inner.clone(),
            slots: self.slots.clone(),
            refuse: self.refuse,
        }
    }
}

impl<S, ReqB, B> tower_service::Service<Request<ReqB>> for RequestLimit<S, B>
where
    S: tower_service::Service<Request<ReqB>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Limited<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let slot = if EXEMPT.contains(&req.uri().path()) {
            None
        } else {
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    return Limited::Refused {
                        refuse: self.refuse,
                    };
                }
            }
        };
        Limited::Running {
            future: self.inner.call(req),
            _slot: slot,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request running with its slot, or refused.
    #[project = LimitedProjection]
    pub enum Limited<F, B> {
        Running { #[pin] future: F, _slot: Option<OwnedSemaphorePermit> },
        Refused { refuse: fn() -> Response<B> },
    }
}

impl<F, B, E> Future for Limited<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LimitedProjection::Running { future, .. } => future.poll(cx),
            LimitedProjection::Refused { refuse } => Poll::Ready(Ok(refuse())),
        }
    }
}
