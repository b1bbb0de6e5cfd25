//! containerd's own config (`config.toml`): where its CRI plugin reads `hosts.toml` files (the
//! registry section's `config_path`), and the one edit that points it at ours when unset.
//!
//! Handled: config versions 1 (`plugins.cri`), 2 (`plugins."io.containerd.grpc.v1.cri"`, the
//! containerd 1.x format) and 3 (`plugins."io.containerd.cri.v1.images"`, containerd 2.x), and
//! `imports` the way containerd merges them (a file that defines the CRI plugin's table replaces
//! the whole table of the files before it). Not handled: an import that defines that table
//! without `config_path` (we would have to edit a file we were not given: an error says so), and
//! import patterns with a wildcard outside the file name.

use super::SetupError;
use std::path::{Path, PathBuf};
use toml_edit::{DocumentMut, Item, Table, TableLike};

/// Where containerd's hosts.toml files go, as its config says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostsDir {
    /// `config_path` is set (in `file`): the hosts files go into its first entry.
    Configured {
        /// First entry of `config_path` (containerd looks in its entries in order).
        dir: PathBuf,
        /// The whole value, when it lists more than one directory.
        list: Option<String>,
        /// The file that sets it (the config or one of its imports).
        file: PathBuf,
    },
    /// `config_path` is unset: `config.toml` becomes `text`, which sets it to our directory.
    Set {
        /// The new config.toml.
        text: String,
        /// Whether there was no config.toml (then `text` is a minimal new one).
        created: bool,
    },
}

/// The key path of the CRI registry table in config `version`.
fn registry_table(version: i64) -> Option<[&'static str; 3]> {
    match version {
        1 => Some(["plugins", "cri", "registry"]),
        2 => Some(["plugins", "io.containerd.grpc.v1.cri", "registry"]),
        3 => Some(["plugins", "io.containerd.cri.v1.images", "registry"]),
        _ => None,
    }
}

/// `plugins."io.containerd.grpc.v1.cri".registry` and the like, for messages.
fn dotted(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| {
            if k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                (*k).to_owned()
            } else {
                serde_json::Value::from(*k).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn get<'a>(table: &'a dyn TableLike, keys: &[&str]) -> Option<&'a Item> {
    let (first, rest) = keys.split_first()?;
    let item = table.get(first)?;
    if rest.is_empty() {
        return Some(item);
    }
    get(item.as_table_like()?, rest)
}

fn bad(path: &Path, reason: impl Into<String>) -> SetupError {
    SetupError::ContainerdConfig {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn parse(path: &Path, text: &str) -> Result<DocumentMut, SetupError> {
    text.parse::<DocumentMut>()
        .map_err(|e| bad(path, format!("not valid TOML: {e}")))
}

/// The config's `version` (containerd reads a file without one as version 1).
fn version(path: &Path, doc: &DocumentMut) -> Result<i64, SetupError> {
    match doc.get("version") {
        None => Ok(1),
        Some(item) => item
            .as_integer()
            .ok_or_else(|| bad(path, "key version: not an integer")),
    }
}

/// Decide where the hosts files go for the containerd config at `path` (its text `text`,
/// `None` when the file does not exist), setting `config_path` to `dir` (absolute) when unset.
pub fn plan(path: &Path, text: Option<&str>, dir: &Path) -> Result<HostsDir, SetupError> {
    let dir_str = dir
        .to_str()
        .ok_or_else(|| bad(path, format!("--dir {} is not UTF-8", dir.display())))?;
    let Some(text) = text else {
        return Ok(HostsDir::Set {
            text: minimal_config(dir_str),
            created: true,
        });
    };
    let mut doc = parse(path, text)?;
    let version = version(path, &doc)?;
    let keys = registry_table(version).ok_or_else(|| {
        bad(
            path,
            format!("key version: {version} is not a containerd config version (1, 2 or 3)"),
        )
    })?;
    // The file whose CRI plugin table containerd ends up with (the last one to define it).
    let mut effective = (path.to_path_buf(), doc.clone());
    for import in imports(path, &doc)? {
        let text = std::fs::read_to_string(&import).map_err(|e| {
            bad(
                path,
                format!(
                    "imports {}: {e} (containerd would not start with it)",
                    import.display()
                ),
            )
        })?;
        let imported = parse(&import, &text)?;
        if get(imported.as_table(), &keys[..2]).is_some() {
            effective = (import, imported);
        }
    }
    let (file, effective_doc) = &effective;
    let registry = get(effective_doc.as_table(), &keys);
    check_deprecated(file, registry, &keys)?;
    let config_path_key = dotted(&[keys[0], keys[1], keys[2], "config_path"]);
    if let Some(value) = registry.and_then(|r| r.as_table_like()?.get("config_path")) {
        let value = value
            .as_str()
            .ok_or_else(|| bad(file, format!("key {config_path_key}: not a string")))?;
        if !value.is_empty() {
            // containerd splits it like PATH and looks in each directory in order.
            let first = value.split(':').find(|s| !s.is_empty()).unwrap_or(value);
            return Ok(HostsDir::Configured {
                dir: PathBuf::from(first),
                list: value.contains(':').then(|| value.to_owned()),
                file: file.clone(),
            });
        }
    }
    if file != path {
        return Err(bad(
            file,
            format!(
                "it defines [{}] without registry.config_path, and containerd lets it replace \
                 that table of {} entirely: set {config_path_key} there (editing imports is not handled)",
                dotted(&keys[..2]),
                path.display()
            ),
        ));
    }
    set_config_path(path, &mut doc, &keys, dir_str)?;
    Ok(HostsDir::Set {
        text: doc.to_string(),
        created: false,
    })
}

/// The deprecated `registry.mirrors` and `registry.configs.<host>.tls` make containerd's CRI
/// plugin refuse to load once `config_path` is set: refuse before anything is written.
fn check_deprecated(file: &Path, registry: Option<&Item>, keys: &[&str]) -> Result<(), SetupError> {
    let Some(registry) = registry.and_then(Item::as_table_like) else {
        return Ok(());
    };
    let deprecated = |key: String| SetupError::DeprecatedRegistry {
        path: file.to_path_buf(),
        key,
    };
    if let Some(mirrors) = registry.get("mirrors").and_then(Item::as_table_like)
        && let Some((host, _)) = mirrors.iter().next()
    {
        return Err(deprecated(dotted(&[
            keys[0], keys[1], keys[2], "mirrors", host,
        ])));
    }
    if let Some(configs) = registry.get("configs").and_then(Item::as_table_like) {
        for (host, config) in configs.iter() {
            if config
                .as_table_like()
                .is_some_and(|c| c.contains_key("tls"))
            {
                return Err(deprecated(dotted(&[
                    keys[0], keys[1], keys[2], "configs", host, "tls",
                ])));
            }
        }
    }
    Ok(())
}

/// The files `doc` (at `path`) imports, as containerd resolves them: relative paths against the
/// config's directory, `*` patterns as globs (relative to the working directory, as Go's
/// `filepath.Glob` does), recursively, each file once.
fn imports(path: &Path, doc: &DocumentMut) -> Result<Vec<PathBuf>, SetupError> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut pending = vec![(path.to_path_buf(), doc.clone())];
    while let Some((parent, doc)) = pending.pop() {
        let Some(list) = doc.get("imports") else {
            continue;
        };
        let list = list
            .as_array()
            .ok_or_else(|| bad(&parent, "key imports: not an array"))?;
        let mut found = Vec::new();
        for value in list.iter() {
            let pattern = value
                .as_str()
                .ok_or_else(|| bad(&parent, "key imports: an entry is not a string"))?;
            if pattern.contains('*') {
                found.extend(glob(&parent, pattern)?);
            } else {
                let p = Path::new(pattern);
                found.push(if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    parent.parent().unwrap_or(Path::new("/")).join(p)
                });
            }
        }
        for file in found {
            if file == path || out.contains(&file) {
                continue;
            }
            let text = std::fs::read_to_string(&file).map_err(|e| {
                bad(
                    &parent,
                    format!(
                        "imports {}: {e} (containerd would not start with it)",
                        file.display()
                    ),
                )
            })?;
            pending.push((file.clone(), parse(&file, &text)?));
            out.push(file);
        }
    }
    Ok(out)
}

