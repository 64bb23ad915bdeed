//! `Cache-Control` parsed once into a value every rule reads.
//!
//! Parsing fails closed: a field value that is not visible ASCII, a directive that is not a
//! token (optionally `=` a token or a quoted string), or an unbalanced quote makes the whole
//! header [`CacheControl::Unparseable`], which the storing rules read as "do not store". A
//! line the cache cannot read may hold the `private` or `no-store` that matters.
//!
//! Delta-seconds beyond 2^31 are 2^31 (RFC 9111 §1.2.2); a delta-seconds that is not
//! digits (`max-age=1.5`, `max-age="x"`) is invalid and the directive reads as present with
//! no value, which the storing rules treat as stale.

use http::header::{CACHE_CONTROL, PRAGMA};
use http::HeaderMap;

/// The largest delta-seconds a cache must keep (RFC 9111 §1.2.2).
pub(crate) const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The directives of a message's `Cache-Control` fields, or the fact that they cannot be
/// read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum CacheControl {
    /// No `Cache-Control` at all.
    #[default]
    Absent,
    /// Directives, lower-cased names, in order.
    Directives(Vec<Directive>),
    /// Something in the fields could not be parsed: the message must not be stored.
    Unparseable,
}

/// One directive: a lower-case name and its value, unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Directive {
    pub(crate) name: String,
    pub(crate) value: Option<String>,
}

/// A delta-seconds directive as read: absent, a number, or present but invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seconds {
    Absent,
    Valid(u64),
    /// Present with a value that is not delta-seconds (or twice with different values).
    Invalid,
}

impl Seconds {
    /// The value, `None` when absent; `Err` when present but invalid.
    pub(crate) fn get(self) -> Result<Option<u64>, ()> {
        match self {
            Seconds::Absent => Ok(None),
            Seconds::Valid(s) => Ok(Some(s)),
            Seconds::Invalid => Err(()),
        }
    }
}

impl CacheControl {
    /// Parse every `Cache-Control` field of `headers`.
    pub(crate) fn parse(headers: &HeaderMap) -> CacheControl {
        Self::parse_field(headers, &CACHE_CONTROL)
    }

    /// Parse every field `name` of `headers` with the `Cache-Control` grammar (a targeted
    /// field such as `CDN-Cache-Control`, RFC 9213).
    pub(crate) fn parse_field(headers: &HeaderMap, name: &http::HeaderName) -> CacheControl {
        Self::from_fields(headers.get_all(name).iter())
    }

    /// Parse `Cache-Control` field values, in order.
    pub(crate) fn from_fields<'a>(
        fields: impl Iterator<Item = &'a http::HeaderValue>,
    ) -> CacheControl {
        let mut fields = fields.peekable();
        if fields.peek().is_none() {
            return CacheControl::Absent;
        }
        let mut directives = Vec::new();
        for field in fields {
            if parse_field(field.as_bytes(), &mut directives).is_err() {
                return CacheControl::Unparseable;
            }
        }
        CacheControl::Directives(directives)
    }

    /// Whether the fields could not be read (then nothing may be stored).
    pub(crate) fn is_unparseable(&self) -> bool {
        matches!(self, CacheControl::Unparseable)
    }

    fn directives(&self) -> &[Directive] {
        match self {
            CacheControl::Directives(d) => d,
            _ => &[],
        }
    }

    /// Whether a directive is present, with or without a value.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.directives().iter().any(|d| d.name == name)
    }

    /// The value-less form of a directive that may carry a field list (`private`,
    /// `no-cache`): `private="Set-Cookie"` still counts, conservatively, as `private`.
    pub(crate) fn no_store(&self) -> bool {
        self.has("no-store")
    }

    /// `private` in any form.
    pub(crate) fn private(&self) -> bool {
        self.has("private")
    }

    /// `no-cache` in any form.
    pub(crate) fn no_cache(&self) -> bool {
        self.has("no-cache")
    }

    /// `public`.
    pub(crate) fn public(&self) -> bool {
        self.has("public")
    }

    /// `must-revalidate` or `proxy-revalidate`.
    pub(crate) fn must_revalidate(&self) -> bool {
        self.has("must-revalidate") || self.has("proxy-revalidate")
    }

    /// A delta-seconds directive. Two occurrences with different values are invalid
    /// (RFC 9111 §4.2.1: the response is then stale).
    pub(crate) fn seconds(&self, name: &str) -> Seconds {
        let mut found = Seconds::Absent;
        for directive in self.directives().iter().filter(|d| d.name == name) {
            let this = match directive.value.as_deref().map(delta_seconds) {
                Some(Some(seconds)) => Seconds::Valid(seconds),
                _ => Seconds::Invalid,
            };
            found = match (found, this) {
                (Seconds::Absent, this) => this,
                (Seconds::Valid(a), Seconds::Valid(b)) if a == b => Seconds::Valid(a),
                _ => Seconds::Invalid,
            };
        }
        found
    }

    /// `max-age`.
    pub(crate) fn max_age(&self) -> Seconds {
        self.seconds("max-age")
    }

    /// `s-maxage`.
    pub(crate) fn s_maxage(&self) -> Seconds {
        self.seconds("s-maxage")
    }
}

