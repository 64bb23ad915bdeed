//! Invalidation stays cheap and complete on a real `redis-server` (issue 9, "Hostile
//! input", section 3): an exact invalidation refuses only fills of its own key, memory
//! follows the live entries, absurd TTLs never leave half a write, server-state errors are
//! outages, forged channel messages poison nothing, namespaces never alias, a Redis
//! restarted empty or from an old snapshot lets no stale fill or entry through, and an
//! invalidation racing the circuit's close is replayed, and a connection that answers nothing
//! is replaced.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::stack::*;
use crate::support::{eventually, IdleRuntime};
use tower_response_cache::coordination::Coordination;
use tower_response_cache::{Backend, CacheHandle, Entry, Pattern, Store};
use tower_response_cache::{RedisStore, StoreKey};

fn store(server: &RedisServer) -> RedisStore {
    store_at(&server.url())
}

fn store_at(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap()
}

/// An entry tagged `tag`.
fn tagged(body: &str, ttl: Duration, tag: &str) -> Arc<Entry> {
    Arc::new(
        Entry::new(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            bytes::Bytes::from(body.to_owned()),
            ttl,
        )
        .with_tags(vec![tag.to_owned()]),
    )
}

fn entry(body: &str, ttl: Duration) -> Arc<Entry> {
    Arc::new(Entry::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        bytes::Bytes::from(body.to_owned()),
        ttl,
    ))
}

fn key<'a>(namespace: &'a str, logical: &'a str) -> StoreKey<'a> {
    StoreKey {
        namespace,
        logical,
        variant: 1,
    }
}

fn cmd<T: redis::FromRedisValue>(server: &RedisServer, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut server.connection()).unwrap()
}

async fn stored(store: &RedisStore, key: StoreKey<'_>) -> bool {
    store.get(key).await.unwrap().is_some()
}

/// Item 1: one global counter made every exact invalidation (every POST) refuse every fill
/// in flight, in every namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_invalidation_refuses_fills_of_its_own_key_only() {
    let server = RedisServer::start();
    let web = store(&server);
    let sync = store(&server);
    let long = Duration::from_secs(60);
    // Not the first invalidation since Redis started (that one names the data set: it
    // refuses every fill in flight once).
    sync.invalidate("t", &Pattern::new("/warm-up"))
        .await
        .unwrap();

    // Fills in flight of /a, of eight other paths, and of /a in eight other namespaces;
    // another process POSTs to /a. (Counters are buckets keyed by a secret: another key
    // shares /a's bucket one time in 1 024, so one of the eight may be refused.)
    let token = web.current_write_token().await.unwrap();
    sync.invalidate("t", &Pattern::new("/a")).await.unwrap();
    web.put_checked(key("t", "/a"), entry("a", long), token)
        .await
        .unwrap();
    let others: Vec<(String, String)> = (0..8)
        .map(|i| ("t".to_owned(), format!("/b{i}")))
        .chain((0..8).map(|i| (format!("u{i}"), "/a".to_owned())))
        .collect();
    for (namespace, path) in &others {
        web.put_checked(key(namespace, path), entry("b", long), token)
            .await
            .unwrap();
    }
    assert!(
        !stored(&web, key("t", "/a")).await,
        "a fill of /a fetched before /a was invalidated was stored"
    );
    let mut refused = Vec::new();
    for (namespace, path) in &others {
        if !stored(&web, key(namespace, path)).await {
            refused.push(format!("{namespace}:{path}"));
        }
    }
    let other_paths = refused.iter().filter(|k| k.starts_with("t:")).count();
    assert!(
        other_paths <= 1,
        "an exact invalidation of /a refused fills of other paths: {refused:?}"
    );
    assert!(
        refused.len() - other_paths <= 1,
        "an exact invalidation in namespace t refused fills in other namespaces: {refused:?}"
    );

    // 100 POSTs on other paths, each while a fill is in flight: (almost) all fills land.
    let mut landed = 0;
    for i in 0..100 {
        let path = format!("/get/{i}");
        let token = web.current_write_token().await.unwrap();
        sync.invalidate("t", &Pattern::new(&format!("/post/{i}")))
            .await
            .unwrap();
        web.put_checked(key("t", &path), entry("x", long), token)
            .await
            .unwrap();
        landed += usize::from(stored(&web, key("t", &path)).await);
    }
    assert!(
        landed >= 95,
        "only {landed} of 100 fills survived unrelated POSTs"
    );

    // Globs, tags and invalidate_all still refuse every fill they might cover.
    for (i, how) in ["glob", "tag", "all"].into_iter().enumerate() {
        let path = format!("/wide/{i}");
        let token = web.current_write_token().await.unwrap();
        match how {
            "glob" => drop(sync.invalidate("t", &Pattern::new("/nothing/*")).await),
            "tag" => drop(sync.invalidate_tag("t", "some-tag").await),
            _ => drop(sync.invalidate_all("t").await),
        }
        web.put_checked(key("t", &path), entry("w", long), token)
            .await
            .unwrap();
        assert!(
            !stored(&web, key("t", &path)).await,
            "a fill in flight across a {how} invalidation was stored"
        );
    }
}

