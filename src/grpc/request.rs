//! The request side of a gRPC call: is it one the cache may answer, its key, and its
//! message read into memory (bounded) so it can be hashed and still be forwarded.

use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt};
use http::header::CONTENT_TYPE;

use crate::policy::DEFAULT_BYPASS_HEADERS;
use http::request::Parts;
use http::{HeaderMap, HeaderName, Method};
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use tonic::body::Body;

use crate::key::Variant;

/// gRPC's length prefix: a compressed flag and a big-endian `u32` length.
const PREFIX_LEN: usize = 5;

/// `application/grpc` and its `+proto` / `+json` / `;params` forms, never gRPC-Web (whose
/// trailers travel inside the body).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(rest) = value.strip_prefix("application/grpc") else {
        return false;
    };
    rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')
}

/// A gRPC call: a `POST` with a gRPC content type.
pub(crate) fn is_grpc_call(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::POST && is_grpc(headers)
}

/// Does the call carry credentials (or an override) the cache was not told to key on?
/// The same list as the HTTP layer's ([`DEFAULT_BYPASS_HEADERS`]).
pub(crate) fn has_credentials(headers: &HeaderMap, keyed: &[HeaderName]) -> bool {
    headers
        .keys()
        .any(|name| DEFAULT_BYPASS_HEADERS.contains(&name.as_str()) && !keyed.contains(name))
}

/// Is `bytes` exactly one length-prefixed gRPC message (what a unary call sends and answers)?
pub(crate) fn is_one_message(bytes: &[u8]) -> bool {
    if bytes.len() < PREFIX_LEN {
        return false;
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    bytes.len() - PREFIX_LEN == len
}

/// Why a request body was forwarded instead of keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotKeyed {
    /// Over the layer's `max_request_size`.
    TooLarge,
    /// Not exactly one message: a client stream, or a malformed body.
    NotUnary,
    /// The body failed while it was read; the failure is forwarded too.
    BodyError,
}

impl NotKeyed {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NotKeyed::TooLarge => "request-too-large",
            NotKeyed::NotUnary => "not-unary",
            NotKeyed::BodyError => "request-error",
        }
    }
}

/// Read the request message, up to `limit` bytes. When the body cannot be keyed, the
/// returned body replays what was read, then the rest, unchanged.
pub(crate) async fn read_message(mut body: Body, limit: usize) -> Result<Bytes, (Body, NotKeyed)> {
    let mut message = BytesMut::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if message.len() + data.len() <= limit => message.extend_from_slice(&data),
                Ok(data) => {
                    let read = vec![Frame::data(message.freeze()), Frame::data(data)];
                    return Err((replay(read, body), NotKeyed::TooLarge));
                }
                // Request trailers: not a plain unary call. Forward them as they came.
                Err(frame) => {
                    let read = vec![Frame::data(message.freeze()), frame];
                    return Err((replay(read, body), NotKeyed::NotUnary));
                }
            },
            Some(Err(status)) => {
                let read = stream::iter([Ok(Frame::data(message.freeze())), Err(status)]);
                return Err((Body::new(StreamBody::new(read)), NotKeyed::BodyError));
            }
        }
    }
    let message = message.freeze();
    if !is_one_message(&message) {
        return Err((whole(message), NotKeyed::NotUnary));
    }
    Ok(message)
}

/// A body of exactly these bytes.
pub(crate) fn whole(message: Bytes) -> Body {
    Body::new(Full::new(message))
}

/// A body yielding the frames already `read` (empty data frames left out), then the rest.
fn replay(read: Vec<Frame<Bytes>>, rest: Body) -> Body {
    let read = read
        .into_iter()
        .filter(|frame| frame.data_ref().is_none_or(|data| !data.is_empty()))
        .map(Ok::<_, tonic::Status>);
    Body::new(StreamBody::new(
        stream::iter(read).chain(BodyStream::new(rest)),
    ))
}

