//! tower-http's `CompressionLayer` on either side of the cache, through a real server:
//! what is stored, what each client gets, how often the origin is asked.
//!
//! - Cache outside compression (`.layer(CompressionLayer::new()).layer(cache)`): the cache
//!   sees compressed answers with `Vary: accept-encoding` and stores one entry per coding
//!   asked for; a hit is the stored bytes, compressed once.
//! - Cache inside compression (`.layer(cache).layer(CompressionLayer::new())`): the cache
//!   stores the identity body once, and every answer, hit or miss, is compressed on the way
//!   out for the client's `Accept-Encoding`.

use std::io::Read;

use axum::routing::get;
use axum::Router;
use tower_http::compression::CompressionLayer;
use tower_response_cache::{CacheHandle, CacheLayer};

use crate::support::{client, get_with, serve, stored, Answer};

/// 8 KiB of compressible text.
fn page() -> String {
    "tower-response-cache compresses well. ".repeat(216)[..8192].to_owned()
}

fn origin(calls: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Router {
    Router::new().route(
        "/page",
        get(move || {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { ([("content-type", "text/plain")], page()) }
        }),
    )
}

/// The body as the client reads it, decoded by its `Content-Encoding`.
fn decoded(answer: &Answer) -> String {
    let mut out = Vec::new();
    match answer.header("content-encoding") {
        "gzip" => {
            flate2::read::GzDecoder::new(&answer.body[..])
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => brotli_decompressor::BrotliDecompress(&mut &answer.body[..], &mut out).unwrap(),
        "" => out = answer.body.to_vec(),
        other => panic!("unexpected coding {other}"),
    }
    String::from_utf8(out).unwrap()
}

const GZIP: &[(&str, &str)] = &[("accept-encoding", "gzip")];
const BR: &[(&str, &str)] = &[("accept-encoding", "br")];
const IDENTITY: &[(&str, &str)] = &[];

#[tokio::test]
async fn cache_outside_compression_stores_one_compressed_entry_per_coding() {
    let calls = std::sync::Arc::default();
    let handle = CacheHandle::in_memory();
    let app = origin(std::sync::Arc::clone(&calls))
        .layer(CompressionLayer::new())
        .layer(CacheLayer::new(handle.clone()));
    let (addr, client) = (serve(app).await, client());
    let calls = || calls.load(std::sync::atomic::Ordering::SeqCst);

    let mut stores = 0;
    for (coding, headers) in [("gzip", GZIP), ("br", BR), ("", IDENTITY)] {
        let miss = get_with(&client, addr, "/page", headers).await;
        assert_eq!(miss.x_cache(), "MISS", "{coding}");
        stores += 1;
        stored(&handle, stores).await;
        let hit = get_with(&client, addr, "/page", headers).await;
        assert_eq!(hit.x_cache(), "HIT", "{coding}");
        assert_eq!(hit.header("content-encoding"), coding);
        assert_eq!(
            hit.body, miss.body,
            "{coding}: the stored bytes, as first sent"
        );
        assert_eq!(decoded(&hit), page());
        if !coding.is_empty() {
            assert!(
                hit.body.len() < page().len() / 4,
                "{coding} stored compressed"
            );
            assert!(hit.header("vary").eq_ignore_ascii_case("accept-encoding"));
        }
    }
    // One origin call per coding: each is its own variant of the one key.
    assert_eq!(calls(), 3);
    assert_eq!(handle.stats().entries, 3);
    // A browser's spelling of the same set shares the gzip entry.
    let spelled = get_with(&client, addr, "/page", &[("accept-encoding", "GZIP")]).await;
    assert_eq!(spelled.x_cache(), "HIT");
    assert_eq!(spelled.header("content-encoding"), "gzip");
    // One invalidation removes every coding.
    assert_eq!(handle.invalidate("/page").await.unwrap(), 3);
}

#[tokio::test]
async fn cache_inside_compression_stores_the_identity_body_and_compresses_every_hit() {
    let calls = std::sync::Arc::default();
    let handle = CacheHandle::in_memory();
    let app = origin(std::sync::Arc::clone(&calls))
        .layer(CacheLayer::new(handle.clone()))
        .layer(CompressionLayer::new());
    let (addr, client) = (serve(app).await, client());

    let miss = get_with(&client, addr, "/page", GZIP).await;
    assert_eq!(miss.x_cache(), "MISS");
    assert_eq!(miss.header("content-encoding"), "gzip");
    stored(&handle, 1).await;
    for (coding, headers) in [("gzip", GZIP), ("br", BR), ("", IDENTITY)] {
        let hit = get_with(&client, addr, "/page", headers).await;
        assert_eq!(
            hit.x_cache(),
            "HIT",
            "{coding}: one entry answers every coding"
        );
        assert_eq!(hit.header("content-encoding"), coding);
        assert_eq!(decoded(&hit), page());
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let stats = handle.stats();
    assert_eq!(stats.entries, 1);
    // What is held is the identity body (and its headers), not a compressed one.
    assert!(stats.bytes >= page().len() as u64, "{stats:?}");
}