/// Whether every field `name` of `headers` is a valid targeted cache-control field
/// (RFC 9213): a Structured Field Dictionary (RFC 8941) whose delta-seconds directives are
/// Integers. A cache ignores an invalid one (and reads `Cache-Control` instead).
pub(crate) fn is_valid_targeted(headers: &HeaderMap, name: &http::HeaderName) -> bool {
    headers
        .get_all(name)
        .iter()
        .all(|value| value.to_str().is_ok_and(is_sf_dictionary))
}

/// Directives whose value must be an Integer in a targeted field.
const INTEGER_DIRECTIVES: [&str; 4] = [
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];

fn is_sf_dictionary(value: &str) -> bool {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    if value.is_empty() {
        return true;
    }
    value.split(',').all(|member| {
        let member = member.trim_matches(|c| c == ' ' || c == '\t');
        // A member: key [ "=" bare-item ] *( ";" key [ "=" bare-item ] ).
        let mut parts = member.split(';');
        let Some(first) = parts.next() else {
            return false;
        };
        let (key, item) = match first.split_once('=') {
            Some((key, item)) => (key, Some(item)),
            None => (first, None),
        };
        if !is_sf_key(key) {
            return false;
        }
        let item_ok = match item {
            None => true,
            Some(item) if INTEGER_DIRECTIVES.contains(&key) => is_sf_integer(item),
            Some(item) => is_sf_bare_item(item),
        };
        item_ok
            && parts.all(|param| {
                let param = param.trim_start_matches(' ');
                match param.split_once('=') {
                    Some((key, item)) => is_sf_key(key) && is_sf_bare_item(item),
                    None => is_sf_key(param),
                }
            })
    })
}

fn is_sf_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b))
}

