//! A caching reverse proxy in a few dozen lines: `CacheLayer` with the RFC 9111
//! shared-cache preset in front of a hyper client that forwards to an upstream.
//!
//! ```sh
//! cargo run --example proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:3000
//! curl -i http://127.0.0.1:8080/api/companies   # X-Cache / Cache-Status show what happened
//! ```
//!
//! Also a way to test the layer against any HTTP origin.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Router;
use http::{StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower_response_cache::{CacheHandle, CacheLayer, CachePolicy, MemoryStore};

/// The proxy: every request is forwarded to `upstream` (scheme and authority replaced),
/// answered from the cache where RFC 9111 allows.
pub fn proxy_app(upstream: Uri, cache: CacheHandle) -> Router {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    let forward = move |mut request: Request| {
        let client = client.clone();
        let upstream = upstream.clone();
        async move {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let mut target = upstream.into_parts();
            target.path_and_query = path.parse().ok();
            *request.uri_mut() = Uri::from_parts(target).expect("upstream URI");
            request.headers_mut().remove(http::header::HOST);
            match client.request(request).await {
                Ok(response) => response.map(Body::new).into_response(),
                Err(error) => {
                    (StatusCode::BAD_GATEWAY, format!("upstream: {error}\n")).into_response()
                }
            }
        }
    };
    Router::new()
        .fallback(forward)
        .layer(CacheLayer::new(cache).policy(CachePolicy::rfc9111()))
}

const USAGE: &str = "usage: proxy [--listen ADDR] [--upstream URL]   (defaults 127.0.0.1:8080, http://127.0.0.1:3000)";

/// `--listen ADDR --upstream URL`, each optional; anything else is a usage error at start.
pub fn parse_args(args: impl Iterator<Item = String>) -> Result<(String, Uri), String> {
    let (mut listen, mut upstream) = ("127.0.0.1:8080".to_owned(), None);
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => {
                value
                    .parse::<std::net::SocketAddr>()
                    .map_err(|e| format!("--listen {value}: {e}"))?;
                listen = value;
            }
            "--upstream" => {
                let uri: Uri = value
                    .parse()
                    .map_err(|e| format!("--upstream {value}: {e}"))?;
                if uri.scheme().is_none() || uri.authority().is_none() {
                    return Err(format!("--upstream {value}: needs http://host:port"));
                }
                upstream = Some(uri);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let upstream = upstream.unwrap_or_else(|| Uri::from_static("http://127.0.0.1:3000"));
    Ok((listen, upstream))
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    tracing_subscriber::fmt::init();
    let (listen, upstream) = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("{error}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let cache = CacheHandle::builder(MemoryStore::new())
        .namespace("proxy")
        .ttl(Duration::from_secs(60))
        .build();
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    println!("caching proxy on http://{listen} -> {upstream}");
    axum::serve(listener, proxy_app(upstream, cache))
        .await
        .expect("serve");
}
