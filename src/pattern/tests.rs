//! Patterns against an exhaustive oracle of Redis's `stringmatchlen` rules.

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