fn is_sf_integer(item: &str) -> bool {
    let digits = item.strip_prefix('-').unwrap_or(item);
    (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_sf_bare_item(item: &str) -> bool {
    let bytes = item.as_bytes();
    match bytes.first() {
        Some(b'"') => {
            bytes.len() >= 2
                && bytes[bytes.len() - 1] == b'"'
                && bytes[1..bytes.len() - 1]
                    .iter()
                    .all(|b| (0x20..0x7f).contains(b))
        }
        Some(b'?') => item == "?0" || item == "?1",
        Some(b':') => bytes.len() >= 2 && bytes[bytes.len() - 1] == b':',
        Some(b) if b.is_ascii_alphabetic() || *b == b'*' => bytes
            .iter()
            .all(|b| is_tchar(*b) || *b == b':' || *b == b'/'),
        Some(b) if b.is_ascii_digit() || *b == b'-' => {
            let digits = item.strip_prefix('-').unwrap_or(item);
            match digits.split_once('.') {
                Some((int, frac)) => {
                    (1..=12).contains(&int.len())
                        && (1..=3).contains(&frac.len())
                        && int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
                }
                None => is_sf_integer(item),
            }
        }
        _ => false,
    }
}

/// What a request's `Cache-Control` asks of a stored response (RFC 9111 §5.2.1), for the
/// RFC 9111 preset: how old, how fresh or how stale it may be, and whether the cache may
/// go to the origin at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    pub(crate) max_age: Option<u64>,
    pub(crate) min_fresh: Option<u64>,
    /// `max-stale` without a value accepts any staleness.
    pub(crate) max_stale: Option<u64>,
    pub(crate) only_if_cached: bool,
}

impl RequestDirectives {
    /// The directives of a request's parsed `Cache-Control`; `None` when there are none
    /// that matter here.
    pub(crate) fn of(cc: &CacheControl) -> Option<RequestDirectives> {
        let seconds = |name| cc.seconds(name).get().ok().flatten();
        let directives = RequestDirectives {
            max_age: seconds("max-age"),
            min_fresh: seconds("min-fresh"),
            max_stale: cc
                .has("max-stale")
                .then(|| seconds("max-stale").unwrap_or(u64::MAX)),
            only_if_cached: cc.has("only-if-cached"),
        };
        (directives != RequestDirectives::default()).then_some(directives)
    }
}

/// Whether a `Pragma` field says `no-cache`, or cannot be read (`Err`).
pub(crate) fn pragma_no_cache(headers: &HeaderMap) -> Result<bool, ()> {
    let mut directives = Vec::new();
    for field in headers.get_all(PRAGMA) {
        parse_field(field.as_bytes(), &mut directives)?;
    }
    Ok(directives.iter().any(|d| d.name == "no-cache"))
}

/// Delta-seconds: one or more digits, saturating at 2^31.
pub(crate) fn delta_seconds(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Saturate without overflow however many digits there are.
    let mut seconds: u64 = 0;
    for digit in value.bytes() {
        seconds = seconds * 10 + u64::from(digit - b'0');
        if seconds > MAX_DELTA_SECONDS {
            return Some(MAX_DELTA_SECONDS);
        }
    }
    Some(seconds)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One field value: `#( token [ "=" ( token / quoted-string ) ] )` with optional white space
/// around commas. Anything else is an error.
fn parse_field(field: &[u8], out: &mut Vec<Directive>) -> Result<(), ()> {
    let mut i = 0;
    let skip_ows = |i: &mut usize| {
        while *i < field.len() && (field[*i] == b' ' || field[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        skip_ows(&mut i);
        if i == field.len() {
            return Ok(());
        }
        if field[i] == b',' {
            i += 1;
            continue;
        }
        let start = i;
        while i < field.len() && is_tchar(field[i]) {
            i += 1;
        }
        if i == start {
            return Err(());
        }
        let name = std::str::from_utf8(&field[start..i])
            .map_err(|_| ())?
            .to_ascii_lowercase();
        let mut value = None;
        if i < field.len() && field[i] == b'=' {
            i += 1;
            if i < field.len() && field[i] == b'"' {
                i += 1;
                let mut text = Vec::new();
                loop {
                    match field.get(i) {
                        None => return Err(()),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let escaped = *field.get(i + 1).ok_or(())?;
                            if !is_visible_or_space(escaped) {
                                return Err(());
                            }
                            text.push(escaped);
                            i += 2;
                        }
                        Some(&b) if is_visible_or_space(b) => {
                            text.push(b);
                            i += 1;
                        }
                        Some(_) => return Err(()),
                    }
                }
                value = Some(String::from_utf8(text).map_err(|_| ())?);
            } else {
                let start = i;
                while i < field.len() && is_tchar(field[i]) {
                    i += 1;
                }
                // `max-age=` with nothing after it is present but invalid.
                value = Some(String::from_utf8(field[start..i].to_vec()).map_err(|_| ())?);
            }
        }
        out.push(Directive { name, value });
        skip_ows(&mut i);
        match field.get(i) {
            None => return Ok(()),
            Some(b',') => i += 1,
            Some(_) => return Err(()),
        }
    }
}

fn is_visible_or_space(b: u8) -> bool {
    b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cc(values: &[&[u8]]) -> CacheControl {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(CACHE_CONTROL, http::HeaderValue::from_bytes(v).unwrap());
        }
        CacheControl::parse(&headers)
    }

    #[test]
    fn directives_are_read_case_insensitively_with_values() {
        let c = cc(&[b"Public, MAX-AGE=60", b"s-maxage=\"30\""]);
        assert!(c.public());
        assert_eq!(c.max_age(), Seconds::Valid(60));
        assert_eq!(c.s_maxage(), Seconds::Valid(30));
        assert!(!c.private());
    }

    #[test]
    fn a_non_ascii_byte_makes_the_whole_header_unparseable() {
        assert!(cc(&[b"max-age=60, private, x=\xff"]).is_unparseable());
        assert!(cc(&[b"max-age=60", b"\xe9t\xe9"]).is_unparseable());
    }

    #[test]
    fn malformed_syntax_is_unparseable() {
        for bad in [
            &b"max-age=60 private"[..],
            b"=60",
            b"a=\"unterminated",
            b"a b",
        ] {
            assert!(
                cc(&[bad]).is_unparseable(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(!cc(&[b" , max-age=1 ,, "]).is_unparseable());
    }

    #[test]
    fn huge_delta_seconds_saturate_at_2_pow_31() {
        let c = cc(&[b"max-age=99999999999999999999999"]);
        assert_eq!(c.max_age(), Seconds::Valid(MAX_DELTA_SECONDS));
    }

    #[test]
    fn decimals_and_conflicts_are_invalid() {
        assert_eq!(cc(&[b"max-age=1.5"]).max_age(), Seconds::Invalid);
        assert_eq!(cc(&[b"max-age="]).max_age(), Seconds::Invalid);
        assert_eq!(cc(&[b"max-age=1, max-age=2"]).max_age(), Seconds::Invalid);
        assert_eq!(cc(&[b"max-age=2, max-age=2"]).max_age(), Seconds::Valid(2));
        // Spaces around `=` are not allowed by the grammar.
        assert!(cc(&[b"max-age = 5"]).is_unparseable());
    }

    #[test]
    fn targeted_fields_must_be_structured_dictionaries_with_integer_ages() {
        let valid = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("cdn-cache-control", http::HeaderValue::from_static(v));
            is_valid_targeted(&h, &http::HeaderName::from_static("cdn-cache-control"))
        };
        assert!(valid("max-age=10000"));
        assert!(valid("max-age=60, private, stale-while-revalidate=5"));
        assert!(valid("no-store"));
        assert!(!valid("max-age=10000, &&&&&"));
        assert!(!valid("max-age=\"10000\""));
        assert!(!valid("Max-Age=5"));
    }

    #[test]
    fn private_with_a_field_list_is_private() {
        assert!(cc(&[b"private=\"set-cookie\", max-age=60"]).private());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(v) = http::HeaderValue::from_bytes(&bytes) {
                let mut h = HeaderMap::new();
                h.insert(CACHE_CONTROL, v);
                let _ = CacheControl::parse(&h).max_age();
            }
        }
    }
}
