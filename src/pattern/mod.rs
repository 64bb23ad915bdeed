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
mod tests;
