//! The layer's rules, shown through a real axum server on a loopback port.

use std::time::Duration;

use crate::gated_store::GatedStore;
use crate::support::*;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use tower_response_cache::{CacheHandle, CacheLayer, CachePolicy, MemoryStore};

async fn start_with(layer: CacheLayer) -> (Origin, std::net::SocketAddr, HttpClient) {
    let origin = Origin::default();
    let addr = origin.serve(layer).await;
    (origin, addr, client())
}

async fn start() -> (Origin, std::net::SocketAddr, HttpClient, CacheHandle) {
    let handle = CacheHandle::builder(MemoryStore::new())
        .namespace("test")
        .build();
    let (origin, addr, client) = start_with(CacheLayer::new(handle.clone())).await;
    (origin, addr, client, handle)
}

#[tokio::test]
async fn a_repeat_read_is_a_hit_with_cache_headers() {
    let (origin, addr, client, handle) = start().await;
    let first = get(&client, addr, "/api/dashboard/ABC").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(
        first.header("cache-status"),
        "tower-response-cache; fwd=uri-miss; detail=storing"
    );
    assert!(first.header("age").is_empty());

    // The entry is written after the body ends, off the response path.
    let second = until_hit(&client, addr, "/api/dashboard/ABC").await;
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("age"), "0");
    assert!(second
        .header("cache-status")
        .starts_with("tower-response-cache; hit; ttl="));
    assert_eq!(origin.calls(), 1);
    let stats = handle.stats();
    assert_eq!((stats.stores, stats.entries), (1, 1));
    assert!(stats.hits >= 1);
}

