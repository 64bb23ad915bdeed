//! What may be served from the cache and what may be stored.

use std::collections::HashMap;
use std::time::Duration;

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderName, StatusCode};

mod request;
mod response;

pub(crate) use response::NotStorable;
use response::NEVER_STORED;

use request::HeaderRule;
pub(crate) use request::{BypassReason, Classified, RequestAction};
pub use request::{DEFAULT_BYPASS_HEADERS, DEFAULT_KEYED_HEADERS};

/// Statuses stored by default: cacheable by default per RFC 9110, minus the ones an
/// application rarely wants repeated (206 needs range handling; 405/414/501 are errors).
const DEFAULT_STATUSES: [u16; 8] = [200, 203, 204, 300, 301, 308, 404, 410];

/// What may be served from the cache and what may be stored.
///
/// The defaults are those of an application cache shared by every user of a server:
///
/// - only `GET` is stored, and `HEAD` is answered from stored `GET` entries;
/// - requests carrying credentials (`Authorization`, `Cookie`, API keys, …), a method
///   override, a URL rewrite, a body, or a `Host` that disagrees with the URI bypass the
///   cache; forwarding headers (`X-Forwarded-Host`, `Forwarded`, …) are keyed (see
///   [`DEFAULT_BYPASS_HEADERS`] and [`DEFAULT_KEYED_HEADERS`]; each list is a switch);
/// - a `GET` with `Range` is answered from a fresh stored `200` (`206`, `416`, or the whole
///   `200` for several ranges), else forwarded as sent and its answer never stored;
/// - responses with `Set-Cookie`, `Cache-Control: no-store | private | no-cache`, or
///   `max-age=0` are not stored; nor is a response whose `Cache-Control`, `Pragma` or
///   `Vary` cannot be parsed; `s-maxage`, `max-age` and `Expires` set the TTL;
/// - only 200, 203, 204, 300, 301, 308, 404 and 410 are stored (never 206 or 416);
/// - a successful `POST`, `PUT`, `PATCH` or `DELETE` invalidates its path (RFC 9111 §4.4).
///
/// ```
/// use http::{header::AUTHORIZATION, StatusCode};
/// use tower_response_cache::CachePolicy;
///
/// // A cache that also keeps 302s and caches per user.
/// let policy = CachePolicy::default()
///     .cacheable_statuses([StatusCode::OK, StatusCode::FOUND])
///     .key_on_header(AUTHORIZATION);
/// # let _ = policy;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct CachePolicy {
    /// Request headers that bypass or are keyed, in the order they were named.
    header_rules: Vec<(HeaderName, HeaderRule)>,
    /// The keyed names of `header_rules`, in that order.
    keyed: Vec<HeaderName>,
    /// Targeted cache-control fields (RFC 9213), consulted before `Cache-Control`.
    targeted: Vec<HeaderName>,
    /// `header_rules` by name: one lookup per request header.
    rule_index: HashMap<HeaderName, HeaderRule, ahash::RandomState>,
    statuses: Vec<StatusCode>,
    store_set_cookie: bool,
    respect_cache_control: bool,
    invalidate_on_unsafe: bool,
    max_body_size: usize,
    origin_timeout: Option<Duration>,
    generate_etag: bool,
    normalize_query: bool,
    rfc9111: bool,
}

/// How long a response may be served stale, as its `Cache-Control` says. `None`: the
/// response does not say, the handle's defaults apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StaleWindows {
    pub(crate) while_revalidate: Option<Duration>,
    pub(crate) if_error: Option<Duration>,
}

impl Default for CachePolicy {
    fn default() -> Self {
        let header_rules = CachePolicy::default_header_rules();
        CachePolicy {
            keyed: keyed_names(&header_rules),
            rule_index: request::index_rules(&header_rules),
            header_rules,
            targeted: Vec::new(),
            statuses: DEFAULT_STATUSES
                .iter()
                .map(|s| StatusCode::from_u16(*s).expect("valid status"))
                .collect(),
            store_set_cookie: false,
            respect_cache_control: true,
            invalidate_on_unsafe: true,
            max_body_size: 8 << 20,
            origin_timeout: None,
            generate_etag: true,
            normalize_query: false,
            rfc9111: false,
        }
    }
}

