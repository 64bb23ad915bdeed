//! Cache keys: the logical key invalidation patterns match, and the variant: the exact
//! inputs besides it that select a response.
//!
//! The logical key is the request path exactly as the request spells it (`/api/dashboard/ABC`;
//! `/api/%41BC` is another key, because routers match the raw path), or whatever a key
//! function returns (`dashboard:ABC`).
//!
//! The variant's *identity* is the bytes of the scheme, the raw path, the host, the query
//! and the values of the keyed request headers. Each entry stores its identity, and a hit
//! compares it byte for byte: the variant's 64-bit hash only indexes the store. `Vary` is
//! handled one level down the same way: each entry keeps the values of the request headers
//! it varies on ([`vary_values`]), compared on every hit.
//!
//! The query is keyed as sent: the key sees what the handler sees, and a handler that reads
//! the raw query may tell any two spellings apart. With
//! [`CachePolicy::normalize_query`](crate::CachePolicy::normalize_query) it is normalised
//! instead: pairs sorted by name (keeping the order of repeated names) and only escapes of
//! unreserved characters decoded, so `?b=2&a=1` and `?a=1&b=2` share an entry, `%41` and `A`
//! share one, while `%2F` and `/` do not: every query decoder reads the merged spellings
//! alike. `Accept-Encoding` values are compared as a set of lower-case codings with their
//! q-values, so browsers' spellings of one set share a variant.

use std::borrow::Cow;
use std::cell::RefCell;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, HOST, VARY};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::entry::Vary;

mod query;

pub(crate) use query::normalize_query;

/// Longest logical key kept verbatim; longer ones keep a prefix and a hash of the rest.
pub(crate) const MAX_LOGICAL_KEY_LEN: usize = 512;
/// How much of an over-long key is kept readable (so prefix patterns still match).
pub(crate) const KEPT_PREFIX_LEN: usize = 256;

/// The default logical key: the path, as sent.
pub(crate) fn logical_from_path(parts: &Parts) -> Cow<'_, str> {
    bound(Cow::Borrowed(parts.uri.path()))
}

/// Bound a logical key's length: long keys become `prefix~hash`, so a flood of huge paths
/// cannot blow up key storage, and prefix patterns (`/api/*`) still match them.
pub(crate) fn bound(key: Cow<'_, str>) -> Cow<'_, str> {
    if key.len() <= MAX_LOGICAL_KEY_LEN {
        return key;
    }
    let mut cut = KEPT_PREFIX_LEN;
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}~{:032x}", &key[..cut], xxh3_128(key.as_bytes())))
}

/// A request's variant: its identity and the hash the store indexes it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Variant {
    pub(crate) hash: u64,
    pub(crate) identity: Bytes,
}

impl Variant {
    /// A variant of exactly these identity bytes.
    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    pub(crate) fn of(identity: Bytes) -> Variant {
        Variant {
            hash: xxh3_64(&identity),
            identity,
        }
    }
}

thread_local! {
    static IDENTITY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static VARY_VALUES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What a request's identity is made of besides its URI and host: the keyed request
/// headers, and whether the query is normalised (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keying<'a> {
    pub(crate) headers: &'a [HeaderName],
    pub(crate) normalize_query: bool,
}

/// Write the identity of a request: scheme, path, host, query, keyed header values. Each
/// part is length-prefixed, so no two different inputs write the same bytes.
pub(crate) fn write_identity(parts: &Parts, keying: Keying<'_>, out: &mut Vec<u8>) {
    out.clear();
    // The scheme and the raw path: an origin may build links from them, and a key
    // function (or the bound on long keys) may map several paths to one logical key.
    put(out, parts.uri.scheme_str().unwrap_or_default().as_bytes());
    put(out, parts.uri.path().as_bytes());
    // The `Host` an origin reads, bytes as sent (an origin may echo the spelling); the
    // policy already bypasses a request whose `Host` disagrees with its URI's authority.
    // Where the host came from is part of it: an origin can read either.
    let header = parts.headers.get(HOST).map(HeaderValue::as_bytes);
    let authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
    out.push(u8::from(header.is_some()) | u8::from(authority.is_some()) << 1);
    put(out, header.or(authority).unwrap_or_default());
    match parts.uri.query() {
        None => out.push(0),
        Some(query) if keying.normalize_query => {
            out.push(1);
            put(out, normalize_query(query).as_bytes());
        }
        Some(query) => {
            out.push(1);
            put(out, query.as_bytes());
        }
    }
    write_header_values(keying.headers, &parts.headers, out);
}

