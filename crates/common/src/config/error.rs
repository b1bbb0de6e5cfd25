//! The error type of config loading, and the translation of serde's stock messages into ours.

use std::path::PathBuf;

/// Why a config could not be loaded.
///
/// Value errors name the key path and the value, e.g.
/// `storage.diskGCThreshold: "50Gx" is not a size (line 5, column 20)`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file named explicitly (e.g. with `--config`) does not exist.
    #[error("config file {} does not exist", path.display())]
    NotFound {
        /// The path that was given.
        path: PathBuf,
    },
    /// The file exists but could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not YAML.
    #[error("invalid YAML in {file}{}: {message}", Location::of(*line, *column).phrase())]
    Syntax {
        /// Where the text came from (a path or a name such as `<stdin>`).
        file: String,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// 1-based column of the problem, when known.
        column: Option<usize>,
        /// What the YAML parser said.
        message: String,
    },
    /// The YAML is fine but a value is not acceptable for its key.
    #[error("{key}: {message}{}", Location::of(*line, *column).suffix())]
    Invalid {
        /// Where the text came from (not part of the message; callers add it as context).
        file: String,
        /// The key path, e.g. `proxy.proxies[0].regx`.
        key: String,
        /// What is wrong, naming the value, e.g. `"50Gx" is not a size`.
        message: String,
        /// 1-based line of the value, when known.
        line: Option<usize>,
        /// 1-based column of the value, when known.
        column: Option<usize>,
    },
    /// The effective config could not be printed as YAML.
    #[error("cannot print the config as YAML: {message}")]
    Serialize {
        /// What the YAML emitter said.
        message: String,
    },
}

impl ConfigError {
    /// A value error found after deserialization (no line/column known).
    pub fn invalid(file: &str, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_owned(),
            key: key.into(),
            message: message.into(),
            line: None,
            column: None,
        }
    }

    /// The file or source name the error is about, when there is one.
    pub fn file(&self) -> Option<String> {
        match self {
            ConfigError::NotFound { path } | ConfigError::Read { path, .. } => {
                Some(path.display().to_string())
            }
            ConfigError::Syntax { file, .. } | ConfigError::Invalid { file, .. } => {
                Some(file.clone())
            }
            ConfigError::Serialize { .. } => None,
        }
    }
}

/// A line/column pair rendered the two ways our messages use.
struct Location(Option<(usize, usize)>);

impl Location {
    fn of(line: Option<usize>, column: Option<usize>) -> Self {
        Location(line.zip(column))
    }

    /// ` at line 3, column 5` (or nothing).
    fn phrase(&self) -> String {
        match self.0 {
            Some((l, c)) => format!(" at line {l}, column {c}"),
            None => String::new(),
        }
    }

    /// ` (line 3, column 5)` (or nothing).
    fn suffix(&self) -> String {
        match self.0 {
            Some((l, c)) => format!(" (line {l}, column {c})"),
            None => String::new(),
        }
    }
}

/// Rewrites serde's stock messages (`invalid type: string "maybe", expected a boolean`) into ours
/// (`"maybe" is not a boolean`). Messages we wrote ourselves pass through unchanged.
pub(crate) fn humanize(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((unexpected, expected)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.rsplit_once(", expected "))
        {
            return format!("{} is not {}", value_of(unexpected), expected_of(expected));
        }
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        return format!("missing key \"{field}\"");
    }
    if let Some(field) = message
        .strip_prefix("duplicate field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        return format!("key \"{field}\" is given twice (an alias counts as the same key)");
    }
    if let Some((variant, expected)) = message
        .strip_prefix("unknown variant `")
        .and_then(|rest| rest.split_once("`, expected "))
    {
        return format!("\"{variant}\" is not {}", expected.replace('`', "\""));
    }
    message.to_owned()
}

/// `string "maybe"` -> `"maybe"`, ``integer `5` `` -> `5`, `map` -> `a mapping`.
fn value_of(unexpected: &str) -> String {
    if let Some(s) = unexpected.strip_prefix("string ") {
        return s.to_owned();
    }
    for kind in ["integer ", "floating point ", "boolean ", "character "] {
        if let Some(v) = unexpected.strip_prefix(kind) {
            return v.trim_matches('`').to_owned();
        }
    }
    match unexpected {
        "unit value" | "Option value" => "null".to_owned(),
        "map" => "a mapping".to_owned(),
        "sequence" => "a list".to_owned(),
        other => other.to_owned(),
    }
}

/// serde's `expected` phrases in words a config author knows.
fn expected_of(expected: &str) -> String {
    match expected {
        "u8" => "an integer (0-255)".to_owned(),
        "u16" => "an integer (0-65535)".to_owned(),
        "u32" => "a non-negative integer (at most 4294967295)".to_owned(),
        "u64" | "usize" | "u128" => "a non-negative integer".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "isize" | "i128" => "an integer".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a map" => "a mapping".to_owned(),
        "path string" => "a path".to_owned(),
        e if e.starts_with("struct ") || e.starts_with("a map ") => "a mapping".to_owned(),
        e => e.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::humanize;

    #[test]
    fn stock_messages_are_rewritten() {
        let cases = [
            (
                "invalid type: string \"maybe\", expected a boolean",
                "\"maybe\" is not a boolean",
            ),
            (
                "invalid value: integer `-1`, expected u32",
                "-1 is not a non-negative integer (at most 4294967295)",
            ),
            (
                "invalid type: sequence, expected struct Inner",
                "a list is not a mapping",
            ),
            (
                "invalid type: unit value, expected a boolean",
                "null is not a boolean",
            ),
            ("missing field `addr`", "missing key \"addr\""),
            ("\"50Gx\" is not a size", "\"50Gx\" is not a size"),
        ];
        for (input, want) in cases {
            assert_eq!(humanize(input), want, "{input}");
        }
    }
}