/// Statuses RFC 9110 §15.1 calls heuristically cacheable.
impl CachePolicy {
    /// The RFC 9111 shared-cache preset, followed to the letter instead of the
    /// application-cache defaults:
    ///
    /// - a response is stored only with explicit freshness (`s-maxage`, `max-age`,
    ///   `Expires`), or, for heuristically cacheable statuses, a `Last-Modified` heuristic
    ///   (10 % of its age, at most a day); any final status with explicit freshness may be
    ///   stored;
    /// - `Age` and `Date` count against freshness (RFC 9111 §4.2.3);
    /// - requests with `Authorization` or `Cookie` are not bypassed, but a response to a
    ///   request with `Authorization` is stored only with `public`, `s-maxage` or
    ///   `must-revalidate` (§3.5); `private`, `no-cache` and `no-store` are never stored;
    /// - `must-revalidate` / `proxy-revalidate` forbid serving stale;
    /// - a request with `Cache-Control: no-cache` or `max-age=0` is never answered from
    ///   what is stored without the origin's word: the stored entry is validated with its
    ///   validators (a `304` freshens it), or fetched again when it has none;
    /// - a successful unsafe request also invalidates the same-origin `Location` and
    ///   `Content-Location` of its response (§4.4).
    ///
    /// `Set-Cookie` responses stay unstored unless [`store_set_cookie`](Self::store_set_cookie).
    pub fn rfc9111() -> Self {
        let statuses = (200..600)
            .filter(|s| !NEVER_STORED.contains(s))
            .filter_map(|s| StatusCode::from_u16(s).ok());
        CachePolicy {
            rfc9111: true,
            generate_etag: false,
            ..CachePolicy::default()
        }
        .ignore_header(AUTHORIZATION)
        .ignore_header(COOKIE)
        .targeted_cache_control(HeaderName::from_static("cdn-cache-control"))
        .cacheable_statuses(statuses)
    }

    pub(crate) fn is_rfc9111(&self) -> bool {
        self.rfc9111
    }

    /// Key on a request header instead of bypassing requests that carry it.
    ///
    /// With `key_on_header(AUTHORIZATION)`, requests with credentials are cached, each
    /// value in its own entry. Any header may be named; its values join the variant hash.
    /// Keyed by default: [`DEFAULT_KEYED_HEADERS`].
    pub fn key_on_header(self, name: HeaderName) -> Self {
        self.set_rule(name, Some(HeaderRule::Key))
    }

    /// Send requests carrying `name` around the cache (default: [`DEFAULT_BYPASS_HEADERS`]).
    /// For a header the application reads that selects what it answers and that you do
    /// not want keyed.
    pub fn bypass_on_header(self, name: HeaderName) -> Self {
        self.set_rule(name, Some(HeaderRule::Bypass))
    }

    /// Neither key on nor bypass for `name`: for a listed header the application behind
    /// the cache never reads (say `X-Forwarded-Proto` behind a proxy that always sends
    /// `https`). Ignoring a header the application does read lets one client's answer be
    /// served to another.
    pub fn ignore_header(self, name: HeaderName) -> Self {
        self.set_rule(name, None)
    }

    fn set_rule(mut self, name: HeaderName, rule: Option<HeaderRule>) -> Self {
        self.header_rules.retain(|(n, _)| *n != name);
        if let Some(rule) = rule {
            self.header_rules.push((name, rule));
        }
        self.keyed = keyed_names(&self.header_rules);
        self.rule_index = request::index_rules(&self.header_rules);
        self
    }