/// Item 4 (second half): after Redis restarts empty, its counter starts again; a fetch in
/// flight whose token equals the new counter by coincidence must still be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_from_before_an_empty_restart_is_refused_even_when_the_counter_matches() {
    let mut server = RedisServer::start();
    let web = store(&server);
    for _ in 0..3 {
        web.invalidate("t", &Pattern::new("/x")).await.unwrap();
    }
    let token = web.current_write_token().await.unwrap();
    tokio::task::block_in_place(|| server.restart_empty());
    // Another process invalidates /a as often as it takes to reach the same counter.
    let sync = store(&server);
    for _ in 0..3 {
        sync.invalidate("t", &Pattern::new("/a")).await.unwrap();
    }
    let counter: u64 = cmd(&server, &["GET", "tower-response-cache:gen"]);
    assert_eq!(counter, 3, "premise: the new counter equals the old one");
    // The connection noticed the restart: retry the write until it is sent.
    let written = eventually(Duration::from_secs(5), || async {
        web.put_checked(
            key("t", "/a"),
            entry("stale", Duration::from_secs(60)),
            token,
        )
        .await
        .is_ok()
    })
    .await;
    assert!(written, "the write never reached the restarted Redis");
    assert!(
        server.keys("t:k:*").is_empty(),
        "a fill fetched before an empty restart and an invalidation landed"
    );
    // A fresh token writes again.
    let token = web.current_write_token().await.unwrap();
    web.put_checked(
        key("t", "/a"),
        entry("fresh", Duration::from_secs(60)),
        token,
    )
    .await
    .unwrap();
    assert!(stored(&web, key("t", "/a")).await);
}

/// Item 2: a search page with a stream of distinct queries keeps about as many variants
/// in Redis as are alive, not every variant ever written (and tag sets likewise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_variants_and_tag_members_are_pruned_as_new_ones_are_written() {
    let server = RedisServer::start();
    let web = store(&server);
    // One new query every 10 ms, each alive 100 ms: about 10 alive at any time, and the
    // hash (and the tag set) never idle long enough to expire as a whole.
    let ttl = Duration::from_millis(100);
    let writes = 200u64;
    let alive = 10u64;
    for variant in 0..writes {
        let token = web.write_token();
        let search = StoreKey {
            namespace: "t",
            logical: "/search",
            variant,
        };
        web.put_checked(search, entry("results", ttl), token)
            .await
            .unwrap();
        let item = format!("/item/{variant}");
        let tagged = Arc::new(
            Entry::new(
                http::StatusCode::OK,
                http::HeaderMap::new(),
                bytes::Bytes::from_static(b"item"),
                ttl,
            )
            .with_tags(vec!["items".into()]),
        );
        web.put_checked(key("t", &item), tagged, token)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fields: u64 = cmd(&server, &["HLEN", "t:k:/search"]);
    let expiry: u64 = cmd(&server, &["ZCARD", "t:x:/search"]);
    let members: u64 = cmd(&server, &["SCARD", "t:m:tag:items"]);
    println!("after {writes} writes of 100 ms variants: {fields} fields, {expiry} expiry members, {members} tag members");
    assert!(
        fields <= 4 * alive,
        "the hash keeps {fields} variants of which about {alive} are alive"
    );
    assert!(expiry <= 4 * alive, "the expiry set keeps {expiry}");
    assert!(
        members <= 6 * alive,
        "the tag set keeps {members} members of which about {alive} are alive"
    );
    // The live ones are still hits, and an exact invalidation removes the expiry set too.
    let live = StoreKey {
        namespace: "t",
        logical: "/search",
        variant: writes - 1,
    };
    assert!(web.get(live).await.unwrap().is_some());
    web.invalidate("t", &Pattern::new("/search")).await.unwrap();
    assert!(server.keys("t:?:/search").is_empty());
}

