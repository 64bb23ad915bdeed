//! Redis holding bad data or refusing us, under a real axum server: garbage, truncated and
//! foreign values under cache keys, a value of the wrong type, a full Redis (`OOM`), a
//! read-only replica (`READONLY`), a wrong or missing password. Each is a clear log line, a
//! miss, and a working response; an invalidation Redis refuses still stops the entry being
//! served.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::eventually;
use crate::support::redis::RedisServer;
use crate::support::stack::*;
use tower_response_cache::Backend;

/// The value fields of an entry hash (`<index>:<32 hex digits>`, one per `Vary` variant),
/// and its index fields (16 hex digits).
fn hkeys(server: &RedisServer, key: &str) -> (Vec<String>, Vec<String>) {
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(key)
        .query(&mut server.connection())
        .unwrap();
    let hex = |f: &str| f.bytes().all(|b| b.is_ascii_hexdigit());
    let values = fields
        .iter()
        .filter(|f| f.len() == 49 && f.as_bytes()[16] == b':' && hex(&f[..16]) && hex(&f[17..]))
        .cloned()
        .collect();
    let indexes = fields
        .into_iter()
        .filter(|f| f.len() == 16 && hex(f))
        .collect();
    (values, indexes)
}

fn hget(server: &RedisServer, key: &str, field: &str) -> Option<Vec<u8>> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query(&mut server.connection())
        .unwrap()
}

fn redis_cmd(server: &RedisServer, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    let _: redis::Value = cmd.query(&mut server.connection()).unwrap();
}

fn set_bytes(server: &RedisServer, key: &str, field: &str, value: &[u8]) {
    let _: i64 = redis::cmd("HSET")
        .arg(key)
        .arg(field)
        .arg(value)
        .query(&mut server.connection())
        .unwrap();
}

