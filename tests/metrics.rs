//! The metrics the crate emits are the ones its docs list: every name in the source is in
//! the tables of the README and of the crate docs (and nothing else is), and a workload
//! through a real HTTP server reaches an installed recorder with the documented type and
//! labels.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore, PurgeLayer};

use support::{client, get, request, serve, stored, until_hit, Origin};

/// One documented metric: its type and the names of its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Doc {
    kind: String,
    labels: BTreeSet<String>,
}

/// The rows of the metrics table in `text` (a README, or `//!` docs).
fn documented(text: &str) -> BTreeMap<String, Doc> {
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_start_matches("//!").trim();
        let Some(rest) = line.strip_prefix("| `tower_response_cache_") else {
            continue;
        };
        let cells: Vec<&str> = rest.split(" | ").collect();
        let name = format!("tower_response_cache_{}", cells[0].trim_end_matches('`'));
        // `namespace`, `backend` (`memory`, …): the names, without the values in brackets.
        let mut names = String::new();
        let mut depth = 0;
        for c in cells[2].chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                c if depth == 0 => names.push(c),
                _ => {}
            }
        }
        let labels = names
            .split(',')
            .filter_map(|l| l.split('`').nth(1))
            .map(str::to_owned)
            .collect();
        let doc = Doc {
            kind: cells[1].to_owned(),
            labels,
        };
        assert!(rows.insert(name.clone(), doc).is_none(), "{name} twice");
    }
    rows
}

/// Every metric name the source emits: literals, and the counters `bump!` names.
fn emitted_in_source() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut dirs = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Only code: the docs are what is checked against.
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for (i, _) in code.match_indices("\"tower_response_cache_") {
                let rest = &code[i + 1..];
                let end = rest.find('"').unwrap();
                let name = &rest[..end];
                // The `bump!` macro's prefix, completed below.
                if name != "tower_response_cache_" {
                    names.insert(name.to_owned());
                }
            }
            for (i, _) in code.match_indices("bump!(") {
                let args = &code[i + 6..];
                // Up to the parenthesis that closes the macro's (its arguments may call).
                let mut depth = 0;
                let end = args
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth < 0
                    })
                    .unwrap()
                    .0;
                let args = &args[..end];
                if let Some((_, counter)) = args.rsplit_once(", ") {
                    if counter.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                        names.insert(format!("tower_response_cache_{counter}_total"));
                    }
                }
            }
        }
    }
    names
}

#[test]
fn the_readme_and_the_crate_docs_list_exactly_the_metrics_the_source_emits() {
    let readme = documented(include_str!("../README.md"));
    let crate_docs = documented(include_str!("../src/lib.rs"));
    assert_eq!(readme, crate_docs, "README and crate docs disagree");
    let names: BTreeSet<String> = readme.keys().cloned().collect();
    assert_eq!(names, emitted_in_source());
    for name in &names {
        assert!(name.starts_with("tower_response_cache_"), "{name}");
    }
}

/// Every registration a recorder sees: name → (type, label names).
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<BTreeMap<String, Doc>>>);

impl Seen {
    fn register(&self, kind: &str, key: &Key) {
        let doc = Doc {
            kind: kind.to_owned(),
            labels: key.labels().map(|l| l.key().to_owned()).collect(),
        };
        let mut seen = self.0.lock().unwrap();
        if let Some(before) = seen.insert(key.name().to_owned(), doc.clone()) {
            assert_eq!(before, doc, "{} registered two ways", key.name());
        }
    }
}

impl Recorder for Seen {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.register("counter", key);
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.register("gauge", key);
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.register("histogram", key);
        Histogram::noop()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_reaches_the_recorder_as_documented() {
    let seen = Seen::default();
    metrics::set_global_recorder(seen.clone()).expect("the only recorder of this test binary");

    // A budget of a few entries, so a flood of keys evicts.
    let store = MemoryStore::builder().max_bytes(64 << 10).build();
    let handle = CacheHandle::builder(store).namespace("m").build();
    let cache = CacheLayer::new(handle.clone());
    let purge = PurgeLayer::new(&cache, "metrics-test-token-0123");
    let origin = Origin::default();
    let addr = serve(origin.app(cache).layer(purge)).await;
    let client = client();

    until_hit(&client, addr, "/a").await;
    get(&client, addr, "/nostore?cc=no-store").await;
    request(&client, "GET", addr, "/a", &[("authorization", "x")]).await;
    for i in 0..64 {
        get(&client, addr, &format!("/big/{i}?size=8000")).await;
    }
    stored(&handle, 10).await;
    let auth = [("authorization", "Bearer metrics-test-token-0123")];
    request(&client, "PURGE", addr, "/a", &auth).await;
    request(&client, "PURGE", addr, "/a", &[]).await;
    handle.invalidate_tag("t").await.unwrap();
    handle.invalidate_soft("/big/*").await.unwrap();
    handle.invalidate_all().await.unwrap();
    handle.record_gauges();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let documented = documented(include_str!("../README.md"));
    let seen = seen.0.lock().unwrap().clone();
    for (name, doc) in &seen {
        assert_eq!(documented.get(name), Some(doc), "{name} as recorded");
    }
    for name in [
        "hits_total",
        "misses_total",
        "stores_total",
        "bypasses_total",
        "evictions_total",
        "invalidations_total",
        "invalidation_seconds",
        "purge_requests_total",
        "entries",
        "bytes",
        "backend",
    ] {
        let name = format!("tower_response_cache_{name}");
        assert!(seen.contains_key(&name), "{name} never recorded: {seen:?}");
    }
}
