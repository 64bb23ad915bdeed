//! The RFC 9111 shared-cache preset, through the reverse-proxy example in front of a real
//! upstream server.

#[path = "../../examples/proxy.rs"]
mod proxy;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use tower_response_cache::CacheHandle;

struct Setup {
    upstream: Origin,
    proxy: std::net::SocketAddr,
    client: HttpClient,
    cache: CacheHandle,
}

async fn setup() -> Setup {
    let upstream = Origin::default();
    let origin = serve(upstream.router()).await;
    let cache = CacheHandle::in_memory();
    let upstream_uri = format!("http://{origin}").parse().unwrap();
    let proxy = serve(proxy::proxy_app(upstream_uri, cache.clone(), None)).await;
    Setup {
        upstream,
        proxy,
        client: client(),
        cache,
    }
}

impl Setup {
    fn calls(&self) -> usize {
        self.upstream.calls()
    }

    async fn stored(&self, n: u64) {
        stored(&self.cache, n).await;
    }
}

#[tokio::test]
async fn nothing_is_stored_without_freshness() {
    let s = setup().await;
    let first = get(&s.client, s.proxy, "/plain").await;
    assert_eq!(first.text(), "/plain #1");
    assert!(first.header("cache-status").ends_with("detail=freshness"));
    assert_eq!(get(&s.client, s.proxy, "/plain").await.text(), "/plain #2");
}

