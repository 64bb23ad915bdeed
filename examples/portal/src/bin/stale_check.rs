//! Load-test helper: syncs one company every interval while readers fetch its dashboard,
//! and counts stale reads.
//!
//! A read is stale when it started after a sync had completed (the portal answered the
//! `POST` and named no failed invalidation in `cache.errors`) yet carries an older
//! `alter_id` than that sync produced. A sync whose invalidation failed (Redis was out of
//! reach: it applied in that instance's memory and waits to be replayed) is counted as
//! `unconfirmed` and sets no floor: the cache told its caller that other instances may
//! still serve the old dashboard. Run alongside `oha`
//! by `benches/load/run.sh`; prints one JSON line and exits non-zero on any stale read or
//! failed request.
//!
//! ```sh
//! cargo run --release -p portal --bin stale_check -- --url http://127.0.0.1:3000 --guid <guid> \
//!     --seconds 10 --interval-ms 1000 --readers 4
//! ```
//!
//! A fleet: the syncs go to `--url`, and the readers take turns over it and every
//! `--read-url` (other instances on the same Redis), all sending `--host` (the fleet's
//! public host, which is part of the key) when given. A read of any instance that began
//! after a sync completed on the first must carry that sync's data.

use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
}

struct Args {
    url: String,
    /// Other instances to read from (the syncs go to `url`).
    read_urls: Vec<String>,
    /// The `Host` every request sends, when given.
    host: Option<String>,
    guid: String,
    seconds: u64,
    interval: Duration,
    readers: usize,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        url: "http://127.0.0.1:3000".to_owned(),
        read_urls: Vec::new(),
        host: None,
        guid: String::new(),
        seconds: 10,
        interval: Duration::from_secs(1),
        readers: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--url" => args.url = value.trim_end_matches('/').to_owned(),
            "--read-url" => args.read_urls.push(value.trim_end_matches('/').to_owned()),
            "--host" => args.host = Some(value),
            "--guid" => args.guid = value,
            "--seconds" => args.seconds = number()?,
            "--interval-ms" => args.interval = Duration::from_millis(number()?),
            "--readers" => args.readers = number()? as usize,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.guid.is_empty() {
        return Err("--guid is required".to_owned());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("stale_check: {error}");
            return ExitCode::from(2);
        }
    };
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let dashboards: Vec<String> = std::iter::once(&args.url)
        .chain(&args.read_urls)
        .map(|url| format!("{url}/api/dashboard/{}", args.guid))
        .collect();
    let sync_url = format!("{}/api/sync/{}", args.url, args.guid);
    let host = args.host.clone();
    let counts = Arc::new(Counts::default());
    // The alter_id of the last sync whose answer has arrived.
    let committed = Arc::new(AtomicI64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);

    let readers: Vec<_> = (0..args.readers)
        .map(|i| {
            let (client, url) = (client.clone(), dashboards[i % dashboards.len()].clone());
            let host = host.clone();
            let (counts, committed) = (counts.clone(), committed.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let floor = committed.load(Ordering::SeqCst);
                    counts.reads.fetch_add(1, Ordering::Relaxed);
                    match fetch(&client, Method::GET, &url, host.as_deref()).await {
                        Ok(Answer {
                            x_cache, alter_id, ..
                        }) => {
                            let counter = if x_cache == "HIT" {
                                &counts.hits
                            } else {
                                &counts.misses
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            if alter_id < floor {
                                counts.stale.fetch_add(1, Ordering::Relaxed);
                                eprintln!("stale read: alter_id {alter_id} after sync to {floor} completed ({x_cache})");
                            }
                        }
                        Err(error) => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("read failed: {error}");
                        }
                    }
                }
            })
        })
        .collect();

    let mut syncs = 0u64;
    let mut unconfirmed = 0u64;
    let mut slowest_sync = Duration::ZERO;
    let mut ticks = tokio::time::interval(args.interval);
    ticks.tick().await;
    while Instant::now() + args.interval <= deadline {
        ticks.tick().await;
        let started = Instant::now();
        match fetch(&client, Method::POST, &sync_url, host.as_deref()).await {
            Ok(answer) => {
                if answer.invalidation_failed {
                    unconfirmed += 1;
                } else {
                    committed.fetch_max(answer.alter_id, Ordering::SeqCst);
                }
                syncs += 1;
                slowest_sync = slowest_sync.max(started.elapsed());
            }
            Err(error) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("sync failed: {error}");
            }
        }
    }
    for reader in readers {
        let _ = reader.await;
    }

    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (stale, errors) = (get(&counts.stale), get(&counts.errors));
    println!(
        "{}",
        serde_json::json!({
            "syncs": syncs,
            "unconfirmed": unconfirmed,
            "slowest_sync_ms": slowest_sync.as_millis() as u64,
            "final_alter_id": committed.load(Ordering::SeqCst),
            "reads": get(&counts.reads),
            "hits": get(&counts.hits),
            "misses": get(&counts.misses),
            "stale": stale,
            "errors": errors,
            "instances": dashboards.len(),
        })
    );
    if stale == 0 && errors == 0 && syncs > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What one answer said.
struct Answer {
    /// The `X-Cache` header.
    x_cache: String,
    /// The data's version.
    alter_id: i64,
    /// A sync's answer named a failed invalidation (`cache.errors`).
    invalidation_failed: bool,
}

/// One request (with `host` as its `Host`, when given).
async fn fetch(
    client: &HttpClient,
    method: Method,
    url: &str,
    host: Option<&str>,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(host) = host {
        request = request.header(hyper::header::HOST, host);
    }
    let request = request.body(Full::default())?;
    let response = client.request(request).await?;
    let status = response.status();
    let x_cache = response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        return Err(format!("{url}: {status}: {}", String::from_utf8_lossy(&body)).into());
    }
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    let alter_id = json["alter_id"]
        .as_i64()
        .ok_or_else(|| format!("{url}: no alter_id in the answer"))?;
    let invalidation_failed = json["cache"]["errors"]
        .as_array()
        .is_some_and(|errors| !errors.is_empty());
    Ok(Answer {
        x_cache,
        alter_id,
        invalidation_failed,
    })
}
