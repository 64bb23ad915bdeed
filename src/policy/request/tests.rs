//! The request rules, one rule a test.

use super::*;
use http::Request;

fn action(policy: &CachePolicy, method: Method, pairs: &[(&str, &str)]) -> RequestAction {
    let mut request = Request::builder().method(method).uri("/x");
    for (name, value) in pairs {
        request = request.header(*name, *value);
    }
    let (parts, ()) = request.body(()).unwrap().into_parts();
    policy.request_action(&parts, false)
}

const BYPASS: RequestAction = RequestAction::Bypass(BypassReason::Request);

fn conditional(policy: &CachePolicy, pairs: &[(&str, &str)]) -> bool {
    let mut request = Request::get("/x");
    for (name, value) in pairs {
        request = request.header(*name, *value);
    }
    let (parts, ()) = request.body(()).unwrap().into_parts();
    policy.classify_request(&parts, false).conditional
}

#[test]
fn a_lookup_knows_whether_it_carries_a_condition_to_answer() {
    let plain = CachePolicy::default();
    assert!(!conditional(&plain, &[("accept", "text/html")]));
    assert!(conditional(&plain, &[("if-none-match", "\"v1\"")]));
    assert!(conditional(
        &plain,
        &[("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")]
    ));
    // Keyed by the user, it is still a condition.
    let keyed = CachePolicy::default().key_on_header(IF_NONE_MATCH);
    assert!(conditional(&keyed, &[("if-none-match", "\"v1\"")]));
    // Anything but a plain lookup (here a range) is weighed in full.
    assert!(conditional(&plain, &[("range", "bytes=0-1")]));
}

#[test]
fn only_get_and_head_are_looked_up() {
    let p = CachePolicy::default();
    assert_eq!(action(&p, Method::GET, &[]), RequestAction::Lookup);
    assert_eq!(action(&p, Method::HEAD, &[]), RequestAction::Lookup);
    for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        assert_eq!(action(&p, m, &[]), RequestAction::Unsafe);
    }
    assert_eq!(
        action(&p, Method::OPTIONS, &[]),
        RequestAction::Bypass(BypassReason::Method)
    );
    let p = p.invalidate_on_unsafe(false);
    assert_eq!(
        action(&p, Method::POST, &[]),
        RequestAction::Bypass(BypassReason::Method)
    );
    let search = Method::from_bytes(b"M-SEARCH").unwrap();
    assert_eq!(
        action(&CachePolicy::default(), search.clone(), &[]),
        RequestAction::Bypass(BypassReason::Method)
    );
    assert_eq!(
        action(&CachePolicy::rfc9111(), search, &[]),
        RequestAction::Unsafe
    );
    assert_eq!(
        action(&CachePolicy::rfc9111(), Method::OPTIONS, &[]),
        RequestAction::Bypass(BypassReason::Method)
    );
}

#[test]
fn grpc_is_bypassed_not_invalidating_but_look_alikes_are_not_grpc() {
    let p = CachePolicy::default();
    for ct in [
        "application/grpc",
        "application/grpc+proto",
        "application/grpc-web+proto",
    ] {
        assert_eq!(
            action(&p, Method::POST, &[("content-type", ct)]),
            RequestAction::Bypass(BypassReason::Method),
            "{ct}"
        );
    }
    for ct in [
        "application/grpcx",
        "application/grpc-json-thing",
        "application/grpcweb",
    ] {
        assert_eq!(
            action(&p, Method::POST, &[("content-type", ct)]),
            RequestAction::Unsafe,
            "{ct}"
        );
    }
}

#[test]
fn credentials_of_every_common_kind_bypass_unless_keyed() {
    let p = CachePolicy::default();
    for name in [
        "authorization",
        "cookie",
        "proxy-authorization",
        "x-api-key",
        "x-auth-token",
    ] {
        assert_eq!(
            action(&p, Method::GET, &[(name, "secret")]),
            BYPASS,
            "{name}"
        );
    }
    let keyed = p.clone().key_on_header(http::header::AUTHORIZATION);
    assert_eq!(
        action(&keyed, Method::GET, &[("authorization", "Bearer x")]),
        RequestAction::Lookup
    );
    assert_eq!(action(&keyed, Method::GET, &[("cookie", "a=b")]), BYPASS);
    let ignoring = p.ignore_header(HeaderName::from_static("x-api-key"));
    assert_eq!(
        action(&ignoring, Method::GET, &[("x-api-key", "k")]),
        RequestAction::Lookup
    );
}

#[test]
fn overrides_and_rewrites_bypass() {
    let p = CachePolicy::default();
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
    ] {
        assert_eq!(
            action(&p, Method::GET, &[(name, "/admin")]),
            BYPASS,
            "{name}"
        );
    }
    let custom = p.bypass_on_header(HeaderName::from_static("x-tenant-override"));
    assert_eq!(
        action(&custom, Method::GET, &[("x-tenant-override", "a")]),
        BYPASS
    );
}

#[test]
fn forwarding_headers_are_keyed_not_bypassed() {
    let p = CachePolicy::default();
    assert_eq!(
        action(&p, Method::GET, &[("x-forwarded-host", "evil.example")]),
        RequestAction::Lookup
    );
    let keyed = |pairs: &[(&str, &str)]| {
        let mut request = Request::get("/x");
        for (name, value) in pairs {
            request = request.header(*name, *value);
        }
        let (parts, ()) = request.body(()).unwrap().into_parts();
        p.classify(&parts, false).1
    };
    assert!(keyed(&[("x-forwarded-host", "evil.example")]));
    assert!(!keyed(&[("accept", "*/*")]));
}

