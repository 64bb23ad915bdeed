//! The portal's operations endpoints over real HTTP: `GET /metrics` in the Prometheus text
//! format, and the purge endpoints mounted only with `PORTAL_PURGE_TOKEN`.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

const TOKEN: &str = "portal-test-purge-token-0123456789";

mod common;
use common::TempDb;

struct Portal {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    _db: TempDb,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .map_or("", |v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

impl Portal {
    async fn start(purge_token: Option<&str>) -> Portal {
        let db = TempDb::new("ops");
        let config = portal::Config {
            db_path: db.0.clone(),
            seed_vouchers: 20_000,
            db_connections: 2,
            purge_token: purge_token.map(str::to_owned),
            ..portal::Config::default()
        };
        let state = portal::state(&config).await.expect("portal state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, portal::app(state)).await.unwrap();
        });
        Portal {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            _db: db,
        }
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = Full::new(Bytes::copy_from_slice(body.as_bytes()));
        let response = self
            .client
            .request(request.body(body).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, &[], "").await
    }

    async fn guids(&self) -> Vec<String> {
        let companies = self.get("/api/companies").await.json();
        companies["companies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["guid"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Read `path` until it is a hit (a miss is stored once its body has ended).
    async fn until_hit(&self, path: &str) {
        for _ in 0..500 {
            let answer = self.get(path).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}");
            if answer.x_cache() == "HIT" {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{path} never became a hit");
    }
}

/// The value of the sample `series` (name and labels exactly as rendered) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(value.parse().expect("a number"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_the_prometheus_text_format_with_the_crates_names() {
    let portal = Portal::start(None).await;
    let guid = portal.guids().await.remove(0);
    let path = format!("/api/dashboard/{guid}");
    portal.until_hit(&path).await;
    portal.until_hit(&path).await;
    let synced = portal
        .send("POST", &format!("/api/sync/{guid}"), &[], "")
        .await;
    assert_eq!(synced.status, StatusCode::OK);

    let scrape = portal.get("/metrics").await;
    assert_eq!(scrape.status, StatusCode::OK);
    assert_eq!(
        scrape.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(scrape.body.to_vec()).unwrap();
    // Other tests of this binary share the process's recorder: at least, never exactly.
    for (series, at_least) in [
        ("tower_response_cache_hits_total", 2.0),
        ("tower_response_cache_misses_total", 1.0),
        ("tower_response_cache_stores_total", 1.0),
        ("tower_response_cache_invalidations_total", 2.0),
        (r#"portal_origin_fetches_total{route="dashboard"}"#, 1.0),
        (
            r#"tower_response_cache_backend{namespace="portal",backend="memory"}"#,
            1.0,
        ),
        (r#"tower_response_cache_entries{namespace="portal"}"#, 0.0),
        (
            r#"tower_response_cache_invalidation_seconds_count{operation="invalidate"}"#,
            2.0,
        ),
        (
            r#"portal_request_duration_seconds_count{route="/api/dashboard/{guid}"}"#,
            2.0,
        ),
    ] {
        let value = sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(value >= at_least, "{series} = {value}");
    }
    assert_eq!(
        sample(
            &text,
            r#"tower_response_cache_backend{namespace="portal",backend="redis"}"#
        ),
        Some(0.0)
    );
    for line in [
        "# TYPE tower_response_cache_hits_total counter",
        "# TYPE tower_response_cache_backend gauge",
        "# TYPE portal_request_duration_seconds summary",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    let p99 = r#"portal_request_duration_seconds{route="/api/dashboard/{guid}",quantile="0.99"}"#;
    assert!(sample(&text, p99).is_some(), "no {p99} in\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_with_the_token_removes_that_dashboard_and_no_other() {
    let portal = Portal::start(Some(TOKEN)).await;
    let guids = portal.guids().await;
    let (a, b) = (&guids[0], &guids[1]);
    let ranged = format!("/api/dashboard/{a}?from=2023-01-01");
    for path in [
        format!("/api/dashboard/{a}"),
        ranged.clone(),
        format!("/api/dashboard/{b}"),
    ] {
        portal.until_hit(&path).await;
    }
    let auth = format!("Bearer {TOKEN}");
    let dashboard_a = format!("/api/dashboard/{a}");

    // Refused: no token, a wrong one. Nothing removed.
    let answer = portal.send("PURGE", &dashboard_a, &[], "").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.json()["error"], "missing bearer token");
    let answer = portal
        .send(
            "PURGE",
            &dashboard_a,
            &[("authorization", &format!("Bearer {TOKEN}x"))],
            "",
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(portal.get(&ranged).await.x_cache(), "HIT");

    let answer = portal
        .send("PURGE", &dashboard_a, &[("authorization", &auth)], "")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["key"], format!("dashboard:{a}"));
    assert_eq!(answer.json()["removed"], 2);
    // Both date ranges of the purged company miss; another company's dashboard still hits.
    assert_eq!(
        portal.get(&format!("/api/dashboard/{a}")).await.x_cache(),
        "MISS"
    );
    assert_eq!(portal.get(&ranged).await.x_cache(), "MISS");
    assert_eq!(
        portal.get(&format!("/api/dashboard/{b}")).await.x_cache(),
        "HIT"
    );

    // The JSON endpoint, its refusals: an oversized body, a bad pattern.
    let headers = [("authorization", auth.as_str())];
    let big = format!(r#"{{"pattern": "{}"}}"#, "x".repeat(5000));
    let answer = portal.send("POST", "/_cache/purge", &headers, &big).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    let answer = portal
        .send("POST", "/_cache/purge", &headers, r#"{"pattern": ""}"#)
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        portal.get(&format!("/api/dashboard/{b}")).await.x_cache(),
        "HIT"
    );
    let pattern = format!(r#"{{"pattern": "dashboard:{b}*"}}"#);
    let answer = portal
        .send("POST", "/_cache/purge", &headers, &pattern)
        .await;
    assert_eq!(
        (answer.status, answer.json()["removed"].as_u64()),
        (StatusCode::OK, Some(1))
    );

    // Past the default rate (10 a second), refused with 429.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            portal
                .send("PURGE", &dashboard_a, &[("authorization", &auth)], "")
                .await
                .status,
        );
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_purge_is_an_unknown_method() {
    let portal = Portal::start(None).await;
    let guid = portal.guids().await.remove(0);
    let path = format!("/api/dashboard/{guid}");
    portal.until_hit(&path).await;
    let auth = format!("Bearer {TOKEN}");
    let answer = portal
        .send("PURGE", &path, &[("authorization", &auth)], "")
        .await;
    // What axum answers any method a route does not have.
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.headers["allow"], "GET,HEAD");
    let answer = portal
        .send(
            "POST",
            "/_cache/purge",
            &[("authorization", &auth)],
            r#"{"all": true}"#,
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(portal.get(&path).await.x_cache(), "HIT");
}
