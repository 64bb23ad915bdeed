//! A URL keeps a bounded number of `Vary` variants; junk values of a varied-on header must
//! not push out the variant real clients read.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};
use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore};

type Req = Request<Full<Bytes>>;

#[tokio::test(start_paused = true)]
async fn a_hot_variant_survives_junk_user_agents() {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = {
        let calls = calls.clone();
        service_fn(move |r: Req| {
            calls.fetch_add(1, Ordering::SeqCst);
            let agent = r.headers()["user-agent"].to_str().unwrap().to_owned();
            async move {
                let mut response = Response::new(Full::new(Bytes::from(agent)));
                response
                    .headers_mut()
                    .insert("vary", "User-Agent".parse().unwrap());
                Ok::<_, Infallible>(response)
            }
        })
    };
    let handle = CacheHandle::builder(MemoryStore::new()).build();
    let service = CacheLayer::new(handle).layer(origin);
    let get = |agent: String| {
        let service = service.clone();
        async move {
            let request = Request::get("/page")
                .header("user-agent", agent.as_str())
                .body(Full::default())
                .unwrap();
            let response = service.oneshot(request).await.unwrap();
            let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, agent.as_bytes());
            x_cache
        }
    };
    assert_eq!(get("Real/1.0".into()).await, "MISS");
    for junk in 0..50 {
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(
            get("Real/1.0".into()).await,
            "HIT",
            "the hot variant was evicted after {junk} junk variants"
        );
        assert_eq!(get(format!("Junk/{junk}")).await, "MISS");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 51);
}
