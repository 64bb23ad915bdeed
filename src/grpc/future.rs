//! [`ResponseFuture`]: the future a [`GrpcCacheService`](super::GrpcCacheService) returns.
//!
//! Calls the cache does not handle poll the inner future in place (no allocation); opted-in
//! calls run as one boxed state machine (read the message, look up, maybe wait for another
//! call's fetch, call the inner service).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderValue, Response};
use pin_project_lite::pin_project;

use super::body::ResponseBody;
use crate::headers::{BYPASS, CACHE_STATUS, X_CACHE};

pub(crate) type BoxResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

pin_project! {
    /// Response future of [`GrpcCacheService`](super::GrpcCacheService).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        inner: Inner<F, B, E>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<F, B, E> {
        /// Not a call the cache is concerned with: the answer is left as it is.
        Untouched { #[pin] future: F },
        /// An opted-in method the cache may not answer (credentials): marked as a bypass.
        Bypass { #[pin] future: F, cache_status: Option<HeaderValue> },
        Cache { future: BoxResponseFuture<B, E> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn untouched(future: F) -> Self {
        ResponseFuture {
            inner: Inner::Untouched { future },
        }
    }

    pub(crate) fn bypass(future: F, cache_status: HeaderValue) -> Self {
        ResponseFuture {
            inner: Inner::Bypass {
                future,
                cache_status: Some(cache_status),
            },
        }
    }

    pub(crate) fn cache(future: BoxResponseFuture<B, E>) -> Self {
        ResponseFuture {
            inner: Inner::Cache { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Untouched { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(ResponseBody::passthrough)))
            }
            InnerProj::Bypass {
                future,
                cache_status,
            } => {
                let response = ready!(future.poll(cx))?;
                let (mut parts, body) = response.into_parts();
                parts.headers.insert(X_CACHE, BYPASS);
                if let Some(status) = cache_status.take() {
                    parts.headers.insert(CACHE_STATUS, status);
                }
                Poll::Ready(Ok(Response::from_parts(
                    parts,
                    ResponseBody::passthrough(body),
                )))
            }
            InnerProj::Cache { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
