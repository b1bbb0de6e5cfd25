//! Regular expressions in config (`regx: blobs/sha256.*`): compiled at load, printed as written.

use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A regular expression compiled when the config loads, remembering the text it came from.
///
/// Two patterns are equal when their source text is equal.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

/// The error of compiling a [`Pattern`]; displays as
/// `"([" is not a valid regular expression: unclosed character class`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_text:?} is not a valid regular expression: {reason}")]
pub struct PatternError {
    source_text: String,
    reason: String,
}

impl Pattern {
    /// Compiles `source`.
    pub fn new(source: &str) -> Result<Self, PatternError> {
        regex::Regex::new(source)
            .map(|regex| Pattern {
                source: source.to_owned(),
                regex,
            })
            .map_err(|e| PatternError {
                source_text: source.to_owned(),
                reason: one_line(&e),
            })
    }

    /// The text as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The compiled expression.
    pub fn regex(&self) -> &regex::Regex {
        &self.regex
    }

    /// Whether the expression matches anywhere in `text` (Go's `regexp.MatchString`).
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }

    /// Whether the text looks like a documentation placeholder such as `<your.private.registry>`.
    pub fn is_placeholder(&self) -> bool {
        looks_like_placeholder(&self.source)
    }
}

/// `<something>`: the angle-bracket placeholders of Dragonfly's docs.
pub fn looks_like_placeholder(text: &str) -> bool {
    let t = text.trim();
    t.len() > 2 && t.starts_with('<') && t.ends_with('>')
}

/// The regex crate's multi-line syntax report, reduced to its last line (`unclosed group`).
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(&text);
    last.trim().trim_start_matches("error: ").to_owned()
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pattern").field(&self.source).finish()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::new(s)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::values::from_str_with(deserializer, "a regular expression", |text| {
            Pattern::new(text).map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn compiles_and_reports_one_line() {
        assert!(Pattern::new("blobs/sha256.*").is_ok_and(|p| p.is_match("/v2/x/blobs/sha256:ab")));
        assert_eq!(
            Pattern::new("([").map_err(|e| e.to_string()),
            Err("\"([\" is not a valid regular expression: unclosed character class".to_owned())
        );
        assert!(Pattern::new("<your.private.registry>").is_ok_and(|p| p.is_placeholder()));
    }
}