/// `dir/pre*post` patterns (the wildcard in the file name only), sorted like Go's Glob.
fn glob(parent: &Path, pattern: &str) -> Result<Vec<PathBuf>, SetupError> {
    let p = Path::new(pattern);
    let (dir, name) = match (p.parent(), p.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) if !dir.to_string_lossy().contains('*') => (dir, name),
        _ => {
            return Err(bad(
                parent,
                format!(
                    "imports {pattern:?}: only a `*` in the file name is handled, not in a directory"
                ),
            ));
        }
    };
    if name.contains(['?', '[', '\\']) {
        return Err(bad(
            parent,
            format!("imports {pattern:?}: only `*` wildcards are handled"),
        ));
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(bad(
                parent,
                format!("imports {pattern:?}: {}: {e}", dir.display()),
            ));
        }
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| wildcard(name, n)))
        .map(|e| p.parent().unwrap_or(Path::new("")).join(e.file_name()))
        .collect();
    out.sort();
    Ok(out)
}

/// Whether `name` matches `pattern` where `*` is any run of characters (not a leading dot:
/// Go's Glob does match it, but containerd's drop-in dirs hold no hidden files we could miss).
fn wildcard(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// Set `keys.config_path = dir` in `doc`, creating the tables on the way and keeping the rest.
fn set_config_path(
    path: &Path,
    doc: &mut DocumentMut,
    keys: &[&str; 3],
    dir: &str,
) -> Result<(), SetupError> {
    let mut table: &mut dyn TableLike = doc.as_table_mut();
    for (i, key) in keys.iter().enumerate() {
        if !table.contains_key(key) {
            let mut new = Table::new();
            // `[plugins."..".registry]` is written; the tables above it stay implicit.
            new.set_implicit(i < keys.len() - 1);
            table.insert(key, Item::Table(new));
        }
        let item = table.get_mut(key).expect("inserted above");
        table = item
            .as_table_like_mut()
            .ok_or_else(|| bad(path, format!("key {}: not a table", dotted(&keys[..=i]))))?;
    }
    match table.get_mut("config_path").and_then(Item::as_value_mut) {
        // Replace the value only: the key keeps its place and indentation, the value its spacing.
        Some(value) => {
            let decor = value.decor().clone();
            *value = toml_edit::Value::from(dir);
            *value.decor_mut() = decor;
        }
        None => {
            table.insert("config_path", toml_edit::value(dir));
        }
    }
    Ok(())
}

/// A config.toml for a node that has none: only the registry's `config_path`, every other
/// setting left at containerd's default. Version 2 is read by containerd 1.x and migrated by 2.x.
fn minimal_config(dir: &str) -> String {
    format!(
        "# Written by `dfdaemon containerd-hosts`: there was no config.toml, and containerd reads\n\
         # hosts.toml files only from the CRI registry's config_path. `--restore` removes it.\n\
         version = 2\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  \
         config_path = {}\n",
        toml_edit::value(dir)
    )
}

#[cfg(test)]
#[path = "containerd_tests.rs"]
mod tests;