/// Item 5: a `max-age` of 16+ digits made the write script fail after `HSET`: the value
/// had no TTL and no tag. A write is whole or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_ttl_is_clamped_and_no_write_is_ever_half_applied() {
    let server = RedisServer::start();
    let web = store(&server);
    let absurd = Duration::from_secs(99_999_999_999_999_999);
    let tagged = |body: &str| tagged(body, absurd, "company:ABC");
    web.put_checked(key("t", "/huge"), tagged("v"), web.write_token())
        .await
        .unwrap();
    let ttl: i64 = cmd(&server, &["PTTL", "t:k:/huge"]);
    assert!(
        ttl > 0 && ttl <= (1i64 << 31) * 1000,
        "the entry's TTL is {ttl} ms"
    );
    let member: bool = cmd(&server, &["SISMEMBER", "t:m:tag:company:ABC", "t:k:/huge"]);
    assert!(member, "the entry is not in its tag set");
    assert_eq!(web.invalidate_tag("t", "company:ABC").await.unwrap(), 1);
    assert!(server.keys("t:k:*").is_empty());

    // A foreign value under the tag key: the write is refused whole, not applied in half.
    let _: () = cmd(&server, &["SET", "t:m:tag:company:ABC", "foreign"]);
    let _ = web
        .put_checked(key("t", "/half"), tagged("v"), web.write_token())
        .await;
    let entry_there: bool = cmd(&server, &["EXISTS", "t:k:/half"]);
    assert!(
        !entry_there,
        "a value was written without its tag set membership"
    );
}

/// Item 7: the generation a channel message claims is not trusted; a malformed message is
/// ignored. A message claiming u64::MAX once broke every later invalidation (the restored
/// counter overflowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_channel_message_poisons_no_generation() {
    let s = relaxed_stack().await;
    s.warm("/x").await;
    let forged = format!(
        r#"{{"origin":1,"generation":{},"namespace":"t","invalidation":{{"kind":"pattern","value":"/nothing"}}}}"#,
        u64::MAX
    );
    for payload in [forged.as_str(), "not json", r#"{"origin":2}"#] {
        let _: i64 = cmd(
            &s.server,
            &["PUBLISH", "tower-response-cache:invalidations", payload],
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An outage and its healing raise Redis's counters to what this process has seen.
    s.server.pause();
    let opened = eventually(Duration::from_secs(5), || async {
        let _ = try_get(&s.client, s.addr, "/x").await;
        s.backend() == Backend::FallingBack
    })
    .await;
    s.server.resume();
    assert!(opened, "premise: the circuit opened while Redis was paused");
    s.wait_for_backend(Backend::Redis, Duration::from_secs(5), "after the pause")
        .await;
    let counter: Option<String> = cmd(&s.server, &["GET", "tower-response-cache:gen"]);
    let counter = counter.unwrap_or_else(|| "0".into());
    assert!(
        counter.parse::<u64>().is_ok_and(|c| c < 1_000_000),
        "the forged generation reached Redis's counter: {counter}"
    );
    s.handle
        .invalidate("/x")
        .await
        .expect("invalidations work after a forged message");
    assert_eq!(s.read("/x").await.x_cache(), "MISS");
    s.warm("/x").await;
}

/// A message claiming a generation above Redis's does not move the token this process
/// hands its fetches: a fetch that began before the next real invalidation (which draws
/// just above Redis's counter) is still refused by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_generation_never_lets_a_fetch_from_before_an_invalidation_land() {
    let server = RedisServer::start();
    let listener = store(&server);
    let invalidator = store(&server);
    let key = StoreKey {
        namespace: "t",
        logical: "/a",
        variant: 1,
    };
    // An invalidation names the data set (its epoch) first, and the listener learns it:
    // from here on only generations tell fetches apart.
    invalidator
        .invalidate("t", &Pattern::new("/warm-up"))
        .await
        .unwrap();
    listener.current_write_token().await.unwrap();
    // Let the listener subscribe, then tell it of a generation Redis never drew.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let forged = r#"{"origin":1,"generation":5000,"namespace":"t","invalidation":{"kind":"pattern","value":"/nothing"}}"#;
    let _: i64 = cmd(
        &server,
        &["PUBLISH", "tower-response-cache:invalidations", forged],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A fetch begins, then a real invalidation of its key, then the fetch's write.
    let fetched_before = listener.current_write_token().await.unwrap();
    invalidator
        .invalidate("t", &Pattern::new("/a"))
        .await
        .unwrap();
    let entry = Entry::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        bytes::Bytes::from_static(b"old"),
        Duration::from_secs(60),
    );
    listener
        .put_checked(key, std::sync::Arc::new(entry), fetched_before)
        .await
        .unwrap();
    assert!(
        listener.get(key).await.unwrap().is_none(),
        "a fetch from before the invalidation was stored after it"
    );
}

