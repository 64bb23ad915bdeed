//! How much `Cache-Status` tells: [`CacheStatusDetail`].
//!
//! Why a setting: the parameters past `hit` / `fwd=` tell a client when an entry expires
//! (`ttl=`, to the second), that this process is cut off from Redis (`detail=fallback`,
//! when invalidations from elsewhere may not reach it), that its request joined another's
//! fetch (`collapsed`, `detail=coalesced`: the timing of a race), and what happened to a
//! write. An operator debugging wants all of it; a client probing when and where to strike
//! wants the same. So a public-facing service says only whether the answer came from the
//! cache and, if not, why (RFC 9211's `hit` and `fwd`), and a debugging one opts in to the
//! rest.
//!
//! ```
//! use tower_response_cache::{CacheHandle, CacheLayer, CacheStatusDetail};
//!
//! // An internal service, or a debugging session.
//! let layer = CacheLayer::new(CacheHandle::in_memory())
//!     .cache_status_detail(CacheStatusDetail::Full);
//! # let _ = layer;
//! ```

use http::{HeaderMap, HeaderValue};

use super::CACHE_STATUS;

/// How much the `Cache-Status` field of an answer says (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CacheStatusDetail {
    /// `hit`, or `fwd=` and the reason (the default):
    /// `tower-response-cache; hit`, `tower-response-cache; fwd=uri-miss`.
    #[default]
    Brief,
    /// Every parameter: `ttl=`, `fwd-status=`, `stored`, `collapsed` and `detail=`
    /// (`storing`, `coalesced`, `fleet`, `fallback`, `l1`, `stale-while-revalidate`, …).
    Full,
}

/// Cut the answer's `Cache-Status` down to its first parameter (`hit` or `fwd=…`).
pub(crate) fn brief(headers: &mut HeaderMap) {
    let Some(value) = headers.get_mut(CACHE_STATUS) else {
        return;
    };
    let Ok(text) = value.to_str() else { return };
    // `<name>; <first>; <more>`: keep `<name>; <first>`.
    let Some(second) = text.match_indices(';').nth(1).map(|(at, _)| at) else {
        return;
    };
    let kept = &text[..second];
    *value = match kept {
        "tower-response-cache; hit" => HeaderValue::from_static("tower-response-cache; hit"),
        "tower-response-cache; fwd=uri-miss" => {
            HeaderValue::from_static("tower-response-cache; fwd=uri-miss")
        }
        "tower-response-cache; fwd=stale" => {
            HeaderValue::from_static("tower-response-cache; fwd=stale")
        }
        _ => match HeaderValue::from_str(kept) {
            Ok(kept) => kept,
            Err(_) => return,
        },
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn briefed(full: &str) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_STATUS, HeaderValue::from_str(full).unwrap());
        brief(&mut headers);
        headers[CACHE_STATUS].to_str().unwrap().to_owned()
    }

    #[test]
    fn only_hit_or_the_forward_reason_is_left() {
        let cases = [
            (
                "tower-response-cache; hit; ttl=42",
                "tower-response-cache; hit",
            ),
            (
                "tower-response-cache; hit; ttl=42; detail=coalesced/fallback",
                "tower-response-cache; hit",
            ),
            (
                "tower-response-cache; hit; ttl=-3; detail=stale-while-revalidate",
                "tower-response-cache; hit",
            ),
            (
                "tower-response-cache; fwd=uri-miss; detail=storing",
                "tower-response-cache; fwd=uri-miss",
            ),
            (
                "tower-response-cache; fwd=stale; fwd-status=304; stored",
                "tower-response-cache; fwd=stale",
            ),
            (
                "tower-response-cache; fwd=vary-miss; collapsed",
                "tower-response-cache; fwd=vary-miss",
            ),
            // Already brief.
            (
                "tower-response-cache; fwd=method",
                "tower-response-cache; fwd=method",
            ),
        ];
        for (full, expected) in cases {
            assert_eq!(briefed(full), expected, "{full}");
        }
    }
}
