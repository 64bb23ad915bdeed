//! Query-string normalisation for the variant identity.
//!
//! Requests that every reasonable server treats alike should share an entry; requests that
//! some server may treat differently must not. Hence:
//!
//! - Query pairs are split on `&` (empty pieces dropped) and stably sorted by name, the text
//!   before the first `=`: order between names is noise, order within one name is not
//!   (`a=1&a=2` is a list). A pair keeps its `=` or lack of it: `a` and `a=` differ.
//! - Only escapes of RFC 3986 unreserved characters (`ALPHA DIGIT - . _ ~`) are decoded;
//!   every other escape keeps its meaning (`%2F` is not `/`, `%26` is not `&`) and only has
//!   its hex digits uppercased. `+` is left alone: whether it means a space is the app's call.
//! - Invalid escapes (`%`, `%4`, `%G1`) are kept verbatim. A decoded hex digit right after
//!   such a bare `%` stays encoded: `%%34` decoded to `%4` would turn into a different,
//!   valid escape the next time round, and normalising must be idempotent.
//!
//! Already normal input (the common case) is returned borrowed, without allocating.

use std::borrow::Cow;

/// Normalises a query string (without the leading `?`) as described in the module docs.
/// The empty query normalises to the empty string.
pub(crate) fn normalize_query(query: &str) -> Cow<'_, str> {
    if is_normal_query(query) {
        return Cow::Borrowed(query);
    }
    let mut pairs: Vec<Cow<'_, str>> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(normalize_escapes)
        .collect();
    // `sort_by` is stable: pairs with the same name keep their relative order.
    pairs.sort_by(|a, b| name_order(pair_name(a), pair_name(b)));
    Cow::Owned(pairs.join("&"))
}

/// Normalises only the percent-escapes of `path` (decode unreserved, uppercase the rest),
/// without any reordering. Used for each query pair.
fn normalize_escapes(path: &str) -> Cow<'_, str> {
    let Some(at) = first_change(path) else {
        return Cow::Borrowed(path);
    };
    let mut out = String::with_capacity(path.len());
    out.push_str(&path[..at]);
    write_escapes(&path[at..], &mut out);
    Cow::Owned(out)
}

/// The order of two pair names as a form decoder reads them (`+` is a space, every escape
/// decoded): names a decoder reads as one name compare equal, so the stable sort keeps
/// the order of their values (`a+b=1&a%20b=2` is the list `a b: [1, 2]`).
fn name_order(a: &str, b: &str) -> std::cmp::Ordering {
    let plain = |s: &str| !s.bytes().any(|b| b == b'%' || b == b'+');
    if plain(a) && plain(b) {
        return a.cmp(b);
    }
    decoded_name(a).cmp(&decoded_name(b))
}

/// A name as form decoders read it: escapes decoded, `+` a space, then invalid UTF-8
/// replaced (as `serde_urlencoded` does), so `%FF` and `%FE` compare equal, as they read.
fn decoded_name(name: &str) -> Vec<u8> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|&b| hex_value(b));
                if let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) {
                    out.push(high << 4 | low);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            other => out.push(other),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(text) => text.into_bytes(),
        Err(error) => String::from_utf8_lossy(error.as_bytes())
            .into_owned()
            .into_bytes(),
    }
}

/// The name of a query pair: everything before its first `=`.
fn pair_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

/// Whether `normalize_query` would return `query` unchanged.
fn is_normal_query(query: &str) -> bool {
    if query.is_empty() {
        return true;
    }
    let mut previous = "";
    for pair in query.split('&') {
        if pair.is_empty() || first_change(pair).is_some() {
            return false;
        }
        let name = pair_name(pair);
        if name_order(name, previous).is_lt() {
            return false;
        }
        previous = name;
    }
    true
}

/// What normalisation does with the `%` at the start of an escape.
enum Escape {
    /// Not followed by two hex digits: kept verbatim.
    Bare,
    /// A valid escape of this byte that stays encoded, with uppercase hex digits.
    Keep(u8),
    /// A valid escape of this unreserved character, replaced by the character.
    Decode(u8),
}

