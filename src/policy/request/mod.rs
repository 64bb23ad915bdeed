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

use crate::cache_control::{pragma_no_cache, CacheControl, RequestDirectives};

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
/// original request (hosts, schemes, ports, prefixes), and `Prefer` (RFC 7240), with which
/// a client asks for another answer to the same URL (`return=minimal`: an empty `204`;
/// PostgREST's `count=exact`), whether or not the origin says `Vary: Prefer`.
pub const DEFAULT_KEYED_HEADERS: [&str; 10] = [
    "prefer",
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
    /// The request `Cache-Control` directives the RFC 9111 preset weighs against a hit
    /// (`max-age`, `min-fresh`, `max-stale`, `only-if-cached`): parsed in this pass, once
    /// per request, and handed on.
    pub(crate) directives: Option<RequestDirectives>,
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

    /// What to do with the request, whether it carries a keyed header (its values then
    /// join the identity), and whether a lookup may have to answer a condition (`true`
    /// unless the pass saw that it carries none). One pass over its headers decides all.
    pub(crate) fn classify_request(&self, parts: &Parts, has_body: bool) -> Classified {
        let mut directives = None;
        let action = self.action(parts, has_body, &mut directives);
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
            directives,
        }
    }

    /// What to do with the request; the directives it sends that weigh against a hit go
    /// to `weighed` (RFC 9111 preset).
    fn action(
        &self,
        parts: &Parts,
        has_body: bool,
        weighed: &mut Option<RequestDirectives>,
    ) -> Action {
        let headers = &parts.headers;
        match parts.method {
            Method::GET | Method::HEAD => {}
            // gRPC is all POSTs: neither cached nor treated as a write to a path.
            Method::POST if self.is_grpc(headers) => {
                return Action::Plain(RequestAction::Bypass(BypassReason::Method))
            }
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
        if self.rfc9111 {
            *weighed = RequestDirectives::of(&cc);
        }
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
    let headers = &parts.headers;
    // Some name has several values only when there are more values than names: the usual
    // request is spared the second lookup.
    if headers.len() != headers.keys_len() && headers.get_all(HOST).iter().nth(1).is_some() {
        return false;
    }
    let Some(authority) = parts.uri.authority() else {
        return true;
    };
    headers
        .get(HOST)
        .is_none_or(|host| authority.as_str().as_bytes() == host.as_bytes())
}

#[cfg(test)]
mod tests;
