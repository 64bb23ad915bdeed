//! The poisoning rule, stated as a property: against an origin that echoes every input it
//! reads, a cached answer always echoes the request it answers. By default the origin
//! reads the raw query (as a signature check or a proxy does); with
//! `CachePolicy::normalize_query` it reads the query as a form decoder does, the case that
//! setting is documented for. Requests are generated
//! from escaped and plain paths, reordered and duplicated query pairs, host forms,
//! forwarding, credential, override and `Vary`-ed headers, and bodies.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_response_cache::{CacheHandle, CacheLayer, CachePolicy, MemoryStore};

type Req = Request<Full<Bytes>>;

/// Headers the origin reads (so the cache must key on them or go around).
const READ_HEADERS: [&str; 9] = [
    "x-forwarded-host",
    "forwarded",
    "x-forwarded-proto",
    "x-api-key",
    "authorization",
    "cookie",
    "x-http-method-override",
    "x-original-url",
    "accept-language",
];

/// What a form decoder makes of a query: pairs, `+` as space, escapes decoded, in the
/// order a map keyed by name would list them (stable by name).
fn decoded_pairs(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    fn decode(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if hex(i + 1).is_some() && hex(i + 2).is_some() => {
                    out.push((hex(i + 1).unwrap() * 16 + hex(i + 2).unwrap()) as u8);
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        out
    }
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (decode(n), decode(v)),
            None => (decode(p), Vec::new()),
        })
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
}

/// How the origin reads the query, and whether the layer normalises it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum QueryReading {
    /// The raw query; the layer's default key.
    Raw,
    /// A form decoder's pairs; the layer with `normalize_query(true)`.
    Decoded,
}

/// Everything the origin reads, as the origin sees it.
fn echo(parts: &http::request::Parts, body: &[u8], reading: QueryReading) -> String {
    let query = match reading {
        QueryReading::Raw => format!("{:?}", parts.uri.query()),
        QueryReading::Decoded => format!("{:?}", parts.uri.query().map(decoded_pairs)),
    };
    let host = parts
        .headers
        .get("host")
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let mut out = format!(
        "path={} query={query} host={host:?} authority={:?} body={:?}",
        parts.uri.path(),
        parts.uri.authority().map(|a| a.as_str()),
        body
    );
    for name in READ_HEADERS {
        let values: Vec<_> = parts.headers.get_all(name).iter().collect();
        out.push_str(&format!(" {name}={values:?}"));
    }
    // An origin choosing an encoding reads the set of codings, whatever their order.
    let mut codings: Vec<String> = parts
        .headers
        .get_all("accept-encoding")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|c| c.replace(' ', "").to_ascii_lowercase())
        .filter(|c| !c.is_empty())
        .collect();
    codings.sort();
    codings.dedup();
    out.push_str(&format!(" accept-encoding={codings:?}"));
    out
}

fn echo_origin(
    calls: &'static AtomicUsize,
    reading: QueryReading,
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |request: Req| async move {
        calls.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let text = echo(&parts, &body, reading);
        // A router matching the raw path: anything but `/page` is its (storable) 404.
        let status = if parts.uri.path() == "/page" {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert("vary", "Accept-Language, Accept-Encoding".parse().unwrap());
        Ok::<_, Infallible>(response)
    })
}

#[derive(Debug, Clone)]
struct Spec {
    path: &'static str,
    pairs: Vec<(&'static str, &'static str)>,
    empty_piece: bool,
    host: Option<&'static str>,
    authority: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
}