#[tokio::test]
async fn by_default_each_spelling_of_a_query_is_its_own_entry() {
    let (origin, addr, client, handle) = start().await;
    get(&client, addr, "/q?b=2&a=1").await;
    stored(&handle, 1).await;
    assert_eq!(get(&client, addr, "/q?b=2&a=1").await.x_cache(), "HIT");
    assert_eq!(get(&client, addr, "/q?a=1&b=2").await.x_cache(), "MISS");
    assert_eq!(get(&client, addr, "/q?a=%31&b=2").await.x_cache(), "MISS");
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn with_normalize_query_equivalent_queries_share_an_entry_and_distinct_ones_never_do() {
    let handle = CacheHandle::builder(MemoryStore::new()).build();
    let layer =
        CacheLayer::new(handle.clone()).policy(CachePolicy::default().normalize_query(true));
    let (origin, addr, client) = start_with(layer).await;
    get(&client, addr, "/q?b=2&a=1").await;
    stored(&handle, 1).await;
    assert_eq!(get(&client, addr, "/q?a=1&b=2").await.x_cache(), "HIT");
    assert_eq!(get(&client, addr, "/q?a=%31&b=2").await.x_cache(), "HIT");
    assert_eq!(origin.calls(), 1);

    get(&client, addr, "/r?a=1&a=2").await;
    assert_eq!(get(&client, addr, "/r?a=2&a=1").await.x_cache(), "MISS");
    get(&client, addr, "/s?p=%2F").await;
    assert_eq!(get(&client, addr, "/s?p=/").await.x_cache(), "MISS");
}

#[tokio::test]
async fn credentials_bypass_and_private_answers_are_never_shared() {
    let (origin, addr, client, handle) = start().await;
    for header in [("authorization", "Bearer alice"), ("cookie", "sid=alice")] {
        let a = get_with(&client, addr, "/me", &[header]).await;
        assert_eq!(a.x_cache(), "BYPASS");
        assert_eq!(
            a.header("cache-status"),
            "tower-response-cache; fwd=request"
        );
    }
    // A response setting a cookie is not stored, so bob never sees alice's cookie.
    let alice = get(&client, addr, "/login?cookie=1").await;
    assert_eq!(alice.header("set-cookie"), "session=secret");
    let bob = get(&client, addr, "/login?cookie=1").await;
    assert_eq!(bob.x_cache(), "MISS");
    assert_eq!(origin.calls(), 4);
    assert_eq!(handle.stats().stores, 0);
    assert_eq!(handle.stats().bypasses, 2);
}

#[tokio::test]
async fn keyed_credentials_get_one_entry_per_user() {
    let handle = CacheHandle::in_memory();
    let layer = CacheLayer::new(handle.clone())
        .policy(CachePolicy::default().key_on_header(http::header::AUTHORIZATION));
    let (origin, addr, client) = start_with(layer).await;
    get_with(&client, addr, "/me", &[("authorization", "alice")]).await;
    stored(&handle, 1).await;
    let bob = get_with(&client, addr, "/me", &[("authorization", "bob")]).await;
    assert_eq!(bob.x_cache(), "MISS");
    let alice = get_with(&client, addr, "/me", &[("authorization", "alice")]).await;
    assert_eq!(alice.x_cache(), "HIT");
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn responses_that_forbid_storing_are_not_stored() {
    let (origin, addr, client, handle) = start().await;
    let cases = [
        ("cc=no-store", "cache-control"),
        ("cc=private", "cache-control"),
        ("cc=no-cache", "cache-control"),
        ("cc=max-age%3D0", "cache-control"),
        ("vary=*", "vary"),
        ("cookie=1", "set-cookie"),
        ("status=500", "status"),
        ("status=503", "status"),
        ("status=401", "status"),
        ("status=403", "status"),
        ("status=201", "status"),
    ];
    for (i, (query, detail)) in cases.iter().enumerate() {
        let path = format!("/n{i}?{query}");
        let first = get(&client, addr, &path).await;
        assert_eq!(
            first.header("cache-status"),
            format!("tower-response-cache; fwd=uri-miss; detail={detail}"),
            "{query}"
        );
        let second = get(&client, addr, &path).await;
        assert_eq!(
            second.x_cache(),
            "MISS",
            "{query} was served from the cache"
        );
    }
    assert_eq!(origin.calls(), 2 * cases.len());
    assert_eq!(handle.stats().stores, 0);
}

#[tokio::test]
async fn not_found_and_gone_are_stored() {
    let (origin, addr, client, handle) = start().await;
    get(&client, addr, "/missing?status=404").await;
    get(&client, addr, "/gone?status=410").await;
    stored(&handle, 2).await;
    let again = get(&client, addr, "/missing?status=404").await;
    assert_eq!(
        (again.status, again.x_cache()),
        (StatusCode::NOT_FOUND, "HIT")
    );
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn max_age_sets_the_ttl() {
    let (_, addr, client, handle) = start().await;
    get(&client, addr, "/fresh?cc=max-age%3D120").await;
    stored(&handle, 1).await;
    let hit = get(&client, addr, "/fresh?cc=max-age%3D120").await;
    let status = hit.header("cache-status");
    let ttl: u64 = status.rsplit("ttl=").next().unwrap().parse().unwrap();
    assert!((118..=120).contains(&ttl), "{status}");
}

#[tokio::test]
async fn a_successful_write_invalidates_its_path() {
    let (origin, addr, client, handle) = start().await;
    get(&client, addr, "/api/items").await;
    stored(&handle, 1).await;
    assert_eq!(get(&client, addr, "/api/items").await.x_cache(), "HIT");
    // A failed write leaves the entry alone.
    let failed = request(&client, "POST", addr, "/api/items?status=500", &[]).await;
    assert_eq!(failed.x_cache(), "BYPASS");
    assert_eq!(get(&client, addr, "/api/items").await.x_cache(), "HIT");
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let written = request(&client, method, addr, "/api/items", &[]).await;
        assert_eq!(written.status, StatusCode::OK);
        let after = get(&client, addr, "/api/items").await;
        assert_eq!(after.x_cache(), "MISS", "{method} did not invalidate");
        until_hit(&client, addr, "/api/items").await;
    }
    assert_eq!(origin.calls(), 1 + 1 + 4 * 2);
}

#[tokio::test]
async fn invalidate_by_pattern_removes_exactly_the_matching_keys() {
    let (origin, addr, client, handle) = start().await;
    for path in [
        "/api/dashboard/ABC",
        "/api/dashboard/ABD",
        "/api/dashboard/XYZ",
    ] {
        get(&client, addr, path).await;
        get(&client, addr, &format!("{path}?from=2024-01-01")).await;
    }
    stored(&handle, 6).await;
    let removed = handle.invalidate("/api/dashboard/AB[CD]").await.unwrap();
    assert_eq!(removed, 4, "every variant of both keys");
    for path in ["/api/dashboard/ABC", "/api/dashboard/ABD?from=2024-01-01"] {
        assert_eq!(get(&client, addr, path).await.x_cache(), "MISS", "{path}");
    }
    for path in ["/api/dashboard/XYZ", "/api/dashboard/XYZ?from=2024-01-01"] {
        assert_eq!(get(&client, addr, path).await.x_cache(), "HIT", "{path}");
    }
    assert_eq!(origin.calls(), 8);
    assert_eq!(handle.invalidate("/api/*").await.unwrap(), 4);
    assert_eq!(handle.stats().entries, 0);
}

#[tokio::test]
async fn the_key_fn_names_the_logical_key_and_its_none_bypasses() {
    let handle = CacheHandle::in_memory();
    let layer = CacheLayer::new(handle.clone()).key_fn(|parts| {
        let guid = parts.uri.path().strip_prefix("/api/dashboard/")?;
        Some(format!("dashboard:{guid}"))
    });
    let (origin, addr, client) = start_with(layer).await;
    get(&client, addr, "/api/dashboard/ABC?from=2024-01-01").await;
    get(&client, addr, "/api/dashboard/ABC?from=2024-02-01").await;
    get(&client, addr, "/other").await;
    // Paths the key fn declines bypass the cache.
    assert_eq!(get(&client, addr, "/other").await.x_cache(), "BYPASS");
    stored(&handle, 2).await;
    assert_eq!(handle.invalidate("dashboard:ABC*").await.unwrap(), 2);
    assert_eq!(
        get(&client, addr, "/api/dashboard/ABC?from=2024-01-01")
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(origin.calls(), 5);
}

#[tokio::test]
async fn cache_tags_are_stripped_from_answers_and_invalidate_their_entries() {
    let (_, addr, client, handle) = start().await;
    let first = get(&client, addr, "/t1?tag=company:ABC,%20dashboard").await;
    assert!(first.headers.get("cache-tag").is_none());
    get(&client, addr, "/t2?tag=company:XYZ").await;
    stored(&handle, 2).await;
    let hit = get(&client, addr, "/t1?tag=company:ABC,%20dashboard").await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(hit.headers.get("cache-tag").is_none());
    assert_eq!(handle.invalidate_tag("dashboard").await.unwrap(), 1);
    let t1 = get(&client, addr, "/t1?tag=company:ABC,%20dashboard").await;
    assert_eq!(t1.x_cache(), "MISS");
    assert_eq!(
        get(&client, addr, "/t2?tag=company:XYZ").await.x_cache(),
        "HIT"
    );
}

#[tokio::test]
async fn head_is_answered_from_get_and_never_stored() {
    let (origin, addr, client, handle) = start().await;
    let head = request(&client, "HEAD", addr, "/h", &[]).await;
    assert_eq!(head.x_cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(handle.stats().stores, 0);
    assert_eq!(get(&client, addr, "/h").await.x_cache(), "MISS");
    stored(&handle, 1).await;
    let head = request(&client, "HEAD", addr, "/h", &[]).await;
    assert_eq!(head.x_cache(), "HIT");
    assert!(head.body.is_empty());
    let hit = get(&client, addr, "/h").await;
    let get_len = hit.body.len();
    // The entry adds no `Content-Length`: the server writes it from the body's exact size,
    // and the `HEAD` answer, which has no body, says it itself.
    assert_eq!(hit.header("content-length"), get_len.to_string());
    assert_eq!(head.header("content-length"), get_len.to_string());
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn vary_keeps_one_entry_per_header_value() {
    let (origin, addr, client, handle) = start().await;
    let path = "/v?vary=accept-language";
    let en = get_with(&client, addr, path, &[("accept-language", "en")]).await;
    stored(&handle, 1).await;
    let de = get_with(&client, addr, path, &[("accept-language", "de")]).await;
    assert_eq!(de.x_cache(), "MISS");
    assert_eq!(
        de.header("cache-status"),
        "tower-response-cache; fwd=vary-miss; detail=storing"
    );
    stored(&handle, 2).await;
    let en2 = get_with(&client, addr, path, &[("accept-language", "en")]).await;
    let de2 = get_with(&client, addr, path, &[("accept-language", "de")]).await;
    assert_eq!((en2.x_cache(), de2.x_cache()), ("HIT", "HIT"));
    assert!(en2.text().ends_with("lang=en") && de2.text().ends_with("lang=de"));
    assert_eq!(en2.body, en.body);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn bodies_over_the_cap_stream_through_unstored() {
    let handle = CacheHandle::in_memory();
    let layer = CacheLayer::new(handle.clone()).policy(CachePolicy::default().max_body_size(1000));
    let (origin, addr, client) = start_with(layer).await;
    let big = get(&client, addr, "/big?size=5000").await;
    assert_eq!(big.body.len(), 5000);
    assert_eq!(
        big.header("cache-status"),
        "tower-response-cache; fwd=uri-miss; detail=size"
    );
    assert_eq!(get(&client, addr, "/big?size=5000").await.body.len(), 5000);
    get(&client, addr, "/small?size=999").await;
    stored(&handle, 1).await;
    assert_eq!(get(&client, addr, "/small?size=999").await.x_cache(), "HIT");
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn concurrent_misses_reach_the_origin_once() {
    let (origin, addr, client, handle) = start().await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { get(&client, addr, "/slow?delay_ms=200").await })
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        bodies.push(answer.body);
    }
    assert_eq!(origin.calls(), 1);
    assert!(bodies.iter().all(|b| *b == bodies[0]));
    assert_eq!(handle.stats().coalesced, 19);
}

#[tokio::test]
async fn a_miss_whose_lookup_came_just_before_a_flight_stored_the_entry_reads_the_entry() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let store = GatedStore {
        inner: MemoryStore::new(),
        gate: gate.clone(),
        first: first.clone(),
        failing: Default::default(),
        invalidate_delay: Duration::ZERO,
    };
    let handle = CacheHandle::builder(store).build();
    let (origin, addr, client) = start_with(CacheLayer::new(handle.clone())).await;
    let late = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, addr, "/k").await })
    };
    // The late request's lookup has missed (and waits at the gate)...
    let at_gate = || async { (!first.load(std::sync::atomic::Ordering::SeqCst)).then_some(()) };
    eventually(Duration::from_secs(5), at_gate).await;
    // ...while another request leads, fetches, stores and ends its flight.
    let first = get(&client, addr, "/k").await;
    stored(&handle, 1).await;
    assert_eq!(origin.calls(), 1);
    gate.add_permits(1);
    let late = late.await.unwrap();
    assert_eq!(
        late.text(),
        first.text(),
        "the stored entry, not a second fetch"
    );
    assert_eq!(late.x_cache(), "HIT");
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_typed_read_whose_lookup_came_just_before_a_flight_stored_the_value_reads_it() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let first = Arc::new(AtomicBool::new(true));
    let store = GatedStore {
        inner: MemoryStore::new(),
        gate: gate.clone(),
        first: first.clone(),
        failing: Default::default(),
        invalidate_delay: Duration::ZERO,
    };
    let handle = CacheHandle::builder(store).build();
    let inits = Arc::new(AtomicUsize::new(0));
    let compute = |inits: Arc<AtomicUsize>| async move { inits.fetch_add(1, Ordering::SeqCst) + 1 };
    let late = {
        let (handle, inits) = (handle.clone(), inits.clone());
        tokio::spawn(async move { handle.get_or_insert_with("k", compute(inits)).await })
    };
    let at_gate = || async { (!first.load(Ordering::SeqCst)).then_some(()) };
    eventually(Duration::from_secs(5), at_gate).await;
    let value: usize = handle.get_or_insert_with("k", compute(inits.clone())).await;
    assert_eq!(value, 1);
    gate.add_permits(1);
    assert_eq!(
        late.await.unwrap(),
        1,
        "the stored value, not a second computation"
    );
    assert_eq!(inits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn followers_of_an_unstorable_response_do_not_queue() {
    let (origin, addr, client, _) = start().await;
    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(
                async move { get(&client, addr, "/nostore?delay_ms=300&cc=no-store").await },
            )
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    // Served one after another, ten would take 3 s; released together, about two delays.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(origin.calls(), 10);
}

#[tokio::test]
async fn a_response_fetched_before_an_invalidation_is_not_stored_after_it() {
    let (origin, addr, client, handle) = start().await;
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, addr, "/api/dashboard/ABC?delay_ms=300").await })
    };
    // Let the slow request reach the origin, then invalidate while it is in flight.
    assert!(eventually(Duration::from_secs(5), || async { origin.calls() > 0 }).await);
    handle.invalidate("/api/dashboard/*").await.unwrap();
    let stale = slow.await.unwrap();
    assert_eq!(stale.x_cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let next = get(&client, addr, "/api/dashboard/ABC?delay_ms=300").await;
    assert_eq!(
        next.x_cache(),
        "MISS",
        "the pre-invalidation response was stored"
    );
    assert_eq!(origin.calls(), 2);
    assert_eq!(handle.stats().stores, 1);
}