    /// Read a targeted cache-control field (RFC 9213) before `Cache-Control`: when a
    /// response carries it, its directives apply to this cache instead of `Cache-Control`
    /// and `Expires` (`CDN-Cache-Control`, or one of your own such as
    /// `Portal-Cache-Control`). Fields named earlier take precedence. The RFC 9111 preset
    /// reads `CDN-Cache-Control`. A targeted field that is not a valid Structured Field
    /// Dictionary (RFC 8941, with Integer ages) is ignored, as RFC 9213 says.
    pub fn targeted_cache_control(mut self, name: HeaderName) -> Self {
        if !self.targeted.contains(&name) {
            self.targeted.push(name);
        }
        self
    }

    /// Which statuses may be stored (default 200, 203, 204, 300, 301, 308, 404, 410).
    /// 206, 304 and 416 are never stored, whatever the list says: they answer one request's
    /// range or condition, not the resource. Nor is a 1xx: it is not a final response.
    pub fn cacheable_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = statuses
            .into_iter()
            // Nothing informational, and nothing past 599: RFC 9110 defines no class there,
            // and the entry format refuses it (a stored copy would read as foreign).
            .filter(|s| {
                !NEVER_STORED.contains(&s.as_u16()) && !s.is_informational() && s.as_u16() < 600
            })
            .collect();
        self
    }

    /// Store responses that set cookies (default `false`: one user's cookie must never be
    /// handed to another).
    pub fn store_set_cookie(mut self, store: bool) -> Self {
        self.store_set_cookie = store;
        self
    }

    /// Honour the response's `Cache-Control` and `Expires` (default `true`). When `false`,
    /// every response with a cacheable status is stored for the configured TTL.
    pub fn respect_cache_control(mut self, respect: bool) -> Self {
        self.respect_cache_control = respect;
        self
    }

    /// Invalidate a path after a successful unsafe request to it (default `true`).
    pub fn invalidate_on_unsafe(mut self, invalidate: bool) -> Self {
        self.invalidate_on_unsafe = invalidate;
        self
    }

    /// Largest body stored (default 8 MiB). Larger bodies stream through untouched.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// When a stale entry could stand in, give the origin at most this long before serving
    /// it instead (stale-if-error). Default: no deadline.
    pub fn origin_timeout(mut self, timeout: Duration) -> Self {
        self.origin_timeout = Some(timeout);
        self
    }

    /// Give stored responses without an `ETag` a strong one (a hash of the body), so hits
    /// can answer `If-None-Match` with 304 (default `true`).
    pub fn generate_etag(mut self, generate: bool) -> Self {
        self.generate_etag = generate;
        self
    }

    /// Key the query normalised instead of as sent (default `false`): pairs sorted by name
    /// (repeated names keep their order) and escapes of unreserved characters decoded, so
    /// `?b=2&a=1` and `?a=%31&b=2` share an entry.
    ///
    /// Turn it on only when every handler behind the layer reads the query decoded and as
    /// a map (axum's `Query`, serde): a handler that reads the raw query (`RawQuery`, a
    /// signature over the URL, a proxy passing it upstream) may answer two spellings
    /// differently, and one spelling's answer would then be served for the other. The
    /// default keys the query byte for byte, as the handler receives it.
    pub fn normalize_query(mut self, normalize: bool) -> Self {
        self.normalize_query = normalize;
        self
    }

    pub(crate) fn normalizes_query(&self) -> bool {
        self.normalize_query
    }

    pub(crate) fn origin_deadline(&self) -> Option<Duration> {
        self.origin_timeout
    }

    pub(crate) fn etags(&self) -> bool {
        self.generate_etag
    }

    pub(crate) fn max_body(&self) -> usize {
        self.max_body_size
    }
}

fn keyed_names(rules: &[(HeaderName, HeaderRule)]) -> Vec<HeaderName> {
    rules
        .iter()
        .filter(|(_, rule)| *rule == HeaderRule::Key)
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests;