/// Item 8: a namespace containing `:` aliased another namespace's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_with_colons_never_alias_each_other() {
    let server = RedisServer::start();
    let redis = store(&server);
    let a = CacheHandle::builder(redis.clone()).namespace("a").build();
    let akb = CacheHandle::builder(redis).namespace("a:k:b").build();
    let calls = AtomicUsize::new(0);
    let load = |handle: &CacheHandle, key: &'static str, value: &'static str| {
        let handle = handle.clone();
        let calls = &calls;
        async move {
            handle
                .get_or_insert_with(key, async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    value.to_owned()
                })
                .await
        }
    };
    assert_eq!(load(&akb, "c", "namespace a:k:b").await, "namespace a:k:b");
    assert_eq!(load(&a, "b:k:c", "namespace a").await, "namespace a");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one namespace read the other's entry"
    );
    // Removing everything of namespace `a` leaves namespace `a:k:b` alone.
    a.invalidate_all().await.unwrap();
    assert_eq!(load(&akb, "c", "again").await, "namespace a:k:b");
    akb.invalidate_all().await.unwrap();
    assert!(server.keys("*:k:*").is_empty());
}

/// Item 6: BUSY (a long script) is an outage: the circuit opens, nothing is deleted, and
/// the entry is a Redis hit again once the script is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_redis_opens_the_circuit_and_deletes_nothing() {
    let server = RedisServer::start_with(&["--lua-time-limit", "10"]);
    let url = server.url();
    let s = Stack::start_at(server, &url, RELAXED, |b| b).await;
    let before = s.warm("/x").await;
    let busy = {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
            let _: redis::RedisResult<()> = redis::cmd("EVAL")
                .arg("while true do end")
                .arg(0)
                .query(&mut connection);
        })
    };
    let answering_busy = eventually(Duration::from_secs(5), || async {
        let reply: redis::RedisResult<String> =
            redis::cmd("PING").query(&mut s.server.connection());
        reply.is_err_and(|e| e.code() == Some("BUSY"))
    })
    .await;
    assert!(answering_busy, "premise: Redis answers BUSY");
    let opened = eventually(Duration::from_secs(5), || async {
        s.read("/x").await;
        s.backend() == Backend::FallingBack
    })
    .await;
    let _: redis::RedisResult<()> = redis::cmd("SCRIPT")
        .arg("KILL")
        .query(&mut s.server.connection());
    blocking(|| busy.join().unwrap());
    assert!(opened, "BUSY answers did not open the circuit");
    assert_eq!(
        s.server.keys("t:k:/x").len(),
        1,
        "a BUSY answer deleted the entry"
    );
    s.wait_for_backend(Backend::Redis, Duration::from_secs(5), "after SCRIPT KILL")
        .await;
    assert_eq!(s.warm("/x").await.body, before.body);
}

