//! The policy's rules for storing responses and reading their freshness.

use super::*;
use http::HeaderMap;
use http::HeaderValue;
use std::time::SystemTime;

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
        [103, 206, 304, 416, 600, 999, 200].map(|s| StatusCode::from_u16(s).unwrap()),
    );
    // The positive control: a listed status that may be stored is.
    assert!(p
        .storable(
            StatusCode::OK,
            &HeaderMap::new(),
            DEFAULT_TTL,
            &HeaderMap::new()
        )
        .is_ok());
    // Past 599 too: the entry format refuses it, so a stored copy would read as foreign.
    for status in [103, 206, 304, 416, 600, 999] {
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