#[test]
fn bodies_ranges_and_host_mismatches_bypass() {
    let p = CachePolicy::default();
    assert_eq!(action(&p, Method::GET, &[("content-length", "5")]), BYPASS);
    assert_eq!(
        action(&p, Method::GET, &[("transfer-encoding", "chunked")]),
        BYPASS
    );
    assert_eq!(
        action(&p, Method::GET, &[("content-length", "0")]),
        RequestAction::Lookup
    );
    assert_eq!(
        action(&p, Method::GET, &[("range", "bytes=0-1")]),
        RequestAction::Range
    );
    assert_eq!(
        action(&p, Method::HEAD, &[("range", "bytes=0-1")]),
        RequestAction::Lookup
    );
    assert_eq!(
        action(
            &p,
            Method::GET,
            &[("range", "bytes=0-1"), ("authorization", "Basic x")]
        ),
        BYPASS
    );
    assert_eq!(
        action(
            &p,
            Method::GET,
            &[("range", "bytes=0-1"), ("cache-control", "no-store")]
        ),
        BYPASS
    );
    for name in [
        "if-match",
        "if-unmodified-since",
        "upgrade",
        "x_forwarded_host",
    ] {
        assert_eq!(action(&p, Method::GET, &[(name, "x")]), BYPASS, "{name}");
    }
    for name in [
        "x-forwarded-user",
        "x-forwarded-client-cert",
        "tailscale-user-login",
    ] {
        assert_eq!(
            action(&p, Method::GET, &[(name, "alice")]),
            BYPASS,
            "{name}"
        );
    }
    let (parts, ()) = Request::get("http://a.example/x")
        .header("host", "b.example")
        .body(())
        .unwrap()
        .into_parts();
    assert_eq!(p.request_action(&parts, false), BYPASS);
    let (parts, ()) = Request::get("http://a.example/x")
        .header("host", "a.example")
        .body(())
        .unwrap()
        .into_parts();
    assert_eq!(p.request_action(&parts, false), RequestAction::Lookup);
    let (parts, ()) = Request::get("/x").body(()).unwrap().into_parts();
    assert_eq!(p.request_action(&parts, true), BYPASS);
}

#[test]
fn request_no_store_or_unreadable_cache_control_bypasses() {
    let p = CachePolicy::default();
    assert_eq!(
        action(&p, Method::GET, &[("cache-control", "No-Store")]),
        BYPASS
    );
    let mut request = Request::get("/x");
    request = request.header(
        "cache-control",
        http::HeaderValue::from_bytes(b"max-age=5, \xffno-store").unwrap(),
    );
    let (parts, ()) = request.body(()).unwrap().into_parts();
    assert_eq!(p.request_action(&parts, false), BYPASS);
}

#[test]
fn rfc9111_request_no_cache_revalidates() {
    let p = CachePolicy::rfc9111();
    for cc in ["no-cache", "max-age=0"] {
        assert_eq!(
            action(&p, Method::GET, &[("cache-control", cc)]),
            RequestAction::Revalidate
        );
    }
    assert_eq!(
        action(&p, Method::GET, &[("pragma", "no-cache")]),
        RequestAction::Revalidate
    );
    assert_eq!(
        action(
            &CachePolicy::default(),
            Method::GET,
            &[("cache-control", "no-cache")]
        ),
        RequestAction::Lookup
    );
    // RFC 9111 mode stores per its own rules for Authorization.
    assert_eq!(
        action(&p, Method::GET, &[("authorization", "Bearer x")]),
        RequestAction::Lookup
    );
}

fn action_at(policy: &CachePolicy, uri: &str, hosts: &[&str]) -> RequestAction {
    let mut request = Request::get(uri);
    for host in hosts {
        request = request.header(HOST, *host);
    }
    let (parts, ()) = request.body(()).unwrap().into_parts();
    policy.request_action(&parts, false)
}

#[test]
fn two_hosts_or_a_host_the_target_contradicts_bypass() {
    let p = CachePolicy::default();
    assert_eq!(action_at(&p, "/x", &["a.example"]), RequestAction::Lookup);
    assert_eq!(action_at(&p, "/x", &["a.example", "b.example"]), BYPASS);
    // A repeated header of another name does not hide a second `Host`.
    let (mut parts, ()) = Request::get("/x")
        .header("accept", "a")
        .header("accept", "b")
        .header(HOST, "a.example")
        .body(())
        .unwrap()
        .into_parts();
    assert_eq!(p.request_action(&parts, false), RequestAction::Lookup);
    parts.headers.append(HOST, "b.example".parse().unwrap());
    assert_eq!(p.request_action(&parts, false), BYPASS);
    let absolute = "http://a.example/x";
    assert_eq!(
        action_at(&p, absolute, &["a.example"]),
        RequestAction::Lookup
    );
    assert_eq!(action_at(&p, absolute, &["b.example"]), BYPASS);
}

#[test]
fn a_grpc_post_is_neither_cached_nor_a_write() {
    let p = CachePolicy::default();
    let grpc = [("content-type", "application/grpc+proto")];
    assert_eq!(
        action(&p, Method::POST, &grpc),
        RequestAction::Bypass(BypassReason::Method)
    );
    let web = [("content-type", "application/grpc-web")];
    assert_eq!(
        action(&p, Method::POST, &web),
        RequestAction::Bypass(BypassReason::Method)
    );
    assert_eq!(
        action(&p, Method::POST, &[("content-type", "application/json")]),
        RequestAction::Unsafe
    );
}
