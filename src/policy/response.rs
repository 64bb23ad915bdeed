//! What may be stored, and for how long: the status list, `Cache-Control` (or the targeted
//! field that applies to this cache), `Expires`, heuristic freshness in the RFC 9111
//! preset, the stale windows, and how old a response already is when it arrives.

use std::time::{Duration, SystemTime};

use http::header::{AGE, AUTHORIZATION, DATE, EXPIRES, LAST_MODIFIED, SET_COOKIE};
use http::{HeaderMap, StatusCode};

use super::{CachePolicy, StaleWindows};
use crate::cache_control::{pragma_no_cache, CacheControl};

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
    /// More header values than an entry keeps (`MAX_STORED_VALUES`, what the byte format
    /// reads back).
    Headers,
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
            NotStorable::Headers => "headers",
            NotStorable::Authorization => "authorization",
            NotStorable::Freshness => "freshness",
            NotStorable::Tag => "cache-tag",
        }
    }
}

impl CachePolicy {
    /// `stale-while-revalidate` / `stale-if-error` (RFC 5861); `must-revalidate` and
    /// `proxy-revalidate` forbid serving stale at all.
    #[cfg(test)]
    pub(crate) fn stale_windows(&self, headers: &HeaderMap) -> StaleWindows {
        match self.response_cache_control(headers) {
            Ok((cc, _)) => self.windows_of(&cc),
            Err(_) => StaleWindows::default(),
        }
    }

    /// The stale windows of a response's parsed directives (see `stale_windows`).
    fn windows_of(&self, cc: &CacheControl) -> StaleWindows {
        if !self.respect_cache_control {
            return StaleWindows::default();
        }
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

    /// May this response be stored, and for how long? `default_ttl` applies when the
    /// response gives no freshness of its own.
    pub(crate) fn storable(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        default_ttl: Duration,
        request_headers: &HeaderMap,
    ) -> Result<Duration, NotStorable> {
        let storing = self.storing(status, headers, default_ttl, request_headers);
        storing.map(|(ttl, _)| ttl)
    }

    /// [`storable`](Self::storable), and the response's stale windows (`stale_windows`),
    /// from one reading of its `Cache-Control`.
    pub(crate) fn storing(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        default_ttl: Duration,
        request_headers: &HeaderMap,
    ) -> Result<(Duration, StaleWindows), NotStorable> {
        if headers.len() > crate::entry::MAX_STORED_VALUES {
            return Err(NotStorable::Headers);
        }
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
            return Ok((default_ttl, StaleWindows::default()));
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
                None => return Ok((default_ttl, self.windows_of(&cc))),
            },
        };
        if ttl.is_zero() {
            return Err(NotStorable::CacheControl);
        }
        Ok((ttl, self.windows_of(&cc)))
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

/// Statuses that answer one request's range or condition: never stored.
pub(super) const NEVER_STORED: [u16; 3] = [206, 304, 416];

impl CachePolicy {
    fn storable_rfc9111(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        request_headers: &HeaderMap,
    ) -> Result<(Duration, StaleWindows), NotStorable> {
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
        Ok((ttl, self.windows_of(&cc)))
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
