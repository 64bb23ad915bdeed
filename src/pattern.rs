//! Redis-compatible glob patterns over logical keys.
//!
//! Invalidation patterns are matched by the memory store here and by Redis (`SCAN … MATCH`)
//! for the Redis store, so this is a byte-for-byte reimplementation of Redis's
//! `stringmatchlen` (`src/util.c`, Redis 7.x, case-sensitive), quirks included (listed on
//! [`Pattern`]).
//!
//! Redis matches by recursion with a "skip longer matches" cut. That search is equivalent to
//! the classic greedy scan that only ever backtracks to the most recent `*`, which is what
//! [`Pattern::matches`] does: O(pattern × key) at worst, no recursion.

use std::fmt;

/// Redis's `stringmatchlen` gives up once it recurses past this many `*` (its `nesting` guard).
const MAX_STAR_NESTING: usize = 1000;

/// A Redis-style glob pattern over logical keys, parsed once.
///
/// A key matches exactly when Redis's `SCAN … MATCH` would match it, so the memory and
/// Redis stores agree: `*` matches any run of bytes, `?` one byte, `[abc]` / `[^abc]` /
/// `[a-z]` one byte in / not in the class, `\` escapes the next byte, and the pattern is
/// anchored at both ends. Keys and patterns are compared as bytes. A pattern without
/// metacharacters names one key exactly ([`Pattern::literal`]).
///
/// ```
/// use tower_response_cache::Pattern;
///
/// let p = Pattern::new("/api/dashboard/A*");
/// assert!(p.matches_str("/api/dashboard/ABC"));
/// assert!(!p.matches_str("/api/dashboard/XYZ"));
/// assert_eq!(Pattern::new(r"report\*2024").literal(), Some("report*2024"));
/// ```
///
/// Parsing never fails: a malformed pattern means what it means to Redis, whose quirks are
/// reproduced:
///
/// - The empty key matches only the empty pattern (`*` does not match `""`).
/// - `[]` is an empty class (never matches) and `[^]` matches any byte; a `]` right
///   after `[` or `[^` closes the class instead of being a member.
/// - A `-` with a byte on each side is always a range, even when the right side is `]`:
///   `[a-]` is the range `]`..=`a`, and the class goes on to the next `]`.
/// - Reversed ranges are swapped. Bounds are compared as C `char`, which is signed on
///   x86-64, so bytes >= 0x80 sort *before* ASCII in ranges (`[a-\xff]` matches `0` but
///   not `b`). Redis built with an unsigned `char` (e.g. on arm64) differs there.
/// - An unterminated class ends at the end of the pattern (`[abc` is `[abc]`; `[` alone
///   matches nothing and `[^` alone matches any byte); a trailing lone `\` is a literal `\`.
/// - A match that has to go through the 1001st `*` (not last in the pattern, key not yet
///   consumed) fails: Redis's guard against deep recursion.
#[derive(Clone)]
pub struct Pattern {
    /// The pattern as given.
    source: String,
    /// The parsed pattern; consecutive stars are collapsed into one [`Token::Star`].
    tokens: Box<[Token]>,
    /// The unescaped literal bytes before the first metacharacter.
    prefix: String,
    /// Whether the whole pattern is literal, i.e. `prefix` is all of it.
    is_literal: bool,
}

/// One element of a parsed pattern. Every token except `Star` consumes exactly one byte.
#[derive(Clone)]
enum Token {
    /// `*` (one or more consecutive): any run of bytes.
    Star,
    /// `?`: any single byte.
    Any,
    /// A literal byte (possibly `\`-escaped in the pattern).
    Byte(u8),
    /// `[...]`: the set of bytes it accepts, negation already applied.
    Class(ByteSet),
}

/// A set of bytes as a 256-bit bitmap.
#[derive(Clone, Default)]
struct ByteSet([u64; 4]);

impl ByteSet {
    /// Adds `b` to the set.
    fn insert(&mut self, b: u8) {
        self.0[usize::from(b >> 6)] |= 1 << (b & 63);
    }

