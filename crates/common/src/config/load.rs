//! The generic YAML loader: unknown keys become warnings, bad values become errors that name the
//! key path and the value.

use super::error::{ConfigError, humanize};
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// A loaded config and what the loader had to say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<T> {
    /// The config.
    pub value: T,
    /// Human-readable warnings (unknown keys, placeholders, ignored duplicates), in file order.
    pub warnings: Vec<String>,
}

impl<T> Loaded<T> {
    /// Transforms the value, keeping the warnings.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Loaded<U> {
        Loaded {
            value: f(self.value),
            warnings: self.warnings,
        }
    }
}

/// Knobs of [`load_yaml_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions<'a> {
    /// Key paths of Dragonfly options this implementation knows but does not use, such as
    /// `objectStorage`; they (and keys below them) get a warning that says so instead of
    /// "unknown key".
    pub unsupported: &'a [&'a str],
    /// Key paths read by another pass over the same text (alternative spellings that a
    /// config folds in after loading); they draw no warning.
    pub handled_elsewhere: &'a [&'a str],
    /// When not empty, unknown keys are reported only at or below these key paths (for a pass
    /// that reads a few keys of a file another pass reads in full).
    pub report_only_under: &'a [&'a str],
}

/// Loads `text` (named `source` in messages, usually the file path) into `T`.
///
/// An empty document or one with only comments loads as `T`'s defaults (every config struct
/// uses `#[serde(default)]`). Unknown keys become warnings of the form
/// `unknown key "proxy.foo" in /etc/dragonfly/dfget.yaml (ignored)`.
pub fn load_yaml<T: DeserializeOwned>(text: &str, source: &str) -> Result<Loaded<T>, ConfigError> {
    load_yaml_with(text, source, &LoadOptions::default())
}

/// [`load_yaml`] with options.
pub fn load_yaml_with<T: DeserializeOwned>(
    text: &str,
    source: &str,
    options: &LoadOptions<'_>,
) -> Result<Loaded<T>, ConfigError> {
    // A first pass as a plain YAML value separates syntax errors from value errors and
    // spots the empty document.
    let document: yaml_serde::Value =
        yaml_serde::from_str(text).map_err(|e| syntax_error(&e, source))?;
    let text = if document.is_null() { "{}" } else { text };

    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(key_path(&path));
    let deserializer = yaml_serde::Deserializer::from_str(text);
    let result: Result<T, _> = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        deserializer,
        &mut record,
    ));
    let value = result.map_err(|e| value_error(&e, source))?;

    let warnings = unknown
        .iter()
        .filter(|key| !covers(options.handled_elsewhere, key))
        .filter(|key| {
            options.report_only_under.is_empty() || covers(options.report_only_under, key)
        })
        .map(|key| unknown_key_warning(key, source, options))
        .collect();
    Ok(Loaded { value, warnings })
}

/// Whether `key` is one of `prefixes` or below one of them.
fn covers(prefixes: &[&str], key: &str) -> bool {
    prefixes.iter().any(|p| {
        key == *p
            || key
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

fn unknown_key_warning(key: &str, source: &str, options: &LoadOptions<'_>) -> String {
    if covers(options.unsupported, key) {
        format!(
            "key \"{key}\" in {source} is a Dragonfly option this implementation does not support (ignored)"
        )
    } else {
        format!("unknown key \"{key}\" in {source} (ignored)")
    }
}

/// `proxy.proxies[0].foo` from serde_ignored's path (which would print `proxy.proxies.0.foo`).
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    fn walk(path: &serde_ignored::Path<'_>, out: &mut String) {
        match path {
            serde_ignored::Path::Root => {}
            serde_ignored::Path::Seq { parent, index } => {
                walk(parent, out);
                out.push_str(&format!("[{index}]"));
            }
            serde_ignored::Path::Map { parent, key } => {
                walk(parent, out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    let mut out = String::new();
    walk(path, &mut out);
    out
}

fn syntax_error(e: &yaml_serde::Error, source: &str) -> ConfigError {
    let location = e.location();
    let mut message = e.to_string();
    if let Some(l) = &location {
        message = message.replacen(
            &format!(" at line {} column {}", l.line(), l.column()),
            "",
            1,
        );
    }
    ConfigError::Syntax {
        file: source.to_owned(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        message,
    }
}

fn value_error(e: &serde_path_to_error::Error<yaml_serde::Error>, source: &str) -> ConfigError {
    let path = e.path().to_string();
    let inner = e.inner();
    let location = inner.location();
    let full = inner.to_string();
    let suffix = location
        .as_ref()
        .map(|l| format!(" at line {} column {}", l.line(), l.column()))
        .unwrap_or_default();
    let message = full.strip_suffix(suffix.as_str()).unwrap_or(&full);
    let message = humanize(strip_key_prefix(message, &path));
    ConfigError::Invalid {
        file: source.to_owned(),
        key: if path == "." {
            "(top level)".to_owned()
        } else {
            path
        },
        message,
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
    }
}

/// yaml_serde prefixes its messages with the key path it knows, which is `path` or an ancestor
/// of it (errors raised inside nested helpers carry the outer path); remove it.
fn strip_key_prefix<'m>(message: &'m str, path: &str) -> &'m str {
    let boundaries = path
        .char_indices()
        .filter(|&(_, c)| c == '.' || c == '[')
        .map(|(i, _)| i)
        .chain(std::iter::once(path.len()));
    let mut best = message;
    for end in boundaries {
        let prefix = &path[..end];
        if let Some(rest) = message
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix(": "))
        {
            best = rest;
        }
    }
    best
}

/// Where a config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// Read from this file.
    File(PathBuf),
    /// No file was given and none of the default paths exists: built-in defaults.
    Defaults {
        /// The default paths that were looked at.
        searched: Vec<PathBuf>,
    },
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigOrigin::File(path) => write!(f, "{}", path.display()),
            ConfigOrigin::Defaults { searched } => {
                f.write_str("built-in defaults (no config file at ")?;
                for (i, path) in searched.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" or ")?;
                    }
                    write!(f, "{}", path.display())?;
                }
                f.write_str(")")
            }
        }
    }
}

