//! What tests of a binary's command line share: the repository's files, running the binary to
//! the end, its output as text, and the keys an example config misses.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `rel` (`config/dfdaemon.yaml`) under the repository's root.
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// Run `bin` with `args` to the end, without `env_remove` (the variable that names its config
/// file) in its environment. Panics naming the binary when it cannot run (test helper).
pub fn run(bin: &Path, args: &[&str], env_remove: &str) -> Output {
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

/// The key paths (`a.b.c`) of YAML `printed` that YAML `example` lacks: what an example config
/// file misses of the config a binary prints. Panics when either does not parse (test helper).
pub fn keys_missing_from(example: &str, printed: &str) -> Vec<String> {
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
