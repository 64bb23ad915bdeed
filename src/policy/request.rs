//! What a request's own inputs allow: answer from the cache, go around it, or invalidate.
//!
//! The cache is shared, so every input the origin may read either selects the variant (it
//! is *keyed*) or sends the request around the cache (it *bypasses*). The lists:
//!
//! - [`DEFAULT_BYPASS_HEADERS`]: credentials (`Authorization`, `Cookie`,
//!   `Proxy-Authorization`, API-key and token headers), method overrides
//!   (`X-HTTP-Method-Override`, …) and URL rewrites (`X-Original-URL`, `X-Rewrite-URL`);
//! - [`DEFAULT_KEYED_HEADERS`]: the forwarding headers (`Forwarded`, `X-Forwarded-Host`,
//!   `X-Forwarded-Proto`, …): a real proxy in front sends one value, which costs one variant;
//! - a `GET`/`HEAD` with a body, or whose `Host` disagrees with the URI's authority, bypasses;
//! - a `GET` with `Range` is looked up but answered only from a fresh stored `200` (see the
//!   `range` module); otherwise it is forwarded with its `If-Range` intact, never leads a
//!   fill and never stores what comes back. A `HEAD` ignores `Range` (RFC 9110 §14.2);
//! - `If-Match` / `If-Unmodified-Since` (preconditions the cache does not evaluate),
//!   `Upgrade`, and any header name with `_` bypass (CGI-style servers read
//!   `X_Forwarded_Host` as `X-Forwarded-Host`).
//!
//! [`CachePolicy::key_on_header`](super::CachePolicy::key_on_header),
//! [`bypass_on_header`](super::CachePolicy::bypass_on_header) and
//! [`ignore_header`](super::CachePolicy::ignore_header) change the lists.

use std::collections::HashMap;

use http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    IF_UNMODIFIED_SINCE, PRAGMA, RANGE, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderName, Method};

use crate::cache_control::{pragma_no_cache, CacheControl};

use super::CachePolicy;

/// Request headers whose presence sends a request around the cache by default:
/// credentials, method overrides and URL rewrites.
pub const DEFAULT_BYPASS_HEADERS: [&str; 40] = [
    // Credentials and tokens.
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "x-session-token",
    "x-token",
    "x-csrf-token",
    "x-xsrf-token",
    "x-amz-security-token",
    // Identities asserted by an authenticating proxy or a TLS terminator in front.
    "remote-user",
    "x-remote-user",
    "x-user",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-access-token",
    "x-forwarded-client-cert",
    "x-client-cert",
    "x-ssl-client-cert",
    "x-ssl-client-dn",
    "x-amzn-oidc-data",
    "x-amzn-oidc-identity",
    "x-amzn-oidc-accesstoken",
    "x-goog-authenticated-user-email",
    "x-goog-authenticated-user-id",
    "cf-access-jwt-assertion",
    "tailscale-user-login",
    // Method overrides and URL rewrites.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
];

/// Request headers keyed by default: what a proxy in front tells the origin about the
/// original request (hosts, schemes, ports, prefixes).
pub const DEFAULT_KEYED_HEADERS: [&str; 9] = [
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-host",
];

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestAction {
    /// `GET` or `HEAD` that may be answered from the cache.
    Lookup,
    /// Pass through untouched; the reason goes in `Cache-Status`.
    Bypass(BypassReason),
    /// An unsafe method: pass through, then invalidate the path if it succeeded.
    Unsafe,
    /// The client asked for a fresh answer (`no-cache`, `max-age=0`; RFC 9111 mode): skip
    /// the lookup, store what the origin says.
    Revalidate,
    /// A `GET` with `Range`: answered from a fresh stored `200`, else forwarded as sent.
    Range,
}

/// Why a request went around the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BypassReason {
    /// The method is never cached.
    Method,
    /// The request carries credentials, a body, an override, a range, or asked not to be
    /// stored.
    Request,
}

/// [`RequestAction`] with what the header pass found.
enum Action {
    Plain(RequestAction),
    /// `conditional`: the request carries `If-None-Match` or `If-Modified-Since`.
    Lookup {
        keyed: bool,
        conditional: bool,
    },
    Revalidate {
        keyed: bool,
    },
    Range {
        keyed: bool,
    },
}

/// What the pass over a request decided.
pub(crate) struct Classified {
    pub(crate) action: RequestAction,
    /// It carries a keyed header: their values join the identity.
    pub(crate) keyed: bool,
    /// It may carry a condition the answer must weigh.
    pub(crate) conditional: bool,
}

