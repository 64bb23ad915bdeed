//! Cache keys: the logical key invalidation patterns match, and the variant hash.
//!
//! The logical key is the request path by default (`/api/dashboard/ABC`), or whatever a key
//! function returns (`dashboard:ABC`). The variant is a hash of what else selects the
//! response: the host, the normalised query, and request headers the layer is told to key
//! on. `Vary` is handled one level down: each entry remembers the request header values it
//! was produced for (see [`vary_hash`]).
//!
//! Query normalisation sorts pairs by name (keeping the order of repeated names) and
//! decodes only escapes of unreserved characters, so `?b=2&a=1` and `?a=1&b=2` share an
//! entry, `%41` and `A` share one, while `%2F` and `/` do not.

use std::borrow::Cow;

use http::header::{HOST, VARY};
use http::request::Parts;
use http::{HeaderMap, HeaderName};
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

mod query;

pub(crate) use query::{normalize_path_escapes, normalize_query};

/// Longest logical key kept verbatim; longer ones keep a prefix and a hash of the rest.
pub(crate) const MAX_LOGICAL_KEY_LEN: usize = 512;
/// How much of an over-long key is kept readable (so prefix patterns still match).
const KEPT_PREFIX_LEN: usize = 256;

/// The default logical key: the path, with escapes of unreserved characters decoded.
pub(crate) fn logical_from_path(parts: &Parts) -> Cow<'_, str> {
    bound(normalize_path_escapes(parts.uri.path()))
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

/// Hash of host, normalised query and the values of `keyed_headers` in the request.
pub(crate) fn variant(parts: &Parts, keyed_headers: &[HeaderName]) -> u64 {
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(HOST).map(|h| h.as_bytes()))
        .unwrap_or_default();
    let query = parts.uri.query().map(normalize_query);
    if keyed_headers.is_empty() {
        // The common case, hashed in one shot from a reused buffer (a streaming hasher
        // costs more to set up than these few bytes cost to hash).
        return VARIANT_BUFFER.with_borrow_mut(|buffer| {
            buffer.clear();
            buffer.extend(host.iter().map(u8::to_ascii_lowercase));
            // Separators keep ("ab", "c") and ("a", "bc") apart.
            buffer.push(0xff);
            if let Some(query) = &query {
                buffer.extend_from_slice(query.as_bytes());
            }
            xxhash_rust::xxh3::xxh3_64(buffer)
        });
    }
    let mut hasher = Xxh3::new();
    let lower: Vec<u8> = host.iter().map(u8::to_ascii_lowercase).collect();
    hasher.update(&lower);
    hasher.update(&[0xff]);
    if let Some(query) = &query {
        hasher.update(query.as_bytes());
    }
    hash_header_values(&mut hasher, keyed_headers, &parts.headers);
    hasher.digest()
}

thread_local! {
    static VARIANT_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Hash of the values of `names` in `headers`, for matching a request to a `Vary` variant.
pub(crate) fn vary_hash(names: &[HeaderName], headers: &HeaderMap) -> u64 {
    if names.is_empty() {
        return 0;
    }
    let mut hasher = Xxh3::new();
    hash_header_values(&mut hasher, names, headers);
    hasher.digest()
}

fn hash_header_values(hasher: &mut Xxh3, names: &[HeaderName], headers: &HeaderMap) {
    for name in names {
        hasher.update(&[0xfe]);
        hasher.update(name.as_str().as_bytes());
        for value in headers.get_all(name) {
            hasher.update(&[0xfd]);
            hasher.update(value.as_bytes());
        }
    }
}

/// What a response's `Vary` says about storing it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum VarySpec {
    /// `Vary: *`: the response depends on things outside the request; never store it.
    Any,
    /// The request headers the response depends on, lower-case, sorted, de-duplicated.
    Headers(Vec<HeaderName>),
}

/// Read every `Vary` header of a response. Names that are not valid header names are kept
/// out of the key; they could never match a request header anyway.
pub(crate) fn vary_spec(response_headers: &HeaderMap) -> VarySpec {
    let mut names = Vec::new();
    for value in response_headers.get_all(VARY) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',') {
            let name = name.trim();
            if name == "*" {
                return VarySpec::Any;
            }
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                names.push(name);
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

    fn variant_of(uri: &str) -> u64 {
        variant(&parts(uri), &[])
    }

    #[test]
    fn query_order_of_distinct_names_does_not_matter() {
        assert_eq!(variant_of("/x?b=2&a=1"), variant_of("/x?a=1&b=2"));
    }

    #[test]
    fn order_of_repeated_names_matters() {
        assert_ne!(variant_of("/x?a=1&a=2"), variant_of("/x?a=2&a=1"));
    }

    #[test]
    fn unreserved_escapes_are_decoded_reserved_are_not() {
        assert_eq!(variant_of("/x?q=%41"), variant_of("/x?q=A"));
        assert_ne!(variant_of("/x?q=%2F"), variant_of("/x?q=/"));
        let a = logical_from_path(&parts("/api/%41BC")).into_owned();
        assert_eq!(a, "/api/ABC");
        let b = logical_from_path(&parts("/api/a%2Fb")).into_owned();
        assert_ne!(b, "/api/a/b");
    }

    #[test]
    fn host_selects_the_variant_case_insensitively() {
        assert_ne!(
            variant_of("http://a.example/x"),
            variant_of("http://b.example/x")
        );
        assert_eq!(
            variant_of("http://A.example/x"),
            variant_of("http://a.example/x")
        );
        let mut with_header = parts("/x");
        with_header
            .headers
            .insert(HOST, "a.example".parse().unwrap());
        assert_ne!(variant(&with_header, &[]), variant_of("/x"));
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
        assert_ne!(
            variant(&alice, std::slice::from_ref(&name)),
            variant(&bob, std::slice::from_ref(&name))
        );
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
    fn vary_hash_tells_values_apart() {
        let names = [HeaderName::from_static("accept-language")];
        let mut en = HeaderMap::new();
        en.insert("accept-language", "en".parse().unwrap());
        let mut de = HeaderMap::new();
        de.insert("accept-language", "de".parse().unwrap());
        assert_ne!(vary_hash(&names, &en), vary_hash(&names, &de));
        assert_ne!(vary_hash(&names, &en), vary_hash(&names, &HeaderMap::new()));
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
                let _ = variant(&p, &[HeaderName::from_static("x-any")]);
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
            prop_assert_eq!(variant_of(&format!("/p?{sorted}")), variant_of(&format!("/p?{shuffled}")));
        }
    }
}
