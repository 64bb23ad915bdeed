//! Unsafe methods (`POST`, `PUT`, `DELETE`, … and, in the RFC 9111 preset, any method the
//! cache does not know): passed through, and on success their key's entries are
//! invalidated before the client hears back, so its next read is fresh (RFC 9111 §4.4).

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{CONTENT_LOCATION, HOST, LOCATION};
use http::{Request, Response};

use super::config::Config;
use crate::body::CacheBody;
use crate::headers::{self, Forward, CACHE_STATUS, X_CACHE};
use crate::pattern::Pattern;

/// An unsafe method: pass it through, then invalidate its key if it succeeded, before the
/// client hears back (so its next read is fresh).
pub(super) async fn invalidate_after<F, B, E>(
    config: Arc<Config>,
    logical: Option<String>,
    host: Option<String>,
    future: F,
) -> Result<Response<CacheBody<B>>, E>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    let response = future.await?;
    let status = response.status();
    let mut failed = false;
    if status.is_success() || status.is_redirection() {
        let mut keys: Vec<String> = logical.into_iter().collect();
        if config.policy.is_rfc9111() {
            // RFC 9111 §4.4: also the same-origin URIs the response points at.
            for name in [LOCATION, CONTENT_LOCATION] {
                if let Some(key) = response
                    .headers()
                    .get(name)
                    .and_then(|v| same_origin_key(&config, v, host.as_deref()))
                {
                    keys.push(key);
                }
            }
        }
        // In a task of its own: a client that disconnects (dropping this future) does not
        // cancel the invalidation between its keys. The write succeeded either way, so a
        // failed invalidation does not fail the answer; it is logged and said in its
        // `Cache-Status`, because the next read may still find the old entry.
        let handle = config.handle.clone();
        let invalidate = async move {
            let mut all_applied = true;
            for key in keys {
                let pattern = Pattern::new(&crate::pattern::escape(&key));
                if let Err(error) = handle.invalidate_matching(&pattern).await {
                    tracing::warn!(%key, %error, "invalidation after an unsafe method failed");
                    all_applied = false;
                }
            }
            all_applied
        };
        // Without a runtime to spawn on (a caller driving the service by hand), inline.
        failed = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => !runtime.spawn(invalidate).await.unwrap_or(false),
            Err(_) => !invalidate.await,
        };
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(headers::CACHE_TAG);
    parts.headers.insert(X_CACHE, headers::BYPASS);
    parts.headers.insert(
        CACHE_STATUS,
        headers::forward_status(
            Forward::Method,
            failed.then_some("invalidation-failed"),
            false,
        ),
    );
    Ok(Response::from_parts(parts, CacheBody::passthrough(body)))
}

pub(super) fn request_host(parts: &http::request::Parts) -> Option<String> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_ascii_lowercase)
        })
}

/// The logical key of a `Location` / `Content-Location` value on the request's origin.
fn same_origin_key(
    config: &Config,
    value: &http::HeaderValue,
    host: Option<&str>,
) -> Option<String> {
    let uri: http::Uri = value.to_str().ok()?.parse().ok()?;
    if let Some(authority) = uri.authority() {
        if Some(authority.as_str().to_ascii_lowercase().as_str()) != host {
            return None;
        }
    }
    let path = uri.path_and_query()?.as_str();
    let mut request = Request::get(path);
    if let Some(host) = host {
        request = request.header(HOST, host);
    }
    let (parts, ()) = request.body(()).ok()?.into_parts();
    config.logical_key(&parts).map(Cow::into_owned)
}