    /// Whether `b` is in the set.
    fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }

    /// Replaces the set by its complement.
    fn invert(&mut self) {
        for word in &mut self.0 {
            *word = !*word;
        }
    }
}

impl Token {
    /// Whether this single-byte token accepts `b` (`Star` is handled by the matcher).
    fn accepts(&self, b: u8) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Byte(c) => *c == b,
            Token::Class(set) => set.contains(b),
        }
    }
}

impl Pattern {
    /// Escape every glob character of `text`, for building patterns from values such as
    /// IDs: `format!("dashboard:{}*", Pattern::escape(id))` matches keys starting with
    /// `dashboard:` and exactly `id`, whatever characters `id` holds.
    ///
    /// ```
    /// use tower_response_cache::Pattern;
    ///
    /// let pattern = Pattern::new(&format!("dashboard:{}*", Pattern::escape("a[b")));
    /// assert!(pattern.matches_str("dashboard:a[b?from=1"));
    /// assert!(!pattern.matches_str("dashboard:ab"));
    /// ```
    pub fn escape(text: &str) -> String {
        escape(text)
    }

    /// Parses `pattern`. Never fails: malformed patterns mean what they mean to Redis.
    pub fn new(pattern: &str) -> Pattern {
        let tokens = parse(pattern.as_bytes());
        let prefix_bytes: Vec<u8> = tokens
            .iter()
            .map_while(|t| match t {
                Token::Byte(b) => Some(*b),
                _ => None,
            })
            .collect();
        let all_literal = prefix_bytes.len() == tokens.len();
        // Only ASCII `\` bytes are dropped and metacharacters are ASCII, so the prefix is
        // valid UTF-8; were it not, an empty non-literal prefix just disables the fast paths.
        let (prefix, is_literal) = match String::from_utf8(prefix_bytes) {
            Ok(prefix) => (prefix, all_literal),
            Err(_) => (String::new(), false),
        };
        Pattern {
            source: pattern.to_owned(),
            tokens: tokens.into_boxed_slice(),
            prefix,
            is_literal,
        }
    }

    /// The pattern as it was given to [`Pattern::new`].
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The key this pattern matches, unescaped, when it contains no glob metacharacters:
    /// such a pattern matches exactly that key, so callers can look it up directly.
    pub fn literal(&self) -> Option<&str> {
        self.is_literal.then_some(self.prefix.as_str())
    }

    /// The unescaped literal text before the first metacharacter (the whole key for a
    /// literal pattern). Every key the pattern matches starts with it.
    pub fn literal_prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether `key` matches the pattern: anchored at both ends, exactly as Redis decides.
    pub fn matches(&self, key: &[u8]) -> bool {
        if self.is_literal {
            return key == self.prefix.as_bytes();
        }
        // Redis's loop never runs on an empty key, so only an empty pattern matches it.
        if key.is_empty() {
            return self.tokens.is_empty();
        }
        let tokens = &self.tokens[..];
        let (mut ti, mut ki) = (0, 0);
        let mut stars = 0;
        // Most recent star: (token after it, key position it resumes at, stars so far).
        let mut resume: Option<(usize, usize, usize)> = None;
        loop {
            if ki == key.len() {
                // Key consumed: only trailing stars may remain. Resuming the last star later
                // would leave even less key for the same non-star tokens, so this is final.
                return tokens[ti..].iter().all(|t| matches!(t, Token::Star));
            }
            match tokens.get(ti) {
                Some(Token::Star) => {
                    stars += 1;
                    if ti + 1 == tokens.len() {
                        return true;
                    }
                    if stars > MAX_STAR_NESTING {
                        return false;
                    }
                    // Try the star as empty first; longer on failure. Once a later star is
                    // reached, earlier ones are never revisited (Redis's skipLongerMatches).
                    ti += 1;
                    resume = Some((ti, ki, stars));
                    continue;
                }
                Some(token) if token.accepts(key[ki]) => {
                    ti += 1;
                    ki += 1;
                    continue;
                }
                // A mismatch, or pattern used up with key left: give the last star one more byte.
                _ => {}
            }
            match resume {
                Some((after_star, from, count)) => {
                    ti = after_star;
                    ki = from + 1;
                    stars = count;
                    resume = Some((after_star, ki, count));
                }
                None => return false,
            }
        }
    }

