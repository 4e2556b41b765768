//! Per-call server limits, one tower layer in front of every service: the
//! global limit on calls in flight (beyond it a call is shed at once), and
//! the request size limit answered with gRPC's code for it.
//!
//! Hand-written rather than tower's `GlobalConcurrencyLimit` + `LoadShed`:
//! those fail the call with an error that tonic turns into a bare
//! RESOURCE_EXHAUSTED outside every Roster layer, so the refusal would carry
//! no ErrorInfo reason nor RetryInfo and the metrics layer would not count
//! it; here a shed call is answered like any other refusal. The limit is a
//! plain `try_acquire` on a semaphore, which is all that shedding needs.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// The hint shed calls get in their RetryInfo: calls are short, so a slot
/// is usually free again within a fraction of a second.
const SHED_RETRY_AFTER: Duration = Duration::from_millis(100);
/// Health checks are never shed: a probe that fails under load would have
/// Kubernetes restart or unroute a replica that is merely busy.
const EXEMPT_PREFIX: &str = "/grpc.health.v1.Health/";
/// How tonic's decoder words a message over `max_decoding_message_size`
/// (as OUT_OF_RANGE); the only OUT_OF_RANGE a Roster call can return.
const TONIC_TOO_LARGE: &str = "decoded message length too large";

/// The layer. Cheap to clone; clones share the limit.
#[derive(Clone, Debug)]
pub struct CallLimitLayer {
    permits: Option<Arc<Semaphore>>,
    max_request_bytes: usize,
}

impl CallLimitLayer {
    /// At most `max_calls` calls in flight (0: no limit), and requests of
    /// at most `max_request_bytes` (the services' decoding limit, which
    /// tonic enforces; this layer only gives the refusal gRPC's code).
    pub fn new(max_calls: usize, max_request_bytes: usize) -> Self {
        Self {
            permits: (max_calls > 0).then(|| Arc::new(Semaphore::new(max_calls))),
            max_request_bytes,
        }
    }
}

impl<S> tower::Layer<S> for CallLimitLayer {
    type Service = CallLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLimitService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`CallLimitLayer`].
#[derive(Clone, Debug)]
pub struct CallLimitService<S> {
    inner: S,
    layer: CallLimitLayer,
}

pin_project_lite::pin_project! {
    /// The response future of [`CallLimitService`].
    pub struct CallLimitFuture<F> {
        #[pin]
        inner: Option<F>,
        shed: Option<http::Response<tonic::body::Body>>,
        permit: Option<OwnedSemaphorePermit>,
        max_request_bytes: usize,
    }
}

impl<S, B> tower::Service<http::Request<B>> for CallLimitService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = CallLimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let max_request_bytes = self.layer.max_request_bytes;
        let permit = match &self.layer.permits {
            Some(permits) if !request.uri().path().starts_with(EXEMPT_PREFIX) => {
                match Arc::clone(permits).try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        let status = tonic::Status::from(Error::ServerOverloaded {
                            retry_after: SHED_RETRY_AFTER,
                        });
                        return CallLimitFuture {
                            inner: None,
                            shed: Some(status.into_http()),
                            permit: None,
                            max_request_bytes,
                        };
                    }
                }
            }
            _ => None,
        };
        // The service that was made ready serves this call; a fresh clone
        // waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        CallLimitFuture {
            inner: Some(ready.call(request)),
            shed: None,
            permit,
            max_request_bytes,
        }
    }
}

impl<F, E> Future for CallLimitFuture<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let shed = this.shed.take().unwrap_or_default();
            return Poll::Ready(Ok(shed));
        };
        let response = match inner.poll(cx) {
            Poll::Ready(Ok(response)) => response,
            other => return other,
        };
        // The call is answered: its slot is free for the next one.
        this.permit.take();
        if is_tonic_too_large(response.headers()) {
            let status = tonic::Status::from(Error::RequestTooLarge {
                limit: *this.max_request_bytes,
            });
            return Poll::Ready(Ok(status.into_http()));
        }
        Poll::Ready(Ok(response))
    }
}

/// Whether a trailers-only response is tonic's refusal of an oversized
/// request. A refusal in the trailers of a stream already answered (a
/// client-streaming call; Roster has none but reflection) is left as it is.
fn is_tonic_too_large(headers: &http::HeaderMap) -> bool {
    headers.get("grpc-status").is_some_and(|code| code == "11")
        && tonic::Status::from_header_map(headers)
            .is_some_and(|status| status.message().contains(TONIC_TOO_LARGE))
}