fn spec() -> impl Strategy<Value = Spec> {
    let path = prop::sample::select(vec![
        "/page", "/%70age", "/pag%65", "/page/", "/Page", "/a%2Fb", "/a/b",
    ]);
    let pair = (
        prop::sample::select(vec!["a", "b", "a+b", "a%20b", "%61", "A"]),
        prop::sample::select(vec!["1", "2", "%31", "", "x+y", "x%20y"]),
    );
    let host = prop::option::of(prop::sample::select(vec![
        "a.example",
        "A.example",
        "b.example",
    ]));
    let authority = prop::option::of(prop::sample::select(vec!["a.example", "b.example"]));
    let header = prop::sample::select(vec![
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-host", "a.example"),
        ("forwarded", "host=evil.example"),
        ("x-forwarded-proto", "http"),
        ("x-api-key", "alice"),
        ("x-api-key", "bob"),
        ("authorization", "Bearer alice"),
        ("cookie", "sid=1"),
        ("x-http-method-override", "DELETE"),
        ("x-original-url", "/admin"),
        ("accept-language", "en"),
        ("accept-language", "de"),
        ("accept-encoding", "gzip, br"),
        ("accept-encoding", "BR,gzip"),
        ("accept-encoding", "gzip"),
    ]);
    (
        path,
        prop::collection::vec(pair, 0..4),
        any::<bool>(),
        host,
        authority,
        prop::collection::vec(header, 0..3),
        prop::sample::select(vec!["", "", "", "x"]),
    )
        .prop_map(
            |(path, pairs, empty_piece, host, authority, headers, body)| Spec {
                path,
                pairs,
                empty_piece,
                host,
                authority,
                headers,
                body,
            },
        )
}

/// `spec` with one input taken from `other`.
fn twin(mut spec: Spec, change: usize, other: Spec) -> Spec {
    match change {
        0 => spec.path = other.path,
        1 => spec.pairs.reverse(),
        2 => spec.pairs = other.pairs,
        3 => spec.host = other.host,
        4 => spec.authority = other.authority,
        5 => spec.headers.extend(other.headers),
        6 => spec.headers = other.headers,
        _ => spec.body = "x",
    }
    spec
}

fn build(spec: &Spec) -> Req {
    let mut query: Vec<String> = spec.pairs.iter().map(|(n, v)| format!("{n}={v}")).collect();
    if spec.empty_piece {
        query.push(String::new());
    }
    let mut target = spec.path.to_owned();
    if !spec.pairs.is_empty() || spec.empty_piece {
        target.push('?');
        target.push_str(&query.join("&"));
    }
    let uri = match spec.authority {
        Some(authority) => format!("http://{authority}{target}"),
        None => target,
    };
    let mut request = Request::get(uri);
    if let Some(host) = spec.host {
        request = request.header("host", host);
    }
    for (name, value) in &spec.headers {
        request = request.header(*name, *value);
    }
    request
        .body(Full::new(Bytes::from_static(spec.body.as_bytes())))
        .unwrap()
}

/// Run `specs` in order through one cache; return how many answers were hits.
fn run(specs: &[Spec], reading: QueryReading) -> Result<usize, TestCaseError> {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let handle = CacheHandle::builder(MemoryStore::new()).build();
        let policy = CachePolicy::default().normalize_query(reading == QueryReading::Decoded);
        let service = CacheLayer::new(handle)
            .policy(policy)
            .layer(echo_origin(&CALLS, reading));
        let mut hits = 0;
        for spec in specs {
            let request = build(spec);
            let (parts, body) = request.into_parts();
            let body_bytes = body.clone().collect().await.unwrap().to_bytes();
            let expected = echo(&parts, &body_bytes, reading);
            let response = service
                .clone()
                .oneshot(Request::from_parts(parts, body))
                .await
                .unwrap();
            let hit = response
                .headers()
                .get("x-cache")
                .is_some_and(|v| v == "HIT");
            hits += usize::from(hit);
            let got = response.into_body().collect().await.unwrap().to_bytes();
            prop_assert_eq!(
                String::from_utf8_lossy(&got),
                expected,
                "request {:?} (hit: {})",
                spec,
                hit
            );
            // Let the spawned store write land before the next request.
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
        }
        Ok(hits)
    })
}

proptest! {
    // Past failures are replayed first from `hostile_input.proptest-regressions`, beside
    // this file (proptest's default would look for a `proptest-regressions/` folder beside
    // the binary's `main.rs`).
    #![proptest_config(ProptestConfig {
        cases: 192,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_cached_answer_always_echoes_the_request_it_answers(
        specs in prop::collection::vec(spec(), 1..24),
        twins in prop::collection::vec((any::<prop::sample::Index>(), 0usize..8, spec()), 1..6),
    ) {
        // Each sequence ends with near twins of its requests (one input changed) and an
        // exact repeat: the inputs a cache could wrongly merge, right after a request
        // that filled the entry.
        let mut specs = specs;
        for (index, change, other) in twins {
            let original = specs[index.index(specs.len())].clone();
            specs.push(original.clone());
            specs.push(twin(original, change, other));
        }
        run(&specs, QueryReading::Raw)?;
        run(&specs, QueryReading::Decoded)?;
    }
}