    /// [`Pattern::matches`] for a string key.
    pub fn matches_str(&self, key: &str) -> bool {
        self.matches(key.as_bytes())
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pattern").field(&self.source).finish()
    }
}

/// Tokenises `p`, consuming it exactly as Redis's matcher walks the pattern (which never
/// depends on the key).
fn parse(p: &[u8]) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'*' => {
                while p.get(i + 1) == Some(&b'*') {
                    i += 1;
                }
                tokens.push(Token::Star);
            }
            b'?' => tokens.push(Token::Any),
            b'[' => {
                let (set, end) = parse_class(p, i + 1);
                tokens.push(Token::Class(set));
                i = end;
            }
            b'\\' => {
                // A trailing lone `\` is matched literally.
                if i + 1 < p.len() {
                    i += 1;
                }
                tokens.push(Token::Byte(p[i]));
            }
            b => tokens.push(Token::Byte(b)),
        }
        i += 1;
    }
    tokens
}

/// Parses a class whose body starts at `i` (just after `[`). Returns the accepted bytes and
/// the index of its last pattern byte (the closing `]`, or the end of an unterminated class).
fn parse_class(p: &[u8], mut i: usize) -> (ByteSet, usize) {
    let negated = p.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut set = ByteSet::default();
    loop {
        let left = p.len() - i;
        if left == 0 {
            // Redis steps back so that the end of the pattern closes the class.
            i -= 1;
            break;
        }
        if p[i] == b'\\' && left >= 2 {
            i += 1;
            set.insert(p[i]);
        } else if p[i] == b']' {
            break;
        } else if left >= 3 && p[i + 1] == b'-' {
            // C `char` is signed on x86-64: bytes >= 0x80 are negative in comparisons.
            let (a, b) = (p[i] as i8, p[i + 2] as i8);
            for c in a.min(b)..=a.max(b) {
                set.insert(c as u8);
            }
            i += 2;
        } else {
            set.insert(p[i]);
        }
        i += 1;
    }
    if negated {
        set.invert();
    }
    (set, i)
}