/// Item 6: NOPERM (an ACL user lacking `HGET` and `HMGET`) is an outage too, not a foreign value to
/// delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_refused_by_an_acl_opens_the_circuit_and_deletes_nothing() {
    use tower_response_cache::FallbackStore;
    use tower_response_cache::MemoryStore;
    let server = RedisServer::start();
    let _: () = cmd(
        &server,
        &[
            "ACL", "SETUSER", "cache", "on", ">pw", "~*", "&*", "+@all", "-hget", "-hmget",
        ],
    );
    let admin = CacheHandle::builder(store(&server)).namespace("t").build();
    let value = admin
        .get_or_insert_with("k", async { "stored".to_owned() })
        .await;
    assert_eq!(value, "stored");
    assert_eq!(server.keys("t:k:k").len(), 1);

    let url = format!("redis://cache:pw@127.0.0.1:{}/0", server.port);
    let restricted = FallbackStore::builder(store_at(&url), MemoryStore::new())
        .probe_interval(Duration::from_millis(100))
        .build()
        .await;
    let handle = CacheHandle::builder(restricted.clone())
        .namespace("t")
        .build();
    for _ in 0..5 {
        let read = handle
            .get_or_insert_with("k", async { "origin".to_owned() })
            .await;
        assert!(read == "origin" || read == "stored");
    }
    assert!(
        restricted.is_falling_back(),
        "NOPERM answers did not open the circuit"
    );
    assert_eq!(
        server.keys("t:k:k").len(),
        1,
        "a NOPERM answer deleted the entry"
    );
}

/// Item 3: a Redis restarted from a snapshot taken before another process's invalidation
/// (the sync pipeline, which then exited) hears it again from a process that heard it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_an_old_snapshot_replays_invalidations_heard_from_other_processes() {
    let mut s = Stack::start(RedisServer::start(), |b| b).await;
    let old = s.warm("/api/dashboard/ABC").await;
    s.server.save();
    {
        let sync = CacheHandle::builder(store(&s.server))
            .namespace("t")
            .build();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sync.invalidate("/api/dashboard/*").await.unwrap(), 1);
        sync.invalidate("/api/other").await.unwrap();
    }
    // The web process hears it on the channel (the entry is gone: nothing to observe but
    // time).
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocking(|| s.server.restart());
    assert_eq!(
        s.server.keys("t:k:*").len(),
        1,
        "premise: the snapshot brings the entry back"
    );
    let replayed = eventually(Duration::from_secs(5), || async {
        s.server.keys("t:k:/api/dashboard/ABC").is_empty()
    })
    .await;
    assert!(
        replayed,
        "the restarted Redis still holds the entry the sync pipeline invalidated after its snapshot"
    );
    s.wait_for_backend(Backend::Redis, Duration::from_secs(5), "after the replay")
        .await;
    let after = s.read("/api/dashboard/ABC").await;
    assert_ne!(after.body, old.body, "the invalidated entry came back");
}

