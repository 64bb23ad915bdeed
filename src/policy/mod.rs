//! What may be served from the cache and what may be stored.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use http::header::{AGE, AUTHORIZATION, COOKIE, DATE, EXPIRES, LAST_MODIFIED, SET_COOKIE};
use http::{HeaderMap, HeaderName, StatusCode};

use crate::cache_control::{pragma_no_cache, CacheControl};

mod request;

use request::HeaderRule;
pub(crate) use request::{BypassReason, RequestAction};
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
            rfc9111: false,
        }
    }
}

/// Statuses RFC 9110 §15.1 calls heuristically cacheable.
const HEURISTIC_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];
/// RFC 9111 §4.2.2's suggested heuristic: a tenth of the time since last modification,
/// bounded (here) by a day.
const MAX_HEURISTIC: Duration = Duration::from_secs(86_400);

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStorable {
    Status,
    SetCookie,
    CacheControl,
    VaryAny,
    TooLarge,
    /// RFC 9111 mode: a response to a request with `Authorization` without `public`,
    /// `s-maxage` or `must-revalidate`.
    Authorization,
    /// RFC 9111 mode: no explicit freshness and no heuristic applies, or already stale.
    Freshness,
    /// A `Cache-Tag` value that is not ASCII: stored, it could not be invalidated by tag.
    Tag,
}

impl NotStorable {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NotStorable::Status => "status",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::CacheControl => "cache-control",
            NotStorable::VaryAny => "vary",
            NotStorable::TooLarge => "size",
            NotStorable::Authorization => "authorization",
            NotStorable::Freshness => "freshness",
            NotStorable::Tag => "cache-tag",
        }
    }
}

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
    /// - a request with `Cache-Control: no-cache` or `max-age=0` goes to the origin and
    ///   refreshes the entry;
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
            .filter(|s| !NEVER_STORED.contains(&s.as_u16()) && !s.is_informational())
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

    pub(crate) fn origin_deadline(&self) -> Option<Duration> {
        self.origin_timeout
    }

    pub(crate) fn etags(&self) -> bool {
        self.generate_etag
    }

    /// `stale-while-revalidate` / `stale-if-error` (RFC 5861); `must-revalidate` and
    /// `proxy-revalidate` forbid serving stale at all.
    pub(crate) fn stale_windows(&self, headers: &HeaderMap) -> StaleWindows {
        if !self.respect_cache_control {
            return StaleWindows::default();
        }
        let Ok((cc, _)) = self.response_cache_control(headers) else {
            return StaleWindows::default();
        };
        if cc.must_revalidate() {
            return StaleWindows {
                while_revalidate: Some(Duration::ZERO),
                if_error: Some(Duration::ZERO),
            };
        }
        let window = |name| match cc.seconds(name).get() {
            Ok(Some(seconds)) => Some(Duration::from_secs(seconds)),
            Ok(None) => None,
            // An unreadable window is no window.
            Err(()) => Some(Duration::ZERO),
        };
        StaleWindows {
            while_revalidate: window("stale-while-revalidate"),
            if_error: window("stale-if-error"),
        }
    }

    pub(crate) fn max_body(&self) -> usize {
        self.max_body_size
    }

    /// May this response be stored, and for how long? `default_ttl` applies when the
    /// response gives no freshness of its own.
    pub(crate) fn storable(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        default_ttl: Duration,
        request_headers: &HeaderMap,
    ) -> Result<Duration, NotStorable> {
        if self.rfc9111 {
            return self.storable_rfc9111(status, headers, request_headers);
        }
        if !self.statuses.contains(&status) {
            return Err(NotStorable::Status);
        }
        if !self.store_set_cookie && headers.contains_key(SET_COOKIE) {
            return Err(NotStorable::SetCookie);
        }
        if !self.respect_cache_control {
            return Ok(default_ttl);
        }
        let (cc, targeted) = self.response_cache_control(headers)?;
        if cc.no_store() || cc.private() || cc.no_cache() {
            return Err(NotStorable::CacheControl);
        }
        let explicit = match cc.s_maxage().get() {
            Ok(None) => cc.max_age().get(),
            other => other,
        };
        let expires = if targeted { None } else { expires_ttl(headers) };
        let ttl = match explicit {
            Err(()) => return Err(NotStorable::CacheControl),
            Ok(Some(seconds)) => Duration::from_secs(seconds),
            Ok(None) => match expires {
                Some(ttl) => ttl,
                None => return Ok(default_ttl),
            },
        };
        if ttl.is_zero() {
            return Err(NotStorable::CacheControl);
        }
        Ok(ttl)
    }
}

