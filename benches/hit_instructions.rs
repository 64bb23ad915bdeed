//! Instructions per request, for a figure the noisy machines here cannot shake: run under
//! callgrind once as the bare service and once behind a warm cache, and compare.
//!
//! ```sh
//! cargo bench --bench hit_instructions --no-run
//! B=$(ls -t target/release/deps/hit_instructions-* | grep -v '\.d$' | head -1)
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null $B baseline 20000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null $B hit 20000
//! ```
//! (`Collected :` is the total; subtract a run with 0 requests for the fixed cost.)

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_response_cache::{CacheHandle, CacheLayer};

type Req = Request<Full<Bytes>>;

fn origin(
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone + Send
{
    let body = Bytes::from(vec![b'x'; 2048]);
    tower::service_fn(move |_req: Req| {
        let body = body.clone();
        async move {
            let mut response = Response::new(Full::new(body));
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    })
}

fn get() -> Req {
    Request::get("/api/dashboard/ABC")
        .header("host", "portal.example.com")
        .header("accept", "application/json")
        .body(Full::default())
        .unwrap()
}

async fn drive<S, B>(service: &S)
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(get()).await.unwrap();
    response.into_body().collect().await.unwrap();
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mode = args.next().unwrap_or_else(|| "hit".into());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let handle = CacheHandle::in_memory();
        let cached = CacheLayer::new(handle.clone()).layer(origin());
        let bare = origin();
        // Warm both the same way, so the fixed cost is alike.
        drive(&cached).await;
        while handle.stats().stores == 0 {
            tokio::task::yield_now().await;
        }
        drive(&bare).await;
        for _ in 0..n {
            match mode.as_str() {
                "baseline" => drive(&bare).await,
                _ => drive(&cached).await,
            }
        }
        if mode != "baseline" {
            assert_eq!(
                handle.stats().hits as usize,
                n,
                "every request must be a hit"
            );
        }
    });
}
