//! The purge endpoints (`PurgeLayer`) in front of a real axum server: what a purge removes,
//! and every refusal, each checked to have removed nothing.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tower::ServiceExt;
use tower_response_cache::{CacheHandle, CacheLayer, PurgeLayer};

use crate::support::{client, get, send, serve, until_hit, HttpClient, Origin};

const TOKEN: &str = "0123456789abcdef-purge-token";

/// `/company/{c}/report` is cached under `company:{c}`; the rest by path.
fn cache_layer(handle: CacheHandle) -> CacheLayer {
    CacheLayer::new(handle).key_fn(|parts| {
        let path = parts.uri.path();
        match path.strip_prefix("/company/") {
            Some(rest) => {
                let company = rest.strip_suffix("/report")?;
                Some(format!("company:{company}"))
            }
            None => Some(path.to_owned()),
        }
    })
}

struct Server {
    addr: SocketAddr,
    client: HttpClient,
    handle: CacheHandle,
    origin: Origin,
}

impl Server {
    async fn start(configure: impl FnOnce(PurgeLayer) -> PurgeLayer) -> Server {
        let handle = CacheHandle::in_memory();
        let origin = Origin::default();
        let cache = cache_layer(handle.clone());
        let purge = configure(PurgeLayer::new(&cache, TOKEN));
        let addr = serve(origin.app(cache).layer(purge)).await;
        Server {
            addr,
            client: client(),
            handle,
            origin,
        }
    }

    async fn purge(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value, http::HeaderMap) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = Full::new(Bytes::copy_from_slice(body.as_bytes()));
        let answer = send(&self.client, request.body(body).unwrap()).await;
        let json = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {:?}", answer.body));
        assert_eq!(answer.header("cache-control"), "no-store");
        (answer.status.as_u16(), json, answer.headers)
    }

    async fn with_token(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let auth = format!("Bearer {TOKEN}");
        let (status, json, _) = self
            .purge(method, path, &[("authorization", &auth)], body)
            .await;
        (status, json)
    }

    async fn x_cache(&self, path: &str) -> String {
        get(&self.client, self.addr, path)
            .await
            .x_cache()
            .to_owned()
    }
}

#[tokio::test]
async fn a_purge_of_a_path_removes_every_variant_of_its_key_and_nothing_else() {
    let server = Server::start(|p| p).await;
    for path in [
        "/company/A/report?from=1",
        "/company/A/report?from=2",
        "/company/B/report",
    ] {
        until_hit(&server.client, server.addr, path).await;
    }
    let calls = server.origin.calls();

    let (status, json) = server.with_token("PURGE", "/company/A/report", "").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["key"], "company:A");
    assert_eq!(json["removed"], 2);

    assert_eq!(server.x_cache("/company/A/report?from=1").await, "MISS");
    assert_eq!(server.x_cache("/company/A/report?from=2").await, "MISS");
    assert_eq!(server.x_cache("/company/B/report").await, "HIT");
    assert_eq!(server.origin.calls(), calls + 2);
    // The query of a PURGE selects nothing: the key's variants all go.
    until_hit(&server.client, server.addr, "/company/A/report?from=1").await;
    let (_, json) = server
        .with_token("PURGE", "/company/A/report?from=9", "")
        .await;
    assert_eq!(json["removed"], 2);
}

#[tokio::test]
async fn a_path_the_cache_layer_keys_as_none_is_a_bad_request() {
    let server = Server::start(|p| p).await;
    let (status, json) = server.with_token("PURGE", "/company/A/other", "").await;
    assert_eq!(status, 400);
    assert!(
        json["error"].as_str().unwrap().contains("no cache key"),
        "{json}"
    );
}

