//! The JSON body of a purge `POST`, and the one action it may ask for.
//!
//! `{"pattern": "dashboard:ABC*"}`, `{"pattern": "dashboard:ABC*", "soft": true}`,
//! `{"tag": "company:ABC"}` or `{"all": true}`: exactly one target, nothing else. Unknown
//! fields are refused rather than ignored, so a misspelt `"sfot": true` is not a hard purge.

use serde::Deserialize;

/// Longest pattern or tag a purge accepts, in bytes (the longest logical key kept verbatim
/// is 512; a glob over it needs a little more).
pub(crate) const MAX_TARGET_LEN: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    pattern: Option<String>,
    tag: Option<String>,
    #[serde(default)]
    soft: bool,
    #[serde(default)]
    all: bool,
}

/// What a purge request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// `invalidate(pattern)`, or `invalidate_soft(pattern)`.
    Pattern { pattern: String, soft: bool },
    /// `invalidate_tag(tag)`.
    Tag(String),
    /// `invalidate_all()`.
    All,
}

/// Parse and check a body; the error is the message a `400` carries.
pub(crate) fn parse(body: &[u8]) -> Result<Action, String> {
    let body: Body = serde_json::from_slice(body).map_err(|e| format!("bad JSON: {e}"))?;
    let action = match (body.pattern, body.tag, body.all) {
        (Some(pattern), None, false) => Action::Pattern {
            pattern: target("pattern", pattern)?,
            soft: body.soft,
        },
        (None, Some(tag), false) => Action::Tag(target("tag", tag)?),
        (None, None, true) => Action::All,
        (None, None, false) => {
            return Err("name one of `pattern`, `tag` or `all: true`".to_owned());
        }
        _ => return Err("name only one of `pattern`, `tag` or `all: true`".to_owned()),
    };
    if body.soft && !matches!(action, Action::Pattern { .. }) {
        return Err("`soft` applies to a `pattern` only".to_owned());
    }
    Ok(action)
}

/// A pattern or tag as a purge accepts it: not empty, bounded, no control characters (no
/// logical key the layer builds from a request holds one).
fn target(name: &str, value: String) -> Result<String, String> {
    if value.is_empty() {
        return Err(format!("`{name}` is empty"));
    }
    if value.len() > MAX_TARGET_LEN {
        return Err(format!(
            "`{name}` is {} bytes long; at most {MAX_TARGET_LEN}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("`{name}` holds a control character"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_target_alone_is_an_action() {
        let pattern = |p: &str, soft| Action::Pattern {
            pattern: p.to_owned(),
            soft,
        };
        assert_eq!(parse(br#"{"pattern":"a*"}"#), Ok(pattern("a*", false)));
        assert_eq!(
            parse(br#"{"pattern":"a*","soft":true}"#),
            Ok(pattern("a*", true))
        );
        assert_eq!(parse(br#"{"tag":"t"}"#), Ok(Action::Tag("t".to_owned())));
        assert_eq!(parse(br#"{"all":true}"#), Ok(Action::All));
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let long = format!(r#"{{"pattern":"{}"}}"#, "a".repeat(MAX_TARGET_LEN + 1));
        for (body, reason) in [
            (&br#"{}"#[..], "name one of"),
            (br#"{"all":false}"#, "name one of"),
            (br#"{"pattern":"a","tag":"b"}"#, "only one"),
            (br#"{"pattern":"a","all":true}"#, "only one"),
            (br#"{"tag":"t","soft":true}"#, "`soft` applies"),
            (br#"{"all":true,"soft":true}"#, "`soft` applies"),
            (br#"{"pattern":""}"#, "is empty"),
            (br#"{"pattern":"a\nb"}"#, "control character"),
            (br#"{"patern":"a"}"#, "bad JSON"),
            (br#"{"pattern":7}"#, "bad JSON"),
            (br#"not json"#, "bad JSON"),
            (long.as_bytes(), "at most 1024"),
        ] {
            let error = parse(body).unwrap_err();
            assert!(error.contains(reason), "{body:?}: {error}");
        }
    }
}
