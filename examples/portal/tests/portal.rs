//! The portal, end to end over real HTTP: started on a free port against a fresh,
//! small SQLite database.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Small enough to seed in well under a second even in a debug build.
const SEED_VOUCHERS: u64 = 20_000;

mod common;
use common::TempDb;

struct Portal {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Only the Redis test hands the database to another process.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    db: TempDb,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().expect("ASCII header"))
    }
}

impl Portal {
    /// The portal caching in memory (`cache`) or not at all.
    async fn start(cache: bool) -> Portal {
        Portal::start_with(portal::Config {
            cache_enabled: cache,
            ..portal::Config::default()
        })
        .await
    }

    /// The portal with `config`, on a fresh database and a free port.
    async fn start_with(config: portal::Config) -> Portal {
        let db = TempDb::new("test");
        let config = portal::Config {
            db_path: db.0.clone(),
            seed_vouchers: SEED_VOUCHERS,
            db_connections: 2,
            ..config
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
            db,
        }
    }

    async fn send(&self, method: Method, path: &str) -> Answer {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .body(Full::default())
            .unwrap();
        let response = self.client.request(request).await.expect("request failed");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body:?}"));
        Answer {
            status: parts.status,
            headers: parts.headers,
            json,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path).await
    }

    /// Read `path` until it is a hit: a miss hands its entry to the store after the answer
    /// has gone out, so with Redis the very next read may still miss.
    #[cfg(feature = "redis")]
    async fn until_hit(&self, path: &str) -> Answer {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let answer = self.get(path).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.json);
            if answer.header("x-cache") == "HIT" {
                return answer;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{path} never became a hit; last {}",
                answer.header("cache-status")
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    async fn companies(&self) -> Vec<Value> {
        let answer = self.get("/api/companies").await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.json["companies"].as_array().unwrap().clone()
    }
}