/// The identity of a request and its hash, in a reused buffer (no allocation on a hit).
pub(crate) fn with_identity<R>(
    parts: &Parts,
    keying: Keying<'_>,
    f: impl FnOnce(&[u8], u64) -> R,
) -> R {
    IDENTITY.with_borrow_mut(|buffer| {
        write_identity(parts, keying, buffer);
        f(buffer, xxh3_64(buffer))
    })
}

/// The variant of a request, owned (for a miss, which outlives the request's parts).
pub(crate) fn variant(parts: &Parts, keying: Keying<'_>) -> Variant {
    with_identity(parts, keying, |identity, hash| Variant {
        hash,
        identity: Bytes::copy_from_slice(identity),
    })
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The values of `names` in `headers`, as identity bytes: for each name, its values in
/// order (`Accept-Encoding` as a sorted set of codings).
fn write_header_values(names: &[HeaderName], headers: &HeaderMap, out: &mut Vec<u8>) {
    out.extend_from_slice(&(names.len() as u32).to_be_bytes());
    for name in names {
        put(out, name.as_str().as_bytes());
        if *name == ACCEPT_ENCODING {
            if let Some(codings) = accept_encoding_set(headers) {
                out.push(2);
                put(out, codings.as_bytes());
                continue;
            }
        }
        out.push(1);
        let values = headers.get_all(name);
        out.extend_from_slice(&(values.iter().count() as u32).to_be_bytes());
        for value in values {
            put(out, value.as_bytes());
        }
    }
}

/// `Accept-Encoding` as one canonical string: every coding lower-cased, white space
/// removed, sorted. `None` when a value is not ASCII (then the values are kept as sent).
fn accept_encoding_set(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(ACCEPT_ENCODING).iter().peekable();
    // No field (any coding) and an empty one (identity only) differ: keep them apart.
    values.peek()?;
    let mut codings = Vec::new();
    for value in values {
        for coding in value.to_str().ok()?.split(',') {
            // White space only around `;` and `=` is insignificant.
            let coding: Vec<String> = coding
                .split(';')
                .map(|part| match part.split_once('=') {
                    Some((name, value)) => format!(
                        "{}={}",
                        name.trim().to_ascii_lowercase(),
                        value.trim().to_ascii_lowercase()
                    ),
                    None => part.trim().to_ascii_lowercase(),
                })
                .collect();
            let coding = coding.join(";");
            if !coding.is_empty() {
                codings.push(coding);
            }
        }
    }
    codings.sort();
    codings.dedup();
    Some(codings.join(","))
}

/// The values of the request headers a response varies on, as stored with the entry.
pub(crate) fn vary_values(names: &[HeaderName], headers: &HeaderMap) -> Bytes {
    if names.is_empty() {
        return Bytes::new();
    }
    let mut out = Vec::new();
    write_header_values(names, headers, &mut out);
    out.into()
}

/// Whether a request with `headers` sends the values an entry was produced for.
pub(crate) fn vary_matches(vary: &Vary, headers: &HeaderMap) -> bool {
    if vary.names.is_empty() {
        return vary.values.is_empty();
    }
    VARY_VALUES.with_borrow_mut(|buffer| {
        buffer.clear();
        write_header_values(&vary.names, headers, buffer);
        buffer[..] == vary.values[..]
    })
}

/// What a response's `Vary` says about storing it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum VarySpec {
    /// `Vary: *`, or a `Vary` the cache cannot read: never store the response.
    Any,
    /// The request headers the response depends on, lower-case, sorted, de-duplicated.
    Headers(Vec<HeaderName>),
}