impl CachePolicy {
    /// The directives that apply to this cache: the first targeted field present
    /// (RFC 9213: then `Cache-Control` and `Expires` are ignored, `true`), else
    /// `Cache-Control`. "Not storable" when the field that applies, or `Pragma`, cannot be
    /// read.
    fn response_cache_control(
        &self,
        headers: &HeaderMap,
    ) -> Result<(CacheControl, bool), NotStorable> {
        if pragma_no_cache(headers).is_err() {
            return Err(NotStorable::CacheControl);
        }
        // An invalid targeted field is ignored (RFC 9213 §2.1): the next one applies, or
        // `Cache-Control`.
        let targeted = self.targeted.iter().find(|name| {
            headers.contains_key(*name) && crate::cache_control::is_valid_targeted(headers, name)
        });
        let cc = match targeted {
            Some(name) => CacheControl::parse_field(headers, name),
            None => CacheControl::parse(headers),
        };
        if cc.is_unparseable() {
            return Err(NotStorable::CacheControl);
        }
        Ok((cc, targeted.is_some()))
    }
}

fn keyed_names(rules: &[(HeaderName, HeaderRule)]) -> Vec<HeaderName> {
    rules
        .iter()
        .filter(|(_, rule)| *rule == HeaderRule::Key)
        .map(|(name, _)| name.clone())
        .collect()
}

/// Statuses that answer one request's range or condition: never stored.
const NEVER_STORED: [u16; 3] = [206, 304, 416];

impl CachePolicy {
    fn storable_rfc9111(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        request_headers: &HeaderMap,
    ) -> Result<Duration, NotStorable> {
        if !self.statuses.contains(&status) {
            return Err(NotStorable::Status);
        }
        let (cc, targeted) = self.response_cache_control(headers)?;
        if cc.no_store() || cc.private() || cc.no_cache() {
            return Err(NotStorable::CacheControl);
        }
        let (public, must_revalidate) = (cc.public(), cc.must_revalidate());
        let s_maxage = cc.s_maxage().get().map_err(|()| NotStorable::Freshness)?;
        let max_age = cc.max_age().get().map_err(|()| NotStorable::Freshness)?;
        if request_headers.contains_key(AUTHORIZATION)
            && !(public || s_maxage.is_some() || must_revalidate)
        {
            return Err(NotStorable::Authorization);
        }
        if !self.store_set_cookie && headers.contains_key(SET_COOKIE) {
            return Err(NotStorable::SetCookie);
        }
        let date = crate::headers::date(headers, DATE);
        let lifetime = match s_maxage.or(max_age) {
            Some(seconds) => Duration::from_secs(seconds),
            None => match (!targeted).then(|| expires_ttl(headers)).flatten() {
                Some(ttl) => ttl,
                None => {
                    let heuristic = HEURISTIC_STATUSES.contains(&status.as_u16()) || public;
                    let modified = crate::headers::date(headers, LAST_MODIFIED);
                    match (heuristic, modified) {
                        (true, Some(modified)) => date
                            .unwrap_or_else(SystemTime::now)
                            .duration_since(modified)
                            .unwrap_or(Duration::ZERO)
                            .div_f64(10.0)
                            .min(MAX_HEURISTIC),
                        _ => return Err(NotStorable::Freshness),
                    }
                }
            },
        };
        // RFC 9111 §4.2.3: the age the response already has counts against it.
        let ttl = lifetime.saturating_sub(self.initial_age(headers));
        if ttl.is_zero() {
            return Err(NotStorable::Freshness);
        }
        Ok(ttl)
    }
}

