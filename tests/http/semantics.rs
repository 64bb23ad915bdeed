//! The application preset's HTTP semantics through a real axum server: revalidation with
//! the origin's validators, ranges answered from stored responses, `HEAD` updates; and a
//! request's `no-cache` under the RFC 9111 preset.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use tower_response_cache::{CacheHandle, CacheLayer, CachePolicy};

/// An origin with validators (beside the support module's [`Origin`], which has none of
/// this bookkeeping): `ETag: "v1"` (unless `?no_etag`) and a fixed
/// `Last-Modified`; it answers a matching `If-None-Match` / `If-Modified-Since` with `304`
/// carrying `x-version: <call>`, records the conditions it was sent, and answers `Range`
/// itself with a `206` (echoing `If-Range`).
#[derive(Clone, Default)]
struct Validating {
    calls: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

async fn validating(State(v): State<Validating>, uri: Uri, headers: HeaderMap) -> Response {
    let n = v.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let header = |name: &str| {
        headers
            .get(name)
            .map(|h| h.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let seen = ["if-none-match", "if-modified-since", "range", "if-range"];
    for name in seen {
        if headers.contains_key(name) {
            v.seen.lock().unwrap().push((name.to_owned(), header(name)));
        }
    }
    let etag = !uri.query().unwrap_or("").contains("no_etag");
    let matches = (etag && header("if-none-match") == "\"v1\"")
        || (!headers.contains_key("if-none-match") && header("if-modified-since") == LAST_MODIFIED);
    let mut response = Response::new(Body::from(format!("body #{n}")));
    if matches {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.body_mut() = Body::empty();
    } else if headers.contains_key("range") {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        *response.body_mut() = Body::from("bo");
        response
            .headers_mut()
            .insert("content-range", HeaderValue::from_static("bytes 0-1/7"));
    }
    let h = response.headers_mut();
    h.insert("cache-control", HeaderValue::from_static("max-age=1"));
    h.insert("last-modified", HeaderValue::from_static(LAST_MODIFIED));
    h.insert("x-version", HeaderValue::from(n));
    if etag {
        h.insert("etag", HeaderValue::from_static("\"v1\""));
    }
    response
}

async fn start_validating(policy: CachePolicy) -> (Validating, std::net::SocketAddr, HttpClient) {
    let v = Validating::default();
    let app = Router::new()
        .fallback(any(validating))
        .with_state(v.clone())
        .layer(
            CacheLayer::new(CacheHandle::in_memory())
                .policy(policy)
                .cache_status_detail(tower_response_cache::CacheStatusDetail::Full),
        );
    (v, serve(app).await, client())
}

impl Validating {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn take_seen(&self) -> Vec<(String, String)> {
        std::mem::take(&mut self.seen.lock().unwrap())
    }
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_with_its_validators_and_freshened_from_a_304() {
    // The origin's own ETag (none generated here) goes upstream as If-None-Match.
    let (v, addr, client) = start_validating(CachePolicy::default().generate_etag(false)).await;
    let first = until_hit(&client, addr, "/v").await;
    v.take_seen();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let validated = get(&client, addr, "/v").await;
    let calls = v.calls();
    assert_eq!(
        validated.text(),
        first.text(),
        "the stored body, not refetched"
    );
    assert_eq!(
        validated.header("x-version"),
        calls.to_string(),
        "headers updated from the 304"
    );
    assert_eq!(
        v.take_seen(),
        [
            ("if-none-match".to_owned(), "\"v1\"".to_owned()),
            ("if-modified-since".to_owned(), LAST_MODIFIED.to_owned()),
        ]
    );
    // Freshened: a hit again, with the updated header.
    let hit = get(&client, addr, "/v").await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.header("x-version"), calls.to_string());
    assert_eq!(v.calls(), calls);
}

#[tokio::test]
async fn under_rfc9111_a_request_no_cache_validates_the_stored_entry_instead_of_refetching() {
    // The application preset answers a client's `no-cache` from the cache (so no client can
    // push load onto the origin); the RFC 9111 preset honours it.
    let (v, addr, client) = start_validating(CachePolicy::rfc9111()).await;
    let first = until_hit(&client, addr, "/n").await;
    v.take_seen();
    // Fresh, yet the client wants it validated (RFC 9111 §5.2.1.4).
    for no_cache in [
        &[("cache-control", "no-cache")][..],
        &[("pragma", "no-cache")],
    ] {
        let calls = v.calls();
        let validated = get_with(&client, addr, "/n", no_cache).await;
        assert_eq!(v.calls(), calls + 1, "the origin was asked");
        assert_eq!(
            v.take_seen(),
            [
                ("if-none-match".to_owned(), "\"v1\"".to_owned()),
                ("if-modified-since".to_owned(), LAST_MODIFIED.to_owned()),
            ],
            "with the stored entry's validators"
        );
        assert_eq!(validated.status, StatusCode::OK);
        assert_eq!(
            validated.text(),
            first.text(),
            "the stored body, not refetched"
        );
        assert_eq!(validated.header("x-version"), (calls + 1).to_string());
        assert!(
            validated
                .header("cache-status")
                .contains("fwd=request; fwd-status=304"),
            "{}",
            validated.header("cache-status")
        );
    }
    // The 304 freshened the entry: a plain request hits it, with the updated headers.
    let hit = get(&client, addr, "/n").await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.header("x-version"), v.calls().to_string());
    // With only `Last-Modified` stored, it is the validator sent.
    let first = until_hit(&client, addr, "/m?no_etag").await;
    v.take_seen();
    let validated = get_with(
        &client,
        addr,
        "/m?no_etag",
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(
        v.take_seen(),
        [("if-modified-since".to_owned(), LAST_MODIFIED.to_owned())]
    );
    assert_eq!(validated.text(), first.text());
}

#[tokio::test]
async fn a_generated_etag_is_never_sent_upstream_but_last_modified_validates() {
    let (v, addr, client) = start_validating(CachePolicy::default()).await;
    let first = until_hit(&client, addr, "/g?no_etag").await;
    assert!(first.header("etag").starts_with('"'), "a generated ETag");
    v.take_seen();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let validated = get(&client, addr, "/g?no_etag").await;
    assert_eq!(validated.text(), first.text());
    assert_eq!(
        v.take_seen(),
        [("if-modified-since".to_owned(), LAST_MODIFIED.to_owned())]
    );
}

#[tokio::test]
async fn ranges_are_answered_from_a_stored_200_in_the_application_preset() {
    let (v, addr, client) = start_validating(CachePolicy::default()).await;
    // Nothing stored: forwarded as sent, If-Range included; the 206 is not stored.
    let condition = [("range", "bytes=0-1"), ("if-range", "\"v1\"")];
    let forwarded = get_with(&client, addr, "/r", &condition).await;
    assert_eq!(forwarded.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(forwarded.x_cache(), "MISS");
    assert_eq!(
        v.take_seen(),
        [
            ("range".to_owned(), "bytes=0-1".to_owned()),
            ("if-range".to_owned(), "\"v1\"".to_owned()),
        ]
    );
    let full = until_hit(&client, addr, "/r").await;
    let body = full.text();
    assert_ne!(body, "bo", "the 206 was never stored");
    assert_eq!(body.len(), 7);
    let calls = v.calls();
    let one = get_with(&client, addr, "/r", &[("range", "bytes=5-")]).await;
    assert_eq!(one.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(one.text(), body[5..]);
    assert_eq!(one.header("content-range"), "bytes 5-6/7");
    assert_eq!(one.header("content-length"), "2");
    assert_eq!(one.header("etag"), "\"v1\"");
    let suffix = get_with(&client, addr, "/r", &[("range", "bytes=-3")]).await;
    assert_eq!(suffix.text(), body[4..]);
    let first = get_with(&client, addr, "/r", &[("range", "bytes=0-3")]).await;
    assert_eq!(first.text(), "body");
    let none = get_with(&client, addr, "/r", &[("range", "bytes=7-")]).await;
    assert_eq!(none.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(none.header("content-range"), "bytes */7");
    assert!(none.body.is_empty());
    // Several ranges, a stale If-Range, or a weak one: the whole 200.
    for headers in [
        &[("range", "bytes=0-1, 4-5")][..],
        &[("range", "bytes=0-1"), ("if-range", "\"v0\"")],
        &[("range", "bytes=0-1"), ("if-range", "W/\"v1\"")],
    ] {
        let whole = get_with(&client, addr, "/r", headers).await;
        assert_eq!(whole.status, StatusCode::OK, "{headers:?}");
        assert_eq!(whole.text(), body, "{headers:?}");
    }
    // A matching If-Range, by ETag or by the (strong) Last-Modified: the range.
    for validator in ["\"v1\"", LAST_MODIFIED] {
        let headers = [("range", "bytes=0-1"), ("if-range", validator)];
        let matched = get_with(&client, addr, "/r", &headers).await;
        assert_eq!(matched.status, StatusCode::PARTIAL_CONTENT, "{validator}");
        assert_eq!(matched.text(), "bo", "{validator}");
        assert_eq!(matched.x_cache(), "HIT", "{validator}");
    }
    // HEAD ignores Range.
    let head = request(&client, "HEAD", addr, "/r", &[("range", "bytes=0-1")]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(v.calls(), calls, "every range came from the cache");
}

#[tokio::test]
async fn a_200_to_a_head_freshens_the_stored_get() {
    let (v, addr, client) = start_validating(CachePolicy::default()).await;
    let first = until_hit(&client, addr, "/h").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Stale: the HEAD goes to the origin, and its 200 updates the stored headers.
    let head = request(&client, "HEAD", addr, "/h", &[]).await;
    let calls = v.calls();
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("x-version"), calls.to_string());
    // The next GET is a hit: the stored body with the HEAD's fields.
    let hit = get(&client, addr, "/h").await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.text(), first.text());
    assert_eq!(hit.header("x-version"), calls.to_string());
    assert_eq!(v.calls(), calls);
}

/// An origin with `ETag: "v1"` that answers `If-None-Match: "v1"` with a `304`, fresh for
/// `max_age` seconds; its first conditional request waits at `gate` after telling `entered`.
fn gated_validator(
    max_age: u64,
    entered: Arc<tokio::sync::Notify>,
    gate: Arc<tokio::sync::Semaphore>,
) -> impl tower::Service<
    http::Request<http_body_util::Full<bytes::Bytes>>,
    Response = http::Response<http_body_util::Full<bytes::Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send {
    let calls = Arc::new(AtomicUsize::new(0));
    let first_condition = Arc::new(std::sync::atomic::AtomicBool::new(true));
    tower::service_fn(move |request: http::Request<_>| {
        let (calls, first_condition) = (calls.clone(), first_condition.clone());
        let (entered, gate) = (entered.clone(), gate.clone());
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let conditional = request
                .headers()
                .get("if-none-match")
                .is_some_and(|v| v == "\"v1\"");
            if conditional && first_condition.swap(false, Ordering::SeqCst) {
                entered.notify_one();
                let _ = gate.acquire().await;
            }
            let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                format!("body #{n}"),
            )));
            if conditional {
                *response.status_mut() = StatusCode::NOT_MODIFIED;
                *response.body_mut() = http_body_util::Full::default();
            }
            let h = response.headers_mut();
            h.insert("etag", HeaderValue::from_static("\"v1\""));
            h.insert(
                "cache-control",
                format!("max-age={max_age}").parse::<HeaderValue>().unwrap(),
            );
            Ok::<_, std::convert::Infallible>(response)
        }
    })
}

/// A validation in flight while the key is invalidated: its `304` answers the requests that
/// asked, but the entry they validated (read before the invalidation) is not written back,
/// neither by the leader nor by a follower that fetches alone after it.
#[tokio::test]
async fn an_entry_validated_across_an_invalidation_is_not_written_back() {
    use tower::{Layer, ServiceExt};
    for no_cache in [true, false] {
        let (entered, gate) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Semaphore::new(0)),
        );
        let origin = gated_validator(if no_cache { 60 } else { 1 }, entered.clone(), gate.clone());
        let handle = CacheHandle::in_memory();
        let svc = CacheLayer::new(handle.clone())
            .policy(CachePolicy::rfc9111())
            .cache_status_detail(tower_response_cache::CacheStatusDetail::Full)
            .layer(origin);
        let request = move || {
            let mut request = http::Request::get("/n");
            if no_cache {
                request = request.header("cache-control", "no-cache");
            }
            request.body(http_body_util::Full::default()).unwrap()
        };
        let plain = || {
            http::Request::get("/n")
                .body(http_body_util::Full::default())
                .unwrap()
        };
        let x_cache = |r: &http::Response<_>| r.headers()["x-cache"].to_str().unwrap().to_owned();
        svc.clone().oneshot(plain()).await.unwrap();
        stored(&handle, 1).await;
        if !no_cache {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        // One request leads the validation and waits at the origin; a second follows it.
        let leader = tokio::spawn(svc.clone().oneshot(request()));
        entered.notified().await;
        let follower = tokio::spawn(svc.clone().oneshot(request()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle.invalidate("/n").await.unwrap();
        gate.add_permits(1);
        let (leader, follower) = (
            leader.await.unwrap().unwrap(),
            follower.await.unwrap().unwrap(),
        );
        for answer in [&leader, &follower] {
            assert_eq!(answer.status(), StatusCode::OK, "no_cache={no_cache}");
            assert!(!answer.headers()["cache-status"]
                .to_str()
                .unwrap()
                .ends_with("storing"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let after = svc.clone().oneshot(plain()).await.unwrap();
        assert_eq!(
            x_cache(&after),
            "MISS",
            "no_cache={no_cache}: the validated entry came back"
        );
    }
}

/// A `HEAD` answer without validators cannot say the stored body is still the current one:
/// after a soft invalidation it passes through and the entry stays stale. One whose
/// `Last-Modified` matches the stored one (the positive control) vouches for it and
/// freshens it.
#[tokio::test]
async fn a_head_freshens_a_soft_invalidated_entry_only_when_a_validator_vouches_for_it() {
    // `GET`s carry a Last-Modified; `HEAD`s of `/plain` carry none.
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = {
        let calls = calls.clone();
        any(move |method: http::Method, uri: Uri| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let mut response = Response::new(Body::from(format!("{} #{n}", uri.path())));
                let h = response.headers_mut();
                h.insert("cache-control", HeaderValue::from_static("max-age=3600"));
                if method == http::Method::GET || uri.path() != "/plain" {
                    h.insert("last-modified", HeaderValue::from_static(LAST_MODIFIED));
                }
                response
            }
        })
    };
    let handle = CacheHandle::in_memory();
    let app = Router::new()
        .fallback(origin)
        .layer(CacheLayer::new(handle.clone()));
    let (addr, client) = (serve(app).await, client());
    for (path, vouches) in [("/plain", false), ("/vouched", true)] {
        let first = until_hit(&client, addr, path).await;
        handle.invalidate_soft(path).await.unwrap();
        let head = request(&client, "HEAD", addr, path, &[]).await;
        assert_eq!(head.status, StatusCode::OK, "{path}");
        let next = get(&client, addr, path).await;
        if vouches {
            assert_eq!(
                next.x_cache(),
                "HIT",
                "{path}: the matching validator vouched"
            );
            assert_eq!(next.text(), first.text(), "{path}");
        } else {
            assert_ne!(
                (next.x_cache(), next.text()),
                ("HIT", first.text()),
                "{path}: a HEAD without validators made the invalidated body fresh"
            );
        }
    }
}