/// A config loaded for a command line, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedFrom<T> {
    /// The config.
    pub value: T,
    /// Warnings to show the user.
    pub warnings: Vec<String>,
    /// The file it was read from, or the defaults.
    pub origin: ConfigOrigin,
}

impl<T> LoadedFrom<T> {
    /// What a binary does with its config before it runs: warnings and the built-in-defaults
    /// note go to stderr; with `print`, the effective config goes to stdout as YAML and the
    /// binary is done (`Some(exit code)`); `None` means go on and run.
    pub fn report(
        &self,
        print: bool,
        to_yaml: impl FnOnce(&T) -> Result<String, ConfigError>,
    ) -> Option<std::process::ExitCode> {
        for warning in &self.warnings {
            eprintln!("warning: {warning}");
        }
        if let ConfigOrigin::Defaults { .. } = self.origin {
            eprintln!("note: using {}", self.origin);
        }
        if !print {
            return None;
        }
        Some(match to_yaml(&self.value) {
            Ok(yaml) => {
                print!("{yaml}");
                std::process::ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                std::process::ExitCode::FAILURE
            }
        })
    }
}

/// A binary's start with its config: `loaded` is what its `load_for_cli` gave. An error is
/// printed as [`cli_message`] shows it; otherwise [`LoadedFrom::report`] runs. `Ok(loaded)`:
/// go on and run; `Err(code)`: the binary is done, with that exit code.
pub fn config_for_cli<T>(
    loaded: Result<LoadedFrom<T>, ConfigError>,
    env_var: &str,
    print: bool,
    to_yaml: impl FnOnce(&T) -> Result<String, ConfigError>,
) -> Result<LoadedFrom<T>, std::process::ExitCode> {
    let loaded = loaded.map_err(|err| {
        eprintln!("error: {}", cli_message(&err, env_var));
        std::process::ExitCode::FAILURE
    })?;
    match loaded.report(print, to_yaml) {
        Some(code) => Err(code),
        None => Ok(loaded),
    }
}

/// A config error as a command line shows it: bad values name their file, and a missing
/// explicit path says how to fall back (`env_var` is the variable that can also name the file).
pub fn cli_message(err: &ConfigError, env_var: &str) -> String {
    match err {
        ConfigError::Invalid { file, .. } => format!("invalid config {file}: {err}"),
        ConfigError::NotFound { .. } => format!(
            "{err} (omit --config and {env_var} to use the default path or built-in defaults)"
        ),
        _ => err.to_string(),
    }
}

/// Picks the config file: `explicit` (which must exist), else the first of `defaults` that
/// exists, else none (run on defaults).
pub fn resolve_config_path(
    explicit: Option<&Path>,
    defaults: &[&Path],
) -> Result<ConfigOrigin, ConfigError> {
    // An unreadable directory makes try_exists fail; treat that as present so that reading it
    // reports the real error.
    let exists = |p: &Path| p.try_exists().unwrap_or(true);
    match explicit {
        Some(path) if exists(path) => Ok(ConfigOrigin::File(path.to_owned())),
        Some(path) => Err(ConfigError::NotFound {
            path: path.to_owned(),
        }),
        None => Ok(defaults
            .iter()
            .find(|p| exists(p))
            .map(|p| ConfigOrigin::File(p.to_path_buf()))
            .unwrap_or_else(|| ConfigOrigin::Defaults {
                searched: defaults.iter().map(|p| p.to_path_buf()).collect(),
            })),
    }
}

/// Reads a config file as text.
pub fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The whole command-line flow: resolve the path, read it, and parse it with `parse`
/// (`(text, source name)`), or fall back to `T::default()` when no file exists.
pub fn load_for_cli<T: Default>(
    explicit: Option<&Path>,
    defaults: &[&Path],
    parse: impl FnOnce(&str, &str) -> Result<Loaded<T>, ConfigError>,
) -> Result<LoadedFrom<T>, ConfigError> {
    match resolve_config_path(explicit, defaults)? {
        ConfigOrigin::File(path) => {
            let text = read_config_file(&path)?;
            let loaded = parse(&text, &path.display().to_string())?;
            Ok(LoadedFrom {
                value: loaded.value,
                warnings: loaded.warnings,
                origin: ConfigOrigin::File(path),
            })
        }
        origin @ ConfigOrigin::Defaults { .. } => Ok(LoadedFrom {
            value: T::default(),
            warnings: Vec::new(),
            origin,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::strip_key_prefix;

    #[test]
    fn strips_the_deepest_known_prefix() {
        assert_eq!(strip_key_prefix("a.b: x is bad", "a.b"), "x is bad");
        assert_eq!(strip_key_prefix("a.b: x is bad", "a.b.c"), "x is bad");
        assert_eq!(strip_key_prefix("a.b[0]: x", "a.b[0].c"), "x");
        assert_eq!(strip_key_prefix("\"v\" is bad: y", "a"), "\"v\" is bad: y");
    }
}