#[tokio::test]
async fn explicit_freshness_minus_age_is_the_ttl() {
    let s = setup().await;
    let path = "/fresh?cc=max-age%3D60&age=20";
    get(&s.client, s.proxy, path).await;
    s.stored(1).await;
    let hit = get(&s.client, s.proxy, path).await;
    assert_eq!(hit.x_cache(), "HIT");
    let ttl: u64 = hit
        .header("cache-status")
        .rsplit("ttl=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((38..=40).contains(&ttl), "{}", hit.header("cache-status"));
    assert_eq!(s.calls(), 1);
}

#[tokio::test]
async fn last_modified_gives_a_heuristic_lifetime() {
    let s = setup().await;
    get(&s.client, s.proxy, "/doc?lm_hour_ago").await;
    s.stored(1).await;
    let hit = get(&s.client, s.proxy, "/doc?lm_hour_ago").await;
    assert_eq!(hit.x_cache(), "HIT");
    let ttl: u64 = hit
        .header("cache-status")
        .rsplit("ttl=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((350..=360).contains(&ttl), "a tenth of an hour: {ttl}");
}

#[tokio::test]
async fn an_answer_to_an_authorized_request_is_shared_only_when_public() {
    let s = setup().await;
    let auth = [("authorization", "Bearer alice")];
    get_with(&s.client, s.proxy, "/me?cc=max-age%3D60", &auth).await;
    let again = get_with(&s.client, s.proxy, "/me?cc=max-age%3D60", &auth).await;
    assert_eq!(again.x_cache(), "MISS");
    assert!(again
        .header("cache-status")
        .ends_with("detail=authorization"));
    get_with(&s.client, s.proxy, "/pub?cc=public,%20max-age%3D60", &auth).await;
    s.stored(1).await;
    let shared = get(&s.client, s.proxy, "/pub?cc=public,%20max-age%3D60").await;
    assert_eq!(shared.x_cache(), "HIT");
}

#[tokio::test]
async fn a_request_asking_for_fresh_goes_to_the_origin_and_refreshes() {
    let s = setup().await;
    let path = "/r?cc=max-age%3D60";
    get(&s.client, s.proxy, path).await;
    s.stored(1).await;
    let forced = get_with(&s.client, s.proxy, path, &[("cache-control", "no-cache")]).await;
    assert_eq!(forced.text(), "/r #2");
    assert_eq!(
        forced.header("cache-status"),
        "tower-response-cache; fwd=request; detail=storing"
    );
    s.stored(2).await;
    assert_eq!(get(&s.client, s.proxy, path).await.text(), "/r #2");
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale() {
    let s = setup().await;
    // The response allows stale serving, but must-revalidate forbids it.
    let path = "/mr?cc=max-age%3D2,%20must-revalidate,%20stale-while-revalidate%3D60";
    get(&s.client, s.proxy, path).await;
    s.stored(1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(&s.client, s.proxy, path).await.x_cache(), "MISS");
}

#[tokio::test]
async fn unsafe_requests_invalidate_location_and_content_location() {
    let s = setup().await;
    for path in ["/items/1", "/items/2"] {
        get(&s.client, s.proxy, &format!("{path}?cc=max-age%3D60")).await;
    }
    s.stored(2).await;
    // The POST's response points at /items/1 (same origin, relative).
    let post = request(&s.client, "POST", s.proxy, "/items?location=/items/1", &[]).await;
    assert_eq!(post.status, http::StatusCode::OK);
    assert_eq!(
        get(&s.client, s.proxy, "/items/1?cc=max-age%3D60")
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(
        get(&s.client, s.proxy, "/items/2?cc=max-age%3D60")
            .await
            .x_cache(),
        "HIT"
    );
    // A Location on another origin is left alone.
    request(
        &s.client,
        "POST",
        s.proxy,
        "/items?location=http://elsewhere.example/items/2",
        &[],
    )
    .await;
    assert_eq!(
        get(&s.client, s.proxy, "/items/2?cc=max-age%3D60")
            .await
            .x_cache(),
        "HIT"
    );
}

#[test]
fn the_proxy_takes_listen_and_upstream_flags_and_refuses_anything_else() {
    let args = |list: &[&str]| proxy::parse_args(list.iter().map(|s| s.to_string()));
    let (listen, upstream) =
        args(&["--listen", "127.0.0.1:9000", "--upstream", "http://a:1"]).unwrap();
    assert_eq!(listen, "127.0.0.1:9000");
    assert_eq!(upstream, "http://a:1/");
    assert!(args(&[]).is_ok());
    for bad in [
        &["http://a:1", "127.0.0.1:9000"][..],
        &["--listen"],
        &["--listen", "not-an-address"],
        &["--upstream", "/relative"],
        &["--verbose", "yes"],
    ] {
        assert!(args(bad).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn cdn_cache_control_takes_precedence_over_cache_control() {
    let s = setup().await;
    let path = "/cdn?cc=no-store&cdn=max-age%3D600";
    get(&s.client, s.proxy, path).await;
    s.stored(1).await;
    assert_eq!(get(&s.client, s.proxy, path).await.x_cache(), "HIT");
    // Private for this cache although Cache-Control allows it; an invalid targeted
    // field is ignored.
    for path in [
        "/cdn2?cc=max-age%3D600&cdn=private",
        "/cdn3?cc=no-store&cdn=max-age%3D%2260%22",
    ] {
        get(&s.client, s.proxy, path).await;
        assert_ne!(
            get(&s.client, s.proxy, path).await.x_cache(),
            "HIT",
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_age_sent_counts_the_origins_age_and_headers_named_by_connection_are_not_stored() {
    let s = setup().await;
    let path = "/aged?cc=max-age%3D600&age=30&connection=a&a=1&c=3";
    get(&s.client, s.proxy, path).await;
    s.stored(1).await;
    let hit = get(&s.client, s.proxy, path).await;
    assert_eq!(hit.x_cache(), "HIT");
    let age: u64 = hit.header("age").parse().unwrap();
    assert!(age >= 30, "age {age} forgets the origin's 30 s");
    assert_eq!(hit.header("c"), "3");
    assert_eq!(
        hit.header("a"),
        "",
        "a header named by Connection was replayed"
    );
}

#[tokio::test]
async fn a_stale_entry_is_validated_upstream_and_freshened_by_a_304() {
    let s = setup().await;
    let path = "/validated?cc=max-age%3D1&etag=%22v1%22&x=one";
    assert_eq!(get(&s.client, s.proxy, path).await.text(), "/validated #1");
    s.stored(1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Stale: the cache asks with If-None-Match and the upstream says 304.
    let validated = get(&s.client, s.proxy, path).await;
    assert_eq!(s.calls(), 2);
    assert_eq!(
        validated.text(),
        "/validated #1",
        "the stored body, not refetched"
    );
    assert!(
        validated.header("cache-status").contains("fwd-status=304"),
        "{}",
        validated.header("cache-status")
    );
    // Freshened: served from the cache again.
    let hit = get(&s.client, s.proxy, path).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.text(), "/validated #1");
    assert_eq!(s.calls(), 2);
    // A client's own condition is answered from the freshened entry.
    let conditional = get_with(&s.client, s.proxy, path, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(conditional.status, axum::http::StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn request_max_age_min_fresh_max_stale_and_only_if_cached_are_honoured() {
    let s = setup().await;
    // only-if-cached with nothing stored: 504, and the upstream is never asked.
    let none = get_with(
        &s.client,
        s.proxy,
        "/oic",
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(none.status, axum::http::StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(s.calls(), 0);
    // max-age: an answer older than the request accepts is not served.
    let path = "/ma?cc=max-age%3D600";
    get(&s.client, s.proxy, path).await;
    s.stored(1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh_enough = get_with(&s.client, s.proxy, path, &[("cache-control", "max-age=60")]).await;
    assert_eq!(fresh_enough.x_cache(), "HIT");
    let too_old = get_with(
        &s.client,
        s.proxy,
        path,
        &[("cache-control", "max-age=0, x=1")],
    )
    .await;
    assert_eq!(too_old.x_cache(), "MISS", "not even as a stale answer");
    assert_eq!(s.calls(), 2);
    let picky = get_with(
        &s.client,
        s.proxy,
        path,
        &[("cache-control", "min-fresh=6000")],
    )
    .await;
    assert_eq!(picky.x_cache(), "MISS", "not even as a stale answer");
    assert_eq!(s.calls(), 3);
    let calls = s.calls();
    // max-stale: an expired answer the request accepts is served without the upstream.
    let path = "/ms?cc=max-age%3D1";
    get(&s.client, s.proxy, path).await;
    s.stored(2).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = get_with(
        &s.client,
        s.proxy,
        path,
        &[("cache-control", "max-stale=60")],
    )
    .await;
    assert_eq!(stale.x_cache(), "STALE");
    assert_eq!(s.calls(), calls + 1);
}

#[tokio::test]
async fn a_clients_own_condition_goes_upstream_when_nothing_is_stored() {
    let s = setup().await;
    let path = "/cond?cc=max-age%3D600&etag=%22v1%22";
    // Nothing stored: the condition is forwarded and the upstream's 304 passes through.
    let first = get_with(&s.client, s.proxy, path, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(first.status, axum::http::StatusCode::NOT_MODIFIED);
    assert_eq!(s.calls(), 1);
    // The key is not marked uncacheable by it: a plain read is stored and then hit.
    assert_eq!(get(&s.client, s.proxy, path).await.text(), "/cond #2");
    s.stored(1).await;
    assert_eq!(get(&s.client, s.proxy, path).await.x_cache(), "HIT");
    // Stored now: the condition is answered here.
    let cached = get_with(&s.client, s.proxy, path, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(cached.status, axum::http::StatusCode::NOT_MODIFIED);
    assert_eq!(s.calls(), 2);
}

/// An upstream that answers every request with `103 Early Hints` and then a cacheable
/// `200`, counting the requests.
async fn early_hints_upstream(calls: Arc<AtomicUsize>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let calls = calls.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                    if request.windows(4).any(|w| w == b"\r\n\r\n") {
                        calls.fetch_add(1, Ordering::SeqCst);
                        request.clear();
                        let hints =
                            "HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n";
                        socket.write_all(hints.as_bytes()).await.unwrap();
                        socket.flush().await.unwrap();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let last = "HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: 2\r\n\r\nok";
                        socket.write_all(last.as_bytes()).await.unwrap();
                    }
                }
            });
        }
    });
    addr
}

/// One request over a plain socket: everything the proxy wrote, interim responses included.
async fn raw_exchange(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).to_lowercase()
}

#[tokio::test]
async fn interim_responses_reach_the_client_and_are_never_cached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = early_hints_upstream(calls.clone()).await;
    let cache = CacheHandle::in_memory();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = proxy::proxy_app(
        format!("http://{origin}").parse().unwrap(),
        cache.clone(),
        None,
    );
    tokio::spawn(proxy::serve(listener, app));

    let first = raw_exchange(addr, "/hinted").await;
    assert!(first.starts_with("http/1.1 103"), "{first}");
    let final_head = first.find("http/1.1 200").expect("a final response");
    assert!(
        first[..final_head].contains("link: </s.css>; rel=preload"),
        "{first}"
    );
    assert!(first.ends_with("\r\n\r\nok"), "{first}");
    stored(&cache, 1).await;
    // From the cache: the final response alone, no 103 and none of its fields.
    let second = raw_exchange(addr, "/hinted").await;
    assert!(second.starts_with("http/1.1 200"), "{second}");
    assert!(second.contains("x-cache: hit"), "{second}");
    assert!(!second.contains("link:"), "{second}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn ranges_are_answered_from_a_stored_200_and_otherwise_forwarded_unstored() {
    let s = setup().await;
    let path = "/bytes?cc=max-age%3D600";
    assert_eq!(get(&s.client, s.proxy, path).await.text(), "/bytes #1");
    s.stored(1).await;
    // The stored body is the 9 bytes `/bytes #1`.
    for (range, status, body, content_range) in [
        ("bytes=1-", 206, "bytes #1", "bytes 1-8/9"),
        ("bytes=0-0", 206, "/", "bytes 0-0/9"),
        ("bytes=-1", 206, "1", "bytes 8-8/9"),
        ("bytes=20-", 416, "", "bytes */9"),
    ] {
        let answer = get_with(&s.client, s.proxy, path, &[("range", range)]).await;
        assert_eq!(answer.status.as_u16(), status, "{range}");
        assert_eq!(answer.text(), body, "{range}");
        assert_eq!(answer.header("content-range"), content_range, "{range}");
        assert_eq!(answer.x_cache(), "HIT", "{range}");
    }
    assert_eq!(s.calls(), 1);
    // A client that wants it fresh: forwarded as sent, and what comes back is not stored.
    let forced = get_with(
        &s.client,
        s.proxy,
        path,
        &[("range", "bytes=0-0"), ("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(forced.text(), "/bytes #2", "the upstream ignores ranges");
    assert_eq!(get(&s.client, s.proxy, path).await.text(), "/bytes #1");
    // Nothing stored: forwarded, and the answer to a range never fills the cache.
    let miss = "/unstored?cc=max-age%3D600";
    let ranged = get_with(&s.client, s.proxy, miss, &[("range", "bytes=0-0")]).await;
    assert_eq!(ranged.x_cache(), "MISS");
    assert_eq!(s.calls(), 3);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(&s.client, s.proxy, miss).await.x_cache(), "MISS");
    assert_eq!(s.calls(), 4);
}

#[tokio::test]
async fn freshness_fields_are_read_to_the_letter() {
    let s = setup().await;
    // Conflicting max-age, a decimal, spaces around `=`: no usable lifetime, not reused.
    for (i, cc) in [
        "max-age%3D60,%20max-age%3D120",
        "max-age%3D60.5",
        "max-age%20%3D%2060",
    ]
    .iter()
    .enumerate()
    {
        let path = format!("/strict{i}?cc={cc}");
        get(&s.client, s.proxy, &path).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let again = get(&s.client, s.proxy, &path).await;
        assert_ne!(again.x_cache(), "HIT", "{cc}");
    }
    assert_eq!(s.calls(), 6);
    // An Age with a suffix is not an age: the whole max-age is the lifetime.
    let path = "/suffixed?cc=max-age%3D600&age=500s";
    get(&s.client, s.proxy, path).await;
    s.stored(1).await;
    let hit = get(&s.client, s.proxy, path).await;
    assert_eq!(hit.x_cache(), "HIT");
    let ttl: u64 = hit
        .header("cache-status")
        .rsplit("ttl=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ttl > 500, "{}", hit.header("cache-status"));
}

#[tokio::test]
async fn an_unknown_unsafe_method_invalidates() {
    let s = setup().await;
    let path = "/searched?cc=max-age%3D600";
    get(&s.client, s.proxy, path).await;
    s.stored(1).await;
    assert_eq!(get(&s.client, s.proxy, path).await.x_cache(), "HIT");
    let search = request(&s.client, "M-SEARCH", s.proxy, path, &[]).await;
    assert_eq!(search.status, http::StatusCode::OK);
    assert_eq!(get(&s.client, s.proxy, path).await.x_cache(), "MISS");
}

#[tokio::test]
async fn with_a_purge_token_the_proxy_answers_purge_itself_and_without_one_forwards_it() {
    let upstream = Origin::default();
    let origin = serve(upstream.router()).await;
    let cache = CacheHandle::in_memory();
    let token = "proxy-purge-token-0123456789";
    let purging = serve(proxy::proxy_app(
        format!("http://{origin}").parse().unwrap(),
        cache.clone(),
        Some(token),
    ))
    .await;
    let client = client();
    let path = "/page?cc=max-age%3D600";
    until_hit(&client, purging, path).await;
    let calls = upstream.calls();
    let auth = format!("Bearer {token}");
    let purged = request(
        &client,
        "PURGE",
        purging,
        "/page",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(purged.status, 200, "{}", purged.text());
    assert_eq!(purged.text(), r#"{"key":"/page","removed":1}"#);
    let refused = request(&client, "PURGE", purging, "/page", &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(upstream.calls(), calls, "no purge reached the upstream");
    assert_eq!(get(&client, purging, path).await.x_cache(), "MISS");

    // Without a token a PURGE is the upstream's business, like any other method.
    let plain = serve(proxy::proxy_app(
        format!("http://{origin}").parse().unwrap(),
        CacheHandle::in_memory(),
        None,
    ))
    .await;
    let forwarded = request(
        &client,
        "PURGE",
        plain,
        "/page",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(forwarded.text(), format!("/page #{}", upstream.calls()));
}