/// Read every `Vary` header of a response. A value that is not ASCII or names something
/// that is not a header name fails closed: it may hold the `Cookie` that matters.
pub(crate) fn vary_spec(response_headers: &HeaderMap) -> VarySpec {
    let mut names = Vec::new();
    for value in response_headers.get_all(VARY) {
        let Ok(value) = value.to_str() else {
            return VarySpec::Any;
        };
        for name in value.split(',') {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            if name == "*" {
                return VarySpec::Any;
            }
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => names.push(name),
                Err(_) => return VarySpec::Any,
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    VarySpec::Headers(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use proptest::prelude::*;

    fn parts(uri: &str) -> Parts {
        Request::get(uri).body(()).unwrap().into_parts().0
    }

    const RAW: Keying<'static> = Keying {
        headers: &[],
        normalize_query: false,
    };

    const NORMAL: Keying<'static> = Keying {
        headers: &[],
        normalize_query: true,
    };

    /// The default identity: the query as sent.
    fn variant_of(uri: &str) -> Bytes {
        variant(&parts(uri), RAW).identity
    }

    /// The identity with `CachePolicy::normalize_query`.
    fn normalized_of(uri: &str) -> Bytes {
        variant(&parts(uri), NORMAL).identity
    }

    #[test]
    fn by_default_every_spelling_of_the_query_is_its_own_variant() {
        // A handler reading the raw query (a signature, a proxy) may answer each apart.
        for (a, b) in [
            ("/x?b=2&a=1", "/x?a=1&b=2"),
            ("/x?q=%41", "/x?q=A"),
            ("/x?q=%2f", "/x?q=%2F"),
            ("/x?a=1&&b=2", "/x?a=1&b=2"),
        ] {
            assert_ne!(variant_of(a), variant_of(b), "{a} vs {b}");
            assert_eq!(variant_of(a), variant_of(a));
        }
    }

    #[test]
    fn query_order_of_distinct_names_does_not_matter_when_normalised() {
        assert_eq!(normalized_of("/x?b=2&a=1"), normalized_of("/x?a=1&b=2"));
    }

    #[test]
    fn order_of_repeated_names_matters() {
        assert_ne!(normalized_of("/x?a=1&a=2"), normalized_of("/x?a=2&a=1"));
    }

    #[test]
    fn unreserved_escapes_are_decoded_reserved_are_not() {
        assert_eq!(normalized_of("/x?q=%41"), normalized_of("/x?q=A"));
        assert_ne!(normalized_of("/x?q=%2F"), normalized_of("/x?q=/"));
    }

    #[test]
    fn the_path_is_keyed_as_the_router_sees_it() {
        // axum routes `/api/%41BC` apart from `/api/ABC` (a 404 filed under the real page
        // would be served for it otherwise).
        for (a, b) in [
            ("/api/%41BC", "/api/ABC"),
            ("/api/a%2Fb", "/api/a/b"),
            ("/a%62c", "/abc"),
        ] {
            assert_ne!(logical_from_path(&parts(a)), logical_from_path(&parts(b)));
        }
    }

    #[test]
    fn names_a_decoder_reads_alike_keep_the_order_of_their_values() {
        assert_ne!(
            normalized_of("/x?a+b=1&a%20b=2"),
            normalized_of("/x?a%20b=2&a+b=1")
        );
        assert_eq!(normalized_of("/x?z=1&a+b=2"), normalized_of("/x?a+b=2&z=1"));
    }

    #[test]
    fn identity_is_exact_and_its_hash_only_an_index() {
        let a = variant(&parts("/x?a=1"), RAW);
        assert_eq!(a, Variant::of(a.identity.clone()));
        assert_ne!(a.identity, variant_of("/x?a=2"));
        // No query, an empty query and a real one are three identities.
        assert_ne!(variant_of("/x"), variant_of("/x?"));
        assert_ne!(variant_of("/x?"), variant_of("/x?a"));
    }

    #[test]
    fn host_selects_the_variant_as_spelled() {
        assert_ne!(
            variant_of("http://a.example/x"),
            variant_of("http://b.example/x")
        );
        // An origin may echo the spelling (links built from `Host`).
        assert_ne!(
            variant_of("http://A.example/x"),
            variant_of("http://a.example/x")
        );
        let mut with_header = parts("/x");
        with_header
            .headers
            .insert(HOST, "a.example".parse().unwrap());
        assert_ne!(variant(&with_header, RAW).identity, variant_of("/x"));
        // Whether the host came from `Host` or from the URI is told apart too.
        assert_ne!(
            variant(&with_header, RAW).identity,
            variant_of("http://a.example/x")
        );
    }

    #[test]
    fn no_query_and_empty_query_differ_from_a_real_query() {
        assert_ne!(variant_of("/x"), variant_of("/x?a=1"));
    }

    #[test]
    fn keyed_headers_select_the_variant() {
        let name = HeaderName::from_static("authorization");
        let mut alice = parts("/x");
        alice
            .headers
            .insert("authorization", "alice".parse().unwrap());
        let mut bob = parts("/x");
        bob.headers.insert("authorization", "bob".parse().unwrap());
        let keying = Keying {
            headers: std::slice::from_ref(&name),
            normalize_query: false,
        };
        assert_ne!(variant(&alice, keying), variant(&bob, keying));
    }

    #[test]
    fn vary_star_and_names() {
        let mut headers = HeaderMap::new();
        headers.append(VARY, "Accept-Encoding, accept-language".parse().unwrap());
        headers.append(VARY, "accept-encoding".parse().unwrap());
        assert_eq!(
            vary_spec(&headers),
            VarySpec::Headers(vec![
                HeaderName::from_static("accept-encoding"),
                HeaderName::from_static("accept-language"),
            ])
        );
        headers.append(VARY, "*".parse().unwrap());
        assert_eq!(vary_spec(&headers), VarySpec::Any);
    }

    #[test]
    fn vary_values_tell_values_apart() {
        let names = vec![HeaderName::from_static("accept-language")];
        let mut en = HeaderMap::new();
        en.insert("accept-language", "en".parse().unwrap());
        let mut de = HeaderMap::new();
        de.insert("accept-language", "de".parse().unwrap());
        let vary = Vary {
            values: vary_values(&names, &en),
            names: names.clone(),
        };
        assert!(vary_matches(&vary, &en));
        assert!(!vary_matches(&vary, &de));
        assert!(!vary_matches(&vary, &HeaderMap::new()));
        // An empty value and no value are different.
        let mut empty = HeaderMap::new();
        empty.insert("accept-language", "".parse().unwrap());
        assert_ne!(
            vary_values(&names, &empty),
            vary_values(&names, &HeaderMap::new())
        );
    }

    #[test]
    fn accept_encoding_spellings_of_one_set_share_a_variant() {
        let names = [ACCEPT_ENCODING];
        let of = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(ACCEPT_ENCODING, v.parse().unwrap());
            vary_values(&names, &h)
        };
        assert_eq!(of("gzip, deflate, br"), of("br,GZIP, deflate"));
        assert_eq!(of("gzip;q=0.5, br"), of("br, gzip; q=0.5"));
        assert_ne!(of("gzip;q=0.5, br"), of("gzip, br"));
        assert_ne!(of("gzip"), of("gzip, br"));
        assert_ne!(of("g zip"), of("gzip"));
        // An empty field (identity only) is not an absent one (anything goes).
        assert_ne!(of(""), vary_values(&names, &HeaderMap::new()));
    }

    #[test]
    fn an_unreadable_vary_is_never_stored() {
        let mut headers = HeaderMap::new();
        headers.append(VARY, "accept-language".parse().unwrap());
        headers.append(
            VARY,
            HeaderValue::from_bytes(b"Cookie, caf\xc3\xa9").unwrap(),
        );
        assert_eq!(vary_spec(&headers), VarySpec::Any);
        let mut headers = HeaderMap::new();
        headers.insert(VARY, "accept language".parse().unwrap());
        assert_eq!(vary_spec(&headers), VarySpec::Any);
    }

    #[test]
    fn long_keys_are_bounded_and_distinct() {
        let a = "/a".repeat(40_000);
        let mut b = a.clone();
        b.push('x');
        let (ka, kb) = (bound(a.as_str().into()), bound(b.as_str().into()));
        assert!(ka.len() <= MAX_LOGICAL_KEY_LEN);
        assert_ne!(ka, kb);
        assert!(ka.starts_with("/a/a/a"));
        // Multi-byte characters at the cut must not panic.
        let wide = "é".repeat(1000);
        assert!(bound(wide.as_str().into()).len() <= MAX_LOGICAL_KEY_LEN);
    }

    proptest! {
        #[test]
        fn key_building_never_panics(path in "/[a-zA-Z0-9%/._~-]{0,300}", query in "[a-zA-Z0-9%=&+._~-]{0,300}", header in proptest::collection::vec(any::<u8>(), 0..64)) {
            let uri = format!("{path}?{query}");
            if let Ok(req) = Request::get(uri.as_str()).body(()) {
                let (mut p, _) = req.into_parts();
                if let Ok(value) = http::HeaderValue::from_bytes(&header) {
                    p.headers.insert("x-any", value);
                }
                let _ = logical_from_path(&p);
                let headers = [HeaderName::from_static("x-any")];
                for normalize_query in [false, true] {
                    let _ = variant(&p, Keying { headers: &headers, normalize_query });
                }
                let _ = vary_values(&[HeaderName::from_static("x-any"), ACCEPT_ENCODING], &p.headers);
            }
        }

        #[test]
        fn query_permutations_of_distinct_names_share_a_variant(pairs in proptest::collection::btree_map("[a-z]{1,4}", "[a-z0-9]{0,4}", 1..6), seed in any::<u64>()) {
            let mut list: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let sorted = list.join("&");
            // A deterministic shuffle driven by the seed.
            let n = list.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(i as u64 + 1) % (i as u64 + 1)) as usize;
                list.swap(i, j);
            }
            let shuffled = list.join("&");
            prop_assert_eq!(normalized_of(&format!("/p?{sorted}")), normalized_of(&format!("/p?{shuffled}")));
        }
    }
}