fn alter_id_of(companies: &[Value], guid: &str) -> i64 {
    companies
        .iter()
        .find(|c| c["guid"] == guid)
        .and_then(|c| c["alter_id"].as_i64())
        .expect("company listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_are_cached_and_a_sync_invalidates_only_its_company() {
    let portal = Portal::start(true).await;

    let companies = portal.companies().await;
    assert_eq!(companies.len(), 20);
    for company in &companies {
        for field in ["guid", "name", "alter_id", "last_synced_at"] {
            assert!(!company[field].is_null(), "{field} missing in {company}");
        }
    }
    let (a, b) = (
        companies[0]["guid"].as_str().unwrap().to_owned(),
        companies[1]["guid"].as_str().unwrap().to_owned(),
    );
    let alter_a = alter_id_of(&companies, &a);

    // First read computes and stores; the second is a hit with the same body.
    let first = portal.get(&format!("/api/dashboard/{a}")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-cache"), "MISS");
    // A public service's `Cache-Status` says only what happened, not when to strike.
    assert_eq!(
        first.header("cache-status"),
        "tower-response-cache; fwd=uri-miss"
    );
    assert_eq!(first.json["guid"], a.as_str());
    assert_eq!(first.json["alter_id"], alter_a);
    for field in ["totals", "monthly", "top_ledgers"] {
        assert!(
            !first.json[field].as_array().unwrap().is_empty(),
            "{field} is empty"
        );
    }
    let second = portal.get(&format!("/api/dashboard/{a}")).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("x-cache"), "HIT");
    assert!(second.header("cache-status").contains("hit"));
    assert!(!second.header("age").is_empty());
    assert_eq!(second.json, first.json);

    // A date range is its own entry under the same logical key.
    let ranged = format!("/api/dashboard/{a}?from=2023-01-01&to=2023-12-31");
    let r1 = portal.get(&ranged).await;
    assert_eq!(r1.header("x-cache"), "MISS");
    assert_eq!(r1.json["from"], "2023-01-01");
    assert_eq!(r1.json["monthly"].as_array().unwrap().len(), 12);
    assert_eq!(portal.get(&ranged).await.header("x-cache"), "HIT");

    // Another company, cached before the sync.
    let other = portal.get(&format!("/api/dashboard/{b}")).await;
    assert_eq!(other.header("x-cache"), "MISS");
    assert_eq!(
        portal.get("/api/companies").await.header("x-cache"),
        "HIT",
        "the company list is cached as data"
    );

    let sync = portal.send(Method::POST, &format!("/api/sync/{a}")).await;
    assert_eq!(sync.status, StatusCode::OK, "{}", sync.json);
    let new_alter_id = sync.json["alter_id"].as_i64().unwrap();
    let inserted = sync.json["inserted"].as_i64().unwrap();
    assert_eq!(sync.json["previous_alter_id"], alter_a);
    assert_eq!(new_alter_id, alter_a + inserted);
    assert!(sync.json["cache"]["dashboards"].as_u64().unwrap() >= 2);
    assert_eq!(sync.json["cache"]["companies"], 1);
    assert_eq!(sync.json["cache"]["errors"], serde_json::json!([]));

    // The synced company's dashboards are recomputed, every date range of them.
    let after = portal.get(&format!("/api/dashboard/{a}")).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.header("x-cache"), "MISS");
    assert_eq!(after.json["alter_id"], new_alter_id);
    assert_eq!(
        after.json["vouchers"].as_i64().unwrap(),
        first.json["vouchers"].as_i64().unwrap() + inserted
    );
    assert_eq!(portal.get(&ranged).await.header("x-cache"), "MISS");
    assert_eq!(
        portal
            .get(&format!("/api/dashboard/{a}"))
            .await
            .header("x-cache"),
        "HIT"
    );

    // The other company's entry survived.
    let other_again = portal.get(&format!("/api/dashboard/{b}")).await;
    assert_eq!(other_again.header("x-cache"), "HIT");
    assert_eq!(other_again.json, other.json);

    // The company list was invalidated and shows the new alter_id.
    let list = portal.get("/api/companies").await;
    assert_eq!(list.header("x-cache"), "MISS");
    let list = list.json["companies"].as_array().unwrap().clone();
    assert_eq!(alter_id_of(&list, &a), new_alter_id);
    assert_eq!(
        alter_id_of(&list, &b),
        alter_id_of(&companies, &b),
        "only the synced company changed"
    );

    let stats = portal.get("/api/cache/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.json["enabled"], true);
    assert_eq!(stats.json["backend"], "memory");
    assert!(stats.json["hits"].as_u64().unwrap() >= 5, "{}", stats.json);
    assert!(stats.json["invalidations"].as_u64().unwrap() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_with_its_status() {
    let portal = Portal::start(true).await;
    let guid = portal.companies().await[0]["guid"]
        .as_str()
        .unwrap()
        .to_owned();

    let unknown = portal.get("/api/dashboard/no-such-company").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.json["error"]
        .as_str()
        .unwrap()
        .contains("no-such-company"));
    let unknown = portal.send(Method::POST, "/api/sync/no-such-company").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.json["error"].is_string());

    for (query, parameter) in [
        ("from=2024-13-01", "`from`"),
        ("from=yesterday", "`from`"),
        ("to=2023-02-29", "`to`"),
        ("from=2024-01-01&to=2024-1-31", "`to`"),
    ] {
        let bad = portal.get(&format!("/api/dashboard/{guid}?{query}")).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{query}");
        let error = bad.json["error"].as_str().unwrap();
        assert!(error.contains(parameter), "{query}: {error}");
    }
    let reversed = portal
        .get(&format!(
            "/api/dashboard/{guid}?from=2024-02-01&to=2024-01-01"
        ))
        .await;
    assert_eq!(reversed.status, StatusCode::BAD_REQUEST);
    // A leap day is a date.
    let leap = portal
        .get(&format!("/api/dashboard/{guid}?from=2024-02-29"))
        .await;
    assert_eq!(leap.status, StatusCode::OK);

    let missing = portal.get("/api/nothing-here").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json["error"].is_string());

    let health = portal.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json["status"], "ok");
    assert_eq!(health.json["cache"]["backend"], "memory");
    assert_eq!(health.json["database"]["companies"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_off_every_read_reaches_the_database() {
    let portal = Portal::start(false).await;
    let guid = portal.companies().await[0]["guid"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/dashboard/{guid}");
    let first = portal.get(&path).await;
    let second = portal.get(&path).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("x-cache"), "");
    assert_ne!(first.json["computed_at"], second.json["computed_at"]);

    let sync = portal
        .send(Method::POST, &format!("/api/sync/{guid}"))
        .await;
    assert_eq!(sync.status, StatusCode::OK);
    assert!(sync.json["cache"].is_null());
    assert_eq!(
        portal.get(&path).await.json["alter_id"],
        sync.json["alter_id"]
    );

    let stats = portal.get("/api/cache/stats").await;
    assert_eq!(stats.json, serde_json::json!({ "enabled": false }));
    let health = portal.get("/health").await;
    assert_eq!(health.json["cache"]["enabled"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_page_is_html_and_links_the_dashboards() {
    let portal = Portal::start(true).await;
    let request = Request::get(format!("http://{}/", portal.addr))
        .body(Full::default())
        .unwrap();
    let response = portal.client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains("/api/dashboard/"));
}

// The library's Redis harness: one file, self-contained, shared rather than copied.
#[cfg(feature = "redis")]
#[allow(dead_code)] // the portal needs only `start`, `url` and `keys`
#[path = "../../../tests/support/redis.rs"]
mod redis_support;

/// Run the `sync` binary as its own OS process, as an operator would (the very binary
/// `cargo run -p portal --bin sync` runs, built with this test's features), pointed at the
/// portal's database and Redis. Its HTTP fallback points at a closed port, so only the
/// Redis path can succeed. Returns the report it prints.
#[cfg(feature = "redis")]
async fn sync_in_another_process(
    db: &std::path::Path,
    redis: &redis_support::RedisServer,
    guid: &str,
) -> Value {
    let (report, stderr) = run_sync_process(db, redis, guid, &[]).await;
    assert!(stderr.contains("invalidated through Redis"), "{stderr}");
    report
}

/// Run the `sync` binary for `guid` on `db` and `redis`, with `env` on top; it must
/// succeed. Its JSON report and its stderr.
#[cfg(feature = "redis")]
async fn run_sync_process(
    db: &std::path::Path,
    redis: &redis_support::RedisServer,
    guid: &str,
    env: &[(&str, &str)],
) -> (Value, String) {
    use std::time::Duration;

    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sync"));
    command
        .arg(guid)
        .env("PORTAL_DB", db)
        .env("PORTAL_CACHE", "on")
        .env("PORTAL_URL", "http://127.0.0.1:9")
        .env("REDIS_ENABLED", "true")
        .env("REDIS_URL", redis.url())
        .env("CACHE_NAMESPACE", portal::config::NAMESPACE)
        .env("CACHE_REDIS_TIMEOUT_MS", "1000")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the sync process did not finish within 60 s")
        .expect("start the sync binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "the sync process failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("sync printed no JSON ({e}): {stdout}"));
    (report, stderr)
}

/// A sync whose invalidations must wait for a replica, on a Redis that has none: they apply
/// on the primary (readers see the new data), so the sync succeeds, says no replica
/// confirmed them, and reports them apart from failures.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_no_replica_confirmed_succeeds_and_says_so() {
    let redis = redis_support::RedisServer::start();
    // The portal seeds the database; the sync process imports into it.
    let portal = Portal::start(false).await;
    let guid = portal.companies().await[0]["guid"]
        .as_str()
        .unwrap()
        .to_owned();
    let (report, stderr) = run_sync_process(
        &portal.db.0,
        &redis,
        &guid,
        &[
            ("CACHE_INVALIDATE_REPLICAS", "1"),
            ("CACHE_INVALIDATE_REPLICAS_TIMEOUT_MS", "50"),
        ],
    )
    .await;
    assert!(stderr.contains("no replica confirmed it"), "{stderr}");
    assert_eq!(report["cache"]["errors"], serde_json::json!([]), "{report}");
    assert_eq!(
        report["cache"]["unreplicated"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_sync_process_invalidates_the_portal_through_redis() {
    use std::time::Duration;

    let redis = redis_support::RedisServer::start();
    let defaults = portal::Config::default();
    let mut cache = defaults.cache.clone();
    cache.redis_enabled = true;
    cache.redis_url = redis.url();
    // A debug build on a busy machine: no spurious fallback.
    cache.redis_timeout = Duration::from_millis(500);
    let portal = Portal::start_with(portal::Config { cache, ..defaults }).await;
    let health = portal.get("/health").await;
    assert_eq!(health.json["cache"]["backend"], "redis", "{}", health.json);

    let companies = portal.companies().await;
    let (a, b) = (
        companies[0]["guid"].as_str().unwrap().to_owned(),
        companies[1]["guid"].as_str().unwrap().to_owned(),
    );
    let alter_a = alter_id_of(&companies, &a);
    let (path_a, path_b) = (format!("/api/dashboard/{a}"), format!("/api/dashboard/{b}"));

    // Both dashboards cached, in Redis.
    for path in [&path_a, &path_b] {
        assert_eq!(portal.get(path).await.header("x-cache"), "MISS", "{path}");
    }
    let before_a = portal.until_hit(&path_a).await;
    assert_eq!(before_a.json["alter_id"], alter_a);
    let before_b = portal.until_hit(&path_b).await;
    portal.until_hit("/api/companies").await;
    let namespace = portal::config::NAMESPACE;
    assert_eq!(
        redis.keys(&format!("{namespace}:k:dashboard:*")).len(),
        2,
        "the dashboards are stored in Redis"
    );

    let report = sync_in_another_process(&portal.db.0, &redis, &a).await;
    let new_alter_id = report["alter_id"].as_i64().unwrap();
    assert_eq!(report["guid"], a.as_str());
    assert_eq!(report["previous_alter_id"], alter_a);
    assert_eq!(new_alter_id, alter_a + report["inserted"].as_i64().unwrap());
    assert_eq!(report["cache"]["dashboards"], 1, "{report}");
    assert_eq!(report["cache"]["companies"], 1, "{report}");
    assert_eq!(report["cache"]["errors"], serde_json::json!([]));

    // The portal (this process) stops serving the old dashboard at once.
    let after_a = portal.get(&path_a).await;
    assert_eq!(after_a.status, StatusCode::OK);
    assert_eq!(after_a.header("x-cache"), "MISS");
    assert_eq!(after_a.json["alter_id"], new_alter_id);
    // The other company's entry survived.
    let after_b = portal.get(&path_b).await;
    assert_eq!(after_b.header("x-cache"), "HIT");
    assert_eq!(after_b.json, before_b.json);
    // The new dashboard is cached in its turn.
    assert_eq!(
        portal.until_hit(&path_a).await.json["alter_id"],
        new_alter_id
    );
    // The company list was dropped too and shows the new alter_id.
    let list = portal.get("/api/companies").await;
    assert_eq!(list.header("x-cache"), "MISS");
    let list = list.json["companies"].as_array().unwrap().clone();
    assert_eq!(alter_id_of(&list, &a), new_alter_id);

    let stats = portal.get("/api/cache/stats").await;
    assert_eq!(stats.json["backend"], "redis", "{}", stats.json);
    assert_eq!(stats.json["store_errors"], 0, "{}", stats.json);
}
