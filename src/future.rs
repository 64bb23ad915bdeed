//! [`ResponseFuture`]: the future a [`CacheService`](crate::CacheService) returns.
//!
//! Requests that bypass the cache poll the inner future in place (no allocation); hits
//! answered at once are ready; those that consult the cache further run as one boxed state
//! machine, since a lookup, a wait for another request's fetch and the inner call follow
//! one another.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderValue, Response};
use pin_project_lite::pin_project;

use crate::body::CacheBody;
use crate::headers::{BYPASS, CACHE_STATUS, CACHE_TAG, X_CACHE};

pub(crate) type BoxResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

pin_project! {
    /// Response future of [`CacheService`](crate::CacheService) (and of the gRPC service).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        inner: Inner<F, B, E>,
        // `Cache-Status` cut down to its first parameter (see `CacheStatusDetail`).
        brief: bool,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<F, B, E> {
        /// Not a request the layer is concerned with: the answer is left as it is.
        Untouched { #[pin] future: F },
        /// One the cache may not answer: marked as a bypass.
        Bypass { #[pin] future: F, cache_status: Option<HeaderValue> },
        Ready { response: Option<Response<CacheBody<B>>> },
        Cache { future: BoxResponseFuture<B, E> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn untouched(future: F) -> Self {
        ResponseFuture {
            inner: Inner::Untouched { future },
            brief: false,
        }
    }

    pub(crate) fn bypass(future: F, cache_status: HeaderValue) -> Self {
        ResponseFuture {
            inner: Inner::Bypass {
                future,
                cache_status: Some(cache_status),
            },
            brief: false,
        }
    }

    pub(crate) fn ready(response: Response<CacheBody<B>>) -> Self {
        ResponseFuture {
            inner: Inner::Ready {
                response: Some(response),
            },
            brief: false,
        }
    }

    pub(crate) fn cache(future: BoxResponseFuture<B, E>) -> Self {
        ResponseFuture {
            inner: Inner::Cache { future },
            brief: false,
        }
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    /// Cut the answer's `Cache-Status` down to `hit` or `fwd=…` when `brief`.
    pub(crate) fn brief_status(mut self, brief: bool) -> Self {
        self.brief = brief;
        self
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let brief = *this.brief;
        let cut = |mut response: Response<CacheBody<B>>| {
            if brief {
                crate::headers::brief(response.headers_mut());
            }
            response
        };
        match this.inner.project() {
            InnerProj::Untouched { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(CacheBody::passthrough)))
            }
            InnerProj::Bypass {
                future,
                cache_status,
            } => {
                let response = ready!(future.poll(cx))?;
                let (mut parts, body) = response.into_parts();
                // Tags are the application's internal names: never shown, stored or not.
                parts.headers.remove(CACHE_TAG);
                parts.headers.insert(X_CACHE, BYPASS);
                if let Some(status) = cache_status.take() {
                    parts.headers.insert(CACHE_STATUS, status);
                }
                Poll::Ready(Ok(Response::from_parts(
                    parts,
                    CacheBody::passthrough(body),
                )))
            }
            // Made on the spot, already said as briefly as the layer wants.
            InnerProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            InnerProj::Cache { future } => future.as_mut().poll(cx).map_ok(cut),
        }
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
