//! [`Purge`]: sends purge requests to the endpoint, everything else to the inner service.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::endpoint;
use super::settings::Settings;
use crate::body::{BoxError, CacheBody};
use crate::future::ResponseFuture;

/// Answers purge requests in front of `S`. Built by [`PurgeLayer`](crate::PurgeLayer), whose
/// docs have an example.
#[derive(Clone)]
pub struct Purge<S> {
    inner: S,
    settings: Settings,
}

impl<S> Purge<S> {
    pub(crate) fn new(inner: S, settings: Settings) -> Self {
        Purge { inner, settings }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Purge<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Send + 'static,
    ReqB: Body + Send + 'static,
    ReqB::Data: Send,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        if !endpoint::is_purge(&self.settings, &request) {
            return ResponseFuture::untouched(self.inner.call(request));
        }
        let answer = endpoint::answer(self.settings.clone(), request);
        ResponseFuture::cache(Box::pin(async move {
            let (parts, body) = answer.await.into_parts();
            Ok(Response::from_parts(
                parts,
                CacheBody::cached(Some(body), None),
            ))
        }))
    }
}

impl<S> std::fmt::Debug for Purge<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Purge")
            .field("inner", &std::any::type_name::<S>())
            .field("settings", &self.settings)
            .finish()
    }
}
