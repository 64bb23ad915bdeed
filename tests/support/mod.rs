//! The tests' one support module: serve a router on a loopback port and talk to it over
//! real HTTP ([`serve`], [`client`], [`get`], [`Answer`]), the one counting origin
//! ([`Origin`]), and the one way to wait for something that happens off the response path
//! ([`eventually`]). With the `redis` feature, [`redis`] starts real `redis-server`
//! processes and [`stack`] builds a server caching through one.
//!
//! Each test binary (`tests/http`, `tests/redis`, `tests/grpc`) includes it with
//! `#[path]` and uses a part of it.
#![allow(dead_code)]

#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub mod stack;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderName, HeaderValue, Uri};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower_response_cache::{CacheHandle, CacheLayer};

/// The origin behind the cache: counts the requests that reach it and answers
/// `<path> #<call number>` (then ` lang=<value>` when the request has `Accept-Language`),
/// so a body tells which fetch made it.
///
/// The query scripts the answer: `status=`, `size=` (a body of that many `x`), `delay_ms=`;
/// response headers `cc=` (`Cache-Control`), `pcc=` (`Portal-Cache-Control`), `cdn=`
/// (`CDN-Cache-Control`), `vary=`, `tag=` (`Cache-Tag`), `age=`, `location=`,
/// `connection=`, `a=`, `c=`, `x=` (`X-Version`); `cookie` (a `Set-Cookie`), `lm` (a fixed
/// `Last-Modified` in 2015), `lm_hour_ago` (a `Last-Modified` an hour ago with a current
/// `Date`), `etag=` (that `ETag`, and a 304 with no body to an `If-None-Match` naming it).
/// Two switches hold for every answer while set: [`failing`](Self::failing) answers 503,
/// [`no_store`](Self::no_store) adds `Cache-Control: no-store`.
#[derive(Clone, Default)]
pub struct Origin {
    pub calls: Arc<AtomicUsize>,
    pub failing: Arc<AtomicBool>,
    pub no_store: Arc<AtomicBool>,
}

impl Origin {
    /// Requests that reached the origin so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Every path answered by this origin, uncached.
    pub fn router(&self) -> Router {
        Router::new().fallback(any(answer)).with_state(self.clone())
    }

    /// Every path answered by this origin, behind `layer`, whose `Cache-Status` says
    /// everything (the tests read its details).
    pub fn app(&self, layer: CacheLayer) -> Router {
        let layer = layer.cache_status_detail(tower_response_cache::CacheStatusDetail::Full);
        self.router().layer(layer)
    }

    /// [`app`](Self::app), served on a free loopback port.
    pub async fn serve(&self, layer: CacheLayer) -> SocketAddr {
        serve(self.app(layer)).await
    }
}