impl CachePolicy {
    /// How old a response already is when it arrives (RFC 9111 §4.2.3: its `Age`, or how
    /// long ago its `Date` was); zero outside the RFC 9111 preset, where the origin is the
    /// application itself.
    pub(crate) fn initial_age(&self, headers: &HeaderMap) -> Duration {
        if !self.rfc9111 {
            return Duration::ZERO;
        }
        // `Age: 7200, 0` on one line is a list: its first member counts.
        let age = headers
            .get(AGE)
            .and_then(|a| a.to_str().ok())
            .and_then(|a| a.split(',').next())
            .and_then(|a| crate::cache_control::delta_seconds(a.trim()))
            .map(Duration::from_secs)
            .unwrap_or(Duration::ZERO);
        let apparent = crate::headers::date(headers, DATE)
            .and_then(|d| SystemTime::now().duration_since(d).ok())
            .unwrap_or(Duration::ZERO);
        age.max(apparent)
    }
}

/// Freshness from `Expires`, relative to the response's `Date` when present. An invalid
/// `Expires` means "already expired" (RFC 9111 §5.3).
fn expires_ttl(headers: &HeaderMap) -> Option<Duration> {
    let expires = headers.get(EXPIRES)?;
    let Some(expires) = crate::headers::parse_date(expires) else {
        return Some(Duration::ZERO);
    };
    let now = crate::headers::date(headers, DATE).unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const DEFAULT_TTL: Duration = Duration::from_secs(3600);

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn storable(status: u16, pairs: &[(&'static str, &str)]) -> Result<Duration, NotStorable> {
        CachePolicy::default().storable(
            StatusCode::from_u16(status).unwrap(),
            &headers(pairs),
            DEFAULT_TTL,
            &HeaderMap::new(),
        )
    }

    #[test]
    fn status_allow_list() {
        for ok in DEFAULT_STATUSES {
            assert_eq!(storable(ok, &[]), Ok(DEFAULT_TTL), "{ok}");
        }
        for no in [201, 206, 302, 400, 401, 403, 500, 502, 503] {
            assert_eq!(storable(no, &[]), Err(NotStorable::Status), "{no}");
        }
    }

    #[test]
    fn partial_and_conditional_answers_are_never_stored_whatever_the_list() {
        let p = CachePolicy::default().cacheable_statuses(
            [103, 206, 304, 416, 200].map(|s| StatusCode::from_u16(s).unwrap()),
        );
        for status in [103, 206, 304, 416] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                p.storable(status, &HeaderMap::new(), DEFAULT_TTL, &HeaderMap::new()),
                Err(NotStorable::Status)
            );
            assert_eq!(
                CachePolicy::rfc9111().storable(
                    status,
                    &headers(&[("cache-control", "max-age=60")]),
                    DEFAULT_TTL,
                    &HeaderMap::new()
                ),
                Err(NotStorable::Status)
            );
        }
    }

    #[test]
    fn unreadable_cache_control_or_pragma_is_not_stored() {
        for policy in [CachePolicy::default(), CachePolicy::rfc9111()] {
            for (name, bytes) in [
                ("cache-control", &b"max-age=60, private, caf\xc3\xa9"[..]),
                ("cache-control", b"max-age=60 private"),
                ("pragma", b"no-cache, \xff"),
            ] {
                let mut h = headers(&[("cache-control", "max-age=60")]);
                h.append(name, HeaderValue::from_bytes(bytes).unwrap());
                assert_eq!(
                    policy.storable(StatusCode::OK, &h, DEFAULT_TTL, &HeaderMap::new()),
                    Err(NotStorable::CacheControl),
                    "{name}: {:?}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }

    #[test]
    fn a_targeted_field_takes_precedence_over_cache_control_and_expires() {
        let p = CachePolicy::default()
            .targeted_cache_control(HeaderName::from_static("portal-cache-control"));
        let store = |pairs: &[(&'static str, &str)]| {
            p.storable(
                StatusCode::OK,
                &headers(pairs),
                DEFAULT_TTL,
                &HeaderMap::new(),
            )
        };
        assert_eq!(
            store(&[
                ("cache-control", "no-store"),
                ("portal-cache-control", "max-age=60")
            ]),
            Ok(Duration::from_secs(60))
        );
        for targeted in ["private", "no-cache", "no-store"] {
            assert!(
                store(&[
                    ("cache-control", "max-age=600"),
                    ("expires", "Wed, 21 Oct 2099 07:28:00 GMT"),
                    ("portal-cache-control", targeted)
                ])
                .is_err(),
                "{targeted}"
            );
        }
        // An invalid targeted field is ignored: Cache-Control applies.
        assert_eq!(
            store(&[
                ("cache-control", "no-store"),
                ("portal-cache-control", "max-age=\"60\"")
            ]),
            Err(NotStorable::CacheControl)
        );
        // Expires is ignored too: without max-age the handle's TTL applies.
        assert_eq!(
            store(&[("expires", "0"), ("portal-cache-control", "public")]),
            Ok(DEFAULT_TTL)
        );
        let rfc = CachePolicy::rfc9111();
        assert_eq!(
            rfc.storable(
                StatusCode::OK,
                &headers(&[
                    ("cache-control", "no-store"),
                    ("cdn-cache-control", "max-age=60")
                ]),
                DEFAULT_TTL,
                &HeaderMap::new()
            ),
            Ok(Duration::from_secs(60))
        );
    }

    #[test]
    fn an_age_list_counts_its_first_member() {
        let p = CachePolicy::rfc9111();
        assert_eq!(
            p.initial_age(&headers(&[("age", "7200, 0")])),
            Duration::from_secs(7200)
        );
        assert_eq!(p.initial_age(&headers(&[("age", "1s")])), Duration::ZERO);
        assert_eq!(
            CachePolicy::default().initial_age(&headers(&[("age", "30")])),
            Duration::ZERO
        );
    }

    #[test]
    fn huge_max_age_is_clamped_not_refused() {
        assert_eq!(
            storable(200, &[("cache-control", "max-age=99999999999999999999")]),
            Ok(Duration::from_secs(1 << 31))
        );
    }

    #[test]
    fn set_cookie_is_never_stored_by_default() {
        assert_eq!(
            storable(200, &[("set-cookie", "sid=1")]),
            Err(NotStorable::SetCookie)
        );
        let p = CachePolicy::default().store_set_cookie(true);
        assert!(p
            .storable(
                StatusCode::OK,
                &headers(&[("set-cookie", "a=b")]),
                DEFAULT_TTL,
                &HeaderMap::new(),
            )
            .is_ok());
    }

    #[test]
    fn cache_control_forbids_storing() {
        for cc in [
            "no-store",
            "private",
            "no-cache",
            "PRIVATE",
            "public, no-cache=\"x\"",
            "max-age=0",
            "s-maxage=0",
            "max-age=abc",
        ] {
            assert_eq!(
                storable(200, &[("cache-control", cc)]),
                Err(NotStorable::CacheControl),
                "{cc}"
            );
        }
    }

    #[test]
    fn max_age_and_s_maxage_set_the_ttl() {
        assert_eq!(
            storable(200, &[("cache-control", "public, max-age=60")]),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            storable(200, &[("cache-control", "max-age=60, s-maxage=30")]),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            storable(200, &[("cache-control", "max-age=\"90\"")]),
            Ok(Duration::from_secs(90))
        );
    }

    #[test]
    fn expires_relative_to_date() {
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        let later = "Wed, 21 Oct 2015 07:29:00 GMT";
        assert_eq!(
            storable(200, &[("date", date), ("expires", later)]),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            storable(200, &[("date", later), ("expires", date)]),
            Err(NotStorable::CacheControl)
        );
        assert_eq!(
            storable(200, &[("expires", "0")]),
            Err(NotStorable::CacheControl)
        );
        // max-age wins over Expires.
        assert_eq!(
            storable(200, &[("expires", "0"), ("cache-control", "max-age=5")]),
            Ok(Duration::from_secs(5))
        );
    }

    #[test]
    fn stale_windows_come_from_cache_control() {
        let p = CachePolicy::default();
        let w = p.stale_windows(&headers(&[(
            "cache-control",
            "max-age=60, stale-while-revalidate=30, stale-if-error=600",
        )]));
        assert_eq!(w.while_revalidate, Some(Duration::from_secs(30)));
        assert_eq!(w.if_error, Some(Duration::from_secs(600)));
        let w = p.stale_windows(&headers(&[(
            "cache-control",
            "stale-while-revalidate=30, must-revalidate",
        )]));
        assert_eq!(w.while_revalidate, Some(Duration::ZERO));
        assert_eq!(p.stale_windows(&HeaderMap::new()), StaleWindows::default());
    }

    #[test]
    fn cache_control_can_be_ignored() {
        let p = CachePolicy::default().respect_cache_control(false);
        assert_eq!(
            p.storable(
                StatusCode::OK,
                &headers(&[("cache-control", "no-store")]),
                DEFAULT_TTL,
                &HeaderMap::new(),
            ),
            Ok(DEFAULT_TTL)
        );
    }

    fn rfc(
        status: u16,
        pairs: &[(&'static str, &str)],
        request: &[(&'static str, &str)],
    ) -> Result<Duration, NotStorable> {
        CachePolicy::rfc9111().storable(
            StatusCode::from_u16(status).unwrap(),
            &headers(pairs),
            DEFAULT_TTL,
            &headers(request),
        )
    }

    #[test]
    fn rfc9111_needs_explicit_or_heuristic_freshness() {
        assert_eq!(rfc(200, &[], &[]), Err(NotStorable::Freshness));
        assert_eq!(
            rfc(200, &[("cache-control", "max-age=60")], &[]),
            Ok(Duration::from_secs(60))
        );
        // Any final status with explicit freshness; none without.
        assert!(rfc(302, &[("cache-control", "max-age=60")], &[]).is_ok());
        assert_eq!(rfc(302, &[], &[]), Err(NotStorable::Freshness));
        assert_eq!(
            rfc(206, &[("cache-control", "max-age=60")], &[]),
            Err(NotStorable::Status)
        );
        // Heuristic: a tenth of the time since Last-Modified.
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        let modified = "Wed, 21 Oct 2015 06:28:00 GMT";
        let ttl = rfc(200, &[("date", date), ("last-modified", modified)], &[]);
        // The Date is in the past, so its apparent age eats the whole heuristic lifetime.
        assert_eq!(ttl, Err(NotStorable::Freshness));
        let now = httpdate::fmt_http_date(SystemTime::now());
        let hour_ago = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
        let ttl = rfc(200, &[("date", &now), ("last-modified", &hour_ago)], &[]).unwrap();
        assert!(
            (Duration::from_secs(355)..=Duration::from_secs(360)).contains(&ttl),
            "{ttl:?}"
        );
        assert_eq!(
            rfc(302, &[("date", &now), ("last-modified", &hour_ago)], &[]),
            Err(NotStorable::Freshness)
        );
    }

    #[test]
    fn rfc9111_age_counts_against_freshness() {
        assert_eq!(
            rfc(200, &[("cache-control", "max-age=60"), ("age", "20")], &[]),
            Ok(Duration::from_secs(40))
        );
        assert_eq!(
            rfc(200, &[("cache-control", "max-age=60"), ("age", "60")], &[]),
            Err(NotStorable::Freshness)
        );
    }

    #[test]
    fn rfc9111_authorization_needs_public_s_maxage_or_must_revalidate() {
        let auth = [("authorization", "Bearer x")];
        assert_eq!(
            rfc(200, &[("cache-control", "max-age=60")], &auth),
            Err(NotStorable::Authorization)
        );
        for cc in [
            "public, max-age=60",
            "s-maxage=60",
            "max-age=60, must-revalidate",
        ] {
            assert!(rfc(200, &[("cache-control", cc)], &auth).is_ok(), "{cc}");
        }
        assert_eq!(
            rfc(200, &[("cache-control", "private, max-age=60")], &[]),
            Err(NotStorable::CacheControl)
        );
    }
}
