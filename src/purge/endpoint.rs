//! What a purge request is answered: the refusals, in the order they are checked (rate,
//! token, size, method, body), then the invalidation.
//!
//! The rate limit comes first, so a client guessing tokens is slowed down like any other;
//! the token comes before the body is read, so nobody without it makes the server read
//! anything.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::header::{CACHE_CONTROL, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::command::{self, Action};
use super::settings::Settings;
use crate::body::BoxError;
use crate::handle::CacheError;
use crate::pattern::Pattern;

/// Whether `request` is for the purge endpoint: any `PURGE`, or any method at the JSON path.
pub(super) fn is_purge<B>(settings: &Settings, request: &Request<B>) -> bool {
    request.method().as_str() == "PURGE" || request.uri().path() == &*settings.json_path
}

/// The answer to a purge request, counted in `tower_response_cache_purge_requests_total`.
pub(super) async fn answer<B>(settings: Settings, request: Request<B>) -> Response<Bytes>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let response = decide(&settings, request).await;
    metrics::counter!(
        "tower_response_cache_purge_requests_total",
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

async fn decide<B>(settings: &Settings, request: Request<B>) -> Response<Bytes>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if let Err(wait) = settings.bucket.take() {
        return too_many(wait);
    }
    match bearer(request.headers()) {
        None => return unauthorized("missing bearer token", r#"Bearer realm="purge""#),
        // Constant time in the token's bytes: only its length can be learnt by timing.
        Some(token) if !bool::from(token.ct_eq(&settings.token)) => {
            return unauthorized(
                "wrong bearer token",
                r#"Bearer realm="purge", error="invalid_token""#,
            );
        }
        Some(_) => {}
    }
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > settings.max_body_size as u64) {
        return too_large(settings.max_body_size);
    }
    if request.method().as_str() == "PURGE" {
        return purge_path(settings, request).await;
    }
    if request.method() != Method::POST {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "use POST (or PURGE <path>)");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST, PURGE"));
        return response;
    }
    let body = match Limited::new(request.into_body(), settings.max_body_size)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return too_large(settings.max_body_size)
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}")),
    };
    let handle = &settings.cache.handle;
    let result = match command::parse(&body) {
        Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
        Ok(Action::Pattern { pattern, soft }) if soft => handle.invalidate_soft(&pattern).await,
        Ok(Action::Pattern { pattern, .. }) => handle.invalidate(&pattern).await,
        Ok(Action::Tag(tag)) => handle.invalidate_tag(&tag).await,
        Ok(Action::All) => handle.invalidate_all().await,
    };
    removed(result, None)
}

/// `PURGE <path>`: every variant of the logical key a `GET` of that URI is cached under.
async fn purge_path<B>(settings: &Settings, request: Request<B>) -> Response<Bytes> {
    let (mut parts, _) = request.into_parts();
    // The key function is written for the requests the layer caches.
    parts.method = Method::GET;
    let Some(key) = settings.cache.logical_key(&parts) else {
        let message = format!(
            "{} has no cache key: the cache layer sends it around the cache",
            parts.uri.path()
        );
        return error(StatusCode::BAD_REQUEST, &message);
    };
    let key = key.into_owned();
    let result = settings
        .cache
        .handle
        .invalidate(&Pattern::escape(&key))
        .await;
    removed(result, Some(key))
}

fn removed(result: Result<u64, CacheError>, key: Option<String>) -> Response<Bytes> {
    match result {
        Ok(removed) => match key {
            Some(key) => json_response(StatusCode::OK, json!({ "removed": removed, "key": key })),
            None => json_response(StatusCode::OK, json!({ "removed": removed })),
        },
        Err(e) => {
            let message = match std::error::Error::source(&e) {
                Some(source) => format!("{e}: {source}"),
                None => e.to_string(),
            };
            // The local part applied: this process serves nothing the purge matched.
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": message, "applied_locally": true }),
            )
        }
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive).
fn bearer(headers: &http::HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

fn too_many(wait: Duration) -> Response<Bytes> {
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, "purge rate limit reached");
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(RETRY_AFTER, secs.max(1).into());
    response
}

fn unauthorized(message: &str, challenge: &'static str) -> Response<Bytes> {
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}

fn too_large(limit: usize) -> Response<Bytes> {
    let message = format!("body over {limit} bytes");
    error(StatusCode::PAYLOAD_TOO_LARGE, &message)
}

fn error(status: StatusCode, message: &str) -> Response<Bytes> {
    json_response(status, json!({ "error": message }))
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