async fn answer(
    State(origin): State<Origin>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    let n = origin.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(ms) = q.get("delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    let body = match (q.get("size"), headers.get("accept-language")) {
        (Some(size), _) => "x".repeat(size.parse().unwrap()),
        (None, Some(lang)) => format!("{} #{n} lang={}", uri.path(), lang.to_str().unwrap()),
        (None, None) => format!("{} #{n}", uri.path()),
    };
    let mut response = axum::response::Response::new(Body::from(body));
    if let Some(status) = q.get("status") {
        *response.status_mut() = StatusCode::from_u16(status.parse().unwrap()).unwrap();
    }
    if origin.failing.load(Ordering::SeqCst) {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    if let Some(etag) = q.get("etag") {
        if headers
            .get("if-none-match")
            .is_some_and(|v| v == etag.as_str())
        {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            *response.body_mut() = Body::empty();
        }
        response
            .headers_mut()
            .insert("etag", HeaderValue::from_str(etag).unwrap());
    }
    let h = response.headers_mut();
    for (param, header) in [
        ("cc", "cache-control"),
        ("pcc", "portal-cache-control"),
        ("cdn", "cdn-cache-control"),
        ("vary", "vary"),
        ("tag", "cache-tag"),
        ("age", "age"),
        ("location", "location"),
        ("connection", "connection"),
        ("a", "a"),
        ("c", "c"),
        ("x", "x-version"),
    ] {
        if let Some(value) = q.get(param) {
            h.insert(
                HeaderName::from_static(header),
                HeaderValue::from_str(value).unwrap(),
            );
        }
    }
    if q.contains_key("cookie") {
        h.insert("set-cookie", HeaderValue::from_static("session=secret"));
    }
    if q.contains_key("lm") {
        h.insert(
            "last-modified",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
    }
    if q.contains_key("lm_hour_ago") {
        let now = std::time::SystemTime::now();
        let hour_ago = now - Duration::from_secs(3600);
        h.insert("date", httpdate::fmt_http_date(now).parse().unwrap());
        h.insert(
            "last-modified",
            httpdate::fmt_http_date(hour_ago).parse().unwrap(),
        );
    }
    if origin.no_store.load(Ordering::SeqCst) {
        h.insert("cache-control", HeaderValue::from_static("no-store"));
    }
    response
}

/// Serve `app` on a free loopback port until the test ends.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// What came back: status, headers, the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn x_cache(&self) -> &str {
        self.header("x-cache")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> Answer {
    let response = client.request(request).await.expect("request failed");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body failed").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> Answer {
    get_with(client, addr, path, &[]).await
}

pub async fn get_with(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    request(client, "GET", addr, path, headers).await
}

pub async fn request(
    client: &HttpClient,
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(client, builder.body(Full::new(Bytes::new())).unwrap()).await
}

/// What a probe of [`eventually`] returns: `true`, or `Some(found)`, once it holds.
pub trait Settled {
    fn settled(&self) -> bool;
}

impl Settled for bool {
    fn settled(&self) -> bool {
        *self
    }
}

impl<T> Settled for Option<T> {
    fn settled(&self) -> bool {
        self.is_some()
    }
}

/// Run `probe` every 10 ms until it holds or `within` passes; its last answer (`true` or
/// `Some(..)` when it held). Store writes, background refreshes and pub/sub messages happen
/// off the response path: a test waits for them with this, never with a bare sleep.
pub async fn eventually<T, F, Fut>(within: Duration, mut probe: F) -> T
where
    T: Settled,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + within;
    loop {
        let answer = probe().await;
        if answer.settled() || Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait (up to 5 s) until `handle` has stored at least `n` entries (a miss is stored after
/// its body ends, off the response path).
pub async fn stored(handle: &CacheHandle, n: u64) {
    let done = eventually(Duration::from_secs(5), || async {
        handle.stats().stores >= n
    })
    .await;
    assert!(done, "expected {n} stores, have {:?}", handle.stats());
}

/// Read `path` until it is a hit (a miss is stored after its body ends, off the response
/// path), within 5 s; that hit.
pub async fn until_hit(client: &HttpClient, addr: SocketAddr, path: &str) -> Answer {
    eventually(Duration::from_secs(5), || async {
        let answer = get(client, addr, path).await;
        (answer.x_cache() == "HIT").then_some(answer)
    })
    .await
    .unwrap_or_else(|| panic!("{path} never became a hit"))
}

/// A runtime on a thread of its own that runs one piece of work and is then never polled
/// again until this is dropped: what a connection that work opened looks like to the rest
/// of the process when an application called the store from a `block_on` of its own (the
/// connection's driver runs on the runtime that opened it).
pub struct IdleRuntime {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IdleRuntime {
    /// Run `work` to its end on the new runtime, then leave that runtime idle; with what
    /// `work` returned.
    pub fn after<T: Send + 'static>(
        work: impl Future<Output = T> + Send + 'static,
    ) -> (IdleRuntime, T) {
        let (done, finished) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            done.send(runtime.block_on(work)).unwrap();
            let _ = released.recv();
        });
        let output = finished.recv().unwrap();
        let idle = IdleRuntime {
            release: Some(release),
            thread: Some(thread),
        };
        (idle, output)
    }
}

impl Drop for IdleRuntime {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
