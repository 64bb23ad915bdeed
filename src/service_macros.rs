//! The Tower plumbing both cache services share (HTTP and gRPC): tower-http's accessor
//! set, the associated types and readiness of a service wrapping an inner one, the layer
//! that builds it, its `Debug`, and the ready-service handover. Nothing of caching is here:
//! the miss protocol is in `engine`.

/// `handle`, `get_ref`, `get_mut` and `into_inner` for a service over `inner` and a
/// `config` holding the handle (tower-http's accessor set).
macro_rules! inner_service_accessors {
    () => {
        /// The handle this service caches into.
        pub fn handle(&self) -> &crate::handle::CacheHandle {
            &self.config.handle
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
    };
}
pub(crate) use inner_service_accessors;

/// The associated types and `poll_ready` every cache service shares: the inner service's
/// readiness and error, the answer's body wrapped in [`CacheBody`](crate::CacheBody).
macro_rules! cache_service_types {
    ($body:ty) => {
        type Response = http::Response<crate::body::CacheBody<$body>>;
        type Error = S::Error;
        type Future = crate::future::ResponseFuture<S::Future, $body, S::Error>;

        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }
    };
}
pub(crate) use cache_service_types;

/// `$service::layer(handle)` (documented by `$doc`) and `$layer`'s `Layer` impl, which
/// builds each service from the layer's shared config.
macro_rules! layer_impls {
    ($layer:ident, $service:ident, $doc:literal) => {
        impl<S> $service<S> {
            #[doc = $doc]
            pub fn layer(handle: crate::handle::CacheHandle) -> $layer {
                $layer::new(handle)
            }
        }

        impl<S> tower_layer::Layer<S> for $layer {
            type Service = $service<S>;

            fn layer(&self, inner: S) -> $service<S> {
                $service::from_config(inner, self.config.clone())
            }
        }
    };
}
pub(crate) use layer_impls;

/// `Debug` for a cache service: its inner service and its handle.
macro_rules! debug_service {
    ($service:ident) => {
        impl<S: std::fmt::Debug> std::fmt::Debug for $service<S> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($service))
                    .field("inner", &self.inner)
                    .field("handle", &self.config.handle)
                    .finish()
            }
        }
    };
}
pub(crate) use debug_service;

/// The ready service goes into the future; the service keeps a fresh clone (tower's rule:
/// what `poll_ready` readied is what `call` uses).
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