impl From<Action> for RequestAction {
    fn from(action: Action) -> RequestAction {
        match action {
            Action::Plain(action) => action,
            Action::Lookup { .. } => RequestAction::Lookup,
            Action::Revalidate { .. } => RequestAction::Revalidate,
            Action::Range { .. } => RequestAction::Range,
        }
    }
}

/// How the policy treats a request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderRule {
    Bypass,
    Key,
    /// Not listed by the user: its value is looked at after the pass over the headers.
    Inspect(Inspect),
}

/// Request headers whose values decide, looked at only when present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inspect {
    Host,
    ContentLength,
    /// `Cache-Control` and `Pragma`.
    Directives,
    Range,
    /// `If-None-Match` and `If-Modified-Since`: answered from a stored entry.
    Condition,
}

/// Headers whose presence alone means "forward as sent", whatever the lists say:
/// preconditions the cache does not evaluate, a protocol upgrade, a body.
const STRUCTURAL_BYPASS: [HeaderName; 4] =
    [IF_MATCH, IF_UNMODIFIED_SINCE, UPGRADE, TRANSFER_ENCODING];

/// The lookup table of the pass over a request's headers: the user's rules, then the
/// structural ones, which no rule overrides.
pub(crate) fn index_rules(
    rules: &[(HeaderName, HeaderRule)],
) -> HashMap<HeaderName, HeaderRule, ahash::RandomState> {
    let mut index: HashMap<_, _, _> = rules.iter().cloned().collect();
    for name in STRUCTURAL_BYPASS {
        index.insert(name, HeaderRule::Bypass);
    }
    index.insert(HOST, HeaderRule::Inspect(Inspect::Host));
    index.insert(CONTENT_LENGTH, HeaderRule::Inspect(Inspect::ContentLength));
    index.insert(CACHE_CONTROL, HeaderRule::Inspect(Inspect::Directives));
    index.insert(PRAGMA, HeaderRule::Inspect(Inspect::Directives));
    index.insert(RANGE, HeaderRule::Inspect(Inspect::Range));
    for name in [IF_NONE_MATCH, IF_MODIFIED_SINCE] {
        index
            .entry(name)
            .or_insert(HeaderRule::Inspect(Inspect::Condition));
    }
    index
}

impl CachePolicy {
    pub(crate) fn default_header_rules() -> Vec<(HeaderName, HeaderRule)> {
        let bypass = DEFAULT_BYPASS_HEADERS
            .iter()
            .map(|n| (HeaderName::from_static(n), HeaderRule::Bypass));
        let keyed = DEFAULT_KEYED_HEADERS
            .iter()
            .map(|n| (HeaderName::from_static(n), HeaderRule::Key));
        bypass.chain(keyed).collect()
    }

    fn rule_of(&self, name: &HeaderName) -> Option<HeaderRule> {
        self.rule_index.get(name).copied()
    }

    /// Decide what to do with a request. `has_body`: the request body is not empty.
    #[cfg(test)]
    pub(crate) fn request_action(&self, parts: &Parts, has_body: bool) -> RequestAction {
        self.classify(parts, has_body).0
    }

    /// What to do with a request, and whether it carries a keyed header (then its values
    /// join the identity). One pass over the request's headers decides both.
    #[cfg(test)]
    pub(crate) fn classify(&self, parts: &Parts, has_body: bool) -> (RequestAction, bool) {
        let classified = self.classify_request(parts, has_body);
        (classified.action, classified.keyed)
    }

    /// [`classify`](Self::classify), also saying whether a lookup may have to answer a
    /// condition (`true` unless the pass saw that it carries none).
    pub(crate) fn classify_request(&self, parts: &Parts, has_body: bool) -> Classified {
        let action = self.action(parts, has_body);
        let keyed = matches!(
            action,
            Action::Lookup { keyed: true, .. }
                | Action::Revalidate { keyed: true }
                | Action::Range { keyed: true }
        );
        let conditional = !matches!(
            action,
            Action::Lookup {
                conditional: false,
                ..
            }
        );
        Classified {
            action: action.into(),
            keyed,
            conditional,
        }
    }