/// Send a request line over a plain socket and return the status line.
async fn raw_status(addr: std::net::SocketAddr, target: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn malformed_or_huge_requests_get_a_correct_answer_and_still_cache() {
    let (_, addr, client, handle) = start().await;
    // Near the longest URI `http` can represent (65 534 bytes).
    let huge_query = format!("/big?{}", "a=1&".repeat(16_000));
    let a = get(&client, addr, &huge_query).await;
    assert_eq!(a.status, StatusCode::OK);
    // A full 64 KiB query over the raw socket: a clear refusal, and the server lives on.
    let status = raw_status(addr, &format!("/big?{}", "b".repeat(64 * 1024))).await;
    assert!(status.starts_with("HTTP/1.1 4"), "{status}");
    let bad_escapes = get(&client, addr, "/e?q=%&r=%G1&s=%4&t=%%41").await;
    assert_eq!(bad_escapes.status, StatusCode::OK);
    let bad_path = get(&client, addr, "/%FF%FE/%C3%28?x=%80").await;
    assert_eq!(bad_path.status, StatusCode::OK);
    let raw = [0xffu8, 0xfe, b'a'];
    let mut req = http::Request::get(format!("http://{addr}/bin"));
    req = req.header("x-binary", HeaderValue::from_bytes(&raw).unwrap());
    let bin = send(&client, req.body(Default::default()).unwrap()).await;
    assert_eq!(bin.status, StatusCode::OK);
    let many: Vec<String> = (0..100).map(|i| format!("x-h{i}")).collect();
    let vary_path = format!("/many?vary={}", many.join(","));
    assert_eq!(get(&client, addr, &vary_path).await.status, StatusCode::OK);
    stored(&handle, 5).await;
    assert_eq!(get(&client, addr, &vary_path).await.x_cache(), "HIT");
    assert_eq!(get(&client, addr, &huge_query).await.x_cache(), "HIT");
}

#[tokio::test]
async fn a_targeted_field_gives_this_cache_its_own_rules() {
    let handle = CacheHandle::in_memory();
    let policy = CachePolicy::default()
        .targeted_cache_control(HeaderName::from_static("portal-cache-control"));
    let (origin, addr, client) = start_with(CacheLayer::new(handle.clone()).policy(policy)).await;
    // Browsers are told not to store it; this cache keeps it for a minute.
    let path = "/api/dashboard/T?cc=no-store&pcc=max-age%3D60";
    let first = get(&client, addr, path).await;
    assert_eq!(first.header("cache-control"), "no-store");
    let mut hit = None;
    for _ in 0..100 {
        let answer = get(&client, addr, path).await;
        if answer.x_cache() == "HIT" {
            hit = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(hit.is_some(), "the targeted max-age was not honoured");
    // And the other way round: cacheable for browsers, private for this cache.
    let private = "/api/dashboard/P?cc=max-age%3D600&pcc=private";
    get(&client, addr, private).await;
    assert_eq!(get(&client, addr, private).await.x_cache(), "MISS");
    assert!(origin.calls() >= 3);
}

#[tokio::test]
async fn targeted_fields_override_cache_control_in_the_order_named() {
    let handle = CacheHandle::in_memory();
    let policy = CachePolicy::default()
        .targeted_cache_control(HeaderName::from_static("portal-cache-control"))
        .targeted_cache_control(HeaderName::from_static("cdn-cache-control"));
    let (origin, addr, client) = start_with(CacheLayer::new(handle.clone()).policy(policy)).await;
    // CDN-Cache-Control stores what Cache-Control forbids.
    let cdn = "/t/cdn?cc=no-store&cdn=max-age%3D60";
    get(&client, addr, cdn).await;
    stored(&handle, 1).await;
    assert_eq!(get(&client, addr, cdn).await.x_cache(), "HIT");
    // The field named first wins over the one named after it.
    let both = "/t/both?cdn=max-age%3D60&pcc=no-store";
    get(&client, addr, both).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(get(&client, addr, both).await.x_cache(), "MISS");
    // Without the policy naming it, CDN-Cache-Control is just a header.
    let (_, plain, client, _) = start().await;
    get(&client, plain, cdn).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(get(&client, plain, cdn).await.x_cache(), "MISS");
    assert_eq!(origin.calls(), 3);
}

/// Settings at their extremes are taken in, never a panic on the request path.
#[tokio::test]
async fn extreme_settings_never_panic() {
    let handle = CacheHandle::builder(tower_response_cache::MemoryStore::new())
        .hit_for_miss_ttl(Duration::MAX)
        .coalesce_timeout(Duration::MAX)
        .ttl(Duration::MAX)
        .build();
    let origin = Origin::default();
    let addr = origin.serve(CacheLayer::new(handle.clone())).await;
    let client = client();
    // An unstorable answer remembers its key (hit-for-miss) for the longest time allowed.
    for _ in 0..2 {
        let answer = get(&client, addr, "/x?cc=no-store").await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    // The positive control: the cache still stores and hits.
    assert_eq!(until_hit(&client, addr, "/y").await.x_cache(), "HIT");
}

/// A successful `POST` whose invalidation failed still answers the client (its write went
/// through), and says so in `Cache-Status`; one whose invalidation applied says nothing.
#[tokio::test]
async fn a_failed_invalidation_after_a_post_is_said_not_dropped() {
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = GatedStore {
        inner: MemoryStore::new(),
        gate: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        first: Default::default(),
        failing: failing.clone(),
        invalidate_delay: Duration::ZERO,
    };
    let handle = CacheHandle::builder(store).build();
    let (_origin, addr, client) = start_with(CacheLayer::new(handle)).await;
    let applied = request(&client, "POST", addr, "/k", &[]).await;
    assert_eq!(applied.status, StatusCode::OK);
    assert_eq!(
        applied.header("cache-status"),
        "tower-response-cache; fwd=method"
    );
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let refused = request(&client, "POST", addr, "/k", &[]).await;
    assert_eq!(refused.status, StatusCode::OK, "the write itself succeeded");
    assert_eq!(
        refused.header("cache-status"),
        "tower-response-cache; fwd=method; detail=invalidation-failed"
    );
}

/// Request smuggling on a keep-alive connection (Pingora CVE-2025-4366): a `GET` whose body
/// is unread when a hit answers would leave that body to be read as the next request. A
/// `GET` with a chunked body, or with `Expect: 100-continue` and a length, goes around the
/// cache, so its body is the origin's to read, and the connection carries exactly the
/// requests the client sent.
#[tokio::test]
async fn a_get_with_a_body_is_never_answered_from_the_cache_on_a_kept_alive_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (origin, addr, client, handle) = start().await;
    // The entry the raw requests below would be answered from (their `Host` is `test`).
    get_with(&client, addr, "/p", &[("host", "test")]).await;
    stored(&handle, 1).await;
    let warm = get_with(&client, addr, "/p", &[("host", "test")]).await;
    assert_eq!(warm.x_cache(), "HIT");
    let calls = origin.calls();
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: test\r\n\r\n";
    let chunked = format!(
        "GET /p HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    let expecting = format!(
        "GET /p HTTP/1.1\r\nhost: test\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    for request in [chunked, expecting] {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        // A plain GET closes the connection after the first answer(s).
        let last = "GET /p HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";
        socket.write_all(last.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(
            !answer.contains("/smuggled"),
            "a smuggled request was answered: {answer}"
        );
        let finals = answer.matches("http/1.1 200").count();
        assert_eq!(finals, 2, "two requests, two answers: {answer}");
        assert!(answer.contains("x-cache: bypass"), "{answer}");
        assert!(
            answer.contains("x-cache: hit"),
            "the plain GET is still a hit: {answer}"
        );
    }
    // The origin read the two bodies itself; the smuggled path never reached it.
    assert_eq!(origin.calls(), calls + 2);
}

/// A `304` is an answer to a client's condition: one the origin sends to a request without
/// validators is passed on, never stored, and never answers the next request.
#[tokio::test]
async fn a_304_to_a_request_without_validators_is_never_stored() {
    let (origin, addr, client, handle) = start().await;
    for _ in 0..2 {
        let answer = get(&client, addr, "/n?status=304&cc=max-age%3D60").await;
        assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
        assert_eq!(answer.x_cache(), "MISS");
    }
    assert_eq!(origin.calls(), 2);
    assert_eq!(handle.stats().stores, 0);
    // The positive control: the same answer as a 200 is stored.
    assert_eq!(
        until_hit(&client, addr, "/n?cc=max-age%3D60")
            .await
            .x_cache(),
        "HIT"
    );
}
