//! `GET /metrics`: the crate's metrics and the portal's own, in the Prometheus text format.
//!
//! The portal installs `metrics-exporter-prometheus`'s recorder once per process and renders
//! its handle in a handler of its own (no second listener). Histograms are summaries with
//! p50, p90 and p99 over a rolling 10-second window (two buckets of 5 s), so the page's
//! live charts show the last seconds, not the process's whole life. Besides the crate's
//! `tower_response_cache_*` metrics (the table is in the crate's README), the portal
//! records:
//!
//! - `portal_request_duration_seconds{route}`: time to the response head, by matched route;
//! - `portal_origin_fetches_total{route}`: dashboard computations, i.e. requests the cache
//!   let through to the handler.

use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::AppState;

/// How often the recorder drains its histograms into the summaries.
const UPKEEP: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder, installed on first use.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(install).clone()
}

fn install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_quantiles(&[0.5, 0.9, 0.99])
        .and_then(|b| b.set_bucket_duration(UPKEEP))
        .expect("constant, valid settings")
        .set_bucket_count(NonZeroU32::new(2).expect("non-zero"));
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(error) = metrics::set_global_recorder(recorder) {
        // An embedding application installed its own: `/metrics` then shows nothing.
        tracing::warn!(%error, "another metrics recorder is installed; /metrics stays empty");
    }
    let upkeep = handle.clone();
    // A thread rather than a task: the recorder outlives any one runtime (tests start many).
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP);
            upkeep.run_upkeep();
        })
        .expect("spawn the metrics upkeep thread");
    handle
}

/// The scrape: the cache's gauges set from a fresh snapshot, then everything rendered.
pub async fn render(State(state): State<AppState>) -> Response {
    if let Some(cache) = &state.cache {
        cache.record_gauges();
    }
    let mut response = recorder().render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Middleware: time every request to its response head, by matched route.
pub async fn record_latency(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!("portal_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