/// The property above would pass for a cache that never hits: show that it does hit.
#[test]
fn the_property_sees_hits_and_plain_repeats_are_served_from_the_cache() {
    let plain = Spec {
        path: "/page",
        pairs: vec![("b", "2"), ("a", "1")],
        empty_piece: false,
        host: Some("a.example"),
        authority: None,
        headers: vec![("accept-language", "en"), ("x-forwarded-host", "a.example")],
        body: "",
    };
    let reordered = Spec {
        pairs: vec![("a", "1"), ("b", "2")],
        ..plain.clone()
    };
    let mut encodings = plain.clone();
    encodings.headers.push(("accept-encoding", "gzip, br"));
    let mut encodings_again = plain.clone();
    encodings_again.headers.push(("accept-encoding", "BR,gzip"));
    let specs = [plain.clone(), plain, reordered, encodings, encodings_again];
    // The repeat and the other spelling of one coding set; reordered pairs only when the
    // query is normalised.
    assert_eq!(run(&specs, QueryReading::Raw).unwrap(), 2);
    assert_eq!(run(&specs, QueryReading::Decoded).unwrap(), 3);
}

#[test]
fn headers_the_echo_reads_are_what_the_cache_keys_or_bypasses() {
    // A guard on the test itself: each header the origin reads is in one of the layer's
    // documented lists (or varied on by the response).
    let policy_lists: Vec<&str> = tower_response_cache::DEFAULT_BYPASS_HEADERS
        .iter()
        .chain(tower_response_cache::DEFAULT_KEYED_HEADERS.iter())
        .copied()
        .collect();
    for name in READ_HEADERS {
        assert!(
            policy_lists.contains(&name) || name == "accept-language",
            "{name}"
        );
    }
}

