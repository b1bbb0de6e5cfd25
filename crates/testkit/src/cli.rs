//! What tests of a binary's command line share: the repository's files, running the binary to
//! the end, its output as text, and whether an example config file is complete.

use dragonfly_common::config::{ConfigError, Loaded};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `rel` (`config/dfdaemon.yaml`) under the repository's root.
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// Run the workspace's `dfdaemon` with `args` to the end, without `DFDAEMON_CONFIG`.
pub fn dfdaemon(args: &[&str]) -> Output {
    run(&crate::bins::bin("dfdaemon"), args, "DFDAEMON_CONFIG")
}

/// Run the workspace's `scheduler` with `args` to the end, without `SCHEDULER_CONFIG`.
pub fn scheduler(args: &[&str]) -> Output {
    run(&crate::bins::bin("scheduler"), args, "SCHEDULER_CONFIG")
}

/// Run `bin` with `args` to the end, without `env_remove` (the variable that names its config
/// file) in its environment. Panics naming the binary when it cannot run (test helper).
fn run(bin: &Path, args: &[&str], env_remove: &str) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove(env_remove)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The example config file `rel` (`config/dfdaemon.yaml`) loads with `load` without warnings to
/// the config type's defaults, and holds every key the defaults print as (`print`, the type's
/// `to_yaml`). Panics saying which fails (test helper).
pub fn assert_complete_example<T: Default + PartialEq + std::fmt::Debug>(
    rel: &str,
    load: impl Fn(&Path) -> Result<Loaded<T>, ConfigError>,
    print: impl Fn(&T) -> Result<String, ConfigError>,
) {
    let path = repo_file(rel);
    let loaded = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.value, T::default());
    let example = std::fs::read_to_string(&path).unwrap_or_default();
    let printed = print(&T::default()).unwrap_or_else(|e| panic!("{e}"));
    let missing = keys_missing_from(&example, &printed);
    assert!(missing.is_empty(), "keys missing from {rel}: {missing:?}");
}

/// The key paths (`a.b.c`) of YAML `printed` that YAML `example` lacks. Panics when either does
/// not parse (test helper).
fn keys_missing_from(example: &str, printed: &str) -> Vec<String> {
    let (example, printed) = (key_paths(example), key_paths(printed));
    printed.difference(&example).cloned().collect()
}

fn key_paths(yaml: &str) -> BTreeSet<String> {
    let value: yaml_serde::Value =
        yaml_serde::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let mut out = BTreeSet::new();
    collect(&value, "", &mut out);
    out
}

fn collect(value: &yaml_serde::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let yaml_serde::Value::Mapping(map) = value {
        for (k, v) in map {
            let key = k.as_str().unwrap_or_default();
            let path = if prefix.is_empty() {
                key.to_owned()
            } else {
                format!("{prefix}.{key}")
            };
            out.insert(path.clone());
            collect(v, &path, out);
        }
    }
}