/// The variant of a call: what besides the method path selects the answer. The message
/// bytes as sent (with their compression flag), the authority, and the metadata that
/// changes the bytes of the answer: `content-type` (the codec), `grpc-encoding` and
/// `grpc-accept-encoding` (compression), plus the metadata the layer keys on. Left out on
/// purpose: `grpc-timeout` (differs per call, not per answer), `user-agent`, `te`.
///
/// The variant's identity holds all of these bytes, compared on every hit: a hash
/// collision of the index never answers another message.
pub(crate) fn variant(parts: &Parts, message: &[u8], keyed: &[HeaderName]) -> Variant {
    let mut identity = Vec::with_capacity(64 + message.len());
    let mut put = |bytes: &[u8]| {
        identity.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        identity.extend_from_slice(bytes);
    };
    put(parts.uri.authority().map_or("", |a| a.as_str()).as_bytes());
    const SELECTING: [&str; 3] = ["content-type", "grpc-encoding", "grpc-accept-encoding"];
    let names = SELECTING.iter().map(|n| HeaderName::from_static(n));
    for name in names.chain(keyed.iter().cloned()) {
        put(name.as_str().as_bytes());
        let values = parts.headers.get_all(&name);
        put(&(values.iter().count() as u32).to_be_bytes());
        for value in values {
            put(value.as_bytes());
        }
    }
    put(message);
    Variant::of(identity.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payload: &[u8]) -> Bytes {
        let mut out = vec![0];
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.into()
    }

    fn parts(headers: &[(&'static str, &str)]) -> Parts {
        let mut request = http::Request::post("http://svc.local/pkg.S/M");
        for (n, v) in headers {
            request = request.header(*n, *v);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn grpc_content_types() {
        let ct = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, v.parse().unwrap());
            is_grpc(&h)
        };
        assert!(ct("application/grpc"));
        assert!(ct("application/grpc+proto"));
        assert!(!ct("application/grpc-web"));
        assert!(!ct("application/grpc-web+proto"));
        assert!(!ct("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn one_message_exactly() {
        assert!(is_one_message(&framed(b"abc")));
        assert!(is_one_message(&framed(b"")));
        let mut two = framed(b"a").to_vec();
        two.extend_from_slice(&framed(b"b"));
        assert!(!is_one_message(&two));
        assert!(!is_one_message(&framed(b"abc")[..6]));
        assert!(!is_one_message(b""));
    }

    #[test]
    fn the_variant_follows_message_codec_and_keyed_metadata_only() {
        let grpc = [("content-type", "application/grpc")];
        let base = variant(&parts(&grpc), &framed(b"a"), &[]);
        assert_ne!(base, variant(&parts(&grpc), &framed(b"b"), &[]));
        let json = [("content-type", "application/grpc+json")];
        assert_ne!(base, variant(&parts(&json), &framed(b"a"), &[]));
        let gzip = [
            ("content-type", "application/grpc"),
            ("grpc-accept-encoding", "gzip"),
        ];
        assert_ne!(base, variant(&parts(&gzip), &framed(b"a"), &[]));
        let timeout = [("content-type", "application/grpc"), ("grpc-timeout", "5S")];
        assert_eq!(base, variant(&parts(&timeout), &framed(b"a"), &[]));
        let tenant = HeaderName::from_static("x-tenant");
        let a = [("content-type", "application/grpc"), ("x-tenant", "a")];
        let b = [("content-type", "application/grpc"), ("x-tenant", "b")];
        assert_eq!(base, variant(&parts(&a), &framed(b"a"), &[]));
        assert_ne!(
            variant(&parts(&a), &framed(b"a"), std::slice::from_ref(&tenant)),
            variant(&parts(&b), &framed(b"a"), std::slice::from_ref(&tenant))
        );
    }

    #[test]
    fn credentials_bypass_unless_keyed() {
        use http::header::AUTHORIZATION;
        let p = parts(&[("authorization", "Bearer x")]);
        assert!(has_credentials(&p.headers, &[]));
        assert!(!has_credentials(&p.headers, &[AUTHORIZATION]));
        assert!(has_credentials(
            &parts(&[("cookie", "a=1")]).headers,
            &[AUTHORIZATION]
        ));
        assert!(!has_credentials(&parts(&[]).headers, &[]));
        assert!(has_credentials(&parts(&[("x-api-key", "k")]).headers, &[]));
    }

    #[tokio::test]
    async fn a_large_body_is_replayed_intact() {
        let payload = vec![7u8; 300];
        let sent = framed(&payload);
        let chunks: Vec<Result<Frame<Bytes>, tonic::Status>> = sent
            .chunks(64)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = Body::new(StreamBody::new(stream::iter(chunks)));
        let (body, reason) = read_message(body, 100).await.unwrap_err();
        assert_eq!(reason, NotKeyed::TooLarge);
        let replayed = body.collect().await.unwrap().to_bytes();
        assert_eq!(replayed, sent);
    }

    #[tokio::test]
    async fn small_messages_are_read_and_two_are_not_unary() {
        let one = framed(b"hello");
        assert_eq!(read_message(whole(one.clone()), 100).await.unwrap(), one);
        let mut two = one.to_vec();
        two.extend_from_slice(&one);
        let (body, reason) = read_message(whole(two.clone().into()), 100)
            .await
            .unwrap_err();
        assert_eq!(reason, NotKeyed::NotUnary);
        assert_eq!(body.collect().await.unwrap().to_bytes(), two);
    }
}
