//! A caching reverse proxy in a few dozen lines: `CacheLayer` with the RFC 9111
//! shared-cache preset in front of a hyper client that forwards to an upstream.
//!
//! ```sh
//! cargo run --example proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:3000
//! curl -i http://127.0.0.1:8080/api/companies   # X-Cache / Cache-Status show what happened
//! ```
//!
//! Also a way to test the layer against any HTTP origin.
//!
//! With `PROXY_PURGE_TOKEN` set (16 bytes or more) the proxy also answers the purge
//! endpoints for bearers of that token (`PurgeLayer`): `PURGE /path` drops every stored
//! variant of that path, `POST /_cache/purge` takes `{"pattern": ...}`, `{"tag": ...}` or
//! `{"all": true}`. Unset, a `PURGE` is forwarded to the upstream like any other method.
//!
//! ```sh
//! PROXY_PURGE_TOKEN=$(openssl rand -hex 32) cargo run --example proxy
//! curl -X PURGE -H "Authorization: Bearer $PROXY_PURGE_TOKEN" http://127.0.0.1:8080/api/companies
//! ```
//!
//! Interim responses: the origin's `103 Early Hints` or `102 Processing` reach the client
//! before the final response, and are never stored (the client after it gets the cached
//! final response alone). hyper's server has no API to send a 1xx (a `Service` returns one
//! response), so [`serve`] relays them itself: the upstream client hands each 1xx to the
//! request's [`InterimSlot`] (`hyper::ext::on_informational`), and the connection's IO
//! ([`RelayIo`]) writes it out before the final response head. HTTP/1.1 only: the relay
//! writes HTTP/1.1 framing.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Router;
use bytes::{Buf, BytesMut};
use http::{HeaderMap, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower_response_cache::{
    CacheHandle, CacheLayer, CachePolicy, CacheStatusDetail, MemoryStore, PurgeLayer,
};

/// The proxy: every request is forwarded to `upstream` (scheme and authority replaced),
/// answered from the cache where RFC 9111 allows; with `purge_token`, purge requests
/// bearing it are answered by the proxy itself.
pub fn proxy_app(upstream: Uri, cache: CacheHandle, purge_token: Option<&str>) -> Router {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    let forward = move |mut request: Request| {
        let client = client.clone();
        let upstream = upstream.clone();
        async move {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let mut target = upstream.into_parts();
            target.path_and_query = path.parse().ok();
            *request.uri_mut() = Uri::from_parts(target).expect("upstream URI");
            request.headers_mut().remove(http::header::HOST);
            if let Some(slot) = request.extensions().get::<InterimSlot>().cloned() {
                hyper::ext::on_informational(&mut request, move |interim| {
                    slot.push(interim.status(), interim.headers());
                });
            }
            match client.request(request).await {
                Ok(response) => response.map(Body::new).into_response(),
                Err(error) => {
                    (StatusCode::BAD_GATEWAY, format!("upstream: {error}\n")).into_response()
                }
            }
        }
    };
    let cache = CacheLayer::new(cache)
        .policy(CachePolicy::rfc9111())
        // A proxy to look through: every `Cache-Status` parameter.
        .cache_status_detail(CacheStatusDetail::Full);
    let purge = purge_token.map(|token| PurgeLayer::new(&cache, token));
    let app = Router::new().fallback(forward).layer(cache);
    match purge {
        Some(purge) => app.layer(purge),
        None => app,
    }
}

const USAGE: &str = "usage: proxy [--listen ADDR] [--upstream URL]   (defaults 127.0.0.1:8080, http://127.0.0.1:3000)";

/// `--listen ADDR --upstream URL`, each optional; anything else is a usage error at start.
pub fn parse_args(args: impl Iterator<Item = String>) -> Result<(String, Uri), String> {
    let (mut listen, mut upstream) = ("127.0.0.1:8080".to_owned(), None);
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => {
                value
                    .parse::<std::net::SocketAddr>()
                    .map_err(|e| format!("--listen {value}: {e}"))?;
                listen = value;
            }
            "--upstream" => {
                let uri: Uri = value
                    .parse()
                    .map_err(|e| format!("--upstream {value}: {e}"))?;
                if uri.scheme().is_none() || uri.authority().is_none() {
                    return Err(format!("--upstream {value}: needs http://host:port"));
                }
                upstream = Some(uri);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let upstream = upstream.unwrap_or_else(|| Uri::from_static("http://127.0.0.1:3000"));
    Ok((listen, upstream))
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    tracing_subscriber::fmt::init();
    let (listen, upstream) = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("{error}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let purge_token = std::env::var("PROXY_PURGE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if purge_token.as_ref().is_some_and(|t| t.len() < 16) {
        eprintln!("PROXY_PURGE_TOKEN must be at least 16 bytes\n{USAGE}");
        std::process::exit(2);
    }
    let cache = CacheHandle::builder(MemoryStore::new())
        .namespace("proxy")
        .ttl(Duration::from_secs(60))
        .build();
    let listener = TcpListener::bind(&listen).await.expect("bind");
    let purging = if purge_token.is_some() {
        " (purge endpoints on)"
    } else {
        ""
    };
    println!("caching proxy on http://{listen} -> {upstream}{purging}");
    serve(listener, proxy_app(upstream, cache, purge_token.as_deref())).await;
}

/// Serve `app` over HTTP/1.1, relaying the upstream's 1xx interim responses (see the
/// module docs). Runs forever.
pub async fn serve(listener: TcpListener, app: Router) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: let connections close before accepting again.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let relay = Arc::new(Mutex::new(Relay::default()));
        let io = RelayIo {
            inner: stream,
            relay: relay.clone(),
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<_>| {
            let slot = InterimSlot::begin(&relay);
            request.extensions_mut().insert(slot.clone());
            let response = tower::ServiceExt::oneshot(app.clone(), request);
            async move {
                let response = response.await;
                // The final response goes out next: a 1xx arriving later is dropped.
                slot.close();
                response
            }
        });
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended");
            }
        });
    }
}