#[tokio::test]
async fn the_json_post_purges_by_pattern_tag_softly_or_all() {
    let server = Server::start(|p| p).await;
    let paths = ["/a/1", "/a/2", "/b?tag=blue", "/c?tag=blue", "/d"];
    for path in paths {
        until_hit(&server.client, server.addr, path).await;
    }
    let post = |body: &'static str| server.with_token("POST", "/_cache/purge", body);

    assert_eq!(
        post(r#"{"pattern": "/a/*"}"#).await,
        (200, serde_json::json!({"removed": 2}))
    );
    assert_eq!(server.x_cache("/a/1").await, "MISS");
    assert_eq!(server.x_cache("/b?tag=blue").await, "HIT");

    assert_eq!(post(r#"{"tag": "blue"}"#).await.1["removed"], 2);
    assert_eq!(server.x_cache("/b?tag=blue").await, "MISS");
    assert_eq!(server.x_cache("/d").await, "HIT");

    // Soft: marked stale, not removed; without a stale window it reads as a miss.
    assert_eq!(post(r#"{"pattern": "/d", "soft": true}"#).await.0, 200);
    assert_eq!(server.x_cache("/d").await, "MISS");

    until_hit(&server.client, server.addr, "/d").await;
    until_hit(&server.client, server.addr, "/a/1").await;
    let (status, json) = post(r#"{"all": true}"#).await;
    assert_eq!(status, 200);
    assert!(json["removed"].as_u64().unwrap() >= 2, "{json}");
    assert_eq!(server.x_cache("/d").await, "MISS");
    assert_eq!(server.x_cache("/a/1").await, "MISS");
}

#[tokio::test]
async fn every_refusal_says_why_and_purges_nothing() {
    // More requests than the default rate allows in a second.
    let server =
        Server::start(|p| p.max_body_size(64).rate_limit(100, Duration::from_secs(1))).await;
    until_hit(&server.client, server.addr, "/company/A/report").await;
    let purge = |headers: &'static [(&'static str, &'static str)], body: &'static str| {
        server.purge("POST", "/_cache/purge", headers, body)
    };
    let good = r#"{"pattern": "company:*"}"#;

    let (status, json, headers) = purge(&[], good).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("missing bearer token"))
    );
    assert_eq!(headers["www-authenticate"], r#"Bearer realm="purge""#);

    let (status, json, headers) = purge(
        &[("authorization", "Bearer 0123456789abcdef-purge-tokeN")],
        good,
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("wrong bearer token"))
    );
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    // A prefix of the token, the token under another scheme: wrong too.
    let (status, ..) = purge(&[("authorization", "Bearer 0123456789abcdef")], good).await;
    assert_eq!(status, 401);
    let (status, ..) = purge(
        &[("authorization", "Basic 0123456789abcdef-purge-token")],
        good,
    )
    .await;
    assert_eq!(status, 401);

    let auth = ("authorization", "Bearer 0123456789abcdef-purge-token");
    let big = r#"{"pattern": "company:*", "padding_padding_padding_padding_padding": 1}"#;
    let (status, json, _) = server.purge("POST", "/_cache/purge", &[auth], big).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (413, Some("body over 64 bytes"))
    );

    for (body, reason) in [
        (r#"{"pattern": ""}"#, "`pattern` is empty"),
        ("{\"pattern\": \"company:\\u0000\"}", "control character"),
        (r#"{"pattern": "a", "tag": "b"}"#, "only one"),
        (r#"{"pattern": "#, "bad JSON"),
        (r#"{"tag": "t", "soft": true}"#, "`soft` applies"),
    ] {
        let (status, json, _) = server.purge("POST", "/_cache/purge", &[auth], body).await;
        assert_eq!(status, 400, "{body}: {json}");
        assert!(
            json["error"].as_str().unwrap().contains(reason),
            "{body}: {json}"
        );
    }

    let (status, _, headers) = server.purge("GET", "/_cache/purge", &[auth], "").await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST, PURGE");

    // None of it purged anything.
    assert_eq!(server.x_cache("/company/A/report").await, "HIT");
    assert_eq!(server.handle.stats().invalidations, 0);
}

#[tokio::test]
async fn a_body_without_a_length_is_read_only_up_to_the_limit() {
    let cache = cache_layer(CacheHandle::in_memory());
    let app = Origin::default()
        .app(cache.clone())
        .layer(PurgeLayer::new(&cache, TOKEN).max_body_size(1024));
    // A stream that would never end: the endpoint stops reading at the limit.
    let endless = futures_util::stream::repeat_with(|| {
        Ok::<_, std::io::Error>(Bytes::from_static(b"[[[[[[[["))
    });
    let request = Request::post("/_cache/purge")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from_stream(endless))
        .unwrap();
    let answer = app.oneshot(request).await.unwrap();
    assert_eq!(answer.status(), 413);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"error":"body over 1024 bytes"}"#);
}

#[tokio::test]
async fn past_the_rate_limit_every_request_is_refused_with_429_until_a_token_returns() {
    let server = Server::start(|p| p.rate_limit(3, Duration::from_secs(1))).await;
    until_hit(&server.client, server.addr, "/company/A/report").await;
    // Requests without a token count too: guessing is as slow as purging.
    assert_eq!(server.purge("PURGE", "/x", &[], "").await.0, 401);
    assert_eq!(server.with_token("PURGE", "/x", "").await.0, 200);
    assert_eq!(server.with_token("PURGE", "/x", "").await.0, 200);
    let (status, json) = server.with_token("PURGE", "/company/A/report", "").await;
    assert_eq!(
        (status, json["error"].as_str()),
        (429, Some("purge rate limit reached"))
    );
    let (status, _, headers) = server.purge("PURGE", "/company/A/report", &[], "").await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(server.x_cache("/company/A/report").await, "HIT");
    // One request's worth of time later, one more is taken.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, json) = server.with_token("PURGE", "/company/A/report", "").await;
    assert_eq!((status, json["removed"].as_u64()), (200, Some(1)));
}

#[tokio::test]
async fn other_requests_pass_through_untouched() {
    let server = Server::start(|p| p).await;
    // A POST elsewhere reaches the application (and invalidates its own path, as ever).
    let answer =
        crate::support::request(&server.client, "POST", server.addr, "/elsewhere", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "/elsewhere #1");
    assert_eq!(server.x_cache("/company/A/report").await, "MISS");
}