/// Item 4: an invalidation made while the probe closes the circuit was queued "to
/// replay", and the circuit closed without replaying it. A thread fires an invalidation
/// exactly when the queue has just been replayed and the circuit is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_racing_the_circuit_closing_is_never_left_unreplayed() {
    let server = RedisServer::start();
    let url = server.url();
    let s = Stack::start_at(server, &url, RELAXED, |b| {
        b.probe_interval(Duration::from_millis(1))
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let fired = Arc::new(AtomicUsize::new(0));
    let spinner = {
        let (store, stop, fired) = (s.store.clone(), stop.clone(), fired.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let pattern = Pattern::new("/k");
            // A few per opening: the first lands as the circuit opens, the next ones in
            // the window after a replay emptied the queue. Without a bound the spinner
            // refills the queue after every replay and, on a starved machine, keeps the
            // circuit open for seconds: the race is what this test is about, not that.
            let (mut opening, mut this_opening) = (u64::MAX, 0);
            while !stop.load(Ordering::Relaxed) {
                if !store.is_falling_back() || store.pending_invalidations() != 0 {
                    std::hint::spin_loop();
                    continue;
                }
                let openings = store.stats().circuit_openings;
                if openings != opening {
                    (opening, this_opening) = (openings, 0);
                }
                if this_opening < 4 {
                    let _ = runtime.block_on(store.invalidate("t", &pattern));
                    fired.fetch_add(1, Ordering::Relaxed);
                    this_opening += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        })
    };
    let mut left_behind = 0;
    let mut rounds = 0;
    for _ in 0..100 {
        // Drop the store's connection: its next command fails and opens the circuit.
        let _: redis::RedisResult<u64> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query(&mut s.server.connection());
        let opened = eventually(Duration::from_secs(2), || async {
            let _ = s.store.get(key("t", "/probe")).await;
            s.store.is_falling_back()
        })
        .await;
        if !opened {
            continue;
        }
        rounds += 1;
        s.wait_for_backend(Backend::Redis, Duration::from_secs(5), "after the replay")
            .await;
        let openings = s.store.stats().circuit_openings;
        // Left behind: still queued a second later with the circuit closed all along (a
        // replay that is merely late on a starved machine is not the race).
        let replayed_or_reopened = eventually(Duration::from_secs(1), || async {
            s.store.is_falling_back()
                || s.store.pending_invalidations() == 0
                || s.store.stats().circuit_openings != openings
        })
        .await;
        if !replayed_or_reopened {
            left_behind += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    blocking(|| spinner.join().unwrap());
    println!(
        "{rounds} closings, {} invalidations fired while closing, {left_behind} left behind",
        fired.load(Ordering::Relaxed)
    );
    assert!(
        rounds >= 50,
        "premise: the circuit opened only {rounds} times"
    );
    assert_eq!(
        left_behind, 0,
        "the circuit closed with invalidations queued and never replayed"
    );
}

/// A tag on 200 000 entries is invalidated in bounded batches (`SSCAN`), never read in one
/// reply: `SMEMBERS` of such a set holds Redis about 70 ms for every process. No call of
/// the invalidation reaches the slow log at 10 ms, and every member goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_on_many_entries_is_invalidated_in_batches_that_never_stall_redis() {
    let server = RedisServer::start();
    let store = store(&server);
    let long = Duration::from_secs(600);
    store
        .put(key("t", "/real"), tagged("real", long, "big"))
        .await
        .unwrap();
    let tag_keys = server.keys("*tag:big");
    assert_eq!(tag_keys.len(), 1, "{tag_keys:?}");
    // 200 000 more members (entries long gone, as a tag set accumulates them).
    let _: () = cmd(
        &server,
        &[
            "EVAL",
            "for i = 1, 200000 do redis.call('SADD', KEYS[1], ARGV[1] .. i) end",
            "1",
            &tag_keys[0],
            "t:k:/gone/",
        ],
    );
    let _: () = cmd(
        &server,
        &["CONFIG", "SET", "slowlog-log-slower-than", "10000"],
    );
    let _: () = cmd(&server, &["SLOWLOG", "RESET"]);

    store.invalidate_tag("t", "big").await.unwrap();

    let slow: Vec<redis::Value> = cmd(&server, &["SLOWLOG", "GET", "10"]);
    assert!(
        slow.is_empty(),
        "a call of the tag invalidation stalled Redis for 10 ms or more: {slow:?}"
    );
    assert!(
        !stored(&store, key("t", "/real")).await,
        "the tagged entry is gone"
    );
    assert!(
        server.keys("*tag:big").is_empty(),
        "every member left the tag set"
    );
}

/// A connection that answers nothing is replaced. Its driver runs on the runtime of the
/// call that opened it: here a runtime that then stops being polled (an application that
/// invalidated from a `block_on` of its own), which is what a peer that vanished without
/// a reset looks like too. Every call on it runs out of time, and the connection manager
/// reconnects only after an error it sees itself: without the store renewing the
/// connection, Redis is never read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_answers_nothing_is_replaced() {
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(100))
        .build()
        .unwrap();
    store
        .put(key("t", "/page"), entry("kept", Duration::from_secs(60)))
        .await
        .unwrap();
    // Reopen the connections from a runtime that then idles.
    cmd::<u64>(&server, &["CLIENT", "KILL", "TYPE", "normal"]);
    let (idle, opened) = {
        let store = store.clone();
        blocking(|| {
            IdleRuntime::after(async move {
                // The first calls fail (killed connections); the next connect here.
                for _ in 0..20 {
                    if store.get(key("t", "/page")).await.is_ok() {
                        return true;
                    }
                }
                false
            })
        })
    };
    assert!(opened, "premise: the idle runtime's call reached Redis");
    let read = eventually(Duration::from_secs(5), || async {
        store
            .get(key("t", "/page"))
            .await
            .is_ok_and(|e| e.is_some())
    })
    .await;
    blocking(|| drop(idle));
    assert!(
        read,
        "every read ran out of time on a connection nobody drives"
    );
}