/// One connection's interim responses waiting to be written, in HTTP/1.1 framing.
#[derive(Default)]
struct Relay {
    /// Bumped for every request; a slot of an older request writes nothing.
    request: u64,
    /// The current request's final response has not been handed to hyper yet.
    open: bool,
    /// hyper's own write buffer has been empty since the current request began (it calls
    /// the IO's `poll_flush` only then): bytes written now follow the previous response.
    drained: bool,
    pending: BytesMut,
    /// The connection task, woken to write a 1xx while the final response is awaited.
    waker: Option<Waker>,
}

/// A request's way to its connection: the upstream client pushes each 1xx here.
#[derive(Clone)]
pub struct InterimSlot {
    relay: Arc<Mutex<Relay>>,
    request: u64,
}

impl InterimSlot {
    fn begin(relay: &Arc<Mutex<Relay>>) -> InterimSlot {
        let mut state = relay.lock().unwrap();
        state.request += 1;
        state.open = true;
        state.drained = false;
        state.pending.clear();
        InterimSlot {
            relay: relay.clone(),
            request: state.request,
        }
    }

    fn close(&self) {
        let mut state = self.relay.lock().unwrap();
        if state.request == self.request {
            state.open = false;
        }
    }

    /// Queue an interim response for the client. `100 Continue` is hyper's own business
    /// (it answers `Expect` itself) and `101` would need an upgrade: neither is relayed.
    fn push(&self, status: StatusCode, headers: &HeaderMap) {
        if matches!(status.as_u16(), 100 | 101) || !status.is_informational() {
            return;
        }
        let mut state = self.relay.lock().unwrap();
        if state.request != self.request || !state.open {
            return;
        }
        let reason = status.canonical_reason().unwrap_or("");
        let line = format!("HTTP/1.1 {} {reason}\r\n", status.as_u16());
        state.pending.extend_from_slice(line.as_bytes());
        for (name, value) in headers {
            if name == http::header::CONNECTION || name == "keep-alive" {
                continue;
            }
            state.pending.extend_from_slice(name.as_str().as_bytes());
            state.pending.extend_from_slice(b": ");
            state.pending.extend_from_slice(value.as_bytes());
            state.pending.extend_from_slice(b"\r\n");
        }
        state.pending.extend_from_slice(b"\r\n");
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

/// The client connection with the relay's bytes written ahead of hyper's.
struct RelayIo {
    inner: tokio::net::TcpStream,
    relay: Arc<Mutex<Relay>>,
}

impl RelayIo {
    /// Write the queued interim responses first. `flushing`: hyper's buffer is empty now.
    fn poll_relay(&mut self, cx: &mut Context<'_>, flushing: bool) -> Poll<io::Result<()>> {
        let mut state = self.relay.lock().unwrap();
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        if flushing {
            state.drained = true;
        }
        if !state.drained {
            // hyper may still hold the previous response's tail: a 1xx now could land
            // inside it, so it is dropped (only when the client reads that slowly).
            state.pending.clear();
        }
        while !state.pending.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &state.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            state.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for RelayIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for RelayIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_relay(cx, false))?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_relay(cx, false))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_relay(cx, true))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