/// Escapes every glob metacharacter in `s` (`*`, `?`, `[`, `]`, `\`), so that the
/// resulting pattern is literal and matches exactly `s`. Used to build Redis `MATCH`
/// patterns from a namespace prefix.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    /// A direct port of Redis 7.x `stringmatchlen_impl` (nocase off), kept as close to the
    /// C as possible, including reads past the end of the pattern yielding its NUL byte.
    fn reference(pattern: &[u8], key: &[u8]) -> bool {
        let mut skip = false;
        reference_impl(pattern, 0, key, 0, &mut skip, 0)
    }

    fn reference_impl(
        p: &[u8],
        mut pi: usize,
        s: &[u8],
        mut si: usize,
        skip_longer: &mut bool,
        nesting: usize,
    ) -> bool {
        if nesting > 1000 {
            return false;
        }
        let at = |i: usize| p.get(i).copied().unwrap_or(0);
        while pi < p.len() && si < s.len() {
            match p[pi] {
                b'*' => {
                    while pi < p.len() && at(pi + 1) == b'*' {
                        pi += 1;
                    }
                    if p.len() - pi == 1 {
                        return true;
                    }
                    while si < s.len() {
                        if reference_impl(p, pi + 1, s, si, skip_longer, nesting + 1) {
                            return true;
                        }
                        if *skip_longer {
                            return false;
                        }
                        si += 1;
                    }
                    *skip_longer = true;
                    return false;
                }
                b'?' => si += 1,
                b'[' => {
                    pi += 1;
                    let not = at(pi) == b'^';
                    if not {
                        pi += 1;
                    }
                    let mut matched = false;
                    loop {
                        let plen = p.len() - pi;
                        if at(pi) == b'\\' && plen >= 2 {
                            pi += 1;
                            if p[pi] == s[si] {
                                matched = true;
                            }
                        } else if at(pi) == b']' {
                            break;
                        } else if plen == 0 {
                            pi -= 1;
                            break;
                        } else if plen >= 3 && p[pi + 1] == b'-' {
                            let mut start = i32::from(p[pi] as i8);
                            let mut end = i32::from(p[pi + 2] as i8);
                            let c = i32::from(s[si] as i8);
                            if start > end {
                                std::mem::swap(&mut start, &mut end);
                            }
                            pi += 2;
                            if c >= start && c <= end {
                                matched = true;
                            }
                        } else if p[pi] == s[si] {
                            matched = true;
                        }
                        pi += 1;
                    }
                    if not {
                        matched = !matched;
                    }
                    if !matched {
                        return false;
                    }
                    si += 1;
                }
                b'\\' => {
                    if p.len() - pi >= 2 {
                        pi += 1;
                    }
                    if p[pi] != s[si] {
                        return false;
                    }
                    si += 1;
                }
                c => {
                    if c != s[si] {
                        return false;
                    }
                    si += 1;
                }
            }
            pi += 1;
            if si == s.len() {
                while at(pi) == b'*' {
                    pi += 1;
                }
                break;
            }
        }
        pi == p.len() && si == s.len()
    }

    fn m(pattern: &str, key: &[u8]) -> bool {
        Pattern::new(pattern).matches(key)
    }

    /// Cases checked against redis-server 7.0 (`SSCAN … MATCH`), x86-64.
    #[test]
    fn redis_behaviour_table() {
        let cases: &[(&str, &[u8], bool)] = &[
            // Basics.
            ("", b"", true),
            ("", b"a", false),
            ("abc", b"abc", true),
            ("abc", b"abcd", false),
            ("abc", b"ab", false),
            ("a?c", b"abc", true),
            ("a?c", b"ac", false),
            ("?", b"", false),
            ("*", b"abc", true),
            ("a*", b"a", true),
            ("*a", b"ba", true),
            ("*a", b"ab", false),
            ("a*b*c", b"axxbyyc", true),
            ("a*b*c", b"axxbyy", false),
            ("a**b", b"ab", true),
            ("users:*:profile", b"users:42:profile", true),
            ("users:*:profile", b"users:42:settings", false),
            // The empty key matches only the empty pattern.
            ("*", b"", false),
            ("**", b"", false),
            ("*a", b"", false),
            // Classes.
            ("h[ae]llo", b"hello", true),
            ("h[ae]llo", b"hillo", false),
            ("h[^e]llo", b"hallo", true),
            ("h[^e]llo", b"hello", false),
            ("h[a-b]llo", b"hbllo", true),
            ("h[a-b]llo", b"hcllo", false),
            ("[z-a]", b"m", true),
            ("[a-c-e]", b"d", false),
            ("[a-c-e]", b"-", true),
            ("[-]", b"-", true),
            ("[]", b"]", false),
            ("[]]", b"]", false),
            ("[]a]", b"a]", false),
            ("[^]", b"x", true),
            ("[^]]", b"x", false),
            ("[^]]", b"x]", true),
            // `-` before `]` makes a range that runs past the `]`.
            ("[a-]", b"^", true),
            ("[a-]", b"a", true),
            ("[a-]", b"b", false),
            ("[a-]x", b"x", true),
            ("[a-]x", b"ax", false),
            ("[a-]b]", b"b", true),
            ("[a-]b]", b"]", true),
            ("[a-]b]", b"c", false),
            ("[a-\\]", b"b", false),
            ("[a-\\]", b"\\", true),
            // Escapes.
            ("\\*", b"*", true),
            ("\\*", b"a", false),
            ("\\a", b"a", true),
            ("a\\", b"a\\", true),
            ("\\", b"\\", true),
            ("[\\]]", b"]", true),
            ("[a\\]]", b"]", true),
            ("[\\^a]", b"^", true),
            ("[\\", b"\\", true),
            ("[a\\", b"a", true),
            ("[a\\", b"\\", true),
            // Unterminated classes.
            ("[abc", b"c", true),
            ("[abc", b"d", false),
            ("[", b"x", false),
            ("[", b"[", false),
            ("[^", b"x", true),
            ("a[", b"a", false),
            ("a[^", b"ab", true),
            // Bytes >= 0x80 compare as signed char in ranges.
            ("[a-\u{ff}]", b"b", false),
            ("[a-\u{ff}]", b"0", true),
            ("[\u{80}-\u{ff}]", b"\xc2", true),
            ("[\u{80}-\u{ff}]", b"a", false),
            ("\u{e9}", b"\xc3\xa9", true),
            ("[\u{e9}]", b"\xa9", true),
            ("a\u{0}b", b"a\x00b", true),
            ("[\u{0}]", b"\x00", true),
        ];
        for &(pattern, key, expected) in cases {
            assert_eq!(
                m(pattern, key),
                expected,
                "pattern {pattern:?} key {:?}",
                String::from_utf8_lossy(key)
            );
            assert_eq!(
                reference(pattern.as_bytes(), key),
                expected,
                "reference {pattern:?}"
            );
        }
    }

    #[test]
    fn star_nesting_guard() {
        let n = MAX_STAR_NESTING;
        let cases = [
            (
                "a*".repeat(n) + "b",
                [&b"a".repeat(n)[..], b"b"].concat(),
                true,
            ),
            (
                "a*".repeat(n + 1) + "b",
                [&b"a".repeat(n + 1)[..], b"b"].concat(),
                false,
            ),
            (
                format!("*{}b", "a*".repeat(n)),
                [&b"a".repeat(n)[..], b"b"].concat(),
                false,
            ),
            (
                "a*".repeat(n + 1),
                [&b"a".repeat(n + 1)[..], b"xyz"].concat(),
                true,
            ),
            ("a*".repeat(n + 1) + "b", b"a".repeat(n + 1), false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(Pattern::new(&pattern).matches(&key), expected);
            assert_eq!(reference(pattern.as_bytes(), &key), expected);
        }
    }

    #[test]
    fn literals_and_prefixes() {
        let p = Pattern::new("foo\\*bar");
        assert_eq!(p.literal(), Some("foo*bar"));
        assert!(p.matches_str("foo*bar"));
        assert!(!p.matches_str("fooxbar"));
        assert_eq!(Pattern::new("").literal(), Some(""));
        assert_eq!(Pattern::new("a\\").literal(), Some("a\\"));
        assert_eq!(Pattern::new("caf\\\u{e9}").literal(), Some("caf\u{e9}"));
        assert_eq!(Pattern::new("a*").literal(), None);
        assert_eq!(Pattern::new("a?").literal(), None);
        assert_eq!(Pattern::new("[a]").literal(), None);
        assert_eq!(Pattern::new("dash\\:*").literal_prefix(), "dash:");
        assert_eq!(Pattern::new("a\\?b?c*").literal_prefix(), "a?b");
        assert_eq!(Pattern::new("*x").literal_prefix(), "");
        assert_eq!(Pattern::new("a[b]").literal_prefix(), "a");
        assert_eq!(Pattern::new("x*").as_str(), "x*");
        assert_eq!(format!("{:?}", Pattern::new("x*")), "Pattern(\"x*\")");
    }

    #[test]
    fn escape_examples() {
        assert_eq!(escape("ns"), "ns");
        assert_eq!(escape("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
        assert_eq!(escape("^-:"), "^-:");
    }

    #[test]
    fn pathological_patterns_are_fast() {
        let key = vec![b'a'; 64 * 1024];
        let start = Instant::now();
        assert!(!m("a*a*a*a*a*a*a*a*b", &key));
        assert!(!m(&format!("*{}b", "a".repeat(64)), &key));
        assert!(!m(&"*a".repeat(500).replace("*a*a", "*a*b"), &key));
        assert!(m(&"a*".repeat(64), &key));
        assert!(!m(&"*?".repeat(2000), &key[..1000]));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    /// Every pattern of up to 5 bytes over the metacharacters against every short key.
    #[test]
    fn agrees_with_redis_port_exhaustively() {
        fn all_strings(alphabet: &[u8], max_len: usize) -> Vec<Vec<u8>> {
            let mut all = vec![Vec::new()];
            let mut last = vec![Vec::new()];
            for _ in 0..max_len {
                last = last
                    .iter()
                    .flat_map(|s| {
                        alphabet.iter().map(move |&b| {
                            let mut next = s.clone();
                            next.push(b);
                            next
                        })
                    })
                    .collect();
                all.extend(last.iter().cloned());
            }
            all
        }
        let keys = all_strings(b"a-]^\\\xff", 3);
        for pattern in all_strings(b"ab*?[]^-\\", 5) {
            let Ok(text) = std::str::from_utf8(&pattern) else {
                continue;
            };
            let compiled = Pattern::new(text);
            for key in &keys {
                assert_eq!(
                    compiled.matches(key),
                    reference(&pattern, key),
                    "pattern {text:?} key {key:?}"
                );
            }
        }
    }

    /// Patterns over an alphabet dense in metacharacters, plus bytes >= 0x80 and NUL.
    fn glob_text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop::sample::select(vec![
                'a', 'b', '*', '?', '[', ']', '^', '-', '\\', '\u{0}', '\u{e9}', '\u{80}',
            ]),
            0..max,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn key_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop::sample::select(b"ab*?[]^-\\\x00\xc3\xa9\x80\xff".to_vec()),
            0..max,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn agrees_with_redis_port(pattern in glob_text(12), key in key_bytes(10)) {
            prop_assert_eq!(
                m(&pattern, &key),
                reference(pattern.as_bytes(), &key),
                "pattern {:?} key {:?}", pattern, key
            );
        }

        #[test]
        fn agrees_with_redis_port_on_derived_keys(pattern in glob_text(12), seed in key_bytes(12)) {
            // Keys built from the pattern's own bytes match far more often than random ones.
            let mut key: Vec<u8> = pattern.bytes().filter(|b| !b"*?[]\\".contains(b)).collect();
            key.extend_from_slice(&seed[..seed.len() / 3]);
            prop_assert_eq!(m(&pattern, &key), reference(pattern.as_bytes(), &key));
        }
    }

    proptest! {
        #[test]
        fn escape_is_literal_and_exact(s in "\\PC*", other in "\\PC*") {
            let p = Pattern::new(&escape(&s));
            prop_assert_eq!(p.literal(), Some(s.as_str()));
            prop_assert!(p.matches_str(&s));
            prop_assert_eq!(p.matches_str(&other), other == s);
        }

        #[test]
        fn escape_of_metachar_soup_is_exact(s in glob_text(16), other in glob_text(16)) {
            let pattern = escape(&s);
            prop_assert!(reference(pattern.as_bytes(), s.as_bytes()));
            let p = Pattern::new(&pattern);
            prop_assert_eq!(p.literal(), Some(s.as_str()));
            prop_assert_eq!(p.matches_str(&other), other == s);
        }

        #[test]
        fn literal_pattern_matches_only_its_literal(pattern in glob_text(10), key in key_bytes(10)) {
            let p = Pattern::new(&pattern);
            if let Some(lit) = p.literal() {
                prop_assert!(p.matches(lit.as_bytes()));
                prop_assert_eq!(p.matches(&key), key == lit.as_bytes());
            }
            if p.matches(&key) {
                prop_assert!(key.starts_with(p.literal_prefix().as_bytes()));
            }
        }

        #[test]
        fn never_panics(pattern in "\\PC{0,64}", key in proptest::collection::vec(any::<u8>(), 0..64)) {
            let p = Pattern::new(&pattern);
            let _ = p.matches(&key);
            let _ = p.literal();
            let _ = p.literal_prefix();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn never_panics_on_huge_inputs(unit in glob_text(8), key_unit in key_bytes(8)) {
            let pattern = unit.repeat(256 / unit.len().max(1));
            let key = key_unit.repeat(64 * 1024 / key_unit.len().max(1));
            let start = Instant::now();
            let _ = Pattern::new(&pattern).matches(&key);
            prop_assert!(start.elapsed() < Duration::from_secs(2));
        }
    }
}