    fn action(&self, parts: &Parts, has_body: bool) -> Action {
        let headers = &parts.headers;
        if self.is_grpc(headers) {
            // gRPC is all POSTs: neither cached nor treated as a write to a path.
            return Action::Plain(RequestAction::Bypass(BypassReason::Method));
        }
        match parts.method {
            Method::GET | Method::HEAD => {}
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE => {
                return Action::Plain(self.unsafe_action());
            }
            Method::OPTIONS | Method::TRACE | Method::CONNECT => {
                return Action::Plain(RequestAction::Bypass(BypassReason::Method))
            }
            // RFC 9111 §4.4: in the RFC 9111 preset, any method not known to be safe
            // invalidates (`M-SEARCH`, …).
            _ if self.rfc9111 => return Action::Plain(self.unsafe_action()),
            _ => return Action::Plain(RequestAction::Bypass(BypassReason::Method)),
        }
        let bypass = Action::Plain(RequestAction::Bypass(BypassReason::Request));
        if has_body {
            return bypass;
        }
        // One pass over the request's headers (usually few), one map lookup each, decides
        // everything: listed names bypass or are keyed, structural ones (preconditions,
        // `Upgrade`, `Transfer-Encoding`) bypass, and the few whose values
        // matter are looked at afterwards only when present. A name with `_` bypasses too:
        // CGI-style servers read `X_Forwarded_Host` as `X-Forwarded-Host`, so no list
        // could be complete.
        let (mut keyed, mut host, mut length, mut directives) = (false, false, false, false);
        let (mut range, mut conditional) = (false, false);
        for name in headers.keys() {
            match self.rule_of(name) {
                Some(HeaderRule::Bypass) => return bypass,
                Some(HeaderRule::Key) => {
                    keyed = true;
                    // A condition header the user keys on is still a condition.
                    conditional |= *name == IF_NONE_MATCH || *name == IF_MODIFIED_SINCE;
                }
                Some(HeaderRule::Inspect(Inspect::Condition)) => conditional = true,
                Some(HeaderRule::Inspect(Inspect::Host)) => host = true,
                Some(HeaderRule::Inspect(Inspect::ContentLength)) => length = true,
                Some(HeaderRule::Inspect(Inspect::Directives)) => directives = true,
                Some(HeaderRule::Inspect(Inspect::Range)) => range = true,
                None if name.as_str().contains('_') => return bypass,
                None => {}
            }
        }
        if (length && has_content(headers)) || (host && !host_agrees(parts)) {
            return bypass;
        }
        // A HEAD ignores `Range` (RFC 9110 §14.2).
        let range = range && parts.method == Method::GET;
        if !directives {
            return if range {
                Action::Range { keyed }
            } else {
                Action::Lookup { keyed, conditional }
            };
        }
        let cc = CacheControl::parse(headers);
        // A request field the cache cannot read may hold a `no-store`.
        if cc.is_unparseable() || cc.no_store() {
            return bypass;
        }
        let Ok(pragma) = pragma_no_cache(headers) else {
            return bypass;
        };
        let revalidate = cc.no_cache()
            || cc.max_age().get() == Ok(Some(0))
            || (pragma && matches!(cc, CacheControl::Absent));
        if revalidate && self.rfc9111 {
            // A range the client wants fresh goes to the origin as sent.
            return if range {
                bypass
            } else {
                Action::Revalidate { keyed }
            };
        }
        if range {
            return Action::Range { keyed };
        }
        Action::Lookup { keyed, conditional }
    }

    fn unsafe_action(&self) -> RequestAction {
        if self.invalidate_on_unsafe {
            RequestAction::Unsafe
        } else {
            RequestAction::Bypass(BypassReason::Method)
        }
    }

    /// The headers whose values select the variant, in the policy's order.
    pub(crate) fn keyed_headers(&self) -> &[HeaderName] {
        &self.keyed
    }

    /// gRPC and gRPC-Web requests (`application/grpc`, `application/grpc+proto`,
    /// `application/grpc-web…`), not any type that merely starts with the same letters.
    pub(crate) fn is_grpc(&self, headers: &HeaderMap) -> bool {
        headers
            .get(CONTENT_TYPE)
            .and_then(|ct| ct.to_str().ok())
            .is_some_and(is_grpc_content_type)
    }
}

/// `application/grpc` with an optional `+codec` or `-web` suffix, before any parameters.
fn is_grpc_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let Some(rest) = essence.strip_prefix("application/grpc") else {
        return false;
    };
    let rest = rest.strip_prefix("-web").unwrap_or(rest);
    rest.is_empty() || rest.starts_with('+')
}

fn has_content(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .any(|v| v.as_bytes() != b"0")
}

/// A request whose `Host` differs from its URI's authority (absolute form, or `:authority`
/// in HTTP/2) could be routed by one and keyed by the other.
fn host_agrees(parts: &Parts) -> bool {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return false;
    }
    match (parts.uri.authority(), first) {
        (Some(authority), Some(host)) => authority.as_str().as_bytes() == host.as_bytes(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
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
}