/// The same rules through a real axum server and real HTTP.
mod over_http {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::extract::Request as AxumRequest;
    use axum::routing;
    use axum::Router;
    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore};

    use crate::support::{client, get, get_with, send, serve};

    /// An app whose answers show what it read; `/page` is a route, the rest its 404.
    fn app(calls: Arc<AtomicUsize>) -> (Router, CacheHandle) {
        let handle = CacheHandle::builder(MemoryStore::new()).build();
        let calls_page = calls.clone();
        let page = move |request: AxumRequest| {
            let calls = calls_page.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let read = |name: &str| {
                    request
                        .headers()
                        .get(name)
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .unwrap_or_default()
                };
                let cc = read("x-test-cache-control");
                let vary = read("x-test-vary");
                let mut response = axum::response::Response::new(axum::body::Body::from(format!(
                    "page host={} fwd={} range={} if-range={}",
                    read("host"),
                    read("x-forwarded-host"),
                    read("range"),
                    read("if-range")
                )));
                if !read("range").is_empty() {
                    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                    response
                        .headers_mut()
                        .insert("content-range", "bytes 0-3/20".parse().unwrap());
                }
                if !cc.is_empty() {
                    let value = http::HeaderValue::from_bytes(&hex(&cc)).unwrap();
                    response.headers_mut().insert("cache-control", value);
                }
                if !vary.is_empty() {
                    let value = http::HeaderValue::from_bytes(&hex(&vary)).unwrap();
                    response.headers_mut().insert("vary", value);
                }
                response
            }
        };
        let router = Router::new()
            .route("/page", routing::get(page))
            .fallback(move || {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    (StatusCode::NOT_FOUND, "not found")
                }
            })
            .layer(
                CacheLayer::new(handle.clone())
                    .cache_status_detail(tower_response_cache::CacheStatusDetail::Full),
            );
        (router, handle)
    }

    /// Test headers carry raw bytes as hex, so a test can send one non-ASCII byte.
    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn to_hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[tokio::test]
    async fn an_escaped_spelling_of_a_route_never_files_its_404_under_the_page() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (router, _) = app(calls.clone());
        let addr = serve(router).await;
        let c = client();
        // The attacker's spelling reaches the fallback 404 (storable by default) ...
        assert_eq!(get(&c, addr, "/%70age").await.status, StatusCode::NOT_FOUND);
        assert_eq!(get(&c, addr, "/%70age").await.x_cache(), "HIT");
        // ... and the real page is still the page.
        let page = get(&c, addr, "/page").await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.x_cache(), "MISS");
    }

    #[tokio::test]
    async fn forwarded_host_is_keyed_and_api_keys_bypass() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (router, _) = app(calls.clone());
        let addr = serve(router).await;
        let c = client();
        let evil = get_with(&c, addr, "/page", &[("x-forwarded-host", "evil.example")]).await;
        assert!(evil.text().contains("fwd=evil.example"));
        let plain = get(&c, addr, "/page").await;
        assert_eq!(plain.x_cache(), "MISS");
        assert!(!plain.text().contains("evil"));
        assert_eq!(get(&c, addr, "/page").await.x_cache(), "HIT");
        for (name, value) in [
            ("x-api-key", "alice"),
            ("proxy-authorization", "Basic x"),
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/admin"),
        ] {
            let answer = get_with(&c, addr, "/page", &[(name, value)]).await;
            assert_eq!(answer.x_cache(), "BYPASS", "{name}");
        }
    }

    #[tokio::test]
    async fn a_get_with_a_body_bypasses() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (router, _) = app(calls.clone());
        let addr = serve(router).await;
        let c = client();
        let request = Request::get(format!("http://{addr}/page"))
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        assert_eq!(send(&c, request).await.x_cache(), "BYPASS");
        assert_eq!(get(&c, addr, "/page").await.x_cache(), "MISS");
    }

    /// A raw HTTP/1.1 request (hyper's client always agrees with itself).
    async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_host_that_disagrees_with_the_absolute_uri_bypasses() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (router, _) = app(calls.clone());
        let addr = serve(router).await;
        let mismatch = raw(
            addr,
            "GET http://victim.example/page HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(mismatch.contains("x-cache: BYPASS"), "{mismatch}");
        let victim = raw(
            addr,
            "GET /page HTTP/1.1\r\nHost: victim.example\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(victim.contains("host=victim.example"), "{victim}");
    }

    #[tokio::test]
    async fn range_requests_are_forwarded_whole_and_their_206_never_stored() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (router, _) = app(calls.clone());
        let addr = serve(router).await;
        let c = client();
        let ranged = get_with(
            &c,
            addr,
            "/page",
            &[("range", "bytes=0-3"), ("if-range", "\"v1\"")],
        )
        .await;
        // Nothing stored: forwarded as sent, never leading a fill.
        assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(ranged.x_cache(), "MISS");
        assert!(ranged.header("cache-status").contains("detail=range"));
        // The condition travels with the range: no splice of a changed representation.
        assert!(
            ranged.text().contains("if-range=\"v1\""),
            "{}",
            ranged.text()
        );
        let again = get_with(&c, addr, "/page", &[("range", "bytes=0-3")]).await;
        assert_eq!(again.x_cache(), "MISS");
        // The 206 was stored nowhere, and the key is not left uncacheable.
        let full = get(&c, addr, "/page").await;
        assert_eq!(full.status, StatusCode::OK);
        assert_eq!(full.x_cache(), "MISS");
        assert_eq!(get(&c, addr, "/page").await.x_cache(), "HIT");
    }

    #[tokio::test]
    async fn an_unreadable_cache_control_or_vary_is_not_stored() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (router, _) = app(calls.clone());
        let addr = serve(router).await;
        let c = client();
        let cases = [
            ("x-test-cache-control", &b"max-age=60, private, \xff"[..]),
            ("x-test-vary", b"Accept-Language, Cookie\xe9"),
        ];
        for (name, bytes) in cases {
            let header = [(name, to_hex(bytes))];
            let headers: Vec<(&str, &str)> = header.iter().map(|(n, v)| (*n, v.as_str())).collect();
            // Keyed by the test header itself so each case has its own entry.
            let path = format!("/page?case={name}");
            get_with(&c, addr, &path, &headers).await;
            let second = get_with(&c, addr, &path, &headers).await;
            assert_ne!(second.x_cache(), "HIT", "{name}");
        }
        // A readable one is stored.
        let readable = [("x-test-cache-control", to_hex(b"max-age=60"))];
        let headers: Vec<(&str, &str)> = readable.iter().map(|(n, v)| (*n, v.as_str())).collect();
        get_with(&c, addr, "/page?case=ok", &headers).await;
        assert_eq!(
            get_with(&c, addr, "/page?case=ok", &headers)
                .await
                .x_cache(),
            "HIT"
        );
    }
}