fn key_type(server: &RedisServer, key: &str) -> String {
    redis::cmd("TYPE")
        .arg(key)
        .query(&mut server.connection())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_and_foreign_values_are_a_miss_and_are_deleted() {
    let s = relaxed_stack().await;
    s.warm("/bad/model").await;
    let (values, indexes) = hkeys(&s.server, "t:k:/bad/model");
    assert_eq!(values.len(), 1, "one variant, one value: {values:?}");
    assert_eq!(indexes.len(), 1, "one variant, one index: {indexes:?}");
    let valid = hget(&s.server, "t:k:/bad/model", &values[0]).expect("the stored value");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage",
            (0..200u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        ("truncated to half", valid[..valid.len() / 2].to_vec()),
        ("one byte short", valid[..valid.len() - 1].to_vec()),
        ("one byte too many", [&valid[..], b"!"].concat()),
        ("empty", Vec::new()),
        (
            "foreign JSON",
            br#"{"status":200,"headers":{},"body":"hello"}"#.to_vec(),
        ),
        (
            "a huge variant count",
            vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1],
        ),
        (
            "a huge length",
            vec![0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 1, 2],
        ),
        ("every byte flipped", valid.iter().map(|b| !b).collect()),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let path = format!("/bad/{i}");
        let key = format!("t:k:{path}");
        let stored = s.warm(&path).await;
        let (mut values, mut indexes) = hkeys(&s.server, &key);
        let (field, index) = (
            values.pop().expect("a value"),
            indexes.pop().expect("an index"),
        );
        // The bytes under both: a bad index alone still lets the value answer.
        set_bytes(&s.server, &key, &field, bytes);
        set_bytes(&s.server, &key, &index, bytes);

        // The origin's answer is not stored, so only the cache can remove the bad value.
        s.origin.no_store.store(true, Ordering::SeqCst);
        let answer = s.read(&path).await;
        assert_eq!(
            answer.x_cache(),
            "MISS",
            "{what}: {}",
            answer.header("cache-status")
        );
        assert_ne!(answer.body, stored.body, "{what}");
        let deleted = eventually(Duration::from_secs(5), || async {
            hget(&s.server, &key, &field).is_none() && hget(&s.server, &key, &index).is_none()
        })
        .await;
        assert!(
            deleted,
            "{what}: the undecodable value or index was not deleted"
        );
        s.origin.no_store.store(false, Ordering::SeqCst);
        // The key caches again.
        s.warm(&path).await;
    }
    assert_eq!(s.backend(), Backend::Redis, "bad data opened the circuit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_of_the_wrong_type_under_a_cache_key_is_a_miss_and_is_deleted() {
    let s = relaxed_stack().await;
    redis_cmd(&s.server, &["SET", "t:k:/wrong", "a plain string"]);
    s.origin.no_store.store(true, Ordering::SeqCst);
    let answer = s.read("/wrong").await;
    assert_eq!(answer.x_cache(), "MISS");
    let deleted = eventually(Duration::from_secs(5), || async {
        key_type(&s.server, "t:k:/wrong") == "none"
    })
    .await;
    assert!(deleted, "the string under the cache key was not deleted");
    s.origin.no_store.store(false, Ordering::SeqCst);
    s.warm("/wrong").await;

    // A write that meets a value of the wrong type (a list appears meanwhile) is skipped.
    redis_cmd(&s.server, &["RPUSH", "t:k:/list", "x"]);
    for _ in 0..3 {
        s.read("/list").await;
    }
    s.warm("/list").await;
    assert_eq!(s.backend(), Backend::Redis, "WRONGTYPE opened the circuit");
}

/// Many misses at once whose writes Redis refuses: every one answers, and errors Redis
/// answers with (unlike connection trouble) leave the circuit closed.
async fn misses_under_refused_writes(s: &Stack, prefix: &str) {
    let errors_before = s.handle.stats().store_errors;
    let reads: Vec<_> = (0..10)
        .map(|i| {
            let (client, addr) = (s.client.clone(), s.addr);
            let path = format!("{prefix}/{i}");
            tokio::spawn(async move { get_checked(&client, addr, &path).await })
        })
        .collect();
    for read in reads {
        let answer = read.await.unwrap();
        assert_eq!(answer.x_cache(), "MISS");
    }
    let refused = eventually(Duration::from_secs(5), || async {
        s.handle.stats().store_errors >= errors_before + 10
    })
    .await;
    assert!(
        refused,
        "expected 10 refused writes, counted {}",
        s.handle.stats().store_errors - errors_before
    );
    assert!(s.server.keys(&format!("t:k:{prefix}/*")).is_empty());
    assert_eq!(
        s.backend(),
        Backend::Redis,
        "errors Redis answered with opened the circuit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refusing_writes_costs_no_request() {
    let s = relaxed_stack().await;
    let kept = s.warm("/kept").await;
    redis_cmd(
        &s.server,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    );
    redis_cmd(&s.server, &["CONFIG", "SET", "maxmemory", "1"]);

    misses_under_refused_writes(&s, "/oom").await;
    // Reads still work.
    let hit = s.read("/kept").await;
    assert_eq!((hit.x_cache(), &hit.body), ("HIT", &kept.body));

    redis_cmd(&s.server, &["CONFIG", "SET", "maxmemory", "0"]);
    s.warm("/oom/0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_replica_refusing_writes_costs_no_request() {
    let s = relaxed_stack().await;
    let kept = s.warm("/kept").await;
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = nowhere.local_addr().unwrap().port().to_string();
    drop(nowhere);
    redis_cmd(&s.server, &["REPLICAOF", "127.0.0.1", &dead_port]);

    misses_under_refused_writes(&s, "/ro").await;
    let hit = s.read("/kept").await;
    assert_eq!((hit.x_cache(), &hit.body), ("HIT", &kept.body));

    redis_cmd(&s.server, &["REPLICAOF", "NO", "ONE"]);
    s.warm("/ro/0").await;
}

/// Redis answers the invalidation with an error (full: `INCR` is refused; read-only:
/// every write is): `invalidate` reports it, and the entry must still not be served.
async fn invalidation_refused_by_redis(refuse: &[&[&str]], what: &str) {
    let s = relaxed_stack().await;
    let old = s.warm("/api/dashboard/ABC").await;
    for command in refuse {
        redis_cmd(&s.server, command);
    }
    let result = s.handle.invalidate("/api/dashboard/*").await;
    for _ in 0..5 {
        let answer = s.read("/api/dashboard/ABC").await;
        assert_ne!(
            answer.body,
            old.body,
            "{what}: the invalidated entry was served from Redis (invalidate returned {result:?}, \
             {} pending, {})",
            s.store.pending_invalidations(),
            answer.header("cache-status")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_a_full_redis_refuses_still_stops_the_entry_being_served() {
    invalidation_refused_by_redis(
        &[
            &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
            &["CONFIG", "SET", "maxmemory", "1"],
        ],
        "OOM",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_a_read_only_redis_refuses_still_stops_the_entry_being_served() {
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = nowhere.local_addr().unwrap().port().to_string();
    drop(nowhere);
    invalidation_refused_by_redis(&[&["REPLICAOF", "127.0.0.1", &dead_port]], "READONLY").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_password_costs_no_request() {
    for (what, password) in [("wrong password", Some("wrong")), ("no password", None)] {
        let server = RedisServer::start_with(&["--requirepass", "right-password"]);
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", server.port),
            None => format!("redis://127.0.0.1:{}/0", server.port),
        };
        let started = Instant::now();
        let s = Stack::start_at(server, &url, DEADLINE, |b| b).await;
        let took = started.elapsed();
        assert!(took < BOUND, "{what}: building took {took:?}");
        for path in ["/p/1", "/p/1", "/p/2", "/p/1"] {
            // `read` checks the status, the origin's body and the time taken.
            s.read(path).await;
        }
        let reads: Vec<_> = (0..10)
            .map(|i| {
                let (client, addr) = (s.client.clone(), s.addr);
                tokio::spawn(async move { get_checked(&client, addr, &format!("/q/{i}")).await })
            })
            .collect();
        for read in reads {
            read.await.unwrap();
        }
        assert!(s.origin.calls() >= 2, "{what}");
    }
}

// ---- a pattern over a large keyspace -----------------------------------------------------

// ---- foreign values under the crate's own keys --------------------------------------------

/// A value the crate never writes under its epoch, generation counters or bucket secret
/// (another tool's, a hand edit, corruption): requests are answered, misses are stored, and
/// an exact invalidation still stops the entry being served. Nothing is refused for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_values_under_the_crates_own_keys_refuse_no_write_for_good() {
    let cases: [(&str, &[&str]); 6] = [
        (
            "an epoch that is not a number",
            &["tower-response-cache:epoch"],
        ),
        (
            "a generation that is not a number",
            &["tower-response-cache:gen"],
        ),
        (
            "a wide generation that is not a number",
            &["tower-response-cache:gen:wide"],
        ),
        (
            "a secret that is not 32 hex digits",
            &["tower-response-cache:secret"],
        ),
        (
            "an epoch too large for a write token",
            &["tower-response-cache:epoch", "99999999999"],
        ),
        (
            "all of them",
            &[
                "tower-response-cache:epoch",
                "tower-response-cache:gen",
                "tower-response-cache:gen:wide",
                "tower-response-cache:secret",
            ],
        ),
    ];
    for (what, keys) in cases {
        let s = relaxed_stack().await;
        // Positive control: the crate's keys exist and entries are stored before the edit.
        s.warm("/own/before").await;
        s.handle.invalidate("/own/before").await.unwrap();
        match keys {
            [key, value] if !value.starts_with("tower-response-cache") => {
                redis_cmd(&s.server, &["SET", key, value])
            }
            _ => {
                for key in keys {
                    redis_cmd(&s.server, &["SET", key, "not-ours: {\"x\": -1}"]);
                }
            }
        }
        // A value of another type under the secret, too.
        if what == "all of them" {
            redis_cmd(&s.server, &["DEL", "tower-response-cache:secret"]);
            redis_cmd(&s.server, &["RPUSH", "tower-response-cache:secret", "x"]);
        }
        let calls = s.origin.calls();
        // A miss is stored: the second read is a hit.
        let first = s.warm("/own/after").await;
        assert!(
            s.origin.calls() > calls,
            "{what}: the origin was never asked"
        );
        // An exact invalidation returns and stops the entry being served.
        let invalidated = s.handle.invalidate("/own/after").await;
        let answer = s.read("/own/after").await;
        assert!(
            invalidated.is_err() || answer.x_cache() == "MISS",
            "{what}: invalidate returned Ok and the entry was still served"
        );
        assert_ne!(
            answer.body, first.body,
            "{what}: the invalidated body was served"
        );
        // And the key is stored again.
        s.warm("/own/after").await;
        assert!(
            s.handle.invalidate("/own/after").await.is_ok(),
            "{what}: invalidations keep failing"
        );
        assert_eq!(s.backend(), Backend::Redis, "{what}: the circuit opened");
    }
}