/// Classifies the `%` at `bytes[i]`, given the normalised text that precedes it.
fn classify(bytes: &[u8], i: usize, before: &[u8]) -> Escape {
    let hex = |j: usize| bytes.get(j).and_then(|&b| hex_value(b));
    let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) else {
        return Escape::Bare;
    };
    let byte = high << 4 | low;
    // After a bare `%` (plus at most one hex digit), a decoded hex digit would complete a
    // new escape out of the bare `%`.
    let joins_bare =
        matches!(before, [.., b'%']) || matches!(before, [.., b'%', h] if h.is_ascii_hexdigit());
    if is_unreserved(byte) && !(byte.is_ascii_hexdigit() && joins_bare) {
        Escape::Decode(byte)
    } else {
        Escape::Keep(byte)
    }
}

/// Byte offset of the first escape in `s` that normalisation rewrites, if any.
fn first_change(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'%') {
        i += offset;
        // Nothing has changed before `i`, so the input prefix is the normalised prefix.
        match classify(bytes, i, &bytes[..i]) {
            Escape::Bare => i += 1,
            Escape::Decode(_) => return Some(i),
            Escape::Keep(byte) => {
                if bytes[i + 1..i + 3] != upper_hex(byte) {
                    return Some(i);
                }
                i += 3;
            }
        }
    }
    None
}

/// Appends `src` to `out` with its escapes normalised.
fn write_escapes(src: &str, out: &mut String) {
    let bytes = src.as_bytes();
    let (mut i, mut copied) = (0, 0);
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'%') {
        i += offset;
        // `i` and `i + 3` sit next to ASCII bytes, so they are char boundaries.
        out.push_str(&src[copied..i]);
        match classify(bytes, i, out.as_bytes()) {
            Escape::Bare => {
                out.push('%');
                i += 1;
            }
            Escape::Decode(byte) => {
                out.push(char::from(byte));
                i += 3;
            }
            Escape::Keep(byte) => {
                let [high, low] = upper_hex(byte);
                out.push('%');
                out.push(char::from(high));
                out.push(char::from(low));
                i += 3;
            }
        }
        copied = i;
    }
    out.push_str(&src[copied..]);
}

/// RFC 3986 `unreserved`: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The value of an ASCII hex digit, either case.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `b` as two uppercase hex digits.
fn upper_hex(b: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn q(s: &str) -> String {
        normalize_query(s).into_owned()
    }

    fn p(s: &str) -> String {
        normalize_escapes(s).into_owned()
    }

    #[test]
    fn empty_query() {
        assert!(matches!(normalize_query(""), Cow::Borrowed("")));
        assert_eq!(q("&"), "");
        assert_eq!(q("&&&"), "");
    }

    #[test]
    fn normal_input_is_borrowed() {
        for s in [
            "a=1",
            "a=1&b=2",
            "a=2&a=1",
            "a&a=",
            "q=caf\u{e9}",
            "x=%2F%C3%A9",
            "%%41",
            "a=%",
        ] {
            assert!(
                matches!(normalize_query(s), Cow::Borrowed(b) if b == s),
                "{s}"
            );
            assert!(
                matches!(normalize_escapes(s), Cow::Borrowed(b) if b == s),
                "{s}"
            );
        }
    }

    #[test]
    fn empty_pieces_are_dropped() {
        assert_eq!(q("a=1&&b=2"), "a=1&b=2");
        assert_eq!(q("&a=1&"), "a=1");
        assert_eq!(q("b&&a&"), "a&b");
    }

    #[test]
    fn pairs_are_sorted_by_name_stably() {
        assert_eq!(q("b=2&a=1"), "a=1&b=2");
        assert_eq!(q("b=2&a=1"), q("a=1&b=2"));
        assert_eq!(q("a=1&a=2"), "a=1&a=2");
        assert_eq!(q("a=2&a=1"), "a=2&a=1");
        assert_ne!(q("a=1&a=2"), q("a=2&a=1"));
        assert_eq!(q("b=1&a=2&c=0&a=1"), "a=2&a=1&b=1&c=0");
        // By name, not by whole pair: `-` sorts before `=`.
        assert_eq!(q("a-b=1&a=2"), "a=2&a-b=1");
        assert_eq!(q("ab&a=1"), "a=1&ab");
        assert_eq!(q("=x&a"), "=x&a");
        assert_eq!(q("a&=x"), "=x&a");
    }

    #[test]
    fn pairs_keep_their_equals_sign() {
        assert_ne!(q("a"), q("a="));
        assert_eq!(q("a="), "a=");
        assert_eq!(q("a&a="), "a&a=");
        assert_eq!(q("a=&a"), "a=&a");
        assert_eq!(q("b=&a"), "a&b=");
        assert_eq!(q("a=b=c"), "a=b=c");
    }

    #[test]
    fn unreserved_escapes_are_decoded() {
        assert_eq!(q("x=%41%7e%2D%2e%5F%30%7A"), "x=A~-._0z");
        assert_eq!(q("%61=1&b=%62"), "a=1&b=b");
        // Sorting uses the decoded name.
        assert_eq!(q("b=1&%61=2"), "a=2&b=1");
        assert_eq!(q("x=%41"), q("x=A"));
    }

    #[test]
    fn reserved_escapes_are_kept_and_uppercased() {
        assert_eq!(q("x=%2f"), "x=%2F");
        assert_ne!(q("x=%2F"), q("x=/"));
        assert_eq!(q("x=%3F%23%26%3D"), "x=%3F%23%26%3D");
        assert_eq!(q("x=%3f%23%26%3d"), "x=%3F%23%26%3D");
        assert_ne!(q("a=1%26b=2"), q("a=1&b=2"));
        assert_ne!(q("a%3D1"), q("a=1"));
        assert_eq!(q("q=%c3%a9"), "q=%C3%A9");
        assert_eq!(q("q=%20"), "q=%20");
    }

    #[test]
    fn plus_is_left_alone() {
        assert_eq!(q("q=a+b"), "q=a+b");
        assert_eq!(q("q=a%2b"), "q=a%2B");
        assert_ne!(q("q=a+b"), q("q=a%20b"));
    }

    #[test]
    fn invalid_escapes_are_kept_verbatim() {
        for s in [
            "%", "%%", "%4", "%G1", "%4G", "a%", "x=%zz", "%%%", "x=%e9%",
        ] {
            let want = s.replace("%e9", "%E9");
            assert_eq!(q(s), want, "{s}");
        }
        assert_eq!(p("%g%41"), "%gA");
        assert_eq!(p("%%4a"), "%J");
        // A decoded hex digit must not complete an escape with a bare `%`.
        assert_eq!(p("%%41"), "%%41");
        assert_eq!(p("%%34"), "%%34");
        assert_eq!(p("%%341"), "%%341");
        assert_eq!(p("%4%31"), "%4%31");
        assert_eq!(p("%%3a"), "%%3A");
        assert_eq!(p("%A%42"), "%A%42");
        assert_eq!(p("%%%41"), "%%%41");
        assert_eq!(p("%x%41"), "%xA");
    }

    #[test]
    fn every_byte_escape() {
        for byte in 0..=255u8 {
            let upper = format!("%{byte:02X}");
            let lower = format!("%{byte:02x}");
            let want = if is_unreserved(byte) {
                char::from(byte).to_string()
            } else {
                upper.clone()
            };
            assert_eq!(p(&upper), want);
            assert_eq!(p(&lower), want);
            assert_eq!(q(&format!("k={lower}")), format!("k={want}"));
        }
    }

    #[test]
    fn path_escapes_do_not_sort() {
        assert_eq!(p("/a%2fb/%7Euser"), "/a%2Fb/~user");
        assert_eq!(p("b&a&&"), "b&a&&");
        assert_eq!(p(""), "");
    }

    #[test]
    fn huge_inputs() {
        let s = "b=%7e%2f&a=%&".repeat(64 * 1024 / 13);
        let once = q(&s);
        assert_eq!(q(&once), once);
        let s = "%".repeat(64 * 1024);
        assert!(matches!(normalize_query(&s), Cow::Borrowed(_)));
        assert!(matches!(normalize_escapes(&s), Cow::Borrowed(_)));
    }

    /// Text dense in escapes, valid and invalid, and in separators.
    fn query_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                prop::sample::select(vec![
                    "%", "&", "=", "a", "b", "A", "4", "1", "f", "g", "+", "/", "~", "\u{e9}",
                ])
                .prop_map(str::to_owned),
                any::<u8>().prop_map(|b| format!("%{b:02x}")),
                any::<u8>().prop_map(|b| format!("%{b:02X}")),
            ],
            0..24,
        )
        .prop_map(|parts| parts.concat())
    }

    /// A value: no `&`, anything else including escapes and `=`.
    fn value() -> impl Strategy<Value = String> {
        query_text().prop_map(|s| s.replace('&', ""))
    }

    fn pair(name: String) -> impl Strategy<Value = String> {
        prop::option::of(value()).prop_map(move |v| match v {
            Some(v) => format!("{name}={v}"),
            None => name.clone(),
        })
    }

    proptest! {
        #[test]
        fn permuting_distinct_names_is_invisible(
            (pairs, shuffled) in prop::collection::btree_set("[a-z]{1,3}|%6[1-9]", 1..8)
                .prop_map(|names| {
                    // Distinct after decoding: `%61` is `a`.
                    let decoded: BTreeSet<String> = names.iter().map(|n| p(n)).collect();
                    if decoded.len() == names.len() { names } else { decoded }
                })
                .prop_flat_map(|names| names.into_iter().map(pair).collect::<Vec<_>>())
                .prop_flat_map(|pairs| (Just(pairs.clone()), Just(pairs).prop_shuffle()))
        ) {
            prop_assert_eq!(q(&pairs.join("&")), q(&shuffled.join("&")));
        }

        #[test]
        fn swapping_same_name_values_is_visible(
            before in prop::collection::vec(pair("k".to_owned()), 0..3),
            after in prop::collection::vec(pair("k".to_owned()), 0..3),
            name in "[a-z]{1,3}",
            v1 in value(),
            v2 in value(),
        ) {
            prop_assume!(p(&v1) != p(&v2));
            let build = |x: &str, y: &str| {
                let mut all = before.clone();
                all.push(format!("{name}={x}"));
                all.push(format!("{name}={y}"));
                all.extend(after.iter().cloned());
                all.join("&")
            };
            prop_assert_ne!(q(&build(&v1, &v2)), q(&build(&v2, &v1)));
        }

        #[test]
        fn unreserved_escapes_equal_their_char(
            c in prop::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~".to_vec()
            ),
            lower in any::<bool>(),
            pre in "[a-z=&/]{0,8}",
            post in "[a-z=&/%]{0,8}",
        ) {
            let escaped = if lower { format!("%{c:02x}") } else { format!("%{c:02X}") };
            let plain = char::from(c).to_string();
            prop_assert_eq!(q(&format!("{pre}{escaped}{post}")), q(&format!("{pre}{plain}{post}")));
            prop_assert_eq!(p(&format!("{pre}{escaped}{post}")), p(&format!("{pre}{plain}{post}")));
        }

        #[test]
        fn encoded_slash_never_equals_slash(a in query_text(), b in query_text(), lower in any::<bool>()) {
            let escaped = if lower { "%2f" } else { "%2F" };
            let slashes = |s: &str| s.matches('/').count();
            let with_escape = q(&format!("{a}{escaped}{b}"));
            let with_slash = q(&format!("{a}/{b}"));
            prop_assert_ne!(&with_escape, &with_slash);
            prop_assert_eq!(slashes(&with_escape) + 1, slashes(&with_slash));
        }

        #[test]
        fn idempotent(s in query_text()) {
            let once = q(&s);
            prop_assert!(matches!(normalize_query(&once), Cow::Borrowed(_)), "{:?} -> {:?}", s, once);
            let once = p(&s);
            prop_assert!(matches!(normalize_escapes(&once), Cow::Borrowed(_)), "{:?} -> {:?}", s, once);
        }

        #[test]
        fn idempotent_on_any_text(s in "\\PC*") {
            let once = q(&s);
            prop_assert_eq!(q(&once), once);
            let once = p(&s);
            prop_assert_eq!(p(&once), once);
        }

        #[test]
        fn never_panics_on_huge_inputs(unit in query_text(), any_text in "\\PC{0,16}") {
            let unit = format!("{unit}{any_text}");
            let s = unit.repeat(64 * 1024 / unit.len().max(1));
            let once = q(&s);
            prop_assert_eq!(q(&once), once);
            let _ = p(&s);
        }
    }
}
